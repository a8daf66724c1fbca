// Package testnats gives tests a NATS JetStream server: the shared one
// (TEST_NATS_URL, default nats://127.0.0.1:4222), with a stream and subject
// prefix of each test's own so packages run in parallel, or a private
// nats-server a test can kill and restart.
//
// A test that needs NATS fails (never skips) when the server cannot be
// reached, and says how to start one.
package testnats

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/twofactor/twofactor/messaging"
)

const defaultURL = "nats://127.0.0.1:4222"

// How to start the shared server, for the failure message.
const startHint = "start it with: start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- " +
	"-a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log (Debian package nats-server), " +
	"or point TEST_NATS_URL at a NATS server with JetStream enabled"

// URL is the shared test server. It fails the test when nothing with
// JetStream answers there.
func URL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("TEST_NATS_URL")
	if u == "" {
		u = defaultURL
	}
	nc, err := nats.Connect(u, nats.Timeout(3*time.Second))
	if err != nil {
		t.Fatalf("NATS is not reachable at %s (%v): %s", u, err, startHint)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = js.AccountInfo(ctx)
		cancel()
	}
	if err != nil {
		t.Fatalf("NATS at %s has no JetStream (%v): run nats-server with -js; %s", u, err, startHint)
	}
	return u
}

// Config is the default bus configuration on url with a stream and subject
// prefix of this test's own, deleted when the test ends.
func Config(t testing.TB, u string) messaging.NATSConfig {
	t.Helper()
	b := make([]byte, 5)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	cfg := messaging.DefaultNATSConfig()
	cfg.URL = u
	cfg.Stream = "TEST_" + strings.ToUpper(id)
	cfg.Subject = "test." + id
	cfg.MaxAge = time.Hour
	t.Cleanup(func() {
		nc, err := nats.Connect(u, nats.Timeout(2*time.Second))
		if err != nil {
			return // a private server that is gone takes its streams with it
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = js.DeleteStream(ctx, cfg.Stream)
	})
	return cfg
}

// Connect opens a connection for a test, closed at its end.
func Connect(t testing.TB, cfg messaging.NATSConfig) *nats.Conn {
	t.Helper()
	nc, err := messaging.ConnectNATS(cfg, t.Name(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// Server is a private nats-server with JetStream on a free loopback port, its
// store in a temporary folder, so a test can stop it and start it again (with
// its streams, as a real restart).
type Server struct {
	t    testing.TB
	bin  string
	port int
	dir  string
	cmd  *exec.Cmd
	URL  string
}

// Binary finds nats-server: NATS_SERVER_BIN, /usr/sbin/nats-server, or the PATH.
func Binary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("NATS_SERVER_BIN"); b != "" {
		return b
	}
	if _, err := os.Stat("/usr/sbin/nats-server"); err == nil {
		return "/usr/sbin/nats-server"
	}
	if b, err := exec.LookPath("nats-server"); err == nil {
		return b
	}
	t.Fatalf("nats-server not found (NATS_SERVER_BIN, /usr/sbin/nats-server, PATH): install the Debian package nats-server")
	return ""
}

// Start runs a private server until the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	s := &Server{t: t, bin: Binary(t), port: port, dir: t.TempDir(), URL: fmt.Sprintf("nats://127.0.0.1:%d", port)}
	s.Restart()
	t.Cleanup(s.Kill)
	return s
}

// Restart starts the server (again) and waits until JetStream answers.
func (s *Server) Restart() {
	s.t.Helper()
	if s.cmd != nil {
		s.t.Fatal("testnats: server already running")
	}
	cmd := exec.Command(s.bin, "-a", "127.0.0.1", "-p", fmt.Sprint(s.port), "-js", "-sd", filepath.Join(s.dir, "store"),
		"-l", filepath.Join(s.dir, "nats-server.log"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.bin, err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(15 * time.Second)
	for {
		nc, err := nats.Connect(s.URL, nats.Timeout(time.Second))
		if err == nil {
			js, jerr := jetstream.New(nc)
			if jerr == nil {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				_, jerr = js.AccountInfo(ctx)
				cancel()
			}
			nc.Close()
			if jerr == nil {
				return
			}
			err = jerr
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(s.dir, "nats-server.log"))
			s.t.Fatalf("private nats-server on %s not ready: %v\n%s", s.URL, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Kill stops the server at once (SIGKILL), as a crash or a lost host would.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Host is host:port of the server (for URLs with other schemes).
func (s *Server) Host() string {
	u, _ := url.Parse(s.URL)
	return u.Host
}
