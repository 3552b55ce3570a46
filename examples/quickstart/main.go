// Command quickstart runs two tether instances in one process, talking over
// real HTTP on loopback, and walks through a connection's life:
//
//   - "support" is public: it serves tether's HTTP handler.
//   - "engineering" is private, as if behind a firewall: it never listens,
//     it only makes outgoing requests. Support's invitation therefore says
//     "I don't have a URL" for the destination.
//
// Engineering previews and accepts the code, both turn Active, they
// exchange messages both ways (engineering receives support's messages
// through a long-poll it holds open), the connection is paused, activated
// and deleted, and its history is printed.
//
// Each instance keeps its data in a SQLite file (in a new temporary
// directory, or in -data), or, with -postgres, in a schema of its own in
// that PostgreSQL database.
//
//	go run ./examples/quickstart
//	go run ./examples/quickstart -data ./quickstart-data
//	go run ./examples/quickstart -postgres 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	_ "modernc.org/sqlite"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/sqlstore"
)

func main() {
	var opts options
	flag.StringVar(&opts.dataDir, "data", "", "directory for the SQLite files (default: a new temporary directory)")
	flag.StringVar(&opts.postgres, "postgres", "", "PostgreSQL URL: keep the data there instead of in SQLite files")
	flag.Parse()
	opts.oneByOne, opts.burst = 200, 2000
	if err := run(context.Background(), os.Stdout, opts); err != nil {
		log.Fatal(err)
	}
}

type options struct {
	dataDir  string // SQLite files go here
	postgres string // if set, PostgreSQL instead
	oneByOne int    // messages sent one at a time each way
	burst    int    // messages sent at once each way
}

// openStore returns the store of the instance called name, and a function
// closing its database.
func openStore(ctx context.Context, opts options, name string) (*sqlstore.Store, func(), error) {
	if opts.postgres != "" {
		return openPostgres(ctx, opts.postgres, name)
	}
	sealer, err := fileSealer(filepath.Join(opts.dataDir, "seal.key"))
	if err != nil {
		return nil, nil, err
	}
	path := filepath.Join(opts.dataDir, name+".db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)"+
		"&_pragma=synchronous(NORMAL)&_pragma=foreign_keys(1)&_txlock=immediate")
	if err != nil {
		return nil, nil, err
	}
	db.SetMaxOpenConns(1) // SQLite has one writer
	store, err := sqlstore.New(ctx, db, sqlstore.SQLite, sqlstore.Config{Sealer: sealer})
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return store, func() { db.Close() }, nil
}

// openPostgres gives the instance a fresh schema of its own.
func openPostgres(ctx context.Context, base, name string) (*sqlstore.Store, func(), error) {
	schema := "tether_quickstart_" + name
	admin, err := sql.Open("pgx", base)
	if err != nil {
		return nil, nil, err
	}
	defer admin.Close()
	if _, err := admin.ExecContext(ctx, `DROP SCHEMA IF EXISTS `+schema+` CASCADE; CREATE SCHEMA `+schema); err != nil {
		return nil, nil, fmt.Errorf("preparing schema %s: %w", schema, err)
	}
	u, err := url.Parse(base)
	if err != nil {
		return nil, nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	db, err := sql.Open("pgx", u.String())
	if err != nil {
		return nil, nil, err
	}
	key := make([]byte, 32) // a fresh schema each run: a fresh key will do
	if _, err := rand.Read(key); err != nil {
		return nil, nil, err
	}
	sealer, err := tether.NewSealer("quickstart", map[string][]byte{"quickstart": key})
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

// fileSealer reads the sealing key from path, creating it on first use.
// A real host keeps it in its secret store, not beside the data.
func fileSealer(path string) (*tether.Sealer, error) {
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		key := make([]byte, 32)
		if _, err := rand.Read(key); err != nil {
			return nil, err
		}
		raw = []byte(hex.EncodeToString(key))
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return tether.NewSealer("quickstart", map[string][]byte{"quickstart": key})
}

// collector is a Receiver that counts messages and the latency each saw
// (the send time travels in the first 8 bytes of the payload).
type collector struct {
	mu        sync.Mutex
	latencies []time.Duration
	want      int
	done      chan struct{} // closed when want messages arrived
	arrived   chan struct{} // closed and replaced at every message
}

func newCollector() *collector {
	return &collector{done: make(chan struct{}), arrived: make(chan struct{})}
}

func (c *collector) expect(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.want = n
	c.done = make(chan struct{})
	c.latencies = c.latencies[:0]
}

func (c *collector) Receive(_ context.Context, m tether.Message) error {
	sent := time.Unix(0, int64(binary.BigEndian.Uint64(m.Payload)))
	c.mu.Lock()
	defer c.mu.Unlock()
	c.latencies = append(c.latencies, time.Since(sent))
	if len(c.latencies) == c.want {
		close(c.done)
	}
	close(c.arrived)
	c.arrived = make(chan struct{})
	return nil
}

func (c *collector) wait(ctx context.Context) error {
	c.mu.Lock()
	done := c.done
	c.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return errors.New("messages did not all arrive in time")
	}
}

func (c *collector) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	l := slices.Clone(c.latencies)
	slices.Sort(l)
	pct := func(p int) time.Duration { return l[(len(l)-1)*p/100].Round(10 * time.Microsecond) }
	return fmt.Sprintf("%d delivered, latency p50 %v, p99 %v, max %v", len(l), pct(50), pct(99), pct(100))
}

func payload(text string) []byte {
	b := binary.BigEndian.AppendUint64(nil, uint64(time.Now().UnixNano()))
	return append(b, text...)
}

// run walks through the demonstration: one-by-one messages measure the
// latency on an idle connection, a burst measures how fast a batch flows.
func run(ctx context.Context, out io.Writer, opts options) error {
	oneByOne, burst := opts.oneByOne, opts.burst
	if opts.postgres == "" && opts.dataDir == "" {
		dir, err := os.MkdirTemp("", "tether-quickstart-")
		if err != nil {
			return err
		}
		opts.dataDir = dir
	}
	supportStore, closeSupport, err := openStore(ctx, opts, "support")
	if err != nil {
		return err
	}
	defer closeSupport()
	engStore, closeEng, err := openStore(ctx, opts, "engineering")
	if err != nil {
		return err
	}
	defer closeEng()
	if opts.postgres != "" {
		fmt.Fprintln(out, "data: PostgreSQL schemas tether_quickstart_support and tether_quickstart_engineering")
	} else {
		fmt.Fprintf(out, "data: SQLite files support.db and engineering.db in %s\n", opts.dataDir)
	}

	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait() // every Run has returned before run does
	defer cancel()

	// Loopback HTTP is plain http on 127.0.0.1: allowed by the development
	// URL policy only. Production endpoints are https.
	policy := tether.DevelopmentURLPolicy()

	// The public instance: an HTTP server with tether's handler under /tether/.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	supportIn := newCollector()
	support, err := tether.Open(ctx, tether.Config{
		Store:     supportStore,
		Endpoint:  "http://" + ln.Addr().String() + "/tether",
		URLPolicy: policy,
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		Receiver:  supportIn,
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/tether/", httptransport.NewHandler(support, httptransport.HandlerConfig{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()

	// The private instance: no Endpoint, no server.
	engIn := newCollector()
	engineering, err := tether.Open(ctx, tether.Config{
		Store:     engStore,
		URLPolicy: policy,
		Transport: httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		Receiver:  engIn,
	})
	if err != nil {
		return err
	}
	for _, n := range []*tether.Node{support, engineering} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = n.Run(ctx) }()
	}
	fmt.Fprintf(out, "support     %s  public at %s\n", support.ID(), support.Endpoint())
	fmt.Fprintf(out, "engineering %s  private: makes outgoing requests only\n\n", engineering.ID())

	// 1. Support initiates. Destination "" means "I don't have a URL".
	conn, code, err := support.Initiate(ctx, tether.InitiateRequest{
		Owner:       "support-team",
		Destination: "",
		Mode:        tether.ModeScript,
		LocalName:   "Support",
		RemoteName:  "Engineering",
		Name:        "Support to Engineering",
		Description: "Escalated tickets and their updates",
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "1. support initiated %s: %s\n", conn.ID, conn.Status)
	fmt.Fprintf(out, "   invitation code (%d characters), copy it to the partner:\n\n%s\n\n", len(code), wrap(code, 76, "   "))

	// 2. Engineering pastes the code and sees what it is about.
	inv, err := engineering.Preview(code)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "2. engineering previews the code:")
	fmt.Fprintf(out, "   %s invites you to %q (%s)\n", inv.InitiatorName, inv.Name, inv.Description)
	fmt.Fprintf(out, "   mode %s, you will be %q, key %s\n", inv.Mode, inv.AcceptorName, inv.KeyID)
	fmt.Fprintf(out, "   expires %s; initiator private: %v, destination private: %v\n\n",
		inv.ExpiresAt.Format(time.RFC1123), inv.InitiatorPrivate(), inv.DestinationPrivate())

	// 3. Engineering accepts: it calls support over HTTP.
	start := time.Now()
	accepted, err := engineering.Accept(ctx, code, tether.AcceptOptions{Owner: "eng-team"})
	if err != nil {
		return err
	}
	handshake := time.Since(start)
	if conn, err = support.Get(ctx, conn.ID); err != nil {
		return err
	}
	fmt.Fprintf(out, "3. engineering accepted in %v:\n", handshake.Round(10*time.Microsecond))
	fmt.Fprintf(out, "   support     %s: %s, connected to %s\n", conn.ID, conn.Status, conn.RemoteName)
	fmt.Fprintf(out, "   engineering %s: %s, connected to %s\n", accepted.ID, accepted.Status, accepted.RemoteName)
	if _, err := engineering.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		fmt.Fprintf(out, "   accepting the same code again: %v\n", err)
	}

	// 4. Messages both ways. Engineering receives through its long-poll.
	waitCtx, waitCancel := context.WithTimeout(ctx, 60*time.Second)
	defer waitCancel()
	fmt.Fprintf(out, "\n4. %d messages each way, each sent when the previous one arrived:\n", oneByOne)
	engIn.expect(oneByOne)
	supportIn.expect(oneByOne)
	for i := range oneByOne {
		if err := sendAndWait(waitCtx, support, conn.ID, engIn, i+1, "ticket escalated"); err != nil {
			return err
		}
		if err := sendAndWait(waitCtx, engineering, accepted.ID, supportIn, i+1, "ticket answered"); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "   support -> engineering (long-poll): %s\n", engIn.summary())
	fmt.Fprintf(out, "   engineering -> support (push):      %s\n", supportIn.summary())

	fmt.Fprintf(out, "   then %d each way at once:\n", burst)
	engIn.expect(burst)
	supportIn.expect(burst)
	start = time.Now()
	for i := range burst {
		if _, err := support.Send(ctx, conn.ID, payload(fmt.Sprintf("update %d", i))); err != nil {
			return err
		}
		if _, err := engineering.Send(ctx, accepted.ID, payload(fmt.Sprintf("reply %d", i))); err != nil {
			return err
		}
	}
	if err := engIn.wait(waitCtx); err != nil {
		return err
	}
	if err := supportIn.wait(waitCtx); err != nil {
		return err
	}
	fmt.Fprintf(out, "   %d messages delivered in %v\n", 2*burst, time.Since(start).Round(time.Millisecond))
	lastSeq := int64(oneByOne + burst)

	// 5. Lifecycle, recorded with the acting user.
	admin := tether.WithActor(ctx, "admin@support")
	fmt.Fprintln(out, "\n5. lifecycle on the support side:")
	if _, err := support.Pause(admin, conn.ID); err != nil {
		return err
	}
	fmt.Fprintln(out, "   pause    -> paused")
	engIn.expect(1)
	if _, err := support.Send(ctx, conn.ID, payload("sent while paused")); err != nil {
		return err
	}
	queued, err := supportStore.ListOutbox(ctx, conn.ID, lastSeq, 0)
	if err != nil {
		return err
	}
	waiting := 0
	for _, m := range queued {
		if !m.Control { // the pause notice travels in the outbox too
			waiting++
		}
	}
	fmt.Fprintf(out, "   a message sent while paused waits in the outbox: %d queued\n", waiting)
	if _, err := support.Activate(admin, conn.ID); err != nil {
		return err
	}
	if err := engIn.wait(waitCtx); err != nil {
		return err
	}
	fmt.Fprintln(out, "   activate -> active, and the queued message arrived")
	if _, err := support.Delete(admin, conn.ID); err != nil {
		return err
	}
	fmt.Fprintln(out, "   delete   -> deleted")
	if _, err := support.Activate(admin, conn.ID); err != nil {
		fmt.Fprintf(out, "   activate -> refused: %v\n", err)
	}

	// 6. The history survives deletion.
	events, err := support.Events(ctx, conn.ID, 0, 0)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "\n6. history of the deleted connection:")
	for _, e := range events {
		fmt.Fprintf(out, "   %s  %-9s by %-14s %s\n", e.Time.Format("15:04:05.000"), e.Type, e.Actor, e.Detail)
	}
	return nil
}

// sendAndWait sends one message and waits until the other side has it.
func sendAndWait(ctx context.Context, from *tether.Node, id string, to *collector, n int, text string) error {
	to.mu.Lock()
	arrived := to.arrived
	to.mu.Unlock()
	if _, err := from.Send(ctx, id, payload(text)); err != nil {
		return err
	}
	select {
	case <-arrived:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("message %d did not arrive in time", n)
	}
}

// wrap breaks s into lines of width characters, each indented.
func wrap(s string, width int, indent string) string {
	var b strings.Builder
	for len(s) > width {
		b.WriteString(indent + s[:width] + "\n")
		s = s[width:]
	}
	b.WriteString(indent + s)
	return b.String()
}
