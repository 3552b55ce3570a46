package tether_test

import (
	"context"
	"testing"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
)

// "Go to remote": each side learns the admin page its partner shares, in
// every topology, and a side that shares none leaves it empty.
func TestRemoteAdminURL(t *testing.T) {
	for _, topo := range nuTopologies {
		t.Run(topo.name, func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", topo.alphaPublic, func(c *tether.Config) { c.AdminURL = "https://alpha.example/admin/connections" })
			beta := w.open("beta", topo.betaPub, func(c *tether.Config) { c.AdminURL = "https://beta.example/settings/tether" })
			aid, bid := nuConnect(t, alpha, beta)
			nuEventually(t, "both know the other's admin page", func() bool {
				return alpha.conn(t, aid).RemoteAdminURL == "https://beta.example/settings/tether" &&
					beta.conn(t, bid).RemoteAdminURL == "https://alpha.example/admin/connections"
			})
			gamma := w.open("gamma", true)
			gid, aid2 := nuConnect(t, gamma, alpha)
			nuEventually(t, "gamma knows alpha's", func() bool {
				return gamma.conn(t, gid).RemoteAdminURL == "https://alpha.example/admin/connections"
			})
			if got := alpha.conn(t, aid2).RemoteAdminURL; got != "" {
				t.Errorf("gamma shares no admin page, alpha recorded %q", got)
			}
		})
	}
}

func TestAdminURLChecked(t *testing.T) {
	for _, bad := range []string{"javascript:alert(1)", "/relative", "https://x.example/?q=1", "ftp://x.example/"} {
		_, err := tether.Open(context.Background(), tether.Config{Store: memstore.New(), AdminURL: bad})
		if tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("AdminURL %q: %v", bad, err)
		}
	}
}
