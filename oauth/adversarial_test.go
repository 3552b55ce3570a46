package oauth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/providertest"
	"github.com/tetherkit/tether/oauth"
)

// advSecrets records every secret that crosses the wire between the
// Manager and the provider: form values sent and tokens answered.
type advSecrets struct {
	mu   sync.Mutex
	vals map[string]bool
}

func (s *advSecrets) add(v string) {
	if len(v) < 8 {
		return
	}
	s.mu.Lock()
	s.vals[v] = true
	s.mu.Unlock()
}

func (s *advSecrets) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for v := range s.vals {
		out = append(out, v)
	}
	return out
}

type advRecorder struct {
	base http.RoundTripper
	sec  *advSecrets
}

func (r *advRecorder) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil && req.Body != http.NoBody {
		b, _ := io.ReadAll(req.Body)
		req.Body.Close()
		if f, err := url.ParseQuery(string(b)); err == nil {
			for _, k := range []string{"client_secret", "code_verifier", "refresh_token", "code", "token"} {
				r.sec.add(f.Get(k))
			}
		}
		req.Body = io.NopCloser(bytes.NewReader(b))
		req.ContentLength = int64(len(b))
	}
	if a := req.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		r.sec.add(strings.TrimPrefix(a, "Bearer "))
	}
	resp, err := r.base.RoundTrip(req)
	if err != nil || resp.Body == nil {
		return resp, err
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var m map[string]any
	if json.Unmarshal(b, &m) == nil {
		for _, k := range []string{"access_token", "refresh_token"} {
			if s, ok := m[k].(string); ok {
				r.sec.add(s)
			}
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return resp, nil
}

// newAdvSF is newSFEnv with a Manager whose client records secrets.
func newAdvSF(t *testing.T) (*sfEnv, *advSecrets) {
	t.Helper()
	e := newSFEnv(t)
	sec := &advSecrets{vals: map[string]bool{"consumer-secret": true}}
	base := e.sf.Client()
	client := &http.Client{Transport: &advRecorder{base: base.Transport, sec: sec}, Timeout: base.Timeout}
	m, err := oauth.New(oauth.Config{
		Node: e.node, Store: e.store, RedirectURL: sfRedirect, HTTPClient: client, Clock: e.clock,
		Providers: []oauth.Provider{
			oauth.Salesforce(oauth.SalesforceProduction, "3MVG9-tether", "consumer-secret"),
			oauth.Salesforce(oauth.SalesforceSandbox, "3MVG9-tether", "consumer-secret"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.m = m
	return e, sec
}

// rtLog captures the refresh tokens the Salesforce server answers.
type rtLog struct {
	mu  sync.Mutex
	rts []string
}

func (l *rtLog) tamper(a map[string]any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if rt, ok := a["refresh_token"].(string); ok {
		l.rts = append(l.rts, rt)
	}
}

func (l *rtLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.rts...)
}

func (l *rtLog) last() string {
	r := l.all()
	if len(r) == 0 {
		return ""
	}
	return r[len(r)-1]
}

func advDyn(t *testing.T) *dynEnv {
	return newDynEnv(t, oauth.CloudPublic, providertest.DynamicsOptions{Authority: "login.microsoftonline.com", Discovery: "globaldisco.crm.dynamics.com"}, publicEnvs...)
}

// sfCallback begins and authorizes a Salesforce login, returning the
// callback's query without completing it.
func (e *sfEnv) callback(t *testing.T, req oauth.BeginRequest) url.Values {
	t.Helper()
	auth, err := e.m.Begin(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	back, err := e.sf.Authorize(context.Background(), auth)
	if err != nil {
		t.Fatal(err)
	}
	return back.Query()
}

func (e *dynEnv) callback(t *testing.T, req oauth.BeginRequest) url.Values {
	t.Helper()
	auth, err := e.m.Begin(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	back, err := e.d.Authorize(context.Background(), auth)
	if err != nil {
		t.Fatal(err)
	}
	return back.Query()
}

// state / choice misuse

// A Choice token is not a state and a state is not a Choice; neither
// cross-use consumes the other.
func TestAdvChoiceStateCrossUse(t *testing.T) {
	e := advDyn(t)
	ctx := context.Background()
	q := e.callback(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ada@contoso.com"})
	state := q.Get("state")

	// A state presented as a choice: refused, and the state still works.
	if _, err := e.m.Choose(ctx, state, "whatever"); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("state as choice: %v", err)
	}
	res, err := e.m.Complete(ctx, q)
	if err != nil {
		t.Fatalf("the state after it was presented as a choice: %v", err)
	}
	// A choice presented as a state: refused, and the choice still works.
	if _, err := e.m.Complete(ctx, url.Values{"state": {res.Choice}, "code": {"x"}}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("choice as state: %v", err)
	}
	if _, err := e.m.Choose(ctx, res.Choice, res.Choices[0].ID); err != nil {
		t.Fatalf("the choice after it was presented as a state: %v", err)
	}
	// Empty, oversized and whitespace-padded choices.
	for _, c := range []string{"", strings.Repeat("a", 201), " " + res.Choice, res.Choice + "\n", strings.ToUpper(res.Choice)} {
		if _, err := e.m.Choose(ctx, c, res.Choices[0].ID); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("choice %q: %v", c, err)
		}
	}
}

// A state is single use even when its first Complete failed (the provider
// returned an error), and expires after StateTTL.
func TestAdvStateReuseAfterFailure(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	q := e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	bad := url.Values{"state": {q.Get("state")}, "error": {"access_denied"}}
	if _, err := e.m.Complete(ctx, bad); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("a provider error: %v", err)
	}
	if _, err := e.m.Complete(ctx, q); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("a state reused after a failed Complete: %v", err)
	}
	// Expiry.
	q = e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	e.clock.now.Add(int64(11 * time.Minute))
	if _, err := e.m.Complete(ctx, q); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("an expired state: %v", err)
	}
	if conns, _, _ := e.node.List(ctx, tether.ListOptions{}); len(conns) != 0 {
		t.Fatalf("connections: %d", len(conns))
	}
}

// Choose with an org ID that was not offered is refused; the choice is
// spent (single use), and a later Choose with the right ID is refused too.
// Dynamics IDs are offered lower case.
func TestAdvChooseNotOffered(t *testing.T) {
	e := advDyn(t)
	ctx := context.Background()
	res, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	// Fabrikam exists but this login did not reach it.
	fab := e.d.Environment("Fabrikam").ID
	if _, err := e.m.Choose(ctx, res.Choice, fab); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("an environment not offered: %v", err)
	}
	if _, err := e.m.Choose(ctx, res.Choice, res.Choices[0].ID); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("a choice reused after a failed Choose: %v", err)
	}
	if conns, _, _ := e.node.List(ctx, tether.ListOptions{}); len(conns) != 0 {
		t.Fatalf("connections: %d", len(conns))
	}
}

// The grant of a login that makes no connection is revoked at the provider
// where it can be: a refreshed-sandbox Choice that is answered with an org
// that was not offered makes no connection.
func TestAdvChooseNotOfferedRevokesGrant(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	uat, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce-sandbox", Owner: "team-a", LoginHint: "ada@acme.com.uat"}))
	if err != nil {
		t.Fatal(err)
	}
	newOrg := e.sf.RefreshSandbox(uat.ExternalID)
	log := &rtLog{}
	e.sf.Tamper(log.tamper)
	res, err := e.connect(t, oauth.BeginRequest{Provider: "salesforce-sandbox", Reauthorize: uat.ID, LoginHint: "ada@acme.com.uat"})
	if err != nil || res.Replaces != uat.ID {
		t.Fatalf("%+v, %v", res, err)
	}
	e.sf.Tamper(nil)
	rt := log.last()
	if _, err := e.m.Choose(ctx, res.Choice, uat.ExternalID); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("choosing the old org: %v", err)
	}
	if _, err := e.m.Choose(ctx, res.Choice, newOrg); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("choice reused: %v", err)
	}
	if !e.sf.Revoked(rt) {
		t.Errorf("the grant of a refreshed-sandbox login that made no connection (Choose with an org not offered) is still live at the provider")
	}
}

// re-authorization

// Re-authorizing with another org revokes the new grant and changes
// nothing; re-authorizing a connection deleted while the user logged in
// is refused and its new grant is revoked too.
func TestAdvReauthorizeRefusedRevokes(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	log := &rtLog{}
	e.sf.Tamper(log.tamper)
	prod, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.connect(t, oauth.BeginRequest{Provider: "salesforce", Reauthorize: prod.ID, LoginHint: "hank@globex.com", Host: "globex.my.salesforce.com"})
	if tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("another org: %v", err)
	}
	if !e.sf.Revoked(log.last()) {
		t.Errorf("the grant of a re-authorization reaching another org is still live")
	}

	// Deleted while the user is at the provider.
	q := e.callback(t, oauth.BeginRequest{Provider: "salesforce", Reauthorize: prod.ID, LoginHint: "ada@acme.com"})
	if _, err := e.m.Delete(ctx, prod.ID); err != nil {
		t.Fatal(err)
	}
	_, err = e.m.Complete(ctx, q)
	if err == nil {
		t.Fatal("a re-authorization of a connection deleted meanwhile succeeded")
	}
	if code := tether.ErrorCode(err); code != tether.CodeInvalidTransition && code != tether.CodeInvalid {
		t.Errorf("deleted meanwhile: %v", err)
	}
	if rt := log.last(); !e.sf.Revoked(rt) {
		t.Errorf("the grant of a re-authorization of a connection deleted meanwhile is still live at the provider (it makes no connection)")
	}
	if _, _, err := e.store.LoadOAuthToken(ctx, prod.ID); tether.ErrorCode(err) != tether.CodeNotFound {
		t.Errorf("a deleted connection has stored tokens again after a late re-authorization: %v", err)
	}
}

// Re-authorizing a connection of another provider is refused; one of
// another team (BeginRequest.Owner set to a different team) is refused, or
// at least does not move the connection.
func TestAdvReauthorizeCrossOwnerProvider(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	prod, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: "salesforce-sandbox", Reauthorize: prod.ID}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("re-authorizing with another provider: %v", err)
	}
	if _, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: "salesforce", Reauthorize: "no-such-id"}); err == nil {
		t.Errorf("re-authorizing an unknown connection: accepted")
	}
	// Another team names team-a's connection.
	_, err = e.m.Begin(ctx, oauth.BeginRequest{Provider: "salesforce", Owner: "team-b", Reauthorize: prod.ID, LoginHint: "ada@acme.com"})
	if err == nil {
		t.Errorf("Begin{Owner: team-b, Reauthorize: <team-a's connection>} is accepted: the Owner is silently replaced by the connection's (oauth.go:302)")
	}
	if err == nil {
		c, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-b", Reauthorize: prod.ID, LoginHint: "ada@acme.com"}))
		if err != nil {
			t.Fatal(err)
		}
		if c.Owner != "team-a" || c.ID != prod.ID {
			t.Fatalf("the connection moved: %+v", c)
		}
	}
}

// Dynamics: one environment per team

func TestAdvDynamicsEnvTakenByOtherTeam(t *testing.T) {
	e := advDyn(t)
	ctx := context.Background()
	resB, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-b", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	cb, err := e.m.Choose(ctx, resB.Choice, resB.Choices[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	resA, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Choose(ctx, resA.Choice, cb.ExternalID); tether.ErrorCode(err) != tether.CodeOrgTaken {
		t.Fatalf("team A choosing team B's environment: %v", err)
	}
	// The same team connecting its environment again: not a second live
	// connection to the same org.
	resB2, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-b", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	c2, err := e.m.Choose(ctx, resB2.Choice, cb.ExternalID)
	live := 0
	conns, _, _ := e.node.List(ctx, tether.ListOptions{Kind: tether.KindOrg})
	for _, c := range conns {
		if c.ExternalID == cb.ExternalID && c.Status != tether.StatusDeleted {
			live++
		}
	}
	if live != 1 {
		t.Errorf("team B connecting its environment twice: %d live connections (second Choose: %+v, %v)", live, c2, err)
	}
	// Once team B deletes it, team A may connect it.
	if _, err := e.m.Delete(ctx, cb.ID); err != nil {
		t.Fatal(err)
	}
	if c2 != nil && c2.ID != cb.ID {
		if _, err := e.m.Delete(ctx, c2.ID); err != nil {
			t.Fatal(err)
		}
	}
	resA2, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Choose(ctx, resA2.Choice, cb.ExternalID); err != nil {
		t.Fatalf("team A after team B deleted: %v", err)
	}
}

// login hosts

// SalesforceLoginHost returns "a host name": control characters, empty
// labels and non-ASCII forms must not pass as one.
func TestAdvSalesforceLoginHostOdd(t *testing.T) {
	refused := []string{
		"ac\tme.my.salesforce.com",
		"ac\nme.my.salesforce.com",
		"acme\r.my.salesforce.com",
		"acme\x00.my.salesforce.com",
		"acme\x7f.my.salesforce.com",
		"..my.salesforce.com",
		"acme..my.salesforce.com",
		".acme.my.salesforce.com",
		"acme.my.salesforce.com..",
		strings.Repeat("a", 64) + ".my.salesforce.com", // a label over 63
		"https://acme.my.salesforce.com:443",
		"https://acme.my.salesforce.com:",
		"acme.my.salesforce.com:8443",
		"https://[::1]",
		"acme.my.salesforce.com\u200b", // zero width space
		"https://acme.my.salesforce.com/%2e",
		"HTTPS://ACME.lightning.force.com",
	}
	for _, in := range refused {
		if got, err := oauth.SalesforceLoginHost(in); err == nil {
			t.Errorf("%q accepted as %q", in, got)
		} else if tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("%q: %v", in, err)
		}
	}
	// Unicode: either refused, or in its ASCII (punycode) form.
	for _, in := range []string{"acmé.my.salesforce.com", "ACMÉ.MY.SALESFORCE.COM", "аcme.my.salesforce.com" /* Cyrillic a */} {
		got, err := oauth.SalesforceLoginHost(in)
		if err == nil {
			for _, r := range got {
				if r > 0x7e {
					t.Errorf("%q accepted as %q: not an ASCII host name", in, got)
					break
				}
			}
		}
	}
	good := map[string]string{
		"ACME.MY.SALESFORCE.COM":              "acme.my.salesforce.com",
		"acme.my.salesforce.com.":             "acme.my.salesforce.com",
		"xn--acm-bla.my.salesforce.com":       "xn--acm-bla.my.salesforce.com",
		"HTTPS://Acme.My.Salesforce.Com":      "acme.my.salesforce.com",
		"\tacme.my.salesforce.com\n":          "acme.my.salesforce.com",
		"acme--UAT.sandbox.my.salesforce.com": "acme--uat.sandbox.my.salesforce.com",
	}
	for in, want := range good {
		if got, err := oauth.SalesforceLoginHost(in); err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
}

// Begin with odd hosts: refused before anything is stored, or an
// authorization URL that parses and names the canonical host.
func TestAdvBeginOddHosts(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	hosts := []string{
		"ACME.my.salesforce.com.", "acme.my.salesforce.com:443", "ac\nme.my.salesforce.com", "acmé.my.salesforce.com",
		strings.Repeat("a.", 126) + "my.salesforce.com", strings.Repeat("x", 300), "globex.my.salesforce.com?x=.my.salesforce.com",
	}
	for _, h := range hosts {
		auth, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", Host: h})
		if err != nil {
			if tether.ErrorCode(err) != tether.CodeInvalid {
				t.Errorf("%q: %v", h, err)
			}
			continue
		}
		u, perr := url.Parse(auth)
		if perr != nil {
			t.Errorf("Begin with host %q returned an authorization URL that does not parse: %q (%v)", h, auth, perr)
			continue
		}
		if !strings.HasSuffix(u.Host, ".my.salesforce.com") || u.Path != "/services/oauth2/authorize" || u.Scheme != "https" {
			t.Errorf("host %q: authorization URL %q", h, auth)
		}
	}
	// Upper case and trailing dot log in at the canonical host, and the
	// login completes.
	if _, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "hank@globex.com", Host: "GLOBEX.my.salesforce.com."})); err != nil {
		t.Fatalf("an upper-case host with a trailing dot: %v", err)
	}
}

// callback queries

func TestAdvCompleteOddQueries(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	// A huge state is refused before the Store is read.
	if _, err := e.m.Complete(ctx, url.Values{"state": {strings.Repeat("s", 1<<20)}, "code": {"c"}}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("huge state: %v", err)
	}
	// Duplicated state: a bogus one first leaves the real one usable.
	q := e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	dup := url.Values{"state": {"bogus", q.Get("state")}, "code": {q.Get("code")}}
	if _, err := e.m.Complete(ctx, dup); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("duplicated state, bogus first: %v", err)
	}
	// Duplicated code: a bogus one first. The login fails (the provider
	// refuses the code), the state is spent, no connection.
	dupCode := url.Values{"state": {q.Get("state")}, "code": {"bogus", q.Get("code")}}
	if _, err := e.m.Complete(ctx, dupCode); err == nil {
		t.Errorf("a bogus first code completed")
	}
	if _, err := e.m.Complete(ctx, q); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("state reused after a failed exchange: %v", err)
	}
	// A huge code and a huge error: a short error, quickly.
	q = e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	start := time.Now()
	_, err := e.m.Complete(ctx, url.Values{"state": {q.Get("state")}, "code": {strings.Repeat("c", 4<<20)}})
	if err == nil || len(err.Error()) > 300 || time.Since(start) > 2*time.Second {
		t.Errorf("huge code: %d-byte error after %v", len(err.Error()), time.Since(start))
	}
	q = e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	_, err = e.m.Complete(ctx, url.Values{"state": {q.Get("state")}, "error": {strings.Repeat("e\r\n\"", 1<<16)}})
	if tether.ErrorCode(err) != tether.CodeUnauthenticated || len(err.Error()) > 200 || strings.ContainsAny(err.Error(), "\r\n\"") {
		t.Errorf("huge error: %q", err)
	}
	// Both error and code: the error wins, nothing is connected.
	q = e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	q.Set("error", "access_denied")
	if _, err := e.m.Complete(ctx, q); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Errorf("error and code: %v", err)
	}
	if conns, _, _ := e.node.List(ctx, tether.ListOptions{}); len(conns) != 0 {
		t.Errorf("connections: %d", len(conns))
	}
	// Callback refuses POST.
	rec := &respRecorder{h: http.Header{}}
	e.m.Callback(func(http.ResponseWriter, *http.Request, *oauth.Result, error) { t.Error("done called for a POST") }).
		ServeHTTP(rec, &http.Request{Method: http.MethodPost, URL: &url.URL{RawQuery: "state=x"}})
	if rec.code != http.StatusMethodNotAllowed {
		t.Errorf("POST callback: %d", rec.code)
	}
}

type respRecorder struct {
	h    http.Header
	code int
}

func (r *respRecorder) Header() http.Header         { return r.h }
func (r *respRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *respRecorder) WriteHeader(c int)           { r.code = c }

// Salesforce token answer signature

// Salesforce's issued_at is a string of milliseconds; a provider (or a
// proxy re-encoding JSON) answering it as a number signed over the same
// digits must verify the same way.
func TestAdvIssuedAtNumber(t *testing.T) {
	e := newSFEnv(t)
	e.sf.Tamper(func(a map[string]any) {
		n := json.Number(a["issued_at"].(string))
		a["issued_at"] = n
	})
	_, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Errorf("an issued_at answered as a JSON number, signed over its digits, is refused: %v (salesforce.go:180 fmt.Sprint of the float64 gives exponent form, e.g. 1.763771e+12)", err)
	}
}

// A token answer without issued_at must not verify against a signature over
// id + "<nil>" (fmt.Sprint(nil)).
func TestAdvIssuedAtMissing(t *testing.T) {
	e := newSFEnv(t)
	e.sf.Tamper(func(a map[string]any) {
		delete(a, "issued_at")
		a["signature"] = sign("consumer-secret", a["id"].(string)+"<nil>")
	})
	res, err := e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	if tether.ErrorCode(err) != tether.CodeProtocol {
		t.Errorf("a token answer without issued_at (signed over id+\"<nil>\") is accepted: %v", err)
	}
	if err == nil && res.Connection != nil {
		_, _ = e.m.Delete(context.Background(), res.Connection.ID)
	}
	for name, v := range map[string]any{"object": map[string]any{"x": 1}, "bool": true, "null": nil, "empty": ""} {
		v := v
		e.sf.Tamper(func(a map[string]any) {
			a["issued_at"] = v
			s := ""
			switch v := v.(type) {
			case bool:
				s = "true"
			case nil:
				s = "<nil>"
			case map[string]any:
				s = "map[x:1]"
			case string:
				s = v
			}
			a["signature"] = sign("consumer-secret", a["id"].(string)+s)
		})
		res, err := e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
		if tether.ErrorCode(err) != tether.CodeProtocol {
			t.Errorf("issued_at %s (%v), signed over id+fmt.Sprint(issued_at), accepted: %v", name, v, err)
		}
		if err == nil && res.Connection != nil {
			_, _ = e.m.Delete(context.Background(), res.Connection.ID)
		}
	}
}

// A signature over other bytes than id and issued_at, or with another key,
// is refused.
func TestAdvSignatureOtherBytes(t *testing.T) {
	e := newSFEnv(t)
	forgeries := map[string]func(a map[string]any){
		"id only":        func(a map[string]any) { a["signature"] = sign("consumer-secret", a["id"].(string)) },
		"issued_at only": func(a map[string]any) { a["signature"] = sign("consumer-secret", a["issued_at"].(string)) },
		"issued_at + id": func(a map[string]any) {
			a["signature"] = sign("consumer-secret", a["issued_at"].(string)+a["id"].(string))
		},
		"separator": func(a map[string]any) {
			a["signature"] = sign("consumer-secret", a["id"].(string)+" "+a["issued_at"].(string))
		},
		"other key": func(a map[string]any) {
			a["signature"] = sign("consumer-secret2", a["id"].(string)+a["issued_at"].(string))
		},
		"empty key":       func(a map[string]any) { a["signature"] = sign("", a["id"].(string)+a["issued_at"].(string)) },
		"empty signature": func(a map[string]any) { a["signature"] = "" },
		"number signature": func(a map[string]any) {
			a["signature"] = 12345
		},
		"truncated": func(a map[string]any) { s := a["signature"].(string); a["signature"] = s[:len(s)-8] },
		"issued_at changed": func(a map[string]any) {
			a["issued_at"] = a["issued_at"].(string) + "0"
		},
		"id changed to another user": func(a map[string]any) {
			a["id"] = strings.Replace(a["id"].(string), "/id/", "/id//", 1)
		},
		"instance_url on another org's My Domain, re-signed id unchanged": func(a map[string]any) {
			a["instance_url"] = "https://globex.my.salesforce.com"
		},
	}
	for name, f := range forgeries {
		e.sf.Tamper(f)
		res, err := e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
		if err == nil {
			t.Errorf("%s: accepted: %+v", name, res.Connection)
			if res.Connection != nil {
				_, _ = e.m.Delete(context.Background(), res.Connection.ID)
			}
		}
	}
}

// concurrency

// The same callback query completed from many goroutines: exactly one
// wins, every other is CodeInvalid.
func TestAdvConcurrentComplete(t *testing.T) {
	e := newSFEnv(t)
	q := e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	const n = 32
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, errs[i] = e.m.Complete(context.Background(), q)
		}()
	}
	close(start)
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case tether.ErrorCode(err) != tether.CodeInvalid:
			t.Errorf("a losing Complete: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d Completes of one callback won", ok)
	}
	if conns, _, _ := e.node.List(context.Background(), tether.ListOptions{}); len(conns) != 1 {
		t.Fatalf("%d connections", len(conns))
	}
}

// The same choice from many goroutines: exactly one wins.
func TestAdvConcurrentChoose(t *testing.T) {
	e := advDyn(t)
	res, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 16
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.m.Choose(context.Background(), res.Choice, res.Choices[i%len(res.Choices)].ID)
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("a losing Choose: %v", err)
		}
	}
	if conns, _, _ := e.node.List(context.Background(), tether.ListOptions{}); ok != 1 || len(conns) != 1 {
		t.Fatalf("%d Chooses won, %d connections", ok, len(conns))
	}
}

// Two teams completing logins to the same org at once: one connection,
// the other team refused with CodeOrgTaken and its grant revoked.
func TestAdvConcurrentTeamsSameOrg(t *testing.T) {
	e := newSFEnv(t)
	log := &rtLog{}
	e.sf.Tamper(log.tamper)
	const n = 8
	qs := make([]url.Values, n)
	for i := range n {
		qs[i] = e.callback(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-" + string(rune('a'+i)), LoginHint: "ada@acme.com"})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = e.m.Complete(context.Background(), qs[i])
		}()
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		if err == nil {
			ok++
		} else if tether.ErrorCode(err) != tether.CodeOrgTaken {
			t.Errorf("a losing team: %v", err)
		}
	}
	if ok != 1 {
		t.Fatalf("%d teams connected the same org", ok)
	}
	live := 0
	for _, rt := range log.all() {
		if !e.sf.Revoked(rt) {
			live++
		}
	}
	if live != 1 {
		t.Errorf("%d grants live at the provider after %d logins made one connection", live, n)
	}
}

// Token / Client / Delete

func TestAdvTokenOnUnusableConnections(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	c, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Fatal(err)
	}
	client, err := e.m.Client(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, c.ID); err != nil { // cached now
		t.Fatal(err)
	}
	// Paused through the Node: the very next call.
	if _, err := e.node.Pause(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, c.ID); tether.ErrorCode(err) != tether.CodePaused {
		t.Errorf("Token of a paused connection: %v", err)
	}
	if _, err := e.m.Client(ctx, c.ID); tether.ErrorCode(err) != tether.CodePaused {
		t.Errorf("Client of a paused connection: %v", err)
	}
	if resp, err := client.Get(c.RemoteURL + "/services/data/v62.0/limits"); err == nil {
		resp.Body.Close()
		t.Errorf("an existing client of a paused connection still sends its token: %d", resp.StatusCode)
	} else if tether.ErrorCode(err) != tether.CodePaused {
		t.Errorf("an existing client of a paused connection: %v", err)
	}
	if _, err := e.node.Activate(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, c.ID); err != nil {
		t.Fatalf("after Activate: %v", err)
	}
	// Deleted through the Node directly.
	if _, err := e.node.Delete(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if tok, err := e.m.Token(ctx, c.ID); err == nil {
		t.Errorf("Token of a deleted connection: %v", tok.AccessToken != "")
	}
	if resp, err := client.Get(c.RemoteURL + "/services/data/v62.0/limits"); err == nil {
		resp.Body.Close()
		t.Errorf("an existing client of a deleted connection still sends its token")
	}
	// Peer and unknown connections.
	peer, _, err := e.node.Initiate(ctx, tether.InitiateRequest{Destination: "https://partner.example/tether", Mode: tether.ModeBasic, LocalName: "S", RemoteName: "E", Name: "S to E"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, peer.ID); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("Token of a peer connection: %v", err)
	}
	if _, err := e.m.Client(ctx, peer.ID); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("Client of a peer connection: %v", err)
	}
	if _, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: "salesforce", Reauthorize: peer.ID}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("Begin re-authorizing a peer connection: %v", err)
	}
	if _, err := e.m.Token(ctx, "nope"); tether.ErrorCode(err) != tether.CodeNotFound {
		t.Errorf("Token of an unknown connection: %v", err)
	}
	if _, err := e.m.Token(ctx, ""); err == nil {
		t.Errorf("Token of an empty ID: no error")
	}
}

// Delete twice: the second does not revoke again, record a second
// EventCredentialsGone or bring tokens back; Token refuses after either.
func TestAdvDeleteTwice(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	log := &rtLog{}
	e.sf.Tamper(log.tamper)
	c, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Delete(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if !e.sf.Revoked(log.last()) {
		t.Errorf("Delete did not revoke")
	}
	d2, err2 := e.m.Delete(ctx, c.ID)
	t.Logf("second Delete: %+v, %v", d2 != nil, err2)
	if err2 == nil && (d2 == nil || d2.Status != tether.StatusDeleted) {
		t.Errorf("second Delete: %+v", d2)
	}
	evs, _ := e.node.Events(ctx, c.ID, 0, 0)
	if n := countEvents(evs, tether.EventCredentialsGone); n != 1 {
		t.Errorf("%d credentials_gone events after two Deletes", n)
	}
	if _, err := e.m.Token(ctx, c.ID); err == nil {
		t.Errorf("Token after two Deletes")
	}
	if err := e.m.Sweep(ctx); err != nil {
		t.Errorf("Sweep: %v", err)
	}
	if _, err := e.m.Delete(ctx, "nope"); tether.ErrorCode(err) != tether.CodeNotFound {
		t.Errorf("Delete of an unknown connection: %v", err)
	}
	// Concurrent Deletes of a fresh connection: one EventCredentialsGone.
	c2, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = e.m.Delete(ctx, c2.ID) }()
	}
	wg.Wait()
	evs, _ = e.node.Events(ctx, c2.ID, 0, 0)
	if n := countEvents(evs, tether.EventCredentialsGone); n != 1 {
		t.Errorf("%d credentials_gone events after concurrent Deletes", n)
	}
}

// error strings

// No error this package returns carries an access token, refresh token,
// authorization code, code verifier or the client secret.
func TestAdvErrorsLeakNoSecrets(t *testing.T) {
	e, sec := newAdvSF(t)
	ctx := context.Background()
	var errs []error
	keep := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	req := oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}
	tampers := map[string]func(a map[string]any){
		"bad signature":      func(a map[string]any) { a["signature"] = "AAAA" },
		"instance has token": func(a map[string]any) { a["instance_url"] = "https://" + a["access_token"].(string) + ".evil.example" },
		"instance path token": func(a map[string]any) {
			a["instance_url"] = "https://acme.my.salesforce.com/" + a["access_token"].(string)
		},
		"id has token": func(a map[string]any) {
			a["id"] = "https://login.salesforce.com/id/" + a["access_token"].(string)
			a["signature"] = sign("consumer-secret", a["id"].(string)+a["issued_at"].(string))
		},
		"token type": func(a map[string]any) { a["token_type"] = "mac " + a["access_token"].(string) },
		"error echo": func(a map[string]any) {
			a["error"] = "invalid_grant " + a["refresh_token"].(string)
		},
		"no access token": func(a map[string]any) { a["access_token"] = ""; a["x"] = a["refresh_token"] },
	}
	for name, f := range tampers {
		e.sf.Tamper(f)
		res, err := e.connect(t, req)
		keep(err)
		if err == nil {
			t.Logf("tampered answer %q accepted", name)
			if res.Connection != nil {
				_, _ = e.m.Delete(ctx, res.Connection.ID)
			}
		}
	}
	e.sf.Tamper(nil)
	// Misuse.
	q := e.callback(t, req)
	_, err := e.m.Complete(ctx, url.Values{"state": {q.Get("state")}, "error": {q.Get("code")}})
	_ = err // the code is echoed by the caller's own error param: not checked
	q = e.callback(t, req)
	bad := url.Values{"state": {q.Get("state")}, "code": {q.Get("code") + "x"}}
	_, err = e.m.Complete(ctx, bad)
	keep(err)
	_, err = e.m.Complete(ctx, url.Values{"state": {q.Get("state")}, "code": {q.Get("code")}})
	keep(err)
	c, err := connection(e.connect(t, req))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := e.m.Token(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	sec.add(tok.AccessToken)
	// A 401 after the grant is revoked behind the Manager's back.
	e.sf.ExpireSessions()
	e.clock.now.Add(int64(time.Minute))
	client, err := e.m.Client(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if resp, err := client.Get(c.RemoteURL + "/services/data/v62.0/limits"); err == nil {
		resp.Body.Close()
	} else {
		keep(err)
	}
	_, err = connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Reauthorize: c.ID, LoginHint: "hank@globex.com", Host: "globex.my.salesforce.com"}))
	keep(err)
	_, err = e.m.Delete(ctx, c.ID)
	keep(err)
	_, err = e.m.Token(ctx, c.ID)
	keep(err)
	keep(e.m.Sweep(ctx))

	if len(errs) < 8 {
		t.Fatalf("only %d errors provoked", len(errs))
	}
	secrets := sec.list()
	for _, err := range errs {
		msg := err.Error()
		for _, s := range secrets {
			if strings.Contains(msg, s) {
				t.Errorf("an error carries a secret (%.8s…): %s", s, msg)
			}
		}
		// A partial token (sanitizeCode keeps 64 characters).
		for _, s := range secrets {
			if len(s) > 24 && strings.Contains(msg, s[:24]) && !strings.Contains(msg, s) {
				t.Errorf("an error carries part of a secret (%.8s…): %s", s, msg)
			}
		}
	}
}

// A token answer of another type than Bearer is refused at the refresh
// (token.go:111); the login's first answer must be refused the same way,
// not stored and sent as a Bearer token.
func TestAdvTokenTypeNotBearer(t *testing.T) {
	e := newSFEnv(t)
	e.sf.Tamper(func(a map[string]any) { a["token_type"] = "mac" })
	res, err := e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	if tether.ErrorCode(err) != tether.CodeProtocol {
		t.Errorf("a token answer with token_type mac at Complete: %v (connection %v), want protocol as at refresh", err, res != nil && res.Connection != nil)
	}
}
