package handlers_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/gin-gonic/gin"

	"github.com/twofactor/twofactor/audit"
	"github.com/twofactor/twofactor/commands"
	"github.com/twofactor/twofactor/domain"
	"github.com/twofactor/twofactor/handlers"
	"github.com/twofactor/twofactor/internal/testdb"
	"github.com/twofactor/twofactor/internal/testkit"
)

func TestMain(m *testing.M) {
	gin.SetMode(gin.TestMode)
	// Error bodies and the YAML document are checked too.
	openapi3filter.RegisterBodyDecoder(handlers.ProblemContentType, openapi3filter.JSONBodyDecoder)
	openapi3filter.RegisterBodyDecoder("application/yaml", func(r io.Reader, _ http.Header, _ *openapi3.SchemaRef, _ openapi3filter.EncodingFn) (any, error) {
		b, err := io.ReadAll(r)
		return string(b), err
	})
	os.Exit(testdb.Main(m))
}

var contract = sync.OnceValues(func() (routers.Router, error) {
	doc, err := openapi3.NewLoader().LoadFromData(handlers.OpenAPI)
	if err != nil {
		return nil, err
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, err
	}
	doc.Servers = nil // match any host
	return legacy.NewRouter(doc)
})

// syncBuffer collects log lines from concurrent handlers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// harness is the real Gin engine over a real database, with a tenant whose
// keys of every role are at hand.
type harness struct {
	*testkit.Fixture
	t           *testing.T
	api         *handlers.API
	keys        *handlers.KeyStore
	tokens      map[handlers.Role]string
	keyIDs      map[handlers.Role]string
	logs        *syncBuffer
	operatorKey string
}

type option func(*handlers.Config, *handlers.Deps)

func newHarness(t *testing.T, policy *domain.Policy, opts ...option) *harness {
	t.Helper()
	f := testkit.New(t, testdb.Pool(t), policy)
	logs := &syncBuffer{}
	h := &harness{Fixture: f, t: t, logs: logs, keys: handlers.NewKeyStore(f.Pool, nil), operatorKey: "operator-secret-for-tests"}
	cfg := handlers.DefaultConfig()
	cfg.KeyRate, cfg.IPRate = -1, -1
	deps := handlers.Deps{
		Commands: f.Svc, Pool: f.Pool, Keys: h.keys, Audit: audit.New(f.Pool), Secrets: f.Codes,
		Log: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), Clock: f.Clock.Now,
		OperatorKey: h.operatorKey,
	}
	for _, o := range opts {
		o(&cfg, &deps)
	}
	api, err := handlers.New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	h.api = api
	h.tokens, h.keyIDs = h.issueAll(f.Tenant)
	return h
}

func (h *harness) issueAll(tenant string) (map[handlers.Role]string, map[handlers.Role]string) {
	h.t.Helper()
	tokens, ids := map[handlers.Role]string{}, map[handlers.Role]string{}
	for _, r := range handlers.Roles {
		k, err := h.keys.Issue(context.Background(), tenant, r, "test", "tests")
		if err != nil {
			h.t.Fatal(err)
		}
		tokens[r], ids[r] = k.Token, k.KeyID
	}
	return tokens, ids
}

// otherTenant creates a second tenant served by the same API.
func (h *harness) otherTenant() (string, map[handlers.Role]string) {
	h.t.Helper()
	out, err := handlers.CreateTenantWithKeys(context.Background(), h.Svc, h.keys,
		commands.Meta{Actor: testkit.System}, "Other "+h.t.Name(), nil)
	if err != nil {
		h.t.Fatal(err)
	}
	tokens := map[handlers.Role]string{}
	for _, k := range out.APIKeys {
		tokens[k.Role] = k.Token
	}
	return out.TenantID, tokens
}

// call is one request; the zero value of each field means "none".
type call struct {
	method, path string
	token        string
	actor        string
	body         any // string/[]byte: raw; anything else: JSON
	contentType  string
	header       map[string]string
	remoteAddr   string
	// skipContract: the request is deliberately outside the contract's paths.
	skipContract bool
}

type result struct {
	t      *testing.T
	code   int
	header http.Header
	raw    []byte
}

func (r *result) json() map[string]any {
	r.t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.raw, &m); err != nil {
		r.t.Fatalf("response is not a JSON object: %v: %s", err, r.raw)
	}
	return m
}

func (r *result) decode(v any) {
	r.t.Helper()
	if err := json.Unmarshal(r.raw, v); err != nil {
		r.t.Fatalf("decode %T: %v: %s", v, err, r.raw)
	}
}

func (r *result) str(key string) string {
	s, _ := r.json()[key].(string)
	return s
}

func (r *result) num(key string) float64 {
	n, _ := r.json()[key].(float64)
	return n
}

// want asserts the status and, for errors, the problem code.
func (r *result) want(status int, code ...string) *result {
	r.t.Helper()
	if r.code != status {
		r.t.Fatalf("status %d, want %d: %s", r.code, status, r.raw)
	}
	if len(code) > 0 {
		if ct := r.header.Get("Content-Type"); ct != handlers.ProblemContentType {
			r.t.Fatalf("error Content-Type %q: %s", ct, r.raw)
		}
		if got := r.str("code"); got != code[0] {
			r.t.Fatalf("problem code %q, want %q: %s", got, code[0], r.raw)
		}
	}
	return r
}

func (h *harness) do(c call) *result {
	h.t.Helper()
	return doOn(h.t, h.api.Handler(), c)
}

func doOn(t *testing.T, handler http.Handler, c call) *result {
	t.Helper()
	req, res, err := serve(t, handler, c)
	if err != nil {
		t.Fatal(err)
	}
	if !c.skipContract {
		checkContract(t, req, res)
	}
	return res
}

// serve runs one request without failing the test, so goroutines may use it.
func serve(t *testing.T, handler http.Handler, c call) (*http.Request, *result, error) {
	var body []byte
	switch b := c.body.(type) {
	case nil:
	case string:
		body = []byte(b)
	case []byte:
		body = b
	default:
		var err error
		if body, err = json.Marshal(b); err != nil {
			return nil, nil, err
		}
	}
	req := httptest.NewRequest(c.method, c.path, bytes.NewReader(body))
	if body != nil {
		ct := c.contentType
		if ct == "" {
			ct = "application/json"
		}
		req.Header.Set("Content-Type", ct)
	} else {
		req.Body = http.NoBody
		req.ContentLength = 0
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if c.actor != "" {
		req.Header.Set("X-Actor", c.actor)
	}
	for k, v := range c.header {
		req.Header.Set(k, v)
	}
	if c.remoteAddr != "" {
		req.RemoteAddr = c.remoteAddr
	}
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, req)
	res := &result{t: t, code: rec.Code, header: rec.Header(), raw: rec.Body.Bytes()}
	if rec.Code >= 500 && rec.Code != http.StatusNotImplemented && rec.Code != http.StatusServiceUnavailable {
		return req, res, fmt.Errorf("%s %s answered %d: %s", c.method, c.path, rec.Code, res.raw)
	}
	return req, res, nil
}

// checkContract validates a response against the OpenAPI document: status
// documented for the operation, headers and body matching the schema (every
// schema forbids undocumented properties).
func checkContract(t *testing.T, req *http.Request, res *result) {
	t.Helper()
	router, err := contract()
	if err != nil {
		t.Fatalf("openapi.yaml: %v", err)
	}
	if strings.Contains(req.URL.RawPath, "%2F") || strings.Contains(req.URL.RawPath, "%2f") {
		return // the legacy router matches decoded paths only
	}
	route, params, err := router.FindRoute(req)
	if err != nil {
		// Outside every documented operation: only our own 404/405 problems are allowed.
		if res.code != http.StatusNotFound && res.code != http.StatusMethodNotAllowed {
			t.Fatalf("%s %s is not in openapi.yaml (answered %d): %v", req.Method, req.URL.Path, res.code, err)
		}
		if res.header.Get("Content-Type") != handlers.ProblemContentType {
			t.Fatalf("%s %s: unmatched route answered %q", req.Method, req.URL.Path, res.header.Get("Content-Type"))
		}
		return
	}
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
		Status: res.code,
		Header: res.header,
		Body:   io.NopCloser(bytes.NewReader(res.raw)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true,
			AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
	}
	if err := openapi3filter.ValidateResponse(context.Background(), in); err != nil {
		t.Fatalf("%s %s: response %d does not match openapi.yaml: %v\nbody: %s", req.Method, req.URL.Path, res.code, err, res.raw)
	}
}

func (h *harness) eventCount() int {
	h.t.Helper()
	var n int
	if err := h.Pool.QueryRow(context.Background(), `SELECT count(*) FROM events`).Scan(&n); err != nil {
		h.t.Fatal(err)
	}
	return n
}

// as returns the token and actor for a role acting as a named person.
func (h *harness) app() (string, string)   { return h.tokens[handlers.RoleApp], "" }
func (h *harness) admin() (string, string) { return h.tokens[handlers.RoleAdmin], "admin:bob" }

func userPath(user, rest string) string { return "/v1/users/" + user + rest }

// post as the app key on the user's behalf.
func (h *harness) asUser(method, user, rest string, body any) *result {
	h.t.Helper()
	tok, _ := h.app()
	return h.do(call{method: method, path: userPath(user, rest), token: tok, body: body})
}

func (h *harness) asAdmin(method, user, rest string, body any) *result {
	h.t.Helper()
	tok, actor := h.admin()
	return h.do(call{method: method, path: userPath(user, rest), token: tok, actor: actor, body: body})
}

// enrolTOTP enrols a user through the API and returns the secret and backup codes.
func (h *harness) enrolTOTP(user string) (string, []string) {
	h.t.Helper()
	start := h.asUser("POST", user, "/enrollments/totp", map[string]any{"account_name": user + "@example.com"}).want(201)
	secret := start.str("secret")
	conf := h.asUser("POST", user, "/enrollments/totp/confirmation", map[string]any{"code": h.CodeAt(secret, 0)}).want(200)
	var act struct {
		BackupCodes []string `json:"backup_codes"`
	}
	conf.decode(&act)
	if len(act.BackupCodes) < 5 {
		h.t.Fatalf("confirmation returned %d backup codes", len(act.BackupCodes))
	}
	return secret, act.BackupCodes
}

func (h *harness) metadataOfLast(user string) (actor domain.Actor, keyID, requestID string) {
	h.t.Helper()
	recs := h.Records(user)
	if len(recs) == 0 {
		h.t.Fatalf("no events for %s", user)
	}
	m := recs[len(recs)-1].Metadata
	return m.Actor, m.KeyID, m.RequestID
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
