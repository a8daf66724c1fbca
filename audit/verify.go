package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/twofactor/twofactor/eventstore"
)

// Failure names one event where the history does not verify.
type Failure struct {
	Position int64  `json:"position"`
	EventID  string `json:"event_id"`
	StreamID string `json:"stream_id"`
	Version  int64  `json:"version"`
	Reason   string `json:"reason"`
}

// Report is the verifier's verdict.
type Report struct {
	OK       bool      `json:"ok"`
	Streams  int       `json:"streams"`
	Events   int       `json:"events"`
	Failures []Failure `json:"failures,omitempty"`
	// FirstBroken is the failure with the lowest position.
	FirstBroken *Failure `json:"first_broken,omitempty"`
}

const maxFailures = 100

// chainRow is what the verifier needs of an event: the payload only by digest, so
// the same code verifies the database and a redacted export.
type chainRow struct {
	record *eventstore.Record
	digest []byte
}

// chainVerifier checks rows arriving in (stream, version) order.
type chainVerifier struct {
	report     Report
	stream     string
	expected   int64
	prevHash   []byte
	prevPos    int64
	streamDead bool
}

func (v *chainVerifier) add(row chainRow) {
	r := row.record
	v.report.Events++
	if r.StreamID != v.stream {
		v.report.Streams++
		v.stream, v.expected, v.prevHash, v.prevPos, v.streamDead = r.StreamID, 1, eventstore.GenesisHash, 0, false
	}
	if v.streamDead {
		return // one failure per stream: what follows a break cannot be trusted either
	}
	fail := func(reason string) {
		v.streamDead = true
		v.report.Failures = append(v.report.Failures, Failure{Position: r.Position, EventID: r.EventID, StreamID: r.StreamID, Version: r.Version, Reason: reason})
	}
	switch {
	case r.Version > v.expected:
		fail(fmt.Sprintf("version %d is missing before this event (deleted?)", v.expected))
	case r.Version < v.expected:
		fail(fmt.Sprintf("version %d appears twice", r.Version))
	case !bytes.Equal(r.PrevHash, v.prevHash):
		fail("does not chain to the previous event of its stream (reordered or replaced?)")
	case !bytes.Equal(eventstore.HashWithDigest(r.PrevHash, r, row.digest), r.Hash):
		fail("content does not match its hash (altered)")
	case r.Position <= v.prevPos:
		fail("position is not after the previous event of its stream (reordered)")
	}
	v.expected, v.prevHash, v.prevPos = r.Version+1, r.Hash, r.Position
}

func (v *chainVerifier) finish() Report {
	rep := v.report
	sort.Slice(rep.Failures, func(i, j int) bool { return rep.Failures[i].Position < rep.Failures[j].Position })
	if len(rep.Failures) > maxFailures {
		rep.Failures = rep.Failures[:maxFailures]
	}
	rep.OK = len(rep.Failures) == 0
	if !rep.OK {
		rep.FirstBroken = &rep.Failures[0]
	}
	return rep
}

// Verify recomputes every stream's hash chain (of one tenant, or all when tenantID
// is empty). It proves that no event was changed, removed from the middle of a
// stream, or reordered after it was written; truncating a stream's tail or
// rewriting a stream consistently from its start is caught only against an
// anchored checkpoint (VerifyCheckpoint).
func (a *Auditor) Verify(ctx context.Context, tenantID string) (Report, error) {
	query := `SELECT ` + selectColumns + ` FROM events WHERE ($1 = '' OR tenant_id = $1) ORDER BY stream_id, stream_version, position`
	rows, err := a.pool.Query(ctx, query, tenantID)
	if err != nil {
		return Report{}, fmt.Errorf("audit: verify: %w", err)
	}
	defer rows.Close()
	v := &chainVerifier{}
	for rows.Next() {
		r, err := scanRaw(rows)
		if err != nil {
			return Report{}, err
		}
		v.add(chainRow{record: r, digest: eventstore.PayloadDigest(r.Payload)})
	}
	if err := rows.Err(); err != nil {
		return Report{}, err
	}
	return v.finish(), nil
}

// ExportRow is one line of `twofactord audit export`: the redacted entry plus what
// an auditor needs to recompute the chain offline.
type ExportRow struct {
	Entry
	PayloadDigest []byte `json:"payload_digest"`
	// MetadataRaw is the stored metadata byte for byte, as the hash covers it.
	MetadataRaw string `json:"metadata_raw"`
	PrevHash    []byte `json:"prev_hash"`
	Hash        []byte `json:"hash"`
}

// Export writes a tenant's events as JSON lines in position order.
func (a *Auditor) Export(ctx context.Context, tenantID string, w io.Writer) (int, error) {
	rows, err := a.pool.Query(ctx, `SELECT `+selectColumns+` FROM events WHERE tenant_id = $1 ORDER BY position`, tenantID)
	if err != nil {
		return 0, fmt.Errorf("audit: export: %w", err)
	}
	defer rows.Close()
	enc := json.NewEncoder(w)
	n := 0
	for rows.Next() {
		r, err := scanRaw(rows)
		if err != nil {
			return n, err
		}
		e, err := entryOf(r)
		if err != nil {
			return n, err
		}
		if err := enc.Encode(ExportRow{Entry: e, PayloadDigest: eventstore.PayloadDigest(r.Payload), MetadataRaw: string(r.RawMetadata), PrevHash: r.PrevHash, Hash: r.Hash}); err != nil {
			return n, err
		}
		n++
	}
	return n, rows.Err()
}

// VerifyExport verifies an export offline, with no database.
func VerifyExport(in io.Reader) (Report, error) {
	var rows []chainRow
	scanner := bufio.NewScanner(in)
	scanner.Buffer(make([]byte, 1<<20), 16<<20)
	for line := 1; scanner.Scan(); line++ {
		if len(bytes.TrimSpace(scanner.Bytes())) == 0 {
			continue
		}
		var x ExportRow
		if err := json.Unmarshal(scanner.Bytes(), &x); err != nil {
			return Report{}, fmt.Errorf("audit: export line %d: %w", line, err)
		}
		rows = append(rows, chainRow{digest: x.PayloadDigest, record: &eventstore.Record{
			Position: x.Position, EventID: x.EventID, TenantID: x.TenantID, StreamID: x.StreamID, Version: x.Version,
			Type: x.Type, SchemaVersion: x.SchemaVersion, RawMetadata: []byte(x.MetadataRaw),
			RecordedAt: x.RecordedAt, PrevHash: x.PrevHash, Hash: x.Hash,
		}})
	}
	if err := scanner.Err(); err != nil {
		return Report{}, err
	}
	sort.SliceStable(rows, func(i, j int) bool {
		a, b := rows[i].record, rows[j].record
		if a.StreamID != b.StreamID {
			return a.StreamID < b.StreamID
		}
		if a.Version != b.Version {
			return a.Version < b.Version
		}
		return a.Position < b.Position
	})
	v := &chainVerifier{}
	for _, r := range rows {
		v.add(r)
	}
	return v.finish(), nil
}

// Head anchors one stream: its last version and hash when the checkpoint was taken.
type Head struct {
	StreamID string `json:"stream_id"`
	Version  int64  `json:"version"`
	Hash     []byte `json:"hash"`
}

// Checkpoint is a set of stream heads to keep outside the database (printed,
// mailed to an auditor, stored in a WORM bucket). Digest summarises the heads.
type Checkpoint struct {
	TenantID  string    `json:"tenant_id,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	Heads     []Head    `json:"heads"`
	Digest    []byte    `json:"digest"`
}

func headsDigest(heads []Head) []byte {
	h := sha256.New()
	for _, head := range heads {
		fmt.Fprintf(h, "%d:%s:%d:%x\n", len(head.StreamID), head.StreamID, head.Version, head.Hash)
	}
	return h.Sum(nil)
}

// TakeCheckpoint records the current head of every stream (of one tenant, or all).
func (a *Auditor) TakeCheckpoint(ctx context.Context, tenantID string, now time.Time) (Checkpoint, error) {
	rows, err := a.pool.Query(ctx, `SELECT DISTINCT ON (stream_id) stream_id, stream_version, hash FROM events
		WHERE ($1 = '' OR tenant_id = $1) ORDER BY stream_id, stream_version DESC`, tenantID)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("audit: checkpoint: %w", err)
	}
	defer rows.Close()
	cp := Checkpoint{TenantID: tenantID, CreatedAt: now.UTC(), Heads: []Head{}}
	for rows.Next() {
		var h Head
		if err := rows.Scan(&h.StreamID, &h.Version, &h.Hash); err != nil {
			return Checkpoint{}, err
		}
		cp.Heads = append(cp.Heads, h)
	}
	if err := rows.Err(); err != nil {
		return Checkpoint{}, err
	}
	cp.Digest = headsDigest(cp.Heads)
	return cp, nil
}

// VerifyCheckpoint checks the chains and that every anchored head is still in its
// stream with the same hash: a truncated tail or a stream rewritten from its start
// fails here even though its chain is consistent.
func (a *Auditor) VerifyCheckpoint(ctx context.Context, cp Checkpoint) (Report, error) {
	if !bytes.Equal(headsDigest(cp.Heads), cp.Digest) {
		return Report{}, fmt.Errorf("audit: the checkpoint file itself was altered (digest mismatch)")
	}
	rep, err := a.Verify(ctx, cp.TenantID)
	if err != nil {
		return Report{}, err
	}
	for _, head := range cp.Heads {
		var hash []byte
		var position int64
		var eventID string
		err := a.pool.QueryRow(ctx, `SELECT hash, position, event_id::text FROM events WHERE stream_id = $1 AND stream_version = $2`,
			head.StreamID, head.Version).Scan(&hash, &position, &eventID)
		switch {
		case err != nil:
			rep.Failures = append(rep.Failures, Failure{StreamID: head.StreamID, Version: head.Version,
				Reason: "anchored head is missing (stream truncated or rewritten)"})
		case !bytes.Equal(hash, head.Hash):
			rep.Failures = append(rep.Failures, Failure{Position: position, EventID: eventID, StreamID: head.StreamID, Version: head.Version,
				Reason: "anchored head has a different hash (stream rewritten)"})
		}
	}
	v := chainVerifier{report: rep}
	return v.finish(), nil
}

// Access is one auditor read, kept in the access log.
type Access struct {
	TenantID  string
	ActorKind string
	ActorID   string
	KeyID     string
	RequestID string
	Action    string
	Target    string
}

// RecordAccess logs who read what.
func (a *Auditor) RecordAccess(ctx context.Context, acc Access) error {
	_, err := a.pool.Exec(ctx, `INSERT INTO audit_access_log (tenant_id, actor_kind, actor_id, key_id, request_id, action, target)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`, acc.TenantID, acc.ActorKind, acc.ActorID, acc.KeyID, acc.RequestID, acc.Action, acc.Target)
	if err != nil {
		return fmt.Errorf("audit: access log: %w", err)
	}
	return nil
}
