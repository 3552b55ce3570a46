package tether

import "sync"

// waiter receives a token whenever one of the connections it subscribed to
// is signaled; tokens do not pile up beyond one.
type waiter struct {
	ch      chan struct{}
	mu      sync.Mutex
	pending map[string]bool // signaled since the last take
}

// take returns the connections signaled since the last take.
func (w *waiter) take() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	p := w.pending
	w.pending = nil
	return p
}

// subscribe registers a waiter for ids. Subscribe before reading the state
// a signal announces, so that no signal is missed; call cancel when done.
func (n *Node) subscribe(ids ...string) (*waiter, func()) {
	w := &waiter{ch: make(chan struct{}, 1)}
	n.wakeMu.Lock()
	for _, id := range ids {
		set := n.wake[id]
		if set == nil {
			set = map[*waiter]struct{}{}
			n.wake[id] = set
		}
		set[w] = struct{}{}
	}
	n.wakeMu.Unlock()
	return w, func() {
		n.wakeMu.Lock()
		defer n.wakeMu.Unlock()
		for _, id := range ids {
			delete(n.wake[id], w)
			if len(n.wake[id]) == 0 {
				delete(n.wake, id)
			}
		}
	}
}

// signal wakes whatever waits on a connection's outbox or status: the
// polls held for it, and Run's delivery to a public peer.
func (n *Node) signal(id string) {
	n.wakeWaiters(id)
	if r := n.sched.Load(); r != nil {
		r.mark(id, true)
	}
}

// wakeWaiters wakes the polls held for a connection.
func (n *Node) wakeWaiters(id string) {
	n.wakeMu.Lock()
	defer n.wakeMu.Unlock()
	for w := range n.wake[id] {
		w.mu.Lock()
		if w.pending == nil {
			w.pending = map[string]bool{}
		}
		w.pending[id] = true
		w.mu.Unlock()
		select {
		case w.ch <- struct{}{}:
		default:
		}
	}
}

// notifyChanged tells Run that connections were added or changed status.
func (n *Node) notifyChanged() {
	select {
	case n.changed <- struct{}{}:
	default:
	}
}

// kick asks Run to make sure connection id has a pusher, whatever its
// status: a notice was stored for it (a deletion's among them, which the
// periodic rescan of live connections would not see).
func (n *Node) kick(id string) {
	n.kickMu.Lock()
	if n.kicked == nil {
		n.kicked = map[string]bool{}
	}
	n.kicked[id] = true
	n.kickMu.Unlock()
	n.notifyChanged()
}

// takeKicked returns the connections kicked since the last call.
func (n *Node) takeKicked() []string {
	n.kickMu.Lock()
	defer n.kickMu.Unlock()
	ids := make([]string, 0, len(n.kicked))
	for id := range n.kicked {
		ids = append(ids, id)
	}
	n.kicked = nil
	return ids
}
