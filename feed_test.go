package tether_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"testing"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/memstore"
	"github.com/tetherkit/tether/storetest"
)

// A host forwards every connection's events as webhooks. It keeps the
// cursor of the last page it forwarded (in its own database, say), so
// that after a crash it goes on from there: no event is lost, none is
// sent twice.
func ExampleNode_Feed() {
	ctx := context.Background()
	node, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://support.example.com/tether"})
	if err != nil {
		log.Fatal(err)
	}

	saved := "" // the cursor the host keeps; "" before the first page
	forward := func() {
		for {
			events, next, err := node.Feed(ctx, tether.FeedOptions{After: saved, Limit: 2})
			if err != nil {
				log.Fatal(err)
			}
			for _, e := range events {
				fmt.Println("webhook:", e.Type) // send it; retry until it is taken
			}
			saved = next // only once the page is forwarded
			if len(events) == 0 {
				return // nothing more for now: poll again later with saved
			}
		}
	}

	engineering, _, _ := node.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Engineering", Name: "Support to Engineering"})
	sales, _, _ := node.Initiate(ctx, tether.InitiateRequest{Mode: tether.ModeBasic, LocalName: "Support", RemoteName: "Sales", Name: "Support to Sales"})
	forward()

	// The host crashes and restarts here, and reads saved back.
	name := "Support to Engineering (EU)"
	node.Update(ctx, engineering.ID, tether.Update{Name: &name})
	node.RevokeInvitation(ctx, sales.ID)
	fmt.Println("after the restart:")
	forward()
	// Output:
	// webhook: created
	// webhook: created
	// after the restart:
	// webhook: updated
	// webhook: revoked
}

// FuzzFeedCursor checks that cursors from the network never make the
// parser or a Store's ListFeed panic, that anything refused is refused
// with CodeInvalid without quoting the input, and that anything accepted
// is a cursor String writes exactly so.
func FuzzFeedCursor(f *testing.F) {
	for _, s := range []string{
		"", "v1.0.0", "v1.0.3", "v1.12.345", "v1.9223372036854775807.9223372036854775807",
		"v1.9223372036854775808.0", "v1.-1.0", "v1.01.0", "v1.0", "v2.0.0", "v1.0.0.0", "x", "v1.٣.0",
	} {
		f.Add(s)
	}
	ctx := context.Background()
	store := memstore.New()
	for i := 1; i <= 3; i++ {
		if err := store.CreateConnection(ctx, storetest.NewConnection(i), tether.Event{Type: tether.EventCreated}); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := tether.ParseFeedCursor(s)
		evs, next, ferr := store.ListFeed(ctx, tether.FeedOptions{After: s})
		if err != nil {
			var e *tether.Error
			if !errors.As(err, &e) || e.Code != tether.CodeInvalid {
				t.Fatalf("ParseFeedCursor: %v, want a CodeInvalid *tether.Error", err)
			}
			if len(s) > 3 && strings.Contains(err.Error(), s) {
				t.Fatalf("the error quotes the input: %v", err)
			}
			if tether.ErrorCode(ferr) != tether.CodeInvalid || evs != nil || next != "" {
				t.Fatalf("ListFeed of a refused cursor = %v, %q, %v; want a CodeInvalid error", evs, next, ferr)
			}
			return
		}
		if c.Tx < 0 || c.Seq < 0 {
			t.Fatalf("accepted a negative position %+v", c)
		}
		if s != "" && c.String() != s {
			t.Fatalf("accepted %q, which encodes as %q", s, c.String())
		}
		if again, err := tether.ParseFeedCursor(c.String()); err != nil || again != c {
			t.Fatalf("%+v does not decode from its own encoding: %+v, %v", c, again, err)
		}
		if c.Tx != 0 {
			if tether.ErrorCode(ferr) != tether.CodeInvalid {
				t.Fatalf("memstore took a cursor with a Tx: %v", ferr)
			}
			return
		}
		if ferr != nil {
			t.Fatalf("ListFeed(%q): %v", s, ferr)
		}
		for _, e := range evs {
			if e.Seq <= c.Seq {
				t.Fatalf("ListFeed after Seq %d listed Seq %d", c.Seq, e.Seq)
			}
		}
		if len(evs) == 0 && next != c.String() {
			t.Fatalf("an empty page after %q returned %q", s, next)
		}
	})
}

// storeOnly hides every method of a Store but those of tether.Store.
type storeOnly struct{ tether.Store }

func TestFeedNeedsFeedStore(t *testing.T) {
	ctx := context.Background()
	node, err := tether.Open(ctx, tether.Config{Store: storeOnly{memstore.New()}, Endpoint: "https://support.example.com/tether"})
	if err != nil {
		t.Fatal(err)
	}
	_, next, err := node.Feed(ctx, tether.FeedOptions{})
	var e *tether.Error
	if !errors.As(err, &e) || e.Code != tether.CodeInvalid || !strings.Contains(e.Message, "FeedStore") || next != "" {
		t.Fatalf("Feed on a Store without a feed: %q, %v; want CodeInvalid naming FeedStore", next, err)
	}
}

// Feed passes malformed cursors back as CodeInvalid, and under WithOwner
// lists only the owner's events, whatever FeedOptions.Owner says.
func TestFeedOwnerAndCursor(t *testing.T) {
	ctx := context.Background()
	node, err := tether.Open(ctx, tether.Config{Store: memstore.New(), Endpoint: "https://support.example.com/tether"})
	if err != nil {
		t.Fatal(err)
	}
	owners := []string{"team-a", "team-b", "team-a"}
	ids := map[string]string{}
	for i, o := range owners {
		c, _, err := node.Initiate(ctx, tether.InitiateRequest{Owner: o, Mode: tether.ModeBasic, LocalName: "A", RemoteName: "B", Name: fmt.Sprintf("Connection %d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ids[c.ID] = o
	}
	for _, tc := range []struct {
		name string
		ctx  context.Context
		opts tether.FeedOptions
		want int
	}{
		{"all", ctx, tether.FeedOptions{}, 3},
		{"owner option", ctx, tether.FeedOptions{Owner: "team-b"}, 1},
		{"owner scope", tether.WithOwner(ctx, "team-a"), tether.FeedOptions{}, 2},
		{"scope wins", tether.WithOwner(ctx, "team-a"), tether.FeedOptions{Owner: "team-b"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evs, next, err := node.Feed(tc.ctx, tc.opts)
			if err != nil || len(evs) != tc.want || next == "" {
				t.Fatalf("Feed = %d events, %q, %v; want %d and a cursor", len(evs), next, err, tc.want)
			}
			scope, scoped := tether.OwnerOf(tc.ctx)
			for _, e := range evs {
				if scoped && ids[e.ConnectionID] != scope {
					t.Fatalf("an event of %s's connection under the scope of %s", ids[e.ConnectionID], scope)
				}
			}
		})
	}
	_, _, err = node.Feed(ctx, tether.FeedOptions{After: "v1.0"})
	var e *tether.Error
	if !errors.As(err, &e) || e.Code != tether.CodeInvalid || e.Op != "tether: feed" {
		t.Fatalf("Feed with a malformed cursor: %v, want CodeInvalid from tether: feed", err)
	}
}
