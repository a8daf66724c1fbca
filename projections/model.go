package projections

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

const (
	userStreamPrefix   = "user:"
	tenantStreamPrefix = "tenant:"
)

// farFuture is a moment after every lock and every pending enrolment has run out:
// the aggregate's snapshot there is its time-independent status.
var farFuture = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// userEntry is the projector's memory of one user stream: the domain aggregate
// at the version it reflects. Live projection and rebuild fold events into it
// with the same code (apply), and derive the row from it with the domain's own
// Snapshot, so the read model, a rebuild and the commands agree.
type userEntry struct {
	streamID, tenantID, userID string
	// agg is nil for an erased user (a tombstone) and before the first event.
	agg      *domain.UserTwoFactor
	version  int64
	position int64
	eventAt  time.Time
	// expiries holds the ExpiresAt of the latest started enrolment per method:
	// the domain decides whether a method is pending, the event says until when.
	expiries  map[domain.Method]time.Time
	forgotten bool
	// stored is what tenant_coverage counts for this user in the database.
	stored contribution
}

// contribution is a user's share of tenant_coverage.
type contribution struct {
	present             bool
	base                domain.Status
	enabled             bool
	requiredNotEnrolled bool
}

func newUserEntry(streamID, tenantID, userID string) *userEntry {
	return &userEntry{streamID: streamID, tenantID: tenantID, userID: userID}
}

// apply folds one event of the stream, which must be the next version.
func (u *userEntry) apply(r *eventstore.Record) error {
	if r.Version != u.version+1 {
		return fmt.Errorf("projections: %s: event version %d does not follow %d", u.streamID, r.Version, u.version)
	}
	if u.agg == nil {
		if u.version != 0 {
			return fmt.Errorf("projections: %s: no state at version %d", u.streamID, u.version)
		}
		u.agg = domain.NewUserTwoFactor(u.tenantID, u.userID)
	}
	u.agg.Apply(r.Event, r.RecordedAt)
	if u.agg.Version() != r.Version {
		return fmt.Errorf("projections: %s: aggregate at version %d after event %d", u.streamID, u.agg.Version(), r.Version)
	}
	switch e := r.Event.(type) {
	case *domain.TOTPEnrollmentStarted:
		u.setExpiry(domain.MethodTOTP, e.ExpiresAt)
	case *domain.OTPMethodSetupStarted:
		u.setExpiry(e.Method, e.ExpiresAt)
	case *domain.SecurityKeyRegistrationStarted:
		u.setExpiry(domain.MethodWebAuthn, e.ExpiresAt)
	case *domain.UserForgotten:
		u.forgotten = true
	}
	u.version = r.Version
	u.position = r.Position
	u.eventAt = r.RecordedAt.UTC()
	if u.forgotten {
		// Erasure: keep only the version (the tombstone), nothing of the state.
		u.agg = nil
		u.expiries = nil
	}
	return nil
}

func (u *userEntry) setExpiry(m domain.Method, at time.Time) {
	if u.expiries == nil {
		u.expiries = map[domain.Method]time.Time{}
	}
	u.expiries[m] = at.UTC()
}

// tenantEntry is a tenant stream folded by domain.TenantPolicy.
type tenantEntry struct {
	tenantID string
	name     string
	policy   domain.Policy
	exists   bool
	version  int64
	position int64
	eventAt  time.Time
}

func (t *tenantEntry) apply(r *eventstore.Record) error {
	if r.Version != t.version+1 {
		return fmt.Errorf("projections: %s: event version %d does not follow %d", r.StreamID, r.Version, t.version)
	}
	agg := domain.NewTenantPolicy(t.tenantID)
	if t.exists {
		agg.Apply(&domain.TenantCreated{Name: t.name, Policy: t.policy})
	}
	agg.Apply(r.Event)
	t.name, t.policy, t.exists = agg.Name(), agg.Policy(), agg.Exists()
	t.version = r.Version
	t.position = r.Position
	t.eventAt = r.RecordedAt.UTC()
	return nil
}

// policyOf is the tenant's policy, or the defaults for a tenant not (yet) seen.
func policyOf(t *tenantEntry) domain.Policy {
	if t == nil || !t.exists {
		return domain.DefaultPolicy()
	}
	return t.policy
}

// rowPolicy is the part of a tenant's policy the user rows depend on: what
// UserTwoFactor.Snapshot reads (DefaultCanToggle for can_toggle, LockoutThreshold
// for attempts_remaining) and the low-codes threshold. A policy change that
// leaves it alone changes no row. TestRowPolicyCoversWhatSnapshotReads fails
// when the domain starts reading another field.
type rowPolicy struct {
	defaultCanToggle bool
	lockoutThreshold int
	lowBackupCodes   int
}

func rowPolicyOf(p domain.Policy) rowPolicy {
	return rowPolicy{defaultCanToggle: p.DefaultCanToggle, lockoutThreshold: p.LockoutThreshold, lowBackupCodes: p.LowBackupCodesWarn}
}

// pendingMethod is one enrolment awaiting its first code.
type pendingMethod struct {
	Method    domain.Method `json:"method"`
	ExpiresAt time.Time     `json:"expires_at"`
}

// userRow is one row of user_status.
type userRow struct {
	TenantID, UserID     string
	StatusBase           domain.Status
	Enabled              bool
	Methods              []domain.Method
	DefaultMethod        domain.Method
	Pending              []pendingMethod
	PendingUntil         *time.Time
	BackupCodesRemaining int
	LowBackupCodes       bool
	Required             bool
	RequirementWaivedBy  string
	CanToggle            bool
	MustEnroll           bool
	SetupAppAtNextLogin  bool
	LockedUntil          *time.Time
	AttemptsRemaining    int
	LastVerifiedAt       *time.Time
	LastVerifiedMethod   domain.Method
	SecurityKeys         int
	Version, Position    int64
	UpdatedAt            time.Time
}

// deriveRow is the user's row under policy p, or nil for a user without one
// (erased, or no event yet). Everything comes from domain.Snapshot: once at the
// time of the last event (what is locked or pending then, and so until when) and
// once after every lock and enrolment has run out (the rest).
func deriveRow(u *userEntry, p domain.Policy) *userRow {
	if u.forgotten || u.agg == nil || u.version == 0 {
		return nil
	}
	at := u.agg.Snapshot(u.eventAt, p)
	base := u.agg.Snapshot(farFuture, p)
	r := &userRow{
		TenantID: u.tenantID, UserID: u.userID,
		StatusBase:           base.Status,
		Enabled:              base.Enabled,
		Methods:              base.Methods,
		DefaultMethod:        base.DefaultMethod,
		BackupCodesRemaining: base.BackupCodesRemaining,
		LowBackupCodes:       base.Enabled && base.BackupCodesRemaining <= p.LowBackupCodesWarn,
		Required:             base.Required,
		RequirementWaivedBy:  base.RequirementWaivedBy,
		CanToggle:            base.CanToggle,
		MustEnroll:           base.MustEnroll,
		SetupAppAtNextLogin:  base.SetupAppAtNextLogin,
		AttemptsRemaining:    base.AttemptsRemaining,
		LastVerifiedMethod:   base.LastVerifiedMethod,
		SecurityKeys:         base.SecurityKeys,
		Version:              u.version,
		Position:             u.position,
		UpdatedAt:            u.eventAt,
	}
	if r.Methods == nil {
		r.Methods = []domain.Method{}
	}
	if !base.LastVerifiedAt.IsZero() {
		t := base.LastVerifiedAt.UTC()
		r.LastVerifiedAt = &t
	}
	if !at.LockedUntil.IsZero() {
		t := at.LockedUntil.UTC()
		r.LockedUntil = &t
	}
	r.Pending = []pendingMethod{}
	for _, m := range at.PendingMethods {
		exp, ok := u.expiries[m]
		if !ok || !u.eventAt.Before(exp) {
			continue
		}
		r.Pending = append(r.Pending, pendingMethod{Method: m, ExpiresAt: exp})
		if r.PendingUntil == nil || exp.After(*r.PendingUntil) {
			e := exp
			r.PendingUntil = &e
		}
	}
	return r
}

func (r *userRow) contribution() contribution {
	if r == nil {
		return contribution{}
	}
	return contribution{present: true, base: r.StatusBase, enabled: r.Enabled, requiredNotEnrolled: r.Required && !r.Enabled}
}

// statusAt evaluates a row's status at a moment, as domain.Snapshot would: a lock
// first, then (2FA being off) a pending enrolment, else the time-independent status.
// The SQL filters in queries.go say the same.
func statusAt(base domain.Status, enabled bool, lockedUntil, pendingUntil *time.Time, now time.Time) domain.Status {
	switch {
	case lockedUntil != nil && now.Before(*lockedUntil):
		return domain.StatusLocked
	case !enabled && pendingUntil != nil && now.Before(*pendingUntil):
		return domain.StatusPending
	}
	return base
}

// model is the set of entries a projector folds into: the live projector's cache,
// or everything during a rebuild.
type model struct {
	users   map[string]*userEntry
	tenants map[string]*tenantEntry
}

func newModel() *model {
	return &model{users: map[string]*userEntry{}, tenants: map[string]*tenantEntry{}}
}

// changes is what a batch of events changed, to be written in one go.
type changes struct {
	// states: user streams whose version moved (user_status_state rows to write).
	states map[string]*userEntry
	// rows: user_status rows to derive again (a superset of states).
	rows    map[string]*userEntry
	tenants map[string]*tenantEntry
	// recompute: tenants whose policy changed; every row of theirs is derived again.
	recompute map[string]bool

	applied, duplicates int
	// last is the last event handled, in log order.
	last *eventstore.Record
}

func newChanges() *changes {
	return &changes{states: map[string]*userEntry{}, rows: map[string]*userEntry{}, tenants: map[string]*tenantEntry{}, recompute: map[string]bool{}}
}

func (c *changes) empty() bool {
	return len(c.rows) == 0 && len(c.tenants) == 0 && len(c.recompute) == 0 && c.last == nil
}

// source loads what a model does not hold in memory.
type source interface {
	// user returns the stored entry of a stream, or nil.
	user(ctx context.Context, streamID string) (*userEntry, error)
	tenant(ctx context.Context, tenantID string) (*tenantEntry, error)
	// tenantUsers returns the stored entries of a tenant's users not in skip.
	tenantUsers(ctx context.Context, tenantID string, skip map[string]*userEntry) ([]*userEntry, error)
	// streamAfter reads a stream's events after a version (to fill a gap).
	streamAfter(ctx context.Context, streamID string, afterVersion int64) ([]*eventstore.Record, error)
}

// apply folds one record into the model, recording what changed. An event at or
// below the version the entry reflects is a duplicate (redelivery) and changes
// nothing; an event beyond the next version means the entry missed some (for
// example a transaction that wrote to one stream committed out of order) and the
// gap is filled from the event log first.
func (m *model) apply(ctx context.Context, src source, ch *changes, r *eventstore.Record) error {
	switch {
	case strings.HasPrefix(r.StreamID, tenantStreamPrefix):
		id := strings.TrimPrefix(r.StreamID, tenantStreamPrefix)
		t, err := m.tenant(ctx, src, id)
		if err != nil {
			return err
		}
		if r.Version <= t.version {
			ch.duplicates++
			break
		}
		ch.tenants[id] = t
		if r.Version > t.version+1 {
			if err := m.fillTenant(ctx, src, t, r); err != nil {
				return err
			}
		}
		was := rowPolicyOf(policyOf(t))
		if err := t.apply(r); err != nil {
			return err
		}
		ch.applied++
		if rowPolicyOf(policyOf(t)) != was {
			// The rows of the tenant's users depend on these settings: derive them
			// again under the new policy.
			ch.recompute[id] = true
		}
	case strings.HasPrefix(r.StreamID, userStreamPrefix):
		u, err := m.user(ctx, src, r)
		if err != nil {
			return err
		}
		if r.Version <= u.version {
			ch.duplicates++
			break
		}
		ch.states[u.streamID] = u
		ch.rows[u.streamID] = u
		if r.Version > u.version+1 || (u.agg == nil && u.version > 0) {
			if err := m.fillUser(ctx, src, u, r); err != nil {
				return err
			}
		}
		if err := u.apply(r); err != nil {
			return err
		}
		ch.applied++
	default:
		// A stream kind this read model does not know: nothing to do.
	}
	ch.last = r
	return nil
}

func (m *model) tenant(ctx context.Context, src source, id string) (*tenantEntry, error) {
	if t, ok := m.tenants[id]; ok {
		return t, nil
	}
	t, err := src.tenant(ctx, id)
	if err != nil {
		return nil, err
	}
	if t == nil {
		t = &tenantEntry{tenantID: id}
	}
	m.tenants[id] = t
	return t, nil
}

func (m *model) user(ctx context.Context, src source, r *eventstore.Record) (*userEntry, error) {
	if u, ok := m.users[r.StreamID]; ok {
		return u, nil
	}
	u, err := src.user(ctx, r.StreamID)
	if err != nil {
		return nil, err
	}
	if u == nil {
		userID, ok := strings.CutPrefix(r.StreamID, userStreamPrefix+r.TenantID+":")
		if !ok {
			return nil, fmt.Errorf("projections: stream %q is not a user stream of tenant %q", r.StreamID, r.TenantID)
		}
		u = newUserEntry(r.StreamID, r.TenantID, userID)
	}
	m.users[r.StreamID] = u
	return u, nil
}

// fillUser brings an entry to the version before r from the event log. A
// tombstone (erased user) receiving an event is folded again from the start.
func (m *model) fillUser(ctx context.Context, src source, u *userEntry, r *eventstore.Record) error {
	if u.agg == nil && u.version > 0 {
		fresh := newUserEntry(u.streamID, u.tenantID, u.userID)
		fresh.stored = u.stored
		*u = *fresh
	}
	recs, err := src.streamAfter(ctx, u.streamID, u.version)
	if err != nil {
		return err
	}

	for _, e := range recs {
		if e.Version >= r.Version {
			break
		}
		if err := u.apply(e); err != nil {
			return err
		}
	}
	if u.version != r.Version-1 {
		return fmt.Errorf("projections: %s: cannot fill the gap before version %d (have %d)", u.streamID, r.Version, u.version)
	}
	return nil
}

func (m *model) fillTenant(ctx context.Context, src source, t *tenantEntry, r *eventstore.Record) error {
	recs, err := src.streamAfter(ctx, r.StreamID, t.version)
	if err != nil {
		return err
	}
	for _, e := range recs {
		if e.Version >= r.Version {
			break
		}
		if err := t.apply(e); err != nil {
			return err
		}
	}
	if t.version != r.Version-1 {
		return fmt.Errorf("projections: %s: cannot fill the gap before version %d (have %d)", r.StreamID, r.Version, t.version)
	}
	return nil
}

// encodeState serialises an entry for user_status_state.
func encodeState(u *userEntry) (state *string, expiries string, err error) {
	if u.agg != nil {
		b, err := u.agg.SaveState()
		if err != nil {
			return nil, "", err
		}
		s := string(b)
		state = &s
	}
	exp := u.expiries
	if exp == nil {
		exp = map[domain.Method]time.Time{}
	}
	b, err := json.Marshal(exp)
	if err != nil {
		return nil, "", err
	}
	return state, string(b), nil
}

// decodeState restores an entry from user_status_state. A state saved under
// another domain.StateSchema is not trusted: the entry keeps only its version, and
// the next event refolds the stream from the log (as for a tombstone).
func decodeState(u *userEntry, schema int, state *string, expiries []byte) error {
	if len(expiries) > 0 {
		if err := json.Unmarshal(expiries, &u.expiries); err != nil {
			return fmt.Errorf("projections: expiries of %s: %w", u.streamID, err)
		}
	}
	if state == nil {
		u.forgotten = true
		u.agg = nil
		u.expiries = nil
		return nil
	}
	if schema != domain.StateSchema {
		u.agg, u.expiries = nil, nil
		return nil
	}
	agg, err := domain.RestoreUserTwoFactor(u.tenantID, u.userID, u.version, []byte(*state))
	if err != nil {
		return fmt.Errorf("projections: state of %s: %w", u.streamID, err)
	}
	u.agg = agg
	return nil
}
