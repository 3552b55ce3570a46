package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
)

// listAll returns every message of connection id's outbox, page by page.
func listAll(t testing.TB, ctx context.Context, s *sqlstore.Store, id string) []tether.Message {
	t.Helper()
	var all []tether.Message
	after := int64(0)
	for {
		page, err := s.ListOutbox(ctx, id, after, tether.MaxOutboxPage)
		if err != nil {
			t.Fatalf("list outbox of %s: %v", id, err)
		}
		all = append(all, page...)
		if len(page) < tether.MaxOutboxPage {
			return all
		}
		after = page[len(page)-1].Seq
	}
}

func createConns(t testing.TB, ctx context.Context, s *sqlstore.Store, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range n {
		c := storetest.NewConnection(i + 1)
		if err := s.CreateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		ids[i] = c.ID
	}
	return ids
}

func isCtxErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// appendVia appends payloads with one AppendOutboxBatch when batch, else
// its only payload with AppendOutbox.
func appendVia(ctx context.Context, s *sqlstore.Store, id string, payloads [][]byte, batch bool) (int64, error) {
	if batch {
		return s.AppendOutboxBatch(ctx, id, payloads, time.Now())
	}
	return s.AppendOutbox(ctx, id, payloads[0], time.Now())
}

// appendResult is one AppendOutbox or AppendOutboxBatch call and what it
// returned.
type appendResult struct {
	id       string
	payloads [][]byte
	first    int64
	err      error
}

// Appends whose contexts end at random moments, among many that run to
// the end: every append that returned a number is stored under it, with
// its payloads in order; a batch is stored whole or not at all; no
// payload is stored twice; every error is the append's context's, and a
// batch of several messages that failed is not stored (it commits in a
// transaction). Single appends that returned their context's error and
// were stored anyway are counted and logged: a statement run on its own,
// whose context ends as it commits, cannot tell which way it went.
func TestGroupCancelledAppends(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s := newStore(t, db, d, testKey(t))
		ids := createConns(t, ctx, s, 4)
		const writers, each = 32, 40
		// Delays long enough for some appends to finish before their
		// context ends: a PostgreSQL round trip is slower.
		maxDelay := 2000
		if d == sqlstore.PostgreSQL {
			maxDelay = 5000
		}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			results []appendResult
		)
		start := make(chan struct{})
		for g := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(g), 7))
				<-start
				for op := range each {
					id := ids[rng.IntN(len(ids))]
					n := 1
					batch := rng.IntN(3) == 0
					if batch {
						n = 1 + rng.IntN(5)
					}
					payloads := make([][]byte, n)
					for i := range payloads {
						payloads[i] = []byte(fmt.Sprintf("g%d-o%d-i%d", g, op, i))
					}
					actx, acancel := context.WithCancel(ctx)
					switch rng.IntN(4) {
					case 0: // runs to the end
					case 1:
						acancel()
					case 2:
						time.AfterFunc(time.Duration(rng.IntN(maxDelay))*time.Microsecond, acancel)
					case 3:
						spins := rng.IntN(20)
						go func() {
							for range spins {
								runtime.Gosched()
							}
							acancel()
						}()
					}
					first, err := appendVia(actx, s, id, payloads, batch)
					acancel()
					mu.Lock()
					results = append(results, appendResult{id: id, payloads: payloads, first: first, err: err})
					mu.Unlock()
				}
			}()
		}
		close(start)
		wg.Wait()

		stored := map[string]tether.Message{}
		for _, id := range ids {
			seen := map[int64]bool{}
			for _, m := range listAll(t, ctx, s, id) {
				if seen[m.Seq] {
					t.Fatalf("number %d twice on %s", m.Seq, id)
				}
				seen[m.Seq] = true
				if _, dup := stored[string(m.Payload)]; dup {
					t.Fatalf("payload %q stored twice", m.Payload)
				}
				stored[string(m.Payload)] = m
			}
		}
		var ok, failed, ambiguous int
		for _, r := range results {
			n := 0
			for _, p := range r.payloads {
				if _, in := stored[string(p)]; in {
					n++
				}
			}
			if r.err == nil {
				ok++
				for i, p := range r.payloads {
					m, in := stored[string(p)]
					if !in || m.ConnectionID != r.id || m.Seq != r.first+int64(i) {
						t.Fatalf("append of %q returned %d on %s: stored as %+v (%v)", p, r.first+int64(i), r.id, m, in)
					}
				}
				continue
			}
			failed++
			if !isCtxErr(r.err) || tether.ErrorCode(r.err) != tether.CodeUnavailable {
				t.Fatalf("append of %q failed with %v, not its context's error", r.payloads[0], r.err)
			}
			if n != 0 && n != len(r.payloads) {
				t.Fatalf("a batch of %d that failed (%v) left %d stored", len(r.payloads), r.err, n)
			}
			if n != 0 && len(r.payloads) > 1 {
				// A batch commits in a transaction: an error means no commit.
				t.Fatalf("a batch of %d failed (%v) and was stored", len(r.payloads), r.err)
			}
			if n != 0 {
				ambiguous++
				// Stored, so stored as a batch: consecutive, in order.
				first := stored[string(r.payloads[0])].Seq
				for i, p := range r.payloads {
					if m := stored[string(p)]; m.Seq != first+int64(i) || m.ConnectionID != r.id {
						t.Fatalf("batch message %q stored as %+v", p, m)
					}
				}
			}
		}
		if len(stored) != countStored(results, stored) {
			t.Fatalf("%d payloads stored that no append made", len(stored)-countStored(results, stored))
		}
		t.Logf("%d appends returned a number, %d their context's error, %d of those stored", ok, failed, ambiguous)
	})
}

func countStored(results []appendResult, stored map[string]tether.Message) int {
	n := 0
	for _, r := range results {
		for _, p := range r.payloads {
			if _, in := stored[string(p)]; in {
				n++
			}
		}
	}
	return n
}

// An append that the database refuses for a reason of its own (on
// PostgreSQL a connection ID that is not UTF-8; on SQLite, which takes
// it, a connection that does not exist) fails alone: appends sharing its
// transaction are made again each on its own and all succeed.
func TestGroupBadAppendFailsAlone(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s := newStore(t, db, d, testKey(t))
		ids := createConns(t, ctx, s, 3)
		const writers, each = 24, 20
		var (
			wg   sync.WaitGroup
			bad  atomic.Int64
			mu   sync.Mutex
			seqs = map[string][]int64{}
		)
		for g := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range each {
					if g%6 == 0 {
						// Every sixth writer sends to an ID the database rejects.
						_, err := s.AppendOutboxBatch(ctx, "conn_\xff\xfe", [][]byte{[]byte("x"), []byte("y")}, time.Now())
						if err == nil {
							t.Errorf("a batch to a bad ID was stored")
						}
						_, err = s.AppendOutbox(ctx, "conn_\xff\xfe", []byte("z"), time.Now())
						if err == nil {
							t.Errorf("an append to a bad ID was stored")
						}
						bad.Add(1)
						continue
					}
					id := ids[(g+j)%len(ids)]
					first, err := s.AppendOutboxBatch(ctx, id, [][]byte{[]byte(fmt.Sprintf("%d-%d-a", g, j)), []byte(fmt.Sprintf("%d-%d-b", g, j))}, time.Now())
					if err != nil {
						t.Errorf("batch beside a bad append: %v", err)
						continue
					}
					seq, err := s.AppendOutbox(ctx, id, []byte(fmt.Sprintf("%d-%d-c", g, j)), time.Now())
					if err != nil {
						t.Errorf("append beside a bad append: %v", err)
						continue
					}
					mu.Lock()
					seqs[id] = append(seqs[id], first, first+1, seq)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if bad.Load() == 0 {
			t.Fatal("no bad append was made")
		}
		for _, id := range ids {
			msgs := listAll(t, ctx, s, id)
			if len(msgs) != len(seqs[id]) {
				t.Fatalf("%s holds %d messages, %d appended", id, len(msgs), len(seqs[id]))
			}
			for i, m := range msgs {
				if m.Seq != int64(i+1) {
					t.Fatalf("%s: message %d numbered %d", id, i, m.Seq)
				}
			}
		}
	})
}

// A connection deleted while batches and single appends to it, and to
// another connection, run: batches are seen whole or not at all, by
// readers during the race too; an append that starts after the deletion
// returned is refused with CodeNotConnected; once all are done the
// deleted connection's outbox holds no data message, and the other
// connection's holds every message appended to it.
func TestGroupDeleteDuringAppends(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s := newStore(t, db, d, testKey(t))
		ids := createConns(t, ctx, s, 2)
		target, other := ids[0], ids[1]
		var (
			deleted   atomic.Bool
			appended  atomic.Int64 // messages stored on target before the deletion
			otherSeqs sync.Map     // payload -> number on other
			wg        sync.WaitGroup
			writersWG sync.WaitGroup
		)
		writer := func(w int, batch bool, id string) {
			defer writersWG.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for k := 0; ; k++ {
				if id == other && deleted.Load() && k > 50 {
					return
				}
				after := deleted.Load()
				n := 1
				if batch {
					n = 1 + rng.IntN(150)
				}
				payloads := make([][]byte, n)
				for i := range payloads {
					payloads[i] = []byte(fmt.Sprintf("w%d-k%d-i%d-n%d", w, k, i, n))
				}
				first, err := appendVia(ctx, s, id, payloads, batch)
				switch {
				case id == other && err != nil:
					t.Errorf("append to the other connection: %v", err)
					return
				case id == other:
					for i, p := range payloads {
						otherSeqs.Store(string(p), first+int64(i))
					}
				case err != nil:
					if tether.ErrorCode(err) != tether.CodeNotConnected {
						t.Errorf("append to the deleted connection: %v, want CodeNotConnected", err)
					}
					return
				case after:
					t.Errorf("an append that started after the deletion returned was stored as %d", first)
					return
				default:
					appended.Add(int64(n))
				}
			}
		}
		for w := range 12 {
			writersWG.Add(1)
			id := target
			if w >= 8 {
				id = other
			}
			go writer(w, w%2 == 0, id)
		}
		// Readers: each query is one snapshot, in which a batch is whole
		// or absent.
		stop := make(chan struct{})
		query := `SELECT payload FROM tether_outbox WHERE connection_id = ? AND NOT control`
		if d == sqlstore.PostgreSQL {
			query = `SELECT payload FROM tether_outbox WHERE connection_id = $1 AND NOT control`
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				rows, err := db.QueryContext(ctx, query, target)
				if err != nil {
					t.Errorf("read: %v", err)
					return
				}
				counts := map[string]int{}
				want := map[string]int{}
				for rows.Next() {
					var p []byte
					if err := rows.Scan(&p); err != nil {
						t.Errorf("scan: %v", err)
						break
					}
					var w, k, i, n int
					if _, err := fmt.Sscanf(string(p), "w%d-k%d-i%d-n%d", &w, &k, &i, &n); err != nil {
						t.Errorf("payload %q: %v", p, err)
						break
					}
					key := fmt.Sprintf("w%d-k%d", w, k)
					counts[key]++
					want[key] = n
				}
				rows.Close()
				for key, n := range counts {
					if n != want[key] {
						t.Errorf("a reader saw %d of batch %s's %d messages", n, key, want[key])
					}
				}
			}
		}()
		for appended.Load() < 500 && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		c, err := s.GetConnection(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		c.Status, c.UpdatedAt = tether.StatusDeleted, c.UpdatedAt.Add(time.Second)
		if err := s.UpdateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		deleted.Store(true)
		writersWG.Wait()
		close(stop)
		wg.Wait()
		if msgs := listAll(t, ctx, s, target); len(msgs) != 0 {
			t.Fatalf("the deleted connection's outbox holds %d messages, the first %q numbered %d", len(msgs), msgs[0].Payload, msgs[0].Seq)
		}
		n := 0
		for _, m := range listAll(t, ctx, s, other) {
			seq, ok := otherSeqs.Load(string(m.Payload))
			if !ok || seq.(int64) != m.Seq {
				t.Fatalf("other connection: %q stored as %d, appended as %v", m.Payload, m.Seq, seq)
			}
			n++
		}
		otherSeqs.Range(func(any, any) bool { n--; return true })
		if n != 0 {
			t.Fatalf("other connection: %d more messages stored than appended", n)
		}
	})
}

// batchPayloads returns n distinct payloads, with nil and empty ones,
// bytes 0x00 and 0xff and a large one among them, at chunk boundaries
// too.
func batchPayloads(tag string, n int) [][]byte {
	ps := make([][]byte, n)
	for i := range ps {
		switch {
		case i%100 == 0 || i%100 == 99:
			ps[i] = nil
		case i%7 == 3:
			ps[i] = []byte{}
		case i%11 == 5:
			ps[i] = append([]byte{0, 0xff, 0}, fmt.Sprintf("%s-%d", tag, i)...)
		case i == n/2:
			ps[i] = bytes.Repeat([]byte{0xfe, 0x00, 'x'}, 30000)
		default:
			ps[i] = []byte(fmt.Sprintf("%s-%d", tag, i))
		}
	}
	return ps
}

func checkBatch(t testing.TB, msgs []tether.Message, first int64, payloads [][]byte, created time.Time) {
	t.Helper()
	bySeq := map[int64]tether.Message{}
	for _, m := range msgs {
		bySeq[m.Seq] = m
	}
	for i, p := range payloads {
		m, ok := bySeq[first+int64(i)]
		if !ok {
			t.Fatalf("message %d of the batch (number %d) is missing", i, first+int64(i))
		}
		if !bytes.Equal(m.Payload, p) || m.Control {
			t.Fatalf("message %d of the batch (number %d): %d bytes %q, control %v; want %d bytes %q", i, m.Seq, len(m.Payload), trim(m.Payload), m.Control, len(p), trim(p))
		}
		if !m.Created.Equal(created) {
			t.Fatalf("message %d of the batch created %v, want %v", i, m.Created, created)
		}
	}
}

func trim(p []byte) []byte {
	if len(p) > 20 {
		return p[:20]
	}
	return p
}

// Batches of the sizes around the 100-row INSERTs and beyond a shared
// transaction's 1,000 messages keep every payload's bytes (nil and empty
// ones, zero bytes, a large one) and number them consecutively: made one
// after the other, and all at once on one connection and on several.
func TestGroupBatchSizes(t *testing.T) {
	sizes := []int{1, 2, 99, 100, 101, 199, 200, 201, 250, 1000, 1001, 1234}
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s := newStore(t, db, d, testKey(t))
		ids := createConns(t, ctx, s, 1+len(sizes))
		created := time.Unix(1_700_000_000, 123_456_789).UTC()

		// One after the other, on ids[0].
		type made struct {
			id       string
			first    int64
			payloads [][]byte
		}
		var all []made
		next := int64(1)
		for _, n := range sizes {
			ps := batchPayloads(fmt.Sprintf("seq%d", n), n)
			first, err := s.AppendOutboxBatch(ctx, ids[0], ps, created)
			if err != nil {
				t.Fatalf("batch of %d: %v", n, err)
			}
			if first != next {
				t.Fatalf("batch of %d starts at %d, want %d", n, first, next)
			}
			next += int64(n)
			all = append(all, made{ids[0], first, ps})
		}
		// All at once: one batch of each size on ids[0], and one on a
		// connection of its own, beside single appends.
		var (
			wg sync.WaitGroup
			mu sync.Mutex
		)
		for i, n := range sizes {
			for _, id := range []string{ids[0], ids[1+i]} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					ps := batchPayloads(fmt.Sprintf("par%s-%d", id, n), n)
					first, err := s.AppendOutboxBatch(ctx, id, ps, created)
					if err != nil {
						t.Errorf("batch of %d: %v", n, err)
						return
					}
					mu.Lock()
					all = append(all, made{id, first, ps})
					mu.Unlock()
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				p := []byte(fmt.Sprintf("single-%d", i))
				seq, err := s.AppendOutbox(ctx, ids[0], p, created)
				if err != nil {
					t.Errorf("single append: %v", err)
					return
				}
				mu.Lock()
				all = append(all, made{ids[0], seq, [][]byte{p}})
				mu.Unlock()
			}()
		}
		wg.Wait()
		total := map[string]int{}
		for _, m := range all {
			total[m.id] += len(m.payloads)
		}
		stored := map[string][]tether.Message{}
		for _, id := range ids {
			msgs := listAll(t, ctx, s, id)
			if len(msgs) != total[id] {
				t.Fatalf("%s holds %d messages, want %d", id, len(msgs), total[id])
			}
			for i, m := range msgs {
				if m.Seq != int64(i+1) {
					t.Fatalf("%s: message %d numbered %d", id, i, m.Seq)
				}
			}
			stored[id] = msgs
		}
		for _, m := range all {
			checkBatch(t, stored[m.id], m.first, m.payloads, created)
		}

		// Refused batches store nothing and leave no gap in the numbers.
		if _, err := s.AppendOutboxBatch(ctx, "no-such-connection", batchPayloads("x", 150), created); tether.ErrorCode(err) != tether.CodeNotFound {
			t.Fatalf("batch to a missing connection: %v, want CodeNotFound", err)
		}
		if _, err := s.AppendOutboxBatch(ctx, ids[0], nil, created); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("empty batch: %v, want CodeInvalid", err)
		}
		c, err := s.GetConnection(ctx, ids[1])
		if err != nil {
			t.Fatal(err)
		}
		c.Status, c.UpdatedAt = tether.StatusDeleted, c.UpdatedAt.Add(time.Second)
		if err := s.UpdateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AppendOutboxBatch(ctx, ids[1], batchPayloads("y", 101), created); tether.ErrorCode(err) != tether.CodeNotConnected {
			t.Fatalf("batch to a deleted connection: %v, want CodeNotConnected", err)
		}
		if msgs := listAll(t, ctx, s, ids[1]); len(msgs) != 0 {
			t.Fatalf("deleted connection holds %d messages", len(msgs))
		}
		first, err := s.AppendOutboxBatch(ctx, ids[0], [][]byte{nil, nil, nil}, created)
		if err != nil || first != int64(total[ids[0]]+1) {
			t.Fatalf("batch after refusals: %d, %v; want %d", first, err, total[ids[0]]+1)
		}
	})
}

// Batches and single appends made with a delivery's context run in its
// transaction: numbered after the outbox's messages, visible inside it,
// undone with a failing message (the numbers are taken again after),
// committed with a successful one; a refused batch inside fails alone and
// leaves the transaction usable. Appends from other goroutines, outside
// the delivery, number their messages around the delivery's.
func TestGroupBatchInDelivery(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		key := testKey(t)
		s := newStore(t, db, d, key)
		other := newStore(t, db, d, key)
		ids := createConns(t, ctx, s, 2)
		a, gone := ids[0], ids[1]
		c, err := s.GetConnection(ctx, gone)
		if err != nil {
			t.Fatal(err)
		}
		c.Status, c.UpdatedAt = tether.StatusDeleted, c.UpdatedAt.Add(time.Second)
		if err := s.UpdateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AppendOutboxBatch(ctx, a, [][]byte{[]byte("before-1"), []byte("before-2")}, time.Now()); err != nil {
			t.Fatal(err)
		}
		msg := func(seq int64) []tether.Message { return []tether.Message{{ConnectionID: a, Seq: seq}} }
		inside := func(ctx context.Context, tag string) error {
			first, err := s.AppendOutboxBatch(ctx, a, batchPayloads(tag, 150), time.Now())
			if err != nil || first != 3 {
				return fmt.Errorf("batch in the delivery: %d, %v; want 3", first, err)
			}
			if _, err := other.AppendOutboxBatch(ctx, gone, batchPayloads(tag, 2), time.Now()); tether.ErrorCode(err) != tether.CodeNotConnected {
				return fmt.Errorf("batch to a deleted connection in the delivery: %v, want CodeNotConnected", err)
			}
			if _, err := s.AppendOutboxBatch(ctx, "no-such-connection", batchPayloads(tag, 2), time.Now()); tether.ErrorCode(err) != tether.CodeNotFound {
				return fmt.Errorf("batch to a missing connection in the delivery: %v, want CodeNotFound", err)
			}
			seq, err := other.AppendOutbox(ctx, a, []byte(tag+"-single"), time.Now())
			if err != nil || seq != 153 {
				return fmt.Errorf("append in the delivery: %d, %v; want 153", seq, err)
			}
			msgs, err := s.ListOutbox(ctx, a, 0, 1000)
			if err != nil || len(msgs) != 153 {
				return fmt.Errorf("the delivery sees %d messages (%v), want 153", len(msgs), err)
			}
			return nil
		}
		boom := errors.New("receiver failed")
		cursor, err := s.DeliverInbox(ctx, a, 0, msg(1), func(ctx context.Context, m tether.Message) error {
			if err := inside(ctx, "undone"); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) || cursor != 0 {
			t.Fatalf("failing delivery: %d, %v", cursor, err)
		}
		if msgs := listAll(t, ctx, s, a); len(msgs) != 2 {
			t.Fatalf("after the failed delivery the outbox holds %d messages, want 2", len(msgs))
		}
		cursor, err = s.DeliverInbox(ctx, a, 0, msg(1), func(ctx context.Context, m tether.Message) error {
			return inside(ctx, "kept")
		})
		if err != nil || cursor != 1 {
			t.Fatalf("delivery: %d, %v", cursor, err)
		}
		msgs := listAll(t, ctx, s, a)
		if len(msgs) != 153 {
			t.Fatalf("after the delivery the outbox holds %d messages, want 153", len(msgs))
		}
		checkBatch(t, msgs, 3, batchPayloads("kept", 150), msgs[2].Created)
		if string(msgs[152].Payload) != "kept-single" {
			t.Fatalf("message 153 is %q", msgs[152].Payload)
		}

		// Appends outside the delivery while it runs. On SQLite, with one
		// connection, they wait for it to commit.
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			outs = map[string]int64{}
		)
		out := func(i int) {
			defer wg.Done()
			p := fmt.Sprintf("out-%d", i)
			first, err := s.AppendOutboxBatch(ctx, a, [][]byte{[]byte(p + "-a"), []byte(p + "-b")}, time.Now())
			if err != nil {
				t.Errorf("append outside the delivery: %v", err)
				return
			}
			mu.Lock()
			outs[p+"-a"], outs[p+"-b"] = first, first+1
			mu.Unlock()
		}
		cursor, err = s.DeliverInbox(ctx, a, 1, msg(2), func(dctx context.Context, m tether.Message) error {
			for i := range 8 {
				wg.Add(1)
				go out(i)
			}
			for i := range 5 {
				first, err := s.AppendOutboxBatch(dctx, a, [][]byte{[]byte(fmt.Sprintf("in-%d-a", i)), []byte(fmt.Sprintf("in-%d-b", i))}, time.Now())
				if err != nil {
					return err
				}
				mu.Lock()
				outs[fmt.Sprintf("in-%d-a", i)], outs[fmt.Sprintf("in-%d-b", i)] = first, first+1
				mu.Unlock()
			}
			return nil
		})
		if err != nil || cursor != 2 {
			t.Fatalf("delivery: %d, %v", cursor, err)
		}
		wg.Wait()
		msgs = listAll(t, ctx, s, a)
		if len(msgs) != 153+len(outs) {
			t.Fatalf("outbox holds %d messages, want %d", len(msgs), 153+len(outs))
		}
		for i, m := range msgs {
			if m.Seq != int64(i+1) {
				t.Fatalf("message %d numbered %d", i, m.Seq)
			}
			if m.Seq > 153 && outs[string(m.Payload)] != m.Seq {
				t.Fatalf("%q stored as %d, appended as %d", m.Payload, m.Seq, outs[string(m.Payload)])
			}
		}
	})
}

// Many Stores on one SQLite database with a single connection append at
// once (singles and batches, to connections they share) beside
// deliveries that append in their transactions through another Store:
// every call returns before the deadline, and every message is stored
// under its number.
func TestGroupManyStoresOneSQLite(t *testing.T) {
	db, _ := openSQLite(t)
	d := sqlstore.SQLite
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	key := testKey(t)
	stores := make([]*sqlstore.Store, 6)
	for i := range stores {
		stores[i] = newStore(t, db, d, key)
	}
	ids := createConns(t, ctx, stores[0], 3)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		want = map[string]int64{} // payload -> number
	)
	record := func(payloads [][]byte, first int64) {
		mu.Lock()
		defer mu.Unlock()
		for i, p := range payloads {
			want[string(p)] = first + int64(i)
		}
	}
	for si, s := range stores {
		for g := range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 15 {
					// Each Store's writers cover the connections in its
					// own order.
					id := ids[(si+g+j)%len(ids)]
					n := 1 + (g+j)%3
					payloads := make([][]byte, n)
					for i := range payloads {
						payloads[i] = []byte(fmt.Sprintf("s%d-g%d-j%d-%d", si, g, j, i))
					}
					first, err := appendVia(ctx, s, id, payloads, n > 1)
					if err != nil {
						t.Errorf("store %d: %v", si, err)
						return
					}
					record(payloads, first)
				}
			}()
		}
	}
	// Deliveries on the first connection's inbox, appending to the
	// others in their transactions.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := range 10 {
			s := stores[k%len(stores)]
			var in [][][]byte
			var firsts []int64
			_, err := s.DeliverInbox(ctx, ids[0], int64(k), []tether.Message{{ConnectionID: ids[0], Seq: int64(k + 1)}}, func(dctx context.Context, m tether.Message) error {
				for _, id := range ids[1:] {
					ps := [][]byte{[]byte(fmt.Sprintf("d%d-%s-a", k, id)), []byte(fmt.Sprintf("d%d-%s-b", k, id))}
					first, err := stores[(k+1)%len(stores)].AppendOutboxBatch(dctx, id, ps, time.Now())
					if err != nil {
						return err
					}
					in, firsts = append(in, ps), append(firsts, first)
				}
				return nil
			})
			if err != nil {
				t.Errorf("delivery %d: %v", k, err)
				return
			}
			for i := range in {
				record(in[i], firsts[i])
			}
		}
	}()
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("the appends did not end before the deadline")
	}
	n := 0
	for _, id := range ids {
		for _, m := range listAll(t, ctx, stores[0], id) {
			if want[string(m.Payload)] != m.Seq {
				t.Fatalf("%q stored as %d, appended as %d", m.Payload, m.Seq, want[string(m.Payload)])
			}
			n++
		}
	}
	if n != len(want) {
		t.Fatalf("%d messages stored, %d appended", n, len(want))
	}
}

// A SQLite Store whose database closes its connections after each use
// (no idle connection kept, or a lifetime of a nanosecond) still works,
// though the statements it prepared were prepared on connections now
// closed: appends, batches, reads, deletion, and deliveries appending in
// their transactions, from several goroutines.
func TestPreparedAfterConnectionsClose(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(db *sql.DB)
	}{
		{"no-idle", func(db *sql.DB) { db.SetMaxIdleConns(0) }},
		{"lifetime", func(db *sql.DB) { db.SetConnMaxLifetime(time.Nanosecond) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			db, _ := openSQLite(t)
			key := testKey(t)
			s := newStore(t, db, sqlstore.SQLite, key)
			ids := createConns(t, ctx, s, 3)
			// Every statement prepared; now the connections go.
			for range 2 {
				if _, err := s.AppendOutbox(ctx, ids[0], []byte("warm"), time.Now()); err != nil {
					t.Fatal(err)
				}
				if _, err := s.ListOutbox(ctx, ids[0], 0, 10); err != nil {
					t.Fatal(err)
				}
			}
			tc.set(db)
			time.Sleep(2 * time.Millisecond)
			before := db.Stats()
			s2 := newStore(t, db, sqlstore.SQLite, key)
			var (
				wg   sync.WaitGroup
				mu   sync.Mutex
				want = map[string]int64{}
			)
			for g := range 6 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					st := []*sqlstore.Store{s, s2}[g%2]
					for j := range 20 {
						id := ids[(g+j)%2]
						p := []byte(fmt.Sprintf("g%d-j%d", g, j))
						var (
							first int64
							err   error
							ps    = [][]byte{p}
						)
						if j%3 == 0 {
							ps = [][]byte{p, append(p, '+')}
							first, err = st.AppendOutboxBatch(ctx, id, ps, time.Now())
						} else {
							first, err = st.AppendOutbox(ctx, id, p, time.Now())
						}
						if err != nil {
							t.Errorf("append: %v", err)
							return
						}
						if _, err := st.ListOutbox(ctx, id, 0, 5); err != nil {
							t.Errorf("list: %v", err)
							return
						}
						mu.Lock()
						for i, p := range ps {
							want[string(p)] = first + int64(i)
						}
						mu.Unlock()
					}
				}()
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := range 8 {
					st := []*sqlstore.Store{s, s2}[k%2]
					var (
						ps    [][]byte
						first int64
						seq   int64
					)
					_, err := st.DeliverInbox(ctx, ids[2], int64(k), []tether.Message{{ConnectionID: ids[2], Seq: int64(k + 1)}}, func(dctx context.Context, m tether.Message) error {
						ps = [][]byte{[]byte(fmt.Sprintf("d%d-a", k)), []byte(fmt.Sprintf("d%d-b", k))}
						var err error
						if first, err = st.AppendOutboxBatch(dctx, ids[2], ps, time.Now()); err != nil {
							return err
						}
						if seq, err = st.AppendOutbox(dctx, ids[2], []byte(fmt.Sprintf("d%d-c", k)), time.Now()); err != nil {
							return err
						}
						_, err = st.InboxCursor(dctx, ids[2])
						return err
					})
					if err != nil {
						t.Errorf("delivery %d: %v", k, err)
						return
					}
					mu.Lock()
					want[string(ps[0])], want[string(ps[1])], want[fmt.Sprintf("d%d-c", k)] = first, first+1, seq
					mu.Unlock()
				}
			}()
			wg.Wait()
			after := db.Stats()
			if closed := after.MaxIdleClosed + after.MaxLifetimeClosed + after.MaxIdleTimeClosed - before.MaxIdleClosed - before.MaxLifetimeClosed - before.MaxIdleTimeClosed; closed < 10 {
				t.Fatalf("only %d connections were closed", closed)
			}
			if cur, err := s.InboxCursor(ctx, ids[2]); err != nil || cur != 8 {
				t.Fatalf("inbox cursor %d, %v; want 8", cur, err)
			}
			n := 0
			for _, id := range ids {
				for _, m := range listAll(t, ctx, s2, id) {
					if string(m.Payload) == "warm" {
						continue
					}
					if want[string(m.Payload)] != m.Seq {
						t.Fatalf("%q stored as %d, appended as %d", m.Payload, m.Seq, want[string(m.Payload)])
					}
					n++
				}
			}
			if n != len(want) {
				t.Fatalf("%d messages stored, %d appended", n, len(want))
			}
			c, err := s2.GetConnection(ctx, ids[0])
			if err != nil {
				t.Fatal(err)
			}
			c.Status, c.UpdatedAt = tether.StatusDeleted, c.UpdatedAt.Add(time.Second)
			if err := s2.UpdateConnection(ctx, c); err != nil {
				t.Fatal(err)
			}
			if _, err := s.AppendOutbox(ctx, ids[0], []byte("late"), time.Now()); tether.ErrorCode(err) != tether.CodeNotConnected {
				t.Fatalf("append after deletion: %v", err)
			}
			if msgs := listAll(t, ctx, s, ids[0]); len(msgs) != 0 {
				t.Fatalf("deleted connection holds %d messages", len(msgs))
			}
		})
	}
}

// Node.SendBatch and Node.Send at once on one connection: the numbers
// SendBatch returns are consecutive and name its payloads; an empty batch
// stores nothing; a batch with one payload over MaxPayload stores none;
// a batch on a deleted connection is refused with CodeNotConnected.
func TestNodeSendBatchConcurrent(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s := newStore(t, db, d, testKey(t))
		node, err := tether.Open(ctx, tether.Config{Store: s, MaxPayload: 1000})
		if err != nil {
			t.Fatal(err)
		}
		ids := createConns(t, ctx, s, 2)
		id := ids[0]
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			want = map[string]int64{}
		)
		for g := range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 10 {
					if g%3 == 0 {
						p := fmt.Sprintf("send-%d-%d", g, j)
						seq, err := node.Send(ctx, id, []byte(p))
						if err != nil {
							t.Errorf("send: %v", err)
							return
						}
						mu.Lock()
						want[p] = seq
						mu.Unlock()
						continue
					}
					ps := make([][]byte, 1+(g*j)%120)
					for i := range ps {
						ps[i] = []byte(fmt.Sprintf("batch-%d-%d-%d", g, j, i))
					}
					seqs, err := node.SendBatch(ctx, id, ps)
					if err != nil || len(seqs) != len(ps) {
						t.Errorf("send batch: %v, %d numbers for %d payloads", err, len(seqs), len(ps))
						return
					}
					mu.Lock()
					for i, p := range ps {
						if i > 0 && seqs[i] != seqs[i-1]+1 {
							t.Errorf("send batch numbers %v are not consecutive", seqs)
						}
						want[string(p)] = seqs[i]
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if seqs, err := node.SendBatch(ctx, id, nil); err != nil || seqs != nil {
			t.Fatalf("empty batch: %v, %v", seqs, err)
		}
		big := [][]byte{[]byte("ok"), make([]byte, 1001)}
		if _, err := node.SendBatch(ctx, id, big); tether.ErrorCode(err) != tether.CodeTooLarge {
			t.Fatalf("batch with a payload over the limit: %v, want CodeTooLarge", err)
		}
		msgs := listAll(t, ctx, s, id)
		if len(msgs) != len(want) {
			t.Fatalf("%d messages stored, %d sent", len(msgs), len(want))
		}
		for i, m := range msgs {
			if m.Seq != int64(i+1) || want[string(m.Payload)] != m.Seq {
				t.Fatalf("%q stored as %d, sent as %d", m.Payload, m.Seq, want[string(m.Payload)])
			}
		}
		c, err := s.GetConnection(ctx, ids[1])
		if err != nil {
			t.Fatal(err)
		}
		c.Status, c.UpdatedAt = tether.StatusDeleted, c.UpdatedAt.Add(time.Second)
		if err := s.UpdateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		if _, err := node.SendBatch(ctx, ids[1], [][]byte{[]byte("a"), []byte("b")}); tether.ErrorCode(err) != tether.CodeNotConnected {
			t.Fatalf("batch on a deleted connection: %v, want CodeNotConnected", err)
		}
	})
}

// inAppendGroup counts the goroutines inside an append of the Store: the
// one that runs it and those queued.
func inAppendGroup() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "sqlstore.(*Store).appendGroup(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

type pendingAppend struct {
	cancel context.CancelFunc
	done   chan struct{}
	first  int64
	err    error
}

// Cancellation, step by step, with the database's only connection held
// so that appends wait: a queued append whose context ends returns at
// once with its context's error and is not stored; a running append
// whose context ends fails and is not stored, and the appends queued
// behind it go on in one transaction; that transaction is not abandoned
// when its leader's and another member's contexts end while others'
// live (all are stored, numbered in their order, the cancelled ones
// included, and return their numbers); and it is abandoned, storing
// nothing, once every member's context has ended.
func TestGroupCancelTakenAndQueued(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		db.SetMaxOpenConns(1)
		s := newStore(t, db, d, testKey(t))
		ids := createConns(t, ctx, s, 1)
		id := ids[0]
		if n := inAppendGroup(); n != 0 {
			t.Fatalf("%d appends running before the test", n)
		}
		start := func(payloads ...string) *pendingAppend {
			actx, acancel := context.WithCancel(ctx)
			p := &pendingAppend{cancel: acancel, done: make(chan struct{})}
			before := inAppendGroup()
			go func() {
				defer close(p.done)
				if len(payloads) == 1 {
					p.first, p.err = s.AppendOutbox(actx, id, []byte(payloads[0]), time.Now())
					return
				}
				ps := make([][]byte, len(payloads))
				for i, x := range payloads {
					ps[i] = []byte(x)
				}
				p.first, p.err = s.AppendOutboxBatch(actx, id, ps, time.Now())
			}()
			waitUntil(t, "an append to queue", func() bool { return inAppendGroup() == before+1 })
			return p
		}
		finished := func(p *pendingAppend) {
			t.Helper()
			select {
			case <-p.done:
			case <-time.After(10 * time.Second):
				t.Fatal("an append did not return within 10s")
			}
		}
		wantCtxErr := func(name string, p *pendingAppend) {
			t.Helper()
			finished(p)
			if !errors.Is(p.err, context.Canceled) || tether.ErrorCode(p.err) != tether.CodeUnavailable {
				t.Fatalf("%s: %d, %v; want its context's error", name, p.first, p.err)
			}
		}

		// Phase 1.
		hold, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		waits := db.Stats().WaitCount
		lead := start("lead")
		waitUntil(t, "the leader to wait for the connection", func() bool { return db.Stats().WaitCount == waits+1 })
		f1 := start("f1")
		f2 := start("f2")
		f3 := start("f3-a", "f3-b", "f3-c")
		f4 := start("f4")
		f2.cancel()
		wantCtxErr("queued append cancelled", f2)
		lead.cancel()
		wantCtxErr("running append cancelled", lead)
		// f1 leads f1, f3 and f4 in one transaction, waiting for the
		// connection.
		waitUntil(t, "the next leader to wait for the connection", func() bool { return db.Stats().WaitCount == waits+2 })
		f1.cancel()
		f3.cancel()
		hold.Close()
		for i, c := range []struct {
			name  string
			p     *pendingAppend
			first int64
		}{{"f1", f1, 1}, {"f3", f3, 2}, {"f4", f4, 5}} {
			finished(c.p)
			if c.p.err != nil || c.p.first != c.first {
				t.Fatalf("append %d (%s) in the shared transaction: %d, %v; want %d", i, c.name, c.p.first, c.p.err, c.first)
			}
		}
		wantPayloads(t, s, id, "f1", "f3-a", "f3-b", "f3-c", "f4")

		// Phase 2: every member's context ends.
		hold, err = db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		waits = db.Stats().WaitCount
		lead = start("lead2")
		waitUntil(t, "the leader to wait for the connection", func() bool { return db.Stats().WaitCount == waits+1 })
		g1 := start("g1")
		g2 := start("g2-a", "g2-b")
		lead.cancel()
		wantCtxErr("running append cancelled", lead)
		waitUntil(t, "the next leader to wait for the connection", func() bool { return db.Stats().WaitCount == waits+2 })
		g2.cancel()
		g1.cancel()
		wantCtxErr("leader of an abandoned transaction", g1)
		wantCtxErr("member of an abandoned transaction", g2)
		hold.Close()
		wantPayloads(t, s, id, "f1", "f3-a", "f3-b", "f3-c", "f4")
		if seq, err := s.AppendOutbox(ctx, id, []byte("after"), time.Now()); err != nil || seq != 6 {
			t.Fatalf("append after: %d, %v; want 6", seq, err)
		}
		waitUntil(t, "no append to run", func() bool { return inAppendGroup() == 0 })
	})
}
