package main

import (
	"cmp"
	"context"
	"fmt"
	"html/template"
	"io/fs"
	"maps"
	"net/http"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/tetherkit/tether"
)

// parsePages parses each page of templates/ with the layout.
func parsePages() (map[string]*template.Template, error) {
	funcs := template.FuncMap{
		"when":       when,
		"at":         func(t time.Time) string { return t.Local().Format("15:04:05") },
		"stamp":      func(t time.Time) string { return t.Local().Format(time.RFC3339) },
		"modeLabel":  modeLabel,
		"eventLabel": eventLabel,
		"title":      func(s tether.Status) string { return strings.ToUpper(string(s[:1])) + string(s[1:]) },
	}
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, name := range names {
		base := path.Base(name)
		if base == "layout.html" {
			continue
		}
		t, err := template.New(base).Funcs(funcs).ParseFS(templateFS, "templates/layout.html", name)
		if err != nil {
			return nil, err
		}
		pages[base] = t
	}
	return pages, nil
}

// when shows a time briefly: the time of day today, with the date
// otherwise.
func when(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	t, now := t.Local(), time.Now()
	switch {
	case t.Year() == now.Year() && t.YearDay() == now.YearDay():
		return t.Format("15:04")
	case t.Year() == now.Year():
		return t.Format("Jan 2 15:04")
	}
	return t.Format("Jan 2 2006 15:04")
}

func modeLabel(m tether.Mode) string {
	switch m {
	case tether.ModeBasic:
		return "Basic"
	case tether.ModeVisual:
		return "Visual"
	case tether.ModeScript:
		return "Script"
	}
	return string(m)
}

func eventLabel(t tether.EventType) string {
	labels := map[tether.EventType]string{
		tether.EventCreated: "Created", tether.EventAccepted: "Accepted", tether.EventUpdated: "Edited",
		tether.EventPaused: "Paused", tether.EventActivated: "Activated", tether.EventDeleted: "Deleted",
		tether.EventRevoked: "Invitation revoked", tether.EventExpired: "Invitation expired",
		tether.EventAuthLost: "Access lost", tether.EventReauthorized: "Re-authorized",
		tether.EventPeerPaused: "Paused by the partner", tether.EventPeerActivated: "Activated by the partner",
		tether.EventKeyChanged: "Key changed", tether.EventKeyRevoked: "Partner's key revoked",
		tether.EventPeerUnreachable: "Partner unreachable", tether.EventPeerReachable: "Partner reachable again",
		tether.EventAuthFailing: "Refresh failing", tether.EventAuthRecovered: "Refresh working again",
		tether.EventCredentialsGone: "Credentials removed", tether.EventOrgRefreshed: "Sandbox refreshed",
	}
	return cmp.Or(labels[t], string(t))
}

// connView is a connection as the pages show it.
type connView struct {
	*tether.Connection
	KindLabel string // "Peer", or the provider: "Salesforce Sandbox"
	Health    string
	HealthBad bool
}

// view describes c for a page; events, when given, are its history.
func (a *app) view(ctx context.Context, c *tether.Connection, events []tether.Event) connView {
	v := connView{Connection: c, KindLabel: "Peer"}
	if c.Kind == tether.KindOrg {
		v.KindLabel = providerLabel(c.Provider)
	}
	v.Health, v.HealthBad = a.health(ctx, c, events)
	return v
}

// health says in a few words how talking to the other side goes.
func (a *app) health(ctx context.Context, c *tether.Connection, events []tether.Event) (string, bool) {
	switch {
	case c.Status == tether.StatusDeleted:
		return "", false
	case c.Kind == tether.KindOrg && c.Status == tether.StatusInactive:
		return "access withdrawn: re-authorize", true
	case c.Kind == tether.KindOrg:
		if r, ok := a.checks.get(c.ID); ok {
			return r.Text + " · checked " + when(r.At), !r.OK
		}
		return "authorized", false
	case c.Status == tether.StatusPending && c.Role == tether.RoleInitiator:
		return "waiting for the partner to accept · code expires " + when(c.InvitationExpires), false
	case c.Status == tether.StatusPending:
		return "waiting for the partner to confirm", false
	case c.Status == tether.StatusInactive:
		return "the partner's key was revoked: re-pair", true
	case c.Unreachable():
		// The peer_unreachable event says since when.
		since := a.unreachableSince(ctx, c, events)
		if since.IsZero() {
			return "partner unreachable", true
		}
		return "partner unreachable since " + when(since), true
	case c.Health.Failures > 0:
		return fmt.Sprintf("retrying (%d failed): %s", c.Health.Failures, c.Health.LastError), true
	case c.RemoteStatus == tether.StatusPaused:
		return "paused by the partner", false
	case !c.Health.LastContact.IsZero():
		return "OK · last contact " + when(c.Health.LastContact), false
	}
	return "no contact yet", false
}

// unreachableSince is when c's partner was found unreachable: the time of
// its latest peer_unreachable event, or its last contact.
func (a *app) unreachableSince(ctx context.Context, c *tether.Connection, events []tether.Event) time.Time {
	if events == nil {
		events, _ = a.history(ctx, c.ID)
	}
	for _, e := range events { // newest first
		if e.Type == tether.EventPeerUnreachable {
			return e.Time
		}
	}
	return c.Health.LastContact
}

// history is connection id's events, newest first.
func (a *app) history(ctx context.Context, id string) ([]tether.Event, error) {
	var all []tether.Event
	var after int64
	for len(all) < 10*tether.MaxEventPage {
		evs, err := a.node.Events(ctx, id, after, tether.MaxEventPage)
		if err != nil {
			return nil, err
		}
		all = append(all, evs...)
		if len(evs) < tether.MaxEventPage {
			break
		}
		after = evs[len(evs)-1].Seq
	}
	slices.Reverse(all)
	return all, nil
}

type listView struct {
	Connections []connView
	Deleted     bool // the deleted ones are listed
	Endpoint    string
}

// list is the Connections page: the tenant's connections, newest first,
// the deleted ones on a tab of their own.
func (a *app) list(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx := scoped(r, s)
	deleted := r.URL.Query().Get("show") == "deleted"
	var conns []*tether.Connection
	opts := tether.ListOptions{Limit: tether.MaxPageSize}
	for {
		page, next, err := a.node.List(ctx, opts)
		if err != nil {
			return err
		}
		for _, c := range page {
			if (c.Status == tether.StatusDeleted) == deleted {
				conns = append(conns, c)
			}
		}
		if next == "" {
			break
		}
		opts.After = next
	}
	slices.SortStableFunc(conns, func(x, y *tether.Connection) int { return y.CreatedAt.Compare(x.CreatedAt) })
	v := listView{Deleted: deleted, Endpoint: a.node.Endpoint()}
	for _, c := range conns {
		v.Connections = append(v.Connections, a.view(ctx, c, nil))
	}
	a.render(w, r, http.StatusOK, "list.html", s, "Connections", v)
	return nil
}

type detailsView struct {
	connView
	Events     []tether.Event
	Messages   []received
	Check      bool   // an org's API can be called now
	CheckURL   string // what the check calls
	HasCode    bool   // the invitation code can be shown again
	LoginHint  string // for re-authorizing with the demo provider
	CanSend    bool
	CanOrgAuth bool // org logins are configured
}

// details is a connection's page: its fields, what can be done with it,
// and its history, newest first.
func (a *app) details(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx := scoped(r, s)
	c, err := a.node.Get(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	evs, err := a.history(ctx, c.ID)
	if err != nil {
		return err
	}
	if c.Status != tether.StatusPending {
		s.forgetCode(c.ID)
	}
	v := detailsView{connView: a.view(ctx, c, evs), Events: evs, HasCode: s.code(c.ID) != "", CanOrgAuth: a.orgs != nil}
	if c.Kind == tether.KindPeer {
		v.Messages = a.inbox.recent(c.ID)
		v.CanSend = c.Status == tether.StatusActive || c.Status == tether.StatusPaused
	} else {
		v.CheckURL = a.checkURL(c)
		v.Check = c.Status == tether.StatusActive && a.orgs != nil && v.CheckURL != ""
		if c.Provider == demoProvider {
			v.LoginHint = c.RemoteName // the demo provider's accounts are named by the login hint
		}
	}
	a.render(w, r, http.StatusOK, "details.html", s, c.Name, v)
	return nil
}

// invitation shows the code of an invitation initiated in this session,
// until the partner accepted it.
func (a *app) invitation(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx := scoped(r, s)
	c, err := a.node.Get(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	if c.Kind != tether.KindPeer || c.Role != tether.RoleInitiator {
		return &tether.Error{Code: tether.CodeNotFound}
	}
	v := struct {
		connView
		Code string
	}{a.view(ctx, c, nil), s.code(c.ID)}
	a.render(w, r, http.StatusOK, "invitation.html", s, "Invitation code", v)
	return nil
}

type editView struct {
	*tether.Connection
	Settings string // key=value lines
	Error    string
}

func (a *app) editPage(w http.ResponseWriter, r *http.Request, s *session) error {
	c, err := a.node.Get(scoped(r, s), r.PathValue("id"))
	if err != nil {
		return err
	}
	if c.Status == tether.StatusDeleted {
		return back(w, r, s, "/connections/"+c.ID, true, "A deleted connection cannot be edited.")
	}
	a.render(w, r, http.StatusOK, "edit.html", s, "Edit "+c.Name, editView{Connection: c, Settings: settingsText(c.Settings)})
	return nil
}

// edit saves the edit form, unless the connection changed since the form
// was shown.
func (a *app) edit(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx := scoped(r, s)
	c, err := a.node.Get(ctx, r.PathValue("id"))
	if err != nil {
		return err
	}
	f := r.PostForm
	name, desc, rules := f.Get("name"), f.Get("description"), strings.ReplaceAll(f.Get("rules"), "\r\n", "\n")
	settings, bad := parseSettings(f.Get("settings"))
	redo := func(msg string) error {
		e := *c
		e.Name, e.Description, e.Rules = name, desc, rules
		a.render(w, r, http.StatusUnprocessableEntity, "edit.html", s, "Edit "+c.Name, editView{Connection: &e, Settings: f.Get("settings"), Error: msg})
		return nil
	}
	if bad != "" {
		return redo(bad)
	}
	var version int64
	if _, err := fmt.Sscan(f.Get("version"), &version); err != nil {
		return redo("The form is incomplete: reload the page.")
	}
	u := tether.Update{Name: &name, Description: &desc}
	if c.Kind == tether.KindPeer {
		u.Rules = &rules
	}
	if !maps.Equal(settings, c.Settings) {
		u.Settings = settings
	}
	if _, err := a.node.Update(tether.IfVersion(ctx, version), c.ID, u); err != nil {
		if tether.ErrorCode(err) == tether.CodeConflict {
			return redo("The connection changed since you opened this form: reload the page to see the change, then edit again.")
		}
		if code := tether.ErrorCode(err); code == tether.CodeInvalid || code == tether.CodeInvalidTransition {
			return redo(message(err))
		}
		return err
	}
	return back(w, r, s, "/connections/"+c.ID, false, "Saved.")
}

// settingsText shows settings as key=value lines, sorted.
func settingsText(m map[string]string) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(m)) {
		b.WriteString(k + "=" + m[k] + "\n")
	}
	return b.String()
}

// parseSettings reads key=value lines; the second result says what is
// wrong, "" when nothing is.
func parseSettings(s string) (map[string]string, string) {
	m := map[string]string{}
	for i, line := range strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Sprintf("Settings, line %d: write key=value.", i+1)
		}
		m[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return m, ""
}

// act runs a button of the details page.
func (a *app) act(w http.ResponseWriter, r *http.Request, s *session) error {
	ctx := scoped(r, s)
	id := r.PathValue("id")
	c, err := a.node.Get(ctx, id)
	if err != nil {
		return err
	}
	to := "/connections/" + c.ID
	var done string
	switch r.PathValue("action") {
	case "pause":
		_, err = a.node.Pause(ctx, id)
		done = "Paused: messages wait on both sides until you activate it."
	case "activate":
		_, err = a.node.Activate(ctx, id)
		done = "Active."
	case "revoke":
		_, err = a.node.RevokeInvitation(ctx, id)
		done = "Invitation revoked: its code no longer works."
		s.forgetCode(id)
	case "delete":
		if c.Kind == tether.KindOrg && a.orgs != nil {
			_, err = a.orgs.Delete(ctx, id) // also revokes the grant at the provider
		} else {
			_, err = a.node.Delete(ctx, id)
		}
		done = "Deleted. Its history is kept."
		s.forgetCode(id)
	case "check":
		res := a.checkOrg(ctx, c)
		return back(w, r, s, to, !res.OK, "The org's API: "+res.Text+".")
	case "send":
		text := strings.TrimSpace(r.PostForm.Get("text"))
		if text == "" {
			return back(w, r, s, to, true, "Write a message to send.")
		}
		_, err = a.node.Send(ctx, id, []byte(text))
		done = "Message sent: it is delivered in order, also after a pause."
	default:
		return &tether.Error{Code: tether.CodeNotFound}
	}
	if err != nil {
		if code := tether.ErrorCode(err); code == tether.CodeNotFound || code == tether.CodeInternal {
			return err
		}
		return back(w, r, s, to, true, message(err))
	}
	return back(w, r, s, to, false, done)
}
