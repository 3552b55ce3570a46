package tether_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
)

// fuzzNow is inside the lifetime of the valid codes in
// testdata/fuzz/FuzzParseInvitation, which were issued at 2026-11-21 09:00 UTC.
var fuzzNow = time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)

// FuzzParseInvitation checks the decoder never panics, fails only with
// typed errors that do not quote the input, and decodes anything it accepts
// identically a second time.
func FuzzParseInvitation(f *testing.F) {
	f.Add("")
	f.Add(tether.InvitationPrefix)
	f.Add(tether.InvitationPrefix + "eyJhbGciOiJub25lIn0.e30.")
	f.Fuzz(func(t *testing.T, code string) {
		inv, err := tether.ParseInvitation(code, fuzzNow)
		if err != nil {
			var e *tether.Error
			if !errors.As(err, &e) || e.Code == tether.CodeInternal {
				t.Fatalf("untyped or internal error: %v", err)
			}
			if len(code) > 24 && strings.Contains(err.Error(), code[len(code)-24:]) {
				t.Fatalf("error quotes the input: %v", err)
			}
			return
		}
		again, err := tether.ParseInvitation(code, fuzzNow)
		if err != nil {
			t.Fatalf("accepted once, rejected the second time: %v", err)
		}
		if diff := cmp.Diff(inv, again); diff != "" {
			t.Fatalf("two decodings differ (-first +second):\n%s", diff)
		}
		if inv.KeyID != tether.KeyID(inv.Key) || inv.Version != tether.InvitationVersion || !inv.ExpiresAt.After(inv.IssuedAt) {
			t.Fatalf("accepted an inconsistent invitation: %+v", inv)
		}
		if inv.Endpoint == "" && inv.Destination == "" {
			t.Fatal("accepted an invitation with both sides private")
		}
	})
}

// The corpus must hold valid codes, or the fuzzer never reaches the
// accepting path.
func TestFuzzCorpusHasValidCodes(t *testing.T) {
	for _, name := range []string{"seed0", "seed1"} {
		raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzParseInvitation", name))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitN(string(raw), "\n", 3)
		code, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "string("), ")"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tether.ParseInvitation(code, fuzzNow); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
}

// FuzzHandle feeds arbitrary requests to a node with live connections: it
// never panics, never accepts an unsigned request, and fails only with
// typed errors.
func FuzzHandle(f *testing.F) {
	for _, op := range []tether.Op{tether.OpAccept, tether.OpStatus, tether.OpPush, tether.OpPoll, tether.OpClose, tether.OpResume, "bogus"} {
		f.Add(string(op), "", []byte(`{}`))
		f.Add(string(op), "eyJhbGciOiJFZERTQSJ9.e30.AAAA", []byte(`{"messages":[{"seq":1,"payload":"aGk="}]}`))
		f.Add(string(op), "a.b.c", []byte(`{"connections":[{"id":"conn_00000000000000000000000001","cursor":-1}]}`))
		f.Add(string(op), "", []byte(`{"code":"tether_inv_x.y.z.AAAAAA","instance":"inst_00000000000000000000000001"}`))
	}
	w := newWorld(f)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	_, bid := connect(f, alpha, beta, "")
	abid := beta.get(f, bid).RemoteConnection
	f.Add(string(tether.OpPush), "", []byte(`{"messages":[{"seq":1,"payload":"aGk="}]}`))
	f.Fuzz(func(t *testing.T, op, auth string, body []byte) {
		resp, err := alpha.Handle(context.Background(), &tether.Request{Op: tether.Op(op), Auth: auth, Body: body})
		if err == nil {
			t.Fatalf("accepted an unsigned request (op %q): %+v", op, resp)
		}
		var e *tether.Error
		if !errors.As(err, &e) || e.Code == tether.CodeInternal {
			t.Fatalf("untyped or internal error: %v", err)
		}
		if c := alpha.get(t, abid); c.Status != tether.StatusActive {
			t.Fatalf("a refused request changed the connection to %s", c.Status)
		}
	})
}
