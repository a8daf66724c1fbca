package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
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
	// InvalidParams names the inputs at fault (RFC 9457's example extension).
	InvalidParams []InvalidParam `json:"invalid_params,omitempty"`
}

// InvalidParam is one refused input.
type InvalidParam struct {
	// Name is the field: a JSON name or dotted path ("policy.issuer_name"), a
	// path parameter ("user_id"), a query parameter or a header ("X-Actor").
	Name string `json:"name"`
	// In is body, path, query or header, when the HTTP layer knows it.
	In     string `json:"in,omitempty"`
	Reason string `json:"reason"`
}

// apiError is an error decided by the HTTP layer itself (authentication, limits, bad bodies).
type apiError struct {
	status     int
	code       string
	detail     string
	retryAfter int
	params     []InvalidParam
}

func (e *apiError) Error() string { return e.code + ": " + e.detail }

func newAPIError(status int, code, detail string) *apiError {
	return &apiError{status: status, code: code, detail: detail}
}

// invalidInput is input refused at the boundary for its characters; where is
// body, path, query or header.
func invalidInput(where string, err error) error {
	de, ok := domain.AsError(err)
	if !ok || de.Field == "" {
		return err
	}
	e := newAPIError(http.StatusBadRequest, domain.CodeInvalidInput, de.Detail)
	e.params = []InvalidParam{{Name: de.Field, In: where, Reason: de.Detail}}
	return e
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
	codeUnavailable          = "unavailable"
)

// unavailableError: the database could not be reached or lost the request
// part-way; a retry (with the same Idempotency-Key for a write) is safe.
type unavailableError struct{ err error }

func (e *unavailableError) Error() string { return "unavailable: " + e.err.Error() }
func (e *unavailableError) Unwrap() error { return e.err }

func unavailable(err error) error { return &unavailableError{err: err} }

// unavailableRetryAfter is long enough for a PostgreSQL restart or failover to
// make progress, short enough for a login to wait.
const unavailableRetryAfter = 1

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
	domain.CodeInvalidInput:         {http.StatusBadRequest, domain.CodeInvalidInput, false},
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
		p.InvalidParams = ae.params
		return p
	case errors.As(err, &mbe):
		return newProblem(http.StatusRequestEntityTooLarge, codeBodyTooLarge, "the request body is too large")
	case errors.Is(err, errIdempotentDone):
		// Replaced by the committed answer before it is sent (idempotent).
		return newProblem(http.StatusConflict, codeIdempotencyPending, "a request with this Idempotency-Key has completed")
	case errors.Is(err, ErrReadTimeout):
		p := newProblem(http.StatusServiceUnavailable, codeReadModelTimeout, "the read model has not caught up with min_position yet; retry")
		n := 1
		p.RetryAfterSeconds = &n
		return p
	case errors.Is(err, context.DeadlineExceeded):
		return newProblem(http.StatusServiceUnavailable, codeTimeout, "the request took too long; retry")
	}
	var ue *unavailableError
	if errors.As(err, &ue) || eventstore.Transient(err) {
		p := newProblem(http.StatusServiceUnavailable, codeUnavailable, "the database is unavailable; retry")
		n := unavailableRetryAfter
		p.RetryAfterSeconds = &n
		return p
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
	if de.Field != "" {
		p.InvalidParams = []InvalidParam{{Name: de.Field, Reason: de.Detail}}
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
	switch {
	case p.Status >= 500 && p.Code == codeInternal:
		a.log.ErrorContext(c.Request.Context(), "request failed", "request_id", requestID(c), "route", c.FullPath(), "error", err.Error())
	case p.Code == codeUnavailable:
		a.log.WarnContext(c.Request.Context(), "database unavailable", "request_id", requestID(c), "route", c.FullPath(), "error", err.Error())
	}
	a.writeProblem(c, p)
}

func (a *API) writeProblem(c *gin.Context, p Problem) {
	p.RequestID = requestID(c)
	// Escaped, as a URI reference is: a refused path id is not echoed decoded.
	p.Instance = c.Request.URL.EscapedPath()
	if p.RetryAfterSeconds != nil {
		c.Header("Retry-After", strconv.Itoa(*p.RetryAfterSeconds))
	}
	if p.Status == http.StatusUnauthorized {
		c.Header("WWW-Authenticate", `Bearer realm="twofactor"`)
	}
	c.Header("Content-Type", ProblemContentType)
	c.Abort()
	c.Status(p.Status)
	b, _ := json.Marshal(p)         // a Problem always marshals
	c.Writer.Write(append(b, '\n')) //nolint:errcheck // the client went away
}
