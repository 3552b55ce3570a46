package tether

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

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
	if err := n.exchange(ctx, op, &Connection{RemoteURL: p.endpoint, RemoteKey: first.RemoteKey, LocalKeyID: first.LocalKeyID, RemoteConnection: first.RemoteConnection}, OpPoll, body, &reply); err != nil {
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

// handlePoll answers a private peer's long-poll: it acknowledges what the
// peer's cursors say it has, and answers when a message is there for one of
// its active connections, one was deleted, or the wait ends.
func (n *Node) handlePoll(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle poll"
	var body pollRequest
	if err := decodeBody(op, req.Body, maxPollBody, &body); err != nil {
		return nil, err
	}
	if len(body.Connections) == 0 || len(body.Connections) > MaxPollConnections {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "a poll names 1 to 1000 connections"}
	}
	ids := make([]string, len(body.Connections))
	seen := make(map[string]bool, len(body.Connections))
	for i, pc := range body.Connections {
		if checkID("id", pc.ID) != nil || pc.Cursor < 0 || seen[pc.ID] {
			return nil, &Error{Code: CodeInvalid, Op: op, Message: "a poll names each connection once, by a valid ID, with a cursor of 0 or more"}
		}
		seen[pc.ID] = true
		ids[i] = pc.ID
	}
	// The token names the first connection: its peer's key authenticates
	// the poll before any other connection is read.
	a, err := n.authenticate(ctx, op, req)
	if err != nil {
		return nil, err
	}
	if a.conn.ID != ids[0] {
		return nil, refused(op)
	}
	if a.late != nil {
		return n.refusal(op, a, a.late)
	}
	conns := make([]*Connection, len(ids))
	conns[0] = a.conn
	for i, id := range ids[1:] {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil || c.RemoteInstance != a.claims.Issuer || !c.RemoteKey.Equal(a.conn.RemoteKey) {
			return nil, refused(op)
		}
		if c.Status == StatusPending && c.Role == RoleAcceptor {
			if c, err = n.peerConfirmed(ctx, c.ID); err != nil {
				return nil, Wrap(CodeUnavailable, op, err)
			}
		}
		conns[i+1] = c
	}
	for i, pc := range body.Connections {
		// Acknowledge what the cursor covers, unless this process did so
		// for that cursor already: most polls repeat most cursors.
		if last, _ := n.acked.Load(pc.ID); pc.Cursor > 0 && (last == nil || pc.Cursor > last.(int64)) {
			if err := n.store.AckOutbox(ctx, pc.ID, pc.Cursor); err != nil {
				return nil, Wrap(CodeUnavailable, op, err)
			}
			n.acked.Store(pc.ID, pc.Cursor)
		}
		n.healthOK(ctx, conns[i].ID)
	}
	w, cancel := n.subscribe(ids...)
	defer cancel()
	deadline := n.clock.After(min(time.Duration(max(body.WaitMS, 0))*time.Millisecond, n.pollWait))
	read := body.Connections // what the next pass reads: all of them first
	for {
		reply, ready, err := n.pollBatches(ctx, read)
		if err != nil {
			return nil, Wrap(CodeUnavailable, op, err)
		}
		if !ready {
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
			case <-n.recheck():
				read = body.Connections
				continue
			case <-ctx.Done():
				return nil, &Error{Code: CodeUnavailable, Op: op, Message: "poll abandoned", Err: ctx.Err()}
			case <-deadline:
			}
		}
		return n.answer(op, a, reply)
	}
}

// pollBatches reads what each polled connection has after its cursor.
// ready reports whether there is something worth answering at once.
func (n *Node) pollBatches(ctx context.Context, polled []pollCursor) (pollReply, bool, error) {
	reply := pollReply{Connections: make([]pollBatch, 0, len(polled))}
	ready := false
	count, size := 0, 0
	for _, pc := range polled {
		c, err := n.store.GetConnection(ctx, pc.ID)
		if err != nil {
			return reply, false, err
		}
		b := pollBatch{ID: pc.ID, Status: pollActive}
		switch c.Status {
		case StatusDeleted:
			b.Status, ready = pollGone, true
		case StatusActive:
			if count >= n.batch || size >= batchBytes {
				break
			}
			msgs, err := n.store.ListOutbox(ctx, pc.ID, pc.Cursor, n.batch-count)
			if err != nil {
				return reply, false, err
			}
			for _, m := range msgs {
				if count > 0 && size+len(m.Payload) > batchBytes {
					break
				}
				b.Messages = append(b.Messages, wireMessage{Seq: m.Seq, Payload: m.Payload})
				count, size = count+1, size+len(m.Payload)
			}
			ready = ready || len(b.Messages) > 0
		default:
			b.Status = pollPaused
		}
		reply.Connections = append(reply.Connections, b)
	}
	return reply, ready, nil
}
