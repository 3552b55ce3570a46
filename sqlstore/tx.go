package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"sync"

	"github.com/tetherkit/tether"
)

// querier is what the Store's statements run on: the database, or a
// transaction.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type txKey struct{}

// delivery is the context value DeliverInbox hands its fn: the delivery's
// transaction and the database it belongs to. sem lets one Store call at a
// time use the transaction, so that calls from several goroutines do not
// interleave their savepoints.
type delivery struct {
	db  *sql.DB
	tx  *sql.Tx
	sem chan struct{}
}

// Tx returns the transaction a Receiver runs in when the Node delivers a
// message through this Store, or nil outside one. A Receiver that writes its
// effects with it applies each message exactly once: the write and the
// inbox cursor commit together.
//
// The Store's own methods called with that context (from any Store on the
// same *sql.DB) run in that transaction too, so there is no need to pass
// it to them.
func Tx(ctx context.Context) *sql.Tx {
	if d, ok := ctx.Value(txKey{}).(*delivery); ok {
		return d.tx
	}
	return nil
}

// joined returns the delivery ctx belongs to when its transaction is one
// of s's database, nil otherwise.
func (s *Store) joined(ctx context.Context) *delivery {
	if d, ok := ctx.Value(txKey{}).(*delivery); ok && d.db == s.db {
		return d
	}
	return nil
}

func (d *delivery) lock(ctx context.Context) error {
	select {
	case d.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *delivery) unlock() { <-d.sem }

// messageSavepoint names the savepoint DeliverInbox hands each message
// in; callSavepoint the savepoint of a Store call inside a delivery,
// which nests in it.
const (
	messageSavepoint = "tether_message"
	callSavepoint    = "tether_call"
)

// savepoint runs fn with q, which runs on the delivery's transaction, in
// a savepoint: when fn fails its writes are undone and the transaction
// stays usable (on PostgreSQL a failed statement would otherwise abort
// it).
func (d *delivery) savepoint(ctx context.Context, q querier, fn func(q querier) error) error {
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	if _, err := q.ExecContext(ctx, `SAVEPOINT `+callSavepoint); err != nil {
		return err
	}
	if err := fn(q); err != nil {
		// Undo even when ctx has ended: the delivery's transaction goes on.
		// If the database cannot, the delivery's next statement fails.
		undo := context.WithoutCancel(ctx)
		if _, rerr := q.ExecContext(undo, `ROLLBACK TO SAVEPOINT `+callSavepoint); rerr == nil {
			_, _ = q.ExecContext(undo, `RELEASE SAVEPOINT `+callSavepoint)
		}
		return err
	}
	_, err := q.ExecContext(ctx, `RELEASE SAVEPOINT `+callSavepoint)
	return err
}

// inTx runs fn atomically and translates its error: in a transaction of
// its own that it commits, or rolls back when fn fails; or, when ctx
// belongs to a delivery on this database, in a savepoint of the
// delivery's transaction.
func (s *Store) inTx(ctx context.Context, op string, fn func(q querier) error) error {
	if d := s.joined(ctx); d != nil {
		return translate(op, d.savepoint(ctx, s.on(d.tx), fn))
	}
	tx, release, err := s.begin(ctx)
	if err != nil {
		return translate(op, err)
	}
	defer release()
	if err := fn(s.on(tx)); err != nil {
		_ = tx.Rollback()
		return translate(op, err)
	}
	return translate(op, tx.Commit())
}

// begin starts a transaction whose statements ctx can stop but whose
// commit it cannot: a commit cut off by ctx might have happened, and the
// caller would be told it failed. When ctx ends, the statement running
// fails and the caller rolls back.
// The connection is taken under ctx; release returns it to the pool once
// the transaction has ended.
func (s *Store) begin(ctx context.Context) (tx *sql.Tx, release func(), err error) {
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	tx, err = conn.BeginTx(context.WithoutCancel(ctx), nil)
	if err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	return tx, func() { _ = conn.Close() }, nil
}

// write runs fn, whose statements need no transaction of their own, on
// the database, or in a savepoint of the delivery's transaction ctx
// belongs to; it translates fn's error.
func (s *Store) write(ctx context.Context, op string, fn func(q querier) error) error {
	if d := s.joined(ctx); d != nil {
		return translate(op, d.savepoint(ctx, s.on(d.tx), fn))
	}
	return translate(op, fn(s.on(s.db)))
}

// read runs fn, which only reads, on the database, or in the delivery's
// transaction ctx belongs to; it translates fn's error.
func (s *Store) read(ctx context.Context, op string, fn func(q querier) error) error {
	d := s.joined(ctx)
	if d == nil {
		return translate(op, fn(s.on(s.db)))
	}
	if err := d.lock(ctx); err != nil {
		return translate(op, err)
	}
	defer d.unlock()
	return translate(op, fn(s.on(d.tx)))
}

// maxStmts bounds the prepared statements a Store keeps.
const maxStmts = 128

// stmts keeps prepared statements on SQLite, whose driver otherwise
// compiles every statement, with the triggers it fires, on every call:
// more work than running it. PostgreSQL drivers keep their own.
type stmts struct {
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

// prepared is a querier that runs the statements it is given as prepared
// statements of its Store, on q: the database or a transaction of it.
type prepared struct {
	s *Store
	q querier
}

// on returns what fn of s's methods run statements on: q itself, or on
// SQLite q with s's prepared statements.
func (s *Store) on(q querier) querier {
	if s.dialect != SQLite {
		return q
	}
	return prepared{s: s, q: q}
}

// rawTx returns the transaction q runs on.
func rawTx(q querier) *sql.Tx {
	if p, ok := q.(prepared); ok {
		q = p.q
	}
	return q.(*sql.Tx)
}

// stmt returns query prepared, on q's transaction if it is one; nil when
// it is not prepared (the caller then runs it as it is).
func (p prepared) stmt(ctx context.Context, query string) *sql.Stmt {
	c := &p.s.stmts
	c.mu.Lock()
	st, ok := c.m[query]
	c.mu.Unlock()
	tx, inTx := p.q.(*sql.Tx)
	switch {
	case ok && inTx:
		return tx.StmtContext(ctx, st)
	case ok:
		return st
	case inTx:
		// Preparing on the database would wait for a connection, maybe
		// the one the transaction holds.
		return nil
	default:
		return p.s.prepare(ctx, query)
	}
}

// prepare prepares query on the database and keeps it, unless the Store
// keeps maxStmts already; nil when it cannot.
func (s *Store) prepare(ctx context.Context, query string) *sql.Stmt {
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	c := &s.stmts
	c.mu.Lock()
	defer c.mu.Unlock()
	if prev, ok := c.m[query]; ok {
		_ = st.Close()
		return prev
	}
	if len(c.m) >= maxStmts {
		_ = st.Close()
		return nil
	}
	if c.m == nil {
		c.m = map[string]*sql.Stmt{}
	}
	c.m[query] = st
	return st
}

func (p prepared) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if st := p.stmt(ctx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return p.q.ExecContext(ctx, query, args...)
}

func (p prepared) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := p.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return p.q.QueryContext(ctx, query, args...)
}

func (p prepared) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := p.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return p.q.QueryRowContext(ctx, query, args...)
}

// Close releases the statements the Store prepared (on SQLite). It does
// not close the database, which stays the caller's; a Store used after
// Close still works, more slowly. Closing is needed only when many Stores
// are made on one long-lived database.
func (s *Store) Close() error {
	c := &s.stmts
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, st := range c.m {
		errs = append(errs, st.Close())
	}
	c.m = nil
	return errors.Join(errs...)
}

// maxDecoded bounds the connections a Store keeps decoded.
const maxDecoded = 1024

// decoded keeps connections GetConnection decoded, each with the bytes it
// was decoded from: decoding a connection costs more than reading it, and
// the same few are read again and again (a poll reads every connection it
// names). A connection whose stored bytes changed is decoded afresh.
type decoded struct {
	mu sync.Mutex
	m  map[string]decodedConn
}

type decodedConn struct {
	data []byte
	c    *tether.Connection
}

// get returns a copy of connection id decoded from data, or nil.
func (d *decoded) get(id string, data []byte) *tether.Connection {
	d.mu.Lock()
	defer d.mu.Unlock()
	if e, ok := d.m[id]; ok && bytes.Equal(e.data, data) {
		return e.c.Clone()
	}
	return nil
}

// put keeps c, decoded from data, making room if it must.
func (d *decoded) put(id string, data []byte, c *tether.Connection) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]decodedConn{}
	}
	if _, ok := d.m[id]; !ok && len(d.m) >= maxDecoded {
		for other := range d.m {
			delete(d.m, other)
			break
		}
	}
	d.m[id] = decodedConn{data: data, c: c.Clone()}
}
