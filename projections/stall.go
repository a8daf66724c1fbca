package projections

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/twofactor/twofactor/eventstore"
)

// Stall is an event a consumer could never apply, isolated (consumer_stalls):
// the consumer went on with the rest of the log and holds back every later
// event of the tenant, so one bad event stalls its tenant only.
type Stall struct {
	Consumer  string    `json:"consumer"`
	TenantID  string    `json:"tenant_id"`
	Position  int64     `json:"position"`
	EventID   string    `json:"event_id"`
	EventType string    `json:"event_type"`
	StreamID  string    `json:"stream_id"`
	Reason    string    `json:"reason"`
	HeldBack  int64     `json:"held_back"`
	StalledAt time.Time `json:"stalled_at"`
}

func (s Stall) String() string {
	return fmt.Sprintf("consumer %s stalled for tenant %s at event %s (position %d, %s, stream %s): %s; %d later events held back",
		s.Consumer, s.TenantID, s.EventID, s.Position, s.EventType, s.StreamID, s.Reason, s.HeldBack)
}

func (s Stall) summary() string {
	return fmt.Sprintf("consumer %s stalled for tenant %s at event %s (position %d, %s); %d later events held back",
		s.Consumer, s.TenantID, s.EventID, s.Position, s.EventType, s.HeldBack)
}

// ErrStalled is wrapped by the StalledError of a read that asked for a
// position the read model holds back for its tenant.
var ErrStalled = errors.New("projections: the read model is stalled for this tenant")

// StalledError answers a read-your-writes read of a stalled tenant: waiting
// would never show the write, and answering would show stale data.
type StalledError struct{ Stall Stall }

func (e *StalledError) Error() string { return e.Stall.String() }
func (e *StalledError) Unwrap() error { return ErrStalled }

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Stalls lists the isolated events, of every consumer (consumer "") or one.
func Stalls(ctx context.Context, db querier, consumer string) ([]Stall, error) {
	rows, err := db.Query(ctx, `SELECT consumer, tenant_id, position, event_id, event_type, stream_id, reason, held_back, stalled_at
		FROM consumer_stalls WHERE $1 = '' OR consumer = $1 ORDER BY consumer, position`, consumer)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Stall, error) {
		var s Stall
		err := r.Scan(&s.Consumer, &s.TenantID, &s.Position, &s.EventID, &s.EventType, &s.StreamID, &s.Reason, &s.HeldBack, &s.StalledAt)
		s.StalledAt = s.StalledAt.UTC()
		return s, err
	})
}

// CheckStalls fails, naming every stall, when a consumer is stalled (/readyz).
// It leaves the reasons out: a probe's answer is read by whoever reaches it,
// and a reason may quote an event's content (the log and `twofactord
// consumers stalled` have them).
func CheckStalls(ctx context.Context, db querier) error {
	stalls, err := Stalls(ctx, db, "")
	if err != nil {
		return err
	}
	if len(stalls) == 0 {
		return nil
	}
	msgs := make([]string, len(stalls))
	for i, s := range stalls {
		msgs[i] = s.summary()
	}
	return fmt.Errorf("%s (heal: README \"Stalled consumers\")", strings.Join(msgs, "; "))
}

// reason is a cause fit for a TEXT column and a log line: an error about an
// unstorable payload may quote it.
func reason(err error) string {
	s := strings.ToValidUTF8(err.Error(), "?")
	s = strings.ReplaceAll(s, "\x00", `\u0000`)
	if len(s) > 2000 {
		s = s[:2000]
	}
	return strings.ToValidUTF8(s, "")
}

// EventFailure names an event a projector or a rebuild could not apply.
type EventFailure struct {
	Record *eventstore.Record
	Err    error
}

func (e *EventFailure) Error() string {
	r := e.Record
	return fmt.Sprintf("event at position %d (id %s, type %s, tenant %s, stream %s version %d) cannot be projected: %v",
		r.Position, r.EventID, r.Type, r.TenantID, r.StreamID, r.Version, e.Err)
}

func (e *EventFailure) Unwrap() error { return e.Err }
