package tether

import (
	"context"
	"time"
)

// Store keeps connections, their events, used invitations and the
// instance's identity. memstore and sqlstore implement it; storetest.Run is
// the conformance suite every implementation must pass.
//
// Contract, for every method:
//   - Safe for concurrent use by many goroutines, and, for stores shared by
//     several processes, by many processes.
//   - Errors are *tether.Error with the codes named below; any other fault
//     (I/O, a closed database) is CodeInternal or CodeUnavailable with the
//     cause wrapped. Errors never contain secrets.
//   - Values passed in are not retained and values returned are copies: the
//     caller may modify either afterwards.
//   - Writes are atomic: a method that fails wrote nothing.
//   - A context that ends makes the call return its error promptly.
type Store interface {
	// LoadInstance returns this instance's identity. CodeNotFound when none
	// was saved yet.
	LoadInstance(ctx context.Context) (*Instance, error)

	// SaveInstance creates the identity when inst.Version is 0 (CodeAlreadyExists
	// if one exists: another process won the race, load theirs) and otherwise
	// replaces it only if the stored Version equals inst.Version (CodeConflict
	// if not). On success inst.Version holds the new version. Private keys
	// are secrets: a durable store seals them.
	SaveInstance(ctx context.Context, inst *Instance) error

	// CreateConnection stores a new connection and appends events for it, in
	// one atomic step. c must pass c.Validate (CodeInvalid) and its ID must
	// be new (CodeAlreadyExists). On success c.Version is 1.
	//
	// One org per team: an org connection (KindOrg) with an ExternalID is
	// refused with CodeOrgTaken, here and in UpdateConnection, while
	// another connection that is not deleted has the same Kind and
	// ExternalID, whatever its Owner; of concurrent writers, across
	// processes too, one wins.
	CreateConnection(ctx context.Context, c *Connection, events ...Event) error

	// UpdateConnection replaces a stored connection and appends events, in
	// one atomic step, if the stored Version equals c.Version; the stored
	// version becomes c.Version+1 and so does c.Version.
	//
	// A connection that moves to StatusDeleted (here, in UpdateAndNotify or
	// in ConsumeInvitation) closes its outbox in the same step: the data
	// messages not yet acknowledged are dropped, control messages stay
	// until acknowledged, and AppendOutbox refuses from then on.
	//
	// Codes: CodeNotFound (no such ID), CodeConflict (Version differs: reload
	// and retry), CodeInvalid (c fails Validate, or Kind, Role or CreatedAt
	// changed), CodeModeFixed (Mode changed), CodeInvalidTransition (the
	// status change is not allowed by Next for any action).
	UpdateConnection(ctx context.Context, c *Connection, events ...Event) error

	// UpdateAndNotify is UpdateConnection that also appends notice to the
	// connection's outbox as a control message (Message.Control true), in
	// the same atomic step, and returns its sequence number. c.NoticeSeq is
	// set to that number, in c and in the stored record. It appends even
	// when c moves to StatusDeleted: that notice is the last message of the
	// closed outbox. Codes as UpdateConnection's; nothing is appended when
	// it fails.
	UpdateAndNotify(ctx context.Context, c *Connection, notice []byte, events ...Event) (seq int64, err error)

	// ConsumeInvitation records key (an opaque string of at most 200 bytes
	// naming one invitation) as used and, in the same atomic step, creates c
	// (when c.Version is 0) or updates it as UpdateConnection does, with its
	// events. If key was recorded before it fails with CodeAlreadyUsed and
	// writes nothing; of any number of concurrent calls with one key, exactly
	// one can succeed. If writing c fails, key is not recorded. The record is
	// kept at least until expires.
	ConsumeInvitation(ctx context.Context, key string, expires time.Time, c *Connection, events ...Event) error

	// GetConnection returns the connection with that ID, deleted ones too.
	// CodeNotFound when there is none.
	GetConnection(ctx context.Context, id string) (*Connection, error)

	// ListConnections returns the connections matching opts in ascending ID
	// order (IDs sort by creation time), at most opts.PageLimit() of them,
	// starting after the ID opts.After. next is the cursor for the following
	// page, empty when there are no more.
	ListConnections(ctx context.Context, opts ListOptions) (conns []*Connection, next string, err error)

	// ListEvents returns the events of a connection with Seq greater than
	// after, in ascending Seq order, at most limit of them (0 means 100,
	// capped at 1000). CodeNotFound when the connection does not exist.
	ListEvents(ctx context.Context, connectionID string, after int64, limit int) ([]Event, error)

	// AppendOutbox stores a message for the peer of a connection with the
	// connection's next sequence number (1 for the first; numbers are never
	// reused, not even after acknowledgement) and returns that number. The
	// message is durable when it returns. CodeNotFound when the connection
	// does not exist, CodeNotConnected when it is deleted: the check and the
	// append are one atomic step, so a message is never appended after the
	// connection's deletion.
	AppendOutbox(ctx context.Context, connectionID string, payload []byte, created time.Time) (seq int64, err error)

	// ListOutbox returns the unacknowledged messages (data and control) of a connection with Seq
	// greater than after, in ascending Seq order, at most limit of them (0
	// means 100, capped at 1000). An unknown connection has none.
	ListOutbox(ctx context.Context, connectionID string, after int64, limit int) ([]Message, error)

	// AckOutbox removes a connection's messages with Seq up to and including
	// upTo: the peer has them. It is idempotent; an upTo below what was
	// already acknowledged changes nothing.
	AckOutbox(ctx context.Context, connectionID string, upTo int64) error

	// InboxCursor returns the Seq of the last message of a connection handed
	// to the Receiver successfully; 0 when none was. CodeNotFound when the
	// connection does not exist.
	InboxCursor(ctx context.Context, connectionID string) (int64, error)

	// AdvanceInbox moves a connection's inbox cursor from from to to, only
	// if it is at from (CodeConflict otherwise: another delivery moved it).
	// to must be greater than from (CodeInvalid): the cursor never moves
	// back. CodeNotFound when the connection does not exist.
	AdvanceInbox(ctx context.Context, connectionID string, from, to int64) error

	// Lease takes or renews the lease called name for holder until the time
	// until, and reports whether holder has it: it does when nobody held
	// it, when holder held it already, or when the previous holder's lease
	// ended before now. Nodes sharing a Store use leases so that one
	// connection's outbox is in flight on one of them at a time; a holder
	// that dies loses its lease when it runs out.
	Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error)

	// Release ends holder's lease called name; it does nothing if holder
	// does not hold it.
	Release(ctx context.Context, name, holder string) error
}

// BatchAppender is implemented by Stores that can store many messages of
// one connection in one transaction. Node.SendBatch uses it when the Store
// has it. memstore and sqlstore implement it; storetest.Run covers it.
type BatchAppender interface {
	// AppendOutboxBatch stores payloads, in order, as messages for the
	// peer of a connection, with consecutive sequence numbers, and returns
	// the first: the last is first+len(payloads)-1. All are durable when
	// it returns, or none is stored. Its errors are AppendOutbox's. It is
	// not called with an empty payloads.
	AppendOutboxBatch(ctx context.Context, connectionID string, payloads [][]byte, created time.Time) (first int64, err error)
}

// AtomicInbox is implemented by Stores that can run the Receiver and the
// inbox cursor's advance in one transaction. A Node uses it when the Store
// has it: the Receiver runs with a context from which the Store's
// transaction can be taken (for sqlstore, sqlstore.Tx), so a Receiver that
// writes its effects through that transaction applies each message exactly
// once, even across crashes, and deliveries to one connection are
// serialized across processes.
//
// Every Store method called with that context runs inside the delivery's
// transaction: its writes commit with the message's cursor, or are undone
// with it. So a Receiver that calls Node.Send with the context it was given
// stores its reply if and only if the message it answers is marked
// delivered, and a Store with a single database connection never waits for
// a second one.
type AtomicInbox interface {
	// DeliverInbox hands msgs, whose Seqs ascend from above from (a gap
	// is messages the sender dropped: the Node checks), to fn one at a
	// time in one transaction, each message in a savepoint of
	// its own. It stops at the first message fn fails, undoing only that
	// message's writes, moves the cursor to the last message fn accepted,
	// commits, and returns the new cursor with fn's error, if any. If the
	// cursor is not at from, fn is not called and the error has
	// CodeConflict; CodeNotFound when the connection does not exist.
	DeliverInbox(ctx context.Context, connectionID string, from int64, msgs []Message, fn func(ctx context.Context, m Message) error) (int64, error)
}

// OutboxWatcher is implemented by Stores that several processes share. A
// Node that runs on such a Store watches it, so that a message one process
// stores wakes a long-poll another process holds, and also sweeps the
// Store every Config.SweepInterval (OutboxScanner) in case a notification
// is lost.
//
// A Store that implements OutboxWatcher must also implement NonceStore.
type OutboxWatcher interface {
	// WatchOutbox calls fn with the connection ID of messages appended to
	// any outbox, by any process, until ctx ends; it then returns ctx's
	// error. Notifications are hints: some may be lost or repeated.
	WatchOutbox(ctx context.Context, fn func(connectionID string)) error
}

// OutboxScanner is implemented by Stores that can tell which connections
// have messages waiting in their outbox. Run asks when it starts, and, on
// a Store other processes share, every Config.SweepInterval: one query,
// however many connections the Store holds. Without it Run reads every
// connection instead. memstore and sqlstore implement it; storetest.Run
// covers it.
type OutboxScanner interface {
	// PendingOutboxes returns the IDs of the connections, deleted ones
	// too, whose outbox holds unacknowledged messages (data or control),
	// in ascending ID order, starting after the ID after, at most limit of
	// them (0 means 100, capped at 1000). A connection with fewer IDs
	// than limit returned is the last page.
	PendingOutboxes(ctx context.Context, after string, limit int) ([]string, error)
}

// LocalStore is implemented by Stores that know whether only one process
// uses them. A Store that is an OutboxWatcher but reports Local true is
// treated as a single-process Store: every change comes through this
// process, so a Node skips what replicas need (the periodic sweep for
// lost notifications, re-reading the instance's keys every second).
type LocalStore interface {
	// Local reports whether only this process uses the Store.
	Local() bool
}

// FeedStore is implemented by Stores that list the events of all
// connections after a cursor: the feed a host forwards, as webhooks for
// instance. memstore and sqlstore implement it; storetest.Run covers it.
//
// The guarantee: a reader that starts from the empty cursor and passes
// each call the next cursor the previous one returned is handed every
// event the Store holds (of opts.Owner's connections, when set) exactly
// once: none skipped, none repeated, whatever other goroutines and
// processes append meanwhile. A reader that crashes resumes from the last
// cursor it kept, after the last page it finished with. For that, a page
// holds only events whose place in the feed is final: an event appended
// later, or by a write that had not committed when the page was read,
// always comes after the cursor returned with that page. An event appears
// once the write that appended it committed; on a database with long
// transactions that can be some time after a later event of another
// connection appeared.
//
// The events of one connection come in ascending Seq order. Those of
// different connections interleave in an order of the Store's own (about
// the order their writes committed): Seq need not increase from one event
// of the feed to the next, so a reader resumes from the cursor, never
// from a Seq.
//
// ListFeed is safe for concurrent use, like every Store method.
type FeedStore interface {
	// ListFeed returns the events after the cursor opts.After, in feed
	// order, at most opts.PageLimit() of them, and the cursor of what
	// follows. next is never empty: after an empty page it is opts.After
	// (or the start cursor when opts.After is empty), so a caller keeps
	// polling with it. Cursors are opaque strings, safe in a URL query;
	// one that is not a cursor of this Store's feed (malformed, or from
	// another kind of Store) fails with CodeInvalid. Events of deleted
	// connections stay in the feed.
	ListFeed(ctx context.Context, opts FeedOptions) (events []Event, next string, err error)
}

// FeedOptions selects a page of the event feed.
type FeedOptions struct {
	After string // the cursor returned with the previous page; "" for the start of the feed
	Owner string // only events of connections with this Owner; "" for all
	Limit int    // page size: 0 means DefaultEventPage, capped at MaxEventPage
}

// PageLimit returns the effective page size for o.
func (o FeedOptions) PageLimit() int { return EventLimit(o.Limit) }

// Outbox page limits for Store.ListOutbox.
const (
	DefaultOutboxPage = 100
	MaxOutboxPage     = 1000
)

// OutboxLimit returns the effective page size for a ListOutbox limit.
func OutboxLimit(limit int) int { return clampLimit(limit, DefaultOutboxPage, MaxOutboxPage) }

// Event list limits for Store.ListEvents.
const (
	DefaultEventPage = 100
	MaxEventPage     = 1000
)

// EventLimit returns the effective page size for a ListEvents limit.
func EventLimit(limit int) int { return clampLimit(limit, DefaultEventPage, MaxEventPage) }

func clampLimit(limit, def, max int) int {
	switch {
	case limit <= 0:
		return def
	case limit > max:
		return max
	}
	return limit
}

// MaxInvitationKeyLen bounds the key of Store.ConsumeInvitation.
const MaxInvitationKeyLen = 200

// CheckUpdate checks what Store.UpdateConnection requires of a change from
// old to c, other than the version: stores call it so they all reject the
// same things with the same codes.
func CheckUpdate(old, c *Connection) error {
	const op = "tether: update connection"
	if err := c.Validate(); err != nil {
		return err
	}
	switch {
	case c.Kind != old.Kind:
		return invalidf(op, "Kind", "cannot change after creation")
	case c.Role != old.Role:
		return invalidf(op, "Role", "cannot change after creation")
	case !c.CreatedAt.Equal(old.CreatedAt):
		return invalidf(op, "CreatedAt", "cannot change after creation")
	case c.Mode != old.Mode:
		return &Error{Code: CodeModeFixed, Op: op, Message: "mode cannot be changed after the connection is created"}
	case c.Status != old.Status && !canMove(old.Status, c.Status):
		return &Error{Code: CodeInvalidTransition, Op: op, Message: "cannot move from " + string(old.Status) + " to " + string(c.Status)}
	}
	return nil
}

// canMove reports whether some action leads from one status to another.
func canMove(from, to Status) bool {
	for _, a := range []Action{ActionAccept, ActionPause, ActionActivate, ActionDelete, ActionRevoke, ActionExpire, ActionAuthLost, ActionReauthorize} {
		if s, ok := Next(from, a); ok && s == to {
			return true
		}
	}
	return false
}

// NonceStore is implemented by Stores that several processes share: it
// records the nonces of authenticated requests so that a request replayed
// to another process inside its time window is refused there too.
type NonceStore interface {
	// RememberNonce records key until the time until and reports whether
	// it was new. Of concurrent calls with one key, one reports true. Keys
	// may be forgotten after their until has passed.
	RememberNonce(ctx context.Context, key string, now, until time.Time) (bool, error)
}

// OAuthStore is implemented by Stores that keep what the oauth package
// needs: authorization attempts in flight, each usable once, and each org
// connection's tokens, versioned so that one refresh at a time replaces
// them across goroutines and processes. memstore and sqlstore implement
// it; storetest.Run covers it.
type OAuthStore interface {
	// PutOAuthState stores an authorization attempt's data under key
	// until expires. key names the attempt (at most 200 bytes); the data
	// hold a PKCE verifier, a secret: a durable store seals them.
	// CodeAlreadyExists when key is stored already.
	PutOAuthState(ctx context.Context, key string, data []byte, expires time.Time) error

	// TakeOAuthState returns the data stored under key and removes them,
	// in one atomic step: of any number of concurrent calls with one key,
	// one gets the data. CodeNotFound when nothing is stored under key or
	// it expired before now (an expired attempt is removed too).
	TakeOAuthState(ctx context.Context, key string, now time.Time) ([]byte, error)

	// LoadOAuthToken returns the token data of a connection and their
	// version. CodeNotFound when none are stored.
	LoadOAuthToken(ctx context.Context, connectionID string) (data []byte, version int64, err error)

	// SaveOAuthToken stores a connection's token data if the stored
	// version equals version (0: none stored yet), and returns the new
	// version; CodeConflict otherwise (another writer, say a refresh in
	// another process, got there first). The data are secrets: a durable
	// store seals them. CodeNotFound when the connection does not exist.
	SaveOAuthToken(ctx context.Context, connectionID string, data []byte, version int64) (int64, error)

	// DeleteOAuthToken removes a connection's token data; it does nothing
	// when there are none.
	DeleteOAuthToken(ctx context.Context, connectionID string) error
}

// MaxOAuthStateKeyLen bounds the key of OAuthStore.PutOAuthState.
const MaxOAuthStateKeyLen = 200
