package oauth_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/http"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/oauth"
	"github.com/tetherkit/tether/sqlstore"
)

// postgresDSN returns a DSN on a schema of its own, dropped afterwards;
// it skips the test when TETHER_POSTGRES_URL is unset (CI sets it).
func postgresDSN(t *testing.T) string {
	t.Helper()
	base := os.Getenv("TETHER_POSTGRES_URL")
	if base == "" {
		t.Skip("TETHER_POSTGRES_URL is not set: the PostgreSQL refresh race is skipped (.ci/run sets it)")
	}
	admin, err := sql.Open("pgx", base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "tether_oauth_" + hex.EncodeToString(b)
	if _, err := admin.Exec(`CREATE SCHEMA ` + schema); err != nil {
		t.Fatalf("PostgreSQL: %v", err)
	}
	t.Cleanup(func() {
		if admin, err := sql.Open("pgx", base); err == nil {
			_, _ = admin.Exec(`DROP SCHEMA ` + schema + ` CASCADE`)
			admin.Close()
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Two processes on one PostgreSQL (two Nodes and Managers, each with its
// own database pool), 25 goroutines each, all needing a refresh at once:
// one call reaches the token endpoint, and all get its token.
func TestRefreshRaceTwoProcesses(t *testing.T) {
	dsn := postgresDSN(t)
	op := oauthtest.Start(t, oauthtest.Options{RedirectURIs: []string{redirect}})
	ctx := context.Background()
	sealer, err := tether.NewSealer("k1", map[string][]byte{"k1": make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	calls := &counting{}
	clock := &clockAt{}
	clock.now.Store(time.Now().UnixNano())
	var managers []*oauth.Manager
	for range 2 {
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		st, err := sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{Sealer: sealer})
		if err != nil {
			t.Fatal(err)
		}
		node, err := tether.Open(ctx, tether.Config{Store: st})
		if err != nil {
			t.Fatal(err)
		}
		m, err := oauth.New(oauth.Config{
			Node: node, Store: st, RedirectURL: redirect, Clock: clock,
			HTTPClient: &http.Client{Transport: calls, Timeout: 10 * time.Second},
			Providers:  []oauth.Provider{oauth.OIDC("test-op", op.Issuer, op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access")},
		})
		if err != nil {
			t.Fatal(err)
		}
		managers = append(managers, m)
	}
	auth, err := managers[0].Begin(ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-a", LoginHint: "org-race"})
	if err != nil {
		t.Fatal(err)
	}
	back, err := op.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	c, err := managers[1].Complete(ctx, back.Query()) // the callback lands on the other replica
	if err != nil {
		t.Fatal(err)
	}
	clock.now.Add(int64(2 * time.Minute))
	before := calls.tokens.Load()
	var wg sync.WaitGroup
	got := make([]string, 50)
	for i := range got {
		m := managers[i%2]
		wg.Go(func() {
			tok, err := m.Token(ctx, c.ID)
			if err != nil {
				t.Error(err)
				return
			}
			got[i] = tok.AccessToken
		})
	}
	wg.Wait()
	if n := calls.tokens.Load() - before; n != 1 {
		t.Fatalf("two processes × 25 goroutines needing a refresh made %d token endpoint calls, want 1", n)
	}
	for _, a := range got {
		if a != got[0] {
			t.Fatalf("callers got different tokens: %q", got)
		}
	}
}
