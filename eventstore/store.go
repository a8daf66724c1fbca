// Package eventstore is the append-only PostgreSQL event log. The log is also
// the bus's topic: watermill-sql subscribers read the events table itself
// (LogSchema), so an event is written once, and it is on the bus exactly when
// it is in the log.
package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
)

// Topic is the watermill topic of the event log (LogSchema reads it from the
// events table). WARNING: durable name: the consumer groups' offsets are kept
// in watermill_offsets_twofactor_events (migrations/0001, 0013).
const Topic = "twofactor_events"

// UserStream is the stream holding all 2FA state of one user of a tenant.
func UserStream(tenantID, userID string) string { return "user:" + tenantID + ":" + userID }

// TenantStream holds a tenant's policy.
func TenantStream(tenantID string) string { return "tenant:" + tenantID }

// ErrConcurrency is matched by errors.Is on a version clash.
var ErrConcurrency = errors.New("eventstore: concurrent modification")

// ConcurrencyError: the stream is not at the version the writer decided from.
type ConcurrencyError struct {
	StreamID        string
	ExpectedVersion int64
}

func (e *ConcurrencyError) Error() string {
	return fmt.Sprintf("eventstore: stream %s is no longer at version %d", e.StreamID, e.ExpectedVersion)
}

func (e *ConcurrencyError) Is(target error) bool { return target == ErrConcurrency }

// Store appends to and reads from the events table.
type Store struct {
	pool  *pgxpool.Pool
	clock func() time.Time
}

// New returns a store. clock stamps recorded_at; it is injected so tests control time.
func New(pool *pgxpool.Pool, clock func() time.Time) *Store {
	return &Store{pool: pool, clock: clock}
}

// Pool exposes the pool to components that share the database (read models, vault).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Appended reports what an Append wrote.
type Appended struct {
	Records []*Record
	// Version is the stream's version after the append.
	Version int64
	// Position is the global position of the last event written: the log position a
	// reader waits for to read its own write.
	Position int64
}

// Append writes events at expectedVersion+1… in one transaction. A version clash returns a *ConcurrencyError and writes nothing.
func (s *Store) Append(ctx context.Context, tenantID, streamID string, expectedVersion int64, events []domain.Event, meta Metadata) (*Appended, error) {
	return s.AppendAfter(ctx, tenantID, streamID, expectedVersion, nil, events, meta)
}

// AppendAfter is Append for a writer that has read the stream up to
// expectedVersion: head is the Hash of the event at expectedVersion, which the
// transaction then does not read again (nil: it does). Events never change, so
// the hash of a version is the same whenever it is read; if the stream has
// moved on, the insert at expectedVersion+1 fails with a *ConcurrencyError as
// it does for Append. Inside a Unit (WithUnit) the events commit with the unit.
func (s *Store) AppendAfter(ctx context.Context, tenantID, streamID string, expectedVersion int64, head []byte, events []domain.Event, meta Metadata) (*Appended, error) {
	var out *Appended
	err := InTx(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		out, err = s.appendTx(ctx, tx, tenantID, streamID, expectedVersion, head, events, meta)
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// AppendTx is Append inside the caller's transaction: the events commit or roll
// back with it.
func (s *Store) AppendTx(ctx context.Context, tx pgx.Tx, tenantID, streamID string, expectedVersion int64, events []domain.Event, meta Metadata) (*Appended, error) {
	return s.appendTx(ctx, tx, tenantID, streamID, expectedVersion, nil, events, meta)
}

func (s *Store) appendTx(ctx context.Context, tx pgx.Tx, tenantID, streamID string, expectedVersion int64, head []byte, events []domain.Event, meta Metadata) (*Appended, error) {
	if len(events) == 0 {
		return nil, errors.New("eventstore: nothing to append")
	}
	meta.TenantID = tenantID
	now := s.clock().UTC().Truncate(time.Microsecond)
	if meta.OccurredAt.IsZero() {
		meta.OccurredAt = now
	}
	meta.OccurredAt = meta.OccurredAt.UTC().Truncate(time.Microsecond)
	rawMeta, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	prev := GenesisHash
	if expectedVersion > 0 && head != nil {
		prev = head
	} else if expectedVersion > 0 {
		err := tx.QueryRow(ctx, `SELECT hash FROM events WHERE stream_id = $1 AND stream_version = $2`,
			streamID, expectedVersion).Scan(&prev)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, &ConcurrencyError{StreamID: streamID, ExpectedVersion: expectedVersion}
		}
		if err != nil {
			return nil, fmt.Errorf("eventstore: read stream head: %w", err)
		}
	}
	records := make([]*Record, len(events))
	batch := &pgx.Batch{}
	for i, e := range events {
		payload, err := Encode(e)
		if err != nil {
			return nil, fmt.Errorf("eventstore: encode %s: %w", e.EventType(), err)
		}
		id, err := uuid.NewV7()
		if err != nil {
			return nil, err
		}
		r := &Record{
			EventID: id.String(), TenantID: tenantID, StreamID: streamID,
			Version: expectedVersion + int64(i) + 1, Type: e.EventType(), SchemaVersion: SchemaVersion,
			Payload: payload, RawMetadata: rawMeta, Metadata: meta, RecordedAt: now, PrevHash: prev, Event: e,
		}
		r.Hash = Hash(prev, r)
		prev = r.Hash
		records[i] = r
		batch.Queue(`INSERT INTO events (event_id, tenant_id, stream_id, stream_version, event_type,
			schema_version, payload, metadata, recorded_at, prev_hash, hash)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING position`,
			r.EventID, r.TenantID, r.StreamID, r.Version, r.Type, r.SchemaVersion,
			string(r.Payload), string(r.RawMetadata), r.RecordedAt, r.PrevHash, r.Hash,
		).QueryRow(func(row pgx.Row) error { return row.Scan(&r.Position) })
	}
	if err := tx.SendBatch(ctx, batch).Close(); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "events_stream_version_key" {
			return nil, &ConcurrencyError{StreamID: streamID, ExpectedVersion: expectedVersion}
		}
		return nil, fmt.Errorf("eventstore: insert events: %w", err)
	}
	last := records[len(records)-1]
	return &Appended{Records: records, Version: last.Version, Position: last.Position}, nil
}

const selectColumns = `position, event_id::text, tenant_id, stream_id, stream_version, event_type, schema_version,
	payload::text, metadata::text, recorded_at, transaction_id::text, prev_hash, hash`

func scanRecords(rows pgx.Rows) ([]*Record, error) {
	defer rows.Close()
	var out []*Record
	for rows.Next() {
		r := &Record{}
		var payload, meta, txid string
		err := rows.Scan(&r.Position, &r.EventID, &r.TenantID, &r.StreamID, &r.Version, &r.Type,
			&r.SchemaVersion, &payload, &meta, &r.RecordedAt, &txid, &r.PrevHash, &r.Hash)
		if err != nil {
			return nil, err
		}
		r.Payload = []byte(payload)
		r.RawMetadata = []byte(meta)
		r.RecordedAt = r.RecordedAt.UTC()
		if r.TransactionID, err = strconv.ParseUint(txid, 10, 64); err != nil {
			return nil, fmt.Errorf("eventstore: transaction id %q: %w", txid, err)
		}
		if err := r.decode(); err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// Load reads a whole stream in version order.
func (s *Store) Load(ctx context.Context, streamID string) ([]*Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+selectColumns+` FROM events WHERE stream_id = $1 ORDER BY stream_version`, streamID)
	if err != nil {
		return nil, fmt.Errorf("eventstore: load %s: %w", streamID, err)
	}
	return scanRecords(rows)
}

// ReadAll reads the whole log for replays, in the order the subscribers read it
// (LogSchema): by committing transaction, then position. Only transactions older than
// every running one are returned, so a transaction that commits late is never
// skipped by a reader that continues after the last record it saw. afterPosition
// is the Position of the last record of the previous batch (0 to start).
func (s *Store) ReadAll(ctx context.Context, afterPosition int64, limit int) ([]*Record, error) {
	if limit <= 0 {
		return nil, errors.New("eventstore: limit must be positive")
	}
	rows, err := s.queryLog(ctx, selectColumns, afterPosition, limit)
	if err != nil {
		return nil, fmt.Errorf("eventstore: read all: %w", err)
	}
	return scanRecords(rows)
}

// queryLog selects columns of the log's events after the one at afterPosition
// (0: from the start), in the topic's order. ORDER BY names the columns of
// events: a select list may carry a computed transaction id (text, or a
// bigint), and sorting by it would sort the whole remaining log without an index.
func (s *Store) queryLog(ctx context.Context, columns string, afterPosition int64, limit int) (pgx.Rows, error) {
	if afterPosition == 0 {
		return s.pool.Query(ctx, `SELECT `+columns+` FROM events
			WHERE transaction_id < pg_snapshot_xmin(pg_current_snapshot())
			ORDER BY events.transaction_id, events.position LIMIT $1`, limit)
	}
	var exists bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM events WHERE position = $1)`, afterPosition).Scan(&exists); err != nil {
		return nil, err
	}
	if !exists {
		return nil, fmt.Errorf("eventstore: no event at position %d", afterPosition)
	}
	return s.pool.Query(ctx, `SELECT `+columns+` FROM events
		WHERE (transaction_id, position) > (SELECT transaction_id, position FROM events WHERE position = $1)
		  AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY events.transaction_id, events.position LIMIT $2`, afterPosition, limit)
}

// ReadForFold is ReadAll for a reader that folds events into state (a rebuild
// of a read model): the same records in the same order, without what a fold
// never reads, so without its cost. Metadata, RawMetadata, PrevHash and Hash
// are left empty; the metadata's JSON is neither sent nor decoded (in a
// rebuild's profile, decoding it took more CPU than decoding the events).
func (s *Store) ReadForFold(ctx context.Context, afterPosition int64, limit int) ([]*Record, error) {
	if limit <= 0 {
		return nil, errors.New("eventstore: limit must be positive")
	}
	// The transaction id as a bigint (an xid8 is below 2^63): scanned as a
	// number, not parsed from text.
	const columns = `position, event_id::text, tenant_id, stream_id, stream_version, event_type, schema_version,
		payload::text, recorded_at, transaction_id::text::bigint`
	rows, err := s.queryLog(ctx, columns, afterPosition, limit)
	if err != nil {
		return nil, fmt.Errorf("eventstore: read all: %w", err)
	}
	defer rows.Close()
	var out []*Record
	for rows.Next() {
		r := &Record{}
		var txid int64
		if err := rows.Scan(&r.Position, &r.EventID, &r.TenantID, &r.StreamID, &r.Version, &r.Type, &r.SchemaVersion,
			&r.Payload, &r.RecordedAt, &txid); err != nil {
			return nil, err
		}
		r.RecordedAt = r.RecordedAt.UTC()
		r.TransactionID = uint64(txid)
		e, err := Decode(r.Type, r.SchemaVersion, r.Payload)
		if err != nil {
			return nil, err
		}
		r.Event = e
		out = append(out, r)
	}
	return out, rows.Err()
}
