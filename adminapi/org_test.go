package adminapi_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether/adminapi"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/oauth"
)

// orgWorld is a world whose API also serves org connections, with the
// real OpenID Connect test server as the provider.
func orgWorld(t *testing.T) (*world, *oauthtest.OP, *oauth.Manager) {
	oauthtest.Require(t)
	var op *oauthtest.OP
	var m *oauth.Manager
	w := newWorld(t, func(w *world, cfg *adminapi.Config, base string) {
		op = oauthtest.Start(t, oauthtest.Options{RedirectURIs: []string{base + "/orgs/callback"}, AccessTTL: time.Second})
		var err error
		m, err = oauth.New(oauth.Config{
			Node: cfg.Node, Store: w.store, RedirectURL: base + "/orgs/callback",
			Providers: []oauth.Provider{
				oauth.OIDC("crm", op.Issuer, op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access"),
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		cfg.Orgs = m
	})
	return w, op, m
}

// login plays the user's popup: it opens the authorization URL, logs in as
// account and follows the redirect back to the API's callback as session.
// It returns the message the callback page posts to its opener.
func (w *world) login(op *oauthtest.OP, session, authURL, account string) (int, map[string]any) {
	w.t.Helper()
	if account != "" {
		authURL += "&login_hint=" + account
	}
	back, err := op.Authorize(context.Background(), authURL)
	if err != nil {
		w.t.Fatal(err)
	}
	path := strings.TrimPrefix(back.String(), w.srv.URL+"/api")
	r := w.call(session, "GET", path, nil)
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		w.t.Fatalf("callback answered %s", ct)
	}
	body := string(r.body)
	i := strings.Index(body, "var msg = ")
	j := strings.Index(body[i:], ";\n")
	var msg map[string]any
	if i < 0 || j < 0 || json.Unmarshal([]byte(body[i+len("var msg = "):i+j]), &msg) != nil {
		w.t.Fatalf("callback page: %s", body)
	}
	return r.status, msg
}

func (w *world) begin(session, path string, body any) string {
	w.t.Helper()
	var out struct {
		AuthorizationURL string `json:"authorization_url"`
	}
	w.must(200, session, "POST", path, body).decode(w.t, &out)
	return out.AuthorizationURL
}

// An org connection through the API: begin, log in at the provider, the
// callback page posts the connection to the opener; tokens withdrawn at
// the provider make it inactive; re-authorize makes it active again. A
// login begun by one team cannot be finished in another's session, and
// another team cannot re-authorize the connection.
func TestOrgConnection(t *testing.T) {
	w, op, m := orgWorld(t)
	ctx := context.Background()
	u := w.begin("session-a", "/orgs", map[string]string{"provider": "crm", "name": "CRM"})
	status, msg := w.login(op, "session-b", u, "org-acme")
	if e, _ := msg["error"].(map[string]any); status != 400 || e == nil || e["code"] != "invalid" {
		t.Fatalf("a login begun by team-a, finished as team-b: %d %v", status, msg)
	}
	var list struct{ Connections []conn }
	for _, s := range []string{"session-a", "session-b"} {
		w.must(200, s, "GET", "/connections?kind=org", nil).decode(t, &list)
		if len(list.Connections) != 0 {
			t.Fatalf("a refused login made a connection for %s", s)
		}
	}
	u = w.begin("session-a", "/orgs", map[string]string{"provider": "crm", "name": "CRM"})
	status, msg = w.login(op, "session-a", u, "org-acme")
	c, _ := msg["connection"].(map[string]any)
	if status != 200 || c == nil || c["status"] != "active" || msg["type"] != "tether.org" {
		t.Fatalf("callback: %d %v", status, msg)
	}
	id := c["id"].(string)
	var got struct {
		conn
		Kind      string `json:"kind"`
		OrgID     string `json:"org_id"`
		CreatedBy string `json:"created_by"`
	}
	w.must(200, "session-a", "GET", "/connections/"+id, nil).decode(t, &got)
	if got.Kind != "org" || got.OrgID == "" || got.CreatedBy != "alice" {
		t.Errorf("org connection: %+v", got)
	}
	if err := op.Withdraw(ctx, "org-acme"); err != nil {
		t.Fatal(err)
	}
	w.eventually("the withdrawn grant makes the connection inactive", func() bool {
		_, _ = m.Token(ctx, id)
		w.must(200, "session-a", "GET", "/connections/"+id, nil).decode(t, &got)
		return got.Status == "inactive"
	})
	w.must(404, "session-b", "POST", "/connections/"+id+"/reauthorize", nil)
	u = w.begin("session-a", "/connections/"+id+"/reauthorize", nil)
	status, msg = w.login(op, "session-a", u, "org-acme")
	if c, _ := msg["connection"].(map[string]any); status != 200 || c == nil || c["id"] != id || c["status"] != "active" {
		t.Fatalf("re-authorized: %d %v", status, msg)
	}
	var evs struct{ Events []struct{ Type string } }
	w.must(200, "session-a", "GET", "/connections/"+id+"/events", nil).decode(t, &evs)
	var types []string
	for _, e := range evs.Events {
		types = append(types, e.Type)
	}
	if s := strings.Join(types, ","); !strings.Contains(s, "auth_lost") || !strings.HasSuffix(s, "reauthorized") {
		t.Errorf("history: %s", s)
	}
	// A peer connection is not re-authorized with a login.
	p, _ := w.initiate("session-a")
	w.must(409, "session-a", "POST", "/connections/"+p.ID+"/reauthorize", nil)
	w.must(400, "session-a", "POST", "/orgs", map[string]string{"provider": "nobody"})
	w.must(400, "session-a", "POST", "/orgs/choose", map[string]string{"choice": "x", "org_id": "y"})
	answered := validate(t, w.rec.all())
	for _, want := range []string{"POST /orgs", "GET /orgs/callback", "POST /connections/{id}/reauthorize"} {
		if !answered[want] {
			t.Errorf("%s never answered with success", want)
		}
	}
}
