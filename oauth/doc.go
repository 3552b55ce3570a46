// Package oauth connects a team to an org with OAuth (the org connections
// of tether: KindOrg) and keeps the connection's tokens.
//
// The host registers its app with each provider (Provider: endpoints and
// its client credentials) and mounts Callback at its redirect URL. To
// connect, it calls Begin and sends the user to the URL it returns. Begin
// binds a fresh state, single use and expiring, to the provider, the
// team, a PKCE S256 verifier, the redirect URL and the acting user, in the
// Store, so the callback may land on another replica or after a restart.
// The callback (Callback, or Complete for hosts with their own router)
// takes that state once, checks the provider's iss (RFC 9207), exchanges
// the code with the verifier, identifies the org and creates an Active org
// connection through tether.Node.ConnectOrg: one org per team
// (tether.CodeOrgTaken otherwise), and a team's new connection to an org it
// had connected before reuses that connection's settings. The tokens are
// kept by the Store (tether.OAuthStore), sealed at rest.
//
// Errors are *tether.Error values. A provider's OAuth error field decides
// how a failure is classified, never its description.
package oauth
