// Package projections holds the read models of the query side: Postgres tables
// kept up to date by idempotent projectors (watermill handlers in their own
// consumer groups), the queries the API answers from them, and their rebuild
// from the event log.
//
// The user-status projector maintains, in one transaction per batch:
//   - user_status: one row per user of a tenant (get, list with filters);
//   - tenant_coverage: per tenant, counts by time-independent status;
//   - tenant_policies: each tenant's policy, which the rows are derived under;
//   - user_status_state: the aggregate state each row reflects, at its version.
//
// Every row is derived with the domain's own code (UserTwoFactor.Apply and
// Snapshot), the same the commands decide with, so live projection, a rebuild and
// the commands agree.
package projections

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/messaging"
)

const (
	// UserStatusModel names the user-status read model (user_status,
	// tenant_coverage and tenant_policies, maintained together) in
	// read_model_checkpoints, metrics and `twofactord replay --read-model`.
	// WARNING: durable name (its checkpoint row is keyed by it).
	UserStatusModel = "user_status"
	// CoverageModel is the tenant_coverage read model; it is maintained by the
	// user-status projector, so it is rebuilt and checkpointed with it.
	CoverageModel = "tenant_coverage"

	// UserStatusGroup is the consumer group (and watermill handler name) of the
	// user-status projector.
	// WARNING: durable name: renaming it replays the whole history into the projector.
	UserStatusGroup = "projection.user_status"

	// ReadModelsChannel is notified with a read model's name whenever it commits
	// a batch; read-your-writes waits listen on it.
	ReadModelsChannel = "twofactor_read_models"
)

// ReadModels lists the names `twofactord replay --read-model` accepts.
func ReadModels() []string { return []string{UserStatusModel, CoverageModel} }

// ProjectorOptions tune a projector. The zero value is usable.
type ProjectorOptions struct {
	// Group overrides the consumer group (benchmarks run several side by side).
	Group string
	// CacheSize bounds how many user states stay in memory between batches
	// (default 20,000); the rest are read from user_status_state when needed.
	CacheSize int
	Logger    *slog.Logger
	// Metrics, when set, counts applied events and times the writes.
	Metrics *Metrics
}

// Projector is the live user-status projector: a watermill handler that folds
// each event into the entry of its stream and writes the changed rows once per
// subscriber batch, inside the subscriber's transaction (so the rows, the
// checkpoint and the consumer group's offset commit together).
//
// Idempotency: every entry knows the stream version it reflects; an event at or
// below it is a duplicate and changes nothing (Duplicator, redelivery after a
// crash or a failed commit). The state rows are written with a version guard as
// well, so a stale memory can never overwrite a newer row.
//
// Between batches the entries stay cached. The cache is trusted only while the
// checkpoint row is exactly what this process last committed: another worker of
// the group, or a rebuild swap (which bumps the generation), clears it.
type Projector struct {
	pool    *pgxpool.Pool
	store   *eventstore.Store
	group   string
	tables  tableSet
	limit   int
	logger  *slog.Logger
	metrics *Metrics

	mu        sync.Mutex
	cache     *model
	committed checkpointKey
	// stalled: tenants whose events are held back (consumer_stalls), as of
	// the current transaction.
	stalled map[string]bool
	// careful: a batch failed for good; the next one is written event by event
	// to isolate the event at fault.
	careful bool
}

type checkpointKey struct {
	generation, position int64
}

// NewProjector returns the user-status projector.
func NewProjector(pool *pgxpool.Pool, store *eventstore.Store, opts ProjectorOptions) *Projector {
	p := &Projector{pool: pool, store: store, group: opts.Group, tables: liveTables, limit: opts.CacheSize,
		logger: opts.Logger, metrics: opts.Metrics, cache: newModel()}
	if p.group == "" {
		p.group = UserStatusGroup
	}
	if p.limit <= 0 {
		p.limit = 20_000
	}
	if p.logger == nil {
		p.logger = slog.New(slog.DiscardHandler)
	}
	return p
}

// Consumer is the projector's consumer group for messaging.NewRouter.
func (p *Projector) Consumer() messaging.Consumer {
	return messaging.Consumer{Name: p.group, Handle: p.Handle}
}

// Handle applies one event of the log (a message of the event topic).
//
// An event the projector can never apply (it cannot be decoded or folded, or
// its rows cannot be stored) is isolated instead of failing the batch forever:
// the batch is read again in careful mode, where each event is applied and
// written under a savepoint of its own; the one that fails permanently is
// recorded in consumer_stalls (in the same transaction as the offset), its
// tenant is stalled and every later event of that tenant held back, and the
// projector goes on with the other tenants. Transient errors are returned, for
// messaging's retry.
func (p *Projector) Handle(msg *message.Message) error {
	rec, decodeErr := decodeMessage(msg)
	if rec == nil {
		return decodeErr
	}
	ctx := msg.Context()
	tx, ok := messaging.TxFromMessage(msg)
	if !ok {
		return p.handleAlone(ctx, rec, decodeErr)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	b := tx.Hook(p, func() messaging.TxHook { return &txBatch{p: p, ch: newChanges()} }).(*txBatch)
	if b.sealed {
		// The subscriber gave up on this message (shutdown, ack deadline) and its
		// batch is being written or is over: applying it now would change the
		// memory but not the database. It is delivered again.
		return messaging.ErrTxDone
	}
	var failed error
	err := tx.Use(func(ptx pgx.Tx) error {
		if !b.started {
			if err := p.begin(ctx, ptx); err != nil {
				return err
			}
			b.started = true
			b.careful = p.careful
		}
		switch {
		case p.stalled[rec.TenantID]:
			return p.holdBack(ctx, ptx, b, rec)
		case b.careful:
			return p.applyCarefully(ctx, ptx, b, rec, decodeErr)
		}
		err := decodeErr
		if err == nil {
			err = p.cache.apply(ctx, p.source(ptx), b.ch, rec)
		}
		if err != nil && !messaging.Transient(err) {
			failed = &EventFailure{Record: rec, Err: err}
			return nil
		}
		return err
	})
	if errors.Is(err, errStale) {
		// Another worker wrote these rows: read the batch again, as when
		// BeforeCommit finds it.
		tx.Abandon(err)
		return nil
	}
	if failed != nil {
		p.careful = true
		p.logger.Warn("an event cannot be projected; reading its batch again one event at a time to isolate it",
			"group", p.group, "error", reason(failed))
		tx.Abandon(failed)
	}
	return err
}

// holdBack skips an event of a stalled tenant: applied after the event that
// could not be, it would build on a state that is not the stream's. The
// checkpoint still moves past it (other tenants' reads wait for it).
func (p *Projector) holdBack(ctx context.Context, tx pgx.Tx, b *txBatch, rec *eventstore.Record) error {
	if _, err := tx.Exec(ctx, `UPDATE consumer_stalls SET held_back = held_back + 1 WHERE consumer = $1 AND tenant_id = $2`,
		p.group, rec.TenantID); err != nil {
		return err
	}
	b.heldBack++
	if b.careful {
		return p.writeCheckpoint(ctx, tx, b, rec)
	}
	b.ch.last = rec
	return nil
}

// writeCheckpoint moves the checkpoint past rec, which changed no row.
func (p *Projector) writeCheckpoint(ctx context.Context, tx pgx.Tx, b *txBatch, rec *eventstore.Record) error {
	ch := newChanges()
	ch.last = rec
	w, err := flush(ctx, tx, p.tables, p.cache, p.source(tx), ch, UserStatusModel)
	if err != nil {
		return err
	}
	b.wrote(w, time.Now())
	return nil
}

// applyCarefully applies and writes one event under a savepoint, and isolates
// it when that fails for good.
func (p *Projector) applyCarefully(ctx context.Context, tx pgx.Tx, b *txBatch, rec *eventstore.Record, decodeErr error) error {
	start := time.Now()
	if _, err := tx.Exec(ctx, `SAVEPOINT projection_event`); err != nil {
		return err
	}
	ch := newChanges()
	err := decodeErr
	if err == nil {
		err = p.cache.apply(ctx, p.source(tx), ch, rec)
	}
	var w written
	if err == nil {
		w, err = flush(ctx, tx, p.tables, p.cache, p.source(tx), ch, UserStatusModel)
	}
	if err == nil {
		if _, err := tx.Exec(ctx, `RELEASE SAVEPOINT projection_event`); err != nil {
			return err
		}
		b.applied += ch.applied
		b.duplicates += ch.duplicates
		b.wrote(w, start)
		return nil
	}
	if _, rerr := tx.Exec(context.WithoutCancel(ctx), `ROLLBACK TO SAVEPOINT projection_event`); rerr != nil {
		return errors.Join(err, rerr)
	}
	// The memory may hold part of the event: read it back from the transaction.
	p.cache = newModel()
	if messaging.Transient(err) || errors.Is(err, errStale) {
		return err
	}
	return p.isolate(ctx, tx, b, &EventFailure{Record: rec, Err: err})
}

// isolate records an event that can never be applied and stalls its tenant.
func (p *Projector) isolate(ctx context.Context, tx pgx.Tx, b *txBatch, f *EventFailure) error {
	r := f.Record
	why := reason(f.Err)
	if _, err := tx.Exec(ctx, `INSERT INTO consumer_stalls (consumer, tenant_id, position, event_id, event_type, stream_id, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (consumer, tenant_id) DO NOTHING`,
		p.group, r.TenantID, r.Position, r.EventID, r.Type, r.StreamID, why); err != nil {
		return err
	}
	if err := p.writeCheckpoint(ctx, tx, b, r); err != nil {
		return err
	}
	p.stalled[r.TenantID] = true
	b.isolated = append(b.isolated, Stall{Consumer: p.group, TenantID: r.TenantID, Position: r.Position, EventID: r.EventID,
		EventType: r.Type, StreamID: r.StreamID, Reason: why})
	return nil
}

func (p *Projector) source(tx pgx.Tx) sqlSource {
	return sqlSource{tx: tx, tables: p.tables, store: p.store}
}

// begin validates the cache against the checkpoint at the start of a
// transaction, and reads which tenants are stalled.
func (p *Projector) begin(ctx context.Context, tx pgx.Tx) error {
	var k checkpointKey
	var stalled []string
	// One round trip for both: this runs for every batch.
	err := queryIsolated(ctx, tx, `SELECT generation, position,
			ARRAY(SELECT tenant_id FROM consumer_stalls WHERE consumer = $2)
		FROM read_model_checkpoints WHERE read_model = $1`, []any{UserStatusModel, p.group},
		func(rows pgx.Rows) error { return rows.Scan(&k.generation, &k.position, &stalled) })
	if err != nil {
		return fmt.Errorf("projections: read checkpoint: %w", err)
	}
	if k != p.committed {
		p.cache = newModel()
		p.committed = k
	}
	p.stalled = make(map[string]bool, len(stalled))
	for _, id := range stalled {
		p.stalled[id] = true
	}
	return nil
}

// decodeMessage reads what the projector needs of an event message: the
// envelope and the event (not the metadata, which messaging.DecodeMessage also
// decodes; a third of the decoding time). The record is nil when the envelope
// cannot be read (the message is then not an event, and goes to the poison
// queue); an event that cannot be decoded comes with its record, to be isolated.
func decodeMessage(msg *message.Message) (*eventstore.Record, error) {
	var env eventstore.Envelope
	if err := json.Unmarshal(msg.Payload, &env); err != nil {
		return nil, fmt.Errorf("projections: decode envelope: %w", err)
	}
	rec := &eventstore.Record{Position: env.Position, EventID: env.EventID, TenantID: env.TenantID, StreamID: env.StreamID,
		Version: env.Version, Type: env.Type, SchemaVersion: env.SchemaVersion, Payload: env.Payload,
		RecordedAt: env.RecordedAt}
	e, err := eventstore.Decode(env.Type, env.SchemaVersion, env.Payload)
	if err != nil {
		return rec, err
	}
	rec.Event = e
	return rec, nil
}

// handleAlone applies a message that did not come with a subscriber transaction
// (another bus): one transaction of its own, serialised on the checkpoint row.
func (p *Projector) handleAlone(ctx context.Context, rec *eventstore.Record, decodeErr error) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := &txBatch{p: p, ch: newChanges(), careful: true}
	err := pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT 1 FROM read_model_checkpoints WHERE read_model = $1 FOR UPDATE`, UserStatusModel); err != nil {
			return err
		}
		if err := p.begin(ctx, tx); err != nil {
			return err
		}
		if p.stalled[rec.TenantID] {
			return p.holdBack(ctx, tx, b, rec)
		}
		return p.applyCarefully(ctx, tx, b, rec, decodeErr)
	})
	if err != nil {
		b.rollback()
		return err
	}
	b.commit()
	return nil
}

// txBatch is the projector's part of one subscriber transaction.
type txBatch struct {
	p       *Projector
	ch      *changes
	started bool
	// sealed: the batch is being written (or was rolled back); no more events.
	sealed bool
	start  time.Time
	next   checkpointKey
	w      written
	// careful: each event is written on its own, under a savepoint (see Handle).
	careful bool
	// Counts of careful mode, and what was held back or isolated.
	applied, duplicates, heldBack int
	isolated                      []Stall
}

// wrote accounts for one careful write.
func (b *txBatch) wrote(w written, start time.Time) {
	if b.start.IsZero() {
		b.start = start
		b.next = b.p.committed
	}
	b.w.rows += w.rows
	b.w.deleted += w.deleted
	b.w.states += w.states
	if w.checkpoint != 0 {
		b.next.position = w.checkpoint
	}
}

func (b *txBatch) BeforeCommit(ctx context.Context, tx pgx.Tx) error {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	b.sealed = true
	return b.write(ctx, tx)
}

func (b *txBatch) write(ctx context.Context, tx pgx.Tx) error {
	if b.ch.empty() {
		return nil
	}
	b.start = time.Now()
	w, err := flush(ctx, tx, b.p.tables, b.p.cache, b.p.source(tx), b.ch, UserStatusModel)
	if err != nil {
		switch {
		case errors.Is(err, errStale):
			b.p.logger.Warn("read model changed underneath the projector; reading the batch again", "group", b.p.group)
		case !messaging.Transient(err):
			// One of the batch's events cannot be stored: find it.
			b.p.careful = true
			b.p.logger.Warn("a batch cannot be written; reading it again one event at a time to isolate the event at fault",
				"group", b.p.group, "error", reason(err))
		}
		return err
	}
	b.w = w
	b.next = b.p.committed
	if w.checkpoint != 0 {
		b.next.position = w.checkpoint
	}
	return nil
}

func (b *txBatch) AfterCommit() {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	b.commit()
}

func (b *txBatch) commit() {
	p := b.p
	if !b.start.IsZero() {
		// What this transaction left in the checkpoint row: the cache matches it.
		p.committed = b.next
	}
	if b.careful {
		// The batch that failed is through, its culprit isolated.
		p.careful = false
	}
	for _, s := range b.isolated {
		p.logger.Error("event isolated: it can never be projected; its tenant is stalled until an operator heals it (README \"Stalled consumers\")",
			"consumer", s.Consumer, "tenant", s.TenantID, "position", s.Position, "event_id", s.EventID, "event_type", s.EventType,
			"stream", s.StreamID, "reason", s.Reason)
	}
	if p.metrics != nil {
		p.metrics.observeBatch(b.ch.applied+b.applied, b.ch.duplicates+b.duplicates, b.w, time.Since(b.start), !b.start.IsZero())
		p.metrics.observeStalls(p.group, len(b.isolated), b.heldBack)
	}
	p.trim()
}

func (b *txBatch) AfterRollback() {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	b.sealed = true
	b.rollback()
}

func (b *txBatch) rollback() {
	// The memory holds effects that were not committed: forget it.
	b.p.cache = newModel()
	b.p.committed = checkpointKey{}
}

// trim keeps the cache under its limit, dropping arbitrary entries (they are
// all committed at this point and can be read back).
func (p *Projector) trim() {
	if len(p.cache.users) <= p.limit {
		return
	}
	target := p.limit * 9 / 10
	for id := range p.cache.users {
		if len(p.cache.users) <= target {
			break
		}
		delete(p.cache.users, id)
	}
}
