package oauth

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"golang.org/x/oauth2"

	"github.com/tetherkit/tether"
)

// refreshEarly is how long before its expiry an access token is refreshed.
const refreshEarly = 30 * time.Second

// refreshLease bounds how long one process may hold the right to refresh
// a connection's tokens before another may take it.
const refreshLease = 30 * time.Second

// Token returns a valid access token for org connection id, refreshing it
// first when it expires within 30 seconds. One refresh at a time replaces
// a connection's tokens, across goroutines and processes: the others wait
// for it and use its result. The rotated refresh token is stored before
// the new access token is handed out; if storing fails the caller gets the
// error, not a token.
//
// A paused connection gives CodePaused and an inactive one
// CodeUnauthenticated (re-authorize it), so the host's jobs hold. A
// refresh the provider refuses for good (invalid_grant,
// interaction_required) makes the connection Inactive with one event;
// other failures are CodeUnavailable and leave it Active with its tokens.
func (m *Manager) Token(ctx context.Context, id string) (*oauth2.Token, error) {
	const op = "oauth: token"
	c, err := m.node.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if err := usable(op, c); err != nil {
		return nil, err
	}
	p, ok := m.providers[c.Provider]
	if !ok {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the connection's provider " + c.Provider + " is not registered"}
	}
	tok, _, err := m.load(ctx, id)
	if err != nil {
		return nil, err
	}
	if m.fresh(tok) {
		return tok.oauth2(), nil
	}
	mu := m.lock(id)
	mu.Lock()
	defer mu.Unlock()
	return m.refresh(ctx, p, id)
}

// Client returns an HTTP client that sends connection id's access token,
// as Token gives it, with every request.
func (m *Manager) Client(ctx context.Context, id string) (*http.Client, error) {
	if _, err := m.Token(ctx, id); err != nil {
		return nil, err
	}
	return &http.Client{Transport: &oauth2.Transport{Base: m.client.Transport, Source: tokenSource{ctx: ctx, m: m, id: id}}}, nil
}

type tokenSource struct {
	ctx context.Context
	m   *Manager
	id  string
}

func (s tokenSource) Token() (*oauth2.Token, error) { return s.m.Token(s.ctx, s.id) }

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

func (m *Manager) fresh(t *storedToken) bool {
	return t.Access != "" && (t.Expiry.IsZero() || m.clock.Now().Add(refreshEarly).Before(t.Expiry))
}

func (s *storedToken) oauth2() *oauth2.Token {
	return &oauth2.Token{AccessToken: s.Access, TokenType: "Bearer", RefreshToken: s.Refresh, Expiry: s.Expiry}
}

// load reads a connection's stored tokens.
func (m *Manager) load(ctx context.Context, id string) (*storedToken, int64, error) {
	data, version, err := m.store.LoadOAuthToken(ctx, id)
	if err != nil {
		return nil, 0, err
	}
	var t storedToken
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, 0, &tether.Error{Code: tether.CodeInternal, Op: "oauth: load token", Message: "stored tokens do not decode"}
	}
	return &t, version, nil
}

// lock returns the in-process lock of connection id's refresh.
func (m *Manager) lock(id string) *sync.Mutex {
	v, _ := m.refreshing.LoadOrStore(id, new(sync.Mutex))
	return v.(*sync.Mutex)
}

// refresh replaces connection id's tokens, holding the Store's lease on
// them so that one process at a time does; it returns a token another
// refresh stored meanwhile instead of refreshing again.
func (m *Manager) refresh(ctx context.Context, p Provider, id string) (*oauth2.Token, error) {
	const op = "oauth: refresh"
	lease := "oauth-refresh/" + id
	for attempt := 0; ; attempt++ {
		tok, version, err := m.load(ctx, id)
		if err != nil {
			return nil, err
		}
		if m.fresh(tok) {
			return tok.oauth2(), nil // refreshed meanwhile
		}
		now := m.clock.Now()
		held, err := m.leases.Lease(ctx, lease, m.holder, now, now.Add(refreshLease))
		if err != nil {
			return nil, err
		}
		if !held {
			// Another process refreshes: wait for its result.
			if attempt >= 50 {
				return nil, &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "another process has been refreshing the tokens for too long: retry later"}
			}
			select {
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		out, err := m.refreshHeld(ctx, p, id, tok, version)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		_ = m.leases.Release(rctx, lease, m.holder)
		cancel()
		return out, err
	}
}

// refreshHeld calls the token endpoint with the stored refresh token and
// stores the result before returning it.
func (m *Manager) refreshHeld(ctx context.Context, p Provider, id string, tok *storedToken, version int64) (*oauth2.Token, error) {
	const op = "oauth: refresh"
	if tok.Refresh == "" {
		return nil, m.lost(ctx, id, "no refresh token is stored")
	}
	cctx := context.WithValue(ctx, oauth2.HTTPClient, m.client)
	next, err := m.config(p).TokenSource(cctx, &oauth2.Token{RefreshToken: tok.Refresh, Expiry: time.Unix(1, 0)}).Token()
	if err != nil {
		err = classify(op, err)
		if tether.ErrorCode(err) == tether.CodeUnauthenticated {
			return nil, m.lost(ctx, id, "the provider refused the refresh token ("+err.(*tether.Error).Message+")")
		}
		return nil, err
	}
	stored := storedToken{Access: next.AccessToken, Refresh: next.RefreshToken, Expiry: m.expiry(next)}
	if stored.Refresh == "" {
		stored.Refresh = tok.Refresh // not rotated
	}
	blob, err := json.Marshal(stored)
	if err != nil {
		return nil, tether.Wrap(tether.CodeInternal, op, err)
	}
	if _, err := m.store.SaveOAuthToken(ctx, id, blob, version); err != nil {
		return nil, err // the rotated token is not handed out unstored
	}
	return stored.oauth2(), nil
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

// expiry returns tok's expiry on the Manager's clock: x/oauth2 dates it
// on the system clock from the provider's expires_in.
func (m *Manager) expiry(tok *oauth2.Token) time.Time {
	if tok.Expiry.IsZero() {
		return time.Time{}
	}
	return m.clock.Now().Add(time.Until(tok.Expiry))
}
