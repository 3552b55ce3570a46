package sqlstore

import (
	"context"
	"strconv"

	"github.com/tetherkit/tether"
)

// ListFeed implements tether.FeedStore.
//
// On SQLite the feed is in Seq order. A transaction takes the write lock
// before its first write and keeps it until it commits or rolls back, and
// Seq is assigned by that first write or a later one, so one transaction
// writes at a time and Seqs are handed out in commit order, across
// processes sharing the file too: once a reader sees an event, every
// event with a lower Seq is committed (or rolled back for good). The
// cursor holds the last Seq listed.
//
// On PostgreSQL that does not hold: Seq comes from an identity column,
// taken when a row is inserted, not when its transaction commits, so a
// reader can see Seq 12 committed while 11 is in flight, and reading after
// 12 would skip 11 forever. Each event row carries a tx instead: the ID of
// the transaction that wrote it, or, if higher, the tx of its
// connection's previous event (see insertEvent), never below the writer's
// own ID. The feed is ordered by (tx, seq) and lists only rows whose tx is
// below the xmin of the reading statement's snapshot: every transaction
// with an ID below xmin had ended when the snapshot was taken, and any
// transaction that had not yet taken an ID will get one at or above
// xmin. So the rows with tx below xmin that the snapshot shows are all the
// rows with tx below xmin there will ever be; a row that commits later has
// a tx at or above that xmin, above every cursor this read returned. The
// cursor holds the (tx, seq) of the last row listed, and xmin only grows
// from one snapshot to the next, so following the cursors lists every
// row once. The price: the feed waits for the oldest transaction running
// on the server (on any database of it), a long-running one delays it.
//
// Read with the context of a delivery's transaction (see Tx) it fails with
// CodeInvalid: that transaction's own events are not committed yet, and
// on SQLite it would see them.
func (s *Store) ListFeed(ctx context.Context, opts tether.FeedOptions) ([]tether.Event, string, error) {
	const op = "sqlstore: list feed"
	cur, err := tether.ParseFeedCursor(opts.After)
	if err != nil {
		return nil, "", tether.Wrap(tether.CodeInvalid, op, err)
	}
	if s.dialect == SQLite && cur.Tx != 0 || cur.Tx < 0 || cur.Seq < 0 {
		return nil, "", &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the feed cursor is not one of this store: pass back a cursor the feed returned"}
	}
	if s.joined(ctx) != nil {
		return nil, "", &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the feed cannot be read inside a delivery's transaction"}
	}
	var (
		query = `SELECT e.seq, e.connection_id, e.type, e.time_ns, e.actor, e.detail`
		args  []any
	)
	if s.dialect == PostgreSQL {
		query += `, CAST(e.tx AS TEXT)`
	}
	query += ` FROM tether_events AS e`
	if opts.Owner != "" {
		query += ` JOIN tether_connections AS c ON c.id = e.connection_id AND c.owner = ?`
		args = append(args, opts.Owner)
	}
	if s.dialect == PostgreSQL {
		query += ` WHERE e.tx < pg_snapshot_xmin(pg_current_snapshot())
			AND (e.tx, e.seq) > (CAST(CAST(? AS TEXT) AS xid8), ?)
			ORDER BY e.tx, e.seq LIMIT ?`
		args = append(args, strconv.FormatInt(cur.Tx, 10), cur.Seq)
	} else {
		query += ` WHERE e.seq > ? ORDER BY e.seq LIMIT ?`
		args = append(args, cur.Seq)
	}
	args = append(args, opts.PageLimit())
	query = s.dialect.rebind(query)

	var out []tether.Event
	err = s.read(ctx, op, func(q querier) error {
		rows, err := q.QueryContext(ctx, query, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				e    tether.Event
				typ  string
				t    int64
				tx   string
				dest = []any{&e.Seq, &e.ConnectionID, &typ, &t, &e.Actor, &e.Detail}
			)
			if s.dialect == PostgreSQL {
				dest = append(dest, &tx)
			}
			if err := rows.Scan(dest...); err != nil {
				return err
			}
			e.Type, e.Time = tether.EventType(typ), fromNanos(t)
			if s.dialect == PostgreSQL {
				if cur.Tx, err = strconv.ParseInt(tx, 10, 64); err != nil {
					return err
				}
			}
			cur.Seq = e.Seq
			out = append(out, e)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, "", err
	}
	return out, cur.String(), nil
}
