package adminapi

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tetherkit/tether"
	"github.com/tetherkit/tether/oauth"
)

// Caller is who makes a request, as the host's Authenticate says: the
// owner (team, tenant) every call is scoped to, and the actor recorded in
// the events the call causes (a user ID, say).
type Caller struct {
	Owner string
	Actor string
}

// Config configures an API.
type Config struct {
	// Node is the tether node the API manages. Required.
	Node *tether.Node

	// Authenticate maps a request to its caller, typically from the host's
	// session cookie, or refuses it with an error (answered 401, its text
	// not shown). Required: every call is scoped to the caller's Owner,
	// and a connection of another owner is answered exactly as one that
	// does not exist.
	Authenticate func(r *http.Request) (Caller, error)

	// Orgs, when set, serves the org-connection routes: begin a login at
	// a provider, its callback, the Dynamics 365 environment choice, and
	// re-authorize. Its RedirectURL must point at this API's
	// /orgs/callback route.
	Orgs *oauth.Manager

	// MaxBody caps request bodies, in bytes; 0 means 64 KiB.
	MaxBody int64

	// Logger receives internal errors, which callers see only as
	// "internal error". nil means slog.Default().
	Logger *slog.Logger
}

// API is the admin API: an http.Handler the host mounts under a prefix
// of its choice (with http.StripPrefix).
type API struct {
	node    *tether.Node
	auth    func(*http.Request) (Caller, error)
	orgs    *oauth.Manager
	maxBody int64
	log     *slog.Logger
	mux     *http.ServeMux
	wake    waker
}

// DefaultMaxBody is the request body cap when Config.MaxBody is 0.
const DefaultMaxBody = 64 << 10

// New returns the API for cfg.
func New(cfg Config) (*API, error) {
	if cfg.Node == nil || cfg.Authenticate == nil {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: "adminapi: new", Message: "Node and Authenticate are required"}
	}
	a := &API{
		node:    cfg.Node,
		auth:    cfg.Authenticate,
		orgs:    cfg.Orgs,
		maxBody: cfg.MaxBody,
		log:     cfg.Logger,
		mux:     http.NewServeMux(),
		wake:    waker{ch: make(chan struct{})},
	}
	if a.maxBody <= 0 {
		a.maxBody = DefaultMaxBody
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.routes()
	return a, nil
}

func (a *API) routes() {
	a.handle("GET /connections", a.list)
	a.handle("POST /connections", a.initiate)
	a.handle("GET /connections/{id}", a.get)
	a.handle("PATCH /connections/{id}", a.edit)
	a.handle("DELETE /connections/{id}", a.lifecycle(a.node.Delete))
	a.handle("POST /connections/{id}/pause", a.lifecycle(a.node.Pause))
	a.handle("POST /connections/{id}/activate", a.lifecycle(a.node.Activate))
	a.handle("POST /connections/{id}/revoke", a.lifecycle(a.node.RevokeInvitation))
	a.handle("GET /connections/{id}/events", a.events)
	a.handle("GET /events", a.feed)
	a.mux.HandleFunc("GET /events/stream", a.stream)
	a.handle("POST /invitations/preview", a.preview)
	a.handle("POST /invitations/accept", a.accept)
	a.handle("POST /probe", a.probe)
	a.handle("GET /info", a.info)
	if a.orgs != nil {
		a.handle("POST /orgs", a.beginOrg)
		a.handle("POST /orgs/choose", a.chooseOrg)
		a.handle("POST /connections/{id}/reauthorize", a.reauthorize)
		a.mux.Handle("GET /orgs/callback", a.callback())
	}
	a.mux.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openAPI)
	})
	a.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if allow := a.allowed(r); allow != "" {
			w.Header().Set("Allow", allow)
			a.problem(w, r, errMethod)
			return
		}
		a.problem(w, r, &tether.Error{Code: tether.CodeNotFound, Message: "no such route"})
	})
}

var errMethod = &tether.Error{Code: tether.CodeInvalid, Message: "the route does not take this method"}

// allowed returns the methods r's path takes, comma-separated, or "" when
// no route has the path.
func (a *API) allowed(r *http.Request) string {
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete} {
		r2 := r.Clone(r.Context())
		r2.Method = m
		if _, pattern := a.mux.Handler(r2); pattern != "/" && pattern != "" {
			allow = append(allow, m)
		}
	}
	return strings.Join(allow, ", ")
}

//go:embed openapi.json
var openAPI []byte

// OpenAPI returns the OpenAPI 3 description of the API, also served at
// GET /openapi.json.
func OpenAPI() []byte { return append([]byte(nil), openAPI...) }

// ServeHTTP serves the API.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	a.mux.ServeHTTP(w, r)
}

// handlerFunc is a route: it returns the status and the value to answer
// with as JSON, or an error answered as a problem.
type handlerFunc func(ctx context.Context, r *http.Request) (int, any, error)

// handle registers a route that authenticates its caller, checks a
// state-changing request's origin and content type, and scopes the
// request's context to the caller.
func (a *API) handle(pattern string, h handlerFunc) {
	a.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		ctx, err := a.begin(r)
		if err != nil {
			a.problem(w, r, err)
			return
		}
		status, v, err := h(ctx, r)
		if err != nil {
			a.problem(w, r, err)
			return
		}
		if c, ok := v.(*connectionJSON); ok {
			w.Header().Set("ETag", etag(c.version))
		}
		writeJSON(w, status, v)
	})
}

// begin checks a request and returns its context, scoped to its caller.
func (a *API) begin(r *http.Request) (context.Context, error) {
	if changes(r.Method) {
		if err := sameOrigin(r); err != nil {
			return nil, err
		}
	}
	caller, err := a.auth(r)
	if err == nil && caller.Owner == "" {
		// An empty owner would scope nothing: refused, never "all".
		a.log.WarnContext(r.Context(), "adminapi: Authenticate returned a caller without an owner: refused")
		err = errNoOwner
	}
	if err != nil {
		return nil, &tether.Error{Code: tether.CodeUnauthenticated, Message: "not signed in"}
	}
	ctx := tether.WithOwner(r.Context(), caller.Owner)
	if caller.Actor != "" {
		ctx = tether.WithActor(ctx, caller.Actor)
	}
	return ctx, nil
}

var errNoOwner = errors.New("no owner")

// changes reports whether method may change state.
func changes(method string) bool {
	return method != http.MethodGet && method != http.MethodHead && method != http.MethodOptions
}

// errCrossSite is the answer to a state-changing request another site may
// have made.
var errCrossSite = &tether.Error{Code: tether.CodeInvalid, Message: "state-changing requests must be sent with Content-Type: application/json from this site"}

// sameOrigin refuses a state-changing request a cross-site page could
// make with the user's cookies: one without a JSON content type (an HTML
// form or a "simple" fetch cannot send that without a CORS preflight,
// which this API never approves), or one the browser marks as cross-site.
func sameOrigin(r *http.Request) error {
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/json" {
		return errCrossSite
	}
	if s := r.Header.Get("Sec-Fetch-Site"); s == "cross-site" || s == "same-site" {
		return errCrossSite
	}
	return nil
}

// decode reads r's JSON body into v: at most the API's MaxBody bytes, no
// unknown field, one value. An empty body is an empty object.
func (a *API) decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, a.maxBody+1))
	if err != nil {
		return &tether.Error{Code: tether.CodeInvalid, Message: "could not read the request body"}
	}
	if int64(len(body)) > a.maxBody {
		return &tether.Error{Code: tether.CodeTooLarge, Message: "the request body is over " + strconv.FormatInt(a.maxBody, 10) + " bytes"}
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		body = []byte("{}")
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &tether.Error{Code: tether.CodeInvalid, Message: "the request body is not the expected JSON: " + jsonProblem(err)}
	}
	if dec.More() {
		return &tether.Error{Code: tether.CodeInvalid, Message: "the request body holds more than one JSON value"}
	}
	return nil
}

// jsonProblem says what is wrong with a body without echoing its values.
func jsonProblem(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return "syntax error at byte " + strconv.FormatInt(se.Offset, 10)
	case errors.As(err, &te):
		return "field " + strconv.Quote(te.Field) + " has the wrong type"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "the body ends early"
	}
	return "not a JSON object"
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Problem is the body of an error answer (RFC 9457,
// application/problem+json), with tether's stable error code.
type Problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	Code   string `json:"code"`
	// RetryAfterSeconds, when set, is how long to wait before retrying.
	RetryAfterSeconds int `json:"retry_after_seconds,omitempty"`
}

// ProblemType is the prefix of a Problem's Type; the code follows it.
const ProblemType = "https://github.com/tetherkit/tether/blob/main/adminapi/doc.go#"

// problem answers err as a problem.
func (a *API) problem(w http.ResponseWriter, r *http.Request, err error) {
	p := a.problemOf(r, err)
	if p.RetryAfterSeconds > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(p.RetryAfterSeconds))
	}
	if p.Code == string(tether.CodeUnauthenticated) {
		w.Header().Set("WWW-Authenticate", `Session realm="tether"`)
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(p.Status)
	_ = json.NewEncoder(w).Encode(p)
}

// problemOf is the problem for err. A connection of another owner and
// one that does not exist get the same answer, and an internal error's
// text stays in the log.
func (a *API) problemOf(r *http.Request, err error) Problem {
	code := tether.ErrorCode(err)
	status := tether.HTTPStatus(code)
	p := Problem{Code: string(code)}
	var e *tether.Error
	if errors.As(err, &e) {
		p.Detail = e.Message
		if e.RetryAfter > 0 {
			p.RetryAfterSeconds = int((e.RetryAfter + time.Second - 1) / time.Second)
		}
	}
	switch {
	case err == errMethod:
		status = http.StatusMethodNotAllowed
	case code == tether.CodeNotFound && r.Pattern == "/":
		p.Detail = "no such route"
	case code == tether.CodeNotFound && r.PathValue("id") != "":
		// The same words whether the connection is missing or another
		// owner's, whatever the Store said.
		p.Detail = "no such connection"
	case code == tether.CodeConflict && r.Header.Get("If-Match") != "":
		status = http.StatusPreconditionFailed
	case status >= 500 && code != tether.CodeUnavailable && code != tether.CodePaused && code != tether.CodeDeadlineExceeded:
		a.log.ErrorContext(r.Context(), "adminapi: internal error", "route", r.Pattern, "err", err)
		p.Detail = "internal error"
	}
	if p.Detail == "" {
		p.Detail = strings.ReplaceAll(string(code), "_", " ")
	}
	p.Type, p.Title, p.Status = ProblemType+string(code), http.StatusText(status), status
	return p
}
