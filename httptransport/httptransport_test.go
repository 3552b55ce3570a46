package httptransport_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

// inbox records received messages per connection.
type inbox struct {
	mu     sync.Mutex
	got    map[string][]string
	total  int
	notify chan struct{}
}

func newInbox() *inbox { return &inbox{got: map[string][]string{}, notify: make(chan struct{}, 1)} }

func (in *inbox) Receive(_ context.Context, m tether.Message) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if want := int64(len(in.got[m.ConnectionID]) + 1); m.Seq != want {
		return fmt.Errorf("seq %d, want %d", m.Seq, want)
	}
	in.got[m.ConnectionID] = append(in.got[m.ConnectionID], string(m.Payload))
	in.total++
	select {
	case in.notify <- struct{}{}:
	default:
	}
	return nil
}

func (in *inbox) waitFor(t testing.TB, n int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		in.mu.Lock()
		got := in.total
		in.mu.Unlock()
		if got >= n {
			return
		}
		select {
		case <-in.notify:
		case <-deadline:
			t.Fatalf("received %d messages, want %d", got, n)
		}
	}
}

func (in *inbox) messages(id string) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]string(nil), in.got[id]...)
}

// inst is a node with its HTTP plumbing.
type inst struct {
	*tether.Node
	store  *memstore.Store
	in     *inbox
	srv    *httptest.Server
	handle atomic.Pointer[http.Handler] // what the server serves; swappable
	rt     *recorder
}

type option func(*tether.Config)

// newInst starts an instance; public ones get a loopback HTTP server and an
// endpoint under the /tether/ prefix.
func newInst(t testing.TB, public bool, opts ...option) *inst {
	t.Helper()
	in := &inst{store: memstore.New(), in: newInbox(), rt: &recorder{next: http.DefaultTransport}}
	cfg := tether.Config{
		Store:     in.store,
		Receiver:  in.in,
		URLPolicy: tether.DevelopmentURLPolicy(),
		Transport: httptransport.NewClient(httptransport.ClientConfig{
			HTTPClient: &http.Client{Transport: in.rt},
			URLPolicy:  tether.DevelopmentURLPolicy(),
		}),
		RetryBase: time.Millisecond, RetryMax: 50 * time.Millisecond,
	}
	if public {
		in.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			(*in.handle.Load()).ServeHTTP(w, r)
		}))
		t.Cleanup(in.srv.Close)
		cfg.Endpoint = in.srv.URL + "/tether"
	}
	for _, o := range opts {
		o(&cfg)
	}
	n, err := tether.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	in.Node = n
	mux := http.NewServeMux()
	mux.Handle("/tether/", httptransport.NewHandler(n, httptransport.HandlerConfig{}))
	var h http.Handler = mux
	in.handle.Store(&h)
	return in
}

// recorder is an http.RoundTripper that forwards requests, or, while
// capturing, keeps them (with their bodies) and fails them.
type recorder struct {
	next      http.RoundTripper
	capturing atomic.Bool
	mu        sync.Mutex
	captured  []*captured
}

type captured struct {
	method, url string
	header      http.Header
	body        []byte
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if !r.capturing.Load() {
		return r.next.RoundTrip(req)
	}
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	r.captured = append(r.captured, &captured{req.Method, req.URL.String(), req.Header.Clone(), body})
	r.mu.Unlock()
	return nil, errors.New("captured")
}

// capture returns the first captured request for op, waiting for it.
func (r *recorder) capture(t testing.TB, op tether.Op, skip int) *captured {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r.mu.Lock()
		seen := 0
		for _, c := range r.captured {
			if strings.HasSuffix(c.url, "/v1/"+string(op)) {
				if seen == skip {
					r.mu.Unlock()
					return c
				}
				seen++
			}
		}
		r.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no %s request captured", op)
	return nil
}

// send posts a (possibly modified) captured request straight to a server.
func send(t testing.TB, method, url string, header http.Header, body []byte) (*http.Response, errBody) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header.Clone()
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e errBody
	raw, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(raw, &e)
	return resp, e
}

// errBody is an unsigned error answer, or, in Refused, the refusal a
// signed answer carries.
type errBody struct {
	Code    tether.Code `json:"code"`
	Message string      `json:"message"`
	Refused *struct {
		Code    tether.Code `json:"code"`
		RetryMS int64       `json:"retry_ms"`
	} `json:"refused"`
}

func run(t testing.TB, nodes ...*inst) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() { done <- n.Run(ctx) }()
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			for range nodes {
				<-done
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func initiate(t testing.TB, a *inst, dest string) (*tether.Connection, string) {
	t.Helper()
	c, code, err := a.Initiate(context.Background(), tether.InitiateRequest{
		Destination: dest, Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, code
}

func connect(t testing.TB, a, b *inst) (string, string) {
	t.Helper()
	dest := b.Endpoint()
	ac, code := initiate(t, a, dest)
	bc, err := b.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("Accept over HTTP: %v", err)
	}
	if a.Endpoint() == "" {
		if err := a.Sync(context.Background()); err != nil {
			t.Fatalf("Sync over HTTP: %v", err)
		}
	}
	if c, _ := a.Get(context.Background(), ac.ID); c.Status != tether.StatusActive {
		t.Fatalf("initiator is %s after the handshake", c.Status)
	}
	return ac.ID, bc.ID
}

func sendN(t testing.TB, n *inst, id, prefix string, count int) {
	t.Helper()
	for i := 1; i <= count; i++ {
		if _, err := n.Send(context.Background(), id, []byte(fmt.Sprintf("%s-%d", prefix, i))); err != nil {
			t.Fatal(err)
		}
	}
}

func wantMessages(t testing.TB, in *inbox, id, prefix string, count int) {
	t.Helper()
	got := in.messages(id)
	if len(got) != count {
		t.Fatalf("%d messages on %s, want %d", len(got), id, count)
	}
	for i, p := range got {
		if want := fmt.Sprintf("%s-%d", prefix, i+1); p != want {
			t.Fatalf("message %d is %q, want %q", i, p, want)
		}
	}
}

func TestHandshakeAndMessagesOverHTTP(t *testing.T) {
	for _, topo := range []struct {
		name         string
		alpha, beta  bool // public?
		privateCalls bool
	}{
		{"public initiator, private acceptor", true, false, false},
		{"private initiator, public acceptor", false, true, false},
		{"both public", true, true, false},
	} {
		t.Run(topo.name, func(t *testing.T) {
			alpha, beta := newInst(t, topo.alpha), newInst(t, topo.beta)
			aid, bid := connect(t, alpha, beta)
			run(t, alpha, beta)
			sendN(t, alpha, aid, "a", 300)
			sendN(t, beta, bid, "b", 300)
			beta.in.waitFor(t, 300)
			alpha.in.waitFor(t, 300)
			wantMessages(t, beta.in, bid, "a", 300)
			wantMessages(t, alpha.in, aid, "b", 300)
		})
	}
}

func TestHandlerUnderAnyPrefix(t *testing.T) {
	for name, mount := range map[string]func(h http.Handler) http.Handler{
		"ServeMux pattern with method": func(h http.Handler) http.Handler {
			mux := http.NewServeMux()
			mux.Handle("POST /api/v2/tether/", h)
			return mux
		},
		"StripPrefix": func(h http.Handler) http.Handler {
			return http.StripPrefix("/api/v2", h)
		},
		"router of its own": func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if strings.HasPrefix(r.URL.Path, "/api/v2/tether/") {
					h.ServeHTTP(w, r)
					return
				}
				http.NotFound(w, r)
			})
		},
	} {
		t.Run(name, func(t *testing.T) {
			alpha := newInst(t, true, func(c *tether.Config) { c.Endpoint = strings.TrimSuffix(c.Endpoint, "/tether") + "/api/v2/tether" })
			h := mount(httptransport.NewHandler(alpha.Node, httptransport.HandlerConfig{}))
			alpha.handle.Store(&h)
			beta := newInst(t, false)
			aid, bid := connect(t, alpha, beta)
			run(t, alpha, beta)
			sendN(t, beta, bid, "b", 5)
			alpha.in.waitFor(t, 5)
			wantMessages(t, alpha.in, aid, "b", 5)
		})
	}
}

// capturedPush connects a public alpha and a private beta and returns a
// push request beta made that alpha never received.
func capturedPush(t *testing.T) (*inst, *inst, string, *captured) {
	t.Helper()
	alpha, beta := newInst(t, true), newInst(t, false)
	aid, bid := connect(t, alpha, beta)
	beta.rt.capturing.Store(true)
	stop := run(t, beta)
	sendN(t, beta, bid, "b", 1)
	c := beta.rt.capture(t, tether.OpPush, 0)
	stop()
	return alpha, beta, aid, c
}

// SECURITY.md 14 and 16: a changed byte anywhere is refused, the
// unchanged request is accepted once, and its replay is refused.
func TestTamperedRequestsRefused(t *testing.T) {
	alpha, _, aid, c := capturedPush(t)
	flip := func(s string, i int) string { b := []byte(s); b[i] ^= 1; return string(b) }
	auth := c.header.Get("Authorization")
	for name, tc := range map[string]struct {
		method, url string
		auth        string
		body        []byte
		status      int
	}{
		"method GET":        {http.MethodGet, c.url, auth, c.body, http.StatusMethodNotAllowed},
		"method PUT":        {http.MethodPut, c.url, auth, c.body, http.StatusMethodNotAllowed},
		"path: operation":   {c.method, strings.Replace(c.url, "/v1/push", "/v1/poll", 1), auth, c.body, 0},
		"path: version":     {c.method, strings.Replace(c.url, "/v1/push", "/v2/push", 1), auth, c.body, http.StatusNotFound},
		"path: case":        {c.method, strings.Replace(c.url, "/v1/push", "/v1/pusH", 1), auth, c.body, http.StatusNotFound},
		"query added":       {c.method, c.url + "?x=1", auth, c.body, http.StatusBadRequest},
		"empty query":       {c.method, c.url + "?", auth, c.body, http.StatusBadRequest},
		"body byte":         {c.method, c.url, auth, []byte(flip(string(c.body), len(c.body)/2)), http.StatusUnauthorized},
		"body appended":     {c.method, c.url, auth, append(append([]byte(nil), c.body...), ' '), http.StatusUnauthorized},
		"token byte":        {c.method, c.url, flip(auth, len(auth)-10), c.body, http.StatusUnauthorized},
		"no token":          {c.method, c.url, "", c.body, http.StatusUnauthorized},
		"token as Bearer":   {c.method, c.url, strings.Replace(auth, "Tether ", "Bearer ", 1), c.body, http.StatusUnauthorized},
		"path: prefix":      {c.method, strings.Replace(c.url, "/tether/", "/tether/x/", 1), auth, c.body, http.StatusUnauthorized},
		"path: doubled":     {c.method, strings.Replace(c.url, "/tether/v1", "/tether/tether/v1", 1), auth, c.body, http.StatusUnauthorized},
		"path: escaped":     {c.method, strings.Replace(c.url, "/v1/push", "/v1/%70ush", 1), auth, c.body, http.StatusUnauthorized},
		"path: dot segment": {c.method, strings.Replace(c.url, "/tether/v1", "/tether/./v1", 1), auth, c.body, 0},
	} {
		t.Run(name, func(t *testing.T) {
			h := c.header.Clone()
			h.Set("Authorization", tc.auth)
			resp, e := send(t, tc.method, tc.url, h, tc.body)
			switch {
			case tc.status == 0 && resp.StatusCode < 300: // any refusal (or a redirect not followed) will do
				t.Fatalf("status %d (%+v), want a refusal", resp.StatusCode, e)
			case tc.status != 0 && resp.StatusCode != tc.status:
				t.Fatalf("status %d (%+v), want %d", resp.StatusCode, e, tc.status)
			}
			if e.Code == "" && resp.StatusCode >= 400 {
				t.Fatal("error answer without a code")
			}
		})
	}
	if n := len(alpha.in.messages(aid)); n != 0 {
		t.Fatalf("a tampered request delivered %d messages", n)
	}
	resp, e := send(t, c.method, c.url, c.header, c.body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the untouched request: status %d %+v", resp.StatusCode, e)
	}
	resp, e = send(t, c.method, c.url, c.header, c.body)
	if resp.StatusCode != http.StatusUnauthorized || e.Message != "request refused" {
		t.Fatalf("the replay: status %d %+v, want 401 request refused", resp.StatusCode, e)
	}
	if got := alpha.in.messages(aid); len(got) != 1 {
		t.Fatalf("delivered %d messages, want exactly 1", len(got))
	}
}

// SECURITY.md 15: the request time may be 5 minutes off, not more.
func TestRequestTimeWindow(t *testing.T) {
	base := time.Now().Truncate(time.Second)
	for _, tc := range []struct {
		skew time.Duration
		ok   bool
	}{
		{-301 * time.Second, false},
		{301 * time.Second, false},
		{240 * time.Second, true},
		{-240 * time.Second, true},
	} {
		t.Run(tc.skew.String(), func(t *testing.T) {
			alphaClock, betaClock := tethertest.NewClock(base), tethertest.NewClock(base)
			alpha := newInst(t, true, func(c *tether.Config) { c.Clock = alphaClock })
			beta := newInst(t, false, func(c *tether.Config) { c.Clock = betaClock })
			_, bid := connect(t, alpha, beta)
			betaClock.Set(base.Add(tc.skew))
			beta.rt.capturing.Store(true)
			stop := run(t, beta)
			sendN(t, beta, bid, "b", 1)
			c := beta.rt.capture(t, tether.OpPush, 0)
			stop()
			resp, e := send(t, c.method, c.url, c.header, c.body)
			if got := resp.StatusCode == http.StatusOK; got != tc.ok {
				t.Fatalf("skew %v: status %d %+v", tc.skew, resp.StatusCode, e)
			}
			if tc.ok {
				return
			}
			// SECURITY.md 40: refused, signed, with the clock code.
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Tether-Auth") == "" || e.Refused == nil || e.Refused.Code != tether.CodeClockSkew {
				t.Fatalf("skew %v: status %d, Tether-Auth %q, body %+v; want a signed 400 clock_skew refusal",
					tc.skew, resp.StatusCode, resp.Header.Get("Tether-Auth"), e)
			}
		})
	}
}

// SECURITY.md 18: an oversized body is refused before it is read whole.
func TestBodyCap(t *testing.T) {
	alpha, _, _, c := capturedPush(t)
	const capBytes = httptransport.DefaultMaxBody
	var serverRead atomic.Int64
	real := *alpha.handle.Load()
	var counting http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := &countingBody{r: r.Body, n: &serverRead}
		r.Body = body
		real.ServeHTTP(w, r)
	})
	alpha.handle.Store(&counting)
	for _, declared := range []bool{true, false} {
		t.Run(fmt.Sprintf("content length declared %v", declared), func(t *testing.T) {
			body := &countingReader{left: 100 << 20}
			req, _ := http.NewRequest(http.MethodPost, c.url, body)
			req.Header = c.header.Clone()
			if declared {
				req.ContentLength = body.left
			} else {
				req.ContentLength = -1 // chunked
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				// The server may close the connection while the client
				// still writes; the count below is what matters.
				t.Logf("client: %v", err)
			} else {
				resp.Body.Close()
				if resp.StatusCode != http.StatusRequestEntityTooLarge {
					t.Fatalf("status %d, want 413", resp.StatusCode)
				}
			}
			if read := serverRead.Swap(0); read > capBytes+1 {
				t.Fatalf("the server read %d bytes of a body capped at %d", read, capBytes)
			}
		})
	}
}

type countingBody struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return b.r.Close() }

type countingReader struct {
	left int64
	read atomic.Int64
}

func (r *countingReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	n := int64(len(p))
	if n > r.left {
		n = r.left
	}
	for i := range p[:n] {
		p[i] = 'a'
	}
	r.left -= n
	r.read.Add(n)
	return int(n), nil
}

// SECURITY.md 19: paused answers "retry later" with Retry-After; deleted
// answers "gone".
func TestPausedAndDeletedOverHTTP(t *testing.T) {
	alpha, beta := newInst(t, true, func(c *tether.Config) { c.PausedRetry = 7 * time.Second }), newInst(t, false)
	aid, bid := connect(t, alpha, beta)
	if _, err := alpha.Pause(context.Background(), aid); err != nil {
		t.Fatal(err)
	}
	beta.rt.capturing.Store(true)
	stop := run(t, beta)
	sendN(t, beta, bid, "b", 1)
	first := beta.rt.capture(t, tether.OpPush, 0)
	second := beta.rt.capture(t, tether.OpPush, 1)
	stop()

	// Both refusals are signed: Tether-Auth, and the refusal in the body.
	resp, e := send(t, first.method, first.url, first.header, first.body)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "7" ||
		resp.Header.Get("Tether-Auth") == "" || e.Refused == nil || e.Refused.Code != tether.CodePaused || e.Refused.RetryMS != 7000 {
		t.Fatalf("paused: status %d, %+v, Retry-After %q, Tether-Auth %q",
			resp.StatusCode, e, resp.Header.Get("Retry-After"), resp.Header.Get("Tether-Auth"))
	}
	if _, err := alpha.Delete(context.Background(), aid); err != nil {
		t.Fatal(err)
	}
	resp, e = send(t, second.method, second.url, second.header, second.body)
	if resp.StatusCode != http.StatusGone || resp.Header.Get("Tether-Auth") == "" || e.Refused == nil || e.Refused.Code != tether.CodeGone {
		t.Fatalf("deleted: status %d, %+v, Tether-Auth %q", resp.StatusCode, e, resp.Header.Get("Tether-Auth"))
	}
}

// SECURITY.md 25: no attempt before the Retry-After the peer sent. The
// answer is unsigned, so the sender honours it up to its RetryMax only.
func TestRetryAfterHonoured(t *testing.T) {
	alpha, beta := newInst(t, true), newInst(t, false, func(c *tether.Config) { c.RetryMax = 5 * time.Second })
	_, bid := connect(t, alpha, beta)
	real := *alpha.handle.Load()
	var mu sync.Mutex
	var times []time.Time
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/v1/push") {
			mu.Lock()
			times = append(times, time.Now())
			first := len(times) == 1
			mu.Unlock()
			if first {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "busy", http.StatusTooManyRequests)
				return
			}
		}
		real.ServeHTTP(w, r)
	})
	alpha.handle.Store(&h)
	run(t, alpha, beta)
	sendN(t, beta, bid, "b", 1)
	alpha.in.waitFor(t, 1)
	mu.Lock()
	defer mu.Unlock()
	if len(times) < 2 {
		t.Fatalf("%d push attempts", len(times))
	}
	if gap := times[1].Sub(times[0]); gap < time.Second {
		t.Fatalf("retried after %v, before the Retry-After of 1s", gap)
	}
}

// Two nodes in two processes connect over real HTTP: this test starts
// itself again as a child process that runs the public side.
func TestTwoProcesses(t *testing.T) {
	if os.Getenv("TETHER_TEST_CHILD") == "public" {
		childPublic()
		return
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestTwoProcesses$")
	cmd.Env = append(os.Environ(), "TETHER_TEST_CHILD=public")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("child: %v", err)
		}
	}()
	lines := bufio.NewScanner(stdout)
	var code string
	for lines.Scan() {
		if c, ok := strings.CutPrefix(lines.Text(), "CODE "); ok {
			code = c
			break
		}
	}
	if code == "" {
		t.Fatal("the child printed no invitation code")
	}
	beta := newInst(t, false)
	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("Accept across processes: %v", err)
	}
	run(t, beta)
	sendN(t, beta, bc.ID, "ping", 50)
	beta.in.waitFor(t, 50) // the child echoes each message back
	got := beta.in.messages(bc.ID)
	for i, p := range got {
		if want := fmt.Sprintf("echo ping-%d", i+1); p != want {
			t.Fatalf("echo %d is %q, want %q", i, p, want)
		}
	}
}

// childPublic runs a public node that echoes what it receives, until its
// standard input closes.
func childPublic() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	var node *tether.Node
	echo := tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
		_, err := node.Send(ctx, m.ConnectionID, append([]byte("echo "), m.Payload...))
		return err
	})
	node, err = tether.Open(ctx, tether.Config{
		Store:     memstore.New(),
		Endpoint:  "http://" + ln.Addr().String() + "/tether",
		URLPolicy: tether.DevelopmentURLPolicy(),
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: tether.DevelopmentURLPolicy()}),
		Receiver:  echo,
	})
	if err != nil {
		panic(err)
	}
	srv := &http.Server{Handler: httptransport.NewHandler(node, httptransport.HandlerConfig{})}
	go srv.Serve(ln)
	defer srv.Close()
	go node.Run(ctx)
	_, code, err := node.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Child", RemoteName: "Parent", Name: "across processes"})
	if err != nil {
		panic(err)
	}
	fmt.Println("CODE " + code)
	_, _ = io.Copy(io.Discard, os.Stdin)
}

// A private side keeps one long-poll per public endpoint, carrying all of
// its connections there.
func TestOneLongPollPerEndpoint(t *testing.T) {
	alpha, beta := newInst(t, true, func(c *tether.Config) { c.PollWait = time.Second }), newInst(t, false)
	var ids []string
	for range 3 {
		aid, _ := connect(t, alpha, beta)
		ids = append(ids, aid)
	}
	real := *alpha.handle.Load()
	var inFlight, most atomic.Int32
	var mu sync.Mutex
	largest := 0
	var h http.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/v1/poll") {
			body, _ := io.ReadAll(r.Body)
			r.Body = io.NopCloser(bytes.NewReader(body))
			var req struct {
				Connections []json.RawMessage `json:"connections"`
			}
			_ = json.Unmarshal(body, &req)
			mu.Lock()
			largest = max(largest, len(req.Connections))
			mu.Unlock()
			n := inFlight.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			defer inFlight.Add(-1)
		}
		real.ServeHTTP(w, r)
	})
	alpha.handle.Store(&h)
	run(t, alpha, beta)
	for i, id := range ids {
		sendN(t, alpha, id, fmt.Sprint(i), 20)
	}
	beta.in.waitFor(t, 60)
	if m := most.Load(); m != 1 {
		t.Fatalf("%d polls were open at once, want 1", m)
	}
	mu.Lock()
	defer mu.Unlock()
	if largest != 3 {
		t.Fatalf("a poll carried at most %d connections, want all 3", largest)
	}
}
