package webui

import (
	"fmt"
	"io/fs"
	"net/http"
	"strings"
	"unicode"
)

func (u *UI) routes() {
	m := http.NewServeMux()
	static, _ := fsSub(staticFS, "static")
	m.Handle("GET "+Prefix+"static/", http.StripPrefix(Prefix+"static/", http.FileServerFS(static)))
	m.HandleFunc("GET "+Prefix+"{$}", u.home)
	m.HandleFunc("POST "+Prefix+"signin", u.signIn)
	m.HandleFunc("POST "+Prefix+"signout", u.need(false, nil, u.signOut))

	users := []string{"user"}
	m.HandleFunc("GET "+Prefix+"login", u.need(false, users, u.loginPage))
	m.HandleFunc("POST "+Prefix+"login", u.need(false, users, u.verify))
	m.HandleFunc("POST "+Prefix+"login/send", u.need(false, users, u.sendCode))
	m.HandleFunc("POST "+Prefix+"login/again", u.need(false, users, func(w http.ResponseWriter, r *http.Request, se *session) {
		u.challenge(w, r, se, "")
	}))
	m.HandleFunc("GET "+Prefix+"enrol", u.need(false, users, u.enrolPage))
	m.HandleFunc("POST "+Prefix+"enrol/totp", u.need(false, users, u.startTOTP))
	m.HandleFunc("POST "+Prefix+"enrol/totp/confirm", u.need(false, users, u.confirmTOTP))
	m.HandleFunc("POST "+Prefix+"enrol/otp", u.need(false, users, u.startOTP))
	m.HandleFunc("POST "+Prefix+"enrol/otp/confirm", u.need(false, users, u.confirmOTP))
	m.HandleFunc("POST "+Prefix+"enrol/cancel", u.need(false, users, u.cancelEnrol))
	m.HandleFunc("POST "+Prefix+"enrol/skip", u.need(false, users, u.skipEnrol))
	m.HandleFunc("GET "+Prefix+"codes", u.need(true, users, u.codesPage))
	m.HandleFunc("GET "+Prefix+"codes.txt", u.need(true, users, u.codesFile))
	m.HandleFunc("POST "+Prefix+"codes/done", u.need(true, users, u.codesDone))
	m.HandleFunc("GET "+Prefix+"account", u.need(true, users, u.accountPage))
	m.HandleFunc("POST "+Prefix+"account/default", u.need(true, users, u.setDefault))
	m.HandleFunc("POST "+Prefix+"account/regenerate", u.need(true, users, u.regenerate))
	m.HandleFunc("POST "+Prefix+"account/remove", u.need(true, users, u.removeMethod))
	m.HandleFunc("POST "+Prefix+"account/disable", u.need(true, users, u.disable))
	u.securityKeyRoutes(m)
	u.adminRoutes(m)
	u.auditRoutes(m)
	u.mux = m
}

// home: the sign-in page, or where a signed-in person belongs.
func (u *UI) home(w http.ResponseWriter, r *http.Request) {
	if se := u.sessions.get(r); se != nil {
		switch {
		case se.role == "user" && se.stage != stageSignedIn:
			redirect(w, r, Prefix+"login")
		case se.role == "user":
			redirect(w, r, Prefix+"account")
		case se.role == "auditor":
			redirect(w, r, Prefix+"audit")
		default:
			redirect(w, r, Prefix+"admin/users")
		}
		return
	}
	u.signInPage(w, r, http.StatusOK, "")
}

type signInView struct {
	Tenants []knownTenant
	Error   string
}

func (u *UI) signInPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	u.render(w, r, nil, status, "signin", "Sign in (demo)", signInView{Tenants: u.tenants.list(), Error: msg})
}

// validID is what the API accepts as an id, checked first for a clear message.
func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// signIn is the demo of the host product's password step: whoever reaches
// the UI picks a tenant, a role and an id. A real product checks a password
// here; the second factor then follows as below.
func (u *UI) signIn(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		u.signInPage(w, r, http.StatusBadRequest, "The form could not be read.")
		return
	}
	// Sign-in forms carry no session yet; SameSite cookies and the origin
	// check stop a cross-site form from signing a browser in.
	if o := r.Header.Get("Origin"); o != "" && o != "null" && !sameOrigin(r, o) {
		u.signInPage(w, r, http.StatusForbidden, "This form did not come from this site.")
		return
	}
	role, id := r.PostForm.Get("role"), strings.TrimSpace(r.PostForm.Get("user"))
	switch role {
	case "user", "admin", "superadmin", "auditor":
	default:
		u.signInPage(w, r, http.StatusBadRequest, "Choose a role.")
		return
	}
	if !validID(id) {
		u.signInPage(w, r, http.StatusBadRequest, "Enter a user id or name without spaces (at most 128 characters).")
		return
	}
	var t *tenant
	var err error
	switch choice := r.PostForm.Get("tenant"); {
	case choice == "new":
		name := strings.TrimSpace(r.PostForm.Get("tenant_name"))
		if name == "" {
			name = "Demo " + newToken()[:6]
		}
		t, err = u.tenants.create(r.Context(), name)
		if err == nil {
			u.offerSecurityKeys(r.Context(), t, r)
		}
	case choice == "id":
		tid := strings.TrimSpace(r.PostForm.Get("tenant_id"))
		if !validID(tid) {
			u.signInPage(w, r, http.StatusBadRequest, "Enter the tenant id.")
			return
		}
		t, err = u.tenants.attach(r.Context(), tid)
	default:
		t = u.tenants.get(choice)
		if t == nil {
			err = fmt.Errorf("choose a tenant")
		}
	}
	if err != nil {
		u.signInPage(w, r, http.StatusBadRequest, "Tenant: "+explainAny(err))
		return
	}
	se := u.sessions.start(w, r, t.id, id, role)
	se.mu.Lock()
	defer se.mu.Unlock()
	if role != "user" {
		se.stage = stageSignedIn
		u.home(w, withCookie(r, se))
		return
	}
	u.challenge(w, r, se, "")
}

func explainAny(err error) string {
	if p := asProblem(err); p != nil {
		return explain(err)
	}
	return err.Error()
}

func sameOrigin(r *http.Request, origin string) bool {
	scheme := "http://"
	if r.TLS != nil {
		scheme = "https://"
	}
	return origin == scheme+r.Host
}

// withCookie lets home see a session started in this very request.
func withCookie(r *http.Request, se *session) *http.Request {
	r2 := r.Clone(r.Context())
	r2.Header.Del("Cookie")
	r2.AddCookie(&http.Cookie{Name: cookieName, Value: se.id})
	return r2
}

func (u *UI) signOut(w http.ResponseWriter, r *http.Request, se *session) {
	u.sessions.end(w, r, se)
	redirect(w, r, Prefix)
}

// challenge asks the API what the second factor is (and, for email or SMS,
// has the code sent), then sends the browser to the page that asks for it.
func (u *UI) challenge(w http.ResponseWriter, r *http.Request, se *session, method string) {
	body := map[string]any{}
	if method != "" {
		body["method"] = method
	}
	var ch challenge
	if err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/challenges"), nil, body, "", &ch); err != nil {
		se.flashErr = explain(err)
		if se.ch == nil {
			u.render(w, r, se, http.StatusBadGateway, "error", "Sign-in failed", errorPage{Message: explain(err)})
			return
		}
		redirect(w, r, Prefix+"login")
		return
	}
	se.ch = &ch
	switch {
	case ch.EnrollmentRequired && !ch.SetupAppAtNextLogin:
		redirect(w, r, Prefix+"enrol")
	case ch.Enabled || ch.LockedUntil != "":
		redirect(w, r, Prefix+"login")
	default:
		// No second factor: the host signs the user in.
		se.stage = stageSignedIn
		redirect(w, r, Prefix+"account")
	}
}

type loginView struct {
	Ch       *challenge
	Method   string // what the form asks for
	Others   []string
	Reverify bool
	Keys     keyPlace // where security keys work, when the form asks for one
}

func (u *UI) loginPage(w http.ResponseWriter, r *http.Request, se *session) {
	if se.ch == nil {
		u.challenge(w, r, se, "")
		return
	}
	ch := se.ch
	method := r.URL.Query().Get("method")
	if method == "" {
		method = ch.CodeSentBy
	}
	if method == "" {
		method = ch.DefaultMethod
	}
	if method == "" || (method != "backup_code" && !has(ch.Methods, method)) {
		method = "backup_code"
		if len(ch.Methods) > 0 {
			method = ch.Methods[0]
		}
	}
	v := loginView{Ch: ch, Method: method, Reverify: se.stage == stageSignedIn}
	if method == "webauthn" {
		v.Keys = u.keyPlace(r.Context(), se, r)
	}
	for _, m := range ch.Methods {
		if m != method {
			v.Others = append(v.Others, m)
		}
	}
	if method != "backup_code" {
		v.Others = append(v.Others, "backup_code")
	}
	u.render(w, r, se, http.StatusOK, "login", "Two-factor authentication", v)
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// sendCode asks for an emailed or texted code (a first one, or again).
func (u *UI) sendCode(w http.ResponseWriter, r *http.Request, se *session) {
	m := r.PostForm.Get("method")
	if m != "email" && m != "sms" {
		redirect(w, r, Prefix+"login")
		return
	}
	var ch challenge
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/challenges"), nil, map[string]any{"method": m}, r.PostForm.Get("idem"), &ch)
	if err != nil {
		se.flashErr = explain(err)
	} else {
		se.ch = &ch
		se.flash = "We sent a new code by " + map[string]string{"email": "email", "sms": "text message"}[m] + "."
	}
	redirect(w, r, Prefix+"login?method="+m)
}

// verify checks the code the person typed.
func (u *UI) verify(w http.ResponseWriter, r *http.Request, se *session) {
	method, code := r.PostForm.Get("method"), strings.TrimSpace(r.PostForm.Get("code"))
	back := Prefix + "login?method=" + method
	if code == "" {
		se.flashErr = "Enter the code."
		redirect(w, r, back)
		return
	}
	if method != "backup_code" {
		code = strings.ReplaceAll(code, " ", "")
	}
	var v verification
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/verifications"), nil,
		map[string]any{"method": method, "code": code}, r.PostForm.Get("idem"), &v)
	if err != nil {
		se.flashErr = explain(err)
		u.noteFailure(se, err)
		redirect(w, r, back)
		return
	}
	u.verified(w, r, se, method, v)
}

// noteFailure keeps the login page's lockout and attempts left current.
func (u *UI) noteFailure(se *session, err error) {
	if p := asProblem(err); p != nil && se.ch != nil {
		switch {
		case p.Code == "locked":
			se.ch.LockedUntil = p.LockedUntil
		case p.AttemptsRemaining != nil:
			se.ch.AttemptsRemaining = *p.AttemptsRemaining
		}
	}
}

// verified is where a passed second factor leads: signed in, or on to the
// app's set-up or a new enrolment when the API says so.
func (u *UI) verified(w http.ResponseWriter, r *http.Request, se *session, method string, v verification) {
	ch := se.ch
	se.ch = nil
	switch setupApp := ch != nil && ch.SetupAppAtNextLogin; {
	case v.TwoFactorDisabled:
		se.stage = stageSignedIn
		se.flash = "You signed in with a backup code. Your organisation switches two-factor authentication off after that: set it up again now."
		redirect(w, r, Prefix+"enrol")
	case setupApp:
		se.ch = ch // the enrolment page offers the app only
		se.flash = "Verified. Your administrator switched you to an authenticator app: set it up now."
		redirect(w, r, Prefix+"enrol")
	default:
		se.stage = stageSignedIn
		se.flash = "Signed in with " + strings.ToLower(methodName(method)) + "."
		if method == "backup_code" {
			se.flash += fmt.Sprintf(" %d backup codes left. Lost your phone? Replace your authenticator below.", v.BackupCodesRemaining)
		}
		redirect(w, r, Prefix+"account")
	}
}

type enrolView struct {
	Enrol      *enrollment
	OTP        string
	OTPDest    string
	CanDisable bool
	Prompt     bool // at a login's enrolment prompt (not yet signed in)
	SetupApp   bool
	Email, SMS bool // allowed by the tenant
	Keys       keyPlace
}

func (u *UI) enrolPage(w http.ResponseWriter, r *http.Request, se *session) {
	v := enrolView{Enrol: se.enrol, OTP: se.otpEnrol, OTPDest: se.otpDest, Prompt: se.stage != stageSignedIn, Email: true, SMS: true}
	// Offer only the methods the tenant's policy allows.
	var pol struct {
		Email *bool `json:"email_otp_allowed"`
		SMS   *bool `json:"sms_otp_allowed"`
	}
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/policy", nil, nil, "", &pol); err == nil && pol.Email != nil && pol.SMS != nil {
		v.Email, v.SMS = *pol.Email, *pol.SMS
	}
	v.Keys = u.keyPlace(r.Context(), se, r)
	if se.ch != nil {
		v.CanDisable = se.ch.CanDisable && v.Prompt
		v.SetupApp = se.ch.SetupAppAtNextLogin
	}
	u.render(w, r, se, http.StatusOK, "enrol", "Set up two-factor authentication", v)
}

// startTOTP starts (or restarts: "replace authenticator") an app enrolment:
// the API answers the secret, its otpauth URI and a QR code PNG.
func (u *UI) startTOTP(w http.ResponseWriter, r *http.Request, se *session) {
	var e enrollment
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/enrollments/totp"), nil,
		map[string]any{"account_name": se.user}, r.PostForm.Get("idem"), &e)
	if err != nil {
		se.flashErr = explain(err)
		if se.stage == stageSignedIn {
			redirect(w, r, Prefix+"account")
			return
		}
	} else {
		se.enrol, se.otpEnrol = &e, ""
	}
	redirect(w, r, Prefix+"enrol")
}

// confirmTOTP is "test token and activate": the first code switches the app
// on and the API answers the backup codes, once.
func (u *UI) confirmTOTP(w http.ResponseWriter, r *http.Request, se *session) {
	u.confirm(w, r, se, "totp")
}

func (u *UI) confirm(w http.ResponseWriter, r *http.Request, se *session, method string) {
	code := strings.ReplaceAll(strings.TrimSpace(r.PostForm.Get("code")), " ", "")
	var a activation
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/enrollments/", method, "/confirmation"), nil,
		map[string]any{"code": code}, r.PostForm.Get("idem"), &a)
	if err != nil {
		se.flashErr = explain(err)
		redirect(w, r, Prefix+"enrol")
		return
	}
	se.enrol, se.otpEnrol, se.otpDest, se.ch = nil, "", "", nil
	se.stage = stageSignedIn
	se.flash = methodName(method) + " is on: two-factor authentication protects your account."
	if len(a.BackupCodes) > 0 {
		se.codes = a.BackupCodes
		redirect(w, r, Prefix+"codes")
		return
	}
	redirect(w, r, Prefix+"account")
}

// startOTP sets up email or SMS codes: a first code goes to the address.
func (u *UI) startOTP(w http.ResponseWriter, r *http.Request, se *session) {
	m, dest := r.PostForm.Get("method"), strings.TrimSpace(r.PostForm.Get("destination"))
	if m != "email" && m != "sms" {
		redirect(w, r, Prefix+"enrol")
		return
	}
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/enrollments/", m), nil,
		map[string]any{"destination": dest}, r.PostForm.Get("idem"), nil)
	if err != nil {
		se.flashErr = explain(err)
		if se.stage == stageSignedIn && se.enrol == nil && se.otpEnrol == "" && r.PostForm.Get("from") == "account" {
			redirect(w, r, Prefix+"account")
			return
		}
	} else {
		se.otpEnrol, se.otpDest, se.enrol = m, dest, nil
	}
	redirect(w, r, Prefix+"enrol")
}

func (u *UI) confirmOTP(w http.ResponseWriter, r *http.Request, se *session) {
	m := se.otpEnrol
	if m == "" {
		redirect(w, r, Prefix+"enrol")
		return
	}
	u.confirm(w, r, se, m)
}

func (u *UI) cancelEnrol(w http.ResponseWriter, r *http.Request, se *session) {
	se.enrol, se.otpEnrol, se.otpDest = nil, "", ""
	if se.stage == stageSignedIn {
		redirect(w, r, Prefix+"account")
		return
	}
	redirect(w, r, Prefix+"enrol")
}

// skipEnrol is "Disable 2FA" at the enrolment prompt, offered when the
// challenge said can_disable: the API records the user's waiver and the host
// lets them in.
func (u *UI) skipEnrol(w http.ResponseWriter, r *http.Request, se *session) {
	err := u.api.do(r.Context(), u.as(se), http.MethodDelete, userPath(se.user, "/two-factor"), nil, map[string]any{}, r.PostForm.Get("idem"), nil)
	if err != nil {
		se.flashErr = explain(err)
		redirect(w, r, Prefix+"enrol")
		return
	}
	se.stage, se.ch, se.enrol, se.otpEnrol = stageSignedIn, nil, nil, ""
	se.flash = "You signed in without two-factor authentication. You can turn it on here at any time."
	redirect(w, r, Prefix+"account")
}

// Backup codes stay in the session until the person says they saved them, so
// the page can be reloaded and downloaded without JavaScript; they are never
// fetched from the API again (it cannot: it keeps only their hashes).

func (u *UI) codesPage(w http.ResponseWriter, r *http.Request, se *session) {
	if len(se.codes) == 0 {
		redirect(w, r, Prefix+"account")
		return
	}
	u.render(w, r, se, http.StatusOK, "codes", "Your backup codes", se.codes)
}

func (u *UI) codesFile(w http.ResponseWriter, r *http.Request, se *session) {
	if len(se.codes) == 0 {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="backup-codes.txt"`)
	fmt.Fprintf(w, "Backup codes for %s. Each works once.\n\n%s\n", se.user, strings.Join(se.codes, "\n"))
}

func (u *UI) codesDone(w http.ResponseWriter, r *http.Request, se *session) {
	se.codes = nil
	redirect(w, r, Prefix+"account")
}

type accountView struct {
	S         userStatus
	Others    []string // methods the user can add
	Removable []string // methods removed as a whole (security keys go one by one, on their page)
	LowCodes  bool
}

func (u *UI) accountPage(w http.ResponseWriter, r *http.Request, se *session) {
	var s userStatus
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, userPath(se.user), nil, nil, "", &s); err != nil {
		if p := asProblem(err); p == nil || p.Status != http.StatusNotFound {
			u.render(w, r, se, http.StatusBadGateway, "error", "Account", errorPage{Message: explain(err)})
			return
		}
		s = userStatus{UserID: se.user, Status: "not_activated"}
	}
	// The tenant's threshold of the low-codes warning (the email says the same).
	threshold := 2
	var pol struct {
		Low *int `json:"low_backup_codes_warning"`
	}
	if err := u.api.do(r.Context(), u.as(se), http.MethodGet, "/v1/policy", nil, nil, "", &pol); err == nil && pol.Low != nil {
		threshold = *pol.Low
	}
	v := accountView{S: s, LowCodes: s.Enabled && s.BackupCodesRemaining <= threshold}
	for _, m := range []string{"email", "sms"} {
		if !has(s.Methods, m) {
			v.Others = append(v.Others, m)
		}
	}
	for _, m := range s.Methods {
		if m != "webauthn" {
			v.Removable = append(v.Removable, m)
		}
	}
	u.render(w, r, se, http.StatusOK, "account", "Your account security", v)
}

func (u *UI) setDefault(w http.ResponseWriter, r *http.Request, se *session) {
	m := r.PostForm.Get("method")
	err := u.api.do(r.Context(), u.as(se), http.MethodPut, userPath(se.user, "/default-method"), nil, map[string]any{"method": m}, r.PostForm.Get("idem"), nil)
	u.done(se, err, methodName(m)+" is now your default method.")
	redirect(w, r, Prefix+"account")
}

func (u *UI) regenerate(w http.ResponseWriter, r *http.Request, se *session) {
	var b backupCodes
	err := u.api.do(r.Context(), u.as(se), http.MethodPost, userPath(se.user, "/backup-codes"), nil, map[string]any{}, r.PostForm.Get("idem"), &b)
	if err != nil {
		u.done(se, err, "")
		redirect(w, r, Prefix+"account")
		return
	}
	se.codes = b.BackupCodes
	se.flash = "A new set of backup codes replaced the old one; the old codes no longer work."
	redirect(w, r, Prefix+"codes")
}

func (u *UI) removeMethod(w http.ResponseWriter, r *http.Request, se *session) {
	m := r.PostForm.Get("method")
	err := u.api.do(r.Context(), u.as(se), http.MethodDelete, userPath(se.user, "/methods/", pathEscape(m)), nil, map[string]any{}, r.PostForm.Get("idem"), nil)
	u.done(se, err, methodName(m)+" was removed.")
	redirect(w, r, Prefix+"account")
}

func (u *UI) disable(w http.ResponseWriter, r *http.Request, se *session) {
	err := u.api.do(r.Context(), u.as(se), http.MethodDelete, userPath(se.user, "/two-factor"), nil, map[string]any{}, r.PostForm.Get("idem"), nil)
	u.done(se, err, "Two-factor authentication is off, and your backup codes no longer work.")
	redirect(w, r, Prefix+"account")
}

// done puts the outcome of an action on the next page.
func (u *UI) done(se *session, err error, ok string) {
	if err != nil {
		se.flashErr = explain(err)
		return
	}
	se.flash = ok
}

func fsSub(f fs.FS, dir string) (fs.FS, error) { return fs.Sub(f, dir) }
