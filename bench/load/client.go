package load

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"time"
)

// Tenant is what `twofactord tenant create --json` prints.
type Tenant struct {
	TenantID string `json:"tenant_id"`
	Name     string `json:"name"`
	APIKeys  map[string]struct {
		KeyID string `json:"key_id"`
		Token string `json:"token"`
	} `json:"api_keys"`
}

// ReadTenant parses the output of `twofactord tenant create --json`.
func ReadTenant(path string) (Tenant, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Tenant{}, err
	}
	var t Tenant
	if err := json.Unmarshal(b, &t); err != nil {
		return Tenant{}, fmt.Errorf("%s: %w", path, err)
	}
	if t.TenantID == "" || t.APIKeys["app"].Token == "" || t.APIKeys["admin"].Token == "" {
		return Tenant{}, fmt.Errorf("%s: want tenant_id and the app and admin keys of `twofactord tenant create --json`", path)
	}
	return t, nil
}

// Client calls the HTTP API of a running twofactord.
type Client struct {
	base  string
	http  *http.Client
	app   string
	admin string
}

// NewClient keeps up to conns connections to base open (one per virtual user).
func NewClient(base string, t Tenant, conns int) (*Client, error) {
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("--api %q: want http://host:port", base)
	}
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        conns * 2,
		MaxIdleConnsPerHost: conns * 2,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	return &Client{
		base: strings.TrimRight(base, "/"), http: &http.Client{Transport: tr, Timeout: 30 * time.Second},
		app: t.APIKeys["app"].Token, admin: t.APIKeys["admin"].Token,
	}, nil
}

// Close drops the idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Response is one HTTP exchange as the tool saw it.
type Response struct {
	Status  int
	Code    string // the problem+json code of an error response
	Body    []byte
	Latency time.Duration
	Err     error
}

// OK: a 2xx answer.
func (r Response) OK() bool { return r.Err == nil && r.Status >= 200 && r.Status < 300 }

// Kind names the outcome for the error tables: "200", "422 otp_invalid", "transport: timeout".
func (r Response) Kind() string {
	if r.Err != nil {
		return "transport: " + transportKind(r.Err)
	}
	if r.Code != "" {
		return fmt.Sprintf("%d %s", r.Status, r.Code)
	}
	return fmt.Sprint(r.Status)
}

func transportKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection reset"
	}
	return "other"
}

// as says which key a request carries.
type as int

const (
	asApp as = iota
	asAdmin
)

// do sends one request; body, when not nil, is sent as JSON.
func (c *Client) do(ctx context.Context, method, path string, who as, body any) Response {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return Response{Err: err}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return Response{Err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if who == asAdmin {
		req.Header.Set("Authorization", "Bearer "+c.admin)
		req.Header.Set("X-Actor", "admin:bench")
	} else {
		req.Header.Set("Authorization", "Bearer "+c.app)
	}
	start := time.Now()
	resp, err := c.http.Do(req)
	if err != nil {
		return Response{Err: err, Latency: time.Since(start)}
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	out := Response{Status: resp.StatusCode, Body: b, Latency: time.Since(start), Err: err}
	if out.Err == nil && resp.StatusCode >= 300 {
		var p struct {
			Code string `json:"code"`
		}
		if json.Unmarshal(b, &p) == nil {
			out.Code = p.Code
		}
	}
	return out
}

func userPath(user string, rest string) string {
	return "/v1/users/" + url.PathEscape(user) + rest
}

// StartTOTP is POST /v1/users/{user}/enrollments/totp.
func (c *Client) StartTOTP(ctx context.Context, user string) Response {
	return c.do(ctx, http.MethodPost, userPath(user, "/enrollments/totp"), asApp, map[string]string{"account_name": user + "@bench.test"})
}

// SetContact is PUT /v1/users/{user}/contact-address (email), before 2FA is on.
func (c *Client) SetContact(ctx context.Context, user string) Response {
	return c.do(ctx, http.MethodPut, userPath(user, "/contact-address"), asApp, map[string]string{"method": "email", "address": Address(user)})
}

// Address is the email address the tool registers for a user.
func Address(user string) string { return user + "@bench.test" }

// ConfirmTOTP is POST /v1/users/{user}/enrollments/totp/confirmation.
func (c *Client) ConfirmTOTP(ctx context.Context, user, code string) Response {
	return c.do(ctx, http.MethodPost, userPath(user, "/enrollments/totp/confirmation"), asApp, map[string]string{"code": code})
}

// Verify is POST /v1/users/{user}/verifications.
func (c *Client) Verify(ctx context.Context, user, method, code string) Response {
	return c.do(ctx, http.MethodPost, userPath(user, "/verifications"), asApp, map[string]string{"method": method, "code": code})
}

// Challenge is POST /v1/users/{user}/challenges (the default method).
func (c *Client) Challenge(ctx context.Context, user string) Response {
	return c.do(ctx, http.MethodPost, userPath(user, "/challenges"), asApp, nil)
}

// GetUser is an admin's GET /v1/users/{user} (read from the user's stream).
func (c *Client) GetUser(ctx context.Context, user string) Response {
	return c.do(ctx, http.MethodGet, userPath(user, ""), asAdmin, nil)
}

// Visible is an admin's read of the read model (the first user of the list),
// waiting until it shows minPosition when > 0.
func (c *Client) Visible(ctx context.Context, minPosition int64) Response {
	q := "/v1/users?limit=1"
	if minPosition > 0 {
		q += fmt.Sprintf("&min_position=%d", minPosition)
	}
	return c.do(ctx, http.MethodGet, q, asAdmin, nil)
}

// ListUsers is an admin's GET /v1/users with a filter and a keyset cursor.
func (c *Client) ListUsers(ctx context.Context, query url.Values) Response {
	return c.do(ctx, http.MethodGet, "/v1/users?"+query.Encode(), asAdmin, nil)
}

// Coverage is an admin's GET /v1/coverage.
func (c *Client) Coverage(ctx context.Context) Response {
	return c.do(ctx, http.MethodGet, "/v1/coverage", asAdmin, nil)
}

// Metrics fetches /metrics (Prometheus text).
func (c *Client) Metrics(ctx context.Context) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// position reads "position" from a write's answer.
func position(body []byte) int64 {
	var p struct {
		Position int64 `json:"position"`
	}
	_ = json.Unmarshal(body, &p)
	return p.Position
}
