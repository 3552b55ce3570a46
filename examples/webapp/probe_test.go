package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/tetherkit/tether"
)

// Given a destination URL, the wizard asks that instance what it
// supports and offers only those modes; the partner, another help desk,
// previews and accepts the code on its own pages, and both sides are
// active.
func TestInitiateWithDestination(t *testing.T) {
	here := startApp(t, config{AllowPrivateNetwork: true, DisplayName: "Acme Help Desk"})
	there := startApp(t, config{AllowPrivateNetwork: true, DisplayName: "Initech Engineering", Modes: []tether.Mode{tether.ModeScript, tether.ModeBasic}})
	dest := there.node.Endpoint()

	c := newClient(t, here)
	c.signin("acme")
	p := c.post("/connections/initiate/destination", url.Values{"destination": {dest}})
	if p.status != http.StatusOK || !strings.Contains(p.body, "Initech Engineering") || !strings.Contains(p.body, tether.ProtocolVersion) {
		t.Fatalf("probe step:\n%s", p.body)
	}
	if !strings.Contains(p.body, `id="mode-script"`) || !strings.Contains(p.body, `id="mode-basic"`) || strings.Contains(p.body, `id="mode-visual"`) {
		t.Fatalf("the modes offered are not the destination's (script, basic):\n%s", p.body)
	}
	if !strings.Contains(p.body, `value="script" id="mode-script" checked`) {
		t.Error("the destination's first mode is not the one chosen")
	}
	p = c.post("/connections/initiate/mode", url.Values{"destination": {dest}, "dest_name": {"Initech Engineering"}, "mode": {"script"}})
	if !strings.Contains(p.body, `id="remote-name" name="remote_name" value="Initech Engineering"`) {
		t.Fatalf("the partner's short name is not the destination's name:\n%s", p.body)
	}
	p = c.post("/connections/initiate", url.Values{"destination": {dest}, "mode": {"script"},
		"local_name": {"Acme"}, "remote_name": {"Initech"}, "name": {"Acme and Initech"}})
	m := codeArea.FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no code:\n%s", p.body)
	}
	id := strings.TrimSuffix(strings.TrimPrefix(p.url.Path, "/connections/"), "/invitation")

	// The partner accepts on its own Connections page.
	other := newClient(t, there)
	other.signin("globex")
	p = other.post("/connections/accept/preview", url.Values{"code": {m[1]}})
	if !strings.Contains(p.body, "<strong>Acme</strong> invites you to connect <strong>Acme and Initech</strong> (Script)") {
		t.Fatalf("preview:\n%s", p.body)
	}
	p = other.post("/connections/accept", url.Values{"code": {m[1]}, "local_name": {"Initech"}})
	if status(t, p) != "active" || !strings.Contains(flashOf(p), "active on both sides") {
		t.Fatalf("after Confirm:\n%s", p.body)
	}
	// Go to remote leads to the inviter's Connections page.
	if !strings.Contains(p.body, `id="go-to-remote" href="`+here.cfg.PublicURL+`/connections"`) {
		t.Errorf("no Go to remote to the inviter:\n%s", p.body)
	}
	if p := c.get("/connections/" + id); status(t, p) != "active" {
		t.Fatalf("the inviter's side:\n%s", p.body)
	}

	// The same code again, and a damaged one, are refused in words.
	if p := other.post("/connections/accept", url.Values{"code": {m[1]}}); p.status != http.StatusUnprocessableEntity || formProblem.FindString(p.body) == "" {
		t.Errorf("the code accepted twice: %d\n%s", p.status, p.body)
	}
	damaged := m[1][:len(m[1])-3] + "xyz"
	if p := other.post("/connections/accept/preview", url.Values{"code": {damaged}}); !strings.Contains(p.body, "damaged") && !strings.Contains(p.body, "not a valid invitation") {
		t.Errorf("a damaged code:\n%s", p.body)
	}
}

// A destination that does not answer, or that the URL policy refuses,
// stays on the first step with a message saying what to check.
func TestProbeProblems(t *testing.T) {
	a := startApp(t, config{AllowPrivateNetwork: true})
	c := newClient(t, a)
	c.signin("acme")
	for dest, want := range map[string]string{
		"":                                 "Enter the partner",
		"http://127.0.0.1:1/tether":        "No tether instance answered",
		"http://169.254.169.254/tether":    "https URLs on public addresses",
		"not a url":                        "URL",
		a.cfg.PublicURL + "/connections/x": "No tether instance answered",
	} {
		p := c.post("/connections/initiate/destination", url.Values{"destination": {dest}})
		msg := formProblem.FindStringSubmatch(p.body)
		if p.status != http.StatusUnprocessableEntity || msg == nil || !strings.Contains(msg[1], want) || !strings.Contains(p.body, `id="no-url"`) {
			t.Errorf("destination %q: %d %v, want a message with %q", dest, p.status, msg, want)
		}
	}
}
