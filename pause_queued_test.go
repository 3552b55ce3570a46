package tether_test

import (
	"context"
	"testing"

	"github.com/tetherkit/tether"
)

// Both sides pause while one still holds data for the other: each side
// learns that its partner paused, although the data stays queued until
// both are active again.
func TestNewUserBothPauseWithDataQueued(t *testing.T) {
	for _, topo := range nuTopologies {
		for _, sender := range []string{"alpha", "beta"} {
			t.Run(topo.name+"/"+sender+" holds data", func(t *testing.T) {
				w := nuNewWorld(t)
				alpha := w.open("alpha", topo.alphaPublic)
				beta := w.open("beta", topo.betaPub)
				aid, bid := nuConnect(t, alpha, beta)
				s, sid, r, rid := alpha, aid, beta, bid
				if sender == "beta" {
					s, sid, r, rid = beta, bid, alpha, aid
				}
				ctx := context.Background()
				if _, err := r.Pause(ctx, rid); err != nil {
					t.Fatal(err)
				}
				nuEventually(t, "the sender learns the receiver paused", func() bool {
					return s.conn(t, sid).RemoteStatus == tether.StatusPaused
				})
				var sent nuSent
				sent.send(t, s, sid, "queued")
				if _, err := s.Pause(ctx, sid); err != nil {
					t.Fatal(err)
				}
				nuEventually(t, "the receiver learns the sender paused", func() bool {
					return r.conn(t, rid).RemoteStatus == tether.StatusPaused
				})
				if got := r.recv.count(rid); got != 0 {
					t.Fatalf("a paused side took %d data messages", got)
				}
				for _, x := range []struct {
					n  *nuNode
					id string
				}{{r, rid}, {s, sid}} {
					if _, err := x.n.Activate(ctx, x.id); err != nil {
						t.Fatal(err)
					}
				}
				nuEventually(t, "the queued message is delivered", func() bool { return r.recv.count(rid) == 1 })
				r.recv.check(t, rid, sent.all())
				nuEventually(t, "remote statuses active", func() bool {
					return nuRemoteActive(alpha.conn(t, aid).RemoteStatus) && nuRemoteActive(beta.conn(t, bid).RemoteStatus)
				})
			})
		}
	}
}
