package webui

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func testUI(t *testing.T) *UI {
	t.Helper()
	// No API behind it: these requests are refused before the UI calls one.
	u, err := New(Config{APIBase: "http://127.0.0.1:1", OperatorKey: "op"})
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// signedIn starts a session as a fully signed-in user and returns its cookie.
func signedIn(t *testing.T, u *UI) (*http.Cookie, *session) {
	t.Helper()
	rec := httptest.NewRecorder()
	se := u.sessions.start(rec, httptest.NewRequest(http.MethodGet, "/ui/", nil), "t1", "alice", "user")
	se.stage = stageSignedIn
	cookies := rec.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("cookies: %v", cookies)
	}
	return cookies[0], se
}

func post(u *UI, path string, c *http.Cookie, form url.Values, header map[string]string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	if c != nil {
		req.AddCookie(c)
	}
	rec := httptest.NewRecorder()
	u.ServeHTTP(rec, req)
	return rec
}

func TestTheSessionCookieIsHttpOnlyLaxAndSecureBehindTLS(t *testing.T) {
	u := testUI(t)
	c, _ := signedIn(t, u)
	if !c.HttpOnly || c.SameSite != http.SameSiteLaxMode || c.Secure || c.Path != Prefix || len(c.Value) != 64 {
		t.Fatalf("cookie over plain HTTP: %+v", c)
	}
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "https://example.test/ui/", nil)
	u.sessions.start(rec, req, "t1", "alice", "user")
	if got := rec.Result().Cookies()[0]; !got.Secure {
		t.Fatalf("cookie over TLS is not Secure: %+v", got)
	}
	rec = httptest.NewRecorder()
	req = httptest.NewRequest(http.MethodGet, "/ui/", nil)
	req.Header.Set("X-Forwarded-Proto", "https")
	u.sessions.start(rec, req, "t1", "alice", "user")
	if got := rec.Result().Cookies()[0]; !got.Secure {
		t.Fatalf("cookie behind a TLS proxy is not Secure: %+v", got)
	}
}

func TestAFormWithoutTheSessionsCSRFTokenIsRefused(t *testing.T) {
	u := testUI(t)
	c, se := signedIn(t, u)
	for _, token := range []string{"", "0123", se.csrf + "x"} {
		rec := post(u, "/ui/account/disable", c, url.Values{"csrf": {token}}, nil)
		if rec.Code != http.StatusForbidden || !strings.Contains(rec.Body.String(), "This form has expired") {
			t.Fatalf("csrf %q: %d\n%s", token, rec.Code, rec.Body.String())
		}
	}
	// Another session's token does not do either.
	_, other := signedIn(t, u)
	if rec := post(u, "/ui/account/disable", c, url.Values{"csrf": {other.csrf}}, nil); rec.Code != http.StatusForbidden {
		t.Fatalf("another session's token: %d", rec.Code)
	}
}

func TestNoSessionGoesToTheSignInPageAndRolesAreKeptApart(t *testing.T) {
	u := testUI(t)
	req := httptest.NewRequest(http.MethodGet, "/ui/account", nil)
	rec := httptest.NewRecorder()
	u.ServeHTTP(rec, req)
	if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != Prefix {
		t.Fatalf("no session: %d %s", rec.Code, rec.Header().Get("Location"))
	}
	c, _ := signedIn(t, u)
	req = httptest.NewRequest(http.MethodGet, "/ui/admin/users", nil)
	req.AddCookie(c)
	rec = httptest.NewRecorder()
	u.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("a user opened the admin console: %d", rec.Code)
	}
}

func TestSignInFromAnotherSiteIsRefused(t *testing.T) {
	u := testUI(t)
	rec := post(u, "/ui/signin", nil, url.Values{"tenant": {"new"}, "role": {"admin"}, "user": {"eve"}},
		map[string]string{"Origin": "https://evil.example"})
	if rec.Code != http.StatusForbidden || len(rec.Result().Cookies()) != 0 {
		t.Fatalf("cross-site sign-in: %d, cookies %v", rec.Code, rec.Result().Cookies())
	}
}

func TestPagesCarrySecurityHeaders(t *testing.T) {
	u := testUI(t)
	rec := httptest.NewRecorder()
	u.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui/", nil))
	h := rec.Header()
	if rec.Code != 200 || !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") ||
		h.Get("Cache-Control") != "no-store" || h.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("%d %v", rec.Code, h)
	}
	if body := rec.Body.String(); !strings.Contains(body, "Demo:") || !strings.Contains(body, `name="role"`) {
		t.Fatalf("sign-in page:\n%s", body)
	}
}

func TestAnIdleSessionExpires(t *testing.T) {
	u := testUI(t)
	c, _ := signedIn(t, u)
	req := httptest.NewRequest(http.MethodGet, "/ui/account", nil)
	req.AddCookie(c)
	start := time.Now()
	u.sessions.now = func() time.Time { return start.Add(sessionTTL + time.Minute) }
	if se := u.sessions.get(req); se != nil {
		t.Fatal("a session idle for longer than its TTL was still valid")
	}
	if n := len(u.sessions.byID); n != 0 {
		t.Fatalf("%d sessions kept", n)
	}
}
