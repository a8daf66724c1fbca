package eventstore

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
)

// CommandLoad is what a user command reads before it decides: the tenant's
// policy stream, and the user's snapshot (nil if none) with the user's events
// after it (the whole stream without a snapshot).
type CommandLoad struct {
	// Tenant holds the tenant stream's Version, Type, SchemaVersion, Payload and
	// Hash only, undecoded (Event is nil; see DecodeEvent): the policy changes
	// rarely, and the command service keeps it folded by the stream's head.
	Tenant   []*Record
	Snapshot *Snapshot
	// User records carry their event, RawMetadata and chain hashes, but Metadata
	// is not decoded: a command folds events and never reads who wrote them.
	User []*Record
}

// DecodeEvent decodes the record's payload into Event.
func (r *Record) DecodeEvent() error {
	e, err := Decode(r.Type, r.SchemaVersion, r.Payload)
	if err != nil {
		return err
	}
	r.Event = e
	return nil
}

// userSinceSnapshot reads a user's snapshot and the events after it in one
// statement, so both come from the same database snapshot (two statements
// could see a snapshot saved in between and skip the events before it). The
// snapshot, if any, is the first row (part 0), with its version in the
// stream_version column, its schema in schema_version, its state in payload
// and its MAC in hash; the events follow in version order (part 1).
const userSinceSnapshot = `WITH snap AS (
		SELECT version, schema, state::text AS state, mac, tenant_id FROM user_snapshots WHERE stream_id = $1)
	SELECT 0 AS part, NULL::bigint, NULL::text, tenant_id, NULL::text, version, NULL::text, schema, state,
		NULL::text, NULL::timestamptz, NULL::text, NULL::bytea, mac
	FROM snap
	UNION ALL
	SELECT 1, position, event_id::text, tenant_id, stream_id, stream_version, event_type, schema_version,
		payload::text, metadata::text, recorded_at, transaction_id::text, prev_hash, hash
	FROM events WHERE stream_id = $1 AND stream_version > COALESCE((SELECT version FROM snap), 0)
	ORDER BY 1, 6`

// LoadForCommand reads the tenant stream and the user's snapshot and events in
// one round trip (one pipelined batch of two statements). It reads the same
// rows as Load(tenantStream) and LoadSince(userStream). also, when set, adds
// the caller's own reads to the batch (the user's data key).
func (s *Store) LoadForCommand(ctx context.Context, tenantStream, userStream string, also func(*pgx.Batch)) (*CommandLoad, error) {
	batch := &pgx.Batch{}
	out := &CommandLoad{}
	batch.Queue(`SELECT stream_version, event_type, schema_version, payload::text, hash FROM events
		WHERE stream_id = $1 ORDER BY stream_version`, tenantStream).
		Query(func(rows pgx.Rows) error {
			defer rows.Close()
			for rows.Next() {
				r := &Record{StreamID: tenantStream}
				var payload string
				if err := rows.Scan(&r.Version, &r.Type, &r.SchemaVersion, &payload, &r.Hash); err != nil {
					return err
				}
				r.Payload = []byte(payload)
				out.Tenant = append(out.Tenant, r)
			}
			return rows.Err()
		})
	batch.Queue(userSinceSnapshot, userStream).Query(func(rows pgx.Rows) error {
		var err error
		out.Snapshot, out.User, err = scanSnapshotAndEvents(rows, userStream)
		return err
	})
	if also != nil {
		also(batch)
	}
	if err := s.pool.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("eventstore: load for command %s: %w", userStream, err)
	}
	return out, nil
}

// finish fills what scanning leaves raw and decodes the event (not the metadata).
func (r *Record) finish(payload, meta, txid string) error {
	r.Payload = []byte(payload)
	r.RawMetadata = []byte(meta)
	r.RecordedAt = r.RecordedAt.UTC()
	var err error
	if r.TransactionID, err = strconv.ParseUint(txid, 10, 64); err != nil {
		return fmt.Errorf("eventstore: transaction id %q: %w", txid, err)
	}
	r.Event, err = Decode(r.Type, r.SchemaVersion, r.Payload)
	return err
}

func scanSnapshotAndEvents(rows pgx.Rows, streamID string) (*Snapshot, []*Record, error) {
	defer rows.Close()
	var snap *Snapshot
	var out []*Record
	for rows.Next() {
		var part int
		var position *int64
		var eventID, stream, eventType, meta, txid *string
		var recordedAt *time.Time
		var prevHash []byte
		r := &Record{}
		var payload string
		if err := rows.Scan(&part, &position, &eventID, &r.TenantID, &stream, &r.Version, &eventType,
			&r.SchemaVersion, &payload, &meta, &recordedAt, &txid, &prevHash, &r.Hash); err != nil {
			return nil, nil, err
		}
		if part == 0 {
			snap = &Snapshot{StreamID: streamID, TenantID: r.TenantID, Version: r.Version, Schema: r.SchemaVersion,
				State: []byte(payload), MAC: r.Hash}
			continue
		}
		if position == nil || eventID == nil || stream == nil || eventType == nil || meta == nil || recordedAt == nil || txid == nil {
			return nil, nil, fmt.Errorf("eventstore: incomplete event row in %s", streamID)
		}
		r.Position, r.EventID, r.StreamID, r.Type, r.RecordedAt, r.PrevHash = *position, *eventID, *stream, *eventType, *recordedAt, prevHash
		if err := r.finish(payload, *meta, *txid); err != nil {
			return nil, nil, err
		}
		out = append(out, r)
	}
	return snap, out, rows.Err()
}
