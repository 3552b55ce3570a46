package tether

import (
	"context"
	"errors"
	"sync"
	"time"
)

// healthCache remembers what was last written of each connection's health,
// so a healthy connection is written at most every healthWriteEvery.
type healthCache struct {
	mu   sync.Mutex
	last map[string]healthMark
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
	n.health.last[id] = healthMark{written: n.clock.Now(), failing: true}
	n.health.mu.Unlock()
	msg := cause.Error()
	if e := new(Error); errors.As(cause, &e) {
		msg = string(e.Code) + ": " + e.Message
	}
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
