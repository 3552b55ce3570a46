package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
)

// openStore opens the app's Store: a SQLite file in cfg.DataDir, or, with
// cfg.Postgres, schema cfg.Schema of that database. It returns a function
// closing the database.
func openStore(ctx context.Context, cfg config) (*sqlstore.Store, func(), error) {
	sealer, err := loadSealer(cfg)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Postgres != "" {
		return openPostgres(ctx, cfg, sealer)
	}
	path := filepath.Join(cfg.DataDir, "webapp.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"+
		"&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate")
	if err != nil {
		return nil, nil, err
	}
	db.SetMaxOpenConns(1) // SQLite has one writer
	store, err := sqlstore.New(ctx, db, sqlstore.SQLite, sqlstore.Config{Sealer: sealer})
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return store, func() { db.Close() }, nil
}

var schemaName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)

// openPostgres keeps the data in a schema of its own, created if missing,
// or dropped and created afresh with cfg.FreshSchema.
func openPostgres(ctx context.Context, cfg config, sealer *tether.Sealer) (*sqlstore.Store, func(), error) {
	if !schemaName.MatchString(cfg.Schema) {
		return nil, nil, fmt.Errorf("schema %q: use lower-case letters, digits and _", cfg.Schema)
	}
	admin, err := sql.Open("pgx", cfg.Postgres)
	if err != nil {
		return nil, nil, err
	}
	defer admin.Close()
	ddl := `CREATE SCHEMA IF NOT EXISTS ` + cfg.Schema
	if cfg.FreshSchema {
		ddl = `DROP SCHEMA IF EXISTS ` + cfg.Schema + ` CASCADE; CREATE SCHEMA ` + cfg.Schema
	}
	if _, err := admin.ExecContext(ctx, ddl); err != nil {
		return nil, nil, fmt.Errorf("preparing schema %s: %w", cfg.Schema, err)
	}
	u, err := url.Parse(cfg.Postgres)
	if err != nil {
		return nil, nil, err
	}
	q := u.Query()
	q.Set("search_path", cfg.Schema)
	u.RawQuery = q.Encode()
	db, err := sql.Open("pgx", u.String())
	if err != nil {
		return nil, nil, err
	}
	store, err := sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{Sealer: sealer})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return store, func() { db.Close() }, nil
}

// loadSealer reads the key that seals the secrets in the Store from
// sealing.key in the data directory, generating it on first start. A
// production host keeps it in its secret store instead.
func loadSealer(cfg config) (*tether.Sealer, error) {
	path := filepath.Join(cfg.DataDir, "sealing.key")
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		raw = []byte(hex.EncodeToString(key) + "\n")
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	key, err := tether.ParseSealingKey(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tether.NewSealer("webapp", map[string][]byte{"webapp": key})
}
