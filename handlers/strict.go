package handlers

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// The generated layer (handlers/api) binds each operation's path, query and
// header parameters and its body into typed request objects; the methods of
// strictServer translate them into a command or a query and its result into
// a typed response. Errors are returned, not written: HandlerErrorFunc maps
// them once (fail, problem.go).
type strictServer struct{ a *API }

// Every operation of the contract is implemented: a new one fails to compile
// until it is.
var _ api.StrictServerInterface = strictServer{}

// generated is the Gin side of the generated layer: the wrapper of the /v1
// routes checks the query and the body against the contract first; the one of
// the operations routes (probes, scrapers) does not, as a prober's query
// string has never been refused.
func (a *API) generated() (v1, ops *api.ServerInterfaceWrapper) {
	strict := api.NewStrictHandlerWithOptions(strictServer{a: a}, nil, api.StrictGinServerOptions{
		RequestErrorHandlerFunc: func(c *gin.Context, err error) {
			if errors.Is(err, io.EOF) {
				err = bodyRequired()
			}
			a.fail(c, bodyError(err))
		},
		HandlerErrorFunc:         a.fail,
		ResponseErrorHandlerFunc: a.fail,
	})
	invalid := func(c *gin.Context, err error, _ int) {
		a.fail(c, domain.Invalid(domain.CodeInvalidArgument, err.Error()))
	}
	v1 = &api.ServerInterfaceWrapper{Handler: strict, HandlerMiddlewares: []api.MiddlewareFunc{a.queryShape, a.bodyShape}, ErrorHandler: invalid}
	ops = &api.ServerInterfaceWrapper{Handler: strict, ErrorHandler: invalid}
	return v1, ops
}

func bodyRequired() error {
	return newAPIError(http.StatusBadRequest, codeInvalidJSON, "a JSON object body is required")
}

// bodyError is the problem of a body the decoder refused.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	if _, ok := err.(*apiError); ok || errors.As(err, &mbe) {
		return err
	}
	if _, ok := domain.AsError(err); ok {
		return err
	}
	return jsonError(err)
}

// queryShape refuses a query parameter the operation does not list: a typo in
// a filter must not silently list everything.
func (a *API) queryShape(c *gin.Context) {
	allowed := a.queries[c.Request.Method+" "+c.FullPath()]
	for _, k := range slices.Sorted(maps.Keys(c.Request.URL.Query())) {
		if !allowed[k] {
			a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "unknown query parameter "+strconv.Quote(k)))
			return
		}
	}
}

// bodyShape decodes the body once (decodeObject), checks its members against
// the contract's schema, and hands the decoded value to the generated layer,
// which binds it into the typed request without decoding the body again. Only
// a value that does not fit the typed request (a number for a string) is
// decoded again, by encoding/json, for its error.
func (a *API) bodyShape(c *gin.Context) {
	schema := a.bodies[c.Request.Method+" "+c.FullPath()]
	if schema == nil {
		return
	}
	body, err := io.ReadAll(c.Request.Body)
	var obj map[string]any
	if err == nil {
		obj, err = decodeObject(body)
	}
	if err == nil && obj != nil {
		err = members(schema, obj, "")
	}
	if err != nil {
		a.fail(c, bodyError(err))
		return
	}
	if obj == nil {
		// Left out: the generated layer reads io.EOF and decides.
		c.Request.Body = http.NoBody
		return
	}
	c.Request.Body = decodedBody{Reader: bytes.NewReader(body), value: obj}
}

// decodedBody is a body with its decoded value, under the name kin-openapi's
// request validator gives it (ValidatedValue), which the generated layer looks
// for before it decodes.
type decodedBody struct {
	*bytes.Reader
	value map[string]any
}

func (b decodedBody) ValidatedValue() any { return b.value }
func (decodedBody) Close() error          { return nil }

// members refuses a member the schema does not list (when it allows no
// others) and a missing one it requires, in nested objects too: Go's zero
// value of a required field would otherwise pass for a value the client sent,
// and binding a decoded value ignores members the type does not have.
func members(schema *openapi3.Schema, obj map[string]any, at string) error {
	if schema.AdditionalProperties.Has != nil && !*schema.AdditionalProperties.Has {
		for _, k := range slices.Sorted(maps.Keys(obj)) {
			if _, ok := schema.Properties[k]; !ok {
				return newAPIError(http.StatusBadRequest, codeUnknownField, fmt.Sprintf("unknown field %q is not accepted", k))
			}
		}
	}
	for _, k := range schema.Required {
		if v, ok := obj[k]; !ok || v == nil {
			return domain.Invalid(domain.CodeInvalidArgument, joinField(at, k)+" is required")
		}
	}
	for _, k := range slices.Sorted(maps.Keys(schema.Properties)) {
		inner, ok := obj[k].(map[string]any)
		if ok && schema.Properties[k].Value.Type.Is(openapi3.TypeObject) {
			if err := members(schema.Properties[k].Value, inner, joinField(at, k)); err != nil {
				return err
			}
		}
	}
	return nil
}

// request is what every operation on the user in the path starts from: the
// tenant (the key's), the user, and the events' metadata.
type request struct {
	c            *gin.Context
	tenant, user string
	meta         commands.Meta
}

// begin resolves the user in the path and the actor, and checks the reason.
func (s strictServer) begin(ctx context.Context, reason string) (request, error) {
	c := ctx.(*gin.Context)
	tenant, user, actor, err := s.a.target(c)
	if err == nil {
		err = checkReason(reason)
	}
	return request{c: c, tenant: tenant, user: user, meta: s.a.meta(c, actor, reason)}, err
}

// done counts a command's outcome; an error on a user the tenant has never
// seen becomes 404 (missingUser) where the command needs the user.
func (s strictServer) done(r request, name string, needsUser bool, err error) error {
	s.a.metrics.command(name, err)
	if err != nil && needsUser {
		err = s.a.missingUser(r.c, err)
	}
	return err
}

// changed is done for a setting a repeated request may find in place: the
// domain's "nothing to change" answers 200 with changed false, so that a PUT
// can be repeated safely.
func (s strictServer) changed(r request, name string, needsUser bool, err error) (bool, error) {
	if errors.Is(err, domain.Precondition(domain.CodeNothingToChange, "")) {
		return false, s.done(r, name, needsUser, nil)
	}
	return true, s.done(r, name, needsUser, err)
}

// record runs a command on the user in the path whose answer is its position.
func (s strictServer) record(ctx context.Context, name, reason string, run func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error)) (api.RecordedJSONResponse, error) {
	r, err := s.begin(ctx, reason)
	if err != nil {
		return api.RecordedJSONResponse{}, err
	}
	out, err := run(r.c.Request.Context(), r.meta, r.tenant, r.user)
	return api.RecordedJSONResponse{Position: int(out.Position)}, s.done(r, name, true, err)
}

// reasonOf is the optional reason of a body.
func reasonOf(body *api.ReasonRequest) string {
	if body == nil {
		return ""
	}
	return deref(body.Reason)
}

// deref is an optional string of a request, empty when absent.
func deref[T ~string](s *T) string {
	if s == nil {
		return ""
	}
	return string(*s)
}

func (s strictServer) Reset(ctx context.Context, r api.ResetRequestObject) (api.ResetResponseObject, error) {
	out, err := s.record(ctx, "ResetTwoFactor", reasonOf(r.Body), func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error) {
		return s.a.cmd.ResetTwoFactor(ctx, meta, commands.ResetTwoFactor{TenantID: tenant, UserID: user})
	})
	return api.Reset200JSONResponse{RecordedJSONResponse: out}, err
}

func (s strictServer) Unlock(ctx context.Context, r api.UnlockRequestObject) (api.UnlockResponseObject, error) {
	out, err := s.record(ctx, "UnlockTwoFactor", reasonOf(r.Body), func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error) {
		return s.a.cmd.UnlockTwoFactor(ctx, meta, commands.UnlockTwoFactor{TenantID: tenant, UserID: user})
	})
	return api.Unlock200JSONResponse{RecordedJSONResponse: out}, err
}

func (s strictServer) ForgetUser(ctx context.Context, r api.ForgetUserRequestObject) (api.ForgetUserResponseObject, error) {
	out, err := s.record(ctx, "ForgetUser", reasonOf(r.Body), func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error) {
		return s.a.cmd.ForgetUser(ctx, meta, commands.ForgetUser{TenantID: tenant, UserID: user})
	})
	return api.ForgetUser200JSONResponse{RecordedJSONResponse: out}, err
}

func (s strictServer) Disable(ctx context.Context, r api.DisableRequestObject) (api.DisableResponseObject, error) {
	out, err := s.record(ctx, "DisableTwoFactor", reasonOf(r.Body), func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error) {
		return s.a.cmd.DisableTwoFactor(ctx, meta, commands.DisableTwoFactor{TenantID: tenant, UserID: user})
	})
	return api.Disable200JSONResponse{RecordedJSONResponse: out}, err
}

func (s strictServer) RemoveMethod(ctx context.Context, r api.RemoveMethodRequestObject) (api.RemoveMethodResponseObject, error) {
	method, err := domain.ParseMethod(string(r.Method))
	if err != nil {
		return nil, err
	}
	out, err := s.record(ctx, "RemoveMethod", reasonOf(r.Body), func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error) {
		return s.a.cmd.RemoveMethod(ctx, meta, commands.RemoveMethod{TenantID: tenant, UserID: user, Method: method})
	})
	return api.RemoveMethod200JSONResponse{RecordedJSONResponse: out}, err
}

func (s strictServer) ChangeDefaultMethod(ctx context.Context, in api.ChangeDefaultMethodRequestObject) (api.ChangeDefaultMethodResponseObject, error) {
	r, err := s.begin(ctx, deref(in.Body.Reason))
	if err != nil {
		return nil, err
	}
	method, err := domain.ParseMethod(string(in.Body.Method))
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.ChangeDefaultMethod(r.c.Request.Context(), r.meta, commands.ChangeDefaultMethod{TenantID: r.tenant, UserID: r.user, Method: method})
	changed, err := s.changed(r, "ChangeDefaultMethod", true, err)
	return api.ChangeDefaultMethod200JSONResponse{Position: int(out.Position), DefaultMethod: api.Method(method), Changed: changed}, err
}

func (s strictServer) SwitchMethod(ctx context.Context, in api.SwitchMethodRequestObject) (api.SwitchMethodResponseObject, error) {
	r, err := s.begin(ctx, deref(in.Body.Reason))
	if err != nil {
		return nil, err
	}
	to, err := domain.ParseMethod(string(in.Body.To))
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.SwitchMethod(r.c.Request.Context(), r.meta, commands.SwitchMethod{TenantID: r.tenant, UserID: r.user, To: to, Destination: deref(in.Body.Destination)})
	return api.SwitchMethod200JSONResponse{Position: int(out.Position), To: api.Method(to)}, s.done(r, "SwitchMethod", true, err)
}

func (s strictServer) ConfirmEnrollment(ctx context.Context, in api.ConfirmEnrollmentRequestObject) (api.ConfirmEnrollmentResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	method, err := domain.ParseMethod(string(in.Method))
	if err != nil {
		return nil, err
	}
	var out commands.Activation
	name := "ConfirmOTPMethod"
	if method == domain.MethodTOTP {
		name = "ConfirmTOTPEnrollment"
		out, err = s.a.cmd.ConfirmTOTPEnrollment(r.c.Request.Context(), r.meta, commands.ConfirmTOTPEnrollment{TenantID: r.tenant, UserID: r.user, Code: in.Body.Code})
	} else {
		out, err = s.a.cmd.ConfirmOTPMethod(r.c.Request.Context(), r.meta, commands.ConfirmOTPMethod{TenantID: r.tenant, UserID: r.user, Method: method, Code: in.Body.Code})
	}
	res := api.ConfirmEnrollment200JSONResponse{Position: int(out.Position), Method: api.Method(method), Enabled: true}
	if len(out.BackupCodes) > 0 {
		res.BackupCodes = &out.BackupCodes
	}
	return res, s.done(r, name, true, err)
}

func (s strictServer) Verify(ctx context.Context, in api.VerifyRequestObject) (api.VerifyResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	run := r.c.Request.Context()
	var out commands.Verification
	var name string
	switch method := domain.Method(in.Body.Method); method {
	case domain.MethodTOTP:
		name = "VerifyTOTP"
		out, err = s.a.cmd.VerifyTOTP(run, r.meta, commands.VerifyTOTP{TenantID: r.tenant, UserID: r.user, Code: in.Body.Code})
	case domain.MethodEmail, domain.MethodSMS:
		name = "VerifyOTP"
		out, err = s.a.cmd.VerifyOTP(run, r.meta, commands.VerifyOTP{TenantID: r.tenant, UserID: r.user, Method: method, Code: in.Body.Code})
	case domain.MethodBackup:
		name = "ConsumeBackupCode"
		out, err = s.a.cmd.ConsumeBackupCode(run, r.meta, commands.ConsumeBackupCode{TenantID: r.tenant, UserID: r.user, Code: in.Body.Code})
	default:
		return nil, domain.Invalid("invalid_method", "method must be totp, email, sms or backup_code")
	}
	return api.Verify200JSONResponse{
		Position: int(out.Position), Verified: true, Method: api.VerifyMethod(out.Method),
		BackupCodesRemaining: out.BackupCodesRemaining, TwoFactorDisabled: out.TwoFactorDisabled,
	}, s.done(r, name, true, err)
}

func (s strictServer) SetRequirement(ctx context.Context, in api.SetRequirementRequestObject) (api.SetRequirementResponseObject, error) {
	r, err := s.begin(ctx, deref(in.Body.Reason))
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.RequireTwoFactor(r.c.Request.Context(), r.meta, commands.RequireTwoFactor{TenantID: r.tenant, UserID: r.user, Required: in.Body.Required})
	changed, err := s.changed(r, "RequireTwoFactor", false, err)
	return api.SetRequirement200JSONResponse{Position: int(out.Position), Required: in.Body.Required, Changed: changed}, err
}

func (s strictServer) SetTogglePermission(ctx context.Context, in api.SetTogglePermissionRequestObject) (api.SetTogglePermissionResponseObject, error) {
	r, err := s.begin(ctx, deref(in.Body.Reason))
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.SetTogglePermission(r.c.Request.Context(), r.meta, commands.SetTogglePermission{TenantID: r.tenant, UserID: r.user, CanToggle: in.Body.CanToggle})
	changed, err := s.changed(r, "SetTogglePermission", false, err)
	return api.SetTogglePermission200JSONResponse{Position: int(out.Position), CanToggle: in.Body.CanToggle, Changed: changed}, err
}

// SetContactAddress registers where security messages go for a user whose
// methods give no address (an app-only user); an empty address removes it.
func (s strictServer) SetContactAddress(ctx context.Context, in api.SetContactAddressRequestObject) (api.SetContactAddressResponseObject, error) {
	r, err := s.begin(ctx, deref(in.Body.Reason))
	if err != nil {
		return nil, err
	}
	method, err := domain.ParseMethod(string(in.Body.Method))
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.SetContactAddress(r.c.Request.Context(), r.meta, commands.SetContactAddress{TenantID: r.tenant, UserID: r.user, Method: method, Address: in.Body.Address})
	changed, err := s.changed(r, "SetContactAddress", true, err)
	return api.SetContactAddress200JSONResponse{Position: int(out.Position), Changed: changed}, err
}

func (s strictServer) RegenerateBackupCodes(ctx context.Context, _ api.RegenerateBackupCodesRequestObject) (api.RegenerateBackupCodesResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.RegenerateBackupCodes(r.c.Request.Context(), r.meta, commands.RegenerateBackupCodes{TenantID: r.tenant, UserID: r.user})
	return api.RegenerateBackupCodes201JSONResponse{Position: int(out.Position), BackupCodes: out.BackupCodes}, s.done(r, "RegenerateBackupCodes", true, err)
}
