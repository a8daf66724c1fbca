package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/pquerna/otp/totp"

	"github.com/twofactor/twofactor/internal/testdb"
)

// restartLoad drives users through enrolment and backup-code logins while
// PostgreSQL goes away, each request carrying an Idempotency-Key and retried
// with it until it is answered, as a client following the contract does.
type restartLoad struct {
	t        *testing.T
	base     string
	app      string
	client   *http.Client
	failures atomic.Int64 // 503s and dropped connections: the outage was felt
	mu       sync.Mutex
	bad      []string // answers the contract forbids: 500s, 503s without Retry-After
	maxPos   atomic.Int64
}

// do sends one request until it is answered with anything but 503 or a
// dropped connection, and returns that answer.
func (l *restartLoad) do(method, path, key string, body any) (int, map[string]any) {
	raw, _ := json.Marshal(body)
	deadline := time.Now().Add(90 * time.Second)
	for {
		req, _ := http.NewRequest(method, l.base+path, bytes.NewReader(raw))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+l.app)
		req.Header.Set("Idempotency-Key", key)
		resp, err := l.client.Do(req)
		if time.Now().After(deadline) {
			l.fail(fmt.Sprintf("%s %s never answered within 90 s: %v", method, path, err))
			return 0, nil
		}
		if err != nil {
			l.failures.Add(1)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			l.failures.Add(1)
			if resp.Header.Get("Retry-After") == "" {
				l.fail(fmt.Sprintf("%s %s: 503 without Retry-After: %s", method, path, out))
			}
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if resp.StatusCode >= 500 {
			l.fail(fmt.Sprintf("%s %s: %d: %s", method, path, resp.StatusCode, out))
			return resp.StatusCode, nil
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			l.fail(fmt.Sprintf("%s %s: %d: not JSON: %s", method, path, resp.StatusCode, out))
		}
		if p, ok := m["position"].(float64); ok {
			for cur := l.maxPos.Load(); int64(p) > cur && !l.maxPos.CompareAndSwap(cur, int64(p)); cur = l.maxPos.Load() {
			}
		}
		return resp.StatusCode, m
	}
}

func (l *restartLoad) fail(msg string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bad = append(l.bad, msg)
}

// user enrols one user and logs in with each of their backup codes, checking
// every answer: each code works once and the count goes down by one.
func (l *restartLoad) user(name string) bool {
	status, enrol := l.do("POST", "/v1/users/"+name+"/enrollments/totp", name+"-enrol", map[string]any{"account_name": name})
	if status != http.StatusCreated {
		l.fail(fmt.Sprintf("%s: enrolment answered %d %v", name, status, enrol))
		return false
	}
	secret, _ := enrol["secret"].(string)
	code, err := totp.GenerateCode(secret, time.Now())
	if err != nil {
		l.fail(err.Error())
		return false
	}
	status, conf := l.do("POST", "/v1/users/"+name+"/enrollments/totp/confirmation", name+"-confirm", map[string]any{"code": code})
	if status != http.StatusOK {
		l.fail(fmt.Sprintf("%s: confirmation answered %d %v", name, status, conf))
		return false
	}
	codes, _ := conf["backup_codes"].([]any)
	if len(codes) != 10 {
		l.fail(fmt.Sprintf("%s: confirmation returned %d backup codes", name, len(codes)))
		return false
	}
	for i, c := range codes {
		status, v := l.do("POST", "/v1/users/"+name+"/verifications", fmt.Sprintf("%s-backup-%d", name, i),
			map[string]any{"method": "backup_code", "code": c})
		if status != http.StatusOK || v["verified"] != true || v["backup_codes_remaining"] != float64(9-i) {
			l.fail(fmt.Sprintf("%s: backup code %d answered %d %v", name, i, status, v))
			return false
		}
	}
	return true
}

// faultLoad runs workers that each enrol users and spend their backup codes
// until disrupt returns, then checks what every fault test promises: no answer
// the contract forbids, the faults were felt, and every retried request ran
// exactly once.
func faultLoad(t *testing.T, bin, base, dbURL string, env []string, logs func() string, disrupt func()) (tenant createdTenant, maxPos int64) {
	t.Helper()
	tenant = createTenantWith(t, bin, env, "Faults")
	load := &restartLoad{t: t, base: base, app: tenant.APIKeys["app"].Token, client: &http.Client{Timeout: 30 * time.Second}}
	const workers = 6
	stop := make(chan struct{})
	var users sync.Map
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				name := fmt.Sprintf("w%d-u%d", w, n)
				if !load.user(name) {
					return
				}
				users.Store(name, true)
			}
		}(w)
	}
	disrupt()
	close(stop)
	wg.Wait()

	if len(load.bad) > 0 {
		t.Fatalf("%d answers broke the contract, first: %s\nlogs:\n%s", len(load.bad), load.bad[0], errorLines(logs()))
	}
	if load.failures.Load() == 0 {
		t.Fatal("no request noticed the faults: the test did not test anything")
	}
	var names []string
	users.Range(func(k, _ any) bool { names = append(names, k.(string)); return true })
	if len(names) < workers {
		t.Fatalf("only %d users completed", len(names))
	}
	checkExactlyOnce(t, dbURL, tenant.TenantID, names)
	t.Logf("%d users, %d requests retried after 503 or a dropped connection", len(names), load.failures.Load())
	return tenant, load.maxPos.Load()
}

// checkExactlyOnce: one enrolment, one set of codes, ten codes consumed and
// nothing failed, for every user the load completed.
func checkExactlyOnce(t *testing.T, dbURL, tenantID string, names []string) {
	t.Helper()
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	rows, err := pool.Query(ctx, `SELECT stream_id, event_type, count(*) FROM events WHERE tenant_id = $1 AND stream_id LIKE 'user:%'
		GROUP BY stream_id, event_type`, tenantID)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]map[string]int{}
	for rows.Next() {
		var stream, typ string
		var n int
		if err := rows.Scan(&stream, &typ, &n); err != nil {
			t.Fatal(err)
		}
		user := stream[strings.LastIndex(stream, ":")+1:]
		if counts[user] == nil {
			counts[user] = map[string]int{}
		}
		counts[user][typ] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"TOTPEnrollmentStarted": 1, "TOTPEnrollmentConfirmed": 1, "TwoFactorEnabled": 1,
		"BackupCodesGenerated": 1, "BackupCodeConsumed": 10}
	for _, name := range names {
		for typ, n := range want {
			if counts[name][typ] != n {
				t.Errorf("%s: %d %s, want %d (all: %v)", name, counts[name][typ], typ, n, counts[name])
			}
		}
		for _, failed := range []string{"BackupCodeCheckFailed", "TOTPCheckFailed", "BackupCodesRegenerated"} {
			if counts[name][failed] != 0 {
				t.Errorf("%s: %d %s after retries (all: %v)", name, counts[name][failed], failed, counts[name])
			}
		}
	}
}

// caughtUp waits until serve is ready and its read side shows position, then
// checks that no event was parked in the poison queue.
func caughtUp(t *testing.T, base, dbURL string, tenant createdTenant, position int64, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, _ := httpGet(base + "/readyz")
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after the faults\n%s", errorLines(logs()))
		}
		time.Sleep(200 * time.Millisecond)
	}
	admin := client{t: t, base: base}
	admin.call("GET", fmt.Sprintf("/v1/coverage?min_position=%d", position), tenant.APIKeys["admin"].Token, "admin:ops", nil, http.StatusOK)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var poisoned int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM watermill_twofactor_poison`).Scan(&poisoned); err != nil {
		t.Fatal(err)
	}
	if poisoned != 0 {
		t.Fatalf("%d events reached the poison queue\n%s", poisoned, errorLines(logs()))
	}
}

// PostgreSQL restarted (fast, then a crash) under load: clients see 503 with
// Retry-After and never 500; every retried request ran exactly once; no event
// reached the poison queue and the read side caught up.
func TestPostgreSQLRestartUnderLoad(t *testing.T) {
	bin := buildBinary(t)
	pg := testdb.StartPrivate(t)
	dbURL := pg.URLFor("twofactor")
	env := append(testEnv(t), "TWOFACTOR_DATABASE_URL="+dbURL, "TWOFACTOR_KEY_RATE=-1", "TWOFACTOR_IP_RATE=-1")
	srv := startServer(t, bin, env)
	tenant, pos := faultLoad(t, bin, srv.URL, dbURL, env, srv.Logs.String, func() {
		time.Sleep(2 * time.Second)
		pg.Stop("fast") // an operator's restart: every connection is terminated
		time.Sleep(time.Second)
		pg.Start()
		time.Sleep(2 * time.Second)
		pg.Stop("immediate") // a crash: recovery at the next start
		time.Sleep(time.Second)
		pg.Start()
		time.Sleep(2 * time.Second)
	})
	caughtUp(t, srv.URL, dbURL, tenant, pos, srv.Logs.String)
}

// serve SIGKILLed twice under load, its PostgreSQL backends going with its
// connections, wherever each request was (before, inside, or after its
// commit): retries with the same keys run each request exactly once.
func TestServeKilledUnderLoad(t *testing.T) {
	bin := buildBinary(t)
	env := append(testEnv(t), "TWOFACTOR_KEY_RATE=-1", "TWOFACTOR_IP_RATE=-1")
	dbURL := envValue(env, "TWOFACTOR_DATABASE_URL")
	srv := startServeProc(t, bin, env)
	base := "http://" + srv.addr
	logs := func() string { return srv.all.String() }
	tenant, pos := faultLoad(t, bin, base, dbURL, env, logs, func() {
		for i := 0; i < 2; i++ {
			time.Sleep(2 * time.Second)
			srv.kill()
			time.Sleep(300 * time.Millisecond)
			srv.start()
		}
		time.Sleep(2 * time.Second)
	})
	caughtUp(t, base, dbURL, tenant, pos, logs)
}

// envValue is the last value of name in env, as exec uses it.
func envValue(env []string, name string) string {
	v := ""
	for _, kv := range env {
		if k, val, ok := strings.Cut(kv, "="); ok && k == name {
			v = val
		}
	}
	return v
}

func errorLines(logs string) string {
	var b strings.Builder
	for _, line := range strings.Split(logs, "\n") {
		if strings.Contains(line, `"level":"ERROR"`) && b.Len() < 20000 {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}
