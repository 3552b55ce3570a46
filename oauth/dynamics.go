package oauth

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/tetherkit/tether"
)

// Cloud is a Dynamics 365 environment type: the Microsoft cloud the
// environment lives in. Each has its own identity authority, Global
// Discovery Service and environment hosts, and an app must be registered
// in each identity cloud separately.
type Cloud string

const (
	CloudPublic  Cloud = "public"   // Public Cloud (the default)
	CloudGCC     Cloud = "gcc"      // US Government Community Cloud
	CloudGCCHigh Cloud = "gcc-high" // US Government Community Cloud High
	CloudDoD     Cloud = "dod"      // US Department of Defense
	CloudChina   Cloud = "china"    // China, operated by 21Vianet
)

// cloud is what tether knows of a Microsoft cloud.
type cloud struct {
	label     string   // as the Connections page shows it
	authority string   // Microsoft identity platform
	discovery string   // Global Discovery Service host
	suffixes  []string // environment hosts
}

// clouds are the public endpoints of each Microsoft cloud (Microsoft
// Learn: "National clouds"; Power Apps "Discover the URL for your
// organization", its Global Discovery Service table).
var clouds = map[Cloud]cloud{
	CloudPublic: {"Public Cloud", "https://login.microsoftonline.com", "globaldisco.crm.dynamics.com", publicSuffixes()},
	CloudGCC:    {"GCC", "https://login.microsoftonline.com", "globaldisco.crm9.dynamics.com", []string{".crm9.dynamics.com"}},
	CloudGCCHigh: {"GCC High", "https://login.microsoftonline.us", "globaldisco.crm.microsoftdynamics.us",
		[]string{".crm.microsoftdynamics.us"}},
	CloudDoD:   {"DoD", "https://login.microsoftonline.us", "globaldisco.crm.appsplatform.us", []string{".crm.appsplatform.us"}},
	CloudChina: {"China", "https://login.partner.microsoftonline.cn", "globaldisco.crm.dynamics.cn", []string{".crm.dynamics.cn"}},
}

// publicSuffixes are the Public Cloud's environment hosts: crm and the
// regional crm2 to crm21, but crm9, which is GCC's.
func publicSuffixes() []string {
	s := []string{".crm.dynamics.com"}
	for i := 2; i <= 21; i++ {
		if i != 9 {
			s = append(s, ".crm"+strconv.Itoa(i)+".dynamics.com")
		}
	}
	return s
}

// Dynamics returns the provider for Dynamics 365 (Dataverse) environments
// of cloud c, with the app the host registered in that cloud's Microsoft
// Entra ID. Its name is "dynamics" for the Public Cloud and
// "dynamics-<cloud>" for the others.
//
// The user logs in at the cloud's authority (work and school accounts),
// with the Global Discovery Service as the first resource. Complete then
// offers the environments that service lists for the user, enabled and on
// the cloud's hosts, as Result.Choices; Choose redeems the refresh token
// for the chosen environment at its tenant and confirms the environment's
// organization ID with WhoAmI before the connection is made. Re-authorizing
// picks the connection's environment without asking.
//
// Microsoft has no revocation endpoint: deleting a connection destroys its
// stored tokens, and the grant ends when it is next unused for 90 days
// (IdleTTL) or when the user or an administrator removes the app's consent.
func Dynamics(c Cloud, clientID, clientSecret string) Provider {
	cl, ok := clouds[c]
	if !ok {
		c, cl = CloudPublic, clouds[CloudPublic]
	}
	name := "dynamics"
	if c != CloudPublic {
		name += "-" + string(c)
	}
	return Provider{
		Name:     name,
		AuthURL:  cl.authority + "/organizations/oauth2/v2.0/authorize",
		TokenURL: cl.authority + "/organizations/oauth2/v2.0/token",
		Scopes:   []string{"openid", "profile", "offline_access", "https://" + cl.discovery + "/user_impersonation"},
		ClientID: clientID, ClientSecret: clientSecret,
		IdleTTL: 90 * 24 * time.Hour,
		choose:  true,
		params:  []oauth2.AuthCodeOption{oauth2.SetAuthURLParam("response_mode", "query"), oauth2.SetAuthURLParam("prompt", "select_account")},
		discover: func(ctx context.Context, m *Manager, _ Provider, _ endpoints, tok *oauth2.Token) ([]candidate, error) {
			body, err := get(ctx, bearer(m.client, tok.AccessToken), "https://"+cl.discovery+"/api/discovery/v2.0/Instances")
			if err != nil {
				return nil, err
			}
			return parseInstances(body, c)
		},
		settle: func(ctx context.Context, m *Manager, p Provider, rec *record, env *candidate) error {
			return settleEnvironment(ctx, m, p, cl, rec, env)
		},
	}
}

// instance is one environment of a Global Discovery Service answer.
type instance struct {
	ID               string `json:"Id"` // the OrganizationId
	FriendlyName     string `json:"FriendlyName"`
	URL              string `json:"Url"`
	APIURL           string `json:"ApiUrl"`
	TenantID         string `json:"TenantId"`
	State            int    `json:"State"` // 0: enabled
	OrganizationType *int   `json:"OrganizationType"`
}

// parseInstances reads a Global Discovery Service answer and returns the
// environments that can be connected: enabled, with GUIDs for their
// organization and tenant, and app and API URLs on cloud c's hosts.
// Others are left out; an answer that is not a list of environments is
// CodeProtocol.
func parseInstances(body []byte, c Cloud) ([]candidate, error) {
	var a struct {
		Value []instance `json:"value"`
	}
	if len(body) > maxResponse || json.Unmarshal(body, &a) != nil || a.Value == nil {
		return nil, &tether.Error{Code: tether.CodeProtocol, Op: "oauth: dynamics discovery", Message: "the Global Discovery Service answered no list of environments"}
	}
	cl := clouds[c]
	var out []candidate
	for _, in := range a.Value {
		app, errApp := environmentHost(in.URL, cl)
		api, errAPI := environmentHost(in.APIURL, cl)
		if in.State != 0 || !isGUID(in.ID) || !isGUID(in.TenantID) || errApp != nil || errAPI != nil {
			continue
		}
		name := in.FriendlyName
		if !usableName(name) {
			name = strings.SplitN(app, ".", 2)[0]
		}
		kind := "production"
		if in.OrganizationType != nil {
			kind = environmentType(*in.OrganizationType)
		}
		if c != CloudPublic {
			kind += " (" + cl.label + ")"
		}
		out = append(out, candidate{
			Org:    Org{ID: strings.ToLower(in.ID), Name: name, Type: kind, URL: "https://" + api},
			Tenant: strings.ToLower(in.TenantID), Resource: "https://" + app,
		})
	}
	return out, nil
}

// environmentType names a Dataverse organization type for display.
func environmentType(t int) string {
	switch t {
	case 0:
		return "production"
	case 5, 6:
		return "sandbox"
	case 11, 14:
		return "trial"
	case 13:
		return "developer"
	}
	return "environment"
}

// environmentHost checks an environment URL: https, a host of cloud cl,
// nothing but the host. It returns the host.
func environmentHost(s string, cl cloud) (string, error) {
	h, ok := httpsOrigin(s)
	if !ok {
		return "", &tether.Error{Code: tether.CodeProtocol, Op: "oauth: dynamics", Message: "an environment URL is not an https origin"}
	}
	if !hasSuffix(h, cl.suffixes...) {
		return "", &tether.Error{Code: tether.CodeProtocol, Op: "oauth: dynamics", Message: "an environment is not on the cloud's hosts"}
	}
	return h, nil
}

// isGUID reports whether s is a GUID in its 36-character form.
func isGUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
				return false
			}
		}
	}
	return true
}

// settleEnvironment redeems the login's refresh token for environment env
// at its tenant, and confirms with WhoAmI that the tokens reach env's
// organization: rec then holds the environment's grant.
func settleEnvironment(ctx context.Context, m *Manager, p Provider, cl cloud, rec *record, env *candidate) error {
	const op = "oauth: dynamics environment"
	tokenURL := cl.authority + "/" + env.Tenant + "/oauth2/v2.0/token"
	scope := env.Resource + "/user_impersonation offline_access"
	g, err := m.redeem(ctx, p, tokenURL, rec.Refresh, scope)
	if err != nil {
		return asTether(op, err)
	}
	body, err := get(ctx, bearer(m.client, g.Access), env.URL+"/api/data/v9.2/WhoAmI")
	if err != nil {
		return err
	}
	org, err := parseWhoAmI(body)
	if err != nil {
		return err
	}
	if org != env.ID {
		return &tether.Error{Code: tether.CodeProtocol, Op: op, Message: "WhoAmI names another organization than the Global Discovery Service: refused"}
	}
	rec.Access, rec.Expiry, rec.TokenURL, rec.Scope, rec.RevokeURL = g.Access, m.expiresAt(g.Expires), tokenURL, scope, ""
	if g.Refresh != "" {
		rec.Refresh = g.Refresh
	}
	return nil
}

// parseWhoAmI reads a WhoAmI answer's OrganizationId, lower case.
func parseWhoAmI(body []byte) (string, error) {
	var a struct {
		OrganizationID string `json:"OrganizationId"`
	}
	if len(body) > maxResponse || json.Unmarshal(body, &a) != nil || !isGUID(a.OrganizationID) {
		return "", &tether.Error{Code: tether.CodeProtocol, Op: "oauth: dynamics WhoAmI", Message: "WhoAmI answered no OrganizationId"}
	}
	return strings.ToLower(a.OrganizationID), nil
}
