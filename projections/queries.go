package projections

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/messaging"
)

// ErrNotCaughtUp is returned by a read that was asked to include a log position
// the read model had not applied within the wait. The caller should retry (the
// API answers 503 with Retry-After) rather than show stale data.
var ErrNotCaughtUp = errors.New("projections: the read model has not applied the requested position yet")

// QueryOptions configure Queries. The zero value is usable.
type QueryOptions struct {
	// Clock evaluates the time-dependent status (locked, pending). Default time.Now.
	Clock func() time.Time
	// Wait bounds a read-your-writes wait (default 2 s).
	Wait time.Duration
	// Listener, when set, wakes waits as soon as a read model commits (it must
	// listen on ReadModelsChannel); Poll is then only the fallback.
	Listener *messaging.Listener
	// Poll is the interval between checks of the checkpoint (default 10 ms).
	Poll time.Duration
}

// Queries answers the API from the read models.
type Queries struct {
	mu       sync.Mutex
	watcher  *watcher
	waiters  int
	pool     *pgxpool.Pool
	clock    func() time.Time
	wait     time.Duration
	poll     time.Duration
	listener *messaging.Listener
}

// NewQueries returns the read side's query API.
func NewQueries(pool *pgxpool.Pool, opts QueryOptions) *Queries {
	q := &Queries{pool: pool, clock: opts.Clock, wait: opts.Wait, poll: opts.Poll, listener: opts.Listener}
	if q.clock == nil {
		q.clock = time.Now
	}
	if q.wait <= 0 {
		q.wait = 2 * time.Second
	}
	if q.poll <= 0 {
		q.poll = 10 * time.Millisecond
	}
	return q
}

// ReadOptions ask a read to include a write.
type ReadOptions struct {
	// MinPosition is a log position (a command's Result.Position): the read waits
	// until the read model has applied it. 0 reads at once.
	MinPosition int64
	// Wait overrides the default bound of the wait.
	Wait time.Duration
}

// UserStatus is one user's row, evaluated at the time of the query.
type UserStatus struct {
	TenantID             string          `json:"tenant_id"`
	UserID               string          `json:"user_id"`
	Status               domain.Status   `json:"status"`
	Enabled              bool            `json:"enabled"`
	Methods              []domain.Method `json:"methods"`
	DefaultMethod        domain.Method   `json:"default_method,omitempty"`
	PendingMethods       []domain.Method `json:"pending_methods"`
	BackupCodesRemaining int             `json:"backup_codes_remaining"`
	// LowBackupCodes: 2FA is on and at most the tenant's warning threshold of
	// backup codes remain.
	LowBackupCodes bool `json:"low_backup_codes"`
	Required       bool `json:"required"`
	// RequirementWaivedBy: who switched "use 2FA" off (domain.ChangedBy*), while it is off.
	RequirementWaivedBy string `json:"requirement_waived_by,omitempty"`
	CanToggle           bool   `json:"can_toggle"`
	MustEnroll          bool   `json:"must_enroll"`
	SetupAppAtNextLogin bool   `json:"setup_app_at_next_login"`
	// LockedUntil is zero unless the user is locked now.
	LockedUntil        time.Time     `json:"locked_until,omitempty"`
	AttemptsRemaining  int           `json:"attempts_remaining"`
	LastVerifiedAt     time.Time     `json:"last_verified_at,omitempty"`
	LastVerifiedMethod domain.Method `json:"last_verified_method,omitempty"`
	// Version is the user's stream version the row reflects; Position the log
	// position of that event.
	Version  int64 `json:"version"`
	Position int64 `json:"position"`
	// UpdatedAt is when the user's 2FA state last changed (their last event).
	UpdatedAt time.Time `json:"updated_at"`
	// SecurityKeys counts the user's registered security keys.
	SecurityKeys int `json:"security_keys"`
}

// Snapshot returns the row as the domain's snapshot shape (what
// UserTwoFactor.Snapshot returns for the same user at the same moment).
func (s UserStatus) Snapshot() domain.Snapshot {
	return domain.Snapshot{
		TenantID: s.TenantID, UserID: s.UserID, Version: s.Version, Status: s.Status, Enabled: s.Enabled,
		Methods: s.Methods, DefaultMethod: s.DefaultMethod, PendingMethods: s.PendingMethods,
		BackupCodesRemaining: s.BackupCodesRemaining, Required: s.Required, RequirementWaivedBy: s.RequirementWaivedBy,
		CanToggle:  s.CanToggle,
		MustEnroll: s.MustEnroll, SetupAppAtNextLogin: s.SetupAppAtNextLogin, LockedUntil: s.LockedUntil,
		AttemptsRemaining: s.AttemptsRemaining, LastVerifiedAt: s.LastVerifiedAt, LastVerifiedMethod: s.LastVerifiedMethod,
		SecurityKeys: s.SecurityKeys,
	}
}

// UserFilter narrows the user list; zero fields match everything.
type UserFilter struct {
	// Status at the time of the query (locked and pending are evaluated then).
	Status domain.Status
	// Method: the user has this confirmed method.
	Method         domain.Method
	Required       *bool
	LowBackupCodes *bool
	Locked         *bool
}

// PageRequest is keyset pagination: After is the NextCursor of the previous page.
type PageRequest struct {
	After string
	// Limit defaults to 50 and is at most 500.
	Limit int
}

// UserPage is one page of users, ordered by user id (bytewise).
type UserPage struct {
	Users []UserStatus `json:"users"`
	// NextCursor continues the listing; empty on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Coverage is a tenant's 2FA coverage at the time of the query.
type Coverage struct {
	TenantID string                `json:"tenant_id"`
	Users    int                   `json:"users"`
	ByStatus map[domain.Status]int `json:"by_status"`
	// Activated counts users with 2FA on (whatever else: locked, switching to the app).
	Activated           int     `json:"activated"`
	ActivatedShare      float64 `json:"activated_share"`
	RequiredNotEnrolled int     `json:"required_not_enrolled"`
	LockedNow           int     `json:"locked_now"`
	// AppliedPosition and UpdatedAt are the read model's checkpoint.
	AppliedPosition int64     `json:"applied_position"`
	UpdatedAt       time.Time `json:"updated_at"`
}

// Checkpoint is how far a read model has applied the log.
type Checkpoint struct {
	ReadModel  string
	Generation int64
	// Position of the last applied event, in (transaction id, position) order.
	Position  int64
	UpdatedAt time.Time
	RebuiltAt time.Time
}

const userColumns = `tenant_id, user_id, status_base, enabled, methods, default_method, pending::text, pending_until,
	backup_codes_remaining, low_backup_codes, required, can_toggle, must_enroll, setup_app_at_next_login,
	locked_until, attempts_remaining, last_verified_at, last_verified_method, version, position, updated_at,
	requirement_waived_by, security_keys`

func (q *Queries) scanUser(row pgx.Row, now time.Time) (UserStatus, error) {
	var s UserStatus
	var base, dflt, lastMethod, pending string
	var methods []string
	var pendingUntil, lockedUntil, lastVerified *time.Time
	if err := row.Scan(&s.TenantID, &s.UserID, &base, &s.Enabled, &methods, &dflt, &pending, &pendingUntil,
		&s.BackupCodesRemaining, &s.LowBackupCodes, &s.Required, &s.CanToggle, &s.MustEnroll, &s.SetupAppAtNextLogin,
		&lockedUntil, &s.AttemptsRemaining, &lastVerified, &lastMethod, &s.Version, &s.Position, &s.UpdatedAt,
		&s.RequirementWaivedBy, &s.SecurityKeys); err != nil {
		return s, err
	}
	s.Status = statusAt(domain.Status(base), s.Enabled, lockedUntil, pendingUntil, now)
	s.DefaultMethod = domain.Method(dflt)
	s.LastVerifiedMethod = domain.Method(lastMethod)
	s.Methods = make([]domain.Method, len(methods))
	for i, m := range methods {
		s.Methods[i] = domain.Method(m)
	}
	var ps []pendingMethod
	if err := json.Unmarshal([]byte(pending), &ps); err != nil {
		return s, fmt.Errorf("projections: pending of %s: %w", s.UserID, err)
	}
	s.PendingMethods = []domain.Method{}
	for _, p := range ps {
		if now.Before(p.ExpiresAt) {
			s.PendingMethods = append(s.PendingMethods, p.Method)
		}
	}
	if s.Status == domain.StatusLocked {
		s.LockedUntil = lockedUntil.UTC()
		s.AttemptsRemaining = 0
	}
	if lastVerified != nil {
		s.LastVerifiedAt = lastVerified.UTC()
	}
	s.UpdatedAt = s.UpdatedAt.UTC()
	return s, nil
}

// GetUser reads one user. A user without a row (never seen, or erased) is a
// domain NotFound error.
func (q *Queries) GetUser(ctx context.Context, tenantID, userID string, opts ReadOptions) (UserStatus, error) {
	if err := q.waitFor(ctx, tenantID, opts); err != nil {
		return UserStatus{}, err
	}
	now := q.clock()
	s, err := q.scanUser(q.pool.QueryRow(ctx, `SELECT `+userColumns+` FROM user_status WHERE tenant_id = $1 AND user_id = $2`, tenantID, userID), now)
	if errors.Is(err, pgx.ErrNoRows) {
		return UserStatus{}, domain.NotFound(domain.CodeUserNotFound, "user not found")
	}
	return s, err
}

// ListUsers lists a tenant's users matching f, in user id order, one page at a
// time. The keyset (user_id > cursor) neither skips nor repeats a row while the
// read model changes between pages: a row is returned on the page its id falls
// on, with its state at that moment.
func (q *Queries) ListUsers(ctx context.Context, tenantID string, f UserFilter, page PageRequest, opts ReadOptions) (UserPage, error) {
	limit := page.Limit
	switch {
	case limit <= 0:
		limit = 50
	case limit > 500:
		limit = 500
	}
	after := ""
	if page.After != "" {
		raw, err := base64.RawURLEncoding.DecodeString(page.After)
		if err != nil || len(raw) == 0 {
			return UserPage{}, domain.Invalid(domain.CodeInvalidArgument, "cursor is not valid")
		}
		after = string(raw)
	}
	if err := q.waitFor(ctx, tenantID, opts); err != nil {
		return UserPage{}, err
	}
	now := q.clock()
	args := []any{tenantID, after}
	where := []string{"tenant_id = $1", "user_id > $2"}
	arg := func(v any) string {
		args = append(args, v)
		return "$" + strconv.Itoa(len(args))
	}
	// The same evaluation as statusAt, in SQL.
	nowArg := ""
	at := func() string {
		if nowArg == "" {
			nowArg = arg(now)
		}
		return nowArg
	}
	locked := func() string { return `coalesce(locked_until > ` + at() + `, false)` }
	pending := func() string { return `(NOT enabled AND coalesce(pending_until > ` + at() + `, false))` }
	switch f.Status {
	case "":
	case domain.StatusLocked:
		where = append(where, locked())
	case domain.StatusPending:
		where = append(where, "NOT "+locked(), pending())
	case domain.StatusActivated, domain.StatusSetupAppAtNextLogin:
		where = append(where, "status_base = "+arg(string(f.Status)), "NOT "+locked())
	case domain.StatusNotActivated, domain.StatusDisabled, domain.StatusResetPending:
		where = append(where, "status_base = "+arg(string(f.Status)), "NOT "+locked(), "NOT "+pending())
	default:
		return UserPage{}, domain.Invalid(domain.CodeInvalidArgument, "unknown status filter")
	}
	if f.Method != "" {
		if _, err := domain.ParseMethod(string(f.Method)); err != nil {
			return UserPage{}, err
		}
		where = append(where, arg(string(f.Method))+" = ANY(methods)")
	}
	if f.Required != nil {
		where = append(where, "required = "+arg(*f.Required))
	}
	if f.LowBackupCodes != nil {
		where = append(where, "low_backup_codes = "+arg(*f.LowBackupCodes))
	}
	if f.Locked != nil {
		if *f.Locked {
			where = append(where, locked())
		} else {
			where = append(where, "NOT "+locked())
		}
	}
	sql := `SELECT ` + userColumns + ` FROM user_status WHERE ` + strings.Join(where, " AND ") +
		` ORDER BY user_id LIMIT ` + strconv.Itoa(limit+1)
	rows, err := q.pool.Query(ctx, sql, args...)
	if err != nil {
		return UserPage{}, err
	}
	defer rows.Close()
	out := UserPage{Users: []UserStatus{}}
	for rows.Next() {
		s, err := q.scanUser(rows, now)
		if err != nil {
			return UserPage{}, err
		}
		out.Users = append(out.Users, s)
	}
	if err := rows.Err(); err != nil {
		return UserPage{}, err
	}
	if len(out.Users) > limit {
		out.Users = out.Users[:limit]
		out.NextCursor = base64.RawURLEncoding.EncodeToString([]byte(out.Users[limit-1].UserID))
	}
	return out, nil
}

// Coverage counts a tenant's users by status now: the stored counts by
// time-independent status, corrected by the few users locked or pending now
// (found through the partial indexes).
func (q *Queries) Coverage(ctx context.Context, tenantID string, opts ReadOptions) (Coverage, error) {
	if err := q.waitFor(ctx, tenantID, opts); err != nil {
		return Coverage{}, err
	}
	now := q.clock()
	c := Coverage{TenantID: tenantID, ByStatus: map[domain.Status]int{}}
	// One snapshot for the counts, the corrections and the checkpoint.
	err := pgx.BeginTxFunc(ctx, q.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT status_base, users, enabled, required_not_enrolled FROM tenant_coverage WHERE tenant_id = $1`, tenantID)
		if err != nil {
			return err
		}
		for rows.Next() {
			var base string
			var users, enabled, rne int
			if err := rows.Scan(&base, &users, &enabled, &rne); err != nil {
				rows.Close()
				return err
			}
			c.ByStatus[domain.Status(base)] += users
			c.Users += users
			c.Activated += enabled
			c.RequiredNotEnrolled += rne
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT status_base, coalesce(locked_until > $2, false), count(*) FROM user_status
			WHERE tenant_id = $1 AND (locked_until > $2 OR (pending_until > $2 AND NOT enabled))
			GROUP BY 1, 2`, tenantID, now)
		if err != nil {
			return err
		}
		for rows.Next() {
			var base string
			var locked bool
			var n int
			if err := rows.Scan(&base, &locked, &n); err != nil {
				rows.Close()
				return err
			}
			c.ByStatus[domain.Status(base)] -= n
			if locked {
				c.ByStatus[domain.StatusLocked] += n
				c.LockedNow += n
			} else {
				c.ByStatus[domain.StatusPending] += n
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT position, updated_at FROM read_model_checkpoints WHERE read_model = $1`, UserStatusModel).
			Scan(&c.AppliedPosition, &c.UpdatedAt)
	})
	if err != nil {
		return Coverage{}, err
	}
	for s, n := range c.ByStatus {
		if n == 0 {
			delete(c.ByStatus, s)
		}
	}
	if c.Users > 0 {
		c.ActivatedShare = float64(c.Activated) / float64(c.Users)
	}
	c.UpdatedAt = c.UpdatedAt.UTC()
	return c, nil
}

// Checkpoint reads how far a read model has applied the log.
func (q *Queries) Checkpoint(ctx context.Context, readModel string) (Checkpoint, error) {
	c := Checkpoint{ReadModel: readModel}
	var rebuilt *time.Time
	err := q.pool.QueryRow(ctx, `SELECT generation, position, updated_at, rebuilt_at FROM read_model_checkpoints WHERE read_model = $1`,
		modelRow(readModel)).Scan(&c.Generation, &c.Position, &c.UpdatedAt, &rebuilt)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("projections: unknown read model %q", readModel)
	}
	if rebuilt != nil {
		c.RebuiltAt = *rebuilt
	}
	return c, err
}

// modelRow maps a read model to the checkpoint row of the projector maintaining it.
func modelRow(name string) string {
	if name == CoverageModel {
		return UserStatusModel
	}
	return name
}

// waitFor waits for opts.MinPosition, then makes sure the projector did not
// hold it back for the tenant: a stalled tenant's write may be past the
// checkpoint and still not in its rows, and a read asking for it gets a
// StalledError rather than stale data (or a wait that never ends). The stall
// and the checkpoint commit together, so a stall that covers the position is
// visible once the wait is over.
func (q *Queries) waitFor(ctx context.Context, tenantID string, opts ReadOptions) error {
	if opts.MinPosition <= 0 {
		return nil
	}
	wait := opts.Wait
	if wait <= 0 {
		wait = q.wait
	}
	if err := q.WaitFor(ctx, opts.MinPosition, wait); err != nil {
		return err
	}
	var s Stall
	err := q.pool.QueryRow(ctx, `SELECT consumer, tenant_id, position, event_id, event_type, stream_id, reason, held_back, stalled_at
		FROM consumer_stalls WHERE consumer = $1 AND tenant_id = $2 AND position <= $3`, UserStatusGroup, tenantID, opts.MinPosition).
		Scan(&s.Consumer, &s.TenantID, &s.Position, &s.EventID, &s.EventType, &s.StreamID, &s.Reason, &s.HeldBack, &s.StalledAt)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return err
	}
	s.StalledAt = s.StalledAt.UTC()
	return &StalledError{Stall: s}
}

// WaitFor waits until the user-status read model has applied the event at
// position, or returns ErrNotCaughtUp after wait.
//
// "Applied position P" cannot mean checkpoint >= P: the log is delivered in
// (transaction id, position) order, so a transaction that took a lower position
// may commit (and be applied) after a higher one. It means the checkpoint pair is
// at or after (P's transaction id, P): every event ordered before it in the
// delivery order is applied, including every write that committed before P's
// transaction began (which got a lower transaction id).
//
// Waiters share the checkpoint reads: however many wait, one goroutine reads
// the checkpoint per notification (or poll), and each waiter compares its own
// target with the value it publishes.
func (q *Queries) WaitFor(ctx context.Context, position int64, wait time.Duration) error {
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	expired := func(err error) error {
		if parent.Err() != nil {
			return parent.Err()
		}
		if ctx.Err() != nil {
			return ErrNotCaughtUp
		}
		return err
	}
	// The event's transaction id; it is not visible until its transaction commits.
	var xid uint64
	for {
		var txt string
		err := q.pool.QueryRow(ctx, `SELECT transaction_id::text FROM events WHERE position = $1`, position).Scan(&txt)
		if err == nil {
			if xid, err = strconv.ParseUint(txt, 10, 64); err != nil {
				return err
			}
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return expired(err)
		}
		select {
		case <-ctx.Done():
			return expired(ctx.Err())
		case <-time.After(q.poll):
		}
	}
	w := q.watch()
	defer q.unwatch()
	for {
		c, changed := w.current()
		if c.err == nil && c.read && (xid < c.xid || (xid == c.xid && position <= c.pos)) {
			return nil
		}
		select {
		case <-ctx.Done():
			return expired(ctx.Err())
		case <-changed:
		}
	}
}

// watcher reads the checkpoint for every waiter while there are any.
type watcher struct {
	mu      sync.Mutex
	last    checkpointRead
	changed chan struct{}
}

type checkpointRead struct {
	read bool
	xid  uint64
	pos  int64
	err  error
}

func (w *watcher) current() (checkpointRead, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.last, w.changed
}

func (w *watcher) publish(c checkpointRead) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = c
	close(w.changed)
	w.changed = make(chan struct{})
}

// watch registers a waiter, starting the reader if it is the first.
func (q *Queries) watch() *watcher {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waiters++
	if q.watcher == nil {
		w := &watcher{changed: make(chan struct{})}
		q.watcher = w
		go q.readCheckpoints(w)
	}
	return q.watcher
}

func (q *Queries) unwatch() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.waiters--
}

// readCheckpoints reads the checkpoint at once, then at every notification of
// the read model (or poll), until no one waits.
func (q *Queries) readCheckpoints(w *watcher) {
	for {
		var woken <-chan struct{}
		if q.listener != nil {
			_, woken = q.listener.Wait(ReadModelsChannel)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		var c checkpointRead
		var txt string
		c.err = q.pool.QueryRow(ctx, `SELECT transaction_id::text, position FROM read_model_checkpoints WHERE read_model = $1`,
			UserStatusModel).Scan(&txt, &c.pos)
		cancel()
		if c.err == nil {
			c.xid, c.err = strconv.ParseUint(txt, 10, 64)
			c.read = c.err == nil
		}
		w.publish(c)
		d := q.poll
		if q.listener != nil && q.listener.Connected() {
			d = 100 * time.Millisecond // only for a lost notification
		}
		t := time.NewTimer(d)
		select {
		case <-woken:
		case <-t.C:
		}
		t.Stop()
		q.mu.Lock()
		if q.waiters == 0 {
			q.watcher = nil
			q.mu.Unlock()
			return
		}
		q.mu.Unlock()
	}
}
