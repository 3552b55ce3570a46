package sqlstore_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/sqlerr"
	"github.com/tetherkit/tether/sqlstore"
)

// Real driver errors are translated by their type and code: a duplicate key
// from each driver, a busy SQLite database, a canceled context.
func TestDriverErrorsTranslated(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		if _, err := db.Exec(`CREATE TABLE dup (k TEXT PRIMARY KEY)`); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(`INSERT INTO dup (k) VALUES ('a')`); err != nil {
			t.Fatal(err)
		}
		_, err := db.Exec(`INSERT INTO dup (k) VALUES ('a')`)
		if got := sqlerr.Translate("test", err); tether.ErrorCode(got) != tether.CodeAlreadyExists || !errors.Is(got, err) {
			t.Fatalf("duplicate key %v -> %v, want already_exists wrapping the driver error", err, got)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err = db.ExecContext(ctx, `SELECT 1`)
		if got := sqlerr.Translate("test", err); tether.ErrorCode(got) != tether.CodeUnavailable || !errors.Is(got, context.Canceled) {
			t.Fatalf("canceled: %v -> %v", err, got)
		}
		_, err = db.Exec(`SELECT * FROM no_such_table`)
		if got := sqlerr.Translate("test", err); tether.ErrorCode(got) != tether.CodeInternal {
			t.Fatalf("missing table: %v -> %v", err, got)
		}
	})
	// SQLite busy: a second connection writing while the first holds the
	// write lock, with no busy timeout.
	path := t.TempDir() + "/busy.db"
	a, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(0)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := a.Exec(`CREATE TABLE x (v INTEGER)`); err != nil {
		t.Fatal(err)
	}
	tx, err := a.Begin()
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.Exec(`INSERT INTO x VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	_, err = b.Exec(`INSERT INTO x VALUES (2)`)
	if got := sqlerr.Translate("test", err); tether.ErrorCode(got) != tether.CodeUnavailable {
		t.Fatalf("busy: %v -> %v, want unavailable", err, got)
	}
}
