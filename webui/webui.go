// Package webui is the reference web UI: server-rendered pages that play the
// host product (a demo sign-in standing in for its password step), the user's
// enrolment and login screens, an admin console and an auditor's timeline.
//
// It is also the worked example of an integration: it holds the API keys on
// the server side, gives the browser only a session cookie, and calls the
// twofactor HTTP API over HTTP like any other backend (it imports nothing of
// the service). Off by default; `twofactord serve --dev` or --web-ui turn it on.
package webui

import (
	"embed"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Prefix is where the UI is served; everything else stays the API's.
const Prefix = "/ui/"

// Config is what the UI needs from its host process.
type Config struct {
	// APIBase is the twofactor API's base URL, e.g. http://127.0.0.1:8080.
	APIBase string
	// OperatorKey lets the UI create demo tenants and issue keys for them.
	OperatorKey string
	// Dev says the service runs with --dev; the pages say so.
	Dev bool
	Log *slog.Logger
}

// UI is the web UI's HTTP handler and its in-memory state.
type UI struct {
	cfg      Config
	api      *client
	tenants  *tenants
	sessions *sessions
	pages    map[string]*template.Template
	log      *slog.Logger
	mux      *http.ServeMux
}

// New builds the UI; it parses its embedded templates once.
func New(cfg Config) (*UI, error) {
	if cfg.APIBase == "" {
		return nil, errors.New("webui: the API base URL is required")
	}
	if cfg.OperatorKey == "" {
		return nil, errors.New("webui: an operator key is required (to create the demo tenants' API keys)")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	api := newClient(cfg.APIBase)
	u := &UI{cfg: cfg, api: api, log: cfg.Log, sessions: newSessions(),
		tenants: &tenants{api: api, operatorKey: cfg.OperatorKey, byID: map[string]*tenant{}}}
	if err := u.parse(); err != nil {
		return nil, err
	}
	u.routes()
	return u, nil
}

var funcs = template.FuncMap{
	"join":       strings.Join,
	"methodName": methodName,
	"statusName": statusName,
	"when": func(s string) string {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return s
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"pct": func(f float64) string { return fmt.Sprintf("%.0f%%", f*100) },
	"has": func(list []string, s string) bool {
		for _, x := range list {
			if x == s {
				return true
			}
		}
		return false
	},
	"dataURL": func(b64 string) template.URL { return template.URL("data:image/png;base64," + b64) },
	"add":     func(a, b int) int { return a + b },
	"mul":     func(a, b int) int { return a * b },
	"barEnd":  func(w float64) float64 { return 124 + w },
	"lower":   strings.ToLower,
	"list":    func(s ...string) []string { return s },
	// idem is a fresh Idempotency-Key for each rendered form: submitting the
	// same form twice (a double click, a retry) replays the first answer.
	"idem": newToken,
}

func (u *UI) parse() error {
	u.pages = map[string]*template.Template{}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return err
	}
	for _, n := range names {
		base := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if base == "layout" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return fmt.Errorf("webui: template %s: %w", n, err)
		}
		u.pages[base] = t
	}
	return nil
}

// ServeHTTP serves the pages under Prefix with the headers every page needs.
func (u *UI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	// Only our own files: no inline script runs, frames are refused, the QR
	// code is a data: image.
	h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "+
		"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	if !strings.HasPrefix(r.URL.Path, Prefix+"static/") {
		h.Set("Cache-Control", "no-store")
	}
	u.mux.ServeHTTP(w, r)
}

// view is what every page template gets.
type view struct {
	Title  string
	Dev    bool
	Signed bool // fully signed in
	Role   string
	Person string
	Tenant string
	CSRF   string
	Flash  string
	Error  string
	Page   any
	Nav    string
	Prefix string
}

func (u *UI) render(w http.ResponseWriter, r *http.Request, se *session, status int, page, title string, data any) {
	v := view{Title: title, Dev: u.cfg.Dev, Page: data, Prefix: Prefix, Nav: page}
	if se != nil {
		v.Signed, v.Role, v.Person, v.CSRF = se.stage == stageSignedIn, se.role, se.user, se.csrf
		if t := u.tenants.get(se.tenant); t != nil {
			v.Tenant = t.name
		}
		v.Flash, v.Error = se.flash, se.flashErr
		se.flash, se.flashErr = "", ""
	}
	t := u.pages[page]
	if t == nil {
		http.Error(w, "no such page", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := t.ExecuteTemplate(w, "layout", v); err != nil {
		u.log.Error("webui: rendering failed", "page", page, "error", err.Error())
	}
}

// redirect answers a form with 303 See Other: the browser then GETs the page,
// so a reload never submits the form again.
func redirect(w http.ResponseWriter, r *http.Request, path string) {
	http.Redirect(w, r, path, http.StatusSeeOther)
}

// handler is a page that needs a session (and, for POST, a valid CSRF token).
type handler func(w http.ResponseWriter, r *http.Request, se *session)

// need wraps h: no session goes to the sign-in page; a form without the
// session's CSRF token is refused; roles limits who may see it; signed says
// the second factor must have been passed.
func (u *UI) need(signed bool, roles []string, h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		se := u.sessions.get(r)
		if se == nil {
			redirect(w, r, Prefix)
			return
		}
		se.mu.Lock()
		defer se.mu.Unlock()
		if r.Method == http.MethodPost {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if err := r.ParseForm(); err != nil || !validCSRF(se, r.PostForm.Get("csrf")) {
				u.render(w, r, se, http.StatusForbidden, "error", "Form expired", errorPage{
					Message: "This form has expired or did not come from this site. Go back, reload the page and try again."})
				return
			}
		}
		if len(roles) > 0 {
			ok := false
			for _, x := range roles {
				ok = ok || x == se.role
			}
			if !ok {
				u.render(w, r, se, http.StatusForbidden, "error", "Not allowed", errorPage{Message: "Your role cannot open this page."})
				return
			}
		}
		if signed && se.stage != stageSignedIn {
			redirect(w, r, Prefix+"login")
			return
		}
		h(w, r, se)
	}
}

type errorPage struct{ Message string }

// as is the API caller for the session's role: the app key acts for the user
// in the path; the others name the person in X-Actor.
func (u *UI) as(se *session) caller {
	t := u.tenants.get(se.tenant)
	if t == nil {
		return caller{}
	}
	switch se.role {
	case "user":
		return caller{token: t.keys["app"]}
	default:
		return caller{token: t.keys[se.role], actor: se.role + ":" + se.user}
	}
}

func userPath(id string, rest ...string) string {
	return "/v1/users/" + pathEscape(id) + strings.Join(rest, "")
}

func pathEscape(s string) string { return url.PathEscape(s) }

func methodName(m string) string {
	switch m {
	case "totp":
		return "Authenticator app"
	case "email":
		return "Email code"
	case "sms":
		return "Text message (SMS)"
	case "backup_code":
		return "Backup code"
	case "webauthn":
		return "Security key"
	}
	return m
}

func statusName(s string) string {
	switch s {
	case "not_activated":
		return "Not activated"
	case "pending":
		return "Pending"
	case "activated":
		return "Activated"
	case "locked":
		return "Locked"
	case "disabled":
		return "Disabled"
	case "reset_pending":
		return "Reset: enrols at next login"
	case "setup_app_at_next_login":
		return "Sets up the app at next login"
	case "erased":
		return "Erased"
	}
	return s
}

// explain turns an API error into a sentence for a person. A wrong code says
// only that it is wrong and how many attempts remain, never why.
func explain(err error) string {
	p := asProblem(err)
	if p == nil {
		return "The two-factor service did not answer. Try again in a moment."
	}
	switch p.Code {
	case "otp_invalid":
		if p.AttemptsRemaining != nil {
			n := *p.AttemptsRemaining
			if n == 1 {
				return "Invalid code. 1 attempt left."
			}
			return fmt.Sprintf("Invalid code. %d attempts left.", n)
		}
		return "Invalid code."
	case "locked":
		return "Too many wrong codes. Verification is locked until " + funcs["when"].(func(string) string)(p.LockedUntil) + "."
	case "resend_too_soon":
		if p.RetryAfterSeconds != nil {
			return fmt.Sprintf("A code was sent moments ago. You can ask for a new one in %d s.", *p.RetryAfterSeconds)
		}
		return "A code was sent moments ago."
	case "reauthentication_required":
		return "For this change, confirm it is you first: verify with your second factor again."
	case "forbidden_by_policy":
		switch p.Reason {
		case "two_factor_required":
			return "Your organisation requires two-factor authentication for your account; ask an administrator."
		case "not_allowed":
			return "Your organisation does not allow you to change this; ask an administrator."
		}
	case "enrollment_expired", "no_pending_enrollment":
		return "This set-up expired. Start again."
	case "code_expired", "no_pending_code":
		return "This code expired. Ask for a new one."
	case "malformed_code", "invalid_code":
		return "Invalid code."
	case "rate_limited":
		return "Too many requests. Wait a moment and try again."
	case "unavailable":
		return "The two-factor service is briefly unavailable. Try again in a moment."
	}
	if p.Detail != "" {
		r, n := utf8.DecodeRuneInString(p.Detail)
		return string(unicode.ToUpper(r)) + p.Detail[n:] + "."
	}
	return p.Title
}
