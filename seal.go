package tether

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"io"
	"strconv"
	"strings"
)

// Sealer encrypts secrets (instance private keys, OAuth tokens) before a
// Store writes them anywhere durable: AES-256-GCM with a key ring. The
// current key seals; every key in the ring opens what it sealed, so keys can
// be rotated without rewriting old records. The sealed form names its key
// by ID and is bound to a context string (the record it belongs to), so a
// ciphertext moved to another record does not open either.
//
// A Sealer is safe for concurrent use.
type Sealer struct {
	current string
	aeads   map[string]cipher.AEAD
	rand    io.Reader
}

// sealVersion prefixes the sealed form.
const sealVersion = 1

// NewSealer returns a Sealer that seals with keys[current] and opens with
// any of keys. Every key is 32 random bytes; IDs are 1 to 64 bytes. The
// caller keeps the key bytes secret (an environment variable, a secret
// manager); NewSealer copies what it needs.
func NewSealer(current string, keys map[string][]byte) (*Sealer, error) {
	const op = "tether: new sealer"
	if _, ok := keys[current]; !ok {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "the current key ID is not in the key ring"}
	}
	s := &Sealer{current: current, aeads: make(map[string]cipher.AEAD, len(keys)), rand: rand.Reader}
	for id, k := range keys {
		if id == "" || len(id) > 64 {
			return nil, &Error{Code: CodeInvalid, Op: op, Message: "key IDs are 1 to 64 bytes"}
		}
		if len(k) != 32 {
			return nil, &Error{Code: CodeInvalid, Op: op, Message: "sealing keys are 32 bytes (AES-256)"}
		}
		block, err := aes.NewCipher(k)
		if err != nil {
			return nil, &Error{Code: CodeInvalid, Op: op, Message: "unusable sealing key"}
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, &Error{Code: CodeInvalid, Op: op, Message: "unusable sealing key"}
		}
		s.aeads[id] = aead
	}
	return s, nil
}

// ParseSealingKey decodes a sealing key as `tether keygen` prints it: 64
// hexadecimal digits (32 bytes), surrounding white space ignored, so a
// host passes an environment variable or a secret file's content as is:
//
//	key, err := tether.ParseSealingKey(os.Getenv("TETHER_SEALING_KEY"))
//	sealer, err := tether.NewSealer("k1", map[string][]byte{"k1": key})
//
// Its errors never repeat the input.
func ParseSealingKey(s string) ([]byte, error) {
	const op = "tether: parse sealing key"
	s = strings.TrimSpace(s)
	if len(s) != 64 {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "a sealing key is 64 hexadecimal digits, as tether keygen prints; got " + strconv.Itoa(len(s)) + " characters"}
	}
	k, err := hex.DecodeString(s)
	if err != nil {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "a sealing key is 64 hexadecimal digits, as tether keygen prints; it holds another character"}
	}
	return k, nil
}

// Seal encrypts plaintext with the current key, bound to context.
func (s *Sealer) Seal(plaintext, context []byte) ([]byte, error) {
	aead := s.aeads[s.current]
	out := make([]byte, 0, 2+len(s.current)+aead.NonceSize()+len(plaintext)+aead.Overhead())
	out = append(out, sealVersion, byte(len(s.current)))
	out = append(out, s.current...)
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(s.rand, nonce); err != nil {
		return nil, &Error{Code: CodeInternal, Op: "tether: seal", Message: "no randomness for a nonce", Err: err}
	}
	out = append(out, nonce...)
	return aead.Seal(out, nonce, plaintext, s.aad(out[:2+len(s.current)], context)), nil
}

// Open decrypts what Seal produced for the same context. A ciphertext that
// was changed, moved to another context or sealed with a key not in the
// ring fails with CodeInvalid; it never returns garbage.
func (s *Sealer) Open(sealed, context []byte) ([]byte, error) {
	fail := func(msg string) ([]byte, error) {
		return nil, &Error{Code: CodeInvalid, Op: "tether: open sealed data", Message: msg}
	}
	if len(sealed) < 2 || sealed[0] != sealVersion || len(sealed) < 2+int(sealed[1]) {
		return fail("not sealed data")
	}
	header := sealed[:2+int(sealed[1])]
	aead, ok := s.aeads[string(header[2:])]
	if !ok {
		return fail("sealed with a key that is not in the key ring")
	}
	rest := sealed[len(header):]
	if len(rest) < aead.NonceSize()+aead.Overhead() {
		return fail("sealed data is truncated")
	}
	plain, err := aead.Open(nil, rest[:aead.NonceSize()], rest[aead.NonceSize():], s.aad(header, context))
	if err != nil {
		return fail("sealed data does not authenticate: it was changed or belongs elsewhere")
	}
	return plain, nil
}

// CurrentKeyID returns the ID of the key that seals.
func (s *Sealer) CurrentKeyID() string { return s.current }

func (s *Sealer) aad(header, context []byte) []byte {
	return append(append(append([]byte(nil), header...), 0), context...)
}
