package tether

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"hash/crc32"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/tetherkit/tether/internal/wire"
)

// Invitation codes.
//
// A code is the prefix "tether_inv_", a compact JWS signed with EdDSA by the
// initiator's instance key, a dot and a six-character checksum (CRC-32C of
// everything before it, base64url). The checksum catches any single mistyped,
// swapped or lost character locally, before any signature work or network
// call, and turns it into CodeDamagedCode.
const (
	InvitationPrefix = "tether_inv_"
	// MaxInvitationCodeLen bounds what DecodeInvitation reads; longer input
	// is rejected before it is parsed. Typical codes are 600 to 700
	// characters; fields at their maximum lengths stay well under this.
	MaxInvitationCodeLen = 8 << 10
	// InvitationVersion is the protocol version an invitation carries.
	InvitationVersion = 1

	DefaultInvitationTTL = 72 * time.Hour
	MaxInvitationTTL     = 30 * 24 * time.Hour

	checksumLen = 6
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Invitation is the content of a verified invitation code.
type Invitation struct {
	ID         string            // jti: 128 random bits, base64url
	Issuer     string            // the initiator's instance ID
	KeyID      string            // the initiator's key ID (its fingerprint)
	Key        ed25519.PublicKey // the initiator's public key; the acceptor pins it
	Connection string            // the initiator's connection ID

	Name          string
	Description   string
	InitiatorName string // the initiator's short name
	AcceptorName  string // the short name the initiator proposes for the acceptor
	Mode          Mode

	// Endpoint is the initiator's URL; empty when the initiator is private.
	Endpoint string
	// AdminURL is the initiator's admin page, when it shares one
	// (Config.AdminURL): where a page's "Go to remote" leads.
	AdminURL string
	// Destination is the acceptor's URL as the initiator knows it; empty
	// when the initiator was told "I don't have a URL" (the destination is
	// private).
	Destination string

	// Repairs, when set, makes the code a re-pairing code (Node.Reauthorize):
	// accepting it re-pins the keys of an existing connection, the
	// acceptor's with this ID, instead of creating one.
	Repairs string

	IssuedAt  time.Time
	NotBefore time.Time
	ExpiresAt time.Time
	Version   int
}

// InitiatorPrivate reports whether the initiator has no endpoint.
func (inv *Invitation) InitiatorPrivate() bool { return inv.Endpoint == "" }

// DestinationPrivate reports whether the initiator was told the destination
// has no URL.
func (inv *Invitation) DestinationPrivate() bool { return inv.Destination == "" }

// invitationClaims is the JWS payload of an invitation code.
type invitationClaims struct {
	wire.TimeClaims
	Version       int    `json:"ver"`
	Connection    string `json:"cid"`
	Name          string `json:"name"`
	Description   string `json:"desc,omitempty"`
	InitiatorName string `json:"isn"`
	AcceptorName  string `json:"asn"`
	Mode          Mode   `json:"mode"`
	Endpoint      string `json:"ep,omitempty"`
	Admin         string `json:"adm,omitempty"`
	Key           string `json:"key"`
	Repairs       string `json:"rep,omitempty"`
}

// encodeInvitation signs inv with key and wraps it as a code.
func encodeInvitation(inv *Invitation, key InstanceKey) (string, error) {
	c := invitationClaims{
		TimeClaims: wire.TimeClaims{
			Issuer:    inv.Issuer,
			Audience:  inv.Destination,
			ID:        inv.ID,
			IssuedAt:  jwt.NewNumericDate(inv.IssuedAt),
			NotBefore: jwt.NewNumericDate(inv.NotBefore),
			ExpiresAt: jwt.NewNumericDate(inv.ExpiresAt),
		},
		Version:       inv.Version,
		Connection:    inv.Connection,
		Name:          inv.Name,
		Description:   inv.Description,
		InitiatorName: inv.InitiatorName,
		AcceptorName:  inv.AcceptorName,
		Mode:          inv.Mode,
		Endpoint:      inv.Endpoint,
		Admin:         inv.AdminURL,
		Key:           base64.RawURLEncoding.EncodeToString(key.Public()),
		Repairs:       inv.Repairs,
	}
	s, err := wire.Sign(wire.TypInvitation, wireKey(key), &c)
	if err != nil {
		return "", err
	}
	code := InvitationPrefix + s
	code += "." + checksum(code)
	if len(code) > MaxInvitationCodeLen {
		return "", &Error{Code: CodeInvalid, Op: "tether: encode invitation", Message: "invitation would be too long: shorten the description"}
	}
	return code, nil
}

func checksum(s string) string {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], crc32.Checksum([]byte(s), castagnoli))
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// unwrapCode checks the code's length, prefix, characters and checksum, and
// returns the JWS inside. It allocates nothing for rejected input.
//
// The checksum covers the prefix too, so a typo there is damage like any
// other: input within two edits of the prefix that ends in a checksum is
// CodeDamagedCode. A bare JWS, and anything else without the prefix, is
// CodeMalformed.
func unwrapCode(op, code string) (string, error) {
	if len(code) > MaxInvitationCodeLen {
		return "", &Error{Code: CodeMalformed, Op: op, Message: "invitation code is too long"}
	}
	dot := strings.LastIndexByte(code, '.')
	tail := dot >= 0 && len(code)-dot-1 == checksumLen
	if !strings.HasPrefix(code, InvitationPrefix) {
		switch {
		case strings.HasPrefix(code, "eyJ"):
			return "", &Error{Code: CodeMalformed, Op: op, Message: "this is a token, not an invitation code (no " + InvitationPrefix + " prefix)"}
		case tail && prefixDistance(code) <= 2 && strings.IndexFunc(code[dot+1:], notBase64URL) < 0:
			return "", damaged(op)
		}
		return "", &Error{Code: CodeMalformed, Op: op, Message: "not an invitation code: it must start with " + InvitationPrefix}
	}
	if !tail {
		return "", &Error{Code: CodeDamagedCode, Op: op, Message: "invitation code is damaged or incomplete: copy it again"}
	}
	body := code[:dot]
	if err := wire.Precheck(body[len(InvitationPrefix):]); err != nil {
		if checksum(body) != code[dot+1:] {
			return "", damaged(op)
		}
		return "", &Error{Code: CodeMalformed, Op: op, Message: "invitation " + err.Error()}
	}
	if checksum(body) != code[dot+1:] {
		return "", damaged(op)
	}
	return body[len(InvitationPrefix):], nil
}

func damaged(op string) *Error {
	return &Error{Code: CodeDamagedCode, Op: op, Message: "invitation code is damaged (a character was changed, added or lost): copy it again"}
}

// prefixDistance returns the edit distance (substitutions, insertions and
// deletions) between InvitationPrefix and the start of s that matches it
// best, capped at 3. It allocates nothing.
func prefixDistance(s string) int {
	const n = len(InvitationPrefix)
	// row[j] is the distance between the first i bytes of s and the first
	// j bytes of the prefix.
	var row [n + 1]int
	for j := range row {
		row[j] = j
	}
	best := row[n]
	for i := 0; i < len(s) && i < n+2; i++ {
		diag := row[0]
		row[0] = i + 1
		for j := 1; j <= n; j++ {
			cost := 1
			if s[i] == InvitationPrefix[j-1] {
				cost = 0
			}
			diag, row[j] = row[j], min(row[j]+1, row[j-1]+1, diag+cost)
		}
		best = min(best, row[n])
	}
	return min(best, 3)
}

func notBase64URL(r rune) bool {
	return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
}

// invitationParser verifies codes. It is safe for concurrent use.
type invitationParser struct{ jws *wire.Parser }

func newInvitationParser() *invitationParser {
	return &invitationParser{jws: wire.NewParser(wire.TypInvitation)}
}

// decode verifies code and checks every claim at time now. When own is not
// nil the code must be signed by one of own's keys (the initiator checking
// its own invitation); otherwise by the key the code carries (the acceptor,
// which pins that key from then on).
func (p *invitationParser) decode(op, code string, now time.Time, own *keySet) (*Invitation, error) {
	s, err := unwrapCode(op, code)
	if err != nil {
		return nil, err
	}
	var c invitationClaims
	err = p.jws.Parse(s, &c, func(kid string, _ jwt.Claims) (ed25519.PublicKey, error) {
		if own != nil {
			if k, ok := own.lookup(kid, now); ok {
				return k, nil
			}
			return nil, &Error{Code: CodeUnknownKey, Op: op, Message: "invitation was signed with a key this instance does not know"}
		}
		k, err := base64.RawURLEncoding.Strict().DecodeString(c.Key)
		if err != nil || len(k) != ed25519.PublicKeySize || KeyID(k) != kid {
			return nil, &Error{Code: CodeUnknownKey, Op: op, Message: "invitation key does not match its key ID"}
		}
		return ed25519.PublicKey(k), nil
	})
	if err != nil {
		return nil, fromWire(op, err, false)
	}
	return c.invitation(op, now)
}

// invitation checks every claim and returns the Invitation.
func (c *invitationClaims) invitation(op string, now time.Time) (*Invitation, error) {
	bad := func(msg string) (*Invitation, error) {
		return nil, &Error{Code: CodeMalformed, Op: op, Message: "invitation " + msg}
	}
	if c.Version != InvitationVersion {
		if c.Version > InvitationVersion {
			return nil, &Error{Code: CodeProtocol, Op: op, Message: "invitation was made by a newer version of tether"}
		}
		return bad("has no valid protocol version")
	}
	if c.IssuedAt == nil || c.NotBefore == nil || c.ExpiresAt == nil {
		return bad("lacks iat, nbf or exp")
	}
	iat, nbf, exp := c.IssuedAt.Time, c.NotBefore.Time, c.ExpiresAt.Time
	switch {
	case !exp.After(iat) || exp.Sub(iat) > MaxInvitationTTL || nbf.Before(iat) || !nbf.Before(exp):
		return bad("has inconsistent lifetime claims")
	case iat.After(now.Add(ClockSkew)):
		return nil, &Error{Code: CodeClockSkew, Op: op, Message: "invitation is dated " + iat.Sub(now).Round(time.Second).String() + " ahead of this instance's clock, more than the " + ClockSkew.String() + " allowed: check the clocks of both instances"}
	case nbf.After(now.Add(ClockSkew)):
		return nil, &Error{Code: CodeNotYetValid, Op: op, Message: "invitation is not valid yet"}
	case !now.Before(exp.Add(ClockSkew)):
		return nil, &Error{Code: CodeExpired, Op: op, Message: "invitation has expired: ask for a new one"}
	}
	key, err := base64.RawURLEncoding.Strict().DecodeString(c.Key)
	if err != nil || len(key) != ed25519.PublicKeySize {
		return bad("has no valid key")
	}
	jti, err := base64.RawURLEncoding.Strict().DecodeString(c.ID)
	if err != nil || len(jti) != 16 {
		return bad("has no valid ID")
	}
	for _, err := range []error{
		checkID("iss", c.Issuer),
		checkID("cid", c.Connection),
		checkText("name", c.Name, 1, MaxNameLen),
		checkText("desc", c.Description, 0, MaxDescriptionLen),
		checkText("isn", c.InitiatorName, 1, MaxShortNameLen),
		checkText("asn", c.AcceptorName, 1, MaxShortNameLen),
		checkURLSyntax("ep", c.Endpoint, true),
		checkURLSyntax("aud", c.Audience, true),
		checkURLSyntax("adm", c.Admin, true),
		checkOptionalID("rep", c.Repairs),
	} {
		if err != nil {
			e := err.(*Error)
			return bad("claim " + e.Message)
		}
	}
	if !c.Mode.valid() {
		return bad("has no valid mode")
	}
	if c.Endpoint == "" && c.Audience == "" {
		return nil, &Error{Code: CodeBothPrivate, Op: op, Message: "invitation names no URL for either side"}
	}
	return &Invitation{
		ID:            c.ID,
		Issuer:        c.Issuer,
		KeyID:         KeyID(key),
		Key:           key,
		Connection:    c.Connection,
		Name:          c.Name,
		Description:   c.Description,
		InitiatorName: c.InitiatorName,
		AcceptorName:  c.AcceptorName,
		Mode:          c.Mode,
		Endpoint:      c.Endpoint,
		AdminURL:      c.Admin,
		Repairs:       c.Repairs,
		Destination:   c.Audience,
		IssuedAt:      iat,
		NotBefore:     nbf,
		ExpiresAt:     exp,
		Version:       c.Version,
	}, nil
}

// ParseInvitation verifies an invitation code against the key it carries
// and checks every claim at time now, without contacting anyone and without
// a Node: it is what a host shows a user before they accept, and what the
// tether command's inspect prints. Node.Preview does the same with the
// node's clock.
func ParseInvitation(code string, now time.Time) (*Invitation, error) {
	return newInvitationParser().decode("tether: parse invitation", code, now, nil)
}

// checkOptionalID is checkID for a field that may be empty.
func checkOptionalID(field, id string) error {
	if id == "" {
		return nil
	}
	return checkID(field, id)
}
