package handlers_test

import (
	"strings"
	"testing"
	"time"

	"github.com/twofactor/twofactor/handlers"
)

// TestBodiesAreCheckedAtEveryDepth: a body is decoded once and bound from that
// value, which ignores members a type does not have; so unknown members are
// refused from the contract's schema in nested objects too, and a value of
// the wrong type is still named.
func TestBodiesAreCheckedAtEveryDepth(t *testing.T) {
	h := newHarness(t, nil)
	ops := h.operatorKey
	tenant := func(body string) *result {
		return h.do(call{method: "POST", path: "/v1/operator/tenants", token: ops, body: body})
	}
	tenant(`{"name": "Beta", "policy": {"backup_code_count": 5, "nope": 1}}`).want(400, "unknown_field")
	tenant(`{"name": "Beta", "policy": {"Backup_Code_Count": 5}}`).want(400, "unknown_field")
	if r := tenant(`{"name": "Beta", "policy": {"totp_digits": "8"}}`).want(400, "invalid_json"); !strings.Contains(r.str("detail"), "policy.totp_digits") {
		t.Errorf("detail %q does not name the field", r.str("detail"))
	}
	tenant(`{"name": "Beta", "policy": {"backup_code_count": 5.5}}`).want(400, "invalid_json")
	tenant(`{"name": "Beta", "policy": {"backup_code_count": 5, "low_backup_codes_warning": 1}}`).want(201)

	sa, root := h.tokens[handlers.RoleSuperAdmin], "superadmin:root"
	patch := func(ct string, body any) *result {
		return h.do(call{method: "PATCH", path: "/v1/policy", token: sa, actor: root, contentType: ct, body: body})
	}
	patch("Application/Merge-Patch+JSON", map[string]any{"backup_code_count": 11}).want(200)
	patch("application/json; charset=UTF-8", map[string]any{"backup_code_count": 12}).want(200)
	patch("", "").want(400, "invalid_json")
	patch("", nil).want(400, "invalid_json")
}

func TestAuditFeedTakesSeveralTypes(t *testing.T) {
	h := newHarness(t, nil)
	h.enrolTOTP("gus")
	h.asAdmin("POST", "gus", "/reset", nil).want(200)
	aud, who := h.tokens[handlers.RoleAuditor], "auditor:ann"
	feed := h.do(call{method: "GET", path: "/v1/audit/events?type=TwoFactorEnabled&type=TwoFactorReset", token: aud, actor: who}).want(200).json()
	types := map[string]bool{}
	for _, e := range feed["entries"].([]any) {
		types[e.(map[string]any)["type"].(string)] = true
	}
	if len(types) != 2 || !types["TwoFactorEnabled"] || !types["TwoFactorReset"] {
		t.Fatalf("feed of two types: %v", types)
	}
	h.do(call{method: "GET", path: "/v1/audit/events?since=", token: aud, actor: who}).want(400, "invalid_argument")
	h.do(call{method: "GET", path: "/v1/audit/users/gus/state?at=", token: aud, actor: who}).want(400, "invalid_argument")
	h.do(call{method: "GET", path: "/v1/audit/users/gus/state?at=" + time.Now().UTC().Format(time.RFC3339), token: aud, actor: who}).want(200)
}

// TestMetricsAreTextWhateverTheScraperAsks: the contract lists text/plain
// only, so a scraper asking for protobuf gets the text format too.
func TestMetricsAreTextWhateverTheScraperAsks(t *testing.T) {
	h := newHarness(t, nil)
	m := h.do(call{method: "GET", path: "/metrics", header: map[string]string{
		"Accept": "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
	}}).want(200)
	if ct := m.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") || !strings.Contains(string(m.raw), "go_goroutines") {
		t.Fatalf("metrics as %q", ct)
	}
}
