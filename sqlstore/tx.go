package sqlstore

import (
	"context"
	"database/sql"
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

// callSavepoint names the savepoint of a Store call inside a delivery; it
// nests in DeliverInbox's tether_message.
const callSavepoint = "tether_call"

// savepoint runs fn in a savepoint of the delivery's transaction: when fn
// fails its writes are undone and the transaction stays usable (on
// PostgreSQL a failed statement would otherwise abort it).
func (d *delivery) savepoint(ctx context.Context, fn func(q querier) error) error {
	if err := d.lock(ctx); err != nil {
		return err
	}
	defer d.unlock()
	if _, err := d.tx.ExecContext(ctx, `SAVEPOINT `+callSavepoint); err != nil {
		return err
	}
	if err := fn(d.tx); err != nil {
		// Undo even when ctx has ended: the delivery's transaction goes on.
		// If the database cannot, the delivery's next statement fails.
		undo := context.WithoutCancel(ctx)
		if _, rerr := d.tx.ExecContext(undo, `ROLLBACK TO SAVEPOINT `+callSavepoint); rerr == nil {
			_, _ = d.tx.ExecContext(undo, `RELEASE SAVEPOINT `+callSavepoint)
		}
		return err
	}
	_, err := d.tx.ExecContext(ctx, `RELEASE SAVEPOINT `+callSavepoint)
	return err
}

// inTx runs fn atomically and translates its error: in a transaction of
// its own that it commits, or rolls back when fn fails; or, when ctx
// belongs to a delivery on this database, in a savepoint of the
// delivery's transaction.
func (s *Store) inTx(ctx context.Context, op string, fn func(q querier) error) error {
	if d := s.joined(ctx); d != nil {
		return translate(op, d.savepoint(ctx, fn))
	}
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

// write runs fn, whose statements need no transaction of their own, on
// the database, or in a savepoint of the delivery's transaction ctx
// belongs to; it translates fn's error.
func (s *Store) write(ctx context.Context, op string, fn func(q querier) error) error {
	if d := s.joined(ctx); d != nil {
		return translate(op, d.savepoint(ctx, fn))
	}
	return translate(op, fn(s.db))
}

// read runs fn, which only reads, on the database, or in the delivery's
// transaction ctx belongs to; it translates fn's error.
func (s *Store) read(ctx context.Context, op string, fn func(q querier) error) error {
	d := s.joined(ctx)
	if d == nil {
		return translate(op, fn(s.db))
	}
	if err := d.lock(ctx); err != nil {
		return translate(op, err)
	}
	defer d.unlock()
	return translate(op, fn(d.tx))
}
