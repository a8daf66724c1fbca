package migrations_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/migrations"
)

// A database of before 0013, with events and their outbox rows written as
// Append wrote them then and consumer groups at various offsets, migrates to
// the log as the topic: every group's offset names the same prefix of the log,
// in positions, so no event is delivered to it again and none is skipped.
func TestOutboxOffsetsTranslateToLogPositions(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// Back to an empty database, then the migrations before 0013.
	exec(t, pool, `DROP SCHEMA public CASCADE; CREATE SCHEMA public`)
	all, err := migrations.All()
	if err != nil {
		t.Fatal(err)
	}
	exec(t, pool, `CREATE TABLE schema_migrations (version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`)
	for _, m := range all {
		if m.Version >= 13 {
			break
		}
		exec(t, pool, m.SQL)
		exec(t, pool, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name)
	}

	// Transactions as Append wrote them (events, then their outbox rows), one
	// with a message that is no event (as tests once published), and two
	// concurrent ones whose outbox offsets interleave.
	type written struct {
		xid       string
		positions []int64
		offsets   []int64
	}
	write := func(tx pgx.Tx, events int, stream string) written {
		t.Helper()
		var w written
		must(t, tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&w.xid))
		var ids []string
		for i := 0; i < events; i++ {
			var pos int64
			var id string
			must(t, tx.QueryRow(ctx, `INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type, schema_version,
				payload, metadata, recorded_at, prev_hash, hash)
				VALUES (gen_random_uuid(), 't', $1, (SELECT count(*) + 1 FROM events WHERE stream_id = $1), 'TwoFactorUnlocked', 1,
				'{}', '{}', now(), '\x00', '\x00') RETURNING position, event_id::text`, stream).Scan(&pos, &id))
			w.positions = append(w.positions, pos)
			ids = append(ids, id)
		}
		for _, id := range ids {
			var off int64
			must(t, tx.QueryRow(ctx, `INSERT INTO watermill_twofactor_events (uuid, payload, metadata, transaction_id)
				VALUES ($1, '{}', '{}', pg_current_xact_id()) RETURNING "offset"`, id).Scan(&off))
			w.offsets = append(w.offsets, off)
		}
		return w
	}
	inTx := func(fn func(tx pgx.Tx)) {
		t.Helper()
		tx, err := pool.Begin(ctx)
		must(t, err)
		fn(tx)
		must(t, tx.Commit(ctx))
	}
	var a, b, c, d written
	inTx(func(tx pgx.Tx) { a = write(tx, 2, "user:t:a") })
	inTx(func(tx pgx.Tx) { b = write(tx, 3, "user:t:b") })
	inTx(func(tx pgx.Tx) {
		d = write(tx, 0, "")
		var off int64
		must(t, tx.QueryRow(ctx, `INSERT INTO watermill_twofactor_events (uuid, payload, metadata, transaction_id)
			VALUES ('not-an-event', '{}', '{}', pg_current_xact_id()) RETURNING "offset"`).Scan(&off))
		d.offsets = append(d.offsets, off)
	})
	inTx(func(tx pgx.Tx) { c = write(tx, 2, "user:t:c") })

	groups := map[string][2]any{ // group: acknowledged (transaction id, outbox offset)
		"never":        {"0", int64(0)},
		"after-a":      {a.xid, a.offsets[1]},
		"inside-b":     {b.xid, b.offsets[1]},
		"at-non-event": {d.xid, d.offsets[0]},
		"all":          {c.xid, c.offsets[1]},
	}
	for g, at := range groups {
		exec(t, pool, `INSERT INTO watermill_offsets_twofactor_events (consumer_group, offset_acked, last_processed_transaction_id)
			VALUES ($1, $2, $3::xid8)`, g, at[1], at[0])
	}

	if _, err := migrations.Apply(ctx, pool); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"never":        "0/0",
		"after-a":      fmt.Sprintf("%s/%d", a.xid, a.positions[1]),
		"inside-b":     fmt.Sprintf("%s/%d", b.xid, b.positions[1]),
		"at-non-event": fmt.Sprintf("%s/%d", b.xid, b.positions[2]), // the last event before it
		"all":          fmt.Sprintf("%s/%d", c.xid, c.positions[1]),
	}
	for g, w := range want {
		var got string
		must(t, pool.QueryRow(ctx, `SELECT last_processed_transaction_id::text || '/' || offset_acked FROM watermill_offsets_twofactor_events
			WHERE consumer_group = $1`, g).Scan(&got))
		if got != w {
			t.Errorf("group %s: offset %s, want %s", g, got, w)
		}
	}
	var outbox bool
	must(t, pool.QueryRow(ctx, `SELECT to_regclass('watermill_twofactor_events') IS NOT NULL`).Scan(&outbox))
	if outbox {
		t.Error("the outbox table is still there")
	}
	var events int
	must(t, pool.QueryRow(ctx, `SELECT count(*) FROM events`).Scan(&events))
	if events != 7 {
		t.Errorf("%d events after the migration, want 7", events)
	}
}

func exec(t *testing.T, pool *pgxpool.Pool, sql string, args ...any) {
	t.Helper()
	if _, err := pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
