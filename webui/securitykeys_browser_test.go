package webui_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"
)

// A security key registered, used to log in and removed through the UI, in
// Chromium with a virtual authenticator (the DevTools WebAuthn domain): the
// browser runs the real ceremony, app.js carries it, the service verifies it.
func TestBrowserSecurityKeys(t *testing.T) {
	s := startStack(t)
	// A relying party id is a domain name, never an IP address, and
	// localhost is a secure context over http: Kim's browser uses it.
	local := strings.Replace(s.base, "127.0.0.1", "localhost", 1)
	kim := s.person(t)
	kim.base = local
	authenticator := kim.virtualAuthenticator()

	// The demo sign-in gives the new tenant a relying party for this address.
	kim.signInNew("Kappa", "user", "kim")
	kim.follow("Turn on two-factor authentication")
	kim.sees("Security key or passkey", "Name of the key")
	kim.fill("email", "kim@example.test")
	kim.press("Email me a code")
	kim.fill("code", codeIn(t, s.box.await(t, "kim@example.test", "Confirm your", 1)))
	kim.press("Confirm and activate")
	kim.press("I have saved my codes")
	kim.signOut()
	kim.signIn("Kappa", "user", "kim")
	kim.fill("code", codeIn(t, s.box.await(t, "kim@example.test", "sign-in code", 1)))
	kim.press("Verify")
	kim.sees("Signed in with email code.")

	// Register a key, named, through the browser's navigator.credentials.create().
	kim.follow("Security keys")
	kim.sees("No security keys yet.")
	kim.fill("key-name", "Blue YubiKey")
	kim.press("Add security key")
	kim.awaits("Security key “Blue YubiKey” was added.")
	if got := kim.text("#keys"); !strings.Contains(got, "Blue YubiKey") || !strings.Contains(got, "Never") {
		t.Fatalf("the keys list shows:\n%s", got)
	}
	if n := len(kim.credentials(authenticator)); n != 1 {
		t.Fatalf("the authenticator holds %d credentials after the registration", n)
	}
	if m := s.box.await(t, "kim@example.test", "A security key was added", 1); !strings.Contains(m.Text, "security key was added") {
		t.Fatalf("the notice says:\n%s", m.Text)
	}
	kim.screenshot("security-keys-desktop", 1280)
	kim.screenshot("security-keys-phone", 375)
	kim.fitsPhone()
	// The same key again: the browser refuses it (the API's options exclude
	// the keys the account has), and the page says so.
	kim.fill("key-name", "Same key")
	kim.press("Add security key")
	kim.awaits("This security key is already registered on your account.")
	kim.follow("Account")
	kim.sees("Email code (default)", "Security key (1)")

	// The admin sees the key among the methods, and requires user
	// verification in the policy editor, whose relying party is this address.
	admin := s.person(t)
	admin.signIn("Kappa", "admin", "ann")
	admin.sees("Security key (1)")
	admin.follow("kim")
	admin.sees("Security keys", "1: Blue YubiKey")
	admin.follow("Policy")
	if got := admin.attr("#rp_id", "value"); got != "localhost" {
		t.Fatalf("the demo tenant's relying party id is %q", got)
	}
	var origins string
	admin.run("origins", chromedp.Value("#origins", &origins, chromedp.ByQuery))
	if got := origins; strings.TrimSpace(got) != local {
		t.Fatalf("the demo tenant's origins are %q, want %s", got, local)
	}
	admin.selectOption("user_verification", "required")
	admin.fill("rp_name", "Kappa login")
	admin.press("Save security keys")
	admin.sees("Security keys saved.")
	if got := admin.attr("#rp_name", "value"); got != "Kappa login" {
		t.Fatalf("the relying party's name reads %q after saving", got)
	}

	// Log in with the key at the challenge.
	kim.signOut()
	kim.signIn("Kappa", "user", "kim")
	kim.sees("We sent a code by email", "Use security key")
	kim.follow("Use security key")
	// A browser without WebAuthn is told so, and nothing is sent.
	kim.run("a browser without WebAuthn", chromedp.Evaluate(`window.PublicKeyCredential = undefined`, nil))
	kim.press("Use security key")
	kim.awaits("This browser cannot use security keys")
	// The PIN or fingerprint check fails, which the policy now requires: the
	// browser says "not allowed", as when the person cancels.
	kim.open("/ui/login?method=webauthn")
	kim.run("the check fails", webauthn.SetUserVerified(authenticator, false))
	kim.press("Use security key")
	kim.awaits("The security key did not answer: the request was cancelled or timed out.")
	kim.run("the check passes", webauthn.SetUserVerified(authenticator, true))
	kim.open("/ui/login?method=webauthn")
	kim.press("Use security key")
	kim.awaits("Signed in with security key.")
	kim.follow("Security keys")
	if got := kim.text("#keys"); strings.Contains(got, "Never") {
		t.Fatalf("the key's last use is not shown:\n%s", got)
	}

	// Elsewhere than the relying party's origins, the page says where keys work.
	lee := s.person(t)
	lee.signIn("Kappa", "user", "lee")
	lee.follow("Security keys")
	lee.sees("Security keys for this organisation work at " + local)

	// A key as the first method: it switches 2FA on, with backup codes, and
	// is what the next login asks for.
	kai := s.person(t)
	kai.base = local
	kai.virtualAuthenticator()
	kai.signIn("Kappa", "user", "kai")
	kai.follow("Turn on two-factor authentication")
	kai.fill("key-name", "Laptop passkey")
	kai.press("Add security key")
	kai.awaits("Your backup codes")
	kai.sees("Security key “Laptop passkey” is on")
	kai.press("I have saved my codes")
	kai.sees("Security key (1) (default)")
	kai.signOut()
	kai.signIn("Kappa", "user", "kai")
	kai.sees("Use security key", "Use backup code")
	kai.press("Use security key")
	kai.awaits("Signed in with security key.")

	// The admin may not take his only factor; once he added email codes, the
	// admin removes the key and kai is told who did.
	admin.open("/ui/admin/users/kai")
	admin.sees("1: Laptop passkey")
	admin.press("Remove key")
	admin.sees("This key is the account's only second factor")
	kai.fill("dest-email", "kai@example.test")
	kai.press("Send a code")
	kai.fill("code", codeIn(t, s.box.await(t, "kai@example.test", "Confirm your", 1)))
	kai.press("Confirm and activate")
	kai.sees("Email code is on")
	admin.open("/ui/admin/users/kai")
	admin.press("Remove key")
	admin.sees("Security key “Laptop passkey” of kai was removed.")
	if got := admin.text("#security-keys"); got != "0" {
		t.Fatalf("kai's security keys after the removal: %q", got)
	}
	if m := s.box.await(t, "kai@example.test", "A security key was removed", 1); !strings.Contains(m.Text, "An administrator removed") {
		t.Fatalf("the notice says:\n%s", m.Text)
	}

	// Remove the key (just verified with it: a fresh verification).
	kim.press("Remove")
	kim.sees("Security key “Blue YubiKey” was removed", "No security keys yet.")
	s.box.await(t, "kim@example.test", "A security key was removed", 1)
	kim.follow("Account")
	kim.notSees("Security key (")
}

// virtualAuthenticator gives this browser a security key of its own: CTAP2,
// built in, with a PIN or biometric check that passes and a touch that is
// simulated at once.
func (p *page) virtualAuthenticator() webauthn.AuthenticatorID {
	p.t.Helper()
	var id webauthn.AuthenticatorID
	p.run("virtual authenticator", webauthn.Enable(), chromedp.ActionFunc(func(ctx context.Context) (err error) {
		id, err = webauthn.AddVirtualAuthenticator(&webauthn.VirtualAuthenticatorOptions{
			Protocol: webauthn.AuthenticatorProtocolCtap2, Ctap2version: webauthn.Ctap2versionCtap21,
			Transport:      webauthn.AuthenticatorTransportInternal,
			HasResidentKey: true, HasUserVerification: true, IsUserVerified: true, AutomaticPresenceSimulation: true,
		}).Do(ctx)
		return err
	}))
	return id
}

func (p *page) credentials(id webauthn.AuthenticatorID) []*webauthn.Credential {
	p.t.Helper()
	var creds []*webauthn.Credential
	p.run("credentials", chromedp.ActionFunc(func(ctx context.Context) (err error) {
		creds, err = webauthn.GetCredentials(id).Do(ctx)
		return err
	}))
	return creds
}

// awaits waits until the page shows text: the security-key forms submit
// themselves once the browser's ceremony is over, after the click returned.
func (p *page) awaits(text string) {
	p.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if strings.Contains(p.textNow(), text) {
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("the page never showed %q; it shows:\n%s", text, p.textNow())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
