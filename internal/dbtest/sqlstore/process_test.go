package sqlstore_test

import (
	"bufio"
	"context"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
	"github.com/tetherkit/tether/tethertest"
)

// Child processes: the test binary started again with TETHER_SQLSTORE_CHILD
// set runs one of these roles instead of the tests.
const childEnv = "TETHER_SQLSTORE_CHILD"

func TestMain(m *testing.M) {
	if role := os.Getenv(childEnv); role != "" {
		os.Exit(runChild(role))
	}
	os.Exit(m.Run())
}

// child is a running child process and its lines of output.
type child struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

// startChild starts the test binary in role with env added.
func startChild(t testing.TB, role string, env ...string) *child {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+role), env...)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, lines: make(chan string, 1024)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return c
}

// expect returns the next line with prefix, failing on EOF or timeout.
func (c *child) expect(t testing.TB, prefix string) string {
	t.Helper()
	timeout := time.After(60 * time.Second)
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				t.Fatalf("child ended before printing %q", prefix)
			}
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				return strings.TrimSpace(rest)
			}
		case <-timeout:
			t.Fatalf("child printed no %q in time", prefix)
		}
	}
}

func (c *child) send(t testing.TB, line string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

func runChild(role string) int {
	ctx := context.Background()
	dsn, dialect := os.Getenv("CHILD_DSN"), sqlstore.Dialect(os.Getenv("CHILD_DIALECT"))
	key, _ := hex.DecodeString(os.Getenv("CHILD_KEY"))
	db, err := sql.Open(map[sqlstore.Dialect]string{sqlstore.SQLite: "sqlite", sqlstore.PostgreSQL: "pgx"}[dialect], dsn)
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	if dialect == sqlstore.SQLite {
		db.SetMaxOpenConns(1)
	}
	defer db.Close()
	sl, err := tether.NewSealer("k1", map[string][]byte{"k1": key})
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	in := bufio.NewScanner(os.Stdin)
	switch role {
	case "migrate":
		fmt.Println("READY")
		in.Scan()
		if _, err := sqlstore.New(ctx, db, dialect, sqlstore.Config{Sealer: sl}); err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		fmt.Println("OK")
		return 0
	case "consume":
		store, err := sqlstore.New(ctx, db, dialect, sqlstore.Config{Sealer: sl})
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		fmt.Println("READY")
		for in.Scan() {
			var key string
			var conn int
			if _, err := fmt.Sscanf(in.Text(), "go %s %d", &key, &conn); err != nil {
				fmt.Println("ERR", err)
				return 1
			}
			err := store.ConsumeInvitation(ctx, key, time.Now().Add(time.Hour), storetest.NewConnection(conn))
			switch tether.ErrorCode(err) {
			case "":
				fmt.Println("RESULT WON")
			case tether.CodeAlreadyUsed:
				fmt.Println("RESULT LOST")
			default:
				fmt.Println("RESULT ERR", err)
			}
		}
		return 0
	case "lease":
		store, err := sqlstore.New(ctx, db, dialect, sqlstore.Config{Sealer: sl})
		if err != nil {
			fmt.Println("ERR", err)
			return 1
		}
		ttl, _ := time.ParseDuration(os.Getenv("CHILD_TTL"))
		now := time.Now()
		ok, err := store.Lease(ctx, os.Getenv("CHILD_LEASE"), "replica-that-dies", now, now.Add(ttl))
		if err != nil || !ok {
			fmt.Println("ERR lease", ok, err)
			return 1
		}
		fmt.Println("HELD", now.Add(ttl).UnixNano())
		select {} // until killed
	case "crash":
		return crashChild(ctx, db, dialect, sl)
	case "delete":
		return deleteChild(ctx, db, dialect, sl)
	case "reply":
		return replyChild(ctx, db, dialect, sl)
	}
	fmt.Println("ERR unknown role", role)
	return 1
}

func childEnvFor(dsn string, d sqlstore.Dialect, key []byte, more ...string) []string {
	return append([]string{"CHILD_DSN=" + dsn, "CHILD_DIALECT=" + string(d), "CHILD_KEY=" + hex.EncodeToString(key)}, more...)
}

// Two processes starting at once against one PostgreSQL: one migrates, the
// other waits and proceeds.
func TestMigrateFromTwoProcesses(t *testing.T) {
	for round := range 3 {
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) {
			dsn := newSchema(t)
			key := testKey(t)
			a := startChild(t, "migrate", childEnvFor(dsn, sqlstore.PostgreSQL, key)...)
			b := startChild(t, "migrate", childEnvFor(dsn, sqlstore.PostgreSQL, key)...)
			a.expect(t, "READY")
			b.expect(t, "READY")
			a.send(t, "go")
			b.send(t, "go")
			a.expect(t, "OK")
			b.expect(t, "OK")
			db := openPostgres(t, dsn)
			var n, distinct int
			if err := db.QueryRow(`SELECT COUNT(*), COUNT(DISTINCT version) FROM tether_migrations`).Scan(&n, &distinct); err != nil {
				t.Fatal(err)
			}
			if n != distinct || n < 1 {
				t.Fatalf("%d migrations recorded, %d distinct: applied twice", n, distinct)
			}
		})
	}
}

// SECURITY.md 9: two processes on one PostgreSQL consuming one invitation:
// exactly one wins, round after round.
func TestConsumeFromTwoProcesses(t *testing.T) {
	dsn := newSchema(t)
	key := testKey(t)
	newStore(t, openPostgres(t, dsn), sqlstore.PostgreSQL, key)
	a := startChild(t, "consume", childEnvFor(dsn, sqlstore.PostgreSQL, key)...)
	b := startChild(t, "consume", childEnvFor(dsn, sqlstore.PostgreSQL, key)...)
	a.expect(t, "READY")
	b.expect(t, "READY")
	for round := range 20 {
		code := fmt.Sprintf("inst_x/round-%d", round)
		a.send(t, fmt.Sprintf("go %s %d", code, 2*round+1))
		b.send(t, fmt.Sprintf("go %s %d", code, 2*round+2))
		ra, rb := a.expect(t, "RESULT"), b.expect(t, "RESULT")
		if !(ra == "WON" && rb == "LOST" || ra == "LOST" && rb == "WON") {
			t.Fatalf("round %d: %s and %s, want one WON and one LOST", round, ra, rb)
		}
	}
	var n int
	if err := openPostgres(t, dsn).QueryRow(`SELECT COUNT(*) FROM tether_connections`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 20 {
		t.Fatalf("%d connections for 20 invitations", n)
	}
}

// pgListen is the Config.Listen a host writes for pgx.
func pgListen(dsn string, notified func(string)) func(ctx context.Context, channel string, fn func(string)) error {
	return func(ctx context.Context, channel string, fn func(string)) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			return err
		}
		for {
			n, err := conn.WaitForNotification(ctx)
			if err != nil {
				return err
			}
			if notified != nil {
				notified(n.Payload)
			}
			fn(n.Payload)
		}
	}
}

// recvLog is a Receiver recording (connection, seq) of what it gets.
type recvLog struct {
	mu     sync.Mutex
	seqs   map[string][]int64
	notify chan struct{}
}

func newRecvLog() *recvLog {
	return &recvLog{seqs: map[string][]int64{}, notify: make(chan struct{}, 1)}
}

func (r *recvLog) Receive(_ context.Context, m tether.Message) error {
	r.mu.Lock()
	r.seqs[m.ConnectionID] = append(r.seqs[m.ConnectionID], m.Seq)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
	return nil
}

func (r *recvLog) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seqs[id])
}

func (r *recvLog) waitFor(t testing.TB, id string, n int) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for r.count(id) < n {
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("%s: %d messages received, want %d", id, r.count(id), n)
		}
	}
}

// wantSeqs checks the combined log of several receivers holds 1..n once
// each, each receiver's part in order.
func wantSeqs(t testing.TB, id string, n int, logs ...*recvLog) {
	t.Helper()
	seen := map[int64]int{}
	for _, l := range logs {
		l.mu.Lock()
		prev := int64(0)
		for _, s := range l.seqs[id] {
			if s <= prev {
				t.Fatalf("%s: seq %d after %d", id, s, prev)
			}
			prev = s
			seen[s]++
		}
		l.mu.Unlock()
	}
	for s := int64(1); s <= int64(n); s++ {
		if seen[s] != 1 {
			t.Fatalf("%s: seq %d handed to receivers %d times", id, s, seen[s])
		}
	}
	if len(seen) != n {
		t.Fatalf("%s: %d distinct seqs, want %d", id, len(seen), n)
	}
}

func runNodes(t testing.TB, nodes ...*tether.Node) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Add(1)
		go func() { defer wg.Done(); _ = n.Run(ctx) }()
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
}

type listenFunc = func(ctx context.Context, channel string, fn func(string)) error

// replicas opens n Nodes on one PostgreSQL schema: one instance served by n
// replicas. listen, when not nil, gives replica i its Config.Listen.
func replicas(t testing.TB, dsn string, n int, net *tethertest.Network, endpoint string, listen func(i int) listenFunc, mods ...func(*tether.Config)) ([]*tether.Node, []*recvLog) {
	t.Helper()
	key := testKey(t)
	var nodes []*tether.Node
	var logs []*recvLog
	for i := range n {
		cfg := sqlstore.Config{Sealer: sealer(t, key)}
		if listen != nil {
			cfg.Listen = listen(i)
		}
		store, err := sqlstore.New(context.Background(), openPostgres(t, dsn), sqlstore.PostgreSQL, cfg)
		if err != nil {
			t.Fatal(err)
		}
		log := newRecvLog()
		c := tether.Config{Store: store, Transport: net.Transport(fmt.Sprint("replica", i)), Endpoint: endpoint, Receiver: log,
			RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond}
		for _, m := range mods {
			m(&c)
		}
		node, err := tether.Open(context.Background(), c)
		if err != nil {
			t.Fatal(err)
		}
		nodes, logs = append(nodes, node), append(logs, log)
	}
	return nodes, logs
}

// SECURITY.md 24: with two replicas on one PostgreSQL pushing one outbox,
// each message is in flight on one of them at a time and arrives once; the
// replicas' receivers together get each message once.
func TestReplicasShareOneOutbox(t *testing.T) {
	dsn := newSchema(t)
	net := tethertest.NewNetwork()
	defer net.Close()
	peerLog := newRecvLog()
	peer, err := tether.Open(context.Background(), tether.Config{Store: memstore.New(), Transport: net.Transport("peer"), Endpoint: "https://peer.test/t", Receiver: peerLog})
	if err != nil {
		t.Fatal(err)
	}
	var inFlight, most int
	var mu sync.Mutex
	defer net.Listen("https://peer.test/t", handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		if r.Op == tether.OpPush {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			defer func() { mu.Lock(); inFlight--; mu.Unlock() }()
			time.Sleep(time.Millisecond) // widen the window in which a second push would overlap
		}
		return peer.Handle(ctx, r)
	}))()
	nodes, logs := replicas(t, dsn, 2, net, "", func(int) listenFunc { return pgListen(dsn, nil) }, func(c *tether.Config) { c.BatchSize = 20 })
	pc, code, err := peer.Initiate(context.Background(), tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "P", RemoteName: "R", Name: "P to R"})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := nodes[0].Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runNodes(t, append(nodes, peer)...)
	const n = 400
	for i := range n {
		if _, err := nodes[i%2].Send(context.Background(), rc.ID, []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := peer.Send(context.Background(), pc.ID, []byte("y")); err != nil {
			t.Fatal(err)
		}
	}
	peerLog.waitFor(t, pc.ID, n)
	wantSeqs(t, pc.ID, n, peerLog)
	deadline := time.After(60 * time.Second)
	for logs[0].count(rc.ID)+logs[1].count(rc.ID) < n {
		select {
		case <-logs[0].notify:
		case <-logs[1].notify:
		case <-deadline:
			t.Fatal("the replicas did not receive everything")
		}
	}
	wantSeqs(t, rc.ID, n, logs...)
	mu.Lock()
	defer mu.Unlock()
	if most != 1 {
		t.Fatalf("%d pushes of one outbox were in flight at once, want 1", most)
	}
}

type handlerFunc func(context.Context, *tether.Request) (*tether.Response, error)

func (h handlerFunc) Handle(ctx context.Context, r *tether.Request) (*tether.Response, error) {
	return h(ctx, r)
}

// SECURITY.md 24: a replica killed while holding an outbox's lease; another
// delivers the messages once the lease has run out, and not before.
func TestLeaseOfKilledReplicaRunsOut(t *testing.T) {
	dsn := newSchema(t)
	net := tethertest.NewNetwork()
	defer net.Close()
	peerLog := newRecvLog()
	first := make(chan time.Time, 1)
	peer, err := tether.Open(context.Background(), tether.Config{Store: memstore.New(), Transport: net.Transport("peer"), Endpoint: "https://peer.test/t",
		Receiver: tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
			select {
			case first <- time.Now():
			default:
			}
			return peerLog.Receive(ctx, m)
		})})
	if err != nil {
		t.Fatal(err)
	}
	defer net.Listen("https://peer.test/t", peer)()
	key := testKey(t)
	store, err := sqlstore.New(context.Background(), openPostgres(t, dsn), sqlstore.PostgreSQL, sqlstore.Config{Sealer: sealer(t, key)})
	if err != nil {
		t.Fatal(err)
	}
	survivor, err := tether.Open(context.Background(), tether.Config{Store: store, Transport: net.Transport("survivor")})
	if err != nil {
		t.Fatal(err)
	}
	pc, code, _ := peer.Initiate(context.Background(), tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "P", RemoteName: "R", Name: "P to R"})
	rc, err := survivor.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if _, err := survivor.Send(context.Background(), rc.ID, []byte("queued")); err != nil {
			t.Fatal(err)
		}
	}
	// The other replica takes the outbox's lease and dies holding it.
	dying := startChild(t, "lease", childEnvFor(dsn, sqlstore.PostgreSQL, key, "CHILD_LEASE=outbox/"+rc.ID, "CHILD_TTL=2s")...)
	var untilNS int64
	fmt.Sscan(dying.expect(t, "HELD"), &untilNS)
	if err := dying.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = dying.cmd.Wait()
	runNodes(t, survivor, peer)
	peerLog.waitFor(t, pc.ID, 5)
	wantSeqs(t, pc.ID, 5, peerLog)
	if got := <-first; got.UnixNano() < untilNS {
		t.Fatalf("delivered at %v, before the dead replica's lease ended at %v", got, time.Unix(0, untilNS))
	}
}

// A long-poll held by one replica wakes when another replica stores a
// message: through LISTEN/NOTIFY when the host provides Listen, and
// through the store being re-read every second when it does not.
func TestLongPollWakesAcrossReplicas(t *testing.T) {
	for _, withListen := range []bool{true, false} {
		t.Run(fmt.Sprint("listen ", withListen), func(t *testing.T) {
			dsn := newSchema(t)
			net := tethertest.NewNetwork()
			defer net.Close()
			const endpoint = "https://public.test/t"
			var notified sync.Map
			var listen func(int) listenFunc
			if withListen {
				listen = func(i int) listenFunc {
					if i != 1 {
						return nil
					}
					return pgListen(dsn, func(p string) { notified.Store(p, true) })
				}
			}
			nodes, _ := replicas(t, dsn, 2, net, endpoint, listen, func(c *tether.Config) { c.PollWait = 30 * time.Second })
			// Every request reaches replica 1: it holds the polls.
			polls := make(chan struct{}, 100)
			defer net.Listen(endpoint, handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
				if r.Op == tether.OpPoll {
					select {
					case polls <- struct{}{}:
					default:
					}
				}
				return nodes[1].Handle(ctx, r)
			}))()
			private, privLog, pc, qc := connectPrivate(t, net, nodes[0])
			runNodes(t, nodes[1], private)
			// Replica 0 only stores; it never runs. Each message is sent
			// while the private side's poll is held by replica 1. The
			// first appends may precede replica 1's LISTEN: send until one
			// is notified.
			for i := 1; i <= 50; i++ {
				<-polls
				start := time.Now()
				if _, err := nodes[0].Send(context.Background(), pc.ID, []byte("wake up")); err != nil {
					t.Fatal(err)
				}
				privLog.waitFor(t, qc.ID, i)
				if waited := time.Since(start); waited > 10*time.Second {
					t.Fatalf("the message waited %v: the held poll did not wake (its wait is 30s)", waited)
				}
				if _, ok := notified.Load(pc.ID); ok || !withListen {
					break
				}
			}
			if _, ok := notified.Load(pc.ID); withListen && !ok {
				t.Fatal("replica 1 was not notified of the append")
			}
		})
	}
}

// SECURITY.md 14 across replicas: a request accepted by one replica and
// replayed to another is refused there too.
func TestReplayToAnotherReplicaRefused(t *testing.T) {
	dsn := newSchema(t)
	net := tethertest.NewNetwork()
	defer net.Close()
	const endpoint = "https://public.test/t"
	nodes, logs := replicas(t, dsn, 2, net, endpoint, nil)
	var captured *tether.Request
	defer net.Listen(endpoint, handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		if r.Op == tether.OpPush && captured == nil {
			captured = r
		}
		return nodes[0].Handle(ctx, r)
	}))()
	private, _, pc, qc := connectPrivate(t, net, nodes[0])
	if _, err := private.Send(context.Background(), qc.ID, []byte("once")); err != nil {
		t.Fatal(err)
	}
	runNodes(t, private)
	logs[0].waitFor(t, pc.ID, 1)
	if captured == nil {
		t.Fatal("no push captured")
	}
	_, err := nodes[1].Handle(context.Background(), captured)
	if tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("the replay on the other replica: %v, want refused", err)
	}
	if logs[1].count(pc.ID) != 0 {
		t.Fatal("the replay was delivered")
	}
}

// connectPrivate opens a private instance on memstore and connects it to
// the public initiator; it returns the private node, its receiver's log,
// and the initiator's and the private side's connections.
func connectPrivate(t testing.TB, net *tethertest.Network, initiator *tether.Node) (*tether.Node, *recvLog, *tether.Connection, *tether.Connection) {
	t.Helper()
	log := newRecvLog()
	private, err := tether.Open(context.Background(), tether.Config{Store: memstore.New(), Transport: net.Transport("private"), Receiver: log})
	if err != nil {
		t.Fatal(err)
	}
	pc, code, err := initiator.Initiate(context.Background(), tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
	if err != nil {
		t.Fatal(err)
	}
	qc, err := private.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return private, log, pc, qc
}
