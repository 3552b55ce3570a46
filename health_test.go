package tether_test

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/tethertest"
)

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r.Clone())
	return nil
}

func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// at returns the messages of the records at level about connection id.
func (h *logRecorder) at(level slog.Level, id string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.records {
		if r.Level != level {
			continue
		}
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "connection" && a.Value.String() == id {
				out = append(out, r.Message)
				return false
			}
			return true
		})
	}
	return out
}

// warnings returns the messages of every Warn record.
func (h *logRecorder) warnings() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for _, r := range h.records {
		if r.Level == slog.LevelWarn {
			out = append(out, r.Message)
		}
	}
	return out
}

// jumpClock is the machine's clock moved forward by what Jump added, so a
// test can make an outage last a minute without waiting for it.
type jumpClock struct{ offset atomic.Int64 }

func (c *jumpClock) Now() time.Time                         { return time.Now().Add(time.Duration(c.offset.Load())) }
func (c *jumpClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (c *jumpClock) Jump(d time.Duration)                   { c.offset.Add(int64(d)) }

// hookEvents records what a node's OnEvent hook was given.
type hookEvents struct {
	mu  sync.Mutex
	got []tether.Event
}

func (h *hookEvents) add(e tether.Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.got = append(h.got, e)
}

func (h *hookEvents) count(id string, typ tether.EventType) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := 0
	for _, e := range h.got {
		if e.ConnectionID == id && e.Type == typ {
			k++
		}
	}
	return k
}

// A partner that cannot be reached for long gives one peer_unreachable
// event and one Warn line, however many attempts fail; once it answers
// again, one peer_reachable event and one Info line. A brief outage, even
// of many quick attempts, gives neither. On a private side, which polls
// its partner, the line says it cannot reach its public side.
func TestPeerReachabilityEvents(t *testing.T) {
	for _, tc := range []struct {
		name       string
		watchedPub bool   // whether the watched side is public
		warn       string // what its Warn line says
	}{
		{"public side pushes to a public peer", true, "tether: this side cannot reach the peer"},
		{"private side polls its public side", false, "tether: this side cannot reach its public side"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := nuNewWorld(t)
			logs := &logRecorder{}
			hook := &hookEvents{}
			clock := &jumpClock{}
			watched := w.open("watched", tc.watchedPub, func(c *tether.Config) {
				c.Logger = slog.New(logs)
				c.OnEvent = hook.add
				c.Clock = clock
			})
			peer := w.open("peer", true)
			pid, wid := nuConnect(t, peer, watched)
			var toPeer nuSent
			toPeer.send(t, watched, wid, "before")
			nuEventually(t, "the first message delivered", func() bool { return peer.recv.count(pid) == 1 })

			w.net.Partition("watched", peer.Endpoint())
			// A poll held when the link was cut still gets its answer, a
			// successful exchange: let it end (PollWait is 1 s) before
			// counting on none.
			time.Sleep(1500 * time.Millisecond)
			// Messages to send keep the pusher trying; a private side's
			// poll tries anyway.
			toPeer.sendN(t, watched, wid, "during", 3)
			nuEventually(t, "many failed attempts", func() bool { return watched.conn(t, wid).Health.Failures >= 10 })
			if n := watched.countEvents(t, wid, tether.EventPeerUnreachable); n != 0 {
				t.Errorf("%d peer_unreachable events after a second of failures, want none yet", n)
			}
			if got := logs.warnings(); len(got) != 0 {
				t.Errorf("Warn lines after a second of failures: %q, want none yet", got)
			}

			// The outage lasts.
			clock.Jump(2 * time.Minute)
			failures := watched.conn(t, wid).Health.Failures
			nuEventually(t, "many more failed attempts", func() bool { return watched.conn(t, wid).Health.Failures >= failures+10 })
			if n := watched.countEvents(t, wid, tether.EventPeerUnreachable); n != 1 {
				t.Errorf("%d peer_unreachable events after many failed attempts over two minutes, want 1: %+v", n, watched.events(t, wid))
			}
			if !nuHasEventContaining(t, watched, wid, tether.EventPeerUnreachable, "unreachable: unavailable: ") {
				t.Errorf("the peer_unreachable event does not say the cause: %+v", watched.events(t, wid))
			}
			if c := watched.conn(t, wid); !strings.HasPrefix(c.Health.LastError, "unreachable: ") || !c.Unreachable() {
				t.Errorf("Health.LastError %q, Unreachable %v while unreachable, want both to say so", c.Health.LastError, c.Unreachable())
			}
			if n := watched.countEvents(t, wid, tether.EventPeerReachable); n != 0 {
				t.Errorf("%d peer_reachable events while the partner cannot be reached", n)
			}
			if got := logs.warnings(); len(got) != 1 || got[0] != tc.warn {
				t.Errorf("Warn lines: %q, want one %q", got, tc.warn)
			}
			if got := logs.at(slog.LevelWarn, wid); len(got) != 1 {
				t.Errorf("Warn lines about the connection: %q, want one", got)
			}
			if n := peer.countEvents(t, pid, tether.EventPeerUnreachable); n != 0 {
				t.Errorf("the partner, which was not cut off, has %d peer_unreachable events", n)
			}

			w.net.Heal()
			nuEventually(t, "the messages delivered after the partition", func() bool { return peer.recv.count(pid) == 4 })
			nuEventually(t, "a peer_reachable event", func() bool { return watched.countEvents(t, wid, tether.EventPeerReachable) > 0 })
			// Exchanges go on; none of them changes the state again.
			toPeer.sendN(t, watched, wid, "after", 3)
			nuEventually(t, "the messages after healing delivered", func() bool { return peer.recv.count(pid) == 7 })
			peer.recv.check(t, pid, toPeer.all())
			if n := watched.countEvents(t, wid, tether.EventPeerReachable); n != 1 {
				t.Errorf("%d peer_reachable events, want 1", n)
			}
			if watched.conn(t, wid).Unreachable() {
				t.Error("Unreachable after the partner was reached again")
			}
			if n := watched.countEvents(t, wid, tether.EventPeerUnreachable); n != 1 {
				t.Errorf("%d peer_unreachable events after healing, want 1", n)
			}
			var types []tether.EventType
			for _, e := range watched.events(t, wid) {
				types = append(types, e.Type)
			}
			if i := len(types); i < 2 || types[i-2] != tether.EventPeerUnreachable || types[i-1] != tether.EventPeerReachable {
				t.Errorf("events %v, want peer_unreachable then peer_reachable last", types)
			}
			infos := logs.at(slog.LevelInfo, wid)
			if len(infos) != 1 || !strings.Contains(infos[0], "again") {
				t.Errorf("Info lines about the connection: %q, want one saying it is reachable again", infos)
			}
			if got := logs.warnings(); len(got) != 1 {
				t.Errorf("Warn lines after healing: %q, want still one", got)
			}
			if h := watched.conn(t, wid).Health; h.Failures != 0 || h.LastContact.IsZero() || h.LastError != "" {
				t.Errorf("health after healing %+v, want no failures and a last contact", h)
			}
			nuEventually(t, "the OnEvent hook told", func() bool {
				return hook.count(wid, tether.EventPeerUnreachable) == 1 && hook.count(wid, tether.EventPeerReachable) == 1
			})
		})
	}
}

// A failure or two in a row, a request lost now and then, is no change of
// state: no event, no Warn line.
func TestPeerReachabilityIgnoresSingleFailures(t *testing.T) {
	w := nuNewWorld(t)
	logs := &logRecorder{}
	alpha := w.open("alpha", true, func(c *tether.Config) { c.Logger = slog.New(logs) })
	beta := w.open("beta", true)
	aid, bid := nuConnect(t, alpha, beta)
	var toBeta nuSent
	var lost sync.Map // payloads whose first push is lost
	w.net.Faults(func(from, endpoint string, req *tether.Request) tethertest.Fault {
		if from != "alpha" || req.Op != tether.OpPush {
			return tethertest.Fault{}
		}
		// Every other push from alpha is lost: never three in a row.
		_, again := lost.LoadOrStore(len(req.Body), true)
		if again {
			lost.Delete(len(req.Body))
			return tethertest.Fault{}
		}
		return tethertest.Fault{Drop: true}
	})
	for i := range 5 {
		toBeta.send(t, alpha, aid, strings.Repeat("x", i+1))
		nuEventually(t, "the message delivered", func() bool { return beta.recv.count(bid) == i+1 })
	}
	beta.recv.check(t, bid, toBeta.all())
	for _, typ := range []tether.EventType{tether.EventPeerUnreachable, tether.EventPeerReachable} {
		if n := alpha.countEvents(t, aid, typ); n != 0 {
			t.Errorf("%d %s events after single lost requests, want none: %+v", n, typ, alpha.events(t, aid))
		}
	}
	if got := logs.warnings(); len(got) != 0 {
		t.Errorf("Warn lines after single lost requests: %q", got)
	}
}
