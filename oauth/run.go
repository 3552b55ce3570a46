package oauth

import (
	"context"
	"errors"
	"time"

	"github.com/tetherkit/tether"
)

// sweepEvery is how often Run sweeps.
const sweepEvery = time.Minute

// sweepBackoff and sweepBackoffMax shape how long Sweep leaves a
// connection alone after it failed to refresh or revoke its grant:
// sweepBackoff after the first failure, doubled after each next one, at
// most sweepBackoffMax.
const (
	sweepBackoff    = time.Minute
	sweepBackoffMax = time.Hour
)

// Details of the EventCredentialsGone Sweep records.
const (
	goneRevoked   = "revoked at the provider"
	goneDestroyed = "destroyed; the provider has no revocation endpoint"
)

// Run sweeps (Sweep) at once and then every minute, until ctx ends; it
// then returns a *tether.Error with CodeCanceled or CodeDeadlineExceeded
// wrapping ctx's error. It starts no goroutine: when it returns, its work
// has ended. A failing sweep does not end Run; what failed is tried again
// on a later sweep, and recorded on the connections meanwhile.
func (m *Manager) Run(ctx context.Context) error {
	for {
		_ = m.Sweep(ctx)
		select {
		case <-ctx.Done():
			return ctxError("oauth: run", ctx.Err())
		case <-m.clock.After(sweepEvery):
		}
	}
}

// Sweep makes one pass over the org connections of the registered
// providers, one connection after another:
//
//   - An Active connection whose provider has an IdleTTL, and whose grant
//     was last issued or refreshed more than half of it ago, is refreshed
//     (as Token refreshes: one process at a time), so the grant does not
//     lapse while the host does not use it. A refusal for good makes the
//     connection Inactive with EventAuthLost; failures that may pass are
//     recorded, and once they have lasted an hour or the grant nears its
//     idle expiry the connection records EventAuthFailing, then
//     EventAuthRecovered when a refresh works again.
//   - A Deleted connection whose tokens are still stored has its refresh
//     token revoked at the provider (RFC 7009) where the provider has a
//     revocation endpoint; then its tokens are removed and it records
//     EventCredentialsGone saying whether they were revoked or, without
//     an endpoint (Microsoft), destroyed. A revocation that fails keeps
//     the tokens for a later sweep.
//
// A connection whose refresh or revocation failed is left alone for a
// minute, then for twice as long after each next failure, at most an
// hour. Sweep returns the errors it met, joined; one connection's failure
// does not stop the pass.
func (m *Manager) Sweep(ctx context.Context) error {
	var errs []error
	for _, s := range []struct {
		status tether.Status
		do     func(context.Context, *tether.Connection) error
	}{
		{tether.StatusActive, m.keepAlive},
		{tether.StatusPaused, m.keepAlive}, // a pause must not cost the grant
		{tether.StatusDeleted, func(ctx context.Context, c *tether.Connection) error { return m.retire(ctx, c, false) }},
	} {
		opts := tether.ListOptions{Kind: tether.KindOrg, Status: s.status, Limit: tether.MaxPageSize}
		for {
			conns, next, err := m.node.List(ctx, opts)
			if err != nil {
				return errors.Join(append(errs, err)...)
			}
			for _, c := range conns {
				if ctx.Err() != nil {
					return errors.Join(append(errs, ctxError("oauth: sweep", ctx.Err()))...)
				}
				if err := s.do(ctx, c); err != nil {
					errs = append(errs, err)
				}
			}
			if next == "" {
				break
			}
			opts.After = next
		}
	}
	return errors.Join(errs...)
}

// keepAlive refreshes Active or Paused connection c's grant when it has been idle
// for half of its provider's IdleTTL.
func (m *Manager) keepAlive(ctx context.Context, c *tether.Connection) error {
	p, ok := m.providers[c.Provider]
	if !ok || p.IdleTTL <= 0 {
		return nil
	}
	seen := m.node.StatusChanges()
	now := m.clock.Now()
	cutoff := now.Add(-p.IdleTTL / 2)
	st := m.conn(c.ID)
	if e := st.cached.Load(); e != nil && !e.renewed.Before(cutoff) {
		return nil // renewed recently: Renewed only moves forward
	}
	if err := st.lock(ctx, "oauth: sweep"); err != nil {
		return err
	}
	defer st.unlock()
	if now.Before(st.next) {
		return nil
	}
	idle := func(r *record) bool { return r.Renewed.Before(cutoff) }
	rec, version, err := m.refresh(ctx, p, c.ID, st, idle)
	if err != nil {
		st.backoff(now)
		return err
	}
	st.failures, st.next = 0, time.Time{}
	if st.cached.Load() != nil {
		m.remember(st, rec, version, seen)
	}
	return nil
}

// backoff leaves the connection alone for a while after a failure.
func (st *connState) backoff(now time.Time) {
	st.failures++
	d := sweepBackoffMax
	if st.failures <= 6 {
		d = min(sweepBackoff<<(st.failures-1), sweepBackoffMax)
	}
	st.next = now.Add(d)
}

// Delete deletes org connection id through the Node (tether.Node.Delete)
// and revokes its grant at once, as Sweep does for deleted connections.
// When the revocation fails (the provider cannot be reached) the
// connection is deleted all the same: its tokens stay stored, unusable
// (Token refuses a deleted connection), until a later Sweep revokes them.
// A connection that is not an org connection is CodeInvalid.
func (m *Manager) Delete(ctx context.Context, id string) (*tether.Connection, error) {
	const op = "oauth: delete"
	c, err := m.node.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if c.Kind != tether.KindOrg {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "not an org connection: delete it with the Node"}
	}
	c, err = m.node.Delete(ctx, id)
	if err != nil {
		return nil, err
	}
	m.conn(id).cached.Store(nil)
	_ = m.retire(ctx, c, true)
	return c, nil
}

// retire revokes or destroys deleted connection c's stored grant and
// records EventCredentialsGone; force ignores the backoff of earlier
// failures.
func (m *Manager) retire(ctx context.Context, c *tether.Connection, force bool) error {
	const op = "oauth: revoke"
	st := m.conn(c.ID)
	if st.gone.Load() {
		return nil
	}
	p, ok := m.providers[c.Provider]
	if !ok {
		return nil // its credentials are another Manager's
	}
	if err := st.lock(ctx, op); err != nil {
		return err
	}
	defer st.unlock()
	at := m.clock.Now()
	if !force && at.Before(st.next) {
		return nil
	}
	if _, _, err := m.load(ctx, c.ID); tether.ErrorCode(err) == tether.CodeNotFound {
		st.gone.Store(true)
		return nil
	} else if err != nil {
		return err
	}
	held, err := m.lease(ctx, c.ID)
	if err != nil || !held {
		return err // another process is at it: a later sweep looks again
	}
	defer m.release(ctx, c.ID)
	rec, _, err := m.load(ctx, c.ID)
	if tether.ErrorCode(err) == tether.CodeNotFound {
		st.gone.Store(true)
		return nil
	} else if err != nil {
		return err
	}
	detail := goneDestroyed
	if rt := rec.Refresh; rec.RevokeURL != "" && (rt != "" || rec.Access != "") {
		if rt == "" {
			rt = rec.Access
		}
		rctx, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := m.revoke(rctx, p, rec.RevokeURL, rt)
		cancel()
		if err != nil {
			st.backoff(at)
			return asTether(op, err)
		}
		detail = goneRevoked
	}
	if err := m.store.DeleteOAuthToken(ctx, c.ID); err != nil {
		return err
	}
	st.gone.Store(true)
	st.failures, st.next = 0, time.Time{}
	return m.node.Note(tether.WithActor(ctx, tether.ActorSystem), c.ID, tether.EventCredentialsGone, "the connection's tokens were "+detail)
}
