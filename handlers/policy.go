package handlers

import (
	"context"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers/api"
)

// PolicyView is a tenant policy as the contract shows it: durations in whole
// seconds.
type PolicyView = api.Policy

func secs(d time.Duration) int { return int(d / time.Second) }

// ViewPolicy converts a domain policy.
func ViewPolicy(p domain.Policy) PolicyView {
	return PolicyView{
		IssuerName: p.IssuerName, SupportContact: p.SupportContact, MailFrom: p.MailFrom,
		TotpDigits: api.PolicyTotpDigits(p.TOTPDigits), TotpPeriodSeconds: secs(p.TOTPPeriod), TotpAlgorithm: api.PolicyTotpAlgorithm(p.TOTPAlgorithm),
		TotpSkew: p.TOTPSkew, EnrollmentTtlSeconds: secs(p.EnrollmentTTL), BackupCodeCount: p.BackupCodeCount,
		LowBackupCodesWarning: p.LowBackupCodesWarn, RecoveryCodeDisables: p.RecoveryCodeDisables,
		EmailOtpAllowed: p.EmailOTPAllowed, SmsOtpAllowed: p.SMSOTPAllowed, OtpLength: p.OTPLength,
		OtpLifetimeSeconds: secs(p.OTPLifetime), OtpResendCooldownSeconds: secs(p.OTPResendCooldown),
		LockoutThreshold: p.LockoutThreshold, LockoutDurationSeconds: secs(p.LockoutDuration),
		LockoutMaxDurationSeconds: secs(p.LockoutMaxDuration), DisableBy: api.PolicyDisableBy(p.DisableBy),
		DefaultCanToggle: p.DefaultCanToggle, FreshVerificationWindowSeconds: secs(p.FreshVerificationWindow),
	}
}

// maxPolicySeconds keeps a huge number from overflowing a Duration before Validate sees it.
const maxPolicySeconds = 365 * 24 * 3600

// applyPatch returns p with the fields the patch names; the domain validates
// the result.
func applyPatch(pp api.PolicyPatch, p domain.Policy) (domain.Policy, error) {
	var bad bool
	dur := func(dst *time.Duration, v *int) {
		if v != nil {
			if *v < 0 || *v > maxPolicySeconds {
				bad = true
				return
			}
			*dst = time.Duration(*v) * time.Second
		}
	}
	set(&p.IssuerName, pp.IssuerName)
	set(&p.SupportContact, pp.SupportContact)
	set(&p.MailFrom, pp.MailFrom)
	if pp.TotpDigits != nil {
		p.TOTPDigits = int(*pp.TotpDigits)
	}
	dur(&p.TOTPPeriod, pp.TotpPeriodSeconds)
	if pp.TotpAlgorithm != nil {
		p.TOTPAlgorithm = string(*pp.TotpAlgorithm)
	}
	set(&p.TOTPSkew, pp.TotpSkew)
	dur(&p.EnrollmentTTL, pp.EnrollmentTtlSeconds)
	set(&p.BackupCodeCount, pp.BackupCodeCount)
	set(&p.LowBackupCodesWarn, pp.LowBackupCodesWarning)
	set(&p.RecoveryCodeDisables, pp.RecoveryCodeDisables)
	set(&p.EmailOTPAllowed, pp.EmailOtpAllowed)
	set(&p.SMSOTPAllowed, pp.SmsOtpAllowed)
	set(&p.OTPLength, pp.OtpLength)
	dur(&p.OTPLifetime, pp.OtpLifetimeSeconds)
	dur(&p.OTPResendCooldown, pp.OtpResendCooldownSeconds)
	set(&p.LockoutThreshold, pp.LockoutThreshold)
	dur(&p.LockoutDuration, pp.LockoutDurationSeconds)
	dur(&p.LockoutMaxDuration, pp.LockoutMaxDurationSeconds)
	if pp.DisableBy != nil {
		p.DisableBy = domain.DisablePermission(*pp.DisableBy)
	}
	set(&p.DefaultCanToggle, pp.DefaultCanToggle)
	dur(&p.FreshVerificationWindow, pp.FreshVerificationWindowSeconds)
	if bad {
		return p, domain.Invalid(domain.CodeInvalidPolicy, "durations are whole seconds between 0 and one year")
	}
	return p, p.Validate()
}

// set copies a field the patch names.
func set[T any](dst *T, v *T) {
	if v != nil {
		*dst = *v
	}
}

func (s strictServer) GetPolicy(ctx context.Context, _ api.GetPolicyRequestObject) (api.GetPolicyResponseObject, error) {
	c := ctx.(*gin.Context)
	p, err := s.a.cmd.TenantPolicy(c.Request.Context(), apiKey(c).TenantID)
	return api.GetPolicy200JSONResponse(ViewPolicy(p)), err
}

// PatchPolicy merges the named fields into the current policy. Concurrent
// patches of different fields can overwrite each other; an admin console sends
// the fields the person changed.
func (s strictServer) PatchPolicy(ctx context.Context, in api.PatchPolicyRequestObject) (api.PatchPolicyResponseObject, error) {
	c := ctx.(*gin.Context)
	actor, err := s.a.actor(c)
	if err != nil {
		return nil, err
	}
	patch := in.JSONBody
	if patch == nil {
		patch = in.ApplicationMergePatchPlusJSONBody
	}
	if patch == nil {
		return nil, bodyRequired()
	}
	reason := deref(patch.Reason)
	if err := checkReason(reason); err != nil {
		return nil, err
	}
	tenant, run := apiKey(c).TenantID, c.Request.Context()
	r := request{c: c, tenant: tenant, meta: s.a.meta(c, actor, reason)}
	current, err := s.a.cmd.TenantPolicy(run, tenant)
	var policy domain.Policy
	if err == nil {
		policy, err = applyPatch(*patch, current)
	}
	var out commands.Result
	if err == nil {
		out, err = s.a.cmd.ChangeTenantPolicy(run, r.meta, commands.ChangeTenantPolicy{TenantID: tenant, Policy: policy})
	}
	changed, err := s.changed(r, "ChangeTenantPolicy", false, err)
	return api.PatchPolicy200JSONResponse{Position: int(out.Position), Policy: ViewPolicy(policy), Changed: changed}, err
}
