package notifier_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/testnats"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/notifier"
)

// natsBus runs a test's notifier worker on NATS JetStream (TWOFACTOR_BUS=nats):
// a forwarder moves the event log to the test's own stream, and the notifier's
// consumer group reads it there, one consumer per partition.
type natsBus struct {
	cfg messaging.NATSConfig
}

// useNATS switches e to NATS; with forwarder, a forwarder runs in the test
// process until the test ends.
func (e *env) useNATS(forwarder bool) *natsBus {
	e.t.Helper()
	cfg := testnats.Config(e.t, testnats.URL(e.t))
	cfg.Partitions = 4
	cfg.AckWait = 2 * time.Second
	cfg.Parallel = []string{notifier.ConsumerGroup}
	e.bus = &natsBus{cfg: cfg}
	if forwarder {
		f, err := messaging.NewForwarder(e.pool, messaging.ForwarderConfig(), cfg, watermill.NewSlogLogger(e.logger))
		if err != nil {
			e.t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			if err := f.Run(ctx); err != nil {
				e.t.Errorf("forwarder: %v", err)
			}
		})
		<-f.Running()
		e.t.Cleanup(func() {
			_ = f.Close()
			wg.Wait()
		})
	}
	return e.bus
}

// runWorker is runWorker (fixture_test.go) with the consumer on NATS.
func (b *natsBus) runWorker(t testing.TB, pool *pgxpool.Pool, n *notifier.Notifier, logger watermill.LoggerAdapter, extra ...message.HandlerMiddleware) func() {
	t.Helper()
	nc := testnats.Connect(t, b.cfg)
	router, err := messaging.NewNATSRouter(pool, routerConfig(), b.cfg, nc, logger, []messaging.Consumer{n.Consumer()}, extra...)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := router.Run(runCtx); err != nil {
			t.Errorf("router: %v", err)
		}
	})
	wg.Go(func() { _ = n.Run(runCtx) })
	select {
	case <-router.Running():
	case <-time.After(30 * time.Second):
		t.Fatal("router did not start")
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			wg.Wait()
		})
	}
}

// caughtUp: the forwarders forwarded the whole log and every partition
// consumer of the notifier has nothing left to deliver or to be acknowledged.
func (b *natsBus) caughtUp(t testing.TB, pool *pgxpool.Pool) bool {
	t.Helper()
	var unforwarded int
	if err := pool.QueryRow(ctx, unconsumedSQL, messaging.ForwarderGroup).Scan(&unforwarded); err != nil {
		t.Fatal(err)
	}
	if unforwarded > 0 {
		return false
	}
	nc := testnats.Connect(t, b.cfg)
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for p := 0; p < b.cfg.Partitions; p++ {
		c, err := js.Consumer(cctx, b.cfg.Stream, b.cfg.ConsumerName(notifier.ConsumerGroup, p))
		if err != nil {
			return false // not created yet
		}
		info := c.CachedInfo()
		if info.NumPending > 0 || info.NumAckPending > 0 {
			return false
		}
	}
	return true
}

// The journey test (every message of a realistic set of users, exactly) with
// the notifier's consumer group on NATS JetStream, every event delivered to it
// twice (watermill's Duplicator).
func TestJourneyOnNATS(t *testing.T) {
	e := newEnv(t)
	e.useNATS(true)
	journey(t, e)
}

// The forwarder process is killed (SIGKILL) in the middle of a burst of
// one-time codes, and so is its standby a little later; for a while no
// forwarder runs at all, then a new one starts. Every user receives exactly one
// code: nothing is lost, and the events forwarded twice (published, then the
// process died before committing its offset) are dropped by JetStream or
// recognised by the ledger.
func TestForwarderKilledMidBurstLosesNothing(t *testing.T) {
	e := newEnv(t)
	bus := e.useNATS(false)
	tenant := e.tenant(domain.DefaultPolicy())
	e.startWorker(testConfig())

	start := func(name string) *exec.Cmd {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		logs := &logBuffer{}
		cmd.Stderr = logs
		cmd.Env = append(os.Environ(), forwarderEnv+"=1", workerDBEnv+"="+e.url, forwarderNATSEnv+"="+bus.cfg.URL,
			forwarderStreamEnv+"="+bus.cfg.Stream, forwarderSubjectEnv+"="+bus.cfg.Subject,
			forwarderPartitionsEnv+"="+strconv.Itoa(bus.cfg.Partitions))
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if cmd.ProcessState == nil {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
			}
		})
		deadline := time.Now().Add(30 * time.Second)
		for !strings.Contains(logs.String(), "forwarder: running") {
			if time.Now().After(deadline) {
				t.Fatalf("%s did not start: %s", name, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		return cmd
	}
	kill := func(cmd *exec.Cmd) {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	recorded := func() int {
		var n int
		if err := e.pool.QueryRow(ctx, `SELECT count(*) FROM notifications`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitRecorded := func(n int) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for recorded() < n {
			if time.Now().After(deadline) {
				t.Fatalf("only %d notifications recorded, waiting for %d", recorded(), n)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	first, second := start("first forwarder"), start("second forwarder")
	const users = 80
	// The burst must outlast both kills: 20 commands per writer, 15 ms apart
	// (at 5 ms, once a command no longer wrote an outbox row, the burst was
	// sometimes over before the second kill, and the test could not tell).
	var burst sync.WaitGroup
	for w := 0; w < 4; w++ {
		burst.Go(func() {
			for i := w; i < users; i += 4 {
				user := fmt.Sprintf("u%02d", i)
				if _, err := e.svc.StartOTPMethodSetup(ctx, as(user), commands.StartOTPMethodSetup{TenantID: tenant, UserID: user,
					Method: domain.MethodEmail, Destination: user + "@example.com"}); err != nil {
					t.Error(err)
				}
				time.Sleep(15 * time.Millisecond)
			}
		})
	}
	waitRecorded(10)
	kill(first)
	waitRecorded(30)
	kill(second)
	// No forwarder: the commands go on; the log grows unforwarded.
	before := recorded()
	burst.Wait()
	time.Sleep(300 * time.Millisecond)
	var pending int
	if err := e.pool.QueryRow(ctx, unconsumedSQL,
		messaging.ForwarderGroup).Scan(&pending); err != nil {
		t.Fatal(err)
	}
	if pending < 10 || recorded() > users-10 {
		t.Fatalf("the burst was over before the forwarders were killed: %d events not forwarded, %d of %d codes recorded", pending, recorded(), users)
	}
	start("third forwarder")
	e.waitIdle(60 * time.Second)

	msgs := e.smtp.messages()
	for i := 0; i < users; i++ {
		to := fmt.Sprintf("u%02d@example.com", i)
		if n := len(mailsTo(msgs, to, "setup_code")); n != 1 {
			t.Errorf("%s received %d setup codes", to, n)
		}
	}
	if len(msgs) != users {
		t.Errorf("%d messages for %d users", len(msgs), users)
	}
	for _, r := range e.ledger() {
		if r.Status != "sent" || r.Attempts != 1 {
			t.Errorf("ledger row %+v", r)
		}
	}
	t.Logf("%d codes delivered across two killed forwarders (%d recorded when the second was killed, %d events waiting in the log for the third)", len(msgs), before, pending)
}

// NATS stops (a private server, killed) while users act: the commands keep
// succeeding and their notifications wait in the log; when NATS is back
// every message arrives once, and each user's notifications were recorded in
// the order of that user's events.
func TestNATSOutageDelaysButLosesNothing(t *testing.T) {
	e := newEnv(t)
	srv := testnats.Start(t)
	cfg := testnats.Config(t, srv.URL)
	cfg.Partitions = 4
	cfg.AckWait = 2 * time.Second
	cfg.Parallel = []string{notifier.ConsumerGroup}
	e.bus = &natsBus{cfg: cfg}
	f, err := messaging.NewForwarder(e.pool, messaging.ForwarderConfig(), cfg, watermill.NewSlogLogger(e.logger))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = f.Run(ctx) })
	<-f.Running()
	t.Cleanup(func() { _ = f.Close(); wg.Wait() })
	tenant := e.tenant(domain.DefaultPolicy())
	e.startWorker(testConfig())

	const users = 12
	addr := func(i int) string { return fmt.Sprintf("o%02d@example.com", i) }
	for i := 0; i < users; i++ {
		user := fmt.Sprintf("o%02d", i)
		must[commands.CodeSent](t)(e.svc.StartOTPMethodSetup(ctx, as(user), commands.StartOTPMethodSetup{TenantID: tenant, UserID: user, Method: domain.MethodEmail, Destination: addr(i)}))
		must[commands.Activation](t)(e.svc.ConfirmOTPMethod(ctx, as(user), commands.ConfirmOTPMethod{TenantID: tenant, UserID: user, Method: domain.MethodEmail, Code: e.mailCode(addr(i), "setup_code", 1)}))
	}
	e.waitIdle(30 * time.Second)

	srv.Kill()
	for i := 0; i < users; i++ {
		user := fmt.Sprintf("o%02d", i)
		must[commands.Challenge](t)(e.svc.StartLoginChallenge(ctx, as(user), commands.StartLoginChallenge{TenantID: tenant, UserID: user}))
		must[commands.Result](t)(e.svc.DisableTwoFactor(ctx, admin, commands.DisableTwoFactor{TenantID: tenant, UserID: user}))
	}
	time.Sleep(500 * time.Millisecond)
	var waiting int
	if err := e.pool.QueryRow(ctx, unconsumedSQL,
		messaging.ForwarderGroup).Scan(&waiting); err != nil {
		t.Fatal(err)
	}
	if waiting < 2*users {
		t.Fatalf("%d events wait in the log, want at least %d", waiting, 2*users)
	}
	for i := 0; i < users; i++ {
		if n := len(mailsTo(e.smtp.messages(), addr(i), "otp_code")); n != 0 {
			t.Fatalf("%s got a code while NATS was down", addr(i))
		}
	}

	srv.Restart()
	e.waitIdle(60 * time.Second)
	msgs := e.smtp.messages()
	for i := 0; i < users; i++ {
		for _, kind := range []string{"setup_code", "enabled", "otp_code", "disabled"} {
			if n := len(mailsTo(msgs, addr(i), kind)); n != 1 {
				t.Errorf("%s received %d %s messages", addr(i), n, kind)
			}
		}
	}
	// Recorded in each user's order: by recording time, the stream versions rise.
	rows, err := e.pool.Query(ctx, `SELECT user_id, stream_version FROM notifications ORDER BY created_at, stream_version`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	last := map[string]int64{}
	for rows.Next() {
		var user string
		var v int64
		if err := rows.Scan(&user, &v); err != nil {
			t.Fatal(err)
		}
		if v < last[user] {
			t.Errorf("%s: the notification of version %d was recorded after version %d's", user, v, last[user])
		}
		last[user] = v
	}
	t.Logf("%d events waited in the log during the outage; %d messages in all", waiting, len(msgs))
}

const (
	forwarderEnv           = "NOTIFIER_TEST_FORWARDER"
	forwarderNATSEnv       = "NOTIFIER_TEST_NATS_URL"
	forwarderStreamEnv     = "NOTIFIER_TEST_NATS_STREAM"
	forwarderSubjectEnv    = "NOTIFIER_TEST_NATS_SUBJECT"
	forwarderPartitionsEnv = "NOTIFIER_TEST_NATS_PARTITIONS"
)

// runForwarderProcess is `twofactord forwarder`: the event log to NATS, until killed.
func runForwarderProcess() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, "forwarder:", err)
		return 1
	}
	pool, err := pgxpool.New(ctx, os.Getenv(workerDBEnv))
	if err != nil {
		return fail(err)
	}
	cfg := messaging.DefaultNATSConfig()
	cfg.URL = os.Getenv(forwarderNATSEnv)
	cfg.Stream = os.Getenv(forwarderStreamEnv)
	cfg.Subject = os.Getenv(forwarderSubjectEnv)
	if cfg.Partitions, err = strconv.Atoi(os.Getenv(forwarderPartitionsEnv)); err != nil {
		return fail(err)
	}
	mcfg := messaging.ForwarderConfig()
	mcfg.BatchSize = 5 // small batches: the kill lands between commits
	f, err := messaging.NewForwarder(pool, mcfg, cfg, watermill.NopLogger{})
	if err != nil {
		return fail(err)
	}
	errs := make(chan error, 1)
	go func() { errs <- f.Run(ctx) }()
	select {
	case <-f.Running():
	case err := <-errs:
		return fail(err)
	}
	fmt.Fprintln(os.Stderr, "forwarder: running")
	if err := <-errs; err != nil {
		return fail(err)
	}
	return 0
}
