package handlers

import (
	"bytes"
	"context"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
	"github.com/twofactor/twofactor/handlers/api"
)

// routes registers every route: each is an operation of the contract, served
// by the generated layer (strict.go); a test compares the two lists.
func (a *API) routes() {
	e := a.engine
	e.Use(a.requestIDs, a.observe, a.recoverer, a.timeout, a.bodyRules)
	e.NoRoute(a.noRoute)
	e.NoMethod(a.noMethod)

	gen, ops := a.generated()
	e.GET("/healthz", ops.Healthz)
	e.GET("/readyz", ops.Readyz)
	e.GET("/metrics", ops.Metrics)
	e.GET("/openapi.yaml", ops.Openapi)

	v1 := e.Group("/v1", a.ipLimit, a.inputRules)

	op := v1.Group("/operator", a.operator, a.idempotent)
	op.POST("/tenants", gen.CreateTenant)
	op.GET("/tenants/:tenant_id/api-keys", gen.OperatorListKeys)
	op.POST("/tenants/:tenant_id/api-keys", gen.OperatorIssueKey)
	op.DELETE("/tenants/:tenant_id/api-keys/:key_id", gen.OperatorRevokeKey)

	all := []Role{RoleApp, RoleAdmin, RoleSuperAdmin, RoleAuditor}
	admins := []Role{RoleAdmin, RoleSuperAdmin}
	readers := []Role{RoleAdmin, RoleSuperAdmin, RoleAuditor}
	auditors := []Role{RoleAuditor, RoleSuperAdmin}

	t := v1.Group("", a.authenticate, a.idempotent)
	t.GET("/policy", a.allow(all...), gen.GetPolicy)
	t.PATCH("/policy", a.allow(admins...), gen.PatchPolicy)
	t.GET("/coverage", a.allow(readers...), gen.Coverage)

	t.GET("/api-keys", a.allow(RoleSuperAdmin), gen.ListKeys)
	t.POST("/api-keys", a.allow(RoleSuperAdmin), gen.IssueKey)
	t.DELETE("/api-keys/:key_id", a.allow(RoleSuperAdmin), gen.RevokeKey)

	t.GET("/users", a.allow(readers...), gen.ListUsers)
	u := t.Group("/users/:user_id")
	u.GET("", a.allow(all...), gen.GetUser)
	u.DELETE("", a.allow(admins...), gen.ForgetUser)
	u.POST("/enrollments/:method", a.allow(all...), gen.StartEnrollment)
	u.POST("/enrollments/:method/confirmation", a.allow(all...), gen.ConfirmEnrollment)
	u.POST("/challenges", a.allow(all...), gen.StartChallenge)
	u.POST("/verifications", a.allow(all...), gen.Verify)
	u.PUT("/default-method", a.allow(all...), gen.ChangeDefaultMethod)
	u.PUT("/contact-address", a.allow(all...), gen.SetContactAddress)
	u.DELETE("/methods/:method", a.allow(all...), gen.RemoveMethod)
	u.POST("/backup-codes", a.allow(all...), gen.RegenerateBackupCodes)
	u.DELETE("/two-factor", a.allow(all...), gen.Disable)
	u.POST("/method-switch", a.allow(all...), gen.SwitchMethod)
	u.PUT("/requirement", a.allow(all...), gen.SetRequirement)
	u.PUT("/toggle-permission", a.allow(admins...), gen.SetTogglePermission)
	u.POST("/reset", a.allow(admins...), gen.Reset)
	u.DELETE("/lock", a.allow(admins...), gen.Unlock)

	a.securityKeyRoutes(t, u, gen, all, admins)

	au := t.Group("/audit", a.allow(auditors...))
	au.GET("/events", gen.AuditFeed)
	au.GET("/users/:user_id/events", gen.AuditHistory)
	au.GET("/users/:user_id/state", gen.AuditStateAt)
	au.GET("/verification", gen.AuditVerify)
}

// meta builds the event metadata of a request.
func (a *API) meta(c *gin.Context, actor domain.Actor, reason string) commands.Meta {
	m := commands.Meta{Actor: actor, RequestID: requestID(c), KeyID: apiKey(c).KeyID, Reason: reason}
	if corr := c.GetHeader("X-Correlation-Id"); validHeaderToken(corr, 128) {
		m.CorrelationID = corr
	}
	return m
}

// target resolves the tenant (always the key's) and the user in the path.
func (a *API) target(c *gin.Context) (tenantID, userID string, actor domain.Actor, err error) {
	userID = c.Param("user_id")
	if err := domain.ValidateIdentifier("user id", userID); err != nil {
		return "", "", domain.Actor{}, err
	}
	actor, err = a.actor(c)
	return apiKey(c).TenantID, userID, actor, err
}

func (a *API) missingUser(c *gin.Context, err error) error {
	de, ok := domain.AsError(err)
	if !ok || de.Kind == domain.KindInvalid || de.Kind == domain.KindNotFound {
		return err
	}
	if exists, xerr := a.userExists(c.Request.Context(), apiKey(c).TenantID, c.Param("user_id")); xerr == nil && !exists {
		return domain.NotFound(domain.CodeUserNotFound, "user not found")
	}
	return err
}

func (a *API) userExists(ctx context.Context, tenantID, userID string) (bool, error) {
	var exists bool
	// In a request's unit: its connection, which also sees the request's own events.
	err := eventstore.Reader(ctx, a.pool).QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM events WHERE stream_id = $1)`,
		eventstore.UserStream(tenantID, userID)).Scan(&exists)
	return exists, err
}

// minPosition is ?min_position for read-your-writes, 0 when absent; the
// contract's minimum (0) is checked before (checkParams).
func minPosition(p *int) int64 {
	if p == nil {
		return 0
	}
	return int64(*p)
}

func (s strictServer) Healthz(context.Context, api.HealthzRequestObject) (api.HealthzResponseObject, error) {
	return api.Healthz200JSONResponse{Status: api.HealthStatusOk}, nil
}

// Readyz: the database answers and every extra check passes.
func (s strictServer) Readyz(ctx context.Context, _ api.ReadyzRequestObject) (api.ReadyzResponseObject, error) {
	checks := map[string]api.ReadyChecks{}
	details := map[string]string{}
	ready, degraded := true, false
	record := func(name string, err error, rc ReadyCheck) {
		if err != nil {
			if rc.Degrades {
				degraded = true
			} else {
				ready = false
			}
			checks[name] = api.ReadyChecksFailing
			if rc.Explain {
				details[name] = err.Error()
			}
			s.a.log.WarnContext(ctx, "not ready", "check", name, "error", err.Error())
			return
		}
		checks[name] = api.ReadyChecksOk
	}
	record("database", s.a.pool.Ping(ctx), ReadyCheck{})
	for _, rc := range s.a.ready {
		record(rc.Name, rc.Check(ctx), rc)
	}
	out := api.Ready{Status: api.ReadyStatusReady, Checks: checks}
	if len(details) > 0 {
		out.Details = &details
	}
	switch {
	case !ready:
		out.Status = api.ReadyStatusNotReady
		return api.Readyz503JSONResponse(out), nil
	case degraded:
		out.Status = api.ReadyStatusDegraded
	}
	return api.Readyz200JSONResponse(out), nil
}

func (s strictServer) Openapi(context.Context, api.OpenapiRequestObject) (api.OpenapiResponseObject, error) {
	return api.Openapi200ApplicationyamlResponse{Body: bytes.NewReader(OpenAPI), ContentLength: int64(len(OpenAPI))}, nil
}
