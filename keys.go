package tether

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base32"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"time"
)

// Instance is this installation's identity as a Store keeps it: a stable ID
// and its Ed25519 signing keys. The private keys are secrets: a Store that
// writes them anywhere durable seals them first.
type Instance struct {
	ID   string
	Keys []InstanceKey // the current key first, then retired keys, newest first
	// Version is incremented by the Store on every save (0: never saved).
	Version int64
}

// InstanceKey is one signing key of an instance.
type InstanceKey struct {
	ID      string             // KeyID of the public key
	Private ed25519.PrivateKey // secret
	Created time.Time
	Retired time.Time // zero while the key is current
	Expires time.Time // zero: never; after it the key no longer verifies
}

// Public returns the public half of k.
func (k InstanceKey) Public() ed25519.PublicKey { return k.Private.Public().(ed25519.PublicKey) }

// KeyID returns the key ID of an Ed25519 public key: the unpadded base64url
// encoding of the first 12 bytes of its SHA-256. It is what invitations and
// requests carry in their kid header and what Fingerprint shows people.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// idChars is the length of the random part of a tether ID.
const idChars = 26

// idEncoding is base32hex in lowercase: it sorts like the bytes it encodes.
var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// newID returns prefix_ followed by 16 bytes in base32hex: 6 bytes of
// milliseconds since the epoch, so IDs sort by creation time, then 10 random
// bytes.
func newID(prefix string, now time.Time, rnd io.Reader) (string, error) {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(now.UnixMilli())<<16)
	if _, err := io.ReadFull(rnd, b[6:]); err != nil {
		return "", fmt.Errorf("tether: read random: %w", err)
	}
	return prefix + "_" + idEncoding.EncodeToString(b[:]), nil
}

// derivedID returns an ID like newID's whose time part is t and whose
// remaining bytes are a hash of parts: the same inputs always give the same
// ID.
func derivedID(prefix string, t time.Time, parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(p)))
		h.Write(n[:])
		h.Write([]byte(p))
	}
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(t.UnixMilli())<<16)
	copy(b[6:], h.Sum(nil))
	return prefix + "_" + idEncoding.EncodeToString(b[:])
}

// newInstance creates an identity with one fresh key.
func newInstance(now time.Time, rnd io.Reader) (*Instance, error) {
	id, err := newID("inst", now, rnd)
	if err != nil {
		return nil, err
	}
	k, err := newKey(now, rnd)
	if err != nil {
		return nil, err
	}
	return &Instance{ID: id, Keys: []InstanceKey{k}}, nil
}

func newKey(now time.Time, rnd io.Reader) (InstanceKey, error) {
	pub, priv, err := ed25519.GenerateKey(rnd)
	if err != nil {
		return InstanceKey{}, fmt.Errorf("tether: generate key: %w", err)
	}
	return InstanceKey{ID: KeyID(pub), Private: priv, Created: now}, nil
}

// rotate returns a copy of inst whose new current key is k; the previous
// current key is retired now and verifies invitations until now+overlap.
// Retired keys stay while connections use them: pruneKeys drops them.
func (inst *Instance) rotate(k InstanceKey, now time.Time, overlap time.Duration) *Instance {
	out := &Instance{ID: inst.ID, Version: inst.Version, Keys: []InstanceKey{k}}
	for _, old := range inst.Keys {
		if old.Retired.IsZero() {
			old.Retired = now
			old.Expires = now.Add(overlap)
		}
		out.Keys = append(out.Keys, old)
	}
	return out
}

// validate checks what a Node relies on when it loads an instance.
func (inst *Instance) validate() error {
	if err := checkID("Instance.ID", inst.ID); err != nil {
		return err
	}
	if len(inst.Keys) == 0 || !inst.Keys[0].Retired.IsZero() {
		return &Error{Code: CodeInvalid, Message: "instance has no current key"}
	}
	for _, k := range inst.Keys {
		if len(k.Private) != ed25519.PrivateKeySize || KeyID(k.Public()) != k.ID {
			return &Error{Code: CodeInvalid, Message: "instance key is damaged"}
		}
	}
	return nil
}

// keySet is an immutable view of an instance's keys for signing and
// verifying.
type keySet struct {
	version  int64 // the Instance's
	instance string
	current  InstanceKey
	public   ed25519.PublicKey
	verify   map[string]InstanceKey // by key ID, current and retired
}

func newKeySet(inst *Instance) *keySet {
	ks := &keySet{version: inst.Version, instance: inst.ID, current: inst.Keys[0], public: inst.Keys[0].Public(), verify: make(map[string]InstanceKey, len(inst.Keys))}
	for _, k := range inst.Keys {
		ks.verify[k.ID] = k
	}
	return ks
}

// lookup returns the public key for kid if it verifies invitations at
// now: the current key, or a retired one until its Expires. It never does
// more than a map lookup.
func (ks *keySet) lookup(kid string, now time.Time) (ed25519.PublicKey, bool) {
	k, ok := ks.verify[kid]
	if !ok || !k.Expires.IsZero() && !now.Before(k.Expires) {
		return nil, false
	}
	return k.Public(), true
}

// RotateKey makes a fresh key this instance's current key, and tells the
// peer of every connection, with a key change notice signed by the key it
// trusts and carrying a proof that this instance holds the new key. Each
// connection signs with the new key once its peer has acknowledged the
// notice; until then it signs with the key its peer knows, so messages
// flow throughout, whichever side is private.
//
// The previous key keeps verifying pending invitations until overlap has
// passed (the invitation TTL plus leeway when zero), and signing for the
// connections whose peers have not yet acknowledged the change, however
// long that takes: a peer that is offline catches up when it is back. A
// retired key is dropped once it is past its overlap and no connection
// uses it. Other Nodes sharing the Store load the new key within a second
// (or at once, when a request names it).
func (n *Node) RotateKey(ctx context.Context, overlap time.Duration) error {
	const op = "tether: rotate key"
	if overlap <= 0 {
		overlap = n.ttl + InvitationLeeway
	}
	var ks *keySet
	err := retryOnConflict(func() error {
		inst, err := n.store.LoadInstance(ctx)
		if err != nil {
			return err
		}
		now := n.clock.Now()
		k, err := newKey(now, n.rand)
		if err != nil {
			return err
		}
		next := inst.rotate(k, now, overlap)
		if err := n.store.SaveInstance(ctx, next); err != nil {
			return err
		}
		ks = newKeySet(next)
		// Inside a Receiver the save commits with the delivery, or not.
		n.later(ctx, func() { n.useKeys(next) })
		return nil
	})
	if err != nil {
		return n.fail(ctx, op, err)
	}
	return n.fail(ctx, op, n.keySweep(ctx, ks))
}

// keySweep moves every connection that does not sign with the current key
// yet onto it, with a key change notice to its peer, and drops the retired
// keys that are past their overlap and that no connection uses any more.
// Run calls it now and then while retired keys exist, so connections
// accepted on an older key, or left behind by a crash, follow too.
func (n *Node) keySweep(ctx context.Context, ks *keySet) error {
	// Another node sharing the Store may have rotated since ks was read:
	// moving connections to an older key would undo its work.
	inst, err := n.store.LoadInstance(ctx)
	if err != nil {
		return err
	}
	if inst.Version > ks.version && inst.validate() == nil {
		ks = newKeySet(inst)
		n.later(ctx, func() { n.useKeys(inst) })
	}
	used := map[string]bool{}
	opts := ListOptions{Kind: KindPeer, Limit: MaxPageSize}
	for {
		conns, next, err := n.store.ListConnections(ctx, opts)
		if err != nil {
			return err
		}
		for _, c := range conns {
			if c.Status == StatusDeleted {
				continue
			}
			if notifies(c) && c.LocalKeyID != ks.current.ID && c.PendingKeyID != ks.current.ID {
				moved, err := n.announceKey(ctx, c.ID, ks.current)
				if err != nil {
					if ctx.Err() != nil {
						return err
					}
					n.log.WarnContext(ctx, "tether: announce the new key", "connection", c.ID, "err", err)
				} else {
					used[moved.LocalKeyID], used[moved.PendingKeyID] = true, true
				}
			}
			used[c.LocalKeyID], used[c.PendingKeyID] = true, true
		}
		if next == "" {
			break
		}
		opts.After = next
	}
	return retryOnConflict(func() error {
		inst, err := n.store.LoadInstance(ctx)
		if err != nil {
			return err
		}
		now := n.clock.Now()
		keep := inst.Keys[:1:1]
		for _, k := range inst.Keys[1:] {
			if used[k.ID] || k.Expires.IsZero() || now.Before(k.Expires) {
				keep = append(keep, k)
			}
		}
		if len(keep) < len(inst.Keys) {
			inst.Keys = keep
			if err := n.store.SaveInstance(ctx, inst); err != nil {
				return err
			}
		}
		n.later(ctx, func() { n.useKeys(inst) })
		return nil
	})
}

// announceKey tells the peer of connection id that this side's key is
// becoming k: the notice goes out in order with the messages, and the
// connection signs with k once the peer has acknowledged it.
func (n *Node) announceKey(ctx context.Context, id string, k InstanceKey) (*Connection, error) {
	const op = "tether: announce key"
	proof := ed25519.Sign(k.Private, rekeyProof(n.ID(), k.ID))
	return n.editWith(ctx, op, id, func(c *Connection) (*Event, *notice, error) {
		// Only an active connection: a held one sends nothing past its
		// latest notice, so a notice now would release what it holds.
		// Activate announces the key then.
		if !notifies(c) || c.Status != StatusActive || c.LocalKeyID == k.ID || c.PendingKeyID == k.ID {
			return nil, nil, nil
		}
		if cur := n.keys.Load(); cur.current.ID != k.ID && !cur.created(k) {
			return nil, nil, nil // a newer key arrived meanwhile: never move back
		}
		c.PendingKeyID = k.ID
		ev := n.event(WithActor(ctx, ActorSystem), EventKeyChanged, "this side's key is changing to "+k.ID+"; the partner is told")
		return &ev, &notice{Type: noticeRekey, Key: base64.RawURLEncoding.EncodeToString(k.Public()), Proof: base64.RawURLEncoding.EncodeToString(proof)}, nil
	})
}

// created reports whether ks was made when k was current or later: k is
// not older than ks's current key.
func (ks *keySet) created(k InstanceKey) bool { return !k.Created.Before(ks.current.Created) }

// useKeys makes inst's keys the ones this node signs and verifies with,
// unless it holds a newer version already.
func (n *Node) useKeys(inst *Instance) {
	if inst.validate() != nil {
		return
	}
	next := newKeySet(inst)
	for {
		cur := n.keys.Load()
		if cur.version > next.version || n.keys.CompareAndSwap(cur, next) {
			return
		}
	}
}

// reloadKeys re-reads the instance's keys from the Store, because a
// request named one this node does not hold (another node sharing the
// Store may have rotated), and reports whether they may have changed.
// Concurrent callers share one read: a caller that waited for another's
// read, begun after it asked, uses that one.
func (n *Node) reloadKeys(ctx context.Context) bool {
	asked := n.keyReads.Load()
	n.keyReload.Lock()
	defer n.keyReload.Unlock()
	if n.keyReads.Load() > asked {
		return true // a read that began after this call was made has ended
	}
	n.keyReads.Add(1) // reads begin under the lock
	inst, err := n.store.LoadInstance(ctx)
	if err != nil {
		if ctx.Err() == nil {
			n.log.WarnContext(ctx, "tether: reload keys", "err", err)
		}
		return false
	}
	n.useKeys(inst)
	return true
}

// ownKey returns this instance's key kid, re-reading the keys once when
// this node does not hold it.
func (n *Node) ownKey(kid string) (InstanceKey, bool) {
	if k, ok := n.keys.Load().verify[kid]; ok {
		return k, true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if !n.reloadKeys(ctx) {
		return InstanceKey{}, false
	}
	k, ok := n.keys.Load().verify[kid]
	return k, ok
}
