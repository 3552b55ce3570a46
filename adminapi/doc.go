// Package adminapi serves a JSON API for managing a tether Node's
// connections, for a host's own front end: an http.Handler the host
// mounts under a prefix of its choice.
//
//	api, err := adminapi.New(adminapi.Config{Node: node, Authenticate: session})
//	mux.Handle("/tether/", http.StripPrefix("/tether", api))
//
// # Routes
//
//	GET    /connections                    list (status, kind, cursor, limit)
//	POST   /connections                    initiate: answers the invitation code
//	GET    /connections/{id}               one connection (ETag: its version)
//	PATCH  /connections/{id}               edit name, description, rules, settings
//	DELETE /connections/{id}               delete; the history is kept
//	POST   /connections/{id}/pause
//	POST   /connections/{id}/activate
//	POST   /connections/{id}/revoke        revoke a pending invitation
//	GET    /connections/{id}/events        history, oldest first (cursor, limit)
//	GET    /events                         the caller's events of all connections (cursor, limit)
//	GET    /events/stream                  the same, live, as server-sent events
//	POST   /invitations/preview            what a code says, without accepting it
//	POST   /invitations/accept             accept a code
//	POST   /probe                          what the instance at a URL is and supports
//	GET    /info                           what this instance tells those that probe it
//	POST   /orgs                           begin an org connection (Config.Orgs)
//	GET    /orgs/callback                  the provider's redirect back
//	POST   /orgs/choose                    finish with the environment chosen
//	POST   /connections/{id}/reauthorize   begin re-authorizing an org connection
//	GET    /openapi.json                   the OpenAPI 3 description (also OpenAPI())
//
// The OpenAPI description is the reference for every body; a test checks
// every answer the API gives in its scenarios against it.
//
// # Probing a destination
//
// Before "Initiate connection", a page that was given the destination's
// URL posts it to /probe ({"url": "https://..."}): the node asks that
// instance, once, without authentication and after its URL policy allowed
// the URL (tether.Node.Probe), and the answer is the destination's
// display name, protocol version and configuration modes:
//
//	{"name": "Acme Engineering", "protocol": "tether/1", "modes": ["basic", "script"]}
//
// so the page offers only those modes. It is what the destination claims,
// for choosing what to show, nothing more. When the destination is private
// ("I don't have a URL") it cannot be asked: GET /info answers this
// instance's own, in the same shape, and the page offers its modes.
// A refused URL is 403 url_refused; a destination that cannot be reached
// or does not serve tether info, 503 unavailable; an answer that is not
// tether info, 400 protocol (413 too_large over tether.MaxInfoBody).
//
// # Tenants
//
// Config.Authenticate maps each request to a Caller (owner and actor) or
// refuses it (401). Every call is scoped to the caller's owner with
// tether.WithOwner: a connection of another owner is answered exactly as
// one that does not exist (404, the same body), lists hold only the
// owner's connections, and new connections belong to the owner. Events
// record the caller's actor.
//
// # Cross-site requests
//
// A host's session is usually a cookie, which a browser sends with
// requests another site makes. So a request with a method other than GET
// or HEAD must carry Content-Type: application/json — an HTML form or a
// "simple" cross-origin request cannot send it without a CORS preflight,
// which this API never approves — and one the browser marks
// Sec-Fetch-Site: cross-site or same-site is refused. No CSRF token is
// needed; GET requests change nothing. The org callback is a GET the
// provider redirects to: it is bound to the login's single-use state and
// must be finished by the caller who began it, so the session cookie must
// reach it: the provider's redirect is a cross-site navigation, which a
// SameSite=Lax cookie accompanies and a SameSite=Strict one does not.
//
// # Bodies
//
// Request bodies are capped (Config.MaxBody, 64 KiB by default; 413
// too_large over it) and must be one JSON object without unknown fields.
// JSON is snake_case; a connection carries no key material, no invitation
// code (initiate answers it once) and no internal counters: its version
// is the ETag header, which If-Match takes on PATCH, DELETE, pause,
// activate and revoke (412 when the connection changed meanwhile).
//
// # Errors
//
// Errors are application/problem+json (RFC 9457):
//
//	{"type": "https://github.com/tetherkit/tether/blob/main/adminapi/doc.go#not_found",
//	 "title": "Not Found", "status": 404, "detail": "no such connection", "code": "not_found"}
//
// code is tether's stable error code (tether.Code) and the status is
// tether.HTTPStatus of it. An internal error's text stays in the log.
//
// # Events
//
// GET /events pages through the caller's events of all connections in
// order (tether.Node.Feed): a host that keeps next_cursor after handling
// each page resumes after a crash without losing or repeating one.
// GET /events/stream sends them live as server-sent events ("event:
// tether", the event's JSON as data), so a page updates without a reload;
// a reconnecting browser resumes after the last id it received. Wire
// API.Notify to tether.Config.OnEvent so streams send at once; otherwise,
// and for other processes' events, they look every StreamRecheck.
//
// # Org connections
//
// With Config.Orgs set, POST /orgs answers the provider's login URL, which
// the page opens in a popup. The provider sends the popup back to
// /orgs/callback, whose page posts a message to the window that opened it
// (to this origin only) and closes:
//
//	{"type": "tether.org", "connection": {...}}                connected
//	{"type": "tether.org", "choice": "...", "orgs": [{...}]}   pick one: POST /orgs/choose
//	{"type": "tether.org", "error": {problem}}                 refused
package adminapi
