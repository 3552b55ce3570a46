package sqlstore_test

import (
	"context"
	"database/sql"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/tethertest"
)

// answers records what a node answered to pushes.
type answers struct {
	node tether.Handler
	mu   sync.Mutex
	got  []string
}

func (a *answers) Handle(ctx context.Context, req *tether.Request) (*tether.Response, error) {
	resp, err := a.node.Handle(ctx, req)
	if req.Op == tether.OpPush {
		a.mu.Lock()
		switch {
		case err != nil:
			a.got = append(a.got, "error "+string(tether.ErrorCode(err))+": "+err.Error())
		case resp.Code != "":
			a.got = append(a.got, "refused "+string(resp.Code)+": "+string(resp.Body))
		default:
			a.got = append(a.got, "answered: "+string(resp.Body))
		}
		a.mu.Unlock()
	}
	return resp, err
}

func (a *answers) first() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.got) == 0 {
		return ""
	}
	return a.got[0]
}

// A database failure inside a transactional Receiver is a storage failure
// (the sender retries), not "the receiver failed".
func TestReceiverStorageFailure(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		net := tethertest.NewNetwork()
		t.Cleanup(net.Close)
		const alphaURL = "https://alpha.example/tether"
		var once sync.Once
		receiver := tether.ReceiverFunc(func(ctx context.Context, m tether.Message) error {
			var err error
			once.Do(func() {
				// The host's transaction dies under it: the database failed.
				_, err = sqlstore.Tx(ctx).ExecContext(ctx, `ROLLBACK`)
				if err == nil {
					err = sql.ErrTxDone
				}
			})
			return err
		})
		alpha, err := tether.Open(ctx, tether.Config{
			Store: newStore(t, db, d, testKey(t)), Transport: net.Transport("alpha"),
			Endpoint: alphaURL, Receiver: receiver,
		})
		if err != nil {
			t.Fatal(err)
		}
		rec := &answers{node: alpha}
		t.Cleanup(net.Listen(alphaURL, rec))
		beta, err := tether.Open(ctx, tether.Config{
			Store: memstore.New(), Transport: net.Transport("beta"),
			RetryBase: time.Millisecond, RetryMax: 10 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		_, code, err := alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
		if err != nil {
			t.Fatal(err)
		}
		bc, err := beta.Accept(ctx, code, tether.AcceptOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := beta.Send(ctx, bc.ID, []byte("hello")); err != nil {
			t.Fatal(err)
		}
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error)
		go func() { done <- beta.Run(runCtx) }()
		deadline := time.Now().Add(20 * time.Second)
		for rec.first() == "" && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		stop()
		<-done
		got := rec.first()
		if !strings.HasPrefix(got, "refused unavailable") || strings.Contains(got, "receiver failed") {
			t.Fatalf("first push answered %q; want a storage failure (refused unavailable), not the receiver's", got)
		}
	})
}
