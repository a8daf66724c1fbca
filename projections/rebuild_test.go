package projections_test

import (
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/projections"
)

// A rebuild runs while the live projector keeps applying a steady stream of
// writes and queries keep being answered; after the swap the live group
// continues, and once the writes stop the read model equals both the domain's
// view and a second, quiet rebuild.
func TestRebuildWhileTheServiceRuns(t *testing.T) {
	pool := freshPool(t)
	l := newLive(t, pool, liveOptions{})
	s := newSim(t, 21, 3, 300)
	appendSteps(ctx, t, pool, s.steps(4000), 40)

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	var mu sync.Mutex
	go func() { // writes
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			mu.Lock()
			st := s.steps(3)
			mu.Unlock()
			appendSteps(ctx, t, pool, st, 3)
			time.Sleep(2 * time.Millisecond)
		}
	}()
	go func() { // reads
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := l.queries.Coverage(ctx, s.tenants[0].id, projections.ReadOptions{}); err != nil {
				t.Errorf("coverage during rebuild: %v", err)
				return
			}
			if _, err := l.queries.ListUsers(ctx, s.tenants[1].id, projections.UserFilter{Status: domain.StatusActivated}, projections.PageRequest{}, projections.ReadOptions{}); err != nil {
				t.Errorf("list during rebuild: %v", err)
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	for i := 0; i < 2; i++ {
		stats, err := projections.Rebuild(ctx, pool, eventstore.New(pool, time.Now), projections.UserStatusModel, projections.RebuildOptions{BatchSize: 500})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("rebuild %d: %d events, group offset moved: %v, caught up at swap: %d, generation %d", i, stats.Events, stats.GroupOffsetMoved, stats.CaughtUpAtSwap, stats.Generation)
		time.Sleep(200 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	l.caughtUp(30 * time.Second)
	checkAgainstDomain(t, pool, s.Now())
	checkCoverage(t, pool, s.Now())
	liveRows := dump(t, pool)
	l.stop()
	rebuild(t, pool)
	compareDumps(t, "live after rebuilds vs quiet rebuild", liveRows, dump(t, pool))

	// Two rebuilds at once: the second is refused.
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := projections.Rebuild(ctx, pool, eventstore.New(pool, time.Now), projections.CoverageModel, projections.RebuildOptions{})
			errs <- err
		}()
	}
	var refused int
	for i := 0; i < 2; i++ {
		if err := <-errs; errors.Is(err, projections.ErrRebuildRunning) {
			refused++
		} else if err != nil {
			t.Error(err)
		}
	}
	if refused > 1 {
		t.Error("both concurrent rebuilds refused")
	}
	if _, err := projections.Rebuild(ctx, pool, eventstore.New(pool, time.Now), "nope", projections.RebuildOptions{}); err == nil {
		t.Error("unknown read model accepted")
	}
}

// An erased user's row goes, and a redelivered older event of theirs (here
// handed to the projector without a subscriber transaction, as another bus
// would) does not bring it back. A policy change re-derives the tenant's rows.
func TestErasureAndPolicyChange(t *testing.T) {
	pool := freshPool(t)
	l := newLive(t, pool, liveOptions{})
	sc := newScript(t)
	u, v := sc.user("gone"), sc.user("stays")
	sc.enrolTOTP(u)
	sc.enrolTOTP(v)
	appendSteps(ctx, t, pool, sc.steps, 1)
	l.caughtUp(5 * time.Second)
	tenant := sc.s.tenants[0].id
	got, err := l.queries.GetUser(ctx, tenant, "stays", projections.ReadOptions{})
	must(t, err)
	if !got.CanToggle {
		t.Fatal("can toggle by default")
	}
	old, err := eventstore.New(pool, time.Now).Load(ctx, eventstore.UserStream(tenant, "gone"))
	must(t, err)

	sc.steps = nil
	sc.do(u, true, func(env domain.Env) ([]domain.Event, error) { return u.agg.ForgetUser(env) })
	tn := sc.s.tenants[0]
	p := tn.agg.Policy()
	p.DefaultCanToggle = false
	p.LockoutThreshold = 3
	events, err := tn.agg.ChangePolicy(domain.Actor{Kind: domain.ActorSuperAdmin, ID: "root"}, p)
	must(t, err)
	sc.steps = append(sc.steps, sc.s.tenantStep(tn, events))
	appendSteps(ctx, t, pool, sc.steps, 1)
	l.caughtUp(5 * time.Second)
	if _, err := l.queries.GetUser(ctx, tenant, "gone", projections.ReadOptions{}); !errors.Is(err, domain.NotFound(domain.CodeUserNotFound, "")) {
		t.Fatalf("erased user: %v", err)
	}
	got, err = l.queries.GetUser(ctx, tenant, "stays", projections.ReadOptions{})
	must(t, err)
	if got.CanToggle || got.AttemptsRemaining != 3 {
		t.Errorf("after the policy change: %+v", got)
	}
	cov, err := l.queries.Coverage(ctx, tenant, projections.ReadOptions{})
	must(t, err)
	if cov.Users != 1 {
		t.Errorf("coverage counts the erased user: %+v", cov)
	}

	// Redeliver an old event of the erased user outside any subscriber.
	msg := message.NewMessage(old[1].EventID, envelope(t, old[1]))
	l.stop()
	p2 := projections.NewProjector(pool, eventstore.New(pool, time.Now), projections.ProjectorOptions{})
	must(t, p2.Handle(msg))
	if _, err := l.queries.GetUser(ctx, tenant, "gone", projections.ReadOptions{}); !errors.Is(err, domain.NotFound(domain.CodeUserNotFound, "")) {
		t.Fatalf("redelivery brought the erased user back: %v", err)
	}
	var state *string
	must(t, pool.QueryRow(ctx, `SELECT state::text FROM user_status_state WHERE stream_id = $1`, eventstore.UserStream(tenant, "gone")).Scan(&state))
	if state != nil {
		t.Error("the erased user's state is kept")
	}
	liveRows := dump(t, pool)
	rebuild(t, pool)
	compareDumps(t, "after erasure", liveRows, dump(t, pool))
}

// The metrics report the applied position and the lag behind the head.
func TestMetrics(t *testing.T) {
	pool := freshPool(t)
	reg := prometheus.NewRegistry()
	m, err := projections.NewMetrics(pool, reg)
	must(t, err)
	l := newLive(t, pool, liveOptions{metrics: m})
	s := newSim(t, 31, 1, 20)
	first := s.steps(100)
	appendSteps(ctx, t, pool, first, 10)
	l.caughtUp(5 * time.Second)
	h := float64(head(t, pool))
	if got := counter(t, reg, "twofactor_read_model_applied_position", map[string]string{"read_model": "user_status"}); got != h {
		t.Errorf("applied position %v, head %v", got, h)
	}
	if got := counter(t, reg, "twofactor_read_model_lag_events", nil); got != 0 {
		t.Errorf("lag %v", got)
	}
	l.stop()
	steps := s.steps(10)
	appendSteps(ctx, t, pool, steps, 10)
	if got := counter(t, reg, "twofactor_read_model_lag_events", nil); got != float64(countEvents(steps)) {
		t.Errorf("lag %v, want %d", got, countEvents(steps))
	}
	if got := counter(t, reg, "twofactor_read_model_lag_seconds", nil); got <= 0 {
		t.Errorf("lag seconds %v", got)
	}
	if got := counter(t, reg, "twofactor_event_log_head_position", nil); got != float64(head(t, pool)) {
		t.Errorf("head %v", got)
	}
	if got := appliedCount(t, reg, countEvents(first)); got != float64(countEvents(first)) {
		t.Errorf("applied %v, want %d", got, countEvents(first))
	}
}

// envelope is the message body of a stored event on the event topic.
func envelope(t testing.TB, r *eventstore.Record) []byte {
	t.Helper()
	b, err := json.Marshal(eventstore.Envelope{
		Position: r.Position, EventID: r.EventID, TenantID: r.TenantID, StreamID: r.StreamID, Version: r.Version,
		Type: r.Type, SchemaVersion: r.SchemaVersion, Payload: r.Payload, Metadata: r.RawMetadata, RecordedAt: r.RecordedAt,
	})
	must(t, err)
	return b
}

// When the live group lags behind (here: stopped), the swap moves its offset to
// the rebuild's last event; started again, it continues after it, and applies
// nothing twice.
func TestRebuildAheadOfALaggingGroup(t *testing.T) {
	pool := freshPool(t)
	reg := prometheus.NewRegistry()
	m, err := projections.NewMetrics(pool, reg)
	must(t, err)
	l := newLive(t, pool, liveOptions{metrics: m})
	s := newSim(t, 41, 2, 100)
	first := s.steps(500)
	appendSteps(ctx, t, pool, first, 10)
	l.caughtUp(10 * time.Second)
	l.stop()
	second := s.steps(500)
	appendSteps(ctx, t, pool, second, 10)
	stats := rebuild(t, pool)
	if !stats.GroupOffsetMoved {
		t.Fatalf("group offset not moved: %+v", stats)
	}
	l.start(liveOptions{})
	third := s.steps(300)
	appendSteps(ctx, t, pool, third, 10)
	l.caughtUp(10 * time.Second)
	want := countEvents(first) + countEvents(third)
	if applied := appliedCount(t, reg, want); int(applied) != want {
		t.Errorf("live applied %v events, want %d (the rebuild applied the rest)", applied, want)
	}
	checkAgainstDomain(t, pool, s.Now())
	liveRows := dump(t, pool)
	l.stop()
	rebuild(t, pool)
	compareDumps(t, "after a lagging group", liveRows, dump(t, pool))
}
