// Package storetest is the conformance suite for tether.Store
// implementations. An implementation's tests call Run with a function that
// returns a new, empty store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t testing.TB) tether.Store { return memstore.New() })
//	}
//
// Every test asks for its own store, so implementations backed by a shared
// database should isolate each one (a schema or database per store).
package storetest

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tetherkit/tether"
)

// NewStore returns a new, empty store for one test. It may register cleanup
// with t.Cleanup.
type NewStore func(t testing.TB) tether.Store

// Run runs the whole suite against stores made by newStore.
func Run(t *testing.T, newStore NewStore) {
	tests := []struct {
		name string
		fn   func(*testing.T, NewStore)
	}{
		{"Instance", testInstance},
		{"InstanceConcurrentCreate", testInstanceConcurrentCreate},
		{"CreateGet", testCreateGet},
		{"CreateRejects", testCreateRejects},
		{"ReturnsCopies", testReturnsCopies},
		{"Update", testUpdate},
		{"UpdateRejects", testUpdateRejects},
		{"ConcurrentConditionalUpdate", testConcurrentConditionalUpdate},
		{"ConcurrentIncrements", testConcurrentIncrements},
		{"ConsumeInvitation", testConsumeInvitation},
		{"ConsumeInvitationConcurrent", testConsumeInvitationConcurrent},
		{"List", testList},
		{"Events", testEvents},
		{"Feed", testFeed},
		{"FeedRejects", testFeedRejects},
		{"FeedConcurrent", testFeedConcurrent},
		{"Outbox", testOutbox},
		{"OutboxConcurrentAppend", testOutboxConcurrentAppend},
		{"OutboxBatch", testOutboxBatch},
		{"PendingOutboxes", testPendingOutboxes},
		{"UpdateAndNotify", testUpdateAndNotify},
		{"UpdateAndNotifyRejects", testUpdateAndNotifyRejects},
		{"DeleteClosesOutbox", testDeleteClosesOutbox},
		{"DeleteRacesAppend", testDeleteRacesAppend},
		{"KeyChangeFields", testKeyChangeFields},
		{"Inbox", testInbox},
		{"Lease", testLease},
		{"AtomicInbox", testAtomicInbox},
		{"Nonces", testNonces},
		{"OneOrgPerTeam", testOneOrgPerTeam},
		{"OneOrgPerTeamConsume", testOneOrgPerTeamConsume},
		{"OneOrgPerTeamConcurrent", testOneOrgPerTeamConcurrent},
		{"OAuthState", testOAuthState},
		{"OAuthStateConcurrentTake", testOAuthStateConcurrentTake},
		{"OAuthToken", testOAuthToken},
		{"OAuthTokenConcurrentSave", testOAuthTokenConcurrentSave},
		{"CanceledContext", testCanceledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

// base is the time used for records: whole milliseconds in UTC, which every
// store can keep exactly.
var base = time.Date(2026, 3, 14, 15, 9, 26, 535_000_000, time.UTC)

// ConnID returns a valid connection ID that sorts by i.
func ConnID(i int) string { return fmt.Sprintf("conn_%026d", i) }

// NewConnection returns a valid active peer connection with every field
// set, except NoticeSeq and Version, which the Store assigns.
func NewConnection(i int) *tether.Connection {
	key := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
	previous := ed25519.NewKeyFromSeed(append(make([]byte, 31), 9)).Public().(ed25519.PublicKey)
	return &tether.Connection{
		ID:                ConnID(i),
		Kind:              tether.KindPeer,
		Owner:             "team-a",
		Name:              fmt.Sprintf("Connection %d", i),
		Description:       "Support ↔ Engineering, «quoted» and 'single'",
		LocalName:         "Support",
		RemoteName:        "Engineering",
		Mode:              tether.ModeScript,
		Status:            tether.StatusActive,
		Role:              tether.RoleAcceptor,
		LocalURL:          "https://support.example.com/tether",
		RemoteURL:         "",
		LocalKeyID:        "AAAAAAAAAAAAAAAA",
		RemoteInstance:    fmt.Sprintf("inst_%026d", i),
		RemoteKey:         key,
		RemoteConnection:  ConnID(1000000 + i),
		RemotePreviousKey: previous,
		PendingKeyID:      "BBBBBBBBBBBBBBBB",
		RemoteStatus:      tether.StatusActive,
		Invitation:        "AAAAAAAAAAAAAAAAAAAAAA",
		InvitationExpires: base.Add(72 * time.Hour),
		ExternalID:        "",
		Rules:             "replica.summary = issue.summary\n\tline two",
		RulesVersion:      3,
		Settings:          map[string]string{"sync.comments": "true", "project": "SUP"},
		Health:            tether.Health{LastContact: base.Add(time.Minute), LastError: "unavailable: timeout", Failures: 2},
		CreatedAt:         base,
		UpdatedAt:         base.Add(time.Second),
	}
}

func ev(t tether.EventType, detail string) tether.Event {
	return tether.Event{Type: t, Time: base, Actor: tether.ActorLocal, Detail: detail}
}

// cmpOpts compares times by instant and ignores store-assigned fields the
// test does not know.
var cmpOpts = []cmp.Option{
	cmp.Comparer(func(a, b time.Time) bool { return a.Equal(b) }),
	cmpopts.EquateEmpty(),
}

func wantCode(t testing.TB, err error, code tether.Code) {
	t.Helper()
	if got := tether.ErrorCode(err); got != code {
		t.Fatalf("error code = %q (err %v), want %q", got, err, code)
	}
	var e *tether.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is %T, want *tether.Error", err, err)
	}
}

func mustCreate(t testing.TB, s tether.Store, c *tether.Connection, events ...tether.Event) {
	t.Helper()
	if err := s.CreateConnection(context.Background(), c, events...); err != nil {
		t.Fatalf("CreateConnection(%s): %v", c.ID, err)
	}
}

// wantStored fails unless the store holds exactly want under want.ID.
func wantStored(t testing.TB, s tether.Store, want *tether.Connection, what string) {
	t.Helper()
	got, err := s.GetConnection(context.Background(), want.ID)
	if err != nil {
		t.Fatalf("%s: GetConnection(%s): %v", what, want.ID, err)
	}
	if diff := cmp.Diff(want, got, cmpOpts...); diff != "" {
		t.Fatalf("%s: stored connection (-want +got):\n%s", what, diff)
	}
}

// race runs fn(i) for i in [0, n) in n goroutines released together and
// returns their errors.
func race(n int, fn func(i int) error) []error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = fn(i)
		}()
	}
	close(start)
	wg.Wait()
	return errs
}

// winners returns the indexes of the nil errors and fails on any error
// other than the losers' code.
func winners(t testing.TB, errs []error, losers tether.Code) []int {
	t.Helper()
	var won []int
	for i, err := range errs {
		switch tether.ErrorCode(err) {
		case "":
			won = append(won, i)
		case losers:
		default:
			t.Fatalf("goroutine %d: unexpected error %v", i, err)
		}
	}
	return won
}

func testInstance(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	_, err := s.LoadInstance(ctx)
	wantCode(t, err, tether.CodeNotFound)

	priv := ed25519.NewKeyFromSeed(make([]byte, 32))
	pub := priv.Public().(ed25519.PublicKey)
	inst := &tether.Instance{ID: "inst_00000000000000000000000001", Keys: []tether.InstanceKey{
		{ID: tether.KeyID(pub), Private: priv, Created: base},
	}}
	if err := s.SaveInstance(ctx, inst); err != nil {
		t.Fatalf("SaveInstance (create): %v", err)
	}
	if inst.Version != 1 {
		t.Fatalf("Version after create = %d, want 1", inst.Version)
	}
	dup := &tether.Instance{ID: "inst_00000000000000000000000002", Keys: inst.Keys}
	wantCode(t, s.SaveInstance(ctx, dup), tether.CodeAlreadyExists)

	got, err := s.LoadInstance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(inst, got, cmpOpts...); diff != "" {
		t.Fatalf("LoadInstance mismatch (-want +got):\n%s", diff)
	}

	// Rotate: a second key, retired first key.
	priv2 := ed25519.NewKeyFromSeed(append(make([]byte, 31), 1))
	rotated := &tether.Instance{ID: inst.ID, Version: 1, Keys: []tether.InstanceKey{
		{ID: tether.KeyID(priv2.Public().(ed25519.PublicKey)), Private: priv2, Created: base.Add(time.Hour)},
		{ID: inst.Keys[0].ID, Private: priv, Created: base, Retired: base.Add(time.Hour), Expires: base.Add(73 * time.Hour)},
	}}
	if err := s.SaveInstance(ctx, rotated); err != nil {
		t.Fatalf("SaveInstance (update): %v", err)
	}
	if rotated.Version != 2 {
		t.Fatalf("Version after update = %d, want 2", rotated.Version)
	}
	stale := &tether.Instance{ID: inst.ID, Version: 1, Keys: inst.Keys}
	wantCode(t, s.SaveInstance(ctx, stale), tether.CodeConflict)
	got, err = s.LoadInstance(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rotated, got, cmpOpts...); diff != "" {
		t.Fatalf("LoadInstance after rotation mismatch (-want +got):\n%s", diff)
	}
}

func testInstanceConcurrentCreate(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	errs := race(20, func(i int) error {
		priv := ed25519.NewKeyFromSeed(append(make([]byte, 31), byte(i)))
		return s.SaveInstance(ctx, &tether.Instance{
			ID:   fmt.Sprintf("inst_%026d", i),
			Keys: []tether.InstanceKey{{ID: tether.KeyID(priv.Public().(ed25519.PublicKey)), Private: priv, Created: base}},
		})
	})
	if won := winners(t, errs, tether.CodeAlreadyExists); len(won) != 1 {
		t.Fatalf("%d concurrent creates succeeded, want exactly 1", len(won))
	}
}

func testCreateGet(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	_, err := s.GetConnection(ctx, ConnID(1))
	wantCode(t, err, tether.CodeNotFound)

	c := NewConnection(1)
	mustCreate(t, s, c, ev(tether.EventCreated, "created"))
	if c.Version != 1 {
		t.Fatalf("Version after create = %d, want 1", c.Version)
	}
	wantStored(t, s, c, "after create")

	// An org connection with the fields a peer connection leaves empty.
	org := &tether.Connection{
		ID: ConnID(2), Kind: tether.KindOrg, Owner: "team-b", Name: "Salesforce production",
		Status: tether.StatusPending, ExternalID: "00D000000000001EAA", CreatedAt: base, UpdatedAt: base,
	}
	mustCreate(t, s, org)
	wantStored(t, s, org, "org connection")
}

func testCreateRejects(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	mustCreate(t, s, NewConnection(1))
	wantCode(t, s.CreateConnection(ctx, NewConnection(1), ev(tether.EventCreated, "dup")), tether.CodeAlreadyExists)

	bad := NewConnection(2)
	bad.Name = "bad\x00name"
	wantCode(t, s.CreateConnection(ctx, bad, ev(tether.EventCreated, "x")), tether.CodeInvalid)
	_, err := s.GetConnection(ctx, bad.ID)
	wantCode(t, err, tether.CodeNotFound)

	evs, err := s.ListEvents(ctx, ConnID(1), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 0 {
		t.Fatalf("a rejected create appended events: %+v", evs)
	}
}

func testReturnsCopies(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	c := NewConnection(1)
	mustCreate(t, s, c)
	c.Settings["project"] = "CHANGED"
	c.RemoteKey[0] ^= 0xff
	c.RemotePreviousKey[0] ^= 0xff
	got, err := s.GetConnection(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := NewConnection(1)
	want.Version = 1
	if diff := cmp.Diff(want, got, cmpOpts...); diff != "" {
		t.Fatalf("store kept a reference to the caller's value (-want +got):\n%s", diff)
	}
	got.Settings["project"] = "CHANGED AGAIN"
	got.RemotePreviousKey[0] ^= 0xff
	again, _ := s.GetConnection(ctx, c.ID)
	if again.Settings["project"] != "SUP" || !again.RemotePreviousKey.Equal(want.RemotePreviousKey) {
		t.Fatalf("store returned a reference to its own value")
	}
}

func testUpdate(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	c := NewConnection(1)
	mustCreate(t, s, c)
	c.Name = "Renamed"
	c.Status = tether.StatusPaused
	c.Settings = nil
	c.Health = tether.Health{}
	c.UpdatedAt = base.Add(time.Hour)
	if err := s.UpdateConnection(ctx, c, ev(tether.EventPaused, "paused")); err != nil {
		t.Fatalf("UpdateConnection: %v", err)
	}
	if c.Version != 2 {
		t.Fatalf("Version after update = %d, want 2", c.Version)
	}
	wantStored(t, s, c, "after update")
	// An update without events, to the same status.
	c.Health.Failures = 1
	if err := s.UpdateConnection(ctx, c); err != nil {
		t.Fatalf("UpdateConnection without events: %v", err)
	}
	evs, err := s.ListEvents(ctx, c.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != tether.EventPaused {
		t.Fatalf("events = %+v, want one paused event", evs)
	}
}

// rejectedUpdates are changes to an active connection (NewConnection) that
// an update refuses, with the code it refuses them with.
var rejectedUpdates = []struct {
	name   string
	change func(*tether.Connection)
	code   tether.Code
}{
	{"stale version", func(c *tether.Connection) { c.Version = 7 }, tether.CodeConflict},
	{"mode", func(c *tether.Connection) { c.Mode = tether.ModeBasic }, tether.CodeModeFixed},
	{"kind", func(c *tether.Connection) { c.Kind = tether.KindOrg }, tether.CodeInvalid},
	{"role", func(c *tether.Connection) { c.Role = tether.RoleInitiator }, tether.CodeInvalid},
	{"created", func(c *tether.Connection) { c.CreatedAt = base.Add(time.Hour) }, tether.CodeInvalid},
	{"invalid field", func(c *tether.Connection) { c.Description = string([]byte{0xff, 0xfe}) }, tether.CodeInvalid},
	{"active to pending", func(c *tether.Connection) { c.Status = tether.StatusPending }, tether.CodeInvalidTransition},
	{"unknown status", func(c *tether.Connection) { c.Status = "frozen" }, tether.CodeInvalid},
	{"unknown remote status", func(c *tether.Connection) { c.RemoteStatus = "frozen" }, tether.CodeInvalid},
	{"negative notice seq", func(c *tether.Connection) { c.NoticeSeq = -1 }, tether.CodeInvalid},
}

func testUpdateRejects(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	c := NewConnection(1)
	mustCreate(t, s, c)

	missing := NewConnection(9)
	missing.Version = 1
	wantCode(t, s.UpdateConnection(ctx, missing), tether.CodeNotFound)

	for _, tc := range rejectedUpdates {
		t.Run(tc.name, func(t *testing.T) {
			u := c.Clone()
			tc.change(u)
			wantCode(t, s.UpdateConnection(ctx, u, ev(tether.EventUpdated, tc.name)), tc.code)
		})
	}
	wantStored(t, s, c, "after rejected updates")
	evs, _ := s.ListEvents(ctx, c.ID, 0, 0)
	if len(evs) != 0 {
		t.Fatalf("rejected updates appended events: %+v", evs)
	}

	// Deleted is final.
	c.Status = tether.StatusDeleted
	if err := s.UpdateConnection(ctx, c); err != nil {
		t.Fatal(err)
	}
	c.Status = tether.StatusActive
	wantCode(t, s.UpdateConnection(ctx, c), tether.CodeInvalidTransition)
}

func testConcurrentConditionalUpdate(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	mustCreate(t, s, NewConnection(1))
	errs := race(20, func(i int) error {
		c := NewConnection(1)
		c.Version = 1
		c.Name = fmt.Sprintf("writer %d", i)
		return s.UpdateConnection(ctx, c, ev(tether.EventUpdated, c.Name))
	})
	won := winners(t, errs, tether.CodeConflict)
	if len(won) != 1 {
		t.Fatalf("%d writers updated version 1, want exactly 1", len(won))
	}
	got, _ := s.GetConnection(ctx, ConnID(1))
	if got.Version != 2 || got.Name != fmt.Sprintf("writer %d", won[0]) {
		t.Fatalf("got version %d name %q, want 2 and the winner's name", got.Version, got.Name)
	}
	evs, _ := s.ListEvents(ctx, ConnID(1), 0, 0)
	if len(evs) != 1 || evs[0].Detail != got.Name {
		t.Fatalf("events = %+v, want only the winner's", evs)
	}
}

// testConcurrentIncrements proves read-modify-write with retry loses no
// update.
func testConcurrentIncrements(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	c := NewConnection(1)
	c.RulesVersion = 0
	mustCreate(t, s, c)
	const workers, each = 8, 10
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				for {
					c, err := s.GetConnection(ctx, ConnID(1))
					if err != nil {
						errc <- err
						return
					}
					c.RulesVersion++
					err = s.UpdateConnection(ctx, c)
					if tether.ErrorCode(err) == tether.CodeConflict {
						continue
					}
					if err != nil {
						errc <- err
						return
					}
					break
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	got, _ := s.GetConnection(ctx, ConnID(1))
	if got.RulesVersion != workers*each || got.Version != workers*each+1 {
		t.Fatalf("RulesVersion = %d, Version = %d; want %d and %d", got.RulesVersion, got.Version, workers*each, workers*each+1)
	}
}

func testConsumeInvitation(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	// A store keeps a used key at least until its expiry, which is ahead:
	// wall-clock time, as the key's record outlives any test clock.
	exp := time.Now().Add(72 * time.Hour)

	// Create path.
	c := NewConnection(1)
	if err := s.ConsumeInvitation(ctx, "inst_a/jti-1", exp, c, ev(tether.EventCreated, "accepted")); err != nil {
		t.Fatalf("ConsumeInvitation (create): %v", err)
	}
	if c.Version != 1 {
		t.Fatalf("Version = %d, want 1", c.Version)
	}
	// Same key again, for another connection: refused, nothing written.
	other := NewConnection(2)
	err := s.ConsumeInvitation(ctx, "inst_a/jti-1", exp, other, ev(tether.EventCreated, "second"))
	wantCode(t, err, tether.CodeAlreadyUsed)
	if !errors.Is(err, tether.ErrAlreadyUsed) {
		t.Fatalf("errors.Is(%v, ErrAlreadyUsed) = false", err)
	}
	_, err = s.GetConnection(ctx, other.ID)
	wantCode(t, err, tether.CodeNotFound)

	// Update path: pending -> active.
	p := NewConnection(3)
	p.Status = tether.StatusPending
	mustCreate(t, s, p)
	p.Status = tether.StatusActive
	// A failed write does not consume the key.
	stale := p.Clone()
	stale.Version = 5
	wantCode(t, s.ConsumeInvitation(ctx, "inst_a/jti-3", exp, stale), tether.CodeConflict)
	if err := s.ConsumeInvitation(ctx, "inst_a/jti-3", exp, p, ev(tether.EventAccepted, "ok")); err != nil {
		t.Fatalf("ConsumeInvitation (update) after a failed attempt: %v", err)
	}
	if p.Version != 2 {
		t.Fatalf("Version = %d, want 2", p.Version)
	}
	got, _ := s.GetConnection(ctx, p.ID)
	if got.Status != tether.StatusActive {
		t.Fatalf("status = %s, want active", got.Status)
	}
	p.Status = tether.StatusPaused
	wantCode(t, s.ConsumeInvitation(ctx, "inst_a/jti-3", exp, p), tether.CodeAlreadyUsed)
	got, _ = s.GetConnection(ctx, p.ID)
	if got.Status != tether.StatusActive || got.Version != 2 {
		t.Fatalf("a refused consumption changed the connection: %s v%d", got.Status, got.Version)
	}
	// An invalid connection does not consume the key either.
	bad := NewConnection(4)
	bad.LocalName = ""
	wantCode(t, s.ConsumeInvitation(ctx, "inst_a/jti-4", exp, bad), tether.CodeInvalid)
	if err := s.ConsumeInvitation(ctx, "inst_a/jti-4", exp, NewConnection(4)); err != nil {
		t.Fatalf("key consumed by a failed write: %v", err)
	}
	// Keys are compared exactly.
	if err := s.ConsumeInvitation(ctx, "inst_A/jti-1", exp, NewConnection(5)); err != nil {
		t.Fatalf("keys differing in case collided: %v", err)
	}
}

func testConsumeInvitationConcurrent(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	const n = 100
	errs := race(n, func(i int) error {
		return s.ConsumeInvitation(ctx, "inst_b/one-code", time.Now().Add(time.Hour), NewConnection(i), ev(tether.EventCreated, "race"))
	})
	if won := winners(t, errs, tether.CodeAlreadyUsed); len(won) != 1 {
		t.Fatalf("%d of %d concurrent consumptions succeeded, want exactly 1", len(won), n)
	}
	conns, _, err := s.ListConnections(ctx, tether.ListOptions{Limit: tether.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 1 {
		t.Fatalf("%d connections stored, want 1", len(conns))
	}
}

func testList(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	conns, next, err := s.ListConnections(ctx, tether.ListOptions{})
	if err != nil || len(conns) != 0 || next != "" {
		t.Fatalf("empty store: %d connections, next %q, err %v", len(conns), next, err)
	}
	const total = 57
	// Insert out of order; listing is by ID.
	for _, i := range []int{5, 1, 3} {
		mustCreate(t, s, NewConnection(i))
	}
	for i := 6; i <= total+3; i++ {
		c := NewConnection(i)
		if i%3 == 0 {
			c.Owner = "team-b"
		}
		if i%4 == 0 {
			c.Status = tether.StatusPaused
		}
		if i%10 == 0 {
			c.Kind, c.Mode, c.Role, c.LocalName, c.RemoteName = tether.KindOrg, "", "", "", ""
		}
		mustCreate(t, s, c)
	}
	collect := func(opts tether.ListOptions) []string {
		t.Helper()
		var ids []string
		for pages := 0; ; pages++ {
			if pages > 100 {
				t.Fatal("pagination does not end")
			}
			conns, next, err := s.ListConnections(ctx, opts)
			if err != nil {
				t.Fatal(err)
			}
			if len(conns) > opts.PageLimit() {
				t.Fatalf("page of %d, limit %d", len(conns), opts.PageLimit())
			}
			for _, c := range conns {
				if !opts.Matches(c) {
					t.Fatalf("%s does not match the filter %+v", c.ID, opts)
				}
				ids = append(ids, c.ID)
			}
			if next == "" {
				return ids
			}
			if len(conns) == 0 || next != conns[len(conns)-1].ID {
				t.Fatalf("next cursor %q is not the last ID of a non-empty page", next)
			}
			opts.After = next
		}
	}
	var all, teamB, paused, orgs, teamBPausedOrg []string
	for _, i := range append([]int{1, 3, 5}, seq(6, total+3)...) {
		all = append(all, ConnID(i))
		if i >= 6 && i%3 == 0 {
			teamB = append(teamB, ConnID(i))
		}
		if i >= 6 && i%4 == 0 {
			paused = append(paused, ConnID(i))
		}
		if i >= 6 && i%10 == 0 {
			orgs = append(orgs, ConnID(i))
		}
		if i >= 6 && i%60 == 0 {
			teamBPausedOrg = append(teamBPausedOrg, ConnID(i))
		}
	}
	for _, tc := range []struct {
		name string
		opts tether.ListOptions
		want []string
	}{
		{"all, default page", tether.ListOptions{}, all},
		{"all, pages of 7", tether.ListOptions{Limit: 7}, all},
		{"all, page of exactly all", tether.ListOptions{Limit: len(all)}, all},
		{"owner", tether.ListOptions{Owner: "team-b", Limit: 4}, teamB},
		{"status", tether.ListOptions{Status: tether.StatusPaused, Limit: 3}, paused},
		{"kind", tether.ListOptions{Kind: tether.KindOrg, Limit: 2}, orgs},
		{"all filters", tether.ListOptions{Owner: "team-b", Status: tether.StatusPaused, Kind: tether.KindOrg}, teamBPausedOrg},
		{"no match", tether.ListOptions{Owner: "nobody"}, nil},
		{"after the last", tether.ListOptions{After: ConnID(total + 3)}, nil},
		{"after an ID not stored", tether.ListOptions{After: ConnID(4), Limit: 2}, all[2:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if diff := cmp.Diff(tc.want, collect(tc.opts), cmpopts.EquateEmpty()); diff != "" {
				t.Fatalf("listed IDs (-want +got):\n%s", diff)
			}
		})
	}
}

func seq(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func testEvents(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	_, err := s.ListEvents(ctx, ConnID(1), 0, 0)
	wantCode(t, err, tether.CodeNotFound)

	a, b := NewConnection(1), NewConnection(2)
	a.Status = tether.StatusPending
	mustCreate(t, s, a, ev(tether.EventCreated, "a1"))
	mustCreate(t, s, b, ev(tether.EventCreated, "b1"), ev(tether.EventAccepted, "b2"))
	a.Status = tether.StatusActive
	if err := s.UpdateConnection(ctx, a, ev(tether.EventAccepted, "a2")); err != nil {
		t.Fatal(err)
	}
	for i := 3; i <= 150; i++ {
		if err := s.UpdateConnection(ctx, a, ev(tether.EventUpdated, fmt.Sprintf("a%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	a.Status = tether.StatusDeleted
	if err := s.UpdateConnection(ctx, a, ev(tether.EventDeleted, "a151")); err != nil {
		t.Fatal(err)
	}

	// Read a's history in pages after deletion.
	var details []string
	var after int64
	for {
		evs, err := s.ListEvents(ctx, a.ID, after, 40)
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) > 40 {
			t.Fatalf("page of %d events, limit 40", len(evs))
		}
		if len(evs) == 0 {
			break
		}
		for _, e := range evs {
			if e.Seq <= after {
				t.Fatalf("event seq %d not after %d", e.Seq, after)
			}
			if e.ConnectionID != a.ID {
				t.Fatalf("event of %s listed for %s", e.ConnectionID, a.ID)
			}
			after = e.Seq
			details = append(details, e.Detail)
		}
	}
	if len(details) != 151 {
		t.Fatalf("%d events for a, want 151", len(details))
	}
	for i, d := range details {
		if d != fmt.Sprintf("a%d", i+1) {
			t.Fatalf("event %d is %q, want a%d: events out of order", i, d, i+1)
		}
	}
	evs, err := s.ListEvents(ctx, b.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []tether.Event{
		{ConnectionID: b.ID, Type: tether.EventCreated, Time: base, Actor: tether.ActorLocal, Detail: "b1"},
		{ConnectionID: b.ID, Type: tether.EventAccepted, Time: base, Actor: tether.ActorLocal, Detail: "b2"},
	}
	if diff := cmp.Diff(want, evs, append(cmpOpts, cmpopts.IgnoreFields(tether.Event{}, "Seq"))...); diff != "" {
		t.Fatalf("events of b (-want +got):\n%s", diff)
	}
	if evs[0].Seq >= evs[1].Seq {
		t.Fatalf("seqs %d, %d not increasing", evs[0].Seq, evs[1].Seq)
	}
	all, _ := s.ListEvents(ctx, a.ID, 0, 0)
	if len(all) != tether.DefaultEventPage {
		t.Fatalf("limit 0 returned %d events, want %d", len(all), tether.DefaultEventPage)
	}
}

func testCanceledContext(t *testing.T, newStore NewStore) {
	s := newStore(t)
	mustCreate(t, s, NewConnection(1))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.GetConnection(ctx, ConnID(1)); err == nil {
		t.Error("GetConnection with a canceled context succeeded")
	}
	c := NewConnection(2)
	if err := s.CreateConnection(ctx, c); err == nil {
		t.Error("CreateConnection with a canceled context succeeded")
	}
	if _, err := s.GetConnection(context.Background(), c.ID); tether.ErrorCode(err) != tether.CodeNotFound {
		t.Errorf("CreateConnection with a canceled context stored the connection (err %v)", err)
	}
	u := NewConnection(1)
	u.Version, u.Status = 1, tether.StatusDeleted
	if _, err := s.UpdateAndNotify(ctx, u, []byte("deleted")); err == nil {
		t.Error("UpdateAndNotify with a canceled context succeeded")
	}
	if msgs, err := s.ListOutbox(context.Background(), ConnID(1), 0, 0); err != nil || len(msgs) != 0 {
		t.Errorf("UpdateAndNotify with a canceled context appended %+v (err %v)", msgs, err)
	}
}

func testOutbox(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	_, err := s.AppendOutbox(ctx, ConnID(1), []byte("x"), base)
	wantCode(t, err, tether.CodeNotFound)
	mustCreate(t, s, NewConnection(1))
	mustCreate(t, s, NewConnection(2))
	if msgs, err := s.ListOutbox(ctx, ConnID(1), 0, 0); err != nil || len(msgs) != 0 {
		t.Fatalf("empty outbox: %v, %v", msgs, err)
	}
	payloads := [][]byte{[]byte("one"), {}, {0, 1, 2, 0xff}, make([]byte, 64<<10)}
	payloads[3][100] = 7
	for i, p := range payloads {
		seq, err := s.AppendOutbox(ctx, ConnID(1), p, base.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		if seq != int64(i+1) {
			t.Fatalf("seq %d, want %d", seq, i+1)
		}
	}
	if seq, _ := s.AppendOutbox(ctx, ConnID(2), []byte("other"), base); seq != 1 {
		t.Fatalf("another connection's first seq is %d, want 1", seq)
	}
	var want []tether.Message
	for i, p := range payloads {
		want = append(want, tether.Message{ConnectionID: ConnID(1), Seq: int64(i + 1), Payload: p, Created: base.Add(time.Duration(i) * time.Millisecond)})
	}
	got, err := s.ListOutbox(ctx, ConnID(1), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, got, cmpOpts...); diff != "" {
		t.Fatalf("outbox (-want +got):\n%s", diff)
	}
	got[0].Payload[0] = 'X'
	if again, _ := s.ListOutbox(ctx, ConnID(1), 0, 1); string(again[0].Payload) != "one" {
		t.Fatal("ListOutbox returned the store's own payload")
	}
	if got, _ := s.ListOutbox(ctx, ConnID(1), 1, 2); len(got) != 2 || got[0].Seq != 2 || got[1].Seq != 3 {
		t.Fatalf("after 1, limit 2: %+v", got)
	}

	if err := s.AckOutbox(ctx, ConnID(1), 2); err != nil {
		t.Fatal(err)
	}
	if err := s.AckOutbox(ctx, ConnID(1), 1); err != nil { // lower ack: no change
		t.Fatal(err)
	}
	got, _ = s.ListOutbox(ctx, ConnID(1), 0, 0)
	if len(got) != 2 || got[0].Seq != 3 {
		t.Fatalf("after ack 2: %+v", got)
	}
	if err := s.AckOutbox(ctx, ConnID(1), 10); err != nil {
		t.Fatal(err)
	}
	if got, _ = s.ListOutbox(ctx, ConnID(1), 0, 0); len(got) != 0 {
		t.Fatalf("after acking all: %d left", len(got))
	}
	// Numbers are never reused.
	if seq, _ := s.AppendOutbox(ctx, ConnID(1), []byte("five"), base); seq != 5 {
		t.Fatalf("seq after acknowledging all is %d, want 5", seq)
	}
	if got, _ := s.ListOutbox(ctx, ConnID(2), 0, 0); len(got) != 1 || string(got[0].Payload) != "other" {
		t.Fatalf("acks of one connection touched another: %+v", got)
	}
	// Deleting a connection drops its unacknowledged data messages; its
	// events stay (testEvents), its outbox refuses more.
	c, _ := s.GetConnection(ctx, ConnID(2))
	c.Status = tether.StatusDeleted
	if err := s.UpdateConnection(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got, err := s.ListOutbox(ctx, ConnID(2), 0, 0); err != nil || len(got) != 0 {
		t.Fatalf("outbox of a deleted connection: %+v, %v; want it empty", got, err)
	}
	_, err = s.AppendOutbox(ctx, ConnID(2), []byte("late"), base)
	wantCode(t, err, tether.CodeNotConnected)
	if got, _ := s.ListOutbox(ctx, ConnID(1), 0, 0); len(got) != 1 || got[0].Seq != 5 {
		t.Fatalf("deleting one connection touched another's outbox: %+v", got)
	}
}

func testOutboxConcurrentAppend(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	mustCreate(t, s, NewConnection(1))
	const n = 50
	seqs := make([]int64, n)
	errs := race(n, func(i int) error {
		seq, err := s.AppendOutbox(ctx, ConnID(1), []byte(fmt.Sprint(i)), base)
		seqs[i] = seq
		return err
	})
	winners(t, errs, "")
	seen := map[int64]bool{}
	for _, q := range seqs {
		if q < 1 || q > n || seen[q] {
			t.Fatalf("sequence numbers %v are not 1..%d each once", seqs, n)
		}
		seen[q] = true
	}
	msgs, err := s.ListOutbox(ctx, ConnID(1), 0, n)
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range msgs {
		if m.Seq != int64(i+1) || string(m.Payload) != fmt.Sprint(indexOf(seqs, m.Seq)) {
			t.Fatalf("message %d: seq %d payload %q does not match the append that got it", i, m.Seq, m.Payload)
		}
	}
}

func indexOf(seqs []int64, q int64) int {
	for i, s := range seqs {
		if s == q {
			return i
		}
	}
	return -1
}

func mustAppend(t testing.TB, s tether.Store, id, payload string) int64 {
	t.Helper()
	seq, err := s.AppendOutbox(context.Background(), id, []byte(payload), base)
	if err != nil {
		t.Fatalf("AppendOutbox(%s, %q): %v", id, payload, err)
	}
	return seq
}

// wantOutbox fails unless the outbox of connection id holds exactly want
// (their Created aside).
func wantOutbox(t testing.TB, s tether.Store, id string, want []tether.Message, what string) {
	t.Helper()
	got, err := s.ListOutbox(context.Background(), id, 0, tether.MaxOutboxPage)
	if err != nil {
		t.Fatalf("%s: ListOutbox(%s): %v", what, id, err)
	}
	for i := range want {
		want[i].ConnectionID = id
	}
	if diff := cmp.Diff(want, got, append(cmpOpts, cmpopts.IgnoreFields(tether.Message{}, "Created"))...); diff != "" {
		t.Fatalf("%s: outbox (-want +got):\n%s", what, diff)
	}
}

func data(seq int64, payload string) tether.Message {
	return tether.Message{Seq: seq, Payload: []byte(payload)}
}

func control(seq int64, payload string) tether.Message {
	return tether.Message{Seq: seq, Payload: []byte(payload), Control: true}
}

// testUpdateAndNotify: a change and the notice telling the peer of it are
// stored in one step; the notice takes the outbox's next number, between
// the data messages stored before and after it.
func testUpdateAndNotify(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	c := NewConnection(1)
	mustCreate(t, s, c)
	mustAppend(t, s, c.ID, "d1")

	c.Status = tether.StatusPaused
	c.UpdatedAt = base.Add(time.Hour)
	seq, err := s.UpdateAndNotify(ctx, c, []byte(`{"type":"paused"}`), ev(tether.EventPaused, "paused"))
	if err != nil {
		t.Fatalf("UpdateAndNotify: %v", err)
	}
	if seq != 2 || c.NoticeSeq != 2 || c.Version != 2 {
		t.Fatalf("UpdateAndNotify = %d, NoticeSeq %d, Version %d; want 2, 2, 2", seq, c.NoticeSeq, c.Version)
	}
	wantStored(t, s, c, "after UpdateAndNotify")
	if seq := mustAppend(t, s, c.ID, "d3"); seq != 3 {
		t.Fatalf("the data message after a notice has seq %d, want 3", seq)
	}

	// A notice without a status change (a key change), with no payload.
	c.PendingKeyID = "CCCCCCCCCCCCCCCC"
	seq, err = s.UpdateAndNotify(ctx, c, nil)
	if err != nil {
		t.Fatalf("UpdateAndNotify without a status change: %v", err)
	}
	if seq != 4 || c.NoticeSeq != 4 || c.Version != 3 {
		t.Fatalf("UpdateAndNotify = %d, NoticeSeq %d, Version %d; want 4, 4, 3", seq, c.NoticeSeq, c.Version)
	}
	wantStored(t, s, c, "after a second UpdateAndNotify")
	wantOutbox(t, s, c.ID, []tether.Message{data(1, "d1"), control(2, `{"type":"paused"}`), data(3, "d3"), control(4, "")}, "after two notices")
	evs, err := s.ListEvents(ctx, c.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Type != tether.EventPaused {
		t.Fatalf("events = %+v, want one paused event", evs)
	}

	// Control messages are acknowledged like data messages.
	if err := s.AckOutbox(ctx, c.ID, 2); err != nil {
		t.Fatal(err)
	}
	wantOutbox(t, s, c.ID, []tether.Message{data(3, "d3"), control(4, "")}, "after acknowledging 2")
}

// testUpdateAndNotifyRejects: UpdateAndNotify refuses what UpdateConnection
// refuses, with the same codes, and then appends nothing.
func testUpdateAndNotifyRejects(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	c := NewConnection(1)
	mustCreate(t, s, c)
	mustAppend(t, s, c.ID, "d1")

	missing := NewConnection(9)
	missing.Version = 1
	_, err := s.UpdateAndNotify(ctx, missing, []byte("notice"))
	wantCode(t, err, tether.CodeNotFound)
	for _, tc := range rejectedUpdates {
		t.Run(tc.name, func(t *testing.T) {
			u := c.Clone()
			tc.change(u)
			version, noticeSeq := u.Version, u.NoticeSeq
			seq, err := s.UpdateAndNotify(ctx, u, []byte("notice: "+tc.name), ev(tether.EventUpdated, tc.name))
			wantCode(t, err, tc.code)
			if seq != 0 || u.Version != version || u.NoticeSeq != noticeSeq {
				t.Fatalf("a refused UpdateAndNotify returned seq %d and changed the caller's Version %d -> %d, NoticeSeq %d -> %d",
					seq, version, u.Version, noticeSeq, u.NoticeSeq)
			}
		})
	}
	wantStored(t, s, c, "after refused notices")
	wantOutbox(t, s, c.ID, []tether.Message{data(1, "d1")}, "after refused notices")
	if evs, _ := s.ListEvents(ctx, c.ID, 0, 0); len(evs) != 0 {
		t.Fatalf("refused notices appended events: %+v", evs)
	}
}

// testDeleteClosesOutbox: however a connection comes to be deleted, its
// unacknowledged data messages go, its control messages stay until
// acknowledged, and its outbox takes no more data.
func testDeleteClosesOutbox(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		// del deletes c and returns the number of its notice, if any.
		del func(s tether.Store, c *tether.Connection) (int64, error)
	}{
		{"UpdateConnection", func(s tether.Store, c *tether.Connection) (int64, error) {
			return 0, s.UpdateConnection(ctx, c, ev(tether.EventDeleted, "deleted"))
		}},
		{"UpdateAndNotify", func(s tether.Store, c *tether.Connection) (int64, error) {
			return s.UpdateAndNotify(ctx, c, []byte("deleted"), ev(tether.EventDeleted, "deleted"))
		}},
		{"ConsumeInvitation", func(s tether.Store, c *tether.Connection) (int64, error) {
			return 0, s.ConsumeInvitation(ctx, "inst_a/jti-deleted", time.Now().Add(time.Hour), c, ev(tether.EventDeleted, "deleted"))
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			c := NewConnection(1)
			mustCreate(t, s, c)
			mustAppend(t, s, c.ID, "d1")
			c.Status = tether.StatusPaused
			if _, err := s.UpdateAndNotify(ctx, c, []byte("paused")); err != nil {
				t.Fatal(err)
			}
			mustAppend(t, s, c.ID, "d3")
			mustAppend(t, s, c.ID, "d4")
			if err := s.AckOutbox(ctx, c.ID, 1); err != nil {
				t.Fatal(err)
			}

			c.Status = tether.StatusDeleted
			notice, err := tc.del(s, c)
			if err != nil {
				t.Fatalf("deleting: %v", err)
			}
			want := []tether.Message{control(2, "paused")}
			if tc.name == "UpdateAndNotify" {
				if notice != 5 || c.NoticeSeq != 5 {
					t.Fatalf("the deletion's notice has seq %d, NoticeSeq %d; want 5: numbers are not reused", notice, c.NoticeSeq)
				}
				want = append(want, control(5, "deleted"))
			}
			wantStored(t, s, c, "after deletion")
			wantOutbox(t, s, c.ID, want, "after deletion")

			_, err = s.AppendOutbox(ctx, c.ID, []byte("late"), base)
			wantCode(t, err, tether.CodeNotConnected)
			wantOutbox(t, s, c.ID, want, "after a refused append")

			if err := s.AckOutbox(ctx, c.ID, want[len(want)-1].Seq); err != nil {
				t.Fatal(err)
			}
			wantOutbox(t, s, c.ID, nil, "after acknowledging the notices")
			// Later updates of the deleted connection leave it closed.
			c.Health.Failures++
			if err := s.UpdateConnection(ctx, c); err != nil {
				t.Fatal(err)
			}
			_, err = s.AppendOutbox(ctx, c.ID, []byte("later"), base)
			wantCode(t, err, tether.CodeNotConnected)
			wantOutbox(t, s, c.ID, nil, "after updating the deleted connection")
		})
	}
	t.Run("created deleted", func(t *testing.T) {
		s := newStore(t)
		c := NewConnection(1)
		c.Status = tether.StatusDeleted
		mustCreate(t, s, c)
		_, err := s.AppendOutbox(ctx, c.ID, []byte("x"), base)
		wantCode(t, err, tether.CodeNotConnected)
	})
}

// testDeleteRacesAppend: appends racing a deletion either come before it
// (and go with the other data messages) or are refused. None is left
// behind it: for stores shared by processes, no orphan rows.
func testDeleteRacesAppend(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	const appenders, rounds = 20, 6
	for r := range rounds {
		notify := r%2 == 0
		c := NewConnection(r + 1)
		mustCreate(t, s, c)
		var (
			mu       sync.Mutex
			appended []int64
			notice   int64
			deleted  atomic.Bool
		)
		errs := race(appenders+1, func(i int) error {
			if i == appenders {
				defer deleted.Store(true)
				c.Status = tether.StatusDeleted
				if notify {
					var err error
					notice, err = s.UpdateAndNotify(ctx, c, []byte("deleted"))
					return err
				}
				return s.UpdateConnection(ctx, c)
			}
			for n := 0; ; n++ {
				after := deleted.Load() // the deletion returned before this append began
				seq, err := s.AppendOutbox(ctx, c.ID, []byte(fmt.Sprint(i, "/", n)), base)
				switch {
				case tether.ErrorCode(err) == tether.CodeNotConnected:
					return nil
				case err != nil:
					return err
				case after:
					return fmt.Errorf("an append after the deletion returned got seq %d", seq)
				}
				mu.Lock()
				appended = append(appended, seq)
				mu.Unlock()
			}
		})
		winners(t, errs, "")
		var want []tether.Message
		if notify {
			want = []tether.Message{control(notice, "deleted")}
			// Numbers run without gaps, so the notice is last of all.
			if notice != int64(len(appended))+1 {
				t.Fatalf("round %d: the deletion's notice has seq %d after %d appends", r, notice, len(appended))
			}
		}
		wantOutbox(t, s, c.ID, want, fmt.Sprintf("round %d (%d appended)", r, len(appended)))
	}
}

// testKeyChangeFields: the fields of a key change and of the peer's own
// status round-trip through Create, Update and Get, set and cleared.
func testKeyChangeFields(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	c := NewConnection(1)
	c.RemotePreviousKey, c.PendingKeyID, c.RemoteStatus = nil, "", ""
	mustCreate(t, s, c)
	wantStored(t, s, c, "created without them")

	c.RemotePreviousKey = ed25519.NewKeyFromSeed(append(make([]byte, 31), 7)).Public().(ed25519.PublicKey)
	c.PendingKeyID = "CCCCCCCCCCCCCCCC"
	c.RemoteStatus = tether.StatusPaused
	c.NoticeSeq = 12
	if err := s.UpdateConnection(ctx, c); err != nil {
		t.Fatal(err)
	}
	wantStored(t, s, c, "set by an update")
	got, err := s.GetConnection(ctx, c.ID)
	if err != nil {
		t.Fatal(err)
	}
	clone := got.Clone()
	clone.RemotePreviousKey[0] ^= 0xff
	if !got.RemotePreviousKey.Equal(c.RemotePreviousKey) {
		t.Fatal("Clone shares RemotePreviousKey")
	}

	c.RemotePreviousKey, c.PendingKeyID, c.RemoteStatus = nil, "", tether.StatusActive
	if err := s.UpdateConnection(ctx, c); err != nil {
		t.Fatal(err)
	}
	wantStored(t, s, c, "cleared by an update")

	bad := NewConnection(2)
	bad.RemoteStatus = "frozen"
	wantCode(t, s.CreateConnection(ctx, bad), tether.CodeInvalid)
	bad = NewConnection(2)
	bad.NoticeSeq = -1
	wantCode(t, s.CreateConnection(ctx, bad), tether.CodeInvalid)
}

func testInbox(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	mustCreate(t, s, NewConnection(1))
	if c, err := s.InboxCursor(ctx, ConnID(1)); err != nil || c != 0 {
		t.Fatalf("fresh cursor %d, %v", c, err)
	}
	if err := s.AdvanceInbox(ctx, ConnID(1), 0, 1); err != nil {
		t.Fatal(err)
	}
	wantCode(t, s.AdvanceInbox(ctx, ConnID(1), 0, 2), tether.CodeConflict)
	wantCode(t, s.AdvanceInbox(ctx, ConnID(1), 1, 1), tether.CodeInvalid)
	wantCode(t, s.AdvanceInbox(ctx, ConnID(1), 1, 0), tether.CodeInvalid)
	if err := s.AdvanceInbox(ctx, ConnID(1), 1, 5); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.InboxCursor(ctx, ConnID(1)); c != 5 {
		t.Fatalf("cursor %d, want 5", c)
	}
	errs := race(20, func(int) error { return s.AdvanceInbox(ctx, ConnID(1), 5, 6) })
	if won := winners(t, errs, tether.CodeConflict); len(won) != 1 {
		t.Fatalf("%d concurrent advances from 5 succeeded, want 1", len(won))
	}
	mustCreate(t, s, NewConnection(2))
	if c, _ := s.InboxCursor(ctx, ConnID(2)); c != 0 {
		t.Fatalf("another connection's cursor is %d", c)
	}
	_, err := s.InboxCursor(ctx, ConnID(3))
	wantCode(t, err, tether.CodeNotFound)
	wantCode(t, s.AdvanceInbox(ctx, ConnID(3), 0, 1), tether.CodeNotFound)
}

func testLease(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	take := func(name, holder string, now time.Time) bool {
		t.Helper()
		ok, err := s.Lease(ctx, name, holder, now, now.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	if !take("outbox/a", "r1", base) {
		t.Fatal("a free lease was refused")
	}
	if take("outbox/a", "r2", base.Add(30*time.Second)) {
		t.Fatal("a held lease was given to another holder")
	}
	if !take("outbox/a", "r1", base.Add(30*time.Second)) {
		t.Fatal("the holder could not renew")
	}
	if !take("outbox/b", "r2", base) {
		t.Fatal("leases of different names interfere")
	}
	// r1's renewed lease runs to base+90s; after it, r2 may take it.
	if take("outbox/a", "r2", base.Add(89*time.Second)) {
		t.Fatal("a renewed lease was lost before its end")
	}
	if !take("outbox/a", "r2", base.Add(91*time.Second)) {
		t.Fatal("an expired lease was not handed over")
	}
	if err := s.Release(ctx, "outbox/a", "r1"); err != nil { // not r1's any more
		t.Fatal(err)
	}
	if take("outbox/a", "r3", base.Add(92*time.Second)) {
		t.Fatal("a release by a former holder freed the lease")
	}
	if err := s.Release(ctx, "outbox/a", "r2"); err != nil {
		t.Fatal(err)
	}
	if !take("outbox/a", "r3", base.Add(92*time.Second)) {
		t.Fatal("a released lease was not free")
	}
	// Of many contenders at once, one gets it.
	errs := race(20, func(i int) error {
		ok, err := s.Lease(ctx, "outbox/c", fmt.Sprint("r", i), base, base.Add(time.Minute))
		if err == nil && !ok {
			return &tether.Error{Code: tether.CodeConflict}
		}
		return err
	})
	if won := winners(t, errs, tether.CodeConflict); len(won) != 1 {
		t.Fatalf("%d contenders got one lease", len(won))
	}
}

// testAtomicInbox runs for Stores that implement tether.AtomicInbox.
func testAtomicInbox(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	ai, ok := s.(tether.AtomicInbox)
	if !ok {
		return // optional: nothing to test
	}
	mustCreate(t, s, NewConnection(1))
	msgs := []tether.Message{{ConnectionID: ConnID(1), Seq: 1}, {ConnectionID: ConnID(1), Seq: 2}, {ConnectionID: ConnID(1), Seq: 3}}
	var got []int64
	boom := errors.New("receiver failed")
	cursor, err := ai.DeliverInbox(ctx, ConnID(1), 0, msgs, func(_ context.Context, m tether.Message) error {
		if m.Seq == 3 {
			return boom
		}
		got = append(got, m.Seq)
		return nil
	})
	if !errors.Is(err, boom) || cursor != 2 || len(got) != 2 {
		t.Fatalf("DeliverInbox = %d, %v after %v; want 2, the receiver's error, [1 2]", cursor, err, got)
	}
	if c, _ := s.InboxCursor(ctx, ConnID(1)); c != 2 {
		t.Fatalf("stored cursor %d, want 2", c)
	}
	called := false
	_, err = ai.DeliverInbox(ctx, ConnID(1), 0, msgs, func(context.Context, tether.Message) error { called = true; return nil })
	wantCode(t, err, tether.CodeConflict)
	if called {
		t.Fatal("fn ran although the cursor was elsewhere")
	}
	cursor, err = ai.DeliverInbox(ctx, ConnID(1), 2, msgs[2:], func(context.Context, tether.Message) error { return nil })
	if err != nil || cursor != 3 {
		t.Fatalf("resuming: %d, %v", cursor, err)
	}
	_, err = ai.DeliverInbox(ctx, ConnID(9), 0, msgs, func(context.Context, tether.Message) error { return nil })
	wantCode(t, err, tether.CodeNotFound)
	// Concurrent deliveries of the same messages: each is handed over once.
	mustCreate(t, s, NewConnection(2))
	var mu sync.Mutex
	handed := map[int64]int{}
	batch := []tether.Message{{ConnectionID: ConnID(2), Seq: 1}, {ConnectionID: ConnID(2), Seq: 2}}
	errs := race(10, func(int) error {
		_, err := ai.DeliverInbox(ctx, ConnID(2), 0, batch, func(_ context.Context, m tether.Message) error {
			mu.Lock()
			handed[m.Seq]++
			mu.Unlock()
			return nil
		})
		return err
	})
	winners(t, errs, tether.CodeConflict)
	if handed[1] != 1 || handed[2] != 1 {
		t.Fatalf("messages handed over %v times, want once each", handed)
	}
}

// testNonces runs for Stores that implement tether.NonceStore.
func testNonces(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	ns, ok := newStore(t).(tether.NonceStore)
	if !ok {
		return // optional: nothing to test
	}
	now := time.Now()
	if fresh, err := ns.RememberNonce(ctx, "inst_a/n1", now, now.Add(time.Minute)); err != nil || !fresh {
		t.Fatalf("a new nonce: %v, %v", fresh, err)
	}
	if fresh, err := ns.RememberNonce(ctx, "inst_a/n1", now, now.Add(time.Minute)); err != nil || fresh {
		t.Fatalf("a repeated nonce: %v, %v", fresh, err)
	}
	if fresh, _ := ns.RememberNonce(ctx, "inst_b/n1", now, now.Add(time.Minute)); !fresh {
		t.Fatal("nonces of different issuers collided")
	}
	errs := race(20, func(int) error {
		fresh, err := ns.RememberNonce(ctx, "inst_a/n2", now, now.Add(time.Minute))
		if err == nil && !fresh {
			return &tether.Error{Code: tether.CodeConflict}
		}
		return err
	})
	if won := winners(t, errs, tether.CodeConflict); len(won) != 1 {
		t.Fatalf("%d concurrent callers saw one nonce as new", len(won))
	}
}

// NewOrg returns a valid active org connection of owner linked to the org
// externalID.
func NewOrg(i int, owner, externalID string) *tether.Connection {
	return &tether.Connection{
		ID: ConnID(i), Kind: tether.KindOrg, Owner: owner, Name: fmt.Sprintf("Org %d", i),
		Status: tether.StatusActive, ExternalID: externalID, CreatedAt: base, UpdatedAt: base,
	}
}

// testOneOrgPerTeam: an org connection's ExternalID is refused while
// another connection that is not deleted has it, whoever owns it.
func testOneOrgPerTeam(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	const org = "00D000000000001EAA"
	first := NewOrg(1, "team-a", org)
	mustCreate(t, s, first, ev(tether.EventCreated, "first"))

	// Another team, or the same one, cannot connect that org again.
	for i, owner := range []string{"team-b", "team-a"} {
		second := NewOrg(2+i, owner, org)
		wantCode(t, s.CreateConnection(ctx, second, ev(tether.EventCreated, "second")), tether.CodeOrgTaken)
		_, err := s.GetConnection(ctx, second.ID)
		wantCode(t, err, tether.CodeNotFound)
	}

	// Unaffected: other orgs, org connections without an ExternalID, peer
	// connections whatever their ExternalID, and the holder's own updates.
	mustCreate(t, s, NewOrg(4, "team-b", "00D000000000002EAA"))
	mustCreate(t, s, NewOrg(5, "team-b", ""))
	mustCreate(t, s, NewOrg(6, "team-c", ""))
	for i := 7; i <= 8; i++ {
		peer := NewConnection(i)
		peer.ExternalID = org
		mustCreate(t, s, peer)
	}
	first.Name = "Renamed"
	if err := s.UpdateConnection(ctx, first); err != nil {
		t.Fatalf("the org's holder updating itself: %v", err)
	}

	// An update that takes an org held by another is refused and changes
	// nothing.
	other, err := s.GetConnection(ctx, ConnID(4))
	if err != nil {
		t.Fatal(err)
	}
	want := other.Clone()
	other.ExternalID = org
	wantCode(t, s.UpdateConnection(ctx, other, ev(tether.EventUpdated, "take")), tether.CodeOrgTaken)
	wantStored(t, s, want, "after a refused update")
	wantCode(t, s.UpdateConnection(ctx, other.Clone()), tether.CodeOrgTaken)
	noEvents(t, s, other.ID)
	empty, err := s.GetConnection(ctx, ConnID(5))
	if err != nil {
		t.Fatal(err)
	}
	empty.ExternalID = org
	_, err = s.UpdateAndNotify(ctx, empty, []byte("notice"))
	wantCode(t, err, tether.CodeOrgTaken)
	wantOutbox(t, s, empty.ID, nil, "after a refused UpdateAndNotify")

	// Deleting the holder frees the org: the team may connect it again,
	// and so may another.
	first.Status = tether.StatusDeleted
	if err := s.UpdateConnection(ctx, first); err != nil {
		t.Fatal(err)
	}
	again := NewOrg(9, "team-b", org)
	mustCreate(t, s, again)
	// Now it is taken again, by the new connection.
	wantCode(t, s.CreateConnection(ctx, NewOrg(10, "team-a", org)), tether.CodeOrgTaken)
	// A connection that moves to another org frees the first.
	again.ExternalID = "00D000000000003EAA"
	if err := s.UpdateConnection(ctx, again); err != nil {
		t.Fatal(err)
	}
	if err := s.UpdateConnection(ctx, other); err != nil {
		t.Fatalf("taking an org its holder left: %v", err)
	}
}

func noEvents(t testing.TB, s tether.Store, id string) {
	t.Helper()
	evs, err := s.ListEvents(context.Background(), id, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 0 {
		t.Fatalf("a refused write appended events: %+v", evs)
	}
}

// testOneOrgPerTeamConsume: ConsumeInvitation creating or updating a
// connection is held to one org per team too, and a refusal leaves the
// invitation unused.
func testOneOrgPerTeamConsume(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	const org = "00D000000000001EAA"
	mustCreate(t, s, NewOrg(1, "team-a", org))
	exp := base.Add(time.Hour)
	wantCode(t, s.ConsumeInvitation(ctx, "inv-1", exp, NewOrg(2, "team-b", org)), tether.CodeOrgTaken)
	if _, err := s.GetConnection(ctx, ConnID(2)); tether.ErrorCode(err) != tether.CodeNotFound {
		t.Fatalf("a refused ConsumeInvitation created the connection (err %v)", err)
	}
	pending := NewOrg(3, "team-b", "")
	pending.Status = tether.StatusPending
	mustCreate(t, s, pending)
	pending.Status, pending.ExternalID = tether.StatusActive, org
	wantCode(t, s.ConsumeInvitation(ctx, "inv-1", exp, pending), tether.CodeOrgTaken)
	// The key was not recorded: it still works.
	pending.ExternalID = "00D000000000002EAA"
	if err := s.ConsumeInvitation(ctx, "inv-1", exp, pending); err != nil {
		t.Fatalf("ConsumeInvitation after refusals with its key: %v", err)
	}
}

// testOneOrgPerTeamConcurrent: of concurrent creators of connections to
// one org, one wins. For stores shared by processes this runs across
// database connections.
func testOneOrgPerTeamConcurrent(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	const n = 20
	errs := race(n, func(i int) error {
		return s.CreateConnection(ctx, NewOrg(i+1, fmt.Sprintf("team-%d", i), "00D000000000001EAA"), ev(tether.EventCreated, "race"))
	})
	if won := winners(t, errs, tether.CodeOrgTaken); len(won) != 1 {
		t.Fatalf("%d of %d concurrent creators connected one org, want exactly 1", len(won), n)
	}
	conns, _, err := s.ListConnections(ctx, tether.ListOptions{Kind: tether.KindOrg, Limit: tether.MaxPageSize})
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 1 {
		t.Fatalf("%d org connections stored, want 1", len(conns))
	}
	// Concurrent updates of other connections to that org all fail.
	var others []*tether.Connection
	for i := range n {
		c := NewOrg(100+i, "team-x", fmt.Sprintf("00D%015dEAA", i+2))
		mustCreate(t, s, c)
		others = append(others, c)
	}
	taken := conns[0].ExternalID
	errs = race(n, func(i int) error {
		c := others[i].Clone()
		c.ExternalID = taken
		return s.UpdateConnection(ctx, c)
	})
	if won := winners(t, errs, tether.CodeOrgTaken); len(won) != 0 {
		t.Fatalf("%d updates took an org held by another connection", len(won))
	}
	// With the holder deleted, of concurrent updates to that org one wins.
	holder := conns[0]
	holder.Status = tether.StatusDeleted
	if err := s.UpdateConnection(ctx, holder); err != nil {
		t.Fatal(err)
	}
	errs = race(n, func(i int) error {
		c := others[i].Clone()
		c.ExternalID = taken
		return s.UpdateConnection(ctx, c)
	})
	if won := winners(t, errs, tether.CodeOrgTaken); len(won) != 1 {
		t.Fatalf("%d of %d concurrent updates took a free org, want exactly 1", len(won), n)
	}
}

// testOAuthState runs for Stores that implement tether.OAuthStore.
func testOAuthState(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	oa, ok := newStore(t).(tether.OAuthStore)
	if !ok {
		return // optional: nothing to test
	}
	now := base
	data := []byte("pkce-verifier-and-redirect")
	if err := oa.PutOAuthState(ctx, "state-1", data, now.Add(10*time.Minute)); err != nil {
		t.Fatal(err)
	}
	data[0] = 'X' // the store kept a copy
	wantCode(t, oa.PutOAuthState(ctx, "state-1", []byte("other"), now.Add(time.Hour)), tether.CodeAlreadyExists)
	got, err := oa.TakeOAuthState(ctx, "state-1", now.Add(time.Minute))
	if err != nil || string(got) != "pkce-verifier-and-redirect" {
		t.Fatalf("TakeOAuthState = %q, %v", got, err)
	}
	_, err = oa.TakeOAuthState(ctx, "state-1", now.Add(time.Minute))
	wantCode(t, err, tether.CodeNotFound)
	_, err = oa.TakeOAuthState(ctx, "never-put", now)
	wantCode(t, err, tether.CodeNotFound)

	// Usable until its expiry, not after; an expired state is removed.
	exp := now.Add(10 * time.Minute)
	for _, k := range []string{"at-expiry", "expired"} {
		if err := oa.PutOAuthState(ctx, k, []byte(k), exp); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := oa.TakeOAuthState(ctx, "at-expiry", exp); err != nil || string(got) != "at-expiry" {
		t.Fatalf("TakeOAuthState at its expiry = %q, %v", got, err)
	}
	_, err = oa.TakeOAuthState(ctx, "expired", exp.Add(time.Millisecond))
	wantCode(t, err, tether.CodeNotFound)
	_, err = oa.TakeOAuthState(ctx, "expired", now)
	wantCode(t, err, tether.CodeNotFound)
	if err := oa.PutOAuthState(ctx, "expired", []byte("again"), exp); err != nil {
		t.Fatalf("an expired state taken is removed; putting its key again: %v", err)
	}

	// Keys are 1 to MaxOAuthStateKeyLen bytes.
	long := strings.Repeat("k", tether.MaxOAuthStateKeyLen)
	if err := oa.PutOAuthState(ctx, long, nil, exp); err != nil {
		t.Fatalf("a key of %d bytes: %v", len(long), err)
	}
	wantCode(t, oa.PutOAuthState(ctx, long+"k", nil, exp), tether.CodeInvalid)
	wantCode(t, oa.PutOAuthState(ctx, "", nil, exp), tether.CodeInvalid)
	if got, err := oa.TakeOAuthState(ctx, long, now); err != nil || len(got) != 0 {
		t.Fatalf("TakeOAuthState of empty data = %q, %v", got, err)
	}
}

func testOAuthStateConcurrentTake(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	oa, ok := newStore(t).(tether.OAuthStore)
	if !ok {
		return // optional: nothing to test
	}
	if err := oa.PutOAuthState(ctx, "state-1", []byte("verifier"), base.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	const n = 20
	errs := race(n, func(int) error {
		got, err := oa.TakeOAuthState(ctx, "state-1", base)
		if err == nil && string(got) != "verifier" {
			return fmt.Errorf("took %q", got)
		}
		return err
	})
	if won := winners(t, errs, tether.CodeNotFound); len(won) != 1 {
		t.Fatalf("%d of %d concurrent takers got one state, want exactly 1", len(won), n)
	}
}

// testOAuthToken runs for Stores that implement tether.OAuthStore.
func testOAuthToken(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	oa, ok := s.(tether.OAuthStore)
	if !ok {
		return // optional: nothing to test
	}
	_, err := oa.SaveOAuthToken(ctx, ConnID(1), []byte("token"), 0)
	wantCode(t, err, tether.CodeNotFound)
	c := NewOrg(1, "team-a", "00D000000000001EAA")
	mustCreate(t, s, c)
	_, _, err = oa.LoadOAuthToken(ctx, c.ID)
	wantCode(t, err, tether.CodeNotFound)
	_, err = oa.SaveOAuthToken(ctx, c.ID, []byte("token"), 1)
	wantCode(t, err, tether.CodeConflict)

	data := []byte("access+refresh v1")
	v, err := oa.SaveOAuthToken(ctx, c.ID, data, 0)
	if err != nil || v != 1 {
		t.Fatalf("first SaveOAuthToken = %d, %v; want 1", v, err)
	}
	data[0] = 'X' // the store kept a copy
	wantToken := func(what, want string, wantVersion int64) {
		t.Helper()
		got, v, err := oa.LoadOAuthToken(ctx, c.ID)
		if err != nil || string(got) != want || v != wantVersion {
			t.Fatalf("%s: LoadOAuthToken = %q, %d, %v; want %q, %d", what, got, v, err, want, wantVersion)
		}
		got[0] = 'Y' // the store returned a copy
	}
	wantToken("after the first save", "access+refresh v1", 1)
	wantToken("after changing what was loaded", "access+refresh v1", 1)

	for _, stale := range []int64{0, 2, -1} {
		_, err = oa.SaveOAuthToken(ctx, c.ID, []byte("stale"), stale)
		wantCode(t, err, tether.CodeConflict)
	}
	wantToken("after stale saves", "access+refresh v1", 1)
	if v, err = oa.SaveOAuthToken(ctx, c.ID, []byte("access+refresh v2"), 1); err != nil || v != 2 {
		t.Fatalf("SaveOAuthToken at version 1 = %d, %v; want 2", v, err)
	}
	wantToken("after the second save", "access+refresh v2", 2)

	// Another connection's token is its own.
	d := NewOrg(2, "team-b", "00D000000000002EAA")
	mustCreate(t, s, d)
	if v, err := oa.SaveOAuthToken(ctx, d.ID, []byte("other"), 0); err != nil || v != 1 {
		t.Fatalf("SaveOAuthToken of another connection = %d, %v", v, err)
	}

	if err := oa.DeleteOAuthToken(ctx, c.ID); err != nil {
		t.Fatal(err)
	}
	_, _, err = oa.LoadOAuthToken(ctx, c.ID)
	wantCode(t, err, tether.CodeNotFound)
	if err := oa.DeleteOAuthToken(ctx, c.ID); err != nil {
		t.Fatalf("deleting a deleted token: %v", err)
	}
	if err := oa.DeleteOAuthToken(ctx, ConnID(99)); err != nil {
		t.Fatalf("deleting the token of an unknown connection: %v", err)
	}
	if got, v, err := oa.LoadOAuthToken(ctx, d.ID); err != nil || string(got) != "other" || v != 1 {
		t.Fatalf("the other connection's token after a delete: %q, %d, %v", got, v, err)
	}
	// After a delete, version 0 stores afresh.
	if v, err = oa.SaveOAuthToken(ctx, c.ID, []byte("fresh"), 0); err != nil || v != 1 {
		t.Fatalf("SaveOAuthToken after a delete = %d, %v; want 1", v, err)
	}
	wantToken("after saving afresh", "fresh", 1)
}

func testOAuthTokenConcurrentSave(t *testing.T, newStore NewStore) {
	ctx := context.Background()
	s := newStore(t)
	oa, ok := s.(tether.OAuthStore)
	if !ok {
		return // optional: nothing to test
	}
	c := NewOrg(1, "team-a", "00D000000000001EAA")
	mustCreate(t, s, c)
	const n = 20
	for _, version := range []int64{0, 1} {
		errs := race(n, func(i int) error {
			_, err := oa.SaveOAuthToken(ctx, c.ID, []byte(fmt.Sprint("token ", version, "/", i)), version)
			return err
		})
		won := winners(t, errs, tether.CodeConflict)
		if len(won) != 1 {
			t.Fatalf("from version %d: %d of %d concurrent saves won, want exactly 1", version, len(won), n)
		}
		got, v, err := oa.LoadOAuthToken(ctx, c.ID)
		if want := fmt.Sprint("token ", version, "/", won[0]); err != nil || string(got) != want || v != version+1 {
			t.Fatalf("from version %d: stored %q, %d, %v; want the winner's %q, %d", version, got, v, err, want, version+1)
		}
	}
}
