package webui

import (
	"crypto/subtle"
	"net/http"
	"sync"
	"time"
)

// Sessions live in this process's memory: enough for a reference UI, and what
// keeps the API keys off the browser (the cookie is a random id and nothing
// else). A restart signs everyone out; behind several instances a load
// balancer must keep each browser on one instance (sticky sessions). A host
// product keeps these in its own session store.

const (
	cookieName = "tf_ui_session"
	sessionTTL = 30 * time.Minute
	// maxSessions bounds the memory a flood of sign-ins can take; the oldest
	// sessions go first.
	maxSessions = 10000
)

// stage is how far a person got through the host product's sign-in.
type stage int

const (
	// stagePassword: the (demo) password step passed; the second factor is due.
	stagePassword stage = iota
	// stageSignedIn: fully signed in.
	stageSignedIn
)

// session is one browser's sign-in. Everything sensitive stays here, on the
// server: the role's API key is looked up by tenant at each request.
type session struct {
	// mu serialises one browser's requests, which read and change the session.
	mu      sync.Mutex
	id      string
	csrf    string
	tenant  string
	user    string // the user id (role user) or the person's name (admin, auditor)
	role    string // user, admin, superadmin, auditor
	stage   stage
	expires time.Time

	// enrolment in progress (TOTP): what the page shows until it is confirmed.
	enrol *enrollment
	// otpEnrol is the email/SMS method being set up and where its code went.
	otpEnrol, otpDest string
	// codes are backup codes to show once; the page that shows them clears them.
	codes []string
	// flash is a message for the next page (after a redirect).
	flash, flashErr string
	// challenge is the last login challenge's answer.
	ch *challenge
	// minPos is the log position of this person's last write, so that the
	// read models they look at next include it (read your writes).
	minPos int64
}

type sessions struct {
	mu   sync.Mutex
	byID map[string]*session
	now  func() time.Time
}

func newSessions() *sessions {
	return &sessions{byID: map[string]*session{}, now: time.Now}
}

// start makes a new session (a new id at every sign-in: no fixation) and sets
// its cookie.
func (s *sessions) start(w http.ResponseWriter, r *http.Request, tenant, user, role string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	// Sessions nobody comes back to are dropped here, at the next sign-in.
	for id, x := range s.byID {
		if now.After(x.expires) {
			delete(s.byID, id)
		}
	}
	if len(s.byID) >= maxSessions {
		var oldest *session
		for _, x := range s.byID {
			if oldest == nil || x.expires.Before(oldest.expires) {
				oldest = x
			}
		}
		delete(s.byID, oldest.id)
	}
	se := &session{id: newToken() + newToken(), csrf: newToken(), tenant: tenant, user: user, role: role, expires: now.Add(sessionTTL)}
	s.byID[se.id] = se
	http.SetCookie(w, cookie(r, se.id, sessionTTL))
	return se
}

// cookie is the session cookie: HttpOnly (no script reads it), SameSite=Lax
// (not sent with cross-site form posts), Secure whenever the browser reached
// the UI over TLS, directly or through a proxy that says so.
func cookie(r *http.Request, value string, ttl time.Duration) *http.Cookie {
	secure := r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
	return &http.Cookie{Name: cookieName, Value: value, Path: Prefix, MaxAge: int(ttl / time.Second),
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteLaxMode}
}

// get finds the request's live session and extends it (nil: none).
func (s *sessions) get(r *http.Request) *session {
	c, err := r.Cookie(cookieName)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	se := s.byID[c.Value]
	if se == nil {
		return nil
	}
	now := s.now()
	if now.After(se.expires) {
		delete(s.byID, se.id)
		return nil
	}
	se.expires = now.Add(sessionTTL)
	return se
}

func (s *sessions) end(w http.ResponseWriter, r *http.Request, se *session) {
	s.mu.Lock()
	delete(s.byID, se.id)
	s.mu.Unlock()
	http.SetCookie(w, cookie(r, "", -time.Second))
}

// validCSRF compares the form's token with the session's in constant time.
func validCSRF(se *session, token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(se.csrf), []byte(token)) == 1
}
