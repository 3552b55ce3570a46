package otelmetric_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/otelmetric"
	"github.com/tetherkit/tether/tethertest"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// wait bounds how long a test waits for the nodes to get somewhere.
const wait = 20 * time.Second

// node is a Node running on memstore, with its own MeterProvider read by
// a ManualReader.
type node struct {
	*tether.Node
	reader *sdkmetric.ManualReader
	recv   *receiver
}

// receiver takes messages, or refuses them all while refuse is set.
type receiver struct {
	refuse atomic.Bool
	mu     sync.Mutex
	got    []string
}

func (r *receiver) Receive(_ context.Context, m tether.Message) error {
	if r.refuse.Load() {
		return errors.New("not now")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got = append(r.got, string(m.Payload))
	return nil
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// open opens a node named name on net, public when endpoint is set, and
// runs it until the test ends.
func open(t *testing.T, net *tethertest.Network, name, endpoint string) *node {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	m, err := otelmetric.New(mp)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	recv := &receiver{}
	n, err := tether.Open(context.Background(), tether.Config{
		Store: memstore.New(), Transport: net.Transport(name), Endpoint: endpoint,
		Receiver: recv, Metrics: m,
		RetryBase: 5 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		PollWait: time.Second, HandshakeInterval: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("Open %s: %v", name, err)
	}
	if endpoint != "" {
		t.Cleanup(net.Listen(endpoint, n))
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run %s: %v", name, err)
		}
	})
	return &node{Node: n, reader: reader, recv: recv}
}

// collect returns what n's instruments hold now.
func (n *node) collect(t testing.TB) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := n.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("Collect: %v", err)
	}
	return rm
}

// find returns the instrument called name, or nil.
func find(rm metricdata.ResourceMetrics, name string) *metricdata.Metrics {
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name != otelmetric.ScopeName {
			continue
		}
		for i := range sm.Metrics {
			if sm.Metrics[i].Name == name {
				return &sm.Metrics[i]
			}
		}
	}
	return nil
}

// has reports whether set holds every attribute of want.
func has(set attribute.Set, want []attribute.KeyValue) bool {
	for _, kv := range want {
		if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
			return false
		}
	}
	return true
}

// sum returns the sum of instrument name's points with attributes want.
func (n *node) sum(t testing.TB, name string, want ...attribute.KeyValue) int64 {
	t.Helper()
	m := find(n.collect(t), name)
	if m == nil {
		return 0
	}
	s, ok := m.Data.(metricdata.Sum[int64])
	if !ok {
		t.Fatalf("%s is a %T, not an int64 sum", name, m.Data)
	}
	var total int64
	for _, p := range s.DataPoints {
		if has(p.Attributes, want) {
			total += p.Value
		}
	}
	return total
}

// samples returns how many values histogram name recorded with attributes
// want, and their sum.
func (n *node) samples(t testing.TB, name string, want ...attribute.KeyValue) (uint64, float64) {
	t.Helper()
	m := find(n.collect(t), name)
	if m == nil {
		return 0, 0
	}
	h, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("%s is a %T, not a float64 histogram", name, m.Data)
	}
	var count uint64
	var total float64
	for _, p := range h.DataPoints {
		if has(p.Attributes, want) {
			count += p.Count
			total += p.Sum
		}
	}
	return count, total
}

func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out (%v) waiting until %s", wait, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var (
	push     = otelmetric.AttrDirection.String(string(tether.DirectionPush))
	poll     = otelmetric.AttrDirection.String(string(tether.DirectionPoll))
	ok       = otelmetric.AttrOutcome.String(string(tether.OutcomeOK))
	acceptor = otelmetric.AttrRole.String(string(tether.RoleAcceptor))
	initiat  = otelmetric.AttrRole.String(string(tether.RoleInitiator))
)

// A public node and a private one, connected, exchange messages both ways:
// each counts what it sent, what was delivered, how long it took, what it
// sent again and what waited, and the public one counts the long-polls it
// holds.
func TestTwoNodes(t *testing.T) {
	ctx := context.Background()
	net := tethertest.NewNetwork()
	t.Cleanup(net.Close)
	const endpoint = "https://hub.example"
	hub := open(t, net, "hub", endpoint)
	agent := open(t, net, "agent", "") // private: it long-polls hub

	// The handshake: hub initiates for a private partner, agent accepts.
	hc, code, err := hub.Initiate(ctx, tether.InitiateRequest{
		Mode: tether.ModeBasic, LocalName: "Hub", RemoteName: "Agent", Name: "Hub to Agent",
	})
	if err != nil {
		t.Fatalf("Initiate: %v", err)
	}
	ac, err := agent.Accept(ctx, code, tether.AcceptOptions{})
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if got := hub.sum(t, otelmetric.Handshakes, initiat, ok); got != 1 {
		t.Errorf("hub: %s{initiator, ok} = %d, want 1", otelmetric.Handshakes, got)
	}
	if got := agent.sum(t, otelmetric.Handshakes, acceptor, ok); got != 1 {
		t.Errorf("agent: %s{acceptor, ok} = %d, want 1", otelmetric.Handshakes, got)
	}

	// Idle, agent's poll waits at hub.
	eventually(t, "hub holds agent's long-poll", func() bool {
		return hub.sum(t, otelmetric.PollsHeld) == 1
	})

	// hub -> agent travels on agent's polls. agent refuses at first: hub
	// serves the messages again on each poll, and they wait.
	agent.recv.refuse.Store(true)
	for i := range 3 {
		if _, err := hub.Send(ctx, hc.ID, fmt.Appendf(nil, "down-%d", i)); err != nil {
			t.Fatalf("hub Send: %v", err)
		}
	}
	if got := hub.sum(t, otelmetric.MessagesSent, poll); got != 3 {
		t.Errorf("hub: %s{poll} = %d, want 3", otelmetric.MessagesSent, got)
	}
	eventually(t, "hub serves the refused messages again", func() bool {
		return hub.sum(t, otelmetric.MessagesRetried, poll) >= 3
	})
	if got := hub.sum(t, otelmetric.MessagesQueued, poll); got != 3 {
		t.Errorf("hub: %s{poll} = %d while agent refuses, want 3", otelmetric.MessagesQueued, got)
	}
	if got := hub.sum(t, otelmetric.MessagesDelivered, poll); got != 0 {
		t.Errorf("hub: %s{poll} = %d while agent refuses, want 0", otelmetric.MessagesDelivered, got)
	}
	agent.recv.refuse.Store(false)
	eventually(t, "agent's polls acknowledge the messages", func() bool {
		return hub.sum(t, otelmetric.MessagesDelivered, poll) == 3
	})
	if agent.recv.count() != 3 {
		t.Errorf("agent received %d messages, want 3", agent.recv.count())
	}
	if n, sum := hub.samples(t, otelmetric.DeliveryDuration, poll); n != 3 || sum <= 0 {
		t.Errorf("hub: %s{poll} has %d samples summing to %gs, want 3 above 0", otelmetric.DeliveryDuration, n, sum)
	}
	eventually(t, "nothing waits at hub", func() bool {
		return hub.sum(t, otelmetric.MessagesQueued, poll) == 0
	})
	eventually(t, "hub holds agent's next long-poll", func() bool {
		return hub.sum(t, otelmetric.PollsHeld) == 1
	})

	// agent -> hub is pushed. Cut off, agent's pushes fail: the messages
	// wait, and are pushed again.
	net.Partition("agent", endpoint)
	for i := range 2 {
		if _, err := agent.Send(ctx, ac.ID, fmt.Appendf(nil, "up-%d", i)); err != nil {
			t.Fatalf("agent Send: %v", err)
		}
	}
	if got := agent.sum(t, otelmetric.MessagesSent, push); got != 2 {
		t.Errorf("agent: %s{push} = %d, want 2", otelmetric.MessagesSent, got)
	}
	eventually(t, "agent pushes the messages again", func() bool {
		return agent.sum(t, otelmetric.MessagesRetried, push) >= 2
	})
	if got := agent.sum(t, otelmetric.MessagesQueued, push); got != 2 {
		t.Errorf("agent: %s{push} = %d while cut off, want 2", otelmetric.MessagesQueued, got)
	}
	eventually(t, "hub's held poll for the cut-off agent ends", func() bool {
		return hub.sum(t, otelmetric.PollsHeld) == 0
	})
	net.Heal()
	eventually(t, "hub acknowledges agent's pushes", func() bool {
		return agent.sum(t, otelmetric.MessagesDelivered, push) == 2
	})
	if n, sum := agent.samples(t, otelmetric.DeliveryDuration, push); n != 2 || sum <= 0 {
		t.Errorf("agent: %s{push} has %d samples summing to %gs, want 2 above 0", otelmetric.DeliveryDuration, n, sum)
	}
	eventually(t, "nothing waits at agent", func() bool {
		return agent.sum(t, otelmetric.MessagesQueued, push) == 0
	})

	// A key rotation: hub announces its new key, agent applies it, and
	// hub signs with it once agent acknowledged.
	if err := hub.RotateKey(ctx, 0); err != nil {
		t.Fatalf("RotateKey: %v", err)
	}
	eventually(t, "agent applies hub's new key", func() bool {
		return agent.sum(t, otelmetric.Refreshes, otelmetric.AttrRefreshKind.String(tether.RefreshPeerKey), ok) == 1
	})
	eventually(t, "hub's new key takes effect", func() bool {
		return hub.sum(t, otelmetric.Refreshes, otelmetric.AttrRefreshKind.String(tether.RefreshKey), ok) == 1
	})

	// Each direction is counted by its sender only.
	if got := hub.sum(t, otelmetric.MessagesSent, push) + agent.sum(t, otelmetric.MessagesSent, poll); got != 0 {
		t.Errorf("messages counted in the other direction: %d", got)
	}

	// The Store calls on the message path are timed.
	for _, c := range []struct {
		n  *node
		op string
	}{
		{hub, tether.StoreAppendOutbox}, {hub, tether.StoreListOutbox}, {hub, tether.StoreAckOutbox},
		{hub, tether.StoreCreateConnection}, {hub, tether.StoreConsumeInvitation},
		{agent, tether.StoreAppendOutbox}, {agent, tether.StoreListOutbox}, {agent, tether.StoreAckOutbox},
		{agent, tether.StoreLease}, {agent, tether.StoreInboxCursor}, {agent, tether.StoreAdvanceInbox},
	} {
		who := "hub"
		if c.n == agent {
			who = "agent"
		}
		if n, _ := c.n.samples(t, otelmetric.StoreDuration, otelmetric.AttrStoreOp.String(c.op)); n == 0 {
			t.Errorf("%s: no %s sample for %s", who, otelmetric.StoreDuration, c.op)
		}
	}
}

// Every instrument is created with its unit, and the histograms are
// histograms.
func TestInstruments(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	m, err := otelmetric.New(mp)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m.MessagesSent(ctx, tether.DirectionPush, 1)
	m.MessageDelivered(ctx, tether.DirectionPush, time.Second)
	m.MessagesRetried(ctx, tether.DirectionPoll, 2)
	m.MessagesQueued(ctx, tether.DirectionPoll, 3)
	m.PollsHeld(ctx, 1)
	m.Handshake(ctx, tether.RoleAcceptor, tether.OutcomeExpired)
	m.Refresh(ctx, tether.RefreshToken, tether.OutcomeFailed)
	m.StoreCall(ctx, tether.StoreAppendOutbox, time.Millisecond, nil)
	m.StoreCall(ctx, tether.StoreAppendOutbox, time.Millisecond, &tether.Error{Code: tether.CodeUnavailable})
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, unit string
		histogram  bool
	}{
		{otelmetric.MessagesSent, "{message}", false},
		{otelmetric.MessagesDelivered, "{message}", false},
		{otelmetric.MessagesRetried, "{message}", false},
		{otelmetric.MessagesQueued, "{message}", false},
		{otelmetric.DeliveryDuration, "s", true},
		{otelmetric.PollsHeld, "{poll}", false},
		{otelmetric.Handshakes, "{handshake}", false},
		{otelmetric.Refreshes, "{refresh}", false},
		{otelmetric.StoreDuration, "s", true},
	} {
		m := find(rm, c.name)
		if m == nil {
			t.Errorf("%s: not recorded", c.name)
			continue
		}
		if m.Unit != c.unit {
			t.Errorf("%s: unit %q, want %q", c.name, m.Unit, c.unit)
		}
		if _, ok := m.Data.(metricdata.Histogram[float64]); ok != c.histogram {
			t.Errorf("%s: data %T, histogram %v", c.name, m.Data, c.histogram)
		}
	}
	store := find(rm, otelmetric.StoreDuration).Data.(metricdata.Histogram[float64])
	failed := 0
	for _, p := range store.DataPoints {
		if v, ok := p.Attributes.Value(otelmetric.AttrErrorType); ok {
			failed++
			if v.AsString() != string(tether.CodeUnavailable) {
				t.Errorf("error.type = %q, want %q", v.AsString(), tether.CodeUnavailable)
			}
		}
	}
	if failed != 1 || len(store.DataPoints) != 2 {
		t.Errorf("store points: %d, %d with error.type; want 2, 1", len(store.DataPoints), failed)
	}
	if sm := rm.ScopeMetrics; len(sm) != 1 || sm[0].Scope.Name != otelmetric.ScopeName {
		t.Errorf("scopes %+v, want one named %s", sm, otelmetric.ScopeName)
	}
}

func TestNewWithoutProvider(t *testing.T) {
	if _, err := otelmetric.New(nil); !errors.Is(err, otelmetric.ErrNoProvider) {
		t.Errorf("New(nil) = %v, want ErrNoProvider", err)
	}
}

// Recording on the hot paths allocates nothing once the instruments exist.
func TestRecordingDoesNotAllocate(t *testing.T) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	m, err := otelmetric.New(mp)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		m.MessagesSent(ctx, tether.DirectionPush, 1)
		m.MessageDelivered(ctx, tether.DirectionPoll, time.Millisecond)
		m.MessagesQueued(ctx, tether.DirectionPush, -1)
		m.PollsHeld(ctx, 1)
		m.StoreCall(ctx, tether.StoreListOutbox, time.Millisecond, nil)
	})
	if allocs != 0 {
		t.Errorf("recording allocates %v times, want 0", allocs)
	}
}
