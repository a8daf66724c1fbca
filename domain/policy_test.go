package domain

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultPolicy_IsProductsTableAndValid(t *testing.T) {
	p := DefaultPolicy()
	if err := p.Validate(); err != nil {
		t.Fatalf("default policy invalid: %v", err)
	}
	want := Policy{
		IssuerName: "twofactor", TOTPDigits: 6, TOTPPeriod: 30 * time.Second, TOTPAlgorithm: "SHA1", TOTPSkew: 1,
		EnrollmentTTL: 15 * time.Minute, BackupCodeCount: 10, LowBackupCodesWarn: 2, RecoveryCodeDisables: false,
		EmailOTPAllowed: true, SMSOTPAllowed: true, OTPLength: 6, OTPLifetime: 10 * time.Minute, OTPResendCooldown: 60 * time.Second,
		LockoutThreshold: 5, LockoutDuration: 15 * time.Minute, LockoutMaxDuration: 24 * time.Hour,
		DisableBy: DisableByAdminsAndTogglers, DefaultCanToggle: true, FreshVerificationWindow: 20 * time.Minute,
		WebAuthn: WebAuthnPolicy{UserVerification: UserVerificationPreferred, ChallengeTTL: 5 * time.Minute},
	}
	if !p.equal(want) {
		t.Fatalf("DefaultPolicy() = %+v\nwant %+v", p, want)
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(p *Policy)
		valid  bool
	}{
		{"backup_code_count 4", func(p *Policy) { p.BackupCodeCount = 4 }, false},
		{"backup_code_count 5", func(p *Policy) { p.BackupCodeCount = 5 }, true},
		{"backup_code_count 20", func(p *Policy) { p.BackupCodeCount = 20 }, true},
		{"backup_code_count 21", func(p *Policy) { p.BackupCodeCount = 21 }, false},
		{"low warning = count", func(p *Policy) { p.LowBackupCodesWarn = 10 }, false},
		{"low warning > count", func(p *Policy) { p.LowBackupCodesWarn = 11 }, false},
		{"low warning = count-1", func(p *Policy) { p.LowBackupCodesWarn = 9 }, true},
		{"low warning 0", func(p *Policy) { p.LowBackupCodesWarn = 0 }, true},
		{"low warning -1", func(p *Policy) { p.LowBackupCodesWarn = -1 }, false},
		{"low warning = a smaller count", func(p *Policy) { p.BackupCodeCount = 5; p.LowBackupCodesWarn = 5 }, false},
		{"lockout_threshold 0", func(p *Policy) { p.LockoutThreshold = 0 }, false},
		{"lockout_threshold 1", func(p *Policy) { p.LockoutThreshold = 1 }, true},
		{"lockout_threshold 100", func(p *Policy) { p.LockoutThreshold = 100 }, true},
		{"lockout_threshold 101", func(p *Policy) { p.LockoutThreshold = 101 }, false},
		{"otp_length 5", func(p *Policy) { p.OTPLength = 5 }, false},
		{"otp_length 10", func(p *Policy) { p.OTPLength = 10 }, true},
		{"otp_length 11", func(p *Policy) { p.OTPLength = 11 }, false},
		{"issuer empty", func(p *Policy) { p.IssuerName = "" }, false},
		{"issuer 101 bytes", func(p *Policy) { p.IssuerName = strings.Repeat("x", 101) }, false},
		{"totp_digits 8", func(p *Policy) { p.TOTPDigits = 8 }, true},
		{"totp_digits 7", func(p *Policy) { p.TOTPDigits = 7 }, false},
		{"totp_period 10s", func(p *Policy) { p.TOTPPeriod = 10 * time.Second }, false},
		{"totp_period 30.5s", func(p *Policy) { p.TOTPPeriod = 30*time.Second + 500*time.Millisecond }, false},
		{"totp_period 121s", func(p *Policy) { p.TOTPPeriod = 121 * time.Second }, false},
		{"totp_algorithm SHA256", func(p *Policy) { p.TOTPAlgorithm = "SHA256" }, true},
		{"totp_algorithm MD5", func(p *Policy) { p.TOTPAlgorithm = "MD5" }, false},
		{"totp_algorithm sha1", func(p *Policy) { p.TOTPAlgorithm = "sha1" }, false},
		{"totp_skew 3", func(p *Policy) { p.TOTPSkew = 3 }, false},
		{"totp_skew -1", func(p *Policy) { p.TOTPSkew = -1 }, false},
		{"enrollment_ttl 30s", func(p *Policy) { p.EnrollmentTTL = 30 * time.Second }, false},
		{"enrollment_ttl 25h", func(p *Policy) { p.EnrollmentTTL = 25 * time.Hour }, false},
		{"otp_lifetime 30s", func(p *Policy) { p.OTPLifetime = 30 * time.Second }, false},
		{"otp_lifetime 2h", func(p *Policy) { p.OTPLifetime = 2 * time.Hour }, false},
		{"resend cooldown above the lifetime", func(p *Policy) { p.OTPResendCooldown = 11 * time.Minute }, false},
		{"resend cooldown negative", func(p *Policy) { p.OTPResendCooldown = -time.Second }, false},
		{"resend cooldown 0", func(p *Policy) { p.OTPResendCooldown = 0 }, true},
		{"lockout_duration 30s", func(p *Policy) { p.LockoutDuration = 30 * time.Second }, false},
		{"lockout max below duration", func(p *Policy) { p.LockoutMaxDuration = 10 * time.Minute }, false},
		{"lockout max 8 days", func(p *Policy) { p.LockoutMaxDuration = 8 * 24 * time.Hour }, false},
		{"disable_by superadmins", func(p *Policy) { p.DisableBy = DisableBySuperAdmins }, true},
		{"disable_by anyone", func(p *Policy) { p.DisableBy = "anyone" }, false},
		{"disable_by empty", func(p *Policy) { p.DisableBy = "" }, false},
		{"fresh window 30s", func(p *Policy) { p.FreshVerificationWindow = 30 * time.Second }, false},
		{"fresh window 25h", func(p *Policy) { p.FreshVerificationWindow = 25 * time.Hour }, false},
		{"zero policy", func(p *Policy) { *p = Policy{} }, false},
		{"support contact 200 bytes", func(p *Policy) { p.SupportContact = strings.Repeat("s", 200) }, true},
		// The contract's maxLength counts characters, so the domain does too.
		{"support contact 200 two-byte characters", func(p *Policy) { p.SupportContact = strings.Repeat("é", 200) }, true},
		{"support contact 201 characters", func(p *Policy) { p.SupportContact = strings.Repeat("é", 201) }, false},
		{"issuer name 100 two-byte characters", func(p *Policy) { p.IssuerName = strings.Repeat("é", 100) }, true},
		{"support contact 201 bytes", func(p *Policy) { p.SupportContact = strings.Repeat("s", 201) }, false},
		{"mail_from an address", func(p *Policy) { p.MailFrom = "security@acme.example" }, true},
		{"mail_from without @", func(p *Policy) { p.MailFrom = "acme.example" }, false},
		{"mail_from with a display name", func(p *Policy) { p.MailFrom = "Acme <security@acme.example>" }, false},
		{"mail_from with two @", func(p *Policy) { p.MailFrom = "a@b@acme.example" }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := DefaultPolicy()
			tc.change(&p)
			err := p.Validate()
			if tc.valid {
				wantNoError(t, err)
				return
			}
			wantErr(t, err, KindInvalid, CodeInvalidPolicy)
		})
	}
}

func TestTenantPolicy_Create(t *testing.T) {
	for _, a := range []Actor{asSystem, asSuper} {
		tp := NewTenantPolicy(tenantID)
		if tp.Exists() || tp.TenantID() != tenantID {
			t.Fatal("a new tenant stream is empty")
		}

		events, err := tp.Create(a, "Acme Hosting", DefaultPolicy())

		wantNoError(t, err)
		wantTypes(t, events, "TenantCreated")
		if c := event[*TenantCreated](t, events, 0); c.Name != "Acme Hosting" || !c.Policy.equal(DefaultPolicy()) {
			t.Fatalf("created = %+v", c)
		}
		for _, e := range events {
			tp.Apply(e)
		}
		if !tp.Exists() || tp.Name() != "Acme Hosting" || !tp.Policy().equal(DefaultPolicy()) || tp.Version() != 1 {
			t.Fatalf("tenant = %+v", tp)
		}

		events, err = tp.Create(a, "Acme again", DefaultPolicy())
		refused(t, events, err, KindConflict, CodeTenantExists)
	}
}

func TestTenantPolicy_CreateRefusals(t *testing.T) {
	for _, a := range []Actor{asAdmin, asUser, asAuditor} {
		events, err := NewTenantPolicy(tenantID).Create(a, "Acme", DefaultPolicy())
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
	for _, name := range []string{"", strings.Repeat("n", 201)} {
		events, err := NewTenantPolicy(tenantID).Create(asSystem, name, DefaultPolicy())
		refused(t, events, err, KindInvalid, CodeInvalidArgument)
	}
	bad := DefaultPolicy()
	bad.LockoutThreshold = 101
	events, err := NewTenantPolicy(tenantID).Create(asSystem, "Acme", bad)
	refused(t, events, err, KindInvalid, CodeInvalidPolicy)
}

func existingTenant(t *testing.T) *TenantPolicy {
	t.Helper()
	tp := NewTenantPolicy(tenantID)
	tp.Apply(&TenantCreated{Name: "Acme", Policy: DefaultPolicy()})
	return tp
}

func TestTenantPolicy_ChangePolicy(t *testing.T) {
	for _, a := range []Actor{asAdmin, asSuper, asSystem} {
		tp := existingTenant(t)
		p := DefaultPolicy()
		p.BackupCodeCount = 12
		p.RecoveryCodeDisables = true

		events, err := tp.ChangePolicy(a, p)

		wantNoError(t, err)
		wantTypes(t, events, "TenantPolicyChanged")
		if c := event[*TenantPolicyChanged](t, events, 0); !c.Policy.equal(p) || !c.Previous.equal(DefaultPolicy()) {
			t.Fatalf("changed = %+v", c)
		}
		tp.Apply(events[0])
		if !tp.Policy().equal(p) || tp.Version() != 2 {
			t.Fatalf("policy = %+v v%d", tp.Policy(), tp.Version())
		}
		events, err = tp.ChangePolicy(a, p)
		refused(t, events, err, KindPrecondition, CodeNothingToChange)
	}
}

func TestTenantPolicy_OnlyASuperAdminChangesWhoMayDisable(t *testing.T) {
	for _, from := range []DisablePermission{DisableByAdminsAndTogglers, DisableBySuperAdmins} {
		tp := NewTenantPolicy(tenantID)
		start := DefaultPolicy()
		start.DisableBy = from
		tp.Apply(&TenantCreated{Name: "Acme", Policy: start})
		p := start
		if from == DisableBySuperAdmins {
			p.DisableBy = DisableByAdminsAndTogglers
		} else {
			p.DisableBy = DisableBySuperAdmins
		}

		events, err := tp.ChangePolicy(asAdmin, p)
		refused(t, events, err, KindForbidden, CodeNotAllowed)

		events, err = tp.ChangePolicy(asSuper, p)
		wantNoError(t, err)
		wantTypes(t, events, "TenantPolicyChanged")
	}
}

func TestTenantPolicy_ChangePolicyRefusals(t *testing.T) {
	for _, a := range []Actor{asUser, asAuditor} {
		events, err := existingTenant(t).ChangePolicy(a, DefaultPolicy())
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
	events, err := NewTenantPolicy(tenantID).ChangePolicy(asAdmin, DefaultPolicy())
	refused(t, events, err, KindNotFound, CodeTenantNotFound)

	for name, change := range map[string]func(p *Policy){
		"backup_code_count 4":        func(p *Policy) { p.BackupCodeCount = 4 },
		"backup_code_count 21":       func(p *Policy) { p.BackupCodeCount = 21 },
		"low warning >= count":       func(p *Policy) { p.LowBackupCodesWarn = p.BackupCodeCount },
		"lockout_threshold 0":        func(p *Policy) { p.LockoutThreshold = 0 },
		"lockout_threshold 101":      func(p *Policy) { p.LockoutThreshold = 101 },
		"otp_length 5":               func(p *Policy) { p.OTPLength = 5 },
		"invalid and DisableBy, too": func(p *Policy) { p.OTPLength = 5; p.DisableBy = DisableBySuperAdmins },
	} {
		t.Run(name, func(t *testing.T) {
			p := DefaultPolicy()
			change(&p)
			for _, a := range []Actor{asAdmin, asSuper} {
				events, err := existingTenant(t).ChangePolicy(a, p)
				refused(t, events, err, KindInvalid, CodeInvalidPolicy)
			}
		})
	}
}

func TestPolicy_MethodAllowed(t *testing.T) {
	p := DefaultPolicy()
	p.EmailOTPAllowed, p.SMSOTPAllowed = false, true
	for m, want := range map[Method]bool{MethodTOTP: true, MethodBackup: true, MethodEmail: false, MethodSMS: true} {
		if got := p.methodAllowed(m); got != want {
			t.Errorf("methodAllowed(%s) = %v, want %v", m, got, want)
		}
	}
}
