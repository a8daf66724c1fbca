package messaging_test

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testnats"
	"github.com/twofactor/twofactor/messaging"
)

// recorder is a consumer group that remembers what it was delivered, in order.
type recorder struct {
	name string
	mu   sync.Mutex
	// seen: first deliveries, in order; dups counts the others.
	seen    []*eventstore.Record
	got     map[string]bool
	dups    int
	noTx    int
	workers map[string]int
	delay   time.Duration
}

func newRecorder(name string) *recorder {
	return &recorder{name: name, got: map[string]bool{}, workers: map[string]int{}}
}

func (r *recorder) consumer(worker string) messaging.Consumer {
	return messaging.Consumer{Name: r.name, Handle: func(msg *message.Message) error {
		rec, err := messaging.DecodeMessage(msg)
		if err != nil {
			return err
		}
		tx, ok := messaging.TxFromMessage(msg)
		if ok {
			// The handler's writes commit before the message is acknowledged.
			if _, err := tx.Pgx().Exec(msg.Context(), `INSERT INTO nats_effects (grp, event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, r.name, rec.EventID); err != nil {
				return err
			}
		}
		if r.delay > 0 {
			time.Sleep(time.Duration(rand.Int64N(int64(r.delay))))
		}
		r.mu.Lock()
		defer r.mu.Unlock()
		if !ok {
			r.noTx++
		}
		r.workers[worker]++
		if r.got[rec.EventID] {
			r.dups++
			return nil
		}
		r.got[rec.EventID] = true
		r.seen = append(r.seen, rec)
		return nil
	}}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

// inLogOrder checks the first deliveries follow the log's delivery order.
func (r *recorder) inLogOrder(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	rows, err := pool.Query(ctx, `SELECT event_id::text FROM events ORDER BY transaction_id, position`)
	must(t, err)
	want, err := pgx.CollectRows(rows, pgx.RowTo[string])
	must(t, err)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.noTx > 0 {
		t.Errorf("%s: %d deliveries without a transaction", r.name, r.noTx)
	}
	if len(r.seen) != len(want) {
		t.Fatalf("%s: %d events delivered, the log has %d", r.name, len(r.seen), len(want))
	}
	for i, rec := range r.seen {
		if rec.EventID != want[i] {
			t.Fatalf("%s: delivery %d is %s v%d (position %d), the log has %s there", r.name, i, rec.StreamID, rec.Version, rec.Position, want[i])
		}
	}
}

// inStreamOrder checks every stream's events arrived first in version order,
// without a gap, and that every event arrived.
func (r *recorder) inStreamOrder(t *testing.T, total int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.seen) != total {
		t.Fatalf("%s: %d events delivered, want %d", r.name, len(r.seen), total)
	}
	next := map[string]int64{}
	for _, rec := range r.seen {
		if want := next[rec.StreamID] + 1; rec.Version != want {
			t.Fatalf("%s: %s version %d arrived when %d was due", r.name, rec.StreamID, rec.Version, want)
		}
		next[rec.StreamID] = rec.Version
	}

}

// writer appends policy changes to tenant streams from several goroutines.
type writer struct {
	t       *testing.T
	store   *eventstore.Store
	streams int
	mu      sync.Mutex
	version map[string]int64
	total   atomic.Int64
}

func newWriter(t *testing.T, pool *pgxpool.Pool, streams int) *writer {
	return &writer{t: t, store: eventstore.New(pool, time.Now), streams: streams, version: map[string]int64{}}
}

// write appends n events (1–3 per transaction) to random streams, 4 writers at once.
func (w *writer) write(n int) {
	var wg sync.WaitGroup
	per := n / 4
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), uint64(time.Now().UnixNano())))
			for done := 0; done < per; {
				tenant := fmt.Sprintf("t%03d", rng.IntN(w.streams))
				w.mu.Lock() // one writer per stream at a time (no conflicts to retry)
				v := w.version[tenant]
				k := min(1+rng.IntN(3), per-done)
				var events []domain.Event
				for i := 0; i < k; i++ {
					if v == 0 && i == 0 {
						events = append(events, &domain.TenantCreated{Name: tenant, Policy: domain.DefaultPolicy()})
					} else {
						p := domain.DefaultPolicy()
						p.LockoutThreshold = 3 + rng.IntN(5)
						events = append(events, &domain.TenantPolicyChanged{Policy: p})
					}
				}
				_, err := w.store.Append(ctx, tenant, eventstore.TenantStream(tenant), v, events,
					eventstore.Metadata{Actor: domain.Actor{Kind: domain.ActorSystem, ID: "test"}})
				if err == nil {
					w.version[tenant] = v + int64(k)
				}
				w.mu.Unlock()
				if err != nil {
					w.t.Error(err)
					return
				}
				done += k
				w.total.Add(int64(k))
			}
		})
	}
	wg.Wait()
}

// worker is one process's share of the NATS bus: a forwarder and a router.
type natsWorker struct {
	t    *testing.T
	fwd  *messaging.Forwarder
	stop func()
}

func startForwarder(t *testing.T, pool *pgxpool.Pool, ncfg messaging.NATSConfig) (*messaging.Forwarder, func()) {
	t.Helper()
	f, err := messaging.NewForwarder(pool, messaging.ForwarderConfig(), ncfg, watermill.NopLogger{})
	must(t, err)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := f.Run(ctx); err != nil {
			t.Errorf("forwarder: %v", err)
		}
	}()
	<-f.Running()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			must(t, f.Close())
			<-done
		})
	}
	t.Cleanup(stop)
	return f, stop
}

func startNATSRouter(t *testing.T, pool *pgxpool.Pool, ncfg messaging.NATSConfig, consumers ...messaging.Consumer) func() {
	t.Helper()
	nc := testnats.Connect(t, ncfg)
	r, err := messaging.NewNATSRouter(pool, fastRetries(), ncfg, nc, watermill.NopLogger{}, consumers)
	must(t, err)
	return run(t, r)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func natsPool(t *testing.T) *pgxpool.Pool {
	pool := freshPool(t)
	_, err := pool.Exec(ctx, `CREATE TABLE nats_effects (grp TEXT, event_id TEXT, PRIMARY KEY (grp, event_id))`)
	must(t, err)
	return pool
}

func effects(t *testing.T, pool *pgxpool.Pool, group string) int {
	var n int
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM nats_effects WHERE grp = $1`, group).Scan(&n))
	return n
}

// Two workers, each with a forwarder and the consumers, on the shared NATS
// server, while 4 writers append to 40 streams; worker A stops in the middle
// and starts again. The log-ordered group sees the whole log in its delivery
// order; the partitioned group sees every stream in version order, and both
// workers took part in it; every message came with a transaction that
// committed.
func TestNATSBusKeepsTheLogOrderAndEachStreamsOrder(t *testing.T) {
	pool := natsPool(t)
	ncfg := testnats.Config(t, testnats.URL(t))
	ncfg.Partitions = 4
	ncfg.BatchSize = 50
	ncfg.Parallel = []string{"rec.streams"}
	logged, streams := newRecorder("rec.log"), newRecorder("rec.streams")
	streams.delay = 2 * time.Millisecond
	_, stopFA := startForwarder(t, pool, ncfg)
	startForwarder(t, pool, ncfg)
	stopA := startNATSRouter(t, pool, ncfg, logged.consumer("A"), streams.consumer("A"))
	startNATSRouter(t, pool, ncfg, logged.consumer("B"), streams.consumer("B"))

	w := newWriter(t, pool, 40)
	w.write(800)
	waitFor(t, "a third of the events", 30*time.Second, func() bool { return streams.count() > 250 && logged.count() > 250 })
	stopA()
	stopFA()
	w.write(800)
	_, stopFA = startForwarder(t, pool, ncfg)
	stopA = startNATSRouter(t, pool, ncfg, logged.consumer("A2"), streams.consumer("A2"))
	w.write(800)
	total := int(w.total.Load())
	waitFor(t, "every event in both groups", 60*time.Second, func() bool { return streams.count() == total && logged.count() == total })
	logged.inLogOrder(t, pool)
	streams.inStreamOrder(t, total)
	if n := effects(t, pool, "rec.log"); n != total {
		t.Errorf("rec.log committed %d effects, want %d", n, total)
	}
	if n := effects(t, pool, "rec.streams"); n != 0 {
		t.Errorf("rec.streams had a transaction for %d messages; a partitioned group has none", n)
	}
	streams.mu.Lock()
	t.Logf("partitioned group: deliveries by worker %v, %d duplicates; log-ordered group: %d duplicates", streams.workers, streams.dups, logged.dups)
	if streams.workers["B"] == 0 || streams.workers["A"]+streams.workers["A2"] == 0 {
		t.Errorf("the partitioned group was not shared: %v", streams.workers)
	}
	streams.mu.Unlock()
}

// NATS is down for a while (a private server, killed): commands keep
// committing, the log grows unforwarded in PostgreSQL and nothing reaches the consumers;
// when the server is back (same store), everything is delivered, in order per
// stream and in log order.
func TestNATSOutageLosesNothing(t *testing.T) {
	pool := natsPool(t)
	srv := testnats.Start(t)
	ncfg := testnats.Config(t, srv.URL)
	ncfg.Partitions = 3
	ncfg.BatchSize = 40
	ncfg.AckWait = 2 * time.Second
	ncfg.Parallel = []string{"rec.streams"}
	logged, streams := newRecorder("rec.log"), newRecorder("rec.streams")
	fwd, _ := startForwarder(t, pool, ncfg)
	startNATSRouter(t, pool, ncfg, logged.consumer("A"), streams.consumer("A"))
	startNATSRouter(t, pool, ncfg, logged.consumer("B"), streams.consumer("B"))

	w := newWriter(t, pool, 25)
	w.write(400)
	waitFor(t, "the first events", 30*time.Second, func() bool { return streams.count() > 100 && logged.count() > 100 })

	srv.Kill()
	// A batch JetStream acknowledged just before the kill still commits (and is
	// counted) after it: wait for the forwarder to notice and settle.
	waitFor(t, "the forwarder to lose NATS", 10*time.Second, func() bool { return !fwd.Connected() })
	before := fwd.Forwarded()
	for settled := time.Now(); time.Since(settled) < 500*time.Millisecond; time.Sleep(50 * time.Millisecond) {
		if n := fwd.Forwarded(); n != before {
			before, settled = n, time.Now()
		}
	}
	w.write(400) // commands do not need NATS
	w.write(400)
	time.Sleep(500 * time.Millisecond)
	var outbox, forwarded int64 // outbox: the events in the log, all of them to forward
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&outbox))
	if fwd.Forwarded() != before {
		t.Errorf("the forwarder published %d messages while NATS was down", fwd.Forwarded()-before)
	}
	forwarded = fwd.Forwarded()
	if outbox < int64(w.total.Load()) || forwarded >= outbox {
		t.Errorf("log %d events, forwarded %d, appended %d", outbox, forwarded, w.total.Load())
	}
	t.Logf("NATS down: %d events in the log, %d forwarded, %d delivered so far", outbox, forwarded, streams.count())

	srv.Restart()
	w.write(200)
	total := int(w.total.Load())
	waitFor(t, "every event after the outage", 60*time.Second, func() bool { return streams.count() == total && logged.count() == total })
	logged.inLogOrder(t, pool)
	streams.inStreamOrder(t, total)
	t.Logf("%d events; duplicates: log-ordered %d, partitioned %d", total, logged.dups, streams.dups)
}
