package tether

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
	"github.com/tetherkit/tether/internal/wire"
)

// request is one signed request to a peer and how to verify its answer.
type request struct {
	endpoint string
	op       Op
	sub      string // the connection it is for, at the peer
	body     []byte
	key      InstanceKey // signs the request
	// withKey puts the public half of key in the token, for a receiver
	// that does not know it yet (an acceptor presenting a code).
	withKey bool
	// answeredBy is the key that must sign the answer: the one pinned for
	// the peer, or, in handshake answers, the one the token carries.
	answeredBy wire.KeyLookup
}

// call signs and sends r, verifies the answer's token before anything of
// its body is read, and returns the body and the token's claims. A signed
// refusal is returned as its *Error, with the peer's code (and the body
// and claims): only such an error may change a connection. Anything else
// that goes wrong is CodeUnavailable, whatever the transport or the peer
// claimed (the claim is kept as the cause, as a sanitised summary).
func (n *Node) call(ctx context.Context, op string, r request) ([]byte, *wire.Claims, error) {
	if n.transport == nil {
		return nil, nil, &Error{Code: CodeUnavailable, Op: op, Message: "no transport configured"}
	}
	if inDelivery(ctx) {
		return nil, nil, errInDelivery(op)
	}
	nonce, err := randomToken(n.rand)
	if err != nil {
		return nil, nil, Wrap(CodeInternal, op, err)
	}
	tok := wire.Token{
		Instance: n.ID(), Audience: r.endpoint, Op: string(r.op), Subject: r.sub,
		Body: r.body, Now: n.clock.Now(), Nonce: nonce,
	}
	if r.withKey {
		tok.Key = base64.RawURLEncoding.EncodeToString(r.key.Public())
	}
	auth, err := wire.SignToken(wireKey(r.key), tok)
	if err != nil {
		return nil, nil, Wrap(CodeInternal, op, err)
	}
	timeout := n.timeout
	if r.op == OpPoll {
		timeout += n.pollWait
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := n.transport.Call(cctx, r.endpoint, &Request{Op: r.op, Auth: auth, Body: r.body})
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, contextError(op, ctx.Err())
		}
		return nil, nil, n.unsigned(op, err)
	}
	claims, err := n.verify(op, wire.Check{
		Auth: resp.Auth, Body: resp.Body, Op: string(r.op), InReplyTo: nonce,
		Lookup: r.answeredBy,
	})
	if err != nil {
		return nil, nil, n.unsigned(op, err)
	}
	if err := refusedIn(op, resp.Body); err != nil {
		return resp.Body, claims, err // with the body, for callers that check more
	}
	return resp.Body, claims, nil
}

// refusedIn returns the refusal a verified answer body carries, if any.
func refusedIn(op string, body []byte) error {
	// A Node marshals a refusal as refusalBody, and no reply starts so:
	// other answers are decoded once, by their caller.
	if !bytes.HasPrefix(body, []byte(`{"refused":`)) {
		return nil
	}
	var r refusalBody
	if json.Unmarshal(body, &r) != nil || r.Refused == nil {
		return nil
	}
	code := r.Refused.Code
	if code == "" {
		code = CodeProtocol
	}
	return &Error{
		Code: code, Op: op, Message: "the peer refused: " + sanitize(r.Refused.Message),
		RetryAfter: min(time.Duration(max(r.Refused.RetryMS, 0))*time.Millisecond, time.Hour),
	}
}

// unsigned turns a failure to get a signed answer into a transient error
// that keeps a short, sanitised summary of what was said.
func (n *Node) unsigned(op string, err error) error {
	e := remoteFailure(op, err, "the peer could not be reached", "no signed answer from the peer")
	e.RetryAfter = min(e.RetryAfter, n.retryMax)
	return e
}

// remoteFailure is CodeUnavailable for a request to another instance that
// ended in err: unreachable when err is not a *Error, otherwise noAnswer
// with the claimed code, and the claim kept as the cause, code and summary
// only: it informs (errors.Is finds its code) but never changes a
// connection. RetryAfter is the claim's.
func remoteFailure(op string, err error, unreachable, noAnswer string) *Error {
	var e *Error
	if !errors.As(err, &e) {
		return &Error{Code: CodeUnavailable, Op: op, Message: unreachable, Err: err}
	}
	msg := noAnswer
	if e.Code != "" && e.Code != CodeUnavailable {
		msg += " (" + sanitize(string(e.Code)) + ")"
	}
	claim := &Error{Code: e.Code, Message: sanitize(e.Message)}
	if e.Code == CodeUnavailable {
		claim.Err = e.Err // a local failure to reach the remote instance
	}
	return &Error{Code: CodeUnavailable, Op: op, Message: msg, Err: claim, RetryAfter: e.RetryAfter}
}

// maxSummary bounds text kept from a peer's answer, in runes.
const maxSummary = 120

// sanitize returns s without control, format or invalid characters, white
// space folded, at most maxSummary runes.
func sanitize(s string) string {
	var b strings.Builder
	n, space := 0, false
	for _, r := range s {
		switch {
		case r == utf8.RuneError, unicode.Is(unicode.Cf, r), unicode.IsControl(r) && !unicode.IsSpace(r):
			continue
		case unicode.IsSpace(r):
			space = b.Len() > 0
			continue
		case !unicode.IsPrint(r):
			continue
		}
		if n >= maxSummary {
			b.WriteString("…")
			break
		}
		if space {
			b.WriteByte(' ')
			space = false
			n++
		}
		b.WriteRune(r)
		n++
	}
	return b.String()
}

// exchange sends a request on connection c to its peer and decodes the
// verified answer into reply (when not nil).
func (n *Node) exchange(ctx context.Context, op string, c *Connection, o Op, body []byte, reply any) error {
	_, err := n.exchangeKey(ctx, op, c, o, body, reply)
	return err
}

// exchangeKey is exchange that also reports whether the answer was
// signed with the peer's pinned key (not its previous one).
func (n *Node) exchangeKey(ctx context.Context, op string, c *Connection, o Op, body []byte, reply any) (current bool, err error) {
	key, err := n.signingKey(c)
	if err != nil {
		return false, err
	}
	resp, _, err := n.call(ctx, op, request{
		endpoint: c.RemoteURL, op: o, sub: c.RemoteConnection, body: body, key: key,
		answeredBy: n.answerKeys(ctx, op, c, &current),
	})
	if err == nil && current && c.RemotePreviousKey != nil && c.ID != "" {
		n.peerUsesNewKey(ctx, c, c.RemoteKey)
	}
	if err != nil || reply == nil {
		return current, err
	}
	return current, decodeBody(op, resp, n.MaxBody(), reply)
}

// answerKeys is peerKeys for the answers to requests on c, which may have
// been read before the peer's latest key change was applied: a key that
// does not match has the connection read again.
func (n *Node) answerKeys(ctx context.Context, op string, c *Connection, current *bool) wire.KeyLookup {
	return func(kid string, cl jwt.Claims) (ed25519.PublicKey, error) {
		k, err := peerKeys(op, c, current)(kid, cl)
		if err == nil || c.ID == "" {
			return k, err
		}
		fresh, ferr := n.store.GetConnection(ctx, c.ID)
		if ferr != nil || fresh.RemoteKey.Equal(c.RemoteKey) && fresh.RemotePreviousKey.Equal(c.RemotePreviousKey) {
			return nil, err
		}
		*c = *fresh // the caller's view follows: it may clear the previous key
		return peerKeys(op, c, current)(kid, cl)
	}
}

// signingKey returns the key c's peer has pinned for this side.
func (n *Node) signingKey(c *Connection) (InstanceKey, error) {
	if k, ok := n.ownKey(c.LocalKeyID); ok {
		return k, nil
	}
	return InstanceKey{}, &Error{Code: CodeUnauthenticated, Op: "tether: sign", Message: "this instance no longer holds the key this connection's peer knows"}
}

// decodeBody strictly decodes a JSON body into v.
func decodeBody(op string, body []byte, max int, v any) error {
	if len(body) > max {
		return &Error{Code: CodeInvalid, Op: op, Message: "body is too large"}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &Error{Code: CodeProtocol, Op: op, Message: "body is not valid JSON for this operation"}
	}
	return nil
}

func decodeKey(s string) (ed25519.PublicKey, bool) {
	k, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return nil, false
	}
	return k, true
}
