package tether

import (
	"context"
	"strconv"
	"strings"
)

// Feed returns a page of the event feed: the events of all connections
// after the cursor opts.After, and the cursor to pass for the next page.
// FeedStore states the guarantee: a host that forwards each page (as
// webhooks, say) and keeps the returned cursor once the page is
// forwarded resumes after a crash without losing or repeating an event.
// The cursor is never empty, also after an empty page: keep polling with
// it.
//
// Under WithOwner it lists only the owner's connections' events, whatever
// opts.Owner says. CodeInvalid when opts.After is not a cursor the feed
// returned, and when the Node's Store does not implement FeedStore.
func (n *Node) Feed(ctx context.Context, opts FeedOptions) ([]Event, string, error) {
	const op = "tether: feed"
	fs, ok := n.store.(FeedStore)
	if !ok {
		return nil, "", &Error{Code: CodeInvalid, Op: op, Message: "the Store does not implement tether.FeedStore: it cannot list the event feed"}
	}
	if o, ok := OwnerOf(ctx); ok {
		if o == "" {
			return nil, "", errEmptyOwner(op)
		}
		opts.Owner = o
	}
	evs, next, err := fs.ListFeed(ctx, opts)
	if err != nil {
		return nil, "", n.fail(ctx, op, err)
	}
	return evs, next, nil
}

// FeedCursor is a position in the event feed of a FeedStore. Stores encode
// their cursors with String and decode them with ParseFeedCursor, so that
// all of them refuse alike what a host sends back; hosts treat cursors as
// opaque strings.
//
// Positions are ordered by Tx, then by Seq. A store whose events commit in
// Seq order leaves Tx zero; one whose Seq order may differ from the commit
// order puts there what orders its events instead (sqlstore on PostgreSQL:
// the writing transaction's ID).
type FeedCursor struct {
	Tx  int64
	Seq int64
}

// feedCursorPrefix starts every encoded cursor; it names the format, so
// that another can follow.
const feedCursorPrefix = "v1."

// maxFeedCursorLen bounds a cursor: the prefix and two int64s.
const maxFeedCursorLen = len(feedCursorPrefix) + 2*19 + 1

// String encodes c as "v1.<tx>.<seq>".
func (c FeedCursor) String() string {
	b := make([]byte, 0, maxFeedCursorLen)
	b = append(b, feedCursorPrefix...)
	b = strconv.AppendInt(b, c.Tx, 10)
	b = append(b, '.')
	b = strconv.AppendInt(b, c.Seq, 10)
	return string(b)
}

// ParseFeedCursor decodes a cursor that FeedCursor.String encoded. The
// empty string is the start of the feed, the zero FeedCursor. Anything
// else, including a negative number or one written differently than
// String writes it, fails with CodeInvalid; the error does not quote s,
// which comes from the network.
func ParseFeedCursor(s string) (FeedCursor, error) {
	if s == "" {
		return FeedCursor{}, nil
	}
	bad := &Error{Code: CodeInvalid, Op: "tether: feed cursor", Message: "the feed cursor is malformed: pass back a cursor the feed returned"}
	if len(s) > maxFeedCursorLen {
		return FeedCursor{}, bad
	}
	rest, ok := strings.CutPrefix(s, feedCursorPrefix)
	if !ok {
		return FeedCursor{}, bad
	}
	tx, seq, ok := strings.Cut(rest, ".")
	if !ok {
		return FeedCursor{}, bad
	}
	var c FeedCursor
	if c.Tx, ok = cursorNumber(tx); !ok {
		return FeedCursor{}, bad
	}
	if c.Seq, ok = cursorNumber(seq); !ok {
		return FeedCursor{}, bad
	}
	return c, nil
}

// cursorNumber parses a non-negative decimal int64 written without sign
// or leading zeros, as strconv.AppendInt writes it.
func cursorNumber(s string) (int64, bool) {
	if s == "" || s[0] == '0' && len(s) > 1 {
		return 0, false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	return v, err == nil
}
