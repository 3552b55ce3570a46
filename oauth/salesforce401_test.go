package oauth_test

import (
	"context"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/oauth"
)

// Salesforce answers no expires_in: the client refreshes once when the
// API answers 401 and retries the call, and refreshes at the host that
// issued the grant.
func TestSalesforceSessionExpired(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	c, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "hank@globex.com", Host: "globex.my.salesforce.com"}))
	if err != nil {
		t.Fatal(err)
	}
	client, err := e.m.Client(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	e.clock.now.Add(int64(time.Hour)) // the session ends an hour later
	e.sf.ExpireSessions()
	calls := e.sf.TokenCalls()
	resp, err := client.Get(c.RemoteURL + "/services/data/v62.0/limits")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after the session expired the call answered %d %s", resp.StatusCode, body)
	}
	if n := e.sf.TokenCalls() - calls; n != 1 {
		t.Fatalf("%d refreshes, want 1", n)
	}
	reqs := e.sf.Requests()
	if !slices.Contains(reqs, "POST globex.my.salesforce.com/services/oauth2/token") || slices.Contains(reqs, "POST login.salesforce.com/services/oauth2/token") {
		t.Fatalf("the grant was not refreshed at the host that issued it: %q", reqs)
	}
}

// Deleting a Salesforce connection revokes its grant at the host that
// issued it, and says so in the connection's history.
func TestSalesforceDeleteRevokes(t *testing.T) {
	e := newSFEnv(t)
	ctx := context.Background()
	c, err := connection(e.connect(t, oauth.BeginRequest{Provider: "salesforce", Owner: "team-a", LoginHint: "hank@globex.com", Host: "globex.my.salesforce.com"}))
	if err != nil {
		t.Fatal(err)
	}
	client, err := e.m.Client(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.m.Delete(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(e.sf.Requests(), "POST globex.my.salesforce.com/services/oauth2/revoke") {
		t.Fatalf("no revocation at the issuing host: %q", e.sf.Requests())
	}
	resp, err := client.Get(c.RemoteURL + "/services/data/v62.0/limits")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Fatal("the deleted connection's client still reaches the org")
		}
	}
	evs, err := e.node.Events(ctx, c.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if countEvents(evs, tether.EventCredentialsGone) != 1 {
		t.Fatalf("events: %+v", evs)
	}
}
