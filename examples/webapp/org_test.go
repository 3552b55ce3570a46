package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/internal/providertest"
)

var callbackMessage = regexp.MustCompile(`var msg = (\{.*\});`)

// login runs an org login begun at the admin API path: the provider's
// login as authorize plays it, then the callback page in the browser's
// session. It returns the message the callback page posts to the page
// that opened it.
func login(t *testing.T, c *client, path string, body map[string]string, authorize func(context.Context, string) (*url.URL, error)) map[string]any {
	t.Helper()
	st, res := c.api(http.MethodPost, path, body)
	authURL, _ := res["authorization_url"].(string)
	if st != http.StatusOK || authURL == "" {
		t.Fatalf("POST /api%s: %d %v", path, st, res)
	}
	back, err := authorize(context.Background(), authURL)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(back.String(), c.base+"/api/orgs/callback?") {
		t.Fatalf("the provider sends the browser to %s", back.Redacted())
	}
	p := c.get(strings.TrimPrefix(back.String(), c.base))
	m := callbackMessage.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("callback page: %d\n%s", p.status, p.body)
	}
	var msg map[string]any
	if err := json.Unmarshal([]byte(m[1]), &msg); err != nil {
		t.Fatal(err)
	}
	if msg["type"] != "tether.org" || msg["error"] != nil {
		t.Fatalf("callback message: %v", msg)
	}
	return msg
}

func connectionID(t *testing.T, msg map[string]any) string {
	t.Helper()
	conn, _ := msg["connection"].(map[string]any)
	id, _ := conn["id"].(string)
	if id == "" {
		t.Fatalf("the callback made no connection: %v", msg)
	}
	return id
}

// An org connection with the demo provider, a real OpenID Connect server:
// Connect, the app's checks call the org's API, access withdrawn at the
// provider shows as inactive, Re-authorize makes it active again, Delete
// revokes the grant.
func TestOrgFlow(t *testing.T) {
	oauthtest.Require(t)
	a := startApp(t, config{AllowPrivateNetwork: true, DemoOAuth: true, OrgCheckEvery: 200 * time.Millisecond})
	c := newClient(t, a)
	c.signin("acme")
	if p := c.get("/orgs/new"); !strings.Contains(p.body, `id="connect-demo"`) || !strings.Contains(p.body, `id="demo-hint" name="login_hint" value="acme"`) {
		t.Fatalf("org page:\n%s", p.body)
	}
	msg := login(t, c, "/orgs", map[string]string{"provider": "demo", "name": "Acme CRM", "login_hint": "acme"}, a.demo.Authorize)
	id := connectionID(t, msg)
	p := c.get("/connections/" + id)
	if status(t, p) != "active" || !strings.Contains(p.body, "Demo provider") || !strings.Contains(p.body, `id="check"`) {
		t.Fatalf("details:\n%s", p.body)
	}
	eventually(t, 20*time.Second, "a check of the org's API", func() bool {
		return strings.Contains(c.get("/connections/"+id).body, "OK · checked")
	})
	if p := c.post("/connections/"+id+"/check", nil); flashOf(p) != "The org's API: OK." {
		t.Fatalf("Check now: %q", flashOf(p))
	}

	// Another tenant's login cannot complete this one's, and does not see it.
	globex := newClient(t, a)
	globex.signin("globex")
	if st, _ := globex.api(http.MethodPost, "/connections/"+id+"/reauthorize", map[string]string{}); st != http.StatusNotFound {
		t.Errorf("globex re-authorizes acme's org: %d", st)
	}

	if err := a.demo.Withdraw(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	// The app's checks call the API; the provider refuses the token and
	// then its refresh.
	eventually(t, 40*time.Second, "the withdrawn access shows", func() bool {
		return strings.Contains(c.get("/connections/"+id).body, `data-status="inactive"`)
	})
	p = c.get("/connections/" + id)
	if !strings.Contains(p.body, `id="reauthorize" data-action="reauthorize" data-id="`+id+`" data-hint="acme"`) || !strings.Contains(p.body, "access withdrawn: re-authorize") {
		t.Fatalf("inactive details:\n%s", p.body)
	}
	msg = login(t, c, "/connections/"+id+"/reauthorize", map[string]string{"login_hint": "acme"}, a.demo.Authorize)
	if connectionID(t, msg) != id {
		t.Fatalf("re-authorizing made another connection: %v", msg)
	}
	p = c.get("/connections/" + id)
	if status(t, p) != "active" {
		t.Fatalf("after re-authorizing:\n%s", p.body)
	}
	p = c.post("/connections/"+id+"/delete", nil)
	if status(t, p) != "deleted" {
		t.Fatalf("after Delete:\n%s", p.body)
	}
	want := []string{"credentials_gone", "deleted", "reauthorized", "auth_lost", "created"}
	if got := events(p); !isSubsequence(want, got) {
		t.Fatalf("history = %v, want %v in this order", got, want)
	}
}

// Dynamics 365: the login reaches several environments, and the user
// picks one (the callback page hands the choice to the page, which posts
// it back); the app then calls the environment's WhoAmI.
func TestDynamicsEnvironmentChoice(t *testing.T) {
	srv := listen()
	d := providertest.StartDynamics(t, providertest.DynamicsOptions{
		ClientID: "app-id", ClientSecret: "app-secret", RedirectURI: "http://" + srv.Listener.Addr().String() + "/api/orgs/callback",
		Authority: "login.microsoftonline.com", Discovery: "globaldisco.crm.dynamics.com",
	},
		providertest.DynamicsEnvironment{Name: "Contoso", Host: "contoso.crm4.dynamics.com", APIHost: "contoso.api.crm4.dynamics.com",
			Tenant: "aaaaaaaa-0000-4000-8000-00000000000a", Users: []string{"ada@contoso.com"}},
		providertest.DynamicsEnvironment{Name: "Contoso Sandbox", Type: 5, Host: "contoso-dev.crm4.dynamics.com", APIHost: "contoso-dev.api.crm4.dynamics.com",
			Tenant: "aaaaaaaa-0000-4000-8000-00000000000a", Users: []string{"ada@contoso.com"}},
	)
	a := serve(t, srv, config{AllowPrivateNetwork: true, DynamicsClientID: "app-id", DynamicsSecret: "app-secret",
		OAuthClient: d.Client(), OrgCheckEvery: 200 * time.Millisecond})
	c := newClient(t, a)
	c.signin("globex")
	if p := c.get("/orgs/new"); !strings.Contains(p.body, `id="connect-dynamics"`) || !strings.Contains(p.body, `<option value="dynamics-gcc">GCC</option>`) {
		t.Fatalf("org page:\n%s", p.body)
	}
	msg := login(t, c, "/orgs", map[string]string{"provider": "dynamics", "name": "Globex Dataverse", "login_hint": "ada@contoso.com"}, d.Authorize)
	orgs, _ := msg["orgs"].([]any)
	choice, _ := msg["choice"].(string)
	if choice == "" || len(orgs) != 2 {
		t.Fatalf("the callback offers %v", msg)
	}
	sandbox, _ := orgs[1].(map[string]any)
	if sandbox["name"] != "Contoso Sandbox" || sandbox["type"] != "sandbox" {
		t.Fatalf("second environment: %v", sandbox)
	}
	st, conn := c.api(http.MethodPost, "/orgs/choose", map[string]string{"choice": choice, "org_id": sandbox["id"].(string)})
	id, _ := conn["id"].(string)
	if st != http.StatusCreated || id == "" {
		t.Fatalf("choose: %d %v", st, conn)
	}
	p := c.get("/connections/" + id)
	if status(t, p) != "active" || !strings.Contains(p.body, "Dynamics 365 (Public Cloud)") || !strings.Contains(p.body, "https://contoso-dev.api.crm4.dynamics.com/api/data/v9.2/WhoAmI") {
		t.Fatalf("details:\n%s", p.body)
	}
	eventually(t, 20*time.Second, "a check of WhoAmI", func() bool {
		return strings.Contains(c.get("/connections/"+id).body, "OK · checked")
	})
	if p := c.get("/connections"); !strings.Contains(p.body, "Globex Dataverse") || !strings.Contains(p.body, "Contoso Sandbox") {
		t.Fatalf("list:\n%s", p.body)
	}
}
