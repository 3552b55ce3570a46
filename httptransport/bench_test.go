package httptransport_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tetherkit/tether"
)

// counter is a Receiver that counts and keeps each message's latency (the
// send time travels in the first 8 bytes of the payload).
type counter struct {
	mu      sync.Mutex
	n       int
	target  int
	reached chan struct{}
	lat     []time.Duration
}

func (c *counter) Receive(_ context.Context, m tether.Message) error {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	if len(m.Payload) >= 8 {
		c.lat = append(c.lat, now.Sub(time.Unix(0, int64(binary.BigEndian.Uint64(m.Payload)))))
	}
	if c.reached != nil && c.n >= c.target {
		close(c.reached)
		c.reached = nil
	}
	return nil
}

// until returns a channel closed once n messages in all have arrived.
func (c *counter) until(n int) <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan struct{})
	if c.n >= n {
		close(ch)
		return ch
	}
	c.target, c.reached = n, ch
	return ch
}

func stamped(size int) []byte {
	b := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(b, uint64(time.Now().UnixNano()))
	return b
}

// benchPair connects a public and a private instance over loopback HTTP
// with counting receivers and runs both.
func benchPair(b *testing.B) (pub, priv *inst, pubID, privID string, pubIn, privIn *counter) {
	b.Helper()
	pubIn, privIn = &counter{}, &counter{}
	pub = newInst(b, true, func(c *tether.Config) { c.Receiver = pubIn })
	priv = newInst(b, false, func(c *tether.Config) { c.Receiver = privIn })
	pubID, privID = connect(b, pub, priv)
	run(b, pub, priv)
	return
}

// BenchmarkThroughput measures messages per second over loopback HTTP with
// memstore, both directions in one loop: push (the private side sends to
// the public one) and pull (the public side's messages reach the private
// side through its long-poll). Each iteration sends a block of 2,000
// messages one way, waits for all, then the same the other way.
func BenchmarkThroughput(b *testing.B) {
	const block = 2000
	pub, priv, pubID, privID, pubIn, privIn := benchPair(b)
	payload := make([]byte, 100)
	var pushTime, pullTime time.Duration
	ctx := context.Background()
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		done := pubIn.until((i + 1) * block)
		for range block {
			if _, err := priv.Send(ctx, privID, payload); err != nil {
				b.Fatal(err)
			}
		}
		<-done
		mid := time.Now()
		done = privIn.until((i + 1) * block)
		for range block {
			if _, err := pub.Send(ctx, pubID, payload); err != nil {
				b.Fatal(err)
			}
		}
		<-done
		pushTime += mid.Sub(start)
		pullTime += time.Since(mid)
	}
	msgs := float64(b.N * block)
	push, pull := msgs/pushTime.Seconds(), msgs/pullTime.Seconds()
	b.ReportMetric(push, "push-msgs/s")
	b.ReportMetric(pull, "pull-msgs/s")
	b.ReportMetric(pull/push, "pull/push")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkIdleLatency sends one message at a time to an idle private side
// (through its long-poll) and waits for it to arrive; beside it, in the same
// loop, one bare HTTP POST round trip on loopback. Reported: p50 and p99 of
// both, in milliseconds.
func BenchmarkIdleLatency(b *testing.B) {
	pub, _, pubID, _, _, privIn := benchPair(b)
	bare := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(`{}`))
	}))
	defer bare.Close()
	client := &http.Client{}
	ctx := context.Background()
	var rtt []time.Duration
	b.ResetTimer()
	for i := range b.N {
		done := privIn.until(i + 1)
		if _, err := pub.Send(ctx, pubID, stamped(64)); err != nil {
			b.Fatal(err)
		}
		<-done

		start := time.Now()
		resp, err := client.Post(bare.URL+"/v1/push", "application/json", bytes.NewReader(make([]byte, 64)))
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		rtt = append(rtt, time.Since(start))
	}
	b.StopTimer()
	privIn.mu.Lock()
	lat := slices.Clone(privIn.lat)
	privIn.mu.Unlock()
	b.ReportMetric(ms(percentile(lat, 50)), "p50-ms")
	b.ReportMetric(ms(percentile(lat, 99)), "p99-ms")
	b.ReportMetric(ms(percentile(rtt, 50)), "http-p50-ms")
	b.ReportMetric(ms(percentile(rtt, 99)), "http-p99-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkHandshake measures Initiate + Accept end to end over loopback
// HTTP (a public initiator, a private acceptor). Reported: the median, in
// milliseconds.
func BenchmarkHandshake(b *testing.B) {
	pub, priv := newInst(b, true), newInst(b, false)
	ctx := context.Background()
	var d []time.Duration
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		_, code, err := pub.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: "A to B"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := priv.Accept(ctx, code, tether.AcceptOptions{}); err != nil {
			b.Fatal(err)
		}
		d = append(d, time.Since(start))
	}
	b.ReportMetric(ms(percentile(d, 50)), "median-ms")
}

func percentile(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[(len(s)-1)*p/100]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
