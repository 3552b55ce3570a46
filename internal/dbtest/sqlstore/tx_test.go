package sqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
)

// Store methods called with a Receiver's context run in the delivery's
// transaction: they return on SQLite with one connection (a method using
// another connection would wait for ever; the deadline turns that into a
// failure), their writes are visible inside it, commit with the cursor,
// and are undone with a failing message.
func TestStoreJoinsDelivery(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		key := testKey(t)
		s := newStore(t, db, d, key)
		other := newStore(t, db, d, key) // another Store on the same database
		a, b := storetest.NewConnection(1), storetest.NewConnection(2)
		for _, c := range []*tether.Connection{a, b} {
			if err := s.CreateConnection(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		msg := func(seq int64) []tether.Message { return []tether.Message{{ConnectionID: a.ID, Seq: seq}} }
		now := time.Now()

		// Message 1: every method, then the message is accepted.
		cursor, err := s.DeliverInbox(ctx, a.ID, 0, msg(1), func(ctx context.Context, m tether.Message) error {
			steps := []struct {
				name string
				fn   func() error
			}{
				{"SaveInstance", func() error {
					return s.SaveInstance(ctx, &tether.Instance{ID: "inst_00000000000000000000000001"})
				}},
				{"LoadInstance", func() error { _, err := other.LoadInstance(ctx); return err }},
				{"GetConnection", func() error { _, err := s.GetConnection(ctx, a.ID); return err }},
				{"ListConnections", func() error {
					cs, _, err := s.ListConnections(ctx, tether.ListOptions{})
					if err == nil && len(cs) != 2 {
						err = fmt.Errorf("listed %d connections", len(cs))
					}
					return err
				}},
				{"UpdateConnection", func() error {
					a.Name = "Renamed in the delivery"
					return s.UpdateConnection(ctx, a, tether.Event{Type: tether.EventUpdated, Time: now, Actor: tether.ActorRemote})
				}},
				{"ListEvents", func() error {
					evs, err := other.ListEvents(ctx, a.ID, 0, 0)
					if err == nil && len(evs) != 1 {
						err = fmt.Errorf("listed %d events, want the update's", len(evs))
					}
					return err
				}},
				{"AppendOutbox", func() error {
					seq, err := s.AppendOutbox(ctx, a.ID, []byte("reply"), now)
					if err == nil && seq != 1 {
						err = fmt.Errorf("seq %d", seq)
					}
					return err
				}},
				{"UpdateAndNotify", func() error {
					a.Status = tether.StatusPaused
					seq, err := s.UpdateAndNotify(ctx, a, []byte("paused"))
					if err == nil && seq != 2 {
						err = fmt.Errorf("seq %d", seq)
					}
					return err
				}},
				{"ListOutbox", func() error {
					msgs, err := other.ListOutbox(ctx, a.ID, 0, 0)
					if err == nil && (len(msgs) != 2 || string(msgs[0].Payload) != "reply" || !msgs[1].Control) {
						err = fmt.Errorf("outbox %+v", msgs)
					}
					return err
				}},
				{"AckOutbox", func() error { return s.AckOutbox(ctx, b.ID, 1) }},
				{"CreateConnection", func() error { return s.CreateConnection(ctx, storetest.NewConnection(3)) }},
				{"ConsumeInvitation", func() error {
					return s.ConsumeInvitation(ctx, "inst_b/jti-1", now.Add(time.Hour), storetest.NewConnection(4))
				}},
				{"InboxCursor", func() error { _, err := s.InboxCursor(ctx, b.ID); return err }},
				{"AdvanceInbox", func() error { return s.AdvanceInbox(ctx, b.ID, 0, 7) }},
				{"Lease", func() error {
					ok, err := s.Lease(ctx, "outbox/"+b.ID, "r1", now, now.Add(time.Minute))
					if err == nil && !ok {
						err = errors.New("lease refused")
					}
					return err
				}},
				{"Release", func() error { return s.Release(ctx, "outbox/"+b.ID, "r1") }},
				{"RememberNonce", func() error { _, err := s.RememberNonce(ctx, "inst_b/n1", now, now.Add(time.Minute)); return err }},
			}
			for _, step := range steps {
				if err := step.fn(); err != nil {
					return fmt.Errorf("%s inside the delivery: %w", step.name, err)
				}
			}
			// Writes are in the delivery's transaction, which the Receiver
			// sees through Tx.
			var n int
			if err := sqlstore.Tx(ctx).QueryRowContext(ctx, `SELECT COUNT(*) FROM tether_connections`).Scan(&n); err != nil || n != 4 {
				return fmt.Errorf("the transaction sees %d connections (%v), want 4", n, err)
			}
			// A failing call undoes its own writes only, and leaves the
			// transaction usable. The key's record is written before the
			// stale update fails: it must go with it.
			stale := a.Clone()
			stale.Version = 1
			if err := s.ConsumeInvitation(ctx, "inst_b/jti-2", now.Add(time.Hour), stale); tether.ErrorCode(err) != tether.CodeConflict {
				return fmt.Errorf("a stale ConsumeInvitation: %v, want a conflict", err)
			}
			if err := s.ConsumeInvitation(ctx, "inst_b/jti-2", now.Add(time.Hour), storetest.NewConnection(5)); err != nil {
				return fmt.Errorf("the key of a failed ConsumeInvitation stayed used: %w", err)
			}
			if d == sqlstore.PostgreSQL {
				// A statement PostgreSQL refuses (a NUL in text) would abort
				// the transaction without the call's savepoint.
				bad := tether.Event{Type: tether.EventUpdated, Time: now, Actor: tether.ActorLocal, Detail: "nul\x00byte"}
				if err := s.UpdateConnection(ctx, b, bad); err == nil {
					return errors.New("PostgreSQL accepted a NUL byte in text")
				}
				if _, err := s.GetConnection(ctx, b.ID); err != nil {
					return fmt.Errorf("after a failed statement the transaction is unusable: %w", err)
				}
			}
			// Deliveries do not nest.
			if _, err := s.DeliverInbox(ctx, b.ID, 7, []tether.Message{{ConnectionID: b.ID, Seq: 8}}, func(context.Context, tether.Message) error { return nil }); tether.ErrorCode(err) != tether.CodeInvalid {
				return fmt.Errorf("a nested delivery: %v, want invalid", err)
			}
			return nil
		})
		if err != nil || cursor != 1 {
			t.Fatalf("DeliverInbox = %d, %v; want 1, nil", cursor, err)
		}
		// Committed with the cursor.
		got, err := s.GetConnection(ctx, a.ID)
		if err != nil || got.Name != "Renamed in the delivery" || got.Status != tether.StatusPaused || got.NoticeSeq != 2 {
			t.Fatalf("after the delivery: %+v, %v", got, err)
		}
		wantPayloads(t, s, a.ID, "reply", "paused")
		if c, err := s.InboxCursor(ctx, b.ID); err != nil || c != 7 {
			t.Fatalf("b's inbox cursor %d, %v; want 7", c, err)
		}
		for _, i := range []int{3, 4, 5} {
			if _, err := s.GetConnection(ctx, storetest.ConnID(i)); err != nil {
				t.Fatalf("connection %d created in the delivery: %v", i, err)
			}
		}

		// Message 2: writes, then the Receiver fails: they are undone.
		boom := errors.New("receiver failed")
		cursor, err = s.DeliverInbox(ctx, a.ID, 1, msg(2), func(ctx context.Context, m tether.Message) error {
			if _, err := s.AppendOutbox(ctx, a.ID, []byte("undone"), now); err != nil {
				return err
			}
			a.Name = "Undone"
			if err := s.UpdateConnection(ctx, a); err != nil {
				return err
			}
			if err := s.CreateConnection(ctx, storetest.NewConnection(6)); err != nil {
				return err
			}
			return boom
		})
		if !errors.Is(err, boom) || cursor != 1 {
			t.Fatalf("DeliverInbox = %d, %v; want 1 and the receiver's error", cursor, err)
		}
		if got, _ := s.GetConnection(ctx, a.ID); got.Name != "Renamed in the delivery" {
			t.Fatalf("the failed message's update stayed: name %q", got.Name)
		}
		wantPayloads(t, s, a.ID, "reply", "paused")
		if _, err := s.GetConnection(ctx, storetest.ConnID(6)); tether.ErrorCode(err) != tether.CodeNotFound {
			t.Fatalf("the failed message's connection stayed: %v", err)
		}
	})
}

// Store calls from several goroutines of one Receiver share its
// transaction one at a time.
func TestStoreJoinsDeliveryConcurrently(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s := newStore(t, db, d, testKey(t))
		c := storetest.NewConnection(1)
		if err := s.CreateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		const n = 10
		_, err := s.DeliverInbox(ctx, c.ID, 0, []tether.Message{{ConnectionID: c.ID, Seq: 1}}, func(ctx context.Context, m tether.Message) error {
			errc := make(chan error, n)
			for i := range n {
				go func() {
					_, err := s.AppendOutbox(ctx, c.ID, []byte(fmt.Sprint(i)), time.Now())
					if err == nil {
						_, err = s.ListOutbox(ctx, c.ID, 0, 0)
					}
					errc <- err
				}()
			}
			var errs []error
			for range n {
				errs = append(errs, <-errc)
			}
			return errors.Join(errs...)
		})
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := s.ListOutbox(ctx, c.ID, 0, 0)
		if err != nil || len(msgs) != n || msgs[n-1].Seq != n {
			t.Fatalf("outbox after %d concurrent appends in one delivery: %d messages, %v", n, len(msgs), err)
		}
	})
}

func wantPayloads(t testing.TB, s *sqlstore.Store, id string, want ...string) {
	t.Helper()
	msgs, err := s.ListOutbox(context.Background(), id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, string(m.Payload))
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("outbox payloads (-want +got):\n%s", diff)
	}
}
