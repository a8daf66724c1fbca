// Package audit answers an auditor's questions from the event log: a user's
// history, a tenant's feed, a user's state at any past moment, and whether the
// history was altered. It never changes 2FA state.
package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// Auditor reads the log through one pool.
type Auditor struct {
	pool *pgxpool.Pool
}

func New(pool *pgxpool.Pool) *Auditor { return &Auditor{pool: pool} }

// Entry is the documented JSON shape of one event for auditors. Data is the
// payload with every secret redacted: sealed fields never leave the service, not
// even as ciphertext, and backup-code hashes are replaced by their count.
type Entry struct {
	Position      int64           `json:"position"`
	EventID       string          `json:"event_id"`
	TenantID      string          `json:"tenant_id"`
	UserID        string          `json:"user_id,omitempty"`
	StreamID      string          `json:"stream_id"`
	Version       int64           `json:"version"`
	Type          string          `json:"type"`
	SchemaVersion int             `json:"schema_version"`
	RecordedAt    time.Time       `json:"recorded_at"`
	Actor         domain.Actor    `json:"actor"`
	RequestID     string          `json:"request_id,omitempty"`
	CorrelationID string          `json:"correlation_id,omitempty"`
	CausationID   string          `json:"causation_id,omitempty"`
	KeyID         string          `json:"key_id,omitempty"`
	Reason        string          `json:"reason,omitempty"`
	Data          json.RawMessage `json:"data"`
}

// Redacted is what a sealed field shows.
const Redacted = "[redacted]"

// Redact removes secrets from a stored payload.
func Redact(payload []byte) (json.RawMessage, error) {
	var v any
	if err := json.Unmarshal(payload, &v); err != nil {
		return nil, err
	}
	out, err := json.Marshal(redactValue("", v))
	return out, err
}

func redactValue(key string, v any) any {
	if strings.HasPrefix(key, "sealed_") {
		if s, ok := v.(string); ok && s == "" {
			return ""
		}
		return Redacted
	}
	switch t := v.(type) {
	case map[string]any:
		for k, child := range t {
			if k == "hashes" {
				if list, ok := child.([]any); ok {
					delete(t, k)
					t["code_count"] = len(list)
					continue
				}
			}
			t[k] = redactValue(k, child)
		}
		return t
	case []any:
		for i, child := range t {
			t[i] = redactValue("", child)
		}
		return t
	}
	return v
}

// UserIDOf returns the user of a user stream, or "" for a tenant stream.
func UserIDOf(tenantID, streamID string) string {
	prefix := eventstore.UserStream(tenantID, "")
	if strings.HasPrefix(streamID, prefix) {
		return streamID[len(prefix):]
	}
	return ""
}

func entryOf(r *eventstore.Record) (Entry, error) {
	data, err := Redact(r.Payload)
	if err != nil {
		return Entry{}, fmt.Errorf("audit: redact event %s: %w", r.EventID, err)
	}
	m := r.Metadata
	return Entry{
		Position: r.Position, EventID: r.EventID, TenantID: r.TenantID, UserID: UserIDOf(r.TenantID, r.StreamID),
		StreamID: r.StreamID, Version: r.Version, Type: r.Type, SchemaVersion: r.SchemaVersion, RecordedAt: r.RecordedAt,
		Actor: m.Actor, RequestID: m.RequestID, CorrelationID: m.CorrelationID, CausationID: m.CausationID,
		KeyID: m.KeyID, Reason: m.Reason, Data: data,
	}, nil
}

// Filter narrows a history or a feed.
type Filter struct {
	// AfterPosition continues a previous page (keyset pagination by position).
	AfterPosition int64
	Types         []string
	ActorKind     domain.ActorKind
	ActorID       string
	From, To      time.Time
	// Limit per page: 1–1000, default 100.
	Limit int
}

// Page is one page of entries; Next is the AfterPosition of the following page
// (0 when this was the last).
type Page struct {
	Entries []Entry `json:"entries"`
	Next    int64   `json:"next_after_position,omitempty"`
}

const maxLimit = 1000

func (f Filter) limit() (int, error) {
	switch {
	case f.Limit == 0:
		return 100, nil
	case f.Limit < 0 || f.Limit > maxLimit:
		return 0, domain.Invalid(domain.CodeInvalidArgument, "limit must be between 1 and 1000")
	}
	return f.Limit, nil
}

// History is one user's events in order.
func (a *Auditor) History(ctx context.Context, tenantID, userID string, f Filter) (Page, error) {
	if err := domain.ValidateIdentifier("user id", userID); err != nil {
		return Page{}, err
	}
	return a.page(ctx, tenantID, eventstore.UserStream(tenantID, userID), f)
}

// Feed is the tenant's whole log (users and policy) by position.
func (a *Auditor) Feed(ctx context.Context, tenantID string, f Filter) (Page, error) {
	return a.page(ctx, tenantID, "", f)
}

func (a *Auditor) page(ctx context.Context, tenantID, streamID string, f Filter) (Page, error) {
	if err := domain.ValidateIdentifier("tenant id", tenantID); err != nil {
		return Page{}, err
	}
	limit, err := f.limit()
	if err != nil {
		return Page{}, err
	}
	where := []string{"tenant_id = $1", "position > $2"}
	args := []any{tenantID, f.AfterPosition}
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if streamID != "" {
		add("stream_id = $%d", streamID)
	}
	if len(f.Types) > 0 {
		add("event_type = ANY($%d)", f.Types)
	}
	if f.ActorKind != "" {
		add("metadata->'actor'->>'kind' = $%d", string(f.ActorKind))
	}
	if f.ActorID != "" {
		add("metadata->'actor'->>'id' = $%d", f.ActorID)
	}
	if !f.From.IsZero() {
		add("recorded_at >= $%d", f.From)
	}
	if !f.To.IsZero() {
		add("recorded_at <= $%d", f.To)
	}
	args = append(args, limit+1)
	query := `SELECT ` + selectColumns + ` FROM events WHERE ` + strings.Join(where, " AND ") +
		fmt.Sprintf(` ORDER BY position LIMIT $%d`, len(args))
	records, err := a.query(ctx, query, args...)
	if err != nil {
		return Page{}, err
	}
	page := Page{Entries: []Entry{}}
	for i, r := range records {
		if i == limit {
			page.Next = records[limit-1].Position
			break
		}
		e, err := entryOf(r)
		if err != nil {
			return Page{}, err
		}
		page.Entries = append(page.Entries, e)
	}
	return page, nil
}

const selectColumns = `position, event_id::text, tenant_id, stream_id, stream_version, event_type, schema_version,
	payload::text, metadata::text, recorded_at, prev_hash, hash`

// query reads raw rows without decoding payloads into events: a verifier must
// cope with rows that no longer decode.
func (a *Auditor) query(ctx context.Context, query string, args ...any) ([]*eventstore.Record, error) {
	rows, err := a.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	defer rows.Close()
	var out []*eventstore.Record
	for rows.Next() {
		r, err := scanRaw(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func scanRaw(rows pgx.Rows) (*eventstore.Record, error) {
	r := &eventstore.Record{}
	var payload, meta string
	if err := rows.Scan(&r.Position, &r.EventID, &r.TenantID, &r.StreamID, &r.Version, &r.Type, &r.SchemaVersion,
		&payload, &meta, &r.RecordedAt, &r.PrevHash, &r.Hash); err != nil {
		return nil, err
	}
	r.Payload, r.RawMetadata = []byte(payload), []byte(meta)
	r.RecordedAt = r.RecordedAt.UTC()
	if err := json.Unmarshal(r.RawMetadata, &r.Metadata); err != nil {
		// Tampered metadata still has to be listed and verified, not crash the reader.
		r.Metadata = eventstore.Metadata{}
	}
	return r, nil
}
