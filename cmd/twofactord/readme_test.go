package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/secrets"
)

// needTools fails under CI (which installs them) and skips elsewhere.
func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testdb.Missing(t, tool+" is not installed (Debian: curl jq oathtool zbar-tools)")
		}
	}
}

// buildBinary builds twofactord into a temporary folder.
func buildBinary(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "twofactord")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer collects a subprocess's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// server is a running `twofactord serve` subprocess.
type server struct {
	URL  string
	Env  []string
	Logs *lockedBuffer
}

// testEnv is the environment of a subprocess on a fresh database with real keys.
func testEnv(t *testing.T, extra ...string) []string {
	t.Helper()
	mk, err := secrets.GenerateMasterKey(rand.Reader, "k1")
	if err != nil {
		t.Fatal(err)
	}
	code := make([]byte, 32)
	if _, err := rand.Read(code); err != nil {
		t.Fatal(err)
	}
	env := []string{}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "TWOFACTOR_") {
			env = append(env, kv)
		}
	}
	env = append(env, "TWOFACTOR_DATABASE_URL="+testdb.Fresh(t), "TWOFACTOR_MASTER_KEYS="+mk.String(),
		"TWOFACTOR_CODE_KEY="+base64.StdEncoding.EncodeToString(code), "TWOFACTOR_HTTP_ADDR=127.0.0.1:0",
		// where --dev keeps its keys file
		"TWOFACTOR_DEV_DATA_DIR="+filepath.Join(t.TempDir(), "dev", "postgres"))
	return append(env, extra...)
}

// startServer runs `twofactord serve` and waits until it is ready; it is
// stopped with SIGTERM at the end of the test, and must exit cleanly.
func startServer(t *testing.T, bin string, env []string, args ...string) *server {
	t.Helper()
	logs := &lockedBuffer{}
	pr, pw := io.Pipe()
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Env = env
	cmd.Stdout = logs
	cmd.Stderr = io.MultiWriter(logs, pw)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "twofactord serving" {
				addr <- line.Addr
			}
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve exited with %v\n%s", err, logs.String())
			}
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("serve did not stop within 30 s\n%s", logs.String())
		}
	})
	select {
	case a := <-addr:
		s := &server{URL: "http://" + a, Env: env, Logs: logs}
		deadline := time.Now().Add(30 * time.Second)
		for {
			if code, err := httpGet(s.URL + "/readyz"); err == nil && code == 200 {
				return s
			}
			if time.Now().After(deadline) {
				t.Fatalf("never ready\n%s", logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	case err := <-done:
		t.Fatalf("serve exited: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("serve did not start\n%s", logs.String())
	}
	return nil
}

// walkthrough returns the shell blocks of the README's HTTP API walkthrough.
func walkthrough(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	start := strings.Index(text, "### Walkthrough")
	if start < 0 {
		t.Fatal("README.md has no HTTP API walkthrough")
	}
	text = text[start:]
	if end := strings.Index(text, "\n## "); end >= 0 {
		text = text[:end]
	}
	var script strings.Builder
	for _, block := range strings.Split(text, "```sh\n")[1:] {
		body, _, ok := strings.Cut(block, "```")
		if !ok {
			t.Fatal("unterminated code block in the walkthrough")
		}
		script.WriteString(body)
	}
	if script.Len() == 0 {
		t.Fatal("no sh blocks in the walkthrough")
	}
	return script.String()
}

func TestREADMEWalkthroughRunsAsWritten(t *testing.T) {
	needTools(t, "bash", "curl", "jq", "oathtool", "zbarimg", "base64")
	bin := buildBinary(t)
	srv := startServer(t, bin, testEnv(t))
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-euo", "pipefail", "-c", walkthrough(t))
	cmd.Dir = dir
	cmd.Env = append(srv.Env, "API="+srv.URL, "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the walkthrough failed: %v\n%s\nserver log:\n%s", err, out, srv.Logs.String())
	}
	for _, want := range []string{"otpauth://totp/", `"enabled": true`, `"code": "otp_invalid"`, `"attempts_remaining": 4`,
		`"backup_codes_remaining": 9`, `"status": "activated"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("walkthrough output lacks %s:\n%s", want, out)
		}
	}
	if strings.Count(string(out), "true") < 3 {
		t.Errorf("walkthrough verifications:\n%s", out)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// The README's first command works where PostgreSQL is installed but not running.
func TestServeDevStartsAPrivatePostgreSQLWhenNothingAnswers(t *testing.T) {
	if findPostgresBin() == "" {
		testdb.Missing(t, "PostgreSQL's server binaries are not installed (Debian: postgresql)")
	}
	dataDir := filepath.Join(t.TempDir(), "pg")
	for d := filepath.Dir(dataDir); d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil { // reachable by the OS user postgres when we are root
			t.Fatal(err)
		}
	}
	pgPort, httpPort := freePort(t), freePort(t)
	dbURL := "postgres://postgres@127.0.0.1:" + pgPort + "/twofactor?sslmode=disable"
	t.Setenv("TWOFACTOR_DATABASE_URL", dbURL)
	t.Setenv("TWOFACTOR_MASTER_KEYS", "")
	t.Setenv("TWOFACTOR_CODE_KEY", "")
	logs := &lockedBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--dev", "--dev-data-dir", dataDir, "--http-addr", "127.0.0.1:" + httpPort}, io.Discard, log)
	}()
	deadline := time.Now().Add(90 * time.Second)
	for {
		if code, err := httpGet("http://127.0.0.1:" + httpPort + "/readyz"); err == nil && code == 200 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("never ready\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, want := range []string{"DEVELOPMENT MODE: throwaway keys", "DEVELOPMENT MODE: nothing answers at the database URL"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("the log does not say %q:\n%s", want, logs.String())
		}
	}
	if _, err := os.Stat(filepath.Join(dataDir, "PG_VERSION")); err != nil {
		t.Fatalf("no cluster in %s: %v", dataDir, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("serve: %v", err)
	}
	// Graceful shutdown stopped the private server too.
	if err := pingServer(context.Background(), dbURL); err == nil || !nothingAnswers(err) {
		t.Fatalf("the private PostgreSQL still answers after shutdown (%v)", err)
	}
}
