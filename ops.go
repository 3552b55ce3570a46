package tether

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/tetherkit/tether/internal/wire"
)

// Op names a request one instance makes of another.
type Op string

// Operations between instances. Later protocol versions add more; a Node
// answers an unknown Op with CodeProtocol.
const (
	// OpAccept: the acceptor presents the invitation code to a public
	// initiator and introduces itself.
	OpAccept Op = "accept"
	// OpStatus: one side of a handshake asks the other whether the
	// invitation was accepted there (a private initiator asks a public
	// acceptor; an acceptor whose answer was lost asks a public initiator).
	OpStatus Op = "status"
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
	// OpInfo asks an instance what it is (Info: display name, protocol
	// version, configuration modes) before a connection exists
	// (Node.Probe). It is the one operation without authentication: the
	// request has no Auth and no Body, and the Response is unsigned.
	OpInfo Op = "info"
)

// operation is one row of the dispatch table.
type operation struct {
	op Op
	// maxBody bounds the request body.
	maxBody func(n *Node) int
	handle  func(n *Node, ctx context.Context, req *Request) (*Response, error)
}

func handshakeBody(*Node) int { return MaxRequestBody }

// operations is the dispatch table: every operation a Node answers, with
// its body limit and its handler. It is never modified.
var operations = [...]operation{
	{OpAccept, handshakeBody, (*Node).handleAccept},
	{OpStatus, handshakeBody, (*Node).handleStatus},
	{OpPush, (*Node).MaxBody, (*Node).handlePush},
	{OpPoll, func(*Node) int { return maxPollBody }, (*Node).handlePoll},
	{OpClose, handshakeBody, (*Node).handleClose},
	{OpResume, handshakeBody, (*Node).handleResume},
	{OpInfo, func(*Node) int { return 0 }, (*Node).handleInfo},
}

// Ops returns every operation a Node answers, for transports that route
// requests by operation (httptransport maps each to a path).
func Ops() []Op {
	out := make([]Op, len(operations))
	for i, o := range operations {
		out[i] = o.op
	}
	return out
}

// Known reports whether o is an operation a Node answers.
func (o Op) Known() bool {
	return slices.ContainsFunc(operations[:], func(x operation) bool { return x.op == o })
}

// Handle answers a request from a remote instance. Transports call it;
// hosts mount a transport's server side (httptransport.Handler) rather than
// calling it themselves.
//
// Once a request is authenticated, every answer is signed for the
// requester, refusals included (Response.Code tells a transport which);
// before that, refusals are errors, which the requester treats as a
// transient failure and never as a change of state.
//
// OpInfo is answered without authentication: its Auth is ignored, its
// Body must be empty, and the answer is this node's Info as JSON,
// unsigned. It reads no Store and changes nothing.
func (n *Node) Handle(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle"
	if req == nil {
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "no request"}
	}
	for _, o := range operations {
		if o.op != req.Op {
			continue
		}
		if len(req.Body) > o.maxBody(n) {
			return nil, &Error{Code: CodeTooLarge, Op: op, Message: "request body is too large"}
		}
		return o.handle(n, ctx, req)
	}
	return nil, &Error{Code: CodeProtocol, Op: op, Message: "unknown operation"}
}

// refused is the answer to any request that fails authentication. It is the
// same whether the connection does not exist, the signature is wrong or the
// key was revoked, so it reveals nothing.
func refused(op string) error {
	return &Error{Code: CodeUnauthenticated, Op: op, Message: "request refused"}
}

// authenticated is a request whose signature was checked against the key
// pinned for its connection's peer.
type authenticated struct {
	conn   *Connection
	claims *wire.Claims
	// late is why an authentic request is refused, signed, so the peer
	// learns why: dated outside ClockSkew, or signed with a key this side
	// revoked.
	late error
	// withKey puts this side's key in the answer's token, for a requester
	// that does not know it yet.
	withKey bool
	// key is the peer's key that signed the request: its pinned key, or
	// during a key change its previous one.
	key ed25519.PublicKey
}

// authenticate checks a request addressed to one connection (the token's
// sub) and signed with the key pinned for its peer, and records its nonce.
// It reads one connection from the Store, and only after the token's form
// is checked. Every failure is the same unsigned refusal, except a request
// that is authentic but dated outside ClockSkew: that comes back with its
// connection and the clock error, to be refused signed.
func (n *Node) authenticate(ctx context.Context, op string, req *Request) (*authenticated, error) {
	now := n.clock.Now()
	var (
		c       *Connection
		signer  ed25519.PublicKey
		current bool
	)
	claims, err := n.verify(op, wire.Check{
		Auth: req.Auth, Body: req.Body, Op: string(req.Op), Audience: n.endpoint,
		Target: req.Target, TargetPath: targetPath(n.endpoint, req.Op),
		Now: now, Skew: ClockSkew,
		Lookup: func(kid string, cl jwt.Claims) (ed25519.PublicKey, error) {
			sub, _ := cl.GetSubject()
			if checkID("sub", sub) != nil {
				return nil, refused(op)
			}
			got, err := n.store.GetConnection(ctx, sub)
			if err != nil {
				if ctx.Err() != nil {
					return nil, contextError(op, ctx.Err())
				}
				return nil, refused(op)
			}
			c = got
			signer, err = peerKeys(op, c, &current)(kid, cl)
			return signer, err
		},
	})
	if ErrorCode(err) == CodeClockSkew && c != nil && claims != nil && claims.Issuer == c.RemoteInstance {
		return &authenticated{conn: c, claims: claims, late: err}, nil
	}
	if ctx.Err() != nil {
		return nil, contextError(op, ctx.Err())
	}
	if err != nil || claims.Issuer != c.RemoteInstance || !n.fresh(ctx, claims.Issuer, claims.ID, now) {
		return nil, refused(op)
	}
	if revoked(c) && req.Op != OpPoll {
		// The host revoked this key: nothing signed with it is applied. The
		// refusal is signed, so the peer holds its messages instead of
		// retrying at once. A poll may still name the connection: it is
		// served nothing (handlePoll).
		return &authenticated{conn: c, claims: claims, late: &Error{
			Code: CodePaused, Op: op, RetryAfter: n.pausedRetry,
			Message: "the connection is inactive: this side revoked the key it was signed with; ask for a re-pairing code",
		}}, nil
	}
	if current && c.RemotePreviousKey != nil {
		// The peer signs with its new key: it knows this side has it.
		n.peerUsesNewKey(ctx, c, signer)
		c.RemotePreviousKey = nil
	}
	if c.Status == StatusPending && c.Role == RoleAcceptor && (req.Op == OpPush || req.Op == OpPoll) {
		// Only an initiator that recorded the acceptance polls or pushes.
		if c, err = n.peerConfirmed(ctx, c.ID); err != nil {
			return nil, Wrap(CodeUnavailable, op, err)
		}
	}
	return &authenticated{conn: c, claims: claims, key: signer}, nil
}

// serve authenticates a request on one connection, runs h, and signs what
// it returns: its reply, or its refusal.
func (n *Node) serve(ctx context.Context, op string, req *Request, h func(a *authenticated) (any, error)) (*Response, error) {
	a, err := n.authenticate(ctx, op, req)
	if err != nil {
		return nil, err
	}
	if a.late != nil {
		return n.refusal(op, a, a.late)
	}
	reply, err := h(a)
	if err != nil {
		return n.refusal(op, a, err)
	}
	return n.answer(op, a, reply)
}

// refusalBody is the signed body of a refusal.
type refusalBody struct {
	Refused *refusal `json:"refused"`
}

type refusal struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
	RetryMS int64  `json:"retry_ms,omitempty"`
	// Proof, when an acceptor refuses a status request, shows it holds
	// the invitation code, as in peerReply: the asker does not know its
	// key yet.
	Proof string `json:"proof,omitempty"`
}

// refusal signs err as the answer to an authenticated request.
func (n *Node) refusal(op string, a *authenticated, err error) (*Response, error) {
	var e *Error
	if !errors.As(err, &e) {
		e = &Error{Code: CodeInternal, Message: "internal error"}
	}
	msg := e.Message
	if msg == "" {
		msg = string(e.Code)
	}
	r := &refusal{Code: e.Code, Message: msg, RetryMS: e.RetryAfter.Milliseconds()}
	if a.claims.Op == string(OpStatus) && a.conn.Role == RoleAcceptor {
		if key, err := n.signingKey(a.conn); err == nil {
			r.Proof = acceptProof(a.conn.Invitation, key.Public())
		}
	}
	resp, serr := n.answer(op, a, refusalBody{Refused: r})
	if serr != nil {
		return nil, err
	}
	resp.Code, resp.RetryAfter = e.Code, e.RetryAfter
	return resp, nil
}

// answer signs v as the answer to an authenticated request, with the key
// the requester pinned for this side.
func (n *Node) answer(op string, a *authenticated, v any) (*Response, error) {
	return n.signAnswer(op, a.conn, a.claims, v, a.withKey)
}

// signAnswer signs v as the answer to the request claims, with the key
// c's peer pinned; withKey puts that key in the token, for a requester that
// does not know it yet (handshake answers).
func (n *Node) signAnswer(op string, c *Connection, claims *wire.Claims, v any, withKey bool) (*Response, error) {
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
		return nil, Wrap(CodeInternal, op, err)
	}
	tok := wire.Token{
		Instance: n.ID(), Op: claims.Op, Subject: claims.Issuer, Body: body,
		Now: n.clock.Now(), Nonce: nonce, InReplyTo: claims.ID,
	}
	if withKey || claims.Op == string(OpStatus) {
		// The asker of a status may not know this side's key yet.
		tok.Key = base64.RawURLEncoding.EncodeToString(key.Public())
	}
	auth, err := wire.SignToken(wireKey(key), tok)
	if err != nil {
		return nil, Wrap(CodeInternal, op, err)
	}
	return &Response{Auth: auth, Body: body}, nil
}

// fresh reports whether a request's nonce is seen for the first time: in
// this process, and, when the Store records nonces (NonceStore: stores
// that processes or Nodes share), in all of them. peer is whom the nonce
// is counted against: an authenticated peer's instance, or, for an accept
// request, the invitation it presents. A Store failure counts as not
// fresh: the caller retries.
func (n *Node) fresh(ctx context.Context, peer, nonce string, now time.Time) bool {
	if !n.replays.Fresh(peer, nonce, now, now.Add(nonceTTL)) {
		return false
	}
	ns, ok := n.store.(NonceStore)
	if !ok {
		return true
	}
	ok, err := ns.RememberNonce(ctx, peer+"/"+nonce, now, now.Add(nonceTTL))
	if err != nil {
		n.log.WarnContext(ctx, "tether: record request nonce", "err", err)
	}
	return ok && err == nil
}
