package messaging_test

import (
	"context"
	"errors"
	"fmt"
	"os"
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
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/messaging"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

var ctx = context.Background()

func freshPool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// publish appends one event per tenant stream and returns their event ids.
func publish(t *testing.T, pool *pgxpool.Pool, names ...string) []string {
	t.Helper()
	store := eventstore.New(pool, time.Now)
	var ids []string
	for _, n := range names {
		a, err := store.Append(ctx, n, eventstore.TenantStream(n), 0,
			[]domain.Event{&domain.TenantCreated{Name: n, Policy: domain.DefaultPolicy()}},
			eventstore.Metadata{Actor: domain.Actor{Kind: domain.ActorSystem, ID: "test"}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.Records[0].EventID)
	}
	return ids
}

func run(t *testing.T, r *message.Router) func() {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			t.Errorf("router: %v", err)
		}
	}()
	<-r.Running()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			if err := r.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
			<-done
		})
	}
	t.Cleanup(stop)
	return stop
}

func fastRetries() messaging.Config {
	cfg := messaging.DefaultConfig()
	cfg.MaxRetries, cfg.RetryInitial, cfg.RetryMax = 2, time.Millisecond, 2*time.Millisecond
	return cfg
}

func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A message a consumer can never handle goes to the poison queue with the
// reason, the handler and the topic; the consumer goes on with the next ones,
// and the other consumer group is not affected.
func TestPoisonQueueKeepsTheReasonAndDoesNotBlock(t *testing.T) {
	pool := freshPool(t)
	var mu sync.Mutex
	handled := map[string][]string{}
	record := func(group string) message.NoPublishHandlerFunc {
		return func(msg *message.Message) error {
			rec, err := messaging.DecodeMessage(msg)
			if err != nil {
				return err
			}
			if group == "picky" && rec.TenantID == "bad" {
				return fmt.Errorf("cannot handle tenant %s", rec.TenantID)
			}
			if group == "panicky" && rec.TenantID == "boom" {
				panic("boom")
			}
			mu.Lock()
			handled[group] = append(handled[group], rec.TenantID)
			mu.Unlock()
			return nil
		}
	}
	r, err := messaging.NewRouter(pool, fastRetries(), watermill.NopLogger{}, []messaging.Consumer{
		{Name: "picky", Handle: record("picky")}, {Name: "panicky", Handle: record("panicky")}, {Name: "easy", Handle: record("easy")},
	})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	ids := publish(t, pool, "a", "bad", "b", "boom", "c")
	count := func(g string) int { mu.Lock(); defer mu.Unlock(); return len(handled[g]) }
	waitFor(t, "consumers", 10*time.Second, func() bool { return count("picky") == 4 && count("panicky") == 4 && count("easy") == 5 })
	mu.Lock()
	if fmt.Sprint(handled["picky"]) != "[a b boom c]" || fmt.Sprint(handled["panicky"]) != "[a bad b c]" {
		t.Errorf("handled %v", handled)
	}
	mu.Unlock()

	rows, err := pool.Query(ctx, `SELECT uuid, metadata->>'reason_poisoned', metadata->>'handler_poisoned', metadata->>'topic_poisoned'
		FROM watermill_twofactor_poison ORDER BY "offset"`)
	if err != nil {
		t.Fatal(err)
	}
	type poisoned struct{ ID, Reason, Handler, Topic string }
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[poisoned])
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("poison queue: %+v", got)
	}
	byHandler := map[string]poisoned{}
	for _, p := range got {
		byHandler[p.Handler] = p
	}
	if p := byHandler["picky"]; p.ID != ids[1] || p.Topic != eventstore.Topic || p.Reason != "cannot handle tenant bad" {
		t.Errorf("picky poisoned %+v", p)
	}
	if p := byHandler["panicky"]; p.ID != ids[3] || p.Reason == "" {
		t.Errorf("panicky poisoned %+v", p)
	}
}

// failingHook writes the messages of a batch in BeforeCommit, failing the first
// few commits: the batch is delivered again, and each message's effect is
// committed exactly once (the table's primary key would refuse a second).
type failingHook struct {
	ids   []string
	fails *atomic.Int32
}

func (h *failingHook) BeforeCommit(ctx context.Context, tx pgx.Tx) error {
	if h.fails.Add(-1) >= 0 {
		return errors.New("injected failure")
	}
	for _, id := range h.ids {
		if _, err := tx.Exec(ctx, `INSERT INTO hook_effects (id) VALUES ($1)`, id); err != nil {
			return err
		}
	}
	return nil
}
func (h *failingHook) AfterCommit()   {}
func (h *failingHook) AfterRollback() {}

func TestTransactionHooksCommitWithTheOffset(t *testing.T) {
	pool := freshPool(t)
	if _, err := pool.Exec(ctx, `CREATE TABLE hook_effects (id TEXT PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	var fails atomic.Int32
	fails.Store(3)
	var calls atomic.Int32
	key := new(int)
	handle := func(msg *message.Message) error {
		calls.Add(1)
		tx, ok := messaging.TxFromMessage(msg)
		if !ok {
			return errors.New("no subscriber transaction")
		}
		h := tx.Hook(key, func() messaging.TxHook { return &failingHook{fails: &fails} }).(*failingHook)
		h.ids = append(h.ids, msg.UUID)
		return nil
	}
	cfg := fastRetries()
	cfg.BatchSize = 4
	r, err := messaging.NewRouter(pool, cfg, watermill.NopLogger{}, []messaging.Consumer{{Name: "hooked", Handle: handle}})
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, 10)
	for i := range names {
		names[i] = fmt.Sprintf("t%d", i)
	}
	publish(t, pool, names...)
	run(t, r)
	var n int
	waitFor(t, "effects", 20*time.Second, func() bool {
		_ = pool.QueryRow(ctx, `SELECT count(*) FROM hook_effects`).Scan(&n)
		return n == len(names)
	})
	time.Sleep(100 * time.Millisecond)
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM hook_effects`).Scan(&n); err != nil || n != len(names) {
		t.Fatalf("%d effects, %v", n, err)
	}
	if calls.Load() <= int32(len(names)) {
		t.Errorf("the failed batches were not delivered again (%d calls)", calls.Load())
	}
	if _, ok := messaging.TxFromMessage(message.NewMessage("x", nil)); ok {
		t.Error("a bare message has a transaction")
	}
}

// With the listener, a subscriber blocked at the end of the log picks an event up
// at commit, not at the next poll (5 s here); after the LISTEN connection is
// killed it reconnects and stays fast.
func TestListenerWakesTheSubscriber(t *testing.T) {
	pool := freshPool(t)
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l := messaging.NewListener(pool, watermill.NopLogger{}, messaging.EventsChannel)
	go l.Run(lctx) //nolint:errcheck
	waitFor(t, "listener", 5*time.Second, l.Connected)
	seen := make(chan time.Time, 100)
	cfg := messaging.DefaultConfig()
	cfg.PollInterval = 5 * time.Second
	cfg.Listener = l
	r, err := messaging.NewRouter(pool, cfg, watermill.NopLogger{}, []messaging.Consumer{{Name: "woken", Handle: func(*message.Message) error {
		seen <- time.Now()
		return nil
	}}})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, r)
	time.Sleep(200 * time.Millisecond) // the subscriber is now waiting
	check := func(round int) {
		t.Helper()
		// The snapshot horizon is cluster-wide: a transaction held open by another
		// test package can delay one delivery past the wake-up, so most, not all,
		// must beat the poll interval; without wake-ups none would.
		fast := 0
		for i := 0; i < 5; i++ {
			start := time.Now()
			publish(t, pool, fmt.Sprintf("r%d-%d", round, i))
			select {
			case at := <-seen:
				if at.Sub(start) < time.Second {
					fast++
				}
			case <-time.After(15 * time.Second):
				t.Fatal("not delivered even by polling")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if fast < 3 {
			t.Errorf("round %d: only %d of 5 deliveries came within 1 s of the commit", round, fast)
		}
	}
	check(0)
	if _, err := pool.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reconnect", 10*time.Second, func() bool { return !l.Connected() })
	waitFor(t, "reconnect", 10*time.Second, l.Connected)
	time.Sleep(100 * time.Millisecond)
	check(1)
	// Closing does not wait for the 5 s poll interval.
	start := time.Now()
	stop()
	if d := time.Since(start); d > time.Second {
		t.Errorf("close took %v", d)
	}
}

func TestConfigValidation(t *testing.T) {
	if err := messaging.DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, mutate := range []func(*messaging.Config){
		func(c *messaging.Config) { c.PollInterval = 0 },
		func(c *messaging.Config) { c.BatchSize = 0 },
		func(c *messaging.Config) { c.AckDeadline = 0 },
		func(c *messaging.Config) { c.RetryMax = 0 },
		func(c *messaging.Config) { c.ResendInterval = -1 },
	} {
		c := messaging.DefaultConfig()
		mutate(&c)
		if c.Validate() == nil {
			t.Errorf("accepted %+v", c)
		}
	}
	pool := freshPool(t)
	if _, err := messaging.NewRouter(pool, messaging.DefaultConfig(), nil, []messaging.Consumer{{Name: "x"}, {Name: "x"}}); err == nil {
		t.Error("duplicate consumer names accepted")
	}
}

// Without a listener of the caller's, the router runs its own while it runs.
func TestRouterListensByItself(t *testing.T) {
	pool := freshPool(t)
	seen := make(chan time.Time, 10)
	cfg := messaging.DefaultConfig()
	cfg.PollInterval = 5 * time.Second
	r, err := messaging.NewRouter(pool, cfg, watermill.NopLogger{}, []messaging.Consumer{{Name: "solo", Handle: func(*message.Message) error {
		seen <- time.Now()
		return nil
	}}})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, r)
	listening := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, "the router's listener", 5*time.Second, func() bool { return listening() == 1 })
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	publish(t, pool, "solo")
	select {
	case at := <-seen:
		if d := at.Sub(start); d > 4*time.Second {
			t.Errorf("delivered after %v: not woken before the 5 s poll", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("not delivered")
	}
	stop()
	waitFor(t, "the listener to stop with the router", 5*time.Second, func() bool { return listening() == 0 })
}

// A handler cut short by shutdown is not poisoned: its message is delivered
// again when the router starts again.
func TestShutdownDoesNotPoisonInFlightMessages(t *testing.T) {
	pool := freshPool(t)
	started := make(chan struct{}, 1)
	blocking := func(msg *message.Message) error {
		select {
		case started <- struct{}{}:
		default:
		}
		<-msg.Context().Done()
		return msg.Context().Err()
	}
	r, err := messaging.NewRouter(pool, fastRetries(), watermill.NopLogger{}, []messaging.Consumer{{Name: "slow", Handle: blocking}})
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, r)
	ids := publish(t, pool, "x")
	<-started
	stop()
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM watermill_twofactor_poison`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("poisoned %d (%v)", n, err)
	}
	got := make(chan string, 1)
	r, err = messaging.NewRouter(pool, fastRetries(), watermill.NopLogger{}, []messaging.Consumer{{Name: "slow", Handle: func(msg *message.Message) error {
		got <- msg.UUID
		return nil
	}}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, r)
	select {
	case id := <-got:
		if id != ids[0] {
			t.Errorf("redelivered %s, want %s", id, ids[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the interrupted message was not delivered again")
	}
}

// beginCounter counts the transactions begun on a pool (pgx sends "begin…").
type beginCounter struct{ n atomic.Int64 }

func (c *beginCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, data pgx.TraceQueryStartData) context.Context {
	if len(data.SQL) >= 5 && (data.SQL[:5] == "begin" || data.SQL[:5] == "BEGIN") {
		c.n.Add(1)
	}
	return ctx
}

func (c *beginCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// Idle consumers cost PostgreSQL at most one transaction per second each
// (the fallback poll behind the LISTEN wake-ups), and an event still reaches
// them at once.
func TestIdleConsumersCostAtMostOneTransactionPerSecond(t *testing.T) {
	cfg, err := pgxpool.ParseConfig(testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	var begins beginCounter
	cfg.ConnConfig.Tracer = &begins
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var got atomic.Int64
	consumers := []messaging.Consumer{
		{Name: "idle.a", Handle: func(*message.Message) error { got.Add(1); return nil }},
		{Name: "idle.b", Handle: func(*message.Message) error { got.Add(1); return nil }},
	}
	r, err := messaging.NewRouter(pool, messaging.DefaultConfig(), watermill.NopLogger{}, consumers)
	if err != nil {
		t.Fatal(err)
	}
	defer run(t, r)()
	<-r.Running()
	time.Sleep(time.Second) // subscribing and the first polls
	const window = 5 * time.Second
	before := begins.n.Load()
	time.Sleep(window)
	idle := begins.n.Load() - before
	perConsumer := float64(idle) / window.Seconds() / float64(len(consumers))
	t.Logf("idle: %d transactions in %v for %d consumers (%.2f per second each)", idle, window, len(consumers), perConsumer)
	if limit := int64(len(consumers)) * int64(window/time.Second+1); idle > limit {
		t.Errorf("%d transactions in %v while idle, want at most %d", idle, window, limit)
	}
	start := time.Now()
	publish(t, pool, "wake")
	waitFor(t, "both consumers to get the event", 5*time.Second, func() bool { return got.Load() == 2 })
	t.Logf("an event after the idle period reached both consumers in %v", time.Since(start).Round(time.Millisecond))
}
