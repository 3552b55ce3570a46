package main

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"
)

// tenant is one customer of the help desk. Each sees only its own
// connections: every library call is scoped to its ID (the connections'
// Owner).
type tenant struct {
	ID   string
	Name string
	User string // the one user of the demo tenant, recorded as the actor of its changes
}

// tenants are the help desk's customers.
func tenants() []tenant {
	return []tenant{
		{ID: "acme", Name: "Acme Support", User: "ada@acme.example"},
		{ID: "globex", Name: "Globex Help Desk", User: "hank@globex.example"},
	}
}

func tenantByID(id string) (tenant, bool) {
	for _, t := range tenants() {
		if t.ID == id {
			return t, true
		}
	}
	return tenant{}, false
}

const (
	sessionCookie = "helpdesk_session"
	sessionTTL    = 12 * time.Hour
)

// session is a signed-in browser. Its ID is the cookie's value; its CSRF
// token goes in every form it is shown.
type session struct {
	ID      string
	Tenant  tenant
	CSRF    string
	expires time.Time

	mu    sync.Mutex
	codes map[string]string // invitation codes initiated in this session, by connection ID
	flash *flash
}

// flash is a one-time message shown on the next page.
type flash struct {
	Error bool
	Text  string
}

func (s *session) setFlash(isError bool, text string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.flash = &flash{Error: isError, Text: text}
}

func (s *session) takeFlash() *flash {
	s.mu.Lock()
	defer s.mu.Unlock()
	f := s.flash
	s.flash = nil
	return f
}

// keepCode remembers an invitation code so that its page can show it
// again (a reload) while the invitation is pending.
func (s *session) keepCode(id, code string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.codes[id] = code
}

func (s *session) code(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.codes[id]
}

func (s *session) forgetCode(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.codes, id)
}

// validCSRF reports whether token is the session's CSRF token, in
// constant time.
func (s *session) validCSRF(token string) bool {
	return token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(s.CSRF)) == 1
}

// sessions keeps the signed-in browsers in memory: a restart signs
// everyone out. A host with replicas keeps them in its database.
type sessions struct {
	secure bool // cookies only over https
	mu     sync.Mutex
	m      map[string]*session
}

func newSessions(secure bool) *sessions {
	return &sessions{secure: secure, m: map[string]*session{}}
}

// random returns n random bytes, base64url-encoded.
func random(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// start signs t in: a new session, its cookie set on w.
func (ss *sessions) start(w http.ResponseWriter, t tenant) *session {
	s := &session{ID: random(32), Tenant: t, CSRF: random(32), expires: time.Now().Add(sessionTTL), codes: map[string]string{}}
	ss.mu.Lock()
	now := time.Now()
	for id, old := range ss.m {
		if now.After(old.expires) {
			delete(ss.m, id)
		}
	}
	ss.m[s.ID] = s
	ss.mu.Unlock()
	http.SetCookie(w, &http.Cookie{
		Name: sessionCookie, Value: s.ID, Path: "/", MaxAge: int(sessionTTL / time.Second),
		HttpOnly: true, Secure: ss.secure,
		// Lax: the provider's redirect back to the org callback is a
		// cross-site navigation the cookie must accompany; cross-site
		// form posts get no cookie.
		SameSite: http.SameSiteLaxMode,
	})
	return s
}

// get returns r's session, nil when it has none or it expired.
func (ss *sessions) get(r *http.Request) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s := ss.m[c.Value]
	if s == nil || time.Now().After(s.expires) {
		delete(ss.m, c.Value)
		return nil
	}
	return s
}

// end signs s out and clears its cookie.
func (ss *sessions) end(w http.ResponseWriter, s *session) {
	ss.mu.Lock()
	delete(ss.m, s.ID)
	ss.mu.Unlock()
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, Secure: ss.secure, SameSite: http.SameSiteLaxMode})
}
