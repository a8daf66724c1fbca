package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/internal/testmail"
)

// mailbox is the loopback SMTP server the binary under test sends to.
type mailbox struct {
	*testmail.Mailbox
	addr string
}

type email = testmail.Email

func startMailbox(t *testing.T) *mailbox {
	b := testmail.Start(t)
	return &mailbox{Mailbox: b, addr: b.Addr}
}

// await waits for the first message to `to` whose subject contains subject.
func (b *mailbox) await(t *testing.T, to, subject string) email {
	t.Helper()
	return b.Await(t, to, subject, 1, 30*time.Second)
}

func (b *mailbox) count(subject string) int { return b.Count("", subject) }

func codeIn(t *testing.T, m email) string {
	t.Helper()
	return m.Code(t)
}

// client calls the running binary's API.
type client struct {
	t    *testing.T
	base string
	logs *lockedBuffer
}

func (c client) call(method, path, token, actor string, body any, want int) map[string]any {
	c.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, c.base+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if actor != "" {
		req.Header.Set("X-Actor", actor)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		errs := ""
		if c.logs != nil && resp.StatusCode >= 500 {
			for _, line := range strings.Split(c.logs.String(), "\n") {
				if strings.Contains(line, `"level":"ERROR"`) {
					errs += line + "\n"
				}
			}
		}
		c.t.Fatalf("%s %s: %d, want %d: %s\n%s", method, path, resp.StatusCode, want, raw, errs)
	}
	var out map[string]any
	if err := json.Unmarshal(raw, &out); err != nil {
		c.t.Fatalf("%s %s: %v: %s", method, path, err, raw)
	}
	return out
}

func run1(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return strings.TrimSpace(string(out))
}

// The whole product through the built binary: enrolment by scanning the QR code,
// codes from an independent TOTP implementation, backup codes down to two with the
// warning mailed through a real SMTP server, an admin switch to email OTP, and a
// login with the emailed code.
func TestEndToEndWithTheBinaryAndARealSMTPServer(t *testing.T) {
	needTools(t, "oathtool", "zbarimg")
	box := startMailbox(t)
	bin := buildBinary(t)
	env := testEnv(t, "TWOFACTOR_SMTP_URL=smtp://"+box.addr+"?tls=none", "TWOFACTOR_MAIL_FROM=security@acme.test")
	srv := startServer(t, bin, env)
	api := client{t: t, base: srv.URL, logs: srv.Logs}

	tenant := createTenantWith(t, bin, env, "Acme")
	app, admin := tenant.APIKeys["app"].Token, tenant.APIKeys["admin"].Token

	// Enrol by scanning the QR code.
	enrol := api.call("POST", "/v1/users/zoe/enrollments/totp", app, "", map[string]any{"account_name": "zoe@acme.test"}, 201)
	qr := filepath.Join(t.TempDir(), "qr.png")
	png, _ := decodeBase64(enrol["qr_code_png"].(string))
	if err := os.WriteFile(qr, png, 0o600); err != nil {
		t.Fatal(err)
	}
	uri, err := url.Parse(run1(t, "zbarimg", "-q", "--raw", qr))
	if err != nil || uri.Scheme != "otpauth" {
		t.Fatalf("QR code: %v %v", uri, err)
	}
	secret := uri.Query().Get("secret")
	if secret != enrol["secret"] {
		t.Fatalf("QR secret %q, text secret %q", secret, enrol["secret"])
	}
	conf := api.call("POST", "/v1/users/zoe/enrollments/totp/confirmation", app, "", map[string]any{"code": run1(t, "oathtool", "--totp", "-b", secret)}, 200)
	codes := conf["backup_codes"].([]any)
	if len(codes) != 10 {
		t.Fatalf("%d backup codes", len(codes))
	}

	// Register an email address (fresh after the confirmation); its code arrives by mail.
	api.call("POST", "/v1/users/zoe/enrollments/email", app, "", map[string]any{"destination": "zoe@acme.test"}, 201)
	setup := box.await(t, "zoe@acme.test", "Confirm your")
	api.call("POST", "/v1/users/zoe/enrollments/email/confirmation", app, "", map[string]any{"code": codeIn(t, setup)}, 200)

	// Log in with the app, then with backup codes down to two: the warning arrives once.
	api.call("POST", "/v1/users/zoe/verifications", app, "", map[string]any{"method": "totp",
		"code": run1(t, "oathtool", "--totp", "-b", "-N", "now + 30 seconds", secret)}, 200)
	for i := 0; i < 8; i++ {
		v := api.call("POST", "/v1/users/zoe/verifications", app, "", map[string]any{"method": "backup_code", "code": codes[i]}, 200)
		if int(v["backup_codes_remaining"].(float64)) != 9-i {
			t.Fatalf("remaining %v after %d", v["backup_codes_remaining"], i+1)
		}
	}
	low := box.await(t, "zoe@acme.test", "Only 2 backup codes left")
	if strings.Contains(low.Text, codes[9].(string)) {
		t.Fatal("the warning contains a backup code")
	}

	// An admin switches her to email OTP; she logs in with the emailed code.
	api.call("POST", "/v1/users/zoe/method-switch", admin, "admin:bob", map[string]any{"to": "email", "reason": "lost phone"}, 200)
	box.await(t, "zoe@acme.test", "Your sign-in method was changed")
	ch := api.call("POST", "/v1/users/zoe/challenges", app, "", nil, 200)
	if ch["code_sent_by"] != "email" {
		t.Fatalf("challenge: %v", ch)
	}
	otp := box.await(t, "zoe@acme.test", "sign-in code")
	v := api.call("POST", "/v1/users/zoe/verifications", app, "", map[string]any{"method": "email", "code": codeIn(t, otp)}, 200)
	if v["verified"] != true {
		t.Fatalf("login with the emailed code: %v", v)
	}

	// Admins see the last write: the user's status (from the stream) and the list once the read model caught up.
	pos := int64(v["position"].(float64))
	st := api.call("GET", fmt.Sprintf("/v1/users/zoe?min_position=%d", pos), admin, "admin:bob", nil, 200)
	if st["default_method"] != "email" || st["last_verified_method"] != "email" {
		t.Fatalf("status: %v", st)
	}
	list := api.call("GET", fmt.Sprintf("/v1/users?status=activated&method=email&min_position=%d", pos), admin, "admin:bob", nil, 200)
	if users := list["users"].([]any); len(users) != 1 {
		t.Fatalf("list: %v", list)
	}
	cov := api.call("GET", fmt.Sprintf("/v1/coverage?min_position=%d", pos), tenant.APIKeys["auditor"].Token, "auditor:ann", nil, 200)
	if cov["activated"].(float64) != 1 {
		t.Fatalf("coverage: %v", cov)
	}
	if n := box.count("Only 2 backup codes left"); n != 1 {
		t.Fatalf("%d low-codes warnings", n)
	}
	// No code or secret in the service's logs.
	for _, s := range []string{secret, codeIn(t, otp), codes[0].(string), app} {
		if strings.Contains(srv.Logs.String(), s) {
			t.Fatalf("the service log contains %q", s)
		}
	}
}

func decodeBase64(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }
