package adminapi

import (
	"html/template"
	"net/http"

	"github.com/tetherkit/tether/oauth"
)

// callback serves GET /orgs/callback, where the provider sends the
// user's login popup back. The login must be finished by the caller who
// began it. The page answers the window that opened the popup with a
// message (window.postMessage, to this origin only) and closes:
//
//	{"type": "tether.org", "connection": {...}}             connected
//	{"type": "tether.org", "choice": "...", "orgs": [...]}  pick one, then POST /orgs/choose
//	{"type": "tether.org", "error": {problem}}              refused
//
// Without an opener (the login ran in the same window) the page shows
// the outcome in words.
func (a *API) callback() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer") // the URL holds the code
		ctx, err := a.begin(r)
		if err != nil {
			a.finish(w, r, nil, err)
			return
		}
		a.orgs.Callback(a.finish).ServeHTTP(w, r.WithContext(ctx))
	})
}

type callbackMessage struct {
	Type       string          `json:"type"`
	Connection *connectionJSON `json:"connection,omitempty"`
	Choice     string          `json:"choice,omitempty"`
	Orgs       []oauth.Org     `json:"orgs,omitempty"`
	Replaces   string          `json:"replaces,omitempty"`
	Error      *Problem        `json:"error,omitempty"`
}

var callbackPage = template.Must(template.New("callback").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>{{.Title}}</title></head>
<body><p id="outcome">{{.Title}}</p>
<script>
(function () {
  var msg = {{.Message}};
  if (window.opener) {
    window.opener.postMessage(msg, window.location.origin);
    window.close();
  }
})();
</script></body></html>
`))

func (a *API) finish(w http.ResponseWriter, r *http.Request, res *oauth.Result, err error) {
	msg := callbackMessage{Type: "tether.org"}
	title := "Connected. You can close this window."
	status := http.StatusOK
	switch {
	case err != nil:
		p := a.problemOf(r, err)
		msg.Error, title, status = &p, "Not connected: "+p.Detail, p.Status
	case res.Connection != nil:
		msg.Connection = connectionOf(res.Connection)
	default:
		msg.Choice, msg.Orgs, msg.Replaces = res.Choice, res.Choices, res.Replaces
		if msg.Orgs == nil {
			msg.Orgs = []oauth.Org{}
		}
		title = "Choose the environment to connect in the window that opened this one."
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_ = callbackPage.Execute(w, struct {
		Title   string
		Message callbackMessage
	}{title, msg})
}
