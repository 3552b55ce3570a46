package memstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/storetest"
	"github.com/tetherkit/tether/tethertest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(testing.TB) tether.Store { return memstore.New() })
}

// Consumed invitation keys are forgotten an hour after they expire by the
// Store's clock, not the machine's.
func TestUsedKeysForgottenByClock(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := tethertest.NewClock(start)
	s := memstore.New(memstore.WithClock(clock))
	expires := start.Add(time.Hour)
	if err := s.ConsumeInvitation(ctx, "k1", expires, storetest.NewConnection(1)); err != nil {
		t.Fatal(err)
	}
	if err := s.ConsumeInvitation(ctx, "k1", expires, storetest.NewConnection(2)); tether.ErrorCode(err) != tether.CodeAlreadyUsed {
		t.Fatalf("k1 again before its expiry: %v, want already_used", err)
	}
	clock.Set(expires.Add(time.Hour + 2*time.Minute))
	if err := s.ConsumeInvitation(ctx, "k1", expires, storetest.NewConnection(3)); err != nil {
		t.Fatalf("k1 again an hour past its expiry on the Store's clock: %v", err)
	}
}

// A nil clock leaves the system clock in place.
func TestWithNilClock(t *testing.T) {
	s := memstore.New(memstore.WithClock(nil))
	if err := s.ConsumeInvitation(context.Background(), "k", time.Now().Add(time.Hour), storetest.NewConnection(1)); err != nil {
		t.Fatal(err)
	}
}
