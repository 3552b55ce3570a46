package tether

import (
	"errors"
	"math/rand/v2"
	"time"
)

// maxRetryAfter caps the Retry-After a peer can impose when RetryMax is
// shorter: a peer cannot stall delivery for longer than this per attempt.
const maxRetryAfter = time.Hour

// backoff returns how long to wait before attempt (0-based) after err:
// full jitter up to min(retryMax, retryBase*2^attempt), at least the
// Retry-After the peer sent, capped at max(retryMax, maxRetryAfter). It never
// overflows or panics, whatever the durations and attempt: the ceiling
// doubles only while it is below retryMax, a retryBase above retryMax is
// cut to retryMax, and non-positive durations count as one nanosecond.
func (n *Node) backoff(attempt int, err error) time.Duration {
	limit := max(n.retryMax, 1)
	ceiling := min(max(n.retryBase, 1), limit)
	for i := 0; i < attempt && ceiling < limit; i++ { // at most 63 rounds
		if ceiling > limit/2 {
			ceiling = limit
		} else {
			ceiling *= 2
		}
	}
	d := time.Duration(rand.Uint64N(uint64(ceiling) + 1))
	var e *Error
	if errors.As(err, &e) {
		if ra := min(e.RetryAfter, max(n.retryMax, maxRetryAfter)); ra > d {
			d = ra
		}
	}
	return d
}
