package tether

import (
	"context"
	"errors"
	"sync"
	"time"
)

// healthCache remembers what was last written of each connection's health,
// so a healthy connection is written at most every healthWriteEvery. An
// entry older than that changes nothing, so sweepCaches drops it.
type healthCache struct {
	mu        sync.Mutex
	last      map[string]healthMark
	nextSweep time.Time
}

type healthMark struct {
	written time.Time
	failing bool
}

const healthWriteEvery = 10 * time.Second

func (n *Node) healthOK(ctx context.Context, id string) {
	now := n.clock.Now()
	n.health.mu.Lock()
	m, ok := n.health.last[id]
	if ok && !m.failing && now.Sub(m.written) < healthWriteEvery {
		n.health.mu.Unlock()
		return
	}
	if n.health.last == nil {
		n.health.last = map[string]healthMark{}
	}
	n.health.last[id] = healthMark{written: now}
	n.health.mu.Unlock()
	n.sweepCaches(now)
	if _, err := n.editHealth(ctx, id, func(h *Health) { *h = Health{LastContact: now} }); err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: record health", "connection", id, "err", err)
	}
}

// healthFail records a failed exchange; count says whether it adds to the
// consecutive failures (a pause on the peer's side does not).
func (n *Node) healthFail(ctx context.Context, id string, cause error, count bool) {
	n.health.mu.Lock()
	if n.health.last == nil {
		n.health.last = map[string]healthMark{}
	}
	now := n.clock.Now()
	n.health.last[id] = healthMark{written: now, failing: true}
	n.health.mu.Unlock()
	n.sweepCaches(now)
	msg := cause.Error()
	if e := new(Error); errors.As(cause, &e) {
		msg = string(e.Code) + ": " + e.Message
	}
	msg = sanitize(msg) // bounded, and nothing invisible, whatever the cause
	_, err := n.editHealth(ctx, id, func(h *Health) {
		if count {
			h.Failures++
		}
		h.LastError = msg
	})
	if err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: record health", "connection", id, "err", err)
	}
}

// editHealth changes a connection's health without an event.
func (n *Node) editHealth(ctx context.Context, id string, f func(*Health)) (*Connection, error) {
	var out *Connection
	err := retryOnConflict(func() error {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return err
		}
		f(&c.Health)
		out = c
		return n.store.UpdateConnection(ctx, c)
	})
	return out, err
}

// sweepEvery is how often sweepCaches looks for stale entries.
const sweepEvery = time.Minute

// sweepCaches drops, at most once every sweepEvery, what the per-connection
// caches hold of connections that went quiet or left this node, so they do
// not grow with every connection ever seen.
func (n *Node) sweepCaches(now time.Time) {
	n.health.mu.Lock()
	if now.Before(n.health.nextSweep) {
		n.health.mu.Unlock()
		return
	}
	n.health.nextSweep = now.Add(sweepEvery)
	for id, m := range n.health.last {
		if now.Sub(m.written) >= healthWriteEvery {
			delete(n.health.last, id)
		}
	}
	n.health.mu.Unlock()
	stale := now.Add(-n.ackedStale()).UnixNano()
	n.acked.Range(func(id, v any) bool {
		if v.(*ackMark).seen.Load() < stale {
			n.acked.CompareAndDelete(id, v)
		}
		return true
	})
}

// forget drops what the per-connection caches hold of a connection that
// was deleted or left this node.
func (n *Node) forget(id string) {
	n.health.mu.Lock()
	delete(n.health.last, id)
	n.health.mu.Unlock()
	n.acked.Delete(id)
	n.statuses.Delete(id)
}

// trackedConnections counts the entries this node's per-connection state
// holds: the caches, the waiters and the delivery locks. Tests check that
// it does not grow with the connections ever seen.
func (n *Node) trackedConnections() int {
	count := 0
	n.health.mu.Lock()
	count += len(n.health.last)
	n.health.mu.Unlock()
	n.wakeMu.Lock()
	count += len(n.wake)
	n.wakeMu.Unlock()
	for _, m := range []*sync.Map{&n.acked, &n.inbox} {
		m.Range(func(any, any) bool {
			count++
			return true
		})
	}
	return count
}
