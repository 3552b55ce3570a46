package oauth_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/oauth"
)

// SECURITY 27: every authorization URL uses PKCE S256, and its challenge
// and state are unique per attempt and long enough not to be guessed.
func TestAuthorizationURLsUsePKCE(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	challenges, states := map[string]bool{}, map[string]bool{}
	for i := range 50 {
		provider := []string{"salesforce", "salesforce-sandbox"}[i%2]
		auth, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: provider, Owner: "team-a"})
		if err != nil {
			t.Fatal(err)
		}
		u, err := url.Parse(auth)
		if err != nil {
			t.Fatal(err)
		}
		q := u.Query()
		if q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 {
			t.Fatalf("no PKCE S256: %s", auth)
		}
		if len(q.Get("state")) < 43 {
			t.Fatalf("state %q is shorter than 256 bits", q.Get("state"))
		}
		if challenges[q.Get("code_challenge")] || states[q.Get("state")] {
			t.Fatalf("a challenge or state was used twice: %s", auth)
		}
		challenges[q.Get("code_challenge")], states[q.Get("state")] = true, true
	}
}

// The callback handler works under any prefix: it completes a login, hands
// refusals to the host, and takes GET only.
func TestCallbackHandlerUnderPrefix(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	type outcome struct {
		res *oauth.Result
		err error
	}
	got := make(chan outcome, 1)
	mux := http.NewServeMux()
	mux.Handle("/integrations/salesforce/", http.StripPrefix("/integrations/salesforce", e.m.Callback(func(w http.ResponseWriter, r *http.Request, res *oauth.Result, err error) {
		got <- outcome{res, err}
		if err != nil {
			http.Error(w, "the connection failed", tether.HTTPStatus(tether.ErrorCode(err)))
			return
		}
		http.Redirect(w, r, "/connections/"+res.Connection.ID, http.StatusSeeOther)
	})))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	auth, err := e.m.Begin(ctx, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"})
	if err != nil {
		t.Fatal(err)
	}
	back, err := e.sf.Authorize(ctx, auth)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := noFollow.Get(srv.URL + "/integrations/salesforce/oauth/callback?" + back.RawQuery)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	o := <-got
	if o.err != nil || resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/connections/"+o.res.Connection.ID {
		t.Fatalf("callback: %d %q, %v", resp.StatusCode, resp.Header.Get("Location"), o.err)
	}

	resp, err = noFollow.Get(srv.URL + "/integrations/salesforce/oauth/callback?" + back.RawQuery) // replayed
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if o := <-got; tether.ErrorCode(o.err) != tether.CodeInvalid || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("a replayed callback: %d, %v", resp.StatusCode, o.err)
	}

	resp, err = http.Post(srv.URL+"/integrations/salesforce/oauth/callback", "application/x-www-form-urlencoded", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST to the callback: %d", resp.StatusCode)
	}
}

// An org connection whose tokens are missing (they could not be stored
// when it was made) turns Inactive on its first use, asking for a
// re-authorization, instead of failing as not found.
func TestTokenWithoutStoredTokens(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	c, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "ada@acme.com"}))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.store.DeleteOAuthToken(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, c.ID); tether.ErrorCode(err) != tether.CodeUnauthenticated {
		t.Fatalf("Token without stored tokens: %v, want unauthenticated", err)
	}
	if got, err := e.node.Get(ctx, c.ID); err != nil || got.Status != tether.StatusInactive {
		t.Fatalf("the connection: %+v, %v", got, err)
	}
	if _, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Reauthorize: c.ID, LoginHint: "ada@acme.com"})); err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Token(ctx, c.ID); err != nil {
		t.Fatalf("after re-authorizing: %v", err)
	}
}
