package tether_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/tetherkit/tether"
)

// recMetrics counts what a Node reports, by method and attributes.
type recMetrics struct {
	mu     sync.Mutex
	counts map[string]int
}

func newRecMetrics() *recMetrics { return &recMetrics{counts: map[string]int{}} }

func (r *recMetrics) add(key string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.counts[key] += n
}

// only returns the counts whose key starts with prefix.
func (r *recMetrics) only(prefix string) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.counts {
		if len(k) >= len(prefix) && k[:len(prefix)] == prefix {
			out[k] = v
		}
	}
	return out
}

func (r *recMetrics) MessagesSent(_ context.Context, d tether.Direction, n int) {
	r.add("sent "+string(d), n)
}
func (r *recMetrics) MessageDelivered(_ context.Context, d tether.Direction, _ time.Duration) {
	r.add("delivered "+string(d), 1)
}
func (r *recMetrics) MessagesRetried(_ context.Context, d tether.Direction, n int) {
	r.add("retried "+string(d), n)
}
func (r *recMetrics) MessagesQueued(_ context.Context, d tether.Direction, delta int) {
	r.add("queued "+string(d), delta)
}
func (r *recMetrics) PollsHeld(_ context.Context, delta int) { r.add("polls held", delta) }
func (r *recMetrics) Handshake(_ context.Context, role tether.Role, o tether.Outcome) {
	r.add("handshake "+string(role)+" "+string(o), 1)
}
func (r *recMetrics) Refresh(_ context.Context, kind string, o tether.Outcome) {
	r.add("refresh "+kind+" "+string(o), 1)
}
func (r *recMetrics) StoreCall(_ context.Context, op string, _ time.Duration, err error) {
	if err != nil {
		op += " " + string(tether.ErrorCode(err))
	}
	r.add("store "+op, 1)
}

// Each side of a handshake counts how it ended: completed, refused (a
// revoked invitation), expired.
func TestMetricsHandshakeOutcomes(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	am, bm := newRecMetrics(), newRecMetrics()
	alpha := w.node("alpha", alphaURL, func(c *tether.Config) { c.Metrics = am })
	beta := w.node("beta", "", func(c *tether.Config) { c.Metrics = bm })

	_, code := alpha.initiate(t, invite(""))
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	revoked, revokedCode := alpha.initiate(t, invite(""))
	if _, err := alpha.RevokeInvitation(ctx, revoked.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := beta.Accept(ctx, revokedCode, tether.AcceptOptions{}); !errors.Is(err, tether.ErrRevoked) {
		t.Fatalf("Accept of a revoked code: %v, want revoked", err)
	}
	alpha.initiate(t, invite("")) // never accepted
	w.clock.Advance(tether.DefaultInvitationTTL + tether.InvitationLeeway)
	if err := alpha.Sync(ctx); err != nil {
		t.Fatal(err)
	}

	want := map[string]int{
		"handshake initiator ok":      1,
		"handshake initiator refused": 1,
		"handshake initiator expired": 1,
	}
	if diff := cmp.Diff(want, am.only("handshake ")); diff != "" {
		t.Errorf("alpha's handshakes (-want +got):\n%s", diff)
	}
	want = map[string]int{
		"handshake acceptor ok":      1,
		"handshake acceptor refused": 1,
	}
	if diff := cmp.Diff(want, bm.only("handshake ")); diff != "" {
		t.Errorf("beta's handshakes (-want +got):\n%s", diff)
	}
	if am.only("store CreateConnection")["store CreateConnection"] != 3 {
		t.Errorf("alpha's store calls: %v, want 3 CreateConnection", am.only("store "))
	}
}

// nopMetrics takes every measurement and drops it.
type nopMetrics struct{}

func (nopMetrics) MessagesSent(context.Context, tether.Direction, int)               {}
func (nopMetrics) MessageDelivered(context.Context, tether.Direction, time.Duration) {}
func (nopMetrics) MessagesRetried(context.Context, tether.Direction, int)            {}
func (nopMetrics) MessagesQueued(context.Context, tether.Direction, int)             {}
func (nopMetrics) PollsHeld(context.Context, int)                                    {}
func (nopMetrics) Handshake(context.Context, tether.Role, tether.Outcome)            {}
func (nopMetrics) Refresh(context.Context, string, tether.Outcome)                   {}
func (nopMetrics) StoreCall(context.Context, string, time.Duration, error)           {}

// Reporting to Metrics adds no allocation to Send: the same count with
// Metrics as without.
func TestMetricsSendAllocations(t *testing.T) {
	ctx := context.Background()
	allocs := func(m tether.Metrics) float64 {
		w := newWorld(t)
		alpha := w.node("alpha", alphaURL)
		beta := w.node("beta", "", func(c *tether.Config) { c.Metrics = m })
		_, code := alpha.initiate(t, invite(""))
		bc, err := beta.Accept(ctx, code, tether.AcceptOptions{})
		if err != nil {
			t.Fatal(err)
		}
		payload := []byte("hello")
		return testing.AllocsPerRun(1000, func() {
			if _, err := beta.Send(ctx, bc.ID, payload); err != nil {
				t.Fatal(err)
			}
		})
	}
	off, on := allocs(nil), allocs(nopMetrics{})
	if on != off {
		t.Errorf("Send allocates %v times with Metrics, %v without", on, off)
	}
}
