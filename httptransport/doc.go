// Package httptransport carries tether requests over HTTP: a Client that
// implements tether.Transport, and a Handler the host mounts at its node's
// Endpoint.
//
// Every request is a POST to {endpoint}/v1/{operation} with the signed
// request token in an "Authorization: Tether ..." header and the body as
// JSON. The token covers the endpoint the request was sent to, the
// operation (and so the path), a SHA-256 digest of the body, the time and a
// nonce; the Handler refuses any other method and any query string, so one
// changed byte in method, path, query or body fails verification.
//
// Every answer to an authenticated request carries the node's own signed
// token in the Tether-Auth header and a signed body, refusals included: a
// paused connection is answered 503 with Retry-After, a deleted one 410, a
// request dated too far off 400, each with the refusal in the signed body
// (tether.HTTPStatus gives the status of every code). Only requests refused
// before authentication get an unsigned JSON {"code": ..., "message": ...}.
// The Client returns every answer that carries Tether-Auth to the node,
// which verifies it; any other answer is a transient CodeUnavailable error
// that keeps none of its text, whatever its status, since anything on the
// way to the peer could have written it.
//
// One operation is not signed: a GET (or POST) of {endpoint}/v1/info
// (tether.OpInfo) is answered 200 without authentication, with the node's
// tether.Info as JSON (display name, protocol version, configuration
// modes) and Cache-Control: no-store. It is what tether.Node.Probe asks a
// destination before a connection exists; it reveals nothing about
// connections or keys, and changes nothing. The Client sends it without an
// Authorization header, through the same checked dialer, and reads at most
// tether.MaxInfoBody bytes of the answer. Every other operation still
// requires the signed token.
//
// A public instance, mounted under any prefix:
//
//	node, _ := tether.Open(ctx, tether.Config{
//		Store:     store,
//		Transport: httptransport.NewClient(httptransport.ClientConfig{}),
//		Endpoint:  "https://support.example.com/tether",
//	})
//	mux := http.NewServeMux()
//	mux.Handle("/tether/", httptransport.NewHandler(node, httptransport.HandlerConfig{}))
//	go node.Run(ctx)
//
// A private instance needs only the Client and Run: it never listens.
//
// # Server timeouts
//
// Serve the Handler from an http.Server with timeouts, so that slow or
// stalled clients cannot hold connections and memory:
//
//	srv := &http.Server{
//		Handler:           mux,
//		ReadHeaderTimeout: 10 * time.Second,
//		ReadTimeout:       30 * time.Second, // a body is at most HandlerConfig.MaxBody
//		WriteTimeout:      60 * time.Second, // longer than the node's PollWait
//		IdleTimeout:       120 * time.Second,
//	}
//
// WriteTimeout is the one to get right: a private peer's poll is held open
// for up to the node's PollWait (25 s by default) before it is answered,
// so WriteTimeout must exceed PollWait, with a margin for the answer to be
// written; 60 s suits the default (the requesting side waits PollWait plus
// its RequestTimeout, 55 s by default). A shorter WriteTimeout cuts every
// idle poll. ReadTimeout bounds reading a whole request: raise it with
// MaxBody on slow links.
//
// # Address checks
//
// The Client checks the URL policy before each request and at every dial,
// so a name that resolves to a loopback, link-local or private address is
// refused unless the policy allows it; it follows no redirect. A host that
// needs a proxy or its own TLS settings sets ClientConfig.Transport, which
// keeps those checks; ClientConfig.HTTPClient bypasses them.
package httptransport
