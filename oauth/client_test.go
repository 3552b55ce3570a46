package oauth_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/oauth"
)

// connectOrg connects account for team-a and returns the connection ID.
func (e *env) connectOrg(t *testing.T, account string) string {
	t.Helper()
	ctx := context.Background()
	c, err := e.m.Complete(ctx, e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-a", LoginHint: account}))
	if err != nil {
		t.Fatal(err)
	}
	return c.ID
}

// A valid token is handed out as stored; an expiring one is refreshed once,
// its rotated refresh token stored, even when 50 goroutines ask at once.
func TestTokenRefresh(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.connectOrg(t, "org-refresh")
	first, err := e.m.Token(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	calls := e.calls.tokens.Load()
	if again, err := e.m.Token(ctx, id); err != nil || again.AccessToken != first.AccessToken || e.calls.tokens.Load() != calls {
		t.Fatalf("a valid token was not handed out as stored: %v", err)
	}

	e.clock.now.Add(int64(2 * time.Minute)) // past the access token's 60 s
	var wg sync.WaitGroup
	got := make([]string, 50)
	for i := range got {
		wg.Go(func() {
			tok, err := e.m.Token(ctx, id)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = tok.AccessToken
		})
	}
	wg.Wait()
	if n := e.calls.tokens.Load() - calls; n != 1 {
		t.Fatalf("50 goroutines needing a refresh made %d calls to the token endpoint, want 1", n)
	}
	for _, a := range got {
		if a == first.AccessToken || a != got[0] {
			t.Fatalf("goroutines got different or stale tokens: %q", got)
		}
	}
	_, version, err := e.store.LoadOAuthToken(ctx, id)
	if err != nil || version != 2 {
		t.Fatalf("stored version %d after one refresh (%v), want 2", version, err)
	}
	// The rotated refresh token was stored: a second refresh works.
	e.clock.now.Add(int64(2 * time.Minute))
	if _, err := e.m.Token(ctx, id); err != nil {
		t.Fatalf("a refresh with the stored, rotated refresh token: %v", err)
	}
}

// A grant withdrawn at the provider makes the connection Inactive with one
// event; callers get the re-authorize error without another call to the
// token endpoint. A paused connection gives the paused error.
func TestTokenWithdrawn(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.connectOrg(t, "org-withdrawn")
	if err := e.op.Withdraw(ctx, "org-withdrawn"); err != nil {
		t.Fatal(err)
	}
	e.clock.now.Add(int64(2 * time.Minute))
	if _, err := e.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("refresh of a withdrawn grant: %v, want unauthenticated", err)
	}
	c, err := e.node.Get(ctx, id)
	if err != nil || c.Status != tether.StatusInactive {
		t.Fatalf("connection after a withdrawn grant: %+v, %v", c, err)
	}
	calls := e.calls.tokens.Load()
	if _, err := e.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeUnauthenticated || e.calls.tokens.Load() != calls {
		t.Fatalf("an inactive connection: %v, token endpoint calls +%d", err, e.calls.tokens.Load()-calls)
	}
	evs, err := e.node.Events(ctx, id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	lost := 0
	for _, ev := range evs {
		if ev.Type == tether.EventAuthLost {
			lost++
		}
	}
	if lost != 1 {
		t.Fatalf("%d auth_lost events, want 1: %+v", lost, evs)
	}

	paused := e.connectOrg(t, "org-paused")
	if _, err := e.node.Pause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, paused); tether.ErrorCode(err) != tether.CodePaused {
		t.Fatalf("a paused connection: %v, want paused", err)
	}
}

// Re-authorizing an inactive connection with a login to the same org makes
// it Active again, same ID, settings kept; a login to another org is
// refused and changes nothing.
func TestReauthorize(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.connectOrg(t, "org-reauth")
	if _, err := e.node.Update(ctx, id, tether.Update{Settings: map[string]string{"sync": "daily"}}); err != nil {
		t.Fatal(err)
	}
	if err := e.op.Withdraw(ctx, "org-reauth"); err != nil {
		t.Fatal(err)
	}
	e.clock.now.Add(int64(2 * time.Minute))
	if _, err := e.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("refresh of a withdrawn grant: %v", err)
	}
	q := e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Reauthorize: id, LoginHint: "another-org"})
	if _, err := e.m.Complete(ctx, q); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("re-authorizing with another org: %v, want invalid", err)
	}
	if c, _ := e.node.Get(ctx, id); c.Status != tether.StatusInactive {
		t.Fatalf("a refused re-authorization left the connection %s", c.Status)
	}
	q = e.login(t, ctx, oauth.BeginRequest{Provider: "test-op", Reauthorize: id, LoginHint: "org-reauth"})
	c, err := e.m.Complete(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	if c.ID != id || c.Status != tether.StatusActive || c.Settings["sync"] != "daily" {
		t.Fatalf("after re-authorizing: %+v", c)
	}
	if _, err := e.m.Token(ctx, id); err != nil {
		t.Fatalf("a token after re-authorizing: %v", err)
	}
	evs, _ := e.node.Events(ctx, id, 0, 0)
	if last := evs[len(evs)-1]; last.Type != tether.EventReauthorized {
		t.Fatalf("last event: %+v", last)
	}
}
