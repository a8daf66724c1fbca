package handlers

import (
	"context"
	"errors"
	"time"

	"github.com/twofactor/twofactor/audit"
	"github.com/twofactor/twofactor/domain"
)

// UserStatus is the JSON shape of one user's 2FA state, live or at a past time.
type UserStatus struct {
	UserID               string          `json:"user_id"`
	Status               domain.Status   `json:"status"`
	Enabled              bool            `json:"enabled"`
	Methods              []domain.Method `json:"methods"`
	DefaultMethod        domain.Method   `json:"default_method,omitempty"`
	PendingMethods       []domain.Method `json:"pending_methods"`
	BackupCodesRemaining int             `json:"backup_codes_remaining"`
	SecurityKeys         int             `json:"security_keys"`
	Required             bool            `json:"required"`
	// RequirementWaivedBy: "user" or "admin", who switched "use 2FA" off (absent when on or never set).
	RequirementWaivedBy string        `json:"requirement_waived_by,omitempty"`
	CanToggle           bool          `json:"can_toggle"`
	MustEnroll          bool          `json:"must_enroll"`
	SetupAppAtNextLogin bool          `json:"setup_app_at_next_login"`
	LockedUntil         *time.Time    `json:"locked_until,omitempty"`
	AttemptsRemaining   *int          `json:"attempts_remaining,omitempty"`
	LastVerifiedAt      *time.Time    `json:"last_verified_at,omitempty"`
	LastVerifiedMethod  domain.Method `json:"last_verified_method,omitempty"`
	// Version is the user's stream version the view reflects.
	Version int64 `json:"version"`
	// UpdatedAt is when the read model last changed the row (read-model views only).
	UpdatedAt *time.Time `json:"updated_at,omitempty"`
}

// StatusFromSnapshot turns the domain's snapshot into the API shape.
func StatusFromSnapshot(s domain.Snapshot) UserStatus {
	u := UserStatus{
		UserID: s.UserID, Status: s.Status, Enabled: s.Enabled, Methods: s.Methods,
		DefaultMethod: s.DefaultMethod, PendingMethods: s.PendingMethods,
		BackupCodesRemaining: s.BackupCodesRemaining, SecurityKeys: s.SecurityKeys, Required: s.Required, RequirementWaivedBy: s.RequirementWaivedBy,
		CanToggle:  s.CanToggle,
		MustEnroll: s.MustEnroll, SetupAppAtNextLogin: s.SetupAppAtNextLogin,
		LastVerifiedMethod: s.LastVerifiedMethod, Version: s.Version,
	}
	n := s.AttemptsRemaining
	u.AttemptsRemaining = &n
	u.LockedUntil = timePtr(s.LockedUntil)
	u.LastVerifiedAt = timePtr(s.LastVerifiedAt)
	if u.Methods == nil {
		u.Methods = []domain.Method{}
	}
	if u.PendingMethods == nil {
		u.PendingMethods = []domain.Method{}
	}
	return u
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// UserQuery filters and pages the admin user list. Nil filters match everything.
type UserQuery struct {
	Status         domain.Status
	Method         domain.Method
	Required       *bool
	LowBackupCodes *bool
	Locked         *bool
	Limit          int
	// After is the opaque cursor of the previous page.
	After string
}

// UserPage is one page of the user list.
type UserPage struct {
	Users []UserStatus `json:"users"`
	// NextCursor is empty on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// Coverage is a tenant's 2FA coverage.
type Coverage struct {
	Users               int                   `json:"users"`
	ByStatus            map[domain.Status]int `json:"by_status"`
	Activated           int                   `json:"activated"`
	ActivatedShare      float64               `json:"activated_share"`
	RequiredNotEnrolled int                   `json:"required_not_enrolled"`
	LockedNow           int                   `json:"locked_now"`
	UpdatedAt           *time.Time            `json:"updated_at,omitempty"`
	AppliedPosition     int64                 `json:"applied_position"`
}

// ErrReadTimeout is returned by a read model that did not reach the requested
// position in time; the API answers 503 with Retry-After rather than stale data.
var ErrReadTimeout = errors.New("read model did not reach the requested position in time")

// ReadModels is what the API needs from the read side. minPosition > 0 asks
// the read model to wait (bounded) until it has applied that log position.
type ReadModels interface {
	ListUsers(ctx context.Context, tenantID string, q UserQuery, minPosition int64) (UserPage, error)
	Coverage(ctx context.Context, tenantID string, minPosition int64) (Coverage, error)
}

// AuditLog is what the auditor routes need; *audit.Auditor is the implementation.
type AuditLog interface {
	History(ctx context.Context, tenantID, userID string, f audit.Filter) (audit.Page, error)
	Feed(ctx context.Context, tenantID string, f audit.Filter) (audit.Page, error)
	StateAt(ctx context.Context, tenantID, userID string, at time.Time) (domain.Snapshot, error)
	Verify(ctx context.Context, tenantID string) (audit.Report, error)
	RecordAccess(ctx context.Context, acc audit.Access) error
}
