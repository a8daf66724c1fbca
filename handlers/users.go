package handlers

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// Self-service and login routes: the actor is the user in the path (app keys)
// or the admin named in X-Actor; the domain decides who may do what.

func (a *API) getUser(c *gin.Context) {
	if err := onlyQuery(c, "min_position"); err != nil {
		a.fail(c, err)
		return
	}
	tenant, user, _, err := a.target(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	if _, err := minPosition(c); err != nil {
		a.fail(c, err)
		return
	}
	status, err := a.userStatus(c.Request.Context(), tenant, user)
	if err != nil {
		a.fail(c, err)
		return
	}
	writeJSON(c, http.StatusOK, status)
}

// userStatus replays the user's stream for every role, so a frontend that
// writes and then shows the user never sees "not found" or an older state while
// the projector catches up. It includes every committed write, so min_position
// is met without waiting; lists and coverage stay read-model reads.
func (a *API) userStatus(ctx context.Context, tenant, user string) (UserStatus, error) {
	snap, err := a.cmd.Status(ctx, tenant, user)
	if err != nil {
		return UserStatus{}, err
	}
	if snap.Version == 0 || snap.Status == domain.StatusErased {
		return UserStatus{}, domain.NotFound(domain.CodeUserNotFound, "user not found")
	}
	return StatusFromSnapshot(snap), nil
}

func readTimeout() error {
	e := newAPIError(http.StatusServiceUnavailable, codeReadModelTimeout, "the read model has not caught up with min_position yet; retry")
	e.retryAfter = 1
	return e
}

type startEnrollmentRequest struct {
	// AccountName is shown under the issuer in the authenticator app (TOTP only).
	AccountName string `json:"account_name"`
	// Destination is the email address or E.164 phone number (email and SMS only).
	Destination string `json:"destination"`
}

type totpEnrollmentResponse struct {
	written
	Method     domain.Method `json:"method"`
	Secret     string        `json:"secret"`
	OTPAuthURI string        `json:"otpauth_uri"`
	QRCodePNG  []byte        `json:"qr_code_png"`
	ExpiresAt  time.Time     `json:"expires_at"`
}

type codeSentResponse struct {
	written
	Method    domain.Method `json:"method"`
	ExpiresAt time.Time     `json:"expires_at"`
}

func parseEnrolMethod(s string) (domain.Method, error) {
	m, err := domain.ParseMethod(s)
	if err != nil {
		return "", err
	}
	return m, nil
}

func (a *API) startEnrollment(c *gin.Context) {
	tenant, user, actor, err := a.target(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	method, err := parseEnrolMethod(c.Param("method"))
	if err != nil {
		a.fail(c, err)
		return
	}
	var req startEnrollmentRequest
	if err := bind(c, &req, method == domain.MethodTOTP); err != nil {
		a.fail(c, err)
		return
	}
	meta := a.meta(c, actor, "")
	if method == domain.MethodTOTP {
		if req.Destination != "" {
			a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "destination is for email and sms"))
			return
		}
		if len(req.AccountName) > 200 {
			a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "account_name must be at most 200 bytes"))
			return
		}
		var out commands.TOTPEnrollment
		if !a.command(c, "StartTOTPEnrollment", false, func(ctx context.Context) (err error) {
			out, err = a.cmd.StartTOTPEnrollment(ctx, meta, commands.StartTOTPEnrollment{TenantID: tenant, UserID: user, AccountName: req.AccountName})
			return err
		}) {
			return
		}
		writeJSON(c, http.StatusCreated, totpEnrollmentResponse{
			written: written{out.Position}, Method: domain.MethodTOTP, Secret: out.Secret, OTPAuthURI: out.URI,
			QRCodePNG: out.QRCodePNG, ExpiresAt: out.ExpiresAt.UTC(),
		})
		return
	}
	if req.AccountName != "" {
		a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "account_name is for totp"))
		return
	}
	var out commands.CodeSent
	if !a.command(c, "StartOTPMethodSetup", false, func(ctx context.Context) (err error) {
		out, err = a.cmd.StartOTPMethodSetup(ctx, meta, commands.StartOTPMethodSetup{TenantID: tenant, UserID: user, Method: method, Destination: req.Destination})
		return err
	}) {
		return
	}
	writeJSON(c, http.StatusCreated, codeSentResponse{written: written{out.Position}, Method: out.Method, ExpiresAt: out.ExpiresAt.UTC()})
}

// methodsView is a list of methods as the contract shows it: never null.
func methodsView(ms []domain.Method) []api.Method {
	out := make([]api.Method, 0, len(ms))
	for _, m := range ms {
		out = append(out, api.Method(m))
	}
	return out
}

// optional is a value the contract omits when it is the zero value.
func optional[T ~string](v domain.Method) *T {
	if v == "" {
		return nil
	}
	t := T(v)
	return &t
}

func (s strictServer) StartChallenge(ctx context.Context, in api.StartChallengeRequestObject) (api.StartChallengeResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	var method domain.Method
	if in.Body != nil && in.Body.Method != nil && *in.Body.Method != "" {
		if method, err = domain.ParseMethod(string(*in.Body.Method)); err != nil {
			return nil, err
		}
	}
	out, err := s.a.cmd.StartLoginChallenge(r.c.Request.Context(), r.meta, commands.StartLoginChallenge{TenantID: r.tenant, UserID: r.user, Method: method})
	return api.StartChallenge200JSONResponse{
		Position: int(out.Position), EnrollmentRequired: out.EnrollmentRequired, CanDisable: out.CanDisable, Enabled: out.Enabled,
		Methods: methodsView(out.Methods), DefaultMethod: optional[api.Method](out.DefaultMethod), SetupAppAtNextLogin: out.SetupAppAtNextLogin,
		BackupCodesRemaining: out.BackupCodesLeft, LockedUntil: timePtr(out.LockedUntil),
		AttemptsRemaining: out.AttemptsRemaining, CodeSentBy: optional[api.ChallengeCodeSentBy](out.CodeSentBy), CodeExpiresAt: timePtr(out.CodeExpiresAt),
	}, s.done(r, "StartLoginChallenge", false, err)
}

func checkReason(r string) error {
	if len(r) > 500 {
		return domain.Invalid(domain.CodeInvalidArgument, "reason must be at most 500 bytes")
	}
	return nil
}
