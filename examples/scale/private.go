package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/httptransport"
	"github.com/tetherkit/tether/memstore"
)

// childEnv is set in the environment of the private peers' process.
const childEnv = "TETHER_SCALE_PRIVATE"

// acceptWorkers is how many invitations the private peers accept at once.
const acceptWorkers = 16

// runPrivate is the private peers' process: one Node per code in the
// file o.codes, each with its own memstore and no Endpoint, all sharing
// one HTTP client. Each accepts its code from the public node at
// o.target; once all have, they run, each holding a long-poll there.
// (The public node remembers the nonces of a bounded number of peers,
// each invitation presented and each instance, for about ten minutes:
// accepting every code before the first poll lets the most nodes poll at
// once, and a poll refused meanwhile is retried by its node.) It prints
// "ready P" once all P polls are in flight, and, after -settle and
// -measure, its own figures as "figure name value unit" lines and "done".
// It stops when stdin ends (the parent closes it) or ctx ends.
func runPrivate(ctx context.Context, o *options, stdin io.Reader, stdout, stderr io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(stderr, "scale private: "+format+"\n", args...) }
	raw, err := os.ReadFile(o.codes)
	if err != nil {
		return err
	}
	codes := strings.Fields(string(raw))
	if len(codes) == 0 {
		return fmt.Errorf("%s holds no invitation codes", o.codes)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, stdin)
		cancel()
	}()

	policy := tether.DevelopmentURLPolicy()
	client := &pollTracker{Transport: httptransport.NewClient(httptransport.ClientConfig{
		URLPolicy: policy,
		// Every held poll keeps a connection of its own: let all of them
		// stay open between polls.
		Transport: &http.Transport{
			MaxIdleConnsPerHost: len(codes) + 64,
			IdleConnTimeout:     90 * time.Second,
		},
	})}
	logger := newLogger(stderr)
	base := idleSample()

	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	var (
		next, accepted atomic.Int64
		firstErr       error
		errOnce        sync.Once
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err; cancel() })
	}
	start := time.Now()
	nodes := make([]*tether.Node, len(codes))
	var accepting sync.WaitGroup
	for range min(acceptWorkers, len(codes)) {
		accepting.Add(1)
		go func() {
			defer accepting.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(codes) || ctx.Err() != nil {
					return
				}
				node, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Transport: client, URLPolicy: policy, Logger: logger})
				if err == nil {
					err = acceptCode(ctx, node, codes[i])
				}
				if err != nil {
					fail(fmt.Errorf("private peer %d: %w", i, err))
					return
				}
				nodes[i] = node
				accepted.Add(1)
			}
		}()
	}
	stopProgress := progress(func() { logf("accepted %d/%d, %d polls in flight", accepted.Load(), len(codes), client.polls.Load()) })
	accepting.Wait()
	if firstErr != nil {
		stopProgress()
		return firstErr
	}
	logf("%d private peers accepted after %.1f s; running them", len(codes), time.Since(start).Seconds())
	for _, node := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = node.Run(ctx)
		}()
	}
	// Ready once every node holds its poll.
	for client.polls.Load() < int64(len(codes)) {
		if !sleep(ctx, 50*time.Millisecond) {
			stopProgress()
			return ctx.Err()
		}
	}
	stopProgress()
	logf("%d private peers accepted and polling after %.1f s", len(codes), time.Since(start).Seconds())
	fmt.Fprintf(stdout, "ready %d\n", len(codes))

	if !sleep(ctx, o.settle) {
		return ctx.Err()
	}
	cpu0, t0 := cpuTime(), time.Now()
	if !sleep(ctx, o.measure) {
		return ctx.Err()
	}
	cpu, wall := cpuTime()-cpu0, time.Since(t0)
	s := idleSample()
	p := float64(len(codes))
	for _, f := range []struct {
		name  string
		value any
		unit  string
	}{
		{"child_nodes", len(codes), "count"},
		{"child_polls", client.polls.Load(), "count"},
		{"child_goroutines", s.goroutines, "count"},
		{"child_goroutines_base", base.goroutines, "count"},
		{"child_goroutines_per_node", float64(s.goroutines-base.goroutines) / p, "count"},
		{"child_bytes_per_node", (float64(s.heapStack) - float64(base.heapStack)) / p, "bytes"},
		{"child_rss_mb", float64(s.rss) / mib, "MiB"},
		{"child_rss_kb_per_node", (float64(s.rss) - float64(base.rss)) / 1024 / p, "KiB"},
		{"child_cpu_pct", 100 * cpu.Seconds() / wall.Seconds(), "%"},
	} {
		fmt.Fprintf(stdout, "figure %s %v %s\n", f.name, f.value, f.unit)
	}
	fmt.Fprintln(stdout, "done")
	<-ctx.Done()
	return nil
}

// acceptCode accepts an invitation, retrying while the initiator is busy
// or cannot be reached.
func acceptCode(ctx context.Context, node *tether.Node, code string) error {
	for attempt := 0; ; attempt++ {
		_, err := node.Accept(ctx, code, tether.AcceptOptions{})
		switch tether.ErrorCode(err) {
		case "":
			return nil
		case tether.CodeUnavailable, tether.CodeDeadlineExceeded:
			if attempt < 10 && sleep(ctx, time.Second) {
				continue
			}
		}
		return err
	}
}

// pollTracker is a tether.Transport that counts the polls in flight.
type pollTracker struct {
	tether.Transport
	polls atomic.Int64
}

func (t *pollTracker) Call(ctx context.Context, endpoint string, req *tether.Request) (*tether.Response, error) {
	if req.Op == tether.OpPoll {
		t.polls.Add(1)
		defer t.polls.Add(-1)
	}
	return t.Transport.Call(ctx, endpoint, req)
}

// sleep waits d or until ctx ends, and reports whether ctx is alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// progress calls fn every 10 seconds until the returned function is
// called.
func progress(fn func()) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(10 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fn()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() { close(done); wg.Wait() })
	}
}
