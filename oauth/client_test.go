package oauth_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/oauth"
	"github.com/tetherkit/tether/tethertest"
)

// connectOrg connects account for team-a and returns the connection ID.
func (e *env) connectOrg(t *testing.T, account string) string {
	t.Helper()
	ctx := context.Background()
	c, err := connection(e.m.Complete(ctx, e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-a", LoginHint: account})))
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// A valid token is handed out as stored; an expiring one is refreshed once,
// its rotated refresh token stored, even when 50 goroutines ask at once.
func TestTokenRefresh(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.connectOrg(t, "org-refresh")
	first, err := e.m.Token(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	calls := e.calls.Tokens.Load()
	if again, err := e.m.Token(ctx, id); err != nil || again.AccessToken != first.AccessToken || e.calls.Tokens.Load() != calls {
		t.Fatalf("a valid token was not handed out as stored: %v", err)
	}

	e.clock.now.Add(int64(2 * time.Minute)) // past the access token's 60 s
	var wg sync.WaitGroup
	got := make([]string, 50)
	for i := range got {
		wg.Go(func() {
			tok, err := e.m.Token(ctx, id)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = tok.AccessToken
		})
	}
	wg.Wait()
	if n := e.calls.Tokens.Load() - calls; n != 1 {
		t.Fatalf("50 goroutines needing a refresh made %d calls to the token endpoint, want 1", n)
	}
	for _, a := range got {
		if a == first.AccessToken || a != got[0] {
			t.Fatalf("goroutines got different or stale tokens: %q", got)
		}
	}
	_, version, err := e.store.LoadOAuthToken(ctx, id)
	if err != nil || version != 2 {
		t.Fatalf("stored version %d after one refresh (%v), want 2", version, err)
	}
	// The rotated refresh token was stored: a second refresh works.
	e.clock.now.Add(int64(2 * time.Minute))
	if _, err := e.m.Token(ctx, id); err != nil {
		t.Fatalf("a refresh with the stored, rotated refresh token: %v", err)
	}
}

// A grant withdrawn at the provider makes the connection Inactive with one
// event after one call to the token endpoint (invalid_grant is not tried
// again); callers get the re-authorize error without another call. A
// paused connection gives the paused error.
func TestTokenWithdrawn(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.connectOrg(t, "org-withdrawn")
	if err := e.op.Withdraw(ctx, "org-withdrawn"); err != nil {
		t.Fatal(err)
	}
	e.clock.now.Add(int64(2 * time.Minute))
	before := e.calls.Tokens.Load()
	if _, err := e.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("refresh of a withdrawn grant: %v, want unauthenticated", err)
	}
	if n := e.calls.Tokens.Load() - before; n != 1 {
		t.Fatalf("the refused refresh made %d calls to the token endpoint, want 1", n)
	}
	c, err := e.node.Get(ctx, id)
	if err != nil || c.Status != tether.StatusInactive {
		t.Fatalf("connection after a withdrawn grant: %+v, %v", c, err)
	}
	calls := e.calls.Tokens.Load()
	if _, err := e.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeUnauthenticated || e.calls.Tokens.Load() != calls {
		t.Fatalf("an inactive connection: %v, token endpoint calls +%d", err, e.calls.Tokens.Load()-calls)
	}
	evs, err := e.node.Events(ctx, id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	lost := 0
	for _, ev := range evs {
		if ev.Type == tether.EventAuthLost {
			lost++
		}
	}
	if lost != 1 {
		t.Fatalf("%d auth_lost events, want 1: %+v", lost, evs)
	}

	paused := e.connectOrg(t, "org-paused")
	if _, err := e.node.Pause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, paused); tether.ErrorCode(err) != tether.CodePaused {
		t.Fatalf("a paused connection: %v, want paused", err)
	}
}

// Re-authorizing an inactive connection with a login to the same org makes
// it Active again, same ID, settings kept; a login to another org is
// refused and changes nothing.
func TestReauthorize(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.connectOrg(t, "org-reauth")
	if _, err := e.node.Update(ctx, id, tether.Update{Settings: map[string]string{"sync": "daily"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.op.Withdraw(ctx, "org-reauth"); err != nil {
		t.Fatal(err)
	}
	e.clock.now.Add(int64(2 * time.Minute))
	if _, err := e.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("refresh of a withdrawn grant: %v", err)
	}
	q := e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Reauthorize: id, LoginHint: "another-org"})
	if _, err := e.m.Complete(ctx, q); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("re-authorizing with another org: %v, want invalid", err)
	}
	if c, _ := e.node.Get(ctx, id); c.Status != tether.StatusInactive {
		t.Fatalf("a refused re-authorization left the connection %s", c.Status)
	}
	q = e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Reauthorize: id, LoginHint: "org-reauth"})
	c, err := connection(e.m.Complete(ctx, q))
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != id || c.Status != tether.StatusActive || c.Settings["sync"] != "daily" {
		t.Fatalf("after re-authorizing: %+v", c)
	}
	if _, err := e.m.Token(ctx, id); err != nil {
		t.Fatalf("a token after re-authorizing: %v", err)
	}
	evs, _ := e.node.Events(ctx, id, 0, 0)
	if last := evs[len(evs)-1]; last.Type != tether.EventReauthorized {
		t.Fatalf("last event: %+v", last)
	}
}

// rig is a Manager connected to the real test provider through a gate in
// front of its token and revocation endpoints, on a store that counts its
// reads and can refuse writes, with a fake clock.
type rig struct {
	op    *oauthtest.OP
	node  *tether.Node
	store *spyStore
	m     *oauth.Manager
	clock *stepClock
	gate  *oauthtest.Gate
}

// rigOptions shape a rig; zero values are defaults.
type rigOptions struct {
	accessTTL time.Duration // the provider's access token lifetime (60 s)
	idleTTL   time.Duration // Provider.IdleTTL of "test-op"
	revoke    bool          // "test-op" has a revocation endpoint
}

// newRig starts the provider and a Manager with two providers at it:
// "test-op", shaped by opts, and "plain-op", without IdleTTL or
// revocation endpoint.
func newRig(t *testing.T, opts rigOptions) *rig {
	t.Helper()
	op := oauthtest.Start(t, oauthtest.Options{RedirectURIs: []string{redirect}, AccessTTL: opts.accessTTL})
	ctx := context.Background()
	g := oauthtest.NewGate(t, op.Issuer)
	st := &spyStore{Store: memstore.New()}
	clock := &stepClock{Clock: tethertest.NewClock(time.Now())}
	node, err := tether.Open(ctx, tether.Config{Store: st, Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	testOP := oauth.OIDC("test-op", op.Issuer, op.Issuer+"/auth", g.URL+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access")
	testOP.IdleTTL = opts.idleTTL
	if opts.revoke {
		testOP.RevokeURL = g.URL + "/token/revocation"
	}
	plainOP := oauth.OIDC("plain-op", op.Issuer, op.Issuer+"/auth", g.URL+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access")
	m, err := oauth.New(oauth.Config{
		Node: node, Store: st, RedirectURL: redirect, Clock: clock,
		HTTPClient: &http.Client{Timeout: 10 * time.Second},
		Providers:  []oauth.Provider{testOP, plainOP},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &rig{op: op, node: node, store: st, m: m, clock: clock, gate: g}
}

// connect connects account with provider for team-a and returns the
// connection ID.
func (r *rig) connect(t *testing.T, provider, account string) string {
	t.Helper()
	ctx := context.Background()
	auth, err := r.m.Begin(ctx, oauth.BeginRequest{Provider: provider, Owner: "team-a", LoginHint: account})
	if err != nil {
		t.Fatal(err)
	}
	back, err := r.op.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	c, err := connection(r.m.Complete(ctx, back.Query()))
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// stored returns connection id's stored grant as the Store keeps it.
func (r *rig) stored(t *testing.T, id string) storedGrant {
	t.Helper()
	data, version, err := r.store.LoadOAuthToken(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var g storedGrant
	if err := json.Unmarshal(data, &g); err != nil {
		t.Fatal(err)
	}
	g.Version = version
	return g
}

// storedGrant is what the tests read of a stored grant.
type storedGrant struct {
	Access   string    `json:"access"`
	Refresh  string    `json:"refresh"`
	Renewed  time.Time `json:"renewed"`
	Failures int       `json:"failures"`
	Version  int64     `json:"-"`
}

// events returns connection id's events of type et.
func (r *rig) events(t *testing.T, id string, et tether.EventType) []tether.Event {
	t.Helper()
	evs, err := r.node.Events(context.Background(), id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []tether.Event
	for _, ev := range evs {
		if ev.Type == et {
			out = append(out, ev)
		}
	}
	return out
}

// status returns connection id's status.
func (r *rig) status(t *testing.T, id string) tether.Status {
	t.Helper()
	c, err := r.node.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return c.Status
}

// redeem sends refresh token rt to the provider's token endpoint directly,
// and returns the OAuth error, "" when it was accepted.
func (r *rig) redeem(t *testing.T, rt string) string {
	t.Helper()
	return r.op.Post(t, "/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})["error"].(string)
}

// spyStore is a memstore that counts the reads Token may make and fails
// SaveOAuthToken while failSave is set.
type spyStore struct {
	*memstore.Store
	reads    atomic.Int64
	failSave atomic.Bool
}

// errStoreDown is what spyStore's SaveOAuthToken fails with.
var errStoreDown = &tether.Error{Code: tether.CodeUnavailable, Op: "spystore: save oauth token", Message: "the database is down"}

func (s *spyStore) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	s.reads.Add(1)
	return s.Store.GetConnection(ctx, id)
}

func (s *spyStore) LoadOAuthToken(ctx context.Context, id string) ([]byte, int64, error) {
	s.reads.Add(1)
	return s.Store.LoadOAuthToken(ctx, id)
}

func (s *spyStore) SaveOAuthToken(ctx context.Context, id string, data []byte, version int64) (int64, error) {
	if s.failSave.Load() {
		return 0, errStoreDown
	}
	return s.Store.SaveOAuthToken(ctx, id, data, version)
}

// stepClock is a fake clock whose After fires at once, recording how long
// it was asked to wait, unless hold is set: then it fires when the test
// advances the clock past it.
type stepClock struct {
	*tethertest.Clock
	hold  atomic.Bool
	mu    sync.Mutex
	waits []time.Duration
}

func (c *stepClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	if c.hold.Load() {
		return c.Clock.After(d)
	}
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

// waited returns the waits asked so far and forgets them.
func (c *stepClock) waited() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	w := c.waits
	c.waits = nil
	return w
}

// hangUp is a fault that closes the connection without an answer.
func hangUp(w http.ResponseWriter) {
	if c, _, err := http.NewResponseController(w).Hijack(); err == nil {
		c.Close()
	}
}

// cutAnswer is a fault that starts a 200 answer and closes the connection in
// the middle of its body.
func cutAnswer(w http.ResponseWriter) {
	c, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	_, _ = buf.WriteString("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"access_token\":\"eyJhbGciOi")
	_ = buf.Flush()
	c.Close()
}

// A valid token is handed out from memory, without reading the Store. A
// pause, activation or deletion made through the Node applies to the very
// next call; one made by another process sharing the Store applies once
// the cached token is a second old.
func TestTokenCached(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	id := r.connect(t, "test-op", "org-cached")
	first, err := r.m.Token(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if first.RefreshToken != "" {
		t.Fatal("Token handed out the refresh token")
	}
	reads := r.store.reads.Load()
	for range 100 {
		tok, err := r.m.Token(ctx, id)
		if err != nil || tok.AccessToken != first.AccessToken {
			t.Fatalf("a cached token: %v", err)
		}
		tok.AccessToken = "changed by the caller" // the cache keeps its own copy
	}
	if n := r.store.reads.Load() - reads; n != 0 {
		t.Fatalf("100 calls for a cached token read the Store %d times, want 0", n)
	}

	if _, err := r.node.Pause(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodePaused {
		t.Fatalf("Token right after Pause: %v, want paused", err)
	}
	if _, err := r.node.Activate(ctx, id); err != nil {
		t.Fatal(err)
	}
	if tok, err := r.m.Token(ctx, id); err != nil || tok.AccessToken != first.AccessToken {
		t.Fatalf("Token right after Activate: %v", err)
	}

	// Another process pauses it on the shared Store.
	other, err := tether.Open(ctx, tether.Config{Store: r.store.Store, Clock: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.Pause(ctx, id); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(500 * time.Millisecond)
	if _, err := r.m.Token(ctx, id); err != nil {
		t.Fatalf("within the second, the cached token: %v", err)
	}
	r.clock.Advance(500 * time.Millisecond)
	if _, err := r.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodePaused {
		t.Fatalf("a second after another process paused it: %v, want paused", err)
	}
	if _, err := other.Activate(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Token(ctx, id); err != nil {
		t.Fatalf("after another process activated it: %v", err)
	}
	if _, err := r.node.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeNotConnected {
		t.Fatalf("Token right after Delete: %v, want not_connected", err)
	}
}

// A refresh the provider fails for a reason that may pass is tried again
// within the call, a bounded number of times, honouring Retry-After; the
// next try that works gives the token. When every try fails the caller
// gets CodeUnavailable, the connection stays Active and the stored refresh
// token is the one the provider still accepts.
func TestTokenRetriesTransientFailures(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	unavailable503 := oauthtest.Answer(http.StatusServiceUnavailable, `{"error":"server_error"}`)
	for _, tc := range []struct {
		name  string
		fault oauthtest.Fault
		minRA time.Duration // the least wait between tries
		retry time.Duration // the RetryAfter of the error when every try fails
	}{
		{name: "503", fault: unavailable503},
		{name: "429 with Retry-After", fault: oauthtest.Answer(http.StatusTooManyRequests, `{"error":"slow_down"}`, "Retry-After", "2"), minRA: 2 * time.Second, retry: 2 * time.Second},
		{name: "temporarily_unavailable", fault: oauthtest.Answer(http.StatusBadRequest, `{"error":"temporarily_unavailable"}`)},
		{name: "no answer", fault: hangUp},
		{name: "answer cut mid-body", fault: cutAnswer},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Cleanup(r.gate.Reset)
			id := r.connect(t, "test-op", "org-retry-"+strings.ReplaceAll(tc.name, " ", "-"))
			r.clock.Advance(2 * time.Minute) // past the access token's 60 s
			before := r.stored(t, id)

			r.gate.Next(tc.fault, tc.fault)
			r.clock.waited()
			tokens := r.gate.Tokens.Load()
			tok, err := r.m.Token(ctx, id)
			if err != nil {
				t.Fatalf("two failures, then a working refresh: %v", err)
			}
			if n := r.gate.Tokens.Load() - tokens; n != 3 {
				t.Fatalf("%d calls to the token endpoint, want 3", n)
			}
			waits := r.clock.waited()
			if len(waits) != 2 {
				t.Fatalf("waits between the tries: %v, want 2", waits)
			}
			for _, w := range waits {
				if w <= 0 || w < tc.minRA || w > 5*time.Second {
					t.Fatalf("waits between the tries: %v", waits)
				}
			}
			if after := r.stored(t, id); tok.AccessToken != after.Access || after.Refresh == before.Refresh {
				t.Fatal("the working refresh was not stored")
			}

			r.clock.Advance(2 * time.Minute)
			before = r.stored(t, id)
			r.gate.Next(tc.fault, tc.fault, tc.fault)
			tokens = r.gate.Tokens.Load()
			_, err = r.m.Token(ctx, id)
			var te *tether.Error
			if !errors.As(err, &te) || te.Code != tether.CodeUnavailable || te.RetryAfter != tc.retry {
				t.Fatalf("every try failed: %v, want unavailable (Retry-After %v)", err, tc.retry)
			}
			if n := r.gate.Tokens.Load() - tokens; n != 3 {
				t.Fatalf("%d calls to the token endpoint, want 3", n)
			}
			after := r.stored(t, id)
			if r.status(t, id) != tether.StatusActive || after.Refresh != before.Refresh || after.Failures != 1 {
				t.Fatalf("after failing refreshes: %s, refresh token kept %v, failures %d", r.status(t, id), after.Refresh == before.Refresh, after.Failures)
			}
			if _, err := r.m.Token(ctx, id); err != nil {
				t.Fatalf("the provider works again, with the kept refresh token: %v", err)
			}
			if after := r.stored(t, id); after.Failures != 0 {
				t.Fatalf("failures after a working refresh: %d", after.Failures)
			}
		})
	}

	t.Run("Retry-After too long", func(t *testing.T) {
		id := r.connect(t, "test-op", "org-retry-long")
		r.clock.Advance(2 * time.Minute)
		r.gate.Next(oauthtest.Answer(http.StatusServiceUnavailable, `{"error":"server_error"}`, "Retry-After", "120"))
		tokens := r.gate.Tokens.Load()
		_, err := r.m.Token(ctx, id)
		var te *tether.Error
		if !errors.As(err, &te) || te.Code != tether.CodeUnavailable || te.RetryAfter != 2*time.Minute {
			t.Fatalf("a 503 asking for two minutes: %v", err)
		}
		if n := r.gate.Tokens.Load() - tokens; n != 1 {
			t.Fatalf("%d calls to the token endpoint, want 1: the wait is longer than a call takes", n)
		}
	})

	t.Run("the caller's context ends during the wait", func(t *testing.T) {
		id := r.connect(t, "test-op", "org-retry-ctx")
		r.clock.Advance(2 * time.Minute)
		r.gate.FailAll(unavailable503)
		defer r.gate.FailAll(nil)
		r.clock.hold.Store(true)
		defer r.clock.hold.Store(false)
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		tokens := r.gate.Tokens.Load()
		finished := make(chan struct{})
		var err error
		go func() {
			defer close(finished)
			_, err = r.m.Token(cctx, id)
		}()
		if !r.clock.WaitForWaiters(1, finished) {
			t.Fatalf("Token returned without waiting to try again: %v", err)
		}
		cancel()
		<-finished
		if tether.ErrorCode(err) != tether.CodeCanceled {
			t.Fatalf("Token when its context ends during a wait: %v, want canceled", err)
		}
		if n := r.gate.Tokens.Load() - tokens; n != 1 {
			t.Fatalf("%d calls to the token endpoint, want 1", n)
		}
		if got := r.stored(t, id); got.Failures != 0 {
			t.Fatalf("the caller's end was recorded as %d provider failures", got.Failures)
		}
	})
}

// A refusal for good is not tried again: interaction_required, like
// invalid_grant (TestTokenWithdrawn), makes the connection Inactive with
// one event after one call to the token endpoint.
func TestTokenInteractionRequired(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	id := r.connect(t, "test-op", "org-interaction")
	r.clock.Advance(2 * time.Minute)
	r.gate.Next(oauthtest.Answer(http.StatusBadRequest, `{"error":"interaction_required","error_description":"AADSTS50076: MFA"}`))
	tokens := r.gate.Tokens.Load()
	if _, err := r.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("interaction_required: %v, want unauthenticated", err)
	}
	if n := r.gate.Tokens.Load() - tokens; n != 1 {
		t.Fatalf("%d calls to the token endpoint, want 1", n)
	}
	if r.status(t, id) != tether.StatusInactive || len(r.events(t, id, tether.EventAuthLost)) != 1 {
		t.Fatalf("after interaction_required: %s, %d auth_lost events", r.status(t, id), len(r.events(t, id, tether.EventAuthLost)))
	}
}

// SECURITY 32: when the Store cannot keep the rotated refresh token, the
// caller gets the Store's error, never the new access token, not even
// from the cache on a later call.
func TestTokenNotHandedOutUnstored(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	id := r.connect(t, "test-op", "org-unstored")
	old, err := r.m.Token(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(2 * time.Minute)
	r.store.failSave.Store(true)
	passed := r.gate.Passed.Load()
	tok, err := r.m.Token(ctx, id)
	if tok != nil || !errors.Is(err, errStoreDown) {
		t.Fatalf("Token when the store refuses the rotated tokens: %v, %v; want the store's error and no token", tok, err)
	}
	if r.gate.Passed.Load() == passed {
		t.Fatal("the provider was not asked: the test shows nothing")
	}
	if got := r.stored(t, id); got.Access != old.AccessToken || got.Version != 1 {
		t.Fatal("the stored tokens changed")
	}
	// The provider rotated the refresh token the store could not keep: the
	// stored one is refused now, and the unstored access token is never
	// handed out.
	r.store.failSave.Store(false)
	if tok, err := r.m.Token(ctx, id); tok != nil || err == nil {
		t.Fatalf("a later call: %v, %v; want an error", tok, err)
	}
}

// apiServer is an API that accepts the access tokens the provider says
// are active (RFC 7662 introspection), except those whose session ended
// (as a Salesforce session does before the token would expire: revoking
// the token at the provider would revoke the whole grant) and those
// refuse refuses; it answers with the length of the request's body.
type apiServer struct {
	*httptest.Server
	hits   atomic.Int64
	mu     sync.Mutex
	ended  map[string]bool
	refuse func(token string) bool
}

func newAPIServer(t *testing.T, op *oauthtest.OP) *apiServer {
	t.Helper()
	a := &apiServer{ended: map[string]bool{}}
	a.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		at, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		a.mu.Lock()
		refuse, ended := a.refuse, a.ended[at]
		a.mu.Unlock()
		if ended || (refuse != nil && refuse(at)) || !introspect(op, at) {
			w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			http.Error(w, "session expired or invalid", http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "%d", len(body))
	}))
	t.Cleanup(a.Close)
	return a
}

// introspect asks the provider whether access token at is active.
func introspect(op *oauthtest.OP, at string) bool {
	resp, err := http.PostForm(op.Issuer+"/token/introspection", url.Values{"token": {at}, "client_id": {op.ClientID}, "client_secret": {op.ClientSecret}})
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var answer struct {
		Active bool `json:"active"`
	}
	return json.NewDecoder(resp.Body).Decode(&answer) == nil && answer.Active
}

// end ends access token at's session.
func (a *apiServer) end(at string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.ended[at] = true
}

func (a *apiServer) setRefuse(f func(string) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.refuse = f
}

// apiCall sends req with client and returns the status and body.
func apiCall(t *testing.T, client *http.Client, req *http.Request) (int, string) {
	t.Helper()
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// onlyOnce is a body that cannot be sent again: no GetBody.
type onlyOnce struct{ io.Reader }

// The client from Client answers a 401 with one refresh and sends the
// request again, body included, when it can; a 401 for an access token
// already replaced uses the stored one without refreshing; many requests
// refused at once refresh once; a second 401 is returned as it came.
func TestClientRefreshesOn401(t *testing.T) {
	r := newRig(t, rigOptions{accessTTL: time.Hour}) // like Salesforce: a token dies before it expires
	ctx := context.Background()
	id := r.connect(t, "test-op", "org-api")
	api := newAPIServer(t, r.op)
	client, err := r.m.Client(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	get := func() *http.Request {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, api.URL+"/data", nil)
		if err != nil {
			t.Fatal(err)
		}
		return req
	}
	if status, _ := apiCall(t, client, get()); status != http.StatusOK {
		t.Fatalf("a call with a valid token: %d", status)
	}
	// A minute later the token's session ends: the API refuses it.
	endSession := func() {
		t.Helper()
		r.clock.Advance(time.Minute)
		api.end(r.stored(t, id).Access)
	}

	t.Run("401, refresh, the request again with its body", func(t *testing.T) {
		endSession()
		tokens, hits := r.gate.Tokens.Load(), api.hits.Load()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, api.URL+"/data", strings.NewReader("seventeen bytes!!"))
		if err != nil {
			t.Fatal(err)
		}
		if status, body := apiCall(t, client, req); status != http.StatusOK || body != "17" {
			t.Fatalf("after a 401: %d %q, want 200 with the body sent again", status, body)
		}
		if n, h := r.gate.Tokens.Load()-tokens, api.hits.Load()-hits; n != 1 || h != 2 {
			t.Fatalf("%d refreshes and %d API calls, want 1 and 2", n, h)
		}
	})

	t.Run("many requests refused at once refresh once", func(t *testing.T) {
		endSession()
		tokens := r.gate.Tokens.Load()
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				if status, _ := apiCall(t, client, get()); status != http.StatusOK {
					t.Errorf("status %d", status)
				}
			})
		}
		wg.Wait()
		if n := r.gate.Tokens.Load() - tokens; n != 1 {
			t.Fatalf("%d refreshes, want 1", n)
		}
	})

	t.Run("a 401 for a token replaced meanwhile", func(t *testing.T) {
		refused := r.stored(t, id).Access
		api.setRefuse(func(at string) bool {
			if at != refused {
				return false
			}
			// Another caller refreshes while this request is under way.
			r.clock.Advance(2 * time.Hour)
			if _, err := r.m.Token(ctx, id); err != nil {
				t.Error(err)
			}
			return true
		})
		defer api.setRefuse(nil)
		tokens := r.gate.Tokens.Load()
		if status, _ := apiCall(t, client, get()); status != http.StatusOK {
			t.Fatalf("status %d", status)
		}
		if n := r.gate.Tokens.Load() - tokens; n != 1 {
			t.Fatalf("%d refreshes, want only the other caller's", n)
		}
	})

	t.Run("a body that cannot be sent again", func(t *testing.T) {
		endSession()
		tokens := r.gate.Tokens.Load()
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, api.URL+"/data", onlyOnce{strings.NewReader("once")})
		if err != nil {
			t.Fatal(err)
		}
		if status, _ := apiCall(t, client, req); status != http.StatusUnauthorized {
			t.Fatalf("status %d, want the 401", status)
		}
		if n := r.gate.Tokens.Load() - tokens; n != 1 {
			t.Fatalf("%d refreshes, want 1", n)
		}
		if status, _ := apiCall(t, client, get()); status != http.StatusOK {
			t.Fatalf("the next request, with the refreshed token: %d", status)
		}
	})

	t.Run("a second 401 is returned", func(t *testing.T) {
		api.setRefuse(func(string) bool { return true })
		defer api.setRefuse(nil)
		r.clock.Advance(time.Minute)
		tokens, hits := r.gate.Tokens.Load(), api.hits.Load()
		if status, _ := apiCall(t, client, get()); status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", status)
		}
		if n, h := r.gate.Tokens.Load()-tokens, api.hits.Load()-hits; n != 1 || h != 2 {
			t.Fatalf("%d refreshes and %d API calls, want 1 and 2", n, h)
		}
		// A token just issued is not refreshed again for a 401.
		if status, _ := apiCall(t, client, get()); status != http.StatusUnauthorized {
			t.Fatalf("status %d, want 401", status)
		}
		if n, h := r.gate.Tokens.Load()-tokens, api.hits.Load()-hits; n != 1 || h != 3 {
			t.Fatalf("%d refreshes and %d API calls, want 1 and 3", n, h)
		}
	})

	t.Run("a refresh refused for good fails the request", func(t *testing.T) {
		if err := r.op.Withdraw(ctx, "org-api"); err != nil {
			t.Fatal(err)
		}
		endSession()
		_, err := client.Do(get())
		if tether.ErrorCode(err) != tether.CodeUnauthenticated || r.status(t, id) != tether.StatusInactive {
			t.Fatalf("a 401 whose refresh is refused: %v, %s", err, r.status(t, id))
		}
	})
}
