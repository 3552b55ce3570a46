package adminapi_test

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"
)

type feedEvent struct {
	Seq          int64  `json:"seq"`
	ConnectionID string `json:"connection_id"`
	Type         string `json:"type"`
}

// The feed hands the caller's events of all connections, each once, in
// each connection's order, to a reader that pages with the cursor — and
// nothing of another tenant's.
func TestFeedPages(t *testing.T) {
	w := newWorld(t)
	a1 := w.connect("session-a")
	a2, _ := w.initiate("session-a")
	w.initiate("session-b")
	w.must(200, "session-a", "POST", "/connections/"+a1.ID+"/pause", nil)
	w.must(200, "session-a", "PATCH", "/connections/"+a2.ID, map[string]string{"description": "changed"})
	seen := map[int64]bool{}
	last := map[string]int64{}
	cursor := ""
	for range 50 {
		var page struct {
			Events     []feedEvent `json:"events"`
			NextCursor string      `json:"next_cursor"`
		}
		w.must(200, "session-a", "GET", "/events?limit=2&cursor="+cursor, nil).decode(t, &page)
		if page.NextCursor == "" {
			t.Fatal("no next_cursor")
		}
		for _, e := range page.Events {
			if e.ConnectionID != a1.ID && e.ConnectionID != a2.ID {
				t.Fatalf("another tenant's event: %+v", e)
			}
			if seen[e.Seq] || e.Seq <= last[e.ConnectionID] {
				t.Fatalf("event %+v repeated or out of order", e)
			}
			seen[e.Seq], last[e.ConnectionID] = true, e.Seq
		}
		if len(page.Events) == 0 {
			if page.NextCursor != cursor && cursor != "" {
				t.Errorf("an empty page moved the cursor from %q to %q", cursor, page.NextCursor)
			}
			break
		}
		cursor = page.NextCursor
	}
	for _, id := range []string{a1.ID, a2.ID} {
		var evs struct{ Events []feedEvent }
		w.must(200, "session-a", "GET", "/connections/"+id+"/events", nil).decode(t, &evs)
		for _, e := range evs.Events {
			if !seen[e.Seq] {
				t.Errorf("the feed lacks %+v", e)
			}
		}
	}
	for _, bad := range []string{"x", "-1", "99999999999999999999999", "%00"} {
		if p := w.call("session-a", "GET", "/events?cursor="+bad, nil).problem(t); p.Code != "invalid" {
			t.Errorf("cursor %q: %+v", bad, p)
		}
	}
}

// sse reads server-sent events from a stream.
type sse struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func (w *world) stream(ctx context.Context, session, query, lastID string) *sse {
	w.t.Helper()
	req, _ := http.NewRequestWithContext(ctx, "GET", w.srv.URL+"/api/events/stream"+query, nil)
	req.AddCookie(&http.Cookie{Name: "session", Value: session})
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := w.srv.Client().Do(req)
	if err != nil {
		w.t.Fatal(err)
	}
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		w.t.Fatalf("stream: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	w.t.Cleanup(func() { resp.Body.Close() })
	return &sse{resp: resp, sc: bufio.NewScanner(resp.Body)}
}

// next returns the next event and the id it carried ("" if none).
func (s *sse) next(t *testing.T) (feedEvent, string) {
	t.Helper()
	var e feedEvent
	id, data := "", ""
	for s.sc.Scan() {
		line := s.sc.Text()
		switch {
		case strings.HasPrefix(line, "id: "):
			id = strings.TrimPrefix(line, "id: ")
		case strings.HasPrefix(line, "data: "):
			data = strings.TrimPrefix(line, "data: ")
		case line == "" && data != "":
			if err := json.Unmarshal([]byte(data), &e); err != nil {
				t.Fatal(err)
			}
			return e, id
		}
	}
	t.Fatalf("the stream ended: %v", s.sc.Err())
	return e, ""
}

// The stream sends events as they happen, without a page reload, only
// the caller's, and a reconnecting browser resumes after the last id.
func TestEventStream(t *testing.T) {
	w := newWorld(t)
	c := w.connect("session-a")
	other := w.connect("session-b")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a := w.stream(ctx, "session-a", "", "")
	b := w.stream(ctx, "session-b", "", "")
	w.must(200, "session-a", "POST", "/connections/"+c.ID+"/pause", nil)
	e, id := a.next(t)
	if e.Type != "paused" || e.ConnectionID != c.ID || id == "" {
		t.Fatalf("first streamed event: %+v, id %q", e, id)
	}
	w.must(200, "session-b", "POST", "/connections/"+other.ID+"/pause", nil)
	if e, _ := b.next(t); e.ConnectionID != other.ID || e.Type != "paused" {
		t.Fatalf("team-b's stream: %+v", e)
	}
	w.must(200, "session-a", "POST", "/connections/"+c.ID+"/activate", nil)
	again := w.stream(ctx, "session-a", "", id)
	if e, _ := again.next(t); e.Type != "activated" || e.ConnectionID != c.ID {
		t.Fatalf("resumed after %q: %+v", id, e)
	}
	if e, _ := a.next(t); e.Type != "activated" {
		t.Fatalf("live: %+v", e)
	}
}
