package tether_test

// Tests written as a new user of the library, through its public API only:
// the documented promises about pause, activate, delete, key rotation,
// key revocation and receivers/hooks that call back into the Node.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

const nuWait = 20 * time.Second

// nuRecv records what arrived, per receiving connection.
type nuRecv struct {
	mu  sync.Mutex
	got map[string][]tether.Message
}

func (r *nuRecv) Receive(_ context.Context, m tether.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string][]tether.Message{}
	}
	m.Payload = slices.Clone(m.Payload)
	r.got[m.ConnectionID] = append(r.got[m.ConnectionID], m)
	return nil
}

func (r *nuRecv) payloads(id string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, m := range r.got[id] {
		out = append(out, string(m.Payload))
	}
	return out
}

func (r *nuRecv) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[id])
}

// check: exactly want, in order, seqs strictly increasing, no control.
func (r *nuRecv) check(t testing.TB, id string, want []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got[id]
	var prev int64
	for i, m := range got {
		if m.Control {
			t.Errorf("%s: message %d is a control message handed to the Receiver", id, i)
		}
		if m.Seq <= prev {
			t.Errorf("%s: message %d seq %d after %d", id, i, m.Seq, prev)
		}
		prev = m.Seq
	}
	var gp []string
	for _, m := range got {
		gp = append(gp, string(m.Payload))
	}
	if !slices.Equal(gp, want) {
		t.Errorf("%s: received %d messages %v\nwant %d %v", id, len(gp), nuShort(gp), len(want), nuShort(want))
	}
}

func nuShort(s []string) []string {
	if len(s) > 30 {
		return append(slices.Clone(s[:30]), "...")
	}
	return s
}

type nuNode struct {
	*tether.Node
	name  string
	store *memstore.Store
	recv  *nuRecv
	stop  func()
}

type nuWorld struct {
	t   *testing.T
	net *tethertest.Network
}

func nuNewWorld(t *testing.T) *nuWorld {
	n := tethertest.NewNetwork()
	t.Cleanup(n.Close)
	return &nuWorld{t: t, net: n}
}

func nuFast(c *tether.Config) {
	c.RetryBase, c.RetryMax = 5*time.Millisecond, 100*time.Millisecond
	c.PollWait = time.Second
	c.HandshakeInterval = 50 * time.Millisecond
	c.PausedRetry = 200 * time.Millisecond
}

// open opens a node on memstore with the real clock and starts Run.
func (w *nuWorld) open(name string, public bool, mods ...func(*tether.Config)) *nuNode {
	t := w.t
	t.Helper()
	endpoint := ""
	if public {
		endpoint = "https://" + name + ".newuser.example"
	}
	st := memstore.New()
	r := &nuRecv{}
	cfg := tether.Config{Store: st, Transport: w.net.Transport(name), Endpoint: endpoint, Receiver: r}
	nuFast(&cfg)
	for _, m := range mods {
		m(&cfg)
	}
	n, err := tether.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open %s: %v", name, err)
	}
	if public {
		t.Cleanup(w.net.Listen(endpoint, n))
	}
	nn := &nuNode{Node: n, name: name, store: st, recv: r}
	nn.stop = nuRun(t, n)
	return nn
}

func nuRun(t testing.TB, n *tether.Node) func() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(nuWait):
				t.Errorf("Run did not return within %v of cancel", nuWait)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func nuEventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(nuWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out (%v) waiting until %s", nuWait, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func nuWithin(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func (n *nuNode) conn(t testing.TB, id string) *tether.Connection {
	t.Helper()
	c, err := n.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("%s Get(%s): %v", n.name, id, err)
	}
	return c
}

// connect: a initiates to b's endpoint (empty when b is private), b accepts.
func nuConnect(t testing.TB, a, b *nuNode) (aid, bid string) {
	t.Helper()
	ctx := context.Background()
	ac, code, err := a.Initiate(ctx, tether.InitiateRequest{
		Destination: b.Endpoint(), Mode: tether.ModeBasic,
		LocalName: "A", RemoteName: "B", Name: "A to B",
	})
	if err != nil {
		t.Fatalf("Initiate: %v", err)
	}
	bc, err := b.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	nuEventually(t, "both sides active", func() bool {
		return a.conn(t, ac.ID).Status == tether.StatusActive && b.conn(t, bc.ID).Status == tether.StatusActive
	})
	return ac.ID, bc.ID
}

// sender sends payloads with a prefix and remembers them in order.
type nuSent struct {
	mu   sync.Mutex
	list []string
}

func (s *nuSent) send(t testing.TB, n *nuNode, id, payload string) {
	t.Helper()
	if _, err := n.Send(context.Background(), id, []byte(payload)); err != nil {
		t.Errorf("%s Send(%s): %v", n.name, payload, err)
		return
	}
	s.mu.Lock()
	s.list = append(s.list, payload)
	s.mu.Unlock()
}

func (s *nuSent) sendN(t testing.TB, n *nuNode, id, prefix string, k int) {
	t.Helper()
	for i := 1; i <= k; i++ {
		s.send(t, n, id, fmt.Sprintf("%s-%d", prefix, i))
	}
}

func (s *nuSent) all() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.list)
}

func (n *nuNode) events(t testing.TB, id string) []tether.Event {
	t.Helper()
	evs, err := n.Events(context.Background(), id, 0, tether.MaxEventPage)
	if err != nil {
		t.Fatalf("%s Events: %v", n.name, err)
	}
	return evs
}

func (n *nuNode) hasEvent(t testing.TB, id string, typ tether.EventType, actor, detail string) bool {
	for _, e := range n.events(t, id) {
		if e.Type == typ && (actor == "" || e.Actor == actor) && (detail == "" || e.Detail == detail) {
			return true
		}
	}
	return false
}

func nuHasEventContaining(t testing.TB, n *nuNode, id string, typ tether.EventType, sub string) bool {
	for _, e := range n.events(t, id) {
		if e.Type == typ && strings.Contains(e.Detail, sub) {
			return true
		}
	}
	return false
}

func (n *nuNode) countEvents(t testing.TB, id string, typ tether.EventType) int {
	k := 0
	for _, e := range n.events(t, id) {
		if e.Type == typ {
			k++
		}
	}
	return k
}

func nuRemoteActive(s tether.Status) bool { return s == tether.StatusActive || s == "" }

var nuTopologies = []struct {
	name                 string
	alphaPublic, betaPub bool
}{
	{"both public", true, true},
	{"alpha public beta private", true, false},
	{"alpha private beta public", false, true},
}

// keysConverged: every connection signs with the node's current key and
// the peer pinned it.
func nuKeysConverged(t testing.TB, a *nuNode, aid string, b *nuNode, bid string) (bool, string) {
	ac, bc := a.conn(t, aid), b.conn(t, bid)
	switch {
	case ac.LocalKeyID != a.Fingerprint():
		return false, fmt.Sprintf("alpha LocalKeyID %s, Fingerprint %s (pending %q)", ac.LocalKeyID, a.Fingerprint(), ac.PendingKeyID)
	case bc.LocalKeyID != b.Fingerprint():
		return false, fmt.Sprintf("beta LocalKeyID %s, Fingerprint %s (pending %q)", bc.LocalKeyID, b.Fingerprint(), bc.PendingKeyID)
	case ac.PendingKeyID != "" || bc.PendingKeyID != "":
		return false, fmt.Sprintf("pending keys %q %q", ac.PendingKeyID, bc.PendingKeyID)
	case tether.KeyID(bc.RemoteKey) != a.Fingerprint():
		return false, fmt.Sprintf("beta pins %s, alpha signs %s", tether.KeyID(bc.RemoteKey), a.Fingerprint())
	case tether.KeyID(ac.RemoteKey) != b.Fingerprint():
		return false, fmt.Sprintf("alpha pins %s, beta signs %s", tether.KeyID(ac.RemoteKey), b.Fingerprint())
	}
	return true, ""
}

func nuPrevKeys(t testing.TB, a *nuNode, aid string, b *nuNode, bid string) string {
	ac, bc := a.conn(t, aid), b.conn(t, bid)
	out := ""
	if ac.RemotePreviousKey != nil {
		out += "alpha still accepts beta's previous key " + tether.KeyID(ac.RemotePreviousKey) + "; "
	}
	if bc.RemotePreviousKey != nil {
		out += "beta still accepts alpha's previous key " + tether.KeyID(bc.RemotePreviousKey) + "; "
	}
	return out
}

// nuWaitKeys waits until both sides sign with their current keys, then
// sends one message each way (recorded in toB and toA), after which the
// peer has signed with its current key, so no previous key may be left.
func nuWaitKeys(t testing.TB, a *nuNode, aid string, b *nuNode, bid string, toB, toA *nuSent) {
	t.Helper()
	var why string
	deadline := time.Now().Add(nuWait)
	for {
		ok, w := nuKeysConverged(t, a, aid, b, bid)
		if ok {
			break
		}
		why = w
		if time.Now().After(deadline) {
			t.Fatalf("keys did not converge: %s", why)
		}
		time.Sleep(10 * time.Millisecond)
	}
	na, nb := a.recv.count(aid), b.recv.count(bid)
	toB.send(t, a, aid, "keyping-a")
	toA.send(t, b, bid, "keyping-b")
	nuEventually(t, "key pings delivered", func() bool { return a.recv.count(aid) > na && b.recv.count(bid) > nb })
	deadline = time.Now().Add(5 * time.Second)
	for {
		why = nuPrevKeys(t, a, aid, b, bid)
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("after messages both ways signed with the current keys: %s", why)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Pause on one side: the other side sees RemoteStatus paused with a
// "remote" event "paused by the partner"; what was sent before the pause
// is delivered, what is sent during it waits on both sides, and after
// Activate everything arrives once, in order.
func TestNewUserPauseAndActivate(t *testing.T) {
	for _, topo := range nuTopologies {
		for _, pauser := range []string{"alpha", "beta"} {
			t.Run(topo.name+"/"+pauser+" pauses", func(t *testing.T) {
				w := nuNewWorld(t)
				alpha := w.open("alpha", topo.alphaPublic)
				beta := w.open("beta", topo.betaPub)
				aid, bid := nuConnect(t, alpha, beta)
				p, pid, o, oid := alpha, aid, beta, bid
				if pauser == "beta" {
					p, pid, o, oid = beta, bid, alpha, aid
				}
				var toO, toP nuSent // what p sends to o, and o to p
				toO.sendN(t, p, pid, "pre", 5)
				toP.sendN(t, o, oid, "opre", 5)
				if _, err := p.Pause(context.Background(), pid); err != nil {
					t.Fatalf("Pause: %v", err)
				}
				if c := p.conn(t, pid); c.Status != tether.StatusPaused {
					t.Fatalf("status after Pause = %s", c.Status)
				}
				nuEventually(t, "partner sees RemoteStatus paused", func() bool {
					return o.conn(t, oid).RemoteStatus == tether.StatusPaused
				})
				if oc := o.conn(t, oid); oc.Status != tether.StatusActive {
					t.Errorf("partner's own status = %s, want active", oc.Status)
				}
				if !o.hasEvent(t, oid, tether.EventPeerPaused, tether.ActorRemote, "paused by the partner") {
					t.Errorf("partner has no peer_paused event by remote \"paused by the partner\": %+v", o.events(t, oid))
				}
				// What p sent before the pause is delivered.
				nuEventually(t, "pre-pause messages delivered", func() bool { return o.recv.count(oid) >= 5 })
				toO.sendN(t, p, pid, "held", 3)
				toP.sendN(t, o, oid, "oheld", 3)
				time.Sleep(700 * time.Millisecond)
				if got := o.recv.payloads(oid); len(got) != 5 {
					t.Errorf("while paused, partner received %v", got)
				}
				if got := p.recv.payloads(pid); len(got) > 5 {
					t.Errorf("while paused, pausing side received %v", got)
				}
				if _, err := p.Activate(context.Background(), pid); err != nil {
					t.Fatalf("Activate: %v", err)
				}
				nuEventually(t, "partner sees RemoteStatus active", func() bool {
					return nuRemoteActive(o.conn(t, oid).RemoteStatus)
				})
				if !o.hasEvent(t, oid, tether.EventPeerActivated, tether.ActorRemote, "") {
					t.Errorf("partner has no peer_activated event by remote: %+v", o.events(t, oid))
				}
				toO.sendN(t, p, pid, "post", 3)
				toP.sendN(t, o, oid, "opost", 3)
				nuEventually(t, "everything delivered", func() bool {
					return o.recv.count(oid) >= len(toO.all()) && p.recv.count(pid) >= len(toP.all())
				})
				time.Sleep(200 * time.Millisecond)
				o.recv.check(t, oid, toO.all())
				p.recv.check(t, pid, toP.all())
				if n := o.countEvents(t, oid, tether.EventPeerPaused); n != 1 {
					t.Errorf("partner has %d peer_paused events, want 1", n)
				}
			})
		}
	}
}

// Pause returns without waiting on the network (like Delete).
func TestNewUserPauseActivateDoNotWaitOnNetwork(t *testing.T) {
	w := nuNewWorld(t)
	alpha := w.open("alpha", true)
	beta := w.open("beta", true)
	aid, bid := nuConnect(t, alpha, beta)
	var dead atomic.Bool
	dead.Store(true)
	w.net.Faults(func(from, endpoint string, req *tether.Request) tethertest.Fault {
		return tethertest.Fault{Drop: dead.Load()}
	})
	for _, f := range []func(context.Context, string) (*tether.Connection, error){alpha.Pause, alpha.Activate, alpha.Pause} {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := f(ctx, aid)
		cancel()
		if err != nil {
			t.Fatalf("lifecycle call with the network down: %v", err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("lifecycle call took %v with the network down", d)
		}
	}
	dead.Store(false)
	nuEventually(t, "beta learns pause after the network heals", func() bool {
		return beta.conn(t, bid).RemoteStatus == tether.StatusPaused
	})
}

// Delete returns without waiting on the network; Send afterwards fails with
// CodeNotConnected; the peer learns it once the network is back, with a
// "remote" event, and its Send fails too.
func TestNewUserDelete(t *testing.T) {
	for _, topo := range nuTopologies {
		for _, deleter := range []string{"alpha", "beta"} {
			t.Run(topo.name+"/"+deleter+" deletes", func(t *testing.T) {
				w := nuNewWorld(t)
				alpha := w.open("alpha", topo.alphaPublic)
				beta := w.open("beta", topo.betaPub)
				aid, bid := nuConnect(t, alpha, beta)
				d, did, o, oid := alpha, aid, beta, bid
				if deleter == "beta" {
					d, did, o, oid = beta, bid, alpha, aid
				}
				var dead atomic.Bool
				dead.Store(true)
				w.net.Faults(func(from, endpoint string, req *tether.Request) tethertest.Fault {
					return tethertest.Fault{Drop: dead.Load()}
				})
				var sent nuSent
				sent.sendN(t, d, did, "doomed", 3)
				start := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				c, err := d.Delete(ctx, did)
				cancel()
				if err != nil {
					t.Fatalf("Delete with network down: %v", err)
				}
				if el := time.Since(start); el > 2*time.Second {
					t.Errorf("Delete took %v with the network down", el)
				}
				if c.Status != tether.StatusDeleted {
					t.Errorf("Delete returned status %s", c.Status)
				}
				_, err = d.Send(context.Background(), did, []byte("after delete"))
				if tether.ErrorCode(err) != tether.CodeNotConnected || !errors.Is(err, tether.ErrNotConnected) {
					t.Errorf("Send after Delete: %v, want CodeNotConnected", err)
				}
				if !d.hasEvent(t, did, tether.EventDeleted, tether.ActorLocal, "") {
					t.Errorf("deleting side lacks a local deleted event: %+v", d.events(t, did))
				}
				dead.Store(false)
				if !nuWithin(nuWait, func() bool { return o.conn(t, oid).Status == tether.StatusDeleted }) {
					ob, _ := d.store.ListOutbox(context.Background(), did, 0, 100)
					dc := d.conn(t, did)
					oc := o.conn(t, oid)
					t.Fatalf("peer never learnt the deletion: deleting side outbox %d msgs %+v, health %+v, NoticeSeq %d; peer status %s health %+v events %+v",
						len(ob), ob, dc.Health, dc.NoticeSeq, oc.Status, oc.Health, o.events(t, oid))
				}
				if !o.hasEvent(t, oid, tether.EventDeleted, tether.ActorRemote, "deleted by the partner") {
					t.Errorf("peer lacks deleted event by remote \"deleted by the partner\": %+v", o.events(t, oid))
				}
				_, err = o.Send(context.Background(), oid, []byte("to a deleted peer"))
				if tether.ErrorCode(err) != tether.CodeNotConnected {
					t.Errorf("peer Send after deletion: %v, want CodeNotConnected", err)
				}
				for _, m := range o.recv.payloads(oid) {
					if m == "after delete" {
						t.Errorf("message sent after Delete was delivered")
					}
				}
			})
		}
	}
}

// Both sides rotate keys repeatedly while both send: nothing lost,
// duplicated or reordered, and both end up signing with their current key.
func TestNewUserRotateWhileSending(t *testing.T) {
	for _, topo := range nuTopologies {
		t.Run(topo.name, func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", topo.alphaPublic)
			beta := w.open("beta", topo.betaPub)
			aid, bid := nuConnect(t, alpha, beta)
			var toB, toA nuSent
			var wg sync.WaitGroup
			const n = 150
			wg.Add(3)
			go func() {
				defer wg.Done()
				for i := 1; i <= n; i++ {
					toB.send(t, alpha, aid, fmt.Sprintf("a-%d", i))
					time.Sleep(time.Millisecond)
				}
			}()
			go func() {
				defer wg.Done()
				for i := 1; i <= n; i++ {
					toA.send(t, beta, bid, fmt.Sprintf("b-%d", i))
					time.Sleep(time.Millisecond)
				}
			}()
			go func() {
				defer wg.Done()
				for i := 0; i < 6; i++ {
					nd := alpha
					if i%2 == 1 {
						nd = beta
					}
					if err := nd.RotateKey(context.Background(), 0); err != nil {
						t.Errorf("%s RotateKey: %v", nd.name, err)
					}
					time.Sleep(time.Duration(10+rand.IntN(30)) * time.Millisecond)
				}
				// and twice in a row on each side
				for _, nd := range []*nuNode{alpha, alpha, beta, beta} {
					if err := nd.RotateKey(context.Background(), 0); err != nil {
						t.Errorf("%s RotateKey: %v", nd.name, err)
					}
				}
			}()
			wg.Wait()
			nuEventually(t, "all delivered", func() bool {
				return beta.recv.count(bid) >= n && alpha.recv.count(aid) >= n
			})
			// one more each way after the rotations
			toB.send(t, alpha, aid, "a-final")
			toA.send(t, beta, bid, "b-final")
			nuEventually(t, "final delivered", func() bool {
				return beta.recv.count(bid) >= n+1 && alpha.recv.count(aid) >= n+1
			})
			nuWaitKeys(t, alpha, aid, beta, bid, &toB, &toA)
			time.Sleep(200 * time.Millisecond)
			beta.recv.check(t, bid, toB.all())
			alpha.recv.check(t, aid, toA.all())
			for _, nd := range []struct {
				n  *nuNode
				id string
			}{{alpha, aid}, {beta, bid}} {
				if c := nd.n.conn(t, nd.id); c.Status != tether.StatusActive {
					t.Errorf("%s status %s", nd.n.name, c.Status)
				}
			}
		})
	}
}

// 50 connections between the same two instances, keys rotated on both
// sides while all of them carry messages.
func TestNewUserManyConnectionsRotate(t *testing.T) {
	for _, topo := range nuTopologies {
		t.Run(topo.name, func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", topo.alphaPublic)
			beta := w.open("beta", topo.betaPub)
			const k = 50
			aids, bids := make([]string, k), make([]string, k)
			for i := range k {
				aids[i], bids[i] = nuConnect(t, alpha, beta)
			}
			toB, toA := make([]nuSent, k), make([]nuSent, k)
			var wg sync.WaitGroup
			wg.Add(2)
			go func() {
				defer wg.Done()
				for round := 1; round <= 4; round++ {
					for i := range k {
						toB[i].send(t, alpha, aids[i], fmt.Sprintf("a%d-%d", i, round))
						toA[i].send(t, beta, bids[i], fmt.Sprintf("b%d-%d", i, round))
					}
					time.Sleep(20 * time.Millisecond)
				}
			}()
			go func() {
				defer wg.Done()
				for _, nd := range []*nuNode{alpha, beta, alpha, beta} {
					if err := nd.RotateKey(context.Background(), 0); err != nil {
						t.Errorf("RotateKey: %v", err)
					}
					time.Sleep(30 * time.Millisecond)
				}
			}()
			wg.Wait()
			for i := range k {
				toB[i].send(t, alpha, aids[i], fmt.Sprintf("a%d-final", i))
				toA[i].send(t, beta, bids[i], fmt.Sprintf("b%d-final", i))
			}
			nuEventually(t, "all delivered on every connection", func() bool {
				for i := range k {
					if beta.recv.count(bids[i]) < 5 || alpha.recv.count(aids[i]) < 5 {
						return false
					}
				}
				return true
			})
			for i := range k {
				nuWaitKeys(t, alpha, aids[i], beta, bids[i], &toB[i], &toA[i])
			}
			time.Sleep(200 * time.Millisecond)
			for i := range k {
				beta.recv.check(t, bids[i], toB[i].all())
				alpha.recv.check(t, aids[i], toA[i].all())
			}
		})
	}
}

// Node methods called from OnEvent do not deadlock.
func TestNewUserOnEventCallsNode(t *testing.T) {
	w := nuNewWorld(t)
	var nodes [2]atomic.Pointer[tether.Node]
	var calls, errs atomic.Int64
	hook := func(i int) func(*tether.Config) {
		return func(c *tether.Config) {
			c.OnEvent = func(e tether.Event) {
				n := nodes[i].Load()
				if n == nil {
					return
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				calls.Add(1)
				if _, err := n.Get(ctx, e.ConnectionID); err != nil {
					errs.Add(1)
				}
				if _, err := n.Events(ctx, e.ConnectionID, 0, 10); err != nil {
					errs.Add(1)
				}
				if _, _, err := n.List(ctx, tether.ListOptions{}); err != nil {
					errs.Add(1)
				}
				_ = n.Fingerprint()
				// A write: Update's description.
				if e.Type == tether.EventPeerPaused || e.Type == tether.EventPaused {
					d := "touched from OnEvent " + string(e.Type)
					if _, err := n.Update(ctx, e.ConnectionID, tether.Update{Description: &d}); err != nil {
						errs.Add(1)
					}
					if _, err := n.Send(ctx, e.ConnectionID, []byte("from OnEvent")); err != nil {
						errs.Add(1)
					}
				}
			}
		}
	}
	alpha := w.open("alpha", true, hook(0))
	beta := w.open("beta", false, hook(1))
	nodes[0].Store(alpha.Node)
	nodes[1].Store(beta.Node)
	aid, bid := nuConnect(t, alpha, beta)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx := context.Background()
		if _, err := alpha.Pause(ctx, aid); err != nil {
			t.Errorf("Pause: %v", err)
		}
		nuEventually(t, "beta sees pause", func() bool { return beta.conn(t, bid).RemoteStatus == tether.StatusPaused })
		if _, err := alpha.Activate(ctx, aid); err != nil {
			t.Errorf("Activate: %v", err)
		}
		if err := alpha.RotateKey(ctx, 0); err != nil {
			t.Errorf("RotateKey: %v", err)
		}
		if err := beta.RotateKey(ctx, 0); err != nil {
			t.Errorf("RotateKey: %v", err)
		}
		var x, y nuSent
		nuWaitKeys(t, alpha, aid, beta, bid, &x, &y)
		if _, err := beta.Delete(ctx, bid); err != nil {
			t.Errorf("Delete: %v", err)
		}
		nuEventually(t, "alpha deleted", func() bool { return alpha.conn(t, aid).Status == tether.StatusDeleted })
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("lifecycle with Node calls in OnEvent did not finish: deadlock?")
	}
	if calls.Load() == 0 {
		t.Fatal("OnEvent never called")
	}
	if errs.Load() != 0 {
		t.Errorf("%d Node calls from OnEvent failed", errs.Load())
	}
}

// RevokePeerKey, then the partner rotates, Reauthorize + Accept: delivery
// resumes with both queues kept.
func TestNewUserRevokeReauthorize(t *testing.T) {
	for _, betaPublic := range []bool{true, false} {
		t.Run(fmt.Sprintf("beta public %v", betaPublic), func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", true)
			beta := w.open("beta", betaPublic)
			aid, bid := nuConnect(t, alpha, beta)
			var toB, toA nuSent
			toB.sendN(t, alpha, aid, "a-before", 3)
			toA.sendN(t, beta, bid, "b-before", 3)
			nuEventually(t, "first messages", func() bool { return alpha.recv.count(aid) == 3 && beta.recv.count(bid) == 3 })
			ctx := context.Background()
			c, err := alpha.RevokePeerKey(ctx, aid, "laptop stolen")
			if err != nil {
				t.Fatalf("RevokePeerKey: %v", err)
			}
			if c.Status != tether.StatusInactive {
				t.Fatalf("status after RevokePeerKey = %s", c.Status)
			}
			if !nuHasEventContaining(t, alpha, aid, tether.EventKeyRevoked, "laptop stolen") {
				t.Errorf("no key_revoked event")
			}
			toB.sendN(t, alpha, aid, "a-held", 3)
			toA.sendN(t, beta, bid, "b-held", 3)
			time.Sleep(700 * time.Millisecond)
			if n := alpha.recv.count(aid); n != 3 {
				t.Errorf("alpha applied %d messages from the revoked key", n)
			}
			if n := beta.recv.count(bid); n != 3 {
				t.Errorf("beta got %d messages while alpha is inactive", n)
			}
			// Accepting before beta rotates is refused with CodeInvalid.
			_, code, err := alpha.Reauthorize(ctx, aid)
			if err != nil {
				t.Fatalf("Reauthorize: %v", err)
			}
			if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeInvalid {
				t.Errorf("Accept of re-pairing code before rotating: %v, want CodeInvalid", err)
			}
			if err := beta.RotateKey(ctx, 0); err != nil {
				t.Fatalf("RotateKey: %v", err)
			}
			_, code, err = alpha.Reauthorize(ctx, aid)
			if err != nil {
				t.Fatalf("Reauthorize: %v", err)
			}
			bc, err := beta.Accept(ctx, code, tether.AcceptOptions{})
			if err != nil {
				t.Fatalf("Accept re-pairing code: %v", err)
			}
			if bc.ID != bid {
				t.Errorf("re-pairing returned connection %s, want %s", bc.ID, bid)
			}
			nuEventually(t, "alpha active again", func() bool { return alpha.conn(t, aid).Status == tether.StatusActive })
			toB.sendN(t, alpha, aid, "a-after", 3)
			toA.sendN(t, beta, bid, "b-after", 3)
			nuEventually(t, "queues delivered", func() bool { return alpha.recv.count(aid) >= 9 && beta.recv.count(bid) >= 9 })
			nuWaitKeys(t, alpha, aid, beta, bid, &toB, &toA)
			time.Sleep(200 * time.Millisecond)
			alpha.recv.check(t, aid, toA.all())
			beta.recv.check(t, bid, toB.all())
		})
	}
}

// Both sides paused: nothing flows until both are active again.
func TestNewUserPauseBothSides(t *testing.T) {
	for _, topo := range nuTopologies {
		t.Run(topo.name, func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", topo.alphaPublic)
			beta := w.open("beta", topo.betaPub)
			aid, bid := nuConnect(t, alpha, beta)
			ctx := context.Background()
			if _, err := alpha.Pause(ctx, aid); err != nil {
				t.Fatal(err)
			}
			if _, err := beta.Pause(ctx, bid); err != nil {
				t.Fatal(err)
			}
			var toB, toA nuSent
			toB.sendN(t, alpha, aid, "a", 3)
			toA.sendN(t, beta, bid, "b", 3)
			nuEventually(t, "each sees the other paused", func() bool {
				return alpha.conn(t, aid).RemoteStatus == tether.StatusPaused && beta.conn(t, bid).RemoteStatus == tether.StatusPaused
			})
			if _, err := alpha.Activate(ctx, aid); err != nil {
				t.Fatal(err)
			}
			// beta is paused: it takes only notices that lead alpha's queue,
			// and alpha's activate notice is behind alpha's queued data, so
			// beta need not learn of it yet. Nothing may flow either way.
			time.Sleep(700 * time.Millisecond)
			if alpha.recv.count(aid) != 0 || beta.recv.count(bid) != 0 {
				t.Errorf("messages flowed while beta is paused: alpha got %v, beta got %v", alpha.recv.payloads(aid), beta.recv.payloads(bid))
			}
			if st := alpha.conn(t, aid).RemoteStatus; st != tether.StatusPaused {
				t.Errorf("alpha's RemoteStatus = %q while beta is paused", st)
			}
			if _, err := beta.Activate(ctx, bid); err != nil {
				t.Fatal(err)
			}
			nuEventually(t, "all delivered", func() bool { return alpha.recv.count(aid) >= 3 && beta.recv.count(bid) >= 3 })
			time.Sleep(200 * time.Millisecond)
			alpha.recv.check(t, aid, toA.all())
			beta.recv.check(t, bid, toB.all())
			nuEventually(t, "both remote statuses active", func() bool {
				return nuRemoteActive(alpha.conn(t, aid).RemoteStatus) && nuRemoteActive(beta.conn(t, bid).RemoteStatus)
			})
		})
	}
}

// Deleting while paused (own side, the partner's side, or both) reaches
// the partner.
func TestNewUserDeleteWhilePaused(t *testing.T) {
	for _, topo := range nuTopologies {
		for _, which := range []string{"deleter paused", "partner paused", "both paused"} {
			t.Run(topo.name+"/"+which, func(t *testing.T) {
				w := nuNewWorld(t)
				alpha := w.open("alpha", topo.alphaPublic)
				beta := w.open("beta", topo.betaPub)
				aid, bid := nuConnect(t, alpha, beta)
				ctx := context.Background()
				if which != "partner paused" {
					if _, err := alpha.Pause(ctx, aid); err != nil {
						t.Fatal(err)
					}
					nuEventually(t, "beta sees pause", func() bool { return beta.conn(t, bid).RemoteStatus == tether.StatusPaused })
				}
				if which != "deleter paused" {
					if _, err := beta.Pause(ctx, bid); err != nil {
						t.Fatal(err)
					}
					nuEventually(t, "alpha sees pause", func() bool { return alpha.conn(t, aid).RemoteStatus == tether.StatusPaused })
				}
				var junk nuSent
				junk.sendN(t, alpha, aid, "queued", 5)
				junk.sendN(t, beta, bid, "bqueued", 5)
				if _, err := alpha.Delete(ctx, aid); err != nil {
					t.Fatalf("Delete: %v", err)
				}
				nuEventually(t, "beta learns the deletion", func() bool { return beta.conn(t, bid).Status == tether.StatusDeleted })
				if !beta.hasEvent(t, bid, tether.EventDeleted, tether.ActorRemote, "") {
					t.Errorf("beta lacks a remote deleted event: %+v", beta.events(t, bid))
				}
				if _, err := beta.Send(ctx, bid, []byte("x")); tether.ErrorCode(err) != tether.CodeNotConnected {
					t.Errorf("beta Send after deletion: %v", err)
				}
			})
		}
	}
}

// Pause or delete right after a key rotation, before the peer acknowledged
// the key change.
func TestNewUserLifecycleDuringRotation(t *testing.T) {
	for _, topo := range nuTopologies {
		for _, rotator := range []string{"alpha", "beta"} {
			t.Run(topo.name+"/pause, "+rotator+" rotates", func(t *testing.T) {
				w := nuNewWorld(t)
				alpha := w.open("alpha", topo.alphaPublic)
				beta := w.open("beta", topo.betaPub)
				aid, bid := nuConnect(t, alpha, beta)
				ctx := context.Background()
				rot := alpha
				if rotator == "beta" {
					rot = beta
				}
				var toB, toA nuSent
				toB.sendN(t, alpha, aid, "a-pre", 3)
				toA.sendN(t, beta, bid, "b-pre", 3)
				if err := rot.RotateKey(ctx, 0); err != nil {
					t.Fatal(err)
				}
				if _, err := alpha.Pause(ctx, aid); err != nil {
					t.Fatal(err)
				}
				toB.sendN(t, alpha, aid, "a-mid", 3)
				toA.sendN(t, beta, bid, "b-mid", 3)
				nuEventually(t, "beta sees pause", func() bool { return beta.conn(t, bid).RemoteStatus == tether.StatusPaused })
				if err := rot.RotateKey(ctx, 0); err != nil {
					t.Fatal(err)
				}
				time.Sleep(300 * time.Millisecond)
				if _, err := alpha.Activate(ctx, aid); err != nil {
					t.Fatal(err)
				}
				toB.sendN(t, alpha, aid, "a-post", 3)
				toA.sendN(t, beta, bid, "b-post", 3)
				nuEventually(t, "all delivered", func() bool { return alpha.recv.count(aid) >= 9 && beta.recv.count(bid) >= 9 })
				nuWaitKeys(t, alpha, aid, beta, bid, &toB, &toA)
				time.Sleep(200 * time.Millisecond)
				alpha.recv.check(t, aid, toA.all())
				beta.recv.check(t, bid, toB.all())
			})
			for _, deleter := range []string{"alpha", "beta"} {
				t.Run(topo.name+"/delete by "+deleter+", "+rotator+" rotates", func(t *testing.T) {
					w := nuNewWorld(t)
					alpha := w.open("alpha", topo.alphaPublic)
					beta := w.open("beta", topo.betaPub)
					aid, bid := nuConnect(t, alpha, beta)
					ctx := context.Background()
					rot := alpha
					if rotator == "beta" {
						rot = beta
					}
					d, did, o, oid := alpha, aid, beta, bid
					if deleter == "beta" {
						d, did, o, oid = beta, bid, alpha, aid
					}
					if err := rot.RotateKey(ctx, 0); err != nil {
						t.Fatal(err)
					}
					if _, err := d.Delete(ctx, did); err != nil {
						t.Fatal(err)
					}
					nuEventually(t, "partner learns the deletion", func() bool { return o.conn(t, oid).Status == tether.StatusDeleted })
					// The other connection-independent promise: the node
					// still works for new connections after rotating.
					a2, b2 := nuConnect(t, alpha, beta)
					var s nuSent
					s.sendN(t, alpha, a2, "new", 3)
					nuEventually(t, "new connection delivers", func() bool { return beta.recv.count(b2) >= 3 })
					beta.recv.check(t, b2, s.all())
				})
			}
		}
	}
}

// Activate right after Pause: the partner ends active, with both notices
// applied once, and messages flow.
func TestNewUserActivateRightAfterPause(t *testing.T) {
	for _, topo := range nuTopologies {
		t.Run(topo.name, func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", topo.alphaPublic)
			beta := w.open("beta", topo.betaPub)
			aid, bid := nuConnect(t, alpha, beta)
			ctx := context.Background()
			var toB, toA nuSent
			for i := 1; i <= 5; i++ {
				toB.send(t, alpha, aid, fmt.Sprintf("a-%d", i))
				if _, err := alpha.Pause(ctx, aid); err != nil {
					t.Fatal(err)
				}
				toA.send(t, beta, bid, fmt.Sprintf("b-%d", i))
				if _, err := alpha.Activate(ctx, aid); err != nil {
					t.Fatal(err)
				}
			}
			nuEventually(t, "all delivered", func() bool { return alpha.recv.count(aid) >= 5 && beta.recv.count(bid) >= 5 })
			nuEventually(t, "peer activated 5 times", func() bool {
				return beta.countEvents(t, bid, tether.EventPeerActivated) >= 5
			})
			time.Sleep(300 * time.Millisecond)
			alpha.recv.check(t, aid, toA.all())
			beta.recv.check(t, bid, toB.all())
			if st := beta.conn(t, bid).RemoteStatus; !nuRemoteActive(st) {
				t.Errorf("beta's RemoteStatus = %q after alpha activated", st)
			}
			if p, a := beta.countEvents(t, bid, tether.EventPeerPaused), beta.countEvents(t, bid, tether.EventPeerActivated); p != 5 || a != 5 {
				t.Errorf("beta has %d peer_paused and %d peer_activated events, want 5 and 5", p, a)
			}
		})
	}
}

// Pause and Activate concurrently from both sides: each side's view of
// the other converges to the other's real status.
func TestNewUserConcurrentPauseActivate(t *testing.T) {
	for _, topo := range nuTopologies {
		t.Run(topo.name, func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", topo.alphaPublic)
			beta := w.open("beta", topo.betaPub)
			aid, bid := nuConnect(t, alpha, beta)
			var toB, toA nuSent
			var wg sync.WaitGroup
			toggle := func(n *nuNode, id string, sent *nuSent, seed uint64) {
				defer wg.Done()
				r := rand.New(rand.NewPCG(seed, 1))
				ctx := context.Background()
				for i := 0; i < 30; i++ {
					var err error
					if r.IntN(2) == 0 {
						_, err = n.Pause(ctx, id)
					} else {
						_, err = n.Activate(ctx, id)
					}
					if err != nil && tether.ErrorCode(err) != tether.CodeInvalidTransition {
						t.Errorf("%s: %v", n.name, err)
					}
					sent.send(t, n, id, fmt.Sprintf("%s-%d", n.name, i))
					time.Sleep(time.Duration(r.IntN(5)) * time.Millisecond)
				}
			}
			wg.Add(2)
			go toggle(alpha, aid, &toB, 1)
			go toggle(beta, bid, &toA, 2)
			wg.Wait()
			// Each side's RemoteStatus converges to the other's Status.
			agree := func() bool {
				ac, bc := alpha.conn(t, aid), beta.conn(t, bid)
				ok := func(remote, own tether.Status) bool {
					if own == tether.StatusPaused {
						return remote == tether.StatusPaused
					}
					return nuRemoteActive(remote)
				}
				return ok(ac.RemoteStatus, bc.Status) && ok(bc.RemoteStatus, ac.Status)
			}
			nuEventually(t, "remote statuses agree with the partner's status", agree)
			ctx := context.Background()
			for _, x := range []struct {
				n  *nuNode
				id string
			}{{alpha, aid}, {beta, bid}} {
				if x.n.conn(t, x.id).Status == tether.StatusPaused {
					if _, err := x.n.Activate(ctx, x.id); err != nil {
						t.Fatal(err)
					}
				}
			}
			nuEventually(t, "both active, all delivered", func() bool {
				return alpha.recv.count(aid) >= 30 && beta.recv.count(bid) >= 30
			})
			time.Sleep(200 * time.Millisecond)
			alpha.recv.check(t, aid, toA.all())
			beta.recv.check(t, bid, toB.all())
			nuEventually(t, "remote statuses active", func() bool {
				return nuRemoteActive(alpha.conn(t, aid).RemoteStatus) && nuRemoteActive(beta.conn(t, bid).RemoteStatus)
			})
		})
	}
}

// Pause/Activate/Delete are refused with CodeInvalidTransition when the
// status machine does not allow them, never a silent no-op.
func TestNewUserInvalidTransitions(t *testing.T) {
	w := nuNewWorld(t)
	alpha := w.open("alpha", true)
	beta := w.open("beta", true)
	aid, _ := nuConnect(t, alpha, beta)
	ctx := context.Background()
	if _, err := alpha.Activate(ctx, aid); tether.ErrorCode(err) != tether.CodeInvalidTransition {
		t.Errorf("Activate of active: %v", err)
	}
	if _, err := alpha.Pause(ctx, aid); err != nil {
		t.Fatal(err)
	}
	if _, err := alpha.Pause(ctx, aid); tether.ErrorCode(err) != tether.CodeInvalidTransition {
		t.Errorf("Pause of paused: %v", err)
	}
	if _, err := alpha.Delete(ctx, aid); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(context.Context, string) (*tether.Connection, error){
		"Pause": alpha.Pause, "Activate": alpha.Activate, "Delete": alpha.Delete,
	} {
		if _, err := f(ctx, aid); tether.ErrorCode(err) != tether.CodeInvalidTransition {
			t.Errorf("%s of deleted: %v", name, err)
		}
	}
	if _, err := alpha.RevokePeerKey(ctx, aid, "x"); tether.ErrorCode(err) != tether.CodeInvalidTransition {
		t.Errorf("RevokePeerKey of deleted: %v", err)
	}
	// Pending: Send refused with CodeNotConnected.
	pc, _, err := alpha.Initiate(ctx, tether.InitiateRequest{Destination: beta.Endpoint(), Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "pending"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := alpha.Send(ctx, pc.ID, []byte("x")); tether.ErrorCode(err) != tether.CodeNotConnected {
		t.Errorf("Send on pending: %v", err)
	}
}

// A private side's poll carries all its connections to one endpoint, signed
// with its key: once it signs with its new key, the previous key must no
// longer be accepted on any of them, not only on one.
func TestNewUserPreviousKeyForgottenOnEveryPolledConnection(t *testing.T) {
	for _, rotator := range []string{"private beta", "public alpha"} {
		t.Run(rotator+" rotates", func(t *testing.T) {
			w := nuNewWorld(t)
			alpha := w.open("alpha", true)
			beta := w.open("beta", false)
			const k = 4
			aids, bids := make([]string, k), make([]string, k)
			for i := range k {
				aids[i], bids[i] = nuConnect(t, alpha, beta)
			}
			rot, rid := beta, bids
			if rotator == "public alpha" {
				rot, rid = alpha, aids
			}
			if err := rot.RotateKey(context.Background(), 0); err != nil {
				t.Fatal(err)
			}
			nuEventually(t, "the rotating side signs with its new key everywhere", func() bool {
				for _, id := range rid {
					if rot.conn(t, id).LocalKeyID != rot.Fingerprint() {
						return false
					}
				}
				return true
			})
			// Traffic from alpha to beta only: pulled by beta's polls.
			for round := 0; round < 3; round++ {
				for i := range k {
					if _, err := alpha.Send(context.Background(), aids[i], []byte(fmt.Sprint("m", round))); err != nil {
						t.Fatal(err)
					}
				}
				nuEventually(t, "delivered", func() bool {
					for i := range k {
						if beta.recv.count(bids[i]) < round+1 {
							return false
						}
					}
					return true
				})
			}
			time.Sleep(time.Second)
			for i := range k {
				if why := nuPrevKeys(t, alpha, aids[i], beta, bids[i]); why != "" {
					t.Errorf("connection %d of %d: %s", i+1, k, why)
				}
			}
		})
	}
}
