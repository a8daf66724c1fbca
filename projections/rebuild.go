package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/messaging"
)

// Rebuilding a read model while the service runs
//
//  1. Take an advisory lock (one rebuild of a read model at a time) and create
//     empty shadow tables: CREATE TABLE user_status_rebuild (LIKE user_status
//     INCLUDING ALL EXCLUDING INDEXES), and so on, so the migration stays the
//     only definition; the live tables' indexes are built on the shadows once
//     their rows are loaded (indexShadows).
//  2. Read the whole log with eventstore.ReadForFold in (transaction id, position)
//     order, in batches, folding every stream in memory with the same code as the
//     live projector; then COPY the derived rows into the shadows. Meanwhile the
//     live consumer group keeps applying new events to the live tables, and
//     queries keep reading them.
//  3. Catch up: read what was committed since, and write it to the shadows, until
//     a pass finds little.
//  4. Swap, in one transaction: lock the live group's offset row (the live
//     projector waits; a batch it is in the middle of finishes first), read the
//     event the group has acknowledged last (L) and compare it with the last event
//     the shadows hold (S). If S is behind, apply the events up to L to the
//     shadows; if S is ahead, move the group's offset forward to S (its events
//     are already in the shadows). Then rename the shadows over the live tables,
//     set the checkpoint to the later of the two and bump its generation (live
//     workers drop their caches), and commit. The live group continues from the
//     event after it: no event is lost or applied twice. The offset row is always
//     updated, so a subscriber transaction that began before the swap fails with a
//     serialization error and reads again, never from the replaced tables.

// RebuildOptions tune a rebuild. The zero value is usable.
type RebuildOptions struct {
	// BatchSize is how many events one ReadForFold returns (default 10,000).
	BatchSize int
	// Group is the live consumer group whose offset the swap aligns
	// (default UserStatusGroup).
	Group string
	// LockTimeout bounds each lock wait of the swap (default 10 s).
	LockTimeout time.Duration
	Logger      *slog.Logger
	// Progress, when set, is called after every batch read.
	Progress func(RebuildProgress)
	// GCPercent is the least GOGC (runtime/debug.SetGCPercent) while the log is
	// folded and written (default 400; negative: left as it is). The fold
	// allocates a record and a decoded event per event while the model it
	// builds stays live, so at the default of 100 the collector marks that model
	// again and again: about a fifth of the rebuild's CPU on a 2-core machine.
	// The price is a larger heap while the rebuild runs (up to 1+GCPercent/100
	// times the live model); a memory limit (GOMEMLIMIT) still bounds it. The
	// setting is the process's: twofactord replay runs nothing else meanwhile.
	GCPercent int
}

// RebuildProgress reports a rebuild under way.
type RebuildProgress struct {
	Phase    string // "read", "catch-up"
	Events   int64
	Position int64
	Elapsed  time.Duration
}

// RebuildStats says what a rebuild did.
type RebuildStats struct {
	ReadModel string
	// Events read from the log (including catch-up passes).
	Events  int64
	Users   int
	Tenants int
	// Position and Generation of the checkpoint after the swap.
	Position   int64
	Generation int64
	// GroupOffsetMoved: the shadows were ahead of the live group, whose offset was
	// moved forward at the swap. CaughtUpAtSwap counts events applied to the
	// shadows inside the swap because the live group was ahead.
	GroupOffsetMoved bool
	CaughtUpAtSwap   int64
	// StallsCleared counts the live group's stalls the swap healed.
	StallsCleared int
	// Fold is the time to read and fold the log; Write to COPY the shadows.
	Fold, Write, CatchUp, Swap, Total time.Duration
}

// EventsPerSecond is the rebuild's throughput over its whole duration.
// undecodable names the event that made a read of the log fail, when one of
// the limit events after position after cannot be decoded; otherwise it
// returns cause.
func (r *rebuilder) undecodable(ctx context.Context, after int64, limit int, cause error) error {
	if messaging.Transient(cause) {
		return cause
	}
	rows, err := r.pool.Query(ctx, `SELECT position, event_id::text, tenant_id, stream_id, stream_version, event_type, schema_version, payload::text
		FROM events e WHERE $1 = 0 OR (e.transaction_id, e.position) > (SELECT transaction_id, position FROM events WHERE position = $1)
		ORDER BY e.transaction_id, e.position LIMIT $2`, after, limit)
	if err != nil {
		return errors.Join(cause, err)
	}
	defer rows.Close()
	for rows.Next() {
		rec := &eventstore.Record{}
		var payload string
		if err := rows.Scan(&rec.Position, &rec.EventID, &rec.TenantID, &rec.StreamID, &rec.Version, &rec.Type, &rec.SchemaVersion, &payload); err != nil {
			return errors.Join(cause, err)
		}
		if _, err := eventstore.Decode(rec.Type, rec.SchemaVersion, []byte(payload)); err != nil {
			return &EventFailure{Record: rec, Err: err}
		}
	}
	if err := rows.Err(); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// explain turns a failure to write the folded model into the event at fault,
// when it is the data's: each stream's rows are written alone, under a
// savepoint (all rolled back); the first stream that fails is folded again
// from its first event, writing after each, and the event after which its rows
// cannot be stored is reported. A transient failure, or one no single stream
// reproduces, is returned as it is.
func (r *rebuilder) explain(ctx context.Context, shadow tableSet, cause error) error {
	if messaging.Transient(cause) {
		return cause
	}
	var failure error
	err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
		fails := func(ch *changes) (error, error) {
			if _, err := tx.Exec(ctx, `SAVEPOINT rebuild_probe`); err != nil {
				return nil, err
			}
			_, ferr := flush(ctx, tx, shadow, r.m, r.src, ch, "")
			if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT rebuild_probe`); err != nil {
				return nil, err
			}
			if ferr == nil || messaging.Transient(ferr) {
				return nil, nil
			}
			return ferr, nil
		}
		// culprit folds the stream again and returns the first event after
		// which its rows fail.
		culprit := func(streamID string, fold func(*eventstore.Record) (*changes, error)) error {
			recs, err := r.store.Load(ctx, streamID)
			if err != nil {
				return err
			}
			for _, rec := range recs {
				ch, err := fold(rec)
				if err != nil {
					failure = &EventFailure{Record: rec, Err: err}
					return nil
				}
				ferr, err := fails(ch)
				if err != nil {
					return err
				}
				if ferr != nil {
					failure = &EventFailure{Record: rec, Err: fmt.Errorf("the read-model rows of its stream cannot be stored: %w", ferr)}
					return nil
				}
			}
			return nil
		}
		for _, t := range r.m.tenants {
			ch := newChanges()
			ch.tenants[t.tenantID] = t
			ferr, err := fails(ch)
			if err != nil {
				return err
			}
			if ferr == nil {
				continue
			}
			fresh := &tenantEntry{tenantID: t.tenantID}
			return culprit(tenantStreamPrefix+t.tenantID, func(rec *eventstore.Record) (*changes, error) {
				ch := newChanges()
				ch.tenants[fresh.tenantID] = fresh
				return ch, fresh.apply(rec)
			})
		}
		for _, u := range r.m.users {
			if u.version == 0 {
				continue
			}
			ch := newChanges()
			ch.states[u.streamID], ch.rows[u.streamID] = u, u
			ferr, err := fails(ch)
			if err != nil {
				return err
			}
			if ferr == nil {
				continue
			}
			fresh := newUserEntry(u.streamID, u.tenantID, u.userID)
			return culprit(u.streamID, func(rec *eventstore.Record) (*changes, error) {
				ch := newChanges()
				ch.states[fresh.streamID], ch.rows[fresh.streamID] = fresh, fresh
				return ch, fresh.apply(rec)
			})
		}
		return nil
	})
	if err != nil {
		return errors.Join(cause, err)
	}
	if failure != nil {
		return failure
	}
	return cause
}

func (s RebuildStats) EventsPerSecond() float64 {
	if s.Total <= 0 {
		return 0
	}
	return float64(s.Events) / s.Total.Seconds()
}

// ErrRebuildRunning: another rebuild of the read model holds the lock.
var ErrRebuildRunning = errors.New("projections: a rebuild of this read model is already running")

// Rebuild rebuilds a read model from the events table while the service keeps
// running, and swaps it in (see the comment above). tenant_coverage is
// maintained by the user-status projector, so naming either rebuilds both.
func Rebuild(ctx context.Context, pool *pgxpool.Pool, store *eventstore.Store, readModel string, opts RebuildOptions) (RebuildStats, error) {
	start := time.Now()
	stats := RebuildStats{ReadModel: readModel}
	if readModel != UserStatusModel && readModel != CoverageModel {
		return stats, fmt.Errorf("projections: unknown read model %q (known: %s)", readModel, strings.Join(ReadModels(), ", "))
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 10_000
	}
	if opts.Group == "" {
		opts.Group = UserStatusGroup
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 10 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	log := opts.Logger.With("read_model", UserStatusModel)

	lockConn, err := pool.Acquire(ctx)
	if err != nil {
		return stats, err
	}
	defer lockConn.Release()
	var locked bool
	lockKey := "twofactor.rebuild." + UserStatusModel
	if err := lockConn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtext($1))`, lockKey).Scan(&locked); err != nil {
		return stats, err
	}
	if !locked {
		return stats, ErrRebuildRunning
	}
	defer lockConn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtext($1))`, lockKey) //nolint:errcheck

	if opts.GCPercent == 0 {
		opts.GCPercent = 400
	}
	if opts.GCPercent > 0 {
		if was := debug.SetGCPercent(opts.GCPercent); was < 0 || was > opts.GCPercent {
			// Off, or already higher: keep what the process chose.
			debug.SetGCPercent(was)
		} else {
			defer debug.SetGCPercent(was)
		}
	}

	live, shadow := liveTables, liveTables.shadow()
	if err := createShadows(ctx, pool, live, shadow); err != nil {
		return stats, err
	}
	keep := false
	defer func() {
		if !keep {
			dropShadows(context.WithoutCancel(ctx), pool, shadow)
		}
	}()

	r := &rebuilder{pool: pool, store: store, m: newModel(), opts: opts, start: start}
	r.src = memSource{m: r.m, store: store}

	// 2. Fold the whole log, then write it.
	t := time.Now()
	if err := r.read(ctx, "read", nil, nil); err != nil {
		return stats, err
	}
	stats.Fold = time.Since(t)
	log.Info("rebuild: log folded", "events", r.events, "users", len(r.m.users), "seconds", stats.Fold.Seconds())
	t = time.Now()
	if err := r.copyAll(ctx, live, shadow); err != nil {
		// explain writes stream by stream into the (empty) shadows, with the
		// live tables' indexes and constraints, as the swap would have them.
		// The halves of the write commit apart (copyAll), so the shadows are
		// made again, empty, first.
		if ierr := createShadows(ctx, pool, live, shadow); ierr != nil {
			return stats, errors.Join(err, ierr)
		}
		if ierr := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return indexShadows(ctx, tx, live, shadow) }); ierr != nil {
			return stats, errors.Join(err, ierr)
		}
		return stats, r.explain(ctx, shadow, err)
	}
	stats.Write = time.Since(t)

	// 3. Catch up with what committed meanwhile.
	t = time.Now()
	for pass := 0; pass < 20; pass++ {
		before := r.events
		ch := newChanges()
		if err := r.read(ctx, "catch-up", ch, nil); err != nil {
			return stats, err
		}
		if !ch.empty() {
			if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
				_, err := flush(ctx, tx, shadow, r.m, r.src, ch, "")
				return err
			}); err != nil {
				return stats, r.explain(ctx, shadow, err)
			}
		}
		if r.events-before < 1000 {
			break
		}
	}
	stats.CatchUp = time.Since(t)

	// 4. Swap.
	t = time.Now()
	if err := r.swap(ctx, live, shadow, &stats); err != nil {
		return stats, err
	}
	keep = true
	stats.Swap = time.Since(t)
	stats.Events = r.events
	stats.Users = len(r.m.users)
	stats.Tenants = len(r.m.tenants)
	stats.Total = time.Since(start)
	log.Info("rebuild: swapped in", "events", stats.Events, "users", stats.Users, "position", stats.Position,
		"group_offset_moved", stats.GroupOffsetMoved, "events_per_second", int64(stats.EventsPerSecond()))
	return stats, nil
}

type rebuilder struct {
	pool   *pgxpool.Pool
	store  *eventstore.Store
	m      *model
	src    memSource
	opts   RebuildOptions
	start  time.Time
	events int64
	// last is the last event folded, in log order (S).
	last *eventstore.Record
}

// memSource: during a rebuild the model holds every stream seen so far, so a
// stream it does not hold is new.
type memSource struct {
	m     *model
	store *eventstore.Store
}

func (memSource) user(context.Context, string) (*userEntry, error)     { return nil, nil }
func (memSource) tenant(context.Context, string) (*tenantEntry, error) { return nil, nil }
func (memSource) tenantUsers(context.Context, string, map[string]*userEntry) ([]*userEntry, error) {
	return nil, nil
}
func (s memSource) streamAfter(ctx context.Context, streamID string, after int64) ([]*eventstore.Record, error) {
	return s.store.LoadAfter(ctx, streamID, after)
}

// before reports whether record a comes before the pair (xid, pos) in log order.
func before(a *eventstore.Record, xid uint64, pos int64) bool {
	return a.TransactionID < xid || (a.TransactionID == xid && a.Position < pos)
}

// read folds the log after r.last until ReadForFold returns nothing, or (with until)
// until the event at until is folded.
//
// Reading is the slow part (the database sends the rows, Go decodes their JSON),
// so batches are read several at a time: one cheap index-only query finds where
// each batch of the committed log ends, then workers read the batches with
// eventstore.ReadForFold in parallel while the events are folded in order. The
// boundaries stay valid while new transactions commit: those all order after
// them (their transaction ids are above the horizon the boundaries were taken
// under). What committed after the boundaries is then read batch by batch.
func (r *rebuilder) read(ctx context.Context, phase string, ch *changes, until *eventstore.Record) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The initial fold writes everything at the end: what a batch changed is
	// not needed, and one scratch set, emptied between batches, keeps its maps'
	// room instead of growing new ones for every batch.
	var discard *changes
	if ch == nil {
		discard = newChanges()
	}
	fold := func(recs []*eventstore.Record) (bool, error) {
		scratch := ch
		if ch == nil {
			scratch = discard
			clear(scratch.states)
			clear(scratch.rows)
			clear(scratch.tenants)
			clear(scratch.recompute)
		}
		for _, rec := range recs {
			if until != nil && !before(rec, until.TransactionID, until.Position) && rec.Position != until.Position {
				return true, nil
			}
			if err := r.m.apply(ctx, r.src, scratch, rec); err != nil {
				return true, &EventFailure{Record: rec, Err: err}
			}
			r.events++
			r.last = rec
			if until != nil && rec.Position == until.Position {
				return true, nil
			}
		}
		if r.opts.Progress != nil && len(recs) > 0 {
			r.opts.Progress(RebuildProgress{Phase: phase, Events: r.events, Position: r.last.Position, Elapsed: time.Since(r.start)})
		}
		return false, nil
	}
	// next reads the batch after r.last and folds it; end: the log has no
	// more (or until was reached).
	next := func() (end bool, err error) {
		after := int64(0)
		if r.last != nil {
			after = r.last.Position
		}
		recs, err := r.store.ReadForFold(ctx, after, r.opts.BatchSize)
		if err != nil {
			return true, r.undecodable(ctx, after, r.opts.BatchSize, err)
		}
		if len(recs) == 0 {
			return true, nil
		}
		return fold(recs)
	}
	// The boundaries take PostgreSQL a pass over the whole index (most of a
	// second for a million events), during which Go would wait: batches are
	// read and folded one after the other meanwhile. When the boundaries come,
	// the parallel reads continue from the boundary the fold has reached; if
	// it has reached none (a short batch), it goes on alone.
	type boundsResult struct {
		bounds []int64
		err    error
	}
	boundsCh := make(chan boundsResult, 1)
	go func(last *eventstore.Record) {
		b, err := r.boundaries(ctx, last)
		boundsCh <- boundsResult{b, err}
	}(r.last)
	first := int64(0)
	if r.last != nil {
		first = r.last.Position
	}
	var bounds []int64
wait:
	for {
		select {
		case b := <-boundsCh:
			if b.err != nil {
				return b.err
			}
			bounds = b.bounds
			if r.last != nil && r.last.Position != first {
				// Batches of BatchSize from first end at the boundaries,
				// which are every BatchSize-th event from first in the same
				// order: find the one reached.
				reached := -1
				for i, p := range bounds {
					if p == r.last.Position {
						reached = i
						break
					}
				}
				bounds = bounds[reached+1:]
				if reached < 0 {
					bounds = nil
				}
				first = r.last.Position
			}
			break wait
		default:
		}
		if end, err := next(); end || err != nil {
			return err
		}
	}
	type batch struct {
		recs []*eventstore.Record
		err  error
	}
	// Batch i reads after bounds[i-1] (first for i = 0) and ends at bounds[i];
	// after the last boundary, batches follow one another until the log ends.
	const workers = 3
	results := make([]chan batch, len(bounds))
	for i := range results {
		results[i] = make(chan batch, 1)
	}
	todo := make(chan int)
	for w := 0; w < workers; w++ {
		go func() {
			for i := range todo {
				after := first
				if i > 0 {
					after = bounds[i-1]
				}
				recs, err := r.store.ReadForFold(ctx, after, r.opts.BatchSize)
				if err != nil {
					err = r.undecodable(ctx, after, r.opts.BatchSize, err)
				}
				if err == nil && (len(recs) == 0 || recs[len(recs)-1].Position != bounds[i]) {
					err = fmt.Errorf("projections: batch after %d does not end at %d", after, bounds[i])
				}
				results[i] <- batch{recs, err}
			}
		}()
	}
	// At most a few batches are read ahead of the fold.
	ahead := make(chan struct{}, workers+2)
	go func() {
		defer close(todo)
		for i := range bounds {
			select {
			case ahead <- struct{}{}:
			case <-ctx.Done():
				return
			}
			select {
			case todo <- i:
			case <-ctx.Done():
				return
			}
		}
	}()
	for i := range bounds {
		var b batch
		select {
		case b = <-results[i]:
		case <-ctx.Done():
			return ctx.Err()
		}
		<-ahead
		if b.err != nil {
			return b.err
		}
		if done, err := fold(b.recs); done || err != nil {
			return err
		}
	}
	for {
		if end, err := next(); end || err != nil {
			return err
		}
	}
}

// boundaries returns the position of every BatchSize-th committed event after
// last, in log order (one index-only pass over events).
func (r *rebuilder) boundaries(ctx context.Context, last *eventstore.Record) ([]int64, error) {
	xid, pos := "0", int64(0)
	if last != nil {
		xid, pos = strconv.FormatUint(last.TransactionID, 10), last.Position
	}
	rows, err := r.pool.Query(ctx, `SELECT position FROM (
			SELECT position, row_number() OVER (ORDER BY transaction_id, position) AS n FROM events
			WHERE (transaction_id, position) > ($1::xid8, $2) AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
		) s WHERE n % $3 = 0 ORDER BY n`, xid, pos, r.opts.BatchSize)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// copyAll writes the whole model into the (empty) shadow tables, then gives
// them the live tables' indexes: building an index once over the loaded rows
// costs PostgreSQL much less than maintaining it row by row during the COPY.
//
// The write is split in two halves that run at the same time, each in its own
// transaction on its own connection: user_status_state (the largest rows, whose
// state Go encodes as JSON while the COPY streams them) on one side, and
// user_status, tenant_policies and tenant_coverage on the other. A COPY, an
// index build and an ANALYZE each keep one PostgreSQL backend busy, and Go's
// encoding another core: one after the other they left a core idle for most of
// the write. The shadows need no single transaction: nothing reads them before
// the swap, and a failed write is undone by the caller (createShadows).
func (r *rebuilder) copyAll(ctx context.Context, live, t tableSet) error {
	var tenants, rows [][]any
	coverage := map[[2]string]*[3]int64{}
	for _, te := range r.m.tenants {
		if te.exists {
			policy, err := json.Marshal(te.policy)
			if err != nil {
				return err
			}
			tenants = append(tenants, []any{te.tenantID, te.name, json.RawMessage(policy), te.version, te.position, te.eventAt})
		}
	}
	// The users in a slice: the state COPY walks it, from another goroutine,
	// after this loop has set every user's stored contribution.
	users := make([]*userEntry, 0, len(r.m.users))
	for _, u := range r.m.users {
		users = append(users, u)
		row := deriveRow(u, policyOf(r.m.tenants[u.tenantID]))
		u.stored = row.contribution()
		if row != nil {
			rows = append(rows, copyRow(row))
			k := [2]string{u.tenantID, string(row.StatusBase)}
			c := coverage[k]
			if c == nil {
				c = &[3]int64{}
				coverage[k] = c
			}
			c[0]++
			if u.stored.enabled {
				c[1]++
			}
			if u.stored.requiredNotEnrolled {
				c[2]++
			}
		}
	}
	var cov [][]any
	for k, c := range coverage {
		cov = append(cov, []any{k[0], k[1], c[0], c[1], c[2]})
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var once sync.Once
	var first error
	// load COPYs into the shadow tables of one half, indexes and analyzes them,
	// in one transaction; a failure cancels the other half.
	load := func(copies []shadowCopy) error {
		err := pgx.BeginFunc(ctx, r.pool, func(tx pgx.Tx) error {
			for _, c := range copies {
				var cols []string
				for _, col := range strings.Split(c.cols, ",") {
					cols = append(cols, strings.TrimSpace(col))
				}
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{c.shadow}, cols, c.src); err != nil {
					return fmt.Errorf("projections: copy into %s: %w", c.shadow, err)
				}
			}
			for _, c := range copies {
				if err := indexShadow(ctx, tx, c.live, c.shadow); err != nil {
					return err
				}
				if _, err := tx.Exec(ctx, "ANALYZE "+ident(c.shadow)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			// The first failure is the cause; the other half's is then
			// mostly the cancellation.
			once.Do(func() { first = err })
			cancel()
		}
		return err
	}
	// The states are encoded as the COPY asks for them: no second copy of
	// every state in memory, and the encoding overlaps PostgreSQL's work.
	i := 0
	states := pgx.CopyFromFunc(func() ([]any, error) {
		if i == len(users) {
			return nil, nil
		}
		u := users[i]
		i++
		return copyState(u)
	})
	stateDone := make(chan struct{})
	go func() {
		defer close(stateDone)
		_ = load([]shadowCopy{{live.state, t.state, stateColumnList, states}})
	}()
	_ = load([]shadowCopy{
		{live.tenants, t.tenants, "tenant_id, name, policy, version, position, updated_at", pgx.CopyFromRows(tenants)},
		{live.status, t.status, statusColumns, pgx.CopyFromRows(rows)},
		{live.coverage, t.coverage, "tenant_id, status_base, users, enabled, required_not_enrolled", pgx.CopyFromRows(cov)},
	})
	<-stateDone
	return first
}

// shadowCopy is one shadow table to load: its live table (for the indexes),
// its columns and its rows.
type shadowCopy struct {
	live, shadow, cols string
	src                pgx.CopyFromSource
}

func createShadows(ctx context.Context, pool *pgxpool.Pool, live, shadow tableSet) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		for i, name := range shadow.all() {
			if _, err := tx.Exec(ctx, `DROP TABLE IF EXISTS `+ident(name)); err != nil {
				return err
			}
			// Without indexes (and so without the primary key): copyAll builds
			// them after loading the rows (indexShadows).
			if _, err := tx.Exec(ctx, `CREATE TABLE `+ident(name)+` (LIKE `+ident(live.all()[i])+` INCLUDING ALL EXCLUDING INDEXES)`); err != nil {
				return fmt.Errorf("projections: create %s: %w", name, err)
			}
		}
		return nil
	})
}

// indexShadows gives each shadow table the indexes and index-backed
// constraints (primary key, unique) of its live table, named as the swap
// expects (renameIndexes): the shadow's name followed by what follows the live
// table's name in the live index's.
func indexShadows(ctx context.Context, tx pgx.Tx, live, shadow tableSet) error {
	for i, table := range live.all() {
		if err := indexShadow(ctx, tx, table, shadow.all()[i]); err != nil {
			return err
		}
	}
	return nil
}

// indexShadow gives the shadow table target the indexes of the live table.
func indexShadow(ctx context.Context, tx pgx.Tx, table, target string) error {
	rows, err := tx.Query(ctx, `SELECT ix.relname, pg_get_indexdef(i.indexrelid), coalesce(c.conname, ''),
			coalesce(pg_get_constraintdef(c.oid), '')
		FROM pg_index i JOIN pg_class ix ON ix.oid = i.indexrelid
		LEFT JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
		WHERE i.indrelid = $1::regclass ORDER BY ix.relname`, ident(table))
	if err != nil {
		return err
	}
	type index struct{ name, def, constraint, constraintDef string }
	indexes, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (index, error) {
		var x index
		return x, row.Scan(&x.name, &x.def, &x.constraint, &x.constraintDef)
	})
	if err != nil {
		return err
	}
	rename := func(name string) string {
		if rest, ok := strings.CutPrefix(name, table); ok {
			return target + rest
		}
		return target + "_" + name
	}
	for _, x := range indexes {
		var stmt string
		if x.constraint != "" {
			stmt = `ALTER TABLE ` + ident(target) + ` ADD CONSTRAINT ` + ident(rename(x.constraint)) + ` ` + x.constraintDef
		} else {
			// "CREATE [UNIQUE] INDEX name ON schema.table USING …": the same
			// definition on the shadow.
			head, _, ok1 := strings.Cut(x.def, " INDEX ")
			_, using, ok2 := strings.Cut(x.def, " USING ")
			if !ok1 || !ok2 {
				return fmt.Errorf("projections: cannot read the definition of index %s: %s", x.name, x.def)
			}
			stmt = head + ` INDEX ` + ident(rename(x.name)) + ` ON ` + ident(target) + ` USING ` + using
		}
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("projections: index %s: %w", target, err)
		}
	}
	return nil
}

func dropShadows(ctx context.Context, pool *pgxpool.Pool, shadow tableSet) {
	for _, name := range shadow.all() {
		_, _ = pool.Exec(ctx, `DROP TABLE IF EXISTS `+ident(name))
	}
}

// offsetsTable holds the consumer groups' offsets on the event log: the
// (transaction id, position) of the last event each acknowledged
// (eventstore.LogSchema).
var offsetsTable = wsql.DefaultPostgreSQLOffsetsAdapter{}.MessagesOffsetsTable(eventstore.Topic)

func (r *rebuilder) swap(ctx context.Context, live, shadow tableSet, stats *RebuildStats) error {
	tx, err := r.pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.ReadCommitted})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '`+strconv.FormatInt(r.opts.LockTimeout.Milliseconds(), 10)+`ms'`); err != nil {
		return err
	}
	group := r.opts.Group
	if _, err := tx.Exec(ctx, `INSERT INTO `+offsetsTable+` (consumer_group, offset_acked, last_processed_transaction_id)
		VALUES ($1, 0, '0') ON CONFLICT DO NOTHING`, group); err != nil {
		return err
	}
	var acked int64
	var ackedXID string
	if err := tx.QueryRow(ctx, `SELECT offset_acked, last_processed_transaction_id::text FROM `+offsetsTable+`
		WHERE consumer_group = $1 FOR UPDATE`, group).Scan(&acked, &ackedXID); err != nil {
		return fmt.Errorf("projections: lock the offset of %s: %w", group, err)
	}
	// L: the event the live group acknowledged last.
	var l *eventstore.Record
	if acked != 0 || ackedXID != "0" {
		l = &eventstore.Record{}
		var xid string
		err := tx.QueryRow(ctx, `SELECT transaction_id::text, position, event_id::text FROM events
			WHERE transaction_id = $1::xid8 AND position = $2`, ackedXID, acked).
			Scan(&xid, &l.Position, &l.EventID)
		if err != nil {
			return fmt.Errorf("projections: event acknowledged by %s: %w", group, err)
		}
		if l.TransactionID, err = strconv.ParseUint(xid, 10, 64); err != nil {
			return err
		}
	}
	s := r.last
	switch {
	case l != nil && (s == nil || before(s, l.TransactionID, l.Position)):
		// The live group is ahead: bring the shadows to L.
		n := r.events
		ch := newChanges()
		if err := r.read(ctx, "swap", ch, l); err != nil {
			return err
		}
		if r.last == nil || r.last.Position != l.Position {
			return fmt.Errorf("projections: could not reach the live group's position %d", l.Position)
		}
		if _, err := flush(ctx, tx, shadow, r.m, r.src, ch, ""); err != nil {
			return r.explain(ctx, shadow, err)
		}
		stats.CaughtUpAtSwap = r.events - n
		if _, err := tx.Exec(ctx, `UPDATE `+offsetsTable+` SET offset_acked = offset_acked WHERE consumer_group = $1`, group); err != nil {
			return err
		}
	case s != nil && (l == nil || before(l, s.TransactionID, s.Position)):
		// The shadows are ahead: the live group continues after S.
		if _, err := tx.Exec(ctx, `UPDATE `+offsetsTable+` SET offset_acked = $2, last_processed_transaction_id = $3::xid8
			WHERE consumer_group = $1`, group, s.Position, strconv.FormatUint(s.TransactionID, 10)); err != nil {
			return err
		}
		stats.GroupOffsetMoved = true
	default:
		// Same place. Still write the row, so a subscriber transaction that began
		// before this one fails to lock it and starts again after the swap.
		if _, err := tx.Exec(ctx, `UPDATE `+offsetsTable+` SET offset_acked = offset_acked WHERE consumer_group = $1`, group); err != nil {
			return err
		}
	}
	final := r.last
	// Take the live tables together, in the order queries take them (Coverage
	// reads tenant_coverage before user_status), so a reader never deadlocks with
	// the swap: it finishes first, or waits for the new tables.
	if _, err := tx.Exec(ctx, `LOCK TABLE `+ident(live.coverage)+`, `+ident(live.status)+`, `+ident(live.tenants)+`, `+
		ident(live.state)+` IN ACCESS EXCLUSIVE MODE`); err != nil {
		return fmt.Errorf("projections: lock the live tables: %w", err)
	}
	for i, name := range live.all() {
		old := name + "_replaced"
		for _, stmt := range []string{
			`ALTER TABLE ` + ident(name) + ` RENAME TO ` + ident(old),
			`ALTER TABLE ` + ident(shadow.all()[i]) + ` RENAME TO ` + ident(name),
			`DROP TABLE ` + ident(old),
		} {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("projections: swap %s: %w", name, err)
			}
		}
		if err := renameIndexes(ctx, tx, name, shadow.all()[i]); err != nil {
			return err
		}
	}
	xid, pos := "0", int64(0)
	if final != nil {
		xid, pos = strconv.FormatUint(final.TransactionID, 10), final.Position
	}
	if err := tx.QueryRow(ctx, `UPDATE read_model_checkpoints SET generation = generation + 1, transaction_id = $2::xid8,
		position = $3, updated_at = now(), rebuilt_at = now() WHERE read_model = $1 RETURNING generation`,
		UserStatusModel, xid, pos).Scan(&stats.Generation); err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, ReadModelsChannel, UserStatusModel); err != nil {
		return err
	}
	// The new tables hold every event, those the live group isolated or held
	// back included: its stalls are healed.
	tag, err := tx.Exec(ctx, `DELETE FROM consumer_stalls WHERE consumer = $1`, group)
	if err != nil {
		return err
	}
	stats.StallsCleared = int(tag.RowsAffected())
	stats.Position = pos
	return tx.Commit(ctx)
}

// renameIndexes gives the indexes of a swapped-in table the names they would
// have had on the live table (LIKE names them after the shadow).
func renameIndexes(ctx context.Context, tx pgx.Tx, table, shadowName string) error {
	rows, err := tx.Query(ctx, `SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1`, table)
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, n := range names {
		rest, ok := strings.CutPrefix(n, shadowName)
		if !ok {
			continue
		}
		target := table + rest
		var taken bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, ident(target)).Scan(&taken); err != nil {
			return err
		}
		if taken {
			continue
		}
		if _, err := tx.Exec(ctx, `ALTER INDEX `+ident(n)+` RENAME TO `+ident(target)); err != nil {
			return err
		}
	}
	return nil
}
