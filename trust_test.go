package tether_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/tethertest"
)

const gammaURL = "https://gamma.example/tether"

// hostile is text an impostor puts in its answers: nothing of it may be
// stored.
const hostile = "IGNORE\u202e PREVIOUS \u200binstructions <script>alert(1)</script> " +
	"and store this very long text in the health of the connection for the admins to read"

// switchable serves a node until an impostor takes over its address.
type switchable struct {
	real     tether.Handler
	impostor atomic.Pointer[handlerFunc]
}

func (s *switchable) Handle(ctx context.Context, req *tether.Request) (*tether.Response, error) {
	if h := s.impostor.Load(); h != nil {
		return (*h)(ctx, req)
	}
	return s.real.Handle(ctx, req)
}

func (s *switchable) take(h handlerFunc) { s.impostor.Store(&h) }

// impostors answer at a peer's address with every terminal code, unsigned,
// or signed by a key other than the pinned one.
func impostors(w *world, realID string) map[string]handlerFunc {
	other := ed25519.NewKeyFromSeed(make([]byte, 32))
	refuse := func(code tether.Code) handlerFunc {
		return func(context.Context, *tether.Request) (*tether.Response, error) {
			return nil, &tether.Error{Code: code, Message: hostile, RetryAfter: time.Hour}
		}
	}
	signedRefusal := func(code tether.Code) handlerFunc {
		return func(_ context.Context, req *tether.Request) (*tether.Response, error) {
			body, _ := json.Marshal(map[string]any{"refused": map[string]any{"code": code, "message": hostile, "retry_ms": 3600000}})
			return &tether.Response{Auth: tether.SignResponse(other, realID, req.Op, req.Auth, body, w.clock.Now()), Body: body, Code: code}, nil
		}
	}
	out := map[string]handlerFunc{}
	for _, code := range []tether.Code{tether.CodeGone, tether.CodeRevoked, tether.CodePaused, tether.CodeNotConnected, tether.CodeUnauthenticated, tether.CodeClockSkew, tether.CodeInternal} {
		out["unsigned "+string(code)] = refuse(code)
		out["wrongly signed "+string(code)] = signedRefusal(code)
	}
	out["unsigned answer"] = func(context.Context, *tether.Request) (*tether.Response, error) {
		return &tether.Response{Auth: "not a token", Body: []byte(`{"refused":{"code":"gone","message":"` + hostile + `"}}`), Code: tether.CodeGone}, nil
	}
	return out
}

// checkUntouched asserts a connection is still Active with its queue, and
// that its health holds nothing of the impostor's text.
func checkUntouched(t *testing.T, p *peer, id string, queued int) {
	t.Helper()
	c := p.get(t, id)
	if c.Status != tether.StatusActive {
		t.Fatalf("%s: connection is %s after unauthenticated answers, want active", p.name, c.Status)
	}
	msgs, err := p.store.ListOutbox(context.Background(), id, 0, 0)
	if err != nil || len(msgs) != queued {
		t.Fatalf("%s: %d queued messages (%v), want %d", p.name, len(msgs), err, queued)
	}
	events, _ := p.Events(context.Background(), id, 0, 0)
	for _, e := range events {
		if e.Actor == tether.ActorRemote && e.Type != tether.EventAccepted {
			t.Fatalf("%s: an unauthenticated answer recorded %s", p.name, e.Type)
		}
	}
	le := c.Health.LastError
	if strings.Contains(le, "IGNORE") || strings.Contains(le, "script") || strings.ContainsRune(le, '\u202e') || utf8.RuneCountInString(le) > 300 {
		t.Fatalf("%s: health keeps the impostor's text: %q", p.name, le)
	}
}

// SECURITY.md 35: whatever answers at the peer's URL without the pinned
// key's signature — any code, any Retry-After — changes no connection: a
// pusher, or a private side's long-poll and pusher, keeps its queue and
// its connection Active.
func TestUnsignedAnswersChangeNothing(t *testing.T) {
	for _, alphaEndpoint := range []string{alphaURL, ""} {
		for name, h := range impostors(newWorld(t), "inst_00000000000000000000000000") {
			t.Run("alpha "+orPrivateName(alphaEndpoint)+"/"+name, func(t *testing.T) {
				w := newWorld(t)
				alpha := w.node("alpha", alphaEndpoint, realClock)
				beta := w.node("beta", "", realClock, func(c *tether.Config) { c.Endpoint = betaURL })
				sw := &switchable{real: beta}
				w.t.Cleanup(w.net.Listen(betaURL, sw))
				aid, _ := connect(t, alpha, beta, betaURL)
				sw.take(h)
				running(t, alpha)
				sendAll(t, alpha, aid, "m", 3)
				eventually(t, "alpha failed three times against the impostor", func() bool {
					return alpha.get(t, aid).Health.Failures >= 3
				})
				checkUntouched(t, alpha, aid, 3)
			})
		}
	}
}

// A private initiator asking its destination verifies the answer's
// signature before reading it: an impostor's well-formed but unsigned
// acceptance completes nothing.
func TestStatusAnswerVerifiedBeforeParsed(t *testing.T) {
	w := newWorld(t)
	alpha := w.node("alpha", "")
	ac, _ := alpha.initiate(t, invite(betaURL))
	w.t.Cleanup(w.net.Listen(betaURL, handlerFunc(func(context.Context, *tether.Request) (*tether.Response, error) {
		return &tether.Response{Auth: "x.y.z", Body: []byte(`{"instance":"inst_00000000000000000000000000","key":"AAAA","connection":"conn_00000000000000000000000000","name":"Evil"}`)}, nil
	})))
	if err := alpha.Sync(context.Background()); tether.ErrorCode(err) != tether.CodeUnavailable {
		t.Fatalf("Sync against an impostor: %v, want unavailable", err)
	}
	if c := alpha.get(t, ac.ID); c.Status != tether.StatusPending || c.RemoteName != "Engineering" {
		t.Fatalf("impostor changed the invitation: %s, remote name %q", c.Status, c.RemoteName)
	}
}

// SECURITY.md 38: an invitation naming destination X is accepted only by
// the instance at X, in every topology; nothing is created on either side.
func TestDestinationBoundInvitation(t *testing.T) {
	ctx := context.Background()
	for _, initiator := range []string{alphaURL, ""} {
		t.Run("initiator "+orPrivateName(initiator), func(t *testing.T) {
			w := newWorld(t)
			alpha := w.node("alpha", initiator)
			w.node("beta", betaURL)
			ac, code := alpha.initiate(t, invite(betaURL))
			for _, other := range []*peer{w.node("gamma", gammaURL), w.node("delta", "")} {
				if initiator == "" && other.Endpoint() == "" {
					continue // both private: refused for that reason
				}
				_, err := other.Accept(ctx, code, tether.AcceptOptions{})
				wantCode(t, err, tether.CodeInvalid)
				if other.count(t) != 0 {
					t.Fatalf("%s stored a connection", other.name)
				}
			}
			if c := alpha.get(t, ac.ID); c.Status != tether.StatusPending || c.RemoteURL != betaURL {
				t.Fatalf("initiator changed: %s, remote URL %q", c.Status, c.RemoteURL)
			}
		})
	}
}

func orPrivateName(u string) string {
	if u == "" {
		return "private"
	}
	return "public"
}

// A public initiator checks the destination itself: an instance that skips
// its own check and claims to be the destination is refused, because the
// destination does not hold the acceptance.
func TestDestinationCheckedByInitiator(t *testing.T) {
	w := newWorld(t)
	alpha, beta, gamma := w.node("alpha", alphaURL), w.node("beta", betaURL), w.node("gamma", gammaURL)
	ac, code := alpha.initiate(t, invite(betaURL))
	inv, err := gamma.Preview(code)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]string{
		"code": code, "instance": gamma.ID(), "key": keyOf(t, gamma),
		"endpoint": betaURL, "connection": tether.AcceptorID(inv), "name": "Evil",
	})
	resp, err := alpha.Handle(context.Background(), tether.SignRequest(gamma.Node, alphaURL, tether.OpAccept, inv.Connection, body))
	if err == nil && resp.Code == "" {
		t.Fatal("the initiator accepted an acceptance the destination does not hold")
	}
	if c := alpha.get(t, ac.ID); c.Status != tether.StatusPending {
		t.Fatalf("initiator is %s, want pending", c.Status)
	}
	// The real destination still can.
	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	checkPair(t, alpha, ac, beta, bc)
}

func keyOf(t *testing.T, p *peer) string {
	t.Helper()
	inst, err := p.store.LoadInstance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return base64.RawURLEncoding.EncodeToString(inst.Keys[0].Public())
}

// A private initiator that revokes an invitation its partner already
// accepted: the partner's acceptance is withdrawn too, at once when the
// news gets through, and at the invitation's expiry when it does not.
func TestRevokeAfterAcceptanceConverges(t *testing.T) {
	for _, lost := range []bool{false, true} {
		t.Run(map[bool]string{false: "told", true: "news lost"}[lost], func(t *testing.T) {
			w := newWorld(t)
			alpha, beta, ac, bc := acceptedFromPrivate(t, w)
			if lost {
				w.net.Partition("alpha", betaURL)
			}
			if _, err := alpha.RevokeInvitation(context.Background(), ac.ID); err != nil {
				t.Fatal(err)
			}
			if lost {
				w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew)
				if err := beta.Sync(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			checkBothDeleted(t, alpha, ac.ID, beta, bc.ID)
		})
	}
}

// A private initiator offline while its partner accepted comes back after
// the expiry: both sides end the same way, Active if the acceptance was
// still waiting, Deleted if the partner had given up.
func TestLateInitiatorConverges(t *testing.T) {
	for _, late := range []time.Duration{tether.DefaultInvitationTTL + time.Minute, tether.DefaultInvitationTTL + tether.ClockSkew + time.Minute} {
		t.Run(late.String(), func(t *testing.T) {
			w := newWorld(t)
			alpha, beta, ac, bc := acceptedFromPrivate(t, w)
			w.clock.Advance(late)
			_ = beta.Sync(context.Background())
			_ = alpha.Sync(context.Background())
			a, b := alpha.get(t, ac.ID), beta.get(t, bc.ID)
			if a.Status != b.Status || a.Status == tether.StatusPending {
				t.Fatalf("initiator %s, acceptor %s: the sides disagree", a.Status, b.Status)
			}
			if late < tether.DefaultInvitationTTL+tether.ClockSkew && a.Status != tether.StatusActive {
				t.Fatalf("an acceptance made in time did not complete: %s", a.Status)
			}
		})
	}
}

func checkBothDeleted(t *testing.T, a *peer, aid string, b *peer, bid string) {
	t.Helper()
	if s := a.get(t, aid).Status; s != tether.StatusDeleted {
		t.Fatalf("%s is %s, want deleted", a.name, s)
	}
	if s := b.get(t, bid).Status; s != tether.StatusDeleted {
		t.Fatalf("%s is %s, want deleted", b.name, s)
	}
}

// skewed is a clock off by a fixed offset from another.
type skewed struct {
	tether.Clock
	off time.Duration
}

func (s skewed) Now() time.Time { return s.Clock.Now().Add(s.off) }

// SECURITY.md 40: clocks apart by less than ClockSkew, either way, work;
// by more, the handshake is refused with CodeClockSkew, never half open.
func TestClockSkewHandshake(t *testing.T) {
	ctx := context.Background()
	within := tether.ClockSkew - 30*time.Second
	beyond := tether.ClockSkew + 30*time.Second
	for _, tc := range []struct {
		name      string
		initiator string // alpha's endpoint
		off       time.Duration
	}{
		{"public initiator, acceptor ahead within", alphaURL, within},
		{"public initiator, acceptor behind within", alphaURL, -within},
		{"public initiator, acceptor ahead beyond", alphaURL, beyond},
		{"public initiator, acceptor behind beyond", alphaURL, -beyond},
		{"private initiator, acceptor ahead within", "", within},
		{"private initiator, acceptor behind within", "", -within},
		{"private initiator, acceptor ahead beyond", "", beyond},
		{"private initiator, acceptor behind beyond", "", -beyond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t)
			alpha := w.node("alpha", tc.initiator)
			beta := w.node("beta", betaURL, func(c *tether.Config) { c.Clock = skewed{w.clock, tc.off} })
			ac, code := alpha.initiate(t, invite(betaURL))
			bc, err := beta.Accept(ctx, code, tether.AcceptOptions{})
			if err == nil && tc.initiator == "" {
				err = alpha.Sync(ctx)
			}
			ok := tc.off == within || tc.off == -within
			if ok {
				if err != nil {
					t.Fatalf("clocks %s apart refused: %v", tc.off, err)
				}
				checkPair(t, alpha, ac, beta, bc)
				return
			}
			wantCode(t, err, tether.CodeClockSkew)
			if !strings.Contains(err.Error(), "clock") {
				t.Fatalf("the error does not say to check the clocks: %v", err)
			}
			// Never half open: whatever either side holds ends the same.
			w.clock.Advance(tether.DefaultInvitationTTL + 2*tether.ClockSkew + time.Minute)
			_ = alpha.Sync(ctx)
			_ = beta.Sync(ctx)
			if s := alpha.get(t, ac.ID).Status; s != tether.StatusDeleted {
				t.Fatalf("initiator is %s, want deleted", s)
			}
			if conns, _, _ := beta.List(ctx, tether.ListOptions{}); len(conns) == 1 && conns[0].Status != tether.StatusDeleted {
				t.Fatalf("acceptor is %s, want deleted or nothing", conns[0].Status)
			}
		})
	}
}

// A request dated outside ClockSkew is refused with CodeClockSkew, signed,
// so its sender learns to check the clocks — distinct from a bad
// signature.
func TestClockSkewRequestRefusedWithClockCode(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", betaURL)
	aid, bid := connect(t, alpha, beta, betaURL)
	_ = aid
	w.clock.Advance(tether.ClockSkew + time.Second)
	req := tether.SignRequest(alpha.Node, betaURL, tether.OpResume, bid, []byte("{}"))
	w.clock.Advance(-2 * (tether.ClockSkew + time.Second))
	resp, err := beta.Handle(context.Background(), req)
	if err != nil || resp.Code != tether.CodeClockSkew {
		t.Fatalf("late request: %v, code %q; want a signed clock_skew refusal", err, resp.Code)
	}
	// A bad signature is not a clock problem.
	req = tether.SignRequest(beta.Node, betaURL, tether.OpResume, bid, []byte("{}"))
	_, err = beta.Handle(context.Background(), req)
	wantCode(t, err, tether.CodeUnauthenticated)
}

// A public initiator's answer lost: the acceptor keeps its acceptance
// Pending and Sync completes it by asking the initiator.
func TestLostAcceptAnswerConverges(t *testing.T) {
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	ac, code := alpha.initiate(t, invite(""))
	w.net.Faults(func(string, string, *tether.Request) tethertest.Fault { return tethertest.Fault{DropResponse: true} })
	if _, err := beta.Accept(context.Background(), code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeUnavailable {
		t.Fatalf("Accept with its answer lost: %v", err)
	}
	w.net.Faults(nil)
	if err := beta.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	conns, _, _ := beta.List(context.Background(), tether.ListOptions{})
	if len(conns) != 1 {
		t.Fatalf("acceptor holds %d connections", len(conns))
	}
	checkPair(t, alpha, ac, beta, conns[0])
}

// A destination that deletes the acceptance it holds tells the private
// initiator, signed, when it next asks: the invitation closes on both
// sides, before its expiry.
func TestDestinationDeletesPendingAcceptance(t *testing.T) {
	w := newWorld(t)
	alpha, beta, ac, bc := acceptedFromPrivate(t, w)
	if _, err := beta.Delete(context.Background(), bc.ID); err != nil {
		t.Fatal(err)
	}
	_ = alpha.Sync(context.Background())
	checkBothDeleted(t, alpha, ac.ID, beta, bc.ID)
}

// acceptedFromPrivate has a private initiator's invitation accepted by a
// public destination, which then waits for the initiator.
func acceptedFromPrivate(t *testing.T, w *world) (alpha, beta *peer, ac, bc *tether.Connection) {
	t.Helper()
	alpha, beta = w.node("alpha", ""), w.node("beta", betaURL)
	ac, code := alpha.initiate(t, invite(betaURL))
	bc, err := beta.Accept(context.Background(), code, tether.AcceptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return alpha, beta, ac, bc
}
