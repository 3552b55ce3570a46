package tether

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
	typInvitation = "tether-inv+jwt"
	typRequest    = "tether-req+jwt"
)

const maxKeyIDLen = 64

// signJWS returns the compact JWS of claims, signed with key. The claims are
// marshalled without HTML escaping, which keeps codes short.
func signJWS(typ string, key InstanceKey, claims any) (string, error) {
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

// keyLookup returns the key that must have signed a token whose header
// carries kid and whose claims were decoded into claims (not yet verified).
type keyLookup func(kid string, claims jwt.Claims) (ed25519.PublicKey, error)

// jwsParser parses compact JWS strictly: EdDSA only, the exact typ, a header
// of exactly alg, typ and kid, strict unpadded base64url. It is safe for
// concurrent use.
type jwsParser struct {
	typ string
	p   *jwt.Parser
}

func newJWSParser(typ string) *jwsParser {
	return &jwsParser{typ: typ, p: jwt.NewParser(
		jwt.WithValidMethods([]string{"EdDSA"}),
		jwt.WithStrictDecoding(),
		jwt.WithoutClaimsValidation(), // the callers check claims with their own clock
	)}
}

// precheckJWS rejects, before any decoding, anything that is not three
// non-empty segments of unpadded base64url. It runs in constant memory.
func precheckJWS(s string) error {
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

// parse verifies s and decodes its claims into claims. Errors are *Error
// with codes CodeMalformed, CodeBadSignature, CodeUnknownKey (or whatever
// code lookup returns); their text never includes the token or its kid.
func (jp *jwsParser) parse(op, s string, claims jwt.Claims, lookup keyLookup) error {
	if err := precheckJWS(s); err != nil {
		return &Error{Code: CodeMalformed, Op: op, Message: "token " + err.Error()}
	}
	_, err := jp.p.ParseWithClaims(s, claims, func(t *jwt.Token) (any, error) {
		if len(t.Header) != 3 {
			return nil, &Error{Code: CodeMalformed, Op: op, Message: "header must hold exactly alg, typ and kid"}
		}
		if typ, _ := t.Header["typ"].(string); typ != jp.typ {
			return nil, &Error{Code: CodeMalformed, Op: op, Message: "wrong token type"}
		}
		kid, _ := t.Header["kid"].(string)
		if kid == "" || len(kid) > maxKeyIDLen {
			return nil, &Error{Code: CodeUnknownKey, Op: op, Message: "unknown key"}
		}
		return lookup(kid, claims)
	})
	if err == nil {
		return nil
	}
	var e *Error
	switch {
	case errors.As(err, &e):
		return e
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return &Error{Code: CodeBadSignature, Op: op, Message: "signature does not verify or algorithm is not EdDSA"}
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return &Error{Code: CodeMalformed, Op: op, Message: "unsupported algorithm"}
	default:
		return &Error{Code: CodeMalformed, Op: op, Message: "token is not well formed", Err: stripJWTError(err)}
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

// timeClaims are the registered claims tether uses, with aud a single string.
type timeClaims struct {
	Issuer    string           `json:"iss"`
	Subject   string           `json:"sub,omitempty"`
	Audience  string           `json:"aud,omitempty"`
	ID        string           `json:"jti"`
	IssuedAt  *jwt.NumericDate `json:"iat"`
	NotBefore *jwt.NumericDate `json:"nbf,omitempty"`
	ExpiresAt *jwt.NumericDate `json:"exp,omitempty"`
}

func (c *timeClaims) GetExpirationTime() (*jwt.NumericDate, error) { return c.ExpiresAt, nil }
func (c *timeClaims) GetIssuedAt() (*jwt.NumericDate, error)       { return c.IssuedAt, nil }
func (c *timeClaims) GetNotBefore() (*jwt.NumericDate, error)      { return c.NotBefore, nil }
func (c *timeClaims) GetIssuer() (string, error)                   { return c.Issuer, nil }
func (c *timeClaims) GetSubject() (string, error)                  { return c.Subject, nil }
func (c *timeClaims) GetAudience() (jwt.ClaimStrings, error) {
	if c.Audience == "" {
		return nil, nil
	}
	return jwt.ClaimStrings{c.Audience}, nil
}
