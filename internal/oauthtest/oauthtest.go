// Package oauthtest runs a real OpenID Connect provider for tether's tests:
// panva's certified oidc-provider (pinned in op/package-lock.json), as a
// node subprocess on a loopback port. It requires PKCE S256, rotates
// refresh tokens (reusing a rotated one revokes the grant), revokes tokens
// (RFC 7009) and sends iss in the callback (RFC 9207), like the providers
// tether connects to; login and consent are headless, so a test's HTTP
// client plays the browser.
//
// Start skips the test when node or the installed package is missing,
// naming what is missing, unless TETHER_REQUIRE_NODE is set (CI sets it):
// then it fails.
package oauthtest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// OP is a running provider with one confidential client.
type OP struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	RedirectURI  string // the first registered redirect URI
}

// Options tune Start; zero values are defaults.
type Options struct {
	RedirectURIs []string      // registered redirect URIs (one loopback URI when empty)
	AccessTTL    time.Duration // access token lifetime (60 s)
	RefreshTTL   time.Duration // refresh token lifetime (1 h)
}

// opDir is the directory of server.mjs and its node_modules.
func opDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "op")
}

// Start starts a provider that stops when the test ends.
func Start(t testing.TB, opts Options) *OP {
	t.Helper()
	unavailable := func(why string) {
		t.Helper()
		if os.Getenv("TETHER_REQUIRE_NODE") != "" {
			t.Fatalf("the test OAuth server cannot run: %s (CI installs it with npm ci --prefix internal/oauthtest/op)", why)
		}
		t.Skipf("the test OAuth server cannot run: %s (install node, then npm ci --prefix internal/oauthtest/op)", why)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		unavailable("node is not on PATH")
	}
	dir := opDir()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json")); err != nil {
		unavailable("the npm package oidc-provider is not installed in " + dir)
	}
	op := &OP{ClientID: "tether", ClientSecret: "tether-test-secret"}
	uris := opts.RedirectURIs
	if len(uris) == 0 {
		uris = []string{"http://127.0.0.1/oauth/callback"}
	}
	op.RedirectURI = uris[0]
	cmd := exec.Command(node, "server.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"OP_CLIENT_ID="+op.ClientID, "OP_CLIENT_SECRET="+op.ClientSecret,
		"OP_REDIRECT_URIS="+strings.Join(uris, ","),
		fmt.Sprintf("OP_ACCESS_TTL=%d", seconds(opts.AccessTTL, 60)),
		fmt.Sprintf("OP_REFRESH_TTL=%d", seconds(opts.RefreshTTL, 3600)),
	)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &limited{w: &stderr, n: 64 << 10}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the test OAuth server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if issuer, ok := strings.CutPrefix(sc.Text(), "OP ready "); ok {
				ready <- issuer
			}
		}
		close(ready)
	}()
	select {
	case issuer, ok := <-ready:
		if !ok {
			t.Fatalf("the test OAuth server ended before it was ready:\n%s", stderr.String())
		}
		op.Issuer = issuer
	case <-time.After(30 * time.Second):
		t.Fatalf("the test OAuth server was not ready within 30 s:\n%s", stderr.String())
	}
	return op
}

func seconds(d, def time.Duration) int64 {
	if d <= 0 {
		return int64(def)
	}
	return int64(d / time.Second)
}

// limited writes at most n bytes to w and drops the rest.
type limited struct {
	w io.Writer
	n int
}

func (l *limited) Write(p []byte) (int, error) {
	if l.n > 0 {
		q := p[:min(len(p), l.n)]
		l.n -= len(q)
		_, _ = l.w.Write(q)
	}
	return len(p), nil
}

// Authorize plays the user's browser: it opens authURL, goes through the
// headless login (as account, via login_hint when authURL has none) and
// consent, and returns the URL the provider redirects to at the client's
// redirect URI, without following it.
func (op *OP) Authorize(ctx context.Context, authURL string) (*url.URL, error) {
	jar, _ := cookiejar.New(nil)
	var final *url.URL
	client := &http.Client{
		Jar:     jar,
		Timeout: 10 * time.Second,
		CheckRedirect: func(req *http.Request, via []*http.Request) error {
			if strings.HasPrefix(req.URL.String(), op.Issuer) {
				return nil
			}
			final = req.URL
			return http.ErrUseLastResponse
		},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, authURL, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if final == nil {
		return nil, fmt.Errorf("oauthtest: the provider answered %s without redirecting to the client: %s", resp.Status, body)
	}
	return final, nil
}

// Withdraw destroys every grant of account, as a user who withdraws the
// app's access at the provider: its refresh tokens stop working.
func (op *OP) Withdraw(ctx context.Context, account string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, op.Issuer+"/test/withdraw/"+url.PathEscape(account), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return errors.New("oauthtest: withdraw answered " + resp.Status)
	}
	return nil
}
