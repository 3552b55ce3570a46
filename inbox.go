package tether

import (
	"context"
	"sync"
)

// deliver hands msgs (ascending Seq) to the Receiver in order, skipping
// those already applied and stopping at a gap, and advances the inbox
// cursor after each. It returns the cursor and the Receiver's error, if
// any. Deliveries to one connection are serialized.
func (n *Node) deliver(ctx context.Context, id string, msgs []Message) (int64, error) {
	mu, _ := n.inbox.LoadOrStore(id, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	cursor, err := n.store.InboxCursor(ctx, id)
	if err != nil {
		return 0, err
	}
	if n.receiver == nil {
		return cursor, &Error{Code: CodeUnavailable, Op: "tether: deliver", Message: "no receiver is configured"}
	}
	var failed error
	receive := func(ctx context.Context, m Message) error {
		if err := n.receiver.Receive(ctx, m); err != nil {
			failed = &Error{Code: CodeUnavailable, Op: "tether: deliver", Message: "the receiver failed", Err: err}
			return failed
		}
		return nil
	}
	atomic, _ := n.store.(AtomicInbox)
	for attempt := 0; ; attempt++ {
		run := nextRun(msgs, cursor)
		if len(run) == 0 {
			return cursor, nil
		}
		var err error
		if atomic != nil {
			cursor, err = atomic.DeliverInbox(ctx, id, cursor, run, receive)
		} else {
			for _, m := range run {
				if err = receive(ctx, m); err != nil {
					break
				}
				if err = n.store.AdvanceInbox(ctx, id, cursor, m.Seq); err != nil {
					break
				}
				cursor = m.Seq
			}
		}
		switch {
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

// nextRun returns the messages of msgs (ascending Seq) that follow cursor
// without a gap.
func nextRun(msgs []Message, cursor int64) []Message {
	i := 0
	for i < len(msgs) && msgs[i].Seq <= cursor {
		i++
	}
	j := i
	for j < len(msgs) && msgs[j].Seq == cursor+int64(j-i)+1 {
		j++
	}
	return msgs[i:j]
}
