package tether

import (
	"errors"
	"math/rand/v2"
	"time"
)

// backoff returns how long to wait before attempt (0-based) after err:
// full jitter up to min(retryMax, retryBase*2^attempt), at least the
// Retry-After the peer sent.
func (n *Node) backoff(attempt int, err error) time.Duration {
	ceiling := n.retryMax
	if attempt < 30 {
		ceiling = min(n.retryMax, n.retryBase<<attempt)
	}
	d := time.Duration(rand.Int64N(int64(ceiling) + 1))
	var e *Error
	if errors.As(err, &e) && e.RetryAfter > d {
		d = min(e.RetryAfter, time.Hour)
	}
	return d
}
