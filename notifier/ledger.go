package notifier

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Entry is one ledger row, as operators see it. It holds no address and no content.
type Entry struct {
	EventID       string    `json:"event_id"`
	Kind          Kind      `json:"kind"`
	TenantID      string    `json:"tenant_id"`
	UserID        string    `json:"user_id"`
	EventType     string    `json:"event_type"`
	StreamVersion int64     `json:"stream_version"`
	Status        string    `json:"status"`
	Channel       string    `json:"channel,omitempty"`
	Attempts      int       `json:"attempts"`
	LastError     string    `json:"last_error,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// Filter narrows a ledger listing.
type Filter struct {
	TenantID string // empty: every tenant
	Limit    int    // 0: 100
}

// ListDead returns the notifications that gave up, newest first.
func ListDead(ctx context.Context, pool *pgxpool.Pool, f Filter) ([]Entry, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	rows, err := pool.Query(ctx, `
		SELECT event_id::text, kind, tenant_id, user_id, event_type, stream_version, status,
			coalesce(channel, ''), attempts, coalesce(last_error, ''), created_at, updated_at
		FROM notifications
		WHERE status = 'dead' AND ($1 = '' OR tenant_id = $1)
		ORDER BY updated_at DESC, event_id, kind
		LIMIT $2`, f.TenantID, limit)
	if err != nil {
		return nil, fmt.Errorf("notifier: list dead notifications: %w", err)
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) {
		var e Entry
		var kind string
		err := r.Scan(&e.EventID, &kind, &e.TenantID, &e.UserID, &e.EventType, &e.StreamVersion, &e.Status,
			&e.Channel, &e.Attempts, &e.LastError, &e.CreatedAt, &e.UpdatedAt)
		e.Kind = Kind(kind)
		e.CreatedAt, e.UpdatedAt = e.CreatedAt.UTC(), e.UpdatedAt.UTC()
		return e, err
	})
}

// Retry puts dead notifications back in the queue with a fresh count of attempts:
// one (event, kind), every kind of an event (kind empty), or every dead row of a
// tenant (eventID empty). It returns how many it requeued. A one-time code that
// expired meanwhile is then skipped, not sent.
func Retry(ctx context.Context, pool *pgxpool.Pool, tenantID, eventID string, kind Kind, now time.Time) (int, error) {
	if eventID == "" && tenantID == "" {
		return 0, fmt.Errorf("notifier: retry needs an event id or a tenant id")
	}
	tag, err := pool.Exec(ctx, `
		UPDATE notifications SET status = 'pending', attempts = 0, next_attempt_at = $4, updated_at = $4
		WHERE status = 'dead'
		  AND ($1 = '' OR tenant_id = $1)
		  AND ($2 = '' OR event_id::text = $2)
		  AND ($3 = '' OR kind = $3)`, tenantID, eventID, string(kind), now.UTC())
	if err != nil {
		return 0, fmt.Errorf("notifier: retry: %w", err)
	}
	return int(tag.RowsAffected()), nil
}
