package load

import (
	"testing"
	"time"
)

// TestTargetsFromOneRun checks the verdicts and the ratios they rest on with
// the figures issue 13 quotes (7,000 minimal transactions/s at 0.18 ms of
// PostgreSQL CPU each; a login at 1.2 ms server + 1.0 ms PostgreSQL).
func TestTargetsFromOneRun(t *testing.T) {
	wall := 10 * time.Second
	minimal := &Ceiling{TPS: 7000, Usage: Usage{Wall: wall, Postgres: time.Duration(7000*10) * 180 * time.Microsecond}}
	verify := Result{Name: ScenarioVerify, Concurrency: 16, Duration: wall, Requests: 6400, OK: 6400,
		Latency: LatencySummary{Count: 6400, P99: 25 * time.Millisecond},
		Usage: Usage{Wall: wall, Server: 6400 * 1200 * time.Microsecond, Postgres: 6400 * time.Millisecond, PeakRSS: 90 << 20,
			DB: &DBWork{Transactions: 6400 * 22 / 10}}}
	mixed := verify
	mixed.Name, mixed.OK = ScenarioMixed, 2200*10
	rep := &Report{Minimal: minimal, Scenarios: []Result{verify, mixed},
		Lag:     &LagResult{Rate: 200, Achieved: 199, Lag: LatencySummary{Count: 4000, P99: 9 * time.Millisecond}},
		Idle:    &IdleResult{Duration: 11 * time.Second, Transactions: 44, Consumers: 2, PerSecondPerConsumer: 2, Usage: Usage{DB: &DBWork{}}},
		Rebuild: &Rebuild{EventsPerSecond: 160_000}}
	// In CheckTargets' order: 640 logins/s are 9 % of 7,000; 12.2× the CPU;
	// p99 25 ms; lag 9 ms; 2 idle transactions/s per consumer; 160,000
	// events/s; mixed 2,200 requests/s are 31 %; 90 MB; no growth measured.
	want := []string{Missed, Missed, Missed, Met, Missed, Met, Met, Met, NotMeasured}
	got := rep.CheckTargets()
	if len(got) != len(want) {
		t.Fatalf("%d targets: %+v", len(got), got)
	}
	for i, x := range got {
		if x.Verdict != want[i] {
			t.Errorf("%s: %s (%s), want %s", x.Target, x.Verdict, x.Result, want[i])
		}
	}
	if r := rep.cpuRatio(verify); r < 12.1 || r > 12.3 {
		t.Errorf("CPU ratio %.2f, want (1.2 + 1.0) / 0.18 = 12.2", r)
	}
	if x := verify.TransactionsPerRequest(); x != 2.2 {
		t.Errorf("transactions per login %.2f", x)
	}
}
