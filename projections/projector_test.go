package projections_test

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/projections"
)

// feed appends steps in transactions of 1–perTx steps, as a stream of commands.
func feed(t testing.TB, l *live, steps []step, perTx int, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	for i := 0; i < len(steps); {
		n := 1 + rng.IntN(perTx)
		end := min(i+n, len(steps))
		appendSteps(ctx, t, l.pool, steps[i:end], n)
		i = end
	}
}

// A random history of more than 10,000 events over 500 users (enrolments,
// logins, failures and lockouts, backup codes, switches, resets, erasures,
// policy changes), projected live while it is written: the live read model
// equals a from-scratch rebuild row for row, and every user's row says what the
// domain says about the folded stream, now and an hour later.
func TestLiveProjectionEqualsRebuildAndTheDomain(t *testing.T) {
	pool := freshPool(t)
	l := newLive(t, pool, liveOptions{})
	s := newSim(t, 1, 4, 500)
	var steps []step
	for countEvents(steps) < 10_200 {
		steps = append(steps, s.steps(200)...)
	}
	if n := userWaivers(steps); n < 20 {
		t.Fatalf("only %d waivers of the requirement by the user in the history", n)
	}
	feed(t, l, steps, 40, 1)
	l.caughtUp(60 * time.Second)
	if n := eventCount(t, pool); n < 10_000 {
		t.Fatalf("only %d events", n)
	}
	var waived int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM user_status WHERE requirement_waived_by = 'user'`).Scan(&waived); err != nil || waived == 0 {
		t.Fatalf("%d rows waived by the user (%v)", waived, err)
	}
	liveRows := dump(t, pool)
	if len(liveRows["user_status"]) < 400 {
		t.Fatalf("only %d user rows", len(liveRows["user_status"]))
	}
	for _, now := range []time.Time{s.Now(), s.Now().Add(time.Hour)} {
		if n := checkAgainstDomain(t, pool, now); n < 400 {
			t.Fatalf("checked %d users", n)
		}
		t.Logf("statuses at %s: %v", now.Format(time.RFC3339), checkCoverage(t, pool, now))
	}
	l.stop()
	stats := rebuild(t, pool)
	if stats.Events != int64(eventCount(t, pool)) {
		t.Errorf("rebuild read %d events, the log has %d", stats.Events, eventCount(t, pool))
	}
	compareDumps(t, "live vs rebuild", liveRows, dump(t, pool))
	t.Logf("%d events, %d user rows", stats.Events, len(liveRows["user_status"]))
}

// Every message delivered twice (Duplicator) and a fifth of the handler calls
// failing (RandomFail, retried): the read model still equals the rebuild.
func TestRedeliveryAndFailuresChangeNothing(t *testing.T) {
	pool := freshPool(t)
	cfg := messaging.DefaultConfig()
	cfg.MaxRetries, cfg.RetryInitial, cfg.RetryMax = 30, time.Millisecond, 5*time.Millisecond
	l := newLive(t, pool, liveOptions{cfg: &cfg, extra: []message.HandlerMiddleware{middleware.Duplicator, middleware.RandomFail(0.2)}})
	s := newSim(t, 2, 3, 200)
	steps := s.steps(3000)
	feed(t, l, steps, 30, 2)
	l.caughtUp(60 * time.Second)
	checkAgainstDomain(t, pool, s.Now())
	var poisoned int
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM watermill_twofactor_poison`).Scan(&poisoned))
	if poisoned != 0 {
		t.Fatalf("%d messages poisoned", poisoned)
	}
	liveRows := dump(t, pool)
	l.stop()
	rebuild(t, pool)
	compareDumps(t, "duplicated and failing live vs rebuild", liveRows, dump(t, pool))
}

func counter(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	must(t, err)
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metrics
				}
			}
			total += value(m)
		}
	}
	return total
}

// appliedCount waits for the "applied" counter of reg to reach want and returns
// it: the checkpoint a test waits for is visible at COMMIT, and the counter moves
// just after, in the subscriber's goroutine. More than want is returned at once.
func appliedCount(t testing.TB, reg *prometheus.Registry, want int) float64 {
	t.Helper()
	labels := map[string]string{"outcome": "applied"}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := counter(t, reg, "twofactor_read_model_events_total", labels)
		if int(got) >= want || time.Now().After(deadline) {
			time.Sleep(50 * time.Millisecond) // a late extra would show now
			return counter(t, reg, "twofactor_read_model_events_total", labels)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	return 0
}

// The router is stopped in the middle of a burst and started again (a new
// projector, as after a crash): every event is applied exactly once (the
// committed "applied" count equals the number of events; a redelivered event is
// a duplicate) and the result equals the rebuild.
func TestRestartInTheMiddleOfABurst(t *testing.T) {
	pool := freshPool(t)
	reg := prometheus.NewRegistry()
	metrics, err := projections.NewMetrics(pool, reg)
	must(t, err)
	cfg := messaging.DefaultConfig()
	cfg.BatchSize = 20 // many small batches, so the stop lands inside one
	l := newLive(t, pool, liveOptions{cfg: &cfg, metrics: metrics})
	s := newSim(t, 3, 2, 150)
	steps := s.steps(2500)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		feed(t, l, steps, 3, 3)
	}()
	// Stop once the projector is well into the burst, twice.
	for round := 0; round < 2; round++ {
		deadline := time.Now().Add(20 * time.Second)
		for counter(t, reg, "twofactor_read_model_events_total", map[string]string{"outcome": "applied"}) < float64(600*(round+1)) {
			if time.Now().After(deadline) {
				t.Fatal("projector does not progress")
			}
			time.Sleep(5 * time.Millisecond)
		}
		l.stop()
		time.Sleep(50 * time.Millisecond)
		l.start(liveOptions{cfg: &cfg})
	}
	wg.Wait()
	l.caughtUp(60 * time.Second)
	n := eventCount(t, pool)
	if applied := appliedCount(t, reg, n); int(applied) != n {
		t.Errorf("applied %v events across restarts; the log has %d", applied, n)
	}
	t.Logf("events %d, duplicates skipped %v", eventCount(t, pool), counter(t, reg, "twofactor_read_model_events_total", map[string]string{"outcome": "duplicate"}))
	var poisoned int
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM watermill_twofactor_poison`).Scan(&poisoned))
	if poisoned != 0 {
		t.Errorf("stopping the router poisoned %d messages", poisoned)
	}
	liveRows := dump(t, pool)
	l.stop()
	rebuild(t, pool)
	compareDumps(t, "restarted live vs rebuild", liveRows, dump(t, pool))
}

// Two workers share the consumer group (scale-out): batches alternate between
// them, each notices the other's commits through the checkpoint and drops its
// cache, and every event is applied exactly once.
func TestTwoWorkersShareTheGroup(t *testing.T) {
	pool := freshPool(t)
	regA, regB := prometheus.NewRegistry(), prometheus.NewRegistry()
	metricsA, err := projections.NewMetrics(pool, regA)
	must(t, err)
	metricsB, err := projections.NewMetrics(pool, regB)
	must(t, err)
	cfg := messaging.DefaultConfig()
	cfg.BatchSize = 25
	a := newLive(t, pool, liveOptions{cfg: &cfg, metrics: metricsA})
	b := newLive(t, pool, liveOptions{cfg: &cfg, metrics: metricsB})
	s := newSim(t, 4, 2, 150)
	feed(t, a, s.steps(2500), 5, 4)
	a.caughtUp(60 * time.Second)
	applied := map[string]string{"outcome": "applied"}
	n := eventCount(t, pool)
	deadline := time.Now().Add(10 * time.Second)
	var byA, byB float64
	for {
		byA = counter(t, regA, "twofactor_read_model_events_total", applied)
		byB = counter(t, regB, "twofactor_read_model_events_total", applied)
		if int(byA+byB) >= n || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if int(byA+byB) != n || byA == 0 || byB == 0 {
		t.Errorf("applied %v + %v events; the log has %d", byA, byB, n)
	}
	t.Logf("worker A applied %v, worker B %v", byA, byB)
	checkAgainstDomain(t, pool, s.Now())
	liveRows := dump(t, pool)
	a.stop()
	b.stop()
	rebuild(t, pool)
	compareDumps(t, "two workers vs rebuild", liveRows, dump(t, pool))
}
