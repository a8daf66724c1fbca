package domain

import (
	"net/url"
	"strings"
	"time"
)

// User verification a tenant asks of security keys (WebAuthn's
// userVerification). "discouraged" is not offered: a key without its PIN or
// biometric is then only a possession factor.
// WARNING: durable values, stored in policies.
const (
	UserVerificationRequired  = "required"
	UserVerificationPreferred = "preferred"
)

// DefaultWebAuthnChallengeTTL bounds a registration or login ceremony: long
// enough to find the key and touch it, short enough that a leaked challenge is soon worthless.
const DefaultWebAuthnChallengeTTL = 5 * time.Minute

// MaxSecurityKeys bounds the keys of one user: every login unseals them all.
const MaxSecurityKeys = 10

// WebAuthnPolicy is a tenant's relying party and its rules for security keys.
type WebAuthnPolicy struct {
	// RPID is the relying party id: the host product's registrable domain (or
	// "localhost"). Empty: security keys are not offered.
	RPID string `json:"rp_id,omitempty"`
	// RPName is the name authenticators show; the issuer name when empty.
	RPName string `json:"rp_name,omitempty"`
	// Origins are the exact origins (scheme://host[:port]) the browser may report.
	Origins []string `json:"origins,omitempty"`
	// UserVerification is UserVerificationRequired or …Preferred ("" reads as preferred).
	UserVerification string `json:"user_verification,omitempty"`
	// AllowClonedKeys lets a login through when the signature counter went
	// back (the clone is still recorded and reported). Off by default: refuse.
	AllowClonedKeys bool `json:"allow_cloned_keys,omitempty"`
	// ChallengeTTL: how long a ceremony's challenge is valid (0 reads as the default).
	ChallengeTTL time.Duration `json:"challenge_ttl,omitempty"`
}

// RequiresUserVerification: the key must report that it verified the user.
func (w WebAuthnPolicy) RequiresUserVerification() bool {
	return w.UserVerification == UserVerificationRequired
}

// DisplayName is what authenticators show for the relying party.
func (w WebAuthnPolicy) DisplayName(issuer string) string {
	if w.RPName != "" {
		return w.RPName
	}
	return issuer
}

func (w WebAuthnPolicy) challengeTTL() time.Duration {
	if w.ChallengeTTL <= 0 {
		return DefaultWebAuthnChallengeTTL
	}
	return w.ChallengeTTL
}

func (w WebAuthnPolicy) validate() error {
	bad := func(field, detail string) error {
		e := Invalid(CodeInvalidPolicy, detail)
		e.Field = field
		return e
	}
	if err := CheckText("webauthn.rp_name", w.RPName); err != nil {
		return err
	}
	switch {
	case len(w.RPName) > 100:
		return bad("webauthn.rp_name", "webauthn.rp_name must be at most 100 bytes")
	case w.UserVerification != "" && w.UserVerification != UserVerificationRequired && w.UserVerification != UserVerificationPreferred:
		return bad("webauthn.user_verification", "webauthn.user_verification must be required or preferred")
	case w.ChallengeTTL != 0 && (w.ChallengeTTL < 30*time.Second || w.ChallengeTTL > 10*time.Minute):
		return bad("webauthn.challenge_ttl", "webauthn.challenge_ttl must be between 30 seconds and 10 minutes")
	case w.RPID == "" && len(w.Origins) > 0:
		return bad("webauthn.rp_id", "webauthn.origins need a webauthn.rp_id")
	case w.RPID == "":
		return nil
	case !validRPID(w.RPID):
		return bad("webauthn.rp_id", "webauthn.rp_id must be a lower-case domain name such as example.com")
	case len(w.Origins) == 0 || len(w.Origins) > 10:
		return bad("webauthn.origins", "webauthn.origins must list 1-10 origins")
	}
	for _, o := range w.Origins {
		if !validOrigin(o, w.RPID) {
			return bad("webauthn.origins", "each of webauthn.origins must be https://host[:port] with host the rp_id or below it (http only for localhost)")
		}
	}
	return nil
}

// validRPID is a shape check of a domain name: lower-case labels of letters,
// digits and hyphens. Browsers enforce the rest (a registrable suffix of the origin).
func validRPID(id string) bool {
	if len(id) > 253 {
		return false
	}
	for _, label := range strings.Split(id, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// validOrigin accepts what a browser reports as an origin for the relying
// party: the scheme and host (and port), nothing else, under the rp id.
func validOrigin(origin, rpID string) bool {
	if len(origin) > 300 {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return false
	}
	host := u.Hostname()
	if u.Host != host && u.Port() == "" {
		return false // a trailing colon
	}
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && host == "localhost":
	default:
		return false
	}
	return host == rpID || strings.HasSuffix(host, "."+rpID)
}
