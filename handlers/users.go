package handlers

import (
	"context"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// Self-service and login routes: the actor is the user in the path (app keys)
// or the admin named in X-Actor; the domain decides who may do what.

func (s strictServer) GetUser(ctx context.Context, in api.GetUserRequestObject) (api.GetUserResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	// min_position is met without waiting (userStatus).
	status, err := s.a.userStatus(r.c.Request.Context(), r.tenant, r.user)
	return api.GetUser200JSONResponse(statusView(status)), err
}

// statusView is a user's status as the contract shows it.
func statusView(u UserStatus) api.UserStatus {
	v := api.UserStatus{
		UserId: u.UserID, Status: api.Status(u.Status), Enabled: u.Enabled, Methods: methodsView(u.Methods),
		DefaultMethod: optional[api.Method](u.DefaultMethod), PendingMethods: methodsView(u.PendingMethods),
		BackupCodesRemaining: u.BackupCodesRemaining, Required: u.Required, CanToggle: u.CanToggle,
		MustEnroll: u.MustEnroll, SetupAppAtNextLogin: u.SetupAppAtNextLogin, LockedUntil: u.LockedUntil,
		AttemptsRemaining: u.AttemptsRemaining, LastVerifiedAt: u.LastVerifiedAt,
		LastVerifiedMethod: optional[api.VerifyMethod](u.LastVerifiedMethod), Version: int(u.Version), UpdatedAt: u.UpdatedAt,
	}
	keys := u.SecurityKeys
	v.SecurityKeys = &keys
	if u.RequirementWaivedBy != "" {
		by := api.UserStatusRequirementWaivedBy(u.RequirementWaivedBy)
		v.RequirementWaivedBy = &by
	}
	return v
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

// StartEnrollment answers the pending TOTP enrolment (secret, URI, QR code)
// or, for email and SMS, the code sent; the body is optional for TOTP only.
func (s strictServer) StartEnrollment(ctx context.Context, in api.StartEnrollmentRequestObject) (api.StartEnrollmentResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	method := domain.Method(in.Method)
	var body api.StartEnrollmentRequest
	if in.Body != nil {
		body = *in.Body
	} else if method != domain.MethodTOTP {
		return nil, bodyRequired()
	}
	account, destination := deref(body.AccountName), deref(body.Destination)
	var res api.StartEnrollment201JSONResponse
	run := r.c.Request.Context()
	if method == domain.MethodTOTP {
		if destination != "" {
			return nil, domain.Invalid(domain.CodeInvalidArgument, "destination is for email and sms")
		}
		out, err := s.a.cmd.StartTOTPEnrollment(run, r.meta, commands.StartTOTPEnrollment{TenantID: r.tenant, UserID: r.user, AccountName: account})
		if err = s.done(r, "StartTOTPEnrollment", false, err); err != nil {
			return nil, err
		}
		err = res.FromTOTPEnrollment(api.TOTPEnrollment{
			Position: int(out.Position), Method: api.TOTPEnrollmentMethod(domain.MethodTOTP), Secret: out.Secret, OtpauthUri: out.URI,
			QrCodePng: out.QRCodePNG, ExpiresAt: out.ExpiresAt.UTC(),
		})
		return res, err
	}
	if account != "" {
		return nil, domain.Invalid(domain.CodeInvalidArgument, "account_name is for totp")
	}
	out, err := s.a.cmd.StartOTPMethodSetup(run, r.meta, commands.StartOTPMethodSetup{TenantID: r.tenant, UserID: r.user, Method: method, Destination: destination})
	if err = s.done(r, "StartOTPMethodSetup", false, err); err != nil {
		return nil, err
	}
	err = res.FromCodeSent(api.CodeSent{Position: int(out.Position), Method: api.CodeSentMethod(out.Method), ExpiresAt: out.ExpiresAt.UTC()})
	return res, err
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
func optional[T, V ~string](v V) *T {
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
	if in.Body != nil {
		method = domain.Method(deref(in.Body.Method))
	}
	out, err := s.a.cmd.StartLoginChallenge(r.c.Request.Context(), r.meta, commands.StartLoginChallenge{TenantID: r.tenant, UserID: r.user, Method: method})
	return api.StartChallenge200JSONResponse{
		Position: int(out.Position), EnrollmentRequired: out.EnrollmentRequired, CanDisable: out.CanDisable, Enabled: out.Enabled,
		Methods: methodsView(out.Methods), DefaultMethod: optional[api.Method](out.DefaultMethod), SetupAppAtNextLogin: out.SetupAppAtNextLogin,
		BackupCodesRemaining: out.BackupCodesLeft, LockedUntil: timePtr(out.LockedUntil),
		AttemptsRemaining: out.AttemptsRemaining, CodeSentBy: optional[api.ChallengeCodeSentBy](out.CodeSentBy), CodeExpiresAt: timePtr(out.CodeExpiresAt),
	}, s.done(r, "StartLoginChallenge", false, err)
}
