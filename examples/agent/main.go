// Command agent is a private tether agent: a daemon that runs behind a
// firewall with no listening port. It accepts an invitation from a public
// instance, keeps its identity, connections and queues in SQLite, prints
// the messages it receives and the changes to its connections, and
// carries on where it stopped when it is started again.
//
//	go run ./examples/agent -data ./agent-data -invite "$CODE" -allow-private-network
//	go run ./examples/agent -data ./agent-data            # later: resume
//	echo "$CODE" | go run ./examples/agent -invite-file -
//
// The agent makes outgoing requests only: it accepts the invitation by
// calling the public initiator, then receives its messages through a
// long-poll it holds open there (tether.Node.Run).
//
// # Flags
//
//	-data DIR               where the agent keeps its state (default "agent-data";
//	                        created if missing): agent.db, the SQLite database;
//	                        sealing.key, the key sealing the secrets in it (0600,
//	                        64 hex digits as `tether keygen` prints, generated on
//	                        first start); feed.cursor, how far the event feed
//	                        was printed
//	-invite CODE            accept this invitation code
//	-invite-file PATH       read the code from PATH ("-": standard input);
//	                        surrounding white space is ignored
//	-name NAME              this agent's display name (default "agent"); when
//	                        given, also the short name it takes in the
//	                        connection instead of the one the initiator proposed
//	-send TEXT              once the connection is active, send TEXT once to
//	                        every active connection
//	-allow-private-network  contact loopback and private-network addresses and
//	                        plain http URLs (needed when the initiator runs on
//	                        the same machine or network; off by default)
//
// Without -invite or -invite-file the agent resumes the connections it has.
// Given the code of an invitation it accepted before (a restart with the
// same command line), it says so and carries on. One agent at a time may
// use a data directory.
//
// # Output
//
// Standard output gets one line per fact, in these forms:
//
//	agent <name>: data in <dir>, <n> connection(s)
//	invitation from <initiator name>: <connection name> (<mode>)
//	invitation already accepted: connection <id>
//	connecting to <host:port>...
//	retrying in <duration>: <short reason>
//	connection <id> <status>              (active, paused, inactive, deleted)
//	connection <id>: partner unreachable since <RFC 3339 time>
//	connection <id>: partner reachable again
//	received <connection id>: <payload>
//	sent <connection id>: <text>
//
// A payload that is printable UTF-8 is printed as it is, any other as a
// Go-quoted string (%q). The connection lines come from the node's event
// feed, read after the cursor kept in feed.cursor: an event printed before
// a restart is not printed again. "connection <id> paused" and "active"
// also report the partner pausing and resuming its side. The reachability
// lines are printed once per connection whose partner changed. Messages
// are printed as they are delivered and events once they are stored, so a
// message that arrives with a change of status may be printed just before
// that change's line.
//
// A received message is printed once. The receiver stores it in the
// agent's own table (agent_received, in agent.db) in the transaction that
// marks it delivered, and it is printed, then removed, once that
// transaction has committed: a delivery cut short by a stop is delivered
// again and printed then, never twice. Only a crash between the print and
// the removal prints a message again at the next start.
//
// # Exit status
//
// 0 after SIGINT or SIGTERM; 1 when the agent cannot start or the
// invitation cannot be accepted (invalid, expired, accepted by another
// instance, or pointing at a loopback or private address without
// -allow-private-network), the reason on standard error; 2 for a usage
// error.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	_ "modernc.org/sqlite"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/sqlstore"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	var usage usageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &usage):
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "agent:", err)
		os.Exit(1)
	}
}

// stdin is where -invite-file - reads the code.
var stdin io.Reader = os.Stdin

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

type options struct {
	dataDir      string
	invite       string
	inviteFile   string
	name         string
	nameGiven    bool
	send         string
	allowPrivate bool
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.dataDir, "data", "agent-data", "directory for the agent's database and keys (created if missing)")
	fs.StringVar(&o.invite, "invite", "", "invitation `code` to accept (other users of this machine may see it in the process list: -invite-file keeps it out)")
	fs.StringVar(&o.inviteFile, "invite-file", "", "read the invitation code from `path` (- for standard input)")
	fs.StringVar(&o.name, "name", "agent", "this agent's display `name`, and its short name in new connections when given")
	fs.StringVar(&o.send, "send", "", "once connected, send `text` once to every active connection")
	fs.BoolVar(&o.allowPrivate, "allow-private-network", false, "allow loopback and private-network addresses and plain http")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, usageError{err.Error()}
	}
	fs.Visit(func(f *flag.Flag) { o.nameGiven = o.nameGiven || f.Name == "name" })
	switch {
	case fs.NArg() > 0:
		return o, usageError{"unexpected argument " + fs.Arg(0) + ": give the invitation with -invite or -invite-file"}
	case o.invite != "" && o.inviteFile != "":
		return o, usageError{"give -invite or -invite-file, not both"}
	case o.dataDir == "":
		return o, usageError{"-data must name a directory"}
	}
	return o, nil
}

// inviteCode returns the invitation code the options give, "" for none.
func inviteCode(o options) (string, error) {
	if o.inviteFile == "" {
		return strings.TrimSpace(o.invite), nil
	}
	r := stdin
	if o.inviteFile != "-" {
		f, err := os.Open(o.inviteFile)
		if err != nil {
			return "", err
		}
		defer f.Close()
		r = f
	}
	raw, err := io.ReadAll(io.LimitReader(r, tether.MaxInvitationCodeLen+1024))
	if err != nil {
		return "", fmt.Errorf("reading the invitation: %w", err)
	}
	code := strings.TrimSpace(string(raw))
	if code == "" {
		return "", fmt.Errorf("%s holds no invitation code", o.inviteFile)
	}
	return code, nil
}

// run is the agent: it returns nil once ctx ends, or the error that
// stopped it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	code, err := inviteCode(o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.dataDir, 0o700); err != nil {
		return err
	}
	db, store, err := openStore(ctx, o.dataDir)
	if err != nil {
		return err
	}
	defer db.Close()

	out := &printer{w: stdout}
	// Without the flag the policy is the safe default: https to public
	// addresses only.
	var policy tether.URLPolicy
	if o.allowPrivate {
		policy = tether.URLPolicy{AllowHTTP: true, AllowLoopback: true, AllowPrivate: true}
	}
	feed, err := openFeed(filepath.Join(o.dataDir, "feed.cursor"), out)
	if err != nil {
		return err
	}
	in := &inbox{db: db, out: out, wake: make(chan struct{}, 1)}
	node, err := tether.Open(ctx, tether.Config{
		Store:       store,
		Transport:   httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		URLPolicy:   policy,
		DisplayName: o.name,
		Receiver:    in,
		OnEvent:     func(tether.Event) { nudge(feed.wake) },
		// The same name at every start: the leases of a run that was
		// killed come back at once.
		Replica: "agent",
		Logger:  slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		return err
	}
	feed.node = node
	n, err := checkConnections(ctx, node, policy)
	if err != nil {
		return err
	}
	out.printf("agent %s: data in %s, %d connection(s)", o.name, o.dataDir, n)
	// What was stored but not printed when the previous run stopped.
	if err := in.drain(ctx); err != nil {
		return err
	}
	if err := feed.drain(ctx); err != nil {
		return err
	}

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
		// Every delivery has committed or rolled back: print what the
		// last moments stored, rather than at the next start.
		fctx, fcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer fcancel()
		_ = in.drain(fctx)
		_ = feed.drain(fctx)
	}()
	wg.Add(3)
	go func() { defer wg.Done(); _ = node.Run(runCtx) }()
	go func() { defer wg.Done(); printLoop(runCtx, feed.wake, feed.drain, "the event feed", stderr) }()
	go func() { defer wg.Done(); printLoop(runCtx, in.wake, in.drain, "received messages", stderr) }()

	if code != "" {
		accept := tether.AcceptOptions{}
		if o.nameGiven {
			accept.LocalName = o.name
		}
		if err := acceptInvitation(runCtx, node, out, code, accept, policy); err != nil {
			if ctx.Err() != nil {
				return nil // stopped while connecting
			}
			return err
		}
		if err := feed.drain(runCtx); err != nil && ctx.Err() == nil {
			return err
		}
	}
	if o.send != "" {
		if err := sendAll(runCtx, node, out, o.send); err != nil && ctx.Err() == nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// openStore opens the agent's SQLite database as sqlstore's docs say, its
// secrets sealed with the key in sealing.key, with the agent's own table
// of received messages beside tether's.
func openStore(ctx context.Context, dir string) (*sql.DB, *sqlstore.Store, error) {
	sealer, err := loadSealer(filepath.Join(dir, "sealing.key"))
	if err != nil {
		return nil, nil, err
	}
	path := filepath.Join(dir, "agent.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"+
		"&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate")
	if err != nil {
		return nil, nil, err
	}
	db.SetMaxOpenConns(1) // SQLite has one writer
	store, err := sqlstore.New(ctx, db, sqlstore.SQLite, sqlstore.Config{Sealer: sealer})
	if err == nil {
		_, err = db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS agent_received (
			connection_id TEXT NOT NULL, seq INTEGER NOT NULL, payload BLOB,
			PRIMARY KEY (connection_id, seq))`)
	}
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("opening %s: %w", path, err)
	}
	return db, store, nil
}

// loadSealer reads the sealing key from path, generating it on first start.
// A host with a secret store keeps the key there instead.
func loadSealer(path string) (*tether.Sealer, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		raw = []byte(hex.EncodeToString(key) + "\n")
		// Written whole under another name, then linked into place: a
		// crash leaves no empty key file, and of two agents started at
		// once on one directory only one key wins.
		tmp := path + ".new"
		if err := os.WriteFile(tmp, raw, 0o600); err != nil {
			return nil, err
		}
		err := os.Link(tmp, path)
		os.Remove(tmp)
		if err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	key, err := tether.ParseSealingKey(string(raw))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tether.NewSealer("agent", map[string][]byte{"agent": key})
}

// checkConnections counts the connections that are not deleted, and
// refuses to start when the URL policy forbids reaching the partner of
// one: the agent was started without -allow-private-network this time.
func checkConnections(ctx context.Context, node *tether.Node, policy tether.URLPolicy) (int, error) {
	n := 0
	var refused error
	err := eachConnection(ctx, node, func(c *tether.Connection) bool {
		if c.Status == tether.StatusDeleted {
			return true
		}
		n++
		if c.RemoteURL == "" {
			return true
		}
		if err := policy.Check(c.RemoteURL); err != nil {
			refused = fmt.Errorf("connection %s: its partner is at %s: %w%s", c.ID, hostOf(c.RemoteURL), err, flagHint(err, policy))
			return false
		}
		return true
	})
	if err == nil {
		err = refused
	}
	return n, err
}

// hostOf is the host and port of an endpoint URL.
func hostOf(endpoint string) string {
	if u, err := url.Parse(endpoint); err == nil && u.Host != "" {
		return u.Host
	}
	return endpoint
}

// flagHint names the flag that lifts a refusal of the URL policy.
func flagHint(err error, policy tether.URLPolicy) string {
	if tether.ErrorCode(err) == tether.CodeURLRefused && policy == (tether.URLPolicy{}) {
		return "; pass -allow-private-network to contact loopback and private-network addresses and plain http"
	}
	return ""
}

// eachConnection calls fn with every connection until it returns false.
func eachConnection(ctx context.Context, node *tether.Node, fn func(*tether.Connection) bool) error {
	after := ""
	for {
		page, next, err := node.List(ctx, tether.ListOptions{After: after, Limit: tether.MaxPageSize})
		if err != nil {
			return err
		}
		for _, c := range page {
			if !fn(c) {
				return nil
			}
		}
		if next == "" {
			return nil
		}
		after = next
	}
}

// accepted returns this agent's connection made from inv, nil if none.
func accepted(ctx context.Context, node *tether.Node, inv *tether.Invitation) (*tether.Connection, error) {
	var found *tether.Connection
	err := eachConnection(ctx, node, func(c *tether.Connection) bool {
		if c.Role == tether.RoleAcceptor && c.Invitation == inv.ID && c.RemoteInstance == inv.Issuer {
			found = c
			return false
		}
		return true
	})
	return found, err
}

// preview verifies the code. An expired code is verified again at the time
// it was issued, so that a restart with the code of an invitation accepted
// long ago still finds its connection; expired reports that it was.
func preview(node *tether.Node, code string) (inv *tether.Invitation, expired bool, err error) {
	inv, err = node.Preview(code)
	if tether.ErrorCode(err) != tether.CodeExpired {
		return inv, false, err
	}
	if iat, ok := issuedAt(code); ok {
		if old, perr := tether.ParseInvitation(code, iat); perr == nil {
			return old, true, nil
		}
	}
	return nil, true, err
}

// issuedAt reads the iat claim of a code (tether_inv_<JWS>.<checksum>)
// without verifying it: ParseInvitation verifies the code at that time.
func issuedAt(code string) (time.Time, bool) {
	parts := strings.Split(strings.TrimPrefix(code, tether.InvitationPrefix), ".")
	if len(parts) != 4 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		IssuedAt int64 `json:"iat"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.IssuedAt <= 0 {
		return time.Time{}, false
	}
	return time.Unix(claims.IssuedAt, 0), true
}

// acceptInvitation previews the code, and accepts it unless this agent
// did before, retrying while the initiator cannot be reached. It returns
// once the connection left Pending.
func acceptInvitation(ctx context.Context, node *tether.Node, out *printer, code string, opts tether.AcceptOptions, policy tether.URLPolicy) error {
	inv, expired, err := preview(node, code)
	if err != nil {
		return fmt.Errorf("invalid invitation: %w", err)
	}
	out.printf("invitation from %s: %s (%s)", inv.InitiatorName, inv.Name, inv.Mode)
	c, err := accepted(ctx, node, inv)
	if err != nil {
		return err
	}
	if c != nil && c.Status != tether.StatusPending {
		out.printf("invitation already accepted: connection %s", c.ID)
		return nil
	}
	if expired {
		return fmt.Errorf("invalid invitation: it expired at %s: ask the initiator for a new one", inv.ExpiresAt.Format(time.RFC3339))
	}
	if inv.Endpoint == "" {
		return errors.New("the invitation comes from a private instance and this agent is private too: one side must be public")
	}
	host := hostOf(inv.Endpoint)
	if err := policy.Check(inv.Endpoint); err != nil {
		return fmt.Errorf("the invitation points to %s: %w%s", host, err, flagHint(err, policy))
	}
	out.printf("connecting to %s...", host)
	const maxDelay = 30 * time.Second
	delay := time.Second
	for {
		_, err := node.Accept(ctx, code, opts)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch tether.ErrorCode(err) {
		case tether.CodeAlreadyUsed:
			// By this agent (Run completed the handshake meanwhile), or
			// by another instance.
			c, lerr := accepted(ctx, node, inv)
			if lerr != nil {
				return lerr
			}
			if c == nil {
				return fmt.Errorf("the invitation was already accepted by another instance: %w", err)
			}
			return nil
		case tether.CodeUnavailable, tether.CodePaused, tether.CodeDeadlineExceeded:
		default:
			return fmt.Errorf("accepting the invitation: %w", err)
		}
		wait := delay
		var te *tether.Error
		if errors.As(err, &te) && te.RetryAfter > wait {
			wait = min(te.RetryAfter, maxDelay)
		}
		out.printf("retrying in %s: %s", wait, shortReason(err))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		delay = min(2*delay, maxDelay)
		// Run follows up a stored acceptance too: it may have completed it.
		if c, err := accepted(ctx, node, inv); err != nil {
			return err
		} else if c != nil && c.Status != tether.StatusPending {
			return nil
		}
	}
}

// shortReason says in a few words why an attempt failed: the error's code
// and message, and the network error under it, never an answer's text.
func shortReason(err error) string {
	var te *tether.Error
	if !errors.As(err, &te) {
		return string(tether.ErrorCode(err))
	}
	s := string(te.Code) + ": " + te.Message
	var ne *net.OpError
	if errors.As(err, &ne) && ne.Err != nil {
		s += ": " + ne.Err.Error()
	}
	if r := []rune(s); len(r) > 120 {
		s = string(r[:119]) + "…"
	}
	return s
}

// sendAll sends text once to every active connection.
func sendAll(ctx context.Context, node *tether.Node, out *printer, text string) error {
	var ids []string
	if err := eachConnection(ctx, node, func(c *tether.Connection) bool {
		if c.Status == tether.StatusActive {
			ids = append(ids, c.ID)
		}
		return true
	}); err != nil {
		return err
	}
	for _, id := range ids {
		if _, err := node.Send(ctx, id, []byte(text)); err != nil {
			return fmt.Errorf("sending to %s: %w", id, err)
		}
		out.printf("sent %s: %s", id, text)
	}
	return nil
}

// printer writes whole lines, one goroutine at a time.
type printer struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *printer) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// inbox is the Receiver: it stores each message in agent_received in the
// delivery's transaction, and drain prints and removes what committed.
type inbox struct {
	db   *sql.DB
	out  *printer
	wake chan struct{}
	mu   sync.Mutex // one drain at a time
}

const insertReceived = `INSERT INTO agent_received (connection_id, seq, payload) VALUES (?, ?, ?)
	ON CONFLICT (connection_id, seq) DO NOTHING`

func (b *inbox) Receive(ctx context.Context, m tether.Message) error {
	var err error
	if tx := sqlstore.Tx(ctx); tx != nil {
		_, err = tx.ExecContext(ctx, insertReceived, m.ConnectionID, m.Seq, m.Payload)
	} else {
		_, err = b.db.ExecContext(ctx, insertReceived, m.ConnectionID, m.Seq, m.Payload)
	}
	if err == nil {
		// The drain's query waits for the database's one connection,
		// which the delivery holds until it commits or rolls back.
		nudge(b.wake)
	}
	return err
}

// drain prints the stored messages in the order they arrived, removing
// each once printed.
func (b *inbox) drain(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		type received struct {
			id      string
			seq     int64
			payload []byte
		}
		var page []received
		rows, err := b.db.QueryContext(ctx, `SELECT connection_id, seq, payload FROM agent_received ORDER BY rowid LIMIT 500`)
		if err != nil {
			return err
		}
		for rows.Next() {
			var r received
			if err := rows.Scan(&r.id, &r.seq, &r.payload); err != nil {
				rows.Close()
				return err
			}
			page = append(page, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, r := range page {
			b.out.printf("received %s: %s", r.id, payloadText(r.payload))
			// Printed: removed even if ctx ends now, or it prints again.
			if _, err := b.db.ExecContext(context.WithoutCancel(ctx), `DELETE FROM agent_received WHERE connection_id = ? AND seq = ?`, r.id, r.seq); err != nil {
				return err
			}
		}
		if len(page) < 500 {
			return nil
		}
	}
}

// payloadText is p as it is when it is printable UTF-8 on one line,
// Go-quoted otherwise.
func payloadText(p []byte) string {
	if !utf8.Valid(p) || bytes.ContainsFunc(p, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return fmt.Sprintf("%q", p)
	}
	return string(p)
}

// feed prints the node's event feed after a cursor kept in a file, so that
// an event is printed once across restarts: the cursor is saved once the
// page before it is printed.
type feed struct {
	path  string
	out   *printer
	node  *tether.Node
	wake  chan struct{}
	mu    sync.Mutex // one reader at a time
	after string
}

func openFeed(path string, out *printer) (*feed, error) {
	f := &feed{path: path, out: out, wake: make(chan struct{}, 1)}
	raw, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	f.after = strings.TrimSpace(string(raw))
	if _, err := tether.ParseFeedCursor(f.after); err != nil {
		return nil, fmt.Errorf("%s: %w (delete the file to print the events from the start)", path, err)
	}
	return f, nil
}

// nudge wakes a printLoop; it never blocks.
func nudge(wake chan struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

// printLoop calls drain when woken, and every second in case a wake-up
// came before what it announced was committed, until ctx ends.
func printLoop(ctx context.Context, wake <-chan struct{}, drain func(context.Context) error, what string, stderr io.Writer) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-tick.C:
		}
		if err := drain(ctx); err != nil && ctx.Err() == nil {
			fmt.Fprintf(stderr, "agent: printing %s: %v\n", what, err)
		}
	}
}

// drain prints every event after the cursor and saves the cursor.
func (f *feed) drain(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for {
		evs, next, err := f.node.Feed(ctx, tether.FeedOptions{After: f.after, Limit: tether.MaxEventPage})
		if err != nil {
			return err
		}
		for _, e := range evs {
			since := e.Time
			if e.Type == tether.EventPeerUnreachable {
				// Unreachable since the last exchange that succeeded, when
				// there was one before this event.
				if c, err := f.node.Get(ctx, e.ConnectionID); err == nil && !c.Health.LastContact.IsZero() && c.Health.LastContact.Before(e.Time) {
					since = c.Health.LastContact
				}
			}
			if line := eventLine(e, since); line != "" {
				f.out.printf("%s", line)
			}
		}
		if next != f.after {
			if err := writeFileAtomic(f.path, []byte(next+"\n")); err != nil {
				return err
			}
			f.after = next
		}
		if len(evs) < tether.MaxEventPage {
			return nil
		}
	}
}

// eventLine is the line an event prints, "" for events not shown; since
// is when the partner of a peer_unreachable event was last reached.
func eventLine(e tether.Event, since time.Time) string {
	status := ""
	switch e.Type {
	case tether.EventAccepted, tether.EventActivated, tether.EventReauthorized, tether.EventPeerActivated:
		status = "active"
	case tether.EventPaused, tether.EventPeerPaused:
		status = "paused"
	case tether.EventAuthLost, tether.EventKeyRevoked:
		status = "inactive"
	case tether.EventDeleted, tether.EventRevoked, tether.EventExpired:
		status = "deleted"
	case tether.EventPeerUnreachable:
		return "connection " + e.ConnectionID + ": partner unreachable since " + since.Local().Format(time.RFC3339)
	case tether.EventPeerReachable:
		return "connection " + e.ConnectionID + ": partner reachable again"
	default:
		return "" // created (the handshake lines say it), updated, key changes
	}
	return "connection " + e.ConnectionID + " " + status
}

// writeFileAtomic replaces path with data, so that a crash leaves the old
// content or the new one.
func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
