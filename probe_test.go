package tether_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
)

func withInfo(name string, modes ...tether.Mode) func(*tether.Config) {
	return func(c *tether.Config) { c.DisplayName, c.Modes = name, modes }
}

// A probe of a public node answers its display name, protocol version and
// modes, in its order; a private node can probe without a connection.
func TestProbePublicNode(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL, withInfo("Acme Engineering", tether.ModeScript, tether.ModeBasic))
	beta := w.node("beta", "")
	got, err := beta.Probe(context.Background(), alphaURL)
	if err != nil {
		t.Fatal(err)
	}
	want := &tether.Info{Name: "Acme Engineering", Protocol: tether.ProtocolVersion, Modes: []tether.Mode{tether.ModeScript, tether.ModeBasic}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Probe (-want +got):\n%s", diff)
	}
	if own := alpha.Info(); !cmp.Equal(*want, own) {
		t.Fatalf("alpha.Info() = %+v, want %+v", own, *want)
	}
	if !got.Supports(tether.ModeScript) || got.Supports(tether.ModeVisual) {
		t.Fatalf("Supports disagrees with Modes %v", got.Modes)
	}
	if n := w.net.Sent("beta"); n != 1 {
		t.Fatalf("the probe made %d requests, want 1", n)
	}
}

// Without Config.Modes a node supports all three modes; without a
// DisplayName it has no name.
func TestProbeDefaultModes(t *testing.T) {
	w := newWorld(t)
	w.node("alpha", alphaURL)
	empty := w.node("gamma", "https://gamma.example", withInfo(""))
	beta := w.node("beta", "")
	all := []tether.Mode{tether.ModeBasic, tether.ModeVisual, tether.ModeScript}
	for _, url := range []string{alphaURL, empty.Endpoint()} {
		got, err := beta.Probe(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(&tether.Info{Protocol: tether.ProtocolVersion, Modes: all}, got); diff != "" {
			t.Fatalf("Probe(%s) (-want +got):\n%s", url, diff)
		}
	}
	if got := beta.Info().Modes; !cmp.Equal(all, got) {
		t.Fatalf("a private node's modes: %v", got)
	}
	// The answer is a copy: changing it changes nothing of the node.
	info := beta.Info()
	info.Modes[0] = "changed"
	if beta.Info().Modes[0] != tether.ModeBasic {
		t.Fatal("Info shares its Modes with the node")
	}
}

// swapStore is a Store the test can take away: once Store is nil, any
// call to it panics.
type swapStore struct{ tether.Store }

// The info request is answered without authentication, whatever Auth it
// carries, reads no Store and changes nothing; every other operation still
// requires authentication.
func TestInfoAnsweredWithoutAuth(t *testing.T) {
	t.Run("no store read", func(t *testing.T) {
		st := &swapStore{Store: memstore.New()}
		n, err := tether.Open(context.Background(), tether.Config{Store: st, Endpoint: alphaURL, DisplayName: "Alpha"})
		if err != nil {
			t.Fatal(err)
		}
		st.Store = nil
		for _, auth := range []string{"", "garbage", "eyJhbGciOiJFZERTQSJ9.e30.AAAA"} {
			resp, err := n.Handle(context.Background(), &tether.Request{Op: tether.OpInfo, Auth: auth})
			if err != nil {
				t.Fatalf("auth %q: %v", auth, err)
			}
			if resp.Auth != "" || resp.Code != "" {
				t.Fatalf("auth %q: answer %+v, want unsigned", auth, resp)
			}
			info, err := tether.ParseInfo(resp.Body)
			if err != nil || info.Name != "Alpha" {
				t.Fatalf("auth %q: answer %s: %+v, %v", auth, resp.Body, info, err)
			}
		}
		_, err = n.Handle(context.Background(), &tether.Request{Op: tether.OpInfo, Body: []byte("{}")})
		wantCode(t, err, tether.CodeTooLarge)
	})
	t.Run("nothing changes", func(t *testing.T) {
		w := newWorld(t)
		alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
		aid, _ := connect(t, alpha, beta, "")
		before := alpha.get(t, aid)
		evs, err := alpha.Events(context.Background(), aid, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if _, err := beta.Probe(context.Background(), alphaURL); err != nil {
				t.Fatal(err)
			}
		}
		if diff := cmp.Diff(before, alpha.get(t, aid)); diff != "" {
			t.Fatalf("a probe changed the connection (-before +after):\n%s", diff)
		}
		after, err := alpha.Events(context.Background(), aid, 0, 0)
		if err != nil || len(after) != len(evs) {
			t.Fatalf("a probe added events: %d, then %d (%v)", len(evs), len(after), err)
		}
		resp, err := alpha.Handle(context.Background(), &tether.Request{Op: tether.OpInfo})
		if err != nil {
			t.Fatal(err)
		}
		for _, leak := range []string{aid, alpha.ID(), alpha.Fingerprint(), "support-team", "Support"} {
			if strings.Contains(string(resp.Body), leak) {
				t.Fatalf("the info answer %s reveals %q", resp.Body, leak)
			}
		}
	})
	t.Run("other operations still authenticated", func(t *testing.T) {
		w := newWorld(t)
		alpha := w.node("alpha", alphaURL)
		for _, op := range tether.Ops() {
			if op == tether.OpInfo {
				continue
			}
			_, err := alpha.Handle(context.Background(), &tether.Request{Op: op, Body: []byte("{}")})
			wantCode(t, err, tether.CodeUnauthenticated)
		}
	})
}

// A URL the policy refuses, or that is not a URL, is refused with the
// code Initiate gives it, and no request is made.
func TestProbeRefusedURL(t *testing.T) {
	w := newWorld(t)
	beta := w.node("beta", "")
	for url, code := range map[string]tether.Code{
		"http://alpha.example/tether":      tether.CodeURLRefused, // plain http
		"https://127.0.0.1/tether":         tether.CodeURLRefused,
		"https://localhost:8443/tether":    tether.CodeURLRefused,
		"https://10.1.2.3/tether":          tether.CodeURLRefused,
		"https://[fd00::1]/tether":         tether.CodeURLRefused,
		"https://169.254.169.254/metadata": tether.CodeURLRefused,
		"https://2130706433/tether":        tether.CodeURLRefused,
		"ftp://alpha.example/tether":       tether.CodeInvalid,
		"file:///etc/passwd":               tether.CodeInvalid,
		"":                                 tether.CodeInvalid,
		"https://user@alpha.example/":      tether.CodeInvalid,
		"https://alpha.example/?x=1":       tether.CodeInvalid,
	} {
		_, err := beta.Probe(context.Background(), url)
		wantCode(t, err, code)
		_, _, ierr := beta.Initiate(context.Background(), invite(url))
		if url != "" && tether.ErrorCode(ierr) != code {
			t.Errorf("%q: Probe gives %s, Initiate %v", url, code, ierr)
		}
	}
	if n := w.net.Sent("beta"); n != 0 {
		t.Fatalf("%d requests were made", n)
	}
}

// Answers that are too large or not tether info are refused with a clear
// error that does not quote them; unknown modes a later version may add
// are dropped.
func TestProbeAnswers(t *testing.T) {
	w := newWorld(t)
	beta := w.node("beta", "")
	var body atomic.Pointer[string]
	w.net.Listen("https://dest.example", handlerFunc(func(context.Context, *tether.Request) (*tether.Response, error) {
		return &tether.Response{Body: []byte(*body.Load())}, nil
	}))
	const marker = "SECRET-ISH"
	for name, tc := range map[string]struct {
		body  string
		code  tether.Code
		modes []tether.Mode
	}{
		"oversized":        {`{"protocol":"tether/1","modes":[],"name":"` + strings.Repeat("x", tether.MaxInfoBody) + `"}`, tether.CodeTooLarge, nil},
		"html":             {`<html>` + marker + `</html>`, tether.CodeProtocol, nil},
		"empty":            {``, tether.CodeProtocol, nil},
		"null":             {`null`, tether.CodeProtocol, nil},
		"array":            {`["` + marker + `"]`, tether.CodeProtocol, nil},
		"two objects":      {`{"protocol":"tether/1","modes":[]} {"x":"` + marker + `"}`, tether.CodeProtocol, nil},
		"bad json":         {`{"protocol":"tether/1","modes":["` + marker + `"`, tether.CodeProtocol, nil},
		"no protocol":      {`{"name":"` + marker + `","modes":["basic"]}`, tether.CodeProtocol, nil},
		"protocol type":    {`{"protocol":1,"modes":["basic"]}`, tether.CodeProtocol, nil},
		"protocol space":   {`{"protocol":"tether 1","modes":["basic"]}`, tether.CodeProtocol, nil},
		"protocol long":    {`{"protocol":"` + strings.Repeat("t", tether.MaxProtocolLen+1) + `","modes":[]}`, tether.CodeProtocol, nil},
		"no modes":         {`{"protocol":"tether/1"}`, tether.CodeProtocol, nil},
		"null modes":       {`{"protocol":"tether/1","modes":null}`, tether.CodeProtocol, nil},
		"mode type":        {`{"protocol":"tether/1","modes":[1]}`, tether.CodeProtocol, nil},
		"modes object":     {`{"protocol":"tether/1","modes":{"basic":true}}`, tether.CodeProtocol, nil},
		"too many modes":   {`{"protocol":"tether/1","modes":[` + strings.Repeat(`"basic",`, tether.MaxInfoModes) + `"basic"]}`, tether.CodeProtocol, nil},
		"name type":        {`{"name":["` + marker + `"],"protocol":"tether/1","modes":[]}`, tether.CodeProtocol, nil},
		"name bidi":        {`{"name":"` + marker + `\u202e","protocol":"tether/1","modes":[]}`, tether.CodeProtocol, nil},
		"name control":     {`{"name":"` + marker + `\n","protocol":"tether/1","modes":[]}`, tether.CodeProtocol, nil},
		"name long":        {`{"name":"` + strings.Repeat("n", tether.MaxNameLen+1) + `","protocol":"tether/1","modes":[]}`, tether.CodeProtocol, nil},
		"unknown dropped":  {`{"name":"Next","protocol":"tether/2","modes":["hologram","script","basic","script"],"extra":{"a":[1]}}`, "", []tether.Mode{tether.ModeScript, tether.ModeBasic}},
		"no known modes":   {`{"protocol":"tether/2","modes":["hologram"]}`, "", []tether.Mode{}},
		"leading space ok": {" \n{\"protocol\":\"tether/1\",\"modes\":[\"visual\"]}\n", "", []tether.Mode{tether.ModeVisual}},
	} {
		t.Run(name, func(t *testing.T) {
			body.Store(&tc.body)
			got, err := beta.Probe(context.Background(), "https://dest.example")
			if tc.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				if diff := cmp.Diff(tc.modes, got.Modes); diff != "" {
					t.Fatalf("modes (-want +got):\n%s", diff)
				}
				return
			}
			wantCode(t, err, tc.code)
			if strings.Contains(err.Error(), marker) || strings.Contains(err.Error(), "xxxxxxxx") {
				t.Fatalf("the error quotes the answer: %v", err)
			}
			if !strings.HasPrefix(err.Error(), "tether: probe: ") {
				t.Fatalf("error %q does not name the probe", err)
			}
		})
	}
}

// A destination nobody answers at, or that does not know the info
// operation (an older version), is unavailable; the end of the caller's
// context is reported as such.
func TestProbeUnavailable(t *testing.T) {
	w := newWorld(t)
	beta := w.node("beta", "")
	_, err := beta.Probe(context.Background(), "https://nowhere.example")
	wantCode(t, err, tether.CodeUnavailable)
	w.net.Listen("https://old.example", handlerFunc(func(context.Context, *tether.Request) (*tether.Response, error) {
		return nil, &tether.Error{Code: tether.CodeProtocol, Message: "unknown operation"}
	}))
	_, err = beta.Probe(context.Background(), "https://old.example")
	wantCode(t, err, tether.CodeUnavailable)
	if !errors.Is(err, tether.ErrProtocol) {
		t.Fatalf("the claim is not kept as the cause: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	w.net.Listen("https://slow.example", handlerFunc(func(ctx context.Context, _ *tether.Request) (*tether.Response, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}))
	_, err = beta.Probe(ctx, "https://slow.example")
	wantCode(t, err, tether.CodeCanceled)
	noTransport, err := tether.Open(context.Background(), tether.Config{Store: memstore.New()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = noTransport.Probe(context.Background(), alphaURL)
	wantCode(t, err, tether.CodeUnavailable)
}

// Over real HTTP on loopback: the Handler answers a GET without
// authentication, the Client probes through its checked dialer, and the
// policy refuses loopback before any request when it does not allow it.
func TestProbeOverHTTP(t *testing.T) {
	var hits atomic.Int32
	mux := http.NewServeMux()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		mux.ServeHTTP(w, r)
	}))
	defer srv.Close()
	dev := tether.DevelopmentURLPolicy()
	alpha, err := tether.Open(context.Background(), tether.Config{
		Store: memstore.New(), Endpoint: srv.URL + "/tether", URLPolicy: dev,
		DisplayName: "Acme Engineering", Modes: []tether.Mode{tether.ModeVisual},
	})
	if err != nil {
		t.Fatal(err)
	}
	mux.Handle("/tether/", httptransport.NewHandler(alpha, httptransport.HandlerConfig{}))
	want := &tether.Info{Name: "Acme Engineering", Protocol: tether.ProtocolVersion, Modes: []tether.Mode{tether.ModeVisual}}

	resp, err := http.Get(srv.URL + "/tether/v1/info")
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var got tether.Info
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/json" ||
		resp.Header.Get("Cache-Control") != "no-store" || resp.Header.Get("Tether-Auth") != "" || json.Unmarshal(raw, &got) != nil {
		t.Fatalf("GET info: %d %v %s", resp.StatusCode, resp.Header, raw)
	}
	if diff := cmp.Diff(*want, got); diff != "" {
		t.Fatalf("GET info (-want +got):\n%s", diff)
	}

	prober := func(policy tether.URLPolicy) *tether.Node {
		n, err := tether.Open(context.Background(), tether.Config{
			Store: memstore.New(), URLPolicy: policy,
			Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	beta := prober(dev)
	info, err := beta.Probe(context.Background(), srv.URL+"/tether/")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, info); diff != "" {
		t.Fatalf("Probe over HTTP (-want +got):\n%s", diff)
	}

	before := hits.Load()
	_, err = prober(tether.URLPolicy{}).Probe(context.Background(), srv.URL+"/tether")
	wantCode(t, err, tether.CodeURLRefused)
	_, err = prober(tether.URLPolicy{AllowHTTP: true}).Probe(context.Background(), srv.URL+"/tether")
	wantCode(t, err, tether.CodeURLRefused)
	if n := hits.Load() - before; n != 0 {
		t.Fatalf("a refused probe made %d requests", n)
	}

	// Not a tether instance: a 404 page is unavailable, a 200 page that is
	// not info is a protocol error; neither is quoted.
	mux.HandleFunc("/notfound/", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "SECRET-ISH page", http.StatusNotFound)
	})
	mux.HandleFunc("/page/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "<html>SECRET-ISH</html>")
	})
	mux.HandleFunc("/big/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `{"protocol":"tether/1","modes":[],"pad":"`+strings.Repeat("x", 1<<20)+`"}`)
	})
	for path, code := range map[string]tether.Code{"/notfound": tether.CodeUnavailable, "/page": tether.CodeProtocol, "/big": tether.CodeTooLarge} {
		_, err := beta.Probe(context.Background(), srv.URL+path)
		wantCode(t, err, code)
		if strings.Contains(err.Error(), "SECRET-ISH") {
			t.Fatalf("%s: the error quotes the answer: %v", path, err)
		}
	}
}

// With Config.Modes set, Initiate refuses another mode, and Preview and
// Accept refuse an invitation in another mode before anything is stored
// or the initiator is contacted.
func TestModesRestrictConnections(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL, withInfo("Alpha", tether.ModeBasic, tether.ModeScript))
	beta := w.node("beta", "", withInfo("Beta", tether.ModeVisual, tether.ModeBasic))

	req := invite("")
	req.Mode = tether.ModeVisual
	_, _, err := alpha.Initiate(context.Background(), req)
	wantCode(t, err, tether.CodeInvalid)
	if !strings.Contains(err.Error(), "Mode") || !strings.Contains(err.Error(), "basic, script") {
		t.Fatalf("the error does not name the field and the modes: %v", err)
	}
	if n := alpha.count(t); n != 0 {
		t.Fatalf("a refused Initiate stored %d connections", n)
	}

	// alpha makes a script invitation; beta does not support script.
	_, code := alpha.initiate(t, invite(""))
	served := w.net.Served()[alphaURL]
	_, err = beta.Preview(code)
	wantCode(t, err, tether.CodeInvalid)
	if !strings.Contains(err.Error(), "script") {
		t.Fatalf("the error does not name the mode: %v", err)
	}
	_, err = beta.Accept(context.Background(), code, tether.AcceptOptions{})
	wantCode(t, err, tether.CodeInvalid)
	if n := beta.count(t); n != 0 {
		t.Fatalf("a refused Accept stored %d connections", n)
	}
	if n := w.net.Served()[alphaURL] - served; n != 0 {
		t.Fatalf("a refused Accept contacted the initiator %d times", n)
	}

	// A mode both support is accepted.
	req = invite("")
	req.Mode = tether.ModeBasic
	_, code = alpha.initiate(t, req)
	if _, err := beta.Preview(code); err != nil {
		t.Fatal(err)
	}
	c, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil || c.Status != tether.StatusActive || c.Mode != tether.ModeBasic {
		t.Fatalf("Accept: %+v, %v", c, err)
	}
}

// Open refuses bad modes and display names with CodeInvalid naming the
// field; an empty list of modes means all of them.
func TestOpenChecksInfo(t *testing.T) {
	for name, tc := range map[string]struct {
		cfg   func(*tether.Config)
		field string
	}{
		"unknown mode":    {withInfo("", "hologram"), "Config.Modes"},
		"empty mode":      {withInfo("", tether.ModeBasic, ""), "Config.Modes"},
		"case":            {withInfo("", "Basic"), "Config.Modes"},
		"repeated mode":   {withInfo("", tether.ModeBasic, tether.ModeScript, tether.ModeBasic), "Config.Modes"},
		"name too long":   {withInfo(strings.Repeat("n", tether.MaxNameLen+1)), "Config.DisplayName"},
		"name control":    {withInfo("Acme\tSupport"), "Config.DisplayName"},
		"name bidi":       {withInfo("Acme\u202eSupport"), "Config.DisplayName"},
		"name spaces":     {withInfo(" Acme"), "Config.DisplayName"},
		"name not utf-8":  {withInfo("Acme\xff"), "Config.DisplayName"},
		"name zero width": {withInfo("Ac\u200bme"), "Config.DisplayName"},
	} {
		t.Run(name, func(t *testing.T) {
			cfg := tether.Config{Store: memstore.New()}
			tc.cfg(&cfg)
			_, err := tether.Open(context.Background(), cfg)
			wantCode(t, err, tether.CodeInvalid)
			if !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("the error does not name %s: %v", tc.field, err)
			}
		})
	}
	n, err := tether.Open(context.Background(), tether.Config{Store: memstore.New(), Modes: []tether.Mode{}, DisplayName: "Acme \U0001F469\u200D\U0001F4BB"})
	if err != nil {
		t.Fatal(err)
	}
	if got := n.Info().Modes; len(got) != 3 {
		t.Fatalf("empty Config.Modes gives %v, want all three", got)
	}
}
