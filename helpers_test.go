package tether_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"strings"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/tethertest"
)

// t0 is the fake clock's start in every test.
var t0 = time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)

// world is a set of nodes on one in-memory network with one fake clock.
type world struct {
	t     testing.TB
	net   *tethertest.Network
	clock *tethertest.Clock
}

func newWorld(t testing.TB) *world {
	t.Helper()
	w := &world{t: t, net: tethertest.NewNetwork(), clock: tethertest.NewClock(t0)}
	w.net.SetClock(w.clock)
	return w
}

type peer struct {
	*tether.Node
	name  string
	store *memstore.Store
}

// node opens a node named name; endpoint "" makes it private.
func (w *world) node(name, endpoint string, mods ...func(*tether.Config)) *peer {
	w.t.Helper()
	st := memstore.New()
	cfg := tether.Config{Store: st, Transport: w.net.Transport(name), Endpoint: endpoint, Clock: w.clock}
	for _, m := range mods {
		m(&cfg)
	}
	n, err := tether.Open(context.Background(), cfg)
	if err != nil {
		w.t.Fatalf("Open(%s): %v", name, err)
	}
	if endpoint != "" {
		w.t.Cleanup(w.net.Listen(endpoint, n))
	}
	return &peer{Node: n, name: name, store: st}
}

func invite(dest string) tether.InitiateRequest {
	return tether.InitiateRequest{
		Owner: "support-team", Destination: dest, Mode: tether.ModeScript,
		LocalName: "Support", RemoteName: "Engineering",
		Name: "Support to Engineering", Description: "Escalations from support",
	}
}

func (p *peer) initiate(t testing.TB, req tether.InitiateRequest) (*tether.Connection, string) {
	t.Helper()
	c, code, err := p.Initiate(context.Background(), req)
	if err != nil {
		t.Fatalf("%s: Initiate: %v", p.name, err)
	}
	return c, code
}

func (p *peer) get(t testing.TB, id string) *tether.Connection {
	t.Helper()
	c, err := p.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("%s: Get(%s): %v", p.name, id, err)
	}
	return c
}

func (p *peer) count(t testing.TB) int {
	t.Helper()
	conns, _, err := p.List(context.Background(), tether.ListOptions{Limit: tether.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	return len(conns)
}

func (p *peer) privateKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	inst, err := p.store.LoadInstance(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return inst.Keys[0].Private
}

func wantCode(t testing.TB, err error, want tether.Code) {
	t.Helper()
	if got := tether.ErrorCode(err); got != want {
		t.Fatalf("error = %v (code %q), want code %q", err, got, want)
	}
	var e *tether.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is %T, want *tether.Error", err, err)
	}
}

// Codes are built by hand below from the documented format, as an attacker
// would.

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func wrapCode(jws string) string {
	body := tether.InvitationPrefix + jws
	var sum [4]byte
	binary.BigEndian.PutUint32(sum[:], crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli)))
	return body + "." + b64(sum[:])
}

// splitCode returns the header and claims of a code as maps.
func splitCode(t testing.TB, code string) (map[string]any, map[string]any) {
	t.Helper()
	jws := strings.TrimPrefix(code[:strings.LastIndexByte(code, '.')], tether.InvitationPrefix)
	parts := strings.Split(jws, ".")
	var h, c map[string]any
	for i, v := range []*map[string]any{&h, &c} {
		raw, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, v); err != nil {
			t.Fatal(err)
		}
	}
	return h, c
}

// signCode signs header and claims with priv as EdDSA and wraps the result.
func signCode(t testing.TB, priv ed25519.PrivateKey, header, claims map[string]any) string {
	t.Helper()
	hb, err := json.Marshal(header)
	if err != nil {
		t.Fatal(err)
	}
	cb, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	in := b64(hb) + "." + b64(cb)
	return wrapCode(in + "." + b64(ed25519.Sign(priv, []byte(in))))
}
