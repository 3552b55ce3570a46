package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/sqlstore"
)

// durablePair is a public and a private instance, each on a database of its
// own (two SQLite files, or two PostgreSQL schemas), connected over
// loopback HTTP by n connections, both running.
type durablePair struct {
	pub, priv       *tether.Node
	pubIDs, privIDs []string
	pubIn, privIn   *tally
	pubDB, privDB   *sql.DB
}

// tally is a Receiver that counts, and keeps each message's latency (the
// send time travels in the payload's first 8 bytes).
type tally struct {
	mu      sync.Mutex
	n       int
	target  int
	reached chan struct{}
	lat     []time.Duration
}

func (c *tally) Receive(_ context.Context, m tether.Message) error {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if len(m.Payload) >= 8 {
		c.lat = append(c.lat, now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(m.Payload)))))
	}
	if c.reached != nil && c.n >= c.target {
		close(c.reached)
		c.reached = nil
	}
	return nil
}

// until returns a channel closed once n messages in all have arrived.
func (c *tally) until(n int) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	if c.n >= n {
		close(ch)
		return ch
	}
	c.target, c.reached = n, ch
	return ch
}

// recommendedIdle is the idle connections sqlstore's documentation
// recommends keeping on PostgreSQL with 20 open: all of them.
const recommendedIdle = 20

// durableDB opens a fresh database of dialect d for one instance; on
// PostgreSQL with 20 open connections, idle of them kept.
func durableDB(b *testing.B, d sqlstore.Dialect, idle int) *sql.DB {
	if d == sqlstore.SQLite {
		db, _ := openSQLite(b)
		return db
	}
	db := openPostgres(b, newSchema(b))
	db.SetMaxIdleConns(idle)
	return db
}

func newDurablePair(b *testing.B, d sqlstore.Dialect, conns int) *durablePair {
	return newDurablePairIdle(b, d, conns, recommendedIdle)
}

func newDurablePairIdle(b *testing.B, d sqlstore.Dialect, conns, idle int) *durablePair {
	b.Helper()
	ctx := context.Background()
	p := &durablePair{pubIn: &tally{}, privIn: &tally{}}
	policy := tether.DevelopmentURLPolicy()
	open := func(db *sql.DB, endpoint string, in *tally) *tether.Node {
		n, err := tether.Open(ctx, tether.Config{
			Store: newStore(b, db, d, testKey(b)), Endpoint: endpoint, Receiver: in, URLPolicy: policy,
			Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		})
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	p.pubDB = durableDB(b, d, idle)
	var h http.Handler
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	b.Cleanup(srv.Close)
	p.pub = open(p.pubDB, srv.URL+"/t", p.pubIn)
	h = httptransport.NewHandler(p.pub, httptransport.HandlerConfig{})
	p.privDB = durableDB(b, d, idle)
	p.priv = open(p.privDB, "", p.privIn)
	for i := range conns {
		c, code, err := p.pub.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: fmt.Sprintf("A to B %d", i)})
		if err != nil {
			b.Fatal(err)
		}
		pc, err := p.priv.Accept(ctx, code, tether.AcceptOptions{})
		if err != nil {
			b.Fatal(err)
		}
		p.pubIDs, p.privIDs = append(p.pubIDs, c.ID), append(p.privIDs, pc.ID)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, n := range []*tether.Node{p.pub, p.priv} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = n.Run(runCtx) }()
	}
	b.Cleanup(func() { cancel(); wg.Wait() })
	return p
}

// sendBlock sends count stamped payloads of size bytes from n, spread
// evenly over ids: one goroutine per connection, each with SendBatch in
// batches of at most 100.
func sendBlock(b *testing.B, n *tether.Node, ids []string, count, size int) {
	var wg sync.WaitGroup
	per := count / len(ids)
	for _, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left := per; left > 0; left -= 100 {
				batch := make([][]byte, min(left, 100))
				for i := range batch {
					batch[i] = stamp(size)
				}
				if _, err := n.SendBatch(context.Background(), id, batch); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func stamp(size int) []byte {
	p := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(p, uint64(time.Now().UnixNano()))
	return p
}

// plainInserts inserts count rows of the outbox's shape into table, 100
// per transaction, one INSERT statement per row: the database's limit
// for storing these messages.
func plainInserts(b *testing.B, db *sql.DB, d sqlstore.Dialect, table string, from, count, size int) {
	ctx := context.Background()
	insert := rebind(d, `INSERT INTO `+table+` (connection_id, seq, payload, created_ns) VALUES (?, ?, ?, ?)`)
	for start := from; start < from+count; start += 100 {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		for seq := start; seq < min(start+100, from+count); seq++ {
			if _, err := tx.ExecContext(ctx, insert, "conn_plain", seq, stamp(size), time.Now().UnixNano()); err != nil {
				b.Fatal(err)
			}
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
}

func plainTable(b *testing.B, db *sql.DB, d sqlstore.Dialect) string {
	blob := "BLOB"
	if d == sqlstore.PostgreSQL {
		blob = "BYTEA"
	}
	if _, err := db.Exec(`CREATE TABLE plain_outbox (connection_id TEXT NOT NULL, seq BIGINT NOT NULL, payload ` + blob + ` NOT NULL, created_ns BIGINT NOT NULL, PRIMARY KEY (connection_id, seq))`); err != nil {
		b.Fatal(err)
	}
	return "plain_outbox"
}

// BenchmarkDurableThroughput measures durable delivery between two
// instances over loopback HTTP, each on its own database (SQLite files, or
// PostgreSQL schemas), with 1 and with 100 connections. Each iteration
// sends a block of 10,000 messages (200 bytes) from the private side to
// the public one (push) and waits until all were received, then the same
// from the public side to the private one (pull, through its long-poll),
// then inserts the same number of rows into a plain table of the outbox's
// shape on the public side's database, 100 rows per transaction (the
// limit). Metrics: messages per second of each, and push and pull as
// ratios of the limit measured in the same loop.
func BenchmarkDurableThroughput(b *testing.B) {
	for _, conns := range []int{1, 100} {
		b.Run(fmt.Sprintf("%dconn", conns), func(b *testing.B) { durableThroughput(b, conns) })
	}
}

func durableThroughput(b *testing.B, conns int) {
	const block, size = 10000, 200
	benchDialects(b, func(b *testing.B, _ *sql.DB, d sqlstore.Dialect) {
		p := newDurablePair(b, d, conns)
		table := plainTable(b, p.pubDB, d)
		var pushT, pullT, plainT time.Duration
		b.ResetTimer()
		for i := range b.N {
			start := time.Now()
			done := p.pubIn.until((i + 1) * block)
			sendBlock(b, p.priv, p.privIDs, block, size)
			<-done
			t1 := time.Now()
			done = p.privIn.until((i + 1) * block)
			sendBlock(b, p.pub, p.pubIDs, block, size)
			<-done
			t2 := time.Now()
			plainInserts(b, p.pubDB, d, table, i*block, block, size)
			pushT += t1.Sub(start)
			pullT += t2.Sub(t1)
			plainT += time.Since(t2)
		}
		msgs := float64(b.N * block)
		push, pull, plain := msgs/pushT.Seconds(), msgs/pullT.Seconds(), msgs/plainT.Seconds()
		b.ReportMetric(push, "push-msgs/s")
		b.ReportMetric(pull, "pull-msgs/s")
		b.ReportMetric(plain, "plain-rows/s")
		b.ReportMetric(push/plain, "push/plain")
		b.ReportMetric(pull/plain, "pull/plain")
		b.ReportMetric(0, "ns/op")
	})
}

// BenchmarkDurableIdleLatency sends one message at a time from the public
// side to an idle private side (through its long-poll: 10 ms after the
// previous message arrived) and waits until it was received, on SQLite files and on PostgreSQL; beside it, in the same
// loop, one bare HTTP POST round trip on loopback. Metrics: p50 and p99 of
// both, in milliseconds, and the ratio of the p50s.
func BenchmarkDurableIdleLatency(b *testing.B) {
	benchDialects(b, func(b *testing.B, _ *sql.DB, d sqlstore.Dialect) {
		p := newDurablePair(b, d, 1)
		bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			_, _ = w.Write([]byte(`{}`))
		}))
		defer bare.Close()
		client := &http.Client{}
		ctx := context.Background()
		var rtt []time.Duration
		b.ResetTimer()
		for i := range b.N {
			// Idle: the private side has stored the last message, and
			// acknowledged it with the poll it now holds.
			time.Sleep(10 * time.Millisecond)
			done := p.privIn.until(i + 1)
			if _, err := p.pub.Send(ctx, p.pubIDs[0], stamp(64)); err != nil {
				b.Fatal(err)
			}
			<-done
			start := time.Now()
			resp, err := client.Post(bare.URL+"/t", "application/json", bytes.NewReader(make([]byte, 64)))
			if err != nil {
				b.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			rtt = append(rtt, time.Since(start))
		}
		b.StopTimer()
		p.privIn.mu.Lock()
		lat := slices.Clone(p.privIn.lat)
		p.privIn.mu.Unlock()
		p50, rtt50 := percentile(lat, 50), percentile(rtt, 50)
		b.ReportMetric(msf(p50), "p50-ms")
		b.ReportMetric(msf(percentile(lat, 99)), "p99-ms")
		b.ReportMetric(msf(rtt50), "http-p50-ms")
		b.ReportMetric(msf(percentile(rtt, 99)), "http-p99-ms")
		b.ReportMetric(float64(p50)/float64(rtt50), "p50/http")
		b.ReportMetric(0, "ns/op")
	})
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

// BenchmarkDurablePool measures the pool settings on PostgreSQL: 20 open
// connections with 10 kept idle (database/sql closes the others after
// each burst, and opens new ones at the next) and with all 20 kept, side
// by side in one loop, 100 connections, blocks of 10,000 messages pushed
// and then pulled as in BenchmarkDurableThroughput. Metrics: messages per
// second and database connections closed for being idle (then reopened)
// per second, for each, and the ratio of the throughputs.
func BenchmarkDurablePool(b *testing.B) {
	const block, size = 10000, 200
	postgresURL(b)
	type pool struct {
		p       *durablePair
		t       time.Duration
		closed0 int64
	}
	pools := []*pool{{p: newDurablePairIdle(b, sqlstore.PostgreSQL, 100, 10)}, {p: newDurablePairIdle(b, sqlstore.PostgreSQL, 100, 20)}}
	closed := func(p *durablePair) int64 { return p.pubDB.Stats().MaxIdleClosed + p.privDB.Stats().MaxIdleClosed }
	for _, pl := range pools {
		pl.closed0 = closed(pl.p)
	}
	b.ResetTimer()
	for i := range b.N {
		for _, pl := range pools {
			start := time.Now()
			done := pl.p.pubIn.until((i + 1) * block)
			sendBlock(b, pl.p.priv, pl.p.privIDs, block, size)
			<-done
			done = pl.p.privIn.until((i + 1) * block)
			sendBlock(b, pl.p.pub, pl.p.pubIDs, block, size)
			<-done
			pl.t += time.Since(start)
		}
	}
	msgs := float64(2 * b.N * block)
	r10, r20 := msgs/pools[0].t.Seconds(), msgs/pools[1].t.Seconds()
	b.ReportMetric(r10, "idle10-msgs/s")
	b.ReportMetric(r20, "idle20-msgs/s")
	b.ReportMetric(float64(closed(pools[0].p)-pools[0].closed0)/pools[0].t.Seconds(), "idle10-reopened/s")
	b.ReportMetric(float64(closed(pools[1].p)-pools[1].closed0)/pools[1].t.Seconds(), "idle20-reopened/s")
	b.ReportMetric(r20/r10, "idle20/idle10")
	b.ReportMetric(0, "ns/op")
}
