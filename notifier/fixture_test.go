package notifier_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/notifier"
	"github.com/twofactor/twofactor/secrets"
)

func TestMain(m *testing.M) {
	if os.Getenv(workerEnv) != "" {
		// A worker process started by TestWorkerKilledBetweenDeliveryAndAck.
		os.Exit(runWorkerProcess())
	}
	if os.Getenv(forwarderEnv) != "" {
		// A forwarder process started by TestForwarderKilledMidBurstLosesNothing (nats_test.go).
		os.Exit(runForwarderProcess())
	}
	os.Exit(testdb.Main(m))
}

var ctx = context.Background()

// clock is the commands' settable clock. It starts at the real time, so codes it
// stamps are valid for the notifier, which runs on the real clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// logBuffer collects every log line of the test, to search it for secrets.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// env is one test's world: its own database, the write side, a real SMTP server
// and an SMS provider on loopback.
type env struct {
	t      *testing.T
	url    string
	pool   *pgxpool.Pool
	store  *eventstore.Store
	vault  *secrets.Vault
	svc    *commands.Service
	clock  *clock
	keys   string // TWOFACTOR_MASTER_KEYS form
	logs   *logBuffer
	logger *slog.Logger
	smtp   *smtpServer
	sms    *smsServer
	// bus, when set (useNATS, nats_test.go), runs the worker on NATS JetStream.
	bus *natsBus
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, url: testdb.Fresh(t), logs: &logBuffer{}}
	pool, err := pgxpool.New(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e.pool = pool
	k, err := secrets.GenerateMasterKey(rand.Reader, "k1")
	if err != nil {
		t.Fatal(err)
	}
	e.keys = k.String()
	ring, err := secrets.NewKeyring(k)
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
	// Mid-step, so the ±1 step codes are unambiguous.
	now := time.Now().UTC().Truncate(30 * time.Second).Add(10 * time.Second)
	e.clock = &clock{now: now}
	e.store = eventstore.New(pool, e.clock.Now)
	e.vault = secrets.NewVault(pool, ring, rand.Reader)
	e.svc = commands.New(e.store, e.vault, hasher, e.clock.Now, rand.Reader)
	e.logger = slog.New(slog.NewJSONHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug,
		// Timestamps are full of digits that could pass for a code.
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{}
			}
			return a
		}}))
	e.smtp = newSMTPServer(t)
	e.sms = newSMSServer(t)
	return e
}

func (e *env) tenant(policy domain.Policy) string {
	e.t.Helper()
	created, err := e.svc.CreateTenant(ctx, commands.Meta{Actor: domain.Actor{Kind: domain.ActorSystem, ID: "tests"}},
		commands.CreateTenant{Name: "Tenant " + policy.IssuerName, Policy: &policy})
	if err != nil {
		e.t.Fatal(err)
	}
	return created.TenantID
}

func testConfig() notifier.Config {
	c := notifier.DefaultConfig()
	c.DefaultFrom = "twofactor@service.test"
	c.PollInterval = 50 * time.Millisecond
	c.BackoffBase = 50 * time.Millisecond
	c.BackoffMax = 400 * time.Millisecond
	c.SendTimeout = 5 * time.Second
	c.Lease = 10 * time.Second
	c.MetricsInterval = 100 * time.Millisecond
	c.MaxAttempts = 50
	return c
}

type worker struct {
	n    *notifier.Notifier
	reg  *prometheus.Registry
	stop func()
}

// startWorker runs a notifier as `twofactord worker` would: its consumer in a
// watermill router, and its delivery loop.
func (e *env) startWorker(cfg notifier.Config, extra ...message.HandlerMiddleware) *worker {
	e.t.Helper()
	mailer, err := notifier.NewSMTPMailer(e.smtp.url(), notifier.SMTPOptions{Timeout: 2 * time.Second})
	if err != nil {
		e.t.Fatal(err)
	}
	sms, err := notifier.NewHTTPSMS(e.sms.srv.URL+"/messages", "Bearer sms-token", "Acme", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	n, err := notifier.New(notifier.Deps{
		Pool: e.pool, Store: e.store, Vault: e.vault, Mail: mailer, SMS: sms,
		Logger: e.logger, Clock: time.Now, Metrics: reg,
	}, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	run := runWorker
	if e.bus != nil {
		run = e.bus.runWorker
	}
	stop := run(e.t, e.pool, n, watermill.NewSlogLogger(e.logger), extra...)
	w := &worker{n: n, reg: reg, stop: stop}
	e.t.Cleanup(stop)
	return w
}

func routerConfig() messaging.Config {
	c := messaging.DefaultConfig()
	c.PollInterval = 20 * time.Millisecond
	return c
}

// runWorker starts the router and the delivery loop; the returned stop is idempotent.
func runWorker(t testing.TB, pool *pgxpool.Pool, n *notifier.Notifier, logger watermill.LoggerAdapter, extra ...message.HandlerMiddleware) func() {
	router, err := messaging.NewRouter(pool, routerConfig(), logger, []messaging.Consumer{n.Consumer()}, extra...)
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

// unconsumedSQL counts the events the consumer group $1 has not consumed.
// Groups consume in (transaction id, position) order, not in position order:
// of two concurrent commands, the one whose transaction began first may take
// the larger position, so "position > offset_acked" can count events long
// consumed.
const unconsumedSQL = `SELECT count(*) FROM events
	WHERE (transaction_id, position) > coalesce((SELECT (last_processed_transaction_id, offset_acked)
		FROM watermill_offsets_twofactor_events WHERE consumer_group = $1), ('0'::xid8, 0))`

// waitIdle waits until the notifier consumed every event and no notification is open.
func (e *env) waitIdle(timeout time.Duration) {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var caughtUp bool
		var open int
		err := e.pool.QueryRow(ctx, `
			SELECT (`+unconsumedSQL+`) = 0,
			       (SELECT count(*) FROM notifications WHERE status IN ('pending', 'sending'))`,
			notifier.ConsumerGroup).Scan(&caughtUp, &open)
		if err != nil {
			e.t.Fatal(err)
		}
		if e.bus != nil {
			caughtUp = e.bus.caughtUp(e.t, e.pool)
		}
		if caughtUp && open == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("notifier not idle after %s: caught up %v, %d open notifications\n%s", timeout, caughtUp, open, e.busState())
		}
		time.Sleep(25 * time.Millisecond)
	}
}

type ledgerRow struct {
	EventID   string
	Kind      string
	Status    string
	Attempts  int
	LastError string
	Channel   string
	UpdatedAt time.Time
	SentAt    *time.Time
}

func (e *env) ledger() []ledgerRow {
	e.t.Helper()
	rows, err := e.pool.Query(ctx, `SELECT event_id::text, kind, status, attempts, coalesce(last_error, ''),
		coalesce(channel, ''), updated_at, sent_at FROM notifications ORDER BY created_at, event_id, kind`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []ledgerRow
	for rows.Next() {
		var r ledgerRow
		if err := rows.Scan(&r.EventID, &r.Kind, &r.Status, &r.Attempts, &r.LastError, &r.Channel, &r.UpdatedAt, &r.SentAt); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// Users, admins and codes.

var admin = commands.Meta{Actor: domain.Actor{Kind: domain.ActorAdmin, ID: "admin-1"}, RequestID: "req-admin"}

func as(user string) commands.Meta {
	return commands.Meta{Actor: domain.Actor{Kind: domain.ActorUser, ID: user}, RequestID: "req-" + user}
}

func (e *env) codeAt(secret string, offset time.Duration) string {
	e.t.Helper()
	code, err := totp.GenerateCodeCustom(secret, e.clock.Now().Add(offset), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		e.t.Fatal(err)
	}
	return code
}

// kindOf reads the notification kind out of a Message-ID "<event-id.kind@domain>"
// or an SMS id "event-id.kind".
func kindOf(id string) string {
	id = strings.Trim(id, "<>")
	if at := strings.IndexByte(id, '@'); at >= 0 {
		id = id[:at]
	}
	_, kind, _ := strings.Cut(id, ".")
	return kind
}

func mailsTo(msgs []received, to, kind string) []received {
	var out []received
	for _, m := range msgs {
		if len(m.To) == 1 && m.To[0] == to && (kind == "" || kindOf(m.MessageID) == kind) {
			out = append(out, m)
		}
	}
	return out
}

// logContains finds a secret in logs; a number only where it stands alone, not
// inside a longer number or an identifier.
func logContains(logs, secret string) bool {
	if strings.Trim(secret, "0123456789") != "" {
		return strings.Contains(logs, secret)
	}
	return regexp.MustCompile(`(^|[^0-9A-Za-z])` + secret + `([^0-9A-Za-z]|$)`).MatchString(logs)
}

var mailCodeRE = regexp.MustCompile(`code is ([0-9]{6,10})\.`)

// mailCode waits for the n-th (1-based) message of kind to an address and returns the code in it.
func (e *env) mailCode(to, kind string, n int) string {
	e.t.Helper()
	msgs := e.smtp.wait(30*time.Second, kind+" to "+to, func(msgs []received) bool { return len(mailsTo(msgs, to, kind)) >= n })
	m := mailsTo(msgs, to, kind)[n-1]
	match := mailCodeRE.FindStringSubmatch(m.Text)
	if match == nil {
		e.t.Fatalf("no code in %s message to %s: %q", kind, to, m.Text)
	}
	return match[1]
}

// smsServer is an SMS provider speaking the generic HTTP protocol, on loopback.
type smsServer struct {
	t   *testing.T
	srv *httptest.Server
	mu  sync.Mutex
	got []smsReceived
}

type smsReceived struct {
	ID, To, From, Body string
	Auth, Idempotency  string
}

func newSMSServer(t *testing.T) *smsServer {
	s := &smsServer{t: t}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m smsReceived
		body, _ := io.ReadAll(r.Body)
		if r.Method != http.MethodPost || r.URL.Path != "/messages" || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if err := json.Unmarshal(body, &m); err != nil {
			http.Error(w, "bad json", http.StatusBadRequest)
			return
		}
		m.Auth, m.Idempotency = r.Header.Get("Authorization"), r.Header.Get("Idempotency-Key")
		s.mu.Lock()
		s.got = append(s.got, m)
		s.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *smsServer) messages() []smsReceived {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]smsReceived(nil), s.got...)
}

var smsCodeRE = regexp.MustCompile(`code: ([0-9]{6,10})\.`)

// code waits for the n-th SMS of kind to a number and returns its code.
func (s *smsServer) code(to, kind string, n int) string {
	s.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var seen []smsReceived
		for _, m := range s.messages() {
			if m.To == to && kindOf(m.ID) == kind {
				seen = append(seen, m)
			}
		}
		if len(seen) >= n {
			match := smsCodeRE.FindStringSubmatch(seen[n-1].Body)
			if match == nil {
				s.t.Fatalf("no code in SMS %q", seen[n-1].Body)
			}
			return match[1]
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("no %s SMS #%d to %s", kind, n, to)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// busState describes the consumer group's offset and the database's sessions,
// for a failure message.
func (e *env) busState() string {
	rows, err := e.pool.Query(ctx, `SELECT consumer_group || ': acked (' || last_processed_transaction_id || ', ' || offset_acked || ')' FROM watermill_offsets_twofactor_events
		UNION ALL SELECT 'log: max position ' || coalesce(max(position), 0) || ', events ' || count(*) FROM events
		UNION ALL SELECT 'session ' || pid || ' ' || coalesce(state, '') || ' xact ' || coalesce((now() - xact_start)::text, '-') ||
			' wait ' || coalesce(wait_event_type || '/' || wait_event, '-') || ': ' || left(query, 160)
			FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	if err != nil {
		return err.Error()
	}
	lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err.Error()
	}
	return strings.Join(lines, "\n")
}
