package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testkit"
)

type createdTenant struct {
	TenantID string `json:"tenant_id"`
	APIKeys  map[string]struct {
		Token string `json:"token"`
	} `json:"api_keys"`
}

func createTenantWith(t *testing.T, bin string, env []string, name string) createdTenant {
	t.Helper()
	cmd := exec.Command(bin, "tenant", "create", "--name", name, "--json")
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("tenant create: %v", err)
	}
	var c createdTenant
	if err := json.Unmarshal(out, &c); err != nil {
		t.Fatal(err)
	}
	return c
}

// appendUnprojectable writes, bypassing the commands and Append, a tenant
// policy change the read model can never store: its issuer name carries a NUL,
// which the event log's JSON keeps and jsonb refuses (as a PATCH /v1/policy
// once could). The hash chain is the one Append writes; the log is the bus's
// topic, so the row is all there is to write.
func appendUnprojectable(t *testing.T, pool *pgxpool.Pool, tenantID string) *eventstore.Record {
	t.Helper()
	ctx := t.Context()
	stream := "tenant:" + tenantID
	p := domain.DefaultPolicy()
	p.IssuerName = "Acme\x00"
	e := &domain.TenantPolicyChanged{Policy: p, Previous: domain.DefaultPolicy()}
	payload, err := eventstore.Encode(e)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Microsecond)
	meta, err := json.Marshal(eventstore.Metadata{TenantID: tenantID, RequestID: "handcrafted", OccurredAt: now,
		Actor: domain.Actor{Kind: domain.ActorSystem, ID: "test"}})
	if err != nil {
		t.Fatal(err)
	}
	rec := &eventstore.Record{EventID: uuid.NewString(), TenantID: tenantID, StreamID: stream, Type: e.EventType(),
		SchemaVersion: eventstore.SchemaVersion, Payload: payload, RawMetadata: meta, RecordedAt: now}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT stream_version, hash FROM events WHERE stream_id = $1 ORDER BY stream_version DESC LIMIT 1`,
			stream).Scan(&rec.Version, &rec.PrevHash); err != nil {
			return err
		}
		rec.Version++
		rec.Hash = eventstore.Hash(rec.PrevHash, rec)
		if err := tx.QueryRow(ctx, `INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type,
			schema_version, payload, metadata, recorded_at, prev_hash, hash)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING position`,
			rec.EventID, rec.TenantID, rec.StreamID, rec.Version, rec.Type, rec.SchemaVersion,
			string(rec.Payload), string(rec.RawMetadata), rec.RecordedAt, rec.PrevHash, rec.Hash).Scan(&rec.Position); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return rec
}

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// One tenant's event the projector can never apply, in a running serve: it is
// isolated, /readyz and the metrics name the stall, the tenant's
// read-your-writes reads answer 503 read_model_stalled, another tenant's writes
// stay readable within the normal wait, nothing is parked in the poison queue,
// and `replay` names the event and exits non-zero.
func TestAnUnprojectableEventStallsOnlyItsTenant(t *testing.T) {
	bin := buildBinary(t)
	env := testEnv(t)
	srv := startServer(t, bin, env)
	pool, err := pgxpool.New(t.Context(), envValue(env, "TWOFACTOR_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	a := createTenantWith(t, bin, env, "Acme")
	b := createTenantWith(t, bin, env, "Beta")
	c := client{t: t, base: srv.URL, logs: srv.Logs}

	bad := appendUnprojectable(t, pool, a.TenantID)

	// Tenant B's writes, before and after the stall, are read back at once.
	for _, user := range []string{"bob", "bea", "ben"} {
		w := c.call("POST", "/v1/users/"+user+"/enrollments/totp", b.APIKeys["app"].Token, "", map[string]any{"account_name": user + "@example.com"}, http.StatusCreated)
		start := time.Now()
		// The list is a read-model read (one user's status is read from the stream).
		got := c.call("GET", fmt.Sprintf("/v1/users?status=pending&min_position=%.0f", w["position"]), b.APIKeys["admin"].Token, "admin:root", nil, http.StatusOK)
		listed := false
		for _, u := range got["users"].([]any) {
			listed = listed || u.(map[string]any)["user_id"] == user
		}
		if took := time.Since(start); took > 2*time.Second || !listed {
			t.Fatalf("tenant B's write read back after %v: %v", took, got)
		}
	}
	c.call("GET", fmt.Sprintf("/v1/coverage?min_position=%d", bad.Position), b.APIKeys["admin"].Token, "admin:root", nil, http.StatusOK)

	// Tenant A: a clear 503 instead of a silent wait or stale data.
	p := c.call("GET", fmt.Sprintf("/v1/users?min_position=%d", bad.Position), a.APIKeys["admin"].Token, "admin:root", nil, http.StatusServiceUnavailable)
	if p["code"] != "read_model_stalled" || !strings.Contains(fmt.Sprint(p["detail"]), bad.EventID) {
		t.Fatalf("stalled tenant's read: %v", p)
	}

	code, body := getBody(t, srv.URL+"/readyz")
	var ready struct {
		Status  string            `json:"status"`
		Checks  map[string]string `json:"checks"`
		Details map[string]string `json:"details"`
	}
	if err := json.Unmarshal([]byte(body), &ready); err != nil {
		t.Fatal(err)
	}
	detail := ready.Details["consumer_stalls"]
	// Degraded, not unready: the API still serves every tenant, and a load
	// balancer must not take it away from the others for one tenant's event.
	if code != http.StatusOK || ready.Status != "degraded" || ready.Checks["consumer_stalls"] != "failing" {
		t.Fatalf("readyz with a stalled consumer: %d %s", code, body)
	}
	for _, want := range []string{"projection.user_status", a.TenantID, bad.EventID, fmt.Sprint(bad.Position), "TenantPolicyChanged"} {
		if !strings.Contains(detail, want) {
			t.Errorf("readyz detail %q does not name %q", detail, want)
		}
	}

	// A worker's /readyz says the same.
	addr := "127.0.0.1:" + freePort(t)
	worker := exec.Command(bin, "worker", "--worker-addr", addr)
	worker.Env = env
	workerLogs := &lockedBuffer{}
	worker.Stdout, worker.Stderr = workerLogs, workerLogs
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = worker.Process.Signal(os.Interrupt)
		if err := worker.Wait(); err != nil {
			t.Errorf("worker: %v\n%s", err, workerLogs.String())
		}
	}()
	for deadline := time.Now().Add(30 * time.Second); ; {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(b), "projection.user_status") &&
				strings.Contains(string(b), bad.EventID) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker's readyz does not name the stall (%v)\n%s", err, workerLogs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	_, metrics := getBody(t, srv.URL+"/metrics")
	for _, want := range []string{`twofactor_consumer_stalled{consumer="projection.user_status"} 1`,
		`twofactor_consumer_isolated_events_total{consumer="projection.user_status"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if !strings.Contains(srv.Logs.String(), "event isolated") {
		t.Error("no error logged for the isolated event")
	}
	var poisoned int
	if err := pool.QueryRow(t.Context(), `SELECT count(*) FROM watermill_twofactor_poison`).Scan(&poisoned); err != nil {
		t.Fatal(err)
	}
	if poisoned != 0 {
		t.Fatalf("%d messages in the poison queue", poisoned)
	}

	list := exec.Command(bin, "consumers", "stalled", "--json")
	list.Env = env
	listed, err := list.Output()
	var stall struct {
		Consumer  string `json:"consumer"`
		TenantID  string `json:"tenant_id"`
		EventID   string `json:"event_id"`
		EventType string `json:"event_type"`
		Position  int64  `json:"position"`
	}
	if err != nil || json.Unmarshal(listed, &stall) != nil || stall.Consumer != "projection.user_status" || stall.TenantID != a.TenantID ||
		stall.EventID != bad.EventID || stall.Position != bad.Position || stall.EventType != "TenantPolicyChanged" {
		t.Fatalf("consumers stalled: %v\n%s", err, listed)
	}

	cmd := exec.Command(bin, "replay", "--read-model", "user_status")
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("replay of an unprojectable log: %v\n%s", err, out)
	}
	t.Logf("replay: %s", out)
	for _, want := range []string{fmt.Sprintf("position %d", bad.Position), bad.EventID, "TenantPolicyChanged", a.TenantID,
		"tenant:" + a.TenantID, "unsupported Unicode escape sequence"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("replay output does not name %q:\n%s", want, out)
		}
	}
}

// Every PostgreSQL connection of a running serve (API, projector, notifier,
// LISTEN) is killed again and again while users enrol, as in a PostgreSQL
// restart: every event ends up projected, nothing is parked in the poison
// queue, no tenant is stalled, and the process is ready again afterwards.
func TestServeSurvivesKilledConnectionsWithoutPoison(t *testing.T) {
	bin := buildBinary(t)
	env := testEnv(t)
	cfg, err := pgxpool.ParseConfig(envValue(env, "TWOFACTOR_DATABASE_URL"))
	if err != nil {
		t.Fatal(err)
	}
	// The test's own connections (the writers and the killer) are spared.
	cfg.ConnConfig.RuntimeParams["application_name"] = "stall_test_writer"
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	f := testkit.New(t, pool, nil)
	srv := startServer(t, bin, append(env, "TWOFACTOR_MASTER_KEYS="+f.MasterKey.String()))

	stop := make(chan struct{})
	killed := make(chan int)
	go func() {
		n := 0
		defer func() { killed <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			var k int
			if err := pool.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name <> 'stall_test_writer'`).Scan(&k); err == nil {
				n += k
			}
		}
	}()
	for i := 0; i < 40; i++ {
		f.EnrolTOTP(fmt.Sprintf("user-%02d", i))
	}
	close(stop)
	kills := <-killed
	if kills == 0 {
		t.Fatal("no connection of serve was killed")
	}

	var head int64
	if err := pool.QueryRow(t.Context(), `SELECT max(position) FROM events`).Scan(&head); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		var applied, rows int64
		if err := pool.QueryRow(t.Context(), `SELECT (SELECT position FROM read_model_checkpoints WHERE read_model = 'user_status'),
			(SELECT count(*) FROM user_status WHERE tenant_id = $1 AND enabled)`, f.Tenant).Scan(&applied, &rows); err != nil {
			t.Fatal(err)
		}
		code, _ := getBody(t, srv.URL+"/readyz")
		if applied == head && rows == 40 && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %d killed connections: checkpoint %d of %d, %d users enabled, readyz %d", kills, applied, head, rows, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	var poisoned, stalls int
	if err := pool.QueryRow(t.Context(), `SELECT (SELECT count(*) FROM watermill_twofactor_poison), (SELECT count(*) FROM consumer_stalls)`).
		Scan(&poisoned, &stalls); err != nil {
		t.Fatal(err)
	}
	if poisoned != 0 || stalls != 0 {
		t.Fatalf("after %d killed connections: %d messages poisoned, %d tenants stalled", kills, poisoned, stalls)
	}
	t.Logf("%d connections of serve killed; %d events projected", kills, head)
}
