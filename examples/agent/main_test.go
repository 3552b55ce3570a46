package main

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
)

// deadline bounds every wait: generous for a loaded machine, while the
// tests finish as soon as what they wait for happens.
const deadline = 30 * time.Second

// syncBuffer is an io.Writer the test reads while the agent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, what string, cond func() bool, dump func() string) {
	t.Helper()
	end := time.Now().Add(deadline)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s\n%s", what, dump())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// public is the public side: a tether node on memstore, served over
// loopback HTTP.
type public struct {
	node *tether.Node
	mu   sync.Mutex
	got  []string // payloads received
}

func (p *public) Receive(_ context.Context, m tether.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.got = append(p.got, string(m.Payload))
	return nil
}

func (p *public) received(text string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.got {
		if g == text {
			return true
		}
	}
	return false
}

// startPublic starts a public node; wrap, when set, wraps its handler.
func startPublic(t *testing.T, wrap func(http.Handler) http.Handler) *public {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv := httptest.NewUnstartedServer(nil)
	policy := tether.DevelopmentURLPolicy()
	p := &public{}
	node, err := tether.Open(ctx, tether.Config{
		Store:       memstore.New(),
		Endpoint:    "http://" + srv.Listener.Addr().String() + "/tether",
		URLPolicy:   policy,
		Transport:   httptransport.NewClient(httptransport.ClientConfig{URLPolicy: policy}),
		Receiver:    p,
		DisplayName: "Support",
	})
	if err != nil {
		t.Fatal(err)
	}
	p.node = node
	mux := http.NewServeMux()
	var h http.Handler = httptransport.NewHandler(node, httptransport.HandlerConfig{})
	if wrap != nil {
		h = wrap(h)
	}
	mux.Handle("/tether/", h)
	srv.Config.Handler = mux
	srv.Start()
	done := make(chan struct{})
	go func() { defer close(done); _ = node.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		srv.Close()
	})
	return p
}

// invite initiates a connection to a private partner.
func (p *public) invite(t *testing.T) (*tether.Connection, string) {
	t.Helper()
	c, code, err := p.node.Initiate(context.Background(), tether.InitiateRequest{
		Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Agent", Name: "Support to Agent",
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, code
}

// waitActive waits until the public side's connection is active and
// returns it: RemoteConnection is the agent's connection ID.
func (p *public) waitActive(t *testing.T, id string) *tether.Connection {
	t.Helper()
	var c *tether.Connection
	eventually(t, "the public side to be active", func() bool {
		var err error
		c, err = p.node.Get(context.Background(), id)
		return err == nil && c.Status == tether.StatusActive
	}, func() string { return "" })
	return c
}

func (p *public) send(t *testing.T, id, text string) {
	t.Helper()
	if _, err := p.node.Send(context.Background(), id, []byte(text)); err != nil {
		t.Fatal(err)
	}
}

// agent is one run of the agent, in process.
type agent struct {
	out, errs syncBuffer
	cancel    context.CancelFunc
	done      chan error
}

func startAgent(t *testing.T, args ...string) *agent {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a := &agent{cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- run(ctx, args, &a.out, &a.errs) }()
	t.Cleanup(func() { a.stop(t) })
	return a
}

// stop ends the run as SIGINT does and returns what run returned.
func (a *agent) stop(t *testing.T) error {
	t.Helper()
	a.cancel()
	select {
	case err := <-a.done:
		a.done <- err // stop may be called again
		return err
	case <-time.After(deadline):
		t.Fatalf("the agent did not stop\n%s", a.dump())
		return nil
	}
}

func (a *agent) dump() string {
	return "stdout:\n" + a.out.String() + "stderr:\n" + a.errs.String()
}

// wait waits until the agent printed line (a whole line).
func (a *agent) wait(t *testing.T, line string) {
	t.Helper()
	eventually(t, "line "+line, func() bool { return a.count(line) > 0 }, a.dump)
}

// count counts the output lines that are exactly line.
func (a *agent) count(line string) int {
	n := 0
	for _, l := range strings.Split(a.out.String(), "\n") {
		if l == line {
			n++
		}
	}
	return n
}

// runErr runs the agent to its end and returns its error and output.
func runErr(t *testing.T, args ...string) (error, string) {
	t.Helper()
	var out, errs syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), deadline)
	defer cancel()
	err := run(ctx, args, &out, &errs)
	if ctx.Err() != nil {
		t.Fatalf("run did not return before the deadline: %v\n%s%s", err, out.String(), errs.String())
	}
	return err, out.String() + errs.String()
}

// connectAgent starts an agent with args and waits until its connection
// is active on both sides; it returns the agent and both connection IDs.
func connectAgent(t *testing.T, p *public, pubID string, args ...string) (a *agent, agentID string) {
	t.Helper()
	a = startAgent(t, args...)
	agentID = p.waitActive(t, pubID).RemoteConnection
	a.wait(t, "connection "+agentID+" active")
	return a, agentID
}

func TestInviteFlag(t *testing.T) {
	p := startPublic(t, nil)
	conn, code := p.invite(t)
	dir := filepath.Join(t.TempDir(), "data") // created by the agent
	a, id := connectAgent(t, p, conn.ID, "-data", dir, "-invite", code, "-allow-private-network", "-send", "hello from the agent")

	host := strings.TrimPrefix(p.node.Endpoint(), "http://")
	host = strings.TrimSuffix(host, "/tether")
	for _, want := range []string{
		"agent agent: data in " + dir + ", 0 connection(s)",
		"invitation from Support: Support to Agent (basic)",
		"connecting to " + host + "...",
	} {
		a.wait(t, want)
	}
	a.wait(t, "sent "+id+": hello from the agent")
	eventually(t, "the public side to receive", func() bool { return p.received("hello from the agent") }, a.dump)

	p.send(t, conn.ID, "hello agent")
	p.send(t, conn.ID, "bin\xff\n")
	a.wait(t, "received "+id+": hello agent")
	a.wait(t, "received "+id+`: "bin\xff\n"`)
	p.send(t, conn.ID, "")
	a.wait(t, "received "+id+": ")

	if err := a.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	fi, err := os.Stat(filepath.Join(dir, "sealing.key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("sealing.key: %v %v", fi, err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "sealing.key"))
	if _, err := tether.ParseSealingKey(string(raw)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "agent.db")); err != nil {
		t.Fatal(err)
	}
	if c := p.waitActive(t, conn.ID); c.RemoteName != "Agent" {
		t.Errorf("without -name the agent takes the proposed short name: the public side calls it %q", c.RemoteName)
	}
	if a.count("connection "+id+" active") != 1 {
		t.Errorf("the active line is printed once:\n%s", a.dump())
	}
}

func TestInviteFile(t *testing.T) {
	p := startPublic(t, nil)
	conn, code := p.invite(t)
	file := filepath.Join(t.TempDir(), "invite.txt")
	if err := os.WriteFile(file, []byte("\n  "+code+"  \r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, id := connectAgent(t, p, conn.ID, "-data", t.TempDir(), "-invite-file", file, "-allow-private-network", "-name", "field-agent")
	a.wait(t, "invitation from Support: Support to Agent (basic)")
	p.send(t, conn.ID, "via file")
	a.wait(t, "received "+id+": via file")
	if !strings.Contains(a.out.String(), "agent field-agent: data in ") {
		t.Errorf("the start line names the agent:\n%s", a.dump())
	}
	if c := p.waitActive(t, conn.ID); c.RemoteName != "field-agent" {
		t.Errorf("-name is the agent's short name: the public side calls it %q", c.RemoteName)
	}

	// Standard input.
	conn2, code2 := p.invite(t)
	old := stdin
	stdin = strings.NewReader(code2 + "\n")
	t.Cleanup(func() { stdin = old })
	a2, id2 := connectAgent(t, p, conn2.ID, "-data", t.TempDir(), "-invite-file", "-", "-allow-private-network")
	p.send(t, conn2.ID, "via stdin")
	a2.wait(t, "received "+id2+": via stdin")
}

func TestRestart(t *testing.T) {
	p := startPublic(t, nil)
	conn, code := p.invite(t)
	dir := t.TempDir()
	args := []string{"-data", dir, "-invite", code, "-allow-private-network"}
	a, id := connectAgent(t, p, conn.ID, args...)
	p.send(t, conn.ID, "before")
	a.wait(t, "received "+id+": before")
	if err := a.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}

	p.send(t, conn.ID, "while down")
	b := startAgent(t, args...)
	b.wait(t, "agent agent: data in "+dir+", 1 connection(s)")
	b.wait(t, "invitation already accepted: connection "+id)
	b.wait(t, "received "+id+": while down")
	p.send(t, conn.ID, "after restart")
	b.wait(t, "received "+id+": after restart")
	if err := b.stop(t); err != nil {
		t.Fatalf("run: %v", err)
	}
	if b.count("received "+id+": while down") != 1 || b.count("received "+id+": before") != 0 {
		t.Errorf("messages printed again after the restart:\n%s", b.dump())
	}
	if strings.Contains(b.out.String(), "connection "+id+" active") || strings.Contains(b.out.String(), "connecting to") {
		t.Errorf("the restart printed old events or connected again:\n%s", b.dump())
	}
	if c, err := p.node.Get(context.Background(), conn.ID); err != nil || c.RemoteConnection != id || c.Status != tether.StatusActive {
		t.Fatalf("public side after the restart: %+v %v", c, err)
	}

	// Without -allow-private-network the loopback partner is out of reach:
	// refused at the start, naming the flag.
	err, out := runErr(t, "-data", dir)
	if err == nil || !strings.Contains(err.Error(), "connection "+id) || !strings.Contains(err.Error(), "-allow-private-network") {
		t.Errorf("a restart without the flag: %v\n%s", err, out)
	}

	// Without -invite: the same connection, nothing old again.
	c := startAgent(t, "-data", dir, "-allow-private-network")
	p.send(t, conn.ID, "third run")
	c.wait(t, "received "+id+": third run")
	if strings.Contains(c.out.String(), "while down") || strings.Contains(c.out.String(), "invitation") {
		t.Errorf("third run:\n%s", c.dump())
	}
}

func TestRefused(t *testing.T) {
	p := startPublic(t, nil)
	_, code := p.invite(t)

	err, out := runErr(t, "-data", t.TempDir(), "-invite", code)
	if err == nil || !strings.Contains(err.Error(), "-allow-private-network") || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("a loopback invitation without the flag: %v\n%s", err, out)
	}

	err, out = runErr(t, "-data", t.TempDir(), "-invite", "tether_inv_not-a-code")
	if err == nil || !strings.Contains(err.Error(), "invalid invitation") {
		t.Errorf("an invalid code: %v\n%s", err, out)
	}
	damaged := code[:len(code)-10] + "x" + code[len(code)-9:]
	if damaged == code {
		damaged = code[:len(code)-10] + "y" + code[len(code)-9:]
	}
	err, _ = runErr(t, "-data", t.TempDir(), "-invite", damaged, "-allow-private-network")
	if !errors.Is(err, tether.ErrDamagedCode) {
		t.Errorf("a mistyped code: %v", err)
	}

	var usage usageError
	if err, _ := runErr(t, "-data", t.TempDir(), "-invite", code, "-invite-file", "x"); !errors.As(err, &usage) {
		t.Errorf("both -invite and -invite-file: %v", err)
	}
	if err, _ := runErr(t, "-data", t.TempDir(), "extra"); !errors.As(err, &usage) {
		t.Errorf("an argument: %v", err)
	}

	// Accepted by another agent first.
	conn, code := p.invite(t)
	connectAgent(t, p, conn.ID, "-data", t.TempDir(), "-invite", code, "-allow-private-network")
	err, out = runErr(t, "-data", t.TempDir(), "-invite", code, "-allow-private-network")
	if err == nil || !strings.Contains(err.Error(), "already accepted by another instance") {
		t.Errorf("a code accepted elsewhere: %v\n%s", err, out)
	}
}

func TestPauseShows(t *testing.T) {
	p := startPublic(t, nil)
	conn, code := p.invite(t)
	a, id := connectAgent(t, p, conn.ID, "-data", t.TempDir(), "-invite", code, "-allow-private-network")
	ctx := context.Background()
	if _, err := p.node.Pause(ctx, conn.ID); err != nil {
		t.Fatal(err)
	}
	a.wait(t, "connection "+id+" paused")
	if _, err := p.node.Activate(ctx, conn.ID); err != nil {
		t.Fatal(err)
	}
	eventually(t, "active again", func() bool { return a.count("connection "+id+" active") == 2 }, a.dump)
	if _, err := p.node.Delete(ctx, conn.ID); err != nil {
		t.Fatal(err)
	}
	a.wait(t, "connection "+id+" deleted")
}

// The initiator cannot be reached at first: the agent says so and retries.
func TestRetry(t *testing.T) {
	var refused atomic.Int32
	p := startPublic(t, func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if refused.Add(1) == 1 {
				http.Error(w, "starting up", http.StatusServiceUnavailable)
				return
			}
			h.ServeHTTP(w, r)
		})
	})
	conn, code := p.invite(t)
	a, _ := connectAgent(t, p, conn.ID, "-data", t.TempDir(), "-invite", code, "-allow-private-network")
	eventually(t, "a retry line", func() bool {
		return strings.Contains(a.out.String(), "\nretrying in 1s: unavailable: ")
	}, a.dump)
}

// pastClock is the system clock set back by d.
type pastClock struct{ d time.Duration }

func (c pastClock) Now() time.Time                         { return time.Now().Add(-c.d) }
func (c pastClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// An expired code is still recognised, so that a restart with the code of
// an invitation accepted long ago finds its connection.
func TestPreviewExpired(t *testing.T) {
	ctx := context.Background()
	old, err := tether.Open(ctx, tether.Config{
		Store: memstore.New(), Endpoint: "https://support.example.com/tether",
		Clock: pastClock{tether.DefaultInvitationTTL + tether.ClockSkew + time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, code, err := old.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Agent", Name: "Old"})
	if err != nil {
		t.Fatal(err)
	}
	node, err := tether.Open(ctx, tether.Config{Store: memstore.New()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node.Preview(code); !errors.Is(err, tether.ErrExpired) {
		t.Fatalf("Preview of an old code: %v", err)
	}
	inv, expired, err := preview(node, code)
	if err != nil || !expired || inv.Name != "Old" {
		t.Fatalf("preview: %+v %v %v", inv, expired, err)
	}
	// A damaged old code is not verified.
	c := "A"
	if code[40] == 'A' {
		c = "B"
	}
	if _, _, err := preview(node, code[:40]+c+code[41:]); err == nil {
		t.Fatal("a damaged code passed")
	}
}

func TestLines(t *testing.T) {
	for _, c := range []struct {
		in, want string
	}{
		{"plain text, ünïcode", "plain text, ünïcode"},
		{"two\nlines", `"two\nlines"`},
		{"tab\there", `"tab\there"`},
		{"\xff", `"\xff"`},
	} {
		if got := payloadText([]byte(c.in)); got != c.want {
			t.Errorf("payloadText(%q) = %s, want %s", c.in, got, c.want)
		}
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.Local)
	for _, c := range []struct {
		t    tether.EventType
		want string
	}{
		{tether.EventCreated, ""},
		{tether.EventAccepted, "connection c1 active"},
		{tether.EventPeerPaused, "connection c1 paused"},
		{tether.EventPeerActivated, "connection c1 active"},
		{tether.EventKeyRevoked, "connection c1 inactive"},
		{tether.EventDeleted, "connection c1 deleted"},
		{tether.EventPeerUnreachable, "connection c1: partner unreachable since " + at.Format(time.RFC3339)},
		{tether.EventPeerReachable, "connection c1: partner reachable again"},
	} {
		if got := eventLine(tether.Event{ConnectionID: "c1", Type: c.t, Time: at.Add(time.Minute)}, at); got != c.want {
			t.Errorf("%s: %q, want %q", c.t, got, c.want)
		}
	}
}
