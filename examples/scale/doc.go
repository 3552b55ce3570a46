// Command scale measures what an idle tether Node costs: a public node
// holding N active connections to public peers with nothing to send, on
// memstore, SQLite or PostgreSQL, with P private peers each holding a
// long-poll on it, and how long Run takes to start serving. It uses only
// the public API (tether, memstore, sqlstore, httptransport), so it
// measures any version of the library the same way.
//
//	go run ./examples/scale -store memstore -conns 10000
//	go run ./examples/scale -store sqlite -conns 10000 -sqlite /tmp/scale.db -reuse
//	go run ./examples/scale -store postgres -conns 100000 -reuse -json
//	go run ./examples/scale -store postgres -conns 1 -private 1000
//
// Run it from the examples module (cd examples; go run ./scale ...) or
// from the repository root, where go.work includes that module. It reads
// /proc, so the figures are Linux's.
//
// # What it does
//
// The public node under test and one real public peer run in this
// process, each behind an httptransport handler on a loopback
// http.Server. The node initiates a connection to the peer and the peer
// accepts it (a real handshake); N-2 copies of that connection's record
// are then stored with new IDs, from several goroutines, and a second
// real connection is made last, so that its ID sorts after every other.
// The copies point at the peer's URL but are never used to send. For
// N = 1 there is one real connection.
//
// Then Run is called and, at once, a message is sent on the last
// connection. start_s is the time from the call to Run until the peer's
// Receiver has that message.
//
// With -private P, once the node has settled, it initiates P invitations
// (no destination URL) and starts a child process (this program again,
// with -role private) that opens P private Nodes, each with its own
// memstore and no Endpoint, sharing one HTTP client. Each accepts one
// code; once all have, each runs, holding a long-poll on the public node.
// The child's figures are its own; the public process's are the public
// node's.
//
// # Figures
//
// Standard output gets one "name value unit" line per figure, and with
// -json one JSON object with all of them at the end. Progress goes to
// standard error. The idle figures are taken over the -measure window,
// after -settle (default 5 s and 10 s):
//
//	start_s                 seconds from Run to the first message's arrival at the peer
//	                        (">720" when -start-timeout passed first; then
//	                        goroutines_at_timeout, rss_mb_at_timeout and
//	                        heap_mb_at_timeout say what the process held then)
//	goroutines              runtime.NumGoroutine while idle
//	goroutines_base         the same before Run (and before the private peers)
//	goroutines_per_conn     (idle without polls - base) / N
//	rss_mb                  VmRSS of /proc/self/status, after a garbage collection
//	heap_mb                 runtime.MemStats HeapInuse + StackInuse, after a garbage collection
//	bytes_per_conn          heap and stacks, (idle without polls - base) / N
//	cpu_pct                 user and system CPU (getrusage) over the window, in % of one core
//	store_calls_per_s       calls to the Store over the window
//	store_calls_by_method   the same per method, busiest first
//	pg_commits_per_s        PostgreSQL only: xact_commit + xact_rollback of the
//	                        database in pg_stat_database, over the window
//	pg_cpu_pct              PostgreSQL only: utime + stime of every process whose
//	                        name starts with "postgres", in % of one core
//
// and, with -private P:
//
//	polls_held              poll requests in flight in the public node's HTTP
//	                        handler at the end of the window (P when idle), and
//	                        polls_held_min, polls_held_max during it
//	goroutines_per_poll     (goroutines - goroutines_no_polls) / P, where
//	                        goroutines_no_polls is read after the start settled,
//	                        before the invitations
//	bytes_per_poll          heap and stacks, the same way
//	private_ready_s         from starting the child until all P poll
//	child_goroutines_per_node, child_bytes_per_node, child_rss_kb_per_node
//	                        the child's own cost per private node, idle, over what
//	                        it had before opening them (each node's poll connection
//	                        included); child_cpu_pct its CPU
//
// # Stores
//
// -store memstore keeps everything in memory. -store sqlite uses a SQLite
// file (a temporary one unless -sqlite names it) as sqlstore's
// documentation says. -store postgres uses the database at -postgres,
// in a schema of its own for each setup, tether_scale_<conns>_<private>
// unless -schema names another, with Config.Listen on pgx and the pool
// sizes sqlstore's documentation recommends. Without -reuse the schema is
// dropped and created afresh, and an existing -sqlite file is refused.
// With -reuse, a file or schema that holds the N connections already is
// measured as it is (connections to private peers of a previous run are
// marked deleted first), and one that holds none is filled. With sqlite
// and postgres the peer keeps its data in a SQLite file of its own
// (-peer-sqlite), so that it can be reused too and PostgreSQL's figures
// are the public node's alone.
//
// # Limits
//
// The peer runs in the measured process (its handler and Store, not its
// Run); it is part of goroutines_base. pg_cpu_pct counts every PostgreSQL
// process of the server, whatever database it serves, loses the CPU of
// processes that exit during the window, and counts whole those that
// start in it. pg_stat_database is updated by each server process about
// once a second, so pg_commits_per_s is exact to about one second's
// worth. The private peers share one HTTP client, where separate
// installations would each have their own. A node remembers request
// nonces for a bounded number of peers (each invitation presented to it
// and each instance that calls it) for about ten minutes; where that
// bound is below twice P, some polls are refused until the acceptances
// are forgotten, and private_ready_s includes that wait.
package main
