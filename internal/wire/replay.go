package wire

import (
	"sync"
	"time"
)

// maxNonces bounds the replay cache. It holds only nonces of requests that
// passed signature verification.
const maxNonces = 1 << 20

// ReplayCache remembers the nonces of authenticated requests for as long as
// their time is accepted, so a captured request cannot be replayed. The
// zero value is ready to use; it is safe for concurrent use.
type ReplayCache struct {
	mu   sync.Mutex
	seen map[string]time.Time // peer/nonce -> when it may be forgotten
	next time.Time            // next sweep
}

// Fresh records the nonce of a request from peer, acceptable until
// forgetAfter, and reports whether it was not seen before.
func (rc *ReplayCache) Fresh(peer, nonce string, now, forgetAfter time.Time) bool {
	key := peer + "/" + nonce
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.seen == nil {
		rc.seen = make(map[string]time.Time)
	}
	if now.After(rc.next) || len(rc.seen) >= maxNonces {
		for k, t := range rc.seen {
			if now.After(t) {
				delete(rc.seen, k)
			}
		}
		rc.next = now.Add(time.Minute)
	}
	if _, ok := rc.seen[key]; ok || len(rc.seen) >= maxNonces {
		return false
	}
	rc.seen[key] = forgetAfter
	return true
}
