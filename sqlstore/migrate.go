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

// loadMigrations returns the dialect's migrations in version order. Files
// are named NNNN_name.sql.
func loadMigrations(d Dialect) ([]migration, error) {
	dir := path.Join("migrations", string(d))
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, e := range entries {
		num, name, ok := strings.Cut(strings.TrimSuffix(e.Name(), ".sql"), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
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
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS tether_migrations (
			version    INTEGER PRIMARY KEY,
			name       TEXT    NOT NULL,
			applied_ns BIGINT  NOT NULL
		)`); err != nil {
			return err
		}
		applied := map[int]bool{}
		rows, err := tx.QueryContext(ctx, `SELECT version FROM tether_migrations`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var v int
			if err := rows.Scan(&v); err != nil {
				rows.Close()
				return err
			}
			applied[v] = true
		}
		if err := rows.Close(); err != nil {
			return err
		}
		for v := range applied {
			if v > len(all) {
				return fmt.Errorf("sqlstore: the database has migration %d, newer than this version of tether knows (%d)", v, len(all))
			}
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
