package tether

import (
	"crypto/ed25519"
	"errors"
	"io"
	"net/url"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/tetherkit/tether/internal/wire"
)

// ClockSkew is how far apart two instances' clocks may be, either way.
// One tolerance applies to everything dated: an invitation's iat, nbf and
// exp, and the time of every request between instances. A refusal because
// of the clocks has CodeClockSkew.
const ClockSkew = 5 * time.Minute

// RequestSkew and InvitationLeeway are ClockSkew under the names earlier
// versions used.
const (
	RequestSkew      = ClockSkew
	InvitationLeeway = ClockSkew
)

// nonceTTL is how long a request's nonce must be remembered: as long as
// its time is accepted, either way, and a second more.
const nonceTTL = 2*ClockSkew + time.Second

func wireKey(k InstanceKey) wire.Key { return wire.Key{ID: k.ID, Private: k.Private} }

// fromWire turns a wire error into an *Error with op; asRequest maps every
// failure but the clock's to CodeUnauthenticated, as a request between
// instances reports it.
func fromWire(op string, err error, asRequest bool) error {
	var we *wire.Error
	if !errors.As(err, &we) {
		var e *Error
		if errors.As(err, &e) {
			return err
		}
		return &Error{Code: CodeInternal, Op: op, Err: err}
	}
	code := CodeMalformed
	switch we.Kind {
	case wire.BadSignature:
		code = CodeBadSignature
	case wire.UnknownKey:
		code = CodeUnknownKey
	case wire.Unauthenticated:
		code = CodeUnauthenticated
	case wire.ClockSkew:
		code = CodeClockSkew
	}
	if asRequest && code != CodeClockSkew {
		code = CodeUnauthenticated
	}
	return &Error{Code: code, Op: op, Message: we.Message, Err: we.Err}
}

// verify checks a request or answer token with the node's parser.
func (n *Node) verify(op string, chk wire.Check) (*wire.Claims, error) {
	c, err := wire.Verify(n.messages, chk)
	if err != nil {
		var e *Error
		if errors.As(err, &e) { // from the key lookup
			return nil, err
		}
		return c, fromWire(op, err, true) // c is set for a clock error only
	}
	return c, nil
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
func pinnedKey(op string, key ed25519.PublicKey) wire.KeyLookup {
	return func(kid string, _ jwt.Claims) (ed25519.PublicKey, error) {
		if len(key) != ed25519.PublicKeySize || kid != KeyID(key) {
			return nil, &Error{Code: CodeKeyMismatch, Op: op, Message: "signed with a key other than the one pinned for this connection"}
		}
		return key, nil
	}
}

// randomToken returns 16 random bytes in base64url.
func randomToken(rnd io.Reader) (string, error) { return wire.NewNonce(rnd) }
