// Command twofactor-bench drives the HTTP API of a running twofactord with
// concurrent virtual users and compares it with what PostgreSQL alone does
// (pgbench: bench/minimal.sql, the least a replay-safe TOTP check must do, and
// bench/command.sql, the service's own transaction shape). bench/run.sh sets everything up and runs it;
// BENCHMARKS.md explains the figures.
//
//	twofactor-bench --api http://127.0.0.1:18080 --tenant tenant.json --concurrency 16 --duration 20s \
//	  --server-pid PID --pgbench-db postgres://…/scratch --database-url postgres://…/served --smtp-listen 127.0.0.1:2525
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twofactor/twofactor/bench/load"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "twofactor-bench:", err)
		os.Exit(1)
	}
}

// extras collects repeated --extra 'name|value|target' flags.
type extras []load.Extra

func (e *extras) String() string { return fmt.Sprint(len(*e)) }

func (e *extras) Set(s string) error {
	parts := strings.SplitN(s, "|", 3)
	if len(parts) < 2 {
		return errors.New("want name|value[|target]")
	}
	x := load.Extra{Name: parts[0], Value: parts[1]}
	if len(parts) == 3 {
		x.Target = parts[2]
	}
	*e = append(*e, x)
	return nil
}

func intList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive number", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("twofactor-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	api := fs.String("api", "http://127.0.0.1:8080", "base URL of the running twofactord (loopback)")
	tenantFile := fs.String("tenant", "", "output of `twofactord tenant create --json` (required)")
	conc := fs.Int("concurrency", 16, "virtual users (and pgbench clients)")
	duration := fs.Duration("duration", 20*time.Second, "length of each scenario and of the pgbench run")
	scenarios := fs.String("scenarios", strings.Join(load.Scenarios, ","), "scenarios to run, in order")
	usersPerVU := fs.Int("users-per-vu", 500, "users each virtual user enrols before the scenarios (each logs in at most 3 times per 30 s step)")
	pid := fs.Int("server-pid", 0, "process id of `twofactord serve`, for its CPU time and peak RSS")
	pgbench := fs.String("pgbench", "pgbench", "pgbench binary")
	pgbenchDB := fs.String("pgbench-db", "", "scratch database seeded by bench/seed.sql for the ceiling (empty: no ceiling)")
	pgbenchScript := fs.String("pgbench-script", "bench/command.sql", "pgbench script of the service's own transaction shape")
	minimalScript := fs.String("minimal-script", "bench/minimal.sql", "pgbench script of the minimal replay-safe TOTP check (empty: not run)")
	pgbenchUsers := fs.Int("pgbench-users", 250, "users per client seeded by bench/seed.sql")
	paired := fs.Duration("paired-ceiling", 0, "also run both pgbench scripts for this long right before each scenario and compare the scenario with them (0: only the first run)")
	dbURL := fs.String("database-url", "", "the server's database, for the growth measurement (empty: skipped)")
	growthLengths := fs.String("growth-lengths", "10,1000,10000", "stream lengths of the growth measurement")
	growthUsers := fs.Int("growth-users", 20, "users per stream length")
	lagRate := fs.Int("lag-rate", 200, "commands per second of the read-side lag measurement (0: skipped)")
	lagDuration := fs.Duration("lag-duration", 20*time.Second, "length of the lag measurement")
	idleFor := fs.Duration("idle", 10*time.Second, "with --database-url, count the database's transactions for this long without requests (0: skipped)")
	consumers := fs.Int("consumers", 0, "consumers the idle transactions are divided by (0: the consumer groups in the server's database)")
	rebuildRate := fs.Float64("rebuild-rate", 0, "events/s of the rebuild benchmark run beside the tool, for the targets (0: not measured)")
	rebuildDetail := fs.String("rebuild-detail", "", "what the rebuild benchmark printed about its run")
	smtpListen := fs.String("smtp-listen", "", "address of the loopback SMTP sink the server sends to (empty: no notifier measurement)")
	notifierLogins := fs.Int("notifier-logins", 2000, "backup logins of the notifier measurement")
	notifierHold := fs.Duration("notifier-hold", 8*time.Second, "how long the sink holds connections while the backlog builds (under the server's 15 s SMTP connect timeout)")
	jsonOut := fs.String("json", "", "also write the report as JSON to this file")
	var extra extras
	fs.Var(&extra, "extra", "a row measured outside the tool: 'name|value|target' (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if *tenantFile == "" {
		return errors.New("--tenant is required (the output of `twofactord tenant create --json`)")
	}
	tenant, err := load.ReadTenant(*tenantFile)
	if err != nil {
		return err
	}
	lengths, err := intList(*growthLengths)
	if err != nil {
		return fmt.Errorf("--growth-lengths: %w", err)
	}
	cfg := load.Config{
		API: *api, Tenant: tenant, Concurrency: *conc, Duration: *duration, UsersPerVU: *usersPerVU, ServerPID: *pid,
		DatabaseURL: *dbURL, GrowthLengths: lengths, GrowthUsers: *growthUsers,
		LagRate: *lagRate, LagDuration: *lagDuration, NotifierLogins: *notifierLogins, NotifierHold: *notifierHold,
		IdleDuration: *idleFor, Consumers: *consumers,
		Extra: extra, Log: stderr, PairedCeiling: *paired,
	}
	if *rebuildRate > 0 {
		cfg.Rebuild = &load.Rebuild{EventsPerSecond: *rebuildRate, Detail: *rebuildDetail}
	}
	for _, s := range strings.Split(*scenarios, ",") {
		if s = strings.TrimSpace(s); s != "" {
			cfg.Scenarios = append(cfg.Scenarios, s)
		}
	}
	if *pgbenchDB != "" {
		cfg.Pgbench = &load.PgbenchConfig{Path: *pgbench, DatabaseURL: *pgbenchDB, Script: *pgbenchScript, MinimalScript: *minimalScript, Users: *pgbenchUsers}
	}
	if *smtpListen != "" {
		sink, err := load.StartSink(*smtpListen)
		if err != nil {
			return fmt.Errorf("SMTP sink: %w", err)
		}
		defer sink.Close()
		cfg.Sink = sink
	}
	rep, err := load.Run(ctx, cfg)
	if err != nil {
		return err
	}
	rep.WriteText(stdout)
	if *jsonOut != "" {
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(*jsonOut, append(b, '\n'), 0o644)
	}
	return nil
}
