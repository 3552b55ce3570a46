package tether_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// within waits until cond holds, checking every millisecond, and fails the
// test if that takes longer than d.
func within(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %v", what, d)
		}
		time.Sleep(time.Millisecond)
	}
}

// pollWatch wraps a handler and counts the polls it is answering.
func pollWatch(h tether.Handler, inFlight *atomic.Int64) tether.Handler {
	return handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		if r.Op == tether.OpPoll {
			inFlight.Add(1)
			defer inFlight.Add(-1)
		}
		return h.Handle(ctx, r)
	})
}

// heldPollWorld is a public alpha and a private beta on a fake clock that
// never moves, so a poll is only answered because something happened, never
// because its wait ended. polls counts the polls alpha is answering.
func heldPollWorld(t *testing.T) (alpha, beta *peer, bin *inbox, polls *atomic.Int64) {
	w := newWorld(t)
	bin = newInbox()
	polls = new(atomic.Int64)
	alpha = w.node("alpha", "", func(c *tether.Config) { c.Endpoint = alphaURL })
	t.Cleanup(w.net.Listen(alphaURL, pollWatch(alpha, polls)))
	beta = w.node("beta", "", withReceiver(bin))
	return alpha, beta, bin, polls
}

// deliverThenHold sends one message on connection id and waits until it
// arrived and beta's next poll is at alpha: as the clock stands still, that
// poll is held until something is there for it.
func deliverThenHold(t *testing.T, alpha *peer, id string, bin *inbox, polls *atomic.Int64) {
	t.Helper()
	sendAll(t, alpha, id, "first", 1)
	bin.waitFor(t, 1)
	// The poll that brought the message was answered before it arrived:
	// a poll at alpha now is the next one.
	eventually(t, "the next poll reaches alpha", func() bool { return polls.Load() == 1 })
}

// A connection added while a long-poll is held is served at once: the
// private side restarts its poll rather than waiting out the held one.
func TestPollServesAddedConnectionAtOnce(t *testing.T) {
	alpha, beta, bin, polls := heldPollWorld(t)
	first, _ := connect(t, alpha, beta, "")
	running(t, alpha, beta)
	deliverThenHold(t, alpha, first, bin, polls)

	second, bsecond := connect(t, alpha, beta, "")
	sendAll(t, alpha, second, "second", 1)
	within(t, 10*time.Second, "delivery on the new connection", func() bool { return bin.count() == 2 })
	bin.check(t, bsecond, "second", 1)
}

// A connection activated on the private side while a long-poll is held is
// served at once.
func TestPollServesReactivatedConnectionAtOnce(t *testing.T) {
	alpha, beta, bin, polls := heldPollWorld(t)
	first, _ := connect(t, alpha, beta, "")
	second, bsecond := connect(t, alpha, beta, "")
	running(t, alpha, beta)
	ctx := context.Background()
	if _, err := beta.Pause(ctx, bsecond); err != nil {
		t.Fatal(err)
	}
	// The poll after the first message leaves out the paused connection.
	deliverThenHold(t, alpha, first, bin, polls)

	sendAll(t, alpha, second, "second", 1)
	if _, err := beta.Activate(ctx, bsecond); err != nil {
		t.Fatal(err)
	}
	within(t, 10*time.Second, "delivery on the activated connection", func() bool { return bin.count() == 2 })
	bin.check(t, bsecond, "second", 1)
}

// A private side whose peer pauses a connection and activates it again
// resumes delivering at once, not after the Retry-After of the pause. Real
// clock: the pause's Retry-After is 5 minutes, resumption must take less
// than 5 seconds (it takes milliseconds).
func TestPrivateSideResumesWhenPeerActivates(t *testing.T) {
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	alpha := w.node("alpha", "", withReceiver(ain), realClock)
	beta := w.node("beta", "", withReceiver(bin), realClock, func(c *tether.Config) {
		c.Endpoint = betaURL
		c.PausedRetry = 5 * time.Minute
	})
	codes := make(chan tether.Code, 100)
	t.Cleanup(w.net.Listen(betaURL, recorder(beta, codes)))
	aid, bid := connect(t, alpha, beta, betaURL)
	running(t, alpha, beta)
	ctx := context.Background()
	for round := 1; round <= 3; round++ {
		for len(codes) > 0 { // what earlier rounds left
			<-codes
		}
		if _, err := beta.Pause(ctx, bid); err != nil {
			t.Fatal(err)
		}
		// alpha learns of the pause from its notice and holds its message.
		eventually(t, "alpha learns the partner paused", func() bool {
			return alpha.get(t, aid).RemoteStatus == tether.StatusPaused
		})
		if _, err := alpha.Send(ctx, aid, []byte(fmt.Sprintf("a-%d", round))); err != nil {
			t.Fatalf("Send: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
		if n := bin.count(); n != round-1 {
			t.Fatalf("round %d: beta got %d messages while paused", round, n)
		}
		start := time.Now()
		if _, err := beta.Activate(ctx, bid); err != nil {
			t.Fatal(err)
		}
		within(t, 5*time.Second, fmt.Sprintf("round %d: delivery after the peer activated", round), func() bool { return bin.count() == round })
		t.Logf("round %d: delivered %v after Activate", round, time.Since(start))
	}
	bin.check(t, bid, "a", 3)
}

// SECURITY.md 36: a poll naming a connection twice is refused.
func TestPollDuplicateIDsRefused(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	ctx := context.Background()
	resp, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, pollBody(aid, aid)))
	if got := answerCode(resp, err); got != tether.CodeInvalid {
		t.Fatalf("a poll naming a connection twice: code %q (%v), want %q", got, err, tether.CodeInvalid)
	}
	// The same poll naming it once is answered.
	resp, err = alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, pollBody(aid)))
	if got := answerCode(resp, err); got != "" {
		t.Fatalf("a valid poll: code %q (%v)", got, err)
	}
}

// answerCode returns the code of a refusal, signed or not; "" for an
// answer.
func answerCode(resp *tether.Response, err error) tether.Code {
	if err != nil {
		return tether.ErrorCode(err)
	}
	return resp.Code
}

// SECURITY.md 36: a forged poll naming 1,000 connections (or one 1,000
// times) is refused after one signature check and one store read: the one
// that finds the key to check it with.
func TestForgedPollReadsOnce(t *testing.T) {
	w := newWorld(t)
	cs := &countingStore{}
	alpha := w.node("alpha", alphaURL, func(c *tether.Config) { cs.Store = c.Store; c.Store = cs })
	beta, mallory := w.node("beta", ""), w.node("mallory", "")
	aid, _ := connect(t, alpha, beta, "")
	for name, ids := range map[string][]string{
		"1,000 connections":      manyIDs(aid, tether.MaxPollConnections),
		"one connection 1,000 x": repeatID(aid, tether.MaxPollConnections),
	} {
		for signer, req := range map[string]*tether.Request{
			"a key nobody pinned": tether.SignRequest(mallory.Node, alphaURL, tether.OpPoll, aid, pollBody(ids...)),
			"a bad signature":     badSignature(tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, pollBody(ids...))),
		} {
			cs.reads.Store(0)
			_, err := alpha.Handle(context.Background(), req)
			wantCode(t, err, tether.CodeUnauthenticated)
			if got := cs.reads.Load(); got > 1 {
				t.Fatalf("%s, %s: a forged poll made %d store reads, want at most 1", name, signer, got)
			}
		}
	}
}

// badSignature changes the signature of a request's token.
func badSignature(req *tether.Request) *tether.Request {
	auth := []byte(req.Auth)
	i := strings.LastIndexByte(req.Auth, '.') + 5
	if auth[i] == 'A' {
		auth[i] = 'B'
	} else {
		auth[i] = 'A'
	}
	req.Auth = string(auth)
	return req
}

// Per-connection state (caches, waiters, delivery locks, workers) does not
// grow with the connections ever seen: once connections are deleted, on
// either side, it goes back to nothing.
func TestPerConnectionStatePruned(t *testing.T) {
	const conns = 200
	w := newWorld(t)
	ain, bin := newInbox(), newInbox()
	alpha, beta := w.node("alpha", alphaURL, withReceiver(ain)), w.node("beta", "", withReceiver(bin))
	ctx, cancel := context.WithCancel(context.Background())
	var tracked []func() int
	errs := make(chan error, 2)
	for _, p := range []*peer{alpha, beta} {
		run, count := tether.RunTracked(ctx, p.Node)
		tracked = append(tracked, count)
		go func() { errs <- run() }()
	}
	t.Cleanup(func() {
		cancel()
		for range 2 {
			if err := <-errs; !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v", err)
			}
		}
	})
	type pair struct{ a, b string }
	pairs := make([]pair, conns)
	for i := range pairs {
		pairs[i].a, pairs[i].b = connect(t, alpha, beta, "")
		sendAll(t, alpha, pairs[i].a, "a", 1)
		sendAll(t, beta, pairs[i].b, "b", 1)
	}
	bin.waitFor(t, conns)
	ain.waitFor(t, conns)
	if n := tracked[1](); n < conns {
		t.Fatalf("beta tracks %d connections while %d are active: the count misses some", n, conns)
	}
	for i, p := range pairs {
		var err error
		if i%2 == 0 {
			_, err = alpha.Delete(context.Background(), p.a)
		} else {
			_, err = beta.Delete(context.Background(), p.b)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "both sides know every connection is deleted", func() bool {
		for _, p := range pairs {
			if alpha.get(t, p.a).Status != tether.StatusDeleted || beta.get(t, p.b).Status != tether.StatusDeleted {
				return false
			}
		}
		return true
	})
	// Caches of connections gone quiet are swept as time passes.
	eventually(t, "per-connection state is pruned", func() bool {
		w.clock.Advance(time.Minute)
		return tracked[0]() == 0 && tracked[1]() == 0
	})
}

func pollBody(ids ...string) []byte {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = fmt.Sprintf(`{"id":%q,"cursor":0}`, id)
	}
	return []byte(`{"wait_ms":0,"connections":[` + strings.Join(parts, ",") + `]}`)
}

// manyIDs returns first and n-1 other well-formed connection IDs.
func manyIDs(first string, n int) []string {
	ids := []string{first}
	for i := 1; i < n; i++ {
		ids = append(ids, fmt.Sprintf("conn_%026d", i))
	}
	return ids
}

func repeatID(id string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = id
	}
	return ids
}

// countingStore counts the reads made of a Store.
type countingStore struct {
	tether.Store
	reads atomic.Int64
}

func (s *countingStore) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	s.reads.Add(1)
	return s.Store.GetConnection(ctx, id)
}

func (s *countingStore) ListConnections(ctx context.Context, opts tether.ListOptions) ([]*tether.Connection, string, error) {
	s.reads.Add(1)
	return s.Store.ListConnections(ctx, opts)
}

func (s *countingStore) ListOutbox(ctx context.Context, id string, after int64, limit int) ([]tether.Message, error) {
	s.reads.Add(1)
	return s.Store.ListOutbox(ctx, id, after, limit)
}

func (s *countingStore) InboxCursor(ctx context.Context, id string) (int64, error) {
	s.reads.Add(1)
	return s.Store.InboxCursor(ctx, id)
}

func (s *countingStore) ListEvents(ctx context.Context, id string, after int64, limit int) ([]tether.Event, error) {
	s.reads.Add(1)
	return s.Store.ListEvents(ctx, id, after, limit)
}
