package main

import (
	"context"
	"fmt"
	"os/exec"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testnats"
)

// readModel reads the user-status read model as text rows in key order.
func readModel(t *testing.T, pool *pgxpool.Pool) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for table, key := range map[string]string{
		"user_status": "tenant_id, user_id", "user_status_state": "stream_id",
		"tenant_policies": "tenant_id", "tenant_coverage": "tenant_id, status_base",
	} {
		rows, err := pool.Query(context.Background(), `SELECT t::text FROM `+table+` t ORDER BY `+key)
		if err != nil {
			t.Fatal(err)
		}
		out[table], err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// The scale-out topology with real processes on the NATS bus: two API-only
// `serve` processes and two workers (each with its forwarder), a real SMTP
// server. Users enrol an email address, confirm it with the mailed code, are
// required 2FA by an admin and log in with a mailed code, through both APIs,
// while one worker is killed (SIGKILL) and later started again. Every user
// gets every message, the reads with min_position see each write, and the
// live read model equals a rebuild from the log.
func TestScaleOutOnNATSWithRealProcesses(t *testing.T) {
	box := startMailbox(t)
	ncfg := testnats.Config(t, testnats.URL(t))
	bin := buildBinary(t)
	env := testEnv(t, "TWOFACTOR_SMTP_URL=smtp://"+box.addr+"?tls=none", "TWOFACTOR_MAIL_FROM=security@acme.test",
		"TWOFACTOR_BUS=nats", "TWOFACTOR_NATS_URL="+ncfg.URL, "TWOFACTOR_NATS_STREAM="+ncfg.Stream,
		"TWOFACTOR_NATS_SUBJECT="+ncfg.Subject, "TWOFACTOR_NATS_PARTITIONS=4", "TWOFACTOR_KEY_RATE=-1", "TWOFACTOR_IP_RATE=-1",
		// A message the killed worker had claimed goes to the other worker when
		// the lease ends: short here, so that it arrives within box.await.
		"TWOFACTOR_SEND_TIMEOUT=4s", "TWOFACTOR_NOTIFY_LEASE=8s")
	apis := []*server{startServer(t, bin, env, "--consumers=false"), startServer(t, bin, env, "--consumers=false")}
	w1 := startWorkerProc(t, bin, env)
	startWorkerProc(t, bin, env)

	tenant := createTenantWith(t, bin, env, "Acme")
	app, admin := tenant.APIKeys["app"].Token, tenant.APIKeys["admin"].Token

	const users = 24
	var done atomic.Int32
	var mu sync.Mutex
	positions := map[string]int64{}
	journey := func(i int) {
		user := fmt.Sprintf("u%02d", i)
		to := user + "@acme.test"
		api := client{t: t, base: apis[i%2].URL, logs: apis[i%2].Logs}
		other := client{t: t, base: apis[(i+1)%2].URL, logs: apis[(i+1)%2].Logs}
		api.call("POST", "/v1/users/"+user+"/enrollments/email", app, "", map[string]any{"destination": to}, 201)
		other.call("POST", "/v1/users/"+user+"/enrollments/email/confirmation", app, "",
			map[string]any{"code": codeIn(t, box.await(t, to, "Confirm your"))}, 200)
		api.call("PUT", "/v1/users/"+user+"/requirement", admin, "admin:bob", map[string]any{"required": true}, 200)
		if ch := other.call("POST", "/v1/users/"+user+"/challenges", app, "", nil, 200); ch["code_sent_by"] != "email" {
			t.Errorf("challenge of %s: %v", user, ch)
		}
		v := api.call("POST", "/v1/users/"+user+"/verifications", app, "", map[string]any{"method": "email",
			"code": codeIn(t, box.await(t, to, "sign-in code"))}, 200)
		pos := int64(v["position"].(float64))
		// Read your write from the read model fed over NATS, from the other API
		// process (one user's status would be read from the stream).
		list := other.call("GET", fmt.Sprintf("/v1/users?status=activated&required=true&limit=200&min_position=%d", pos), admin, "admin:bob", nil, 200)
		var st map[string]any
		for _, u := range list["users"].([]any) {
			if u.(map[string]any)["user_id"] == user {
				st = u.(map[string]any)
			}
		}
		if st == nil || st["last_verified_method"] != "email" {
			t.Errorf("status of %s: %v", user, list)
		}
		mu.Lock()
		positions[user] = pos
		mu.Unlock()
		done.Add(1)
	}
	var wg sync.WaitGroup
	next := atomic.Int32{}
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= users || t.Failed() {
					return
				}
				journey(i)
			}
		})
	}
	waitDone := func(n int32) {
		deadline := time.Now().Add(90 * time.Second)
		for done.Load() < n && !t.Failed() {
			if time.Now().After(deadline) {
				t.Fatalf("only %d users done", done.Load())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitDone(6)
	w1.kill()
	t.Logf("worker 1 killed after %d users", done.Load())
	waitDone(14)
	w1.start()
	t.Logf("worker 1 started again after %d users", done.Load())
	wg.Wait()
	if t.Failed() {
		return
	}

	// Every message arrived; a duplicate is possible only for a message the
	// killed worker had sent and not yet marked (the notifier's window).
	extra := 0
	for i := 0; i < users; i++ {
		to := fmt.Sprintf("u%02d@acme.test", i)
		for _, subject := range []string{"Confirm your", "Two-factor authentication is on", "sign-in code"} {
			box.await(t, to, subject)
			extra += box.Count(to, subject) - 1
		}
	}
	if extra > 1 {
		t.Errorf("%d duplicate messages for one killed worker", extra)
	}

	// The live read model equals a rebuild from the log.
	var dbURL string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "TWOFACTOR_DATABASE_URL="); ok {
			dbURL = v
		}
	}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var last int64
	for _, p := range positions {
		last = max(last, p)
	}
	cov := client{t: t, base: apis[0].URL}.call("GET", fmt.Sprintf("/v1/coverage?min_position=%d", last), tenant.APIKeys["auditor"].Token, "auditor:ann", nil, 200)
	if cov["activated"].(float64) != users {
		t.Errorf("coverage: %v", cov)
	}
	live := readModel(t, pool)
	replay := exec.Command(bin, "replay", "--read-model", "user_status")
	replay.Env = env
	if out, err := replay.CombinedOutput(); err != nil {
		t.Fatalf("replay: %v\n%s", err, out)
	}
	rebuilt := readModel(t, pool)
	for table := range live {
		if !reflect.DeepEqual(live[table], rebuilt[table]) {
			t.Errorf("table %s: live %d rows, rebuilt %d rows:\n live    %.600v\n rebuilt %.600v", table, len(live[table]), len(rebuilt[table]), live[table], rebuilt[table])
		}
	}
	for _, api := range apis {
		if strings.Contains(api.Logs.String(), "event bus: NATS") {
			t.Error("an API-only process connected to NATS")
		}
	}
	t.Logf("%d users through 2 API processes and 2 workers (one killed and restarted); %d duplicate messages", users, extra)
}
