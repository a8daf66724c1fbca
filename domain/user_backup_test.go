package domain

import (
	"reflect"
	"testing"
	"time"
)

func TestConsumeBackupCode_ByHash(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Hour)
	old := codeSet("old", 10)

	events, err := s.u.ConsumeBackupCode(s.user(), old[3])

	wantNoError(t, err)
	wantTypes(t, events, "BackupCodeConsumed")
	if got, want := *event[*BackupCodeConsumed](t, events, 0), (BackupCodeConsumed{Index: 3, Remaining: 9, LowThreshold: 2}); got != want {
		t.Fatalf("consumed = %+v, want %+v", got, want)
	}
	s.record(events)
	snap := s.snap()
	if snap.BackupCodesRemaining != 9 || s.u.BackupCodesRemaining() != 9 || snap.LastVerifiedMethod != MethodBackup || !snap.LastVerifiedAt.Equal(s.now) {
		t.Fatalf("snapshot = %+v", snap)
	}
	if !snap.Enabled || snap.Status != StatusActivated {
		t.Fatalf("a backup code login keeps 2FA on by default: %+v", snap)
	}
}

func TestConsumeBackupCode_CountsDownToZeroWithThePolicyThreshold(t *testing.T) {
	s := given(t, totpEnabled(1000)...).withPolicy(func(p *Policy) { p.LowBackupCodesWarn = 3 }).wait(time.Hour)
	old := codeSet("old", 10)
	order := []int{9, 0, 5, 1, 8, 2, 7, 3, 6, 4}
	for i, idx := range order {
		events := s.must(s.u.ConsumeBackupCode(s.user(), old[idx]))
		want := BackupCodeConsumed{Index: idx, Remaining: 9 - i, LowThreshold: 3}
		if got := *event[*BackupCodeConsumed](t, events, 0); got != want {
			t.Fatalf("use %d: consumed = %+v, want %+v", i+1, got, want)
		}
	}
	if s.u.BackupCodesRemaining() != 0 {
		t.Fatalf("remaining = %d", s.u.BackupCodesRemaining())
	}
	events, err := s.u.ConsumeBackupCode(s.user(), old[4])
	wantTypes(t, events, "BackupCodeCheckFailed")
	wantErr(t, err, KindInvalid, CodeInvalidCode)
}

func TestConsumeBackupCode_TheSameCodeTwice(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Hour)
	code := codeSet("old", 10)[7]
	s.must(s.u.ConsumeBackupCode(s.user(), code))

	events, err := s.u.ConsumeBackupCode(s.user(), code)

	wantTypes(t, events, "BackupCodeCheckFailed")
	if f := event[*BackupCodeCheckFailed](t, events, 0); f.ConsecutiveFailures != 1 {
		t.Fatalf("failed = %+v", f)
	}
	if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining = %d", de.AttemptsRemaining)
	}
	s.record(events)
	if s.u.BackupCodesRemaining() != 9 {
		t.Fatalf("remaining = %d, want 9", s.u.BackupCodesRemaining())
	}
}

func TestConsumeBackupCode_UnknownCodesCountTowardLockout(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Hour)
	for i, want := range []int{4, 3, 2, 1} {
		events, err := s.u.ConsumeBackupCode(s.user(), []byte{0xde, 0xad, byte(i)})
		wantTypes(t, events, "BackupCodeCheckFailed")
		if f := event[*BackupCodeCheckFailed](t, events, 0); f.ConsecutiveFailures != i+1 {
			t.Fatalf("failures = %d, want %d", f.ConsecutiveFailures, i+1)
		}
		if de := wantErr(t, err, KindInvalid, CodeInvalidCode); de.AttemptsRemaining != want {
			t.Fatalf("attempts remaining = %d, want %d", de.AttemptsRemaining, want)
		}
		s.record(events)
	}

	events, err := s.u.ConsumeBackupCode(s.user(), []byte("still wrong"))

	wantTypes(t, events, "BackupCodeCheckFailed", "TwoFactorLocked")
	if l := event[*TwoFactorLocked](t, events, 1); !l.Until.Equal(s.now.Add(15 * time.Minute)) {
		t.Fatalf("locked until %v", l.Until)
	}
	wantErr(t, err, KindLocked, CodeLocked)
	s.record(events)
	// a valid code does not get through the lock
	events, err = s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0])
	refused(t, events, err, KindLocked, CodeLocked)
	if s.u.BackupCodesRemaining() != 10 {
		t.Fatal("no code is used during a lock")
	}
}

func TestConsumeBackupCode_APrefixOrExtensionOfAHashDoesNotMatch(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Hour)
	h := codeSet("old", 10)[2]
	for _, bad := range [][]byte{h[:len(h)-1], append(append([]byte{}, h...), 0), {}, nil} {
		events, err := s.u.ConsumeBackupCode(s.user(), bad)
		wantTypes(t, events, "BackupCodeCheckFailed")
		wantErr(t, err, KindInvalid, CodeInvalidCode)
	}
}

func TestConsumeBackupCode_NotEnabled(t *testing.T) {
	for name, history := range map[string][]Event{
		"never enabled": nil,
		"pending":       {totpStarted(sealedSecret, t0.Add(time.Hour), false)},
		"disabled":      append(totpEnabled(1000), &TwoFactorDisabled{Reason: DisabledByAdmin}),
		"reset":         append(totpEnabled(1000), &TwoFactorReset{}),
	} {
		t.Run(name, func(t *testing.T) {
			s := given(t, history...).wait(time.Minute)
			events, err := s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0])
			refused(t, events, err, KindPrecondition, CodeNotEnrolled)
		})
	}
}

func TestConsumeBackupCode_OnlyTheUser(t *testing.T) {
	for _, a := range []Actor{asOther, asAdmin, asSuper, asSystem} {
		s := given(t, totpEnabled(1000)...)
		events, err := s.u.ConsumeBackupCode(s.env(a), codeSet("old", 10)[0])
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
}

func TestConsumeBackupCode_RecoveryCodeDisablesPolicy(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).
		withPolicy(func(p *Policy) { p.RecoveryCodeDisables = true }).wait(time.Hour)

	events, err := s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0])

	wantNoError(t, err)
	wantTypes(t, events, "BackupCodeConsumed", "TwoFactorDisabled")
	if c := event[*BackupCodeConsumed](t, events, 0); c.Index != 0 || c.Remaining != 9 {
		t.Fatalf("consumed = %+v", c)
	}
	if d := event[*TwoFactorDisabled](t, events, 1); d.Reason != DisabledByRecoveryCode {
		t.Fatalf("disabled = %+v", d)
	}
	s.record(events)
	snap := s.snap()
	if snap.Enabled || snap.BackupCodesRemaining != 0 || len(snap.Methods) != 0 || snap.DefaultMethod != "" {
		t.Fatalf("snapshot = %+v, want everything switched off", snap)
	}
	if _, ok := s.u.ActiveTOTP(); ok {
		t.Fatal("the authenticator is gone")
	}
	events, err = s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[1])
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
}

func TestRegenerateBackupCodes_ReplacesTheSet(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	old := codeSet("old", 10)
	s.must(s.u.ConsumeBackupCode(s.user(), old[0]))
	s.must(s.u.ConsumeBackupCode(s.user(), old[1]))
	fresh := codeSet("new", 10)

	events, err := s.u.RegenerateBackupCodes(s.user(), fresh)

	wantNoError(t, err)
	wantTypes(t, events, "BackupCodesRegenerated")
	if r := event[*BackupCodesRegenerated](t, events, 0); !reflect.DeepEqual(r.Hashes, encoded(fresh)) {
		t.Fatalf("regenerated = %+v", r)
	}
	s.record(events)
	if s.u.BackupCodesRemaining() != 10 {
		t.Fatalf("remaining = %d, want a full new set", s.u.BackupCodesRemaining())
	}
	events, err = s.u.ConsumeBackupCode(s.user(), old[5])
	wantTypes(t, events, "BackupCodeCheckFailed")
	wantErr(t, err, KindInvalid, CodeInvalidCode)
	s.record(events)

	events = s.must(s.u.ConsumeBackupCode(s.user(), fresh[5]))
	if c := event[*BackupCodeConsumed](t, events, 0); c.Index != 5 || c.Remaining != 9 {
		t.Fatalf("consumed = %+v", c)
	}
}

func TestRegenerateBackupCodes_WrongSetSize(t *testing.T) {
	for _, tc := range []struct{ count, size int }{{10, 9}, {10, 11}, {10, 0}, {5, 10}, {20, 10}} {
		s := given(t, totpEnabled(1000)...).withPolicy(func(p *Policy) { p.BackupCodeCount = tc.count; p.LowBackupCodesWarn = 2 }).wait(time.Minute)
		events, err := s.u.RegenerateBackupCodes(s.user(), codeSet("new", tc.size))
		refused(t, events, err, KindInvalid, CodeInvalidArgument)
	}
	s := given(t, totpEnabled(1000)...).withPolicy(func(p *Policy) { p.BackupCodeCount = 5 }).wait(time.Minute)
	s.must(s.u.RegenerateBackupCodes(s.user(), codeSet("new", 5)))
	if s.u.BackupCodesRemaining() != 5 {
		t.Fatalf("remaining = %d", s.u.BackupCodesRemaining())
	}
}

func TestRegenerateBackupCodes_NotEnabled(t *testing.T) {
	s := given(t)
	events, err := s.u.RegenerateBackupCodes(s.user(), codeSet("new", 10))
	refused(t, events, err, KindPrecondition, CodeNotEnrolled)
}

// Whoever regenerates sees the codes: an admin holding them could log in as the user.
func TestRegenerateBackupCodes_NotByAnAdmin(t *testing.T) {
	s := given(t, totpEnabled(1000)...)
	for _, a := range []Actor{asAdmin, asSuper} {
		events, err := s.u.RegenerateBackupCodes(s.env(a), codeSet("new", 10))
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
}

func TestRegenerateBackupCodes_NotForAnotherUser(t *testing.T) {
	s := given(t, totpEnabled(1000)...)
	for _, a := range []Actor{asOther, asSystem, asAuditor} {
		events, err := s.u.RegenerateBackupCodes(s.env(a), codeSet("new", 10))
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	}
}

func TestConsumeBackupCode_AnUnreadableStoredHashNeverMatches(t *testing.T) {
	set := append(encoded(codeSet("x", 9)), "%%% not base64 %%%")
	s := given(t, totpEnabled(1000)...).and(&BackupCodesRegenerated{Hashes: set}).wait(time.Minute)
	for _, presented := range [][]byte{nil, {}} {
		events, err := s.u.ConsumeBackupCode(s.user(), presented)
		wantTypes(t, events, "BackupCodeCheckFailed")
		wantErr(t, err, KindInvalid, CodeInvalidCode)
	}
}

func TestRegenerateBackupCodes_RefusesEmptyOrDuplicateHashes(t *testing.T) {
	s := given(t, totpEnabled(1000)...).wait(time.Minute)
	withEmpty := codeSet("new", 10)
	withEmpty[4] = nil
	events, err := s.u.RegenerateBackupCodes(s.user(), withEmpty)
	refused(t, events, err, KindInvalid, CodeInvalidArgument)
	dup := codeSet("new", 10)
	dup[4] = dup[3]
	events, err = s.u.RegenerateBackupCodes(s.user(), dup)
	refused(t, events, err, KindInvalid, CodeInvalidArgument)
}

// "Logging in with a recovery code switches 2FA off, so the user must enrol again":
// even a user who may not toggle 2FA is asked to enrol, and can.
func TestRecoveryCodeDisables_TheUserMustEnrolAgain(t *testing.T) {
	s := given(t, totpEnabled(1000)...).and(&TogglePermissionChanged{CanToggle: false}).
		withPolicy(func(p *Policy) { p.RecoveryCodeDisables = true }).wait(time.Hour)
	s.must(s.u.ConsumeBackupCode(s.user(), codeSet("old", 10)[0]))

	snap := s.snap()
	if snap.Status != StatusDisabled || !snap.MustEnroll || snap.Enabled {
		t.Fatalf("snapshot = %+v, want disabled and must enrol", snap)
	}
	o, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	if !o.EnrollmentRequired || o.Enabled {
		t.Fatalf("login options = %+v, want EnrollmentRequired", o)
	}

	s.must(s.u.StartTOTPEnrollment(s.user(), totpParams(sealedSecret2)))
	events := s.must(s.u.ConfirmTOTPEnrollment(s.user(), []int64{2000}, codeSet("new", 10)))
	wantTypes(t, events, "TOTPEnrollmentConfirmed", "BackupCodesGenerated", "TwoFactorEnabled")
	if o, _ := s.u.LoginOptions(s.user()); o.EnrollmentRequired || !o.Enabled {
		t.Fatalf("login options after enrolling again = %+v", o)
	}
	wantStatus(t, s, StatusActivated)
}
