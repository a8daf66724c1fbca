package handlers_test

import (
	"context"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/twofactor/twofactor/handlers"
)

// sampleBodies: a plausible, well-formed body per mutating route, so a refusal
// is about who asks, not about what they sent.
var sampleBodies = map[string]any{
	"POST /v1/users/:user_id/enrollments/:method":              map[string]any{"account_name": "a@example.com"},
	"POST /v1/users/:user_id/enrollments/:method/confirmation": map[string]any{"code": "123456"},
	"POST /v1/users/:user_id/challenges":                       map[string]any{},
	"POST /v1/users/:user_id/verifications":                    map[string]any{"method": "totp", "code": "123456"},
	"PUT /v1/users/:user_id/default-method":                    map[string]any{"method": "totp"},
	"PUT /v1/users/:user_id/contact-address":                   map[string]any{"method": "email", "address": "someone@example.com"},
	"POST /v1/users/:user_id/method-switch":                    map[string]any{"to": "email", "destination": "x@example.com"},
	"PUT /v1/users/:user_id/requirement":                       map[string]any{"required": true},
	"PUT /v1/users/:user_id/toggle-permission":                 map[string]any{"can_toggle": false},
	"PATCH /v1/policy":                                         map[string]any{"backup_code_count": 11},
	"POST /v1/users/:user_id/security-keys":                    map[string]any{"name": "k", "credential": map[string]any{"id": "x"}},
	"POST /v1/users/:user_id/security-keys/verification":       map[string]any{"credential": map[string]any{"id": "x"}},
	"PUT /v1/policy/webauthn":                                  map[string]any{"rp_id": "example.com", "origins": []string{"https://example.com"}},
	"POST /v1/api-keys":                                        map[string]any{"role": "app"},
	"POST /v1/operator/tenants":                                map[string]any{"name": "x"},
	"POST /v1/operator/tenants/:tenant_id/api-keys":            map[string]any{"role": "app"},
}

// sampleQuery completes routes with a required query parameter.
var sampleQuery = map[string]string{
	"GET /v1/audit/users/:user_id/state": "?at=2030-01-01T00:00:00Z",
}

type route struct{ method, path string }

func (r route) key() string { return r.method + " " + r.path }

// concrete fills a route template.
func (r route) concrete(user, keyID, tenant string) string {
	p := strings.ReplaceAll(r.path, ":user_id", user)
	p = strings.ReplaceAll(p, ":method", "totp")
	p = strings.ReplaceAll(p, ":key_id", keyID)
	return strings.ReplaceAll(p, ":tenant_id", tenant)
}

func engineRoutes(h *harness) []route {
	var out []route
	for _, r := range h.api.Engine().Routes() {
		out = append(out, route{r.Method, r.Path})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key() < out[j].key() })
	return out
}

func mutating(m string) bool { return m != http.MethodGet && m != http.MethodHead }

func TestEveryRouteIsDocumentedAndEveryOperationIsARoute(t *testing.T) {
	h := newHarness(t, nil)
	doc, err := openapi3.NewLoader().LoadFromData(handlers.OpenAPI)
	must(t, err)
	if doc.OpenAPI != "3.1.0" {
		t.Errorf("openapi: %s", doc.OpenAPI)
	}
	documented := map[string]bool{}
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented[method+" "+path] = true
		}
	}
	served := map[string]bool{}
	for _, r := range engineRoutes(h) {
		p := r.path
		for _, name := range []string{"user_id", "method", "key_id", "tenant_id"} {
			p = strings.ReplaceAll(p, ":"+name, "{"+name+"}")
		}
		served[r.method+" "+p] = true
		if !documented[r.method+" "+p] {
			t.Errorf("route %s %s is not in openapi.yaml", r.method, p)
		}
		if mutating(r.method) && !strings.HasPrefix(p, "/v1/operator") {
			op := doc.Paths.Find(p).GetOperation(r.method)
			if op.Parameters.GetByInAndName("header", "Idempotency-Key") == nil {
				t.Errorf("%s %s does not document Idempotency-Key", r.method, p)
			}
		}
	}
	for op := range documented {
		if !served[op] {
			t.Errorf("openapi.yaml documents %s, which is not served", op)
		}
	}
}

func TestAuditorKeysAreRefusedOnEveryMutatingRoute(t *testing.T) {
	h := newHarness(t, nil)
	h.enrolTOTP("ivy")
	before := h.eventCount()
	n := 0
	for _, r := range engineRoutes(h) {
		if !mutating(r.method) || strings.HasPrefix(r.path, "/v1/operator") {
			continue
		}
		n++
		res := h.do(call{method: r.method, path: r.concrete("ivy", h.keyIDs[handlers.RoleApp], h.Tenant),
			token: h.tokens[handlers.RoleAuditor], actor: "auditor:ann", body: sampleBodies[r.key()]})
		if res.code != http.StatusForbidden || res.str("code") != "forbidden" {
			t.Errorf("auditor on %s: %d %s", r.key(), res.code, res.raw)
		}
	}
	if n < 15 {
		t.Fatalf("only %d mutating routes checked", n)
	}
	if after := h.eventCount(); after != before {
		t.Fatalf("auditor requests appended %d events", after-before)
	}
	var revoked int
	must(t, h.Pool.QueryRow(context.Background(), `SELECT count(*) FROM api_keys WHERE tenant_id = $1 AND revoked_at IS NOT NULL`, h.Tenant).Scan(&revoked))
	if revoked != 0 {
		t.Fatal("an auditor revoked a key")
	}
}

// creates lists the routes that act on the tenant's own namespace even for a
// user id it has never seen: with another tenant's key they create that
// tenant's own user (or, for a challenge, answer "2FA off" and record nothing),
// exactly as for any new id — never touching the first tenant.
var creates = map[string]bool{
	"POST /v1/users/:user_id/enrollments/:method": true,
	"POST /v1/users/:user_id/challenges":          true,
	"PUT /v1/users/:user_id/requirement":          true,
	"PUT /v1/users/:user_id/toggle-permission":    true,
	"PUT /v1/users/:user_id/contact-address":      true,
}

func TestAnotherTenantsKeysSeeNothingAndChangeNothing(t *testing.T) {
	h := newHarness(t, nil)
	secret, codes := h.enrolTOTP("judy")
	h.asAdmin("PUT", "judy", "/requirement", map[string]any{"required": true}).want(200)
	otherTenant, other := h.otherTenant()
	eventsOfA := func() int {
		var n int
		must(t, h.Pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE tenant_id = $1`, h.Tenant).Scan(&n))
		return n
	}
	beforeA := eventsOfA()

	// Bodies that would succeed on judy in her own tenant.
	bodies := map[string]any{}
	for k, v := range sampleBodies {
		bodies[k] = v
	}
	bodies["POST /v1/users/:user_id/verifications"] = map[string]any{"method": "backup_code", "code": codes[0]}
	bodies["POST /v1/users/:user_id/enrollments/:method/confirmation"] = map[string]any{"code": h.CodeAt(secret, 0)}

	actors := map[handlers.Role]string{handlers.RoleAdmin: "admin:mallory", handlers.RoleSuperAdmin: "superadmin:mallory", handlers.RoleAuditor: "auditor:mallory"}
	// First every route that needs an existing user, then the ones that create
	// one in the caller's own tenant.
	for _, creating := range []bool{false, true} {
		for _, role := range handlers.Roles {
			for _, r := range engineRoutes(h) {
				if strings.HasPrefix(r.path, "/v1/operator") || !strings.Contains(r.path, ":") || creates[r.key()] != creating {
					continue
				}
				c := call{method: r.method, path: r.concrete("judy", h.keyIDs[handlers.RoleApp], h.Tenant) + sampleQuery[r.key()],
					token: other[role], actor: actors[role], body: bodies[r.key()]}
				res := h.do(c)
				if creating && res.code < 300 {
					// Same answer as for an id the other tenant has never seen.
					c.path = r.concrete("never-seen-"+string(role), "", "")
					if fresh := h.do(c); fresh.code != res.code {
						t.Errorf("%s as %s: %d, but %d for a new id", r.key(), role, res.code, fresh.code)
					}
					continue
				}
				if res.code != http.StatusNotFound && res.code != http.StatusForbidden {
					t.Errorf("%s with the other tenant's %s key: %d %s", r.key(), role, res.code, res.raw)
				}
			}
		}
	}
	if after := eventsOfA(); after != beforeA {
		t.Fatalf("the other tenant's keys appended %d events to the first tenant", after-beforeA)
	}
	// Nothing the second tenant did reached a stream of the first, and judy still works.
	var foreign int
	must(t, h.Pool.QueryRow(context.Background(), `SELECT count(*) FROM events WHERE tenant_id = $1 AND stream_id NOT LIKE $2`,
		otherTenant, "%:"+otherTenant+"%").Scan(&foreign))
	if foreign != 0 {
		t.Fatalf("%d events of the other tenant sit in foreign streams", foreign)
	}
	h.asUser("POST", "judy", "/verifications", map[string]any{"method": "backup_code", "code": codes[0]}).want(200)
}
