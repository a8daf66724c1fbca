package handlers_test

import (
	"bytes"
	"context"
	"errors"
	"image/png"
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers"
	"github.com/twofactor/twofactor/internal/testkit"
)

func TestTOTPJourneyThroughTheAPI(t *testing.T) {
	h := newHarness(t, nil)
	u := "alice"

	// A user the tenant has never seen: no status, and login says 2FA is off.
	h.asUser("GET", u, "", nil).want(404, "user_not_found")
	ch := h.asUser("POST", u, "/challenges", nil).want(200).json()
	if ch["enabled"] != false || ch["enrollment_required"] != false || ch["position"].(float64) != 0 {
		t.Fatalf("challenge for an unknown user: %v", ch)
	}

	start := h.asUser("POST", u, "/enrollments/totp", map[string]any{"account_name": "alice@example.com"}).want(201)
	var enrol struct {
		Secret     string    `json:"secret"`
		URI        string    `json:"otpauth_uri"`
		QR         []byte    `json:"qr_code_png"`
		ExpiresAt  time.Time `json:"expires_at"`
		Position   int64     `json:"position"`
		MethodName string    `json:"method"`
	}
	start.decode(&enrol)
	if _, err := png.Decode(bytes.NewReader(enrol.QR)); err != nil {
		t.Fatalf("qr_code_png is not a PNG: %v", err)
	}
	if !strings.HasPrefix(enrol.URI, "otpauth://totp/") || !strings.Contains(enrol.URI, "secret="+enrol.Secret) || enrol.Position <= 0 {
		t.Fatalf("enrolment: %+v", enrol)
	}
	if len(enrol.Secret) < 32 { // 160 bits in base32
		t.Fatalf("secret %q is shorter than 160 bits", enrol.Secret)
	}
	if s := h.asUser("GET", u, "", nil).want(200).json(); s["status"] != "pending" || s["enabled"] != false {
		t.Fatalf("status after start: %v", s)
	}

	// Wrong, malformed, then right first code.
	wrong := h.asUser("POST", u, "/enrollments/totp/confirmation", map[string]any{"code": h.WrongCode(enrol.Secret)}).want(422, "otp_invalid")
	if wrong.num("attempts_remaining") != 4 {
		t.Fatalf("attempts_remaining: %s", wrong.raw)
	}
	h.asUser("POST", u, "/enrollments/totp/confirmation", map[string]any{"code": "١٢٣٤٥٦"}).want(400, domain.CodeMalformedCode)
	tok, _ := h.app()
	conf := h.do(call{method: "POST", path: userPath(u, "/enrollments/totp/confirmation"), token: tok,
		body: map[string]any{"code": h.CodeAt(enrol.Secret, 0)}, header: map[string]string{"X-Request-Id": "req-confirm-1"}}).want(200)
	var act struct {
		BackupCodes []string `json:"backup_codes"`
		Enabled     bool     `json:"enabled"`
	}
	conf.decode(&act)
	if len(act.BackupCodes) != 10 || !act.Enabled {
		t.Fatalf("activation: %s", conf.raw)
	}
	if conf.header.Get("X-Request-Id") != "req-confirm-1" {
		t.Fatalf("request id not echoed: %q", conf.header.Get("X-Request-Id"))
	}
	actor, keyID, reqID := h.metadataOfLast(u)
	if actor != (domain.Actor{Kind: domain.ActorUser, ID: u}) || keyID != h.keyIDs[handlers.RoleApp] || reqID != "req-confirm-1" {
		t.Fatalf("metadata: actor %+v key %q request %q", actor, keyID, reqID)
	}
	h.asUser("POST", u, "/enrollments/totp/confirmation", map[string]any{"code": h.CodeAt(enrol.Secret, 0)}).want(409, domain.CodeNoPendingEnrollment)

	// Login with the app, no replay.
	h.Clock.Advance(time.Minute)
	ch = h.asUser("POST", u, "/challenges", map[string]any{}).want(200).json()
	if ch["enabled"] != true || ch["default_method"] != "totp" || ch["code_sent_by"] != nil {
		t.Fatalf("challenge: %v", ch)
	}
	code := h.CodeAt(enrol.Secret, 0)
	v := h.asUser("POST", u, "/verifications", map[string]any{"method": "totp", "code": code}).want(200).json()
	if v["verified"] != true || v["backup_codes_remaining"].(float64) != 10 {
		t.Fatalf("verification: %v", v)
	}
	h.asUser("POST", u, "/verifications", map[string]any{"method": "totp", "code": code}).want(422, "otp_invalid")

	// Backup codes work once and report what is left.
	v = h.asUser("POST", u, "/verifications", map[string]any{"method": "backup_code", "code": strings.ToUpper(act.BackupCodes[0])}).want(200).json()
	if v["backup_codes_remaining"].(float64) != 9 || v["method"] != "backup_code" {
		t.Fatalf("backup code: %v", v)
	}
	h.asUser("POST", u, "/verifications", map[string]any{"method": "backup_code", "code": act.BackupCodes[0]}).want(422, "otp_invalid")
	h.asUser("POST", u, "/verifications", map[string]any{"method": "carrier_pigeon", "code": "1"}).want(400, "invalid_method")
	d := h.asUser("PUT", u, "/default-method", map[string]any{"method": "totp"}).want(200).json()
	if d["changed"] != false || d["position"].(float64) != 0 {
		t.Fatalf("default method unchanged: %v", d)
	}
	h.asUser("PUT", u, "/default-method", map[string]any{"method": "email"}).want(409, domain.CodeMethodNotEnrolled)
	// Where messages go for this app-only user (verified moments ago, so fresh).
	h.asUser("PUT", u, "/contact-address", map[string]any{"method": "email", "address": "not an address"}).want(400, "invalid_email")
	h.asUser("PUT", u, "/contact-address", map[string]any{"method": "totp", "address": "x@example.com"}).want(400)
	ca := h.asUser("PUT", u, "/contact-address", map[string]any{"method": "email", "address": "login@example.com"}).want(200).json()
	if ca["changed"] != true || ca["position"].(float64) == 0 {
		t.Fatalf("contact address: %v", ca)
	}

	// Sensitive changes need a fresh verification.
	h.Clock.Advance(time.Hour)
	p := h.asUser("POST", u, "/backup-codes", nil).want(403, "reauthentication_required")
	if p.str("reason") != domain.CodeFreshVerification {
		t.Fatalf("reason: %s", p.raw)
	}
	h.asUser("POST", u, "/verifications", map[string]any{"method": "totp", "code": h.CodeAt(enrol.Secret, 0)}).want(200)
	var regen struct {
		BackupCodes []string `json:"backup_codes"`
		Position    int64    `json:"position"`
	}
	h.asUser("POST", u, "/backup-codes", nil).want(201).decode(&regen)
	if len(regen.BackupCodes) != 10 || regen.Position <= 0 {
		t.Fatalf("regenerated: %+v", regen)
	}
	h.asUser("POST", u, "/verifications", map[string]any{"method": "backup_code", "code": act.BackupCodes[1]}).want(422, "otp_invalid")

	// Replace the authenticator: a new secret, new backup codes.
	var again struct {
		Secret string `json:"secret"`
	}
	h.asUser("POST", u, "/enrollments/totp", nil).want(201).decode(&again)
	h.Clock.Advance(30 * time.Second)
	conf = h.asUser("POST", u, "/enrollments/totp/confirmation", map[string]any{"code": h.CodeAt(again.Secret, 0)}).want(200)
	conf.decode(&act)
	if again.Secret == enrol.Secret || len(act.BackupCodes) != 10 {
		t.Fatalf("replacement: %s", conf.raw)
	}

	// The user switches 2FA off (allowed by default, fresh verification just made).
	h.asUser("DELETE", u, "/two-factor", nil).want(200)
	if s := h.asUser("GET", u, "", nil).want(200).json(); s["status"] != "disabled" || s["backup_codes_remaining"].(float64) != 0 {
		t.Fatalf("after disable: %v", s)
	}
	h.asUser("DELETE", u, "/two-factor", nil).want(409, "enrollment_required")
}

func TestEmailAndSMSThroughTheAPI(t *testing.T) {
	h := newHarness(t, nil)
	u := "bob"
	h.asUser("POST", u, "/enrollments/email", map[string]any{"destination": "Bob <bob@example.com>"}).want(400, "invalid_email")
	h.asUser("POST", u, "/enrollments/email", nil).want(400, "invalid_json")
	h.asUser("POST", u, "/enrollments/email", map[string]any{"destination": "bob@example.com", "account_name": "x"}).want(400, domain.CodeInvalidArgument)
	sent := h.asUser("POST", u, "/enrollments/email", map[string]any{"destination": "bob@example.com"}).want(201).json()
	if sent["method"] != "email" || sent["expires_at"] == nil {
		t.Fatalf("code sent: %v", sent)
	}
	again := h.asUser("POST", u, "/enrollments/email", map[string]any{"destination": "bob@example.com"}).want(429, domain.CodeResendTooSoon)
	if again.header.Get("Retry-After") == "" {
		t.Fatal("resend_too_soon without Retry-After")
	}
	act := h.asUser("POST", u, "/enrollments/email/confirmation", map[string]any{"code": h.SentCode(u)}).want(200).json()
	if codes, _ := act["backup_codes"].([]any); len(codes) != 10 {
		t.Fatalf("activation: %v", act)
	}

	h.Clock.Advance(time.Hour)
	ch := h.asUser("POST", u, "/challenges", nil).want(200).json()
	if ch["code_sent_by"] != "email" || ch["code_expires_at"] == nil {
		t.Fatalf("challenge: %v", ch)
	}
	h.asUser("POST", u, "/verifications", map[string]any{"method": "email", "code": "12345"}).want(400, domain.CodeMalformedCode)
	h.asUser("POST", u, "/verifications", map[string]any{"method": "email", "code": h.SentCode(u)}).want(200)
	h.asUser("POST", u, "/verifications", map[string]any{"method": "email", "code": h.SentCode(u)}).want(409, domain.CodeNoPendingCode)
	h.asUser("POST", u, "/verifications", map[string]any{"method": "sms", "code": "123456"}).want(409, domain.CodeMethodNotEnrolled)

	// Adding SMS needs the fresh verification the emailed code just gave.
	h.asUser("POST", u, "/enrollments/sms", map[string]any{"destination": "0123"}).want(400, "invalid_phone")
	h.Clock.Advance(time.Hour)
	h.asUser("POST", u, "/enrollments/sms", map[string]any{"destination": "+14155550123"}).want(403, "reauthentication_required")

	// The tenant switches email off: forbidden_by_policy with the precise reason.
	tok, actor := h.admin()
	h.do(call{method: "PATCH", path: "/v1/policy", token: tok, actor: actor, body: map[string]any{"email_otp_allowed": false}}).want(200)
	p := h.asUser("POST", u, "/challenges", map[string]any{"method": "email"}).want(403, "forbidden_by_policy")
	if p.str("reason") != domain.CodeMethodDisabled {
		t.Fatalf("reason: %s", p.raw)
	}
}

func TestLockoutAndAdminUnlock(t *testing.T) {
	h := newHarness(t, nil)
	u := "carol"
	secret, _ := h.enrolTOTP(u)
	h.Clock.Advance(time.Minute)
	wrong := h.WrongCode(secret)
	for left := 4; left >= 1; left-- {
		r := h.asUser("POST", u, "/verifications", map[string]any{"method": "totp", "code": wrong}).want(422, "otp_invalid")
		if int(r.num("attempts_remaining")) != left {
			t.Fatalf("attempts_remaining %v, want %d", r.num("attempts_remaining"), left)
		}
	}
	locked := h.asUser("POST", u, "/verifications", map[string]any{"method": "totp", "code": wrong}).want(423, "locked")
	if locked.header.Get("Retry-After") != "900" || locked.num("attempts_remaining") != 0 {
		t.Fatalf("lock: %v %s", locked.header, locked.raw)
	}
	until, err := time.Parse(time.RFC3339, locked.str("locked_until"))
	if err != nil || !until.Equal(h.Clock.Now().Add(15*time.Minute).Truncate(time.Second)) {
		t.Fatalf("locked_until %q (%v)", locked.str("locked_until"), err)
	}
	h.asUser("POST", u, "/verifications", map[string]any{"method": "totp", "code": h.CodeAt(secret, 0)}).want(423, "locked")
	if s := h.asAdmin("GET", u, "", nil).want(200).json(); s["status"] != "locked" || s["locked_until"] == nil {
		t.Fatalf("admin sees: %v", s)
	}
	h.asUser("DELETE", u, "/lock", nil).want(403, "forbidden")
	h.asAdmin("DELETE", u, "/lock", map[string]any{"reason": "called support"}).want(200)
	actor, keyID, _ := h.metadataOfLast(u)
	if actor != (domain.Actor{Kind: domain.ActorAdmin, ID: "bob"}) || keyID != h.keyIDs[handlers.RoleAdmin] {
		t.Fatalf("unlock metadata: %+v %q", actor, keyID)
	}
	if reason := h.Records(u)[len(h.Records(u))-1].Metadata.Reason; reason != "called support" {
		t.Fatalf("reason %q", reason)
	}
	h.asAdmin("DELETE", u, "/lock", nil).want(409, domain.CodeNotLocked)
	h.asUser("POST", u, "/verifications", map[string]any{"method": "totp", "code": h.CodeAt(secret, 0)}).want(200)
}

func TestAdminRoutes(t *testing.T) {
	h := newHarness(t, nil)
	tok, actor := h.admin()

	// Who acts: the header is required, and must fit the key's role.
	h.do(call{method: "PUT", path: userPath("dave", "/requirement"), token: tok, body: map[string]any{"required": true}}).want(400, "actor_required")
	h.do(call{method: "PUT", path: userPath("dave", "/requirement"), token: tok, actor: "superadmin:bob", body: map[string]any{"required": true}}).want(403, "forbidden")
	h.do(call{method: "PUT", path: userPath("dave", "/requirement"), token: tok, actor: "admin bob", body: map[string]any{"required": true}}).want(400, "invalid_actor")
	appTok, _ := h.app()
	h.do(call{method: "GET", path: userPath("dave", ""), token: appTok, actor: "user:eve"}).want(400, "invalid_actor")

	// Require 2FA: the next login must enrol.
	h.asAdmin("PUT", "dave", "/requirement", map[string]any{}).want(400, domain.CodeInvalidArgument)
	r := h.asAdmin("PUT", "dave", "/requirement", map[string]any{"required": true, "reason": "policy"}).want(200).json()
	if r["changed"] != true || r["position"].(float64) <= 0 {
		t.Fatalf("require: %v", r)
	}
	if r := h.asAdmin("PUT", "dave", "/requirement", map[string]any{"required": true}).want(200).json(); r["changed"] != false {
		t.Fatalf("require twice: %v", r)
	}
	if ch := h.asUser("POST", "dave", "/challenges", nil).want(200).json(); ch["enrollment_required"] != true {
		t.Fatalf("required user challenge: %v", ch)
	}
	_, _ = h.enrolTOTP("dave")
	// Required, and not allowed to toggle: only an admin switches it off.
	h.asAdmin("PUT", "dave", "/toggle-permission", map[string]any{"can_toggle": false}).want(200)
	if p := h.asUser("DELETE", "dave", "/two-factor", nil).want(403, "forbidden_by_policy"); p.str("reason") != domain.CodeRequired {
		t.Fatalf("reason: %s", p.raw)
	}

	// Can toggle.
	h.enrolTOTP("erin")
	if r := h.asAdmin("PUT", "erin", "/toggle-permission", map[string]any{"can_toggle": false}).want(200).json(); r["can_toggle"] != false || r["changed"] != true {
		t.Fatalf("toggle: %v", r)
	}
	p := h.asUser("DELETE", "erin", "/two-factor", nil).want(403, "forbidden_by_policy")
	if p.str("reason") != domain.CodeNotAllowed {
		t.Fatalf("reason: %s", p.raw)
	}

	// Switch to email and back to the app at the next login.
	h.asAdmin("POST", "erin", "/method-switch", map[string]any{"to": "email"}).want(400, domain.CodeInvalidArgument)
	sw := h.asAdmin("POST", "erin", "/method-switch", map[string]any{"to": "email", "destination": "erin@example.com"}).want(200).json()
	if sw["to"] != "email" {
		t.Fatalf("switch: %v", sw)
	}
	if s := h.asAdmin("GET", "erin", "", nil).want(200).json(); s["default_method"] != "email" {
		t.Fatalf("after switch: %v", s)
	}
	h.asAdmin("POST", "erin", "/method-switch", map[string]any{"to": "totp"}).want(200)
	if s := h.asAdmin("GET", "erin", "", nil).want(200).json(); s["status"] != "setup_app_at_next_login" {
		t.Fatalf("after switch to app: %v", s)
	}
	// The next login sets the app up, verified first by the email code the tenant allows.
	ch := h.asUser("POST", "erin", "/challenges", nil).want(200).json()
	if ch["enrollment_required"] != true || ch["setup_app_at_next_login"] != true || ch["enabled"] != true ||
		ch["code_sent_by"] != "email" || len(ch["methods"].([]any)) != 1 || ch["methods"].([]any)[0] != "email" {
		t.Fatalf("challenge after the switch to the app: %v", ch)
	}
	// Switching back to email cancels the pending switch; once more changes nothing.
	h.asAdmin("POST", "erin", "/method-switch", map[string]any{"to": "email"}).want(200)
	h.asAdmin("POST", "erin", "/method-switch", map[string]any{"to": "email"}).want(409, domain.CodeNothingToChange)

	// Reset, and an admin's own reset needs a super admin.
	h.asAdmin("POST", "erin", "/reset", nil).want(200)
	if s := h.asAdmin("GET", "erin", "", nil).want(200).json(); s["status"] != "reset_pending" || s["must_enroll"] != true {
		t.Fatalf("after reset: %v", s)
	}
	h.asAdmin("POST", "erin", "/reset", nil).want(409, domain.CodeNothingToChange)
	h.enrolTOTP("bob")
	p = h.do(call{method: "POST", path: userPath("bob", "/reset"), token: tok, actor: actor}).want(403, "forbidden_by_policy")
	if p.str("reason") != domain.CodeSelfReset {
		t.Fatalf("reason: %s", p.raw)
	}
	h.do(call{method: "POST", path: userPath("bob", "/reset"), token: h.tokens[handlers.RoleSuperAdmin], actor: "superadmin:root"}).want(200)

	// Remove a method: not the last one.
	h.asAdmin("DELETE", "dave", "/methods/totp", nil).want(409, domain.CodeLastMethod)
	h.asAdmin("DELETE", "dave", "/methods/fax", nil).want(400, "invalid_method")

	// Disable by an admin, and erase.
	h.asAdmin("DELETE", "dave", "/two-factor", map[string]any{"reason": "left the company"}).want(200)
	h.asAdmin("DELETE", "dave", "", nil).want(200)
	h.asAdmin("GET", "dave", "", nil).want(404, "user_not_found")
	h.asAdmin("DELETE", "dave", "", nil).want(404, "user_not_found")
	h.asAdmin("DELETE", "nobody", "", nil).want(404, "user_not_found")
	h.asAdmin("POST", "nobody", "/reset", nil).want(404, "user_not_found")

	// The read-model routes answer 501 in a build without the read side.
	h.do(call{method: "GET", path: "/v1/users", token: tok, actor: actor}).want(501, "not_implemented")
	h.do(call{method: "GET", path: "/v1/coverage", token: tok, actor: actor}).want(501, "not_implemented")
	h.do(call{method: "GET", path: "/v1/users?statuss=locked", token: tok, actor: actor}).want(400, domain.CodeInvalidArgument)
	h.do(call{method: "GET", path: "/v1/users", token: appTok}).want(403, "forbidden")
}

func TestPolicyRoutes(t *testing.T) {
	h := newHarness(t, nil)
	tok, actor := h.admin()
	var p handlers.PolicyView
	appTok, _ := h.app()
	h.do(call{method: "GET", path: "/v1/policy", token: appTok}).want(200).decode(&p)
	if p != handlers.ViewPolicy(domain.DefaultPolicy()) {
		t.Fatalf("policy: %+v", p)
	}
	h.do(call{method: "PATCH", path: "/v1/policy", token: appTok, body: map[string]any{"backup_code_count": 12}}).want(403, "forbidden")
	res := h.do(call{method: "PATCH", path: "/v1/policy", token: tok, actor: actor, body: map[string]any{"backup_code_count": 12, "otp_lifetime_seconds": 300}}).want(200).json()
	pol := res["policy"].(map[string]any)
	if pol["backup_code_count"].(float64) != 12 || pol["otp_lifetime_seconds"].(float64) != 300 || res["changed"] != true {
		t.Fatalf("patched: %v", res)
	}
	if r := h.do(call{method: "PATCH", path: "/v1/policy", token: tok, actor: actor, body: map[string]any{"backup_code_count": 12}}).want(200).json(); r["changed"] != false {
		t.Fatalf("same patch: %v", r)
	}
	h.do(call{method: "PATCH", path: "/v1/policy", token: tok, actor: actor, body: map[string]any{"backup_code_count": 50}}).want(400, domain.CodeInvalidPolicy)
	h.do(call{method: "PATCH", path: "/v1/policy", token: tok, actor: actor, body: map[string]any{"totp_period_seconds": 1 << 60}}).want(400, domain.CodeInvalidPolicy)
	h.do(call{method: "PATCH", path: "/v1/policy", token: tok, actor: actor, body: map[string]any{"tenant_id": "x"}}).want(400, "unknown_field")
	h.do(call{method: "PATCH", path: "/v1/policy", token: tok, actor: actor, body: map[string]any{"disable_by": "superadmins"}}).want(403, "forbidden_by_policy")
	h.do(call{method: "PATCH", path: "/v1/policy", token: h.tokens[handlers.RoleSuperAdmin], actor: "superadmin:root",
		contentType: "application/merge-patch+json", body: map[string]any{"disable_by": "superadmins"}}).want(200)
	h.enrolTOTP("fay")
	h.asAdmin("DELETE", "fay", "/two-factor", nil).want(403, "forbidden_by_policy")
}

func TestAuditRoutes(t *testing.T) {
	h := newHarness(t, nil)
	h.enrolTOTP("gus")
	before := h.Clock.Now()
	h.Clock.Advance(time.Hour)
	h.asAdmin("POST", "gus", "/reset", map[string]any{"reason": "lost phone"}).want(200)

	aud, who := h.tokens[handlers.RoleAuditor], "auditor:ann"
	var page struct {
		Entries []struct {
			Type   string       `json:"type"`
			Actor  domain.Actor `json:"actor"`
			KeyID  string       `json:"key_id"`
			Reason string       `json:"reason"`
		} `json:"entries"`
	}
	h.do(call{method: "GET", path: "/v1/audit/users/gus/events", token: aud, actor: who}).want(200).decode(&page)
	last := page.Entries[len(page.Entries)-1]
	if last.Type != "TwoFactorReset" || last.Actor.ID != "bob" || last.KeyID != h.keyIDs[handlers.RoleAdmin] || last.Reason != "lost phone" {
		t.Fatalf("history: %+v", page.Entries)
	}
	h.do(call{method: "GET", path: "/v1/audit/users/nobody/events", token: aud, actor: who}).want(404, "user_not_found")
	feed := h.do(call{method: "GET", path: "/v1/audit/events?limit=2&type=TwoFactorEnabled", token: aud, actor: who}).want(200).json()
	if n := len(feed["entries"].([]any)); n != 1 {
		t.Fatalf("feed filtered by type: %v", feed)
	}
	h.do(call{method: "GET", path: "/v1/audit/events?type=Nope", token: aud, actor: who}).want(400, domain.CodeInvalidArgument)
	state := h.do(call{method: "GET", path: "/v1/audit/users/gus/state?at=" + before.Format(time.RFC3339), token: aud, actor: who}).want(200).json()
	if state["status"] != "activated" {
		t.Fatalf("state before the reset: %v", state)
	}
	h.do(call{method: "GET", path: "/v1/audit/users/gus/state?at=yesterday", token: aud, actor: who}).want(400, domain.CodeInvalidArgument)
	if v := h.do(call{method: "GET", path: "/v1/audit/verification", token: aud, actor: who}).want(200).json(); v["ok"] != true {
		t.Fatalf("verify: %v", v)
	}
	h.do(call{method: "GET", path: "/v1/audit/events", token: aud}).want(400, "actor_required")
	appTok, _ := h.app()
	h.do(call{method: "GET", path: "/v1/audit/events", token: appTok}).want(403, "forbidden")
	tok, actor := h.admin()
	h.do(call{method: "GET", path: "/v1/audit/events", token: tok, actor: actor}).want(403, "forbidden")

	// Every auditor read is in the access log.
	var reads int
	must(t, h.Pool.QueryRow(t.Context(), `SELECT count(*) FROM audit_access_log WHERE tenant_id = $1 AND actor_id = 'ann'`, h.Tenant).Scan(&reads))
	if reads < 5 {
		t.Fatalf("%d audited reads logged", reads)
	}
}

func TestOperatorAndKeyRoutes(t *testing.T) {
	h := newHarness(t, nil)
	h.do(call{method: "POST", path: "/v1/operator/tenants", token: "wrong", body: map[string]any{"name": "Beta"}}).want(401, "unauthenticated")
	h.do(call{method: "POST", path: "/v1/operator/tenants", token: h.tokens[handlers.RoleSuperAdmin], body: map[string]any{"name": "Beta"}}).want(401, "unauthenticated")
	var created handlers.TenantWithKeys
	h.do(call{method: "POST", path: "/v1/operator/tenants", token: h.operatorKey,
		body: map[string]any{"name": "Beta", "policy": map[string]any{"backup_code_count": 5, "low_backup_codes_warning": 1}}}).want(201).decode(&created)
	if len(created.APIKeys) != 4 || created.TenantID == "" {
		t.Fatalf("created: %+v", created)
	}
	h.do(call{method: "POST", path: "/v1/operator/tenants", token: h.operatorKey, body: map[string]any{"name": ""}}).want(400, domain.CodeInvalidArgument)
	var appKey string
	for _, k := range created.APIKeys {
		if k.Role == handlers.RoleApp {
			appKey = k.Token
		}
	}
	var pol handlers.PolicyView
	h.do(call{method: "GET", path: "/v1/policy", token: appKey}).want(200).decode(&pol)
	if pol.BackupCodeCount != 5 {
		t.Fatalf("policy of the new tenant: %+v", pol)
	}
	base := "/v1/operator/tenants/" + created.TenantID + "/api-keys"
	list := h.do(call{method: "GET", path: base, token: h.operatorKey}).want(200).json()
	if n := len(list["api_keys"].([]any)); n != 4 {
		t.Fatalf("keys: %v", list)
	}
	h.do(call{method: "GET", path: "/v1/operator/tenants/no-such/api-keys", token: h.operatorKey}).want(404, domain.CodeTenantNotFound)
	var issued handlers.IssuedKey
	h.do(call{method: "POST", path: base, token: h.operatorKey, body: map[string]any{"role": "auditor", "name": "external"}}).want(201).decode(&issued)
	h.do(call{method: "POST", path: base, token: h.operatorKey, body: map[string]any{"role": "root"}}).want(400, "invalid_role")
	h.do(call{method: "GET", path: "/v1/audit/verification", token: issued.Token, actor: "auditor:x"}).want(200)
	h.do(call{method: "DELETE", path: base + "/" + issued.KeyID, token: h.operatorKey}).want(200)
	h.do(call{method: "GET", path: "/v1/audit/verification", token: issued.Token, actor: "auditor:x"}).want(401, "unauthenticated")
	h.do(call{method: "DELETE", path: base + "/" + h.keyIDs[handlers.RoleApp], token: h.operatorKey}).want(404, "api_key_not_found")

	// A tenant's super admins manage its own keys; nobody else does.
	sa, who := h.tokens[handlers.RoleSuperAdmin], "superadmin:root"
	h.do(call{method: "POST", path: "/v1/api-keys", token: sa, actor: who, body: map[string]any{"role": "app"}}).want(201).decode(&issued)
	if !strings.HasPrefix(issued.Token, handlers.TokenPrefix+issued.KeyID+"_") || issued.CreatedBy != who {
		t.Fatalf("issued: %+v", issued)
	}
	h.asUser("GET", "nobody", "", nil).want(404)
	h.do(call{method: "GET", path: "/v1/api-keys", token: sa, actor: who}).want(200)
	tok, actor := h.admin()
	h.do(call{method: "GET", path: "/v1/api-keys", token: tok, actor: actor}).want(403, "forbidden")
	h.do(call{method: "DELETE", path: "/v1/api-keys/" + issued.KeyID, token: sa, actor: who}).want(200)
	h.do(call{method: "GET", path: "/v1/policy", token: issued.Token}).want(401, "unauthenticated")
	h.do(call{method: "DELETE", path: "/v1/api-keys/" + created.APIKeys[0].KeyID, token: sa, actor: who}).want(404, "api_key_not_found")

	// No stored token: only hashes.
	if tables := scanFor(h, issued.Token); len(tables) > 0 {
		t.Fatalf("a token is stored in %v", tables)
	}
}

func TestHealthMetricsAndDocument(t *testing.T) {
	h := newHarness(t, nil)
	h.do(call{method: "GET", path: "/healthz"}).want(200)
	h.do(call{method: "GET", path: "/readyz"}).want(200)
	doc := h.do(call{method: "GET", path: "/openapi.yaml"}).want(200)
	if !bytes.Equal(doc.raw, handlers.OpenAPI) {
		t.Fatal("/openapi.yaml is not the embedded document")
	}
	h.enrolTOTP("hal")
	h.asUser("POST", "hal", "/verifications", map[string]any{"method": "totp", "code": "000000"})
	m := h.do(call{method: "GET", path: "/metrics"}).want(200)
	for _, want := range []string{
		`twofactor_http_request_duration_seconds_count{method="POST",route="/v1/users/:user_id/enrollments/:method",status="201"}`,
		`twofactor_command_outcomes_total{command="ConfirmTOTPEnrollment",outcome="ok"}`,
		`twofactor_command_conflicts_retried_total`,
		`go_goroutines`,
	} {
		if !strings.Contains(string(m.raw), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	h.do(call{method: "GET", path: "/nope"}).want(404, "not_found")
	h.do(call{method: "PUT", path: "/healthz"}).want(405, "method_not_allowed")
}

func TestReadinessFails(t *testing.T) {
	h := newHarness(t, nil, func(_ *handlers.Config, d *handlers.Deps) {
		d.Ready = append(d.Ready, handlers.ReadyCheck{Name: "consumers", Check: func(context.Context) error { return errors.New("router not running") }})
	})
	r := h.do(call{method: "GET", path: "/readyz"}).want(503).json()
	if r["checks"].(map[string]any)["consumers"] != "failing" {
		t.Fatalf("readyz: %v", r)
	}
}

func scanFor(h *harness, needle string) []string { return testkit.ScanDatabase(h.t, h.Pool, needle) }
