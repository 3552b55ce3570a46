package adminapi

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/oauth"
)

func invalid(msg string) error { return &tether.Error{Code: tether.CodeInvalid, Message: msg} }

// limit reads the limit query parameter of an event page: empty means
// the default.
func limit(r *http.Request) (int, error) { return limitUpTo(r, tether.MaxEventPage) }

// limitUpTo reads the limit query parameter, 1 to max; empty means the
// default (0).
func limitUpTo(r *http.Request, max int) (int, error) {
	s := r.URL.Query().Get("limit")
	if s == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > max {
		return 0, invalid("limit must be a number from 1 to " + strconv.Itoa(max))
	}
	return n, nil
}

func (a *API) list(ctx context.Context, r *http.Request) (int, any, error) {
	q := r.URL.Query()
	n, err := limitUpTo(r, tether.MaxPageSize)
	if err != nil {
		return 0, nil, err
	}
	opts := tether.ListOptions{Status: tether.Status(q.Get("status")), Kind: tether.Kind(q.Get("kind")), After: q.Get("cursor"), Limit: n}
	switch opts.Status {
	case "", tether.StatusPending, tether.StatusActive, tether.StatusPaused, tether.StatusInactive, tether.StatusDeleted:
	default:
		return 0, nil, invalid("status must be pending, active, paused, inactive or deleted")
	}
	switch opts.Kind {
	case "", tether.KindPeer, tether.KindOrg:
	default:
		return 0, nil, invalid("kind must be peer or org")
	}
	conns, next, err := a.node.List(ctx, opts)
	if err != nil {
		return 0, nil, err
	}
	out := listJSON{Connections: make([]*connectionJSON, len(conns)), NextCursor: next}
	for i, c := range conns {
		out.Connections[i] = connectionOf(c)
	}
	return http.StatusOK, out, nil
}

type initiateRequest struct {
	// Destination is the partner's URL; empty: "I don't have a URL", the
	// partner is private and will make the requests.
	Destination string            `json:"destination"`
	Mode        tether.Mode       `json:"mode"`
	LocalName   string            `json:"local_name"`
	RemoteName  string            `json:"remote_name"`
	Name        string            `json:"name"`
	Description string            `json:"description"`
	Rules       string            `json:"rules"`
	Settings    map[string]string `json:"settings"`
	// TTLSeconds is how long the code stays valid; 0 means the node's
	// default.
	TTLSeconds int64 `json:"ttl_seconds"`
}

func (a *API) initiate(ctx context.Context, r *http.Request) (int, any, error) {
	var req initiateRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.TTLSeconds < 0 || req.TTLSeconds > int64(tether.MaxInvitationTTL/time.Second) {
		return 0, nil, invalid("ttl_seconds is out of range")
	}
	owner, _ := tether.OwnerOf(ctx)
	c, code, err := a.node.Initiate(ctx, tether.InitiateRequest{
		Owner: owner, Destination: req.Destination, Mode: req.Mode,
		LocalName: req.LocalName, RemoteName: req.RemoteName,
		Name: req.Name, Description: req.Description,
		Rules: req.Rules, Settings: req.Settings,
		TTL: time.Duration(req.TTLSeconds) * time.Second,
	})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, initiateJSON{Connection: connectionOf(c), InvitationCode: code}, nil
}

func (a *API) get(ctx context.Context, r *http.Request) (int, any, error) {
	c, err := a.node.Get(ctx, r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, connectionOf(c), nil
}

// ifMatch scopes ctx to the version an If-Match header names.
func ifMatch(ctx context.Context, r *http.Request) (context.Context, error) {
	h := r.Header.Get("If-Match")
	if h == "" {
		return ctx, nil
	}
	v, ok := parseETag(h)
	if !ok {
		return nil, invalid("If-Match must be an ETag this API gave")
	}
	return tether.IfVersion(ctx, v), nil
}

type editRequest struct {
	Name        *string            `json:"name"`
	Description *string            `json:"description"`
	Rules       *string            `json:"rules"`
	Settings    *map[string]string `json:"settings"`
}

func (a *API) edit(ctx context.Context, r *http.Request) (int, any, error) {
	var req editRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	ctx, err := ifMatch(ctx, r)
	if err != nil {
		return 0, nil, err
	}
	u := tether.Update{Name: req.Name, Description: req.Description, Rules: req.Rules}
	if req.Settings != nil {
		u.Settings = *req.Settings
		if u.Settings == nil {
			u.Settings = map[string]string{}
		}
	}
	c, err := a.node.Update(ctx, r.PathValue("id"), u)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, connectionOf(c), nil
}

// lifecycle serves a move (pause, activate, delete, revoke) that takes no
// body but may carry If-Match.
func (a *API) lifecycle(move func(context.Context, string) (*tether.Connection, error)) handlerFunc {
	return func(ctx context.Context, r *http.Request) (int, any, error) {
		if err := a.decode(r, &struct{}{}); err != nil {
			return 0, nil, err
		}
		ctx, err := ifMatch(ctx, r)
		if err != nil {
			return 0, nil, err
		}
		c, err := move(ctx, r.PathValue("id"))
		if err != nil {
			return 0, nil, err
		}
		return http.StatusOK, connectionOf(c), nil
	}
}

func (a *API) events(ctx context.Context, r *http.Request) (int, any, error) {
	n, err := limit(r)
	if err != nil {
		return 0, nil, err
	}
	var after int64
	if s := r.URL.Query().Get("cursor"); s != "" {
		if after, err = strconv.ParseInt(s, 10, 64); err != nil || after < 0 {
			return 0, nil, invalid("cursor must be one this API gave")
		}
	}
	evs, err := a.node.Events(ctx, r.PathValue("id"), after, n)
	if err != nil {
		return 0, nil, err
	}
	out := eventsJSON{Events: eventsOf(evs)}
	if len(evs) > 0 && len(evs) == tether.EventLimit(n) {
		out.NextCursor = strconv.FormatInt(evs[len(evs)-1].Seq, 10)
	}
	return http.StatusOK, out, nil
}

type codeRequest struct {
	Code string `json:"code"`
	// LocalName, in accept, overrides the short name the inviter proposed
	// for this side.
	LocalName string `json:"local_name,omitempty"`
}

func (a *API) preview(ctx context.Context, r *http.Request) (int, any, error) {
	var req codeRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.LocalName != "" {
		return 0, nil, invalid("local_name is for accept")
	}
	inv, err := a.node.Preview(req.Code)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, invitationOf(inv), nil
}

func (a *API) accept(ctx context.Context, r *http.Request) (int, any, error) {
	var req codeRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	owner, _ := tether.OwnerOf(ctx)
	c, err := a.node.Accept(ctx, req.Code, tether.AcceptOptions{Owner: owner, LocalName: req.LocalName})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, connectionOf(c), nil
}

type probeRequest struct {
	// URL is the destination's URL, as a user typed it for "Initiate
	// connection".
	URL string `json:"url"`
}

// probe asks the instance at a destination URL what it is and what it
// supports (tether.Node.Probe), so the page offers only its modes.
func (a *API) probe(ctx context.Context, r *http.Request) (int, any, error) {
	var req probeRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	if req.URL == "" {
		return 0, nil, invalid("url is required")
	}
	info, err := a.node.Probe(ctx, req.URL)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, infoOf(*info), nil
}

// info answers this node's own Info: the modes to offer when the
// destination is private ("I don't have a URL").
func (a *API) info(context.Context, *http.Request) (int, any, error) {
	return http.StatusOK, infoOf(a.node.Info()), nil
}

type beginOrgRequest struct {
	Provider  string `json:"provider"`
	Name      string `json:"name"`
	LoginHint string `json:"login_hint"`
	Host      string `json:"host"`
}

func (a *API) beginOrg(ctx context.Context, r *http.Request) (int, any, error) {
	var req beginOrgRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	owner, _ := tether.OwnerOf(ctx)
	u, err := a.orgs.Begin(ctx, oauth.BeginRequest{Provider: req.Provider, Owner: owner, Name: req.Name, LoginHint: req.LoginHint, Host: req.Host})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, authorizeJSON{AuthorizationURL: u}, nil
}

type reauthorizeRequest struct {
	LoginHint string `json:"login_hint"`
	Host      string `json:"host"`
}

func (a *API) reauthorize(ctx context.Context, r *http.Request) (int, any, error) {
	var req reauthorizeRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	c, err := a.node.Get(ctx, r.PathValue("id"))
	if err != nil {
		return 0, nil, err
	}
	if c.Kind != tether.KindOrg {
		return 0, nil, &tether.Error{Code: tether.CodeInvalidTransition, Message: "only an org connection is re-authorized with a login"}
	}
	u, err := a.orgs.Begin(ctx, oauth.BeginRequest{Provider: c.Provider, Owner: c.Owner, Name: c.Name, LoginHint: req.LoginHint, Host: req.Host, Reauthorize: c.ID})
	if err != nil {
		return 0, nil, err
	}
	return http.StatusOK, authorizeJSON{AuthorizationURL: u}, nil
}

type chooseRequest struct {
	Choice string `json:"choice"`
	OrgID  string `json:"org_id"`
}

func (a *API) chooseOrg(ctx context.Context, r *http.Request) (int, any, error) {
	var req chooseRequest
	if err := a.decode(r, &req); err != nil {
		return 0, nil, err
	}
	c, err := a.orgs.Choose(ctx, req.Choice, req.OrgID)
	if err != nil {
		return 0, nil, err
	}
	return http.StatusCreated, connectionOf(c), nil
}
