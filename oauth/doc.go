// Package oauth connects a team to an org with OAuth (the org connections
// of tether: tether.KindOrg) and keeps each connection's tokens.
//
// # Setup
//
// The host registers its app with each provider and hands the Manager the
// providers with its own credentials (Config.Providers): [Salesforce] for
// production and sandbox orgs, [Dynamics] for Dynamics 365 environments in
// each Microsoft cloud, [OIDC] for a generic OpenID Connect provider with
// explicit endpoints, or a [Provider] of its own. Nothing is built in but
// the providers' public endpoints.
//
// Config.Store is the Node's Store, and must implement tether.OAuthStore:
// memstore and sqlstore do. It keeps the logins in flight and each
// connection's tokens, which sqlstore seals at rest with its Sealer, so
// that any replica sharing the Store can complete a login or refresh a
// grant. The host mounts Callback at Config.RedirectURL, the redirect URL
// it registered with the providers.
//
// # Connecting
//
// Begin returns the URL to send the user to. It binds a fresh state,
// single use and expiring (Config.StateTTL), to the provider, the team
// (BeginRequest.Owner), a PKCE S256 verifier, the redirect URL and the
// acting user (tether.WithActor), in the Store, so the callback may land
// on another replica or after a restart.
//
// The user logs in at the provider, which sends the browser back to the
// redirect URL. Callback (or Complete, given the callback's query, for
// hosts with their own router) takes that state once, checks the
// provider's iss (RFC 9207), exchanges the code with the verifier,
// identifies the org and creates an Active org connection through
// tether.Node.ConnectOrg, with the acting user as its creator. A missing,
// unknown, reused or expired state, or another issuer, is refused with
// tether.CodeInvalid before the token endpoint is called. The Result holds
// the connection, or, when the user must pick the org first (the Dynamics
// 365 environments a login reaches), its Choices: the host offers them and
// calls Choose with Result.Choice and the picked org's ID.
//
// One org per team: an org connected to a team, and not deleted, is
// refused to any other with tether.CodeOrgTaken. A team's new connection
// to an org it had connected before, and deleted, reuses that connection's
// settings and rules. The grant of a login that makes no connection is
// revoked at the provider, where it can be.
//
// # Calling the org
//
// Token returns a valid access token for a connection, refreshing it first
// when it expires within 30 seconds; Client returns an HTTP client that
// sends it with every request, and refreshes once when the API answers 401
// to a token that is not new. One refresh at a time replaces a
// connection's tokens, across goroutines and across processes sharing the
// Store, and a rotated refresh token is stored before the new access token
// is handed out. A paused connection gives tether.CodePaused and an
// inactive one tether.CodeUnauthenticated (re-authorize it), so the host's
// jobs hold until the team acts.
//
// Run, or Sweep called from the host's own scheduler, keeps grants that
// lapse when unused (Provider.IdleTTL) alive by refreshing them, and
// revokes the grants of deleted connections.
//
// # Losing access, re-authorizing
//
// A refresh the provider refuses for good (invalid_grant or
// interaction_required: the user withdrew the app's access, the grant
// lapsed) makes the connection Inactive, with one tether.EventAuthLost
// event. Other failures are tether.CodeUnavailable and leave it Active
// with its tokens, to be tried again; once they have lasted an hour, or
// the grant nears its idle expiry, the connection records
// tether.EventAuthFailing, and tether.EventAuthRecovered when a refresh
// works again.
//
// To re-authorize, the host calls Begin with BeginRequest.Reauthorize set
// to the connection's ID and sends the user to log in again; the same
// callback completes it. The login must reach the connection's org
// (tether.CodeInvalid otherwise, and nothing changes). The connection
// keeps its ID, settings and history, an Inactive one turns Active with a
// tether.EventReauthorized event, and the grant the new one replaces is
// revoked at the provider (RFC 7009), when the provider has a revocation
// endpoint. A re-authorization that reaches a refreshed Salesforce sandbox
// (the same sandbox login host, a new org) offers the new org as a Choice,
// with Result.Replaces set: Choose then moves the connection's settings to
// a connection for the new org and deletes the old one.
//
// # Deleting
//
// Manager.Delete deletes an org connection (tether.Node.Delete) and
// revokes its grant at the provider at once (RFC 7009); a connection
// deleted with the Node directly has its grant revoked by the next Sweep.
// The stored tokens are then removed, with a tether.EventCredentialsGone
// event. Microsoft has no revocation endpoint: deleting a Dynamics 365
// connection destroys its stored tokens, and the grant ends when it is
// next unused for 90 days or when the user or an administrator removes the
// app's consent.
//
// # Errors
//
// Errors are *tether.Error values; tether.ErrorCode gives their code. A
// provider's failure is classified by its OAuth error field, never by its
// description: invalid_grant and interaction_required need a new login,
// invalid_client and unauthorized_client mean the app's credentials are
// wrong (both tether.CodeUnauthenticated), anything else may pass
// (tether.CodeUnavailable). An error the provider returns in the callback
// is tether.CodeUnauthenticated with the provider's error code. Errors
// carry no token, code, state or secret.
package oauth
