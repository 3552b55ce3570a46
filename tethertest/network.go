package tethertest

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/tetherkit/tether"
)

// Network is an in-memory network that connects Nodes through the
// tether.Transport interface: public instances Listen on an endpoint URL,
// every instance sends through Transport(name). Nothing is serialized, but
// requests and responses are copied so neither side can alias the other's
// memory. A Response crosses whole, a signed refusal's Code and RetryAfter
// included; of a Handler's error only the code, message and RetryAfter do,
// as over HTTP.
//
// Faults are injected per request by a FaultFunc (Faults, or one of the
// helpers) and by Partition. The network counts what each endpoint served
// and each sender sent, so tests can assert, for instance, that a private
// instance never received a request.
type Network struct {
	mu         sync.Mutex
	hosts      map[string]tether.Handler
	served     map[string]int
	sent       map[string]int
	partitions map[[2]string]bool
	faults     FaultFunc
	clock      tether.Clock   // delays wait on it
	late       sync.WaitGroup // copies still to be delivered late
	closed     chan struct{}
}

// Fault is what happens to one request.
type Fault struct {
	Drop         bool          // the request is lost: the handler never sees it
	DropResponse bool          // the handler runs, the response is lost
	Duplicate    bool          // the handler runs twice; the sender sees the second answer
	Delay        time.Duration // the request waits this long (on the network's clock) before delivery
	// Late, when positive, delivers a copy of the request once more after
	// this long (on the network's clock), behind requests sent later: a
	// stale duplicate, reordered. Its answer is discarded.
	Late time.Duration
}

// FaultFunc decides the fault for one request from sender to endpoint. It
// may be called from many goroutines at once.
type FaultFunc func(from, endpoint string, req *tether.Request) Fault

// NewNetwork returns an empty network without faults.
func NewNetwork() *Network {
	return &Network{
		hosts:      make(map[string]tether.Handler),
		served:     make(map[string]int),
		sent:       make(map[string]int),
		partitions: make(map[[2]string]bool),
		clock:      tether.SystemClock(),
		closed:     make(chan struct{}),
	}
}

// Close drops the late copies still waiting and waits for those being
// delivered. Call it (or defer it) in tests that use Fault.Late.
func (n *Network) Close() {
	n.mu.Lock()
	select {
	case <-n.closed:
	default:
		close(n.closed)
	}
	n.mu.Unlock()
	n.late.Wait()
}

// SetClock makes delays wait on clock instead of real time; nil restores
// real time.
func (n *Network) SetClock(clock tether.Clock) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if clock == nil {
		clock = tether.SystemClock()
	}
	n.clock = clock
}

// Listen serves endpoint with h until the returned function is called.
// Listening twice on one endpoint panics: it is a bug in the test.
func (n *Network) Listen(endpoint string, h tether.Handler) (stop func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.hosts[endpoint]; ok {
		panic("tethertest: endpoint " + endpoint + " is already served")
	}
	n.hosts[endpoint] = h
	return func() {
		n.mu.Lock()
		defer n.mu.Unlock()
		delete(n.hosts, endpoint)
	}
}

// Faults installs f for every later request; nil removes faults.
func (n *Network) Faults(f FaultFunc) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.faults = f
}

// RandomFaults returns a FaultFunc that drops requests with probability
// drop, drops responses with probability dropResponse, duplicates with
// probability dup and delays each request by a uniform duration up to
// maxDelay. The same seed gives the same sequence of decisions.
func RandomFaults(seed uint64, drop, dropResponse, dup float64, maxDelay time.Duration) FaultFunc {
	return RandomFaultsLate(seed, drop, dropResponse, dup, 0, maxDelay)
}

// RandomFaultsLate is RandomFaults that also, with probability late,
// delivers a stale copy of a request again up to 4*maxDelay later
// (Fault.Late), so requests arrive out of order.
func RandomFaultsLate(seed uint64, drop, dropResponse, dup, late float64, maxDelay time.Duration) FaultFunc {
	var mu sync.Mutex
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(string, string, *tether.Request) Fault {
		mu.Lock()
		defer mu.Unlock()
		f := Fault{
			Drop:         r.Float64() < drop,
			DropResponse: r.Float64() < dropResponse,
			Duplicate:    r.Float64() < dup,
		}
		if maxDelay > 0 {
			f.Delay = time.Duration(r.Int64N(int64(maxDelay) + 1))
		}
		if r.Float64() < late {
			f.Late = time.Duration(r.Int64N(4*int64(maxDelay)+1)) + 1
		}
		return f
	}
}

// Partition cuts the link between sender name from and endpoint until Heal.
func (n *Network) Partition(from, endpoint string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.partitions[[2]string{from, endpoint}] = true
}

// Heal restores every partitioned link.
func (n *Network) Heal() {
	n.mu.Lock()
	defer n.mu.Unlock()
	clear(n.partitions)
}

// Served returns how many requests each endpoint's handler received.
func (n *Network) Served() map[string]int {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]int, len(n.served))
	for k, v := range n.served {
		out[k] = v
	}
	return out
}

// Sent returns how many requests the sender named from made.
func (n *Network) Sent(from string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.sent[from]
}

// Transport returns the tether.Transport of the instance named from (any
// label the test chooses; it names the sender for Partition and Sent).
func (n *Network) Transport(from string) tether.Transport { return &transport{net: n, from: from} }

type transport struct {
	net  *Network
	from string
}

func unavailable(msg string) error {
	return &tether.Error{Code: tether.CodeUnavailable, Op: "tethertest: call", Message: msg}
}

// Call implements tether.Transport.
func (t *transport) Call(ctx context.Context, endpoint string, req *tether.Request) (*tether.Response, error) {
	n := t.net
	n.mu.Lock()
	n.sent[t.from]++
	h, ok := n.hosts[endpoint]
	cut := n.partitions[[2]string{t.from, endpoint}]
	faults, clock := n.faults, n.clock
	n.mu.Unlock()
	var f Fault
	if faults != nil {
		f = faults(t.from, endpoint, req)
	}
	if f.Delay > 0 {
		select {
		case <-clock.After(f.Delay):
		case <-ctx.Done():
			return nil, unavailable("request canceled: " + ctx.Err().Error())
		}
	}
	switch {
	case !ok:
		return nil, unavailable("connection refused: nothing listens at " + endpoint)
	case cut:
		return nil, unavailable("network partitioned")
	case f.Drop:
		return nil, unavailable("request lost")
	}
	if f.Late > 0 {
		n.late.Add(1)
		copied := &tether.Request{Op: req.Op, Auth: req.Auth, Body: slices.Clone(req.Body)}
		go func() {
			defer n.late.Done()
			select {
			case <-clock.After(f.Late):
				_, _ = t.deliver(context.Background(), endpoint, h, copied)
			case <-n.closed:
			}
		}()
	}
	resp, err := t.deliver(ctx, endpoint, h, req)
	if f.Duplicate {
		resp, err = t.deliver(ctx, endpoint, h, req)
	}
	if f.DropResponse {
		return nil, unavailable("response lost")
	}
	if err != nil {
		// Only the code and message cross the wire, as over HTTP.
		if e := (*tether.Error)(nil); errors.As(err, &e) {
			return nil, &tether.Error{Code: e.Code, Op: e.Op, Message: e.Message, RetryAfter: e.RetryAfter}
		}
		return nil, &tether.Error{Code: tether.ErrorCode(err), Op: "tethertest: remote", Message: "remote error"}
	}
	if resp == nil {
		return nil, unavailable("no answer")
	}
	// A response crosses whole, refusals included (Code and RetryAfter).
	return &tether.Response{Auth: resp.Auth, Body: slices.Clone(resp.Body), Code: resp.Code, RetryAfter: resp.RetryAfter}, nil
}

func (t *transport) deliver(ctx context.Context, endpoint string, h tether.Handler, req *tether.Request) (*tether.Response, error) {
	t.net.mu.Lock()
	t.net.served[endpoint]++
	t.net.mu.Unlock()
	return h.Handle(ctx, &tether.Request{Op: req.Op, Auth: req.Auth, Body: slices.Clone(req.Body)})
}
