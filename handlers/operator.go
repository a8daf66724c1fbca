package handlers

import (
	"context"
	"fmt"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// Operator routes, protected by the operator key from the configuration: they
// create tenants and manage any tenant's API keys.

var operatorActor = domain.Actor{Kind: domain.ActorSystem, ID: "operator"}

// TenantWithKeys is a new tenant and one API key per role, tokens shown once.
type TenantWithKeys struct {
	TenantID string      `json:"tenant_id"`
	Name     string      `json:"name"`
	Position int64       `json:"position"`
	APIKeys  []IssuedKey `json:"api_keys"`
}

// CreateTenantWithKeys creates a tenant and issues one key per role: what
// `twofactord tenant create` and the operator route both do.
func CreateTenantWithKeys(ctx context.Context, svc *commands.Service, keys *KeyStore, meta commands.Meta, name string, policy *domain.Policy) (TenantWithKeys, error) {
	created, err := svc.CreateTenant(ctx, meta, commands.CreateTenant{Name: name, Policy: policy})
	if err != nil {
		return TenantWithKeys{}, err
	}
	out := TenantWithKeys{TenantID: created.TenantID, Name: name, Position: created.Position}
	by := string(meta.Actor.Kind) + ":" + meta.Actor.ID
	for _, role := range Roles {
		k, err := keys.Issue(ctx, created.TenantID, role, "initial "+string(role)+" key", by)
		if err != nil {
			return TenantWithKeys{}, fmt.Errorf("tenant %s created, but issuing its %s key failed: %w", created.TenantID, role, err)
		}
		out.APIKeys = append(out.APIKeys, k)
	}
	return out, nil
}

func (s strictServer) CreateTenant(ctx context.Context, in api.CreateTenantRequestObject) (api.CreateTenantResponseObject, error) {
	c := ctx.(*gin.Context)
	var policy *domain.Policy
	if in.Body.Policy != nil {
		p, err := applyPatch(*in.Body.Policy, domain.DefaultPolicy())
		if err != nil {
			return nil, err
		}
		policy = &p
	}
	meta := commands.Meta{Actor: operatorActor, RequestID: requestID(c), Reason: "operator API"}
	out, err := CreateTenantWithKeys(c.Request.Context(), s.a.cmd, s.a.keys, meta, in.Body.Name, policy)
	s.a.metrics.command("CreateTenant", err)
	if err != nil {
		return nil, err
	}
	s.a.log.InfoContext(c.Request.Context(), "tenant created", "tenant_id", out.TenantID, "request_id", requestID(c))
	res := api.CreateTenant201JSONResponse{TenantId: out.TenantID, Name: out.Name, Position: int(out.Position), ApiKeys: make([]api.IssuedKey, 0, len(out.APIKeys))}
	for _, k := range out.APIKeys {
		res.ApiKeys = append(res.ApiKeys, issuedView(k))
	}
	return res, nil
}

// operatorTenant checks the tenant in the path exists.
func (a *API) operatorTenant(ctx context.Context, tenant string) error {
	_, err := a.cmd.TenantPolicy(ctx, tenant)
	return err
}

// operatorBy names the operator in the log of a key issued or revoked.
const operatorBy = "system:operator"

func (s strictServer) OperatorListKeys(ctx context.Context, in api.OperatorListKeysRequestObject) (api.OperatorListKeysResponseObject, error) {
	if err := s.a.operatorTenant(ctx, in.TenantId); err != nil {
		return nil, err
	}
	out, err := s.a.keyList(ctx, in.TenantId)
	return api.OperatorListKeys200JSONResponse(out), err
}

func (s strictServer) OperatorIssueKey(ctx context.Context, in api.OperatorIssueKeyRequestObject) (api.OperatorIssueKeyResponseObject, error) {
	if err := s.a.operatorTenant(ctx, in.TenantId); err != nil {
		return nil, err
	}
	out, err := s.a.issueKey(ctx, in.TenantId, operatorBy, *in.Body)
	return api.OperatorIssueKey201JSONResponse(out), err
}

func (s strictServer) OperatorRevokeKey(ctx context.Context, in api.OperatorRevokeKeyRequestObject) (api.OperatorRevokeKeyResponseObject, error) {
	if err := s.a.operatorTenant(ctx, in.TenantId); err != nil {
		return nil, err
	}
	out, err := s.a.revokeKey(ctx, in.TenantId, in.KeyId, operatorBy)
	return api.OperatorRevokeKey200JSONResponse(out), err
}
