package tether

import (
	"context"
	"errors"
)

type ownerKey struct{}

// WithOwner returns a context that scopes a Node's calls to one owner (a
// team or tenant), for hosts that serve several from one Node:
//
//   - Get, Events, Update, Pause, Activate, Delete, RevokeInvitation,
//     Transition, Reauthorize and RevokePeerKey answer a connection of
//     another owner exactly as one that does not exist: CodeNotFound.
//   - List and Feed list only the owner's connections and their events,
//     whatever ListOptions.Owner or FeedOptions.Owner says.
//
// Initiate, Accept and ConnectOrg take the owner from their request, as
// without a scope. The scope is what an admin API puts on every request
// after it authenticated the caller, so that no route can forget the check.
func WithOwner(ctx context.Context, owner string) context.Context {
	return context.WithValue(ctx, ownerKey{}, owner)
}

// errEmptyOwner refuses a list under WithOwner(ctx, ""): to a Store an
// empty owner means every owner.
func errEmptyOwner(op string) error {
	return &Error{Code: CodeInvalid, Op: op, Message: "WithOwner was given an empty owner: a list would hold every owner's"}
}

// OwnerOf returns the owner WithOwner put in ctx, and whether there is one.
func OwnerOf(ctx context.Context) (string, bool) {
	o, ok := ctx.Value(ownerKey{}).(string)
	return o, ok
}

// scoped reads connection id if it may be seen under ctx's owner scope: a
// connection out of scope is answered as one that does not exist.
func (n *Node) scoped(ctx context.Context, op, id string) (*Connection, error) {
	c, err := n.store.GetConnection(ctx, id)
	if err != nil {
		return nil, err
	}
	if o, ok := OwnerOf(ctx); ok && c.Owner != o {
		return nil, &Error{Code: CodeNotFound, Op: op, Message: "no such connection"}
	}
	return c, nil
}

type versionKey struct{}

// IfVersion returns a context under which Update, Pause, Activate, Delete,
// RevokeInvitation, Transition and Reauthorize change a connection only if
// its Version is still version (CodeConflict otherwise, with nothing
// changed): optimistic concurrency for an editor that showed the
// connection at that version (an HTTP If-Match).
func IfVersion(ctx context.Context, version int64) context.Context {
	return context.WithValue(ctx, versionKey{}, version)
}

// errStale marks an IfVersion refusal, which retrying cannot change.
var errStale = errors.New("stale version")

// unchanged checks c against ctx's IfVersion, if any.
func unchanged(ctx context.Context, op string, c *Connection) error {
	if v, ok := ctx.Value(versionKey{}).(int64); ok && c.Version != v {
		return &Error{Code: CodeConflict, Op: op, Message: "the connection changed since it was read: reload it", Err: errStale}
	}
	return nil
}
