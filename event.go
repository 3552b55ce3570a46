package tether

import "time"

// EventType names what happened to a connection.
type EventType string

const (
	EventCreated      EventType = "created"      // the connection was created (initiated or accepted)
	EventAccepted     EventType = "accepted"     // the handshake completed; the connection is active
	EventUpdated      EventType = "updated"      // name, description, rules or settings changed
	EventPaused       EventType = "paused"       // paused
	EventActivated    EventType = "activated"    // resumed after a pause
	EventDeleted      EventType = "deleted"      // soft-deleted
	EventRevoked      EventType = "revoked"      // the pending invitation was revoked
	EventExpired      EventType = "expired"      // the pending invitation expired
	EventAuthLost     EventType = "auth_lost"    // credentials stopped working; the connection is inactive
	EventReauthorized EventType = "reauthorized" // credentials restored

	EventPeerPaused    EventType = "peer_paused"    // the partner paused its side: its messages wait, and so do ours
	EventPeerActivated EventType = "peer_activated" // the partner resumed its side
	EventKeyChanged    EventType = "key_changed"    // a signing key of this connection changed (this side's or the partner's)
	EventKeyRevoked    EventType = "key_revoked"    // the host revoked the partner's key: the connection is inactive

	// Reachability of the partner, for connections past the handshake and
	// not deleted: one event per change, never one per attempt.
	// peer_unreachable comes with a failed exchange that makes three in a
	// row (Health.Failures) when none has succeeded for a minute either,
	// its Detail the last cause ("unreachable: <code>: <message>", as
	// Health.LastError reads meanwhile); peer_reachable with the next
	// exchange that succeeds, or the partner answering that it paused. A
	// brief outage gives neither. On a private side the partner is the
	// public side it polls.
	EventPeerUnreachable EventType = "peer_unreachable" // exchanges with the partner keep failing: it cannot be reached
	EventPeerReachable   EventType = "peer_reachable"   // an exchange with the partner succeeded again after peer_unreachable

	// Org connections (recorded with Node.Note by the oauth package).
	EventAuthFailing     EventType = "auth_failing"     // refreshing the credentials keeps failing: re-authorize before they lapse
	EventAuthRecovered   EventType = "auth_recovered"   // credentials refresh again after auth_failing
	EventCredentialsGone EventType = "credentials_gone" // a deleted connection's credentials were revoked at the provider or destroyed
	EventOrgRefreshed    EventType = "org_refreshed"    // the org behind the connection was replaced (a refreshed sandbox)
)

// Event is one entry of a connection's history. Events are appended in the
// same atomic step as the change they describe and stay readable after the
// connection is deleted.
type Event struct {
	// Seq orders events: assigned by the Store, increasing across the whole
	// store, so events of one connection come back in the order they were
	// appended.
	Seq          int64
	ConnectionID string
	Type         EventType
	Time         time.Time
	// Actor says who caused it: "local" for a call on this instance,
	// "remote" for the peer, "system" for expiry and the like, or an actor
	// the host passed in (a user ID).
	Actor string
	// Detail is a short human-readable note; never a secret.
	Detail string
}

// Actors recorded in events when the host names none.
const (
	ActorLocal  = "local"
	ActorRemote = "remote"
	ActorSystem = "system"
)
