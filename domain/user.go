package domain

import (
	"encoding/base64"
	"encoding/json"
	"sort"
	"time"
)

// UserTwoFactor is the aggregate of one user's stream: all of their 2FA state.
// It is rebuilt from the stream (or a snapshot plus the events after it) for
// every command.
type UserTwoFactor struct {
	tenantID string
	userID   string
	version  int64
	st       userState
}

// userState is everything the events taught the aggregate. Its fields are
// exported only for the JSON of snapshots; the type itself stays private.
type userState struct {
	Forgotten bool `json:"forgotten,omitempty"`
	Required  bool `json:"required,omitempty"`
	// RequirementChangedBy: who last switched "use 2FA" (ChangedBy*), "" if nobody did.
	RequirementChangedBy string `json:"requirement_changed_by,omitempty"`
	CanToggle            *bool  `json:"can_toggle,omitempty"` // nil: the tenant's default
	Enabled              bool   `json:"enabled,omitempty"`
	// EverEnabled tells "disabled" apart from "never activated".
	EverEnabled    bool   `json:"ever_enabled,omitempty"`
	DisabledReason string `json:"disabled_reason,omitempty"`
	// MustReenroll is set by an admin reset until the user enrols again.
	MustReenroll        bool `json:"must_reenroll,omitempty"`
	SetupAppAtNextLogin bool `json:"setup_app_at_next_login,omitempty"`
	// SwitchedFrom is the method the app replaces once it is set up.
	SwitchedFrom Method `json:"switched_from,omitempty"`

	TOTP        *totpAuthenticator     `json:"totp,omitempty"`
	PendingTOTP *pendingTOTP           `json:"pending_totp,omitempty"`
	Contacts    map[Method]string      `json:"contacts,omitempty"` // method → sealed destination
	Setups      map[Method]pendingCode `json:"setups,omitempty"`
	Challenges  map[Method]pendingCode `json:"challenges,omitempty"`
	Default     Method                 `json:"default,omitempty"`
	// ContactAddresses: where messages go when no method gives an address.
	ContactAddresses map[Method]string `json:"contact_addresses,omitempty"`
	BackupCodes      []backupCode      `json:"backup_codes,omitempty"`

	SecurityKeys           []securityKey `json:"security_keys,omitempty"`
	PendingKeyRegistration *keyCeremony  `json:"pending_key_registration,omitempty"`
	KeyChallenge           *keyCeremony  `json:"key_challenge,omitempty"`
	// WebAuthnUserHandle is kept across keys so that one user is one WebAuthn user.
	WebAuthnUserHandle string `json:"webauthn_user_handle,omitempty"`

	ConsecutiveFailures int       `json:"consecutive_failures,omitempty"`
	Lockouts            int       `json:"lockouts,omitempty"`
	LockedUntil         time.Time `json:"locked_until"`

	LastVerifiedAt     time.Time `json:"last_verified_at"`
	LastVerifiedMethod Method    `json:"last_verified_method,omitempty"`
	// VerifiedAt[strength] is the last successful check by a method of that
	// strength: a later weak check must not hide a recent strong one.
	VerifiedAt [maxStrength + 1]time.Time `json:"verified_at"`
}

type totpAuthenticator struct {
	SealedSecret string `json:"sealed_secret"`
	Algorithm    string `json:"algorithm"`
	Digits       int    `json:"digits"`
	PeriodSecs   int    `json:"period_seconds"`
	LastStep     int64  `json:"last_step"`
}

type pendingTOTP struct {
	totpAuthenticator
	ExpiresAt   time.Time `json:"expires_at"`
	Replacement bool      `json:"replacement,omitempty"`
}

type pendingCode struct {
	SealedDestination string    `json:"sealed_destination"`
	SealedCode        string    `json:"sealed_code"`
	IssuedAt          time.Time `json:"issued_at"`
	ExpiresAt         time.Time `json:"expires_at"`
}

type backupCode struct {
	Hash []byte `json:"hash"`
	Used bool   `json:"used,omitempty"`
}

// NewUserTwoFactor returns the empty aggregate for a user's stream.
func NewUserTwoFactor(tenantID, userID string) *UserTwoFactor {
	return &UserTwoFactor{tenantID: tenantID, userID: userID}
}

func (u *UserTwoFactor) TenantID() string { return u.tenantID }
func (u *UserTwoFactor) UserID() string   { return u.userID }
func (u *UserTwoFactor) Version() int64   { return u.version }
func (u *UserTwoFactor) Enabled() bool    { return u.st.Enabled }

// BackupCodesRemaining counts the unused codes of the current set.
func (u *UserTwoFactor) BackupCodesRemaining() int { return u.backupCodesRemaining() }

// TOTPParams are what the command layer needs to check a code.
type TOTPParams struct {
	SealedSecret string
	Algorithm    string
	Digits       int
	PeriodSecs   int
}

// ActiveTOTP returns the confirmed authenticator, if any.
func (u *UserTwoFactor) ActiveTOTP() (TOTPParams, bool) {
	if u.st.TOTP == nil {
		return TOTPParams{}, false
	}
	return u.st.TOTP.params(), true
}

// PendingTOTP returns the enrolment awaiting its first code, if any.
func (u *UserTwoFactor) PendingTOTP() (TOTPParams, bool) {
	if u.st.PendingTOTP == nil {
		return TOTPParams{}, false
	}
	return u.st.PendingTOTP.params(), true
}

func (t totpAuthenticator) params() TOTPParams {
	return TOTPParams{SealedSecret: t.SealedSecret, Algorithm: t.Algorithm, Digits: t.Digits, PeriodSecs: t.PeriodSecs}
}

// PendingChallengeCode returns the sealed login code sent for a method.
func (u *UserTwoFactor) PendingChallengeCode(m Method) (string, bool) {
	c, ok := u.st.Challenges[m]
	return c.SealedCode, ok
}

// PendingSetupCode returns the sealed confirmation code of a method being set up.
func (u *UserTwoFactor) PendingSetupCode(m Method) (string, bool) {
	c, ok := u.st.Setups[m]
	return c.SealedCode, ok
}

// SealedDestination returns the registered address or number of a method.
func (u *UserTwoFactor) SealedDestination(m Method) (string, bool) {
	d, ok := u.st.Contacts[m]
	return d, ok
}

// SealedContactAddress returns the registered contact address of a channel.
func (u *UserTwoFactor) SealedContactAddress(m Method) (string, bool) {
	d, ok := u.st.ContactAddresses[m]
	return d, ok
}

// Apply folds one event into the state. It never fails: events are facts.
func (u *UserTwoFactor) Apply(e Event, at time.Time) {
	u.version++
	if u.applySecurityKey(e, at) {
		return
	}
	switch e := e.(type) {
	case *TOTPEnrollmentStarted:
		u.st.PendingTOTP = &pendingTOTP{
			totpAuthenticator: totpAuthenticator{SealedSecret: e.SealedSecret, Algorithm: e.Algorithm, Digits: e.Digits, PeriodSecs: e.PeriodSecs},
			ExpiresAt:         e.ExpiresAt,
			Replacement:       e.Replacement,
		}
	case *TOTPEnrollmentConfirmed:
		if u.st.PendingTOTP != nil {
			a := u.st.PendingTOTP.totpAuthenticator
			a.LastStep = e.Step
			u.st.TOTP = &a
		}
		u.st.PendingTOTP = nil
		for _, m := range e.RemovedMethods {
			u.removeMethod(m)
		}
		u.st.SetupAppAtNextLogin = false
		u.st.SwitchedFrom = ""
		u.st.MustReenroll = false
		if u.st.Default == "" || len(e.RemovedMethods) > 0 {
			u.st.Default = MethodTOTP
		}
		u.verified(MethodTOTP, at)
	case *OTPMethodSetupStarted:
		u.st.Setups = withCode(u.st.Setups, e.Method, pendingCode{SealedDestination: e.SealedDestination, SealedCode: e.SealedCode, IssuedAt: at, ExpiresAt: e.ExpiresAt})
	case *OTPMethodConfirmed:
		if s, ok := u.st.Setups[e.Method]; ok {
			if u.st.Contacts == nil {
				u.st.Contacts = map[Method]string{}
			}
			u.st.Contacts[e.Method] = s.SealedDestination
			delete(u.st.Setups, e.Method)
		}
		u.st.MustReenroll = false
		if u.st.Default == "" {
			u.st.Default = e.Method
		}
		u.verified(e.Method, at)
	case *TwoFactorEnabled:
		u.st.Enabled = true
		u.st.EverEnabled = true
		u.st.DisabledReason = ""
	case *BackupCodesGenerated:
		u.st.BackupCodes = decodeHashes(e.Hashes)
	case *BackupCodesRegenerated:
		u.st.BackupCodes = decodeHashes(e.Hashes)
	case *BackupCodeConsumed:
		if e.Index >= 0 && e.Index < len(u.st.BackupCodes) {
			u.st.BackupCodes[e.Index].Used = true
		}
		u.verified(MethodBackup, at)
	case *TOTPVerified:
		if u.st.TOTP != nil {
			u.st.TOTP.LastStep = e.Step
		}
		u.verified(MethodTOTP, at)
	case *OTPVerified:
		delete(u.st.Challenges, e.Method)
		u.verified(e.Method, at)
	case *OTPChallengeIssued:
		u.st.Challenges = withCode(u.st.Challenges, e.Method, pendingCode{SealedDestination: e.SealedDestination, SealedCode: e.SealedCode, IssuedAt: at, ExpiresAt: e.ExpiresAt})
	case *TOTPCheckFailed:
		u.st.ConsecutiveFailures++
	case *OTPCheckFailed:
		u.st.ConsecutiveFailures++
	case *BackupCodeCheckFailed:
		u.st.ConsecutiveFailures++
	case *TwoFactorLocked:
		u.st.LockedUntil = e.Until
		u.st.Lockouts = e.Lockout
		// A new count starts when the lock ends.
		u.st.ConsecutiveFailures = 0
	case *TwoFactorUnlocked:
		u.st.LockedUntil = time.Time{}
		u.st.ConsecutiveFailures = 0
	case *DefaultMethodChanged:
		u.st.Default = e.Method
	case *MethodRemoved:
		u.removeMethod(e.Method)
	case *MethodSwitched:
		switch e.To {
		case MethodTOTP:
			u.st.SetupAppAtNextLogin = true
			u.st.SwitchedFrom = e.From
		default:
			u.removeMethod(MethodTOTP)
			u.removeMethod(MethodWebAuthn)
			for m := range u.st.Contacts {
				if m != e.To {
					u.removeMethod(m)
				}
			}
			if u.st.Contacts == nil {
				u.st.Contacts = map[Method]string{}
			}
			if e.SealedDestination != "" {
				u.st.Contacts[e.To] = e.SealedDestination
			}
			u.st.Default = e.To
			u.st.SetupAppAtNextLogin = false
		}
	case *TwoFactorDisabled:
		u.wipe()
		// A recovery code that switched 2FA off means: enrol again.
		u.st.MustReenroll = e.Reason == DisabledByRecoveryCode
		u.st.DisabledReason = e.Reason
	case *TwoFactorReset:
		u.wipe()
		u.st.DisabledReason = ""
		u.st.MustReenroll = true
		u.st.ConsecutiveFailures = 0
		u.st.LockedUntil = time.Time{}
	case *TwoFactorRequirementChanged:
		u.st.Required = e.Required
		u.st.RequirementChangedBy = ChangedByAdmin
		if e.ByUser() {
			u.st.RequirementChangedBy = ChangedByUser
			// The user declined 2FA: a re-enrolment demanded by a reset or a
			// recovery code goes with the requirement, or the prompt would stay.
			u.st.MustReenroll = u.st.MustReenroll && e.Required
		}
	case *TogglePermissionChanged:
		v := e.CanToggle
		u.st.CanToggle = &v
	case *ContactAddressSet:
		if e.SealedAddress == "" {
			delete(u.st.ContactAddresses, e.Method)
			break
		}
		if u.st.ContactAddresses == nil {
			u.st.ContactAddresses = map[Method]string{}
		}
		u.st.ContactAddresses[e.Method] = e.SealedAddress
	case *UserForgotten:
		u.wipe()
		u.st.ContactAddresses = nil
		u.st.Forgotten = true
		u.st.Required = false
		u.st.MustReenroll = false
	}
}

func withCode(m map[Method]pendingCode, method Method, c pendingCode) map[Method]pendingCode {
	if m == nil {
		m = map[Method]pendingCode{}
	}
	m[method] = c
	return m
}

func decodeHashes(encoded []string) []backupCode {
	codes := make([]backupCode, 0, len(encoded))
	for _, h := range encoded {
		raw, err := base64.StdEncoding.DecodeString(h)
		if err != nil {
			raw = nil // an unreadable hash can never match
		}
		codes = append(codes, backupCode{Hash: raw})
	}
	return codes
}

func (u *UserTwoFactor) verified(m Method, at time.Time) {
	u.st.LastVerifiedAt = at
	u.st.LastVerifiedMethod = m
	u.st.VerifiedAt[m.strength()] = at
	u.st.ConsecutiveFailures = 0
	u.st.Lockouts = 0
}

func (u *UserTwoFactor) removeMethod(m Method) {
	switch m {
	case MethodTOTP:
		u.st.TOTP = nil
		u.st.PendingTOTP = nil
	case MethodWebAuthn:
		u.st.SecurityKeys = nil
		u.st.PendingKeyRegistration = nil
		u.st.KeyChallenge = nil
	default:
		delete(u.st.Contacts, m)
		delete(u.st.Challenges, m)
		delete(u.st.Setups, m)
	}
	if u.st.Default == m {
		u.st.Default = ""
		if methods := u.methods(); len(methods) > 0 {
			u.st.Default = methods[0]
		}
	}
}

func (u *UserTwoFactor) wipe() {
	u.st.Enabled = false
	u.st.TOTP = nil
	u.st.PendingTOTP = nil
	u.st.Contacts = nil
	u.st.Setups = nil
	u.st.Challenges = nil
	u.st.Default = ""
	u.st.BackupCodes = nil
	u.st.SecurityKeys = nil
	u.st.PendingKeyRegistration = nil
	u.st.KeyChallenge = nil
	u.st.SetupAppAtNextLogin = false
	u.st.SwitchedFrom = ""
}

// methods lists the confirmed methods, strongest first.
func (u *UserTwoFactor) methods() []Method {
	var out []Method
	if u.st.TOTP != nil {
		out = append(out, MethodTOTP)
	}
	if len(u.st.SecurityKeys) > 0 {
		out = append(out, MethodWebAuthn)
	}
	for m := range u.st.Contacts {
		out = append(out, m)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].strength() != out[j].strength() {
			return out[i].strength() > out[j].strength()
		}
		return out[i] < out[j]
	})
	return out
}

func (u *UserTwoFactor) hasMethod(m Method) bool {
	switch m {
	case MethodTOTP:
		return u.st.TOTP != nil
	case MethodWebAuthn:
		return len(u.st.SecurityKeys) > 0
	}
	_, ok := u.st.Contacts[m]
	return ok
}

func (u *UserTwoFactor) strongestMethod() int {
	best := 0
	for _, m := range u.methods() {
		if s := m.strength(); s > best {
			best = s
		}
	}
	return best
}

func (u *UserTwoFactor) backupCodesRemaining() int {
	n := 0
	for _, c := range u.st.BackupCodes {
		if !c.Used {
			n++
		}
	}
	return n
}

func (u *UserTwoFactor) locked(now time.Time) bool { return now.Before(u.st.LockedUntil) }

func (u *UserTwoFactor) mayToggle(p Policy) bool {
	if u.st.CanToggle != nil {
		return *u.st.CanToggle
	}
	return p.DefaultCanToggle
}

// Status is what the service shows of a user at a moment.
type Status string

const (
	StatusNotActivated        Status = "not_activated"
	StatusPending             Status = "pending"
	StatusActivated           Status = "activated"
	StatusLocked              Status = "locked"
	StatusDisabled            Status = "disabled"
	StatusResetPending        Status = "reset_pending"
	StatusSetupAppAtNextLogin Status = "setup_app_at_next_login"
	StatusErased              Status = "erased"
)

// Snapshot is a read-only view of the aggregate at a moment.
type Snapshot struct {
	TenantID             string   `json:"tenant_id"`
	UserID               string   `json:"user_id"`
	Version              int64    `json:"version"`
	Status               Status   `json:"status"`
	Enabled              bool     `json:"enabled"`
	Methods              []Method `json:"methods"`
	DefaultMethod        Method   `json:"default_method,omitempty"`
	PendingMethods       []Method `json:"pending_methods"`
	BackupCodesRemaining int      `json:"backup_codes_remaining"`
	Required             bool     `json:"required"`
	// RequirementWaivedBy says who switched "use 2FA" off (ChangedBy*) while it is off.
	RequirementWaivedBy string    `json:"requirement_waived_by,omitempty"`
	CanToggle           bool      `json:"can_toggle"`
	MustEnroll          bool      `json:"must_enroll"`
	SetupAppAtNextLogin bool      `json:"setup_app_at_next_login"`
	LockedUntil         time.Time `json:"locked_until,omitempty"`
	AttemptsRemaining   int       `json:"attempts_remaining"`
	LastVerifiedAt      time.Time `json:"last_verified_at,omitempty"`
	LastVerifiedMethod  Method    `json:"last_verified_method,omitempty"`
	// SecurityKeys counts the registered security keys (the method "webauthn").
	SecurityKeys int `json:"security_keys"`
}

// Snapshot derives the status at `now` under policy p.
func (u *UserTwoFactor) Snapshot(now time.Time, p Policy) Snapshot {
	s := Snapshot{
		TenantID:             u.tenantID,
		UserID:               u.userID,
		Version:              u.version,
		Enabled:              u.st.Enabled,
		Methods:              u.methods(),
		DefaultMethod:        u.st.Default,
		PendingMethods:       u.pendingMethods(now),
		BackupCodesRemaining: u.backupCodesRemaining(),
		Required:             u.st.Required,
		CanToggle:            u.mayToggle(p),
		MustEnroll:           u.mustEnroll(),
		SetupAppAtNextLogin:  u.st.SetupAppAtNextLogin,
		AttemptsRemaining:    u.attemptsRemaining(now, p),
		LastVerifiedAt:       u.st.LastVerifiedAt,
		LastVerifiedMethod:   u.st.LastVerifiedMethod,
		SecurityKeys:         len(u.st.SecurityKeys),
	}
	if s.Methods == nil {
		s.Methods = []Method{}
	}
	if !u.st.Required {
		s.RequirementWaivedBy = u.st.RequirementChangedBy
	}
	if u.locked(now) {
		s.LockedUntil = u.st.LockedUntil
	}
	switch {
	case u.st.Forgotten:
		s.Status = StatusErased
	case u.locked(now):
		s.Status = StatusLocked
	case u.st.Enabled && u.st.SetupAppAtNextLogin:
		s.Status = StatusSetupAppAtNextLogin
	case u.st.Enabled:
		s.Status = StatusActivated
	case len(s.PendingMethods) > 0:
		s.Status = StatusPending
	case u.st.MustReenroll && u.st.DisabledReason == "":
		s.Status = StatusResetPending
	case u.st.EverEnabled:
		s.Status = StatusDisabled
	default:
		s.Status = StatusNotActivated
	}
	return s
}

func (u *UserTwoFactor) pendingMethods(now time.Time) []Method {
	out := []Method{}
	if u.st.PendingTOTP != nil && now.Before(u.st.PendingTOTP.ExpiresAt) {
		out = append(out, MethodTOTP)
	}
	for _, m := range []Method{MethodEmail, MethodSMS} {
		if s, ok := u.st.Setups[m]; ok && now.Before(s.ExpiresAt) {
			out = append(out, m)
		}
	}
	if r := u.st.PendingKeyRegistration; r != nil && now.Before(r.ExpiresAt) {
		out = append(out, MethodWebAuthn)
	}
	return out
}

// mustEnroll: the next login has to enrol before it can verify.
func (u *UserTwoFactor) mustEnroll() bool {
	return !u.st.Enabled && (u.st.Required || u.st.MustReenroll)
}

func (u *UserTwoFactor) attemptsRemaining(now time.Time, p Policy) int {
	if u.locked(now) {
		return 0
	}
	n := p.LockoutThreshold - u.st.ConsecutiveFailures
	if n < 0 {
		return 0
	}
	return n
}

// StateSchema names the meaning of a saved state. Bump it whenever Apply or
// userState change meaning: saved states of another schema are then ignored and
// rebuilt from the stream.
//
// 2: RequirementChangedBy (states of 1 lack it for an admin's waiver).
// 3: security keys, which a switch to email or SMS now removes too.
const StateSchema = 3

// SaveState serialises the aggregate's state for a snapshot (a cache: the stream
// stays the truth).
func (u *UserTwoFactor) SaveState() ([]byte, error) { return json.Marshal(u.st) }

// RestoreUserTwoFactor rebuilds an aggregate from a saved state at a version; the
// events after that version are then applied as usual.
func RestoreUserTwoFactor(tenantID, userID string, version int64, state []byte) (*UserTwoFactor, error) {
	u := NewUserTwoFactor(tenantID, userID)
	if err := json.Unmarshal(state, &u.st); err != nil {
		return nil, err
	}
	u.version = version
	return u, nil
}
