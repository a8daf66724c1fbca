package load

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// expect is a failure a request is meant to produce (the mixed scenario's wrong
// codes): it is counted as expected, not as an error.
type expect struct {
	status int
	code   string
}

// Scenario accumulates what happened during one phase.
type Scenario struct {
	Name        string
	Concurrency int

	requests atomic.Int64
	ok       atomic.Int64
	ops      atomic.Int64
	poolWait atomic.Int64 // ns virtual users waited for a usable step
	lat      Latencies
	expected Outcomes
	errors   Outcomes

	mu   sync.Mutex
	byOp map[string]*Latencies
}

func newScenario(name string, conc int) *Scenario {
	return &Scenario{Name: name, Concurrency: conc, byOp: map[string]*Latencies{}}
}

// record counts one response; want lists the failures this request is meant to get.
func (s *Scenario) record(op string, r Response, want ...expect) {
	s.requests.Add(1)
	s.lat.Add(r.Latency)
	s.mu.Lock()
	l := s.byOp[op]
	if l == nil {
		l = &Latencies{}
		s.byOp[op] = l
	}
	s.mu.Unlock()
	l.Add(r.Latency)
	if r.OK() && len(want) == 0 {
		s.ok.Add(1)
		return
	}
	if r.Err == nil {
		for _, w := range want {
			if r.Status == w.status && (w.code == "" || r.Code == w.code) {
				s.expected.Add(op + ": " + r.Kind())
				return
			}
		}
	}
	s.errors.Add(op + ": " + r.Kind())
}

// Result is the summary of a scenario.
type Result struct {
	Name        string                    `json:"name"`
	Concurrency int                       `json:"concurrency"`
	Duration    time.Duration             `json:"duration_ns"`
	Requests    int64                     `json:"requests"`
	OK          int64                     `json:"ok"`
	Ops         int64                     `json:"ops"`
	Expected    map[string]int            `json:"expected_failures"`
	Errors      map[string]int            `json:"errors"`
	Latency     LatencySummary            `json:"latency"`
	ByOp        map[string]LatencySummary `json:"latency_by_op"`
	PoolWait    time.Duration             `json:"pool_wait_ns"`
	Usage       Usage                     `json:"usage"`
	// Ceiling and Minimal are pgbench's runs of the own-shape and of the
	// minimal script right before this scenario, when paired.
	Ceiling *Ceiling `json:"paired_ceiling,omitempty"`
	Minimal *Ceiling `json:"paired_minimal_ceiling,omitempty"`
}

// CPUPerRequest is the CPU the server process and PostgreSQL spent per
// request of the scenario (zero when unknown).
func (r Result) CPUPerRequest() (server, postgres time.Duration) {
	if r.Requests <= 0 {
		return 0, 0
	}
	return r.Usage.Server / time.Duration(r.Requests), r.Usage.Postgres / time.Duration(r.Requests)
}

// TransactionsPerRequest is PostgreSQL's committed and rolled back
// transactions of the server's database per request (pg_stat_database),
// including the consumers' work the requests caused; -1 when not measured.
func (r Result) TransactionsPerRequest() float64 {
	if r.Usage.DB == nil || r.Requests <= 0 {
		return -1
	}
	return float64(r.Usage.DB.Transactions) / float64(r.Requests)
}

// RequestRate is completed requests per second (accepted and expected failures).
func (r Result) RequestRate() float64 {
	if r.Duration <= 0 {
		return 0
	}
	n := r.OK
	for _, v := range r.Expected {
		n += int64(v)
	}
	return float64(n) / r.Duration.Seconds()
}

// OpRate is operations per second (a login, an enrolment of two requests…).
func (r Result) OpRate() float64 {
	if r.Duration <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Duration.Seconds()
}

// ErrorCount is the number of unexpected outcomes.
func (r Result) ErrorCount() int {
	n := 0
	for _, v := range r.Errors {
		n += v
	}
	return n
}

func (s *Scenario) result(d time.Duration, u Usage) Result {
	r := Result{
		Name: s.Name, Concurrency: s.Concurrency, Duration: d, Requests: s.requests.Load(), OK: s.ok.Load(),
		Ops: s.ops.Load(), Expected: s.expected.Map(), Errors: s.errors.Map(), Latency: s.lat.Summary(),
		ByOp: map[string]LatencySummary{}, PoolWait: time.Duration(s.poolWait.Load()), Usage: u,
	}
	s.mu.Lock()
	for k, l := range s.byOp {
		r.ByOp[k] = l.Summary()
	}
	s.mu.Unlock()
	return r
}

// closedLoop runs op in conc virtual users, each sending its next request as
// soon as the previous one is answered, for d.
func closedLoop(ctx context.Context, conc int, d time.Duration, op func(ctx context.Context, vu int, rng *rand.Rand)) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for vu := range conc {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(vu), uint64(start.UnixNano())))
			for ctx.Err() == nil {
				op(ctx, vu, rng)
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

// sleepUntil waits for t or the end of ctx and returns how long it waited.
func sleepUntil(ctx context.Context, t time.Time) time.Duration {
	start := time.Now()
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
	return time.Since(start)
}

// login sends one TOTP login of the partition's next usable user, waiting for
// the next time step if all are used up.
func login(ctx context.Context, c *Client, part *Partition, s *Scenario) {
	u, code, ok := part.TakeLogin(time.Now())
	if !ok {
		s.poolWait.Add(int64(sleepUntil(ctx, NextStep(time.Now()))))
		return
	}
	r := c.Verify(ctx, u.ID, "totp", code)
	if ctx.Err() != nil && r.Err != nil {
		return // cut off by the end of the phase, not an outcome
	}
	s.record("verify totp", r)
	s.ops.Add(1)
	if r.OK() {
		part.AcceptedTOTP(u)
	}
}

// backupLogin logs in with the next unused backup code of the partition.
func backupLogin(ctx context.Context, c *Client, part *Partition, s *Scenario) bool {
	u, code, ok := part.TakeBackupCode()
	if !ok {
		return false
	}
	r := c.Verify(ctx, u.ID, "backup_code", code)
	if ctx.Err() != nil && r.Err != nil {
		return true
	}
	s.record("verify backup_code", r)
	s.ops.Add(1)
	if r.OK() {
		part.Succeeded(u)
	}
	return true
}

// mixState is per-virtual-user state of the mixed scenario.
type mixState struct {
	cursor string
	pages  int
	enrols int
}

// mixWeights is the blend of the mixed scenario, in per mille of operations.
var mixWeights = []struct {
	name   string
	weight int
}{
	{"verify totp", 550},
	{"verify backup_code", 50},
	{"challenge", 50},
	{"wrong totp code", 50},
	{"replayed totp code", 20},
	{"unknown user", 20},
	{"admin get user", 120},
	{"admin list users", 70},
	{"admin coverage", 30},
	{"enroll", 40},
}

func pickMix(rng *rand.Rand) string {
	n := rng.IntN(1000)
	for _, w := range mixWeights {
		if n < w.weight {
			return w.name
		}
		n -= w.weight
	}
	return mixWeights[0].name
}

// mixed runs one operation of the blend.
func mixed(ctx context.Context, c *Client, part *Partition, s *Scenario, st *mixState, runID string, vu int, rng *rand.Rand) {
	invalid := expect{422, "otp_invalid"}
	done := func(op string, r Response, want ...expect) {
		if ctx.Err() != nil && r.Err != nil {
			return
		}
		s.record(op, r, want...)
	}
	switch op := pickMix(rng); op {
	case "verify totp":
		login(ctx, c, part, s)
		return
	case "verify backup_code":
		if !backupLogin(ctx, c, part, s) {
			login(ctx, c, part, s)
		}
		return
	case "challenge":
		u := part.Random(rng)
		done(op, c.Challenge(ctx, u.ID))
	case "wrong totp code", "replayed totp code":
		u, code, ok := part.TakeFailure(time.Now(), op == "replayed totp code")
		if !ok {
			login(ctx, c, part, s)
			return
		}
		done(op, c.Verify(ctx, u.ID, "totp", code), invalid)
	case "unknown user":
		done(op, c.Verify(ctx, fmt.Sprintf("nobody-%s-%d", runID, rng.IntN(1_000_000)), "totp", "123456"), expect{404, "user_not_found"})
	case "admin get user":
		u := part.Random(rng)
		done(op, c.GetUser(ctx, u.ID))
	case "admin list users":
		q := url.Values{"status": {"activated"}, "limit": {"50"}}
		if st.cursor != "" && st.pages < 5 {
			q.Set("cursor", st.cursor)
		} else {
			st.cursor, st.pages = "", 0
		}
		r := c.ListUsers(ctx, q)
		done(op, r)
		st.cursor, st.pages = nextCursor(r.Body), st.pages+1
	case "admin coverage":
		done(op, c.Coverage(ctx))
	case "enroll":
		st.enrols++
		_, _ = Enrol(ctx, c, fmt.Sprintf("mix-%s-%d-%d", runID, vu, st.enrols), false, func(name string, r Response, want ...expect) {
			done("enroll: "+name, r, want...)
		})
	}
	s.ops.Add(1)
}

func nextCursor(body []byte) string {
	var p struct {
		NextCursor string `json:"next_cursor"`
	}
	_ = json.Unmarshal(body, &p)
	return p.NextCursor
}
