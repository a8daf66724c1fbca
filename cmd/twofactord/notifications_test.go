package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testdb"
)

func TestNotificationsFailedListsDeadNotificationsAndRetryRequeues(t *testing.T) {
	dbURL := testdb.Fresh(t)
	env := map[string]string{"TWOFACTOR_DATABASE_URL": dbURL}
	pool, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	dead, sent := uuid.NewString(), uuid.NewString()
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	for _, row := range []struct {
		id, status, lastError string
	}{{dead, "dead", "smtp: permanent failure (550 5.1.1, sending SMTP RCPT TO command)"}, {sent, "sent", ""}} {
		_, err := pool.Exec(context.Background(), `
			INSERT INTO notifications (event_id, kind, tenant_id, user_id, stream_id, stream_version, event_type,
				status, attempts, next_attempt_at, last_error, created_at, updated_at)
			VALUES ($1, 'otp_code', 'tenant-1', 'user-1', 'user:tenant-1:user-1', 3, 'OTPChallengeIssued', $2, 12, $3, nullif($4, ''), $3, $3)`,
			row.id, row.status, now, row.lastError)
		if err != nil {
			t.Fatal(err)
		}
	}

	out, err := runCLI(t, env, "notifications", "failed")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, dead) || !strings.Contains(out, "otp_code") || !strings.Contains(out, "550 5.1.1") ||
		!strings.Contains(out, "user-1") || strings.Contains(out, sent) {
		t.Fatalf("notifications failed printed:\n%s", out)
	}
	out, err = runCLI(t, env, "notifications", "failed", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var entry struct {
		EventID  string `json:"event_id"`
		Kind     string `json:"kind"`
		Attempts int    `json:"attempts"`
		Status   string `json:"status"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &entry); err != nil || entry.EventID != dead || entry.Attempts != 12 || entry.Status != "dead" {
		t.Fatalf("--json printed %q (%v)", out, err)
	}
	out, err = runCLI(t, env, "notifications", "failed", "--tenant", "tenant-2")
	if err != nil || !strings.Contains(out, "no failed notifications") {
		t.Fatalf("another tenant: %q, %v", out, err)
	}

	if _, err := runCLI(t, env, "notifications", "retry"); err == nil {
		t.Fatal("retry without --event or --tenant succeeded")
	}
	out, err = runCLI(t, env, "notifications", "retry", "--event", dead)
	if err != nil || !strings.Contains(out, "queued 1 notifications again") {
		t.Fatalf("retry: %q, %v", out, err)
	}
	var status string
	var attempts int
	if err := pool.QueryRow(context.Background(), `SELECT status, attempts FROM notifications WHERE event_id = $1`, dead).Scan(&status, &attempts); err != nil {
		t.Fatal(err)
	}
	if status != "pending" || attempts != 0 {
		t.Fatalf("after retry: %s, %d attempts", status, attempts)
	}
	out, err = runCLI(t, env, "notifications", "failed")
	if err != nil || !strings.Contains(out, "no failed notifications") {
		t.Fatalf("after retry: %q, %v", out, err)
	}

	if _, err := runCLI(t, env, "notifications"); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("notifications without a command: %v", err)
	}
	if _, err := runCLI(t, env, "notifications", "resend"); err == nil {
		t.Fatal("an unknown notifications command succeeded")
	}
}
