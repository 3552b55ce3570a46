package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherkit/tether"
)

// maxGroup is how many messages one shared transaction stores at most;
// appends beyond it wait for the next one.
const maxGroup = 1000

// appends makes concurrent appends share transactions (group commit).
// The caller that finds no transaction running leads: it runs one for the
// appends queued, its own among them. Appends that arrive meanwhile queue,
// and when the transaction ends the first of them leads the next one with
// all of them. So N writers arriving together cost about two commits, not
// N, and a writer alone costs what it did: one statement.
type appends struct {
	mu      sync.Mutex
	queue   []*appendReq
	running bool
}

// appendReq is one AppendOutbox or AppendOutboxBatch waiting for its
// transaction.
type appendReq struct {
	ctx      context.Context
	op, id   string
	payloads [][]byte
	created  time.Time

	first int64
	err   error
	done  chan struct{} // closed when first and err are set
	lead  chan struct{} // closed when the request is to run batch
	batch []*appendReq  // what it leads, itself first
}

// appendGroup stores payloads on connection id in a transaction shared
// with the appends other goroutines make at the same time, and returns the
// first one's number. It does not return before its transaction ends,
// though ctx ends: the transaction is abandoned only when the contexts of
// all the appends it holds have ended.
func (s *Store) appendGroup(ctx context.Context, op, id string, payloads [][]byte, created time.Time) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, translate(op, err)
	}
	r := &appendReq{ctx: ctx, op: op, id: id, payloads: payloads, created: created, done: make(chan struct{}), lead: make(chan struct{})}
	g := &s.appends
	g.mu.Lock()
	if !g.running {
		g.running = true
		g.mu.Unlock()
		r.batch = []*appendReq{r}
		s.lead(r)
		return r.first, r.err
	}
	g.queue = append(g.queue, r)
	g.mu.Unlock()
	select {
	case <-r.done:
	case <-r.lead:
		s.lead(r)
	case <-ctx.Done():
		g.mu.Lock()
		for i, q := range g.queue {
			if q == r { // not taken yet: nothing of it was written
				g.queue = append(g.queue[:i], g.queue[i+1:]...)
				g.mu.Unlock()
				return 0, translate(op, ctx.Err())
			}
		}
		g.mu.Unlock()
		select {
		case <-r.done:
		case <-r.lead:
			s.lead(r)
		}
	}
	return r.first, r.err
}

// lead runs r's batch, then hands the appends queued meanwhile to the
// first of them, or ends the group's run when there are none.
func (s *Store) lead(r *appendReq) {
	s.commitGroup(r.batch)
	g := &s.appends
	g.mu.Lock()
	if len(g.queue) == 0 {
		g.running = false
		g.mu.Unlock()
		return
	}
	n, msgs := 0, 0
	for n < len(g.queue) && (n == 0 || msgs+len(g.queue[n].payloads) <= maxGroup) {
		msgs += len(g.queue[n].payloads)
		n++
	}
	next := g.queue[0]
	next.batch = append([]*appendReq(nil), g.queue[:n]...)
	g.queue = append(g.queue[:0], g.queue[n:]...)
	g.mu.Unlock()
	close(next.lead)
}

// commitGroup stores batch's appends in one transaction and gives each its
// result. An append refused for its connection (missing, deleted) gets its
// error and the others go on; any other failure undoes the transaction, and
// then each append is made on its own, so that one cannot fail the others.
func (s *Store) commitGroup(batch []*appendReq) {
	defer func() {
		for _, r := range batch {
			close(r.done)
		}
	}()
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	defer cancel()
	left := atomic.Int64{}
	left.Store(int64(len(batch)))
	for _, r := range batch {
		stop := context.AfterFunc(r.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
		defer stop()
	}
	if len(batch) == 1 {
		r := batch[0]
		r.first, r.err = s.appendAlone(ctx, r)
		return
	}
	// In connection order: each append locks its connection's counter row
	// (PostgreSQL) to the commit, so transactions of other Stores or
	// replicas that take them in the same order cannot deadlock with this
	// one.
	ordered := slices.Clone(batch)
	slices.SortStableFunc(ordered, func(a, b *appendReq) int { return strings.Compare(a.id, b.id) })
	tx, release, err := s.begin(ctx)
	if err == nil {
		for start := 0; start < len(ordered); {
			// On PostgreSQL the appends to one connection go in one
			// statement, saving round trips; on SQLite, where statements
			// cost no round trip, each runs prepared.
			end := start + 1
			for s.dialect == PostgreSQL && end < len(ordered) && ordered[end].id == ordered[start].id {
				end++
			}
			if err = s.appendRun(ctx, s.on(tx), ordered[start:end]); err != nil {
				break
			}
			start = end
		}
		if err != nil {
			_ = tx.Rollback()
			release() // before the appends alone need a connection
		} else {
			err = tx.Commit()
			release()
			if err != nil {
				// It may have committed: retrying could store twice.
				for _, r := range batch {
					r.first, r.err = 0, translate(r.op, err)
				}
				return
			}
		}
	}
	if err != nil {
		for _, r := range batch {
			r.first, r.err = s.appendAlone(ctx, r)
		}
		return
	}
	for _, r := range batch {
		if r.err != nil {
			r.first, r.err = 0, translate(r.op, r.err)
		}
	}
}

// appendRun stores the appends of run, all to one connection, in one
// step, and gives each its first number or the connection's refusal. It
// returns any other error.
func (s *Store) appendRun(ctx context.Context, q querier, run []*appendReq) error {
	r := run[0]
	if len(run) == 1 {
		r.first, r.err = s.appendAll(ctx, q, r.op, r.id, r.payloads, []time.Time{r.created})
	} else {
		var (
			payloads [][]byte
			created  []time.Time
		)
		for _, r := range run {
			payloads = append(payloads, r.payloads...)
			for range r.payloads {
				created = append(created, r.created)
			}
		}
		first, err := s.appendAll(ctx, q, r.op, r.id, payloads, created)
		for _, r := range run {
			r.first, r.err = first, err
			first += int64(len(r.payloads))
		}
	}
	var te *tether.Error
	if r.err != nil && !errors.As(r.err, &te) {
		return r.err
	}
	return nil
}

// appendAlone makes r in a statement, or a transaction, of its own.
func (s *Store) appendAlone(ctx context.Context, r *appendReq) (int64, error) {
	if len(r.payloads) == 1 {
		seq, err := s.appendMessage(ctx, s.on(s.db), r.op, r.id, r.payloads[0], r.created, false)
		return seq, translate(r.op, err)
	}
	var first int64
	err := s.inTx(ctx, r.op, func(q querier) error {
		var err error
		first, err = s.appendAll(ctx, q, r.op, r.id, r.payloads, []time.Time{r.created})
		return err
	})
	return first, err
}

// appendAll appends payloads to connection id's outbox with q, which is
// a transaction when there is more than one, and returns the first
// number; created holds each payload's time, or one for all. When the
// connection refuses (missing, deleted) nothing is written. More than one
// message take their numbers in one statement and are inserted
// insertChunk at a time.
func (s *Store) appendAll(ctx context.Context, q querier, op, id string, payloads [][]byte, created []time.Time) (int64, error) {
	if len(payloads) == 1 {
		return s.appendMessage(ctx, q, op, id, payloads[0], created[0], false)
	}
	n := int64(len(payloads))
	var last int64
	err := q.QueryRowContext(ctx, s.q.reserveSeqs, n, id).Scan(&last)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, s.refused(ctx, q, op, id)
	}
	if err != nil {
		return 0, err
	}
	first := last - n + 1
	for start := 0; start < len(payloads); start += insertChunk {
		chunk := payloads[start:min(start+insertChunk, len(payloads))]
		args := make([]any, 0, 4*len(chunk))
		for i, p := range chunk {
			if p == nil {
				p = []byte{}
			}
			at := created[0]
			if len(created) > 1 {
				at = created[start+i]
			}
			args = append(args, id, first+int64(start+i), p, nanos(at))
		}
		query := s.q.insertChunk
		if len(chunk) != insertChunk {
			query = insertRows(s.dialect, len(chunk))
		}
		if _, err := q.ExecContext(ctx, query, args...); err != nil {
			return 0, err
		}
	}
	if s.dialect == PostgreSQL {
		if _, err := q.ExecContext(ctx, s.q.notifyOutbox, id); err != nil {
			return 0, err
		}
	}
	return first, nil
}
