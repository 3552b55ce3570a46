// A real OpenID Connect provider for tether's tests: panva's certified
// oidc-provider, configured like the providers tether connects to (PKCE
// S256 required, refresh tokens rotated, reuse of a rotated one revokes
// the grant, RFC 7009 revocation, RFC 9207 iss in the callback), with a
// headless login and consent so a Go HTTP client can play the browser.
//
// Usage: node server.mjs. Configured by the environment:
//   OP_CLIENT_ID, OP_CLIENT_SECRET  one confidential client
//   OP_REDIRECT_URIS                its redirect URIs, comma-separated
//   OP_ACCESS_TTL, OP_REFRESH_TTL   token lifetimes in seconds (60, 3600)
// It listens on a free loopback port and prints "OP ready <issuer>". It
// ends at the end of its stdin: when the process that started it ends,
// even one killed before it could stop the server.
//
// Test routes:
//   POST /test/withdraw/<account>   the user withdraws the app: every grant
//                                   of that account is destroyed
import http from 'node:http';
import Provider from 'oidc-provider';

const env = process.env;
const clientId = env.OP_CLIENT_ID || 'tether';
const clientSecret = env.OP_CLIENT_SECRET || 'tether-secret';
const redirectURIs = (env.OP_REDIRECT_URIS || 'http://127.0.0.1/callback').split(',');
const grants = new Map(); // account -> grant IDs made at consent

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [{
      client_id: clientId,
      client_secret: clientSecret,
      redirect_uris: redirectURIs,
      grant_types: ['authorization_code', 'refresh_token'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_post',
    }],
    pkce: { required: () => true },
    rotateRefreshToken: true,
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: true },
    },
    scopes: ['openid', 'offline_access', 'profile', 'api'],
    cookies: { keys: ['tether-test-cookie-key'] },
    ttl: {
      AccessToken: Number(env.OP_ACCESS_TTL || 60),
      RefreshToken: Number(env.OP_REFRESH_TTL || 3600),
      Grant: 86400, Session: 86400, Interaction: 600, AuthorizationCode: 60,
    },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    findAccount: (ctx, sub) => ({ accountId: sub, claims: () => ({ sub }) }),
    issueRefreshToken: (ctx, client, code) => client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  });
  provider.proxy = false;

  provider.use(async (ctx, next) => {
    const login = ctx.path.match(/^\/interaction\/([^/]+)$/);
    if (login && ctx.method === 'GET') {
      // Headless login and consent: the login_hint names the account.
      const details = await provider.interactionDetails(ctx.req, ctx.res);
      let result;
      if (details.prompt.name === 'login') {
        result = { login: { accountId: details.params.login_hint || 'user-1' } };
      } else {
        const accountId = details.session.accountId;
        const grant = details.grantId
          ? await provider.Grant.find(details.grantId)
          : new provider.Grant({ accountId, clientId: details.params.client_id });
        grant.addOIDCScope(String(details.params.scope || 'openid'));
        const grantId = await grant.save();
        grants.set(accountId, [...(grants.get(accountId) || []), grantId]);
        result = { consent: { grantId } };
      }
      ctx.redirect(await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission: true }));
      return;
    }
    const withdraw = ctx.path.match(/^\/test\/withdraw\/([^/]+)$/);
    if (withdraw && ctx.method === 'POST') {
      for (const id of grants.get(withdraw[1]) || []) {
        const grant = await provider.Grant.find(id);
        if (grant) await grant.destroy();
      }
      grants.delete(withdraw[1]);
      ctx.status = 204;
      return;
    }
    await next();
  });

  server.on('request', provider.callback());
  console.log(`OP ready ${issuer}`);
});

process.on('SIGTERM', () => process.exit(0));
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
