package sqlstore_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
)

// replicaSet is n public replicas on one PostgreSQL schema, notified
// through LISTEN, behind a balancer that hands each request to the next
// replica in turn, and private peers (memstore) connected to them, one
// connection each, holding their long-polls through the balancer.
type replicaSet struct {
	replicas []*tether.Node
	ids      []string // the public side's connection to each peer
	in       *tally   // all peers' messages
	t        time.Duration
}

func newReplicaSet(b *testing.B, n, peers int) *replicaSet {
	b.Helper()
	ctx := context.Background()
	dsn := newSchema(b)
	key := testKey(b)
	policy := tether.DevelopmentURLPolicy()
	client := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy})
	rs := &replicaSet{in: &tally{}}
	handlers := make([]http.Handler, n)
	var next atomic.Uint64
	lb := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		handlers[next.Add(1)%uint64(n)].ServeHTTP(w, r)
	}))
	b.Cleanup(lb.Close)
	for i := range n {
		db := openPostgres(b, dsn)
		db.SetMaxIdleConns(recommendedIdle)
		store, err := sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{Sealer: sealer(b, key), Listen: pgListen(dsn, nil)})
		if err != nil {
			b.Fatal(err)
		}
		node, err := tether.Open(ctx, tether.Config{Store: store, Endpoint: lb.URL + "/t", URLPolicy: policy, Transport: client,
			Replica: fmt.Sprint("replica", i), Receiver: &tally{}})
		if err != nil {
			b.Fatal(err)
		}
		rs.replicas = append(rs.replicas, node)
		handlers[i] = httptransport.NewHandler(node, httptransport.HandlerConfig{})
	}
	nodes := append([]*tether.Node(nil), rs.replicas...)
	for i := range peers {
		peer, err := tether.Open(ctx, tether.Config{Store: memstore.New(), URLPolicy: policy, Transport: client, Receiver: rs.in})
		if err != nil {
			b.Fatal(err)
		}
		c, code, err := rs.replicas[i%n].Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: fmt.Sprintf("A to B %d", i)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := peer.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
			b.Fatal(err)
		}
		rs.ids = append(rs.ids, c.ID)
		nodes = append(nodes, peer)
	}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, node := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); _ = node.Run(runCtx) }()
	}
	b.Cleanup(func() { cancel(); wg.Wait() })
	return rs
}

// BenchmarkReplicas measures what public replicas on one PostgreSQL
// deliver to 100 private peers (memstore, each on one connection, polling
// through a balancer that takes turns): one replica, and two, side by
// side in one loop. Each iteration sends a block of 10,000 messages (200
// bytes), 100 to each peer in one SendBatch, each peer's through the
// replica i%n, and waits until all arrived. Metrics: messages per second
// of each, and the ratio two/one.
func BenchmarkReplicas(b *testing.B) {
	const peers, block, size = 100, 10000, 200
	postgresURL(b)
	sets := []*replicaSet{newReplicaSet(b, 1, peers), newReplicaSet(b, 2, peers)}
	b.ResetTimer()
	for i := range b.N {
		for _, rs := range sets {
			start := time.Now()
			done := rs.in.until((i + 1) * block)
			var wg sync.WaitGroup
			for j, id := range rs.ids {
				wg.Add(1)
				go func() {
					defer wg.Done()
					batch := make([][]byte, block/peers)
					for k := range batch {
						batch[k] = stamp(size)
					}
					if _, err := rs.replicas[j%len(rs.replicas)].SendBatch(context.Background(), id, batch); err != nil {
						b.Error(err)
					}
				}()
			}
			wg.Wait()
			<-done
			rs.t += time.Since(start)
		}
	}
	msgs := float64(b.N * block)
	one, two := msgs/sets[0].t.Seconds(), msgs/sets[1].t.Seconds()
	b.ReportMetric(one, "one-msgs/s")
	b.ReportMetric(two, "two-msgs/s")
	b.ReportMetric(two/one, "two/one")
	b.ReportMetric(0, "ns/op")
}
