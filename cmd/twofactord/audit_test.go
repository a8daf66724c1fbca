package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testkit"
)

func TestAuditCommandsVerifyExportAndCheckpoint(t *testing.T) {
	dbURL := testdb.Fresh(t)
	pool, err := pgxpool.New(t.Context(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	f := testkit.New(t, pool, nil)
	f.EnrolTOTP("ann")
	env := map[string]string{"TWOFACTOR_DATABASE_URL": dbURL}

	out, err := runCLI(t, env, "audit", "verify")
	if err != nil || !strings.Contains(out, `"ok": true`) {
		t.Fatalf("verify: %s %v", out, err)
	}
	export, err := runCLI(t, env, "audit", "export", "--tenant", f.Tenant)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	exportFile := filepath.Join(dir, "export.jsonl")
	if err := os.WriteFile(exportFile, []byte(export), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := runCLI(t, env, "audit", "verify", "--file", exportFile); err != nil {
		t.Fatalf("offline verify: %s %v", out, err)
	}
	cp, err := runCLI(t, env, "audit", "checkpoint", "--tenant", f.Tenant)
	if err != nil {
		t.Fatal(err)
	}
	cpFile := filepath.Join(dir, "checkpoint.json")
	if err := os.WriteFile(cpFile, []byte(cp), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runCLI(t, env, "audit", "history", "--tenant", f.Tenant, "--user", "ann")
	var entries []map[string]any
	if err != nil || json.Unmarshal([]byte(out), &entries) != nil || len(entries) != 4 {
		t.Fatalf("history: %d entries, %v", len(entries), err)
	}
	if out, err := runCLI(t, env, "audit", "state", "--tenant", f.Tenant, "--user", "ann"); err != nil || !strings.Contains(out, `"status": "activated"`) {
		t.Fatalf("state: %s %v", out, err)
	}

	// A superuser bypassing the trigger deletes the newest event: the chain still
	// holds, the checkpoint does not.
	conn, err := pool.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(t.Context(), `SET session_replication_role = replica;
		DELETE FROM events WHERE position = (SELECT max(position) FROM events)`); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI(t, env, "audit", "verify"); err != nil {
		t.Fatalf("verify without the anchor: %v", err)
	}
	out, err = runCLI(t, env, "audit", "verify", "--checkpoint", cpFile)
	if !errors.Is(err, errVerifyFailed) || !strings.Contains(out, "anchored head") {
		t.Fatalf("verify --checkpoint after truncation: %s %v", out, err)
	}
}
