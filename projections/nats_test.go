package projections_test

import (
	"context"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testnats"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/projections"
)

// natsWorker is what `twofactord worker` runs with TWOFACTOR_BUS=nats, in
// process: a forwarder (event log → JetStream) and a router with the user-status
// projector reading JetStream. stop is the worker going away.
type natsWorker struct {
	t      testing.TB
	reg    *prometheus.Registry
	fwd    *messaging.Forwarder
	router *message.Router
	done   sync.WaitGroup
	once   sync.Once
}

// arrivals checks what the projector is handed: each stream's events in
// version order (the feed has one writer, so the log has no late commit that
// would legitimately put a version before its predecessor), and counts
// deliveries of the same event.
type arrivals struct {
	t          testing.TB
	mu         sync.Mutex
	version    map[string]int64
	ids        map[string]bool
	deliveries int
}

func (a *arrivals) wrap(c messaging.Consumer) messaging.Consumer {
	inner := c.Handle
	c.Handle = func(msg *message.Message) error {
		rec, err := messaging.DecodeMessage(msg)
		if err != nil {
			return err
		}
		a.mu.Lock()
		if last := a.version[rec.StreamID]; rec.Version > last+1 {
			a.t.Errorf("%s version %d handed to the projector after version %d", rec.StreamID, rec.Version, last)
		}
		a.version[rec.StreamID] = max(a.version[rec.StreamID], rec.Version)
		a.ids[rec.EventID] = true
		a.deliveries++
		a.mu.Unlock()
		return inner(msg)
	}
	return c
}

func startNATSWorker(t testing.TB, pool *pgxpool.Pool, ncfg messaging.NATSConfig, listener *messaging.Listener, seen *arrivals) *natsWorker {
	t.Helper()
	w := &natsWorker{t: t, reg: prometheus.NewRegistry()}
	metrics, err := projections.NewMetrics(pool, w.reg)
	must(t, err)
	cfg := messaging.ForwarderConfig()
	cfg.Listener = listener
	w.fwd, err = messaging.NewForwarder(pool, cfg, ncfg, watermill.NopLogger{})
	must(t, err)
	p := projections.NewProjector(pool, eventstore.New(pool, time.Now), projections.ProjectorOptions{Metrics: metrics})
	cs := []messaging.Consumer{seen.wrap(p.Consumer())}
	nc := testnats.Connect(t, ncfg)
	w.router, err = messaging.NewNATSRouter(pool, messaging.DefaultConfig(), ncfg, nc, watermill.NopLogger{}, cs)
	must(t, err)
	w.done.Go(func() {
		if err := w.fwd.Run(ctx); err != nil {
			t.Errorf("forwarder: %v", err)
		}
	})
	w.done.Go(func() {
		if err := w.router.Run(ctx); err != nil {
			t.Errorf("router: %v", err)
		}
	})
	<-w.fwd.Running()
	<-w.router.Running()
	t.Cleanup(w.stop)
	return w
}

func (w *natsWorker) stop() {
	w.once.Do(func() {
		must(w.t, w.router.Close())
		must(w.t, w.fwd.Close())
		w.done.Wait()
	})
}

func (w *natsWorker) applied() float64 { return w.events("applied") }

func (w *natsWorker) events(outcome string) float64 {
	return counter(w.t, w.reg, "twofactor_read_model_events_total", map[string]string{"outcome": outcome})
}

// totalOf adds up the projector's events of an outcome over every worker.
func totalOf(workers, retired []*natsWorker, mu *sync.Mutex, outcome string) float64 {
	mu.Lock()
	defer mu.Unlock()
	n := 0.0
	for _, w := range append(append([]*natsWorker{}, workers...), retired...) {
		n += w.events(outcome)
	}
	return n
}

// The read-side equality test on the NATS bus: a random history over 400 users
// is written while two workers (forwarder + projector each) consume it from
// JetStream; the worker applying the events is stopped in the middle and
// started again later, and then the other one is. The projector's consumer is
// log-ordered, so each stream's events arrive in order and every event is
// applied exactly once across the hand-overs (the applied counts add up to the
// log), the read-your-writes wait works as on
// the PostgreSQL bus, every row says what the domain says, and the live read
// model equals a rebuild from the log row for row.
func TestLiveProjectionOnNATSEqualsRebuild(t *testing.T) {
	pool := freshPool(t)
	ncfg := testnats.Config(t, testnats.URL(t))
	ncfg.BatchSize = 200
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	listener := messaging.NewListener(pool, nil, messaging.EventsChannel, projections.ReadModelsChannel)
	go listener.Run(lctx) //nolint:errcheck
	queries := projections.NewQueries(pool, projections.QueryOptions{Listener: listener})

	s := newSim(t, 21, 4, 400)
	var steps []step
	for countEvents(steps) < 6_000 {
		steps = append(steps, s.steps(200)...)
	}
	var mu sync.Mutex
	var retired []*natsWorker
	seen := &arrivals{t: t, version: map[string]int64{}, ids: map[string]bool{}}
	workers := []*natsWorker{startNATSWorker(t, pool, ncfg, listener, seen), startNATSWorker(t, pool, ncfg, listener, seen)}
	total := func() float64 { return totalOf(workers, retired, &mu, "applied") }
	var fed sync.WaitGroup
	fed.Go(func() {
		rng := rand.New(rand.NewPCG(21, 7))
		for i := 0; i < len(steps); {
			n := 1 + rng.IntN(20)
			end := min(i+n, len(steps))
			appendSteps(ctx, t, pool, steps[i:end], n)
			i = end
		}
	})
	// Twice: wait for progress, stop the worker that is applying (the owner of
	// the projector's consumer), start a new one in its place a little later.
	for round := 1; round <= 2; round++ {
		deadline := time.Now().Add(60 * time.Second)
		for total() < float64(1500*round) {
			if time.Now().After(deadline) {
				t.Fatalf("projector does not progress (%v applied)", total())
			}
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		busy := 0
		if workers[1].applied() > workers[0].applied() {
			busy = 1
		}
		w := workers[busy]
		mu.Unlock()
		w.stop()
		time.Sleep(300 * time.Millisecond)
		mu.Lock()
		retired = append(retired, w)
		workers[busy] = startNATSWorker(t, pool, ncfg, listener, seen)
		mu.Unlock()
		t.Logf("round %d: stopped the worker that had applied %v events", round, w.applied())
	}
	fed.Wait()
	pos := head(t, pool)
	if err := queries.WaitFor(ctx, pos, 60*time.Second); err != nil {
		t.Fatalf("read model did not reach position %d: %v", pos, err)
	}
	n := eventCount(t, pool)
	// Never applied twice. Fewer may be counted than the log holds: a worker
	// stopped while its COMMIT is in flight may have committed without hearing
	// so (its hooks, which count, do not run); its successor gets those events
	// again and finds them applied (duplicates). The rows are checked below.
	switch applied, dup := total(), totalOf(workers, retired, &mu, "duplicate"); {
	case int(applied) > n:
		t.Errorf("applied %v events across the workers; the log has %d", applied, n)
	case int(applied+dup) < n:
		t.Errorf("applied %v and skipped %v events across the workers; the log has %d", applied, dup, n)
	case int(applied) < n:
		t.Logf("applied %v events across the workers, and found the rest applied (a COMMIT cut short by a stop)", applied)
	}
	seen.mu.Lock()
	if len(seen.ids) != n {
		t.Errorf("the projector was handed %d distinct events; the log has %d", len(seen.ids), n)
	}
	t.Logf("%d deliveries of %d events across the hand-overs", seen.deliveries, len(seen.ids))
	seen.mu.Unlock()
	liveRows := dump(t, pool)
	if len(liveRows["user_status"]) < 300 {
		t.Fatalf("only %d user rows", len(liveRows["user_status"]))
	}
	for _, now := range []time.Time{s.Now(), s.Now().Add(time.Hour)} {
		checkAgainstDomain(t, pool, now)
		checkCoverage(t, pool, now)
	}
	for _, w := range workers {
		w.stop()
	}
	stats := rebuild(t, pool)
	compareDumps(t, "live on NATS vs rebuild", liveRows, dump(t, pool))
	t.Logf("%d events, %d user rows", stats.Events, len(liveRows["user_status"]))
}
