package tether

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
)

// deliver hands msgs (ascending Seq) to the Receiver in order, skipping
// those already applied and stopping at a gap, and advances the inbox
// cursor after each; control messages are applied by the Node instead.
// While the connection is not active only the control messages that lead
// are taken. It returns the cursor and the Receiver's error, if any.
// Deliveries to one connection are serialized. What the Receiver's calls
// do once their transaction commits runs after the delivery.
func (n *Node) deliver(ctx context.Context, id string, msgs []Message) (int64, error) {
	var after []func()
	cursor, err := n.deliverLocked(ctx, id, msgs, &after)
	for _, f := range after {
		f()
	}
	return cursor, err
}

func (n *Node) deliverLocked(ctx context.Context, id string, msgs []Message, after *[]func()) (int64, error) {
	defer n.lockInbox(id)()
	c, err := n.store.GetConnection(ctx, id)
	if err != nil {
		return 0, err
	}
	start := n.metrics.start()
	cursor, err := n.store.InboxCursor(ctx, id)
	n.metrics.storeCall(ctx, StoreInboxCursor, start, err)
	if err != nil {
		return 0, err
	}
	atomic, _ := n.store.(AtomicInbox)
	var (
		failed error
		done   []pendingWork // per message applied in the transaction
		epoch  = n.statusEpoch(id)
	)
	receive := func(ctx context.Context, m Message) error {
		if !m.Control && n.statusEpoch(id) != epoch {
			// This node changed the connection's status meanwhile (the
			// Receiver itself may have paused or deleted it): look again.
			epoch = n.statusEpoch(id)
			now, err := n.store.GetConnection(ctx, id)
			if err != nil {
				failed = err
				return err
			}
			if c = now; c.Status != StatusActive {
				failed = errHeld
				return errHeld
			}
		}
		var work *afterCommit
		if atomic != nil {
			work = new(afterCommit)
			ctx = context.WithValue(ctx, laterKey{}, work)
		}
		var err error
		switch {
		case m.Control:
			err = n.applyNotice(ctx, id, m.Payload)
			n.peerNotice(ctx, m.Payload, err)
			if err != nil {
				err = &Error{Code: CodeUnavailable, Op: "tether: deliver", Message: "a notice from the peer could not be applied", Err: err}
			}
		case n.receiver == nil:
			err = &Error{Code: CodeUnavailable, Op: "tether: deliver", Message: "no receiver is configured"}
		default:
			if rerr := n.receiver.Receive(ctx, m); rerr != nil {
				err = &Error{Code: CodeUnavailable, Op: "tether: deliver", Message: "the receiver failed", Err: rerr}
			}
		}
		if err != nil {
			failed = err
			return err
		}
		if work != nil {
			done = append(done, pendingWork{m.Seq, work.take()})
		}
		return nil
	}
	defer func() {
		for _, w := range done {
			if w.seq <= cursor {
				*after = append(*after, w.funcs...)
			}
		}
	}()
	for attempt := 0; ; attempt++ {
		run := heldReceive(c.Status, nextRun(msgs, cursor))
		if len(run) == 0 || c.Status == StatusDeleted {
			return cursor, nil
		}
		var err error
		if atomic != nil {
			start := n.metrics.start()
			cursor, err = atomic.DeliverInbox(ctx, id, cursor, run, receive)
			n.metrics.storeCall(ctx, StoreDeliverInbox, start, err)
		} else {
			for _, m := range run {
				if err = receive(ctx, m); err != nil {
					break
				}
				// The Receiver took it: record that even if ctx ends now,
				// or the message would be handed over again.
				start := n.metrics.start()
				err = n.store.AdvanceInbox(context.WithoutCancel(ctx), id, cursor, m.Seq)
				n.metrics.storeCall(ctx, StoreAdvanceInbox, start, err)
				if err != nil {
					break
				}
				cursor = m.Seq
				if ctx.Err() != nil {
					return cursor, contextError("tether: deliver", ctx.Err())
				}
			}
		}
		switch {
		case errors.Is(failed, errHeld):
			return cursor, nil // the rest waits, at the sender
		case failed != nil && err != nil && !errors.Is(err, failed):
			// The Store failed while undoing or recording the Receiver's
			// work (its transaction broke): a storage failure, not the
			// Receiver's, and the sender retries.
			return cursor, &Error{Code: CodeUnavailable, Op: "tether: store delivery", Message: "the store failed during the delivery", Err: err}
		case failed != nil:
			return cursor, failed
		case ErrorCode(err) == CodeConflict && attempt < 3:
			// Another process delivered some: carry on from where it got.
			if cursor, err = n.store.InboxCursor(ctx, id); err != nil {
				return 0, err
			}
		case err != nil:
			return cursor, err
		default:
			return cursor, nil
		}
	}
}

// errHeld stops a delivery at a data message because the connection is
// no longer active.
var errHeld = errors.New("the connection is not active")

// statusEpoch counts the status changes this node made to connection id
// since it last delivered to it; statusChanged adds one.
func (n *Node) statusEpoch(id string) int64 {
	if v, ok := n.statuses.Load(id); ok {
		return v.(*atomic.Int64).Load()
	}
	return 0
}

func (n *Node) statusChanged(id string) {
	n.statusChanges.Add(1)
	v, ok := n.statuses.Load(id)
	if !ok {
		v, _ = n.statuses.LoadOrStore(id, new(atomic.Int64))
	}
	v.(*atomic.Int64).Add(1)
}

// pendingWork is what a message's handling left to do after its
// transaction commits.
type pendingWork struct {
	seq   int64
	funcs []func()
}

// nextRun returns the messages of msgs (ascending Seq) that follow cursor
// without a gap. The one exception is a deleting sender's last batch: its
// undelivered data were dropped, so its notices, ending with the deletion,
// follow holes.
func nextRun(msgs []Message, cursor int64) []Message {
	i := 0
	for i < len(msgs) && msgs[i].Seq <= cursor {
		i++
	}
	deleting := len(msgs) > 0 && isDeletion(msgs[len(msgs)-1])
	j, last := i, cursor
	for j < len(msgs) && (msgs[j].Seq == last+1 || deleting && msgs[j].Control) {
		last = msgs[j].Seq
		j++
	}
	return msgs[i:j]
}

// isDeletion reports whether m is a deletion notice.
func isDeletion(m Message) bool {
	var nt notice
	return m.Control && json.Unmarshal(m.Payload, &nt) == nil && nt.Type == noticeDeleted
}

// inboxLock serializes deliveries to one connection. It stays in n.inbox
// only while a delivery holds it or waits for it, so n.inbox never holds
// more entries than deliveries under way.
type inboxLock struct {
	mu sync.Mutex // held by the delivery under way

	refs  sync.Mutex // guards users and dead
	users int        // deliveries holding or waiting for mu
	dead  bool       // removed from n.inbox: take a new one
}

// lockInbox locks connection id's inbox and returns the unlock.
func (n *Node) lockInbox(id string) (unlock func()) {
	for {
		v, ok := n.inbox.Load(id)
		if !ok {
			v, _ = n.inbox.LoadOrStore(id, new(inboxLock))
		}
		l := v.(*inboxLock)
		l.refs.Lock()
		if l.dead {
			l.refs.Unlock()
			continue
		}
		l.users++
		l.refs.Unlock()
		l.mu.Lock()
		return func() {
			l.mu.Unlock()
			l.refs.Lock()
			defer l.refs.Unlock()
			if l.users--; l.users == 0 {
				l.dead = true
				n.inbox.CompareAndDelete(id, l)
			}
		}
	}
}
