package sqlstore_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/tethertest"
)

// openChildNode opens the Node of a child process: a private instance on
// store that reaches its peer over real HTTP on loopback, under one
// replica name for every restart so it takes its leases back at once.
func openChildNode(ctx context.Context, store tether.Store, recv tether.Receiver, replica string) (*tether.Node, error) {
	policy := tether.DevelopmentURLPolicy()
	return tether.Open(ctx, tether.Config{
		Store: store, URLPolicy: policy, Receiver: recv,
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		RetryBase: time.Millisecond, RetryMax: 50 * time.Millisecond, PollWait: 2 * time.Second,
		Replica: replica,
	})
}

// childConnection returns the child's only connection, accepting the
// invitation CHILD_CODE on its first run.
func childConnection(ctx context.Context, node *tether.Node) (*tether.Connection, error) {
	conns, _, err := node.List(ctx, tether.ListOptions{})
	if err != nil {
		return nil, err
	}
	if len(conns) > 0 {
		return conns[0], nil
	}
	return node.Accept(ctx, os.Getenv("CHILD_CODE"), tether.AcceptOptions{})
}

// deleteChild is a private instance on sqlstore connected to a public peer.
// It prints CONN <id> <status> once it runs, and obeys lines on stdin:
//
//	send <n>   sends n data messages, then prints SENT <last seq>
//	delete     deletes the connection, then prints DELETED <notice seq>
func deleteChild(ctx context.Context, db *sql.DB, d sqlstore.Dialect, sl *tether.Sealer) int {
	store, err := sqlstore.New(ctx, db, d, sqlstore.Config{Sealer: sl})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	node, err := openChildNode(ctx, store, tether.ReceiverFunc(func(context.Context, tether.Message) error { return nil }), "delete-child")
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	c, err := childConnection(ctx, node)
	if err != nil {
		fmt.Println("ERR connection", err)
		return 1
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = node.Run(runCtx) }()
	defer func() { stop(); wg.Wait() }()
	fmt.Println("CONN", c.ID, c.Status)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		cmd, arg, _ := strings.Cut(in.Text(), " ")
		switch cmd {
		case "send":
			n, _ := strconv.Atoi(arg)
			var seq int64
			for i := range n {
				if seq, err = node.Send(ctx, c.ID, []byte(fmt.Sprint("before the deletion ", i))); err != nil {
					fmt.Println("ERR send", err)
					return 1
				}
			}
			fmt.Println("SENT", seq)
		case "delete":
			deleted, err := node.Delete(ctx, c.ID)
			if err != nil {
				fmt.Println("ERR delete", err)
				return 1
			}
			fmt.Println("DELETED", deleted.NoticeSeq)
		default:
			fmt.Println("ERR unknown command", cmd)
			return 1
		}
	}
	return 0
}

// gate is the peer's HTTP front: while closed it answers every request
// with 503, so nothing reaches the peer's node.
type gate struct {
	h       http.Handler
	closed  atomic.Bool
	refused atomic.Int64
}

func (g *gate) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.closed.Load() {
		g.refused.Add(1)
		http.Error(w, "closed for the test", http.StatusServiceUnavailable)
		return
	}
	g.h.ServeHTTP(w, r)
}

// serveHTTP serves node over HTTP on loopback behind a gate and returns
// the gate and the node's endpoint.
func serveHTTP(t testing.TB, mk func(endpoint string) *tether.Node) (*tether.Node, *gate) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	node := mk("http://" + ln.Addr().String() + "/t")
	g := &gate{h: httptransport.NewHandler(node, httptransport.HandlerConfig{})}
	srv := &http.Server{Handler: g}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return node, g
}

// childDB opens a fresh database for a child process: a SQLite file or a
// PostgreSQL schema. It returns the child's DSN and the test's own handle.
func childDB(t *testing.T, d sqlstore.Dialect) (string, *sql.DB) {
	t.Helper()
	if d == sqlstore.SQLite {
		db, path := openSQLite(t)
		return sqliteDSN(path), db
	}
	dsn := newSchema(t)
	return dsn, openPostgres(t, dsn)
}

// outboxRows returns how many messages, and how many of them control
// messages, a connection's outbox holds, read straight from the database.
func outboxRows(t testing.TB, db *sql.DB, d sqlstore.Dialect, id string) (all, control int) {
	t.Helper()
	rows, err := db.Query(rebind(d, `SELECT control FROM tether_outbox WHERE connection_id = ?`), id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var c bool
		if err := rows.Scan(&c); err != nil {
			t.Fatal(err)
		}
		all++
		if c {
			control++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return all, control
}

// kill ends a child with SIGKILL and waits for it.
func (c *child) kill(t testing.TB) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = c.cmd.Wait()
}

// Delete is durable news: the child deletes a connection while its peer
// cannot be reached, returns at once, and is killed before it could tell
// the peer. Restarted on the same database, it delivers the deletion: the
// peer records "deleted by the partner" (actor remote), and the child's
// outbox empties once the peer has acknowledged the notice. With data
// queued at the deletion, the data are dropped and the notice still goes.
func TestDeleteNoticeSurvivesKill(t *testing.T) {
	for _, d := range []sqlstore.Dialect{sqlstore.SQLite, sqlstore.PostgreSQL} {
		for _, queued := range []int{0, 3} {
			t.Run(fmt.Sprintf("%s/%d queued", d, queued), func(t *testing.T) {
				dsn, db := childDB(t, d)
				deleteNoticeSurvivesKill(t, d, dsn, db, queued)
			})
		}
	}
}

// deliveredWithin bounds how long a notice takes to arrive once the peer
// can be reached: pushes back off for at most 50 ms.
const deliveredWithin = 5 * time.Second

func deleteNoticeSurvivesKill(t *testing.T, d sqlstore.Dialect, dsn string, db *sql.DB, queued int) {
	ctx := context.Background()
	fromChild := newRecvLog()
	peer, front := serveHTTP(t, func(endpoint string) *tether.Node {
		policy := tether.DevelopmentURLPolicy()
		n, err := tether.Open(ctx, tether.Config{
			Store: memstore.New(), Endpoint: endpoint, URLPolicy: policy, Receiver: fromChild,
			Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		})
		if err != nil {
			t.Fatal(err)
		}
		return n
	})
	runNodes(t, peer)
	pc, code, err := peer.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Peer", RemoteName: "Child", Name: "delete test"})
	if err != nil {
		t.Fatal(err)
	}
	env := childEnvFor(dsn, d, testKey(t), "CHILD_CODE="+code)

	// First run: the connection works.
	c := startChild(t, "delete", env...)
	id, status, _ := strings.Cut(c.expect(t, "CONN"), " ")
	if status != string(tether.StatusActive) {
		t.Fatalf("the child's connection is %s after accepting", status)
	}
	c.send(t, "send 1")
	c.expect(t, "SENT")
	fromChild.waitFor(t, pc.ID, 1)

	// The peer cannot be reached: the child queues data (or not), deletes,
	// and is killed as soon as Delete returned.
	front.closed.Store(true)
	if queued > 0 {
		c.send(t, fmt.Sprint("send ", queued))
		c.expect(t, "SENT")
	}
	c.send(t, "delete")
	noticeSeq, _ := strconv.ParseInt(c.expect(t, "DELETED"), 10, 64)
	c.kill(t)
	if want := int64(1 + queued + 1); noticeSeq != want {
		t.Fatalf("the deletion notice has seq %d, want %d", noticeSeq, want)
	}
	got, err := peer.Get(ctx, pc.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != tether.StatusActive {
		t.Fatalf("the peer's side is %s before the child could reach it: Delete touched the network", got.Status)
	}
	if all, control := outboxRows(t, db, d, id); all != 1 || control != 1 {
		t.Fatalf("after the kill the child's outbox holds %d messages (%d control), want the deletion notice only", all, control)
	}

	// Restarted with the peer reachable, the child tells it.
	front.closed.Store(false)
	c = startChild(t, "delete", env...)
	if _, status, _ := strings.Cut(c.expect(t, "CONN"), " "); status != string(tether.StatusDeleted) {
		t.Fatalf("the restarted child's connection is %s, want deleted", status)
	}
	waitPeerDeleted(t, peer, pc.ID, nil)
	if n := fromChild.count(pc.ID); n != 1 {
		t.Fatalf("the peer received %d data messages, want 1: data queued at the deletion are dropped", n)
	}
	deadline := time.Now().Add(deliveredWithin)
	for {
		all, _ := outboxRows(t, db, d, id)
		if all == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the child's outbox still holds %d messages after the peer recorded the deletion", all)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.kill(t)
}

// waitPeerDeleted waits until the peer's connection id is deleted, by its
// partner, as its last event says. sender, when not nil, says how the
// sender's side is doing.
func waitPeerDeleted(t testing.TB, peer *tether.Node, id string, sender func() string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(deliveredWithin)
	for {
		got, err := peer.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if got.Status == tether.StatusDeleted {
			break
		}
		if time.Now().After(deadline) {
			more := ""
			if sender != nil {
				more = "; " + sender()
			}
			t.Fatalf("the peer's side is still %s %v after it could be reached: the deletion notice was not applied%s", got.Status, deliveredWithin, more)
		}
		time.Sleep(10 * time.Millisecond)
	}
	evs, err := peer.Events(ctx, id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	last := evs[len(evs)-1]
	if last.Type != tether.EventDeleted || last.Actor != tether.ActorRemote || last.Detail != "deleted by the partner" {
		t.Fatalf("the peer's last event is %+v, want deleted by the partner, actor remote", last)
	}
}

// pushedBatch is what a test reads of a push request's body.
type pushedBatch struct {
	Messages []pushedMessage `json:"messages"`
}

type pushedMessage struct {
	Control bool `json:"control"`
}

// A deletion drops the data messages not yet acknowledged, so its notice
// follows a gap in the sequence numbers; the peer still applies it, and
// the outbox empties. No process is killed here.
func TestDeleteNoticeAfterDroppedData(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		net := tethertest.NewNetwork()
		t.Cleanup(net.Close)
		const endpoint = "https://peer.test/t"
		fromA := newRecvLog()
		peer, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: net.Transport("peer"), Endpoint: endpoint, Receiver: fromA})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(net.Listen(endpoint, peer))
		store := newStore(t, db, d, testKey(t))
		a, err := tether.Open(ctx, tether.Config{Store: store, Transport: net.Transport("a"), Receiver: newRecvLog(),
			RetryBase: time.Millisecond, RetryMax: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		pc, code, err := peer.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Peer", RemoteName: "A", Name: "delete test"})
		if err != nil {
			t.Fatal(err)
		}
		ac, err := a.Accept(ctx, code, tether.AcceptOptions{})
		if err != nil {
			t.Fatal(err)
		}
		runNodes(t, a, peer)
		if _, err := a.Send(ctx, ac.ID, []byte("delivered")); err != nil {
			t.Fatal(err)
		}
		fromA.waitFor(t, pc.ID, 1)
		// a's pushes are lost until one carries the notice alone: then a
		// read its outbox after the deletion, and no batch it prepared
		// before (with the data) can still go out.
		var (
			blocked    atomic.Bool
			noticeOnly = make(chan struct{}, 1)
		)
		blocked.Store(true)
		net.Faults(func(from, _ string, req *tether.Request) tethertest.Fault {
			if from != "a" || req.Op != tether.OpPush || !blocked.Load() {
				return tethertest.Fault{}
			}
			var batch pushedBatch
			_ = json.Unmarshal(req.Body, &batch)
			if !slices.ContainsFunc(batch.Messages, func(m pushedMessage) bool { return !m.Control }) {
				select {
				case noticeOnly <- struct{}{}:
				default:
				}
			}
			return tethertest.Fault{Drop: true}
		})
		for range 3 {
			if _, err := a.Send(ctx, ac.ID, []byte("dropped")); err != nil {
				t.Fatal(err)
			}
		}
		deleted, err := a.Delete(ctx, ac.ID)
		if err != nil {
			t.Fatal(err)
		}
		if deleted.NoticeSeq != 5 {
			t.Fatalf("the deletion notice has seq %d, want 5", deleted.NoticeSeq)
		}
		select {
		case <-noticeOnly:
		case <-time.After(deliveredWithin):
			t.Fatal("a never tried to push the deletion notice")
		}
		blocked.Store(false)
		waitPeerDeleted(t, peer, pc.ID, func() string {
			c, err := a.Get(ctx, ac.ID)
			if err != nil {
				return err.Error()
			}
			return fmt.Sprintf("the sender's last error: %q", c.Health.LastError)
		})
		if n := fromA.count(pc.ID); n != 1 {
			t.Fatalf("the peer received %d data messages, want 1", n)
		}
		deadline := time.Now().Add(deliveredWithin)
		for {
			left, err := store.ListOutbox(ctx, ac.ID, 0, 0)
			if err != nil {
				t.Fatal(err)
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the outbox still holds %d messages after the peer recorded the deletion", len(left))
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}
