package domain

import (
	"reflect"
	"testing"
	"time"
)

func TestOTPMethodSetup_FirstMethodEnablesTwoFactorWithBackupCodes(t *testing.T) {
	for _, tc := range []struct {
		method Method
		dest   string
	}{{MethodEmail, sealedEmail}, {MethodSMS, sealedPhone}} {
		t.Run(string(tc.method), func(t *testing.T) {
			s := given(t)

			events, err := s.u.StartOTPMethodSetup(s.user(), tc.method, tc.dest, sealedCode)

			wantNoError(t, err)
			wantTypes(t, events, "OTPMethodSetupStarted")
			want := &OTPMethodSetupStarted{Method: tc.method, SealedDestination: tc.dest, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}
			if got := event[*OTPMethodSetupStarted](t, events, 0); !reflect.DeepEqual(got, want) {
				t.Fatalf("started = %+v, want %+v", got, want)
			}
			s.record(events)
			wantStatus(t, s, StatusPending)
			wantMethods(t, s.snap().PendingMethods, tc.method)
			if c, ok := s.u.PendingSetupCode(tc.method); !ok || c != sealedCode {
				t.Fatalf("PendingSetupCode = %q, %v", c, ok)
			}
			if _, ok := s.u.SealedDestination(tc.method); ok {
				t.Fatal("an unconfirmed destination is not registered")
			}

			s.wait(2 * time.Minute)
			set := codeSet("new", 10)
			events, err = s.u.ConfirmOTPMethod(s.user(), tc.method, true, set)

			wantNoError(t, err)
			wantTypes(t, events, "OTPMethodConfirmed", "BackupCodesGenerated", "TwoFactorEnabled")
			if c := event[*OTPMethodConfirmed](t, events, 0); c.Method != tc.method {
				t.Fatalf("confirmed = %+v", c)
			}
			if g := event[*BackupCodesGenerated](t, events, 1); g.Reason != BackupReasonEnabled || !reflect.DeepEqual(g.Hashes, encoded(set)) {
				t.Fatalf("generated = %+v", g)
			}
			if e := event[*TwoFactorEnabled](t, events, 2); e.Method != tc.method {
				t.Fatalf("enabled = %+v", e)
			}
			s.record(events)
			snap := s.snap()
			if snap.Status != StatusActivated || snap.DefaultMethod != tc.method || snap.BackupCodesRemaining != 10 || snap.LastVerifiedMethod != tc.method {
				t.Fatalf("snapshot = %+v", snap)
			}
			wantMethods(t, snap.Methods, tc.method)
			if d, ok := s.u.SealedDestination(tc.method); !ok || d != tc.dest {
				t.Fatalf("destination = %q, %v", d, ok)
			}
		})
	}
}

func TestOTPMethodSetup_ASecondMethodOnlyAddsIt(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(time.Minute)
	s.must(s.u.StartOTPMethodSetup(s.user(), MethodSMS, sealedPhone, sealedCode))

	events, err := s.u.ConfirmOTPMethod(s.user(), MethodSMS, true, codeSet("new", 10))

	wantNoError(t, err)
	wantTypes(t, events, "OTPMethodConfirmed")
	s.record(events)
	snap := s.snap()
	wantMethods(t, snap.Methods, MethodSMS, MethodEmail)
	if snap.DefaultMethod != MethodEmail || snap.BackupCodesRemaining != 10 {
		t.Fatalf("snapshot = %+v", snap)
	}
}

func TestOTPMethodSetup_OnlyEmailAndSMS(t *testing.T) {
	for _, m := range []Method{MethodTOTP, MethodBackup, "carrier-pigeon", ""} {
		s := given(t)
		events, err := s.u.StartOTPMethodSetup(s.user(), m, sealedEmail, sealedCode)
		refused(t, events, err, KindInvalid, "invalid_method")
	}
}

func TestOTPMethodSetup_WrongCode(t *testing.T) {
	s := given(t).and(&OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}).wait(time.Minute)

	events, err := s.u.ConfirmOTPMethod(s.user(), MethodEmail, false, codeSet("new", 10))

	wantTypes(t, events, "OTPCheckFailed")
	want := &OTPCheckFailed{Method: MethodEmail, Purpose: CheckEnrollment, ConsecutiveFailures: 1}
	if got := event[*OTPCheckFailed](t, events, 0); *got != *want {
		t.Fatalf("failed = %+v, want %+v", got, want)
	}
	if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining = %d", de.AttemptsRemaining)
	}
	s.record(events)
	if s.u.Enabled() {
		t.Fatal("a wrong code enables nothing")
	}
	// the setup stays pending: the right code still works
	s.must(s.u.ConfirmOTPMethod(s.user(), MethodEmail, true, codeSet("new", 10)))
}

func TestOTPMethodSetup_ExpiredOrMissing(t *testing.T) {
	setup := &OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}

	s := given(t, setup).wait(10 * time.Minute)
	events, err := s.u.ConfirmOTPMethod(s.user(), MethodEmail, true, codeSet("new", 10))
	refused(t, events, err, KindPrecondition, CodeCodeExpired)
	wantStatus(t, s, StatusNotActivated)

	s = given(t, setup)
	events, err = s.u.ConfirmOTPMethod(s.user(), MethodSMS, true, codeSet("new", 10))
	refused(t, events, err, KindPrecondition, CodeNoPendingCode)

	s = given(t, setup)
	events, err = s.u.ConfirmOTPMethod(s.user(), MethodEmail, true, codeSet("new", 9))
	refused(t, events, err, KindInvalid, CodeInvalidArgument)
}

func TestOTPMethodSetup_ResendCooldown(t *testing.T) {
	s := given(t).and(&OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}).
		wait(10 * time.Second)

	events, err := s.u.StartOTPMethodSetup(s.user(), MethodEmail, sealedEmail, "sealed-2")

	de := refused(t, events, err, KindConflict, CodeResendTooSoon)
	if de.RetryAfterSeconds < 50 || de.RetryAfterSeconds > 51 {
		t.Fatalf("retry after = %d, want 50 (at most one second more)", de.RetryAfterSeconds)
	}

	s.wait(50 * time.Second)
	events, err = s.u.StartOTPMethodSetup(s.user(), MethodEmail, sealedEmail, "sealed-2")
	wantNoError(t, err)
	s.record(events)
	if c, _ := s.u.PendingSetupCode(MethodEmail); c != "sealed-2" {
		t.Fatalf("pending code = %q, want the resent one", c)
	}
}

func TestIssueChallenge(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(time.Hour)

	events, err := s.u.IssueChallenge(s.user(), MethodEmail, "sealed-login-code")

	wantNoError(t, err)
	wantTypes(t, events, "OTPChallengeIssued")
	want := &OTPChallengeIssued{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: "sealed-login-code", ExpiresAt: s.now.Add(10 * time.Minute)}
	if got := event[*OTPChallengeIssued](t, events, 0); !reflect.DeepEqual(got, want) {
		t.Fatalf("issued = %+v, want %+v", got, want)
	}
	s.record(events)
	if c, ok := s.u.PendingChallengeCode(MethodEmail); !ok || c != "sealed-login-code" {
		t.Fatalf("PendingChallengeCode = %q, %v", c, ok)
	}
}

func TestIssueChallenge_ResendCooldown(t *testing.T) {
	for _, tc := range []struct {
		cooldown, after time.Duration
		wantRetry       int // 0: allowed
	}{
		{60 * time.Second, 0, 60},
		{60 * time.Second, 30 * time.Second, 30},
		{60 * time.Second, 59 * time.Second, 1},
		{60 * time.Second, 60 * time.Second, 0},
		{5 * time.Minute, 2 * time.Minute, 180},
		{0, 0, 0},
	} {
		s := given(t, otpEnabled(MethodEmail, sealedEmail)...).withPolicy(func(p *Policy) { p.OTPResendCooldown = tc.cooldown }).wait(time.Hour)
		s.must(s.u.IssueChallenge(s.user(), MethodEmail, "sealed-1"))
		s.wait(tc.after)

		events, err := s.u.IssueChallenge(s.user(), MethodEmail, "sealed-2")

		if tc.wantRetry == 0 {
			wantNoError(t, err)
			s.record(events)
			if c, _ := s.u.PendingChallengeCode(MethodEmail); c != "sealed-2" {
				t.Fatalf("the resent code must replace the old one, got %q", c)
			}
			continue
		}
		de := refused(t, events, err, KindConflict, CodeResendTooSoon)
		if de.RetryAfterSeconds < tc.wantRetry || de.RetryAfterSeconds > tc.wantRetry+1 {
			t.Fatalf("cooldown %v after %v: retry after %d, want %d", tc.cooldown, tc.after, de.RetryAfterSeconds, tc.wantRetry)
		}
	}
}

func TestIssueChallenge_Refusals(t *testing.T) {
	for _, tc := range []struct {
		name   string
		given  []Event
		method Method
		kind   Kind
		code   string
	}{
		{"not enabled", nil, MethodEmail, KindPrecondition, CodeNotEnrolled},
		{"setup pending only", []Event{&OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(time.Hour)}}, MethodEmail, KindPrecondition, CodeNotEnrolled},
		{"method not enrolled", otpEnabled(MethodEmail, sealedEmail), MethodSMS, KindPrecondition, CodeMethodNotEnrolled},
		{"totp is not sent", totpEnabled(1000), MethodTOTP, KindInvalid, "invalid_method"},
		{"backup codes are not sent", totpEnabled(1000), MethodBackup, KindInvalid, "invalid_method"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := given(t, tc.given...).wait(time.Minute)
			events, err := s.u.IssueChallenge(s.user(), tc.method, sealedCode)
			refused(t, events, err, tc.kind, tc.code)
		})
	}
}

func TestVerifyOTP_IsSingleUse(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(time.Hour)
	s.must(s.u.IssueChallenge(s.user(), MethodEmail, sealedCode))
	s.wait(time.Minute)

	events, err := s.u.VerifyOTP(s.user(), MethodEmail, true)

	wantNoError(t, err)
	wantTypes(t, events, "OTPVerified")
	if v := event[*OTPVerified](t, events, 0); v.Method != MethodEmail {
		t.Fatalf("verified = %+v", v)
	}
	s.record(events)
	if _, ok := s.u.PendingChallengeCode(MethodEmail); ok {
		t.Fatal("a used code must not stay pending")
	}
	if snap := s.snap(); snap.LastVerifiedMethod != MethodEmail || !snap.LastVerifiedAt.Equal(s.now) {
		t.Fatalf("last verification = %v at %v", snap.LastVerifiedMethod, snap.LastVerifiedAt)
	}

	events, err = s.u.VerifyOTP(s.user(), MethodEmail, true)
	refused(t, events, err, KindPrecondition, CodeNoPendingCode)
}

func TestVerifyOTP_WrongCodeKeepsTheChallenge(t *testing.T) {
	s := given(t, otpEnabled(MethodSMS, sealedPhone)...).wait(time.Hour)
	s.must(s.u.IssueChallenge(s.user(), MethodSMS, sealedCode))

	events, err := s.u.VerifyOTP(s.user(), MethodSMS, false)

	wantTypes(t, events, "OTPCheckFailed")
	want := &OTPCheckFailed{Method: MethodSMS, Purpose: CheckLogin, ConsecutiveFailures: 1}
	if got := event[*OTPCheckFailed](t, events, 0); *got != *want {
		t.Fatalf("failed = %+v, want %+v", got, want)
	}
	if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining = %d", de.AttemptsRemaining)
	}
	s.record(events)
	s.must(s.u.VerifyOTP(s.user(), MethodSMS, true))
}

func TestVerifyOTP_ExpiredCode(t *testing.T) {
	for _, tc := range []struct {
		lifetime, after time.Duration
	}{{10 * time.Minute, 10 * time.Minute}, {10 * time.Minute, time.Hour}, {2 * time.Minute, 2*time.Minute + time.Second}} {
		s := given(t, otpEnabled(MethodEmail, sealedEmail)...).withPolicy(func(p *Policy) { p.OTPLifetime = tc.lifetime; p.OTPResendCooldown = 0 }).wait(time.Hour)
		s.must(s.u.IssueChallenge(s.user(), MethodEmail, sealedCode))
		s.wait(tc.after)

		events, err := s.u.VerifyOTP(s.user(), MethodEmail, true)

		refused(t, events, err, KindPrecondition, CodeCodeExpired)
	}
}

func TestVerifyOTP_WithoutChallenge(t *testing.T) {
	s := given(t, otpEnabled(MethodEmail, sealedEmail)...).wait(time.Minute)
	events, err := s.u.VerifyOTP(s.user(), MethodEmail, true)
	refused(t, events, err, KindPrecondition, CodeNoPendingCode)

	events, err = s.u.VerifyOTP(s.user(), MethodSMS, true)
	refused(t, events, err, KindPrecondition, CodeMethodNotEnrolled)

	s = given(t)
	events, err = s.u.VerifyOTP(s.user(), MethodEmail, true)
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
}

func TestVerifyOTP_OnlyTheUser(t *testing.T) {
	for _, a := range []Actor{asOther, asAdmin, asSuper, asSystem} {
		s := given(t, otpEnabled(MethodEmail, sealedEmail)...).and(challenge(MethodEmail, t0))
		events, err := s.u.VerifyOTP(s.env(a), MethodEmail, true)
		refused(t, events, err, KindForbidden, CodeNotAllowed)
		events, err = s.u.IssueChallenge(s.env(a), MethodEmail, sealedCode)
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
}

func TestEmailOTPSwitchedOffByTheTenant(t *testing.T) {
	off := func(p *Policy) { p.EmailOTPAllowed = false }

	t.Run("setup", func(t *testing.T) {
		s := given(t).withPolicy(off)
		events, err := s.u.StartOTPMethodSetup(s.user(), MethodEmail, sealedEmail, sealedCode)
		refused(t, events, err, KindForbidden, CodeMethodDisabled)
	})
	t.Run("challenge", func(t *testing.T) {
		s := given(t, otpEnabled(MethodEmail, sealedEmail)...).withPolicy(off).wait(time.Hour)
		events, err := s.u.IssueChallenge(s.user(), MethodEmail, sealedCode)
		refused(t, events, err, KindForbidden, CodeMethodDisabled)
	})
	t.Run("verify a code sent before the switch-off", func(t *testing.T) {
		s := given(t, otpEnabled(MethodEmail, sealedEmail)...).and(challenge(MethodEmail, t0)).withPolicy(off).wait(time.Minute)
		events, err := s.u.VerifyOTP(s.user(), MethodEmail, true)
		refused(t, events, err, KindForbidden, CodeMethodDisabled)
	})
	t.Run("login options leave it out", func(t *testing.T) {
		s := given(t, concat(totpEnabled(1000), emailAdded())...).and(&DefaultMethodChanged{Method: MethodEmail}).withPolicy(off)
		o, err := s.u.LoginOptions(s.user())
		wantNoError(t, err)
		wantMethods(t, o.Methods, MethodTOTP)
		if o.DefaultMethod != MethodTOTP {
			t.Fatalf("default = %q, want totp", o.DefaultMethod)
		}
	})
	t.Run("cannot become the default", func(t *testing.T) {
		s := given(t, concat(totpEnabled(1000), emailAdded())...).withPolicy(off)
		events, err := s.u.ChangeDefaultMethod(s.user(), MethodEmail)
		refused(t, events, err, KindForbidden, CodeMethodDisabled)
	})
	t.Run("sms still works", func(t *testing.T) {
		s := given(t).withPolicy(off)
		s.must(s.u.StartOTPMethodSetup(s.user(), MethodSMS, sealedPhone, sealedCode))
	})
}

func TestSMSOTPSwitchedOffByTheTenant(t *testing.T) {
	off := func(p *Policy) { p.SMSOTPAllowed = false }
	s := given(t).withPolicy(off)
	events, err := s.u.StartOTPMethodSetup(s.user(), MethodSMS, sealedPhone, sealedCode)
	refused(t, events, err, KindForbidden, CodeMethodDisabled)

	s = given(t, otpEnabled(MethodSMS, sealedPhone)...).and(challenge(MethodSMS, t0)).withPolicy(off).wait(time.Minute)
	events, err = s.u.VerifyOTP(s.user(), MethodSMS, true)
	refused(t, events, err, KindForbidden, CodeMethodDisabled)
	events, err = s.u.IssueChallenge(s.user(), MethodSMS, sealedCode)
	refused(t, events, err, KindForbidden, CodeMethodDisabled)
}

func TestOTPMethodSetup_NotConfirmableAfterTheTenantSwitchedItOff(t *testing.T) {
	s := given(t).and(&OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)}).
		withPolicy(func(p *Policy) { p.EmailOTPAllowed = false }).wait(time.Minute)

	events, err := s.u.ConfirmOTPMethod(s.user(), MethodEmail, true, codeSet("new", 10))

	refused(t, events, err, KindForbidden, CodeMethodDisabled)
}

func TestUnknownMethodsAreInvalidInput(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).wait(time.Minute)
	bogus := Method("carrier-pigeon")
	for name, decide := range map[string]func() ([]Event, error){
		"verify":  func() ([]Event, error) { return s.u.VerifyOTP(s.user(), bogus, true) },
		"confirm": func() ([]Event, error) { return s.u.ConfirmOTPMethod(s.user(), bogus, true, codeSet("n", 10)) },
		"default": func() ([]Event, error) { return s.u.ChangeDefaultMethod(s.user(), bogus) },
		"remove":  func() ([]Event, error) { return s.u.RemoveMethod(s.admin(), bogus) },
		"switch":  func() ([]Event, error) { return s.u.SwitchMethod(s.admin(), bogus, "sealed") },
		"backup as a default": func() ([]Event, error) {
			return s.u.ChangeDefaultMethod(s.user(), MethodBackup)
		},
	} {
		events, err := decide()
		if len(events) != 0 || KindOf(err) != KindInvalid {
			t.Errorf("%s: events %v, err %v; want invalid", name, typesOf(events), err)
		}
	}
}
