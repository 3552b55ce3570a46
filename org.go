package tether

import (
	"cmp"
	"context"
	"maps"
)

// OrgRequest describes an org connection the oauth package (or another
// adapter) has authorized: the team that owns it, the org it reaches, and
// what the connection is called.
type OrgRequest struct {
	Owner       string
	Name        string
	Description string
	// ExternalID is the org's or environment's stable ID (a Salesforce
	// org ID, a Dynamics organization ID): one org per team.
	ExternalID string
	// OrgName is the org's display name, kept as the connection's
	// RemoteName; Provider names the provider and org type.
	OrgName  string
	Provider string
	// OrgType is the org's type as the provider shows it ("production",
	// "sandbox", a Dynamics 365 environment type); URL is its API base
	// URL. Both are kept on the connection (OrgType, RemoteURL).
	OrgType string
	URL     string
	// ReuseFrom, when set, names a connection of the same owner whose
	// settings and rules the new one takes (for example a refreshed
	// sandbox's previous connection), instead of this team's newest
	// deleted connection to the same org.
	ReuseFrom string
}

// ConnectOrg creates an Active org connection (KindOrg) for an org whose
// authorization completed, recording the acting user (WithActor) as its
// creator. An org already connected, to this team or another, and not
// deleted, is refused with CodeOrgTaken. When this team connected the same
// org before and deleted that connection, the new one reuses its settings
// and rules, with an event saying so.
func (n *Node) ConnectOrg(ctx context.Context, req OrgRequest) (*Connection, error) {
	const op = "tether: connect org"
	if req.ExternalID == "" {
		return nil, invalidf(op, "ExternalID", "is required: it identifies the org")
	}
	now := n.clock.Now()
	id, err := newID("conn", now, n.rand)
	if err != nil {
		return nil, Wrap(CodeInternal, op, err)
	}
	c := &Connection{
		ID: id, Kind: KindOrg, Owner: req.Owner, Name: req.Name, Description: req.Description,
		Status: StatusActive, ExternalID: req.ExternalID, RemoteName: req.OrgName,
		Provider: req.Provider, OrgType: req.OrgType, RemoteURL: req.URL,
		CreatedBy: actorOf(ctx), CreatedAt: now, UpdatedAt: now,
	}
	evs := []Event{n.event(ctx, EventCreated, "connected to "+cmp.Or(req.OrgName, req.ExternalID))}
	var prev *Connection
	why := ", this team's earlier connection to the org"
	if req.ReuseFrom != "" {
		p, err := n.store.GetConnection(ctx, req.ReuseFrom)
		if err != nil || p.Owner != req.Owner || p.Kind != KindOrg {
			return nil, &Error{Code: CodeNotFound, Op: op, Message: "ReuseFrom names no org connection of this owner"}
		}
		prev, why = p, ""
	} else {
		p, err := n.previousOrg(ctx, req.Owner, req.ExternalID)
		if err != nil {
			return nil, n.fail(ctx, op, err)
		}
		prev = p
	}
	if prev != nil {
		c.Settings, c.Rules, c.RulesVersion = maps.Clone(prev.Settings), prev.Rules, prev.RulesVersion
		evs = append(evs, n.event(ctx, EventUpdated, "settings and rules reused from "+prev.ID+why))
	}
	if err := c.Validate(); err != nil {
		return nil, withOp(op, err)
	}
	if err := n.store.CreateConnection(ctx, c, evs...); err != nil {
		return nil, n.fail(ctx, op, err)
	}
	n.later(ctx, func() { n.emit(c.ID, evs...) })
	return c, nil
}

// previousOrg returns the newest deleted org connection of owner to the
// org externalID, nil when there is none.
func (n *Node) previousOrg(ctx context.Context, owner, externalID string) (*Connection, error) {
	var found *Connection
	opts := ListOptions{Owner: owner, Kind: KindOrg, Status: StatusDeleted, Limit: MaxPageSize}
	for {
		conns, next, err := n.store.ListConnections(ctx, opts)
		if err != nil {
			return nil, err
		}
		for _, c := range conns {
			if c.ExternalID == externalID {
				found = c // IDs ascend with creation: the last is the newest
			}
		}
		if next == "" {
			return found, nil
		}
		opts.After = next
	}
}

// Note records an event of an org connection that changes nothing else:
// EventAuthFailing, EventAuthRecovered, EventCredentialsGone or
// EventOrgRefreshed, with the acting user of ctx (WithActor). It is how
// adapters such as the oauth package report what they see; deleted
// connections take notes too, so their history stays complete.
func (n *Node) Note(ctx context.Context, id string, t EventType, detail string) error {
	const op = "tether: note"
	switch t {
	case EventAuthFailing, EventAuthRecovered, EventCredentialsGone, EventOrgRefreshed:
	default:
		return invalidf(op, "EventType", "%q is not an event Note records", t)
	}
	if err := checkText("detail", detail, 1, MaxDescriptionLen); err != nil {
		return withOp(op, err)
	}
	_, err := n.edit(ctx, op, id, func(c *Connection) (*Event, error) {
		if c.Kind != KindOrg {
			return nil, &Error{Code: CodeInvalid, Op: op, Message: "notes are for org connections"}
		}
		ev := n.event(ctx, t, detail)
		return &ev, nil
	})
	return err
}
