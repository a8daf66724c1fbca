package webui

import (
	"crypto/tls"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"testing"
)

func TestTheDemoTenantsRelyingPartyIsWhereTheBrowserIs(t *testing.T) {
	for _, c := range []struct {
		host   string
		https  bool
		rpID   string
		origin string
	}{
		{"localhost:8080", false, "localhost", "http://localhost:8080"},
		// Browsers take no IP address as a relying party id: localhost, same port.
		{"127.0.0.1:8080", false, "localhost", "http://localhost:8080"},
		{"[::1]:9000", false, "localhost", "http://localhost:9000"},
		// Over plain http, WebAuthn works on localhost only.
		{"demo.example.com:8080", false, "localhost", "http://localhost:8080"},
		{"Demo.Example.com", true, "demo.example.com", "https://demo.example.com"},
		{"demo.example.com:8443", true, "demo.example.com", "https://demo.example.com:8443"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/ui/signin", nil)
		r.Host = c.host
		if c.https {
			r.TLS = &tls.ConnectionState{}
		}
		rpID, origins := demoRelyingParty(r)
		if rpID != c.rpID || !slices.Equal(origins, []string{c.origin}) {
			t.Errorf("%s (https %v): %s %v, want %s %s", c.host, c.https, rpID, origins, c.rpID, c.origin)
		}
	}
}

// Security keys need a script, and it stays a file of the UI's own: no page
// holds an inline script or handler, and the policy still forbids them.
func TestSecurityKeysNeedNoInlineScript(t *testing.T) {
	u := testUI(t)
	rec := httptest.NewRecorder()
	u.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/ui/", nil))
	if csp := rec.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self';") || strings.Contains(csp, "unsafe") {
		t.Fatalf("CSP %q", csp)
	}
	inline := regexp.MustCompile(`(?i)<script>|<script[^>]*>[^<]|\son[a-z]+=|javascript:`)
	err := fs.WalkDir(templateFS, "templates", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(templateFS, path)
		if m := inline.Find(b); m != nil {
			t.Errorf("%s has an inline script: %q", path, m)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestKeyOptionsNeedTheSessionsCSRFToken(t *testing.T) {
	u := testUI(t)
	c, _ := signedIn(t, u)
	for _, path := range []string{"/ui/keys/options", "/ui/login/key/options", "/ui/keys", "/ui/login/key"} {
		if rec := post(u, path, c, nil, nil); rec.Code != http.StatusForbidden {
			t.Errorf("%s without the CSRF token: %d", path, rec.Code)
		}
	}
}
