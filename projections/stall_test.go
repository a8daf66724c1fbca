package projections_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testnats"
	"github.com/twofactor/twofactor/messaging"
	"github.com/twofactor/twofactor/projections"
)

func appendTenant(t *testing.T, store *eventstore.Store, tenant string, expected int64, e domain.Event) int64 {
	t.Helper()
	a, err := store.Append(ctx, tenant, "tenant:"+tenant, expected, []domain.Event{e}, eventstore.Metadata{RequestID: "stall-test"})
	if err != nil {
		t.Fatal(err)
	}
	return a.Position
}

func poisoned(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM watermill_twofactor_poison`).Scan(&n))
	return n
}

// A tenant's event that the read model can never store (here: a constraint its
// row violates) is isolated: the tenant is stalled, its later events held
// back, reads asking for them get a StalledError naming the event, while the
// other tenant's writes stay readable at once. A rebuild names the event while
// it still fails, and heals the stall once it no longer does.
func TestAnUnstorableEventStallsItsTenantOnly(t *testing.T) {
	pool := freshPool(t)
	reg := prometheus.NewRegistry()
	metrics, err := projections.NewMetrics(pool, reg)
	must(t, err)
	// The "bug": rows the read model cannot store. Rebuild shadows copy it.
	_, err = pool.Exec(ctx, `ALTER TABLE tenant_policies ADD CONSTRAINT stall_test_forbidden CHECK (name <> 'Forbidden')`)
	must(t, err)
	l := newLive(t, pool, liveOptions{metrics: metrics})
	store := eventstore.New(pool, time.Now)
	p := domain.DefaultPolicy()
	changed := p
	changed.LockoutThreshold = p.LockoutThreshold + 2

	bad := appendTenant(t, store, "tenant-a", 0, &domain.TenantCreated{Name: "Forbidden", Policy: p})
	heldBack := appendTenant(t, store, "tenant-a", 1, &domain.TenantPolicyChanged{Policy: changed, Previous: p})
	// Tenant B's events come in the same batches as A's and after them.
	b1 := appendTenant(t, store, "tenant-b", 0, &domain.TenantCreated{Name: "Beta", Policy: p})
	start := time.Now()
	if _, err := l.queries.Coverage(ctx, "tenant-b", projections.ReadOptions{MinPosition: b1}); err != nil {
		t.Fatalf("tenant B's write is not readable: %v", err)
	}
	b2 := appendTenant(t, store, "tenant-b", 1, &domain.TenantPolicyChanged{Policy: changed, Previous: p})
	if _, err := l.queries.Coverage(ctx, "tenant-b", projections.ReadOptions{MinPosition: b2}); err != nil {
		t.Fatalf("tenant B's second write is not readable: %v", err)
	}
	t.Logf("tenant B's writes readable after %v", time.Since(start))

	var stalled *projections.StalledError
	_, err = l.queries.Coverage(ctx, "tenant-a", projections.ReadOptions{MinPosition: heldBack})
	if !errors.As(err, &stalled) || !errors.Is(err, projections.ErrStalled) {
		t.Fatalf("read of the stalled tenant: %v", err)
	}
	s := stalled.Stall
	if s.Consumer != projections.UserStatusGroup || s.TenantID != "tenant-a" || s.Position != bad || s.EventType != "TenantCreated" ||
		s.StreamID != "tenant:tenant-a" || s.HeldBack != 1 || !strings.Contains(s.Reason, "stall_test_forbidden") {
		t.Fatalf("stall: %+v", s)
	}
	if err := projections.CheckStalls(ctx, pool); err == nil || !strings.Contains(err.Error(), projections.UserStatusGroup) ||
		!strings.Contains(err.Error(), s.EventID) {
		t.Fatalf("CheckStalls: %v", err)
	}
	var rows int
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM tenant_policies WHERE tenant_id = 'tenant-a'`).Scan(&rows))
	if rows != 0 {
		t.Fatal("the stalled tenant's held-back event was applied")
	}
	var version int64
	must(t, pool.QueryRow(ctx, `SELECT version FROM tenant_policies WHERE tenant_id = 'tenant-b'`).Scan(&version))
	if version != 2 {
		t.Fatalf("tenant B at version %d", version)
	}
	if n := poisoned(t, pool); n != 0 {
		t.Fatalf("%d messages in the poison queue", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for counter(t, reg, "twofactor_consumer_isolated_events_total", nil) != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := counter(t, reg, "twofactor_consumer_isolated_events_total", map[string]string{"consumer": projections.UserStatusGroup}); got != 1 {
		t.Fatalf("isolated events counter %v", got)
	}
	if got := counter(t, reg, "twofactor_consumer_stalled", map[string]string{"consumer": projections.UserStatusGroup}); got != 1 {
		t.Fatalf("stalled gauge %v", got)
	}

	// While the cause stays, a rebuild fails and names the event.
	_, err = projections.Rebuild(ctx, pool, store, projections.UserStatusModel, projections.RebuildOptions{})
	var failure *projections.EventFailure
	if !errors.As(err, &failure) || failure.Record.Position != bad || failure.Record.EventID != s.EventID ||
		failure.Record.Type != "TenantCreated" || failure.Record.TenantID != "tenant-a" {
		t.Fatalf("rebuild with the cause still there: %v", err)
	}
	for _, want := range []string{s.EventID, "TenantCreated", "tenant-a", "tenant:tenant-a", "stall_test_forbidden"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("rebuild error %q does not name %q", err, want)
		}
	}

	// The fix, then a rebuild: the stall is healed, held-back events included,
	// and the live projector follows the tenant again.
	_, err = pool.Exec(ctx, `ALTER TABLE tenant_policies DROP CONSTRAINT stall_test_forbidden`)
	must(t, err)
	stats, err := projections.Rebuild(ctx, pool, store, projections.UserStatusModel, projections.RebuildOptions{})
	if err != nil || stats.StallsCleared != 1 {
		t.Fatalf("rebuild after the fix: %+v, %v", stats, err)
	}
	if _, err := l.queries.Coverage(ctx, "tenant-a", projections.ReadOptions{MinPosition: heldBack}); err != nil {
		t.Fatalf("healed tenant: %v", err)
	}
	again := appendTenant(t, store, "tenant-a", 2, &domain.TenantPolicyChanged{Policy: p, Previous: changed})
	if _, err := l.queries.Coverage(ctx, "tenant-a", projections.ReadOptions{MinPosition: again}); err != nil {
		t.Fatalf("healed tenant's next write: %v", err)
	}
	must(t, pool.QueryRow(ctx, `SELECT version FROM tenant_policies WHERE tenant_id = 'tenant-a'`).Scan(&version))
	if version != 3 {
		t.Fatalf("healed tenant at version %d", version)
	}
	if err := projections.CheckStalls(ctx, pool); err != nil {
		t.Fatal(err)
	}
}

// The consumer's database connections are killed again and again while events
// flow (as in a PostgreSQL restart): every event ends up projected, none in the
// poison queue.
func TestKilledConnectionsNeverPoison(t *testing.T) {
	pool := freshPool(t)
	cfg, err := pgxpool.ParseConfig(pool.Config().ConnString())
	must(t, err)
	cfg.ConnConfig.RuntimeParams["application_name"] = "stall_test_consumer"
	cfg.MaxConns = 8
	consumerPool, err := pgxpool.NewWithConfig(ctx, cfg)
	must(t, err)
	t.Cleanup(consumerPool.Close)
	mcfg := messaging.DefaultConfig()
	mcfg.BatchSize = 50
	// Few retries of permanent errors: any misclassified transient one would
	// reach the poison queue.
	mcfg.MaxRetries, mcfg.RetryInitial, mcfg.RetryMax = 1, 5*time.Millisecond, 200*time.Millisecond
	l := newLive(t, consumerPool, liveOptions{cfg: &mcfg})

	s := newSim(t, 5, 3, 150)
	steps := s.steps(2500)
	done := make(chan struct{})
	kills := 0
	go func() {
		defer close(done)
		for i := 0; i < len(steps); i += 100 {
			appendSteps(ctx, t, pool, steps[i:min(i+100, len(steps))], 10)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	for running := true; running; {
		select {
		case <-done:
			running = false
		case <-time.After(150 * time.Millisecond):
			var n int
			must(t, pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = 'stall_test_consumer'`).Scan(&n))
			kills += n
		}
	}
	if kills == 0 {
		t.Fatal("no consumer connection was killed")
	}
	pos := head(t, pool)
	q := projections.NewQueries(pool, projections.QueryOptions{})
	if err := q.WaitFor(ctx, pos, 60*time.Second); err != nil {
		t.Fatalf("after %d killed connections, the read model did not reach %d: %v", kills, pos, err)
	}
	if n := poisoned(t, pool); n != 0 {
		t.Fatalf("%d messages in the poison queue after %d killed connections", n, kills)
	}
	if err := projections.CheckStalls(ctx, pool); err != nil {
		t.Fatalf("killed connections stalled a tenant: %v", err)
	}
	checkAgainstDomain(t, pool, s.Now())
	liveRows := dump(t, pool)
	l.stop()
	rebuild(t, pool)
	compareDumps(t, "live with killed connections vs rebuild", liveRows, dump(t, pool))
	t.Logf("%d events, %d connections killed", eventCount(t, pool), kills)
}

// The same isolation on the NATS bus, where the projector's transaction is
// the log-ordered owner's: the tenant is stalled, the other one followed.
func TestAnUnstorableEventStallsItsTenantOnlyOnNATS(t *testing.T) {
	pool := freshPool(t)
	_, err := pool.Exec(ctx, `ALTER TABLE tenant_policies ADD CONSTRAINT stall_test_forbidden CHECK (name <> 'Forbidden')`)
	must(t, err)
	ncfg := testnats.Config(t, testnats.URL(t))
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	listener := messaging.NewListener(pool, nil, messaging.EventsChannel, projections.ReadModelsChannel)
	go listener.Run(lctx) //nolint:errcheck
	queries := projections.NewQueries(pool, projections.QueryOptions{Listener: listener, Wait: 20 * time.Second})
	seen := &arrivals{t: t, version: map[string]int64{}, ids: map[string]bool{}}
	startNATSWorker(t, pool, ncfg, listener, seen)

	store := eventstore.New(pool, time.Now)
	p := domain.DefaultPolicy()
	changed := p
	changed.LockoutThreshold = p.LockoutThreshold + 2
	bad := appendTenant(t, store, "tenant-a", 0, &domain.TenantCreated{Name: "Forbidden", Policy: p})
	heldBack := appendTenant(t, store, "tenant-a", 1, &domain.TenantPolicyChanged{Policy: changed, Previous: p})
	appendTenant(t, store, "tenant-b", 0, &domain.TenantCreated{Name: "Beta", Policy: p})
	b2 := appendTenant(t, store, "tenant-b", 1, &domain.TenantPolicyChanged{Policy: changed, Previous: p})
	if _, err := queries.Coverage(ctx, "tenant-b", projections.ReadOptions{MinPosition: b2}); err != nil {
		t.Fatalf("tenant B's write is not readable: %v", err)
	}
	var stalled *projections.StalledError
	if _, err := queries.Coverage(ctx, "tenant-a", projections.ReadOptions{MinPosition: heldBack}); !errors.As(err, &stalled) ||
		stalled.Stall.Position != bad || stalled.Stall.HeldBack != 1 {
		t.Fatalf("read of the stalled tenant: %v", err)
	}
	if n := poisoned(t, pool); n != 0 {
		t.Fatalf("%d messages in the poison queue", n)
	}
}

// insertRaw writes an event as a future release (or a corrupted row) might,
// bypassing the commands and Append: a type this build cannot decode.
func insertRaw(t *testing.T, pool *pgxpool.Pool, tenant, stream, eventType, payload string) *eventstore.Record {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Microsecond)
	rec := &eventstore.Record{EventID: uuid.NewString(), TenantID: tenant, StreamID: stream, Version: 1, Type: eventType,
		SchemaVersion: eventstore.SchemaVersion, Payload: []byte(payload), RawMetadata: []byte(`{"tenant_id":"` + tenant + `"}`),
		RecordedAt: now, PrevHash: eventstore.GenesisHash}
	rec.Hash = eventstore.Hash(rec.PrevHash, rec)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type,
			schema_version, payload, metadata, recorded_at, prev_hash, hash)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING position`,
			rec.EventID, rec.TenantID, rec.StreamID, rec.Version, rec.Type, rec.SchemaVersion,
			payload, string(rec.RawMetadata), rec.RecordedAt, rec.PrevHash, rec.Hash).Scan(&rec.Position); err != nil {
			return err
		}
		return nil
	})
	must(t, err)
	return rec
}

// An event this build cannot decode is isolated like one it cannot store, and
// a rebuild names it.
func TestAnUndecodableEventIsIsolated(t *testing.T) {
	pool := freshPool(t)
	l := newLive(t, pool, liveOptions{})
	store := eventstore.New(pool, time.Now)
	bad := insertRaw(t, pool, "tenant-c", "user:tenant-c:carol", "TwoFactorTeleported", `{"to":"mars"}`)
	pos := appendTenant(t, store, "tenant-d", 0, &domain.TenantCreated{Name: "Delta", Policy: domain.DefaultPolicy()})
	if _, err := l.queries.Coverage(ctx, "tenant-d", projections.ReadOptions{MinPosition: pos}); err != nil {
		t.Fatalf("the other tenant: %v", err)
	}
	var stalled *projections.StalledError
	if _, err := l.queries.GetUser(ctx, "tenant-c", "carol", projections.ReadOptions{MinPosition: bad.Position}); !errors.As(err, &stalled) ||
		stalled.Stall.EventID != bad.EventID || !strings.Contains(stalled.Stall.Reason, "TwoFactorTeleported") {
		t.Fatalf("read of the stalled tenant: %v", err)
	}
	if n := poisoned(t, pool); n != 0 {
		t.Fatalf("%d messages in the poison queue", n)
	}
	_, err := projections.Rebuild(ctx, pool, store, projections.UserStatusModel, projections.RebuildOptions{})
	var failure *projections.EventFailure
	if !errors.As(err, &failure) || failure.Record.EventID != bad.EventID || failure.Record.Position != bad.Position ||
		failure.Record.StreamID != bad.StreamID || !strings.Contains(err.Error(), "TwoFactorTeleported") {
		t.Fatalf("rebuild: %v", err)
	}
}
