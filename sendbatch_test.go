package tether_test

import (
	"context"
	"fmt"
	"slices"
	"testing"

	"github.com/tetherkit/tether"
)

// plainStore hides every optional interface of the Store it wraps,
// BatchAppender among them.
type plainStore struct{ tether.Store }

func batchOf(prefix string, from, to int) [][]byte {
	var out [][]byte
	for i := from; i <= to; i++ {
		out = append(out, []byte(fmt.Sprintf("%s-%d", prefix, i)))
	}
	return out
}

// SendBatch stores its messages with consecutive numbers among single
// Sends, refuses as Send does without storing any, and the peer receives
// them in order, once each: with a Store that is a BatchAppender and with
// one that is not.
func TestSendBatch(t *testing.T) {
	for _, plain := range []bool{false, true} {
		t.Run(fmt.Sprintf("plain store %v", plain), func(t *testing.T) {
			w := newWorld(t)
			bin := newInbox()
			alpha := w.node("alpha", alphaURL, realClock, func(c *tether.Config) {
				c.MaxPayload = 32
				if plain {
					c.Store = plainStore{c.Store}
				}
			})
			beta := w.node("beta", "", realClock, withReceiver(bin))
			ctx := context.Background()
			pending, _ := alpha.initiate(t, invite(""))
			_, err := alpha.SendBatch(ctx, pending.ID, batchOf("m", 1, 2))
			wantCode(t, err, tether.CodeNotConnected)
			aid, bid := connect(t, alpha, beta, "")

			if seqs, err := alpha.SendBatch(ctx, aid, nil); err != nil || seqs != nil {
				t.Fatalf("SendBatch of nothing = %v, %v", seqs, err)
			}
			seqs, err := alpha.SendBatch(ctx, aid, batchOf("m", 1, 3))
			if err != nil || !slices.Equal(seqs, []int64{1, 2, 3}) {
				t.Fatalf("SendBatch of 3 = %v, %v; want [1 2 3]", seqs, err)
			}
			if seq, err := alpha.Send(ctx, aid, []byte("m-4")); err != nil || seq != 4 {
				t.Fatalf("Send after a batch = %d, %v; want 4", seq, err)
			}
			tooLarge := append(batchOf("m", 5, 6), make([]byte, 33))
			_, err = alpha.SendBatch(ctx, aid, tooLarge)
			wantCode(t, err, tether.CodeTooLarge)
			if msgs, _ := alpha.store.ListOutbox(ctx, aid, 0, 0); len(msgs) != 4 {
				t.Fatalf("a refused batch stored messages: the outbox holds %d, want 4", len(msgs))
			}
			seqs, err = alpha.SendBatch(ctx, aid, batchOf("m", 5, 700))
			if err != nil || len(seqs) != 696 || seqs[0] != 5 || seqs[695] != 700 {
				t.Fatalf("SendBatch of 696: %d numbers from %v, %v", len(seqs), seqs[:min(1, len(seqs))], err)
			}
			running(t, alpha, beta)
			bin.waitFor(t, 700)
			bin.check(t, bid, "m", 700)

			if _, err := alpha.Delete(ctx, aid); err != nil {
				t.Fatal(err)
			}
			_, err = alpha.SendBatch(ctx, aid, batchOf("late", 1, 2))
			wantCode(t, err, tether.CodeNotConnected)
		})
	}
}
