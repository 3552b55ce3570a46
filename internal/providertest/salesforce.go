package providertest

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// SalesforceOrg is an org the Salesforce server holds.
type SalesforceOrg struct {
	ID      string // 18-character org ID (00D…); generated when empty
	Name    string
	Sandbox bool
	// MyDomain is the org's My Domain host, also its instance_url host:
	// acme.my.salesforce.com, acme--uat.sandbox.my.salesforce.com.
	MyDomain string
	// PreventDefaultLogin refuses logins at login.salesforce.com and
	// test.salesforce.com ("Prevent login from https://login.salesforce.com"):
	// only the My Domain works.
	PreventDefaultLogin bool
	Users               []string // user names that may log in (login_hint)
}

// SalesforceOptions configures the Salesforce server: the External Client
// App it knows.
type SalesforceOptions struct {
	ClientID, ClientSecret, RedirectURI string
	// Rotate turns on Refresh Token Rotation: every refresh answers a new
	// refresh token, and presenting a used one revokes the grant.
	Rotate bool
}

// Salesforce is a server shaped like Salesforce's OAuth endpoints and a
// little of its REST API.
type Salesforce struct {
	*server
	opts SalesforceOptions

	mu      sync.Mutex
	orgs    map[string]*SalesforceOrg // by ID
	users   map[string]sfUser         // by user name
	codes   map[string]code
	grants  map[string]*sfGrant // by refresh token, current or used
	access  map[string]*sfGrant // by access token
	tokens  int                 // token endpoint calls
	tamper  func(answer map[string]any)
	nextSeq int
}

type sfUser struct {
	id, org string
}

// sfGrant is one authorization: its current tokens.
type sfGrant struct {
	user    string
	refresh string
	access  string
	revoked bool
}

// StartSalesforce starts a Salesforce-shaped server holding orgs; it stops
// when t ends.
func StartSalesforce(t testing.TB, opts SalesforceOptions, orgs ...SalesforceOrg) *Salesforce {
	s := &Salesforce{
		opts: opts, orgs: map[string]*SalesforceOrg{}, users: map[string]sfUser{},
		codes: map[string]code{}, grants: map[string]*sfGrant{}, access: map[string]*sfGrant{},
	}
	hosts := []string{"login.salesforce.com", "test.salesforce.com", "*.my.salesforce.com", "*.sandbox.my.salesforce.com", "*.lightning.force.com"}
	for _, o := range orgs {
		s.add(o)
		hosts = append(hosts, o.MyDomain)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /services/oauth2/authorize", s.authorize)
	mux.HandleFunc("POST /services/oauth2/token", s.token)
	mux.HandleFunc("POST /services/oauth2/revoke", s.revoke)
	mux.HandleFunc("GET /services/oauth2/userinfo", s.userinfo)
	mux.HandleFunc("GET /services/data/v62.0/query", s.query)
	mux.HandleFunc("GET /services/data/v62.0/limits", s.limits)
	s.server = start(t, hosts, mux)
	return s
}

func (s *Salesforce) add(o SalesforceOrg) *SalesforceOrg {
	if o.ID == "" {
		o.ID = s.newID("00D")
	}
	org := &o
	s.orgs[o.ID] = org
	for _, u := range o.Users {
		s.users[u] = sfUser{id: s.newID("005"), org: o.ID}
	}
	return org
}

// newID returns a fresh 18-character Salesforce ID with prefix.
func (s *Salesforce) newID(prefix string) string {
	s.nextSeq++
	return SalesforceID(fmt.Sprintf("%s%s%06dAb", prefix, "Zx00", s.nextSeq))
}

// SalesforceID returns the 18-character form of a 15-character ID.
func SalesforceID(id15 string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
	out := []byte(id15[:15])
	for chunk := range 3 {
		bits := 0
		for i := range 5 {
			if c := id15[chunk*5+i]; 'A' <= c && c <= 'Z' {
				bits |= 1 << i
			}
		}
		out = append(out, alphabet[bits])
	}
	return string(out)
}

// Authorize logs user in at authURL, as the user's browser would, and
// returns the redirect back to the app.
func (s *Salesforce) Authorize(ctx context.Context, authURL string) (*url.URL, error) {
	return follow(ctx, s.Client(), authURL)
}

// OrgID returns the ID of the org user belongs to.
func (s *Salesforce) OrgID(user string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.users[user].org
}

// RefreshSandbox replaces sandbox org id by a copy with a new org ID, as a
// sandbox refresh does: same My Domain, same users, every grant gone. It
// returns the new org ID.
func (s *Salesforce) RefreshSandbox(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.orgs[id]
	delete(s.orgs, id)
	n := *old
	n.ID = s.newID("00D")
	s.orgs[n.ID] = &n
	for name, u := range s.users {
		if u.org == id {
			s.users[name] = sfUser{id: u.id, org: n.ID}
		}
	}
	for _, g := range s.grants {
		if s.users[g.user].org == n.ID {
			g.revoked = true
		}
	}
	return n.ID
}

// ExpireSessions ends every access token (a session timeout): API calls
// answer 401 until the app refreshes.
func (s *Salesforce) ExpireSessions() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.access)
}

// Tamper changes every token answer from now on (before it is sent).
func (s *Salesforce) Tamper(f func(answer map[string]any)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tamper = f
}

// TokenCalls counts calls to the token endpoint.
func (s *Salesforce) TokenCalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens
}

// Revoked reports whether refresh token rt no longer works.
func (s *Salesforce) Revoked(rt string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.grants[rt]
	return !ok || g.revoked || g.refresh != rt
}

func oauthError(w http.ResponseWriter, status int, code, description string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": description})
}

func (s *Salesforce) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != s.opts.ClientID || q.Get("redirect_uri") != s.opts.RedirectURI || q.Get("response_type") != "code" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "client, redirect or response type")
		return
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "PKCE S256 is required")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[q.Get("login_hint")]
	if !ok {
		oauthError(w, http.StatusBadRequest, "access_denied", "unknown user")
		return
	}
	org := s.orgs[u.org]
	host := r.Host
	switch {
	case host == "login.salesforce.com" && !org.Sandbox && !org.PreventDefaultLogin:
	case host == "test.salesforce.com" && org.Sandbox && !org.PreventDefaultLogin:
	case host == org.MyDomain:
	default:
		oauthError(w, http.StatusBadRequest, "access_denied", "the user cannot log in at this host")
		return
	}
	c := random(24)
	s.codes[c] = code{user: q.Get("login_hint"), redirect: q.Get("redirect_uri"), challenge: q.Get("code_challenge"), scope: q.Get("scope")}
	redirectBack(w, r, c)
}

func (s *Salesforce) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "form")
		return
	}
	f := r.PostForm
	s.mu.Lock()
	defer s.mu.Unlock()
	s.tokens++
	if f.Get("client_id") != s.opts.ClientID || f.Get("client_secret") != s.opts.ClientSecret {
		oauthError(w, http.StatusBadRequest, "invalid_client", "invalid client credentials")
		return
	}
	var g *sfGrant
	switch f.Get("grant_type") {
	case "authorization_code":
		c, ok := s.codes[f.Get("code")]
		delete(s.codes, f.Get("code"))
		switch {
		case !ok || c.redirect != f.Get("redirect_uri"):
			oauthError(w, http.StatusBadRequest, "invalid_grant", "invalid authorization code")
			return
		case f.Get("code_verifier") == "":
			oauthError(w, http.StatusBadRequest, "invalid_grant", "invalid code verifier")
			return
		case s256(f.Get("code_verifier")) != c.challenge:
			oauthError(w, http.StatusBadRequest, "invalid_request", "invalid code verifier")
			return
		}
		g = &sfGrant{user: c.user}
		if strings.Contains(" "+c.scope+" ", " refresh_token ") || strings.Contains(" "+c.scope+" ", " offline_access ") {
			g.refresh = random(32)
			s.grants[g.refresh] = g
		}
	case "refresh_token":
		old, ok := s.grants[f.Get("refresh_token")]
		switch {
		case !ok || old.revoked:
			oauthError(w, http.StatusBadRequest, "invalid_grant", "expired access/refresh token")
			return
		case old.refresh != f.Get("refresh_token"):
			old.revoked = true // a used token under rotation: the grant is revoked
			delete(s.access, old.access)
			oauthError(w, http.StatusBadRequest, "invalid_grant", "expired access/refresh token")
			return
		}
		g = old
		if s.opts.Rotate {
			g.refresh = random(32)
			s.grants[g.refresh] = g
		}
	default:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "grant type not supported")
		return
	}
	u := s.users[g.user]
	org := s.orgs[u.org]
	delete(s.access, g.access)
	g.access = org.ID[:15] + "!" + random(32)
	s.access[g.access] = g
	loginHost := "login.salesforce.com"
	if org.Sandbox {
		loginHost = "test.salesforce.com"
	}
	id := "https://" + loginHost + "/id/" + org.ID + "/" + u.id
	issued := strconv.FormatInt(time.Now().UnixMilli(), 10)
	answer := map[string]any{
		"access_token": g.access, "instance_url": "https://" + org.MyDomain, "id": id,
		"issued_at": issued, "signature": Sign(s.opts.ClientSecret, id+issued),
		"token_type": "Bearer", "scope": "api refresh_token",
	}
	if g.refresh != "" {
		answer["refresh_token"] = g.refresh
	}
	if s.tamper != nil {
		s.tamper(answer)
	}
	writeJSON(w, http.StatusOK, answer)
}

func (s *Salesforce) revoke(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "form")
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tok := r.PostForm.Get("token")
	g, ok := s.grants[tok]
	if !ok {
		g, ok = s.access[tok]
	}
	if !ok || g.revoked {
		oauthError(w, http.StatusBadRequest, "invalid_token", "invalid token")
		return
	}
	g.revoked = true
	delete(s.access, g.access)
	w.WriteHeader(http.StatusOK)
}

// session returns the grant of the request's access token, valid at the
// org's own host, answering 401 INVALID_SESSION_ID otherwise.
func (s *Salesforce) session(w http.ResponseWriter, r *http.Request) (*sfGrant, *SalesforceOrg) {
	g, ok := s.access[bearerToken(r)]
	if ok && !g.revoked {
		if org := s.orgs[s.users[g.user].org]; org != nil && r.Host == org.MyDomain {
			return g, org
		}
	}
	writeJSON(w, http.StatusUnauthorized, []map[string]string{{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}})
	return nil, nil
}

func (s *Salesforce) userinfo(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, org := s.session(w, r)
	if g == nil {
		return
	}
	u := s.users[g.user]
	writeJSON(w, http.StatusOK, map[string]any{
		"sub": "https://login.salesforce.com/id/" + org.ID + "/" + u.id, "user_id": u.id, "organization_id": org.ID,
		"preferred_username": g.user, "name": g.user,
		"urls": map[string]string{"rest": "https://" + org.MyDomain + "/services/data/v{version}/"},
	})
}

func (s *Salesforce) query(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, org := s.session(w, r)
	if g == nil {
		return
	}
	if !strings.Contains(r.URL.Query().Get("q"), "FROM Organization") {
		writeJSON(w, http.StatusBadRequest, []map[string]string{{"message": "unsupported query", "errorCode": "MALFORMED_QUERY"}})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"totalSize": 1, "done": true,
		"records": []map[string]any{{
			"attributes": map[string]string{"type": "Organization", "url": "/services/data/v62.0/sobjects/Organization/" + org.ID},
			"Name":       org.Name, "IsSandbox": org.Sandbox,
		}},
	})
}

func (s *Salesforce) limits(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if g, _ := s.session(w, r); g == nil {
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"DailyApiRequests": map[string]int{"Max": 15000, "Remaining": 14999}})
}

// Sign is Salesforce's token answer signature of s (the identity URL and
// issued_at, concatenated): base64 of HMAC-SHA256 keyed with the consumer
// secret.
func Sign(secret, s string) string {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(s))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}
