package handlers

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"

	"github.com/gin-gonic/gin"
	"github.com/gin-gonic/gin/binding"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// The generated layer (handlers/api) binds each operation's path, query and
// header parameters and its body into typed request objects; the methods of
// strictServer translate them into a command and its result into a typed
// response. Errors are returned, not written: HandlerErrorFunc maps them once
// (fail, problem.go).
//
// The move is operation by operation: an operation served here is routed in
// routes.go to the generated wrapper's method; the others keep their Gin
// handler and never reach this value, whose embedded interface is nil.
type strictServer struct {
	api.StrictServerInterface
	a *API
}

// generated is the Gin side of the generated layer.
func (a *API) generated() *api.ServerInterfaceWrapper {
	// Bodies stay strict as bind made them: an unknown field is refused by
	// the decoder, the rest (an object, no duplicate keys, text, nothing
	// after it) by bodyShape before it runs.
	binding.EnableDecoderDisallowUnknownFields = true
	strict := api.NewStrictHandlerWithOptions(strictServer{a: a}, nil, api.StrictGinServerOptions{
		RequestErrorHandlerFunc: func(c *gin.Context, err error) {
			if errors.Is(err, io.EOF) {
				err = newAPIError(http.StatusBadRequest, codeInvalidJSON, "a JSON object body is required")
			}
			a.fail(c, bodyError(err))
		},
		HandlerErrorFunc:         a.fail,
		ResponseErrorHandlerFunc: a.fail,
	})
	return &api.ServerInterfaceWrapper{
		Handler:            strict,
		HandlerMiddlewares: []api.MiddlewareFunc{a.bodyShape},
		ErrorHandler: func(c *gin.Context, err error, _ int) {
			a.fail(c, domain.Invalid(domain.CodeInvalidArgument, err.Error()))
		},
	}
}

// bodyError is the problem of a body the decoder refused.
func bodyError(err error) error {
	var mbe *http.MaxBytesError
	if _, ok := err.(*apiError); ok || errors.As(err, &mbe) {
		return err
	}
	return jsonError(err)
}

// bodyShape checks what the decoder does not (decodeStrict without a
// destination) and puts the body back for it.
func (a *API) bodyShape(c *gin.Context) {
	if !a.takesBody[c.Request.Method+" "+c.FullPath()] {
		return
	}
	body, err := io.ReadAll(c.Request.Body)
	if err == nil {
		err = decodeStrict(body, nil, true)
	}
	if err != nil {
		a.fail(c, bodyError(err))
		return
	}
	c.Request.Body = io.NopCloser(bytes.NewReader(body))
}

// record runs a command on the user in the path, counting its outcome; an
// error on a user the tenant has never seen becomes 404 (missingUser).
func (s strictServer) record(ctx context.Context, name, reason string, run func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error)) (api.RecordedJSONResponse, error) {
	c := ctx.(*gin.Context)
	tenant, user, actor, err := s.a.target(c)
	if err == nil {
		err = checkReason(reason)
	}
	if err != nil {
		return api.RecordedJSONResponse{}, err
	}
	out, err := run(c.Request.Context(), s.a.meta(c, actor, reason), tenant, user)
	s.a.metrics.command(name, err)
	if err != nil {
		return api.RecordedJSONResponse{}, s.a.missingUser(c, err)
	}
	return api.RecordedJSONResponse{Position: int(out.Position)}, nil
}

// reasonOf is the optional reason of a body.
func reasonOf(body *api.ReasonRequest) string {
	if body == nil || body.Reason == nil {
		return ""
	}
	return *body.Reason
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
