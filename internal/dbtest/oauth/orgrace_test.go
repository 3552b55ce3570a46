package oauth_test

import (
	"context"
	"net/url"
	"slices"
	"sync"
	"testing"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/internal/providertest"
	"github.com/tetherkit/tether/oauth"
)

// One org per team across replicas: two teams finishing a login to the
// same Salesforce org at once, each on its own process on one PostgreSQL,
// get one connection between them; the other gets CodeOrgTaken, and its
// unused grant is revoked at the provider. Repeated to give the race its
// chances.
func TestOneOrgPerTeamRaceAcrossReplicas(t *testing.T) {
	dsn := postgresDSN(t)
	sf := providertest.StartSalesforce(t, providertest.SalesforceOptions{
		ClientID: "3MVG9-tether", ClientSecret: "consumer-secret", RedirectURI: sfRedirect,
	}, providertest.SalesforceOrg{Name: "Acme", MyDomain: "acme.my.salesforce.com", Users: []string{"ada@acme.com", "bob@acme.com"}})
	ctx := context.Background()
	sealer, err := tether.NewSealer("k1", map[string][]byte{"k1": make([]byte, 32)})
	if err != nil {
		t.Fatal(err)
	}
	var managers []*oauth.Manager
	var nodes []*tether.Node
	for range 2 {
		_, node, m := pgProcess(t, dsn, sealer, oauth.Config{
			RedirectURL: sfRedirect, HTTPClient: sf.Client(),
			Providers: []oauth.Provider{oauth.Salesforce(oauth.SalesforceProduction, "3MVG9-tether", "consumer-secret")},
		})
		managers, nodes = append(managers, m), append(nodes, node)
	}
	for round := range 5 {
		var queries []url.Values
		for i, user := range []string{"ada@acme.com", "bob@acme.com"} {
			auth, err := managers[i].Begin(ctx, oauth.BeginRequest{Provider: "salesforce", Owner: []string{"team-a", "team-b"}[i], LoginHint: user})
			if err != nil {
				t.Fatal(err)
			}
			back, err := sf.Authorize(ctx, auth)
			if err != nil {
				t.Fatal(err)
			}
			queries = append(queries, back.Query())
		}
		revokesBefore := countRevokes(sf.Requests())
		var wg sync.WaitGroup
		results := make([]*tether.Connection, 2)
		errs := make([]error, 2)
		for i := range 2 {
			wg.Go(func() { results[i], errs[i] = connection(managers[i].Complete(ctx, queries[i])) })
		}
		wg.Wait()
		won := 0
		for i := range 2 {
			switch {
			case errs[i] == nil:
				won++
			case tether.ErrorCode(errs[i]) != tether.CodeOrgTaken:
				t.Fatalf("round %d: the losing team got %v, want org_taken", round, errs[i])
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d teams connected the org (%v)", round, won, errs)
		}
		if n := countRevokes(sf.Requests()) - revokesBefore; n != 1 {
			t.Fatalf("round %d: %d revocations, want the loser's grant revoked once", round, n)
		}
		winner := results[0]
		if winner == nil {
			winner = results[1]
		}
		if _, err := nodes[0].Delete(ctx, winner.ID); err != nil {
			t.Fatal(err)
		}
	}
}

func countRevokes(reqs []string) int {
	return len(slices.DeleteFunc(reqs, func(r string) bool { return r != "POST login.salesforce.com/services/oauth2/revoke" }))
}
