package tether_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/wire"
	"github.com/tetherkit/tether/memstore"
)

// A key rotation while a connection is paused releases nothing sent after
// the pause: the key change waits for Activate, then follows the held data.
func TestAdv3RotateWhilePausedLeaksHeldData(t *testing.T) {
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	alpha := w.node("alpha", alphaURL, withReceiver(ain), realClock)
	beta := w.node("beta", betaURL, withReceiver(bin), realClock)
	aid, bid := connect(t, alpha, beta, betaURL)
	running(t, alpha, beta)
	ctx := context.Background()

	if _, err := alpha.Pause(ctx, aid); err != nil {
		t.Fatal(err)
	}
	eventually(t, "beta learns alpha paused", func() bool {
		return beta.get(t, bid).RemoteStatus == tether.StatusPaused
	})
	if _, err := alpha.Send(ctx, aid, []byte("sent-while-paused")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if bin.count() != 0 {
		t.Fatalf("delivered while paused before any rotation: %d", bin.count())
	}
	old := alpha.Fingerprint()
	if err := alpha.RotateKey(ctx, time.Hour); err != nil {
		t.Fatal(err)
	}
	// The key change waits while the connection is held.
	time.Sleep(300 * time.Millisecond)
	if alpha.get(t, aid).Status != tether.StatusPaused {
		t.Fatal("alpha is no longer paused")
	}
	if n := bin.count(); n != 0 {
		t.Fatalf("alpha is paused, yet beta's Receiver got %d message(s) sent after the pause: the rekey notice released them", n)
	}
	// Activated, the held message goes, then the key change.
	if _, err := alpha.Activate(ctx, aid); err != nil {
		t.Fatal(err)
	}
	bin.waitFor(t, 1)
	eventually(t, "beta follows alpha's key change", func() bool {
		return tether.KeyID(beta.get(t, bid).RemoteKey) == alpha.Fingerprint() && alpha.Fingerprint() != old
	})
}

// Re-pairing a connection that was paused, then revoked, makes it Active
// and tells the peer, which stops holding its messages.
func TestAdv3RepairAfterPauseStrandsPeer(t *testing.T) {
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	alpha := w.node("alpha", alphaURL, withReceiver(ain), realClock, repairRetry)
	beta := w.node("beta", betaURL, withReceiver(bin), realClock, repairRetry)
	aid, bid := connect(t, alpha, beta, betaURL)
	running(t, alpha, beta)
	ctx := context.Background()

	if _, err := alpha.Pause(ctx, aid); err != nil {
		t.Fatal(err)
	}
	eventually(t, "beta learns alpha paused", func() bool {
		return beta.get(t, bid).RemoteStatus == tether.StatusPaused
	})
	if _, err := alpha.RevokePeerKey(ctx, aid, "laptop stolen"); err != nil {
		t.Fatal(err)
	}
	if err := beta.RotateKey(ctx, 0); err != nil { // the revoked side gets a new key first
		t.Fatal(err)
	}
	_, code, err := alpha.Reauthorize(ctx, aid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	a, b := alpha.get(t, aid), beta.get(t, bid)
	t.Logf("after re-pairing: alpha %s, beta believes alpha is %q", a.Status, b.RemoteStatus)
	sendAll(t, beta, bid, "b", 1)
	deadline := time.Now().Add(2 * time.Second)
	for ain.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	a, b = alpha.get(t, aid), beta.get(t, bid)
	if a.Status == tether.StatusActive && b.RemoteStatus == tether.StatusPaused {
		t.Fatalf("alpha is %s (its admin had paused it) but beta still holds its messages as 'paused by the partner'; alpha received %d of 1", a.Status, ain.count())
	}
}

// deleter is a Receiver that deletes its connection when it receives the
// first message, and counts what it is handed afterwards.
type deleter struct {
	node  atomic.Pointer[tether.Node]
	mu    sync.Mutex
	after int
	done  bool
	got   chan struct{}
}

func (d *deleter) Receive(ctx context.Context, m tether.Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.done {
		d.after++
		return nil
	}
	if _, err := d.node.Load().Delete(ctx, m.ConnectionID); err != nil {
		return err
	}
	d.done = true
	close(d.got)
	return nil
}

// A Receiver that deletes (or pauses) its connection is handed nothing
// more of the batch: nothing is accepted on it any more.
func TestAdv3ReceiverDeleteStillReceivesBatch(t *testing.T) {
	w := newWorld(t)
	rcv := &deleter{got: make(chan struct{})}
	alpha := w.node("alpha", alphaURL, realClock)
	beta := w.node("beta", betaURL, realClock, func(c *tether.Config) { c.Receiver = rcv })
	rcv.node.Store(beta.Node)
	aid, bid := connect(t, alpha, beta, betaURL)
	sendAll(t, alpha, aid, "a", 5) // queued before Run: one batch
	running(t, alpha, beta)
	select {
	case <-rcv.got:
	case <-time.After(30 * time.Second):
		t.Fatal("nothing delivered")
	}
	time.Sleep(200 * time.Millisecond)
	if beta.get(t, bid).Status != tether.StatusDeleted {
		t.Fatal("not deleted")
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if rcv.after != 0 {
		t.Fatalf("the Receiver deleted the connection, then was handed %d more messages on it", rcv.after)
	}
}

// pauseHook is a memstore that runs hook once, the first time Lease is
// called after arm: between the pusher's read of the connection and its
// read of the outbox.
type pauseHook struct {
	*memstore.Store
	armed atomic.Bool
	hook  func()
}

func (s *pauseHook) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	if s.armed.CompareAndSwap(true, false) {
		s.hook()
	}
	return s.Store.Lease(ctx, name, holder, now, until)
}

// A Pause and a Send that both return between the pusher's read of the
// connection and its read of the outbox: the message sent after the pause
// is held. The pusher runs when a connection has work, so a message sent
// before the pause sets it going; that one is delivered.
func TestAdv3PauseDuringPushReadSendsLaterData(t *testing.T) {
	w := newWorld(t)
	bin := newInbox()
	mem := memstore.New()
	hs := &pauseHook{Store: mem}
	alpha := w.node("alpha", "", realClock, func(c *tether.Config) { c.Store = hs; c.LeaseTTL = time.Millisecond })
	alpha.store = mem
	beta := w.node("beta", betaURL, withReceiver(bin), realClock)
	aid, _ := connect(t, alpha, beta, betaURL)
	ctx := context.Background()
	var paused sync.WaitGroup
	paused.Add(1)
	hs.hook = func() {
		defer paused.Done()
		if _, err := alpha.Pause(ctx, aid); err != nil {
			t.Error(err)
		}
		if _, err := alpha.Send(ctx, aid, []byte("after-pause")); err != nil {
			t.Error(err)
		}
	}
	hs.armed.Store(true)
	running(t, alpha, beta)
	if _, err := alpha.Send(ctx, aid, []byte("before-pause")); err != nil {
		t.Fatal(err)
	}
	paused.Wait()
	bin.waitFor(t, 1)
	time.Sleep(300 * time.Millisecond)
	bin.mu.Lock()
	defer bin.mu.Unlock()
	for _, msgs := range bin.got {
		for _, m := range msgs {
			if string(m.Payload) != "before-pause" {
				t.Fatalf("Send returned after Pause returned, yet %q was delivered", m.Payload)
			}
		}
	}
	if bin.total != 1 {
		t.Fatalf("delivered %d messages, want only the one sent before the pause", bin.total)
	}
}

// Re-pairing never trusts the revoked key again: the peer must rotate
// first, and then the same code works.
func TestAdv3RepairRepinsRevokedKey(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL, realClock, repairRetry)
	beta := w.node("beta", betaURL, realClock, repairRetry)
	aid, _ := connect(t, alpha, beta, betaURL)
	ctx := context.Background()
	revoked := alpha.get(t, aid).RemoteKey
	if _, err := alpha.RevokePeerKey(ctx, aid, "laptop stolen"); err != nil {
		t.Fatal(err)
	}
	_, code, err := alpha.Reauthorize(ctx, aid)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("re-pairing with the revoked key: %v, want invalid", err)
	}
	c := alpha.get(t, aid)
	if c.Status != tether.StatusInactive || !c.RemoteKey.Equal(revoked) {
		t.Fatalf("after a refused re-pairing alpha is %s, pinning %s", c.Status, tether.KeyID(c.RemoteKey))
	}
	// With a new key, the same code re-pairs.
	if err := beta.RotateKey(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	if c := alpha.get(t, aid); c.RemoteKey.Equal(revoked) || c.Status != tether.StatusActive {
		t.Fatalf("after re-pairing alpha is %s and trusts %s (revoked: %s)", c.Status, tether.KeyID(c.RemoteKey), tether.KeyID(revoked))
	}
}

// Anyone who saw the original invitation code knows the issuer's instance
// ID and both connection IDs and can mint a re-pairing code naming them
// with a key of its own: an Active connection accepts only a code signed
// with the partner's key.
func TestAdv3ForgedRepairCodeHijacksActiveConnection(t *testing.T) {
	w := newWorld(t)
	ein := newInbox()
	alpha := w.node("alpha", alphaURL, realClock)
	beta := w.node("beta", betaURL, realClock)
	ac, original := alpha.initiate(t, invite(betaURL))
	bc, err := beta.Accept(context.Background(), original, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// Eve read the (used) original code: that is all she needs.
	inv, err := tether.ParseInvitation(original, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if inv.Connection != ac.ID || tether.AcceptorID(inv) != bc.ID {
		t.Fatal("IDs not derivable from the code")
	}
	mem := memstore.New()
	pub, priv, _ := ed25519GenerateKey()
	if err := mem.SaveInstance(ctx, &tether.Instance{ID: inv.Issuer, Keys: []tether.InstanceKey{{ID: tether.KeyID(pub), Private: priv, Created: time.Now()}}}); err != nil {
		t.Fatal(err)
	}
	// Eve's record of "alpha's" side, built from public facts.
	fake := alpha.get(t, ac.ID) // only for the shape of a valid record
	fake.Version, fake.RemoteInstance, fake.RemoteConnection = 0, beta.ID(), bc.ID
	fake.ID = inv.Connection
	if err := mem.CreateConnection(ctx, fake); err != nil {
		t.Fatal(err)
	}
	const eveURL = "https://eve.example/tether"
	eve := w.node("eve", eveURL, realClock, withReceiver(ein), func(c *tether.Config) { c.Store = mem })
	_, forged, err := eve.Reauthorize(ctx, inv.Connection)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := beta.Accept(ctx, forged, tether.AcceptOptions{}); err != nil {
		t.Logf("forged re-pairing code refused: %v", err)
		return
	}
	c := beta.get(t, bc.ID)
	t.Fatalf("a re-pairing code minted by a third party was accepted on an Active connection: beta now pins %s at %s (alpha's key was %s)", tether.KeyID(c.RemoteKey), c.RemoteURL, alpha.Fingerprint())
}

func ed25519GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

// hookStore is a memstore whose GetConnection of one ID, once armed, reads
// the record and then runs hook before returning it: the caller goes on
// with a record read before hook's effects.
type hookStore struct {
	*memstore.Store
	id    string
	armed atomic.Bool
	hook  func()
}

func (s *hookStore) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	c, err := s.Store.GetConnection(ctx, id)
	if id == s.id && s.armed.CompareAndSwap(true, false) {
		s.hook()
	}
	return c, err
}

// signWith signs a request from instance with key priv, as that instance's
// Node does for connection sub at endpoint.
func signWith(t testing.TB, priv ed25519.PrivateKey, instance, endpoint string, op tether.Op, sub string, body []byte, now time.Time) *tether.Request {
	t.Helper()
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	auth, err := wire.SignToken(wire.Key{ID: tether.KeyID(priv.Public().(ed25519.PublicKey)), Private: priv}, wire.Token{
		Instance: instance, Audience: endpoint, Op: string(op), Subject: sub, Body: body, Now: now, Nonce: b64(nonce[:]),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &tether.Request{Op: op, Auth: auth, Body: body}
}

func pushBody(t testing.TB, msgs []tether.Message) []byte {
	t.Helper()
	type wm struct {
		Seq     int64  `json:"seq"`
		Payload []byte `json:"payload"`
		Control bool   `json:"control,omitempty"`
	}
	var body struct {
		Messages []wm `json:"messages"`
	}
	for _, m := range msgs {
		body.Messages = append(body.Messages, wm{m.Seq, m.Payload, m.Control})
	}
	b, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Two requests signed with the previous key race with a key change: the
// previous key is forgotten only once the peer signs with the pinned key,
// so a private side whose acknowledgement was lost is not locked out.
func TestAdv3ConcurrentRequestsDropPreviousKey(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	alpha := w.node("alpha", "")
	mem := memstore.New()
	hs := &hookStore{Store: mem}
	beta := w.node("beta", betaURL, withReceiver(newInbox()), func(c *tether.Config) { c.Store = hs })
	beta.store = mem
	aid, bid := connect(t, alpha, beta, betaURL)
	hs.id = bid
	handle := func(req *tether.Request) (*tether.Response, error) { return beta.Handle(ctx, req) }

	if err := alpha.RotateKey(ctx, time.Hour); err != nil { // K1 -> K2
		t.Fatal(err)
	}
	if err := alpha.RotateKey(ctx, time.Hour); err != nil { // K2 -> K3
		t.Fatal(err)
	}
	inst, err := alpha.store.LoadInstance(ctx)
	if err != nil || len(inst.Keys) != 3 {
		t.Fatalf("keys: %v %v", inst, err)
	}
	k3, k2, k1 := inst.Keys[0].Private, inst.Keys[1].Private, inst.Keys[2].Private
	// alpha's outbox holds the two key change notices. The flow: the
	// first (to K2) is pushed signed with K1 and acknowledged; alpha then
	// signs with K2; the second (to K3) is pushed signed with K2.
	out, err := alpha.store.ListOutbox(ctx, aid, 0, 0)
	if err != nil || len(out) != 2 || !out[0].Control || !out[1].Control {
		t.Fatalf("alpha's outbox: %+v %v", out, err)
	}
	// alpha's outbox was written by two sweeps; the notices it would send
	// are "rekey to K2" then "rekey to K3" (the second sweep re-announced).
	resp, err := handle(signWith(t, k1, alpha.ID(), betaURL, tether.OpPush, bid, pushBody(t, out[:1]), w.clock.Now()))
	if answerCode(resp, err) != "" {
		t.Fatalf("push of the first key change: %v %v", resp, err)
	}
	c := beta.get(t, bid)
	t.Logf("after notice 1: remote %s prev %s", tether.KeyID(c.RemoteKey), tether.KeyID(c.RemotePreviousKey))

	// alpha's poll (signed K2) is authenticated by beta, which reads the
	// connection; meanwhile alpha's push of the second notice (signed K2)
	// is handled whole.
	hs.hook = func() {
		resp, err := handle(signWith(t, k2, alpha.ID(), betaURL, tether.OpPush, bid, pushBody(t, out[1:]), w.clock.Now()))
		if answerCode(resp, err) != "" {
			t.Errorf("push of the second key change: %v %v", resp, err)
		}
	}
	hs.armed.Store(true)
	if resp, err := handle(signWith(t, k2, alpha.ID(), betaURL, tether.OpResume, bid, nil, w.clock.Now())); answerCode(resp, err) != "" {
		t.Fatalf("concurrent request: %v %v", resp, err)
	}
	c = beta.get(t, bid)
	t.Logf("after both: remote %s prev %s (K2 %s, K3 %s)", tether.KeyID(c.RemoteKey), tether.KeyID(c.RemotePreviousKey),
		tether.KeyID(k2.Public().(ed25519.PublicKey)), tether.KeyID(k3.Public().(ed25519.PublicKey)))
	// The push's answer was lost: alpha has not switched to K3 and sends
	// the same push again, signed with K2.
	resp, err = handle(signWith(t, k2, alpha.ID(), betaURL, tether.OpPush, bid, pushBody(t, out[1:]), w.clock.Now()))
	if code := answerCode(resp, err); code != "" {
		t.Fatalf("alpha's retry, signed with K2 which it still uses until the acknowledgement arrives, is refused (%s): alpha can never learn the acknowledgement and never switches", code)
	}
}
