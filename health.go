package tether

import (
	"context"
	"errors"
	"strconv"
	"strings"
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
	since   time.Time // when this node saw the current run of failures begin; zero if unknown
}

const healthWriteEvery = 10 * time.Second

// A connection's peer becomes unreachable with a failed exchange that
// makes unreachableFailures in a row (Health.Failures), when no exchange
// has succeeded for unreachableAfter either: since Health.LastContact, or
// since this node saw the run of failures begin, if that is later (a
// connection idle for an hour is not unreachable after three quick
// retries). A request lost now and then, or a peer restarting, is no
// change of state. healthFail then appends EventPeerUnreachable in the
// write that counts the failure and marks Health.LastError with
// unreachablePrefix, which is what remembers the state across writes,
// processes and restarts; the next exchange that succeeds, or a peer that
// answers it paused, appends EventPeerReachable in the write that clears
// the mark.
const (
	unreachableFailures = 3
	unreachableAfter    = time.Minute
	unreachablePrefix   = "unreachable: "
)

// tracksReachability reports whether c's reachability changes are events:
// a peer connection past its handshake (which resets Health when it
// completes) and not deleted.
func tracksReachability(c *Connection) bool {
	return c.Kind == KindPeer && c.Status != StatusPending && c.Status != StatusDeleted
}

// unreachable reports whether c's peer is marked unreachable.
func unreachable(c *Connection) bool {
	return tracksReachability(c) && strings.HasPrefix(c.Health.LastError, unreachablePrefix)
}

// Unreachable reports whether the partner of peer connection c cannot be
// reached: exchanges with it kept failing for a while, and an
// EventPeerUnreachable was recorded (its time says since when; the last
// exchange that succeeded is Health.LastContact). It turns false with the
// next exchange that succeeds, and EventPeerReachable. Always false for org
// connections, pending and deleted ones.
func (c *Connection) Unreachable() bool { return unreachable(c) }

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
	var back bool // the write ends an unreachable spell
	c, err := n.editHealth(ctx, id, func(c *Connection) *Event {
		back = unreachable(c)
		failures := c.Health.Failures
		c.Health = Health{LastContact: now}
		if !back {
			return nil
		}
		return n.reachableEvent(now, failures)
	})
	switch {
	case err != nil:
		if ctx.Err() == nil {
			n.log.WarnContext(ctx, "tether: record health", "connection", id, "err", err)
		}
	case back:
		n.logReachability(ctx, c, EventPeerReachable, "")
	}
}

// healthFail records a failed exchange; count says whether it adds to the
// consecutive failures (a pause on the peer's side does not: the peer
// answered).
func (n *Node) healthFail(ctx context.Context, id string, cause error, count bool) {
	n.health.mu.Lock()
	if n.health.last == nil {
		n.health.last = map[string]healthMark{}
	}
	now := n.clock.Now()
	m, seen := n.health.last[id]
	since := m.since // unknown when the entry was swept or never made
	if seen && !m.failing || !count {
		since = now // the first failure after a success or an answer
	}
	n.health.last[id] = healthMark{written: now, failing: true, since: since}
	n.health.mu.Unlock()
	n.sweepCaches(now)
	msg := cause.Error()
	if e := new(Error); errors.As(cause, &e) {
		msg = string(e.Code) + ": " + e.Message
	}
	msg = sanitize(msg) // bounded, and nothing invisible, whatever the cause
	if strings.HasPrefix(msg, unreachablePrefix) {
		msg = string(ErrorCode(cause)) + ": " + msg // only healthFail marks
	}
	var change EventType
	c, err := n.editHealth(ctx, id, func(c *Connection) *Event {
		change = ""
		was := unreachable(c)
		if count {
			c.Health.Failures++
		}
		c.Health.LastError = msg
		switch {
		case was && !count: // the peer answered
			change = EventPeerReachable
			return n.reachableEvent(now, c.Health.Failures)
		case was:
			c.Health.LastError = unreachablePrefix + msg
		case count && tracksReachability(c) && c.Health.Failures >= unreachableFailures &&
			now.Sub(laterOf(c.Health.LastContact, since)) >= unreachableAfter:
			change = EventPeerUnreachable
			c.Health.LastError = unreachablePrefix + msg
			return &Event{Type: EventPeerUnreachable, Time: now, Actor: ActorSystem, Detail: c.Health.LastError}
		}
		return nil
	})
	switch {
	case err != nil:
		if ctx.Err() == nil {
			n.log.WarnContext(ctx, "tether: record health", "connection", id, "err", err)
		}
	case change != "":
		n.logReachability(ctx, c, change, msg)
	}
}

func (n *Node) reachableEvent(now time.Time, failures int) *Event {
	return &Event{Type: EventPeerReachable, Time: now, Actor: ActorSystem, Detail: "reachable again after " + strconv.Itoa(failures) + " failed attempts"}
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// logReachability logs a change of c's reachability, once per change:
// at Warn when the peer became unreachable, at Info when it answers
// again. A private side polls its peer, the public side.
func (n *Node) logReachability(ctx context.Context, c *Connection, change EventType, cause string) {
	peer := "the peer"
	if n.endpoint == "" {
		peer = "its public side"
	}
	if change == EventPeerUnreachable {
		n.log.WarnContext(ctx, "tether: this side cannot reach "+peer, "connection", c.ID, "endpoint", c.RemoteURL, "failures", c.Health.Failures, "since", c.Health.LastContact, "err", cause)
		return
	}
	n.log.InfoContext(ctx, "tether: this side reaches "+peer+" again", "connection", c.ID, "endpoint", c.RemoteURL)
}

// editHealth changes a connection's health with f, and appends the event
// f returns, if any, in the same write.
func (n *Node) editHealth(ctx context.Context, id string, f func(*Connection) *Event) (*Connection, error) {
	var out *Connection
	err := retryOnConflict(func() error {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return err
		}
		ev := f(c)
		out = c
		if ev == nil {
			return n.store.UpdateConnection(ctx, c)
		}
		if err := n.store.UpdateConnection(ctx, c, *ev); err != nil {
			return err
		}
		e := *ev
		n.later(ctx, func() { n.emit(id, e) })
		return nil
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
	if r := n.sched.Load(); r != nil {
		r.forget(id)
	}
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
