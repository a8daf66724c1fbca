package load

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
)

// User is one enrolled login of the tenant, as its owner's phone knows it: the
// TOTP key, the last time step the server accepted, and the unused backup codes.
type User struct {
	ID     string
	secret string
	opts   totp.ValidateOpts
	period int64
	// last is the highest step the server has accepted (or that an in-flight
	// request will make it accept): no code at or below it is ever sent as a
	// login that should succeed.
	last int64
	// unconfirmed: last was reserved by a login whose acceptance is not known
	// yet, or never was (an error, or a request cut off at the end of a
	// phase): its code is no replay until a later login succeeds.
	unconfirmed bool
	// failures counts the wrong codes the tool sent since the last success, so
	// the mixed scenario never locks anyone out.
	failures int
	backup   []string
}

// Code is the user's TOTP code for a time step.
func (u *User) Code(step int64) string {
	c, err := totp.GenerateCodeCustom(u.secret, time.Unix(step*u.period, 0), u.opts)
	if err != nil {
		panic(err) // the key parsed when the user enrolled
	}
	return c
}

// Partition is the users of one virtual user. A virtual user only logs in as its
// own users, so its choices never race with another's.
type Partition struct {
	mu        sync.Mutex
	users     []*User
	next      int
	nextCode  int
	nextFails int
}

// Add appends an enrolled user.
func (p *Partition) Add(u *User) {
	p.mu.Lock()
	p.users = append(p.users, u)
	p.mu.Unlock()
}

// Random returns any user of the partition.
func (p *Partition) Random(rng *rand.Rand) *User {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.users[rng.IntN(len(p.users))]
}

// Len is the number of users.
func (p *Partition) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.users)
}

// window returns the steps the server accepts at now, as (low, high): one step
// either side, except that close to a step boundary the previous step is left
// out (it leaves the window while the request travels).
func window(now time.Time, period int64) (int64, int64) {
	cur := now.Unix() / period
	lo := cur - 1
	if next := time.Unix((cur+1)*period, 0); next.Sub(now) < 2*time.Second {
		lo = cur
	}
	return lo, cur + 1
}

// TakeLogin picks the next user (round robin) that can log in now and reserves
// the lowest step it has not used: every login the tool sends is one the server
// accepts. ok is false when every user has used every step of the window; the
// caller waits for the next step (Partition.Wait).
func (p *Partition) TakeLogin(now time.Time) (u *User, code string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for range p.users {
		u := p.users[p.next%len(p.users)]
		p.next++
		lo, hi := window(now, u.period)
		s := max(u.last+1, lo)
		if s > hi {
			continue
		}
		code := u.Code(s)
		// The server accepts the highest step of the window whose code matches
		// (two steps share a code once in a million): remember that one.
		accepted := s
		for t := s + 1; t <= hi; t++ {
			if u.Code(t) == code {
				accepted = t
			}
		}
		u.last, u.unconfirmed = accepted, true
		return u, code, true
	}
	return nil, "", false
}

// Succeeded resets the user's failure count after an accepted login.
func (p *Partition) Succeeded(u *User) {
	p.mu.Lock()
	u.failures = 0
	p.mu.Unlock()
}

// AcceptedTOTP is Succeeded after a TOTP login: the step TakeLogin reserved
// is now known to be used, so its code is a replay.
func (p *Partition) AcceptedTOTP(u *User) {
	p.mu.Lock()
	u.failures, u.unconfirmed = 0, false
	p.mu.Unlock()
}

// NextStep is when a partition whose users are all used up can log in again.
func NextStep(now time.Time) time.Time {
	return time.Unix((now.Unix()/30+1)*30, 0).Add(50 * time.Millisecond)
}

// TakeBackupCode pops an unused backup code of the next user that has one.
func (p *Partition) TakeBackupCode() (u *User, code string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for range p.users {
		u := p.users[p.nextCode%len(p.users)]
		p.nextCode++
		if len(u.backup) == 0 {
			continue
		}
		code := u.backup[0]
		u.backup = u.backup[1:]
		return u, code, true
	}
	return nil, "", false
}

// BackupCodesLeft counts the unused backup codes of the partition.
func (p *Partition) BackupCodesLeft() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, u := range p.users {
		n += len(u.backup)
	}
	return n
}

// TakeFailure picks a user for a login that must fail and counts the failure:
// a user is chosen only below two failures in a row, far from a lockout (5).
// replay asks for a user with an accepted step, whose code is then sent again.
func (p *Partition) TakeFailure(now time.Time, replay bool) (u *User, code string, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for range p.users {
		u := p.users[p.nextFails%len(p.users)]
		p.nextFails++
		if u.failures >= 2 || (replay && (u.last == 0 || u.unconfirmed)) {
			continue
		}
		u.failures++
		if replay {
			return u, u.Code(u.last), true
		}
		lo, hi := window(now, u.period)
		valid := map[string]bool{}
		for s := lo - 1; s <= hi+1; s++ {
			valid[u.Code(s)] = true
		}
		for i := 0; ; i++ {
			c := fmt.Sprintf("%06d", (now.UnixNano()/1000+int64(i)*7919)%1_000_000)
			if !valid[c] {
				return u, c, true
			}
		}
	}
	return nil, "", false
}

// Available counts the logins the partition's users can make at now without
// waiting for another step.
func (p *Partition) Available(now time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, u := range p.users {
		lo, hi := window(now, u.period)
		if s := max(u.last+1, lo); s <= hi {
			n += int(hi - s + 1)
		}
	}
	return n
}

// Available counts the logins every user can make at now without waiting.
func (p *Pool) Available(now time.Time) int {
	n := 0
	for _, part := range p.Parts {
		n += part.Available(now)
	}
	return n
}

// Pool is every enrolled user, split into one partition per virtual user.
type Pool struct {
	Parts []*Partition
}

// NewPool makes n empty partitions.
func NewPool(n int) *Pool {
	p := &Pool{Parts: make([]*Partition, n)}
	for i := range p.Parts {
		p.Parts[i] = &Partition{}
	}
	return p
}

// Users counts every user.
func (p *Pool) Users() int {
	n := 0
	for _, part := range p.Parts {
		n += part.Len()
	}
	return n
}

// Enrol enrols a new user through the API as its owner would: start the TOTP
// enrolment, register a contact address (so the notifier has somewhere to
// write), and confirm with the first code. Every response is passed to record.
// contact=false skips the address (the enroll scenario: start + confirm only).
func Enrol(ctx context.Context, c *Client, id string, contact bool, record func(op string, r Response, want ...expect)) (*User, error) {
	r := c.StartTOTP(ctx, id)
	record("enroll start", r)
	if !r.OK() {
		return nil, fmt.Errorf("start enrolment of %s: %s", id, r.Kind())
	}
	var started struct {
		OTPAuthURI string `json:"otpauth_uri"`
	}
	if err := json.Unmarshal(r.Body, &started); err != nil {
		return nil, err
	}
	key, err := otp.NewKeyFromURL(started.OTPAuthURI)
	if err != nil {
		return nil, fmt.Errorf("otpauth uri of %s: %w", id, err)
	}
	u := &User{ID: id, secret: key.Secret(), period: int64(key.Period()),
		opts: totp.ValidateOpts{Period: uint(key.Period()), Digits: key.Digits(), Algorithm: key.Algorithm()}}
	if u.period <= 0 {
		u.period = 30
	}
	if contact {
		r = c.SetContact(ctx, id)
		record("contact address", r)
		if !r.OK() {
			return nil, fmt.Errorf("contact address of %s: %s", id, r.Kind())
		}
	}
	step := time.Now().Unix() / u.period
	r = c.ConfirmTOTP(ctx, id, u.Code(step))
	record("enroll confirm", r)
	if !r.OK() {
		return nil, fmt.Errorf("confirm enrolment of %s: %s", id, r.Kind())
	}
	var confirmed struct {
		BackupCodes []string `json:"backup_codes"`
	}
	if err := json.Unmarshal(r.Body, &confirmed); err != nil {
		return nil, err
	}
	u.last = step
	if u.Code(step+1) == u.Code(step) {
		u.last = step + 1 // the server keeps the highest matching step
	}
	u.backup = confirmed.BackupCodes
	return u, nil
}
