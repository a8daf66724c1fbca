package commands_test

import (
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
)

func TestEmailOTPJourney(t *testing.T) {
	f := newFixture(t, nil)
	u := "erin"
	if _, err := f.Svc.StartOTPMethodSetup(ctx, as(u), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Destination: "Erin <erin@example.com>"}); err == nil {
		t.Fatal("a display-name address was accepted")
	}
	if _, err := f.Svc.StartOTPMethodSetup(ctx, as(u), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Destination: "erin@example.com"}); err != nil {
		t.Fatal(err)
	}
	if s := f.Status(u); s.Status != domain.StatusPending || s.Enabled {
		t.Fatalf("after set-up start: %+v", s)
	}
	_, err := f.Svc.StartOTPMethodSetup(ctx, as(u), commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Destination: "erin@example.com"})
	wantErr(t, err, domain.KindConflict, domain.CodeResendTooSoon)

	act, err := f.Svc.ConfirmOTPMethod(ctx, as(u), commands.ConfirmOTPMethod{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: f.SentCode(u)})
	if err != nil {
		t.Fatal(err)
	}
	if len(act.BackupCodes) != 10 {
		t.Fatalf("%d backup codes", len(act.BackupCodes))
	}
	f.Clock.Advance(time.Hour)

	ch, err := f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u})
	if err != nil {
		t.Fatal(err)
	}
	if ch.CodeSentBy != domain.MethodEmail || ch.DefaultMethod != domain.MethodEmail || !ch.CodeExpiresAt.Equal(f.Clock.Now().Add(10*time.Minute)) {
		t.Fatalf("challenge = %+v", ch)
	}
	code := f.SentCode(u)
	if _, err := f.Svc.VerifyOTP(ctx, as(u), commands.VerifyOTP{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: code}); err != nil {
		t.Fatal(err)
	}
	_, err = f.Svc.VerifyOTP(ctx, as(u), commands.VerifyOTP{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: code})
	wantErr(t, err, domain.KindPrecondition, domain.CodeNoPendingCode)

	// A code expires after its lifetime.
	f.Clock.Advance(2 * time.Minute)
	if _, err := f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u}); err != nil {
		t.Fatal(err)
	}
	code = f.SentCode(u)
	f.Clock.Advance(11 * time.Minute)
	_, err = f.Svc.VerifyOTP(ctx, as(u), commands.VerifyOTP{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: code})
	wantErr(t, err, domain.KindPrecondition, domain.CodeCodeExpired)
}

func TestEmailCodeAloneCannotReplaceTheAuthenticator(t *testing.T) {
	f := newFixture(t, nil)
	u := "tess"
	secret, codes := f.EnrolTOTP(u)
	f.Clock.Advance(time.Hour)
	addEmail := commands.StartOTPMethodSetup{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Destination: "tess@example.com"}
	_, err := f.Svc.StartOTPMethodSetup(ctx, as(u), addEmail)
	wantErr(t, err, domain.KindPrecondition, domain.CodeFreshVerification)

	if _, err := f.Svc.VerifyTOTP(ctx, as(u), commands.VerifyTOTP{TenantID: f.Tenant, UserID: u, Code: f.CodeAt(secret, 0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.StartOTPMethodSetup(ctx, as(u), addEmail); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.ConfirmOTPMethod(ctx, as(u), commands.ConfirmOTPMethod{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: f.SentCode(u)}); err != nil {
		t.Fatal(err)
	}

	// Later she logs in with an emailed code only.
	f.Clock.Advance(time.Hour)
	if _, err := f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.VerifyOTP(ctx, as(u), commands.VerifyOTP{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: f.SentCode(u)}); err != nil {
		t.Fatal(err)
	}
	_, err = f.Svc.StartTOTPEnrollment(ctx, as(u), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: u})
	wantErr(t, err, domain.KindForbidden, domain.CodeStrongerMethod)
	_, err = f.Svc.RemoveMethod(ctx, as(u), commands.RemoveMethod{TenantID: f.Tenant, UserID: u, Method: domain.MethodTOTP})
	wantErr(t, err, domain.KindForbidden, domain.CodeStrongerMethod)
	_, err = f.Svc.DisableTwoFactor(ctx, as(u), commands.DisableTwoFactor{TenantID: f.Tenant, UserID: u})
	wantErr(t, err, domain.KindForbidden, domain.CodeStrongerMethod)

	// A backup code (phone lost) does authorise a new authenticator, with new codes.
	if _, err := f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: codes[0]}); err != nil {
		t.Fatal(err)
	}
	newSecret, newCodes := f.EnrolTOTP(u)
	if newSecret == secret || len(newCodes) != 10 {
		t.Fatal("replacing the authenticator did not issue a new secret and codes")
	}
	_, err = f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: codes[1]})
	wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode)
	f.Clock.Advance(time.Minute)
	_, err = f.Svc.VerifyTOTP(ctx, as(u), commands.VerifyTOTP{TenantID: f.Tenant, UserID: u, Code: f.CodeAt(secret, 0)})
	wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode)
}

func TestLockoutEscalatesAndAdminUnlocks(t *testing.T) {
	f := newFixture(t, nil)
	u := "lou"
	secret, codes := f.EnrolTOTP(u)
	f.Clock.Advance(time.Minute)
	wrong := f.WrongCode(secret)
	for i := 4; i >= 1; i-- {
		_, err := f.Svc.VerifyTOTP(ctx, as(u), commands.VerifyTOTP{TenantID: f.Tenant, UserID: u, Code: wrong})
		if de := wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode); de.AttemptsRemaining != i {
			t.Fatalf("attempts remaining = %d, want %d", de.AttemptsRemaining, i)
		}
	}
	_, err := f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: "zzzzz-zzzzz"})
	de := wantErr(t, err, domain.KindLocked, domain.CodeLocked)
	if de.RetryAfterSeconds != 15*60 {
		t.Errorf("retry after %d s, want 900", de.RetryAfterSeconds)
	}
	_, err = f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: codes[0]})
	wantErr(t, err, domain.KindLocked, domain.CodeLocked)

	if _, err := f.Svc.UnlockTwoFactor(ctx, as(u), commands.UnlockTwoFactor{TenantID: f.Tenant, UserID: u}); err == nil {
		t.Fatal("a user unlocked themself")
	}
	if _, err := f.Svc.UnlockTwoFactor(ctx, admin, commands.UnlockTwoFactor{TenantID: f.Tenant, UserID: u}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: codes[0]}); err != nil {
		t.Fatalf("backup code after unlock: %v", err)
	}
}

func TestAdminLifecycle(t *testing.T) {
	f := newFixture(t, nil)
	u := "ada"
	f.EnrolTOTP(u)

	// Admin switches her to email: the app is no longer needed.
	if _, err := f.Svc.SwitchMethod(ctx, admin, commands.SwitchMethod{TenantID: f.Tenant, UserID: u, To: domain.MethodEmail, Destination: "ada@example.com"}); err != nil {
		t.Fatal(err)
	}
	s := f.Status(u)
	if len(s.Methods) != 1 || s.Methods[0] != domain.MethodEmail || s.DefaultMethod != domain.MethodEmail {
		t.Fatalf("after switch to email: %+v", s)
	}
	// And back to the app: set up at next login, email works until then.
	if _, err := f.Svc.SwitchMethod(ctx, admin, commands.SwitchMethod{TenantID: f.Tenant, UserID: u, To: domain.MethodTOTP}); err != nil {
		t.Fatal(err)
	}
	if s := f.Status(u); s.Status != domain.StatusSetupAppAtNextLogin {
		t.Fatalf("status = %s", s.Status)
	}
	f.Clock.Advance(time.Hour)
	// The next login sets the app up; email, which the tenant allows, verifies it first.
	ch, err := f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u})
	if err != nil {
		t.Fatal(err)
	}
	if !ch.EnrollmentRequired || !ch.SetupAppAtNextLogin || !ch.Enabled || ch.CodeSentBy != domain.MethodEmail {
		t.Fatalf("challenge after the switch to the app: %+v (code sent by %q)", ch.LoginOptions, ch.CodeSentBy)
	}
	if _, err := f.Svc.VerifyOTP(ctx, as(u), commands.VerifyOTP{TenantID: f.Tenant, UserID: u, Method: domain.MethodEmail, Code: f.SentCode(u)}); err != nil {
		t.Fatal(err)
	}
	_, codes := f.EnrolTOTP(u)
	if len(codes) != 10 {
		t.Fatalf("switching to the app issued %d new backup codes, want 10", len(codes))
	}
	if s := f.Status(u); len(s.Methods) != 1 || s.Methods[0] != domain.MethodTOTP || s.Status != domain.StatusActivated {
		t.Fatalf("after setting up the app: %+v", s)
	}

	// Reset: wiped, must enrol at next login.
	if _, err := f.Svc.ResetTwoFactor(ctx, admin, commands.ResetTwoFactor{TenantID: f.Tenant, UserID: u}); err != nil {
		t.Fatal(err)
	}
	ch, err = f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u})
	if err != nil {
		t.Fatal(err)
	}
	if !ch.EnrollmentRequired || ch.Enabled {
		t.Fatalf("after reset: %+v", ch.LoginOptions)
	}
	_, err = f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: codes[0]})
	wantErr(t, err, domain.KindPrecondition, domain.CodeNotEnrolled)

	// Auditors never change anything.
	auditor := commands.Meta{Actor: domain.Actor{Kind: domain.ActorAuditor, ID: "aud"}}
	_, err = f.Svc.RequireTwoFactor(ctx, auditor, commands.RequireTwoFactor{TenantID: f.Tenant, UserID: u, Required: true})
	wantErr(t, err, domain.KindForbidden, domain.CodeNotAllowed)
}

// A tenant without email codes: the login after a switch from email to the app
// sends no code, and is verified by a backup code before the app is set up.
func TestSwitchToTheAppWhereEmailCodesAreOff(t *testing.T) {
	f := newFixture(t, nil)
	u := "eve"
	_, codes := f.EnrolTOTP(u)
	if _, err := f.Svc.SwitchMethod(ctx, admin, commands.SwitchMethod{TenantID: f.Tenant, UserID: u, To: domain.MethodEmail, Destination: "eve@example.com"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Svc.SwitchMethod(ctx, admin, commands.SwitchMethod{TenantID: f.Tenant, UserID: u, To: domain.MethodTOTP}); err != nil {
		t.Fatal(err)
	}
	p := domain.DefaultPolicy()
	p.EmailOTPAllowed = false
	if _, err := f.Svc.ChangeTenantPolicy(ctx, admin, commands.ChangeTenantPolicy{TenantID: f.Tenant, Policy: p}); err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(time.Hour)
	ch, err := f.Svc.StartLoginChallenge(ctx, as(u), commands.StartLoginChallenge{TenantID: f.Tenant, UserID: u})
	if err != nil {
		t.Fatal(err)
	}
	if !ch.EnrollmentRequired || !ch.SetupAppAtNextLogin || !ch.Enabled || len(ch.Methods) != 0 || ch.CodeSentBy != "" {
		t.Fatalf("challenge: %+v (code sent by %q), want the app set up and no email code", ch.LoginOptions, ch.CodeSentBy)
	}
	if n := f.CountEvents(u, "OTPChallengeIssued"); n != 0 {
		t.Fatalf("%d email codes issued", n)
	}
	_, err = f.Svc.StartTOTPEnrollment(ctx, as(u), commands.StartTOTPEnrollment{TenantID: f.Tenant, UserID: u})
	wantErr(t, err, domain.KindPrecondition, domain.CodeFreshVerification)
	if _, err := f.Svc.ConsumeBackupCode(ctx, as(u), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: u, Code: codes[0]}); err != nil {
		t.Fatal(err)
	}
	f.EnrolTOTP(u)
	if s := f.Status(u); s.Status != domain.StatusActivated || len(s.Methods) != 1 || s.Methods[0] != domain.MethodTOTP {
		t.Fatalf("after setting up the app: %+v", s)
	}
}

func TestUserWithoutTogglePermissionCannotDisable(t *testing.T) {
	f := newFixture(t, nil)
	u := "nia"
	f.EnrolTOTP(u)
	if _, err := f.Svc.SetTogglePermission(ctx, admin, commands.SetTogglePermission{TenantID: f.Tenant, UserID: u, CanToggle: false}); err != nil {
		t.Fatal(err)
	}
	before := len(f.Records(u))
	_, err := f.Svc.DisableTwoFactor(ctx, as(u), commands.DisableTwoFactor{TenantID: f.Tenant, UserID: u})
	wantErr(t, err, domain.KindForbidden, domain.CodeNotAllowed)
	if len(f.Records(u)) != before {
		t.Fatal("a refused command appended events")
	}
	if _, err := f.Svc.DisableTwoFactor(ctx, admin, commands.DisableTwoFactor{TenantID: f.Tenant, UserID: u}); err != nil {
		t.Fatal(err)
	}
	if s := f.Status(u); s.Status != domain.StatusDisabled || s.BackupCodesRemaining != 0 {
		t.Fatalf("after disable: %+v", s)
	}
}

func TestRecoveryCodeDisablesWhenPolicySaysSo(t *testing.T) {
	p := domain.DefaultPolicy()
	p.RecoveryCodeDisables = true
	f := newFixture(t, &p)
	_, codes := f.EnrolTOTP("rex")
	v, err := f.Svc.ConsumeBackupCode(ctx, as("rex"), commands.ConsumeBackupCode{TenantID: f.Tenant, UserID: "rex", Code: codes[3]})
	if err != nil {
		t.Fatal(err)
	}
	if !v.TwoFactorDisabled {
		t.Fatal("the recovery code did not switch 2FA off")
	}
	if s := f.Status("rex"); s.Enabled || s.BackupCodesRemaining != 0 {
		t.Fatalf("after recovery: %+v", s)
	}
}

func TestUnknownTenantAndOtherTenantsUsers(t *testing.T) {
	f := newFixture(t, nil)
	f.EnrolTOTP("vic")
	_, err := f.Svc.VerifyTOTP(ctx, as("vic"), commands.VerifyTOTP{TenantID: "no-such-tenant", UserID: "vic", Code: "123456"})
	wantErr(t, err, domain.KindNotFound, domain.CodeTenantNotFound)
	other := newFixture(t, nil)
	// The same user id in another tenant is another, empty, subject.
	if s := other.Status("vic"); s.Enabled || s.Version != 0 {
		t.Fatalf("tenant isolation broken: %+v", s)
	}
}
