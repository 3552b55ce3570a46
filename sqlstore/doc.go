// Package sqlstore is the durable tether.Store, on database/sql: SQLite as
// the embedded default (one file, nothing to run) and PostgreSQL for
// several replicas of a host application sharing their connections.
//
// The package imports no database driver: the host opens a *sql.DB with the
// driver it uses and passes it to New with the dialect. New applies the
// embedded schema migrations it lacks, in one transaction behind a lock, so
// replicas starting at once do not collide. Secrets (the instance's private
// keys, OAuth authorization states and tokens) are sealed with
// Config.Sealer before they are written.
//
// # Migrations run by the host
//
// Hosts that run schema changes through their own tool (goose, Flyway,
// Atlas, a release job) take tether's from MigrationFS (files
// NNNN_name.sql, in the order they apply) or Migrations (the same SQL as a
// list), per dialect, and open the store with SkipMigrations:
//
//	fsys, err := sqlstore.MigrationFS(sqlstore.PostgreSQL)
//	// copy the files into the tool's directory, or run them in order:
//	// fs.WalkDir(fsys, ".", ...) and db.ExecContext(ctx, string(body))
//	store, err := sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{
//		Sealer: sealer, SkipMigrations: true,
//	})
//
// Each file ends by recording itself in the table tether_migrations (which
// the first creates), so New checks that all are applied and fails with
// CodeInvalid, naming the missing files, when a deploy brings a version of
// tether with a migration the tool has not run yet. Apply each file in one
// transaction. "go run github.com/tetherkit/tether/cmd/tether migrations
// -dialect postgres -out DIR" writes the files of the version in go.mod.
//
// # SQLite
//
// With modernc.org/sqlite (pure Go), use WAL, a busy timeout, IMMEDIATE
// transactions and one connection, the single writer SQLite allows:
//
//	db, err := sql.Open("sqlite", "file:tether.db"+
//		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"+
//		"&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate")
//	db.SetMaxOpenConns(1)
//	store, err := sqlstore.New(ctx, db, sqlstore.SQLite, sqlstore.Config{Sealer: sealer})
//
// synchronous(NORMAL) in WAL mode loses no committed transaction when the
// process crashes; synchronous(FULL) also survives a power cut.
//
// # PostgreSQL
//
// With github.com/jackc/pgx/v5/stdlib:
//
//	db, err := sql.Open("pgx", "postgres://tether@db.internal:5432/app?sslmode=verify-full")
//	db.SetMaxOpenConns(20) // per replica; keep replicas × 20 under max_connections
//	db.SetMaxIdleConns(20) // keep them: fewer are closed after each burst and reopened
//	db.SetConnMaxLifetime(30 * time.Minute)
//	store, err := sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{
//		Sealer: sealer,
//		Listen: listen, // optional, below
//	})
//
// To keep tether's tables apart, give the connections a search_path
// (&search_path=tether in the URL) after creating that schema.
//
// Replicas: invitations are consumed once across all of them (a unique key
// written in the same transaction as the connection); one replica at a time
// delivers a connection's outbox (a lease that a crashed replica loses
// after tether.Config.LeaseTTL, or at once when it restarts under the same
// tether.Config.Replica name); deliveries to one connection are serialized
// by a row lock on its inbox cursor. A long-poll held by one replica wakes
// when another stores a message through LISTEN/NOTIFY when Config.Listen is
// set, and otherwise (or when a notification is lost) at the next sweep,
// within tether.Config.SweepInterval. A SQLite Store is taken to be used by
// one process (tether.LocalStore) unless Config.SharedSQLite is set: its
// Nodes then skip the sweeps and key re-reads replicas need. One org per team holds across
// replicas too: a partial unique index on the ExternalID of org connections
// that are not deleted lets one of concurrent writers win (CodeOrgTaken
// for the others). With pgx, Listen is:
//
//	listen := func(ctx context.Context, channel string, fn func(string)) error {
//		conn, err := pgx.Connect(ctx, dsn)
//		if err != nil {
//			return err
//		}
//		defer conn.Close(context.WithoutCancel(ctx))
//		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
//			return err
//		}
//		for {
//			n, err := conn.WaitForNotification(ctx)
//			if err != nil {
//				return err
//			}
//			fn(n.Payload)
//		}
//	}
//
// # Exactly once
//
// A Node on this Store hands each message to the Receiver inside the
// transaction that moves the connection's inbox cursor. A Receiver that
// writes its effects through that transaction (Tx(ctx)) applies every
// message exactly once, even when the process is killed at any point
// (placeholders in the database's own style: ? for SQLite, $1 for
// PostgreSQL):
//
//	func (r *receiver) Receive(ctx context.Context, m tether.Message) error {
//		_, err := sqlstore.Tx(ctx).ExecContext(ctx,
//			`INSERT INTO tickets (connection_id, seq, body) VALUES (?, ?, ?)`,
//			m.ConnectionID, m.Seq, m.Payload)
//		return err
//	}
//
// The Store's own methods called with the Receiver's context (Node.Send
// among them) run in that transaction too, each in a savepoint of its
// own: a reply commits with the message it answers, or is undone with it;
// a call that fails undoes only its own writes; and a SQLite database with
// one connection never waits for a second. Calls from several goroutines
// of one Receiver take the transaction in turn.
//
// # Event feed
//
// The Store implements tether.FeedStore: every connection's events, read
// in order after a cursor, each once, also while other processes append.
// On SQLite the order is that of the events' Seq: one transaction writes
// at a time. On PostgreSQL it is that of the transactions that wrote
// them, and a page lists only events of transactions older than every
// transaction still running on the server, so an event committed late
// by a transaction that began early is not skipped; a transaction left
// open (idle in transaction, or a long report on another database of the
// same server) holds the feed back until it ends. See Store.ListFeed.
//
// Errors are *tether.Error values; driver errors are translated by their
// type and code (SQLSTATE for PostgreSQL drivers, extended result codes for
// modernc.org/sqlite), never by their text, and keep the driver's error as
// their cause.
package sqlstore
