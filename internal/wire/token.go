package wire

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"io"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// MaxTokenLen bounds a request or answer token; a longer one is refused
// before it is parsed.
const MaxTokenLen = 4 << 10

// Claims is the payload of a request or answer token.
type Claims struct {
	// iss: the sender's instance; sub: for requests the target connection
	// at the receiver, for answers the requester's instance; jti: a nonce.
	TimeClaims
	Op        string `json:"op"`
	BodyHash  string `json:"bdh"`           // base64url SHA-256 of the body
	InReplyTo string `json:"irt,omitempty"` // answers: the request's jti
	// Key, in handshake answers, is the signer's public key (base64url),
	// whose key ID is the kid: the requester learns it from the token, so
	// it verifies the answer before it parses the body.
	Key string `json:"key,omitempty"`
}

// Token is what SignToken signs.
type Token struct {
	Instance  string // iss
	Audience  string // the endpoint a request is sent to; empty for answers
	Op        string
	Subject   string
	Body      []byte
	Now       time.Time
	Nonce     string
	InReplyTo string // answers: the request's nonce
	Key       string // optional: the signer's public key, base64url
}

// SignToken returns the token for a request or an answer.
func SignToken(key Key, t Token) (string, error) {
	return Sign(TypRequest, key, &Claims{
		TimeClaims: TimeClaims{Issuer: t.Instance, Audience: t.Audience, Subject: t.Subject, ID: t.Nonce, IssuedAt: jwt.NewNumericDate(t.Now)},
		Op:         t.Op,
		BodyHash:   BodyHash(t.Body),
		InReplyTo:  t.InReplyTo,
		Key:        t.Key,
	})
}

// BodyHash is the digest a token carries of its body.
func BodyHash(body []byte) string {
	sum := sha256.Sum256(body)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// NewNonce returns 16 random bytes in base64url.
func NewNonce(rnd io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Check is what Verify checks a token against.
type Check struct {
	Auth string
	Body []byte
	// Op and Audience must equal the token's; InReplyTo too (empty for
	// requests, the request's nonce for answers).
	Op, Audience, InReplyTo string
	// Target, when not empty, is where the request arrived: it must equal
	// TargetPath, the path the signed endpoint and operation lead to.
	Target, TargetPath string
	// Now and Skew bound the token's time: |Now - iat| <= Skew. Answers,
	// bound to a fresh nonce by InReplyTo, pass Skew 0: no time check.
	Now  time.Time
	Skew time.Duration
	// Lookup returns the key that must have signed the token.
	Lookup KeyLookup
}

// Verify checks a request or answer token and returns its claims. It does
// not check the nonce for replay: that is the ReplayCache's job, once the
// token is known to be authentic. A token that is authentic but dated
// outside Skew fails with a ClockSkew error and its claims, so that the
// verifier can answer the sender, signed, that the clocks differ.
func Verify(p *Parser, chk Check) (*Claims, error) {
	if len(chk.Auth) > MaxTokenLen {
		return nil, &Error{Kind: Malformed, Message: "token is too long"}
	}
	var c Claims
	if err := p.Parse(chk.Auth, &c, chk.Lookup); err != nil {
		return nil, err
	}
	unauth := func(msg string) (*Claims, error) {
		return nil, &Error{Kind: Unauthenticated, Message: msg}
	}
	if c.Op != chk.Op || c.InReplyTo != chk.InReplyTo || c.Audience != chk.Audience {
		return unauth("token was made for another operation or endpoint")
	}
	if chk.Target != "" && chk.Target != chk.TargetPath {
		return unauth("request was sent to another address than it was signed for")
	}
	if subtle.ConstantTimeCompare([]byte(c.BodyHash), []byte(BodyHash(chk.Body))) != 1 {
		return unauth("body does not match its signature")
	}
	if c.IssuedAt == nil {
		return unauth("token has no time")
	}
	if n, err := base64.RawURLEncoding.Strict().DecodeString(c.ID); err != nil || len(n) != 16 {
		return unauth("token has no valid nonce")
	}
	if chk.Skew > 0 {
		if d := chk.Now.Sub(c.IssuedAt.Time); d > chk.Skew || d < -chk.Skew {
			return &c, &Error{Kind: ClockSkew, Message: "the sender's clock and this instance's differ by more than " + chk.Skew.String() + ": check the clocks of both instances"}
		}
	}
	return &c, nil
}

// EmbeddedKey is a KeyLookup for tokens that carry their signer's key in
// the key claim; the kid must be that key's ID under keyID.
func EmbeddedKey(keyID func(ed25519.PublicKey) string) KeyLookup {
	return func(kid string, claims jwt.Claims) (ed25519.PublicKey, error) {
		c, ok := claims.(*Claims)
		if !ok {
			return nil, &Error{Kind: UnknownKey, Message: "unknown key"}
		}
		k, err := base64.RawURLEncoding.Strict().DecodeString(c.Key)
		if err != nil || len(k) != ed25519.PublicKeySize || keyID(k) != kid {
			return nil, &Error{Kind: UnknownKey, Message: "the token's key does not match its key ID"}
		}
		return ed25519.PublicKey(k), nil
	}
}
