package projections

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/eventstore"
)

// Changing any policy field outside rowPolicy must not change a derived row:
// otherwise a policy change would leave stale rows until the next rebuild.
func TestRowPolicyCoversWhatSnapshotReads(t *testing.T) {
	at := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	hashes := make([]string, 10)
	for i := range hashes {
		hashes[i] = fmt.Sprintf("aGFzaC0%d", i)
	}
	histories := [][]domain.Event{
		{&domain.TwoFactorRequirementChanged{Required: true}},
		{&domain.TOTPEnrollmentStarted{SealedSecret: "s", Algorithm: "SHA1", Digits: 6, PeriodSecs: 30, ExpiresAt: at.Add(time.Hour)}},
		{&domain.TOTPEnrollmentStarted{SealedSecret: "s", Algorithm: "SHA1", Digits: 6, PeriodSecs: 30, ExpiresAt: at.Add(time.Hour)},
			&domain.TOTPEnrollmentConfirmed{Step: 1}, &domain.BackupCodesGenerated{Hashes: hashes, Reason: domain.BackupReasonEnabled},
			&domain.TwoFactorEnabled{Method: domain.MethodTOTP}, &domain.BackupCodeConsumed{Index: 0, Remaining: 9},
			&domain.TOTPCheckFailed{Purpose: domain.CheckLogin, ConsecutiveFailures: 1}, &domain.TogglePermissionChanged{CanToggle: false}},
		{&domain.OTPMethodSetupStarted{Method: domain.MethodEmail, ExpiresAt: at.Add(time.Hour)}, &domain.OTPMethodConfirmed{Method: domain.MethodEmail},
			&domain.BackupCodesGenerated{Hashes: hashes, Reason: domain.BackupReasonEnabled}, &domain.TwoFactorEnabled{Method: domain.MethodEmail},
			&domain.OTPCheckFailed{Method: domain.MethodEmail, Purpose: domain.CheckLogin, ConsecutiveFailures: 1},
			&domain.TwoFactorLocked{Until: at.Add(time.Hour), Lockout: 1}},
		{&domain.SecurityKeyRegistrationStarted{Challenge: "c", UserHandle: "h", ExpiresAt: at.Add(time.Minute)},
			&domain.SecurityKeyRegistered{KeyID: "k", SealedName: "n", SealedCredential: "c", SignCount: 3},
			&domain.BackupCodesGenerated{Hashes: hashes, Reason: domain.BackupReasonEnabled}, &domain.TwoFactorEnabled{Method: domain.MethodWebAuthn},
			&domain.SecurityKeyChallengeIssued{Challenge: "d", ExpiresAt: at.Add(time.Minute)},
			&domain.SecurityKeyAssertionFailed{KeyID: "k", Reason: domain.AssertionInvalid, ConsecutiveFailures: 1}},
	}
	var entries []*userEntry
	for i, h := range histories {
		u := newUserEntry(fmt.Sprintf("user:t:u%d", i), "t", fmt.Sprintf("u%d", i))
		for v, e := range h {
			if err := u.apply(&eventstore.Record{Version: int64(v + 1), Position: int64(v + 1), Event: e, RecordedAt: at}); err != nil {
				t.Fatal(err)
			}
		}
		entries = append(entries, u)
	}
	base := domain.DefaultPolicy()
	covered := map[string]bool{"DefaultCanToggle": true, "LockoutThreshold": true, "LowBackupCodesWarn": true}
	pt := reflect.TypeOf(base)
	for i := 0; i < pt.NumField(); i++ {
		name := pt.Field(i).Name
		changed := base
		f := reflect.ValueOf(&changed).Elem().Field(i)
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(!f.Bool())
		case reflect.Int, reflect.Int64:
			f.SetInt(f.Int()*3 + 7)
		case reflect.String:
			f.SetString(f.String() + "-changed")
		case reflect.Struct: // the relying party: every field at once
			f.Set(reflect.ValueOf(domain.WebAuthnPolicy{
				RPID: "example.com", RPName: "Example", Origins: []string{"https://example.com"},
				UserVerification: domain.UserVerificationRequired, AllowClonedKeys: true, ChallengeTTL: time.Minute,
			}))
		default:
			t.Fatalf("policy field %s of kind %s: teach this test to change it", name, f.Kind())
		}
		same := rowPolicyOf(changed) == rowPolicyOf(base)
		if covered[name] == same {
			t.Errorf("rowPolicy and the covered fields disagree on %s", name)
		}
		for _, u := range entries {
			if differs := !reflect.DeepEqual(deriveRow(u, base), deriveRow(u, changed)); differs && same {
				t.Errorf("changing %s changes the row of %s, but rowPolicy ignores it", name, u.userID)
			}
		}
	}
}
