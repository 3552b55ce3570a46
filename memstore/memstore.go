// Package memstore is a tether.Store kept in memory: for tests, examples and
// single-process hosts that need no durability. It is the reference
// implementation the conformance suite (storetest) is written against.
package memstore

import (
	"context"
	"crypto/ed25519"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/tetherkit/tether"
)

// Store is an in-memory tether.Store. The zero value is not usable: call New.
type Store struct {
	mu       sync.RWMutex
	instance *tether.Instance
	conns    map[string]*tether.Connection
	ids      []string // sorted connection IDs
	events   map[string][]tether.Event
	feed     []tether.Event // every event, in ascending Seq order
	seq      int64
	used     map[string]time.Time // consumed invitation keys -> expiry
	sweep    time.Time            // next time used is swept of expired keys
	outbox   map[string]*outbox
	inbox    map[string]int64 // inbox cursors
	leases   map[string]lease
	clock    tether.Clock

	nonces     map[string]time.Time // request nonces -> when they may be forgotten
	nonceSweep time.Time            // next time nonces is swept

	oauthStates map[string]oauthState // OAuth authorization attempts by key
	stateSweep  time.Time             // next time oauthStates is swept
	oauthTokens map[string]oauthToken // OAuth tokens by connection ID
}

type oauthState struct {
	data    []byte
	expires time.Time
}

type oauthToken struct {
	data    []byte
	version int64
}

type lease struct {
	holder string
	until  time.Time
}

type outbox struct {
	last   int64            // last sequence number given out
	msgs   []tether.Message // unacknowledged, ascending Seq
	closed bool             // the connection is deleted: no more data messages
}

// add appends a message with the next sequence number and returns it.
func (ob *outbox) add(id string, payload []byte, created time.Time, control bool) int64 {
	ob.last++
	ob.msgs = append(ob.msgs, tether.Message{ConnectionID: id, Seq: ob.last, Payload: slices.Clone(payload), Created: created, Control: control})
	return ob.last
}

// close drops the data messages and refuses new ones; control messages
// stay until they are acknowledged.
func (ob *outbox) close() {
	ob.msgs = slices.DeleteFunc(ob.msgs, func(m tether.Message) bool { return !m.Control })
	ob.closed = true
}

// outboxOf returns connection id's outbox, made on first use.
func (s *Store) outboxOf(id string) *outbox {
	ob := s.outbox[id]
	if ob == nil {
		ob = &outbox{}
		s.outbox[id] = ob
	}
	return ob
}

func notConnected(op string) error {
	return &tether.Error{Code: tether.CodeNotConnected, Op: op, Message: "the connection is deleted"}
}

var (
	_ tether.Store         = (*Store)(nil)
	_ tether.NonceStore    = (*Store)(nil)
	_ tether.OAuthStore    = (*Store)(nil)
	_ tether.FeedStore     = (*Store)(nil)
	_ tether.OutboxScanner = (*Store)(nil)
)

// Option configures a Store.
type Option func(*Store)

// WithClock makes the Store read the time from clock: it forgets consumed
// invitation keys an hour after they expire by that clock. The system clock
// when not given or nil; tests pass the Node's fake clock.
func WithClock(clock tether.Clock) Option {
	return func(s *Store) {
		if clock != nil {
			s.clock = clock
		}
	}
}

// New returns an empty Store.
func New(opts ...Option) *Store {
	s := &Store{
		conns:  make(map[string]*tether.Connection),
		events: make(map[string][]tether.Event),
		used:   make(map[string]time.Time),
		outbox: make(map[string]*outbox),
		inbox:  make(map[string]int64),
		leases: make(map[string]lease),
		clock:  tether.SystemClock(),

		oauthStates: make(map[string]oauthState),
		oauthTokens: make(map[string]oauthToken),
	}
	for _, o := range opts {
		o(s)
	}
	return s
}

func cloneInstance(in *tether.Instance) *tether.Instance {
	out := *in
	out.Keys = make([]tether.InstanceKey, len(in.Keys))
	for i, k := range in.Keys {
		k.Private = append(ed25519.PrivateKey(nil), k.Private...)
		out.Keys[i] = k
	}
	return &out
}

// LoadInstance implements tether.Store.
func (s *Store) LoadInstance(ctx context.Context) (*tether.Instance, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.instance == nil {
		return nil, &tether.Error{Code: tether.CodeNotFound, Op: "memstore: load instance", Message: "no instance identity saved"}
	}
	return cloneInstance(s.instance), nil
}

// SaveInstance implements tether.Store.
func (s *Store) SaveInstance(ctx context.Context, inst *tether.Instance) error {
	const op = "memstore: save instance"
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case inst.Version == 0 && s.instance != nil:
		return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "an instance identity exists"}
	case inst.Version != 0 && s.instance == nil:
		return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no instance identity saved"}
	case inst.Version != 0 && s.instance.Version != inst.Version:
		return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "instance identity changed since it was read"}
	}
	stored := cloneInstance(inst)
	stored.Version++
	s.instance = stored
	inst.Version = stored.Version
	return nil
}

// CreateConnection implements tether.Store.
func (s *Store) CreateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.create("memstore: create connection", c, events)
}

func (s *Store) create(op string, c *tether.Connection, events []tether.Event) error {
	if err := c.Validate(); err != nil {
		return err
	}
	if _, ok := s.conns[c.ID]; ok {
		return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "a connection with this ID exists"}
	}
	if err := s.checkOrg(op, c); err != nil {
		return err
	}
	stored := c.Clone()
	stored.Version = 1
	s.conns[c.ID] = stored
	i, _ := slices.BinarySearch(s.ids, c.ID)
	s.ids = slices.Insert(s.ids, i, c.ID)
	if c.Status == tether.StatusDeleted {
		s.outboxOf(c.ID).close()
	}
	s.append(c.ID, events)
	c.Version = 1
	return nil
}

// checkOrg refuses c with CodeOrgTaken when it is an org connection, not
// deleted, whose ExternalID another connection that is not deleted has:
// one org per team.
func (s *Store) checkOrg(op string, c *tether.Connection) error {
	if c.Kind != tether.KindOrg || c.ExternalID == "" || c.Status == tether.StatusDeleted {
		return nil
	}
	for id, o := range s.conns {
		if id != c.ID && o.Kind == c.Kind && o.ExternalID == c.ExternalID && o.Status != tether.StatusDeleted {
			return &tether.Error{Code: tether.CodeOrgTaken, Op: op, Message: "the org is connected to a team already: one org per team"}
		}
	}
	return nil
}

// UpdateConnection implements tether.Store.
func (s *Store) UpdateConnection(ctx context.Context, c *tether.Connection, events ...tether.Event) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, err := s.update("memstore: update connection", c, events, nil, false)
	return err
}

// UpdateAndNotify implements tether.Store. The notice's Created is
// c.UpdatedAt. On a connection deleted before, whose outbox is closed, it
// fails with CodeNotConnected.
func (s *Store) UpdateAndNotify(ctx context.Context, c *tether.Connection, notice []byte, events ...tether.Event) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.update("memstore: update and notify", c, events, notice, true)
}

// update replaces c as UpdateConnection does. With notify it also appends
// notice to the outbox as a control message and returns its number.
func (s *Store) update(op string, c *tether.Connection, events []tether.Event, notice []byte, notify bool) (int64, error) {
	old, ok := s.conns[c.ID]
	if !ok {
		return 0, &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no such connection"}
	}
	if old.Version != c.Version {
		return 0, &tether.Error{Code: tether.CodeConflict, Op: op, Message: "connection changed since it was read"}
	}
	if err := tether.CheckUpdate(old, c); err != nil {
		return 0, err
	}
	if err := s.checkOrg(op, c); err != nil {
		return 0, err
	}
	ob := s.outboxOf(c.ID)
	if notify && ob.closed {
		return 0, notConnected(op)
	}
	stored := c.Clone()
	stored.Version++
	var seq int64
	if notify {
		seq = ob.add(c.ID, notice, c.UpdatedAt, true)
		stored.NoticeSeq = seq
	}
	if c.Status == tether.StatusDeleted && !ob.closed {
		ob.close()
	}
	s.conns[c.ID] = stored
	s.append(c.ID, events)
	c.Version = stored.Version
	if notify {
		c.NoticeSeq = seq
	}
	return seq, nil
}

// ConsumeInvitation implements tether.Store.
func (s *Store) ConsumeInvitation(ctx context.Context, key string, expires time.Time, c *tether.Connection, events ...tether.Event) error {
	const op = "memstore: consume invitation"
	if err := ctx.Err(); err != nil {
		return err
	}
	if key == "" || len(key) > tether.MaxInvitationKeyLen {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "invitation key must be 1-200 bytes"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := s.clock.Now(); now.After(s.sweep) { // forget keys well past their expiry
		for k, exp := range s.used {
			if now.After(exp.Add(time.Hour)) {
				delete(s.used, k)
			}
		}
		s.sweep = now.Add(time.Minute)
	}
	if _, ok := s.used[key]; ok {
		return &tether.Error{Code: tether.CodeAlreadyUsed, Op: op, Message: "invitation was already used"}
	}
	var err error
	if c.Version == 0 {
		err = s.create(op, c, events)
	} else {
		_, err = s.update(op, c, events, nil, false)
	}
	if err != nil {
		return err
	}
	s.used[key] = expires
	return nil
}

// GetConnection implements tether.Store.
func (s *Store) GetConnection(ctx context.Context, id string) (*tether.Connection, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	c, ok := s.conns[id]
	if !ok {
		return nil, &tether.Error{Code: tether.CodeNotFound, Op: "memstore: get connection", Message: "no such connection"}
	}
	return c.Clone(), nil
}

// ListConnections implements tether.Store.
func (s *Store) ListConnections(ctx context.Context, opts tether.ListOptions) ([]*tether.Connection, string, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	limit := opts.PageLimit()
	start := sort.SearchStrings(s.ids, opts.After)
	if start < len(s.ids) && s.ids[start] == opts.After {
		start++
	}
	var out []*tether.Connection
	for _, id := range s.ids[start:] {
		c := s.conns[id]
		if !opts.Matches(c) {
			continue
		}
		if len(out) == limit {
			return out, out[len(out)-1].ID, nil
		}
		out = append(out, c.Clone())
	}
	return out, "", nil
}

// ListEvents implements tether.Store.
func (s *Store) ListEvents(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.conns[connectionID]; !ok {
		return nil, &tether.Error{Code: tether.CodeNotFound, Op: "memstore: list events", Message: "no such connection"}
	}
	evs := s.events[connectionID]
	i := sort.Search(len(evs), func(i int) bool { return evs[i].Seq > after })
	evs = evs[i:]
	if n := tether.EventLimit(limit); len(evs) > n {
		evs = evs[:n]
	}
	return slices.Clone(evs), nil
}

// ListFeed implements tether.FeedStore. Events are appended under the
// Store's lock, so the feed is in Seq order, which is also the order in
// which they became visible; the cursor is the last Seq listed.
func (s *Store) ListFeed(ctx context.Context, opts tether.FeedOptions) ([]tether.Event, string, error) {
	const op = "memstore: list feed"
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	cur, err := tether.ParseFeedCursor(opts.After)
	if err != nil {
		return nil, "", tether.Wrap(tether.CodeInvalid, op, err)
	}
	if cur.Tx != 0 {
		return nil, "", &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the feed cursor is not one of this store: pass back a cursor the feed returned"}
	}
	limit := opts.PageLimit()
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := sort.Search(len(s.feed), func(i int) bool { return s.feed[i].Seq > cur.Seq })
	var out []tether.Event
	for _, e := range s.feed[i:] {
		if len(out) == limit {
			break
		}
		if opts.Owner != "" && s.conns[e.ConnectionID].Owner != opts.Owner {
			continue
		}
		out = append(out, e)
	}
	if len(out) > 0 {
		cur.Seq = out[len(out)-1].Seq
	}
	return out, cur.String(), nil
}

func (s *Store) append(id string, events []tether.Event) {
	for _, e := range events {
		s.seq++
		e.Seq = s.seq
		e.ConnectionID = id
		e.Detail = strings.ToValidUTF8(e.Detail, "\uFFFD")
		s.events[id] = append(s.events[id], e)
		s.feed = append(s.feed, e)
	}
}

// AppendOutbox implements tether.Store.
func (s *Store) AppendOutbox(ctx context.Context, connectionID string, payload []byte, created time.Time) (int64, error) {
	return s.appendOutbox(ctx, "memstore: append outbox", connectionID, [][]byte{payload}, created)
}

// AppendOutboxBatch implements tether.BatchAppender.
func (s *Store) AppendOutboxBatch(ctx context.Context, connectionID string, payloads [][]byte, created time.Time) (int64, error) {
	return s.appendOutbox(ctx, "memstore: append outbox batch", connectionID, payloads, created)
}

// appendOutbox stores payloads on connectionID's outbox and returns the first
// one's number.
func (s *Store) appendOutbox(ctx context.Context, op, connectionID string, payloads [][]byte, created time.Time) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[connectionID]; !ok {
		return 0, &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no such connection"}
	}
	ob := s.outboxOf(connectionID)
	if ob.closed {
		return 0, notConnected(op)
	}
	first := ob.last + 1
	for _, p := range payloads {
		ob.add(connectionID, p, created, false)
	}
	return first, nil
}

// ListOutbox implements tether.Store.
func (s *Store) ListOutbox(ctx context.Context, connectionID string, after int64, limit int) ([]tether.Message, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	ob := s.outbox[connectionID]
	if ob == nil {
		return nil, nil
	}
	i := sort.Search(len(ob.msgs), func(i int) bool { return ob.msgs[i].Seq > after })
	msgs := ob.msgs[i:]
	if n := tether.OutboxLimit(limit); len(msgs) > n {
		msgs = msgs[:n]
	}
	out := make([]tether.Message, len(msgs))
	for i, m := range msgs {
		m.Payload = slices.Clone(m.Payload)
		out[i] = m
	}
	return out, nil
}

// PendingOutboxes implements tether.OutboxScanner.
func (s *Store) PendingOutboxes(ctx context.Context, after string, limit int) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	var ids []string
	for id, ob := range s.outbox {
		if id > after && len(ob.msgs) > 0 {
			ids = append(ids, id)
		}
	}
	s.mu.RUnlock()
	slices.Sort(ids)
	if n := tether.OutboxLimit(limit); len(ids) > n {
		ids = ids[:n]
	}
	return ids, nil
}

// AckOutbox implements tether.Store.
func (s *Store) AckOutbox(ctx context.Context, connectionID string, upTo int64) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ob := s.outbox[connectionID]
	if ob == nil {
		return nil
	}
	i := sort.Search(len(ob.msgs), func(i int) bool { return ob.msgs[i].Seq > upTo })
	ob.msgs = slices.Delete(ob.msgs, 0, i)
	return nil
}

// InboxCursor implements tether.Store.
func (s *Store) InboxCursor(ctx context.Context, connectionID string) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if _, ok := s.conns[connectionID]; !ok {
		return 0, &tether.Error{Code: tether.CodeNotFound, Op: "memstore: inbox cursor", Message: "no such connection"}
	}
	return s.inbox[connectionID], nil
}

// AdvanceInbox implements tether.Store.
func (s *Store) AdvanceInbox(ctx context.Context, connectionID string, from, to int64) error {
	const op = "memstore: advance inbox"
	if err := ctx.Err(); err != nil {
		return err
	}
	if to <= from {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "the inbox cursor only moves forward"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[connectionID]; !ok {
		return &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no such connection"}
	}
	if s.inbox[connectionID] != from {
		return &tether.Error{Code: tether.CodeConflict, Op: op, Message: "inbox cursor moved since it was read"}
	}
	s.inbox[connectionID] = to
	return nil
}

// Lease implements tether.Store.
func (s *Store) Lease(ctx context.Context, name, holder string, now, until time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.leases[name]; ok && l.holder != holder && !l.until.Before(now) {
		return false, nil
	}
	s.leases[name] = lease{holder: holder, until: until}
	return true, nil
}

// Release implements tether.Store.
func (s *Store) Release(ctx context.Context, name, holder string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.leases[name].holder == holder {
		delete(s.leases, name)
	}
	return nil
}

// RememberNonce implements tether.NonceStore, so that Nodes sharing one
// Store refuse a request replayed to another of them. It holds each nonce
// until its until has passed: its memory is bounded by the requests
// accepted within a nonce's lifetime.
func (s *Store) RememberNonce(ctx context.Context, key string, now, until time.Time) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.nonces == nil {
		s.nonces = make(map[string]time.Time)
	}
	if now.After(s.nonceSweep) {
		for k, t := range s.nonces {
			if now.After(t) {
				delete(s.nonces, k)
			}
		}
		s.nonceSweep = now.Add(time.Minute)
	}
	if t, ok := s.nonces[key]; ok && !now.After(t) {
		return false, nil
	}
	s.nonces[key] = until
	return true, nil
}

// PutOAuthState implements tether.OAuthStore.
func (s *Store) PutOAuthState(ctx context.Context, key string, data []byte, expires time.Time) error {
	const op = "memstore: put oauth state"
	if err := ctx.Err(); err != nil {
		return err
	}
	if key == "" || len(key) > tether.MaxOAuthStateKeyLen {
		return &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "oauth state key must be 1-200 bytes"}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.oauthStates[key]; ok {
		return &tether.Error{Code: tether.CodeAlreadyExists, Op: op, Message: "an oauth state with this key exists"}
	}
	s.oauthStates[key] = oauthState{data: slices.Clone(data), expires: expires}
	return nil
}

// TakeOAuthState implements tether.OAuthStore. Once a minute (by now) it
// also removes the states that expired.
func (s *Store) TakeOAuthState(ctx context.Context, key string, now time.Time) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.After(s.stateSweep) {
		for k, st := range s.oauthStates {
			if st.expires.Before(now) {
				delete(s.oauthStates, k)
			}
		}
		s.stateSweep = now.Add(time.Minute)
	}
	st, ok := s.oauthStates[key]
	delete(s.oauthStates, key)
	if !ok || st.expires.Before(now) {
		return nil, &tether.Error{Code: tether.CodeNotFound, Op: "memstore: take oauth state", Message: "no such oauth state, or it expired"}
	}
	return st.data, nil // the stored copy: nothing refers to it any more
}

// LoadOAuthToken implements tether.OAuthStore.
func (s *Store) LoadOAuthToken(ctx context.Context, connectionID string) ([]byte, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	tok, ok := s.oauthTokens[connectionID]
	if !ok {
		return nil, 0, &tether.Error{Code: tether.CodeNotFound, Op: "memstore: load oauth token", Message: "no oauth token stored for this connection"}
	}
	return slices.Clone(tok.data), tok.version, nil
}

// SaveOAuthToken implements tether.OAuthStore.
func (s *Store) SaveOAuthToken(ctx context.Context, connectionID string, data []byte, version int64) (int64, error) {
	const op = "memstore: save oauth token"
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.conns[connectionID]; !ok {
		return 0, &tether.Error{Code: tether.CodeNotFound, Op: op, Message: "no such connection"}
	}
	if s.oauthTokens[connectionID].version != version {
		return 0, &tether.Error{Code: tether.CodeConflict, Op: op, Message: "oauth token changed since it was read"}
	}
	s.oauthTokens[connectionID] = oauthToken{data: slices.Clone(data), version: version + 1}
	return version + 1, nil
}

// DeleteOAuthToken implements tether.OAuthStore.
func (s *Store) DeleteOAuthToken(ctx context.Context, connectionID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.oauthTokens, connectionID)
	return nil
}
