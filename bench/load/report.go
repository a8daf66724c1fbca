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

// WriteText prints the report as Markdown tables.
func (r *Report) WriteText(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("twofactor-bench: %s, %d virtual users, %d enrolled users, API %s", r.Started.Format(time.RFC3339), r.Concurrency, r.Users, r.API)
	p("")
	paired := len(r.Scenarios) > 0 && r.Scenarios[0].Ceiling != nil
	ceilingHead, ceilingRule := "", ""
	if paired {
		ceilingHead, ceilingRule = " paired ceiling tps |", "--:|"
	}
	p("| scenario | requests | req/s | ops/s |%s vs ceiling | p50 ms | p95 ms | p99 ms | max ms | unexpected errors | server CPU ms/req | cores: server / postgres / tool (machine) | server peak RSS MB |", ceilingHead)
	p("|---|--:|--:|--:|%s--:|--:|--:|--:|--:|--:|--:|---|--:|", ceilingRule)
	var ceiling float64
	if c := r.Ceiling; c != nil {
		ceiling = c.TPS
		n := float64(c.Latency.Count)
		cell := ""
		if paired {
			cell = " – |"
		}
		p("| ceiling: pgbench `bench/command.sql` | %s | %s | %s |%s 100 %% | %s | %s | %s | %s | %d | – | – / %s / – (%s) | – |",
			thousands(n), thousands(c.TPS), thousands(c.TPS), cell, ms(c.Latency.P50), ms(c.Latency.P95), ms(c.Latency.P99), ms(c.Latency.Max), c.Failed,
			cores(c.Usage.Postgres, c.Usage.Wall), cores(c.Usage.Machine, c.Usage.Wall))
	}
	for _, s := range r.Scenarios {
		ratio, cell := "–", ""
		base := ceiling
		if paired {
			cell = " – |"
			if s.Ceiling != nil {
				base = s.Ceiling.TPS
				cell = " " + thousands(base) + " |"
			}
		}
		if base > 0 {
			ratio = fmt.Sprintf("%.0f %%", 100*s.RequestRate()/base)
		}
		perReq := "–"
		if s.Requests > 0 && s.Usage.Server > 0 {
			perReq = fmt.Sprintf("%.2f", float64(s.Usage.Server)/float64(time.Millisecond)/float64(s.Requests))
		}
		p("| %s | %s | %s | %s |%s %s | %s | %s | %s | %s | %d | %s | %s / %s / %s (%s) | %s |",
			s.Name, thousands(float64(s.Requests)), thousands(s.RequestRate()), thousands(s.OpRate()), cell, ratio,
			ms(s.Latency.P50), ms(s.Latency.P95), ms(s.Latency.P99), ms(s.Latency.Max), s.ErrorCount(), perReq,
			cores(s.Usage.Server, s.Usage.Wall), cores(s.Usage.Postgres, s.Usage.Wall), cores(s.Usage.Tool, s.Usage.Wall),
			cores(s.Usage.Machine, s.Usage.Wall), mb(s.Usage.PeakRSS))
	}
	p("")
	if paired {
		p("vs ceiling: the scenario's requests per second (each a command with one transaction, except the admin reads of mixed) over the transactions per second of the pgbench run made right before it, at the same concurrency (the first row is the run before everything).")
	} else {
		p("vs ceiling: the scenario's requests per second (each a command with one transaction, except the admin reads of mixed) over pgbench's transactions per second at the same concurrency.")
	}
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
		if c := r.Ceiling; c != nil {
			row("ceiling (per pgbench transaction)", c.Usage.DB, c.TPS*c.Usage.Wall.Seconds())
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
		p("A transaction of another database on the same PostgreSQL was open for over 50 ms in %.0f %% of the 100 ms samples (the oldest: %v); outbox rows wait for it (watermill-sql delivers a row once its transaction is older than every running one).",
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
	if len(r.Extra) > 0 {
		p("")
		p("| other measurement | result | target |")
		p("|---|---|---|")
		for _, e := range r.Extra {
			p("| %s | %s | %s |", e.Name, e.Value, e.Target)
		}
	}
}
