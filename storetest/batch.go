package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/tetherkit/tether"
)

// testOutboxBatch: a BatchAppender stores a batch with consecutive numbers
// after the messages already there, in order, with its payloads intact;
// refuses a missing or deleted connection, and a canceled context, storing
// nothing; and keeps each of several concurrent batches consecutive.
// Stores that are not BatchAppenders pass.
func testOutboxBatch(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	ba, ok := s.(tether.BatchAppender)
	if !ok {
		return // optional: Node.SendBatch appends one at a time instead
	}
	_, err := ba.AppendOutboxBatch(ctx, ConnID(1), [][]byte{[]byte("x")}, base)
	wantCode(t, err, tether.CodeNotFound)
	mustCreate(t, s, NewConnection(1))
	mustAppend(t, s, ConnID(1), "single")
	first, err := ba.AppendOutboxBatch(ctx, ConnID(1), [][]byte{[]byte("a"), {}, []byte("c")}, base)
	if err != nil || first != 2 {
		t.Fatalf("AppendOutboxBatch after one message = %d, %v; want 2", first, err)
	}
	if seq := mustAppend(t, s, ConnID(1), "after"); seq != 5 {
		t.Fatalf("the append after a batch of 3 took number %d, want 5", seq)
	}
	wantOutbox(t, s, ConnID(1), []tether.Message{data(1, "single"), data(2, "a"), data(3, ""), data(4, "c"), data(5, "after")}, "after a batch")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := ba.AppendOutboxBatch(cctx, ConnID(1), [][]byte{[]byte("late")}, base); err == nil {
		t.Fatal("AppendOutboxBatch with a canceled context succeeded")
	}
	c := NewConnection(1)
	c.Version = 1
	c.Status = tether.StatusDeleted
	c.UpdatedAt = base.Add(1)
	if err := s.UpdateConnection(ctx, c); err != nil {
		t.Fatal(err)
	}
	_, err = ba.AppendOutboxBatch(ctx, ConnID(1), [][]byte{[]byte("x"), []byte("y")}, base)
	wantCode(t, err, tether.CodeNotConnected)

	// Concurrent batches on one connection: each is consecutive.
	mustCreate(t, s, NewConnection(2))
	const batches, size = 6, 20
	firsts := make([]int64, batches)
	var wg sync.WaitGroup
	for b := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			payloads := make([][]byte, size)
			for i := range payloads {
				payloads[i] = []byte(fmt.Sprintf("%d-%d", b, i))
			}
			first, err := ba.AppendOutboxBatch(ctx, ConnID(2), payloads, base)
			if err != nil {
				t.Errorf("batch %d: %v", b, err)
			}
			firsts[b] = first
		}()
	}
	wg.Wait()
	var want []tether.Message
	for range batches * size {
		want = append(want, tether.Message{})
	}
	for b, first := range firsts {
		for i := range size {
			want[first-1+int64(i)] = data(first+int64(i), fmt.Sprintf("%d-%d", b, i))
		}
	}
	wantOutbox(t, s, ConnID(2), want, "after concurrent batches")
}
