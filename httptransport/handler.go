package httptransport

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"path"
	"strings"

	"github.com/tetherkit/tether"
)

// errorBody is what an unsigned error answer carries.
type errorBody struct {
	Code    tether.Code `json:"code"`
	Message string      `json:"message"`
}

// HandlerConfig configures a Handler; zero values are defaults.
type HandlerConfig struct {
	// MaxBody bounds a request body; a larger one is refused (413) before it
	// is read whole. DefaultMaxBody when zero.
	MaxBody int64
	// Logger receives failures to write answers; discarded when nil.
	Logger *slog.Logger
	// PathRewritten must be set when something in front of the application
	// (a reverse proxy, an ingress) changes the request path, so the path
	// the application sees is not the one the caller addressed. Requests
	// are then bound to their endpoint, operation and body but not to the
	// exact path. Prefix stripping inside the application (http.StripPrefix,
	// routers) needs no setting: the original request line is used.
	PathRewritten bool
}

// Handler serves requests from other instances: mount it where the node's
// Endpoint points. It answers POST requests whose path ends in
// /v1/{operation}, whatever comes before, so it works under any prefix with
// http.ServeMux patterns ("/tether/") or other routers, without stripping
// the prefix.
//
// The one exception is /v1/info (tether.OpInfo), which answers GET and
// POST without authentication, 200 with the node's tether.Info as JSON,
// unsigned: what a partner's page asks before a connection exists
// (tether.Node.Probe). It reads no header or body of the request.
//
// Every answer to an authenticated request carries the node's signed token
// in the Tether-Auth header and the signed body, refusals included: a
// refusal (a paused or deleted connection, a clock too far off) is answered
// with the HTTP status of its code (tether.HTTPStatus) and, when the node
// asks the caller to wait, a Retry-After header. Requests refused before
// authentication get an unsigned JSON {"code", "message"} and their status.
//
// Set the http.Server's timeouts (see the package documentation):
// ReadHeaderTimeout (10 s), a bounded ReadTimeout (30 s: a body is at most
// MaxBody), IdleTimeout, and a WriteTimeout longer than the node's PollWait
// (60 s for the default 25 s), since the node holds a poll open for up to
// PollWait before it answers. A shorter WriteTimeout cuts every idle poll.
type Handler struct {
	node      tether.Handler
	maxBody   int64
	log       *slog.Logger
	rewritten bool
}

// NewHandler returns an http.Handler serving node.
func NewHandler(node tether.Handler, cfg HandlerConfig) *Handler {
	h := &Handler{node: node, maxBody: cfg.MaxBody, log: cfg.Logger, rewritten: cfg.PathRewritten}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBody
	}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	return h
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	op, ok := operation(r.URL.Path)
	switch {
	case !ok:
		writeError(w, http.StatusNotFound, &tether.Error{Code: tether.CodeProtocol, Message: "no such tether operation"})
		return
	case op == tether.OpInfo:
		h.serveInfo(w, r)
		return
	case r.Method != http.MethodPost:
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, &tether.Error{Code: tether.CodeInvalid, Message: "tether requests are POST"})
		return
	case r.URL.RawQuery != "" || r.URL.ForceQuery:
		writeError(w, http.StatusBadRequest, &tether.Error{Code: tether.CodeInvalid, Message: "tether requests take no query"})
		return
	case r.ContentLength > h.maxBody:
		writeError(w, http.StatusRequestEntityTooLarge, &tether.Error{Code: tether.CodeTooLarge, Message: "request body is too large"})
		return
	}
	auth, ok := strings.CutPrefix(r.Header.Get(authHeader), authScheme)
	if !ok || auth == "" {
		writeError(w, http.StatusUnauthorized, &tether.Error{Code: tether.CodeUnauthenticated, Message: "request refused"})
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, h.maxBody))
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			writeError(w, http.StatusRequestEntityTooLarge, &tether.Error{Code: tether.CodeTooLarge, Message: "request body is too large"})
			return
		}
		writeError(w, http.StatusBadRequest, &tether.Error{Code: tether.CodeInvalid, Message: "could not read the request body"})
		return
	}
	resp, err := h.node.Handle(r.Context(), &tether.Request{Op: op, Auth: auth, Body: body, Target: h.target(r)})
	if err == nil && (resp == nil || resp.Auth == "") {
		err = &tether.Error{Code: tether.CodeInternal, Message: "internal error"}
	}
	if err != nil {
		writeNodeError(w, err)
		return
	}
	status := http.StatusOK
	if resp.Code != "" {
		status = tether.HTTPStatus(resp.Code)
		setRetryAfter(w.Header(), resp.RetryAfter)
	}
	w.Header().Set(answerHeader, resp.Auth)
	if err := writeAnswer(w, status, resp.Body); err != nil {
		h.log.DebugContext(r.Context(), "httptransport: write answer", "err", err)
	}
}

// serveInfo answers OpInfo, for GET and POST, without authentication: the
// node's unsigned Info. The Authorization header and the body are not read.
func (h *Handler) serveInfo(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method != http.MethodGet && r.Method != http.MethodPost:
		w.Header().Set("Allow", "GET, POST")
		writeError(w, http.StatusMethodNotAllowed, &tether.Error{Code: tether.CodeInvalid, Message: "tether info is GET or POST"})
		return
	case r.URL.RawQuery != "" || r.URL.ForceQuery:
		writeError(w, http.StatusBadRequest, &tether.Error{Code: tether.CodeInvalid, Message: "tether requests take no query"})
		return
	}
	resp, err := h.node.Handle(r.Context(), &tether.Request{Op: tether.OpInfo, Target: h.target(r)})
	if err == nil && resp == nil {
		err = &tether.Error{Code: tether.CodeInternal, Message: "internal error"}
	}
	if err != nil {
		writeNodeError(w, err)
		return
	}
	if err := writeAnswer(w, http.StatusOK, resp.Body); err != nil {
		h.log.DebugContext(r.Context(), "httptransport: write answer", "err", err)
	}
}

// target is the request target the caller addressed: the request line as
// received, before any prefix stripping.
func (h *Handler) target(r *http.Request) string {
	if h.rewritten {
		return ""
	}
	if u, err := url.ParseRequestURI(r.RequestURI); err == nil && r.RequestURI != "" {
		return u.RequestURI() // also turns an absolute-form target into its path
	}
	return r.URL.RequestURI()
}

// operation extracts the operation from a path ending in /v1/{op}.
func operation(p string) (tether.Op, bool) {
	dir, op := path.Split(p)
	if op == "" || path.Base(strings.TrimSuffix(dir, "/")) != pathVersion {
		return "", false
	}
	if o := tether.Op(op); o.Known() {
		return o, true
	}
	return "", false
}

// writeAnswer writes an answer: the headers every answer carries, status
// and body.
func writeAnswer(w http.ResponseWriter, status int, body []byte) error {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, err := w.Write(body)
	return err
}

// writeError answers with the error's code and message only, unsigned: the
// cause stays on this side.
// writeNodeError answers with the node's error: its code and message, or
// an internal error for anything that is not a *tether.Error.
func writeNodeError(w http.ResponseWriter, err error) {
	var e *tether.Error
	if !errors.As(err, &e) {
		e = &tether.Error{Code: tether.CodeInternal, Message: "internal error"}
	}
	writeError(w, tether.HTTPStatus(e.Code), e)
}

func writeError(w http.ResponseWriter, status int, e *tether.Error) {
	setRetryAfter(w.Header(), e.RetryAfter)
	msg := e.Message
	if msg == "" {
		msg = strings.ReplaceAll(string(e.Code), "_", " ")
	}
	b, _ := json.Marshal(errorBody{Code: e.Code, Message: msg})
	_ = writeAnswer(w, status, b)
}
