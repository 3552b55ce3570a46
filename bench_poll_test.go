package tether_test

import (
	"context"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// BenchmarkForgedPoll measures what a forged poll costs the public side
// (SECURITY.md 36): one naming one connection, one naming that connection
// 1,000 times, and one naming 1,000 connections. Each names the key the
// public side pinned for the peer, so its signature is checked, and the
// check fails. The three are interleaved in one loop so they see the same
// machine. Metrics: ns/op of each, and the ratios of the two large ones to
// the single one (dup-ratio, many-ratio).
func BenchmarkForgedPoll(b *testing.B) {
	w := newWorld(b)
	alpha, beta := w.node("alpha", alphaURL), w.node("beta", "")
	aid, _ := connect(b, alpha, beta, "")
	forged := func(ids []string) *tether.Request {
		return badSignature(tether.SignRequest(beta.Node, alphaURL, tether.OpPoll, aid, pollBody(ids...)))
	}
	cases := []struct {
		name string
		req  *tether.Request
		took time.Duration
	}{
		{"single", forged([]string{aid}), 0},
		{"dup", forged(repeatID(aid, tether.MaxPollConnections)), 0},
		{"many", forged(manyIDs(aid, tether.MaxPollConnections)), 0},
	}
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		for i := range cases {
			start := time.Now()
			if _, err := alpha.Handle(ctx, cases[i].req); err == nil {
				b.Fatalf("%s: a forged poll was answered", cases[i].name)
			}
			cases[i].took += time.Since(start)
		}
	}
	single := float64(cases[0].took) / float64(b.N)
	for _, c := range cases {
		b.ReportMetric(float64(c.took)/float64(b.N), c.name+"-ns/op")
	}
	b.ReportMetric(float64(cases[1].took)/float64(b.N)/single, "dup-ratio")
	b.ReportMetric(float64(cases[2].took)/float64(b.N)/single, "many-ratio")
}
