package domain

import (
	"testing"
	"time"
)

// withRP gives the story's tenant a relying party.
func withRP(p *Policy) {
	p.WebAuthn.RPID = "example.com"
	p.WebAuthn.Origins = []string{"https://login.example.com"}
}

func keyRegistration(challenge, id string, count uint32) KeyRegistration {
	return KeyRegistration{
		Challenge: challenge, KeyID: id, SealedName: "sealed-name-" + id, SealedCredential: "sealed-cred-" + id,
		SignCount: count, UserVerified: true, Format: "packed",
	}
}

// keyEnabled: the user's first method is a security key "k1" at counter 5.
func keyEnabled() []Event {
	return []Event{
		&SecurityKeyRegistrationStarted{Challenge: "reg-1", UserHandle: "handle-1", UserVerification: UserVerificationPreferred, ExpiresAt: t0.Add(5 * time.Minute)},
		&SecurityKeyRegistered{KeyID: "k1", SealedName: "n1", SealedCredential: "c1", SignCount: 5, UserVerified: true, AttestationFormat: "none"},
		&BackupCodesGenerated{Hashes: encoded(codeSet("old", 10)), Reason: BackupReasonEnabled},
		&TwoFactorEnabled{Method: MethodWebAuthn},
	}
}

func TestSecurityKey_FirstKeyEnablesTwoFactor(t *testing.T) {
	s := given(t).withPolicy(withRP)

	events, err := s.u.StartSecurityKeyRegistration(s.user(), "reg-1", "handle-1")
	wantNoError(t, err)
	wantTypes(t, events, "SecurityKeyRegistrationStarted")
	if st := event[*SecurityKeyRegistrationStarted](t, events, 0); st.ExpiresAt != t0.Add(5*time.Minute) || st.UserHandle != "handle-1" || st.UserVerification != UserVerificationPreferred {
		t.Fatalf("started = %+v", st)
	}
	s.record(events)
	wantStatus(t, s, StatusPending)
	wantMethods(t, s.snap().PendingMethods, MethodWebAuthn)
	if c, ok := s.u.PendingKeyRegistration(); !ok || c.Challenge != "reg-1" || c.UserHandle != "handle-1" {
		t.Fatalf("pending = %+v, %v", c, ok)
	}

	s.wait(time.Minute)
	events, err = s.u.RegisterSecurityKey(s.user(), keyRegistration("reg-1", "k1", 1), codeSet("new", 10))
	wantNoError(t, err)
	wantTypes(t, events, "SecurityKeyRegistered", "BackupCodesGenerated", "TwoFactorEnabled")
	s.record(events)
	snap := s.snap()
	if snap.Status != StatusActivated || snap.DefaultMethod != MethodWebAuthn || snap.LastVerifiedMethod != MethodWebAuthn {
		t.Fatalf("snapshot = %+v", snap)
	}
	wantMethods(t, snap.Methods, MethodWebAuthn)
	if _, ok := s.u.PendingKeyRegistration(); ok {
		t.Fatal("the registration challenge is spent")
	}

	// A second key keeps the handle, needs no new backup set and is refused on a replayed attestation.
	events = s.must(s.u.StartSecurityKeyRegistration(s.user(), "reg-2", "handle-other"))
	if st := event[*SecurityKeyRegistrationStarted](t, events, 0); st.UserHandle != "handle-1" {
		t.Fatalf("the user handle changed: %+v", st)
	}
	events = s.must(s.u.RegisterSecurityKey(s.user(), keyRegistration("reg-2", "k2", 0), nil))
	wantTypes(t, events, "SecurityKeyRegistered")
	events, err = s.u.RegisterSecurityKey(s.user(), keyRegistration("reg-2", "k3", 0), nil)
	refused(t, events, err, KindPrecondition, CodeNoPendingChallenge)
	if n := len(s.u.SecurityKeys()); n != 2 {
		t.Fatalf("keys = %d", n)
	}
}

func TestSecurityKey_RegistrationRefusals(t *testing.T) {
	t.Run("no relying party", func(t *testing.T) {
		s := given(t)
		events, err := s.u.StartSecurityKeyRegistration(s.user(), "c", "h")
		refused(t, events, err, KindForbidden, CodeMethodDisabled)
	})
	t.Run("expired", func(t *testing.T) {
		s := given(t).withPolicy(withRP)
		s.must(s.u.StartSecurityKeyRegistration(s.user(), "c", "h"))
		s.wait(5 * time.Minute)
		events, err := s.u.RegisterSecurityKey(s.user(), keyRegistration("c", "k1", 0), codeSet("new", 10))
		refused(t, events, err, KindPrecondition, CodeChallengeExpired)
		if len(s.snap().PendingMethods) != 0 {
			t.Fatal("an expired registration is not pending")
		}
	})
	t.Run("other challenge", func(t *testing.T) {
		s := given(t).withPolicy(withRP)
		s.must(s.u.StartSecurityKeyRegistration(s.user(), "c", "h"))
		events, err := s.u.RegisterSecurityKey(s.user(), keyRegistration("other", "k1", 0), codeSet("new", 10))
		refused(t, events, err, KindPrecondition, CodeNoPendingChallenge)
	})
	t.Run("user verification required", func(t *testing.T) {
		s := given(t).withPolicy(withRP).withPolicy(func(p *Policy) { p.WebAuthn.UserVerification = UserVerificationRequired })
		s.must(s.u.StartSecurityKeyRegistration(s.user(), "c", "h"))
		r := keyRegistration("c", "k1", 0)
		r.UserVerified = false
		events, err := s.u.RegisterSecurityKey(s.user(), r, codeSet("new", 10))
		refused(t, events, err, KindInvalid, CodeUserVerificationRequired)
	})
	t.Run("same key twice", func(t *testing.T) {
		s := given(t, keyEnabled()...).withPolicy(withRP)
		s.must(s.u.StartSecurityKeyRegistration(s.user(), "c", "h"))
		r := keyRegistration("c", "k2", 0)
		r.AlreadyRegistered = true
		events, err := s.u.RegisterSecurityKey(s.user(), r, nil)
		refused(t, events, err, KindConflict, CodeSecurityKeyExists)
	})
	t.Run("an admin cannot register a user's key", func(t *testing.T) {
		s := given(t).withPolicy(withRP)
		events, err := s.u.StartSecurityKeyRegistration(s.admin(), "c", "h")
		refused(t, events, err, KindForbidden, CodeNotAllowed)
	})
	t.Run("adding a key later needs a fresh verification", func(t *testing.T) {
		s := given(t, totpEnabled(1000)...).withPolicy(withRP).wait(time.Hour)
		events, err := s.u.StartSecurityKeyRegistration(s.user(), "c", "h")
		refused(t, events, err, KindPrecondition, CodeFreshVerification)
	})
}

func TestSecurityKey_LoginIsSingleUse(t *testing.T) {
	s := given(t, keyEnabled()...).withPolicy(withRP).wait(time.Hour)

	opts, err := s.u.LoginOptions(s.user())
	wantNoError(t, err)
	wantMethods(t, opts.Methods, MethodWebAuthn)

	s.must(s.u.IssueSecurityKeyChallenge(s.user(), "login-1"))
	ok := KeyAssertion{Challenge: "login-1", KeyID: "k1", Valid: true, SignCount: 6, UserVerified: true}
	events := s.must(s.u.VerifySecurityKey(s.user(), ok))
	wantTypes(t, events, "SecurityKeyUsed")
	if s.snap().LastVerifiedMethod != MethodWebAuthn || s.u.SecurityKeys()[0].SignCount != 6 || s.u.SecurityKeys()[0].LastUsedAt != s.now {
		t.Fatalf("after use: %+v %+v", s.snap(), s.u.SecurityKeys())
	}

	// The same answer again: the challenge is spent.
	events, err = s.u.VerifySecurityKey(s.user(), ok)
	refused(t, events, err, KindPrecondition, CodeNoPendingChallenge)
	// An answer to an older challenge after a newer one was issued.
	s.must(s.u.IssueSecurityKeyChallenge(s.user(), "login-2"))
	ok.SignCount = 7
	events, err = s.u.VerifySecurityKey(s.user(), ok)
	refused(t, events, err, KindPrecondition, CodeNoPendingChallenge)
	// An expired challenge.
	s.wait(5 * time.Minute)
	ok.Challenge = "login-2"
	events, err = s.u.VerifySecurityKey(s.user(), ok)
	refused(t, events, err, KindPrecondition, CodeChallengeExpired)
}

func TestSecurityKey_FailedAssertionsCountAndSpendTheChallenge(t *testing.T) {
	s := given(t, keyEnabled()...).withPolicy(withRP).wait(time.Hour)
	wantReasons := []string{AssertionInvalid, AssertionUnknownKey, AssertionUserNotVerified}
	for i, a := range []KeyAssertion{
		{KeyID: "k1", Valid: false, SignCount: 6},
		{KeyID: "nope", Valid: true, SignCount: 6},
		{KeyID: "k1", Valid: true, SignCount: 6, UserVerified: false},
	} {
		if i == 2 {
			s.withPolicy(func(p *Policy) { p.WebAuthn.UserVerification = UserVerificationRequired })
		}
		challenge := "c" + string(rune('0'+i))
		s.must(s.u.IssueSecurityKeyChallenge(s.user(), challenge))
		a.Challenge = challenge
		events, err := s.u.VerifySecurityKey(s.user(), a)
		wantTypes(t, events, "SecurityKeyAssertionFailed")
		if f := event[*SecurityKeyAssertionFailed](t, events, 0); f.Reason != wantReasons[i] || f.ConsecutiveFailures != i+1 {
			t.Fatalf("failed = %+v", f)
		}
		if e := wantErr(t, err, KindInvalid, CodeInvalidCode); e.AttemptsRemaining != 4-i {
			t.Fatalf("attempts remaining = %d", e.AttemptsRemaining)
		}
		s.record(events)
		if _, open := s.u.PendingKeyChallenge(); open {
			t.Fatal("a failed answer spends the challenge")
		}
	}
	// The fifth failure locks, and a locked user gets no challenge.
	for i := 0; i < 2; i++ {
		s.must(s.u.IssueSecurityKeyChallenge(s.user(), "x"))
		events, _ := s.u.VerifySecurityKey(s.user(), KeyAssertion{Challenge: "x", KeyID: "k1"})
		s.record(events)
	}
	wantStatus(t, s, StatusLocked)
	events, err := s.u.IssueSecurityKeyChallenge(s.user(), "y")
	refused(t, events, err, KindLocked, CodeLocked)
}

func TestSecurityKey_CounterGoingBackIsAPossibleClone(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(map[bool]string{false: "refused", true: "allowed"}[allow], func(t *testing.T) {
			s := given(t, keyEnabled()...).withPolicy(withRP).withPolicy(func(p *Policy) { p.WebAuthn.AllowClonedKeys = allow })
			s.must(s.u.IssueSecurityKeyChallenge(s.user(), "c"))
			events, err := s.u.VerifySecurityKey(s.user(), KeyAssertion{Challenge: "c", KeyID: "k1", Valid: true, SignCount: 5})
			clone := event[*SecurityKeyCloneSuspected](t, events, 0)
			if clone.KeyID != "k1" || clone.StoredCount != 5 || clone.ReceivedCount != 5 || clone.Refused == allow {
				t.Fatalf("clone = %+v", clone)
			}
			if allow {
				wantNoError(t, err)
				wantTypes(t, events, "SecurityKeyCloneSuspected", "SecurityKeyUsed")
			} else {
				wantErr(t, err, KindForbidden, CodeSecurityKeyCloned)
				wantTypes(t, events, "SecurityKeyCloneSuspected")
			}
			s.record(events)
			k := s.u.SecurityKeys()[0]
			if !k.CloneSuspected || k.SignCount != 5 {
				t.Fatalf("key = %+v", k)
			}
			if _, open := s.u.PendingKeyChallenge(); open {
				t.Fatal("the challenge is spent")
			}
		})
	}
	t.Run("a key that does not count", func(t *testing.T) {
		s := given(t, keyEnabled()[0], &SecurityKeyRegistered{KeyID: "k1", SealedName: "n", SealedCredential: "c", SignCount: 0},
			&BackupCodesGenerated{Hashes: encoded(codeSet("old", 10))}, &TwoFactorEnabled{Method: MethodWebAuthn}).withPolicy(withRP)
		s.must(s.u.IssueSecurityKeyChallenge(s.user(), "c"))
		events := s.must(s.u.VerifySecurityKey(s.user(), KeyAssertion{Challenge: "c", KeyID: "k1", Valid: true, SignCount: 0}))
		wantTypes(t, events, "SecurityKeyUsed")
	})
}

func TestSecurityKey_Removal(t *testing.T) {
	s := given(t, keyEnabled()...).withPolicy(withRP)
	events, err := s.u.RemoveSecurityKey(s.user(), "k1")
	refused(t, events, err, KindPrecondition, CodeLastMethod)
	events, err = s.u.RemoveSecurityKey(s.user(), "nope")
	refused(t, events, err, KindNotFound, CodeSecurityKeyNotFound)

	s.and(emailAdded()...)
	// An email code alone never removes a security key.
	s.wait(time.Hour).and(challenge(MethodEmail, s.now), &OTPVerified{Method: MethodEmail})
	events, err = s.u.RemoveSecurityKey(s.user(), "k1")
	refused(t, events, err, KindForbidden, CodeStrongerMethod)
	// The key itself (or an admin) may.
	s.must(s.u.IssueSecurityKeyChallenge(s.user(), "c"))
	s.must(s.u.VerifySecurityKey(s.user(), KeyAssertion{Challenge: "c", KeyID: "k1", Valid: true, SignCount: 9}))
	events = s.must(s.u.RemoveSecurityKey(s.user(), "k1"))
	if r := event[*SecurityKeyRemoved](t, events, 0); r.KeyID != "k1" || r.Remaining != 0 {
		t.Fatalf("removed = %+v", r)
	}
	snap := s.snap()
	wantMethods(t, snap.Methods, MethodEmail)
	if snap.DefaultMethod != MethodEmail {
		t.Fatalf("default = %q", snap.DefaultMethod)
	}
}

func TestSecurityKey_SatisfiesFreshVerification(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).withPolicy(withRP)
	s.and(&SecurityKeyRegistrationStarted{Challenge: "r", UserHandle: "h", ExpiresAt: t0.Add(time.Minute)},
		&SecurityKeyRegistered{KeyID: "k1", SealedName: "n", SealedCredential: "c", SignCount: 1})
	s.wait(time.Hour)
	s.must(s.u.IssueSecurityKeyChallenge(s.user(), "c"))
	s.must(s.u.VerifySecurityKey(s.user(), KeyAssertion{Challenge: "c", KeyID: "k1", Valid: true, SignCount: 2}))
	s.must(s.u.RemoveMethod(s.user(), MethodTOTP))
	s.must(s.u.RegenerateBackupCodes(s.user(), codeSet("new", 10)))
}

func TestSecurityKey_ErasureAndResetWipeTheKeys(t *testing.T) {
	for name, e := range map[string]Event{"forget": &UserForgotten{}, "reset": &TwoFactorReset{}, "disable": &TwoFactorDisabled{Reason: DisabledByAdmin}} {
		t.Run(name, func(t *testing.T) {
			s := given(t, keyEnabled()...).withPolicy(withRP)
			s.must(s.u.IssueSecurityKeyChallenge(s.user(), "c"))
			s.and(e)
			if len(s.u.SecurityKeys()) != 0 || len(s.snap().Methods) != 0 {
				t.Fatalf("keys survive %s: %+v", name, s.u.SecurityKeys())
			}
			if _, open := s.u.PendingKeyChallenge(); open {
				t.Fatal("a challenge survives")
			}
		})
	}
}

func TestSecurityKey_SwitchToEmailRemovesKeys(t *testing.T) {
	s := given(t, keyEnabled()...).withPolicy(withRP)
	events := s.must(s.u.SwitchMethod(s.admin(), MethodEmail, sealedEmail))
	if sw := event[*MethodSwitched](t, events, 0); len(sw.RemovedMethods) != 1 || sw.RemovedMethods[0] != MethodWebAuthn {
		t.Fatalf("switched = %+v", sw)
	}
	wantMethods(t, s.snap().Methods, MethodEmail)

	events, err := s.u.SwitchMethod(s.admin(), MethodWebAuthn, "")
	refused(t, events, err, KindInvalid, "invalid_method")
}

func TestWebAuthnPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		name  string
		w     WebAuthnPolicy
		valid bool
	}{
		{"none", WebAuthnPolicy{}, true},
		{"rp", WebAuthnPolicy{RPID: "example.com", Origins: []string{"https://example.com", "https://a.example.com:8443"}}, true},
		{"localhost", WebAuthnPolicy{RPID: "localhost", Origins: []string{"http://localhost:8080"}}, true},
		{"origins without rp", WebAuthnPolicy{Origins: []string{"https://example.com"}}, false},
		{"rp without origins", WebAuthnPolicy{RPID: "example.com"}, false},
		{"upper case", WebAuthnPolicy{RPID: "Example.com", Origins: []string{"https://example.com"}}, false},
		{"origin elsewhere", WebAuthnPolicy{RPID: "example.com", Origins: []string{"https://example.org"}}, false},
		{"suffix trick", WebAuthnPolicy{RPID: "example.com", Origins: []string{"https://evilexample.com"}}, false},
		{"http", WebAuthnPolicy{RPID: "example.com", Origins: []string{"http://example.com"}}, false},
		{"path", WebAuthnPolicy{RPID: "example.com", Origins: []string{"https://example.com/login"}}, false},
		{"uv", WebAuthnPolicy{UserVerification: "discouraged"}, false},
		{"ttl", WebAuthnPolicy{ChallengeTTL: time.Hour}, false},
		{"name", WebAuthnPolicy{RPName: "a\x00b"}, false},
	} {
		p := DefaultPolicy()
		p.WebAuthn = tc.w
		if err := p.Validate(); (err == nil) != tc.valid {
			t.Errorf("%s: Validate() = %v, want valid %v", tc.name, err, tc.valid)
		}
	}
}
