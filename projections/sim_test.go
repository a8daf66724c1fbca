package projections_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// sim generates realistic histories: a random user does a random thing, the
// domain decides exactly as it does for the commands (with the cryptographic
// checks replaced by coin flips and the sealed values by placeholders), and the
// events it returns are appended through the event store.
type sim struct {
	t       testing.TB
	rng     *rand.Rand
	mu      sync.Mutex
	now     time.Time
	tenants []*simTenant
	users   []*simUser
	current *simUser
	seq     int
	// policyEvery: about one tenant policy change per this many steps.
	policyEvery int
}

type simTenant struct {
	id      string
	agg     *domain.TenantPolicy
	created bool
}

type simUser struct {
	tenant *simTenant
	id     string
	agg    *domain.UserTwoFactor
	hashes [][]byte
	used   []bool
	step   int64
}

// step is one decided append.
type step struct {
	tenantID, streamID string
	expected           int64
	events             []domain.Event
	actor              domain.Actor
	at                 time.Time
}

var simStart = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

func newSim(t testing.TB, seed uint64, tenants, users int) *sim {
	s := &sim{t: t, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), now: simStart, policyEvery: 600}
	for i := 0; i < tenants; i++ {
		id := fmt.Sprintf("t%02d-%x", i, seed%0xffff)
		s.tenants = append(s.tenants, &simTenant{id: id, agg: domain.NewTenantPolicy(id)})
	}
	for i := 0; i < users; i++ {
		tn := s.tenants[i%tenants]
		id := fmt.Sprintf("u%05d", i)
		s.users = append(s.users, &simUser{tenant: tn, id: id, agg: domain.NewUserTwoFactor(tn.id, id)})
	}
	return s
}

// Now is the store's clock: the simulated time.
func (s *sim) Now() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

func (s *sim) advance(d time.Duration) {
	s.mu.Lock()
	s.now = s.now.Add(d)
	s.mu.Unlock()
}

// createTenants returns the steps creating every tenant.
func (s *sim) createTenants() []step {
	var out []step
	for i, tn := range s.tenants {
		p := domain.DefaultPolicy()
		if i%2 == 1 {
			p.DefaultCanToggle = false
			p.LowBackupCodesWarn = 3
			p.RecoveryCodeDisables = true
		}
		events, err := tn.agg.Create(domain.Actor{Kind: domain.ActorSystem, ID: "sim"}, "Tenant "+tn.id, p)
		if err != nil {
			s.t.Fatal(err)
		}
		out = append(out, s.tenantStep(tn, events))
	}
	return out
}

func (s *sim) tenantStep(tn *simTenant, events []domain.Event) step {
	st := step{tenantID: tn.id, streamID: eventstore.TenantStream(tn.id), expected: tn.agg.Version(), events: events,
		actor: domain.Actor{Kind: domain.ActorSystem, ID: "sim"}, at: s.Now()}
	for _, e := range events {
		tn.agg.Apply(e)
	}
	return st
}

func (s *sim) hashes(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		s.seq++
		h := sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(s.seq)))
		out[i] = h[:]
	}
	return out
}

// next decides one step that appends something (skipping refused actions).
func (s *sim) next() step {
	for {
		s.advance(time.Duration(1+s.rng.IntN(20)) * time.Second)
		if s.rng.IntN(200) == 0 {
			s.advance(time.Duration(s.rng.IntN(60)) * time.Minute)
		}
		if st, ok := s.try(); ok {
			return st
		}
	}
}

func (s *sim) try() (step, bool) {
	r := s.rng
	if r.IntN(s.policyEvery) == 0 {
		tn := s.tenants[r.IntN(len(s.tenants))]
		p := tn.agg.Policy()
		p.DefaultCanToggle = !p.DefaultCanToggle
		p.LockoutThreshold = 3 + r.IntN(4)
		p.LowBackupCodesWarn = 1 + r.IntN(3)
		p.RecoveryCodeDisables = r.IntN(2) == 0
		if r.IntN(4) == 0 {
			p.DisableBy = map[domain.DisablePermission]domain.DisablePermission{
				domain.DisableByAdminsAndTogglers: domain.DisableBySuperAdmins,
				domain.DisableBySuperAdmins:       domain.DisableByAdminsAndTogglers,
			}[p.DisableBy]
		}
		events, err := tn.agg.ChangePolicy(domain.Actor{Kind: domain.ActorSuperAdmin, ID: "root"}, p)
		if err != nil || len(events) == 0 {
			return step{}, false
		}
		return s.tenantStep(tn, events), true
	}
	// Users act in sessions of a few steps.
	if s.current == nil || r.IntN(100) < 30 {
		s.current = s.users[r.IntN(len(s.users))]
	}
	u := s.current
	policy := u.tenant.agg.Policy()
	self := domain.Actor{Kind: domain.ActorUser, ID: u.id}
	admin := domain.Actor{Kind: domain.ActorAdmin, ID: "admin-" + u.tenant.id}
	env := domain.Env{Now: s.Now(), Actor: self, Policy: policy}
	adminEnv := env
	adminEnv.Actor = admin
	otp := []domain.Method{domain.MethodEmail, domain.MethodSMS}[r.IntN(2)]
	coin := func(pct int) bool { return r.IntN(100) < pct }
	var events []domain.Event
	totpParams := domain.TOTPParams{SealedSecret: fmt.Sprintf("sealed-secret-%d", s.seq), Algorithm: "SHA1", Digits: 6, PeriodSecs: 30}
	anyMethod := []domain.Method{domain.MethodTOTP, domain.MethodEmail, domain.MethodSMS}[r.IntN(3)]
	nextStep := func() []int64 {
		u.step += 1 + int64(r.IntN(5))
		return []int64{u.step}
	}
	pick := func(weights ...int) int {
		total := 0
		for _, w := range weights {
			total += w
		}
		k := r.IntN(total)
		for i, w := range weights {
			if k < w {
				return i
			}
			k -= w
		}
		return len(weights) - 1
	}
	_, pendingTOTP := u.agg.PendingTOTP()
	_, pendingOTP := u.agg.PendingSetupCode(otp)
	_, challenged := u.agg.PendingChallengeCode(otp)
	if !u.agg.Enabled() {
		switch pick(30, 25, 20, 8, 8, 4, 3, 2, 4) {
		case 0:
			if pendingTOTP {
				var steps []int64
				if coin(85) {
					steps = nextStep()
				}
				events, _ = u.agg.ConfirmTOTPEnrollment(env, steps, s.hashes(policy.BackupCodeCount))
			} else {
				events, _ = u.agg.StartTOTPEnrollment(env, totpParams)
			}
		case 1:
			if pendingOTP {
				events, _ = u.agg.ConfirmOTPMethod(env, otp, coin(85), s.hashes(policy.BackupCodeCount))
			} else {
				events, _ = u.agg.StartOTPMethodSetup(env, otp, "sealed-destination", "sealed-code")
			}
		case 2:
			events, _ = u.agg.StartTOTPEnrollment(env, totpParams)
		case 3:
			events, _ = u.agg.RequireTwoFactor([]domain.Env{env, adminEnv}[r.IntN(2)], coin(60))
		case 4:
			events, _ = u.agg.SetTogglePermission(adminEnv, coin(50))
		case 5:
			events, _ = u.agg.ResetTwoFactor(adminEnv)
		case 6:
			events, _ = u.agg.Unlock(adminEnv)
		case 8:
			// "Disable 2FA" at the enrolment prompt: the user waives the requirement.
			events, _ = u.agg.DisableTwoFactor(env)
		default:
			if coin(20) {
				events, _ = u.agg.ForgetUser(adminEnv)
			}
		}
	} else {
		switch pick(35, 12, 8, 6, 4, 4, 4, 3, 3, 3, 2, 2, 2, 2, 2, 1) {
		case 0:
			var steps []int64
			if coin(75) {
				steps = nextStep()
			} else if coin(30) {
				steps = []int64{u.step} // a replayed code
			}
			events, _ = u.agg.VerifyTOTP(env, steps)
		case 1:
			if challenged && coin(80) {
				events, _ = u.agg.VerifyOTP(env, otp, coin(75))
			} else {
				events, _ = u.agg.IssueChallenge(env, otp, "sealed-code")
			}
		case 2:
			hash := s.hashes(1)[0]
			if coin(75) {
				for i := range u.hashes {
					if !u.used[i] {
						hash = u.hashes[i]
						break
					}
				}
			}
			events, _ = u.agg.ConsumeBackupCode(env, hash)
		case 3:
			if pendingOTP {
				events, _ = u.agg.ConfirmOTPMethod(env, otp, coin(85), s.hashes(policy.BackupCodeCount))
			} else {
				events, _ = u.agg.StartOTPMethodSetup(env, otp, "sealed-destination", "sealed-code")
			}
		case 4:
			if pendingTOTP {
				events, _ = u.agg.ConfirmTOTPEnrollment(env, nextStep(), s.hashes(policy.BackupCodeCount))
			} else {
				events, _ = u.agg.StartTOTPEnrollment(env, totpParams)
			}
		case 5:
			events, _ = u.agg.RegenerateBackupCodes(env, s.hashes(policy.BackupCodeCount))
		case 6:
			events, _ = u.agg.ChangeDefaultMethod([]domain.Env{env, adminEnv}[r.IntN(2)], anyMethod)
		case 7:
			events, _ = u.agg.SwitchMethod([]domain.Env{env, adminEnv}[r.IntN(2)], anyMethod, "sealed-destination")
		case 8:
			events, _ = u.agg.RequireTwoFactor([]domain.Env{env, adminEnv}[r.IntN(2)], coin(60))
		case 9:
			events, _ = u.agg.SetTogglePermission(adminEnv, coin(50))
		case 10:
			events, _ = u.agg.RemoveMethod([]domain.Env{env, adminEnv}[r.IntN(2)], anyMethod)
		case 11:
			events, _ = u.agg.DisableTwoFactor([]domain.Env{env, adminEnv}[r.IntN(2)])
		case 12:
			events, _ = u.agg.ResetTwoFactor(adminEnv)
		case 13:
			events, _ = u.agg.Unlock(adminEnv)
		case 14:
			// A burst of wrong codes (appended together): the lockout path.
			probe := domain.NewUserTwoFactor(u.tenant.id, u.id)
			state, err := u.agg.SaveState()
			if err != nil {
				s.t.Fatal(err)
			}
			if probe, err = domain.RestoreUserTwoFactor(u.tenant.id, u.id, u.agg.Version(), state); err != nil {
				s.t.Fatal(err)
			}
			for i := 0; i < policy.LockoutThreshold; i++ {
				more, _ := probe.VerifyTOTP(env, nil)
				for _, e := range more {
					probe.Apply(e, env.Now)
				}
				events = append(events, more...)
			}
		default:
			if coin(20) {
				events, _ = u.agg.ForgetUser(adminEnv)
			}
		}
	}
	if len(events) == 0 {
		return step{}, false
	}
	st := step{tenantID: u.tenant.id, streamID: eventstore.UserStream(u.tenant.id, u.id), expected: u.agg.Version(), events: events, actor: self, at: s.Now()}
	for _, e := range events {
		u.agg.Apply(e, st.at)
		switch e := e.(type) {
		case *domain.BackupCodesGenerated:
			u.setCodes(e.Hashes)
		case *domain.BackupCodesRegenerated:
			u.setCodes(e.Hashes)
		case *domain.BackupCodeConsumed:
			if e.Index < len(u.used) {
				u.used[e.Index] = true
			}
		}
	}
	return st, true
}

func (u *simUser) setCodes(encoded []string) {
	u.hashes = u.hashes[:0]
	for range encoded {
		u.hashes = append(u.hashes, nil)
	}
	u.used = make([]bool, len(encoded))
	for i, h := range encoded {
		u.hashes[i] = decodeB64(h)
	}
}

// steps decides n appends (after creating the tenants if not yet done).
func (s *sim) steps(n int) []step {
	var out []step
	if !s.tenants[0].created {
		out = s.createTenants()
		for _, tn := range s.tenants {
			tn.created = true
		}
	}
	for len(out) < n {
		out = append(out, s.next())
	}
	return out
}

// events counts the events of steps.
// userWaivers counts the users' own waivers of "use 2FA".
func userWaivers(steps []step) int {
	n := 0
	for _, st := range steps {
		for _, e := range st.events {
			if c, ok := e.(*domain.TwoFactorRequirementChanged); ok && !c.Required && c.ByUser() {
				n++
			}
		}
	}
	return n
}

func countEvents(steps []step) int {
	n := 0
	for _, st := range steps {
		n += len(st.events)
	}
	return n
}

// appendSteps writes steps through eventstore.AppendTx, perTx steps per
// transaction, with the store's clock at each step's time.
func appendSteps(ctx context.Context, t testing.TB, pool *pgxpool.Pool, steps []step, perTx int) []int64 {
	t.Helper()
	var clock time.Time
	store := eventstore.New(pool, func() time.Time { return clock })
	var positions []int64
	for i := 0; i < len(steps); i += perTx {
		chunk := steps[i:min(i+perTx, len(steps))]
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			for _, st := range chunk {
				clock = st.at
				a, err := store.AppendTx(ctx, tx, st.tenantID, st.streamID, st.expected, st.events,
					eventstore.Metadata{Actor: st.actor, RequestID: "sim"})
				if err != nil {
					return err
				}
				positions = append(positions, a.Position)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("append: %v", err)
		}
	}
	return positions
}
