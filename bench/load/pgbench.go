package load

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// PgbenchConfig runs the ceilings: pgbench with bench/minimal.sql (the least a
// replay-safe TOTP check must do) and bench/command.sql (the service's own
// transaction shape) against a scratch database seeded by bench/seed.sql.
type PgbenchConfig struct {
	Path        string // the pgbench binary
	DatabaseURL string
	// Script is the own-shape transaction (bench/command.sql).
	Script string
	// MinimalScript is the minimal one (bench/minimal.sql); empty: not run.
	MinimalScript string
	// Users per client, as seeded (the script's :users).
	Users int
}

// Ceiling is what PostgreSQL alone achieves with one pgbench script.
type Ceiling struct {
	// Script is the pgbench script's file.
	Script   string         `json:"script"`
	Clients  int            `json:"clients"`
	Duration time.Duration  `json:"duration_ns"`
	TPS      float64        `json:"tps"`
	Failed   int64          `json:"failed"`
	Latency  LatencySummary `json:"latency"`
	Usage    Usage          `json:"usage"`
	Command  string         `json:"command"`
}

var (
	tpsRe    = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	failedRe = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parsePgbench reads tps and failures from pgbench's report.
func parsePgbench(out string) (tps float64, failed int64, err error) {
	m := tpsRe.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, fmt.Errorf("pgbench printed no tps:\n%s", out)
	}
	tps, err = strconv.ParseFloat(m[1], 64)
	if f := failedRe.FindStringSubmatch(out); f != nil {
		failed, _ = strconv.ParseInt(f[1], 10, 64)
	}
	return tps, failed, err
}

// PGCPUPerTxn is PostgreSQL's CPU time per transaction during the run (zero
// when unknown).
func (c *Ceiling) PGCPUPerTxn() time.Duration {
	if c == nil || c.TPS <= 0 || c.Usage.Wall <= 0 {
		return 0
	}
	return time.Duration(float64(c.Usage.Postgres) / (c.TPS * c.Usage.Wall.Seconds()))
}

// runPgbench runs script with clients connections for d, with per-transaction
// logs for the latency percentiles.
func runPgbench(ctx context.Context, cfg PgbenchConfig, script string, clients int, d time.Duration, serverPID int) (Ceiling, error) {
	db, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return Ceiling{}, err
	}
	defer db.Close()
	dir, err := os.MkdirTemp("", "twofactor-pgbench-")
	if err != nil {
		return Ceiling{}, err
	}
	defer os.RemoveAll(dir)
	args := []string{"-n", "-M", "prepared", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, 2)),
		"-T", strconv.Itoa(max(1, int(d.Seconds()))), "-D", "users=" + strconv.Itoa(cfg.Users),
		"-f", script, "--log", "--log-prefix=" + filepath.Join(dir, "tx"), cfg.DatabaseURL}
	cmd := exec.CommandContext(ctx, cfg.Path, args...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	probe := startUsage(serverPID, db)
	probe.statsDelay = 1100 * time.Millisecond
	if err := cmd.Start(); err != nil {
		return Ceiling{}, fmt.Errorf("pgbench: %w", err)
	}
	// Read the CPU counters before pgbench's backends exit with their time.
	sleepUntil(ctx, probe.start.Add(d-500*time.Millisecond))
	usage := probe.stop()
	err = cmd.Wait()
	out := buf.Bytes()
	if err != nil {
		return Ceiling{}, fmt.Errorf("pgbench: %w\n%s", err, out)
	}
	tps, failed, err := parsePgbench(string(out))
	if err != nil {
		return Ceiling{}, err
	}
	lat, err := pgbenchLatencies(dir)
	if err != nil {
		return Ceiling{}, err
	}
	return Ceiling{Script: script, Clients: clients, Duration: d, TPS: tps, Failed: failed, Latency: Summarise(lat), Usage: usage,
		Command: cfg.Path + " " + strings.Join(args[:len(args)-3], " ") + " DB"}, nil
}

// pgbenchLatencies reads the per-transaction logs: "client_id transaction_no
// latency_us script_no epoch epoch_us" per line.
func pgbenchLatencies(dir string) ([]time.Duration, error) {
	files, err := filepath.Glob(filepath.Join(dir, "tx*"))
	if err != nil {
		return nil, err
	}
	var out []time.Duration
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return nil, err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 3 {
				continue
			}
			us, err := strconv.ParseInt(fields[2], 10, 64)
			if err != nil {
				continue
			}
			out = append(out, time.Duration(us)*time.Microsecond)
		}
		f.Close()
	}
	return out, nil
}
