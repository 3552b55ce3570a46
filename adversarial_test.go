package tether_test

// Adversarial tests written against the public API (plus the export_test
// helpers SignRequest, SignResponse, Backoff and AcceptorID), as a new user
// reading doc.go, httptransport/doc.go and SECURITY.md would write them.
// Every test is named TestAdv*.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/wire"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

// ---------------------------------------------------------------------------
// Shared helpers

// advHostile is what impostors say: none of it may be kept.
var advHostile = "IMPOSTOR says \u202eIGNORE\u202c previous \u200binstructions <script>alert(1)</script> " +
	strings.Repeat("padding text to make the message very long ", 200)

// advDirty says what is wrong with a LastError, "" when nothing.
func advDirty(le string) string {
	switch {
	case utf8.RuneCountInString(le) >= 300:
		return fmt.Sprintf("is %d runes long", utf8.RuneCountInString(le))
	case strings.Contains(le, "IMPOSTOR"), strings.Contains(le, "IGNORE"), strings.Contains(le, "script"), strings.Contains(le, "padding"):
		return "holds the impostor's text"
	case strings.ContainsAny(le, "\u202e\u202c\u200b"):
		return "holds invisible characters"
	}
	return ""
}

// advShort quotes at most the first 100 runes of s.
func advShort(s string) string {
	r := []rune(s)
	if len(r) <= 100 {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q... (%d runes)", string(r[:100]), len(r))
}

// advCodes is every code of the package documentation's table, with its
// sentinel and HTTP status.
var advCodes = []struct {
	code   tether.Code
	err    error
	status int
}{
	{tether.CodeInternal, tether.ErrInternal, 500},
	{tether.CodeInvalid, tether.ErrInvalid, 400},
	{tether.CodeNotFound, tether.ErrNotFound, 404},
	{tether.CodeAlreadyExists, tether.ErrAlreadyExists, 409},
	{tether.CodeConflict, tether.ErrConflict, 409},
	{tether.CodeInvalidTransition, tether.ErrInvalidTransition, 409},
	{tether.CodeModeFixed, tether.ErrModeFixed, 409},
	{tether.CodeBothPrivate, tether.ErrBothPrivate, 400},
	{tether.CodeDamagedCode, tether.ErrDamagedCode, 400},
	{tether.CodeMalformed, tether.ErrMalformed, 400},
	{tether.CodeBadSignature, tether.ErrBadSignature, 401},
	{tether.CodeUnknownKey, tether.ErrUnknownKey, 401},
	{tether.CodeExpired, tether.ErrExpired, 410},
	{tether.CodeNotYetValid, tether.ErrNotYetValid, 400},
	{tether.CodeAlreadyUsed, tether.ErrAlreadyUsed, 409},
	{tether.CodeRevoked, tether.ErrRevoked, 410},
	{tether.CodeURLRefused, tether.ErrURLRefused, 403},
	{tether.CodeKeyMismatch, tether.ErrKeyMismatch, 401},
	{tether.CodeUnauthenticated, tether.ErrUnauthenticated, 401},
	{tether.CodeUnavailable, tether.ErrUnavailable, 503},
	{tether.CodeProtocol, tether.ErrProtocol, 400},
	{tether.CodeTooLarge, tether.ErrTooLarge, 413},
	{tether.CodeNotConnected, tether.ErrNotConnected, 409},
	{tether.CodePaused, tether.ErrPaused, 503},
	{tether.CodeGone, tether.ErrGone, 410},
	{tether.CodeClockSkew, tether.ErrClockSkew, 400},
	{tether.CodeCanceled, tether.ErrCanceled, 503},
	{tether.CodeDeadlineExceeded, tether.ErrDeadlineExceeded, 504},
}

type advSeen struct {
	op   tether.Op
	resp *tether.Response
}

type advHandler func(ctx context.Context, req *tether.Request, sw *advSwitch) (*tether.Response, error)

// advSwitch serves a real node and records its answers until an impostor
// takes over its address.
type advSwitch struct {
	mu     sync.Mutex
	real   tether.Handler
	imp    advHandler
	seen   []advSeen
	peerID string
	now    func() time.Time
}

func (s *advSwitch) Handle(ctx context.Context, req *tether.Request) (*tether.Response, error) {
	s.mu.Lock()
	imp := s.imp
	s.mu.Unlock()
	if imp != nil {
		return imp(ctx, req, s)
	}
	resp, err := s.real.Handle(ctx, req)
	if resp != nil {
		cp := *resp
		cp.Body = bytes.Clone(resp.Body)
		s.mu.Lock()
		s.seen = append(s.seen, advSeen{req.Op, &cp})
		s.mu.Unlock()
	}
	return resp, err
}

func (s *advSwitch) take(h advHandler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.imp = h
}

// find returns a copy of the newest recorded real answer that matches.
func (s *advSwitch) find(match func(advSeen) bool) *tether.Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.seen) - 1; i >= 0; i-- {
		if match(s.seen[i]) {
			cp := *s.seen[i].resp
			cp.Body = bytes.Clone(cp.Body)
			return &cp
		}
	}
	return nil
}

type advImpostor struct {
	name string
	h    advHandler
	warm bool // needs real answers recorded first
}

func advRefusal(code tether.Code) []byte {
	b, _ := json.Marshal(map[string]any{"refused": map[string]any{"code": code, "message": advHostile, "retry_ms": 3600000}})
	return b
}

func advIsGone(s advSeen) bool {
	return s.resp.Code == tether.CodeGone || bytes.Contains(s.resp.Body, []byte(`"gone"`))
}

// advImpostors answers at a peer's address: unsigned errors of every code,
// answers with a code but no valid token, refusals signed by another key,
// and replays of the real peer's own signed answers to other requests.
func advImpostors(replays ...string) []advImpostor {
	other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32))
	var out []advImpostor
	for _, c := range advCodes {
		code := c.code
		out = append(out, advImpostor{name: "unsigned " + string(code), h: func(context.Context, *tether.Request, *advSwitch) (*tether.Response, error) {
			return nil, &tether.Error{Code: code, Op: "impostor", Message: advHostile, RetryAfter: time.Hour}
		}})
	}
	out = append(out,
		advImpostor{name: "no answer at all", h: func(context.Context, *tether.Request, *advSwitch) (*tether.Response, error) {
			return nil, nil
		}},
		advImpostor{name: "code gone without a token", h: func(context.Context, *tether.Request, *advSwitch) (*tether.Response, error) {
			return &tether.Response{Body: advRefusal(tether.CodeGone), Code: tether.CodeGone, RetryAfter: time.Hour}, nil
		}},
		advImpostor{name: "code revoked with a garbage token", h: func(context.Context, *tether.Request, *advSwitch) (*tether.Response, error) {
			return &tether.Response{Auth: "eyJhbGciOiJFZERTQSIsInR5cCI6InRldGhlci1yZXErand0Iiwia2lkIjoieCJ9.e30.AAAA", Body: advRefusal(tether.CodeRevoked), Code: tether.CodeRevoked}, nil
		}},
		advImpostor{name: "code paused with the request's own token reflected", h: func(_ context.Context, req *tether.Request, _ *advSwitch) (*tether.Response, error) {
			return &tether.Response{Auth: req.Auth, Body: advRefusal(tether.CodePaused), Code: tether.CodePaused, RetryAfter: time.Hour}, nil
		}},
	)
	for _, code := range []tether.Code{tether.CodeGone, tether.CodeRevoked, tether.CodePaused, tether.CodeAlreadyUsed, tether.CodeKeyMismatch, tether.CodeClockSkew, tether.CodeNotConnected, tether.CodeExpired} {
		out = append(out, advImpostor{name: "signed by another key: refused " + string(code), h: func(_ context.Context, req *tether.Request, sw *advSwitch) (*tether.Response, error) {
			body := advRefusal(code)
			return &tether.Response{Auth: tether.SignResponse(other, sw.peerID, req.Op, req.Auth, body, sw.now()), Body: body, Code: code, RetryAfter: time.Hour}, nil
		}})
	}
	for _, code := range []tether.Code{tether.CodeRevoked, tether.CodeGone, tether.CodeExpired, tether.CodeAlreadyUsed} {
		out = append(out, advImpostor{name: "signed by another key, embedded in the token: refused " + string(code), h: func(_ context.Context, req *tether.Request, sw *advSwitch) (*tether.Response, error) {
			body := advRefusal(code)
			return &tether.Response{Auth: advSignEmbedded(other, sw.peerID, req, body, sw.now()), Body: body, Code: code}, nil
		}})
	}
	for _, r := range replays {
		var match func(advSeen, *tether.Request) bool
		switch r {
		case "same op":
			match = func(s advSeen, req *tether.Request) bool { return s.op == req.Op }
		case "other op":
			match = func(s advSeen, req *tether.Request) bool { return s.op != req.Op }
		case "gone":
			match = func(s advSeen, _ *tether.Request) bool { return advIsGone(s) }
		case "paused":
			match = func(s advSeen, _ *tether.Request) bool { return s.resp.Code == tether.CodePaused }
		default:
			panic(r)
		}
		out = append(out, advImpostor{name: "replay of the real peer's signed answer (" + r + ")", warm: true, h: func(_ context.Context, req *tether.Request, sw *advSwitch) (*tether.Response, error) {
			if resp := sw.find(func(s advSeen) bool { return match(s, req) }); resp != nil {
				return resp, nil
			}
			return nil, nil
		}})
	}
	return out
}

// advSignEmbedded signs an answer to req with priv, its public key embedded
// in the token as handshake answers carry it: anyone can make one.
func advSignEmbedded(priv ed25519.PrivateKey, instance string, req *tether.Request, body []byte, now time.Time) string {
	var c struct {
		Iss string `json:"iss"`
		Jti string `json:"jti"`
	}
	if parts := strings.Split(req.Auth, "."); len(parts) == 3 {
		raw, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(raw, &c)
	}
	pub := priv.Public().(ed25519.PublicKey)
	var nonce [16]byte
	_, _ = rand.Read(nonce[:])
	auth, err := wire.SignToken(wire.Key{ID: tether.KeyID(pub), Private: priv}, wire.Token{
		Instance: instance, Op: string(req.Op), Subject: c.Iss, Body: body, Now: now,
		Nonce: base64.RawURLEncoding.EncodeToString(nonce[:]), InReplyTo: c.Jti, Key: base64.RawURLEncoding.EncodeToString(pub),
	})
	if err != nil {
		panic(err)
	}
	return auth
}

func advSend(t testing.TB, p *peer, id, prefix string, n int) {
	t.Helper()
	for i := 1; i <= n; i++ {
		if _, err := p.Send(context.Background(), id, []byte(fmt.Sprintf("%s-%d", prefix, i))); err != nil {
			t.Fatalf("%s: Send: %v", p.name, err)
		}
	}
}

func advEventCount(t testing.TB, p *peer, id string) int {
	t.Helper()
	evs, err := p.Events(context.Background(), id, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return len(evs)
}

func advQueued(t testing.TB, p *peer, id string) int {
	t.Helper()
	msgs, err := p.store.ListOutbox(context.Background(), id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	return len(msgs)
}

// advOnly returns p's only connection, nil when it has none.
func advOnly(t testing.TB, p *peer) *tether.Connection {
	t.Helper()
	conns, _, err := p.List(context.Background(), tether.ListOptions{Limit: tether.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	switch len(conns) {
	case 0:
		return nil
	case 1:
		return conns[0]
	}
	t.Fatalf("%s holds %d connections, want at most 1", p.name, len(conns))
	return nil
}

// advWithin polls cond for at most d of real time.
func advWithin(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

func advOpFault(op tether.Op, f tethertest.Fault) tethertest.FaultFunc {
	return func(_, _ string, req *tether.Request) tethertest.Fault {
		if req.Op == op {
			return f
		}
		return tethertest.Fault{}
	}
}

// ---------------------------------------------------------------------------
// 1. No answer that is not signed by the pinned key changes a connection.

// advWarmUp records real signed answers of beta: acknowledgements, a
// "paused" refusal and a "gone" answer (for a second connection beta
// deleted without alpha being told).
func advWarmUp(t *testing.T, w *world, alpha, beta *peer, ain, bin *inbox, aid, bid string, sw *advSwitch) {
	t.Helper()
	ctx := context.Background()
	stop := running(t, alpha, beta)
	advSend(t, alpha, aid, "w", 2)
	bin.waitFor(t, 2)
	advSend(t, beta, bid, "w", 1)
	ain.waitFor(t, 1)
	if _, err := beta.Pause(ctx, bid); err != nil {
		t.Fatal(err)
	}
	// alpha learns of the pause from its notice and holds its messages,
	// so the paused refusal is asked for directly: a push signed by alpha.
	push := tether.SignRequest(alpha.Node, betaURL, tether.OpPush, bid, []byte(`{"messages":[{"seq":999,"payload":"cA=="}]}`))
	if _, err := sw.Handle(ctx, push); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a signed paused refusal was recorded", func() bool {
		return sw.find(func(s advSeen) bool { return s.resp.Code == tether.CodePaused }) != nil
	})
	if _, err := beta.Activate(ctx, bid); err != nil {
		t.Fatal(err)
	}
	advSend(t, alpha, aid, "p", 1)
	bin.waitFor(t, 3)
	ac2, code2 := alpha.initiate(t, invite(betaURL))
	bc2, err := beta.Accept(ctx, code2, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if alpha.Endpoint() == "" {
		if err := alpha.Sync(ctx); err != nil {
			t.Fatal(err)
		}
	}
	w.net.Partition("beta", alphaURL)
	if _, err := beta.Delete(ctx, bc2.ID); err != nil {
		t.Fatal(err)
	}
	_, _ = alpha.Send(ctx, ac2.ID, []byte("late"))
	eventually(t, "a signed gone answer was recorded", func() bool { return sw.find(advIsGone) != nil })
	w.net.Heal()
	eventually(t, "alpha's outbox drains", func() bool { return advQueued(t, alpha, aid) == 0 })
	eventually(t, "beta's outbox drains (its pause and activate notices)", func() bool { return advQueued(t, beta, bid) == 0 })
	stop()
}

// SECURITY.md 35, push (both public) and poll (alpha private) topologies.
func TestAdvImpostorAnswersChangeNoConnection(t *testing.T) {
	for _, topo := range []struct{ name, alphaEP string }{{"push", alphaURL}, {"poll", ""}} {
		for _, imp := range advImpostors("same op", "other op", "gone", "paused") {
			t.Run(topo.name+"/"+imp.name, func(t *testing.T) {
				t.Parallel()
				w := newWorld(t)
				ain, bin := newInbox(), newInbox()
				alpha := w.node("alpha", topo.alphaEP, realClock, withReceiver(ain), func(c *tether.Config) { c.PollWait = 300 * time.Millisecond })
				sw := &advSwitch{now: time.Now}
				beta := w.node("beta", "", realClock, withReceiver(bin), func(c *tether.Config) {
					c.Endpoint = betaURL
					c.PausedRetry = 5 * time.Millisecond
				})
				sw.real, sw.peerID = beta, beta.ID()
				w.t.Cleanup(w.net.Listen(betaURL, sw))
				aid, bid := connect(t, alpha, beta, betaURL)
				if imp.warm {
					advWarmUp(t, w, alpha, beta, ain, bin, aid, bid, sw)
				}
				events := advEventCount(t, alpha, aid)
				sw.take(imp.h)
				running(t, alpha, beta)
				advSend(t, alpha, aid, "x", 3)
				eventually(t, "alpha failed against the impostor", func() bool { return alpha.get(t, aid).Health.Failures >= 1 })
				check := func(when string) {
					t.Helper()
					c := alpha.get(t, aid)
					if c.Status != tether.StatusActive {
						t.Fatalf("%s: connection is %s, want active", when, c.Status)
					}
					if q := advQueued(t, alpha, aid); q != 3 {
						t.Fatalf("%s: %d messages queued, want 3", when, q)
					}
					if n := advEventCount(t, alpha, aid); n != events {
						evs, _ := alpha.Events(context.Background(), aid, 0, 0)
						t.Fatalf("%s: %d events appended: %+v", when, n-events, evs[events:])
					}
					if d := advDirty(c.Health.LastError); d != "" {
						t.Errorf("%s: Health.LastError %s: %s", when, d, advShort(c.Health.LastError))
					}
				}
				check("after the first failure")
				if !advWithin(5*time.Second, func() bool { return alpha.get(t, aid).Health.Failures >= 3 }) {
					t.Errorf("retries stalled after %d failures: the impostor's Retry-After (1h) was honoured beyond RetryMax (20ms); LastError %s",
						alpha.get(t, aid).Health.Failures, advShort(alpha.get(t, aid).Health.LastError))
				}
				check("after more failures")
			})
		}
	}
}

// SECURITY.md 35 for pending handshakes, through Node.Sync: an acceptor
// whose answer was lost asking a public initiator, and a private initiator
// asking its destination.
func TestAdvImpostorAnswersPendingHandshake(t *testing.T) {
	cases := []struct {
		name             string
		acceptorEP, dest string
		privateInitiator bool
		accepted         bool
	}{
		{"acceptor (public) asks public initiator", betaURL, betaURL, false, true},
		{"acceptor (private) asks public initiator", "", "", false, true},
		{"private initiator asks destination that accepted", betaURL, betaURL, true, true},
		{"private initiator asks destination before acceptance", betaURL, betaURL, true, false},
	}
	for _, tc := range cases {
		for _, imp := range advImpostors("same op", "other op") {
			t.Run(tc.name+"/"+imp.name, func(t *testing.T) {
				t.Parallel()
				ctx := context.Background()
				w := newWorld(t)
				sw := &advSwitch{now: w.clock.Now}
				var alpha, beta, target *peer
				var ac *tether.Connection
				var code, tid string
				if !tc.privateInitiator {
					alpha = w.node("alpha", "", func(c *tether.Config) { c.Endpoint = alphaURL })
					sw.real, sw.peerID = alpha, alpha.ID()
					w.t.Cleanup(w.net.Listen(alphaURL, sw))
					beta = w.node("beta", tc.acceptorEP)
					ac, code = alpha.initiate(t, invite(tc.dest))
					w.net.Faults(advOpFault(tether.OpAccept, tethertest.Fault{DropResponse: true}))
					if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeUnavailable {
						t.Fatalf("Accept with its answer lost: %v", err)
					}
					w.net.Faults(advOpFault(tether.OpAccept, tethertest.Fault{DropResponse: true}))
					_ = beta.Sync(ctx) // the initiator's real signed answer is recorded, not delivered
					w.net.Faults(nil)
					bc := advOnly(t, beta)
					if bc == nil || bc.Status != tether.StatusPending || alpha.get(t, ac.ID).Status != tether.StatusActive {
						t.Fatalf("setup: acceptor %v, initiator %s", bc, alpha.get(t, ac.ID).Status)
					}
					target, tid = beta, bc.ID
				} else {
					beta = w.node("beta", "", func(c *tether.Config) { c.Endpoint = betaURL })
					sw.real, sw.peerID = beta, beta.ID()
					w.t.Cleanup(w.net.Listen(betaURL, sw))
					alpha = w.node("alpha", "")
					ac, code = alpha.initiate(t, invite(tc.dest))
					if tc.accepted {
						if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
							t.Fatal(err)
						}
						w.net.Faults(advOpFault(tether.OpStatus, tethertest.Fault{DropResponse: true}))
						_ = alpha.Sync(ctx)
						w.net.Faults(nil)
					}
					target, tid = alpha, ac.ID
				}
				events := advEventCount(t, target, tid)
				sw.take(imp.h)
				for range 2 {
					_ = target.Sync(ctx)
				}
				c := target.get(t, tid)
				if c.Status != tether.StatusPending {
					t.Fatalf("%s's connection is %s after the impostor's answers, want pending (events: %v)", target.name, c.Status, eventTypes(t, target, tid))
				}
				if n := advEventCount(t, target, tid); n != events {
					t.Fatalf("%d events appended: %v", n-events, eventTypes(t, target, tid))
				}
				if d := advDirty(c.Health.LastError); d != "" {
					t.Fatalf("Health.LastError %s: %s", d, advShort(c.Health.LastError))
				}
				// Control: with the real peer back, the handshake completes.
				sw.take(nil)
				if tc.privateInitiator && !tc.accepted {
					if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
						t.Fatal(err)
					}
				}
				if err := target.Sync(ctx); err != nil {
					t.Fatalf("control Sync: %v", err)
				}
				checkPair(t, alpha, ac, beta, advOnly(t, beta))
			})
		}
	}
}

// ---------------------------------------------------------------------------
// 2. Handshake convergence.

type advTopo struct{ name, alphaEP, betaEP, dest string }

var advTopos = []advTopo{
	{"both public", alphaURL, betaURL, betaURL},
	{"public initiator, private acceptor", alphaURL, "", ""},
	{"private initiator, public acceptor", "", betaURL, betaURL},
}

// advAgree reports whether initiator and acceptor hold the same outcome:
// both Active and paired, or the initiator Deleted and the acceptor
// Deleted or absent.
func advAgree(t testing.TB, alpha *peer, aid string, beta *peer) (string, bool) {
	t.Helper()
	a := alpha.get(t, aid)
	b := advOnly(t, beta)
	bs := "absent"
	if b != nil {
		bs = string(b.Status)
	}
	desc := fmt.Sprintf("initiator %s, acceptor %s", a.Status, bs)
	switch {
	case a.Status == tether.StatusActive && b != nil && b.Status == tether.StatusActive:
		if a.RemoteConnection != b.ID || b.RemoteConnection != a.ID {
			return desc + " but not paired", false
		}
		return desc, true
	case a.Status == tether.StatusDeleted && (b == nil || b.Status == tether.StatusDeleted):
		return desc, true
	}
	return desc, false
}

// advRunToAgreement runs both nodes (the fake clock moving a second per
// millisecond, each Active side sending one message) for at most limit of
// real time, and reports whether they came to agree.
func advRunToAgreement(t testing.TB, w *world, alpha *peer, aid string, beta *peer, limit time.Duration) (string, bool) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, p := range []*peer{alpha, beta} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = p.Run(ctx) }()
	}
	defer func() { cancel(); wg.Wait() }()
	if alpha.get(t, aid).Status == tether.StatusActive {
		_, _ = alpha.Send(ctx, aid, []byte("probe"))
	}
	if b := advOnly(t, beta); b != nil && b.Status == tether.StatusActive {
		_, _ = beta.Send(ctx, b.ID, []byte("probe"))
	}
	var desc string
	ok := advWithin(limit, func() bool {
		var agreed bool
		desc, agreed = advAgree(t, alpha, aid, beta)
		if !agreed {
			w.clock.Advance(time.Second)
		}
		return agreed
	})
	return desc, ok
}

// SECURITY.md 40 / doc.go "Why both sides agree": faults at each step, the
// clock past the invitation's expiry plus ClockSkew, then Sync on both
// sides: both Active or both Deleted.
func TestAdvHandshakeConvergence(t *testing.T) {
	faults := []struct {
		name string
		f    tethertest.FaultFunc
	}{
		{"no fault", nil},
		{"accept request lost", advOpFault(tether.OpAccept, tethertest.Fault{Drop: true})},
		{"accept answer lost", advOpFault(tether.OpAccept, tethertest.Fault{DropResponse: true})},
		{"status requests lost", advOpFault(tether.OpStatus, tethertest.Fault{Drop: true})},
		{"status answers lost", advOpFault(tether.OpStatus, tethertest.Fault{DropResponse: true})},
		{"confirmations lost", func(_, _ string, req *tether.Request) tethertest.Fault {
			return tethertest.Fault{Drop: req.Op == tether.OpStatus && bytes.Contains(req.Body, []byte("confirmed"))}
		}},
		{"close requests lost", advOpFault(tether.OpClose, tethertest.Fault{Drop: true})},
		{"every answer lost", func(string, string, *tether.Request) tethertest.Fault { return tethertest.Fault{DropResponse: true} }},
		{"every request duplicated", func(string, string, *tether.Request) tethertest.Fault { return tethertest.Fault{Duplicate: true} }},
		{"stale copies delivered late", func(string, string, *tether.Request) tethertest.Fault { return tethertest.Fault{Late: time.Minute} }},
		{"acceptor cut off", func(from, _ string, _ *tether.Request) tethertest.Fault {
			return tethertest.Fault{Drop: from == "beta"}
		}},
		{"answers to the acceptor lost", func(from, _ string, _ *tether.Request) tethertest.Fault {
			return tethertest.Fault{DropResponse: from == "beta"}
		}},
		{"answers to the initiator lost", func(from, _ string, _ *tether.Request) tethertest.Fault {
			return tethertest.Fault{DropResponse: from == "alpha"}
		}},
		{"initiator cut off", func(from, _ string, _ *tether.Request) tethertest.Fault {
			return tethertest.Fault{Drop: from == "alpha"}
		}},
	}
	for _, topo := range advTopos {
		for _, fault := range faults {
			for _, healAfter := range []string{"accept", "expiry"} {
				for _, during := range []string{"both sync", "initiator syncs", "acceptor syncs", "neither syncs"} {
					name := fmt.Sprintf("%s/%s/healed after %s/%s at expiry", topo.name, fault.name, healAfter, during)
					t.Run(name, func(t *testing.T) {
						t.Parallel()
						ctx := context.Background()
						w := newWorld(t)
						t.Cleanup(w.net.Close)
						alpha, beta := w.node("alpha", topo.alphaEP), w.node("beta", topo.betaEP)
						w.net.Faults(fault.f)
						ac, code := alpha.initiate(t, invite(topo.dest))
						_, _ = beta.Accept(ctx, code, tether.AcceptOptions{})
						_ = alpha.Sync(ctx)
						_ = beta.Sync(ctx)
						if healAfter == "accept" {
							w.net.Faults(nil)
						}
						w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew + time.Minute)
						if during == "both sync" || during == "initiator syncs" {
							_ = alpha.Sync(ctx)
						}
						if during == "both sync" || during == "acceptor syncs" {
							_ = beta.Sync(ctx)
						}
						w.net.Faults(nil)
						for range 2 {
							_ = beta.Sync(ctx)
							_ = alpha.Sync(ctx)
						}
						if desc, ok := advAgree(t, alpha, ac.ID, beta); !ok {
							evA := eventTypes(t, alpha, ac.ID)
							var evB []tether.EventType
							if b := advOnly(t, beta); b != nil {
								evB = eventTypes(t, beta, b.ID)
							}
							after, fixed := advRunToAgreement(t, w, alpha, ac.ID, beta, 2*time.Second)
							t.Errorf("after expiry and Sync on both sides: %s (initiator events %v, acceptor events %v); running both nodes with a message queued on each Active side then gives %q (agree: %v)",
								desc, evA, evB, after, fixed)
						}
					})
				}
			}
		}
	}
}

// Revoking after the acceptance, in each topology and with the news lost.
func TestAdvRevokeAfterAcceptance(t *testing.T) {
	for _, topo := range advTopos {
		for _, fault := range []struct {
			name string
			f    tethertest.FaultFunc
		}{
			{"no fault", nil},
			{"accept request lost", advOpFault(tether.OpAccept, tethertest.Fault{Drop: true})},
			{"accept answer lost", advOpFault(tether.OpAccept, tethertest.Fault{DropResponse: true})},
			{"confirmation lost", func(_, _ string, req *tether.Request) tethertest.Fault {
				return tethertest.Fault{Drop: req.Op == tether.OpStatus && bytes.Contains(req.Body, []byte("confirmed"))}
			}},
			{"withdrawal lost", advOpFault(tether.OpClose, tethertest.Fault{Drop: true})},
		} {
			t.Run(topo.name+"/"+fault.name, func(t *testing.T) {
				ctx := context.Background()
				w := newWorld(t)
				alpha, beta := w.node("alpha", topo.alphaEP), w.node("beta", topo.betaEP)
				ac, code := alpha.initiate(t, invite(topo.dest))
				w.net.Faults(fault.f)
				_, _ = beta.Accept(ctx, code, tether.AcceptOptions{})
				_ = alpha.Sync(ctx)
				_, rerr := alpha.RevokeInvitation(ctx, ac.ID)
				if s := alpha.get(t, ac.ID).Status; rerr == nil && s != tether.StatusDeleted || rerr != nil && s == tether.StatusDeleted {
					t.Fatalf("RevokeInvitation: %v, initiator %s", rerr, s)
				}
				_ = beta.Sync(ctx)
				_ = alpha.Sync(ctx)
				w.net.Faults(nil)
				w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew + time.Minute)
				for range 2 {
					_ = beta.Sync(ctx)
					_ = alpha.Sync(ctx)
				}
				if desc, ok := advAgree(t, alpha, ac.ID, beta); !ok {
					after, fixed := advRunToAgreement(t, w, alpha, ac.ID, beta, 2*time.Second)
					t.Errorf("revoke (err %v) then expiry and Sync: %s; running both nodes then gives %q (agree: %v)", rerr, desc, after, fixed)
				}
			})
		}
	}
}

// The initiator offline (not listening, not syncing) until just before or
// after the expiry plus ClockSkew; the sides sync in either order.
func TestAdvInitiatorOfflinePastExpiry(t *testing.T) {
	for _, topo := range advTopos {
		for _, late := range []time.Duration{tether.DefaultInvitationTTL + tether.ClockSkew - time.Minute, tether.DefaultInvitationTTL + tether.ClockSkew + time.Minute} {
			for _, initiatorFirst := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/back after %s/initiator syncs first %v", topo.name, late, initiatorFirst), func(t *testing.T) {
					ctx := context.Background()
					w := newWorld(t)
					alpha, beta := w.node("alpha", topo.alphaEP), w.node("beta", topo.betaEP)
					ac, code := alpha.initiate(t, invite(topo.dest))
					w.net.Faults(func(from, endpoint string, _ *tether.Request) tethertest.Fault {
						return tethertest.Fault{Drop: from == "alpha" || endpoint == alphaURL}
					})
					_, aerr := beta.Accept(ctx, code, tether.AcceptOptions{})
					_ = beta.Sync(ctx)
					w.clock.Advance(late)
					w.net.Faults(nil)
					for range 2 {
						if initiatorFirst {
							_ = alpha.Sync(ctx)
							_ = beta.Sync(ctx)
						} else {
							_ = beta.Sync(ctx)
							_ = alpha.Sync(ctx)
						}
					}
					beforeDeadline := late < tether.DefaultInvitationTTL+tether.ClockSkew
					if b := advOnly(t, beta); beforeDeadline && b != nil && b.Status == tether.StatusPending && alpha.get(t, ac.ID).Status == tether.StatusPending {
						// Still inside the acceptance window, and the
						// initiator never saw the acceptance: the docs say
						// Accept may be called again with the same code.
						if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
							t.Errorf("Accept again inside the window: %v", err)
						}
						_ = alpha.Sync(ctx)
					}
					if !beforeDeadline || alpha.get(t, ac.ID).Status == tether.StatusPending {
						w.clock.Advance(2 * tether.ClockSkew)
						_ = beta.Sync(ctx)
						_ = alpha.Sync(ctx)
					}
					desc, ok := advAgree(t, alpha, ac.ID, beta)
					if !ok {
						after, fixed := advRunToAgreement(t, w, alpha, ac.ID, beta, 2*time.Second)
						t.Fatalf("Accept: %v; after the initiator came back: %s; running both nodes then gives %q (agree: %v)", aerr, desc, after, fixed)
					}
					if beforeDeadline && topo.alphaEP == "" && alpha.get(t, ac.ID).Status != tether.StatusActive {
						t.Fatalf("an acceptance made in time did not complete: %s", desc)
					}
				})
			}
		}
	}
}

// SECURITY.md 40 with the initiator's clock off (the existing test skews
// the acceptor's).
func TestAdvClockSkewInitiator(t *testing.T) {
	within := tether.ClockSkew - 30*time.Second
	beyond := tether.ClockSkew + 30*time.Second
	for _, topo := range advTopos {
		for _, off := range []time.Duration{within, -within, beyond, -beyond} {
			t.Run(fmt.Sprintf("%s/initiator off by %s", topo.name, off), func(t *testing.T) {
				ctx := context.Background()
				w := newWorld(t)
				alpha := w.node("alpha", topo.alphaEP, func(c *tether.Config) { c.Clock = skewed{w.clock, off} })
				beta := w.node("beta", topo.betaEP)
				ac, code := alpha.initiate(t, invite(topo.dest))
				_, aerr := beta.Accept(ctx, code, tether.AcceptOptions{})
				var serr error
				if aerr == nil && topo.alphaEP == "" {
					serr = alpha.Sync(ctx)
				}
				_ = beta.Sync(ctx)
				if off == within || off == -within {
					if aerr != nil || serr != nil {
						t.Fatalf("clocks %s apart: Accept %v, Sync %v", off, aerr, serr)
					}
					checkPair(t, alpha, ac, beta, advOnly(t, beta))
					return
				}
				if !errors.Is(aerr, tether.ErrClockSkew) && !errors.Is(serr, tether.ErrClockSkew) {
					t.Errorf("clocks %s apart: Accept %v, initiator Sync %v; want a clock_skew error", off, aerr, serr)
				}
				w.clock.Advance(tether.DefaultInvitationTTL + 2*tether.ClockSkew + time.Minute)
				for range 2 {
					_ = alpha.Sync(ctx)
					_ = beta.Sync(ctx)
				}
				if desc, ok := advAgree(t, alpha, ac.ID, beta); !ok {
					t.Fatalf("clocks %s apart, after expiry: %s", off, desc)
				}
			})
		}
	}
}

// ---------------------------------------------------------------------------
// 3. Destination-bound invitations.

// advSignAccept signs an accept request as p, embedding p's key the way an
// acceptor presents itself, with whatever body the attacker chooses.
func advSignAccept(t testing.TB, p *peer, endpoint, sub string, body []byte, now time.Time) *tether.Request {
	t.Helper()
	priv := p.privateKey(t)
	pub := priv.Public().(ed25519.PublicKey)
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	auth, err := wire.SignToken(wire.Key{ID: tether.KeyID(pub), Private: priv}, wire.Token{
		Instance: p.ID(), Audience: endpoint, Op: string(tether.OpAccept), Subject: sub, Body: body,
		Now: now, Nonce: base64.RawURLEncoding.EncodeToString(nonce[:]), Key: base64.RawURLEncoding.EncodeToString(pub),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &tether.Request{Op: tether.OpAccept, Auth: auth, Body: body}
}

func advAcceptBody(t testing.TB, p *peer, code, endpoint string, inv *tether.Invitation) []byte {
	t.Helper()
	body, err := json.Marshal(map[string]string{
		"code": code, "instance": p.ID(), "key": base64.RawURLEncoding.EncodeToString(p.privateKey(t).Public().(ed25519.PublicKey)),
		"endpoint": endpoint, "connection": tether.AcceptorID(inv), "name": "Evil",
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

func TestAdvDestinationBoundInvitation(t *testing.T) {
	ctx := context.Background()
	for _, initiatorEP := range []string{alphaURL, ""} {
		for _, other := range []struct {
			name, ep string
			spoof    bool
		}{
			{"other public instance", gammaURL, false},
			{"other private instance", "", false},
			{"instance configured with the destination's URL, not serving it", betaURL, true},
		} {
			t.Run("initiator "+orPrivateName(initiatorEP)+"/"+other.name, func(t *testing.T) {
				w := newWorld(t)
				alpha := w.node("alpha", initiatorEP)
				beta := w.node("beta", betaURL)
				var eve *peer
				if other.spoof {
					eve = w.node("eve", "", func(c *tether.Config) { c.Endpoint = betaURL })
				} else {
					eve = w.node("eve", other.ep)
				}
				ac, code := alpha.initiate(t, invite(betaURL))
				_, err := eve.Accept(ctx, code, tether.AcceptOptions{})
				// An instance that claims the destination's URL passes its
				// own check; with a private initiator its Accept can only
				// record a Pending acceptance that nobody completes.
				if err == nil && !(other.spoof && initiatorEP == "") {
					t.Errorf("%s accepted an invitation addressed to %s", eve.name, betaURL)
				}
				if !other.spoof {
					if initiatorEP == "" && other.ep == "" {
						wantCode(t, err, tether.CodeBothPrivate)
					} else {
						wantCode(t, err, tether.CodeInvalid)
					}
					if n := eve.count(t); n != 0 {
						t.Errorf("%s stored %d connections", eve.name, n)
					}
				}
				_ = alpha.Sync(ctx)
				_ = eve.Sync(ctx)
				if a := alpha.get(t, ac.ID); a.Status != tether.StatusPending || a.RemoteInstance != "" {
					t.Fatalf("initiator changed: %s, remote instance %q", a.Status, a.RemoteInstance)
				}
				if n := beta.count(t); n != 0 {
					t.Fatalf("the destination holds %d connections it never accepted", n)
				}
				if c := advOnly(t, eve); c != nil && c.Status == tether.StatusActive {
					t.Fatalf("%s holds an active connection", eve.name)
				}
				bc, err := beta.Accept(ctx, code, tether.AcceptOptions{})
				if err != nil {
					t.Fatalf("the real destination cannot accept afterwards: %v", err)
				}
				if initiatorEP == "" {
					if err := alpha.Sync(ctx); err != nil {
						t.Fatal(err)
					}
				}
				checkPair(t, alpha, ac, beta, bc)
			})
		}
	}

	// An attacker that skips its own check and crafts the accept request,
	// its key embedded as an acceptor does, claiming the destination's URL.
	t.Run("crafted accept control: well formed crafted requests are accepted", func(t *testing.T) {
		w := newWorld(t)
		alpha, eve := w.node("alpha", alphaURL), w.node("eve", "")
		ac, code := alpha.initiate(t, invite(""))
		inv, err := eve.Preview(code)
		if err != nil {
			t.Fatal(err)
		}
		req := advSignAccept(t, eve, alphaURL, inv.Connection, advAcceptBody(t, eve, code, "", inv), w.clock.Now())
		resp, err := w.net.Transport("eve").Call(ctx, alphaURL, req)
		if err != nil || resp.Code != "" {
			t.Fatalf("a crafted accept without destination was refused (%v, %q): the crafted tests below prove nothing", err, resp.Code)
		}
		if s := alpha.get(t, ac.ID).Status; s != tether.StatusActive {
			t.Fatalf("initiator is %s", s)
		}
	})
	for _, attackerEP := range []string{gammaURL, ""} {
		for _, dest := range []string{"destination online", "destination offline", "destination accepted, its request lost"} {
			for _, helper := range []string{"key embedded", "SignRequest"} {
				t.Run(fmt.Sprintf("crafted accept/attacker %s/%s/%s", orPrivateName(attackerEP), dest, helper), func(t *testing.T) {
					w := newWorld(t)
					alpha := w.node("alpha", alphaURL)
					bsw := &advSwitch{now: w.clock.Now}
					beta := w.node("beta", "", func(c *tether.Config) { c.Endpoint = betaURL })
					bsw.real = beta
					w.t.Cleanup(w.net.Listen(betaURL, bsw))
					eve := w.node("eve", attackerEP)
					ac, code := alpha.initiate(t, invite(betaURL))
					switch dest {
					case "destination offline":
						bsw.take(func(context.Context, *tether.Request, *advSwitch) (*tether.Response, error) {
							return nil, &tether.Error{Code: tether.CodeUnavailable, Message: "connection refused"}
						})
					case "destination accepted, its request lost":
						w.net.Faults(func(from string, _ string, req *tether.Request) tethertest.Fault {
							return tethertest.Fault{Drop: from == "beta" && req.Op == tether.OpAccept}
						})
						if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeUnavailable {
							t.Fatalf("Accept with its request lost: %v", err)
						}
						w.net.Faults(nil)
					}
					inv, err := eve.Preview(code)
					if err != nil {
						t.Fatal(err)
					}
					body := advAcceptBody(t, eve, code, betaURL, inv)
					req := advSignAccept(t, eve, alphaURL, inv.Connection, body, w.clock.Now())
					if helper == "SignRequest" {
						req = tether.SignRequest(eve.Node, alphaURL, tether.OpAccept, inv.Connection, body)
					}
					resp, err := w.net.Transport("eve").Call(ctx, alphaURL, req)
					if err == nil && resp.Code == "" {
						t.Errorf("the initiator accepted an acceptance crafted by %s claiming %s", eve.name, betaURL)
					}
					a := alpha.get(t, ac.ID)
					if a.Status != tether.StatusPending || a.RemoteInstance != "" {
						t.Fatalf("initiator changed: %s, remote instance %q (eve is %q)", a.Status, a.RemoteInstance, eve.ID())
					}
					if dest != "destination accepted, its request lost" {
						if n := beta.count(t); n != 0 {
							t.Fatalf("the destination holds %d connections", n)
						}
					}
					bsw.take(nil)
					bc, err := beta.Accept(ctx, code, tether.AcceptOptions{})
					if err != nil {
						t.Fatalf("the real destination cannot accept afterwards: %v", err)
					}
					checkPair(t, alpha, ac, beta, bc)
				})
			}
		}
	}
}

// ---------------------------------------------------------------------------
// 4. Invisible and direction-changing characters.

var advInvisible = []struct{ name, s string }{
	{"LRE U+202A", "Sup\u202Aport"},
	{"RLE U+202B", "Sup\u202Bport"},
	{"PDF U+202C", "Sup\u202Cport"},
	{"LRO U+202D", "Sup\u202Dport"},
	{"RLO U+202E", "Sup\u202Eport"},
	{"LRI U+2066", "Sup\u2066port"},
	{"RLI U+2067", "Sup\u2067port"},
	{"FSI U+2068", "Sup\u2068port"},
	{"PDI U+2069", "Sup\u2069port"},
	{"LRM U+200E", "Sup\u200Eport"},
	{"RLM U+200F", "Sup\u200Fport"},
	{"ALM U+061C", "Sup\u061Cport"},
	{"ZWSP U+200B", "Sup\u200Bport"},
	{"ZWSP at the end", "Support\u200B"},
	{"ZWSP at the start", "\u200BSupport"},
	{"ZWNJ between Latin letters", "Sup\u200Cport"},
	{"ZWJ between Latin letters", "Sup\u200Dport"},
	{"ZWJ after an emoji before a letter", "Sup \U0001F469\u200Dport"},
	{"ZWNJ between Arabic and Latin", "\u0645\u200Cport"},
	{"word joiner U+2060", "Sup\u2060port"},
	{"BOM U+FEFF", "Sup\uFEFFport"},
	{"soft hyphen U+00AD", "Sup\u00ADport"},
	{"CGJ U+034F", "Sup\u034Fport"},
	{"Mongolian vowel separator U+180E", "Sup\u180Eport"},
	{"function application U+2061", "Sup\u2061port"},
	{"invisible times U+2062", "Sup\u2062port"},
	{"invisible separator U+2063", "Sup\u2063port"},
	{"invisible plus U+2064", "Sup\u2064port"},
	{"Hangul choseong filler U+115F", "Sup\u115Fport"},
	{"Hangul jungseong filler U+1160", "Sup\u1160port"},
	{"Hangul filler U+3164", "Sup\u3164port"},
	{"halfwidth Hangul filler U+FFA0", "Sup\uFFA0port"},
	{"Khmer inherent vowel U+17B4", "Sup\u17B4port"},
	{"inhibit symmetric swapping U+206A", "Sup\u206Aport"},
	{"nominal digit shapes U+206F", "Sup\u206Fport"},
	{"interlinear annotation U+FFF9", "Sup\uFFF9port"},
	{"musical begin beam U+1D173", "Sup\U0001D173port"},
	{"shorthand format overlap U+1BCA0", "Sup\U0001BCA0port"},
	{"Egyptian format U+13430", "Sup\U00013430port"},
	{"language tag U+E0001", "Sup\U000E0001port"},
	{"tag letter outside a flag", "Sup\U000E0041port"},
	{"cancel tag alone", "Sup\U000E007Fport"},
	{"tags after a white flag", "Sup \U0001F3F3\U000E0067\U000E0062\U000E007F"},
	{"variation selector after a space", "Sup \uFE0Fport"},
	{"variation selector at the start", "\uFE00Support"},
	{"line separator U+2028", "Sup\u2028port"},
	{"paragraph separator U+2029", "Sup\u2029port"},
	{"NEL U+0085", "Sup\u0085port"},
	{"NUL", "Sup\x00port"},
	{"ESC", "Sup\x1b[31mport"},
	{"invalid UTF-8", "Sup\xffport"},
}

// advWantInvalid checks err is CodeInvalid and names one of fields.
func advWantInvalid(t testing.TB, what string, err error, wantCode tether.Code, fields ...string) {
	t.Helper()
	if tether.ErrorCode(err) != wantCode {
		t.Errorf("%s: error %v (code %q), want code %q", what, err, tether.ErrorCode(err), wantCode)
		return
	}
	for _, f := range fields {
		if regexp.MustCompile(`\b` + regexp.QuoteMeta(f) + `\b`).MatchString(err.Error()) {
			return
		}
	}
	t.Errorf("%s: error %q names none of the fields %q", what, err, fields)
}

func TestAdvInvisibleCharactersRefused(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	_, tmpl := alpha.initiate(t, invite(""))
	hdr, claims := splitCode(t, tmpl)
	priv := alpha.privateKey(t)
	for _, bad := range advInvisible {
		t.Run(bad.name, func(t *testing.T) {
			t.Run("Initiate", func(t *testing.T) {
				for _, f := range []struct {
					field string
					set   func(*tether.InitiateRequest)
				}{
					{"Name", func(r *tether.InitiateRequest) { r.Name = bad.s }},
					{"Description", func(r *tether.InitiateRequest) { r.Description = bad.s }},
					{"LocalName", func(r *tether.InitiateRequest) { r.LocalName = bad.s }},
					{"RemoteName", func(r *tether.InitiateRequest) { r.RemoteName = bad.s }},
				} {
					before := alpha.count(t)
					req := invite("")
					f.set(&req)
					_, code, err := alpha.Initiate(ctx, req)
					advWantInvalid(t, "Initiate with "+f.field, err, tether.CodeInvalid, f.field)
					if code != "" || alpha.count(t) != before {
						t.Errorf("Initiate with a bad %s issued a code or stored a connection", f.field)
					}
				}
			})
			t.Run("Update", func(t *testing.T) {
				before := alpha.get(t, aid)
				s := bad.s
				_, err := alpha.Update(ctx, aid, tether.Update{Name: &s})
				advWantInvalid(t, "Update of Name", err, tether.CodeInvalid, "Name")
				_, err = alpha.Update(ctx, aid, tether.Update{Description: &s})
				advWantInvalid(t, "Update of Description", err, tether.CodeInvalid, "Description")
				if after := alpha.get(t, aid); after.Name != before.Name || after.Description != before.Description || after.Version != before.Version {
					t.Errorf("Update changed the connection: %q/%q", after.Name, after.Description)
				}
			})
			t.Run("Accept with LocalName", func(t *testing.T) {
				_, code := alpha.initiate(t, invite(""))
				before, sent := beta.count(t), w.net.Sent("beta")
				_, err := beta.Accept(ctx, code, tether.AcceptOptions{LocalName: bad.s})
				advWantInvalid(t, "Accept with LocalName", err, tether.CodeInvalid, "LocalName")
				if beta.count(t) != before || w.net.Sent("beta") != sent {
					t.Errorf("Accept with a bad LocalName stored a connection or made a request")
				}
			})
			t.Run("Preview", func(t *testing.T) {
				if !utf8.ValidString(bad.s) {
					return // JSON cannot carry invalid UTF-8: it arrives as U+FFFD, a visible character
				}
				for _, f := range []struct {
					claim  string
					fields []string
				}{
					{"name", []string{"name", "Name"}},
					{"desc", []string{"desc", "Description", "description"}},
					{"isn", []string{"isn", "InitiatorName"}},
					{"asn", []string{"asn", "AcceptorName"}},
				} {
					c := make(map[string]any, len(claims))
					for k, v := range claims {
						c[k] = v
					}
					c[f.claim] = bad.s
					code := signCode(t, priv, hdr, c)
					inv, err := beta.Preview(code)
					if inv != nil {
						t.Errorf("Preview showed claim %s = %q", f.claim, bad.s)
						continue
					}
					// A bad claim makes the code malformed (its documented
					// code); the message names the claim.
					advWantInvalid(t, "Preview with claim "+f.claim, err, tether.CodeMalformed, f.fields...)
					sent := w.net.Sent("beta")
					if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); err == nil || w.net.Sent("beta") != sent {
						t.Errorf("Accept of a code with a bad %s: %v, requests made: %d", f.claim, err, w.net.Sent("beta")-sent)
					}
				}
			})
		})
	}
	t.Run("allowed sequences stay allowed", func(t *testing.T) {
		for _, ok := range []string{
			"\U0001F469\u200D\U0001F4BB Support",                                     // woman technologist
			"\U0001F3F3\uFE0F\u200D\U0001F308 Team",                                  // rainbow flag
			"\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F", // flag of England
			"\u0645\u06CC\u200C\u062E\u0648\u0627\u0647\u0645",                       // Persian with ZWNJ
			"\u0DC1\u0DCA\u200D\u0DBB\u0DD3",                                         // Sinhala Sri
		} {
			req := invite("")
			req.Name, req.LocalName = ok, ok
			if _, _, err := alpha.Initiate(ctx, req); err != nil {
				t.Errorf("Initiate with %+q refused: %v", ok, err)
			}
		}
	})
}

// ---------------------------------------------------------------------------
// 5. Errors: canceled contexts, Op, sentinels.

type advCall struct {
	op   string // the Op the error must carry; a trailing "*" means a prefix
	call func(ctx context.Context) error
}

func advHostCalls(t *testing.T, alpha, beta *peer, aid, pendingID, code string) []advCall {
	s := "New name"
	return []advCall{
		{"tether: initiate", func(ctx context.Context) error { _, _, err := alpha.Initiate(ctx, invite("")); return err }},
		{"tether: accept", func(ctx context.Context) error { _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); return err }},
		{"tether: sync", func(ctx context.Context) error { return alpha.Sync(ctx) }},
		{"tether: get", func(ctx context.Context) error { _, err := alpha.Get(ctx, aid); return err }},
		{"tether: list", func(ctx context.Context) error { _, _, err := alpha.List(ctx, tether.ListOptions{}); return err }},
		{"tether: events", func(ctx context.Context) error { _, err := alpha.Events(ctx, aid, 0, 0); return err }},
		{"tether: send", func(ctx context.Context) error { _, err := alpha.Send(ctx, aid, []byte("x")); return err }},
		{"tether: update", func(ctx context.Context) error { _, err := alpha.Update(ctx, aid, tether.Update{Name: &s}); return err }},
		{"tether: pause", func(ctx context.Context) error { _, err := alpha.Pause(ctx, aid); return err }},
		{"tether: activate", func(ctx context.Context) error { _, err := alpha.Activate(ctx, aid); return err }},
		{"tether: delete", func(ctx context.Context) error { _, err := alpha.Delete(ctx, aid); return err }},
		{"tether: revoke invitation", func(ctx context.Context) error { _, err := alpha.RevokeInvitation(ctx, pendingID); return err }},
		{"tether: transition", func(ctx context.Context) error {
			_, err := alpha.Transition(ctx, aid, tether.ActionPause, "x")
			return err
		}},
		{"tether: rotate key", func(ctx context.Context) error { return alpha.RotateKey(ctx, 0) }},
	}
}

func TestAdvContextEnded(t *testing.T) {
	for _, end := range []struct {
		name     string
		ctx      func() context.Context
		code     tether.Code
		sentinel error
		cause    error
	}{
		{"canceled", func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, tether.CodeCanceled, tether.ErrCanceled, context.Canceled},
		{"deadline passed", func() context.Context {
			ctx, cancel := context.WithDeadline(context.Background(), time.Unix(1, 0))
			t.Cleanup(cancel)
			return ctx
		}, tether.CodeDeadlineExceeded, tether.ErrDeadlineExceeded, context.DeadlineExceeded},
	} {
		t.Run(end.name, func(t *testing.T) {
			w := newWorld(t)
			alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
			aid, _ := connect(t, alpha, beta, "")
			pending, _ := alpha.initiate(t, invite(""))
			_, code := alpha.initiate(t, invite(""))
			body, _ := json.Marshal(map[string]any{"messages": []map[string]any{{"seq": 1, "payload": "eA=="}}})
			calls := advHostCalls(t, alpha, beta, aid, pending.ID, code)
			calls = append(calls,
				advCall{"tether: run", func(ctx context.Context) error { return alpha.Run(ctx) }},
				advCall{"tether: open", func(ctx context.Context) error {
					_, err := tether.Open(ctx, tether.Config{Store: memstore.New()})
					return err
				}},
				advCall{"tether: handle*", func(ctx context.Context) error {
					resp, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPush, aid, body))
					if err == nil && resp.Code != "" {
						return &tether.Error{Code: resp.Code, Op: "(signed refusal)"}
					}
					return err
				}},
			)
			before, beforeB := alpha.count(t), beta.count(t)
			for _, c := range calls {
				err := c.call(end.ctx())
				var e *tether.Error
				switch {
				case err == nil:
					t.Errorf("%s with a context %s: no error", c.op, end.name)
					continue
				case tether.ErrorCode(err) != end.code || !errors.Is(err, end.sentinel) || !errors.Is(err, end.cause):
					t.Errorf("%s with a context %s: %v (code %q, Is(%v) %v); want code %q matching both", c.op, end.name, err,
						tether.ErrorCode(err), end.cause, errors.Is(err, end.cause), end.code)
					continue
				case !errors.As(err, &e):
					t.Errorf("%s: error is %T, want *tether.Error", c.op, err)
					continue
				}
				if want, prefix := strings.CutSuffix(c.op, "*"); prefix && !strings.HasPrefix(e.Op, want) || !prefix && e.Op != c.op {
					t.Errorf("%s: error Op %q", c.op, e.Op)
				}
			}
			if a := alpha.get(t, aid); a.Status != tether.StatusActive || alpha.count(t) != before || beta.count(t) != beforeB {
				t.Errorf("calls with an ended context changed state: %s, %d/%d connections", a.Status, alpha.count(t), beta.count(t))
			}
			if p := alpha.get(t, pending.ID); p.Status != tether.StatusPending {
				t.Errorf("pending invitation is %s", p.Status)
			}
		})
	}
}

// advFailStore fails the methods host calls use, when told to.
type advFailStore struct {
	*memstore.Store
	fail  atomic.Bool
	plain bool // a non-*tether.Error
}

func (s *advFailStore) err(method string) error {
	if !s.fail.Load() {
		return nil
	}
	if s.plain {
		return errors.New("failstore: " + method + " broke")
	}
	return &tether.Error{Code: tether.CodeUnavailable, Op: "failstore: " + method, Message: "the store is down"}
}

func (s *advFailStore) LoadInstance(ctx context.Context) (*tether.Instance, error) {
	if err := s.err("load instance"); err != nil {
		return nil, err
	}
	return s.Store.LoadInstance(ctx)
}

func (s *advFailStore) SaveInstance(ctx context.Context, inst *tether.Instance) error {
	if err := s.err("save instance"); err != nil {
		return err
	}
	return s.Store.SaveInstance(ctx, inst)
}

func (s *advFailStore) CreateConnection(ctx context.Context, c *tether.Connection, evs ...tether.Event) error {
	if err := s.err("create connection"); err != nil {
		return err
	}
	return s.Store.CreateConnection(ctx, c, evs...)
}

func (s *advFailStore) UpdateConnection(ctx context.Context, c *tether.Connection, evs ...tether.Event) error {
	if err := s.err("update connection"); err != nil {
		return err
	}
	return s.Store.UpdateConnection(ctx, c, evs...)
}

func (s *advFailStore) ConsumeInvitation(ctx context.Context, key string, exp time.Time, c *tether.Connection, evs ...tether.Event) error {
	if err := s.err("consume invitation"); err != nil {
		return err
	}
	return s.Store.ConsumeInvitation(ctx, key, exp, c, evs...)
}

func (s *advFailStore) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	if err := s.err("get connection"); err != nil {
		return nil, err
	}
	return s.Store.GetConnection(ctx, id)
}

func (s *advFailStore) ListConnections(ctx context.Context, o tether.ListOptions) ([]*tether.Connection, string, error) {
	if err := s.err("list connections"); err != nil {
		return nil, "", err
	}
	return s.Store.ListConnections(ctx, o)
}

func (s *advFailStore) ListEvents(ctx context.Context, id string, after int64, limit int) ([]tether.Event, error) {
	if err := s.err("list events"); err != nil {
		return nil, err
	}
	return s.Store.ListEvents(ctx, id, after, limit)
}

func (s *advFailStore) AppendOutbox(ctx context.Context, id string, p []byte, created time.Time) (int64, error) {
	if err := s.err("append outbox"); err != nil {
		return 0, err
	}
	return s.Store.AppendOutbox(ctx, id, p, created)
}

// Op names the operation the host called, never a store method.
func TestAdvErrorOpNamesHostOperation(t *testing.T) {
	for _, plain := range []bool{false, true} {
		t.Run(fmt.Sprintf("store fails, plain error %v", plain), func(t *testing.T) {
			w := newWorld(t)
			as := &advFailStore{Store: memstore.New(), plain: plain}
			bs := &advFailStore{Store: memstore.New(), plain: plain}
			alpha := w.node("alpha", alphaURL, func(c *tether.Config) { c.Store = as })
			beta := w.node("beta", "", func(c *tether.Config) { c.Store = bs })
			aid, _ := connect(t, alpha, beta, "")
			pending, _ := alpha.initiate(t, invite(""))
			_, code := alpha.initiate(t, invite(""))
			as.fail.Store(true)
			bs.fail.Store(true)
			for _, c := range advHostCalls(t, alpha, beta, aid, pending.ID, code) {
				err := c.call(context.Background())
				var e *tether.Error
				if !errors.As(err, &e) {
					t.Errorf("%s with a failing store: %v (%T), want *tether.Error", c.op, err, err)
					continue
				}
				if e.Op != c.op || strings.HasPrefix(err.Error(), "failstore") {
					t.Errorf("%s with a failing store: Op %q, error %q", c.op, e.Op, err)
				}
			}
		})
	}
	t.Run("network fails", func(t *testing.T) {
		ctx := context.Background()
		w := newWorld(t)
		alpha := w.node("alpha", "")
		ac, _ := alpha.initiate(t, invite(betaURL)) // nothing listens at betaURL
		err := alpha.Sync(ctx)
		var e *tether.Error
		if !errors.As(err, &e) || e.Op != "tether: sync" {
			t.Errorf("Sync of a pending invitation whose destination is down: Op %q (%v), want %q", func() string {
				if e != nil {
					return e.Op
				}
				return ""
			}(), err, "tether: sync")
		}
		_ = ac
		gamma := w.node("gamma", "")
		w2 := w.node("delta", alphaURL)
		_, code := w2.initiate(t, invite(""))
		w.net.Faults(func(string, string, *tether.Request) tethertest.Fault { return tethertest.Fault{Drop: true} })
		_, err = gamma.Accept(ctx, code, tether.AcceptOptions{})
		e = nil
		if !errors.As(err, &e) || e.Op != "tether: accept" {
			t.Errorf("Accept with the initiator unreachable: %v, want Op %q", err, "tether: accept")
		}
	})
}

func TestAdvEveryCodeHasSentinel(t *testing.T) {
	for _, c := range advCodes {
		e := &tether.Error{Code: c.code, Op: "tether: test", Message: "m"}
		wrapped := fmt.Errorf("outer: %w", fmt.Errorf("middle: %w", e))
		if !errors.Is(e, c.err) || !errors.Is(wrapped, c.err) {
			t.Errorf("code %q: errors.Is(err, its sentinel) = %v, through wrapping %v", c.code, errors.Is(e, c.err), errors.Is(wrapped, c.err))
		}
		if tether.ErrorCode(wrapped) != c.code || tether.ErrorCode(c.err) != c.code {
			t.Errorf("code %q: ErrorCode(wrapped) %q, ErrorCode(sentinel) %q", c.code, tether.ErrorCode(wrapped), tether.ErrorCode(c.err))
		}
		if got := tether.HTTPStatus(c.code); got != c.status {
			t.Errorf("code %q: HTTPStatus %d, documented %d", c.code, got, c.status)
		}
		for _, o := range advCodes {
			if o.code != c.code && errors.Is(wrapped, o.err) {
				t.Errorf("an error with code %q matches the sentinel of %q", c.code, o.code)
			}
		}
	}
	if errors.Is(errors.New("plain"), tether.ErrInternal) {
		t.Error("a plain error matches ErrInternal")
	}
	// The sentinels are distinct values.
	seen := map[error]tether.Code{}
	for _, c := range advCodes {
		if prev, ok := seen[c.err]; ok {
			t.Errorf("codes %q and %q share a sentinel", prev, c.code)
		}
		seen[c.err] = c.code
	}
}

// ---------------------------------------------------------------------------
// 6. Extreme backoff settings.

func TestAdvBackoffExtremes(t *testing.T) {
	for _, bc := range []struct {
		name      string
		base, max time.Duration
	}{
		{"1h and 1h", time.Hour, time.Hour},
		{"MaxInt64 and MaxInt64", math.MaxInt64, math.MaxInt64},
		{"1ns and MaxInt64", 1, math.MaxInt64},
		{"MaxInt64 and 1ns", math.MaxInt64, 1},
		{"1h and zero", time.Hour, 0},
		{"negative", -time.Hour, math.MinInt64},
	} {
		for _, topo := range []struct{ name, ep string }{{"push", alphaURL}, {"poll", ""}} {
			t.Run(bc.name+"/"+topo.name, func(t *testing.T) {
				t.Parallel()
				w := newWorld(t)
				alpha := w.node("alpha", topo.ep, func(c *tether.Config) {
					c.Clock = nil
					c.RetryBase, c.RetryMax = bc.base, bc.max
					c.PollWait = 200 * time.Millisecond
				})
				sw := &advSwitch{now: time.Now}
				beta := w.node("beta", "", realClock, func(c *tether.Config) { c.Endpoint = betaURL })
				sw.real = beta
				w.t.Cleanup(w.net.Listen(betaURL, sw))
				aid, _ := connect(t, alpha, beta, betaURL)
				for _, attempt := range []int{0, 1, 2, 30, 62, 63, 64, 65, 1000, math.MaxInt32, math.MaxInt} {
					for _, cause := range []error{
						nil, errors.New("plain"),
						&tether.Error{Code: tether.CodeUnavailable, RetryAfter: math.MaxInt64},
						&tether.Error{Code: tether.CodePaused, RetryAfter: math.MinInt64},
					} {
						func() {
							defer func() {
								if r := recover(); r != nil {
									t.Errorf("Backoff(attempt %d, %v) panicked: %v", attempt, cause, r)
								}
							}()
							if d := tether.Backoff(alpha.Node, attempt, cause); d < 0 {
								t.Errorf("Backoff(attempt %d, %v) = %v", attempt, cause, d)
							}
						}()
					}
				}
				sw.take(func(context.Context, *tether.Request, *advSwitch) (*tether.Response, error) {
					return nil, &tether.Error{Code: tether.CodeUnavailable, Message: "down", RetryAfter: math.MaxInt64}
				})
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				done := make(chan error, 1)
				go func() { done <- alpha.Run(ctx) }()
				advSend(t, alpha, aid, "x", 1)
				eventually(t, "a failure is recorded", func() bool { return alpha.get(t, aid).Health.Failures >= 1 })
				cancel()
				select {
				case err := <-done:
					if !errors.Is(err, context.Canceled) {
						t.Errorf("Run returned %v", err)
					}
				case <-time.After(10 * time.Second): // guards a hang only
					t.Fatal("Run did not return within 10s of its context ending")
				}
			})
		}
	}
}

// ---------------------------------------------------------------------------
// 7. Polls naming connections twice, or many.

type advCountingStore struct {
	*memstore.Store
	gets atomic.Int64
}

func (s *advCountingStore) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	s.gets.Add(1)
	return s.Store.GetConnection(ctx, id)
}

func TestAdvPollNamingConnections(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	cs := &advCountingStore{Store: memstore.New()}
	beta := w.node("beta", betaURL, func(c *tether.Config) { c.Store = cs })
	alpha := w.node("alpha", "")
	_, bid := connect(t, alpha, beta, betaURL)
	mallory := w.node("mallory", "")
	ids := []string{bid}
	for len(ids) < tether.MaxPollConnections {
		c, _ := beta.initiate(t, invite(""))
		ids = append(ids, c.ID)
	}
	poll := func(ids ...string) []byte {
		conns := make([]map[string]any, len(ids))
		for i, id := range ids {
			conns[i] = map[string]any{"id": id, "cursor": 0}
		}
		b, err := json.Marshal(map[string]any{"wait_ms": 0, "connections": conns})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	handle := func(req *tether.Request) (tether.Code, bool) {
		resp, err := beta.Handle(ctx, req)
		if err != nil {
			return tether.ErrorCode(err), true
		}
		return resp.Code, resp.Code != ""
	}
	t.Run("same connection twice, authentic", func(t *testing.T) {
		code, refused := handle(tether.SignRequest(alpha.Node, betaURL, tether.OpPoll, bid, poll(bid, bid)))
		if !refused || code != tether.CodeInvalid {
			t.Errorf("poll naming %s twice: refused %v, code %q; want invalid", bid, refused, code)
		}
	})
	t.Run("same connection twice among others, authentic", func(t *testing.T) {
		code, refused := handle(tether.SignRequest(alpha.Node, betaURL, tether.OpPoll, bid, poll(bid, ids[1], ids[2], bid)))
		if !refused || code != tether.CodeInvalid {
			t.Errorf("poll naming %s twice: refused %v, code %q; want invalid", bid, refused, code)
		}
	})
	t.Run("same connection twice, forged", func(t *testing.T) {
		code, refused := handle(tether.SignRequest(mallory.Node, betaURL, tether.OpPoll, bid, poll(bid, bid)))
		if !refused || code != tether.CodeInvalid && code != tether.CodeUnauthenticated {
			t.Errorf("forged poll naming %s twice: refused %v, code %q", bid, refused, code)
		}
	})
	t.Run("1001 connections", func(t *testing.T) {
		extra, _ := beta.initiate(t, invite(""))
		code, refused := handle(tether.SignRequest(alpha.Node, betaURL, tether.OpPoll, bid, poll(append(append([]string{}, ids...), extra.ID)...)))
		if !refused || code != tether.CodeInvalid {
			t.Errorf("poll naming 1001 connections: refused %v, code %q; want invalid", refused, code)
		}
	})
	for _, sub := range []string{ids[0], ids[500], ids[999], "conn_00000000000000000000000000"} {
		t.Run("forged poll naming 1000 connections, token for "+sub, func(t *testing.T) {
			req := tether.SignRequest(mallory.Node, betaURL, tether.OpPoll, sub, poll(ids...))
			cs.gets.Store(0)
			code, refused := handle(req)
			if !refused {
				t.Fatal("a forged poll was answered")
			}
			if n := cs.gets.Load(); n > 1 {
				t.Errorf("a forged poll (refused %q) read %d connections from the Store, want at most 1", code, n)
			}
		})
	}
	t.Run("authentic peer naming 999 connections of others", func(t *testing.T) {
		req := tether.SignRequest(alpha.Node, betaURL, tether.OpPoll, bid, poll(ids...))
		cs.gets.Store(0)
		code, refused := handle(req)
		if !refused {
			t.Fatal("a poll naming other peers' connections was answered")
		}
		if n := cs.gets.Load(); n > 2 {
			t.Errorf("the poll (refused %q) read %d connections from the Store, want at most 2", code, n)
		}
		if c := beta.get(t, ids[1]); c.Status != tether.StatusPending {
			t.Errorf("another connection changed: %s", c.Status)
		}
	})
}
