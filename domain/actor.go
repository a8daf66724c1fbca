package domain

import (
	"strings"
	"unicode"
)

// ActorKind says on whose authority a command runs.
type ActorKind string

const (
	ActorUser       ActorKind = "user"
	ActorAdmin      ActorKind = "admin"
	ActorSuperAdmin ActorKind = "superadmin"
	ActorSystem     ActorKind = "system"
	ActorAuditor    ActorKind = "auditor"
)

// Actor is who did something: recorded in every event's metadata.
type Actor struct {
	Kind ActorKind `json:"kind"`
	ID   string    `json:"id"`
}

func (a Actor) isAdmin() bool { return a.Kind == ActorAdmin || a.Kind == ActorSuperAdmin }

// actsOnSelf reports whether a user actor acts on its own subject.
func (a Actor) actsOnSelf(userID string) bool { return a.Kind == ActorUser && a.ID == userID }

// Validate checks an actor before it is trusted with any decision.
func (a Actor) Validate() error {
	switch a.Kind {
	case ActorUser, ActorAdmin, ActorSuperAdmin, ActorSystem, ActorAuditor:
	default:
		return Invalid("invalid_actor", "unknown actor kind")
	}
	if err := ValidateIdentifier("actor id", a.ID); err != nil {
		return err
	}
	return nil
}

// Method is a second-factor method.
type Method string

const (
	MethodTOTP  Method = "totp"
	MethodEmail Method = "email"
	MethodSMS   Method = "sms"
	// MethodWebAuthn: security keys and passkeys; a user may register several.
	MethodWebAuthn Method = "webauthn"
	MethodBackup   Method = "backup_code"
)

// strength orders methods: an email inbox usually opens with the password alone,
// so an email code never authorises touching a stronger method. A backup code is
// the recovery path for a lost authenticator and counts as strong. A security
// key is phishing-resistant and the strongest class (NIST SP 800-63B), so it
// satisfies every fresh verification; it shares the top rank with the app and
// backup codes rather than outranking them, or a lost key would leave its owner
// unable to change anything with the app or a recovery code.
func (m Method) strength() int {
	switch m {
	case MethodTOTP, MethodBackup, MethodWebAuthn:
		return maxStrength
	case MethodSMS:
		return 2
	case MethodEmail:
		return 1
	}
	return 0
}

const maxStrength = 3

// ParseMethod accepts the enrolable methods.
func ParseMethod(s string) (Method, error) {
	switch m := Method(s); m {
	case MethodTOTP, MethodEmail, MethodSMS, MethodWebAuthn:
		return m, nil
	}
	return "", Invalid("invalid_method", "method must be totp, email, sms or webauthn")
}

// ValidateIdentifier accepts the host product's ids: 1–200 bytes of printable,
// non-space UTF-8. The ids end up in stream ids and logs, so control characters
// and separators are refused.
func ValidateIdentifier(what, id string) error {
	if err := CheckText(strings.ReplaceAll(what, " ", "_"), id); err != nil {
		return err
	}
	if id == "" || len(id) > 200 {
		return Invalid(CodeInvalidArgument, what+" must be 1-200 bytes of UTF-8")
	}
	if strings.IndexFunc(id, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0 {
		return Invalid(CodeInvalidArgument, what+" must not contain spaces or control characters")
	}
	return nil
}
