package tether_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// An error names the operation the host called, not the Store method
// that failed under it, and keeps the Store's code.
func TestErrorsNameTheHostOperation(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL)
	ctx := context.Background()
	const missing = "conn_00000000000000000000000000"
	for _, tc := range []struct {
		op   string
		call func() error
	}{
		{"tether: send", func() error { _, err := alpha.Send(ctx, missing, []byte("x")); return err }},
		{"tether: get", func() error { _, err := alpha.Get(ctx, missing); return err }},
		{"tether: events", func() error { _, err := alpha.Events(ctx, missing, 0, 0); return err }},
		{"tether: pause", func() error { _, err := alpha.Pause(ctx, missing); return err }},
		{"tether: update", func() error { _, err := alpha.Update(ctx, missing, tether.Update{}); return err }},
		{"tether: delete", func() error { _, err := alpha.Delete(ctx, missing); return err }},
		{"tether: transition", func() error {
			_, err := alpha.Transition(ctx, missing, tether.ActionAuthLost, "")
			return err
		}},
	} {
		err := tc.call()
		var e *tether.Error
		if !errors.As(err, &e) || e.Op != tc.op || e.Code != tether.CodeNotFound || !errors.Is(err, tether.ErrNotFound) {
			t.Errorf("%s: %v (%#v), want op %q and code not_found", tc.op, err, e, tc.op)
		}
	}
}

// A canceled or expired context is reported as such, never as internal,
// wrapped or not: errors.Is finds its sentinel and the context's error, and
// it maps to a server-side HTTP status.
func TestContextErrors(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	_, code := alpha.initiate(t, invite(""))

	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Unix(0, 0))
	defer cancel2()
	for _, tc := range []struct {
		ctx      context.Context
		code     tether.Code
		is       error
		sentinel error
	}{
		{canceled, tether.CodeCanceled, context.Canceled, tether.ErrCanceled},
		{expired, tether.CodeDeadlineExceeded, context.DeadlineExceeded, tether.ErrDeadlineExceeded},
	} {
		for name, call := range map[string]func(context.Context) error{
			"send":  func(ctx context.Context) error { _, err := alpha.Send(ctx, aid, []byte("x")); return err },
			"get":   func(ctx context.Context) error { _, err := alpha.Get(ctx, aid); return err },
			"pause": func(ctx context.Context) error { _, err := alpha.Pause(ctx, aid); return err },
			"accept": func(ctx context.Context) error {
				_, err := w.node("acceptor "+string(tc.code), "").Accept(ctx, code, tether.AcceptOptions{})
				return err
			},
		} {
			err := call(tc.ctx)
			if tether.ErrorCode(err) != tc.code || !errors.Is(err, tc.is) || !errors.Is(err, tc.sentinel) {
				t.Errorf("%s with %v: %v (code %q), want %q matching %v and its sentinel", name, tc.is, err, tether.ErrorCode(err), tc.code, tc.is)
			}
			if tether.HTTPStatus(tether.ErrorCode(err)) < 500 {
				t.Errorf("%s: %q maps to a client error status", name, tc.code)
			}
			if strings.Contains(err.Error(), "internal") {
				t.Errorf("%s: %v mentions internal", name, err)
			}
		}
	}
}
