package tether_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// A host revokes its peer's key (compromise): the connection becomes
// Inactive with an event, requests signed with that key are refused, and
// messages queue on both sides. A re-pairing code issued by the public
// side and accepted by the other brings both connections back, with new
// keys pinned, and every queued message is delivered once.
func TestRevokePeerKeyAndRepair(t *testing.T) {
	for _, topo := range []struct {
		name, alpha, beta, dest string
		alphaIssues             bool // alpha (which revokes) is public and issues the code
	}{
		{"both public", alphaURL, betaURL, betaURL, true},
		{"peer private", alphaURL, "", "", true},
		{"revoking side private", "", betaURL, betaURL, false},
	} {
		t.Run(topo.name, func(t *testing.T) {
			w := newWorld(t)
			ain, bin := newInbox(), newInbox()
			alpha := w.node("alpha", topo.alpha, withReceiver(ain), realClock, repairRetry)
			beta := w.node("beta", topo.beta, withReceiver(bin), realClock, repairRetry)
			aid, bid := connect(t, alpha, beta, topo.dest)
			running(t, alpha, beta)
			ctx := context.Background()
			sendAll(t, alpha, aid, "a", 2)
			sendAll(t, beta, bid, "b", 2)
			ain.waitFor(t, 2)
			bin.waitFor(t, 2)

			c, err := alpha.RevokePeerKey(ctx, aid, "laptop stolen")
			if err != nil {
				t.Fatal(err)
			}
			if c.Status != tether.StatusInactive {
				t.Fatalf("after revoking, the connection is %s", c.Status)
			}
			evs, err := alpha.Events(ctx, aid, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if e := evs[len(evs)-1]; e.Type != tether.EventKeyRevoked || e.Actor != tether.ActorLocal {
				t.Fatalf("last event after revoking: %+v", e)
			}
			// Nothing signed with the revoked key is applied: it is refused,
			// signed, so the peer holds its messages.
			cursor, _ := alpha.store.InboxCursor(ctx, aid)
			pushes := []string{
				`{"messages":[{"seq":3,"payload":"eA=="}]}`,
				`{"messages":[{"seq":3,"payload":"eyJ0eXBlIjoiZGVsZXRlZCJ9","control":true}]}`, // a delete notice
			}
			if topo.alpha == "" {
				pushes = nil // a private alpha serves no requests
			}
			for _, body := range pushes {
				if resp, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPush, aid, []byte(body))); answerCode(resp, err) != tether.CodePaused {
					t.Fatalf("a push signed with the revoked key: code %q (%v)", answerCode(resp, err), err)
				}
			}
			if now, _ := alpha.store.InboxCursor(ctx, aid); now != cursor || alpha.get(t, aid).Status != tether.StatusInactive {
				t.Fatalf("a push signed with the revoked key was applied: cursor %d -> %d, status %s", cursor, now, alpha.get(t, aid).Status)
			}
			if _, err := alpha.Transition(ctx, aid, tether.ActionReauthorize, "trust it again"); tether.ErrorCode(err) != tether.CodeInvalid {
				t.Fatalf("Transition reauthorize on a peer connection: %v, want invalid", err)
			}
			// Work waits on both sides.
			sendRange(t, alpha, aid, "a", 3, 5)
			sendRange(t, beta, bid, "b", 3, 5)
			time.Sleep(300 * time.Millisecond)
			if ain.count() != 2 || bin.count() != 2 {
				t.Fatalf("delivered while revoked: alpha got %d, beta got %d", ain.count(), bin.count())
			}

			// Without a new key, beta cannot be re-paired: the key alpha
			// revoked would be trusted again.
			issuer, acceptor, issuerID := alpha, beta, aid
			if !topo.alphaIssues {
				issuer, acceptor, issuerID = beta, alpha, bid
			}
			if _, early, err := issuer.Reauthorize(ctx, issuerID); err == nil {
				if _, err := acceptor.Accept(ctx, early, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeInvalid {
					t.Fatalf("re-pairing with the revoked key: %v, want invalid", err)
				}
			}
			if c := alpha.get(t, aid); c.Status != tether.StatusInactive {
				t.Fatalf("a refused re-pairing left alpha %s", c.Status)
			}
			if err := beta.RotateKey(ctx, 0); err != nil {
				t.Fatal(err)
			}
			issuer, acceptor, issuerID = alpha, beta, aid
			if !topo.alphaIssues {
				if _, _, err := alpha.Reauthorize(ctx, aid); tether.ErrorCode(err) != tether.CodeInvalid {
					t.Fatalf("a private side issued a re-pairing code: %v", err)
				}
				issuer, acceptor, issuerID = beta, alpha, bid
			}
			_, code, err := issuer.Reauthorize(ctx, issuerID)
			if err != nil {
				t.Fatal(err)
			}
			inv, err := acceptor.Preview(code)
			if err != nil || inv.Repairs == "" {
				t.Fatalf("Preview of a re-pairing code: %+v, %v", inv, err)
			}
			if _, err := acceptor.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
				t.Fatal(err)
			}
			for _, side := range []struct {
				p      *peer
				id     string
				remote *peer
			}{{alpha, aid, beta}, {beta, bid, alpha}} {
				c := side.p.get(t, side.id)
				if c.Status != tether.StatusActive {
					t.Fatalf("%s's connection is %s after re-pairing", side.p.name, c.Status)
				}
				if tether.KeyID(c.RemoteKey) != side.remote.Fingerprint() {
					t.Fatalf("%s pins %s, the partner's key is %s", side.p.name, tether.KeyID(c.RemoteKey), side.remote.Fingerprint())
				}
			}
			ain.waitFor(t, 5)
			bin.waitFor(t, 5)
			ain.check(t, aid, "b", 5)
			bin.check(t, bid, "a", 5)
			// The code is used: another connection cannot be re-paired with it.
			if _, err := beta.Accept(ctx, "x"+code[1:], tether.AcceptOptions{}); err == nil {
				t.Fatal("a damaged code was accepted")
			}
		})
	}
}

func repairRetry(c *tether.Config) {
	c.RetryBase, c.RetryMax = 5*time.Millisecond, 50*time.Millisecond
}

// sendRange sends prefix-from to prefix-to.
func sendRange(t *testing.T, p *peer, id, prefix string, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		if _, err := p.Send(context.Background(), id, []byte(prefix+"-"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
}
