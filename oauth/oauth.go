package oauth

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/tetherkit/tether"
)

// Provider is an authorization server an org connection is made with, and
// the host's app registered there. Nothing is built in but the public
// endpoints of the constructors; credentials always come from the host.
type Provider struct {
	// Name identifies the provider and org type in Begin and on the
	// connection (Connection.Provider), for example "salesforce-sandbox".
	Name string
	// Issuer is the authorization server's issuer identifier: a callback
	// carrying another iss (RFC 9207) is refused.
	Issuer    string
	AuthURL   string
	TokenURL  string
	RevokeURL string // RFC 7009; empty when the provider has none
	// Scopes requested at authorization.
	Scopes       []string
	ClientID     string
	ClientSecret string
	// Identify reads the org the tokens reach: its stable ID (one org per
	// team) and display name. client sends the access token.
	Identify func(ctx context.Context, client *http.Client, tok *oauth2.Token) (Org, error)
}

// Org is what Identify learns of the org a login reached.
type Org struct {
	ID   string // stable: the connection's ExternalID
	Name string // display name
}

// OIDC returns a generic OpenID Connect provider with explicit endpoints:
// the org is the user the login reached, identified by the issuer and the
// userinfo "sub" claim.
func OIDC(name, issuer, authURL, tokenURL, userinfoURL, clientID, clientSecret string, scopes ...string) Provider {
	return Provider{
		Name: name, Issuer: issuer, AuthURL: authURL, TokenURL: tokenURL,
		ClientID: clientID, ClientSecret: clientSecret, Scopes: scopes,
		Identify: func(ctx context.Context, client *http.Client, _ *oauth2.Token) (Org, error) {
			body, err := get(ctx, client, userinfoURL)
			if err != nil {
				return Org{}, err
			}
			info, err := parseUserinfo(body)
			if err != nil {
				return Org{}, err
			}
			return Org{ID: issuer + "|" + info.Sub, Name: cmp.Or(info.Name, info.Sub)}, nil
		},
	}
}

// userinfo is the part of an OpenID Connect userinfo answer tether reads.
type userinfo struct {
	Sub  string `json:"sub"`
	Name string `json:"name"`
}

// maxResponse bounds what is read of a provider's answer.
const maxResponse = 1 << 20

// parseUserinfo decodes a userinfo answer: a JSON object with a
// non-empty sub of at most 255 bytes.
func parseUserinfo(body []byte) (userinfo, error) {
	const op = "oauth: userinfo"
	var u userinfo
	if len(body) > maxResponse || json.Unmarshal(body, &u) != nil {
		return userinfo{}, &tether.Error{Code: tether.CodeProtocol, Op: op, Message: "the provider's userinfo is not a JSON object"}
	}
	if u.Sub == "" || len(u.Sub) > 255 || strings.ContainsAny(u.Sub, "\x00\r\n") {
		return userinfo{}, &tether.Error{Code: tether.CodeProtocol, Op: op, Message: "the provider's userinfo has no valid sub"}
	}
	if len(u.Name) > 255 {
		u.Name = ""
	}
	return u, nil
}

// get reads url with client, at most maxResponse bytes, and fails on a
// status other than 200.
func get(ctx context.Context, client *http.Client, u string) ([]byte, error) {
	const op = "oauth: read"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, tether.Wrap(tether.CodeInvalid, op, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "the provider could not be reached", Err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return nil, &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "the provider's answer was cut", Err: err}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "the provider answered " + resp.Status}
	}
	return body, nil
}

// Config configures a Manager.
type Config struct {
	// Node owns the org connections; Store is its Store, which must
	// implement tether.OAuthStore (memstore and sqlstore do).
	Node  *tether.Node
	Store tether.Store
	// RedirectURL is where the provider sends the user back: the URL at
	// which the host mounts Callback.
	RedirectURL string
	Providers   []Provider
	// StateTTL bounds how long a login may take (10 minutes when zero).
	StateTTL time.Duration
	// HTTPClient calls the providers (http.DefaultClient when nil).
	HTTPClient *http.Client
	// Clock is the time source (tether.SystemClock() when nil).
	Clock tether.Clock
}

// Manager connects teams to orgs with OAuth and keeps their tokens.
type Manager struct {
	node       *tether.Node
	store      tether.OAuthStore
	leases     tether.Store // the same Store: its leases
	redirect   string
	providers  map[string]Provider
	stateTTL   time.Duration
	client     *http.Client
	clock      tether.Clock
	holder     string   // this process's name in refresh leases
	refreshing sync.Map // connection ID -> *sync.Mutex: one refresh at a time here
}

// New returns a Manager.
func New(cfg Config) (*Manager, error) {
	const op = "oauth: new"
	bad := func(msg string) (*Manager, error) {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: msg}
	}
	st, ok := cfg.Store.(tether.OAuthStore)
	switch {
	case cfg.Node == nil:
		return bad("Config.Node is required")
	case !ok:
		return bad("Config.Store must implement tether.OAuthStore (memstore and sqlstore do)")
	case cfg.RedirectURL == "":
		return bad("Config.RedirectURL is required")
	}
	m := &Manager{
		node: cfg.Node, store: st, leases: cfg.Store, redirect: cfg.RedirectURL, providers: map[string]Provider{},
		stateTTL: cfg.StateTTL, client: cfg.HTTPClient, clock: cfg.Clock,
	}
	for _, p := range cfg.Providers {
		if p.Name == "" || p.AuthURL == "" || p.TokenURL == "" || p.ClientID == "" || p.Identify == nil {
			return bad("provider " + p.Name + ": Name, AuthURL, TokenURL, ClientID and Identify are required")
		}
		if _, dup := m.providers[p.Name]; dup {
			return bad("provider " + p.Name + " is registered twice")
		}
		m.providers[p.Name] = p
	}
	if m.stateTTL <= 0 {
		m.stateTTL = 10 * time.Minute
	}
	if m.client == nil {
		m.client = http.DefaultClient
	}
	if m.clock == nil {
		m.clock = tether.SystemClock()
	}
	m.holder = oauth2.GenerateVerifier()
	return m, nil
}

func (m *Manager) config(p Provider) *oauth2.Config {
	return &oauth2.Config{
		ClientID: p.ClientID, ClientSecret: p.ClientSecret, RedirectURL: m.redirect, Scopes: p.Scopes,
		Endpoint: oauth2.Endpoint{AuthURL: p.AuthURL, TokenURL: p.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
	}
}

// BeginRequest starts connecting an org.
type BeginRequest struct {
	Provider string // a registered Provider's Name
	Owner    string // the team the connection will belong to
	Name     string // the connection's name
	// LoginHint, when set, is passed to the provider as login_hint (the
	// user name to log in with).
	LoginHint string
	// Reauthorize, when set, is the ID of an org connection to
	// re-authorize instead of creating one: the login must reach the same
	// org, and the connection keeps its ID, settings and history.
	Reauthorize string
}

// attempt is what a state value stands for, kept by the Store until the
// callback: the PKCE verifier is a secret.
type attempt struct {
	Provider string `json:"provider"`
	Owner    string `json:"owner"`
	Name     string `json:"name"`
	Verifier string `json:"verifier"`
	Redirect string `json:"redirect"`
	Actor    string `json:"actor,omitempty"`
	// Connection is the connection being re-authorized, if any.
	Connection string `json:"connection,omitempty"`
}

// Begin returns the URL to send the user to, to log in at the provider. It
// binds a fresh, single-use state to the provider, owner, PKCE verifier,
// redirect URI and acting user (tether.WithActor), kept by the Store until
// the callback, on any replica, or until it expires.
func (m *Manager) Begin(ctx context.Context, req BeginRequest) (string, error) {
	const op = "oauth: begin"
	p, ok := m.providers[req.Provider]
	if !ok {
		return "", &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "no provider is registered as " + req.Provider}
	}
	state := oauth2.GenerateVerifier() // 32 random bytes, base64url
	a := attempt{Provider: p.Name, Owner: req.Owner, Name: req.Name, Verifier: oauth2.GenerateVerifier(), Redirect: m.redirect, Actor: tether.ActorOf(ctx)}
	if req.Reauthorize != "" {
		c, err := m.node.Get(ctx, req.Reauthorize)
		if err != nil {
			return "", err
		}
		if c.Kind != tether.KindOrg || c.Provider != p.Name || c.Status == tether.StatusDeleted {
			return "", &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "only a live org connection of this provider can be re-authorized with it"}
		}
		a.Connection, a.Owner = c.ID, c.Owner
	}
	data, err := json.Marshal(a)
	if err != nil {
		return "", tether.Wrap(tether.CodeInternal, op, err)
	}
	if err := m.store.PutOAuthState(ctx, stateKey(state), data, m.clock.Now().Add(m.stateTTL)); err != nil {
		return "", err
	}
	opts := []oauth2.AuthCodeOption{oauth2.AccessTypeOffline, oauth2.ApprovalForce, oauth2.S256ChallengeOption(a.Verifier)}
	if req.LoginHint != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", req.LoginHint))
	}
	return m.config(p).AuthCodeURL(state, opts...), nil
}

// stateKey is how a state value is stored: its hash, so the Store never
// holds the value a callback presents.
func stateKey(state string) string {
	sum := sha256.Sum256([]byte(state))
	return "oauth-state/" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// Complete finishes a login from the callback's query: it takes the state
// (once), checks the provider's iss (RFC 9207), exchanges the code with
// the verifier, identifies the org and creates the Active org connection,
// its tokens stored sealed. A missing, unknown, reused or expired state,
// or a mismatched iss, is refused with CodeInvalid before the token
// endpoint is called; an error the provider returned in the callback is
// CodeUnauthenticated with the provider's error code.
func (m *Manager) Complete(ctx context.Context, query url.Values) (*tether.Connection, error) {
	const op = "oauth: complete"
	refuse := func(msg string) (*tether.Connection, error) {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: msg}
	}
	state := query.Get("state")
	if state == "" || len(state) > 200 {
		return refuse("the callback carries no valid state: start the connection again")
	}
	data, err := m.store.TakeOAuthState(ctx, stateKey(state), m.clock.Now())
	if tether.ErrorCode(err) == tether.CodeNotFound {
		return refuse("the login is unknown, was used already or took too long: start the connection again")
	}
	if err != nil {
		return nil, err
	}
	var a attempt
	if err := json.Unmarshal(data, &a); err != nil {
		return nil, &tether.Error{Code: tether.CodeInternal, Op: op, Message: "a stored login does not decode"}
	}
	p, ok := m.providers[a.Provider]
	if !ok || a.Redirect != m.redirect {
		return refuse("the login was begun for a provider or redirect this manager does not have")
	}
	if p.Issuer != "" && query.Get("iss") != p.Issuer {
		// RFC 9207: a provider with an issuer says who answers; a
		// mix-up sends the user back from another one.
		return refuse("the callback's issuer is not the provider's: refused (RFC 9207)")
	}
	if e := query.Get("error"); e != "" {
		return nil, &tether.Error{Code: tether.CodeUnauthenticated, Op: op, Message: "the provider refused the login: " + sanitizeCode(e)}
	}
	code := query.Get("code")
	if code == "" {
		return refuse("the callback carries no code")
	}
	cctx := context.WithValue(ctx, oauth2.HTTPClient, m.client)
	tok, err := m.config(p).Exchange(cctx, code, oauth2.VerifierOption(a.Verifier))
	if err != nil {
		return nil, classify(op, err)
	}
	org, err := p.Identify(ctx, m.config(p).Client(cctx, tok), tok)
	if err != nil {
		return nil, err
	}
	actx := ctx
	if a.Actor != "" {
		actx = tether.WithActor(ctx, a.Actor)
	}
	if a.Connection != "" {
		return m.reauthorized(actx, a.Connection, org, tok)
	}
	c, err := m.node.ConnectOrg(actx, tether.OrgRequest{
		Owner: a.Owner, Name: cmp.Or(a.Name, org.Name, org.ID), ExternalID: org.ID, OrgName: org.Name, Provider: p.Name,
	})
	if err != nil {
		return nil, err
	}
	blob, err := json.Marshal(storedToken{Access: tok.AccessToken, Refresh: tok.RefreshToken, Expiry: m.expiry(tok)})
	if err != nil {
		return nil, tether.Wrap(tether.CodeInternal, op, err)
	}
	if _, err := m.store.SaveOAuthToken(ctx, c.ID, blob, 0); err != nil {
		return nil, err
	}
	return c, nil
}

// storedToken is a connection's tokens as the Store keeps them (sealed).
type storedToken struct {
	Access  string    `json:"access"`
	Refresh string    `json:"refresh"`
	Expiry  time.Time `json:"expiry,omitzero"`
}

// classify turns a token endpoint failure into an error: the OAuth error
// field decides, never its description.
func classify(op string, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		switch re.ErrorCode {
		case "invalid_grant", "interaction_required", "invalid_client", "unauthorized_client":
			return &tether.Error{Code: tether.CodeUnauthenticated, Op: op, Message: "the provider refused: " + sanitizeCode(re.ErrorCode)}
		}
		return &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "the provider's token endpoint failed: " + sanitizeCode(cmp.Or(re.ErrorCode, http.StatusText(statusOf(re))))}
	}
	return &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "the provider's token endpoint could not be reached", Err: err}
}

func statusOf(re *oauth2.RetrieveError) int {
	if re.Response != nil {
		return re.Response.StatusCode
	}
	return 0
}

// sanitizeCode keeps an OAuth error code's characters (RFC 6749: %x20-21,
// %x23-5B, %x5D-7E), at most 64 of them.
func sanitizeCode(s string) string {
	var b strings.Builder
	for _, r := range s {
		if b.Len() >= 64 {
			break
		}
		if r >= 0x20 && r <= 0x7e && r != '"' && r != '\\' {
			b.WriteRune(r)
		}
	}
	return b.String()
}

// Callback returns the handler to mount at Config.RedirectURL, under any
// prefix: it completes the login (Complete) and hands the result to done,
// which answers the user (for example a redirect to the host's
// Connections page, or a page that closes the login popup).
func (m *Manager) Callback(done func(w http.ResponseWriter, r *http.Request, c *tether.Connection, err error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		c, err := m.Complete(r.Context(), r.URL.Query())
		done(w, r, c, err)
	})
}

// reauthorized stores the tokens of a re-authorization of connection id,
// whose login reached org: it must be the connection's org. An Inactive
// connection becomes Active with an event, and its held work resumes.
func (m *Manager) reauthorized(ctx context.Context, id string, org Org, tok *oauth2.Token) (*tether.Connection, error) {
	const op = "oauth: reauthorize"
	c, err := m.node.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if c.ExternalID != org.ID {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the login reached another org than the connection's: nothing changed; log in to " + cmp.Or(c.RemoteName, c.ExternalID)}
	}
	if c.Status == tether.StatusDeleted {
		return nil, &tether.Error{Code: tether.CodeInvalidTransition, Op: op, Message: "the connection was deleted meanwhile"}
	}
	blob, err := json.Marshal(storedToken{Access: tok.AccessToken, Refresh: tok.RefreshToken, Expiry: m.expiry(tok)})
	if err != nil {
		return nil, tether.Wrap(tether.CodeInternal, op, err)
	}
	for attempt := 0; ; attempt++ {
		_, version, err := m.store.LoadOAuthToken(ctx, id)
		if err != nil && tether.ErrorCode(err) != tether.CodeNotFound {
			return nil, err
		}
		_, err = m.store.SaveOAuthToken(ctx, id, blob, version)
		if err == nil {
			break
		}
		if tether.ErrorCode(err) != tether.CodeConflict || attempt == 3 {
			return nil, err
		}
	}
	if c.Status == tether.StatusInactive {
		return m.node.Transition(ctx, id, tether.ActionReauthorize, "re-authorized")
	}
	return c, nil
}
