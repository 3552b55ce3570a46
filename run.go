package tether

import (
	"context"
	"strconv"
	"sync"
	"time"
)

// Run delivers messages and completes handshakes until ctx ends, then
// returns ctx's error after every goroutine it started has ended. It
// pushes each connection's outbox to a public peer, long-polls each public
// endpoint this instance (when private) has connections to, polls
// destinations of pending invitations it initiated as a private side, and
// closes expired invitations. Failures are retried with backoff and
// recorded in the connections' Health; they never end Run. Only one Run
// may be active per Node.
func (n *Node) Run(ctx context.Context) error {
	if !n.running.CompareAndSwap(false, true) {
		return &Error{Code: CodeInvalid, Op: "tether: run", Message: "Run is already running on this node"}
	}
	defer n.running.Store(false)
	r := &runner{n: n, ctx: ctx, pushers: map[string]bool{}, pullers: map[string]*puller{}}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		n.pendingLoop(ctx)
	}()
	defer r.wg.Wait()
	if w, ok := n.store.(OutboxWatcher); ok {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			n.watchOutbox(ctx, w)
		}()
	}
	for {
		r.refresh()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-n.changed:
		case <-n.clock.After(rescanInterval):
		}
	}
}

// watchOutbox turns a shared Store's notifications into wake-ups, and
// restarts the watch with backoff when it fails.
func (n *Node) watchOutbox(ctx context.Context, w OutboxWatcher) {
	for attempt := 0; ctx.Err() == nil; attempt++ {
		err := w.WatchOutbox(ctx, n.signal)
		if ctx.Err() != nil {
			return
		}
		n.log.WarnContext(ctx, "tether: watching the store for messages failed; polling meanwhile", "err", err)
		if !n.sleep(ctx, n.backoff(attempt, err), nil) {
			return
		}
	}
}

// rescanInterval is how often Run looks for connections added by other
// replicas sharing the Store.
const rescanInterval = 30 * time.Second

func (n *Node) pendingLoop(ctx context.Context) {
	for {
		if err := n.Sync(ctx); err != nil && ctx.Err() == nil {
			n.log.WarnContext(ctx, "tether: sync pending invitations", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-n.clock.After(n.handshakeEvery):
		}
	}
}

type runner struct {
	n   *Node
	ctx context.Context
	wg  sync.WaitGroup

	mu      sync.Mutex
	pushers map[string]bool    // connection IDs with a running pusher
	pullers map[string]*puller // by endpoint
}

// refresh starts the workers the stored connections need.
func (r *runner) refresh() {
	n := r.n
	for _, status := range []Status{StatusActive, StatusPaused, StatusInactive} {
		opts := ListOptions{Status: status, Kind: KindPeer, Limit: MaxPageSize}
		for {
			conns, next, err := n.store.ListConnections(r.ctx, opts)
			if err != nil {
				if r.ctx.Err() == nil {
					n.log.WarnContext(r.ctx, "tether: list connections", "err", err)
				}
				return
			}
			for _, c := range conns {
				r.ensure(c)
			}
			if next == "" {
				break
			}
			opts.After = next
		}
	}
}

func (r *runner) ensure(c *Connection) {
	if c.RemoteURL == "" {
		return // the peer is private: it calls this side
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.pushers[c.ID] {
		r.pushers[c.ID] = true
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.n.pushLoop(r.ctx, c.ID)
			r.mu.Lock()
			delete(r.pushers, c.ID)
			r.mu.Unlock()
		}()
	}
	if r.n.endpoint != "" {
		return
	}
	// One long-poll per endpoint (and peer key) carries up to
	// MaxPollConnections connections; more take a second, and so on.
	base := c.RemoteURL + " " + KeyID(c.RemoteKey) + " "
	for k := 0; ; k++ {
		p := r.pullers[base+strconv.Itoa(k)]
		if p == nil {
			break
		}
		if p.has(c.ID) {
			return
		}
	}
	for k := 0; ; k++ {
		key := base + strconv.Itoa(k)
		p := r.pullers[key]
		if p == nil {
			p = &puller{endpoint: c.RemoteURL, ids: map[string]bool{}, changed: make(chan struct{}, 1)}
			r.pullers[key] = p
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.n.pullLoop(r.ctx, p)
			}()
		}
		if p.add(c.ID) {
			return
		}
	}
}

// puller is the single long-poll of a private side to one public endpoint.
type puller struct {
	endpoint string
	mu       sync.Mutex
	ids      map[string]bool
	changed  chan struct{}
}

// add adds id unless the puller carries MaxPollConnections already, and
// reports whether it carries id now.
func (p *puller) add(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ids[id] {
		return true
	}
	if len(p.ids) >= MaxPollConnections {
		return false
	}
	p.ids[id] = true
	select {
	case p.changed <- struct{}{}:
	default:
	}
	return true
}

func (p *puller) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ids[id]
}

func (p *puller) snapshot() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.ids))
	for id := range p.ids {
		out = append(out, id)
	}
	return out
}

func (p *puller) remove(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.ids, id)
}

// sleep waits d, or until wake is closed or ctx ends; it reports whether ctx
// is still alive.
func (n *Node) sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-n.clock.After(d):
	}
	return ctx.Err() == nil
}

// idleRecheck bounds how long a worker waits without a signal before it
// looks at the Store again when other processes share it, or while another
// process holds a lease it waits for.
const idleRecheck = time.Second

// idle waits for a signal, ctx's end, or, on a shared Store, the next
// re-read; it reports whether ctx is still alive.
func (n *Node) idle(ctx context.Context, wake <-chan struct{}) bool {
	select {
	case <-ctx.Done():
		return false
	case <-wake:
	case <-n.recheck():
	}
	return ctx.Err() == nil
}

// recheck returns a channel that fires when a waiter should re-read the
// Store even without a signal: every second when the Store is shared with
// other processes, never otherwise.
func (n *Node) recheck() <-chan time.Time {
	if !n.shared {
		return nil
	}
	return n.clock.After(idleRecheck)
}
