// Package load drives the HTTP API of a running twofactord with concurrent
// virtual users and measures it against two pgbench ceilings of the same
// PostgreSQL (the least a replay-safe TOTP check must do, and the service's
// own transaction shape): the library behind cmd/twofactor-bench (see
// BENCHMARKS.md).
//
// Every login it sends is one the server accepts: each virtual user owns a
// pool of users it enrolled itself through the API, computes their TOTP codes
// with github.com/pquerna/otp, and never sends a step it already used (the
// replay guard accepts a step once per user); backup codes are spent once.
// The mixed scenario adds failures on purpose, counted as expected.
package load

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Scenario names.
const (
	ScenarioVerify = "verify"
	ScenarioBackup = "backup"
	ScenarioEnroll = "enroll"
	ScenarioMixed  = "mixed"
)

// Scenarios lists every scenario in the order the tool runs them by default:
// the TOTP-heavy ones last, so that every enrolled user has had time to reach
// three unused steps (the server accepts each step of a user once, and the
// window is one step either side of now).
var Scenarios = []string{ScenarioEnroll, ScenarioBackup, ScenarioVerify, ScenarioMixed}

// Config is one benchmark run.
type Config struct {
	// API is the base URL of the running twofactord (loopback).
	API    string
	Tenant Tenant
	// Concurrency is the number of virtual users (and pgbench clients).
	Concurrency int
	// Duration of each scenario.
	Duration time.Duration
	// MaxOpsPerVU, when positive, also ends a scenario's virtual user after
	// that many operations (the tests: a few of each against a small pool).
	MaxOpsPerVU int
	Scenarios   []string
	// UsersPerVU is how many users each virtual user enrols before the scenarios.
	UsersPerVU int
	// ServerPID is the twofactord process, for its CPU time and peak RSS (0: unknown).
	ServerPID int

	// Pgbench, when set, measures the ceilings first (for Duration) and, with
	// PairedCeiling, again right before each scenario: on a machine shared
	// with other work, a scenario is then compared with what PostgreSQL did a
	// moment before, not minutes before.
	Pgbench       *PgbenchConfig
	PairedCeiling time.Duration

	// DatabaseURL, when set, must be the server's database: each phase then
	// reports PostgreSQL's counters for it, and the growth measurement (which
	// appends history directly) runs.
	DatabaseURL   string
	GrowthLengths []int
	GrowthUsers   int

	// LagRate commands per second for LagDuration (0: skip).
	LagRate     int
	LagDuration time.Duration

	// IdleDuration, with DatabaseURL, measures the transactions PostgreSQL
	// runs for the server's database while no request arrives (0: skip).
	IdleDuration time.Duration
	// Consumers is the number of consumers the idle transactions are divided
	// by; 0: the consumer groups in the server's database (see consumerCount).
	Consumers int

	// Sink, when set, is where the server sends email: the notifier phase
	// makes NotifierLogins backup logins while it holds connections for NotifierHold.
	Sink           *Sink
	NotifierLogins int
	NotifierHold   time.Duration
	// NotifierQuiet: before the notifier phase, wait until no message has
	// arrived for this long (default 2 s).
	NotifierQuiet time.Duration

	// BeforeScenario and AfterScenario, when set, run around each scenario
	// (the profiling benchmark starts and stops the CPU profile there).
	BeforeScenario, AfterScenario func(name string)

	// Rebuild is the rebuild benchmark's result (measured outside the tool,
	// by bench/run.sh), for the targets; nil: not measured.
	Rebuild *Rebuild
	// Extra rows for the report (measured outside the tool).
	Extra []Extra
	// Log receives progress lines (nil: discarded).
	Log io.Writer
	// RunID makes user ids unique per run (default: from the clock).
	RunID string
	// QuiesceLimit bounds the wait between phases for the consumers' backlog
	// (default 3 minutes; negative: no wait, as in the tests).
	QuiesceLimit time.Duration
	// DBStatsDelay is how long a phase's end waits before reading the
	// database's counters (default 10.5 s): a backend reports them when it
	// goes idle, at most once a second, and what it could not report then
	// after 10 s of idleness (PostgreSQL 15's PGSTAT_IDLE_INTERVAL), so the
	// last second of a phase would otherwise count in the next one (above
	// all in the idle measurement, which follows a busy phase).
	DBStatsDelay time.Duration

	meter meter
}

// meter measures a phase: the server's CPU and memory, and with a database
// the work PostgreSQL counted for it.
type meter struct {
	pid        int
	db         *pgxpool.Pool
	statsDelay time.Duration
}

func (m meter) start() *usageProbe {
	p := startUsage(m.pid, m.db)
	p.statsDelay = m.statsDelay
	return p
}

// Rebuild is the read model's rebuild throughput (projections.BenchmarkRebuild).
type Rebuild struct {
	EventsPerSecond float64 `json:"events_per_second"`
	Detail          string  `json:"detail,omitempty"`
}

// Extra is a measurement the runner script made beside the tool.
type Extra struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Target string `json:"target,omitempty"`
}

// Report is everything one run measured.
type Report struct {
	Started     time.Time `json:"started"`
	API         string    `json:"api"`
	Concurrency int       `json:"concurrency"`
	Users       int       `json:"users"`
	// Minimal is the minimal ceiling (bench/minimal.sql), Ceiling the
	// own-shape one (bench/command.sql), both run before everything.
	Minimal   *Ceiling    `json:"minimal_ceiling,omitempty"`
	Ceiling   *Ceiling    `json:"ceiling,omitempty"`
	Setup     Result      `json:"setup"`
	Scenarios []Result    `json:"scenarios"`
	Lag       *LagResult  `json:"lag,omitempty"`
	Idle      *IdleResult `json:"idle,omitempty"`
	Rebuild   *Rebuild    `json:"rebuild,omitempty"`
	// Targets is CheckTargets at the end of the run.
	Targets  []Target        `json:"targets,omitempty"`
	Notifier *NotifierResult `json:"notifier,omitempty"`
	Growth   []GrowthResult  `json:"growth,omitempty"`
	// GrowthAppended events were written directly in GrowthAppend.
	GrowthAppended int64         `json:"growth_appended"`
	GrowthAppend   time.Duration `json:"growth_append_ns"`
	Extra          []Extra       `json:"extra,omitempty"`
}

func (c *Config) defaults() error {
	if c.Concurrency < 1 {
		return errors.New("concurrency must be at least 1")
	}
	if c.Duration <= 0 {
		return errors.New("duration must be positive")
	}
	if c.UsersPerVU < 1 {
		c.UsersPerVU = 1
	}
	if c.RunID == "" {
		c.RunID = strconv.FormatInt(time.Now().Unix()%1_000_000_000, 36)
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	if c.NotifierHold <= 0 {
		c.NotifierHold = 8 * time.Second
	}
	if c.QuiesceLimit == 0 {
		c.QuiesceLimit = 3 * time.Minute
	}
	if c.DBStatsDelay <= 0 {
		c.DBStatsDelay = 10500 * time.Millisecond
	}
	if c.NotifierQuiet <= 0 {
		c.NotifierQuiet = 2 * time.Second
	}
	for _, s := range c.Scenarios {
		switch s {
		case ScenarioVerify, ScenarioBackup, ScenarioEnroll, ScenarioMixed:
		default:
			return fmt.Errorf("unknown scenario %q (known: verify, backup, enroll, mixed)", s)
		}
	}
	return nil
}

func (c *Config) logf(format string, args ...any) {
	fmt.Fprintf(c.Log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// Run performs the whole benchmark: ceiling, setup, scenarios, read side,
// notifier, growth.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	client, err := NewClient(cfg.API, cfg.Tenant, cfg.Concurrency*2)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	if err := waitReady(ctx, cfg.API); err != nil {
		return nil, err
	}
	rep := &Report{Started: time.Now().UTC(), API: cfg.API, Concurrency: cfg.Concurrency, Extra: cfg.Extra, Rebuild: cfg.Rebuild}
	cfg.meter = meter{pid: cfg.ServerPID, statsDelay: cfg.DBStatsDelay}
	if cfg.DatabaseURL != "" {
		db, err := pgxpool.New(ctx, cfg.DatabaseURL)
		if err != nil {
			return nil, err
		}
		defer db.Close()
		cfg.meter.db = db
	}

	if cfg.Pgbench != nil {
		var err error
		if rep.Minimal, rep.Ceiling, err = cfg.ceilings(ctx, cfg.Duration, ""); err != nil {
			return nil, err
		}
	}

	pool := NewPool(cfg.Concurrency)
	var growth *Growth
	if cfg.DatabaseURL != "" && len(cfg.GrowthLengths) > 0 && cfg.GrowthUsers > 0 {
		growth = &Growth{Lengths: cfg.GrowthLengths, Users: cfg.GrowthUsers}
	}
	cfg.logf("setup: %d virtual users enrol %d users each", cfg.Concurrency, cfg.UsersPerVU)
	rep.Setup, err = setup(ctx, &cfg, client, pool, growth)
	if err != nil {
		return nil, err
	}
	rep.Users = pool.Users()
	cfg.logf("setup: %d users in %v (%s)", rep.Users, rep.Setup.Duration.Round(time.Millisecond), FormatCounts(rep.Setup.Errors))
	cfg.quiesce(ctx)

	for _, name := range cfg.Scenarios {
		cfg.logf("scenario %s: %d virtual users, %v", name, cfg.Concurrency, cfg.Duration)
		var paired, pairedMinimal *Ceiling
		if cfg.Pgbench != nil && cfg.PairedCeiling > 0 {
			var err error
			if pairedMinimal, paired, err = cfg.ceilings(ctx, cfg.PairedCeiling, " before "+name); err != nil {
				return nil, err
			}
			cfg.quiesce(ctx)
		}
		switch name {
		case ScenarioVerify:
			cfg.ripen(ctx, pool, expectedRate(rep.Scenarios)*cfg.Duration.Seconds())
		case ScenarioMixed:
			cfg.ripen(ctx, pool, 0.6*expectedRate(rep.Scenarios)*cfg.Duration.Seconds())
		}
		if cfg.BeforeScenario != nil {
			cfg.BeforeScenario(name)
		}
		r := runScenario(ctx, &cfg, client, pool, name)
		if cfg.AfterScenario != nil {
			cfg.AfterScenario(name)
		}
		r.Ceiling, r.Minimal = paired, pairedMinimal
		rep.Scenarios = append(rep.Scenarios, r)
		cfg.logf("scenario %s: %.0f req/s, p50 %s ms, p99 %s ms, errors: %s", name, r.RequestRate(), ms(r.Latency.P50), ms(r.Latency.P99), FormatCounts(r.Errors))
		cfg.quiesce(ctx)
	}

	if cfg.LagRate > 0 && cfg.LagDuration > 0 {
		cfg.ripen(ctx, pool, float64(cfg.LagRate)*cfg.LagDuration.Seconds())
		cfg.logf("read side: commit-to-visible lag at %d commands/s for %v", cfg.LagRate, cfg.LagDuration)
		l := lag(ctx, client, pool, cfg.LagRate, cfg.LagDuration, cfg.meter)
		rep.Lag = &l
		cfg.logf("read side: lag p50 %s ms, p99 %s ms over %d commands", ms(l.Lag.P50), ms(l.Lag.P99), l.Commands)
		cfg.quiesce(ctx)
	}

	if cfg.meter.db != nil && cfg.IdleDuration > 0 {
		n, from := cfg.consumerCount(ctx)
		cfg.logf("idle: PostgreSQL transactions of the server's database over %v without requests (%d consumers, %s)", cfg.IdleDuration, n, from)
		i := idle(ctx, cfg.IdleDuration, n, from, cfg.meter)
		rep.Idle = &i
		cfg.logf("idle: %d transactions, %.2f per second per consumer", i.Transactions, i.PerSecondPerConsumer)
	}

	if cfg.Sink != nil && cfg.NotifierLogins > 0 {
		cfg.logf("notifier: %d backup logins while the SMTP sink holds connections for %v", cfg.NotifierLogins, cfg.NotifierHold)
		n := notifierThroughput(ctx, client, pool, cfg.Sink, cfg.Concurrency, cfg.NotifierLogins, cfg.NotifierHold, cfg.NotifierQuiet, cfg.meter)
		rep.Notifier = &n
		cfg.logf("notifier: %d messages in %v after the release (%.0f/s)", n.Delivered, n.Drain.Round(time.Millisecond), n.Rate)
		cfg.quiesce(ctx)
	}

	if growth != nil {
		cfg.logf("growth: appending past logins (%v events, %d users each)", cfg.GrowthLengths, cfg.GrowthUsers)
		if err := growth.grow(ctx, cfg.meter.db, cfg.Tenant.TenantID); err != nil {
			return nil, err
		}
		rep.GrowthAppended, rep.GrowthAppend = growth.appended, growth.took
		cfg.logf("growth: %d events in %v; waiting for the consumers", growth.appended, growth.took.Round(time.Millisecond))
		if err := waitVisible(ctx, client, growth.lastPos, 5*time.Minute); err != nil {
			return nil, err
		}
		cfg.quiesce(ctx)
		cfg.logf("growth: logins by stream length")
		s := newScenario("growth", 1)
		rep.Growth = growth.measure(ctx, client, s)
		for _, g := range rep.Growth {
			cfg.logf("growth: %d events: first login %s ms, then p50 %s ms (%d logins)", g.Length, ms(g.First.P50), ms(g.Steady.P50), g.Steady.Count)
		}
		if errs := s.errors.Map(); len(errs) > 0 {
			cfg.logf("growth: errors: %s", FormatCounts(errs))
		}
	}
	rep.Targets = rep.CheckTargets()
	return rep, ctx.Err()
}

// ceilings runs the minimal ceiling (when configured) and then the own-shape
// one, each for d.
func (c *Config) ceilings(ctx context.Context, d time.Duration, when string) (minimal, own *Ceiling, err error) {
	pg := *c.Pgbench
	if pg.MinimalScript != "" {
		c.logf("minimal ceiling%s: pgbench %s, %d clients, %v", when, pg.MinimalScript, c.Concurrency, d)
		m, err := runPgbench(ctx, pg, pg.MinimalScript, c.Concurrency, d, c.ServerPID)
		if err != nil {
			return nil, nil, err
		}
		minimal = &m
		c.logf("minimal ceiling%s: %.0f tps, %s ms of PostgreSQL CPU per transaction", when, m.TPS, ms(m.PGCPUPerTxn()))
	}
	c.logf("own-shape ceiling%s: pgbench %s, %d clients, %v", when, pg.Script, c.Concurrency, d)
	o, err := runPgbench(ctx, pg, pg.Script, c.Concurrency, d, c.ServerPID)
	if err != nil {
		return nil, nil, err
	}
	c.logf("own-shape ceiling%s: %.0f tps", when, o.TPS)
	return minimal, &o, nil
}

// consumerCount is the number of consumers the idle transactions are divided
// by, and where it comes from: Consumers when set, otherwise the consumer
// groups that acknowledged messages in the server's database (watermill-sql's
// offsets table), otherwise the two that `twofactord serve` runs (the
// user_status projector and the notifier, cmd/twofactord/serve.go).
func (c *Config) consumerCount(ctx context.Context) (int, string) {
	if c.Consumers > 0 {
		return c.Consumers, "as configured"
	}
	var n int
	err := c.meter.db.QueryRow(ctx, `SELECT count(DISTINCT consumer_group) FROM watermill_offsets_twofactor_events`).Scan(&n)
	if err == nil && n > 0 {
		return n, "consumer groups in watermill_offsets_twofactor_events"
	}
	return 2, "twofactord serve's projector and notifier"
}

// expectedRate guesses a login scenario's request rate from the scenarios
// run so far (the fastest of them), to size what the pool must offer.
func expectedRate(done []Result) float64 {
	rate := 500.0
	for _, r := range done {
		if r.Name != ScenarioEnroll {
			rate = max(rate, r.RequestRate())
		}
	}
	return 1.2 * rate
}

// ripen waits for the next 30-second steps (two at most) while the enrolled
// users cannot make need logins without waiting: each user logs in once per
// step, and a phase that runs out measures the pool rather than the server.
func (c *Config) ripen(ctx context.Context, pool *Pool, need float64) {
	if c.MaxOpsPerVU > 0 {
		need = min(need, float64(c.MaxOpsPerVU*c.Concurrency))
	}
	for i := 0; i < 2 && ctx.Err() == nil; i++ {
		have := pool.Available(time.Now())
		if float64(have) >= need {
			return
		}
		c.logf("the users can make %d logins now, the next phase may need %.0f: waiting for the next time step", have, need)
		sleepUntil(ctx, NextStep(time.Now()))
	}
}

// quiesce lets the background work of the previous phase finish, so that
// one phase's backlog does not slow the next: with the server's database it
// waits until every consumer group has acknowledged the whole event log and no
// notification is due (at most QuiesceLimit), then until the server has used
// less than 10 % of a core for half a second (at most 20 s).
func (c *Config) quiesce(ctx context.Context) {
	if db := c.meter.db; db != nil && c.QuiesceLimit >= 0 {
		start := time.Now()
		deadline := start.Add(c.QuiesceLimit)
		logged := false
		var last [3]int64
		still := time.Now()
		for time.Now().Before(deadline) && ctx.Err() == nil {
			// Only messages that can be delivered count: watermill-sql hands out
			// a message once its transaction is older than every transaction
			// running in the whole PostgreSQL cluster (pg_snapshot_xmin), so a
			// long transaction in any other database holds newer ones back.
			var now [3]int64
			err := db.QueryRow(ctx, `SELECT
				(SELECT COALESCE(max(position), 0) FROM events
					WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot()))
					- (SELECT COALESCE(min(offset_acked), 0) FROM watermill_offsets_twofactor_events),
				(SELECT COALESCE(sum(offset_acked), 0) FROM watermill_offsets_twofactor_events),
				(SELECT count(*) FROM notifications WHERE status IN ('pending', 'sending') AND next_attempt_at <= now())`).
				Scan(&now[0], &now[1], &now[2])
			if err != nil || now[0] <= 0 && now[2] == 0 {
				break
			}
			// A group may leave its last message unacknowledged until the
			// next one arrives: no progress for two seconds is settled too.
			if now != last {
				last, still = now, time.Now()
			} else if time.Since(still) > 2*time.Second {
				break
			}
			if !logged && time.Since(start) > 10*time.Second {
				logged = true
				c.logf("waiting for the consumers: %d events not acknowledged by every group, %d notifications due", now[0], now[2])
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	pid := c.ServerPID
	if pid <= 0 || pid == os.Getpid() {
		time.Sleep(200 * time.Millisecond) // in-process server: the tool's own CPU would never settle
		return
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		a, _ := processCPU(pid)
		time.Sleep(500 * time.Millisecond)
		b, _ := processCPU(pid)
		if b-a < 50*time.Millisecond {
			return
		}
	}
}

func waitReady(ctx context.Context, api string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, api+"/readyz", nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s/readyz did not answer 200 within 30 s (%v)", api, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitVisible waits until the read model shows position (via min_position).
func waitVisible(ctx context.Context, c *Client, position int64, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		r := c.Visible(ctx, position)
		if r.OK() {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("the read model did not reach position %d within %v: %s", position, limit, r.Kind())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// setup enrols the users of every partition (and the growth users), each
// virtual user its own, with a contact address so notifications are sent.
func setup(ctx context.Context, cfg *Config, c *Client, pool *Pool, growth *Growth) (Result, error) {
	s := newScenario("setup", cfg.Concurrency)
	probe := cfg.meter.start()
	start := time.Now()
	var failed atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for vu := range cfg.Concurrency {
		wg.Go(func() {
			part := pool.Parts[vu]
			for i := 0; part.Len() < cfg.UsersPerVU && ctx.Err() == nil; i++ {
				u, err := Enrol(ctx, c, fmt.Sprintf("u-%s-%d-%d", cfg.RunID, vu, i), true, s.record)
				if err != nil {
					if failed.Add(1) > 10 {
						once.Do(func() { firstErr = err })
						return
					}
					continue
				}
				part.Add(u)
			}
		})
	}
	if growth != nil {
		wg.Go(func() {
			if err := growth.enrol(ctx, c, cfg.RunID, s); err != nil {
				once.Do(func() { firstErr = err })
			}
		})
	}
	wg.Wait()
	r := s.result(time.Since(start), probe.stop())
	if firstErr != nil {
		return r, fmt.Errorf("setup: %w", firstErr)
	}
	return r, ctx.Err()
}

// runScenario runs one named scenario for the configured duration.
func runScenario(ctx context.Context, cfg *Config, c *Client, pool *Pool, name string) Result {
	s := newScenario(name, cfg.Concurrency)
	var op func(ctx context.Context, vu int, rng *rand.Rand)
	switch name {
	case ScenarioVerify:
		op = func(ctx context.Context, vu int, _ *rand.Rand) { login(ctx, c, pool.Parts[vu], s) }
	case ScenarioBackup:
		op = func(ctx context.Context, vu int, _ *rand.Rand) {
			if !backupLogin(ctx, c, pool.Parts[vu], s) {
				s.errors.Add("pool: no backup codes left")
				<-ctx.Done()
			}
		}
	case ScenarioEnroll:
		var seq atomic.Int64
		op = func(ctx context.Context, vu int, _ *rand.Rand) {
			_, err := Enrol(ctx, c, fmt.Sprintf("e-%s-%d-%d", cfg.RunID, vu, seq.Add(1)), false, func(op string, r Response, want ...expect) {
				if ctx.Err() != nil && r.Err != nil {
					return
				}
				s.record(op, r, want...)
			})
			if err == nil {
				s.ops.Add(1)
			}
		}
	case ScenarioMixed:
		states := make([]mixState, cfg.Concurrency)
		op = func(ctx context.Context, vu int, rng *rand.Rand) {
			mixed(ctx, c, pool.Parts[vu], s, &states[vu], cfg.RunID, vu, rng)
		}
	}
	if limit := cfg.MaxOpsPerVU; limit > 0 {
		inner, counts := op, make([]int, cfg.Concurrency)
		op = func(ctx context.Context, vu int, rng *rand.Rand) {
			if counts[vu] >= limit {
				<-ctx.Done()
				return
			}
			counts[vu]++
			inner(ctx, vu, rng)
		}
	}
	probe := cfg.meter.start()
	d := closedLoop(ctx, cfg.Concurrency, cfg.Duration, op)
	return s.result(d, probe.stop())
}
