package handlers

import (
	"context"
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

func (s strictServer) ListUsers(ctx context.Context, in api.ListUsersRequestObject) (api.ListUsersResponseObject, error) {
	c := ctx.(*gin.Context)
	if _, err := s.a.actor(c); err != nil {
		return nil, err
	}
	p := in.Params
	q := UserQuery{Status: domain.Status(deref(p.Status)), Required: p.Required, LowBackupCodes: p.LowBackupCodes, Locked: p.Locked, After: deref(p.Cursor), Limit: 50}
	switch q.Status {
	case "", domain.StatusNotActivated, domain.StatusPending, domain.StatusActivated, domain.StatusLocked,
		domain.StatusDisabled, domain.StatusResetPending, domain.StatusSetupAppAtNextLogin:
	default:
		return nil, domain.Invalid(domain.CodeInvalidArgument, "unknown status filter")
	}
	if m := deref(p.Method); m != "" {
		method, err := domain.ParseMethod(m)
		if err != nil {
			return nil, err
		}
		q.Method = method
	}
	if p.Limit != nil {
		if *p.Limit < 1 || *p.Limit > 200 {
			return nil, domain.Invalid(domain.CodeInvalidArgument, "limit must be between 1 and 200")
		}
		q.Limit = *p.Limit
	}
	if len(q.After) > 500 {
		return nil, domain.Invalid(domain.CodeInvalidArgument, "cursor is not valid")
	}
	pos, err := minPosition(p.MinPosition)
	if err != nil {
		return nil, err
	}
	if s.a.reads == nil {
		return nil, notImplemented("the user list (read model)")
	}
	page, err := s.a.reads.ListUsers(c.Request.Context(), apiKey(c).TenantID, q, pos)
	out := api.ListUsers200JSONResponse{Users: make([]api.UserStatus, 0, len(page.Users))}
	for _, u := range page.Users {
		out.Users = append(out.Users, statusView(u))
	}
	if page.NextCursor != "" {
		out.NextCursor = &page.NextCursor
	}
	return out, err
}

func (s strictServer) Coverage(ctx context.Context, in api.CoverageRequestObject) (api.CoverageResponseObject, error) {
	c := ctx.(*gin.Context)
	if _, err := s.a.actor(c); err != nil {
		return nil, err
	}
	pos, err := minPosition(in.Params.MinPosition)
	if err != nil {
		return nil, err
	}
	if s.a.reads == nil {
		return nil, notImplemented("tenant coverage (read model)")
	}
	cov, err := s.a.reads.Coverage(c.Request.Context(), apiKey(c).TenantID, pos)
	out := api.Coverage200JSONResponse{
		Users: cov.Users, ByStatus: make(map[string]int, len(cov.ByStatus)), Activated: cov.Activated, ActivatedShare: cov.ActivatedShare,
		RequiredNotEnrolled: cov.RequiredNotEnrolled, LockedNow: cov.LockedNow, UpdatedAt: cov.UpdatedAt, AppliedPosition: int(cov.AppliedPosition),
	}
	for st, n := range cov.ByStatus {
		out.ByStatus[string(st)] = n
	}
	return out, err
}

// Tenant API keys, managed by the tenant's super admins.

// keyView is a key as the contract shows it.
func keyView(k APIKey) api.APIKey {
	return api.APIKey{KeyId: k.KeyID, Role: api.Role(k.Role), Name: k.Name, CreatedBy: k.CreatedBy, CreatedAt: k.CreatedAt, RevokedAt: k.RevokedAt}
}

// issuedView is a new key as the contract shows it, with its token.
func issuedView(k IssuedKey) api.IssuedKey {
	v := keyView(k.APIKey)
	return api.IssuedKey{KeyId: v.KeyId, Role: v.Role, Name: v.Name, CreatedBy: v.CreatedBy, CreatedAt: v.CreatedAt, Token: k.Token}
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
	return issuedView(k), nil
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

// auditFilter is the filter of a feed or a history, checked as the contract
// states it where the generated layer does not.
func auditFilter(p api.AuditFeedParams) (audit.Filter, error) {
	var f audit.Filter
	if p.AfterPosition != nil {
		if *p.AfterPosition < 0 {
			return f, domain.Invalid(domain.CodeInvalidArgument, "after_position must be a non-negative integer")
		}
		f.AfterPosition = int64(*p.AfterPosition)
	}
	if p.Limit != nil {
		if *p.Limit < 1 || *p.Limit > 1000 {
			return f, domain.Invalid(domain.CodeInvalidArgument, "limit must be between 1 and 1000")
		}
		f.Limit = *p.Limit
	}
	if p.Type != nil {
		for _, t := range *p.Type {
			if _, ok := domain.NewEvent(t); !ok {
				return f, domain.Invalid(domain.CodeInvalidArgument, "unknown event type "+strconv.Quote(t))
			}
			f.Types = append(f.Types, t)
		}
	}
	if raw := deref(p.Actor); raw != "" {
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
	for name, t := range map[string]*time.Time{"since": p.Since, "until": p.Until} {
		if err := sentTime(name, t); err != nil {
			return f, err
		}
	}
	if p.Since != nil {
		f.From = *p.Since
	}
	if p.Until != nil {
		f.To = *p.Until
	}
	return f, nil
}

// sentTime refuses a time sent empty, which the generated layer binds as the
// zero time.
func sentTime(name string, t *time.Time) error {
	if t != nil && t.IsZero() {
		return domain.Invalid(domain.CodeInvalidArgument, name+" must be an RFC 3339 time")
	}
	return nil
}

// auditRead logs the access of a read and answers the tenant read.
func (s strictServer) auditRead(ctx context.Context, action, target string) (string, error) {
	c := ctx.(*gin.Context)
	actor, err := s.a.actor(c)
	if err != nil {
		return "", err
	}
	if s.a.audit == nil {
		return "", notImplemented("the audit routes")
	}
	k := apiKey(c)
	return k.TenantID, s.a.audit.RecordAccess(c.Request.Context(), audit.Access{
		TenantID: k.TenantID, ActorKind: string(actor.Kind), ActorID: actor.ID, KeyID: k.KeyID,
		RequestID: requestID(c), Action: action, Target: target,
	})
}

func (s strictServer) AuditFeed(ctx context.Context, in api.AuditFeedRequestObject) (api.AuditFeedResponseObject, error) {
	tenant, err := s.auditRead(ctx, "feed", "")
	if err != nil {
		return nil, err
	}
	f, err := auditFilter(in.Params)
	if err != nil {
		return nil, err
	}
	page, err := s.a.audit.Feed(ctx.(*gin.Context).Request.Context(), tenant, f)
	return api.AuditFeed200JSONResponse(auditPageView(page)), err
}

func (s strictServer) AuditHistory(ctx context.Context, in api.AuditHistoryRequestObject) (api.AuditHistoryResponseObject, error) {
	if err := domain.ValidateIdentifier("user id", in.UserId); err != nil {
		return nil, err
	}
	tenant, err := s.auditRead(ctx, "history", in.UserId)
	if err != nil {
		return nil, err
	}
	f, err := auditFilter(api.AuditFeedParams(in.Params))
	if err != nil {
		return nil, err
	}
	page, err := s.a.audit.History(ctx.(*gin.Context).Request.Context(), tenant, in.UserId, f)
	if err == nil && len(page.Entries) == 0 && f.AfterPosition == 0 {
		err = domain.NotFound(domain.CodeUserNotFound, "user not found")
	}
	return api.AuditHistory200JSONResponse(auditPageView(page)), err
}

func (s strictServer) AuditStateAt(ctx context.Context, in api.AuditStateAtRequestObject) (api.AuditStateAtResponseObject, error) {
	if err := domain.ValidateIdentifier("user id", in.UserId); err != nil {
		return nil, err
	}
	if err := sentTime("at", &in.Params.At); err != nil {
		return nil, err
	}
	tenant, err := s.auditRead(ctx, "state_at", in.UserId)
	if err != nil {
		return nil, err
	}
	snap, err := s.a.audit.StateAt(ctx.(*gin.Context).Request.Context(), tenant, in.UserId, in.Params.At)
	if err == nil && snap.Version == 0 {
		err = domain.NotFound(domain.CodeUserNotFound, "the user had no 2FA history at that time")
	}
	return api.AuditStateAt200JSONResponse(statusView(StatusFromSnapshot(snap))), err
}

func (s strictServer) AuditVerify(ctx context.Context, _ api.AuditVerifyRequestObject) (api.AuditVerifyResponseObject, error) {
	tenant, err := s.auditRead(ctx, "verify", "")
	if err != nil {
		return nil, err
	}
	rep, err := s.a.audit.Verify(ctx.(*gin.Context).Request.Context(), tenant)
	return api.AuditVerify200JSONResponse(auditReportView(rep)), err
}

// auditPageView is a page of the audit log as the contract shows it.
func auditPageView(p audit.Page) api.AuditPage {
	out := api.AuditPage{Entries: make([]api.AuditEntry, 0, len(p.Entries))}
	for _, e := range p.Entries {
		out.Entries = append(out.Entries, api.AuditEntry{
			Position: int(e.Position), EventId: e.EventID, TenantId: e.TenantID, UserId: optional[string](e.UserID),
			StreamId: e.StreamID, Version: int(e.Version), Type: e.Type, SchemaVersion: e.SchemaVersion, RecordedAt: e.RecordedAt,
			Actor: api.Actor{Kind: api.ActorKind(e.Actor.Kind), Id: e.Actor.ID}, RequestId: optional[string](e.RequestID),
			CorrelationId: optional[string](e.CorrelationID), CausationId: optional[string](e.CausationID),
			KeyId: optional[string](e.KeyID), Reason: optional[string](e.Reason), Data: e.Data,
		})
	}
	if p.Next != 0 {
		next := int(p.Next)
		out.NextAfterPosition = &next
	}
	return out
}

// auditReportView is the verifier's verdict as the contract shows it.
func auditReportView(r audit.Report) api.AuditReport {
	failure := func(f audit.Failure) api.AuditFailure {
		return api.AuditFailure{Position: int(f.Position), EventId: f.EventID, StreamId: f.StreamID, Version: int(f.Version), Reason: f.Reason}
	}
	out := api.AuditReport{Ok: r.OK, Streams: r.Streams, Events: r.Events}
	if len(r.Failures) > 0 {
		fs := make([]api.AuditFailure, 0, len(r.Failures))
		for _, f := range r.Failures {
			fs = append(fs, failure(f))
		}
		out.Failures = &fs
	}
	if r.FirstBroken != nil {
		fb := failure(*r.FirstBroken)
		out.FirstBroken = &fb
	}
	return out
}
