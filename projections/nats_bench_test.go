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
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testkit"
	"github.com/twofactor/twofactor/internal/testnats"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/projections"
)

// busUnderTest starts the consumers on one bus, as `twofactord worker` does:
// on PostgreSQL a router over the event log; on NATS a forwarder and a router
// over JetStream (the ledgers Parallel, the projector log-ordered).
type busUnderTest struct {
	name    string
	fwd     *messaging.Forwarder
	routers []*message.Router
	done    sync.WaitGroup
}

func startBus(b *testing.B, bus string, workers int, pool *pgxpool.Pool, listener *messaging.Listener, ncfg messaging.NATSConfig, consumers func() []messaging.Consumer) *busUnderTest {
	b.Helper()
	u := &busUnderTest{name: bus}
	cfg := messaging.DefaultConfig()
	cfg.Listener = listener
	for w := 0; w < workers; w++ {
		var r *message.Router
		var err error
		if bus == "postgres" {
			r, err = messaging.NewRouter(pool, cfg, watermill.NopLogger{}, consumers())
		} else {
			nc := testnats.Connect(b, ncfg)
			r, err = messaging.NewNATSRouter(pool, cfg, ncfg, nc, watermill.NopLogger{}, consumers())
		}
		must(b, err)
		u.routers = append(u.routers, r)
	}
	if bus == "nats" {
		fcfg := messaging.ForwarderConfig()
		fcfg.Listener = listener
		var err error
		u.fwd, err = messaging.NewForwarder(pool, fcfg, ncfg, watermill.NopLogger{})
		must(b, err)
		u.done.Go(func() { _ = u.fwd.Run(ctx) })
		<-u.fwd.Running()
	}
	for _, r := range u.routers {
		u.done.Go(func() { _ = r.Run(ctx) })
		<-r.Running()
	}
	return u
}

func (u *busUnderTest) stop() {
	for _, r := range u.routers {
		_ = r.Close()
	}
	if u.fwd != nil {
		_ = u.fwd.Close()
	}
	u.done.Wait()
}

// ledgerConsumer writes one row per event, as the notifier records its
// ledger: the cheap per-event work of a fan-out consumer.
func ledgerConsumer(pool *pgxpool.Pool, name, table string, seen func(pos int64)) messaging.Consumer {
	return messaging.Consumer{Name: name, Handle: func(msg *message.Message) error {
		if _, err := pool.Exec(msg.Context(), `INSERT INTO `+table+` VALUES ($1) ON CONFLICT DO NOTHING`, msg.UUID); err != nil {
			return err
		}
		if seen != nil {
			var env struct {
				Position int64 `json:"position"`
			}
			if err := json.Unmarshal(msg.Payload, &env); err == nil {
				seen(env.Position)
			}
		}
		return nil
	}}
}

func fanoutEvents(b *testing.B) int {
	if v := os.Getenv("TWOFACTOR_BENCH_FANOUT_EVENTS"); v != "" {
		n, err := strconv.Atoi(v)
		must(b, err)
		return n
	}
	return 20_000
}

// Fan-out throughput: a backlog of N events in the log (TWOFACTOR_BENCH_FANOUT_EVENTS,
// default 20,000) is consumed by four consumer groups, the user-status projector
// and three ledger groups writing one row per event (as the notifier does), on
// the PostgreSQL bus and on the NATS bus (forwarding included: the forwarder
// starts with the consumers), with one worker and with two.
//
//	go test -run '^$' -bench BenchmarkBusFanOut -benchtime 1x -timeout 30m ./projections/
func BenchmarkBusFanOut(b *testing.B) {
	natsURL := testnats.URL(b)
	for _, bus := range []string{"postgres", "nats"} {
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("bus=%s/workers=%d", bus, workers), func(b *testing.B) {
				for b.Loop() {
					b.StopTimer()
					pool := freshPool(b)
					n := loadHistory(b, pool, fanoutEvents(b))
					groups := 3
					for g := 0; g < groups; g++ {
						_, err := pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE bench_ledger_%d (event_id TEXT PRIMARY KEY)`, g))
						must(b, err)
					}
					ncfg := testnats.Config(b, natsURL)
					lctx, cancel := context.WithCancel(ctx)
					listener := messaging.NewListener(pool, nil, messaging.EventsChannel, projections.ReadModelsChannel)
					go listener.Run(lctx) //nolint:errcheck
					for g := 0; g < groups; g++ {
						ncfg.Parallel = append(ncfg.Parallel, fmt.Sprintf("bench.ledger.%d", g))
					}
					consumers := func() []messaging.Consumer {
						cs := []messaging.Consumer{projections.NewProjector(pool, eventstore.New(pool, time.Now), projections.ProjectorOptions{}).Consumer()}
						for g := 0; g < groups; g++ {
							cs = append(cs, ledgerConsumer(pool, fmt.Sprintf("bench.ledger.%d", g), fmt.Sprintf("bench_ledger_%d", g), nil))
						}
						return cs
					}
					q := projections.NewQueries(pool, projections.QueryOptions{Listener: listener})
					h := head(b, pool)
					b.StartTimer()
					start := time.Now()
					u := startBus(b, bus, workers, pool, listener, ncfg, consumers)
					var projected, forwarded time.Duration
					var wg sync.WaitGroup
					wg.Go(func() {
						if err := q.WaitFor(ctx, h, 30*time.Minute); err != nil {
							b.Error(err)
						}
						projected = time.Since(start)
					})
					ledgers := make([]time.Duration, groups)
					for g := 0; g < groups; g++ {
						wg.Go(func() {
							for {
								var c int
								must(b, pool.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FROM bench_ledger_%d`, g)).Scan(&c))
								if c >= n {
									ledgers[g] = time.Since(start)
									return
								}
								time.Sleep(20 * time.Millisecond)
							}
						})
					}
					if u.fwd != nil {
						wg.Go(func() {
							for u.fwd.Forwarded() < int64(n) {
								time.Sleep(5 * time.Millisecond)
							}
							forwarded = time.Since(start)
						})
					}
					wg.Wait()
					total := time.Since(start)
					b.StopTimer()
					u.stop()
					cancel()
					slowest := slowestOf(ledgers)
					b.ReportMetric(float64(n)/total.Seconds(), "events/s")
					b.ReportMetric(float64(n*(groups+1))/total.Seconds(), "deliveries/s")
					b.ReportMetric(float64(n)/projected.Seconds(), "projector-events/s")
					b.ReportMetric(float64(n)/slowest.Seconds(), "ledger-events/s")
					msg := fmt.Sprintf("%s, %d worker(s): %d events to 4 groups in %v (projector %v, slowest ledger %v", bus, workers, n,
						total.Round(time.Millisecond), projected.Round(time.Millisecond), slowest.Round(time.Millisecond))
					if forwarded > 0 {
						msg += fmt.Sprintf(", forwarded to NATS in %v = %.0f events/s", forwarded.Round(time.Millisecond), float64(n)/forwarded.Seconds())
					}
					b.Log(msg + ")")
					b.StartTimer()
				}
			})
		}
	}
}

func slowestOf(ds []time.Duration) time.Duration {
	var m time.Duration
	for _, d := range ds {
		m = max(m, d)
	}
	return m
}

// Commit-to-visible lag on each bus at a steady rate of real commands (admin
// requirement and toggle changes through commands.Service over 400 users,
// TWOFACTOR_BENCH_RATE per second, default 200, for TWOFACTOR_BENCH_SECONDS,
// default 10): from the command's return (its transaction committed) until a
// read with its position succeeds (the projector), and until a ledger group
// (as the notifier) has handled the event. One worker, its listener shared
// with the reads, as in `serve`.
//
//	go test -run '^$' -bench BenchmarkBusCommitToVisible -benchtime 1x ./projections/
func BenchmarkBusCommitToVisible(b *testing.B) {
	natsURL := testnats.URL(b)
	rate, duration := 200, 10*time.Second
	if v := os.Getenv("TWOFACTOR_BENCH_RATE"); v != "" {
		r, err := strconv.Atoi(v)
		must(b, err)
		rate = r
	}
	if v := os.Getenv("TWOFACTOR_BENCH_SECONDS"); v != "" {
		s, err := strconv.Atoi(v)
		must(b, err)
		duration = time.Duration(s) * time.Second
	}
	for _, bus := range []string{"postgres", "nats"} {
		b.Run("bus="+bus, func(b *testing.B) {
			for b.Loop() {
				pool := freshPool(b)
				_, err := pool.Exec(ctx, `CREATE TABLE bench_ledger (event_id TEXT PRIMARY KEY)`)
				must(b, err)
				f := testkit.New(b, pool, nil)
				lctx, cancel := context.WithCancel(ctx)
				listener := messaging.NewListener(pool, nil, messaging.EventsChannel, projections.ReadModelsChannel)
				go listener.Run(lctx) //nolint:errcheck
				var handled sync.Map  // position → time the ledger group handled it
				ncfg := testnats.Config(b, natsURL)
				ncfg.Parallel = []string{"bench.ledger"}
				u := startBus(b, bus, 1, pool, listener, ncfg, func() []messaging.Consumer {
					return []messaging.Consumer{projections.NewProjector(pool, f.Store, projections.ProjectorOptions{}).Consumer(),
						ledgerConsumer(pool, "bench.ledger", "bench_ledger", func(pos int64) { handled.LoadOrStore(pos, time.Now()) })}
				})
				q := projections.NewQueries(pool, projections.QueryOptions{Listener: listener, Poll: 2 * time.Millisecond})

				type sample struct {
					pos       int64
					committed time.Time
				}
				var mu sync.Mutex
				var lags []time.Duration
				var samples []sample
				var failed atomic.Int64
				var wg sync.WaitGroup
				tick := time.NewTicker(time.Second / time.Duration(rate))
				end := time.Now().Add(duration)
				for i := 0; time.Now().Before(end); i++ {
					<-tick.C
					wg.Go(func() {
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
						samples = append(samples, sample{res.Position, committed})
						mu.Unlock()
					})
				}
				tick.Stop()
				wg.Wait()
				// The ledger lags, once every event has been handled.
				var ledger []time.Duration
				deadline := time.Now().Add(30 * time.Second)
				for _, s := range samples {
					for {
						if at, ok := handled.Load(s.pos); ok {
							ledger = append(ledger, at.(time.Time).Sub(s.committed))
							break
						}
						if time.Now().After(deadline) {
							b.Fatalf("the ledger group never handled position %d", s.pos)
						}
						time.Sleep(time.Millisecond)
					}
				}
				u.stop()
				cancel()
				if len(lags) == 0 {
					b.Fatal("no samples")
				}
				p := percentiles(lags)
				l := percentiles(ledger)
				b.ReportMetric(ms(p(0.50)), "p50-ms")
				b.ReportMetric(ms(p(0.99)), "p99-ms")
				b.ReportMetric(ms(p(1)), "max-ms")
				b.ReportMetric(ms(l(0.50)), "ledger-p50-ms")
				b.ReportMetric(ms(l(0.99)), "ledger-p99-ms")
				b.Logf("%s: %d commands at %d/s (%d failed or not visible in 10 s); read model p50 %v p90 %v p99 %v max %v; ledger group p50 %v p90 %v p99 %v max %v",
					bus, len(lags), rate, failed.Load(), p(0.5), p(0.9), p(0.99), p(1), l(0.5), l(0.9), l(0.99), l(1))
			}
		})
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// percentiles sorts ds and returns its quantile function (rounded to 10 µs).
func percentiles(ds []time.Duration) func(float64) time.Duration {
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return func(q float64) time.Duration {
		return ds[min(len(ds)-1, int(q*float64(len(ds))))].Round(10 * time.Microsecond)
	}
}
