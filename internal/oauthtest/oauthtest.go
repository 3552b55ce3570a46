// Package oauthtest runs a real OpenID Connect provider for tether's tests
// and examples: panva's certified oidc-provider (pinned in
// op/package-lock.json), as a node subprocess on a loopback port. It
// requires PKCE S256, rotates refresh tokens (reusing a rotated one
// revokes the grant), revokes tokens (RFC 7009) and sends iss in the
// callback (RFC 9207), like the providers tether connects to; login and
// consent are headless, so an HTTP client plays the browser.
//
// Launch starts a provider for a program; Start starts one for a test,
// and skips the test when node or the installed package is missing,
// naming what is missing, unless TETHER_REQUIRE_NODE is set (CI sets it):
// then it fails.
package oauthtest

import (
	"bytes"
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
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// Install is the command, run in the module's root, that installs the
// provider's npm package.
const Install = "npm ci --prefix internal/oauthtest/op"

// ErrUnavailable is what the errors of Unavailable and Launch wrap when
// the provider cannot run here: node or its npm package is missing.
var ErrUnavailable = errors.New("oauthtest: the test OAuth server cannot run")

// OP is a running provider with one confidential client. Its endpoints
// are oidc-provider's: Issuer+"/auth" (authorization), "/token",
// "/me" (userinfo) and "/token/revocation" (RFC 7009).
type OP struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	RedirectURI  string // the first registered redirect URI

	cmd   *exec.Cmd
	done  chan struct{} // closed when the process has ended and been waited for
	close sync.Once
}

// Options tune Launch and Start; zero values are defaults.
type Options struct {
	RedirectURIs []string      // registered redirect URIs (one loopback URI when empty)
	AccessTTL    time.Duration // access token lifetime, in whole seconds (60 s)
	RefreshTTL   time.Duration // refresh token lifetime, in whole seconds (1 h)
}

// readyTimeout bounds how long the provider may take to start.
const readyTimeout = 30 * time.Second

// paths returns node's path and the directory of server.mjs and its
// node_modules, or an error wrapping ErrUnavailable naming what is
// missing.
func paths() (node, dir string, err error) {
	_, file, _, _ := runtime.Caller(0)
	dir = filepath.Join(filepath.Dir(file), "op")
	node, err = exec.LookPath("node")
	if err != nil {
		return "", "", fmt.Errorf("%w: node is not on PATH (install node, then: %s)", ErrUnavailable, Install)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "oidc-provider", "package.json")); err != nil {
		return "", "", fmt.Errorf("%w: the npm package oidc-provider is not installed in %s (install it: %s)", ErrUnavailable, dir, Install)
	}
	return node, dir, nil
}

// Unavailable reports why the provider cannot run here, with an error
// wrapping ErrUnavailable that names what is missing and how to install
// it; nil when node and the npm package are there.
func Unavailable() error {
	_, _, err := paths()
	return err
}

// Require skips t when the provider cannot run here, naming what is
// missing, or fails it when TETHER_REQUIRE_NODE is set.
func Require(t testing.TB) {
	t.Helper()
	if err := Unavailable(); err != nil {
		if os.Getenv("TETHER_REQUIRE_NODE") != "" {
			t.Fatalf("%v; TETHER_REQUIRE_NODE is set, so this fails instead of skipping", err)
		}
		t.Skip(err)
	}
}

// Start starts a provider that stops when the test ends. It skips the
// test, or fails it, as Require does when the provider cannot run.
func Start(t testing.TB, opts Options) *OP {
	t.Helper()
	Require(t)
	op, err := Launch(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(op.Close)
	return op
}

// Launch starts a provider and returns once it answers. It runs until
// Close is called or ctx ends, whichever comes first; the process also
// ends when the one that launched it does, as it stops at the end of its
// stdin. When node or the npm package is missing the error wraps
// ErrUnavailable and names what is missing.
func Launch(ctx context.Context, opts Options) (*OP, error) {
	node, dir, err := paths()
	if err != nil {
		return nil, err
	}
	op := &OP{ClientID: "tether", ClientSecret: "tether-test-secret", done: make(chan struct{})}
	uris := opts.RedirectURIs
	if len(uris) == 0 {
		uris = []string{"http://127.0.0.1/oauth/callback"}
	}
	op.RedirectURI = uris[0]
	ready := make(chan string, 1)
	var stderr bytes.Buffer
	op.cmd = exec.CommandContext(ctx, node, "server.mjs")
	op.cmd.Dir = dir
	op.cmd.Env = append(os.Environ(),
		"OP_CLIENT_ID="+op.ClientID, "OP_CLIENT_SECRET="+op.ClientSecret,
		"OP_REDIRECT_URIS="+strings.Join(uris, ","),
		"OP_ACCESS_TTL="+seconds(opts.AccessTTL, time.Minute),
		"OP_REFRESH_TTL="+seconds(opts.RefreshTTL, time.Hour),
	)
	op.cmd.Stdout = &readyWriter{ready: ready}
	op.cmd.Stderr = &limited{w: &stderr, n: 64 << 10}
	op.cmd.WaitDelay = 5 * time.Second
	if _, err := op.cmd.StdinPipe(); err != nil { // held open until the process is waited for
		return nil, fmt.Errorf("oauthtest: start the test OAuth server: %w", err)
	}
	if err := op.cmd.Start(); err != nil {
		return nil, fmt.Errorf("oauthtest: start the test OAuth server: %w", err)
	}
	go func() {
		_ = op.cmd.Wait()
		close(op.done)
	}()
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case issuer := <-ready:
		op.Issuer = issuer
		return op, nil
	case <-op.done:
		if ctx.Err() != nil {
			return nil, fmt.Errorf("oauthtest: start the test OAuth server: %w", ctx.Err())
		}
		return nil, fmt.Errorf("oauthtest: the test OAuth server ended before it was ready (%s):\n%s", op.cmd.ProcessState, stderr.String())
	case <-timer.C:
		op.Close()
		return nil, fmt.Errorf("oauthtest: the test OAuth server was not ready within %v:\n%s", readyTimeout, stderr.String())
	}
}

// Close stops the provider and returns once its process has ended. It
// may be called more than once.
func (op *OP) Close() {
	op.close.Do(func() { _ = op.cmd.Process.Kill() })
	<-op.done
}

func seconds(d, def time.Duration) string {
	if d <= 0 {
		d = def
	}
	return strconv.FormatInt(int64(d/time.Second), 10)
}

// readyWriter takes the provider's output: it sends the issuer of the
// first "OP ready <issuer>" line to ready and drops the rest.
type readyWriter struct {
	ready chan<- string
	line  []byte
	sent  bool
}

func (w *readyWriter) Write(p []byte) (int, error) {
	for _, b := range p {
		if b != '\n' {
			if len(w.line) < 4<<10 {
				w.line = append(w.line, b)
			}
			continue
		}
		if issuer, ok := strings.CutPrefix(string(w.line), "OP ready "); ok && !w.sent {
			w.ready <- issuer
			w.sent = true
		}
		w.line = w.line[:0]
	}
	return len(p), nil
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
// headless login (as the account named by authURL's login_hint,
// "user-1" without one) and consent, and returns the URL the provider
// redirects to at the client's redirect URI, without following it.
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
