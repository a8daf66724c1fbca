package main

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testkit"
)

// A worker projects and notifies what the commands wrote, and answers its probes.
func TestWorkerRunsTheConsumersWithoutTheAPI(t *testing.T) {
	dbURL := testdb.Fresh(t)
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	f := testkit.New(t, pool, nil)
	f.EnrolTOTP("wendy")

	if _, err := runCLI(t, map[string]string{"TWOFACTOR_DATABASE_URL": dbURL, "TWOFACTOR_MASTER_KEYS": "", "TWOFACTOR_CODE_KEY": ""}, "worker", "--dev"); err == nil ||
		!strings.Contains(err.Error(), "TWOFACTOR_MASTER_KEYS") {
		t.Fatalf("a --dev worker without keys: %v", err)
	}

	t.Setenv("TWOFACTOR_DATABASE_URL", dbURL)
	t.Setenv("TWOFACTOR_MASTER_KEYS", f.MasterKey.String())
	t.Setenv("TWOFACTOR_CODE_KEY", base64.StdEncoding.EncodeToString(make([]byte, 32)))
	t.Setenv("TWOFACTOR_MAIL_DIR", t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"worker", "--worker-addr", "127.0.0.1:18741"}, io.Discard, quiet) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("worker: %v", err)
		}
	}()

	deadline := time.Now().Add(20 * time.Second)
	for {
		var status string
		err := pool.QueryRow(t.Context(), `SELECT CASE WHEN enabled THEN 'activated' ELSE status_base END FROM user_status WHERE tenant_id = $1 AND user_id = 'wendy'`, f.Tenant).Scan(&status)
		code, _ := httpGet("http://127.0.0.1:18741/readyz")
		if err == nil && status == "activated" && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the worker did not project the user (status %q, %v; readyz %d)", status, err, code)
		}
		time.Sleep(50 * time.Millisecond)
	}
	resp, err := http.Get("http://127.0.0.1:18741/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "twofactor_") {
		t.Fatalf("worker metrics lack the service's series:\n%.500s", body)
	}
}

// An API-only serve (workers run the consumers) starts and is ready.
func TestServeWithoutConsumersIsReady(t *testing.T) {
	t.Setenv("TWOFACTOR_DATABASE_URL", testdb.Fresh(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--dev", "--consumers=false", "--http-addr", "127.0.0.1:18742"}, io.Discard, quiet)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if code, err := httpGet("http://127.0.0.1:18742/readyz"); err == nil && code == http.StatusOK {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("an API-only serve never became ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
