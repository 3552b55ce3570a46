package tether

import (
	"context"
	"errors"
	"maps"
	"strconv"
)

// Update is a change to a connection's editable fields; nil fields stay as
// they are.
type Update struct {
	Name        *string
	Description *string
	Rules       *string
	// Settings, when not nil, replaces all settings.
	Settings map[string]string
	// Mode, when not nil, must equal the connection's mode: the mode is
	// fixed at creation and any other value fails with CodeModeFixed.
	Mode *Mode
}

// Update changes a connection's name, description, rules or settings.
// Deleted connections cannot change (CodeInvalidTransition).
func (n *Node) Update(ctx context.Context, id string, u Update) (*Connection, error) {
	const op = "tether: update"
	return n.edit(ctx, op, id, func(c *Connection) (*Event, error) {
		if u.Mode != nil && *u.Mode != c.Mode {
			return nil, &Error{Code: CodeModeFixed, Op: op, Message: "mode cannot be changed after the connection is created"}
		}
		if c.Status == StatusDeleted {
			return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "a deleted connection cannot be changed"}
		}
		var changed []string
		if u.Name != nil && *u.Name != c.Name {
			c.Name = *u.Name
			changed = append(changed, "name")
		}
		if u.Description != nil && *u.Description != c.Description {
			c.Description = *u.Description
			changed = append(changed, "description")
		}
		if u.Rules != nil && *u.Rules != c.Rules {
			c.Rules = *u.Rules
			c.RulesVersion++
			changed = append(changed, "rules")
		}
		if u.Settings != nil && !maps.Equal(u.Settings, c.Settings) {
			c.Settings = maps.Clone(u.Settings)
			changed = append(changed, "settings")
		}
		if len(changed) == 0 {
			return nil, nil
		}
		ev := n.event(ctx, EventUpdated, "changed "+joinWords(changed))
		return &ev, nil
	})
}

// Pause stops delivery on an Active connection. Send keeps queuing, and
// the peer's deliveries are answered "paused, retry later" so they stay
// queued on its side too: nothing is lost. The peer is told with a notice
// that follows the messages sent before the pause (they still go); it
// records "paused by the partner" and holds its messages until Activate.
func (n *Node) Pause(ctx context.Context, id string) (*Connection, error) {
	return n.lifecycle(ctx, "tether: pause", id, ActionPause, "paused", noticePaused)
}

// Activate resumes a Paused connection where it stopped, and tells the
// peer, whose queued messages then flow again at once.
func (n *Node) Activate(ctx context.Context, id string) (*Connection, error) {
	return n.lifecycle(ctx, "tether: activate", id, ActionActivate, "activated", noticeActivated)
}

// Delete soft-deletes a connection: it stays readable with its events, and
// nothing is sent or accepted on it any more; messages not yet delivered
// are dropped. The peer is told with a notice stored in the same step, so
// it learns even if this process stops before it is delivered: it marks
// its side deleted ("deleted by the partner") and stops sending.
//
// Pause, Activate and Delete return once the change is stored; they never
// wait on the peer.
func (n *Node) Delete(ctx context.Context, id string) (*Connection, error) {
	return n.lifecycle(ctx, "tether: delete", id, ActionDelete, "deleted", noticeDeleted)
}

// lifecycle applies action a to connection id and stores, in the same
// atomic step, a notice of type nt for its peer.
func (n *Node) lifecycle(ctx context.Context, op, id string, a Action, detail, nt string) (*Connection, error) {
	c, err := n.editWith(ctx, op, id, func(c *Connection) (*Event, *notice, error) {
		tell := notifies(c)
		ev, err := n.step(ctx, op, c, a, detail)
		if err != nil || !tell {
			return ev, nil, err
		}
		return ev, &notice{Type: nt}, nil
	})
	if err == nil {
		n.later(ctx, func() {
			n.signal(id)
			n.notifyChanged()
		})
		if a == ActionActivate {
			// A key change waits while a connection is held: announce it.
			if k := n.keys.Load().current; notifies(c) && c.LocalKeyID != k.ID && c.PendingKeyID != k.ID {
				if moved, err := n.announceKey(ctx, id, k); err == nil {
					c = moved
				}
			}
		}
	}
	return c, err
}

// RevokeInvitation withdraws the invitation of a Pending connection this
// instance initiated: the code can no longer be accepted and the connection
// moves to Deleted. Other connections are unaffected.
func (n *Node) RevokeInvitation(ctx context.Context, id string) (*Connection, error) {
	const op = "tether: revoke invitation"
	c, err := n.edit(ctx, op, id, func(c *Connection) (*Event, error) {
		if c.Role != RoleInitiator {
			return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "only the initiator can revoke an invitation"}
		}
		if c.Status == StatusPending && c.RemoteInstance != "" {
			// The acceptance is recorded and the acceptor may already be
			// Active: the invitation is used, the connection exists.
			return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "the invitation was accepted and is being confirmed: delete the connection instead"}
		}
		return n.step(ctx, op, c, ActionRevoke, "invitation revoked")
	})
	if err == nil && n.endpoint == "" && c.RemoteURL != "" {
		// A private initiator may have been accepted already by the
		// destination, which waits for it: tell it, best effort (it gives
		// up by itself at the invitation's expiry otherwise).
		if inDelivery(ctx) {
			n.later(ctx, func() {
				dctx, cancel := n.detached()
				defer cancel()
				n.withdrawInvitation(dctx, c)
			})
		} else {
			n.withdrawInvitation(ctx, c)
		}
	}
	return c, err
}

// act applies action a to connection id through the transition table
// and records its event.
func (n *Node) act(ctx context.Context, op, id string, a Action, detail string) (*Connection, error) {
	return n.edit(ctx, op, id, func(c *Connection) (*Event, error) {
		return n.step(ctx, op, c, a, detail)
	})
}

// step applies action a to c in memory, through the transition table, and
// returns the event to record with it.
func (n *Node) step(ctx context.Context, op string, c *Connection, a Action, detail string) (*Event, error) {
	next, ok := Next(c.Status, a)
	t, known := eventOf(a)
	if !ok || !known {
		return nil, &Error{Code: CodeInvalidTransition, Op: op, Message: "cannot " + string(a) + " a connection that is " + string(c.Status)}
	}
	c.Status = next
	ev := n.event(ctx, t, detail)
	return &ev, nil
}

// edit reads a connection, applies change and writes it back with the
// event change returns, retrying when another writer got there first. A nil
// event means nothing changed and nothing is written.
func (n *Node) edit(ctx context.Context, op, id string, change func(*Connection) (*Event, error)) (*Connection, error) {
	return n.editWith(ctx, op, id, func(c *Connection) (*Event, *notice, error) {
		ev, err := change(c)
		return ev, nil, err
	})
}

// editWith is edit whose change may also return a notice for the peer,
// stored with the change in one atomic step.
func (n *Node) editWith(ctx context.Context, op, id string, change func(*Connection) (*Event, *notice, error)) (*Connection, error) {
	var out *Connection
	err := retryOnConflict(func() error {
		c, err := n.scoped(ctx, op, id)
		if err == nil {
			err = unchanged(ctx, op, c)
		}
		if err != nil {
			return err
		}
		before := c.Status
		ev, nt, err := change(c)
		if err != nil || ev == nil {
			out = c
			return err
		}
		c.UpdatedAt = n.clock.Now()
		if nt != nil {
			_, err = n.store.UpdateAndNotify(ctx, c, encodeNotice(*nt), *ev)
		} else {
			err = n.store.UpdateConnection(ctx, c, *ev)
		}
		if err != nil {
			return err
		}
		if c.Status != before {
			n.statusChanged(id) // a delivery under way looks again
		}
		e := *ev
		n.later(ctx, func() {
			n.emit(id, e)
			if nt != nil {
				n.signal(id) // a notice to deliver
				n.kick(id)   // by a pusher, even if the connection was just deleted
			}
		})
		out = c
		return nil
	})
	if err != nil {
		return nil, n.fail(ctx, op, err)
	}
	return out, nil
}

// conflictRetries bounds how often a compare-and-swap is tried again when
// another writer changed the record since it was read.
const conflictRetries = 10

// retryOnConflict runs attempt, a read-change-write, again while it fails
// with CodeConflict, at most conflictRetries more times.
func retryOnConflict(attempt func() error) error {
	for i := 0; ; i++ {
		err := attempt()
		if ErrorCode(err) != CodeConflict || i == conflictRetries || errors.Is(err, errStale) {
			return err
		}
	}
}

// eventOf is the event each action records.
func eventOf(a Action) (EventType, bool) {
	switch a {
	case ActionAccept:
		return EventAccepted, true
	case ActionPause:
		return EventPaused, true
	case ActionActivate:
		return EventActivated, true
	case ActionDelete:
		return EventDeleted, true
	case ActionRevoke:
		return EventRevoked, true
	case ActionExpire:
		return EventExpired, true
	case ActionAuthLost:
		return EventAuthLost, true
	case ActionReauthorize:
		return EventReauthorized, true
	}
	return "", false
}

// Transition applies action to a connection through the transition table
// (Next) and records the matching event with detail, in one atomic step,
// retrying when another writer changed the connection meanwhile. It is the
// lifecycle seam for adapters that drive connections of their own (the
// oauth package marks an org connection inactive with ActionAuthLost and
// restores it with ActionReauthorize); hosts use Pause, Activate and
// Delete, which also tell the peer. A move the table does not allow fails
// with CodeInvalidTransition.
func (n *Node) Transition(ctx context.Context, id string, action Action, detail string) (*Connection, error) {
	const op = "tether: transition"
	if _, ok := eventOf(action); !ok {
		return nil, &Error{Code: CodeInvalid, Op: op, Message: "unknown action " + strconv.Quote(string(action))}
	}
	if err := checkText("detail", detail, 0, MaxDescriptionLen); err != nil {
		return nil, withOp(op, err)
	}
	if action == ActionReauthorize {
		if c, err := n.scoped(ctx, op, id); err == nil && c.Kind == KindPeer {
			// Trusting the revoked key again is not a recovery.
			return nil, &Error{Code: CodeInvalid, Op: op, Message: "a peer connection is re-paired with Reauthorize, which pins new keys"}
		}
	}
	c, err := n.act(ctx, op, id, action, detail)
	if err == nil {
		n.later(ctx, func() {
			n.signal(id)
			n.notifyChanged()
		})
	}
	return c, err
}

func joinWords(w []string) string {
	s := ""
	for i, x := range w {
		switch {
		case i == 0:
		case i == len(w)-1:
			s += " and "
		default:
			s += ", "
		}
		s += x
	}
	return s
}

// peerDeleted records that the peer deleted a connection.
func (n *Node) peerDeleted(ctx context.Context, id string) {
	if err := n.peerDeletedErr(ctx, id); err != nil && ctx.Err() == nil {
		n.log.WarnContext(ctx, "tether: record deletion by peer", "connection", id, "err", err)
	}
}

// peerDeletedErr records that the peer deleted a connection; this side
// does not tell the peer back.
func (n *Node) peerDeletedErr(ctx context.Context, id string) error {
	rctx := WithActor(ctx, ActorRemote)
	_, err := n.edit(rctx, "tether: peer deleted", id, func(c *Connection) (*Event, error) {
		if c.Status == StatusDeleted {
			return nil, nil
		}
		return n.step(rctx, "tether: peer deleted", c, ActionDelete, "deleted by the partner")
	})
	n.later(ctx, func() { n.signal(id) })
	return err
}

// handleClose records that the peer deleted the connection.
func (n *Node) handleClose(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle close"
	return n.serve(ctx, op, req, func(a *authenticated) (any, error) {
		n.peerDeleted(ctx, a.conn.ID)
		return struct{}{}, nil
	})
}

// handleResume wakes the sender of a connection the peer activated again
// (peers now say so with a notice; this answers those that call).
func (n *Node) handleResume(ctx context.Context, req *Request) (*Response, error) {
	const op = "tether: handle resume"
	return n.serve(ctx, op, req, func(a *authenticated) (any, error) {
		n.signal(a.conn.ID)
		return struct{}{}, nil
	})
}
