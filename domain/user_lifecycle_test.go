package domain

import (
	"reflect"
	"testing"
	"time"
)

func TestSwitchMethod_AppToEmail(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(2 * time.Hour)

	events, err := s.u.SwitchMethod(s.admin(), MethodEmail, sealedEmail)

	wantNoError(t, err)
	wantTypes(t, events, "MethodSwitched")
	want := &MethodSwitched{From: MethodTOTP, To: MethodEmail, SealedDestination: sealedEmail, RemovedMethods: []Method{MethodTOTP}}
	if got := event[*MethodSwitched](t, events, 0); !reflect.DeepEqual(got, want) {
		t.Fatalf("switched = %+v, want %+v", got, want)
	}
	s.record(events)

	snap := s.snap()
	wantMethods(t, snap.Methods, MethodEmail)
	if snap.DefaultMethod != MethodEmail || snap.Status != StatusActivated || !snap.Enabled || snap.SetupAppAtNextLogin {
		t.Fatalf("snapshot = %+v", snap)
	}
	// the backup codes stay valid
	if snap.BackupCodesRemaining != 10 {
		t.Fatalf("backup codes = %d, want 10", snap.BackupCodesRemaining)
	}
	if d, _ := s.u.SealedDestination(MethodEmail); d != sealedEmail {
		t.Fatalf("destination = %q", d)
	}
	if _, ok := s.u.ActiveTOTP(); ok {
		t.Fatal("the app is no longer needed")
	}
	events, err = s.u.VerifyTOTP(s.user(), []int64{5000})
	refused(t, events, err, KindPrecondition, CodeMethodNotEnrolled)

	s.must(s.u.IssueChallenge(s.user(), MethodEmail, sealedCode))
	s.must(s.u.VerifyOTP(s.user(), MethodEmail, true))
}

func TestSwitchMethod_ToEmailKeepsARegisteredAddress(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...)
	s.must(s.u.SwitchMethod(s.admin(), MethodEmail, ""))
	if d, ok := s.u.SealedDestination(MethodEmail); !ok || d != sealedEmail {
		t.Fatalf("destination = %q, %v", d, ok)
	}
	wantMethods(t, s.snap().Methods, MethodEmail)
}

func TestSwitchMethod_ToEmailNeedsADestination(t *testing.T) {
	s := given(t, totpEnabled(1000)...)
	events, err := s.u.SwitchMethod(s.admin(), MethodEmail, "")
	refused(t, events, err, KindInvalid, CodeInvalidArgument)
}

func TestSwitchMethod_EmailToApp(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(24 * time.Hour)

	// when: an admin switches the user to the app
	events, err := s.u.SwitchMethod(s.admin(), MethodTOTP, "")
	wantNoError(t, err)
	wantTypes(t, events, "MethodSwitched")
	if got := *event[*MethodSwitched](t, events, 0); !reflect.DeepEqual(got, MethodSwitched{From: MethodEmail, To: MethodTOTP}) {
		t.Fatalf("switched = %+v", got)
	}
	s.record(events)

	// then: the app is to be set up at the next login; email still logs in
	snap := s.snap()
	if snap.Status != StatusSetupAppAtNextLogin || !snap.SetupAppAtNextLogin || !snap.Enabled {
		t.Fatalf("snapshot = %+v", snap)
	}
	wantMethods(t, snap.Methods, MethodEmail)
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if !o.SetupAppAtNextLogin || !o.EnrollmentRequired || !o.Enabled || o.DefaultMethod != MethodEmail {
		t.Fatalf("login options = %+v, want the app to be set up, this login verified by email", o)
	}
	wantMethods(t, o.Methods, MethodEmail)
	s.must(s.u.IssueChallenge(s.user(), MethodEmail, sealedCode))
	s.must(s.u.VerifyOTP(s.user(), MethodEmail, true))

	// when: the user, just logged in with email, enrols the app
	events, err = s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret))
	wantNoError(t, err)
	if event[*TOTPEnrollmentStarted](t, events, 0).Replacement {
		t.Fatal("nothing to replace")
	}
	s.record(events)
	newSet := codeSet("new", 10)
	events, err = s.u.ConfirmTOTPEnrollment(s.user(), []int64{9000}, newSet)

	// then: the app replaces email, with a new set of backup codes
	wantNoError(t, err)
	wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated")
	c := event[*TOTPEnrollmentConfirmed](t, events, 0)
	if c.Replacement || c.Step != 9000 || !reflect.DeepEqual(c.RemovedMethods, []Method{MethodEmail}) {
		t.Fatalf("confirmed = %+v", c)
	}
	if g := event[*BackupCodesGenerated](t, events, 1); g.Reason != BackupReasonMethodSwitched || !reflect.DeepEqual(g.Hashes, encoded(newSet)) {
		t.Fatalf("generated = %+v", g)
	}
	s.record(events)
	snap = s.snap()
	wantMethods(t, snap.Methods, MethodTOTP)
	if snap.DefaultMethod != MethodTOTP || snap.Status != StatusActivated || snap.SetupAppAtNextLogin {
		t.Fatalf("snapshot = %+v", snap)
	}
	if _, ok := s.u.SealedDestination(MethodEmail); ok {
		t.Fatal("email was replaced")
	}
	events, err = s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0])
	wantTypes(t, events, "BackupCodeCheckFailed")
	wantErr(t, err, KindInvalid, CodeInvalidCode)
	s.record(events)
	s.must(s.u.ConsumeBackupCode(s.user(), newSet[0]))
	events, err = s.u.IssueChallenge(s.user(), MethodEmail, sealedCode)
	refused(t, events, err, KindPrecondition, CodeMethodNotEnrolled)
}

// A tenant that switched email codes off: the login after the switch to the app
// sends no email code; a backup code verifies it, and then the app is set up.
func TestSwitchMethod_EmailToAppWithEmailCodesOff(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(24 * time.Hour)
	s.must(s.u.SwitchMethod(s.admin(), MethodTOTP, ""))
	s.withPolicy(func(p *Policy) { p.EmailOTPAllowed = false })

	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if !o.EnrollmentRequired || !o.Enabled || len(o.Methods) != 0 || o.DefaultMethod != "" || o.BackupCodesLeft != 10 {
		t.Fatalf("login options = %+v, want the app to be set up and no email code", o)
	}
	events, err := s.u.IssueChallenge(s.user(), MethodEmail, sealedCode)
	refused(t, events, err, KindForbidden, CodeMethodDisabled)
	events, err = s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret))
	refused(t, events, err, KindPrecondition, CodeFreshVerification)

	s.must(s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0]))
	s.must(s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret)))
	s.must(s.u.ConfirmTOTPEnrollment(s.user(), []int64{9000}, codeSet("new", 10)))
	if o, _ := s.u.LoginOptions(s.user()); o.EnrollmentRequired || o.SetupAppAtNextLogin || o.DefaultMethod != MethodTOTP {
		t.Fatalf("login options after the set-up = %+v", o)
	}
}

func TestSwitchMethod_Refusals(t *testing.T) {
	t.Run("not enabled", func(t *testing.T) {
		s := given(t)
		events, err := s.u.SwitchMethod(s.admin(), MethodEmail, sealedEmail)
		refused(t, events, err, KindPrecondition, CodeNotEnrolled)
	})
	t.Run("target switched off by the tenant", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...).withPolicy(func(p *Policy) { p.EmailOTPAllowed = false })
		events, err := s.u.SwitchMethod(s.admin(), MethodEmail, sealedEmail)
		refused(t, events, err, KindForbidden, CodeMethodDisabled)
	})
	t.Run("a user who cannot toggle", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...).and(&TogglePermissionChanged{CanToggle: false})
		events, err := s.u.SwitchMethod(s.user(), MethodEmail, sealedEmail)
		refused(t, events, err, KindForbidden, CodeNotAllowed)
		// an admin may
		events, err = s.u.SwitchMethod(s.admin(), MethodEmail, sealedEmail)
		wantNoError(t, err)
		wantTypes(t, events, "MethodSwitched")
	})
	t.Run("the user themself where allowed", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...)
		events, err := s.u.SwitchMethod(s.user(), MethodEmail, sealedEmail)
		wantNoError(t, err)
		wantTypes(t, events, "MethodSwitched")
	})
}

func TestResetTwoFactor_WipesEverything(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).
		and(totpStarted(sealedSecret2, t0.Add(time.Hour), true), challenge(MethodEmail, t0), &TogglePermissionChanged{CanToggle: false}).
		wait(time.Minute)
	s.failTOTP(5) // locked, too

	events, err := s.u.ResetTwoFactor(s.admin())

	wantNoError(t, err)
	wantTypes(t, events, "TwoFactorReset")
	s.record(events)
	snap := s.snap()
	if snap.Status != StatusResetPending || snap.Enabled || snap.BackupCodesRemaining != 0 || snap.DefaultMethod != "" ||
		!snap.MustEnroll || !snap.LockedUntil.IsZero() || snap.AttemptsRemaining != 5 {
		t.Fatalf("snapshot = %+v", snap)
	}
	wantMethods(t, snap.Methods)
	wantMethods(t, snap.PendingMethods)
	if _, ok := s.u.ActiveTOTP(); ok {
		t.Fatal("authenticator survived the reset")
	}
	if _, ok := s.u.PendingTOTP(); ok {
		t.Fatal("pending authenticator survived the reset")
	}
	if _, ok := s.u.PendingChallengeCode(MethodEmail); ok {
		t.Fatal("login code survived the reset")
	}
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if !o.EnrollmentRequired || o.Enabled || len(o.Methods) != 0 {
		t.Fatalf("login options = %+v", o)
	}
	events, err = s.u.VerifyTOTP(s.user(), []int64{1010})
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
	events, err = s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[1])
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)

	// the user enrols again, even without "can toggle"
	s.wait(time.Hour)
	s.must(s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret2)))
	wantStatus(t, s, StatusPending)
	events = s.must(s.u.ConfirmTOTPEnrollment(s.user(), []int64{1}, codeSet("new", 10)))
	wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated", "TwoFactorEnabled")
	if g := event[*BackupCodesGenerated](t, events, 1); g.Reason != BackupReasonEnabled {
		t.Fatalf("reason = %q", g.Reason)
	}
	wantStatus(t, s, StatusActivated)
	if o, _ := s.u.LoginOptions(s.user()); o.EnrollmentRequired {
		t.Fatal("enrolled again")
	}
}

func TestResetTwoFactor_APendingEnrolment(t *testing.T) {
	s := given(t, totpStarted(sealedSecret, t0.Add(time.Hour), false))
	events, err := s.u.ResetTwoFactor(s.admin())
	wantNoError(t, err)
	wantTypes(t, events, "TwoFactorReset")
}

func TestDisable_VoidsBackupCodes(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...)

	events, err := s.u.DisableTwoFactor(s.admin())

	wantNoError(t, err)
	wantTypes(t, events, "TwoFactorDisabled")
	if d := event[*TwoFactorDisabled](t, events, 0); d.Reason != DisabledByAdmin {
		t.Fatalf("disabled = %+v", d)
	}
	s.record(events)
	snap := s.snap()
	if snap.Status != StatusDisabled || snap.Enabled || snap.BackupCodesRemaining != 0 || s.u.BackupCodesRemaining() != 0 || snap.MustEnroll {
		t.Fatalf("snapshot = %+v", snap)
	}
	wantMethods(t, snap.Methods)
	events, err = s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0])
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
	o, _ := s.u.LoginOptions(s.user())
	if o.Enabled || o.EnrollmentRequired {
		t.Fatalf("login options = %+v", o)
	}
}

func TestDisable_ARequiredUserMustEnrolAgain(t *testing.T) {
	s := given(t, totpEnabled(1000)...).and(&TwoFactorRequirementChanged{Required: true})
	s.must(s.u.DisableTwoFactor(s.admin()))
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if !o.EnrollmentRequired {
		t.Fatalf("login options = %+v, a required user must enrol", o)
	}
}

func TestForgetUser(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).and(challenge(MethodEmail, t0), &TwoFactorRequirementChanged{Required: true})

	events, err := s.u.ForgetUser(s.admin())

	wantNoError(t, err)
	wantTypes(t, events, "UserForgotten")
	s.record(events)
	snap := s.snap()
	if snap.Status != StatusErased || snap.Enabled || snap.Required || snap.MustEnroll || snap.BackupCodesRemaining != 0 {
		t.Fatalf("snapshot = %+v", snap)
	}
	wantMethods(t, snap.Methods)
	if _, ok := s.u.SealedDestination(MethodEmail); ok {
		t.Fatal("a forgotten user keeps no destination")
	}

	for _, a := range []Actor{asUser, asAdmin, asSuper} {
		for name, decide := range allDecisions(s.u) {
			t.Run(string(a.Kind)+"/"+name, func(t *testing.T) {
				events, err := decide(s.env(a))
				refused(t, events, err, KindNotFound, CodeUserForgotten)
			})
		}
	}
	if _, err := s.u.LoginOptions(s.user()); err == nil {
		t.Fatal("LoginOptions of a forgotten user")
	} else {
		wantErr(t, err, KindNotFound, CodeUserForgotten)
	}
}

func TestForgetUser_UnknownUser(t *testing.T) {
	s := given(t)
	events, err := s.u.ForgetUser(s.admin())
	refused(t, events, err, KindNotFound, CodeUserNotFound)
}

func TestLoginOptions(t *testing.T) {
	t.Run("not enrolled", func(t *testing.T) {
		s := given(t)
		o, err := s.u.LoginOptions(s.user())
		wantNoError(t, err)
		if o.Enabled || o.EnrollmentRequired || o.Methods == nil || len(o.Methods) != 0 || o.AttemptsRemaining != 5 {
			t.Fatalf("login options = %+v", o)
		}
	})
	t.Run("enrolled, locked", func(t *testing.T) {
		s := given(t, concat(totpEnabled(1000), emailAdded())...).wait(time.Minute)
		s.failTOTP(5)
		o, err := s.u.LoginOptions(s.user())
		wantNoError(t, err)
		want := LoginOptions{
			CanDisable: true, Enabled: true, Methods: []Method{MethodTOTP, MethodEmail}, DefaultMethod: MethodTOTP,
			BackupCodesLeft: 10, LockedUntil: s.now.Add(15 * time.Minute), AttemptsRemaining: 0,
		}
		if !reflect.DeepEqual(o, want) {
			t.Fatalf("login options = %+v, want %+v", o, want)
		}
	})
	t.Run("only the user", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...)
		_, err := s.u.LoginOptions(s.admin())
		wantErr(t, err, KindForbidden, CodeNotAllowed)
	})
}

func TestSnapshotStatuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		given []Event
		after time.Duration
		want  Status
	}{
		{"nothing", nil, 0, StatusNotActivated},
		{"required, nothing yet", []Event{&TwoFactorRequirementChanged{Required: true}}, 0, StatusNotActivated},
		{"app pending", []Event{totpStarted(sealedSecret, t0.Add(15*time.Minute), false)}, time.Minute, StatusPending},
		{"app pending, expired", []Event{totpStarted(sealedSecret, t0.Add(15*time.Minute), false)}, 15 * time.Minute, StatusNotActivated},
		{"email pending", []Event{&OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}}, time.Minute, StatusPending},
		{"email pending, expired", []Event{&OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}}, 10 * time.Minute, StatusNotActivated},
		{"activated", totpEnabled(1000), 0, StatusActivated},
		{"activated by email", otpEnabled(MethodEmail, sealedEmail), 0, StatusActivated},
		{"locked", append(totpEnabled(1000), &TwoFactorLocked{Until: t0.Add(15 * time.Minute), Lockout: 1}), 14 * time.Minute, StatusLocked},
		{"lock over", append(totpEnabled(1000), &TwoFactorLocked{Until: t0.Add(15 * time.Minute), Lockout: 1}), 15 * time.Minute, StatusActivated},
		{"unlocked", append(totpEnabled(1000), &TwoFactorLocked{Until: t0.Add(15 * time.Minute), Lockout: 1}, &TwoFactorUnlocked{}), time.Minute, StatusActivated},
		{"disabled", append(totpEnabled(1000), &TwoFactorDisabled{Reason: DisabledByUser}), 0, StatusDisabled},
		{"disabled by a recovery code", append(totpEnabled(1000), &BackupCodeConsumed{Index: 0, Remaining: 9}, &TwoFactorDisabled{Reason: DisabledByRecoveryCode}), 0, StatusDisabled},
		{"reset", append(totpEnabled(1000), &TwoFactorReset{}), 0, StatusResetPending},
		{"reset, enrolment pending", append(totpEnabled(1000), &TwoFactorReset{}, totpStarted(sealedSecret2, t0.Add(time.Hour), false)), 0, StatusPending},
		{"setup app at next login", append(otpEnabled(MethodEmail, sealedEmail), &MethodSwitched{From: MethodEmail, To: MethodTOTP}), 0, StatusSetupAppAtNextLogin},
		{"erased", append(totpEnabled(1000), &UserForgotten{}), 0, StatusErased},
		{"erased while locked", append(totpEnabled(1000), &TwoFactorLocked{Until: t0.Add(time.Hour), Lockout: 1}, &UserForgotten{}), 0, StatusErased},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := given(t, tc.given...).wait(tc.after)
			snap := s.snap()
			if snap.Status != tc.want {
				t.Fatalf("status = %q, want %q", snap.Status, tc.want)
			}
			if snap.Version != int64(len(tc.given)) || snap.TenantID != tenantID || snap.UserID != userID {
				t.Fatalf("snapshot identity = %s/%s v%d", snap.TenantID, snap.UserID, snap.Version)
			}
			if snap.Methods == nil || snap.PendingMethods == nil {
				t.Fatal("method lists are never nil")
			}
		})
	}
}

func TestVersionCountsEveryEvent(t *testing.T) {
	s := given(t, totpEnabled(1000)...)
	if s.u.Version() != 4 || s.u.TenantID() != tenantID || s.u.UserID() != userID {
		t.Fatalf("version %d of %s/%s", s.u.Version(), s.u.TenantID(), s.u.UserID())
	}
}

func TestSwitchMethod_AnAdminCanCancelAPendingSwitchToTheApp(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).and(&MethodSwitched{From: MethodEmail, To: MethodTOTP})
	wantStatus(t, s, StatusSetupAppAtNextLogin)

	events, err := s.u.SwitchMethod(s.admin(), MethodEmail, "")

	wantNoError(t, err)
	wantTypes(t, events, "MethodSwitched")
	if got := *event[*MethodSwitched](t, events, 0); got.To != MethodEmail {
		t.Fatalf("switched = %+v", got)
	}
	s.record(events)
	snap := s.snap()
	if snap.Status != StatusActivated || snap.SetupAppAtNextLogin || snap.DefaultMethod != MethodEmail {
		t.Fatalf("snapshot = %+v", snap)
	}
	wantMethods(t, snap.Methods, MethodEmail)
	if d, _ := s.u.SealedDestination(MethodEmail); d != sealedEmail {
		t.Fatalf("destination = %q", d)
	}
	// and without a pending switch, the same request changes nothing
	events, err = s.u.SwitchMethod(s.admin(), MethodEmail, "")
	refused(t, events, err, KindPrecondition, CodeNothingToChange)
}

func TestContactAddress(t *testing.T) {
	s := given(t).wait(time.Minute)
	events, err := s.u.SetContactAddress(s.user(), MethodEmail, sealedEmail)
	wantNoError(t, err)
	wantTypes(t, events, "ContactAddressSet")
	s.record(events)
	if got, ok := s.u.SealedContactAddress(MethodEmail); !ok || got != sealedEmail {
		t.Fatalf("contact address = %q, %v", got, ok)
	}
	if _, err := s.u.SetContactAddress(s.user(), MethodTOTP, sealedEmail); KindOf(err) != KindInvalid {
		t.Fatalf("a TOTP contact address: %v", err)
	}
	events, err = s.u.SetContactAddress(s.env(asOther), MethodEmail, "")
	refused(t, events, err, KindForbidden, CodeNotAllowed)

	// Once 2FA is on, redirecting messages needs a fresh verification; admins are exempt.
	s = given(t, totpEnabled(1000)...).wait(time.Hour)
	events, err = s.u.SetContactAddress(s.user(), MethodEmail, sealedEmail)
	refused(t, events, err, KindPrecondition, CodeFreshVerification)
	events, err = s.u.SetContactAddress(s.admin(), MethodEmail, sealedEmail)
	wantNoError(t, err)
	s.record(events)
	// A reset or a disable keeps it (it is not a method); erasure removes it.
	s.record([]Event{&TwoFactorReset{}})
	if _, ok := s.u.SealedContactAddress(MethodEmail); !ok {
		t.Fatal("a reset removed the contact address")
	}
	s.record([]Event{&UserForgotten{}})
	if _, ok := s.u.SealedContactAddress(MethodEmail); ok {
		t.Fatal("erasure kept the contact address")
	}
}
