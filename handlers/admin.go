package handlers

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/audit"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// Admin routes: the actor is the admin named in X-Actor; the domain checks the
// tenant's rules (self reset, super-admin-only disabling…).

func notImplemented(what string) error {
	return newAPIError(http.StatusNotImplemented, codeNotImplemented, what+" is not available in this build yet")
}

func (a *API) listUsers(c *gin.Context) {
	if err := onlyQuery(c, "status", "method", "required", "low_backup_codes", "locked", "limit", "cursor", "min_position"); err != nil {
		a.fail(c, err)
		return
	}
	if _, err := a.actor(c); err != nil {
		a.fail(c, err)
		return
	}
	q := UserQuery{Status: domain.Status(c.Query("status")), After: c.Query("cursor"), Limit: 50}
	switch q.Status {
	case "", domain.StatusNotActivated, domain.StatusPending, domain.StatusActivated, domain.StatusLocked,
		domain.StatusDisabled, domain.StatusResetPending, domain.StatusSetupAppAtNextLogin:
	default:
		a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "unknown status filter"))
		return
	}
	if m := c.Query("method"); m != "" {
		method, err := domain.ParseMethod(m)
		if err != nil {
			a.fail(c, err)
			return
		}
		q.Method = method
	}
	var err error
	for name, dst := range map[string]**bool{"required": &q.Required, "low_backup_codes": &q.LowBackupCodes, "locked": &q.Locked} {
		if *dst, err = parseBoolQuery(c, name); err != nil {
			a.fail(c, err)
			return
		}
	}
	if raw, ok := c.GetQuery("limit"); ok {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > 200 {
			a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "limit must be between 1 and 200"))
			return
		}
		q.Limit = n
	}
	if len(q.After) > 500 {
		a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "cursor is not valid"))
		return
	}
	pos, err := minPosition(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	if a.reads == nil {
		a.fail(c, notImplemented("the user list (read model)"))
		return
	}
	page, err := a.reads.ListUsers(c.Request.Context(), apiKey(c).TenantID, q, pos)
	if errors.Is(err, ErrReadTimeout) {
		err = readTimeout()
	}
	if err != nil {
		a.fail(c, err)
		return
	}
	if page.Users == nil {
		page.Users = []UserStatus{}
	}
	writeJSON(c, http.StatusOK, page)
}

func (a *API) coverage(c *gin.Context) {
	if err := onlyQuery(c, "min_position"); err != nil {
		a.fail(c, err)
		return
	}
	if _, err := a.actor(c); err != nil {
		a.fail(c, err)
		return
	}
	pos, err := minPosition(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	if a.reads == nil {
		a.fail(c, notImplemented("tenant coverage (read model)"))
		return
	}
	cov, err := a.reads.Coverage(c.Request.Context(), apiKey(c).TenantID, pos)
	if errors.Is(err, ErrReadTimeout) {
		err = readTimeout()
	}
	if err != nil {
		a.fail(c, err)
		return
	}
	if cov.ByStatus == nil {
		cov.ByStatus = map[domain.Status]int{}
	}
	writeJSON(c, http.StatusOK, cov)
}

// Tenant API keys, managed by the tenant's super admins.

// keyView is a key as the contract shows it.
func keyView(k APIKey) api.APIKey {
	return api.APIKey{KeyId: k.KeyID, Role: api.Role(k.Role), Name: k.Name, CreatedBy: k.CreatedBy, CreatedAt: k.CreatedAt, RevokedAt: k.RevokedAt}
}

// keyList lists a tenant's keys, never their tokens.
func (a *API) keyList(ctx context.Context, tenant string) (api.KeyList, error) {
	keys, err := a.keys.List(ctx, tenant)
	out := api.KeyList{ApiKeys: make([]api.APIKey, 0, len(keys))}
	for _, k := range keys {
		out.ApiKeys = append(out.ApiKeys, keyView(k))
	}
	return out, err
}

// issueKey issues a key of the tenant for the one named by.
func (a *API) issueKey(ctx context.Context, tenant, by string, in api.IssueKeyRequest) (api.IssuedKey, error) {
	role, err := ParseRole(string(in.Role))
	if err != nil {
		return api.IssuedKey{}, err
	}
	k, err := a.keys.Issue(ctx, tenant, role, deref(in.Name), by)
	if err != nil {
		return api.IssuedKey{}, err
	}
	a.log.InfoContext(ctx, "api key issued", "tenant_id", tenant, "key_id", k.KeyID, "role", string(role), "by", by, "request_id", requestID(ctx.(*gin.Context)))
	v := keyView(k.APIKey)
	return api.IssuedKey{KeyId: v.KeyId, Role: v.Role, Name: v.Name, CreatedBy: v.CreatedBy, CreatedAt: v.CreatedAt, Token: k.Token}, nil
}

func (a *API) revokeKey(ctx context.Context, tenant, keyID, by string) (api.APIKey, error) {
	k, err := a.keys.Revoke(ctx, tenant, keyID)
	if err != nil {
		return api.APIKey{}, err
	}
	a.log.InfoContext(ctx, "api key revoked", "tenant_id", tenant, "key_id", k.KeyID, "by", by, "request_id", requestID(ctx.(*gin.Context)))
	return keyView(k), nil
}

// superAdmin is who acts on the tenant's keys: the super admin in X-Actor.
func (s strictServer) superAdmin(ctx context.Context) (tenant, by string, err error) {
	c := ctx.(*gin.Context)
	actor, err := s.a.actor(c)
	return apiKey(c).TenantID, string(actor.Kind) + ":" + actor.ID, err
}

func (s strictServer) ListKeys(ctx context.Context, _ api.ListKeysRequestObject) (api.ListKeysResponseObject, error) {
	tenant, _, err := s.superAdmin(ctx)
	if err != nil {
		return nil, err
	}
	out, err := s.a.keyList(ctx, tenant)
	return api.ListKeys200JSONResponse(out), err
}

func (s strictServer) IssueKey(ctx context.Context, in api.IssueKeyRequestObject) (api.IssueKeyResponseObject, error) {
	tenant, by, err := s.superAdmin(ctx)
	if err != nil {
		return nil, err
	}
	out, err := s.a.issueKey(ctx, tenant, by, *in.Body)
	return api.IssueKey201JSONResponse(out), err
}

func (s strictServer) RevokeKey(ctx context.Context, in api.RevokeKeyRequestObject) (api.RevokeKeyResponseObject, error) {
	tenant, by, err := s.superAdmin(ctx)
	if err != nil {
		return nil, err
	}
	out, err := s.a.revokeKey(ctx, tenant, in.KeyId, by)
	return api.RevokeKey200JSONResponse(out), err
}

// Auditor routes. Every read is written to the audit access log first: a read
// that cannot be logged is not served.

func auditFilter(c *gin.Context) (audit.Filter, error) {
	var f audit.Filter
	if raw, ok := c.GetQuery("after_position"); ok {
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			return f, domain.Invalid(domain.CodeInvalidArgument, "after_position must be a non-negative integer")
		}
		f.AfterPosition = n
	}
	if raw, ok := c.GetQuery("limit"); ok {
		n, err := strconv.Atoi(raw)
		if err != nil || n < 1 || n > 1000 {
			return f, domain.Invalid(domain.CodeInvalidArgument, "limit must be between 1 and 1000")
		}
		f.Limit = n
	}
	for _, t := range c.QueryArray("type") {
		if _, ok := domain.NewEvent(t); !ok {
			return f, domain.Invalid(domain.CodeInvalidArgument, "unknown event type "+strconv.Quote(t))
		}
		f.Types = append(f.Types, t)
	}
	if raw := c.Query("actor"); raw != "" {
		kind, id, _ := strings.Cut(raw, ":")
		act := domain.Actor{Kind: domain.ActorKind(kind), ID: id}
		if id == "" {
			act.ID = "any"
		}
		if err := act.Validate(); err != nil {
			return f, domain.Invalid(domain.CodeInvalidArgument, "actor must be kind or kind:id, e.g. admin:bob")
		}
		f.ActorKind, f.ActorID = act.Kind, id
	}
	for name, dst := range map[string]*time.Time{"since": &f.From, "until": &f.To} {
		if raw, ok := c.GetQuery(name); ok {
			t, err := time.Parse(time.RFC3339, raw)
			if err != nil {
				return f, domain.Invalid(domain.CodeInvalidArgument, name+" must be an RFC 3339 time")
			}
			*dst = t
		}
	}
	return f, nil
}

// auditRead checks the route's common parts and logs the access.
func (a *API) auditRead(c *gin.Context, action, target string, allowed ...string) bool {
	if err := onlyQuery(c, allowed...); err != nil {
		a.fail(c, err)
		return false
	}
	actor, err := a.actor(c)
	if err != nil {
		a.fail(c, err)
		return false
	}
	if a.audit == nil {
		a.fail(c, notImplemented("the audit routes"))
		return false
	}
	k := apiKey(c)
	if err := a.audit.RecordAccess(c.Request.Context(), audit.Access{
		TenantID: k.TenantID, ActorKind: string(actor.Kind), ActorID: actor.ID, KeyID: k.KeyID,
		RequestID: requestID(c), Action: action, Target: target,
	}); err != nil {
		a.fail(c, err)
		return false
	}
	return true
}

func (a *API) auditFeed(c *gin.Context) {
	if !a.auditRead(c, "feed", "", "after_position", "limit", "type", "actor", "since", "until") {
		return
	}
	f, err := auditFilter(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	page, err := a.audit.Feed(c.Request.Context(), apiKey(c).TenantID, f)
	if err != nil {
		a.fail(c, err)
		return
	}
	writeJSON(c, http.StatusOK, page)
}

func (a *API) auditHistory(c *gin.Context) {
	user := c.Param("user_id")
	if err := domain.ValidateIdentifier("user id", user); err != nil {
		a.fail(c, err)
		return
	}
	if !a.auditRead(c, "history", user, "after_position", "limit", "type", "actor", "since", "until") {
		return
	}
	f, err := auditFilter(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	page, err := a.audit.History(c.Request.Context(), apiKey(c).TenantID, user, f)
	if err != nil {
		a.fail(c, err)
		return
	}
	if len(page.Entries) == 0 && f.AfterPosition == 0 {
		a.fail(c, domain.NotFound(domain.CodeUserNotFound, "user not found"))
		return
	}
	writeJSON(c, http.StatusOK, page)
}

func (a *API) auditStateAt(c *gin.Context) {
	user := c.Param("user_id")
	if err := domain.ValidateIdentifier("user id", user); err != nil {
		a.fail(c, err)
		return
	}
	at, err := time.Parse(time.RFC3339, c.Query("at"))
	if err != nil {
		a.fail(c, domain.Invalid(domain.CodeInvalidArgument, "at must be an RFC 3339 time"))
		return
	}
	if !a.auditRead(c, "state_at", user, "at") {
		return
	}
	snap, err := a.audit.StateAt(c.Request.Context(), apiKey(c).TenantID, user, at)
	if err != nil {
		a.fail(c, err)
		return
	}
	if snap.Version == 0 {
		a.fail(c, domain.NotFound(domain.CodeUserNotFound, "the user had no 2FA history at that time"))
		return
	}
	writeJSON(c, http.StatusOK, StatusFromSnapshot(snap))
}

func (a *API) auditVerify(c *gin.Context) {
	if !a.auditRead(c, "verify", "") {
		return
	}
	rep, err := a.audit.Verify(c.Request.Context(), apiKey(c).TenantID)
	if err != nil {
		a.fail(c, err)
		return
	}
	writeJSON(c, http.StatusOK, rep)
}
