package oauth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/oauth"
)

const redirect = "http://127.0.0.1/oauth/callback"

type env struct {
	op    *oauthtest.OP
	node  *tether.Node
	store *memstore.Store
	m     *oauth.Manager
	calls *oauthtest.TokenCounter
	clock *clockAt
}

// clockAt is a settable clock for state expiry.
type clockAt struct{ now atomic.Int64 }

func (c *clockAt) Now() time.Time                         { return time.Unix(0, c.now.Load()) }
func (c *clockAt) After(d time.Duration) <-chan time.Time { return time.After(d) }

func newEnv(t *testing.T) *env {
	t.Helper()
	op := oauthtest.Start(t, oauthtest.Options{RedirectURIs: []string{redirect}})
	ctx := context.Background()
	st := memstore.New()
	node, err := tether.Open(ctx, tether.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	calls := &oauthtest.TokenCounter{}
	clock := &clockAt{}
	clock.now.Store(time.Now().UnixNano())
	m, err := oauth.New(oauth.Config{
		Node: node, Store: st, RedirectURL: redirect, Clock: clock,
		HTTPClient: &http.Client{Transport: calls, Timeout: 10 * time.Second},
		Providers: []oauth.Provider{
			oauth.OIDC("test-op", op.Issuer, op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access"),
			oauth.OIDC("other-op", "https://other.example", op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access"),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &env{op: op, node: node, store: st, m: m, calls: calls, clock: clock}
}

// login begins a connection and plays the user's browser; it returns the
// callback's query.
func (e *env) login(t *testing.T, ctx context.Context, req oauth.BeginRequest) url.Values {
	t.Helper()
	auth, err := e.m.Begin(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	back, err := e.op.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	return back.Query()
}

// The whole connect flow against a real provider: an Active org
// connection, its creator recorded, tokens stored.
func TestConnect(t *testing.T) {
	e := newEnv(t)
	ctx := tether.WithActor(context.Background(), "ada@team-a")
	q := e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-a", Name: "Production", LoginHint: "org-1"})
	c, err := connection(e.m.Complete(context.Background(), q))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind != tether.KindOrg || c.Status != tether.StatusActive || c.Owner != "team-a" || c.Provider != "test-op" ||
		c.ExternalID != e.op.Issuer+"|org-1" || c.CreatedBy != "ada@team-a" || c.Name != "Production" {
		t.Fatalf("connection: %+v", c)
	}
	if _, version, err := e.store.LoadOAuthToken(context.Background(), c.ID); err != nil || version != 1 {
		t.Fatalf("stored token: version %d, %v", version, err)
	}
}

// A missing, unknown, reused, expired or other-provider state, and a
// mismatched iss, are refused without calling the token endpoint.
func TestCallbackRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	begin := oauth.BeginRequest{Provider: "test-op", Owner: "team-a", LoginHint: "org-refusals"}
	check := func(name string, q url.Values) {
		t.Helper()
		before := e.calls.Tokens.Load()
		if _, err := e.m.Complete(ctx, q); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("%s: %v, want invalid", name, err)
		}
		if e.calls.Tokens.Load() != before {
			t.Errorf("%s: the token endpoint was called", name)
		}
	}
	q := e.login(t, ctx, begin)
	without := url.Values{"code": {q.Get("code")}, "iss": {q.Get("iss")}}
	check("missing state", without)
	unknown := url.Values{"code": {q.Get("code")}, "iss": {q.Get("iss")}, "state": {"not-a-state-we-issued"}}
	check("unknown state", unknown)
	wrongIss := url.Values{"code": {q.Get("code")}, "iss": {"https://evil.example"}, "state": {q.Get("state")}}
	check("mismatched iss", wrongIss)
	check("state already used by the refusal above", q)

	q = e.login(t, ctx, begin)
	if _, err := e.m.Complete(ctx, q); err != nil {
		t.Fatal(err)
	}
	check("reused state", q)

	q = e.login(t, ctx, begin)
	e.clock.now.Add(int64(11 * time.Minute))
	check("expired state", q)

	q = e.login(t, ctx, oauth.BeginRequest{Provider: "other-op", Owner: "team-a", LoginHint: "org-other"})
	check("state of another provider (its iss differs)", q)
}

// One org per team: another team cannot connect an org that is connected;
// a team that reconnects an org after deleting its connection gets the
// settings back.
func TestOneOrgPerTeam(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first, err := connection(e.m.Complete(ctx, e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-a", LoginHint: "org-shared"})))
	if err != nil {
		t.Fatal(err)
	}
	_, err = connection(e.m.Complete(ctx, e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-b", LoginHint: "org-shared"})))
	if tether.ErrorCode(err) != tether.CodeOrgTaken {
		t.Fatalf("a second team connecting the same org: %v, want org_taken", err)
	}
	if _, err := e.node.Update(ctx, first.ID, tether.Update{Settings: map[string]string{"sync": "hourly"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.node.Delete(ctx, first.ID); err != nil {
		t.Fatal(err)
	}
	again, err := connection(e.m.Complete(ctx, e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-a", LoginHint: "org-shared"})))
	if err != nil {
		t.Fatal(err)
	}
	if again.ID == first.ID || again.Settings["sync"] != "hourly" {
		t.Fatalf("the new connection %s has settings %v, want those of %s", again.ID, again.Settings, first.ID)
	}
	evs, err := e.node.Events(ctx, again.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || !strings.Contains(evs[1].Detail, first.ID) {
		t.Fatalf("events: %+v", evs)
	}
}

// connection returns the connection a completed login created, failing
// when the login asks for a choice instead.
func connection(res *oauth.Result, err error) (*tether.Connection, error) {
	if err != nil {
		return nil, err
	}
	if res.Connection == nil {
		return nil, fmt.Errorf("the login asks for a choice among %+v", res.Choices)
	}
	return res.Connection, nil
}
