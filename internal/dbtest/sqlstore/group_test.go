package sqlstore_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"modernc.org/sqlite"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
)

// Concurrent appends share commits: 64 goroutines appending 16 messages
// each, at once, to four connections, store every message, number each
// connection's messages 1 to 256 without gaps, and commit far fewer than
// 1,024 times.
// Appends to a missing and to a deleted connection among them fail with
// their own error and fail nobody else.
func TestConcurrentAppendsShareCommits(t *testing.T) {
	countedDialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect, commits *atomic.Int64) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		for i := 1; i <= 5; i++ {
			if err := s.CreateConnection(ctx, storetest.NewConnection(i)); err != nil {
				t.Fatal(err)
			}
		}
		gone := storetest.NewConnection(5)
		gone.Version, gone.Status, gone.UpdatedAt = 1, tether.StatusDeleted, gone.UpdatedAt.Add(time.Second)
		if err := s.UpdateConnection(ctx, gone); err != nil {
			t.Fatal(err)
		}
		const writers, each = 64, 16
		start := make(chan struct{})
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			seqs = map[string][]int64{}
		)
		before := commits.Load()
		for i := range writers + 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := storetest.ConnID(1 + i%4)
				switch i {
				case writers:
					id = "no-such-connection"
				case writers + 1:
					id = gone.ID
				}
				<-start
				for j := range each {
					if i >= writers && j > 0 {
						return
					}
					seq, err := s.AppendOutbox(ctx, id, []byte(fmt.Sprintf("m%d-%d", i, j)), time.Now())
					switch {
					case i == writers && tether.ErrorCode(err) != tether.CodeNotFound:
						t.Errorf("append to a missing connection: %v, want CodeNotFound", err)
					case i == writers+1 && tether.ErrorCode(err) != tether.CodeNotConnected:
						t.Errorf("append to a deleted connection: %v, want CodeNotConnected", err)
					case i < writers && err != nil:
						t.Errorf("append %d: %v", i, err)
					case i < writers:
						mu.Lock()
						seqs[id] = append(seqs[id], seq)
						mu.Unlock()
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		n := commits.Load() - before
		t.Logf("%d appends, %d commits", writers*each, n)
		if n > writers*each/4 {
			t.Errorf("%d concurrent appends took %d commits: they do not share them", writers*each, n)
		}
		for i := 1; i <= 4; i++ {
			id := storetest.ConnID(i)
			got := seqs[id]
			slices.Sort(got)
			want := []int64{}
			for seq := int64(1); seq <= writers*each/4; seq++ {
				want = append(want, seq)
			}
			if !slices.Equal(got, want) {
				t.Errorf("numbers on %s: %v, want %v", id, got, want)
			}
			msgs, err := s.ListOutbox(ctx, id, 0, 1000)
			if err != nil || len(msgs) != writers*each/4 {
				t.Errorf("outbox of %s holds %d messages (%v), want %d", id, len(msgs), err, writers*each/4)
			}
		}
	})
}

// A batch of a connection's messages is stored in one transaction with
// consecutive numbers, beside single appends to the same connection made
// at the same time.
func TestBatchesAmongAppends(t *testing.T) {
	countedDialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect, commits *atomic.Int64) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		c := storetest.NewConnection(1)
		if err := s.CreateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		const batches, size, singles = 8, 50, 40
		var wg sync.WaitGroup
		firsts := make([]int64, batches)
		for b := range batches {
			wg.Add(1)
			go func() {
				defer wg.Done()
				payloads := make([][]byte, size)
				for i := range payloads {
					payloads[i] = []byte(fmt.Sprintf("b%d-%d", b, i))
				}
				first, err := s.AppendOutboxBatch(ctx, c.ID, payloads, time.Now())
				if err != nil {
					t.Errorf("batch %d: %v", b, err)
				}
				firsts[b] = first
			}()
		}
		for i := range singles {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := s.AppendOutbox(ctx, c.ID, []byte(fmt.Sprintf("s%d", i)), time.Now()); err != nil {
					t.Errorf("single %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		msgs, err := s.ListOutbox(ctx, c.ID, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != batches*size+singles {
			t.Fatalf("%d messages stored, want %d", len(msgs), batches*size+singles)
		}
		for i, m := range msgs {
			if m.Seq != int64(i+1) {
				t.Fatalf("message %d has number %d", i, m.Seq)
			}
		}
		for b, first := range firsts {
			for i := range size {
				if got, want := string(msgs[first-1+int64(i)].Payload), fmt.Sprintf("b%d-%d", b, i); got != want {
					t.Fatalf("message %d is %q, want %q: batch %d is not consecutive from %d", first+int64(i), got, want, b, first)
				}
			}
		}
	})
}

// countedDialects is dialects with a database whose connections count the
// commits that store outbox messages: a transaction that appended, or an
// append made outside one.
func countedDialects(t *testing.T, fn func(t *testing.T, db *sql.DB, d sqlstore.Dialect, commits *atomic.Int64)) {
	t.Run("sqlite", func(t *testing.T) {
		var n atomic.Int64
		db := sql.OpenDB(&countingConnector{dsn: sqliteDSN(filepath.Join(t.TempDir(), "tether.db")), drv: &sqlite.Driver{}, commits: &n})
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { db.Close() })
		fn(t, db, sqlstore.SQLite, &n)
	})
	t.Run("postgres", func(t *testing.T) {
		var n atomic.Int64
		db := sql.OpenDB(&countingConnector{dsn: newSchema(t), drv: stdlib.GetDefaultDriver(), commits: &n})
		db.SetMaxOpenConns(20)
		t.Cleanup(func() { db.Close() })
		fn(t, db, sqlstore.PostgreSQL, &n)
	})
}

type countingConnector struct {
	dsn     string
	drv     driver.Driver
	commits *atomic.Int64
}

func (c *countingConnector) Connect(context.Context) (driver.Conn, error) {
	conn, err := c.drv.Open(c.dsn)
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: conn, commits: c.commits}, nil
}

func (c *countingConnector) Driver() driver.Driver { return c.drv }

// countingConn forwards to the driver's connection, counting appends.
type countingConn struct {
	driver.Conn
	commits  *atomic.Int64
	tx       bool // in a transaction
	appended bool // the transaction appended
}

func appends(query string) bool { return strings.Contains(query, "INSERT INTO tether_outbox ") }

func (c *countingConn) note(query string) {
	switch {
	case !appends(query):
	case c.tx:
		c.appended = true
	default:
		c.commits.Add(1)
	}
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	tx, err := c.Conn.(driver.ConnBeginTx).BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	c.tx, c.appended = true, false
	return &countingTx{Tx: tx, c: c}, nil
}

func (c *countingConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	e, ok := c.Conn.(driver.ExecerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	c.note(query)
	return e.ExecContext(ctx, query, args)
}

func (c *countingConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := c.Conn.(driver.QueryerContext)
	if !ok {
		return nil, driver.ErrSkip
	}
	c.note(query)
	return q.QueryContext(ctx, query, args)
}

func (c *countingConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if appends(query) {
		return nil, errors.New("countingConn: appends are not counted through prepared statements")
	}
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return c.Conn.Prepare(query)
}

func (c *countingConn) CheckNamedValue(v *driver.NamedValue) error {
	if ch, ok := c.Conn.(driver.NamedValueChecker); ok {
		return ch.CheckNamedValue(v)
	}
	return driver.ErrSkip
}

func (c *countingConn) ResetSession(ctx context.Context) error {
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *countingConn) IsValid() bool {
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

type countingTx struct {
	driver.Tx
	c *countingConn
}

func (t *countingTx) Commit() error {
	err := t.Tx.Commit()
	if err == nil && t.c.appended {
		t.c.commits.Add(1)
	}
	t.c.tx = false
	return err
}

func (t *countingTx) Rollback() error {
	t.c.tx = false
	return t.Tx.Rollback()
}

// Stores sharing a database (replicas) group appends to the same
// connections at once, in every order: their shared transactions lock the
// connections' counters in one order, so none deadlocks and every append
// succeeds.
func TestGroupsOfStoresDoNotDeadlock(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		key := testKey(t)
		var stores []*sqlstore.Store
		for range 4 {
			stores = append(stores, newStore(t, db, d, key))
		}
		ids := createConns(t, ctx, stores[0], 3)
		var wg sync.WaitGroup
		var stored atomic.Int64
		for g := range 24 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := stores[g%4]
				for j := range 40 {
					id := ids[(g+j)%3]
					if g%2 == 1 {
						id = ids[(g+2*j)%3]
					}
					var err error
					if g%8 < 4 {
						_, err = s.AppendOutbox(ctx, id, []byte("m"), time.Now())
						stored.Add(1)
					} else {
						_, err = s.AppendOutboxBatch(ctx, id, [][]byte{[]byte("m"), []byte("n")}, time.Now())
						stored.Add(2)
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		total := 0
		for _, id := range ids {
			msgs, err := stores[0].ListOutbox(ctx, id, 0, 1000)
			if err != nil {
				t.Fatal(err)
			}
			total += len(msgs)
		}
		if int64(total) != stored.Load() {
			t.Fatalf("%d messages stored, %d appended", total, stored.Load())
		}
	})
}

// Close releases the Store's prepared statements; the Store still works
// after it, transactions too.
func TestStoreClose(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		ids := createConns(t, ctx, s, 1)
		if _, err := s.AppendOutbox(ctx, ids[0], []byte("before"), time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := s.AppendOutboxBatch(ctx, ids[0], [][]byte{[]byte("after 1"), []byte("after 2")}, time.Now()); err != nil {
			t.Fatalf("a batch after Close: %v", err)
		}
		if _, err := s.AppendOutbox(ctx, ids[0], []byte("after 3"), time.Now()); err != nil {
			t.Fatalf("an append after Close: %v", err)
		}
		cursor, err := s.DeliverInbox(ctx, ids[0], 0, []tether.Message{{Seq: 1, Payload: []byte("x")}}, func(context.Context, tether.Message) error { return nil })
		if err != nil || cursor != 1 {
			t.Fatalf("a delivery after Close: %d, %v", cursor, err)
		}
		if msgs, err := s.ListOutbox(ctx, ids[0], 0, 0); err != nil || len(msgs) != 4 {
			t.Fatalf("after Close the outbox holds %d messages (%v), want 4", len(msgs), err)
		}
	})
}
