package commands_test

import (
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/softkey"
	"github.com/twofactor/twofactor/internal/testkit"
	"github.com/twofactor/twofactor/secrets"
)

const (
	rpOrigin   = "https://login.example.com"
	evilOrigin = "https://login.example.org"
)

func rpPolicy() *domain.Policy {
	p := domain.DefaultPolicy()
	p.WebAuthn.RPID = "example.com"
	p.WebAuthn.Origins = []string{rpOrigin}
	return &p
}

func newKey(t *testing.T, alg softkey.Algorithm, format string) *softkey.Key {
	t.Helper()
	k, err := softkey.New(alg, format)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// registerKey runs both halves of a registration through the service.
func registerKey(t *testing.T, f *testkit.Fixture, user string, key *softkey.Key, name string) commands.SecurityKeyAdded {
	t.Helper()
	opts, err := f.Svc.StartSecurityKeyRegistration(ctx, as(user), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: user})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := key.Create(opts.Options, rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	added, err := f.Svc.FinishSecurityKeyRegistration(ctx, as(user), commands.FinishSecurityKeyRegistration{TenantID: f.Tenant, UserID: user, Name: name, Response: resp})
	if err != nil {
		t.Fatal(err)
	}
	return added
}

// loginOptions asks for a login challenge.
func loginOptions(t *testing.T, f *testkit.Fixture, user string) []byte {
	t.Helper()
	opts, err := f.Svc.StartSecurityKeyLogin(ctx, as(user), commands.StartSecurityKeyLogin{TenantID: f.Tenant, UserID: user})
	if err != nil {
		t.Fatal(err)
	}
	return opts.Options
}

func verifyKey(f *testkit.Fixture, user string, resp []byte) (commands.Verification, error) {
	return f.Svc.VerifySecurityKey(ctx, as(user), commands.VerifySecurityKey{TenantID: f.Tenant, UserID: user, Response: resp})
}

func TestSecurityKey_RegistrationAndLogin(t *testing.T) {
	for _, tc := range []struct {
		name   string
		alg    softkey.Algorithm
		format string
	}{
		{"ES256 none", softkey.ES256, softkey.FormatNone},
		{"ES256 packed", softkey.ES256, softkey.FormatPacked},
		{"Ed25519 none", softkey.EdDSA, softkey.FormatNone},
		{"Ed25519 packed", softkey.EdDSA, softkey.FormatPacked},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, rpPolicy())
			key := newKey(t, tc.alg, tc.format)
			added := registerKey(t, f, "alice", key, "  My key ")
			if len(added.BackupCodes) != 10 || added.KeyID == "" {
				t.Fatalf("the first key switches 2FA on with backup codes: %+v", added)
			}
			st := f.Status("alice")
			if st.Status != domain.StatusActivated || st.DefaultMethod != domain.MethodWebAuthn || len(st.Methods) != 1 {
				t.Fatalf("status = %+v", st)
			}
			var reg *domain.SecurityKeyRegistered
			for _, r := range f.Records("alice") {
				if e, ok := r.Event.(*domain.SecurityKeyRegistered); ok {
					reg = e
				}
				// The credential id is personal data: never in the log in clear.
				for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.StdEncoding, base64.RawStdEncoding} {
					if strings.Contains(string(r.Payload), enc.EncodeToString(key.ID)) {
						t.Fatalf("%s holds the credential id in clear", r.Type)
					}
				}
			}
			if reg == nil || reg.AttestationFormat != tc.format || !reg.UserVerified {
				t.Fatalf("registered = %+v", reg)
			}

			f.Clock.Advance(time.Hour)
			resp, err := key.Get(loginOptions(t, f, "alice"), rpOrigin)
			if err != nil {
				t.Fatal(err)
			}
			v, err := verifyKey(f, "alice", resp)
			if err != nil {
				t.Fatal(err)
			}
			if v.Method != domain.MethodWebAuthn || v.BackupCodesRemaining != 10 {
				t.Fatalf("verification = %+v", v)
			}
			if st := f.Status("alice"); st.LastVerifiedMethod != domain.MethodWebAuthn || !st.LastVerifiedAt.Equal(f.Clock.Now()) {
				t.Fatalf("status = %+v", st)
			}
			keys, err := f.Svc.ListSecurityKeys(ctx, as("alice"), commands.ListSecurityKeys{TenantID: f.Tenant, UserID: "alice"})
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != 1 || keys[0].Name != "My key" || keys[0].KeyID != added.KeyID || keys[0].LastUsedAt == nil {
				t.Fatalf("keys = %+v", keys)
			}
		})
	}
}

func TestSecurityKey_WrongOriginRefused(t *testing.T) {
	f := newFixture(t, rpPolicy())
	key := newKey(t, softkey.ES256, softkey.FormatPacked)

	opts, err := f.Svc.StartSecurityKeyRegistration(ctx, as("alice"), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	phished, err := key.Create(opts.Options, evilOrigin)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Svc.FinishSecurityKeyRegistration(ctx, as("alice"), commands.FinishSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice", Name: "k", Response: phished})
	wantErr(t, err, domain.KindInvalid, domain.CodeInvalidSecurityKeyData)
	if f.CountEvents("alice", "SecurityKeyRegistered") != 0 {
		t.Fatal("a key from another origin was registered")
	}

	registerKey(t, f, "alice", key, "k")
	resp, err := key.Get(loginOptions(t, f, "alice"), evilOrigin)
	if err != nil {
		t.Fatal(err)
	}
	_, err = verifyKey(f, "alice", resp)
	if de := wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode); de.AttemptsRemaining != 4 {
		t.Fatalf("attempts remaining = %d", de.AttemptsRemaining)
	}
	if f.CountEvents("alice", "SecurityKeyAssertionFailed") != 1 || f.CountEvents("alice", "SecurityKeyUsed") != 0 {
		t.Fatal("a wrong origin must be a failed assertion")
	}
}

func TestSecurityKey_ReplayedChallengeRefused(t *testing.T) {
	f := newFixture(t, rpPolicy())
	key := newKey(t, softkey.EdDSA, softkey.FormatNone)
	registerKey(t, f, "alice", key, "k")

	resp, err := key.Get(loginOptions(t, f, "alice"), rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifyKey(f, "alice", resp); err != nil {
		t.Fatal(err)
	}
	// The same answer again: the challenge is spent.
	_, err = verifyKey(f, "alice", resp)
	wantErr(t, err, domain.KindPrecondition, domain.CodeNoPendingChallenge)
	// The old answer against a new challenge: signed over the old one, it fails.
	loginOptions(t, f, "alice")
	_, err = verifyKey(f, "alice", resp)
	wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode)
	// The registration challenge is single-use too.
	second := newKey(t, softkey.ES256, softkey.FormatNone)
	f.Clock.Advance(time.Minute) // within the fresh-verification window of the login above
	opts, err := f.Svc.StartSecurityKeyRegistration(ctx, as("alice"), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	created, err := second.Create(opts.Options, rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	finish := commands.FinishSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice", Name: "second", Response: created}
	if _, err := f.Svc.FinishSecurityKeyRegistration(ctx, as("alice"), finish); err != nil {
		t.Fatal(err)
	}
	_, err = f.Svc.FinishSecurityKeyRegistration(ctx, as("alice"), finish)
	wantErr(t, err, domain.KindPrecondition, domain.CodeNoPendingChallenge)
}

func TestSecurityKey_ExpiredChallengeRefused(t *testing.T) {
	f := newFixture(t, rpPolicy())
	key := newKey(t, softkey.ES256, softkey.FormatNone)

	opts, err := f.Svc.StartSecurityKeyRegistration(ctx, as("alice"), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	created, err := key.Create(opts.Options, rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(5 * time.Minute)
	_, err = f.Svc.FinishSecurityKeyRegistration(ctx, as("alice"), commands.FinishSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice", Name: "k", Response: created})
	wantErr(t, err, domain.KindPrecondition, domain.CodeChallengeExpired)

	registerKey(t, f, "alice", key, "k")
	resp, err := key.Get(loginOptions(t, f, "alice"), rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	f.Clock.Advance(5*time.Minute + time.Second)
	_, err = verifyKey(f, "alice", resp)
	wantErr(t, err, domain.KindPrecondition, domain.CodeChallengeExpired)
	if f.CountEvents("alice", "SecurityKeyUsed") != 0 {
		t.Fatal("an expired challenge logged in")
	}
}

func TestSecurityKey_CounterDecreaseFlagged(t *testing.T) {
	for _, allow := range []bool{false, true} {
		t.Run(map[bool]string{false: "refused", true: "allowed by policy"}[allow], func(t *testing.T) {
			p := rpPolicy()
			p.WebAuthn.AllowClonedKeys = allow
			f := newFixture(t, p)
			key := newKey(t, softkey.ES256, softkey.FormatPacked)
			key.Counter = 10
			registerKey(t, f, "alice", key, "k")
			resp, _ := key.Get(loginOptions(t, f, "alice"), rpOrigin) // counter 11
			if _, err := verifyKey(f, "alice", resp); err != nil {
				t.Fatal(err)
			}
			clone := *key
			clone.Counter = 3 // a copy of the key that signed fewer times
			resp, err := clone.Get(loginOptions(t, f, "alice"), rpOrigin)
			if err != nil {
				t.Fatal(err)
			}
			_, err = verifyKey(f, "alice", resp)
			if allow {
				if err != nil {
					t.Fatal(err)
				}
			} else {
				wantErr(t, err, domain.KindForbidden, domain.CodeSecurityKeyCloned)
			}
			var got *domain.SecurityKeyCloneSuspected
			for _, r := range f.Records("alice") {
				if e, ok := r.Event.(*domain.SecurityKeyCloneSuspected); ok {
					got = e
				}
			}
			if got == nil || got.StoredCount != 11 || got.ReceivedCount != 4 || got.Refused == allow {
				t.Fatalf("clone event = %+v", got)
			}
			if n := f.CountEvents("alice", "SecurityKeyUsed"); (allow && n != 2) || (!allow && n != 1) {
				t.Fatalf("SecurityKeyUsed = %d", n)
			}
			keys, _ := f.Svc.ListSecurityKeys(ctx, admin, commands.ListSecurityKeys{TenantID: f.Tenant, UserID: "alice"})
			if len(keys) != 1 || !keys[0].CloneSuspected {
				t.Fatalf("keys = %+v", keys)
			}
		})
	}
}

func TestSecurityKey_Removal(t *testing.T) {
	f := newFixture(t, rpPolicy())
	first := newKey(t, softkey.ES256, softkey.FormatNone)
	second := newKey(t, softkey.EdDSA, softkey.FormatPacked)
	a := registerKey(t, f, "alice", first, "first")
	f.Clock.Advance(time.Minute)
	b := registerKey(t, f, "alice", second, "second")
	if len(b.BackupCodes) != 0 {
		t.Fatal("a second key issues no backup codes")
	}

	// The last method goes only with a disable.
	if _, err := f.Svc.RemoveSecurityKey(ctx, as("alice"), commands.RemoveSecurityKey{TenantID: f.Tenant, UserID: "alice", KeyID: a.KeyID}); err != nil {
		t.Fatal(err)
	}
	_, err := f.Svc.RemoveSecurityKey(ctx, as("alice"), commands.RemoveSecurityKey{TenantID: f.Tenant, UserID: "alice", KeyID: b.KeyID})
	wantErr(t, err, domain.KindPrecondition, domain.CodeLastMethod)
	_, err = f.Svc.RemoveSecurityKey(ctx, as("alice"), commands.RemoveSecurityKey{TenantID: f.Tenant, UserID: "alice", KeyID: a.KeyID})
	wantErr(t, err, domain.KindNotFound, domain.CodeSecurityKeyNotFound)

	keys, err := f.Svc.ListSecurityKeys(ctx, as("alice"), commands.ListSecurityKeys{TenantID: f.Tenant, UserID: "alice"})
	if err != nil || len(keys) != 1 || keys[0].Name != "second" {
		t.Fatalf("keys = %+v, %v", keys, err)
	}
	// The removed key no longer logs in.
	resp, _ := first.Get(loginOptions(t, f, "alice"), rpOrigin)
	_, err = verifyKey(f, "alice", resp)
	wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode)
	resp, _ = second.Get(loginOptions(t, f, "alice"), rpOrigin)
	if _, err := verifyKey(f, "alice", resp); err != nil {
		t.Fatal(err)
	}
	// Someone else's list is not theirs to see.
	_, err = f.Svc.ListSecurityKeys(ctx, as("bob"), commands.ListSecurityKeys{TenantID: f.Tenant, UserID: "alice"})
	wantErr(t, err, domain.KindForbidden, domain.CodeNotAllowed)
}

// 50 requests race with one valid answer to one challenge: exactly one logs in.
func TestSecurityKey_ConcurrentAssertionsOfOneChallenge(t *testing.T) {
	f := newFixture(t, rpPolicy())
	key := newKey(t, softkey.ES256, softkey.FormatNone)
	registerKey(t, f, "alice", key, "k")
	resp, err := key.Get(loginOptions(t, f, "alice"), rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	const n = 50
	var wg sync.WaitGroup
	var mu sync.Mutex
	successes, refusals := 0, 0
	var unexpected []error
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := verifyKey(f, "alice", resp)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				successes++
			case errors.Is(err, domain.Precondition(domain.CodeNoPendingChallenge, "")),
				errors.Is(err, domain.Conflict(domain.CodeConcurrentChange, "")):
				refusals++
			default:
				unexpected = append(unexpected, err)
			}
		}()
	}
	wg.Wait()
	if successes != 1 || refusals != n-1 || len(unexpected) > 0 {
		t.Fatalf("successes = %d, refusals = %d, unexpected = %v", successes, refusals, unexpected)
	}
	if got := f.CountEvents("alice", "SecurityKeyUsed"); got != 1 {
		t.Fatalf("SecurityKeyUsed = %d", got)
	}
	if got := f.CountEvents("alice", "SecurityKeyAssertionFailed"); got != 0 {
		t.Fatalf("the losers of the race are not failures: %d", got)
	}
}

func TestSecurityKey_ErasureRemovesTheCredential(t *testing.T) {
	f := newFixture(t, rpPolicy())
	key := newKey(t, softkey.ES256, softkey.FormatPacked)
	registerKey(t, f, "gone", key, "k")
	if _, err := f.Svc.ForgetUser(ctx, admin, commands.ForgetUser{TenantID: f.Tenant, UserID: "gone"}); err != nil {
		t.Fatal(err)
	}
	var reg *domain.SecurityKeyRegistered
	for _, r := range f.Records("gone") {
		if e, ok := r.Event.(*domain.SecurityKeyRegistered); ok {
			reg = e
		}
	}
	for _, c := range []struct {
		purpose secrets.Purpose
		sealed  string
	}{{secrets.PurposeSecurityKey, reg.SealedCredential}, {secrets.PurposeSecurityKeyName, reg.SealedName}} {
		if _, err := f.Vault.Open(ctx, f.Tenant, "gone", c.purpose, c.sealed); !errors.Is(err, secrets.ErrKeyErased) {
			t.Fatalf("open %s after erasure: %v", c.purpose, err)
		}
	}
	if s := f.Status("gone"); s.Status != domain.StatusErased || len(s.Methods) != 0 {
		t.Fatalf("status = %+v", s)
	}
	_, err := f.Svc.StartSecurityKeyLogin(ctx, as("gone"), commands.StartSecurityKeyLogin{TenantID: f.Tenant, UserID: "gone"})
	wantErr(t, err, domain.KindNotFound, domain.CodeUserForgotten)
}

// A tenant that requires user verification refuses a key that did not check
// its PIN or biometric, at registration and at login.
func TestSecurityKey_UserVerificationRequired(t *testing.T) {
	p := rpPolicy()
	p.WebAuthn.UserVerification = domain.UserVerificationRequired
	f := newFixture(t, p)
	key := newKey(t, softkey.ES256, softkey.FormatNone)
	key.UserVerified = false
	opts, err := f.Svc.StartSecurityKeyRegistration(ctx, as("alice"), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice"})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(opts.Options), `"userVerification":"required"`) {
		t.Fatalf("options do not ask for user verification: %s", opts.Options)
	}
	created, err := key.Create(opts.Options, rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Svc.FinishSecurityKeyRegistration(ctx, as("alice"), commands.FinishSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice", Name: "k", Response: created})
	wantErr(t, err, domain.KindInvalid, domain.CodeUserVerificationRequired)

	key.UserVerified = true
	registerKey(t, f, "alice", key, "k")
	key.UserVerified = false
	resp, err := key.Get(loginOptions(t, f, "alice"), rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	_, err = verifyKey(f, "alice", resp)
	wantErr(t, err, domain.KindInvalid, domain.CodeInvalidCode)
	var failed *domain.SecurityKeyAssertionFailed
	for _, r := range f.Records("alice") {
		if e, ok := r.Event.(*domain.SecurityKeyAssertionFailed); ok {
			failed = e
		}
	}
	if failed == nil || failed.Reason != domain.AssertionUserNotVerified {
		t.Fatalf("failed = %+v", failed)
	}
}

// A tenant that withdraws its relying party stops security-key logins at once;
// an answer in flight is refused without counting as a failure.
func TestSecurityKey_RelyingPartyWithdrawn(t *testing.T) {
	p := rpPolicy()
	f := newFixture(t, p)
	key := newKey(t, softkey.EdDSA, softkey.FormatNone)
	registerKey(t, f, "alice", key, "k")
	resp, err := key.Get(loginOptions(t, f, "alice"), rpOrigin)
	if err != nil {
		t.Fatal(err)
	}
	withdrawn := *p
	withdrawn.WebAuthn = domain.WebAuthnPolicy{}
	if _, err := f.Svc.ChangeTenantPolicy(ctx, admin, commands.ChangeTenantPolicy{TenantID: f.Tenant, Policy: withdrawn}); err != nil {
		t.Fatal(err)
	}
	_, err = verifyKey(f, "alice", resp)
	wantErr(t, err, domain.KindForbidden, domain.CodeMethodDisabled)
	if f.CountEvents("alice", "SecurityKeyAssertionFailed") != 0 {
		t.Fatal("a withdrawn method counted a failure")
	}
}

func TestSecurityKey_NotOfferedWithoutARelyingParty(t *testing.T) {
	f := newFixture(t, nil)
	_, err := f.Svc.StartSecurityKeyRegistration(ctx, as("alice"), commands.StartSecurityKeyRegistration{TenantID: f.Tenant, UserID: "alice"})
	wantErr(t, err, domain.KindForbidden, domain.CodeMethodDisabled)
	// Nothing is awaited: the answer is not even read.
	_, err = f.Svc.VerifySecurityKey(ctx, as("alice"), commands.VerifySecurityKey{TenantID: f.Tenant, UserID: "alice", Response: []byte(`{"id":1}`)})
	wantErr(t, err, domain.KindPrecondition, domain.CodeNotEnrolled)
}
