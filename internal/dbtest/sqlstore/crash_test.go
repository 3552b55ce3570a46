package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
)

// crashChild is a private instance on sqlstore that keeps sending to its
// public peer and records what it receives in the database, in the
// transaction that moves its inbox cursor. It prints:
//
//	START <cursor>  its inbox cursor when it started
//	SENT <seq>      after Send returned: that message is durable
//	DONE            (final run only) everything was delivered both ways
func crashChild(ctx context.Context, db *sql.DB, d sqlstore.Dialect, sl *tether.Sealer) int {
	store, err := sqlstore.New(ctx, db, d, sqlstore.Config{Sealer: sl})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS crash_received (seq BIGINT NOT NULL, payload TEXT NOT NULL)`); err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	insert := rebind(d, `INSERT INTO crash_received (seq, payload) VALUES (?, ?)`)
	recv := tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
		_, err := sqlstore.Tx(ctx).ExecContext(ctx, insert, m.Seq, string(m.Payload))
		return err
	})
	policy := tether.DevelopmentURLPolicy()
	node, err := tether.Open(ctx, tether.Config{
		Store: store, URLPolicy: policy, Receiver: recv,
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		RetryBase: time.Millisecond, RetryMax: 50 * time.Millisecond, PollWait: 2 * time.Second,
		Replica: "crash-child", // the same process name after every restart
	})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	conns, _, err := node.List(ctx, tether.ListOptions{})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	var id string
	if len(conns) == 0 {
		c, err := node.Accept(ctx, os.Getenv("CHILD_CODE"), tether.AcceptOptions{})
		if err != nil {
			fmt.Println("ERR accept", err)
			return 1
		}
		id = c.ID
	} else {
		id = conns[0].ID
	}
	cursor, err := store.InboxCursor(ctx, id)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	fmt.Println("START", cursor)
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = node.Run(runCtx) }()
	defer func() { stop(); wg.Wait() }()

	if os.Getenv("CHILD_FINAL") == "" {
		for { // until killed
			seq, err := node.Send(ctx, id, []byte("from child"))
			if err != nil {
				fmt.Println("ERR send", err)
				return 1
			}
			fmt.Println("SENT", seq)
			time.Sleep(time.Millisecond)
		}
	}
	want, _ := strconv.ParseInt(os.Getenv("CHILD_WANT"), 10, 64)
	for {
		cursor, err := store.InboxCursor(ctx, id)
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		pending, err := store.ListOutbox(ctx, id, 0, 1)
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

// SECURITY.md 20-22: a private instance on sqlstore, killed with SIGKILL
// at random points and restarted, over and over, while messages flow both
// ways: no acknowledged message is lost, none reaches a receiver twice, and
// the inbox cursor never moves back.
func TestCrashRecovery(t *testing.T) {
	for _, d := range []sqlstore.Dialect{sqlstore.SQLite, sqlstore.PostgreSQL} {
		t.Run(string(d), func(t *testing.T) {
			var dsn string
			var db *sql.DB
			if d == sqlstore.SQLite {
				var path string
				db, path = openSQLite(t)
				dsn = sqliteDSN(path)
			} else {
				dsn = newSchema(t)
				db = openPostgres(t, dsn)
			}
			crashRecovery(t, d, dsn, db)
		})
	}
}

func crashRecovery(t *testing.T, d sqlstore.Dialect, dsn string, db *sql.DB) {
	const (
		kills    = 22
		toChild  = 1500
		perPause = 60
	)
	ctx := context.Background()
	// The public peer, in this process, never crashes.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fromChild := newRecvLog()
	policy := tether.DevelopmentURLPolicy()
	peer, err := tether.Open(ctx, tether.Config{
		Store: memstore.New(), Endpoint: "http://" + ln.Addr().String() + "/t", URLPolicy: policy, Receiver: fromChild,
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: httptransport.NewHandler(peer, httptransport.HandlerConfig{})}
	go srv.Serve(ln)
	defer srv.Close()
	runNodes(t, peer)
	pc, code, err := peer.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Peer", RemoteName: "Crashy", Name: "crash test"})
	if err != nil {
		t.Fatal(err)
	}
	key := testKey(t)
	env := childEnvFor(dsn, d, key, "CHILD_CODE="+code)

	sentToChild := 0
	send := func(n int) {
		for range n {
			sentToChild++
			if _, err := peer.Send(ctx, pc.ID, []byte(fmt.Sprintf("to child %d", sentToChild))); err != nil {
				t.Fatal(err)
			}
		}
	}
	var maxSent int64
	lastStart := int64(-1)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for run := range kills {
		c := startChild(t, "crash", env...)
		start, _ := strconv.ParseInt(c.expect(t, "START"), 10, 64)
		if start < lastStart {
			t.Fatalf("run %d: the inbox cursor moved back from %d to %d", run, lastStart, start)
		}
		lastStart = start
		send(perPause) // the connection exists once the first run has accepted
		// Let it work for a random while, then kill it mid-flight.
		timer := time.After(time.Duration(20+rng.IntN(200)) * time.Millisecond)
	collect:
		for {
			select {
			case line, ok := <-c.lines:
				if !ok {
					t.Fatalf("run %d: child ended on its own", run)
				}
				var seq int64
				if _, err := fmt.Sscanf(line, "SENT %d", &seq); err == nil {
					maxSent = max(maxSent, seq)
				} else if len(line) >= 3 && line[:3] == "ERR" {
					t.Fatalf("run %d: child: %s", run, line)
				}
			case <-timer:
				break collect
			}
		}
		if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = c.cmd.Wait()
		for line := range c.lines { // what it printed before dying counts
			var seq int64
			if _, err := fmt.Sscanf(line, "SENT %d", &seq); err == nil {
				maxSent = max(maxSent, seq)
			}
		}
	}
	send(toChild - sentToChild)
	final := startChild(t, "crash", append(env, "CHILD_FINAL=1", "CHILD_WANT="+strconv.Itoa(toChild))...)
	if start, _ := strconv.ParseInt(final.expect(t, "START"), 10, 64); start < lastStart {
		t.Fatalf("final run: the inbox cursor moved back from %d to %d", lastStart, start)
	}
	final.expect(t, "DONE")
	if err := final.cmd.Wait(); err != nil {
		t.Fatalf("final run: %v", err)
	}
	if maxSent < 10 {
		t.Fatalf("the child acknowledged only %d sends: the test did not exercise sending", maxSent)
	}

	// Everything the child acknowledged reached the peer, once, in order.
	fromChild.mu.Lock()
	got := append([]int64(nil), fromChild.seqs[pc.ID]...)
	fromChild.mu.Unlock()
	if int64(len(got)) < maxSent {
		t.Fatalf("the peer received %d messages; the child had acknowledged %d", len(got), maxSent)
	}
	for i, s := range got {
		if s != int64(i+1) {
			t.Fatalf("the peer's message %d has seq %d: lost or duplicated", i, s)
		}
	}
	// Everything the peer sent was applied by the child once, in order.
	rows, err := db.Query(`SELECT seq, payload FROM crash_received ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var seq int64
		var payload string
		if err := rows.Scan(&seq, &payload); err != nil {
			t.Fatal(err)
		}
		n++
		if seq != int64(n) || payload != fmt.Sprintf("to child %d", n) {
			t.Fatalf("child's received row %d: seq %d %q: a message was lost or applied twice", n, seq, payload)
		}
	}
	if n != toChild {
		t.Fatalf("the child applied %d messages, want %d", n, toChild)
	}
	t.Logf("%d kills; child acknowledged %d sends, peer received %d; child applied %d", kills, maxSent, len(got), n)
}
