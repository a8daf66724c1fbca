package handlers_test

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twofactor/twofactor/handlers"
)

func TestIdempotencyKeyReplaysTheFirstResponse(t *testing.T) {
	h := newHarness(t, nil)
	tok, _ := h.app()
	u := "kim"
	post := func(rest, key string, body any) *result {
		return h.do(call{method: "POST", path: userPath(u, rest), token: tok, body: body, header: map[string]string{"Idempotency-Key": key}})
	}
	first := post("/enrollments/totp", "enrol-1", map[string]any{"account_name": "kim"}).want(201)
	again := post("/enrollments/totp", "enrol-1", map[string]any{"account_name": "kim"}).want(201)
	if string(first.raw) != string(again.raw) || again.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("retry differs:\n%s\n%s", first.raw, again.raw)
	}
	if n := h.CountEvents(u, "TOTPEnrollmentStarted"); n != 1 {
		t.Fatalf("%d enrolments started", n)
	}
	secret := first.str("secret")

	// A dropped connection never produces a second set of backup codes: parallel retries too.
	body := map[string]any{"code": h.CodeAt(secret, 0)}
	var wg sync.WaitGroup
	results := make([]*result, 6)
	reqs := make([]*http.Request, 6)
	errs := make([]error, 6)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			reqs[i], results[i], errs[i] = serve(t, h.api.Handler(), call{method: "POST", path: userPath(u, "/enrollments/totp/confirmation"), token: tok, body: body,
				header: map[string]string{"Idempotency-Key": "confirm-1"}})
		}(i)
	}
	wg.Wait()
	for i := range results {
		must(t, errs[i])
		checkContract(t, reqs[i], results[i])
	}
	var codes string
	for _, r := range results {
		switch r.code {
		case http.StatusOK:
			if codes == "" {
				codes = string(r.raw)
			} else if codes != string(r.raw) {
				t.Fatalf("two different confirmations:\n%s\n%s", codes, r.raw)
			}
		case http.StatusConflict:
			if r.str("code") != "idempotency_request_in_progress" || r.header.Get("Retry-After") != "1" {
				t.Fatalf("in progress: %s", r.raw)
			}
		default:
			t.Fatalf("parallel retry: %d %s", r.code, r.raw)
		}
	}
	if replay := post("/enrollments/totp/confirmation", "confirm-1", body).want(200); string(replay.raw) != codes {
		t.Fatalf("late retry differs:\n%s\n%s", codes, replay.raw)
	}
	if n := h.CountEvents(u, "BackupCodesGenerated"); n != 1 {
		t.Fatalf("%d backup code sets", n)
	}

	// The same key for another request is refused; a failed check is not counted twice.
	post("/enrollments/totp/confirmation", "confirm-1", map[string]any{"code": "000000"}).want(422, "idempotency_key_reused")
	h.Clock.Advance(time.Minute)
	wrong := map[string]any{"method": "totp", "code": h.WrongCode(secret)}
	post("/verifications", "verify-1", wrong).want(422, "otp_invalid")
	if r := post("/verifications", "verify-1", wrong).want(422, "otp_invalid"); r.num("attempts_remaining") != 4 {
		t.Fatalf("retry counted again: %s", r.raw)
	}
	if n := h.CountEvents(u, "TOTPCheckFailed"); n != 1 {
		t.Fatalf("%d failures recorded", n)
	}
	// Keys are scoped to the API key: another key's identical request runs.
	h.do(call{method: "POST", path: userPath(u, "/verifications"), token: tok, body: wrong, header: map[string]string{"Idempotency-Key": "bad key"}}).want(400, "invalid_idempotency_key")

	// The stored responses hold the secret and the codes only sealed.
	var act struct {
		BackupCodes []string `json:"backup_codes"`
	}
	results[0].decode(&act)
	for _, needle := range append([]string{secret}, act.BackupCodes...) {
		if tables := scanFor(h, needle); len(tables) > 0 {
			t.Fatalf("%q is stored in plain text in %v", needle, tables)
		}
	}
}

func TestBodyRulesAndAuthentication(t *testing.T) {
	h := newHarness(t, nil)
	tok, _ := h.app()
	path := userPath("lee", "/enrollments/email")
	big := `{"destination": "` + strings.Repeat("a", 70<<10) + `@example.com"}`
	h.do(call{method: "POST", path: path, token: tok, body: big}).want(413, "body_too_large")
	h.do(call{method: "POST", path: path, token: tok, body: `{"destination": "lee@example.com"}`, contentType: "text/plain"}).want(415, "unsupported_media_type")
	h.do(call{method: "POST", path: path, token: tok, body: `{"destination": "lee@example.com", "verified": true}`}).want(400, "unknown_field")
	h.do(call{method: "POST", path: path, token: tok, body: `{"destination": 5}`}).want(400, "invalid_json")

	// Chunked bodies (no Content-Length) are capped while read.
	req, _ := http.NewRequest("POST", path, strings.NewReader(big))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tok)
	req.ContentLength = -1
	rec := httptest.NewRecorder()
	h.api.Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Fatalf("chunked oversized body: %d %s", rec.Code, rec.Body)
	}

	h.do(call{method: "GET", path: "/v1/policy"}).want(401, "unauthenticated")
	r := h.do(call{method: "GET", path: "/v1/policy", token: "tfk_aaaaaaaaaaaaaaaa_bogus"}).want(401, "unauthenticated")
	if r.header.Get("WWW-Authenticate") == "" {
		t.Fatal("401 without WWW-Authenticate")
	}
	h.do(call{method: "GET", path: "/v1/policy", token: tok + "x"}).want(401, "unauthenticated")
	h.do(call{method: "GET", path: "/v1/policy", header: map[string]string{"Authorization": "Basic " + tok}}).want(401, "unauthenticated")

	ok := h.do(call{method: "GET", path: "/v1/policy", token: tok, header: map[string]string{"X-Request-Id": "has spaces in it"}}).want(200)
	if id := ok.header.Get("X-Request-Id"); id == "" || strings.Contains(id, " ") {
		t.Fatalf("request id %q", id)
	}
	if ok.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("Cache-Control %q", ok.header.Get("Cache-Control"))
	}
}

func TestRateLimitsPerKeyAndPerIP(t *testing.T) {
	h := newHarness(t, nil, func(c *handlers.Config, _ *handlers.Deps) {
		c.KeyRate, c.KeyBurst = 0.5, 3
		c.IPRate, c.IPBurst = 0.5, 5
	})
	tok, _ := h.app()
	for i := 0; i < 3; i++ {
		h.do(call{method: "GET", path: "/v1/policy", token: tok, remoteAddr: "10.0.0.1:1234"}).want(200)
	}
	r := h.do(call{method: "GET", path: "/v1/policy", token: tok, remoteAddr: "10.0.0.1:1234"}).want(429, "rate_limited")
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 2 {
		t.Fatalf("Retry-After %q", r.header.Get("Retry-After"))
	}
	// Another key from the same address still has its own budget, until the address runs out.
	other := h.tokens[handlers.RoleAuditor]
	h.do(call{method: "GET", path: "/v1/policy", token: other, remoteAddr: "10.0.0.1:1234"}).want(200)
	h.do(call{method: "GET", path: "/v1/policy", token: other, remoteAddr: "10.0.0.1:1234"}).want(429, "rate_limited")
	// Unauthenticated guessing spends the address's budget too.
	h.do(call{method: "GET", path: "/v1/policy", token: "tfk_guess", remoteAddr: "10.0.0.1:1234"}).want(429, "rate_limited")
	h.do(call{method: "GET", path: "/v1/policy", token: other, remoteAddr: "10.0.0.2:1234"}).want(200)
	// X-Forwarded-For from an untrusted peer is ignored.
	h.do(call{method: "GET", path: "/v1/policy", token: other, remoteAddr: "10.0.0.1:1234", header: map[string]string{"X-Forwarded-For": "10.9.9.9"}}).want(429, "rate_limited")
}

func TestNoSecretInLogs(t *testing.T) {
	h := newHarness(t, nil)
	secret, codes := h.enrolTOTP("mia")
	tok, _ := h.app()
	h.do(call{method: "POST", path: userPath("mia", "/enrollments/email"), token: tok, body: map[string]any{"destination": "mia.secret@example.com"}}).want(201)
	h.Clock.Advance(time.Minute)
	otp := h.CodeAt(secret, 0)
	h.asUser("POST", "mia", "/verifications", map[string]any{"method": "totp", "code": otp}).want(200)
	h.do(call{method: "GET", path: "/v1/users/mia?min_position=1", token: tok}).want(200)
	h.do(call{method: "GET", path: "/v1/policy", token: "tfk_aaaaaaaaaaaaaaaa_notarealsecret"}).want(401)
	logs := h.logs.String()
	if !strings.Contains(logs, `"route":"/v1/users/:user_id/verifications"`) {
		t.Fatalf("request log missing: %s", logs)
	}
	for _, s := range append([]string{secret, otp, tok, "mia.secret", "notarealsecret", "min_position", h.operatorKey}, codes...) {
		if strings.Contains(logs, s) {
			t.Fatalf("the log contains %q", s)
		}
	}
}

func TestServerTimeouts(t *testing.T) {
	s := handlers.NewServer("127.0.0.1:0", http.NotFoundHandler(), 0)
	if s.ReadHeaderTimeout == 0 || s.ReadTimeout == 0 || s.WriteTimeout == 0 || s.IdleTimeout == 0 || s.MaxHeaderBytes == 0 {
		t.Fatalf("server without timeouts: %+v", s)
	}
}
