package webui

import (
	"encoding/json"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"
)

var auditRoles = []string{"auditor", "superadmin"}

func (u *UI) auditRoutes(m *http.ServeMux) {
	m.HandleFunc("GET "+Prefix+"audit", u.need(true, auditRoles, u.auditPage))
	m.HandleFunc("GET "+Prefix+"audit/users/{id}", u.need(true, auditRoles, u.timelinePage))
}

type auditView struct {
	Report *auditReport
	Error  string
}

// auditPage: pick a user, and the chain verification's verdict on demand.
func (u *UI) auditPage(w http.ResponseWriter, r *http.Request, se *session) {
	if id := strings.TrimSpace(r.URL.Query().Get("user")); id != "" {
		redirect(w, r, Prefix+"audit/users/"+pathEscape(id))
		return
	}
	v := auditView{}
	if r.URL.Query().Get("verify") != "" {
		var rep auditReport
		if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/audit/verification", nil, nil, "", &rep); err != nil {
			v.Error = explain(err)
		} else {
			v.Report = &rep
		}
	}
	u.render(w, r, se, http.StatusOK, "audit", "Audit", v)
}

type timelineView struct {
	User    string
	Entries []timelineEntry
	At      string // the chosen moment, as the datetime-local field shows it
	State   *userStatus
	Error   string
}

type timelineEntry struct {
	When    string
	Type    string
	Label   string // what the event means, in words
	Actor   string
	Reason  string
	Details []string
	Version int64
}

// timelinePage is a user's history, newest last, with their state replayed
// up to a chosen moment (UTC).
func (u *UI) timelinePage(w http.ResponseWriter, r *http.Request, se *session) {
	id := r.PathValue("id")
	v := timelineView{User: id}
	var after int64
	for range 20 { // at most 20 pages of 500 events
		q := url.Values{"limit": {"500"}}
		if after > 0 {
			q.Set("after_position", jsonInt(after))
		}
		var page auditPage
		if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/audit/users/"+pathEscape(id)+"/events", q, nil, "", &page); err != nil {
			u.render(w, r, se, http.StatusBadGateway, "error", "Timeline", errorPage{Message: explain(err)})
			return
		}
		for _, e := range page.Entries {
			v.Entries = append(v.Entries, entryView(e))
		}
		if page.NextAfterPosition == nil || len(page.Entries) == 0 {
			break
		}
		after = *page.NextAfterPosition
	}
	if at := r.URL.Query().Get("at"); at != "" {
		v.At = at
		t, err := time.Parse("2006-01-02T15:04:05", at)
		if err != nil {
			t, err = time.Parse("2006-01-02T15:04", at)
		}
		if err != nil {
			v.Error = "Enter a date and time."
		} else {
			var s userStatus
			q := url.Values{"at": {t.UTC().Format(time.RFC3339)}}
			if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/audit/users/"+pathEscape(id)+"/state", q, nil, "", &s); err != nil {
				v.Error = explain(err)
			} else {
				v.State = &s
			}
		}
	}
	u.render(w, r, se, http.StatusOK, "timeline", "History of "+id, v)
}

func jsonInt(n int64) string { b, _ := json.Marshal(n); return string(b) }

// entryView shows an event's payload as key: value lines (the API already
// redacted every sealed field).
func entryView(e auditEntry) timelineEntry {
	te := timelineEntry{When: e.RecordedAt.UTC().Format("2006-01-02 15:04:05 UTC"), Type: e.Type, Label: eventLabels[e.Type],
		Actor: e.Actor.Kind + ":" + e.Actor.ID, Reason: e.Reason, Version: e.Version}
	keys := make([]string, 0, len(e.Data))
	for k := range e.Data {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b, _ := json.Marshal(e.Data[k])
		s := string(b)
		if len(s) > 120 {
			s = s[:117] + "…"
		}
		te.Details = append(te.Details, k+": "+s)
	}
	return te
}

// eventLabels say in words what the stored event types mean; the type itself
// is shown too, since auditors search and filter by it.
var eventLabels = map[string]string{
	"TOTPEnrollmentStarted":       "Started setting up an authenticator app",
	"TOTPEnrollmentConfirmed":     "Confirmed the authenticator app with a first code",
	"OTPMethodSetupStarted":       "Started setting up email or SMS codes",
	"OTPMethodConfirmed":          "Confirmed email or SMS codes",
	"TwoFactorEnabled":            "Two-factor authentication switched on",
	"BackupCodesGenerated":        "Backup codes issued",
	"BackupCodesRegenerated":      "Backup codes replaced by a new set",
	"BackupCodeConsumed":          "Signed in with a backup code",
	"BackupCodeCheckFailed":       "Wrong backup code",
	"TOTPVerified":                "Verified with the authenticator app",
	"TOTPCheckFailed":             "Wrong authenticator code",
	"OTPChallengeIssued":          "Email or SMS code sent",
	"OTPVerified":                 "Verified with an email or SMS code",
	"OTPCheckFailed":              "Wrong email or SMS code",
	"TwoFactorLocked":             "Locked after repeated wrong codes",
	"TwoFactorUnlocked":           "Unlocked",
	"DefaultMethodChanged":        "Default method changed",
	"MethodRemoved":               "Method removed",
	"MethodSwitched":              "Method switched",
	"TwoFactorDisabled":           "Two-factor authentication switched off",
	"TwoFactorReset":              "Reset: enrols again at the next login",
	"TwoFactorRequirementChanged": `"Use 2FA" changed`,
	"TogglePermissionChanged":     `"Can toggle 2FA" changed`,
	"ContactAddressSet":           "Contact address set",
	"UserForgotten":               "Erased: personal data made unreadable",
}
