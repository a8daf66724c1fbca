package webui_test

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/pquerna/otp/totp"
)

// The journeys of the product's panels, driven in Chromium against the real
// service: what a person sees is asserted, not the API's answers.
func TestBrowserJourneys(t *testing.T) {
	s := startStack(t)
	t.Run("enrol by the QR code, log in with app and backup codes", func(t *testing.T) { enrolAndLogIn(t, s) })
	t.Run("email codes, the resend cooldown, the low-codes email, regeneration", func(t *testing.T) { emailCodes(t, s) })
	t.Run("SMS codes and a second method as the default", func(t *testing.T) { smsCodes(t, s) })
	t.Run("the admin console and the auditor's timeline", func(t *testing.T) { adminAndAuditor(t, s) })
}

// enrolApp sets up the authenticator app from the account page, reading the
// key written under the QR code, and returns it with the backup codes.
func enrolApp(t *testing.T, p *page, prompt bool) (secret string, codes []string) {
	t.Helper()
	if !prompt {
		p.follow("Turn on two-factor authentication")
	}
	p.press("Set up the app")
	secret = strings.TrimSpace(p.text("#secret"))
	p.fill("code", codeAt(t, secret, time.Now()))
	p.press("Test token and activate")
	p.sees("Your backup codes")
	codes = strings.Fields(p.text("#codes"))
	p.press("I have saved my codes")
	p.sees("Authenticator app (default)")
	return secret, codes
}

func emailCodes(t *testing.T, s *stack) {
	// An admin sets the low-codes warning high in the policy editor, so that
	// one backup-code login sends it.
	admin := s.person(t)
	admin.signInNew("Beta", "admin", "bea")
	admin.follow("Policy")
	admin.sees("Tenant policy", "Backup codes per set")
	admin.fill("p-low_backup_codes_warning", "9")
	admin.press("Save policy")
	admin.sees("Policy saved.")
	if v := admin.attr("#p-low_backup_codes_warning", "value"); v != "9" {
		t.Fatalf("the policy editor shows %q after saving 9", v)
	}

	// Bob's browser runs no JavaScript: the core flows work without it.
	p := s.person(t)
	p.run("no JavaScript", emulation.SetScriptExecutionDisabled(true))
	p.signIn("Beta", "user", "bob")
	p.follow("Turn on two-factor authentication")
	p.fill("email", "bob@example.test")
	p.press("Email me a code")
	p.sees("We sent a code to bob@example.test")
	p.fill("code", codeIn(t, s.box.await(t, "bob@example.test", "Confirm your", 1)))
	p.press("Confirm and activate")
	p.sees("Your backup codes", "Email code is on")
	codes := strings.Fields(p.text("#codes"))
	p.press("I have saved my codes")
	p.sees("Email code (default)")
	p.signOut()

	// Login: the code goes by email at once; asking again at once shows the cooldown.
	p.signIn("Beta", "user", "bob")
	p.sees("We sent a code by email", "Code from your email")
	p.press("Send a new code")
	p.sees("A code was sent moments ago. You can ask for a new one in")
	p.fill("code", codeIn(t, s.box.await(t, "bob@example.test", "sign-in code", 1)))
	p.press("Verify")
	p.sees("Signed in with email code.")
	p.signOut()

	// A backup code leaves 9, the tenant's threshold: a warning on the page and by email.
	p.signIn("Beta", "user", "bob")
	p.follow("Use backup code")
	p.fill("code", codes[0])
	p.press("Verify")
	p.sees("Signed in with backup code. 9 backup codes left.", "Only 9 backup codes left. Generate a new set.")
	if m := s.box.await(t, "bob@example.test", "Only 9 backup codes left", 1); !strings.Contains(m.Text, "backup code") {
		t.Fatalf("the low-codes email says:\n%s", m.Text)
	}
	p.press("Regenerate backup codes")
	p.sees("A new set of backup codes replaced the old one")
	if n := len(strings.Fields(p.text("#codes"))); n != 10 {
		t.Fatalf("%d new backup codes shown", n)
	}
	p.press("I have saved my codes")
	p.notSees("Only 9 backup codes left")
	s.box.await(t, "bob@example.test", "New backup codes were generated", 1)
	// Bob may toggle 2FA (the tenant's default): he switches it off.
	p.press("Disable 2FA")
	p.sees("Two-factor authentication is off, and your backup codes no longer work.", "Turn on two-factor authentication")
	s.box.await(t, "bob@example.test", "Two-factor authentication is off", 1)
}

func adminAndAuditor(t *testing.T, s *stack) {
	carol := s.person(t)
	carol.signInNew("Gamma", "user", "carol")
	enrolApp(t, carol, false)
	carol.signOut()

	dave := s.person(t)
	dave.signIn("Gamma", "user", "dave")
	enrolApp(t, dave, false)
	dave.signOut()
	dave.signIn("Gamma", "user", "dave")
	for left := 4; left > 0; left-- {
		dave.fill("code", "000000")
		dave.press("Verify")
		dave.sees(fmt.Sprintf("Invalid code. %d attempt", left))
	}
	dave.fill("code", "000000")
	dave.press("Verify")
	dave.sees("Too many wrong codes. Verification is locked until", "Your account is locked after too many wrong codes until")
	locked := time.Now().UTC()
	dave.signOut()

	erin := s.person(t)
	erin.signIn("Gamma", "user", "erin")
	erin.sees("Your account security", "Off")
	erin.signOut()

	// The users list: coverage, filters, then a user's page and its actions.
	admin := s.person(t)
	admin.signIn("Gamma", "admin", "ann")
	// Erin has no history yet: the admin opens her by id and requires 2FA.
	admin.fill("go", "erin")
	admin.press("Open")
	admin.sees("This user has no two-factor history yet")
	admin.press("Require 2FA")
	admin.sees("2FA is now required for erin.")
	admin.follow("All users")
	admin.sees("Users", "carol", "dave", "erin", "of 3 users have 2FA on")
	admin.screenshot("users-desktop", 1280)
	admin.screenshot("users-phone", 375)
	admin.fitsPhone()
	filter := func(status string, want, not []string) {
		t.Helper()
		admin.selectOption("f-status", status)
		admin.press("Filter")
		for _, w := range want {
			if !strings.Contains(admin.text("#users"), w) {
				t.Fatalf("filter %s: %s missing:\n%s", status, w, admin.text("#users"))
			}
		}
		for _, n := range not {
			if strings.Contains(admin.text("#users"), n) {
				t.Fatalf("filter %s: %s listed:\n%s", status, n, admin.text("#users"))
			}
		}
	}
	filter("activated", []string{"carol"}, []string{"dave", "erin"})
	filter("locked", []string{"dave"}, []string{"carol", "erin"})
	filter("not_activated", []string{"erin"}, []string{"carol", "dave"})
	// Keyset pages, two users a page.
	admin.open("/ui/admin/users?per_page=2")
	first := admin.text("#users")
	admin.follow("Next page")
	second := admin.text("#users")
	for _, u := range []string{"carol", "dave", "erin"} {
		if strings.Contains(first, u) == strings.Contains(second, u) {
			t.Fatalf("%s is not on exactly one page:\n%s\n---\n%s", u, first, second)
		}
	}
	admin.sees("First page")

	admin.open("/ui/admin/users?status=locked")
	admin.follow("dave")
	admin.sees("Locked until")
	admin.press("Unlock")
	admin.sees("dave is unlocked.")
	admin.notSees("Locked until")
	admin.press("Reset 2FA")
	admin.sees("2FA of dave was reset")

	admin.open("/ui/admin/users/carol")
	admin.selectOption("to", "email")
	admin.fill("destination", "carol@example.test")
	admin.press("Switch method")
	admin.sees("carol was switched to email code.", "Email code (default)")

	// Carol is told, and logs in with an emailed code.
	s.box.await(t, "carol@example.test", "Your sign-in method was changed", 1)
	carol.signIn("Gamma", "user", "carol")
	carol.sees("We sent a code by email")
	carol.fill("code", codeIn(t, s.box.await(t, "carol@example.test", "sign-in code", 1)))
	carol.press("Verify")
	carol.sees("Signed in with email code.")
	carol.signOut()

	// Back to the app: carol verifies with her emailed code, then sets it up.
	admin.open("/ui/admin/users/carol")
	admin.selectOption("to", "totp")
	admin.press("Switch method")
	admin.sees("carol sets up an authenticator app at their next login.")
	carol.signIn("Gamma", "user", "carol")
	carol.sees("Your administrator switched you to an authenticator app")
	carol.fill("code", codeIn(t, s.box.await(t, "carol@example.test", "sign-in code", 2)))
	carol.press("Verify")
	carol.sees("set it up now")
	carol.notSees("Email codes")
	enrolApp(t, carol, true)
	carol.signOut()

	// Dave enrols again after the reset.
	dave.signIn("Gamma", "user", "dave")
	dave.sees("Your account needs two-factor authentication")
	enrolApp(t, dave, true)

	// Erin may toggle: "Disable 2FA" at the enrolment prompt lets her in.
	erin.signIn("Gamma", "user", "erin")
	erin.sees("Your account needs two-factor authentication")
	erin.press("Disable 2FA")
	erin.sees("You signed in without two-factor authentication.")
	admin.open("/ui/admin/users/erin")
	admin.sees("No (waived by the user)")
	admin.check("I understand this cannot be undone")
	admin.press("Erase user")
	admin.sees("erin was erased")
	if strings.Contains(admin.text("#users"), "erin") {
		t.Fatalf("the list still shows erin:\n%s", admin.text("#users"))
	}
	admin.open("/ui/admin/users/carol")
	admin.press("Disable 2FA")
	admin.sees("2FA of carol is off; their backup codes no longer work.")
	if got := admin.text("#status"); got != "Disabled" && got != "Not activated" {
		t.Fatalf("carol's status after the admin's disable: %q", got)
	}

	// The auditor: dave's history, his state while locked, the chain's verdict.
	aud := s.person(t)
	aud.signIn("Gamma", "auditor", "otto")
	aud.follow("Audit")
	aud.fill("user", "dave")
	aud.press("Show history")
	aud.sees("History of dave", "TOTPEnrollmentStarted", "Two-factor authentication switched on", "TwoFactorEnabled",
		"Locked after repeated wrong codes", "Unlocked by admin:ann", "Reset: enrols again at the next login by admin:ann")
	aud.run("choose a moment", chromedp.SetAttributeValue("#at", "value", locked.Add(time.Second).Format("2006-01-02T15:04:05"), chromedp.ByQuery))
	aud.press("Show state")
	if got := aud.text("#state-status"); got != "Locked" {
		t.Fatalf("dave's state while locked reads %q", got)
	}
	aud.screenshot("timeline-desktop", 1280)
	aud.screenshot("timeline-phone", 375)
	aud.fitsPhone()
	aud.follow("Audit")
	aud.press("Verify the chain")
	aud.sees("Chain intact")
}

// codeAt is the authenticator app's code for the secret at a time.
func codeAt(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCode(secret, at)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// scanQR reads the QR code shown on the page as a phone's camera would: a
// picture of the element, decoded by zbarimg.
func (p *page) scanQR() string {
	p.t.Helper()
	var png []byte
	p.run("picture of the QR code", chromedp.Screenshot("#qr", &png, chromedp.NodeVisible, chromedp.ByQuery))
	f := filepath.Join(p.t.TempDir(), "qr.png")
	if err := os.WriteFile(f, png, 0o600); err != nil {
		p.t.Fatal(err)
	}
	out, err := exec.Command("zbarimg", "-q", "--raw", f).Output()
	if err != nil {
		p.t.Fatalf("zbarimg could not read the QR code on the page: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func secretOf(t *testing.T, uri string) string {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "otpauth" {
		t.Fatalf("the QR code holds %q, not an otpauth URI", uri)
	}
	return u.Query().Get("secret")
}

func enrolAndLogIn(t *testing.T, s *stack) {
	p := s.person(t)
	p.signInNew("Acme", "user", "alice")
	p.sees("Your account security", "Off")
	// The browser holds one cookie: a session id no script can read, not sent
	// by cross-site form posts.
	var cookies []*network.Cookie
	p.run("cookies", chromedp.ActionFunc(func(ctx context.Context) (err error) {
		cookies, err = network.GetCookies().Do(ctx)
		return err
	}))
	if len(cookies) != 1 || !cookies[0].HTTPOnly || cookies[0].SameSite != network.CookieSameSiteLax || strings.Contains(cookies[0].Value, "tfk_") {
		t.Fatalf("cookies: %+v", cookies)
	}
	p.follow("Turn on two-factor authentication")
	p.press("Set up the app")
	p.sees("Scan this QR code", "Test the token and activate")
	p.screenshot("enrolment-desktop", 1280)
	p.screenshot("enrolment-phone", 375)
	p.fitsPhone()
	uri := p.scanQR()
	secret := secretOf(t, uri)
	if shown := strings.TrimSpace(p.text("#secret")); shown != secret {
		t.Fatalf("the key for manual entry %q is not the QR code's %q", shown, secret)
	}
	if !strings.Contains(uri, "alice") {
		t.Fatalf("the QR code does not name the account: %s", uri)
	}
	if got := p.attr("#code", "autocomplete") + " " + p.attr("#code", "inputmode"); got != "one-time-code numeric" {
		t.Fatalf("the code field has autocomplete, inputmode %q", got)
	}
	p.fill("code", "000000")
	p.press("Test token and activate")
	p.sees("Invalid code.")
	now := time.Now()
	p.fill("code", codeAt(t, secret, now))
	p.press("Test token and activate")
	p.sees("Your backup codes", "shown only now", "Authenticator app is on")
	codes := strings.Fields(p.text("#codes"))
	if len(codes) != 10 {
		t.Fatalf("%d backup codes shown: %v", len(codes), codes)
	}
	p.screenshot("backup-codes-desktop", 1280)
	p.screenshot("backup-codes-phone", 375)
	p.fitsPhone()
	p.press("I have saved my codes")
	p.sees("On", "Authenticator app (default)", "10")
	p.signOut()

	// Next login: a wrong code, then the app's next code.
	p.signIn("Acme", "user", "alice")
	p.sees("Two-factor authentication", "Code from your authenticator app", "Use backup code")
	if got := p.attr("#code", "autocomplete") + " " + p.attr("#code", "inputmode"); got != "one-time-code numeric" {
		t.Fatalf("the login code field has autocomplete, inputmode %q", got)
	}
	p.fill("code", "000000")
	p.press("Verify")
	p.sees("Invalid code. 4 attempts left.")
	p.screenshot("login-desktop", 1280)
	p.screenshot("login-phone", 375)
	p.fitsPhone()
	// The code of the next 30-second step (one step of drift is tolerated;
	// the step of the activation is never accepted again).
	p.fill("code", codeAt(t, secret, now.Add(30*time.Second)))
	p.press("Verify")
	p.sees("Signed in with authenticator app.", "Your account security")
	p.signOut()

	// The phone is lost: a backup code, once.
	p.signIn("Acme", "user", "alice")
	p.follow("Use backup code")
	p.fill("code", strings.ToUpper(codes[1])) // typed in capitals: still accepted
	p.press("Verify")
	p.sees("Signed in with backup code. 9 backup codes left.")
	p.sees("Backup codes left", "9")
	// ...and sets up the app on the new phone: a new key, new backup codes.
	p.press("Replace authenticator")
	secret2 := secretOf(t, p.scanQR())
	if secret2 == secret {
		t.Fatal("replacing the authenticator showed the old key")
	}
	p.fill("code", codeAt(t, secret2, time.Now()))
	p.press("Test token and activate")
	p.sees("Your backup codes")
	newCodes := strings.Fields(p.text("#codes"))
	p.press("I have saved my codes")
	p.sees("Backup codes left", "10")
	p.signOut()
	p.signIn("Acme", "user", "alice")
	p.follow("Use backup code")
	p.fill("code", codes[2]) // the old set stopped working
	p.press("Verify")
	p.sees("Invalid code. 4 attempts left.") // a success reset the count
	p.fill("code", newCodes[0])
	p.press("Verify")
	p.sees("Signed in with backup code. 9 backup codes left.")
}

func smsCodes(t *testing.T, s *stack) {
	const phone = "+14155550123"
	p := s.person(t)
	p.signInNew("Delta", "user", "sam")
	p.follow("Turn on two-factor authentication")
	p.fill("phone", phone)
	p.press("Text me a code")
	p.sees("We sent a code to " + phone)
	p.fill("code", s.sms(t, phone, "setup_code", 1))
	p.press("Confirm and activate")
	p.sees("Your backup codes", "Text message (SMS) is on")
	p.press("I have saved my codes")
	p.sees("Text message (SMS) (default)")
	p.signOut()

	p.signIn("Delta", "user", "sam")
	p.sees("We sent a code by text message", "Code from your text message")
	p.press("Send a new code")
	p.sees("A code was sent moments ago. You can ask for a new one in")
	p.fill("code", s.sms(t, phone, "otp_code", 1))
	p.press("Verify")
	p.sees("Signed in with text message (sms).")

	// A second method, the app, made the default.
	p.press("Add an authenticator app")
	secret := secretOf(t, p.scanQR())
	p.fill("code", codeAt(t, secret, time.Now()))
	p.press("Test token and activate")
	if strings.Contains(p.text("h1"), "backup codes") {
		p.press("I have saved my codes")
	}
	p.sees("Text message (SMS) (default)", "Authenticator app")
	p.selectOption("default", "totp")
	p.press("Save")
	p.sees("Authenticator app is now your default method.", "Authenticator app (default)")
	p.signOut()
	p.signIn("Delta", "user", "sam")
	p.sees("Code from your authenticator app", "Use text message (sms)")
}
