package oauth_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/oauth"
	"github.com/tetherkit/tether/sqlstore"
)

// redirect is the callback URL registered with the test OAuth server.
const redirect = "http://127.0.0.1/oauth/callback"

// sfRedirect is the callback URL registered with the Salesforce test server.
const sfRedirect = "https://app.example/oauth/callback"

// clockAt is a settable clock.
type clockAt struct{ now atomic.Int64 }

func (c *clockAt) Now() time.Time                         { return time.Unix(0, c.now.Load()) }
func (c *clockAt) After(d time.Duration) <-chan time.Time { return time.After(d) }

// connection returns the connection a completed login created, failing
// when the login asks for a choice instead.
func connection(res *oauth.Result, err error) (*tether.Connection, error) {
	if err != nil {
		return nil, err
	}
	if res.Connection == nil {
		return nil, fmt.Errorf("the login asks for a choice among %+v", res.Choices)
	}
	return res.Connection, nil
}

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
	calls := &oauthtest.TokenCounter{}
	clock := &clockAt{}
	clock.now.Store(time.Now().UnixNano())
	var managers []*oauth.Manager
	for range 2 {
		_, _, m := pgProcess(t, dsn, sealer, oauth.Config{
			RedirectURL: redirect, Clock: clock,
			HTTPClient: &http.Client{Transport: calls, Timeout: 10 * time.Second},
			Providers:  []oauth.Provider{oauth.OIDC("test-op", op.Issuer, op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access")},
		})
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
	c, err := connection(managers[1].Complete(ctx, back.Query())) // the callback lands on the other replica
	if err != nil {
		t.Fatal(err)
	}
	clock.now.Add(int64(2 * time.Minute))
	before := calls.Tokens.Load()
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
	if n := calls.Tokens.Load() - before; n != 1 {
		t.Fatalf("two processes × 25 goroutines needing a refresh made %d token endpoint calls, want 1", n)
	}
	for _, a := range got {
		if a != got[0] {
			t.Fatalf("callers got different tokens: %q", got)
		}
	}
}

// On PostgreSQL: the raw rows of a real grant hold neither of its tokens
// (SECURITY 33), and two processes sweeping a deleted connection at once
// revoke its grant once, with one credentials_gone event.
func TestSweepTwoProcessesPostgres(t *testing.T) {
	dsn := postgresDSN(t)
	op := oauthtest.Start(t, oauthtest.Options{RedirectURIs: []string{redirect}})
	g := oauthtest.NewGate(t, op.Issuer)
	ctx := context.Background()
	sealer, err := tether.NewSealer("k1", map[string][]byte{"k1": make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	p := oauth.OIDC("test-op", op.Issuer, op.Issuer+"/auth", g.URL+"/token", op.Issuer+"/me", op.ClientID, op.ClientSecret, "openid", "offline_access")
	p.RevokeURL = g.URL + "/token/revocation"
	var (
		managers []*oauth.Manager
		nodes    []*tether.Node
		db       *sql.DB
	)
	for range 2 {
		pool, node, m := pgProcess(t, dsn, sealer, oauth.Config{RedirectURL: redirect, Providers: []oauth.Provider{p}})
		db = pool
		managers, nodes = append(managers, m), append(nodes, node)
	}
	auth, err := managers[0].Begin(ctx, oauth.BeginRequest{Provider: "test-op", Owner: "team-a", LoginHint: "org-pg-sweep"})
	if err != nil {
		t.Fatal(err)
	}
	back, err := op.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	c, err := connection(managers[0].Complete(ctx, back.Query()))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := managers[1].Token(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	var sealed []byte
	if err := db.QueryRow(`SELECT data FROM tether_oauth_tokens WHERE connection_id = $1`, c.ID).Scan(&sealed); err != nil {
		t.Fatal(err)
	}
	reader, err := sqlstore.New(ctx, db, sqlstore.PostgreSQL, sqlstore.Config{Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	data, _, err := reader.LoadOAuthToken(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	var stored struct {
		Refresh string `json:"refresh"`
	}
	if err := json.Unmarshal(data, &stored); err != nil || stored.Refresh == "" {
		t.Fatalf("stored grant: %v", err)
	}
	rt := stored.Refresh
	for _, secret := range []string{tok.AccessToken, rt} {
		if bytes.Contains(sealed, []byte(secret)) {
			t.Fatal("tether_oauth_tokens holds a token in plaintext")
		}
	}

	if _, err := nodes[0].Delete(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, m := range managers {
		wg.Go(func() {
			if err := m.Sweep(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if n := g.Revokes.Load(); n != 1 {
		t.Fatalf("two processes sweeping revoked %d times, want 1", n)
	}
	evs, err := nodes[1].Events(ctx, c.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	gone := 0
	for _, ev := range evs {
		if ev.Type == tether.EventCredentialsGone {
			gone++
		}
	}
	if gone != 1 {
		t.Fatalf("%d credentials_gone events, want 1: %+v", gone, evs)
	}
	if got := op.Post(t, "/token", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {rt}})["error"]; got != "invalid_grant" {
		t.Fatalf("the provider answers the revoked refresh token with %q", got)
	}
}

// pgProcess opens what one process has on the PostgreSQL at dsn: its own
// pool, a sqlstore, a Node and a Manager configured by cfg (whose Node and
// Store it fills in).
func pgProcess(t *testing.T, dsn string, sealer *tether.Sealer, cfg oauth.Config) (*sql.DB, *tether.Node, *oauth.Manager) {
	t.Helper()
	ctx := context.Background()
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
	cfg.Node, cfg.Store = node, st
	m, err := oauth.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return db, node, m
}
