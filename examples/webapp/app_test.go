package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// The pages render for a signed-in tenant; a browser without a session is
// sent to sign in; the session cookie and the pages' headers are set as a
// careful app sets them.
func TestPages(t *testing.T) {
	a := startApp(t, config{AllowPrivateNetwork: true})
	c := newClient(t, a)

	p := c.get("/connections/initiate")
	if p.url.Path != "/signin" || p.url.Query().Get("next") != "/connections/initiate" {
		t.Fatalf("signed out: %s, want the sign-in page", p.url)
	}
	for _, want := range []string{"Acme Support", "Globex Help Desk", `id="signin-acme"`, `id="signin-globex"`} {
		if !strings.Contains(p.body, want) {
			t.Errorf("sign-in page lacks %q", want)
		}
	}
	// Signing in from the page after a redirect goes back to where the
	// browser was going.
	p = c.post("/signin", url.Values{"tenant": {"acme"}, "next": {"/connections/initiate"}, "csrf": nil})
	if p.url.Path != "/connections/initiate" {
		t.Fatalf("after sign-in: %s", p.url)
	}
	u, _ := url.Parse(a.cfg.PublicURL)
	cookies := c.http.Jar.Cookies(u)
	if len(cookies) != 1 || len(cookies[0].Value) < 40 {
		t.Fatalf("session cookie: %v", cookies)
	}

	for path, wants := range map[string][]string{
		"/connections":              {`id="initiate"`, `id="accept"`, `id="new-org"`, `id="empty"`, a.cfg.PublicURL + "/tether", "Acme Support"},
		"/connections/initiate":     {`id="destination"`, `id="no-url"`, "I don't have a URL", `id="next"`},
		"/connections/accept":       {`id="code"`, `id="preview"`},
		"/orgs/new":                 {"Salesforce Production", "Salesforce Sandbox", "Dynamics 365", "SALESFORCE_CLIENT_ID", "DYNAMICS_CLIENT_ID", "-demo-oauth", "Public Cloud", "My Domain"},
		"/connections?show=deleted": {"No deleted connections"},
	} {
		req, _ := http.NewRequest(http.MethodGet, c.base+path, nil)
		resp, err := c.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'nonce-") || !strings.Contains(csp, "frame-ancestors 'none'") {
			t.Errorf("%s: Content-Security-Policy %q", path, csp)
		}
		p := c.get(path)
		if p.status != http.StatusOK {
			t.Errorf("%s: %d", path, p.status)
		}
		for _, want := range wants {
			if !strings.Contains(p.body, want) {
				t.Errorf("%s lacks %q", path, want)
			}
		}
	}
	// Without OAuth configuration the org buttons cannot be used, and the
	// admin API has no org routes.
	if p := c.get("/orgs/new"); strings.Contains(p.body, `id="connect-salesforce"`) || strings.Contains(p.body, `id="connect-demo"`) {
		t.Error("unconfigured providers offer Connect")
	}
	if st, _ := c.api(http.MethodPost, "/orgs", map[string]string{"provider": "salesforce"}); st != http.StatusNotFound {
		t.Errorf("POST /api/orgs without providers: %d", st)
	}
	if p := c.get("/connections/nope"); p.status != http.StatusNotFound {
		t.Errorf("a connection that does not exist: %d", p.status)
	}
}

// The session cookie is HttpOnly and SameSite=Lax.
func TestSessionCookie(t *testing.T) {
	a := startApp(t, config{AllowPrivateNetwork: true})
	req, _ := http.NewRequest(http.MethodPost, a.cfg.PublicURL+"/signin", strings.NewReader("tenant=globex"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	set := resp.Header.Get("Set-Cookie")
	if resp.StatusCode != http.StatusSeeOther || !strings.Contains(set, "HttpOnly") || !strings.Contains(set, "SameSite=Lax") {
		t.Fatalf("sign in: %d, Set-Cookie %q", resp.StatusCode, set)
	}
}

// The whole life of a peer connection, driven through the pages: tenant
// A initiates with "I don't have a URL", a private agent accepts the code
// the page shows, messages flow both ways, and pause, activate and delete
// each land in the history.
func TestPeerFlow(t *testing.T) {
	peerFlow(t, config{AllowPrivateNetwork: true})
}

// The same with the data in PostgreSQL.
func TestPeerFlowPostgres(t *testing.T) {
	base := os.Getenv("TETHER_POSTGRES_URL")
	if base == "" {
		t.Skip("TETHER_POSTGRES_URL is not set: the PostgreSQL variant is skipped (.ci/run sets it)")
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "tether_webapp_test_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		db, err := sql.Open("pgx", base)
		if err != nil {
			return
		}
		defer db.Close()
		_, _ = db.Exec(`DROP SCHEMA IF EXISTS ` + schema + ` CASCADE`)
	})
	peerFlow(t, config{AllowPrivateNetwork: true, Postgres: base, Schema: schema, FreshSchema: true})
}

func peerFlow(t *testing.T, cfg config) {
	a := startApp(t, cfg)
	c := newClient(t, a)
	c.signin("acme")
	id, code := c.initiate("Acme to Field")
	if !strings.HasPrefix(code, tether.InvitationPrefix) {
		t.Fatalf("the page shows %q, not an invitation code", code)
	}
	p := c.get("/connections/" + id + "/invitation")
	if status(t, p) != "pending" || !strings.Contains(p.body, `id="copy-code"`) || codeArea.FindStringSubmatch(p.body)[1] != code {
		t.Fatalf("reloaded invitation page:\n%s", p.body)
	}
	if p := c.get("/connections"); !slices.Contains(rowIDs(p), id) || !strings.Contains(p.body, "waiting for the partner to accept") {
		t.Fatalf("the list does not show the pending invitation:\n%s", p.body)
	}

	ag := startAgent(t)
	inv, err := ag.node.Preview(code)
	if err != nil || inv.InitiatorName != "Support" || inv.Name != "Acme to Field" || inv.Mode != tether.ModeScript || !inv.DestinationPrivate() {
		t.Fatalf("the agent previews %+v, %v", inv, err)
	}
	remote, err := ag.node.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil || remote.Status != tether.StatusActive {
		t.Fatalf("the agent accepts: %v, %v", remote, err)
	}

	p = c.get("/connections/" + id)
	if status(t, p) != "active" || !strings.Contains(p.body, `id="go-to-remote" href="https://agent.example/admin"`) || !strings.Contains(p.body, `id="pause"`) {
		t.Fatalf("details after the acceptance:\n%s", p.body)
	}
	if p := c.get("/connections/" + id + "/invitation"); !strings.Contains(p.body, `data-testid="accepted"`) {
		t.Errorf("the invitation page does not say it was accepted:\n%s", p.body)
	}
	p = c.get("/connections")
	if !strings.Contains(p.body, `data-status="active"`) || !strings.Contains(p.body, `data-testid="go-to-remote"`) || !strings.Contains(p.body, "Field Agent") {
		t.Fatalf("the list after the acceptance:\n%s", p.body)
	}

	p = c.post("/connections/"+id+"/pause", nil)
	if status(t, p) != "paused" || !strings.Contains(flashOf(p), "Paused") || !strings.Contains(p.body, `id="activate"`) {
		t.Fatalf("after Pause:\n%s", p.body)
	}
	p = c.post("/connections/"+id+"/activate", nil)
	if status(t, p) != "active" {
		t.Fatalf("after Activate:\n%s", p.body)
	}

	// Messages both ways: the agent receives through its long-poll.
	if p := c.post("/connections/"+id+"/send", url.Values{"text": {"ticket 42 escalated"}}); !strings.Contains(flashOf(p), "Message sent") {
		t.Fatalf("send: %q", flashOf(p))
	}
	eventually(t, 20*time.Second, "the agent receives the message", func() bool {
		return slices.Contains(ag.received(), "ticket 42 escalated")
	})
	if _, err := ag.node.Send(context.Background(), remote.ID, []byte("on my way")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the page shows the agent's message", func() bool {
		return strings.Contains(c.get("/connections/"+id).body, "on my way")
	})

	// Edit: name, rules and settings; the mode stays.
	p = c.get("/connections/" + id + "/edit")
	if !strings.Contains(p.body, "Sync script") || !strings.Contains(p.body, `name="version"`) {
		t.Fatalf("edit page:\n%s", p.body)
	}
	version := regexpFind(t, p.body, `name="version" value="(\d+)"`)
	p = c.post("/connections/"+id+"/edit", url.Values{"version": {version}, "name": {"Acme field escalations"}, "description": {"d"},
		"rules": {"sync(ticket.summary)"}, "settings": {"sync_comments=true"}})
	if flashOf(p) != "Saved." || !strings.Contains(p.body, "Acme field escalations") || !strings.Contains(p.body, "sync_comments=true") {
		t.Fatalf("after Save:\n%s", p.body)
	}
	// The form shown before the save is out of date now.
	p = c.post("/connections/"+id+"/edit", url.Values{"version": {version}, "name": {"Stale"}})
	if p.status != http.StatusUnprocessableEntity || !strings.Contains(p.body, "changed since you opened this form") {
		t.Fatalf("a stale edit: %d\n%s", p.status, p.body)
	}

	p = c.post("/connections/"+id+"/delete", nil)
	if status(t, p) != "deleted" || strings.Contains(p.body, `id="delete"`) {
		t.Fatalf("after Delete:\n%s", p.body)
	}
	got := events(p)
	want := []string{"deleted", "updated", "activated", "paused", "accepted", "created"}
	if !isSubsequence(want, got) || got[0] != "deleted" {
		t.Fatalf("history (newest first) = %v, want %v in this order", got, want)
	}
	if !strings.Contains(p.body, "ada@acme.example") {
		t.Error("the history does not name the user")
	}
	if p := c.get("/connections"); slices.Contains(rowIDs(p), id) {
		t.Error("a deleted connection is listed as current")
	}
	if p := c.get("/connections?show=deleted"); !slices.Contains(rowIDs(p), id) {
		t.Error("the deleted connection is not under Deleted")
	}
	eventually(t, 20*time.Second, "the agent learns of the deletion", func() bool {
		c, err := ag.node.Get(context.Background(), remote.ID)
		return err == nil && c.Status == tether.StatusDeleted
	})
}

// isSubsequence reports whether want appears in got in order.
func isSubsequence(want, got []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && g == want[i] {
			i++
		}
	}
	return i == len(want)
}

func regexpFind(t testing.TB, s, expr string) string {
	t.Helper()
	m := regexpMust(expr).FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("no %s in:\n%s", expr, s)
	}
	return m[1]
}

// Tenant B cannot see or touch tenant A's connection: every page and
// action answers as for one that does not exist, and its list does not
// show it.
func TestTenantIsolation(t *testing.T) {
	a := startApp(t, config{AllowPrivateNetwork: true})
	acme := newClient(t, a)
	acme.signin("acme")
	id, _ := acme.initiate("Acme secret partner")

	globex := newClient(t, a)
	globex.signin("globex")
	missing := globex.get("/connections/conn_does_not_exist")
	for _, path := range []string{"/connections/" + id, "/connections/" + id + "/invitation", "/connections/" + id + "/edit"} {
		p := globex.get(path)
		if p.status != http.StatusNotFound || strings.Contains(p.body, "Acme secret partner") || !sameError(p, missing) {
			t.Errorf("globex GET %s: %d\n%s", path, p.status, p.body)
		}
	}
	globex.get("/connections") // a fresh CSRF token
	for _, action := range []string{"pause", "activate", "revoke", "delete", "edit", "send"} {
		p := globex.post("/connections/"+id+"/"+action, url.Values{"name": {"taken"}, "text": {"hi"}, "version": {"1"}})
		if p.status != http.StatusNotFound {
			t.Errorf("globex POST %s: %d", action, p.status)
		}
	}
	if st, _ := globex.api(http.MethodGet, "/connections/"+id, nil); st != http.StatusNotFound {
		t.Errorf("globex GET /api/connections/%s: %d", id, st)
	}
	if p := globex.get("/connections"); slices.Contains(rowIDs(p), id) || strings.Contains(p.body, "Acme secret partner") {
		t.Error("globex's list shows acme's connection")
	}
	// Nothing changed.
	if p := acme.get("/connections/" + id); status(t, p) != "pending" || !strings.Contains(p.body, "Acme secret partner") {
		t.Fatalf("acme's connection changed:\n%s", p.body)
	}
}

// sameError reports whether two pages are the same error page.
func sameError(p, q page) bool {
	return p.status == q.status && flashOf(p) == flashOf(q) && strings.Contains(p.body, "There is no such connection.") && strings.Contains(q.body, "There is no such connection.")
}

// A form posted without the session's CSRF token, or with another, is
// refused and changes nothing; so is a sign-in another site posts.
func TestCSRF(t *testing.T) {
	a := startApp(t, config{AllowPrivateNetwork: true})
	c := newClient(t, a)
	c.signin("acme")
	id, _ := c.initiate("Needs a token")
	for _, token := range []string{"", "forged", strings.Repeat("A", len(c.csrf))} {
		for _, path := range []string{"/connections/" + id + "/revoke", "/connections/" + id + "/delete", "/connections/initiate", "/signout"} {
			p := c.post(path, url.Values{"csrf": {token}, "mode": {"basic"}, "local_name": {"x"}, "remote_name": {"y"}, "name": {"z"}})
			if p.status != http.StatusForbidden {
				t.Errorf("POST %s with token %q: %d, want 403", path, token, p.status)
			}
		}
	}
	p := c.get("/connections")
	if ids := rowIDs(p); len(ids) != 1 || ids[0] != id || !strings.Contains(p.body, `data-status="pending"`) {
		t.Fatalf("refused forms changed something:\n%s", p.body)
	}
	// The admin API takes JSON only: a form cannot post to it.
	req, _ := http.NewRequest(http.MethodPost, c.base+"/api/connections/"+id+"/revoke", strings.NewReader("x=1"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if p := c.do(req); p.status != http.StatusBadRequest {
		t.Errorf("a form posted to the admin API: %d", p.status)
	}
	// Another site cannot sign a browser in.
	req, _ = http.NewRequest(http.MethodPost, c.base+"/signin", strings.NewReader("tenant=globex"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", "https://evil.example")
	if p := c.do(req); p.status != http.StatusForbidden {
		t.Errorf("a cross-site sign-in: %d", p.status)
	}
	if p := c.get("/connections"); !strings.Contains(p.body, "Acme Support") {
		t.Error("the cross-site sign-in changed the session")
	}
	// Without a session a form is refused too.
	anon := newClient(t, a)
	if p := anon.post("/connections/"+id+"/delete", url.Values{"csrf": {c.csrf}}); p.status != http.StatusForbidden {
		t.Errorf("a form without a session: %d", p.status)
	}
}

// Revoke: a pending invitation's code stops working, and the history
// says so.
func TestRevoke(t *testing.T) {
	a := startApp(t, config{AllowPrivateNetwork: true})
	c := newClient(t, a)
	c.signin("acme")
	id, code := c.initiate("Changed my mind")
	p := c.get("/connections/" + id)
	if !strings.Contains(p.body, `id="revoke"`) || !strings.Contains(p.body, `id="show-code"`) {
		t.Fatalf("a pending invitation's page:\n%s", p.body)
	}
	p = c.post("/connections/"+id+"/revoke", nil)
	if status(t, p) != "deleted" || events(p)[0] != "revoked" || !strings.Contains(flashOf(p), "revoked") {
		t.Fatalf("after Revoke:\n%s", p.body)
	}
	if p := c.get("/connections/" + id + "/invitation"); strings.Contains(p.body, code) {
		t.Error("the revoked code is still shown")
	}
	ag := startAgent(t)
	if _, err := ag.node.Accept(context.Background(), code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeRevoked {
		t.Fatalf("accepting the revoked code: %v", err)
	}
}
