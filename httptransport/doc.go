// Package httptransport carries tether requests over HTTP: a Client that
// implements tether.Transport, and a Handler the host mounts at its node's
// Endpoint.
//
// Every request is a POST to {endpoint}/v1/{operation} with the signed
// request token in an "Authorization: Tether ..." header and the body as
// JSON. The token covers the endpoint the request was sent to, the
// operation (and so the path), a SHA-256 digest of the body, the time and a
// nonce; the Handler refuses any other method and any query string, so one
// changed byte in method, path, query or body fails verification. Answers
// carry their own signed token in the Tether-Auth header. Errors are JSON
// {"code": ..., "message": ...} with a matching HTTP status, and
// Retry-After when the node asks the caller to wait (a paused connection,
// for one).
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
// The Client checks the URL policy before each request and, with its own
// HTTP client, at every dial, so a name that resolves to a loopback,
// link-local or private address is refused unless the policy allows it.
package httptransport
