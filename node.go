package tether

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"
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
	// URLPolicy decides which remote URLs may be contacted; the zero value
	// allows https to public addresses only.
	URLPolicy URLPolicy
	// InvitationTTL is the default lifetime of invitations (72 h when zero,
	// at most MaxInvitationTTL).
	InvitationTTL time.Duration
	// PollInterval is how often Run checks pending invitations: a private
	// initiator asks the destination whether its invitation was accepted,
	// and expired invitations are closed. 2 s when zero.
	PollInterval time.Duration
	// Clock is the time source; the system clock when nil.
	Clock Clock
	// Rand is the source of keys, IDs and nonces; crypto/rand when nil.
	Rand io.Reader
	// Logger receives operational messages, never secrets; discarded when nil.
	Logger *slog.Logger

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
	// PausedRetry is the Retry-After this instance gives peers whose
	// deliveries it refuses while a connection is paused (10 s when zero).
	PausedRetry time.Duration
}

// Node is the connection manager of one tether instance: it initiates and
// accepts connections, keeps their lifecycle, and answers remote instances
// through its Handle method. A Node is safe for concurrent use; several
// Nodes (replicas of one host app) may share one Store.
type Node struct {
	store     Store
	transport Transport
	endpoint  string
	policy    URLPolicy
	ttl       time.Duration
	poll      time.Duration
	clock     Clock
	rand      io.Reader
	log       *slog.Logger

	keys     atomic.Pointer[keySet]
	invites  *invitationParser
	messages *jwsParser
	replays  replayCache

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
	shared      bool   // the Store is shared by processes: re-read it every second

	wakeMu  sync.Mutex
	wake    map[string]map[*waiter]struct{} // per connection: who waits for its outbox or status to change
	inbox   sync.Map                        // connection ID -> *sync.Mutex serializing delivery to the Receiver
	acked   sync.Map                        // connection ID -> int64: the outbox was acknowledged up to here by a poll
	changed chan struct{}                   // connections were added or changed status: Run rescans
	running atomic.Bool
	health  healthCache
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
	n := &Node{
		store:     cfg.Store,
		transport: cfg.Transport,
		endpoint:  cfg.Endpoint,
		policy:    cfg.URLPolicy,
		ttl:       cfg.InvitationTTL,
		poll:      cfg.PollInterval,
		clock:     cfg.Clock,
		rand:      cfg.Rand,
		log:       cfg.Logger,
		invites:   newInvitationParser(),
		messages:  newJWSParser(typRequest),

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
		wake:        make(map[string]map[*waiter]struct{}),
		changed:     make(chan struct{}, 1),
	}
	if n.ttl == 0 {
		n.ttl = DefaultInvitationTTL
	}
	if n.ttl < time.Minute || n.ttl > MaxInvitationTTL {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "Config.InvitationTTL must be between 1 minute and 30 days"}
	}
	if n.poll <= 0 {
		n.poll = 2 * time.Second
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
	n.holder = cfg.Replica
	if n.holder == "" {
		holder, err := randomToken(n.rand)
		if err != nil {
			return nil, Wrap(CodeInternal, op, err)
		}
		n.holder = holder
	}
	_, n.shared = n.store.(OutboxWatcher)
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
		return nil, Wrap(CodeInternal, op, err)
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

// recheck returns a channel that fires when a waiter should re-read the
// Store even without a signal: every second when the Store is shared with
// other processes, never otherwise.
func (n *Node) recheck() <-chan time.Time {
	if !n.shared {
		return nil
	}
	return n.clock.After(idleRecheck)
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

func actorOf(ctx context.Context) string {
	if a, ok := ctx.Value(actorKey{}).(string); ok && a != "" {
		return a
	}
	return ActorLocal
}

func (n *Node) event(ctx context.Context, t EventType, detail string) Event {
	return Event{Type: t, Time: n.clock.Now(), Actor: actorOf(ctx), Detail: detail}
}

// InitiateRequest describes a connection to initiate.
type InitiateRequest struct {
	Owner string
	// Destination is the partner's URL. Empty means "I don't have a URL":
	// the destination is private and will contact this instance, which must
	// then be public.
	Destination string
	Mode        Mode // fixed for the connection's life
	LocalName   string
	RemoteName  string
	Name        string
	Description string
	Rules       string
	Settings    map[string]string
	// TTL is the invitation's lifetime; the node's default when zero.
	TTL time.Duration
}

// Initiate creates a Pending connection and returns it with its invitation
// code, to be handed to the partner out of band. Refused with
// CodeBothPrivate when this instance is private and Destination is empty.
func (n *Node) Initiate(ctx context.Context, req InitiateRequest) (*Connection, string, error) {
	const op = "tether: initiate"
	if n.endpoint == "" && req.Destination == "" {
		return nil, "", &Error{Code: CodeBothPrivate, Op: op, Message: "both sides would be private: this instance has no endpoint, so the destination needs a URL"}
	}
	if req.Destination != "" {
		if err := checkURLSyntax("Destination", req.Destination, false); err != nil {
			return nil, "", withOp(op, err)
		}
		// This side may call the destination: apply the policy now.
		if err := n.policy.Check(req.Destination); err != nil {
			return nil, "", err
		}
	}
	ttl := req.TTL
	if ttl == 0 {
		ttl = n.ttl
	}
	if ttl < time.Minute || ttl > MaxInvitationTTL {
		return nil, "", invalidf(op, "TTL", "must be between 1 minute and 30 days")
	}
	id, err := newID("conn", n.clock.Now(), n.rand)
	if err != nil {
		return nil, "", err
	}
	now := n.clock.Now().Truncate(time.Second) // JWT times have whole seconds
	if err != nil {
		return nil, "", err
	}
	jti, err := randomToken(n.rand)
	if err != nil {
		return nil, "", err
	}
	ks := n.keys.Load()
	c := &Connection{
		ID: id, Kind: KindPeer, Owner: req.Owner,
		Name: req.Name, Description: req.Description,
		LocalName: req.LocalName, RemoteName: req.RemoteName,
		Mode: req.Mode, Status: StatusPending, Role: RoleInitiator,
		LocalURL: n.endpoint, RemoteURL: req.Destination,
		LocalKeyID: ks.current.ID,
		Invitation: jti, InvitationExpires: now.Add(ttl),
		Rules: req.Rules, Settings: maps.Clone(req.Settings),
		CreatedAt: now, UpdatedAt: now,
	}
	if err := c.Validate(); err != nil {
		return nil, "", withOp(op, err)
	}
	code, err := encodeInvitation(&Invitation{
		ID: jti, Issuer: ks.instance, Connection: id,
		Name: c.Name, Description: c.Description,
		InitiatorName: c.LocalName, AcceptorName: c.RemoteName, Mode: c.Mode,
		Endpoint: n.endpoint, Destination: req.Destination,
		IssuedAt: now, NotBefore: now, ExpiresAt: c.InvitationExpires,
		Version: InvitationVersion,
	}, ks.current)
	if err != nil {
		return nil, "", err
	}
	detail := "invitation issued; destination " + req.Destination
	if req.Destination == "" {
		detail = "invitation issued; destination private"
	}
	ev := n.event(ctx, EventCreated, detail)
	if err := n.store.CreateConnection(ctx, c, ev); err != nil {
		return nil, "", Wrap(CodeInternal, op, err)
	}
	n.emit(c.ID, ev)
	return c, code, nil
}

// Preview verifies an invitation code and returns what it says (who
// invites, the connection's name, mode, expiry, which sides are private)
// without accepting it or contacting anyone, so a host can show it before
// the user confirms.
func (n *Node) Preview(code string) (*Invitation, error) {
	return n.invites.decode("tether: preview invitation", code, n.clock.Now(), nil)
}

// AcceptOptions tunes Accept.
type AcceptOptions struct {
	Owner string
	// LocalName overrides the short name the initiator proposed for this
	// side.
	LocalName string
}

// Accept accepts an invitation code: it verifies the code, creates this
// side's connection and completes the handshake with the initiator. When
// the initiator is public it is contacted now (after the URL policy allowed
// its URL) and both sides end Active; when it is private this side records
// the connection as Active and the initiator completes when it next polls.
//
// Errors: CodeDamagedCode, CodeMalformed, CodeBadSignature, CodeExpired,
// CodeNotYetValid for a bad code; CodeBothPrivate; CodeURLRefused;
// CodeAlreadyUsed when the code was accepted before (errors.Is(err,
// ErrAlreadyUsed)); CodeRevoked; CodeKeyMismatch when the initiator answered
// with another key than the code pinned; CodeUnavailable when the
// initiator could not be reached (Accept may be retried with the same code).
// On error nothing is stored.
func (n *Node) Accept(ctx context.Context, code string, opts AcceptOptions) (*Connection, error) {
	const op = "tether: accept"
	now := n.clock.Now()
	inv, err := n.invites.decode(op, code, now, nil)
	if err != nil {
		return nil, err
	}
	ks := n.keys.Load()
	switch {
	case inv.Endpoint == "" && n.endpoint == "":
		return nil, &Error{Code: CodeBothPrivate, Op: op, Message: "both sides would be private: the initiator has no endpoint and neither has this instance"}
	case inv.Endpoint == "" && inv.Destination != n.endpoint:
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "the invitation is addressed to " + inv.Destination + ", not to this instance's endpoint " + n.endpoint}
	case inv.Issuer == ks.instance:
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "an instance cannot accept its own invitation"}
	}
	local := opts.LocalName
	if local == "" {
		local = inv.AcceptorName
	}
	// The ID is derived from the invitation so that a retry after a lost
	// answer is recognised by the initiator as the same acceptance.
	id := derivedID("conn", inv.IssuedAt, inv.Issuer, inv.ID)
	c := &Connection{
		ID: id, Kind: KindPeer, Owner: opts.Owner,
		Name: inv.Name, Description: inv.Description,
		LocalName: local, RemoteName: inv.InitiatorName,
		Mode: inv.Mode, Status: StatusActive, Role: RoleAcceptor,
		LocalURL: n.endpoint, RemoteURL: inv.Endpoint,
		LocalKeyID:     ks.current.ID,
		RemoteInstance: inv.Issuer, RemoteKey: inv.Key, RemoteConnection: inv.Connection,
		Invitation: inv.ID, InvitationExpires: inv.ExpiresAt,
		CreatedAt: now, UpdatedAt: now,
	}
	if err := c.Validate(); err != nil {
		return nil, withOp(op, err)
	}
	if _, err := n.store.GetConnection(ctx, id); err == nil {
		return nil, &Error{Code: CodeAlreadyUsed, Op: op, Message: "invitation was already accepted on this instance"}
	} else if ErrorCode(err) != CodeNotFound {
		return nil, Wrap(CodeInternal, op, err)
	}
	detail := "accepted invitation; initiator private, waiting for it to poll"
	if inv.Endpoint != "" {
		reply, err := n.presentInvitation(ctx, op, code, inv, c)
		if err != nil {
			return nil, err
		}
		c.RemoteKey, c.RemoteName = reply.key, reply.Name
		c.Health.LastContact = n.clock.Now()
		detail = "accepted invitation; initiator confirmed"
	}
	evs := []Event{
		n.event(ctx, EventCreated, "created from invitation of "+inv.InitiatorName),
		n.event(ctx, EventAccepted, detail),
	}
	err = n.store.ConsumeInvitation(ctx, inv.Issuer+"/"+inv.ID, inv.ExpiresAt, c, evs...)
	if err != nil {
		if ErrorCode(err) == CodeAlreadyExists {
			err = &Error{Code: CodeAlreadyUsed, Op: op, Message: "invitation was already accepted on this instance"}
		}
		return nil, Wrap(CodeInternal, op, err)
	}
	n.emit(c.ID, evs...)
	n.notifyChanged()
	return c, nil
}

type verifiedReply struct {
	peerReply
	key []byte
}

// presentInvitation sends the code to the public initiator and checks its
// answer is signed by the pinned key.
func (n *Node) presentInvitation(ctx context.Context, op, code string, inv *Invitation, c *Connection) (*verifiedReply, error) {
	if err := n.policy.Check(inv.Endpoint); err != nil {
		return nil, err
	}
	ks := n.keys.Load()
	body, err := json.Marshal(acceptRequest{
		Code: code, Instance: ks.instance,
		Key:      base64.RawURLEncoding.EncodeToString(ks.public),
		Endpoint: n.endpoint, Connection: c.ID, Name: c.LocalName,
	})
	if err != nil {
		return nil, err
	}
	resp, nonce, err := n.call(ctx, inv.Endpoint, OpAccept, inv.Connection, body, ks.current)
	if err != nil {
		return nil, err
	}
	var reply peerReply
	if _, err := verifyMessage(n.messages, op, resp.Auth, resp.Body, "", n.clock.Now(), "", OpAccept, nonce, pinnedKey(op, inv.Key)); err != nil {
		if ErrorCode(err) == CodeKeyMismatch {
			return nil, &Error{Code: CodeKeyMismatch, Op: op, Message: "the initiator answered with a key other than the one its invitation pinned: acceptance aborted"}
		}
		return nil, err
	}
	if err := decodeBody(op, resp.Body, MaxRequestBody, &reply); err != nil {
		return nil, err
	}
	key, ok := decodeKey(reply.Key)
	if !ok || reply.Instance != inv.Issuer || reply.Connection != inv.Connection {
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the initiator's answer does not match its invitation"}
	}
	if err := checkText("name", reply.Name, 1, MaxShortNameLen); err != nil {
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the initiator's answer has an invalid short name"}
	}
	return &verifiedReply{peerReply: reply, key: key}, nil
}

// call signs and sends one request.
func (n *Node) call(ctx context.Context, endpoint string, o Op, conn string, body []byte, key InstanceKey) (*Response, string, error) {
	if n.transport == nil {
		return nil, "", &Error{Code: CodeUnavailable, Op: "tether: " + string(o), Message: "no transport configured"}
	}
	nonce, err := randomToken(n.rand)
	if err != nil {
		return nil, "", err
	}
	auth, err := signedMessage(key, n.keys.Load().instance, endpoint, o, conn, body, n.clock.Now(), nonce, "")
	if err != nil {
		return nil, "", err
	}
	timeout := n.timeout
	if o == OpPoll {
		timeout += n.pollWait
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := n.transport.Call(ctx, endpoint, &Request{Op: o, Auth: auth, Body: body})
	if err != nil {
		return nil, "", Wrap(CodeUnavailable, "tether: "+string(o), err)
	}
	return resp, nonce, nil
}

// signingKey returns the key c's peer has pinned for this side.
func (n *Node) signingKey(c *Connection) (InstanceKey, error) {
	ks := n.keys.Load()
	if k, ok := ks.verify[c.LocalKeyID]; ok {
		return k, nil
	}
	return InstanceKey{}, &Error{Code: CodeUnauthenticated, Op: "tether: sign", Message: "the key this connection's peer knows was retired"}
}

// Get returns a connection by ID, deleted ones included.
func (n *Node) Get(ctx context.Context, id string) (*Connection, error) {
	return n.store.GetConnection(ctx, id)
}

// List returns a page of connections matching opts and the cursor of the
// next page (empty when there is none).
func (n *Node) List(ctx context.Context, opts ListOptions) ([]*Connection, string, error) {
	return n.store.ListConnections(ctx, opts)
}

// Events returns a connection's history after sequence number after, oldest
// first, at most limit entries (0: 100). It works for deleted connections.
func (n *Node) Events(ctx context.Context, id string, after int64, limit int) ([]Event, error) {
	return n.store.ListEvents(ctx, id, after, limit)
}

// Update is a change to a connection's editable fields; nil fields stay as
// they are.
type Update struct {
	Name        *string
	Description *string
	Rules       *string
	// Settings, when not nil, replaces all settings.
	Settings map[string]string
	// Mode, when not nil, must equal the connection's mode: the mode is
	// fixed at creation and any other value fails with CodeModeFixed.
	Mode *Mode
}

// Update changes a connection's name, description, rules or settings.
// Deleted connections cannot change (CodeInvalidTransition).
func (n *Node) Update(ctx context.Context, id string, u Update) (*Connection, error) {
	const op = "tether: update"
	return n.modify(ctx, op, id, func(c *Connection) (*Event, error) {
		if u.Mode != nil && *u.Mode != c.Mode {
			return nil, &Error{Code: CodeModeFixed, Op: op, Message: "mode cannot be changed after the connection is created"}
		}
		if c.Status == StatusDeleted {
			return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "a deleted connection cannot be changed"}
		}
		var changed []string
		if u.Name != nil && *u.Name != c.Name {
			c.Name = *u.Name
			changed = append(changed, "name")
		}
		if u.Description != nil && *u.Description != c.Description {
			c.Description = *u.Description
			changed = append(changed, "description")
		}
		if u.Rules != nil && *u.Rules != c.Rules {
			c.Rules = *u.Rules
			c.RulesVersion++
			changed = append(changed, "rules")
		}
		if u.Settings != nil && !maps.Equal(u.Settings, c.Settings) {
			c.Settings = maps.Clone(u.Settings)
			changed = append(changed, "settings")
		}
		if len(changed) == 0 {
			return nil, nil
		}
		ev := n.event(ctx, EventUpdated, "changed "+joinWords(changed))
		return &ev, nil
	})
}

// Pause stops delivery on an Active connection. Send keeps queuing, and
// the peer's deliveries are answered "paused, retry later" so they stay
// queued on its side too: nothing is lost.
func (n *Node) Pause(ctx context.Context, id string) (*Connection, error) {
	c, err := n.transition(ctx, "tether: pause", id, ActionPause, EventPaused, "paused")
	if err == nil {
		n.signal(id)
	}
	return c, err
}

// Activate resumes a Paused connection where it stopped, and tells a
// public peer so its queued messages flow again at once.
func (n *Node) Activate(ctx context.Context, id string) (*Connection, error) {
	c, err := n.transition(ctx, "tether: activate", id, ActionActivate, EventActivated, "activated")
	if err == nil {
		n.signal(id)
		n.notifyChanged()
		n.notifyPeer(ctx, c, OpResume)
	}
	return c, err
}

// Delete soft-deletes a connection: it stays readable with its events, and
// nothing is sent or accepted on it any more. A public peer is told now; a
// private one learns at its next request. Either way the peer marks its
// side deleted and stops retrying.
func (n *Node) Delete(ctx context.Context, id string) (*Connection, error) {
	c, err := n.transition(ctx, "tether: delete", id, ActionDelete, EventDeleted, "deleted")
	if err == nil {
		n.signal(id)
		n.notifyPeer(ctx, c, OpClose)
	}
	return c, err
}

// RevokeInvitation withdraws the invitation of a Pending connection this
// instance initiated: the code can no longer be accepted and the connection
// moves to Deleted. Other connections are unaffected.
func (n *Node) RevokeInvitation(ctx context.Context, id string) (*Connection, error) {
	const op = "tether: revoke invitation"
	return n.modify(ctx, op, id, func(c *Connection) (*Event, error) {
		if c.Role != RoleInitiator {
			return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "only the initiator can revoke an invitation"}
		}
		return n.move(ctx, op, c, ActionRevoke, EventRevoked, "invitation revoked")
	})
}

func (n *Node) transition(ctx context.Context, op, id string, a Action, t EventType, detail string) (*Connection, error) {
	return n.modify(ctx, op, id, func(c *Connection) (*Event, error) {
		return n.move(ctx, op, c, a, t, detail)
	})
}

// move applies action a to c through the transition table.
func (n *Node) move(ctx context.Context, op string, c *Connection, a Action, t EventType, detail string) (*Event, error) {
	next, ok := Next(c.Status, a)
	if !ok {
		return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "cannot " + string(a) + " a connection that is " + string(c.Status)}
	}
	c.Status = next
	ev := n.event(ctx, t, detail)
	return &ev, nil
}

// modify reads a connection, applies change and writes it back with the
// event change returns, retrying when another writer got there first. A nil
// event means nothing changed and nothing is written.
func (n *Node) modify(ctx context.Context, op, id string, change func(*Connection) (*Event, error)) (*Connection, error) {
	for attempt := 0; ; attempt++ {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return nil, err
		}
		ev, err := change(c)
		if err != nil || ev == nil {
			if err != nil {
				return nil, err
			}
			return c, nil
		}
		c.UpdatedAt = n.clock.Now()
		err = n.store.UpdateConnection(ctx, c, *ev)
		if ErrorCode(err) == CodeConflict && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, Wrap(CodeInternal, op, err)
		}
		n.emit(c.ID, *ev)
		return c, nil
	}
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

func joinWords(w []string) string {
	s := ""
	for i, x := range w {
		switch {
		case i == 0:
		case i == len(w)-1:
			s += " and "
		default:
			s += ", "
		}
		s += x
	}
	return s
}

// Sync does one round of Run's work now and returns the first error it met
// (it carries on past errors with the other connections).
func (n *Node) Sync(ctx context.Context) error {
	var first error
	opts := ListOptions{Status: StatusPending, Limit: MaxPageSize}
	for {
		conns, next, err := n.store.ListConnections(ctx, opts)
		if err != nil {
			return err
		}
		for _, c := range conns {
			if err := n.syncPending(ctx, c); err != nil && first == nil {
				first = err
			}
		}
		if next == "" {
			return first
		}
		opts.After = next
	}
}

func (n *Node) syncPending(ctx context.Context, c *Connection) error {
	const op = "tether: sync"
	if c.Role != RoleInitiator {
		return nil
	}
	if !n.clock.Now().Before(c.InvitationExpires.Add(InvitationLeeway)) {
		_, err := n.modify(WithActor(ctx, ActorSystem), op, c.ID, func(c *Connection) (*Event, error) {
			if c.Status != StatusPending {
				return nil, nil
			}
			return n.move(WithActor(ctx, ActorSystem), op, c, ActionExpire, EventExpired, "invitation expired without being accepted")
		})
		return err
	}
	if n.endpoint != "" || c.RemoteURL == "" {
		return nil // the acceptor will call this side
	}
	reply, err := n.askStatus(ctx, c)
	if err != nil {
		n.healthFail(ctx, c.ID, err, true)
		return err
	}
	err = n.completeAsInitiator(WithActor(ctx, ActorRemote), c.ID, c.Invitation, reply, "accepted by "+reply.Name+", confirmed by polling the destination")
	if errors.Is(err, ErrAlreadyUsed) {
		return nil
	}
	return err
}

// askStatus asks a public acceptor whether it accepted c's invitation.
func (n *Node) askStatus(ctx context.Context, c *Connection) (*verifiedReply, error) {
	const op = "tether: poll invitation"
	if err := n.policy.Check(c.RemoteURL); err != nil {
		return nil, err
	}
	key, err := n.signingKey(c)
	if err != nil {
		return nil, err
	}
	acceptorID := derivedID("conn", c.CreatedAt, n.ID(), c.Invitation)
	resp, nonce, err := n.call(ctx, c.RemoteURL, OpStatus, acceptorID, nil, key)
	if err != nil {
		return nil, err
	}
	var reply peerReply
	if err := decodeBody(op, resp.Body, MaxRequestBody, &reply); err != nil {
		return nil, err
	}
	pub, ok := decodeKey(reply.Key)
	if !ok {
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the destination's answer has no valid key"}
	}
	if _, err := verifyMessage(n.messages, op, resp.Auth, resp.Body, "", n.clock.Now(), "", OpStatus, nonce, pinnedKey(op, pub)); err != nil {
		return nil, err
	}
	switch {
	case reply.Proof != acceptProof(c.Invitation, pub):
		return nil, &Error{Code: CodeUnauthenticated, Op: op, Message: "the destination could not prove it holds the invitation code"}
	case reply.Connection != acceptorID || checkID("instance", reply.Instance) != nil || reply.Endpoint != c.RemoteURL:
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the destination's answer does not match the invitation"}
	case checkText("name", reply.Name, 1, MaxShortNameLen) != nil:
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the destination's answer has an invalid short name"}
	}
	return &verifiedReply{peerReply: reply, key: pub}, nil
}

// completeAsInitiator records the acceptor on a Pending connection this
// instance initiated and makes it Active, consuming the invitation. If the
// same acceptor already completed it, it returns nil; another acceptor gets
// CodeAlreadyUsed.
func (n *Node) completeAsInitiator(ctx context.Context, id, jti string, r *verifiedReply, detail string) error {
	const op = "tether: complete handshake"
	for attempt := 0; ; attempt++ {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return err
		}
		switch {
		case c.Role != RoleInitiator || c.Invitation != jti:
			return &Error{Code: CodeRevoked, Op: op, Message: "invitation was revoked or replaced"}
		case c.Status != StatusPending && c.RemoteInstance == r.Instance && c.RemoteConnection == r.Connection && string(c.RemoteKey) == string(r.key):
			return nil // a retry of the acceptance that completed the handshake
		case c.Status == StatusDeleted:
			return &Error{Code: CodeRevoked, Op: op, Message: "invitation was revoked or has expired"}
		case c.Status != StatusPending:
			return &Error{Code: CodeAlreadyUsed, Op: op, Message: "invitation was already used"}
		}
		c.Status = StatusActive
		c.RemoteInstance, c.RemoteKey, c.RemoteConnection = r.Instance, r.key, r.Connection
		c.RemoteURL, c.RemoteName = r.Endpoint, r.Name
		now := n.clock.Now()
		c.UpdatedAt = now
		c.Health = Health{LastContact: now}
		ev := n.event(ctx, EventAccepted, detail)
		err = n.store.ConsumeInvitation(ctx, n.ID()+"/"+c.Invitation, c.InvitationExpires, c, ev)
		if ErrorCode(err) == CodeConflict && attempt < 10 {
			continue
		}
		if ErrorCode(err) == CodeAlreadyUsed && attempt < 10 {
			continue // re-read: it may be this same acceptor's earlier attempt
		}
		if err == nil {
			n.emit(c.ID, ev)
			n.notifyChanged()
		}
		return err
	}
}

// modifyHealth changes a connection's health without an event.
func (n *Node) modifyHealth(ctx context.Context, id string, f func(*Health)) (*Connection, error) {
	for attempt := 0; ; attempt++ {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return nil, err
		}
		f(&c.Health)
		err = n.store.UpdateConnection(ctx, c)
		if ErrorCode(err) == CodeConflict && attempt < 10 {
			continue
		}
		return c, err
	}
}

// RotateKey makes a fresh key this instance's current key. The previous key
// keeps verifying invitations and signing for the connections that pinned it
// until overlap has passed (the invitation TTL plus leeway when zero), so
// pending invitations stay acceptable.
func (n *Node) RotateKey(ctx context.Context, overlap time.Duration) error {
	const op = "tether: rotate key"
	if overlap <= 0 {
		overlap = n.ttl + InvitationLeeway
	}
	for attempt := 0; ; attempt++ {
		inst, err := n.store.LoadInstance(ctx)
		if err != nil {
			return Wrap(CodeInternal, op, err)
		}
		now := n.clock.Now()
		k, err := newKey(now, n.rand)
		if err != nil {
			return err
		}
		next := inst.rotate(k, now, overlap)
		err = n.store.SaveInstance(ctx, next)
		if ErrorCode(err) == CodeConflict && attempt < 10 {
			continue
		}
		if err != nil {
			return Wrap(CodeInternal, op, err)
		}
		n.keys.Store(newKeySet(next))
		return nil
	}
}
