package sqlstore_test

import (
	"context"
	"database/sql"
	"strings"
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

// A host that applies the exported migrations with its own tool gets the
// schema New would have made: SkipMigrations checks, names what is missing,
// and changes nothing; New without it then finds nothing left to do.
func TestSkipMigrations(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		key := testKey(t)
		skip := sqlstore.Config{Sealer: sealer(t, key), SkipMigrations: true}
		if _, err := sqlstore.New(ctx, db, d, skip); tether.ErrorCode(err) != tether.CodeInvalid || !strings.Contains(err.Error(), "no tether schema") {
			t.Fatalf("SkipMigrations on an empty database: %v", err)
		}
		var tables int
		if err := db.QueryRow(rebind(d, tableCount(d))).Scan(&tables); err != nil || tables != 0 {
			t.Fatalf("SkipMigrations created %d tables (%v)", tables, err)
		}
		all, err := sqlstore.Migrations(d)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range all[:3] { // a host's tool, run with an older tether
			if _, err := db.Exec(m.SQL); err != nil {
				t.Fatalf("%d %s: %v", m.Version, m.Name, err)
			}
		}
		_, err = sqlstore.New(ctx, db, d, skip)
		if tether.ErrorCode(err) != tether.CodeInvalid || !strings.Contains(err.Error(), "0004_oauth.sql, 0005_feed.sql") {
			t.Fatalf("SkipMigrations with migrations 4 and 5 missing: %v", err)
		}
		for _, m := range all[3:] {
			if _, err := db.Exec(m.SQL); err != nil {
				t.Fatalf("%d %s: %v", m.Version, m.Name, err)
			}
		}
		s, err := sqlstore.New(ctx, db, d, skip)
		if err != nil {
			t.Fatalf("SkipMigrations on a migrated database: %v", err)
		}
		c := storetest.NewConnection(1)
		if err := s.CreateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		if _, err := s.AppendOutbox(ctx, c.ID, []byte("hello"), time.Now()); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.ListFeed(ctx, tether.FeedOptions{}); err != nil {
			t.Fatal(err)
		}
		newStore(t, db, d, key) // migrates: nothing left to do
		var n, max int
		if err := db.QueryRow(`SELECT COUNT(*), MAX(version) FROM tether_migrations`).Scan(&n, &max); err != nil {
			t.Fatal(err)
		}
		if n != len(all) || max != len(all) {
			t.Fatalf("%d migrations recorded, highest %d, want %d", n, max, len(all))
		}
		if _, err := db.Exec(rebind(d, `INSERT INTO tether_migrations (version, name, applied_ns) VALUES (?, 'future', 0)`), max+1); err != nil {
			t.Fatal(err)
		}
		if _, err := sqlstore.New(ctx, db, d, skip); err == nil || !strings.Contains(err.Error(), "newer") {
			t.Fatalf("SkipMigrations on a newer schema: %v", err)
		}
	})
}

// tableCount counts the tables of the database (SQLite) or of the schema on
// the search path (PostgreSQL).
func tableCount(d sqlstore.Dialect) string {
	if d == sqlstore.PostgreSQL {
		return `SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()`
	}
	return `SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'`
}
