// Package providertest runs servers shaped like Salesforce and the
// Microsoft identity platform with Dynamics 365, built from their
// documented answers, for what a generic OAuth server cannot show: the
// Salesforce identity URL and its signature, instance_url, answers
// without expires_in, revocation at the issuing host; Microsoft's
// per-cloud authorities, the Global Discovery Service and WhoAmI.
//
// Each server answers on loopback over TLS for the provider's real host
// names: Client returns an *http.Client that dials every host to the
// server and trusts its certificate, so the code under test uses the real
// URLs and its host allowlists unchanged.
package providertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sync"
	"testing"
	"time"
)

// server is a TLS server on loopback answering for hosts.
type server struct {
	srv  *httptest.Server
	pool *x509.CertPool

	mu       sync.Mutex
	requests []string // "METHOD host/path" of every request, in order
}

// start serves h over TLS with a certificate for hosts (wildcards
// allowed) and stops it when t ends.
func start(t testing.TB, hosts []string, h http.Handler) *server {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "providertest"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: hosts, IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	s := &server{pool: x509.NewCertPool()}
	s.pool.AddCert(cert)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.requests = append(s.requests, r.Method+" "+r.Host+r.URL.Path)
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

// Client returns a client that reaches every host at the server and
// trusts its certificate. It follows no redirects, as a browser-less
// OAuth client should not.
func (s *server) Client() *http.Client {
	addr := s.srv.Listener.Addr().String()
	var d net.Dialer
	return &http.Client{
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return d.DialContext(ctx, network, addr)
			},
			TLSClientConfig: &tls.Config{RootCAs: s.pool},
		},
		Timeout: 10 * time.Second,
	}
}

// Requests returns "METHOD host/path" of every request so far.
func (s *server) Requests() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.requests...)
}

// follow plays the user's browser at an authorization URL: it GETs it
// with client and returns the URL the server redirects back to.
func follow(ctx context.Context, client *http.Client, authURL string) (*url.URL, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return nil, err
	}
	c := *client
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&e)
		return nil, &AuthorizeError{Status: resp.StatusCode, Code: e.Error}
	}
	return url.Parse(resp.Header.Get("Location"))
}

// AuthorizeError is an authorization endpoint's refusal to log in.
type AuthorizeError struct {
	Status int
	Code   string
}

func (e *AuthorizeError) Error() string {
	return "providertest: the authorization endpoint answered " + http.StatusText(e.Status) + " " + e.Code
}

// random returns n random bytes, base64url.
func random(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// s256 is the PKCE S256 challenge of verifier.
func s256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// writeJSON answers v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// bearerToken returns the access token of an Authorization: Bearer header.
func bearerToken(r *http.Request) string {
	const prefix = "Bearer "
	h := r.Header.Get("Authorization")
	if len(h) > len(prefix) && h[:len(prefix)] == prefix {
		return h[len(prefix):]
	}
	return ""
}

// code is an authorization code's grant, pending its exchange.
type code struct {
	user      string
	redirect  string
	challenge string
	scope     string
	tenant    string
}

// redirectBack sends the browser back to the authorization request's
// redirect_uri with code c and the request's state.
func redirectBack(w http.ResponseWriter, r *http.Request, c string) {
	q := r.URL.Query()
	back, _ := url.Parse(q.Get("redirect_uri"))
	v := back.Query()
	v.Set("code", c)
	v.Set("state", q.Get("state"))
	back.RawQuery = v.Encode()
	http.Redirect(w, r, back.String(), http.StatusFound)
}
