package adminapi

import (
	"context"
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/tetherkit/tether"
)

// Notify tells the API that events were appended, so that live event
// streams send them at once: wire it to tether.Config.OnEvent (after
// creating the API, through a variable, or from the host's own OnEvent).
// Without it, and for events other processes append, streams look every
// StreamRecheck.
func (a *API) Notify(tether.Event) {
	a.wake.mu.Lock()
	close(a.wake.ch)
	a.wake.ch = make(chan struct{})
	a.wake.mu.Unlock()
}

// waker is a broadcast: every waiter of the current channel is woken.
type waker struct {
	mu sync.Mutex
	ch chan struct{}
}

func (w *waker) wait() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ch
}

// StreamRecheck is how often an event stream reads the feed when not
// notified; StreamHeartbeat how often it sends a comment so that proxies
// keep an idle stream open.
const (
	StreamRecheck   = 5 * time.Second
	StreamHeartbeat = 15 * time.Second
)

// feed serves GET /events: the caller's events of all connections after
// the cursor, in order. next_cursor is always set: keep polling with it.
func (a *API) feed(ctx context.Context, r *http.Request) (int, any, error) {
	n, err := limit(r)
	if err != nil {
		return 0, nil, err
	}
	evs, next, err := a.node.Feed(ctx, tether.FeedOptions{After: r.URL.Query().Get("cursor"), Limit: n})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, feedJSON{Events: eventsOf(evs), NextCursor: next}, nil
}

type feedJSON struct {
	Events     []eventJSON `json:"events"`
	NextCursor string      `json:"next_cursor"`
}

// stream serves GET /events/stream: the caller's events as server-sent
// events (text/event-stream), each "event: tether" with the event's JSON,
// from the cursor in the query or the Last-Event-ID header a reconnecting
// browser sends; without either, from now on. The last event of each batch
// carries the id to resume after it. The caller is authenticated again
// every StreamRecheck: the stream ends once the session is gone.
func (a *API) stream(w http.ResponseWriter, r *http.Request) {
	ctx, err := a.begin(r)
	if err != nil {
		a.problem(w, r, err)
		return
	}
	owner, _ := tether.OwnerOf(ctx)
	// still reports whether the caller is still signed in as the owner the
	// stream began for: a stream outlives a logout by at most
	// StreamRecheck.
	still := func() bool {
		c, err := a.auth(r)
		return err == nil && c.Owner == owner
	}
	cursor := r.URL.Query().Get("cursor")
	if id := r.Header.Get("Last-Event-ID"); id != "" {
		cursor = id
	}
	if cursor == "" {
		// From now on: skip to the end of the feed.
		for {
			evs, next, err := a.node.Feed(ctx, tether.FeedOptions{After: cursor, Limit: tether.MaxEventPage})
			if err != nil {
				a.problem(w, r, err)
				return
			}
			cursor = next
			if len(evs) < tether.MaxEventPage {
				break
			}
		}
	} else if _, _, err := a.node.Feed(ctx, tether.FeedOptions{After: cursor, Limit: 1}); err != nil {
		a.problem(w, r, err)
		return
	}
	flusher := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte(": tether events\n\n"))
	if err := flusher.Flush(); err != nil {
		return // the response cannot stream
	}
	heartbeat := time.NewTicker(StreamHeartbeat)
	defer heartbeat.Stop()
	for {
		wake := a.wake.wait() // before reading, so no notice is missed
		evs, next, err := a.node.Feed(ctx, tether.FeedOptions{After: cursor, Limit: tether.MaxEventPage})
		if err != nil {
			if ctx.Err() == nil {
				a.log.WarnContext(ctx, "adminapi: event stream", "err", err)
			}
			return
		}
		for i, e := range eventsOf(evs) {
			b, _ := json.Marshal(e)
			out := "event: tether\n"
			if i == len(evs)-1 {
				out += "id: " + next + "\n"
			}
			if _, err := w.Write([]byte(out + "data: " + string(b) + "\n\n")); err != nil {
				return
			}
		}
		cursor = next
		if len(evs) > 0 {
			_ = flusher.Flush()
		}
		if len(evs) == tether.MaxEventPage {
			continue
		}
		recheck := time.NewTimer(StreamRecheck)
		select {
		case <-ctx.Done():
			recheck.Stop()
			return
		case <-wake:
		case <-recheck.C:
			if !still() {
				return
			}
		case <-heartbeat.C:
			if !still() {
				recheck.Stop()
				return
			}
			if _, err := w.Write([]byte(": heartbeat\n\n")); err != nil {
				recheck.Stop()
				return
			}
			_ = flusher.Flush()
		}
		recheck.Stop()
	}
}
