package tether_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

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
// never panics, never accepts an unsigned request (but the info request,
// answered with the node's Info only), and fails only with typed errors.
func FuzzHandle(f *testing.F) {
	for _, op := range []tether.Op{tether.OpAccept, tether.OpStatus, tether.OpPush, tether.OpPoll, tether.OpClose, tether.OpResume, tether.OpInfo, "bogus"} {
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
		if op == string(tether.OpInfo) && err == nil {
			// The one operation answered without authentication: the
			// node's unsigned Info, nothing else.
			if info, perr := tether.ParseInfo(resp.Body); perr != nil || resp.Auth != "" || !cmp.Equal(*info, alpha.Info()) {
				t.Fatalf("info answer %+v: %v", resp, perr)
			}
		} else if err == nil {
			t.Fatalf("accepted an unsigned request (op %q): %+v", op, resp)
		} else if e := (*tether.Error)(nil); !errors.As(err, &e) || e.Code == tether.CodeInternal {
			t.Fatalf("untyped or internal error: %v", err)
		}
		if c := alpha.get(t, abid); c.Status != tether.StatusActive {
			t.Fatalf("a refused request changed the connection to %s", c.Status)
		}
	})
}

// FuzzCheckText feeds arbitrary text to Connection.Validate as a name and
// as a description: whatever it accepts has no control character and no
// invisible or direction-changing character outside the contexts the
// package allows (ZWJ in emoji sequences or after a virama, ZWNJ between
// letters, variation selectors after a base, tags in a flag sequence).
func FuzzCheckText(f *testing.F) {
	for _, s := range []string{
		"Support to Engineering", "Pay\u202Epal", "Dev \U0001F469\u200D\U0001F4BB", "\u0645\u06CC\u200C\u062E",
		"\u0DC1\u0DCA\u200D\u0DBB\u0DD3", "\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E\U000E0067\U000E007F",
		"#\uFE0F\u20E3", "a\u200Db", "\uFE0F", "\U000E007F", "a\u00ADb", "\u3164", "\U0001F3F3\uFE0F\u200D\U0001F308",
		"\u06CC\u200C\u0616", "\u0645\u031C\u200C\u062E",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		for _, set := range []func(*tether.Connection){
			func(c *tether.Connection) { c.Name = s },
			func(c *tether.Connection) { c.Description = s },
		} {
			c := validConn()
			set(c)
			if err := c.Validate(); err != nil {
				if !errors.Is(err, tether.ErrInvalid) {
					t.Fatalf("Validate(%+q): %v, want invalid", s, err)
				}
				continue
			}
			if why := visible(s); why != "" {
				t.Fatalf("Validate accepted %+q: %s", s, why)
			}
		}
	})
}

// visible checks the promise of FuzzCheckText on its own terms, and returns
// what breaks it.
func visible(s string) string {
	runes := []rune(s)
	at := func(i int) rune {
		if i < 0 || i >= len(runes) {
			return -1
		}
		return runes[i]
	}
	isTag := func(r rune) bool { return r >= 0xE0020 && r <= 0xE007F }
	pict := func(r rune) bool { return unicode.IsSymbol(r) || unicode.IsPunct(r) || r >= 0x1F000 && r <= 0x1FFFD }
	for i, r := range runes {
		prev, next := at(i-1), at(i+1)
		switch {
		case !utf8.ValidRune(r) || unicode.IsControl(r):
			return fmt.Sprintf("control character %U at %d", r, i)
		case r == 0x200D:
			base := i - 1
			for at(base) == 0xFE0F || at(base) >= 0x1F3FB && at(base) <= 0x1F3FF {
				base--
			}
			emoji := pict(at(base)) && pict(next)
			virama := unicode.Is(unicode.Mn, prev) && unicode.IsLetter(next)
			if !emoji && !virama {
				return fmt.Sprintf("ZWJ at %d outside an emoji sequence or after a virama", i)
			}
		case r == 0x200C:
			base := i - 1
			for unicode.IsMark(at(base)) {
				base--
			}
			if !unicode.IsLetter(next) || !unicode.IsLetter(at(base)) || next < 0x0600 || at(base) < 0x0600 {
				return fmt.Sprintf("ZWNJ at %d not between letters of a joining script", i)
			}
		case isTag(r):
			j := i
			for isTag(at(j)) {
				j--
			}
			k := i
			for isTag(at(k)) && at(k) != 0xE007F {
				k++
			}
			if at(j) != 0x1F3F4 || at(k) != 0xE007F || at(j+1) == 0xE007F {
				return fmt.Sprintf("tag %U at %d outside a flag tag sequence", r, i)
			}
		case unicode.Is(unicode.Variation_Selector, r):
			if prev < 0 || unicode.IsSpace(prev) || unicode.IsMark(prev) || unicode.Is(unicode.Cf, prev) {
				return fmt.Sprintf("variation selector %U at %d without a base", r, i)
			}
		case unicode.Is(unicode.Cf, r), unicode.Is(unicode.Other_Default_Ignorable_Code_Point, r), r == 0x2028, r == 0x2029:
			return fmt.Sprintf("invisible character %U at %d", r, i)
		}
	}
	return ""
}

// FuzzNotice has an authenticated peer push arbitrary control messages:
// whatever the payload, the node answers (signed), never fails internally,
// and leaves a connection that passes Validate; a notice it cannot apply is
// not acknowledged.
func FuzzNotice(f *testing.F) {
	for _, s := range []string{
		`{"type":"paused"}`, `{"type":"activated"}`, `{"type":"deleted"}`, `{"type":"rekey"}`,
		`{"type":"rekey","key":"AAAA","proof":"AAAA"}`, `{"type":"later"}`, `null`, `[]`, `{`, ``,
	} {
		f.Add([]byte(s))
	}
	w := newWorld(f)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	aid, _ := connect(f, alpha, beta, "")
	ctx := context.Background()
	f.Fuzz(func(t *testing.T, payload []byte) {
		if alpha.get(t, aid).Status == tether.StatusDeleted {
			aid, _ = connect(t, alpha, beta, "")
		}
		cursor, err := alpha.store.InboxCursor(ctx, aid)
		if err != nil {
			t.Fatal(err)
		}
		body, err := json.Marshal(map[string]any{"messages": []map[string]any{{"seq": cursor + 1, "payload": payload, "control": true}}})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := alpha.Handle(ctx, tether.SignRequest(beta.Node, alphaURL, tether.OpPush, aid, body))
		if err != nil || resp == nil || resp.Code == tether.CodeInternal {
			t.Fatalf("answer to a signed push: %+v, %v", resp, err)
		}
		c := alpha.get(t, aid)
		if err := c.Validate(); err != nil {
			t.Fatalf("the notice left an invalid connection: %v", err)
		}
		var reply struct{ Acked int64 }
		_ = json.Unmarshal(resp.Body, &reply)
		if now, _ := alpha.store.InboxCursor(ctx, aid); reply.Acked != now {
			t.Fatalf("answered acked %d, inbox cursor at %d", reply.Acked, now)
		}
	})
}

// FuzzParseInfo checks the parser of a probe's answer: it never panics,
// fails only with CodeProtocol or CodeTooLarge errors that do not quote
// the input, and whatever it accepts holds known modes only, each once,
// a bounded name and protocol, and encodes to JSON it parses again
// identically.
func FuzzParseInfo(f *testing.F) {
	for _, s := range []string{
		`{"name":"Acme Engineering","protocol":"tether/1","modes":["basic","visual","script"]}`,
		`{"protocol":"tether/1","modes":[]}`,
		`{"name":"","protocol":"tether/2","modes":["hologram","script","script","basic"],"extra":{"a":[1,2]}}`,
		`{"name":"Dev \ud83d\udc69\u200d\ud83d\udcbb","protocol":"tether/1","modes":["visual"]}`,
		`{"name":"Pay\u202epal","protocol":"tether/1","modes":["basic"]}`,
		`{"NAME":"x","Protocol":"tether/1","MODES":["basic"]}`,
		`{"protocol":1,"modes":["basic"]}`, `{"protocol":"tether/1","modes":null}`, `{"protocol":"tether/1","modes":[1]}`,
		`{"protocol":"tether/1","modes":["basic"]} {}`, `null`, `[]`, `"x"`, ``, `{`, "{\"name\":\"\xff\",\"protocol\":\"p\",\"modes\":[]}",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := tether.ParseInfo(b)
		if err != nil {
			if c := tether.ErrorCode(err); c != tether.CodeProtocol && c != tether.CodeTooLarge {
				t.Fatalf("error with code %q: %v", c, err)
			}
			if len(b) > 24 && strings.Contains(err.Error(), string(b[len(b)-24:])) {
				t.Fatalf("error quotes the input: %v", err)
			}
			return
		}
		if info.Modes == nil || len(info.Modes) > 3 {
			t.Fatalf("modes %v", info.Modes)
		}
		for i, m := range info.Modes {
			if m != tether.ModeBasic && m != tether.ModeVisual && m != tether.ModeScript || slices.Contains(info.Modes[:i], m) {
				t.Fatalf("modes %q: unknown or repeated", info.Modes)
			}
		}
		if info.Protocol == "" || len(info.Protocol) > tether.MaxProtocolLen || utf8.RuneCountInString(info.Name) > tether.MaxNameLen {
			t.Fatalf("accepted %+v", info)
		}
		if why := visible(info.Name); why != "" {
			t.Fatalf("accepted the name %+q: %s", info.Name, why)
		}
		out, err := json.Marshal(info)
		if err != nil {
			t.Fatal(err)
		}
		again, err := tether.ParseInfo(out)
		if err != nil {
			t.Fatalf("its own encoding %s refused: %v", out, err)
		}
		if diff := cmp.Diff(info, again); diff != "" {
			t.Fatalf("re-parsed differently (-first +second):\n%s", diff)
		}
	})
}
