package eventstore

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/twofactor/twofactor/domain"
)

// SchemaVersion of every event type written today. A future change to an event's
// shape bumps its version and adds an upcaster in Decode.
const SchemaVersion = 1

// Encode serialises an event payload.
func Encode(e domain.Event) ([]byte, error) {
	return json.Marshal(e)
}

// Decode turns a stored payload back into its event type.
func Decode(eventType string, schemaVersion int, payload []byte) (domain.Event, error) {
	e, ok := domain.NewEvent(eventType)
	if !ok {
		return nil, fmt.Errorf("eventstore: unknown event type %q", eventType)
	}
	if schemaVersion != SchemaVersion {
		return nil, fmt.Errorf("eventstore: %s schema version %d is not supported", eventType, schemaVersion)
	}
	if err := json.Unmarshal(payload, e); err != nil {
		return nil, fmt.Errorf("eventstore: decode %s: %w", eventType, err)
	}
	return e, nil
}

// GenesisHash is the previous hash of every stream's first event.
var GenesisHash = make([]byte, sha256.Size)

// PayloadDigest is what the chain commits to for a payload. Committing to a digest
// rather than the bytes lets an export carry a redacted payload (no sealed field
// leaves the service) and still be verified offline.
func PayloadDigest(payload []byte) []byte {
	d := sha256.Sum256(payload)
	return d[:]
}

// Hash computes an event row's chain hash: SHA-256 over the previous hash of the
// stream and every stored field (the payload by its digest), each length-prefixed
// so no two rows can encode alike. The verifier recomputes it from the row.
func Hash(prev []byte, r *Record) []byte {
	return HashWithDigest(prev, r, PayloadDigest(r.Payload))
}

// HashWithDigest is Hash for a record whose payload is known only by its digest.
func HashWithDigest(prev []byte, r *Record, payloadDigest []byte) []byte {
	h := sha256.New()
	h.Write([]byte("twofactor-event-v1"))
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	number := func(v int64) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(v))
		field(n[:])
	}
	field(prev)
	field([]byte(r.EventID))
	field([]byte(r.TenantID))
	field([]byte(r.StreamID))
	number(r.Version)
	field([]byte(r.Type))
	number(int64(r.SchemaVersion))
	field(payloadDigest)
	field(r.RawMetadata)
	number(r.RecordedAt.UnixMicro())
	return h.Sum(nil)
}

// Metadata is recorded with every event: who, when, from which request, and why.
type Metadata struct {
	Actor         domain.Actor `json:"actor"`
	TenantID      string       `json:"tenant_id"`
	RequestID     string       `json:"request_id,omitempty"`
	CorrelationID string       `json:"correlation_id,omitempty"`
	CausationID   string       `json:"causation_id,omitempty"`
	// KeyID names the API key a request came with.
	KeyID      string    `json:"key_id,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	OccurredAt time.Time `json:"occurred_at"`
}

// Record is one stored event row.
type Record struct {
	Position      int64
	EventID       string
	TenantID      string
	StreamID      string
	Version       int64
	Type          string
	SchemaVersion int
	Payload       json.RawMessage
	RawMetadata   json.RawMessage
	Metadata      Metadata
	RecordedAt    time.Time
	TransactionID uint64
	PrevHash      []byte
	Hash          []byte
	Event         domain.Event
}

// Envelope is the message body published on the bus for each event.
type Envelope struct {
	Position      int64           `json:"position"`
	EventID       string          `json:"event_id"`
	TenantID      string          `json:"tenant_id"`
	StreamID      string          `json:"stream_id"`
	Version       int64           `json:"version"`
	Type          string          `json:"type"`
	SchemaVersion int             `json:"schema_version"`
	Payload       json.RawMessage `json:"payload"`
	Metadata      json.RawMessage `json:"metadata"`
	RecordedAt    time.Time       `json:"recorded_at"`
}

// DecodeEnvelope reads a bus message body back into a Record with its event.
func DecodeEnvelope(body []byte) (*Record, error) {
	var env Envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("eventstore: decode envelope: %w", err)
	}
	r := &Record{
		Position: env.Position, EventID: env.EventID, TenantID: env.TenantID, StreamID: env.StreamID,
		Version: env.Version, Type: env.Type, SchemaVersion: env.SchemaVersion, Payload: env.Payload,
		RawMetadata: env.Metadata, RecordedAt: env.RecordedAt,
	}
	return r, r.decode()
}

func (r *Record) decode() error {
	e, err := Decode(r.Type, r.SchemaVersion, r.Payload)
	if err != nil {
		return err
	}
	r.Event = e
	if err := json.Unmarshal(r.RawMetadata, &r.Metadata); err != nil {
		return fmt.Errorf("eventstore: decode metadata of %s: %w", r.EventID, err)
	}
	return nil
}
