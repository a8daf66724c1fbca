package testdb

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func currentDB(t *testing.T, dbURL string) string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var name string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	return name
}

func exists(t *testing.T, name string) bool {
	t.Helper()
	pool := Pool(t)
	var ok bool
	if err := pool.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&ok); err != nil {
		t.Fatal(err)
	}
	return ok
}

func TestPoolIsOneMigratedDatabasePerPackage(t *testing.T) {
	ctx := context.Background()
	a, b := Pool(t), Pool(t)
	if a != b {
		t.Fatal("two calls to Pool returned different pools")
	}
	var name string
	if err := a.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(name, "tf_internal_testdb_") || len(name) > 63 {
		t.Errorf("database name %q", name)
	}
	if got := currentDB(t, URL(t)); got != name {
		t.Errorf("URL points at %q, Pool at %q", got, name)
	}
	var events bool
	if err := a.QueryRow(ctx, "SELECT to_regclass('events') IS NOT NULL").Scan(&events); err != nil {
		t.Fatal(err)
	}
	if !events {
		t.Error("table events does not exist: migrations not applied")
	}
	if got := a.Config().MaxConns; got != maxConns {
		t.Errorf("MaxConns = %d", got)
	}
}

func TestFreshIsSeparateMigratedAndDropped(t *testing.T) {
	pkg := currentDB(t, URL(t))
	var fresh string
	t.Run("use", func(t *testing.T) {
		u := Fresh(t)
		fresh = currentDB(t, u)
		if fresh == pkg {
			t.Fatalf("Fresh returned the package database %q", pkg)
		}
		if !strings.HasPrefix(fresh, "tf_internal_testdb_") {
			t.Errorf("fresh database name %q", fresh)
		}
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, u)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var events bool
		if err := conn.QueryRow(ctx, "SELECT to_regclass('events') IS NOT NULL").Scan(&events); err != nil {
			t.Fatal(err)
		}
		if !events {
			t.Error("fresh database is not migrated")
		}
		if !exists(t, fresh) {
			t.Error("fresh database not listed in pg_database")
		}
	})
	if fresh == "" {
		t.FailNow()
	}
	if exists(t, fresh) {
		t.Errorf("fresh database %q still exists after its test", fresh)
	}
}

func TestDropDropsAnotherTestDatabase(t *testing.T) {
	other := strings.Replace(Fresh(t), "/tf_", "/tfx_", 1)
	name := currentDBName(t, other)
	if _, err := Pool(t).Exec(context.Background(), "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	Drop(t, other)
	if exists(t, name) {
		t.Errorf("%q still exists after Drop", name)
	}
	Drop(t, other) // absent: no error
}

func currentDBName(t *testing.T, dbURL string) string {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Database
}

func TestNothingAnsweredTellsAbsentFromRefusing(t *testing.T) {
	if err := ping("postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"); err == nil || !nothingAnswered(err) {
		t.Errorf("closed port: err %v, nothingAnswered false", err)
	}
	u, err := withDatabase(URL(t), "tf_does_not_exist")
	if err != nil {
		t.Fatal(err)
	}
	if err := ping(u); err == nil || nothingAnswered(err) {
		t.Errorf("missing database: err %v, nothingAnswered true", err)
	}
}

func TestSanitiseAndWithDatabase(t *testing.T) {
	if got := sanitise("cmd/Two-Factord"); got != "cmd_two_factord" {
		t.Errorf("sanitise = %q", got)
	}
	got, err := withDatabase("postgres://u:p@h:5432/postgres?sslmode=disable", "tf_x")
	if err != nil || got != "postgres://u:p@h:5432/tf_x?sslmode=disable" {
		t.Errorf("withDatabase = %q, %v", got, err)
	}
	if got, _ := withDatabase("host=h dbname=postgres", "tf_x"); currentDBName(t, got) != "tf_x" {
		t.Errorf("keyword/value withDatabase = %q", got)
	}
	for range 3 {
		n, err := newName()
		if err != nil || len(n) > 63 || n != strings.ToLower(n) {
			t.Errorf("newName = %q, %v", n, err)
		}
	}
}

// The fallback used when nothing answers: start a throwaway server (as OS user
// postgres when running as root), use it, stop it.
func TestThrowawayServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server; skipped with -short")
	}
	binDir := findBinDir()
	if binDir == "" {
		Missing(t, "no PostgreSQL server binaries under "+pgLibDir+"/*/bin; the fallback cannot be tested here")
	}
	path := os.Getenv("PATH")
	s, err := startThrowaway(binDir)
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			s.stop()
		}
	}()
	if err := ping(s.adminURL); err != nil {
		t.Fatalf("throwaway server at %s: %v", redact(s.adminURL), err)
	}
	ctx := context.Background()
	name, u, err := s.createMigrated(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := currentDB(t, u); got != name {
		t.Errorf("created %q, connected to %q", name, got)
	}
	if err := s.drop(ctx, name); err != nil {
		t.Error(err)
	}
	s.stop()
	stopped = true
	if err := ping(s.adminURL); err == nil {
		t.Error("throwaway server still answers after stop")
	}
	if got := os.Getenv("PATH"); got != path {
		t.Errorf("PATH not restored: %q", got)
	}
}
