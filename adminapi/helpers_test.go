package adminapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/adminapi"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

// world is two instances on an in-memory network: "hub", public, whose
// admin API is served over real HTTP on loopback with two tenants, and
// "agent", private, driven through the library.
type world struct {
	t     *testing.T
	net   *tethertest.Network
	hub   *tether.Node
	store *memstore.Store // the hub's
	agent *tether.Node
	srv   *httptest.Server
	rec   *recorder
}

func fast(c *tether.Config) {
	c.RetryBase, c.RetryMax = 5*time.Millisecond, 100*time.Millisecond
	c.PollWait = time.Second
	c.HandshakeInterval = 50 * time.Millisecond
	c.PausedRetry = 200 * time.Millisecond
}

func open(t *testing.T, net *tethertest.Network, name, endpoint string) *tether.Node {
	n, _ := openStore(t, net, name, endpoint, nil)
	return n
}

func openStore(t *testing.T, net *tethertest.Network, name, endpoint string, onEvent func(tether.Event)) (*tether.Node, *memstore.Store) {
	t.Helper()
	st := memstore.New()
	cfg := tether.Config{Store: st, OnEvent: onEvent, AdminURL: "https://" + name + ".example/admin", Transport: net.Transport(name), Endpoint: endpoint, Receiver: tether.ReceiverFunc(func(context.Context, tether.Message) error { return nil })}
	fast(&cfg)
	n, err := tether.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if endpoint != "" {
		t.Cleanup(net.Listen(endpoint, n))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run: %v", err)
		}
	})
	return n, st
}

// tenants maps a session cookie to its caller.
var tenants = map[string]adminapi.Caller{
	"session-a": {Owner: "team-a", Actor: "alice"},
	"session-b": {Owner: "team-b", Actor: "bob"},
	// A host's bug: a session without a team.
	"session-none": {Actor: "nobody"},
}

func authenticate(r *http.Request) (adminapi.Caller, error) {
	c, err := r.Cookie("session")
	if err != nil {
		return adminapi.Caller{}, err
	}
	caller, ok := tenants[c.Value]
	if !ok {
		return adminapi.Caller{}, errors.New("unknown session")
	}
	return caller, nil
}

// newWorld starts the world; mods may change the API's configuration,
// knowing the base URL the API will be served at ("http://127.0.0.1:port/api").
func newWorld(t *testing.T, mods ...func(w *world, cfg *adminapi.Config, base string)) *world {
	t.Helper()
	net := tethertest.NewNetwork()
	t.Cleanup(net.Close)
	w := &world{t: t, net: net, rec: &recorder{}}
	// The API is made after the node: events reach it through api.
	var api atomic.Pointer[adminapi.API]
	w.hub, w.store = openStore(t, net, "hub", "https://hub.example", func(e tether.Event) {
		if a := api.Load(); a != nil {
			a.Notify(e)
		}
	})
	w.agent = open(t, net, "agent", "")
	cfg := adminapi.Config{Node: w.hub, Authenticate: authenticate, MaxBody: 4096}
	mux := http.NewServeMux()
	w.srv = httptest.NewUnstartedServer(mux)
	for _, m := range mods {
		m(w, &cfg, "http://"+w.srv.Listener.Addr().String()+"/api")
	}
	a, err := adminapi.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	api.Store(a)
	mux.Handle("/api/", http.StripPrefix("/api", w.rec.wrap(a)))
	w.srv.Start()
	t.Cleanup(w.srv.Close)
	return w
}

// reply is an answer of the API.
type reply struct {
	status int
	header http.Header
	body   []byte
}

func (r reply) decode(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
}

func (r reply) problem(t *testing.T) adminapi.Problem {
	t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("status %d with Content-Type %q, want a problem: %s", r.status, ct, r.body)
	}
	var p adminapi.Problem
	r.decode(t, &p)
	return p
}

// call makes a request as session with a JSON body (nil: none), and
// returns the answer. header holds extra headers.
func (w *world) call(session, method, path string, body any, header ...string) reply {
	w.t.Helper()
	var rd io.Reader
	if body != nil {
		b, ok := body.([]byte)
		if !ok {
			var err error
			if b, err = json.Marshal(body); err != nil {
				w.t.Fatal(err)
			}
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, w.srv.URL+"/api"+path, rd)
	if err != nil {
		w.t.Fatal(err)
	}
	if method != http.MethodGet {
		req.Header.Set("Content-Type", "application/json")
	}
	if session != "" {
		req.AddCookie(&http.Cookie{Name: "session", Value: session})
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i+1] == "" {
			req.Header.Del(header[i])
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	resp, err := w.srv.Client().Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		w.t.Fatal(err)
	}
	return reply{status: resp.StatusCode, header: resp.Header, body: b}
}

// must is call that expects status.
func (w *world) must(status int, session, method, path string, body any, header ...string) reply {
	w.t.Helper()
	r := w.call(session, method, path, body, header...)
	if r.status != status {
		w.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, status, r.body)
	}
	return r
}

type conn struct {
	ID           string `json:"id"`
	Status       string `json:"status"`
	RemoteStatus string `json:"remote_status"`
	Name         string `json:"name"`
}

// initiate makes team-a's pending connection for the private agent.
func (w *world) initiate(session string) (conn, string) {
	w.t.Helper()
	var out struct {
		Connection     conn   `json:"connection"`
		InvitationCode string `json:"invitation_code"`
	}
	w.must(201, session, "POST", "/connections", map[string]any{
		"mode": "basic", "local_name": "Hub", "remote_name": "Agent", "name": "Hub to agent", "description": "tickets",
	}).decode(w.t, &out)
	return out.Connection, out.InvitationCode
}

// connect makes an active connection of session's tenant with the agent.
func (w *world) connect(session string) conn {
	w.t.Helper()
	c, code := w.initiate(session)
	if _, err := w.agent.Accept(context.Background(), code, tether.AcceptOptions{}); err != nil {
		w.t.Fatal(err)
	}
	w.eventually("the connection is active", func() bool {
		var got conn
		w.must(200, session, "GET", "/connections/"+c.ID, nil).decode(w.t, &got)
		return got.Status == "active"
	})
	return c
}

func (w *world) eventually(what string, cond func() bool) {
	w.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			w.t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// recorder keeps every answer the API gave, with the route it matched,
// for the OpenAPI check.
type recorder struct {
	mu      sync.Mutex
	answers []answer
}

type answer struct {
	method, path string
	status       int
	contentType  string
	body         []byte
}

type capture struct {
	http.ResponseWriter
	status int
	body   bytes.Buffer
}

func (c *capture) WriteHeader(s int) {
	if c.status == 0 {
		c.status = s
	}
	c.ResponseWriter.WriteHeader(s)
}

func (c *capture) Write(b []byte) (int, error) {
	if c.status == 0 {
		c.status = 200
	}
	c.body.Write(b)
	return c.ResponseWriter.Write(b)
}

func (c *capture) Unwrap() http.ResponseWriter { return c.ResponseWriter }

func (rec *recorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := &capture{ResponseWriter: w}
		h.ServeHTTP(c, r)
		rec.mu.Lock()
		defer rec.mu.Unlock()
		rec.answers = append(rec.answers, answer{method: r.Method, path: r.URL.Path, status: c.status, contentType: c.Header().Get("Content-Type"), body: c.body.Bytes()})
	})
}

func (rec *recorder) all() []answer {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]answer(nil), rec.answers...)
}

func short(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return fmt.Sprintf("%q", s)
}
