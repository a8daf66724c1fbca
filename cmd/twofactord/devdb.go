package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// devPostgres is a private PostgreSQL started by `serve --dev` when nothing
// answers at the database URL but PostgreSQL is installed: data in a local
// folder, listening only on the URL's loopback address and port.
type devPostgres struct {
	binDir  string
	dataDir string
	asUser  string // run as this OS user (PostgreSQL refuses root); "" = ourselves
	log     *slog.Logger
}

// maybeStartDevPostgres starts the private server when it is needed and
// possible, and returns its stop function (nil when none was started).
func maybeStartDevPostgres(ctx context.Context, databaseURL, dataDir string, log *slog.Logger) (func(), error) {
	err := pingServer(ctx, databaseURL)
	if err == nil || !nothingAnswers(err) {
		return nil, nil // a server answers (or refused us: openDatabase reports that)
	}
	u, perr := url.Parse(databaseURL)
	if perr != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return nil, nil
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "5432"
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return nil, nil // only ever on this machine's loopback
	}
	binDir := findPostgresBin()
	if binDir == "" {
		return nil, fmt.Errorf("nothing answers at %s and no PostgreSQL is installed (initdb and postgres on the PATH or under /usr/lib/postgresql/*/bin): start one, or use docker compose up -d postgres", u.Redacted())
	}
	if u.User != nil {
		if _, ok := u.User.Password(); ok {
			return nil, fmt.Errorf("nothing answers at %s; a private development server is only started for a URL without a password", u.Redacted())
		}
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, err
	}
	d := &devPostgres{binDir: binDir, dataDir: abs, log: log}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			return nil, errors.New("running as root, and PostgreSQL refuses to run as root; no OS user postgres to run it as")
		}
		d.asUser = "postgres"
	}
	superuser := "postgres"
	if u.User != nil && u.User.Username() != "" {
		superuser = u.User.Username()
	}
	log.Warn("DEVELOPMENT MODE: nothing answers at the database URL; starting a private PostgreSQL",
		"bin", binDir, "data", abs, "listen", net.JoinHostPort(host, port))
	if err := d.start(ctx, host, port, superuser); err != nil {
		return nil, err
	}
	return d.stop, nil
}

func (d *devPostgres) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	bin := filepath.Join(d.binDir, name)
	if d.asUser != "" {
		return exec.CommandContext(ctx, "runuser", append([]string{"-u", d.asUser, "--", bin}, args...)...)
	}
	return exec.CommandContext(ctx, bin, args...)
}

func (d *devPostgres) start(ctx context.Context, host, port, superuser string) error {
	if err := os.MkdirAll(d.dataDir, 0o700); err != nil {
		return fmt.Errorf("dev postgres: %w", err)
	}
	if d.asUser != "" {
		if out, err := exec.CommandContext(ctx, "chown", "-R", d.asUser+":", d.dataDir).CombinedOutput(); err != nil {
			return fmt.Errorf("dev postgres: chown %s: %v: %s", d.dataDir, err, out)
		}
	}
	if _, err := os.Stat(filepath.Join(d.dataDir, "PG_VERSION")); err != nil {
		cmd := d.command(ctx, "initdb", "-D", d.dataDir, "-U", superuser, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
		cmd.Dir = "/"
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("dev postgres: initdb (as %s; the folder and its parents must be reachable): %v: %s", d.userName(), err, tail(out))
		}
	}
	opts := fmt.Sprintf("-c listen_addresses=%s -p %s -k %s -c fsync=off", host, port, d.dataDir)
	cmd := d.command(ctx, "pg_ctl", "-D", d.dataDir, "-l", filepath.Join(d.dataDir, "server.log"), "-o", opts, "-w", "-t", "60", "start")
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("dev postgres: pg_ctl start: %v: %s (log: %s)", err, tail(out), filepath.Join(d.dataDir, "server.log"))
	}
	return nil
}

func (d *devPostgres) userName() string {
	if d.asUser != "" {
		return d.asUser
	}
	return "the current user"
}

func (d *devPostgres) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := d.command(ctx, "pg_ctl", "-D", d.dataDir, "-m", "fast", "-w", "stop")
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		d.log.Error("dev postgres: stop failed", "error", err.Error(), "output", tail(out))
		return
	}
	d.log.Info("dev postgres stopped", "data", d.dataDir)
}

func tail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 2000 {
		s = s[len(s)-2000:]
	}
	return s
}

// findPostgresBin returns a directory holding initdb, pg_ctl and postgres: the
// PATH first, then the newest /usr/lib/postgresql/*/bin.
func findPostgresBin() string {
	has := func(dir string) bool {
		for _, n := range []string{"initdb", "pg_ctl", "postgres"} {
			if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.IsDir() {
				return false
			}
		}
		return true
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil && has(filepath.Dir(real)) {
			return filepath.Dir(real)
		}
		if has(filepath.Dir(p)) {
			return filepath.Dir(p)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dirs[i])), 64)
		vj, _ := strconv.ParseFloat(filepath.Base(filepath.Dir(dirs[j])), 64)
		return vi > vj
	})
	for _, d := range dirs {
		if has(d) {
			return d
		}
	}
	return ""
}

// pingServer connects to the URL's server (its maintenance database, so a
// database that does not exist yet still counts as an answer).
func pingServer(ctx context.Context, databaseURL string) error {
	cfg, err := pgx.ParseConfig(databaseURL)
	if err != nil {
		return err
	}
	cfg.ConnectTimeout = 3 * time.Second
	cfg.Database = "postgres"
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// nothingAnswers tells "no server there" from "a server refused us".
func nothingAnswers(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return true
	}
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) || strings.Contains(err.Error(), "connection refused")
}
