package domain

import (
	"fmt"
	"testing"
	"time"
)

// failTOTP records n wrong authenticator codes and returns the last decision.
func (s *story) failTOTP(n int) ([]Event, error) {
	s.t.Helper()
	var events []Event
	var err error
	for i := 0; i < n; i++ {
		events, err = s.u.VerifyTOTP(s.user(), nil)
		if err == nil {
			s.t.Fatalf("failure %d: a wrong code was accepted", i+1)
		}
		s.record(events)
	}
	return events, err
}

func TestLockout_AttemptsRemainingCountDownThenLock(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)

	for i, want := range []int{4, 3, 2, 1} {
		events, err := s.u.VerifyTOTP(s.user(), nil)
		wantTypes(t, events, "TOTPCheckFailed")
		if f := event[*TOTPCheckFailed](t, events, 0); f.ConsecutiveFailures != i+1 {
			t.Fatalf("consecutive failures = %d, want %d", f.ConsecutiveFailures, i+1)
		}
		if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != want {
			t.Fatalf("failure %d: attempts remaining = %d, want %d", i+1, de.AttemptsRemaining, want)
		}
		s.record(events)
		if got := s.snap().AttemptsRemaining; got != want {
			t.Fatalf("snapshot attempts remaining = %d, want %d", got, want)
		}
	}

	events, err := s.u.VerifyTOTP(s.user(), nil)

	wantTypes(t, events, "TOTPCheckFailed", "TwoFactorLocked")
	if f := event[*TOTPCheckFailed](t, events, 0); f.ConsecutiveFailures != 5 {
		t.Fatalf("failed = %+v", f)
	}
	lock := event[*TwoFactorLocked](t, events, 1)
	if !lock.Until.Equal(s.now.Add(15*time.Minute)) || lock.Lockout != 1 {
		t.Fatalf("locked = %+v, want until now+15m, lockout 1", lock)
	}
	de := wantErr(t, err, KindLocked, CodeLocked)
	if de.AttemptsRemaining != 0 || de.RetryAfterSeconds != 900 {
		t.Fatalf("locked error = %+v, want 0 attempts, retry after 900 s", de)
	}
	s.record(events)
	snap := s.snap()
	if snap.Status != StatusLocked || !snap.LockedUntil.Equal(lock.Until) || snap.AttemptsRemaining != 0 || !snap.Enabled {
		t.Fatalf("snapshot = %+v", snap)
	}
}

func TestLockout_WhileLockedEveryVerificationIsRefusedWithoutEvents(t *testing.T) {
	base := concat(totpEnabled(1000), emailAdded())
	lockedAt := t0.Add(time.Minute)
	s := given(t, base...).and(challenge(MethodEmail, t0)).
		and(&TwoFactorLocked{Until: lockedAt.Add(15 * time.Minute), Lockout: 1}).
		and(&OTPMethodSetupStarted{Method: MethodSMS, SealedDestination: sealedPhone, SealedCode: sealedCode, ExpiresAt: t0.Add(time.Hour)}).
		and(totpStarted(sealedSecret2, t0.Add(time.Hour), true)).
		wait(6 * time.Minute) // 10 minutes of the lock left

	decisions := map[string]func(Env) ([]Event, error){
		"VerifyTOTP with a correct code": func(e Env) ([]Event, error) { return s.u.VerifyTOTP(e, []int64{1001}) },
		"VerifyTOTP with a wrong code":   func(e Env) ([]Event, error) { return s.u.VerifyTOTP(e, nil) },
		"VerifyOTP with a correct code":  func(e Env) ([]Event, error) { return s.u.VerifyOTP(e, MethodEmail, true) },
		"VerifyOTP with a wrong code":    func(e Env) ([]Event, error) { return s.u.VerifyOTP(e, MethodEmail, false) },
		"ConsumeBackupCode, valid":       func(e Env) ([]Event, error) { return s.u.ConsumeBackupCode(e, codeSet("old", 10)[0]) },
		"ConsumeBackupCode, unknown":     func(e Env) ([]Event, error) { return s.u.ConsumeBackupCode(e, []byte("nope")) },
		"IssueChallenge":                 func(e Env) ([]Event, error) { return s.u.IssueChallenge(e, MethodEmail, "sealed-2") },
		"ConfirmTOTPEnrollment": func(e Env) ([]Event, error) {
			return s.u.ConfirmTOTPEnrollment(e, []int64{1001}, codeSet("new", 10))
		},
		"ConfirmOTPMethod": func(e Env) ([]Event, error) {
			return s.u.ConfirmOTPMethod(e, MethodSMS, true, codeSet("new", 10))
		},
	}
	for name, decide := range decisions {
		t.Run(name, func(t *testing.T) {
			events, err := decide(s.user())
			de := refused(t, events, err, KindLocked, CodeLocked)
			if de.RetryAfterSeconds != 600 || de.AttemptsRemaining != 0 {
				t.Fatalf("locked error = %+v, want retry after 600 s and 0 attempts", de)
			}
		})
	}
}

func TestLockout_AfterExpiryFailuresCountAnewAndTheNextLockDoubles(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	events, _ := s.failTOTP(5)
	first := event[*TwoFactorLocked](t, events, 1)

	s.now = first.Until // the lock is over at its end
	if snap := s.snap(); snap.Status != StatusActivated || snap.AttemptsRemaining != 5 || !snap.LockedUntil.IsZero() {
		t.Fatalf("after the lock: %+v", snap)
	}
	events, err := s.failTOTP(4)
	if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != 1 {
		t.Fatalf("attempts remaining = %d, want 1", de.AttemptsRemaining)
	}
	if f := event[*TOTPCheckFailed](t, events, 0); f.ConsecutiveFailures != 4 {
		t.Fatalf("failures = %d, want 4 counted anew", f.ConsecutiveFailures)
	}

	events, err = s.failTOTP(1)
	wantTypes(t, events, "TOTPCheckFailed", "TwoFactorLocked")
	second := event[*TwoFactorLocked](t, events, 1)
	if second.Lockout != 2 || !second.Until.Equal(s.now.Add(30*time.Minute)) {
		t.Fatalf("second lock = %+v, want lockout 2 for 30 m", second)
	}
	if de := wantErr(t, err, KindLocked, CodeLocked); de.RetryAfterSeconds != 1800 {
		t.Fatalf("retry after = %d, want 1800", de.RetryAfterSeconds)
	}
}

func TestLockout_DoublesAndIsCappedAt24Hours(t *testing.T) {
	want := []time.Duration{
		15 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour, 4 * time.Hour,
		8 * time.Hour, 16 * time.Hour, 24 * time.Hour, 24 * time.Hour, 24 * time.Hour, 24 * time.Hour, 24 * time.Hour,
	}
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	for i, d := range want {
		events, err := s.failTOTP(5)
		lock := event[*TwoFactorLocked](t, events, 1)
		if lock.Lockout != i+1 || lock.Until.Sub(s.now) != d {
			t.Fatalf("lockout %d lasts %v (lockout=%d), want %v", i+1, lock.Until.Sub(s.now), lock.Lockout, d)
		}
		if de := wantErr(t, err, KindLocked, CodeLocked); de.RetryAfterSeconds != int(d/time.Second) {
			t.Fatalf("retry after %d s, want %v", de.RetryAfterSeconds, d)
		}
		s.now = lock.Until
	}
}

func TestLockout_CapFollowsThePolicy(t *testing.T) {
	s := given(t, totpEnabled(1000)...).
		withPolicy(func(p *Policy) {
			p.LockoutDuration = 10 * time.Minute
			p.LockoutMaxDuration = 25 * time.Minute
			p.LockoutThreshold = 3
		}).
		wait(time.Minute)
	for _, d := range []time.Duration{10 * time.Minute, 20 * time.Minute, 25 * time.Minute, 25 * time.Minute} {
		events, _ := s.failTOTP(3)
		wantTypes(t, events, "TOTPCheckFailed", "TwoFactorLocked")
		lock := event[*TwoFactorLocked](t, events, 1)
		if got := lock.Until.Sub(s.now); got != d {
			t.Fatalf("lock lasts %v, want %v", got, d)
		}
		s.now = lock.Until
	}
}

func TestLockout_ThresholdFollowsThePolicy(t *testing.T) {
	for _, threshold := range []int{1, 3, 100} {
		t.Run(fmt.Sprint(threshold), func(t *testing.T) {
			s := given(t, totpEnabled(1000)...).withPolicy(func(p *Policy) { p.LockoutThreshold = threshold }).wait(time.Minute)
			if threshold > 1 {
				_, err := s.failTOTP(threshold - 1)
				if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != 1 {
					t.Fatalf("attempts remaining = %d, want 1", de.AttemptsRemaining)
				}
			}
			events, err := s.failTOTP(1)
			wantTypes(t, events, "TOTPCheckFailed", "TwoFactorLocked")
			wantErr(t, err, KindLocked, CodeLocked)
		})
	}
}

func TestLockout_SuccessResetsTheEscalation(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	events, _ := s.failTOTP(5)
	s.now = event[*TwoFactorLocked](t, events, 1).Until
	events, _ = s.failTOTP(5)
	if l := event[*TwoFactorLocked](t, events, 1); l.Lockout != 2 {
		t.Fatalf("lockout = %d, want 2", l.Lockout)
	}
	s.now = event[*TwoFactorLocked](t, events, 1).Until

	s.must(s.u.VerifyTOTP(s.user(), []int64{5000}))

	events, _ = s.failTOTP(5)
	lock := event[*TwoFactorLocked](t, events, 1)
	if lock.Lockout != 1 || lock.Until.Sub(s.now) != 15*time.Minute {
		t.Fatalf("lock after a success = %+v, want lockout 1 for 15 m", lock)
	}
}

func TestLockout_SuccessResetsTheConsecutiveFailures(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	s.failTOTP(4)
	s.must(s.u.VerifyTOTP(s.user(), []int64{1001}))
	if got := s.snap().AttemptsRemaining; got != 5 {
		t.Fatalf("attempts remaining after success = %d, want 5", got)
	}
	_, err := s.failTOTP(1)
	if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining = %d, want 4", de.AttemptsRemaining)
	}
}

func TestLockout_FailuresOfEveryMethodCountTogether(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).and(challenge(MethodEmail, t0)).wait(time.Minute)

	s.failTOTP(2)
	for i := 0; i < 2; i++ {
		events, _ := s.u.ConsumeBackupCode(s.user(), []byte("unknown"))
		wantTypes(t, events, "BackupCodeCheckFailed")
		s.record(events)
	}
	events, err := s.u.VerifyOTP(s.user(), MethodEmail, false)

	wantTypes(t, events, "OTPCheckFailed", "TwoFactorLocked")
	if f := event[*OTPCheckFailed](t, events, 0); f.ConsecutiveFailures != 5 {
		t.Fatalf("failures = %d, want 5", f.ConsecutiveFailures)
	}
	wantErr(t, err, KindLocked, CodeLocked)
}

func TestUnlock_ByAnAdminLiftsTheLock(t *testing.T) {
	for _, a := range []Actor{asAdmin, asSuper} {
		s := given(t, totpEnabled(1000)...).wait(time.Minute)
		s.failTOTP(5)
		s.wait(time.Minute)

		events, err := s.u.Unlock(s.env(a))

		wantNoError(t, err)
		wantTypes(t, events, "TwoFactorUnlocked")
		s.record(events)
		snap := s.snap()
		if snap.Status != StatusActivated || snap.AttemptsRemaining != 5 || !snap.LockedUntil.IsZero() {
			t.Fatalf("snapshot after unlock = %+v", snap)
		}
		events, err = s.u.VerifyTOTP(s.user(), []int64{1003})
		wantNoError(t, err)
		wantTypes(t, events, "TOTPVerified")
	}
}

// An admin's unlock does not prove that the failures were the user's: the
// escalation continues until the user succeeds.
func TestUnlock_KeepsTheEscalation(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	s.failTOTP(5)
	s.must(s.u.Unlock(s.admin()))

	events, _ := s.failTOTP(5)

	if l := event[*TwoFactorLocked](t, events, 1); l.Lockout != 2 || l.Until.Sub(s.now) != 30*time.Minute {
		t.Fatalf("lock after unlock = %+v, want the second lockout (30 m)", l)
	}
}

func TestUnlock_NeedsAnAdmin(t *testing.T) {
	for _, a := range []Actor{asUser, asOther, asSystem, asAuditor} {
		s := given(t, totpEnabled(1000)...).wait(time.Minute)
		s.failTOTP(5)
		events, err := s.u.Unlock(s.env(a))
		refused(t, events, err, KindForbidden, CodeNotAllowed)
		wantStatus(t, s, StatusLocked)
	}
}

func TestUnlock_WhenNotLocked(t *testing.T) {
	t.Run("never locked", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...)
		events, err := s.u.Unlock(s.admin())
		refused(t, events, err, KindPrecondition, CodeNotLocked)
	})
	t.Run("lock expired", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...).wait(time.Minute)
		s.failTOTP(5)
		s.wait(15 * time.Minute)
		events, err := s.u.Unlock(s.admin())
		refused(t, events, err, KindPrecondition, CodeNotLocked)
	})
	t.Run("already unlocked", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...).wait(time.Minute)
		s.failTOTP(5)
		s.must(s.u.Unlock(s.admin()))
		events, err := s.u.Unlock(s.admin())
		refused(t, events, err, KindPrecondition, CodeNotLocked)
	})
}

func TestLockout_DuringEnrolmentCounts(t *testing.T) {
	s := given(t, totpStarted(sealedSecret, t0.Add(15*time.Minute), false))
	for i := 0; i < 4; i++ {
		events, _ := s.u.ConfirmTOTPEnrollment(s.user(), nil, codeSet("new", 10))
		s.record(events)
	}
	events, err := s.u.ConfirmTOTPEnrollment(s.user(), nil, codeSet("new", 10))
	wantTypes(t, events, "TOTPCheckFailed", "TwoFactorLocked")
	wantErr(t, err, KindLocked, CodeLocked)
	s.record(events)
	events, err = s.u.ConfirmTOTPEnrollment(s.user(), []int64{1}, codeSet("new", 10))
	refused(t, events, err, KindLocked, CodeLocked)
}

func TestLockoutFor(t *testing.T) {
	p := DefaultPolicy()
	for n, want := range map[int]time.Duration{
		1: 15 * time.Minute, 2: 30 * time.Minute, 3: time.Hour, 7: 16 * time.Hour, 8: 24 * time.Hour, 50: 24 * time.Hour, 1000: 24 * time.Hour,
	} {
		if got := p.lockoutFor(n); got != want {
			t.Errorf("lockoutFor(%d) = %v, want %v", n, got, want)
		}
	}
}
