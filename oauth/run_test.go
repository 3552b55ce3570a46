package oauth_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
)

// Sweep refreshes the grants of Active connections idle for half of their
// provider's IdleTTL, and only those: not one renewed since, not one
// whose provider has no IdleTTL.
func TestSweepRefreshesIdleGrants(t *testing.T) {
	r := newRig(t, rigOptions{idleTTL: 24 * time.Hour})
	ctx := context.Background()
	idle := r.connect(t, "test-op", "org-idle")
	plain := r.connect(t, "plain-op", "org-plain")
	first, plainFirst := r.stored(t, idle), r.stored(t, plain)

	r.clock.Advance(11 * time.Hour)
	tokens := r.gate.Tokens.Load()
	if err := r.m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.gate.Tokens.Load() - tokens; n != 0 {
		t.Fatalf("11 h into a 24 h IdleTTL, Sweep refreshed %d times", n)
	}

	r.clock.Advance(2 * time.Hour)
	if err := r.m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.gate.Tokens.Load() - tokens; n != 1 {
		t.Fatalf("13 h into a 24 h IdleTTL, Sweep refreshed %d times, want 1", n)
	}
	got := r.stored(t, idle)
	if !got.Renewed.Equal(r.clock.Now()) || got.Refresh == first.Refresh || got.Version != first.Version+1 {
		t.Fatalf("the idle grant after Sweep: renewed %v (now %v), rotated %v, version %d", got.Renewed, r.clock.Now(), got.Refresh != first.Refresh, got.Version)
	}
	if r.redeem(t, first.Refresh) != "invalid_grant" {
		t.Fatal("the provider still takes the refresh token Sweep replaced")
	}
	if p := r.stored(t, plain); p.Version != plainFirst.Version {
		t.Fatal("Sweep refreshed a grant whose provider has no IdleTTL")
	}
	if err := r.m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	if n := r.gate.Tokens.Load() - tokens; n != 1 {
		t.Fatalf("a second Sweep refreshed again: %d refreshes", n)
	}
	if _, err := r.m.Token(ctx, idle); err != nil {
		t.Fatalf("Token after Sweep refreshed: %v", err)
	}

	// A paused connection's grant is kept alive too: the pause must not
	// cost a re-authorization. (The grant above is gone: presenting its
	// replaced refresh token revoked it.)
	paused := r.connect(t, "test-op", "org-paused")
	if _, err := r.node.Pause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	before := r.stored(t, paused)
	r.clock.Advance(13 * time.Hour)
	if err := r.m.Sweep(ctx); err != nil && !strings.Contains(err.Error(), "re-authorize") {
		t.Fatal(err)
	}
	if got := r.stored(t, paused); got.Version != before.Version+1 || !got.Renewed.Equal(r.clock.Now()) {
		t.Fatalf("a paused connection's idle grant was not refreshed: version %d, renewed %v", got.Version, got.Renewed)
	}
}

// While refreshes keep failing for a reason that may pass, Sweep keeps the
// connection Active and its refresh token, leaves it alone for a while
// after each failure, and records one auth_failing event once the
// failures have lasted an hour, or at once when the grant nears its idle
// expiry; when a refresh works again it records auth_recovered.
func TestSweepFailingGrant(t *testing.T) {
	for _, tc := range []struct {
		name         string
		idle         time.Duration // how long the grant is idle at the first failure
		failing      int           // sweeps that fail, an hour apart
		warnedAtOnce bool
	}{
		{name: "failures that last an hour", idle: 13 * time.Hour, failing: 3},
		{name: "the grant nears its idle expiry", idle: 19 * time.Hour, failing: 2, warnedAtOnce: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, rigOptions{idleTTL: 24 * time.Hour})
			ctx := context.Background()
			id := r.connect(t, "test-op", "org-failing")
			kept := r.stored(t, id).Refresh
			r.gate.FailAll(oauthtest.Answer(http.StatusServiceUnavailable, `{"error":"server_error"}`))
			r.clock.Advance(tc.idle)
			for i := range tc.failing {
				if i > 0 {
					r.clock.Advance(time.Hour)
				}
				tokens := r.gate.Tokens.Load()
				if err := r.m.Sweep(ctx); tether.ErrorCode(err) != tether.CodeUnavailable {
					t.Fatalf("sweep %d: %v, want unavailable", i+1, err)
				}
				if n := r.gate.Tokens.Load() - tokens; n != 3 {
					t.Fatalf("sweep %d: %d calls to the token endpoint, want 3", i+1, n)
				}
				want := 1
				if i == 0 && !tc.warnedAtOnce {
					want = 0
				}
				if n := len(r.events(t, id, tether.EventAuthFailing)); n != want {
					t.Fatalf("sweep %d: %d auth_failing events, want %d", i+1, n, want)
				}
				// Right after a failure, the connection is left alone.
				tokens = r.gate.Tokens.Load()
				if err := r.m.Sweep(ctx); err != nil {
					t.Fatalf("a sweep right after a failure: %v", err)
				}
				if n := r.gate.Tokens.Load() - tokens; n != 0 {
					t.Fatalf("a sweep right after a failure called the token endpoint %d times", n)
				}
			}
			ev := r.events(t, id, tether.EventAuthFailing)[0]
			if ev.Actor != tether.ActorSystem || !strings.Contains(ev.Detail, "HTTP 503") || !strings.Contains(ev.Detail, "lapses at") {
				t.Fatalf("auth_failing event: %+v", ev)
			}
			got := r.stored(t, id)
			if r.status(t, id) != tether.StatusActive || got.Refresh != kept || got.Failures != tc.failing {
				t.Fatalf("while failing: %s, refresh token kept %v, failures %d", r.status(t, id), got.Refresh == kept, got.Failures)
			}

			r.gate.FailAll(nil)
			r.clock.Advance(time.Hour)
			if err := r.m.Sweep(ctx); err != nil {
				t.Fatalf("the provider works again: %v", err)
			}
			if n := len(r.events(t, id, tether.EventAuthRecovered)); n != 1 {
				t.Fatalf("%d auth_recovered events, want 1", n)
			}
			if got := r.stored(t, id); got.Failures != 0 || got.Refresh == kept {
				t.Fatalf("after recovering: failures %d, rotated %v", got.Failures, got.Refresh != kept)
			}
			if n := len(r.events(t, id, tether.EventAuthFailing)); n != 1 {
				t.Fatalf("%d auth_failing events in all, want 1", n)
			}
		})
	}
}

// A refusal for good met by Sweep makes the connection Inactive, with one
// event, after one call.
func TestSweepLostGrant(t *testing.T) {
	r := newRig(t, rigOptions{idleTTL: 24 * time.Hour})
	ctx := context.Background()
	id := r.connect(t, "test-op", "org-sweep-lost")
	if err := r.op.Withdraw(ctx, "org-sweep-lost"); err != nil {
		t.Fatal(err)
	}
	r.clock.Advance(13 * time.Hour)
	tokens := r.gate.Tokens.Load()
	if err := r.m.Sweep(ctx); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("Sweep over a withdrawn grant: %v, want unauthenticated", err)
	}
	if n := r.gate.Tokens.Load() - tokens; n != 1 {
		t.Fatalf("%d calls to the token endpoint, want 1", n)
	}
	if r.status(t, id) != tether.StatusInactive || len(r.events(t, id, tether.EventAuthLost)) != 1 {
		t.Fatalf("after Sweep: %s, %d auth_lost events", r.status(t, id), len(r.events(t, id, tether.EventAuthLost)))
	}
	r.clock.Advance(time.Hour)
	if err := r.m.Sweep(ctx); err != nil || r.gate.Tokens.Load()-tokens != 1 {
		t.Fatalf("Sweep over an inactive connection: %v, %d calls", err, r.gate.Tokens.Load()-tokens)
	}
}

// Delete revokes the grant at the provider at once: the provider refuses
// its refresh token afterwards, the stored tokens are gone, and the
// connection records that they were revoked.
func TestDeleteRevokes(t *testing.T) {
	r := newRig(t, rigOptions{revoke: true})
	ctx := context.Background()
	id := r.connect(t, "test-op", "org-delete")
	if _, err := r.m.Token(ctx, id); err != nil {
		t.Fatal(err)
	}
	rt := r.stored(t, id).Refresh
	c, err := r.m.Delete(ctx, id)
	if err != nil || c.Status != tether.StatusDeleted {
		t.Fatalf("Delete: %+v, %v", c, err)
	}
	if r.gate.Revokes.Load() != 1 {
		t.Fatalf("%d revocation requests, want 1", r.gate.Revokes.Load())
	}
	if got := r.redeem(t, rt); got != "invalid_grant" {
		t.Fatalf("the provider answers the deleted connection's refresh token with %q, want invalid_grant", got)
	}
	if _, _, err := r.store.LoadOAuthToken(ctx, id); tether.ErrorCode(err) != tether.CodeNotFound {
		t.Fatalf("the deleted connection's tokens: %v, want not found", err)
	}
	gone := r.events(t, id, tether.EventCredentialsGone)
	if len(gone) != 1 || !strings.Contains(gone[0].Detail, "revoked at the provider") {
		t.Fatalf("credentials_gone events: %+v", gone)
	}
	if _, err := r.m.Token(ctx, id); tether.ErrorCode(err) != tether.CodeNotConnected {
		t.Fatalf("Token of a deleted connection: %v", err)
	}
	if err := r.m.Sweep(ctx); err != nil || r.gate.Revokes.Load() != 1 || len(r.events(t, id, tether.EventCredentialsGone)) != 1 {
		t.Fatalf("Sweep after the revocation: %v, %d revocations", err, r.gate.Revokes.Load())
	}
	peer, _, err := r.node.Initiate(ctx, tether.InitiateRequest{Destination: "https://partner.example/tether", Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Engineering", Name: "Support to Engineering"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Delete(ctx, peer.ID); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("Delete of a peer connection: %v, want invalid", err)
	}
}

// When the provider cannot be reached, Delete deletes all the same and
// keeps the tokens; Sweep leaves them alone for a while, then revokes
// them. A connection deleted through the Node is revoked by Sweep too.
func TestDeleteProviderUnreachable(t *testing.T) {
	r := newRig(t, rigOptions{revoke: true})
	ctx := context.Background()
	id := r.connect(t, "test-op", "org-unreachable")
	other := r.connect(t, "test-op", "org-node-deleted")
	rt, otherRT := r.stored(t, id).Refresh, r.stored(t, other).Refresh

	r.gate.FailAll(hangUp)
	if c, err := r.m.Delete(ctx, id); err != nil || c.Status != tether.StatusDeleted {
		t.Fatalf("Delete with the provider unreachable: %+v, %v", c, err)
	}
	if _, _, err := r.store.LoadOAuthToken(ctx, id); err != nil {
		t.Fatalf("the tokens of a grant not revoked yet: %v", err)
	}
	if _, err := r.node.Delete(ctx, other); err != nil {
		t.Fatal(err)
	}
	revokes := r.gate.Revokes.Load()
	if err := r.m.Sweep(ctx); tether.ErrorCode(err) != tether.CodeUnavailable {
		t.Fatalf("Sweep with the provider unreachable: %v, want unavailable", err)
	}
	if n := r.gate.Revokes.Load() - revokes; n != 1 {
		t.Fatalf("Sweep tried %d revocations, want 1: the one Delete tried waits", n)
	}
	if len(r.events(t, id, tether.EventCredentialsGone))+len(r.events(t, other, tether.EventCredentialsGone)) != 0 {
		t.Fatal("credentials_gone recorded while the provider cannot be reached")
	}

	r.gate.FailAll(nil)
	r.clock.Advance(2 * time.Minute)
	if err := r.m.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	for _, g := range []struct{ id, rt string }{{id, rt}, {other, otherRT}} {
		if got := r.redeem(t, g.rt); got != "invalid_grant" {
			t.Fatalf("after the Sweep the provider answers the refresh token with %q", got)
		}
		if _, _, err := r.store.LoadOAuthToken(ctx, g.id); tether.ErrorCode(err) != tether.CodeNotFound {
			t.Fatalf("tokens after the revocation: %v", err)
		}
		if gone := r.events(t, g.id, tether.EventCredentialsGone); len(gone) != 1 || !strings.Contains(gone[0].Detail, "revoked at the provider") {
			t.Fatalf("credentials_gone events: %+v", gone)
		}
	}
}

// A provider without a revocation endpoint (Microsoft): deleting destroys
// the stored tokens, and the event says so.
func TestDeleteWithoutRevocationEndpoint(t *testing.T) {
	r := newRig(t, rigOptions{})
	ctx := context.Background()
	id := r.connect(t, "plain-op", "org-no-revocation")
	if _, err := r.m.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if r.gate.Revokes.Load() != 0 {
		t.Fatal("a revocation was sent to a provider without an endpoint")
	}
	if _, _, err := r.store.LoadOAuthToken(ctx, id); tether.ErrorCode(err) != tether.CodeNotFound {
		t.Fatalf("the deleted connection's tokens: %v, want not found", err)
	}
	gone := r.events(t, id, tether.EventCredentialsGone)
	if len(gone) != 1 || !strings.Contains(gone[0].Detail, "destroyed; the provider has no revocation endpoint") {
		t.Fatalf("credentials_gone events: %+v", gone)
	}
}

// Run sweeps at once and then every minute of its clock, and returns,
// canceled, when its context ends.
func TestRun(t *testing.T) {
	r := newRig(t, rigOptions{idleTTL: 24 * time.Hour})
	id := r.connect(t, "test-op", "org-run")
	r.clock.hold.Store(true)
	r.clock.Advance(13 * time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stopped := make(chan struct{})
	var err error
	go func() {
		defer close(stopped)
		err = r.m.Run(ctx)
	}()

	for pass := 1; pass <= 2; pass++ {
		if !r.clock.WaitForWaiters(1, stopped) {
			t.Fatalf("Run returned: %v", err)
		}
		if got := r.gate.Tokens.Load(); got != int64(1+pass) { // the code exchange, then a refresh per pass
			t.Fatalf("after pass %d: %d calls to the token endpoint", pass, got)
		}
		r.clock.Advance(13 * time.Hour)
	}
	if !r.clock.WaitForWaiters(1, stopped) {
		t.Fatalf("Run returned: %v", err)
	}
	cancel()
	<-stopped
	if tether.ErrorCode(err) != tether.CodeCanceled {
		t.Fatalf("Run when its context ends: %v, want canceled", err)
	}
	if got := r.stored(t, id); !got.Renewed.Equal(r.clock.Now()) {
		t.Fatalf("the grant was last renewed at %v, the third pass at %v", got.Renewed, r.clock.Now())
	}
}
