package sqlstore_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
)

// benchDialects runs fn on a SQLite file and, when TETHER_POSTGRES_URL is
// set, on a PostgreSQL schema.
func benchDialects(b *testing.B, fn func(b *testing.B, db *sql.DB, d sqlstore.Dialect)) {
	b.Run("sqlite", func(b *testing.B) {
		db, _ := openSQLite(b)
		fn(b, db, sqlstore.SQLite)
	})
	b.Run("postgres", func(b *testing.B) {
		fn(b, openPostgres(b, newSchema(b)), sqlstore.PostgreSQL)
	})
}

// BenchmarkOutbox measures Node.Send as a host calls it: 8 goroutines
// sending at once, 50 messages each, on one connection (each Send reads the
// connection, then appends; concurrent appends share commits), then one
// AckOutbox of them all (what a sender does when the peer has them);
// beside it, in the same loop, 8 goroutines inserting the same rows with
// plain database/sql INSERTs, one statement each, into a table of the same
// shape (200-byte payloads). Metrics: messages per second for each, and
// their ratio.
func BenchmarkOutbox(b *testing.B) {
	const writers, each = 8, 50
	benchDialects(b, func(b *testing.B, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(b, db, d, testKey(b))
		c := storetest.NewConnection(1)
		if err := s.CreateConnection(ctx, c); err != nil {
			b.Fatal(err)
		}
		node, err := tether.Open(ctx, tether.Config{Store: s})
		if err != nil {
			b.Fatal(err)
		}
		table := plainTable(b, db, d)
		insert := rebind(d, `INSERT INTO `+table+` (connection_id, seq, payload, created_ns) VALUES (?, ?, ?, ?)`)
		payload := make([]byte, 200)
		concurrently := func(fn func(w, i int) error) {
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range each {
						if err := fn(w, i); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		}
		var tetherTime, plainTime time.Duration
		b.ResetTimer()
		for n := range b.N {
			start := time.Now()
			concurrently(func(int, int) error {
				_, err := node.Send(ctx, c.ID, payload)
				return err
			})
			if err := s.AckOutbox(ctx, c.ID, math.MaxInt64); err != nil {
				b.Fatal(err)
			}
			mid := time.Now()
			concurrently(func(w, i int) error {
				_, err := db.ExecContext(ctx, insert, c.ID, (n*writers+w)*each+i, payload, time.Now().UnixNano())
				return err
			})
			tetherTime += mid.Sub(start)
			plainTime += time.Since(mid)
		}
		msgs := float64(b.N * writers * each)
		tr, pr := msgs/tetherTime.Seconds(), msgs/plainTime.Seconds()
		b.ReportMetric(tr, "tether-msgs/s")
		b.ReportMetric(pr, "plain-msgs/s")
		b.ReportMetric(tr/pr, "ratio")
		b.ReportMetric(0, "ns/op")
	})
}

// fill stores n connections straight into the table, in transactions of
// 1,000 rows, encoded as the Store encodes them; it checks the Store reads
// them back.
func fill(b *testing.B, db *sql.DB, d sqlstore.Dialect, s *sqlstore.Store, n int) []string {
	b.Helper()
	ctx := context.Background()
	ids := make([]string, 0, n)
	for start := 0; start < n; start += 1000 {
		tx, err := db.Begin()
		if err != nil {
			b.Fatal(err)
		}
		var (
			rows []string
			args []any
		)
		for i := start; i < min(start+1000, n); i++ {
			c := storetest.NewConnection(i + 1)
			c.Owner = fmt.Sprintf("team-%d", i%100)
			c.Version = 1
			data, err := json.Marshal(c)
			if err != nil {
				b.Fatal(err)
			}
			rows = append(rows, "(?, ?, ?, ?, 1, ?)")
			args = append(args, c.ID, c.Owner, string(c.Status), string(c.Kind), data)
			ids = append(ids, c.ID)
		}
		if _, err := tx.Exec(rebind(d, `INSERT INTO tether_connections (id, owner, status, kind, version, data) VALUES `+strings.Join(rows, ", ")), args...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	if d == sqlstore.PostgreSQL {
		if _, err := db.Exec(`ANALYZE tether_connections`); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := s.GetConnection(ctx, ids[n/2]); err != nil {
		b.Fatalf("the Store does not read the filled rows: %v", err)
	}
	return ids
}

// BenchmarkLookup100k stores 100,000 connections, then times GetConnection
// of a random ID and ListConnections of one page of 50 after a random ID,
// and of one team's page of 50 (an owner filter), alternating. Metrics: the
// median and p99 of each, in milliseconds.
func BenchmarkLookup100k(b *testing.B) {
	benchDialects(b, func(b *testing.B, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(b, db, d, testKey(b))
		ids := fill(b, db, d, s, 100_000)
		rng := rand.New(rand.NewPCG(1, 2))
		var get, list, owner []time.Duration
		b.ResetTimer()
		for range b.N {
			id := ids[rng.IntN(len(ids))]
			start := time.Now()
			c, err := s.GetConnection(ctx, id)
			if err != nil || c.ID != id {
				b.Fatal(err)
			}
			get = append(get, time.Since(start))

			start = time.Now()
			page, _, err := s.ListConnections(ctx, tether.ListOptions{After: ids[rng.IntN(len(ids)-100)], Limit: 50})
			if err != nil || len(page) != 50 {
				b.Fatalf("list: %d, %v", len(page), err)
			}
			list = append(list, time.Since(start))

			start = time.Now()
			page, _, err = s.ListConnections(ctx, tether.ListOptions{Owner: fmt.Sprintf("team-%d", rng.IntN(100)), Limit: 50})
			if err != nil || len(page) != 50 {
				b.Fatalf("list by owner: %d, %v", len(page), err)
			}
			owner = append(owner, time.Since(start))
		}
		b.StopTimer()
		for _, m := range []struct {
			name string
			d    []time.Duration
		}{{"get", get}, {"list50", list}, {"owner50", owner}} {
			b.ReportMetric(msAt(m.d, 50), m.name+"-p50-ms")
			b.ReportMetric(msAt(m.d, 99), m.name+"-p99-ms")
		}
		b.ReportMetric(0, "ns/op")
	})
}

func msAt(d []time.Duration, p int) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[(len(s)-1)*p/100]) / float64(time.Millisecond)
}
