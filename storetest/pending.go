package storetest

import (
	"context"
	"slices"
	"testing"

	"github.com/tetherkit/tether"
)

// testPendingOutboxes: an OutboxScanner lists the connections with
// unacknowledged messages, a deleted one with its notice among them, in
// ID order and in pages, and forgets a connection once its outbox is
// acknowledged. Stores that are not OutboxScanners pass.
func testPendingOutboxes(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	scan, ok := s.(tether.OutboxScanner)
	if !ok {
		return // optional: Run reads connection by connection instead
	}
	list := func(after string, limit int) []string {
		t.Helper()
		ids, err := scan.PendingOutboxes(ctx, after, limit)
		if err != nil {
			t.Fatalf("PendingOutboxes(%q, %d): %v", after, limit, err)
		}
		return ids
	}
	if ids := list("", 0); len(ids) != 0 {
		t.Fatalf("an empty store lists %v", ids)
	}
	for i := 1; i <= 6; i++ {
		mustCreate(t, s, NewConnection(i))
	}
	for _, i := range []int{5, 2, 4, 2} {
		mustAppend(t, s, ConnID(i), "m")
	}
	// Connection 6 is deleted with a notice its peer has not had.
	c := NewConnection(6)
	c.Version = 1
	c.Status = tether.StatusDeleted
	c.UpdatedAt = base.Add(1)
	if _, err := s.UpdateAndNotify(ctx, c, []byte(`{"type":"deleted"}`), ev(tether.EventDeleted, "deleted")); err != nil {
		t.Fatalf("delete with a notice: %v", err)
	}
	want := []string{ConnID(2), ConnID(4), ConnID(5), ConnID(6)}
	if got := list("", 0); !slices.Equal(got, want) {
		t.Fatalf("PendingOutboxes = %v, want %v", got, want)
	}
	// In pages.
	if got := list("", 2); !slices.Equal(got, want[:2]) {
		t.Fatalf("first page of 2 = %v, want %v", got, want[:2])
	}
	if got := list(ConnID(4), 2); !slices.Equal(got, want[2:]) {
		t.Fatalf("page after %s = %v, want %v", ConnID(4), got, want[2:])
	}
	// Acknowledged: gone from the list; one message of two left: still there.
	if err := s.AckOutbox(ctx, ConnID(5), 1); err != nil {
		t.Fatal(err)
	}
	if err := s.AckOutbox(ctx, ConnID(2), 1); err != nil {
		t.Fatal(err)
	}
	if err := s.AckOutbox(ctx, ConnID(6), 1); err != nil {
		t.Fatal(err)
	}
	if got, want := list("", 0), []string{ConnID(2), ConnID(4)}; !slices.Equal(got, want) {
		t.Fatalf("after acknowledgements PendingOutboxes = %v, want %v", got, want)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := scan.PendingOutboxes(cctx, "", 0); err == nil {
		t.Fatal("PendingOutboxes with a canceled context succeeded")
	}
}
