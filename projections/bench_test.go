package projections_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testkit"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/projections"
)

// benchEvents is the history size of the throughput benchmarks:
// TWOFACTOR_BENCH_EVENTS (BENCHMARKS.md uses 1,000,000), default 100,000.
func benchEvents(b *testing.B) int {
	if v := os.Getenv("TWOFACTOR_BENCH_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	return 100_000
}

// bulkLoader writes a simulated history fast, for benchmarks only: per
// transaction of many steps it COPYs the event rows (with their hash chain,
// computed with eventstore.Hash as Append does). The rows are those Append
// would write; only the grouping into transactions differs.
type bulkLoader struct {
	pool *pgxpool.Pool
	prev map[string][]byte
}

func (l *bulkLoader) load(b testing.TB, steps []step) {
	b.Helper()
	if l.prev == nil {
		l.prev = map[string][]byte{}
	}
	err := pgx.BeginFunc(ctx, l.pool, func(tx pgx.Tx) error {
		var rows [][]any
		for _, st := range steps {
			meta := eventstore.Metadata{Actor: st.actor, TenantID: st.tenantID, RequestID: "bench", OccurredAt: st.at}
			rawMeta, err := json.Marshal(meta)
			if err != nil {
				return err
			}
			prev, ok := l.prev[st.streamID]
			if !ok {
				prev = eventstore.GenesisHash
			}
			for i, e := range st.events {
				payload, err := eventstore.Encode(e)
				if err != nil {
					return err
				}
				id, err := uuid.NewV7()
				if err != nil {
					return err
				}
				r := &eventstore.Record{EventID: id.String(), TenantID: st.tenantID, StreamID: st.streamID,
					Version: st.expected + int64(i) + 1, Type: e.EventType(), SchemaVersion: eventstore.SchemaVersion,
					Payload: payload, RawMetadata: rawMeta, RecordedAt: st.at.UTC().Truncate(time.Microsecond), PrevHash: prev}
				r.Hash = eventstore.Hash(prev, r)
				prev = r.Hash
				rows = append(rows, []any{r.EventID, r.TenantID, r.StreamID, r.Version, r.Type, int32(r.SchemaVersion),
					string(r.Payload), string(r.RawMetadata), r.RecordedAt, r.PrevHash, r.Hash})
			}
			l.prev[st.streamID] = prev
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"events"}, []string{"event_id", "tenant_id", "stream_id", "stream_version",
			"event_type", "schema_version", "payload", "metadata", "recorded_at", "prev_hash", "hash"}, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		b.Fatalf("bulk load: %v", err)
	}
}

// loadHistory writes about n simulated events (users: one per 20 events).
func loadHistory(b *testing.B, pool *pgxpool.Pool, n int) int {
	b.Helper()
	start := time.Now()
	s := newSim(b, 77, 10, max(n/20, 100))
	s.policyEvery = 100_000 // a tenant changes its policy rarely
	l := &bulkLoader{pool: pool}
	total := 0
	for total < n {
		steps := s.steps(8000)
		l.load(b, steps)
		total += countEvents(steps)
	}
	// A log being rebuilt is mostly old: vacuumed, its visibility map set.
	_, err := pool.Exec(ctx, `VACUUM ANALYZE`)
	must(b, err)
	b.Logf("loaded %d events over %d users in %v", total, len(s.users), time.Since(start).Round(time.Millisecond))
	return total
}

// Rebuild of the whole log: read with eventstore.ReadAll in batches, folded in
// memory with the domain, COPYed into shadow tables, swapped in.
//
//	TWOFACTOR_BENCH_EVENTS=1000000 go test -run '^$' -bench BenchmarkRebuild -benchtime 1x -timeout 30m ./projections/
func BenchmarkRebuild(b *testing.B) {
	pool := freshPool(b)
	n := loadHistory(b, pool, benchEvents(b))
	store := eventstore.New(pool, time.Now)
	b.ResetTimer()
	for b.Loop() {
		cpu := processCPU()
		stats, err := projections.Rebuild(ctx, pool, store, projections.UserStatusModel, projections.RebuildOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// The Go side's CPU time: on a shared machine, steadier than the wall clock.
		b.ReportMetric((processCPU() - cpu).Seconds(), "go-cpu-s")
		b.ReportMetric(stats.EventsPerSecond(), "events/s")
		b.ReportMetric(float64(stats.Events)/stats.Fold.Seconds(), "fold-events/s")
		b.ReportMetric(stats.Write.Seconds(), "write-s")
		b.Logf("%d events (%d loaded), %d users: fold %v, write %v, catch-up %v, swap %v, total %v",
			stats.Events, n, stats.Users, stats.Fold.Round(time.Millisecond), stats.Write.Round(time.Millisecond),
			stats.CatchUp.Round(time.Millisecond), stats.Swap.Round(time.Millisecond), stats.Total.Round(time.Millisecond))
	}
}

// processCPU is the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// One live projector catching up with the whole log through a real watermill
// router, by subscriber batch size.
//
//	TWOFACTOR_BENCH_EVENTS=1000000 go test -run '^$' -bench BenchmarkLiveProjector -benchtime 1x -timeout 30m ./projections/
func BenchmarkLiveProjector(b *testing.B) {
	pool := freshPool(b)
	n := loadHistory(b, pool, benchEvents(b))
	h := head(b, pool)
	for _, batch := range []int{100, 250, 500, 1000} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				_, err := pool.Exec(ctx, `TRUNCATE user_status, user_status_state, tenant_policies, tenant_coverage;
					UPDATE read_model_checkpoints SET transaction_id = '0', position = 0, generation = generation + 1`)
				must(b, err)
				cfg := messaging.DefaultConfig()
				cfg.BatchSize = batch
				group := fmt.Sprintf("bench.%d.%d", batch, i)
				p := projections.NewProjector(pool, eventstore.New(pool, time.Now), projections.ProjectorOptions{Group: group})
				r, err := messaging.NewRouter(pool, cfg, watermill.NopLogger{}, []messaging.Consumer{p.Consumer()})
				must(b, err)
				q := projections.NewQueries(pool, projections.QueryOptions{})
				b.StartTimer()
				start := time.Now()
				done := make(chan struct{})
				go func() { defer close(done); _ = r.Run(ctx) }()
				if err := q.WaitFor(ctx, h, 30*time.Minute); err != nil {
					b.Fatal(err)
				}
				d := time.Since(start)
				b.StopTimer()
				must(b, r.Close())
				<-done
				b.ReportMetric(float64(n)/d.Seconds(), "events/s")
				b.Logf("batch %d: %d events in %v", batch, n, d.Round(time.Millisecond))
				b.StartTimer()
			}
		})
	}
}

// Commit-to-visible lag at a steady rate of real commands (admin requirement
// and toggle changes through commands.Service, 200 per second over 400 users):
// from the command's return (its transaction committed) until a read with its
// position succeeds. A second consumer group writing one row per event (as the
// notifier does) runs alongside, as in `serve`.
//
//	go test -run '^$' -bench BenchmarkCommitToVisible -benchtime 1x ./projections/
func BenchmarkCommitToVisible(b *testing.B) {
	setups := []struct {
		name     string
		poll     time.Duration
		listener bool
	}{
		{"watermill-default-poll-1s", time.Second, false},
		{"poll-50ms", 50 * time.Millisecond, false},
		{"poll-10ms", 10 * time.Millisecond, false},
		{"listen-notify+poll-1s", time.Second, true},
	}
	rate := 200
	duration := 10 * time.Second
	if v := os.Getenv("TWOFACTOR_BENCH_SECONDS"); v != "" {
		s, err := strconv.Atoi(v)
		must(b, err)
		duration = time.Duration(s) * time.Second
	}
	for _, setup := range setups {
		b.Run(setup.name, func(b *testing.B) {
			for b.Loop() {
				pool := freshPool(b)
				_, err := pool.Exec(ctx, `CREATE TABLE bench_ledger (event_id TEXT PRIMARY KEY)`)
				must(b, err)
				f := testkit.New(b, pool, nil)
				lctx, cancel := context.WithCancel(ctx)
				defer cancel()
				var listener *messaging.Listener
				cfg := messaging.DefaultConfig()
				cfg.PollInterval = setup.poll
				if setup.listener {
					listener = messaging.NewListener(pool, nil, messaging.EventsChannel, projections.ReadModelsChannel)
					go listener.Run(lctx) //nolint:errcheck
					cfg.Listener = listener
				} else {
					// Plain polling, as watermill-sql does by default.
					cfg.Backoff = wsql.NewDefaultBackoffManager(setup.poll, time.Second)
				}
				p := projections.NewProjector(pool, f.Store, projections.ProjectorOptions{})
				ledger := messaging.Consumer{Name: "bench.ledger", Handle: func(msg *message.Message) error {
					_, err := pool.Exec(msg.Context(), `INSERT INTO bench_ledger VALUES ($1) ON CONFLICT DO NOTHING`, msg.UUID)
					return err
				}}
				consumers := []messaging.Consumer{p.Consumer(), ledger}
				if os.Getenv("TWOFACTOR_BENCH_PROJECTOR_ONLY") != "" {
					consumers = consumers[:1]
				}
				r, err := messaging.NewRouter(pool, cfg, watermill.NopLogger{}, consumers)
				must(b, err)
				done := make(chan struct{})
				go func() { defer close(done); _ = r.Run(lctx) }()
				<-r.Running()
				q := projections.NewQueries(pool, projections.QueryOptions{Listener: listener})

				var mu sync.Mutex
				var lags []time.Duration
				var failed atomic.Int64
				var wg sync.WaitGroup
				tick := time.NewTicker(time.Second / time.Duration(rate))
				end := time.Now().Add(duration)
				for i := 0; time.Now().Before(end); i++ {
					<-tick.C
					wg.Add(1)
					go func(i int) {
						defer wg.Done()
						user := fmt.Sprintf("user-%03d", i%400)
						var res commands.Result
						var err error
						if i%2 == 0 {
							res, err = f.Svc.RequireTwoFactor(ctx, testkit.Admin, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: user, Required: (i/400)%2 == 0})
						} else {
							res, err = f.Svc.SetTogglePermission(ctx, testkit.Admin, commands.SetTogglePermission{TenantID: f.Tenant, UserID: user, CanToggle: (i/400)%2 == 1})
						}
						if err != nil {
							failed.Add(1)
							return
						}
						committed := time.Now()
						if err := q.WaitFor(ctx, res.Position, 10*time.Second); err != nil {
							failed.Add(1)
							return
						}
						mu.Lock()
						lags = append(lags, time.Since(committed))
						mu.Unlock()
					}(i)
				}
				tick.Stop()
				wg.Wait()
				cancel()
				_ = r.Close()
				<-done
				sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
				if len(lags) == 0 {
					b.Fatal("no samples")
				}
				pct := func(p float64) time.Duration { return lags[min(len(lags)-1, int(p*float64(len(lags))))] }
				b.ReportMetric(float64(pct(0.50).Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(pct(0.99).Microseconds())/1000, "p99-ms")
				b.ReportMetric(float64(lags[len(lags)-1].Microseconds())/1000, "max-ms")
				b.Logf("%s: %d commands (%d failed or not visible in 10 s), p50 %v p90 %v p99 %v max %v", setup.name, len(lags), failed.Load(),
					pct(0.5).Round(10*time.Microsecond), pct(0.9).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), lags[len(lags)-1].Round(10*time.Microsecond))
			}
		})
	}
}
