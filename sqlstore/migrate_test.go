package sqlstore_test

import (
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/tetherkit/tether/sqlstore"
)

// The exported migrations are the same, in the same order, as files and as
// a list, in both dialects, and each records itself, so a host's tool that
// runs them leaves the database as New would.
func TestMigrationsExported(t *testing.T) {
	var names [2][]string
	for i, d := range []sqlstore.Dialect{sqlstore.SQLite, sqlstore.PostgreSQL} {
		all, err := sqlstore.Migrations(d)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) < 5 {
			t.Fatalf("%s: %d migrations", d, len(all))
		}
		fsys, err := sqlstore.MigrationFS(d)
		if err != nil {
			t.Fatal(err)
		}
		var files []string
		if err := fs.WalkDir(fsys, ".", func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}
			files = append(files, p)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if len(files) != len(all) {
			t.Fatalf("%s: %d files, %d migrations", d, len(files), len(all))
		}
		for j, m := range all {
			want := fmt.Sprintf("%04d_%s.sql", j+1, m.Name)
			if m.Version != j+1 || files[j] != want {
				t.Fatalf("%s: migration %d is version %d in file %q, want %q", d, j+1, m.Version, files[j], want)
			}
			body, err := fs.ReadFile(fsys, files[j])
			if err != nil || string(body) != m.SQL {
				t.Fatalf("%s: %s differs from Migrations: %v", d, files[j], err)
			}
			record := fmt.Sprintf("INSERT INTO tether_migrations (version, name, applied_ns) VALUES (%d, '%s', ", m.Version, m.Name)
			if strings.Count(m.SQL, "INSERT INTO tether_migrations") != 1 || !strings.Contains(m.SQL, record) {
				t.Fatalf("%s: %s does not record itself once as %q", d, files[j], record)
			}
			if hasTable := strings.Contains(m.SQL, "CREATE TABLE IF NOT EXISTS tether_migrations"); hasTable != (j == 0) {
				t.Fatalf("%s: %s creates tether_migrations: %v", d, files[j], hasTable)
			}
			names[i] = append(names[i], m.Name)
		}
	}
	if fmt.Sprint(names[0]) != fmt.Sprint(names[1]) {
		t.Fatalf("the dialects' migrations differ: %v and %v", names[0], names[1])
	}
	if _, err := sqlstore.Migrations("mysql"); err == nil {
		t.Fatal("migrations for an unknown dialect")
	}
}

// A host that runs schema changes with its own tool takes the files from
// MigrationFS, runs them in order, and opens the store with SkipMigrations.
func ExampleMigrationFS() {
	fsys, err := sqlstore.MigrationFS(sqlstore.PostgreSQL)
	if err != nil {
		panic(err)
	}
	_ = fs.WalkDir(fsys, ".", func(name string, e fs.DirEntry, err error) error {
		if err == nil && !e.IsDir() {
			fmt.Println(name) // copy into the tool's directory, or run in this order
		}
		return err
	})
	// Then: sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{Sealer: sealer, SkipMigrations: true})

	// Output:
	// 0001_init.sql
	// 0002_nonces.sql
	// 0003_outbox_close.sql
	// 0004_oauth.sql
	// 0005_feed.sql
}
