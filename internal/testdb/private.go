package testdb

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// PrivateServer is a PostgreSQL cluster of one test's own, which the test may
// stop, crash and start again: fault tests never touch a server they did not
// start.
type PrivateServer struct {
	// URL is the maintenance database postgres on the server, over TCP.
	URL     string
	t       testing.TB
	binDir  string
	dataDir string
	logFile string
	port    int
	asUser  []string // prefix that runs a command as the OS user postgres (root only)
}

// StartPrivate initialises and starts a private cluster on a free loopback
// port, stopped (immediately) and removed when the test ends.
func StartPrivate(t testing.TB) *PrivateServer {
	t.Helper()
	binDir := findBinDir()
	if binDir == "" {
		Missing(t, "PostgreSQL's server binaries (initdb, pg_ctl) are not installed (Debian package postgresql)")
	}
	dir, err := os.MkdirTemp("", "testdb-private-")
	if err != nil {
		t.Fatal(err)
	}
	p := &PrivateServer{t: t, binDir: binDir, dataDir: filepath.Join(dir, "data"), logFile: filepath.Join(dir, "log")}
	if os.Geteuid() == 0 {
		// initdb and postgres refuse to run as root.
		pgUser, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root, and PostgreSQL refuses to run as root; no OS user postgres: %v", err)
		}
		uid, _ := strconv.Atoi(pgUser.Uid)
		gid, _ := strconv.Atoi(pgUser.Gid)
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
		runuser, err := exec.LookPath("runuser")
		if err != nil {
			t.Fatalf("runuser (util-linux) is needed to run PostgreSQL as OS user postgres: %v", err)
		}
		p.asUser = []string{runuser, "-u", "postgres", "--"}
	}
	t.Cleanup(func() {
		_ = p.pgctl("stop", "-m", "immediate", "-w")
		os.RemoveAll(dir)
	})
	if out, err := p.command(filepath.Join(binDir, "initdb"), "-D", p.dataDir, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8").CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.port = freeTCPPort(t)
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.port)
	p.Start()
	return p
}

func freeTCPPort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (p *PrivateServer) command(name string, args ...string) *exec.Cmd {
	all := append(append(append([]string{}, p.asUser...), name), args...)
	cmd := exec.Command(all[0], all[1:]...)
	cmd.Dir = "/"
	return cmd
}

func (p *PrivateServer) pgctl(args ...string) error {
	args = append([]string{"-D", p.dataDir, "-l", p.logFile}, args...)
	out, err := p.command(filepath.Join(p.binDir, "pg_ctl"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pg_ctl %v: %v\n%s", args, err, out)
	}
	return nil
}

// URLFor is the URL of database name on the server.
func (p *PrivateServer) URLFor(name string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", p.port, name)
}

// Start starts the server and waits until it accepts connections.
func (p *PrivateServer) Start() {
	p.t.Helper()
	opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 -c unix_socket_directories=%s -c fsync=off -c max_connections=200", p.port, filepath.Dir(p.dataDir))
	if err := p.pgctl("start", "-w", "-t", "60", "-o", opts); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for ping(p.URL) != nil {
		if time.Now().After(deadline) {
			p.t.Fatalf("private PostgreSQL on port %d did not accept connections", p.port)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Stop stops the server: mode "fast" (connections are terminated, as in a
// restart by an operator) or "immediate" (a crash: no checkpoint, recovery at
// the next start).
func (p *PrivateServer) Stop(mode string) {
	p.t.Helper()
	if err := p.pgctl("stop", "-m", mode, "-w", "-t", "60"); err != nil {
		p.t.Fatal(err)
	}
}

// Exec runs one statement on the maintenance database.
func (p *PrivateServer) Exec(ctx context.Context, sql string) error {
	return (&server{adminURL: p.URL}).exec(ctx, sql)
}
