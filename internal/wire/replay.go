package wire

import (
	"sync"
	"time"
)

// Bounds of a ReplayCache. It holds only nonces of requests that passed
// signature verification, so a peer is an instance that holds a key this
// side pinned; still, no peer may crowd out the others.
const (
	// MaxNoncesPerPeer is the most nonces one peer may have remembered at
	// once: about 109 requests a second sustained over a 10-minute window.
	// A peer beyond it is refused until some of its nonces expire; no other
	// peer notices.
	MaxNoncesPerPeer = 1 << 16
	// MaxNonces is the soft bound on all nonces remembered. Past it, a peer
	// is refused once it holds more than ReservedNonces; one peer alone,
	// capped at MaxNoncesPerPeer, cannot get there.
	MaxNonces = 1 << 20
	// MaxPeers bounds the peers remembered at once. A peer is forgotten
	// once its last nonce expires; a peer not remembered when MaxPeers are
	// is refused. A new private peer takes two for the nonces' lifetime
	// (its accept request counts against the invitation, its polls
	// against its instance), so 30,000 peers may join within it.
	MaxPeers = 1 << 16
	// ReservedNonces is what every remembered peer may hold even when the
	// cache holds MaxNonces: so the cache never holds more than
	// MaxNonces + MaxPeers*ReservedNonces = 2*MaxNonces nonces, and a peer
	// that sends little is never refused because others sent much.
	ReservedNonces = MaxNonces / MaxPeers
)

// ReplayCache remembers the nonces of authenticated requests for as long as
// their time is accepted, so a captured request cannot be replayed. Its
// memory is bounded per peer and in total (see MaxNoncesPerPeer, MaxNonces,
// MaxPeers, ReservedNonces); when a bound is reached it refuses (fails
// closed) only the peers beyond their share. The zero value is ready to
// use; it is safe for concurrent use.
type ReplayCache struct {
	// limits overrides the bounds (tests); zero fields mean the defaults.
	limits replayLimits

	mu    sync.Mutex
	peers map[string]*peerNonces
	total int       // nonces remembered, all peers
	next  time.Time // next sweep of every peer
}

type replayLimits struct {
	perPeer, total, peers, reserved int
}

// peerNonces are the nonces of one peer, in a map to look them up and in
// the order they were added to forget them.
type peerNonces struct {
	seen  map[string]time.Time // nonce -> when it may be forgotten
	order []nonceAt
}

type nonceAt struct {
	nonce string
	until time.Time
}

// sweepEvery is how often Fresh forgets the expired nonces of every peer,
// not only of the peer it is asked about.
const sweepEvery = time.Minute

// Fresh records the nonce of a request from peer, acceptable until
// forgetAfter, and reports whether it was not seen before. It also reports
// false, for that peer only, when peer is beyond its bound (see the
// constants).
func (rc *ReplayCache) Fresh(peer, nonce string, now, forgetAfter time.Time) bool {
	lim := rc.limits.orDefault()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.peers == nil {
		rc.peers = make(map[string]*peerNonces)
	}
	if !now.Before(rc.next) {
		rc.sweep(now)
		rc.next = now.Add(sweepEvery)
	}
	p := rc.peers[peer]
	if p != nil {
		rc.total -= p.expire(now)
	}
	if p == nil {
		if len(rc.peers) >= lim.peers {
			// Some peers' nonces may all have expired since the last
			// sweep: forget those peers before refusing a new one.
			rc.sweep(now)
			if len(rc.peers) >= lim.peers {
				return false
			}
		}
		p = &peerNonces{seen: make(map[string]time.Time)}
		rc.peers[peer] = p
	}
	if until, ok := p.seen[nonce]; ok && !now.After(until) {
		return false
	}
	if held := len(p.seen); held >= lim.perPeer || rc.total >= lim.total && held >= lim.reserved {
		return false
	}
	if _, ok := p.seen[nonce]; !ok {
		rc.total++
	}
	p.seen[nonce] = forgetAfter
	p.order = append(p.order, nonceAt{nonce, forgetAfter})
	return true
}

// sweep forgets the expired nonces of every peer, and the peers left with
// none.
func (rc *ReplayCache) sweep(now time.Time) {
	for id, p := range rc.peers {
		rc.total -= p.expire(now)
		if len(p.seen) == 0 {
			delete(rc.peers, id)
		}
	}
}

// expire forgets the nonces at the front of p's order that expired, and
// returns how many it forgot. Nonces are added with about the same
// lifetime, so the front holds the oldest; one that outlives those behind
// it only keeps them a little longer.
func (p *peerNonces) expire(now time.Time) int {
	gone := 0
	for len(p.order) > 0 && now.After(p.order[0].until) {
		e := p.order[0]
		p.order[0] = nonceAt{}
		p.order = p.order[1:]
		// The nonce may have been recorded again after it expired: forget
		// it with its last entry only.
		if until, ok := p.seen[e.nonce]; ok && until.Equal(e.until) {
			delete(p.seen, e.nonce)
			gone++
		}
	}
	if len(p.order) == 0 {
		p.order = nil // let go of the array
	}
	return gone
}

func (l replayLimits) orDefault() replayLimits {
	if l.perPeer <= 0 {
		l.perPeer = MaxNoncesPerPeer
	}
	if l.total <= 0 {
		l.total = MaxNonces
	}
	if l.peers <= 0 {
		l.peers = MaxPeers
	}
	if l.reserved <= 0 {
		l.reserved = ReservedNonces
	}
	return l
}
