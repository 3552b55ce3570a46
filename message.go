package tether

import (
	"context"
	"strconv"
	"time"
)

// Message is one payload sent on a connection. Seq numbers the messages of
// one connection in the sender's order, starting at 1; the receiver sees
// them in that order. Lifecycle notices travel in the same sequence, so the
// numbers a Receiver sees increase but may skip.
type Message struct {
	ConnectionID string // on the receiving side: the receiver's connection ID
	Seq          int64
	Payload      []byte
	Created      time.Time // when Send stored it on the sending side
	// Control marks a lifecycle notice (pause, activate, delete, key
	// change) that the Node writes to the outbox and its peer applies in
	// order with the data messages. Receivers never see one.
	Control bool
}

// DefaultMaxPayload is Config.MaxPayload's default.
const DefaultMaxPayload = 1 << 20

// Receiver is the host's handler for messages arriving on its connections.
//
// Receive is called for the messages of one connection one at a time, in
// Seq order; calls for different connections may run concurrently. If it
// returns nil the message is acknowledged and never handed to Receive again
// (the Store records the connection's inbox cursor). If it returns an error
// the message is not acknowledged: the sender keeps it and it is delivered
// again later, with backoff. A crash between Receive returning nil and the
// cursor being stored can deliver the message once more, so a Receiver that
// must see each message exactly once is transactional or idempotent: it may
// record m.Seq with its own data and skip a Seq it has seen.
//
// Receive may call the Node's methods with the context it is given: Send a
// reply, Pause, Update and so on. With a Store that implements
// AtomicInbox (sqlstore), those calls join the transaction that marks the
// message delivered, so a reply is stored if and only if the message is
// marked delivered, even across crashes; their events reach OnEvent, and
// their messages are sent, once that transaction commits. Calls that wait
// on a peer (Accept, Sync) fail there with CodeInvalid: make them after
// Receive returns. A call made with another context would wait for a
// database connection the transaction holds; pass the one Receive gets.
type Receiver interface {
	Receive(ctx context.Context, m Message) error
}

// ReceiverFunc adapts a function to Receiver.
type ReceiverFunc func(ctx context.Context, m Message) error

// Receive calls f.
func (f ReceiverFunc) Receive(ctx context.Context, m Message) error { return f(ctx, m) }

// Send stores payload in the connection's outbox with the next sequence
// number and returns that number. When Send returns the message is
// durable: Run delivers it, at least once and in order, and it leaves the
// outbox only after the peer acknowledged it. Paused and inactive
// connections queue; pending and deleted ones refuse with CodeNotConnected.
// A payload over Config.MaxPayload is refused with CodeTooLarge.
func (n *Node) Send(ctx context.Context, connectionID string, payload []byte) (int64, error) {
	const op = "tether: send"
	if len(payload) > n.maxPayload {
		return 0, &Error{Code: CodeTooLarge, Op: op, Message: "payload is larger than the limit of " + strconv.Itoa(n.maxPayload) + " bytes"}
	}
	start := n.metrics.start()
	c, err := n.store.GetConnection(ctx, connectionID)
	n.metrics.storeCall(ctx, StoreGetConnection, start, err)
	if err != nil {
		return 0, n.fail(ctx, op, err)
	}
	if c.Kind != KindPeer || c.Status == StatusPending || c.Status == StatusDeleted {
		return 0, &Error{Code: CodeNotConnected, Op: op, Message: "cannot send on a connection that is " + string(c.Status)}
	}
	start = n.metrics.start()
	seq, err := n.store.AppendOutbox(ctx, connectionID, payload, n.clock.Now())
	n.metrics.storeCall(ctx, StoreAppendOutbox, start, err)
	if err != nil {
		return 0, n.fail(ctx, op, err)
	}
	dir := directionOf(c)
	n.later(ctx, func() {
		n.signal(connectionID)
		n.metrics.sent(ctx, dir)
	})
	return seq, nil
}
