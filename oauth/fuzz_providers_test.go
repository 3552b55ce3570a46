package oauth

import (
	"errors"
	"strings"
	"testing"

	"github.com/tetherkit/tether"
)

// refusedAsProtocol fails t unless err is nil or a CodeProtocol error.
func refusedAsProtocol(t *testing.T, err error) bool {
	t.Helper()
	if err == nil {
		return false
	}
	var e *tether.Error
	if !errors.As(err, &e) || e.Code != tether.CodeProtocol {
		t.Fatalf("refusal is not a protocol error: %v", err)
	}
	return true
}

// FuzzSalesforceAnswers feeds arbitrary text to the parsers of Salesforce's
// answers: the identity URL, userinfo, the Organization query, IDs, and
// instance and login hosts. They never panic, and what they accept is
// what tether relies on.
func FuzzSalesforceAnswers(f *testing.F) {
	for _, s := range []string{
		"https://login.salesforce.com/id/00D5g000004ABCDEAA/0055g000002XYZWQAA",
		`{"organization_id":"00D5g000004ABCDEAA","user_id":"0055g000002XYZWQAA"}`,
		`{"totalSize":1,"done":true,"records":[{"Name":"Acme","IsSandbox":true}]}`,
		"https://acme.my.salesforce.com", "acme--uat.sandbox.my.salesforce.com", "acme.lightning.force.com",
		"00D5g000004ABCD", `{"records":[]}`, "https://x/id/00D/005", "\x00",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if org, user, err := parseIdentityURL(s); err == nil {
			if len(org) != 18 || len(user) != 18 || !strings.HasPrefix(org, "00D") || !strings.HasPrefix(user, "005") {
				t.Fatalf("identity URL %q gave %q %q", s, org, user)
			}
		}
		if u, err := parseSalesforceUserinfo([]byte(s)); !refusedAsProtocol(t, err) && (salesforceID(u.Org) == "" || salesforceID(u.User) == "") {
			t.Fatalf("userinfo %q accepted as %+v", s, u)
		}
		if o, err := parseOrganization([]byte(s)); !refusedAsProtocol(t, err) && !usableName(o.Name) {
			t.Fatalf("organization %q accepted as %+v", s, o)
		}
		if id := salesforceID(s); id != "" && (len(id) != 18 || salesforceID(id) != id || !strings.EqualFold(id[:15], s[:15])) {
			t.Fatalf("ID %q normalised to %q", s, id)
		}
		if u, err := salesforceInstance(s); err == nil && (u.Scheme != "https" || !hasSuffix(u.Host, salesforceInstanceSuffixes...)) {
			t.Fatalf("instance %q accepted as %v", s, u)
		}
		if h, err := SalesforceLoginHost(s); err == nil {
			if strings.ContainsAny(h, ":/@?# ") || strings.Contains(h, "lightning") || h != strings.ToLower(h) {
				t.Fatalf("login host %q accepted as %q", s, h)
			}
			if again, err := SalesforceLoginHost(h); err != nil || again != h {
				t.Fatalf("login host %q is not stable: %q, %v", h, again, err)
			}
		}
	})
}

// FuzzDynamicsAnswers feeds arbitrary answers to the parsers of the Global
// Discovery Service and WhoAmI: they never panic, and every environment
// they accept is enabled, identified by GUIDs and on the cloud's hosts.
func FuzzDynamicsAnswers(f *testing.F) {
	f.Add([]byte(`{"value":[{"Id":"00000000-0000-4000-8000-000000000001","FriendlyName":"Contoso","Url":"https://contoso.crm4.dynamics.com","ApiUrl":"https://contoso.api.crm4.dynamics.com","TenantId":"aaaaaaaa-0000-4000-8000-00000000000a","State":0,"OrganizationType":5}]}`))
	f.Add([]byte(`{"OrganizationId":"00000000-0000-4000-8000-000000000001"}`))
	f.Add([]byte(`{"value":null}`))
	f.Add([]byte(`{"value":[{"Url":"https://evil.example"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for c, cl := range clouds {
			cands, err := parseInstances(body, c)
			if refusedAsProtocol(t, err) {
				continue
			}
			for _, cand := range cands {
				if !isGUID(cand.ID) || !isGUID(cand.Tenant) || cand.ID != strings.ToLower(cand.ID) || !usableName(cand.Name) ||
					!strings.HasPrefix(cand.URL, "https://") || !hasSuffix(strings.TrimPrefix(cand.URL, "https://"), cl.suffixes...) ||
					!hasSuffix(strings.TrimPrefix(cand.Resource, "https://"), cl.suffixes...) {
					t.Fatalf("%s: accepted %+v", c, cand)
				}
			}
		}
		if org, err := parseWhoAmI(body); !refusedAsProtocol(t, err) && !isGUID(org) {
			t.Fatalf("WhoAmI accepted %q", org)
		}
	})
}
