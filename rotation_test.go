package tether_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
)

// Key rotation while connections are in use: RotateKey, the rekey notice,
// the switch on acknowledgement, and the pruning of retired keys.

// rotTopologies are the three ways two instances can be connected.
var rotTopologies = []struct{ name, alpha, beta, dest string }{
	{"both public", alphaURL, betaURL, betaURL},
	{"alpha public, beta private", alphaURL, "", ""},
	{"alpha private, beta public", "", betaURL, betaURL},
}

// rotWatch is a memstore that counts the key sweeps of the Node using
// it. A sweep lists every peer connection (no status filter: Run's rescans
// filter by status) and ends by reading the instance to prune it; the
// count goes up when that read returns.
type rotWatch struct {
	*memstore.Store
	listed atomic.Bool
	sweeps atomic.Int64
}

func (s *rotWatch) ListConnections(ctx context.Context, opts tether.ListOptions) ([]*tether.Connection, string, error) {
	if opts.Status == "" && opts.Kind == tether.KindPeer {
		s.listed.Store(true)
	}
	return s.Store.ListConnections(ctx, opts)
}

func (s *rotWatch) LoadInstance(ctx context.Context) (*tether.Instance, error) {
	inst, err := s.Store.LoadInstance(ctx)
	if s.listed.CompareAndSwap(true, false) {
		s.sweeps.Add(1)
	}
	return inst, err
}

// rotNode opens a node named name on st (with its memstore mem), like
// world.node.
func (w *world) rotNode(name, endpoint string, st tether.Store, mem *memstore.Store, mods ...func(*tether.Config)) *peer {
	w.t.Helper()
	cfg := tether.Config{Store: st, Transport: w.net.Transport(name), Endpoint: endpoint, Clock: w.clock}
	for _, m := range mods {
		m(&cfg)
	}
	n, err := tether.Open(context.Background(), cfg)
	if err != nil {
		w.t.Fatalf("Open(%s): %v", name, err)
	}
	return &peer{Node: n, name: name, store: mem}
}

// rotSweep advances the fake clock by first, then 31 s at a time, until
// the key loop of the node on st has completed a sweep; it sweeps every
// 30 s of the node's clock while retired keys exist. It advances no more
// once a sweep has begun, so none is under way when it returns.
func rotSweep(t testing.TB, w *world, st *rotWatch, first time.Duration) {
	t.Helper()
	start := st.sweeps.Load()
	done := func() bool { return st.sweeps.Load() > start }
	w.clock.Advance(first)
	for range 100 {
		if advWithin(time.Second, done) {
			return
		}
		w.clock.Advance(31 * time.Second)
	}
	t.Fatal("the key loop did not sweep")
}

// rotPruned advances the fake clock, 31 s at a time so the key loop
// sweeps, until the store holds exactly the keys want.
func rotPruned(t testing.TB, w *world, st *rotWatch, want []string) {
	t.Helper()
	ok := advWithin(10*time.Second, func() bool {
		if slices.Equal(rotKeyIDs(t, st), want) {
			return true
		}
		w.clock.Advance(31 * time.Second)
		return false
	})
	if !ok {
		t.Fatalf("alpha holds keys %q, want %q", rotKeyIDs(t, st), want)
	}
}

// rotStopAfter waits until p's inbox cursor of connection id reaches seq
// and its outbox is acknowledged, then calls stop: a delivery whose
// context ends between Receive and the cursor write hands the message
// over again (see TestOfflinePeerStoppedAfterReceiveGetsNoDuplicate).
func rotStopAfter(t testing.TB, p *peer, id string, seq int64, stop func()) {
	t.Helper()
	ctx := context.Background()
	eventually(t, "deliveries both ways are recorded", func() bool {
		c, err := p.store.InboxCursor(ctx, id)
		out, oerr := p.store.ListOutbox(ctx, id, 0, 0)
		return err == nil && c >= seq && oerr == nil && len(out) == 0
	})
	stop()
}

// rotRunning runs p, whose store is st, and waits until its key loop's
// first sweep is done: from then on it sweeps only when the clock moves.
func rotRunning(t testing.TB, p *peer, st *rotWatch) {
	t.Helper()
	start := st.sweeps.Load()
	running(t, p)
	eventually(t, p.name+"'s first key sweep", func() bool { return st.sweeps.Load() > start })
}

// rotAwait waits up to 10 s until cond holds, and otherwise fails with
// the key state of the two sides of a connection.
func rotAwait(t testing.TB, what string, cond func() bool, a *peer, aid string, b *peer, bid string) {
	t.Helper()
	if !advWithin(10*time.Second, cond) {
		t.Fatalf("timed out waiting until %s:\n%s\n%s", what, rotDescribe(t, a, aid), rotDescribe(t, b, bid))
	}
}

// rotAdvanceUntil moves the fake clock a second at a time until cond
// holds: retries after failures wait on that clock.
func rotAdvanceUntil(t testing.TB, w *world, what string, cond func() bool) {
	t.Helper()
	eventually(t, what, func() bool {
		if cond() {
			return true
		}
		w.clock.Advance(time.Second)
		return false
	})
}

// rotKeyIDs returns the IDs of the keys the store holds, current first.
func rotKeyIDs(t testing.TB, st interface {
	LoadInstance(context.Context) (*tether.Instance, error)
}) []string {
	t.Helper()
	inst, err := st.LoadInstance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, k := range inst.Keys {
		ids = append(ids, k.ID)
	}
	return ids
}

// rotRemoteKeyEvents returns the details of the key_changed events the
// partner caused on connection id.
func rotRemoteKeyEvents(t testing.TB, p *peer, id string) []string {
	t.Helper()
	evs, err := p.Events(context.Background(), id, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs {
		if e.Type == tether.EventKeyChanged && e.Actor == tether.ActorRemote {
			out = append(out, e.Detail)
		}
	}
	return out
}

// rotSettled reports whether connection id of p signs with p's current key
// and has nothing pending, and pins other's current key without a
// previous one.
func rotSettled(t testing.TB, p *peer, id string, other *peer) bool {
	c := p.get(t, id)
	return c.LocalKeyID == p.Fingerprint() && c.PendingKeyID == "" &&
		tether.KeyID(c.RemoteKey) == other.Fingerprint() && c.RemotePreviousKey == nil
}

// rotDescribe summarises a connection's key state for failure messages.
func rotDescribe(t testing.TB, p *peer, id string) string {
	c := p.get(t, id)
	prev := ""
	if c.RemotePreviousKey != nil {
		prev = tether.KeyID(c.RemotePreviousKey)
	}
	return fmt.Sprintf("%s: status %s, signs with %s (pending %q), pins %s (previous %q), fingerprint %s, health %+v",
		p.name, c.Status, c.LocalKeyID, c.PendingKeyID, tether.KeyID(c.RemoteKey), prev, p.Fingerprint(), c.Health)
}

// rotCheckKeyEvents asserts connection id of p recorded, with actor
// remote, one key change per key the partner rotated to, in order.
func rotCheckKeyEvents(t testing.TB, p *peer, id string, partnerKeys []string) {
	t.Helper()
	got := rotRemoteKeyEvents(t, p, id)
	if len(got) != len(partnerKeys) {
		t.Fatalf("%s recorded %d key changes by the partner, want %d: %q", p.name, len(got), len(partnerKeys), got)
	}
	for i, k := range partnerKeys {
		if !strings.HasSuffix(got[i], k) {
			t.Fatalf("%s's key change %d by the partner: %q, want it to name %s", p.name, i, got[i], k)
		}
	}
}

// rotCheckSeqs asserts that the messages in connection id's inbox were
// numbered 1, 2, ... except that a notice took the number after each of
// the messages in after.
func rotCheckSeqs(t testing.TB, in *inbox, id string, after []int) {
	t.Helper()
	in.mu.Lock()
	defer in.mu.Unlock()
	skipped := 0
	for i, m := range in.got[id] {
		if want := int64(i + 1 + skipped); m.Seq != want {
			t.Fatalf("message %d has seq %d, want %d (a notice after each of messages %v)", i+1, m.Seq, want, after)
		}
		if skipped < len(after) && after[skipped] == i+1 {
			skipped++
		}
	}
}

// Each side rotates twice while a thousand messages flow each way; none
// is lost, repeated or reordered, and both end on their current keys.
func TestRotateKeyWhileMessagesFlow(t *testing.T) {
	const n = 1000
	for _, topo := range rotTopologies {
		t.Run(topo.name, func(t *testing.T) {
			began := time.Now()
			w := newWorld(t)
			ain, bin := newInbox(), newInbox()
			alpha := w.node("alpha", topo.alpha, withReceiver(ain), realClock)
			beta := w.node("beta", topo.beta, withReceiver(bin), realClock)
			aid, bid := connect(t, alpha, beta, topo.dest)
			running(t, alpha, beta)

			// Rotations alternate: alpha after its 150th message, beta
			// after its 350th, alpha after its 550th, beta after its
			// 750th; each waits for the one before, and for its partner
			// to have received some of its messages, so it happens while
			// messages flow both ways.
			type rotation struct {
				at         int
				prev, done chan struct{}
			}
			done := []chan struct{}{make(chan struct{}), make(chan struct{}), make(chan struct{}), make(chan struct{})}
			var keysMu sync.Mutex
			alphaKeys, betaKeys := []string{alpha.Fingerprint()}, []string{beta.Fingerprint()}
			send := func(p *peer, id, prefix string, partner *inbox, keys *[]string, rots []rotation) {
				ctx := context.Background()
				defer func() {
					for _, r := range rots { // on failure: release the other sender
						close(r.done)
					}
				}()
				for i := 1; i <= n; i++ {
					if _, err := p.Send(ctx, id, fmt.Appendf(nil, "%s-%d", prefix, i)); err != nil {
						t.Errorf("%s: Send %d: %v", p.name, i, err)
						return
					}
					if len(rots) == 0 || rots[0].at != i {
						continue
					}
					r := rots[0]
					rots = rots[1:]
					if r.prev != nil {
						<-r.prev
					}
					deadline := time.Now().Add(30 * time.Second)
					for partner.count() < 100 && time.Now().Before(deadline) {
						time.Sleep(time.Millisecond)
					}
					if err := p.RotateKey(ctx, time.Hour); err != nil {
						t.Errorf("%s: RotateKey: %v", p.name, err)
					}
					keysMu.Lock()
					*keys = append(*keys, p.Fingerprint())
					keysMu.Unlock()
					close(r.done)
				}
			}
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				send(alpha, aid, "a", bin, &alphaKeys, []rotation{{150, nil, done[0]}, {550, done[1], done[2]}})
			}()
			go func() {
				defer wg.Done()
				send(beta, bid, "b", ain, &betaKeys, []rotation{{350, done[0], done[1]}, {750, done[2], done[3]}})
			}()
			wg.Wait()
			if t.Failed() {
				t.FailNow()
			}
			bin.waitFor(t, n)
			ain.waitFor(t, n)
			bin.check(t, bid, "a", n)
			ain.check(t, aid, "b", n)
			// Each rekey notice took its place in the stream, between the
			// messages sent before and after it, and never reached the
			// Receiver.
			rotCheckSeqs(t, bin, bid, []int{150, 550})
			rotCheckSeqs(t, ain, aid, []int{350, 750})
			if len(alphaKeys) != 3 || len(betaKeys) != 3 || alphaKeys[2] != alpha.Fingerprint() || betaKeys[2] != beta.Fingerprint() {
				t.Fatalf("keys used: alpha %q (now %s), beta %q (now %s)", alphaKeys, alpha.Fingerprint(), betaKeys, beta.Fingerprint())
			}

			// Both sides sign with their current keys and pin each
			// other's.
			within(t, 10*time.Second, "both sides sign with their current keys", func() bool {
				a, b := alpha.get(t, aid), beta.get(t, bid)
				return a.LocalKeyID == alpha.Fingerprint() && a.PendingKeyID == "" &&
					b.LocalKeyID == beta.Fingerprint() && b.PendingKeyID == ""
			})
			for _, s := range []struct {
				p, other *peer
				id       string
			}{{alpha, beta, aid}, {beta, alpha, bid}} {
				c := s.p.get(t, s.id)
				if c.Status != tether.StatusActive {
					t.Fatalf("%s's connection is %s, want active", s.p.name, c.Status)
				}
				if got := tether.KeyID(c.RemoteKey); got != s.other.Fingerprint() {
					t.Fatalf("%s pins %s, want the partner's current key %s", s.p.name, got, s.other.Fingerprint())
				}
			}

			// The previous key is forgotten once the partner signs with
			// its new one; between two public sides that takes a request
			// after the switch, so one more message goes each way.
			if _, err := alpha.Send(context.Background(), aid, []byte("a-tail")); err != nil {
				t.Fatal(err)
			}
			if _, err := beta.Send(context.Background(), bid, []byte("b-tail")); err != nil {
				t.Fatal(err)
			}
			bin.waitFor(t, n+1)
			ain.waitFor(t, n+1)
			within(t, 10*time.Second, "both sides forget the partner's previous key", func() bool {
				return rotSettled(t, alpha, aid, beta) && rotSettled(t, beta, bid, alpha)
			})

			// Each side recorded the partner's two key changes, as the
			// partner's doing.
			rotCheckKeyEvents(t, alpha, aid, betaKeys[1:])
			rotCheckKeyEvents(t, beta, bid, alphaKeys[1:])
			t.Logf("%d messages each way and 4 rotations in %v", n, time.Since(began).Round(time.Millisecond))
		})
	}
}

// A private side that rotates keeps receiving from its public partner at
// once, and keeps sending.
func TestPrivateSideRotatesKeepsReceiving(t *testing.T) {
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	alpha := w.node("alpha", alphaURL, withReceiver(ain), realClock)
	beta := w.node("beta", "", withReceiver(bin), realClock)
	aid, bid := connect(t, alpha, beta, "")
	running(t, alpha, beta)
	ctx := context.Background()
	sent := func(p *peer, id, payload string) {
		t.Helper()
		if _, err := p.Send(ctx, id, []byte(payload)); err != nil {
			t.Fatalf("%s: Send: %v", p.name, err)
		}
	}
	sent(alpha, aid, "a-1")
	bin.waitFor(t, 1) // beta polls alpha
	keys := []string{beta.Fingerprint()}
	a, b := 1, 0 // messages sent by alpha and by beta
	for round := 1; round <= 2; round++ {
		if err := beta.RotateKey(ctx, time.Hour); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, beta.Fingerprint())
		a++
		sent(alpha, aid, fmt.Sprintf("a-%d", a))
		within(t, 5*time.Second, fmt.Sprintf("rotation %d: alpha's next message reaches beta", round), func() bool { return bin.count() >= a })
		b++
		sent(beta, bid, fmt.Sprintf("b-%d", b))
		within(t, 5*time.Second, fmt.Sprintf("rotation %d: beta's next message reaches alpha", round), func() bool { return ain.count() >= b })
		within(t, 5*time.Second, fmt.Sprintf("rotation %d: beta signs with its new key", round), func() bool {
			c := beta.get(t, bid)
			return c.LocalKeyID == beta.Fingerprint() && c.PendingKeyID == "" &&
				tether.KeyID(alpha.get(t, aid).RemoteKey) == beta.Fingerprint()
		})
		// Polls are now signed with the new key: messages keep coming.
		a++
		sent(alpha, aid, fmt.Sprintf("a-%d", a))
		within(t, 5*time.Second, fmt.Sprintf("rotation %d: alpha's message after the switch reaches beta", round), func() bool { return bin.count() >= a })
		b++
		sent(beta, bid, fmt.Sprintf("b-%d", b))
		within(t, 5*time.Second, fmt.Sprintf("rotation %d: beta's message after the switch reaches alpha", round), func() bool { return ain.count() >= b })
	}
	bin.check(t, bid, "a", a)
	ain.check(t, aid, "b", b)
	within(t, 5*time.Second, "alpha forgets beta's previous key", func() bool { return rotSettled(t, alpha, aid, beta) })
	rotCheckKeyEvents(t, alpha, aid, keys[1:])
}

// A rotation reaches the partner without waiting for the next message:
// the rekey notice wakes the delivery like any message does.
func TestRotateKeyReachesIdlePeer(t *testing.T) {
	for _, topo := range rotTopologies {
		t.Run(topo.name, func(t *testing.T) {
			w := newWorld(t)
			ain, bin := newInbox(), newInbox()
			alpha := w.node("alpha", topo.alpha, withReceiver(ain), realClock)
			beta := w.node("beta", topo.beta, withReceiver(bin), realClock)
			aid, bid := connect(t, alpha, beta, topo.dest)
			running(t, alpha, beta)
			// One message each way: every worker is started and idle.
			sendAll(t, alpha, aid, "a", 1)
			sendAll(t, beta, bid, "b", 1)
			bin.waitFor(t, 1)
			ain.waitFor(t, 1)
			if err := alpha.RotateKey(context.Background(), time.Hour); err != nil {
				t.Fatal(err)
			}
			ok := advWithin(5*time.Second, func() bool {
				return tether.KeyID(beta.get(t, bid).RemoteKey) == alpha.Fingerprint() &&
					alpha.get(t, aid).LocalKeyID == alpha.Fingerprint()
			})
			if !ok {
				t.Fatalf("5 s after the rotation, with nothing else sent, the key change is not through:\n%s\n%s",
					rotDescribe(t, alpha, aid), rotDescribe(t, beta, bid))
			}
		})
	}
}

// An instance that rotates while its partner is away keeps the old key
// past the overlap, as long as the connection signs with it; the partner
// catches up when it is back, and the old key goes once unused.
func TestOfflinePeerCatchesUpAfterOverlap(t *testing.T) {
	const overlap = time.Minute
	ctx := context.Background()
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	mem := memstore.New()
	st := &rotWatch{Store: mem}
	alpha := w.rotNode("alpha", alphaURL, st, mem, withReceiver(ain))
	t.Cleanup(w.net.Listen(alphaURL, alpha))
	beta := w.node("beta", "", withReceiver(bin))
	aid, bid := connect(t, alpha, beta, "")
	rotRunning(t, alpha, st)
	stopBeta := running(t, beta)
	sendAll(t, alpha, aid, "a", 1)
	bin.waitFor(t, 1)
	rotStopAfter(t, beta, bid, 1, stopBeta) // beta is offline from here

	old := alpha.Fingerprint()
	if err := alpha.RotateKey(ctx, overlap); err != nil {
		t.Fatal(err)
	}
	fresh := alpha.Fingerprint()
	if fresh == old {
		t.Fatal("the key did not change")
	}
	// Alpha sends while beta is away: it must still sign for beta with
	// the key beta knows.
	if _, err := alpha.Send(ctx, aid, []byte("a-2")); err != nil {
		t.Fatal(err)
	}
	// Past the overlap, the key loop sweeps.
	rotSweep(t, w, st, 2*overlap)
	if got, want := rotKeyIDs(t, st), []string{fresh, old}; !slices.Equal(got, want) {
		t.Fatalf("past the overlap, with beta away, alpha holds keys %q, want %q: the connection still signs with the old one", got, want)
	}
	if c := alpha.get(t, aid); c.LocalKeyID != old || c.PendingKeyID != fresh {
		t.Fatalf("alpha signs with %s (pending %q), want %s (pending %s)", c.LocalKeyID, c.PendingKeyID, old, fresh)
	}

	// Beta comes back: it gets the message sent meanwhile and the key.
	running(t, beta)
	rotAwait(t, "beta gets the message sent meanwhile", func() bool { return bin.count() >= 2 }, alpha, aid, beta, bid)
	rotAwait(t, "beta learns alpha's new key and alpha signs with it", func() bool {
		return tether.KeyID(beta.get(t, bid).RemoteKey) == fresh && alpha.get(t, aid).LocalKeyID == fresh
	}, alpha, aid, beta, bid)
	sendAll(t, beta, bid, "b", 1)
	rotAwait(t, "alpha gets beta's message", func() bool { return ain.count() >= 1 }, alpha, aid, beta, bid)
	if _, err := alpha.Send(ctx, aid, []byte("a-3")); err != nil {
		t.Fatal(err)
	}
	rotAwait(t, "beta gets alpha's message", func() bool { return bin.count() >= 3 }, alpha, aid, beta, bid)
	bin.check(t, bid, "a", 3)
	ain.check(t, aid, "b", 1)
	rotCheckKeyEvents(t, beta, bid, []string{fresh})
	eventually(t, "beta forgets alpha's old key", func() bool { return beta.get(t, bid).RemotePreviousKey == nil })

	// Unused and past its overlap, the old key goes at the next sweep.
	rotPruned(t, w, st, []string{fresh})
	// And messages still flow both ways.
	if _, err := alpha.Send(ctx, aid, []byte("a-4")); err != nil {
		t.Fatal(err)
	}
	if _, err := beta.Send(ctx, bid, []byte("b-2")); err != nil {
		t.Fatal(err)
	}
	bin.waitFor(t, 4)
	ain.waitFor(t, 2)
	bin.check(t, bid, "a", 4)
	ain.check(t, aid, "b", 2)
}

// A connection never loses the key it signs with: five rotations with the
// shortest overlap while the partner is away drop the keys no connection
// uses, keep the one the partner knows and the one announced, and the
// partner catches up when it is back.
func TestRotateKeyManyTimesKeepsSigningKey(t *testing.T) {
	for _, topo := range []struct {
		name      string
		alphaURL  string
		betaURL   string
		dest      string
		partition bool
	}{
		{name: "partner private and stopped", alphaURL: alphaURL},
		{name: "partner public and cut off", betaURL: betaURL, dest: betaURL, partition: true},
	} {
		t.Run(topo.name, func(t *testing.T) {
			const rotations = 5
			ctx := context.Background()
			w := newWorld(t)
			ain, bin := newInbox(), newInbox()
			mem := memstore.New()
			st := &rotWatch{Store: mem}
			alpha := w.rotNode("alpha", topo.alphaURL, st, mem, withReceiver(ain))
			if topo.alphaURL != "" {
				t.Cleanup(w.net.Listen(topo.alphaURL, alpha))
			}
			beta := w.node("beta", topo.betaURL, withReceiver(bin))
			aid, bid := connect(t, alpha, beta, topo.dest)
			rotRunning(t, alpha, st)
			stopBeta := running(t, beta)
			sendAll(t, alpha, aid, "a", 1)
			sendAll(t, beta, bid, "b", 1)
			bin.waitFor(t, 1)
			ain.waitFor(t, 1)
			if topo.partition {
				w.net.Partition("alpha", betaURL)
			} else {
				rotStopAfter(t, beta, bid, 1, stopBeta)
			}

			keys := []string{alpha.Fingerprint()}
			for i := range rotations {
				if err := alpha.RotateKey(ctx, time.Nanosecond); err != nil {
					t.Fatal(err)
				}
				keys = append(keys, alpha.Fingerprint())
				if _, err := alpha.Send(ctx, aid, fmt.Appendf(nil, "a-%d", i+2)); err != nil {
					t.Fatal(err)
				}
				w.clock.Advance(time.Second)
			}
			rotSweep(t, w, st, 31*time.Second)
			first, last := keys[0], keys[rotations]
			c := alpha.get(t, aid)
			if c.LocalKeyID != first || c.PendingKeyID != last {
				t.Fatalf("alpha signs with %s (pending %q), want %s (pending %s)", c.LocalKeyID, c.PendingKeyID, first, last)
			}
			// Every key the connection refers to is kept; the others,
			// past their overlap, are gone.
			if got, want := rotKeyIDs(t, st), []string{last, first}; !slices.Equal(got, want) {
				t.Fatalf("alpha holds keys %q, want %q (the current one and the one the partner knows)", got, want)
			}

			// The partner is back: everything sent meanwhile arrives, it
			// learns each key in turn, and messages flow both ways.
			if topo.partition {
				w.net.Heal()
			} else {
				running(t, beta)
			}
			rotAdvanceUntil(t, w, "the messages sent meanwhile arrive", func() bool { return bin.count() >= rotations+1 })
			rotAdvanceUntil(t, w, "alpha signs with its current key", func() bool {
				return tether.KeyID(beta.get(t, bid).RemoteKey) == last && alpha.get(t, aid).LocalKeyID == last
			})
			if _, err := beta.Send(ctx, bid, []byte("b-2")); err != nil {
				t.Fatal(err)
			}
			if _, err := alpha.Send(ctx, aid, fmt.Appendf(nil, "a-%d", rotations+2)); err != nil {
				t.Fatal(err)
			}
			rotAdvanceUntil(t, w, "messages flow both ways", func() bool { return ain.count() >= 2 && bin.count() >= rotations+2 })
			bin.check(t, bid, "a", rotations+2)
			ain.check(t, aid, "b", 2)
			rotCheckKeyEvents(t, beta, bid, keys[1:])
			rotAdvanceUntil(t, w, "both sides settle on the current keys", func() bool {
				return rotSettled(t, alpha, aid, beta) && rotSettled(t, beta, bid, alpha)
			})
			rotPruned(t, w, st, []string{last})
		})
	}
}

// rotKid returns the kid header of a signed token.
func rotKid(t testing.TB, token string) string {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	if err != nil {
		t.Fatal(err)
	}
	var h struct {
		Kid string `json:"kid"`
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatal(err)
	}
	return h.Kid
}

// Replicas share one Store behind one endpoint; one of them rotates. The
// others take the new key from the Store when a request needs it, and
// accept what either key signed.
func TestRotateKeyReplicasShareStore(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	mem := memstore.New()
	replicas := make([]*peer, 3)
	for i := range replicas {
		replicas[i] = w.rotNode(fmt.Sprintf("alpha-%d", i+1), alphaURL, mem, mem)
	}
	r1, r2, r3 := replicas[0], replicas[1], replicas[2]
	var route atomic.Pointer[peer] // the replica the endpoint's requests land on
	route.Store(r1)
	t.Cleanup(w.net.Listen(alphaURL, handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		return route.Load().Handle(ctx, r)
	})))

	din := newInbox()
	delta := w.node("delta", "", withReceiver(din))
	aid, did := connect(t, r1, delta, "")
	_, before := r2.initiate(t, invite("")) // issued by r2 before the rotation
	old := r1.Fingerprint()
	if err := r1.RotateKey(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	fresh := r1.Fingerprint()

	// An invitation the other replica issued before the rotation is
	// accepted by the one that rotated.
	beta := w.node("beta", "")
	bc, err := beta.Accept(ctx, before, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("accepting, at the replica that rotated, an invitation another replica issued before: %v", err)
	}
	if got := tether.KeyID(beta.get(t, bc.ID).RemoteKey); got != old {
		t.Fatalf("beta pinned %s, want the key the invitation was signed with, %s", got, old)
	}
	// An invitation signed with the new key is accepted by a replica that
	// did not rotate.
	_, after := r1.initiate(t, invite(""))
	route.Store(r2)
	gamma := w.node("gamma", "")
	gc, err := gamma.Accept(ctx, after, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("accepting, at a replica that did not rotate, an invitation signed with the new key: %v", err)
	}
	if got := tether.KeyID(gamma.get(t, gc.ID).RemoteKey); got != fresh {
		t.Fatalf("gamma pinned %s, want the new key %s", got, fresh)
	}

	// Delta's connection moves to the new key through the replica that
	// rotated.
	route.Store(r1)
	stop := running(t, r1, delta)
	if _, err := r1.Send(ctx, aid, []byte("a-1")); err != nil {
		t.Fatal(err)
	}
	din.waitFor(t, 1)
	eventually(t, "delta's connection signs with the new key", func() bool {
		return r1.get(t, aid).LocalKeyID == fresh && tether.KeyID(delta.get(t, did).RemoteKey) == fresh
	})
	stop()

	// A request on it landing on a replica that did not rotate is
	// answered, signed with the new key.
	cursor, err := delta.store.InboxCursor(ctx, did)
	if err != nil {
		t.Fatal(err)
	}
	poll := fmt.Appendf(nil, `{"wait_ms":0,"connections":[{"id":%q,"cursor":%d}]}`, aid, cursor)
	resp, err := r3.Handle(ctx, tether.SignRequest(delta.Node, alphaURL, tether.OpPoll, aid, poll))
	if err != nil {
		t.Fatalf("a poll on a connection that signs with the new key, at a replica that did not rotate: %v", err)
	}
	if kid := rotKid(t, resp.Auth); kid != fresh {
		t.Fatalf("the answer is signed with %s, want the new key %s", kid, fresh)
	}
}

// A replica that opened before another rotated holds the old key as its
// current one until it reads the Store again. When it starts, its key
// sweep must not move connections the other replica moved to the new key
// back to the old one; if the old key is gone from the Store by then, the
// connection could never sign again.
func TestRotateKeyStaleReplica(t *testing.T) {
	for _, tc := range []struct {
		name    string
		overlap time.Duration
		dropped bool // the old key's overlap passes and it is pruned before the stale replica starts
	}{
		{"old key still held", time.Hour, false},
		{"old key dropped", time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			w := newWorld(t)
			mem := memstore.New()
			st1, st2 := &rotWatch{Store: mem}, &rotWatch{Store: mem}
			r1 := w.rotNode("alpha-1", alphaURL, st1, mem)
			r2 := w.rotNode("alpha-2", alphaURL, st2, mem) // opens now, before the rotation
			t.Cleanup(w.net.Listen(alphaURL, r1))
			din := newInbox()
			delta := w.node("delta", "", withReceiver(din))
			aid, did := connect(t, r1, delta, "")
			rotRunning(t, r1, st1)
			running(t, delta)

			old := r1.Fingerprint()
			if err := r1.RotateKey(ctx, tc.overlap); err != nil {
				t.Fatal(err)
			}
			fresh := r1.Fingerprint()
			if _, err := r1.Send(ctx, aid, []byte("a-1")); err != nil {
				t.Fatal(err)
			}
			din.waitFor(t, 1)
			eventually(t, "delta's connection signs with the new key", func() bool {
				return r1.get(t, aid).LocalKeyID == fresh && tether.KeyID(delta.get(t, did).RemoteKey) == fresh
			})
			want := []string{fresh, old}
			if tc.dropped {
				rotSweep(t, w, st1, 2*tc.overlap)
				want = want[:1]
			}
			if got := rotKeyIDs(t, mem); !slices.Equal(got, want) {
				t.Fatalf("alpha holds keys %q, want %q", got, want)
			}
			if got := r2.Fingerprint(); got != old {
				t.Fatalf("the other replica shows %s before it read the Store again, want %s", got, old)
			}

			// The other replica starts and sweeps its keys.
			reads := st2.sweeps.Load()
			running(t, r2)
			eventually(t, "the other replica's first key sweep", func() bool { return st2.sweeps.Load() > reads })
			c := r1.get(t, aid)
			msgs, err := mem.ListOutbox(ctx, aid, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			var notices []string
			for _, m := range msgs {
				if m.Control {
					notices = append(notices, string(m.Payload))
				}
			}
			if c.LocalKeyID != fresh || c.PendingKeyID != "" || len(notices) > 0 {
				t.Errorf("after the other replica swept, delta's connection signs with %s (pending %q), notices waiting: %d; want %s, nothing pending, no notice (the old key is %s)",
					c.LocalKeyID, c.PendingKeyID, len(notices), fresh, old)
			}

			// Whatever it did, the connection keeps a key alpha holds, and
			// messages keep flowing.
			moving := func(cond func() bool) bool {
				return advWithin(5*time.Second, func() bool {
					if cond() {
						return true
					}
					w.clock.Advance(time.Second)
					return false
				})
			}
			settled := moving(func() bool {
				msgs, err := mem.ListOutbox(ctx, aid, 0, 0)
				return err == nil && len(msgs) == 0 && r1.get(t, aid).PendingKeyID == ""
			})
			c = r1.get(t, aid)
			held := rotKeyIDs(t, mem)
			for _, kid := range []string{c.LocalKeyID, c.PendingKeyID} {
				if kid != "" && !slices.Contains(held, kid) {
					t.Errorf("delta's connection refers to key %s, which alpha no longer holds (holds %q; the old key was %s; settled: %v)", kid, held, old, settled)
				}
			}
			for i := 2; i <= 4; i++ {
				if _, err := r1.Send(ctx, aid, fmt.Appendf(nil, "a-%d", i)); err != nil {
					t.Fatal(err)
				}
				if !moving(func() bool { return din.count() >= i }) {
					t.Fatalf("alpha's message %d did not reach delta after the other replica started:\n%s\n%s", i, rotDescribe(t, r1, aid), rotDescribe(t, delta, did))
				}
			}
			din.check(t, did, "a", 4)
		})
	}
}

// A poll that acknowledged the rekey notice is held with nothing to send;
// meanwhile the old key, unused and past its overlap, is dropped. When a
// message comes, the held poll must still be answered, signed with a key
// alpha holds and beta accepts.
func TestRotateKeyHeldPollOutlivesOldKey(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	mem := memstore.New()
	st := &rotWatch{Store: mem}
	long := func(c *tether.Config) { c.PollWait = time.Hour } // polls are answered only because something happened
	alpha := w.rotNode("alpha", alphaURL, st, mem, withReceiver(ain), long)
	t.Cleanup(w.net.Listen(alphaURL, alpha))
	beta := w.node("beta", "", withReceiver(bin), long)
	aid, bid := connect(t, alpha, beta, "")
	rotRunning(t, alpha, st)
	stopBeta := running(t, beta)
	sendAll(t, alpha, aid, "a", 1)
	bin.waitFor(t, 1)
	rotStopAfter(t, beta, bid, 1, stopBeta)

	if err := alpha.RotateKey(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	fresh := alpha.Fingerprint()
	rotSweep(t, w, st, 2*time.Minute) // past the overlap; the connection still signs with the old key
	running(t, beta)
	// Beta takes the notice; its next poll acknowledges it, so alpha signs
	// with the new key from then on; that poll is held, as nothing waits.
	rotAwait(t, "alpha signs with the new key", func() bool {
		return alpha.get(t, aid).LocalKeyID == fresh && tether.KeyID(beta.get(t, bid).RemoteKey) == fresh
	}, alpha, aid, beta, bid)
	rotPruned(t, w, st, []string{fresh})

	if _, err := alpha.Send(ctx, aid, []byte("a-2")); err != nil {
		t.Fatal(err)
	}
	rotAwait(t, "the held poll brings alpha's message", func() bool { return bin.count() >= 2 }, alpha, aid, beta, bid)
	bin.check(t, bid, "a", 2)
	if h := beta.get(t, bid).Health; h.Failures != 0 {
		t.Fatalf("beta's polls failed: %+v", h)
	}
}

// A delivery whose context ends (Run stopped cleanly, or the peer's
// request canceled: a client that gave up) just after the Receiver
// accepted a message does not hand that message over again: Receive
// returned nil, so the message is acknowledged. Only a crash may repeat
// it.
func TestOfflinePeerStoppedAfterReceiveGetsNoDuplicate(t *testing.T) {
	t.Run("private side's Run stopped", func(t *testing.T) {
		w := newWorld(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		bin := newInbox()
		var once sync.Once
		bin.fail = func(tether.Message) error {
			once.Do(cancel) // the host shuts down while the first message is handled
			return nil
		}
		alpha := w.node("alpha", alphaURL)
		beta := w.node("beta", "", withReceiver(bin))
		aid, bid := connect(t, alpha, beta, "")
		running(t, alpha)
		sendAll(t, alpha, aid, "a", 1)
		done := make(chan error, 1)
		go func() { done <- beta.Run(ctx) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Fatal("beta's Run did not stop")
		}
		if bin.count() != 1 {
			t.Fatalf("beta received %d messages before it stopped, want 1", bin.count())
		}
		running(t, beta)
		if _, err := alpha.Send(context.Background(), aid, []byte("a-2")); err != nil {
			t.Fatal(err)
		}
		rotLastIs(t, bin, bid, "a-2")
		bin.check(t, bid, "a", 2)
	})
	t.Run("push request canceled", func(t *testing.T) {
		w := newWorld(t)
		ain := newInbox()
		var mu sync.Mutex
		var cancelRequest context.CancelFunc
		var once sync.Once
		ain.fail = func(tether.Message) error {
			once.Do(func() {
				mu.Lock()
				defer mu.Unlock()
				cancelRequest() // the pushing side gives up on the request
			})
			return nil
		}
		alpha := w.node("alpha", "", withReceiver(ain), realClock, func(c *tether.Config) { c.Endpoint = alphaURL })
		t.Cleanup(w.net.Listen(alphaURL, handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
			if r.Op == tether.OpPush {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
				mu.Lock()
				cancelRequest = cancel
				mu.Unlock()
			}
			return alpha.Handle(ctx, r)
		})))
		beta := w.node("beta", "", realClock)
		aid, bid := connect(t, alpha, beta, "")
		running(t, alpha, beta)
		sendAll(t, beta, bid, "b", 2)
		rotLastIs(t, ain, aid, "b-2")
		ain.check(t, aid, "b", 2)
	})
}

// rotLastIs waits until the last message connection id received is
// payload.
func rotLastIs(t testing.TB, in *inbox, id, payload string) {
	t.Helper()
	eventually(t, payload+" arrives", func() bool {
		in.mu.Lock()
		defer in.mu.Unlock()
		got := in.got[id]
		return len(got) > 0 && string(got[len(got)-1].Payload) == payload
	})
}
