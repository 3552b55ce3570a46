package tether_test

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// backoffNode opens a node with the given retry settings.
func backoffNode(t *testing.T, base, limit time.Duration) *tether.Node {
	t.Helper()
	return newWorld(t).node("n", "", func(c *tether.Config) { c.RetryBase, c.RetryMax = base, limit }).Node
}

// The delay never panics, never overflows and never exceeds its ceiling,
// whatever a host sets (SECURITY.md 25).
func TestBackoffBounds(t *testing.T) {
	attempts := []int{math.MaxInt32, math.MaxInt}
	for a := range 201 {
		attempts = append(attempts, a)
	}
	for _, tc := range []struct {
		base, limit time.Duration // as configured
		wantBase    time.Duration // after defaults and capping
		wantMax     time.Duration
	}{
		{0, 0, 200 * time.Millisecond, 30 * time.Second},
		{-time.Second, -time.Second, 200 * time.Millisecond, 30 * time.Second},
		{time.Nanosecond, time.Nanosecond, time.Nanosecond, time.Nanosecond},
		{20 * time.Second, 0, 20 * time.Second, 30 * time.Second},
		{20 * time.Second, math.MaxInt64, 20 * time.Second, math.MaxInt64},
		{time.Minute, 24 * time.Hour, time.Minute, 24 * time.Hour},
		{time.Hour, math.MaxInt64, time.Hour, math.MaxInt64},
		{time.Hour, time.Minute, time.Minute, time.Minute}, // RetryMax below RetryBase
		{1 << 62, math.MaxInt64, 1 << 62, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{math.MaxInt64, time.Second, time.Second, time.Second},
		{math.MaxInt64 / 3, math.MaxInt64 - 1, math.MaxInt64 / 3, math.MaxInt64 - 1},
	} {
		t.Run(fmt.Sprintf("base=%d,max=%d", tc.base, tc.limit), func(t *testing.T) {
			n := backoffNode(t, tc.base, tc.limit)
			for _, a := range attempts {
				// The ceiling is min(max, base*2^attempt), computed here in
				// floating point, which cannot overflow.
				ceiling := math.Min(float64(tc.wantMax), math.Ldexp(float64(tc.wantBase), min(a, 1000)))
				for range 3 {
					d := tether.Backoff(n, a, nil)
					if d < 0 || float64(d) > ceiling {
						t.Fatalf("attempt %d: %v, want within [0, %v]", a, d, time.Duration(ceiling))
					}
				}
			}
		})
	}
}

// The delay is random below its ceiling (full jitter) and reaches RetryMax.
func TestBackoffJitter(t *testing.T) {
	n := backoffNode(t, time.Second, 8*time.Second)
	seen := map[time.Duration]bool{}
	var longest time.Duration
	for range 200 {
		d := tether.Backoff(n, 10, nil)
		seen[d] = true
		longest = max(longest, d)
	}
	if len(seen) < 100 {
		t.Fatalf("200 delays took only %d values: no jitter", len(seen))
	}
	if longest < 4*time.Second {
		t.Fatalf("the longest of 200 delays at attempt 10 is %v, want some above half of RetryMax", longest)
	}
}

// A Retry-After the peer sent is waited out, up to the larger of RetryMax
// and an hour; a negative one is ignored.
func TestBackoffRetryAfter(t *testing.T) {
	unavailable := func(d time.Duration) error {
		return &tether.Error{Code: tether.CodeUnavailable, RetryAfter: d}
	}
	for _, tc := range []struct {
		base, limit, retryAfter time.Duration
		want                    time.Duration // 0: anything up to the ceiling
	}{
		{time.Millisecond, 5 * time.Millisecond, 10 * time.Second, 10 * time.Second},
		{time.Millisecond, 5 * time.Millisecond, 2 * time.Hour, time.Hour},
		{time.Millisecond, 5 * time.Millisecond, math.MaxInt64, time.Hour},
		{time.Millisecond, 4 * time.Hour, 3 * time.Hour, 3 * time.Hour},
		{time.Millisecond, 4 * time.Hour, 5 * time.Hour, 4 * time.Hour},
		{time.Millisecond, math.MaxInt64, math.MaxInt64, math.MaxInt64},
		{time.Millisecond, 5 * time.Millisecond, -time.Hour, 0},
	} {
		n := backoffNode(t, tc.base, tc.limit)
		for _, a := range []int{0, 1, 200, math.MaxInt} {
			got := tether.Backoff(n, a, fmt.Errorf("push: %w", unavailable(tc.retryAfter)))
			switch {
			case tc.want == 0 && (got < 0 || got > tc.limit):
				t.Errorf("Retry-After %v, RetryMax %v, attempt %d: %v, want within [0, %v]", tc.retryAfter, tc.limit, a, got, tc.limit)
			case tc.want != 0 && (got < tc.want || got > max(tc.want, tc.limit)):
				// At least the Retry-After (capped); the jitter may be longer.
				t.Errorf("Retry-After %v, RetryMax %v, attempt %d: %v, want within [%v, %v]", tc.retryAfter, tc.limit, a, got, tc.want, max(tc.want, tc.limit))
			}
		}
	}
}
