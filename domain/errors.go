package domain

import (
	"errors"
	"fmt"
)

// Kind classifies an Error; the HTTP layer maps each kind to one status.
type Kind string

const (
	KindInvalid      Kind = "invalid"
	KindNotFound     Kind = "not_found"
	KindConflict     Kind = "conflict"
	KindPrecondition Kind = "precondition"
	KindForbidden    Kind = "forbidden"
	KindLocked       Kind = "locked"
)

// Error is the only error type the domain returns. Code is a stable machine code
// that clients may branch on; Detail is for humans.
type Error struct {
	Kind   Kind
	Code   string
	Detail string
	// AttemptsRemaining is set on a failed verification (-1 when not applicable).
	AttemptsRemaining int
	// RetryAfterSeconds is set on lockouts and rate limits.
	RetryAfterSeconds int
	// Field names the input at fault (a JSON name such as "issuer_name"), so a
	// client can point at it; empty when the error is not about one input.
	Field string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%s: %s", e.Kind, e.Code)
	}
	return fmt.Sprintf("%s: %s: %s", e.Kind, e.Code, e.Detail)
}

// Is lets errors.Is match on Kind and Code of a template error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return t.Kind == e.Kind && (t.Code == "" || t.Code == e.Code)
}

func newError(kind Kind, code, detail string) *Error {
	return &Error{Kind: kind, Code: code, Detail: detail, AttemptsRemaining: -1}
}

func Invalid(code, detail string) *Error      { return newError(KindInvalid, code, detail) }
func NotFound(code, detail string) *Error     { return newError(KindNotFound, code, detail) }
func Conflict(code, detail string) *Error     { return newError(KindConflict, code, detail) }
func Precondition(code, detail string) *Error { return newError(KindPrecondition, code, detail) }
func Forbidden(code, detail string) *Error    { return newError(KindForbidden, code, detail) }

// AsError extracts a domain error from an error chain.
func AsError(err error) (*Error, bool) {
	var de *Error
	if errors.As(err, &de) {
		return de, true
	}
	return nil, false
}

// KindOf returns the kind of a domain error, or "" for any other error.
func KindOf(err error) Kind {
	if de, ok := AsError(err); ok {
		return de.Kind
	}
	return ""
}

// Stable codes shared by callers and tests.
const (
	CodeInvalidCode          = "invalid_code"
	CodeMalformedCode        = "malformed_code"
	CodeLocked               = "locked"
	CodeTenantNotFound       = "tenant_not_found"
	CodeUserNotFound         = "user_not_found"
	CodeUserForgotten        = "user_forgotten"
	CodeNotEnrolled          = "two_factor_not_enabled"
	CodeAlreadyEnabled       = "two_factor_already_enabled"
	CodeMethodNotEnrolled    = "method_not_enrolled"
	CodeMethodDisabled       = "method_disabled_by_policy"
	CodeNoPendingEnrollment  = "no_pending_enrollment"
	CodeEnrollmentExpired    = "enrollment_expired"
	CodeFreshVerification    = "fresh_verification_required"
	CodeStrongerMethod       = "stronger_method_required"
	CodeNotAllowed           = "not_allowed"
	CodeRequired             = "two_factor_required"
	CodeLastMethod           = "last_method"
	CodeResendTooSoon        = "resend_too_soon"
	CodeNoPendingCode        = "no_pending_code"
	CodeCodeExpired          = "code_expired"
	CodeNotLocked            = "not_locked"
	CodeNothingToChange      = "nothing_to_change"
	CodeInvalidPolicy        = "invalid_policy"
	CodeInvalidArgument      = "invalid_argument"
	CodeInvalidInput         = "invalid_input"
	CodeTenantExists         = "tenant_exists"
	CodeSelfReset            = "self_reset_requires_superadmin"
	CodeConcurrentChange     = "concurrent_modification"
	CodeMethodAlreadyEnabled = "method_already_enrolled"

	CodeNoPendingChallenge       = "no_pending_challenge"
	CodeChallengeExpired         = "challenge_expired"
	CodeSecurityKeyExists        = "security_key_already_registered"
	CodeSecurityKeyNotFound      = "security_key_not_found"
	CodeSecurityKeyCloned        = "security_key_possibly_cloned"
	CodeTooManySecurityKeys      = "too_many_security_keys"
	CodeUserVerificationRequired = "user_verification_required"
	CodeInvalidSecurityKeyData   = "invalid_security_key_response"
)
