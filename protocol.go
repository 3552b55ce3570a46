package tether

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/url"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// RequestSkew is how far a request's timestamp may be from the receiver's
// clock, either way.
const RequestSkew = 5 * time.Minute

// maxNonces bounds the replay cache. It holds only nonces of requests that
// passed signature verification, for RequestSkew either side of now.
const maxNonces = 1 << 20

// requestClaims is the payload of a request or response token.
type requestClaims struct {
	timeClaims        // iss: the sender's instance; sub: the target connection at the receiver; jti: nonce
	Op         Op     `json:"op"`
	BodyHash   string `json:"bdh"`           // base64url SHA-256 of the body
	InReplyTo  string `json:"irt,omitempty"` // responses: the request's jti
}

func bodyHash(body []byte) string {
	sum := sha256.Sum256(body)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// randomToken returns 16 random bytes in base64url.
func randomToken(rnd io.Reader) (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// signedMessage builds the auth token for a request (irt empty) or a
// response (irt the request's nonce).
func signedMessage(key InstanceKey, instance, aud string, op Op, conn string, body []byte, now time.Time, nonce, irt string) (string, error) {
	return signJWS(typRequest, key, &requestClaims{
		timeClaims: timeClaims{Issuer: instance, Audience: aud, Subject: conn, ID: nonce, IssuedAt: jwt.NewNumericDate(now)},
		Op:         op,
		BodyHash:   bodyHash(body),
		InReplyTo:  irt,
	})
}

// verifyMessage checks a request or response token: the signature by the
// key lookup returns, the audience (the endpoint a request was sent to;
// empty for responses), the body digest, the time window and, for
// responses, that it answers the request with nonce irt and op. It does not
// check the nonce for replay.
func verifyMessage(jp *jwsParser, op string, auth string, body []byte, target string, now time.Time, aud string, wantOp Op, irt string, lookup keyLookup) (*requestClaims, error) {
	if len(auth) > 4<<10 {
		return nil, &Error{Code: CodeUnauthenticated, Op: op, Message: "request token is too long"}
	}
	var c requestClaims
	if err := jp.parse(op, auth, &c, lookup); err != nil {
		if e, ok := err.(*Error); ok && e.Code != CodeKeyMismatch && e.Code != CodeUnknownKey {
			e.Code = CodeUnauthenticated
		}
		return nil, err
	}
	unauth := func(msg string) (*requestClaims, error) {
		return nil, &Error{Code: CodeUnauthenticated, Op: op, Message: msg}
	}
	if c.Op != wantOp || c.InReplyTo != irt || c.Audience != aud {
		return unauth("token was made for another operation or endpoint")
	}
	if target != "" && target != targetPath(aud, wantOp) {
		return unauth("request was sent to another address than it was signed for")
	}
	if subtle.ConstantTimeCompare([]byte(c.BodyHash), []byte(bodyHash(body))) != 1 {
		return unauth("body does not match its signature")
	}
	if c.IssuedAt == nil {
		return unauth("token has no time")
	}
	if d := now.Sub(c.IssuedAt.Time); d > RequestSkew || d < -RequestSkew {
		return unauth("token time is more than 5 minutes off: check the clocks of both instances")
	}
	if n, err := base64.RawURLEncoding.Strict().DecodeString(c.ID); err != nil || len(n) != 16 {
		return unauth("token has no valid nonce")
	}
	return &c, nil
}

// targetPath is the path (with no query) a request for operation o signed
// for endpoint must arrive at.
func targetPath(endpoint string, o Op) string {
	u, err := url.Parse(OpURL(endpoint, o))
	if err != nil {
		return "\x00" // matches no target
	}
	return u.EscapedPath()
}

// pinnedKey returns a key lookup that accepts only key, pinned earlier.
func pinnedKey(op string, key ed25519.PublicKey) keyLookup {
	return func(kid string, _ jwt.Claims) (ed25519.PublicKey, error) {
		if len(key) != ed25519.PublicKeySize || kid != KeyID(key) {
			return nil, &Error{Code: CodeKeyMismatch, Op: op, Message: "signed with a key other than the one pinned for this connection"}
		}
		return key, nil
	}
}

// replayCache remembers nonces of authenticated requests for the skew
// window, so a captured request cannot be replayed while its timestamp is
// still accepted.
type replayCache struct {
	mu   sync.Mutex
	seen map[string]time.Time // nonce key -> when it may be forgotten
	next time.Time            // next sweep
}

// fresh records key and reports whether it was not seen before. It fails
// closed when the cache is full of unexpired entries.
func (rc *replayCache) fresh(key string, now time.Time) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.seen == nil {
		rc.seen = make(map[string]time.Time)
	}
	if now.After(rc.next) || len(rc.seen) >= maxNonces {
		for k, t := range rc.seen {
			if now.After(t) {
				delete(rc.seen, k)
			}
		}
		rc.next = now.Add(RequestSkew)
	}
	if _, ok := rc.seen[key]; ok || len(rc.seen) >= maxNonces {
		return false
	}
	rc.seen[key] = now.Add(2*RequestSkew + time.Second)
	return true
}

// Bodies of the handshake.

type acceptRequest struct {
	Code       string `json:"code"`               // the invitation code: proof of possession
	Instance   string `json:"instance"`           // acceptor instance ID
	Key        string `json:"key"`                // acceptor public key, base64url
	Endpoint   string `json:"endpoint,omitempty"` // acceptor URL; empty when private
	Connection string `json:"connection"`         // acceptor connection ID
	Name       string `json:"name"`               // acceptor short name
}

// peerReply introduces the answering side: the reply to accept and status.
type peerReply struct {
	Instance   string `json:"instance"`
	Key        string `json:"key"` // the key to pin from now on, base64url
	Connection string `json:"connection"`
	Endpoint   string `json:"endpoint,omitempty"`
	Name       string `json:"name"`
	// Proof, in a status reply, shows the acceptor holds the invitation
	// code: base64url SHA-256 over the invitation ID and the acceptor key.
	Proof string `json:"proof,omitempty"`
}

func acceptProof(jti string, key ed25519.PublicKey) string {
	h := sha256.New()
	h.Write([]byte("tether accept proof\x00"))
	h.Write([]byte(jti))
	h.Write([]byte{0})
	h.Write(key)
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil))
}

// decodeBody strictly decodes a JSON body into v.
func decodeBody(op string, body []byte, max int, v any) error {
	if len(body) > max {
		return &Error{Code: CodeInvalid, Op: op, Message: "body is too large"}
	}
	if err := json.Unmarshal(body, v); err != nil {
		return &Error{Code: CodeProtocol, Op: op, Message: "body is not valid JSON for this operation"}
	}
	return nil
}

func decodeKey(s string) (ed25519.PublicKey, bool) {
	k, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil || len(k) != ed25519.PublicKeySize {
		return nil, false
	}
	return k, true
}
