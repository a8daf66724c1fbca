package domain

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

// Stored event names are durable: each equals its struct's name and is unique.
func TestEventTypesAreTheirStructNames(t *testing.T) {
	seen := map[string]bool{}
	for _, e := range AllEvents() {
		name := reflect.TypeOf(e).Elem().Name()
		if e.EventType() != name {
			t.Errorf("%T.EventType() = %q, want %q", e, e.EventType(), name)
		}
		if seen[name] {
			t.Errorf("%s listed twice", name)
		}
		seen[name] = true
	}
	for _, name := range []string{
		"TOTPEnrollmentStarted", "TwoFactorEnabled", "MethodSwitched", "BackupCodeConsumed", "BackupCodesRegenerated",
		"TOTPCheckFailed", "TwoFactorLocked", "TwoFactorReset", "TwoFactorDisabled", "UserForgotten", "TenantCreated",
	} {
		if !seen[name] {
			t.Errorf("%s missing from AllEvents", name)
		}
	}
}

func TestNewEvent(t *testing.T) {
	for _, e := range AllEvents() {
		got, ok := NewEvent(e.EventType())
		if !ok || reflect.TypeOf(got) != reflect.TypeOf(e) {
			t.Fatalf("NewEvent(%q) = %T, %v", e.EventType(), got, ok)
		}
	}
	// fresh values: decoding into one never changes another
	a, _ := NewEvent("TwoFactorLocked")
	a.(*TwoFactorLocked).Lockout = 7
	b, _ := NewEvent("TwoFactorLocked")
	if b.(*TwoFactorLocked).Lockout != 0 {
		t.Fatal("NewEvent returned a shared value")
	}
	for _, name := range []string{"", "twofactorenabled", "Nope", "*TwoFactorEnabled"} {
		if e, ok := NewEvent(name); ok || e != nil {
			t.Errorf("NewEvent(%q) = %T, %v", name, e, ok)
		}
	}
}

func TestEventsRoundTripThroughJSON(t *testing.T) {
	at := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, e := range []Event{
		&TenantCreated{Name: "Acme", Policy: DefaultPolicy()},
		totpStarted(sealedSecret, at, true),
		&TOTPEnrollmentConfirmed{Step: 42, Replacement: true, RemovedMethods: []Method{MethodEmail}},
		&BackupCodesGenerated{Hashes: encoded(codeSet("x", 3)), Reason: BackupReasonMethodSwitched},
		&BackupCodeConsumed{Index: 3, Remaining: 2, LowThreshold: 2},
		&TOTPCheckFailed{Purpose: CheckLogin, Replayed: true, ConsecutiveFailures: 3},
		&TwoFactorLocked{Until: at, Lockout: 2},
		&MethodSwitched{From: MethodTOTP, To: MethodEmail, SealedDestination: sealedEmail},
		&TwoFactorDisabled{Reason: DisabledByRecoveryCode},
		&TenantPolicyChanged{Policy: func() Policy {
			p := DefaultPolicy()
			p.WebAuthn = WebAuthnPolicy{RPID: "example.com", Origins: []string{"https://a.example.com"}, UserVerification: UserVerificationRequired, ChallengeTTL: time.Minute}
			return p
		}(), Previous: DefaultPolicy()},
		&SecurityKeyRegistrationStarted{Challenge: "c", UserHandle: "h", UserVerification: UserVerificationPreferred, ExpiresAt: at},
		&SecurityKeyRegistered{KeyID: "k", SealedName: "n", SealedCredential: "c", SignCount: 7, UserVerified: true, AttestationFormat: "packed"},
		&SecurityKeyChallengeIssued{Challenge: "c", UserVerification: UserVerificationRequired, ExpiresAt: at},
		&SecurityKeyUsed{KeyID: "k", SignCount: 8, UserVerified: true},
		&SecurityKeyAssertionFailed{KeyID: "k", Reason: AssertionInvalid, ConsecutiveFailures: 2},
		&SecurityKeyCloneSuspected{KeyID: "k", StoredCount: 8, ReceivedCount: 3, Refused: true},
		&SecurityKeyRemoved{KeyID: "k", Remaining: 1},
	} {
		raw, err := json.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		back, _ := NewEvent(e.EventType())
		if err := json.Unmarshal(raw, back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, e) {
			t.Errorf("%s: %s decoded to %+v", e.EventType(), raw, back)
		}
	}
}

// A policy stored before security keys existed has no relying party: the
// method is not offered, and the policy still validates.
func TestPolicyFromBeforeSecurityKeys(t *testing.T) {
	raw, err := json.Marshal(DefaultPolicy())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "webauthn")
	old, _ := json.Marshal(m)
	var p Policy
	if err := json.Unmarshal(old, &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil || p.methodAllowed(MethodWebAuthn) || p.WebAuthn.challengeTTL() != DefaultWebAuthnChallengeTTL || p.WebAuthn.RequiresUserVerification() {
		t.Fatalf("old policy: %+v, %v", p.WebAuthn, err)
	}
}

// Every event type has only snake_case JSON names (durable field names).
func TestEventFieldsHaveExplicitJSONNames(t *testing.T) {
	for _, e := range AllEvents() {
		typ := reflect.TypeOf(e).Elem()
		for i := 0; i < typ.NumField(); i++ {
			f := typ.Field(i)
			tag, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if tag == "" || tag != strings.ToLower(tag) {
				t.Errorf("%s.%s has json name %q", typ.Name(), f.Name, tag)
			}
		}
	}
}

func TestErrorIs(t *testing.T) {
	err := fmt.Errorf("wrapped: %w", Forbidden(CodeNotAllowed, "no"))
	if !errors.Is(err, &Error{Kind: KindForbidden, Code: CodeNotAllowed}) {
		t.Fatal("kind and code match")
	}
	if !errors.Is(err, &Error{Kind: KindForbidden}) {
		t.Fatal("an empty code matches any code of the kind")
	}
	if errors.Is(err, &Error{Kind: KindForbidden, Code: CodeRequired}) {
		t.Fatal("another code must not match")
	}
	if errors.Is(err, &Error{Kind: KindInvalid, Code: CodeNotAllowed}) {
		t.Fatal("another kind must not match")
	}
	if KindOf(err) != KindForbidden || KindOf(errors.New("x")) != "" || KindOf(nil) != "" {
		t.Fatal("KindOf")
	}
	if de, ok := AsError(err); !ok || de.Code != CodeNotAllowed || de.AttemptsRemaining != -1 {
		t.Fatalf("AsError = %+v, %v", de, ok)
	}
	if got := Invalid(CodeInvalidCode, "invalid code").Error(); got != "invalid: invalid_code: invalid code" {
		t.Fatalf("Error() = %q", got)
	}
	if got := Conflict(CodeTenantExists, "").Error(); got != "conflict: tenant_exists" {
		t.Fatalf("Error() = %q", got)
	}
}

func TestLockedError(t *testing.T) {
	now := t0
	for _, tc := range []struct {
		until time.Time
		want  int
	}{
		{now.Add(15 * time.Minute), 900},
		{now.Add(1500 * time.Millisecond), 2},
		{now.Add(100 * time.Millisecond), 1},
		{now, 1},
	} {
		e := Locked(tc.until, now)
		if e.Kind != KindLocked || e.Code != CodeLocked || e.AttemptsRemaining != 0 || e.RetryAfterSeconds != tc.want {
			t.Errorf("Locked(now+%v) = %+v, want retry after %d", tc.until.Sub(now), e, tc.want)
		}
	}
}

func TestActorValidate(t *testing.T) {
	for _, a := range []Actor{asUser, asAdmin, asSuper, asSystem, asAuditor} {
		if err := a.Validate(); err != nil {
			t.Errorf("%+v: %v", a, err)
		}
	}
	for _, a := range []Actor{
		{Kind: "root", ID: "x"}, {Kind: "", ID: "x"}, {Kind: ActorUser, ID: ""},
		{Kind: ActorUser, ID: "a b"}, {Kind: ActorUser, ID: "a\nb"}, {Kind: ActorUser, ID: strings.Repeat("a", 201)},
		{Kind: ActorUser, ID: "a\xffb"},
	} {
		if err := a.Validate(); err == nil {
			t.Errorf("%+v accepted", a)
		} else if KindOf(err) != KindInvalid {
			t.Errorf("%+v: %v", a, err)
		}
	}
}

func TestValidateIdentifier(t *testing.T) {
	for _, id := range []string{"alice", "42", "user@example.com", "ü-ñ", strings.Repeat("a", 200)} {
		if err := ValidateIdentifier("id", id); err != nil {
			t.Errorf("%q: %v", id, err)
		}
	}
	for _, id := range []string{"", " ", "a b", "a\u200bb", "a\u00a0b", strings.Repeat("a", 201)} {
		if err := ValidateIdentifier("id", id); err == nil {
			t.Errorf("%q accepted", id)
		} else {
			wantErr(t, err, KindInvalid, CodeInvalidArgument)
		}
	}
	// What no input may hold at all has its own code, naming the field.
	for _, id := range []string{"a\tb", "a\x00b", "\xc3", "a\x7fb", "a\u0085b"} {
		err := ValidateIdentifier("user id", id)
		wantErr(t, err, KindInvalid, CodeInvalidInput)
		if de, _ := AsError(err); de.Field != "user_id" {
			t.Errorf("%q: field %q", id, de.Field)
		}
	}
}

func TestParseMethod(t *testing.T) {
	for _, s := range []string{"totp", "email", "sms"} {
		if m, err := ParseMethod(s); err != nil || string(m) != s {
			t.Errorf("ParseMethod(%q) = %q, %v", s, m, err)
		}
	}
	for _, s := range []string{"", "TOTP", "backup_code", "push"} {
		if _, err := ParseMethod(s); err == nil {
			t.Errorf("ParseMethod(%q) accepted", s)
		} else {
			wantErr(t, err, KindInvalid, "invalid_method")
		}
	}
}
