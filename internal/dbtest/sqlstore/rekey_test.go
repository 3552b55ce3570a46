package sqlstore_test

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/tethertest"
)

// applied is a transactional Receiver: it writes each message into a table
// in the delivery's transaction, so the table holds what was applied, in
// the order it was applied, whichever replica applied it.
type applied struct {
	db     *sql.DB
	insert string
}

func newApplied(t testing.TB, db *sql.DB, d sqlstore.Dialect) *applied {
	t.Helper()
	ddl := `CREATE TABLE rekey_applied (id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, payload TEXT NOT NULL)`
	if d == sqlstore.PostgreSQL {
		ddl = `CREATE TABLE rekey_applied (id BIGSERIAL PRIMARY KEY, seq BIGINT NOT NULL, payload TEXT NOT NULL)`
	}
	if _, err := db.Exec(ddl); err != nil {
		t.Fatal(err)
	}
	return &applied{db: db, insert: rebind(d, `INSERT INTO rekey_applied (seq, payload) VALUES (?, ?)`)}
}

func (a *applied) Receive(ctx context.Context, m tether.Message) error {
	_, err := sqlstore.Tx(ctx).ExecContext(ctx, a.insert, m.Seq, string(m.Payload))
	return err
}

func (a *applied) count(t testing.TB) int {
	t.Helper()
	var n int
	if err := a.db.QueryRow(`SELECT COUNT(*) FROM rekey_applied`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// check fails unless the table holds the payloads want, once each, in
// that order, with ascending sequence numbers (notices take numbers too).
func (a *applied) check(t testing.TB, want []string) {
	t.Helper()
	rows, err := a.db.Query(`SELECT seq, payload FROM rekey_applied ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	i, last := 0, int64(0)
	for rows.Next() {
		var seq int64
		var payload string
		if err := rows.Scan(&seq, &payload); err != nil {
			t.Fatal(err)
		}
		if i >= len(want) || seq <= last || payload != want[i] {
			w := "nothing"
			if i < len(want) {
				w = strconv.Quote(want[i])
			}
			t.Fatalf("applied message %d is seq %d %q after seq %d, want %s: lost, doubled or out of order", i+1, seq, payload, last, w)
		}
		i, last = i+1, seq
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if i != len(want) {
		t.Fatalf("%d messages applied, want %d", i, len(want))
	}
}

// watchedStore is a sqlstore.Store that records the failures Nodes write
// into connections' Health, and runs hooks before some calls.
type watchedStore struct {
	*sqlstore.Store
	mu     sync.Mutex
	errors map[string]int
	// beforeList, when set, runs before the next ListOutbox, once.
	beforeList func()
}

func (s *watchedStore) UpdateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	if c.Health.LastError != "" {
		s.mu.Lock()
		if s.errors == nil {
			s.errors = map[string]int{}
		}
		s.errors[c.Health.LastError]++
		s.mu.Unlock()
	}
	return s.Store.UpdateConnection(ctx, c, events...)
}

func (s *watchedStore) ListOutbox(ctx context.Context, id string, after int64, limit int) ([]tether.Message, error) {
	s.mu.Lock()
	f := s.beforeList
	s.beforeList = nil
	s.mu.Unlock()
	if f != nil {
		f()
	}
	return s.Store.ListOutbox(ctx, id, after, limit)
}

// keyFailures returns the recorded failures that say a key was not known
// or did not verify, and all the others.
func (s *watchedStore) keyFailures() (key, other []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for e, n := range s.errors {
		line := fmt.Sprintf("%dx %s", n, e)
		if isKeyFailure(e) {
			key = append(key, line)
		} else {
			other = append(other, line)
		}
	}
	return key, other
}

func isKeyFailure(s string) bool {
	for _, c := range []tether.Code{tether.CodeUnauthenticated, tether.CodeUnknownKey, tether.CodeBadSignature, tether.CodeKeyMismatch} {
		if strings.Contains(s, string(c)) {
			return true
		}
	}
	return strings.Contains(s, "key")
}

// router serves one endpoint with several replicas: it hands requests to
// them in turn (or to one of them when told), and records refusals and
// the key that signed each answer.
type router struct {
	nodes    []*tether.Node
	next     atomic.Uint64
	only     atomic.Int32 // every request to this replica; -1: in turn
	acceptTo atomic.Int32 // accept requests to this replica; -1: in turn

	mu       sync.Mutex
	refusals []string       // key refusals: unauthenticated and the like
	other    map[string]int // other errors and refusals (a poll cut short, ...)
	kids     []map[string]int
}

func newRouter(nodes ...*tether.Node) *router {
	r := &router{nodes: nodes, other: map[string]int{}}
	r.only.Store(-1)
	r.acceptTo.Store(-1)
	for range nodes {
		r.kids = append(r.kids, map[string]int{})
	}
	return r
}

func (r *router) Handle(ctx context.Context, req *tether.Request) (*tether.Response, error) {
	i := int(r.next.Add(1) % uint64(len(r.nodes)))
	if to := r.acceptTo.Load(); to >= 0 && req.Op == tether.OpAccept {
		i = int(to)
	}
	if to := r.only.Load(); to >= 0 {
		i = int(to)
	}
	resp, err := r.nodes[i].Handle(ctx, req)
	code := tether.ErrorCode(err)
	if err == nil && resp.Code != "" {
		code = resp.Code
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case code == "":
		r.kids[i][tokenKeyID(resp.Auth)]++
	case isKeyFailure(string(code)):
		r.refusals = append(r.refusals, fmt.Sprintf("replica %d, %s: %s: %v", i, req.Op, code, err))
	default:
		r.other[fmt.Sprintf("replica %d, %s: %s", i, req.Op, code)]++
	}
	return resp, err
}

// answered returns how many answers replica i signed with key kid.
func (r *router) answered(i int, kid string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.kids[i][kid]
}

// tokenKeyID returns the kid header of a signed token.
func tokenKeyID(auth string) string {
	head, _, _ := strings.Cut(auth, ".")
	b, _ := base64.RawURLEncoding.DecodeString(head)
	var h struct {
		Kid string `json:"kid"`
	}
	_ = json.Unmarshal(b, &h)
	return h.Kid
}

// rekeySide is one instance in a key rotation test: its replicas, their
// stores, the Receiver's table, the endpoint's router and its connection.
type rekeySide struct {
	name   string
	nodes  []*tether.Node
	stores []*watchedStore
	recv   *applied
	front  *router // nil for a private instance
	conn   string
}

// openSide opens replicas Nodes on one database, serving endpoint (private
// when empty) through a router on net.
func openSide(t testing.TB, name string, db func(i int) *sql.DB, d sqlstore.Dialect, replicas int, net *tethertest.Network, endpoint string, listen func() listenFunc) *rekeySide {
	t.Helper()
	key := testKey(t)
	s := &rekeySide{name: name}
	for i := range replicas {
		cfg := sqlstore.Config{Sealer: sealer(t, key)}
		if listen != nil {
			cfg.Listen = listen()
		}
		store, err := sqlstore.New(context.Background(), db(i), d, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			s.recv = newApplied(t, db(0), d)
		}
		ws := &watchedStore{Store: store}
		node, err := tether.Open(context.Background(), tether.Config{
			Store: ws, Transport: net.Transport(fmt.Sprint(name, i)), Endpoint: endpoint, Receiver: s.recv,
			RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond, Replica: fmt.Sprint(name, i),
		})
		if err != nil {
			t.Fatal(err)
		}
		s.nodes, s.stores = append(s.nodes, node), append(s.stores, ws)
	}
	if endpoint != "" {
		s.front = newRouter(s.nodes...)
		t.Cleanup(net.Listen(endpoint, s.front))
	}
	return s
}

// rotated waits until side s signs its connection with the key kid, every
// replica holds it, and peer has pinned it.
func rotated(t testing.TB, s, peer *rekeySide, kid string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := s.nodes[0].Get(context.Background(), s.conn)
		if err != nil {
			t.Fatal(err)
		}
		pc, err := peer.nodes[0].Get(context.Background(), peer.conn)
		if err != nil {
			t.Fatal(err)
		}
		done := c.LocalKeyID == kid && c.PendingKeyID == "" && tether.KeyID(pc.RemoteKey) == kid
		for _, n := range s.nodes {
			done = done && n.Fingerprint() == kid
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's change to key %s is not complete after 20s: signs with %s, pending %q; the peer pinned %s", s.name, kid, c.LocalKeyID, c.PendingKeyID, tether.KeyID(pc.RemoteKey))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// rotateReplica rotates the key on replica x of s, and checks that the
// other replicas hold the new key within about a second: they re-read the
// keys every second.
func rotateReplica(t testing.TB, s *rekeySide, x int) string {
	t.Helper()
	if err := s.nodes[x].RotateKey(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	kid := s.nodes[x].Fingerprint()
	start := time.Now()
	for i, n := range s.nodes {
		for n.Fingerprint() != kid {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("replica %d still signs with %s 5s after replica %d rotated to %s", i, n.Fingerprint(), x, kid)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if len(s.nodes) == 1 {
		return kid
	}
	// Once a second, and a slow machine.
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("the other replicas took %v to hold the new key, want about a second", took)
	} else {
		t.Logf("the other replicas held replica %d's new key after %v", x, took)
	}
	return kid
}

// Key rotation while 1,000 messages flow each way: side a rotates, then
// its peer b, then a again (on another replica when it has several), then
// b again. Every message is applied once and in order, no request is
// refused for its key, and each rotation completes: the side signs with
// its new key and its peer has pinned it. After a rotation on one
// replica, the other holds the new key within about a second, and answers
// with it once the peer has it.
func rekeyScenario(t *testing.T, a, b *rekeySide) {
	const perStage, stages = 200, 5
	ctx := context.Background()
	ac, code, err := a.nodes[0].Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "rekey"})
	if err != nil {
		t.Fatal(err)
	}
	bc, err := b.nodes[0].Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.conn, b.conn = ac.ID, bc.ID
	runNodes(t, append(slices.Clone(a.nodes), b.nodes...)...)
	var toA, toB []string // what each side must apply, in order
	sendA := func(i int) {
		p := fmt.Sprint("a to b ", len(toB)+1)
		if _, err := a.nodes[i%len(a.nodes)].Send(ctx, a.conn, []byte(p)); err != nil {
			t.Fatal(err)
		}
		toB = append(toB, p)
	}
	sendB := func() bool {
		p := fmt.Sprint("b to a ", len(toA)+1)
		if _, err := b.nodes[0].Send(ctx, b.conn, []byte(p)); err != nil {
			t.Error(err)
			return false
		}
		toA = append(toA, p)
		return true
	}
	var probe func() // set by a replica's rotation, run after the next stage
	for stage := range stages {
		// Each side sends in order, both at once.
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range perStage {
				if !sendB() {
					return
				}
			}
		}()
		for i := range perStage {
			sendA(i)
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		if probe != nil {
			probe()
			probe = nil
		}
		switch stage {
		case 0, 2:
			x := stage / 2 % len(a.nodes) // replica 0, then the last one
			kid := rotateReplica(t, a, x)
			if len(a.nodes) == 1 {
				break
			}
			// Once b has pinned the new key and a signs with it, the
			// replica that did not rotate answers with it too: b's next
			// request goes there.
			y := (x + 1) % len(a.nodes)
			probe = func() {
				rotated(t, a, b, kid)
				a.front.only.Store(int32(y))
				defer a.front.only.Store(-1)
				if !sendB() {
					t.FailNow()
				}
				deadline := time.Now().Add(20 * time.Second)
				for a.front.answered(y, kid) == 0 {
					if time.Now().After(deadline) {
						t.Fatalf("replica %d never answered with replica %d's new key %s", y, x, kid)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
		case 1, 3:
			if err := b.nodes[0].RotateKey(ctx, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for a.recv.count(t) < len(toA) || b.recv.count(t) < len(toB) {
		if time.Now().After(deadline) {
			t.Fatalf("after 60s a applied %d of %d messages, b %d of %d", a.recv.count(t), len(toA), b.recv.count(t), len(toB))
		}
		time.Sleep(20 * time.Millisecond)
	}
	rotated(t, a, b, a.nodes[0].Fingerprint())
	rotated(t, b, a, b.nodes[0].Fingerprint())
	b.recv.check(t, toB)
	a.recv.check(t, toA)
	for _, s := range []*rekeySide{a, b} {
		if s.front != nil {
			s.front.mu.Lock()
			if len(s.front.refusals) > 0 {
				t.Errorf("%s refused %d requests for their key: %q", s.name, len(s.front.refusals), s.front.refusals)
			}
			if len(s.front.other) > 0 {
				t.Logf("%s's other refusals and errors: %v", s.name, s.front.other)
			}
			s.front.mu.Unlock()
		}
		for i, st := range s.stores {
			key, other := st.keyFailures()
			if len(key) > 0 {
				t.Errorf("%s, node %d, recorded key failures: %q", s.name, i, key)
			}
			if len(other) > 0 {
				t.Logf("%s, node %d, recorded other failures: %q", s.name, i, other)
			}
		}
	}
}

// Key rotation on PostgreSQL with two replicas serving one endpoint, each
// rotating once, while the peer (on its own SQLite store, public or
// private) rotates twice and 1,000 messages flow each way.
func TestRekeyReplicasPostgres(t *testing.T) {
	for _, peerPublic := range []bool{false, true} {
		t.Run(fmt.Sprint("public peer ", peerPublic), func(t *testing.T) {
			dsn := newSchema(t)
			net := tethertest.NewNetwork()
			t.Cleanup(net.Close)
			a := openSide(t, "replica", func(int) *sql.DB { return openPostgres(t, dsn) }, sqlstore.PostgreSQL, 2, net, "https://replicas.test/t",
				func() listenFunc { return pgListen(dsn, nil) })
			peerDB, _ := openSQLite(t)
			endpoint := ""
			if peerPublic {
				endpoint = "https://peer.test/t"
			}
			b := openSide(t, "peer", func(int) *sql.DB { return peerDB }, sqlstore.SQLite, 1, net, endpoint, nil)
			rekeyScenario(t, a, b)
		})
	}
}

// The same rotations on SQLite, one Node on each side.
func TestRekeySQLite(t *testing.T) {
	for _, peerPublic := range []bool{false, true} {
		t.Run(fmt.Sprint("public peer ", peerPublic), func(t *testing.T) {
			net := tethertest.NewNetwork()
			t.Cleanup(net.Close)
			aDB, _ := openSQLite(t)
			a := openSide(t, "a", func(int) *sql.DB { return aDB }, sqlstore.SQLite, 1, net, "https://a.test/t", nil)
			bDB, _ := openSQLite(t)
			endpoint := ""
			if peerPublic {
				endpoint = "https://b.test/t"
			}
			b := openSide(t, "b", func(int) *sql.DB { return bDB }, sqlstore.SQLite, 1, net, endpoint, nil)
			rekeyScenario(t, a, b)
		})
	}
}

// A key change completes when the peer acknowledges its notice, even when
// nothing else is sent afterwards. Here the host rotates while the pusher
// is between reading the connection and reading its outbox, so the push
// that carries the notice was prepared from the connection as it was
// before the change.
func TestRekeyAcknowledgedInTheSamePush(t *testing.T) {
	ctx := context.Background()
	net := tethertest.NewNetwork()
	t.Cleanup(net.Close)
	const endpoint = "https://b.test/t"
	got := newRecvLog()
	b, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: net.Transport("b"), Endpoint: endpoint, Receiver: got})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(net.Listen(endpoint, b))
	db, _ := openSQLite(t)
	ws := &watchedStore{Store: newStore(t, db, sqlstore.SQLite, testKey(t))}
	a, err := tether.Open(ctx, tether.Config{Store: ws, Transport: net.Transport("a"), Receiver: newRecvLog(),
		RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	bc, code, err := b.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "B", RemoteName: "A", Name: "B to A"})
	if err != nil {
		t.Fatal(err)
	}
	ac, err := a.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runNodes(t, a, b)
	if _, err := a.Send(ctx, ac.ID, []byte("before")); err != nil {
		t.Fatal(err)
	}
	got.waitFor(t, bc.ID, 1)
	// Only a's pusher reads a's outbox (a is private), each time right
	// after it read the connection: the rotation runs inside the push of
	// the next message, which is sent before it. Nothing is sent after it.
	rotated := make(chan error, 1)
	ws.mu.Lock()
	ws.beforeList = func() { rotated <- a.RotateKey(ctx, 0) }
	ws.mu.Unlock()
	if _, err := a.Send(ctx, ac.ID, []byte("carries the notice")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-rotated:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a's pusher did not read the outbox again")
	}
	kid := a.Fingerprint()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pinned, err := b.Get(ctx, bc.ID)
		if err != nil {
			t.Fatal(err)
		}
		left, err := ws.Store.ListOutbox(ctx, ac.ID, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		c, err := a.Get(ctx, ac.ID)
		if err != nil {
			t.Fatal(err)
		}
		acked := tether.KeyID(pinned.RemoteKey) == kid && len(left) == 0
		if acked && c.LocalKeyID == kid && c.PendingKeyID == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after the rotation: the peer pinned %s and acknowledged the notice (%v); a signs with %s, pending %q: the change never completes",
				tether.KeyID(pinned.RemoteKey), acked, c.LocalKeyID, c.PendingKeyID)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A replica verifies an invitation signed with a key another replica has
// just made current: it re-reads the keys at once when a request names
// one it does not hold, even if it re-read them moments before. Replica
// 1's clock stands still, so the invitation arrives within the same
// instant as its periodic re-read; with real clocks that is one request
// in ten (the re-read is once a second, and a re-read on a miss waits
// 100 ms after the previous one).
func TestReplicaLoadsNewKeyOnMiss(t *testing.T) {
	dsn := newSchema(t)
	ctx := context.Background()
	net := tethertest.NewNetwork()
	t.Cleanup(net.Close)
	const endpoint = "https://replicas.test/t"
	key := testKey(t)
	clock := tethertest.NewClock(time.Now())
	var nodes []*tether.Node
	for i, c := range []tether.Clock{nil, clock} {
		n, err := tether.Open(ctx, tether.Config{Store: newStore(t, openPostgres(t, dsn), sqlstore.PostgreSQL, key),
			Transport: net.Transport(fmt.Sprint("replica", i)), Endpoint: endpoint, Clock: c})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	front := newRouter(nodes...)
	front.only.Store(1)
	t.Cleanup(net.Listen(endpoint, front))
	runNodes(t, nodes[1])
	// Replica 1 re-reads its keys as Run starts, then waits on its clock:
	// for the next re-read, the next handshake follow-up and the next
	// rescan.
	if !clock.WaitForWaiters(3, nil) {
		t.Fatal("replica 1 did not settle")
	}
	if err := nodes[0].RotateKey(ctx, 0); err != nil {
		t.Fatal(err)
	}
	_, code, err := nodes[0].Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "C", Name: "signed with the new key"})
	if err != nil {
		t.Fatal(err)
	}
	acceptor, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: net.Transport("acceptor")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acceptor.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		t.Fatalf("replica 1 refused an invitation signed with replica 0's new key: %v", err)
	}
	if nodes[1].Fingerprint() != nodes[0].Fingerprint() {
		t.Fatalf("replica 1 signs with %s after verifying with the new key %s", nodes[1].Fingerprint(), nodes[0].Fingerprint())
	}
}

// The peer's key change takes effect while a push is in flight: the push
// was signed, and its answer is checked, with the connection as it was
// read before the push, but the peer already answers with its new key
// (this side applied the change and acknowledged it meanwhile, through its
// poll). The answer must still be accepted: no exchange fails for its key.
func TestPeerRekeyDuringPush(t *testing.T) {
	ctx := context.Background()
	net := tethertest.NewNetwork()
	t.Cleanup(net.Close)
	const endpoint = "https://b.test/t"
	got := newRecvLog()
	b, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: net.Transport("b"), Endpoint: endpoint, Receiver: got})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(net.Listen(endpoint, b))
	var dropPushes atomic.Bool
	net.Faults(func(from, _ string, req *tether.Request) tethertest.Fault {
		return tethertest.Fault{Drop: from == "a" && req.Op == tether.OpPush && dropPushes.Load()}
	})
	db, _ := openSQLite(t)
	ws := &watchedStore{Store: newStore(t, db, sqlstore.SQLite, testKey(t))}
	a, err := tether.Open(ctx, tether.Config{Store: ws, Transport: net.Transport("a"), Receiver: newRecvLog(),
		RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	bc, code, err := b.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "B", RemoteName: "A", Name: "B to A"})
	if err != nil {
		t.Fatal(err)
	}
	ac, err := a.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	runNodes(t, a, b)
	// a's message waits: its pushes are lost. In a later attempt, after
	// a's pusher read the connection, b rotates, and a learns of it and
	// acknowledges it through its poll, before the push goes out.
	dropPushes.Store(true)
	if _, err := a.Send(ctx, ac.ID, []byte("in flight")); err != nil {
		t.Fatal(err)
	}
	hooked := make(chan error, 1)
	ws.mu.Lock()
	ws.beforeList = func() {
		hooked <- func() error {
			if err := b.RotateKey(ctx, 0); err != nil {
				return err
			}
			kid := b.Fingerprint()
			deadline := time.Now().Add(10 * time.Second)
			for {
				c, err := b.Get(ctx, bc.ID)
				if err != nil {
					return err
				}
				if c.LocalKeyID == kid {
					break
				}
				if time.Now().After(deadline) {
					return fmt.Errorf("b does not sign with its new key %s 10s after rotating (pending %q)", kid, c.PendingKeyID)
				}
				time.Sleep(5 * time.Millisecond)
			}
			dropPushes.Store(false)
			return nil
		}()
	}
	ws.mu.Unlock()
	select {
	case err := <-hooked:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a's pusher did not try again")
	}
	got.waitFor(t, bc.ID, 1)
	// a takes the answer, at once or after a retry: its outbox empties.
	deadline := time.Now().Add(10 * time.Second)
	for {
		left, err := ws.Store.ListOutbox(ctx, ac.ID, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a's message was not acknowledged")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if key, _ := ws.keyFailures(); len(key) > 0 {
		t.Fatalf("a's exchanges with b failed for b's key: %q", key)
	}
}
