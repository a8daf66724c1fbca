package load

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// LagResult is commit-to-visible lag under a steady rate of commands.
type LagResult struct {
	Rate     int           `json:"rate_per_second"`
	Duration time.Duration `json:"duration_ns"`
	Commands int64         `json:"commands"`
	// Lag: from the command's answer (its transaction committed) to the answer
	// of an admin's GET /v1/users?limit=1&min_position=P (the read model shows P).
	Lag LatencySummary `json:"lag"`
	// Read is the same GET for an already visible position: the HTTP round trip
	// included in Lag.
	Read LatencySummary `json:"read_round_trip"`
	// Command is the latency of the logins themselves at this steady rate
	// (open loop), against the closed loop of the scenarios.
	Command LatencySummary `json:"command"`
	// NotVisible counts reads that gave up (503 read_model_timeout after the
	// server's bounded wait) or failed.
	NotVisible map[string]int `json:"not_visible"`
	Errors     map[string]int `json:"command_errors"`
	Achieved   float64        `json:"achieved_rate"`
	Usage      Usage          `json:"usage"`
	// Held is the share of 100 ms samples during which a transaction with a
	// transaction id had been open for over 50 ms in another database of the
	// same PostgreSQL server, and HeldMax the oldest one seen: watermill-sql
	// delivers an event only once its transaction is older than every
	// running one in the cluster, so such a transaction delays every event.
	Held    float64       `json:"external_xmin_held_share"`
	HeldMax time.Duration `json:"external_xmin_held_max_ns"`
}

// xminWatch samples how long transactions of other databases have been open.
func xminWatch(ctx context.Context, db *pgxpool.Pool) (stop func() (share float64, oldest time.Duration)) {
	if db == nil {
		return func() (float64, time.Duration) { return 0, 0 }
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var samples, held int
	var oldest time.Duration
	go func() {
		defer close(done)
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			var secs float64
			err := db.QueryRow(ctx, `SELECT COALESCE(max(extract(epoch FROM now() - xact_start)), 0)::float8
				FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname IS DISTINCT FROM current_database()`).Scan(&secs)
			if err != nil {
				continue
			}
			samples++
			age := time.Duration(secs * float64(time.Second))
			if age > 50*time.Millisecond {
				held++
			}
			oldest = max(oldest, age)
		}
	}()
	return func() (float64, time.Duration) {
		cancel()
		<-done
		if samples == 0 {
			return 0, 0
		}
		return float64(held) / float64(samples), oldest
	}
}

// lag sends TOTP logins at a fixed rate (open loop: a slow answer does not slow
// the next command) and, after each, reads the user's read-model row waiting for
// the login's position.
func lag(ctx context.Context, c *Client, pool *Pool, rate int, d time.Duration, m meter) LagResult {
	probe := m.start()
	watch := xminWatch(ctx, m.db)
	var lags, reads, cmds Latencies
	var notVisible, errs Outcomes
	var commands atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 512)
	start := time.Now()
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for i := 0; time.Since(start) < d; i++ {
		select {
		case <-ctx.Done():
			return LagResult{}
		case <-tick.C:
		}
		part := pool.Parts[i%len(pool.Parts)]
		select {
		case sem <- struct{}{}:
		default:
			errs.Add("skipped: 512 commands in flight")
			continue
		}
		wg.Go(func() {
			defer func() { <-sem }()
			u, code, ok := part.TakeLogin(time.Now())
			if !ok {
				errs.Add("pool: no usable step")
				return
			}
			r := c.Verify(ctx, u.ID, "totp", code)
			if !r.OK() {
				errs.Add(r.Kind())
				return
			}
			part.AcceptedTOTP(u)
			commands.Add(1)
			cmds.Add(r.Latency)
			committed := time.Now()
			g := c.Visible(ctx, position(r.Body))
			if !g.OK() {
				notVisible.Add(g.Kind())
				return
			}
			lags.Add(time.Since(committed))
			if i%10 == 0 {
				// The round trip of a read that does not wait.
				if g := c.Visible(ctx, 0); g.OK() {
					reads.Add(g.Latency)
				}
			}
		})
	}
	wg.Wait()
	took := time.Since(start)
	held, heldMax := watch()
	return LagResult{
		Held: held, HeldMax: heldMax,
		Rate: rate, Duration: took, Commands: commands.Load(), Lag: lags.Summary(), Read: reads.Summary(), Command: cmds.Summary(),
		NotVisible: notVisible.Map(), Errors: errs.Map(), Achieved: float64(commands.Load()) / took.Seconds(),
		Usage: probe.stop(),
	}
}

// IdleResult is what PostgreSQL did for the server's database while no
// request arrived: the cost of consumers waiting for events.
type IdleResult struct {
	Duration time.Duration `json:"duration_ns"`
	// Transactions committed or rolled back in the database (pg_stat_database),
	// less the one the measurement itself made.
	Transactions int64 `json:"transactions"`
	Consumers    int   `json:"consumers"`
	// ConsumersFrom says where Consumers comes from.
	ConsumersFrom        string  `json:"consumers_from"`
	PerSecondPerConsumer float64 `json:"transactions_per_second_per_consumer"`
	Usage                Usage   `json:"usage"`
}

// idle counts the database's transactions over d without a request. The
// start reading is itself a transaction of the database, which its backend
// reports within the window (the end reading's own is not yet counted in what
// it reads): one is taken off. Autovacuum's transactions in the database count
// too, like any other.
func idle(ctx context.Context, d time.Duration, consumers int, from string, m meter) IdleResult {
	// What the tool's own queries before (the wait for the consumers) left
	// unreported is reported within the stats delay: wait it out first.
	sleepUntil(ctx, time.Now().Add(m.statsDelay))
	probe := m.start()
	sleepUntil(ctx, probe.start.Add(d))
	u := probe.stop()
	r := IdleResult{Duration: u.DBWall, Consumers: consumers, ConsumersFrom: from, Usage: u}
	if u.DB != nil {
		r.Transactions = max(0, u.DB.Transactions-1)
		if consumers > 0 && u.DBWall > 0 {
			r.PerSecondPerConsumer = float64(r.Transactions) / u.DBWall.Seconds() / float64(consumers)
		}
	}
	return r
}

// NotifierResult is the notifier's delivery rate to the loopback SMTP sink.
type NotifierResult struct {
	// Logins is the backup-code logins made while the sink held its connections;
	// each owes its user "A backup code was used to sign in".
	Logins int `json:"logins"`
	// Held is how long the sink held connections, so the ledger filled up.
	Held time.Duration `json:"held_ns"`
	// Delivered is the messages that arrived after the release (every kind),
	// Owed how many of the expected ones arrived, and Drain the time from the
	// release to the last of them.
	Delivered int           `json:"delivered"`
	Owed      int           `json:"owed_delivered"`
	Drain     time.Duration `json:"drain_ns"`
	Rate      float64       `json:"messages_per_second"`
	Usage     Usage         `json:"usage"`
}

// notifierThroughput builds a backlog of notifications while the sink holds
// new SMTP connections, then releases it and times the drain.
func notifierThroughput(ctx context.Context, c *Client, pool *Pool, sink *Sink, conc, logins int, hold, quiet time.Duration, m meter) NotifierResult {
	// Let earlier messages arrive first.
	quietSince, last := time.Now(), sink.Count()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline) && time.Since(quietSince) < quiet; {
		time.Sleep(200 * time.Millisecond)
		if n := sink.Count(); n != last {
			last, quietSince = n, time.Now()
		}
	}
	sink.Hold()
	held := time.Now()
	owed := map[string]int{}
	var mu sync.Mutex
	var made atomic.Int64
	burstCtx, cancel := context.WithTimeout(ctx, hold-time.Second)
	closedLoop(burstCtx, conc, hold, func(ctx context.Context, vu int, _ *rand.Rand) {
		if made.Add(1) > int64(logins) {
			<-ctx.Done()
			return
		}
		part := pool.Parts[vu%len(pool.Parts)]
		u, code, ok := part.TakeBackupCode()
		if !ok {
			<-ctx.Done()
			return
		}
		r := c.Verify(ctx, u.ID, "backup_code", code)
		if r.OK() {
			mu.Lock()
			owed[Address(u.ID)]++
			mu.Unlock()
		}
	})
	cancel()
	// Give the consumer time to record the ledger rows, within the hold.
	sleepUntil(ctx, held.Add(hold))
	probe := m.start()
	released := time.Now()
	sink.Release()
	want := 0
	for _, n := range owed {
		want += n
	}
	var got, lastAt = 0, released
	progress := time.Now()
	for time.Since(released) < 2*time.Minute && time.Since(progress) < 5*time.Second && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
		mails := sink.Since(released)
		n := 0
		remaining := map[string]int{}
		for k, v := range owed {
			remaining[k] = v
		}
		for _, m := range mails {
			if strings.Contains(m.Subject, "backup code was used") && len(m.To) > 0 && remaining[m.To[0]] > 0 {
				remaining[m.To[0]]--
				n++
			}
		}
		if n != got {
			got, progress = n, time.Now()
			lastAt = mails[len(mails)-1].At
		}
		if got >= want {
			break
		}
	}
	delivered := 0
	for _, m := range sink.Since(released) {
		if !m.At.After(lastAt) {
			delivered++
		}
	}
	drain := lastAt.Sub(released)
	res := NotifierResult{Logins: want, Held: released.Sub(held), Delivered: delivered, Owed: got, Drain: drain, Usage: probe.stop()}
	if drain > 0 {
		res.Rate = float64(delivered) / drain.Seconds()
	}
	return res
}
