package domain

import (
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"
)

// The given/when/then vocabulary of the domain tests:
//
//	s := given(t, someEvents...)   // a user's history, applied at t0
//	s.wait(21 * time.Minute)       // the clock moves
//	events, err := s.u.VerifyTOTP(s.user(), []int64{1001})   // when
//	wantTypes(t, events, "TOTPVerified"); wantNoError(t, err) // then
//	s.record(events)               // the story goes on with what was decided

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	tenantID = "tenant-1"
	userID   = "alice"
)

var (
	asUser    = Actor{Kind: ActorUser, ID: userID}
	asOther   = Actor{Kind: ActorUser, ID: "bob"}
	asAdmin   = Actor{Kind: ActorAdmin, ID: "admin-1"}
	asSuper   = Actor{Kind: ActorSuperAdmin, ID: "root"}
	asSystem  = Actor{Kind: ActorSystem, ID: "system"}
	asAuditor = Actor{Kind: ActorAuditor, ID: "auditor-1"}
	// the user themself holding an admin role
	asSelfAdmin = Actor{Kind: ActorAdmin, ID: userID}
	asSelfSuper = Actor{Kind: ActorSuperAdmin, ID: userID}
)

// story is one user's aggregate, a clock and the tenant's policy.
type story struct {
	t      *testing.T
	u      *UserTwoFactor
	now    time.Time
	policy Policy
}

// given starts a story at t0 with the default policy; events are applied at t0.
func given(t *testing.T, events ...Event) *story {
	t.Helper()
	s := &story{t: t, u: NewUserTwoFactor(tenantID, userID), now: t0, policy: DefaultPolicy()}
	s.record(events)
	return s
}

// and applies more history at the current time.
func (s *story) and(events ...Event) *story {
	s.t.Helper()
	s.record(events)
	return s
}

// withPolicy changes the tenant policy in force from now on.
func (s *story) withPolicy(change func(p *Policy)) *story {
	s.t.Helper()
	change(&s.policy)
	if err := s.policy.Validate(); err != nil {
		s.t.Fatalf("test policy is invalid: %v", err)
	}
	return s
}

// wait moves the clock forward.
func (s *story) wait(d time.Duration) *story {
	s.now = s.now.Add(d)
	return s
}

// record applies decided events at the current time, as the command layer does.
func (s *story) record(events []Event) {
	s.t.Helper()
	for _, e := range events {
		s.u.Apply(e, s.now)
	}
}

// must records the events of a decision that has to succeed.
func (s *story) must(events []Event, err error) []Event {
	s.t.Helper()
	if err != nil {
		s.t.Fatalf("decision failed: %v", err)
	}
	if len(events) == 0 {
		s.t.Fatalf("decision succeeded without events")
	}
	s.record(events)
	return events
}

func (s *story) env(a Actor) Env { return Env{Now: s.now, Actor: a, Policy: s.policy} }
func (s *story) user() Env       { return s.env(asUser) }
func (s *story) admin() Env      { return s.env(asAdmin) }
func (s *story) snap() Snapshot  { return s.u.Snapshot(s.now, s.policy) }

// ---- history fixtures ----

const (
	sealedSecret  = "sealed-secret-1"
	sealedSecret2 = "sealed-secret-2"
	sealedEmail   = "sealed-alice@example.com"
	sealedPhone   = "sealed-+15550100"
	sealedCode    = "sealed-code"
)

// codeSet is a backup code set given by arbitrary bytes as its keyed hashes.
func codeSet(prefix string, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte(fmt.Sprintf("%s-hash-%02d", prefix, i))
	}
	return out
}

func encoded(set [][]byte) []string {
	out := make([]string, len(set))
	for i, h := range set {
		out[i] = base64.StdEncoding.EncodeToString(h)
	}
	return out
}

func totpParams(secret string) TOTPParams {
	return TOTPParams{SealedSecret: secret, Algorithm: "SHA1", Digits: 6, PeriodSecs: 30}
}

func totpStarted(secret string, expires time.Time, replacement bool) *TOTPEnrollmentStarted {
	return &TOTPEnrollmentStarted{SealedSecret: secret, Algorithm: "SHA1", Digits: 6, PeriodSecs: 30, ExpiresAt: expires, Replacement: replacement}
}

// totpEnabled: the user enrolled an authenticator at step `step` and got the backup set "old".
func totpEnabled(step int64) []Event {
	return []Event{
		totpStarted(sealedSecret, t0.Add(15*time.Minute), false),
		&TOTPEnrollmentConfirmed{Step: step},
		&BackupCodesGenerated{Hashes: encoded(codeSet("old", 10)), Reason: BackupReasonEnabled},
		&TwoFactorEnabled{Method: MethodTOTP},
	}
}

// otpEnabled: the user's first method is email or sms, with the backup set "old".
func otpEnabled(m Method, dest string) []Event {
	return []Event{
		&OTPMethodSetupStarted{Method: m, SealedDestination: dest, SealedCode: sealedCode, ExpiresAt: t0.Add(10 * time.Minute)},
		&OTPMethodConfirmed{Method: m},
		&BackupCodesGenerated{Hashes: encoded(codeSet("old", 10)), Reason: BackupReasonEnabled},
		&TwoFactorEnabled{Method: m},
	}
}

// emailAdded: an enabled user adds email as a further method.
func emailAdded() []Event {
	return []Event{
		&OTPMethodSetupStarted{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(time.Hour)},
		&OTPMethodConfirmed{Method: MethodEmail},
	}
}

func challenge(m Method, issued time.Time) *OTPChallengeIssued {
	return &OTPChallengeIssued{Method: m, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: issued.Add(10 * time.Minute)}
}

func concat(parts ...[]Event) []Event {
	var out []Event
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// ---- then ----

func typesOf(events []Event) []string {
	out := make([]string, len(events))
	for i, e := range events {
		out[i] = e.EventType()
	}
	return out
}

func wantTypes(t *testing.T, events []Event, want ...string) {
	t.Helper()
	if got := typesOf(events); !reflect.DeepEqual(got, want) && !(len(got) == 0 && len(want) == 0) {
		t.Fatalf("events = %v, want %v", got, want)
	}
}

func wantNoEvents(t *testing.T, events []Event) {
	t.Helper()
	if len(events) != 0 {
		t.Fatalf("events = %v, want none", typesOf(events))
	}
}

func wantNoError(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("unexpected error: %v", err)
	}
}

// wantErr asserts a domain error of exactly this kind and code.
func wantErr(t *testing.T, err error, kind Kind, code string) *Error {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %s/%s", kind, code)
	}
	if !errors.Is(err, &Error{Kind: kind, Code: code}) {
		t.Fatalf("error = %v, want %s/%s", err, kind, code)
	}
	de, ok := AsError(err)
	if !ok || de.Kind != kind || de.Code != code {
		t.Fatalf("error = %#v, want %s/%s", err, kind, code)
	}
	return de
}

// refused: a decision refused with no events.
func refused(t *testing.T, events []Event, err error, kind Kind, code string) *Error {
	t.Helper()
	wantNoEvents(t, events)
	return wantErr(t, err, kind, code)
}

// event returns the i-th event as a T.
func event[T Event](t *testing.T, events []Event, i int) T {
	t.Helper()
	if i >= len(events) {
		t.Fatalf("no event %d in %v", i, typesOf(events))
	}
	e, ok := events[i].(T)
	if !ok {
		var zero T
		t.Fatalf("event %d is %T, want %T", i, events[i], zero)
	}
	return e
}

func wantMethods(t *testing.T, got []Method, want ...Method) {
	t.Helper()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("methods = %v, want %v", got, want)
	}
}

func wantStatus(t *testing.T, s *story, want Status) {
	t.Helper()
	if got := s.snap().Status; got != want {
		t.Fatalf("status = %q, want %q", got, want)
	}
}
