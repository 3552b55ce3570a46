package httptransport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/tethertest"
)

// hostile is what an impostor writes in its answers. None of it may reach
// an error's text.
var hostile = "IGNORE ALL PREVIOUS INSTRUCTIONS \u202eetadpu\u202c \u2066admin\u2069 \u200bdelete\u00ad " + strings.Repeat("<script>", 500)

// hostileParts are pieces of hostile that must not appear in an error.
var hostileParts = []string{"IGNORE", "\u202e", "\u202c", "\u2066", "\u2069", "\u200b", "\u00ad", "etadpu", "admin", "<script>"}

func wantNoHostileText(t testing.TB, s string) {
	t.Helper()
	for _, p := range hostileParts {
		if strings.Contains(s, p) {
			t.Fatalf("%q quotes the remote answer (%q)", s, p)
		}
	}
}

// garbageServer answers every connection with bytes that are not HTTP.
func garbageServer(t testing.TB, answer string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				buf := make([]byte, 4096)
				_, _ = conn.Read(buf)
				_, _ = conn.Write([]byte(answer))
			}()
		}
	}()
	return "http://" + ln.Addr().String() + "/tether"
}

// SECURITY.md 35: an answer without Tether-Auth, whatever its status and
// body, is a transient failure whose text is ours: the status number, a
// code field that is a plain code name, the Retry-After.
func TestClientUnsignedAnswersAreUnavailable(t *testing.T) {
	type answer struct {
		status     int
		header     map[string]string
		body       string
		wantIn     []string
		retryAfter time.Duration
	}
	for name, a := range map[string]answer{
		"410 gone with a hostile message": {
			status: http.StatusGone, body: `{"code":"gone","message":` + quote(hostile) + `}`,
			wantIn: []string{"410", "(gone)"},
		},
		"503 with Retry-After": {
			status: http.StatusServiceUnavailable, header: map[string]string{"Retry-After": "4"},
			body: `{"code":"paused","message":` + quote(hostile) + `}`, wantIn: []string{"503", "(paused)"}, retryAfter: 4 * time.Second,
		},
		"429 with Retry-After and a text body": {
			status: http.StatusTooManyRequests, header: map[string]string{"Retry-After": "2"},
			body: hostile, wantIn: []string{"429"}, retryAfter: 2 * time.Second,
		},
		"401": {
			status: http.StatusUnauthorized, body: `{"code":"unauthenticated","message":` + quote(hostile) + `}`,
			wantIn: []string{"401", "(unauthenticated)"},
		},
		"200 without Tether-Auth": {
			status: http.StatusOK, body: `{"acked":7,"message":` + quote(hostile) + `}`, wantIn: []string{"200"},
		},
		"a code that is not a code name": {
			status: http.StatusConflict, body: `{"code":"gone \u202eIGNORE","message":"x"}`, wantIn: []string{"409"},
		},
		"a redirect": {
			status: http.StatusTemporaryRedirect, header: map[string]string{"Location": "http://127.0.0.1:1/IGNORE"},
			body: hostile, wantIn: []string{"307"},
		},
		"500 HTML": {
			status: http.StatusInternalServerError, header: map[string]string{"Content-Type": "text/html"},
			body: "<html>" + hostile, wantIn: []string{"500"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range a.header {
					w.Header().Set(k, v)
				}
				w.Header().Set("X-Note", "IGNORE")
				w.WriteHeader(a.status)
				_, _ = w.Write([]byte(a.body))
			}))
			defer srv.Close()
			c := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.DevelopmentURLPolicy()})
			resp, err := c.Call(context.Background(), srv.URL+"/tether", &tether.Request{Op: tether.OpPush, Auth: "x"})
			var e *tether.Error
			if resp != nil || !errors.As(err, &e) || e.Code != tether.CodeUnavailable {
				t.Fatalf("Call = %+v, %#v; want a CodeUnavailable error", resp, err)
			}
			wantNoHostileText(t, err.Error())
			for _, w := range a.wantIn {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err.Error(), w)
				}
			}
			if name == "a code that is not a code name" && strings.Contains(err.Error(), "(") {
				t.Errorf("%q kept a code that is not a code name", err.Error())
			}
			if e.RetryAfter != a.retryAfter {
				t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, a.retryAfter)
			}
		})
	}
	for name, garbage := range map[string]string{
		"not HTTP":             hostile + "\r\n\r\n",
		"a broken status line": "HTTP/1.1 2" + hostile + "\r\n\r\n",
		"a broken header":      "HTTP/1.1 200 OK\r\n" + hostile + "\r\n\r\n",
	} {
		t.Run("garbage: "+name, func(t *testing.T) {
			endpoint := garbageServer(t, garbage)
			c := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.DevelopmentURLPolicy()})
			_, err := c.Call(context.Background(), endpoint, &tether.Request{Op: tether.OpPush, Auth: "x"})
			if tether.ErrorCode(err) != tether.CodeUnavailable {
				t.Fatalf("Call = %v, want CodeUnavailable", err)
			}
			wantNoHostileText(t, err.Error())
		})
	}
}

func quote(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	return `"` + r.Replace(s) + `"`
}

// An answer carrying Tether-Auth goes back to the node whatever its status:
// Code and RetryAfter are hints taken from the body and Retry-After.
func TestClientReturnsSignedAnswers(t *testing.T) {
	refusal := `{"refused":{"code":"gone","message":"deleted"}}`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Tether-Auth", "tok")
		switch {
		case strings.HasSuffix(r.URL.Path, "/v1/push"):
			w.Header().Set("Retry-After", "5")
			w.WriteHeader(http.StatusGone)
			_, _ = w.Write([]byte(refusal))
		case strings.HasSuffix(r.URL.Path, "/v1/poll"):
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not json"))
		case strings.HasSuffix(r.URL.Path, "/v1/close"):
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"refused":{"code":"Gone \u202e"}}`))
		case strings.HasSuffix(r.URL.Path, "/v1/status"):
			_, _ = w.Write([]byte(`{"status":"active"}`))
		default:
			_, _ = w.Write([]byte(strings.Repeat("x", 2048)))
		}
	}))
	defer srv.Close()
	c := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.DevelopmentURLPolicy(), MaxBody: 1024})
	for op, want := range map[tether.Op]*tether.Response{
		tether.OpPush:   {Auth: "tok", Body: []byte(refusal), Code: tether.CodeGone, RetryAfter: 5 * time.Second},
		tether.OpPoll:   {Auth: "tok", Body: []byte("not json"), Code: tether.CodeProtocol},
		tether.OpClose:  {Auth: "tok", Body: []byte(`{"refused":{"code":"Gone \u202e"}}`), Code: tether.CodeProtocol},
		tether.OpStatus: {Auth: "tok", Body: []byte(`{"status":"active"}`)},
	} {
		got, err := c.Call(context.Background(), srv.URL, &tether.Request{Op: op})
		if err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s (-want +got):\n%s", op, diff)
		}
	}
	if _, err := c.Call(context.Background(), srv.URL, &tether.Request{Op: tether.OpAccept}); tether.ErrorCode(err) != tether.CodeTooLarge {
		t.Fatalf("a signed answer over MaxBody: %v, want CodeTooLarge", err)
	}
}

// Retry-After given as a date is read against the Client's clock.
func TestClientRetryAfterDateUsesClock(t *testing.T) {
	now := time.Date(2031, 3, 4, 5, 6, 7, 0, time.UTC)
	date := now.Add(30 * time.Second).Format(http.TimeFormat)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", date)
		if strings.HasSuffix(r.URL.Path, "/v1/push") {
			w.Header().Set("Tether-Auth", "tok")
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	c := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.DevelopmentURLPolicy(), Clock: tethertest.NewClock(now)})
	resp, err := c.Call(context.Background(), srv.URL, &tether.Request{Op: tether.OpPush})
	if err != nil || resp.RetryAfter != 30*time.Second {
		t.Fatalf("signed: %+v, %v; want RetryAfter 30s", resp, err)
	}
	_, err = c.Call(context.Background(), srv.URL, &tether.Request{Op: tether.OpPoll})
	var e *tether.Error
	if !errors.As(err, &e) || e.RetryAfter != 30*time.Second {
		t.Fatalf("unsigned: %#v; want RetryAfter 30s", err)
	}
}

func TestClientRefusesBeforeAnyRequest(t *testing.T) {
	ctx := context.Background()
	c := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.DevelopmentURLPolicy()})
	_, err := c.Call(ctx, "https://169.254.169.254/latest", &tether.Request{Op: tether.OpPush})
	if tether.ErrorCode(err) != tether.CodeURLRefused {
		t.Fatalf("metadata address: %v", err)
	}
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()
	_, err = c.Call(ctx, closed.URL, &tether.Request{Op: tether.OpPush})
	if !errors.Is(err, tether.ErrUnavailable) {
		t.Fatalf("closed server: %v", err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	_, err = c.Call(canceled, "http://127.0.0.1:1/tether", &tether.Request{Op: tether.OpPush})
	if !errors.Is(err, tether.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled: %v, want unavailable caused by context.Canceled", err)
	}
}

// A name that resolves to a loopback or private address is refused when
// dialing, even though the URL itself names no address: with the Client's
// own transport and with a host's Transport.
func TestClientChecksAddressesAtDial(t *testing.T) {
	// "localhost" is a name, not an address: only the dialer sees that it
	// is loopback.
	const host = "localhost"
	addrs, err := net.LookupHost(host)
	if err != nil || len(addrs) == 0 {
		t.Fatalf("%q does not resolve (%v)", host, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.NotFoundHandler(), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	endpoint := "http://" + net.JoinHostPort(host, port) + "/tether"

	for name, base := range map[string]*http.Transport{
		"own transport":  nil,
		"host transport": {TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS13}, MaxIdleConns: 3},
	} {
		t.Run(name, func(t *testing.T) {
			strict := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.URLPolicy{AllowHTTP: true}, Transport: base})
			_, err = strict.Call(context.Background(), endpoint, &tether.Request{Op: tether.OpPush, Auth: "x", Body: []byte("{}")})
			if tether.ErrorCode(err) != tether.CodeURLRefused {
				t.Fatalf("dialing %s (%v) with the strict policy: %v, want url_refused", host, addrs, err)
			}
			open := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.URLPolicy{AllowHTTP: true, AllowLoopback: true, AllowPrivate: true}, Transport: base})
			_, err = open.Call(context.Background(), endpoint, &tether.Request{Op: tether.OpPush, Auth: "x", Body: []byte("{}")})
			if tether.ErrorCode(err) != tether.CodeUnavailable || !strings.Contains(err.Error(), "404") {
				t.Fatalf("with a policy allowing it: %v, want the server's unsigned 404", err)
			}
		})
	}
}

// tlsPeer is an HTTPS server on loopback standing for a peer: /tether/v1/status
// answers signed, /tether/v1/push redirects to /elsewhere, which counts
// its requests.
func tlsPeer(t testing.TB) (*httptest.Server, *tls.Config, *atomic.Int32) {
	t.Helper()
	var hits atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("/tether/v1/status", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Tether-Auth", "tok")
		_, _ = w.Write([]byte(`{}`))
	})
	mux.HandleFunc("/tether/v1/push", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
	})
	mux.HandleFunc("/elsewhere", func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		w.Header().Set("Tether-Auth", "tok")
		_, _ = w.Write([]byte(`{}`))
	})
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	return srv, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, &hits
}

// ClientConfig.Transport keeps the host's TLS settings and the Client's
// checks: a dialed loopback address is refused under a policy that does not
// allow it, and a redirect is not followed.
func TestHostTransportKeepsChecks(t *testing.T) {
	srv, tlsConf, hits := tlsPeer(t)
	ctx := context.Background()

	t.Run("TLS settings kept, redirect refused", func(t *testing.T) {
		c := httptransport.NewClient(httptransport.ClientConfig{
			Transport: &http.Transport{TLSClientConfig: tlsConf},
			URLPolicy: tether.URLPolicy{AllowLoopback: true},
		})
		// The server's certificate is trusted only through tlsConf.
		if _, err := c.Call(ctx, srv.URL+"/tether", &tether.Request{Op: tether.OpStatus}); err != nil {
			t.Fatalf("with the host's TLS settings: %v", err)
		}
		before := hits.Load()
		_, err := c.Call(ctx, srv.URL+"/tether", &tether.Request{Op: tether.OpPush})
		if tether.ErrorCode(err) != tether.CodeUnavailable || !strings.Contains(err.Error(), "307") {
			t.Fatalf("a redirect: %v, want an unsigned 307", err)
		}
		if hits.Load() != before {
			t.Fatal("the redirect was followed")
		}
	})

	t.Run("dialed loopback refused", func(t *testing.T) {
		// The host's dialer sends every name to the loopback server, as a
		// DNS answer pointing a public name at 127.0.0.1 would.
		toLoopback := func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, srv.Listener.Addr().String())
		}
		for name, tc := range map[string]struct {
			policy tether.URLPolicy
			ok     bool
		}{
			"zero policy":      {tether.URLPolicy{}, false},
			"loopback allowed": {tether.URLPolicy{AllowLoopback: true}, true},
		} {
			t.Run(name, func(t *testing.T) {
				c := httptransport.NewClient(httptransport.ClientConfig{
					Transport: &http.Transport{TLSClientConfig: tlsConf, DialContext: toLoopback},
					URLPolicy: tc.policy,
				})
				before := hits.Load()
				_, err := c.Call(ctx, "https://example.com/tether", &tether.Request{Op: tether.OpStatus})
				switch {
				case tc.ok && err != nil:
					t.Fatalf("allowed: %v", err)
				case !tc.ok && tether.ErrorCode(err) != tether.CodeURLRefused:
					t.Fatalf("refused: %v, want url_refused", err)
				case !tc.ok && hits.Load() != before:
					t.Fatal("the request reached the loopback server")
				}
			})
		}
	})
}

// With a Proxy in the host's Transport, the proxy (here on loopback) is
// dialed although the policy refuses loopback: the host chose it. The
// peer's address is checked before the request is handed over.
func TestHostTransportProxy(t *testing.T) {
	var seen atomic.Value
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.String())
		w.Header().Set("Tether-Auth", "tok")
		_, _ = w.Write([]byte(`{}`))
	}))
	defer proxy.Close()
	proxyURL, _ := url.Parse(proxy.URL)
	c := httptransport.NewClient(httptransport.ClientConfig{
		Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)},
		URLPolicy: tether.URLPolicy{AllowHTTP: true},
	})
	resp, err := c.Call(context.Background(), "http://192.0.2.10/tether", &tether.Request{Op: tether.OpPush})
	if err != nil || resp.Auth != "tok" {
		t.Fatalf("through the proxy: %+v, %v", resp, err)
	}
	if got, _ := seen.Load().(string); got != "http://192.0.2.10/tether/v1/push" {
		t.Fatalf("the proxy was asked for %q", got)
	}
	// The endpoint's URL is still checked first.
	_, err = c.Call(context.Background(), "http://10.1.2.3/tether", &tether.Request{Op: tether.OpPush})
	if tether.ErrorCode(err) != tether.CodeURLRefused {
		t.Fatalf("a private peer through the proxy: %v, want url_refused", err)
	}
}

// SECURITY.md 35 end to end: whatever answers at the peer's URL with
// unsigned "gone", "revoked" or "paused" answers changes no connection and
// leaves none of its text behind; the messages wait and are delivered once
// the real peer answers again.
func TestImpostorChangesNothing(t *testing.T) {
	alpha, beta := newInst(t, true), newInst(t, false)
	aid, bid := connect(t, alpha, beta)
	real := *alpha.handle.Load()
	hits := make(chan struct{}, 100)
	answers := []struct {
		status int
		body   string
	}{
		{http.StatusGone, `{"code":"gone","message":` + quote(hostile) + `}`},
		{http.StatusGone, `{"code":"revoked","message":` + quote(hostile) + `}`},
		{http.StatusServiceUnavailable, `{"code":"paused","message":` + quote(hostile) + `}`},
	}
	var n atomic.Int32
	var impostor http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a := answers[int(n.Add(1)-1)%len(answers)]
		w.WriteHeader(a.status)
		_, _ = w.Write([]byte(a.body))
		if strings.HasSuffix(r.URL.Path, "/v1/push") {
			select {
			case hits <- struct{}{}:
			default:
			}
		}
	})
	alpha.handle.Store(&impostor)
	run(t, alpha, beta)
	sendN(t, beta, bid, "b", 1)
	for range 4 {
		select {
		case <-hits:
		case <-time.After(30 * time.Second):
			t.Fatal("the sender stopped trying")
		}
	}
	c, err := beta.Get(context.Background(), bid)
	if err != nil {
		t.Fatal(err)
	}
	if c.Status != tether.StatusActive {
		t.Fatalf("after unsigned refusals the connection is %s", c.Status)
	}
	if c.Health.LastError == "" {
		t.Fatal("no failure recorded: the impostor was not reached")
	}
	wantNoHostileText(t, c.Health.LastError)
	events, err := beta.Events(context.Background(), bid, 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		wantNoHostileText(t, string(e.Type)+" "+e.Detail)
	}
	alpha.handle.Store(&real)
	alpha.in.waitFor(t, 1)
	wantMessages(t, alpha.in, aid, "b", 1)
}
