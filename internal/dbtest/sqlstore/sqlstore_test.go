package sqlstore_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
	"github.com/tetherkit/tether/tethertest"
)

// postgresEnv names the variable that holds the PostgreSQL URL for tests.
const postgresEnv = "TETHER_POSTGRES_URL"

// testKey is the sealing key of the tests' stores, in hex so child
// processes can be given it.
func testKey(t testing.TB) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

func sealer(t testing.TB, key []byte) *tether.Sealer {
	t.Helper()
	s, err := tether.NewSealer("k1", map[string][]byte{"k1": key})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// sqliteDSN is the recommended DSN for a SQLite file (see the package
// documentation).
func sqliteDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate"
}

// openSQLite opens a database in a new temporary file.
func openSQLite(t testing.TB) (*sql.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tether.db")
	return openSQLiteAt(t, path), path
}

func openSQLiteAt(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", sqliteDSN(path))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// postgresURL returns the test server's URL, or skips the test when the
// variable is unset (CI sets it; there the test must run).
func postgresURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv(postgresEnv)
	if u == "" {
		t.Skipf("%s is not set: PostgreSQL tests skipped (.ci/run sets it)", postgresEnv)
	}
	return u
}

// newSchema creates a schema of its own for one test and returns a DSN
// whose connections use it; the schema is dropped afterwards.
func newSchema(t testing.TB) string {
	t.Helper()
	base := postgresURL(t)
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.Ping(); err != nil {
		t.Fatalf("PostgreSQL at %s cannot be reached: %v", postgresEnv, err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "tether_test_" + hex.EncodeToString(b)
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		admin, err := sql.Open("pgx", base)
		if err == nil {
			_, _ = admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
			admin.Close()
		}
	})
	return withSearchPath(t, base, schema)
}

func withSearchPath(t testing.TB, base, schema string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

func openPostgres(t testing.TB, dsn string) *sql.DB {
	t.Helper()
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(20) // as sqlstore's documentation recommends
	t.Cleanup(func() { db.Close() })
	return db
}

func newStore(t testing.TB, db *sql.DB, d sqlstore.Dialect, key []byte) *sqlstore.Store {
	t.Helper()
	s, err := sqlstore.New(context.Background(), db, d, sqlstore.Config{Sealer: sealer(t, key)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformanceSQLite(t *testing.T) {
	storetest.Run(t, func(t testing.TB) tether.Store {
		db, _ := openSQLite(t)
		return newStore(t, db, sqlstore.SQLite, testKey(t))
	})
}

func TestConformancePostgres(t *testing.T) {
	postgresURL(t)
	storetest.Run(t, func(t testing.TB) tether.Store {
		return newStore(t, openPostgres(t, newSchema(t)), sqlstore.PostgreSQL, testKey(t))
	})
}

// dialects runs fn against a fresh SQLite file and a fresh PostgreSQL
// schema.
func dialects(t *testing.T, fn func(t *testing.T, db *sql.DB, d sqlstore.Dialect)) {
	t.Run("sqlite", func(t *testing.T) {
		db, _ := openSQLite(t)
		fn(t, db, sqlstore.SQLite)
	})
	t.Run("postgres", func(t *testing.T) {
		fn(t, openPostgres(t, newSchema(t)), sqlstore.PostgreSQL)
	})
}

// SECURITY.md 33: no plaintext private key in the rows; a tampered
// ciphertext is an error, never garbage.
func TestSecretsSealed(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		key := testKey(t)
		store := newStore(t, db, d, key)
		node, err := tether.Open(ctx, tether.Config{Store: store})
		if err != nil {
			t.Fatal(err)
		}
		inst, err := store.LoadInstance(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if inst.ID != node.ID() || len(inst.Keys) != 1 {
			t.Fatalf("loaded %+v", inst)
		}
		priv := inst.Keys[0].Private
		for _, table := range []string{"tether_instance", "tether_connections", "tether_events"} {
			raw := dumpTable(t, db, table)
			for _, secret := range [][]byte{priv, priv.Seed(), []byte(base64.StdEncoding.EncodeToString(priv)), []byte(base64.RawURLEncoding.EncodeToString(priv.Seed())), []byte(hex.EncodeToString(priv.Seed()))} {
				if bytes.Contains(raw, secret) {
					t.Fatalf("table %s holds the private key in plaintext", table)
				}
			}
		}
		// Tamper with one byte of the sealed keys.
		var sealed []byte
		if err := db.QueryRow(`SELECT keys FROM tether_instance`).Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, 5, len(sealed) / 2, len(sealed) - 1} {
			bad := bytes.Clone(sealed)
			bad[i] ^= 0x01
			if _, err := db.Exec(rebind(d, `UPDATE tether_instance SET keys = ?`), bad); err != nil {
				t.Fatal(err)
			}
			_, err := store.LoadInstance(ctx)
			if tether.ErrorCode(err) != tether.CodeInvalid {
				t.Fatalf("byte %d tampered: LoadInstance = %v, want an invalid-data error", i, err)
			}
			if _, err := tether.Open(ctx, tether.Config{Store: store}); err == nil {
				t.Fatal("a node opened on tampered keys")
			}
		}
		if _, err := db.Exec(rebind(d, `UPDATE tether_instance SET keys = ?`), sealed); err != nil {
			t.Fatal(err)
		}
		// Another key ring does not open it.
		other := newStore(t, db, d, testKey(t))
		if _, err := other.LoadInstance(ctx); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("a store with another key opened the identity: %v", err)
		}
		// A ring with a new current key still opens the old one, and seals
		// with the new one.
		both, err := tether.NewSealer("k2", map[string][]byte{"k1": key, "k2": testKey(t)})
		if err != nil {
			t.Fatal(err)
		}
		rotated, err := sqlstore.New(ctx, db, d, sqlstore.Config{Sealer: both})
		if err != nil {
			t.Fatal(err)
		}
		got, err := rotated.LoadInstance(ctx)
		if err != nil || !got.Keys[0].Private.Equal(priv) {
			t.Fatalf("the rotated ring does not open the old seal: %v", err)
		}
		if err := rotated.SaveInstance(ctx, got); err != nil {
			t.Fatal(err)
		}
		if _, err := store.LoadInstance(ctx); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("after resealing with k2, a ring without k2 still opens it: %v", err)
		}
	})
}

func rebind(d sqlstore.Dialect, q string) string {
	if d != sqlstore.PostgreSQL {
		return q
	}
	n := 0
	var b strings.Builder
	for _, r := range q {
		if r == '?' {
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// dumpTable returns every value of every row of a table, concatenated.
func dumpTable(t testing.TB, db *sql.DB, table string) []byte {
	t.Helper()
	rows, err := db.Query(`SELECT * FROM ` + table)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []byte
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		for _, v := range vals {
			out = append(out, fmt.Sprint(v)...)
			if b, ok := v.([]byte); ok {
				out = append(out, b...)
			}
		}
	}
	return out
}

func TestMigrationsIdempotent(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		key := testKey(t)
		for range 3 {
			newStore(t, db, d, key)
		}
		var n, max int
		if err := db.QueryRow(`SELECT COUNT(*), MAX(version) FROM tether_migrations`).Scan(&n, &max); err != nil {
			t.Fatal(err)
		}
		if n != max || n < 1 {
			t.Fatalf("%d migrations recorded, highest %d", n, max)
		}
		// A database from a newer tether is refused, not damaged.
		if _, err := db.Exec(rebind(d, `INSERT INTO tether_migrations (version, name, applied_ns) VALUES (?, 'future', 0)`), max+1); err != nil {
			t.Fatal(err)
		}
		_, err := sqlstore.New(context.Background(), db, d, sqlstore.Config{Sealer: sealer(t, key)})
		if err == nil || !strings.Contains(err.Error(), "newer") {
			t.Fatalf("New on a newer schema: %v", err)
		}
	})
}

func TestNewRejects(t *testing.T) {
	db, _ := openSQLite(t)
	ctx := context.Background()
	for name, f := range map[string]func() error{
		"no db": func() error {
			_, err := sqlstore.New(ctx, nil, sqlstore.SQLite, sqlstore.Config{Sealer: sealer(t, testKey(t))})
			return err
		},
		"no dialect": func() error {
			_, err := sqlstore.New(ctx, db, "mysql", sqlstore.Config{Sealer: sealer(t, testKey(t))})
			return err
		},
		"no sealer": func() error { _, err := sqlstore.New(ctx, db, sqlstore.SQLite, sqlstore.Config{}); return err },
	} {
		if err := f(); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Driver errors keep their cause and a code.
	db.Close()
	_, err := newStoreErr(db)
	var e *tether.Error
	if !errors.As(err, &e) {
		t.Fatalf("closed database: %v", err)
	}
}

func newStoreErr(db *sql.DB) (*sqlstore.Store, error) {
	s, _ := tether.NewSealer("k", map[string][]byte{"k": make([]byte, 32)})
	return sqlstore.New(context.Background(), db, sqlstore.SQLite, sqlstore.Config{Sealer: s})
}

// A Receiver writing through Tx: its writes commit with the cursor, and a
// failing message's writes are undone while the earlier ones stay.
func TestDeliverInboxTx(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		if _, err := db.Exec(`CREATE TABLE applied (seq BIGINT NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		c := storetest.NewConnection(1)
		if err := s.CreateConnection(ctx, c); err != nil {
			t.Fatal(err)
		}
		var msgs []tether.Message
		for i := int64(1); i <= 4; i++ {
			msgs = append(msgs, tether.Message{ConnectionID: c.ID, Seq: i})
		}
		if sqlstore.Tx(ctx) != nil {
			t.Fatal("Tx outside a delivery is not nil")
		}
		cursor, err := s.DeliverInbox(ctx, c.ID, 0, msgs, func(ctx context.Context, m tether.Message) error {
			if _, err := sqlstore.Tx(ctx).ExecContext(ctx, rebind(d, `INSERT INTO applied (seq) VALUES (?)`), m.Seq); err != nil {
				return err
			}
			if m.Seq == 3 {
				return errors.New("fails after writing")
			}
			return nil
		})
		if cursor != 2 || err == nil {
			t.Fatalf("DeliverInbox = %d, %v", cursor, err)
		}
		var n, max int
		if err := db.QueryRow(`SELECT COUNT(*), MAX(seq) FROM applied`).Scan(&n, &max); err != nil {
			t.Fatal(err)
		}
		if n != 2 || max != 2 {
			t.Fatalf("applied %d rows up to %d, want 2 up to 2", n, max)
		}
	})
}

// Used invitations are forgotten a day after they expire, not before.
func TestUsedInvitationsPurged(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		long := time.Now().Add(-48 * time.Hour)
		if err := s.ConsumeInvitation(ctx, "old", long, storetest.NewConnection(1)); err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeInvitation(ctx, "recent", time.Now().Add(-time.Hour), storetest.NewConnection(2)); err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeInvitation(ctx, "new", time.Now().Add(time.Hour), storetest.NewConnection(3)); err != nil {
			t.Fatal(err)
		}
		var keys []string
		rows, err := db.Query(`SELECT key FROM tether_used_invitations ORDER BY key`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			rows.Scan(&k)
			keys = append(keys, k)
		}
		if strings.Join(keys, ",") != "new,recent" {
			t.Fatalf("kept %v, want new and recent", keys)
		}
		if err := s.ConsumeInvitation(ctx, "recent", time.Now(), storetest.NewConnection(4)); tether.ErrorCode(err) != tether.CodeAlreadyUsed {
			t.Fatalf("a recent key was forgotten: %v", err)
		}
	})
}

// The Store's own times come from Config.Clock: when a migration was
// applied, and which used invitations are old enough to forget.
func TestClock(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		start := time.Date(2040, 1, 1, 0, 0, 0, 0, time.UTC)
		clock := tethertest.NewClock(start)
		s, err := sqlstore.New(ctx, db, d, sqlstore.Config{Sealer: sealer(t, testKey(t)), Clock: clock})
		if err != nil {
			t.Fatal(err)
		}
		var lo, hi int64
		if err := db.QueryRow(`SELECT MIN(applied_ns), MAX(applied_ns) FROM tether_migrations`).Scan(&lo, &hi); err != nil {
			t.Fatal(err)
		}
		if lo != start.UnixNano() || hi != start.UnixNano() {
			t.Fatalf("migrations applied at %v to %v, want the clock's %v", time.Unix(0, lo).UTC(), time.Unix(0, hi).UTC(), start)
		}
		expires := start.Add(time.Hour)
		if err := s.ConsumeInvitation(ctx, "k1", expires, storetest.NewConnection(1)); err != nil {
			t.Fatal(err)
		}
		clock.Set(expires.Add(23 * time.Hour))
		if err := s.ConsumeInvitation(ctx, "k2", expires, storetest.NewConnection(2)); err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeInvitation(ctx, "k1", expires, storetest.NewConnection(3)); tether.ErrorCode(err) != tether.CodeAlreadyUsed {
			t.Fatalf("k1 less than a day past its expiry: %v, want already_used", err)
		}
		clock.Set(expires.Add(25 * time.Hour))
		if err := s.ConsumeInvitation(ctx, "k3", expires, storetest.NewConnection(4)); err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeInvitation(ctx, "k1", expires, storetest.NewConnection(5)); err != nil {
			t.Fatalf("k1 a day past its expiry on the Store's clock: %v, want it forgotten", err)
		}
	})
}
