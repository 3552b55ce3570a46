package tether

import (
	"crypto/ed25519"
	"maps"
	"slices"
	"time"
)

// Kind says what a connection links to.
type Kind string

const (
	// KindPeer connects two tether instances that exchange messages.
	KindPeer Kind = "peer"
	// KindOrg connects a team to an external org (Salesforce, Dynamics 365)
	// authorized with OAuth.
	KindOrg Kind = "org"
)

// Status is where a connection is in its lifecycle. The only way to change
// it is a transition allowed by Next; see the package documentation for the
// diagram.
type Status string

const (
	// StatusPending: the invitation is issued (or the OAuth flow begun) and
	// not yet completed.
	StatusPending Status = "pending"
	// StatusActive: messages flow.
	StatusActive Status = "active"
	// StatusPaused: an administrator paused the connection. Messages still
	// queue, nothing is lost; delivery resumes on Activate.
	StatusPaused Status = "paused"
	// StatusInactive: the credentials stopped working (peer key revoked,
	// OAuth grant withdrawn). Work waits until Reauthorize.
	StatusInactive Status = "inactive"
	// StatusDeleted: soft-deleted. The record and its events stay readable;
	// nothing is sent or accepted any more.
	StatusDeleted Status = "deleted"
)

// Action is what moves a connection from one Status to another.
type Action string

const (
	ActionAccept      Action = "accept"      // the partner accepted the invitation
	ActionPause       Action = "pause"       // an administrator paused it
	ActionActivate    Action = "activate"    // an administrator resumed it
	ActionDelete      Action = "delete"      // an administrator deleted it (or the peer did)
	ActionRevoke      Action = "revoke"      // the pending invitation was revoked
	ActionExpire      Action = "expire"      // the pending invitation expired
	ActionAuthLost    Action = "auth_lost"   // credentials stopped working
	ActionReauthorize Action = "reauthorize" // credentials restored
)

// Next is the transition table: it returns the status that action leads to
// from status from, and false when the status machine does not allow it.
//
//	Pending  --accept-------> Active
//	Pending  --revoke/expire-> Deleted
//	Active   --pause--------> Paused --activate--> Active
//	Active   --auth_lost----> Inactive --reauthorize--> Active
//	Paused   --auth_lost----> Inactive
//	any but Deleted --delete--> Deleted
func Next(from Status, action Action) (Status, bool) {
	if action == ActionDelete {
		return StatusDeleted, from.valid() && from != StatusDeleted
	}
	switch from {
	case StatusPending:
		switch action {
		case ActionAccept:
			return StatusActive, true
		case ActionRevoke, ActionExpire:
			return StatusDeleted, true
		}
	case StatusActive:
		switch action {
		case ActionPause:
			return StatusPaused, true
		case ActionAuthLost:
			return StatusInactive, true
		}
	case StatusPaused:
		switch action {
		case ActionActivate:
			return StatusActive, true
		case ActionAuthLost:
			return StatusInactive, true
		}
	case StatusInactive:
		if action == ActionReauthorize {
			return StatusActive, true
		}
	}
	return from, false
}

func (s Status) valid() bool {
	switch s {
	case StatusPending, StatusActive, StatusPaused, StatusInactive, StatusDeleted:
		return true
	}
	return false
}

// Mode is how a connection's synchronisation is configured. It is chosen
// when the connection is initiated and can never change afterwards.
type Mode string

const (
	ModeBasic  Mode = "basic"
	ModeVisual Mode = "visual"
	ModeScript Mode = "script"
)

func (m Mode) valid() bool { return m == ModeBasic || m == ModeVisual || m == ModeScript }

// Role says which side of the handshake this instance played.
type Role string

const (
	RoleInitiator Role = "initiator"
	RoleAcceptor  Role = "acceptor"
)

// Health records how talking to the remote side went recently.
type Health struct {
	LastContact time.Time // last successful exchange with the remote side
	LastError   string    // the last failure, empty after a success; never holds secrets
	Failures    int       // consecutive failures since LastContact
}

// Connection is the agreement between this instance and a remote party: a
// peer tether instance (KindPeer) or an external org (KindOrg).
//
// Connections returned by tether are copies: changing one changes nothing
// until it is passed to a Store method or a Node method takes the change.
type Connection struct {
	ID          string
	Kind        Kind
	Owner       string // the team or tenant owning it; free-form, chosen by the host
	Name        string
	Description string
	LocalName   string // short name of this side
	RemoteName  string // short name of the remote side
	Mode        Mode
	Status      Status
	Role        Role

	LocalURL  string // this side's endpoint when the connection was made; empty: this side is private
	RemoteURL string // the remote side's endpoint; empty: the remote side is private
	// RemoteAdminURL is the partner's admin page, when it shares one
	// (its Config.AdminURL): where a page's "Go to remote" leads. Always
	// an absolute http or https URL, or empty.
	RemoteAdminURL string

	// LocalKeyID is the ID of this instance's key that the peer pinned:
	// requests on this connection are signed with it.
	LocalKeyID string

	RemoteInstance   string            // the peer's instance ID
	RemoteKey        ed25519.PublicKey // the peer's public key, pinned by the handshake or by its latest key change
	RemoteConnection string            // the peer's ID for this connection

	// RemotePreviousKey is the peer's key before its latest key change,
	// still accepted until the peer signs with RemoteKey (it may not have
	// learnt yet that this side has the new one). Nil otherwise.
	RemotePreviousKey ed25519.PublicKey
	// PendingKeyID is this instance's key announced to the peer in a key
	// change notice not yet acknowledged; LocalKeyID becomes it once the
	// peer acknowledges the outbox through NoticeSeq. Empty otherwise.
	PendingKeyID string
	// NoticeSeq is the outbox sequence number of the latest control
	// message (Message.Control) written for this connection; the Store
	// sets it in UpdateAndNotify.
	NoticeSeq int64
	// RemoteStatus is what the peer last announced of its own side:
	// StatusPaused while the partner has paused it (its messages wait and
	// so do this side's), StatusActive or empty otherwise.
	RemoteStatus Status

	// Invitation is the ID (jti) of the invitation that created the
	// connection, InvitationExpires its expiry.
	Invitation        string
	InvitationExpires time.Time

	ExternalID string // org or environment ID for KindOrg
	// Provider names, for KindOrg, the provider and org type the
	// connection was made with (for example "salesforce-sandbox").
	Provider string
	// OrgType is, for KindOrg, the org's type as the provider shows it
	// (for example "production", "sandbox", or a Dynamics 365
	// environment's type and cloud). RemoteURL is the org's API base URL
	// and RemoteName its display name.
	OrgType string
	// CreatedBy is the actor that created the connection ("on behalf of").
	CreatedBy string

	Rules        string            // opaque rules text (for example scripts in ModeScript)
	RulesVersion int               // incremented whenever Rules changes
	Settings     map[string]string // host-defined settings

	Health Health

	CreatedAt time.Time
	UpdatedAt time.Time
	// Version is incremented by the Store on every update; an update names
	// the version it read and fails with CodeConflict if it changed since.
	Version int64
}

// Clone returns a deep copy of c.
func (c *Connection) Clone() *Connection {
	if c == nil {
		return nil
	}
	d := *c
	d.RemoteKey = slices.Clone(c.RemoteKey)
	d.RemotePreviousKey = slices.Clone(c.RemotePreviousKey)
	d.Settings = maps.Clone(c.Settings)
	return &d
}

// RemotePrivate reports whether the remote side is private, that is it makes
// every request itself and is never called.
func (c *Connection) RemotePrivate() bool { return c.RemoteURL == "" }

// Validate checks the fields a host can set and those a Store relies on. The
// error names the first offending field.
func (c *Connection) Validate() error {
	const op = "tether: validate connection"
	if err := checkID("ID", c.ID); err != nil {
		return withOp(op, err)
	}
	if c.Kind != KindPeer && c.Kind != KindOrg {
		return invalidf(op, "Kind", "must be %q or %q", KindPeer, KindOrg)
	}
	if !c.Status.valid() {
		return invalidf(op, "Status", "unknown status %q", c.Status)
	}
	if c.RemoteStatus != "" && !c.RemoteStatus.valid() {
		return invalidf(op, "RemoteStatus", "unknown status %q", c.RemoteStatus)
	}
	if c.NoticeSeq < 0 {
		return invalidf(op, "NoticeSeq", "must not be negative")
	}
	if c.Kind == KindPeer {
		if !c.Mode.valid() {
			return invalidf(op, "Mode", "must be basic, visual or script")
		}
		if c.Role != RoleInitiator && c.Role != RoleAcceptor {
			return invalidf(op, "Role", "must be initiator or acceptor")
		}
	}
	checks := []error{
		checkText("Owner", c.Owner, 0, MaxOwnerLen),
		checkText("Name", c.Name, 1, MaxNameLen),
		checkText("Description", c.Description, 0, MaxDescriptionLen),
		checkText("ExternalID", c.ExternalID, 0, MaxOwnerLen),
		checkText("Provider", c.Provider, 0, MaxShortNameLen),
		checkText("CreatedBy", c.CreatedBy, 0, MaxOwnerLen),
		checkRules(c.Rules),
		checkSettings(c.Settings),
	}
	if c.Kind == KindPeer {
		checks = append(checks,
			checkText("LocalName", c.LocalName, 1, MaxShortNameLen),
			checkText("RemoteName", c.RemoteName, 1, MaxShortNameLen),
			checkURLSyntax("LocalURL", c.LocalURL, true),
			checkURLSyntax("RemoteURL", c.RemoteURL, true),
		)
	} else {
		checks = append(checks,
			checkText("RemoteName", c.RemoteName, 0, MaxNameLen),
			checkText("OrgType", c.OrgType, 0, MaxShortNameLen),
			checkURLSyntax("RemoteURL", c.RemoteURL, true),
		)
	}
	for _, err := range checks {
		if err != nil {
			return withOp(op, err)
		}
	}
	return nil
}

// ListOptions selects connections for Store.ListConnections and Node.List.
// Zero fields do not filter.
type ListOptions struct {
	Owner  string
	Status Status
	Kind   Kind
	// After is the cursor returned with the previous page; empty for the first.
	After string
	// Limit is the page size; zero means 50, and it is capped at 500.
	Limit int
}

// DefaultPageSize and MaxPageSize bound ListOptions.Limit.
const (
	DefaultPageSize = 50
	MaxPageSize     = 500
)

// PageLimit returns the effective page size for o.
func (o ListOptions) PageLimit() int { return clampLimit(o.Limit, DefaultPageSize, MaxPageSize) }

// Matches reports whether c passes o's filters (not its cursor).
func (o ListOptions) Matches(c *Connection) bool {
	return (o.Owner == "" || c.Owner == o.Owner) &&
		(o.Status == "" || c.Status == o.Status) &&
		(o.Kind == "" || c.Kind == o.Kind)
}
