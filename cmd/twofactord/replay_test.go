package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testdb"
)

func TestReplayRebuildsTheReadModels(t *testing.T) {
	url := testdb.Fresh(t)
	env := map[string]string{"TWOFACTOR_DATABASE_URL": url}
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ctx := context.Background()
	store := eventstore.New(pool, time.Now)
	meta := eventstore.Metadata{Actor: domain.Actor{Kind: domain.ActorSystem, ID: "test"}}
	if _, err := store.Append(ctx, "acme", eventstore.TenantStream("acme"), 0, []domain.Event{&domain.TenantCreated{Name: "Acme", Policy: domain.DefaultPolicy()}}, meta); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"ann", "bob"} {
		if _, err := store.Append(ctx, "acme", eventstore.UserStream("acme", u), 0, []domain.Event{&domain.TwoFactorRequirementChanged{Required: true}}, meta); err != nil {
			t.Fatal(err)
		}
	}
	// The rebuild reads what is older than every running transaction of the
	// cluster (tests of other packages run alongside): wait until ours is.
	deadline := time.Now().Add(30 * time.Second)
	for {
		var visible int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM events WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())`).Scan(&visible); err != nil {
			t.Fatal(err)
		}
		if visible == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("events never below the horizon")
		}
		time.Sleep(10 * time.Millisecond)
	}

	out, err := runCLI(t, env, "replay", "--read-model", "user_status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "rebuilt user_status") || !strings.Contains(out, "3 events, 2 users, 1 tenants") {
		t.Fatalf("replay printed %q", out)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM user_status WHERE required AND status_base = 'not_activated'`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("user_status rows: %d, %v", n, err)
	}
	out, err = runCLI(t, env, "replay", "--all", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var report map[string]any
	if err := json.Unmarshal([]byte(out), &report); err != nil || report["events"] != 3.0 || report["generation"] != 3.0 {
		t.Fatalf("replay --all --json printed %q (%v)", out, err)
	}
	if strings.Count(strings.TrimSpace(out), "\n") != 0 {
		t.Errorf("--all rebuilt the shared projector twice: %q", out)
	}
	for _, args := range [][]string{{"replay"}, {"replay", "--all", "--read-model", "user_status"}, {"replay", "--read-model", "nope"}} {
		if _, err := runCLI(t, env, args...); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}
