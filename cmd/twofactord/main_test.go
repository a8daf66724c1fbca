package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/secrets"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func runCLI(t *testing.T, env map[string]string, args ...string) (string, error) {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	var out bytes.Buffer
	err := run(context.Background(), args, &out, quiet)
	return out.String(), err
}

func TestMigrateCreatesTheDatabaseAndIsIdempotent(t *testing.T) {
	base := testdb.Fresh(t)
	// A database that does not exist yet: migrate creates it.
	target := strings.Replace(base, "/tf_", "/tfcli_", 1)
	t.Cleanup(func() { testdb.Drop(t, target) })
	env := map[string]string{"TWOFACTOR_DATABASE_URL": target}
	out, err := runCLI(t, env, "migrate")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "applied 0001_event_log.sql") {
		t.Fatalf("first migrate printed %q", out)
	}
	out, err = runCLI(t, env, "migrate")
	if err != nil || !strings.Contains(out, "up to date") {
		t.Fatalf("second migrate: %q, %v", out, err)
	}
}

func TestTenantCreatePrintsTheTenantID(t *testing.T) {
	env := map[string]string{"TWOFACTOR_DATABASE_URL": testdb.Fresh(t)}
	out, err := runCLI(t, env, "tenant", "create", "--name", "Acme")
	if err != nil {
		t.Fatal(err)
	}
	first, rest, _ := strings.Cut(out, "\n")
	if _, err := uuid.Parse(first); err != nil {
		t.Fatalf("tenant create printed %q", out)
	}
	if strings.Count(rest, "tfk_") != 4 {
		t.Fatalf("tenant create did not print one key per role: %q", out)
	}
	out, err = runCLI(t, env, "tenant", "create", "--name", "Beta", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var created struct {
		TenantID string `json:"tenant_id"`
		APIKeys  map[string]struct {
			KeyID string `json:"key_id"`
			Token string `json:"token"`
		} `json:"api_keys"`
	}
	if err := json.Unmarshal([]byte(out), &created); err != nil || created.TenantID == "" {
		t.Fatalf("--json printed %q (%v)", out, err)
	}
	for _, role := range []string{"app", "admin", "superadmin", "auditor"} {
		if k := created.APIKeys[role]; !strings.HasPrefix(k.Token, "tfk_"+k.KeyID+"_") {
			t.Fatalf("--json key for %s: %+v", role, k)
		}
	}
	if _, err := runCLI(t, env, "tenant", "create"); err == nil {
		t.Fatal("tenant create without --name succeeded")
	}
}

func TestServeRefusesToStartWithoutKeys(t *testing.T) {
	env := map[string]string{"TWOFACTOR_DATABASE_URL": testdb.Fresh(t), "TWOFACTOR_MASTER_KEYS": "", "TWOFACTOR_CODE_KEY": "", "TWOFACTOR_DEV": ""}
	_, err := runCLI(t, env, "serve", "--http-addr", "127.0.0.1:0")
	if err == nil || !strings.Contains(err.Error(), "TWOFACTOR_MASTER_KEYS") {
		t.Fatalf("serve without keys: %v", err)
	}
	_, err = runCLI(t, env, "serve", "--master-keys", "k1:short", "--code-key", "AAAA")
	if err == nil {
		t.Fatal("serve accepted a malformed key")
	}
}

func TestServeInDevModeMigratesAndAnswersHealthChecks(t *testing.T) {
	t.Setenv("TWOFACTOR_DATABASE_URL", testdb.Fresh(t))
	t.Setenv("TWOFACTOR_DEV_DATA_DIR", filepath.Join(t.TempDir(), "postgres")) // its keys file goes beside it
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--dev", "--http-addr", "127.0.0.1:18731"}, io.Discard, quiet)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := httpGet("http://127.0.0.1:18731/readyz")
		if err == nil && resp == 200 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("readyz never answered 200 (last: %d, %v)", resp, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func httpGet(url string) (int, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func TestKeysRotateRewrapsUnderTheFirstKey(t *testing.T) {
	dbURL := testdb.Fresh(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	k1, _ := secrets.GenerateMasterKey(rand.Reader, "k1")
	k2, _ := secrets.GenerateMasterKey(rand.Reader, "k2")
	ring1, _ := secrets.NewKeyring(k1)
	sealed, err := secrets.NewVault(pool, ring1, rand.Reader).Seal(ctx, "t", "u", secrets.PurposeTOTPSecret, []byte("seed"))
	if err != nil {
		t.Fatal(err)
	}
	codeKey := base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32))
	out, err := runCLI(t, map[string]string{"TWOFACTOR_DATABASE_URL": dbURL, "TWOFACTOR_CODE_KEY": codeKey,
		"TWOFACTOR_MASTER_KEYS": k2.String() + "," + k1.String()}, "keys", "rotate")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `re-wrapped 1 data keys under master key "k2"`) {
		t.Fatalf("keys rotate printed %q", out)
	}
	ring2, _ := secrets.NewKeyring(k2)
	plain, err := secrets.NewVault(pool, ring2, rand.Reader).Open(ctx, "t", "u", secrets.PurposeTOTPSecret, sealed)
	if err != nil || string(plain) != "seed" {
		t.Fatalf("after rotation the new key alone opens %q, %v", plain, err)
	}
}
