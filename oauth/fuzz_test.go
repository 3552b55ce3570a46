package oauth

import (
	"errors"
	"testing"

	"github.com/tetherkit/tether"
)

// FuzzParseUserinfo feeds arbitrary provider answers to the userinfo
// parser: it accepts only an object with a usable sub, and refuses
// everything else with CodeProtocol, never panicking.
func FuzzParseUserinfo(f *testing.F) {
	for _, s := range []string{`{"sub":"u1","name":"Ada"}`, `{"sub":""}`, `{}`, `[]`, `null`, `{"sub":1}`, `{"sub":"a\nb"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		u, err := parseUserinfo(body)
		if err != nil {
			var e *tether.Error
			if !errors.As(err, &e) || e.Code != tether.CodeProtocol {
				t.Fatalf("refusal is not a protocol error: %v", err)
			}
			return
		}
		if u.Sub == "" || len(u.Sub) > 255 || len(u.Name) > 255 {
			t.Fatalf("accepted %+v", u)
		}
	})
}
