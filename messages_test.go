package tether_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/tethertest"
)

// inbox is a Receiver that records what it got per connection and can be
// told to fail.
type inbox struct {
	mu     sync.Mutex
	got    map[string][]tether.Message
	total  int
	notify chan struct{}
	fail   func(m tether.Message) error
}

func newInbox() *inbox {
	return &inbox{got: map[string][]tether.Message{}, notify: make(chan struct{}, 1)}
}

func (in *inbox) Receive(_ context.Context, m tether.Message) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.fail != nil {
		if err := in.fail(m); err != nil {
			return err
		}
	}
	in.got[m.ConnectionID] = append(in.got[m.ConnectionID], m)
	in.total++
	select {
	case in.notify <- struct{}{}:
	default:
	}
	return nil
}

func (in *inbox) count() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.total
}

// waitFor waits until the inbox holds n messages; the deadline only guards
// against a hung test.
func (in *inbox) waitFor(t testing.TB, n int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for in.count() < n {
		select {
		case <-in.notify:
		case <-deadline:
			t.Fatalf("received %d messages, want %d", in.count(), n)
		}
	}
}

// check asserts connection id received exactly payloads 1..n of prefix, once
// each and in order.
func (in *inbox) check(t testing.TB, id, prefix string, n int) {
	t.Helper()
	in.mu.Lock()
	defer in.mu.Unlock()
	got := in.got[id]
	if len(got) != n {
		t.Fatalf("%s received %d messages, want %d", id, len(got), n)
	}
	prev := int64(0)
	for i, m := range got {
		// Numbers increase; lifecycle notices take some, which the
		// Receiver never sees.
		if want := fmt.Sprintf("%s-%d", prefix, i+1); m.Seq <= prev || string(m.Payload) != want {
			t.Fatalf("%s message %d: seq %d payload %q, want seq above %d, payload %q", id, i, m.Seq, m.Payload, prev, want)
		}
		prev = m.Seq
	}
}

// running starts Run on each node and returns a function that stops them
// and checks Run returned context.Canceled.
func running(t testing.TB, nodes ...*peer) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, len(nodes))
	for _, n := range nodes {
		go func() { errs <- n.Run(ctx) }()
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		for range nodes {
			if err := <-errs; !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v", err)
			}
		}
	}
	t.Cleanup(stop)
	return stop
}

// eventually waits until cond holds, checking every millisecond; the
// deadline only guards against a hung test.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// connect makes a connection from a to b and returns both sides' IDs.
func connect(t testing.TB, a, b *peer, dest string) (string, string) {
	t.Helper()
	ac, code := a.initiate(t, invite(dest))
	bc, err := b.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if a.Endpoint() == "" {
		if err := a.Sync(context.Background()); err != nil {
			t.Fatalf("Sync: %v", err)
		}
	}
	return ac.ID, bc.ID
}

func withReceiver(in *inbox) func(*tether.Config) {
	return func(c *tether.Config) { c.Receiver = in }
}

func realClock(c *tether.Config) {
	c.Clock = nil
	c.RetryBase, c.RetryMax = time.Millisecond, 20*time.Millisecond
}

func sendAll(t testing.TB, p *peer, id, prefix string, n int) {
	t.Helper()
	last := int64(0)
	for i := 1; i <= n; i++ {
		seq, err := p.Send(context.Background(), id, []byte(fmt.Sprintf("%s-%d", prefix, i)))
		if err != nil {
			t.Fatalf("Send: %v", err)
		}
		if seq <= last {
			t.Fatalf("Send returned seq %d after %d", seq, last)
		}
		last = seq
	}
}

func TestMessagesBothWays(t *testing.T) {
	for _, topo := range []struct{ name, alpha, beta, dest string }{
		{"public and private", alphaURL, "", ""},
		{"private initiator and public", "", betaURL, betaURL},
		{"both public", alphaURL, betaURL, betaURL},
	} {
		t.Run(topo.name, func(t *testing.T) {
			w := newWorld(t)
			ain, bin := newInbox(), newInbox()
			alpha, beta := w.node("alpha", topo.alpha, withReceiver(ain)), w.node("beta", topo.beta, withReceiver(bin))
			aid, bid := connect(t, alpha, beta, topo.dest)
			// Messages sent before Run starts wait in the outbox.
			sendAll(t, alpha, aid, "a", 30)
			stop := running(t, alpha, beta)
			sendAll(t, beta, bid, "b", 1200)
			bin.waitFor(t, 30)
			ain.waitFor(t, 1200)
			// Acknowledgements follow delivery: the outboxes drain.
			eventually(t, "outboxes drain", func() bool {
				a, _ := alpha.store.ListOutbox(context.Background(), aid, 0, 0)
				b, _ := beta.store.ListOutbox(context.Background(), bid, 0, 0)
				return len(a)+len(b) == 0
			})
			stop()
			bin.check(t, bid, "a", 30)
			ain.check(t, aid, "b", 1200)
			for endpoint := range w.net.Served() {
				if endpoint != topo.alpha && endpoint != topo.beta || endpoint == "" {
					t.Fatalf("a request reached %q: only public sides may be called (%v)", endpoint, w.net.Served())
				}
			}
			h := alpha.get(t, aid).Health
			if h.LastContact.IsZero() || h.Failures != 0 {
				t.Fatalf("health after delivery: %+v", h)
			}
		})
	}
}

func TestSendRules(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL, func(c *tether.Config) { c.MaxPayload = 16 })
	beta := w.node("beta", "")
	ctx := context.Background()
	pending, _ := alpha.initiate(t, invite(""))
	_, err := alpha.Send(ctx, pending.ID, []byte("hi"))
	if !errors.Is(err, tether.ErrNotConnected) {
		t.Fatalf("Send on pending: %v", err)
	}
	aid, _ := connect(t, alpha, beta, "")
	_, err = alpha.Send(ctx, aid, make([]byte, 17))
	if !errors.Is(err, tether.ErrTooLarge) || !strings.Contains(err.Error(), "16 bytes") {
		t.Fatalf("Send over the limit: %v", err)
	}
	if _, err := alpha.Send(ctx, aid, make([]byte, 16)); err != nil {
		t.Fatalf("Send at the limit: %v", err)
	}
	if _, err := alpha.Pause(ctx, aid); err != nil {
		t.Fatal(err)
	}
	// The pause notice took number 2.
	if seq, err := alpha.Send(ctx, aid, []byte("queued")); err != nil || seq != 3 {
		t.Fatalf("Send on paused: %d, %v; want 3, nil", seq, err)
	}
	if _, err := alpha.Delete(ctx, aid); err != nil {
		t.Fatal(err)
	}
	_, err = alpha.Send(ctx, aid, []byte("late"))
	wantCode(t, err, tether.CodeNotConnected)
	_, err = alpha.Send(ctx, "conn_00000000000000000000000000", []byte("x"))
	wantCode(t, err, tether.CodeNotFound)
}

// recorder wraps a handler and reports every answer's error code.
func recorder(h tether.Handler, codes chan<- tether.Code) tether.Handler {
	return handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		resp, err := h.Handle(ctx, r)
		if r.Op == tether.OpPush {
			code := tether.ErrorCode(err)
			if resp != nil && resp.Code != "" { // a signed refusal
				code = resp.Code
			}
			select {
			case codes <- code:
			default:
			}
		}
		return resp, err
	})
}

// Pausing one side queues on both sides; activating lets everything flow,
// none lost.
func TestPauseQueuesBothSides(t *testing.T) {
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	alpha := w.node("alpha", "", withReceiver(ain), realClock)
	beta := w.node("beta", "", withReceiver(bin), realClock, func(c *tether.Config) { c.Endpoint = betaURL })
	codes := make(chan tether.Code, 100)
	w.t.Cleanup(w.net.Listen(betaURL, recorder(beta, codes)))
	aid, bid := connect(t, alpha, beta, betaURL)
	ctx := context.Background()
	running(t, alpha, beta)

	if _, err := beta.Pause(ctx, bid); err != nil {
		t.Fatal(err)
	}
	// The pause notice reaches alpha, which records it and holds its
	// messages instead of retrying against refusals.
	eventually(t, "alpha learns the partner paused", func() bool {
		return alpha.get(t, aid).RemoteStatus == tether.StatusPaused
	})
	evs, err := alpha.Events(ctx, aid, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if e := evs[len(evs)-1]; e.Type != tether.EventPeerPaused || e.Actor != tether.ActorRemote || e.Detail != "paused by the partner" {
		t.Fatalf("alpha's last event: %+v", e)
	}
	sendAll(t, alpha, aid, "a", 5)
	sendAll(t, beta, bid, "b", 5)
	time.Sleep(300 * time.Millisecond)
	if ain.count() != 0 || bin.count() != 0 {
		t.Fatalf("delivered while paused: alpha got %d, beta got %d", ain.count(), bin.count())
	}
	for _, q := range []struct {
		p  *peer
		id string
	}{{alpha, aid}, {beta, bid}} {
		msgs, _ := q.p.store.ListOutbox(ctx, q.id, 0, 0)
		data := 0
		for _, m := range msgs {
			if !m.Control {
				data++
			}
		}
		if data != 5 {
			t.Fatalf("%s holds %d queued messages, want 5", q.p.name, data)
		}
	}
	if h := alpha.get(t, aid).Health; h.Failures != 0 {
		t.Fatalf("a pause counted as a failure: %+v", h)
	}

	if _, err := beta.Activate(ctx, bid); err != nil {
		t.Fatal(err)
	}
	ain.waitFor(t, 5)
	bin.waitFor(t, 5)
	ain.check(t, aid, "b", 5)
	bin.check(t, bid, "a", 5)
}

// Deleting tells the peer, which stops and keeps its history.
func TestDeleteReachesPeer(t *testing.T) {
	for _, topo := range []struct{ name, alpha, beta, dest string }{
		{"peer private", alphaURL, "", ""},
		{"peer public", alphaURL, betaURL, betaURL},
	} {
		t.Run(topo.name, func(t *testing.T) {
			w := newWorld(t)
			bin := newInbox()
			deleted := make(chan tether.Event, 1)
			alpha := w.node("alpha", topo.alpha)
			beta := w.node("beta", topo.beta, withReceiver(bin), func(c *tether.Config) {
				c.OnEvent = func(e tether.Event) {
					if e.Type == tether.EventDeleted {
						deleted <- e
					}
				}
			})
			aid, bid := connect(t, alpha, beta, topo.dest)
			stop := running(t, alpha, beta)
			sendAll(t, alpha, aid, "a", 3)
			bin.waitFor(t, 3)
			if _, err := alpha.Delete(context.Background(), aid); err != nil {
				t.Fatal(err)
			}
			select {
			case e := <-deleted:
				if e.ConnectionID != bid || e.Actor != tether.ActorRemote {
					t.Fatalf("deletion event %+v", e)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the peer never learned of the deletion")
			}
			stop()
			if got := beta.get(t, bid).Status; got != tether.StatusDeleted {
				t.Fatalf("peer's connection is %s", got)
			}
			types := eventTypes(t, beta, bid)
			if last := types[len(types)-1]; last != tether.EventDeleted {
				t.Fatalf("peer's last event %s, want deleted", last)
			}
			evs, _ := beta.Events(context.Background(), bid, 0, 0)
			if a := evs[len(evs)-1].Actor; a != tether.ActorRemote {
				t.Fatalf("deletion recorded with actor %q, want remote", a)
			}
			_, err := beta.Send(context.Background(), bid, []byte("after"))
			wantCode(t, err, tether.CodeNotConnected)
		})
	}
}

// A receiver error leaves the message queued; it is redelivered, and never
// handed over twice once accepted.
func TestReceiverErrorRedelivers(t *testing.T) {
	w := newWorld(t)
	bin := newInbox()
	failures := 0
	bin.fail = func(m tether.Message) error {
		if m.Seq == 3 && failures < 2 {
			failures++
			return errors.New("database busy")
		}
		return nil
	}
	alpha := w.node("alpha", alphaURL, realClock)
	beta := w.node("beta", "", withReceiver(bin), realClock)
	aid, bid := connect(t, alpha, beta, "")
	running(t, alpha, beta)
	sendAll(t, alpha, aid, "a", 6)
	bin.waitFor(t, 6)
	bin.check(t, bid, "a", 6)
	if failures != 2 {
		t.Fatalf("receiver failed %d times, want 2", failures)
	}
}

// SECURITY.md 23: drops, lost answers, duplicates, delays, reordered stale
// copies and a partition; every message arrives once and in order.
func TestDeliveryUnderFaults(t *testing.T) {
	const perConn = 2500 // 4 connections: 10,000 messages each way
	w := newWorld(t)
	w.net.SetClock(realClockOnly{})
	defer w.net.Close()
	hubIn, privIn, pubIn := newInbox(), newInbox(), newInbox()
	small := func(c *tether.Config) { c.BatchSize = 10 }
	hub := w.node("hub", alphaURL, withReceiver(hubIn), realClock, small)
	private := w.node("private", "", withReceiver(privIn), realClock, small)
	public := w.node("public", betaURL, withReceiver(pubIn), realClock, small)

	type pair struct {
		a, b   *peer
		ai, bi string
	}
	var pairs []pair
	for range 2 {
		a, b := connect(t, hub, private, "")
		pairs = append(pairs, pair{hub, private, a, b})
		a, b = connect(t, public, hub, alphaURL)
		pairs = append(pairs, pair{public, hub, a, b})
	}
	random := tethertest.RandomFaultsLate(42, 0.1, 0.1, 0.1, 0.1, time.Millisecond)
	var mu sync.Mutex
	requests := 0
	w.net.Faults(func(from, to string, r *tether.Request) tethertest.Fault {
		mu.Lock()
		requests++
		n := requests
		mu.Unlock()
		if n >= 500 && n < 600 && from == "private" {
			return tethertest.Fault{Drop: true} // a partition of the private side
		}
		return random(from, to, r)
	})
	running(t, hub, private, public)
	var wg sync.WaitGroup
	for i, p := range pairs {
		wg.Add(2)
		go func() { defer wg.Done(); sendAll(t, p.a, p.ai, fmt.Sprintf("p%d-ab", i), perConn) }()
		go func() { defer wg.Done(); sendAll(t, p.b, p.bi, fmt.Sprintf("p%d-ba", i), perConn) }()
	}
	wg.Wait()
	hubIn.waitFor(t, 4*perConn)
	privIn.waitFor(t, 2*perConn)
	pubIn.waitFor(t, 2*perConn)
	inboxes := map[*peer]*inbox{hub: hubIn, private: privIn, public: pubIn}
	for i, p := range pairs {
		inboxes[p.b].check(t, p.bi, fmt.Sprintf("p%d-ab", i), perConn)
		inboxes[p.a].check(t, p.ai, fmt.Sprintf("p%d-ba", i), perConn)
	}
	mu.Lock()
	defer mu.Unlock()
	if requests < 600 {
		t.Fatalf("only %d requests: the partition never happened", requests)
	}
	t.Logf("%d requests under faults", requests)
}

type realClockOnly struct{}

func (realClockOnly) Now() time.Time                         { return time.Now() }
func (realClockOnly) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Every goroutine Run starts has ended when it returns.
func TestRunLeavesNoGoroutine(t *testing.T) {
	w := newWorld(t)
	bin := newInbox()
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "", withReceiver(bin))
	aid, _ := connect(t, alpha, beta, "")
	stop := running(t, alpha, beta)
	sendAll(t, alpha, aid, "a", 10)
	bin.waitFor(t, 10)
	stop()
	// Run has waited for its goroutines; one may still be on its way out of
	// its last deferred call, so look again briefly before failing.
	var left string
	for range 100 {
		left = tetherGoroutines()
		if left == "" {
			return
		}
		runtime.Gosched()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("a goroutine outlived Run:\n%s", left)
}

func tetherGoroutines() string {
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "tether.(*Node)") || strings.Contains(g, "tether.(*runner)") {
			return g
		}
	}
	return ""
}

// SECURITY.md 17: a request signed by the peer of connection A but
// addressed to connection B, to a connection that does not exist, or
// signed by a key nobody pinned, is refused, and the answers are the same.
func TestRequestsForOtherConnectionsRefused(t *testing.T) {
	w := newWorld(t)
	ain := newInbox()
	alpha := w.node("alpha", alphaURL, withReceiver(ain))
	beta, gamma := w.node("beta", ""), w.node("gamma", "")
	_, bid := connect(t, alpha, beta, "")
	agid, _ := connect(t, alpha, gamma, "")
	abid := beta.get(t, bid).RemoteConnection
	ctx := context.Background()
	push := []byte(`{"messages":[{"seq":1,"payload":"aGk="}]}`)
	poll := func(ids ...string) []byte {
		var parts []string
		for _, id := range ids {
			parts = append(parts, fmt.Sprintf(`{"id":%q,"cursor":0}`, id))
		}
		return []byte(`{"wait_ms":0,"connections":[` + strings.Join(parts, ",") + `]}`)
	}
	mallory := w.node("mallory", "")
	var answers []string
	for _, req := range map[string]*tether.Request{
		"push addressed to another connection":     tether.SignRequest(beta.Node, alphaURL, tether.OpPush, agid, push),
		"push to a connection that does not exist": tether.SignRequest(beta.Node, alphaURL, tether.OpPush, "conn_00000000000000000000000009", push),
		"push signed by a key nobody pinned":       tether.SignRequest(mallory.Node, alphaURL, tether.OpPush, abid, push),
		"poll naming another connection":           tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, "", poll(abid, agid)),
		"poll naming only another connection":      tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, "", poll(agid)),
		"poll naming no such connection":           tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, "", poll("conn_00000000000000000000000009")),
		"close of another connection":              tether.SignRequest(beta.Node, alphaURL, tether.OpClose, agid, []byte("{}")),
	} {
		_, err := alpha.Handle(ctx, req)
		wantCode(t, err, tether.CodeUnauthenticated)
		answers = append(answers, err.Error())
	}
	for _, a := range answers {
		// The op differs between push, poll and close; the rest may not.
		if op, ok := strings.CutSuffix(a, ": request refused"); !ok || !strings.HasPrefix(op, "tether: handle ") || strings.Contains(op[len("tether: handle "):], " ") {
			t.Fatalf("answer %q reveals more than a refusal", a)
		}
	}
	if ain.count() != 0 {
		t.Fatal("a refused request delivered a message")
	}
	if got := alpha.get(t, agid).Status; got != tether.StatusActive {
		t.Fatalf("gamma's connection is %s after beta's close request", got)
	}
	// The same request addressed correctly goes through.
	if _, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPush, abid, push)); err != nil {
		t.Fatalf("a correct request: %v", err)
	}
}

// SECURITY.md 25: backoff has jitter and never undercuts Retry-After.
func TestBackoff(t *testing.T) {
	w := newWorld(t)
	n := w.node("alpha", alphaURL, func(c *tether.Config) { c.RetryBase, c.RetryMax = 100*time.Millisecond, 10*time.Second })
	seen := map[time.Duration]bool{}
	lo, hi := time.Hour, time.Duration(0)
	for range 1000 {
		d := tether.Backoff(n.Node, 3, errors.New("x"))
		seen[d] = true
		lo, hi = min(lo, d), max(hi, d)
		if d < 0 || d > 800*time.Millisecond {
			t.Fatalf("attempt 3 waited %v, want within [0, 800ms]", d)
		}
	}
	if len(seen) < 900 || lo > 100*time.Millisecond || hi < 700*time.Millisecond {
		t.Fatalf("no full jitter: %d distinct delays in [%v, %v]", len(seen), lo, hi)
	}
	if d := tether.Backoff(n.Node, 40, nil); d > 10*time.Second {
		t.Fatalf("attempt 40 waited %v, more than RetryMax", d)
	}
	busy := &tether.Error{Code: tether.CodeUnavailable, RetryAfter: 30 * time.Second}
	for range 100 {
		if d := tether.Backoff(n.Node, 0, busy); d < 30*time.Second {
			t.Fatalf("waited %v, less than the Retry-After of 30s", d)
		}
	}
}

// A private side with more connections to one endpoint than one poll may
// carry polls them all: none starves.
func TestManyConnectionsToOneEndpoint(t *testing.T) {
	w := newWorld(t)
	bin := newInbox()
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "", withReceiver(bin))
	n := tether.MaxPollConnections + 5
	ids := make([]string, n)
	for i := range n {
		ids[i], _ = connect(t, alpha, beta, "")
	}
	running(t, alpha, beta)
	// One message on every connection: all must arrive.
	for _, id := range ids {
		if _, err := alpha.Send(context.Background(), id, []byte("hi")); err != nil {
			t.Fatal(err)
		}
	}
	bin.waitFor(t, n)
	bin.mu.Lock()
	defer bin.mu.Unlock()
	if len(bin.got) != n {
		t.Fatalf("messages arrived on %d connections, want %d", len(bin.got), n)
	}
}

// A poll carrying the most connections with the largest cursors is not too
// large to be read.
func TestLargestPollFits(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	parts := []string{fmt.Sprintf(`{"id":%q,"cursor":9223372036854775807}`, aid)}
	for i := 1; i < tether.MaxPollConnections; i++ {
		parts = append(parts, fmt.Sprintf(`{"id":"conn_%026d","cursor":9223372036854775807}`, i))
	}
	body := []byte(`{"wait_ms":25000,"connections":[` + strings.Join(parts, ",") + `]}`)
	_, err := alpha.Handle(context.Background(), tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, body))
	// The poll is authentic, and read whole: the other connections do not
	// exist, so it is refused, but not as too large or invalid.
	wantCode(t, err, tether.CodeUnauthenticated)
}
