package load

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"time"
)

func cores(cpu, wall time.Duration) string {
	if wall <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", cpu.Seconds()/wall.Seconds())
}

func mb(b int64) string {
	if b <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", float64(b)/(1<<20))
}

func thousands(n float64) string {
	s := fmt.Sprintf("%.0f", n)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[0] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// cpuMS formats a CPU time per operation in milliseconds, "–" when unknown.
func cpuMS(d time.Duration) string {
	if d <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond))
}

// minimalFor is the minimal ceiling a scenario is compared with: the run
// right before it when paired, otherwise the first.
func (r *Report) minimalFor(s Result) *Ceiling {
	if s.Minimal != nil {
		return s.Minimal
	}
	return r.Minimal
}

// ownFor is the own-shape ceiling a scenario is compared with.
func (r *Report) ownFor(s Result) *Ceiling {
	if s.Ceiling != nil {
		return s.Ceiling
	}
	return r.Ceiling
}

// cpuRatio is (server + PostgreSQL CPU per request) over the minimal
// transaction's PostgreSQL CPU; 0 when either is unknown.
func (r *Report) cpuRatio(s Result) float64 {
	server, pg := s.CPUPerRequest()
	base := r.minimalFor(s).PGCPUPerTxn()
	if base <= 0 || server+pg <= 0 {
		return 0
	}
	return float64(server+pg) / float64(base)
}

// vsCeiling is a scenario's request rate over a ceiling's, 0 when unknown.
func vsCeiling(s Result, c *Ceiling) float64 {
	if c == nil || c.TPS <= 0 {
		return 0
	}
	return s.RequestRate() / c.TPS
}

func pct(f float64) string {
	if f <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f %%", 100*f)
}

func tps(c *Ceiling) string {
	if c == nil {
		return "–"
	}
	return thousands(c.TPS)
}

// WriteText prints the report as Markdown tables.
func (r *Report) WriteText(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("twofactor-bench: %s, %d virtual users, %d enrolled users, API %s", r.Started.Format(time.RFC3339), r.Concurrency, r.Users, r.API)
	p("")
	p("| scenario | requests | req/s | ops/s | minimal ceiling tps | vs minimal | own-shape ceiling tps | vs own shape | p50 ms | p95 ms | p99 ms | max ms | unexpected errors | CPU ms/request: server / postgres | × minimal txn CPU (of its ms) | PG txns/request | cores: server / postgres / tool (machine) | server peak RSS MB |")
	p("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|")
	ceilingRow := func(name string, c *Ceiling) {
		if c == nil {
			return
		}
		n := float64(c.Latency.Count)
		perTxn := "–"
		if c.Usage.DB != nil && n > 0 {
			perTxn = fmt.Sprintf("%.2f", float64(c.Usage.DB.Transactions)/n)
		}
		ratio := "–"
		if r.Minimal != nil && r.Minimal.PGCPUPerTxn() > 0 && c.PGCPUPerTxn() > 0 {
			ratio = fmt.Sprintf("%.2f", float64(c.PGCPUPerTxn())/float64(r.Minimal.PGCPUPerTxn()))
		}
		p("| %s | %s | %s | %s | – | – | – | – | %s | %s | %s | %s | %d | – / %s | %s | %s | – / %s / – (%s) | – |",
			name, thousands(n), thousands(c.TPS), thousands(c.TPS), ms(c.Latency.P50), ms(c.Latency.P95), ms(c.Latency.P99), ms(c.Latency.Max), c.Failed,
			cpuMS(c.PGCPUPerTxn()), ratio, perTxn, cores(c.Usage.Postgres, c.Usage.Wall), cores(c.Usage.Machine, c.Usage.Wall))
	}
	ceilingRow("minimal ceiling: pgbench `bench/minimal.sql`", r.Minimal)
	ceilingRow("own-shape ceiling: pgbench `bench/command.sql`", r.Ceiling)
	for _, s := range r.Scenarios {
		server, pg := s.CPUPerRequest()
		ratio := "–"
		if x := r.cpuRatio(s); x > 0 {
			ratio = fmt.Sprintf("%.1f (of %s)", x, cpuMS(r.minimalFor(s).PGCPUPerTxn()))
		}
		txns := "–"
		if x := s.TransactionsPerRequest(); x >= 0 {
			txns = fmt.Sprintf("%.2f", x)
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s / %s | %s | %s | %s / %s / %s (%s) | %s |",
			s.Name, thousands(float64(s.Requests)), thousands(s.RequestRate()), thousands(s.OpRate()),
			tps(r.minimalFor(s)), pct(vsCeiling(s, r.minimalFor(s))), tps(r.ownFor(s)), pct(vsCeiling(s, r.ownFor(s))),
			ms(s.Latency.P50), ms(s.Latency.P95), ms(s.Latency.P99), ms(s.Latency.Max), s.ErrorCount(), cpuMS(server), cpuMS(pg), ratio, txns,
			cores(s.Usage.Server, s.Usage.Wall), cores(s.Usage.Postgres, s.Usage.Wall), cores(s.Usage.Tool, s.Usage.Wall),
			cores(s.Usage.Machine, s.Usage.Wall), mb(s.Usage.PeakRSS))
	}
	p("")
	paired := len(r.Scenarios) > 0 && r.Scenarios[0].Minimal != nil
	if paired {
		p("vs minimal, vs own shape: the scenario's requests per second over the transactions per second of the pgbench run of that script made right before it, at the same concurrency (the ceiling rows are the runs before everything).")
	} else {
		p("vs minimal, vs own shape: the scenario's requests per second over the transactions per second of pgbench with that script at the same concurrency, run before everything.")
	}
	p("CPU ms/request: the server process's CPU time and every PostgreSQL process's (/proc) over the scenario, per request (a login in verify and backup); for a ceiling, PostgreSQL's per transaction. × minimal txn CPU: (server + PostgreSQL CPU per request) over the PostgreSQL CPU of one transaction of the minimal ceiling it is compared with (in brackets, in ms). PG txns/request: xact_commit + xact_rollback of the server's database (pg_stat_database) over the scenario, per request, the consumers' transactions included.")
	p("Setup: %d users enrolled (3 requests each) in %v; unexpected errors: %s.", r.Users, r.Setup.Duration.Round(time.Millisecond), FormatCounts(r.Setup.Errors))
	for _, s := range r.Scenarios {
		if len(s.Errors) > 0 {
			p("Errors in %s: %s.", s.Name, FormatCounts(s.Errors))
		}
		if len(s.Expected) > 0 {
			p("Expected failures in %s: %s.", s.Name, FormatCounts(s.Expected))
		}
		if s.PoolWait > 0 {
			p("In %s the virtual users waited %v in all for a usable TOTP step (every enrolled user had logged in at every step of the window).", s.Name, s.PoolWait.Round(time.Millisecond))
		}
		if !s.Usage.PeakReset && s.Usage.PeakRSS > 0 {
			p("Peak RSS in %s is since the server started (clear_refs not writable).", s.Name)
		}
	}
	if r.Ceiling != nil && r.Ceiling.Usage.DB != nil || len(r.Scenarios) > 0 && r.Scenarios[0].Usage.DB != nil {
		p("")
		p("PostgreSQL's work per request (pg_stat_database of the database, including the projector's and the notifier's work it caused):")
		p("")
		p("| scenario | transactions | rows returned | rows fetched | rows inserted | rows updated | rows deleted |")
		p("|---|--:|--:|--:|--:|--:|--:|")
		row := func(name string, w *DBWork, n float64) {
			if w == nil || n <= 0 {
				return
			}
			p("| %s | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f |", name, float64(w.Transactions)/n, float64(w.RowsReturned)/n,
				float64(w.RowsFetched)/n, float64(w.RowsInserted)/n, float64(w.RowsUpdated)/n, float64(w.RowsDeleted)/n)
		}
		if c := r.Minimal; c != nil {
			row("minimal ceiling (per pgbench transaction)", c.Usage.DB, float64(c.Latency.Count))
		}
		if c := r.Ceiling; c != nil {
			row("own-shape ceiling (per pgbench transaction)", c.Usage.DB, float64(c.Latency.Count))
		}
		for _, s := range r.Scenarios {
			row(s.Name, s.Usage.DB, float64(s.Requests))
		}
	}
	for _, s := range r.Scenarios {
		if s.Name != ScenarioMixed {
			continue
		}
		p("")
		p("Mixed, by operation:")
		p("")
		p("| operation | requests | p50 ms | p99 ms | max ms |")
		p("|---|--:|--:|--:|--:|")
		ops := make([]string, 0, len(s.ByOp))
		for k := range s.ByOp {
			ops = append(ops, k)
		}
		sort.Slice(ops, func(i, j int) bool { return s.ByOp[ops[i]].Count > s.ByOp[ops[j]].Count })
		for _, k := range ops {
			l := s.ByOp[k]
			p("| %s | %s | %s | %s | %s |", k, thousands(float64(l.Count)), ms(l.P50), ms(l.P99), ms(l.Max))
		}
	}
	if l := r.Lag; l != nil {
		p("")
		p("Read side: %d TOTP logins at %d/s (achieved %.0f/s) for %v; after each, an admin's GET /v1/users?limit=1&min_position=<its position>.",
			l.Commands, l.Rate, l.Achieved, l.Duration.Round(time.Second))
		p("")
		p("| commit-to-visible lag | p50 ms | p95 ms | p99 ms | max ms |")
		p("|---|--:|--:|--:|--:|")
		p("| command answered → read shows it | %s | %s | %s | %s |", ms(l.Lag.P50), ms(l.Lag.P95), ms(l.Lag.P99), ms(l.Lag.Max))
		p("| of which the read's own round trip (no wait) | %s | %s | %s | %s |", ms(l.Read.P50), ms(l.Read.P95), ms(l.Read.P99), ms(l.Read.Max))
		p("| the TOTP login itself, at this steady rate | %s | %s | %s | %s |", ms(l.Command.P50), ms(l.Command.P95), ms(l.Command.P99), ms(l.Command.Max))
		p("")
		p("Not visible within the server's wait: %s; command errors: %s; cores: server %s, postgres %s, machine %s.",
			FormatCounts(l.NotVisible), FormatCounts(l.Errors), cores(l.Usage.Server, l.Usage.Wall), cores(l.Usage.Postgres, l.Usage.Wall), cores(l.Usage.Machine, l.Usage.Wall))
		p("A transaction of another database on the same PostgreSQL was open for over 50 ms in %.0f %% of the 100 ms samples (the oldest: %v); events wait for it (watermill-sql delivers an event once its transaction is older than every running one).",
			100*l.Held, l.HeldMax.Round(time.Millisecond))
	}
	if n := r.Notifier; n != nil {
		p("")
		p("Notifier: %d backup logins while the SMTP sink held connections for %v; after the release %d messages (%d of the %d \"backup code used\") arrived in %v: %.0f messages/s to the loopback SMTP server (server %s cores, postgres %s).",
			n.Logins, n.Held.Round(100*time.Millisecond), n.Delivered, n.Owed, n.Logins, n.Drain.Round(time.Millisecond), n.Rate,
			cores(n.Usage.Server, n.Usage.Wall), cores(n.Usage.Postgres, n.Usage.Wall))
	}
	if len(r.Growth) > 0 {
		p("")
		p("Growth: TOTP logins through HTTP, one at a time, by the number of events in the user's stream (%d past logins appended directly in %v).",
			r.GrowthAppended, r.GrowthAppend.Round(time.Millisecond))
		p("")
		p("| events in stream | first login (no snapshot yet) p50 ms | max ms | logins after | p50 ms | p95 ms | max ms |")
		p("|--:|--:|--:|--:|--:|--:|--:|")
		for _, g := range r.Growth {
			p("| %s | %s | %s | %d | %s | %s | %s |", thousands(float64(g.Length)), ms(g.First.P50), ms(g.First.Max), g.Steady.Count, ms(g.Steady.P50), ms(g.Steady.P95), ms(g.Steady.Max))
		}
		if first, last := r.Growth[0], r.Growth[len(r.Growth)-1]; first.Steady.P50 > 0 {
			p("")
			p("p50 at %s events / p50 at %s events: %.2f×.", thousands(float64(last.Length)), thousands(float64(first.Length)), float64(last.Steady.P50)/float64(first.Steady.P50))
		}
	}
	if i := r.Idle; i != nil {
		p("")
		p("Idle: %d transactions of the server's database in %v without a request: %.2f per second per consumer (%d consumers: %s); server %s cores, postgres %s.",
			i.Transactions, i.Duration.Round(100*time.Millisecond), i.PerSecondPerConsumer, i.Consumers, i.ConsumersFrom,
			cores(i.Usage.Server, i.Usage.Wall), cores(i.Usage.Postgres, i.Usage.Wall))
	}
	if r.Rebuild != nil {
		p("")
		p("Rebuild of user_status: %s events/s (%s).", thousands(r.Rebuild.EventsPerSecond), r.Rebuild.Detail)
	}
	if t := r.CheckTargets(); len(t) > 0 {
		p("")
		p("Targets (issue 13):")
		p("")
		p("| target | result | verdict |")
		p("|---|---|---|")
		for _, x := range t {
			v := x.Verdict
			if strings.HasPrefix(v, Missed) {
				v = "**" + Missed + "**" + strings.TrimPrefix(v, Missed)
			}
			p("| %s | %s | %s |", x.Target, x.Result, v)
		}
	}
	if len(r.Extra) > 0 {
		p("")
		p("| other measurement | result | target |")
		p("|---|---|---|")
		for _, e := range r.Extra {
			p("| %s | %s | %s |", e.Name, e.Value, e.Target)
		}
	}
}

// Target is one of issue 13's targets with what this run measured.
type Target struct {
	Target  string `json:"target"`
	Result  string `json:"result"`
	Verdict string `json:"verdict"`
}

// Verdicts.
const (
	Met         = "met"
	Missed      = "missed"
	NotMeasured = "not measured"
)

func verdict(ok bool) string {
	if ok {
		return Met
	}
	return Missed
}

func (r *Report) scenario(name string) (Result, bool) {
	for _, s := range r.Scenarios {
		if s.Name == name {
			return s, true
		}
	}
	return Result{}, false
}

// Targets compares the run with issue 13's targets; every ratio comes from
// this one run.
func (r *Report) CheckTargets() []Target {
	var out []Target
	// asSpecified is false when the run's conditions are not the target's
	// (a short validation run): the verdict then says so.
	add := func(target, result string, ok, measured, asSpecified bool) {
		v := NotMeasured
		switch {
		case !measured:
			result = "–"
		case asSpecified:
			v = verdict(ok)
		default:
			v = verdict(ok) + ", not under the target's conditions"
		}
		out = append(out, Target{Target: target, Result: result, Verdict: v})
	}
	verify, haveVerify := r.scenario(ScenarioVerify)
	share := vsCeiling(verify, r.minimalFor(verify))
	add("`verify` ≥ 30 % of the minimal ceiling", fmt.Sprintf("%s (%s logins/s against %s tps)", pct(share), thousands(verify.RequestRate()), tps(r.minimalFor(verify))),
		share >= 0.30, haveVerify && share > 0, verify.Concurrency == 16)
	ratio := r.cpuRatio(verify)
	server, pg := verify.CPUPerRequest()
	add("`verify` CPU per login (server + PostgreSQL) ≤ 4× the minimal transaction's", fmt.Sprintf("%.1f× (%s + %s ms against %s ms)", ratio, cpuMS(server), cpuMS(pg), cpuMS(r.minimalFor(verify).PGCPUPerTxn())),
		ratio <= 4, haveVerify && ratio > 0, verify.Concurrency == 16)
	add("`verify` p99 ≤ 20 ms at 16 virtual users", fmt.Sprintf("%s ms at %d virtual users", ms(verify.Latency.P99), verify.Concurrency),
		verify.Latency.P99 <= 20*time.Millisecond, haveVerify && verify.Latency.Count > 0, verify.Concurrency == 16)
	if l := r.Lag; l != nil {
		add("commit-to-visible p99 ≤ 10 ms at 200 writes/s", fmt.Sprintf("%s ms at %d/s (achieved %.0f/s)", ms(l.Lag.P99), l.Rate, l.Achieved),
			l.Lag.P99 <= 10*time.Millisecond && len(l.NotVisible) == 0, l.Lag.Count > 0, l.Rate == 200 && l.Achieved >= 190)
	} else {
		add("commit-to-visible p99 ≤ 10 ms at 200 writes/s", "", false, false, false)
	}
	if i := r.Idle; i != nil {
		add("≤ 1 idle PostgreSQL transaction per second per consumer", fmt.Sprintf("%.2f (%d transactions in %v, %d consumers)", i.PerSecondPerConsumer, i.Transactions, i.Duration.Round(100*time.Millisecond), i.Consumers),
			i.PerSecondPerConsumer <= 1, i.Usage.DB != nil, i.Duration >= 10*time.Second)
	} else {
		add("≤ 1 idle PostgreSQL transaction per second per consumer", "", false, false, false)
	}
	if b := r.Rebuild; b != nil {
		add("rebuild of `user_status` ≥ 150,000 events/s", thousands(b.EventsPerSecond)+" events/s", b.EventsPerSecond >= 150_000, b.EventsPerSecond > 0, true)
	} else {
		add("rebuild of `user_status` ≥ 150,000 events/s", "", false, false, false)
	}
	mixed, haveMixed := r.scenario(ScenarioMixed)
	share = vsCeiling(mixed, r.minimalFor(mixed))
	add("`mixed` ≥ 30 % of the minimal ceiling", fmt.Sprintf("%s (%s requests/s)", pct(share), thousands(mixed.RequestRate())), share >= 0.30, haveMixed && share > 0, mixed.Concurrency == 16)
	var peak int64
	var peakIn string
	for _, s := range r.Scenarios {
		if s.Usage.PeakRSS > peak {
			peak, peakIn = s.Usage.PeakRSS, s.Name
		}
	}
	add("`serve` RSS < 100 MB", fmt.Sprintf("%s MB peak (in %s)", mb(peak), peakIn), peak < 100<<20, peak > 0, true)
	if len(r.Growth) > 1 && r.Growth[0].Steady.P50 > 0 {
		first, last := r.Growth[0], r.Growth[len(r.Growth)-1]
		x := float64(last.Steady.P50) / float64(first.Steady.P50)
		add(fmt.Sprintf("growth flat from %s to %s events per user (p50 within 1.5×)", thousands(float64(first.Length)), thousands(float64(last.Length))),
			fmt.Sprintf("%.2f×", x), x <= 1.5, first.Steady.Count > 0 && last.Steady.Count > 0, first.Length <= 10 && last.Length >= 10_000)
	} else {
		add("growth flat from 10 to 10,000 events per user (p50 within 1.5×)", "", false, false, false)
	}
	return out
}
