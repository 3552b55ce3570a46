// Command orgconnect connects a team to an org with OAuth, against a real
// OpenID Connect provider on loopback (panva's oidc-provider, the one
// tether's tests use, run with node), and walks through what a host sees:
//
//  1. connect: Begin, the user's login at the provider (played here
//     without a browser), Complete: an Active org connection;
//  2. an API call with Manager.Client (the provider's userinfo endpoint);
//  3. the org's admin withdraws the app's access at the provider;
//  4. an hour later the access token has expired, and its refresh is
//     refused: the connection turns Inactive, with an event, and calls
//     get the re-authorize error;
//  5. re-authorize: Begin with Reauthorize, the login, Complete: the same
//     connection is Active again;
//  6. the API call works again;
//  7. delete: the grant is revoked at the provider, with an event.
//
// It needs node and the provider's npm package; from the module's root:
//
//	npm ci --prefix internal/oauthtest/op
//	go run ./examples/orgconnect
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sync/atomic"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/oauthtest"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/oauth"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "orgconnect:", err)
		stop()
		os.Exit(1)
	}
}

// account is the provider account the user logs in as: the org.
const account = "acme"

// run walks through the connection's life, printing each step to out.
func run(ctx context.Context, out io.Writer) error {
	// The redirect URL registered with the provider. A host serves
	// Manager.Callback there; this program has no browser and no server,
	// so it hands the callback's query to Complete, which Callback calls.
	const redirect = "http://127.0.0.1/oauth/callback"
	op, err := oauthtest.Launch(ctx, oauthtest.Options{RedirectURIs: []string{redirect}, AccessTTL: time.Hour})
	if err != nil {
		return err
	}
	defer op.Close()
	fmt.Fprintf(out, "provider: oidc-provider (node) at %s, access tokens live 1 h\n\n", op.Issuer)

	// A host keeps its connections in sqlstore, tokens sealed; memory
	// will do here.
	store := memstore.New()
	node, err := tether.Open(ctx, tether.Config{
		Store: store,
		OnEvent: func(e tether.Event) { // a host shows these, or forwards them as webhooks
			fmt.Fprintf(out, "   event %s by %s: %s\n", e.Type, e.Actor, e.Detail)
		},
	})
	if err != nil {
		return err
	}
	// The provider as the host registers it: its endpoints and the app's
	// credentials there.
	provider := oauth.OIDC("acme-id", op.Issuer, op.Issuer+"/auth", op.Issuer+"/token", op.Issuer+"/me",
		op.ClientID, op.ClientSecret, "openid", "offline_access")
	provider.RevokeURL = op.Issuer + "/token/revocation" // replaced and deleted grants are revoked (RFC 7009)
	clock := &skipClock{}
	m, err := oauth.New(oauth.Config{
		Node: node, Store: store, RedirectURL: redirect, Providers: []oauth.Provider{provider},
		HTTPClient: &http.Client{Timeout: 10 * time.Second},
		Clock:      clock,
	})
	if err != nil {
		return err
	}
	user := tether.WithActor(ctx, "ada@team-a") // the signed-in user, from the host's session

	fmt.Fprintln(out, "1. connect")
	res, err := login(user, out, m, op, oauth.BeginRequest{Provider: "acme-id", Owner: "team-a", Name: "Acme", LoginHint: account})
	if err != nil {
		return err
	}
	id := res.Connection.ID
	fmt.Fprintf(out, "   Complete: %s %q %s, org %q of team %s\n", id, res.Connection.Name, res.Connection.Status, res.Connection.RemoteName, res.Connection.Owner)

	fmt.Fprintln(out, "\n2. an API call")
	if err := call(ctx, out, m, id, op.Issuer+"/me"); err != nil {
		return err
	}

	fmt.Fprintf(out, "\n3. %s withdraws the app's access at the provider\n", account)
	if err := op.Withdraw(ctx, account); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n4. an hour later (the program skips it) the access token has expired")
	clock.skip.Store(int64(time.Hour + time.Minute))
	_, err = m.Client(ctx, id) // refreshes the access token first: refused
	if tether.ErrorCode(err) != tether.CodeUnauthenticated {
		return fmt.Errorf("the refresh of a withdrawn grant gave %v, want the re-authorize error", err)
	}
	fmt.Fprintf(out, "   Manager.Client: %s (%v)\n", tether.ErrorCode(err), err)
	c, err := node.Get(ctx, id)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   %s is %s: its jobs hold until the team re-authorizes it\n", id, c.Status)

	fmt.Fprintln(out, "\n5. re-authorize: the same login, for the connection")
	res, err = login(user, out, m, op, oauth.BeginRequest{Provider: "acme-id", Reauthorize: id, LoginHint: account})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   Complete: %s %s, the same connection\n", res.Connection.ID, res.Connection.Status)

	fmt.Fprintln(out, "\n6. the API call again")
	if err := call(ctx, out, m, id, op.Issuer+"/me"); err != nil {
		return err
	}

	fmt.Fprintln(out, "\n7. delete")
	if c, err = m.Delete(user, id); err != nil { // Node.Delete, then the grant's revocation
		return err
	}
	_, err = m.Client(ctx, id)
	fmt.Fprintf(out, "   %s is %s; Manager.Client: %s\n", id, c.Status, tether.ErrorCode(err))
	return nil
}

// login begins a connection (or a re-authorization), plays the user's
// browser at the provider, and completes the login with the callback's
// query.
func login(ctx context.Context, out io.Writer, m *oauth.Manager, op *oauthtest.OP, req oauth.BeginRequest) (*oauth.Result, error) {
	authURL, err := m.Begin(ctx, req)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(authURL)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "   Begin: send the user to %s://%s%s (PKCE %s, a fresh state)\n", u.Scheme, u.Host, u.Path, u.Query().Get("code_challenge_method"))
	back, err := op.Authorize(ctx, authURL)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(out, "   the user logs in as %s and consents; the provider sends the browser back to %s%s\n", account, back.Host, back.Path)
	res, err := m.Complete(ctx, back.Query())
	if err != nil {
		return nil, err
	}
	if res.Connection == nil {
		return nil, errors.New("the login asks the user to choose an org: this provider never does")
	}
	return res, nil
}

// call reads api with connection id's client, which sends its access
// token.
func call(ctx context.Context, out io.Writer, m *oauth.Manager, id, api string) error {
	client, err := m.Client(ctx, id)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, api, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "   Manager.Client: GET %s -> %s %s\n", api, resp.Status, body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the API call answered %s", resp.Status)
	}
	return nil
}

// skipClock is the system clock moved ahead by skip nanoseconds: the
// program skips the hour an access token lives instead of waiting.
type skipClock struct{ skip atomic.Int64 }

func (c *skipClock) Now() time.Time                         { return time.Now().Add(time.Duration(c.skip.Load())) }
func (c *skipClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
