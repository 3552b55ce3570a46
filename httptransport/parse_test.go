package httptransport

import (
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		" 10 ":                          10 * time.Second,
		"-5":                            0,
		"999999999":                     24 * time.Hour,
		"Sat, 21 Nov 2026 12:00:30 GMT": 30 * time.Second,
		"Sat, 21 Nov 2026 11:00:00 GMT": 0,
		"soon":                          0,
	} {
		if got := retryAfter(v, now); got != want {
			t.Errorf("retryAfter(%q) = %v, want %v", v, got, want)
		}
	}
}

func TestOperation(t *testing.T) {
	for p, want := range map[string]tether.Op{
		"/v1/push":              tether.OpPush,
		"/tether/v1/poll":       tether.OpPoll,
		"/a/b/c/v1/accept":      tether.OpAccept,
		"/tether/v1/":           "",
		"/tether/v2/push":       "",
		"/tether/v1/push/":      "",
		"/tether/v1/unknown":    "",
		"/tether/xv1/push":      "",
		"/tether/v1/push/extra": "",
	} {
		if got, _ := operation(p); got != want {
			t.Errorf("operation(%q) = %q, want %q", p, got, want)
		}
	}
}

// FuzzParse covers what the HTTP layer parses from a request or answer
// before the node sees it: the path, Retry-After and a refusal's code.
func FuzzParse(f *testing.F) {
	f.Add("/tether/v1/push", "3")
	f.Add("/v1/poll", "Sat, 21 Nov 2026 12:00:30 GMT")
	f.Add("//v1//push", "-1")
	f.Add("/v1/push", `{"refused":{"code":"gone"}}`)
	f.Add("/v1/push", `{"refused":{"code":"gone\u202e"}}`)
	f.Fuzz(func(t *testing.T, p, header string) {
		if c := refusalCode([]byte(header)); !codeName.MatchString(string(c)) {
			t.Fatalf("refusalCode(%q) = %q, not a code name", header, c)
		}
		if op, ok := operation(p); ok != (op != "") {
			t.Fatalf("operation(%q) = %q, %v", p, op, ok)
		}
		if d := retryAfter(header, time.Now()); d < 0 || d > 24*time.Hour {
			t.Fatalf("retryAfter(%q) = %v", header, d)
		}
	})
}
