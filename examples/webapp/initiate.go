package main

import (
	"net/http"
	"slices"
	"strings"

	"github.com/tetherkit/tether"
)

// The Initiate connection wizard: the destination's URL (or "I don't
// have a URL"), which the app probes; the configuration mode, among those
// both sides support; the names; then the invitation code to copy.

type destinationView struct {
	Endpoint    string
	Destination string
	NoURL       bool
	Error       string
}

func (a *app) initiateDestination(w http.ResponseWriter, r *http.Request, s *session) error {
	a.render(w, r, http.StatusOK, "initiate_destination.html", s, "Initiate connection", destinationView{Endpoint: a.node.Endpoint()})
	return nil
}

// modeOption is a configuration mode the wizard offers.
type modeOption struct {
	Mode  tether.Mode
	Label string
	About string
}

func modeAbout(m tether.Mode) string {
	switch m {
	case tether.ModeBasic:
		return "A ready-made mapping of the common ticket fields: nothing to configure."
	case tether.ModeVisual:
		return "Map fields and statuses in a visual editor."
	case tether.ModeScript:
		return "Sync rules written as scripts on each side, for full control."
	}
	return ""
}

type modeView struct {
	Destination string // "" for a private destination
	DestName    string // what the destination calls itself
	Protocol    string
	Modes       []modeOption
	Chosen      tether.Mode
	Error       string
}

// initiateMode takes the destination: it probes the URL, or, for a
// private destination that cannot be asked, offers this instance's own
// modes.
func (a *app) initiateMode(w http.ResponseWriter, r *http.Request, s *session) error {
	f := r.PostForm
	dest, noURL := strings.TrimSpace(f.Get("destination")), f.Get("no_url") == "1"
	again := func(msg string) error {
		a.render(w, r, http.StatusUnprocessableEntity, "initiate_destination.html", s, "Initiate connection",
			destinationView{Endpoint: a.node.Endpoint(), Destination: dest, NoURL: noURL, Error: msg})
		return nil
	}
	own := a.node.Info()
	v := modeView{Protocol: own.Protocol}
	modes := own.Modes
	switch {
	case noURL:
		dest = ""
	case dest == "":
		return again("Enter the partner's URL, or check \"I don't have a URL\" when the partner runs a private instance.")
	default:
		info, err := a.node.Probe(r.Context(), dest)
		if err != nil {
			return again(probeProblem(dest, err))
		}
		v.Destination, v.DestName, v.Protocol = dest, info.Name, info.Protocol
		// The destination's modes, in its order of preference, that this
		// instance supports too.
		modes = slices.DeleteFunc(slices.Clone(info.Modes), func(m tether.Mode) bool { return !slices.Contains(own.Modes, m) })
		if len(modes) == 0 {
			return again("The instance at " + dest + " supports no configuration mode this help desk offers: a connection cannot be set up.")
		}
	}
	for _, m := range modes {
		v.Modes = append(v.Modes, modeOption{Mode: m, Label: modeLabel(m), About: modeAbout(m)})
	}
	v.Chosen = modes[0]
	a.render(w, r, http.StatusOK, "initiate_mode.html", s, "Initiate connection", v)
	return nil
}

// probeProblem says why probing dest failed, in words a user can act on.
func probeProblem(dest string, err error) string {
	switch tether.ErrorCode(err) {
	case tether.CodeUnavailable, tether.CodeDeadlineExceeded:
		return "No tether instance answered at " + dest + ". Check the URL: it is the one the partner's Connections page shows, such as https://partner.example.com/tether."
	case tether.CodeProtocol, tether.CodeTooLarge:
		return "What answers at " + dest + " is not a tether instance. Check the URL."
	case tether.CodeURLRefused:
		return message(err) + " This help desk contacts only https URLs on public addresses."
	}
	return message(err)
}

type detailsFormView struct {
	Destination string
	DestName    string
	Mode        tether.Mode
	LocalName   string
	RemoteName  string
	Name        string
	Description string
	Error       string
}

// initiateDetails takes the mode and asks for the names.
func (a *app) initiateDetails(w http.ResponseWriter, r *http.Request, s *session) error {
	f := r.PostForm
	v := detailsFormView{
		Destination: f.Get("destination"), DestName: f.Get("dest_name"), Mode: tether.Mode(f.Get("mode")),
		LocalName: s.Tenant.Name, RemoteName: f.Get("dest_name"),
	}
	if v.Mode == "" {
		return back(w, r, s, "/connections/initiate", true, "Choose a configuration mode.")
	}
	a.render(w, r, http.StatusOK, "initiate_details.html", s, "Initiate connection", v)
	return nil
}

// initiate creates the pending connection and shows its invitation code.
func (a *app) initiate(w http.ResponseWriter, r *http.Request, s *session) error {
	f := r.PostForm
	v := detailsFormView{
		Destination: f.Get("destination"), DestName: f.Get("dest_name"), Mode: tether.Mode(f.Get("mode")),
		LocalName: strings.TrimSpace(f.Get("local_name")), RemoteName: strings.TrimSpace(f.Get("remote_name")),
		Name: strings.TrimSpace(f.Get("name")), Description: strings.TrimSpace(f.Get("description")),
	}
	c, code, err := a.node.Initiate(scoped(r, s), tether.InitiateRequest{
		Owner: s.Tenant.ID, Destination: v.Destination, Mode: v.Mode,
		LocalName: v.LocalName, RemoteName: v.RemoteName, Name: v.Name, Description: v.Description,
	})
	if err != nil {
		if code := tether.ErrorCode(err); code == tether.CodeInternal || code == tether.CodeCanceled {
			return err
		}
		v.Error = fieldMessage(err)
		a.render(w, r, http.StatusUnprocessableEntity, "initiate_details.html", s, "Initiate connection", v)
		return nil
	}
	s.keepCode(c.ID, code)
	http.Redirect(w, r, "/connections/"+c.ID+"/invitation", http.StatusSeeOther)
	return nil
}

// fieldMessage is message(err) with the library's field names replaced
// by the form's labels.
func fieldMessage(err error) string {
	msg := message(err)
	for field, label := range map[string]string{
		"LocalName: ": "Your short name: ", "RemoteName: ": "The partner's short name: ",
		"Name: ": "Connection name: ", "Description: ": "Description: ", "Destination: ": "Destination URL: ",
		"Rules: ": "Rules: ", "Settings: ": "Settings: ",
	} {
		if rest, ok := strings.CutPrefix(msg, field); ok {
			return label + rest
		}
	}
	return msg
}
