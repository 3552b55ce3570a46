package main

import (
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/adminapi"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/oauth"
)

// config is what the app is started with; main fills it from flags and
// the environment, tests directly.
type config struct {
	// PublicURL is where browsers and partners reach the app, without a
	// trailing slash: the tether endpoint is PublicURL/tether. Required.
	PublicURL string
	// DataDir holds the sealing key and, without Postgres, the SQLite
	// database. Required.
	DataDir string
	// Postgres, when set, keeps the data in that PostgreSQL database, in
	// Schema ("tether_webapp" when empty), dropped and created afresh at
	// start with FreshSchema.
	Postgres    string
	Schema      string
	FreshSchema bool
	// AllowPrivateNetwork lets the app contact partners at loopback and
	// private addresses and over plain http: for demos on one machine.
	AllowPrivateNetwork bool
	// DisplayName is what partners that probe this instance see; Modes
	// the configuration modes it offers (all three when empty).
	DisplayName string
	Modes       []tether.Mode

	// Org providers: Salesforce's External Client App, Dynamics 365's
	// Entra app registration, and the demo provider (a local OpenID
	// Connect server, started with node).
	SalesforceKey, SalesforceSecret  string
	DynamicsClientID, DynamicsSecret string
	DemoOAuth                        bool
	// DemoAccessTTL is how long the demo provider's access tokens live
	// (5 minutes when zero).
	DemoAccessTTL time.Duration
	// OAuthClient calls the providers (a client with timeouts when nil).
	OAuthClient *http.Client
	// OrgCheckEvery is how often the app calls each active org's API, as
	// a sync job would, and so notices withdrawn access (1 minute when
	// zero).
	OrgCheckEvery time.Duration

	Logger *slog.Logger // discarded when nil
}

// app is the help desk: its pages, the admin API under /api/ and the
// tether protocol under /tether/, one tether Node for every tenant.
type app struct {
	cfg      config
	log      *slog.Logger
	node     *tether.Node
	orgs     *oauth.Manager // nil when no provider is configured
	catalog  []orgKind
	demo     *oauthtest.OP // the demo provider, when started
	sessions *sessions
	inbox    *inbox
	checks   *orgChecks
	pages    map[string]*template.Template
	handler  http.Handler

	ctx     context.Context // ends at Close: ends background work and open requests
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	closeDB func()
	once    sync.Once
}

//go:embed templates
var templateFS embed.FS

// newApp opens the store and the node, starts the background work and
// returns the app; Close stops it.
func newApp(ctx context.Context, cfg config) (_ *app, err error) {
	if cfg.PublicURL == "" || cfg.DataDir == "" {
		return nil, errors.New("PublicURL and DataDir are required")
	}
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return nil, fmt.Errorf("public URL %q: give scheme and host only, such as https://helpdesk.example.com", cfg.PublicURL)
	}
	cfg.PublicURL = strings.TrimSuffix(cfg.PublicURL, "/")
	if u.Scheme == "http" && !cfg.AllowPrivateNetwork {
		return nil, fmt.Errorf("the public URL %s is plain http, which partners refuse: give an https URL with -public-url, or, for a demo on this machine or network, add -allow-private-network", cfg.PublicURL)
	}
	if cfg.Schema == "" {
		cfg.Schema = "tether_webapp"
	}
	if cfg.DisplayName == "" {
		cfg.DisplayName = "Help Desk"
	}
	if cfg.OrgCheckEvery <= 0 {
		cfg.OrgCheckEvery = time.Minute
	}
	if cfg.DemoAccessTTL <= 0 {
		cfg.DemoAccessTTL = 5 * time.Minute
	}
	if cfg.OAuthClient == nil {
		cfg.OAuthClient = &http.Client{Timeout: 30 * time.Second}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	a := &app{cfg: cfg, log: log, sessions: newSessions(u.Scheme == "https"), inbox: newInbox(), checks: newOrgChecks()}
	a.ctx, a.cancel = context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	if a.pages, err = parsePages(); err != nil {
		return nil, err
	}

	store, closeDB, err := openStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	a.closeDB = closeDB

	// Production partners are https on public addresses: the zero policy.
	var policy tether.URLPolicy
	if cfg.AllowPrivateNetwork {
		policy = tether.URLPolicy{AllowHTTP: true, AllowLoopback: true, AllowPrivate: true}
	}
	var api atomic.Pointer[adminapi.API] // set below; events before it have no stream to wake
	a.node, err = tether.Open(ctx, tether.Config{
		Store:       store,
		Transport:   httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		Endpoint:    cfg.PublicURL + "/tether",
		AdminURL:    cfg.PublicURL + "/connections",
		URLPolicy:   policy,
		DisplayName: cfg.DisplayName,
		Modes:       cfg.Modes,
		Receiver:    a.inbox,
		Logger:      log,
		OnEvent: func(e tether.Event) {
			if p := api.Load(); p != nil {
				p.Notify(e)
			}
		},
	})
	if err != nil {
		return nil, err
	}

	providers, err := a.providers(ctx)
	if err != nil {
		return nil, err
	}
	if len(providers) > 0 {
		a.orgs, err = oauth.New(oauth.Config{
			Node: a.node, Store: store, RedirectURL: cfg.PublicURL + "/api/orgs/callback",
			Providers: providers, HTTPClient: cfg.OAuthClient,
		})
		if err != nil {
			return nil, err
		}
	}
	p, err := adminapi.New(adminapi.Config{
		Node: a.node, Orgs: a.orgs, Logger: log,
		Authenticate: func(r *http.Request) (adminapi.Caller, error) {
			s := a.sessions.get(r)
			if s == nil {
				return adminapi.Caller{}, errors.New("no session")
			}
			return adminapi.Caller{Owner: s.Tenant.ID, Actor: s.Tenant.User}, nil
		},
	})
	if err != nil {
		return nil, err
	}
	api.Store(p)
	a.handler = a.routes(p)

	a.goBackground(func(ctx context.Context) { _ = a.node.Run(ctx) })
	if a.orgs != nil {
		a.goBackground(func(ctx context.Context) { _ = a.orgs.Run(ctx) })
		a.goBackground(a.watchOrgs)
	}
	return a, nil
}

func (a *app) goBackground(f func(context.Context)) {
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		f(a.ctx)
	}()
}

// Close ends the background work and the requests under way (event
// streams, partners' long-polls), stops the demo provider and closes the
// database.
func (a *app) Close() {
	a.once.Do(func() {
		a.cancel()
		a.wg.Wait()
		if a.demo != nil {
			a.demo.Close()
		}
		if a.closeDB != nil {
			a.closeDB()
		}
	})
}

// ServeHTTP serves a request under a context that also ends at Close.
func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(a.ctx, cancel)
	defer stop()
	a.handler.ServeHTTP(w, r.WithContext(ctx))
}

func (a *app) routes(api *adminapi.API) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/tether/", httptransport.NewHandler(a.node, httptransport.HandlerConfig{Logger: a.log}))
	mux.Handle("/api/", http.StripPrefix("/api", api))

	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/connections", http.StatusSeeOther)
	})
	mux.HandleFunc("GET /signin", a.signinPage)
	mux.HandleFunc("POST /signin", a.signin)
	mux.Handle("POST /signout", a.page(a.signout))

	mux.Handle("GET /connections", a.page(a.list))
	mux.Handle("GET /connections/initiate", a.page(a.initiateDestination))
	mux.Handle("POST /connections/initiate/destination", a.page(a.initiateMode))
	mux.Handle("POST /connections/initiate/mode", a.page(a.initiateDetails))
	mux.Handle("POST /connections/initiate", a.page(a.initiate))
	mux.Handle("GET /connections/accept", a.page(a.acceptPage))
	mux.Handle("POST /connections/accept/preview", a.page(a.acceptPreview))
	mux.Handle("POST /connections/accept", a.page(a.accept))
	mux.Handle("GET /connections/{id}", a.page(a.details))
	mux.Handle("GET /connections/{id}/invitation", a.page(a.invitation))
	mux.Handle("GET /connections/{id}/edit", a.page(a.editPage))
	mux.Handle("POST /connections/{id}/edit", a.page(a.edit))
	mux.Handle("POST /connections/{id}/{action}", a.page(a.act))
	mux.Handle("GET /orgs/new", a.page(a.newOrg))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.render(w, r, http.StatusNotFound, "error.html", a.sessions.get(r), "Not found", errorView{Text: "There is no such page."})
	})
	return mux
}

// handler is a page that needs a signed-in session.
type handler func(w http.ResponseWriter, r *http.Request, s *session) error

// page runs h for a signed-in session. A browser without one is sent to
// sign in. A request that is not GET must carry the session's CSRF token
// in its form: forms are authenticated by the cookie, which a browser
// also sends with a form another site posts.
func (a *app) page(h handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s := a.sessions.get(r)
		if s == nil {
			if r.Method == http.MethodGet {
				http.Redirect(w, r, "/signin?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
				return
			}
			a.render(w, r, http.StatusForbidden, "error.html", nil, "Signed out", errorView{Text: "Your session has ended: sign in and try again."})
			return
		}
		if r.Method != http.MethodGet {
			r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
			if err := r.ParseForm(); err != nil {
				a.render(w, r, http.StatusBadRequest, "error.html", s, "Bad request", errorView{Text: "The form could not be read."})
				return
			}
			if !s.validCSRF(r.PostForm.Get("csrf")) {
				a.render(w, r, http.StatusForbidden, "error.html", s, "Refused", errorView{Text: "The form is out of date or came from another site: reload the page and try again."})
				return
			}
		}
		if err := h(w, r, s); err != nil {
			a.fail(w, r, s, err)
		}
	})
}

// scoped is r's context for library calls on behalf of s: only its
// tenant's connections are visible, and changes record its user.
func scoped(r *http.Request, s *session) context.Context {
	return tether.WithActor(tether.WithOwner(r.Context(), s.Tenant.ID), s.Tenant.User)
}

// fail answers an error a handler returned: a connection that does not
// exist, or is another tenant's, is the same 404.
func (a *app) fail(w http.ResponseWriter, r *http.Request, s *session, err error) {
	if tether.ErrorCode(err) == tether.CodeNotFound {
		a.render(w, r, http.StatusNotFound, "error.html", s, "Not found", errorView{Text: "There is no such connection."})
		return
	}
	if r.Context().Err() == nil {
		a.log.ErrorContext(r.Context(), "webapp: request failed", "path", r.URL.Path, "err", err)
	}
	a.render(w, r, http.StatusInternalServerError, "error.html", s, "Something went wrong", errorView{Text: "Something went wrong; it has been logged."})
}

// message is what a user is told of err: a tether error's message, which
// names what to fix and holds no secret, or a generic sentence.
func message(err error) string {
	var te *tether.Error
	if errors.As(err, &te) && te.Message != "" && tether.ErrorCode(err) != tether.CodeInternal {
		return strings.ToUpper(te.Message[:1]) + te.Message[1:] + "."
	}
	return "Something went wrong; try again."
}

// errorView is the content of error.html.
type errorView struct{ Text string }

// layout is what every page's frame shows.
type layout struct {
	Title   string
	Session *session
	Flash   *flash
	Nonce   string // the CSP nonce of the page's script and style
	Content any
}

// render writes page with content, in the layout, with a Content
// Security Policy that allows only the page's own script and style.
func (a *app) render(w http.ResponseWriter, r *http.Request, status int, page string, s *session, title string, content any) {
	nonce := nonce()
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Content-Security-Policy", "default-src 'self'; script-src 'nonce-"+nonce+"'; style-src 'nonce-"+nonce+"'; "+
		"img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
	l := layout{Title: title, Session: s, Nonce: nonce, Content: content}
	if s != nil {
		l.Flash = s.takeFlash()
	}
	w.WriteHeader(status)
	if err := a.pages[page].ExecuteTemplate(w, "layout", l); err != nil && r.Context().Err() == nil {
		a.log.ErrorContext(r.Context(), "webapp: render", "page", page, "err", err)
	}
}

func nonce() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}

// back sends the browser to path after a form, with a message.
func back(w http.ResponseWriter, r *http.Request, s *session, path string, isError bool, text string) error {
	s.setFlash(isError, text)
	http.Redirect(w, r, path, http.StatusSeeOther)
	return nil
}

func (a *app) signinPage(w http.ResponseWriter, r *http.Request) {
	a.render(w, r, http.StatusOK, "signin.html", a.sessions.get(r), "Sign in", signinView{Tenants: tenants(), Next: localPath(r.URL.Query().Get("next"))})
}

type signinView struct {
	Tenants []tenant
	Next    string
}

// signin starts a session for the tenant chosen. Only a form of this
// site may sign a browser in: the browser says where a form came from.
func (a *app) signin(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if !sameOrigin(r, a.cfg.PublicURL) {
		a.render(w, r, http.StatusForbidden, "error.html", nil, "Refused", errorView{Text: "Sign in from this site's sign-in page."})
		return
	}
	t, ok := tenantByID(r.PostFormValue("tenant"))
	if !ok {
		a.render(w, r, http.StatusBadRequest, "error.html", nil, "Sign in", errorView{Text: "Choose a help desk to sign in to."})
		return
	}
	if old := a.sessions.get(r); old != nil {
		a.sessions.end(w, old)
	}
	a.sessions.start(w, t)
	next := localPath(r.PostFormValue("next"))
	if next == "" {
		next = "/connections"
	}
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (a *app) signout(w http.ResponseWriter, r *http.Request, s *session) error {
	a.sessions.end(w, s)
	http.Redirect(w, r, "/signin", http.StatusSeeOther)
	return nil
}

// sameOrigin reports whether a form post came from this site, by the
// Sec-Fetch-Site or Origin header a browser sends; a request with neither
// (not a browser) passes.
func sameOrigin(r *http.Request, publicURL string) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin" || s == "none"
	}
	if o := r.Header.Get("Origin"); o != "" {
		return o == publicURL || o == "http://"+r.Host || o == "https://"+r.Host
	}
	return true
}

// localPath returns p, cleaned, when it is a path on this site, ""
// otherwise: an absolute path with no scheme or host, no backslash (which
// browsers read as a slash) and no control character (which they drop).
func localPath(p string) string {
	if strings.ContainsFunc(p, func(r rune) bool { return r == '\\' || r < 0x20 || r == 0x7f }) {
		return ""
	}
	u, err := url.Parse(p)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || !strings.HasPrefix(u.Path, "/") || strings.Contains(u.Path, "\\") {
		return ""
	}
	if strings.HasPrefix(p, "//") {
		return ""
	}
	c := path.Clean(u.Path) // never begins with "//"
	if u.RawQuery != "" {
		c += "?" + u.RawQuery
	}
	return c
}
