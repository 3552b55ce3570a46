package main

import (
	"net/http"
	"strings"

	"github.com/tetherkit/tether"
)

// Accept invitation: paste the code, see who invites and to what, then
// confirm.

type acceptView struct {
	Code     string
	Endpoint string
	Error    string
}

func (a *app) acceptPage(w http.ResponseWriter, r *http.Request, s *session) error {
	a.render(w, r, http.StatusOK, "accept.html", s, "Accept invitation", acceptView{Endpoint: a.node.Endpoint()})
	return nil
}

type previewView struct {
	*tether.Invitation
	Code      string
	ModeAbout string
	LocalName string
	Error     string
}

// acceptPreview verifies the pasted code, offline, and shows what it
// says.
func (a *app) acceptPreview(w http.ResponseWriter, r *http.Request, s *session) error {
	code := strings.TrimSpace(r.PostForm.Get("code"))
	if code == "" {
		a.render(w, r, http.StatusUnprocessableEntity, "accept.html", s, "Accept invitation", acceptView{Endpoint: a.node.Endpoint(), Error: "Paste the invitation code your partner sent you."})
		return nil
	}
	inv, err := a.node.Preview(code)
	if err != nil {
		a.render(w, r, http.StatusUnprocessableEntity, "accept.html", s, "Accept invitation", acceptView{Code: code, Endpoint: a.node.Endpoint(), Error: codeProblem(err)})
		return nil
	}
	a.render(w, r, http.StatusOK, "accept_preview.html", s, "Accept invitation", previewView{Invitation: inv, Code: code, ModeAbout: modeAbout(inv.Mode), LocalName: inv.AcceptorName})
	return nil
}

// codeProblem says what is wrong with a pasted code.
func codeProblem(err error) string {
	switch tether.ErrorCode(err) {
	case tether.CodeDamagedCode:
		return "The code is damaged: a character was changed or lost in copying. Copy it again, whole."
	case tether.CodeMalformed, tether.CodeBadSignature, tether.CodeUnknownKey:
		return "This is not a valid invitation code. Copy it again, whole, from the partner's Connections page."
	case tether.CodeExpired:
		return "The invitation has expired: ask the partner for a new one."
	}
	return message(err)
}

// accept accepts the code: with a public inviter the handshake completes
// now; a private inviter confirms when it next contacts this instance.
func (a *app) accept(w http.ResponseWriter, r *http.Request, s *session) error {
	f := r.PostForm
	code, local := strings.TrimSpace(f.Get("code")), strings.TrimSpace(f.Get("local_name"))
	c, err := a.node.Accept(scoped(r, s), code, tether.AcceptOptions{Owner: s.Tenant.ID, LocalName: local})
	if err != nil {
		if tether.ErrorCode(err) == tether.CodeInternal {
			return err
		}
		v := previewView{Code: code, LocalName: local, Error: codeProblem(err)}
		if inv, perr := a.node.Preview(code); perr == nil {
			v.Invitation, v.ModeAbout = inv, modeAbout(inv.Mode)
			a.render(w, r, http.StatusUnprocessableEntity, "accept_preview.html", s, "Accept invitation", v)
			return nil
		}
		a.render(w, r, http.StatusUnprocessableEntity, "accept.html", s, "Accept invitation", acceptView{Code: code, Endpoint: a.node.Endpoint(), Error: v.Error})
		return nil
	}
	if c.Status == tether.StatusPending {
		return back(w, r, s, "/connections/"+c.ID, false, "Accepted: waiting for the inviting instance to confirm. This page updates when it does.")
	}
	return back(w, r, s, "/connections/"+c.ID, false, "Connected: the connection is active on both sides.")
}
