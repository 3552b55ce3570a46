package tether

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"sync"

	"github.com/golang-jwt/jwt/v5"
	"github.com/tetherkit/tether/internal/wire"
)

// Lifecycle news travels as control messages: a change of status or key is
// stored together with a notice in the connection's outbox, in one atomic
// step (Store.UpdateAndNotify), and the notice reaches the peer through
// the same ordered, acknowledged path as data messages. So it survives
// lost requests and restarts, and the peer applies it once, in order.

// Notice types.
const (
	noticePaused    = "paused"
	noticeActivated = "activated"
	noticeDeleted   = "deleted"
	noticeRekey     = "rekey"
)

// notice is the payload of a control message.
type notice struct {
	Type string `json:"type"`
	// Key and Proof, in a rekey notice: the sender's new public key, and
	// its signature by that key of rekeyProof, showing the sender holds it.
	Key   string `json:"key,omitempty"`
	Proof string `json:"proof,omitempty"`
}

func encodeNotice(nt notice) []byte {
	b, _ := json.Marshal(nt) // a struct of strings always marshals
	return b
}

// rekeyProof is what a new key signs in a rekey notice: the instance that
// announces it and the key's ID.
func rekeyProof(instance, kid string) []byte {
	return []byte("tether rekey v1\x00" + instance + "\x00" + kid)
}

// notifies reports whether a connection in status s has a peer to tell
// about its changes: one whose handshake is complete.
func notifies(c *Connection) bool {
	return c.Kind == KindPeer && c.RemoteConnection != "" && c.Status != StatusPending
}

// heldSend returns the part of msgs (ascending Seq) c may deliver now.
// While c is active and its peer has not paused, that is all of them.
// Otherwise it is those up to and including its latest notice: a pause
// (or deletion) takes effect after what was sent before it, and the peer
// learns of it; messages sent later wait.
func heldSend(c *Connection, msgs []Message) []Message {
	if c.Status == StatusActive && c.RemoteStatus != StatusPaused {
		return msgs
	}
	i := 0
	for i < len(msgs) && msgs[i].Seq <= c.NoticeSeq {
		i++
	}
	return msgs[:i]
}

// heldReceive returns the part of msgs a connection in status s takes now:
// all of them while it is active; otherwise only the control messages that
// lead, so that a paused side still learns of its peer's deletion or key
// change but takes no data.
func heldReceive(s Status, msgs []Message) []Message {
	if s == StatusActive {
		return msgs
	}
	i := 0
	for i < len(msgs) && msgs[i].Control {
		i++
	}
	return msgs[:i]
}

// applyNotice applies a control message from connection id's peer. It runs
// where a data message would be handed to the Receiver: in the delivery's
// transaction when the Store has one.
func (n *Node) applyNotice(ctx context.Context, id string, payload []byte) error {
	const op = "tether: apply notice"
	var nt notice
	if err := json.Unmarshal(payload, &nt); err != nil {
		return &Error{Code: CodeProtocol, Op: op, Message: "the peer sent a notice that is not valid JSON"}
	}
	rctx := WithActor(ctx, ActorRemote)
	switch nt.Type {
	case noticePaused, noticeActivated:
		status := StatusPaused
		if nt.Type == noticeActivated {
			status = StatusActive
		}
		return n.peerStatus(ctx, op, id, status)
	case noticeDeleted:
		return n.peerDeletedErr(rctx, id)
	case noticeRekey:
		key, ok := decodeKey(nt.Key)
		proof, err := base64.RawURLEncoding.Strict().DecodeString(nt.Proof)
		if !ok || err != nil {
			return &Error{Code: CodeProtocol, Op: op, Message: "the peer's key change notice is malformed"}
		}
		_, err = n.edit(rctx, op, id, func(c *Connection) (*Event, error) {
			if c.Status == StatusDeleted || c.RemoteKey.Equal(key) {
				return nil, nil
			}
			if !ed25519.Verify(key, rekeyProof(c.RemoteInstance, KeyID(key)), proof) {
				return nil, &Error{Code: CodeProtocol, Op: op, Message: "the peer's key change notice does not prove it holds the key"}
			}
			if c.RemotePreviousKey == nil {
				// The peer may sign with the key it had until it learns
				// this side has the new one.
				c.RemotePreviousKey = c.RemoteKey
			}
			c.RemoteKey = key
			ev := n.event(rctx, EventKeyChanged, "the partner's key changed to "+KeyID(key))
			return &ev, nil
		})
		n.later(ctx, n.notifyChanged) // a private side polls with the new key
		return err
	}
	// A notice of a later protocol version: nothing this side can do.
	n.log.InfoContext(ctx, "tether: unknown notice from the peer skipped", "connection", id)
	return nil
}

// peerStatus records that connection id's peer is now in status (paused
// or active). A notice in order tells it; so does, while this side holds
// and takes no data, the latest notice in a batch it refuses or the
// status in a poll answer, because a notice queued behind data would not
// reach a held side until it is active again. Telling it twice records
// one event.
func (n *Node) peerStatus(ctx context.Context, op, id string, status Status) error {
	rctx := WithActor(ctx, ActorRemote)
	t, detail := EventPeerPaused, "paused by the partner"
	if status == StatusActive {
		t, detail = EventPeerActivated, "activated by the partner"
	}
	_, err := n.edit(rctx, op, id, func(c *Connection) (*Event, error) {
		if c.Status == StatusDeleted || c.RemoteStatus == status || c.RemoteStatus == "" && status == StatusActive {
			return nil, nil
		}
		c.RemoteStatus = status
		ev := n.event(rctx, t, detail)
		return &ev, nil
	})
	n.later(ctx, func() { n.signal(id) }) // the pusher waits for, or stops at, this
	return err
}

// heardStatus records the peer status announced by the last pause or
// activation notice in msgs, a batch a held connection cannot take whole.
func (n *Node) heardStatus(ctx context.Context, op, id string, msgs []Message) error {
	if s := latestStatus(msgs); s != "" {
		return n.peerStatus(ctx, op, id, s)
	}
	return nil
}

// latestStatus returns the status announced by the last pause or
// activation notice in msgs, or "" when they hold none.
func latestStatus(msgs []Message) Status {
	for i := len(msgs) - 1; i >= 0; i-- {
		var nt notice
		if !msgs[i].Control || json.Unmarshal(msgs[i].Payload, &nt) != nil {
			continue
		}
		switch nt.Type {
		case noticePaused:
			return StatusPaused
		case noticeActivated:
			return StatusActive
		}
	}
	return ""
}

// acknowledged records that the peer has connection c's outbox up to upTo:
// the messages leave the outbox, and a key change the peer has now applied
// takes effect.
//
// c may have been read before the batch acknowledged was: fresh says it
// was not (a poll's), and a batch that carried a notice has c read again.
func (n *Node) acknowledged(ctx context.Context, c *Connection, upTo int64, fresh bool) error {
	if err := n.store.AckOutbox(ctx, c.ID, upTo); err != nil {
		return err
	}
	if fresh && (c.PendingKeyID == "" || upTo < c.NoticeSeq) {
		return nil
	}
	_, err := n.edit(WithActor(ctx, ActorSystem), "tether: key change acknowledged", c.ID, func(c *Connection) (*Event, error) {
		if c.PendingKeyID == "" || upTo < c.NoticeSeq {
			return nil, nil
		}
		c.LocalKeyID, c.PendingKeyID = c.PendingKeyID, ""
		ev := n.event(WithActor(ctx, ActorSystem), EventKeyChanged, "this side now signs with key "+c.LocalKeyID)
		return &ev, nil
	})
	if err == nil {
		n.notifyChanged() // a private side regroups its polls by key
	}
	return err
}

// peerKeys returns a key lookup that accepts the peer's pinned key and,
// during a key change, its previous one; *current reports whether the
// pinned key was the one used.
func peerKeys(op string, c *Connection, current *bool) wire.KeyLookup {
	return func(kid string, cl jwt.Claims) (ed25519.PublicKey, error) {
		if len(c.RemoteKey) == ed25519.PublicKeySize && kid == KeyID(c.RemoteKey) {
			if current != nil {
				*current = true
			}
			return c.RemoteKey, nil
		}
		if len(c.RemotePreviousKey) == ed25519.PublicKeySize && kid == KeyID(c.RemotePreviousKey) {
			return c.RemotePreviousKey, nil
		}
		return pinnedKey(op, c.RemoteKey)(kid, cl)
	}
}

// peerUsesNewKey forgets a peer's previous key once it signed with the
// new one, used: it knows this side has it. A key change applied
// meanwhile (another request's) keeps its previous key.
func (n *Node) peerUsesNewKey(ctx context.Context, c *Connection, used ed25519.PublicKey) {
	if c.RemotePreviousKey == nil {
		return
	}
	_, err := n.edit(WithActor(ctx, ActorSystem), "tether: key change complete", c.ID, func(c *Connection) (*Event, error) {
		if c.RemotePreviousKey == nil || !c.RemoteKey.Equal(used) {
			return nil, nil
		}
		c.RemotePreviousKey = nil
		ev := n.event(WithActor(ctx, ActorSystem), EventKeyChanged, "the partner now signs with key "+KeyID(c.RemoteKey)+"; its previous key is no longer accepted")
		return &ev, nil
	})
	if err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: forget the peer's previous key", "connection", c.ID, "err", err)
	}
}

// Work done after a delivery's transaction commits.

type laterKey struct{}

// afterCommit collects what a Receiver's calls would do at once (wake a
// sender, pass an event to OnEvent), to do it after the delivery's
// transaction commits, and only if it does: a sender woken earlier would
// not see the message yet, and an event of a write that is undone must not
// be told.
type afterCommit struct {
	mu    sync.Mutex
	funcs []func()
}

// later runs f after the delivery transaction ctx belongs to commits, or
// now when ctx belongs to none. f must not use ctx for store or network
// calls: the transaction it carries has ended by then (see detached).
func (n *Node) later(ctx context.Context, f func()) {
	if a, ok := ctx.Value(laterKey{}).(*afterCommit); ok {
		a.mu.Lock()
		a.funcs = append(a.funcs, f)
		a.mu.Unlock()
		return
	}
	f()
}

// take returns the collected work and forgets it.
func (a *afterCommit) take() []func() {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.funcs
	a.funcs = nil
	return f
}

// inDelivery reports whether ctx is a Receiver's inside a Store
// transaction: calls that wait on peers cannot be made there.
func inDelivery(ctx context.Context) bool {
	_, ok := ctx.Value(laterKey{}).(*afterCommit)
	return ok
}

// errInDelivery is the refusal of a call that would wait on a peer while
// a Receiver holds the store's transaction.
func errInDelivery(op string) error {
	return &Error{Code: CodeInvalid, Op: op, Message: "cannot wait on a peer from inside a Receiver, which holds the store's transaction: do it after Receive returns"}
}

// detached returns a context for work done after a delivery's transaction
// committed: none of ctx's values (its transaction among them), bounded by
// the request timeout.
func (n *Node) detached() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), n.timeout)
}
