// Package testkit drives real journeys through the command layer in tests: a
// settable clock, a tenant, and helpers that compute codes as a phone would and
// open sent codes as the notifier does.
package testkit

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/secrets"
)

// Clock is a settable clock shared by the service and the store.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

func NewClock(start time.Time) *Clock { return &Clock{now: start} }

func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }

func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Fixture is a command service over a real database with one tenant.
type Fixture struct {
	T         testing.TB
	Pool      *pgxpool.Pool
	Store     *eventstore.Store
	Vault     *secrets.Vault
	Svc       *commands.Service
	Clock     *Clock
	Tenant    string
	MasterKey secrets.MasterKey
	Codes     *secrets.CodeHasher
}

var (
	System = domain.Actor{Kind: domain.ActorSystem, ID: "tests"}
	Admin  = commands.Meta{Actor: domain.Actor{Kind: domain.ActorAdmin, ID: "admin-1"}, RequestID: "req-admin"}
)

// As is the metadata of a user acting on their own account.
func As(user string) commands.Meta {
	return commands.Meta{Actor: domain.Actor{Kind: domain.ActorUser, ID: user}, RequestID: "req-" + user}
}

// MustKey generates a master key.
func MustKey(t testing.TB, id string) secrets.MasterKey {
	t.Helper()
	k, err := secrets.GenerateMasterKey(rand.Reader, id)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// New builds a fixture on pool with a new tenant under policy (defaults when nil).
// The clock starts mid-step, so ±1 step codes are unambiguous.
func New(t testing.TB, pool *pgxpool.Pool, policy *domain.Policy) *Fixture {
	t.Helper()
	k1 := MustKey(t, "k1")
	ring, err := secrets.NewKeyring(k1)
	if err != nil {
		t.Fatal(err)
	}
	codeKey := make([]byte, 32)
	if _, err := rand.Read(codeKey); err != nil {
		t.Fatal(err)
	}
	hasher, err := secrets.NewCodeHasher(codeKey)
	if err != nil {
		t.Fatal(err)
	}
	c := NewClock(time.Date(2026, 11, 23, 12, 0, 10, 0, time.UTC))
	f := &Fixture{T: t, Pool: pool, Clock: c, MasterKey: k1, Codes: hasher}
	f.Store = eventstore.New(pool, c.Now)
	f.Vault = secrets.NewVault(pool, ring, rand.Reader)
	f.Svc = commands.New(f.Store, f.Vault, hasher, c.Now, rand.Reader)
	created, err := f.Svc.CreateTenant(context.Background(), commands.Meta{Actor: System}, commands.CreateTenant{Name: "Acme " + t.Name(), Policy: policy})
	if err != nil {
		t.Fatal(err)
	}
	f.Tenant = created.TenantID
	return f
}

// CodeAt computes the authenticator code at an offset from the clock, as the
// user's phone would (default parameters: SHA-1, 6 digits, 30 s).
func (f *Fixture) CodeAt(secret string, offset time.Duration) string {
	f.T.Helper()
	code, err := totp.GenerateCodeCustom(secret, f.Clock.Now().Add(offset), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		f.T.Fatal(err)
	}
	return code
}

// WrongCode returns a well-formed code that matches no step in the window.
func (f *Fixture) WrongCode(secret string) string {
	f.T.Helper()
	right := f.CodeAt(secret, 0)
	for d := byte(1); d < 10; d++ {
		candidate := right[:5] + string('0'+(right[5]-'0'+d)%10)
		steps, err := commands.MatchTOTP(secret, domain.TOTPParams{Algorithm: "SHA1", Digits: 6, PeriodSecs: 30}, 1, candidate, f.Clock.Now())
		if err != nil {
			f.T.Fatal(err)
		}
		if len(steps) == 0 {
			return candidate
		}
	}
	f.T.Fatal("no wrong code found")
	return ""
}

// EnrolTOTP runs start + confirm and returns the secret and the backup codes.
func (f *Fixture) EnrolTOTP(user string) (string, []string) {
	f.T.Helper()
	ctx := context.Background()
	enrol, err := f.Svc.StartTOTPEnrollment(ctx, As(user), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: user, AccountName: user + "@example.com"})
	if err != nil {
		f.T.Fatal(err)
	}
	act, err := f.Svc.ConfirmTOTPEnrollment(ctx, As(user), commands.ConfirmTOTPEnrollment{TenantID: f.Tenant, UserID: user, Code: f.CodeAt(enrol.Secret, 0)})
	if err != nil {
		f.T.Fatal(err)
	}
	return enrol.Secret, act.BackupCodes
}

// Records loads a user's stream.
func (f *Fixture) Records(user string) []*eventstore.Record {
	f.T.Helper()
	recs, err := f.Store.Load(context.Background(), eventstore.UserStream(f.Tenant, user))
	if err != nil {
		f.T.Fatal(err)
	}
	return recs
}

// CountEvents counts a user's events of one type.
func (f *Fixture) CountEvents(user, eventType string) int {
	n := 0
	for _, r := range f.Records(user) {
		if r.Type == eventType {
			n++
		}
	}
	return n
}

// Status replays a user's current state.
func (f *Fixture) Status(user string) domain.Snapshot {
	f.T.Helper()
	s, err := f.Svc.Status(context.Background(), f.Tenant, user)
	if err != nil {
		f.T.Fatal(err)
	}
	return s
}

// SentCode opens the newest sealed one-time code of a user's stream, as the
// notifier does just before sending it.
func (f *Fixture) SentCode(user string) string {
	f.T.Helper()
	recs := f.Records(user)
	for i := len(recs) - 1; i >= 0; i-- {
		var sealed string
		switch e := recs[i].Event.(type) {
		case *domain.OTPChallengeIssued:
			sealed = e.SealedCode
		case *domain.OTPMethodSetupStarted:
			sealed = e.SealedCode
		default:
			continue
		}
		code, err := f.Vault.Open(context.Background(), f.Tenant, user, secrets.PurposeOTPCode, sealed)
		if err != nil {
			f.T.Fatal(err)
		}
		return string(code)
	}
	f.T.Fatal("no code was issued")
	return ""
}

// ScanDatabase returns the tables whose rows, as text, contain needle (case-insensitive).
func ScanDatabase(t testing.TB, pool *pgxpool.Pool, needle string) []string {
	t.Helper()
	ctx := context.Background()
	rows, err := pool.Query(ctx, `SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
		FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'`)
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, table := range tables {
		var n int
		q := `SELECT count(*) FROM ` + table + ` t WHERE strpos(lower(t::text), lower($1)) > 0`
		if err := pool.QueryRow(ctx, q, needle).Scan(&n); err != nil {
			t.Fatalf("scan %s: %v", table, err)
		}
		if n > 0 {
			found = append(found, table)
		}
	}
	return found
}

// WantErr asserts a domain error's kind and code.
func WantErr(t testing.TB, err error, kind domain.Kind, code string) *domain.Error {
	t.Helper()
	de, ok := domain.AsError(err)
	if !ok {
		t.Fatalf("err = %v, want %s/%s", err, kind, code)
	}
	if de.Kind != kind || de.Code != code {
		t.Fatalf("err = %s/%s (%s), want %s/%s", de.Kind, de.Code, de.Detail, kind, code)
	}
	return de
}
