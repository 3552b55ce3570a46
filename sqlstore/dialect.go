package sqlstore

import (
	"strconv"
	"strings"

	"github.com/tetherkit/tether/internal/sqlerr"
)

// Dialect names the database behind the *sql.DB.
type Dialect string

const (
	// SQLite is the embedded default: one file, one writer at a time.
	SQLite Dialect = "sqlite"
	// PostgreSQL is the store for several replicas of a host application.
	PostgreSQL Dialect = "postgres"
)

// rebind turns ? placeholders into the dialect's. The queries of this
// package have no ? inside string literals.
func (d Dialect) rebind(q string) string {
	if d != PostgreSQL {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 8)
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

// forUpdate is the row-locking suffix of a SELECT inside a transaction.
// SQLite transactions here are IMMEDIATE: they hold the write lock already.
func (d Dialect) forUpdate() string {
	if d == PostgreSQL {
		return " FOR UPDATE"
	}
	return ""
}

// translate turns a driver error into a *tether.Error by its type and code,
// never by its text (see sqlerr.Translate).
func translate(op string, err error) error { return sqlerr.Translate(op, err) }
