package tether

import (
	"context"
	"encoding/json"
	"sync"
	"time"
)

// Metrics receives a Node's measurements: Config.Metrics. Config.Metrics
// nil means none are taken, and they cost nothing: each place that would
// report checks a pointer and moves on, with no clock read and no
// allocation. The otelmetric module implements Metrics with OpenTelemetry
// instruments; a host may implement it for any other system.
//
// Contract:
//   - Methods are called from many goroutines at once, on the paths that
//     deliver messages and answer peers: they must be safe for concurrent
//     use, must not block, and should take no longer than an atomic add
//     or a histogram record. They never fail; an implementation drops
//     what it cannot record.
//   - ctx is the context of the work measured, for exemplars and baggage
//     only: it may have ended, and it must not be kept or used for I/O.
//   - Messages are data messages, the ones Send stores. The notices a
//     Node sends of its own (pause, activate, delete, key change) are not
//     counted, though they travel on the same path.
//   - A direction says how a connection's messages travel from this node:
//     DirectionPush to a public peer, which this node calls;
//     DirectionPoll to a private peer, which long-polls this node.
//   - Counts and times are per process: several Nodes sharing a Store
//     report each what it did, and the sums over them are the totals.
//   - Durations are measured with Config.Clock.
//
// Strings passed (directions, outcomes, refresh kinds, store operation
// names) come from small fixed sets, named by the constants below, so an
// implementation may use them as metric attributes. Later versions add
// values to these sets, rather than methods to this interface, where they
// can.
type Metrics interface {
	// MessagesSent counts n messages Send stored in an outbox, once
	// they are durable (inside a Receiver with an AtomicInbox Store, once
	// the delivery's transaction commits).
	MessagesSent(ctx context.Context, dir Direction, n int)

	// MessageDelivered counts one message the peer acknowledged, with
	// latency from when Send stored it (Message.Created) to when this
	// node learned the peer has it: the answer to a push, or, for a
	// private peer, the next poll whose cursor acknowledges it. A poll
	// that acknowledges messages another process served is counted by
	// the process that served them, at the next poll it answers.
	MessageDelivered(ctx context.Context, dir Direction, latency time.Duration)

	// MessagesRetried counts n messages sent to the peer again because
	// an earlier attempt to deliver them was not acknowledged: the push
	// failed, the peer applied less than the batch, or a private peer
	// polled again without acknowledging what the previous answer
	// carried.
	MessagesRetried(ctx context.Context, dir Direction, n int)

	// MessagesQueued adds delta, which may be negative, to the number of
	// messages waiting in outboxes as this node last read them. Each
	// read of a connection's outbox replaces that connection's previous
	// reading, so the running sum is the backlog this node saw, with at
	// most a page (Config.BatchSize) per connection; it goes back to
	// zero as the messages are acknowledged, and a connection's reading
	// is taken back when its worker stops, when it is deleted, and, for
	// a private peer that stopped polling, once two poll waits and a
	// minute have passed without a poll.
	MessagesQueued(ctx context.Context, dir Direction, delta int)

	// PollsHeld adds delta (1 or -1) to the number of private peers'
	// long-polls this node holds open, waiting for a message for them.
	PollsHeld(ctx context.Context, delta int)

	// Handshake counts one end of an attempt to complete a connection's
	// handshake on this side, playing role: OutcomeOK when the
	// connection became active; OutcomeRefused when this side or the
	// peer refused or gave it up for good; OutcomeExpired when the
	// invitation expired first; OutcomeFailed when the attempt failed in
	// a way that may pass (the peer could not be reached, say) and a
	// later one follows.
	Handshake(ctx context.Context, role Role, outcome Outcome)

	// Refresh counts one refresh of credentials of the given kind
	// (RefreshKey, RefreshPeerKey, RefreshToken) with its outcome:
	// OutcomeOK, OutcomeRefused when the new credentials were rejected,
	// OutcomeFailed when the refresh is to be tried again.
	Refresh(ctx context.Context, kind string, outcome Outcome)

	// StoreCall reports that a call of the Store method op (its name,
	// such as "AppendOutbox": the Store* constants) took d and returned
	// err. The Node measures the calls on the message path (Send, push,
	// poll, delivery to the Receiver) and those that complete handshakes.
	StoreCall(ctx context.Context, op string, d time.Duration, err error)
}

// Direction is how a connection's messages travel from a Node: the
// direction of MessagesSent, MessageDelivered and so on.
type Direction string

// Directions.
const (
	// DirectionPush: the peer is public, and this node pushes to it.
	DirectionPush Direction = "push"
	// DirectionPoll: the peer is private, and takes the messages when
	// it long-polls this node.
	DirectionPoll Direction = "poll"
)

// directionOf returns the direction of c's messages from this side:
// DirectionPoll when its peer is private, DirectionPush otherwise.
func directionOf(c *Connection) Direction {
	if c.RemoteURL == "" {
		return DirectionPoll
	}
	return DirectionPush
}

// Outcome is how a handshake or a refresh ended, for Metrics.
type Outcome string

// Outcomes.
const (
	OutcomeOK      Outcome = "ok"
	OutcomeRefused Outcome = "refused"
	OutcomeExpired Outcome = "expired"
	OutcomeFailed  Outcome = "failed"
)

// Refresh kinds, for Metrics.Refresh.
const (
	// RefreshKey: this side's key change took effect on a connection
	// (RotateKey announced it, and the peer acknowledged the notice).
	RefreshKey = "key"
	// RefreshPeerKey: the peer's key change notice was applied on a
	// connection, or rejected.
	RefreshPeerKey = "peer_key"
	// RefreshToken: an org connection's OAuth tokens were refreshed.
	RefreshToken = "token"
)

// Names of the Store methods a Node measures, for Metrics.StoreCall.
const (
	StoreGetConnection     = "GetConnection"
	StoreCreateConnection  = "CreateConnection"
	StoreConsumeInvitation = "ConsumeInvitation"
	StoreAppendOutbox      = "AppendOutbox"
	StoreAppendOutboxBatch = "AppendOutboxBatch"
	StoreListOutbox        = "ListOutbox"
	// StoreAckOutbox measures the acknowledgement of an outbox: AckOutbox,
	// and, the one time a key change takes effect, the update it brings.
	StoreAckOutbox    = "AckOutbox"
	StoreInboxCursor  = "InboxCursor"
	StoreAdvanceInbox = "AdvanceInbox"
	StoreDeliverInbox = "DeliverInbox"
	StoreLease        = "Lease"
)

// metrics is what a Node keeps to report to Config.Metrics. A Node with no
// Metrics has a nil *metrics, and every method of a nil *metrics returns
// at once.
type metrics struct {
	m     Metrics
	clock Clock

	// polled holds, by connection ID, what this node served private
	// peers' polls and not yet saw acknowledged.
	polled sync.Map // string -> *pollTally

	sweepMu   sync.Mutex
	nextSweep time.Time
}

func newMetrics(m Metrics, clock Clock) *metrics {
	if m == nil {
		return nil
	}
	return &metrics{m: m, clock: clock}
}

// start returns the time a measured Store call starts: the zero time, with
// no clock read, when metrics are off.
func (m *metrics) start() time.Time {
	if m == nil {
		return time.Time{}
	}
	return m.clock.Now()
}

// storeCall reports a Store call that began at start.
func (m *metrics) storeCall(ctx context.Context, op string, start time.Time, err error) {
	if m == nil {
		return
	}
	m.m.StoreCall(ctx, op, m.clock.Now().Sub(start), err)
}

func (m *metrics) sent(ctx context.Context, dir Direction, count int) {
	if m == nil {
		return
	}
	m.m.MessagesSent(ctx, dir, count)
}

func (m *metrics) pollsHeld(ctx context.Context, delta int) {
	if m == nil {
		return
	}
	m.m.PollsHeld(ctx, delta)
}

func (m *metrics) handshake(ctx context.Context, role Role, outcome Outcome) {
	if m == nil {
		return
	}
	m.m.Handshake(ctx, role, outcome)
}

func (m *metrics) refresh(ctx context.Context, kind string, outcome Outcome) {
	if m == nil {
		return
	}
	m.m.Refresh(ctx, kind, outcome)
}

// outcomeOf is the outcome of a handshake or refresh step that returned
// err: ok, failed when it may pass, refused otherwise.
func outcomeOf(err error) Outcome {
	switch {
	case err == nil:
		return OutcomeOK
	case transient(err) || ErrorCode(err) == CodeClockSkew || ErrorCode(err) == CodeConflict:
		return OutcomeFailed
	}
	return OutcomeRefused
}

// keyMoves reports whether acknowledging c's outbox up to upTo makes the
// key change c announced take effect.
func keyMoves(c *Connection, upTo int64) bool {
	return c.PendingKeyID != "" && upTo >= c.NoticeSeq
}

// keyAcknowledged reports the key change an acknowledgement up to upTo
// made take effect, if it did; err is the acknowledgement's.
func (m *metrics) keyAcknowledged(ctx context.Context, c *Connection, upTo int64, err error) {
	if m == nil || !keyMoves(c, upTo) {
		return
	}
	m.m.Refresh(ctx, RefreshKey, outcomeOf(err))
}

// peerNotice reports the outcome of applying a notice from the peer, when
// it was a key change.
func (n *Node) peerNotice(ctx context.Context, payload []byte, err error) {
	if n.metrics == nil {
		return
	}
	var nt notice
	if json.Unmarshal(payload, &nt) != nil || nt.Type != noticeRekey {
		return
	}
	if err != nil {
		n.metrics.refresh(ctx, RefreshPeerKey, outcomeOf(err))
		return
	}
	// Inside a delivery's transaction the change counts once committed.
	n.later(ctx, func() { n.metrics.refresh(context.WithoutCancel(ctx), RefreshPeerKey, OutcomeOK) })
}

// dataCount counts the data messages of msgs.
func dataCount(msgs []Message) int {
	k := 0
	for _, m := range msgs {
		if !m.Control {
			k++
		}
	}
	return k
}

// pushTally is what a pusher knows of its connection's outbox, to report
// it.
type pushTally struct {
	queued int   // data messages in the last page read
	sent   int64 // the highest Seq pushed
	acked  int64 // the highest Seq the peer acknowledged
}

// pushRead records a page read from the outbox (nil: none is read, as
// another process delivers it).
func (m *metrics) pushRead(ctx context.Context, t *pushTally, msgs []Message) {
	if m == nil {
		return
	}
	k := dataCount(msgs)
	if d := k - t.queued; d != 0 {
		t.queued = k
		m.m.MessagesQueued(ctx, DirectionPush, d)
	}
}

// pushing records the batch about to be pushed: msgs, cut as push cuts it.
func (m *metrics) pushing(ctx context.Context, t *pushTally, msgs []Message) {
	if m == nil {
		return
	}
	msgs = msgs[:batchLen(msgs)]
	again := 0
	for _, msg := range msgs {
		if !msg.Control && msg.Seq <= t.sent {
			again++
		}
	}
	if again > 0 {
		m.m.MessagesRetried(ctx, DirectionPush, again)
	}
	if len(msgs) > 0 {
		t.sent = max(t.sent, msgs[len(msgs)-1].Seq)
	}
}

// pushAcked records that the peer acknowledged msgs up to acked.
func (m *metrics) pushAcked(ctx context.Context, t *pushTally, msgs []Message, acked int64) {
	if m == nil || acked <= t.acked {
		return
	}
	now := m.clock.Now()
	for _, msg := range msgs {
		if !msg.Control && msg.Seq > t.acked && msg.Seq <= acked {
			m.m.MessageDelivered(ctx, DirectionPush, now.Sub(msg.Created))
		}
	}
	t.acked = acked
}

// pushDone takes back a pusher's reading when it stops.
func (m *metrics) pushDone(ctx context.Context, t *pushTally) {
	m.pushRead(ctx, t, nil)
}

// pollTally is what this node served a private peer's polls for one
// connection.
type pollTally struct {
	mu      sync.Mutex
	queued  int           // data messages in the last page read
	served  int64         // the highest Seq served
	waiting []servedEntry // data messages served and not acknowledged yet
	seen    time.Time     // when a poll last named the connection
}

type servedEntry struct {
	seq     int64
	created time.Time
}

// maxWaiting bounds a pollTally's waiting list: more than a few answers'
// worth means the peer does not acknowledge; the oldest go uncounted.
const maxWaiting = 2 * MaxOutboxPage

func (m *metrics) pollTally(id string) *pollTally {
	v, ok := m.polled.Load(id)
	if !ok {
		v, _ = m.polled.LoadOrStore(id, new(pollTally))
	}
	return v.(*pollTally)
}

// pollRead records a page of connection id's outbox read for a poll.
func (m *metrics) pollRead(ctx context.Context, id string, msgs []Message) {
	if m == nil {
		return
	}
	t := m.pollTally(id)
	k := dataCount(msgs)
	t.mu.Lock()
	d := k - t.queued
	t.queued, t.seen = k, m.clock.Now()
	t.mu.Unlock()
	if d != 0 {
		m.m.MessagesQueued(ctx, DirectionPoll, d)
	}
}

// pollServed records the messages of connection id an answer to a poll
// carries.
func (m *metrics) pollServed(ctx context.Context, id string, msgs []Message) {
	if m == nil || len(msgs) == 0 {
		return
	}
	t := m.pollTally(id)
	again := 0
	t.mu.Lock()
	for _, msg := range msgs {
		switch {
		case msg.Seq <= t.served:
			if !msg.Control {
				again++
			}
		case !msg.Control:
			t.waiting = append(t.waiting, servedEntry{msg.Seq, msg.Created})
		}
	}
	t.served = max(t.served, msgs[len(msgs)-1].Seq)
	if over := len(t.waiting) - maxWaiting; over > 0 {
		t.waiting = append(t.waiting[:0], t.waiting[over:]...)
	}
	t.mu.Unlock()
	if again > 0 {
		m.m.MessagesRetried(ctx, DirectionPoll, again)
	}
}

// pollAcked records that a poll acknowledged connection id's outbox up to
// cursor, at now.
func (m *metrics) pollAcked(ctx context.Context, id string, cursor int64, now time.Time) {
	if m == nil {
		return
	}
	v, ok := m.polled.Load(id)
	if !ok {
		return
	}
	t := v.(*pollTally)
	t.mu.Lock()
	t.seen = now
	i := 0
	for i < len(t.waiting) && t.waiting[i].seq <= cursor {
		m.m.MessageDelivered(ctx, DirectionPoll, now.Sub(t.waiting[i].created))
		i++
	}
	t.waiting = t.waiting[i:]
	if len(t.waiting) == 0 {
		t.waiting = nil
	}
	t.mu.Unlock()
}

// pollGone drops what was recorded of connection id's polls.
func (m *metrics) pollGone(ctx context.Context, id string) {
	if m == nil {
		return
	}
	v, ok := m.polled.LoadAndDelete(id)
	if !ok {
		return
	}
	t := v.(*pollTally)
	t.mu.Lock()
	d := t.queued
	t.queued = 0
	t.mu.Unlock()
	if d != 0 {
		m.m.MessagesQueued(ctx, DirectionPoll, -d)
	}
}

// sweep drops, at most once every sweepEvery, what was recorded of the
// polls of connections no poll named for stale.
func (m *metrics) sweep(ctx context.Context, now time.Time, stale time.Duration) {
	if m == nil {
		return
	}
	m.sweepMu.Lock()
	if now.Before(m.nextSweep) {
		m.sweepMu.Unlock()
		return
	}
	m.nextSweep = now.Add(sweepEvery)
	m.sweepMu.Unlock()
	m.polled.Range(func(id, v any) bool {
		t := v.(*pollTally)
		t.mu.Lock()
		old := now.Sub(t.seen) >= stale
		t.mu.Unlock()
		if old {
			m.pollGone(ctx, id.(string))
		}
		return true
	})
}
