package tether

import (
	"container/heap"
	"context"
	"math"
	"slices"
	"time"
)

// Delivery to public peers is scheduled, not looped per connection. A
// connection is looked at only when something says it may have work: a
// Send or a notice stored by this process (signal), a notification from a
// Store shared by processes (WatchOutbox), a retry coming due, or a sweep
// (below). The connections with work wait in one queue, and a bounded
// pool of workers takes them in turn, one batch each: a connection with
// more to send goes to the back of the queue, so a busy connection cannot
// starve the others. An idle connection costs nothing: no goroutine, no
// timer and no store read.
//
// The sweep asks the Store which connections have messages waiting (one
// query, OutboxScanner) and marks them. Run sweeps when it starts, so
// that what a previous process left is delivered, and, on a Store shared
// by processes, every Config.SweepInterval, so that a message whose
// notification was lost waits at most that long. A single-process Store
// hears of every message through this process's own signals, so it is
// swept only when Run starts.

// pushWork is what the scheduler keeps of one connection to a public peer
// while it has work, a retry pending, or a lease it took not yet run out.
// A worker owns attempt, leaseUntil and tally while it runs the
// connection; the runner's mu guards the rest.
type pushWork struct {
	id         string
	attempt    int       // failures since the last success
	leaseUntil time.Time // when the outbox lease this node holds runs out
	tally      pushTally // what Config.Metrics was told

	due      time.Time // when the pending retry runs; in the retry heap
	wakeable bool      // a signal runs the connection before due
	queued   bool      // waiting in the ready queue
	running  bool      // a worker has it
	again    bool      // signaled while running: run once more
	index    int       // in the retry heap; -1 when not in it
}

// stepResult is what one run of a connection asks the scheduler for next.
type stepResult struct {
	more     bool          // run it again soon: a batch went, more may wait
	retry    time.Duration // run it again after this long
	wakeable bool          // a signal cuts the retry short
	done     bool          // forget it: nothing will ever be pushed
	private  bool          // done, and the peer is private: it polls this side
}

// DefaultDeliveryWorkers is how many connections Run delivers at once
// when Config.DeliveryWorkers is zero.
const DefaultDeliveryWorkers = 32

// DefaultSweepInterval is how often Run sweeps a Store shared by
// processes when Config.SweepInterval is zero.
const DefaultSweepInterval = time.Second

// mark says that connection id may have work. A hard mark (a signal) runs
// it now, even when it waits out a retry a signal may cut short; a soft
// one (a sweep) runs it only when nothing is pending for it.
func (r *runner) mark(id string, hard bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.skip[id] {
		return
	}
	w := r.work[id]
	if w == nil {
		w = &pushWork{id: id, index: -1}
		r.work[id] = w
	}
	switch {
	case w.running:
		w.again = true
	case w.queued:
	case w.index >= 0 && !(hard && w.wakeable):
		// A retry is pending: its timer runs it.
	default:
		if w.index >= 0 {
			heap.Remove(&r.retries, w.index)
		}
		r.enqueue(w)
	}
}

// enqueue puts w at the back of the ready queue, and starts a worker when
// fewer than the limit run. r.mu is held.
func (r *runner) enqueue(w *pushWork) {
	w.queued = true
	r.ready = append(r.ready, w)
	if r.workers < r.maxWorkers && !r.stopped {
		r.workers++
		r.wg.Add(1)
		go r.worker()
	}
}

// worker runs the connections of the ready queue, one batch each, until
// the queue is empty or Run ends.
func (r *runner) worker() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if len(r.ready) == 0 || r.ctx.Err() != nil {
			r.workers--
			r.mu.Unlock()
			return
		}
		w := r.ready[0]
		r.ready[0] = nil
		r.ready = r.ready[1:]
		w.queued, w.running, w.again = false, true, false
		r.mu.Unlock()

		res := r.n.pushStep(r.ctx, w, r.peerPaused)

		r.mu.Lock()
		w.running = false
		done := r.settle(w, res)
		r.mu.Unlock()
		if done {
			r.n.metrics.pushDone(r.ctx, &w.tally)
			if !w.leaseUntil.IsZero() {
				r.n.releaseLease(r.ctx, w.id)
			}
		}
	}
}

// settle records what a run of w asked for next, and reports whether w
// was dropped. r.mu is held.
func (r *runner) settle(w *pushWork, res stepResult) bool {
	switch {
	case res.done:
		delete(r.work, w.id)
		if res.private {
			r.skip[w.id] = true
		}
		return true
	case res.retry > 0 && !(w.again && res.wakeable):
		w.due, w.wakeable = r.n.clock.Now().Add(res.retry), res.wakeable
		heap.Push(&r.retries, w)
		select {
		case r.retryChanged <- struct{}{}:
		default:
		}
	case res.more || w.again || res.retry > 0:
		r.enqueue(w)
	case !r.n.clock.Now().Before(w.leaseUntil) && w.tally.queued == 0:
		// Idle, holding no lease worth keeping, and nothing held back
		// that Config.Metrics counts as queued: nothing is kept.
		delete(r.work, w.id)
		return true
	}
	return false
}

// due moves the retries that came due by now to the ready queue, and
// returns when the next one comes due (zero when none is pending).
func (r *runner) due(now time.Time) time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	for len(r.retries) > 0 {
		w := r.retries[0]
		if w.due.After(now) {
			return w.due
		}
		heap.Pop(&r.retries)
		r.enqueue(w)
	}
	return time.Time{}
}

// prune drops the idle connections whose lease ran out and that hold no
// message back (paused), which have nothing left worth keeping, and the
// connections known to have a private peer, which a signal finds again.
func (r *runner) prune(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	clear(r.skip)
	for id, w := range r.work {
		if !w.running && !w.queued && w.index < 0 && !now.Before(w.leaseUntil) && w.tally.queued == 0 {
			delete(r.work, id)
		}
	}
}

// forget drops what the runner keeps of a deleted connection.
func (r *runner) forget(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.skip, id)
}

// sweep marks the connections with messages waiting in their outbox, and
// wakes the polls held for them: one query per page of a thousand, not
// one per connection, when the Store is an OutboxScanner. Other Stores
// are read connection by connection.
func (r *runner) sweep(ctx context.Context) {
	n := r.n
	if s, ok := n.store.(OutboxScanner); ok {
		after := ""
		for {
			ids, err := s.PendingOutboxes(ctx, after, MaxPageSize)
			if err != nil {
				if ctx.Err() == nil {
					n.log.WarnContext(ctx, "tether: list connections with messages waiting", "err", err)
				}
				return
			}
			for _, id := range ids {
				n.wakeWaiters(id)
				r.mark(id, false)
			}
			if len(ids) < MaxPageSize {
				return
			}
			after = ids[len(ids)-1]
		}
	}
	n.eachPeerConnection(ctx, []Status{StatusActive, StatusPaused, StatusInactive, StatusDeleted}, func(c *Connection) {
		if c.Status == StatusDeleted && c.NoticeSeq == 0 {
			return // nothing left to tell the peer
		}
		n.wakeWaiters(c.ID)
		if c.RemoteURL != "" {
			r.mark(c.ID, false)
		}
	})
}

// stop waits for the workers, then releases the leases this node holds
// and takes back what it told Config.Metrics of the outboxes.
func (r *runner) stop(ctx context.Context) {
	r.mu.Lock()
	r.stopped = true // no worker starts after this: Wait must not race Add
	r.mu.Unlock()
	r.wg.Wait()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	now := r.n.clock.Now()
	r.mu.Lock()
	work := make([]*pushWork, 0, len(r.work))
	for _, w := range r.work {
		work = append(work, w)
	}
	r.mu.Unlock()
	for _, w := range work {
		r.n.metrics.pushDone(ctx, &w.tally)
		if now.Before(w.leaseUntil) && ctx.Err() == nil {
			_ = r.n.store.Release(ctx, outboxLease(w.id), r.n.holder) // best effort: it runs out by itself
		}
	}
}

// releaseLease ends this node's lease on a connection's outbox, best
// effort: an unreleased lease runs out by itself.
func (n *Node) releaseLease(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	defer cancel()
	_ = n.store.Release(ctx, outboxLease(id), n.holder)
}

// outboxLease names the lease that lets one process at a time deliver a
// connection's outbox.
func outboxLease(id string) string { return "outbox/" + id }

// retryHeap orders pending retries by when they come due.
type retryHeap []*pushWork

func (h retryHeap) Len() int           { return len(h) }
func (h retryHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h retryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *retryHeap) Push(x any) {
	w := x.(*pushWork)
	w.index = len(*h)
	*h = append(*h, w)
}
func (h *retryHeap) Pop() any {
	old := *h
	w := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	w.index = -1
	return w
}

// pushStep delivers one batch of a connection's outbox to its public peer,
// and says what to do next. peerPaused is told when the peer refuses the
// delivery because its side is paused: a private side's poll then learns
// at once when the peer resumes.
func (n *Node) pushStep(ctx context.Context, w *pushWork, peerPaused func(id string)) stepResult {
	id := w.id
	c, err := n.store.GetConnection(ctx, id)
	if err != nil {
		if ErrorCode(err) == CodeNotFound {
			return stepResult{done: true}
		}
		w.attempt++
		return stepResult{retry: n.backoff(w.attempt-1, err), wakeable: true}
	}
	switch {
	case c.RemoteURL == "":
		return stepResult{done: true, private: c.Status != StatusDeleted}
	case c.Status == StatusPending:
		return stepResult{done: true} // nothing is sent before acceptance
	case c.Status == StatusDeleted && c.NoticeSeq == 0:
		n.forget(id) // nothing left to tell the peer
		return stepResult{done: true}
	case revoked(c):
		// Its answers cannot be trusted: wait for a re-pairing, which
		// signals.
		return stepResult{}
	}
	// Take the lease, or renew it once half of it has passed. A node marks
	// a connection when it has work, so an idle connection's lease is
	// neither taken nor renewed.
	lease := outboxLease(id)
	if now := n.clock.Now(); now.After(w.leaseUntil.Add(-n.leaseTTL / 2)) {
		start := n.metrics.start()
		held, err := n.store.Lease(ctx, lease, n.holder, now, now.Add(n.leaseTTL))
		n.metrics.storeCall(ctx, StoreLease, start, err)
		switch {
		case err != nil:
			n.healthFail(ctx, id, err, true)
			w.attempt++
			return stepResult{retry: n.backoff(w.attempt-1, err)}
		case !held: // another process is delivering this outbox
			w.leaseUntil = time.Time{}
			n.metrics.pushRead(ctx, &w.tally, nil) // that process reports it
			return stepResult{retry: idleRecheck, wakeable: true}
		}
		w.leaseUntil = now.Add(n.leaseTTL)
	}
	start := n.metrics.start()
	msgs, err := n.store.ListOutbox(ctx, id, 0, n.batch)
	n.metrics.storeCall(ctx, StoreListOutbox, start, err)
	if err == nil {
		n.metrics.pushRead(ctx, &w.tally, msgs)
	}
	if err == nil && len(msgs) > 0 && c.Status == StatusActive {
		// A Pause that returned while the outbox was read holds what was
		// sent after it.
		again, gerr := n.store.GetConnection(ctx, id)
		if gerr != nil {
			msgs, err = nil, gerr
		} else {
			c = again
		}
	}
	// A paused or deleted connection, or one whose peer paused, sends only
	// up to its latest notice.
	msgs = heldSend(c, msgs)
	if err == nil && len(msgs) == 0 {
		if c.Status == StatusDeleted {
			n.forget(id) // the peer has the deletion
			return stepResult{done: true}
		}
		return stepResult{}
	}
	var acked int64
	if err == nil {
		n.metrics.pushing(ctx, &w.tally, msgs)
		acked, err = n.push(ctx, c, msgs)
	}
	if acked > 0 && ErrorCode(err) != CodeGone {
		n.metrics.pushAcked(ctx, &w.tally, msgs, acked)
		// What the peer applied is acknowledged, even when it took less
		// than the whole batch.
		notice := slices.ContainsFunc(msgs, func(m Message) bool { return m.Control && m.Seq <= acked })
		start := n.metrics.start()
		aerr := n.acknowledged(ctx, c, acked, !notice)
		n.metrics.storeCall(ctx, StoreAckOutbox, start, aerr)
		n.metrics.keyAcknowledged(ctx, c, acked, aerr)
		if err == nil {
			err = aerr
		}
	}
	switch {
	case ctx.Err() != nil:
		return stepResult{}
	case err == nil:
		w.attempt = 0
		n.healthOK(ctx, id)
		return stepResult{more: true}
	case ErrorCode(err) == CodeGone:
		// The peer deleted its side: nothing more can be delivered.
		n.peerDeleted(ctx, id)
		if err := n.store.AckOutbox(ctx, id, math.MaxInt64); err != nil {
			n.log.WarnContext(ctx, "tether: drop the outbox of a connection the peer deleted", "connection", id, "err", err)
		}
		n.forget(id)
		return stepResult{done: true}
	case ErrorCode(err) == CodePaused:
		n.healthFail(ctx, id, err, false)
		if peerPaused != nil {
			peerPaused(id)
		}
		return stepResult{retry: max(n.backoff(0, err), n.retryBase), wakeable: true}
	default:
		n.healthFail(ctx, id, err, true)
		w.attempt++
		return stepResult{retry: n.backoff(w.attempt-1, err)}
	}
}
