package load_test

import (
	"bytes"
	"context"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/bench/load"
	"github.com/twofactor/twofactor/internal/testdb"
)

// TestEveryPhaseAgainstAnInProcessServer runs the whole tool once, briefly,
// against the service wired as `serve` wires it, on loopback: every scenario,
// the read-side lag, the idle transactions, the notifier through the SMTP
// sink, the growth appends, and the pgbench ceilings with bench/seed.sql,
// bench/minimal.sql and bench/command.sql when pgbench and psql are
// installed. Every login the tool sends must be accepted.
func TestEveryPhaseAgainstAnInProcessServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sink, err := load.StartSink("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	srv := startServer(t, sink.URL())
	var progress bytes.Buffer
	cfg := load.Config{
		API: srv.URL, Tenant: srv.Tenant, Concurrency: 3, Duration: 500 * time.Millisecond,
		Scenarios: load.Scenarios, UsersPerVU: 12, MaxOpsPerVU: 4, ServerPID: os.Getpid(),
		DatabaseURL: srv.DBURL, GrowthLengths: []int{10, 150}, GrowthUsers: 2,
		LagRate: 10, LagDuration: 700 * time.Millisecond, IdleDuration: 300 * time.Millisecond,
		Sink: sink, NotifierLogins: 12, NotifierHold: 1500 * time.Millisecond, NotifierQuiet: 300 * time.Millisecond,
		Log: &progress, DBStatsDelay: 10 * time.Millisecond, QuiesceLimit: -1,
	}
	if pg := pgbenchScratch(t); pg != nil {
		cfg.Pgbench, cfg.PairedCeiling = pg, 300*time.Millisecond
	}
	rep, err := load.Run(ctx, cfg)
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	var out bytes.Buffer
	rep.WriteText(&out)
	t.Log("\n" + progress.String() + "\n" + out.String())

	if rep.Users != 36 || rep.Setup.ErrorCount() != 0 {
		t.Errorf("setup: %d users, errors %v", rep.Users, rep.Setup.Errors)
	}
	if len(rep.Scenarios) != len(load.Scenarios) {
		t.Fatalf("ran %d scenarios", len(rep.Scenarios))
	}
	for _, s := range rep.Scenarios {
		if s.OK == 0 || s.ErrorCount() != 0 || s.Latency.Count == 0 {
			t.Errorf("%s: %d accepted, errors %v", s.Name, s.OK, s.Errors)
		}
		if s.Usage.PeakRSS == 0 {
			t.Errorf("%s: no peak RSS read", s.Name)
		}
	}
	// Users enrolled seconds ago have one or two unused steps each: the lag
	// phase may run out of them, which is not an error of the service.
	if l := rep.Lag; l == nil || l.Commands < 3 || l.Lag.Count != int(l.Commands) || len(l.NotVisible) != 0 || len(l.Errors) > l.Errors["pool: no usable step"] {
		t.Errorf("lag: %+v", rep.Lag)
	}
	if n := rep.Notifier; n == nil || n.Logins == 0 || n.Owed != n.Logins || n.Rate <= 0 {
		t.Errorf("notifier: %+v", rep.Notifier)
	}
	if len(rep.Growth) != 2 || rep.Growth[0].First.Count != 2 || rep.Growth[1].First.Count != 2 || rep.GrowthAppended < 2*140 {
		t.Errorf("growth: %+v (appended %d)", rep.Growth, rep.GrowthAppended)
	}
	if cfg.Pgbench != nil {
		if rep.Ceiling == nil || rep.Ceiling.TPS <= 0 || rep.Ceiling.Failed != 0 {
			t.Errorf("own-shape ceiling: %+v", rep.Ceiling)
		}
		if rep.Minimal == nil || rep.Minimal.TPS <= 0 || rep.Minimal.Failed != 0 || rep.Minimal.PGCPUPerTxn() < 0 {
			t.Errorf("minimal ceiling: %+v", rep.Minimal)
		}
		runs := rep.Minimal.Latency.Count
		for _, s := range rep.Scenarios {
			if s.Ceiling == nil || s.Ceiling.TPS <= 0 || s.Minimal == nil || s.Minimal.TPS <= 0 || s.Minimal.Failed != 0 {
				t.Errorf("%s: paired ceilings %+v, %+v", s.Name, s.Ceiling, s.Minimal)
				continue
			}
			runs += s.Minimal.Latency.Count
		}
		// Every minimal transaction must have persisted its step (the
		// compare-and-set matched): a script whose write hit no row would
		// measure less than a check must do.
		var persisted int
		out, err := exec.Command("psql", "-X", "-At", "-c", "SELECT sum(last_step - 59847955) FROM bench_totp_users", cfg.Pgbench.DatabaseURL).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if persisted, err = strconv.Atoi(strings.TrimSpace(string(out))); err != nil || persisted != runs {
			t.Errorf("minimal ceiling: %d steps persisted for %d transactions (%v)", persisted, runs, err)
		}
	}
	if i := rep.Idle; i == nil || i.Consumers != 2 || i.Usage.DB == nil || i.Duration <= 0 {
		t.Errorf("idle: %+v", rep.Idle)
	}
	if len(rep.Targets) != 9 {
		t.Errorf("targets: %+v", rep.Targets)
	}
	for _, want := range []string{"| verify |", "| backup |", "| enroll |", "| mixed |", "commit-to-visible lag", "Notifier:", "Growth:", "Idle:", "Targets (issue 13)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// pgbenchScratch seeds a fresh migrated database for bench/command.sql with
// bench/seed.sql; without pgbench and psql the test fails under CI and runs
// without the ceiling elsewhere.
func pgbenchScratch(t *testing.T) *load.PgbenchConfig {
	pgbench, err1 := exec.LookPath("pgbench")
	psql, err2 := exec.LookPath("psql")
	if err1 != nil || err2 != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("pgbench or psql is not installed (Debian: postgresql-client; .ci/run installs postgresql)")
		}
		t.Log("pgbench or psql not installed: no ceiling in this test")
		return nil
	}
	dbURL := testdb.Fresh(t)
	t.Cleanup(func() { testdb.Drop(t, dbURL) })
	out, err := exec.Command(psql, "-X", "-q", "-v", "clients=3", "-v", "users=5", "-f", filepath.Join("..", "seed.sql"), dbURL).CombinedOutput()
	if err != nil {
		t.Fatalf("bench/seed.sql: %v\n%s", err, out)
	}
	return &load.PgbenchConfig{Path: pgbench, DatabaseURL: dbURL, Script: filepath.Join("..", "command.sql"),
		MinimalScript: filepath.Join("..", "minimal.sql"), Users: 5}
}

// TestSinkReceivesMail checks the SMTP sink with the standard library's client.
func TestSinkReceivesMail(t *testing.T) {
	sink, err := load.StartSink("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	start := time.Now()
	msg := "Subject: =?UTF-8?q?A_backup_code_was_used_to_sign_in?=\r\nTo: a@bench.test\r\n\r\nbody\r\n..dot\r\n"
	if err := smtpSend(sink.Addr(), "a@bench.test", msg); err != nil {
		t.Fatal(err)
	}
	got := sink.Since(start)
	if len(got) != 1 || got[0].Subject != "A backup code was used to sign in" || len(got[0].To) != 1 || got[0].To[0] != "a@bench.test" {
		t.Fatalf("got %+v", got)
	}
}

// BenchmarkVerifyHTTP is the verify scenario against the service in this
// process, for a CPU profile of where the time goes. The profile covers only
// the scenario (not the enrolments before it); samples are labelled side=api
// (HTTP handlers and commands), side=consumers (projector, notifier) and
// side=load-tool (the virtual users), so one can look at the server alone:
//
//	TWOFACTOR_BENCH_CPUPROFILE=/tmp/verify.pprof go test -run '^$' -bench BenchmarkVerifyHTTP -benchtime 1x ./bench/load/
//	go tool pprof -tagignore side=load-tool -top /tmp/verify.pprof
//
// TWOFACTOR_BENCH_SECONDS sets the scenario's length (default 20).
func BenchmarkVerifyHTTP(b *testing.B) {
	seconds := 20
	if v := os.Getenv("TWOFACTOR_BENCH_SECONDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		seconds = n
	}
	profile := os.Getenv("TWOFACTOR_BENCH_CPUPROFILE")
	srv := startServer(b, "")
	for b.Loop() {
		var f *os.File
		cfg := load.Config{
			API: srv.URL, Tenant: srv.Tenant, Concurrency: 16, Duration: time.Duration(seconds) * time.Second,
			Scenarios: []string{load.ScenarioVerify}, UsersPerVU: 30 * seconds, ServerPID: os.Getpid(), Log: os.Stderr,
			BeforeScenario: func(string) {
				if profile == "" {
					return
				}
				var err error
				if f, err = os.Create(profile); err != nil {
					b.Fatal(err)
				}
				if err := pprof.StartCPUProfile(f); err != nil {
					b.Fatal(err)
				}
			},
			AfterScenario: func(string) {
				if f != nil {
					pprof.StopCPUProfile()
					f.Close()
				}
			},
		}
		var rep *load.Report
		pprof.Do(context.Background(), pprof.Labels("side", "load-tool"), func(ctx context.Context) {
			var err error
			if rep, err = load.Run(ctx, cfg); err != nil {
				b.Fatal(err)
			}
		})
		v := rep.Scenarios[0]
		b.ReportMetric(v.RequestRate(), "req/s")
		b.ReportMetric(float64(v.Latency.P50)/1e6, "p50-ms")
		b.ReportMetric(float64(v.Latency.P99)/1e6, "p99-ms")
		if v.ErrorCount() != 0 {
			b.Errorf("errors: %v", v.Errors)
		}
	}
}

func smtpSend(addr, to, msg string) error {
	return smtp.SendMail(addr, nil, "twofactor@bench.test", []string{to}, []byte(msg))
}
