package wire_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/tetherkit/tether/internal/wire"
)

func keyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

func newKey(seed byte) (wire.Key, ed25519.PublicKey) {
	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	priv[0] = seed
	priv = ed25519.NewKeyFromSeed(priv[:32])
	pub := priv.Public().(ed25519.PublicKey)
	return wire.Key{ID: keyID(pub), Private: priv}, pub
}

func pinned(pub ed25519.PublicKey) wire.KeyLookup {
	return func(kid string, _ jwt.Claims) (ed25519.PublicKey, error) {
		if kid != keyID(pub) {
			return nil, &wire.Error{Kind: wire.UnknownKey, Message: "unknown key"}
		}
		return pub, nil
	}
}

func TestVerify(t *testing.T) {
	key, pub := newKey(1)
	_, other := newKey(2)
	now := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	body := []byte(`{"x":1}`)
	tok := func(mod func(*wire.Token)) string {
		tk := wire.Token{Instance: "inst_a", Audience: "https://b.example/t", Op: "push", Subject: "conn_b", Body: body, Now: now, Nonce: "AAAAAAAAAAAAAAAAAAAAAA"}
		if mod != nil {
			mod(&tk)
		}
		s, err := wire.SignToken(key, tk)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	check := func(auth string, mod func(*wire.Check)) wire.Check {
		c := wire.Check{Auth: auth, Body: body, Op: "push", Audience: "https://b.example/t", Now: now, Skew: 5 * time.Minute, Lookup: pinned(pub)}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	p := wire.NewParser(wire.TypRequest)
	for _, tc := range []struct {
		name string
		chk  wire.Check
		want wire.Kind // 0: valid
	}{
		{"valid", check(tok(nil), nil), 0},
		{"other operation", check(tok(nil), func(c *wire.Check) { c.Op = "poll" }), wire.Unauthenticated},
		{"other audience", check(tok(nil), func(c *wire.Check) { c.Audience = "https://c.example/t" }), wire.Unauthenticated},
		{"changed body", check(tok(nil), func(c *wire.Check) { c.Body = []byte(`{"x":2}`) }), wire.Unauthenticated},
		{"other target", check(tok(nil), func(c *wire.Check) { c.Target, c.TargetPath = "/t/v1/poll", "/t/v1/push" }), wire.Unauthenticated},
		{"answer to another nonce", check(tok(nil), func(c *wire.Check) { c.InReplyTo = "BBBBBBBBBBBBBBBBBBBBBB" }), wire.Unauthenticated},
		{"bad nonce", check(tok(func(t *wire.Token) { t.Nonce = "short" }), nil), wire.Unauthenticated},
		{"301 s old", check(tok(func(t *wire.Token) { t.Now = now.Add(-301 * time.Second) }), nil), wire.ClockSkew},
		{"301 s ahead", check(tok(func(t *wire.Token) { t.Now = now.Add(301 * time.Second) }), nil), wire.ClockSkew},
		{"240 s off", check(tok(func(t *wire.Token) { t.Now = now.Add(-240 * time.Second) }), nil), 0},
		{"answer: no time check", check(tok(func(t *wire.Token) { t.Now = now.Add(time.Hour); t.InReplyTo = "CCCCCCCCCCCCCCCCCCCCCC" }), func(c *wire.Check) {
			c.Skew, c.InReplyTo = 0, "CCCCCCCCCCCCCCCCCCCCCC"
		}), 0},
		{"other key", check(tok(nil), func(c *wire.Check) { c.Lookup = pinned(other) }), wire.UnknownKey},
		{"too long", check(tok(nil)+strings.Repeat("A", wire.MaxTokenLen), nil), wire.Malformed},
		{"flipped signature", check(flip(tok(nil)), nil), wire.BadSignature},
		{"embedded key absent", check(tok(nil), func(c *wire.Check) { c.Lookup = wire.EmbeddedKey(keyID) }), wire.UnknownKey},
		{"embedded key", check(tok(func(t *wire.Token) { t.Key = base64.RawURLEncoding.EncodeToString(pub) }), func(c *wire.Check) { c.Lookup = wire.EmbeddedKey(keyID) }), 0},
		{"embedded key of another", check(tok(func(t *wire.Token) { t.Key = base64.RawURLEncoding.EncodeToString(other) }), func(c *wire.Check) { c.Lookup = wire.EmbeddedKey(keyID) }), wire.UnknownKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			claims, err := wire.Verify(p, tc.chk)
			var we *wire.Error
			switch {
			case tc.want == 0 && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want == 0:
				if claims.Issuer != "inst_a" || claims.Subject != "conn_b" {
					t.Fatalf("claims %+v", claims)
				}
			case !errors.As(err, &we) || we.Kind != tc.want:
				t.Fatalf("error %v, want kind %d", err, tc.want)
			case tc.want == wire.ClockSkew && claims == nil:
				t.Fatal("a clock error comes without the authentic claims")
			case tc.want != wire.ClockSkew && claims != nil:
				t.Fatal("a refused token returned claims")
			}
			if err != nil && strings.Contains(err.Error(), tc.chk.Auth[:20]) {
				t.Fatalf("the error quotes the token: %v", err)
			}
		})
	}
}

// flip changes one bit of the signature.
func flip(s string) string {
	b := []byte(s)
	i := len(b) - 5
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

// A request token is not an invitation, and the reverse.
func TestTokenTypes(t *testing.T) {
	key, pub := newKey(3)
	s, err := wire.SignToken(key, wire.Token{Instance: "i", Op: "push", Nonce: "AAAAAAAAAAAAAAAAAAAAAA", Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	var c wire.Claims
	err = wire.NewParser(wire.TypInvitation).Parse(s, &c, pinned(pub))
	var we *wire.Error
	if !errors.As(err, &we) || we.Kind != wire.Malformed {
		t.Fatalf("a request token parsed as an invitation: %v", err)
	}
}
