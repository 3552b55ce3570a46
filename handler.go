package tether

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"

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
	if len(req.Body) > MaxRequestBody {
		return nil, &Error{Code: CodeInvalid, Op: "tether: handle", Message: "request body is too large"}
	}
	switch req.Op {
	case OpAccept:
		return n.handleAccept(ctx, req)
	case OpStatus:
		return n.handleStatus(ctx, req)
	}
	return nil, &Error{Code: CodeProtocol, Op: "tether: handle", Message: "unknown operation"}
}

// handleAccept runs on a public initiator: an acceptor presents the code.
func (n *Node) handleAccept(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle accept"
	var body acceptRequest
	if err := decodeBody(op, req.Body, &body); err != nil {
		return nil, err
	}
	key, ok := decodeKey(body.Key)
	if !ok {
		return nil, refused(op)
	}
	now := n.clock.Now()
	claims, err := verifyMessage(n.messages, op, req.Auth, req.Body, now, OpAccept, "", pinnedKey(op, key))
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
	if !n.replays.fresh(claims.Issuer+"/"+claims.ID, now) {
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
	return n.reply(op, c, OpAccept, claims, "")
}

// handleStatus runs on a public acceptor: a private initiator asks whether
// its invitation was accepted.
func (n *Node) handleStatus(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle status"
	now := n.clock.Now()
	var c *Connection
	claims, err := verifyMessage(n.messages, op, req.Auth, req.Body, now, OpStatus, "", func(kid string, cl jwt.Claims) (ed25519.PublicKey, error) {
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
	if err != nil || c.Role != RoleAcceptor || claims.Issuer != c.RemoteInstance {
		return nil, refused(op)
	}
	if !n.replays.fresh(claims.Issuer+"/"+claims.ID, now) {
		return nil, refused(op)
	}
	if c.Status == StatusDeleted {
		return nil, &Error{Code: CodeRevoked, Op: op, Message: "the connection was deleted on this side"}
	}
	return n.reply(op, c, OpStatus, claims, "proof")
}

// reply answers a handshake request with this side's introduction, signed
// with the key the peer pinned.
func (n *Node) reply(op string, c *Connection, o Op, req *requestClaims, proof string) (*Response, error) {
	key, err := n.signingKey(c)
	if err != nil {
		return nil, err
	}
	r := peerReply{
		Instance: n.ID(), Key: base64.RawURLEncoding.EncodeToString(key.Public()),
		Connection: c.ID, Endpoint: n.endpoint, Name: c.LocalName,
	}
	if proof != "" {
		r.Proof = acceptProof(c.Invitation, key.Public())
	}
	body, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	nonce, err := randomToken(n.rand)
	if err != nil {
		return nil, err
	}
	auth, err := signedMessage(key, n.ID(), o, req.Issuer, body, n.clock.Now(), nonce, req.ID)
	if err != nil {
		return nil, err
	}
	return &Response{Auth: auth, Body: body}, nil
}
