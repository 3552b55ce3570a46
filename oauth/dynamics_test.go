package oauth_test

import (
	"context"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/providertest"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/oauth"
)

const (
	tenantA = "aaaaaaaa-0000-4000-8000-00000000000a"
	tenantB = "bbbbbbbb-0000-4000-8000-00000000000b"
)

type dynEnv struct {
	d     *providertest.Dynamics
	node  *tether.Node
	store *memstore.Store
	m     *oauth.Manager
	clock *clockAt
}

func newDynEnv(t *testing.T, cloud oauth.Cloud, opts providertest.DynamicsOptions, envs ...providertest.DynamicsEnvironment) *dynEnv {
	t.Helper()
	opts.ClientID, opts.ClientSecret, opts.RedirectURI = "app-id", "app-secret", sfRedirect
	d := providertest.StartDynamics(t, opts, envs...)
	node, st, m, clock := newMemManager(t, d.Client(), oauth.Dynamics(cloud, "app-id", "app-secret"))
	return &dynEnv{d: d, node: node, store: st, m: m, clock: clock}
}

func (e *dynEnv) login(t *testing.T, req oauth.BeginRequest) (*oauth.Result, error) {
	t.Helper()
	ctx := context.Background()
	auth, err := e.m.Begin(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	back, err := e.d.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	return e.m.Complete(ctx, back.Query())
}

var publicEnvs = []providertest.DynamicsEnvironment{
	{Name: "Contoso", Host: "contoso.crm4.dynamics.com", APIHost: "contoso.api.crm4.dynamics.com", Tenant: tenantA, Users: []string{"ada@contoso.com"}},
	{Name: "Contoso Sandbox", Type: 5, Host: "contoso-dev.crm4.dynamics.com", APIHost: "contoso-dev.api.crm4.dynamics.com", Tenant: tenantA, Users: []string{"ada@contoso.com"}},
	{Name: "Contoso Old", Disabled: true, Host: "contoso-old.crm.dynamics.com", APIHost: "contoso-old.api.crm.dynamics.com", Tenant: tenantA, Users: []string{"ada@contoso.com"}},
	// An environment on GCC's hosts is not the Public Cloud's.
	{Name: "Contoso Gov", Host: "contoso.crm9.dynamics.com", APIHost: "contoso.api.crm9.dynamics.com", Tenant: tenantA, Users: []string{"ada@contoso.com"}},
	{Name: "Fabrikam", Host: "fabrikam.crm.dynamics.com", APIHost: "fabrikam.api.crm.dynamics.com", Tenant: tenantB, Users: []string{"ben@fabrikam.com"}},
}

// Public Cloud: the user logs in, picks one of the environments the Global
// Discovery Service lists (enabled, on the cloud's hosts), and the
// connection is made after WhoAmI confirms the organization; tokens are
// then redeemed for that environment at its tenant.
func TestDynamicsConnect(t *testing.T) {
	e := newDynEnv(t, oauth.CloudPublic, providertest.DynamicsOptions{Authority: "login.microsoftonline.com", Discovery: "globaldisco.crm.dynamics.com"}, publicEnvs...)
	ctx := context.Background()
	auth, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(auth)
	if u.Host != "login.microsoftonline.com" || u.Path != "/organizations/oauth2/v2.0/authorize" ||
		!strings.Contains(u.Query().Get("scope"), "https://globaldisco.crm.dynamics.com/user_impersonation") ||
		u.Query().Get("code_challenge_method") != "S256" {
		t.Fatalf("authorization URL: %s", auth)
	}
	back, err := e.d.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	res, err := e.m.Complete(tether.WithActor(ctx, "ada"), back.Query())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range res.Choices {
		names = append(names, c.Name+"/"+c.Type)
	}
	if res.Connection != nil || res.Choice == "" || !slices.Equal(names, []string{"Contoso/production", "Contoso Sandbox/sandbox"}) {
		t.Fatalf("choices: %q in %+v", names, res)
	}
	sandbox := e.d.Environment("Contoso Sandbox")
	c, err := e.m.Choose(ctx, res.Choice, res.Choices[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if c.ExternalID != sandbox.ID || c.RemoteName != "Contoso Sandbox" || c.OrgType != "sandbox" ||
		c.RemoteURL != "https://contoso-dev.api.crm4.dynamics.com" || c.Provider != "dynamics" || c.Status != tether.StatusActive {
		t.Fatalf("connection: %+v", c)
	}
	scopes := e.d.TokenScopes()
	if last := scopes[len(scopes)-1]; last != "https://contoso-dev.crm4.dynamics.com/user_impersonation offline_access" {
		t.Fatalf("the environment's tokens were asked with scope %q", last)
	}
	reqs := e.d.Requests()
	if !slices.Contains(reqs, "POST login.microsoftonline.com/"+tenantA+"/oauth2/v2.0/token") ||
		!slices.Contains(reqs, "GET contoso-dev.api.crm4.dynamics.com/api/data/v9.2/WhoAmI") {
		t.Fatalf("requests: %q", reqs)
	}
	// The host's calls reach the environment's Web API.
	client, err := e.m.Client(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Get(c.RemoteURL + "/api/data/v9.2/WhoAmI")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("WhoAmI with the connection's client: %d", resp.StatusCode)
	}
	if _, err := e.m.Choose(ctx, res.Choice, res.Choices[0].ID); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("a choice made twice: %v", err)
	}

	// One org per team holds for environments too.
	other, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-b", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Choose(ctx, other.Choice, sandbox.ID); tether.ErrorCode(err) != tether.CodeOrgTaken {
		t.Fatalf("another team connecting the same environment: %v", err)
	}
}

// WhoAmI naming another organization than the discovery listed refuses the
// connection; nothing is created.
func TestDynamicsWhoAmIMismatch(t *testing.T) {
	envs := []providertest.DynamicsEnvironment{{
		Name: "Contoso", Host: "contoso.crm.dynamics.com", APIHost: "contoso.api.crm.dynamics.com", Tenant: tenantA,
		Users: []string{"ada@contoso.com"}, WhoAmIOrg: "99999999-9999-4999-8999-999999999999",
	}}
	e := newDynEnv(t, oauth.CloudPublic, providertest.DynamicsOptions{Authority: "login.microsoftonline.com", Discovery: "globaldisco.crm.dynamics.com"}, envs...)
	res, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ada@contoso.com"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Choose(context.Background(), res.Choice, res.Choices[0].ID); tether.ErrorCode(err) != tether.CodeProtocol {
		t.Fatalf("a WhoAmI of another organization: %v, want protocol", err)
	}
	if conns, _, _ := e.node.List(context.Background(), tether.ListOptions{}); len(conns) != 0 {
		t.Fatalf("a refused environment left %d connections", len(conns))
	}
}

// Each cloud logs in at its own authority and discovery service and
// offers only environments on its own hosts.
func TestDynamicsClouds(t *testing.T) {
	cases := []struct {
		cloud                         oauth.Cloud
		provider, authority, discover string
		host, apiHost, foreignHost    string
		typ                           string
	}{
		{oauth.CloudGCC, "dynamics-gcc", "login.microsoftonline.com", "globaldisco.crm9.dynamics.com", "agency.crm9.dynamics.com", "agency.api.crm9.dynamics.com", "agency.crm.dynamics.com", "production (GCC)"},
		{oauth.CloudGCCHigh, "dynamics-gcc-high", "login.microsoftonline.us", "globaldisco.crm.microsoftdynamics.us", "agency.crm.microsoftdynamics.us", "agency.api.crm.microsoftdynamics.us", "agency.crm9.dynamics.com", "production (GCC High)"},
		{oauth.CloudDoD, "dynamics-dod", "login.microsoftonline.us", "globaldisco.crm.appsplatform.us", "agency.crm.appsplatform.us", "agency.api.crm.appsplatform.us", "agency.crm.microsoftdynamics.us", "production (DoD)"},
		{oauth.CloudChina, "dynamics-china", "login.partner.microsoftonline.cn", "globaldisco.crm.dynamics.cn", "agency.crm.dynamics.cn", "agency.api.crm.dynamics.cn", "agency.crm.dynamics.com", "production (China)"},
	}
	for _, tc := range cases {
		t.Run(string(tc.cloud), func(t *testing.T) {
			envs := []providertest.DynamicsEnvironment{
				{Name: "Agency", Host: tc.host, APIHost: tc.apiHost, Tenant: tenantA, Users: []string{"ada@agency.gov"}},
				{Name: "Elsewhere", Host: tc.foreignHost, APIHost: "x-" + tc.foreignHost, Tenant: tenantA, Users: []string{"ada@agency.gov"}},
			}
			e := newDynEnv(t, tc.cloud, providertest.DynamicsOptions{Authority: tc.authority, Discovery: tc.discover}, envs...)
			res, err := e.login(t, oauth.BeginRequest{Provider: tc.provider, Owner: "team-a", LoginHint: "ada@agency.gov"})
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Choices) != 1 || res.Choices[0].Name != "Agency" || res.Choices[0].Type != tc.typ {
				t.Fatalf("choices: %+v", res.Choices)
			}
			c, err := e.m.Choose(context.Background(), res.Choice, res.Choices[0].ID)
			if err != nil {
				t.Fatal(err)
			}
			if c.RemoteURL != "https://"+tc.apiHost {
				t.Fatalf("connection: %+v", c)
			}
			for _, r := range e.d.Requests() {
				host := strings.SplitN(strings.Fields(r)[1], "/", 2)[0]
				if host != tc.authority && host != tc.discover && host != tc.apiHost {
					t.Errorf("a request left the cloud: %s", r)
				}
			}
		})
	}
}

// Tokens are refreshed for the environment at its tenant; a withdrawn grant
// makes the connection Inactive with one event; re-authorizing picks the
// connection's environment without asking and makes it Active again.
func TestDynamicsRefreshAndReauthorize(t *testing.T) {
	e := newDynEnv(t, oauth.CloudPublic, providertest.DynamicsOptions{Authority: "login.microsoftonline.com", Discovery: "globaldisco.crm.dynamics.com"}, publicEnvs...)
	ctx := context.Background()
	res, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Owner: "team-a", LoginHint: "ben@fabrikam.com"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.m.Choose(ctx, res.Choice, res.Choices[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	first, err := e.m.Token(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.now.Add(int64(2 * time.Hour)) // past the hour an access token lives
	next, err := e.m.Token(ctx, c.ID)
	if err != nil || next.AccessToken == first.AccessToken {
		t.Fatalf("no refresh after expiry: %v", err)
	}
	scopes, reqs := e.d.TokenScopes(), e.d.Requests()
	if scopes[len(scopes)-1] != "https://fabrikam.crm.dynamics.com/user_impersonation offline_access" ||
		reqs[len(reqs)-1] != "POST login.microsoftonline.com/"+tenantB+"/oauth2/v2.0/token" {
		t.Fatalf("the refresh asked %q at %q", scopes[len(scopes)-1], reqs[len(reqs)-1])
	}

	e.d.Withdraw("ben@fabrikam.com")
	e.clock.now.Add(int64(2 * time.Hour))
	if _, err := e.m.Token(ctx, c.ID); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("a withdrawn grant: %v, want unauthenticated", err)
	}
	if _, err := e.m.Token(ctx, c.ID); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("an inactive connection: %v, want unauthenticated", err)
	}
	got, err := e.node.Get(ctx, c.ID)
	if err != nil || got.Status != tether.StatusInactive {
		t.Fatalf("after the withdrawal: %+v, %v", got, err)
	}
	evs, _ := e.node.Events(ctx, c.ID, 0, 0)
	if n := countEvents(evs, tether.EventAuthLost); n != 1 {
		t.Fatalf("%d auth_lost events, want 1: %+v", n, evs)
	}

	again, err := e.login(t, oauth.BeginRequest{Provider: "dynamics", Reauthorize: c.ID, LoginHint: "ben@fabrikam.com"})
	if err != nil {
		t.Fatal(err)
	}
	if again.Connection == nil || again.Connection.ID != c.ID || again.Connection.Status != tether.StatusActive {
		t.Fatalf("re-authorized: %+v", again)
	}
	if _, err := e.m.Token(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
}

func countEvents(evs []tether.Event, t tether.EventType) int {
	n := 0
	for _, ev := range evs {
		if ev.Type == t {
			n++
		}
	}
	return n
}
