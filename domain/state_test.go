package domain

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// A restored state decides exactly like the replayed one.
func TestSavedStateRestoresTheSameAggregate(t *testing.T) {
	s := given(t, concat(totpEnabled(1000), emailAdded())...).
		and(&TOTPCheckFailed{Purpose: CheckLogin, ConsecutiveFailures: 1}, &TogglePermissionChanged{CanToggle: false}).
		and(&OTPChallengeIssued{Method: MethodEmail, SealedDestination: sealedEmail, SealedCode: sealedCode, ExpiresAt: t0.Add(time.Hour)})
	saved, err := s.u.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	restored, err := RestoreUserTwoFactor(s.u.TenantID(), s.u.UserID(), s.u.Version(), saved)
	if err != nil {
		t.Fatal(err)
	}
	// Compared as JSON: time zones and empty maps may differ in representation only.
	a, _ := json.Marshal(s.u.st)
	b, _ := json.Marshal(restored.st)
	if string(a) != string(b) || restored.Version() != s.u.Version() || restored.Snapshot(t0, DefaultPolicy()).Status != StatusActivated {
		t.Fatalf("restored state differs:\n%s\n%s", a, b)
	}
	env := s.user()
	want, wantErr := s.u.VerifyTOTP(env, []int64{2000})
	got, gotErr := restored.VerifyTOTP(env, []int64{2000})
	if !reflect.DeepEqual(want, got) || (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("restored aggregate decides differently: %v %v vs %v %v", want, wantErr, got, gotErr)
	}
}
