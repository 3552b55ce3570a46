package wire

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// Token types (the JWS typ header). Each kind of signed object has its own
// type so one can never be passed off as another (RFC 8725 section 3.11).
const (
	TypInvitation = "tether-inv+jwt"
	TypRequest    = "tether-req+jwt"
)

// MaxKeyIDLen bounds the kid header.
const MaxKeyIDLen = 64

// Kind classifies an Error.
type Kind int

const (
	Malformed       Kind = iota + 1 // not well formed
	BadSignature                    // the signature does not verify
	UnknownKey                      // the kid names no key the lookup knows
	Unauthenticated                 // signed, but not for this use (operation, audience, body, nonce)
	ClockSkew                       // the token's time is too far from the verifier's clock
)

// Error is a failure to parse or verify a token. Message never quotes the
// input.
type Error struct {
	Kind    Kind
	Message string
	Err     error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return e.Message + ": " + e.Err.Error()
	}
	return e.Message
}

func (e *Error) Unwrap() error { return e.Err }

// Key is a signing key and its key ID.
type Key struct {
	ID      string
	Private ed25519.PrivateKey
}

// Sign returns the compact JWS of claims, signed with key, with a header of
// exactly alg, typ and kid. The claims are marshalled without HTML escaping,
// which keeps codes short.
func Sign(typ string, key Key, claims any) (string, error) {
	var hdr, body bytes.Buffer
	henc := json.NewEncoder(&hdr)
	henc.SetEscapeHTML(false)
	if err := henc.Encode(struct {
		Alg string `json:"alg"`
		Typ string `json:"typ"`
		Kid string `json:"kid"`
	}{"EdDSA", typ, key.ID}); err != nil {
		return "", err
	}
	benc := json.NewEncoder(&body)
	benc.SetEscapeHTML(false)
	if err := benc.Encode(claims); err != nil {
		return "", err
	}
	h := bytes.TrimSuffix(hdr.Bytes(), []byte("\n"))
	c := bytes.TrimSuffix(body.Bytes(), []byte("\n"))
	enc := base64.RawURLEncoding
	n := enc.EncodedLen(len(h)) + 1 + enc.EncodedLen(len(c))
	out := make([]byte, n, n+1+enc.EncodedLen(ed25519.SignatureSize))
	enc.Encode(out, h)
	out[enc.EncodedLen(len(h))] = '.'
	enc.Encode(out[enc.EncodedLen(len(h))+1:], c)
	sig := ed25519.Sign(key.Private, out)
	out = append(out, '.')
	out = enc.AppendEncode(out, sig)
	return string(out), nil
}

// KeyLookup returns the key that must have signed a token whose header
// carries kid and whose claims were decoded into claims (not yet verified).
type KeyLookup func(kid string, claims jwt.Claims) (ed25519.PublicKey, error)

// Parser parses compact JWS strictly: EdDSA only, the exact typ, a header
// of exactly alg, typ and kid, strict unpadded base64url. It is safe for
// concurrent use.
type Parser struct {
	typ string
	p   *jwt.Parser
}

// NewParser returns a Parser for tokens of type typ.
func NewParser(typ string) *Parser {
	return &Parser{typ: typ, p: jwt.NewParser(
		jwt.WithValidMethods([]string{"EdDSA"}),
		jwt.WithStrictDecoding(),
		jwt.WithoutClaimsValidation(), // the callers check claims with their own clock
	)}
}

// Precheck rejects, before any decoding, anything that is not three
// non-empty segments of unpadded base64url. It runs in constant memory.
func Precheck(s string) error {
	dots := 0
	segStart := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		case c == '.':
			if i == segStart {
				return errors.New("empty segment")
			}
			dots++
			segStart = i + 1
		case c == ' ', c == '\t', c == '\n', c == '\r':
			return errors.New("contains white space")
		case c == '=':
			return errors.New("contains base64 padding")
		default:
			return errors.New("contains a character that is not base64url")
		}
	}
	if dots != 2 || segStart == len(s) {
		return errors.New("is not three segments of compact JWS")
	}
	return nil
}

// Parse verifies s and decodes its claims into claims. Errors are *Error,
// or whatever lookup returned.
func (jp *Parser) Parse(s string, claims jwt.Claims, lookup KeyLookup) error {
	if err := Precheck(s); err != nil {
		return &Error{Kind: Malformed, Message: "token " + err.Error()}
	}
	var fromLookup error
	_, err := jp.p.ParseWithClaims(s, claims, func(t *jwt.Token) (any, error) {
		if len(t.Header) != 3 {
			return nil, &Error{Kind: Malformed, Message: "header must hold exactly alg, typ and kid"}
		}
		if typ, _ := t.Header["typ"].(string); typ != jp.typ {
			return nil, &Error{Kind: Malformed, Message: "wrong token type"}
		}
		kid, _ := t.Header["kid"].(string)
		if kid == "" || len(kid) > MaxKeyIDLen {
			return nil, &Error{Kind: UnknownKey, Message: "unknown key"}
		}
		k, err := lookup(kid, claims)
		if err != nil {
			fromLookup = err
		}
		return k, err
	})
	if err == nil {
		return nil
	}
	var e *Error
	switch {
	case fromLookup != nil:
		return fromLookup
	case errors.As(err, &e):
		return e
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return &Error{Kind: BadSignature, Message: "signature does not verify or algorithm is not EdDSA"}
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return &Error{Kind: Malformed, Message: "unsupported algorithm"}
	default:
		return &Error{Kind: Malformed, Message: "token is not well formed", Err: stripJWTError(err)}
	}
}

// stripJWTError keeps only the kind of a jwt parse failure: its text could
// otherwise quote fragments of the input.
func stripJWTError(err error) error {
	msg := err.Error()
	if i := strings.IndexByte(msg, ':'); i > 0 {
		msg = msg[:i]
	}
	return errors.New(msg)
}

// TimeClaims are the registered claims tether uses, with aud a single string.
type TimeClaims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub,omitempty"`
	Audience  string           `json:"aud,omitempty"`
	ID        string           `json:"jti"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	NotBefore *jwt.NumericDate `json:"nbf,omitempty"`
	ExpiresAt *jwt.NumericDate `json:"exp,omitempty"`
}

func (c *TimeClaims) GetExpirationTime() (*jwt.NumericDate, error) { return c.ExpiresAt, nil }
func (c *TimeClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.IssuedAt, nil }
func (c *TimeClaims) GetNotBefore() (*jwt.NumericDate, error)      { return c.NotBefore, nil }
func (c *TimeClaims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *TimeClaims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c *TimeClaims) GetAudience() (jwt.ClaimStrings, error) {
	if c.Audience == "" {
		return nil, nil
	}
	return jwt.ClaimStrings{c.Audience}, nil
}
