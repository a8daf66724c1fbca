package webui

import (
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"unicode"
)

var adminRoles = []string{"admin", "superadmin"}

func (u *UI) adminRoutes(m *http.ServeMux) {
	readers := []string{"admin", "superadmin", "auditor"}
	m.HandleFunc("GET "+Prefix+"admin/users", u.need(true, readers, u.usersPage))
	m.HandleFunc("GET "+Prefix+"admin/users/{id}", u.need(true, readers, u.userPage))
	m.HandleFunc("GET "+Prefix+"admin/open", u.need(true, readers, func(w http.ResponseWriter, r *http.Request, se *session) {
		redirect(w, r, Prefix+"admin/users/"+pathEscape(strings.TrimSpace(r.URL.Query().Get("id"))))
	}))
	m.HandleFunc("POST "+Prefix+"admin/users/{id}/{action}", u.need(true, adminRoles, u.userAction))
	m.HandleFunc("GET "+Prefix+"admin/policy", u.need(true, readers, u.policyPage))
	m.HandleFunc("POST "+Prefix+"admin/policy", u.need(true, adminRoles, u.savePolicy))
	m.HandleFunc("POST "+Prefix+"admin/policy/webauthn", u.need(true, adminRoles, u.saveRelyingParty))
}

type usersView struct {
	Users    []userStatus
	Next     template.URL // the next page (a query the template must not escape again)
	First    template.URL // the first page, shown when not on it
	Filter   url.Values
	Coverage *coverage
	Chart    []bar
	Admin    bool
}

// bar is one row of the coverage chart, drawn as inline SVG.
type bar struct {
	Label string
	Count int
	Width float64 // in the chart's units (0–200)
	Y     int
}

// listFilters are the query parameters the users list passes on to the API.
var listFilters = []string{"status", "method", "required", "low_backup_codes", "locked", "per_page"}

func (u *UI) usersPage(w http.ResponseWriter, r *http.Request, se *session) {
	// per_page (1–200, default 20) sets the page size; keyset pages follow the API's next_cursor.
	per := 20
	if n, err := strconv.Atoi(r.URL.Query().Get("per_page")); err == nil && n >= 1 && n <= 200 {
		per = n
	}
	q := url.Values{"limit": {strconv.Itoa(per)}}
	filter := url.Values{}
	for _, k := range listFilters {
		if v := r.URL.Query().Get(k); v != "" {
			if k != "per_page" {
				q.Set(k, v)
			}
			filter.Set(k, v)
		}
	}
	if c := r.URL.Query().Get("cursor"); c != "" {
		q.Set("cursor", c)
	}
	// Read your writes: the list is a read model; after an action the UI
	// waits until it shows that action.
	if se.minPos > 0 {
		q.Set("min_position", strconv.FormatInt(se.minPos, 10))
	}
	var page userPage
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/users", q, nil, "", &page); err != nil {
		u.render(w, r, se, http.StatusBadGateway, "error", "Users", errorPage{Message: explain(err)})
		return
	}
	v := usersView{Users: page.Users, Filter: filter, Admin: se.role != "auditor"}
	if page.NextCursor != "" {
		n := url.Values{}
		for k, vs := range filter {
			n[k] = vs
		}
		n.Set("cursor", page.NextCursor)
		v.Next = template.URL(Prefix + "admin/users?" + n.Encode())
	}
	if r.URL.Query().Get("cursor") != "" {
		v.First = template.URL(Prefix + "admin/users?" + filter.Encode())
	}
	var cov coverage
	cq := url.Values{}
	if se.minPos > 0 {
		cq.Set("min_position", strconv.FormatInt(se.minPos, 10))
	}
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/coverage", cq, nil, "", &cov); err == nil {
		v.Coverage = &cov
		v.Chart = chart(cov)
	}
	u.render(w, r, se, http.StatusOK, "users", "Users", v)
}

// chart draws the users by status, longest bar 200 units.
func chart(c coverage) []bar {
	keys := make([]string, 0, len(c.ByStatus))
	for k := range c.ByStatus {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	max := 1
	for _, k := range keys {
		max = int(math.Max(float64(max), float64(c.ByStatus[k])))
	}
	var out []bar
	for i, k := range keys {
		out = append(out, bar{Label: statusName(k), Count: c.ByStatus[k], Width: 200 * float64(c.ByStatus[k]) / float64(max), Y: i * 22})
	}
	return out
}

type userView struct {
	S       userStatus
	Keys    []securityKey
	Unknown bool
	Admin   bool
	Super   bool
}

func (u *UI) userPage(w http.ResponseWriter, r *http.Request, se *session) {
	id := r.PathValue("id")
	var s userStatus
	unknown := false
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, userPath(id), nil, nil, "", &s); err != nil {
		// A user the service has never seen has no history yet; an admin may
		// still require 2FA of them before their first sign-in.
		if p := asProblem(err); p == nil || p.Status != http.StatusNotFound || !validID(id) {
			u.render(w, r, se, http.StatusNotFound, "error", "User", errorPage{Message: explain(err)})
			return
		}
		s, unknown = userStatus{UserID: id, Status: "not_activated"}, true
	}
	v := userView{S: s, Unknown: unknown, Admin: se.role != "auditor", Super: se.role == "superadmin"}
	if s.SecurityKeys > 0 {
		var list securityKeyList
		if err := u.api.do(r.Context(), u.as(se), http.MethodGet, userPath(id, "/security-keys"), nil, nil, "", &list); err == nil {
			v.Keys = list.SecurityKeys
		}
	}
	u.render(w, r, se, http.StatusOK, "user", "User "+id, v)
}

// userAction runs one admin action on a user; the API enforces who may.
func (u *UI) userAction(w http.ResponseWriter, r *http.Request, se *session) {
	id, action := r.PathValue("id"), r.PathValue("action")
	f := r.PostForm
	var (
		method, path, ok string
		body             = map[string]any{}
	)
	if reason := strings.TrimSpace(f.Get("reason")); reason != "" {
		body["reason"] = reason
	}
	switch action {
	case "require":
		on := f.Get("required") == "true"
		method, path, body["required"] = http.MethodPut, "/requirement", on
		ok = map[bool]string{true: "2FA is now required for " + id + ".", false: "2FA is no longer required for " + id + "."}[on]
	case "toggle":
		on := f.Get("can_toggle") == "true"
		method, path, body["can_toggle"] = http.MethodPut, "/toggle-permission", on
		ok = map[bool]string{true: id + " may now switch 2FA on and off.", false: id + " may no longer switch 2FA off."}[on]
	case "reset":
		method, path, ok = http.MethodPost, "/reset", "2FA of "+id+" was reset: they set it up again at their next login."
	case "switch":
		to := f.Get("to")
		method, path, body["to"] = http.MethodPost, "/method-switch", to
		if d := strings.TrimSpace(f.Get("destination")); d != "" {
			body["destination"] = d
		}
		ok = id + " was switched to " + strings.ToLower(methodName(to)) + "."
		if to == "totp" {
			ok = id + " sets up an authenticator app at their next login."
		}
	case "remove-key":
		method, path = http.MethodDelete, "/security-keys/"+pathEscape(f.Get("key_id"))
		ok = "Security key “" + f.Get("name") + "” of " + id + " was removed."
	case "unlock":
		method, path, ok = http.MethodDelete, "/lock", id+" is unlocked."
	case "disable":
		method, path, ok = http.MethodDelete, "/two-factor", "2FA of "+id+" is off; their backup codes no longer work."
	case "erase":
		method, path, ok = http.MethodDelete, "", id+" was erased: their secrets and personal data in the log can no longer be read."
	default:
		http.NotFound(w, r)
		return
	}
	var out written
	err := u.api.do(r.Context(), u.as(se), method, userPath(id, path), nil, body, f.Get("idem"), &out)
	u.done(se, err, ok)
	if err != nil && action == "remove-key" {
		se.flashErr = explainKey(err)
	}
	if err == nil && out.Position > se.minPos {
		se.minPos = out.Position
	}
	if err == nil && action == "erase" {
		redirect(w, r, Prefix+"admin/users")
		return
	}
	redirect(w, r, Prefix+"admin/users/"+pathEscape(id))
}

// policyField is one setting of the policy editor.
type policyField struct {
	Name, Label, Kind string // Kind: int, bool, text, or a select's options
	Options           []string
	Value             any
	Help              string
}

var policyFields = []policyField{
	{Name: "issuer_name", Label: "Issuer name (shown in the authenticator app)", Kind: "text"},
	{Name: "support_contact", Label: "Support contact (in messages)", Kind: "text"},
	{Name: "mail_from", Label: "Sender address of messages", Kind: "text"},
	{Name: "totp_digits", Label: "Authenticator code digits", Kind: "select", Options: []string{"6", "8"}},
	{Name: "totp_period_seconds", Label: "Authenticator code period (s)", Kind: "int"},
	{Name: "totp_algorithm", Label: "Authenticator algorithm", Kind: "select", Options: []string{"SHA1", "SHA256", "SHA512"}},
	{Name: "totp_skew", Label: "Clock drift tolerance (steps)", Kind: "int"},
	{Name: "enrollment_ttl_seconds", Label: "Unconfirmed set-up expires after (s)", Kind: "int"},
	{Name: "backup_code_count", Label: "Backup codes per set", Kind: "int"},
	{Name: "low_backup_codes_warning", Label: "Warn by email when this many backup codes remain", Kind: "int"},
	{Name: "recovery_code_disables", Label: "Logging in with a backup code switches 2FA off", Kind: "bool"},
	{Name: "email_otp_allowed", Label: "Email codes allowed", Kind: "bool"},
	{Name: "sms_otp_allowed", Label: "SMS codes allowed", Kind: "bool"},
	{Name: "otp_length", Label: "Email/SMS code length", Kind: "int"},
	{Name: "otp_lifetime_seconds", Label: "Email/SMS code lifetime (s)", Kind: "int"},
	{Name: "otp_resend_cooldown_seconds", Label: "Resend cooldown (s)", Kind: "int"},
	{Name: "lockout_threshold", Label: "Wrong codes before a lockout", Kind: "int"},
	{Name: "lockout_duration_seconds", Label: "First lockout (s)", Kind: "int"},
	{Name: "lockout_max_duration_seconds", Label: "Longest lockout (s)", Kind: "int"},
	{Name: "disable_by", Label: "Who may disable 2FA", Kind: "select", Options: []string{"admins_and_toggle_users", "superadmins"}},
	{Name: "default_can_toggle", Label: "New users may switch 2FA on and off", Kind: "bool"},
	{Name: "fresh_verification_window_seconds", Label: "Fresh verification window for sensitive changes (s)", Kind: "int"},
}

type policyView struct {
	Fields  []policyField
	Admin   bool
	RP      relyingParty
	Origins string // one a line, as the form shows them
}

func (u *UI) policyPage(w http.ResponseWriter, r *http.Request, se *session) {
	var p map[string]any
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/policy", nil, nil, "", &p); err != nil {
		u.render(w, r, se, http.StatusBadGateway, "error", "Policy", errorPage{Message: explain(err)})
		return
	}
	v := policyView{Admin: se.role != "auditor"}
	for _, f := range policyFields {
		f.Value = p[f.Name]
		if n, ok := f.Value.(float64); ok {
			f.Value = strconv.FormatFloat(n, 'f', -1, 64)
		}
		v.Fields = append(v.Fields, f)
	}
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/policy/webauthn", nil, nil, "", &v.RP); err == nil {
		v.Origins = strings.Join(v.RP.Origins, "\n")
	}
	u.render(w, r, se, http.StatusOK, "policy", "Tenant policy", v)
}

// savePolicy sends only the settings the form changed, as a PATCH.
func (u *UI) savePolicy(w http.ResponseWriter, r *http.Request, se *session) {
	var cur map[string]any
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/policy", nil, nil, "", &cur); err != nil {
		u.done(se, err, "")
		redirect(w, r, Prefix+"admin/policy")
		return
	}
	patch := map[string]any{}
	for _, f := range policyFields {
		var val any
		raw := strings.TrimSpace(r.PostForm.Get(f.Name))
		switch {
		case f.Kind == "bool":
			// A hidden "false" precedes the checkbox, so an unticked box is sent too.
			val = has(r.PostForm[f.Name], "true")
		case f.Kind == "int" || f.Name == "totp_digits":
			n, err := strconv.Atoi(raw)
			if err != nil {
				se.flashErr = fmt.Sprintf("%s: enter a whole number.", f.Label)
				redirect(w, r, Prefix+"admin/policy")
				return
			}
			val = n
		default:
			val = raw
		}
		if fmt.Sprint(val) != fmt.Sprint(cur[f.Name]) {
			patch[f.Name] = val
		}
	}
	if len(patch) == 0 {
		se.flash = "Nothing to change."
		redirect(w, r, Prefix+"admin/policy")
		return
	}
	var out written
	err := u.api.do(r.Context(), u.as(se), http.MethodPatch, "/v1/policy", nil, patch, r.PostForm.Get("idem"), &out)
	u.done(se, err, "Policy saved.")
	if err == nil && out.Position > se.minPos {
		se.minPos = out.Position
	}
	redirect(w, r, Prefix+"admin/policy")
}

// saveRelyingParty sets the tenant's security keys: the PUT says the whole
// setting, so every field of the form goes, changed or not.
func (u *UI) saveRelyingParty(w http.ResponseWriter, r *http.Request, se *session) {
	f := r.PostForm
	ttl, err := strconv.Atoi(strings.TrimSpace(f.Get("challenge_ttl_seconds")))
	if err != nil {
		se.flashErr = "Security-key challenge lifetime: enter a whole number of seconds."
		redirect(w, r, Prefix+"admin/policy")
		return
	}
	// Origins one a line (or separated by spaces or commas).
	origins := strings.FieldsFunc(f.Get("origins"), func(c rune) bool { return c == ',' || unicode.IsSpace(c) })
	if origins == nil {
		origins = []string{}
	}
	body := map[string]any{
		"rp_id": strings.ToLower(strings.TrimSpace(f.Get("rp_id"))), "rp_name": strings.TrimSpace(f.Get("rp_name")),
		"origins": origins, "user_verification": f.Get("user_verification"),
		"allow_cloned_keys": has(f["allow_cloned_keys"], "true"), "challenge_ttl_seconds": ttl,
	}
	var out struct {
		Position int64 `json:"position"`
		Changed  bool  `json:"changed"`
	}
	err = u.api.do(r.Context(), u.as(se), http.MethodPut, "/v1/policy/webauthn", nil, body, f.Get("idem"), &out)
	msg := "Security keys saved."
	if body["rp_id"] == "" {
		msg = "Security keys are off for this tenant."
	}
	if err == nil && !out.Changed {
		msg = "Nothing to change."
	}
	u.done(se, err, msg)
	if err == nil && out.Position > se.minPos {
		se.minPos = out.Position
	}
	redirect(w, r, Prefix+"admin/policy")
}
