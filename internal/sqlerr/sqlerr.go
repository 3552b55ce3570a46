// Package sqlerr translates database driver errors into tether's error
// codes, by their type and code, never by their text. It knows the error
// shapes of the drivers sqlstore documents without importing any of them.
package sqlerr

import (
	"context"
	"database/sql"
	"errors"
	"strings"

	"github.com/tetherkit/tether"
)

// sqlStater is implemented by PostgreSQL drivers' errors (pgx's
// *pgconn.PgError, lib/pq's *pq.Error): the five-character SQLSTATE.
type sqlStater interface{ SQLState() string }

// sqliteCoder is implemented by modernc.org/sqlite's *sqlite.Error: the
// extended result code.
type sqliteCoder interface{ Code() int }

// Translate turns a driver error into a *tether.Error by its type and code,
// never by its text. Context errors stay recognisable through errors.Is.
func Translate(op string, err error) error {
	if err == nil {
		return nil
	}
	var te *tether.Error
	if errors.As(err, &te) {
		return err
	}
	code := tether.CodeInternal
	var (
		ps sqlStater
		sc sqliteCoder
	)
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = tether.CodeUnavailable
	case errors.Is(err, sql.ErrNoRows):
		code = tether.CodeNotFound
	case errors.Is(err, sql.ErrConnDone):
		code = tether.CodeUnavailable
	case errors.As(err, &ps):
		code = pgCode(ps.SQLState())
	case errors.As(err, &sc):
		code = sqliteCode(sc.Code())
	}
	return &tether.Error{Code: code, Op: op, Err: err}
}

// pgCode maps SQLSTATE classes and codes.
func pgCode(state string) tether.Code {
	switch {
	case state == "23505": // unique_violation
		return tether.CodeAlreadyExists
	case state == "40001", state == "40P01": // serialization failure, deadlock: retry
		return tether.CodeUnavailable
	case strings.HasPrefix(state, "08"), strings.HasPrefix(state, "53"), strings.HasPrefix(state, "57"):
		// connection exception, insufficient resources, operator intervention
		return tether.CodeUnavailable
	}
	return tether.CodeInternal
}

// SQLite primary result codes (the low byte of an extended code).
const (
	sqliteBusy       = 5
	sqliteLocked     = 6
	sqliteConstraint = 19
	// Extended constraint codes.
	sqliteConstraintPrimaryKey = 1555
	sqliteConstraintUnique     = 2067
)

func sqliteCode(code int) tether.Code {
	switch {
	case code == sqliteConstraintPrimaryKey, code == sqliteConstraintUnique:
		return tether.CodeAlreadyExists
	case code&0xff == sqliteBusy, code&0xff == sqliteLocked:
		return tether.CodeUnavailable
	case code&0xff == sqliteConstraint:
		return tether.CodeInvalid
	}
	return tether.CodeInternal
}
