package handlers_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twofactor/twofactor/handlers"
)

// overHTTP sends one request through a real connection that is never reused,
// so the client's transport cannot retry it on its own.
func overHTTP(t *testing.T, base string, c call) (*http.Request, *result, error) {
	t.Helper()
	var body []byte
	if c.body != nil {
		var err error
		if body, err = json.Marshal(c.body); err != nil {
			return nil, nil, err
		}
	}
	req, err := http.NewRequest(c.method, base+c.path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return req, nil, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return req, nil, err
	}
	// The contract check matches the path on the server's view of the request.
	check := httptest.NewRequest(c.method, c.path, bytes.NewReader(body))
	check.Header = req.Header.Clone()
	res := &result{t: t, code: resp.StatusCode, header: resp.Header, raw: raw}
	checkContract(t, check, res)
	return req, res, nil
}

// A crash between the commit of a command and its answer, then a retry with
// the same Idempotency-Key: the command ran once and the retry gets its
// answer. A crash just before the commit: nothing was kept and the retry runs
// the command once.
func TestIdempotentRetryAfterCrashAroundCommit(t *testing.T) {
	h := newHarness(t, nil)
	srv := httptest.NewServer(h.api.Handler())
	defer srv.Close()
	var crashBefore, crashAfter atomic.Bool
	handlers.SetCommitHooks(h.api,
		func() {
			if crashBefore.CompareAndSwap(true, false) {
				panic(http.ErrAbortHandler)
			}
		},
		func() {
			if crashAfter.CompareAndSwap(true, false) {
				panic(http.ErrAbortHandler)
			}
		})
	tok, _ := h.app()
	const user = "crash"
	keyN := 0
	// crashThenRetry sends c once with a crash armed, checks that the client got
	// no answer, and retries it with the same key.
	crashThenRetry := func(crash *atomic.Bool, rest string, body any) *result {
		t.Helper()
		keyN++
		c := call{method: "POST", path: userPath(user, rest), token: tok, body: body,
			header: map[string]string{"Idempotency-Key": "crash-" + string(rune('a'+keyN))}}
		crash.Store(true)
		if _, res, err := overHTTP(t, srv.URL, c); err == nil {
			t.Fatalf("%s: the crashed request was answered: %d %s", rest, res.code, res.raw)
		}
		if crash.Load() {
			t.Fatalf("%s: the request never reached its commit", rest)
		}
		_, res, err := overHTTP(t, srv.URL, c)
		must(t, err)
		return res
	}
	replayed := func(r *result) bool { return r.header.Get("Idempotent-Replayed") == "true" }
	count := func(eventType string, want int) {
		t.Helper()
		if n := h.CountEvents(user, eventType); n != want {
			t.Fatalf("%d %s events, want %d", n, eventType, want)
		}
	}
	var codes struct {
		BackupCodes []string `json:"backup_codes"`
	}

	start := h.asUser("POST", user, "/enrollments/totp", map[string]any{"account_name": "crash@example.com"}).want(201)
	secret := start.str("secret")

	// Confirmation: 2FA on, and the backup codes of the one set reach the client.
	r := crashThenRetry(&crashAfter, "/enrollments/totp/confirmation", map[string]any{"code": h.CodeAt(secret, 0)}).want(200)
	if !replayed(r) {
		t.Fatalf("confirmation retry was not replayed: %s", r.raw)
	}
	r.decode(&codes)
	count("TwoFactorEnabled", 1)
	count("BackupCodesGenerated", 1)
	first := append([]string(nil), codes.BackupCodes...)

	// TOTP login: verified once, the retry is not taken for a replayed code.
	h.Clock.Advance(time.Minute)
	r = crashThenRetry(&crashAfter, "/verifications", map[string]any{"method": "totp", "code": h.CodeAt(secret, 0)}).want(200)
	if !replayed(r) || r.json()["verified"] != true {
		t.Fatalf("login retry: %s", r.raw)
	}
	count("TOTPVerified", 1)
	count("TOTPCheckFailed", 0)

	// Regeneration: one new set, and the retry shows that set.
	r = crashThenRetry(&crashAfter, "/backup-codes", nil).want(201)
	if !replayed(r) {
		t.Fatalf("regeneration retry was not replayed: %s", r.raw)
	}
	r.decode(&codes)
	count("BackupCodesRegenerated", 1)
	if len(codes.BackupCodes) == 0 || codes.BackupCodes[0] == first[0] {
		t.Fatalf("regeneration answered %v", codes.BackupCodes)
	}

	// Backup-code login with a code of the replayed set: it works, once.
	r = crashThenRetry(&crashAfter, "/verifications", map[string]any{"method": "backup_code", "code": codes.BackupCodes[0]}).want(200)
	if !replayed(r) || r.json()["verified"] != true {
		t.Fatalf("backup login retry: %s", r.raw)
	}
	count("BackupCodeConsumed", 1)
	count("BackupCodeCheckFailed", 0)

	// A crash before the commit keeps nothing: the retry runs the command, once.
	r = crashThenRetry(&crashBefore, "/verifications", map[string]any{"method": "backup_code", "code": codes.BackupCodes[1]}).want(200)
	if replayed(r) {
		t.Fatalf("nothing was committed, yet the retry was replayed: %s", r.raw)
	}
	count("BackupCodeConsumed", 2)
	count("BackupCodeCheckFailed", 0)
	h.Clock.Advance(time.Minute)
	r = crashThenRetry(&crashBefore, "/verifications", map[string]any{"method": "totp", "code": h.CodeAt(secret, 0)}).want(200)
	if replayed(r) {
		t.Fatalf("nothing was committed, yet the retry was replayed: %s", r.raw)
	}
	count("TOTPVerified", 2)
	count("TOTPCheckFailed", 0)
	r = crashThenRetry(&crashBefore, "/backup-codes", nil).want(201)
	count("BackupCodesRegenerated", 2)
	r.decode(&codes)
	h.asUser("POST", user, "/verifications", map[string]any{"method": "backup_code", "code": codes.BackupCodes[0]}).want(200)
}

// Many copies of one request with one key at once: every copy gets the one
// answer, and the code is consumed once.
func TestConcurrentCopiesOfOneIdempotentRequest(t *testing.T) {
	h := newHarness(t, nil)
	tok, _ := h.app()
	const user = "copies"
	_, codes := h.enrolTOTP(user)
	c := call{method: "POST", path: userPath(user, "/verifications"), token: tok,
		body:   map[string]any{"method": "backup_code", "code": codes[0]},
		header: map[string]string{"Idempotency-Key": "copies-1"}}
	const n = 40
	answers := make([]*result, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, answers[i], errs[i] = serve(t, h.api.Handler(), c)
		}(i)
	}
	wg.Wait()
	var body string
	for i, r := range answers {
		must(t, errs[i])
		if r.code != http.StatusOK {
			t.Fatalf("copy %d: %d %s", i, r.code, r.raw)
		}
		// The request id differs per copy; everything else is the first answer.
		if body == "" {
			body = string(r.raw)
		} else if string(r.raw) != body {
			t.Fatalf("two answers:\n%s\n%s", body, r.raw)
		}
	}
	if n := h.CountEvents(user, "BackupCodeConsumed"); n != 1 {
		t.Fatalf("%d codes consumed", n)
	}
}
