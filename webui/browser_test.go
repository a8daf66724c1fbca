package webui_test

import (
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/pquerna/otp/totp"
)

// The journeys of the product's panels, driven in Chromium against the real
// service: what a person sees is asserted, not the API's answers.
func TestBrowserJourneys(t *testing.T) {
	s := startStack(t)
	t.Run("enrol by the QR code, log in with app and backup codes", func(t *testing.T) { enrolAndLogIn(t, s) })
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
}
