package eventstore_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/internal/testdb"
)

func TestMain(m *testing.M) { os.Exit(testdb.Main(m)) }

var meta = eventstore.Metadata{Actor: domain.Actor{Kind: domain.ActorSystem, ID: "test"}, RequestID: "req-1"}

func newStore(t *testing.T) (*eventstore.Store, *pgxpool.Pool) {
	pool := testdb.Pool(t)
	return eventstore.New(pool, time.Now), pool
}

func count(t *testing.T, pool *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAppendLoadChainsHashes(t *testing.T) {
	ctx := context.Background()
	store, pool := newStore(t)
	stream := eventstore.UserStream("tenant-a", "alice")
	first, err := store.Append(ctx, "tenant-a", stream, 0, []domain.Event{
		&domain.TwoFactorRequirementChanged{Required: true},
		&domain.TogglePermissionChanged{CanToggle: false},
	}, meta)
	if err != nil {
		t.Fatal(err)
	}
	if first.Version != 2 {
		t.Fatalf("version = %d, want 2", first.Version)
	}
	if _, err := store.Append(ctx, "tenant-a", stream, 2, []domain.Event{&domain.TwoFactorUnlocked{}}, meta); err != nil {
		t.Fatal(err)
	}
	records, err := store.Load(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != 3 {
		t.Fatalf("loaded %d records, want 3", len(records))
	}
	prev := eventstore.GenesisHash
	for i, r := range records {
		if r.Version != int64(i+1) {
			t.Errorf("record %d has version %d", i, r.Version)
		}
		if !bytes.Equal(r.PrevHash, prev) || !bytes.Equal(r.Hash, eventstore.Hash(prev, r)) {
			t.Errorf("record %d breaks the hash chain", i)
		}
		if r.Metadata.Actor.ID != "test" || r.Metadata.TenantID != "tenant-a" || r.Metadata.RequestID != "req-1" {
			t.Errorf("record %d metadata = %+v", i, r.Metadata)
		}
		prev = r.Hash
	}
	if got, ok := records[0].Event.(*domain.TwoFactorRequirementChanged); !ok || !got.Required {
		t.Errorf("first event decoded as %#v", records[0].Event)
	}
	// The log is the topic: no copy of an event is written anywhere else.
	if n := count(t, pool, `SELECT count(*) FROM pg_tables WHERE tablename = 'watermill_twofactor_events'`); n != 0 {
		t.Errorf("an outbox table exists beside the log")
	}
}

func TestAppendAtStaleVersionIsAConflictAndWritesNothing(t *testing.T) {
	ctx := context.Background()
	store, pool := newStore(t)
	stream := eventstore.UserStream("tenant-a", "bob")
	if _, err := store.Append(ctx, "tenant-a", stream, 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta); err != nil {
		t.Fatal(err)
	}
	for _, expected := range []int64{0, 2} {
		_, err := store.Append(ctx, "tenant-a", stream, expected, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
		var conflict *eventstore.ConcurrencyError
		if !errors.As(err, &conflict) || !errors.Is(err, eventstore.ErrConcurrency) {
			t.Fatalf("append at %d: err = %v, want a concurrency error", expected, err)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM events WHERE stream_id = $1`, stream); n != 1 {
		t.Errorf("stream has %d events, want 1", n)
	}
}

// An append in a transaction that rolls back leaves nothing, and the next
// append to the stream starts at the same version.
func TestARolledBackAppendLeavesNothing(t *testing.T) {
	ctx := context.Background()
	store, pool := newStore(t)
	stream := eventstore.UserStream("tenant-r", "rollback")

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	appended, err := store.AppendTx(ctx, tx, "tenant-r", stream, 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	id := appended.Records[0].EventID
	if n := count(t, pool, `SELECT count(*) FROM events WHERE event_id = $1`, id); n != 0 {
		t.Errorf("rolled-back event is stored")
	}
	committed, err := store.Append(ctx, "tenant-r", stream, 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
	if err != nil {
		t.Fatal(err)
	}
	if committed.Version != 1 {
		t.Errorf("version after the rolled-back append = %d, want 1", committed.Version)
	}
}

func TestEventsTableRejectsUpdateDeleteAndTruncate(t *testing.T) {
	ctx := context.Background()
	store, pool := newStore(t)
	stream := eventstore.UserStream("tenant-a", "immutable")
	if _, err := store.Append(ctx, "tenant-a", stream, 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta); err != nil {
		t.Fatal(err)
	}
	for _, stmt := range []string{
		`UPDATE events SET event_type = 'Tampered' WHERE stream_id = '` + stream + `'`,
		`DELETE FROM events WHERE stream_id = '` + stream + `'`,
		`TRUNCATE events`,
	} {
		if _, err := pool.Exec(ctx, stmt); err == nil {
			t.Errorf("%q succeeded on the append-only log", stmt)
		}
	}
	if n := count(t, pool, `SELECT count(*) FROM events WHERE stream_id = $1 AND event_type = 'TwoFactorUnlocked'`, stream); n != 1 {
		t.Errorf("event changed: %d intact rows", n)
	}
}

// A transaction that commits after a later one is still seen, in order, by a
// reader that continues from the last record it read, and by a watermill
// subscriber of the log (LogSchema).
func TestLateCommitIsNotSkipped(t *testing.T) {
	ctx := context.Background()
	// A database of its own: nothing else may write to this log meanwhile.
	late := testdb.Fresh(t)
	pool, err := pgxpool.New(ctx, late)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := eventstore.New(pool, time.Now)

	seed, err := store.Append(ctx, "t", "user:t:seed", 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
	if err != nil {
		t.Fatal(err)
	}
	cursor := seed.Position

	slow, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(ctx)                                                 //nolint:errcheck
	if _, err := slow.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil { // take a transaction id now
		t.Fatal(err)
	}
	slowAppend, err := store.AppendTx(ctx, slow, "t", "user:t:slow", 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
	if err != nil {
		t.Fatal(err)
	}
	fast, err := store.Append(ctx, "t", "user:t:fast", 0, []domain.Event{&domain.TwoFactorUnlocked{}}, meta)
	if err != nil {
		t.Fatal(err)
	}
	if fast.Position < slowAppend.Position {
		t.Fatalf("positions: slow %d, fast %d", slowAppend.Position, fast.Position)
	}

	subscriber, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), wsql.SubscriberConfig{
		ConsumerGroup:  "late_commit_test",
		SchemaAdapter:  eventstore.LogSchema{},
		OffsetsAdapter: wsql.DefaultPostgreSQLOffsetsAdapter{},
		PollInterval:   20 * time.Millisecond,
	}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	defer subscriber.Close()
	subCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	messages, err := subscriber.Subscribe(subCtx, eventstore.Topic)
	if err != nil {
		t.Fatal(err)
	}
	receive := func() string {
		select {
		case msg := <-messages:
			msg.Ack()
			return msg.UUID
		case <-time.After(300 * time.Millisecond):
			return ""
		}
	}
	// The horizon is cluster-wide: other packages' transactions may hold the seed back a while.
	if id := waitMessage(t, messages); id != seed.Records[0].EventID {
		t.Fatalf("first message = %q, want the seed", id)
	}
	// While the slow transaction is open, neither reader may move past it.
	if id := receive(); id != "" {
		t.Fatalf("subscriber delivered %s before the earlier transaction committed", id)
	}
	got, err := store.ReadAll(ctx, cursor, 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("ReadAll returned %d records past an open transaction", len(got))
	}

	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	got = readAtLeast(t, store, cursor, 2)
	if len(got) != 2 || got[0].StreamID != "user:t:slow" || got[1].StreamID != "user:t:fast" {
		t.Fatalf("ReadAll after the late commit = %v", streams(got))
	}
	var ids []string
	for i := 0; i < 2; i++ {
		ids = append(ids, waitMessage(t, messages))
	}
	if ids[0] != slowAppend.Records[0].EventID || ids[1] != fast.Records[0].EventID {
		t.Fatalf("subscriber order = %v, want slow then fast", ids)
	}
}

func waitMessage(t *testing.T, messages <-chan *message.Message) string {
	t.Helper()
	select {
	case msg := <-messages:
		msg.Ack()
		return msg.UUID
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
		return ""
	}
}

// readAtLeast pages through ReadAll until n records arrived. The snapshot horizon
// is cluster-wide, so a transaction open in another database (another test
// package) may hold records back for a moment: poll, bounded.
func readAtLeast(t *testing.T, store *eventstore.Store, cursor int64, n int) []*eventstore.Record {
	t.Helper()
	var seen []*eventstore.Record
	deadline := time.Now().Add(10 * time.Second)
	for len(seen) < n {
		batch, err := store.ReadAll(context.Background(), cursor, 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch) == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("read %d records within 10s, want %d", len(seen), n)
			}
			time.Sleep(20 * time.Millisecond)
			continue
		}
		seen = append(seen, batch...)
		cursor = batch[len(batch)-1].Position
	}
	return seen
}

func streams(records []*eventstore.Record) []string {
	var out []string
	for _, r := range records {
		out = append(out, r.StreamID)
	}
	return out
}

func TestReadAllPagesThroughTheWholeLog(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := eventstore.New(pool, time.Now)
	for i := 0; i < 25; i++ {
		if _, err := store.Append(ctx, "t", "user:t:pager", int64(i), []domain.Event{&domain.TwoFactorUnlocked{}}, meta); err != nil {
			t.Fatal(err)
		}
	}
	seen := readAtLeast(t, store, 0, 25)
	if len(seen) != 25 {
		t.Fatalf("read %d records, want 25", len(seen))
	}
	for i, r := range seen {
		if r.Version != int64(i+1) {
			t.Fatalf("record %d has version %d", i, r.Version)
		}
	}
	if _, err := store.ReadAll(ctx, 999999, 10); err == nil {
		t.Error("ReadAll after an unknown position succeeded")
	}
}

// BenchmarkAppend is the write path of a command without the command: one
// event (a TOTP login's size) appended to a stream that already has a head, as
// the commands do (AppendAfter with the head's hash). Compare CPU per op
// (-cpuprofile) and allocations before and after a change of the write path.
func BenchmarkAppend(b *testing.B) {
	ctx := context.Background()
	// One connection, so that its PostgreSQL backend's CPU time is the
	// server's share of the appends.
	cfg, err := pgxpool.ParseConfig(testdb.URL(b))
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns, cfg.MinConns = 1, 1
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	var backend int
	if err := pool.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&backend); err != nil {
		b.Fatal(err)
	}
	store := eventstore.New(pool, time.Now)
	streams := 64
	heads := make([][]byte, streams)
	versions := make([]int64, streams)
	base := time.Now().UnixNano()
	ids := make([]string, streams)
	for i := range ids {
		ids[i] = eventstore.UserStream("bench", "u"+strconv.FormatInt(base, 36)+"-"+strconv.Itoa(i))
	}
	walAt := func() (lsn int64) {
		if err := pool.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn`).Scan(&lsn); err != nil {
			b.Fatal(err)
		}
		return lsn
	}
	b.ReportAllocs()
	wal0, cpu0, pg0 := walAt(), processCPU(), backendCPU(b, backend)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s := i % streams
		out, err := store.AppendAfter(ctx, "bench", ids[s], versions[s], heads[s],
			[]domain.Event{&domain.TOTPVerified{Step: int64(59847956 + i)}}, meta)
		if err != nil {
			b.Fatal(err)
		}
		versions[s], heads[s] = out.Version, out.Records[len(out.Records)-1].Hash
	}
	b.StopTimer()
	// Go CPU of this process (user + system), the CPU of the PostgreSQL
	// backend, and the WAL PostgreSQL wrote, per append: wall time on a shared
	// machine is mostly waiting for fsync and for the other processes; these
	// measure the work. (WAL is cluster-wide: other databases' writes count
	// too, so compare medians.)
	b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(backendCPU(b, backend)-pg0)/float64(b.N), "pg-cpu-ns/op")
	b.ReportMetric(float64(walAt()-wal0)/float64(b.N), "wal-B/op")
}

// backendCPU is the CPU time (user + system) of a PostgreSQL backend on this
// machine, from /proc (fields 14 and 15, in clock ticks of 10 ms).
func backendCPU(b *testing.B, pid int) time.Duration {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		b.Skipf("PostgreSQL backend not on this machine: %v", err)
	}
	f := strings.Fields(string(raw[bytes.LastIndexByte(raw, ')')+2:]))
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ReadForFold returns what ReadAll does, in the same order, less what a fold
// never reads.
func TestReadForFoldIsReadAllWithoutMetadata(t *testing.T) {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, testdb.Fresh(t))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store := eventstore.New(pool, time.Now)
	for i := 0; i < 12; i++ {
		stream := eventstore.UserStream("t", "u"+strconv.Itoa(i%3))
		if _, err := store.Append(ctx, "t", stream, int64(i/3), []domain.Event{&domain.TOTPVerified{Step: int64(i)}}, meta); err != nil {
			t.Fatal(err)
		}
	}
	all := readAtLeast(t, store, 0, 12)
	for _, after := range []int64{0, all[4].Position} {
		want, err := store.ReadAll(ctx, after, 5)
		if err != nil {
			t.Fatal(err)
		}
		got, err := store.ReadForFold(ctx, after, 5)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(want) {
			t.Fatalf("after %d: %d records, want %d", after, len(got), len(want))
		}
		for i, w := range want {
			g := got[i]
			if g.Position != w.Position || g.EventID != w.EventID || g.TenantID != w.TenantID || g.StreamID != w.StreamID ||
				g.Version != w.Version || g.Type != w.Type || g.SchemaVersion != w.SchemaVersion || !bytes.Equal(g.Payload, w.Payload) ||
				!g.RecordedAt.Equal(w.RecordedAt) || g.TransactionID != w.TransactionID || *g.Event.(*domain.TOTPVerified) != *w.Event.(*domain.TOTPVerified) {
				t.Errorf("after %d, record %d:\n got %+v\nwant %+v", after, i, g, w)
			}
			if g.RawMetadata != nil || g.Hash != nil {
				t.Errorf("record %d carries metadata or hashes", i)
			}
		}
	}
	if _, err := store.ReadForFold(ctx, 999999, 10); err == nil {
		t.Error("ReadForFold after an unknown position succeeded")
	}
}
