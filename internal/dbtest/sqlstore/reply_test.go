package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
)

// replyChild is a private instance on sqlstore whose Receiver answers
// every message with node.Send on the same connection, with the context
// it was given: the reply joins the delivery's transaction. It prints
// START <inbox cursor> once it runs, and, in its final run (CHILD_FINAL),
// DONE once it has taken CHILD_WANT messages and its outbox is empty.
func replyChild(ctx context.Context, db *sql.DB, d sqlstore.Dialect, sl *tether.Sealer) int {
	store, err := sqlstore.New(ctx, db, d, sqlstore.Config{Sealer: sl})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	var node *tether.Node
	recv := tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
		_, err := node.Send(ctx, m.ConnectionID, replyTo(m.Seq, string(m.Payload)))
		return err
	})
	node, err = openChildNode(ctx, store, recv, "reply-child")
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	c, err := childConnection(ctx, node)
	if err != nil {
		fmt.Println("ERR connection", err)
		return 1
	}
	cursor, err := store.InboxCursor(ctx, c.ID)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = node.Run(runCtx) }()
	defer func() { stop(); wg.Wait() }()
	fmt.Println("START", cursor)
	if os.Getenv("CHILD_FINAL") == "" {
		select {} // until killed
	}
	want, _ := strconv.ParseInt(os.Getenv("CHILD_WANT"), 10, 64)
	for {
		cursor, err := store.InboxCursor(ctx, c.ID)
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		pending, err := store.ListOutbox(ctx, c.ID, 0, 1)
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		if cursor >= want && len(pending) == 0 {
			fmt.Println("DONE")
			return 0
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func replyTo(seq int64, request string) []byte {
	return []byte(fmt.Sprintf("reply to %d: %s", seq, request))
}

// payloadLog is a Receiver recording the payloads of one connection in
// the order it gets them.
type payloadLog struct {
	mu     sync.Mutex
	seqs   []int64
	got    []string
	notify chan struct{}
}

func newPayloadLog() *payloadLog { return &payloadLog{notify: make(chan struct{}, 1)} }

func (l *payloadLog) Receive(_ context.Context, m tether.Message) error {
	l.mu.Lock()
	l.seqs = append(l.seqs, m.Seq)
	l.got = append(l.got, string(m.Payload))
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return nil
}

func (l *payloadLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.got)
}

// SECURITY.md 20-22 for a Receiver that answers: a private instance on
// sqlstore replies to every request with Node.Send on the Receiver's
// context while it is killed with SIGKILL at random moments and
// restarted. Every request gets exactly one reply, none is lost or
// doubled, and the replies arrive in the order of the requests: a reply
// is stored if and only if its request is marked delivered.
func TestReplyExactlyOnceAcrossKills(t *testing.T) {
	for _, d := range []sqlstore.Dialect{sqlstore.SQLite, sqlstore.PostgreSQL} {
		t.Run(string(d), func(t *testing.T) {
			dsn, _ := childDB(t, d)
			replyExactlyOnce(t, d, dsn)
		})
	}
}

func replyExactlyOnce(t *testing.T, d sqlstore.Dialect, dsn string) {
	const (
		requests = 300
		kills    = 8
	)
	ctx := context.Background()
	replies := newPayloadLog()
	peer, _ := serveHTTP(t, func(endpoint string) *tether.Node {
		policy := tether.DevelopmentURLPolicy()
		n, err := tether.Open(ctx, tether.Config{
			Store: memstore.New(), Endpoint: endpoint, URLPolicy: policy, Receiver: replies,
			Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
			// Small batches: each poll answer is its own delivery
			// transaction, so kills land between and inside many of them.
			BatchSize: 5,
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	})
	runNodes(t, peer)
	pc, code, err := peer.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Asker", RemoteName: "Answerer", Name: "request and reply"})
	if err != nil {
		t.Fatal(err)
	}
	env := childEnvFor(dsn, d, testKey(t), "CHILD_CODE="+code)
	sent := 0
	send := func(n int) {
		for range n {
			sent++
			if _, err := peer.Send(ctx, pc.ID, []byte(fmt.Sprint("request ", sent))); err != nil {
				t.Fatal(err)
			}
		}
	}
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 11))
	lastStart := int64(-1)
	for run := range kills {
		c := startChild(t, "reply", env...)
		start, _ := strconv.ParseInt(c.expect(t, "START"), 10, 64)
		if start < lastStart {
			t.Fatalf("run %d: the inbox cursor moved back from %d to %d", run, lastStart, start)
		}
		lastStart = start
		send(requests / (kills + 1)) // the connection exists once the first run accepted
		time.Sleep(time.Duration(rng.IntN(250)) * time.Millisecond)
		c.kill(t)
	}
	before := replies.count()
	send(requests - sent)
	final := startChild(t, "reply", append(env, "CHILD_FINAL=1", "CHILD_WANT="+strconv.Itoa(requests))...)
	if start, _ := strconv.ParseInt(final.expect(t, "START"), 10, 64); start < lastStart {
		t.Fatalf("final run: the inbox cursor moved back from %d to %d", lastStart, start)
	}
	final.expect(t, "DONE")
	if err := final.cmd.Wait(); err != nil {
		t.Fatalf("final run: %v", err)
	}
	// The child's outbox is empty: the peer acknowledged every reply, so
	// it has received all there will ever be.
	replies.mu.Lock()
	defer replies.mu.Unlock()
	for i, got := range replies.got {
		n := i + 1
		if want := string(replyTo(int64(n), fmt.Sprint("request ", n))); got != want || replies.seqs[i] != int64(n) {
			t.Fatalf("reply %d (seq %d) is %q, want %q: a reply was lost, doubled or reordered", n, replies.seqs[i], got, want)
		}
	}
	if len(replies.got) != requests {
		t.Fatalf("%d replies to %d requests", len(replies.got), requests)
	}
	t.Logf("%d kills; %d replies had arrived before the final run", kills, before)
}
