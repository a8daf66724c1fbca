package projections_test

import (
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testkit"
	"github.com/twofactor/twofactor/projections"
)

// script builds hand-made users with the domain's decisions.
type script struct {
	t     *testing.T
	s     *sim
	steps []step
}

func newScript(t *testing.T) *script {
	s := newSim(t, 9, 1, 0)
	sc := &script{t: t, s: s}
	sc.steps = s.createTenants()
	s.tenants[0].created = true
	return sc
}

func (sc *script) user(id string) *simUser {
	tn := sc.s.tenants[0]
	u := &simUser{tenant: tn, id: id, agg: domain.NewUserTwoFactor(tn.id, id)}
	sc.s.users = append(sc.s.users, u)
	return u
}

var scriptAdmin = domain.Actor{Kind: domain.ActorAdmin, ID: "admin"}

// do lets the user (or the admin) decide and records the events.
func (sc *script) do(u *simUser, asAdmin bool, decide func(env domain.Env) ([]domain.Event, error)) {
	sc.t.Helper()
	sc.s.advance(time.Second)
	env := domain.Env{Now: sc.s.Now(), Actor: domain.Actor{Kind: domain.ActorUser, ID: u.id}, Policy: u.tenant.agg.Policy()}
	if asAdmin {
		env.Actor = scriptAdmin
	}
	events, err := decide(env)
	if len(events) == 0 {
		sc.t.Fatalf("%s: nothing decided: %v", u.id, err)
	}
	st := step{tenantID: u.tenant.id, streamID: eventstore.UserStream(u.tenant.id, u.id), expected: u.agg.Version(), events: events, actor: env.Actor, at: env.Now}
	for _, e := range events {
		u.agg.Apply(e, env.Now)
		switch e := e.(type) {
		case *domain.BackupCodesGenerated:
			u.setCodes(e.Hashes)
		case *domain.BackupCodeConsumed:
			u.used[e.Index] = true
		}
	}
	sc.steps = append(sc.steps, st)
}

func (sc *script) enrolTOTP(u *simUser) {
	sc.do(u, false, func(env domain.Env) ([]domain.Event, error) {
		return u.agg.StartTOTPEnrollment(env, domain.TOTPParams{SealedSecret: "sealed", Algorithm: "SHA1", Digits: 6, PeriodSecs: 30})
	})
	sc.do(u, false, func(env domain.Env) ([]domain.Event, error) {
		u.step++
		return u.agg.ConfirmTOTPEnrollment(env, []int64{u.step}, sc.s.hashes(10))
	})
}

func (sc *script) enrolOTP(u *simUser, m domain.Method) {
	sc.do(u, false, func(env domain.Env) ([]domain.Event, error) {
		return u.agg.StartOTPMethodSetup(env, m, "sealed-destination", "sealed-code")
	})
	sc.do(u, false, func(env domain.Env) ([]domain.Event, error) {
		return u.agg.ConfirmOTPMethod(env, m, true, sc.s.hashes(10))
	})
}

func ids(users []projections.UserStatus) []string {
	out := []string{}
	for _, u := range users {
		out = append(out, u.UserID)
	}
	return out
}

func yes() *bool { v := true; return &v }
func no() *bool  { v := false; return &v }

// Hand-made users in every status; the list query with each filter, and the
// coverage, against expectations computed by hand, at two moments (a lock and a
// pending enrolment run out in between).
func TestListFiltersAndCoverage(t *testing.T) {
	pool := freshPool(t)
	sc := newScript(t)
	a1, a2, e1, l1 := sc.user("a1"), sc.user("a2"), sc.user("e1"), sc.user("l1")
	p1, p2, r1, d1 := sc.user("p1"), sc.user("p2"), sc.user("r1"), sc.user("d1")
	rs1, s1, f1 := sc.user("rs1"), sc.user("s1"), sc.user("f1")

	sc.enrolTOTP(p2)
	sc.do(p2, true, func(env domain.Env) ([]domain.Event, error) { return p2.agg.ResetTwoFactor(env) })
	sc.do(p2, false, func(env domain.Env) ([]domain.Event, error) { // will expire
		return p2.agg.StartTOTPEnrollment(env, domain.TOTPParams{SealedSecret: "s", Algorithm: "SHA1", Digits: 6, PeriodSecs: 30})
	})
	sc.s.advance(20 * time.Minute)
	sc.enrolTOTP(a1)
	sc.enrolTOTP(a2)
	sc.enrolOTP(a2, domain.MethodEmail)
	for i := 0; i < 8; i++ { // 2 of 10 codes left: low (the tenant warns at 2)
		sc.do(a2, false, func(env domain.Env) ([]domain.Event, error) { return a2.agg.ConsumeBackupCode(env, a2.hashes[i]) })
	}
	sc.enrolOTP(e1, domain.MethodEmail)
	sc.do(e1, true, func(env domain.Env) ([]domain.Event, error) { return e1.agg.RequireTwoFactor(env, true) })
	sc.do(r1, true, func(env domain.Env) ([]domain.Event, error) { return r1.agg.RequireTwoFactor(env, true) })
	sc.enrolTOTP(d1)
	sc.do(d1, true, func(env domain.Env) ([]domain.Event, error) { return d1.agg.DisableTwoFactor(env) })
	sc.enrolTOTP(rs1)
	sc.do(rs1, true, func(env domain.Env) ([]domain.Event, error) { return rs1.agg.ResetTwoFactor(env) })
	sc.enrolOTP(s1, domain.MethodEmail)
	sc.do(s1, true, func(env domain.Env) ([]domain.Event, error) { return s1.agg.SwitchMethod(env, domain.MethodTOTP, "") })
	sc.enrolTOTP(f1)
	sc.do(f1, true, func(env domain.Env) ([]domain.Event, error) { return f1.agg.ForgetUser(env) })
	sc.enrolTOTP(l1)
	sc.do(l1, false, func(env domain.Env) ([]domain.Event, error) { // five wrong codes: locked for 15 minutes
		state, err := l1.agg.SaveState()
		must(t, err)
		probe, err := domain.RestoreUserTwoFactor(l1.tenant.id, l1.id, l1.agg.Version(), state)
		must(t, err)
		var all []domain.Event
		for i := 0; i < 5; i++ {
			evs, _ := probe.VerifyTOTP(env, nil)
			for _, e := range evs {
				probe.Apply(e, env.Now)
			}
			all = append(all, evs...)
		}
		return all, nil
	})
	sc.do(p1, false, func(env domain.Env) ([]domain.Event, error) {
		return p1.agg.StartTOTPEnrollment(env, domain.TOTPParams{SealedSecret: "s", Algorithm: "SHA1", Digits: 6, PeriodSecs: 30})
	})
	t0 := sc.s.Now()

	l := newLive(t, pool, liveOptions{})
	appendSteps(ctx, t, pool, sc.steps, 5)
	l.caughtUp(10 * time.Second)
	tenant := sc.s.tenants[0].id
	at := func(now time.Time) *projections.Queries {
		return projections.NewQueries(pool, projections.QueryOptions{Clock: func() time.Time { return now }})
	}
	list := func(q *projections.Queries, f projections.UserFilter) []string {
		t.Helper()
		all := []string{}
		page := projections.PageRequest{Limit: 2}
		for i := 0; ; i++ {
			p, err := q.ListUsers(ctx, tenant, f, page, projections.ReadOptions{})
			must(t, err)
			all = append(all, ids(p.Users)...)
			if p.NextCursor == "" {
				return all
			}
			page.After = p.NextCursor
		}
	}
	str := func(ss ...string) []string { return append([]string{}, ss...) }
	now, later := t0, t0.Add(20*time.Minute)
	cases := []struct {
		name      string
		f         projections.UserFilter
		now, then []string
	}{
		{"all", projections.UserFilter{}, str("a1", "a2", "d1", "e1", "l1", "p1", "p2", "r1", "rs1", "s1"), nil},
		{"activated", projections.UserFilter{Status: domain.StatusActivated}, str("a1", "a2", "e1"), str("a1", "a2", "e1", "l1")},
		{"locked", projections.UserFilter{Status: domain.StatusLocked}, str("l1"), str()},
		{"pending", projections.UserFilter{Status: domain.StatusPending}, str("p1"), str()},
		{"not activated", projections.UserFilter{Status: domain.StatusNotActivated}, str("r1"), str("p1", "r1")},
		{"reset pending", projections.UserFilter{Status: domain.StatusResetPending}, str("p2", "rs1"), nil},
		{"disabled", projections.UserFilter{Status: domain.StatusDisabled}, str("d1"), nil},
		{"setup app", projections.UserFilter{Status: domain.StatusSetupAppAtNextLogin}, str("s1"), nil},
		{"totp", projections.UserFilter{Method: domain.MethodTOTP}, str("a1", "a2", "l1"), nil},
		{"email", projections.UserFilter{Method: domain.MethodEmail}, str("a2", "e1", "s1"), nil},
		{"sms", projections.UserFilter{Method: domain.MethodSMS}, str(), nil},
		{"required", projections.UserFilter{Required: yes()}, str("e1", "r1"), nil},
		{"not required", projections.UserFilter{Required: no()}, str("a1", "a2", "d1", "l1", "p1", "p2", "rs1", "s1"), nil},
		{"low codes", projections.UserFilter{LowBackupCodes: yes()}, str("a2"), nil},
		{"locked flag", projections.UserFilter{Locked: yes()}, str("l1"), str()},
		{"not locked", projections.UserFilter{Locked: no()}, str("a1", "a2", "d1", "e1", "p1", "p2", "r1", "rs1", "s1"),
			str("a1", "a2", "d1", "e1", "l1", "p1", "p2", "r1", "rs1", "s1")},
		{"activated by email, required", projections.UserFilter{Status: domain.StatusActivated, Method: domain.MethodEmail, Required: yes()}, str("e1"), nil},
		{"totp, not low, not locked", projections.UserFilter{Method: domain.MethodTOTP, LowBackupCodes: no(), Locked: no()}, str("a1"), str("a1", "l1")},
	}
	for _, c := range cases {
		if got := list(at(now), c.f); !reflect.DeepEqual(got, c.now) {
			t.Errorf("%s now: %v, want %v", c.name, got, c.now)
		}
		then := c.then
		if then == nil {
			then = c.now
		}
		if got := list(at(later), c.f); !reflect.DeepEqual(got, then) {
			t.Errorf("%s 20 min later: %v, want %v", c.name, got, then)
		}
	}

	u, err := at(now).GetUser(ctx, tenant, "l1", projections.ReadOptions{})
	must(t, err)
	if u.Status != domain.StatusLocked || !u.LockedUntil.Equal(t0.Add(15*time.Minute-time.Second)) || u.AttemptsRemaining != 0 {
		t.Errorf("l1 = %+v", u)
	}
	u, err = at(now).GetUser(ctx, tenant, "a2", projections.ReadOptions{})
	must(t, err)
	if u.BackupCodesRemaining != 2 || !u.LowBackupCodes || !reflect.DeepEqual(u.Methods, []domain.Method{domain.MethodTOTP, domain.MethodEmail}) {
		t.Errorf("a2 = %+v", u)
	}
	if _, err := at(now).GetUser(ctx, tenant, "f1", projections.ReadOptions{}); !errors.Is(err, domain.NotFound(domain.CodeUserNotFound, "")) {
		t.Errorf("erased user: %v", err)
	}

	cov, err := at(now).Coverage(ctx, tenant, projections.ReadOptions{})
	must(t, err)
	want := map[domain.Status]int{domain.StatusActivated: 3, domain.StatusLocked: 1, domain.StatusPending: 1, domain.StatusNotActivated: 1,
		domain.StatusResetPending: 2, domain.StatusDisabled: 1, domain.StatusSetupAppAtNextLogin: 1}
	// 2FA on: a1, a2, e1, l1 (locked, still on), s1.
	if cov.Users != 10 || cov.Activated != 5 || cov.RequiredNotEnrolled != 1 || cov.LockedNow != 1 || !reflect.DeepEqual(cov.ByStatus, want) ||
		cov.ActivatedShare != 0.5 || cov.AppliedPosition != head(t, pool) {
		t.Errorf("coverage now = %+v", cov)
	}
	cov, err = at(later).Coverage(ctx, tenant, projections.ReadOptions{})
	must(t, err)
	want = map[domain.Status]int{domain.StatusActivated: 4, domain.StatusNotActivated: 2, domain.StatusResetPending: 2, domain.StatusDisabled: 1, domain.StatusSetupAppAtNextLogin: 1}
	if cov.Users != 10 || cov.LockedNow != 0 || !reflect.DeepEqual(cov.ByStatus, want) {
		t.Errorf("coverage later = %+v", cov)
	}
	checkAgainstDomain(t, pool, now)
	checkAgainstDomain(t, pool, later)

	if _, err := at(now).ListUsers(ctx, tenant, projections.UserFilter{Status: "bogus"}, projections.PageRequest{}, projections.ReadOptions{}); err == nil {
		t.Error("unknown status accepted")
	}
	if _, err := at(now).ListUsers(ctx, tenant, projections.UserFilter{}, projections.PageRequest{After: "%%%"}, projections.ReadOptions{}); err == nil {
		t.Error("bad cursor accepted")
	}
}

// Paging through the list while users change and new ones arrive: every user
// that existed before the listing started is returned exactly once (unless
// erased meanwhile), in order, with no repeats. Between pages, new users appear
// both behind the cursor (not listed: their page is past) and ahead of it
// (listed once their page comes), and a writer keeps changing existing users.
func TestPaginationNeitherSkipsNorRepeatsWhileWriting(t *testing.T) {
	pool := freshPool(t)
	l := newLive(t, pool, liveOptions{})
	s := newSim(t, 5, 1, 300)
	appendSteps(ctx, t, pool, s.steps(3000), 50)
	l.caughtUp(60 * time.Second)
	tenant := s.tenants[0].id
	before := map[string]bool{}
	rows, err := pool.Query(ctx, `SELECT user_id FROM user_status WHERE tenant_id = $1`, tenant)
	must(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	for _, n := range names {
		before[n] = true
	}
	var mu sync.Mutex // the simulator is not safe for concurrent use
	newUser := func(id string) step {
		nu := &simUser{tenant: s.tenants[0], id: id}
		nu.agg = domain.NewUserTwoFactor(tenant, nu.id)
		s.users = append(s.users, nu)
		events, err := nu.agg.RequireTwoFactor(domain.Env{Now: s.Now(), Actor: scriptAdmin, Policy: s.tenants[0].agg.Policy()}, true)
		must(t, err)
		nu.agg.Apply(events[0], s.Now())
		return step{tenantID: tenant, streamID: eventstore.UserStream(tenant, nu.id), events: events, actor: scriptAdmin, at: s.Now()}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var written atomic.Int64
	wg.Add(1)
	go func() { // existing users keep acting
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			st := s.steps(5)
			mu.Unlock()
			appendSteps(ctx, t, pool, st, 5)
			written.Add(int64(countEvents(st)))
			time.Sleep(30 * time.Millisecond)
		}
	}()
	q := l.queries
	seen := map[string]int{}
	var order []string
	ahead := map[string]bool{}        // created after the cursor: must be listed
	behindCursor := map[string]bool{} // created before it: must not be
	page := projections.PageRequest{Limit: 17}
	for i := 0; ; i++ {
		p, err := q.ListUsers(ctx, tenant, projections.UserFilter{}, page, projections.ReadOptions{})
		must(t, err)
		for _, u := range p.Users {
			seen[u.UserID]++
			order = append(order, u.UserID)
		}
		if p.NextCursor == "" {
			break
		}
		page.After = p.NextCursor
		cursor := p.Users[len(p.Users)-1].UserID
		// New users just behind and just ahead of the cursor, applied before the
		// next page is read.
		mu.Lock()
		behind, next := "a"+cursor, cursor+"-b" // "a…" sorts before every "u…" id
		st := []step{newUser(behind), newUser(next)}
		mu.Unlock()
		pos := appendSteps(ctx, t, pool, st, 2)
		must(t, q.WaitFor(ctx, pos[len(pos)-1], 30*time.Second))
		ahead[next], behindCursor[behind] = true, true
	}
	close(stop)
	wg.Wait()
	if !sort.StringsAreSorted(order) {
		t.Error("pages out of order")
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s returned %d times", id, n)
		}
		if behindCursor[id] {
			t.Errorf("%s was created behind the cursor, yet listed", id)
		}
	}
	for id := range ahead {
		if seen[id] != 1 {
			t.Errorf("%s, created ahead of the cursor, was skipped", id)
		}
	}
	erased := 0
	for id := range before {
		if seen[id] == 1 {
			continue
		}
		// Only a user erased meanwhile may be missing.
		if _, err := q.GetUser(ctx, tenant, id, projections.ReadOptions{}); !errors.Is(err, domain.NotFound(domain.CodeUserNotFound, "")) {
			t.Errorf("%s skipped", id)
		}
		erased++
	}
	if len(ahead) == 0 || written.Load() == 0 {
		t.Fatalf("nothing written during the listing (%d events)", written.Load())
	}
	t.Logf("listed %d users (%d before, %d erased meanwhile, %d created ahead of the cursor), %d other events meanwhile",
		len(seen), len(before), erased, len(ahead), written.Load())
}

// A query with a command's position returns data that includes the write, at
// once, through the real command layer; without the projector it times out with
// ErrNotCaughtUp instead of returning stale data.
func TestReadYourWrites(t *testing.T) {
	pool := freshPool(t)
	f := testkit.New(t, pool, nil)
	l := newLive(t, pool, liveOptions{clock: f.Clock.Now})
	q := l.queries
	// Bounded, but generous: the suite runs beside others on two cores.
	const wait = 20 * time.Second
	for i := 0; i < 5; i++ {
		user := fmt.Sprintf("ryw-%d", i)
		enrol, err := f.Svc.StartTOTPEnrollment(ctx, testkit.As(user), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: user, AccountName: user})
		must(t, err)
		s, err := q.GetUser(ctx, f.Tenant, user, projections.ReadOptions{MinPosition: enrol.Position, Wait: wait})
		must(t, err)
		if s.Status != domain.StatusPending {
			t.Fatalf("after start: %s", s.Status)
		}
		act, err := f.Svc.ConfirmTOTPEnrollment(ctx, testkit.As(user), commands.ConfirmTOTPEnrollment{TenantID: f.Tenant, UserID: user, Code: f.CodeAt(enrol.Secret, 0)})
		must(t, err)
		s, err = q.GetUser(ctx, f.Tenant, user, projections.ReadOptions{MinPosition: act.Position, Wait: wait})
		must(t, err)
		if s.Status != domain.StatusActivated || s.BackupCodesRemaining != 10 || s.Version != 4 {
			t.Fatalf("after confirm: %+v", s)
		}
		res, err := f.Svc.RequireTwoFactor(ctx, testkit.Admin, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: user, Required: true})
		must(t, err)
		page, err := q.ListUsers(ctx, f.Tenant, projections.UserFilter{Required: yes()}, projections.PageRequest{}, projections.ReadOptions{MinPosition: res.Position, Wait: wait})
		must(t, err)
		if len(page.Users) != i+1 {
			t.Fatalf("required users: %v", ids(page.Users))
		}
		cov, err := q.Coverage(ctx, f.Tenant, projections.ReadOptions{MinPosition: res.Position, Wait: wait})
		must(t, err)
		if cov.Activated != i+1 || cov.AppliedPosition < res.Position {
			t.Fatalf("coverage %+v", cov)
		}
	}
	l.stop()
	res, err := f.Svc.RequireTwoFactor(ctx, testkit.Admin, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: "ryw-0", Required: false})
	must(t, err)
	started := time.Now()
	_, err = q.GetUser(ctx, f.Tenant, "ryw-0", projections.ReadOptions{MinPosition: res.Position, Wait: 300 * time.Millisecond})
	if !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("stopped projector: %v", err)
	}
	if d := time.Since(started); d < 300*time.Millisecond || d > 2*time.Second {
		t.Errorf("waited %v", d)
	}
	l.start(liveOptions{})
	s, err := q.GetUser(ctx, f.Tenant, "ryw-0", projections.ReadOptions{MinPosition: res.Position, Wait: wait})
	must(t, err)
	if s.Required {
		t.Error("the write is not visible")
	}
}

// A transaction that took its transaction id first but commits after a later
// one is still projected; while it is open, later positions are not reported
// as applied (the checkpoint cannot pass it).
func TestLateCommittingTransactionIsProjected(t *testing.T) {
	pool := freshPool(t)
	l := newLive(t, pool, liveOptions{})
	s := newSim(t, 11, 1, 2)
	appendSteps(ctx, t, pool, s.createTenants(), 1)
	s.tenants[0].created = true
	l.caughtUp(5 * time.Second)
	early, late := s.users[0], s.users[1]
	enrol := func(u *simUser) step {
		events, err := u.agg.StartTOTPEnrollment(domain.Env{Now: s.Now(), Actor: domain.Actor{Kind: domain.ActorUser, ID: u.id}, Policy: domain.DefaultPolicy()},
			domain.TOTPParams{SealedSecret: "x", Algorithm: "SHA1", Digits: 6, PeriodSecs: 30})
		must(t, err)
		return step{tenantID: u.tenant.id, streamID: eventstore.UserStream(u.tenant.id, u.id), events: events, actor: domain.Actor{Kind: domain.ActorUser, ID: u.id}, at: s.Now()}
	}
	store := eventstore.New(pool, s.Now)
	txA, err := pool.Begin(ctx)
	must(t, err)
	defer txA.Rollback(ctx) //nolint:errcheck
	stA := enrol(early)
	a, err := store.AppendTx(ctx, txA, stA.tenantID, stA.streamID, 0, stA.events, eventstore.Metadata{Actor: stA.actor})
	must(t, err)
	posB := appendSteps(ctx, t, pool, []step{enrol(late)}, 1)[0]
	if posB <= a.Position {
		t.Fatalf("positions %d, %d", a.Position, posB)
	}
	if err := l.queries.WaitFor(ctx, posB, 150*time.Millisecond); !errors.Is(err, projections.ErrNotCaughtUp) {
		t.Fatalf("B reported applied while A is open: %v", err)
	}
	must(t, txA.Commit(ctx))
	for _, p := range []int64{posB, a.Position} {
		if err := l.queries.WaitFor(ctx, p, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []*simUser{early, late} {
		got, err := l.queries.GetUser(ctx, u.tenant.id, u.id, projections.ReadOptions{})
		must(t, err)
		if got.Version != 1 {
			t.Errorf("%s: %+v", u.id, got)
		}
	}
}
