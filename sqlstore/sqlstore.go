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
	// Sealer encrypts secrets (instance private keys) before they are
	// written. Required: tether never stores a secret in plaintext.
	Sealer *tether.Sealer
	// Listen, for PostgreSQL, subscribes to notifications on channel and
	// calls fn with each payload until ctx ends. Stores notify on every
	// outbox append, so that a long-poll held by one replica wakes when
	// another stores a message. This package imports no driver, so the
	// host supplies it; see the package documentation for pgx. Without it,
	// replicas notice each other's messages within a second by polling.
	Listen func(ctx context.Context, channel string, fn func(payload string)) error
	// Clock reads the time the Store keeps of its own (when a migration
	// was applied; which consumed invitations are old enough to forget);
	// the system clock when nil. The times of connections, messages and
	// leases come from the Node.
	Clock tether.Clock
}

// notifyChannel is the PostgreSQL channel outbox appends notify on.
const notifyChannel = "tether_outbox"

// Store is a tether.Store on database/sql. It is safe for concurrent use,
// and several processes may share one database.
type Store struct {
	db      *sql.DB
	dialect Dialect
	sealer  *tether.Sealer
	listen  func(ctx context.Context, channel string, fn func(payload string)) error
	q       queries
	clock   tether.Clock
	nonces  atomic.Int64 // calls to RememberNonce, to purge now and then
}

var (
	_ tether.Store         = (*Store)(nil)
	_ tether.AtomicInbox   = (*Store)(nil)
	_ tether.OutboxWatcher = (*Store)(nil)
	_ tether.NonceStore    = (*Store)(nil)
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
	s := &Store{db: db, dialect: dialect, sealer: cfg.Sealer, listen: cfg.Listen, q: newQueries(dialect), clock: cfg.Clock}
	if s.clock == nil {
		s.clock = tether.SystemClock()
	}
	if err := s.migrate(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Dialect returns the store's dialect.
func (s *Store) Dialect() Dialect { return s.dialect }

type txKey struct{}

// Tx returns the transaction a Receiver runs in when the Node delivers a
// message through this Store, or nil outside one. A Receiver that writes its
// effects with it applies each message exactly once: the write and the
// inbox cursor commit together.
func Tx(ctx context.Context) *sql.Tx {
	tx, _ := ctx.Value(txKey{}).(*sql.Tx)
	return tx
}

// inTx runs fn in a transaction and commits it, or rolls it back when fn
// fails. A failing Commit is reported.
func (s *Store) inTx(ctx context.Context, op string, fn func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return translate(op, err)
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return translate(op, err)
	}
	return translate(op, tx.Commit())
}

// queries are the statements in the dialect's placeholder style.
type queries struct {
	loadInstance, createInstance, updateInstance, instanceVersion                                string
	createConn, createOutboxSeq, createInbox, getConn, getConnForUpdate, updateConn, insertEvent string
	useInvitation, purgeInvitations, listEvents, connExists                                      string
	appendOutbox, listOutbox, ackOutbox, inboxCursor, inboxForUpdate, advanceInbox               string
	lease, release, nonce, purgeNonces                                                           string
}

func newQueries(d Dialect) queries {
	r := d.rebind
	q := queries{
		loadInstance:     r(`SELECT id, version, keys FROM tether_instance WHERE singleton = 1`),
		createInstance:   r(`INSERT INTO tether_instance (singleton, id, version, keys) VALUES (1, ?, 1, ?) ON CONFLICT (singleton) DO NOTHING`),
		updateInstance:   r(`UPDATE tether_instance SET id = ?, keys = ?, version = version + 1 WHERE singleton = 1 AND version = ?`),
		instanceVersion:  r(`SELECT version FROM tether_instance WHERE singleton = 1`),
		createConn:       r(`INSERT INTO tether_connections (id, owner, status, kind, version, data) VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT (id) DO NOTHING`),
		createOutboxSeq:  r(`INSERT INTO tether_outbox_seq (connection_id, last) VALUES (?, 0)`),
		createInbox:      r(`INSERT INTO tether_inbox (connection_id, position) VALUES (?, 0)`),
		getConn:          r(`SELECT version, data FROM tether_connections WHERE id = ?`),
		getConnForUpdate: r(`SELECT version, data FROM tether_connections WHERE id = ?` + d.forUpdate()),
		updateConn:       r(`UPDATE tether_connections SET owner = ?, status = ?, kind = ?, version = version + 1, data = ? WHERE id = ? AND version = ?`),
		insertEvent:      r(`INSERT INTO tether_events (connection_id, type, time_ns, actor, detail) VALUES (?, ?, ?, ?, ?)`),
		useInvitation:    r(`INSERT INTO tether_used_invitations (key, expires_ns) VALUES (?, ?) ON CONFLICT (key) DO NOTHING`),
		purgeInvitations: r(`DELETE FROM tether_used_invitations WHERE expires_ns < ? AND key <> ?`),
		listEvents:       r(`SELECT seq, type, time_ns, actor, detail FROM tether_events WHERE connection_id = ? AND seq > ? ORDER BY seq LIMIT ?`),
		connExists:       r(`SELECT 1 FROM tether_connections WHERE id = ?`),
		listOutbox:       r(`SELECT seq, payload, created_ns FROM tether_outbox WHERE connection_id = ? AND seq > ? ORDER BY seq LIMIT ?`),
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
	}
	if d == PostgreSQL {
		// One statement: the UPDATE locks the counter row, so concurrent
		// appends to one connection take numbers one after the other, and
		// the notification goes out when the statement commits.
		q.appendOutbox = r(`WITH next AS (
				UPDATE tether_outbox_seq SET last = last + 1 WHERE connection_id = ? RETURNING connection_id, last
			)
			INSERT INTO tether_outbox (connection_id, seq, payload, created_ns)
			SELECT next.connection_id, next.last, ?, ? FROM next, LATERAL (SELECT pg_notify('` + notifyChannel + `', next.connection_id)) AS n
			RETURNING seq`)
	} else {
		// One statement: the trigger tether_outbox_next moves the counter.
		q.appendOutbox = r(`INSERT INTO tether_outbox (connection_id, seq, payload, created_ns)
			SELECT connection_id, last + 1, ?, ? FROM tether_outbox_seq WHERE connection_id = ?
			RETURNING seq`)
	}
	return q
}

func notFound(op string) error {
	return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no such connection"}
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
	err := s.db.QueryRowContext(ctx, s.q.loadInstance).Scan(&inst.ID, &inst.Version, &sealed)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no instance identity saved"}
	}
	if err != nil {
		return nil, translate(op, err)
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
	if inst.Version == 0 {
		res, err := s.db.ExecContext(ctx, s.q.createInstance, inst.ID, sealed)
		if err != nil {
			return translate(op, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "an instance identity exists"}
		}
		inst.Version = 1
		return nil
	}
	res, err := s.db.ExecContext(ctx, s.q.updateInstance, inst.ID, sealed, inst.Version)
	if err != nil {
		return translate(op, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		var v int64
		if err := s.db.QueryRowContext(ctx, s.q.instanceVersion).Scan(&v); errors.Is(err, sql.ErrNoRows) {
			return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no instance identity saved"}
		}
		return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "instance identity changed since it was read"}
	}
	inst.Version++
	return nil
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
	err := s.inTx(ctx, op, func(tx *sql.Tx) error { return s.create(ctx, tx, op, c, events) })
	if err == nil {
		c.Version = 1
	}
	return err
}

func (s *Store) create(ctx context.Context, tx *sql.Tx, op string, c *tether.Connection, events []tether.Event) error {
	stored := c.Clone()
	stored.Version = 1
	data, err := encodeConn(stored)
	if err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, s.q.createConn, c.ID, c.Owner, string(c.Status), string(c.Kind), data)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "a connection with this ID exists"}
	}
	if _, err := tx.ExecContext(ctx, s.q.createOutboxSeq, c.ID); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, s.q.createInbox, c.ID); err != nil {
		return err
	}
	return s.appendEvents(ctx, tx, c.ID, events)
}

func (s *Store) appendEvents(ctx context.Context, tx *sql.Tx, id string, events []tether.Event) error {
	for _, e := range events {
		if _, err := tx.ExecContext(ctx, s.q.insertEvent, id, string(e.Type), nanos(e.Time), e.Actor, strings.ToValidUTF8(e.Detail, "\uFFFD")); err != nil {
			return err
		}
	}
	return nil
}

// UpdateConnection implements tether.Store.
func (s *Store) UpdateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	const op = "sqlstore: update connection"
	err := s.inTx(ctx, op, func(tx *sql.Tx) error { return s.update(ctx, tx, op, c, events) })
	if err == nil {
		c.Version++
	}
	return err
}

func (s *Store) update(ctx context.Context, tx *sql.Tx, op string, c *tether.Connection, events []tether.Event) error {
	var (
		version int64
		data    []byte
	)
	err := tx.QueryRowContext(ctx, s.q.getConnForUpdate, c.ID).Scan(&version, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return notFound(op)
	}
	if err != nil {
		return err
	}
	if version != c.Version {
		return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "connection changed since it was read"}
	}
	old, err := decodeConn(version, data)
	if err != nil {
		return err
	}
	if err := tether.CheckUpdate(old, c); err != nil {
		return err
	}
	stored := c.Clone()
	stored.Version = version + 1
	if data, err = encodeConn(stored); err != nil {
		return err
	}
	res, err := tx.ExecContext(ctx, s.q.updateConn, c.Owner, string(c.Status), string(c.Kind), data, c.ID, version)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "connection changed since it was read"}
	}
	return s.appendEvents(ctx, tx, c.ID, events)
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
	err := s.inTx(ctx, op, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, s.q.useInvitation, key, nanos(expires))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return &tether.Error{Code: tether.CodeAlreadyUsed, Op: op, Message: "invitation was already used"}
		}
		// Forget invitations a day past their expiry: they can no longer be
		// presented, so their keys need not be kept.
		if _, err := tx.ExecContext(ctx, s.q.purgeInvitations, nanos(s.clock.Now().Add(-24*time.Hour)), key); err != nil {
			return err
		}
		if c.Version == 0 {
			return s.create(ctx, tx, op, c, events)
		}
		return s.update(ctx, tx, op, c, events)
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
	err := s.db.QueryRowContext(ctx, s.q.getConn, id).Scan(&version, &data)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(op)
	}
	if err != nil {
		return nil, translate(op, err)
	}
	return decodeConn(version, data)
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
	q := s.dialect.rebind(`SELECT version, data FROM tether_connections WHERE ` + strings.Join(where, " AND ") + ` ORDER BY id LIMIT ?`)
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, "", translate(op, err)
	}
	defer rows.Close()
	var out []*tether.Connection
	for rows.Next() {
		var (
			version int64
			data    []byte
		)
		if err := rows.Scan(&version, &data); err != nil {
			return nil, "", translate(op, err)
		}
		c, err := decodeConn(version, data)
		if err != nil {
			return nil, "", err
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, "", translate(op, err)
	}
	if len(out) > limit {
		out = out[:limit]
		return out, out[limit-1].ID, nil
	}
	return out, "", nil
}

func (s *Store) exists(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, id string) (bool, error) {
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
	rows, err := s.db.QueryContext(ctx, s.q.listEvents, connectionID, after, tether.EventLimit(limit))
	if err != nil {
		return nil, translate(op, err)
	}
	defer rows.Close()
	var out []tether.Event
	for rows.Next() {
		e := tether.Event{ConnectionID: connectionID}
		var (
			typ string
			t   int64
		)
		if err := rows.Scan(&e.Seq, &typ, &t, &e.Actor, &e.Detail); err != nil {
			return nil, translate(op, err)
		}
		e.Type, e.Time = tether.EventType(typ), fromNanos(t)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, translate(op, err)
	}
	if len(out) == 0 {
		ok, err := s.exists(ctx, s.db, connectionID)
		if err != nil {
			return nil, translate(op, err)
		}
		if !ok {
			return nil, notFound(op)
		}
	}
	return out, nil
}

// Outbox and inbox.

// AppendOutbox implements tether.Store.
func (s *Store) AppendOutbox(ctx context.Context, connectionID string, payload []byte, created time.Time) (int64, error) {
	const op = "sqlstore: append outbox"
	if payload == nil {
		payload = []byte{}
	}
	var (
		seq int64
		err error
	)
	if s.dialect == PostgreSQL {
		err = s.db.QueryRowContext(ctx, s.q.appendOutbox, connectionID, payload, nanos(created)).Scan(&seq)
	} else {
		err = s.db.QueryRowContext(ctx, s.q.appendOutbox, payload, nanos(created), connectionID).Scan(&seq)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return 0, notFound(op)
	}
	return seq, translate(op, err)
}

// ListOutbox implements tether.Store.
func (s *Store) ListOutbox(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Message, error) {
	const op = "sqlstore: list outbox"
	rows, err := s.db.QueryContext(ctx, s.q.listOutbox, connectionID, after, tether.OutboxLimit(limit))
	if err != nil {
		return nil, translate(op, err)
	}
	defer rows.Close()
	var out []tether.Message
	for rows.Next() {
		m := tether.Message{ConnectionID: connectionID}
		var created int64
		if err := rows.Scan(&m.Seq, &m.Payload, &created); err != nil {
			return nil, translate(op, err)
		}
		m.Created = fromNanos(created)
		out = append(out, m)
	}
	return out, translate(op, rows.Err())
}

// AckOutbox implements tether.Store.
func (s *Store) AckOutbox(ctx context.Context, connectionID string, upTo int64) error {
	_, err := s.db.ExecContext(ctx, s.q.ackOutbox, connectionID, upTo)
	return translate("sqlstore: ack outbox", err)
}

// InboxCursor implements tether.Store.
func (s *Store) InboxCursor(ctx context.Context, connectionID string) (int64, error) {
	const op = "sqlstore: inbox cursor"
	var pos int64
	err := s.db.QueryRowContext(ctx, s.q.inboxCursor, connectionID).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, notFound(op)
	}
	return pos, translate(op, err)
}

// AdvanceInbox implements tether.Store.
func (s *Store) AdvanceInbox(ctx context.Context, connectionID string, from, to int64) error {
	const op = "sqlstore: advance inbox"
	if to <= from {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the inbox cursor only moves forward"}
	}
	res, err := s.db.ExecContext(ctx, s.q.advanceInbox, to, connectionID, from)
	if err != nil {
		return translate(op, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		if _, err := s.InboxCursor(ctx, connectionID); err != nil {
			return err
		}
		return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "inbox cursor moved since it was read"}
	}
	return nil
}

// DeliverInbox implements tether.AtomicInbox: fn runs inside the
// transaction that moves the cursor, with the transaction in its context
// (see Tx), each message in a savepoint. On PostgreSQL the inbox row stays
// locked meanwhile, so deliveries to one connection are serialized across
// replicas.
func (s *Store) DeliverInbox(ctx context.Context, connectionID string, from int64, msgs []tether.Message, fn func(ctx context.Context, m tether.Message) error) (int64, error) {
	const op = "sqlstore: deliver"
	cursor := from
	var failed error
	err := s.inTx(ctx, op, func(tx *sql.Tx) error {
		var pos int64
		err := tx.QueryRowContext(ctx, s.q.inboxForUpdate, connectionID).Scan(&pos)
		if errors.Is(err, sql.ErrNoRows) {
			return notFound(op)
		}
		if err != nil {
			return err
		}
		if pos != from {
			return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "inbox cursor moved since it was read"}
		}
		txCtx := context.WithValue(ctx, txKey{}, tx)
		for i, m := range msgs {
			if m.Seq != from+int64(i)+1 {
				return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "messages must follow the cursor without gaps"}
			}
			if _, err := tx.ExecContext(ctx, `SAVEPOINT tether_message`); err != nil {
				return err
			}
			if err := fn(txCtx, m); err != nil {
				failed = err
				if _, err := tx.ExecContext(ctx, `ROLLBACK TO SAVEPOINT tether_message`); err != nil {
					return err
				}
				break
			}
			if _, err := tx.ExecContext(ctx, `RELEASE SAVEPOINT tether_message`); err != nil {
				return err
			}
			cursor = m.Seq
		}
		if cursor == from {
			return nil
		}
		_, err = tx.ExecContext(ctx, s.q.advanceInbox, cursor, connectionID, from)
		return err
	})
	if err != nil {
		return from, err
	}
	return cursor, failed
}

// Leases.

// Lease implements tether.Store.
func (s *Store) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	res, err := s.db.ExecContext(ctx, s.q.lease, name, holder, nanos(until), nanos(now))
	if err != nil {
		return false, translate("sqlstore: lease", err)
	}
	n, err := res.RowsAffected()
	return n == 1, translate("sqlstore: lease", err)
}

// Release implements tether.Store.
func (s *Store) Release(ctx context.Context, name, holder string) error {
	_, err := s.db.ExecContext(ctx, s.q.release, name, holder)
	return translate("sqlstore: release", err)
}

// RememberNonce implements tether.NonceStore. Every 256th call also
// forgets the nonces whose time has passed.
func (s *Store) RememberNonce(ctx context.Context, key string, now, until time.Time) (bool, error) {
	const op = "sqlstore: remember nonce"
	if s.nonces.Add(1)%256 == 0 {
		if _, err := s.db.ExecContext(ctx, s.q.purgeNonces, nanos(now)); err != nil {
			return false, translate(op, err)
		}
	}
	res, err := s.db.ExecContext(ctx, s.q.nonce, key, nanos(until))
	if err != nil {
		return false, translate(op, err)
	}
	n, err := res.RowsAffected()
	return n == 1, translate(op, err)
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
