package domain

import (
	"testing"
	"time"
)

// sensitive are a user's own sensitive changes, on an account with the app and email.
var sensitive = []struct {
	name   string
	decide func(u *UserTwoFactor, env Env) ([]Event, error)
	want   string // event type on success
}{
	{"regenerate backup codes", func(u *UserTwoFactor, env Env) ([]Event, error) {
		return u.RegenerateBackupCodes(env, codeSet("new", 10))
	}, "BackupCodesRegenerated"},
	{"remove email", func(u *UserTwoFactor, env Env) ([]Event, error) { return u.RemoveMethod(env, MethodEmail) }, "MethodRemoved"},
	{"remove the app", func(u *UserTwoFactor, env Env) ([]Event, error) { return u.RemoveMethod(env, MethodTOTP) }, "MethodRemoved"},
	{"disable", func(u *UserTwoFactor, env Env) ([]Event, error) { return u.DisableTwoFactor(env) }, "TwoFactorDisabled"},
	{"replace the app", func(u *UserTwoFactor, env Env) ([]Event, error) {
		return u.StartTOTPEnrollment(env, totpParams(sealedSecret2))
	}, "TOTPEnrollmentStarted"},
	{"switch to email", func(u *UserTwoFactor, env Env) ([]Event, error) { return u.SwitchMethod(env, MethodEmail, "") }, "MethodSwitched"},
	{"add sms", func(u *UserTwoFactor, env Env) ([]Event, error) {
		return u.StartOTPMethodSetup(env, MethodSMS, sealedPhone, sealedCode)
	}, "OTPMethodSetupStarted"},
}

// appAndEmail: a user with the app (default) and email, who last logged in with
// the app at t0+1h.
func appAndEmail(t *testing.T) *story {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).wait(time.Hour)
	s.must(s.u.VerifyTOTP(s.user(), []int64{1120}))
	return s
}

func TestFreshVerification_WithinTheWindow(t *testing.T) {
	for _, after := range []time.Duration{0, time.Minute, 20 * time.Minute} {
		for _, a := range sensitive {
			t.Run(a.name, func(t *testing.T) {
				s := appAndEmail(t).wait(after)
				events, err := a.decide(s.u, s.user())
				wantNoError(t, err)
				wantTypes(t, events, a.want)
			})
		}
	}
}

func TestFreshVerification_TooOld(t *testing.T) {
	for _, after := range []time.Duration{20*time.Minute + time.Second, 21 * time.Minute, 48 * time.Hour} {
		for _, a := range sensitive {
			t.Run(a.name, func(t *testing.T) {
				s := appAndEmail(t).wait(after)
				events, err := a.decide(s.u, s.user())
				refused(t, events, err, KindPrecondition, CodeFreshVerification)
			})
		}
	}
}

func TestFreshVerification_WindowFollowsThePolicy(t *testing.T) {
	s := appAndEmail(t).withPolicy(func(p *Policy) { p.FreshVerificationWindow = 5 * time.Minute }).wait(6 * time.Minute)
	events, err := s.u.RegenerateBackupCodes(s.user(), codeSet("new", 10))
	refused(t, events, err, KindPrecondition, CodeFreshVerification)
}

func TestFreshVerification_AFailedCheckIsNotAVerification(t *testing.T) {
	s := appAndEmail(t).wait(21 * time.Minute)
	events, _ := s.u.VerifyTOTP(s.user(), nil)
	s.record(events)
	events, err := s.u.RegenerateBackupCodes(s.user(), codeSet("new", 10))
	refused(t, events, err, KindPrecondition, CodeFreshVerification)
}

func TestFreshVerification_AnEmailCodeAloneNeverTouchesTheApp(t *testing.T) {
	for _, a := range sensitive {
		t.Run(a.name, func(t *testing.T) {
			s := appAndEmail(t).wait(time.Hour)
			s.must(s.u.IssueChallenge(s.user(), MethodEmail, sealedCode))
			s.must(s.u.VerifyOTP(s.user(), MethodEmail, true))
			s.wait(time.Minute)

			events, err := a.decide(s.u, s.user())

			refused(t, events, err, KindForbidden, CodeStrongerMethod)
		})
	}
}

func TestFreshVerification_AnSMSCodeIsWeakerThanTheApp(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), otpEnabled(MethodSMS, sealedPhone)[:2])...).wait(time.Hour)
	s.must(s.u.IssueChallenge(s.user(), MethodSMS, sealedCode))
	s.must(s.u.VerifyOTP(s.user(), MethodSMS, true))

	events, err := s.u.RemoveMethod(s.user(), MethodTOTP)
	refused(t, events, err, KindForbidden, CodeStrongerMethod)
}

func TestFreshVerification_AnSMSCodeMayRemoveEmail(t *testing.T) {
	s := given(t, concat(otpEnabled(MethodSMS, sealedPhone), emailAdded())...).wait(time.Hour)
	s.must(s.u.IssueChallenge(s.user(), MethodSMS, sealedCode))
	s.must(s.u.VerifyOTP(s.user(), MethodSMS, true))

	events, err := s.u.RemoveMethod(s.user(), MethodEmail)
	wantNoError(t, err)
	wantTypes(t, events, "MethodRemoved")
}

func TestFreshVerification_ABackupCodeAuthorisesReplacingTheApp(t *testing.T) {
	// The phone is lost: the user logs in with a backup code, then sets up a new app.
	s := given(t, concat(totpEnabled(1000), emailAdded())...).wait(3 * time.Hour)
	s.must(s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0]))
	s.wait(time.Minute)

	events, err := s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret2))

	wantNoError(t, err)
	if st := event[*TOTPEnrollmentStarted](t, events, 0); !st.Replacement {
		t.Fatalf("started = %+v, want a replacement", st)
	}
	s.record(events)
	events, err = s.u.ConfirmTOTPEnrollment(s.user(), []int64{1500}, codeSet("new", 10))
	wantNoError(t, err)
	wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated")
}

func TestFreshVerification_AnEmailOnlyUserUsesEmail(t *testing.T) {
	for _, decide := range []func(u *UserTwoFactor, env Env) ([]Event, error){
		func(u *UserTwoFactor, env Env) ([]Event, error) {
			return u.RegenerateBackupCodes(env, codeSet("new", 10))
		},
		func(u *UserTwoFactor, env Env) ([]Event, error) { return u.DisableTwoFactor(env) },
	} {
		s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(time.Hour)
		s.must(s.u.IssueChallenge(s.user(), MethodEmail, sealedCode))
		s.must(s.u.VerifyOTP(s.user(), MethodEmail, true))
		events, err := decide(s.u, s.user())
		wantNoError(t, err)
		if len(events) != 1 {
			t.Fatalf("events = %v", typesOf(events))
		}
	}
}

func TestFreshVerification_AdminsActingOnAnotherUserAreExempt(t *testing.T) {
	for _, a := range []Actor{asAdmin, asSuper} {
		for _, tc := range []struct {
			name   string
			decide func(u *UserTwoFactor, env Env) ([]Event, error)
			want   string
		}{
			{"remove the app", func(u *UserTwoFactor, env Env) ([]Event, error) { return u.RemoveMethod(env, MethodTOTP) }, "MethodRemoved"},
			{"disable", func(u *UserTwoFactor, env Env) ([]Event, error) { return u.DisableTwoFactor(env) }, "TwoFactorDisabled"},
			{"switch to email", func(u *UserTwoFactor, env Env) ([]Event, error) { return u.SwitchMethod(env, MethodEmail, "") }, "MethodSwitched"},
		} {
			t.Run(string(a.Kind)+"/"+tc.name, func(t *testing.T) {
				s := given(t, concat(totpEnabled(1000), emailAdded())...).wait(72 * time.Hour)
				events, err := tc.decide(s.u, s.env(a))
				wantNoError(t, err)
				wantTypes(t, events, tc.want)
			})
		}
	}
}

func TestFreshVerification_AnAdminOnTheirOwnAccountIsNotExempt(t *testing.T) {
	for _, a := range []Actor{asSelfAdmin, asSelfSuper} {
		s := given(t, concat(totpEnabled(1000), emailAdded())...).wait(72 * time.Hour)
		events, err := s.u.DisableTwoFactor(s.env(a))
		refused(t, events, err, KindPrecondition, CodeFreshVerification)
		events, err = s.u.RemoveMethod(s.env(a), MethodTOTP)
		refused(t, events, err, KindPrecondition, CodeFreshVerification)
	}
}

// A later email check must not hide a recent check with the app.
func TestFreshVerification_ALaterWeakCheckDoesNotHideARecentStrongOne(t *testing.T) {
	s := appAndEmail(t).wait(5 * time.Minute)
	s.must(s.u.IssueChallenge(s.user(), MethodEmail, sealedCode))
	s.must(s.u.VerifyOTP(s.user(), MethodEmail, true))

	events, err := s.u.RemoveMethod(s.user(), MethodTOTP)
	wantNoError(t, err)
	wantTypes(t, events, "MethodRemoved")

	// once the app check is older than the window, the email check alone is not enough
	s.wait(16 * time.Minute)
	events, err = s.u.RegenerateBackupCodes(s.user(), codeSet("new", 10))
	refused(t, events, err, KindForbidden, CodeStrongerMethod)
}
