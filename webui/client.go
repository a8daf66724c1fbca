package webui

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// client calls the twofactor HTTP API exactly as any host product's backend
// would: bearer API keys, X-Actor for admins and auditors, an Idempotency-Key
// on every write. The UI never reaches into the service's packages, so it stays
// the worked example of an integration (and survives changes behind the API).
type client struct {
	base string
	http *http.Client
}

// caller is who a request is made as: the key of a role and the person named
// in X-Actor (empty for the app key, whose actor is the user in the path).
type caller struct {
	token string
	actor string
}

// problem is the API's RFC 9457 error answer, as far as the UI shows it.
type problem struct {
	Status            int    `json:"status"`
	Code              string `json:"code"`
	Title             string `json:"title"`
	Detail            string `json:"detail"`
	Reason            string `json:"reason"`
	AttemptsRemaining *int   `json:"attempts_remaining"`
	LockedUntil       string `json:"locked_until"`
	RetryAfterSeconds *int   `json:"retry_after_seconds"`
}

func (p *problem) Error() string {
	return fmt.Sprintf("%d %s: %s", p.Status, p.Code, p.Detail)
}

// asProblem finds the API's answer in err (nil when the API was not reached).
func asProblem(err error) *problem {
	var p *problem
	if errors.As(err, &p) {
		return p
	}
	return nil
}

func newClient(base string) *client {
	return &client{base: strings.TrimRight(base, "/"), http: &http.Client{Timeout: 15 * time.Second}}
}

// do sends one request; a 2xx answer is decoded into out (when not nil), any
// other into a *problem. idem is the write's Idempotency-Key (a value the form
// carried, so a double submit replays instead of running twice).
func (c *client) do(ctx context.Context, as caller, method, path string, query url.Values, body any, idem string, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+as.token)
	if as.actor != "" {
		req.Header.Set("X-Actor", as.actor)
	}
	if method != http.MethodGet {
		if idem == "" {
			idem = newToken()
		}
		req.Header.Set("Idempotency-Key", idem)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("the twofactor API did not answer: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		p := &problem{Status: resp.StatusCode}
		_ = json.Unmarshal(raw, p)
		if p.Code == "" {
			p.Code = "http_" + fmt.Sprint(resp.StatusCode)
		}
		return p
	}
	if out != nil {
		return json.Unmarshal(raw, out)
	}
	return nil
}

// newToken is 128 random bits in hex: session ids, CSRF tokens, idempotency keys.
func newToken() string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on a supported platform
	}
	return hex.EncodeToString(b)
}

// The API's answers the UI reads (a subset of handlers/openapi.yaml).

type userStatus struct {
	UserID               string   `json:"user_id"`
	Status               string   `json:"status"`
	Enabled              bool     `json:"enabled"`
	Methods              []string `json:"methods"`
	DefaultMethod        string   `json:"default_method"`
	PendingMethods       []string `json:"pending_methods"`
	BackupCodesRemaining int      `json:"backup_codes_remaining"`
	SecurityKeys         int      `json:"security_keys"`
	Required             bool     `json:"required"`
	RequirementWaivedBy  string   `json:"requirement_waived_by"`
	CanToggle            bool     `json:"can_toggle"`
	MustEnroll           bool     `json:"must_enroll"`
	SetupAppAtNextLogin  bool     `json:"setup_app_at_next_login"`
	LockedUntil          string   `json:"locked_until"`
	AttemptsRemaining    *int     `json:"attempts_remaining"`
	LastVerifiedAt       string   `json:"last_verified_at"`
	LastVerifiedMethod   string   `json:"last_verified_method"`
	Version              int64    `json:"version"`
	UpdatedAt            string   `json:"updated_at"`
}

type challenge struct {
	Position             int64    `json:"position"`
	EnrollmentRequired   bool     `json:"enrollment_required"`
	CanDisable           bool     `json:"can_disable"`
	Enabled              bool     `json:"enabled"`
	Methods              []string `json:"methods"`
	DefaultMethod        string   `json:"default_method"`
	SetupAppAtNextLogin  bool     `json:"setup_app_at_next_login"`
	BackupCodesRemaining int      `json:"backup_codes_remaining"`
	LockedUntil          string   `json:"locked_until"`
	AttemptsRemaining    int      `json:"attempts_remaining"`
	CodeSentBy           string   `json:"code_sent_by"`
	CodeExpiresAt        string   `json:"code_expires_at"`
}

type verification struct {
	Position             int64  `json:"position"`
	Verified             bool   `json:"verified"`
	Method               string `json:"method"`
	BackupCodesRemaining int    `json:"backup_codes_remaining"`
	TwoFactorDisabled    bool   `json:"two_factor_disabled"`
}

type enrollment struct {
	Position   int64  `json:"position"`
	Method     string `json:"method"`
	Secret     string `json:"secret"`
	OTPAuthURI string `json:"otpauth_uri"`
	QRCodePNG  string `json:"qr_code_png"`
	ExpiresAt  string `json:"expires_at"`
}

type activation struct {
	Position    int64    `json:"position"`
	Method      string   `json:"method"`
	Enabled     bool     `json:"enabled"`
	BackupCodes []string `json:"backup_codes"`
}

type backupCodes struct {
	Position    int64    `json:"position"`
	BackupCodes []string `json:"backup_codes"`
}

type written struct {
	Position int64 `json:"position"`
}

type userPage struct {
	Users      []userStatus `json:"users"`
	NextCursor string       `json:"next_cursor"`
}

type coverage struct {
	Users               int            `json:"users"`
	ByStatus            map[string]int `json:"by_status"`
	Activated           int            `json:"activated"`
	ActivatedShare      float64        `json:"activated_share"`
	RequiredNotEnrolled int            `json:"required_not_enrolled"`
	LockedNow           int            `json:"locked_now"`
}

type auditEntry struct {
	Position   int64                     `json:"position"`
	EventID    string                    `json:"event_id"`
	Version    int64                     `json:"version"`
	Type       string                    `json:"type"`
	RecordedAt time.Time                 `json:"recorded_at"`
	Actor      struct{ Kind, ID string } `json:"actor"`
	RequestID  string                    `json:"request_id"`
	Reason     string                    `json:"reason"`
	Data       map[string]any            `json:"data"`
}

type auditPage struct {
	Entries           []auditEntry `json:"entries"`
	NextAfterPosition *int64       `json:"next_after_position"`
}

type auditReport struct {
	OK          bool `json:"ok"`
	Streams     int  `json:"streams"`
	Events      int  `json:"events"`
	FirstBroken *struct {
		Position int64  `json:"position"`
		EventID  string `json:"event_id"`
		StreamID string `json:"stream_id"`
		Reason   string `json:"reason"`
	} `json:"first_broken"`
}

type issuedKey struct {
	KeyID string `json:"key_id"`
	Role  string `json:"role"`
	Token string `json:"token"`
}

type tenantWithKeys struct {
	TenantID string      `json:"tenant_id"`
	Name     string      `json:"name"`
	APIKeys  []issuedKey `json:"api_keys"`
}
