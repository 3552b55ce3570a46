package tethertest_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/tethertest"
)

type countingHandler struct{ calls atomic.Int32 }

func (h *countingHandler) Handle(_ context.Context, r *tether.Request) (*tether.Response, error) {
	h.calls.Add(1)
	if r.Op == "fail" {
		return nil, &tether.Error{Code: tether.CodeRevoked, Op: "remote", Message: "gone", Err: errors.New("secret cause")}
	}
	r.Body[0] = 'X' // must not reach the sender's copy
	return &tether.Response{Auth: "a", Body: []byte("pong")}, nil
}

func TestNetworkDeliversAndCounts(t *testing.T) {
	ctx := context.Background()
	net := tethertest.NewNetwork()
	h := &countingHandler{}
	stop := net.Listen("https://a.test", h)
	tr := net.Transport("b")
	body := []byte("ping")
	resp, err := tr.Call(ctx, "https://a.test", &tether.Request{Op: "x", Body: body})
	if err != nil || string(resp.Body) != "pong" || string(body) != "ping" {
		t.Fatalf("Call = %v, %v; body %q", resp, err, body)
	}
	_, err = tr.Call(ctx, "https://a.test", &tether.Request{Op: "fail", Body: body})
	var e *tether.Error
	if !errors.As(err, &e) || e.Code != tether.CodeRevoked || e.Err != nil {
		t.Fatalf("remote error crossed as %#v, want code and message only", err)
	}
	_, err = tr.Call(ctx, "https://nobody.test", &tether.Request{Body: body})
	if !errors.Is(err, tether.ErrUnavailable) {
		t.Fatalf("call to nothing: %v", err)
	}
	stop()
	if _, err = tr.Call(ctx, "https://a.test", &tether.Request{Body: body}); !errors.Is(err, tether.ErrUnavailable) {
		t.Fatalf("call after stop: %v", err)
	}
	if diff := cmp.Diff(map[string]int{"https://a.test": 2}, net.Served()); diff != "" {
		t.Fatalf("Served (-want +got):\n%s", diff)
	}
	if net.Sent("b") != 4 {
		t.Fatalf("Sent = %d, want 4", net.Sent("b"))
	}
}

func TestNetworkFaults(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		fault     tethertest.Fault
		wantErr   bool
		wantCalls int32
	}{
		{"drop", tethertest.Fault{Drop: true}, true, 0},
		{"drop response", tethertest.Fault{DropResponse: true}, true, 1},
		{"duplicate", tethertest.Fault{Duplicate: true}, false, 2},
		{"none", tethertest.Fault{}, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			net := tethertest.NewNetwork()
			h := &countingHandler{}
			defer net.Listen("https://a.test", h)()
			net.Faults(func(string, string, *tether.Request) tethertest.Fault { return tc.fault })
			_, err := net.Transport("b").Call(ctx, "https://a.test", &tether.Request{Body: []byte("p")})
			if (err != nil) != tc.wantErr || h.calls.Load() != tc.wantCalls {
				t.Fatalf("err %v, handler calls %d; want error %v, %d calls", err, h.calls.Load(), tc.wantErr, tc.wantCalls)
			}
			if err != nil && !errors.Is(err, tether.ErrUnavailable) {
				t.Fatalf("fault error %v is not unavailable", err)
			}
		})
	}
}

func TestNetworkPartition(t *testing.T) {
	ctx := context.Background()
	net := tethertest.NewNetwork()
	h := &countingHandler{}
	defer net.Listen("https://a.test", h)()
	net.Partition("b", "https://a.test")
	if _, err := net.Transport("b").Call(ctx, "https://a.test", &tether.Request{Body: []byte("p")}); !errors.Is(err, tether.ErrUnavailable) {
		t.Fatalf("partitioned call: %v", err)
	}
	if _, err := net.Transport("c").Call(ctx, "https://a.test", &tether.Request{Body: []byte("p")}); err != nil {
		t.Fatalf("another sender is cut off too: %v", err)
	}
	net.Heal()
	if _, err := net.Transport("b").Call(ctx, "https://a.test", &tether.Request{Body: []byte("p")}); err != nil {
		t.Fatalf("after Heal: %v", err)
	}
	if h.calls.Load() != 2 {
		t.Fatalf("handler calls %d, want 2", h.calls.Load())
	}
}

func TestNetworkDelayUsesClock(t *testing.T) {
	net := tethertest.NewNetwork()
	clock := tethertest.NewClock(time.Unix(0, 0))
	net.SetClock(clock)
	h := &countingHandler{}
	defer net.Listen("https://a.test", h)()
	net.Faults(func(string, string, *tether.Request) tethertest.Fault { return tethertest.Fault{Delay: time.Second} })
	done := make(chan error, 1)
	go func() {
		_, err := net.Transport("b").Call(context.Background(), "https://a.test", &tether.Request{Body: []byte("p")})
		done <- err
	}()
	clock.WaitForWaiters(1, nil)
	if h.calls.Load() != 0 {
		t.Fatal("delivered before the delay passed")
	}
	clock.Advance(time.Second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if h.calls.Load() != 1 {
		t.Fatal("not delivered after the delay")
	}
	// A delayed call ends with its context.
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		_, err := net.Transport("b").Call(ctx, "https://a.test", &tether.Request{Body: []byte("p")})
		done <- err
	}()
	clock.WaitForWaiters(1, nil)
	cancel()
	if err := <-done; !errors.Is(err, tether.ErrUnavailable) {
		t.Fatalf("canceled delayed call: %v", err)
	}
}

func TestRandomFaultsRepeatable(t *testing.T) {
	a := tethertest.RandomFaults(7, 0.2, 0.1, 0.1, time.Second)
	b := tethertest.RandomFaults(7, 0.2, 0.1, 0.1, time.Second)
	drops := 0
	for range 1000 {
		fa, fb := a("x", "y", nil), b("x", "y", nil)
		if fa != fb {
			t.Fatal("same seed, different faults")
		}
		if fa.Drop {
			drops++
		}
		if fa.Delay < 0 || fa.Delay > time.Second {
			t.Fatalf("delay %v out of range", fa.Delay)
		}
	}
	if drops < 150 || drops > 250 {
		t.Fatalf("%d drops in 1000 at rate 0.2", drops)
	}
}

func TestClock(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := tethertest.NewClock(start)
	early, late := c.After(time.Minute), c.After(time.Hour)
	select {
	case <-c.After(0):
	default:
		t.Fatal("After(0) did not fire at once")
	}
	c.Advance(time.Minute)
	select {
	case got := <-early:
		if !got.Equal(start.Add(time.Minute)) {
			t.Fatalf("fired with %v", got)
		}
	default:
		t.Fatal("After(1m) did not fire after 1m")
	}
	select {
	case <-late:
		t.Fatal("After(1h) fired early")
	default:
	}
	if c.Waiters() != 1 {
		t.Fatalf("Waiters = %d, want 1", c.Waiters())
	}
	c.Set(start.Add(2 * time.Hour))
	<-late
	if !c.Now().Equal(start.Add(2 * time.Hour)) {
		t.Fatal("Set did not move Now")
	}
}

// A signed refusal crosses the network whole: Code and RetryAfter too, as
// tether.Transport requires.
func TestNetworkCarriesRefusals(t *testing.T) {
	net := tethertest.NewNetwork()
	want := &tether.Response{Auth: "signed", Body: []byte(`{"refused":{"code":"paused"}}`), Code: tether.CodePaused, RetryAfter: 7 * time.Second}
	defer net.Listen("https://a.test", handlerFunc(func(context.Context, *tether.Request) (*tether.Response, error) {
		return want, nil
	}))()
	got, err := net.Transport("b").Call(context.Background(), "https://a.test", &tether.Request{Op: tether.OpPush})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if &got.Body[0] == &want.Body[0] {
		t.Fatal("the response body is shared with the handler")
	}
}

// A handler answering neither a response nor an error is a failure, not a
// panic.
func TestNetworkNilResponse(t *testing.T) {
	net := tethertest.NewNetwork()
	defer net.Listen("https://a.test", handlerFunc(func(context.Context, *tether.Request) (*tether.Response, error) {
		return nil, nil
	}))()
	if _, err := net.Transport("b").Call(context.Background(), "https://a.test", &tether.Request{}); !errors.Is(err, tether.ErrUnavailable) {
		t.Fatalf("Call = %v, want unavailable", err)
	}
}

// Without SetClock, and after SetClock(nil), delays run on real time.
func TestNetworkDelayOnRealTime(t *testing.T) {
	net := tethertest.NewNetwork()
	h := &countingHandler{}
	defer net.Listen("https://a.test", h)()
	net.Faults(func(string, string, *tether.Request) tethertest.Fault {
		return tethertest.Fault{Delay: time.Millisecond}
	})
	for _, set := range []bool{false, true} {
		if set {
			net.SetClock(nil)
		}
		if _, err := net.Transport("b").Call(context.Background(), "https://a.test", &tether.Request{Body: []byte("p")}); err != nil {
			t.Fatal(err)
		}
	}
	if h.calls.Load() != 2 {
		t.Fatalf("handler calls %d, want 2", h.calls.Load())
	}
}

type handlerFunc func(ctx context.Context, r *tether.Request) (*tether.Response, error)

func (f handlerFunc) Handle(ctx context.Context, r *tether.Request) (*tether.Response, error) {
	return f(ctx, r)
}
