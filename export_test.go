package tether

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"time"

	"github.com/tetherkit/tether/internal/wire"
)

// SignResponse signs a response to the request whose token is reqAuth with
// priv, as an impostor answering at a peer's URL would.
func SignResponse(priv ed25519.PrivateKey, instance string, op Op, reqAuth string, body []byte, now time.Time) string {
	var c wire.Claims
	payload := strings.Split(reqAuth, ".")[1]
	raw, _ := base64.RawURLEncoding.DecodeString(payload)
	_ = json.Unmarshal(raw, &c)
	key := wire.Key{ID: KeyID(priv.Public().(ed25519.PublicKey)), Private: priv}
	auth, err := wire.SignToken(key, wire.Token{Instance: instance, Op: string(op), Subject: c.Issuer, Body: body, Now: now, Nonce: "AAAAAAAAAAAAAAAAAAAAAA", InReplyTo: c.ID})
	if err != nil {
		panic(err)
	}
	return auth
}

// SignRequest signs a request from node n as n would, for any connection
// and body the test chooses; its token carries n's key, as an acceptor's
// does.
func SignRequest(n *Node, endpoint string, op Op, sub string, body []byte) *Request {
	ks := n.keys.Load()
	nonce, err := randomToken(n.rand)
	if err != nil {
		panic(err)
	}
	auth, err := wire.SignToken(wireKey(ks.current), wire.Token{Instance: ks.instance, Audience: endpoint, Op: string(op), Subject: sub, Body: body, Now: n.clock.Now(), Nonce: nonce, Key: base64.RawURLEncoding.EncodeToString(ks.public)})
	if err != nil {
		panic(err)
	}
	return &Request{Op: op, Auth: auth, Body: body}
}

// Backoff exposes the node's retry delay.
func Backoff(n *Node, attempt int, err error) time.Duration { return n.backoff(attempt, err) }

// AcceptorID is the connection ID an acceptor of inv uses.
func AcceptorID(inv *Invitation) string { return derivedID("conn", inv.IssuedAt, inv.Issuer, inv.ID) }

// RunTracked runs n as Run does, and returns with it a count of the
// connections n and that Run keep state for (caches, waiters, delivery
// locks, pushers, pollers' connections).
func RunTracked(ctx context.Context, n *Node) (run func() error, tracked func() int) {
	r := newRunner(n)
	return func() error { return n.run(ctx, r) }, func() int { return n.trackedConnections() + r.tracked() }
}

// AcceptProof is the proof an acceptor gives that it holds the code of the
// invitation jti.
func AcceptProof(jti string, key ed25519.PublicKey) string { return acceptProof(jti, key) }
