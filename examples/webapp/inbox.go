package main

import (
	"context"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tetherkit/tether"
)

// inbox is the app's Receiver: it keeps the last messages of each
// connection in memory, for its page. A help desk would turn them into
// ticket updates here.
type inbox struct {
	mu sync.Mutex
	m  map[string][]received
}

type received struct {
	Seq  int64
	At   time.Time
	Text string
}

const keepMessages = 10

func newInbox() *inbox { return &inbox{m: map[string][]received{}} }

func (in *inbox) Receive(_ context.Context, m tether.Message) error {
	text := string(m.Payload)
	if !utf8.ValidString(text) {
		text = "(binary, " + strconv.Itoa(len(m.Payload)) + " bytes)"
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	msgs := in.m[m.ConnectionID]
	if n := len(msgs); n > 0 && msgs[n-1].Seq >= m.Seq {
		return nil // handed over again after a crash: shown already
	}
	msgs = append(msgs, received{Seq: m.Seq, At: time.Now(), Text: text})
	if len(msgs) > keepMessages {
		msgs = msgs[len(msgs)-keepMessages:]
	}
	in.m[m.ConnectionID] = msgs
	return nil
}

// recent returns connection id's last messages, newest first.
func (in *inbox) recent(id string) []received {
	in.mu.Lock()
	defer in.mu.Unlock()
	msgs := in.m[id]
	out := make([]received, len(msgs))
	for i, m := range msgs {
		out[len(msgs)-1-i] = m
	}
	return out
}
