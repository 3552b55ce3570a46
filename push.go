package tether

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
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
	Control bool   `json:"control,omitempty"` // a notice the Node applies
}

type pushRequest struct {
	Messages []wireMessage `json:"messages"`
}

type pushReply struct {
	Acked int64  `json:"acked"`
	Error string `json:"error,omitempty"` // why the batch was not applied whole
}

// deliverable refuses deliveries on connections that cannot take them now.
func (n *Node) deliverable(op string, c *Connection) error {
	switch c.Status {
	case StatusActive:
		return nil
	case StatusDeleted:
		return &Error{Code: CodeGone, Op: op, Message: "the connection was deleted: stop sending"}
	case StatusPending:
		return refused(op)
	}
	return &Error{Code: CodePaused, Op: op, Message: "the connection is " + string(c.Status) + ": keep the messages and retry later", RetryAfter: n.pausedRetry}
}

// push sends one batch and returns the highest sequence number the peer
// has applied. An answer that applied less than the whole batch is an
// error, so the caller backs off.
func (n *Node) push(ctx context.Context, c *Connection, msgs []Message) (int64, error) {
	const op = "tether: push"
	msgs = msgs[:batchLen(msgs)]
	batch := pushRequest{Messages: make([]wireMessage, 0, len(msgs))}
	for _, m := range msgs {
		batch.Messages = append(batch.Messages, wireMessage{Seq: m.Seq, Payload: m.Payload, Control: m.Control})
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

// batchLen returns how many of msgs one push carries: as many as fit in
// batchBytes of payload, and at least one.
func batchLen(msgs []Message) int {
	size := 0
	for i, m := range msgs {
		if i > 0 && size+len(m.Payload) > batchBytes {
			return i
		}
		size += len(m.Payload)
	}
	return len(msgs)
}

// handlePush applies a batch from a peer and answers with the highest
// sequence number applied.
func (n *Node) handlePush(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle push"
	return n.serve(ctx, op, req, func(a *authenticated) (any, error) {
		c := a.conn
		if c.Status == StatusDeleted || c.Status == StatusPending {
			return nil, n.deliverable(op, c)
		}
		var body pushRequest
		if err := decodeBody(op, req.Body, n.MaxBody(), &body); err != nil {
			return nil, err
		}
		msgs := make([]Message, len(body.Messages))
		for i, m := range body.Messages {
			if len(m.Payload) > n.maxPayload || m.Seq < 1 || i > 0 && m.Seq <= body.Messages[i-1].Seq {
				return nil, &Error{Code: CodeProtocol, Op: op, Message: "batch is not in ascending order or holds an oversized payload"}
			}
			msgs[i] = Message{ConnectionID: c.ID, Seq: m.Seq, Payload: m.Payload, Control: m.Control}
		}
		held := c.Status != StatusActive
		if held && len(heldReceive(c.Status, msgs)) == 0 {
			// Paused or inactive: no data, but notices that lead are
			// taken, so this side learns of a deletion or a key change,
			// and the peer's pause or activation is heard even when it
			// waits behind data.
			if err := n.heardStatus(ctx, op, c.ID, msgs); err != nil {
				return nil, Wrap(CodeUnavailable, op, err)
			}
			return nil, n.deliverable(op, c)
		}
		cursor, err := n.deliver(ctx, c.ID, msgs)
		if held && err == nil {
			err = n.heardStatus(ctx, op, c.ID, msgs)
		}
		reply := pushReply{Acked: cursor}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Op != "tether: deliver" {
				return nil, Wrap(CodeUnavailable, op, err) // the store failed: the sender retries
			}
			reply.Error = e.Message // not the host's error text: it stays on this side
			n.log.WarnContext(ctx, "tether: receiver failed", "connection", c.ID, "err", err)
		}
		n.healthOK(ctx, c.ID)
		return reply, nil
	})
}
