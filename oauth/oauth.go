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
	Scopes []string
	// IdleTTL is how long the provider keeps a refresh token that is not
	// used (Salesforce: 30 days, Microsoft: 90); zero when it never lapses
	// for disuse. Run refreshes grants idle for half of it.
	IdleTTL      time.Duration
	ClientID     string
	ClientSecret string
	// Identify reads the org the tokens reach: its stable ID (one org per
	// team) and display name. client sends the access token.
	Identify func(ctx context.Context, client *http.Client, tok *oauth2.Token) (Org, error)

	// Set by the constructors of providers with more to do.
	hosts    func(host string) (endpoints, error) // a login host given per connection; nil: none allowed
	discover func(ctx context.Context, m *Manager, p Provider, at endpoints, tok *oauth2.Token) ([]candidate, error)
	settle   func(ctx context.Context, m *Manager, p Provider, rec *record, c *candidate) error
	choose   bool                // the user picks among the orgs a login reaches
	refresh  func(h string) bool // reports whether login host h names one sandbox, kept across its refreshes
	params   []oauth2.AuthCodeOption
}

// endpoints are where one login and its grant's refreshes go.
type endpoints struct {
	Host      string `json:"host,omitempty"` // the login host given for the connection
	AuthURL   string `json:"auth_url"`
	TokenURL  string `json:"token_url"`
	RevokeURL string `json:"revoke_url,omitempty"`
}

// Org is an org (or environment) a login reached.
type Org struct {
	ID   string `json:"id"`             // stable: the connection's ExternalID
	Name string `json:"name"`           // display name
	Type string `json:"type,omitempty"` // production, sandbox, an environment type
	URL  string `json:"url,omitempty"`  // API base URL
}

// candidate is an org a login reached, with what connecting it needs.
type candidate struct {
	Org
	Host     string `json:"host,omitempty"`     // the login host: a sandbox keeps it across refreshes
	Tenant   string `json:"tenant,omitempty"`   // Microsoft: the environment's tenant
	Resource string `json:"resource,omitempty"` // Microsoft: the environment host tokens are redeemed for
}

// OIDC returns a generic OpenID Connect provider with explicit endpoints:
// the org is the user the login reached, identified by the issuer and the
// userinfo "sub" claim.
func OIDC(name, issuer, authURL, tokenURL, userinfoURL, clientID, clientSecret string, scopes ...string) Provider {
	return Provider{
		Name: name, Issuer: issuer, AuthURL: authURL, TokenURL: tokenURL,
		ClientID: clientID, ClientSecret: clientSecret, Scopes: scopes,
		params: []oauth2.AuthCodeOption{oauth2.AccessTypeOffline, oauth2.ApprovalForce},
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
	refreshing sync.Map // connection ID -> *connState: its refresh lock and cached token (client.go)
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
		if p.Name == "" || p.AuthURL == "" || p.TokenURL == "" || p.ClientID == "" || (p.Identify == nil && p.discover == nil) {
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

func (m *Manager) config(p Provider, at endpoints) *oauth2.Config {
	return &oauth2.Config{
		ClientID: p.ClientID, ClientSecret: p.ClientSecret, RedirectURL: m.redirect, Scopes: p.Scopes,
		Endpoint: oauth2.Endpoint{AuthURL: at.AuthURL, TokenURL: at.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
	}
}

// endpoints returns where a login at host (the provider's default when
// empty) goes.
func (p Provider) endpoints(host string) (endpoints, error) {
	if host == "" {
		return endpoints{AuthURL: p.AuthURL, TokenURL: p.TokenURL, RevokeURL: p.RevokeURL}, nil
	}
	if p.hosts == nil {
		return endpoints{}, &tether.Error{Code: tether.CodeInvalid, Op: "oauth: begin", Message: "provider " + p.Name + " takes no login host"}
	}
	return p.hosts(host)
}

// BeginRequest starts connecting an org.
type BeginRequest struct {
	Provider string // a registered Provider's Name
	Owner    string // the team the connection will belong to
	Name     string // the connection's name
	// LoginHint, when set, is passed to the provider as login_hint (the
	// user name to log in with).
	LoginHint string
	// Host, when set, is the login host to use instead of the provider's
	// (a Salesforce My Domain, for orgs that refuse logins at
	// login.salesforce.com or test.salesforce.com): checked against the
	// provider's host allowlist.
	Host string
	// Reauthorize, when set, is the ID of an org connection to
	// re-authorize instead of creating one: the login must reach the same
	// org, and the connection keeps its ID, settings and history. When
	// Owner is set too, the connection must be Owner's (CodeNotFound
	// otherwise, as for a connection that does not exist).
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
	// At is where the login goes: the provider's endpoints or the given
	// login host's.
	At endpoints `json:"at"`
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
	at, err := p.endpoints(req.Host)
	if err != nil {
		return "", err
	}
	state := oauth2.GenerateVerifier() // 32 random bytes, base64url
	a := attempt{Provider: p.Name, Owner: req.Owner, Name: req.Name, Verifier: oauth2.GenerateVerifier(), Redirect: m.redirect, Actor: tether.ActorOf(ctx), At: at}
	if req.Reauthorize != "" {
		c, err := m.node.Get(ctx, req.Reauthorize)
		if err != nil {
			return "", err
		}
		if req.Owner != "" && req.Owner != c.Owner {
			// Another team's connection is answered as one that does
			// not exist.
			return "", &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no connection " + req.Reauthorize}
		}
		if c.Kind != tether.KindOrg || c.Provider != p.Name || c.Status == tether.StatusDeleted {
			return "", &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "only a live org connection of this provider can be re-authorized with it"}
		}
		a.Connection, a.Owner = c.ID, c.Owner
		if req.Host == "" && p.hosts != nil {
			// Log in where the connection's grant was issued: an org
			// that allows only its My Domain needs it again.
			if rec, _, err := m.load(ctx, c.ID); err == nil {
				if u, err := url.Parse(rec.TokenURL); err == nil && u.Host != "" {
					if issued, err := p.endpoints(u.Host); err == nil {
						a.At = issued
					}
				}
			}
		}
	}
	data, err := json.Marshal(a)
	if err != nil {
		return "", tether.Wrap(tether.CodeInternal, op, err)
	}
	if err := m.store.PutOAuthState(ctx, stateKey(state), data, m.clock.Now().Add(m.stateTTL)); err != nil {
		return "", err
	}
	opts := append([]oauth2.AuthCodeOption{oauth2.S256ChallengeOption(a.Verifier)}, p.params...)
	if req.LoginHint != "" {
		opts = append(opts, oauth2.SetAuthURLParam("login_hint", req.LoginHint))
	}
	return m.config(p, a.At).AuthCodeURL(state, opts...), nil
}

// stateKey is how a state value is stored: its hash, so the Store never
// holds the value a callback presents.
func stateKey(state string) string {
	sum := sha256.Sum256([]byte(state))
	return "oauth-state/" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// Result is what a completed login gives: the org connection, or a choice
// the user still has to make.
type Result struct {
	// Connection is the org connection created or re-authorized; nil when
	// Choices must be offered first.
	Connection *tether.Connection
	// Choices are the orgs the user picks from: the Dynamics 365
	// environments the login reaches, or, when Replaces is set, the new
	// org of a refreshed sandbox. Choice, passed to Choose with one
	// Choices[i].ID, finishes the connection; it is single use and
	// expires like a login.
	Choices []Org
	Choice  string
	// Replaces is set when a re-authorization reached a refreshed sandbox:
	// the same sandbox login host, a new org. Choose then creates a
	// connection for the new org with the settings and rules of connection
	// Replaces, and deletes that one.
	Replaces string
}

// Complete finishes a login from the callback's query: it takes the state
// (once), checks the provider's iss (RFC 9207), exchanges the code with
// the verifier, identifies the org and creates the Active org connection,
// its tokens stored sealed. A missing, unknown, reused or expired state,
// or a mismatched iss, is refused with CodeInvalid before the token
// endpoint is called; an error the provider returned in the callback is
// CodeUnauthenticated with the provider's error code. When the user must
// choose an org first, the Result carries the Choices.
func (m *Manager) Complete(ctx context.Context, query url.Values) (*Result, error) {
	const op = "oauth: complete"
	refuse := func(msg string) (*Result, error) {
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
	if !sameCaller(ctx, a) {
		return refuse("the login was begun by another team or user: start the connection again")
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
	tok, err := m.config(p, a.At).Exchange(cctx, code, oauth2.VerifierOption(a.Verifier))
	if err != nil {
		return nil, classify(op, err)
	}
	if tok.TokenType != "" && !strings.EqualFold(tok.TokenType, "bearer") {
		m.discard(ctx, p, record{Refresh: tok.RefreshToken, RevokeURL: a.At.RevokeURL})
		return nil, &tether.Error{Code: tether.CodeProtocol, Op: op, Message: "the token endpoint answered a token type other than Bearer"}
	}
	cands, err := m.discover(ctx, p, a.At, tok)
	if err != nil {
		return nil, err
	}
	rec := record{
		Access: tok.AccessToken, Refresh: tok.RefreshToken, Expiry: m.expiry(tok),
		TokenURL: a.At.TokenURL, RevokeURL: a.At.RevokeURL, Renewed: m.clock.Now(),
	}
	if a.Actor != "" {
		ctx = tether.WithActor(ctx, a.Actor)
	}
	if a.Connection != "" {
		return m.reauthorized(ctx, p, a, rec, cands)
	}
	if p.choose {
		return m.offer(ctx, pending{Attempt: a, Record: rec, Candidates: cands})
	}
	return m.connect(ctx, p, a, rec, cands[0], "")
}

// discover returns the orgs a login reached: one, unless the provider
// lets the user choose.
func (m *Manager) discover(ctx context.Context, p Provider, at endpoints, tok *oauth2.Token) ([]candidate, error) {
	if p.discover != nil {
		cands, err := p.discover(ctx, m, p, at, tok)
		if err == nil && len(cands) == 0 {
			err = &tether.Error{Code: tether.CodeNotFound, Op: "oauth: complete", Message: "the login reaches no org this provider can connect"}
		}
		return cands, err
	}
	org, err := p.Identify(ctx, m.config(p, at).Client(context.WithValue(ctx, oauth2.HTTPClient, m.client), tok), tok)
	if err != nil {
		return nil, err
	}
	return []candidate{{Org: org}}, nil
}

// pending is a login waiting for the user's choice, kept by the Store
// (sealed: it holds the grant) under the choice's hash.
type pending struct {
	Attempt    attempt     `json:"attempt"`
	Record     record      `json:"record"`
	Candidates []candidate `json:"candidates"`
	Replaces   string      `json:"replaces,omitempty"`
}

// offer stores a login waiting for a choice and returns the Result that
// asks for it.
func (m *Manager) offer(ctx context.Context, pd pending) (*Result, error) {
	choice := oauth2.GenerateVerifier()
	data, err := json.Marshal(pd)
	if err != nil {
		return nil, tether.Wrap(tether.CodeInternal, "oauth: complete", err)
	}
	if err := m.store.PutOAuthState(ctx, choiceKey(choice), data, m.clock.Now().Add(m.stateTTL)); err != nil {
		return nil, err
	}
	res := &Result{Choice: choice, Replaces: pd.Replaces}
	for _, c := range pd.Candidates {
		res.Choices = append(res.Choices, c.Org)
	}
	return res, nil
}

// choiceKey is how a choice is stored: its hash.
func choiceKey(choice string) string {
	sum := sha256.Sum256([]byte(choice))
	return "oauth-choice/" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// Choose finishes a login that offered Choices: orgID is the ID of the
// chosen one. The choice is single use; an unknown, used or expired one is
// CodeInvalid (start again with Begin).
func (m *Manager) Choose(ctx context.Context, choice, orgID string) (*tether.Connection, error) {
	const op = "oauth: choose"
	if choice == "" || len(choice) > 200 {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "no valid choice"}
	}
	data, err := m.store.TakeOAuthState(ctx, choiceKey(choice), m.clock.Now())
	if tether.ErrorCode(err) == tether.CodeNotFound {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the choice is unknown, was made already or took too long: start the connection again"}
	}
	if err != nil {
		return nil, err
	}
	var pd pending
	if err := json.Unmarshal(data, &pd); err != nil {
		return nil, &tether.Error{Code: tether.CodeInternal, Op: op, Message: "a stored choice does not decode"}
	}
	p, ok := m.providers[pd.Attempt.Provider]
	if !ok {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the login was begun for a provider this manager does not have"}
	}
	if !sameCaller(ctx, pd.Attempt) {
		m.discard(ctx, p, pd.Record) // the choice is spent: its grant goes too
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the login was begun by another team or user: start the connection again"}
	}
	for _, c := range pd.Candidates {
		if c.ID == orgID {
			if pd.Attempt.Actor != "" {
				ctx = tether.WithActor(ctx, pd.Attempt.Actor)
			}
			res, err := m.connect(ctx, p, pd.Attempt, pd.Record, c, pd.Replaces)
			if err != nil {
				return nil, err
			}
			return res.Connection, nil
		}
	}
	m.discard(ctx, p, pd.Record)
	return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the chosen org was not offered: start the connection again"}
}

// connect creates the org connection for candidate c with the grant rec,
// taking the settings of connection replaces when set (and deleting it).
func (m *Manager) connect(ctx context.Context, p Provider, a attempt, rec record, c candidate, replaces string) (*Result, error) {
	const op = "oauth: complete"
	if p.settle != nil {
		if err := p.settle(ctx, m, p, &rec, &c); err != nil {
			return nil, err
		}
	}
	rec.Host = c.Host
	conn, err := m.node.ConnectOrg(ctx, tether.OrgRequest{
		Owner: a.Owner, Name: cmp.Or(a.Name, c.Name, c.ID), ExternalID: c.ID, OrgName: c.Name,
		Provider: p.Name, OrgType: c.Type, URL: c.URL, ReuseFrom: replaces,
	})
	if err != nil {
		m.discard(ctx, p, rec)
		return nil, err
	}
	blob, err := json.Marshal(rec)
	if err != nil {
		return nil, tether.Wrap(tether.CodeInternal, op, err)
	}
	if _, err := m.store.SaveOAuthToken(ctx, conn.ID, blob, 0); err != nil {
		// Without its tokens the connection cannot work: it waits
		// for a re-authorization.
		sctx := tether.WithActor(context.WithoutCancel(ctx), tether.ActorSystem)
		_, _ = m.node.Transition(sctx, conn.ID, tether.ActionAuthLost, "the tokens could not be stored: re-authorize")
		return nil, err
	}
	if replaces != "" {
		sctx := context.WithoutCancel(ctx)
		if err := m.node.Note(sctx, replaces, tether.EventOrgRefreshed, "the sandbox was refreshed into a new org: settings moved to "+conn.ID); err != nil {
			return nil, err
		}
		if _, err := m.node.Delete(sctx, replaces); err != nil && tether.ErrorCode(err) != tether.CodeInvalidTransition {
			return nil, err
		}
		_ = m.store.DeleteOAuthToken(sctx, replaces) // the refreshed sandbox's grant died with its org
	}
	return &Result{Connection: conn}, nil
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

// sanitizeCode returns an OAuth error code as tether repeats it: the
// codes of RFC 6749 and its extensions are lower-case words joined by
// underscores, so anything else (a provider echoing a token in its error
// field) becomes "unrecognized_error".
func sanitizeCode(s string) string {
	if s == "" {
		return ""
	}
	if len(s) > 40 || strings.Trim(s, "abcdefghijklmnopqrstuvwxyz_") != "" {
		return "unrecognized_error"
	}
	return s
}

// sameCaller reports whether ctx's caller may finish attempt a: when ctx
// is scoped to an owner (tether.WithOwner), a must have been begun for
// that owner, and, when both ctx and a name an actor, by that actor. So a login
// begun by one team cannot be finished in another's session (a login
// CSRF would otherwise connect the victim's org to the attacker's team).
func sameCaller(ctx context.Context, a attempt) bool {
	if o, ok := tether.OwnerOf(ctx); ok && o != a.Owner {
		return false
	}
	if actor := tether.ActorOf(ctx); actor != tether.ActorLocal && a.Actor != "" && a.Actor != tether.ActorLocal && actor != a.Actor {
		return false
	}
	return true
}

// Callback returns the handler to mount at Config.RedirectURL, under any
// prefix: it completes the login (Complete) and hands the result to done,
// which answers the user (for example a redirect to the host's
// Connections page, a page offering the Result's Choices, or a page that
// closes the login popup).
func (m *Manager) Callback(done func(w http.ResponseWriter, r *http.Request, res *Result, err error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		res, err := m.Complete(r.Context(), r.URL.Query())
		done(w, r, res, err)
	})
}

// reauthorized stores the grant of a re-authorization of connection
// a.Connection: the login must reach the connection's org. An Inactive
// connection becomes Active with an event, and its held work resumes. A
// login that reached a refreshed sandbox (the same sandbox login host, a
// new org) offers to move the connection's settings to the new org.
func (m *Manager) reauthorized(ctx context.Context, p Provider, a attempt, rec record, cands []candidate) (*Result, error) {
	const op = "oauth: reauthorize"
	id := a.Connection
	c, err := m.node.Get(ctx, id)
	if err != nil {
		m.discard(ctx, p, rec)
		return nil, err
	}
	if c.Status == tether.StatusDeleted {
		m.discard(ctx, p, rec)
		return nil, &tether.Error{Code: tether.CodeInvalidTransition, Op: op, Message: "the connection was deleted meanwhile"}
	}
	var found *candidate
	for i := range cands {
		if cands[i].ID == c.ExternalID {
			found = &cands[i]
		}
	}
	if found == nil {
		if len(cands) == 1 && p.refresh != nil && m.sameSandbox(ctx, p, c, cands[0]) {
			return m.offer(ctx, pending{Attempt: a, Record: rec, Candidates: cands, Replaces: c.ID})
		}
		m.discard(ctx, p, rec)
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the login reached another org than the connection's: nothing changed; log in to " + cmp.Or(c.RemoteName, c.ExternalID)}
	}
	if p.settle != nil {
		if err := p.settle(ctx, m, p, &rec, found); err != nil {
			return nil, err
		}
	}
	rec.Host = found.Host
	blob, err := json.Marshal(rec)
	if err != nil {
		return nil, tether.Wrap(tether.CodeInternal, op, err)
	}
	var old *record
	for attempt := 0; ; attempt++ {
		prev, version, err := m.load(ctx, id)
		if err != nil && tether.ErrorCode(err) != tether.CodeNotFound {
			return nil, err
		}
		_, err = m.store.SaveOAuthToken(ctx, id, blob, version)
		if err == nil {
			old = prev
			break
		}
		if tether.ErrorCode(err) != tether.CodeConflict || attempt == 3 {
			return nil, err
		}
	}
	if old != nil && old.Refresh != "" && old.Refresh != rec.Refresh && old.RevokeURL != "" {
		// The previous grant is replaced: revoke it, so that logins do
		// not pile up (Salesforce keeps five approvals per user and app).
		_ = m.revoke(ctx, p, old.RevokeURL, old.Refresh)
	}
	if c.Status == tether.StatusInactive {
		c, err = m.node.Transition(ctx, id, tether.ActionReauthorize, "re-authorized")
		if err != nil {
			return nil, err
		}
	}
	return &Result{Connection: c}, nil
}

// sameSandbox reports whether candidate n is connection c's sandbox after
// a refresh: the same sandbox login host, a new org.
func (m *Manager) sameSandbox(ctx context.Context, p Provider, c *tether.Connection, n candidate) bool {
	old, _, err := m.load(ctx, c.ID)
	return err == nil && old.Host != "" && old.Host == n.Host && p.refresh(n.Host)
}

// discard revokes, where the provider can, a grant that no connection
// took, so that refused logins do not pile up at the provider.
func (m *Manager) discard(ctx context.Context, p Provider, rec record) {
	if rec.Refresh != "" && rec.RevokeURL != "" {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = m.revoke(rctx, p, rec.RevokeURL, rec.Refresh)
	}
}
