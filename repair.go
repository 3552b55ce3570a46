package tether

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"time"

	"github.com/tetherkit/tether/internal/wire"
)

// A peer's key that may be compromised is revoked by the host: the
// connection becomes Inactive, nothing signed with that key is accepted
// any more, and work waits on both sides. Re-pairing brings it back: a
// fresh code exchanged out of band, like an invitation, between the same
// two connections, which pins new keys on both sides and keeps the
// connection's settings, history and queues.

// RevokePeerKey stops trusting the key the peer of connection id signs
// with, because it may be compromised: the connection becomes Inactive
// with an EventKeyRevoked event (detail says why), requests signed with
// that key are refused, and nothing is sent or acknowledged on the
// connection until Reauthorize re-pairs it. Messages keep queuing on both
// sides; none is lost. Only an Active or Paused peer connection can be
// revoked (CodeInvalidTransition otherwise).
func (n *Node) RevokePeerKey(ctx context.Context, id, detail string) (*Connection, error) {
	const op = "tether: revoke peer key"
	if err := checkText("detail", detail, 0, MaxDescriptionLen); err != nil {
		return nil, withOp(op, err)
	}
	c, err := n.edit(ctx, op, id, func(c *Connection) (*Event, error) {
		next, ok := Next(c.Status, ActionAuthLost)
		if c.Kind != KindPeer || !ok || c.RemoteKey == nil {
			return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "only an active or paused peer connection has a key to revoke"}
		}
		note := "the partner's key " + KeyID(c.RemoteKey) + " was revoked"
		if detail != "" {
			note += ": " + detail
		}
		c.Status, c.RemotePreviousKey = next, nil
		ev := n.event(ctx, EventKeyRevoked, note)
		return &ev, nil
	})
	if err == nil {
		n.later(ctx, func() {
			n.signal(id)
			n.notifyChanged()
		})
	}
	return c, err
}

// revoked reports whether c's peer key was revoked: an inactive peer
// connection.
func revoked(c *Connection) bool { return c.Kind == KindPeer && c.Status == StatusInactive }

// Reauthorize issues a re-pairing code for peer connection id, to pass to
// the partner's administrator out of band, like an invitation code; the
// partner accepts it with Accept on its side. Accepting it pins this
// instance's current key at the partner and the partner's current key
// here, on the same two connections: their settings, history and queued
// messages stay, and an Inactive side (its peer's key revoked) becomes
// Active, and each side tells the other it is active. The code expires
// after the invitation TTL and can be used once. The side that issues it
// must be public: the partner calls it.
//
// A revoked key is never trusted again: the side whose key was revoked
// rotates it (RotateKey) before the code is accepted, or the acceptance is
// refused with CodeInvalid. A connection whose partner's key was not
// revoked accepts only a code signed with that partner's key, so a code
// minted by anyone else is refused.
func (n *Node) Reauthorize(ctx context.Context, id string) (*Connection, string, error) {
	const op = "tether: reauthorize"
	if n.endpoint == "" {
		return nil, "", &Error{Code: CodeInvalid, Op: op, Message: "this instance is private: ask the partner's administrator to call Reauthorize on their side, and accept its code here"}
	}
	jti, err := randomToken(n.rand)
	if err != nil {
		return nil, "", Wrap(CodeInternal, op, err)
	}
	now := n.clock.Now().Truncate(time.Second) // JWT times have whole seconds
	ks := n.keys.Load()
	var code string
	c, err := n.edit(ctx, op, id, func(c *Connection) (*Event, error) {
		if c.Kind != KindPeer || c.RemoteConnection == "" || c.Status == StatusPending || c.Status == StatusDeleted {
			return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "only a connected peer connection can be re-paired"}
		}
		// The partner checks the code against the key it trusts for this
		// side, unless it revoked that key: then this side must have a new
		// one (RotateKey), which the code introduces.
		signer := ks.current
		if revoked(c) {
			k, ok := n.ownKey(c.LocalKeyID)
			if !ok {
				return nil, &Error{Code: CodeUnknownKey, Op: op, Message: "this instance no longer holds the key the partner knows"}
			}
			signer = k
		}
		c.Invitation, c.InvitationExpires = jti, now.Add(n.ttl)
		code, err = encodeInvitation(&Invitation{
			ID: jti, Issuer: ks.instance, Connection: c.ID,
			Name: c.Name, Description: c.Description,
			InitiatorName: c.LocalName, AcceptorName: c.RemoteName, Mode: c.Mode,
			Endpoint: n.endpoint, Repairs: c.RemoteConnection,
			IssuedAt: now, NotBefore: now, ExpiresAt: c.InvitationExpires,
			Version: InvitationVersion,
		}, signer)
		if err != nil {
			return nil, err
		}
		ev := n.event(ctx, EventUpdated, "re-pairing code issued")
		return &ev, nil
	})
	if err != nil {
		return nil, "", err
	}
	return c, code, nil
}

// acceptRepair accepts a re-pairing code on the connection it names: it
// presents the code to the issuer with this instance's current key and,
// on the issuer's signed answer, pins the code's key.
func (n *Node) acceptRepair(ctx context.Context, op, code string, inv *Invitation) (*Connection, error) {
	c, err := n.store.GetConnection(ctx, inv.Repairs)
	if err != nil || c.Kind != KindPeer || c.RemoteInstance != inv.Issuer || c.RemoteConnection != inv.Connection ||
		c.Status == StatusPending || c.Status == StatusDeleted {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "the code re-pairs a connection this instance does not have"}
	}
	if inv.Endpoint == "" {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "a re-pairing code must come from a public instance"}
	}
	switch {
	case revoked(c) && inv.Key.Equal(c.RemoteKey):
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "the code is signed with the key this side revoked: the partner must rotate its key (RotateKey) and issue a new code"}
	case !revoked(c) && !inv.Key.Equal(c.RemoteKey) && !inv.Key.Equal(c.RemotePreviousKey):
		// Anyone can mint a code naming these connections: only the
		// partner's key makes it the partner's.
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "the code is not signed with the partner's key"}
	}
	if err := n.policy.Check(inv.Endpoint); err != nil {
		return nil, err
	}
	key := n.keys.Load().current
	body, err := json.Marshal(acceptRequest{
		Code: code, Instance: n.ID(), Key: base64.RawURLEncoding.EncodeToString(key.Public()),
		Endpoint: n.endpoint, Connection: c.ID, Name: c.LocalName,
	})
	if err != nil {
		return nil, Wrap(CodeInternal, op, err)
	}
	if _, _, err := n.call(ctx, op, request{
		endpoint: inv.Endpoint, op: OpAccept, sub: inv.Connection, body: body, key: key,
		withKey: true, answeredBy: pinnedKey(op, inv.Key),
	}); err != nil {
		return nil, err // the code is not used up by a failure: present it again
	}
	c, err = n.editWith(ctx, op, c.ID, func(c *Connection) (*Event, *notice, error) {
		n.repin(c, inv.Key, key.ID, inv.Endpoint)
		ev := n.event(ctx, EventReauthorized, "re-paired with the partner, whose key is now "+inv.KeyID)
		return &ev, activeNotice(c), nil
	})
	if err != nil {
		return nil, err
	}
	n.later(ctx, func() {
		n.signal(c.ID)
		n.notifyChanged()
	})
	return c, nil
}

// repin gives c the keys a re-pairing agreed on, and makes it Active if
// it was Inactive.
// activeNotice tells the partner this side is active, after a re-pairing
// that may have followed a pause: the partner would hold its messages.
func activeNotice(c *Connection) *notice {
	if c.Status != StatusActive {
		return nil
	}
	return &notice{Type: noticeActivated}
}

func (n *Node) repin(c *Connection, remote ed25519.PublicKey, localKeyID, remoteURL string) {
	c.RemoteKey, c.RemotePreviousKey = remote, nil
	c.LocalKeyID, c.PendingKeyID = localKeyID, ""
	c.RemoteURL = remoteURL
	if next, ok := Next(c.Status, ActionReauthorize); ok {
		c.Status = next
	}
}

// handleRepair answers an accept request that presents a re-pairing code
// this instance issued for connection inv.Connection: the acceptor must be
// the connection's peer, naming its side of it. The code is used once; a
// request repeated after a lost answer is answered again.
func (n *Node) handleRepair(ctx context.Context, op string, inv *Invitation, body *acceptRequest, key ed25519.PublicKey, claims *wire.Claims, refuse func(error) (*Response, error)) (*Response, error) {
	c, err := n.store.GetConnection(ctx, inv.Connection)
	if err != nil || c.Kind != KindPeer || c.Invitation != inv.ID || c.Status == StatusDeleted ||
		c.RemoteInstance != body.Instance || c.RemoteConnection != body.Connection || body.Connection != inv.Repairs {
		return refuse(&Error{Code: CodeRevoked, Op: op, Message: "the re-pairing code is not valid for this connection any more"})
	}
	if revoked(c) && key.Equal(c.RemoteKey) {
		return refuse(&Error{Code: CodeInvalid, Op: op, Message: "this side revoked that key: rotate it (RotateKey) and present the code again"})
	}
	if body.Endpoint != "" {
		if err := n.policy.Check(body.Endpoint); err != nil {
			return refuse(err)
		}
	}
	localKeyID := inv.KeyID // the acceptor pins the key that signed the code
	repaired := c.Clone()
	n.repin(repaired, key, localKeyID, body.Endpoint)
	ev := n.event(WithActor(ctx, ActorRemote), EventReauthorized, "re-paired by the partner, whose key is now "+KeyID(key))
	repaired.UpdatedAt = n.clock.Now()
	err = n.store.ConsumeInvitation(ctx, "repair/"+inv.ID, inv.ExpiresAt.Add(ClockSkew), repaired, ev)
	switch {
	case err == nil:
		c = repaired
		n.later(ctx, func() { n.emit(c.ID, ev) })
		if nt := activeNotice(c); nt != nil {
			// After a pause the partner holds its messages: say so.
			if moved, err := n.editWith(ctx, op, c.ID, func(c *Connection) (*Event, *notice, error) {
				ev := n.event(WithActor(ctx, ActorSystem), EventActivated, "active after the re-pairing; the partner is told")
				return &ev, nt, nil
			}); err == nil {
				c = moved
			}
		}
	case ErrorCode(err) == CodeAlreadyUsed || ErrorCode(err) == CodeConflict:
		// Used already: by this acceptor, whose answer was lost, or not.
		if c, err = n.store.GetConnection(ctx, inv.Connection); err != nil || !c.RemoteKey.Equal(key) {
			return refuse(&Error{Code: CodeAlreadyUsed, Op: op, Message: "the re-pairing code was already used"})
		}
	default:
		return refuse(err)
	}
	n.signal(c.ID)
	n.notifyChanged()
	return n.signAnswer(op, c, claims, n.introduction(c, false), false)
}
