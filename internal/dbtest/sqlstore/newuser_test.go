package sqlstore_test

// Tests written as a new user of tether on the durable store: receivers
// that reply on a single SQLite connection, and lifecycle news that
// survives a restart.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/tethertest"
)

const nuWait = 20 * time.Second

type nuRecv struct {
	mu  sync.Mutex
	got map[string][]tether.Message
}

func (r *nuRecv) Receive(_ context.Context, m tether.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.got == nil {
		r.got = map[string][]tether.Message{}
	}
	m.Payload = slices.Clone(m.Payload)
	r.got[m.ConnectionID] = append(r.got[m.ConnectionID], m)
	return nil
}

func (r *nuRecv) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got[id])
}

func (r *nuRecv) check(t testing.TB, id string, want []string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var got []string
	var prev int64
	for _, m := range r.got[id] {
		if m.Seq <= prev {
			t.Errorf("seq %d after %d", m.Seq, prev)
		}
		prev = m.Seq
		got = append(got, string(m.Payload))
	}
	if !slices.Equal(got, want) {
		t.Errorf("received %d %v\nwant %d %v", len(got), got, len(want), want)
	}
}

func nuEventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(nuWait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out (%v) waiting until %s", nuWait, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func nuFast(c *tether.Config) {
	c.RetryBase, c.RetryMax = 5*time.Millisecond, 100*time.Millisecond
	c.PollWait = time.Second
	c.HandshakeInterval = 50 * time.Millisecond
	c.PausedRetry = 200 * time.Millisecond
}

// nuRun runs n until stop (or the test's end).
func nuRun(t testing.TB, n *tether.Node) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if !errors.Is(err, context.Canceled) {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(nuWait):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func nuGet(t testing.TB, n *tether.Node, id string) *tether.Connection {
	t.Helper()
	c, err := n.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return c
}

func nuConnect(t testing.TB, a, b *tether.Node) (string, string) {
	t.Helper()
	ctx := context.Background()
	ac, code, err := a.Initiate(ctx, tether.InitiateRequest{
		Destination: b.Endpoint(), Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B",
	})
	if err != nil {
		t.Fatalf("Initiate: %v", err)
	}
	bc, err := b.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	nuEventually(t, "both active", func() bool {
		return nuGet(t, a, ac.ID).Status == tether.StatusActive && nuGet(t, b, bc.ID).Status == tether.StatusActive
	})
	return ac.ID, bc.ID
}

// nuDB opens a fresh database of dialect d and returns a function opening
// another *sql.DB on it (as a restarted process would).
func nuDB(t *testing.T, d sqlstore.Dialect) (db *sql.DB, reopen func() *sql.DB) {
	if d == sqlstore.SQLite {
		db, path := openSQLite(t) // SetMaxOpenConns(1)
		return db, func() *sql.DB { return openSQLiteAt(t, path) }
	}
	dsn := newSchema(t)
	return openPostgres(t, dsn), func() *sql.DB { return openPostgres(t, dsn) }
}

func nuDialects(t *testing.T, fn func(t *testing.T, d sqlstore.Dialect)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, sqlstore.SQLite) })
	t.Run("postgres", func(t *testing.T) {
		postgresURL(t)
		fn(t, sqlstore.PostgreSQL)
	})
}

// A Receiver on sqlstore (SQLite with one connection) that answers every
// message with Send on its ctx: one reply per message, in order, while the
// host also sends from outside the Receiver.
func TestNewUserReceiverReplies(t *testing.T) {
	nuDialects(t, func(t *testing.T, d sqlstore.Dialect) {
		for _, betaPublic := range []bool{true, false} {
			t.Run(fmt.Sprintf("beta public %v", betaPublic), func(t *testing.T) {
				ctx := context.Background()
				net := tethertest.NewNetwork()
				defer net.Close()
				alphaRecv := &nuRecv{}
				acfg := tether.Config{Store: memstore.New(), Transport: net.Transport("alpha"),
					Endpoint: "https://alpha.newuser.example", Receiver: alphaRecv}
				nuFast(&acfg)
				alpha, err := tether.Open(ctx, acfg)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(net.Listen(acfg.Endpoint, alpha))
				nuRun(t, alpha)

				db, _ := nuDB(t, d)
				store := newStore(t, db, d, testKey(t))
				var beta *tether.Node
				var fromRecv atomic.Int64
				recv := tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
					fromRecv.Add(1)
					_, err := beta.Send(ctx, m.ConnectionID, []byte("re:"+string(m.Payload)))
					return err
				})
				bcfg := tether.Config{Store: store, Transport: net.Transport("beta"), Receiver: recv}
				if betaPublic {
					bcfg.Endpoint = "https://beta.newuser.example"
				}
				nuFast(&bcfg)
				beta, err = tether.Open(ctx, bcfg)
				if err != nil {
					t.Fatal(err)
				}
				if betaPublic {
					t.Cleanup(net.Listen(bcfg.Endpoint, beta))
				}
				nuRun(t, beta)
				aid, bid := nuConnect(t, alpha, beta)

				const n = 40
				var want []string
				for i := 1; i <= n; i++ {
					want = append(want, fmt.Sprintf("re:q-%d", i))
				}
				var wg sync.WaitGroup
				wg.Add(2)
				go func() {
					defer wg.Done()
					for i := 1; i <= n; i++ {
						if _, err := alpha.Send(ctx, aid, []byte(fmt.Sprintf("q-%d", i))); err != nil {
							t.Errorf("alpha Send: %v", err)
						}
					}
				}()
				// The host sends on beta too, outside any Receiver, with its
				// own context: it must not deadlock with the deliveries.
				hostDone := make(chan struct{})
				go func() {
					defer wg.Done()
					defer close(hostDone)
					for i := 1; i <= 10; i++ {
						sctx, cancel := context.WithTimeout(ctx, nuWait)
						_, err := beta.Send(sctx, bid, []byte(fmt.Sprintf("host-%d", i)))
						cancel()
						if err != nil {
							t.Errorf("beta host Send: %v", err)
						}
						time.Sleep(5 * time.Millisecond)
					}
				}()
				wg.Wait()
				nuEventually(t, "every reply and host message delivered", func() bool { return alphaRecv.count(aid) >= n+10 })
				time.Sleep(300 * time.Millisecond)
				// Replies in order, once each; host messages interleaved.
				alphaRecv.mu.Lock()
				var replies []string
				hosts := 0
				for _, m := range alphaRecv.got[aid] {
					if len(m.Payload) > 3 && string(m.Payload[:3]) == "re:" {
						replies = append(replies, string(m.Payload))
					} else {
						hosts++
					}
				}
				alphaRecv.mu.Unlock()
				if !slices.Equal(replies, want) {
					t.Errorf("replies %v\nwant %v", replies, want)
				}
				if hosts != 10 {
					t.Errorf("%d host messages, want 10", hosts)
				}
				if got := fromRecv.Load(); got != n {
					t.Logf("Receiver ran %d times for %d messages (redeliveries after rollback are allowed)", got, n)
				}
			})
		}
	})
}

// Delete (and Pause) with the peer unreachable, then the process stops
// before the notice is delivered; after a restart on the same database the
// peer learns it.
func TestNewUserLifecycleNewsSurvivesRestart(t *testing.T) {
	nuDialects(t, func(t *testing.T, d sqlstore.Dialect) {
		for _, topo := range []struct {
			name                    string
			alphaPublic, betaPublic bool
		}{{"both public", true, true}, {"alpha public beta private", true, false}, {"alpha private beta public", false, true}} {
			for _, action := range []string{"delete", "pause"} {
				t.Run(topo.name+"/"+action, func(t *testing.T) {
					ctx := context.Background()
					net := tethertest.NewNetwork()
					defer net.Close()
					key := testKey(t)
					db, reopen := nuDB(t, d)
					alphaURL := ""
					if topo.alphaPublic {
						alphaURL = "https://alpha.newuser.example"
					}
					openAlpha := func(db *sql.DB) (*tether.Node, func()) {
						cfg := tether.Config{Store: newStore(t, db, d, key), Transport: net.Transport("alpha"),
							Endpoint: alphaURL, Receiver: &nuRecv{}, Replica: "alpha-1"}
						nuFast(&cfg)
						n, err := tether.Open(ctx, cfg)
						if err != nil {
							t.Fatal(err)
						}
						unlisten := func() {}
						if alphaURL != "" {
							unlisten = net.Listen(alphaURL, n)
						}
						stopRun := nuRun(t, n)
						return n, func() { stopRun(); unlisten() }
					}
					alpha, stopAlpha := openAlpha(db)
					bcfg := tether.Config{Store: memstore.New(), Transport: net.Transport("beta"), Receiver: &nuRecv{}}
					if topo.betaPublic {
						bcfg.Endpoint = "https://beta.newuser.example"
					}
					nuFast(&bcfg)
					beta, err := tether.Open(ctx, bcfg)
					if err != nil {
						t.Fatal(err)
					}
					if topo.betaPublic {
						t.Cleanup(net.Listen(bcfg.Endpoint, beta))
					}
					nuRun(t, beta)
					aid, bid := nuConnect(t, alpha, beta)

					var dead atomic.Bool
					dead.Store(true)
					net.Faults(func(from, endpoint string, req *tether.Request) tethertest.Fault {
						return tethertest.Fault{Drop: dead.Load()}
					})
					// A long-poll already held at alpha is not affected by
					// the fault: let it end (PollWait is 1 s) first.
					time.Sleep(1500 * time.Millisecond)
					start := time.Now()
					if action == "delete" {
						_, err = alpha.Delete(ctx, aid)
					} else {
						_, err = alpha.Pause(ctx, aid)
					}
					if err != nil {
						t.Fatalf("%s: %v", action, err)
					}
					if el := time.Since(start); el > 2*time.Second {
						t.Errorf("%s took %v with the peer unreachable", action, el)
					}
					stopAlpha()
					time.Sleep(100 * time.Millisecond)
					if st := nuGet(t, beta, bid); st.Status != tether.StatusActive || st.RemoteStatus == tether.StatusPaused {
						t.Fatalf("beta learnt before the restart: status %s, remote status %q", st.Status, st.RemoteStatus)
					}
					alpha2, _ := openAlpha(reopen())
					dead.Store(false)
					if action == "delete" {
						if _, err := alpha2.Send(ctx, aid, []byte("x")); tether.ErrorCode(err) != tether.CodeNotConnected {
							t.Errorf("Send on deleted after restart: %v, want CodeNotConnected", err)
						}
						nuEventually(t, "beta learns the deletion", func() bool { return nuGet(t, beta, bid).Status == tether.StatusDeleted })
						if _, err := beta.Send(ctx, bid, []byte("x")); tether.ErrorCode(err) != tether.CodeNotConnected {
							t.Errorf("beta Send after deletion: %v", err)
						}
					} else {
						nuEventually(t, "beta learns the pause", func() bool { return nuGet(t, beta, bid).RemoteStatus == tether.StatusPaused })
						if _, err := alpha2.Activate(ctx, aid); err != nil {
							t.Fatal(err)
						}
						nuEventually(t, "beta learns the activation", func() bool {
							st := nuGet(t, beta, bid).RemoteStatus
							return st == tether.StatusActive || st == ""
						})
					}
				})
			}
		}
	})
}

// Rotation on the durable store, across a restart while the key change
// notice is still unacknowledged: messages keep flowing, keys converge.
func TestNewUserRotateAcrossRestart(t *testing.T) {
	nuDialects(t, func(t *testing.T, d sqlstore.Dialect) {
		ctx := context.Background()
		net := tethertest.NewNetwork()
		defer net.Close()
		key := testKey(t)
		db, reopen := nuDB(t, d)
		const alphaURL = "https://alpha.newuser.example"
		recvA := &nuRecv{}
		openAlpha := func(db *sql.DB) (*tether.Node, func()) {
			cfg := tether.Config{Store: newStore(t, db, d, key), Transport: net.Transport("alpha"),
				Endpoint: alphaURL, Receiver: recvA, Replica: "alpha-1"}
			nuFast(&cfg)
			n, err := tether.Open(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			unlisten := net.Listen(alphaURL, n)
			stopRun := nuRun(t, n)
			return n, func() { stopRun(); unlisten() }
		}
		alpha, stopAlpha := openAlpha(db)
		recvB := &nuRecv{}
		bcfg := tether.Config{Store: memstore.New(), Transport: net.Transport("beta"), Receiver: recvB}
		nuFast(&bcfg)
		beta, err := tether.Open(ctx, bcfg)
		if err != nil {
			t.Fatal(err)
		}
		nuRun(t, beta)
		aid, bid := nuConnect(t, alpha, beta)
		var dead atomic.Bool
		dead.Store(true)
		net.Faults(func(from, endpoint string, req *tether.Request) tethertest.Fault {
			return tethertest.Fault{Drop: dead.Load()}
		})
		var toB, toA []string
		for i := 1; i <= 3; i++ {
			p := fmt.Sprint("a-", i)
			if _, err := alpha.Send(ctx, aid, []byte(p)); err != nil {
				t.Fatal(err)
			}
			toB = append(toB, p)
		}
		if err := alpha.RotateKey(ctx, 0); err != nil {
			t.Fatal(err)
		}
		fp := alpha.Fingerprint()
		for i := 4; i <= 6; i++ {
			p := fmt.Sprint("a-", i)
			if _, err := alpha.Send(ctx, aid, []byte(p)); err != nil {
				t.Fatal(err)
			}
			toB = append(toB, p)
		}
		for i := 1; i <= 3; i++ {
			p := fmt.Sprint("b-", i)
			if _, err := beta.Send(ctx, bid, []byte(p)); err != nil {
				t.Fatal(err)
			}
			toA = append(toA, p)
		}
		stopAlpha()
		alpha2, _ := openAlpha(reopen())
		if alpha2.Fingerprint() != fp {
			t.Errorf("after restart Fingerprint %s, want the rotated %s", alpha2.Fingerprint(), fp)
		}
		dead.Store(false)
		nuEventually(t, "all delivered", func() bool { return recvB.count(bid) >= 6 && recvA.count(aid) >= 3 })
		nuEventually(t, "alpha signs with its new key", func() bool {
			c := nuGet(t, alpha2, aid)
			return c.LocalKeyID == fp && c.PendingKeyID == "" && tether.KeyID(nuGet(t, beta, bid).RemoteKey) == fp
		})
		time.Sleep(200 * time.Millisecond)
		recvB.check(t, bid, toB)
		recvA.check(t, aid, toA)
	})
}
