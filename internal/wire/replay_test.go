package wire

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

var start = time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)

const window = 10 * time.Minute

func nonce(i int) string { return fmt.Sprintf("n%021d", i) }

func TestReplayCacheRefusesReplays(t *testing.T) {
	var rc ReplayCache // the zero value is ready to use
	if !rc.Fresh("alpha", "n1", start, start.Add(window)) {
		t.Fatal("a first nonce was refused")
	}
	if rc.Fresh("alpha", "n1", start.Add(window), start.Add(2*window)) {
		t.Fatal("a replay inside the window was accepted")
	}
	if !rc.Fresh("beta", "n1", start, start.Add(window)) {
		t.Fatal("another peer's equal nonce was refused")
	}
	// Past its window the nonce is forgotten: the request's own time check
	// refuses it by then.
	later := start.Add(window + time.Second)
	if !rc.Fresh("alpha", "n1", later, later.Add(window)) {
		t.Fatal("a nonce past its window is still remembered")
	}
	if rc.Fresh("alpha", "n1", later, later.Add(window)) {
		t.Fatal("a nonce recorded again was not remembered")
	}
}

// SECURITY.md 37: one peer flooding the cache with valid nonces is refused
// beyond its bound; every other peer's fresh requests are still accepted.
func TestReplayCacheOnePeerCannotLockOutOthers(t *testing.T) {
	var rc ReplayCache
	now := start
	flood := 0
	for i := range MaxNoncesPerPeer + 1000 {
		if rc.Fresh("mallory", nonce(i), now, now.Add(window)) {
			flood++
		}
	}
	if flood != MaxNoncesPerPeer {
		t.Fatalf("the flooding peer got %d nonces accepted, want %d", flood, MaxNoncesPerPeer)
	}
	for p := range 100 {
		for i := range 10 {
			if !rc.Fresh(fmt.Sprintf("peer-%d", p), nonce(i), now, now.Add(window)) {
				t.Fatalf("peer-%d's fresh request %d was refused while another peer flooded", p, i)
			}
		}
	}
	// The flooder's nonces expire: it is accepted again, and memory is
	// given back.
	now = now.Add(window + time.Second)
	if !rc.Fresh("mallory", nonce(-1), now, now.Add(window)) {
		t.Fatal("the flooding peer is still refused after its nonces expired")
	}
	now = now.Add(sweepEvery)
	rc.Fresh("alpha", "x", now, now.Add(window))
	if len(rc.peers) != 2 || rc.total != 2 {
		t.Fatalf("after the window the cache holds %d peers and %d nonces, want 2 and 2", len(rc.peers), rc.total)
	}
}

// With small bounds: the total bound, the reserve each peer keeps under
// it, and the bound on peers.
func TestReplayCacheBounds(t *testing.T) {
	rc := ReplayCache{limits: replayLimits{perPeer: 40, total: 100, peers: 4, reserved: 10}}
	now := start
	accepted := func(peer string, n int) int {
		got := 0
		for i := range n {
			if rc.Fresh(peer, fmt.Sprintf("%s-%d-%d", peer, now.Unix(), i), now, now.Add(window)) {
				got++
			}
		}
		return got
	}
	for _, c := range []struct {
		peer     string
		send     int
		accepted int
	}{
		{"a", 50, 40}, // its own bound
		{"b", 50, 40},
		{"c", 50, 20}, // total reached at 100
		{"c", 5, 0},   // c holds more than its reserve
		{"d", 15, 10}, // a new peer gets its reserve
		{"e", 1, 0},   // a fifth peer: too many peers
	} {
		if got := accepted(c.peer, c.send); got != c.accepted {
			t.Fatalf("peer %s: %d of %d accepted, want %d", c.peer, got, c.send, c.accepted)
		}
	}
	if max := 100 + 4*10; rc.total > max {
		t.Fatalf("the cache holds %d nonces, more than %d", rc.total, max)
	}
	// Once a's and b's nonces expire, e is remembered in a's place.
	now = now.Add(window + time.Second)
	if got := accepted("e", 1); got != 1 {
		t.Fatal("a new peer is refused after the others' nonces expired")
	}
}

// Random use by many goroutines never exceeds the bounds (run with -race).
func TestReplayCacheConcurrent(t *testing.T) {
	lim := replayLimits{perPeer: 50, total: 300, peers: 20, reserved: 15}
	rc := ReplayCache{limits: lim}
	var (
		wg    sync.WaitGroup
		clock sync.Mutex
		now   = start
	)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 5000 {
				clock.Lock()
				if r.IntN(100) == 0 {
					now = now.Add(time.Minute)
				}
				at := now
				clock.Unlock()
				peer := fmt.Sprintf("p%d", r.IntN(30))
				rc.Fresh(peer, fmt.Sprintf("%d-%d", g, i), at, at.Add(window))
				rc.mu.Lock()
				total, peers := rc.total, len(rc.peers)
				rc.mu.Unlock()
				if total > lim.total+lim.peers*lim.reserved || peers > lim.peers {
					t.Errorf("the cache holds %d nonces of %d peers: beyond its bounds", total, peers)
					return
				}
			}
		}()
	}
	wg.Wait()
	rc.mu.Lock()
	defer rc.mu.Unlock()
	sum := 0
	for _, p := range rc.peers {
		sum += len(p.seen)
	}
	if sum != rc.total {
		t.Fatalf("the cache counts %d nonces but holds %d", rc.total, sum)
	}
}

// 10,000 private peers joining within one window take two entries each (the
// accept request's invitation, then the instance's polls): the default
// bounds accept them all, and their polls after.
func TestReplayCacheTenThousandNewPeers(t *testing.T) {
	var rc ReplayCache
	for i := range 10000 {
		now := start.Add(time.Duration(i) * time.Millisecond)
		if !rc.Fresh(fmt.Sprintf("invitation-%d", i), nonce(2*i), now, now.Add(window)) {
			t.Fatalf("peer %d's accept request was refused", i)
		}
		if !rc.Fresh(fmt.Sprintf("instance-%d", i), nonce(2*i+1), now, now.Add(window)) {
			t.Fatalf("peer %d's first poll was refused", i)
		}
	}
	now := start.Add(time.Minute)
	for i := range 10000 {
		if !rc.Fresh(fmt.Sprintf("instance-%d", i), nonce(30000+i), now, now.Add(window)) {
			t.Fatalf("peer %d's second poll was refused", i)
		}
	}
}
