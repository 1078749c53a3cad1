/**
 * aios-runtime's access decisions without a network: gRPC scopes, HTTP keys (format, hashing,
 * checking, revocation, persistence), the backoff, the exposure rules of the config, credentials.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { AuthGuard, BACKOFF, afterFailure, authorizeGrpc, authorizeHttp, backoffDelay, certReason, grpcScopeNeeded, httpNeed, logWorthy, peerIp, scopeFromSubject } from '../../src/runtime/auth.js';
import { KeyStore, createApiKey, formatKeysFile, hashKey, keyId, parseKeysFile, writeKeysFile } from '../../src/runtime/keys.js';
import { RuntimeConfigSchema, exposureProblems, isLoopbackHost } from '../../src/runtime/config.js';
import { resolveCredential } from '../../src/runtime/tls.js';
import { RuntimeEvents } from '../../src/runtime/events.js';
import { tmp } from '../helpers.js';

const rt = (o: object = {}) => RuntimeConfigSchema.parse({ runtime: o }).runtime;
const ssl = (subject: Record<string, string | string[]>) => ({ transportSecurityType: 'ssl', sslPeerCertificate: { subject } });

describe('gRPC scopes', () => {
  it('infer covers Infer, StreamInfer, ListModels, HealthCheck, health and reflection; the rest needs admin', () => {
    for (const m of ['Infer', 'StreamInfer', 'ListModels', 'HealthCheck']) expect(grpcScopeNeeded(`/aios.runtime.AIRuntime/${m}`)).toBe('infer');
    expect(grpcScopeNeeded('/grpc.health.v1.Health/Check')).toBe('infer');
    expect(grpcScopeNeeded('/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo')).toBe('infer');
    for (const m of ['LoadModel', 'UnloadModel', 'PinModel', 'PullModel', 'CreateKey', 'ListKeys', 'RevokeKey', 'SomethingNew']) expect(grpcScopeNeeded(`/aios.runtime.AIRuntime/${m}`)).toBe('admin');
    expect(grpcScopeNeeded('/other.Service/Infer')).toBe('admin');
  });

  it('the scope is the certificate OU, exactly one of admin / infer', () => {
    expect(scopeFromSubject({ CN: 'a', OU: 'admin' })).toBe('admin');
    expect(scopeFromSubject({ CN: 'a', OU: 'infer' })).toBe('infer');
    expect(scopeFromSubject({ CN: 'a', OU: 'Admin' })).toBeUndefined();
    expect(scopeFromSubject({ CN: 'a', OU: ['infer', 'admin'] })).toBeUndefined();
    expect(scopeFromSubject({ CN: 'admin' })).toBeUndefined();
    expect(scopeFromSubject(undefined)).toBeUndefined();
  });

  it('decides each call: infer may infer, not unload (PERMISSION_DENIED naming the scope); admin may both; no TLS = admin', () => {
    const infer = ssl({ CN: 'ci', OU: 'infer' });
    expect(authorizeGrpc('/aios.runtime.AIRuntime/Infer', infer)).toEqual({ ok: true, scope: 'infer' });
    const d = authorizeGrpc('/aios.runtime.AIRuntime/UnloadModel', infer);
    expect(authorizeGrpc('/aios.runtime.AIRuntime/PinModel', infer)).toMatchObject({ ok: false, reason: 'forbidden', message: 'PinModel needs the admin scope; this client certificate (CN=ci, OU=infer) has the infer scope' });
    expect(d).toMatchObject({ ok: false, reason: 'forbidden' });
    expect(!d.ok && d.message).toBe('UnloadModel needs the admin scope; this client certificate (CN=ci, OU=infer) has the infer scope');
    expect(authorizeGrpc('/aios.runtime.AIRuntime/UnloadModel', ssl({ CN: 'b', OU: 'admin' }))).toEqual({ ok: true, scope: 'admin' });
    const none = authorizeGrpc('/aios.runtime.AIRuntime/Infer', ssl({ CN: 'x', OU: 'ops' }));
    expect(none).toMatchObject({ ok: false, reason: 'no_scope' });
    expect(!none.ok && none.message).toMatch(/OU must be "admin" or "infer"/);
    // The unix socket and plain loopback TCP: no TLS, admin.
    expect(authorizeGrpc('/aios.runtime.AIRuntime/UnloadModel', {})).toEqual({ ok: true, scope: 'admin' });
    expect(authorizeGrpc('/aios.runtime.AIRuntime/UnloadModel', null)).toEqual({ ok: true, scope: 'admin' });
    // On the mutual-TLS listener a call without a verified certificate is refused (fail closed).
    expect(authorizeGrpc('/aios.runtime.AIRuntime/HealthCheck', {}, { tls: true })).toMatchObject({ ok: false, reason: 'no_certificate' });
    expect(authorizeGrpc('/aios.runtime.AIRuntime/HealthCheck', infer, { tls: true })).toEqual({ ok: true, scope: 'infer' });
  });

  it('names why a certificate was refused', () => {
    expect(certReason('CERT_HAS_EXPIRED')).toBe('cert_expired');
    expect(certReason('UNABLE_TO_VERIFY_LEAF_SIGNATURE')).toBe('cert_untrusted');
    expect(certReason('SELF_SIGNED_CERT_IN_CHAIN')).toBe('cert_untrusted');
    expect(certReason(null)).toBe('no_certificate');
    expect(certReason('SOMETHING_ELSE')).toBe('cert_invalid');
    expect(certReason(Object.assign(new Error('x'), { code: 'CERT_HAS_EXPIRED' }))).toBe('cert_expired');
  });
});

describe('API keys', () => {
  it('look like aios_<12 hex>_<43 base64url> (256 random bits); only the sha256 of the whole key is kept', () => {
    const a = createApiKey({ scope: 'admin', name: 'builder' });
    const b = createApiKey();
    expect(a.key).toMatch(/^aios_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
    expect(keyId(a.key)).toBe(a.id);
    expect(a.hash).toBe(hashKey(a.key));
    expect(a.record).toMatchObject({ id: a.id, scope: 'admin', sha256: a.hash, name: 'builder' });
    expect(JSON.stringify(a.record)).not.toContain(a.key.slice(18));
    expect(b.key).not.toBe(a.key);
    expect(b.record.scope).toBe('infer');
    expect(Buffer.from(a.key.split('_').slice(2).join('_'), 'base64url')).toHaveLength(32);
    expect(() => createApiKey({ name: 'two words' })).toThrow(/key name/);
    expect(() => createApiKey({ scope: 'root' as never })).toThrow(/scope must be one of infer, admin, metrics/);
  });

  it('the keys file round-trips; a bad line is named by its number, not quoted', () => {
    const recs = [createApiKey({ scope: 'admin', name: 'builder' }).record, createApiKey().record];
    const text = formatKeysFile(recs);
    expect(parseKeysFile(text, 'f')).toEqual(recs);
    const secretish = 'aios_0123456789ab_' + 'x'.repeat(43);
    expect(() => parseKeysFile(`${text}${secretish}\n`, 'keys')).toThrow(/^keys: line 4: 1 fields/);
    const err = (() => {
      try {
        parseKeysFile(`${secretish} admin\n`, 'keys');
      } catch (e) {
        return e as Error;
      }
    })();
    expect(err?.message).toMatch(/^keys: line 1: 2 fields/);
    expect(err?.message).not.toContain(secretish);
    expect(() => parseKeysFile(`0123456789ab root ${'0'.repeat(64)} 2026-01-01T00:00:00Z\n`, 'k')).toThrow(/line 1: scope must be one of/);
    expect(() => parseKeysFile(`0123456789ab infer ${'0'.repeat(63)} 2026-01-01T00:00:00Z\n`, 'k')).toThrow(/line 1: the hash is not 64 hex digits/);
  });

  it('checks, creates and revokes; the state survives a new store (a restart); build keys can be revoked', () => {
    const dir = tmp('aios-keys-');
    const builder = createApiKey({ scope: 'admin', name: 'builder' });
    const metrics = createApiKey({ scope: 'metrics', name: 'prom' });
    writeKeysFile(join(dir, 'http-keys'), [builder.record, metrics.record]);
    const state = join(dir, 'state');
    const s = new KeyStore({ buildFile: join(dir, 'http-keys'), stateDir: state });
    expect(s.check(builder.key)).toEqual({ ok: true, id: builder.id, scope: 'admin' });
    expect(s.check(metrics.key)).toEqual({ ok: true, id: metrics.id, scope: 'metrics' });
    // Wrong secret with a known id, unknown id, garbage: all "invalid".
    expect(s.check(builder.key.slice(0, -1) + (builder.key.endsWith('A') ? 'B' : 'A'))).toEqual({ ok: false, reason: 'invalid_key' });
    expect(s.check(createApiKey().key)).toEqual({ ok: false, reason: 'invalid_key' });
    expect(s.check('sk-nope')).toEqual({ ok: false, reason: 'invalid_key' });

    const made = s.create({ scope: 'infer', name: 'laptop' });
    expect(made.info).toMatchObject({ scope: 'infer', name: 'laptop', source: 'machine', revoked: '' });
    expect(s.check(made.key)).toEqual({ ok: true, id: made.info.id, scope: 'infer' });
    const file = join(state, 'http-keys.json');
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(readFileSync(file, 'utf8')).not.toContain(made.key);
    expect(readFileSync(file, 'utf8')).toContain(hashKey(made.key));

    expect(s.revoke(builder.id)).toBe(true);
    expect(s.revoke(builder.id)).toBe(false);
    expect(s.check(builder.key)).toEqual({ ok: false, reason: 'revoked_key', id: builder.id });
    expect(() => s.revoke('ffffffffffff')).toThrow(/no key with id "ffffffffffff"/);

    const again = new KeyStore({ buildFile: join(dir, 'http-keys'), stateDir: state });
    expect(again.check(made.key)).toMatchObject({ ok: true, scope: 'infer' });
    expect(again.check(builder.key)).toMatchObject({ ok: false, reason: 'revoked_key' });
    expect(again.list().map((k) => [k.id, k.source, !!k.revoked])).toEqual([
      [builder.id, 'build', true],
      [metrics.id, 'build', false],
      [made.info.id, 'machine', false],
    ]);
    // Without a state directory: keys are checked, but none can be made or revoked.
    const ro = new KeyStore({ buildFile: join(dir, 'http-keys') });
    expect(ro.check(builder.key)).toMatchObject({ ok: true });
    expect(() => ro.create({ scope: 'infer' })).toThrow(/no state directory .*runtime\.state_dir/);
    expect(() => ro.revoke(builder.id)).toThrow(/no state directory/);
  });
});

describe('HTTP decisions', () => {
  const store = () => {
    const dir = tmp('aios-keys-');
    const keys = { admin: createApiKey({ scope: 'admin' }), infer: createApiKey({ scope: 'infer' }), metrics: createApiKey({ scope: 'metrics' }) };
    writeKeysFile(join(dir, 'k'), Object.values(keys).map((k) => k.record));
    const s = new KeyStore({ buildFile: join(dir, 'k'), stateDir: join(dir, 's') });
    return { s, keys };
  };

  it('what each path needs, by metrics_auth', () => {
    expect(httpNeed('/health', { keys: true, metricsAuth: 'api' })).toEqual({ open: true });
    expect(httpNeed('/v1/chat/completions', { keys: false, metricsAuth: 'api' })).toEqual({ open: true });
    expect(httpNeed('/v1/chat/completions', { keys: true, metricsAuth: 'open' })).toEqual({ open: false, scopes: ['infer', 'admin'] });
    expect(httpNeed('/metrics', { keys: true, metricsAuth: 'api' })).toEqual({ open: false, scopes: ['infer', 'admin', 'metrics'] });
    expect(httpNeed('/metrics', { keys: true, metricsAuth: 'open' })).toEqual({ open: true });
    expect(httpNeed('/metrics', { keys: true, metricsAuth: 'metrics' })).toEqual({ open: false, scopes: ['metrics', 'admin'] });
    expect(httpNeed('/nothing', { keys: true, metricsAuth: 'api' })).toMatchObject({ open: false });
  });

  it('401 without, with a malformed, wrong or revoked key; 403 out of scope; OpenAI error codes', () => {
    const { s, keys } = store();
    const api = httpNeed('/v1/chat/completions', { keys: true, metricsAuth: 'metrics' });
    const metrics = httpNeed('/metrics', { keys: true, metricsAuth: 'metrics' });
    const check = (k: string) => s.check(k);
    expect(authorizeHttp('/v1/chat/completions', `Bearer ${keys.infer.key}`, api, check)).toEqual({ ok: true, scope: 'infer', id: keys.infer.id });
    expect(authorizeHttp('/v1/chat/completions', `bearer  ${keys.admin.key} `, api, check)).toMatchObject({ ok: true, scope: 'admin' });
    expect(authorizeHttp('/v1/chat/completions', undefined, api, check)).toMatchObject({ ok: false, status: 401, reason: 'missing_key', code: 'invalid_api_key' });
    expect(authorizeHttp('/v1/chat/completions', `Basic abc`, api, check)).toMatchObject({ ok: false, status: 401, reason: 'invalid_key' });
    const wrong = authorizeHttp('/v1/chat/completions', `Bearer ${createApiKey().key}`, api, check);
    expect(wrong).toMatchObject({ ok: false, status: 401, reason: 'invalid_key', message: 'invalid API key' });
    const m = authorizeHttp('/v1/chat/completions', `Bearer ${keys.metrics.key}`, api, check);
    expect(m).toMatchObject({ ok: false, status: 403, reason: 'forbidden', type: 'permission_error' });
    expect(!m.ok && m.message).toBe(`/v1/chat/completions needs a key with the infer or admin scope; key ${keys.metrics.id} has metrics`);
    expect(authorizeHttp('/metrics', `Bearer ${keys.metrics.key}`, metrics, check)).toMatchObject({ ok: true });
    expect(authorizeHttp('/metrics', `Bearer ${keys.infer.key}`, metrics, check)).toMatchObject({ ok: false, status: 403 });
    s.revoke(keys.infer.id);
    expect(authorizeHttp('/v1/chat/completions', `Bearer ${keys.infer.key}`, api, check)).toMatchObject({ ok: false, status: 401, reason: 'revoked_key' });
    // No message ever carries the presented key.
    for (const h of [`Bearer ${keys.infer.key}`, `Bearer ${createApiKey().key}`, `Bearer ${keys.metrics.key}`, 'Bearer garbage-key-material']) {
      const d = authorizeHttp('/v1/chat/completions', h, api, check);
      expect(JSON.stringify(d)).not.toContain(h.slice(7));
    }
  });
});

describe('backoff of repeated failures', () => {
  it('free at first, then doubling, capped; forgotten after a quiet period', () => {
    expect([1, 2, 3].map((n) => backoffDelay(n))).toEqual([0, 0, 0]);
    expect([4, 5, 6, 7].map((n) => backoffDelay(n))).toEqual([200, 400, 800, 1600]);
    expect(backoffDelay(9)).toBe(6400);
    expect(backoffDelay(10)).toBe(BACKOFF.capMs);
    expect(backoffDelay(10_000)).toBe(BACKOFF.capMs);
    let s = afterFailure(undefined, 0);
    expect(s).toEqual({ failures: 1, last: 0 });
    s = afterFailure(s, 1000);
    s = afterFailure(s, 2000);
    expect(s).toEqual({ failures: 3, last: 2000 });
    expect(afterFailure(s, 2000 + BACKOFF.forgetMs - 1).failures).toBe(4);
    expect(afterFailure(s, 2000 + BACKOFF.forgetMs)).toEqual({ failures: 1, last: 2000 + BACKOFF.forgetMs });
    expect([1, 2, 10, 11, 15, 16, 17, 32, 33, 64].map(logWorthy)).toEqual([true, true, true, false, false, true, false, true, false, true]);
    expect(peerIp('::ffff:10.0.0.5')).toBe('10.0.0.5');
    expect(peerIp('::1')).toBe('::1');
  });

  it('the guard delays per peer, counts every refusal by listener and reason, and does not delay scope refusals', () => {
    const events = new RuntimeEvents();
    const seen: string[] = [];
    events.on('authFailure', (a) => seen.push(`${a.listener}/${a.reason}`));
    const log: string[] = [];
    let now = 0;
    const g = new AuthGuard({ log: (l) => log.push(l), events, now: () => now });
    const d = [1, 2, 3, 4, 5].map(() => g.failure('http', '::ffff:10.0.0.5', 'invalid_key'));
    expect(d).toEqual([0, 0, 0, 200, 400]);
    expect(g.failure('http', '10.0.0.6', 'invalid_key')).toBe(0); // another peer
    expect(g.failure('grpc', '10.0.0.5', 'forbidden', 'UnloadModel needs admin')).toBe(0);
    expect(g.failure('grpc', '10.0.0.5', 'cert_expired')).toBe(800); // same peer, other listener
    now += BACKOFF.forgetMs;
    expect(g.failure('http', '10.0.0.5', 'invalid_key')).toBe(0);
    expect(seen.filter((s) => s === 'http/invalid_key')).toHaveLength(7);
    expect(seen).toContain('grpc/forbidden');
    expect(log[3]).toBe('http: authentication failed from 10.0.0.5: invalid_key; failure 4 from this address, answered after 200 ms');
  });
});

describe('exposure rules (runtime.listen / http_listen beyond loopback)', () => {
  it('loopback is 127.0.0.0/8, ::1, localhost', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]']) expect(isLoopbackHost(h)).toBe(true);
    for (const h of ['0.0.0.0', '', '::', '10.0.0.1', '128.0.0.1', 'aios.local']) expect(isLoopbackHost(h)).toBe(false);
  });

  it('gRPC beyond loopback without TLS is refused, naming the keys; insecure_listen turns it into a warning', () => {
    const r = exposureProblems(rt({ listen: '0.0.0.0:50051' }));
    expect(r.errors).toEqual([
      'runtime.listen = "0.0.0.0:50051" is not loopback and has no TLS: set runtime.tls_cert, runtime.tls_key and runtime.tls_client_ca (mutual TLS), or runtime.insecure_listen = true to accept unauthenticated connections',
    ]);
    const w = exposureProblems(rt({ listen: '0.0.0.0:50051', insecure_listen: true }));
    expect(w.errors).toEqual([]);
    expect(w.warnings).toEqual([expect.stringMatching(/^gRPC on 0\.0\.0\.0:50051 without TLS \(runtime\.insecure_listen = true\)/)]);
    expect(exposureProblems(rt({ listen: '127.0.0.1:50051' }))).toEqual({ errors: [], warnings: [] });
    expect(exposureProblems(rt({ listen: '[::]:50051' })).errors).toHaveLength(1);
    expect(exposureProblems(rt({ listen: ':50051' })).errors).toHaveLength(1);
    const tls = { tls_cert: '/etc/aios/tls/server.crt', tls_key: 'server.key', tls_client_ca: '/etc/aios/tls/ca.crt' };
    expect(exposureProblems(rt({ listen: '0.0.0.0:50051', ...tls }))).toEqual({ errors: [], warnings: [] });
    // Overrides (aios runtime serve --listen) are what counts.
    expect(exposureProblems(rt(), { listen: '0.0.0.0:1' }).errors).toHaveLength(1);
  });

  it('TLS keys go together; HTTP beyond loopback needs keys and TLS; metrics_auth = "metrics" needs keys', () => {
    expect(exposureProblems(rt({ tls_cert: '/a', tls_key: 'k' })).errors).toEqual([
      'runtime.tls_cert, runtime.tls_key and runtime.tls_client_ca go together (mutual TLS): set all three or none (missing: runtime.tls_client_ca)',
    ]);
    const tls = { tls_cert: '/c', tls_key: 'k', tls_client_ca: '/ca' };
    expect(exposureProblems(rt({ http_listen: '0.0.0.0:8080' })).errors).toEqual([
      'runtime.http_listen = "0.0.0.0:8080" is not loopback: set runtime.http_keys (API keys) and runtime.tls_cert + runtime.tls_key (TLS), or runtime.insecure_listen = true to accept unauthenticated requests',
    ]);
    expect(exposureProblems(rt({ http_listen: '0.0.0.0:8080', http_keys: 'http-keys', ...tls }))).toEqual({ errors: [], warnings: [] });
    expect(exposureProblems(rt({ http_listen: '0.0.0.0:8080', http_keys: 'http-keys', http_tls: 'off', ...tls })).errors).toEqual([expect.stringMatching(/set runtime.http_tls = "auto" or "on" \(TLS\)/)]);
    expect(exposureProblems(rt({ http_listen: '127.0.0.1:8080', http_tls: 'on' })).errors).toEqual([expect.stringMatching(/uses TLS \(runtime.http_tls = "on"\), which needs runtime.tls_cert and runtime.tls_key/)]);
    expect(exposureProblems(rt({ http_listen: '0.0.0.0:8080', insecure_listen: true })).warnings).toEqual([expect.stringMatching(/^HTTP API on 0\.0\.0\.0:8080 without API keys and TLS \(runtime\.insecure_listen = true\)/)]);
    expect(exposureProblems(rt({ http_listen: '0.0.0.0:8080', http_keys: 'k', ...tls })).errors).toEqual([]);
    expect(exposureProblems(rt({ metrics_auth: 'metrics' })).errors).toEqual(['runtime.metrics_auth = "metrics" needs runtime.http_keys (the keys /metrics checks)']);
  });
});

describe('credentials', () => {
  it('a name is read from $CREDENTIALS_DIRECTORY, a path as is; errors say what to do', () => {
    const dir = tmp('aios-cred-');
    mkdirSync(join(dir, 'creds'));
    writeFileSync(join(dir, 'creds', 'server.key'), 'x');
    const env = { CREDENTIALS_DIRECTORY: join(dir, 'creds') };
    expect(resolveCredential('server.key', 'tls_key', env)).toBe(join(dir, 'creds', 'server.key'));
    expect(resolveCredential(join(dir, 'creds', 'server.key'), 'tls_key', {})).toBe(join(dir, 'creds', 'server.key'));
    expect(() => resolveCredential('server.key', 'tls_key', {})).toThrow(/runtime.tls_key = "server.key" names a systemd credential, but \$CREDENTIALS_DIRECTORY is not set/);
    expect(() => resolveCredential('other', 'tls_key', env)).toThrow(/no credential "other" in \$CREDENTIALS_DIRECTORY .* LoadCredential=other:<file>/);
    expect(() => resolveCredential('rel/path', 'tls_key', env)).toThrow(/absolute path or a systemd credential name/);
    expect(() => resolveCredential('/nonexistent/x', 'tls_cert', env)).toThrow(/runtime.tls_cert: \/nonexistent\/x does not exist/);
    expect(existsSync(join(dir, 'creds', 'server.key'))).toBe(true);
  });
});

describe('the CLI picks its TLS dir', () => {
  it('--tls-dir / AIOS_TLS_DIR first; for an address beyond loopback, the one out/*.pki; never for loopback or the socket', async () => {
    const { tlsOf } = await import('../../src/cli/runtime.js');
    const out = tmp('aios-out-');
    expect(tlsOf({ address: '10.0.0.7:50051', tlsDir: '/x', tlsServerName: 'aios' }, out)).toEqual({ tlsDir: '/x', serverName: 'aios' });
    expect(tlsOf({ address: '10.0.0.7:50051' }, out)).toEqual({ serverName: undefined });
    mkdirSync(join(out, 'default.pki'));
    writeFileSync(join(out, 'default.pki', 'client.crt'), '');
    expect(tlsOf({ address: '10.0.0.7:50051' }, out)).toEqual({ tlsDir: join(out, 'default.pki'), serverName: undefined });
    expect(tlsOf({ address: '127.0.0.1:50051' }, out)).toEqual({ serverName: undefined });
    expect(tlsOf({ address: '[::1]:50051' }, out)).toEqual({ serverName: undefined });
    expect(tlsOf({ address: 'unix:/run/aios/runtime.sock' }, out)).toEqual({ serverName: undefined });
    mkdirSync(join(out, 'other.pki'));
    writeFileSync(join(out, 'other.pki', 'client.crt'), '');
    expect(tlsOf({ address: '10.0.0.7:50051' }, out)).toEqual({ serverName: undefined }); // two: no guess
  });
});

describe('the guard log', () => {
  it('says an answer waits only when one does', () => {
    const log: string[] = [];
    const g = new AuthGuard({ log: (l) => log.push(l), events: new RuntimeEvents(), backoff: { ...BACKOFF, free: 0 } });
    expect(g.failure('grpc', '10.0.0.9', 'tls_handshake', 'ECONNRESET', { answered: false })).toBe(200);
    expect(g.failure('grpc', '10.0.0.9', 'cert_expired', 'CERT_HAS_EXPIRED')).toBe(400);
    expect(log).toEqual([
      'grpc: authentication failed from 10.0.0.9: tls_handshake (ECONNRESET)',
      'grpc: authentication failed from 10.0.0.9: cert_expired (CERT_HAS_EXPIRED); failure 2 from this address, answered after 400 ms',
    ]);
  });
});
