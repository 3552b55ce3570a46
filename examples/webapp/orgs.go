package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/oauth"
)

// demoProvider names the demo OpenID Connect provider's connections.
const demoProvider = "demo"

// orgKind is a choice of the New org connection page.
type orgKind struct {
	Key     string
	Label   string
	About   string
	Envs    []orgEnv // the environment types to choose from: one provider each
	Host    bool     // a My Domain login host may be given
	Hint    string   // the login hint field's label
	Missing string   // why it cannot be used; "" when it can
}

// orgEnv is an environment type and the provider that logs in to it.
type orgEnv struct {
	Provider string
	Label    string
}

var dynamicsClouds = []struct {
	cloud oauth.Cloud
	label string
}{
	{oauth.CloudPublic, "Public Cloud"}, {oauth.CloudGCC, "GCC"}, {oauth.CloudGCCHigh, "GCC High"},
	{oauth.CloudDoD, "DoD"}, {oauth.CloudChina, "China (21Vianet)"},
}

// providerLabel names a connection's provider as the pages show it.
func providerLabel(name string) string {
	switch {
	case name == "salesforce":
		return "Salesforce Production"
	case name == "salesforce-sandbox":
		return "Salesforce Sandbox"
	case name == demoProvider:
		return "Demo provider"
	case strings.HasPrefix(name, "dynamics"):
		for _, c := range dynamicsClouds {
			if oauth.Dynamics(c.cloud, "", "").Name == name {
				return "Dynamics 365 (" + c.label + ")"
			}
		}
	}
	return name
}

// providers returns the org providers configured, and fills the catalog
// the New org connection page shows, saying for each one what is missing.
func (a *app) providers(ctx context.Context) ([]oauth.Provider, error) {
	cfg := a.cfg
	callback := cfg.PublicURL + "/api/orgs/callback"
	var ps []oauth.Provider
	sfMissing := ""
	if cfg.SalesforceKey == "" || cfg.SalesforceSecret == "" {
		sfMissing = "Not configured: start the app with SALESFORCE_CLIENT_ID and SALESFORCE_CLIENT_SECRET set, the consumer key and secret of an External Client App whose callback URL is " + callback + "."
	} else {
		ps = append(ps, oauth.Salesforce(oauth.SalesforceProduction, cfg.SalesforceKey, cfg.SalesforceSecret),
			oauth.Salesforce(oauth.SalesforceSandbox, cfg.SalesforceKey, cfg.SalesforceSecret))
	}
	sf := orgKind{Key: "salesforce", Label: "Salesforce Production", Host: true, Hint: "Salesforce username (optional)",
		About: "A production or Developer Edition org, logged in at login.salesforce.com or the org's My Domain.",
		Envs:  []orgEnv{{"salesforce", "Production"}}, Missing: sfMissing}
	sandbox := orgKind{Key: "salesforce-sandbox", Label: "Salesforce Sandbox", Host: true, Hint: "Salesforce username (optional)",
		About: "A sandbox org, logged in at test.salesforce.com or the sandbox's My Domain.",
		Envs:  []orgEnv{{"salesforce-sandbox", "Sandbox"}}, Missing: sfMissing}
	dyn := orgKind{Key: "dynamics", Label: "Dynamics 365", Hint: "Work account (optional)",
		About: "A Dataverse environment. After the login you choose among the environments your account reaches."}
	for _, c := range dynamicsClouds {
		p := oauth.Dynamics(c.cloud, cfg.DynamicsClientID, cfg.DynamicsSecret)
		dyn.Envs = append(dyn.Envs, orgEnv{p.Name, c.label})
		if cfg.DynamicsClientID != "" && cfg.DynamicsSecret != "" {
			ps = append(ps, p)
		}
	}
	if cfg.DynamicsClientID == "" || cfg.DynamicsSecret == "" {
		dyn.Missing = "Not configured: start the app with DYNAMICS_CLIENT_ID and DYNAMICS_CLIENT_SECRET set, an app registered in Microsoft Entra ID with the redirect URI " + callback + "."
	}
	demo := orgKind{Key: demoProvider, Label: "Demo provider", Hint: "Account", Envs: []orgEnv{{demoProvider, "Demo"}},
		About: "A real OpenID Connect server on this machine (oidc-provider, run with node): the login completes by itself as the account you name."}
	if !cfg.DemoOAuth {
		demo.Missing = "Not started: run the app with -demo-oauth (it needs node and, once, " + oauthtest.Install + ")."
	} else {
		op, err := oauthtest.Launch(a.ctx, oauthtest.Options{RedirectURIs: []string{callback}, AccessTTL: cfg.DemoAccessTTL})
		if err != nil {
			return nil, err
		}
		a.demo = op
		p := oauth.OIDC(demoProvider, op.Issuer, op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me",
			op.ClientID, op.ClientSecret, "openid", "offline_access")
		p.RevokeURL = op.Issuer + "/token/revocation"
		ps = append(ps, p)
		a.log.InfoContext(ctx, "webapp: demo provider started", "issuer", op.Issuer)
	}
	a.catalog = []orgKind{sf, sandbox, dyn, demo}
	return ps, nil
}

type newOrgView struct {
	Kinds []orgKind
	Name  string
}

// newOrg is the New org connection page; its Connect buttons open the
// provider's login in a popup (the page's script, through the admin API).
func (a *app) newOrg(w http.ResponseWriter, r *http.Request, s *session) error {
	a.render(w, r, http.StatusOK, "org_new.html", s, "New org connection", newOrgView{Kinds: a.catalog, Name: s.Tenant.Name + " CRM"})
	return nil
}

// checkURL is the API an org connection's check calls, as a sync job
// would: "" when the app knows none.
func (a *app) checkURL(c *tether.Connection) string {
	switch {
	case c.Provider == demoProvider && a.demo != nil:
		return a.demo.Issuer + "/me"
	case strings.HasPrefix(c.Provider, "salesforce") && c.RemoteURL != "":
		return strings.TrimSuffix(c.RemoteURL, "/") + "/services/data/v62.0/limits"
	case strings.HasPrefix(c.Provider, "dynamics") && c.RemoteURL != "":
		return strings.TrimSuffix(c.RemoteURL, "/") + "/api/data/v9.2/WhoAmI"
	}
	return ""
}

// checkResult is how an org's API last answered.
type checkResult struct {
	At   time.Time
	OK   bool
	Text string
}

type orgChecks struct {
	mu sync.Mutex
	m  map[string]checkResult
}

func newOrgChecks() *orgChecks { return &orgChecks{m: map[string]checkResult{}} }

func (o *orgChecks) get(id string) (checkResult, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	r, ok := o.m[id]
	return r, ok
}

func (o *orgChecks) set(id string, r checkResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.m[id] = r
}

// checkOrg calls c's API with its access token. A token the provider
// refuses to refresh makes the connection Inactive (the oauth package
// does it, with an event): the page then offers Re-authorize.
func (a *app) checkOrg(ctx context.Context, c *tether.Connection) checkResult {
	res := checkResult{At: time.Now()}
	defer func() { a.checks.set(c.ID, res) }()
	target := a.checkURL(c)
	if target == "" || a.orgs == nil {
		res.Text = "no API to call"
		return res
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	client, err := a.orgs.Client(ctx, c.ID)
	if err != nil {
		res.Text = orgProblem(err)
		return res
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		res.Text = "no API to call"
		return res
	}
	resp, err := client.Do(req)
	if err != nil {
		res.Text = orgProblem(err)
		return res
	}
	resp.Body.Close()
	res.OK = resp.StatusCode == http.StatusOK
	res.Text = "answered " + resp.Status
	if res.OK {
		res.Text = "OK"
	}
	return res
}

// orgProblem says why an org's API could not be called.
func orgProblem(err error) string {
	switch tether.ErrorCode(err) {
	case tether.CodeUnauthenticated:
		return "access withdrawn: re-authorize"
	case tether.CodePaused:
		return "paused"
	case tether.CodeUnavailable, tether.CodeDeadlineExceeded:
		return "the provider could not be reached"
	case tether.CodeNotConnected:
		return "not connected"
	}
	return fmt.Sprintf("failed (%s)", tether.ErrorCode(err))
}

// watchOrgs calls every active org's API every OrgCheckEvery, standing in
// for the sync jobs a help desk runs: they are what notices that access
// was withdrawn.
func (a *app) watchOrgs(ctx context.Context) {
	t := time.NewTicker(a.cfg.OrgCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		opts := tether.ListOptions{Kind: tether.KindOrg, Status: tether.StatusActive, Limit: tether.MaxPageSize}
		for {
			conns, next, err := a.node.List(ctx, opts)
			if err != nil {
				if ctx.Err() == nil {
					a.log.WarnContext(ctx, "webapp: listing org connections", "err", err)
				}
				break
			}
			for _, c := range conns {
				a.checkOrg(ctx, c)
			}
			if next == "" {
				break
			}
			opts.After = next
		}
	}
}
