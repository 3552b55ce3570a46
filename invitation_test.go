package tether_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tetherkit/tether"
)

// fixture is a public initiator with one invitation for a private
// destination.
type fixture struct {
	w     *world
	alpha *peer
	conn  *tether.Connection
	code  string
	priv  ed25519.PrivateKey
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	w := newWorld(t)
	alpha := w.node("alpha", "https://alpha.example/tether")
	c, code := alpha.initiate(t, invite(""))
	return &fixture{w: w, alpha: alpha, conn: c, code: code, priv: alpha.privateKey(t)}
}

// parse parses a code at the fixture clock's time.
func (f *fixture) parse(code string) (*tether.Invitation, error) {
	return tether.ParseInvitation(code, f.w.clock.Now())
}

// resign returns the fixture's code with header and claims changed by mod,
// properly signed and checksummed.
func (f *fixture) resign(t *testing.T, mod func(h, c map[string]any)) string {
	t.Helper()
	h, c := splitCode(t, f.code)
	mod(h, c)
	return signCode(t, f.priv, h, c)
}

func TestInvitationRoundTrip(t *testing.T) {
	f := newFixture(t)
	if len(f.code) > 700 {
		t.Errorf("code is %d characters, want at most 700", len(f.code))
	}
	inv, err := f.parse(f.code)
	if err != nil {
		t.Fatalf("ParseInvitation: %v", err)
	}
	want := &tether.Invitation{
		Issuer: f.alpha.ID(), KeyID: f.alpha.Fingerprint(), Key: f.priv.Public().(ed25519.PublicKey),
		Connection: f.conn.ID, Name: "Support to Engineering", Description: "Escalations from support",
		InitiatorName: "Support", AcceptorName: "Engineering", Mode: tether.ModeScript,
		Endpoint: "https://alpha.example/tether", Destination: "",
		IssuedAt: t0, NotBefore: t0, ExpiresAt: t0.Add(tether.DefaultInvitationTTL), Version: tether.InvitationVersion,
	}
	if diff := cmp.Diff(want, inv, cmpopts.IgnoreFields(tether.Invitation{}, "ID")); diff != "" {
		t.Fatalf("invitation (-want +got):\n%s", diff)
	}
	if inv.ID != f.conn.Invitation {
		t.Errorf("invitation ID %q, connection records %q", inv.ID, f.conn.Invitation)
	}
	if raw, err := base64.RawURLEncoding.DecodeString(inv.ID); err != nil || len(raw) != 16 {
		t.Errorf("jti %q is not 128 bits of base64url", inv.ID)
	}
	if !inv.DestinationPrivate() || inv.InitiatorPrivate() {
		t.Errorf("DestinationPrivate %v InitiatorPrivate %v, want true false", inv.DestinationPrivate(), inv.InitiatorPrivate())
	}
	// Preview through the node says the same.
	p, err := f.alpha.Preview(f.code)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(inv, p); diff != "" {
		t.Fatalf("Preview differs from ParseInvitation (-parse +preview):\n%s", diff)
	}
	// Two invitations never share an ID.
	_, code2 := f.alpha.initiate(t, invite(""))
	inv2, _ := f.parse(code2)
	if inv2.ID == inv.ID {
		t.Fatal("two invitations have the same jti")
	}
}

// SECURITY.md 1: only EdDSA.
func TestInvitationRejectsOtherAlgorithms(t *testing.T) {
	f := newFixture(t)
	h, c := splitCode(t, f.code)
	pub := f.priv.Public().(ed25519.PublicKey)
	unsigned := func(alg string, sig []byte) string {
		hh := maps.Clone(h)
		hh["alg"] = alg
		in := b64(mustJSON(t, hh)) + "." + b64(mustJSON(t, c))
		return wrapCode(in + "." + b64(sig))
	}
	hs256 := func() string {
		hh := maps.Clone(h)
		hh["alg"] = "HS256"
		in := b64(mustJSON(t, hh)) + "." + b64(mustJSON(t, c))
		m := hmac.New(sha256.New, pub)
		m.Write([]byte(in))
		return wrapCode(in + "." + b64(m.Sum(nil)))
	}
	edSig := func(alg string) string {
		hh := maps.Clone(h)
		hh["alg"] = alg
		return signCode(t, f.priv, hh, c)
	}
	for name, code := range map[string]string{
		"none":                            unsigned("none", []byte("x")),
		"HS256 keyed with the public key": hs256(),
		"noNE":                            edSig("noNE"),
		"eddsa":                           edSig("eddsa"),
		"ES256":                           edSig("ES256"),
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.parse(code)
			if err == nil {
				t.Fatal("accepted")
			}
			if c := tether.ErrorCode(err); c != tether.CodeBadSignature && c != tether.CodeMalformed {
				t.Fatalf("code %q (%v), want bad_signature or malformed", c, err)
			}
			// The initiator refuses it too when it is presented.
			acceptor := f.w.node("beta-"+strings.ReplaceAll(name, " ", "-"), "")
			if _, err := acceptor.Accept(context.Background(), code, tether.AcceptOptions{}); err == nil {
				t.Fatal("Accept succeeded")
			}
			if acceptor.count(t) != 0 {
				t.Fatal("acceptor stored a connection")
			}
		})
	}
	// "none" with an empty third segment is not even three segments.
	_, err := f.parse(wrapCode(b64(mustJSON(t, map[string]any{"alg": "none", "typ": "tether-inv+jwt", "kid": h["kid"]})) + "." + b64(mustJSON(t, c)) + "."))
	wantCode(t, err, tether.CodeMalformed)
}

func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// SECURITY.md 2: the exact type, and no confusion with request tokens.
func TestInvitationType(t *testing.T) {
	f := newFixture(t)
	for name, typ := range map[string]any{"missing": nil, "JWT": "JWT", "request token": "tether-req+jwt", "case": "Tether-Inv+JWT"} {
		t.Run(name, func(t *testing.T) {
			code := f.resign(t, func(h, c map[string]any) {
				if typ == nil {
					delete(h, "typ")
				} else {
					h["typ"] = typ
				}
			})
			_, err := f.parse(code)
			wantCode(t, err, tether.CodeMalformed)
		})
	}

	// A real request token pasted as an invitation, and the reverse.
	var captured *tether.Request
	f.w.net.Faults(nil)
	stop := f.w.net.Listen("https://spy.example", tether.Handler(handlerFunc(func(ctx context.Context, r *tether.Request) (*tether.Response, error) {
		captured = r
		return f.alpha.Handle(ctx, r)
	})))
	defer stop()
	spyCode := f.resign(t, func(h, c map[string]any) { c["ep"] = "https://spy.example" })
	beta := f.w.node("beta", "")
	// alpha refuses it (the request was addressed to another endpoint), but
	// the spy saw the request token.
	_, _ = beta.Accept(context.Background(), spyCode, tether.AcceptOptions{})
	if captured == nil {
		t.Fatal("no request captured")
	}
	_, err := f.parse(wrapCode(captured.Auth))
	wantCode(t, err, tether.CodeMalformed)

	jws := strings.TrimPrefix(f.code[:strings.LastIndexByte(f.code, '.')], tether.InvitationPrefix)
	_, err = f.alpha.Handle(context.Background(), &tether.Request{Op: tether.OpAccept, Auth: jws, Body: captured.Body})
	wantCode(t, err, tether.CodeUnauthenticated)
}

type handlerFunc func(context.Context, *tether.Request) (*tether.Response, error)

func (h handlerFunc) Handle(ctx context.Context, r *tether.Request) (*tether.Response, error) {
	return h(ctx, r)
}

// SECURITY.md 3: one flipped bit anywhere is rejected; with the checksum
// left alone it is caught as damage, with the checksum recomputed (an
// attacker) by the signature or the parser.
func TestInvitationBitFlips(t *testing.T) {
	f := newFixture(t)
	body := f.code[:strings.LastIndexByte(f.code, '.')]
	jws := strings.TrimPrefix(body, tether.InvitationPrefix)
	parts := strings.Split(jws, ".")
	for seg, name := range []string{"header", "payload", "signature"} {
		raw, _ := base64.RawURLEncoding.DecodeString(parts[seg])
		for i := range raw {
			for _, bit := range []byte{0x01, 0x80} {
				mod := append([]byte(nil), raw...)
				mod[i] ^= bit
				p := append([]string(nil), parts...)
				p[seg] = b64(mod)
				tampered := strings.Join(p, ".")
				if _, err := f.parse(wrapCode(tampered)); err == nil {
					t.Fatalf("%s byte %d bit %#x flipped: accepted", name, i, bit)
				}
				// Same bytes, old checksum: a local "damaged" error.
				_, err := f.parse(tether.InvitationPrefix + tampered + f.code[len(body):])
				if tampered != jws {
					wantCode(t, err, tether.CodeDamagedCode)
				}
			}
		}
	}
}

// SECURITY.md 4: structure is checked before any signature work, in bounded
// memory.
func TestInvitationStructure(t *testing.T) {
	f := newFixture(t)
	jws := strings.TrimPrefix(f.code[:strings.LastIndexByte(f.code, '.')], tether.InvitationPrefix)
	p := strings.Split(jws, ".")
	huge := strings.Repeat("A", 1<<20)
	for name, code := range map[string]string{
		"two segments":         wrapCode(p[0] + "." + p[1]),
		"four segments":        wrapCode(jws + "." + p[2]),
		"empty segment":        wrapCode(p[0] + ".." + p[2]),
		"padding":              wrapCode(p[0] + "==." + p[1] + "." + p[2]),
		"space inside":         wrapCode(p[0] + "." + p[1][:10] + " " + p[1][10:] + "." + p[2]),
		"newline in signature": wrapCode(p[0] + "." + p[1] + "." + p[2][:20] + "\n" + p[2][20:]),
		"JSON serialization":   wrapCode(`{"payload":"` + p[1] + `","protected":"` + p[0] + `","signature":"` + p[2] + `"}`),
		"standard base64":      wrapCode(p[0] + "." + p[1] + "+/." + p[2]),
		"non-ASCII":            wrapCode(p[0] + "." + p[1] + "é." + p[2]),
		"1 MiB":                wrapCode(huge + "." + huge + "." + huge),
		"no prefix":            jws,
		"empty":                "",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.parse(code)
			wantCode(t, err, tether.CodeMalformed)
			if strings.Contains(err.Error(), p[1]) || strings.Contains(err.Error(), p[2]) {
				t.Fatalf("error quotes the code: %v", err)
			}
		})
	}
	// A 1 MiB input is refused without reading it: allocation does not
	// grow with its size.
	code := wrapCode(huge)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 100 {
		_, _ = f.parse(code)
	}
	runtime.ReadMemStats(&after)
	if perCall := (after.TotalAlloc - before.TotalAlloc) / 100; perCall > 4<<10 {
		t.Fatalf("rejecting a 1 MiB code allocated %d bytes per call", perCall)
	}
}

// SECURITY.md 5: any single mistyped character is a local "damaged code".
func TestInvitationTypos(t *testing.T) {
	f := newFixture(t)
	w := f.w
	beta := w.node("beta", "")
	sent := w.net.Sent("beta")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
	for i := len(tether.InvitationPrefix); i < len(f.code); i++ {
		for _, r := range []byte{alphabet[i%len(alphabet)], alphabet[(i*7+3)%len(alphabet)]} {
			if r == f.code[i] {
				continue
			}
			typo := f.code[:i] + string(r) + f.code[i+1:]
			_, err := f.parse(typo)
			if tether.ErrorCode(err) != tether.CodeDamagedCode {
				t.Fatalf("char %d %q->%q: error %v, want damaged_code", i, f.code[i], r, err)
			}
		}
	}
	// Lost, doubled and swapped characters.
	for _, typo := range []string{
		f.code[:100] + f.code[101:],
		f.code[:100] + f.code[100:101] + f.code[100:],
		f.code[:100] + f.code[101:102] + f.code[100:101] + f.code[102:],
		f.code[:len(f.code)-1],
	} {
		if typo == f.code {
			continue
		}
		_, err := beta.Accept(context.Background(), typo, tether.AcceptOptions{})
		wantCode(t, err, tether.CodeDamagedCode)
		if !strings.Contains(err.Error(), "copy it again") {
			t.Errorf("message %q does not tell the user what to do", err)
		}
	}
	if w.net.Sent("beta") != sent {
		t.Fatal("a damaged code caused a network request")
	}
}

// SECURITY.md 6: lifetimes, with a fake clock.
func TestInvitationTimes(t *testing.T) {
	f := newFixture(t)
	now := f.w.clock.Now()
	unix := func(d time.Duration) float64 { return float64(now.Add(d).Unix()) }
	tests := []struct {
		name string
		mod  func(h, c map[string]any)
		at   time.Duration // clock offset when parsing
		want tether.Code
	}{
		{"valid", func(h, c map[string]any) {}, 0, ""},
		{"exp passed", func(h, c map[string]any) {}, tether.DefaultInvitationTTL + tether.InvitationLeeway, tether.CodeExpired},
		{"exp inside leeway", func(h, c map[string]any) {}, tether.DefaultInvitationTTL + tether.InvitationLeeway - time.Second, ""},
		{"exp missing", func(h, c map[string]any) { delete(c, "exp") }, 0, tether.CodeMalformed},
		{"iat missing", func(h, c map[string]any) { delete(c, "iat") }, 0, tether.CodeMalformed},
		{"nbf missing", func(h, c map[string]any) { delete(c, "nbf") }, 0, tether.CodeMalformed},
		{"iat in the future beyond the clock skew", func(h, c map[string]any) {
			c["iat"], c["nbf"] = unix(tether.ClockSkew+time.Second), unix(tether.ClockSkew+time.Second)
		}, 0, tether.CodeClockSkew},
		{"nbf in the future beyond the clock skew", func(h, c map[string]any) { c["nbf"] = unix(10 * time.Minute) }, 0, tether.CodeNotYetValid},
		{"iat and nbf inside the clock skew", func(h, c map[string]any) {
			c["iat"], c["nbf"] = unix(tether.ClockSkew-time.Second), unix(tether.ClockSkew-time.Second)
		}, 0, ""},
		{"exp passed by the clock skew, behind", func(h, c map[string]any) {}, tether.DefaultInvitationTTL + tether.ClockSkew, tether.CodeExpired},
		{"lifetime over the maximum", func(h, c map[string]any) { c["exp"] = unix(tether.MaxInvitationTTL + time.Hour) }, 0, tether.CodeMalformed},
		{"exp before iat", func(h, c map[string]any) { c["exp"] = unix(-time.Hour) }, 0, tether.CodeMalformed},
		{"exp as a string", func(h, c map[string]any) { c["exp"] = "tomorrow" }, 0, tether.CodeMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code := f.resign(t, tc.mod)
			_, err := tether.ParseInvitation(code, now.Add(tc.at))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("rejected: %v", err)
				}
				return
			}
			wantCode(t, err, tc.want)
		})
	}
}

// SECURITY.md 7: kid is an opaque key to a map, never echoed.
func TestInvitationKeyID(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	beta := f.w.node("beta", "")
	for name, kid := range map[string]string{
		"SQL":         "x' OR '1'='1'; DROP TABLE connections; --",
		"path":        "../../../../etc/passwd",
		"1 KB junk":   strings.Repeat("Zz9", 341),
		"another key": tether.KeyID(ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)),
	} {
		t.Run(name, func(t *testing.T) {
			code := f.resign(t, func(h, c map[string]any) { h["kid"] = kid })
			_, err := f.parse(code)
			wantCode(t, err, tether.CodeUnknownKey)
			if strings.Contains(err.Error(), kid) {
				t.Fatalf("error echoes the kid: %v", err)
			}
		})
	}
	// The initiator, which looks kid up among its own keys, says the same:
	// a code whose kid and key are another key's, signed with that key.
	other := ed25519.NewKeyFromSeed(append(make([]byte, 31), 7))
	h, c := splitCode(t, f.code)
	h["kid"] = tether.KeyID(other.Public().(ed25519.PublicKey))
	c["key"] = b64(other.Public().(ed25519.PublicKey))
	forged := signCode(t, other, h, c)
	if _, err := f.parse(forged); err != nil {
		t.Fatalf("a self-consistent forged code fails to parse: %v", err)
	}
	_, err := beta.Accept(ctx, forged, tether.AcceptOptions{})
	wantCode(t, err, tether.CodeUnknownKey)
	if beta.count(t) != 0 || f.alpha.get(t, f.conn.ID).Status != tether.StatusPending {
		t.Fatal("a forged code changed state")
	}
	// 10 KB of junk does not fit in a code: refused before parsing.
	code := f.resign(t, func(h, c map[string]any) { h["kid"] = strings.Repeat("J", 10<<10) })
	_, err = f.parse(code)
	wantCode(t, err, tether.CodeMalformed)
	if strings.Contains(err.Error(), "JJJJ") {
		t.Fatalf("error echoes the kid: %v", err)
	}
}

// SECURITY.md 8: key-locating headers are refused and never followed.
func TestInvitationKeyHeadersNotFollowed(t *testing.T) {
	f := newFixture(t)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
	defer srv.Close()
	for _, hdr := range []string{"jku", "x5u", "jwk", "crit"} {
		t.Run(hdr, func(t *testing.T) {
			code := f.resign(t, func(h, c map[string]any) {
				if hdr == "jwk" {
					h[hdr] = map[string]any{"kty": "OKP", "crv": "Ed25519", "x": c["key"]}
				} else {
					h[hdr] = srv.URL + "/keys"
				}
			})
			_, err := f.parse(code)
			wantCode(t, err, tether.CodeMalformed)
			beta := f.w.node("beta-"+hdr, "")
			_, err = beta.Accept(context.Background(), code, tether.AcceptOptions{})
			wantCode(t, err, tether.CodeMalformed)
		})
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("%d requests were made to the URL in a header", n)
	}
}

func TestInvitationClaimsChecked(t *testing.T) {
	f := newFixture(t)
	for name, mod := range map[string]func(h, c map[string]any){
		"future version":   func(h, c map[string]any) { c["ver"] = 2 },
		"no version":       func(h, c map[string]any) { delete(c, "ver") },
		"short jti":        func(h, c map[string]any) { c["jti"] = "abc" },
		"bad issuer":       func(h, c map[string]any) { c["iss"] = "someone" },
		"bad connection":   func(h, c map[string]any) { c["cid"] = "conn_x" },
		"control in name":  func(h, c map[string]any) { c["name"] = "a\u0007b" },
		"empty short name": func(h, c map[string]any) { c["isn"] = "" },
		"bad mode":         func(h, c map[string]any) { c["mode"] = "magic" },
		"bad endpoint":     func(h, c map[string]any) { c["ep"] = "ftp://alpha.example" },
		"both private":     func(h, c map[string]any) { delete(c, "ep") },
		"extra header":     func(h, c map[string]any) { h["cty"] = "JWT" },
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.parse(f.resign(t, mod))
			if err == nil {
				t.Fatal("accepted")
			}
			if c := tether.ErrorCode(err); c != tether.CodeMalformed && c != tether.CodeProtocol && c != tether.CodeBothPrivate {
				t.Fatalf("code %q: %v", c, err)
			}
		})
	}
}

// SECURITY.md 39: a spoofed name never reaches a Preview. Initiate refuses
// it; a code forged with such a name (properly signed) is refused by
// ParseInvitation, Preview and Accept, locally.
func TestInvitationSpoofedNames(t *testing.T) {
	f := newFixture(t)
	req := invite("")
	req.Name = "Support\u202Egnireenigne"
	_, _, err := f.alpha.Initiate(context.Background(), req)
	wantCode(t, err, tether.CodeInvalid)
	if !strings.Contains(err.Error(), "Name: contains an invisible or direction-changing character (U+202E)") {
		t.Fatalf("Initiate: %v does not name the field and character", err)
	}

	beta := f.w.node("beta", "")
	sent := f.w.net.Sent("beta")
	for claim, text := range map[string]string{
		"name": "Support\u202Egnireenigne",
		"desc": "Escalations\u2066 from support",
		"isn":  "Sup\u200Bport",
		"asn":  "Engi\u00ADneering",
	} {
		t.Run(claim, func(t *testing.T) {
			code := f.resign(t, func(h, c map[string]any) { c[claim] = text })
			_, err := f.parse(code)
			wantCode(t, err, tether.CodeMalformed)
			if !strings.Contains(err.Error(), "claim "+claim+": contains an invisible or direction-changing character") {
				t.Fatalf("ParseInvitation: %v does not name the claim", err)
			}
			_, err = beta.Preview(code)
			wantCode(t, err, tether.CodeMalformed)
			_, err = beta.Accept(context.Background(), code, tether.AcceptOptions{})
			wantCode(t, err, tether.CodeMalformed)
		})
	}
	if beta.count(t) != 0 || f.w.net.Sent("beta") != sent {
		t.Fatal("a spoofed invitation stored a connection or caused a request")
	}
}

// SECURITY.md 5: the checksum covers the prefix, so a typo in it is the same
// local "damaged code" as a typo anywhere else; what is not a code at all
// stays malformed.
func TestInvitationPrefixTypos(t *testing.T) {
	f := newFixture(t)
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_. "
	p := len(tether.InvitationPrefix)
	var typos []string
	for i := 0; i <= p; i++ {
		if i < p {
			typos = append(typos, f.code[:i]+f.code[i+1:]) // deletion
		}
		for _, r := range alphabet {
			typos = append(typos, f.code[:i]+string(r)+f.code[i:]) // insertion
			if i < p {
				typos = append(typos, f.code[:i]+string(r)+f.code[i+1:]) // substitution
			}
		}
	}
	typos = append(typos,
		"Tether_inv_"+f.code[p:],
		"tehter_inv_"+f.code[p:], // two characters swapped
		"tether_inv"+f.code[p:],
		"tether-inv-"+f.code[p:],
	)
	// A typo in the body says the same.
	body := f.code[:p+40] + "x" + f.code[p+41:]
	if body == f.code {
		body = f.code[:p+40] + "y" + f.code[p+41:]
	}
	_, want := f.parse(body)
	wantCode(t, want, tether.CodeDamagedCode)
	for _, typo := range typos {
		if typo == f.code {
			continue
		}
		_, err := f.parse(typo)
		if tether.ErrorCode(err) != tether.CodeDamagedCode || err.Error() != want.Error() {
			t.Fatalf("%q...: %v, want %v", typo[:16], err, want)
		}
	}

	jws := strings.TrimPrefix(f.code[:strings.LastIndexByte(f.code, '.')], tether.InvitationPrefix)
	for name, code := range map[string]string{
		"bare JWS":             jws,
		"bare JWS checksummed": jws + f.code[len(f.code)-7:],
		"hello":                "hello",
		"text with a tail":     "hello world.abcdef",
		"prefix only":          tether.InvitationPrefix[:10],
		"upper case":           strings.ToUpper(tether.InvitationPrefix) + f.code[p:],
		"other prefix":         "github_pat_" + f.code[p:],
		"bad tail":             "tether_in_" + f.code[p:len(f.code)-6] + "abc+/=",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := f.parse(code)
			wantCode(t, err, tether.CodeMalformed)
		})
	}
	_, err := f.parse(jws)
	if !strings.Contains(err.Error(), "this is a token, not an invitation code") {
		t.Fatalf("bare JWS: %v", err)
	}
}
