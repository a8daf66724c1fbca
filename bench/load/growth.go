package load

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// Growth measures TOTP logins through HTTP for users whose streams hold about
// 10, 1,000 and 10,000 events (years of daily logins). The users enrol through
// the API; their past logins are appended directly to the log with the event
// store (as commands/bench_test.go does), which is far faster than a login per
// 30-second step; the read model and the notifier then consume them like any
// other events. The measured logins are real ones.
type Growth struct {
	Lengths  []int
	Users    int // users per length
	users    map[int][]*User
	appended int64 // events written directly
	lastPos  int64
	took     time.Duration
}

// GrowthResult is the latency by stream length.
type GrowthResult struct {
	Length int `json:"events"`
	// First is each user's first login after the history was appended: no
	// snapshot yet, so the whole stream is read once (and a snapshot saved).
	First LatencySummary `json:"first_login"`
	// Steady is the following logins: what a user with that history sees.
	Steady LatencySummary `json:"steady"`
}

// enrol creates the growth users through the API (during setup).
func (g *Growth) enrol(ctx context.Context, c *Client, runID string, s *Scenario) error {
	g.users = map[int][]*User{}
	for _, n := range g.Lengths {
		for i := range g.Users {
			u, err := Enrol(ctx, c, fmt.Sprintf("grow-%s-%d-%d", runID, n, i), false, s.record)
			if err != nil {
				return err
			}
			g.users[n] = append(g.users[n], u)
		}
	}
	return nil
}

// grow appends past logins until each stream holds its length.
func (g *Growth) grow(ctx context.Context, pool *pgxpool.Pool, tenantID string) error {
	start := time.Now()
	store := eventstore.New(pool, time.Now)
	for _, n := range g.Lengths {
		for _, u := range g.users[n] {
			stream := eventstore.UserStream(tenantID, u.ID)
			recs, err := store.Load(ctx, stream)
			if err != nil {
				return err
			}
			version := int64(len(recs))
			// Past logins, one per day-ish, all before the enrolment's step (which
			// stays the last accepted one: the next real login is not a replay).
			step := u.last - int64(n) - 10
			meta := eventstore.Metadata{Actor: domain.Actor{Kind: domain.ActorUser, ID: u.ID}, Reason: "benchmark history"}
			for version < int64(n) {
				var batch []domain.Event
				for len(batch) < 1000 && version+int64(len(batch)) < int64(n) {
					batch = append(batch, &domain.TOTPVerified{Step: step})
					step++
				}
				a, err := store.Append(ctx, tenantID, stream, version, batch, meta)
				if err != nil {
					return fmt.Errorf("grow %s: %w", u.ID, err)
				}
				version = a.Version
				g.appended += int64(len(batch))
				g.lastPos = max(g.lastPos, a.Position)
			}
		}
	}
	g.took = time.Since(start)
	return nil
}

// measure logs every growth user in as many times as the time window allows,
// one request at a time (latency without queueing).
func (g *Growth) measure(ctx context.Context, c *Client, s *Scenario) []GrowthResult {
	var out []GrowthResult
	for _, n := range g.Lengths {
		part := &Partition{}
		for _, u := range g.users[n] {
			part.Add(u)
		}
		var first, steady []time.Duration
		seen := map[*User]bool{}
		for {
			u, code, ok := part.TakeLogin(time.Now())
			if !ok || ctx.Err() != nil {
				break
			}
			r := c.Verify(ctx, u.ID, "totp", code)
			s.record(fmt.Sprintf("verify totp (%d events)", n), r)
			if !r.OK() {
				continue
			}
			if !seen[u] {
				seen[u] = true
				first = append(first, r.Latency)
			} else {
				steady = append(steady, r.Latency)
			}
		}
		out = append(out, GrowthResult{Length: n, First: Summarise(first), Steady: Summarise(steady)})
	}
	return out
}
