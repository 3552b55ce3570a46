package tether_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

// A Receiver on memstore, which has no AtomicInbox, calls the Node with
// the context it is given while it handles a message (its connection's
// inbox is locked meanwhile). Its reply, sent with Send, reaches the peer,
// and none of its calls waits: each returns at once with success or a
// clear code. The calls that wait on a peer (Accept of a public
// initiator's code, Sync) may be made there: no transaction is held.
func TestReentryMemstore(t *testing.T) {
	const (
		alphaURL = "https://alpha.example/tether"
		betaURL  = "https://beta.example/tether"
		timeout  = 10 * time.Second // a call that deadlocks fails instead
		slow     = 5 * time.Second
		wait     = 30 * time.Second
	)
	ctx := context.Background()
	net := tethertest.NewNetwork()
	t.Cleanup(net.Close)
	var receive atomic.Pointer[func(context.Context, tether.Message) error]
	open := func(name, endpoint string, r tether.ReceiverFunc) *tether.Node {
		t.Helper()
		n, err := tether.Open(ctx, tether.Config{
			Store: memstore.New(), Transport: net.Transport(name), Endpoint: endpoint, Receiver: r,
			RetryBase: time.Millisecond, RetryMax: 20 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(net.Listen(endpoint, n))
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- n.Run(runCtx) }()
		t.Cleanup(func() {
			stop()
			if err := <-done; tether.ErrorCode(err) != tether.CodeCanceled {
				t.Errorf("%s: Run ended with %v, want canceled", name, err)
			}
		})
		return n
	}
	alpha := open("alpha", alphaURL, func(ctx context.Context, m tether.Message) error {
		if f := receive.Load(); f != nil {
			return (*f)(ctx, m)
		}
		return errors.New("the test has not set the receiver yet")
	})
	got := make(chan tether.Message, 64)
	beta := open("beta", betaURL, func(ctx context.Context, m tether.Message) error {
		select {
		case got <- m:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	connect := func() (string, string) {
		t.Helper()
		c, code, err := alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Alpha", RemoteName: "Beta", Name: "Alpha to Beta"})
		if err != nil {
			t.Fatal(err)
		}
		bc, err := beta.Accept(ctx, code, tether.AcceptOptions{})
		if err != nil || bc.Status != tether.StatusActive {
			t.Fatalf("Accept: %+v, %v", bc, err)
		}
		return c.ID, bc.ID
	}
	c1, b1 := connect() // ping and pong
	c2, b2 := connect() // an aside; paused and activated
	c3, _ := connect()  // deleted by the Receiver
	c4, _ := connect()  // made Inactive by an adapter's Transition
	c5, _ := connect()  // peer key revoked, re-pairing code issued
	c6, b6 := connect() // re-paired with beta's code
	_, repairCode, err := beta.Reauthorize(ctx, b6)
	if err != nil {
		t.Fatal(err)
	}
	_, betaCode, err := beta.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Beta", RemoteName: "Alpha", Name: "Beta to Alpha"})
	if err != nil {
		t.Fatal(err)
	}

	type result struct {
		name    string
		want    tether.Code
		err     error
		took    time.Duration
		expired bool
	}
	results := make(chan []result, 1)
	var handled atomic.Bool
	f := func(ctx context.Context, m tether.Message) error {
		if m.ConnectionID != c1 || string(m.Payload) != "ping" || !handled.CompareAndSwap(false, true) {
			return nil
		}
		var (
			pending *tether.Connection
			code    string
		)
		check := func(ok bool, format string, args ...any) error {
			if ok {
				return nil
			}
			return fmt.Errorf(format, args...)
		}
		calls := []struct {
			name string
			want tether.Code
			fn   func(ctx context.Context) error
		}{
			{"Send (reply)", "", func(ctx context.Context) error { _, err := alpha.Send(ctx, c1, []byte("pong")); return err }},
			{"Send (another connection)", "", func(ctx context.Context) error { _, err := alpha.Send(ctx, c2, []byte("aside")); return err }},
			{"Get", "", func(ctx context.Context) error {
				c, err := alpha.Get(ctx, c1)
				if err != nil {
					return err
				}
				return check(c.Status == tether.StatusActive, "status %s", c.Status)
			}},
			{"List", "", func(ctx context.Context) error {
				conns, _, err := alpha.List(ctx, tether.ListOptions{})
				if err != nil {
					return err
				}
				return check(len(conns) == 6, "%d connections", len(conns))
			}},
			{"Events", "", func(ctx context.Context) error { _, err := alpha.Events(ctx, c1, 0, 0); return err }},
			{"Update", "", func(ctx context.Context) error {
				name := "Renamed by the Receiver"
				_, err := alpha.Update(ctx, c1, tether.Update{Name: &name})
				return err
			}},
			{"Pause", "", func(ctx context.Context) error { _, err := alpha.Pause(ctx, c2); return err }},
			{"Activate", "", func(ctx context.Context) error { _, err := alpha.Activate(ctx, c2); return err }},
			{"Transition auth_lost", "", func(ctx context.Context) error {
				_, err := alpha.Transition(ctx, c4, tether.ActionAuthLost, "lost")
				return err
			}},
			{"Transition refused", tether.CodeInvalidTransition, func(ctx context.Context) error {
				_, err := alpha.Transition(ctx, c4, tether.ActionActivate, "")
				return err
			}},
			{"RevokePeerKey", "", func(ctx context.Context) error { _, err := alpha.RevokePeerKey(ctx, c5, "suspected leak"); return err }},
			{"Reauthorize", "", func(ctx context.Context) error { _, _, err := alpha.Reauthorize(ctx, c5); return err }},
			{"Accept (re-pairing code)", "", func(ctx context.Context) error {
				c, err := alpha.Accept(ctx, repairCode, tether.AcceptOptions{})
				if err != nil {
					return err
				}
				return check(c.ID == c6 && c.Status == tether.StatusActive, "re-paired %s, %s", c.ID, c.Status)
			}},
			{"Delete", "", func(ctx context.Context) error { _, err := alpha.Delete(ctx, c3); return err }},
			{"Initiate", "", func(ctx context.Context) error {
				var err error
				pending, code, err = alpha.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Alpha", RemoteName: "Other", Name: "From the Receiver"})
				return err
			}},
			{"Preview", "", func(context.Context) error { _, err := alpha.Preview(code); return err }},
			{"RevokeInvitation", "", func(ctx context.Context) error {
				if pending == nil {
					return errors.New("Initiate gave no connection")
				}
				_, err := alpha.RevokeInvitation(ctx, pending.ID)
				return err
			}},
			{"Accept (public initiator)", "", func(ctx context.Context) error {
				c, err := alpha.Accept(ctx, betaCode, tether.AcceptOptions{})
				if err != nil {
					return err
				}
				return check(c.Status == tether.StatusActive, "status %s", c.Status)
			}},
			{"Sync", "", func(ctx context.Context) error { return alpha.Sync(ctx) }},
			{"RotateKey", "", func(ctx context.Context) error { return alpha.RotateKey(ctx, 0) }},
			{"Handle (unknown operation)", tether.CodeProtocol, func(ctx context.Context) error {
				_, err := alpha.Handle(ctx, &tether.Request{Op: "junk"})
				return err
			}},
			{"Run (already running)", tether.CodeInvalid, func(ctx context.Context) error { return alpha.Run(ctx) }},
			{"ID, Endpoint, Fingerprint, MaxBody", "", func(context.Context) error {
				return check(alpha.ID() != "" && alpha.Endpoint() == alphaURL && alpha.Fingerprint() != "" && alpha.MaxBody() > 0, "empty getter")
			}},
		}
		var out []result
		for _, c := range calls {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			start := time.Now()
			err := c.fn(cctx)
			r := result{name: c.name, want: c.want, err: err, took: time.Since(start), expired: cctx.Err() != nil}
			cancel()
			out = append(out, r)
			if r.expired {
				break // the next calls would wait as long
			}
		}
		results <- out
		return nil
	}
	receive.Store(&f)
	if _, err := beta.Send(ctx, b1, []byte("ping")); err != nil {
		t.Fatal(err)
	}

	var rs []result
	select {
	case rs = <-results:
	case <-time.After(wait):
		t.Fatalf("the Receiver did not finish its calls in %v", wait)
	}
	if len(rs) != 23 {
		t.Errorf("the Receiver made %d calls, want 23", len(rs))
	}
	for _, r := range rs {
		code := tether.ErrorCode(r.err)
		t.Logf("%-34s %-12q %v", r.name, code, r.took.Round(time.Microsecond))
		switch {
		case r.expired || code == tether.CodeDeadlineExceeded:
			t.Errorf("%s did not return before its deadline (deadlock): %v", r.name, r.err)
		case r.took > slow:
			t.Errorf("%s took %v: it waited on something", r.name, r.took)
		case code != r.want:
			t.Errorf("%s: %v (code %q), want %q", r.name, r.err, code, r.want)
		}
	}

	// The reply and the aside reach beta.
	want := map[string]string{b1: "pong", b2: "aside"}
	for len(want) > 0 {
		select {
		case m := <-got:
			if p, ok := want[m.ConnectionID]; !ok || p != string(m.Payload) {
				t.Fatalf("beta got %q on %s; waiting for %v", m.Payload, m.ConnectionID, want)
			}
			delete(want, m.ConnectionID)
		case <-time.After(wait):
			t.Fatalf("beta did not get %v in %v", want, wait)
		}
	}
	if c, err := alpha.Get(ctx, c3); err != nil || c.Status != tether.StatusDeleted {
		t.Errorf("connection deleted by the Receiver: %+v, %v", c, err)
	}
	conns, _, err := alpha.List(ctx, tether.ListOptions{Status: tether.StatusActive})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(conns, func(c *tether.Connection) bool { return c.RemoteInstance == beta.ID() && c.Role == tether.RoleAcceptor }) {
		t.Errorf("the connection the Receiver accepted is not Active")
	}
}
