package domain

import (
	"reflect"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// DisablePermission says who may switch 2FA off for a user.
type DisablePermission string

const (
	// DisableByAdminsAndTogglers: admins, and users whose "can toggle 2FA" is on.
	DisableByAdminsAndTogglers DisablePermission = "admins_and_toggle_users"
	// DisableBySuperAdmins reserves disabling to super admins.
	DisableBySuperAdmins DisablePermission = "superadmins"
)

// Policy is a tenant's 2FA policy. Zero values are never meaningful: start from
// DefaultPolicy and change fields.
type Policy struct {
	IssuerName string `json:"issuer_name"`
	// SupportContact is named in messages ("contact … if this was not you").
	SupportContact string `json:"support_contact,omitempty"`
	// MailFrom overrides the service's sender address for this tenant.
	MailFrom string `json:"mail_from,omitempty"`

	TOTPDigits    int           `json:"totp_digits"`
	TOTPPeriod    time.Duration `json:"totp_period"`
	TOTPAlgorithm string        `json:"totp_algorithm"`
	TOTPSkew      int           `json:"totp_skew"`
	EnrollmentTTL time.Duration `json:"enrollment_ttl"`

	BackupCodeCount    int `json:"backup_code_count"`
	LowBackupCodesWarn int `json:"low_backup_codes_warning"`
	// RecoveryCodeDisables: a login with a backup code switches 2FA off.
	RecoveryCodeDisables bool `json:"recovery_code_disables"`

	EmailOTPAllowed   bool          `json:"email_otp_allowed"`
	SMSOTPAllowed     bool          `json:"sms_otp_allowed"`
	OTPLength         int           `json:"otp_length"`
	OTPLifetime       time.Duration `json:"otp_lifetime"`
	OTPResendCooldown time.Duration `json:"otp_resend_cooldown"`

	LockoutThreshold   int           `json:"lockout_threshold"`
	LockoutDuration    time.Duration `json:"lockout_duration"`
	LockoutMaxDuration time.Duration `json:"lockout_max_duration"`

	DisableBy               DisablePermission `json:"disable_by"`
	DefaultCanToggle        bool              `json:"default_can_toggle"`
	FreshVerificationWindow time.Duration     `json:"fresh_verification_window"`

	// WebAuthn is the tenant's relying party. Policies stored before security
	// keys existed decode with its zero value: no relying party, so the method
	// is unavailable until an admin sets one.
	WebAuthn WebAuthnPolicy `json:"webauthn"`
}

// DefaultPolicy is PRODUCT.md's table of defaults.
func DefaultPolicy() Policy {
	return Policy{
		IssuerName:              "twofactor",
		TOTPDigits:              6,
		TOTPPeriod:              30 * time.Second,
		TOTPAlgorithm:           "SHA1",
		TOTPSkew:                1,
		EnrollmentTTL:           15 * time.Minute,
		BackupCodeCount:         10,
		LowBackupCodesWarn:      2,
		RecoveryCodeDisables:    false,
		EmailOTPAllowed:         true,
		SMSOTPAllowed:           true,
		OTPLength:               6,
		OTPLifetime:             10 * time.Minute,
		OTPResendCooldown:       60 * time.Second,
		LockoutThreshold:        5,
		LockoutDuration:         15 * time.Minute,
		LockoutMaxDuration:      24 * time.Hour,
		DisableBy:               DisableByAdminsAndTogglers,
		DefaultCanToggle:        true,
		FreshVerificationWindow: 20 * time.Minute,
		WebAuthn: WebAuthnPolicy{
			UserVerification: UserVerificationPreferred,
			ChallengeTTL:     DefaultWebAuthnChallengeTTL,
		},
	}
}

// MaxConsecutiveFailures: PRODUCT.md never allows more than 100 wrong codes in a row without a lock.
const MaxConsecutiveFailures = 100

// Validate refuses a policy that would weaken the service below its floor.
func (p Policy) Validate() error {
	bad := func(detail string) error { return Invalid(CodeInvalidPolicy, detail) }
	for _, f := range []struct{ name, value string }{
		{"issuer_name", p.IssuerName}, {"support_contact", p.SupportContact}, {"mail_from", p.MailFrom},
	} {
		if err := CheckText(f.name, f.value); err != nil {
			return err
		}
	}
	switch {
	case p.IssuerName == "" || utf8.RuneCountInString(p.IssuerName) > 100:
		return bad("issuer_name must be 1-100 characters")
	case utf8.RuneCountInString(p.SupportContact) > 200:
		return bad("support_contact must be at most 200 characters")
	case p.MailFrom != "" && !plausibleAddress(p.MailFrom):
		return bad("mail_from must be a plain email address")
	case p.TOTPDigits != 6 && p.TOTPDigits != 8:
		return bad("totp_digits must be 6 or 8")
	case p.TOTPPeriod < 15*time.Second || p.TOTPPeriod > 120*time.Second || p.TOTPPeriod%time.Second != 0:
		return bad("totp_period must be whole seconds between 15 and 120")
	case p.TOTPAlgorithm != "SHA1" && p.TOTPAlgorithm != "SHA256" && p.TOTPAlgorithm != "SHA512":
		return bad("totp_algorithm must be SHA1, SHA256 or SHA512")
	case p.TOTPSkew < 0 || p.TOTPSkew > 2:
		return bad("totp_skew must be 0, 1 or 2 steps")
	case p.EnrollmentTTL < time.Minute || p.EnrollmentTTL > 24*time.Hour:
		return bad("enrollment_ttl must be between 1 minute and 24 hours")
	case p.BackupCodeCount < 5 || p.BackupCodeCount > 20:
		return bad("backup_code_count must be between 5 and 20")
	case p.LowBackupCodesWarn < 0 || p.LowBackupCodesWarn >= p.BackupCodeCount:
		return bad("low_backup_codes_warning must be between 0 and backup_code_count-1")
	case p.OTPLength < 6 || p.OTPLength > 10:
		return bad("otp_length must be between 6 and 10")
	case p.OTPLifetime < time.Minute || p.OTPLifetime > time.Hour:
		return bad("otp_lifetime must be between 1 minute and 1 hour")
	case p.OTPResendCooldown < 0 || p.OTPResendCooldown > p.OTPLifetime:
		return bad("otp_resend_cooldown must be between 0 and otp_lifetime")
	case p.LockoutThreshold < 1 || p.LockoutThreshold > MaxConsecutiveFailures:
		return bad("lockout_threshold must be between 1 and 100")
	case p.LockoutDuration < time.Minute || p.LockoutMaxDuration < p.LockoutDuration || p.LockoutMaxDuration > 7*24*time.Hour:
		return bad("lockout_duration must be at least 1 minute and lockout_max_duration between it and 7 days")
	case p.DisableBy != DisableByAdminsAndTogglers && p.DisableBy != DisableBySuperAdmins:
		return bad("disable_by must be admins_and_toggle_users or superadmins")
	case p.FreshVerificationWindow < time.Minute || p.FreshVerificationWindow > 24*time.Hour:
		return bad("fresh_verification_window must be between 1 minute and 24 hours")
	}
	return p.WebAuthn.validate()
}

// equal compares policies; Policy holds a slice, so == does not compile.
func (p Policy) equal(q Policy) bool {
	a, b := p, q
	a.WebAuthn.Origins, b.WebAuthn.Origins = nil, nil
	// nil and empty origins are the same list.
	return reflect.DeepEqual(a, b) && slices.Equal(p.WebAuthn.Origins, q.WebAuthn.Origins)
}

// lockoutFor returns how long the n-th lockout (1-based) lasts: doubling, capped.
func (p Policy) lockoutFor(n int) time.Duration {
	d := p.LockoutDuration
	for i := 1; i < n && d < p.LockoutMaxDuration; i++ {
		d *= 2
	}
	if d > p.LockoutMaxDuration {
		d = p.LockoutMaxDuration
	}
	return d
}

// methodAllowed says whether the tenant lets users enrol and log in with a method.
func (p Policy) methodAllowed(m Method) bool {
	switch m {
	case MethodEmail:
		return p.EmailOTPAllowed
	case MethodSMS:
		return p.SMSOTPAllowed
	case MethodWebAuthn:
		// Without a relying party no ceremony can be verified.
		return p.WebAuthn.RPID != ""
	}
	return true
}

// TenantPolicy is the aggregate of one tenant's stream.
type TenantPolicy struct {
	tenantID string
	name     string
	policy   Policy
	exists   bool
	version  int64
}

// NewTenantPolicy returns the empty aggregate for a tenant's stream.
func NewTenantPolicy(tenantID string) *TenantPolicy { return &TenantPolicy{tenantID: tenantID} }

func (t *TenantPolicy) TenantID() string { return t.tenantID }
func (t *TenantPolicy) Name() string     { return t.name }
func (t *TenantPolicy) Exists() bool     { return t.exists }
func (t *TenantPolicy) Policy() Policy   { return t.policy }
func (t *TenantPolicy) Version() int64   { return t.version }

// Apply folds one event into the aggregate.
func (t *TenantPolicy) Apply(e Event) {
	t.version++
	switch e := e.(type) {
	case *TenantCreated:
		t.exists = true
		t.name = e.Name
		t.policy = e.Policy
	case *TenantPolicyChanged:
		t.policy = e.Policy
	}
}

// Create decides TenantCreated.
func (t *TenantPolicy) Create(actor Actor, name string, policy Policy) ([]Event, error) {
	if actor.Kind != ActorSystem && actor.Kind != ActorSuperAdmin {
		return nil, Forbidden(CodeNotAllowed, "only an operator can create a tenant")
	}
	if t.exists {
		return nil, Conflict(CodeTenantExists, "tenant already exists")
	}
	if err := CheckText("name", name); err != nil {
		return nil, err
	}
	if name == "" || utf8.RuneCountInString(name) > 200 {
		return nil, Invalid(CodeInvalidArgument, "tenant name must be 1-200 characters")
	}
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	return []Event{&TenantCreated{Name: name, Policy: policy}}, nil
}

// ChangePolicy decides TenantPolicyChanged. Loosening who may disable 2FA is
// reserved to super admins, since it is the setting that protects them.
func (t *TenantPolicy) ChangePolicy(actor Actor, policy Policy) ([]Event, error) {
	if !t.exists {
		return nil, NotFound(CodeTenantNotFound, "tenant not found")
	}
	if !actor.isAdmin() && actor.Kind != ActorSystem {
		return nil, Forbidden(CodeNotAllowed, "only admins change the tenant policy")
	}
	if err := policy.Validate(); err != nil {
		return nil, err
	}
	if policy.DisableBy != t.policy.DisableBy && actor.Kind == ActorAdmin {
		return nil, Forbidden(CodeNotAllowed, "only a super admin changes who may disable 2FA")
	}
	if policy.equal(t.policy) {
		return nil, Precondition(CodeNothingToChange, "policy unchanged")
	}
	return []Event{&TenantPolicyChanged{Policy: policy, Previous: t.policy}}, nil
}

// plausibleAddress is a shape check only (the domain has no mail parser):
// one @, no spaces or angle brackets, at most 254 bytes.
func plausibleAddress(a string) bool {
	at := strings.IndexByte(a, '@')
	return len(a) <= 254 && at > 0 && at == strings.LastIndexByte(a, '@') && at < len(a)-1 &&
		!strings.ContainsAny(a, " <>\t\r\n,;")
}
