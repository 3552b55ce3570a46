package tether_test

import (
	"context"
	"testing"

	"github.com/tetherkit/tether"
)

// Under WithOwner, a connection of another owner is answered as one that
// does not exist by every call that names it, and List holds only the
// owner's.
func TestWithOwnerScopesCalls(t *testing.T) {
	w := nuNewWorld(t)
	alpha := w.open("alpha", true)
	beta := w.open("beta", true)
	ctx := context.Background()
	c, _, err := alpha.Initiate(ctx, tether.InitiateRequest{Owner: "team-a", Destination: beta.Endpoint(), Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	if err != nil {
		t.Fatal(err)
	}
	mine, other := tether.WithOwner(ctx, "team-a"), tether.WithOwner(ctx, "team-b")
	missing := "conn_00000000000000000000000000"
	calls := map[string]func(context.Context, string) error{
		"Get":    func(ctx context.Context, id string) error { _, err := alpha.Get(ctx, id); return err },
		"Events": func(ctx context.Context, id string) error { _, err := alpha.Events(ctx, id, 0, 0); return err },
		"Update": func(ctx context.Context, id string) error {
			name := "stolen"
			_, err := alpha.Update(ctx, id, tether.Update{Name: &name})
			return err
		},
		"Pause":            func(ctx context.Context, id string) error { _, err := alpha.Pause(ctx, id); return err },
		"Activate":         func(ctx context.Context, id string) error { _, err := alpha.Activate(ctx, id); return err },
		"Delete":           func(ctx context.Context, id string) error { _, err := alpha.Delete(ctx, id); return err },
		"RevokeInvitation": func(ctx context.Context, id string) error { _, err := alpha.RevokeInvitation(ctx, id); return err },
		"Transition": func(ctx context.Context, id string) error {
			_, err := alpha.Transition(ctx, id, tether.ActionReauthorize, "")
			return err
		},
		"Reauthorize":   func(ctx context.Context, id string) error { _, _, err := alpha.Reauthorize(ctx, id); return err },
		"RevokePeerKey": func(ctx context.Context, id string) error { _, err := alpha.RevokePeerKey(ctx, id, "x"); return err },
	}
	for name, call := range calls {
		got, want := call(other, c.ID), call(other, missing)
		if tether.ErrorCode(got) != tether.CodeNotFound || got.Error() != want.Error() {
			t.Errorf("%s of another owner's connection: %v; of a missing one: %v", name, got, want)
		}
	}
	if got, err := alpha.Get(ctx, c.ID); err != nil || got.Name != "A to B" || got.Status != tether.StatusPending || got.Version != c.Version {
		t.Fatalf("after another owner's calls: %+v, %v", got, err)
	}
	if _, err := alpha.Get(mine, c.ID); err != nil {
		t.Errorf("Get by its owner: %v", err)
	}
	for ctx, want := range map[context.Context]int{mine: 1, other: 0} {
		conns, _, err := alpha.List(ctx, tether.ListOptions{Owner: "team-a"})
		if err != nil || len(conns) != want {
			t.Errorf("List: %d connections, %v; want %d", len(conns), err, want)
		}
	}
}

// IfVersion: a change is made only while the connection is at the version
// the caller read.
func TestIfVersion(t *testing.T) {
	w := nuNewWorld(t)
	alpha := w.open("alpha", true)
	beta := w.open("beta", true)
	ctx := context.Background()
	c, _, err := alpha.Initiate(ctx, tether.InitiateRequest{Destination: beta.Endpoint(), Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	if err != nil {
		t.Fatal(err)
	}
	d := "first"
	moved, err := alpha.Update(tether.IfVersion(ctx, c.Version), c.ID, tether.Update{Description: &d})
	if err != nil {
		t.Fatal(err)
	}
	d = "second"
	if _, err := alpha.Update(tether.IfVersion(ctx, c.Version), c.ID, tether.Update{Description: &d}); tether.ErrorCode(err) != tether.CodeConflict {
		t.Fatalf("a stale version: %v", err)
	}
	if _, err := alpha.Delete(tether.IfVersion(ctx, c.Version), c.ID); tether.ErrorCode(err) != tether.CodeConflict {
		t.Fatalf("Delete at a stale version: %v", err)
	}
	got, _ := alpha.Get(ctx, c.ID)
	if got.Description != "first" || got.Status != tether.StatusPending || got.Version != moved.Version {
		t.Fatalf("after refused changes: %+v", got)
	}
	if _, err := alpha.Delete(tether.IfVersion(ctx, moved.Version), c.ID); err != nil {
		t.Fatalf("Delete at the current version: %v", err)
	}
}
