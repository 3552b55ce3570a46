package tether

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"time"

	"github.com/tetherkit/tether/internal/wire"
)

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
// CodeBothPrivate when this instance is private and Destination is empty,
// and with CodeInvalid when Mode is not one of Config.Modes (Node.Probe
// tells which modes the destination supports).
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
	if err := n.supportedMode(op, "Mode", c.Mode); err != nil {
		return nil, "", err
	}
	code, err := encodeInvitation(&Invitation{
		ID: jti, Issuer: ks.instance, Connection: id,
		Name: c.Name, Description: c.Description,
		InitiatorName: c.LocalName, AcceptorName: c.RemoteName, Mode: c.Mode,
		Endpoint: n.endpoint, Destination: req.Destination, AdminURL: n.adminURL,
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
	start := n.metrics.start()
	err = n.store.CreateConnection(ctx, c, ev)
	n.metrics.storeCall(ctx, StoreCreateConnection, start, err)
	if err != nil {
		return nil, "", n.fail(ctx, op, err)
	}
	n.later(ctx, func() { n.emit(c.ID, ev) })
	return c, code, nil
}

// Preview verifies an invitation code and returns what it says (who
// invites, the connection's name, mode, expiry, which sides are private)
// without accepting it or contacting anyone, so a host can show it before
// the user confirms. An invitation in a mode this instance does not
// support (Config.Modes) is refused with CodeInvalid, as Accept refuses it.
func (n *Node) Preview(code string) (*Invitation, error) {
	const op = "tether: preview invitation"
	inv, err := n.invites.decode(op, code, n.clock.Now(), nil)
	if err != nil {
		return nil, err
	}
	if err := n.invitationMode(op, inv); err != nil {
		return nil, err
	}
	return inv, nil
}

// invitationMode refuses an invitation in a mode this node does not
// support. A re-pairing code is not refused: it restores a connection
// that exists already, in the mode it was made with.
func (n *Node) invitationMode(op string, inv *Invitation) error {
	if inv.Repairs != "" {
		return nil
	}
	return n.supportedMode(op, "mode", inv.Mode)
}

// AcceptOptions tunes Accept.
type AcceptOptions struct {
	Owner string
	// LocalName overrides the short name the initiator proposed for this
	// side.
	LocalName string
}

// Accept accepts an invitation code: it verifies the code, creates this
// side's connection and completes the handshake with the initiator.
//
// An invitation that names a destination URL is accepted only by the
// instance at that URL: any other is refused with CodeInvalid, and a public
// initiator checks it by asking that URL.
//
// When the initiator is public it is contacted now (after the URL policy
// allowed its URL): both sides are Active when Accept returns. If its
// answer is lost, the connection stays Pending on this side, Run asks the
// initiator until it confirms, and Accept may be called again with the
// same code. When the initiator is private, this side's connection is
// Pending, waiting for the initiator: it turns Active when the initiator
// confirms (it asks this side, then polls it), and is deleted if the
// initiator has not confirmed by the invitation's expiry plus ClockSkew.
// See the package documentation for why both sides always agree.
//
// Errors: CodeDamagedCode, CodeMalformed, CodeBadSignature, CodeExpired,
// CodeNotYetValid, CodeClockSkew for a bad code or clocks too far apart;
// CodeBothPrivate; CodeInvalid when the code is addressed to another
// instance or is in a mode this instance does not support (Config.Modes;
// nothing is stored and the initiator is not contacted); CodeURLRefused;
// CodeAlreadyUsed when the code was accepted before
// (errors.Is(err, ErrAlreadyUsed)); CodeRevoked; CodeKeyMismatch when
// the initiator answered with another key than the code pinned;
// CodeUnavailable when the initiator could not be reached (the connection
// is then kept Pending, as above).
func (n *Node) Accept(ctx context.Context, code string, opts AcceptOptions) (*Connection, error) {
	const op = "tether: accept"
	now := n.clock.Now()
	inv, err := n.invites.decode(op, code, now, nil)
	if err != nil {
		return nil, err
	}
	if err := n.invitationMode(op, inv); err != nil {
		return nil, err
	}
	ks := n.keys.Load()
	switch {
	case inv.Endpoint == "" && n.endpoint == "":
		return nil, &Error{Code: CodeBothPrivate, Op: op, Message: "both sides would be private: the initiator has no endpoint and neither has this instance"}
	case inv.Destination != "" && inv.Destination != n.endpoint:
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "the invitation is addressed to " + inv.Destination + ", not to this instance (" + orPrivate(n.endpoint) + ")"}
	case inv.Issuer == ks.instance:
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "an instance cannot accept its own invitation"}
	}
	if inDelivery(ctx) && inv.Endpoint != "" {
		// The initiator must be called: not while the Receiver holds the
		// store's transaction. Nothing is stored, so the code stays good.
		return nil, errInDelivery(op)
	}
	if inv.Repairs != "" {
		return n.acceptRepair(ctx, op, code, inv)
	}
	if opts.Owner != "" {
		if err := checkText("Owner", opts.Owner, 0, MaxOwnerLen); err != nil {
			return nil, withOp(op, err)
		}
	}
	if inv.Endpoint != "" {
		// This side will call the initiator: apply the policy first.
		if err := n.policy.Check(inv.Endpoint); err != nil {
			return nil, err
		}
	}
	c, stored, err := n.acceptance(ctx, op, inv, opts)
	if err != nil {
		return nil, err
	}
	if inv.Endpoint == "" {
		if !stored {
			if err := n.storeAcceptance(ctx, op, inv, c, "accepted the invitation; waiting for the initiator, which is private, to confirm"); err != nil {
				return nil, err
			}
		}
		n.notifyChanged()
		return c, nil
	}
	// A public initiator with a destination checks this side holds the
	// acceptance by asking the destination: record it first.
	if !stored && inv.Destination != "" {
		if err := n.storeAcceptance(ctx, op, inv, c, "accepted the invitation; presenting it to the initiator"); err != nil {
			return nil, err
		}
		stored = true
	}
	reply, err := n.presentInvitation(ctx, op, code, c)
	switch {
	case err == nil:
		return n.confirmAcceptance(ctx, op, c, stored, reply)
	case !stored && refusedUnsigned(err) == CodeKeyMismatch:
		n.metrics.handshake(ctx, RoleAcceptor, OutcomeRefused)
		return nil, &Error{Code: CodeKeyMismatch, Op: op, Message: "the initiator answered with a key other than the one its invitation pinned: acceptance aborted"}
	case !stored && refusedUnsigned(err) != "":
		// The initiator refused without a signature: nothing is stored, so
		// nothing changes; say what it claimed.
		n.metrics.handshake(ctx, RoleAcceptor, OutcomeRefused)
		return nil, &Error{Code: refusedUnsigned(err), Op: op, Message: "the initiator refused the acceptance (its answer was not signed)", Err: err}
	case transient(err) || stored && !final(err):
		if !stored {
			if serr := n.storeAcceptance(ctx, op, inv, c, "accepted the invitation; the initiator's answer did not arrive: asking it again"); serr != nil {
				return nil, serr
			}
		}
		n.healthFail(ctx, c.ID, err, true)
		n.notifyChanged()
		n.metrics.handshake(ctx, RoleAcceptor, OutcomeFailed)
		return nil, err
	default:
		if stored {
			n.abandonAcceptance(ctx, c.ID, OutcomeRefused, "the initiator refused the acceptance: "+string(ErrorCode(err)))
		} else {
			n.metrics.handshake(ctx, RoleAcceptor, OutcomeRefused)
		}
		return nil, err
	}
}

// refusedUnsigned returns the code of a definitive refusal the peer made
// without a signature, wrapped by unsigned; "" if err is not one.
func refusedUnsigned(err error) Code {
	var e *Error
	if !errors.As(err, &e) || e.Code != CodeUnavailable {
		return ""
	}
	var inner *Error
	if !errors.As(e.Err, &inner) || transient(inner) || inner.Code == "" || inner.Code == CodeUnauthenticated {
		return "" // a refused duplicate or replay, say: the acceptance may have arrived
	}
	return inner.Code
}

func orPrivate(endpoint string) string {
	if endpoint == "" {
		return "which is private"
	}
	return endpoint
}

// transient reports whether err may go away by itself: the peer could not
// be reached or gave no signed answer, or this side's context ended.
func transient(err error) bool {
	switch ErrorCode(err) {
	case CodeUnavailable, CodeCanceled, CodeDeadlineExceeded, CodeInternal, CodePaused:
		return true
	}
	return false
}

// final reports whether a refusal ends an acceptance this side keeps:
// not a transient failure, and not the clocks, which can be set right.
func final(err error) bool { return !transient(err) && ErrorCode(err) != CodeClockSkew }

// acceptance returns this side's connection for inv: the one stored by an
// earlier attempt that is still waiting (stored true), or a new one.
func (n *Node) acceptance(ctx context.Context, op string, inv *Invitation, opts AcceptOptions) (*Connection, bool, error) {
	// The ID is derived from the invitation so that a retry after a lost
	// answer is recognised by the initiator as the same acceptance.
	id := derivedID("conn", inv.IssuedAt, inv.Issuer, inv.ID)
	old, err := n.store.GetConnection(ctx, id)
	switch {
	case err == nil && old.Status == StatusPending && old.Role == RoleAcceptor && old.Owner == opts.Owner:
		return old, true, nil
	case err == nil:
		return nil, false, &Error{Code: CodeAlreadyUsed, Op: op, Message: "invitation was already accepted on this instance"}
	case ErrorCode(err) != CodeNotFound:
		return nil, false, n.fail(ctx, op, err)
	}
	local := opts.LocalName
	if local == "" {
		local = inv.AcceptorName
	}
	now := n.clock.Now()
	c := &Connection{
		ID: id, Kind: KindPeer, Owner: opts.Owner,
		Name: inv.Name, Description: inv.Description,
		LocalName: local, RemoteName: inv.InitiatorName,
		Mode: inv.Mode, Status: StatusPending, Role: RoleAcceptor,
		LocalURL: n.endpoint, RemoteURL: inv.Endpoint, RemoteAdminURL: inv.AdminURL,
		LocalKeyID:     n.keys.Load().current.ID,
		RemoteInstance: inv.Issuer, RemoteKey: inv.Key, RemoteConnection: inv.Connection,
		Invitation: inv.ID, InvitationExpires: inv.ExpiresAt,
		CreatedAt: now, UpdatedAt: now,
	}
	if err := c.Validate(); err != nil {
		return nil, false, withOp(op, err)
	}
	return c, false, nil
}

// storeAcceptance records a new Pending acceptance, consuming the
// invitation on this side.
func (n *Node) storeAcceptance(ctx context.Context, op string, inv *Invitation, c *Connection, detail string) error {
	return n.consumeAcceptance(ctx, op, c, n.event(ctx, EventCreated, "created from the invitation of "+inv.InitiatorName+"; "+detail))
}

// consumeAcceptance creates this side's connection for an invitation with
// its events, recording the invitation (issuer and ID) as used here.
func (n *Node) consumeAcceptance(ctx context.Context, op string, c *Connection, evs ...Event) error {
	start := n.metrics.start()
	err := n.store.ConsumeInvitation(ctx, c.RemoteInstance+"/"+c.Invitation, acceptanceDeadline(c), c, evs...)
	n.metrics.storeCall(ctx, StoreConsumeInvitation, start, err)
	if ErrorCode(err) == CodeAlreadyExists || ErrorCode(err) == CodeAlreadyUsed {
		return &Error{Code: CodeAlreadyUsed, Op: op, Message: "invitation was already accepted on this instance"}
	}
	if err != nil {
		return n.fail(ctx, op, err)
	}
	id := c.ID
	n.later(ctx, func() { n.emit(id, evs...) })
	return nil
}

// confirmAcceptance records the public initiator's signed answer and makes
// this side Active.
func (n *Node) confirmAcceptance(ctx context.Context, op string, c *Connection, stored bool, reply *verifiedReply) (*Connection, error) {
	now := n.clock.Now()
	apply := func(c *Connection) {
		c.Status = StatusActive
		c.RemoteKey, c.RemoteName = reply.key, reply.Name
		if u := adminURL(reply.AdminURL); u != "" {
			c.RemoteAdminURL = u
		}
		c.Health = Health{LastContact: now}
		c.UpdatedAt = now
	}
	if !stored {
		apply(c)
		evs := []Event{
			n.event(ctx, EventCreated, "created from the invitation of "+c.RemoteName),
			n.event(ctx, EventAccepted, "accepted the invitation; the initiator confirmed"),
		}
		if err := n.consumeAcceptance(ctx, op, c, evs...); err != nil {
			n.metrics.handshake(ctx, RoleAcceptor, outcomeOf(err))
			return nil, err
		}
		n.notifyChanged()
		n.metrics.handshake(ctx, RoleAcceptor, OutcomeOK)
		return c, nil
	}
	moved := false
	out, err := n.edit(ctx, op, c.ID, func(c *Connection) (*Event, error) {
		moved = false
		if c.Status != StatusPending {
			return nil, nil // confirmed meanwhile (by Run), or given up
		}
		apply(c)
		moved = true
		ev := n.event(ctx, EventAccepted, "the initiator confirmed the acceptance")
		return &ev, nil
	})
	if err != nil {
		n.metrics.handshake(ctx, RoleAcceptor, OutcomeFailed)
		return nil, err
	}
	if moved {
		n.metrics.handshake(ctx, RoleAcceptor, OutcomeOK)
	}
	if out.Status != StatusActive {
		return nil, &Error{Code: CodeRevoked, Op: op, Message: "the acceptance was given up on this side before the initiator confirmed it"}
	}
	n.notifyChanged()
	return out, nil
}

// acceptanceDeadline is when an acceptor stops waiting for the initiator
// to confirm: the invitation's expiry plus ClockSkew, by its own clock.
func acceptanceDeadline(c *Connection) time.Time { return c.InvitationExpires.Add(ClockSkew) }

// abandonAcceptance deletes a Pending acceptance the initiator will never
// confirm; outcome says why, for Metrics.
func (n *Node) abandonAcceptance(ctx context.Context, id string, outcome Outcome, detail string) {
	ctx = WithActor(ctx, ActorSystem)
	moved := false
	_, err := n.edit(ctx, "tether: accept", id, func(c *Connection) (*Event, error) {
		moved = false
		if c.Status != StatusPending {
			return nil, nil
		}
		ev, err := n.step(ctx, "tether: accept", c, ActionExpire, detail)
		moved = err == nil
		return ev, err
	})
	if err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: give up an acceptance", "connection", id, "err", err)
	}
	if err == nil && moved {
		n.metrics.handshake(ctx, RoleAcceptor, outcome)
	}
	n.signal(id)
}

type verifiedReply struct {
	peerReply
	key ed25519.PublicKey
}

// presentInvitation presents an acceptance to the public initiator of c:
// with the code, or, when code is empty (a follow-up by Sync), with the
// proof that this side holds it. The answer must be signed by the key the
// code pinned.
func (n *Node) presentInvitation(ctx context.Context, op, code string, c *Connection) (*verifiedReply, error) {
	ks := n.keys.Load()
	key, err := n.signingKey(c)
	if err != nil {
		return nil, err
	}
	req := acceptRequest{
		Code: code, Instance: ks.instance,
		Key:      base64.RawURLEncoding.EncodeToString(key.Public()),
		Endpoint: n.endpoint, Connection: c.ID, Name: c.LocalName, AdminURL: n.adminURL,
	}
	if code == "" {
		req.Proof = acceptProof(c.Invitation, key.Public())
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, Wrap(CodeInternal, op, err)
	}
	resp, _, err := n.call(ctx, op, request{
		endpoint: c.RemoteURL, op: OpAccept, sub: c.RemoteConnection, body: body, key: key,
		withKey: true, answeredBy: pinnedKey(op, c.RemoteKey),
	})
	if err != nil {
		return nil, err
	}
	var reply peerReply
	if err := decodeBody(op, resp, MaxRequestBody, &reply); err != nil {
		return nil, err
	}
	rkey, ok := decodeKey(reply.Key)
	if !ok || !rkey.Equal(c.RemoteKey) || reply.Instance != c.RemoteInstance || reply.Connection != c.RemoteConnection {
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the initiator's answer does not match its invitation"}
	}
	if err := checkText("name", reply.Name, 1, MaxShortNameLen); err != nil {
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the initiator's answer has an invalid short name"}
	}
	return &verifiedReply{peerReply: reply, key: rkey}, nil
}

// Sync does one round of Run's handshake work now: it completes or closes
// the pending handshakes this instance takes part in, and returns the
// first error it met (it carries on past errors with the other
// connections).
func (n *Node) Sync(ctx context.Context) error {
	if inDelivery(ctx) {
		return errInDelivery("tether: sync")
	}
	var first error
	opts := ListOptions{Status: StatusPending, Kind: KindPeer, Limit: MaxPageSize}
	for {
		conns, next, err := n.store.ListConnections(ctx, opts)
		if err != nil {
			return n.fail(ctx, "tether: sync", err)
		}
		for _, c := range conns {
			if err := n.syncPending(ctx, c); err != nil && first == nil {
				first = n.fail(ctx, "tether: sync", err)
			}
		}
		if next == "" {
			return first
		}
		opts.After = next
	}
}

func (n *Node) syncPending(ctx context.Context, c *Connection) error {
	if c.Role == RoleAcceptor {
		return n.syncAcceptance(ctx, c)
	}
	expired := !n.clock.Now().Before(c.InvitationExpires.Add(ClockSkew))
	if n.endpoint != "" || c.RemoteURL == "" {
		// The acceptor calls this side; past the expiry it never will.
		if expired {
			return n.expireInvitation(ctx, c.ID, OutcomeExpired, "invitation expired without being accepted")
		}
		return nil
	}
	if c.RemoteInstance == "" {
		// A private initiator asks the destination, also once past the
		// expiry: an acceptance made in time still completes.
		reply, err := n.askStatus(ctx, c)
		switch code := ErrorCode(err); {
		case err == nil:
		case expired:
			return n.expireInvitation(ctx, c.ID, OutcomeExpired, "invitation expired without being accepted")
		case code == CodeRevoked || code == CodeGone || code == CodeExpired:
			// Signed by the holder of the code at the destination, the only
			// instance that may accept: it gave up its acceptance.
			return n.expireInvitation(WithActor(ctx, ActorRemote), c.ID, OutcomeRefused, "the destination withdrew its acceptance")
		default:
			// Not accepted yet, as far as this side can tell: waiting
			// for the partner is no failed handshake.
			n.healthFail(ctx, c.ID, err, true)
			return err
		}
		// Record the acceptor, consuming the invitation; the connection
		// turns Active once the acceptor confirms it took the news.
		if err := n.recordAcceptor(ctx, c.ID, c.Invitation, reply); err != nil {
			n.metrics.handshake(ctx, RoleInitiator, outcomeOf(err))
			return err
		}
		if c, err = n.store.GetConnection(ctx, c.ID); err != nil {
			return err
		}
	}
	return n.confirmToAcceptor(ctx, c)
}

// confirmToAcceptor tells the public acceptor of c, Pending on this private
// initiator with its acceptor recorded, that the acceptance is recorded
// here. Its signed answer makes both sides Active, or, if it gave up the
// acceptance meanwhile, both Deleted. Until it answers, c stays Pending,
// whatever the time: the acceptor decides.
func (n *Node) confirmToAcceptor(ctx context.Context, c *Connection) error {
	const op = "tether: sync"
	var reply peerReply
	err := n.exchange(ctx, op, c, OpStatus, []byte(confirmJSON), &reply)
	switch code := ErrorCode(err); {
	case err == nil:
		moved := false
		_, err := n.edit(WithActor(ctx, ActorRemote), op, c.ID, func(c *Connection) (*Event, error) {
			moved = false
			if c.Status != StatusPending {
				return nil, nil
			}
			c.Health = Health{LastContact: n.clock.Now()}
			ev, err := n.step(WithActor(ctx, ActorRemote), op, c, ActionAccept, "accepted by "+c.RemoteName+", confirmed with the destination")
			moved = err == nil
			return ev, err
		})
		switch {
		case err != nil:
			n.metrics.handshake(ctx, RoleInitiator, OutcomeFailed)
		case moved:
			n.notifyChanged()
			n.metrics.handshake(ctx, RoleInitiator, OutcomeOK)
		default:
			n.notifyChanged()
		}
		return err
	case code == CodeRevoked || code == CodeGone || code == CodeExpired:
		return n.expireInvitation(WithActor(ctx, ActorRemote), c.ID, OutcomeRefused, "the destination gave up the acceptance before it was confirmed")
	}
	n.healthFail(ctx, c.ID, err, true)
	n.metrics.handshake(ctx, RoleInitiator, OutcomeFailed)
	return err
}

// confirmJSON is the status request of an initiator that recorded the
// acceptance.
const confirmJSON = `{"confirmed":true}`

// withdrawInvitation tells the destination of a revoked invitation that
// any acceptance it holds is void. Best effort: the answer is not needed.
func (n *Node) withdrawInvitation(ctx context.Context, c *Connection) {
	const op = "tether: revoke invitation"
	key, err := n.signingKey(c)
	if err == nil {
		_, _, err = n.call(ctx, op, request{
			endpoint: c.RemoteURL, op: OpClose, sub: derivedID("conn", c.CreatedAt, n.ID(), c.Invitation),
			body: []byte("{}"), key: key, answeredBy: wire.EmbeddedKey(KeyID),
		})
	}
	if err != nil {
		n.log.DebugContext(ctx, "tether: tell the destination the invitation was revoked", "connection", c.ID, "err", err)
	}
}

// expireInvitation closes a Pending invitation this instance initiated;
// outcome says why, for Metrics.
func (n *Node) expireInvitation(ctx context.Context, id string, outcome Outcome, detail string) error {
	if actorOf(ctx) == ActorLocal {
		ctx = WithActor(ctx, ActorSystem)
	}
	moved := false
	_, err := n.edit(ctx, "tether: sync", id, func(c *Connection) (*Event, error) {
		moved = false
		if c.Status != StatusPending {
			return nil, nil
		}
		ev, err := n.step(ctx, "tether: sync", c, ActionExpire, detail)
		moved = err == nil
		return ev, err
	})
	if err == nil && moved {
		n.metrics.handshake(ctx, RoleInitiator, outcome)
	}
	return err
}

// syncAcceptance follows up an acceptance the initiator has not confirmed
// yet. A public initiator is presented the acceptance again, with the proof
// that this side holds the code: it completes it, or refuses it signed, and
// only then does this side decide. A private initiator cannot be asked: the
// acceptance is given up at its deadline.
func (n *Node) syncAcceptance(ctx context.Context, c *Connection) error {
	const op = "tether: sync"
	if c.RemoteURL == "" {
		if !n.clock.Now().Before(acceptanceDeadline(c)) {
			n.abandonAcceptance(ctx, c.ID, OutcomeExpired, "the initiator did not confirm the acceptance before the invitation expired")
		}
		return nil
	}
	reply, err := n.presentInvitation(ctx, op, "", c)
	switch {
	case err == nil:
		_, err = n.confirmAcceptance(ctx, op, c, true, reply)
		return n.fail(ctx, op, err)
	case final(err):
		n.abandonAcceptance(ctx, c.ID, OutcomeRefused, "the initiator refused the acceptance: "+string(ErrorCode(err)))
		return nil
	}
	n.healthFail(ctx, c.ID, err, true)
	n.metrics.handshake(ctx, RoleAcceptor, OutcomeFailed)
	return n.fail(ctx, op, err)
}

// peerConfirmed makes a Pending acceptance Active: the initiator proved it
// recorded it (it polled, pushed, or said so). An acceptance already given
// up stays Deleted, and the peer learns it at its next request.
func (n *Node) peerConfirmed(ctx context.Context, id string) (*Connection, error) {
	const op = "tether: confirm acceptance"
	ctx = WithActor(ctx, ActorRemote)
	moved := false
	c, err := n.edit(ctx, op, id, func(c *Connection) (*Event, error) {
		moved = false
		if c.Status != StatusPending || c.Role != RoleAcceptor {
			return nil, nil
		}
		c.Health = Health{LastContact: n.clock.Now()}
		ev, err := n.step(ctx, op, c, ActionAccept, "the initiator confirmed the acceptance")
		moved = err == nil
		return ev, err
	})
	if err == nil {
		n.signal(id)
		n.notifyChanged()
		if moved {
			n.metrics.handshake(ctx, RoleAcceptor, OutcomeOK)
		}
	}
	return c, err
}

// askStatus asks a public acceptor whether it accepted c's invitation. The
// answer's token carries the acceptor's key, so it is verified before its
// body is read; the body then proves the acceptor holds the code.
func (n *Node) askStatus(ctx context.Context, c *Connection) (*verifiedReply, error) {
	const op = "tether: ask the destination"
	if err := n.policy.Check(c.RemoteURL); err != nil {
		return nil, err
	}
	key, err := n.signingKey(c)
	if err != nil {
		return nil, err
	}
	acceptorID := derivedID("conn", c.CreatedAt, n.ID(), c.Invitation)
	body, claims, err := n.call(ctx, op, request{
		endpoint: c.RemoteURL, op: OpStatus, sub: acceptorID, key: key,
		answeredBy: wire.EmbeddedKey(KeyID),
	})
	if err != nil && claims == nil {
		return nil, err
	}
	pub, _ := decodeKey(claims.Key)
	if err != nil {
		// Any key can sign a refusal: only one from the holder of the code
		// counts.
		var r refusalBody
		if json.Unmarshal(body, &r) != nil || r.Refused == nil || r.Refused.Proof != acceptProof(c.Invitation, pub) {
			return nil, &Error{Code: CodeUnavailable, Op: op, Message: "the destination's refusal does not prove it holds the invitation code", Err: &Error{Code: ErrorCode(err)}}
		}
		return nil, err
	}
	var reply peerReply
	if err := decodeBody(op, body, MaxRequestBody, &reply); err != nil {
		return nil, err
	}
	switch {
	case reply.Key != claims.Key || reply.Instance != claims.Issuer:
		return nil, &Error{Code: CodeProtocol, Op: op, Message: "the destination's answer does not match its signature"}
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
	return n.takeAcceptance(ctx, id, jti, r, true, detail)
}

// recordAcceptor is completeAsInitiator for a private initiator: the
// connection stays Pending until the acceptor confirms it heard.
func (n *Node) recordAcceptor(ctx context.Context, id, jti string, r *verifiedReply) error {
	return n.takeAcceptance(ctx, id, jti, r, false, "")
}

func (n *Node) takeAcceptance(ctx context.Context, id, jti string, r *verifiedReply, activate bool, detail string) error {
	const op = "tether: complete handshake"
	return retryOnConflict(func() error {
		c, err := n.store.GetConnection(ctx, id)
		if err != nil {
			return err
		}
		same := c.RemoteInstance == r.Instance && c.RemoteConnection == r.Connection && c.RemoteKey.Equal(r.key)
		switch {
		case c.Role != RoleInitiator || c.Invitation != jti:
			return &Error{Code: CodeRevoked, Op: op, Message: "invitation was revoked or replaced"}
		case c.Status != StatusDeleted && same && (c.Status != StatusPending || !activate):
			return nil // a retry of the acceptance that completed (or recorded) it
		case c.Status == StatusDeleted:
			return &Error{Code: CodeRevoked, Op: op, Message: "invitation was revoked or has expired"}
		case c.Status != StatusPending || c.RemoteInstance != "":
			return &Error{Code: CodeAlreadyUsed, Op: op, Message: "invitation was already used"}
		}
		c.RemoteInstance, c.RemoteKey, c.RemoteConnection = r.Instance, r.key, r.Connection
		c.RemoteURL, c.RemoteName, c.RemoteAdminURL = r.Endpoint, r.Name, adminURL(r.AdminURL)
		now := n.clock.Now()
		c.UpdatedAt = now
		c.Health = Health{LastContact: now}
		var ev Event
		if activate {
			c.Status = StatusActive
			ev = n.event(ctx, EventAccepted, detail)
		} else {
			ev = n.event(ctx, EventUpdated, "accepted by "+r.Name+" at the destination; confirming")
		}
		start := n.metrics.start()
		err = n.store.ConsumeInvitation(ctx, n.ID()+"/"+c.Invitation, c.InvitationExpires.Add(ClockSkew), c, ev)
		n.metrics.storeCall(ctx, StoreConsumeInvitation, start, err)
		if ErrorCode(err) == CodeAlreadyUsed {
			// Re-read: it may be this same acceptor's earlier attempt.
			return &Error{Code: CodeConflict, Op: op, Err: err}
		}
		if err == nil {
			n.emit(c.ID, ev)
			n.notifyChanged()
			if activate {
				n.metrics.handshake(ctx, RoleInitiator, OutcomeOK)
			}
		}
		return err
	})
}

// handleAccept runs on a public initiator: an acceptor presents the code.
// Once the acceptor's signature and the code are verified, every answer is
// signed with the key the code pinned, refusals included.
func (n *Node) handleAccept(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle accept"
	// The acceptor is not known yet: its token carries its key, and is
	// verified with it before the body is read.
	now := n.clock.Now()
	claims, err := n.verify(op, wire.Check{
		Auth: req.Auth, Body: req.Body, Op: string(OpAccept), Audience: n.endpoint,
		Target: req.Target, TargetPath: targetPath(n.endpoint, OpAccept),
		Now: now, Skew: ClockSkew, Lookup: wire.EmbeddedKey(KeyID),
	})
	late := ErrorCode(err) == CodeClockSkew
	if err != nil && !late || claims == nil {
		return nil, refused(op)
	}
	var body acceptRequest
	if err := decodeBody(op, req.Body, MaxRequestBody, &body); err != nil {
		return nil, err
	}
	key, ok := decodeKey(body.Key)
	if !ok || body.Key != claims.Key || claims.Issuer != body.Instance {
		return nil, refused(op)
	}
	inv, err := n.presented(ctx, op, &body, claims.Subject, key, now)
	if inv == nil {
		return nil, err // not signed: the code may not even be this instance's
	}
	if claims.Subject != inv.Connection {
		return nil, refused(op)
	}
	// Answers are signed with the key the code pinned, as the acceptor
	// expects, and name the initiator's connection.
	signer := &Connection{ID: inv.Connection, LocalKeyID: inv.KeyID}
	refuse := func(err error) (*Response, error) {
		n.metrics.handshake(ctx, RoleInitiator, outcomeOf(err))
		return n.refusal(op, &authenticated{conn: signer, claims: claims}, err)
	}
	if err != nil {
		return refuse(err)
	}
	if late {
		// Authentic but dated outside ClockSkew: it changes nothing. An
		// acceptor that keeps its acceptance waits for the clocks to be
		// set right, unless the invitation is closed for good.
		if c, err := n.store.GetConnection(ctx, inv.Connection); err == nil && c.Status == StatusDeleted {
			return refuse(&Error{Code: CodeRevoked, Op: op, Message: "invitation was revoked or has expired"})
		}
		return refuse(&Error{Code: CodeClockSkew, Op: op, Message: "the acceptor's clock and the initiator's differ by more than " + ClockSkew.String() + ": check the clocks of both instances"})
	}
	// Counted against the invitation, not the instance the request claims
	// to be: only a holder of this invitation can use up its quota.
	if !n.fresh(ctx, "invitation:"+inv.ID, claims.ID, now) {
		return nil, refused(op)
	}
	for _, err := range []error{
		checkID("instance", body.Instance),
		checkID("connection", body.Connection),
		checkURLSyntax("endpoint", body.Endpoint, true),
		checkText("name", body.Name, 1, MaxShortNameLen),
	} {
		if err != nil {
			return refuse(withOp(op, err))
		}
	}
	if inv.Repairs != "" {
		return n.handleRepair(ctx, op, inv, &body, key, claims, refuse)
	}
	if body.Connection != derivedID("conn", inv.IssuedAt, inv.Issuer, inv.ID) {
		return refuse(&Error{Code: CodeProtocol, Op: op, Message: "the acceptor's connection ID does not derive from the invitation"})
	}
	if inv.Destination != "" && body.Endpoint != inv.Destination {
		return refuse(&Error{Code: CodeInvalid, Op: op, Message: "the invitation is addressed to " + inv.Destination + ", not to the instance that presented it"})
	}
	if body.Endpoint != "" {
		// This side will call the acceptor's endpoint later.
		if err := n.policy.Check(body.Endpoint); err != nil {
			return refuse(err)
		}
	}
	peer := &verifiedReply{
		peerReply: peerReply{Instance: body.Instance, Key: body.Key, Connection: body.Connection, Endpoint: body.Endpoint, Name: body.Name, AdminURL: body.AdminURL},
		key:       key,
	}
	if inv.Destination != "" {
		// Only the instance at the destination may accept: ask it whether
		// it holds this acceptance, with this key.
		if err := n.checkDestination(ctx, inv, peer); err != nil {
			return refuse(err)
		}
	}
	err = n.completeAsInitiator(WithActor(ctx, ActorRemote), inv.Connection, inv.ID, peer, "accepted by "+body.Name)
	if err != nil {
		return refuse(err)
	}
	c, err := n.store.GetConnection(ctx, inv.Connection)
	if err != nil {
		return refuse(err)
	}
	return n.signAnswer(op, c, claims, n.introduction(c, false), false)
}

// presented returns the invitation an accept request presents: the code it
// carries, verified with this instance's keys, or, for a follow-up that
// proves it holds the code instead, the invitation as the initiator's
// connection recorded it. An error with a nil invitation is answered
// unsigned; with an invitation, signed.
func (n *Node) presented(ctx context.Context, op string, body *acceptRequest, sub string, key ed25519.PublicKey, now time.Time) (*Invitation, error) {
	if body.Code != "" {
		inv, err := n.invites.decode(op, body.Code, now, n.keys.Load())
		if ErrorCode(err) == CodeUnknownKey && n.reloadKeys(ctx) {
			// Another node sharing the Store may have rotated.
			inv, err = n.invites.decode(op, body.Code, now, n.keys.Load())
		}
		if err != nil {
			return nil, err
		}
		return inv, nil
	}
	if checkID("sub", sub) != nil {
		return nil, refused(op)
	}
	c, err := n.store.GetConnection(ctx, sub)
	if err != nil || c.Role != RoleInitiator || c.Kind != KindPeer ||
		subtle.ConstantTimeCompare([]byte(body.Proof), []byte(acceptProof(c.Invitation, key))) != 1 {
		return nil, refused(op)
	}
	inv := &Invitation{
		ID: c.Invitation, Issuer: n.ID(), KeyID: c.LocalKeyID, Connection: c.ID,
		IssuedAt: c.CreatedAt, ExpiresAt: c.InvitationExpires,
	}
	if c.Status != StatusPending {
		return inv, nil // completed or closed: completeAsInitiator says which
	}
	inv.Destination = c.RemoteURL
	if !now.Before(c.InvitationExpires.Add(ClockSkew)) {
		return inv, &Error{Code: CodeExpired, Op: op, Message: "the invitation expired before the acceptance arrived"}
	}
	return inv, nil
}

// checkDestination asks the destination of inv whether it is the acceptor
// that presented the code: it must answer, signed with the key the
// acceptor presented, that it holds the acceptance.
func (n *Node) checkDestination(ctx context.Context, inv *Invitation, peer *verifiedReply) error {
	const op = "tether: check the destination"
	key, ok := n.ownKey(inv.KeyID)
	if !ok {
		return &Error{Code: CodeUnknownKey, Op: op, Message: "invitation was signed with a key this instance no longer has"}
	}
	body, _, err := n.call(ctx, op, request{
		endpoint: inv.Destination, op: OpStatus, sub: peer.Connection, key: key,
		answeredBy: pinnedKey(op, peer.key),
	})
	if transient(err) {
		return &Error{Code: CodeUnavailable, Op: op, Message: "the destination could not be asked whether it accepted the invitation: retry later"}
	}
	if err != nil {
		return &Error{Code: CodeUnauthenticated, Op: op, Message: "the destination did not confirm it accepted the invitation (" + string(ErrorCode(err)) + ")"}
	}
	var reply peerReply
	if err := decodeBody(op, body, MaxRequestBody, &reply); err != nil {
		return err
	}
	if reply.Proof != acceptProof(inv.ID, peer.key) || reply.Connection != peer.Connection || reply.Instance != peer.Instance {
		return &Error{Code: CodeUnauthenticated, Op: op, Message: "the destination did not confirm it accepted the invitation"}
	}
	return nil
}

// statusRequest is the body of OpStatus: empty to ask, or confirmed when a
// private initiator tells the acceptor it recorded the acceptance.
type statusRequest struct {
	Confirmed bool `json:"confirmed,omitempty"`
}

// handleStatus answers one side of a handshake asking the other: a private
// initiator (or a public initiator checking its destination) asks the
// acceptor, or an acceptor whose answer was lost asks a public initiator.
func (n *Node) handleStatus(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle status"
	return n.serve(ctx, op, req, func(a *authenticated) (any, error) {
		var body statusRequest
		if len(req.Body) > 0 {
			if err := decodeBody(op, req.Body, MaxRequestBody, &body); err != nil {
				return nil, err
			}
		}
		c := a.conn
		if c.Role == RoleAcceptor && c.Status == StatusPending {
			if !body.Confirmed && !n.clock.Now().Before(acceptanceDeadline(c)) {
				n.abandonAcceptance(ctx, c.ID, OutcomeExpired, "the initiator did not confirm the acceptance before the invitation expired")
			}
			var got *Connection
			var err error
			if body.Confirmed {
				got, err = n.peerConfirmed(ctx, c.ID)
			} else {
				got, err = n.store.GetConnection(ctx, c.ID)
			}
			if err != nil {
				return nil, err
			}
			c = got
		}
		if c.Status == StatusDeleted {
			return nil, &Error{Code: CodeRevoked, Op: op, Message: "the connection was deleted on this side"}
		}
		a.conn, a.withKey = c, c.Role == RoleAcceptor
		return n.introduction(c, c.Role == RoleAcceptor), nil
	})
}

// introduction is this side's part of a handshake answer; withProof adds
// the proof that this side holds the invitation code.
func (n *Node) introduction(c *Connection, withProof bool) peerReply {
	key, _ := n.signingKey(c)
	r := peerReply{
		Instance: n.ID(), Key: base64.RawURLEncoding.EncodeToString(key.Public()),
		Connection: c.ID, Endpoint: n.endpoint, Name: c.LocalName, AdminURL: n.adminURL,
	}
	if withProof {
		r.Proof = acceptProof(c.Invitation, key.Public())
	}
	return r
}

type acceptRequest struct {
	Code string `json:"code,omitempty"` // the invitation code: proof of possession
	// Proof replaces the code when an acceptor follows up an acceptance
	// whose answer was lost: acceptProof of the invitation ID and its key.
	Proof      string `json:"proof,omitempty"`
	Instance   string `json:"instance"`           // acceptor instance ID
	Key        string `json:"key"`                // acceptor public key, base64url
	Endpoint   string `json:"endpoint,omitempty"` // acceptor URL; empty when private
	Connection string `json:"connection"`         // acceptor connection ID
	Name       string `json:"name"`               // acceptor short name
	// AdminURL is the acceptor's admin page, when it shares one.
	AdminURL string `json:"admin_url,omitempty"`
}

// adminURL returns a partner's admin page URL if it is one a page may
// link to (http or https, absolute), "" otherwise: a partner's bad value
// is dropped rather than shown.
func adminURL(s string) string {
	if checkURLSyntax("admin_url", s, true) != nil {
		return ""
	}
	return s
}

// peerReply introduces the answering side: the reply to accept and status.
type peerReply struct {
	Instance   string `json:"instance"`
	Key        string `json:"key"` // the key to pin from now on, base64url
	Connection string `json:"connection"`
	Endpoint   string `json:"endpoint,omitempty"`
	Name       string `json:"name"`
	// AdminURL is the answering side's admin page, when it shares one.
	AdminURL string `json:"admin_url,omitempty"`
	// Proof, in a status reply, shows the acceptor holds the invitation
	// code: base64url SHA-256 over the invitation ID and the acceptor key.
	Proof string `json:"proof,omitempty"`
}

func acceptProof(jti string, key ed25519.PublicKey) string {
	h := sha256.New()
	h.Write([]byte("tether accept proof\x00"))
	h.Write([]byte(jti))
	h.Write([]byte{0})
	h.Write(key)
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}
