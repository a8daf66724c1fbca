package handlers_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/twofactor/twofactor/handlers"
)

// hostileBodies are invalid for every mutating route: none may get a 5xx or
// append an event.
func hostileBodies() map[string]string {
	deep := strings.Repeat("[", 1000) + strings.Repeat("]", 1000)
	return map[string]string{
		"code as number":          `{"code": 123456}`,
		"code null":               `{"code": null, "method": null}`,
		"code array":              `{"code": ["123456"]}`,
		"code object":             `{"code": {"$gt": ""}}`,
		"code boolean":            `{"code": true}`,
		"arabic-indic digits":     `{"method": "totp", "code": "١٢٣٤٥٦", "x": 1}`,
		"fullwidth digits":        `{"code": "１２３４５６", "to": 7}`,
		"sql in code":             `{"code": "' OR 1=1 --", "tenant_id": "x"}`,
		"sql drop":                `{"code": "1'; DROP TABLE events; --", "verified": true}`,
		"extra tenant_id":         `{"method": "totp", "code": "123456", "tenant_id": "another"}`,
		"extra verified":          `{"method": "totp", "code": "123456", "verified": true}`,
		"extra user_id":           `{"role": "app", "user_id": "root", "required": true}`,
		"extra enabled":           `{"to": "email", "destination": "a@example.com", "enabled": true}`,
		"top-level null":          `null`,
		"top-level array":         `[{"code": "123456"}]`,
		"top-level string":        `"123456"`,
		"top-level number":        `123456`,
		"truncated":               `{"code": "123456"`,
		"trailing data":           `{"code": "1"} {"code": "2"}`,
		"duplicate keys":          `{"method": "totp", "method": "backup_code", "code": "1", "code": "2"}`,
		"invalid utf-8":           "{\"code\": \"\xff\xfe\"}",
		"deep nesting":            `{"code": ` + deep + `}`,
		"nul in method":           `{"method": "totp\u0000", "code": "1", "name": 1}`,
		"crlf in destination":     `{"destination": "a@example.com\r\nBcc: evil@example.com", "code": 1}`,
		"huge number":             `{"totp_period_seconds": 1e308, "required": "yes"}`,
		"negative int64 min":      `{"otp_lifetime_seconds": -9223372036854775809, "can_toggle": "false"}`,
		"required as string":      `{"required": "true", "can_toggle": "true", "role": 1}`,
		"role injection":          `{"role": "superadmin'--", "name": {"a": 1}}`,
		"1 MB string":             `{"code": "` + strings.Repeat("7", 1<<20) + `"}`,
		"1 MB of whitespace":      strings.Repeat(" ", 1<<20) + `{}`,
		"backup code too long":    `{"method": "backup_code", "code": "` + strings.Repeat("a", 41) + `", "reason": 5}`,
		"unicode in backup code":  `{"method": "backup_code", "code": "ａｂｃｄｅ-ｆｇｈｉｊ", "extra": 1}`,
		"policy with tenant":      `{"backup_code_count": 10, "tenant_id": "another"}`,
		"escaped control chars":   `{"account_name": "\u0000\u001b[31m", "reason": null, "z": 0}`,
		"many fields":             `{` + strings.Repeat(`"a":1,`, 5000) + `"b":2}`,
		"json with comments":      `{/* hi */ "code": "123456"}`,
		"single quotes":           `{'code': '123456'}`,
		"bom":                     "\ufeff{\"code\": \"123456\"}",
		"number as destination":   `{"destination": 14155550123, "account_name": 5}`,
		"empty object in an enum": `{"method": {}, "to": [], "role": null, "name": 1}`,
	}
}

// hostilePaths are user ids that are no host product's id.
var hostilePaths = []string{
	"/v1/users/%27%20OR%201=1--/verifications",
	"/v1/users/" + strings.Repeat("a", 1000) + "/verifications",
	"/v1/users/%00/verifications",
	"/v1/users/%E2%80%AEevil/verifications",
	"/v1/users/a%0d%0aX-Injected:%201/verifications",
	"/v1/users/..%2F..%2Fetc/verifications",
	"/v1/users/%ff%fe/verifications",
}

func TestHostileInputsNeverFailTheServerNorAppend(t *testing.T) {
	h := newHarness(t, nil)
	h.enrolTOTP("hostile")
	before := h.eventCount()
	routes := 0
	for _, r := range engineRoutes(h) {
		if !mutating(r.method) || strings.HasPrefix(r.path, "/v1/operator") {
			continue
		}
		routes++
		for _, role := range []handlers.Role{handlers.RoleApp, handlers.RoleSuperAdmin} {
			actor := ""
			if role == handlers.RoleSuperAdmin {
				actor = "superadmin:root"
			}
			for name, body := range hostileBodies() {
				res := h.do(call{method: r.method, path: r.concrete("hostile", h.keyIDs[handlers.RoleApp], h.Tenant),
					token: h.tokens[role], actor: actor, body: body})
				if res.code < 400 {
					t.Errorf("%s as %s with %s: %d %s", r.key(), role, name, res.code, res.raw)
				}
			}
			for _, ct := range []string{"text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin1", "application/jsonx"} {
				res := h.do(call{method: r.method, path: r.concrete("hostile", h.keyIDs[handlers.RoleApp], h.Tenant),
					token: h.tokens[role], actor: actor, body: `{"code":"123456"}`, contentType: ct})
				res.want(http.StatusUnsupportedMediaType, "unsupported_media_type")
			}
		}
	}
	for _, p := range hostilePaths {
		res := h.do(call{method: "POST", path: p, token: h.tokens[handlers.RoleApp], body: map[string]any{"method": "totp", "code": "123456"}, skipContract: true})
		if res.code != http.StatusBadRequest && res.code != http.StatusNotFound {
			t.Errorf("POST %s: %d %s", p, res.code, res.raw)
		}
	}
	if routes < 15 {
		t.Fatalf("only %d routes", routes)
	}
	if after := h.eventCount(); after != before {
		t.Fatalf("hostile requests appended %d events", after-before)
	}
}

// FuzzVerificationBody: whatever the body, no 5xx; anything refused before a
// check appends nothing. `go test -fuzz FuzzVerificationBody ./handlers/` runs
// it for real; plain `go test` runs the seeds.
func FuzzVerificationBody(f *testing.F) {
	for _, b := range hostileBodies() {
		if len(b) < 10_000 {
			f.Add(b)
		}
	}
	f.Add(`{"method": "totp", "code": "000000"}`)
	f.Add(`{"method": "backup_code", "code": "abcde-fghjk"}`)
	var h *harness
	f.Fuzz(func(t *testing.T, body string) {
		if h == nil {
			h = newHarness(t, nil)
			h.enrolTOTP("fuzz")
		}
		h.t = t
		before := h.eventCount()
		res := h.do(call{method: "POST", path: userPath("fuzz", "/verifications"), token: h.tokens[handlers.RoleApp], body: body})
		checked := res.code == http.StatusOK || res.code == http.StatusUnprocessableEntity || res.code == http.StatusLocked
		if after := h.eventCount(); !checked && after != before {
			t.Fatalf("refused (%d) but appended %d events: %q", res.code, after-before, body)
		}
		if res.code == http.StatusLocked {
			tok, actor := h.admin()
			h.do(call{method: "DELETE", path: userPath("fuzz", "/lock"), token: tok, actor: actor})
		}
	})
}
