// Package testdb gives each test package its own freshly created and migrated
// PostgreSQL database, so packages can run in parallel against one server.
//
// The server is TEST_DATABASE_URL (a URL to a maintenance database such as
// "postgres") or, if unset, postgres://postgres@127.0.0.1:5432/postgres. If
// nothing answers there and PostgreSQL's server binaries are installed under
// /usr/lib/postgresql/*/bin, a throwaway server is started for the test binary.
// Otherwise tests that need a database fail, saying what was tried.
//
// Use it from a package's TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"zombiezen.com/go/postgrestest"

	"github.com/twofactor/twofactor/migrations"
)

const (
	defaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	pgLibDir   = "/usr/lib/postgresql"
	maxConns   = 20
)

var (
	mainCalled atomic.Bool

	mu sync.Mutex
	// The server, found or started once per test binary.
	srvOnce bool
	srv     *server
	srvErr  error
	pkgOnce bool
	pkgPool *pgxpool.Pool
	pkgURL  string
	pkgName string
	pkgErr  error

	dbPrefix = sync.OnceValue(func() string { return "tf_" + sanitise(packagePath()) + "_" })
)

type server struct {
	adminURL string // maintenance database; CREATE/DROP DATABASE run here
	stop     func() // stops a throwaway server; nil for an external one
}

// Main runs the tests of a package and then drops the package's database (and
// stops a throwaway server, if one was started). Call it from TestMain:
// os.Exit(testdb.Main(m)).
func Main(m *testing.M) int {
	mainCalled.Store(true)
	code := m.Run()
	if err := teardown(); err != nil {
		fmt.Fprintf(os.Stderr, "testdb: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// Missing says a tool or server a test needs is not installed: under CI (CI
// set, where .ci/run installs everything) the test fails, elsewhere it is
// skipped with the reason, never silently.
func Missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s (.ci/run installs it)", what)
	}
	t.Skip(what)
}

// Pool returns a pool on this package's database, created and migrated once per
// test binary. The pool is shared: do not Close it. The test fails if no
// PostgreSQL can be had.
func Pool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	p, _ := pkgDB(t)
	return p
}

// URL returns the connection string of this package's database, for tests that
// start subprocesses or CLIs.
func URL(t testing.TB) string {
	t.Helper()
	_, u := pkgDB(t)
	return u
}

// Fresh creates an additional, separate, migrated database for one test, drops
// it when the test ends, and returns its URL.
func Fresh(t testing.TB) string {
	t.Helper()
	requireMain(t)
	s := theServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	name, u, err := s.createMigrated(ctx, nil)
	if err != nil {
		t.Fatalf("testdb: fresh database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := s.drop(ctx, name); err != nil {
			t.Errorf("testdb: drop fresh database %s: %v", name, err)
		}
	})
	return u
}

// Drop drops the database named in dbURL, if it exists, on the test server. It
// is for databases a test had created some other way (for example by a CLI
// under test) from a URL derived from Fresh or URL. Only names starting with
// "tf" are dropped, so a mistaken URL cannot drop a real database.
func Drop(t testing.TB, dbURL string) {
	t.Helper()
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Errorf("testdb: drop: %v", err)
		return
	}
	name := cfg.Database
	if !strings.HasPrefix(name, "tf") {
		t.Errorf("testdb: drop: refusing to drop database %q (not a test database)", name)
		return
	}
	s := theServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := s.drop(ctx, name); err != nil {
		t.Errorf("testdb: drop %s: %v", name, err)
	}
}

func requireMain(t testing.TB) {
	t.Helper()
	if !mainCalled.Load() {
		// Without Main nobody drops the database or stops a throwaway server.
		t.Fatal("testdb: add `func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }` to this package's tests")
	}
}

func pkgDB(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	requireMain(t)
	s := theServer(t)
	mu.Lock()
	defer mu.Unlock()
	if !pkgOnce {
		pkgOnce = true
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		pkgName, pkgURL, pkgErr = s.createMigrated(ctx, &pkgPool)
	}
	if pkgErr != nil {
		t.Fatalf("testdb: package database: %v", pkgErr)
	}
	return pkgPool, pkgURL
}

func theServer(t testing.TB) *server {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if !srvOnce {
		srvOnce = true
		srv, srvErr = findServer()
	}
	if srvErr != nil {
		t.Fatal(srvErr.Error())
	}
	return srv
}

func teardown() error {
	mu.Lock()
	defer mu.Unlock()
	var errs []error
	if pkgPool != nil {
		// Close waits for every acquired connection; a test that failed
		// mid-transaction may never release its own, and the drop below (WITH
		// FORCE) ends those sessions anyway. Do not hang the package on it.
		closed := make(chan struct{})
		go func() { pkgPool.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			errs = append(errs, errors.New("testdb: connections still acquired at the end of the package (a test left a transaction open)"))
		}
	}
	if srv != nil {
		if pkgName != "" {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if err := srv.drop(ctx, pkgName); err != nil {
				errs = append(errs, fmt.Errorf("drop %s: %w", pkgName, err))
			}
			cancel()
		}
		if srv.stop != nil {
			srv.stop()
		}
	}
	return errors.Join(errs...)
}

// findServer connects to the configured server or, if nothing answers there,
// starts a throwaway one.
func findServer() (*server, error) {
	base, from := os.Getenv("TEST_DATABASE_URL"), "TEST_DATABASE_URL"
	if base == "" {
		base, from = defaultURL, "default URL; set TEST_DATABASE_URL to use another server"
	}
	err := ping(base)
	if err == nil {
		return &server{adminURL: base}, nil
	}
	tried := fmt.Sprintf("connect to %s (%s): %v", redact(base), from, err)
	if !nothingAnswered(err) {
		return nil, fmt.Errorf("testdb: PostgreSQL answered but the connection failed: %s", tried)
	}
	binDir := findBinDir()
	if binDir == "" {
		return nil, fmt.Errorf("testdb: no PostgreSQL for the tests.\n"+
			"  tried: %s\n"+
			"  tried: a throwaway server, but no initdb and postgres under %s/*/bin\n"+
			"  fix: start PostgreSQL, e.g. `pg_ctlcluster --skip-systemctl-redirect 15 main start` (Debian, apt-get install postgresql),\n"+
			"       or `docker compose up -d postgres` with TEST_DATABASE_URL=postgres://postgres:twofactor@127.0.0.1:5432/postgres?sslmode=disable",
			tried, pgLibDir)
	}
	fmt.Fprintf(os.Stderr, "testdb: nothing answers at %s; starting a throwaway PostgreSQL from %s\n", redact(base), binDir)
	s, err := startThrowaway(binDir)
	if err != nil {
		return nil, fmt.Errorf("testdb: no PostgreSQL for the tests.\n"+
			"  tried: %s\n"+
			"  tried: a throwaway server from %s: %v\n"+
			"  fix: start PostgreSQL, e.g. `pg_ctlcluster --skip-systemctl-redirect 15 main start`, or set TEST_DATABASE_URL",
			tried, binDir, err)
	}
	return s, nil
}

func ping(dbURL string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return err
	}
	if cfg.ConnectTimeout == 0 || cfg.ConnectTimeout > 3*time.Second {
		cfg.ConnectTimeout = 3 * time.Second
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

// nothingAnswered tells a server that is not there from one that refused us:
// only the former may be replaced by a throwaway server.
func nothingAnswered(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
}

// findBinDir returns the bin directory of the newest installed PostgreSQL that
// has the server binaries, or "".
func findBinDir() string {
	dirs, _ := filepath.Glob(filepath.Join(pgLibDir, "*", "bin"))
	sort.Slice(dirs, func(i, j int) bool { return version(dirs[i]) > version(dirs[j]) })
	for _, d := range dirs {
		if isFile(filepath.Join(d, "initdb")) && isFile(filepath.Join(d, "postgres")) && isFile(filepath.Join(d, "pg_ctl")) {
			return d
		}
	}
	return ""
}

func version(binDir string) float64 {
	v, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(binDir)), 64)
	return v
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// startThrowaway starts a server with postgrestest. initdb and postgres refuse
// to run as root, and postgrestest runs them as the current user; so as root,
// postgrestest finds wrappers first in PATH that run them as the OS user
// postgres, after handing it postgrestest's temporary directory.
func startThrowaway(binDir string) (*server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if os.Geteuid() != 0 {
		// postgrestest searches PATH, then the newest /usr/lib/postgresql/*/bin.
		pg, err := postgrestest.Start(ctx)
		if err != nil {
			return nil, err
		}
		return &server{adminURL: pg.DefaultDatabase(), stop: pg.Cleanup}, nil
	}

	const hint = "running as root, and PostgreSQL refuses to run as root"
	if _, err := user.Lookup("postgres"); err != nil {
		return nil, fmt.Errorf("%s; no OS user postgres to run it as: %v", hint, err)
	}
	runuser, err := exec.LookPath("runuser")
	if err != nil {
		return nil, fmt.Errorf("%s; runuser (util-linux) is needed to run it as OS user postgres: %v", hint, err)
	}
	wrapDir, err := os.MkdirTemp("", "testdb-pgwrap-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(wrapDir, 0o755); err != nil {
		os.RemoveAll(wrapDir)
		return nil, err
	}
	// initdb is given "-D <tmp>/data"; its parent holds the password file and the log.
	initdb := `#!/bin/sh
data=; prev=
for a in "$@"; do [ "$prev" = "-D" ] && data=$a; prev=$a; done
[ -n "$data" ] && chown -R postgres: "$(dirname "$data")"
cd /
exec ` + shq(runuser) + ` -u postgres -- ` + shq(filepath.Join(binDir, "initdb")) + ` "$@"
`
	pgctl := `#!/bin/sh
cd /
exec ` + shq(runuser) + ` -u postgres -- ` + shq(filepath.Join(binDir, "pg_ctl")) + ` "$@"
`
	for name, body := range map[string]string{"initdb": initdb, "pg_ctl": pgctl} {
		if err := os.WriteFile(filepath.Join(wrapDir, name), []byte(body), 0o755); err != nil {
			os.RemoveAll(wrapDir)
			return nil, err
		}
	}
	oldPath := os.Getenv("PATH")
	newPath := wrapDir + string(os.PathListSeparator) + oldPath
	os.Setenv("PATH", newPath)
	undo := func() {
		// Leave PATH alone if someone changed it meanwhile.
		if os.Getenv("PATH") == newPath {
			os.Setenv("PATH", oldPath)
		}
		os.RemoveAll(wrapDir)
	}
	pg, err := postgrestest.Start(ctx)
	if err != nil {
		undo()
		return nil, fmt.Errorf("%s; ran it as OS user postgres (which needs access to %s): %w", hint, os.TempDir(), err)
	}
	// pg_ctl stop, at Cleanup, needs the wrappers too.
	return &server{adminURL: pg.DefaultDatabase(), stop: func() { pg.Cleanup(); undo() }}, nil
}

func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// createMigrated creates and migrates a new database. If pool is not nil, it
// receives a pool on the new database; otherwise the pool used to migrate is closed.
func (s *server) createMigrated(ctx context.Context, pool **pgxpool.Pool) (name, dbURL string, err error) {
	name, err = newName()
	if err != nil {
		return "", "", err
	}
	if err := s.exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", "", fmt.Errorf("create database %s on %s: %w", name, redact(s.adminURL), err)
	}
	defer func() {
		if err != nil {
			s.drop(context.WithoutCancel(ctx), name) //nolint:errcheck // already failing
			name, dbURL = "", ""
		}
	}()
	dbURL, err = withDatabase(s.adminURL, name)
	if err != nil {
		return "", "", err
	}
	cfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return "", "", err
	}
	cfg.MaxConns = maxConns
	p, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return "", "", err
	}
	if _, err := migrations.Apply(ctx, p); err != nil {
		p.Close()
		return "", "", fmt.Errorf("migrate %s: %w", name, err)
	}
	if pool != nil {
		*pool = p
	} else {
		p.Close()
	}
	return name, dbURL, nil
}

func (s *server) drop(ctx context.Context, name string) error {
	return s.exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}

func (s *server) exec(ctx context.Context, sql string) error {
	conn, err := pgx.Connect(ctx, s.adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// newName returns tf_<package path in the module>_<random hex>, at most 63 bytes
// (PostgreSQL truncates longer identifiers).
func newName() (string, error) {
	prefix := dbPrefix()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	suffix := hex.EncodeToString(b)
	if max := 63 - len(suffix); len(prefix) > max {
		prefix = prefix[:max-1] + "_"
	}
	return prefix + suffix, nil
}

// packagePath is the test's directory relative to the module root: go test runs
// a test binary in its package's directory.
func packagePath() string {
	wd, err := os.Getwd()
	if err != nil {
		return "pkg"
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if isFile(filepath.Join(dir, "go.mod")) {
			if rel, err := filepath.Rel(dir, wd); err == nil && rel != "." {
				return rel
			}
			return filepath.Base(dir)
		}
		if filepath.Dir(dir) == dir {
			return filepath.Base(wd)
		}
	}
}

func sanitise(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// withDatabase returns connString pointing at database name.
func withDatabase(connString, name string) (string, error) {
	if strings.HasPrefix(connString, "postgres://") || strings.HasPrefix(connString, "postgresql://") {
		u, err := url.Parse(connString)
		if err != nil {
			return "", err
		}
		u.Path, u.RawPath = "/"+name, ""
		return u.String(), nil
	}
	// Keyword/value form: a later keyword wins.
	return connString + " dbname=" + name, nil
}

func redact(connString string) string {
	if u, err := url.Parse(connString); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return "(connection string)"
}
