package httptransport

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"path"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tetherkit/tether"
)

// DefaultMaxBody bounds request and response bodies when no limit is set.
// It covers a node's default MaxBody (about 1.4 MiB); raise it together with
// tether.Config.MaxPayload.
const DefaultMaxBody = 4 << 20

const (
	authScheme   = "Tether "
	authHeader   = "Authorization"
	answerHeader = "Tether-Auth"
	contentType  = "application/json"
	pathVersion  = "v1" // the segment before the operation in tether.OpURL
	maxErrorBody = 64 << 10
)

// errorBody is what an error answer carries.
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
// The node's Handle holds a poll open for up to its PollWait (25 s by
// default): the http.Server's WriteTimeout, if set, must be longer.
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
	if err != nil {
		var e *tether.Error
		if !errors.As(err, &e) {
			e = &tether.Error{Code: tether.CodeInternal, Message: "internal error"}
		}
		writeError(w, statusOf(e.Code), e)
		return
	}
	w.Header().Set("Content-Type", contentType)
	w.Header().Set(answerHeader, resp.Auth)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(resp.Body); err != nil {
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
	switch o := tether.Op(op); o {
	case tether.OpAccept, tether.OpStatus, tether.OpPush, tether.OpPoll, tether.OpClose, tether.OpResume:
		return o, true
	}
	return "", false
}

// writeError answers with the error's code and message only: the cause
// stays on this side.
func writeError(w http.ResponseWriter, status int, e *tether.Error) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(e.RetryAfter.Seconds()))))
	}
	msg := e.Message
	if msg == "" {
		msg = strings.ReplaceAll(string(e.Code), "_", " ")
	}
	b, _ := json.Marshal(errorBody{Code: e.Code, Message: msg})
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// statusOf maps error codes to HTTP statuses.
func statusOf(c tether.Code) int {
	switch c {
	case tether.CodeInvalid, tether.CodeMalformed, tether.CodeDamagedCode, tether.CodeProtocol, tether.CodeNotYetValid, tether.CodeBothPrivate:
		return http.StatusBadRequest
	case tether.CodeUnauthenticated, tether.CodeBadSignature, tether.CodeUnknownKey, tether.CodeKeyMismatch:
		return http.StatusUnauthorized
	case tether.CodeURLRefused:
		return http.StatusForbidden
	case tether.CodeNotFound:
		return http.StatusNotFound
	case tether.CodeAlreadyUsed, tether.CodeConflict, tether.CodeAlreadyExists, tether.CodeInvalidTransition, tether.CodeModeFixed, tether.CodeNotConnected:
		return http.StatusConflict
	case tether.CodeRevoked, tether.CodeGone, tether.CodeExpired:
		return http.StatusGone
	case tether.CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case tether.CodePaused, tether.CodeUnavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// ClientConfig configures a Client; zero values are defaults.
type ClientConfig struct {
	// HTTPClient sends the requests. When nil the Client builds its own,
	// whose dialer applies URLPolicy to every address it connects to (so a
	// public name resolving to a private address is refused), which uses no
	// proxy and follows no redirect. A client passed here is used as it is:
	// its owner decides about proxies and dial-time checks.
	HTTPClient *http.Client
	// URLPolicy is checked on every endpoint before a request and, with the
	// built-in HTTP client, on every address dialed. It should be the
	// node's Config.URLPolicy.
	URLPolicy tether.URLPolicy
	// MaxBody bounds a response body. DefaultMaxBody when zero.
	MaxBody int64
}

// Client is a tether.Transport over HTTP. It is safe for concurrent use.
type Client struct {
	http    *http.Client
	policy  tether.URLPolicy
	maxBody int64
}

var _ tether.Transport = (*Client)(nil)

// NewClient returns a Client.
func NewClient(cfg ClientConfig) *Client {
	c := &Client{http: cfg.HTTPClient, policy: cfg.URLPolicy, maxBody: cfg.MaxBody}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxBody
	}
	if c.http == nil {
		c.http = newHTTPClient(cfg.URLPolicy)
	}
	return c
}

func newHTTPClient(policy tether.URLPolicy) *http.Client {
	dialer := &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Control: func(_, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return err
			}
			return policy.CheckAddr(ap.Addr())
		},
	}
	return &http.Client{
		Transport: &http.Transport{
			DialContext:         dialer.DialContext,
			ForceAttemptHTTP2:   true,
			MaxIdleConns:        100,
			MaxIdleConnsPerHost: 16,
			IdleConnTimeout:     90 * time.Second,
			TLSHandshakeTimeout: 10 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Call implements tether.Transport: it POSTs req to endpoint/v1/{op}.
func (c *Client) Call(ctx context.Context, endpoint string, req *tether.Request) (*tether.Response, error) {
	const op = "httptransport: call"
	if err := c.policy.Check(endpoint); err != nil {
		return nil, err
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, tether.OpURL(endpoint, req.Op), bytes.NewReader(req.Body))
	if err != nil {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "cannot build the request", Err: err}
	}
	hr.Header.Set("Content-Type", contentType)
	hr.Header.Set(authHeader, authScheme+req.Auth)
	resp, err := c.http.Do(hr)
	if err != nil {
		var e *tether.Error
		if errors.As(err, &e) { // refused by the dialer's URL policy
			return nil, e
		}
		return nil, &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "request failed", Err: stripURL(err)}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, c.remoteError(resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return nil, &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: "reading the answer failed", Err: stripURL(err)}
	}
	if int64(len(body)) > c.maxBody {
		return nil, &tether.Error{Code: tether.CodeTooLarge, Op: op, Message: "the answer is larger than the limit"}
	}
	return &tether.Response{Auth: resp.Header.Get(answerHeader), Body: body}, nil
}

// remoteError turns an error answer into a *tether.Error with the remote
// code and message and the Retry-After it asked for.
func (c *Client) remoteError(resp *http.Response) error {
	e := &tether.Error{Op: "httptransport: remote", RetryAfter: retryAfter(resp.Header.Get("Retry-After"), time.Now())}
	var body errorBody
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if json.Unmarshal(raw, &body) == nil && body.Code != "" {
		e.Code, e.Message = body.Code, body.Message
		return e
	}
	switch resp.StatusCode {
	case http.StatusTooManyRequests, http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		e.Code = tether.CodeUnavailable
	case http.StatusRequestEntityTooLarge:
		e.Code = tether.CodeTooLarge
	default:
		e.Code = tether.CodeProtocol
	}
	e.Message = fmt.Sprintf("unexpected HTTP status %d", resp.StatusCode)
	return e
}

// retryAfter parses a Retry-After header: seconds or an HTTP date.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(min(s, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return min(t.Sub(now), 24*time.Hour)
	}
	return 0
}

// stripURL drops the URL from a *url.Error: endpoint URLs are not secret,
// but the error text stays short and uniform.
func stripURL(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}
