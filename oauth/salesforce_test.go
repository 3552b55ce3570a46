package oauth_test

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/providertest"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/oauth"
)

const sfRedirect = "https://app.example/oauth/callback"

type sfEnv struct {
	sf    *providertest.Salesforce
	node  *tether.Node
	store *memstore.Store
	m     *oauth.Manager
	clock *clockAt
}

// Orgs of the Salesforce-shaped server: a production org, a sandbox with
// its My Domain, and a production org that allows logins at its My Domain
// only.
var sfOrgs = []providertest.SalesforceOrg{
	{Name: "Acme", MyDomain: "acme.my.salesforce.com", Users: []string{"ada@acme.com", "bob@acme.com"}},
	{Name: "Acme UAT", Sandbox: true, MyDomain: "acme--uat.sandbox.my.salesforce.com", Users: []string{"ada@acme.com.uat"}},
	{Name: "Globex", MyDomain: "globex.my.salesforce.com", PreventDefaultLogin: true, Users: []string{"hank@globex.com"}},
}

func newSFEnv(t *testing.T) *sfEnv {
	t.Helper()
	sf := providertest.StartSalesforce(t, providertest.SalesforceOptions{
		ClientID: "3MVG9-tether", ClientSecret: "consumer-secret", RedirectURI: sfRedirect, Rotate: true,
	}, sfOrgs...)
	node, st, m, clock := newMemManager(t, sf.Client(),
		oauth.Salesforce(oauth.SalesforceProduction, "3MVG9-tether", "consumer-secret"),
		oauth.Salesforce(oauth.SalesforceSandbox, "3MVG9-tether", "consumer-secret"))
	return &sfEnv{sf: sf, node: node, store: st, m: m, clock: clock}
}

// newMemManager returns a Manager of providers on a memstore Node, calling
// the providers with client, on a clock the test moves.
func newMemManager(t *testing.T, client *http.Client, providers ...oauth.Provider) (*tether.Node, *memstore.Store, *oauth.Manager, *clockAt) {
	t.Helper()
	st := memstore.New()
	node, err := tether.Open(context.Background(), tether.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	clock := &clockAt{}
	clock.now.Store(time.Now().UnixNano())
	m, err := oauth.New(oauth.Config{Node: node, Store: st, RedirectURL: sfRedirect, HTTPClient: client, Clock: clock, Providers: providers})
	if err != nil {
		t.Fatal(err)
	}
	return node, st, m, clock
}

// connect logs user in with req and completes the login.
func (e *sfEnv) connect(t *testing.T, req oauth.BeginRequest) (*oauth.Result, error) {
	t.Helper()
	ctx := context.Background()
	auth, err := e.m.Begin(ctx, req)
	if err != nil {
		return nil, err
	}
	back, err := e.sf.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	return e.m.Complete(ctx, back.Query())
}

// A production org at login.salesforce.com, a sandbox at
// test.salesforce.com and an org that allows only its My Domain, given per
// connection: each connection names its org, type, API URL and creator.
func TestSalesforceConnect(t *testing.T) {
	e := newSFEnv(t)
	ctx := tether.WithActor(context.Background(), "ada")
	cases := []struct {
		req                   oauth.BeginRequest
		name, orgType, apiURL string
	}{
		{oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}, "Acme", "production", "https://acme.my.salesforce.com"},
		{oauth.BeginRequest{Provider: "salesforce-sandbox", Owner: "team-a", LoginHint: "ada@acme.com.uat"}, "Acme UAT", "sandbox", "https://acme--uat.sandbox.my.salesforce.com"},
		{oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "hank@globex.com", Host: "https://Globex.my.salesforce.com/"}, "Globex", "production", "https://globex.my.salesforce.com"},
	}
	for _, tc := range cases {
		auth, err := e.m.Begin(ctx, tc.req)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(auth, "code_challenge_method=S256") {
			t.Errorf("authorization URL without PKCE S256: %s", auth)
		}
		back, err := e.sf.Authorize(ctx, auth)
		if err != nil {
			t.Fatal(err)
		}
		c, err := connection(e.m.Complete(context.Background(), back.Query()))
		if err != nil {
			t.Fatalf("%s: %v", tc.req.LoginHint, err)
		}
		if c.ExternalID != e.sf.OrgID(tc.req.LoginHint) || c.RemoteName != tc.name || c.OrgType != tc.orgType ||
			c.RemoteURL != tc.apiURL || c.CreatedBy != "ada" || c.Provider != tc.req.Provider || c.Status != tether.StatusActive {
			t.Errorf("%s: connection %+v", tc.req.LoginHint, c)
		}
		// The host's API calls go to the org's instance with its token.
		client, err := e.m.Client(ctx, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Get(c.RemoteURL + "/services/data/v62.0/limits")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("%s: API call answered %d", tc.req.LoginHint, resp.StatusCode)
		}
	}

	// Globex refuses logins at login.salesforce.com: without its My
	// Domain the login fails at the provider.
	auth, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: "salesforce", Owner: "team-b", LoginHint: "hank@globex.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.sf.Authorize(ctx, auth); err == nil {
		t.Error("Globex accepted a login at login.salesforce.com")
	}
}

// Login hosts a user types are checked against the Salesforce allowlist;
// a Lightning host from the browser bar is refused with what to enter.
func TestSalesforceLoginHost(t *testing.T) {
	good := map[string]string{
		"acme.my.salesforce.com":                               "acme.my.salesforce.com",
		"https://ACME.my.salesforce.com/":                      "acme.my.salesforce.com",
		"acme--uat.sandbox.my.salesforce.com":                  "acme--uat.sandbox.my.salesforce.com",
		"acme.my.site.com":                                     "acme.my.site.com",
		"acme.my.salesforce.mil":                               "acme.my.salesforce.mil",
		"acme.my.sfcrmproducts.cn":                             "acme.my.sfcrmproducts.cn",
		"acme.develop.my.salesforce.com":                       "acme.develop.my.salesforce.com",
		"test.salesforce.com":                                  "test.salesforce.com",
		"acme--dev.sandbox.my-salesforce.com":                  "acme--dev.sandbox.my-salesforce.com",
		" login.salesforce.com ":                               "login.salesforce.com",
		"acme.my.salesforce.com.":                              "acme.my.salesforce.com",
		"https://acme.my.salesforce.com":                       "acme.my.salesforce.com",
		"acme.scratch.my.salesforce.com":                       "acme.scratch.my.salesforce.com",
		"acme--uat.sandbox.my.sfcrmproducts.cn":                "acme--uat.sandbox.my.sfcrmproducts.cn",
		"globex--qa.sandbox.my.salesforce.mil":                 "globex--qa.sandbox.my.salesforce.mil",
		"https://acme.my.salesforce.com/?":                     "acme.my.salesforce.com",
		"https://acme.my.salesforce.com/#":                     "acme.my.salesforce.com",
		"https://acme.my.salesforce.com/?#":                    "acme.my.salesforce.com",
		"https://acme.my.salesforce.com:443":                   "",
		"acme.lightning.force.com":                             "",
		"https://acme.lightning.force.com/lightning/page/home": "",
		"acme.my.salesforce.com.evil.example":                  "",
		"evil.example":                                         "",
		"my.salesforce.com":                                    "",
		"http://acme.my.salesforce.com":                        "",
		"https://user@acme.my.salesforce.com":                  "",
		"127.0.0.1":                                            "",
		"na44.salesforce.com":                                  "",
		"acme.my.salesforce.com/services/oauth2":               "",
		"":                                                     "",
	}
	for in, want := range good {
		got, err := oauth.SalesforceLoginHost(in)
		if want == "" {
			if err == nil || tether.ErrorCode(err) != tether.CodeInvalid {
				t.Errorf("%q: accepted as %q (%v)", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
	}
	_, err := oauth.SalesforceLoginHost("https://acme.lightning.force.com/lightning/page/home")
	if err == nil || !strings.Contains(err.Error(), "acme.my.salesforce.com") {
		t.Errorf("a Lightning host is refused without saying what to enter: %v", err)
	}

	// Begin refuses such a host before anything is stored.
	e := newSFEnv(t)
	if _, err := e.m.Begin(context.Background(), oauth.BeginRequest{Provider: "salesforce", Owner: "t", Host: "acme.lightning.force.com"}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("Begin with a Lightning host: %v", err)
	}
}

// SECURITY 28: a token answer whose identity signature does not verify,
// whose instance_url is not a Salesforce host, or whose identity URL names
// another org than userinfo is refused, and nothing is stored.
func TestSalesforceRefusesForgedAnswers(t *testing.T) {
	e := newSFEnv(t)
	req := oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}
	forgeries := map[string]func(map[string]any){
		"signature":          func(a map[string]any) { a["signature"] = "AAAA" + a["signature"].(string)[4:] },
		"no signature":       func(a map[string]any) { delete(a, "signature") },
		"instance_url":       func(a map[string]any) { a["instance_url"] = "https://evil.example" },
		"lightning instance": func(a map[string]any) { a["instance_url"] = "https://acme.lightning.force.com" },
		"http instance":      func(a map[string]any) { a["instance_url"] = "http://acme.my.salesforce.com" },
		"instance with path": func(a map[string]any) { a["instance_url"] = "https://acme.my.salesforce.com/x" },
		"id of another org, re-signed": func(a map[string]any) {
			// Signed correctly, but userinfo at the instance names the
			// real org: refused.
			id := strings.Replace(a["id"].(string), "/id/00D", "/id/00E", 1)
			a["id"] = id
			a["signature"] = sign("consumer-secret", id+a["issued_at"].(string))
		},
	}
	for name, f := range forgeries {
		e.sf.Tamper(f)
		res, err := e.connect(t, req)
		if err == nil {
			t.Errorf("%s: accepted: %+v", name, res)
			continue
		}
		if tether.ErrorCode(err) != tether.CodeProtocol {
			t.Errorf("%s: %v, want protocol", name, err)
		}
	}
	e.sf.Tamper(nil)
	if conns, _, err := e.node.List(context.Background(), tether.ListOptions{}); err != nil || len(conns) != 0 {
		t.Fatalf("refused logins left connections: %d, %v", len(conns), err)
	}
	if _, err := connection(e.connect(t, req)); err != nil {
		t.Fatalf("an honest answer after the forgeries: %v", err)
	}
}

// Re-authorization must reach the connection's org: another org is refused
// and nothing changes. A refreshed sandbox (same sandbox host, new org) is
// recognised and its settings move to a new connection for the new org.
func TestSalesforceReauthorize(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	prod, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Fatal(err)
	}
	before, _, _ := e.store.LoadOAuthToken(ctx, prod.ID)
	_, err = e.connect(t, oauth.BeginRequest{Provider: "salesforce", Reauthorize: prod.ID, LoginHint: "hank@globex.com", Host: "globex.my.salesforce.com"})
	if tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("re-authorizing with another org: %v, want invalid", err)
	}
	after, _, _ := e.store.LoadOAuthToken(ctx, prod.ID)
	if string(before) != string(after) {
		t.Fatal("a refused re-authorization changed the stored tokens")
	}
	if _, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Reauthorize: prod.ID, LoginHint: "bob@acme.com"})); err != nil {
		t.Fatalf("re-authorizing with another user of the same org: %v", err)
	}

	// An org that allows only its My Domain is re-authorized there
	// without being told again.
	globex, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "hank@globex.com", Host: "globex.my.salesforce.com"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Reauthorize: globex.ID, LoginHint: "hank@globex.com"})); err != nil {
		t.Fatalf("re-authorizing an org that allows only its My Domain: %v", err)
	}

	uat, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce-sandbox", Owner: "team-a", LoginHint: "ada@acme.com.uat"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.node.Update(ctx, uat.ID, tether.Update{Settings: map[string]string{"sync": "nightly"}}); err != nil {
		t.Fatal(err)
	}
	newOrg := e.sf.RefreshSandbox(uat.ExternalID)
	res, err := e.connect(t, oauth.BeginRequest{Provider: "salesforce-sandbox", Reauthorize: uat.ID, LoginHint: "ada@acme.com.uat"})
	if err != nil {
		t.Fatal(err)
	}
	if res.Connection != nil || res.Replaces != uat.ID || len(res.Choices) != 1 || res.Choices[0].ID != newOrg {
		t.Fatalf("a refreshed sandbox is not reported as such: %+v", res)
	}
	moved, err := e.m.Choose(ctx, res.Choice, newOrg)
	if err != nil {
		t.Fatal(err)
	}
	if moved.ExternalID != newOrg || moved.Settings["sync"] != "nightly" || moved.ID == uat.ID || moved.Status != tether.StatusActive {
		t.Fatalf("the new sandbox connection: %+v", moved)
	}
	old, err := e.node.Get(ctx, uat.ID)
	if err != nil || old.Status != tether.StatusDeleted {
		t.Fatalf("the refreshed sandbox's old connection: %+v, %v", old, err)
	}
	evs, err := e.node.Events(ctx, uat.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(evs, func(ev tether.Event) bool {
		return ev.Type == tether.EventOrgRefreshed && strings.Contains(ev.Detail, moved.ID)
	}) {
		t.Fatalf("no org_refreshed event naming the new connection: %+v", evs)
	}
	if _, err := e.m.Choose(ctx, res.Choice, newOrg); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("a choice used twice: %v", err)
	}
}

func sign(secret, s string) string { return providertest.Sign(secret, s) }
