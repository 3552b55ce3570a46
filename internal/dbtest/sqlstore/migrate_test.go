package sqlstore_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
)

// Migration 3 closes the outboxes of connections deleted before it and
// drops their data messages; other outboxes stay as they were.
func TestMigrationClosesDeletedOutboxes(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		key := testKey(t)
		s := newStore(t, db, d, key)
		kept, gone := storetest.NewConnection(1), storetest.NewConnection(2)
		for _, c := range []*tether.Connection{kept, gone} {
			if err := s.CreateConnection(ctx, c); err != nil {
				t.Fatal(err)
			}
			for _, p := range []string{"one", "two"} {
				if _, err := s.AppendOutbox(ctx, c.ID, []byte(p), time.Now()); err != nil {
					t.Fatal(err)
				}
			}
		}
		// Back to the schema before migration 3, with gone deleted the way
		// a store of that version deleted it: its messages left in place.
		for _, q := range []string{
			`ALTER TABLE tether_outbox DROP COLUMN control`,
			`ALTER TABLE tether_outbox_seq DROP COLUMN closed`,
			`DELETE FROM tether_migrations WHERE version = 3`,
		} {
			if _, err := db.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		if _, err := db.Exec(rebind(d, `UPDATE tether_connections SET status = ? WHERE id = ?`), string(tether.StatusDeleted), gone.ID); err != nil {
			t.Fatal(err)
		}

		s = newStore(t, db, d, key)
		wantPayloads(t, s, kept.ID, "one", "two")
		wantPayloads(t, s, gone.ID)
		if seq, err := s.AppendOutbox(ctx, kept.ID, []byte("three"), time.Now()); err != nil || seq != 3 {
			t.Fatalf("AppendOutbox to a live connection after the migration: %d, %v", seq, err)
		}
		if _, err := s.AppendOutbox(ctx, gone.ID, []byte("three"), time.Now()); tether.ErrorCode(err) != tether.CodeNotConnected {
			t.Fatalf("AppendOutbox to a connection deleted before the migration: %v, want not_connected", err)
		}
	})
}
