package webui

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"unicode/utf8"
)

// Security keys and passkeys (WebAuthn). Only a script can call
// navigator.credentials, so this is the one flow that needs JavaScript
// (static/app.js): a form marked data-webauthn fetches the API's options
// through the UI, runs the browser's ceremony, puts the browser's answer in
// its "credential" field and submits itself. The UI passes the options and
// the answer through without reading them: the service verifies them.

type securityKey struct {
	KeyID          string `json:"key_id"`
	Name           string `json:"name"`
	RegisteredAt   string `json:"registered_at"`
	LastUsedAt     string `json:"last_used_at"`
	CloneSuspected bool   `json:"clone_suspected"`
}

type securityKeyList struct {
	SecurityKeys []securityKey `json:"security_keys"`
}

type keyOptions struct {
	Options json.RawMessage `json:"options"`
}

type keyAdded struct {
	Position    int64    `json:"position"`
	KeyID       string   `json:"key_id"`
	Enabled     bool     `json:"enabled"`
	BackupCodes []string `json:"backup_codes"`
}

// relyingParty is the tenant's WebAuthn setting (GET/PUT /v1/policy/webauthn).
type relyingParty struct {
	RPID                string   `json:"rp_id"`
	RPName              string   `json:"rp_name"`
	Origins             []string `json:"origins"`
	UserVerification    string   `json:"user_verification"`
	AllowClonedKeys     bool     `json:"allow_cloned_keys"`
	ChallengeTTLSeconds int      `json:"challenge_ttl_seconds"`
}

func (u *UI) securityKeyRoutes(m *http.ServeMux) {
	users := []string{"user"}
	m.HandleFunc("GET "+Prefix+"keys", u.need(true, users, u.keysPage))
	// Registering works at the enrolment prompt too (a key as the first method).
	m.HandleFunc("POST "+Prefix+"keys/options", u.need(false, users, u.registrationOptions))
	m.HandleFunc("POST "+Prefix+"keys", u.need(false, users, u.registerKey))
	m.HandleFunc("POST "+Prefix+"keys/remove", u.need(true, users, u.removeKey))
	m.HandleFunc("POST "+Prefix+"login/key/options", u.need(false, users, u.loginOptions))
	m.HandleFunc("POST "+Prefix+"login/key", u.need(false, users, u.verifyKey))
}

// pageOrigin is the origin the browser shows for this request, which is what
// it reports to the relying party.
func pageOrigin(r *http.Request) string {
	scheme := "http://"
	if r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https" {
		scheme = "https://"
	}
	return scheme + strings.ToLower(r.Host)
}

// keyPlace says whether security keys can work on this page: the tenant
// offers them, and the browser is at one of the relying party's origins (an
// authenticator refuses any other, so the page says where to go instead).
type keyPlace struct {
	Offered  bool
	Here     string
	OriginOK bool
	Go       string // the first origin of the relying party
}

func (u *UI) keyPlace(ctx context.Context, se *session, r *http.Request) keyPlace {
	var rp relyingParty
	if err := u.api.do(ctx, u.as(se), http.MethodGet, "/v1/policy/webauthn", nil, nil, "", &rp); err != nil || rp.RPID == "" {
		return keyPlace{}
	}
	k := keyPlace{Offered: true, Here: pageOrigin(r), OriginOK: slices.Contains(rp.Origins, pageOrigin(r))}
	if len(rp.Origins) > 0 {
		k.Go = rp.Origins[0]
	}
	return k
}

type keysView struct {
	Keys  []securityKey
	Place keyPlace
}

func (u *UI) keysPage(w http.ResponseWriter, r *http.Request, se *session) {
	var list securityKeyList
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, userPath(se.user, "/security-keys"), nil, nil, "", &list); err != nil {
		if p := asProblem(err); p == nil || p.Status != http.StatusNotFound {
			u.render(w, r, se, http.StatusBadGateway, "error", "Security keys", errorPage{Message: explain(err)})
			return
		}
	}
	u.render(w, r, se, http.StatusOK, "keys", "Security keys", keysView{Keys: list.SecurityKeys, Place: u.keyPlace(r.Context(), se, r)})
}

// writeJSON answers the page's script.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// answerOptions hands the API's options to the script, or a sentence for
// the person when the API refused.
func answerOptions(w http.ResponseWriter, o keyOptions, err error) {
	if err != nil {
		status := http.StatusBadGateway
		if p := asProblem(err); p != nil {
			status = p.Status
		}
		writeJSON(w, status, map[string]string{"error": explainKey(err)})
		return
	}
	writeJSON(w, http.StatusOK, map[string]json.RawMessage{"options": o.Options})
}

func (u *UI) registrationOptions(w http.ResponseWriter, r *http.Request, se *session) {
	var o keyOptions
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/security-keys/registration"), nil,
		map[string]any{"account_name": se.user}, "", &o)
	answerOptions(w, o, err)
}

func (u *UI) loginOptions(w http.ResponseWriter, r *http.Request, se *session) {
	var o keyOptions
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/security-keys/challenge"), nil,
		map[string]any{}, "", &o)
	answerOptions(w, o, err)
}

// credential is the browser's answer the script put in the form: JSON, or
// nothing when the browser ran no script.
func credential(r *http.Request) (json.RawMessage, string) {
	c := strings.TrimSpace(r.PostForm.Get("credential"))
	if c == "" {
		return nil, "Security keys need JavaScript, and your browser sent no answer from a key. Turn JavaScript on, or use another method."
	}
	if !json.Valid([]byte(c)) {
		return nil, "The browser's answer from the key could not be read. Try again."
	}
	return json.RawMessage(c), ""
}

// registerKey sends the key's attestation with its name. The first method of
// an account switches 2FA on and brings the backup codes, shown once.
func (u *UI) registerKey(w http.ResponseWriter, r *http.Request, se *session) {
	back := Prefix + "keys"
	if se.stage != stageSignedIn {
		back = Prefix + "enrol"
	}
	name := strings.TrimSpace(r.PostForm.Get("name"))
	if name == "" || utf8.RuneCountInString(name) > 64 {
		se.flashErr = "Give the key a name of at most 64 characters, such as “Blue YubiKey”."
		redirect(w, r, back)
		return
	}
	cred, problem := credential(r)
	if problem != "" {
		se.flashErr = problem
		redirect(w, r, back)
		return
	}
	var a keyAdded
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/security-keys"), nil,
		map[string]any{"name": name, "credential": cred}, r.PostForm.Get("idem"), &a)
	if err != nil {
		se.flashErr = explainKey(err)
		redirect(w, r, back)
		return
	}
	se.enrol, se.otpEnrol, se.otpDest, se.ch = nil, "", "", nil
	se.stage = stageSignedIn
	if len(a.BackupCodes) > 0 {
		se.codes = a.BackupCodes
		se.flash = fmt.Sprintf("Security key “%s” is on: two-factor authentication protects your account.", name)
		redirect(w, r, Prefix+"codes")
		return
	}
	se.flash = fmt.Sprintf("Security key “%s” was added.", name)
	redirect(w, r, Prefix+"keys")
}

func (u *UI) removeKey(w http.ResponseWriter, r *http.Request, se *session) {
	id, name := r.PostForm.Get("key_id"), r.PostForm.Get("name")
	err := u.api.do(r.Context(), u.as(se), http.MethodDelete, userPath(se.user, "/security-keys/", pathEscape(id)), nil,
		map[string]any{}, r.PostForm.Get("idem"), nil)
	if err != nil {
		se.flashErr = explainKey(err)
	} else {
		se.flash = fmt.Sprintf("Security key “%s” was removed: it no longer signs you in.", name)
	}
	redirect(w, r, Prefix+"keys")
}

// verifyKey sends the login's assertion; a refused one counts towards the
// lockout like a wrong code.
func (u *UI) verifyKey(w http.ResponseWriter, r *http.Request, se *session) {
	back := Prefix + "login?method=webauthn"
	cred, problem := credential(r)
	if problem != "" {
		se.flashErr = problem
		redirect(w, r, back)
		return
	}
	var v verification
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/security-keys/verification"), nil,
		map[string]any{"credential": cred}, r.PostForm.Get("idem"), &v)
	if err != nil {
		se.flashErr = explainKey(err)
		u.noteFailure(se, err)
		redirect(w, r, back)
		return
	}
	u.verified(w, r, se, "webauthn", v)
}

// explainKey words the API's refusals of a security key for a person.
func explainKey(err error) string {
	p := asProblem(err)
	if p == nil {
		return explain(err)
	}
	switch p.Code {
	case "otp_invalid":
		msg := "This security key was not accepted."
		if p.AttemptsRemaining != nil {
			if n := *p.AttemptsRemaining; n == 1 {
				msg += " 1 attempt left."
			} else {
				msg += fmt.Sprintf(" %d attempts left.", n)
			}
		}
		return msg
	case "security_key_possibly_cloned":
		return "This security key may have been copied, so the sign-in was refused. Use another method and tell your administrator."
	case "no_pending_challenge", "challenge_expired":
		return "The request to your security key expired or was already answered. Try again."
	case "security_key_already_registered":
		return "This security key is already registered on your account."
	case "too_many_security_keys":
		return "Your account has the most security keys it may have. Remove one first."
	case "invalid_security_key_response":
		return "The key's answer was not accepted (another site's key, or this page's address is not one the organisation set up). Try again."
	case "last_method":
		return "This key is the account's only second factor: add another method first, or turn two-factor authentication off."
	case "security_key_not_found":
		return "That security key is no longer on your account."
	case "method_disabled_by_policy":
		return "Your organisation has not set up security keys: an administrator sets the relying party in the policy editor."
	}
	return explain(err)
}

// demoRelyingParty is the relying party a new demo tenant gets, so that
// security keys work at once in the browser that made it: the address this
// request came to. Browsers accept no IP address as a relying party id, and
// WebAuthn over plain http only on localhost, so an IP address or an http
// host becomes localhost with the same port (the page says to go there).
func demoRelyingParty(r *http.Request) (rpID string, origins []string) {
	host, port := strings.ToLower(r.Host), ""
	if h, p, err := net.SplitHostPort(host); err == nil {
		host, port = h, p
	}
	https := r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
	if https && host != "" && net.ParseIP(strings.Trim(host, "[]")) == nil {
		return host, []string{"https://" + strings.ToLower(r.Host)}
	}
	origin := "http://localhost"
	if https {
		origin = "https://localhost"
	}
	if port != "" {
		origin += ":" + port
	}
	return "localhost", []string{origin}
}

// offerSecurityKeys names the new demo tenant's relying party. A failure
// leaves the tenant without security keys, which the pages then say; the
// sign-in goes on.
func (u *UI) offerSecurityKeys(ctx context.Context, t *tenant, r *http.Request) {
	rpID, origins := demoRelyingParty(r)
	err := u.api.do(ctx, caller{token: t.keys["admin"], actor: "admin:reference-ui"}, http.MethodPut, "/v1/policy/webauthn", nil,
		map[string]any{"rp_id": rpID, "origins": origins, "reason": "demo tenant of the reference web UI"}, "", nil)
	if err != nil {
		u.log.Warn("webui: the demo tenant's relying party was not set; security keys are off for it", "tenant", t.id, "rp_id", rpID, "error", err.Error())
	}
}
