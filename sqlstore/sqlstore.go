package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/tetherkit/tether"
)

// Config configures a Store.
type Config struct {
	// Sealer encrypts secrets (instance private keys, OAuth states and
	// tokens) before they are written. Required: tether never stores a
	// secret in plaintext.
	Sealer *tether.Sealer
	// Listen, for PostgreSQL, subscribes to notifications on channel and
	// calls fn with each payload until ctx ends. Stores notify on every
	// outbox append, so that a long-poll held by one replica wakes when
	// another stores a message. This package imports no driver, so the
	// host supplies it; see the package documentation for pgx. Without it,
	// replicas notice each other's messages at their next sweep, within
	// tether.Config.SweepInterval.
	Listen func(ctx context.Context, channel string, fn func(payload string)) error
	// Clock reads the time the Store keeps of its own (when a migration
	// was applied; which consumed invitations are old enough to forget);
	// the system clock when nil. The times of connections, messages and
	// leases come from the Node.
	Clock tether.Clock
	// SkipMigrations, when true, makes New leave the schema alone: the host
	// applies the files of MigrationFS (or the SQL of Migrations) with its
	// own tool, before deploying a version of tether that brings new ones.
	// New then only checks that every migration is recorded in
	// tether_migrations, and fails with CodeInvalid, naming the files
	// missing, when one is not.
	SkipMigrations bool
	// SharedSQLite says that several processes open the same SQLite file
	// at once. Without it a SQLite Store is taken to be used by one
	// process (tether.LocalStore), and its Nodes skip what replicas need:
	// the periodic sweep for messages other processes stored, re-reading
	// the instance's keys every second. Ignored on PostgreSQL, which is
	// always treated as shared.
	SharedSQLite bool
}

// notifyChannel is the PostgreSQL channel outbox appends notify on.
const notifyChannel = "tether_outbox"

// Store is a tether.Store on database/sql. It is safe for concurrent use,
// and several processes may share one database.
type Store struct {
	db           *sql.DB
	dialect      Dialect
	sealer       *tether.Sealer
	listen       func(ctx context.Context, channel string, fn func(payload string)) error
	q            queries
	clock        tether.Clock
	sharedSQLite bool
	nonces       atomic.Int64 // calls to RememberNonce, to purge now and then
	states       atomic.Int64 // calls to TakeOAuthState, to purge now and then
	appends      appends      // concurrent appends' shared transactions
	stmts        stmts        // prepared statements, on SQLite
	decoded      decoded      // connections GetConnection decoded
}

var (
	_ tether.Store         = (*Store)(nil)
	_ tether.AtomicInbox   = (*Store)(nil)
	_ tether.OutboxWatcher = (*Store)(nil)
	_ tether.NonceStore    = (*Store)(nil)
	_ tether.OAuthStore    = (*Store)(nil)
	_ tether.FeedStore     = (*Store)(nil)
	_ tether.OutboxScanner = (*Store)(nil)
	_ tether.LocalStore    = (*Store)(nil)
	_ tether.BatchAppender = (*Store)(nil)
)

// New returns a Store on db, after applying the schema migrations it lacks.
// The caller keeps ownership of db and closes it after the Store's last use.
func New(ctx context.Context, db *sql.DB, dialect Dialect, cfg Config) (*Store, error) {
	const op = "sqlstore: new"
	if db == nil {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "a *sql.DB is required"}
	}
	if dialect != SQLite && dialect != PostgreSQL {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "dialect must be sqlstore.SQLite or sqlstore.PostgreSQL"}
	}
	if cfg.Sealer == nil {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "Config.Sealer is required: secrets are never stored in plaintext"}
	}
	s := &Store{db: db, dialect: dialect, sealer: cfg.Sealer, listen: cfg.Listen, q: newQueries(dialect), clock: cfg.Clock, sharedSQLite: cfg.SharedSQLite}
	if s.clock == nil {
		s.clock = tether.SystemClock()
	}
	migrate := s.migrate
	if cfg.SkipMigrations {
		migrate = s.checkMigrated
	}
	if err := migrate(ctx); err != nil {
		return nil, err
	}
	if dialect == SQLite {
		// Statements that run in transactions, where they cannot be
		// prepared on first use.
		for _, q := range []string{s.q.appendOutbox, s.q.reserveSeqs, s.q.insertChunk, s.q.inboxForUpdate, s.q.advanceInbox,
			`SAVEPOINT ` + messageSavepoint, `RELEASE SAVEPOINT ` + messageSavepoint,
			`SAVEPOINT ` + callSavepoint, `RELEASE SAVEPOINT ` + callSavepoint} {
			s.prepare(ctx, q)
		}
	}
	return s, nil
}

// Dialect returns the store's dialect.
func (s *Store) Dialect() Dialect { return s.dialect }

// queries are the statements in the dialect's placeholder style.
type queries struct {
	loadInstance, createInstance, updateInstance, instanceVersion                                string
	createConn, createOutboxSeq, createInbox, getConn, getConnForUpdate, updateConn, insertEvent string
	useInvitation, purgeInvitations, listEvents, connExists                                      string
	appendOutbox, outboxClosed, closeOutbox, dropData                                            string
	reserveSeqs, insertChunk, notifyOutbox                                                       string
	listOutbox, ackOutbox, inboxCursor, inboxForUpdate, advanceInbox                             string
	pendingOutboxes                                                                              string
	lease, release, nonce, purgeNonces                                                           string
	putOAuthState, takeOAuthState, purgeOAuthStates                                              string
	loadOAuthToken, createOAuthToken, updateOAuthToken, deleteOAuthToken                         string
}

func newQueries(d Dialect) queries {
	r := d.rebind
	q := queries{
		loadInstance:     r(`SELECT id, version, keys FROM tether_instance WHERE singleton = 1`),
		createInstance:   r(`INSERT INTO tether_instance (singleton, id, version, keys) VALUES (1, ?, 1, ?) ON CONFLICT (singleton) DO NOTHING`),
		updateInstance:   r(`UPDATE tether_instance SET id = ?, keys = ?, version = version + 1 WHERE singleton = 1 AND version = ?`),
		instanceVersion:  r(`SELECT version FROM tether_instance WHERE singleton = 1`),
		createConn:       r(`INSERT INTO tether_connections (id, owner, status, kind, external_id, version, data) VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT DO NOTHING`),
		createOutboxSeq:  r(`INSERT INTO tether_outbox_seq (connection_id, last, closed) VALUES (?, 0, ?)`),
		createInbox:      r(`INSERT INTO tether_inbox (connection_id, position) VALUES (?, 0)`),
		getConn:          r(`SELECT version, data FROM tether_connections WHERE id = ?`),
		getConnForUpdate: r(`SELECT version, data FROM tether_connections WHERE id = ?` + d.forUpdate()),
		updateConn:       r(`UPDATE tether_connections SET owner = ?, status = ?, kind = ?, external_id = ?, version = version + 1, data = ? WHERE id = ? AND version = ?`),
		insertEvent:      r(`INSERT INTO tether_events (connection_id, type, time_ns, actor, detail) VALUES (?, ?, ?, ?, ?)`),
		useInvitation:    r(`INSERT INTO tether_used_invitations (key, expires_ns) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`),
		purgeInvitations: r(`DELETE FROM tether_used_invitations WHERE expires_ns < ? AND key <> ?`),
		listEvents:       r(`SELECT seq, type, time_ns, actor, detail FROM tether_events WHERE connection_id = ? AND seq > ? ORDER BY seq LIMIT ?`),
		connExists:       r(`SELECT 1 FROM tether_connections WHERE id = ?`),
		outboxClosed:     r(`SELECT closed FROM tether_outbox_seq WHERE connection_id = ?`),
		closeOutbox:      r(`UPDATE tether_outbox_seq SET closed = ? WHERE connection_id = ?`),
		dropData:         r(`DELETE FROM tether_outbox WHERE connection_id = ? AND control = ?`),
		listOutbox:       r(`SELECT seq, payload, created_ns, control FROM tether_outbox WHERE connection_id = ? AND seq > ? ORDER BY seq LIMIT ?`),
		pendingOutboxes:  r(`SELECT DISTINCT connection_id FROM tether_outbox WHERE connection_id > ? ORDER BY connection_id LIMIT ?`),
		ackOutbox:        r(`DELETE FROM tether_outbox WHERE connection_id = ? AND seq <= ?`),
		inboxCursor:      r(`SELECT position FROM tether_inbox WHERE connection_id = ?`),
		inboxForUpdate:   r(`SELECT position FROM tether_inbox WHERE connection_id = ?` + d.forUpdate()),
		advanceInbox:     r(`UPDATE tether_inbox SET position = ? WHERE connection_id = ? AND position = ?`),
		lease: r(`INSERT INTO tether_leases (name, holder, until_ns) VALUES (?, ?, ?)
			ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ns = excluded.until_ns
			WHERE tether_leases.holder = excluded.holder OR tether_leases.until_ns < ?`),
		release:     r(`DELETE FROM tether_leases WHERE name = ? AND holder = ?`),
		nonce:       r(`INSERT INTO tether_nonces (key, until_ns) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`),
		purgeNonces: r(`DELETE FROM tether_nonces WHERE until_ns < ?`),

		putOAuthState:    r(`INSERT INTO tether_oauth_states (key, data, expires_ns) VALUES (?, ?, ?) ON CONFLICT (key) DO NOTHING`),
		takeOAuthState:   r(`DELETE FROM tether_oauth_states WHERE key = ? RETURNING data, expires_ns`),
		purgeOAuthStates: r(`DELETE FROM tether_oauth_states WHERE expires_ns < ?`),
		loadOAuthToken:   r(`SELECT version, data FROM tether_oauth_tokens WHERE connection_id = ?`),
		// Only for a connection that exists; nothing when a token is stored.
		createOAuthToken: r(`INSERT INTO tether_oauth_tokens (connection_id, version, data)
			SELECT id, 1, ? FROM tether_connections WHERE id = ?
			ON CONFLICT (connection_id) DO NOTHING`),
		updateOAuthToken: r(`UPDATE tether_oauth_tokens SET version = version + 1, data = ? WHERE connection_id = ? AND version = ?`),
		deleteOAuthToken: r(`DELETE FROM tether_oauth_tokens WHERE connection_id = ?`),
	}
	// Appending takes the next number from the connection's counter row
	// unless the row is closed (the connection is deleted), in one
	// statement, so the check and the append are one step. Nothing is
	// appended when the row is missing or closed.
	if d == PostgreSQL {
		// An event's tx orders the feed (see ListFeed): the ID of the
		// transaction writing it, or, if higher, the tx of the
		// connection's latest event. Writers of one connection's events
		// hold its row lock (update locks it; create inserts it), so that
		// latest event is committed and visible to this statement, and
		// each connection's events keep their Seq order in the feed even
		// when a transaction that took its ID early writes after one that
		// took a higher ID. The tx is never below the writer's own ID,
		// which is what ListFeed relies on. $1 is the connection ID both
		// times.
		q.insertEvent = `INSERT INTO tether_events (connection_id, type, time_ns, actor, detail, tx)
			SELECT $1, $2, $3, $4, $5, GREATEST(pg_current_xact_id(),
				(SELECT tx FROM tether_events WHERE connection_id = $1 ORDER BY seq DESC LIMIT 1))`
		// The UPDATE locks the counter row, so concurrent appends to one
		// connection take numbers one after the other. A deletion updates
		// that row too: an append waiting for it re-reads the row (READ
		// COMMITTED re-evaluates the WHERE on the new version) and finds
		// it closed. The notification goes out when the statement, or the
		// transaction it is part of, commits.
		q.appendOutbox = r(`WITH next AS (
				UPDATE tether_outbox_seq SET last = last + 1 WHERE connection_id = ? AND NOT closed RETURNING connection_id, last
			)
			INSERT INTO tether_outbox (connection_id, seq, payload, created_ns, control)
			SELECT next.connection_id, next.last, ?, ?, ? FROM next, LATERAL (SELECT pg_notify('` + notifyChannel + `', next.connection_id)) AS n
			RETURNING seq`)
		// A batch takes its numbers in one step, holding the counter
		// row's lock to the end of its transaction; it returns the last.
		q.reserveSeqs = r(`UPDATE tether_outbox_seq SET last = last + ? WHERE connection_id = ? AND NOT closed RETURNING last`)
		q.notifyOutbox = r(`SELECT pg_notify('` + notifyChannel + `', ?)`)
	} else {
		// A batch reads the last number in its transaction, which writes
		// next: SQLite runs one writer at a time, and the trigger moves
		// the counter on with each row.
		q.reserveSeqs = r(`SELECT last + ? FROM tether_outbox_seq WHERE connection_id = ? AND NOT closed`)
		// The trigger tether_outbox_next moves the counter; SQLite runs one
		// writer at a time.
		q.appendOutbox = r(`INSERT INTO tether_outbox (connection_id, seq, payload, created_ns, control)
			SELECT connection_id, last + 1, ?, ?, ? FROM tether_outbox_seq WHERE connection_id = ? AND NOT closed
			RETURNING seq`)
	}
	q.insertChunk = insertRows(d, insertChunk)
	return q
}

// insertChunk is how many messages of a batch one INSERT stores.
const insertChunk = 100

// insertRows returns an INSERT of n outbox rows of data messages, each
// given as connection ID, number, payload and creation time.
func insertRows(d Dialect, n int) string {
	var b strings.Builder
	b.WriteString(`INSERT INTO tether_outbox (connection_id, seq, payload, created_ns, control) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("(?, ?, ?, ?, FALSE)")
	}
	return d.rebind(b.String())
}

func notFound(op string) error {
	return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no such connection"}
}

// orgTaken reports a write refused by the partial unique index
// tether_connections_org_external_id: another connection that is not
// deleted links to the same org. cause is the driver's error, if any.
func orgTaken(op string, cause error) error {
	return &tether.Error{Code: tether.CodeOrgTaken, Op: op, Message: "the org is connected to a team already: one org per team", Err: cause}
}

// Instance identity.

// storedKey is an instance key as it is sealed.
type storedKey struct {
	ID      string `json:"id"`
	Private []byte `json:"private"`
	Created int64  `json:"created"`
	Retired int64  `json:"retired,omitempty"`
	Expires int64  `json:"expires,omitempty"`
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func instanceContext(id string) []byte { return []byte("tether/instance/" + id) }

// LoadInstance implements tether.Store.
func (s *Store) LoadInstance(ctx context.Context) (*tether.Instance, error) {
	const op = "sqlstore: load instance"
	var (
		inst   tether.Instance
		sealed []byte
	)
	err := s.read(ctx, op, func(q querier) error {
		err := q.QueryRowContext(ctx, s.q.loadInstance).Scan(&inst.ID, &inst.Version, &sealed)
		if errors.Is(err, sql.ErrNoRows) {
			return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no instance identity saved"}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	plain, err := s.sealer.Open(sealed, instanceContext(inst.ID))
	if err != nil {
		return nil, translate(op, err)
	}
	var keys []storedKey
	if err := json.Unmarshal(plain, &keys); err != nil {
		return nil, &tether.Error{Code: tether.CodeInternal, Op: op, Message: "stored keys do not decode"}
	}
	for _, k := range keys {
		inst.Keys = append(inst.Keys, tether.InstanceKey{
			ID: k.ID, Private: k.Private, Created: fromNanos(k.Created), Retired: fromNanos(k.Retired), Expires: fromNanos(k.Expires),
		})
	}
	return &inst, nil
}

// SaveInstance implements tether.Store. The keys are sealed, bound to the
// instance ID.
func (s *Store) SaveInstance(ctx context.Context, inst *tether.Instance) error {
	const op = "sqlstore: save instance"
	keys := make([]storedKey, len(inst.Keys))
	for i, k := range inst.Keys {
		keys[i] = storedKey{ID: k.ID, Private: k.Private, Created: nanos(k.Created), Retired: nanos(k.Retired), Expires: nanos(k.Expires)}
	}
	plain, err := json.Marshal(keys)
	if err != nil {
		return translate(op, err)
	}
	sealed, err := s.sealer.Seal(plain, instanceContext(inst.ID))
	clear(plain)
	if err != nil {
		return err
	}
	err = s.write(ctx, op, func(q querier) error {
		if inst.Version == 0 {
			res, err := q.ExecContext(ctx, s.q.createInstance, inst.ID, sealed)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "an instance identity exists"}
			}
			return nil
		}
		res, err := q.ExecContext(ctx, s.q.updateInstance, inst.ID, sealed, inst.Version)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var v int64
			if err := q.QueryRowContext(ctx, s.q.instanceVersion).Scan(&v); errors.Is(err, sql.ErrNoRows) {
				return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no instance identity saved"}
			}
			return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "instance identity changed since it was read"}
		}
		return nil
	})
	if err == nil {
		inst.Version++
	}
	return err
}

// Connections.

func encodeConn(c *tether.Connection) ([]byte, error) { return json.Marshal(c) }

func decodeConn(version int64, data []byte) (*tether.Connection, error) {
	var c tether.Connection
	if err := json.Unmarshal(data, &c); err != nil {
		return nil, &tether.Error{Code: tether.CodeInternal, Op: "sqlstore: decode connection", Message: "stored connection does not decode"}
	}
	c.Version = version
	return &c, nil
}

// CreateConnection implements tether.Store.
func (s *Store) CreateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	const op = "sqlstore: create connection"
	if err := c.Validate(); err != nil {
		return err
	}
	err := s.inTx(ctx, op, func(q querier) error { return s.create(ctx, q, op, c, events) })
	if err == nil {
		c.Version = 1
	}
	return err
}

func (s *Store) create(ctx context.Context, q querier, op string, c *tether.Connection, events []tether.Event) error {
	stored := c.Clone()
	stored.Version = 1
	data, err := encodeConn(stored)
	if err != nil {
		return err
	}
	res, err := q.ExecContext(ctx, s.q.createConn, c.ID, c.Owner, string(c.Status), string(c.Kind), c.ExternalID, data)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		// createConn has no conflict target: a duplicate ID and a taken
		// org (the partial unique index tether_connections_org_external_id)
		// both insert nothing. Tell them apart.
		exists, err := s.exists(ctx, q, c.ID)
		switch {
		case err != nil:
			return err
		case exists:
			return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "a connection with this ID exists"}
		}
		return orgTaken(op, nil)
	}
	// A connection created deleted has its outbox closed from the start.
	if _, err := q.ExecContext(ctx, s.q.createOutboxSeq, c.ID, c.Status == tether.StatusDeleted); err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, s.q.createInbox, c.ID); err != nil {
		return err
	}
	return s.appendEvents(ctx, q, c.ID, events)
}

func (s *Store) appendEvents(ctx context.Context, q querier, id string, events []tether.Event) error {
	for _, e := range events {
		if _, err := q.ExecContext(ctx, s.q.insertEvent, id, string(e.Type), nanos(e.Time), e.Actor, strings.ToValidUTF8(e.Detail, "\uFFFD")); err != nil {
			return err
		}
	}
	return nil
}

// UpdateConnection implements tether.Store.
func (s *Store) UpdateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	const op = "sqlstore: update connection"
	err := s.inTx(ctx, op, func(q querier) error {
		_, err := s.update(ctx, q, op, c, events, nil)
		return err
	})
	if err == nil {
		c.Version++
	}
	return err
}

// UpdateAndNotify implements tether.Store. The notice's Created is
// c.UpdatedAt; on PostgreSQL its append notifies like AppendOutbox's, when
// the transaction commits. On a connection deleted before, whose outbox is
// closed, it fails with CodeNotConnected.
func (s *Store) UpdateAndNotify(ctx context.Context, c *tether.Connection, notice []byte, events ...tether.Event) (int64, error) {
	const op = "sqlstore: update and notify"
	if notice == nil {
		notice = []byte{}
	}
	var seq int64
	err := s.inTx(ctx, op, func(q querier) error {
		var err error
		seq, err = s.update(ctx, q, op, c, events, notice)
		return err
	})
	if err != nil {
		return 0, err
	}
	c.Version++
	c.NoticeSeq = seq
	return seq, nil
}

// update replaces c as UpdateConnection does, closing the outbox when c
// moves to StatusDeleted. With a notice (non-nil) it also appends it to
// the outbox as a control message, records its number as the stored
// NoticeSeq and returns it.
func (s *Store) update(ctx context.Context, q querier, op string, c *tether.Connection, events []tether.Event, notice []byte) (int64, error) {
	var (
		version int64
		data    []byte
	)
	err := q.QueryRowContext(ctx, s.q.getConnForUpdate, c.ID).Scan(&version, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, notFound(op)
	}
	if err != nil {
		return 0, err
	}
	if version != c.Version {
		return 0, &tether.Error{Code: tether.CodeConflict, Op: op, Message: "connection changed since it was read"}
	}
	old, err := decodeConn(version, data)
	if err != nil {
		return 0, err
	}
	if err := tether.CheckUpdate(old, c); err != nil {
		return 0, err
	}
	stored := c.Clone()
	stored.Version = version + 1
	var seq int64
	if notice != nil {
		if seq, err = s.appendMessage(ctx, q, op, c.ID, notice, c.UpdatedAt, true); err != nil {
			return 0, err
		}
		stored.NoticeSeq = seq
	}
	if c.Status == tether.StatusDeleted && old.Status != tether.StatusDeleted {
		// Close first: on PostgreSQL that waits for appends holding the
		// counter row, so the DELETE's snapshot has their messages.
		if _, err := q.ExecContext(ctx, s.q.closeOutbox, true, c.ID); err != nil {
			return 0, err
		}
		if _, err := q.ExecContext(ctx, s.q.dropData, c.ID, false); err != nil {
			return 0, err
		}
	}
	if data, err = encodeConn(stored); err != nil {
		return 0, err
	}
	res, err := q.ExecContext(ctx, s.q.updateConn, c.Owner, string(c.Status), string(c.Kind), c.ExternalID, data, c.ID, version)
	if err != nil {
		// The row's ID does not change, so the only unique constraint
		// this statement can break is the org's.
		if tether.ErrorCode(translate(op, err)) == tether.CodeAlreadyExists {
			return 0, orgTaken(op, err)
		}
		return 0, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return 0, &tether.Error{Code: tether.CodeConflict, Op: op, Message: "connection changed since it was read"}
	}
	return seq, s.appendEvents(ctx, q, c.ID, events)
}

// ConsumeInvitation implements tether.Store.
func (s *Store) ConsumeInvitation(ctx context.Context, key string, expires time.Time, c *tether.Connection, events ...tether.Event) error {
	const op = "sqlstore: consume invitation"
	if key == "" || len(key) > tether.MaxInvitationKeyLen {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "invitation key must be 1-200 bytes"}
	}
	if c.Version == 0 {
		if err := c.Validate(); err != nil {
			return err
		}
	}
	err := s.inTx(ctx, op, func(q querier) error {
		res, err := q.ExecContext(ctx, s.q.useInvitation, key, nanos(expires))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return &tether.Error{Code: tether.CodeAlreadyUsed, Op: op, Message: "invitation was already used"}
		}
		// Forget invitations a day past their expiry: they can no longer be
		// presented, so their keys need not be kept.
		if _, err := q.ExecContext(ctx, s.q.purgeInvitations, nanos(s.clock.Now().Add(-24*time.Hour)), key); err != nil {
			return err
		}
		if c.Version == 0 {
			return s.create(ctx, q, op, c, events)
		}
		_, err = s.update(ctx, q, op, c, events, nil)
		return err
	})
	if err == nil {
		c.Version++
	}
	return err
}

// GetConnection implements tether.Store.
func (s *Store) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	const op = "sqlstore: get connection"
	var (
		version int64
		data    []byte
	)
	err := s.read(ctx, op, func(q querier) error {
		err := q.QueryRowContext(ctx, s.q.getConn, id).Scan(&version, &data)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound(op)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if c := s.decoded.get(id, data); c != nil {
		c.Version = version
		return c, nil
	}
	c, err := decodeConn(version, data)
	if err == nil {
		s.decoded.put(id, data, c)
	}
	return c, err
}

// ListConnections implements tether.Store.
func (s *Store) ListConnections(ctx context.Context, opts tether.ListOptions) ([]*tether.Connection, string, error) {
	const op = "sqlstore: list connections"
	limit := opts.PageLimit()
	var (
		where = []string{"id > ?"}
		args  = []any{opts.After}
	)
	for _, f := range []struct{ col, val string }{{"owner", opts.Owner}, {"status", string(opts.Status)}, {"kind", string(opts.Kind)}} {
		if f.val != "" {
			where = append(where, f.col+" = ?")
			args = append(args, f.val)
		}
	}
	args = append(args, limit+1)
	query := s.dialect.rebind(`SELECT version, data FROM tether_connections WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id LIMIT ?`)
	var out []*tether.Connection
	err := s.read(ctx, op, func(q querier) error {
		rows, err := q.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				version int64
				data    []byte
			)
			if err := rows.Scan(&version, &data); err != nil {
				return err
			}
			c, err := decodeConn(version, data)
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, "", err
	}
	if len(out) > limit {
		out = out[:limit]
		return out, out[limit-1].ID, nil
	}
	return out, "", nil
}

func (s *Store) exists(ctx context.Context, q querier, id string) (bool, error) {
	var one int
	err := q.QueryRowContext(ctx, s.q.connExists, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// ListEvents implements tether.Store.
func (s *Store) ListEvents(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Event, error) {
	const op = "sqlstore: list events"
	var out []tether.Event
	err := s.read(ctx, op, func(q querier) error {
		rows, err := q.QueryContext(ctx, s.q.listEvents, connectionID, after, tether.EventLimit(limit))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			e := tether.Event{ConnectionID: connectionID}
			var (
				typ string
				t   int64
			)
			if err := rows.Scan(&e.Seq, &typ, &t, &e.Actor, &e.Detail); err != nil {
				return err
			}
			e.Type, e.Time = tether.EventType(typ), fromNanos(t)
			out = append(out, e)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if len(out) > 0 {
			return nil
		}
		ok, err := s.exists(ctx, q, connectionID)
		if err == nil && !ok {
			err = notFound(op)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Outbox and inbox.

// AppendOutbox implements tether.Store, in a transaction that concurrent
// appends may share.
func (s *Store) AppendOutbox(ctx context.Context, connectionID string, payload []byte, created time.Time) (int64, error) {
	return s.appendOutbox(ctx, "sqlstore: append outbox", connectionID, [][]byte{payload}, created)
}

// AppendOutboxBatch implements tether.BatchAppender, in one transaction
// that concurrent appends may share.
func (s *Store) AppendOutboxBatch(ctx context.Context, connectionID string, payloads [][]byte, created time.Time) (int64, error) {
	const op = "sqlstore: append outbox batch"
	if len(payloads) == 0 {
		return 0, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "no payloads"}
	}
	return s.appendOutbox(ctx, op, connectionID, payloads, created)
}

// appendOutbox stores payloads on connection id's outbox and returns the
// first one's number: in a transaction shared with concurrent appends, or
// in a savepoint of the delivery ctx belongs to.
func (s *Store) appendOutbox(ctx context.Context, op, id string, payloads [][]byte, created time.Time) (int64, error) {
	if s.joined(ctx) == nil {
		return s.appendGroup(ctx, op, id, payloads, created)
	}
	var first int64
	err := s.inTx(ctx, op, func(q querier) error {
		var err error
		first, err = s.appendAll(ctx, q, op, id, payloads, []time.Time{created})
		return err
	})
	return first, err
}

// appendMessage appends a message to an open outbox and returns its
// number: CodeNotFound when there is no such connection, CodeNotConnected
// when its outbox is closed.
func (s *Store) appendMessage(ctx context.Context, q querier, op, id string, payload []byte, created time.Time, control bool) (int64, error) {
	if payload == nil {
		payload = []byte{}
	}
	var (
		seq int64
		err error
	)
	if s.dialect == PostgreSQL {
		err = q.QueryRowContext(ctx, s.q.appendOutbox, id, payload, nanos(created), control).Scan(&seq)
	} else {
		err = q.QueryRowContext(ctx, s.q.appendOutbox, payload, nanos(created), control, id).Scan(&seq)
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return seq, err
	}
	return 0, s.refused(ctx, q, op, id)
}

// refused returns why nothing was appended to connection id's outbox: the
// counter row was missing (CodeNotFound) or closed (CodeNotConnected)
// then. A closed row stays closed; one that is open now was created since.
func (s *Store) refused(ctx context.Context, q querier, op, id string) error {
	var closed bool
	err := q.QueryRowContext(ctx, s.q.outboxClosed, id).Scan(&closed)
	switch {
	case errors.Is(err, sql.ErrNoRows), err == nil && !closed:
		return notFound(op)
	case err != nil:
		return err
	}
	return &tether.Error{Code: tether.CodeNotConnected, Op: op, Message: "the connection is deleted"}
}

// ListOutbox implements tether.Store.
func (s *Store) ListOutbox(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Message, error) {
	const op = "sqlstore: list outbox"
	var out []tether.Message
	err := s.read(ctx, op, func(q querier) error {
		rows, err := q.QueryContext(ctx, s.q.listOutbox, connectionID, after, tether.OutboxLimit(limit))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			m := tether.Message{ConnectionID: connectionID}
			var created int64
			if err := rows.Scan(&m.Seq, &m.Payload, &created, &m.Control); err != nil {
				return err
			}
			m.Created = fromNanos(created)
			out = append(out, m)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// PendingOutboxes implements tether.OutboxScanner: one query on the
// outbox's primary key, whose rows are only the unacknowledged messages.
func (s *Store) PendingOutboxes(ctx context.Context, after string, limit int) ([]string, error) {
	const op = "sqlstore: pending outboxes"
	var ids []string
	err := s.read(ctx, op, func(q querier) error {
		rows, err := q.QueryContext(ctx, s.q.pendingOutboxes, after, tether.OutboxLimit(limit))
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// Local implements tether.LocalStore: a SQLite Store is taken to be used
// by one process, unless Config.SharedSQLite says several open the file.
// A PostgreSQL Store may always be shared by replicas.
func (s *Store) Local() bool { return s.dialect == SQLite && !s.sharedSQLite }

// AckOutbox implements tether.Store.
func (s *Store) AckOutbox(ctx context.Context, connectionID string, upTo int64) error {
	return s.write(ctx, "sqlstore: ack outbox", func(q querier) error {
		_, err := q.ExecContext(ctx, s.q.ackOutbox, connectionID, upTo)
		return err
	})
}

// InboxCursor implements tether.Store.
func (s *Store) InboxCursor(ctx context.Context, connectionID string) (int64, error) {
	const op = "sqlstore: inbox cursor"
	var pos int64
	err := s.read(ctx, op, func(q querier) error { return s.inboxCursor(ctx, q, op, connectionID, &pos) })
	return pos, err
}

func (s *Store) inboxCursor(ctx context.Context, q querier, op, connectionID string, pos *int64) error {
	err := q.QueryRowContext(ctx, s.q.inboxCursor, connectionID).Scan(pos)
	if errors.Is(err, sql.ErrNoRows) {
		return notFound(op)
	}
	return err
}

// AdvanceInbox implements tether.Store.
func (s *Store) AdvanceInbox(ctx context.Context, connectionID string, from, to int64) error {
	const op = "sqlstore: advance inbox"
	if to <= from {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the inbox cursor only moves forward"}
	}
	return s.write(ctx, op, func(q querier) error {
		res, err := q.ExecContext(ctx, s.q.advanceInbox, to, connectionID, from)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			var pos int64
			if err := s.inboxCursor(ctx, q, op, connectionID, &pos); err != nil {
				return err
			}
			return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "inbox cursor moved since it was read"}
		}
		return nil
	})
}

// DeliverInbox implements tether.AtomicInbox: fn runs inside the
// transaction that moves the cursor, with the transaction in its context
// (see Tx), each message in a savepoint. The Store's methods called with
// that context run in the transaction too, each in a savepoint of its
// own, so that one that fails undoes only its own writes. On PostgreSQL
// the inbox row stays locked meanwhile, so deliveries to one connection
// are serialized across replicas.
//
// DeliverInbox itself called with such a context fails with CodeInvalid:
// deliveries do not nest.
func (s *Store) DeliverInbox(ctx context.Context, connectionID string, from int64, msgs []tether.Message, fn func(ctx context.Context, m tether.Message) error) (int64, error) {
	const op = "sqlstore: deliver"
	if s.joined(ctx) != nil {
		return from, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "cannot deliver inside another delivery's transaction"}
	}
	cursor := from
	var failed error
	err := s.inTx(ctx, op, func(q querier) error {
		tx := rawTx(q)
		var pos int64
		err := q.QueryRowContext(ctx, s.q.inboxForUpdate, connectionID).Scan(&pos)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound(op)
		}
		if err != nil {
			return err
		}
		if pos != from {
			return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "inbox cursor moved since it was read"}
		}
		txCtx := context.WithValue(ctx, txKey{}, &delivery{db: s.db, tx: tx, sem: make(chan struct{}, 1)})
		for i, m := range msgs {
			if m.Seq <= from || i > 0 && m.Seq <= msgs[i-1].Seq {
				return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "messages must follow the cursor in ascending order"}
			}
			if _, err := q.ExecContext(ctx, `SAVEPOINT `+messageSavepoint); err != nil {
				return err
			}
			if err := fn(txCtx, m); err != nil {
				failed = err
				if _, err := q.ExecContext(ctx, `ROLLBACK TO SAVEPOINT `+messageSavepoint); err != nil {
					return err
				}
				break
			}
			if _, err := q.ExecContext(ctx, `RELEASE SAVEPOINT `+messageSavepoint); err != nil {
				return err
			}
			cursor = m.Seq
		}
		if cursor == from {
			return nil
		}
		res, err := q.ExecContext(ctx, s.q.advanceInbox, cursor, connectionID, from)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "inbox cursor moved during the delivery"}
		}
		return nil
	})
	if err != nil {
		return from, err
	}
	return cursor, failed
}

// Leases.

// Lease implements tether.Store.
func (s *Store) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	var n int64
	err := s.write(ctx, "sqlstore: lease", func(q querier) error {
		res, err := q.ExecContext(ctx, s.q.lease, name, holder, nanos(until), nanos(now))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n == 1, err
}

// Release implements tether.Store.
func (s *Store) Release(ctx context.Context, name, holder string) error {
	return s.write(ctx, "sqlstore: release", func(q querier) error {
		_, err := q.ExecContext(ctx, s.q.release, name, holder)
		return err
	})
}

// RememberNonce implements tether.NonceStore. Every 256th call also
// forgets the nonces whose time has passed.
func (s *Store) RememberNonce(ctx context.Context, key string, now, until time.Time) (bool, error) {
	purge := s.nonces.Add(1)%256 == 0
	var n int64
	err := s.write(ctx, "sqlstore: remember nonce", func(q querier) error {
		if purge {
			if _, err := q.ExecContext(ctx, s.q.purgeNonces, nanos(now)); err != nil {
				return err
			}
		}
		res, err := q.ExecContext(ctx, s.q.nonce, key, nanos(until))
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	return n == 1, err
}

// WatchOutbox implements tether.OutboxWatcher. With Config.Listen on
// PostgreSQL it reports every append by any process; otherwise it only
// waits for ctx, and Nodes fall back to re-reading the store every second.
func (s *Store) WatchOutbox(ctx context.Context, fn func(connectionID string)) error {
	if s.dialect == PostgreSQL && s.listen != nil {
		return s.listen(ctx, notifyChannel, fn)
	}
	<-ctx.Done()
	return ctx.Err()
}
