package main

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
)

// backend is the public node's Store, counted, with the in-process peer's
// Store and what it takes to close both.
type backend struct {
	kind  string
	store tether.Store // what the public node uses: counts its calls
	raw   tether.Store // the same Store, not counted
	calls *calls
	peer  tether.Store // the in-process public peer's Store
	// persistent is true when the data outlive the process (a SQLite file
	// or PostgreSQL schema the user may -reuse).
	persistent bool
	pgAdmin    *sql.DB // PostgreSQL only: reads the server's statistics
	closers    []func()
}

func (b *backend) close() {
	for i := len(b.closers) - 1; i >= 0; i-- {
		b.closers[i]()
	}
}

// openBackend opens the Stores that o names.
func openBackend(ctx context.Context, o *options, stderr func(string, ...any)) (b *backend, err error) {
	b = &backend{kind: o.store, calls: newCalls()}
	defer func() {
		if err != nil {
			b.close()
		}
	}()
	switch o.store {
	case "memstore":
		if o.reuse {
			return nil, errors.New("-reuse needs -store sqlite or postgres: memstore keeps nothing")
		}
		raw := memstore.New()
		b.raw, b.store, b.peer = raw, countedMemstore{raw, b.calls}, memstore.New()
		return b, nil
	case "sqlite":
		return b, openSQLiteBackend(ctx, o, b, stderr)
	case "postgres":
		return b, openPostgresBackend(ctx, o, b, stderr)
	}
	return nil, fmt.Errorf("unknown store %q: memstore, sqlite or postgres", o.store)
}

func openSQLiteBackend(ctx context.Context, o *options, b *backend, stderr func(string, ...any)) error {
	path, peerPath := o.sqlite, o.peerSQLite
	if path == "" {
		dir, err := os.MkdirTemp("", "tether-scale-")
		if err != nil {
			return err
		}
		b.closers = append(b.closers, func() { os.RemoveAll(dir) })
		path = filepath.Join(dir, "scale.db")
	} else {
		b.persistent = true
	}
	if peerPath == "" {
		peerPath = path + "-peer"
	}
	if !o.reuse {
		for _, p := range []string{path, peerPath} {
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("%s exists: pass -reuse to measure with its connections, or remove it", p)
			}
		}
	}
	raw, err := openSQLite(ctx, path, b)
	if err != nil {
		return err
	}
	b.raw, b.store = raw, countedSQL{raw, b.calls}
	stderr("sqlite: %s (peer %s)", path, peerPath)
	b.peer, err = openSQLite(ctx, peerPath, b)
	return err
}

// openSQLite opens a SQLite file as sqlstore's documentation says.
func openSQLite(ctx context.Context, path string, b *backend) (*sqlstore.Store, error) {
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"+
		"&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate")
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1) // SQLite has one writer
	b.closers = append(b.closers, func() { db.Close() })
	s, err := sqlstore.New(ctx, db, sqlstore.SQLite, sqlstore.Config{Sealer: sealer()})
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return s, nil
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// openPostgresBackend keeps the public node's data in a schema of its own
// for each setup, tether_scale_<conns>_<private> unless -schema names
// another: dropped and created afresh, or kept with -reuse. The peer
// keeps its data in a SQLite file, so that the server's figures are the
// public node's alone.
func openPostgresBackend(ctx context.Context, o *options, b *backend, stderr func(string, ...any)) error {
	schema := o.schema
	if schema == "" {
		schema = fmt.Sprintf("tether_scale_%d_%d", o.conns, o.private)
	}
	if !schemaName.MatchString(schema) {
		return fmt.Errorf("schema %q: use lower-case letters, digits and _", schema)
	}
	peerPath := o.peerSQLite
	if peerPath == "" {
		peerPath = filepath.Join(os.TempDir(), "tether-scale-"+schema+"-peer.db")
	}
	admin, err := sql.Open("pgx", o.postgres)
	if err != nil {
		return err
	}
	b.closers = append(b.closers, func() { admin.Close() })
	admin.SetMaxOpenConns(1)
	b.pgAdmin = admin
	ddl := `CREATE SCHEMA IF NOT EXISTS ` + schema
	if !o.reuse {
		ddl = `DROP SCHEMA IF EXISTS ` + schema + ` CASCADE; CREATE SCHEMA ` + schema
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if err := os.Remove(peerPath + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
	}
	if _, err := admin.ExecContext(ctx, ddl); err != nil {
		return fmt.Errorf("preparing schema %s: %w", schema, err)
	}
	u, err := url.Parse(o.postgres)
	if err != nil {
		return err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	dsn := u.String()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return err
	}
	b.closers = append(b.closers, func() { db.Close() })
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(20)
	db.SetConnMaxLifetime(30 * time.Minute)
	raw, err := sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{Sealer: sealer(), Listen: pgListen(dsn)})
	if err != nil {
		return err
	}
	b.raw, b.store, b.persistent = raw, countedSQL{raw, b.calls}, true
	stderr("postgres: schema %s (peer %s)", schema, peerPath)
	b.peer, err = openSQLite(ctx, peerPath, b)
	return err
}

// pgListen is sqlstore.Config.Listen with pgx: one connection of its own
// waits for notifications.
func pgListen(dsn string) func(ctx context.Context, channel string, fn func(string)) error {
	return func(ctx context.Context, channel string, fn func(string)) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			return err
		}
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				return err
			}
			fn(n.Payload)
		}
	}
}

// sealer seals the instance keys in the durable stores. The data of a
// measurement are throwaway, so the key is a constant: a file or schema
// kept with -reuse opens again in the next run.
func sealer() *tether.Sealer {
	key := sha256.Sum256([]byte("tether scale measurement"))
	s, err := tether.NewSealer("scale", map[string][]byte{"scale": key[:]})
	if err != nil {
		panic(err) // a constant 32-byte key is always valid
	}
	return s
}

// method names a counted Store method.
type method int

const (
	mLoadInstance method = iota
	mSaveInstance
	mCreateConnection
	mUpdateConnection
	mUpdateAndNotify
	mConsumeInvitation
	mGetConnection
	mListConnections
	mListEvents
	mAppendOutbox
	mListOutbox
	mAckOutbox
	mInboxCursor
	mAdvanceInbox
	mLease
	mRelease
	mRememberNonce
	mListFeed
	mDeliverInbox
	mWatchOutbox
	mPendingOutboxes
	numMethods
)

var methodNames = [numMethods]string{
	"LoadInstance", "SaveInstance", "CreateConnection", "UpdateConnection", "UpdateAndNotify",
	"ConsumeInvitation", "GetConnection", "ListConnections", "ListEvents", "AppendOutbox",
	"ListOutbox", "AckOutbox", "InboxCursor", "AdvanceInbox", "Lease", "Release",
	"RememberNonce", "ListFeed", "DeliverInbox", "WatchOutbox", "PendingOutboxes",
}

// calls counts the calls to a Store, by method.
type calls struct{ n [numMethods]atomic.Int64 }

func newCalls() *calls { return &calls{} }

func (c *calls) add(m method) { c.n[m].Add(1) }

// snapshot returns the counts so far.
func (c *calls) snapshot() [numMethods]int64 {
	var s [numMethods]int64
	for i := range s {
		s[i] = c.n[i].Load()
	}
	return s
}

// methodRate is one method's calls per second over a window.
type methodRate struct {
	name string
	rate float64
}

// rates returns the total calls per second between two snapshots and the
// methods called, busiest first.
func rates(before, after [numMethods]int64, seconds float64) (float64, []methodRate) {
	var total int64
	var by []methodRate
	for i := range before {
		d := after[i] - before[i]
		total += d
		if d > 0 {
			by = append(by, methodRate{methodNames[i], float64(d) / seconds})
		}
	}
	sort.Slice(by, func(i, j int) bool { return by[i].rate > by[j].rate })
	return float64(total) / seconds, by
}

// countedMemstore counts the calls to a memstore. The Store is embedded,
// so every other method it has stays promoted; the methods of
// tether.Store and of the optional interfaces it implements are counted.
type countedMemstore struct {
	*memstore.Store
	calls *calls
}

var (
	_ tether.Store      = countedMemstore{}
	_ tether.NonceStore = countedMemstore{}
	_ tether.FeedStore  = countedMemstore{}
)

func (s countedMemstore) LoadInstance(ctx context.Context) (*tether.Instance, error) {
	s.calls.add(mLoadInstance)
	return s.Store.LoadInstance(ctx)
}

func (s countedMemstore) SaveInstance(ctx context.Context, inst *tether.Instance) error {
	s.calls.add(mSaveInstance)
	return s.Store.SaveInstance(ctx, inst)
}

func (s countedMemstore) CreateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	s.calls.add(mCreateConnection)
	return s.Store.CreateConnection(ctx, c, events...)
}

func (s countedMemstore) UpdateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	s.calls.add(mUpdateConnection)
	return s.Store.UpdateConnection(ctx, c, events...)
}

func (s countedMemstore) UpdateAndNotify(ctx context.Context, c *tether.Connection, notice []byte, events ...tether.Event) (int64, error) {
	s.calls.add(mUpdateAndNotify)
	return s.Store.UpdateAndNotify(ctx, c, notice, events...)
}

func (s countedMemstore) ConsumeInvitation(ctx context.Context, key string, expires time.Time, c *tether.Connection, events ...tether.Event) error {
	s.calls.add(mConsumeInvitation)
	return s.Store.ConsumeInvitation(ctx, key, expires, c, events...)
}

func (s countedMemstore) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	s.calls.add(mGetConnection)
	return s.Store.GetConnection(ctx, id)
}

func (s countedMemstore) ListConnections(ctx context.Context, opts tether.ListOptions) ([]*tether.Connection, string, error) {
	s.calls.add(mListConnections)
	return s.Store.ListConnections(ctx, opts)
}

func (s countedMemstore) ListEvents(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Event, error) {
	s.calls.add(mListEvents)
	return s.Store.ListEvents(ctx, connectionID, after, limit)
}

func (s countedMemstore) AppendOutbox(ctx context.Context, connectionID string, payload []byte, created time.Time) (int64, error) {
	s.calls.add(mAppendOutbox)
	return s.Store.AppendOutbox(ctx, connectionID, payload, created)
}

func (s countedMemstore) PendingOutboxes(ctx context.Context, after string, limit int) ([]string, error) {
	s.calls.add(mPendingOutboxes)
	return s.Store.PendingOutboxes(ctx, after, limit)
}

func (s countedMemstore) ListOutbox(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Message, error) {
	s.calls.add(mListOutbox)
	return s.Store.ListOutbox(ctx, connectionID, after, limit)
}

func (s countedMemstore) AckOutbox(ctx context.Context, connectionID string, upTo int64) error {
	s.calls.add(mAckOutbox)
	return s.Store.AckOutbox(ctx, connectionID, upTo)
}

func (s countedMemstore) InboxCursor(ctx context.Context, connectionID string) (int64, error) {
	s.calls.add(mInboxCursor)
	return s.Store.InboxCursor(ctx, connectionID)
}

func (s countedMemstore) AdvanceInbox(ctx context.Context, connectionID string, from, to int64) error {
	s.calls.add(mAdvanceInbox)
	return s.Store.AdvanceInbox(ctx, connectionID, from, to)
}

func (s countedMemstore) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	s.calls.add(mLease)
	return s.Store.Lease(ctx, name, holder, now, until)
}

func (s countedMemstore) Release(ctx context.Context, name, holder string) error {
	s.calls.add(mRelease)
	return s.Store.Release(ctx, name, holder)
}

func (s countedMemstore) RememberNonce(ctx context.Context, key string, now, until time.Time) (bool, error) {
	s.calls.add(mRememberNonce)
	return s.Store.RememberNonce(ctx, key, now, until)
}

func (s countedMemstore) ListFeed(ctx context.Context, opts tether.FeedOptions) ([]tether.Event, string, error) {
	s.calls.add(mListFeed)
	return s.Store.ListFeed(ctx, opts)
}

// countedSQL counts the calls to a sqlstore, as countedMemstore does.
type countedSQL struct {
	*sqlstore.Store
	calls *calls
}

var (
	_ tether.Store         = countedSQL{}
	_ tether.AtomicInbox   = countedSQL{}
	_ tether.OutboxWatcher = countedSQL{}
	_ tether.NonceStore    = countedSQL{}
	_ tether.FeedStore     = countedSQL{}
)

func (s countedSQL) LoadInstance(ctx context.Context) (*tether.Instance, error) {
	s.calls.add(mLoadInstance)
	return s.Store.LoadInstance(ctx)
}

func (s countedSQL) SaveInstance(ctx context.Context, inst *tether.Instance) error {
	s.calls.add(mSaveInstance)
	return s.Store.SaveInstance(ctx, inst)
}

func (s countedSQL) CreateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	s.calls.add(mCreateConnection)
	return s.Store.CreateConnection(ctx, c, events...)
}

func (s countedSQL) UpdateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	s.calls.add(mUpdateConnection)
	return s.Store.UpdateConnection(ctx, c, events...)
}

func (s countedSQL) UpdateAndNotify(ctx context.Context, c *tether.Connection, notice []byte, events ...tether.Event) (int64, error) {
	s.calls.add(mUpdateAndNotify)
	return s.Store.UpdateAndNotify(ctx, c, notice, events...)
}

func (s countedSQL) ConsumeInvitation(ctx context.Context, key string, expires time.Time, c *tether.Connection, events ...tether.Event) error {
	s.calls.add(mConsumeInvitation)
	return s.Store.ConsumeInvitation(ctx, key, expires, c, events...)
}

func (s countedSQL) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	s.calls.add(mGetConnection)
	return s.Store.GetConnection(ctx, id)
}

func (s countedSQL) ListConnections(ctx context.Context, opts tether.ListOptions) ([]*tether.Connection, string, error) {
	s.calls.add(mListConnections)
	return s.Store.ListConnections(ctx, opts)
}

func (s countedSQL) ListEvents(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Event, error) {
	s.calls.add(mListEvents)
	return s.Store.ListEvents(ctx, connectionID, after, limit)
}

func (s countedSQL) AppendOutbox(ctx context.Context, connectionID string, payload []byte, created time.Time) (int64, error) {
	s.calls.add(mAppendOutbox)
	return s.Store.AppendOutbox(ctx, connectionID, payload, created)
}

func (s countedSQL) PendingOutboxes(ctx context.Context, after string, limit int) ([]string, error) {
	s.calls.add(mPendingOutboxes)
	return s.Store.PendingOutboxes(ctx, after, limit)
}

func (s countedSQL) ListOutbox(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Message, error) {
	s.calls.add(mListOutbox)
	return s.Store.ListOutbox(ctx, connectionID, after, limit)
}

func (s countedSQL) AckOutbox(ctx context.Context, connectionID string, upTo int64) error {
	s.calls.add(mAckOutbox)
	return s.Store.AckOutbox(ctx, connectionID, upTo)
}

func (s countedSQL) InboxCursor(ctx context.Context, connectionID string) (int64, error) {
	s.calls.add(mInboxCursor)
	return s.Store.InboxCursor(ctx, connectionID)
}

func (s countedSQL) AdvanceInbox(ctx context.Context, connectionID string, from, to int64) error {
	s.calls.add(mAdvanceInbox)
	return s.Store.AdvanceInbox(ctx, connectionID, from, to)
}

func (s countedSQL) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	s.calls.add(mLease)
	return s.Store.Lease(ctx, name, holder, now, until)
}

func (s countedSQL) Release(ctx context.Context, name, holder string) error {
	s.calls.add(mRelease)
	return s.Store.Release(ctx, name, holder)
}

func (s countedSQL) RememberNonce(ctx context.Context, key string, now, until time.Time) (bool, error) {
	s.calls.add(mRememberNonce)
	return s.Store.RememberNonce(ctx, key, now, until)
}

func (s countedSQL) ListFeed(ctx context.Context, opts tether.FeedOptions) ([]tether.Event, string, error) {
	s.calls.add(mListFeed)
	return s.Store.ListFeed(ctx, opts)
}

func (s countedSQL) DeliverInbox(ctx context.Context, connectionID string, from int64, msgs []tether.Message, fn func(ctx context.Context, m tether.Message) error) (int64, error) {
	s.calls.add(mDeliverInbox)
	return s.Store.DeliverInbox(ctx, connectionID, from, msgs, fn)
}

// WatchOutbox counts the call, not the notifications it brings.
func (s countedSQL) WatchOutbox(ctx context.Context, fn func(connectionID string)) error {
	s.calls.add(mWatchOutbox)
	return s.Store.WatchOutbox(ctx, fn)
}
