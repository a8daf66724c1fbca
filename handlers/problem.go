package handlers

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/domain"
)

// This file is the one place where an error becomes an HTTP response: an RFC 9457
// application/problem+json document with a stable machine code. Handlers never
// choose a status for an error themselves.

// ProblemContentType is the media type of every error response.
const ProblemContentType = "application/problem+json"

// problemTypeBase prefixes a code to form the problem's type URI.
const problemTypeBase = "urn:twofactor:problem:"

// Problem is the body of every error response.
type Problem struct {
	Type     string `json:"type"`
	Title    string `json:"title"`
	Status   int    `json:"status"`
	Detail   string `json:"detail,omitempty"`
	Instance string `json:"instance,omitempty"`
	// Code is stable: clients branch on it, never on Title or Detail.
	Code      string `json:"code"`
	RequestID string `json:"request_id,omitempty"`
	// Reason is the precise cause when Code is a family (forbidden_by_policy, reauthentication_required).
	Reason            string     `json:"reason,omitempty"`
	AttemptsRemaining *int       `json:"attempts_remaining,omitempty"`
	LockedUntil       *time.Time `json:"locked_until,omitempty"`
	RetryAfterSeconds *int       `json:"retry_after_seconds,omitempty"`
}

// apiError is an error decided by the HTTP layer itself (authentication, limits, bad bodies).
type apiError struct {
	status     int
	code       string
	detail     string
	retryAfter int
}

func (e *apiError) Error() string { return e.code + ": " + e.detail }

func newAPIError(status int, code, detail string) *apiError {
	return &apiError{status: status, code: code, detail: detail}
}

// HTTP-layer codes.
const (
	codeUnauthenticated      = "unauthenticated"
	codeForbidden            = "forbidden"
	codeNotFound             = "not_found"
	codeMethodNotAllowed     = "method_not_allowed"
	codeBodyTooLarge         = "body_too_large"
	codeUnsupportedMediaType = "unsupported_media_type"
	codeInvalidJSON          = "invalid_json"
	codeUnknownField         = "unknown_field"
	codeRateLimited          = "rate_limited"
	codeIdempotencyReused    = "idempotency_key_reused"
	codeIdempotencyPending   = "idempotency_request_in_progress"
	codeInvalidIdempotency   = "invalid_idempotency_key"
	codeActorRequired        = "actor_required"
	codeInvalidActor         = "invalid_actor"
	codeNotImplemented       = "not_implemented"
	codeReadModelTimeout     = "read_model_timeout"
	codeReadModelStalled     = "read_model_stalled"
	codeInternal             = "internal_error"
	codeTimeout              = "timeout"
)

// API codes that differ from the domain's, named for a frontend.
const (
	codeOTPInvalid          = "otp_invalid"
	codeEnrollmentRequired  = "enrollment_required"
	codeForbiddenByPolicy   = "forbidden_by_policy"
	codeReauthenticationReq = "reauthentication_required"
	codeUserNotFound        = "user_not_found"
)

type mapping struct {
	status int
	code   string
	// family: Code names a family and Reason keeps the domain's code.
	family bool
}

// domainCodes maps each stable domain code to its HTTP status and API code.
// A code missing here falls back to its kind (kindStatus) and keeps its name.
var domainCodes = map[string]mapping{
	domain.CodeInvalidCode:          {http.StatusUnprocessableEntity, codeOTPInvalid, false},
	domain.CodeMalformedCode:        {http.StatusBadRequest, domain.CodeMalformedCode, false},
	domain.CodeLocked:               {http.StatusLocked, domain.CodeLocked, false},
	domain.CodeTenantNotFound:       {http.StatusNotFound, domain.CodeTenantNotFound, false},
	domain.CodeUserNotFound:         {http.StatusNotFound, codeUserNotFound, false},
	domain.CodeUserForgotten:        {http.StatusNotFound, codeUserNotFound, false},
	domain.CodeNotEnrolled:          {http.StatusConflict, codeEnrollmentRequired, false},
	domain.CodeAlreadyEnabled:       {http.StatusConflict, domain.CodeAlreadyEnabled, false},
	domain.CodeMethodNotEnrolled:    {http.StatusConflict, domain.CodeMethodNotEnrolled, false},
	domain.CodeMethodDisabled:       {http.StatusForbidden, codeForbiddenByPolicy, true},
	domain.CodeNoPendingEnrollment:  {http.StatusConflict, domain.CodeNoPendingEnrollment, false},
	domain.CodeEnrollmentExpired:    {http.StatusConflict, domain.CodeEnrollmentExpired, false},
	domain.CodeFreshVerification:    {http.StatusForbidden, codeReauthenticationReq, true},
	domain.CodeStrongerMethod:       {http.StatusForbidden, codeReauthenticationReq, true},
	domain.CodeNotAllowed:           {http.StatusForbidden, codeForbiddenByPolicy, true},
	domain.CodeRequired:             {http.StatusForbidden, codeForbiddenByPolicy, true},
	domain.CodeSelfReset:            {http.StatusForbidden, codeForbiddenByPolicy, true},
	domain.CodeLastMethod:           {http.StatusConflict, domain.CodeLastMethod, false},
	domain.CodeResendTooSoon:        {http.StatusTooManyRequests, domain.CodeResendTooSoon, false},
	domain.CodeNoPendingCode:        {http.StatusConflict, domain.CodeNoPendingCode, false},
	domain.CodeCodeExpired:          {http.StatusConflict, domain.CodeCodeExpired, false},
	domain.CodeNotLocked:            {http.StatusConflict, domain.CodeNotLocked, false},
	domain.CodeNothingToChange:      {http.StatusConflict, domain.CodeNothingToChange, false},
	domain.CodeInvalidPolicy:        {http.StatusBadRequest, domain.CodeInvalidPolicy, false},
	domain.CodeInvalidArgument:      {http.StatusBadRequest, domain.CodeInvalidArgument, false},
	domain.CodeTenantExists:         {http.StatusConflict, domain.CodeTenantExists, false},
	domain.CodeConcurrentChange:     {http.StatusConflict, domain.CodeConcurrentChange, false},
	domain.CodeMethodAlreadyEnabled: {http.StatusConflict, domain.CodeMethodAlreadyEnabled, false},
}

var kindStatus = map[domain.Kind]int{
	domain.KindInvalid:      http.StatusBadRequest,
	domain.KindNotFound:     http.StatusNotFound,
	domain.KindConflict:     http.StatusConflict,
	domain.KindPrecondition: http.StatusConflict,
	domain.KindForbidden:    http.StatusForbidden,
	domain.KindLocked:       http.StatusLocked,
}

// ProblemFor maps any error to its problem document. now dates locked_until.
func ProblemFor(err error, now time.Time) Problem {
	var ae *apiError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		p := newProblem(ae.status, ae.code, ae.detail)
		if ae.retryAfter > 0 {
			p.RetryAfterSeconds = &ae.retryAfter
		}
		return p
	case errors.As(err, &mbe):
		return newProblem(http.StatusRequestEntityTooLarge, codeBodyTooLarge, "the request body is too large")
	case errors.Is(err, context.DeadlineExceeded):
		return newProblem(http.StatusServiceUnavailable, codeTimeout, "the request took too long; retry")
	}
	de, ok := domain.AsError(err)
	if !ok {
		return newProblem(http.StatusInternalServerError, codeInternal, "")
	}
	m, known := domainCodes[de.Code]
	if !known {
		m = mapping{status: kindStatus[de.Kind], code: de.Code}
		if m.status == 0 {
			m.status = http.StatusBadRequest
		}
	}
	p := newProblem(m.status, m.code, de.Detail)
	if m.family {
		p.Reason = de.Code
	}
	if de.AttemptsRemaining >= 0 {
		n := de.AttemptsRemaining
		p.AttemptsRemaining = &n
	}
	if de.RetryAfterSeconds > 0 {
		n := de.RetryAfterSeconds
		p.RetryAfterSeconds = &n
		if de.Kind == domain.KindLocked {
			until := now.Add(time.Duration(n) * time.Second).UTC().Truncate(time.Second)
			p.LockedUntil = &until
		}
	}
	return p
}

func newProblem(status int, code, detail string) Problem {
	return Problem{Type: problemTypeBase + code, Title: http.StatusText(status), Status: status, Detail: detail, Code: code}
}

// fail writes the problem for err and stops the request. Unknown errors are
// logged with the request id and answered without detail.
func (a *API) fail(c *gin.Context, err error) {
	p := ProblemFor(err, a.now())
	if p.Status >= 500 && p.Code == codeInternal {
		a.log.ErrorContext(c.Request.Context(), "request failed", "request_id", requestID(c), "route", c.FullPath(), "error", err.Error())
	}
	a.writeProblem(c, p)
}

func (a *API) writeProblem(c *gin.Context, p Problem) {
	p.RequestID = requestID(c)
	p.Instance = c.Request.URL.Path
	if p.RetryAfterSeconds != nil {
		c.Header("Retry-After", strconv.Itoa(*p.RetryAfterSeconds))
	}
	if p.Status == http.StatusUnauthorized {
		c.Header("WWW-Authenticate", `Bearer realm="twofactor"`)
	}
	c.Header("Content-Type", ProblemContentType)
	c.Abort()
	c.Status(p.Status)
	writeJSONBody(c, p)
}
