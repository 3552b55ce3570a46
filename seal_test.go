package tether_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tetherkit/tether"
)

func TestSealer(t *testing.T) {
	k1, k2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	s1, err := tether.NewSealer("k1", map[string][]byte{"k1": k1})
	if err != nil {
		t.Fatal(err)
	}
	secret, ctx := []byte("ed25519 private key bytes"), []byte("tether/instance/inst_1")
	sealed, err := s1.Seal(secret, ctx)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, secret) {
		t.Fatal("sealed data contains the plaintext")
	}
	again, _ := s1.Seal(secret, ctx)
	if bytes.Equal(sealed, again) {
		t.Fatal("two seals of the same secret are equal: the nonce is not random")
	}
	if got, err := s1.Open(sealed, ctx); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("Open = %q, %v", got, err)
	}
	// Every single changed byte is refused.
	for i := range sealed {
		bad := bytes.Clone(sealed)
		bad[i] ^= 0x20
		if got, err := s1.Open(bad, ctx); tether.ErrorCode(err) != tether.CodeInvalid || got != nil {
			t.Fatalf("byte %d changed: %q, %v", i, got, err)
		}
	}
	for name, bad := range map[string][]byte{"empty": nil, "truncated": sealed[:10], "cut tag": sealed[:len(sealed)-1]} {
		if _, err := s1.Open(bad, ctx); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := s1.Open(sealed, []byte("tether/instance/inst_2")); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("opened in another context: %v", err)
	}
	// Rotation: k2 seals, k1 still opens old data; without k1 it does not.
	s2, err := tether.NewSealer("k2", map[string][]byte{"k1": k1, "k2": k2})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s2.Open(sealed, ctx); err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("rotated ring cannot open old data: %v", err)
	}
	fresh, _ := s2.Seal(secret, ctx)
	if _, err := s1.Open(fresh, ctx); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("a ring without k2 opened k2's seal: %v", err)
	}
	only2, _ := tether.NewSealer("k2", map[string][]byte{"k2": k2})
	if _, err := only2.Open(sealed, ctx); tether.ErrorCode(err) != tether.CodeInvalid {
		t.Fatalf("a ring without k1 opened k1's seal: %v", err)
	}
	for name, keys := range map[string]map[string][]byte{
		"short key":       {"k1": k1[:16]},
		"current missing": {"other": k1},
		"empty ID":        {"k1": k1, "": k2},
	} {
		if _, err := tether.NewSealer("k1", keys); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// What `tether keygen` prints is what ParseSealingKey takes, and a bad key
// is refused without being repeated.
func TestParseSealingKey(t *testing.T) {
	const printed = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n"
	k, err := tether.ParseSealingKey(printed)
	if err != nil || len(k) != 32 || k[1] != 0x11 || k[31] != 0xff {
		t.Fatalf("%x, %v", k, err)
	}
	if _, err := tether.NewSealer("k1", map[string][]byte{"k1": k}); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "00", strings.Repeat("zz", 32), strings.Repeat("ab", 33), "0x" + strings.Repeat("ab", 31)} {
		_, err := tether.ParseSealingKey(bad)
		if tether.ErrorCode(err) != tether.CodeInvalid || bad != "" && len(bad) > 4 && strings.Contains(err.Error(), bad[2:]) {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

func FuzzParseSealingKey(f *testing.F) {
	f.Add("00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff")
	f.Add(" zz ")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := tether.ParseSealingKey(s)
		if err == nil && len(k) != 32 {
			t.Fatalf("%q gave %d bytes", s, len(k))
		}
		if err != nil && len(s) >= 8 && strings.Contains(err.Error(), s) {
			t.Fatalf("the error repeats the input: %v", err)
		}
	})
}
