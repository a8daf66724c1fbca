package projections_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/projections"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

var ctx = context.Background()

func decodeB64(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// freshPool opens a pool on a new migrated database: each test that runs the
// projector owns its read model and consumer group.
func freshPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 16
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// live runs the projector in a real watermill router over the event log.
type live struct {
	t         testing.TB
	pool      *pgxpool.Pool
	store     *eventstore.Store
	listener  *messaging.Listener
	queries   *projections.Queries
	metrics   *projections.Metrics
	projector *projections.Projector
	router    *message.Router
	stopL     context.CancelFunc
	done      chan struct{}
	mu        sync.Mutex
}

type liveOptions struct {
	cfg     *messaging.Config
	extra   []message.HandlerMiddleware
	metrics *projections.Metrics
	clock   func() time.Time
}

func newLive(t testing.TB, pool *pgxpool.Pool, o liveOptions) *live {
	t.Helper()
	l := &live{t: t, pool: pool, store: eventstore.New(pool, time.Now), metrics: o.metrics}
	lctx, cancel := context.WithCancel(ctx)
	l.stopL = cancel
	l.listener = messaging.NewListener(pool, nil, messaging.EventsChannel, projections.ReadModelsChannel)
	go l.listener.Run(lctx) //nolint:errcheck
	l.queries = projections.NewQueries(pool, projections.QueryOptions{Listener: l.listener, Clock: o.clock})
	t.Cleanup(func() {
		l.stop()
		cancel()
	})
	l.start(o)
	return l
}

func (l *live) start(o liveOptions) {
	l.t.Helper()
	cfg := messaging.DefaultConfig()
	// Short subscriber transactions: the snapshot horizon they hold back is
	// cluster-wide, and other test packages run alongside.
	cfg.BatchSize = 50
	if o.cfg != nil {
		cfg = *o.cfg
	}
	cfg.Listener = l.listener
	l.projector = projections.NewProjector(l.pool, l.store, projections.ProjectorOptions{Metrics: l.metrics})
	r, err := messaging.NewRouter(l.pool, cfg, watermill.NopLogger{}, []messaging.Consumer{l.projector.Consumer()}, o.extra...)
	if err != nil {
		l.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := r.Run(ctx); err != nil {
			l.t.Errorf("router: %v", err)
		}
	}()
	<-r.Running()
	l.mu.Lock()
	l.router, l.done = r, done
	l.mu.Unlock()
}

func (l *live) stop() {
	l.mu.Lock()
	r, done := l.router, l.done
	l.router = nil
	l.mu.Unlock()
	if r == nil {
		return
	}
	if err := r.Close(); err != nil {
		l.t.Errorf("close router: %v", err)
	}
	<-done
}

// head is the last event in delivery order.
func head(t testing.TB, pool *pgxpool.Pool) int64 {
	t.Helper()
	var pos int64
	err := pool.QueryRow(ctx, `SELECT coalesce((SELECT position FROM events ORDER BY transaction_id DESC, position DESC LIMIT 1), 0)`).Scan(&pos)
	if err != nil {
		t.Fatal(err)
	}
	return pos
}

// caughtUp waits until the read model has applied every committed event.
func (l *live) caughtUp(wait time.Duration) {
	l.t.Helper()
	pos := head(l.t, l.pool)
	if pos == 0 {
		return
	}
	if err := l.queries.WaitFor(ctx, pos, wait); err != nil {
		l.t.Fatalf("read model did not reach position %d: %v", pos, err)
	}
}

// dump reads the read-model tables as text rows in key order.
func dump(t testing.TB, pool *pgxpool.Pool) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for table, key := range map[string]string{
		"user_status": "tenant_id, user_id", "user_status_state": "stream_id",
		"tenant_policies": "tenant_id", "tenant_coverage": "tenant_id, status_base",
	} {
		rows, err := pool.Query(ctx, `SELECT t::text FROM `+table+` t ORDER BY `+key)
		if err != nil {
			t.Fatal(err)
		}
		out[table], err = pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func compareDumps(t testing.TB, what string, want, got map[string][]string) {
	t.Helper()
	for table := range want {
		w, g := want[table], got[table]
		if reflect.DeepEqual(w, g) {
			continue
		}
		t.Errorf("%s: table %s differs (%d rows vs %d)", what, table, len(w), len(g))
		ws, gs := map[string]bool{}, map[string]bool{}
		for _, r := range w {
			ws[r] = true
		}
		for _, r := range g {
			gs[r] = true
		}
		shown := 0
		for _, r := range w {
			if !gs[r] && shown < 3 {
				t.Errorf("  only in first:  %s", r)
				shown++
			}
		}
		shown = 0
		for _, r := range g {
			if !ws[r] && shown < 3 {
				t.Errorf("  only in second: %s", r)
				shown++
			}
		}
	}
}

// truth folds every stream with the domain and snapshots it at now: what the
// commands would say about each user.
func truth(t testing.TB, pool *pgxpool.Pool, now time.Time) map[string]domain.Snapshot {
	t.Helper()
	store := eventstore.New(pool, time.Now)
	rows, err := pool.Query(ctx, `SELECT DISTINCT stream_id FROM events`)
	if err != nil {
		t.Fatal(err)
	}
	streams, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(streams)
	policies := map[string]domain.Policy{}
	for _, s := range streams {
		if id, ok := strings.CutPrefix(s, "tenant:"); ok {
			recs, err := store.Load(ctx, s)
			if err != nil {
				t.Fatal(err)
			}
			tp := domain.NewTenantPolicy(id)
			for _, r := range recs {
				tp.Apply(r.Event)
			}
			policies[id] = tp.Policy()
		}
	}
	out := map[string]domain.Snapshot{}
	for _, s := range streams {
		if !strings.HasPrefix(s, "user:") {
			continue
		}
		recs, err := store.Load(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		tenant := recs[0].TenantID
		u := domain.NewUserTwoFactor(tenant, strings.TrimPrefix(s, "user:"+tenant+":"))
		for _, r := range recs {
			u.Apply(r.Event, r.RecordedAt)
		}
		snap := u.Snapshot(now, policies[tenant])
		out[tenant+"/"+u.UserID()] = snap
	}
	return out
}

// checkAgainstDomain compares every user's read-model view at now with the
// domain's snapshot of the folded stream.
func checkAgainstDomain(t testing.TB, pool *pgxpool.Pool, now time.Time) int {
	t.Helper()
	q := projections.NewQueries(pool, projections.QueryOptions{Clock: func() time.Time { return now }})
	checked := 0
	for key, want := range truth(t, pool, now) {
		tenant, user, _ := strings.Cut(key, "/")
		got, err := q.GetUser(ctx, tenant, user, projections.ReadOptions{})
		if want.Status == domain.StatusErased {
			if de, ok := domain.AsError(err); !ok || de.Kind != domain.KindNotFound {
				t.Errorf("%s: erased user still readable (%v)", key, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", key, err)
			continue
		}
		if g := normalise(got.Snapshot()); !reflect.DeepEqual(g, normalise(want)) {
			t.Errorf("%s at %s:\n read model %+v\n domain     %+v", key, now.Format(time.RFC3339), g, normalise(want))
			if checked > 5 {
				t.FailNow()
			}
		}
		checked++
	}
	return checked
}

func normalise(s domain.Snapshot) domain.Snapshot {
	s.LockedUntil = s.LockedUntil.UTC()
	s.LastVerifiedAt = s.LastVerifiedAt.UTC()
	if s.Methods == nil {
		s.Methods = []domain.Method{}
	}
	if s.PendingMethods == nil {
		s.PendingMethods = []domain.Method{}
	}
	return s
}

// settled waits until every committed event is older than every running
// transaction of the cluster (tests of other packages run alongside, and the
// log is read below that horizon).
func settled(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var above bool
		must(t, pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM events WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot()))`).Scan(&above))
		if !above {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the log never settled below the horizon")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func rebuild(t testing.TB, pool *pgxpool.Pool) projections.RebuildStats {
	t.Helper()
	settled(t, pool)
	stats, err := projections.Rebuild(ctx, pool, eventstore.New(pool, time.Now), projections.UserStatusModel, projections.RebuildOptions{BatchSize: 2000})
	if err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	return stats
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func eventCount(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&n))
	return n
}

var _ = fmt.Sprintf

// checkCoverage compares every tenant's coverage at now with counts over the
// domain's snapshots.
func checkCoverage(t testing.TB, pool *pgxpool.Pool, now time.Time) map[domain.Status]int {
	t.Helper()
	want := map[string]*projections.Coverage{}
	all := map[domain.Status]int{}
	for key, s := range truth(t, pool, now) {
		tenant, _, _ := strings.Cut(key, "/")
		if s.Status == domain.StatusErased {
			continue
		}
		c := want[tenant]
		if c == nil {
			c = &projections.Coverage{TenantID: tenant, ByStatus: map[domain.Status]int{}}
			want[tenant] = c
		}
		c.Users++
		c.ByStatus[s.Status]++
		all[s.Status]++
		if s.Enabled {
			c.Activated++
		}
		if s.Required && !s.Enabled {
			c.RequiredNotEnrolled++
		}
		if s.Status == domain.StatusLocked {
			c.LockedNow++
		}
	}
	q := projections.NewQueries(pool, projections.QueryOptions{Clock: func() time.Time { return now }})
	for tenant, w := range want {
		got, err := q.Coverage(ctx, tenant, projections.ReadOptions{})
		must(t, err)
		w.ActivatedShare = float64(w.Activated) / float64(w.Users)
		got.AppliedPosition, got.UpdatedAt = 0, time.Time{}
		if !reflect.DeepEqual(got, *w) {
			t.Errorf("coverage of %s at %s:\n read model %+v\n domain     %+v", tenant, now.Format(time.RFC3339), got, *w)
		}
	}
	return all
}
