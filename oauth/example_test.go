package oauth_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/oauth"
	"github.com/tetherkit/tether/tethertest"
)

// The examples run against standIn, a stand-in for a provider's
// authorization server, in process, so that they run with Go alone. A
// host registers the real provider instead, with its own app's
// credentials.
type standIn struct {
	*httptest.Server
	mu      sync.Mutex
	codes   map[string]grantFor // authorization code -> the login it stands for
	refresh map[string]string   // refresh token -> account
	access  map[string]string   // access token -> account
}

// grantFor is a login an authorization code was issued for.
type grantFor struct {
	account, challenge, redirect string
}

// The app's registration at the stand-in.
const (
	clientID     = "tether-example"
	clientSecret = "example-secret"
)

// newStandIn starts a stand-in with an authorization endpoint that logs
// the user in at once and redirects back with a code, the state and the
// issuer (RFC 9207); a token endpoint that redeems a code against its
// PKCE S256 challenge, and refresh tokens, rotating them; and a userinfo
// endpoint that names the account an access token belongs to.
func newStandIn() *standIn {
	p := &standIn{codes: map[string]grantFor{}, refresh: map[string]string{}, access: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /authorize", p.authorize)
	mux.HandleFunc("POST /token", p.token)
	mux.HandleFunc("GET /userinfo", p.userinfo)
	p.Server = httptest.NewServer(mux)
	return p
}

// authorize logs in the account of login_hint ("acme" without one): a real
// provider checks redirect_uri against the app's registered ones and
// shows its login and consent pages first.
func (p *standIn) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	back, err := url.Parse(q.Get("redirect_uri"))
	if err != nil || q.Get("client_id") != clientID || q.Get("response_type") != "code" ||
		q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
		http.Error(w, "invalid_request", http.StatusBadRequest)
		return
	}
	account := q.Get("login_hint")
	if account == "" {
		account = "acme"
	}
	code := rand.Text()
	p.mu.Lock()
	p.codes[code] = grantFor{account: account, challenge: q.Get("code_challenge"), redirect: q.Get("redirect_uri")}
	p.mu.Unlock()
	back.RawQuery = url.Values{"code": {code}, "state": {q.Get("state")}, "iss": {p.URL}}.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}

// token redeems an authorization code (once, with the PKCE verifier and
// the same redirect URI) or a refresh token (once: it is rotated).
func (p *standIn) token(w http.ResponseWriter, r *http.Request) {
	refuse := func(status int, code string) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":%q}`, code)
	}
	if r.PostFormValue("client_id") != clientID || r.PostFormValue("client_secret") != clientSecret {
		refuse(http.StatusUnauthorized, "invalid_client")
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var account string
	switch r.PostFormValue("grant_type") {
	case "authorization_code":
		g, ok := p.codes[r.PostFormValue("code")]
		delete(p.codes, r.PostFormValue("code"))
		sum := sha256.Sum256([]byte(r.PostFormValue("code_verifier")))
		if !ok || g.redirect != r.PostFormValue("redirect_uri") || g.challenge != base64.RawURLEncoding.EncodeToString(sum[:]) {
			refuse(http.StatusBadRequest, "invalid_grant")
			return
		}
		account = g.account
	case "refresh_token":
		a, ok := p.refresh[r.PostFormValue("refresh_token")]
		delete(p.refresh, r.PostFormValue("refresh_token"))
		if !ok {
			refuse(http.StatusBadRequest, "invalid_grant")
			return
		}
		account = a
	default:
		refuse(http.StatusBadRequest, "unsupported_grant_type")
		return
	}
	access, refresh := rand.Text(), rand.Text()
	p.access[access], p.refresh[refresh] = account, account
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token": access, "token_type": "Bearer", "expires_in": 3600, "refresh_token": refresh,
	})
}

// userinfo answers the account of the bearer token.
func (p *standIn) userinfo(w http.ResponseWriter, r *http.Request) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	p.mu.Lock()
	account, ok := p.access[tok]
	p.mu.Unlock()
	if !ok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, "invalid_token", http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"sub": account, "name": "Acme Corp"})
}

// withdraw destroys account's tokens, as an admin who withdraws the app's
// access at the provider.
func (p *standIn) withdraw(account string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range []map[string]string{p.refresh, p.access} {
		for tok, a := range m {
			if a == account {
				delete(m, tok)
			}
		}
	}
}

// login plays the user's browser at the provider: it opens authURL and
// returns the query the provider sends the browser back to the host with.
func (p *standIn) login(authURL string) url.Values {
	browser := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := browser.Get(authURL)
	if err != nil {
		log.Fatal(err)
	}
	resp.Body.Close()
	back, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		log.Fatal(err)
	}
	return back.Query()
}

// newManager is a host's setup: a Node and a Manager with the provider
// registered (see ExampleManager_Begin).
func newManager(p *standIn, redirect string, clock tether.Clock) (*tether.Node, *oauth.Manager) {
	store := memstore.New()
	node, err := tether.Open(context.Background(), tether.Config{Store: store, Clock: clock})
	if err != nil {
		log.Fatal(err)
	}
	m, err := oauth.New(oauth.Config{
		Node: node, Store: store, RedirectURL: redirect, Clock: clock,
		Providers: []oauth.Provider{
			oauth.OIDC("acme-id", p.URL, p.URL+"/authorize", p.URL+"/token", p.URL+"/userinfo",
				clientID, clientSecret, "openid", "offline_access"),
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	return node, m
}

// connect connects team-a to the provider's org and returns the
// connection's ID.
func connect(p *standIn, m *oauth.Manager) string {
	ctx := tether.WithActor(context.Background(), "ada@team-a")
	authURL, err := m.Begin(ctx, oauth.BeginRequest{Provider: "acme-id", Owner: "team-a", Name: "Acme"})
	if err != nil {
		log.Fatal(err)
	}
	res, err := m.Complete(ctx, p.login(authURL))
	if err != nil {
		log.Fatal(err)
	}
	return res.Connection.ID
}

// A host registers the provider with its app's credentials, then connects
// a team: Begin gives the URL to send the user to; the provider sends the
// user back to the redirect URL, where Complete (or the Callback handler)
// finishes the login.
func ExampleManager_Begin() {
	provider := newStandIn() // the provider's authorization server
	defer provider.Close()
	ctx := context.Background()

	store := memstore.New() // sqlstore.New with a Sealer in production: tokens are sealed at rest
	node, err := tether.Open(ctx, tether.Config{Store: store})
	if err != nil {
		log.Fatal(err)
	}
	m, err := oauth.New(oauth.Config{
		Node:        node,
		Store:       store,
		RedirectURL: "https://app.example.com/oauth/callback", // registered at the provider
		Providers: []oauth.Provider{
			oauth.OIDC("acme-id", provider.URL, provider.URL+"/authorize", provider.URL+"/token", provider.URL+"/userinfo",
				clientID, clientSecret, "openid", "offline_access"),
		},
	})
	if err != nil {
		log.Fatal(err)
	}

	// The user who clicks "Connect" is recorded as the connection's creator.
	user := tether.WithActor(ctx, "ada@team-a")
	authURL, err := m.Begin(user, oauth.BeginRequest{Provider: "acme-id", Owner: "team-a", Name: "Acme"})
	if err != nil {
		log.Fatal(err)
	}
	u, _ := url.Parse(authURL)
	fmt.Println("send the user to", u.Path, "with PKCE", u.Query().Get("code_challenge_method"))

	// The user logs in; the provider sends the browser back to the
	// redirect URL with a code, the state and its issuer.
	query := provider.login(authURL)
	res, err := m.Complete(ctx, query)
	if err != nil {
		log.Fatal(err)
	}
	c := res.Connection
	fmt.Println(c.Name, c.Kind, c.Status, "to", c.RemoteName, "for", c.Owner, "by", c.CreatedBy)

	// A callback's state is single use.
	_, err = m.Complete(ctx, query)
	fmt.Println("the same callback again:", tether.ErrorCode(err))
	// Output:
	// send the user to /authorize with PKCE S256
	// Acme org active to Acme Corp for team-a by ada@team-a
	// the same callback again: invalid
}

// The host mounts Callback at its redirect URL; done answers the user's
// browser, here with a redirect to the Connections page.
func ExampleManager_Callback() {
	provider := newStandIn()
	defer provider.Close()
	mux := http.NewServeMux()
	app := httptest.NewServer(mux) // the host's web app
	defer app.Close()
	node, m := newManager(provider, app.URL+"/oauth/callback", nil)

	// "Connect" on the Connections page: Begin, then off to the provider.
	mux.HandleFunc("POST /connections/new", func(w http.ResponseWriter, r *http.Request) {
		user := tether.WithActor(r.Context(), "ada@team-a") // from the host's session
		authURL, err := m.Begin(user, oauth.BeginRequest{Provider: "acme-id", Owner: "team-a", Name: "Acme"})
		if err != nil {
			http.Error(w, err.Error(), tether.HTTPStatus(tether.ErrorCode(err)))
			return
		}
		http.Redirect(w, r, authURL, http.StatusSeeOther)
	})
	// The provider sends the user back here.
	mux.Handle("GET /oauth/callback", m.Callback(func(w http.ResponseWriter, r *http.Request, res *oauth.Result, err error) {
		switch {
		case err != nil:
			// tether.CodeOrgTaken: the org is connected to another team;
			// CodeInvalid: a stale or forged callback. No secret is in err.
			http.Redirect(w, r, "/connections?error="+url.QueryEscape(err.Error()), http.StatusSeeOther)
		case res.Connection == nil:
			// The user picks one of res.Choices (Dynamics 365
			// environments); the host keeps res.Choice in the session
			// and calls Choose with it and the picked org's ID.
			http.Error(w, "a choice page", http.StatusNotImplemented)
		default:
			http.Redirect(w, r, "/connections", http.StatusSeeOther)
		}
	}))
	mux.HandleFunc("GET /connections", func(w http.ResponseWriter, r *http.Request) {
		if e := r.URL.Query().Get("error"); e != "" {
			fmt.Fprintln(w, "could not connect:", e)
		}
		conns, _, err := node.List(r.Context(), tether.ListOptions{Owner: "team-a", Kind: tether.KindOrg})
		if err != nil {
			http.Error(w, err.Error(), tether.HTTPStatus(tether.ErrorCode(err)))
			return
		}
		for _, c := range conns {
			fmt.Fprintf(w, "%s (%s): %s\n", c.Name, c.RemoteName, c.Status)
		}
	})

	// The user's browser clicks "Connect" and follows the redirects:
	// to the provider, back to the callback, on to the Connections page.
	resp, err := http.Post(app.URL+"/connections/new", "", nil)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	page, _ := io.ReadAll(resp.Body)
	fmt.Print(string(page))
	// Output:
	// Acme (Acme Corp): active
}

// A job calls the org's API with the connection's client: Client refreshes
// the access token when it is about to expire. A paused connection gives
// CodePaused, an inactive one CodeUnauthenticated: the job holds.
func ExampleManager_Client() {
	provider := newStandIn()
	defer provider.Close()
	ctx := context.Background()
	node, m := newManager(provider, "https://app.example.com/oauth/callback", nil)
	id := connect(provider, m)

	job := func() {
		client, err := m.Client(ctx, id)
		switch tether.ErrorCode(err) {
		case "":
		case tether.CodePaused:
			fmt.Println("paused: the job waits until the team activates the connection")
			return
		case tether.CodeUnauthenticated:
			fmt.Println("inactive: the job waits until the team re-authorizes the connection")
			return
		default: // CodeUnavailable: the provider could not be reached; retry later
			fmt.Println("retry later:", err)
			return
		}
		// Requests carry the access token; a refresh that fails mid-job
		// gives an error with the same codes.
		resp, err := client.Get(provider.URL + "/userinfo")
		if err != nil {
			fmt.Println("failed:", tether.ErrorCode(err))
			return
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		fmt.Print(resp.Status, " ", string(body))
	}

	job()
	if _, err := node.Pause(ctx, id); err != nil {
		log.Fatal(err)
	}
	job()
	if _, err := node.Activate(ctx, id); err != nil {
		log.Fatal(err)
	}
	job()
	// Output:
	// 200 OK {"name":"Acme Corp","sub":"acme"}
	// paused: the job waits until the team activates the connection
	// 200 OK {"name":"Acme Corp","sub":"acme"}
}

// When the provider refuses a refresh for good (the org's admin withdrew
// the app's access, the user's password changed), the connection turns
// Inactive and calls give CodeUnauthenticated. The team re-authorizes it:
// Begin with Reauthorize set to the connection's ID, the same login and
// callback. The connection keeps its ID, settings and history.
func ExampleManager_Begin_reauthorize() {
	provider := newStandIn()
	defer provider.Close()
	ctx := context.Background()
	clock := tethertest.NewClock(time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC))
	node, m := newManager(provider, "https://app.example.com/oauth/callback", clock)
	id := connect(provider, m)

	provider.withdraw("acme")
	clock.Advance(2 * time.Hour) // the access token has expired: the next call refreshes it
	_, err := m.Client(ctx, id)
	fmt.Println("call:", tether.ErrorCode(err))
	c, _ := node.Get(ctx, id)
	fmt.Println("status:", c.Status)

	// "Re-authorize" on the Connections page.
	user := tether.WithActor(ctx, "ada@team-a")
	authURL, err := m.Begin(user, oauth.BeginRequest{Provider: "acme-id", Reauthorize: id})
	if err != nil {
		log.Fatal(err)
	}
	res, err := m.Complete(ctx, provider.login(authURL)) // what Callback does
	if err != nil {
		log.Fatal(err) // CodeInvalid when the user logged in to another org
	}
	fmt.Println("status:", res.Connection.Status, "same connection:", res.Connection.ID == id)
	_, err = m.Client(ctx, id)
	fmt.Println("call:", err)

	events, _ := node.Events(ctx, id, 0, 0)
	for _, e := range events {
		fmt.Println(e.Type, "by", e.Actor+":", e.Detail)
	}
	// Output:
	// call: unauthenticated
	// status: inactive
	// status: active same connection: true
	// call: <nil>
	// created by ada@team-a: connected to Acme Corp
	// auth_lost by system: the provider refused the refresh token (invalid_grant)
	// reauthorized by ada@team-a: re-authorized
}
