package handlers_test

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"testing"
	"unicode/utf8"

	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers"
)

// refusal is a request holding what no input may hold, and the field the 400
// must name.
type refusal struct {
	name  string
	req   call
	field string
	in    string
}

func (h *harness) apiKeyCount() int {
	h.t.Helper()
	var n int
	must(h.t, h.Pool.QueryRow(context.Background(), `SELECT count(*) FROM api_keys`).Scan(&n))
	return n
}

// TestUnstorableInputIsRefusedAtTheBoundary: for every place a request carries
// input (a body string, a body key, a path id, a query parameter, a header), a
// NUL and an invalid UTF-8 case answer 400 invalid_input naming the field, and
// nothing is appended or stored.
func TestUnstorableInputIsRefusedAtTheBoundary(t *testing.T) {
	h := newHarness(t, nil)
	h.enrolTOTP("alice")
	app := h.tokens[handlers.RoleApp]
	adm, bob := h.admin()
	sa, root := h.tokens[handlers.RoleSuperAdmin], "superadmin:root"
	aud, ann := h.tokens[handlers.RoleAuditor], "auditor:ann"
	ops := h.operatorKey
	keys := "/v1/operator/tenants/" + h.Tenant + "/api-keys"
	cases := []refusal{
		// JSON body strings, also written as escapes.
		{"policy issuer_name \\u0000", call{method: "PATCH", path: "/v1/policy", token: sa, actor: root, body: `{"issuer_name": "Acme\u0000"}`}, "issuer_name", "body"},
		{"policy support_contact raw NUL escape", call{method: "PATCH", path: "/v1/policy", token: adm, actor: bob, body: `{"support_contact": "\u0000"}`}, "support_contact", "body"},
		{"policy mail_from invalid UTF-8", call{method: "PATCH", path: "/v1/policy", token: sa, actor: root, body: "{\"mail_from\": \"a\xff@acme.example\"}"}, "mail_from", "body"},
		{"policy reason with a line feed", call{method: "PATCH", path: "/v1/policy", token: sa, actor: root, body: `{"backup_code_count": 12, "reason": "a\nb"}`}, "reason", "body"},
		{"nested policy in a new tenant", call{method: "POST", path: "/v1/operator/tenants", token: ops, body: `{"name": "Beta", "policy": {"issuer_name": "B\u0000"}}`}, "policy.issuer_name", "body"},
		{"tenant name invalid UTF-8", call{method: "POST", path: "/v1/operator/tenants", token: ops, body: "{\"name\": \"Beta\xc3\"}"}, "name", "body"},
		{"string in an array", call{method: "PUT", path: userPath("alice", "/requirement"), token: adm, actor: bob, body: `{"required": true, "extra": ["ok", "\u0000"]}`}, "extra[1]", "body"},
		{"reason \\u0000", call{method: "PUT", path: userPath("alice", "/requirement"), token: adm, actor: bob, body: `{"required": true, "reason": "why\u0000"}`}, "reason", "body"},
		{"optional reason invalid UTF-8", call{method: "POST", path: userPath("alice", "/reset"), token: adm, actor: bob, body: "{\"reason\": \"\xfe\"}"}, "reason", "body"},
		{"account name \\u0000", call{method: "POST", path: userPath("carol", "/enrollments/totp"), token: app, body: `{"account_name": "carol\u0000@example.com"}`}, "account_name", "body"},
		{"destination invalid UTF-8", call{method: "POST", path: userPath("carol", "/enrollments/email"), token: app, body: "{\"destination\": \"carol@ex\xffample.com\"}"}, "destination", "body"},
		{"contact address \\u0000", call{method: "PUT", path: userPath("alice", "/contact-address"), token: app, body: `{"method": "email", "address": "\u0000alice@example.com"}`}, "address", "body"},
		{"code \\u0000", call{method: "POST", path: userPath("alice", "/verifications"), token: app, body: `{"method": "totp", "code": "12345\u0000"}`}, "code", "body"},
		{"api key name \\u0000", call{method: "POST", path: "/v1/api-keys", token: sa, actor: root, body: `{"role": "app", "name": "ci\u0000"}`}, "name", "body"},
		{"api key name invalid UTF-8", call{method: "POST", path: keys, token: ops, body: "{\"role\": \"app\", \"name\": \"ci\xff\"}"}, "name", "body"},
		// JSON object keys.
		{"key \\u0000", call{method: "PATCH", path: "/v1/policy", token: sa, actor: root, body: `{"issuer\u0000name": "Acme"}`}, `issuer\x00name`, "body"},
		{"key invalid UTF-8", call{method: "PATCH", path: "/v1/policy", token: sa, actor: root, body: "{\"issuer\xffname\": \"Acme\"}"}, "issuer\ufffdname", "body"},
		{"nested key \\u0000", call{method: "POST", path: "/v1/operator/tenants", token: ops, body: `{"name": "Beta", "policy": {"\u0000": 1}}`}, `policy.\x00`, "body"},
		// Path ids, percent-encoded.
		{"user id %00", call{method: "POST", path: "/v1/users/%00/challenges", token: app, body: `{}`}, "user_id", "path"},
		{"user id %FF", call{method: "POST", path: "/v1/users/al%FFice/challenges", token: app, body: `{}`}, "user_id", "path"},
		{"user id %0A on a read", call{method: "GET", path: "/v1/users/a%0Ab", token: adm, actor: bob}, "user_id", "path"},
		{"method %00", call{method: "POST", path: userPath("alice", "/enrollments/totp%00"), token: app, body: `{}`}, "method", "path"},
		{"api key id %00", call{method: "DELETE", path: "/v1/api-keys/%00", token: sa, actor: root}, "key_id", "path"},
		{"api key id %FF", call{method: "DELETE", path: "/v1/api-keys/%FF", token: sa, actor: root}, "key_id", "path"},
		{"api key id %FF, 16 bytes", call{method: "DELETE", path: "/v1/api-keys/abcdefghijklmno%FF", token: sa, actor: root}, "key_id", "path"},
		{"operator tenant id %00", call{method: "GET", path: "/v1/operator/tenants/%00/api-keys", token: ops}, "tenant_id", "path"},
		{"operator tenant id %FF", call{method: "POST", path: "/v1/operator/tenants/%FF/api-keys", token: ops, body: `{"role": "app"}`}, "tenant_id", "path"},
		{"operator api key id %00", call{method: "DELETE", path: keys + "/%00", token: ops}, "key_id", "path"},
		{"operator api key id %FF", call{method: "DELETE", path: keys + "/%FF", token: ops}, "key_id", "path"},
		{"audit user id %FF", call{method: "GET", path: "/v1/audit/users/%FF/events", token: aud, actor: ann}, "user_id", "path"},
		// Query parameters.
		{"cursor %00", call{method: "GET", path: "/v1/users?cursor=%00", token: adm, actor: bob}, "cursor", "query"},
		{"cursor %FF", call{method: "GET", path: "/v1/users?cursor=a%FF", token: adm, actor: bob}, "cursor", "query"},
		{"status filter %00", call{method: "GET", path: "/v1/users?status=locked%00", token: adm, actor: bob}, "status", "query"},
		{"min_position %00", call{method: "GET", path: "/v1/users/alice?min_position=1%00", token: adm, actor: bob}, "min_position", "query"},
		{"at %FF", call{method: "GET", path: "/v1/audit/users/alice/state?at=2030-01-01T00:00:00Z%FF", token: aud, actor: ann}, "at", "query"},
		{"actor filter %00", call{method: "GET", path: "/v1/audit/events?actor=admin:%00", token: aud, actor: ann}, "actor", "query"},
		{"query name %00", call{method: "GET", path: "/v1/users?%00=1", token: adm, actor: bob}, `\x00`, "query"},
		{"query name %FF", call{method: "GET", path: "/v1/coverage?min%FF=1", token: adm, actor: bob}, `min\xff`, "query"},
		{"malformed query", call{method: "GET", path: "/v1/users?cursor=%zz", token: adm, actor: bob}, "query", "query"},
		// Security keys: the name is sealed in the event, so the boundary is the only check that sees it;
		// the browser's credential JSON is handed to the WebAuthn library only after the same walk.
		{"security key account name \\u0000", call{method: "POST", path: userPath("alice", "/security-keys/registration"), token: app, body: `{"account_name": "alice\u0000"}`}, "account_name", "body"},
		{"security key name \\u0000", call{method: "POST", path: userPath("alice", "/security-keys"), token: app, body: `{"name": "Blue\u0000", "credential": {"id": "x"}}`}, "name", "body"},
		{"security key name invalid UTF-8", call{method: "POST", path: userPath("alice", "/security-keys"), token: app, body: "{\"name\": \"Bl\xffue\", \"credential\": {\"id\": \"x\"}}"}, "name", "body"},
		{"security key credential \\u0000", call{method: "POST", path: userPath("alice", "/security-keys/verification"), token: app, body: `{"credential": {"id": "a\u0000b"}}`}, "credential.id", "body"},
		{"security key id %00", call{method: "DELETE", path: userPath("alice", "/security-keys/%00"), token: app}, "key_id", "path"},
		{"relying party name \\u0000", call{method: "PUT", path: "/v1/policy/webauthn", token: sa, actor: root, body: `{"rp_id": "example.com", "rp_name": "Ex\u0000", "origins": ["https://example.com"]}`}, "rp_name", "body"},
		// Headers the service reads.
		{"X-Actor NUL", call{method: "PUT", path: userPath("alice", "/requirement"), token: adm, actor: "admin:bob\x00", body: `{"required": true}`}, "X-Actor", "header"},
		{"X-Actor invalid UTF-8", call{method: "PUT", path: userPath("alice", "/requirement"), token: adm, actor: "admin:b\xffb", body: `{"required": true}`}, "X-Actor", "header"},
		{"Idempotency-Key NUL", call{method: "POST", path: userPath("alice", "/challenges"), token: app, body: `{}`, header: map[string]string{"Idempotency-Key": "k\x00"}}, "Idempotency-Key", "header"},
		{"Idempotency-Key invalid UTF-8", call{method: "POST", path: userPath("alice", "/challenges"), token: app, body: `{}`, header: map[string]string{"Idempotency-Key": "k\xff"}}, "Idempotency-Key", "header"},
		{"X-Request-Id NUL", call{method: "POST", path: userPath("alice", "/challenges"), token: app, body: `{}`, header: map[string]string{"X-Request-Id": "r\x00"}}, "X-Request-Id", "header"},
		{"X-Request-Id invalid UTF-8", call{method: "GET", path: "/v1/policy", token: app, header: map[string]string{"X-Request-Id": "\xc3"}}, "X-Request-Id", "header"},
		{"X-Correlation-Id NUL", call{method: "PUT", path: userPath("alice", "/requirement"), token: adm, actor: bob, body: `{"required": true}`, header: map[string]string{"X-Correlation-Id": "\x00"}}, "X-Correlation-Id", "header"},
		{"X-Correlation-Id invalid UTF-8", call{method: "PUT", path: userPath("alice", "/requirement"), token: adm, actor: bob, body: `{"required": true}`, header: map[string]string{"X-Correlation-Id": "c\xfe"}}, "X-Correlation-Id", "header"},
	}
	events, apiKeys := h.eventCount(), h.apiKeyCount()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h.t = t
			res := h.do(tc.req).want(http.StatusBadRequest, domain.CodeInvalidInput)
			var p handlers.Problem
			res.decode(&p)
			if len(p.InvalidParams) != 1 || p.InvalidParams[0].Name != tc.field || p.InvalidParams[0].In != tc.in {
				t.Errorf("invalid_params %+v, want %s in %s", p.InvalidParams, tc.field, tc.in)
			}
			// The answer names the field without echoing what was refused.
			if !utf8.Valid(res.raw) || bytes.Contains(res.raw, []byte(`\u0000`)) || bytes.Contains(res.raw, []byte("\ufffd")) && tc.in != "body" {
				t.Errorf("the problem echoes the input: %q", res.raw)
			}
			if after := h.eventCount(); after != events {
				t.Fatalf("appended %d events", after-events)
			}
			if after := h.apiKeyCount(); after != apiKeys {
				t.Fatalf("stored %d API keys", after-apiKeys)
			}
		})
	}
	h.t = t

	// The same routes take ordinary Unicode, and the policy still reads.
	h.do(call{method: "PATCH", path: "/v1/policy", token: sa, actor: root,
		body: `{"issuer_name": "Zürich – Ærø 🔐", "support_contact": "Support \u00e9quipe, +41 44 000 00 00", "reason": "rebrand"}`}).want(200)
	got := h.do(call{method: "GET", path: "/v1/policy", token: app}).want(200)
	if got.str("issuer_name") != "Zürich – Ærø 🔐" {
		t.Fatalf("policy after the change: %s", got.raw)
	}
}

// The report: a NUL in a policy string was appended and froze every
// projector. Now nothing reaches the tenant's stream, and the API-key routes
// answer 400, not 500, for ids that are not text.
func TestPolicyPatchWithNULAppendsNothing(t *testing.T) {
	h := newHarness(t, nil)
	sa, root := h.tokens[handlers.RoleSuperAdmin], "superadmin:root"
	var before int
	must(t, h.Pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE stream_id = $1`, "tenant:"+h.Tenant).Scan(&before))
	for i, body := range []string{
		`{"issuer_name": "\u0000"}`,
		`{"support_contact": "call us\u0000"}`,
		`{"mail_from": "a@b.example\u0000"}`,
		"{\"issuer_name\": \"\xff\xfe\"}",
	} {
		h.do(call{method: "PATCH", path: "/v1/policy", token: sa, actor: root, body: body,
			header: map[string]string{"Idempotency-Key": fmt.Sprintf("patch-%d", i)}}).want(400, domain.CodeInvalidInput)
	}
	var after int
	must(t, h.Pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE stream_id = $1`, "tenant:"+h.Tenant).Scan(&after))
	if after != before {
		t.Fatalf("the tenant's stream grew by %d", after-before)
	}
	for _, p := range []string{"/v1/api-keys/%00", "/v1/api-keys/%FF", "/v1/api-keys/%C3%28", "/v1/api-keys/%ED%A0%80"} {
		h.do(call{method: "DELETE", path: p, token: sa, actor: root}).want(400, domain.CodeInvalidInput)
	}
	// An id that is text but no key's id is simply not found.
	h.do(call{method: "DELETE", path: "/v1/api-keys/" + "ünïcödé-but-no-key", token: sa, actor: root}).want(404)
	// A token whose key id is not text is an unknown key, never a query.
	for _, token := range []string{"tfk_abcdefghijklmn\xff\xfe_secret", "tfk_abcdefghijklmno\x00_secret"} {
		h.do(call{method: "GET", path: "/v1/policy", token: token}).want(401, "unauthenticated")
	}
}
