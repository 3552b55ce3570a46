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
//
// Concurrent Sends may share a transaction when the Store groups commits
// (sqlstore does): many goroutines sending at once cost about one commit
// per group, not one each. To store many messages at once, SendBatch.
//
// An error does not always mean the message was not stored: when ctx ends
// while the database commits, the message may be stored and delivered. A
// host that sends again after an error may deliver it twice; a Receiver
// that must not see a payload twice carries its own key in it.
func (n *Node) Send(ctx context.Context, connectionID string, payload []byte) (int64, error) {
	const op = "tether: send"
	c, err := n.sendable(ctx, op, connectionID, payload)
	if err != nil {
		return 0, err
	}
	start := n.metrics.start()
	seq, err := n.store.AppendOutbox(ctx, connectionID, payload, n.clock.Now())
	n.metrics.storeCall(ctx, StoreAppendOutbox, start, err)
	if err != nil {
		return 0, n.fail(ctx, op, err)
	}
	n.sent(ctx, c, 1)
	return seq, nil
}

// SendBatch stores payloads in the connection's outbox, in order, and
// returns their sequence numbers; it is Send for many messages. With a
// Store that implements BatchAppender (memstore, sqlstore) they are stored
// in one transaction, all or none, with consecutive numbers, for about
// the cost of one Send. With another Store they are appended one at a
// time, and an error can leave the first ones stored: the numbers
// returned with the error are theirs.
//
// Every payload is checked against Config.MaxPayload before anything is
// stored. An empty batch stores nothing. The peer receives the messages
// as if each had been sent on its own.
func (n *Node) SendBatch(ctx context.Context, connectionID string, payloads [][]byte) ([]int64, error) {
	const op = "tether: send batch"
	if len(payloads) == 0 {
		return nil, nil
	}
	c, err := n.sendable(ctx, op, connectionID, payloads...)
	if err != nil {
		return nil, err
	}
	ba, ok := n.store.(BatchAppender)
	if !ok {
		seqs := make([]int64, 0, len(payloads))
		for _, p := range payloads {
			start := n.metrics.start()
			seq, err := n.store.AppendOutbox(ctx, connectionID, p, n.clock.Now())
			n.metrics.storeCall(ctx, StoreAppendOutbox, start, err)
			if err != nil {
				n.sent(ctx, c, len(seqs))
				return seqs, n.fail(ctx, op, err)
			}
			seqs = append(seqs, seq)
		}
		n.sent(ctx, c, len(seqs))
		return seqs, nil
	}
	start := n.metrics.start()
	first, err := ba.AppendOutboxBatch(ctx, connectionID, payloads, n.clock.Now())
	n.metrics.storeCall(ctx, StoreAppendOutboxBatch, start, err)
	if err != nil {
		return nil, n.fail(ctx, op, err)
	}
	seqs := make([]int64, len(payloads))
	for i := range seqs {
		seqs[i] = first + int64(i)
	}
	n.sent(ctx, c, len(seqs))
	return seqs, nil
}

// sendable checks payloads against the size limit and returns the
// connection when it takes messages.
func (n *Node) sendable(ctx context.Context, op, connectionID string, payloads ...[]byte) (*Connection, error) {
	for _, p := range payloads {
		if len(p) > n.maxPayload {
			return nil, &Error{Code: CodeTooLarge, Op: op, Message: "payload is larger than the limit of " + strconv.Itoa(n.maxPayload) + " bytes"}
		}
	}
	start := n.metrics.start()
	c, err := n.store.GetConnection(ctx, connectionID)
	n.metrics.storeCall(ctx, StoreGetConnection, start, err)
	if err != nil {
		return nil, n.fail(ctx, op, err)
	}
	if c.Kind != KindPeer || c.Status == StatusPending || c.Status == StatusDeleted {
		return nil, &Error{Code: CodeNotConnected, Op: op, Message: "cannot send on a connection that is " + string(c.Status)}
	}
	return c, nil
}

// sent wakes delivery for count messages stored on c, once the
// transaction ctx may belong to commits.
func (n *Node) sent(ctx context.Context, c *Connection, count int) {
	if count == 0 {
		return
	}
	dir := directionOf(c)
	n.later(ctx, func() {
		n.signal(c.ID)
		n.metrics.sent(ctx, dir, count)
	})
}
