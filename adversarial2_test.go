package tether_test

// Second round of adversarial tests, against the public API (plus the
// export_test helpers), aimed at the mechanisms changed after the first
// round: re-presenting an acceptance with a proof, the private initiator's
// confirmation, the "paused" flag of polls, replays across replicas and
// restarts, the replay cache's quotas and Health.LastError. Every test is
// named TestAdv2*.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/wire"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

// ---------------------------------------------------------------------------
// Helpers

func adv2Pub(t testing.TB, p *peer) ed25519.PublicKey {
	t.Helper()
	return p.privateKey(t).Public().(ed25519.PublicKey)
}

// adv2SignAccept signs an accept request with priv, its public key
// embedded, claiming to come from instance.
func adv2SignAccept(t testing.TB, priv ed25519.PrivateKey, instance, endpoint, sub string, body []byte, now time.Time) *tether.Request {
	t.Helper()
	pub := priv.Public().(ed25519.PublicKey)
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		t.Fatal(err)
	}
	auth, err := wire.SignToken(wire.Key{ID: tether.KeyID(pub), Private: priv}, wire.Token{
		Instance: instance, Audience: endpoint, Op: string(tether.OpAccept), Subject: sub, Body: body,
		Now: now, Nonce: base64.RawURLEncoding.EncodeToString(nonce[:]), Key: base64.RawURLEncoding.EncodeToString(pub),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &tether.Request{Op: tether.OpAccept, Auth: auth, Body: body}
}

// adv2ProofBody is the body of an accept request that re-presents an
// acceptance with a proof instead of the code.
func adv2ProofBody(instance string, key ed25519.PublicKey, proof string, inv *tether.Invitation, endpoint string) []byte {
	b, err := json.Marshal(map[string]string{
		"proof": proof, "instance": instance, "key": base64.RawURLEncoding.EncodeToString(key),
		"endpoint": endpoint, "connection": tether.AcceptorID(inv), "name": "Engineering",
	})
	if err != nil {
		panic(err)
	}
	return b
}

// adv2ProofRequest is p's own, well-formed proof re-presentation.
func adv2ProofRequest(t testing.TB, w *world, p *peer, inv *tether.Invitation, endpoint string) *tether.Request {
	t.Helper()
	pub := adv2Pub(t, p)
	return adv2SignAccept(t, p.privateKey(t), p.ID(), alphaURL, inv.Connection,
		adv2ProofBody(p.ID(), pub, tether.AcceptProof(inv.ID, pub), inv, endpoint), w.clock.Now())
}

// adv2Snap is what must not change on a connection an attacker targets.
type adv2Snap struct {
	Status           tether.Status
	RemoteInstance   string
	RemoteConnection string
	RemoteKey        string
	Events           int
}

func adv2Take(t testing.TB, p *peer, id string) adv2Snap {
	t.Helper()
	c := p.get(t, id)
	k := ""
	if len(c.RemoteKey) > 0 {
		k = tether.KeyID(c.RemoteKey)
	}
	return adv2Snap{c.Status, c.RemoteInstance, c.RemoteConnection, k, advEventCount(t, p, id)}
}

// adv2Answer describes an answer: signed (with its code) or an unsigned
// refusal.
func adv2Answer(resp *tether.Response, err error) (signed bool, code tether.Code) {
	if err != nil {
		return false, tether.ErrorCode(err)
	}
	if resp == nil {
		return false, "no answer"
	}
	return resp.Auth != "", resp.Code
}

func adv2CountEvents(t testing.TB, p *peer, id string, typ tether.EventType) int {
	t.Helper()
	evs, err := p.Events(context.Background(), id, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range evs {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// adv2Clock is a clock off by an offset that a test can change: a clock
// corrected (or going wrong) between two steps.
type adv2Clock struct {
	tether.Clock
	off atomic.Int64
}

func (c *adv2Clock) Now() time.Time { return c.Clock.Now().Add(time.Duration(c.off.Load())) }

// adv2Router serves an endpoint with a handler that can be replaced: a
// node restarted on the same Store.
type adv2Router struct {
	mu sync.Mutex
	h  tether.Handler
}

func (r *adv2Router) Handle(ctx context.Context, req *tether.Request) (*tether.Response, error) {
	r.mu.Lock()
	h := r.h
	r.mu.Unlock()
	return h.Handle(ctx, req)
}

func (r *adv2Router) set(h tether.Handler) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.h = h
}

// adv2Open opens a node on st without serving it.
func adv2Open(t testing.TB, w *world, name, endpoint string, st *memstore.Store, mods ...func(*tether.Config)) *peer {
	t.Helper()
	cfg := tether.Config{Store: st, Transport: w.net.Transport(name), Endpoint: endpoint, Clock: w.clock}
	for _, m := range mods {
		m(&cfg)
	}
	n, err := tether.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", name, err)
	}
	return &peer{Node: n, name: name, store: st}
}

func adv2Fault(match func(from string, req *tether.Request) bool, f tethertest.Fault) tethertest.FaultFunc {
	return func(from, _ string, req *tether.Request) tethertest.Fault {
		if match(from, req) {
			return f
		}
		return tethertest.Fault{}
	}
}

func adv2IsConfirm(_ string, req *tether.Request) bool {
	return req.Op == tether.OpStatus && bytes.Contains(req.Body, []byte("confirmed"))
}

func adv2IsAcceptFromBeta(from string, req *tether.Request) bool {
	return from == "beta" && req.Op == tether.OpAccept
}

// adv2Settle heals the network, syncs both sides twice and reports
// whether they agree; when they do not, it runs both nodes for up to 2 s
// of real time (messages queued on Active sides) and says what that gave.
func adv2Settle(t *testing.T, w *world, alpha *peer, aid string, beta *peer) (string, bool) {
	t.Helper()
	ctx := context.Background()
	w.net.Faults(nil)
	w.net.Heal()
	for range 2 {
		_ = beta.Sync(ctx)
		_ = alpha.Sync(ctx)
	}
	desc, ok := advAgree(t, alpha, aid, beta)
	if ok {
		return desc, true
	}
	after, fixed := advRunToAgreement(t, w, alpha, aid, beta, 2*time.Second)
	return fmt.Sprintf("after Sync on both sides: %s; after running both nodes 2 s: %s", desc, after), fixed
}

// ---------------------------------------------------------------------------
// 1. Re-presenting an acceptance with a proof (public initiator).

// adv2ProofWorld: public initiator alpha, private acceptor beta whose
// acceptance was presented with the code and whose request (lose.Drop) or
// answer (lose.DropResponse) was lost.
func adv2ProofWorld(t *testing.T, lose tethertest.Fault) (w *world, alpha, beta *peer, ac *tether.Connection, code string, inv *tether.Invitation) {
	t.Helper()
	ctx := context.Background()
	w = newWorld(t)
	alpha, beta = w.node("alpha", alphaURL), w.node("beta", "")
	ac, code = alpha.initiate(t, invite(""))
	inv, err := beta.Preview(code)
	if err != nil {
		t.Fatal(err)
	}
	w.net.Faults(adv2Fault(adv2IsAcceptFromBeta, lose))
	if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeUnavailable {
		t.Fatalf("Accept with its request or answer lost: %v", err)
	}
	w.net.Faults(nil)
	if b := advOnly(t, beta); b == nil || b.Status != tether.StatusPending {
		t.Fatalf("setup: acceptor holds %v, want one Pending acceptance", b)
	}
	want := tether.StatusPending
	if lose.DropResponse {
		want = tether.StatusActive
	}
	if s := alpha.get(t, ac.ID).Status; s != want {
		t.Fatalf("setup: initiator is %s, want %s", s, want)
	}
	return w, alpha, beta, ac, code, inv
}

var (
	adv2RequestLost = tethertest.Fault{Drop: true}
	adv2AnswerLost  = tethertest.Fault{DropResponse: true}
)

func TestAdv2ProofForAnotherKey(t *testing.T) {
	ctx := context.Background()
	for _, lose := range []struct {
		name string
		f    tethertest.Fault
	}{{"initiator pending", adv2RequestLost}, {"initiator completed", adv2AnswerLost}} {
		t.Run(lose.name, func(t *testing.T) {
			w, alpha, beta, ac, _, inv := adv2ProofWorld(t, lose.f)
			eve := w.node("eve", "")
			before := adv2Take(t, alpha, ac.ID)
			bpub, epub := adv2Pub(t, beta), adv2Pub(t, eve)
			for _, c := range []struct {
				name string
				req  *tether.Request
			}{
				{"beta signs, proof for eve's key", adv2SignAccept(t, beta.privateKey(t), beta.ID(), alphaURL, inv.Connection,
					adv2ProofBody(beta.ID(), bpub, tether.AcceptProof(inv.ID, epub), inv, ""), w.clock.Now())},
				{"eve signs, eve's key, beta's proof", adv2SignAccept(t, eve.privateKey(t), eve.ID(), alphaURL, inv.Connection,
					adv2ProofBody(eve.ID(), epub, tether.AcceptProof(inv.ID, bpub), inv, ""), w.clock.Now())},
				{"eve signs, claims beta's instance, beta's proof", adv2SignAccept(t, eve.privateKey(t), beta.ID(), alphaURL, inv.Connection,
					adv2ProofBody(beta.ID(), epub, tether.AcceptProof(inv.ID, bpub), inv, ""), w.clock.Now())},
				{"eve signs, body names beta's key", adv2SignAccept(t, eve.privateKey(t), beta.ID(), alphaURL, inv.Connection,
					adv2ProofBody(beta.ID(), bpub, tether.AcceptProof(inv.ID, bpub), inv, ""), w.clock.Now())},
				{"proof over another jti", adv2SignAccept(t, eve.privateKey(t), eve.ID(), alphaURL, inv.Connection,
					adv2ProofBody(eve.ID(), epub, tether.AcceptProof(inv.ID+"x", epub), inv, ""), w.clock.Now())},
				{"empty proof and no code", adv2SignAccept(t, eve.privateKey(t), eve.ID(), alphaURL, inv.Connection,
					adv2ProofBody(eve.ID(), epub, "", inv, ""), w.clock.Now())},
			} {
				resp, err := alpha.Handle(ctx, c.req)
				if signed, code := adv2Answer(resp, err); signed && code == "" {
					t.Errorf("%s: answered as an acceptance", c.name)
				}
				if after := adv2Take(t, alpha, ac.ID); after != before {
					t.Fatalf("%s: the initiator changed: %+v -> %+v", c.name, before, after)
				}
			}
			// Control: beta's own proof completes (or confirms) it.
			resp, err := alpha.Handle(ctx, adv2ProofRequest(t, w, beta, inv, ""))
			if signed, code := adv2Answer(resp, err); !signed || code != "" {
				t.Fatalf("control: beta's own proof: signed %v code %q (%v)", signed, code, err)
			}
			if err := beta.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			checkPair(t, alpha, ac, beta, advOnly(t, beta))
			if n := adv2CountEvents(t, alpha, ac.ID, tether.EventAccepted); n != 1 {
				t.Errorf("initiator recorded %d acceptances", n)
			}
		})
	}
}

// A captured proof re-presentation replayed by another instance, inside
// and outside the time window.
func TestAdv2ProofReplayedByAnotherInstance(t *testing.T) {
	ctx := context.Background()
	w, alpha, beta, ac, _, inv := adv2ProofWorld(t, adv2AnswerLost)
	eve := w.node("eve", "")
	var mu sync.Mutex
	var captured *tether.Request
	w.net.Faults(func(from, _ string, req *tether.Request) tethertest.Fault {
		if from == "beta" && req.Op == tether.OpAccept && bytes.Contains(req.Body, []byte(`"proof"`)) {
			mu.Lock()
			captured = &tether.Request{Op: req.Op, Auth: req.Auth, Body: bytes.Clone(req.Body)}
			mu.Unlock()
			return tethertest.Fault{DropResponse: true}
		}
		return tethertest.Fault{}
	})
	_ = beta.Sync(ctx)
	w.net.Faults(nil)
	if captured == nil {
		t.Fatal("beta's Sync presented no proof")
	}
	before := adv2Take(t, alpha, ac.ID)
	var body map[string]string
	if err := json.Unmarshal(captured.Body, &body); err != nil {
		t.Fatal(err)
	}
	epub := adv2Pub(t, eve)
	withEve := func(instance string, key ed25519.PublicKey) []byte {
		b := map[string]string{}
		for k, v := range body {
			b[k] = v
		}
		b["instance"], b["key"] = instance, base64.RawURLEncoding.EncodeToString(key)
		out, _ := json.Marshal(b)
		return out
	}
	for _, c := range []struct {
		name string
		req  *tether.Request
	}{
		{"exact replay", captured},
		{"same body, re-signed by eve", adv2SignAccept(t, eve.privateKey(t), beta.ID(), alphaURL, inv.Connection, captured.Body, w.clock.Now())},
		{"same body, re-signed by eve as herself", adv2SignAccept(t, eve.privateKey(t), eve.ID(), alphaURL, inv.Connection, captured.Body, w.clock.Now())},
		{"beta's proof, eve's key and instance", adv2SignAccept(t, eve.privateKey(t), eve.ID(), alphaURL, inv.Connection, withEve(eve.ID(), epub), w.clock.Now())},
		{"beta's proof, eve's key, beta's instance", adv2SignAccept(t, eve.privateKey(t), beta.ID(), alphaURL, inv.Connection, withEve(beta.ID(), epub), w.clock.Now())},
	} {
		resp, err := w.net.Transport("eve").Call(ctx, alphaURL, c.req)
		if signed, code := adv2Answer(resp, err); signed && code == "" {
			t.Errorf("%s: answered as an acceptance", c.name)
		}
		if after := adv2Take(t, alpha, ac.ID); after != before {
			t.Fatalf("%s: the initiator changed: %+v -> %+v", c.name, before, after)
		}
	}
	w.clock.Advance(tether.ClockSkew + time.Second)
	resp, err := w.net.Transport("eve").Call(ctx, alphaURL, captured)
	if signed, code := adv2Answer(resp, err); signed && code == "" {
		t.Errorf("late replay: answered as an acceptance")
	}
	if after := adv2Take(t, alpha, ac.ID); after != before {
		t.Fatalf("late replay: the initiator changed: %+v -> %+v", before, after)
	}
	if err := beta.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	checkPair(t, alpha, ac, beta, advOnly(t, beta))
}

// The acceptor's proof reaches an initiator that revoked, expired, or
// completed with another acceptor: signed refusal, acceptor Deleted,
// initiator unchanged.
func TestAdv2ProofRefusedSigned(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// act changes the initiator's side; it returns what the initiator
		// must end as and who it must be paired with (nil: nobody).
		act          func(t *testing.T, w *world, alpha *peer, ac *tether.Connection, code string) (tether.Status, *peer)
		acceptorWins bool
	}{
		{"revoked", func(t *testing.T, w *world, alpha *peer, ac *tether.Connection, _ string) (tether.Status, *peer) {
			if _, err := alpha.RevokeInvitation(ctx, ac.ID); err != nil {
				t.Fatal(err)
			}
			return tether.StatusDeleted, nil
		}, false},
		{"past expiry plus ClockSkew", func(t *testing.T, w *world, alpha *peer, ac *tether.Connection, _ string) (tether.Status, *peer) {
			w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew + time.Second)
			return tether.StatusPending, nil // until its own Sync closes it
		}, false},
		{"past expiry, inside ClockSkew", func(t *testing.T, w *world, alpha *peer, ac *tether.Connection, _ string) (tether.Status, *peer) {
			w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew - time.Minute)
			return tether.StatusActive, nil
		}, true},
		{"expired and closed by the initiator", func(t *testing.T, w *world, alpha *peer, ac *tether.Connection, _ string) (tether.Status, *peer) {
			w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew + time.Second)
			if err := alpha.Sync(ctx); err != nil {
				t.Fatal(err)
			}
			return tether.StatusDeleted, nil
		}, false},
		{"completed with another acceptor", func(t *testing.T, w *world, alpha *peer, ac *tether.Connection, code string) (tether.Status, *peer) {
			gamma := w.node("gamma", "")
			if _, err := gamma.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
				t.Fatalf("gamma's Accept: %v", err)
			}
			return tether.StatusActive, gamma
		}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w, alpha, beta, ac, code, inv := adv2ProofWorld(t, adv2RequestLost)
			wantStatus, partner := tc.act(t, w, alpha, ac, code)
			var before adv2Snap
			if !tc.acceptorWins {
				before = adv2Take(t, alpha, ac.ID)
			}
			// The answer beta gets, seen on the wire.
			var mu sync.Mutex
			var answers []string
			w.net.Faults(func(from, _ string, req *tether.Request) tethertest.Fault { return tethertest.Fault{} })
			rec := func(resp *tether.Response, err error) {
				mu.Lock()
				defer mu.Unlock()
				s, c := adv2Answer(resp, err)
				answers = append(answers, fmt.Sprintf("signed=%v code=%q", s, c))
			}
			// Present beta's proof directly first, to see the answer.
			resp, err := alpha.Handle(ctx, adv2ProofRequest(t, w, beta, inv, ""))
			rec(resp, err)
			if signed, c := adv2Answer(resp, err); !tc.acceptorWins && (!signed || c == "") {
				t.Errorf("beta's authentic proof: signed %v, code %q (%v); want a signed refusal", signed, c, err)
			}
			_ = beta.Sync(ctx)
			_ = beta.Sync(ctx)
			b := advOnly(t, beta)
			a := alpha.get(t, ac.ID)
			if tc.acceptorWins {
				checkPair(t, alpha, ac, beta, b)
				return
			}
			if b.Status != tether.StatusDeleted {
				t.Errorf("acceptor is %s after a signed refusal (answers %v), want deleted", b.Status, answers)
			}
			if a.Status != wantStatus {
				t.Errorf("initiator is %s, want %s", a.Status, wantStatus)
			}
			after := adv2Take(t, alpha, ac.ID)
			if after != before {
				t.Errorf("the initiator changed: %+v -> %+v", before, after)
			}
			if partner != nil && a.RemoteInstance != partner.ID() {
				t.Errorf("initiator paired with %q, want gamma %q", a.RemoteInstance, partner.ID())
			}
			if a.Status == tether.StatusPending {
				_ = alpha.Sync(ctx)
				if s := alpha.get(t, ac.ID).Status; s != tether.StatusDeleted {
					t.Errorf("initiator is %s after its Sync past the expiry", s)
				}
			}
		})
	}
}

// SECURITY.md 36 for the proof path: a proof re-presentation with a bad
// signature reads nothing from the Store; one validly signed by anyone
// (the key it carries) reads at most the one connection it names.
func TestAdv2ForgedProofReads(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	cs := &countingStore{}
	alpha := w.node("alpha", alphaURL, func(c *tether.Config) { cs.Store = c.Store; c.Store = cs })
	eve := w.node("eve", "")
	ac, code := alpha.initiate(t, invite(""))
	inv, err := eve.Preview(code)
	if err != nil {
		t.Fatal(err)
	}
	epub := adv2Pub(t, eve)
	for _, c := range []struct {
		name string
		req  *tether.Request
		max  int64
	}{
		{"bad signature", badSignature(adv2ProofRequest(t, w, eve, inv, "")), 0},
		{"wrong proof", adv2SignAccept(t, eve.privateKey(t), eve.ID(), alphaURL, inv.Connection, adv2ProofBody(eve.ID(), epub, tether.AcceptProof("x", epub), inv, ""), w.clock.Now()), 1},
		{"unknown connection", adv2SignAccept(t, eve.privateKey(t), eve.ID(), alphaURL, "conn_00000000000000000000000000", adv2ProofBody(eve.ID(), epub, tether.AcceptProof(inv.ID, epub), inv, ""), w.clock.Now()), 1},
	} {
		cs.reads.Store(0)
		resp, err := alpha.Handle(ctx, c.req)
		if signed, code := adv2Answer(resp, err); signed {
			t.Errorf("%s: answered signed (code %q)", c.name, code)
		}
		if n := cs.reads.Load(); n > c.max {
			t.Errorf("%s: %d store reads, want at most %d", c.name, n, c.max)
		}
	}
	if s := alpha.get(t, ac.ID).Status; s != tether.StatusPending {
		t.Errorf("initiator is %s", s)
	}
}

// An instance that knows the code's jti presents a proof for its own key
// after the initiator completed with beta: signed already_used, nothing
// changes.
func TestAdv2ProofFromOtherAcceptorAfterCompletion(t *testing.T) {
	ctx := context.Background()
	w, alpha, beta, ac, _, inv := adv2ProofWorld(t, adv2AnswerLost)
	if err := beta.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	checkPair(t, alpha, ac, beta, advOnly(t, beta))
	before := adv2Take(t, alpha, ac.ID)
	eve := w.node("eve", "")
	resp, err := alpha.Handle(ctx, adv2ProofRequest(t, w, eve, inv, ""))
	signed, code := adv2Answer(resp, err)
	if !signed || code != tether.CodeAlreadyUsed {
		t.Errorf("eve's proof after completion: signed %v, code %q (%v); want signed already_used", signed, code, err)
	}
	if after := adv2Take(t, alpha, ac.ID); after != before {
		t.Fatalf("the initiator changed: %+v -> %+v", before, after)
	}
}

// 50 goroutines re-present at once: the acceptor's own Syncs, and then
// the acceptor's Syncs racing 25 other instances that know the jti.
func TestAdv2ProofConcurrent(t *testing.T) {
	ctx := context.Background()
	t.Run("50 Syncs of the acceptor", func(t *testing.T) {
		_, alpha, beta, ac, _, _ := adv2ProofWorld(t, adv2RequestLost)
		var wg sync.WaitGroup
		for range 50 {
			wg.Add(1)
			go func() { defer wg.Done(); _ = beta.Sync(ctx) }()
		}
		wg.Wait()
		_ = beta.Sync(ctx)
		b := advOnly(t, beta)
		checkPair(t, alpha, ac, beta, b)
		if n := adv2CountEvents(t, alpha, ac.ID, tether.EventAccepted); n != 1 {
			t.Errorf("initiator recorded %d acceptances (events %v)", n, eventTypes(t, alpha, ac.ID))
		}
		if n := adv2CountEvents(t, beta, b.ID, tether.EventAccepted); n != 1 {
			t.Errorf("acceptor recorded %d acceptances (events %v)", n, eventTypes(t, beta, b.ID))
		}
	})
	t.Run("25 Syncs racing 25 other instances", func(t *testing.T) {
		w, alpha, beta, ac, _, inv := adv2ProofWorld(t, adv2RequestLost)
		eves := make([]*peer, 25)
		reqs := make([]*tether.Request, 25)
		for i := range eves {
			eves[i] = w.node(fmt.Sprintf("eve%d", i), "")
			reqs[i] = adv2ProofRequest(t, w, eves[i], inv, "")
		}
		var wg sync.WaitGroup
		var wins atomic.Int64
		var winner atomic.Value
		start := make(chan struct{})
		for i := range 25 {
			wg.Add(2)
			go func() { defer wg.Done(); <-start; _ = beta.Sync(ctx) }()
			go func() {
				defer wg.Done()
				<-start
				resp, err := alpha.Handle(ctx, reqs[i])
				if signed, code := adv2Answer(resp, err); signed && code == "" {
					wins.Add(1)
					winner.Store(eves[i].ID())
				}
			}()
		}
		close(start)
		wg.Wait()
		_ = beta.Sync(ctx)
		a := alpha.get(t, ac.ID)
		if a.Status != tether.StatusActive {
			t.Fatalf("initiator is %s", a.Status)
		}
		if n := adv2CountEvents(t, alpha, ac.ID, tether.EventAccepted); n != 1 {
			t.Errorf("initiator recorded %d acceptances", n)
		}
		b := advOnly(t, beta)
		switch {
		case wins.Load() > 1:
			t.Errorf("%d other instances were answered as the acceptor", wins.Load())
		case wins.Load() == 1:
			if a.RemoteInstance != winner.Load() {
				t.Errorf("eve %v was answered as the acceptor, but the initiator recorded %q", winner.Load(), a.RemoteInstance)
			}
			if b.Status != tether.StatusDeleted {
				t.Errorf("another instance won, yet beta is %s", b.Status)
			}
		default:
			checkPair(t, alpha, ac, beta, b)
		}
	})
}

// ---------------------------------------------------------------------------
// 2. Clocks corrected between an acceptance and its follow-up.

// SECURITY.md 40 / "Why both sides agree": the acceptor's answer was lost
// (the initiator completed); before it presents the acceptance again, its
// clock jumps by more than ClockSkew. The initiator refuses, signed, with
// clock_skew. Then the clock is fixed. The sides must agree.
func TestAdv2ClockJumpAfterLostAnswer(t *testing.T) {
	ctx := context.Background()
	for _, topo := range []struct{ name, betaEP string }{{"private acceptor", ""}, {"public acceptor", betaURL}} {
		for _, retry := range []string{"Sync", "Accept"} {
			for _, off := range []time.Duration{tether.ClockSkew + time.Minute, -(tether.ClockSkew + time.Minute)} {
				t.Run(fmt.Sprintf("%s/%s/clock off by %v", topo.name, retry, off), func(t *testing.T) {
					w := newWorld(t)
					alpha := w.node("alpha", alphaURL)
					clk := &adv2Clock{Clock: w.clock}
					beta := w.node("beta", topo.betaEP, func(c *tether.Config) { c.Clock = clk })
					ac, code := alpha.initiate(t, invite(topo.betaEP))
					w.net.Faults(adv2Fault(adv2IsAcceptFromBeta, adv2AnswerLost))
					if _, err := beta.Accept(ctx, code, tether.AcceptOptions{}); tether.ErrorCode(err) != tether.CodeUnavailable {
						t.Fatalf("Accept with its answer lost: %v", err)
					}
					w.net.Faults(nil)
					if s := alpha.get(t, ac.ID).Status; s != tether.StatusActive {
						t.Fatalf("setup: initiator is %s", s)
					}
					clk.off.Store(int64(off))
					var err error
					if retry == "Sync" {
						err = beta.Sync(ctx)
					} else {
						_, err = beta.Accept(ctx, code, tether.AcceptOptions{})
					}
					mid := advOnly(t, beta).Status
					clk.off.Store(0)
					if desc, ok := adv2Settle(t, w, alpha, ac.ID, beta); !ok {
						t.Errorf("retry with the clock off (%s: %v; acceptor then %s), clock fixed: %s (initiator events %v)",
							retry, err, mid, desc, eventTypes(t, alpha, ac.ID))
					} else if mid == tether.StatusDeleted {
						t.Logf("note: the acceptor deleted its acceptance on a clock_skew refusal from an initiator that had completed; agreement came only from %s", desc)
					}
				})
			}
		}
	}
}

// ---------------------------------------------------------------------------
// 3. A transient failure of the destination check.

// A public initiator whose invitation names a destination asks the
// destination before it completes. When that request fails for a network
// reason, the failure is the initiator's, transient: the destination's
// acceptance must still be able to complete once the network is back.
func TestAdv2DestinationCheckTransientFailure(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", betaURL)
	ac, code := alpha.initiate(t, invite(betaURL))
	w.net.Partition("alpha", betaURL) // the initiator cannot reach the destination for a while
	_, aerr := beta.Accept(ctx, code, tether.AcceptOptions{})
	mid := advOnly(t, beta)
	w.net.Heal()
	_ = beta.Sync(ctx)
	_ = alpha.Sync(ctx)
	var rerr error
	if b := advOnly(t, beta); b == nil || b.Status != tether.StatusActive {
		_, rerr = beta.Accept(ctx, code, tether.AcceptOptions{})
		_ = beta.Sync(ctx)
	}
	b := advOnly(t, beta)
	a := alpha.get(t, ac.ID)
	if b == nil || b.Status != tether.StatusActive || a.Status != tether.StatusActive {
		ms := "none"
		if mid != nil {
			ms = string(mid.Status)
		}
		bs := "none"
		if b != nil {
			bs = string(b.Status)
		}
		t.Errorf("initiator could not reach the destination during Accept (Accept: %v; acceptor then %s); after the network healed, Sync and Accept again (%v): initiator %s, acceptor %s",
			aerr, ms, rerr, a.Status, bs)
	}
}

// ---------------------------------------------------------------------------
// 4. Private initiator: confirmation lost, duplicated, delayed; revocation,
// deletion, restarts and clocks.

type adv2Env struct {
	w              *world
	alpha, beta    *peer
	ac             *tether.Connection
	code           string
	astore, bstore *memstore.Store
	aclk, bclk     *adv2Clock
	router         *adv2Router
}

func (e *adv2Env) restartAlpha(t *testing.T) {
	e.alpha = adv2Open(t, e.w, "alpha", "", e.astore, func(c *tether.Config) { c.Clock = e.aclk })
}

func (e *adv2Env) restartBeta(t *testing.T) {
	e.beta = adv2Open(t, e.w, "beta", betaURL, e.bstore, func(c *tether.Config) { c.Clock = e.bclk })
	e.router.set(e.beta)
}

func (e *adv2Env) bid(t *testing.T) string { return advOnly(t, e.beta).ID }

func adv2PrivateInitiator(t *testing.T) *adv2Env {
	t.Helper()
	e := &adv2Env{w: newWorld(t), astore: memstore.New(), bstore: memstore.New(), router: &adv2Router{}}
	e.aclk, e.bclk = &adv2Clock{Clock: e.w.clock}, &adv2Clock{Clock: e.w.clock}
	e.restartAlpha(t)
	e.restartBeta(t)
	t.Cleanup(e.w.net.Listen(betaURL, e.router))
	e.ac, e.code = e.alpha.initiate(t, invite(betaURL))
	if _, err := e.beta.Accept(context.Background(), e.code, tether.AcceptOptions{}); err != nil {
		t.Fatal(err)
	}
	return e
}

func TestAdv2PrivateInitiatorConfirmation(t *testing.T) {
	ctx := context.Background()
	confirmAnswerLost := func(e *adv2Env, t *testing.T) {
		e.w.net.Faults(adv2Fault(adv2IsConfirm, adv2AnswerLost))
		_ = e.alpha.Sync(ctx)
		e.w.net.Faults(nil)
		if a, b := e.alpha.get(t, e.ac.ID), advOnly(t, e.beta); a.Status != tether.StatusPending || a.RemoteInstance == "" || b.Status != tether.StatusActive {
			t.Fatalf("setup: initiator %s (acceptor recorded: %v), acceptor %s; want pending with the acceptor recorded, and active",
				a.Status, a.RemoteInstance != "", b.Status)
		}
	}
	confirmRequestLost := func(e *adv2Env, t *testing.T) {
		e.w.net.Faults(adv2Fault(adv2IsConfirm, adv2RequestLost))
		_ = e.alpha.Sync(ctx)
		e.w.net.Faults(nil)
		if a, b := e.alpha.get(t, e.ac.ID), advOnly(t, e.beta); a.Status != tether.StatusPending || a.RemoteInstance == "" || b.Status != tether.StatusPending {
			t.Fatalf("setup: initiator %s (acceptor recorded: %v), acceptor %s; want both pending, the acceptor recorded", a.Status, a.RemoteInstance != "", b.Status)
		}
	}
	revoke := func(lose bool) func(e *adv2Env, t *testing.T) {
		return func(e *adv2Env, t *testing.T) {
			if lose {
				e.w.net.Faults(adv2Fault(func(_ string, r *tether.Request) bool { return r.Op == tether.OpClose }, adv2RequestLost))
			}
			_, err := e.alpha.RevokeInvitation(ctx, e.ac.ID)
			e.w.net.Faults(nil)
			// Once the acceptor is recorded the invitation is used: revoking
			// is refused (the connection can be deleted instead).
			if a := e.alpha.get(t, e.ac.ID); a.RemoteInstance != "" && tether.ErrorCode(err) != tether.CodeInvalidTransition {
				t.Fatalf("RevokeInvitation of a recorded acceptance: %v, want invalid_transition", err)
			}
			t.Logf("RevokeInvitation: %v (initiator now %s)", err, e.alpha.get(t, e.ac.ID).Status)
		}
	}
	betaDeletes := func(e *adv2Env, t *testing.T) {
		if _, err := e.beta.Delete(ctx, e.bid(t)); err != nil {
			t.Fatal(err)
		}
	}
	pastDeadline := func(e *adv2Env, t *testing.T) {
		e.w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew + time.Minute)
	}
	betaSyncs := func(e *adv2Env, t *testing.T) { _ = e.beta.Sync(ctx) }
	alphaSyncs := func(e *adv2Env, t *testing.T) { _ = e.alpha.Sync(ctx) }
	restartAlpha := func(e *adv2Env, t *testing.T) { e.restartAlpha(t) }
	restartBeta := func(e *adv2Env, t *testing.T) { e.restartBeta(t) }
	dupConfirm := func(e *adv2Env, t *testing.T) {
		e.w.net.Faults(adv2Fault(adv2IsConfirm, tethertest.Fault{Duplicate: true, DropResponse: true}))
		for range 3 {
			_ = e.alpha.Sync(ctx)
		}
		e.w.net.Faults(nil)
	}
	alphaClock := func(off time.Duration) func(e *adv2Env, t *testing.T) {
		return func(e *adv2Env, t *testing.T) { e.aclk.off.Store(int64(off)) }
	}
	betaClock := func(off time.Duration) func(e *adv2Env, t *testing.T) {
		return func(e *adv2Env, t *testing.T) { e.bclk.off.Store(int64(off)) }
	}
	beyond, within := tether.ClockSkew+time.Minute, tether.ClockSkew-time.Minute

	type step = func(e *adv2Env, t *testing.T)
	for _, sc := range []struct {
		name  string
		steps []step
		want  tether.Status // "" when either agreement will do
	}{
		{"confirmation answer lost", []step{confirmAnswerLost}, tether.StatusActive},
		{"confirmation answer lost, duplicated confirmations", []step{confirmAnswerLost, dupConfirm}, tether.StatusActive},
		{"confirmation answer lost, past the acceptor's deadline", []step{confirmAnswerLost, pastDeadline, betaSyncs}, tether.StatusActive},
		{"confirmation answer lost, acceptor deletes", []step{confirmAnswerLost, betaDeletes}, tether.StatusDeleted},
		{"confirmation answer lost, initiator revokes, withdrawal delivered", []step{confirmAnswerLost, revoke(false)}, ""},
		{"confirmation answer lost, initiator revokes, withdrawal lost", []step{confirmAnswerLost, revoke(true)}, ""},
		{"confirmation answer lost, initiator revokes, withdrawal lost, past deadline", []step{confirmAnswerLost, revoke(true), pastDeadline, betaSyncs}, ""},
		{"confirmation request lost, initiator revokes, withdrawal lost, past deadline", []step{confirmRequestLost, revoke(true), pastDeadline, betaSyncs}, ""},
		{"confirmation request lost, initiator revokes, withdrawal delivered", []step{confirmRequestLost, revoke(false)}, tether.StatusActive},
		{"confirmation request lost, acceptor deletes", []step{confirmRequestLost, betaDeletes}, tether.StatusDeleted},
		{"confirmation request lost, past deadline, acceptor syncs first", []step{confirmRequestLost, pastDeadline, betaSyncs}, tether.StatusDeleted},
		{"confirmation request lost, past deadline, initiator syncs first", []step{confirmRequestLost, pastDeadline, alphaSyncs}, ""},
		{"initiator restarted between recording and confirming", []step{confirmRequestLost, restartAlpha}, tether.StatusActive},
		{"acceptor restarted before the initiator asks", []step{restartBeta}, tether.StatusActive},
		{"both restarted after the confirmation answer was lost", []step{confirmAnswerLost, restartAlpha, restartBeta}, tether.StatusActive},
		{"acceptor restarted, then deletes its pending acceptance", []step{restartBeta, betaDeletes}, tether.StatusDeleted},
		{"initiator clock jumps beyond ClockSkew after recording", []step{confirmRequestLost, alphaClock(beyond), alphaSyncs, alphaClock(0)}, tether.StatusActive},
		{"initiator clock jumps back beyond ClockSkew after recording", []step{confirmRequestLost, alphaClock(-beyond), alphaSyncs, alphaClock(0)}, tether.StatusActive},
		{"acceptor clock jumps beyond ClockSkew after accepting", []step{betaClock(beyond), alphaSyncs, betaSyncs, betaClock(0)}, ""},
		{"acceptor clock jumps back beyond ClockSkew, answer lost", []step{confirmAnswerLost, betaClock(-beyond), alphaSyncs, betaSyncs, betaClock(0)}, tether.StatusActive},
		{"initiator clock ahead within ClockSkew, confirmation answer lost", []step{alphaClock(within), confirmAnswerLost, alphaSyncs}, tether.StatusActive},
		{"initiator clock behind within ClockSkew, confirmation answer lost", []step{alphaClock(-within), confirmAnswerLost, alphaSyncs}, tether.StatusActive},
		{"acceptor clock behind within ClockSkew, past the deadline by the initiator's clock only", []step{betaClock(-within), confirmRequestLost, func(e *adv2Env, t *testing.T) {
			e.w.clock.Advance(tether.DefaultInvitationTTL + tether.ClockSkew + time.Second)
		}, alphaSyncs, betaSyncs}, ""},
	} {
		t.Run(sc.name, func(t *testing.T) {
			e := adv2PrivateInitiator(t)
			for _, s := range sc.steps {
				s(e, t)
			}
			e.aclk.off.Store(0)
			e.bclk.off.Store(0)
			desc, ok := adv2Settle(t, e.w, e.alpha, e.ac.ID, e.beta)
			if !ok {
				b := advOnly(t, e.beta)
				t.Fatalf("the sides do not agree: %s (initiator events %v, acceptor events %v)", desc,
					eventTypes(t, e.alpha, e.ac.ID), eventTypes(t, e.beta, b.ID))
			}
			if sc.want != "" {
				if s := e.alpha.get(t, e.ac.ID).Status; s != sc.want {
					t.Errorf("both sides agree on %s, want %s (%s)", s, sc.want, desc)
				}
			}
		})
	}
}

// ---------------------------------------------------------------------------
// 5. Polls and the "paused" flag.

func adv2PollBody(wait time.Duration, entries ...map[string]any) []byte {
	b, err := json.Marshal(map[string]any{"wait_ms": wait.Milliseconds(), "connections": entries})
	if err != nil {
		panic(err)
	}
	return b
}

type adv2PollReply struct {
	Connections []struct {
		ID       string            `json:"id"`
		Status   string            `json:"status"`
		Messages []json.RawMessage `json:"messages"`
	} `json:"connections"`
}

// adv2Poll hands a poll to h and reports what came back within d of real
// time; answered is false when it was still held.
func adv2Poll(t *testing.T, h tether.Handler, req *tether.Request, d time.Duration) (reply adv2PollReply, answered bool, code tether.Code) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type res struct {
		resp *tether.Response
		err  error
	}
	ch := make(chan res, 1)
	go func() {
		resp, err := h.Handle(ctx, req)
		ch <- res{resp, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return reply, true, tether.ErrorCode(r.err)
		}
		if r.resp.Code != "" {
			return reply, true, r.resp.Code
		}
		if err := json.Unmarshal(r.resp.Body, &reply); err != nil {
			t.Fatalf("poll answer %q: %v", r.resp.Body, err)
		}
		return reply, true, ""
	case <-time.After(d):
		cancel()
		<-ch
		return reply, false, ""
	}
}

// Crafted polls with the paused flag wrong, on a fake clock that stands
// still: an answer comes only because of the flag.
func TestAdv2PollPausedFlagCrafted(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	entry := func(paused bool) map[string]any { return map[string]any{"id": aid, "cursor": 0, "paused": paused} }
	poll := func(paused bool) *tether.Request {
		return tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, adv2PollBody(time.Hour, entry(paused)))
	}
	// Active, nothing queued.
	if _, answered, code := adv2Poll(t, alpha, poll(false), 200*time.Millisecond); answered {
		t.Errorf("active idle connection, paused=false: answered at once (code %q), want held", code)
	}
	if r, answered, code := adv2Poll(t, alpha, poll(true), 2*time.Second); !answered || code != "" || len(r.Connections) != 1 || r.Connections[0].Status != "active" {
		t.Errorf("active idle connection, paused=true: answered %v code %q reply %+v; want an answer at once saying active", answered, code, r)
	}
	// Paused, with messages queued after the pause: the pause notice is
	// acknowledged first (the cursor after it), so nothing but data sent
	// while paused is left.
	pc, err := alpha.Pause(ctx, aid)
	if err != nil {
		t.Fatal(err)
	}
	entry = func(paused bool) map[string]any {
		return map[string]any{"id": aid, "cursor": pc.NoticeSeq, "paused": paused}
	}
	advSend(t, alpha, aid, "q", 3)
	for _, paused := range []bool{false, true} {
		for range 20 { // repeatedly: never a message while paused
			r, answered, code := adv2Poll(t, alpha, poll(paused), 100*time.Millisecond)
			for _, c := range r.Connections {
				if len(c.Messages) > 0 {
					t.Fatalf("paused connection, poll paused=%v: %d messages delivered while paused", paused, len(c.Messages))
				}
			}
			if !paused && (!answered || code != "" || len(r.Connections) != 1 || r.Connections[0].Status != "paused") {
				t.Fatalf("paused connection, paused=false: answered %v code %q reply %+v; want an answer at once saying paused", answered, code, r)
			}
			if paused && answered {
				t.Fatalf("paused connection, paused=true: answered at once (code %q, %+v), want held", code, r)
			}
		}
	}
	if q := advQueued(t, alpha, aid); q != 3 {
		t.Errorf("%d messages left queued, want 3 (none acknowledged)", q)
	}
}

// adv2CountingHandler counts the requests it serves, by operation.
type adv2CountingHandler struct {
	h     tether.Handler
	polls atomic.Int64
	other atomic.Int64
}

func (c *adv2CountingHandler) Handle(ctx context.Context, req *tether.Request) (*tether.Response, error) {
	if req.Op == tether.OpPoll {
		c.polls.Add(1)
	} else {
		c.other.Add(1)
	}
	return c.h.Handle(ctx, req)
}

// A private side running normally must not poll in a tight loop, whatever
// the statuses of its connections on either side: count the requests the
// public side serves in 500 ms of real time with PollWait 5 s.
func TestAdv2PollNoTightLoop(t *testing.T) {
	ctx := context.Background()
	for _, sc := range []struct {
		name string
		set  func(t *testing.T, alpha, beta *peer, aids, bids []string)
	}{
		{"all active, idle", func(*testing.T, *peer, *peer, []string, []string) {}},
		{"public side paused, messages queued both ways", func(t *testing.T, alpha, beta *peer, aids, bids []string) {
			advSend(t, alpha, aids[0], "a", 2)
			advSend(t, beta, bids[0], "b", 2)
			if _, err := alpha.Pause(ctx, aids[0]); err != nil {
				t.Fatal(err)
			}
		}},
		{"public side paused one, the other active", func(t *testing.T, alpha, beta *peer, aids, bids []string) {
			advSend(t, beta, bids[0], "b", 2)
			if _, err := alpha.Pause(ctx, aids[0]); err != nil {
				t.Fatal(err)
			}
		}},
		{"public side inactive, messages queued", func(t *testing.T, alpha, beta *peer, aids, bids []string) {
			advSend(t, beta, bids[0], "b", 2)
			if _, err := alpha.Transition(ctx, aids[0], tether.ActionAuthLost, "lost"); err != nil {
				t.Fatal(err)
			}
		}},
		{"private side paused one, the other active", func(t *testing.T, alpha, beta *peer, aids, bids []string) {
			advSend(t, alpha, aids[0], "a", 2)
			if _, err := beta.Pause(ctx, bids[0]); err != nil {
				t.Fatal(err)
			}
		}},
		{"public paused then activated", func(t *testing.T, alpha, beta *peer, aids, bids []string) {
			advSend(t, beta, bids[0], "b", 2)
			if _, err := alpha.Pause(ctx, aids[0]); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			if _, err := alpha.Activate(ctx, aids[0]); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(sc.name, func(t *testing.T) {
			w := newWorld(t)
			slow := func(c *tether.Config) {
				c.Clock = nil
				c.PollWait = 5 * time.Second
				c.RetryBase, c.RetryMax = time.Millisecond, 20*time.Millisecond
			}
			ch := &adv2CountingHandler{}
			alpha := w.node("alpha", "", slow, withReceiver(newInbox()), func(c *tether.Config) { c.Endpoint = alphaURL })
			ch.h = alpha
			t.Cleanup(w.net.Listen(alphaURL, ch))
			beta := w.node("beta", "", slow, withReceiver(newInbox()))
			var aids, bids []string
			for range 2 {
				a, b := connect(t, alpha, beta, "")
				aids, bids = append(aids, a), append(bids, b)
			}
			running(t, alpha, beta)
			time.Sleep(200 * time.Millisecond)
			sc.set(t, alpha, beta, aids, bids)
			time.Sleep(300 * time.Millisecond)
			p0, o0 := ch.polls.Load(), ch.other.Load()
			time.Sleep(500 * time.Millisecond)
			polls, other := ch.polls.Load()-p0, ch.other.Load()-o0
			t.Logf("in 500 ms: %d polls, %d other requests", polls, other)
			if polls > 4 || other > 4 {
				t.Errorf("in 500 ms with PollWait 5 s the public side served %d polls and %d other requests: a tight loop", polls, other)
			}
		})
	}
}

// A private side that pauses its connection while its long-poll is held
// must not get messages on it while paused (as a public side refuses
// pushes on a paused connection).
func TestAdv2PrivateSidePausedWhilePollHeld(t *testing.T) {
	ctx := context.Background()
	alpha, beta, bin, polls := heldPollWorld(t)
	aid, bid := connect(t, alpha, beta, "")
	running(t, alpha, beta)
	deliverThenHold(t, alpha, aid, bin, polls)
	if _, err := beta.Pause(ctx, bid); err != nil {
		t.Fatal(err)
	}
	advSend(t, alpha, aid, "late", 2)
	time.Sleep(500 * time.Millisecond)
	if s := beta.get(t, bid).Status; s != tether.StatusPaused {
		t.Fatalf("beta is %s", s)
	}
	if n := bin.count(); n != 1 {
		t.Errorf("the private side's Receiver got %d messages after it paused the connection (status %s): delivered while paused",
			n-1, beta.get(t, bid).Status)
	}
}

// adv2HookStore calls hook (once) before the first ListOutbox of a
// connection.
type adv2HookStore struct {
	tether.Store
	mu   sync.Mutex
	hook map[string]func()
}

func (s *adv2HookStore) ListOutbox(ctx context.Context, id string, after int64, limit int) ([]tether.Message, error) {
	s.mu.Lock()
	h := s.hook[id]
	delete(s.hook, id)
	s.mu.Unlock()
	if h != nil {
		h()
	}
	return s.Store.ListOutbox(ctx, id, after, limit)
}

// The public side pauses while a poll answer is being put together. A
// pause takes effect in order: the messages sent before it may still go,
// followed by its notice, but no message sent after Pause returned leaves.
func TestAdv2PublicPauseDuringPollAnswer(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	hs := &adv2HookStore{hook: map[string]func(){}}
	alpha := w.node("alpha", alphaURL, func(c *tether.Config) { hs.Store = c.Store; c.Store = hs })
	beta := w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	advSend(t, alpha, aid, "m", 2)
	var paused atomic.Bool
	hs.mu.Lock()
	hs.hook[aid] = func() {
		if _, err := alpha.Pause(ctx, aid); err == nil {
			paused.Store(true)
		}
		if _, err := alpha.Send(ctx, aid, []byte("late")); err != nil {
			t.Error(err)
		}
	}
	hs.mu.Unlock()
	req := tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, adv2PollBody(time.Hour, map[string]any{"id": aid, "cursor": 0}))
	r, answered, code := adv2Poll(t, alpha, req, 2*time.Second)
	if !paused.Load() {
		t.Fatal("the hook did not pause the connection")
	}
	for _, c := range r.Connections {
		for _, raw := range c.Messages {
			var m struct{ Payload []byte }
			if json.Unmarshal(raw, &m) == nil && string(m.Payload) == "late" {
				t.Errorf("poll answered (answered %v, code %q) with a message sent after Pause returned: status %s", answered, code, alpha.get(t, aid).Status)
			}
		}
	}
}

// ---------------------------------------------------------------------------
// 6. Replays to replicas sharing one Store, and to a restarted node.

// adv2Receiver counts how often each message is handed over, and can hold
// the first hand-over of one sequence number.
type adv2Receiver struct {
	mu      sync.Mutex
	calls   map[int64]int
	holdSeq int64
	entered chan struct{}
	release chan struct{}
}

func (r *adv2Receiver) Receive(_ context.Context, m tether.Message) error {
	r.mu.Lock()
	r.calls[m.Seq]++
	first := r.calls[m.Seq] == 1 && m.Seq == r.holdSeq
	r.mu.Unlock()
	if first {
		close(r.entered)
		select {
		case <-r.release:
		case <-time.After(5 * time.Second):
		}
	}
	return nil
}

func (r *adv2Receiver) count(seq int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[seq]
}

func adv2PushBody(seq int64, payload string) []byte {
	b, _ := json.Marshal(map[string]any{"messages": []map[string]any{{"seq": seq, "payload": []byte(payload)}}})
	return b
}

// A push captured and replayed, after it was applied, to a replica on the
// same Store, to the same node, and to a node restarted on the Store: no
// second effect.
func TestAdv2ReplayToReplicaOrRestartedNode(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	recv := &adv2Receiver{calls: map[int64]int{}, entered: make(chan struct{}), release: make(chan struct{})}
	st := memstore.New()
	withRecv := func(c *tether.Config) { c.Receiver = recv }
	alpha1 := adv2Open(t, w, "alpha1", alphaURL, st, withRecv)
	alpha2 := adv2Open(t, w, "alpha2", alphaURL, st, withRecv)
	t.Cleanup(w.net.Listen(alphaURL, alpha1))
	beta := w.node("beta", "")
	aid, bid := connect(t, alpha1, beta, "")
	var mu sync.Mutex
	var pushes []*tether.Request
	w.net.Faults(func(from, _ string, req *tether.Request) tethertest.Fault {
		if req.Op == tether.OpPush {
			mu.Lock()
			pushes = append(pushes, &tether.Request{Op: req.Op, Auth: req.Auth, Body: bytes.Clone(req.Body)})
			mu.Unlock()
		}
		return tethertest.Fault{}
	})
	stop := running(t, beta)
	if _, err := beta.Send(ctx, bid, []byte("m-1")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "message 1 applied", func() bool { return recv.count(1) == 1 && advQueued(t, beta, bid) == 0 })
	stop()
	mu.Lock()
	replay := pushes[0]
	mu.Unlock()
	evs := advEventCount(t, alpha1, aid)
	for _, to := range []struct {
		name string
		h    func() *peer
	}{
		{"replica", func() *peer { return alpha2 }},
		{"same node", func() *peer { return alpha1 }},
		{"node restarted on the Store", func() *peer { return adv2Open(t, w, "alpha3", alphaURL, st, withRecv) }},
	} {
		resp, err := to.h().Handle(ctx, replay)
		signed, code := adv2Answer(resp, err)
		if recv.count(1) != 1 || advEventCount(t, alpha1, aid) != evs || alpha1.get(t, aid).Status != tether.StatusActive {
			t.Errorf("replay to the %s (answer signed %v code %q) had an effect: message 1 received %d times", to.name, signed, code, recv.count(1))
		}
		if signed && code == "" {
			t.Logf("note: the replay to the %s was answered, not refused (memstore is no NonceStore)", to.name)
		}
	}
}

// The same push handed to two replicas at once (a replay of a request
// captured in flight, or the sender's retry reaching another replica): the
// first hand-over of message 2 is held in the Receiver while the copy
// reaches the replica. The Receiver must get message 2 once.
func TestAdv2ReplayToReplicaWhileApplied(t *testing.T) {
	ctx := context.Background()
	w := newWorld(t)
	recv := &adv2Receiver{calls: map[int64]int{}, entered: make(chan struct{}), release: make(chan struct{})}
	st := memstore.New()
	withRecv := func(c *tether.Config) { c.Receiver = recv }
	alpha1 := adv2Open(t, w, "alpha1", alphaURL, st, withRecv)
	alpha2 := adv2Open(t, w, "alpha2", alphaURL, st, withRecv)
	t.Cleanup(w.net.Listen(alphaURL, alpha1))
	beta := w.node("beta", "")
	aid, _ := connect(t, alpha1, beta, "")
	resp, err := alpha1.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPush, aid, adv2PushBody(1, "m-1")))
	if signed, code := adv2Answer(resp, err); !signed || code != "" || recv.count(1) != 1 {
		t.Fatalf("setup: push of message 1: signed %v code %q (%v)", signed, code, err)
	}
	recv.mu.Lock()
	recv.holdSeq = 2
	recv.mu.Unlock()
	push2 := tether.SignRequest(beta.Node, alphaURL, tether.OpPush, aid, adv2PushBody(2, "m-2"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = alpha1.Handle(ctx, push2)
	}()
	select {
	case <-recv.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("message 2 was not handed to the Receiver")
	}
	resp, err = alpha2.Handle(ctx, push2)
	close(recv.release)
	<-done
	signed, code := adv2Answer(resp, err)
	if n := recv.count(2); n != 1 {
		t.Errorf("a push replayed to a replica while the original was being applied (replica's answer: signed %v, code %q): message 2 handed to the Receiver %d times", signed, code, n)
	}
}

// ---------------------------------------------------------------------------
// 7. Replay cache quotas.

// Directly on wire.ReplayCache: one peer exhausting its quota does not
// affect another.
func TestAdv2ReplayCachePerPeerQuota(t *testing.T) {
	var rc wire.ReplayCache
	now := t0
	until := now.Add(2*tether.ClockSkew + time.Second)
	for i := range wire.MaxNoncesPerPeer {
		if !rc.Fresh("inst_a", fmt.Sprintf("n%d", i), now, until) {
			t.Fatalf("peer a's nonce %d refused", i)
		}
	}
	if rc.Fresh("inst_a", "one-more", now, until) {
		t.Error("peer a beyond its quota was accepted")
	}
	for i := range 1000 {
		if !rc.Fresh("inst_b", fmt.Sprintf("n%d", i), now, until) {
			t.Fatalf("peer b's nonce %d refused while peer a is at its quota", i)
		}
	}
	if rc.Fresh("inst_b", "n1", now, until) {
		t.Error("peer b's replay accepted")
	}
	later := until.Add(time.Second)
	if !rc.Fresh("inst_a", "after", later, later.Add(time.Minute)) {
		t.Error("peer a still refused after its nonces expired")
	}
}

// adv2FakeInstance returns a well-formed instance ID.
func adv2FakeInstance(i int) string {
	const digits = "0123456789abcdefghijklmnopqrstuv"
	b := []byte("inst_" + strings.Repeat("0", 26))
	for j := len(b) - 1; i > 0; j-- {
		b[j] = digits[i%32]
		i /= 32
	}
	return string(b)
}

// adv2Flood sends n accept requests to alpha, signed by eve and claiming
// the instance IDs inst(i). Each re-presents an acceptance of inv with a
// valid proof for eve's key (anyone who saw the code knows its jti), with
// a bad connection ID, so each is refused, signed, after its nonce was
// recorded for the instance it claims.
func adv2Flood(t *testing.T, w *world, alpha, eve *peer, inv *tether.Invitation, n int, inst func(i int) string) {
	t.Helper()
	ctx := context.Background()
	epriv, epub := eve.privateKey(t), adv2Pub(t, eve)
	proof := tether.AcceptProof(inv.ID, epub)
	body := func(instance string) []byte {
		b, _ := json.Marshal(map[string]string{
			"proof": proof, "instance": instance, "key": base64.RawURLEncoding.EncodeToString(epub),
			"connection": "not an id", "name": "Evil",
		})
		return b
	}
	// The premise, with one request: refused signed, so it got past the
	// replay check.
	resp, err := alpha.Handle(ctx, adv2SignAccept(t, epriv, inst(0), alphaURL, inv.Connection, body(inst(0)), w.clock.Now()))
	if signed, c := adv2Answer(resp, err); !signed || c == "" {
		t.Fatalf("premise: a flood request is answered signed %v, code %q (%v); want a signed refusal", signed, c, err)
	}
	const workers = 4
	start := time.Now()
	var wg sync.WaitGroup
	for k := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1 + k; i < n; i += workers {
				_, _ = alpha.Handle(ctx, adv2SignAccept(t, epriv, inst(i), alphaURL, inv.Connection, body(inst(i)), w.clock.Now()))
			}
		}()
	}
	wg.Wait()
	t.Logf("flood of %d requests took %v", n, time.Since(start))
}

// SECURITY.md 37 through the public API: accept requests are verified
// with the key they carry, so whoever holds one of the initiator's codes
// (or only its jti) can sign them under any instance ID. Their nonces must
// not count against a real peer: here an attacker floods accept requests
// claiming the instance ID of beta, a connected peer; beta's own push must
// still be accepted. It takes 65,536 requests (about a minute with the
// race detector on 2 CPUs; skipped with -short).
func TestAdv2AcceptFloodUnderAPeersInstanceID(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: floods 65,536 requests (.ci/run runs it, without -short)")
	}
	ctx := context.Background()
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL, withReceiver(newInbox()))
	beta := w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	// A second invitation, handed to someone who turns hostile.
	_, code := alpha.initiate(t, invite(""))
	eve := w.node("eve", "")
	inv, err := eve.Preview(code)
	if err != nil {
		t.Fatal(err)
	}
	adv2Flood(t, w, alpha, eve, inv, wire.MaxNoncesPerPeer, func(int) string { return beta.ID() })
	resp, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPush, aid, adv2PushBody(1, "hello")))
	if signed, c := adv2Answer(resp, err); !signed || c != "" {
		t.Errorf("beta's genuine push after eve flooded accept requests under beta's instance ID: signed %v, code %q (%v); want it accepted", signed, c, err)
	}
}

// The same with many made-up instance IDs: the cache's table of peers
// fills (wire.MaxPeers), and a real peer that was quiet for a while is
// refused.
func TestAdv2AcceptFloodOfMadeUpPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("skipped with -short: floods wire.MaxPeers (65,536) requests (.ci/run runs it, without -short)")
	}
	ctx := context.Background()
	w := newWorld(t)
	alpha := w.node("alpha", alphaURL, withReceiver(newInbox()))
	beta := w.node("beta", "")
	aid, _ := connect(t, alpha, beta, "")
	w.clock.Advance(2*tether.ClockSkew + 2*time.Minute) // beta's nonces expire: it was quiet
	_, code := alpha.initiate(t, invite(""))
	eve := w.node("eve", "")
	inv, err := eve.Preview(code)
	if err != nil {
		t.Fatal(err)
	}
	adv2Flood(t, w, alpha, eve, inv, wire.MaxPeers, adv2FakeInstance)
	resp, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPush, aid, adv2PushBody(1, "hello")))
	if signed, c := adv2Answer(resp, err); !signed || c != "" {
		t.Errorf("beta's genuine push after eve flooded accept requests under %d made-up instance IDs: signed %v, code %q (%v); want it accepted", wire.MaxPeers, signed, c, err)
	}
}

// ---------------------------------------------------------------------------
// 8. Health.LastError stays short and clean.

// adv2Dirty is advDirty with the bounds of this round: at most 130 runes,
// valid UTF-8, no control or format (Cf) characters.
func adv2Dirty(le string) string {
	if !utf8.ValidString(le) {
		return "is not valid UTF-8"
	}
	if n := utf8.RuneCountInString(le); n > 130 {
		return fmt.Sprintf("is %d runes long", n)
	}
	for _, r := range le {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return fmt.Sprintf("holds %U", r)
		}
	}
	return ""
}

var adv2Nasty = "\x00\x1b[2J\x1b]0;owned\x07\u202e\u2066\u200b\ufeff\u00ad\u0085\u2028\r\n\t\xff\xfe" +
	strings.Repeat("long \u202etext\u200d ", 5000)

var adv2NastyErrors = []struct {
	name string
	err  error
}{
	{"plain error", errors.New(adv2Nasty)},
	{"tether error", &tether.Error{Code: tether.CodeUnavailable, Op: "x\x1b", Message: adv2Nasty}},
	{"tether error with a made-up code", &tether.Error{Code: tether.Code("evil\x1b[31m\u202e\u200b" + strings.Repeat("c\u0007", 5000)), Message: adv2Nasty}},
	{"tether error with an empty message and a nasty cause", &tether.Error{Code: tether.CodeInternal, Err: errors.New(adv2Nasty)}},
	{"wrapped", fmt.Errorf("wrap %s: %w", adv2Nasty, &tether.Error{Code: tether.CodeConflict, Message: adv2Nasty})},
}

type adv2LeaseStore struct {
	tether.Store
	err atomic.Value // error
}

func (s *adv2LeaseStore) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	if e, _ := s.err.Load().(error); e != nil {
		return false, e
	}
	return s.Store.Lease(ctx, name, holder, now, until)
}

type adv2FailTransport struct {
	tether.Transport
	err atomic.Value // error
}

func (f *adv2FailTransport) Call(ctx context.Context, endpoint string, req *tether.Request) (*tether.Response, error) {
	if e, _ := f.err.Load().(error); e != nil {
		return nil, e
	}
	return f.Transport.Call(ctx, endpoint, req)
}

func TestAdv2LastErrorBounded(t *testing.T) {
	ctx := context.Background()
	check := func(t *testing.T, what string, p *peer, id string) {
		t.Helper()
		eventually(t, what+": a failure is recorded", func() bool { return p.get(t, id).Health.Failures >= 1 })
		if le := p.get(t, id).Health.LastError; adv2Dirty(le) != "" || le == "" {
			t.Errorf("%s: Health.LastError %s: %s", what, adv2Dirty(le), advShort(le))
		}
	}
	for _, ne := range adv2NastyErrors {
		t.Run("store lease fails/"+ne.name, func(t *testing.T) {
			w := newWorld(t)
			ls := &adv2LeaseStore{}
			alpha := w.node("alpha", alphaURL, realClock, func(c *tether.Config) { ls.Store = c.Store; c.Store = ls })
			beta := w.node("beta", betaURL, realClock, withReceiver(newInbox()))
			aid, _ := connect(t, alpha, beta, betaURL)
			ls.err.Store(ne.err)
			running(t, alpha)
			advSend(t, alpha, aid, "x", 1)
			check(t, "push", alpha, aid)
		})
		for _, tc := range []struct{ path, alphaEndpoint string }{{"push", alphaURL}, {"poll", ""}} {
			t.Run("transport fails/"+tc.path+"/"+ne.name, func(t *testing.T) {
				w := newWorld(t)
				ft := &adv2FailTransport{}
				alpha := w.node("alpha", tc.alphaEndpoint, realClock, func(c *tether.Config) { ft.Transport = c.Transport; c.Transport = ft })
				beta := w.node("beta", betaURL, realClock, withReceiver(newInbox()))
				aid, _ := connect(t, alpha, beta, betaURL)
				ft.err.Store(ne.err)
				running(t, alpha)
				if tc.path == "push" {
					advSend(t, alpha, aid, "x", 1)
				}
				check(t, tc.path, alpha, aid)
			})
		}
		t.Run("transport fails/handshake/"+ne.name, func(t *testing.T) {
			w := newWorld(t)
			ft := &adv2FailTransport{}
			alpha := w.node("alpha", "", func(c *tether.Config) { ft.Transport = c.Transport; c.Transport = ft })
			w.node("beta", betaURL)
			ac, _ := alpha.initiate(t, invite(betaURL))
			ft.err.Store(ne.err)
			_ = alpha.Sync(ctx)
			check(t, "private initiator asking", alpha, ac.ID)
		})
	}
	// A peer that is authentic but hostile: its signed refusals carry any
	// code and message it likes.
	for _, op := range []string{"push", "poll"} {
		t.Run("signed refusal with a nasty code and message/"+op, func(t *testing.T) {
			w := newWorld(t)
			ep := alphaURL
			if op == "poll" {
				ep = ""
			}
			alpha := w.node("alpha", ep, realClock)
			sw := &advSwitch{now: time.Now}
			beta := w.node("beta", "", realClock, func(c *tether.Config) { c.Endpoint = betaURL })
			sw.real, sw.peerID = beta, beta.ID()
			t.Cleanup(w.net.Listen(betaURL, sw))
			aid, _ := connect(t, alpha, beta, betaURL)
			bpriv := beta.privateKey(t)
			sw.take(func(_ context.Context, req *tether.Request, sw *advSwitch) (*tether.Response, error) {
				body, _ := json.Marshal(map[string]any{"refused": map[string]any{
					"code": "evil\x1b[31m\u202e\u200b" + strings.Repeat("c\u0007", 5000), "message": adv2Nasty, "retry_ms": 1,
				}})
				return &tether.Response{Auth: tether.SignResponse(bpriv, beta.ID(), req.Op, req.Auth, body, time.Now()), Body: body, Code: tether.CodeUnavailable}, nil
			})
			running(t, alpha)
			advSend(t, alpha, aid, "x", 1)
			check(t, op, alpha, aid)
		})
	}
}

// ---------------------------------------------------------------------------
// 9. Context ends: codes and Op.

// adv2BlockingTransport waits for the caller's context to end, then fails
// as a network would.
type adv2BlockingTransport struct{}

func (adv2BlockingTransport) Call(ctx context.Context, _ string, _ *tether.Request) (*tether.Response, error) {
	<-ctx.Done()
	return nil, &tether.Error{Code: tether.CodeUnavailable, Op: "blocking: call", Message: "request canceled"}
}

func TestAdv2ContextEndsMidway(t *testing.T) {
	type end struct {
		name     string
		ctx      func() (context.Context, context.CancelFunc)
		cancel   bool
		code     tether.Code
		sentinel error
	}
	ends := []end{
		{"canceled", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }, true, tether.CodeCanceled, context.Canceled},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 100*time.Millisecond)
		}, false, tether.CodeDeadlineExceeded, context.DeadlineExceeded},
	}
	checkErr := func(t *testing.T, what string, e end, err error, op string) {
		t.Helper()
		var te *tether.Error
		switch {
		case err == nil:
			t.Errorf("%s: no error", what)
		case tether.ErrorCode(err) != e.code || !errors.Is(err, e.sentinel):
			t.Errorf("%s, context %s midway: %v (code %q, Is(%v) %v); want code %q", what, e.name, err, tether.ErrorCode(err), e.sentinel, errors.Is(err, e.sentinel), e.code)
		case !errors.As(err, &te) || !strings.HasPrefix(te.Op, op):
			t.Errorf("%s: Op %q, want %q", what, te.Op, op)
		}
	}
	run := func(e end, f func(ctx context.Context) error) error {
		ctx, cancel := e.ctx()
		defer cancel()
		if e.cancel {
			go func() { time.Sleep(100 * time.Millisecond); cancel() }()
		}
		return f(ctx)
	}
	for _, e := range ends {
		t.Run(e.name, func(t *testing.T) {
			w := newWorld(t)
			alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
			aid, _ := connect(t, alpha, beta, "")
			// A held poll whose caller goes away.
			err := run(e, func(ctx context.Context) error {
				_, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, adv2PollBody(time.Hour, map[string]any{"id": aid, "cursor": 0})))
				return err
			})
			checkErr(t, "Handle of a held poll", e, err, "tether: handle")
			// Accept while the initiator does not answer.
			gamma := w.node("gamma", "", func(c *tether.Config) { c.Transport = adv2BlockingTransport{} })
			_, code := alpha.initiate(t, invite(""))
			err = run(e, func(ctx context.Context) error { _, err := gamma.Accept(ctx, code, tether.AcceptOptions{}); return err })
			checkErr(t, "Accept", e, err, "tether: accept")
			// Sync of a private initiator while the destination does not
			// answer.
			delta := w.node("delta", "", func(c *tether.Config) { c.Transport = adv2BlockingTransport{} })
			delta.initiate(t, invite(betaURL))
			err = run(e, func(ctx context.Context) error { return delta.Sync(ctx) })
			checkErr(t, "Sync", e, err, "tether: sync")
			// Sync of an acceptor re-presenting its acceptance.
			err = run(e, func(ctx context.Context) error { return gamma.Sync(ctx) })
			if advOnly(t, gamma) != nil {
				checkErr(t, "Sync of an acceptor", e, err, "tether: sync")
			}
		})
	}
}
