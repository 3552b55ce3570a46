package tether

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
)

// Message operations.
const (
	// OpPush delivers a batch of messages to a public peer; the answer
	// carries the highest sequence number it has applied.
	OpPush Op = "push"
	// OpPoll is a private side's long-poll: it carries its inbox cursor for
	// every connection to the endpoint (acknowledging what came before) and
	// is answered when a message is there or the wait ends.
	OpPoll Op = "poll"
	// OpClose tells the peer the connection was deleted.
	OpClose Op = "close"
	// OpResume tells a paused peer's sender the connection is active again.
	OpResume Op = "resume"
)

// Delivery limits.
const (
	batchBytes = 1 << 20 // payload bytes per batch, unless one message is larger
	// MaxPollConnections bounds the connections one poll may carry.
	MaxPollConnections = 1000
	// maxPollBody fits a poll of MaxPollConnections with the longest IDs
	// and cursors.
	maxPollBody = MaxPollConnections*128 + 1024
)

// MaxBody returns the largest request or response body this node sends or
// accepts: a transport's own limit must not be lower.
func (n *Node) MaxBody() int {
	p := max(n.maxPayload, batchBytes)
	return p/3*4 + 64<<10
}

type wireMessage struct {
	Seq     int64  `json:"seq"`
	Payload []byte `json:"payload"`
}

type pushRequest struct {
	Messages []wireMessage `json:"messages"`
}

type pushReply struct {
	Acked int64  `json:"acked"`
	Error string `json:"error,omitempty"` // why the batch was not applied whole
}

type pollCursor struct {
	ID     string `json:"id"` // the answering side's connection ID
	Cursor int64  `json:"cursor"`
}

type pollRequest struct {
	WaitMS      int64        `json:"wait_ms"`
	Connections []pollCursor `json:"connections"`
}

// Statuses in a poll answer.
const (
	pollActive = "active"
	pollPaused = "paused"
	pollGone   = "gone"
)

type pollBatch struct {
	ID       string        `json:"id"`
	Status   string        `json:"status"`
	Messages []wireMessage `json:"messages,omitempty"`
}

type pollReply struct {
	Connections []pollBatch `json:"connections"`
}

// Send stores payload in the connection's outbox with the next sequence
// number and returns that number. When Send returns the message is
// durable: Run delivers it, at least once and in order, and it leaves the
// outbox only after the peer acknowledged it. Paused and inactive
// connections queue; pending and deleted ones refuse with CodeNotConnected.
// A payload over Config.MaxPayload is refused with CodeTooLarge.
func (n *Node) Send(ctx context.Context, connectionID string, payload []byte) (int64, error) {
	const op = "tether: send"
	if len(payload) > n.maxPayload {
		return 0, &Error{Code: CodeTooLarge, Op: op, Message: "payload is larger than the limit of " + strconv.Itoa(n.maxPayload) + " bytes"}
	}
	c, err := n.store.GetConnection(ctx, connectionID)
	if err != nil {
		return 0, err
	}
	if c.Kind != KindPeer || c.Status == StatusPending || c.Status == StatusDeleted {
		return 0, &Error{Code: CodeNotConnected, Op: op, Message: "cannot send on a connection that is " + string(c.Status)}
	}
	seq, err := n.store.AppendOutbox(ctx, connectionID, payload, n.clock.Now())
	if err != nil {
		return 0, Wrap(CodeInternal, op, err)
	}
	n.signal(connectionID)
	return seq, nil
}

// waiter receives a token whenever one of the connections it subscribed to
// is signaled; tokens do not pile up beyond one.
type waiter struct {
	ch      chan struct{}
	mu      sync.Mutex
	pending map[string]bool // signaled since the last take
}

// take returns the connections signaled since the last take.
func (w *waiter) take() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pending
	w.pending = nil
	return p
}

// subscribe registers a waiter for ids. Subscribe before reading the state
// a signal announces, so that no signal is missed; call cancel when done.
func (n *Node) subscribe(ids ...string) (*waiter, func()) {
	w := &waiter{ch: make(chan struct{}, 1)}
	n.wakeMu.Lock()
	for _, id := range ids {
		set := n.wake[id]
		if set == nil {
			set = map[*waiter]struct{}{}
			n.wake[id] = set
		}
		set[w] = struct{}{}
	}
	n.wakeMu.Unlock()
	return w, func() {
		n.wakeMu.Lock()
		defer n.wakeMu.Unlock()
		for _, id := range ids {
			delete(n.wake[id], w)
			if len(n.wake[id]) == 0 {
				delete(n.wake, id)
			}
		}
	}
}

// signal wakes whatever waits on a connection's outbox or status.
func (n *Node) signal(id string) {
	n.wakeMu.Lock()
	defer n.wakeMu.Unlock()
	for w := range n.wake[id] {
		w.mu.Lock()
		if w.pending == nil {
			w.pending = map[string]bool{}
		}
		w.pending[id] = true
		w.mu.Unlock()
		select {
		case w.ch <- struct{}{}:
		default:
		}
	}
}

// notifyChanged tells Run that connections were added or changed status.
func (n *Node) notifyChanged() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

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
		case <-n.clock.After(n.poll):
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

// backoff returns how long to wait before attempt (0-based) after err:
// full jitter up to min(retryMax, retryBase*2^attempt), at least the
// Retry-After the peer sent.
func (n *Node) backoff(attempt int, err error) time.Duration {
	ceiling := n.retryMax
	if attempt < 30 {
		ceiling = min(n.retryMax, n.retryBase<<attempt)
	}
	d := time.Duration(rand.Int64N(int64(ceiling) + 1))
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > d {
		d = min(e.RetryAfter, time.Hour)
	}
	return d
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

// pushLoop delivers one connection's outbox to its public peer until the
// connection is deleted or ctx ends.
func (n *Node) pushLoop(ctx context.Context, id string) {
	w, cancel := n.subscribe(id)
	defer cancel()
	wake := w.ch
	lease := "outbox/" + id
	defer func() {
		// Best effort: an unreleased lease ends by itself.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = n.store.Release(rctx, lease, n.holder)
	}()
	attempt := 0
	var leaseUntil time.Time // when the lease this loop holds runs out
	for ctx.Err() == nil {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			if !n.sleep(ctx, n.backoff(attempt, err), wake) {
				return
			}
			attempt++
			continue
		}
		switch c.Status {
		case StatusDeleted:
			return
		case StatusActive:
		default: // paused, inactive: keep the queue
			if !n.idle(ctx, wake) {
				return
			}
			continue
		}
		// Take the lease, or renew it once half of it has passed.
		now := n.clock.Now()
		if now.After(leaseUntil.Add(-n.leaseTTL / 2)) {
			held, err := n.store.Lease(ctx, lease, n.holder, now, now.Add(n.leaseTTL))
			if err == nil && !held { // another process is delivering this outbox
				leaseUntil = time.Time{}
				if !n.sleep(ctx, idleRecheck, wake) {
					return
				}
				continue
			}
			if err != nil {
				n.healthFail(ctx, id, err, true)
				if !n.sleep(ctx, n.backoff(attempt, err), nil) {
					return
				}
				attempt++
				continue
			}
			leaseUntil = now.Add(n.leaseTTL)
		}
		msgs, err := n.store.ListOutbox(ctx, id, 0, n.batch)
		if err == nil && len(msgs) == 0 {
			if !n.idle(ctx, wake) {
				return
			}
			continue
		}
		var acked int64
		if err == nil {
			acked, err = n.push(ctx, c, msgs)
		}
		if err == nil && acked > 0 {
			err = n.store.AckOutbox(ctx, id, acked)
		}
		switch {
		case ctx.Err() != nil:
			return
		case err == nil:
			attempt = 0
			n.healthOK(ctx, id)
		case ErrorCode(err) == CodeGone:
			n.peerDeleted(ctx, id)
			return
		case ErrorCode(err) == CodePaused:
			n.healthFail(ctx, id, err, false)
			if !n.sleep(ctx, max(n.backoff(0, err), n.retryBase), wake) {
				return
			}
		default:
			n.healthFail(ctx, id, err, true)
			if !n.sleep(ctx, n.backoff(attempt, err), nil) {
				return
			}
			attempt++
		}
	}
}

// push sends one batch and returns the highest sequence number the peer
// has applied. An answer that applied less than the whole batch is an
// error, so the caller backs off.
func (n *Node) push(ctx context.Context, c *Connection, msgs []Message) (int64, error) {
	const op = "tether: push"
	batch := pushRequest{Messages: make([]wireMessage, 0, len(msgs))}
	size := 0
	for _, m := range msgs {
		if len(batch.Messages) > 0 && size+len(m.Payload) > batchBytes {
			break
		}
		size += len(m.Payload)
		batch.Messages = append(batch.Messages, wireMessage{Seq: m.Seq, Payload: m.Payload})
	}
	body, err := json.Marshal(batch)
	if err != nil {
		return 0, err
	}
	var reply pushReply
	if err := n.exchange(ctx, op, c, OpPush, body, &reply); err != nil {
		return 0, err
	}
	last := batch.Messages[len(batch.Messages)-1].Seq
	if reply.Acked < last {
		msg := "the peer applied up to " + strconv.FormatInt(reply.Acked, 10) + " of " + strconv.FormatInt(last, 10)
		if reply.Error != "" {
			msg += ": " + reply.Error
		}
		return reply.Acked, &Error{Code: CodeUnavailable, Op: op, Message: msg}
	}
	return reply.Acked, nil
}

// exchange sends a signed request on connection c to its peer and decodes
// the verified answer into reply.
func (n *Node) exchange(ctx context.Context, op string, c *Connection, o Op, body []byte, reply any) error {
	key, err := n.signingKey(c)
	if err != nil {
		return err
	}
	resp, nonce, err := n.call(ctx, c.RemoteURL, o, c.RemoteConnection, body, key)
	if err != nil {
		return err
	}
	if _, err := verifyMessage(n.messages, op, resp.Auth, resp.Body, "", n.clock.Now(), "", o, nonce, pinnedKey(op, c.RemoteKey)); err != nil {
		return err
	}
	if reply == nil {
		return nil
	}
	return decodeBody(op, resp.Body, n.MaxBody(), reply)
}

// pullLoop is a private side's long-poll to one public endpoint, carrying
// all of its connections there.
func (n *Node) pullLoop(ctx context.Context, p *puller) {
	attempt := 0
	for ctx.Err() == nil {
		err := n.pollOnce(ctx, p)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errNothingToPoll):
			select {
			case <-ctx.Done():
				return
			case <-p.changed:
			case <-n.clock.After(idleRecheck):
			}
		case err != nil:
			n.log.DebugContext(ctx, "tether: poll failed", "endpoint", p.endpoint, "err", err)
			if !n.sleep(ctx, n.backoff(attempt, err), nil) {
				return
			}
			attempt++
		default:
			attempt = 0
		}
	}
}

var errNothingToPoll = errors.New("no active connection to poll")

// pollOnce makes one long-poll and delivers what it brings.
func (n *Node) pollOnce(ctx context.Context, p *puller) error {
	const op = "tether: poll"
	var (
		req   = pollRequest{WaitMS: n.pollWait.Milliseconds()}
		local = map[string]*Connection{} // by the peer's connection ID
		first *Connection
	)
	for _, id := range p.snapshot() {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return err
		}
		if c.Status == StatusDeleted {
			p.remove(id)
			continue
		}
		if c.Status != StatusActive {
			continue
		}
		cursor, err := n.store.InboxCursor(ctx, id)
		if err != nil {
			return err
		}
		req.Connections = append(req.Connections, pollCursor{ID: c.RemoteConnection, Cursor: cursor})
		local[c.RemoteConnection] = c
		if first == nil {
			first = c
		}
	}
	if first == nil {
		return errNothingToPoll
	}
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	var reply pollReply
	if err := n.exchange(ctx, op, &Connection{RemoteURL: p.endpoint, RemoteKey: first.RemoteKey, LocalKeyID: first.LocalKeyID}, OpPoll, body, &reply); err != nil {
		for _, c := range local {
			n.healthFail(ctx, c.ID, err, true)
		}
		return err
	}
	var failed error // a Receiver error: the poll succeeded, but retry with backoff
	for _, b := range reply.Connections {
		c, ok := local[b.ID]
		if !ok {
			return &Error{Code: CodeProtocol, Op: op, Message: "the peer answered for a connection that was not asked for"}
		}
		delete(local, b.ID)
		switch b.Status {
		case pollGone:
			n.peerDeleted(ctx, c.ID)
			p.remove(c.ID)
			continue
		case pollActive:
			n.signal(c.ID) // this side's pusher may be waiting out a pause
		}
		msgs := make([]Message, len(b.Messages))
		for i, m := range b.Messages {
			msgs[i] = Message{ConnectionID: c.ID, Seq: m.Seq, Payload: m.Payload}
		}
		if _, err := n.deliver(ctx, c.ID, msgs); err != nil {
			n.healthFail(ctx, c.ID, err, true)
			if failed == nil {
				failed = err
			}
			continue
		}
		n.healthOK(ctx, c.ID)
	}
	for _, c := range local {
		n.healthOK(ctx, c.ID)
	}
	return failed
}

// deliver hands msgs (ascending Seq) to the Receiver in order, skipping
// those already applied and stopping at a gap, and advances the inbox
// cursor after each. It returns the cursor and the Receiver's error, if
// any. Deliveries to one connection are serialized.
func (n *Node) deliver(ctx context.Context, id string, msgs []Message) (int64, error) {
	mu, _ := n.inbox.LoadOrStore(id, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	cursor, err := n.store.InboxCursor(ctx, id)
	if err != nil {
		return 0, err
	}
	if n.receiver == nil {
		return cursor, &Error{Code: CodeUnavailable, Op: "tether: deliver", Message: "no receiver is configured"}
	}
	var failed error
	receive := func(ctx context.Context, m Message) error {
		if err := n.receiver.Receive(ctx, m); err != nil {
			failed = &Error{Code: CodeUnavailable, Op: "tether: deliver", Message: "the receiver failed", Err: err}
			return failed
		}
		return nil
	}
	atomic, _ := n.store.(AtomicInbox)
	for attempt := 0; ; attempt++ {
		run := nextRun(msgs, cursor)
		if len(run) == 0 {
			return cursor, nil
		}
		var err error
		if atomic != nil {
			cursor, err = atomic.DeliverInbox(ctx, id, cursor, run, receive)
		} else {
			for _, m := range run {
				if err = receive(ctx, m); err != nil {
					break
				}
				if err = n.store.AdvanceInbox(ctx, id, cursor, m.Seq); err != nil {
					break
				}
				cursor = m.Seq
			}
		}
		switch {
		case failed != nil:
			return cursor, failed
		case ErrorCode(err) == CodeConflict && attempt < 3:
			// Another process delivered some: carry on from where it got.
			if cursor, err = n.store.InboxCursor(ctx, id); err != nil {
				return 0, err
			}
		case err != nil:
			return cursor, err
		default:
			return cursor, nil
		}
	}
}

// nextRun returns the messages of msgs (ascending Seq) that follow cursor
// without a gap.
func nextRun(msgs []Message, cursor int64) []Message {
	i := 0
	for i < len(msgs) && msgs[i].Seq <= cursor {
		i++
	}
	j := i
	for j < len(msgs) && msgs[j].Seq == cursor+int64(j-i)+1 {
		j++
	}
	return msgs[i:j]
}

// peerDeleted records that the peer deleted a connection.
func (n *Node) peerDeleted(ctx context.Context, id string) {
	_, err := n.modify(WithActor(ctx, ActorRemote), "tether: peer deleted", id, func(c *Connection) (*Event, error) {
		if c.Status == StatusDeleted {
			return nil, nil
		}
		return n.move(WithActor(ctx, ActorRemote), "tether: peer deleted", c, ActionDelete, EventDeleted, "deleted by the peer")
	})
	if err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: record deletion by peer", "connection", id, "err", err)
	}
	n.signal(id)
}

// notifyPeer tells a public peer about a local status change, best effort:
// a peer that misses it learns at its next request.
func (n *Node) notifyPeer(ctx context.Context, c *Connection, o Op) {
	if c.RemoteURL == "" || c.RemoteConnection == "" || n.transport == nil {
		return
	}
	if err := n.exchange(ctx, "tether: notify peer", c, o, []byte("{}"), nil); err != nil {
		n.log.InfoContext(ctx, "tether: peer not told", "connection", c.ID, "op", string(o), "err", err)
	}
}

// healthCache remembers what was last written of each connection's health,
// so a healthy connection is written at most every healthWriteEvery.
type healthCache struct {
	mu   sync.Mutex
	last map[string]healthMark
}

type healthMark struct {
	written time.Time
	failing bool
}

const healthWriteEvery = 10 * time.Second

func (n *Node) healthOK(ctx context.Context, id string) {
	now := n.clock.Now()
	n.health.mu.Lock()
	m, ok := n.health.last[id]
	if ok && !m.failing && now.Sub(m.written) < healthWriteEvery {
		n.health.mu.Unlock()
		return
	}
	if n.health.last == nil {
		n.health.last = map[string]healthMark{}
	}
	n.health.last[id] = healthMark{written: now}
	n.health.mu.Unlock()
	if _, err := n.modifyHealth(ctx, id, func(h *Health) { *h = Health{LastContact: now} }); err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: record health", "connection", id, "err", err)
	}
}

// healthFail records a failed exchange; count says whether it adds to the
// consecutive failures (a pause on the peer's side does not).
func (n *Node) healthFail(ctx context.Context, id string, cause error, count bool) {
	n.health.mu.Lock()
	if n.health.last == nil {
		n.health.last = map[string]healthMark{}
	}
	n.health.last[id] = healthMark{written: n.clock.Now(), failing: true}
	n.health.mu.Unlock()
	msg := cause.Error()
	if e := new(Error); errors.As(cause, &e) {
		msg = string(e.Code) + ": " + e.Message
	}
	_, err := n.modifyHealth(ctx, id, func(h *Health) {
		if count {
			h.Failures++
		}
		h.LastError = msg
	})
	if err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: record health", "connection", id, "err", err)
	}
}
