package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"

	"github.com/tetherkit/tether"
)

// refreshEarly is how long before its expiry an access token is refreshed.
const refreshEarly = 30 * time.Second

// refreshLease bounds how long one process may hold the right to refresh
// a connection's tokens before another may take it.
const refreshLease = 30 * time.Second

// leaseWait is how often a refresh waiting for another process's looks
// again, leaseWaits how often it does before it gives up.
const (
	leaseWait  = 100 * time.Millisecond
	leaseWaits = 50
)

// revalidateEvery bounds how long Token hands out a cached access token
// without reading the connection and its tokens from the Store again: how
// stale what other processes sharing the Store changed may be.
const revalidateEvery = time.Second

// A refresh the provider fails for a reason that may pass (5xx, 429,
// temporarily_unavailable, no answer or a cut one) is tried refreshAttempts
// times in all, each call bounded by attemptTimeout, and no try starts
// once half of the refresh lease has passed. The waits between tries start
// at about retryBase and double, with jitter; a Retry-After is honoured up
// to retryMaxWait, and one asking for longer ends the refresh at once.
const (
	refreshAttempts = 3
	attemptTimeout  = refreshLease / 3
	retryBase       = 250 * time.Millisecond
	retryMaxWait    = 5 * time.Second
)

// failingWarnAfter is how long refreshes may keep failing before the
// connection records EventAuthFailing; it does sooner when the last
// quarter of the provider's IdleTTL has begun.
const failingWarnAfter = time.Hour

// refreshGap is how old an access token must be before an API's 401 for
// it forces a refresh: an API that refuses a new token refuses for
// another reason (a disabled user), and refreshing again would not help.
const refreshGap = 10 * time.Second

// connState is what a Manager keeps in memory of one org connection.
type connState struct {
	// sem is held (a value sent) by the one refresh or revocation of the
	// connection under way in this process; waiting for it respects the
	// caller's context.
	sem chan struct{}

	cached atomic.Pointer[cachedToken]

	// tries counts the refreshes that ended holding sem; failed is the
	// error the last one ended with (nil when it worked). A caller that
	// waited for sem while a refresh failed gets its error instead of
	// calling the provider again. failed is guarded by sem.
	tries  atomic.Uint64
	failed error

	// Sweep's backoff, guarded by sem: after failures in a row the
	// connection is left alone until next.
	failures int
	next     time.Time

	gone atomic.Bool // deleted, and its tokens revoked or destroyed
}

// cachedToken is an access token Token hands out without reading the
// Store, while the Node's status changes stay at seen (read before the
// connection's status was) and less than revalidateEvery has passed since
// checked.
type cachedToken struct {
	tok     oauth2.Token
	version int64     // the stored tokens' version
	renewed time.Time // the stored Renewed
	checked time.Time
	seen    uint64
}

// Token returns a valid access token for org connection id, refreshing it
// first when it expires within 30 seconds. One refresh at a time replaces
// a connection's tokens, across goroutines and processes: the others wait
// for it and use its result. The rotated refresh token is stored before
// the new access token is handed out; if storing fails the caller gets the
// error, not a token. The token carries no refresh token: refreshing is
// the Manager's.
//
// A valid token is handed out from memory, without reading the Store,
// until a second has passed since the connection and its tokens were last
// read: a status change made through this Manager's Node (Pause, Delete,
// a grant lost) applies to the very next call, while one made by another
// process sharing the Store applies within that second.
//
// A paused connection gives CodePaused and an inactive one
// CodeUnauthenticated (re-authorize it), so the host's jobs hold. A
// refresh the provider refuses for good (invalid_grant,
// interaction_required) makes the connection Inactive with one event and
// is not tried again. A failure that may pass (5xx, 429,
// temporarily_unavailable, an answer that did not come or was cut) is
// tried again a few times within the call, with jittered backoff, then
// gives CodeUnavailable (with the provider's Retry-After, if any); the
// connection stays Active with its stored tokens, and once the failures
// have lasted an hour, or the provider's IdleTTL nears its end, it records
// EventAuthFailing (and EventAuthRecovered when a refresh works again).
func (m *Manager) Token(ctx context.Context, id string) (*oauth2.Token, error) {
	if tok := m.cachedToken(id); tok != nil {
		return tok, nil
	}
	return m.token(ctx, id, "")
}

// Client returns an HTTP client that sends connection id's access token,
// as Token gives it, with every request; a request's context is the one
// Token is called with.
//
// When the API answers 401 Unauthorized, the client refreshes the tokens
// once, unless the stored access token is no longer the refused one (then
// it uses the stored one) or was issued within the last ten seconds, and
// sends the request again with the new token if its body can be sent
// again (none, or GetBody set). A second 401 is returned to the caller as
// it came. When the refresh fails, the request fails with Token's error.
func (m *Manager) Client(ctx context.Context, id string) (*http.Client, error) {
	if _, err := m.Token(ctx, id); err != nil {
		return nil, err
	}
	base := m.client.Transport
	if base == nil {
		base = http.DefaultTransport
	}
	return &http.Client{Transport: &tokenTransport{m: m, id: id, base: base}}, nil
}

// tokenTransport sends an org connection's access token with each request.
type tokenTransport struct {
	m    *Manager
	id   string
	base http.RoundTripper
}

func (t *tokenTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	tok, err := t.m.Token(ctx, t.id)
	if err != nil {
		closeBody(req.Body)
		return nil, err
	}
	resp, err := t.base.RoundTrip(withToken(req, tok.AccessToken, req.Body))
	if err != nil || resp.StatusCode != http.StatusUnauthorized {
		return resp, err
	}
	next, err := t.m.token(ctx, t.id, tok.AccessToken)
	if err != nil {
		drain(resp)
		return nil, err
	}
	if next.AccessToken == tok.AccessToken {
		return resp, nil
	}
	body, ok := replay(req)
	if !ok {
		return resp, nil
	}
	drain(resp)
	return t.base.RoundTrip(withToken(req, next.AccessToken, body))
}

// withToken returns a copy of req carrying access token at and body.
func withToken(req *http.Request, at string, body io.ReadCloser) *http.Request {
	r := req.Clone(req.Context())
	r.Body = body
	r.Header.Set("Authorization", "Bearer "+at)
	return r
}

// replay returns req's body afresh, and false when it cannot be sent again.
func replay(req *http.Request) (io.ReadCloser, bool) {
	if req.Body == nil || req.Body == http.NoBody {
		return req.Body, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	body, err := req.GetBody()
	return body, err == nil
}

// drain reads a little of a response that is not returned, so that its
// connection may be reused, and closes it.
func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	_ = resp.Body.Close()
}

func closeBody(b io.ReadCloser) {
	if b != nil {
		_ = b.Close()
	}
}

// usable refuses connections whose work must hold.
func usable(op string, c *tether.Connection) error {
	switch {
	case c.Kind != tether.KindOrg:
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "not an org connection"}
	case c.Status == tether.StatusPaused:
		return &tether.Error{Code: tether.CodePaused, Op: op, Message: "the connection is paused: activate it to resume"}
	case c.Status == tether.StatusInactive:
		return &tether.Error{Code: tether.CodeUnauthenticated, Op: op, Message: "the connection is inactive: re-authorize it"}
	case c.Status != tether.StatusActive:
		return &tether.Error{Code: tether.CodeNotConnected, Op: op, Message: "the connection is " + string(c.Status)}
	}
	return nil
}

// cachedToken returns connection id's cached access token, nil when there
// is none or it must be read again.
func (m *Manager) cachedToken(id string) *oauth2.Token {
	v, ok := m.refreshing.Load(id)
	if !ok {
		return nil
	}
	e := v.(*connState).cached.Load()
	if e == nil || e.seen != m.node.StatusChanges() {
		return nil
	}
	now := m.clock.Now()
	if now.Before(e.checked) || now.Sub(e.checked) >= revalidateEvery ||
		!e.tok.Expiry.IsZero() && !now.Add(refreshEarly).Before(e.tok.Expiry) {
		return nil
	}
	tok := e.tok
	return &tok
}

// token is Token reading the Store. When stale is set (an API refused
// that access token) the tokens are refreshed if the stored access token
// is still that one, and old enough.
func (m *Manager) token(ctx context.Context, id, stale string) (*oauth2.Token, error) {
	const op = "oauth: token"
	seen := m.node.StatusChanges()
	c, err := m.node.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := usable(op, c); err != nil {
		if v, ok := m.refreshing.Load(id); ok {
			v.(*connState).cached.Store(nil)
		}
		return nil, err
	}
	st := m.conn(id)
	p, ok := m.providers[c.Provider]
	if !ok {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the connection's provider " + c.Provider + " is not registered"}
	}
	need := func(r *record) bool {
		return !m.fresh(r) || stale != "" && r.Access == stale && !m.clock.Now().Before(r.Renewed.Add(refreshGap))
	}
	rec, version, err := m.load(ctx, id)
	if tether.ErrorCode(err) == tether.CodeNotFound {
		// An org connection without tokens (they could not be stored
		// when it was made) cannot work until it is re-authorized.
		return nil, m.lost(ctx, id, "no tokens are stored for the connection")
	}
	if err != nil {
		return nil, err
	}
	if !need(rec) {
		return m.remember(st, rec, version, seen), nil
	}
	tries := st.tries.Load()
	if err := st.lock(ctx, op); err != nil {
		return nil, err
	}
	defer st.unlock()
	if st.tries.Load() != tries && st.failed != nil {
		return nil, st.failed // the refresh this call waited for failed
	}
	rec, version, err = m.refresh(ctx, p, id, st, need)
	if err != nil {
		return nil, err
	}
	return m.remember(st, rec, version, seen), nil
}

// remember caches rec (stored at version, read after the Node's status
// changes were at seen) unless a newer version is cached, and returns its
// access token.
func (m *Manager) remember(st *connState, rec *record, version int64, seen uint64) *oauth2.Token {
	e := &cachedToken{
		tok:     oauth2.Token{AccessToken: rec.Access, TokenType: "Bearer", Expiry: rec.Expiry},
		version: version, renewed: rec.Renewed, checked: m.clock.Now(), seen: seen,
	}
	for {
		old := st.cached.Load()
		if old != nil && old.version > version || st.cached.CompareAndSwap(old, e) {
			break
		}
	}
	tok := e.tok
	return &tok
}

// conn returns what the Manager keeps in memory of connection id.
func (m *Manager) conn(id string) *connState {
	if v, ok := m.refreshing.Load(id); ok {
		return v.(*connState)
	}
	v, _ := m.refreshing.LoadOrStore(id, &connState{sem: make(chan struct{}, 1)})
	return v.(*connState)
}

// lock waits for the connection's refresh or revocation under way in this
// process, if any, and takes its place; it gives up when ctx ends.
func (st *connState) lock(ctx context.Context, op string) error {
	select {
	case st.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctxError(op, ctx.Err())
	}
}

func (st *connState) unlock() { <-st.sem }

func (m *Manager) fresh(t *record) bool {
	return t.Access != "" && (t.Expiry.IsZero() || m.clock.Now().Add(refreshEarly).Before(t.Expiry))
}

// load reads a connection's stored tokens.
func (m *Manager) load(ctx context.Context, id string) (*record, int64, error) {
	data, version, err := m.store.LoadOAuthToken(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	var t record
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, 0, &tether.Error{Code: tether.CodeInternal, Op: "oauth: load token", Message: "stored tokens do not decode"}
	}
	return &t, version, nil
}

// leaseName names the Store lease of connection id's tokens.
func leaseName(id string) string { return "oauth-refresh/" + id }

// refresh replaces connection id's tokens when need says they must be,
// holding the Store's lease on them so that one process at a time does,
// and reading them again once it holds it: it returns the tokens another
// refresh stored meanwhile instead of refreshing again. The caller holds
// st's lock.
func (m *Manager) refresh(ctx context.Context, p Provider, id string, st *connState, need func(*record) bool) (*record, int64, error) {
	const op = "oauth: refresh"
	for wait := 0; ; wait++ {
		rec, version, err := m.load(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		if !need(rec) {
			return rec, version, nil // refreshed meanwhile
		}
		held, err := m.lease(ctx, id)
		if err != nil {
			return nil, 0, err
		}
		if held {
			rec, version, err := m.refreshLeased(ctx, p, id, st, need)
			m.release(ctx, id)
			return rec, version, err
		}
		// Another process refreshes: wait for its result.
		if wait >= leaseWaits {
			return nil, 0, &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "another process has been refreshing the tokens for too long: retry later"}
		}
		select {
		case <-ctx.Done():
			return nil, 0, ctxError(op, ctx.Err())
		case <-m.clock.After(leaseWait):
		}
	}
}

// lease takes the Store's lease on connection id's tokens.
func (m *Manager) lease(ctx context.Context, id string) (bool, error) {
	now := m.clock.Now()
	return m.leases.Lease(ctx, leaseName(id), m.holder, now, now.Add(refreshLease))
}

// release gives the lease back, even when ctx has ended.
func (m *Manager) release(ctx context.Context, id string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
	_ = m.leases.Release(rctx, leaseName(id), m.holder)
	cancel()
}

// refreshLeased reads the tokens again under the lease, and refreshes
// them if they still need it.
func (m *Manager) refreshLeased(ctx context.Context, p Provider, id string, st *connState, need func(*record) bool) (*record, int64, error) {
	rec, version, err := m.load(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	if !need(rec) {
		return rec, version, nil
	}
	rec, err = m.refreshHeld(ctx, p, id, st, rec, version)
	if err != nil {
		return nil, 0, err
	}
	return rec, version + 1, nil
}

// refreshHeld calls the token endpoint with the stored refresh token and
// stores the result before returning it. The caller holds st's lock and the
// lease.
func (m *Manager) refreshHeld(ctx context.Context, p Provider, id string, st *connState, tok *record, version int64) (*record, error) {
	const op = "oauth: refresh"
	done := func(err error) error {
		st.failed = err
		st.tries.Add(1)
		return err
	}
	if tok.Refresh == "" {
		return nil, done(m.lost(ctx, id, "no refresh token is stored"))
	}
	g, err := m.redeemRetrying(ctx, p, tok)
	if err != nil {
		if ge, ok := err.(*grantError); ok && ge.Permanent {
			return nil, done(m.lost(ctx, id, "the provider refused the refresh token ("+ge.Code+")"))
		}
		if ctx.Err() != nil {
			return nil, ctxError(op, ctx.Err()) // the caller's end, not the provider's failure
		}
		m.failing(ctx, p, id, tok, version, err)
		return nil, done(unavailable(op, err))
	}
	stored := *tok
	stored.Access, stored.Expiry, stored.Renewed = g.Access, m.expiresAt(g.Expires), m.clock.Now()
	stored.Failures, stored.FailingSince, stored.Warned = 0, time.Time{}, false
	if g.Refresh != "" {
		stored.Refresh = g.Refresh // rotated
	}
	blob, err := json.Marshal(stored)
	if err != nil {
		return nil, done(tether.Wrap(tether.CodeInternal, op, err))
	}
	if _, err := m.store.SaveOAuthToken(ctx, id, blob, version); err != nil {
		return nil, done(err) // the rotated token is not handed out unstored
	}
	if tok.Warned {
		_ = m.node.Note(tether.WithActor(ctx, tether.ActorSystem), id, tether.EventAuthRecovered, "refreshing the tokens works again")
	}
	done(nil)
	return &stored, nil
}

// redeemRetrying redeems tok's refresh token, trying again while the
// provider fails for a reason that may pass, at most refreshAttempts
// times in all, within half of the refresh lease and never past ctx's end.
func (m *Manager) redeemRetrying(ctx context.Context, p Provider, tok *record) (grant, error) {
	until := m.clock.Now().Add(refreshLease / 2)
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, attemptTimeout)
		g, err := m.redeem(actx, p, tok.TokenURL, tok.Refresh, tok.Scope)
		cancel()
		if err == nil || attempt == refreshAttempts || !transient(err) || ctx.Err() != nil {
			return g, err
		}
		wait := retryWait(attempt, err.(*grantError))
		if wait < 0 {
			return g, err // the provider asks for a longer wait than a call takes
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < wait || m.clock.Now().Add(wait).After(until) {
			return g, err
		}
		select {
		case <-ctx.Done():
			return g, err
		case <-m.clock.After(wait):
		}
	}
}

// transient reports whether a token endpoint failure may pass if tried
// again: no answer or a cut one, 408, 429, 5xx or temporarily_unavailable.
func transient(err error) bool {
	ge, ok := err.(*grantError)
	if !ok || ge.Permanent {
		return false
	}
	switch {
	case ge.Code == "temporarily_unavailable",
		ge.Status == 0, ge.Status == http.StatusRequestTimeout, ge.Status == http.StatusTooManyRequests, ge.Status >= 500:
		return true
	}
	return false
}

// retryWait is the wait before attempt+1: full jitter over the upper half
// of retryBase·2^(attempt-1), and at least the provider's Retry-After; -1
// when that is longer than retryMaxWait.
func retryWait(attempt int, ge *grantError) time.Duration {
	if ge.RetryAfter > retryMaxWait {
		return -1
	}
	d := retryBase << (attempt - 1)
	d = d/2 + rand.N(d/2+1)
	return min(max(d, ge.RetryAfter), retryMaxWait)
}

// unavailable is the error a failed refresh gives its callers, with the
// provider's Retry-After.
func unavailable(op string, err error) error {
	out := asTether(op, err)
	if ge, ok := err.(*grantError); ok && ge.RetryAfter > 0 {
		if te, ok := out.(*tether.Error); ok {
			te.RetryAfter = ge.RetryAfter
		}
	}
	return out
}

// failing records a refresh that failed for a reason that may pass, and
// records EventAuthFailing once when the failures have lasted long enough
// or the grant nears its idle expiry.
func (m *Manager) failing(ctx context.Context, p Provider, id string, tok *record, version int64, cause error) {
	now := m.clock.Now()
	f := *tok
	f.Failures++
	if f.FailingSince.IsZero() {
		f.FailingSince = now
	}
	warn := !f.Warned && (now.Sub(f.FailingSince) >= failingWarnAfter ||
		p.IdleTTL > 0 && !f.Renewed.IsZero() && !now.Before(f.Renewed.Add(p.IdleTTL-p.IdleTTL/4)))
	f.Warned = f.Warned || warn
	blob, err := json.Marshal(f)
	if err != nil {
		return
	}
	if _, err := m.store.SaveOAuthToken(ctx, id, blob, version); err != nil || !warn {
		return
	}
	times := "once"
	if f.Failures > 1 {
		times = fmt.Sprintf("%d times in a row", f.Failures)
	}
	detail := fmt.Sprintf("refreshing the tokens has failed %s since %s (%s)",
		times, f.FailingSince.UTC().Format(time.RFC3339), failure(cause))
	if p.IdleTTL > 0 && !f.Renewed.IsZero() {
		detail += "; the grant lapses at " + f.Renewed.Add(p.IdleTTL).UTC().Format(time.RFC3339) + " unless a refresh works before"
	}
	_ = m.node.Note(tether.WithActor(ctx, tether.ActorSystem), id, tether.EventAuthFailing, detail+": re-authorize the connection if it goes on")
}

// failure says in a few words how a refresh failed.
func failure(err error) string {
	ge, ok := err.(*grantError)
	switch {
	case !ok:
		return "the provider's answer was not understood"
	case ge.Status == 0:
		return "no answer, or a cut one"
	case ge.Code != "":
		return fmt.Sprintf("the provider answered HTTP %d, %s", ge.Status, ge.Code)
	}
	return fmt.Sprintf("the provider answered HTTP %d", ge.Status)
}

// lost marks connection id Inactive, once, and returns the re-authorize
// error.
func (m *Manager) lost(ctx context.Context, id, why string) error {
	if c, err := m.node.Get(ctx, id); err == nil && c.Status == tether.StatusActive {
		if _, err := m.node.Transition(tether.WithActor(ctx, tether.ActorSystem), id, tether.ActionAuthLost, why); err != nil && tether.ErrorCode(err) != tether.CodeInvalidTransition {
			return err
		}
	}
	return &tether.Error{Code: tether.CodeUnauthenticated, Op: "oauth: refresh", Message: "the connection is inactive: re-authorize it"}
}

// ctxError reports the end of the caller's context as CodeCanceled or
// CodeDeadlineExceeded, wrapping ctx's error.
func ctxError(op string, err error) error {
	code := tether.CodeCanceled
	if errors.Is(err, context.DeadlineExceeded) {
		code = tether.CodeDeadlineExceeded
	}
	return &tether.Error{Code: code, Op: op, Err: err}
}

// expiry returns tok's expiry on the Manager's clock: x/oauth2 dates it
// on the system clock from the provider's expires_in.
func (m *Manager) expiry(tok *oauth2.Token) time.Time {
	if tok.Expiry.IsZero() {
		return time.Time{}
	}
	return m.clock.Now().Add(time.Until(tok.Expiry))
}

// expiresAt dates a lifetime the provider gave on the Manager's clock; a
// zero lifetime (Salesforce gives none) leaves the expiry unknown.
func (m *Manager) expiresAt(d time.Duration) time.Time {
	if d <= 0 {
		return time.Time{}
	}
	return m.clock.Now().Add(d)
}
