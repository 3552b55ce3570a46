package tether_test

import (
	"context"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
)

// callCounter counts the Store calls a Node makes, by method. Embedding
// the memstore keeps every optional interface it has.
type callCounter struct {
	*memstore.Store
	mu    sync.Mutex
	calls map[string]int
}

func newCallCounter() *callCounter {
	return &callCounter{Store: memstore.New(), calls: map[string]int{}}
}

func (s *callCounter) count(method string) {
	s.mu.Lock()
	s.calls[method]++
	s.mu.Unlock()
}

// take returns the calls counted since the last take.
func (s *callCounter) take() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.calls
	s.calls = map[string]int{}
	return c
}

func (s *callCounter) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	s.count("GetConnection")
	return s.Store.GetConnection(ctx, id)
}

func (s *callCounter) ListConnections(ctx context.Context, opts tether.ListOptions) ([]*tether.Connection, string, error) {
	s.count("ListConnections")
	return s.Store.ListConnections(ctx, opts)
}

func (s *callCounter) ListOutbox(ctx context.Context, id string, after int64, limit int) ([]tether.Message, error) {
	s.count("ListOutbox")
	return s.Store.ListOutbox(ctx, id, after, limit)
}

func (s *callCounter) InboxCursor(ctx context.Context, id string) (int64, error) {
	s.count("InboxCursor")
	return s.Store.InboxCursor(ctx, id)
}

func (s *callCounter) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	s.count("Lease")
	return s.Store.Lease(ctx, name, holder, now, until)
}

func (s *callCounter) LoadInstance(ctx context.Context) (*tether.Instance, error) {
	s.count("LoadInstance")
	return s.Store.LoadInstance(ctx)
}

func (s *callCounter) PendingOutboxes(ctx context.Context, after string, limit int) ([]string, error) {
	s.count("PendingOutboxes")
	return s.Store.PendingOutboxes(ctx, after, limit)
}

// sharedStore makes a memstore look like a Store several processes share:
// an OutboxWatcher whose notifications are all lost, as when LISTEN/NOTIFY
// drops them. Nodes opened on one sharedStore act as replicas.
type sharedStore struct{ *callCounter }

func (sharedStore) WatchOutbox(ctx context.Context, fn func(string)) error {
	<-ctx.Done()
	return ctx.Err()
}

// cloneConnections adds n copies of connection id to s, with new IDs that
// sort after it: connections to the same peer that never have anything to
// send.
func cloneConnections(t testing.TB, s tether.Store, id string, n int) {
	t.Helper()
	ctx := context.Background()
	c, err := s.GetConnection(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		cp := *c
		suffix := strconv.FormatInt(int64(i), 32)
		cp.ID = id[:len(id)-8] + strings.Repeat("0", 8-len(suffix)) + suffix
		cp.RemoteConnection = cp.ID
		cp.Version = 0
		if err := s.CreateConnection(ctx, &cp); err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
	}
}

// fewestGoroutines samples the goroutine count for a moment and returns
// the lowest: a pass that Run starts now and then may be running at any
// one sample.
func fewestGoroutines() int {
	least := runtime.NumGoroutine()
	for range 20 {
		time.Sleep(10 * time.Millisecond)
		least = min(least, runtime.NumGoroutine())
	}
	return least
}

// idleCost runs a public node holding conns idle connections to a public
// peer and returns the goroutines its Run added and the Store calls it
// made while idle for a second.
func idleCost(t *testing.T, conns int, shared bool) (goroutines int, calls map[string]int) {
	w := newWorld(t)
	cs := newCallCounter()
	var st tether.Store = cs
	if shared {
		st = sharedStore{cs}
	}
	alpha := w.node("alpha", alphaURL, realClock, func(c *tether.Config) {
		c.Store = st
		c.SweepInterval = 100 * time.Millisecond
	})
	beta := w.node("beta", betaURL, realClock)
	aid, _ := connect(t, alpha, beta, betaURL)
	cloneConnections(t, cs.Store, aid, conns-1)
	before := fewestGoroutines()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- alpha.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	time.Sleep(300 * time.Millisecond) // Run's start, and its first passes
	goroutines = fewestGoroutines() - before
	cs.take()
	time.Sleep(time.Second)
	return goroutines, cs.take()
}

// An idle connection costs Run nothing: with 2,000 idle connections it has
// as many goroutines and makes as many Store calls as with 10, and takes
// no lease. On a Store shared by processes the cost is one sweep per
// SweepInterval, not a read per connection.
func TestIdleCostIndependentOfConnections(t *testing.T) {
	for _, shared := range []bool{false, true} {
		t.Run("shared "+strconv.FormatBool(shared), func(t *testing.T) {
			fewG, fewCalls := idleCost(t, 10, shared)
			manyG, manyCalls := idleCost(t, 2000, shared)
			t.Logf("10 connections: %d goroutines, calls %v; 2,000: %d goroutines, calls %v", fewG, fewCalls, manyG, manyCalls)
			if manyG > fewG+2 || manyG > 5 {
				t.Errorf("Run added %d goroutines for 2,000 idle connections, %d for 10", manyG, fewG)
			}
			for _, m := range []string{"GetConnection", "ListOutbox", "Lease", "InboxCursor"} {
				if manyCalls[m] > 0 {
					t.Errorf("idle for a second, Run called %s %d times on 2,000 connections", m, manyCalls[m])
				}
			}
			total := func(c map[string]int) (n int) {
				for _, k := range c {
					n += k
				}
				return n
			}
			// The sweep (10 a second when shared), the handshake
			// follow-up (every 2 s), the key re-read (every second when
			// shared), with room for timing.
			if total(manyCalls) > total(fewCalls)+5 {
				t.Errorf("idle Store calls: %d with 2,000 connections, %d with 10", total(manyCalls), total(fewCalls))
			}
			if shared && manyCalls["PendingOutboxes"] < 5 {
				t.Errorf("a shared Store was swept %d times in a second with a 100 ms interval", manyCalls["PendingOutboxes"])
			}
			if !shared && manyCalls["PendingOutboxes"] > 0 {
				t.Errorf("a single-process Store was swept %d times after Run started", manyCalls["PendingOutboxes"])
			}
		})
	}
}

// A message stored by another process whose notification is lost is
// delivered by the next sweep: it waits at most SweepInterval (plus the
// push), to a public peer and to a private peer's held poll alike. With
// a sweep that never comes, nothing else delivers it.
func TestLostNotificationWaitsForSweep(t *testing.T) {
	const sweep = 300 * time.Millisecond
	for _, private := range []bool{false, true} {
		t.Run("private peer "+strconv.FormatBool(private), func(t *testing.T) {
			for _, every := range []time.Duration{sweep, time.Hour} {
				w := newWorld(t)
				st := sharedStore{newCallCounter()}
				mod := func(c *tether.Config) { c.Store = st; c.SweepInterval = every }
				running1 := w.node("replica1", alphaURL, realClock, mod) // it answers alphaURL
				// replica2 shares replica1's Store, and stores messages
				// without running: only a sweep tells replica1.
				replica2 := w.node("replica2", "", realClock, mod, func(c *tether.Config) { c.Endpoint = alphaURL })
				in := newInbox()
				peerURL := ""
				if !private {
					peerURL = betaURL
				}
				beta := w.node("beta", peerURL, realClock, withReceiver(in))
				var aid string
				if private {
					aid, _ = connect(t, running1, beta, "")
				} else {
					aid, _ = connect(t, running1, beta, betaURL)
				}
				running(t, running1, beta)
				time.Sleep(2 * sweep) // a first sweep, and the poll held
				var worst time.Duration
				for i := range 3 {
					sent := time.Now()
					if _, err := replica2.Send(context.Background(), aid, []byte("m"+strconv.Itoa(i))); err != nil {
						t.Fatal(err)
					}
					if every == time.Hour {
						time.Sleep(3 * sweep)
						if n := in.count(); n != 0 {
							t.Fatalf("without a sweep %d messages arrived: something else noticed them", n)
						}
						break
					}
					in.waitFor(t, i+1)
					worst = max(worst, time.Since(sent))
				}
				if every == sweep {
					t.Logf("sweep every %v: the longest wait was %v", sweep, worst)
					// The bound is the sweep interval; the margin is for
					// the push and a loaded machine.
					if worst > sweep+2*time.Second {
						t.Fatalf("a message whose notification was lost waited %v with a sweep every %v", worst, sweep)
					}
				}
			}
		})
	}
}

// A private side's Run, idle with its poll held, keeps at most two
// goroutines: its own and the poll's.
func TestPrivateRunGoroutines(t *testing.T) {
	w := newWorld(t)
	var held atomic.Int32
	alpha := w.node("alpha", "", realClock, func(c *tether.Config) { c.Endpoint = alphaURL })
	beta := w.node("beta", "", realClock)
	w.net.Listen(alphaURL, handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		if r.Op == tether.OpPoll {
			held.Add(1)
			defer held.Add(-1)
		}
		return alpha.Handle(ctx, r)
	}))
	for range 3 {
		connect(t, alpha, beta, "")
	}
	running(t, alpha)
	before := fewestGoroutines()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- beta.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	eventually(t, "the private side holds a poll", func() bool { return held.Load() == 1 })
	if g := fewestGoroutines() - before; g > 2 {
		t.Fatalf("an idle private Run keeps %d goroutines, want at most 2", g)
	}
}

// Workers are bounded and take turns: connections with one message each
// are not kept waiting until a connection with hundreds queued has sent
// them all. With one worker the turns are exact: every other connection
// has had its turn before the busy one's third batch. With two, no more
// than two pushes are ever in flight.
func TestDeliveryWorkersTakeTurns(t *testing.T) {
	for _, workers := range []int{1, 2} {
		t.Run(strconv.Itoa(workers), func(t *testing.T) { takeTurns(t, workers) })
	}
}

func takeTurns(t *testing.T, workers int) {
	w := newWorld(t)
	var (
		mu             sync.Mutex
		order          []string // connection IDs in the order beta received
		inFlight, most int
	)
	beta := w.node("beta", "", realClock, func(c *tether.Config) {
		c.Endpoint = betaURL
		c.Receiver = tether.ReceiverFunc(func(_ context.Context, m tether.Message) error {
			mu.Lock()
			order = append(order, m.ConnectionID)
			mu.Unlock()
			return nil
		})
	})
	w.net.Listen(betaURL, handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		if r.Op == tether.OpPush {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
			time.Sleep(time.Millisecond) // room for pushes to overlap
		}
		return beta.Handle(ctx, r)
	}))
	const batch = 10
	alpha := w.node("alpha", alphaURL, realClock, func(c *tether.Config) { c.DeliveryWorkers = workers; c.BatchSize = batch })
	const queued, others = 200, 12
	busy, busyPeer := connect(t, alpha, beta, betaURL)
	sendAll(t, alpha, busy, "busy", queued)
	for range others {
		id, _ := connect(t, alpha, beta, betaURL)
		sendAll(t, alpha, id, "one", 1)
	}
	running(t, alpha, beta)
	eventually(t, "every message arrives", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(order) == queued+others
	})
	mu.Lock()
	defer mu.Unlock()
	last, count := 0, 0 // how many of busy's had arrived when the last other one did
	for _, id := range order {
		if id == busyPeer {
			count++
		} else {
			last = count
		}
	}
	t.Logf("the last of %d single messages arrived after %d of %d queued on one connection; at most %d pushes in flight", others, last, queued, most)
	if workers == 1 && last > 2*batch {
		t.Errorf("the connections with one message waited for %d of the busy connection's messages, more than two batches", last)
	}
	if most > workers {
		t.Errorf("%d pushes were in flight with DeliveryWorkers %d", most, workers)
	}
}
