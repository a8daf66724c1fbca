package handlers

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
)

// PolicyView is a tenant policy as the API shows it: durations in whole seconds.
type PolicyView struct {
	IssuerName                     string `json:"issuer_name"`
	SupportContact                 string `json:"support_contact"`
	MailFrom                       string `json:"mail_from"`
	TOTPDigits                     int    `json:"totp_digits"`
	TOTPPeriodSeconds              int64  `json:"totp_period_seconds"`
	TOTPAlgorithm                  string `json:"totp_algorithm"`
	TOTPSkew                       int    `json:"totp_skew"`
	EnrollmentTTLSeconds           int64  `json:"enrollment_ttl_seconds"`
	BackupCodeCount                int    `json:"backup_code_count"`
	LowBackupCodesWarning          int    `json:"low_backup_codes_warning"`
	RecoveryCodeDisables           bool   `json:"recovery_code_disables"`
	EmailOTPAllowed                bool   `json:"email_otp_allowed"`
	SMSOTPAllowed                  bool   `json:"sms_otp_allowed"`
	OTPLength                      int    `json:"otp_length"`
	OTPLifetimeSeconds             int64  `json:"otp_lifetime_seconds"`
	OTPResendCooldownSeconds       int64  `json:"otp_resend_cooldown_seconds"`
	LockoutThreshold               int    `json:"lockout_threshold"`
	LockoutDurationSeconds         int64  `json:"lockout_duration_seconds"`
	LockoutMaxDurationSeconds      int64  `json:"lockout_max_duration_seconds"`
	DisableBy                      string `json:"disable_by"`
	DefaultCanToggle               bool   `json:"default_can_toggle"`
	FreshVerificationWindowSeconds int64  `json:"fresh_verification_window_seconds"`
}

func secs(d time.Duration) int64 { return int64(d / time.Second) }

// ViewPolicy converts a domain policy.
func ViewPolicy(p domain.Policy) PolicyView {
	return PolicyView{
		IssuerName: p.IssuerName, SupportContact: p.SupportContact, MailFrom: p.MailFrom,
		TOTPDigits: p.TOTPDigits, TOTPPeriodSeconds: secs(p.TOTPPeriod), TOTPAlgorithm: p.TOTPAlgorithm,
		TOTPSkew: p.TOTPSkew, EnrollmentTTLSeconds: secs(p.EnrollmentTTL), BackupCodeCount: p.BackupCodeCount,
		LowBackupCodesWarning: p.LowBackupCodesWarn, RecoveryCodeDisables: p.RecoveryCodeDisables,
		EmailOTPAllowed: p.EmailOTPAllowed, SMSOTPAllowed: p.SMSOTPAllowed, OTPLength: p.OTPLength,
		OTPLifetimeSeconds: secs(p.OTPLifetime), OTPResendCooldownSeconds: secs(p.OTPResendCooldown),
		LockoutThreshold: p.LockoutThreshold, LockoutDurationSeconds: secs(p.LockoutDuration),
		LockoutMaxDurationSeconds: secs(p.LockoutMaxDuration), DisableBy: string(p.DisableBy),
		DefaultCanToggle: p.DefaultCanToggle, FreshVerificationWindowSeconds: secs(p.FreshVerificationWindow),
	}
}

// PolicyPatch changes the fields it names and keeps the others.
type PolicyPatch struct {
	IssuerName                     *string `json:"issuer_name"`
	SupportContact                 *string `json:"support_contact"`
	MailFrom                       *string `json:"mail_from"`
	TOTPDigits                     *int    `json:"totp_digits"`
	TOTPPeriodSeconds              *int64  `json:"totp_period_seconds"`
	TOTPAlgorithm                  *string `json:"totp_algorithm"`
	TOTPSkew                       *int    `json:"totp_skew"`
	EnrollmentTTLSeconds           *int64  `json:"enrollment_ttl_seconds"`
	BackupCodeCount                *int    `json:"backup_code_count"`
	LowBackupCodesWarning          *int    `json:"low_backup_codes_warning"`
	RecoveryCodeDisables           *bool   `json:"recovery_code_disables"`
	EmailOTPAllowed                *bool   `json:"email_otp_allowed"`
	SMSOTPAllowed                  *bool   `json:"sms_otp_allowed"`
	OTPLength                      *int    `json:"otp_length"`
	OTPLifetimeSeconds             *int64  `json:"otp_lifetime_seconds"`
	OTPResendCooldownSeconds       *int64  `json:"otp_resend_cooldown_seconds"`
	LockoutThreshold               *int    `json:"lockout_threshold"`
	LockoutDurationSeconds         *int64  `json:"lockout_duration_seconds"`
	LockoutMaxDurationSeconds      *int64  `json:"lockout_max_duration_seconds"`
	DisableBy                      *string `json:"disable_by"`
	DefaultCanToggle               *bool   `json:"default_can_toggle"`
	FreshVerificationWindowSeconds *int64  `json:"fresh_verification_window_seconds"`
}

// maxPolicySeconds keeps a huge number from overflowing a Duration before Validate sees it.
const maxPolicySeconds = 365 * 24 * 3600

// Apply returns p with the patch's fields; the domain validates the result.
func (pp PolicyPatch) Apply(p domain.Policy) (domain.Policy, error) {
	str := func(dst *string, v *string) {
		if v != nil {
			*dst = *v
		}
	}
	num := func(dst *int, v *int) {
		if v != nil {
			*dst = *v
		}
	}
	flag := func(dst *bool, v *bool) {
		if v != nil {
			*dst = *v
		}
	}
	var bad bool
	dur := func(dst *time.Duration, v *int64) {
		if v != nil {
			if *v < 0 || *v > maxPolicySeconds {
				bad = true
				return
			}
			*dst = time.Duration(*v) * time.Second
		}
	}
	str(&p.IssuerName, pp.IssuerName)
	str(&p.SupportContact, pp.SupportContact)
	str(&p.MailFrom, pp.MailFrom)
	num(&p.TOTPDigits, pp.TOTPDigits)
	dur(&p.TOTPPeriod, pp.TOTPPeriodSeconds)
	str(&p.TOTPAlgorithm, pp.TOTPAlgorithm)
	num(&p.TOTPSkew, pp.TOTPSkew)
	dur(&p.EnrollmentTTL, pp.EnrollmentTTLSeconds)
	num(&p.BackupCodeCount, pp.BackupCodeCount)
	num(&p.LowBackupCodesWarn, pp.LowBackupCodesWarning)
	flag(&p.RecoveryCodeDisables, pp.RecoveryCodeDisables)
	flag(&p.EmailOTPAllowed, pp.EmailOTPAllowed)
	flag(&p.SMSOTPAllowed, pp.SMSOTPAllowed)
	num(&p.OTPLength, pp.OTPLength)
	dur(&p.OTPLifetime, pp.OTPLifetimeSeconds)
	dur(&p.OTPResendCooldown, pp.OTPResendCooldownSeconds)
	num(&p.LockoutThreshold, pp.LockoutThreshold)
	dur(&p.LockoutDuration, pp.LockoutDurationSeconds)
	dur(&p.LockoutMaxDuration, pp.LockoutMaxDurationSeconds)
	if pp.DisableBy != nil {
		p.DisableBy = domain.DisablePermission(*pp.DisableBy)
	}
	flag(&p.DefaultCanToggle, pp.DefaultCanToggle)
	dur(&p.FreshVerificationWindow, pp.FreshVerificationWindowSeconds)
	if bad {
		return p, domain.Invalid(domain.CodeInvalidPolicy, "durations are whole seconds between 0 and one year")
	}
	return p, p.Validate()
}

type policyResponse struct {
	written
	Policy  PolicyView `json:"policy"`
	Changed bool       `json:"changed"`
}

func (a *API) getPolicy(c *gin.Context) {
	if err := onlyQuery(c); err != nil {
		a.fail(c, err)
		return
	}
	p, err := a.cmd.TenantPolicy(c.Request.Context(), apiKey(c).TenantID)
	if err != nil {
		a.fail(c, err)
		return
	}
	writeJSON(c, http.StatusOK, ViewPolicy(p))
}

// patchPolicy merges the named fields into the current policy. Concurrent
// patches of different fields can overwrite each other; an admin console sends
// the fields the person changed.
func (a *API) patchPolicy(c *gin.Context) {
	actor, err := a.actor(c)
	if err != nil {
		a.fail(c, err)
		return
	}
	var req struct {
		PolicyPatch
		Reason string `json:"reason"`
	}
	if err := bind(c, &req, false); err != nil {
		a.fail(c, err)
		return
	}
	if err := checkReason(req.Reason); err != nil {
		a.fail(c, err)
		return
	}
	tenant := apiKey(c).TenantID
	meta := a.meta(c, actor, req.Reason)
	var policy domain.Policy
	out, changed, ok := a.changeCommand(c, "ChangeTenantPolicy", false, func(ctx context.Context) (commands.Result, error) {
		current, err := a.cmd.TenantPolicy(ctx, tenant)
		if err != nil {
			return commands.Result{}, err
		}
		if policy, err = req.Apply(current); err != nil {
			return commands.Result{}, err
		}
		return a.cmd.ChangeTenantPolicy(ctx, meta, commands.ChangeTenantPolicy{TenantID: tenant, Policy: policy})
	})
	if !ok {
		return
	}
	writeJSON(c, http.StatusOK, policyResponse{written: written{out.Position}, Policy: ViewPolicy(policy), Changed: changed})
}
