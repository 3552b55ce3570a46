package tether

import (
	"context"
	"strings"
	"time"
)

// MaxRequestBody bounds the body of a handshake request or response.
const MaxRequestBody = 64 << 10

// Request is one call from an instance to a remote endpoint. Auth is a
// signed token covering Op, the target connection, a digest of Body, the
// time and a nonce; a Transport carries all three fields unchanged.
type Request struct {
	Op   Op
	Auth string
	Body []byte
	// Target is, for transports with addresses, the request target the
	// server received (for HTTP the path and query of the request line,
	// before any prefix stripping). When set, it must be the path of
	// OpURL(endpoint, Op) for the endpoint the request was signed for, or
	// the request is refused. Empty when the transport has no such notion.
	Target string
}

// OpURL is the URL of operation o at an instance's endpoint: the endpoint
// followed by /v1/ and the operation name. Transports that address
// operations by URL use it; the signed request covers it.
func OpURL(endpoint string, o Op) string {
	return strings.TrimSuffix(endpoint, "/") + "/v1/" + string(o)
}

// Response answers a Request. Auth is a signed token bound to the request's
// nonce and a digest of Body.
//
// A Node answers every authenticated request with a signed Response, also
// when it refuses it (the connection is paused or deleted, the request's
// clock is off): then Code is the refusal's code and RetryAfter how long to
// wait, for transports that show them in their own terms (httptransport
// answers with the matching HTTP status and a Retry-After header). Both are
// hints for the transport: the requesting Node reads the refusal from the
// signed Body, and only a Body signed by the key it pinned changes a
// connection.
//
// The answer to OpInfo is the exception: it has no Auth, and its Body is
// the answering node's Info as JSON, which changes nothing.
type Response struct {
	Auth string
	Body []byte

	Code       Code
	RetryAfter time.Duration
}

// Transport carries requests from this instance to the instance serving a
// remote endpoint URL. It is what a host replaces to use another protocol
// or a test network: httptransport is the real one, tethertest the
// in-memory one.
//
// Call must be safe for concurrent use. It returns the remote Handler's
// Response whenever there is one, refusals included (Auth, Body, Code and
// RetryAfter carried unchanged). Otherwise it returns an error: the remote
// Handler's unsigned error, or CodeUnavailable when the remote side could
// not be reached or did not answer. A Node treats every such error as a
// transient failure that changes no connection, whatever its code, since
// anything on the path could have made it up; it keeps only a short,
// sanitised summary of its text. Call must return when ctx ends.
//
// A request for OpInfo (Node.Probe) has no Auth and no Body: Call sends it
// without authentication and returns the answer's Body with an empty Auth
// (over HTTP, a GET answered 200).
type Transport interface {
	Call(ctx context.Context, endpoint string, req *Request) (*Response, error)
}

// Handler serves requests from remote instances: *Node implements it, and a
// transport's server side (an http.Handler, a queue consumer) calls it.
//
// Errors are *Error; a transport sends back their Code and Message only.
// They never reveal whether a connection exists to a caller that failed
// authentication.
type Handler interface {
	Handle(ctx context.Context, req *Request) (*Response, error)
}
