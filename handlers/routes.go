package handlers

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// routes registers every route. The OpenAPI document lists the same set; a test
// compares them.
func (a *API) routes() {
	e := a.engine
	e.Use(a.requestIDs, a.observe, a.recoverer, a.timeout, a.bodyRules)
	e.NoRoute(a.noRoute)
	e.NoMethod(a.noMethod)

	e.GET("/healthz", a.healthz)
	e.GET("/readyz", a.readyz)
	e.GET("/metrics", a.metrics.handler())
	e.GET("/openapi.yaml", a.openapiDoc)

	v1 := e.Group("/v1", a.ipLimit, a.inputRules)
	gen := a.generated()

	op := v1.Group("/operator", a.operator, a.idempotent)
	op.POST("/tenants", a.operatorCreateTenant)
	op.GET("/tenants/:tenant_id/api-keys", gen.OperatorListKeys)
	op.POST("/tenants/:tenant_id/api-keys", gen.OperatorIssueKey)
	op.DELETE("/tenants/:tenant_id/api-keys/:key_id", gen.OperatorRevokeKey)

	all := []Role{RoleApp, RoleAdmin, RoleSuperAdmin, RoleAuditor}
	admins := []Role{RoleAdmin, RoleSuperAdmin}
	readers := []Role{RoleAdmin, RoleSuperAdmin, RoleAuditor}
	auditors := []Role{RoleAuditor, RoleSuperAdmin}

	t := v1.Group("", a.authenticate, a.idempotent)
	t.GET("/policy", a.allow(all...), a.getPolicy)
	t.PATCH("/policy", a.allow(admins...), a.patchPolicy)
	t.GET("/coverage", a.allow(readers...), a.coverage)

	t.GET("/api-keys", a.allow(RoleSuperAdmin), gen.ListKeys)
	t.POST("/api-keys", a.allow(RoleSuperAdmin), gen.IssueKey)
	t.DELETE("/api-keys/:key_id", a.allow(RoleSuperAdmin), gen.RevokeKey)

	t.GET("/users", a.allow(readers...), a.listUsers)
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

	au := t.Group("/audit", a.allow(auditors...))
	au.GET("/events", a.auditFeed)
	au.GET("/users/:user_id/events", a.auditHistory)
	au.GET("/users/:user_id/state", a.auditStateAt)
	au.GET("/verification", a.auditVerify)
}

// written is the part of every write response a frontend needs for read-your-writes.
type written struct {
	// Position is the log position of the last event written (0: nothing was written).
	Position int64 `json:"position"`
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

// command runs one command, counts its outcome, and maps an error on a user the
// tenant has never seen to 404, so another tenant's user and a missing one
// answer the same.
func (a *API) command(c *gin.Context, name string, needsUser bool, run func(ctx context.Context) error) bool {
	err := run(c.Request.Context())
	a.metrics.command(name, err)
	if err == nil {
		return true
	}
	if needsUser {
		err = a.missingUser(c, err)
	}
	a.fail(c, err)
	return false
}

// changeCommand is command for a setting a repeated request may find already in
// place: the domain's "nothing to change" answers 200 with changed false, so
// that a PUT can be repeated safely.
func (a *API) changeCommand(c *gin.Context, name string, needsUser bool, run func(ctx context.Context) (commands.Result, error)) (out commands.Result, changed, ok bool) {
	changed = true
	ok = a.command(c, name, needsUser, func(ctx context.Context) (err error) {
		out, err = run(ctx)
		if errors.Is(err, domain.Precondition(domain.CodeNothingToChange, "")) {
			changed, err = false, nil
		}
		return err
	})
	return out, changed, ok
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

// minPosition reads ?min_position for read-your-writes.
func minPosition(c *gin.Context) (int64, error) {
	raw, ok := c.GetQuery("min_position")
	if !ok {
		return 0, nil
	}
	n, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || n < 0 {
		return 0, domain.Invalid(domain.CodeInvalidArgument, "min_position must be a non-negative integer")
	}
	return n, nil
}

// onlyQuery refuses query parameters a route does not know: a typo in a filter
// must not silently list everything.
func onlyQuery(c *gin.Context, allowed ...string) error {
	for k := range c.Request.URL.Query() {
		ok := false
		for _, a := range allowed {
			if k == a {
				ok = true
				break
			}
		}
		if !ok {
			return domain.Invalid(domain.CodeInvalidArgument, "unknown query parameter "+strconv.Quote(k))
		}
	}
	return nil
}

func parseBoolQuery(c *gin.Context, name string) (*bool, error) {
	raw, ok := c.GetQuery(name)
	if !ok {
		return nil, nil
	}
	switch strings.ToLower(raw) {
	case "true":
		v := true
		return &v, nil
	case "false":
		v := false
		return &v, nil
	}
	return nil, domain.Invalid(domain.CodeInvalidArgument, name+" must be true or false")
}

func (a *API) healthz(c *gin.Context) {
	writeJSON(c, http.StatusOK, gin.H{"status": "ok"})
}

// readyz: the database answers and every extra check passes.
func (a *API) readyz(c *gin.Context) {
	checks := map[string]string{}
	details := map[string]string{}
	ready, degraded := true, false
	record := func(name string, err error, rc ReadyCheck) {
		if err != nil {
			if rc.Degrades {
				degraded = true
			} else {
				ready = false
			}
			checks[name] = "failing"
			if rc.Explain {
				details[name] = err.Error()
			}
			a.log.WarnContext(c.Request.Context(), "not ready", "check", name, "error", err.Error())
			return
		}
		checks[name] = "ok"
	}
	record("database", a.pool.Ping(c.Request.Context()), ReadyCheck{})
	for _, rc := range a.ready {
		record(rc.Name, rc.Check(c.Request.Context()), rc)
	}
	status, word := http.StatusOK, "ready"
	switch {
	case !ready:
		status, word = http.StatusServiceUnavailable, "not_ready"
	case degraded:
		word = "degraded"
	}
	body := gin.H{"status": word, "checks": checks}
	if len(details) > 0 {
		body["details"] = details
	}
	writeJSON(c, status, body)
}

func (a *API) openapiDoc(c *gin.Context) {
	c.Data(http.StatusOK, "application/yaml", OpenAPI)
}
