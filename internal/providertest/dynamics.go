package providertest

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// DynamicsEnvironment is a Dataverse environment the Dynamics server
// holds.
type DynamicsEnvironment struct {
	ID       string // OrganizationId, a GUID; generated when empty
	Name     string // FriendlyName
	Host     string // the app host: contoso.crm4.dynamics.com
	APIHost  string // the Web API host: contoso.api.crm4.dynamics.com
	Tenant   string // TenantId, a GUID
	Disabled bool   // State 1
	Type     int    // OrganizationType: 0 production, 5 sandbox, …
	Users    []string
	// WhoAmIOrg, when set, is the OrganizationId WhoAmI answers instead
	// of ID.
	WhoAmIOrg string
}

// DynamicsOptions configures the Dynamics server: the app registration
// it knows and the cloud it plays.
type DynamicsOptions struct {
	ClientID, ClientSecret, RedirectURI string
	Authority                           string // login.microsoftonline.com, login.microsoftonline.us, …
	Discovery                           string // globaldisco.crm.dynamics.com, …
}

// Dynamics is a server shaped like a Microsoft cloud: its identity
// platform (v2.0 endpoints), Global Discovery Service and Dataverse Web
// API WhoAmI.
type Dynamics struct {
	*server
	opts DynamicsOptions

	mu        sync.Mutex
	envs      []*DynamicsEnvironment
	codes     map[string]code
	refresh   map[string]string // refresh token -> user
	access    map[string]msAccess
	withdrawn map[string]bool // refresh tokens revoked
	tokens    []string        // the scope of every token request
	nextGUID  int
}

type msAccess struct {
	user, audience string
}

// StartDynamics starts a Dynamics-shaped server holding envs; it stops
// when t ends.
func StartDynamics(t testing.TB, opts DynamicsOptions, envs ...DynamicsEnvironment) *Dynamics {
	d := &Dynamics{
		opts: opts, codes: map[string]code{}, refresh: map[string]string{}, access: map[string]msAccess{}, withdrawn: map[string]bool{},
	}
	hosts := []string{opts.Authority, opts.Discovery}
	for _, e := range envs {
		if e.ID == "" {
			e.ID = d.guid()
		}
		d.envs = append(d.envs, &e)
		hosts = append(hosts, e.Host, e.APIHost)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+opts.Authority+"/{tenant}/oauth2/v2.0/authorize", d.authorize)
	mux.HandleFunc("POST "+opts.Authority+"/{tenant}/oauth2/v2.0/token", d.token)
	mux.HandleFunc("GET "+opts.Discovery+"/api/discovery/v2.0/Instances", d.instances)
	mux.HandleFunc("GET /api/data/v9.2/WhoAmI", d.whoAmI)
	d.server = start(t, hosts, mux)
	return d
}

func (d *Dynamics) guid() string {
	d.nextGUID++
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", d.nextGUID)
}

// Authorize logs the user named by the URL's login_hint in, as the
// browser would, and returns the redirect back to the app.
func (d *Dynamics) Authorize(ctx context.Context, authURL string) (*url.URL, error) {
	return follow(ctx, d.Client(), authURL)
}

// Environment returns the environment named name.
func (d *Dynamics) Environment(name string) DynamicsEnvironment {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.envs {
		if e.Name == name {
			return *e
		}
	}
	return DynamicsEnvironment{}
}

// Withdraw revokes every grant of user (a password reset, an
// administrator revoking the sessions): refreshes answer invalid_grant.
func (d *Dynamics) Withdraw(user string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for rt, u := range d.refresh {
		if u == user {
			d.withdrawn[rt] = true
		}
	}
}

// TokenScopes returns the scope of every token request so far.
func (d *Dynamics) TokenScopes() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.tokens...)
}

// msError answers a Microsoft identity platform error: the OAuth error,
// an AADSTS description and its code.
func msError(w http.ResponseWriter, status int, code string, aadsts int, description string) {
	writeJSON(w, status, map[string]any{
		"error": code, "error_description": fmt.Sprintf("AADSTS%d: %s", aadsts, description),
		"error_codes": []int{aadsts}, "trace_id": "00000000-0000-0000-0000-000000000000",
	})
}

// resource returns the one resource a scope names, the origin before
// "/user_impersonation" or "/.default", and whether offline_access is in
// it; ok is false when it names none or several (AADSTS700022).
func resource(scope string) (res string, offline, ok bool) {
	for _, s := range strings.Fields(scope) {
		switch {
		case s == "offline_access":
			offline = true
		case s == "openid" || s == "profile" || s == "email":
		case strings.HasPrefix(s, "https://"):
			if res != "" {
				return "", false, false
			}
			i := strings.LastIndex(s, "/")
			res = s[:i]
		}
	}
	return res, offline, res != ""
}

func (d *Dynamics) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("client_id") != d.opts.ClientID || q.Get("redirect_uri") != d.opts.RedirectURI || q.Get("response_type") != "code" {
		msError(w, http.StatusBadRequest, "invalid_request", 50011, "client, redirect or response type")
		return
	}
	if q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		msError(w, http.StatusBadRequest, "invalid_request", 501491, "PKCE S256 is required")
		return
	}
	if _, _, ok := resource(q.Get("scope")); !ok {
		msError(w, http.StatusBadRequest, "invalid_scope", 700022, "one resource per request")
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	user := q.Get("login_hint")
	if len(d.tenants(user)) == 0 {
		msError(w, http.StatusBadRequest, "access_denied", 50034, "the user account does not exist")
		return
	}
	c := random(24)
	d.codes[c] = code{user: user, redirect: q.Get("redirect_uri"), challenge: q.Get("code_challenge"), scope: q.Get("scope"), tenant: r.PathValue("tenant")}
	redirectBack(w, r, c)
}

// tenants returns the tenants of the environments user may use.
func (d *Dynamics) tenants(user string) map[string]bool {
	out := map[string]bool{}
	for _, e := range d.envs {
		for _, u := range e.Users {
			if u == user {
				out[e.Tenant] = true
			}
		}
	}
	return out
}

func (d *Dynamics) token(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		msError(w, http.StatusBadRequest, "invalid_request", 900144, "form")
		return
	}
	f := r.PostForm
	d.mu.Lock()
	defer d.mu.Unlock()
	d.tokens = append(d.tokens, f.Get("scope"))
	if f.Get("client_id") != d.opts.ClientID || f.Get("client_secret") != d.opts.ClientSecret {
		msError(w, http.StatusUnauthorized, "invalid_client", 7000215, "invalid client secret")
		return
	}
	var user, scope string
	switch f.Get("grant_type") {
	case "authorization_code":
		c, ok := d.codes[f.Get("code")]
		delete(d.codes, f.Get("code"))
		switch {
		case !ok || c.redirect != f.Get("redirect_uri"):
			msError(w, http.StatusBadRequest, "invalid_grant", 54005, "the code is invalid or was redeemed")
			return
		case s256(f.Get("code_verifier")) != c.challenge:
			msError(w, http.StatusBadRequest, "invalid_grant", 501481, "the code verifier does not match")
			return
		}
		user, scope = c.user, c.scope
	case "refresh_token":
		u, ok := d.refresh[f.Get("refresh_token")]
		switch {
		case !ok || d.withdrawn[f.Get("refresh_token")]:
			msError(w, http.StatusBadRequest, "invalid_grant", 50173, "the provided grant has expired due to it being revoked")
			return
		case r.PathValue("tenant") != "organizations" && !d.tenants(u)[r.PathValue("tenant")]:
			msError(w, http.StatusBadRequest, "invalid_grant", 50020, "the user is not in the tenant")
			return
		}
		user, scope = u, f.Get("scope")
		// The old refresh token stays valid: Microsoft does not revoke
		// used refresh tokens.
	default:
		msError(w, http.StatusBadRequest, "unsupported_grant_type", 70003, "grant type not supported")
		return
	}
	res, offline, ok := resource(scope)
	if !ok {
		msError(w, http.StatusBadRequest, "invalid_scope", 700022, "one resource per request")
		return
	}
	if res != "https://"+d.opts.Discovery && d.environment(res, user) == nil {
		msError(w, http.StatusBadRequest, "invalid_grant", 65001, "the user has not consented to the resource")
		return
	}
	at := random(32)
	d.access[at] = msAccess{user: user, audience: res}
	answer := map[string]any{"token_type": "Bearer", "scope": scope, "expires_in": 3599, "ext_expires_in": 3599, "access_token": at}
	if offline {
		rt := random(32)
		d.refresh[rt] = user
		answer["refresh_token"] = rt
	}
	writeJSON(w, http.StatusOK, answer)
}

// environment returns the environment whose app host origin is res and
// that user may use.
func (d *Dynamics) environment(res, user string) *DynamicsEnvironment {
	for _, e := range d.envs {
		if "https://"+e.Host == res {
			for _, u := range e.Users {
				if u == user {
					return e
				}
			}
		}
	}
	return nil
}

func (d *Dynamics) instances(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.access[bearerToken(r)]
	if !ok || a.audience != "https://"+d.opts.Discovery {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	value := []map[string]any{}
	for _, e := range d.envs {
		if d.environment("https://"+e.Host, a.user) == nil {
			continue
		}
		state := 0
		if e.Disabled {
			state = 1
		}
		value = append(value, map[string]any{
			"Id": strings.ToUpper(e.ID), "UniqueName": "org" + e.ID[len(e.ID)-6:], "UrlName": strings.SplitN(e.Host, ".", 2)[0],
			"FriendlyName": e.Name, "State": state, "Version": "9.2.26033.00175", "Url": "https://" + e.Host,
			"ApiUrl": "https://" + e.APIHost, "LastUpdated": "2026-11-01T10:00:00Z", "EnvironmentId": "Default-" + e.Tenant,
			"TenantId": e.Tenant, "OrganizationType": e.Type, "Region": "EUR",
		})
	}
	writeJSON(w, http.StatusOK, map[string]any{"@odata.context": "https://" + d.opts.Discovery + "/api/discovery/v2.0/$metadata#Instances", "value": value})
}

func (d *Dynamics) whoAmI(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.access[bearerToken(r)]
	var env *DynamicsEnvironment
	for _, e := range d.envs {
		if e.APIHost == r.Host || e.Host == r.Host {
			env = e
		}
	}
	if !ok || env == nil || a.audience != "https://"+env.Host || d.environment(a.audience, a.user) == nil {
		w.Header().Set("WWW-Authenticate", `Bearer authorization_uri=https://`+d.opts.Authority+`/`+"common"+`/oauth2/authorize`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	org := env.ID
	if env.WhoAmIOrg != "" {
		org = env.WhoAmIOrg
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"@odata.context": "https://" + env.APIHost + "/api/data/v9.2/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
		"BusinessUnitId": "11111111-1111-4111-8111-111111111111", "UserId": "22222222-2222-4222-8222-222222222222", "OrganizationId": org,
	})
}
