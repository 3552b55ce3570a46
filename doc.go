// Package tether puts connection setup inside a Go application: one
// installation invites another with a signed invitation code, the partner
// pastes the code to accept, and from then on the two are connected, also
// when one of them sits behind a firewall.
//
// # Model
//
// An instance is one installation of the host application. It has a stable
// ID and an Ed25519 signing key (Instance, kept in the Store). A Node is the
// connection manager of an instance.
//
// A connection is the agreement between this instance and a remote party:
// another tether instance (KindPeer) or an external org such as a
// Salesforce org or a Dynamics 365 environment (KindOrg). Both sides keep
// their own Connection record; the two records point at each other.
//
// A side is public when it has an endpoint URL others can call, and private
// when it has none: a private side sits behind a firewall and only makes
// outgoing requests. One side of every connection must be public.
//
// # Invitations
//
// The initiator calls Node.Initiate with the partner's URL, or with none
// ("I don't have a URL": the partner is private). It gets a Pending
// connection and an invitation code:
//
//	tether_inv_<compact JWS signed with EdDSA>.<checksum>
//
// The code carries who invites (instance ID and public key), the
// connection's name, description and short names, its configuration mode,
// the initiator's URL (or none when the initiator is private), the
// destination URL, and an expiry (72 hours by default). The checksum makes a
// mistyped character a local CodeDamagedCode error. A code is accepted at
// most once, it can be revoked while pending, and it expires.
//
// Before initiating, a page given the destination's URL can ask that
// instance what it is with Node.Probe: one unauthenticated request
// (OpInfo), checked by the URL policy like an invitation's URLs and capped
// at MaxInfoBody, answered with the destination's Info (display name,
// protocol version and configuration modes; nothing about its
// connections). The page then offers only the modes the destination
// supports; for a private destination, which cannot be asked, it offers
// this instance's own (Node.Info). Config.DisplayName and Config.Modes set
// what an instance answers, and Initiate, Preview and Accept refuse a mode
// outside Config.Modes.
//
// The partner shows what a code says with Node.Preview and accepts it with
// Node.Accept. The handshake then depends on who is public:
//
//   - initiator public: the acceptor presents the code to the initiator,
//     which checks it with its own key, consumes it, and answers signed with
//     the key the code pinned. Both sides are Active when Accept returns.
//   - initiator private, acceptor public: the acceptor records the
//     connection as Pending, waiting for the initiator; the initiator, which
//     alone can make requests, asks the acceptor (Node.Run, or Node.Sync
//     once) until the acceptance is there, records it and tells the
//     acceptor, which turns Active; its signed answer turns the initiator
//     Active too.
//   - both private: refused by Initiate and by Accept.
//
// An invitation that names a destination URL is accepted only by the
// instance at that URL, in every topology: any other instance refuses it
// itself, and a public initiator also asks the destination whether it
// holds the acceptance, with the key that presented it, before it
// completes.
//
// # Why both sides agree
//
// A handshake ends with both sides Active or both Deleted, never one of
// each. Each side changes only on what the other signed, and one side
// decides:
//
//   - A public initiator decides. It completes (Active) on an acceptance
//     it verified: the code, or, from an acceptor whose answer was lost,
//     the proof that it holds the code. It never completes after it
//     revoked the invitation or closed it as expired (at the expiry plus
//     ClockSkew). Its acceptor stays Pending until the initiator's signed
//     answer says which: Active, or refused (then Deleted). Until then Run
//     and Sync present the acceptance again; Accept may also be called
//     again with the same code.
//   - With a private initiator, the public acceptor decides. It waits,
//     Pending, for the initiator to confirm, and gives up (Deleted) at the
//     invitation's expiry plus ClockSkew, by its own clock, or at once when
//     the initiator says it revoked the invitation. The initiator asks it,
//     records the acceptance, and stays Pending until the acceptor answers
//     its confirmation, signed: Active if the acceptor took it, Deleted if
//     it had given up. It asks also after the expiry: an acceptance made in
//     time that still waits completes.
//
// So whatever is lost or late, the sides meet in one state as soon as one
// signed answer gets through, and nothing is Active on one side only.
//
// # Trust
//
// Requests between instances are signed with the instances' keys, carry a
// timestamp and a nonce (replays are refused). Once a request is
// authenticated, every answer is signed too, refusals included ("paused,
// retry later", "deleted, stop"). Only an answer signed by the key a
// connection pinned changes that connection: an error from whatever
// answers at the peer's address, whatever code or Retry-After it claims,
// is a transient failure, and only a short, sanitised summary of it is
// kept in Health.LastError.
//
// Clocks may differ by up to ClockSkew (5 minutes) either way, for
// invitations and requests alike. Beyond that, the refusal has
// CodeClockSkew and says to check the clocks; in a handshake it is
// signed, so both sides report it.
//
// # Messages
//
// Node.Send stores a message in the connection's outbox with the next
// sequence number before it returns. Node.Run delivers it: by POSTing
// batches to a public peer (push), or, when the peer is private, by
// answering the long-poll the private side holds open at this side (pull).
// A private side keeps one long-poll per public endpoint, carrying all its
// connections there; each poll carries its inbox cursors, which
// acknowledge what came before. A message leaves the outbox only when the
// peer acknowledged it, so delivery is at least once and in order per
// connection; the receiving node records the last sequence its Receiver
// accepted and hands every message to the Receiver once. Failures back off
// with full jitter and honour Retry-After; each connection's Health shows
// the last contact, the last error and the consecutive failures.
//
// # Delivery
//
// Run's cost does not grow with the connections a node holds, only with
// the work it has. An idle connection has no goroutine, no timer and no
// store read. Work is found from what changed: a Send or a notice stored
// in this process, a notification from a Store other processes share
// (OutboxWatcher), a retry coming due. The connections with work wait in
// one queue; a bounded pool of workers (Config.DeliveryWorkers) takes
// them in turn, one batch each, and a connection with more to send goes
// to the back, so one busy connection cannot starve the others. A
// connection's outbox lease (for replicas) is taken when it has work, not
// renewed while it is idle.
//
// What no signal announces is found by a sweep: one query to the Store
// (OutboxScanner) for the connections with messages waiting. Run sweeps
// when it starts, so that what a previous process left is delivered,
// and, on a Store other processes share, every Config.SweepInterval (1 s
// by default): a message whose notification was lost waits at most that
// long. A Store only this process uses (memstore; sqlstore on SQLite, see
// LocalStore) is swept only at start, since every change to it comes
// through this process. A held long-poll is woken by the same signals and
// sweeps, and re-reads only the connections they name.
//
// Throughput on a database comes from sharing commits. Node.SendBatch
// stores many messages of a connection in one transaction (BatchAppender);
// on sqlstore, Sends made at the same time by different goroutines share
// transactions too (group commit), so a host that sends from many request
// handlers at once pays about one commit per group, not one per message.
// A push or a poll's answer carries up to Config.BatchSize messages, which
// the receiver hands to its Receiver in one transaction per connection
// (AtomicInbox), and the sender drops from its outbox in one statement.
//
// # Lifecycle
//
// Every status change goes through one transition table, Next; a move it
// does not allow is a CodeInvalidTransition error, never a silent no-op.
//
//	Pending --accept--> Active <--activate-- Paused
//	   |                  |  \--pause------>   |
//	   |                  |   \--auth lost--> Inactive --reauthorize--> Active
//	   |--expire/revoke-> Deleted <--delete-- (any but Deleted)
//
// A paused connection can lose its credentials too (Paused --auth lost-->
// Inactive). Paused connections keep their queue on both sides (the peer
// is answered "paused, retry later") and resume where they stopped;
// Deleted ones stay readable with their history, and the peer is told and
// stops; their undelivered messages are dropped. The configuration mode
// (Basic, Visual, Script) is fixed at creation. Every change appends an
// Event to the connection's history, in the same atomic step.
//
// # Lifecycle news
//
// Pause, Activate, Delete and key changes reach the peer as control
// messages: the change and a notice are stored in one atomic step
// (Store.UpdateAndNotify), and the notice travels in the outbox, in order
// with the data messages, acknowledged like them. So the news survives
// lost requests and restarts, the host's call returns once the change is
// stored, and the peer applies each notice once, where it stands in the
// stream, with an event whose actor is "remote" ("paused by the
// partner"). A pause takes effect in order: what was sent before it is
// still delivered, then its notice; what is sent after it waits. A side
// whose partner paused (Connection.RemoteStatus) holds its messages until
// the partner's activate notice arrives, and a paused side takes only the
// notices that lead its peer's queue (a deletion, a key change), no data.
// Notices take sequence numbers, so the numbers a Receiver sees increase
// but may skip.
//
// # Keys
//
// Node.RotateKey makes a fresh instance key and sends each connection's
// peer a key change notice, signed (as every request) by the key the peer
// trusts and carrying the new key's signature as proof. The peer pins the
// new key and keeps accepting the previous one until this side signs with
// the new one, which it does once the peer has acknowledged the notice.
// So messages flow throughout, in every topology. A retired key keeps
// signing for the connections that still use it, however long their peer
// is away, and is dropped only once no connection uses it and its overlap
// for pending invitations has passed. Nodes sharing a Store re-read the
// keys every second, and at once when a request names a key they lack.
//
// A host that fears its partner's key is compromised calls
// Node.RevokePeerKey: the connection becomes Inactive, nothing signed with
// that key is applied, and work waits on both sides. Node.Reauthorize, on
// the public side, issues a re-pairing code that the partner accepts with
// Node.Accept, out of band like an invitation, once the side whose key was
// revoked has rotated it: both sides pin each other's current key on the
// same connections, which keep their settings, history and queues.
//
// # Receivers that write
//
// A Receiver may call the Node with the context it was given, Send a
// reply above all. With a Store that implements AtomicInbox (sqlstore),
// those calls run in the transaction that marks the message delivered: the
// reply is stored if and only if the message is, even across crashes, and
// a single database connection is enough. What those calls would do at
// once (OnEvent, waking the sender) happens after that transaction
// commits. Calls that wait on a peer (Accept of a public initiator's
// code, Sync) fail there with CodeInvalid.
//
// # Embedding
//
// A host supplies a Store (sqlstore on SQLite or PostgreSQL for durable
// data, memstore in tests), a Transport (httptransport over HTTP, tethertest
// in tests) and, when it is public, mounts the transport's handler at its
// Endpoint. Durable stores seal secrets with a Sealer (AES-256-GCM with a
// key ring) before writing them:
//
//	node, err := tether.Open(ctx, tether.Config{
//		Store:     memstore.New(),
//		Transport: httptransport.NewClient(httptransport.ClientConfig{}),
//		Endpoint:  "https://support.example.com/tether",
//		Receiver:  receiver, // gets the messages that arrive
//	})
//	mux.Handle("/tether/", httptransport.NewHandler(node, httptransport.HandlerConfig{}))
//	go node.Run(ctx) // delivery; ends when ctx ends
//	conn, code, err := node.Initiate(ctx, tether.InitiateRequest{
//		Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Engineering",
//		Name: "Support to Engineering",
//	})
//	// show code to the user; on the other side:
//	conn, err = other.Accept(ctx, code, tether.AcceptOptions{})
//	seq, err := other.Send(ctx, conn.ID, []byte(`{"ticket":42}`))
//
// # Errors
//
// Errors are *Error values with a stable Code, the operation that failed
// and a message a user can act on; ErrorCode extracts the code. Every code
// has a sentinel for errors.Is (CodeNotFound and ErrNotFound, CodeClockSkew
// and ErrClockSkew, ...), and when the caller's context ends the error also
// matches context.Canceled or context.DeadlineExceeded. HTTPStatus gives
// the status an HTTP transport answers with. Codes are only ever added.
// No error or log line contains an invitation code, a token or key
// material.
//
//	Code                HTTP  Meaning
//	internal             500  a bug or an unexpected fault
//	invalid              400  input failed validation; the message names the field
//	not_found            404  no such connection, or not visible to the caller
//	already_exists       409  a record with that ID exists
//	conflict             409  the record changed since it was read
//	invalid_transition   409  the status machine does not allow the move
//	mode_fixed           409  the configuration mode cannot change after creation
//	both_private         400  neither side has an endpoint
//	damaged_code         400  an invitation code failed its checksum: a typo
//	malformed            400  a code, token or answer is not well formed
//	bad_signature        401  a signature did not verify
//	unknown_key          401  the key ID is not one this instance knows
//	expired              410  an invitation or token is past its lifetime
//	not_yet_valid        400  an invitation or token is dated in the future
//	already_used         409  the invitation was accepted already
//	revoked              410  the invitation was revoked or its connection deleted
//	url_refused          403  the URL policy forbids contacting that address
//	key_mismatch         401  the peer signed with a key other than the pinned one
//	unauthenticated      401  a request between instances failed authentication
//	unavailable          503  the peer or network could not be reached: retry later
//	protocol             400  the peer sent something this version does not understand
//	too_large            413  a payload or body is over its size limit
//	not_connected        409  the connection is pending or deleted: nothing can be sent
//	paused               503  the peer paused the connection: keep messages, retry later
//	gone                 410  the peer deleted the connection: stop for good
//	clock_skew           400  the instances' clocks differ by more than ClockSkew
//	canceled             503  the caller's context was canceled
//	deadline_exceeded    504  the caller's context passed its deadline
//	org_taken            409  the org is connected to a team already: one org per team
package tether
