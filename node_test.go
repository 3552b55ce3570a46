package tether_test

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/tethertest"
)

const (
	alphaURL = "https://alpha.example/tether"
	betaURL  = "https://beta.example/tether"
)

// checkPair asserts both sides are Active and point at each other.
func checkPair(t *testing.T, a *peer, ac *tether.Connection, b *peer, bc *tether.Connection) {
	t.Helper()
	ac, bc = a.get(t, ac.ID), b.get(t, bc.ID)
	for _, c := range []*tether.Connection{ac, bc} {
		if c.Status != tether.StatusActive {
			t.Fatalf("%s is %s, want active", c.ID, c.Status)
		}
	}
	if ac.RemoteInstance != b.ID() || bc.RemoteInstance != a.ID() {
		t.Fatalf("remote instances %q/%q, want %q/%q", ac.RemoteInstance, bc.RemoteInstance, b.ID(), a.ID())
	}
	if ac.RemoteConnection != bc.ID || bc.RemoteConnection != ac.ID {
		t.Fatalf("remote connections %q/%q, want %q/%q", ac.RemoteConnection, bc.RemoteConnection, bc.ID, ac.ID)
	}
	if tether.KeyID(ac.RemoteKey) != b.Fingerprint() || tether.KeyID(bc.RemoteKey) != a.Fingerprint() {
		t.Fatal("pinned keys are not the peers' keys")
	}
	if ac.RemoteURL != b.Endpoint() || bc.RemoteURL != a.Endpoint() {
		t.Fatalf("remote URLs %q/%q, want %q/%q", ac.RemoteURL, bc.RemoteURL, b.Endpoint(), a.Endpoint())
	}
	if ac.Mode != bc.Mode || ac.Name != bc.Name || ac.LocalName != bc.RemoteName || ac.RemoteName != bc.LocalName {
		t.Fatalf("the two sides disagree: %+v / %+v", ac, bc)
	}
	if ac.Role != tether.RoleInitiator || bc.Role != tether.RoleAcceptor {
		t.Fatalf("roles %s/%s", ac.Role, bc.Role)
	}
}

func eventTypes(t *testing.T, p *peer, id string) []tether.EventType {
	t.Helper()
	evs, err := p.Events(context.Background(), id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []tether.EventType
	for _, e := range evs {
		out = append(out, e.Type)
	}
	return out
}

func TestHandshakeBothPublic(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", betaURL)
	ac, code := alpha.initiate(t, invite(betaURL))
	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{Owner: "eng"})
	if err != nil {
		t.Fatal(err)
	}
	checkPair(t, alpha, ac, beta, bc)
	if got := beta.get(t, bc.ID).Owner; got != "eng" {
		t.Fatalf("acceptor owner %q, want eng", got)
	}
	if diff := cmp.Diff([]tether.EventType{tether.EventCreated, tether.EventAccepted}, eventTypes(t, alpha, ac.ID)); diff != "" {
		t.Fatalf("initiator events (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]tether.EventType{tether.EventCreated, tether.EventAccepted}, eventTypes(t, beta, bc.ID)); diff != "" {
		t.Fatalf("acceptor events (-want +got):\n%s", diff)
	}
}

// The destination is private ("I don't have a URL"): it makes the only
// request, and is never called.
func TestHandshakePublicInitiatorPrivateAcceptor(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	ac, code := alpha.initiate(t, invite(""))
	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{LocalName: "Eng"})
	if err != nil {
		t.Fatal(err)
	}
	checkPair(t, alpha, ac, beta, bc)
	if got := alpha.get(t, ac.ID).RemoteName; got != "Eng" {
		t.Fatalf("initiator learned remote name %q, want the acceptor's choice Eng", got)
	}
	if diff := cmp.Diff(map[string]int{alphaURL: 1}, w.net.Served()); diff != "" {
		t.Fatalf("served requests (-want +got):\n%s", diff)
	}
	if w.net.Sent("alpha") != 0 {
		t.Fatal("the public initiator made a request")
	}
}

// The initiator is private: the acceptor records the connection, the
// initiator polls it.
func TestHandshakePrivateInitiatorPublicAcceptor(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", ""), w.node("beta", betaURL)
	ac, code := alpha.initiate(t, invite(betaURL))
	inv, err := beta.Preview(code)
	if err != nil {
		t.Fatal(err)
	}
	if !inv.InitiatorPrivate() || inv.DestinationPrivate() {
		t.Fatal("preview does not show a private initiator and a public destination")
	}

	// Before acceptance, polling finds nothing and records it.
	if err := alpha.Sync(context.Background()); err == nil {
		t.Fatal("Sync before acceptance reported success")
	}
	if c := alpha.get(t, ac.ID); c.Status != tether.StatusPending || c.Health.Failures != 1 || c.Health.LastError == "" {
		t.Fatalf("after a failed poll: status %s health %+v", c.Status, c.Health)
	}

	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The acceptor cannot know yet whether the initiator will confirm: it
	// says so, and turns Active only when the initiator has.
	if got := beta.get(t, bc.ID).Status; got != tether.StatusPending || bc.Status != tether.StatusPending {
		t.Fatalf("acceptor is %s, want pending until the initiator confirms", got)
	}
	if err := alpha.Sync(context.Background()); err != nil {
		t.Fatalf("Sync: %v", err)
	}
	checkPair(t, alpha, ac, beta, bc)
	if h := alpha.get(t, ac.ID).Health; h.Failures != 0 || h.LastContact.IsZero() {
		t.Fatalf("health after success %+v", h)
	}
	// Polling again changes nothing.
	if err := alpha.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The first ask, the ask that found the acceptance and its confirmation.
	if diff := cmp.Diff(map[string]int{betaURL: 3}, w.net.Served()); diff != "" {
		t.Fatalf("served requests (-want +got):\n%s", diff)
	}
	// created; the acceptor recorded; accepted once the acceptor confirmed.
	if diff := cmp.Diff([]tether.EventType{tether.EventCreated, tether.EventUpdated, tether.EventAccepted}, eventTypes(t, alpha, ac.ID)); diff != "" {
		t.Fatalf("initiator events (-want +got):\n%s", diff)
	}
}

func TestRunPollsUntilAcceptedAndStops(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", ""), w.node("beta", betaURL)
	ac, code := alpha.initiate(t, invite(betaURL))
	if _, err := beta.Accept(context.Background(), code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- alpha.Run(ctx) }()
	// Run's scheduler and its pending-invitation loop both wait on the clock
	// once the loop finished its first round.
	if !w.clock.WaitForWaiters(2, nil) {
		t.Fatal("Run never waited")
	}
	// The first round asks, records the acceptor and confirms with it,
	// without the clock moving.
	eventually(t, "Run's first round completes the handshake", func() bool {
		return alpha.get(t, ac.ID).Status == tether.StatusActive
	})
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

func TestBothPrivateRefused(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", "")
	_, _, err := alpha.Initiate(context.Background(), invite(""))
	wantCode(t, err, tether.CodeBothPrivate)
	if !strings.Contains(err.Error(), "private") {
		t.Fatalf("message %q does not say why", err)
	}
	// A private initiator's code, accepted by a private instance.
	_, code := alpha.initiate(t, invite(betaURL))
	beta := w.node("beta", "")
	_, err = beta.Accept(context.Background(), code, tether.AcceptOptions{})
	wantCode(t, err, tether.CodeBothPrivate)
	if beta.count(t) != 0 {
		t.Fatal("stored a connection")
	}
}

func TestAcceptTwice(t *testing.T) {
	w := newWorld(t)
	alpha, beta, gamma := w.node("alpha", alphaURL), w.node("beta", ""), w.node("gamma", "")
	_, code := alpha.initiate(t, invite(""))
	if _, err := beta.Accept(context.Background(), code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if !errors.Is(err, tether.ErrAlreadyUsed) {
		t.Fatalf("second accept on the same instance: %v, want already used", err)
	}
	_, err = gamma.Accept(context.Background(), code, tether.AcceptOptions{})
	if !errors.Is(err, tether.ErrAlreadyUsed) {
		t.Fatalf("accept on another instance: %v, want already used", err)
	}
	if gamma.count(t) != 0 || beta.count(t) != 1 || alpha.count(t) != 1 {
		t.Fatalf("connections: alpha %d beta %d gamma %d", alpha.count(t), beta.count(t), gamma.count(t))
	}
}

// SECURITY.md 9: 100 goroutines accepting one code make exactly one
// connection on each side, whether they run on one acceptor or several.
func TestAcceptConcurrent(t *testing.T) {
	for _, acceptors := range []int{1, 5} {
		t.Run(fmt.Sprintf("%d acceptors", acceptors), func(t *testing.T) {
			w := newWorld(t)
			alpha := w.node("alpha", alphaURL)
			ac, code := alpha.initiate(t, invite(""))
			var nodes []*peer
			for i := range acceptors {
				nodes = append(nodes, w.node(fmt.Sprintf("acceptor%d", i), ""))
			}
			const n = 100
			var wg sync.WaitGroup
			errs := make([]error, n)
			start := make(chan struct{})
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					_, errs[i] = nodes[i%acceptors].Accept(context.Background(), code, tether.AcceptOptions{})
				}()
			}
			close(start)
			wg.Wait()
			won := 0
			for _, err := range errs {
				switch {
				case err == nil:
					won++
				case errors.Is(err, tether.ErrAlreadyUsed):
				default:
					t.Fatalf("unexpected error: %v", err)
				}
			}
			total := 0
			for _, p := range nodes {
				total += p.count(t)
			}
			if won != 1 || total != 1 || alpha.count(t) != 1 {
				t.Fatalf("%d accepts succeeded, %d acceptor connections, %d initiator connections; want 1, 1, 1", won, total, alpha.count(t))
			}
			if got := alpha.get(t, ac.ID).Status; got != tether.StatusActive {
				t.Fatalf("initiator is %s", got)
			}
		})
	}
}

// SECURITY.md 10.
func TestExpiredAndRevokedInvitations(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	other, otherCode := alpha.initiate(t, invite(""))
	revoked, revokedCode := alpha.initiate(t, invite(""))

	if _, err := alpha.RevokeInvitation(context.Background(), revoked.ID); err != nil {
		t.Fatal(err)
	}
	_, err := beta.Accept(context.Background(), revokedCode, tether.AcceptOptions{})
	if !errors.Is(err, tether.ErrRevoked) {
		t.Fatalf("revoked code: %v, want revoked", err)
	}
	if beta.count(t) != 0 {
		t.Fatal("revoked code created a connection")
	}
	if got := alpha.get(t, other.ID).Status; got != tether.StatusPending {
		t.Fatalf("revoking one invitation changed another: %s", got)
	}
	// Revoking twice is an invalid transition, never a silent no-op.
	_, err = alpha.RevokeInvitation(context.Background(), revoked.ID)
	wantCode(t, err, tether.CodeInvalidTransition)

	w.clock.Advance(tether.DefaultInvitationTTL + tether.InvitationLeeway)
	_, err = beta.Accept(context.Background(), otherCode, tether.AcceptOptions{})
	if !errors.Is(err, tether.ErrExpired) {
		t.Fatalf("expired code: %v, want expired", err)
	}
	if beta.count(t) != 0 {
		t.Fatal("expired code created a connection")
	}
	if w.net.Sent("beta") != 1 {
		t.Fatalf("beta made %d requests, want 1 (the revoked code; the expired one fails locally)", w.net.Sent("beta"))
	}
	// Sync closes the expired invitation.
	if err := alpha.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := alpha.get(t, other.ID).Status; got != tether.StatusDeleted {
		t.Fatalf("expired invitation's connection is %s, want deleted", got)
	}
	if diff := cmp.Diff([]tether.EventType{tether.EventCreated, tether.EventExpired}, eventTypes(t, alpha, other.ID)); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
}

// SECURITY.md 11: the acceptor refuses to call addresses the URL policy
// forbids, before any request.
func TestAcceptURLPolicy(t *testing.T) {
	for _, tc := range []struct {
		endpoint string
		policy   tether.URLPolicy
		refused  bool
	}{
		{"http://alpha.example/tether", tether.URLPolicy{}, true},
		{"https://127.0.0.1/tether", tether.URLPolicy{}, true},
		{"https://localhost:8443/tether", tether.URLPolicy{}, true},
		{"https://[::1]/tether", tether.URLPolicy{}, true},
		{"https://169.254.169.254/latest/meta-data", tether.URLPolicy{}, true},
		{"https://10.0.0.7/tether", tether.URLPolicy{}, true},
		{"https://192.168.1.20/tether", tether.URLPolicy{}, true},
		{"https://[fd00::1]/tether", tether.URLPolicy{}, true},
		{"https://2130706433/tether", tether.URLPolicy{}, true},
		{"https://0.0.0.0/tether", tether.DevelopmentURLPolicy(), true},
		{"https://169.254.169.254/x", tether.DevelopmentURLPolicy(), true},
		{"http://127.0.0.1:8080/tether", tether.DevelopmentURLPolicy(), false},
		{"https://10.0.0.7/tether", tether.URLPolicy{AllowPrivate: true}, false},
		{"https://alpha.example/tether", tether.URLPolicy{}, false},
	} {
		t.Run(tc.endpoint, func(t *testing.T) {
			w := newWorld(t)
			alpha := w.node("alpha", tc.endpoint, func(c *tether.Config) { c.URLPolicy.AllowHTTP = true })
			beta := w.node("beta", "", func(c *tether.Config) { c.URLPolicy = tc.policy })
			_, code := alpha.initiate(t, invite(""))
			_, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
			if !tc.refused {
				if err != nil {
					t.Fatalf("allowed endpoint refused: %v", err)
				}
				return
			}
			wantCode(t, err, tether.CodeURLRefused)
			if w.net.Sent("beta") != 0 || beta.count(t) != 0 {
				t.Fatal("a refused URL was called or a connection stored")
			}
		})
	}
	// An initiator applies the policy to its destination at once, and a
	// public initiator to the endpoint an acceptor announces.
	w := newWorld(t)
	_, _, err := w.node("alpha", "").Initiate(context.Background(), invite("https://169.254.169.254/"))
	wantCode(t, err, tether.CodeURLRefused)
	alpha := w.node("alpha2", alphaURL)
	beta := w.node("beta", "https://10.1.1.1/tether", func(c *tether.Config) { c.URLPolicy.AllowPrivate = true })
	_, code := alpha.initiate(t, invite(""))
	_, err = beta.Accept(context.Background(), code, tether.AcceptOptions{})
	wantCode(t, err, tether.CodeURLRefused)
	if beta.count(t) != 0 {
		t.Fatal("acceptor stored a connection the initiator refused")
	}
}

// A lost answer leaves the acceptor Pending and free to retry with the
// same code; Sync would complete it too (TestLostAcceptAnswerConverges).
func TestAcceptRetryAfterLostResponse(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	ac, code := alpha.initiate(t, invite(""))
	w.net.Faults(func(string, string, *tether.Request) tethertest.Fault { return tethertest.Fault{DropResponse: true} })
	_, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if !errors.Is(err, tether.ErrUnavailable) {
		t.Fatalf("Accept with the answer lost: %v, want unavailable", err)
	}
	if conns, _, _ := beta.List(context.Background(), tether.ListOptions{}); len(conns) != 1 || conns[0].Status != tether.StatusPending {
		t.Fatal("acceptor did not keep its acceptance pending while the answer is missing")
	}
	if got := alpha.get(t, ac.ID).Status; got != tether.StatusActive {
		t.Fatalf("initiator is %s, want active (it did accept)", got)
	}
	w.net.Faults(nil)
	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	checkPair(t, alpha, ac, beta, bc)
	if n := len(eventTypes(t, alpha, ac.ID)); n != 2 {
		t.Fatalf("initiator has %d events, want 2: the retry had a second effect", n)
	}
}

// SECURITY.md 14 for the handshake: a replayed accept has no effect.
func TestAcceptReplayRefused(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	var captured *tether.Request
	w.net.Faults(func(_, _ string, r *tether.Request) tethertest.Fault {
		captured = r
		return tethertest.Fault{}
	})
	ac, code := alpha.initiate(t, invite(""))
	if _, err := beta.Accept(context.Background(), code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	before := alpha.get(t, ac.ID)
	_, err := alpha.Handle(context.Background(), captured)
	wantCode(t, err, tether.CodeUnauthenticated)
	if diff := cmp.Diff(before, alpha.get(t, ac.ID)); diff != "" {
		t.Fatalf("replay changed the connection (-before +after):\n%s", diff)
	}
	// Outside the time window it is refused too: signed, as a clock
	// problem, and still without effect.
	w.clock.Advance(tether.ClockSkew + time.Second)
	resp, err := alpha.Handle(context.Background(), captured)
	if err != nil || resp.Code != tether.CodeClockSkew {
		t.Fatalf("late replay: %v, %+v; want a signed clock_skew refusal", err, resp)
	}
	if diff := cmp.Diff(before, alpha.get(t, ac.ID)); diff != "" {
		t.Fatalf("late replay changed the connection (-before +after):\n%s", diff)
	}
}

func TestStatusRequestsDoNotRevealConnections(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", ""), w.node("beta", betaURL)
	_, code := alpha.initiate(t, invite(betaURL))
	if _, err := beta.Accept(context.Background(), code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	var captured *tether.Request
	w.net.Faults(func(_, _ string, r *tether.Request) tethertest.Fault { captured = r; return tethertest.Fault{} })
	if err := alpha.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The same request from someone else's key, and for a connection that
	// does not exist, get the same answer.
	mallory := w.node("mallory", "")
	_, mcode := mallory.initiate(t, invite(betaURL))
	_, _ = beta.Accept(context.Background(), mcode, tether.AcceptOptions{})
	_, errWrongKey := beta.Handle(context.Background(), &tether.Request{Op: tether.OpStatus, Auth: captured.Auth, Body: []byte("x")})
	_, errReplay := beta.Handle(context.Background(), captured)
	wantCode(t, errWrongKey, tether.CodeUnauthenticated)
	wantCode(t, errReplay, tether.CodeUnauthenticated)
	if errWrongKey.Error() != errReplay.Error() {
		t.Fatalf("refusals differ: %q vs %q", errWrongKey, errReplay)
	}
}

func TestLifecycle(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	ac, code := alpha.initiate(t, invite(""))
	ctx := tether.WithActor(context.Background(), "user:42")

	_, err := alpha.Pause(ctx, ac.ID)
	if !errors.Is(err, tether.ErrInvalidTransition) {
		t.Fatalf("pausing a pending connection: %v, want invalid transition", err)
	}
	if _, err := beta.Accept(context.Background(), code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = alpha.Activate(ctx, ac.ID)
	wantCode(t, err, tether.CodeInvalidTransition)

	steps := []struct {
		call func(context.Context, string) (*tether.Connection, error)
		want tether.Status
	}{
		{alpha.Pause, tether.StatusPaused},
		{alpha.Activate, tether.StatusActive},
		{alpha.Pause, tether.StatusPaused},
		{alpha.Delete, tether.StatusDeleted},
	}
	for i, s := range steps {
		c, err := s.call(ctx, ac.ID)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if c.Status != s.want || alpha.get(t, ac.ID).Status != s.want {
			t.Fatalf("step %d: status %s, want %s", i, c.Status, s.want)
		}
	}
	for name, call := range map[string]func(context.Context, string) (*tether.Connection, error){
		"activate": alpha.Activate, "pause": alpha.Pause, "delete": alpha.Delete, "revoke": alpha.RevokeInvitation,
	} {
		_, err := call(ctx, ac.ID)
		wantCode(t, err, tether.CodeInvalidTransition)
		if !strings.Contains(err.Error(), "deleted") && name != "revoke" {
			t.Errorf("%s: message %q does not name the status", name, err)
		}
	}
	name := "renamed"
	_, err = alpha.Update(ctx, ac.ID, tether.Update{Name: &name})
	wantCode(t, err, tether.CodeInvalidTransition)

	evs, err := alpha.Events(context.Background(), ac.ID, 0, 0)
	if err != nil {
		t.Fatalf("events after delete: %v", err)
	}
	var got []string
	for _, e := range evs {
		got = append(got, string(e.Type)+"/"+e.Actor)
	}
	want := []string{"created/local", "accepted/remote", "paused/user:42", "activated/user:42", "paused/user:42", "deleted/user:42"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("events (-want +got):\n%s", diff)
	}
	_, err = alpha.Get(context.Background(), "conn_00000000000000000000000000")
	if !errors.Is(err, tether.ErrNotFound) {
		t.Fatalf("Get unknown: %v", err)
	}
}

func TestUpdate(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL)
	ac, _ := alpha.initiate(t, invite(""))
	ctx := context.Background()
	name, desc, rules := "Tier 2", "Escalations", "replica.summary = issue.summary"
	c, err := alpha.Update(ctx, ac.ID, tether.Update{Name: &name, Description: &desc, Rules: &rules, Settings: map[string]string{"project": "SUP"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Name != name || c.Description != desc || c.Rules != rules || c.RulesVersion != 1 || c.Settings["project"] != "SUP" {
		t.Fatalf("after update: %+v", c)
	}
	// No change, no event.
	if _, err := alpha.Update(ctx, ac.ID, tether.Update{Name: &name}); err != nil {
		t.Fatal(err)
	}
	evs, _ := alpha.Events(ctx, ac.ID, 0, 0)
	if len(evs) != 2 || evs[1].Type != tether.EventUpdated || !strings.Contains(evs[1].Detail, "rules") {
		t.Fatalf("events %+v", evs)
	}
	same, other := tether.ModeScript, tether.ModeBasic
	if _, err := alpha.Update(ctx, ac.ID, tether.Update{Mode: &same}); err != nil {
		t.Fatalf("update naming the same mode: %v", err)
	}
	_, err = alpha.Update(ctx, ac.ID, tether.Update{Mode: &other})
	wantCode(t, err, tether.CodeModeFixed)
	if alpha.get(t, ac.ID).Mode != tether.ModeScript {
		t.Fatal("mode changed")
	}
	bad := "line\nbreak"
	_, err = alpha.Update(ctx, ac.ID, tether.Update{Name: &bad})
	wantCode(t, err, tether.CodeInvalid)
	if !strings.Contains(err.Error(), "Name") {
		t.Fatalf("%q does not name the field", err)
	}
}

func TestInitiateValidation(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL)
	for _, tc := range []struct {
		field string
		mod   func(*tether.InitiateRequest)
	}{
		{"LocalName", func(r *tether.InitiateRequest) { r.LocalName = "" }},
		{"LocalName", func(r *tether.InitiateRequest) { r.LocalName = strings.Repeat("x", tether.MaxShortNameLen+1) }},
		{"RemoteName", func(r *tether.InitiateRequest) { r.RemoteName = "tab\there" }},
		{"Name", func(r *tether.InitiateRequest) { r.Name = string([]byte{'a', 0xff}) }},
		{"Name", func(r *tether.InitiateRequest) { r.Name = " padded" }},
		{"Description", func(r *tether.InitiateRequest) { r.Description = strings.Repeat("é", tether.MaxDescriptionLen+1) }},
		{"Description", func(r *tether.InitiateRequest) { r.Description = "bell\a" }},
		{"Mode", func(r *tether.InitiateRequest) { r.Mode = "" }},
		{"Destination", func(r *tether.InitiateRequest) { r.Destination = "beta.example" }},
		{"Destination", func(r *tether.InitiateRequest) { r.Destination = "https://user:pw@beta.example/" }},
		{"Destination", func(r *tether.InitiateRequest) { r.Destination = "https://beta.example/?q=1" }},
		{"Settings", func(r *tether.InitiateRequest) { r.Settings = map[string]string{"bad key": "v"} }},
		{"TTL", func(r *tether.InitiateRequest) { r.TTL = tether.MaxInvitationTTL + time.Hour }},
	} {
		req := invite("")
		tc.mod(&req)
		_, _, err := alpha.Initiate(context.Background(), req)
		wantCode(t, err, tether.CodeInvalid)
		if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%q does not name %s", err, tc.field)
		}
	}
	if alpha.count(t) != 0 {
		t.Fatal("invalid requests stored connections")
	}
}

func TestList(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL)
	var want []string
	for i := range 12 {
		req := invite("")
		if i%2 == 0 {
			req.Owner = "other"
		}
		c, _ := alpha.initiate(t, req)
		if i%2 == 1 {
			want = append(want, c.ID)
		}
		w.clock.Advance(time.Millisecond)
	}
	var got []string
	opts := tether.ListOptions{Owner: "support-team", Status: tether.StatusPending, Kind: tether.KindPeer, Limit: 4}
	for {
		page, next, err := alpha.List(context.Background(), opts)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range page {
			got = append(got, c.ID)
		}
		if next == "" {
			break
		}
		opts.After = next
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("listed (-want +got):\n%s", diff)
	}
}

// A rotated key keeps pending invitations acceptable until its overlap ends.
func TestKeyRotation(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	ac, code := alpha.initiate(t, invite(""))
	_, lateCode := alpha.initiate(t, invite(""))
	old := alpha.Fingerprint()
	if err := alpha.RotateKey(context.Background(), time.Hour); err != nil {
		t.Fatal(err)
	}
	if alpha.Fingerprint() == old {
		t.Fatal("key did not change")
	}
	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("accepting an invitation signed before rotation: %v", err)
	}
	if tether.KeyID(beta.get(t, bc.ID).RemoteKey) != old {
		t.Fatal("acceptor did not pin the key the invitation named")
	}
	if c := alpha.get(t, ac.ID); c.Status != tether.StatusActive || c.LocalKeyID != old {
		t.Fatalf("initiator: status %s, signs with %s; want active, the old key %s", c.Status, c.LocalKeyID, old)
	}
	w.clock.Advance(2 * time.Hour)
	_, err = w.node("gamma", "").Accept(context.Background(), lateCode, tether.AcceptOptions{})
	wantCode(t, err, tether.CodeUnknownKey)
	// New invitations use the new key, and the identity survives a restart.
	_, fresh := alpha.initiate(t, invite(""))
	inv, _ := alpha.Preview(fresh)
	if inv.KeyID != alpha.Fingerprint() {
		t.Fatal("new invitation not signed with the new key")
	}
	again, err := tether.Open(context.Background(), tether.Config{Store: alpha.store, Clock: w.clock})
	if err != nil {
		t.Fatal(err)
	}
	if again.ID() != alpha.ID() || again.Fingerprint() != alpha.Fingerprint() {
		t.Fatal("identity changed across Open")
	}
}

func TestOpenConfig(t *testing.T) {
	ctx := context.Background()
	_, err := tether.Open(ctx, tether.Config{})
	wantCode(t, err, tether.CodeInvalid)
	w := newWorld(t)
	for _, mod := range []func(*tether.Config){
		func(c *tether.Config) { c.Endpoint = "not a url" },
		func(c *tether.Config) { c.InvitationTTL = 365 * 24 * time.Hour },
		func(c *tether.Config) { c.Endpoint = "http://alpha.example/tether" },
	} {
		cfg := tether.Config{Store: w.node("x", "").store}
		mod(&cfg)
		_, err := tether.Open(ctx, cfg)
		wantCode(t, err, tether.CodeInvalid)
	}
}

// SECURITY.md 12: an answer signed with a key other than the one the
// invitation pinned aborts the acceptance, and nothing is stored.
func TestAcceptAbortsOnKeyMismatch(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", "")
	alphaPublic, err := tether.Open(context.Background(), tether.Config{Store: alpha.store, Endpoint: alphaURL, Clock: w.clock})
	if err != nil {
		t.Fatal(err)
	}
	impostor := ed25519.NewKeyFromSeed(make([]byte, 32))
	w.t.Cleanup(w.net.Listen(alphaURL, handlerFunc(func(ctx context.Context, req *tether.Request) (*tether.Response, error) {
		resp, err := alphaPublic.Handle(ctx, req)
		if err != nil {
			return nil, err
		}
		resp.Auth = tether.SignResponse(impostor, alphaPublic.ID(), req.Op, req.Auth, resp.Body, w.clock.Now())
		return resp, nil
	})))
	_, code := (&peer{Node: alphaPublic, name: "alpha", store: alpha.store}).initiate(t, invite(""))
	beta := w.node("beta", "")
	_, err = beta.Accept(context.Background(), code, tether.AcceptOptions{})
	wantCode(t, err, tether.CodeKeyMismatch)
	if beta.count(t) != 0 {
		t.Fatal("acceptor stored a connection")
	}
}
