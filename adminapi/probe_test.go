package adminapi_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
)

type infoReply struct {
	Name     string   `json:"name"`
	Protocol string   `json:"protocol"`
	Modes    []string `json:"modes"`
}

// POST /probe answers what the instance at a URL says it is; GET /info
// answers the hub's own, for a private destination.
func TestProbeAndInfo(t *testing.T) {
	w := newWorld(t)
	dest, err := tether.Open(context.Background(), tether.Config{
		Store: memstore.New(), Transport: w.net.Transport("dest"), Endpoint: "https://dest.example/tether",
		DisplayName: "Acme Engineering", Modes: []tether.Mode{tether.ModeScript, tether.ModeVisual},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.net.Listen(dest.Endpoint(), dest))

	var got infoReply
	w.must(200, "session-a", "POST", "/probe", map[string]string{"url": "https://dest.example/tether"}).decode(t, &got)
	if diff := cmp.Diff(infoReply{"Acme Engineering", tether.ProtocolVersion, []string{"script", "visual"}}, got); diff != "" {
		t.Fatalf("probe (-want +got):\n%s", diff)
	}
	got = infoReply{}
	w.must(200, "session-b", "GET", "/info", nil).decode(t, &got)
	if diff := cmp.Diff(infoReply{"", tether.ProtocolVersion, []string{"basic", "visual", "script"}}, got); diff != "" {
		t.Fatalf("info (-want +got):\n%s", diff)
	}

	// The private agent probes the hub through the library, as its own
	// page would before initiating.
	info, err := w.agent.Probe(context.Background(), "https://hub.example")
	if err != nil || info.Protocol != tether.ProtocolVersion || len(info.Modes) != 3 {
		t.Fatalf("the agent's probe of the hub: %+v, %v", info, err)
	}

	for _, tc := range []struct {
		status  int
		session string
		method  string
		body    any
		code    string
		header  []string
	}{
		{400, "session-a", "POST", map[string]string{"url": ""}, "invalid", nil},
		{400, "session-a", "POST", map[string]string{}, "invalid", nil},
		{400, "session-a", "POST", map[string]any{"url": "https://dest.example", "extra": 1}, "invalid", nil},
		{400, "session-a", "POST", map[string]any{"url": 7}, "invalid", nil},
		{400, "session-a", "POST", map[string]string{"url": "ftp://dest.example"}, "invalid", nil},
		{403, "session-a", "POST", map[string]string{"url": "http://dest.example/tether"}, "url_refused", nil},
		{403, "session-a", "POST", map[string]string{"url": "https://169.254.169.254/latest"}, "url_refused", nil},
		{503, "session-a", "POST", map[string]string{"url": "https://nowhere.example"}, "unavailable", nil},
		{401, "", "POST", map[string]string{"url": "https://dest.example/tether"}, "unauthenticated", nil},
		{401, "", "GET", nil, "unauthenticated", nil},
		{400, "session-a", "POST", map[string]string{"url": "https://dest.example/tether"}, "invalid", []string{"Content-Type", "text/plain"}},
		{400, "session-a", "POST", map[string]string{"url": "https://dest.example/tether"}, "invalid", []string{"Sec-Fetch-Site", "cross-site"}},
	} {
		path := "/probe"
		if tc.method == "GET" {
			path = "/info"
		}
		if p := w.must(tc.status, tc.session, tc.method, path, tc.body, tc.header...).problem(t); p.Code != tc.code {
			t.Errorf("%s %s %v: code %q, want %q (%s)", tc.method, path, tc.body, p.Code, tc.code, p.Detail)
		}
	}
	if p := w.must(405, "session-a", "GET", "/probe", nil).problem(t); p.Code != "invalid" {
		t.Errorf("GET /probe: %+v", p)
	}
	if n := w.net.Sent("hub"); n != 2 {
		t.Fatalf("the hub made %d requests, want 2 (the probes the policy allowed)", n)
	}
}
