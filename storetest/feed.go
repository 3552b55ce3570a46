package storetest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
)

// feedStore returns s as a tether.FeedStore, or nil when it is not one:
// the feed is optional.
func feedStore(s tether.Store) tether.FeedStore {
	fs, _ := s.(tether.FeedStore)
	return fs
}

// readFeed pages through the feed from after with pages of limit and
// returns what it listed and the last cursor, failing on a cursor that
// does not move with a page or an empty one.
func readFeed(t testing.TB, fs tether.FeedStore, after, owner string, limit int) ([]tether.Event, string) {
	t.Helper()
	var all []tether.Event
	for {
		evs, next, err := fs.ListFeed(context.Background(), tether.FeedOptions{After: after, Owner: owner, Limit: limit})
		if err != nil {
			t.Fatalf("ListFeed(%q): %v", after, err)
		}
		if next == "" {
			t.Fatalf("ListFeed(%q) returned an empty cursor", after)
		}
		if len(evs) > tether.EventLimit(limit) {
			t.Fatalf("page of %d events, limit %d", len(evs), limit)
		}
		if len(evs) == 0 {
			if after != "" && next != after {
				t.Fatalf("an empty page after %q returned the cursor %q, want the same", after, next)
			}
			return all, next
		}
		if next == after {
			t.Fatalf("a page of %d events returned the cursor it was given", len(evs))
		}
		all = append(all, evs...)
		after = next
	}
}

// wantFeedOrder fails unless each connection's events in evs come in
// ascending Seq order and no event comes twice.
func wantFeedOrder(t testing.TB, evs []tether.Event) {
	t.Helper()
	last := map[string]int64{}
	seen := map[int64]bool{}
	for i, e := range evs {
		if seen[e.Seq] {
			t.Fatalf("feed event %d: Seq %d listed twice", i, e.Seq)
		}
		seen[e.Seq] = true
		if e.Seq <= last[e.ConnectionID] {
			t.Fatalf("feed event %d: Seq %d of %s after its Seq %d", i, e.Seq, e.ConnectionID, last[e.ConnectionID])
		}
		last[e.ConnectionID] = e.Seq
	}
}

// byConnection groups events by connection, keeping their order.
func byConnection(evs []tether.Event) map[string][]tether.Event {
	out := map[string][]tether.Event{}
	for _, e := range evs {
		out[e.ConnectionID] = append(out[e.ConnectionID], e)
	}
	return out
}

// testFeed: paging through the feed lists every event once, each
// connection's in Seq order, deleted connections' too; Owner filters; an
// empty page returns the cursor it was given.
func testFeed(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	fs := feedStore(s)
	if fs == nil {
		return // optional: nothing to test
	}
	// An empty store: an empty page and a start cursor to poll with.
	evs, start, err := fs.ListFeed(ctx, tether.FeedOptions{})
	if err != nil || len(evs) != 0 || start == "" {
		t.Fatalf("ListFeed on an empty store = %v, %q, %v; want no events and a cursor", evs, start, err)
	}
	if evs, next, err := fs.ListFeed(ctx, tether.FeedOptions{After: start}); err != nil || len(evs) != 0 || next != start {
		t.Fatalf("ListFeed after the start cursor = %v, %q, %v; want no events and the same cursor", evs, next, err)
	}

	a, b, c := NewConnection(1), NewConnection(2), NewConnection(3)
	b.Owner = "team-b"
	a.Status = tether.StatusPending
	mustCreate(t, s, a, ev(tether.EventCreated, "a1"))
	mustCreate(t, s, b, ev(tether.EventCreated, "b1"), ev(tether.EventAccepted, "b2"))
	mustCreate(t, s, c) // no events
	a.Status = tether.StatusActive
	if err := s.UpdateConnection(ctx, a, ev(tether.EventAccepted, "a2")); err != nil {
		t.Fatal(err)
	}
	for i := 3; i <= 60; i++ {
		conn, tag := a, "a"
		if i%3 == 0 {
			conn, tag = b, "b"
		}
		if err := s.UpdateConnection(ctx, conn, ev(tether.EventUpdated, fmt.Sprintf("%s%d", tag, i)), ev(tether.EventUpdated, fmt.Sprintf("%s%d+", tag, i))); err != nil {
			t.Fatal(err)
		}
	}
	b.Status = tether.StatusDeleted
	if err := s.UpdateConnection(ctx, b, ev(tether.EventDeleted, "b-deleted")); err != nil {
		t.Fatal(err)
	}

	want := map[string][]tether.Event{}
	total := 0
	for _, id := range []string{a.ID, b.ID} {
		evs, err := s.ListEvents(ctx, id, 0, tether.MaxEventPage)
		if err != nil {
			t.Fatal(err)
		}
		want[id] = evs
		total += len(evs)
	}

	for _, limit := range []int{1, 7, 0, tether.MaxEventPage + 1} {
		t.Run(fmt.Sprintf("limit %d", limit), func(t *testing.T) {
			got, last := readFeed(t, fs, "", "", limit)
			if len(got) != total {
				t.Fatalf("the feed listed %d events, want %d", len(got), total)
			}
			wantFeedOrder(t, got)
			if diff := cmp.Diff(want, byConnection(got), cmpOpts...); diff != "" {
				t.Fatalf("feed by connection (-want +got):\n%s", diff)
			}
			// Resuming from the last cursor lists only what came since.
			if evs, next, err := fs.ListFeed(ctx, tether.FeedOptions{After: last, Limit: limit}); err != nil || len(evs) != 0 || next != last {
				t.Fatalf("ListFeed after the last cursor = %d events, %q, %v; want none and the same cursor", len(evs), next, err)
			}
		})
	}

	// Limit 0 means DefaultEventPage.
	if evs, _, err := fs.ListFeed(ctx, tether.FeedOptions{}); err != nil || len(evs) != tether.DefaultEventPage {
		t.Fatalf("limit 0 listed %d events (%v), want %d", len(evs), err, tether.DefaultEventPage)
	}

	// Owner filters; resuming after a filtered page lists what came since.
	got, last := readFeed(t, fs, "", "team-b", 4)
	if diff := cmp.Diff(want[b.ID], got, cmpOpts...); diff != "" {
		t.Fatalf("feed of team-b (-want +got):\n%s", diff)
	}
	if got, _ := readFeed(t, fs, "", "team-none", 4); len(got) != 0 {
		t.Fatalf("feed of an owner without connections listed %+v", got)
	}
	if err := s.UpdateConnection(ctx, a, ev(tether.EventUpdated, "a-late")); err != nil {
		t.Fatal(err)
	}
	c.Owner = "team-b"
	if err := s.UpdateConnection(ctx, c, ev(tether.EventUpdated, "c-late")); err != nil {
		t.Fatal(err)
	}
	if got, _ := readFeed(t, fs, last, "team-b", 4); len(got) != 1 || got[0].Detail != "c-late" {
		t.Fatalf("team-b's feed after its last cursor listed %+v, want c-late only", got)
	}
}

// testFeedRejects: cursors that the feed did not return are refused with
// CodeInvalid.
func testFeedRejects(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	fs := feedStore(s)
	if fs == nil {
		return // optional: nothing to test
	}
	mustCreate(t, s, NewConnection(1), ev(tether.EventCreated, "one"))
	for _, after := range []string{
		"x", "0", "1", "v1", "v1.", "v1.0", "v1.0.", "v1..0", "v1.0.0.", "v1.0.0.0", "v2.0.0", "V1.0.0",
		" v1.0.0", "v1.0.0 ", "v1.-1.0", "v1.0.-1", "v1.+1.0", "v1.01.0", "v1.0.01", "v1.0x1.0",
		"v1.0.9223372036854775808", "v1.99999999999999999999.0", "v1.0.1\x00", "v1.0.１",
		strings.Repeat("9", 10000), "' OR 1=1 --", "v1.0.0; DROP TABLE tether_events",
	} {
		evs, next, err := fs.ListFeed(ctx, tether.FeedOptions{After: after})
		if tether.ErrorCode(err) != tether.CodeInvalid || len(evs) != 0 || next != "" {
			t.Errorf("ListFeed(%q) = %d events, %q, %v; want a CodeInvalid error", after, len(evs), next, err)
			continue
		}
		wantCode(t, err, tether.CodeInvalid)
	}
	if evs, _, err := fs.ListFeed(ctx, tether.FeedOptions{}); err != nil || len(evs) != 1 {
		t.Fatalf("after the refusals the feed lists %d events, %v; want 1", len(evs), err)
	}
}

// testFeedConcurrent: appenders on several connections and a reader
// following the feed at the same time; the reader lists every event once,
// each connection's in Seq order.
func testFeedConcurrent(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	fs := feedStore(s)
	if fs == nil {
		return // optional: nothing to test
	}
	const (
		writers = 6
		updates = 25
		shared  = 3 // writers 0..shared-1 write to one connection between them
	)
	for i := range writers {
		mustCreate(t, s, NewConnection(i+1))
	}
	var (
		done    = make(chan struct{})
		listed  []tether.Event
		after   string // the reader's cursor
		readErr error
		wg      sync.WaitGroup
	)
	wg.Add(1)
	go func() { // the reader, until the writers are done
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			evs, next, err := fs.ListFeed(ctx, tether.FeedOptions{After: after, Limit: 5})
			if err != nil {
				readErr = err
				return
			}
			listed = append(listed, evs...)
			after = next
			if len(evs) == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	errs := race(writers, func(i int) error {
		id := ConnID(i + 1)
		if i < shared {
			id = ConnID(1)
		}
		for k := range updates {
			err := updateRetrying(ctx, s, id, ev(tether.EventUpdated, fmt.Sprintf("w%d-%d", i, k)), ev(tether.EventUpdated, fmt.Sprintf("w%d-%d+", i, k)))
			if err != nil {
				return err
			}
		}
		return nil
	})
	close(done)
	wg.Wait()
	winners(t, errs, "")
	if readErr != nil {
		t.Fatalf("the reader: %v", readErr)
	}
	// The reader follows on from its cursor until every event is there: a
	// store may hold events back while other writes to its database are
	// in flight.
	const total = writers * updates * 2
	deadline := time.Now().Add(30 * time.Second)
	for len(listed) < total && time.Now().Before(deadline) {
		evs, next := readFeed(t, fs, after, "", 0)
		listed, after = append(listed, evs...), next
		if len(evs) == 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if len(listed) != total {
		t.Fatalf("the feed listed %d events, want %d", len(listed), total)
	}
	// A second reader, from the start, lists the same events in the same
	// order.
	if again, _ := readFeed(t, fs, "", "", 0); !cmp.Equal(listed, again, cmpOpts...) {
		t.Fatalf("a second reader lists the feed differently (-first +second):\n%s", cmp.Diff(listed, again, cmpOpts...))
	}
	wantFeedOrder(t, listed)
	want := map[string][]tether.Event{}
	for i := range writers {
		evs, err := s.ListEvents(ctx, ConnID(i+1), 0, tether.MaxEventPage)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) > 0 {
			want[ConnID(i+1)] = evs
		}
	}
	if diff := cmp.Diff(want, byConnection(listed), cmpOpts...); diff != "" {
		t.Fatalf("feed by connection (-want +got):\n%s", diff)
	}
}

// updateRetrying appends events to connection id, reading it again while
// another writer wins.
func updateRetrying(ctx context.Context, s tether.Store, id string, events ...tether.Event) error {
	for {
		c, err := s.GetConnection(ctx, id)
		if err != nil {
			return err
		}
		err = s.UpdateConnection(ctx, c, events...)
		if tether.ErrorCode(err) != tether.CodeConflict {
			return err
		}
	}
}
