package oauthtest_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"

	"golang.org/x/oauth2"

	"github.com/tetherkit/tether/internal/oauthtest"
)

func config(op *oauthtest.OP) *oauth2.Config {
	return &oauth2.Config{
		ClientID: op.ClientID, ClientSecret: op.ClientSecret, RedirectURL: op.RedirectURI,
		Scopes: []string{"openid", "offline_access"},
		Endpoint: oauth2.Endpoint{
			AuthURL: op.Issuer + "/auth", TokenURL: op.Issuer + "/token",
			AuthStyle: oauth2.AuthStyleInParams,
		},
	}
}

// connect runs the authorization code flow with PKCE for account and
// returns the token.
func connect(t *testing.T, op *oauthtest.OP, account string) *oauth2.Token {
	t.Helper()
	ctx := context.Background()
	cfg := config(op)
	verifier := oauth2.GenerateVerifier()
	auth := cfg.AuthCodeURL("state-1", oauth2.AccessTypeOffline, oauth2.ApprovalForce,
		oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("login_hint", account))
	back, err := op.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	q := back.Query()
	if q.Get("state") != "state-1" || q.Get("iss") != op.Issuer || q.Get("code") == "" {
		t.Fatalf("callback: %s", back)
	}
	tok, err := cfg.Exchange(ctx, q.Get("code"), oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("token without access or refresh token: %+v", tok)
	}
	return tok
}

// refresh exchanges rt for a new token.
func refresh(op *oauthtest.OP, rt string) (*oauth2.Token, error) {
	return config(op).TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt}).Token()
}

func grantError(err error) string {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

// The provider behaves as tether's tests rely on: PKCE required, refresh
// tokens rotated, a replayed one revokes the grant, a withdrawn grant
// ends in invalid_grant, and of two refreshes racing with one token only
// one succeeds.
func TestProvider(t *testing.T) {
	op := oauthtest.Start(t, oauthtest.Options{})
	ctx := context.Background()

	t.Run("PKCE is required", func(t *testing.T) {
		back, err := op.Authorize(ctx, config(op).AuthCodeURL("s", oauth2.SetAuthURLParam("login_hint", "u")))
		if err != nil {
			t.Fatal(err)
		}
		if back.Query().Get("error") != "invalid_request" {
			t.Fatalf("an authorization request without PKCE: %s", back)
		}
	})
	t.Run("rotation and reuse", func(t *testing.T) {
		tok := connect(t, op, "user-rotation")
		next, err := refresh(op, tok.RefreshToken)
		if err != nil {
			t.Fatal(err)
		}
		if next.RefreshToken == "" || next.RefreshToken == tok.RefreshToken {
			t.Fatal("the refresh token was not rotated")
		}
		if _, err := refresh(op, tok.RefreshToken); grantError(err) != "invalid_grant" {
			t.Fatalf("a replayed refresh token: %v", err)
		}
		if _, err := refresh(op, next.RefreshToken); grantError(err) != "invalid_grant" {
			t.Fatalf("after a replay the current refresh token still works: %v", err)
		}
	})
	t.Run("withdrawn", func(t *testing.T) {
		tok := connect(t, op, "user-withdraw")
		if err := op.Withdraw(ctx, "user-withdraw"); err != nil {
			t.Fatal(err)
		}
		if _, err := refresh(op, tok.RefreshToken); grantError(err) != "invalid_grant" {
			t.Fatalf("after the grant was withdrawn: %v", err)
		}
	})
	t.Run("racing refreshes", func(t *testing.T) {
		tok := connect(t, op, "user-race")
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i := range errs {
			wg.Go(func() { _, errs[i] = refresh(op, tok.RefreshToken) })
		}
		wg.Wait()
		if (errs[0] == nil) == (errs[1] == nil) {
			t.Fatalf("two refreshes with one token: %v, %v; want one success", errs[0], errs[1])
		}
	})
}

// A launched provider answers until its ctx ends, and Close returns once
// it has stopped; Close may be called again.
func TestLaunchStops(t *testing.T) {
	oauthtest.Require(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	op, err := oauthtest.Launch(ctx, oauthtest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	discovery := op.Issuer + "/.well-known/openid-configuration"
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get(discovery)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("discovery: %s", resp.Status)
	}
	cancel()
	op.Close()
	if resp, err := client.Get(discovery); err == nil {
		resp.Body.Close()
		t.Fatalf("the provider still answers after its ctx ended: %s", resp.Status)
	}
	op.Close()
}

// Without node, Unavailable and Launch say what is missing and how to
// install it.
func TestUnavailable(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, launchErr := oauthtest.Launch(context.Background(), oauthtest.Options{})
	for _, err := range []error{oauthtest.Unavailable(), launchErr} {
		if !errors.Is(err, oauthtest.ErrUnavailable) || !strings.Contains(err.Error(), "node is not on PATH") || !strings.Contains(err.Error(), oauthtest.Install) {
			t.Errorf("without node: %v", err)
		}
	}
}
