package domain

import (
	"reflect"
	"testing"
	"time"
)

func TestStartTOTPEnrollment_RecordsAPendingAuthenticatorThatActivatesNothing(t *testing.T) {
	s := given(t)

	events, err := s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret))

	wantNoError(t, err)
	wantTypes(t, events, "TOTPEnrollmentStarted")
	got := event[*TOTPEnrollmentStarted](t, events, 0)
	want := &TOTPEnrollmentStarted{SealedSecret: sealedSecret, Algorithm: "SHA1", Digits: 6, PeriodSecs: 30, ExpiresAt: t0.Add(15 * time.Minute)}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("started = %+v, want %+v", got, want)
	}
	s.record(events)
	snap := s.snap()
	if snap.Status != StatusPending || snap.Enabled || len(snap.Methods) != 0 || snap.BackupCodesRemaining != 0 {
		t.Fatalf("snapshot = %+v, want pending, not enabled, no methods, no backup codes", snap)
	}
	wantMethods(t, snap.PendingMethods, MethodTOTP)
	if _, ok := s.u.ActiveTOTP(); ok {
		t.Fatal("a pending enrolment must not be the active authenticator")
	}
	if p, ok := s.u.PendingTOTP(); !ok || p != totpParams(sealedSecret) {
		t.Fatalf("PendingTOTP = %+v, %v", p, ok)
	}
}

func TestStartTOTPEnrollment_UsesTheTenantEnrollmentTTL(t *testing.T) {
	s := given(t).withPolicy(func(p *Policy) { p.EnrollmentTTL = 5 * time.Minute })

	events, err := s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret))

	wantNoError(t, err)
	if got := event[*TOTPEnrollmentStarted](t, events, 0).ExpiresAt; !got.Equal(t0.Add(5 * time.Minute)) {
		t.Fatalf("ExpiresAt = %v, want t0+5m", got)
	}
}

func TestStartTOTPEnrollment_RequiresASecret(t *testing.T) {
	s := given(t)
	events, err := s.u.StartTOTPEnrollment(s.user(), TOTPParams{Algorithm: "SHA1", Digits: 6, PeriodSecs: 30})
	refused(t, events, err, KindInvalid, CodeInvalidArgument)
}

func TestStartTOTPEnrollment_AgainReplacesThePendingSecret(t *testing.T) {
	s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false)).wait(time.Minute)

	s.must(s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret2)))

	if p, _ := s.u.PendingTOTP(); p.SealedSecret != sealedSecret2 {
		t.Fatalf("pending secret = %q, want the newest", p.SealedSecret)
	}
}

func TestConfirmTOTPEnrollment_WithAMatchedStepEnablesTwoFactor(t *testing.T) {
	for _, count := range []int{5, 10, 20} {
		t.Run("", func(t *testing.T) {
			s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false)).
				withPolicy(func(p *Policy) { p.BackupCodeCount = count; p.LowBackupCodesWarn = 2 }).
				wait(time.Minute)
			set := codeSet("new", count)

			events, err := s.u.ConfirmTOTPEnrollment(s.user(), []int64{1001, 1002}, set)

			wantNoError(t, err)
			wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated", "TwoFactorEnabled")
			if c := event[*TOTPEnrollmentConfirmed](t, events, 0); c.Step != 1002 || c.Replacement || len(c.RemovedMethods) != 0 {
				t.Fatalf("confirmed = %+v, want step 1002 (the newest match), no replacement", c)
			}
			gen := event[*BackupCodesGenerated](t, events, 1)
			if gen.Reason != BackupReasonEnabled || len(gen.Hashes) != count || !reflect.DeepEqual(gen.Hashes, encoded(set)) {
				t.Fatalf("generated = %+v, want %d hashes, reason enabled", gen, count)
			}
			if e := event[*TwoFactorEnabled](t, events, 2); e.Method != MethodTOTP {
				t.Fatalf("enabled = %+v", e)
			}
			s.record(events)
			snap := s.snap()
			if snap.Status != StatusActivated || !snap.Enabled || snap.DefaultMethod != MethodTOTP || snap.BackupCodesRemaining != count {
				t.Fatalf("snapshot = %+v", snap)
			}
			wantMethods(t, snap.Methods, MethodTOTP)
			wantMethods(t, snap.PendingMethods)
			if a, ok := s.u.ActiveTOTP(); !ok || a.SealedSecret != sealedSecret {
				t.Fatalf("ActiveTOTP = %+v, %v", a, ok)
			}
			if _, ok := s.u.PendingTOTP(); ok {
				t.Fatal("nothing is pending after confirmation")
			}
		})
	}
}

func TestConfirmTOTPEnrollment_WithoutAMatchFailsWithAttemptsRemaining(t *testing.T) {
	s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false)).wait(time.Minute)

	events, err := s.u.ConfirmTOTPEnrollment(s.user(), nil, codeSet("new", 10))

	wantTypes(t, events, "TOTPCheckFailed")
	if f := event[*TOTPCheckFailed](t, events, 0); f.Purpose != CheckEnrollment || f.Replayed || f.ConsecutiveFailures != 1 {
		t.Fatalf("failed = %+v", f)
	}
	de := wantErr(t, err, KindInvalid, CodeInvalidCode)
	if de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining = %d, want 4", de.AttemptsRemaining)
	}
	s.record(events)
	wantStatus(t, s, StatusPending)
	if s.u.Enabled() {
		t.Fatal("a failed first code activates nothing")
	}
}

func TestConfirmTOTPEnrollment_AnExpiredEnrolmentCannotBeConfirmed(t *testing.T) {
	for _, after := range []time.Duration{15 * time.Minute, 15*time.Minute + time.Second, 2 * time.Hour} {
		s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false)).wait(after)

		events, err := s.u.ConfirmTOTPEnrollment(s.user(), []int64{5000}, codeSet("new", 10))

		refused(t, events, err, KindPrecondition, CodeEnrollmentExpired)
		wantStatus(t, s, StatusNotActivated)
	}
}

func TestConfirmTOTPEnrollment_JustBeforeExpiryStillWorks(t *testing.T) {
	s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false)).wait(15*time.Minute - time.Second)
	events, err := s.u.ConfirmTOTPEnrollment(s.user(), []int64{5000}, codeSet("new", 10))
	wantNoError(t, err)
	wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated", "TwoFactorEnabled")
}

func TestConfirmTOTPEnrollment_WithNothingPending(t *testing.T) {
	for name, s := range map[string]*story{
		"new user":             given(t),
		"already enrolled":     given(t, totpEnabled(1000)...),
		"email user, no app":   given(t, otpEnabled(MethodEmail, sealedEmail)...),
		"pending email setup":  given(t, &OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}),
		"after a disable":      given(t, append(totpEnabled(1000), &TwoFactorDisabled{Reason: DisabledByUser})...),
		"pending then removed": given(t, append(totpEnabled(1000), totpStarted(sealedSecret2, t0.Add(time.Hour), true), &TwoFactorReset{})...),
	} {
		t.Run(name, func(t *testing.T) {
			events, err := s.u.ConfirmTOTPEnrollment(s.user(), []int64{1001}, codeSet("new", 10))
			refused(t, events, err, KindPrecondition, CodeNoPendingEnrollment)
		})
	}
}

func TestConfirmTOTPEnrollment_RefusesABackupSetOfTheWrongSize(t *testing.T) {
	for _, n := range []int{0, 9, 11} {
		s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false))
		events, err := s.u.ConfirmTOTPEnrollment(s.user(), []int64{1001}, codeSet("new", n))
		refused(t, events, err, KindInvalid, CodeInvalidArgument)
		if s.u.Enabled() {
			t.Fatal("nothing may be enabled")
		}
	}
}

func TestAPendingEnrolmentCannotBeUsedToLogIn(t *testing.T) {
	pending := totpStarted(sealedSecret, t0.Add(15*time.Minute), false)

	t.Run("nothing enabled yet", func(t *testing.T) {
		s := given(t, pending).wait(time.Minute)
		events, err := s.u.VerifyTOTP(s.user(), []int64{1001})
		refused(t, events, err, KindPrecondition, CodeNotEnrolled)
	})
	t.Run("enabled with email, app pending", func(t *testing.T) {
		s := given(t, otpEnabled(MethodEmail, sealedEmail)...).and(pending).wait(time.Minute)
		events, err := s.u.VerifyTOTP(s.user(), []int64{1001})
		refused(t, events, err, KindPrecondition, CodeMethodNotEnrolled)
	})
}

func TestTOTPEnrollment_OnlyTheUserThemself(t *testing.T) {
	for _, a := range []Actor{asOther, asAdmin, asSuper, asSystem, asAuditor} {
		s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false))
		events, err := s.u.StartTOTPEnrollment(s.env(a), totpParams(sealedSecret2))
		refused(t, events, err, KindForbidden, CodeNotAllowed)
		events, err = s.u.ConfirmTOTPEnrollment(s.env(a), []int64{1001}, codeSet("new", 10))
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
}

func TestVerifyTOTP_AcceptsANewerStep(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(30 * time.Second)

	events, err := s.u.VerifyTOTP(s.user(), []int64{1001})

	wantNoError(t, err)
	wantTypes(t, events, "TOTPVerified")
	if v := event[*TOTPVerified](t, events, 0); v.Step != 1001 {
		t.Fatalf("verified step = %d, want 1001", v.Step)
	}
	s.record(events)
	if snap := s.snap(); snap.LastVerifiedMethod != MethodTOTP || !snap.LastVerifiedAt.Equal(s.now) {
		t.Fatalf("last verification = %v at %v", snap.LastVerifiedMethod, snap.LastVerifiedAt)
	}
}

func TestVerifyTOTP_WrongCode(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(30 * time.Second)

	events, err := s.u.VerifyTOTP(s.user(), nil)

	wantTypes(t, events, "TOTPCheckFailed")
	if f := event[*TOTPCheckFailed](t, events, 0); f.Purpose != CheckLogin || f.Replayed || f.ConsecutiveFailures != 1 {
		t.Fatalf("failed = %+v", f)
	}
	if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining = %d", de.AttemptsRemaining)
	}
}

func TestVerifyTOTP_ReplayIsRefusedAndLooksExactlyLikeAWrongCode(t *testing.T) {
	for _, tc := range []struct {
		name       string
		loginFirst bool // log in at step 1003 before the replay
		replayed   []int64
	}{
		{"the step of the confirmation", false, []int64{1000}},
		{"an older step", false, []int64{999}},
		{"the last accepted login step", true, []int64{1003}},
		{"several old steps", true, []int64{1002, 1003}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := given(t, totpEnabled(1000)...).wait(time.Minute)
			wrong := given(t, totpEnabled(1000)...).wait(time.Minute)
			if tc.loginFirst {
				s.must(s.u.VerifyTOTP(s.user(), []int64{1003}))
				wrong.must(wrong.u.VerifyTOTP(wrong.user(), []int64{1003}))
			}

			events, err := s.u.VerifyTOTP(s.user(), tc.replayed)
			wrongEvents, wrongErr := wrong.u.VerifyTOTP(wrong.user(), nil)

			wantTypes(t, events, "TOTPCheckFailed")
			if f := event[*TOTPCheckFailed](t, events, 0); !f.Replayed || f.Purpose != CheckLogin || f.ConsecutiveFailures != 1 {
				t.Fatalf("failed = %+v, want replayed", f)
			}
			if f := event[*TOTPCheckFailed](t, wrongEvents, 0); f.Replayed {
				t.Fatal("a wrong code is not a replay")
			}
			de := wantErr(t, err, KindInvalid, CodeInvalidCode)
			wrongDE := wantErr(t, wrongErr, KindInvalid, CodeInvalidCode)
			if *de != *wrongDE || de.Error() != wrongDE.Error() {
				t.Fatalf("replay error %+v differs from wrong-code error %+v", de, wrongDE)
			}
		})
	}
}

func TestVerifyTOTP_AfterANewerStepAnOlderStepInTheWindowIsRefused(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	s.must(s.u.VerifyTOTP(s.user(), []int64{1002})) // the clock-drift step ahead

	events, err := s.u.VerifyTOTP(s.user(), []int64{1001}) // still within ±1 of now, but older

	wantTypes(t, events, "TOTPCheckFailed")
	if !event[*TOTPCheckFailed](t, events, 0).Replayed {
		t.Fatal("want Replayed")
	}
	wantErr(t, err, KindInvalid, CodeInvalidCode)

	s.record(events)
	s.wait(30 * time.Second)
	events, err = s.u.VerifyTOTP(s.user(), []int64{1003})
	wantNoError(t, err)
	if event[*TOTPVerified](t, events, 0).Step != 1003 {
		t.Fatal("a newer step must be accepted")
	}
}

func TestVerifyTOTP_TakesTheNewestFreshStepOfSeveralMatches(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	events, err := s.u.VerifyTOTP(s.user(), []int64{1000, 1002, 1001})
	wantNoError(t, err)
	if got := event[*TOTPVerified](t, events, 0).Step; got != 1002 {
		t.Fatalf("step = %d, want 1002", got)
	}
}

func TestVerifyTOTP_OnlyTheUserLogsIn(t *testing.T) {
	for _, a := range []Actor{asOther, asAdmin, asSuper, asSystem, asAuditor} {
		s := given(t, totpEnabled(1000)...).wait(time.Minute)
		events, err := s.u.VerifyTOTP(s.env(a), []int64{1001})
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
}

func TestReplaceAuthenticator(t *testing.T) {
	// Logged in with the old app a minute ago: a fresh, strong verification.
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	s.must(s.u.VerifyTOTP(s.user(), []int64{1002}))
	s.wait(time.Minute)

	// when: the user starts enrolling a new phone
	events, err := s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret2))
	wantNoError(t, err)
	wantTypes(t, events, "TOTPEnrollmentStarted")
	if st := event[*TOTPEnrollmentStarted](t, events, 0); !st.Replacement || st.SealedSecret != sealedSecret2 {
		t.Fatalf("started = %+v, want a replacement", st)
	}
	s.record(events)
	if s.snap().Status != StatusActivated {
		t.Fatalf("status = %v, replacement pending keeps the user activated", s.snap().Status)
	}

	// while it is pending the old app still logs in
	s.wait(30 * time.Second)
	s.must(s.u.VerifyTOTP(s.user(), []int64{1005}))
	if a, _ := s.u.ActiveTOTP(); a.SealedSecret != sealedSecret {
		t.Fatalf("active secret = %q before confirmation, want the old one", a.SealedSecret)
	}

	// when: the new app's first code matches
	newSet := codeSet("new", 10)
	events, err = s.u.ConfirmTOTPEnrollment(s.user(), []int64{1006}, newSet)
	wantNoError(t, err)
	wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated")
	if c := event[*TOTPEnrollmentConfirmed](t, events, 0); !c.Replacement || c.Step != 1006 {
		t.Fatalf("confirmed = %+v", c)
	}
	if g := event[*BackupCodesGenerated](t, events, 1); g.Reason != BackupReasonAuthenticatorReplace || !reflect.DeepEqual(g.Hashes, encoded(newSet)) {
		t.Fatalf("generated = %+v", g)
	}
	s.record(events)

	// then: the new secret is the authenticator, the old backup codes are void
	if a, _ := s.u.ActiveTOTP(); a.SealedSecret != sealedSecret2 {
		t.Fatalf("active secret = %q, want the new one", a.SealedSecret)
	}
	wantMethods(t, s.snap().Methods, MethodTOTP)
	events, err = s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0])
	wantTypes(t, events, "BackupCodeCheckFailed")
	wantErr(t, err, KindInvalid, CodeInvalidCode)
	s.record(events)
	s.must(s.u.ConsumeBackupCode(s.user(), newSet[0]))
}

// The old authenticator's last step belongs to the old secret: the new one is
// guarded by the step of its own confirmation only.
func TestReplaceAuthenticator_TheNewSecretIsGuardedByItsOwnConfirmationStep(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	s.must(s.u.VerifyTOTP(s.user(), []int64{1010}))
	s.must(s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret2)))

	// A new phone whose clock is behind matches an older step than the old app's last one.
	events, err := s.u.ConfirmTOTPEnrollment(s.user(), []int64{1005}, codeSet("new", 10))
	wantNoError(t, err)
	wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated")
	s.record(events)

	events, err = s.u.VerifyTOTP(s.user(), []int64{1005})
	wantTypes(t, events, "TOTPCheckFailed")
	wantErr(t, err, KindInvalid, CodeInvalidCode)
	if !event[*TOTPCheckFailed](t, events, 0).Replayed {
		t.Fatal("the confirmation step of the new app is a replay")
	}
	s.record(events)

	events, err = s.u.VerifyTOTP(s.user(), []int64{1006})
	wantNoError(t, err)
	wantTypes(t, events, "TOTPVerified")
}

func TestAddingTheAppToAnEmailUser(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(time.Minute)

	events, err := s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret))
	wantNoError(t, err)
	if event[*TOTPEnrollmentStarted](t, events, 0).Replacement {
		t.Fatal("no authenticator to replace")
	}
	s.record(events)

	events, err = s.u.ConfirmTOTPEnrollment(s.user(), []int64{2000}, codeSet("new", 10))
	wantNoError(t, err)
	// Already enabled, nothing replaced: no new backup codes.
	wantTypes(t, events, "TOTPEnrollmentConfirmed")
	s.record(events)
	snap := s.snap()
	wantMethods(t, snap.Methods, MethodTOTP, MethodEmail)
	if snap.DefaultMethod != MethodEmail || snap.BackupCodesRemaining != 10 {
		t.Fatalf("snapshot = %+v, the default and the backup set stay", snap)
	}
}
