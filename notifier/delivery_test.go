package notifier_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/notifier"
)

// setup starts an email set-up: one setup_code message to addr.
func (e *env) setup(tenant, user, addr string) {
	e.t.Helper()
	_, err := e.svc.StartOTPMethodSetup(ctx, as(user), commands.StartOTPMethodSetup{TenantID: tenant, UserID: user, Method: domain.MethodEmail, Destination: addr})
	if err != nil {
		e.t.Fatal(err)
	}
}

func addr(i int) string { return fmt.Sprintf("user%02d@example.com", i) }

// waitLedger polls the ledger until cond holds.
func (e *env) waitLedger(timeout time.Duration, what string, cond func([]ledgerRow) bool) []ledgerRow {
	e.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rows := e.ledger()
		if cond(rows) {
			return rows
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s; ledger: %+v", what, rows)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func countIDs(msgs []received) map[string]int {
	ids := map[string]int{}
	for _, m := range msgs {
		ids[m.MessageID]++
	}
	return ids
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if want, ok := labels[l.GetName()]; ok && want != l.GetValue() {
					continue next
				}
			}
			return value(m)
		}
	}
	return 0
}

func value(m *dto.Metric) float64 {
	switch {
	case m.GetCounter() != nil:
		return m.GetCounter().GetValue()
	case m.GetGauge() != nil:
		return m.GetGauge().GetValue()
	}
	return 0
}

// An SMTP server that refuses connections, then fails messages temporarily,
// then recovers: every message arrives once, later.
func TestFailingSMTPServerDelaysWithoutLosing(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	e.smtp.stop() // connection refused
	w := e.startWorker(testConfig())
	const n = 4
	for i := range n {
		e.setup(tenant, fmt.Sprintf("u%d", i), addr(i))
	}
	e.waitLedger(30*time.Second, "two failed attempts each", func(rows []ledgerRow) bool {
		if len(rows) != n {
			return false
		}
		for _, r := range rows {
			if r.Attempts < 2 || r.Status == "sent" || r.Status == "dead" {
				return false
			}
		}
		return true
	})
	// Back, but the first messages fail with 451 after their content was sent.
	var mu sync.Mutex
	refusals := 3
	e.smtp.set(func(s *smtpServer) {
		s.failData = func(received) error {
			mu.Lock()
			defer mu.Unlock()
			if refusals > 0 {
				refusals--
				return errTemporary
			}
			return nil
		}
	})
	e.smtp.restart()
	e.smtp.wait(30*time.Second, "every message", func(msgs []received) bool { return len(countIDs(msgs)) == n })
	e.waitIdle(30 * time.Second)
	for id, c := range countIDs(e.smtp.messages()) {
		if c != 1 {
			t.Errorf("message %s arrived %d times", id, c)
		}
	}
	if len(e.smtp.messages()) != n {
		t.Errorf("%d messages arrived, want %d", len(e.smtp.messages()), n)
	}
	for _, r := range e.ledger() {
		if r.Status != "sent" || r.Attempts < 2 {
			t.Errorf("ledger row %+v: want sent after at least 2 attempts", r)
		}
	}
	if f := metricValue(t, w.reg, "twofactor_notifications_failures_total", nil); f < n+3 {
		t.Errorf("failures metric %v, want at least %d", f, n+3)
	}
	logs := e.logs.String()
	if !strings.Contains(logs, "will retry") || !strings.Contains(logs, "451") {
		t.Error("the retries were not logged with the server's reply")
	}
	for i := range n {
		if strings.Contains(logs, addr(i)) {
			t.Errorf("the logs contain %s", addr(i))
		}
	}
}

// A recipient the server always rejects: its notification is dead after
// MaxAttempts, visible in the ledger, the metrics and ListDead, and the others
// are delivered meanwhile by the same single worker.
func TestPermanentFailureEndsDeadWithoutBlockingOthers(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	const doomed = "doomed@example.com"
	e.smtp.set(func(s *smtpServer) {
		s.rejectRcpt = func(to string) error {
			if to == doomed {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "<" + doomed + ">: no such user"}
			}
			return nil
		}
	})
	cfg := testConfig()
	cfg.Concurrency = 1
	cfg.MaxAttempts = 3
	// Long enough that the others, recorded meanwhile, are due before the doomed
	// one gives up even on a loaded CI machine.
	cfg.BackoffBase = 2 * time.Second
	cfg.BackoffMax = 2 * time.Second
	w := e.startWorker(cfg)
	e.setup(tenant, "doomed", doomed)
	e.waitLedger(10*time.Second, "the first failure", func(rows []ledgerRow) bool { return len(rows) == 1 && rows[0].Attempts == 1 })
	for i := range 3 {
		e.setup(tenant, fmt.Sprintf("u%d", i), addr(i))
	}
	rows := e.waitLedger(30*time.Second, "the dead notification", func(rows []ledgerRow) bool {
		for _, r := range rows {
			if r.Status == "dead" {
				return true
			}
		}
		return false
	})
	e.waitIdle(30 * time.Second)
	rows = e.ledger()
	var dead ledgerRow
	for _, r := range rows {
		if r.Status == "dead" {
			dead = r
		}
	}
	if dead.Attempts != 3 || !strings.Contains(dead.LastError, "550") || !strings.Contains(dead.LastError, "permanent") ||
		strings.Contains(dead.LastError, doomed) {
		t.Errorf("dead row %+v: want 3 attempts and the 550 reply without the address", dead)
	}
	for _, r := range rows {
		if r.Status == "dead" {
			continue
		}
		if r.Status != "sent" || r.Attempts != 1 || r.SentAt == nil || !r.SentAt.Before(dead.UpdatedAt) {
			t.Errorf("row %+v: want sent at the first attempt, before the failing one gave up at %v", r, dead.UpdatedAt)
		}
	}
	if got := len(e.smtp.messages()); got != 3 {
		t.Errorf("%d messages arrived, want 3", got)
	}
	if v := metricValue(t, w.reg, "twofactor_notifications_dead_total", map[string]string{"kind": "setup_code"}); v != 1 {
		t.Errorf("dead_total = %v, want 1", v)
	}
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, w.reg, "twofactor_notifications", map[string]string{"status": "dead"}) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the ledger gauge does not show the dead notification")
		}
		time.Sleep(20 * time.Millisecond)
	}
	listed, err := notifier.ListDead(ctx, e.pool, notifier.Filter{TenantID: tenant})
	if err != nil || len(listed) != 1 || listed[0].EventID != dead.EventID || listed[0].Kind != notifier.KindSetupCode || listed[0].UserID != "doomed" {
		t.Fatalf("ListDead = %+v, %v", listed, err)
	}
	if strings.Contains(e.logs.String(), doomed) || !strings.Contains(e.logs.String(), "notification dead") {
		t.Error("the logs contain the address, or do not say the notification is dead")
	}
	// An operator queues it again: three more attempts, dead again.
	n, err := notifier.Retry(ctx, e.pool, "", dead.EventID, "", time.Now())
	if err != nil || n != 1 {
		t.Fatalf("Retry = %d, %v", n, err)
	}
	e.waitLedger(30*time.Second, "dead again", func(rows []ledgerRow) bool {
		for _, r := range rows {
			if r.EventID == dead.EventID && r.Status == "dead" && r.Attempts == 3 && r.UpdatedAt.After(dead.UpdatedAt) {
				return true
			}
		}
		return false
	})
}

// Two workers share the consumer group and the ledger: every message once.
func TestTwoWorkersDeliverEachMessageOnce(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	cfg := testConfig()
	cfg.Concurrency = 2
	w1 := e.startWorker(cfg)
	w2 := e.startWorker(cfg)
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := e.svc.StartOTPMethodSetup(ctx, as(fmt.Sprintf("u%d", i)), commands.StartOTPMethodSetup{
				TenantID: tenant, UserID: fmt.Sprintf("u%d", i), Method: domain.MethodEmail, Destination: addr(i)})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	e.smtp.wait(30*time.Second, "every message", func(msgs []received) bool { return len(countIDs(msgs)) == n })
	e.waitIdle(30 * time.Second)
	time.Sleep(200 * time.Millisecond)
	msgs := e.smtp.messages()
	if len(msgs) != n {
		t.Errorf("%d messages for %d notifications", len(msgs), n)
	}
	for id, c := range countIDs(msgs) {
		if c != 1 {
			t.Errorf("%s arrived %d times", id, c)
		}
	}
	for i := range n {
		if len(mailsTo(msgs, addr(i), "setup_code")) != 1 {
			t.Errorf("no single message to %s", addr(i))
		}
	}
	for _, r := range e.ledger() {
		if r.Status != "sent" || r.Attempts != 1 {
			t.Errorf("ledger row %+v", r)
		}
	}
	s1 := metricValue(t, w1.reg, "twofactor_notifications_sent_total", nil)
	s2 := metricValue(t, w2.reg, "twofactor_notifications_sent_total", nil)
	t.Logf("worker 1 sent %v, worker 2 sent %v", s1, s2)
	if s1+s2 != n {
		t.Errorf("the workers counted %v + %v sends, want %d", s1, s2, n)
	}
}

// A worker process killed after the SMTP server stored a message and before it
// could mark it sent (SIGKILL, while it waits for the server's 250): the next
// worker delivers every message, and the only duplicate is that one message,
// with the same Message-ID.
func TestWorkerKilledBetweenDeliveryAndAck(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	start := func(name string) (*exec.Cmd, *logBuffer) {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		logs := &logBuffer{}
		cmd.Stderr = logs
		cmd.Env = append(os.Environ(), workerEnv+"=1", workerDBEnv+"="+e.url, workerKeysEnv+"="+e.keys, workerSMTPEnv+"="+e.smtp.url())
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
		for !strings.Contains(logs.String(), "worker: running") {
			if time.Now().After(deadline) || cmd.ProcessState != nil {
				t.Fatalf("%s did not start: %s", name, logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		return cmd, logs
	}
	first, firstLogs := start("first worker")
	killed := make(chan string, 1)
	var stored int
	e.smtp.set(func(s *smtpServer) {
		s.afterStore = func(r received) {
			stored++
			if stored == 3 {
				// The message is stored; the worker waits for "250 OK". Kill it now.
				_ = first.Process.Kill()
				_ = first.Wait()
				killed <- r.MessageID
			}
		}
	})
	const n = 6
	for i := range n {
		e.setup(tenant, fmt.Sprintf("u%d", i), addr(i))
	}
	var victim string
	select {
	case victim = <-killed:
	case <-time.After(30 * time.Second):
		t.Fatalf("the first worker never delivered 3 messages: %s", firstLogs.String())
	}
	_, secondLogs := start("second worker")
	e.smtp.wait(60*time.Second, "every message", func(msgs []received) bool {
		ids := countIDs(msgs)
		return len(ids) == n && ids[victim] == 2
	})
	e.waitIdle(30 * time.Second)
	time.Sleep(300 * time.Millisecond)
	for id, c := range countIDs(e.smtp.messages()) {
		switch {
		case id == victim && c != 2:
			t.Errorf("the message in flight at the kill arrived %d times, want twice (the documented window)", c)
		case id != victim && c != 1:
			t.Errorf("%s arrived %d times, want once", id, c)
		}
	}
	for _, r := range e.ledger() {
		want := 1
		if "<"+r.EventID+"."+r.Kind+"@service.test>" == victim {
			want = 2
		}
		if r.Status != "sent" || r.Attempts != want {
			t.Errorf("ledger row %+v, want sent after %d attempts", r, want)
		}
	}
	logs := firstLogs.String() + secondLogs.String()
	for i := range n {
		if strings.Contains(logs, addr(i)) {
			t.Errorf("a worker logged %s", addr(i))
		}
	}
	for _, m := range e.smtp.messages() {
		if c := mailCodeRE.FindStringSubmatch(m.Text); c != nil && logContains(logs, c[1]) {
			t.Errorf("a worker logged the code %s", c[1])
		}
	}
}

// The low-codes warning goes once per set, at the tenant's threshold, and again
// for a new set.
func TestLowBackupCodesWarnedOncePerSet(t *testing.T) {
	e := newEnv(t)
	policy := domain.DefaultPolicy()
	policy.BackupCodeCount = 6
	policy.LowBackupCodesWarn = 3
	tenant := e.tenant(policy)
	e.startWorker(testConfig())
	const to = "lowe@example.com"
	e.setup(tenant, "lowe", to)
	act, err := e.svc.ConfirmOTPMethod(ctx, as("lowe"), commands.ConfirmOTPMethod{TenantID: tenant, UserID: "lowe", Method: domain.MethodEmail, Code: e.mailCode(to, "setup_code", 1)})
	if err != nil {
		t.Fatal(err)
	}
	consume := func(codes []string) {
		for _, c := range codes {
			if _, err := e.svc.ConsumeBackupCode(ctx, as("lowe"), commands.ConsumeBackupCode{TenantID: tenant, UserID: "lowe", Code: c}); err != nil {
				t.Fatal(err)
			}
		}
	}
	consume(act.BackupCodes) // 5, 4, 3 (warn), 2, 1, 0
	e.waitIdle(30 * time.Second)
	if low := mailsTo(e.smtp.messages(), to, "backup_codes_low"); len(low) != 1 || !strings.Contains(low[0].Text, "Only 3 unused backup codes remain") {
		t.Fatalf("after the first set: %d warnings", len(low))
	}
	regen, err := e.svc.RegenerateBackupCodes(ctx, as("lowe"), commands.RegenerateBackupCodes{TenantID: tenant, UserID: "lowe"})
	if err != nil {
		t.Fatal(err)
	}
	consume(regen.BackupCodes[:4]) // 5, 4, 3 (warn), 2
	e.waitIdle(30 * time.Second)
	msgs := e.smtp.messages()
	if low := mailsTo(msgs, to, "backup_codes_low"); len(low) != 2 {
		t.Fatalf("%d low-codes warnings for two sets, want 2", len(low))
	}
	if used := mailsTo(msgs, to, "backup_code_used"); len(used) != 10 {
		t.Fatalf("%d backup-code messages, want 10", len(used))
	}
}

// Nothing is sent for a user erased before delivery, nor a code that expired
// before it could be sent; both are recorded as skipped.
func TestErasedUserAndExpiredCodeAreSkipped(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	e.setup(tenant, "gone", "gone@example.com")
	if _, err := e.svc.ForgetUser(ctx, admin, commands.ForgetUser{TenantID: tenant, UserID: "gone"}); err != nil {
		t.Fatal(err)
	}
	e.setup(tenant, "late", "late@example.com")
	mailer, err := notifier.NewSMTPMailer(e.smtp.url(), notifier.SMTPOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A worker whose clock is past the codes' lifetime.
	n, err := notifier.New(notifier.Deps{Pool: e.pool, Store: e.store, Vault: e.vault, Mail: mailer, SMS: e.nullSMS(),
		Logger: e.logger, Clock: func() time.Time { return time.Now().Add(11 * time.Minute) }}, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	stop := runWorker(t, e.pool, n, watermill.NewSlogLogger(e.logger))
	defer stop()
	rows := e.waitLedger(30*time.Second, "both skipped", func(rows []ledgerRow) bool {
		return len(rows) == 2 && rows[0].Status == "skipped" && rows[1].Status == "skipped"
	})
	if rows[0].LastError != "user erased" || !strings.Contains(rows[1].LastError, "expired") {
		t.Errorf("reasons: %q, %q", rows[0].LastError, rows[1].LastError)
	}
	if len(e.smtp.messages()) != 0 {
		t.Errorf("%d messages sent", len(e.smtp.messages()))
	}
}

func (e *env) nullSMS() notifier.SMSSender {
	sms, err := notifier.NewHTTPSMS(e.sms.srv.URL+"/messages", "", "", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return sms
}

// A code replaced by a newer one before it could be sent is not sent: only the
// newest code of a method works.
func TestSupersededCodeIsNotSent(t *testing.T) {
	e := newEnv(t)
	tenant := e.tenant(domain.DefaultPolicy())
	e.setup(tenant, "twice", "first@example.com")
	e.clock.Advance(61 * time.Second) // past the resend cooldown
	e.setup(tenant, "twice", "second@example.com")
	e.startWorker(testConfig())
	e.waitIdle(30 * time.Second)
	rows := e.ledger()
	if len(rows) != 2 || rows[0].Status != "skipped" || !strings.Contains(rows[0].LastError, "newer code") || rows[1].Status != "sent" {
		t.Fatalf("ledger %+v", rows)
	}
	if msgs := e.smtp.messages(); len(msgs) != 1 || msgs[0].To[0] != "second@example.com" {
		t.Fatalf("messages %v", summary(msgs))
	}
}
