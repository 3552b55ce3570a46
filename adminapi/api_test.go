package adminapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/tetherkit/tether"
)

// A connection's life through the API: initiate with "I don't have a
// URL", the partner accepts, pause, activate, edit, delete; the history
// shows each step with the acting user.
func TestLifecycle(t *testing.T) {
	w := newWorld(t)
	c, code := w.initiate("session-a")
	if c.Status != "pending" || code == "" {
		t.Fatalf("initiate: %+v, code %q", c, code)
	}
	var inv struct {
		InviterName        string `json:"inviter_name"`
		DestinationPrivate bool   `json:"destination_private"`
		Mode               string `json:"mode"`
	}
	w.must(200, "session-b", "POST", "/invitations/preview", map[string]string{"code": code}).decode(t, &inv)
	if inv.InviterName != "Hub" || !inv.DestinationPrivate || inv.Mode != "basic" {
		t.Errorf("preview: %+v", inv)
	}
	if _, err := w.agent.Accept(context.Background(), code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	w.eventually("active", func() bool {
		var got conn
		w.must(200, "session-a", "GET", "/connections/"+c.ID, nil).decode(t, &got)
		return got.Status == "active"
	})
	var shown struct {
		RemoteAdminURL string `json:"remote_admin_url"`
	}
	w.must(200, "session-a", "GET", "/connections/"+c.ID, nil).decode(t, &shown)
	if shown.RemoteAdminURL != "https://agent.example/admin" {
		t.Errorf("Go to remote: %q", shown.RemoteAdminURL)
	}
	for _, step := range []struct{ method, path, want string }{
		{"POST", "/pause", "paused"},
		{"POST", "/activate", "active"},
		{"DELETE", "", "deleted"},
	} {
		var got conn
		w.must(200, "session-a", step.method, "/connections/"+c.ID+step.path, nil).decode(t, &got)
		if got.Status != step.want {
			t.Fatalf("%s %s: status %q", step.method, step.path, got.Status)
		}
	}
	var evs struct {
		Events []struct {
			Type, Actor string
		} `json:"events"`
	}
	w.must(200, "session-a", "GET", "/connections/"+c.ID+"/events", nil).decode(t, &evs)
	var types []string
	for _, e := range evs.Events {
		types = append(types, e.Type)
		if (e.Type == "paused" || e.Type == "activated" || e.Type == "deleted" || e.Type == "created") && e.Actor != "alice" {
			t.Errorf("%s recorded actor %q, want alice", e.Type, e.Actor)
		}
	}
	got := strings.Join(types, ",")
	for _, want := range []string{"created", "accepted", "paused", "activated", "deleted"} {
		if !strings.Contains(got, want) {
			t.Errorf("history %s lacks %s", got, want)
		}
	}
	// Deleted connections stay listed, with their status.
	var list struct{ Connections []conn }
	w.must(200, "session-a", "GET", "/connections?status=deleted", nil).decode(t, &list)
	if len(list.Connections) != 1 || list.Connections[0].ID != c.ID {
		t.Errorf("deleted list: %+v", list.Connections)
	}
}

// Tenant isolation: every route that names a connection, tried by
// another tenant with a real ID, answers exactly as for an ID that does
// not exist, and changes nothing.
func TestOtherTenantsConnectionIsNotFound(t *testing.T) {
	w := newWorld(t)
	active := w.connect("session-a")
	pending, _ := w.initiate("session-a")
	// What another tenant could change: all but health, which the
	// connection's traffic updates.
	state := func(id string) string {
		var m map[string]any
		w.must(200, "session-a", "GET", "/connections/"+id, nil).decode(t, &m)
		delete(m, "health")
		var evs struct{ Events []any }
		w.must(200, "session-a", "GET", "/connections/"+id+"/events", nil).decode(t, &evs)
		return fmt.Sprintf("%v, %d events", m, len(evs.Events))
	}
	before := map[string]string{}
	for _, id := range []string{active.ID, pending.ID} {
		before[id] = state(id)
	}
	routes := idRoutes(t)
	if len(routes) < 7 {
		t.Fatalf("the OpenAPI description lists %d routes with an ID", len(routes))
	}
	bodies := map[string]any{"PATCH": map[string]string{"name": "stolen"}}
	for _, rt := range routes {
		for _, id := range []string{active.ID, pending.ID} {
			path := strings.ReplaceAll(rt.path, "{id}", id)
			missing := strings.ReplaceAll(rt.path, "{id}", "c_0000000000000000000000000000")
			got := w.call("session-b", rt.method, path, bodies[rt.method])
			want := w.call("session-b", rt.method, missing, bodies[rt.method])
			if got.status != 404 || got.status != want.status || !bytes.Equal(got.body, want.body) {
				t.Errorf("%s %s as another tenant: %d %s; for a missing ID: %d %s", rt.method, rt.path, got.status, got.body, want.status, want.body)
			}
		}
	}
	var list struct{ Connections []conn }
	w.must(200, "session-b", "GET", "/connections", nil).decode(t, &list)
	if len(list.Connections) != 0 {
		t.Errorf("team-b lists %d connections of team-a", len(list.Connections))
	}
	for id, b := range before {
		if after := state(id); b != after {
			t.Errorf("connection %s changed:\n%s\n%s", id, b, after)
		}
	}
}

// idRoutes lists the routes of the OpenAPI description that name a
// connection.
func idRoutes(t *testing.T) []struct{ method, path string } {
	var spec struct {
		Paths map[string]map[string]json.RawMessage `json:"paths"`
	}
	if err := json.Unmarshal(openAPISpec(t), &spec); err != nil {
		t.Fatal(err)
	}
	var out []struct{ method, path string }
	for p, ops := range spec.Paths {
		if !strings.Contains(p, "{id}") {
			continue
		}
		for m := range ops {
			out = append(out, struct{ method, path string }{strings.ToUpper(m), p})
		}
	}
	return out
}

func TestUnauthenticated(t *testing.T) {
	w := newWorld(t)
	for _, s := range []string{"", "session-unknown"} {
		r := w.must(401, s, "GET", "/connections", nil)
		if p := r.problem(t); p.Code != "unauthenticated" || r.header.Get("WWW-Authenticate") == "" {
			t.Errorf("problem %+v, headers %v", p, r.header)
		}
		w.must(401, s, "POST", "/connections", map[string]string{"name": "x"})
	}
}

// Cross-site requests cannot change state: a state-changing request
// needs Content-Type application/json, which a form or a simple request
// cannot send, and one a browser marks cross-site is refused.
func TestCrossSiteRequestsRefused(t *testing.T) {
	w := newWorld(t)
	c := w.connect("session-a")
	for _, h := range [][]string{
		{"Content-Type", ""},
		{"Content-Type", "text/plain"},
		{"Content-Type", "application/x-www-form-urlencoded"},
		{"Content-Type", "multipart/form-data; boundary=x"},
		{"Content-Type", "application/json", "Sec-Fetch-Site", "cross-site"},
		{"Content-Type", "application/json", "Sec-Fetch-Site", "same-site"},
	} {
		r := w.call("session-a", "POST", "/connections/"+c.ID+"/pause", []byte("{}"), h...)
		if p := r.problem(t); r.status != 400 || p.Code != "invalid" {
			t.Errorf("%v: %d %+v", h, r.status, p)
		}
	}
	var got conn
	w.must(200, "session-a", "GET", "/connections/"+c.ID, nil).decode(t, &got)
	if got.Status != "active" {
		t.Fatalf("a refused request paused the connection: %s", got.Status)
	}
	w.must(200, "session-a", "POST", "/connections/"+c.ID+"/pause", nil, "Sec-Fetch-Site", "same-origin", "Content-Type", "application/json; charset=utf-8")
}

func TestBodiesChecked(t *testing.T) {
	w := newWorld(t)
	for _, tc := range []struct {
		name string
		body []byte
		code string
		st   int
	}{
		{"over the cap", []byte(`{"name":"` + strings.Repeat("x", 5000) + `"}`), "too_large", 413},
		{"unknown field", []byte(`{"name":"n","local_name":"A","remote_name":"B","mode":"basic","owner":"team-b"}`), "invalid", 400},
		{"two values", []byte(`{"name":"n"}{"name":"m"}`), "invalid", 400},
		{"not JSON", []byte(`name=n`), "invalid", 400},
		{"wrong type", []byte(`{"name":7}`), "invalid", 400},
	} {
		r := w.call("session-a", "POST", "/connections", tc.body)
		if p := r.problem(t); r.status != tc.st || p.Code != tc.code {
			t.Errorf("%s: %d %+v", tc.name, r.status, p)
		}
	}
	var list struct{ Connections []conn }
	w.must(200, "session-a", "GET", "/connections", nil).decode(t, &list)
	if len(list.Connections) != 0 {
		t.Errorf("a refused body created %d connections", len(list.Connections))
	}
	// Validation errors name the field and keep tether's code.
	r := w.call("session-a", "POST", "/connections", map[string]any{"name": "n", "local_name": "A", "remote_name": "B", "mode": "fancy"})
	if p := r.problem(t); r.status != 400 || p.Code != "invalid" || !strings.Contains(p.Detail, "ode") {
		t.Errorf("bad mode: %d %+v", r.status, p)
	}
}

// Optimistic concurrency: an edit with a stale If-Match is refused with
// 412 and changes nothing; with the current ETag it goes through.
func TestIfMatch(t *testing.T) {
	w := newWorld(t)
	c, _ := w.initiate("session-a")
	r := w.must(200, "session-a", "GET", "/connections/"+c.ID, nil)
	tag := r.header.Get("ETag")
	if tag == "" {
		t.Fatal("no ETag")
	}
	r = w.must(200, "session-a", "PATCH", "/connections/"+c.ID, map[string]string{"description": "first"}, "If-Match", tag)
	if r.header.Get("ETag") == tag {
		t.Error("the ETag did not change with the edit")
	}
	r = w.must(412, "session-a", "PATCH", "/connections/"+c.ID, map[string]string{"description": "second"}, "If-Match", tag)
	if p := r.problem(t); p.Code != "conflict" {
		t.Errorf("stale If-Match: %+v", p)
	}
	w.must(412, "session-a", "DELETE", "/connections/"+c.ID, nil, "If-Match", tag)
	w.must(400, "session-a", "PATCH", "/connections/"+c.ID, map[string]string{"description": "x"}, "If-Match", "W/\"x\"")
	var got struct {
		Description string `json:"description"`
		Status      string `json:"status"`
	}
	w.must(200, "session-a", "GET", "/connections/"+c.ID, nil).decode(t, &got)
	if got.Description != "first" || got.Status != "pending" {
		t.Errorf("after refused edits: %+v", got)
	}
}

// No key material, invitation code or internal counter in a connection's
// JSON.
func TestConnectionJSONHidesSecrets(t *testing.T) {
	w := newWorld(t)
	c, code := w.initiate("session-a")
	body := w.must(200, "session-a", "GET", "/connections/"+c.ID, nil).body
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatal(err)
	}
	for k := range m {
		if strings.ToLower(k) != k || strings.Contains(k, "key") || k == "version" || k == "notice_seq" || k == "invitation" || k == "owner" {
			t.Errorf("field %q in %s", k, body)
		}
	}
	if bytes.Contains(body, []byte(code[:20])) {
		t.Error("the invitation code is in the connection's JSON")
	}
}

func TestRevokePending(t *testing.T) {
	w := newWorld(t)
	c, code := w.initiate("session-a")
	var got conn
	w.must(200, "session-a", "POST", "/connections/"+c.ID+"/revoke", nil).decode(t, &got)
	if got.Status != "deleted" {
		t.Fatalf("revoked: %+v", got)
	}
	if _, err := w.agent.Accept(context.Background(), code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeRevoked {
		t.Errorf("accepting a revoked code: %v", err)
	}
	r := w.call("session-a", "POST", "/connections/"+c.ID+"/revoke", nil)
	if p := r.problem(t); r.status != http.StatusConflict || p.Code != "invalid_transition" {
		t.Errorf("revoking twice: %d %+v", r.status, p)
	}
}

// Accepting through the API: the new connection belongs to the caller.
func TestAcceptThroughAPI(t *testing.T) {
	w := newWorld(t)
	other := open(t, w.net, "other", "https://other.example")
	oc, code, err := other.Initiate(context.Background(), tether.InitiateRequest{Destination: "https://hub.example", Mode: tether.ModeScript, LocalName: "Other", RemoteName: "Hub", Name: "Other to hub"})
	if err != nil {
		t.Fatal(err)
	}
	var got conn
	w.must(201, "session-b", "POST", "/invitations/accept", map[string]string{"code": code, "local_name": "Hub B"}).decode(t, &got)
	hc, err := w.hub.Get(context.Background(), got.ID)
	if err != nil || hc.Owner != "team-b" || hc.LocalName != "Hub B" {
		t.Fatalf("accepted connection: %+v, %v", hc, err)
	}
	w.eventually("both active", func() bool {
		c, _ := other.Get(context.Background(), oc.ID)
		return c.Status == tether.StatusActive
	})
	w.must(404, "session-a", "GET", "/connections/"+got.ID, nil)
	r := w.call("session-b", "POST", "/invitations/accept", map[string]string{"code": code})
	if p := r.problem(t); p.Code != "already_used" {
		t.Errorf("accepting twice: %d %+v", r.status, p)
	}
}

func TestPaging(t *testing.T) {
	w := newWorld(t)
	want := map[string]bool{}
	for range 5 {
		c, _ := w.initiate("session-a")
		want[c.ID] = true
	}
	w.initiate("session-b")
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		var page struct {
			Connections []conn
			NextCursor  string `json:"next_cursor"`
		}
		w.must(200, "session-a", "GET", "/connections?limit=2&kind=peer&cursor="+cursor, nil).decode(t, &page)
		for _, c := range page.Connections {
			if seen[c.ID] || !want[c.ID] {
				t.Errorf("page %d: %s repeated or not team-a's", pages, c.ID)
			}
			seen[c.ID] = true
		}
		if cursor = page.NextCursor; cursor == "" || pages > 5 {
			break
		}
	}
	if len(seen) != len(want) {
		t.Errorf("paged through %d of %d", len(seen), len(want))
	}
	for _, q := range []string{"limit=0", "limit=x", "status=gone", "kind=robot"} {
		if p := w.call("session-a", "GET", "/connections?"+q, nil).problem(t); p.Code != "invalid" {
			t.Errorf("%s: %+v", q, p)
		}
	}
}

func TestUnknownRoute(t *testing.T) {
	w := newWorld(t)
	r := w.must(404, "session-a", "GET", "/nothing/here", nil)
	if p := r.problem(t); p.Detail != "no such route" {
		t.Errorf("%+v", p)
	}
	r = w.call("session-a", "PUT", "/connections", []byte("{}"))
	if r.status != http.StatusMethodNotAllowed {
		t.Errorf("PUT /connections: %d %s", r.status, r.body)
	}
}

func tetherInitiate(dest string) tether.InitiateRequest {
	return tether.InitiateRequest{Destination: dest, Mode: tether.ModeBasic, LocalName: "Other", RemoteName: "Hub", Name: "Other to hub"}
}

// A host whose Authenticate returns a caller without an owner gets a
// refusal, never every tenant's connections.
func TestCallerWithoutOwnerRefused(t *testing.T) {
	w := newWorld(t)
	w.connect("session-a")
	for _, path := range []string{"/connections", "/events"} {
		if p := w.must(401, "session-none", "GET", path, nil).problem(t); p.Code != "unauthenticated" {
			t.Errorf("%s: %+v", path, p)
		}
	}
	if _, _, err := w.hub.List(tether.WithOwner(context.Background(), ""), tether.ListOptions{}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("List under an empty owner: %v", err)
	}
	if _, _, err := w.hub.Feed(tether.WithOwner(context.Background(), ""), tether.FeedOptions{}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("Feed under an empty owner: %v", err)
	}
}

// A code one tenant accepted (its acceptance still pending with a private
// initiator) is not handed to another tenant who submits it too.
func TestAcceptedCodeNotSharedAcrossTenants(t *testing.T) {
	w := newWorld(t)
	priv := open(t, w.net, "private-initiator", "")
	_, code, err := priv.Initiate(context.Background(), tetherInitiate("https://hub.example"))
	if err != nil {
		t.Fatal(err)
	}
	var a conn
	w.must(201, "session-a", "POST", "/invitations/accept", map[string]string{"code": code}).decode(t, &a)
	r := w.call("session-b", "POST", "/invitations/accept", map[string]string{"code": code})
	if p := r.problem(t); p.Code != "already_used" {
		t.Fatalf("team-b submitting team-a's accepted code: %d %+v", r.status, p)
	}
}
