// A real OpenID provider (panva's oidc-provider) for the identity tests, on 127.0.0.1 only.
//
//   PORT=… JWKS_FILE=… CLIENTS='[…]' node --require ./loopback.cjs oidc_provider.mjs
//
// The issuer is http://127.0.0.1:PORT. Its signing keys live in JWKS_FILE (a private JWKS): made
// on the first start, reused on the next ones, and with ROTATE=1 a new RS256 key is put first
// (it signs from then on; the old ones stay published). The current signing key is also written
// as PKCS#8 PEM to JWKS_FILE.pem, so a test can sign a token the provider would never issue (an
// expired one) with the provider's own key.
//
// CLIENTS is a JSON list of client-credentials clients, each
//   {"client_id", "client_secret", "claims": {…}, "token_endpoint_auth_method"?}
// whose access tokens are JWTs for the resource indicator the client asks for (RFC 8707), with
// `claims` added (an email, groups). DASHBOARD_REDIRECT_URI, if set, registers an
// authorization-code + PKCE client `dashboard` (secret DASHBOARD_SECRET) for dashboard sign-in;
// its people sign in through the provider's development interactions (any name), and their
// `email` is their name.
//
// Prints "listening <issuer>" once it accepts connections; stops on SIGTERM.
import { generateKeyPairSync, randomUUID, createPrivateKey } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const jwksFile = process.env.JWKS_FILE;
if (!port || !jwksFile) {
  console.error('PORT and JWKS_FILE are required');
  process.exit(2);
}

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

const jwks = existsSync(jwksFile) ? JSON.parse(readFileSync(jwksFile, 'utf8')) : { keys: [] };
if (jwks.keys.length === 0 || process.env.ROTATE === '1') {
  jwks.keys.unshift(newKey());
}
writeFileSync(jwksFile, JSON.stringify(jwks), { mode: 0o600 });
writeFileSync(
  `${jwksFile}.pem`,
  createPrivateKey({ key: jwks.keys[0], format: 'jwk' }).export({ format: 'pem', type: 'pkcs8' }),
  { mode: 0o600 },
);

const machines = JSON.parse(process.env.CLIENTS || '[]');
const claimsOf = new Map(machines.map((c) => [c.client_id, c.claims || {}]));
const clients = machines.map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: c.token_endpoint_auth_method || 'client_secret_basic',
}));
if (process.env.DASHBOARD_REDIRECT_URI) {
  clients.push({
    client_id: 'dashboard',
    client_secret: process.env.DASHBOARD_SECRET || 'dashboard-secret',
    grant_types: ['authorization_code'],
    response_types: ['code'],
    redirect_uris: [process.env.DASHBOARD_REDIRECT_URI],
    token_endpoint_auth_method: 'client_secret_basic',
  });
}

const provider = new Provider(issuer, {
  clients,
  jwks,
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, email: id, email_verified: true }),
  }),
  claims: { openid: ['sub'], email: ['email', 'email_verified'] },
  features: {
    clientCredentials: { enabled: true },
    devInteractions: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // Any http(s) resource: a test asks for the wrong one on purpose.
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        if (!/^https?:\/\//.test(resource)) throw new Error('resource must be an http(s) URL');
        return {
          scope: 'mcp',
          audience: resource,
          accessTokenTTL: 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  extraTokenClaims: async (ctx, token) => claimsOf.get(token.clientId),
  pkce: { required: () => true },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
