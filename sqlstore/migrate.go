package sqlstore

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"testing/fstest"

	"github.com/tetherkit/tether"
)

//go:embed migrations
var migrations embed.FS

// migrateLockID is the PostgreSQL advisory lock that serializes migrations
// of processes starting at once ("tether" in ASCII).
const migrateLockID = 0x746574686572

type migration struct {
	version int
	name    string
	sql     string
}

// Migration is one change of the schema sqlstore uses, in one dialect.
type Migration struct {
	Version int    // 1, 2, 3, ... in the order they apply
	Name    string // what it does, as in its file name NNNN_name.sql
	// SQL is the migration's statements, followed by the one statement
	// that records it in the table tether_migrations (created by the
	// first migration), so a database migrated by running these in order
	// is exactly one New would have migrated.
	SQL string
}

// Migrations returns the dialect's schema migrations in the order they
// apply, for hosts that run schema changes through their own tool (see
// Config.SkipMigrations). New applies the same ones itself by default.
func Migrations(d Dialect) ([]Migration, error) {
	all, err := loadMigrations(d)
	if err != nil {
		return nil, err
	}
	out := make([]Migration, len(all))
	for i, m := range all {
		out[i] = Migration{Version: m.version, Name: m.name, SQL: m.standalone(d)}
	}
	return out, nil
}

// MigrationFS returns Migrations(d) as files named NNNN_name.sql at the
// root of the file system, for tools that read a directory of SQL files;
// fs.WalkDir visits them in the order they apply.
func MigrationFS(d Dialect) (fs.FS, error) {
	all, err := Migrations(d)
	if err != nil {
		return nil, err
	}
	files := make(fstest.MapFS, len(all))
	for _, m := range all {
		files[fmt.Sprintf("%04d_%s.sql", m.Version, m.Name)] = &fstest.MapFile{Data: []byte(m.SQL), Mode: 0o444}
	}
	return files, nil
}

// migrationsTable records the migrations applied.
const migrationsTable = `CREATE TABLE IF NOT EXISTS tether_migrations (
	version    INTEGER PRIMARY KEY,
	name       TEXT    NOT NULL,
	applied_ns BIGINT  NOT NULL
)`

// standalone is m's SQL as a host's tool runs it: the table of applied
// migrations created by the first, and each recorded at its end with the
// database's clock.
func (m migration) standalone(d Dialect) string {
	now := `CAST((julianday('now') - 2440587.5) * 86400000000000 AS INTEGER)`
	if d == PostgreSQL {
		now = `(extract(epoch FROM clock_timestamp()) * 1000000000)::bigint`
	}
	var b strings.Builder
	if m.version == 1 {
		b.WriteString(migrationsTable + ";\n\n")
	}
	b.WriteString(strings.TrimRight(m.sql, "\n"))
	fmt.Fprintf(&b, "\n\nINSERT INTO tether_migrations (version, name, applied_ns) VALUES (%d, '%s', %s);\n", m.version, m.name, now)
	return b.String()
}

// loadMigrations returns the dialect's migrations in version order. Files
// are named NNNN_name.sql, name in lower case letters, digits and _.
func loadMigrations(d Dialect) ([]migration, error) {
	if d != SQLite && d != PostgreSQL {
		return nil, fmt.Errorf("sqlstore: no migrations for dialect %q", d)
	}
	dir := path.Join("migrations", string(d))
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, name, ok := strings.Cut(strings.TrimSuffix(e.Name(), ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
			return nil, fmt.Errorf("sqlstore: migration file %q is not NNNN_name.sql", e.Name())
		}
		body, err := fs.ReadFile(migrations, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].version < out[j].version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("sqlstore: migrations are not numbered 1, 2, 3, ...: found %d at position %d", m.version, i+1)
		}
	}
	return out, nil
}

// migrate applies the migrations not yet recorded, in order, in one
// transaction that first takes a lock (PostgreSQL: an advisory lock;
// SQLite: the write lock of an IMMEDIATE transaction), so a second process
// starting at once waits and then finds nothing left to do.
func (s *Store) migrate(ctx context.Context) error {
	const op = "sqlstore: migrate"
	all, err := loadMigrations(s.dialect)
	if err != nil {
		return translate(op, err)
	}
	return s.inTx(ctx, op, func(tx querier) error {
		if s.dialect == PostgreSQL {
			if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(`+strconv.Itoa(migrateLockID)+`)`); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, migrationsTable); err != nil {
			return err
		}
		applied, err := appliedMigrations(ctx, tx)
		if err != nil {
			return err
		}
		if err := newerMigration(applied, len(all)); err != nil {
			return err
		}
		for _, m := range all {
			if applied[m.version] {
				continue
			}
			if _, err := tx.ExecContext(ctx, m.sql); err != nil {
				return fmt.Errorf("sqlstore: migration %d (%s): %w", m.version, m.name, err)
			}
			if _, err := tx.ExecContext(ctx, s.dialect.rebind(`INSERT INTO tether_migrations (version, name, applied_ns) VALUES (?, ?, ?)`),
				m.version, m.name, nanos(s.clock.Now())); err != nil {
				return err
			}
		}
		return nil
	})
}

// appliedMigrations reads the versions recorded in tether_migrations.
func appliedMigrations(ctx context.Context, q querier) (map[int]bool, error) {
	applied := map[int]bool{}
	rows, err := q.QueryContext(ctx, `SELECT version FROM tether_migrations`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			return nil, err
		}
		applied[v] = true
	}
	return applied, rows.Err()
}

// newerMigration refuses a database migrated by a newer version of tether,
// one with migrations beyond the known ones.
func newerMigration(applied map[int]bool, known int) error {
	for v := range applied {
		if v > known {
			return fmt.Errorf("sqlstore: the database has migration %d, newer than this version of tether knows (%d)", v, known)
		}
	}
	return nil
}

// checkMigrated is what New does instead of migrating under
// Config.SkipMigrations: it fails, naming the files missing, unless every
// migration is recorded as applied.
func (s *Store) checkMigrated(ctx context.Context) error {
	const op = "sqlstore: new"
	all, err := loadMigrations(s.dialect)
	if err != nil {
		return translate(op, err)
	}
	applied, err := appliedMigrations(ctx, s.db)
	if err != nil {
		if e := translate(op, err); tether.ErrorCode(e) == tether.CodeUnavailable {
			return e
		}
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "Config.SkipMigrations is set but the database has no tether schema (table tether_migrations): apply the files of sqlstore.MigrationFS first", Err: err}
	}
	if err := newerMigration(applied, len(all)); err != nil {
		return translate(op, err)
	}
	var missing []string
	for _, m := range all {
		if !applied[m.version] {
			missing = append(missing, fmt.Sprintf("%04d_%s.sql", m.version, m.name))
		}
	}
	if len(missing) > 0 {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "Config.SkipMigrations is set but the database lacks migrations " + strings.Join(missing, ", ") + " of sqlstore.MigrationFS"}
	}
	return nil
}
