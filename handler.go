package tether

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// refused is the answer to any request that fails authentication. It is the
// same whether the connection does not exist, the signature is wrong or the
// key was revoked, so it reveals nothing.
func refused(op string) error {
	return &Error{Code: CodeUnauthenticated, Op: op, Message: "request refused"}
}

// Handle answers a request from a remote instance. Transports call it;
// hosts mount a transport's server side (httptransport.Handler) rather than
// calling it themselves.
func (n *Node) Handle(ctx context.Context, req *Request) (*Response, error) {
	if req == nil {
		return nil, &Error{Code: CodeProtocol, Op: "tether: handle", Message: "no request"}
	}
	limit := MaxRequestBody
	switch req.Op {
	case OpPush:
		limit = n.MaxBody()
	case OpPoll:
		limit = maxPollBody
	}
	if len(req.Body) > limit {
		return nil, &Error{Code: CodeTooLarge, Op: "tether: handle", Message: "request body is too large"}
	}
	switch req.Op {
	case OpAccept:
		return n.handleAccept(ctx, req)
	case OpStatus:
		return n.handleStatus(ctx, req)
	case OpPush:
		return n.handlePush(ctx, req)
	case OpPoll:
		return n.handlePoll(ctx, req)
	case OpClose:
		return n.handleClose(ctx, req)
	case OpResume:
		return n.handleResume(ctx, req)
	}
	return nil, &Error{Code: CodeProtocol, Op: "tether: handle", Message: "unknown operation"}
}

// authenticate checks a request addressed to one connection (the token's
// sub) and signed with the key pinned for its peer, and records its nonce.
// Every failure is the same refusal.
func (n *Node) authenticate(ctx context.Context, op string, req *Request) (*Connection, *requestClaims, error) {
	now := n.clock.Now()
	var c *Connection
	claims, err := verifyMessage(n.messages, op, req.Auth, req.Body, req.Target, now, n.endpoint, req.Op, "", func(kid string, cl jwt.Claims) (ed25519.PublicKey, error) {
		sub, _ := cl.GetSubject()
		if checkID("sub", sub) != nil {
			return nil, refused(op)
		}
		got, err := n.store.GetConnection(ctx, sub)
		if err != nil {
			return nil, refused(op)
		}
		c = got
		return pinnedKey(op, c.RemoteKey)(kid, cl)
	})
	if err != nil || claims.Issuer != c.RemoteInstance {
		return nil, nil, refused(op)
	}
	if !n.fresh(ctx, claims, now) {
		return nil, nil, refused(op)
	}
	return c, claims, nil
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

// handlePush applies a batch from a peer and answers with the highest
// sequence number applied.
func (n *Node) handlePush(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle push"
	c, claims, err := n.authenticate(ctx, op, req)
	if err != nil {
		return nil, err
	}
	if err := n.deliverable(op, c); err != nil {
		return nil, err
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
		msgs[i] = Message{ConnectionID: c.ID, Seq: m.Seq, Payload: m.Payload}
	}
	cursor, err := n.deliver(ctx, c.ID, msgs)
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
	return n.answer(ctx, op, c, claims, reply)
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
	conns := make([]*Connection, len(body.Connections))
	for i, pc := range body.Connections {
		if checkID("id", pc.ID) != nil || pc.Cursor < 0 {
			return nil, refused(op)
		}
		c, err := n.store.GetConnection(ctx, pc.ID)
		if err != nil {
			return nil, refused(op)
		}
		ids[i], conns[i] = pc.ID, c
	}
	now := n.clock.Now()
	claims, err := verifyMessage(n.messages, op, req.Auth, req.Body, req.Target, now, n.endpoint, OpPoll, "", pinnedKey(op, conns[0].RemoteKey))
	if err != nil {
		return nil, refused(op)
	}
	for _, c := range conns {
		if c.RemoteInstance != claims.Issuer || !c.RemoteKey.Equal(conns[0].RemoteKey) {
			return nil, refused(op)
		}
	}
	if !n.fresh(ctx, claims, now) {
		return nil, refused(op)
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
		return n.answer(ctx, op, conns[0], claims, reply)
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

// handleClose records that the peer deleted the connection.
func (n *Node) handleClose(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle close"
	c, claims, err := n.authenticate(ctx, op, req)
	if err != nil {
		return nil, err
	}
	n.peerDeleted(ctx, c.ID)
	return n.answer(ctx, op, c, claims, struct{}{})
}

// handleResume wakes the sender of a connection the peer activated again.
func (n *Node) handleResume(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle resume"
	c, claims, err := n.authenticate(ctx, op, req)
	if err != nil {
		return nil, err
	}
	n.signal(c.ID)
	return n.answer(ctx, op, c, claims, struct{}{})
}

// answer signs v as the response to a request on connection c.
func (n *Node) answer(ctx context.Context, op string, c *Connection, req *requestClaims, v any) (*Response, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, Wrap(CodeInternal, op, err)
	}
	key, err := n.signingKey(c)
	if err != nil {
		return nil, err
	}
	nonce, err := randomToken(n.rand)
	if err != nil {
		return nil, err
	}
	auth, err := signedMessage(key, n.ID(), "", req.Op, req.Issuer, body, n.clock.Now(), nonce, req.ID)
	if err != nil {
		return nil, err
	}
	return &Response{Auth: auth, Body: body}, nil
}

// fresh reports whether a request's nonce is seen for the first time: in
// this process, and, when the Store is shared with other processes, in
// all of them. A Store failure counts as not fresh: the caller retries.
func (n *Node) fresh(ctx context.Context, c *requestClaims, now time.Time) bool {
	key := c.Issuer + "/" + c.ID
	if !n.replays.fresh(key, now) {
		return false
	}
	ns, ok := n.store.(NonceStore)
	if !ok || !n.shared {
		return true
	}
	ok, err := ns.RememberNonce(ctx, key, now, now.Add(2*RequestSkew+time.Second))
	if err != nil {
		n.log.WarnContext(ctx, "tether: record request nonce", "err", err)
	}
	return ok && err == nil
}

// handleAccept runs on a public initiator: an acceptor presents the code.
func (n *Node) handleAccept(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle accept"
	var body acceptRequest
	if err := decodeBody(op, req.Body, MaxRequestBody, &body); err != nil {
		return nil, err
	}
	key, ok := decodeKey(body.Key)
	if !ok {
		return nil, refused(op)
	}
	now := n.clock.Now()
	claims, err := verifyMessage(n.messages, op, req.Auth, req.Body, req.Target, now, n.endpoint, OpAccept, "", pinnedKey(op, key))
	if err != nil || claims.Issuer != body.Instance {
		return nil, refused(op)
	}
	inv, err := n.invites.decode(op, body.Code, now, n.keys.Load())
	if err != nil {
		return nil, err
	}
	if claims.Subject != inv.Connection {
		return nil, refused(op)
	}
	if !n.fresh(ctx, claims, now) {
		return nil, refused(op)
	}
	for _, err := range []error{
		checkID("instance", body.Instance),
		checkID("connection", body.Connection),
		checkURLSyntax("endpoint", body.Endpoint, true),
		checkText("name", body.Name, 1, MaxShortNameLen),
	} {
		if err != nil {
			return nil, withOp(op, err)
		}
	}
	if body.Endpoint != "" {
		// This side will call the acceptor's endpoint later.
		if err := n.policy.Check(body.Endpoint); err != nil {
			return nil, err
		}
	}
	peer := &verifiedReply{
		peerReply: peerReply{Instance: body.Instance, Key: body.Key, Connection: body.Connection, Endpoint: body.Endpoint, Name: body.Name},
		key:       key,
	}
	err = n.completeAsInitiator(WithActor(ctx, ActorRemote), inv.Connection, inv.ID, peer, "accepted by "+body.Name)
	if err != nil {
		return nil, err
	}
	c, err := n.store.GetConnection(ctx, inv.Connection)
	if err != nil {
		return nil, err
	}
	return n.reply(ctx, op, c, claims, false)
}

// handleStatus runs on a public acceptor: a private initiator asks whether
// its invitation was accepted.
func (n *Node) handleStatus(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle status"
	c, claims, err := n.authenticate(ctx, op, req)
	if err != nil {
		return nil, err
	}
	if c.Role != RoleAcceptor {
		return nil, refused(op)
	}
	if c.Status == StatusDeleted {
		return nil, &Error{Code: CodeRevoked, Op: op, Message: "the connection was deleted on this side"}
	}
	return n.reply(ctx, op, c, claims, true)
}

// reply answers a handshake request with this side's introduction, signed
// with the key the peer pinned; withProof adds the proof that this side
// holds the invitation code.
func (n *Node) reply(ctx context.Context, op string, c *Connection, req *requestClaims, withProof bool) (*Response, error) {
	key, err := n.signingKey(c)
	if err != nil {
		return nil, err
	}
	r := peerReply{
		Instance: n.ID(), Key: base64.RawURLEncoding.EncodeToString(key.Public()),
		Connection: c.ID, Endpoint: n.endpoint, Name: c.LocalName,
	}
	if withProof {
		r.Proof = acceptProof(c.Invitation, key.Public())
	}
	return n.answer(ctx, op, c, req, r)
}
