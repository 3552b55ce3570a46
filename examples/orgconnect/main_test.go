package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/tetherkit/tether/internal/oauthtest"
)

// The walk-through against the real provider prints its steps in order.
// It is skipped, naming what is missing, without node and the provider's
// npm package, and fails instead when TETHER_REQUIRE_NODE is set (CI).
func TestOrgConnect(t *testing.T) {
	oauthtest.Require(t)
	var out bytes.Buffer
	if err := run(t.Context(), &out); err != nil {
		t.Fatalf("run: %v\n%s", err, out.String())
	}
	rest := out.String()
	for _, want := range []string{
		"1. connect",
		"/auth (PKCE S256, a fresh state)",
		"the user logs in as acme and consents",
		"event created by ada@team-a: connected to acme",
		`"Acme" active, org "acme" of team team-a`,
		"2. an API call",
		`/me -> 200 OK {"sub":"acme"}`,
		"3. acme withdraws the app's access at the provider",
		"4. an hour later",
		"event auth_lost by system: the provider refused the refresh token (invalid_grant)",
		"Manager.Client: unauthenticated",
		"is inactive",
		"5. re-authorize",
		"/auth (PKCE S256, a fresh state)",
		"event reauthorized by ada@team-a",
		"active, the same connection",
		"6. the API call again",
		`/me -> 200 OK {"sub":"acme"}`,
		"7. delete",
		"event deleted by ada@team-a",
		"event credentials_gone by system: the connection's tokens were revoked at the provider",
		"is deleted; Manager.Client: not_connected",
	} {
		i := strings.Index(rest, want)
		if i < 0 {
			t.Fatalf("output lacks %q after the steps before it:\n%s", want, out.String())
		}
		rest = rest[i+len(want):]
	}
}
