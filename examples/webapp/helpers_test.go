package main

import (
	"bytes"
	"context"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
)

// startApp runs the app on a loopback server, with its data in a new
// temporary directory unless cfg says otherwise; it stops when the test
// ends.
func startApp(t testing.TB, cfg config) *app {
	t.Helper()
	return serve(t, listen(), cfg)
}

// listen returns a server to pass to serve, for a test that needs the
// app's URL first.
func listen() *httptest.Server { return httptest.NewUnstartedServer(nil) }

func serve(t testing.TB, srv *httptest.Server, cfg config) *app {
	t.Helper()
	cfg.PublicURL = "http://" + srv.Listener.Addr().String()
	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}
	a, err := newApp(context.Background(), cfg)
	if err != nil {
		srv.Listener.Close()
		t.Fatal(err)
	}
	srv.Config.Handler = a
	srv.Start()
	t.Cleanup(func() {
		a.cancel() // ends event streams and long-polls
		srv.CloseClientConnections()
		srv.Close()
		a.Close()
	})
	return a
}

// client plays a browser: a cookie jar, and the CSRF token of the last
// page it read.
type client struct {
	t    testing.TB
	base string
	http *http.Client
	csrf string
}

func newClient(t testing.TB, a *app) *client {
	jar, _ := cookiejar.New(nil)
	return &client{t: t, base: a.cfg.PublicURL, http: &http.Client{Jar: jar, Timeout: 30 * time.Second}}
}

// page is an answer: its status, final URL (after redirects) and body.
type page struct {
	status int
	url    *url.URL
	body   string
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func (c *client) do(req *http.Request) page {
	c.t.Helper()
	resp, err := c.http.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatal(err)
	}
	p := page{status: resp.StatusCode, url: resp.Request.URL, body: string(b)}
	if m := csrfField.FindStringSubmatch(p.body); m != nil {
		c.csrf = m[1]
	}
	return p
}

func (c *client) get(path string) page {
	c.t.Helper()
	req, err := http.NewRequest(http.MethodGet, c.base+path, nil)
	if err != nil {
		c.t.Fatal(err)
	}
	return c.do(req)
}

// post submits a form with the client's CSRF token, unless form sets
// "csrf" itself, following the redirect.
func (c *client) post(path string, form url.Values) page {
	c.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok {
		form.Set("csrf", c.csrf)
	}
	req, err := http.NewRequest(http.MethodPost, c.base+path, strings.NewReader(form.Encode()))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return c.do(req)
}

// api calls the admin API as the page's script does.
func (c *client) api(method, path string, body any) (int, map[string]any) {
	c.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+"/api"+path, r)
	if err != nil {
		c.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	p := c.do(req)
	var out map[string]any
	_ = json.Unmarshal([]byte(p.body), &out)
	return p.status, out
}

// signin signs the client in to tenant id.
func (c *client) signin(id string) {
	c.t.Helper()
	p := c.post("/signin", url.Values{"tenant": {id}, "csrf": nil})
	if p.status != http.StatusOK || p.url.Path != "/connections" {
		c.t.Fatalf("sign in to %s: %d %s", id, p.status, p.url)
	}
}

var (
	liveStatus  = regexp.MustCompile(`data-testid="status" data-status="([a-z]+)"`)
	codeArea    = regexp.MustCompile(`(?s)<textarea class="code" id="invitation-code" readonly>(.*?)</textarea>`)
	eventTypes  = regexp.MustCompile(`data-testid="event" data-type="([a-z_]+)"`)
	connRowID   = regexp.MustCompile(`data-testid="connection" data-id="([^"]+)"`)
	flashText   = regexp.MustCompile(`data-testid="flash">([^<]*)<`)
	formProblem = regexp.MustCompile(`data-testid="form-error">([^<]*)<`)
)

// status is the status a connection page shows.
func status(t testing.TB, p page) string {
	t.Helper()
	m := liveStatus.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("%s shows no status (%d):\n%s", p.url, p.status, p.body)
	}
	return m[1]
}

func flashOf(p page) string {
	if m := flashText.FindStringSubmatch(p.body); m != nil {
		return html.UnescapeString(m[1])
	}
	return ""
}

// events are the event types a details page lists, newest first.
func events(p page) []string {
	var out []string
	for _, m := range eventTypes.FindAllStringSubmatch(p.body, -1) {
		out = append(out, m[1])
	}
	return out
}

// rowIDs are the connections a list page shows.
func rowIDs(p page) []string {
	var out []string
	for _, m := range connRowID.FindAllStringSubmatch(p.body, -1) {
		out = append(out, m[1])
	}
	return out
}

// initiate runs the Initiate connection wizard with "I don't have a URL"
// and returns the connection's ID and its invitation code.
func (c *client) initiate(name string) (string, string) {
	c.t.Helper()
	if p := c.get("/connections/initiate"); p.status != http.StatusOK || !strings.Contains(p.body, `id="no-url"`) {
		c.t.Fatalf("initiate page: %d\n%s", p.status, p.body)
	}
	p := c.post("/connections/initiate/destination", url.Values{"no_url": {"1"}})
	for _, m := range []string{"basic", "visual", "script"} {
		if !strings.Contains(p.body, `id="mode-`+m+`"`) {
			c.t.Fatalf("a private destination: mode %s is not offered:\n%s", m, p.body)
		}
	}
	p = c.post("/connections/initiate/mode", url.Values{"mode": {"script"}, "destination": {""}, "dest_name": {""}})
	if p.status != http.StatusOK || !strings.Contains(p.body, `id="local-name"`) {
		c.t.Fatalf("details step: %d\n%s", p.status, p.body)
	}
	p = c.post("/connections/initiate", url.Values{
		"mode": {"script"}, "destination": {""}, "local_name": {"Support"}, "remote_name": {"Field Agent"},
		"name": {name}, "description": {"Escalations to the field"},
	})
	m := codeArea.FindStringSubmatch(p.body)
	if p.status != http.StatusOK || m == nil || !strings.HasSuffix(p.url.Path, "/invitation") {
		c.t.Fatalf("initiate: %d %s\n%s", p.status, p.url, p.body)
	}
	id := strings.TrimSuffix(strings.TrimPrefix(p.url.Path, "/connections/"), "/invitation")
	return id, html.UnescapeString(m[1])
}

// agent is a private tether instance in this process, as examples/agent
// runs one: no endpoint, it only makes outgoing requests.
type agent struct {
	node *tether.Node
	mu   sync.Mutex
	got  []string
}

func startAgent(t testing.TB) *agent {
	t.Helper()
	ag := &agent{}
	policy := tether.URLPolicy{AllowHTTP: true, AllowLoopback: true}
	node, err := tether.Open(context.Background(), tether.Config{
		Store:     memstore.New(),
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		URLPolicy: policy,
		AdminURL:  "https://agent.example/admin",
		Receiver: tether.ReceiverFunc(func(_ context.Context, m tether.Message) error {
			ag.mu.Lock()
			defer ag.mu.Unlock()
			ag.got = append(ag.got, string(m.Payload))
			return nil
		}),
	})
	if err != nil {
		t.Fatal(err)
	}
	ag.node = node
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = node.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ag
}

func (ag *agent) received() []string {
	ag.mu.Lock()
	defer ag.mu.Unlock()
	return append([]string(nil), ag.got...)
}

// eventually polls cond until it holds, failing the test after d.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func regexpMust(expr string) *regexp.Regexp { return regexp.MustCompile(expr) }
