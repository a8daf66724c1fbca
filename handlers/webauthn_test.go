package handlers_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/twofactor/twofactor/internal/softkey"
)

const keyOrigin = "https://login.example.com"

// Register a security key and log in with it through the Gin engine, each
// answer checked against the contract; then a replay, a phished answer, a
// cloned key, the read model and the relying party's own routes.
func TestSecurityKeyRegistrationAndLoginOverHTTP(t *testing.T) {
	h := newReadSideHarness(t)
	tok, actor := h.admin()

	// No relying party yet: the method is not offered.
	h.asUser("POST", "kim", "/security-keys/registration", map[string]any{}).want(403, "forbidden_by_policy")
	h.do(call{method: "PUT", path: "/v1/policy/webauthn", token: tok, actor: actor,
		body: map[string]any{"rp_id": "example.com", "origins": []string{"https://evil.example.org"}}}).want(400, "invalid_policy")
	h.do(call{method: "PUT", path: "/v1/policy/webauthn", token: tok, actor: actor,
		body: map[string]any{"rp_id": "example.com", "origins": []string{keyOrigin}, "rp_name": "Example Login", "reason": "keys"}}).want(200)
	app, _ := h.app()
	pol := h.do(call{method: "GET", path: "/v1/policy/webauthn", token: app}).want(200).json()
	if pol["rp_id"] != "example.com" || pol["rp_name"] != "Example Login" || pol["user_verification"] != "preferred" || pol["challenge_ttl_seconds"] != float64(300) {
		t.Fatalf("policy = %v", pol)
	}

	key, err := softkey.New(softkey.ES256, softkey.FormatPacked)
	must(t, err)
	opts := h.asUser("POST", "kim", "/security-keys/registration", map[string]any{"account_name": "kim@example.com"}).want(201)
	var o struct {
		Options json.RawMessage `json:"options"`
	}
	opts.decode(&o)
	created, err := key.Create(o.Options, keyOrigin)
	must(t, err)
	added := h.asUser("POST", "kim", "/security-keys", map[string]any{"name": "Blue key", "credential": json.RawMessage(created)}).want(201)
	var a struct {
		KeyID       string   `json:"key_id"`
		BackupCodes []string `json:"backup_codes"`
	}
	added.decode(&a)
	if a.KeyID == "" || len(a.BackupCodes) != 10 {
		t.Fatalf("added = %s", added.raw)
	}
	status := h.asAdmin("GET", "kim", "", nil).want(200).json()
	if methods, _ := status["methods"].([]any); status["status"] != "activated" || len(methods) != 1 || methods[0] != "webauthn" || status["security_keys"] != float64(1) {
		t.Fatalf("status = %v", status)
	}
	// The read model, once it has the write: the method and the count.
	var pos struct {
		Position int `json:"position"`
	}
	added.decode(&pos)
	page := h.do(call{method: "GET", path: fmt.Sprintf("/v1/users?method=webauthn&min_position=%d", pos.Position), token: tok, actor: actor}).want(200).json()
	if users, _ := page["users"].([]any); len(users) != 1 || users[0].(map[string]any)["user_id"] != "kim" || users[0].(map[string]any)["security_keys"] != float64(1) {
		t.Fatalf("users with security keys = %v", page)
	}
	list := h.asAdmin("GET", "kim", "/security-keys", nil).want(200).json()
	if keys, _ := list["security_keys"].([]any); len(keys) != 1 || keys[0].(map[string]any)["name"] != "Blue key" {
		t.Fatalf("list = %v", list)
	}

	login := func() json.RawMessage {
		t.Helper()
		res := h.asUser("POST", "kim", "/security-keys/challenge", map[string]any{}).want(200)
		var o struct {
			Options json.RawMessage `json:"options"`
		}
		res.decode(&o)
		return o.Options
	}
	assertion, err := key.Get(login(), keyOrigin)
	must(t, err)
	v := h.asUser("POST", "kim", "/security-keys/verification", map[string]any{"credential": json.RawMessage(assertion)}).want(200).json()
	if v["verified"] != true || v["method"] != "webauthn" || v["backup_codes_remaining"] != float64(10) {
		t.Fatalf("verification = %v", v)
	}
	// The same answer again.
	h.asUser("POST", "kim", "/security-keys/verification", map[string]any{"credential": json.RawMessage(assertion)}).want(409, "no_pending_challenge")
	// An answer made on another site.
	phished, err := key.Get(login(), "https://login.example.org")
	must(t, err)
	p := h.asUser("POST", "kim", "/security-keys/verification", map[string]any{"credential": json.RawMessage(phished)}).want(422, "otp_invalid").json()
	if p["attempts_remaining"] != float64(4) {
		t.Fatalf("problem = %v", p)
	}
	// A copy of the key, behind the original's counter.
	clone := *key
	clone.Counter = 0
	cloned, err := clone.Get(login(), keyOrigin)
	must(t, err)
	h.asUser("POST", "kim", "/security-keys/verification", map[string]any{"credential": json.RawMessage(cloned)}).want(403, "security_key_possibly_cloned")
	// Malformed answers are refused before any work.
	h.asUser("POST", "kim", "/security-keys/challenge", map[string]any{}).want(200)
	h.asUser("POST", "kim", "/security-keys/verification", map[string]any{"credential": map[string]any{"id": "x"}}).want(400, "invalid_security_key_response")

	// The only method goes with a disable; an unknown key is not found.
	h.asAdmin("DELETE", "kim", "/security-keys/"+a.KeyID, nil).want(409, "last_method")
	h.asAdmin("DELETE", "kim", "/security-keys/nope", nil).want(404, "security_key_not_found")
	// Another user's list is not theirs to read.
	h.do(call{method: "GET", path: userPath("nobody", "/security-keys"), token: app}).want(404, "user_not_found")
}
