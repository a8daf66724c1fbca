package notifier_test

import (
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/internal/softkey"
)

// A user with email codes adds two security keys, signs in with a copy of
// one (its counter behind the original's) and removes it: "security key
// added" for each key ("enabled" went with email, which switched 2FA on),
// "possible clone" and "removed" once each.
func TestSecurityKeyNotices(t *testing.T) {
	e := newEnv(t)
	policy := domain.DefaultPolicy()
	policy.IssuerName = "Keys Panel"
	policy.WebAuthn.RPID = "example.com"
	policy.WebAuthn.Origins = []string{"https://login.example.com"}
	tenant := e.tenant(policy)
	e.startWorker(testConfig())
	const origin = "https://login.example.com"
	kim := "kim@example.com"

	must[commands.CodeSent](t)(e.svc.StartOTPMethodSetup(ctx, as("kim"), commands.StartOTPMethodSetup{TenantID: tenant, UserID: "kim", Method: domain.MethodEmail, Destination: kim}))
	must[commands.Activation](t)(e.svc.ConfirmOTPMethod(ctx, as("kim"), commands.ConfirmOTPMethod{TenantID: tenant, UserID: "kim", Method: domain.MethodEmail, Code: e.mailCode(kim, "setup_code", 1)}))

	var ids []string
	var keys []*softkey.Key
	for _, alg := range []softkey.Algorithm{softkey.ES256, softkey.EdDSA} {
		key, err := softkey.New(alg, softkey.FormatPacked)
		if err != nil {
			t.Fatal(err)
		}
		opts := must[commands.SecurityKeyOptions](t)(e.svc.StartSecurityKeyRegistration(ctx, as("kim"), commands.StartSecurityKeyRegistration{TenantID: tenant, UserID: "kim"}))
		resp, err := key.Create(opts.Options, origin)
		if err != nil {
			t.Fatal(err)
		}
		added := must[commands.SecurityKeyAdded](t)(e.svc.FinishSecurityKeyRegistration(ctx, as("kim"), commands.FinishSecurityKeyRegistration{TenantID: tenant, UserID: "kim", Name: "key", Response: resp}))
		ids, keys = append(ids, added.KeyID), append(keys, key)
	}

	login := func(k *softkey.Key) error {
		opts := must[commands.SecurityKeyOptions](t)(e.svc.StartSecurityKeyLogin(ctx, as("kim"), commands.StartSecurityKeyLogin{TenantID: tenant, UserID: "kim"}))
		resp, err := k.Get(opts.Options, origin)
		if err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.VerifySecurityKey(ctx, as("kim"), commands.VerifySecurityKey{TenantID: tenant, UserID: "kim", Response: resp})
		return err
	}
	if err := login(keys[0]); err != nil {
		t.Fatal(err)
	}
	clone := *keys[0]
	clone.Counter = 0
	mustFail(t, login(&clone))
	e.clock.Advance(time.Minute)
	if err := login(keys[1]); err != nil {
		t.Fatal(err)
	}
	must[commands.Result](t)(e.svc.RemoveSecurityKey(ctx, as("kim"), commands.RemoveSecurityKey{TenantID: tenant, UserID: "kim", KeyID: ids[0]}))

	e.waitIdle(30 * time.Second)
	msgs := e.smtp.messages()
	for kind, want := range map[string]int{"security_key_added": 2, "security_key_possibly_cloned": 1, "security_key_removed": 1, "enabled": 1} {
		if got := len(mailsTo(msgs, kim, kind)); got != want {
			t.Errorf("%s messages = %d, want %d", kind, got, want)
		}
	}
	cloned := mailsTo(msgs, kim, "security_key_possibly_cloned")
	if len(cloned) == 1 && (!strings.Contains(cloned[0].Text, "may exist") || !strings.Contains(cloned[0].Text, "The sign-in was refused.")) {
		t.Errorf("clone message: %q", cloned[0].Text)
	}
	for _, m := range msgs {
		for _, k := range keys {
			if strings.Contains(string(m.Raw), string(k.ID)) {
				t.Fatalf("a message carries a credential id")
			}
		}
	}
}
