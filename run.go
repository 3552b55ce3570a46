package tether

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"
)

// Run delivers messages and completes handshakes until ctx ends, then,
// after every goroutine it started has ended, returns an *Error with
// CodeCanceled or CodeDeadlineExceeded that wraps ctx's error
// (errors.Is(err, context.Canceled) holds). It
// pushes each connection's outbox to a public peer, long-polls each public
// endpoint this instance (when private) has connections to, polls
// destinations of pending invitations it initiated as a private side, and
// closes expired invitations. Failures are retried with backoff and
// recorded in the connections' Health; they never end Run. Only one Run
// may be active per Node.
//
// An idle connection costs Run nothing: no goroutine, no timer, no store
// read. A bounded pool of workers (Config.DeliveryWorkers) pushes the
// connections that have messages waiting, each in turn; see the package
// documentation, "Delivery", for how work is found.
func (n *Node) Run(ctx context.Context) error {
	return n.run(ctx, newRunner(n))
}

func (n *Node) run(ctx context.Context, r *runner) error {
	if !n.running.CompareAndSwap(false, true) {
		return &Error{Code: CodeInvalid, Op: "tether: run", Message: "Run is already running on this node"}
	}
	defer n.running.Store(false)
	r.ctx = ctx
	n.sched.Store(r)
	defer n.sched.Store(nil)
	defer r.stop(ctx)
	if w, ok := n.store.(OutboxWatcher); ok && n.shared {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			n.watchOutbox(ctx, w)
		}()
	}
	// At start, every connection with messages waiting, deleted ones too:
	// a deletion notice stored before a restart still has to reach the
	// peer.
	r.sweep(ctx)
	if n.endpoint == "" {
		r.refresh(ctx)
	}
	// The handshake follow-up and the key pass run in a goroutine of their
	// own while they run, and are timed from their end; the scheduler's
	// timer fires for the next retry, sweep or rescan, whichever is first.
	var (
		syncC, keysC         <-chan time.Time
		syncDone             = make(chan struct{})
		keysDone             = make(chan struct{})
		keys                 keyPass
		timerC               <-chan time.Time
		timerAt              time.Time
		nextSweep, nextPrune time.Time
	)
	start := n.clock.Now()
	nextPrune = start.Add(rescanInterval)
	if n.sweepEvery > 0 {
		nextSweep = start.Add(n.sweepEvery)
	}
	spawn := func(f func(), done chan struct{}) {
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			f()
			select {
			case done <- struct{}{}:
			case <-ctx.Done():
			}
		}()
	}
	spawn(func() { n.syncPass(ctx) }, syncDone)
	spawn(func() { n.keyPass(ctx, &keys) }, keysDone)
	for {
		now := n.clock.Now()
		next := r.due(now)
		if !nextSweep.IsZero() && !now.Before(nextSweep) {
			r.sweep(ctx)
			nextSweep = now.Add(n.sweepEvery)
		}
		if !now.Before(nextPrune) {
			r.prune(now)
			if n.endpoint == "" && n.shared {
				r.refresh(ctx) // connections other processes added
			}
			nextPrune = now.Add(rescanInterval)
		}
		n.sweepCaches(now)
		n.metrics.sweep(ctx, now, n.ackedStale())
		for _, t := range []time.Time{nextSweep, nextPrune} {
			if !t.IsZero() && (next.IsZero() || t.Before(next)) {
				next = t
			}
		}
		if timerC == nil || next.Before(timerAt) {
			timerC, timerAt = n.clock.After(next.Sub(now)), next
		}
		select {
		case <-ctx.Done():
			return contextError("tether: run", ctx.Err())
		case <-n.changed:
			r.refreshKicked(ctx)
			if n.endpoint == "" {
				r.refresh(ctx)
			}
			r.sweep(ctx)
		case <-r.retryChanged:
		case <-timerC:
			timerC, timerAt = nil, time.Time{}
		case <-syncDone:
			syncC = n.clock.After(n.handshakeEvery)
		case <-syncC:
			syncC = nil
			spawn(func() { n.syncPass(ctx) }, syncDone)
		case <-keysDone:
			keysC = n.clock.After(n.keyEvery())
		case <-keysC:
			keysC = nil
			spawn(func() { n.keyPass(ctx, &keys) }, keysDone)
		}
	}
}

// syncPass completes the handshakes of pending invitations once.
func (n *Node) syncPass(ctx context.Context) {
	if err := n.Sync(ctx); err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: sync pending invitations", "err", err)
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

// rescanInterval is how often Run drops what it keeps of connections gone
// idle, and, on a private side sharing its Store, looks for connections
// other processes added; and, while retired keys exist, how often it
// looks for connections that do not sign with the current key yet.
const rescanInterval = 30 * time.Second

// keyEvery is how often Run looks at the instance's keys: every second
// when other processes share the Store (one of them may rotate).
func (n *Node) keyEvery() time.Duration {
	if n.shared {
		return idleRecheck
	}
	return rescanInterval
}

// keyPass is what Run's key passes remember between them.
type keyPass struct {
	swept   time.Time
	version int64 // the keys' version last swept for
}

// keyPass re-reads the instance's keys when other processes share the
// Store, and, while retired keys exist, sweeps connections onto the
// current key and drops retired keys no connection uses.
func (n *Node) keyPass(ctx context.Context, p *keyPass) {
	if n.shared {
		n.reloadKeys(ctx)
	}
	ks := n.keys.Load()
	if now := n.clock.Now(); len(ks.verify) > 1 && now.Sub(p.swept) >= rescanInterval || ks.version != p.version {
		p.swept, p.version = now, ks.version
		if err := n.keySweep(ctx, ks); err != nil && ctx.Err() == nil {
			n.log.WarnContext(ctx, "tether: move connections to the current key", "err", err)
		}
	}
}

// runner keeps the work of one Run: the delivery scheduler's queue, retry
// timers and workers, and, on a private side, a puller per public
// endpoint.
type runner struct {
	n          *Node
	ctx        context.Context
	wg         sync.WaitGroup
	maxWorkers int
	// retryChanged tells Run's loop that a retry was scheduled: its timer
	// may have to fire sooner.
	retryChanged chan struct{}

	mu      sync.Mutex
	work    map[string]*pushWork // connections with work, a retry or a lease
	ready   []*pushWork          // waiting for a worker, in turn
	retries retryHeap
	workers int
	stopped bool // Run is ending: no worker starts
	// skip holds connections whose peer is private: it polls, nothing is
	// pushed. Cleared when connections change (a peer may move).
	skip    map[string]bool
	pullers map[string][]*puller // by endpoint and peer key
}

func newRunner(n *Node) *runner {
	return &runner{n: n, maxWorkers: n.workers, retryChanged: make(chan struct{}, 1),
		work: map[string]*pushWork{}, skip: map[string]bool{}, pullers: map[string][]*puller{}}
}

// refresh gives the stored connections of a private side to its pullers,
// and tells them which are active.
func (r *runner) refresh(ctx context.Context) {
	r.n.eachPeerConnection(ctx, []Status{StatusActive, StatusPaused, StatusInactive}, func(c *Connection) {
		r.ensurePuller(ctx, c)
	})
}

// eachPeerConnection calls fn with every stored peer connection with one
// of statuses, page by page; a failure is logged and ends the pass.
func (n *Node) eachPeerConnection(ctx context.Context, statuses []Status, fn func(*Connection)) {
	for _, status := range statuses {
		opts := ListOptions{Status: status, Kind: KindPeer, Limit: MaxPageSize}
		for {
			conns, next, err := n.store.ListConnections(ctx, opts)
			if err != nil {
				if ctx.Err() == nil {
					n.log.WarnContext(ctx, "tether: list connections", "err", err)
				}
				return
			}
			for _, c := range conns {
				fn(c)
			}
			if next == "" {
				break
			}
			opts.After = next
		}
	}
}

// refreshKicked runs the connections with a new notice, deleted ones
// included, and, on a private side, updates their pullers.
func (r *runner) refreshKicked(ctx context.Context) {
	r.mu.Lock()
	clear(r.skip) // a connection changed: its peer may have moved
	r.mu.Unlock()
	for _, id := range r.n.takeKicked() {
		r.mark(id, true)
		if r.n.endpoint != "" {
			continue
		}
		c, err := r.n.store.GetConnection(ctx, id)
		if err != nil {
			continue // gone, or the store failed: the rescan or a restart catches up
		}
		if c.Status != StatusPending {
			r.ensurePuller(ctx, c)
		}
	}
}

// ensurePuller makes a private side's puller for c's endpoint carry c.
func (r *runner) ensurePuller(ctx context.Context, c *Connection) {
	if c.RemoteURL == "" || r.n.endpoint != "" || c.Status == StatusDeleted {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// One long-poll per endpoint (and peer key) carries up to
	// MaxPollConnections connections; more take a second, and so on.
	key := c.RemoteURL + " " + KeyID(c.RemoteKey) + " " + c.LocalKeyID
	active := c.Status == StatusActive
	group := r.pullers[key]
	for _, p := range group {
		if p.has(c.ID) {
			p.carry(c.ID, active)
			return
		}
	}
	for _, p := range group {
		if p.carry(c.ID, active) {
			return
		}
	}
	p := newPuller(c.RemoteURL, KeyID(c.RemoteKey), c.LocalKeyID)
	p.carry(c.ID, active)
	r.pullers[key] = append(group, p)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		r.n.pullLoop(ctx, p, func() bool { return r.retire(key, p) })
	}()
}

// retire removes a puller that carries no connection any more, and
// reports whether it did: ensurePuller may have given it one meanwhile.
func (r *runner) retire(key string, p *puller) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.ids) > 0 {
		return false
	}
	group := slices.DeleteFunc(r.pullers[key], func(q *puller) bool { return q == p })
	if len(group) == 0 {
		delete(r.pullers, key)
	} else {
		r.pullers[key] = group
	}
	return true
}

// peerPaused tells the puller carrying connection id that the peer said
// its side is paused.
func (r *runner) peerPaused(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, group := range r.pullers {
		for _, p := range group {
			if p.has(id) {
				p.peerPaused(id, true)
				return
			}
		}
	}
}

// tracked counts the connections the runner keeps state for.
func (r *runner) tracked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	count := len(r.work) + len(r.skip)
	for _, group := range r.pullers {
		for _, p := range group {
			p.mu.Lock()
			count += len(p.ids)
			p.mu.Unlock()
		}
	}
	return count
}

// puller is the single long-poll of a private side to one public endpoint,
// for the connections whose peer has one key and that sign with one key of
// this side: the poll is signed with it, and the peer accepts it for
// every connection the poll names.
type puller struct {
	endpoint   string
	keyID      string // the peer's key: it signs every answer
	localKeyID string // this side's key: it signs the poll
	changed    chan struct{}

	mu sync.Mutex
	// ids are the connections the puller carries; each maps to whether the
	// peer last answered that its side is paused.
	ids map[string]bool
	// polling are the connections the poll in flight carries, or the last
	// poll did; nil while the next one is being prepared.
	polling map[string]bool
	// gen counts changes that the poll being prepared or in flight does
	// not reflect; cancel ends the poll in flight.
	gen    int
	cancel context.CancelFunc
}

func newPuller(endpoint, keyID, localKeyID string) *puller {
	return &puller{endpoint: endpoint, keyID: keyID, localKeyID: localKeyID, ids: map[string]bool{}, changed: make(chan struct{}, 1)}
}

// carry makes the puller carry id, unless it carries MaxPollConnections
// already, and reports whether it carries id now. When id's being active
// does not match what the poll in flight carries, or a poll is being
// prepared (it may have read id's status before it changed), that poll is
// restarted: a connection added or activated is served at once, not when
// the peer ends a held poll.
func (p *puller) carry(id string, active bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := p.ids[id]; !ok {
		if len(p.ids) >= MaxPollConnections {
			return false
		}
		p.ids[id] = false
	}
	if p.polling == nil || active != p.polling[id] {
		p.restart()
	}
	return true
}

// restart makes the poll being prepared or in flight start again. p.mu is
// held.
func (p *puller) restart() {
	p.gen++
	if p.cancel != nil {
		p.cancel()
	}
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

func (p *puller) has(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.ids[id]
	return ok
}

// prepare starts preparing a poll: it returns the connections the puller
// carries, with whether the peer last said each was paused, and the
// generation that begin checks.
func (p *puller) prepare() (map[string]bool, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.polling = nil
	return maps.Clone(p.ids), p.gen
}

// begin records the poll about to be sent, and reports false when
// something changed since prepare: then the poll is prepared again.
func (p *puller) begin(gen int, polling map[string]bool, cancel context.CancelFunc) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if gen != p.gen {
		return false
	}
	p.polling, p.cancel = polling, cancel
	return true
}

// end records that the poll in flight ended.
func (p *puller) end() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cancel = nil
}

// peerPaused records whether the peer said its side of id is paused, and
// reports whether that changed. A poll in flight that carries id is
// restarted when the peer said paused in another answer (a refused push):
// the poll then says so, and is answered as soon as the peer resumes.
func (p *puller) peerPaused(id string, paused bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	was, ok := p.ids[id]
	if !ok || was == paused {
		return false
	}
	p.ids[id] = paused
	if paused {
		p.gen++ // a poll being prepared read the old value
		if p.cancel != nil && p.polling[id] {
			p.cancel()
		}
	}
	return true
}

func (p *puller) remove(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.ids, id)
	delete(p.polling, id)
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

// pollRecheck returns a channel that fires when a held poll should re-read
// its connections without a signal: when the Store is shared and no Run
// sweeps it (a running Run's sweep wakes the polls of connections with
// messages waiting), every second; never otherwise.
func (n *Node) pollRecheck() <-chan time.Time {
	if n.sched.Load() != nil {
		return nil
	}
	return n.recheck()
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
