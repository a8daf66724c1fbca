package eventstore

import (
	stdsql "database/sql"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
)

// LogSchema is the watermill-sql schema adapter that makes the events table
// itself the topic Topic: subscribers read the log, and an event is written
// once, by Append, with no outbox row beside it.
//
// The log already has what watermill-sql's PostgreSQL subscriber needs: every
// row carries the id of the transaction that wrote it (transaction_id) and a
// position that grows within a transaction, and the subscriber reads in
// (transaction_id, position) order below pg_snapshot_xmin, so a transaction
// that commits late is never skipped. A consumer group's offset
// (watermill_offsets_twofactor_events, DefaultPostgreSQLOffsetsAdapter) is the
// pair (transaction id, position) of the last event it acknowledged.
//
// Each row becomes a message whose UUID is the event id and whose payload is
// the Envelope (as Append published it before: DecodeEnvelope reads it),
// built here from the row's columns.
type LogSchema struct {
	// BatchSize is how many events one poll reads (100 when 0).
	BatchSize int
}

var _ wsql.SchemaAdapter = LogSchema{}

// ErrLogIsNotPublishedTo: events enter the log through Append only (their hash
// chain and stream version), never through a watermill publisher.
var ErrLogIsNotPublishedTo = errors.New("eventstore: the event log is written by Append, not published to")

// InsertQuery refuses: see ErrLogIsNotPublishedTo.
func (LogSchema) InsertQuery(wsql.InsertQueryParams) (wsql.Query, error) {
	return wsql.Query{}, ErrLogIsNotPublishedTo
}

// SchemaInitializingQueries is empty: the log's table comes from migrations.
func (LogSchema) SchemaInitializingQueries(wsql.SchemaInitializingQueriesParams) ([]wsql.Query, error) {
	return nil, nil
}

// SubscribeIsolationLevel is watermill-sql's for PostgreSQL.
func (LogSchema) SubscribeIsolationLevel() stdsql.IsolationLevel { return stdsql.LevelRepeatableRead }

// SelectQuery reads the group's next batch. The condition is a row comparison,
// (transaction_id, position) > (last, acked), so that PostgreSQL answers it
// with a range of events_transaction_position_idx read in order and stopped by
// the LIMIT: time proportional to the batch, not to the backlog (the stock
// query's OR form scans every remaining row; see BENCHMARKS.md, "Read side").
// The CTE locks the group's offset row (FOR UPDATE): one subscriber of a group
// reads at a time.
func (s LogSchema) SelectQuery(params wsql.SelectQueryParams) (wsql.Query, error) {
	next, err := params.OffsetsAdapter.NextOffsetQuery(wsql.NextOffsetQueryParams{Topic: params.Topic, ConsumerGroup: params.ConsumerGroup})
	if err != nil {
		return wsql.Query{}, err
	}
	batch := s.BatchSize
	if batch <= 0 {
		batch = 100
	}
	return wsql.Query{Query: `WITH last_processed AS (` + next.Query + `)
		SELECT position, transaction_id::text, event_id::text, tenant_id, stream_id, stream_version, event_type,
			schema_version, payload::text, metadata::text, recorded_at
		FROM events
		WHERE (transaction_id, position) > (
				(SELECT last_processed_transaction_id FROM last_processed),
				(SELECT offset_acked FROM last_processed))
			AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
		ORDER BY transaction_id, position
		LIMIT ` + strconv.Itoa(batch), Args: next.Args}, nil
}

// UnmarshalMessage turns one row of SelectQuery into a message.
func (LogSchema) UnmarshalMessage(params wsql.UnmarshalMessageParams) (wsql.Row, error) {
	var (
		env     Envelope
		txid    string
		payload []byte
		meta    []byte
	)
	if err := params.Row.Scan(&env.Position, &txid, &env.EventID, &env.TenantID, &env.StreamID, &env.Version, &env.Type,
		&env.SchemaVersion, &payload, &meta, &env.RecordedAt); err != nil {
		return wsql.Row{}, fmt.Errorf("eventstore: scan event row: %w", err)
	}
	xid, err := strconv.ParseUint(txid, 10, 64)
	if err != nil {
		return wsql.Row{}, fmt.Errorf("eventstore: transaction id %q: %w", txid, err)
	}
	env.Payload, env.Metadata, env.RecordedAt = payload, meta, env.RecordedAt.UTC()
	msg := message.NewMessage(env.EventID, appendEnvelope(make([]byte, 0, 256+len(payload)+len(meta)), &env))
	msg.Metadata.Set("event_type", env.Type)
	msg.Metadata.Set("tenant_id", env.TenantID)
	msg.Metadata.Set("stream_id", env.StreamID)
	return wsql.Row{
		Offset: env.Position, UUID: []byte(env.EventID), Payload: msg.Payload, Msg: msg,
		ExtraData: map[string]any{"transaction_id": wsql.XID8(xid)},
	}, nil
}

// appendEnvelope writes env as encoding/json would (same keys, same order),
// without its reflection, and without re-validating payload and metadata, which
// PostgreSQL stored as valid JSON. It runs for every event and every consumer
// group.
func appendEnvelope(b []byte, env *Envelope) []byte {
	b = append(b, `{"position":`...)
	b = strconv.AppendInt(b, env.Position, 10)
	b = append(b, `,"event_id":`...)
	b = appendJSONString(b, env.EventID)
	b = append(b, `,"tenant_id":`...)
	b = appendJSONString(b, env.TenantID)
	b = append(b, `,"stream_id":`...)
	b = appendJSONString(b, env.StreamID)
	b = append(b, `,"version":`...)
	b = strconv.AppendInt(b, env.Version, 10)
	b = append(b, `,"type":`...)
	b = appendJSONString(b, env.Type)
	b = append(b, `,"schema_version":`...)
	b = strconv.AppendInt(b, int64(env.SchemaVersion), 10)
	b = append(b, `,"payload":`...)
	b = append(b, env.Payload...)
	b = append(b, `,"metadata":`...)
	b = append(b, env.Metadata...)
	b = append(b, `,"recorded_at":"`...)
	b = env.RecordedAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `"}`...)
	return b
}

// appendJSONString quotes s as a JSON string: the quote, the backslash and
// control characters escaped, invalid UTF-8 replaced (as encoding/json does).
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
