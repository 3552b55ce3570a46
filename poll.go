package tether

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"sync/atomic"
	"time"
)

type pollCursor struct {
	ID     string `json:"id"` // the answering side's connection ID
	Cursor int64  `json:"cursor"`
	// Paused says the last answer said this connection was paused: the
	// answer comes at once when that is no longer so, and the other way
	// round.
	Paused bool `json:"paused,omitempty"`
	// Held says the asking side is not active (paused, inactive): it
	// takes only the notices that lead, no data.
	Held bool `json:"held,omitempty"`
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

// pullLoop is a private side's long-poll to one public endpoint, carrying
// all of its connections there. It ends with ctx, or when the puller
// carries no connection and retire agrees.
func (n *Node) pullLoop(ctx context.Context, p *puller, retire func() bool) {
	attempt := 0
	for ctx.Err() == nil {
		err := n.pollOnce(ctx, p)
		switch {
		case ctx.Err() != nil:
			return
		case errors.Is(err, errRestart):
		case errors.Is(err, errNothingToPoll):
			if retire() {
				return
			}
			// Run's rescans and a connection carried or activated wake
			// the puller; other processes sharing the Store are not seen
			// otherwise.
			select {
			case <-ctx.Done():
				return
			case <-p.changed:
			case <-n.recheck():
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

var (
	errNothingToPoll = errors.New("no active connection to poll")
	errRestart       = errors.New("the connections to poll changed")
)

// pollOnce makes one long-poll and delivers what it brings. The poll is
// restarted (errRestart) when the connections it should carry change
// while it is prepared or held.
func (n *Node) pollOnce(ctx context.Context, p *puller) error {
	const op = "tether: poll"
	var (
		req     = pollRequest{WaitMS: n.pollWait.Milliseconds()}
		local   = map[string]*Connection{} // by the peer's connection ID
		polling = map[string]bool{}
		first   *Connection
	)
	ids, gen := p.prepare()
	for id, paused := range ids {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return err
		}
		if c.Status == StatusDeleted {
			p.remove(id)
			n.forget(id)
			continue
		}
		if c.RemoteURL != p.endpoint || KeyID(c.RemoteKey) != p.keyID || c.LocalKeyID != p.localKeyID {
			// The peer moved, or a key changed: Run gives the connection
			// to the puller for its endpoint and keys.
			p.remove(id)
			n.notifyChanged()
			continue
		}
		if c.Status == StatusPending || revoked(c) {
			continue
		}
		cursor, err := n.store.InboxCursor(ctx, id)
		if err != nil {
			return err
		}
		// A paused side still polls, for the peer's notices only. As it
		// takes no data, a notice queued behind data does not reach it:
		// it asks instead for the peer's status, answered at once when
		// that differs from the one it recorded.
		held := c.Status != StatusActive
		if held {
			paused = c.RemoteStatus == StatusPaused
		}
		req.Connections = append(req.Connections, pollCursor{ID: c.RemoteConnection, Cursor: cursor, Paused: paused, Held: held})
		local[c.RemoteConnection] = c
		polling[id] = c.Status == StatusActive
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
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !p.begin(gen, polling, cancel) {
		return errRestart
	}
	var reply pollReply
	current, err := n.exchangeKey(pctx, op, first, OpPoll, body, &reply)
	p.end()
	if err == nil && current {
		// The peer signs with the key every connection of this poll pins
		// (they are grouped by it): it has acknowledged all their key
		// changes, so their previous keys go too.
		for _, c := range local {
			if c != first && c.RemotePreviousKey != nil && c.RemoteKey.Equal(first.RemoteKey) {
				n.peerUsesNewKey(ctx, c, c.RemoteKey)
			}
		}
	}
	if err != nil {
		if pctx.Err() != nil && ctx.Err() == nil {
			return errRestart
		}
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
			n.forget(c.ID)
			continue
		case pollPaused:
			p.peerPaused(c.ID, true)
		default:
			if p.peerPaused(c.ID, false) {
				n.signal(c.ID) // this side's pusher may be waiting out the pause
			}
		}
		if !polling[c.ID] {
			status := StatusActive
			if b.Status == pollPaused {
				status = StatusPaused
			}
			if err := n.peerStatus(ctx, op, c.ID, status); err != nil {
				n.healthFail(ctx, c.ID, err, true)
				if failed == nil {
					failed = err
				}
				continue
			}
		}
		if len(b.Messages) == 0 {
			n.healthOK(ctx, c.ID)
			continue
		}
		// The poll may have been held since this side paused (or deleted)
		// the connection: deliver takes only what its status allows now,
		// and the rest stays at the peer, unacknowledged.
		msgs := make([]Message, len(b.Messages))
		for i, m := range b.Messages {
			msgs[i] = Message{ConnectionID: c.ID, Seq: m.Seq, Payload: m.Payload, Control: m.Control}
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

// handlePoll answers a private peer's long-poll: it acknowledges what the
// peer's cursors say it has, and answers when a message is there for one of
// its active connections, one was deleted, or the wait ends.
func (n *Node) handlePoll(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle poll"
	// The token names the first connection: its peer's key authenticates
	// the poll before the body is parsed or any other connection is read,
	// so a forged poll costs what any forged request does.
	a, err := n.authenticate(ctx, op, req)
	if err != nil {
		return nil, err
	}
	if a.late != nil {
		return n.refusal(op, a, a.late)
	}
	var body pollRequest
	if err := decodeBody(op, req.Body, maxPollBody, &body); err != nil {
		return n.refusal(op, a, err)
	}
	if len(body.Connections) == 0 || len(body.Connections) > MaxPollConnections {
		return n.refusal(op, a, &Error{Code: CodeInvalid, Op: op, Message: "a poll names 1 to 1000 connections"})
	}
	ids := make([]string, len(body.Connections))
	seen := make(map[string]bool, len(body.Connections))
	for i, pc := range body.Connections {
		if checkID("id", pc.ID) != nil || pc.Cursor < 0 || seen[pc.ID] {
			return n.refusal(op, a, &Error{Code: CodeInvalid, Op: op, Message: "a poll names each connection once, by a valid ID, with a cursor of 0 or more"})
		}
		seen[pc.ID] = true
		ids[i] = pc.ID
	}
	if a.conn.ID != ids[0] {
		return nil, refused(op)
	}
	conns := make([]*Connection, len(ids))
	conns[0] = a.conn
	for i, id := range ids[1:] {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil || c.RemoteInstance != a.claims.Issuer || !c.RemoteKey.Equal(a.key) && !c.RemotePreviousKey.Equal(a.key) {
			return nil, refused(op)
		}
		if c.RemotePreviousKey != nil && c.RemoteKey.Equal(a.key) {
			// The peer signs with this connection's pinned key: it knows
			// this side has it.
			n.peerUsesNewKey(ctx, c, a.key)
			c.RemotePreviousKey = nil
		}
		if c.Status == StatusPending && c.Role == RoleAcceptor {
			if c, err = n.peerConfirmed(ctx, c.ID); err != nil {
				return nil, Wrap(CodeUnavailable, op, err)
			}
		}
		conns[i+1] = c
	}
	now := n.clock.Now()
	for i, pc := range body.Connections {
		if revoked(conns[i]) {
			continue // its key is revoked: no acknowledgement is trusted
		}
		if err := n.ackPolled(ctx, conns[i], pc.Cursor, now); err != nil {
			return nil, Wrap(CodeUnavailable, op, err)
		}
		n.healthOK(ctx, conns[i].ID)
	}
	w, cancel := n.subscribe(ids...)
	defer cancel()
	n.metrics.pollsHeld(ctx, 1)
	defer n.metrics.pollsHeld(ctx, -1)
	deadline := n.clock.After(min(time.Duration(max(body.WaitMS, 0))*time.Millisecond, n.pollWait))
	read := body.Connections // what the next pass reads: all of them first
	known := conns           // the first pass uses the connections just read
	for {
		reply, err := n.pollBatches(ctx, read, known)
		known = nil
		if err != nil {
			return nil, Wrap(CodeUnavailable, op, err)
		}
		if len(reply.Connections) == 0 {
			select {
			case <-w.ch:
				// Read again only the connections that were signaled.
				signaled := w.take()
				read = read[:0:0]
				for _, pc := range body.Connections {
					if signaled[pc.ID] {
						read = append(read, pc)
					}
				}
				continue
			case <-n.pollRecheck():
				read = body.Connections
				continue
			case <-ctx.Done():
				return nil, contextError(op, ctx.Err())
			case <-deadline:
			}
		}
		// While the poll was held its first connection may have moved to
		// a new key, and the old one been dropped: sign with today's.
		if c, err := n.store.GetConnection(ctx, a.conn.ID); err == nil {
			a.conn = c
		}
		return n.answer(op, a, reply)
	}
}

// ackMark is how far a poll acknowledged a connection's outbox, and when a
// poll last named it.
type ackMark struct {
	cursor atomic.Int64
	seen   atomic.Int64 // Unix nanoseconds
}

// ackedStale is how long an acknowledgement is remembered after the last
// poll that named its connection.
func (n *Node) ackedStale() time.Duration { return 2*n.pollWait + time.Minute }

// ackPolled acknowledges the outbox of connection id up to cursor, unless
// this process did so for that cursor already: most polls repeat most
// cursors.
func (n *Node) ackPolled(ctx context.Context, c *Connection, cursor int64, now time.Time) error {
	id := c.ID
	v, ok := n.acked.Load(id)
	if !ok {
		v, _ = n.acked.LoadOrStore(id, new(ackMark))
	}
	m := v.(*ackMark)
	m.seen.Store(now.UnixNano())
	n.metrics.pollAcked(ctx, id, cursor, now)
	if cursor <= m.cursor.Load() {
		return nil
	}
	start := n.metrics.start()
	err := n.acknowledged(ctx, c, cursor, true)
	n.metrics.storeCall(ctx, StoreAckOutbox, start, err)
	n.metrics.keyAcknowledged(ctx, c, cursor, err)
	if err != nil {
		return err
	}
	for last := m.cursor.Load(); cursor > last && !m.cursor.CompareAndSwap(last, cursor); last = m.cursor.Load() {
	}
	return nil
}

// pollBatches reads what each polled connection has after its cursor, and
// returns the batches worth answering at once: those with messages, those
// of connections deleted, and those whose status differs from what the
// poller last heard. A connection that is not active, or whose peer
// paused, sends up to its latest notice; a poller that is held takes only
// the notices that lead. known, when not nil, holds the polled connections
// as they were just read, in order.
func (n *Node) pollBatches(ctx context.Context, polled []pollCursor, known []*Connection) (pollReply, error) {
	reply := pollReply{Connections: []pollBatch{}}
	count, size := 0, 0
	for i, pc := range polled {
		var c *Connection
		if known != nil {
			c = known[i]
		} else {
			var err error
			if c, err = n.store.GetConnection(ctx, pc.ID); err != nil {
				return reply, err
			}
		}
		b := pollBatch{ID: pc.ID, Status: pollActive}
		if revoked(c) {
			continue // served nothing until it is re-paired
		}
		switch c.Status {
		case StatusDeleted:
			// The deletion is durable here: every poll hears it, so the
			// notice is not needed and the outbox goes.
			b.Status = pollGone
			n.forget(pc.ID)
			n.metrics.pollGone(ctx, pc.ID)
			if err := n.store.AckOutbox(ctx, pc.ID, math.MaxInt64); err != nil {
				return reply, err
			}
			reply.Connections = append(reply.Connections, b)
			continue
		case StatusActive:
		default:
			b.Status = pollPaused
		}
		if count < n.batch && size < batchBytes {
			start := n.metrics.start()
			msgs, err := n.store.ListOutbox(ctx, pc.ID, pc.Cursor, n.batch-count)
			n.metrics.storeCall(ctx, StoreListOutbox, start, err)
			if err != nil {
				return reply, err
			}
			n.metrics.pollRead(ctx, pc.ID, msgs)
			if len(msgs) > 0 && c.Status == StatusActive {
				// A Pause that returned while the outbox was read holds
				// these messages too.
				again, err := n.store.GetConnection(ctx, pc.ID)
				if err != nil {
					return reply, err
				}
				if c = again; c.Status != StatusActive {
					b.Status = pollPaused
				}
			}
			msgs = heldSend(c, msgs)
			if pc.Held {
				msgs = heldReceive(StatusPaused, msgs)
			}
			served := 0
			for _, m := range msgs {
				if count > 0 && size+len(m.Payload) > batchBytes {
					break
				}
				b.Messages = append(b.Messages, wireMessage{Seq: m.Seq, Payload: m.Payload, Control: m.Control})
				count, size, served = count+1, size+len(m.Payload), served+1
			}
			n.metrics.pollServed(ctx, pc.ID, msgs[:served])
		}
		if len(b.Messages) > 0 || (b.Status == pollPaused) != pc.Paused {
			reply.Connections = append(reply.Connections, b)
		}
	}
	return reply, nil
}
