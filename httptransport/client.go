package httptransport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tetherkit/tether"
)

// ClientConfig configures a Client; zero values are defaults.
type ClientConfig struct {
	// Transport, when set, is the base of the Client's HTTP transport, for
	// a host that needs a proxy, its own TLS settings or other tuning. The
	// Client clones it and keeps its settings, but applies URLPolicy to
	// every address it connects to and never follows a redirect, as with
	// its default transport:
	//
	//   - without a DialContext (or Dial) of its own, the Client dials with
	//     a dialer that checks each address before connecting; with one,
	//     the base's dialer is used and the address it connected to is
	//     checked before anything is written (a DialTLSContext likewise,
	//     after its TLS handshake);
	//   - with a Proxy, the proxy's own address is not checked (the host
	//     chose it), but the peer's name is resolved and every address
	//     checked before the request is handed to the proxy. The proxy
	//     resolves the name again, so use no proxy where a DNS answer that
	//     changes in between matters.
	//
	// Set ForceAttemptHTTP2 for HTTP/2: a transport with its own dialer
	// does not try it otherwise.
	Transport *http.Transport
	// HTTPClient, when set, sends the requests exactly as it is configured.
	//
	// WARNING: it bypasses the Client's own safety checks. Its dialer does
	// not apply URLPolicy to the addresses it connects to (a public name
	// resolving to a loopback, link-local or private address is
	// contacted), and it follows redirects unless its CheckRedirect
	// refuses them. Only the endpoint URL itself is still checked. Use
	// Transport to customise the HTTP transport and keep the checks.
	// HTTPClient takes precedence over Transport.
	HTTPClient *http.Client
	// URLPolicy is checked on every endpoint before a request and on every
	// address dialed (unless HTTPClient is set). It should be the node's
	// Config.URLPolicy.
	URLPolicy tether.URLPolicy
	// MaxBody bounds a response body. DefaultMaxBody when zero.
	MaxBody int64
	// Clock reads the time for Retry-After headers given as a date; the
	// system clock when nil.
	Clock tether.Clock
}

// Client is a tether.Transport over HTTP. It is safe for concurrent use.
type Client struct {
	http    *http.Client
	policy  tether.URLPolicy
	maxBody int64
	clock   tether.Clock
}

var _ tether.Transport = (*Client)(nil)

// NewClient returns a Client.
func NewClient(cfg ClientConfig) *Client {
	c := &Client{http: cfg.HTTPClient, policy: cfg.URLPolicy, maxBody: cfg.MaxBody, clock: cfg.Clock}
	if c.maxBody <= 0 {
		c.maxBody = DefaultMaxBody
	}
	if c.clock == nil {
		c.clock = tether.SystemClock()
	}
	if c.http == nil {
		base := cfg.Transport
		if base == nil {
			base = defaultTransport()
		}
		c.http = &http.Client{
			Transport:     guardTransport(base, cfg.URLPolicy),
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	return c
}

// defaultTransport is the base transport when the host gives none: no
// proxy, HTTP/2, bounded idle connections.
func defaultTransport() *http.Transport {
	return &http.Transport{
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        100,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
	}
}

// Close releases idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Call implements tether.Transport: it POSTs req to endpoint/v1/{op}.
// A request for tether.OpInfo is a GET without an Authorization header
// instead: a 200 answer's body (at most tether.MaxInfoBody bytes, else
// CodeTooLarge) comes back as a Response with an empty Auth, any other
// answer as the unsigned error below.
//
// An answer carrying a Tether-Auth header is returned as a Response,
// whatever its HTTP status: Code is the code a refusal's body names (or
// CodeProtocol for another status than 200) and RetryAfter comes from the
// Retry-After header, both hints only. Any other answer is an error with
// CodeUnavailable (CodeTooLarge for a signed answer over MaxBody,
// CodeURLRefused when the policy refuses the address) that keeps none of
// the answer's text: at most its HTTP status and a "code" field that is a
// plain code name.
func (c *Client) Call(ctx context.Context, endpoint string, req *tether.Request) (*tether.Response, error) {
	const op = "httptransport: call"
	if err := c.policy.Check(endpoint); err != nil {
		return nil, err
	}
	ctx = withRoute(ctx)
	if req.Op == tether.OpInfo {
		return c.info(ctx, endpoint)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, tether.OpURL(endpoint, req.Op), bytes.NewReader(req.Body))
	if err != nil {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "cannot build the request", Err: err}
	}
	hr.Header.Set("Content-Type", contentType)
	hr.Header.Set(authHeader, authScheme+req.Auth)
	resp, err := c.http.Do(hr)
	if err != nil {
		return nil, failure(op, "request failed", err)
	}
	defer resp.Body.Close()
	auth := resp.Header.Get(answerHeader)
	if auth == "" {
		return nil, c.unsigned(op, resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.maxBody+1))
	if err != nil {
		return nil, failure(op, "reading the answer failed", err)
	}
	if int64(len(body)) > c.maxBody {
		return nil, &tether.Error{Code: tether.CodeTooLarge, Op: op, Message: "the answer is larger than the limit"}
	}
	out := &tether.Response{Auth: auth, Body: body, RetryAfter: retryAfter(resp.Header.Get("Retry-After"), c.clock.Now())}
	if resp.StatusCode != http.StatusOK {
		out.Code = refusalCode(body)
	}
	return out, nil
}

// info asks endpoint for its tether.Info: a GET without authentication,
// through the same policy-checked dialer. A 200 answer's body, at most
// tether.MaxInfoBody bytes (and MaxBody), is returned with an empty Auth;
// any other answer is the usual unsigned error.
func (c *Client) info(ctx context.Context, endpoint string) (*tether.Response, error) {
	const op = "httptransport: info"
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, tether.OpURL(endpoint, tether.OpInfo), nil)
	if err != nil {
		return nil, &tether.Error{Code: tether.CodeInvalid, Op: op, Message: "cannot build the request", Err: err}
	}
	hr.Header.Set("Accept", contentType)
	resp, err := c.http.Do(hr)
	if err != nil {
		return nil, failure(op, "request failed", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, c.unsigned(op, resp)
	}
	limit := min(c.maxBody, tether.MaxInfoBody)
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, failure(op, "reading the answer failed", err)
	}
	if int64(len(body)) > limit {
		return nil, &tether.Error{Code: tether.CodeTooLarge, Op: op, Message: "the answer is larger than the limit"}
	}
	return &tether.Response{Body: body}, nil
}

// refusalCode is the code a signed refusal's body names, when it is a
// plain code name, and CodeProtocol otherwise. It is a hint: the requesting
// node reads the refusal from the body once the signature is verified.
func refusalCode(body []byte) tether.Code {
	var b struct {
		Refused struct {
			Code string `json:"code"`
		} `json:"refused"`
	}
	if json.Unmarshal(body, &b) == nil && codeName.MatchString(b.Refused.Code) {
		return tether.Code(b.Refused.Code)
	}
	return tether.CodeProtocol
}

// unsigned reports an answer without a signed token. Whatever answers at
// the peer's URL (a proxy, a load balancer, an impostor) may have written
// it, so it is a transient failure in this package's words: the HTTP
// status, the "code" field when it is a plain code name, and the
// Retry-After asked for. Its message is never kept.
func (c *Client) unsigned(op string, resp *http.Response) error {
	msg := "unsigned answer: HTTP " + strconv.Itoa(resp.StatusCode)
	var body struct {
		Code string `json:"code"`
	}
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	if json.Unmarshal(raw, &body) == nil && codeName.MatchString(body.Code) {
		msg += " (" + body.Code + ")"
	}
	return &tether.Error{
		Code: tether.CodeUnavailable, Op: op, Message: msg,
		RetryAfter: retryAfter(resp.Header.Get("Retry-After"), c.clock.Now()),
	}
}

// failure reports a failed exchange: the URL policy's refusal at dial as
// it is, anything else as CodeUnavailable. The cause is kept only when its
// text is this side's own (the end of the context, a network error from
// the dial or the socket); other failures (a malformed answer, an HTTP/2
// GOAWAY, a certificate the TLS layer refused) can quote what the other
// side sent, so only their kind is said.
func failure(op, what string, err error) error {
	var te *tether.Error
	if errors.As(err, &te) {
		return te
	}
	e := &tether.Error{Code: tether.CodeUnavailable, Op: op, Message: what}
	var (
		cert *tls.CertificateVerificationError
		ne   *net.OpError
	)
	switch {
	case errors.Is(err, context.Canceled):
		e.Err = context.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		e.Err = context.DeadlineExceeded
	case errors.As(err, &cert):
		e.Message += ": the TLS certificate was not accepted"
	case errors.As(err, &ne):
		e.Err = ne
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		e.Message += ": the connection was closed"
	default:
		e.Message += ": the answer was not valid HTTP or the connection broke"
	}
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
