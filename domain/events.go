package domain

import (
	"reflect"
	"time"
)

// Event is a fact recorded in the log.
//
// WARNING: an event's type name (EventType, equal to the struct name) and its JSON
// field names are durable: they are stored in the events table forever. Never
// rename them; add a new event type or an upcaster instead.
type Event interface {
	EventType() string
}

// Sealed fields (Sealed*) hold AES-GCM ciphertexts produced by the command layer;
// the domain never sees a secret in plain text.

type TenantCreated struct {
	Name   string `json:"name"`
	Policy Policy `json:"policy"`
}

type TenantPolicyChanged struct {
	Policy   Policy `json:"policy"`
	Previous Policy `json:"previous"`
}

// TOTPEnrollmentStarted records a pending authenticator; it activates nothing.
type TOTPEnrollmentStarted struct {
	SealedSecret string    `json:"sealed_secret"`
	Algorithm    string    `json:"algorithm"`
	Digits       int       `json:"digits"`
	PeriodSecs   int       `json:"period_seconds"`
	ExpiresAt    time.Time `json:"expires_at"`
	// Replacement: a confirmed authenticator exists and will be replaced.
	Replacement bool `json:"replacement"`
}

// TOTPEnrollmentConfirmed: the first code matched; the pending secret is now the authenticator.
type TOTPEnrollmentConfirmed struct {
	Step        int64 `json:"step"`
	Replacement bool  `json:"replacement"`
	// RemovedMethods were replaced by the app after an admin switched the user to it.
	RemovedMethods []Method `json:"removed_methods,omitempty"`
}

// OTPMethodSetupStarted: an email address or phone number awaits its confirmation code.
type OTPMethodSetupStarted struct {
	Method            Method    `json:"method"`
	SealedDestination string    `json:"sealed_destination"`
	SealedCode        string    `json:"sealed_code"`
	ExpiresAt         time.Time `json:"expires_at"`
}

type OTPMethodConfirmed struct {
	Method Method `json:"method"`
}

type TwoFactorEnabled struct {
	Method Method `json:"method"`
}

// Backup code sets hold only keyed hashes (base64), never the codes.
const (
	BackupReasonEnabled              = "enabled"
	BackupReasonAuthenticatorReplace = "authenticator_replaced"
	BackupReasonMethodSwitched       = "method_switched"
)

type BackupCodesGenerated struct {
	Hashes []string `json:"hashes"`
	Reason string   `json:"reason"`
}

type BackupCodesRegenerated struct {
	Hashes []string `json:"hashes"`
}

type BackupCodeConsumed struct {
	Index     int `json:"index"`
	Remaining int `json:"remaining"`
	// LowThreshold is the tenant's warning threshold at the time, for the notifier.
	LowThreshold int `json:"low_threshold"`
}

type BackupCodeCheckFailed struct {
	ConsecutiveFailures int `json:"consecutive_failures"`
}

type TOTPVerified struct {
	Step int64 `json:"step"`
}

// Purpose of a failed check.
const (
	CheckLogin      = "login"
	CheckEnrollment = "enrollment"
)

type TOTPCheckFailed struct {
	Purpose string `json:"purpose"`
	// Replayed: the code was valid once and already used (possible theft of a code).
	Replayed            bool `json:"replayed"`
	ConsecutiveFailures int  `json:"consecutive_failures"`
}

// OTPChallengeIssued: a login code is to be sent by email or SMS.
type OTPChallengeIssued struct {
	Method            Method    `json:"method"`
	SealedDestination string    `json:"sealed_destination"`
	SealedCode        string    `json:"sealed_code"`
	ExpiresAt         time.Time `json:"expires_at"`
}

type OTPVerified struct {
	Method Method `json:"method"`
}

type OTPCheckFailed struct {
	Method              Method `json:"method"`
	Purpose             string `json:"purpose"`
	ConsecutiveFailures int    `json:"consecutive_failures"`
}

type TwoFactorLocked struct {
	Until   time.Time `json:"until"`
	Lockout int       `json:"lockout"`
}

type TwoFactorUnlocked struct{}

type DefaultMethodChanged struct {
	Method Method `json:"method"`
}

type MethodRemoved struct {
	Method Method `json:"method"`
}

// MethodSwitched: the user's method was changed (usually by an admin). To email or
// SMS takes effect at once; to the app sets "set up the app at next login".
type MethodSwitched struct {
	From              Method `json:"from"`
	To                Method `json:"to"`
	SealedDestination string `json:"sealed_destination,omitempty"`
	// RemovedMethods are the methods the switch to email or SMS took away; From
	// equal to To cancels a pending switch to the app.
	RemovedMethods []Method `json:"removed_methods,omitempty"`
}

const (
	DisabledByUser         = "user"
	DisabledByAdmin        = "admin"
	DisabledByRecoveryCode = "recovery_code_used"
)

// TwoFactorDisabled removes every method and voids all backup codes.
type TwoFactorDisabled struct {
	Reason string `json:"reason"`
}

// TwoFactorReset wipes the setup; the user must enrol again at the next login.
type TwoFactorReset struct{}

// Who changed "use 2FA" (TwoFactorRequirementChanged.ChangedBy).
// WARNING: durable values, stored in events.
const (
	ChangedByAdmin = "admin"
	ChangedByUser  = "user"
)

// TwoFactorRequirementChanged switches "use 2FA" on or off. An admin does it for
// any user; a user with "can toggle 2FA" for themself, which at the enrolment
// prompt is how they decline 2FA ("Disable 2FA" there).
type TwoFactorRequirementChanged struct {
	Required bool `json:"required"`
	// ChangedBy is ChangedByAdmin or ChangedByUser. Events from before users could
	// change it carry none and were an admin's (see ByUser). WARNING: durable JSON name.
	ChangedBy string `json:"changed_by,omitempty"`
}

// ByUser: the user changed it for themself rather than an admin.
func (e *TwoFactorRequirementChanged) ByUser() bool { return e.ChangedBy == ChangedByUser }

type TogglePermissionChanged struct {
	CanToggle bool `json:"can_toggle"`
}

// ContactAddressSet registers (or, with an empty SealedAddress, removes) the
// address where security messages go for a user whose methods give none (an
// app-only user). It is not a second factor.
type ContactAddressSet struct {
	Method        Method `json:"method"`
	SealedAddress string `json:"sealed_address"`
}

// UserForgotten: the user's data key was deleted; the stream is closed.
type UserForgotten struct{}

// Security keys (WebAuthn). A credential's id and public key are personal data:
// they enter events only inside SealedCredential, sealed under the user's data
// key, so forgetting the user erases them. Challenges are not secrets (the
// browser sees them) and are stored as they are, base64url.

// SecurityKeyRegistrationStarted: registration options were issued; the
// challenge is valid until ExpiresAt and for one attestation.
type SecurityKeyRegistrationStarted struct {
	Challenge string `json:"challenge"`
	// UserHandle is the user's WebAuthn user id: random, never the host's user id.
	UserHandle       string    `json:"user_handle"`
	UserVerification string    `json:"user_verification"`
	ExpiresAt        time.Time `json:"expires_at"`
}

// SecurityKeyRegistered: an attestation answered the pending challenge.
type SecurityKeyRegistered struct {
	// KeyID is our name for the key (random), used by the API and in later events.
	KeyID            string `json:"key_id"`
	SealedName       string `json:"sealed_name"`
	SealedCredential string `json:"sealed_credential"`
	SignCount        uint32 `json:"sign_count"`
	UserVerified     bool   `json:"user_verified"`
	// AttestationFormat ("none", "packed", …) says what vouched for the key.
	AttestationFormat string `json:"attestation_format"`
}

// SecurityKeyChallengeIssued: login options were issued for the user's keys.
type SecurityKeyChallengeIssued struct {
	Challenge        string    `json:"challenge"`
	UserVerification string    `json:"user_verification"`
	ExpiresAt        time.Time `json:"expires_at"`
}

// SecurityKeyUsed: an assertion answered the pending challenge; the login is verified.
type SecurityKeyUsed struct {
	KeyID        string `json:"key_id"`
	SignCount    uint32 `json:"sign_count"`
	UserVerified bool   `json:"user_verified"`
}

// Why an assertion failed (SecurityKeyAssertionFailed.Reason).
// WARNING: durable values, stored in events.
const (
	AssertionInvalid         = "invalid_assertion"
	AssertionUnknownKey      = "unknown_key"
	AssertionUserNotVerified = "user_not_verified"
)

// SecurityKeyAssertionFailed: the assertion did not verify; the challenge is
// spent and the failure counts towards a lockout like a wrong code.
type SecurityKeyAssertionFailed struct {
	KeyID               string `json:"key_id,omitempty"`
	Reason              string `json:"reason"`
	ConsecutiveFailures int    `json:"consecutive_failures"`
}

// SecurityKeyCloneSuspected: a valid signature came with a counter at or
// below the stored one, which a genuine key never does: two copies of the key
// may exist. Refused says whether the tenant refused the login for it.
type SecurityKeyCloneSuspected struct {
	KeyID         string `json:"key_id"`
	StoredCount   uint32 `json:"stored_count"`
	ReceivedCount uint32 `json:"received_count"`
	Refused       bool   `json:"refused"`
}

// SecurityKeyRemoved: the key no longer logs in; Remaining keys are left.
type SecurityKeyRemoved struct {
	KeyID     string `json:"key_id"`
	Remaining int    `json:"remaining"`
}

func (*TenantCreated) EventType() string               { return "TenantCreated" }
func (*TenantPolicyChanged) EventType() string         { return "TenantPolicyChanged" }
func (*TOTPEnrollmentStarted) EventType() string       { return "TOTPEnrollmentStarted" }
func (*TOTPEnrollmentConfirmed) EventType() string     { return "TOTPEnrollmentConfirmed" }
func (*OTPMethodSetupStarted) EventType() string       { return "OTPMethodSetupStarted" }
func (*OTPMethodConfirmed) EventType() string          { return "OTPMethodConfirmed" }
func (*TwoFactorEnabled) EventType() string            { return "TwoFactorEnabled" }
func (*BackupCodesGenerated) EventType() string        { return "BackupCodesGenerated" }
func (*BackupCodesRegenerated) EventType() string      { return "BackupCodesRegenerated" }
func (*BackupCodeConsumed) EventType() string          { return "BackupCodeConsumed" }
func (*BackupCodeCheckFailed) EventType() string       { return "BackupCodeCheckFailed" }
func (*TOTPVerified) EventType() string                { return "TOTPVerified" }
func (*TOTPCheckFailed) EventType() string             { return "TOTPCheckFailed" }
func (*OTPChallengeIssued) EventType() string          { return "OTPChallengeIssued" }
func (*OTPVerified) EventType() string                 { return "OTPVerified" }
func (*OTPCheckFailed) EventType() string              { return "OTPCheckFailed" }
func (*TwoFactorLocked) EventType() string             { return "TwoFactorLocked" }
func (*TwoFactorUnlocked) EventType() string           { return "TwoFactorUnlocked" }
func (*DefaultMethodChanged) EventType() string        { return "DefaultMethodChanged" }
func (*MethodRemoved) EventType() string               { return "MethodRemoved" }
func (*MethodSwitched) EventType() string              { return "MethodSwitched" }
func (*TwoFactorDisabled) EventType() string           { return "TwoFactorDisabled" }
func (*TwoFactorReset) EventType() string              { return "TwoFactorReset" }
func (*TwoFactorRequirementChanged) EventType() string { return "TwoFactorRequirementChanged" }
func (*TogglePermissionChanged) EventType() string     { return "TogglePermissionChanged" }
func (*ContactAddressSet) EventType() string           { return "ContactAddressSet" }
func (*UserForgotten) EventType() string               { return "UserForgotten" }
func (*SecurityKeyRegistrationStarted) EventType() string {
	return "SecurityKeyRegistrationStarted"
}
func (*SecurityKeyRegistered) EventType() string      { return "SecurityKeyRegistered" }
func (*SecurityKeyChallengeIssued) EventType() string { return "SecurityKeyChallengeIssued" }
func (*SecurityKeyUsed) EventType() string            { return "SecurityKeyUsed" }
func (*SecurityKeyAssertionFailed) EventType() string { return "SecurityKeyAssertionFailed" }
func (*SecurityKeyCloneSuspected) EventType() string  { return "SecurityKeyCloneSuspected" }
func (*SecurityKeyRemoved) EventType() string         { return "SecurityKeyRemoved" }

// NewEvent returns an empty event of a stored type name, for decoding. It runs
// once per event read, so it looks the type up instead of building every event.
func NewEvent(eventType string) (Event, bool) {
	t, ok := eventTypes[eventType]
	if !ok {
		return nil, false
	}
	return reflect.New(t).Interface().(Event), true
}

var eventTypes = func() map[string]reflect.Type {
	m := map[string]reflect.Type{}
	for _, e := range AllEvents() {
		m[e.EventType()] = reflect.TypeOf(e).Elem()
	}
	return m
}()

// AllEvents lists one fresh value of every event type.
func AllEvents() []Event {
	return []Event{
		&TenantCreated{}, &TenantPolicyChanged{},
		&TOTPEnrollmentStarted{}, &TOTPEnrollmentConfirmed{},
		&OTPMethodSetupStarted{}, &OTPMethodConfirmed{},
		&TwoFactorEnabled{}, &BackupCodesGenerated{}, &BackupCodesRegenerated{},
		&BackupCodeConsumed{}, &BackupCodeCheckFailed{},
		&TOTPVerified{}, &TOTPCheckFailed{},
		&OTPChallengeIssued{}, &OTPVerified{}, &OTPCheckFailed{},
		&TwoFactorLocked{}, &TwoFactorUnlocked{},
		&DefaultMethodChanged{}, &MethodRemoved{}, &MethodSwitched{},
		&TwoFactorDisabled{}, &TwoFactorReset{},
		&TwoFactorRequirementChanged{}, &TogglePermissionChanged{},
		&ContactAddressSet{}, &UserForgotten{},
		&SecurityKeyRegistrationStarted{}, &SecurityKeyRegistered{}, &SecurityKeyChallengeIssued{},
		&SecurityKeyUsed{}, &SecurityKeyAssertionFailed{}, &SecurityKeyCloneSuspected{}, &SecurityKeyRemoved{},
	}
}
