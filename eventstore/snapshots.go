package eventstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Snapshot is a saved aggregate state at a stream version.
type Snapshot struct {
	StreamID string
	TenantID string
	Version  int64
	Schema   int
	State    []byte
	MAC      []byte
}

// LoadSince reads a stream's snapshot (nil if none) and the events after it.
func (s *Store) LoadSince(ctx context.Context, streamID string) (*Snapshot, []*Record, error) {
	snap := &Snapshot{StreamID: streamID}
	var state string
	err := s.pool.QueryRow(ctx, `SELECT version, schema, state::text, mac, tenant_id FROM user_snapshots WHERE stream_id = $1`, streamID).
		Scan(&snap.Version, &snap.Schema, &state, &snap.MAC, &snap.TenantID)
	if errors.Is(err, pgx.ErrNoRows) {
		records, err := s.Load(ctx, streamID)
		return nil, records, err
	}
	if err != nil {
		return nil, nil, fmt.Errorf("eventstore: load snapshot of %s: %w", streamID, err)
	}
	snap.State = []byte(state)
	records, err := s.LoadAfter(ctx, streamID, snap.Version)
	return snap, records, err
}

// LoadAfter reads a stream's events after a version.
func (s *Store) LoadAfter(ctx context.Context, streamID string, afterVersion int64) ([]*Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+selectColumns+` FROM events WHERE stream_id = $1 AND stream_version > $2
		ORDER BY stream_version`, streamID, afterVersion)
	if err != nil {
		return nil, fmt.Errorf("eventstore: load %s: %w", streamID, err)
	}
	return scanRecords(rows)
}

// SaveSnapshot stores a snapshot unless a newer one is already there. Inside a
// begun Unit it commits with the unit: a snapshot of events that roll back
// would restore a state that never was.
func (s *Store) SaveSnapshot(ctx context.Context, snap Snapshot) error {
	err := InOpenTx(ctx, s.pool, func(q Querier) error {
		_, err := q.Exec(ctx, `INSERT INTO user_snapshots (stream_id, tenant_id, version, schema, state, mac)
		VALUES ($1, $2, $3, $4, $5, $6)
		ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version, schema = excluded.schema,
			state = excluded.state, mac = excluded.mac, taken_at = now()
		WHERE user_snapshots.version < excluded.version OR user_snapshots.schema <> excluded.schema`,
			snap.StreamID, snap.TenantID, snap.Version, snap.Schema, string(snap.State), snap.MAC)
		return err
	})
	if err != nil {
		return fmt.Errorf("eventstore: save snapshot: %w", err)
	}
	return nil
}

// DeleteSnapshot removes a stream's snapshot (erasure, or one found invalid).
func (s *Store) DeleteSnapshot(ctx context.Context, streamID string) error {
	return InOpenTx(ctx, s.pool, func(q Querier) error {
		_, err := q.Exec(ctx, `DELETE FROM user_snapshots WHERE stream_id = $1`, streamID)
		return err
	})
}
