package adminapi

import (
	"strconv"
	"time"

	"github.com/tetherkit/tether"
)

// connectionJSON is a connection as the API shows it: snake_case, no key
// material, no invitation code (Initiate answers it once), no internal
// counters; the version is the ETag header.
type connectionJSON struct {
	ID           string            `json:"id"`
	Kind         tether.Kind       `json:"kind"`
	Name         string            `json:"name"`
	Description  string            `json:"description"`
	LocalName    string            `json:"local_name"`
	RemoteName   string            `json:"remote_name"`
	Mode         tether.Mode       `json:"mode,omitempty"`
	Status       tether.Status     `json:"status"`
	RemoteStatus tether.Status     `json:"remote_status,omitempty"`
	Role         tether.Role       `json:"role,omitempty"`
	LocalURL     string            `json:"local_url,omitempty"`
	RemoteURL    string            `json:"remote_url,omitempty"`
	RemotePriv   bool              `json:"remote_private"`
	RemoteAdmin  string            `json:"remote_admin_url,omitempty"`
	Provider     string            `json:"provider,omitempty"`
	OrgID        string            `json:"org_id,omitempty"`
	OrgType      string            `json:"org_type,omitempty"`
	CreatedBy    string            `json:"created_by,omitempty"`
	Rules        string            `json:"rules"`
	RulesVersion int               `json:"rules_version"`
	Settings     map[string]string `json:"settings"`
	Health       healthJSON        `json:"health"`
	Expires      *time.Time        `json:"invitation_expires_at,omitempty"`
	CreatedAt    time.Time         `json:"created_at"`
	UpdatedAt    time.Time         `json:"updated_at"`

	version int64
}

type healthJSON struct {
	LastContact *time.Time `json:"last_contact,omitempty"`
	Failures    int        `json:"failures"`
	LastError   string     `json:"last_error,omitempty"`
	Unreachable bool       `json:"unreachable"`
}

func connectionOf(c *tether.Connection) *connectionJSON {
	j := &connectionJSON{
		ID:           c.ID,
		Kind:         c.Kind,
		Name:         c.Name,
		Description:  c.Description,
		LocalName:    c.LocalName,
		RemoteName:   c.RemoteName,
		Mode:         c.Mode,
		Status:       c.Status,
		RemoteStatus: c.RemoteStatus,
		Role:         c.Role,
		LocalURL:     c.LocalURL,
		RemoteURL:    c.RemoteURL,
		RemotePriv:   c.Kind == tether.KindPeer && c.RemotePrivate(),
		RemoteAdmin:  c.RemoteAdminURL,
		Provider:     c.Provider,
		OrgType:      c.OrgType,
		CreatedBy:    c.CreatedBy,
		Rules:        c.Rules,
		RulesVersion: c.RulesVersion,
		Settings:     c.Settings,
		Health:       healthJSON{Failures: c.Health.Failures, LastError: c.Health.LastError, Unreachable: c.Unreachable()},
		CreatedAt:    c.CreatedAt.UTC(),
		UpdatedAt:    c.UpdatedAt.UTC(),
		version:      c.Version,
	}
	if c.Kind == tether.KindOrg {
		j.OrgID = c.ExternalID
	}
	if j.Settings == nil {
		j.Settings = map[string]string{}
	}
	if !c.Health.LastContact.IsZero() {
		t := c.Health.LastContact.UTC()
		j.Health.LastContact = &t
	}
	if c.Status == tether.StatusPending && !c.InvitationExpires.IsZero() {
		t := c.InvitationExpires.UTC()
		j.Expires = &t
	}
	return j
}

// etag is a connection version as an HTTP entity tag.
func etag(version int64) string { return `"` + strconv.FormatInt(version, 10) + `"` }

// parseETag reads an If-Match value written by etag.
func parseETag(s string) (int64, bool) {
	if len(s) < 3 || s[0] != '"' || s[len(s)-1] != '"' {
		return 0, false
	}
	v, err := strconv.ParseInt(s[1:len(s)-1], 10, 64)
	return v, err == nil && v > 0
}

type eventJSON struct {
	Seq          int64            `json:"seq"`
	ConnectionID string           `json:"connection_id"`
	Type         tether.EventType `json:"type"`
	Time         time.Time        `json:"time"`
	Actor        string           `json:"actor"`
	Detail       string           `json:"detail"`
}

func eventsOf(evs []tether.Event) []eventJSON {
	out := make([]eventJSON, len(evs))
	for i, e := range evs {
		out[i] = eventJSON{Seq: e.Seq, ConnectionID: e.ConnectionID, Type: e.Type, Time: e.Time.UTC(), Actor: e.Actor, Detail: e.Detail}
	}
	return out
}

type invitationJSON struct {
	Name               string      `json:"name"`
	Description        string      `json:"description"`
	Mode               tether.Mode `json:"mode"`
	InviterName        string      `json:"inviter_name"`
	ProposedLocalName  string      `json:"proposed_local_name"`
	InviterURL         string      `json:"inviter_url,omitempty"`
	InviterPrivate     bool        `json:"inviter_private"`
	DestinationURL     string      `json:"destination_url,omitempty"`
	DestinationPrivate bool        `json:"destination_private"`
	Repairs            bool        `json:"repairs"`
	IssuedAt           time.Time   `json:"issued_at"`
	ExpiresAt          time.Time   `json:"expires_at"`
}

func invitationOf(inv *tether.Invitation) invitationJSON {
	return invitationJSON{
		Name:               inv.Name,
		Description:        inv.Description,
		Mode:               inv.Mode,
		InviterName:        inv.InitiatorName,
		ProposedLocalName:  inv.AcceptorName,
		InviterURL:         inv.Endpoint,
		InviterPrivate:     inv.InitiatorPrivate(),
		DestinationURL:     inv.Destination,
		DestinationPrivate: inv.DestinationPrivate(),
		Repairs:            inv.Repairs != "",
		IssuedAt:           inv.IssuedAt.UTC(),
		ExpiresAt:          inv.ExpiresAt.UTC(),
	}
}

type listJSON struct {
	Connections []*connectionJSON `json:"connections"`
	NextCursor  string            `json:"next_cursor,omitempty"`
}

type eventsJSON struct {
	Events     []eventJSON `json:"events"`
	NextCursor string      `json:"next_cursor,omitempty"`
}

type initiateJSON struct {
	Connection     *connectionJSON `json:"connection"`
	InvitationCode string          `json:"invitation_code"`
}

type authorizeJSON struct {
	AuthorizationURL string `json:"authorization_url"`
}

// infoJSON is what an instance says it is (tether.Info).
type infoJSON struct {
	Name     string        `json:"name"`
	Protocol string        `json:"protocol"`
	Modes    []tether.Mode `json:"modes"`
}

func infoOf(i tether.Info) infoJSON {
	j := infoJSON{Name: i.Name, Protocol: i.Protocol, Modes: i.Modes}
	if j.Modes == nil {
		j.Modes = []tether.Mode{}
	}
	return j
}
