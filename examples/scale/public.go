package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base32"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
)

// Limits on the waits of a run that are not set on the command line.
const (
	readyTimeout = 30 * time.Minute // for the private peers to accept and poll
	childGrace   = 2 * time.Minute  // for the child's figures after the window
	createWorker = 8                // goroutines creating copies, and initiating invitations
)

// runPublic is the measurement: the public node under test, its
// connections, its start, and its idle figures.
func runPublic(ctx context.Context, o *options, stdout, stderr io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "scale: "+format+"\n", args...) }
	rep := newReport(stdout)
	rep.add("store", o.store, "name")
	rep.add("conns", o.conns, "count")
	rep.add("private", o.private, "count")

	b, err := openBackend(ctx, o, logf)
	if err != nil {
		return err
	}
	defer b.close()

	found, err := survey(ctx, b.raw)
	if err != nil {
		return err
	}
	reused := found.public > 0
	switch {
	case reused && !o.reuse:
		return fmt.Errorf("the store holds %d connections already: pass -reuse", found.public)
	case reused && found.public != o.conns:
		return fmt.Errorf("the store holds %d connections to public peers, not %d: run without -reuse to create them afresh", found.public, o.conns)
	}

	// Fresh ports, or, when the connections exist, those they were made
	// with: the peer's URL is in every connection record.
	publicAddr, peerAddr := "127.0.0.1:0", "127.0.0.1:0"
	if reused {
		if publicAddr, err = hostPort(found.last.LocalURL); err == nil {
			peerAddr, err = hostPort(found.last.RemoteURL)
		}
		if err != nil {
			return err
		}
	}

	policy := tether.DevelopmentURLPolicy()
	client := httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy})
	defer client.Close()
	warn := newWarnings(stderr)
	logger := slog.New(warn)

	publicLn, err := net.Listen("tcp", publicAddr)
	if err != nil {
		return fmt.Errorf("public node: %w", err)
	}
	defer publicLn.Close()
	publicURL := "http://" + publicLn.Addr().String()
	node, err := tether.Open(ctx, tether.Config{
		Store: b.store, Transport: client, Endpoint: publicURL, URLPolicy: policy,
		DisplayName: "scale", Replica: "scale", Logger: logger,
	})
	if err != nil {
		return err
	}
	polls := &pollCounter{next: httptransport.NewHandler(node, httptransport.HandlerConfig{})}
	stopServer := serve(publicLn, polls)
	defer stopServer()

	// The public peer: a real node on loopback HTTP, at the other end of
	// the real connections.
	arrival := &arrival{done: make(chan struct{})}
	var peer *tether.Node
	if o.conns > 0 {
		peerLn, err := net.Listen("tcp", peerAddr)
		if err != nil {
			return fmt.Errorf("peer: %w", err)
		}
		defer peerLn.Close()
		peer, err = tether.Open(ctx, tether.Config{
			Store: b.peer, Transport: client, Endpoint: "http://" + peerLn.Addr().String(), URLPolicy: policy,
			DisplayName: "scale peer", Replica: "scale-peer", Receiver: arrival, Logger: logger,
		})
		if err != nil {
			return err
		}
		stopPeer := serve(peerLn, httptransport.NewHandler(peer, httptransport.HandlerConfig{}))
		defer stopPeer()
	}

	var last *tether.Connection
	switch {
	case reused:
		rep.add("reused", 1, "bool")
		logf("reusing %d connections", found.public)
		if err := retire(ctx, b.raw, found.stale); err != nil {
			return err
		}
		if _, err := peer.Get(ctx, found.last.RemoteConnection); err != nil {
			return fmt.Errorf("the peer's data do not hold the last connection (%w): run without -reuse", err)
		}
		last = found.last
	case o.conns > 0:
		rep.add("reused", 0, "bool")
		start := time.Now()
		if last, err = createConnections(ctx, b.raw, node, peer, o.conns, logf); err != nil {
			return err
		}
		rep.add("create_s", time.Since(start).Seconds(), "s")
	}

	base := idleSample()
	rep.add("goroutines_base", base.goroutines, "count")
	rep.add("heap_mb_base", float64(base.heapStack)/mib, "MiB")
	rep.add("rss_mb_base", float64(base.rss)/mib, "MiB")

	// Start: Run, and at once a message on the last connection created,
	// which Run reaches last.
	runCtx, stopRun := context.WithCancel(ctx)
	runDone := make(chan error, 1)
	defer func() {
		stopRun()
		logf("stopping Run")
		<-runDone
	}()
	arrival.marker = []byte("scale start " + randomHex(8))
	logf("starting Run with %d connections", o.conns)
	t0 := time.Now()
	go func() { runDone <- node.Run(runCtx) }()
	started := false
	if last != nil {
		if _, err := node.Send(ctx, last.ID, arrival.marker); err != nil {
			return fmt.Errorf("sending the start message: %w", err)
		}
		if started, err = awaitStart(ctx, o, rep, arrival, t0, runDone, logf); err != nil {
			return err
		}
	}

	logf("settling for %s", o.settle)
	if !sleep(ctx, o.settle) {
		return ctx.Err()
	}
	noPolls := idleSample()
	if o.conns > 0 {
		rep.add("goroutines_per_conn", float64(noPolls.goroutines-base.goroutines)/float64(o.conns), "count")
		rep.add("bytes_per_conn", (float64(noPolls.heapStack)-float64(base.heapStack))/float64(o.conns), "bytes")
	}

	var child *childProcess
	if o.private > 0 {
		rep.add("goroutines_no_polls", noPolls.goroutines, "count")
		rep.add("heap_mb_no_polls", float64(noPolls.heapStack)/mib, "MiB")
		if child, err = startPrivate(ctx, o, node, publicURL, stderr, logf); err != nil {
			return err
		}
		defer child.stop(logf)
		start := time.Now()
		if err := child.awaitReady(ctx, polls, o.private); err != nil {
			return err
		}
		rep.add("private_ready_s", time.Since(start).Seconds(), "s")
		logf("%d private peers polling; settling for %s", o.private, o.settle)
		if !sleep(ctx, o.settle) {
			return ctx.Err()
		}
	}

	if err := measureWindow(ctx, o, b, rep, polls, logf); err != nil {
		return err
	}
	idle := idleSample()
	rep.add("goroutines", idle.goroutines, "count")
	rep.add("rss_mb", float64(idle.rss)/mib, "MiB")
	rep.add("heap_mb", float64(idle.heapStack)/mib, "MiB")
	if o.private > 0 {
		p := float64(o.private)
		rep.add("goroutines_per_poll", float64(idle.goroutines-noPolls.goroutines)/p, "count")
		rep.add("bytes_per_poll", (float64(idle.heapStack)-float64(noPolls.heapStack))/p, "bytes")
		if err := child.figures(ctx, rep); err != nil {
			return err
		}
	}
	if last != nil && !started {
		if arrival.arrived() {
			rep.add("start_s_late", arrival.at.Sub(t0).Seconds(), "s")
		}
		rep.add("start_done", 0, "bool")
	}
	rep.add("log_warnings", warn.total(), "count")
	if o.json {
		return rep.writeJSON()
	}
	return nil
}

// awaitStart waits for the start message to arrive at the peer and
// records start_s; after -start-timeout it records what the process
// holds at that moment instead, and reports false.
func awaitStart(ctx context.Context, o *options, rep *report, a *arrival, t0 time.Time, runDone <-chan error, logf func(string, ...any)) (bool, error) {
	timeout := time.NewTimer(o.startTimeout)
	defer timeout.Stop()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-a.done:
			rep.add("start_s", a.at.Sub(t0).Seconds(), "s")
			return true, nil
		case <-timeout.C:
			s := sampleNow()
			rep.add("start_s", fmt.Sprintf(">%.0f", o.startTimeout.Seconds()), "s")
			rep.add("goroutines_at_timeout", s.goroutines, "count")
			rep.add("rss_mb_at_timeout", float64(s.rss)/mib, "MiB")
			rep.add("heap_mb_at_timeout", float64(s.heapStack)/mib, "MiB")
			return false, nil
		case <-tick.C:
			s := sampleNow()
			logf("waiting for the start message: %.0f s, %d goroutines, RSS %.0f MiB", time.Since(t0).Seconds(), s.goroutines, float64(s.rss)/mib)
		case err := <-runDone:
			return false, fmt.Errorf("run ended before the start message arrived: %w", err)
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

// measureWindow measures the idle node over -measure: CPU, Store calls,
// held polls and, on PostgreSQL, the server's transactions and CPU.
func measureWindow(ctx context.Context, o *options, b *backend, rep *report, polls *pollCounter, logf func(string, ...any)) error {
	logf("measuring for %s", o.measure)
	var tx0 int64
	var pg0 map[int]int64
	if b.pgAdmin != nil {
		var err error
		if tx0, err = pgTransactions(ctx, b.pgAdmin); err != nil {
			return err
		}
		pg0 = postgresTicks()
	}
	calls0, cpu0, t0 := b.calls.snapshot(), cpuTime(), time.Now()
	minHeld, maxHeld := polls.held.Load(), polls.held.Load()
	for end := t0.Add(o.measure); time.Now().Before(end); {
		if !sleep(ctx, min(100*time.Millisecond, time.Until(end))) {
			return ctx.Err()
		}
		h := polls.held.Load()
		minHeld, maxHeld = min(minHeld, h), max(maxHeld, h)
	}
	calls1, cpu1, wall := b.calls.snapshot(), cpuTime(), time.Since(t0)
	var tx1 int64
	var pg1 map[int]int64
	if b.pgAdmin != nil {
		pg1 = postgresTicks()
		var err error
		if tx1, err = pgTransactions(ctx, b.pgAdmin); err != nil {
			return err
		}
	}
	secs := wall.Seconds()
	rep.add("measure_s", secs, "s")
	rep.add("cpu_pct", 100*(cpu1-cpu0).Seconds()/secs, "%")
	total, by := rates(calls0, calls1, secs)
	rep.add("store_calls_per_s", total, "1/s")
	var parts []string
	for _, m := range by {
		parts = append(parts, m.name+"="+strconv.FormatFloat(m.rate, 'f', decimals(m.rate), 64))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	rep.add("store_calls_by_method", strings.Join(parts, ","), "1/s")
	if b.pgAdmin != nil {
		// The statistics query is a transaction too: one is not the node's.
		rep.add("pg_commits_per_s", float64(tx1-tx0-1)/secs, "1/s")
		rep.add("pg_cpu_pct", 100*float64(ticksSince(pg0, pg1))/clockTicks/secs, "%")
	}
	if o.private > 0 {
		rep.add("polls_held", polls.held.Load(), "count")
		rep.add("polls_held_min", minHeld, "count")
		rep.add("polls_held_max", maxHeld, "count")
	}
	return nil
}

// inventory is what a Store holds already.
type inventory struct {
	public int                  // connections to public peers, not deleted
	last   *tether.Connection   // the last created of those
	stale  []*tether.Connection // connections to private peers, not deleted: a previous run's
}

func survey(ctx context.Context, s tether.Store) (inventory, error) {
	var f inventory
	opts := tether.ListOptions{Kind: tether.KindPeer, Limit: tether.MaxPageSize}
	for {
		page, next, err := s.ListConnections(ctx, opts)
		if err != nil {
			return f, err
		}
		for _, c := range page {
			switch {
			case c.Status == tether.StatusDeleted:
			case c.RemoteURL == "":
				f.stale = append(f.stale, c)
			default:
				f.public++
				if f.last == nil || c.ID > f.last.ID {
					f.last = c
				}
			}
		}
		if next == "" {
			return f, nil
		}
		opts.After = next
	}
}

// retire marks the connections of a previous run's private peers
// deleted, straight in the Store: those peers are gone.
func retire(ctx context.Context, s tether.Store, conns []*tether.Connection) error {
	for _, c := range conns {
		c.Status = tether.StatusDeleted
		if err := s.UpdateConnection(ctx, c); err != nil {
			return fmt.Errorf("retiring connection %s: %w", c.ID, err)
		}
	}
	return nil
}

// hostPort is the host and port of an endpoint URL.
func hostPort(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("stored endpoint %q is not a URL", endpoint)
	}
	return u.Host, nil
}

// createConnections gives the public node n active connections to its
// peer: a real one, n-2 copies of it, and, last, a second real one,
// which it returns (for n = 1, the one real connection).
func createConnections(ctx context.Context, store tether.Store, node, peer *tether.Node, n int, logf func(string, ...any)) (*tether.Connection, error) {
	logf("creating %d connections", n)
	first, err := handshake(ctx, node, peer, "scale first")
	if err != nil || n == 1 {
		return first, err
	}
	ms, err := createCopies(ctx, store, first, n-2, logf)
	if err != nil {
		return nil, err
	}
	// The last connection's ID must sort after the copies': its time part
	// is later.
	for time.Now().UnixMilli() <= ms {
		time.Sleep(time.Millisecond)
	}
	last, err := handshake(ctx, node, peer, "scale last")
	if err != nil {
		return nil, err
	}
	if n > 2 && last.ID <= copyID(ms, int64(n-3)) {
		return nil, fmt.Errorf("the last connection's ID %s does not sort after the copies'", last.ID)
	}
	return last, nil
}

// handshake connects the public node to its peer: the node initiates
// with the peer's URL as destination, the peer accepts.
func handshake(ctx context.Context, node, peer *tether.Node, name string) (*tether.Connection, error) {
	c, code, err := node.Initiate(ctx, tether.InitiateRequest{
		Destination: peer.Endpoint(), Mode: tether.ModeBasic,
		LocalName: "scale", RemoteName: "peer", Name: name,
	})
	if err != nil {
		return nil, fmt.Errorf("initiating: %w", err)
	}
	if _, err := peer.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
		return nil, fmt.Errorf("accepting: %w", err)
	}
	c, err = node.Get(ctx, c.ID)
	if err != nil {
		return nil, err
	}
	if c.Status != tether.StatusActive {
		return nil, fmt.Errorf("connection %s is %s after the handshake", c.ID, c.Status)
	}
	return c, nil
}

// idEncoding is the alphabet of tether IDs: base32hex in lowercase,
// which sorts like the bytes it encodes.
var idEncoding = base32.NewEncoding("0123456789abcdefghijklmnopqrstuv").WithPadding(base32.NoPadding)

// copyID is the ID of copy i: "conn_" and 16 bytes in base32hex, the
// first 6 the milliseconds since the epoch, as tether's own IDs (so they
// sort by creation time), the last 8 i.
func copyID(ms, i int64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], uint64(ms)<<16)
	binary.BigEndian.PutUint64(b[8:], uint64(i))
	return "conn_" + idEncoding.EncodeToString(b[:])
}

// idMillis is the time part of a tether ID, in milliseconds since the
// epoch.
func idMillis(id string) (int64, error) {
	_, enc, ok := strings.Cut(id, "_")
	b, err := idEncoding.DecodeString(enc)
	if !ok || err != nil || len(b) != 16 {
		return 0, fmt.Errorf("%q is not a tether ID", id)
	}
	return int64(binary.BigEndian.Uint64(b[:8]) >> 16), nil
}

// createCopies stores count copies of tpl with new IDs that sort after
// its own, from several goroutines, and returns the time part of their
// IDs.
func createCopies(ctx context.Context, store tether.Store, tpl *tether.Connection, count int, logf func(string, ...any)) (int64, error) {
	after, err := idMillis(tpl.ID)
	if err != nil {
		return 0, err
	}
	for time.Now().UnixMilli() <= after {
		time.Sleep(time.Millisecond)
	}
	ms := time.Now().UnixMilli()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next, done atomic.Int64
		wg         sync.WaitGroup
		errOnce    sync.Once
		firstErr   error
	)
	stop := progress(func() { logf("created %d/%d copies", done.Load(), count) })
	defer stop()
	for range createWorker {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(count) || ctx.Err() != nil {
					return
				}
				now := time.Now().UTC()
				c := tpl.Clone()
				c.ID, c.Version, c.CreatedAt, c.UpdatedAt = copyID(ms, i), 0, now, now
				c.Health, c.NoticeSeq = tether.Health{}, 0
				if err := store.CreateConnection(ctx, c); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("creating copy %d: %w", i, err); cancel() })
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	return ms, firstErr
}

// arrival is the peer's Receiver: it notes when the start message
// arrives.
type arrival struct {
	marker []byte // set before Run is called
	once   sync.Once
	done   chan struct{}
	at     time.Time
}

func (a *arrival) Receive(_ context.Context, m tether.Message) error {
	if bytes.Equal(m.Payload, a.marker) {
		a.once.Do(func() {
			a.at = time.Now()
			close(a.done)
		})
	}
	return nil
}

func (a *arrival) arrived() bool {
	select {
	case <-a.done:
		return true
	default:
		return false
	}
}

// pollCounter is an http.Handler that counts the requests to the poll
// operation in flight: the polls the node holds.
type pollCounter struct {
	next http.Handler
	held atomic.Int64
}

// pollPath is how the path of a poll request ends.
var pollPath = tether.OpURL("", tether.OpPoll)

func (p *pollCounter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if strings.HasSuffix(r.URL.Path, pollPath) {
		p.held.Add(1)
		defer p.held.Add(-1)
	}
	p.next.ServeHTTP(w, r)
}

// serve serves h on ln with the timeouts httptransport's documentation
// asks for, until the returned function is called.
func serve(ln net.Listener, h http.Handler) (stop func()) {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      60 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	return func() {
		srv.Close()
		<-done
	}
}

// childProcess is the private peers' process.
type childProcess struct {
	cmd   *exec.Cmd
	stdin io.Closer
	lines chan string // its standard output, closed at its end
	dir   string      // holds the codes file
}

// startPrivate initiates o.private invitations on the public node and
// starts the process that accepts them.
func startPrivate(ctx context.Context, o *options, node *tether.Node, publicURL string, stderr io.Writer, logf func(string, ...any)) (*childProcess, error) {
	logf("initiating %d invitations", o.private)
	codes := make([]string, o.private)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	for range createWorker {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(codes) {
					return
				}
				_, code, err := node.Initiate(ctx, tether.InitiateRequest{
					Mode: tether.ModeBasic, LocalName: "scale", RemoteName: "private", Name: "scale private " + strconv.Itoa(i),
				})
				if err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("initiating: %w", err) })
					return
				}
				codes[i] = code
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, firstErr
	}
	dir, err := os.MkdirTemp("", "tether-scale-codes-")
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "codes")
	if err := os.WriteFile(path, []byte(strings.Join(codes, "\n")+"\n"), 0o600); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	cmd := exec.Command(exe, "-role", "private", "-target", publicURL, "-codes", path,
		"-settle", o.settle.String(), "-measure", o.measure.String())
	cmd.Env = append(os.Environ(), childEnv+"=1")
	cmd.Stderr = stderr
	cmd.WaitDelay = 30 * time.Second
	stdin, err := cmd.StdinPipe()
	if err == nil {
		var out io.ReadCloser
		if out, err = cmd.StdoutPipe(); err == nil {
			if err = cmd.Start(); err == nil {
				c := &childProcess{cmd: cmd, stdin: stdin, lines: make(chan string, 64), dir: dir}
				go func() {
					defer close(c.lines)
					sc := bufio.NewScanner(out)
					for sc.Scan() {
						c.lines <- sc.Text()
					}
				}()
				logf("started the private peers' process (pid %d)", cmd.Process.Pid)
				return c, nil
			}
		}
	}
	os.RemoveAll(dir)
	return nil, err
}

// awaitReady waits until the child says its peers all poll and the
// public node holds that many polls.
func (c *childProcess) awaitReady(ctx context.Context, polls *pollCounter, p int) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	for ready := false; !ready; {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return errors.New("the private peers' process ended before it was ready")
			}
			ready = strings.HasPrefix(line, "ready ")
		case <-ctx.Done():
			return fmt.Errorf("waiting for the private peers: %w", ctx.Err())
		}
	}
	for polls.held.Load() < int64(p) {
		if !sleep(ctx, 50*time.Millisecond) {
			return fmt.Errorf("the public node holds %d polls of %d: %w", polls.held.Load(), p, ctx.Err())
		}
	}
	return nil
}

// figures adds the child's figures to rep once it printed them.
func (c *childProcess) figures(ctx context.Context, rep *report) error {
	ctx, cancel := context.WithTimeout(ctx, childGrace)
	defer cancel()
	for {
		select {
		case line, ok := <-c.lines:
			if !ok {
				return errors.New("the private peers' process ended before it printed its figures")
			}
			if line == "done" {
				return nil
			}
			f := strings.Fields(line)
			if len(f) != 4 || f[0] != "figure" {
				continue
			}
			if v, err := strconv.ParseFloat(f[2], 64); err == nil {
				rep.add(f[1], v, f[3])
			} else {
				rep.add(f[1], f[2], f[3])
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for the private peers' figures: %w", ctx.Err())
		}
	}
}

// stop ends the child: its stdin closes, and it stops its nodes and
// exits; it is sent SIGTERM if it has not after a minute, and killed
// after two.
func (c *childProcess) stop(logf func(string, ...any)) {
	logf("stopping the private peers")
	c.stdin.Close()
	term := time.AfterFunc(time.Minute, func() { _ = c.cmd.Process.Signal(syscall.SIGTERM) })
	kill := time.AfterFunc(2*time.Minute, func() { _ = c.cmd.Process.Kill() })
	for range c.lines { // the child's output ends when it exits
	}
	_ = c.cmd.Wait()
	term.Stop()
	kill.Stop()
	os.RemoveAll(c.dir)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
