package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/sqlstore"
	"github.com/tetherkit/tether/storetest"
)

// OAuth states and tokens are sealed: their plaintext is in no row, a
// sealed value moved to another row does not open, and another key ring
// opens none.
func TestOAuthSealed(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		key := testKey(t)
		s := newStore(t, db, d, key)
		for i := 1; i <= 2; i++ {
			if err := s.CreateConnection(ctx, storetest.NewOrg(i, "team-a", fmt.Sprint("00D00000000000000", i))); err != nil {
				t.Fatal(err)
			}
		}
		exp := time.Now().Add(time.Hour)
		verifier := []byte("pkce-verifier-dBjftJeZ4CVP-mB92K27uhbUJU1p1r")
		token := []byte(`{"access_token":"00Dxx!AQ4AQSecretAccess","refresh_token":"5Aep861SecretRefresh"}`)
		for _, k := range []string{"state-a", "state-b"} {
			if err := s.PutOAuthState(ctx, k, verifier, exp); err != nil {
				t.Fatal(err)
			}
		}
		for _, id := range []string{storetest.ConnID(1), storetest.ConnID(2)} {
			if _, err := s.SaveOAuthToken(ctx, id, token, 0); err != nil {
				t.Fatal(err)
			}
		}
		for _, table := range []string{"tether_oauth_states", "tether_oauth_tokens"} {
			raw := dumpTable(t, db, table)
			if len(raw) == 0 {
				t.Fatalf("table %s is empty", table)
			}
			for _, secret := range [][]byte{verifier, token, []byte("SecretAccess"), []byte("SecretRefresh"), []byte("dBjftJeZ4CVP")} {
				if bytes.Contains(raw, secret) {
					t.Fatalf("table %s holds %q in plaintext", table, secret)
				}
			}
		}

		// Sealed values are bound to their rows.
		var sealed []byte
		if err := db.QueryRow(rebind(d, `SELECT data FROM tether_oauth_states WHERE key = ?`), "state-a").Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(rebind(d, `UPDATE tether_oauth_states SET data = ? WHERE key = ?`), sealed, "state-b"); err != nil {
			t.Fatal(err)
		}
		if _, err := s.TakeOAuthState(ctx, "state-b", time.Now()); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("a state sealed for another key opened: %v", err)
		}
		if err := db.QueryRow(rebind(d, `SELECT data FROM tether_oauth_tokens WHERE connection_id = ?`), storetest.ConnID(1)).Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		if _, err := db.Exec(rebind(d, `UPDATE tether_oauth_tokens SET data = ? WHERE connection_id = ?`), sealed, storetest.ConnID(2)); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.LoadOAuthToken(ctx, storetest.ConnID(2)); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("a token sealed for another connection opened: %v", err)
		}

		// Another key ring opens neither.
		other := newStore(t, db, d, testKey(t))
		if _, _, err := other.LoadOAuthToken(ctx, storetest.ConnID(1)); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("a store with another key opened the token: %v", err)
		}
		if _, err := other.TakeOAuthState(ctx, "state-a", time.Now()); tether.ErrorCode(err) != tether.CodeInvalid {
			t.Fatalf("a store with another key opened the state: %v", err)
		}
		// The right ring still opens what was not tampered with.
		if got, v, err := s.LoadOAuthToken(ctx, storetest.ConnID(1)); err != nil || !bytes.Equal(got, token) || v != 1 {
			t.Fatalf("LoadOAuthToken = %q, %d, %v", got, v, err)
		}
	})
}

// SECURITY.md 33: a sealed OAuth token or state tampered with in the
// database, at any byte, is refused with CodeInvalid and no data, never
// opened as garbage; restored, it opens again.
func TestOAuthTampered(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		org := storetest.NewOrg(1, "team-a", "00D000000000001EAA")
		if err := s.CreateConnection(ctx, org); err != nil {
			t.Fatal(err)
		}
		token := []byte(`{"access":"00Dxx!AQ4AQSecretAccess","refresh":"5Aep861SecretRefresh"}`)
		if _, err := s.SaveOAuthToken(ctx, org.ID, token, 0); err != nil {
			t.Fatal(err)
		}
		var sealed []byte
		if err := db.QueryRow(rebind(d, `SELECT data FROM tether_oauth_tokens WHERE connection_id = ?`), org.ID).Scan(&sealed); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, 5, len(sealed) / 2, len(sealed) - 1} {
			bad := bytes.Clone(sealed)
			bad[i] ^= 0x01
			if _, err := db.Exec(rebind(d, `UPDATE tether_oauth_tokens SET data = ? WHERE connection_id = ?`), bad, org.ID); err != nil {
				t.Fatal(err)
			}
			if got, _, err := s.LoadOAuthToken(ctx, org.ID); tether.ErrorCode(err) != tether.CodeInvalid || got != nil {
				t.Fatalf("token byte %d tampered: LoadOAuthToken = %q, %v; want no data and an invalid-data error", i, got, err)
			}
		}
		if _, err := db.Exec(rebind(d, `UPDATE tether_oauth_tokens SET data = ? WHERE connection_id = ?`), sealed, org.ID); err != nil {
			t.Fatal(err)
		}
		if got, _, err := s.LoadOAuthToken(ctx, org.ID); err != nil || !bytes.Equal(got, token) {
			t.Fatalf("the restored token: %q, %v", got, err)
		}

		verifier := []byte(`{"verifier":"dBjftJeZ4CVP-mB92K27uhbUJU1p1r"}`)
		for n, i := range []int{0, 5, -2, -1} {
			key := fmt.Sprint("state-", n)
			if err := s.PutOAuthState(ctx, key, verifier, time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := db.QueryRow(rebind(d, `SELECT data FROM tether_oauth_states WHERE key = ?`), key).Scan(&sealed); err != nil {
				t.Fatal(err)
			}
			if i < 0 {
				i += len(sealed)
			}
			sealed[i] ^= 0x01
			if _, err := db.Exec(rebind(d, `UPDATE tether_oauth_states SET data = ? WHERE key = ?`), sealed, key); err != nil {
				t.Fatal(err)
			}
			if got, err := s.TakeOAuthState(ctx, key, time.Now()); tether.ErrorCode(err) != tether.CodeInvalid || got != nil {
				t.Fatalf("state byte %d tampered: TakeOAuthState = %q, %v; want no data and an invalid-data error", i, got, err)
			}
		}
	})
}

// Expired states are purged now and then by TakeOAuthState, not only the
// one taken.
func TestOAuthStatesPurged(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		s := newStore(t, db, d, testKey(t))
		now := time.Now()
		if err := s.PutOAuthState(ctx, "old", []byte("x"), now.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := s.PutOAuthState(ctx, "live", []byte("y"), now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		for i := range 64 {
			if _, err := s.TakeOAuthState(ctx, fmt.Sprint("absent-", i), now); tether.ErrorCode(err) != tether.CodeNotFound {
				t.Fatal(err)
			}
		}
		var keys []string
		rows, err := db.Query(`SELECT key FROM tether_oauth_states ORDER BY key`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, k)
		}
		if diff := cmp.Diff([]string{"live"}, keys); diff != "" {
			t.Fatalf("states kept (-want +got):\n%s", diff)
		}
	})
}

// The OAuth methods called with a Receiver's context run in the
// delivery's transaction: they return on SQLite with one connection (the
// deadline turns a wait for a second one into a failure), and their
// writes are undone with a failing message and commit with an accepted
// one.
func TestOAuthJoinsDelivery(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		s := newStore(t, db, d, testKey(t))
		peer, org := storetest.NewConnection(1), storetest.NewOrg(2, "team-a", "00D000000000001EAA")
		for _, c := range []*tether.Connection{peer, org} {
			if err := s.CreateConnection(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.PutOAuthState(ctx, "before", []byte("b"), time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := s.SaveOAuthToken(ctx, org.ID, []byte("v1"), 0); err != nil {
			t.Fatal(err)
		}
		msg := func(seq int64) []tether.Message { return []tether.Message{{ConnectionID: peer.ID, Seq: seq}} }
		calls := func(ctx context.Context) error {
			now := time.Now()
			if err := s.PutOAuthState(ctx, "in-delivery", []byte("s"), now.Add(time.Hour)); err != nil {
				return fmt.Errorf("PutOAuthState: %w", err)
			}
			if got, err := s.TakeOAuthState(ctx, "before", now); err != nil || string(got) != "b" {
				return fmt.Errorf("TakeOAuthState = %q, %w", got, err)
			}
			if v, err := s.SaveOAuthToken(ctx, org.ID, []byte("v2"), 1); err != nil || v != 2 {
				return fmt.Errorf("SaveOAuthToken = %d, %w", v, err)
			}
			if got, v, err := s.LoadOAuthToken(ctx, org.ID); err != nil || string(got) != "v2" || v != 2 {
				return fmt.Errorf("LoadOAuthToken = %q, %d, %w", got, v, err)
			}
			// A failing call undoes its own writes only.
			if _, err := s.SaveOAuthToken(ctx, org.ID, []byte("stale"), 1); tether.ErrorCode(err) != tether.CodeConflict {
				return fmt.Errorf("stale SaveOAuthToken: %w", err)
			}
			if err := s.DeleteOAuthToken(ctx, peer.ID); err != nil {
				return fmt.Errorf("DeleteOAuthToken: %w", err)
			}
			return nil
		}

		boom := errors.New("receiver fails")
		cursor, err := s.DeliverInbox(ctx, peer.ID, 0, msg(1), func(ctx context.Context, m tether.Message) error {
			if err := calls(ctx); err != nil {
				return err
			}
			return boom
		})
		if cursor != 0 || !errors.Is(err, boom) {
			t.Fatalf("failing delivery = %d, %v", cursor, err)
		}
		// Undone with the message.
		if got, v, err := s.LoadOAuthToken(ctx, org.ID); err != nil || string(got) != "v1" || v != 1 {
			t.Fatalf("token after the failed message: %q, %d, %v; want v1, 1", got, v, err)
		}
		if _, err := s.TakeOAuthState(ctx, "in-delivery", time.Now()); tether.ErrorCode(err) != tether.CodeNotFound {
			t.Fatalf("a state put in the failed message was kept: %v", err)
		}

		cursor, err = s.DeliverInbox(ctx, peer.ID, 0, msg(1), func(ctx context.Context, m tether.Message) error { return calls(ctx) })
		if cursor != 1 || err != nil {
			t.Fatalf("accepted delivery = %d, %v", cursor, err)
		}
		if got, v, err := s.LoadOAuthToken(ctx, org.ID); err != nil || string(got) != "v2" || v != 2 {
			t.Fatalf("token after the accepted message: %q, %d, %v; want v2, 2", got, v, err)
		}
		if _, err := s.TakeOAuthState(ctx, "before", time.Now()); tether.ErrorCode(err) != tether.CodeNotFound {
			t.Fatalf("a state taken in the accepted message is still there: %v", err)
		}
		if got, err := s.TakeOAuthState(ctx, "in-delivery", time.Now()); err != nil || string(got) != "s" {
			t.Fatalf("the state put in the accepted message: %q, %v", got, err)
		}
	})
}

// Migration 4 copies the ExternalID of existing connections into
// external_id, and indexes the org connections that are not deleted. Of
// org connections that share an ExternalID from before, the oldest holds
// it; the others can be deleted but not updated with it.
func TestMigrationBackfillsExternalID(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB, d sqlstore.Dialect) {
		ctx := context.Background()
		key := testKey(t)
		s := newStore(t, db, d, key)
		const orgA, orgB = "00D000000000001EAA", "00D000000000002EAA"
		peer := storetest.NewConnection(5)
		peer.ExternalID = orgA
		for _, c := range []*tether.Connection{storetest.NewOrg(1, "team-a", orgA), storetest.NewOrg(3, "team-c", orgB), peer} {
			if err := s.CreateConnection(ctx, c); err != nil {
				t.Fatal(err)
			}
		}
		// Back to the schema before migration 4.
		for _, q := range []string{
			`DROP INDEX tether_connections_org_external_id`,
			`ALTER TABLE tether_connections DROP COLUMN external_id`,
			`DROP TABLE tether_oauth_states`,
			`DROP TABLE tether_oauth_tokens`,
			`DELETE FROM tether_migrations WHERE version = 4`,
		} {
			if _, err := db.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
		// Rows a store of that version could write: another team's
		// connection to orgA, and a deleted one.
		dup := storetest.NewOrg(2, "team-b", orgA)
		gone := storetest.NewOrg(4, "team-d", orgA)
		gone.Status = tether.StatusDeleted
		for _, c := range []*tether.Connection{dup, gone} {
			c.Version = 1
			data, err := json.Marshal(c)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec(rebind(d, `INSERT INTO tether_connections (id, owner, status, kind, version, data) VALUES (?, ?, ?, ?, 1, ?)`),
				c.ID, c.Owner, string(c.Status), string(c.Kind), data); err != nil {
				t.Fatal(err)
			}
		}

		s = newStore(t, db, d, key)
		got := map[string]string{}
		rows, err := db.Query(`SELECT id, external_id FROM tether_connections`)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		for rows.Next() {
			var id, ext string
			if err := rows.Scan(&id, &ext); err != nil {
				t.Fatal(err)
			}
			got[id] = ext
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{
			storetest.ConnID(1): orgA,
			storetest.ConnID(2): "", // the younger duplicate: out of the index
			storetest.ConnID(3): orgB,
			storetest.ConnID(4): orgA,
			storetest.ConnID(5): orgA,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("external_id after the migration (-want +got):\n%s", diff)
		}

		// The index holds from now on.
		for _, ext := range []string{orgA, orgB} {
			if err := s.CreateConnection(ctx, storetest.NewOrg(10, "team-x", ext)); tether.ErrorCode(err) != tether.CodeOrgTaken {
				t.Fatalf("creating a connection to an org connected before the migration: %v, want org_taken", err)
			}
		}
		dup.Name = "Renamed"
		if err := s.UpdateConnection(ctx, dup); tether.ErrorCode(err) != tether.CodeOrgTaken {
			t.Fatalf("updating the younger duplicate: %v, want org_taken", err)
		}
		dup.Status = tether.StatusDeleted
		if err := s.UpdateConnection(ctx, dup); err != nil {
			t.Fatalf("deleting the younger duplicate: %v", err)
		}
		first, err := s.GetConnection(ctx, storetest.ConnID(1))
		if err != nil {
			t.Fatal(err)
		}
		first.Status = tether.StatusDeleted
		if err := s.UpdateConnection(ctx, first); err != nil {
			t.Fatal(err)
		}
		if err := s.CreateConnection(ctx, storetest.NewOrg(10, "team-x", orgA)); err != nil {
			t.Fatalf("connecting orgA once its connections are deleted: %v", err)
		}
	})
}
