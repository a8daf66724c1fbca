package handlers

import (
	"context"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// Security keys (WebAuthn): the operations between the "Security keys" markers
// of openapi.yaml. The browser's options and answers pass through as JSON; the
// commands verify them.

// securityKeyRoutes registers the security-key routes on the user group u and
// the tenant group t.
func (a *API) securityKeyRoutes(t, u *gin.RouterGroup, gen *api.ServerInterfaceWrapper, all, admins []Role) {
	t.GET("/policy/webauthn", a.allow(all...), gen.GetWebAuthnPolicy)
	t.PUT("/policy/webauthn", a.allow(admins...), gen.PutWebAuthnPolicy)
	u.POST("/security-keys/registration", a.allow(all...), gen.StartSecurityKeyRegistration)
	u.POST("/security-keys", a.allow(all...), gen.FinishSecurityKeyRegistration)
	u.GET("/security-keys", a.allow(all...), gen.ListSecurityKeys)
	u.DELETE("/security-keys/:key_id", a.allow(all...), gen.RemoveSecurityKey)
	u.POST("/security-keys/challenge", a.allow(all...), gen.StartSecurityKeyLogin)
	u.POST("/security-keys/verification", a.allow(all...), gen.VerifySecurityKey)
}

func optionsView(o commands.SecurityKeyOptions) api.SecurityKeyOptions {
	return api.SecurityKeyOptions{Position: int(o.Position), Options: o.Options, ExpiresAt: o.ExpiresAt.UTC()}
}

func (s strictServer) StartSecurityKeyRegistration(ctx context.Context, in api.StartSecurityKeyRegistrationRequestObject) (api.StartSecurityKeyRegistrationResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	var account string
	if in.Body != nil {
		account = deref(in.Body.AccountName)
	}
	out, err := s.a.cmd.StartSecurityKeyRegistration(r.c.Request.Context(), r.meta, commands.StartSecurityKeyRegistration{TenantID: r.tenant, UserID: r.user, AccountName: account})
	return api.StartSecurityKeyRegistration201JSONResponse(optionsView(out)), s.done(r, "StartSecurityKeyRegistration", false, err)
}

func (s strictServer) FinishSecurityKeyRegistration(ctx context.Context, in api.FinishSecurityKeyRegistrationRequestObject) (api.FinishSecurityKeyRegistrationResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.FinishSecurityKeyRegistration(r.c.Request.Context(), r.meta, commands.FinishSecurityKeyRegistration{
		TenantID: r.tenant, UserID: r.user, Name: in.Body.Name, Response: in.Body.Credential,
	})
	res := api.FinishSecurityKeyRegistration201JSONResponse{Position: int(out.Position), KeyId: out.KeyID, Enabled: true}
	if len(out.BackupCodes) > 0 {
		res.BackupCodes = &out.BackupCodes
	}
	return res, s.done(r, "FinishSecurityKeyRegistration", true, err)
}

func (s strictServer) ListSecurityKeys(ctx context.Context, _ api.ListSecurityKeysRequestObject) (api.ListSecurityKeysResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	keys, err := s.a.cmd.ListSecurityKeys(r.c.Request.Context(), r.meta, commands.ListSecurityKeys{TenantID: r.tenant, UserID: r.user})
	out := api.ListSecurityKeys200JSONResponse{SecurityKeys: make([]api.SecurityKey, 0, len(keys))}
	for _, k := range keys {
		v := api.SecurityKey{KeyId: k.KeyID, Name: k.Name, RegisteredAt: k.RegisteredAt.UTC(), CloneSuspected: k.CloneSuspected}
		if k.LastUsedAt != nil {
			t := k.LastUsedAt.UTC()
			v.LastUsedAt = &t
		}
		out.SecurityKeys = append(out.SecurityKeys, v)
	}
	return out, s.done(r, "ListSecurityKeys", true, err)
}

func (s strictServer) RemoveSecurityKey(ctx context.Context, in api.RemoveSecurityKeyRequestObject) (api.RemoveSecurityKeyResponseObject, error) {
	out, err := s.record(ctx, "RemoveSecurityKey", reasonOf(in.Body), func(ctx context.Context, meta commands.Meta, tenant, user string) (commands.Result, error) {
		return s.a.cmd.RemoveSecurityKey(ctx, meta, commands.RemoveSecurityKey{TenantID: tenant, UserID: user, KeyID: in.KeyId})
	})
	return api.RemoveSecurityKey200JSONResponse{RecordedJSONResponse: out}, err
}

func (s strictServer) StartSecurityKeyLogin(ctx context.Context, _ api.StartSecurityKeyLoginRequestObject) (api.StartSecurityKeyLoginResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.StartSecurityKeyLogin(r.c.Request.Context(), r.meta, commands.StartSecurityKeyLogin{TenantID: r.tenant, UserID: r.user})
	return api.StartSecurityKeyLogin200JSONResponse(optionsView(out)), s.done(r, "StartSecurityKeyLogin", true, err)
}

func (s strictServer) VerifySecurityKey(ctx context.Context, in api.VerifySecurityKeyRequestObject) (api.VerifySecurityKeyResponseObject, error) {
	r, err := s.begin(ctx, "")
	if err != nil {
		return nil, err
	}
	out, err := s.a.cmd.VerifySecurityKey(r.c.Request.Context(), r.meta, commands.VerifySecurityKey{TenantID: r.tenant, UserID: r.user, Response: in.Body.Credential})
	return api.VerifySecurityKey200JSONResponse{
		Position: int(out.Position), Verified: true, Method: api.SecurityKeyVerificationMethod(domain.MethodWebAuthn),
		BackupCodesRemaining: out.BackupCodesRemaining,
	}, s.done(r, "VerifySecurityKey", true, err)
}

func webAuthnView(p domain.Policy) api.WebAuthnPolicy {
	w := p.WebAuthn
	origins := w.Origins
	if origins == nil {
		origins = []string{}
	}
	uv := w.UserVerification
	if uv == "" {
		uv = domain.UserVerificationPreferred
	}
	ttl := w.ChallengeTTL
	if ttl <= 0 {
		ttl = domain.DefaultWebAuthnChallengeTTL
	}
	return api.WebAuthnPolicy{
		RpId: w.RPID, RpName: w.RPName, Origins: origins, UserVerification: api.WebAuthnPolicyUserVerification(uv),
		AllowClonedKeys: w.AllowClonedKeys, ChallengeTtlSeconds: int(ttl / time.Second),
	}
}

func (s strictServer) GetWebAuthnPolicy(ctx context.Context, _ api.GetWebAuthnPolicyRequestObject) (api.GetWebAuthnPolicyResponseObject, error) {
	c := ctx.(*gin.Context)
	p, err := s.a.cmd.TenantPolicy(c.Request.Context(), apiKey(c).TenantID)
	return api.GetWebAuthnPolicy200JSONResponse(webAuthnView(p)), err
}

// PutWebAuthnPolicy replaces the relying party; the other policy fields stay.
// Fields left out take their defaults, so a PUT says the whole setting.
func (s strictServer) PutWebAuthnPolicy(ctx context.Context, in api.PutWebAuthnPolicyRequestObject) (api.PutWebAuthnPolicyResponseObject, error) {
	c := ctx.(*gin.Context)
	actor, err := s.a.actor(c)
	if err != nil {
		return nil, err
	}
	body := in.Body
	reason := deref(body.Reason)
	w := domain.WebAuthnPolicy{
		RPID: body.RpId, RPName: deref(body.RpName), Origins: body.Origins,
		UserVerification: domain.UserVerificationPreferred, ChallengeTTL: domain.DefaultWebAuthnChallengeTTL,
	}
	if body.UserVerification != nil {
		w.UserVerification = string(*body.UserVerification)
	}
	if body.AllowClonedKeys != nil {
		w.AllowClonedKeys = *body.AllowClonedKeys
	}
	if body.ChallengeTtlSeconds != nil {
		w.ChallengeTTL = time.Duration(*body.ChallengeTtlSeconds) * time.Second
	}
	if len(w.Origins) == 0 {
		w.Origins = nil
	}
	tenant, run := apiKey(c).TenantID, c.Request.Context()
	r := request{c: c, tenant: tenant, meta: s.a.meta(c, actor, reason)}
	policy, err := s.a.cmd.TenantPolicy(run, tenant)
	var out commands.Result
	if err == nil {
		policy.WebAuthn = w
		out, err = s.a.cmd.ChangeTenantPolicy(run, r.meta, commands.ChangeTenantPolicy{TenantID: tenant, Policy: policy})
	}
	changed, err := s.changed(r, "ChangeTenantPolicy", false, err)
	return api.PutWebAuthnPolicy200JSONResponse{Position: int(out.Position), Webauthn: webAuthnView(policy), Changed: changed}, err
}
