package main

import (
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// workerProc is a `twofactord worker` or `serve` subprocess on a fixed
// address, which a test may kill and start again.
type workerProc struct {
	t    *testing.T
	bin  string
	env  []string
	addr string
	args []string // the subcommand and its address flag
	cmd  *exec.Cmd
	done chan error
	logs *lockedBuffer
	all  lockedBuffer // every run's logs
}

func startWorkerProc(t *testing.T, bin string, env []string) *workerProc {
	t.Helper()
	return startProc(t, bin, env, "worker", "--worker-addr")
}

// startServeProc runs `twofactord serve` as a workerProc.
func startServeProc(t *testing.T, bin string, env []string) *workerProc {
	t.Helper()
	return startProc(t, bin, env, "serve", "--http-addr")
}

func startProc(t *testing.T, bin string, env []string, sub, addrFlag string) *workerProc {
	t.Helper()
	w := &workerProc{t: t, bin: bin, env: env, addr: "127.0.0.1:" + freePort(t)}
	w.args = []string{sub, addrFlag, w.addr}
	w.start()
	t.Cleanup(func() {
		w.stop()
		if t.Failed() {
			t.Logf("%s %s logs:\n%s", w.args[0], w.addr, w.all.String())
		}
	})
	return w
}

func (w *workerProc) start() {
	w.t.Helper()
	w.logs = &lockedBuffer{}
	w.cmd = exec.Command(w.bin, w.args...)
	w.cmd.Env = w.env
	out := io.MultiWriter(w.logs, &w.all)
	w.cmd.Stdout, w.cmd.Stderr = out, out
	if err := w.cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.done = make(chan error, 1)
	go func(cmd *exec.Cmd, done chan error) { done <- cmd.Wait() }(w.cmd, w.done)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if code, err := httpGet("http://" + w.addr + "/readyz"); err == nil && code == 200 {
			return
		}
		select {
		case err := <-w.done:
			w.t.Fatalf("%s exited: %v\n%s", w.args[0], err, w.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%s never ready\n%s", w.args[0], w.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill is the process's host dying: SIGKILL, no shutdown.
func (w *workerProc) kill() {
	_ = w.cmd.Process.Signal(syscall.SIGKILL)
	<-w.done
	w.cmd = nil
}

func (w *workerProc) stop() {
	if w.cmd == nil {
		return
	}
	_ = w.cmd.Process.Signal(os.Interrupt)
	select {
	case err := <-w.done:
		if err != nil {
			w.t.Errorf("%s exited with %v\n%s", w.args[0], err, w.logs.String())
		}
	case <-time.After(30 * time.Second):
		_ = w.cmd.Process.Kill()
		w.t.Errorf("%s did not stop within 30 s\n%s", w.args[0], w.logs.String())
	}
	w.cmd = nil
}
