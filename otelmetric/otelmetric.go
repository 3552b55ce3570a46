package otelmetric

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tetherkit/tether"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the name of the meter the instruments are created on.
const ScopeName = "github.com/tetherkit/tether"

// Instrument names.
const (
	MessagesSent      = "tether.messages.sent"
	MessagesDelivered = "tether.messages.delivered"
	MessagesRetried   = "tether.messages.retried"
	MessagesQueued    = "tether.messages.queued"
	DeliveryDuration  = "tether.message.delivery.duration"
	PollsHeld         = "tether.polls.held"
	Handshakes        = "tether.handshakes"
	Refreshes         = "tether.refreshes"
	StoreDuration     = "tether.store.operation.duration"
)

// Attribute keys.
const (
	AttrDirection   = attribute.Key("tether.direction")
	AttrRole        = attribute.Key("tether.role")
	AttrOutcome     = attribute.Key("tether.outcome")
	AttrRefreshKind = attribute.Key("tether.refresh.kind")
	AttrStoreOp     = attribute.Key("tether.store.operation")
	AttrErrorType   = attribute.Key("error.type")
)

// Bucket boundaries, in seconds. A delivery takes milliseconds when both
// sides run, and hours when one is down; a Store call takes from tens of
// microseconds (memory) to seconds (a database under load).
var (
	deliveryBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400}
	storeBuckets    = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
)

// ErrNoProvider is New's error when it is given no MeterProvider.
var ErrNoProvider = errors.New("otelmetric: no MeterProvider: leave tether.Config.Metrics nil to take no measurements")

// New returns a tether.Metrics that records on instruments of a meter
// from mp, for tether.Config.Metrics. A nil mp is refused with
// ErrNoProvider rather than taken as a no-op: a host without a
// MeterProvider leaves Config.Metrics nil, which costs nothing. An error
// from mp's meter creating an instrument is returned as it is.
func New(mp metric.MeterProvider) (tether.Metrics, error) {
	if mp == nil {
		return nil, ErrNoProvider
	}
	meter := mp.Meter(ScopeName)
	m := &recorder{}
	var err, e error
	m.sent, e = meter.Int64Counter(MessagesSent, metric.WithUnit("{message}"),
		metric.WithDescription("Messages Send stored in an outbox."))
	err = errors.Join(err, e)
	m.delivered, e = meter.Int64Counter(MessagesDelivered, metric.WithUnit("{message}"),
		metric.WithDescription("Messages the peer acknowledged."))
	err = errors.Join(err, e)
	m.retried, e = meter.Int64Counter(MessagesRetried, metric.WithUnit("{message}"),
		metric.WithDescription("Messages sent again because an earlier attempt was not acknowledged."))
	err = errors.Join(err, e)
	m.queued, e = meter.Int64UpDownCounter(MessagesQueued, metric.WithUnit("{message}"),
		metric.WithDescription("Messages waiting in outboxes, as last read, at most a batch per connection."))
	err = errors.Join(err, e)
	m.latency, e = meter.Float64Histogram(DeliveryDuration, metric.WithUnit("s"),
		metric.WithDescription("Time from Send storing a message to the peer acknowledging it."),
		metric.WithExplicitBucketBoundaries(deliveryBuckets...))
	err = errors.Join(err, e)
	m.polls, e = meter.Int64UpDownCounter(PollsHeld, metric.WithUnit("{poll}"),
		metric.WithDescription("Long-polls of private peers held open, waiting for a message."))
	err = errors.Join(err, e)
	m.handshakes, e = meter.Int64Counter(Handshakes, metric.WithUnit("{handshake}"),
		metric.WithDescription("Ends of attempts to complete a connection's handshake, by outcome."))
	err = errors.Join(err, e)
	m.refreshes, e = meter.Int64Counter(Refreshes, metric.WithUnit("{refresh}"),
		metric.WithDescription("Refreshes of keys and credentials, by outcome."))
	err = errors.Join(err, e)
	m.store, e = meter.Float64Histogram(StoreDuration, metric.WithUnit("s"),
		metric.WithDescription("Duration of the tether Store's calls."),
		metric.WithExplicitBucketBoundaries(storeBuckets...))
	err = errors.Join(err, e)
	if err != nil {
		return nil, err
	}
	m.push = directionOpts(tether.DirectionPush)
	m.poll = directionOpts(tether.DirectionPoll)
	m.noAttrs = []metric.AddOption{}
	m.storeOK = make(map[string]opts, len(storeOps))
	for _, op := range storeOps {
		m.storeOK[op] = newOpts(AttrStoreOp.String(op))
	}
	return m, nil
}

var _ tether.Metrics = (*recorder)(nil)

// storeOps are the Store operations a Node measures.
var storeOps = [...]string{
	tether.StoreGetConnection, tether.StoreCreateConnection, tether.StoreConsumeInvitation,
	tether.StoreAppendOutbox, tether.StoreListOutbox, tether.StoreAckOutbox,
	tether.StoreInboxCursor, tether.StoreAdvanceInbox, tether.StoreDeliverInbox, tether.StoreLease,
}

// recorder implements tether.Metrics.
type recorder struct {
	sent, delivered, retried metric.Int64Counter
	queued, polls            metric.Int64UpDownCounter
	latency, store           metric.Float64Histogram
	handshakes, refreshes    metric.Int64Counter

	// The attribute sets of the hot paths, made once: recording with them
	// allocates nothing.
	push, poll opts
	noAttrs    []metric.AddOption
	storeOK    map[string]opts // by operation, for calls that succeeded; never modified
	// Sets made on first use, by their attributes' values.
	cache sync.Map // key -> opts
}

// opts are one attribute set as the options of Add and Record.
type opts struct {
	add    []metric.AddOption
	record []metric.RecordOption
}

func newOpts(kvs ...attribute.KeyValue) opts {
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return opts{add: []metric.AddOption{o}, record: []metric.RecordOption{o}}
}

func directionOpts(d tether.Direction) opts {
	return newOpts(AttrDirection.String(string(d)))
}

func (m *recorder) dir(d tether.Direction) opts {
	switch d {
	case tether.DirectionPush:
		return m.push
	case tether.DirectionPoll:
		return m.poll
	}
	return m.cached(key{kind: "direction", a: string(d)}, func() opts { return directionOpts(d) })
}

type key struct{ kind, a, b string }

func (m *recorder) cached(k key, make func() opts) opts {
	if v, ok := m.cache.Load(k); ok {
		return v.(opts)
	}
	v, _ := m.cache.LoadOrStore(k, make())
	return v.(opts)
}

func (m *recorder) MessagesSent(ctx context.Context, d tether.Direction, n int) {
	m.sent.Add(ctx, int64(n), m.dir(d).add...)
}

func (m *recorder) MessageDelivered(ctx context.Context, d tether.Direction, latency time.Duration) {
	o := m.dir(d)
	m.delivered.Add(ctx, 1, o.add...)
	m.latency.Record(ctx, latency.Seconds(), o.record...)
}

func (m *recorder) MessagesRetried(ctx context.Context, d tether.Direction, n int) {
	m.retried.Add(ctx, int64(n), m.dir(d).add...)
}

func (m *recorder) MessagesQueued(ctx context.Context, d tether.Direction, delta int) {
	m.queued.Add(ctx, int64(delta), m.dir(d).add...)
}

func (m *recorder) PollsHeld(ctx context.Context, delta int) {
	m.polls.Add(ctx, int64(delta), m.noAttrs...)
}

func (m *recorder) Handshake(ctx context.Context, role tether.Role, outcome tether.Outcome) {
	o := m.cached(key{"handshake", string(role), string(outcome)}, func() opts {
		return newOpts(AttrRole.String(string(role)), AttrOutcome.String(string(outcome)))
	})
	m.handshakes.Add(ctx, 1, o.add...)
}

func (m *recorder) Refresh(ctx context.Context, kind string, outcome tether.Outcome) {
	o := m.cached(key{"refresh", kind, string(outcome)}, func() opts {
		return newOpts(AttrRefreshKind.String(kind), AttrOutcome.String(string(outcome)))
	})
	m.refreshes.Add(ctx, 1, o.add...)
}

func (m *recorder) StoreCall(ctx context.Context, op string, d time.Duration, err error) {
	if o, ok := m.storeOK[op]; ok && err == nil {
		m.store.Record(ctx, d.Seconds(), o.record...)
		return
	}
	code := string(tether.ErrorCode(err))
	o := m.cached(key{"store", op, code}, func() opts {
		if code == "" {
			return newOpts(AttrStoreOp.String(op))
		}
		return newOpts(AttrStoreOp.String(op), AttrErrorType.String(code))
	})
	m.store.Record(ctx, d.Seconds(), o.record...)
}
