package oauthtest

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// Post posts form, with the client's credentials, to the provider's
// endpoint path and returns its JSON answer; "error" is "" on success.
func (op *OP) Post(t testing.TB, path string, form url.Values) map[string]any {
	t.Helper()
	form.Set("client_id", op.ClientID)
	form.Set("client_secret", op.ClientSecret)
	resp, err := http.PostForm(op.Issuer+path, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{"error": ""}
	if len(bytes.TrimSpace(body)) > 0 {
		if err := json.Unmarshal(body, &out); err != nil {
			t.Fatalf("%s answered %s: %s", path, resp.Status, body)
		}
	}
	if resp.StatusCode != http.StatusOK && out["error"] == "" {
		t.Fatalf("%s answered %s: %s", path, resp.Status, body)
	}
	return out
}

// TokenCounter is an http.RoundTripper that counts the requests reaching a
// token endpoint (a path ending in /token) and passes every request on.
type TokenCounter struct {
	Tokens atomic.Int64
}

func (c *TokenCounter) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.HasSuffix(r.URL.Path, "/token") {
		c.Tokens.Add(1)
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Gate is a reverse proxy in front of the provider's token and revocation
// endpoints. It passes requests through, except that it answers the next
// ones with the faults queued, and every one with a fault while FailAll has
// set one, without passing them on.
type Gate struct {
	*httptest.Server
	Tokens  atomic.Int64 // requests to /token
	Revokes atomic.Int64 // requests to /token/revocation
	Passed  atomic.Int64 // requests passed to the provider

	mu    sync.Mutex
	queue []Fault
	fail  Fault
}

// Fault answers a request in place of the provider.
type Fault func(w http.ResponseWriter)

// NewGate starts a Gate in front of the provider at issuer, closed when the
// test ends.
func NewGate(t testing.TB, issuer string) *Gate {
	t.Helper()
	target, err := url.Parse(issuer)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }}
	g := &Gate{}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token":
			g.Tokens.Add(1)
		case "/token/revocation":
			g.Revokes.Add(1)
		}
		g.mu.Lock()
		f := g.fail
		if f == nil && len(g.queue) > 0 {
			f, g.queue = g.queue[0], g.queue[1:]
		}
		g.mu.Unlock()
		if f != nil {
			f(w)
			return
		}
		g.Passed.Add(1)
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(g.Close)
	return g
}

// Next queues faults for the next requests.
func (g *Gate) Next(fs ...Fault) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.queue = append(g.queue, fs...)
}

// Reset drops the faults queued.
func (g *Gate) Reset() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.queue = nil
}

// FailAll answers every request with f until it is called with nil.
func (g *Gate) FailAll(f Fault) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.fail = f
}

// Answer is a Fault answering status with a JSON body and headers given as
// name, value pairs.
func Answer(status int, body string, header ...string) Fault {
	return func(w http.ResponseWriter) {
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}
