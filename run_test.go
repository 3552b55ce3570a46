package tether

import (
	"testing"
)

// A change to the connections a poll should carry, made while the poll is
// prepared or held, restarts it; other changes do not.
func TestPullerRestartsOnChange(t *testing.T) {
	p := newPuller("https://alpha.example/tether", "key", "local")
	if !p.carry("a", true) {
		t.Fatal("an empty puller refused a connection")
	}
	ids, gen := p.prepare()
	if len(ids) != 1 {
		t.Fatalf("prepare returned %v", ids)
	}
	canceled := 0
	cancel := func() { canceled++ }
	if !p.begin(gen, map[string]bool{"a": true}, cancel) {
		t.Fatal("a poll was restarted with nothing changed")
	}
	p.carry("a", true)  // Run's rescan: nothing changed
	p.carry("b", false) // a paused connection: not polled anyway
	p.peerPaused("b", false)
	if canceled != 0 {
		t.Fatalf("the held poll was canceled %d times without a change", canceled)
	}
	for _, change := range []struct {
		name string
		do   func()
	}{
		{"a connection added", func() { p.carry("c", true) }},
		{"a connection activated", func() { p.carry("b", true) }},
		{"a polled connection paused", func() { p.carry("a", false) }},
		{"the peer refused a push as paused", func() { p.peerPaused("a", true) }},
	} {
		canceled = 0
		_, gen := p.prepare()
		if !p.begin(gen, map[string]bool{"a": true}, cancel) {
			t.Fatalf("%s: restarted before the change", change.name)
		}
		p.ids["a"], p.ids["b"] = false, false
		delete(p.ids, "c")
		change.do()
		if canceled != 1 {
			t.Fatalf("%s: the held poll was canceled %d times, want 1", change.name, canceled)
		}
		p.end()
		// The same change while the next poll is prepared: begin refuses.
		p.ids["a"], p.ids["b"] = false, false
		delete(p.ids, "c")
		_, gen = p.prepare()
		change.do()
		if p.begin(gen, map[string]bool{"a": true}, cancel) {
			t.Fatalf("%s while preparing: the poll was sent anyway", change.name)
		}
	}
}
