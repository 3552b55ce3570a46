package oauth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/oauth2"

	"github.com/tetherkit/tether"
)

// SalesforceEnv says which kind of Salesforce org a provider logs in to.
type SalesforceEnv string

const (
	// SalesforceProduction logs in at login.salesforce.com (provider name
	// "salesforce").
	SalesforceProduction SalesforceEnv = "production"
	// SalesforceSandbox logs in at test.salesforce.com (provider name
	// "salesforce-sandbox").
	SalesforceSandbox SalesforceEnv = "sandbox"
)

// Salesforce API version of the organization query.
const salesforceAPI = "v62.0"

// Salesforce returns the provider for Salesforce orgs of env, with the
// host's External Client App (its consumer key and secret). It requests
// the scopes given, "api refresh_token" when none.
//
// A connection may name its own login host (BeginRequest.Host): the org's
// My Domain, such as acme.my.salesforce.com or
// acme--uat.sandbox.my.salesforce.com, for orgs that refuse logins at the
// default host. It is checked against the Salesforce host allowlist, and a
// Lightning host pasted from the browser bar (acme.lightning.force.com) is
// refused with a message saying what to enter instead.
//
// After the login the org is identified from the token answer's identity
// URL, whose signature (HMAC-SHA256 with the consumer secret over id and
// issued_at) is verified, and confirmed by the userinfo organization_id at
// the org's instance_url, which must be a Salesforce host. The grant is
// refreshed and revoked at the host that issued it. Salesforce tokens
// carry no expiry: a client from Manager.Client refreshes once when the
// API answers 401 and retries once. Refresh tokens left unused lapse after
// 30 days under Salesforce's idle policy (IdleTTL); Run refreshes them
// before.
func Salesforce(env SalesforceEnv, clientID, clientSecret string, scopes ...string) Provider {
	if len(scopes) == 0 {
		scopes = []string{"api", "refresh_token"}
	}
	name, host := "salesforce", "login.salesforce.com"
	if env == SalesforceSandbox {
		name, host = "salesforce-sandbox", "test.salesforce.com"
	}
	at := salesforceEndpoints(host)
	return Provider{
		Name: name, AuthURL: at.AuthURL, TokenURL: at.TokenURL, RevokeURL: at.RevokeURL,
		Scopes: scopes, ClientID: clientID, ClientSecret: clientSecret,
		IdleTTL: 30 * 24 * time.Hour,
		hosts: func(h string) (endpoints, error) {
			h, err := SalesforceLoginHost(h)
			if err != nil {
				return endpoints{}, err
			}
			at := salesforceEndpoints(h)
			at.Host = h
			return at, nil
		},
		discover: func(ctx context.Context, m *Manager, p Provider, _ endpoints, tok *oauth2.Token) ([]candidate, error) {
			c, err := salesforceOrg(ctx, m, p, env, tok)
			if err != nil {
				return nil, err
			}
			return []candidate{c}, nil
		},
		refresh: salesforceSandboxHost,
	}
}

func salesforceEndpoints(host string) endpoints {
	base := "https://" + host + "/services/oauth2/"
	return endpoints{AuthURL: base + "authorize", TokenURL: base + "token", RevokeURL: base + "revoke"}
}

// Salesforce host suffixes, matched with their leading dot.
var (
	// salesforceLoginSuffixes are the My Domain login hosts a connection may
	// name: production, sandbox and other partitioned My Domains,
	// Experience Cloud sites, Government Cloud Plus and Alibaba Cloud.
	salesforceLoginSuffixes = []string{".my.salesforce.com", ".my.site.com", ".my.salesforce.mil", ".my.sfcrmproducts.cn", ".my-salesforce.com"}
	// salesforceInstanceSuffixes are the hosts an org's instance_url may
	// have: the login suffixes and the legacy instanced hosts.
	salesforceInstanceSuffixes = append([]string{".salesforce.com", ".force.com", ".salesforce.mil", ".sfcrmproducts.cn"}, salesforceLoginSuffixes...)
	// salesforceSandboxSuffixes name one sandbox, kept across its refreshes.
	salesforceSandboxSuffixes = []string{".sandbox.my.salesforce.com", ".sandbox.my.salesforce.mil", ".sandbox.my.sfcrmproducts.cn", ".sandbox.my-salesforce.com"}
)

// SalesforceLoginHost checks a login host a user typed for a Salesforce
// connection ("Use Custom Domain") and returns it in canonical form: a
// host name, lower case, without scheme, port or path. A URL is accepted
// if it is https and names only a host. Lightning hosts, hosts outside
// Salesforce and IP addresses are refused with CodeInvalid and a message
// the user can act on.
func SalesforceLoginHost(s string) (string, error) {
	const op = "oauth: salesforce login host"
	refuse := func(msg string) (string, error) {
		return "", &tether.Error{Code: tether.CodeInvalid, Op: op, Message: msg}
	}
	s = strings.TrimSpace(s)
	if len(s) > 255 {
		return refuse("the login host is too long")
	}
	h := s
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil || u.Scheme != "https" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return refuse("enter the login host only, such as acme.my.salesforce.com")
		}
		h = u.Host
	}
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if !hostName(h) || net.ParseIP(h) != nil {
		return refuse("enter the login host only, such as acme.my.salesforce.com")
	}
	if hasSuffix(h, ".lightning.force.com", ".lightning.salesforce.com", ".lightning.force.mil") {
		return refuse("this is a Lightning host from the browser bar; enter your My Domain login host instead, such as " +
			strings.SplitN(h, ".", 2)[0] + ".my.salesforce.com (Setup > My Domain shows it)")
	}
	if h == "login.salesforce.com" || h == "test.salesforce.com" || hasSuffix(h, salesforceLoginSuffixes...) {
		return h, nil
	}
	return refuse("not a Salesforce login host: enter your My Domain, such as acme.my.salesforce.com or acme--uat.sandbox.my.salesforce.com")
}

// hostName reports whether h is a DNS host name in lower-case ASCII:
// labels of 1 to 63 letters, digits and hyphens, not starting or ending
// with a hyphen, 253 characters at most.
func hostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// hasSuffix reports whether host ends with one of suffixes, each starting
// with a dot, and has a label before it.
func hasSuffix(host string, suffixes ...string) bool {
	for _, s := range suffixes {
		if len(host) > len(s) && strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}

func salesforceSandboxHost(h string) bool { return hasSuffix(h, salesforceSandboxSuffixes...) }

// salesforceInstance checks an instance_url: https, a Salesforce host,
// nothing but the host. It returns its origin.
func salesforceInstance(s string) (*url.URL, error) {
	h, ok := httpsOrigin(s)
	if !ok {
		return nil, fmt.Errorf("instance_url is not an https origin")
	}
	if !hasSuffix(h, salesforceInstanceSuffixes...) || hasSuffix(h, ".lightning.force.com") {
		return nil, fmt.Errorf("instance_url %q is not a Salesforce host", h)
	}
	return &url.URL{Scheme: "https", Host: h}, nil
}

// httpsOrigin returns the host, lower case, of s if s is an https origin
// a provider may name: no user, port, path beyond "/", or query, and a
// host name, not an IP address.
func httpsOrigin(s string) (string, bool) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.User != nil || u.Port() != "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return "", false
	}
	h := strings.ToLower(u.Hostname())
	return h, h != "" && net.ParseIP(h) == nil
}

// salesforceOrg identifies the org a Salesforce login reached.
func salesforceOrg(ctx context.Context, m *Manager, p Provider, env SalesforceEnv, tok *oauth2.Token) (candidate, error) {
	const op = "oauth: salesforce identity"
	refuse := func(msg string) (candidate, error) {
		return candidate{}, &tether.Error{Code: tether.CodeProtocol, Op: op, Message: msg}
	}
	id, _ := tok.Extra("id").(string)
	issued := issuedAt(tok.Extra("issued_at"))
	sig, _ := tok.Extra("signature").(string)
	if !salesforceSigned(p.ClientSecret, id, issued, sig) {
		return refuse("the token answer's identity signature does not verify: refused")
	}
	org, user, err := parseIdentityURL(id)
	if err != nil {
		return refuse(err.Error())
	}
	raw, _ := tok.Extra("instance_url").(string)
	instance, err := salesforceInstance(raw)
	if err != nil {
		return refuse(err.Error() + ": refused")
	}
	client := bearer(m.client, tok.AccessToken)
	body, err := get(ctx, client, instance.String()+"/services/oauth2/userinfo")
	if err != nil {
		return candidate{}, err
	}
	info, err := parseSalesforceUserinfo(body)
	if err != nil {
		return candidate{}, err
	}
	if salesforceID(info.Org) != org || salesforceID(info.User) != user {
		return refuse("userinfo names another org or user than the identity URL: refused")
	}
	c := candidate{Org: Org{ID: org, Type: string(env), URL: instance.String()}, Host: instance.Host}
	// The org's name and kind; an org whose API cannot answer keeps its
	// host's name.
	q := instance.String() + "/services/data/" + salesforceAPI + "/query?q=" + url.QueryEscape("SELECT Name, IsSandbox FROM Organization")
	if body, err := get(ctx, client, q); err == nil {
		if o, err := parseOrganization(body); err == nil {
			c.Name = o.Name
			if o.IsSandbox {
				c.Type = string(SalesforceSandbox)
			}
		}
	}
	if c.Name == "" {
		c.Name = strings.SplitN(instance.Host, ".", 2)[0]
	}
	return c, nil
}

// issuedAt returns a token answer's issued_at as the digits it was sent
// with (a string, or a JSON number), "" when it is neither.
func issuedAt(v any) string {
	var s string
	switch v := v.(type) {
	case string:
		s = v
	case float64:
		if v < 0 || v > 1e15 || v != math.Trunc(v) {
			return ""
		}
		s = strconv.FormatFloat(v, 'f', -1, 64)
	}
	if s == "" || len(s) > 20 || strings.Trim(s, "0123456789") != "" {
		return ""
	}
	return s
}

// salesforceSigned checks the token answer's signature: base64 of
// HMAC-SHA256, keyed with the consumer secret, over id and issued_at.
func salesforceSigned(secret, id, issuedAt, signature string) bool {
	if secret == "" || id == "" || issuedAt == "" || signature == "" {
		return false
	}
	got, err := base64.StdEncoding.DecodeString(signature)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(id + issuedAt))
	return hmac.Equal(got, mac.Sum(nil))
}

// parseIdentityURL reads the org and user IDs of a Salesforce identity
// URL, https://host/id/<orgId>/<userId>, in their 18-character forms.
func parseIdentityURL(s string) (org, user string, err error) {
	u, perr := url.Parse(s)
	if perr != nil || len(s) > 512 || u.Scheme != "https" {
		return "", "", fmt.Errorf("the token answer's identity URL is not an https URL")
	}
	parts := strings.Split(strings.Trim(u.Path, "/"), "/")
	if len(parts) != 3 || parts[0] != "id" {
		return "", "", fmt.Errorf("the token answer's identity URL is not /id/<org>/<user>")
	}
	org, user = salesforceID(parts[1]), salesforceID(parts[2])
	if org == "" || user == "" || !strings.HasPrefix(org, "00D") || !strings.HasPrefix(user, "005") {
		return "", "", fmt.Errorf("the token answer's identity URL names no org and user")
	}
	return org, user, nil
}

// salesforceID returns a Salesforce ID in its 18-character,
// case-insensitive form, or "" if s is not a 15- or 18-character ID. The
// three added characters encode the case of the first fifteen, so "15 or
// 18" compare equal once both are in this form.
func salesforceID(s string) string {
	if len(s) != 15 && len(s) != 18 {
		return ""
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			return ""
		}
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
	suffix := make([]byte, 3)
	for chunk := range 3 {
		bits := 0
		for i := range 5 {
			if c := s[chunk*5+i]; 'A' <= c && c <= 'Z' {
				bits |= 1 << i
			}
		}
		suffix[chunk] = alphabet[bits]
	}
	if len(s) == 18 && !strings.EqualFold(s[15:], string(suffix)) {
		return ""
	}
	return s[:15] + string(suffix)
}

// salesforceUserinfo is the part of Salesforce's userinfo answer tether
// reads.
type salesforceUserinfo struct {
	Org  string `json:"organization_id"`
	User string `json:"user_id"`
}

func parseSalesforceUserinfo(body []byte) (salesforceUserinfo, error) {
	var u salesforceUserinfo
	if len(body) > maxResponse || json.Unmarshal(body, &u) != nil || salesforceID(u.Org) == "" || salesforceID(u.User) == "" {
		return salesforceUserinfo{}, &tether.Error{Code: tether.CodeProtocol, Op: "oauth: salesforce userinfo", Message: "the org's userinfo names no organization_id and user_id"}
	}
	return u, nil
}

// organization is the Organization record tether reads.
type organization struct {
	Name      string `json:"Name"`
	IsSandbox bool   `json:"IsSandbox"`
}

// parseOrganization reads the answer of the Organization query: one
// record with a name of at most 100 characters.
func parseOrganization(body []byte) (organization, error) {
	var a struct {
		Records []organization `json:"records"`
	}
	if len(body) > maxResponse || json.Unmarshal(body, &a) != nil || len(a.Records) != 1 {
		return organization{}, &tether.Error{Code: tether.CodeProtocol, Op: "oauth: salesforce organization", Message: "the Organization query answered no single record"}
	}
	o := a.Records[0]
	if !usableName(o.Name) {
		return organization{}, &tether.Error{Code: tether.CodeProtocol, Op: "oauth: salesforce organization", Message: "the org's name is not usable"}
	}
	return o, nil
}

// bearer returns a client of base that sends access token tok.
func bearer(base *http.Client, tok string) *http.Client {
	return &http.Client{
		Transport: &oauth2.Transport{Base: base.Transport, Source: oauth2.StaticTokenSource(&oauth2.Token{AccessToken: tok, TokenType: "Bearer"})},
		Timeout:   base.Timeout, CheckRedirect: noRedirect,
	}
}

// noRedirect keeps a token from following a redirect to another host.
func noRedirect(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// usableName reports whether a name a provider gave can be shown as it
// is: printable, trimmed, at most tether.MaxNameLen characters.
func usableName(s string) bool {
	if s == "" || !utf8.ValidString(s) || utf8.RuneCountInString(s) > tether.MaxNameLen || strings.TrimSpace(s) != s {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}
