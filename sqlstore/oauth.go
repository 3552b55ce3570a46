package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/tetherkit/tether"
)

// OAuth state and tokens. Both are secrets: they are sealed with
// Config.Sealer, bound to the row they belong to, and never written in
// plaintext.

func oauthStateContext(key string) []byte { return []byte("tether/oauth-state/" + key) }

func oauthTokenContext(connectionID string) []byte {
	return []byte("tether/oauth-token/" + connectionID)
}

// PutOAuthState implements tether.OAuthStore. The data are sealed, bound
// to key.
func (s *Store) PutOAuthState(ctx context.Context, key string, data []byte, expires time.Time) error {
	const op = "sqlstore: put oauth state"
	if key == "" || len(key) > tether.MaxOAuthStateKeyLen {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "oauth state key must be 1-200 bytes"}
	}
	sealed, err := s.sealer.Seal(data, oauthStateContext(key))
	if err != nil {
		return err
	}
	return s.write(ctx, op, func(q querier) error {
		res, err := q.ExecContext(ctx, s.q.putOAuthState, key, sealed, nanos(expires))
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "an oauth state with this key exists"}
		}
		return nil
	})
}

// TakeOAuthState implements tether.OAuthStore: one DELETE ... RETURNING
// takes the row, so of concurrent callers one gets it. Every 64th call
// also removes the states that expired before now.
func (s *Store) TakeOAuthState(ctx context.Context, key string, now time.Time) ([]byte, error) {
	const op = "sqlstore: take oauth state"
	purge := s.states.Add(1)%64 == 0
	var (
		sealed  []byte
		expires int64
	)
	err := s.write(ctx, op, func(q querier) error {
		if purge {
			if _, err := q.ExecContext(ctx, s.q.purgeOAuthStates, nanos(now)); err != nil {
				return err
			}
		}
		err := q.QueryRowContext(ctx, s.q.takeOAuthState, key).Scan(&sealed, &expires)
		if errors.Is(err, sql.ErrNoRows) {
			return stateNotFound(op)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	if expires < nanos(now) {
		return nil, stateNotFound(op)
	}
	data, err := s.sealer.Open(sealed, oauthStateContext(key))
	if err != nil {
		return nil, translate(op, err)
	}
	return data, nil
}

func stateNotFound(op string) error {
	return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no such oauth state, or it expired"}
}

// LoadOAuthToken implements tether.OAuthStore.
func (s *Store) LoadOAuthToken(ctx context.Context, connectionID string) ([]byte, int64, error) {
	const op = "sqlstore: load oauth token"
	var (
		version int64
		sealed  []byte
	)
	err := s.read(ctx, op, func(q querier) error {
		err := q.QueryRowContext(ctx, s.q.loadOAuthToken, connectionID).Scan(&version, &sealed)
		if errors.Is(err, sql.ErrNoRows) {
			return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no oauth token stored for this connection"}
		}
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	data, err := s.sealer.Open(sealed, oauthTokenContext(connectionID))
	if err != nil {
		return nil, 0, translate(op, err)
	}
	return data, version, nil
}

// SaveOAuthToken implements tether.OAuthStore. The data are sealed, bound
// to the connection ID. The compare-and-swap is one statement: an INSERT
// that does nothing when a token is stored (version 0), or an UPDATE
// conditioned on the version.
func (s *Store) SaveOAuthToken(ctx context.Context, connectionID string, data []byte, version int64) (int64, error) {
	const op = "sqlstore: save oauth token"
	sealed, err := s.sealer.Seal(data, oauthTokenContext(connectionID))
	if err != nil {
		return 0, err
	}
	err = s.write(ctx, op, func(q querier) error {
		var (
			res sql.Result
			err error
		)
		if version == 0 {
			res, err = q.ExecContext(ctx, s.q.createOAuthToken, sealed, connectionID)
		} else {
			res, err = q.ExecContext(ctx, s.q.updateOAuthToken, sealed, connectionID, version)
		}
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 1 {
			return nil
		}
		// Connections are never removed, only marked deleted: one that is
		// missing now was missing when the statement ran.
		ok, err := s.exists(ctx, q, connectionID)
		switch {
		case err != nil:
			return err
		case !ok:
			return notFound(op)
		}
		return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "oauth token changed since it was read"}
	})
	if err != nil {
		return 0, err
	}
	return version + 1, nil
}

// DeleteOAuthToken implements tether.OAuthStore.
func (s *Store) DeleteOAuthToken(ctx context.Context, connectionID string) error {
	return s.write(ctx, "sqlstore: delete oauth token", func(q querier) error {
		_, err := q.ExecContext(ctx, s.q.deleteOAuthToken, connectionID)
		return err
	})
}
