package sqlstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/tethertest"
)

// Node methods called from a Receiver, with its context, while the
// delivery's transaction holds the only connection of a SQLite database,
// and from OnEvent once that transaction has committed.

// Addresses on the tests' in-memory network. Nothing listens at
// reentryGammaURL: an initiator there cannot be reached.
const (
	reentryAlphaURL   = "https://alpha.example/tether"
	reentryBetaURL    = "https://beta.example/tether"
	reentryGammaURL   = "https://gamma.example/tether"
	reentryEpsilonURL = "https://epsilon.example/tether"
)

const (
	// reentryTimeout bounds each call made from a Receiver or OnEvent: a
	// call that waits for the database connection its own goroutine holds
	// would wait for ever, and fails the test instead.
	reentryTimeout = 10 * time.Second
	// reentrySlow is how long such a call may take before it counts as
	// stalled: waiting on something that frees itself only when another
	// wait gives up.
	reentrySlow = 5 * time.Second
	// reentryWait bounds how long a test waits for a delivery.
	reentryWait = 30 * time.Second
)

var errReentryFail = errors.New("the receiver fails this attempt")

type reentryReceiveFunc func(ctx context.Context, m tether.Message) error

// reentryWorld is a receiving node, alpha, on SQLite with one open
// connection, and its partner beta on memstore, on an in-memory network.
// The test sets alpha's Receiver and OnEvent hook once the connections it
// needs exist.
type reentryWorld struct {
	net   *tethertest.Network
	store *sqlstore.Store
	alpha *tether.Node
	beta  *tether.Node

	receive atomic.Pointer[reentryReceiveFunc]
	onEvent atomic.Pointer[func(tether.Event)]
	// fromAlpha gets what beta's Receiver got.
	fromAlpha chan tether.Message

	mu       sync.Mutex
	events   []tether.Event // what alpha's OnEvent got
	canaries []string       // OnEvent calls made while the database was held
}

type reentryOptions struct {
	private bool // alpha has no endpoint: it polls beta
}

func newReentryWorld(t *testing.T, opts reentryOptions) *reentryWorld {
	t.Helper()
	ctx := context.Background()
	db, _ := openSQLite(t) // one open connection
	w := &reentryWorld{
		net:       tethertest.NewNetwork(),
		store:     newStore(t, db, sqlstore.SQLite, testKey(t)),
		fromAlpha: make(chan tether.Message, 256),
	}
	t.Cleanup(w.net.Close)
	// Runs after the nodes' Runs have stopped.
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, c := range w.canaries {
			t.Error(c)
		}
	})
	endpoint := reentryAlphaURL
	if opts.private {
		endpoint = ""
	}
	alpha, err := tether.Open(ctx, tether.Config{
		Store: w.store, Transport: w.net.Transport("alpha"), Endpoint: endpoint,
		Receiver: tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
			f := w.receive.Load()
			if f == nil {
				return errors.New("the test has not set the receiver yet")
			}
			return (*f)(ctx, m)
		}),
		OnEvent:   w.alphaEvent,
		RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	w.alpha = alpha
	if endpoint != "" {
		t.Cleanup(w.net.Listen(endpoint, alpha))
	}
	w.beta = w.open(t, "beta", reentryBetaURL, tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
		select {
		case w.fromAlpha <- m:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}), nil)
	w.run(t, w.beta)
	return w
}

// alphaEvent is alpha's OnEvent. It first reads the event's connection
// with a context of its own: if OnEvent were called while a transaction
// holds the only database connection, that read could not get one and
// would hit its deadline.
func (w *reentryWorld) alphaEvent(e tether.Event) {
	ctx, cancel := context.WithTimeout(context.Background(), reentryTimeout)
	defer cancel()
	start := time.Now()
	_, err := w.alpha.Get(ctx, e.ConnectionID)
	took := time.Since(start)
	w.mu.Lock()
	w.events = append(w.events, e)
	if err != nil || took > reentrySlow {
		w.canaries = append(w.canaries, fmt.Sprintf("OnEvent(%s %q on %s): Get of its connection took %v: %v (OnEvent was called while the database was held, or before the change was stored)", e.Type, e.Detail, e.ConnectionID, took.Round(time.Millisecond), err))
	}
	w.mu.Unlock()
	if err != nil {
		return
	}
	if f := w.onEvent.Load(); f != nil {
		(*f)(e)
	}
}

func (w *reentryWorld) setReceiver(f reentryReceiveFunc) { w.receive.Store(&f) }
func (w *reentryWorld) setOnEvent(f func(tether.Event))  { w.onEvent.Store(&f) }

// eventsOf returns the events alpha's OnEvent got for connection id.
func (w *reentryWorld) eventsOf(id string, typ tether.EventType) []tether.Event {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []tether.Event
	for _, e := range w.events {
		if e.ConnectionID == id && e.Type == typ {
			out = append(out, e)
		}
	}
	return out
}

// open opens a memstore node; endpoint "" makes it private, and a public
// one listens unless its URL is reentryGammaURL.
func (w *reentryWorld) open(t *testing.T, name, endpoint string, r tether.Receiver, onEvent func(tether.Event)) *tether.Node {
	t.Helper()
	n, err := tether.Open(context.Background(), tether.Config{
		Store: memstore.New(), Transport: w.net.Transport(name), Endpoint: endpoint,
		Receiver: r, OnEvent: onEvent,
		RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	if endpoint != "" && endpoint != reentryGammaURL {
		t.Cleanup(w.net.Listen(endpoint, n))
	}
	return n
}

// run runs n until the test ends.
func (w *reentryWorld) run(t *testing.T, n *tether.Node) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; tether.ErrorCode(err) != tether.CodeCanceled {
			t.Errorf("Run ended with %v, want canceled", err)
		}
	})
}

// connect makes an Active connection between alpha and beta and returns
// its ID on each side.
func (w *reentryWorld) connect(t *testing.T) (alphaID, betaID string) {
	t.Helper()
	ctx := context.Background()
	req := tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Alpha", RemoteName: "Beta", Name: "Alpha to Beta"}
	if w.alpha.Endpoint() == "" {
		req.Destination = reentryBetaURL
	}
	c, code, err := w.alpha.Initiate(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	bc, err := w.beta.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if w.alpha.Endpoint() == "" {
		// A private initiator completes the handshake by asking.
		if err := w.alpha.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, got := range []func() (*tether.Connection, error){
		func() (*tether.Connection, error) { return w.alpha.Get(ctx, c.ID) },
		func() (*tether.Connection, error) { return w.beta.Get(ctx, bc.ID) },
	} {
		if c, err := got(); err != nil || c.Status != tether.StatusActive {
			t.Fatalf("after the handshake: %+v, %v", c, err)
		}
	}
	return c.ID, bc.ID
}

// repairCode has beta issue a re-pairing code for its side of a
// connection.
func (w *reentryWorld) repairCode(t *testing.T, betaID string) string {
	t.Helper()
	_, code, err := w.beta.Reauthorize(context.Background(), betaID)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

// send has beta send payload on its side of a connection.
func (w *reentryWorld) send(t *testing.T, betaID, payload string) {
	t.Helper()
	if _, err := w.beta.Send(context.Background(), betaID, []byte(payload)); err != nil {
		t.Fatal(err)
	}
}

// invitationConns returns alpha's connections made from invitation jti.
func (w *reentryWorld) invitationConns(t *testing.T, jti string) []*tether.Connection {
	t.Helper()
	conns, _, err := w.alpha.List(context.Background(), tether.ListOptions{Limit: tether.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	return slices.DeleteFunc(conns, func(c *tether.Connection) bool { return c.Invitation != jti })
}

func reentryInitiate(t *testing.T, n *tether.Node, destination string) (*tether.Connection, string, *tether.Invitation) {
	t.Helper()
	c, code, err := n.Initiate(context.Background(), tether.InitiateRequest{
		Mode: tether.ModeBasic, LocalName: "Initiator", RemoteName: "Acceptor", Name: "An invitation", Destination: destination,
	})
	if err != nil {
		t.Fatal(err)
	}
	inv, err := n.Preview(code)
	if err != nil {
		t.Fatal(err)
	}
	return c, code, inv
}

func reentryReceive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(reentryWait):
		t.Fatalf("%s: nothing after %v", what, reentryWait)
		panic("unreachable")
	}
}

func reentryPayloads(msgs []tether.Message) []string {
	var out []string
	for _, m := range msgs {
		if m.Control {
			out = append(out, "<notice>")
			continue
		}
		out = append(out, string(m.Payload))
	}
	return out
}

// reentryCall is one Node call and the codes it may end with ("" is
// success).
type reentryCall struct {
	name string
	want []tether.Code
	fn   func(ctx context.Context) error
}

type reentryResult struct {
	name    string
	want    []tether.Code
	err     error
	took    time.Duration
	expired bool // its deadline passed
	skipped bool
}

// reentryCallAll makes each call with a deadline of its own under ctx. After a
// call that hit its deadline the others are skipped: they would wait as
// long.
func reentryCallAll(ctx context.Context, calls []reentryCall) []reentryResult {
	out := make([]reentryResult, 0, len(calls))
	stuck := false
	for _, c := range calls {
		if stuck {
			out = append(out, reentryResult{name: c.name, want: c.want, skipped: true})
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, reentryTimeout)
		start := time.Now()
		err := c.fn(cctx)
		r := reentryResult{name: c.name, want: c.want, err: err, took: time.Since(start), expired: cctx.Err() != nil}
		cancel()
		stuck = r.expired
		out = append(out, r)
	}
	return out
}

// reentryCheck fails t for each call that hit its deadline, stalled, or
// ended with a code it should not.
func reentryCheck(t *testing.T, where string, results []reentryResult) {
	t.Helper()
	if len(results) == 0 {
		t.Fatalf("%s: no calls were made", where)
	}
	for _, r := range results {
		code := tether.ErrorCode(r.err)
		t.Logf("%s: %-34s %-18q %v", where, r.name, code, r.took.Round(time.Microsecond))
		switch {
		case r.skipped:
			t.Errorf("%s: %s: not made, an earlier call hit its deadline", where, r.name)
		case r.expired || code == tether.CodeDeadlineExceeded:
			t.Errorf("%s: %s did not return before its deadline (deadlock): %v", where, r.name, r.err)
		case r.took > reentrySlow:
			t.Errorf("%s: %s took %v: it waited on something", where, r.name, r.took)
		case !slices.Contains(r.want, code):
			t.Errorf("%s: %s: %v (code %q), want one of %q", where, r.name, r.err, code, r.want)
		}
	}
}

// reentryProbe is one round of calls of every exported Node method.
type reentryProbe struct {
	n            *tether.Node
	tag          string // tells this round's writes apart
	reply, other string // connections to Send on; other is also paused and so on
	remove       string // a connection to Delete
	inactive     string // a connection an adapter's Transition makes Inactive
	revokeKey    string // a connection whose peer key is revoked, then re-paired
	// repairCode is a re-pairing code from a public peer for one of n's
	// connections; Accept of it ends with repairWant.
	repairCode string
	repairWant tether.Code
	// publicCode is an invitation from an unreachable public initiator;
	// Accept of it ends with publicWant.
	publicCode string
	publicWant tether.Code
	// privateCode is an invitation from a private initiator addressed to
	// n: accepting it needs no network.
	privateCode string
	syncWant    []tether.Code
}

// calls lists the calls of one round, in order; some use what earlier
// ones returned.
func (p reentryProbe) calls() []reentryCall {
	n := p.n
	ok := []tether.Code{""}
	var (
		pending *tether.Connection
		code    string
	)
	want := func(cond bool, format string, args ...any) error {
		if cond {
			return nil
		}
		return fmt.Errorf(format, args...)
	}
	return []reentryCall{
		{"Send (same connection)", ok, func(ctx context.Context) error {
			_, err := n.Send(ctx, p.reply, []byte("reply from "+p.tag))
			return err
		}},
		{"Send (another connection)", ok, func(ctx context.Context) error {
			_, err := n.Send(ctx, p.other, []byte("aside from "+p.tag))
			return err
		}},
		{"Get", ok, func(ctx context.Context) error {
			c, err := n.Get(ctx, p.reply)
			if err != nil {
				return err
			}
			return want(c.Status == tether.StatusActive, "Get: status %s", c.Status)
		}},
		{"List", ok, func(ctx context.Context) error {
			conns, _, err := n.List(ctx, tether.ListOptions{})
			if err != nil {
				return err
			}
			return want(len(conns) >= 3, "List: %d connections", len(conns))
		}},
		{"Events", ok, func(ctx context.Context) error {
			evs, err := n.Events(ctx, p.reply, 0, 0)
			if err != nil {
				return err
			}
			return want(len(evs) > 0, "Events: none")
		}},
		{"Update", ok, func(ctx context.Context) error {
			name := "Renamed from " + p.tag
			c, err := n.Update(ctx, p.reply, tether.Update{Name: &name})
			if err != nil {
				return err
			}
			return want(c.Name == name, "Update: name %q", c.Name)
		}},
		{"Pause", ok, func(ctx context.Context) error { _, err := n.Pause(ctx, p.other); return err }},
		{"Activate", ok, func(ctx context.Context) error { _, err := n.Activate(ctx, p.other); return err }},
		{"Transition auth_lost", ok, func(ctx context.Context) error {
			c, err := n.Transition(ctx, p.inactive, tether.ActionAuthLost, "credentials lost in "+p.tag)
			if err != nil {
				return err
			}
			return want(c.Status == tether.StatusInactive, "Transition: status %s", c.Status)
		}},
		{"Transition refused", []tether.Code{tether.CodeInvalidTransition}, func(ctx context.Context) error {
			_, err := n.Transition(ctx, p.inactive, tether.ActionActivate, "")
			return err
		}},
		{"RevokePeerKey", ok, func(ctx context.Context) error {
			c, err := n.RevokePeerKey(ctx, p.revokeKey, "suspected leak, in "+p.tag)
			if err != nil {
				return err
			}
			return want(c.Status == tether.StatusInactive, "RevokePeerKey: status %s", c.Status)
		}},
		{"Reauthorize", ok, func(ctx context.Context) error {
			_, code, err := n.Reauthorize(ctx, p.revokeKey)
			if err != nil {
				return err
			}
			return want(code != "", "Reauthorize: no code")
		}},
		{"Accept (re-pairing code)", []tether.Code{p.repairWant}, func(ctx context.Context) error {
			_, err := n.Accept(ctx, p.repairCode, tether.AcceptOptions{})
			return err
		}},
		{"Delete", ok, func(ctx context.Context) error { _, err := n.Delete(ctx, p.remove); return err }},
		{"Initiate", ok, func(ctx context.Context) error {
			var err error
			pending, code, err = n.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Alpha", RemoteName: "Other", Name: "Initiated from " + p.tag})
			return err
		}},
		{"Preview", ok, func(context.Context) error {
			if code == "" {
				return errors.New("Initiate gave no code")
			}
			_, err := n.Preview(code)
			return err
		}},
		{"RevokeInvitation", ok, func(ctx context.Context) error {
			if pending == nil {
				return errors.New("Initiate gave no connection")
			}
			c, err := n.RevokeInvitation(ctx, pending.ID)
			if err != nil {
				return err
			}
			return want(c.Status == tether.StatusDeleted, "RevokeInvitation: status %s", c.Status)
		}},
		{"Accept (public initiator)", []tether.Code{p.publicWant}, func(ctx context.Context) error {
			_, err := n.Accept(ctx, p.publicCode, tether.AcceptOptions{})
			return err
		}},
		{"Accept (private initiator)", ok, func(ctx context.Context) error {
			c, err := n.Accept(ctx, p.privateCode, tether.AcceptOptions{})
			if err != nil {
				return err
			}
			return want(c.Status == tether.StatusPending, "Accept: status %s", c.Status)
		}},
		{"RotateKey", ok, func(ctx context.Context) error { return n.RotateKey(ctx, 0) }},
		{"Sync", p.syncWant, func(ctx context.Context) error { return n.Sync(ctx) }},
		{"Handle (no request)", []tether.Code{tether.CodeProtocol}, func(ctx context.Context) error {
			_, err := n.Handle(ctx, nil)
			return err
		}},
		{"Handle (unknown operation)", []tether.Code{tether.CodeProtocol}, func(ctx context.Context) error {
			_, err := n.Handle(ctx, &tether.Request{Op: "junk", Auth: "junk", Body: []byte("{}")})
			return err
		}},
		{"Handle (forged push)", []tether.Code{tether.CodeUnauthenticated}, func(ctx context.Context) error {
			_, err := n.Handle(ctx, &tether.Request{Op: tether.OpPush, Auth: "junk", Body: []byte(`{"messages":[]}`)})
			return err
		}},
		{"Run (already running)", []tether.Code{tether.CodeInvalid}, func(ctx context.Context) error { return n.Run(ctx) }},
		{"ID, Endpoint, Fingerprint, MaxBody", ok, func(context.Context) error {
			return want(n.ID() != "" && n.Endpoint() == reentryAlphaURL && n.Fingerprint() != "" && n.MaxBody() > 0,
				"ID %q, Endpoint %q, Fingerprint %q, MaxBody %d", n.ID(), n.Endpoint(), n.Fingerprint(), n.MaxBody())
		}},
	}
}

// A Receiver calls every exported Node method with its context while the
// delivery's transaction holds the only database connection; then OnEvent,
// called for the Receiver's update once that transaction committed, does
// the same with a context of its own. Every call returns, at once, with
// success or a clear code: Accept of a public initiator's code or of a
// re-pairing code (which would wait on the peer) fails with CodeInvalid in
// the Receiver and stores nothing; Run is already running. The Receiver's
// writes commit: its replies reach the peer, and OnEvent gets its events.
func TestReentryEveryNodeMethod(t *testing.T) {
	ctx := context.Background()
	w := newReentryWorld(t, reentryOptions{})
	w.run(t, w.alpha)
	c1, b1 := w.connect(t)   // the probe arrives here
	c2, b2 := w.connect(t)   // Send on another connection; Pause, Activate
	c3, _ := w.connect(t)    // deleted by the Receiver
	c4, _ := w.connect(t)    // deleted from OnEvent
	c5, _ := w.connect(t)    // made Inactive by the Receiver
	c6, _ := w.connect(t)    // made Inactive from OnEvent
	c7, _ := w.connect(t)    // peer key revoked by the Receiver
	c8, _ := w.connect(t)    // peer key revoked from OnEvent
	c9, b9 := w.connect(t)   // re-paired by beta's code: refused in the Receiver
	c10, b10 := w.connect(t) // re-paired by beta's code from OnEvent
	repairCode1, repairCode2 := w.repairCode(t, b9), w.repairCode(t, b10)
	gamma := w.open(t, "gamma", reentryGammaURL, nil, nil)
	delta := w.open(t, "delta", "", nil, nil)
	_, gammaCode1, gammaInv1 := reentryInitiate(t, gamma, "")
	_, gammaCode2, gammaInv2 := reentryInitiate(t, gamma, "")
	_, deltaCode1, deltaInv1 := reentryInitiate(t, delta, reentryAlphaURL)
	_, deltaCode2, deltaInv2 := reentryInitiate(t, delta, reentryAlphaURL)

	var probed, armed atomic.Bool
	fromReceiver := make(chan []reentryResult, 1)
	fromOnEvent := make(chan []reentryResult, 1)
	premise := make(chan error, 1)
	w.setOnEvent(func(e tether.Event) {
		// The Receiver's update, told after its transaction committed.
		if e.ConnectionID != c1 || e.Type != tether.EventUpdated || !armed.CompareAndSwap(true, false) {
			return
		}
		fromOnEvent <- reentryCallAll(context.Background(), reentryProbe{
			n: w.alpha, tag: "OnEvent", reply: c1, other: c2, remove: c4, inactive: c6, revokeKey: c8,
			repairCode: repairCode2, repairWant: "",
			publicCode: gammaCode2, publicWant: tether.CodeUnavailable, // gamma is unreachable
			privateCode: deltaCode2,
			syncWant:    []tether.Code{"", tether.CodeUnavailable}, // gamma's acceptance cannot be followed up
		}.calls())
	})
	w.setReceiver(func(ctx context.Context, m tether.Message) error {
		if m.ConnectionID != c1 || string(m.Payload) != "probe" || !probed.CompareAndSwap(false, true) {
			return nil
		}
		// The premise: the delivery's transaction holds the only
		// connection, so a call with another context waits for it.
		bctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		_, err := w.alpha.Get(bctx, c1)
		cancel()
		premise <- err
		armed.Store(true)
		fromReceiver <- reentryCallAll(ctx, reentryProbe{
			n: w.alpha, tag: "Receiver", reply: c1, other: c2, remove: c3, inactive: c5, revokeKey: c7,
			repairCode: repairCode1, repairWant: tether.CodeInvalid, // it would wait on beta
			publicCode: gammaCode1, publicWant: tether.CodeInvalid,
			privateCode: deltaCode1,
			// Nothing pending needs the network here (acceptances of
			// private initiators are not followed up): Sync may succeed.
			syncWant: []tether.Code{"", tether.CodeInvalid},
		}.calls())
		return nil
	})
	w.send(t, b1, "probe")

	if err := reentryReceive(t, premise, "the Receiver"); tether.ErrorCode(err) != tether.CodeDeadlineExceeded {
		t.Fatalf("in the Receiver, Get with a context of its own: %v; want it to wait for the connection the transaction holds", err)
	}
	reentryCheck(t, "Receiver", reentryReceive(t, fromReceiver, "the Receiver's calls"))
	reentryCheck(t, "OnEvent", reentryReceive(t, fromOnEvent, "OnEvent's calls"))

	// The Receiver's writes committed, and so did OnEvent's.
	want := map[string]bool{"reply from Receiver": true, "aside from Receiver": true, "reply from OnEvent": true, "aside from OnEvent": true}
	for len(want) > 0 {
		m := reentryReceive(t, w.fromAlpha, fmt.Sprintf("beta waiting for %v", want))
		if m.ConnectionID != b1 && m.ConnectionID != b2 {
			t.Fatalf("beta got %q on %s", m.Payload, m.ConnectionID)
		}
		delete(want, string(m.Payload))
	}
	for _, id := range []string{c3, c4} {
		if c, err := w.alpha.Get(ctx, id); err != nil || c.Status != tether.StatusDeleted {
			t.Errorf("connection deleted in the probe: %+v, %v", c, err)
		}
	}
	if c, err := w.alpha.Get(ctx, c2); err != nil || c.Status != tether.StatusActive {
		t.Errorf("connection paused and activated in the probe: %+v, %v", c, err)
	}
	if got := w.invitationConns(t, gammaInv1.ID); len(got) != 0 {
		t.Errorf("Accept refused in the Receiver left %d connections, first %+v", len(got), got[0])
	}
	if got := w.invitationConns(t, gammaInv2.ID); len(got) != 1 || got[0].Status != tether.StatusPending {
		t.Errorf("Accept of an unreachable initiator from OnEvent: %d connections, want one Pending", len(got))
	}
	for _, inv := range []*tether.Invitation{deltaInv1, deltaInv2} {
		if got := w.invitationConns(t, inv.ID); len(got) != 1 || got[0].Status != tether.StatusPending {
			t.Errorf("Accept of a private initiator: %d connections, want one Pending", len(got))
		}
	}
	for _, id := range []string{c5, c6, c7, c8} {
		if c, err := w.alpha.Get(ctx, id); err != nil || c.Status != tether.StatusInactive {
			t.Errorf("connection made Inactive in the probe: %+v, %v", c, err)
		}
	}
	if c, err := w.alpha.Get(ctx, c10); err != nil || c.Status != tether.StatusActive {
		t.Errorf("connection re-paired from OnEvent: %+v, %v", c, err)
	}
	// The re-pairing the Receiver could not make is still there to make.
	if c, err := w.alpha.Accept(ctx, repairCode1, tether.AcceptOptions{}); err != nil || c.ID != c9 {
		t.Errorf("Accept of the re-pairing code refused in the Receiver, after it: %+v, %v", c, err)
	}
	// OnEvent hears of the commit's events after the commit, maybe after
	// the reply went out.
	deadline := time.Now().Add(5 * time.Second)
	for len(w.eventsOf(c3, tether.EventDeleted)) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond) // a second one would be an error
	if got := w.eventsOf(c3, tether.EventDeleted); len(got) != 1 {
		t.Errorf("OnEvent got %d deletions of the connection the Receiver deleted, want 1", len(got))
	}
}

// A Receiver that Sends a reply and then fails: the reply, and everything
// else it stored, is undone with the message, which is delivered again;
// OnEvent hears nothing of the undone writes. When the Receiver then
// succeeds, its reply is stored once, with the message marked delivered.
func TestReentryReplyAtomic(t *testing.T) {
	ctx := context.Background()
	w := newReentryWorld(t, reentryOptions{})
	// alpha does not Run: its outbox keeps what the Receiver stores.
	c1, b1 := w.connect(t)
	c2, _ := w.connect(t)

	type attempt struct {
		seq                int64
		outbox1, outbox2   []string // what the second attempt sees
		name               string
		status             tether.Status
		err                error
		updatedByFirst     int // EventUpdated in the store, seen by the second attempt
		pausedEventsBefore int
	}
	var count atomic.Int32
	attempts := make(chan attempt, 4)
	w.setReceiver(func(ctx context.Context, m tether.Message) error {
		if m.ConnectionID != c1 {
			return nil
		}
		a := attempt{seq: m.Seq}
		switch count.Add(1) {
		case 1:
			name := "First attempt"
			_, a.err = w.alpha.Send(ctx, c1, []byte("answer"))
			if a.err == nil {
				_, a.err = w.alpha.Send(ctx, c2, []byte("aside"))
			}
			if a.err == nil {
				_, a.err = w.alpha.Update(ctx, c1, tether.Update{Name: &name})
			}
			if a.err == nil {
				_, a.err = w.alpha.Pause(ctx, c2)
			}
			if a.err == nil {
				// Stored in the transaction, as the Receiver sees it.
				msgs, err := w.store.ListOutbox(ctx, c1, 0, 0)
				a.outbox1, a.err = reentryPayloads(msgs), err
			}
			attempts <- a
			return errReentryFail
		case 2:
			// What the first attempt stored is gone.
			msgs, err := w.store.ListOutbox(ctx, c1, 0, 0)
			a.outbox1, a.err = reentryPayloads(msgs), err
			if a.err == nil {
				msgs, a.err = w.store.ListOutbox(ctx, c2, 0, 0)
				a.outbox2 = reentryPayloads(msgs)
			}
			var c *tether.Connection
			if a.err == nil {
				c, a.err = w.alpha.Get(ctx, c1)
			}
			if a.err == nil {
				a.name = c.Name
				c, a.err = w.alpha.Get(ctx, c2)
			}
			if a.err == nil {
				a.status = c.Status
				a.pausedEventsBefore = len(w.eventsOf(c2, tether.EventPaused))
				name := "Second attempt"
				_, a.err = w.alpha.Send(ctx, c1, []byte("answer"))
				if a.err == nil {
					_, a.err = w.alpha.Update(ctx, c1, tether.Update{Name: &name})
				}
			}
			attempts <- a
			return a.err
		}
		select {
		case attempts <- attempt{seq: m.Seq, err: fmt.Errorf("delivered a %d. time", count.Load())}:
		default:
		}
		return nil
	})
	committed := make(chan tether.Event, 4)
	w.setOnEvent(func(e tether.Event) {
		if e.ConnectionID == c1 && e.Type == tether.EventUpdated {
			committed <- e
		}
	})
	w.send(t, b1, "question")

	first := reentryReceive(t, attempts, "the first delivery")
	if first.err != nil {
		t.Fatalf("first attempt: %v", first.err)
	}
	if strings.Join(first.outbox1, ",") != "answer" {
		t.Fatalf("inside the first attempt the outbox holds %q, want the reply", first.outbox1)
	}
	second := reentryReceive(t, attempts, "the second delivery")
	if second.err != nil {
		t.Fatalf("second attempt: %v", second.err)
	}
	if second.seq != first.seq {
		t.Fatalf("redelivered seq %d, want %d", second.seq, first.seq)
	}
	if len(second.outbox1) != 0 || len(second.outbox2) != 0 {
		t.Errorf("after the failed attempt the outboxes hold %q and %q, want both empty: the reply outlived the rollback", second.outbox1, second.outbox2)
	}
	if second.name == "First attempt" || second.status != tether.StatusActive {
		t.Errorf("after the failed attempt: name %q, other connection %s; want the update and the pause undone", second.name, second.status)
	}
	if second.pausedEventsBefore != 0 {
		t.Errorf("OnEvent was told of the failed attempt's pause %d times", second.pausedEventsBefore)
	}
	e := reentryReceive(t, committed, "OnEvent for the second attempt's update")
	if got := w.eventsOf(c1, tether.EventUpdated); len(got) != 1 {
		t.Errorf("OnEvent got %d updates, want only the committed one: %+v", len(got), got)
	}
	if evs := w.eventsOf(c2, tether.EventPaused); len(evs) != 0 {
		t.Errorf("OnEvent was told of the undone pause: %+v", evs)
	}
	if e.Time.IsZero() {
		t.Errorf("event without a time: %+v", e)
	}
	// Committed once, with the cursor.
	msgs, err := w.store.ListOutbox(ctx, c1, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := reentryPayloads(msgs); strings.Join(got, ",") != "answer" {
		t.Errorf("outbox %q, want the reply once", got)
	}
	if msgs, err := w.store.ListOutbox(ctx, c2, 0, 0); err != nil || len(msgs) != 0 {
		t.Errorf("other outbox %q, %v; want it empty", reentryPayloads(msgs), err)
	}
	if cur, err := w.store.InboxCursor(ctx, c1); err != nil || cur != first.seq {
		t.Errorf("inbox cursor %d, %v; want %d", cur, err, first.seq)
	}
	evs, err := w.alpha.Events(ctx, c1, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	updates := 0
	for _, e := range evs {
		if e.Type == tether.EventUpdated {
			updates++
		}
	}
	if c, _ := w.alpha.Get(ctx, c1); updates != 1 || c.Name != "Second attempt" {
		t.Errorf("%d updates stored, name %q; want the second attempt's only", updates, c.Name)
	}
	if n := count.Load(); n != 2 {
		t.Errorf("delivered %d times, want 2", n)
	}
}

// A Receiver that rotates the key and fails: the rotation is undone in
// the store, and the Node must not keep signing with the key it no longer
// has there.
func TestReentryRotateKeyRolledBack(t *testing.T) {
	ctx := context.Background()
	w := newReentryWorld(t, reentryOptions{})
	_, b1 := w.connect(t)
	before := w.alpha.Fingerprint()
	var count atomic.Int32
	done := make(chan error, 2)
	w.setReceiver(func(ctx context.Context, m tether.Message) error {
		if count.Add(1) == 1 {
			if err := w.alpha.RotateKey(ctx, 0); err != nil {
				done <- fmt.Errorf("RotateKey: %w", err)
				return nil
			}
			return errReentryFail
		}
		select {
		case done <- nil: // the redelivery, after the rollback
		default:
		}
		return nil
	})
	w.send(t, b1, "rotate and fail")
	if err := reentryReceive(t, done, "the redelivery"); err != nil {
		t.Fatal(err)
	}
	inst, err := w.store.LoadInstance(ctx) // waits for the redelivery's commit
	if err != nil {
		t.Fatal(err)
	}
	stored := inst.Keys[0].ID
	if stored != before || len(inst.Keys) != 1 {
		t.Fatalf("the store's current key is %s of %d, want %s alone: the rotation was not undone", stored, len(inst.Keys), before)
	}
	if got := w.alpha.Fingerprint(); got != stored {
		t.Errorf("after the Receiver's rotation was rolled back, Fingerprint is %s, the store's current key %s: the node kept a key it never stored", got, stored)
	}
	// What the node signs with now.
	_, _, inv := reentryInitiate(t, w.alpha, "")
	kid := tether.KeyID(inv.Key)
	if !slices.ContainsFunc(inst.Keys, func(k tether.InstanceKey) bool { return k.ID == kid }) {
		t.Errorf("a new invitation is signed with key %s, which is not in the store (a restart or another replica cannot verify it)", kid)
	}
}

// Accept, in a Receiver, of an invitation from a public initiator that is
// addressed to this instance fails with CodeInvalid and must leave no
// trace: after Receive returns, Accept of the same code works.
func TestReentryAcceptAddressedInvitation(t *testing.T) {
	ctx := context.Background()
	w := newReentryWorld(t, reentryOptions{})
	_, b1 := w.connect(t)
	_, code, inv := reentryInitiate(t, w.beta, reentryAlphaURL)
	var once sync.Once
	got := make(chan error, 1)
	w.setReceiver(func(ctx context.Context, m tether.Message) error {
		once.Do(func() {
			_, err := w.alpha.Accept(ctx, code, tether.AcceptOptions{})
			got <- err
		})
		return nil
	})
	w.send(t, b1, "accept this")
	if err := reentryReceive(t, got, "the Receiver's Accept"); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("Accept in a Receiver: %v, want CodeInvalid", err)
	}
	for _, c := range w.invitationConns(t, inv.ID) {
		evs, _ := w.alpha.Events(ctx, c.ID, 0, 0)
		var history []string
		for _, e := range evs {
			history = append(history, string(e.Type)+": "+e.Detail)
		}
		t.Errorf("the refused Accept left connection %s, %s, with events %q", c.ID, c.Status, history)
	}
	c, err := w.alpha.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil || c.Status != tether.StatusActive {
		t.Fatalf("Accept after the Receiver returned: %+v, %v; want Active", c, err)
	}
}

// Sync in a Receiver cannot present a pending acceptance to its public
// initiator: it fails with CodeInvalid, and the acceptance stays Pending,
// as it does when the initiator cannot be reached.
func TestReentrySyncKeepsAcceptance(t *testing.T) {
	ctx := context.Background()
	w := newReentryWorld(t, reentryOptions{})
	_, b1 := w.connect(t)
	gamma := w.open(t, "gamma", reentryGammaURL, nil, nil) // unreachable
	_, code, inv := reentryInitiate(t, gamma, "")
	if _, err := w.alpha.Accept(ctx, code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeUnavailable {
		t.Fatalf("Accept of an unreachable initiator: %v, want CodeUnavailable", err)
	}
	pending := func(when string) {
		t.Helper()
		conns := w.invitationConns(t, inv.ID)
		if len(conns) != 1 || conns[0].Status != tether.StatusPending {
			for _, c := range conns {
				t.Logf("connection %s: %s, health %+v", c.ID, c.Status, c.Health)
			}
			t.Fatalf("%s: %d acceptances, want one Pending", when, len(conns))
		}
	}
	pending("after Accept")
	if err := w.alpha.Sync(ctx); tether.ErrorCode(err) != tether.CodeUnavailable {
		t.Fatalf("Sync outside a Receiver: %v, want CodeUnavailable", err)
	}
	pending("after Sync outside a Receiver")

	var once sync.Once
	got := make(chan error, 1)
	w.setReceiver(func(ctx context.Context, m tether.Message) error {
		once.Do(func() { got <- w.alpha.Sync(ctx) })
		return nil
	})
	w.send(t, b1, "sync now")
	if err := reentryReceive(t, got, "the Receiver's Sync"); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Errorf("Sync in a Receiver: %v, want CodeInvalid", err)
	}
	pending("after Sync in a Receiver")
}

// A private initiator that revokes an invitation tells its destination,
// which may hold an acceptance waiting for it. From a Receiver it must do
// so too, once the delivery's transaction has committed.
func TestReentryRevokeTellsDestination(t *testing.T) {
	ctx := context.Background()
	w := newReentryWorld(t, reentryOptions{private: true})
	_, b1 := w.connect(t)
	deleted := make(chan string, 4)
	epsilon := w.open(t, "epsilon", reentryEpsilonURL, nil, func(e tether.Event) {
		if e.Type == tether.EventDeleted {
			deleted <- e.ConnectionID
		}
	})
	// alpha never learns of epsilon's acceptances: they stay revocable.
	w.net.Faults(func(from, endpoint string, req *tether.Request) tethertest.Fault {
		return tethertest.Fault{Drop: from == "alpha" && endpoint == reentryEpsilonURL && req.Op == tether.OpStatus}
	})
	accepted := func() (string, string) {
		t.Helper()
		c, code, _ := reentryInitiate(t, w.alpha, reentryEpsilonURL)
		ec, err := epsilon.Accept(ctx, code, tether.AcceptOptions{})
		if err != nil || ec.Status != tether.StatusPending {
			t.Fatalf("epsilon accepts: %+v, %v", ec, err)
		}
		return c.ID, ec.ID
	}

	// Outside a Receiver, the destination learns at once.
	control, controlE := accepted()
	if _, err := w.alpha.RevokeInvitation(ctx, control); err != nil {
		t.Fatal(err)
	}
	if c, err := epsilon.Get(ctx, controlE); err != nil || c.Status != tether.StatusDeleted {
		t.Fatalf("control: after RevokeInvitation the destination's acceptance is %+v, %v; want Deleted", c, err)
	}
	if id := <-deleted; id != controlE {
		t.Fatalf("control: deleted %s", id)
	}

	p, e := accepted()
	var once sync.Once
	got := make(chan error, 1)
	w.setReceiver(func(ctx context.Context, m tether.Message) error {
		once.Do(func() {
			_, err := w.alpha.RevokeInvitation(ctx, p)
			got <- err
		})
		return nil
	})
	w.run(t, w.alpha) // polls beta
	w.send(t, b1, "revoke")
	if err := reentryReceive(t, got, "the Receiver's RevokeInvitation"); err != nil {
		t.Fatalf("RevokeInvitation in a Receiver: %v", err)
	}
	select {
	case id := <-deleted:
		if id != e {
			t.Fatalf("deleted %s, want %s", id, e)
		}
	case <-time.After(reentryTimeout):
		c, err := epsilon.Get(ctx, e)
		t.Fatalf("%v after RevokeInvitation in a Receiver committed, the destination's acceptance is still %s (%v): it was never told", reentryTimeout, c.Status, err)
	}
}
