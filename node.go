package tether

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherkit/tether/internal/wire"
)

// Config configures a Node. Store is required; every other zero value is a
// safe default.
type Config struct {
	// Store keeps connections, events and the instance identity.
	Store Store
	// Transport carries requests to remote instances. Without one the node
	// can still initiate connections and answer requests, but accepting an
	// invitation from a public initiator, or polling as a private
	// initiator, fails with CodeUnavailable.
	Transport Transport
	// Endpoint is the public URL at which this instance's Handler is
	// reachable by others. Empty means this instance is private: it only
	// makes outgoing requests and is never called.
	Endpoint string
	// AdminURL, when set, is the URL of this instance's admin page (its
	// Connections screen): it is shared with partners in invitations and
	// acceptances, so that their pages can offer "Go to remote"
	// (Connection.RemoteAdminURL). An absolute http or https URL without
	// query or fragment; empty: not shared.
	AdminURL string
	// URLPolicy decides which remote URLs may be contacted; the zero value
	// allows https to public addresses only.
	URLPolicy URLPolicy
	// DisplayName is what this instance calls itself to partners that
	// probe it before initiating a connection (Node.Info, Node.Probe): the
	// name of the installation, say "Acme Support". Text of at most
	// MaxNameLen characters, validated like a connection's name; empty:
	// none is shown.
	DisplayName string
	// Modes are the configuration modes this instance supports, in the
	// order a page should offer them. Nil or empty means all three:
	// ModeBasic, ModeVisual, ModeScript. When set, Initiate refuses
	// another mode, and Preview and Accept refuse an invitation in
	// another mode, with CodeInvalid. Partners learn them from Node.Probe.
	Modes []Mode
	// InvitationTTL is the default lifetime of invitations (72 h when zero,
	// at most MaxInvitationTTL).
	InvitationTTL time.Duration
	// HandshakeInterval is how often Run follows up pending handshakes: a
	// private initiator asks the destination whether its invitation was
	// accepted, an acceptor whose answer was lost asks the initiator, and
	// expired invitations are closed. 2 s when zero. (Not to be confused
	// with PollWait, the long-poll's wait.)
	HandshakeInterval time.Duration
	// PollInterval is HandshakeInterval's former name, used when
	// HandshakeInterval is zero.
	//
	// Deprecated: use HandshakeInterval.
	PollInterval time.Duration
	// Clock is the time source; the system clock when nil.
	Clock Clock
	// Rand is the source of keys, IDs and nonces; crypto/rand when nil.
	Rand io.Reader
	// Logger receives operational messages, never secrets; discarded when nil.
	Logger *slog.Logger
	// Metrics receives measurements of messages, polls, handshakes,
	// refreshes and Store calls (see Metrics); none are taken when nil.
	// The otelmetric module provides one on an OpenTelemetry
	// MeterProvider.
	Metrics Metrics

	// OnEvent, when set, is called with every event this node appends, after
	// it is stored: a hook to show changes or forward them as webhooks. It is
	// called synchronously and must not block.
	OnEvent func(Event)

	// Receiver gets the messages arriving on this instance's connections.
	// Without one, arriving messages are refused and stay queued at the
	// sender.
	Receiver Receiver
	// MaxPayload bounds one message's payload (DefaultMaxPayload when zero).
	MaxPayload int
	// PollWait is how long a public side holds a private peer's poll open
	// when there is nothing to deliver, and how long a private side asks it
	// to (25 s when zero).
	PollWait time.Duration
	// RequestTimeout bounds every request to a peer, on top of PollWait for
	// polls (30 s when zero).
	RequestTimeout time.Duration
	// RetryBase and RetryMax shape the backoff after a failed delivery:
	// attempt n waits a random duration up to min(RetryMax, RetryBase*2^n)
	// ("full jitter"), and never less than a Retry-After the peer sent.
	// 200 ms and 30 s when zero.
	RetryBase, RetryMax time.Duration
	// BatchSize is the most messages one push, or one answer to a poll,
	// carries (500 when zero, at most 1000).
	BatchSize int
	// LeaseTTL is how long a node may deliver a connection's outbox before
	// it must renew its lease; a node that dies holding one delays that
	// outbox by at most this long, unless it comes back under the same
	// Replica name. A lease is renewed once half of it has passed, so with
	// the default, twice RequestTimeout, a push never outlives its lease.
	LeaseTTL time.Duration
	// Replica names this process among those sharing the Store: a host
	// name or pod name that stays the same across restarts. A process that
	// restarts under the same name takes its leases back at once. Empty
	// means a random name for each Open: leases of a process that crashed
	// then run out after LeaseTTL. Two processes running at the same time
	// must not share a name.
	Replica string
	// DeliveryWorkers bounds how many connections Run pushes to their
	// peers at once (DefaultDeliveryWorkers when zero). Connections with
	// messages waiting take turns, one batch each; an idle connection
	// takes no worker.
	DeliveryWorkers int
	// SweepInterval is how often Run asks a Store that other processes
	// share (an OutboxWatcher) which connections have messages waiting:
	// one query that catches what a lost notification would otherwise
	// delay. DefaultSweepInterval when zero. A Store only this process
	// uses (memstore; SQLite, see LocalStore) is swept only when Run
	// starts: every message stored after that is signaled in this process.
	SweepInterval time.Duration
	// PausedRetry is the Retry-After this instance gives peers whose
	// deliveries it refuses while a connection is paused (10 s when zero).
	PausedRetry time.Duration
}

// Node is the connection manager of one tether instance: it initiates and
// accepts connections, keeps their lifecycle, and answers remote instances
// through its Handle method. A Node is safe for concurrent use; several
// Nodes (replicas of one host app) may share one Store.
type Node struct {
	store          Store
	transport      Transport
	endpoint       string
	adminURL       string
	policy         URLPolicy
	displayName    string
	modes          []Mode // never empty
	infoBody       []byte // this node's Info as JSON, the answer to OpInfo
	ttl            time.Duration
	handshakeEvery time.Duration
	clock          Clock
	rand           io.Reader
	log            *slog.Logger
	metrics        *metrics // nil when Config.Metrics is

	keys      atomic.Pointer[keySet]
	keyReload sync.Mutex   // serializes reloadKeys
	keyReads  atomic.Int64 // reads reloadKeys began
	invites   *invitationParser
	messages  *wire.Parser
	replays   wire.ReplayCache

	onEvent     func(Event)
	receiver    Receiver
	maxPayload  int
	pollWait    time.Duration
	timeout     time.Duration
	retryBase   time.Duration
	retryMax    time.Duration
	pausedRetry time.Duration
	batch       int
	leaseTTL    time.Duration
	holder      string // this node's name in leases
	shared      bool   // the Store is shared by processes: sweep it, re-read keys
	workers     int
	sweepEvery  time.Duration // 0: never after Run's start
	sched       atomic.Pointer[runner]

	wakeMu   sync.Mutex
	wake     map[string]map[*waiter]struct{} // per connection: who waits for its outbox or status to change
	inbox    sync.Map                        // connection ID -> *sync.Mutex serializing delivery to the Receiver
	acked    sync.Map                        // connection ID -> int64: the outbox was acknowledged up to here by a poll
	statuses sync.Map                        // connection ID -> *atomic.Int64: status changes made here (statusEpoch)
	changed  chan struct{}                   // connections were added or changed status: Run rescans
	kickMu   sync.Mutex
	kicked   map[string]bool // connections with a new notice: Run makes sure they have a pusher
	running  atomic.Bool
	health   healthCache

	statusChanges atomic.Uint64 // status changes made here, to any connection (StatusChanges)
}

var _ Handler = (*Node)(nil)

// Open loads this instance's identity from cfg.Store, creating it with a
// fresh key on first use, and returns a Node.
func Open(ctx context.Context, cfg Config) (*Node, error) {
	const op = "tether: open"
	if cfg.Store == nil {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "Config.Store is required"}
	}
	if err := checkURLSyntax("Config.Endpoint", cfg.Endpoint, true); err != nil {
		return nil, withOp(op, err)
	}
	if strings.HasPrefix(cfg.Endpoint, "http:") && !cfg.URLPolicy.AllowHTTP {
		return nil, invalidf(op, "Config.Endpoint", "must be an https URL (allow http in Config.URLPolicy for development)")
	}
	if err := checkURLSyntax("Config.AdminURL", cfg.AdminURL, true); err != nil {
		return nil, withOp(op, err)
	}
	if err := checkText("Config.DisplayName", cfg.DisplayName, 0, MaxNameLen); err != nil {
		return nil, withOp(op, err)
	}
	modes, err := checkModes("Config.Modes", cfg.Modes)
	if err != nil {
		return nil, withOp(op, err)
	}
	n := &Node{
		adminURL:       cfg.AdminURL,
		displayName:    cfg.DisplayName,
		modes:          modes,
		store:          cfg.Store,
		transport:      cfg.Transport,
		endpoint:       cfg.Endpoint,
		policy:         cfg.URLPolicy,
		ttl:            cfg.InvitationTTL,
		handshakeEvery: cmp.Or(cfg.HandshakeInterval, cfg.PollInterval),
		clock:          cfg.Clock,
		rand:           cfg.Rand,
		log:            cfg.Logger,
		invites:        newInvitationParser(),
		messages:       wire.NewParser(wire.TypRequest),

		onEvent:     cfg.OnEvent,
		receiver:    cfg.Receiver,
		maxPayload:  orDefault(cfg.MaxPayload, DefaultMaxPayload),
		pollWait:    orDefault(cfg.PollWait, 25*time.Second),
		timeout:     orDefault(cfg.RequestTimeout, 30*time.Second),
		retryBase:   orDefault(cfg.RetryBase, 200*time.Millisecond),
		retryMax:    orDefault(cfg.RetryMax, 30*time.Second),
		pausedRetry: orDefault(cfg.PausedRetry, 10*time.Second),
		batch:       min(orDefault(cfg.BatchSize, 500), MaxOutboxPage),
		leaseTTL:    orDefault(cfg.LeaseTTL, 2*orDefault(cfg.RequestTimeout, 30*time.Second)),
		workers:     orDefault(cfg.DeliveryWorkers, DefaultDeliveryWorkers),
		wake:        make(map[string]map[*waiter]struct{}),
		changed:     make(chan struct{}, 1),
	}
	if n.ttl == 0 {
		n.ttl = DefaultInvitationTTL
	}
	if n.ttl < time.Minute || n.ttl > MaxInvitationTTL {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "Config.InvitationTTL must be between 1 minute and 30 days"}
	}
	if n.handshakeEvery <= 0 {
		n.handshakeEvery = 2 * time.Second
	}
	if n.clock == nil {
		n.clock = systemClock{}
	}
	if n.rand == nil {
		n.rand = rand.Reader
	}
	if n.log == nil {
		n.log = slog.New(slog.DiscardHandler)
	}
	n.metrics = newMetrics(cfg.Metrics, n.clock)
	if n.infoBody, err = json.Marshal(n.Info()); err != nil {
		return nil, Wrap(CodeInternal, op, err)
	}
	n.holder = cfg.Replica
	if n.holder == "" {
		holder, err := randomToken(n.rand)
		if err != nil {
			return nil, Wrap(CodeInternal, op, err)
		}
		n.holder = holder
	}
	_, n.shared = n.store.(OutboxWatcher)
	if l, ok := n.store.(LocalStore); ok && l.Local() {
		n.shared = false
	}
	if n.shared {
		n.sweepEvery = orDefault(cfg.SweepInterval, DefaultSweepInterval)
	}
	inst, err := n.store.LoadInstance(ctx)
	if ErrorCode(err) == CodeNotFound {
		inst, err = newInstance(n.clock.Now(), n.rand)
		if err == nil {
			err = n.store.SaveInstance(ctx, inst)
		}
		if ErrorCode(err) == CodeAlreadyExists { // another replica created it first
			inst, err = n.store.LoadInstance(ctx)
		}
	}
	if err != nil {
		return nil, n.fail(ctx, op, err)
	}
	if err := inst.validate(); err != nil {
		return nil, withOp(op, err)
	}
	n.keys.Store(newKeySet(inst))
	return n, nil
}

func orDefault[T int | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

// ID returns this instance's stable ID.
func (n *Node) ID() string { return n.keys.Load().instance }

// Endpoint returns this instance's URL, empty when it is private.
func (n *Node) Endpoint() string { return n.endpoint }

// Fingerprint returns the key ID of this instance's current key, for people
// to compare out of band.
func (n *Node) Fingerprint() string { return n.keys.Load().current.ID }

type actorKey struct{}

// WithActor returns a context that makes the Node record actor (a user ID,
// say) in the events of the calls it is passed to.
func WithActor(ctx context.Context, actor string) context.Context {
	return context.WithValue(ctx, actorKey{}, actor)
}

// ActorOf returns the actor WithActor put in ctx, ActorLocal when none:
// for adapters that record who acted.
func ActorOf(ctx context.Context) string { return actorOf(ctx) }

func actorOf(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return ActorLocal
}

func (n *Node) event(ctx context.Context, t EventType, detail string) Event {
	return Event{Type: t, Time: n.clock.Now(), Actor: actorOf(ctx), Detail: detail}
}

// emit passes stored events to the host's OnEvent hook.
func (n *Node) emit(id string, evs ...Event) {
	if n.onEvent == nil {
		return
	}
	for _, e := range evs {
		e.ConnectionID = id
		n.onEvent(e)
	}
}

// Get returns a connection by ID, deleted ones included.
func (n *Node) Get(ctx context.Context, id string) (*Connection, error) {
	const op = "tether: get"
	c, err := n.scoped(ctx, op, id)
	if err != nil {
		return nil, n.fail(ctx, op, err)
	}
	return c, nil
}

// List returns a page of connections matching opts and the cursor of the
// next page (empty when there is none).
func (n *Node) List(ctx context.Context, opts ListOptions) ([]*Connection, string, error) {
	if o, ok := OwnerOf(ctx); ok {
		if o == "" {
			return nil, "", errEmptyOwner("tether: list")
		}
		opts.Owner = o
	}
	conns, next, err := n.store.ListConnections(ctx, opts)
	return conns, next, n.fail(ctx, "tether: list", err)
}

// Events returns a connection's history after sequence number after, oldest
// first, at most limit entries (0: 100). It works for deleted connections.
func (n *Node) Events(ctx context.Context, id string, after int64, limit int) ([]Event, error) {
	const op = "tether: events"
	if _, ok := OwnerOf(ctx); ok {
		if _, err := n.scoped(ctx, op, id); err != nil {
			return nil, n.fail(ctx, op, err)
		}
	}
	evs, err := n.store.ListEvents(ctx, id, after, limit)
	return evs, n.fail(ctx, op, err)
}
