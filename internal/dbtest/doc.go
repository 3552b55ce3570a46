// Package dbtest holds the tests that need a database driver: sqlstore's
// against SQLite (modernc.org/sqlite) and PostgreSQL (pgx), and the oauth
// package's against PostgreSQL. They live in this nested module so that the
// module hosts import, github.com/tetherkit/tether, requires no driver: a
// host that uses PostgreSQL never downloads SQLite, and one that uses
// neither gets neither in its go.sum.
package dbtest
