package sqlstore_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
)

func event(t tether.EventType, detail string) tether.Event {
	return tether.Event{Type: t, Time: time.Unix(1700000000, 0).UTC(), Actor: tether.ActorSystem, Detail: detail}
}

// feedDetails returns the details of the events the feed lists after
// after, and the cursor to go on with.
func feedDetails(t testing.TB, s *sqlstore.Store, after string) ([]string, string) {
	t.Helper()
	var out []string
	for {
		evs, next, err := s.ListFeed(context.Background(), tether.FeedOptions{After: after})
		if err != nil {
			t.Fatalf("ListFeed: %v", err)
		}
		for _, e := range evs {
			out = append(out, e.Detail)
		}
		after = next
		if len(evs) == 0 {
			return out, after
		}
	}
}

// feedUntil reads the feed from after until it listed n events, or fails
// after a while: other transactions on the server hold the feed back
// until they end.
func feedUntil(t testing.TB, s *sqlstore.Store, after string, n int) ([]string, string) {
	t.Helper()
	var out []string
	deadline := time.Now().Add(20 * time.Second)
	for {
		got, next := feedDetails(t, s, after)
		out, after = append(out, got...), next
		if len(out) >= n || time.Now().After(deadline) {
			return out, after
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// On PostgreSQL an event's Seq is taken when it is inserted, not when its
// transaction commits. A transaction holds an event with a lower Seq
// uncommitted while a later write commits one with a higher Seq: the feed
// holds the later one back until the first commits, and then lists both,
// the held one first, neither skipped.
func TestFeedInFlightPostgres(t *testing.T) {
	ctx := context.Background()
	db := openPostgres(t, newSchema(t))
	s := newStore(t, db, sqlstore.PostgreSQL, testKey(t))
	a, b := storetest.NewConnection(1), storetest.NewConnection(2)
	if err := s.CreateConnection(ctx, a, event(tether.EventCreated, "a-created")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateConnection(ctx, b, event(tether.EventCreated, "b-created")); err != nil {
		t.Fatal(err)
	}
	got, cursor := feedUntil(t, s, "", 2)
	if diff := cmp.Diff([]string{"a-created", "b-created"}, got); diff != "" {
		t.Fatalf("feed before (-want +got):\n%s", diff)
	}

	// A transaction of its own inserts an event row and stays open.
	held, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback()
	var heldSeq int64
	if err := held.QueryRowContext(ctx, `INSERT INTO tether_events (connection_id, type, time_ns, actor, detail)
		VALUES ($1, 'updated', 0, 'system', 'a-held') RETURNING seq`, a.ID).Scan(&heldSeq); err != nil {
		t.Fatal(err)
	}
	// A later write commits an event with a higher Seq.
	if err := s.UpdateConnection(ctx, b, event(tether.EventUpdated, "b-later")); err != nil {
		t.Fatal(err)
	}
	evs, err := s.ListEvents(ctx, b.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if later := evs[len(evs)-1].Seq; later <= heldSeq {
		t.Fatalf("the later event has Seq %d, not above the held one's %d: the test shows nothing", later, heldSeq)
	}
	got, cursor = feedDetails(t, s, cursor)
	if len(got) != 0 {
		t.Errorf("while an earlier transaction is open the feed listed %v, want nothing yet", got)
	}

	if err := held.Commit(); err != nil {
		t.Fatal(err)
	}
	got, _ = feedUntil(t, s, cursor, 2)
	if diff := cmp.Diff([]string{"a-held", "b-later"}, got); diff != "" {
		t.Fatalf("feed after the commit (-want +got):\n%s", diff)
	}
}

// On PostgreSQL a transaction may take its ID before another that then
// commits an event of a connection first; its own event of that
// connection, written after, still comes after it in the feed, in Seq
// order. Here the early transaction is a delivery's (DeliverInbox), whose
// Receiver updates the connection.
func TestFeedConnectionOrderPostgres(t *testing.T) {
	ctx := context.Background()
	db := openPostgres(t, newSchema(t))
	s := newStore(t, db, sqlstore.PostgreSQL, testKey(t))
	a, c := storetest.NewConnection(1), storetest.NewConnection(2)
	for _, conn := range []*tether.Connection{a, c} {
		if err := s.CreateConnection(ctx, conn); err != nil {
			t.Fatal(err)
		}
	}
	var early int64
	_, err := s.DeliverInbox(ctx, c.ID, 0, []tether.Message{{ConnectionID: c.ID, Seq: 1}}, func(ctx context.Context, _ tether.Message) error {
		if err := sqlstore.Tx(ctx).QueryRowContext(ctx, `SELECT CAST(CAST(pg_current_xact_id() AS TEXT) AS BIGINT)`).Scan(&early); err != nil {
			return err
		}
		// A transaction that begins later, so with a higher ID, writes
		// a's first event and commits.
		if err := s.UpdateConnection(context.Background(), a, event(tether.EventUpdated, "a-first")); err != nil {
			return err
		}
		// The delivery's transaction now writes a's second event.
		got, err := s.GetConnection(ctx, a.ID)
		if err != nil {
			return err
		}
		return s.UpdateConnection(ctx, got, event(tether.EventUpdated, "a-second"))
	})
	if err != nil {
		t.Fatal(err)
	}
	var first int64
	if err := db.QueryRow(`SELECT CAST(CAST(tx AS TEXT) AS BIGINT) FROM tether_events WHERE detail = 'a-first'`).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if early >= first {
		t.Fatalf("the delivery's transaction ID %d is not below a-first's %d: the test shows nothing", early, first)
	}
	got, _ := feedUntil(t, s, "", 2)
	if diff := cmp.Diff([]string{"a-first", "a-second"}, got); diff != "" {
		t.Fatalf("feed (-want +got):\n%s", diff)
	}
}

// The feed is not read inside a delivery's transaction, whose own events
// are not committed yet.
func TestFeedRefusedInDelivery(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		c := storetest.NewConnection(1)
		if err := s.CreateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		_, err := s.DeliverInbox(ctx, c.ID, 0, []tether.Message{{ConnectionID: c.ID, Seq: 1}}, func(ctx context.Context, _ tether.Message) error {
			got, err := s.GetConnection(ctx, c.ID)
			if err != nil {
				return err
			}
			if err := s.UpdateConnection(ctx, got, event(tether.EventUpdated, "in delivery")); err != nil {
				return err
			}
			_, _, err = s.ListFeed(ctx, tether.FeedOptions{})
			return err
		})
		if tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("ListFeed in a delivery: %v, want invalid", err)
		}
		if got, _ := feedDetails(t, s, ""); len(got) != 0 {
			t.Fatalf("the feed lists %v, want nothing: the delivery's write was undone", got)
		}
	})
}

// Migration 5 keeps the events stored before it: they come first in the
// feed, in Seq order, and those written after follow.
func TestMigrationFeed(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		key := testKey(t)
		s := newStore(t, db, d, key)
		a, b := storetest.NewConnection(1), storetest.NewConnection(2)
		if err := s.CreateConnection(ctx, a, event(tether.EventCreated, "a1")); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateConnection(ctx, b, event(tether.EventCreated, "b1")); err != nil {
			t.Fatal(err)
		}
		if err := s.UpdateConnection(ctx, a, event(tether.EventUpdated, "a2")); err != nil {
			t.Fatal(err)
		}
		// Back to the schema before migration 5.
		undo := []string{`DELETE FROM tether_migrations WHERE version = 5`}
		if d == sqlstore.PostgreSQL {
			undo = append(undo, `ALTER TABLE tether_events DROP COLUMN tx`)
		}
		for _, q := range undo {
			if _, err := db.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		s = newStore(t, db, d, key)
		got, cursor := feedDetails(t, s, "")
		if diff := cmp.Diff([]string{"a1", "b1", "a2"}, got); diff != "" {
			t.Fatalf("feed after the migration (-want +got):\n%s", diff)
		}
		if err := s.UpdateConnection(ctx, b, event(tether.EventUpdated, "b2")); err != nil {
			t.Fatal(err)
		}
		got, _ = feedUntil(t, s, cursor, 1)
		if diff := cmp.Diff([]string{"b2"}, got); diff != "" {
			t.Fatalf("feed after a write (-want +got):\n%s", diff)
		}
	})
}
