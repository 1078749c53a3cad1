/**
 * aios-runtime's access control end to end, on the host: the real daemon (real llama-server, a
 * synthesized tiny model) configured as the image configures it — mutual TLS on its TCP gRPC port
 * (loopback here, so that it is exercised without a network), the server key and the hashed HTTP
 * keys as systemd credentials, API keys on the HTTP API — with certificates made by openssl (src/pki)
 * and driven by real clients: grpc-js, the Python gRPC client, the official `openai` client, and
 * the `aios` CLI. Every refused attempt is counted in /metrics, and no key material reaches a log.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import OpenAI from 'openai';
import { execa } from 'execa';
import { copyFileSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { runtimeFixture } from './runtime-fixture.js';
import { RuntimeConfigSchema, type RuntimeConfig } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { connectRuntime, explainError, unary, type ConnectOptions } from '../../src/runtime/client.js';
import { groupId, PROTO_DIR } from '../../src/runtime/server.js';
import { createPki, issueClientCert, writeClientDir, type Pki } from '../../src/pki/index.js';
import { Code } from '../../src/runtime/errors.js';
import { REPO, cli, tmp } from '../helpers.js';

const dir = tmp('aios-runtime-auth-');
let pki: Pki;
let daemon: Daemon;
let config: RuntimeConfig;
let addr = '';
let base = '';
const logs: string[] = [];
const outputs: string[] = []; // everything the CLI and the Python client printed, but the key `keys create` prints on stdout
const tlsDirs: Record<'infer' | 'expired' | 'otherCa' | 'noScope', string> = { infer: '', expired: '', otherCa: '', noScope: '' };
const privateKeys: string[] = [];
const apiKeys: string[] = [];
const socket = join(dir, 'rt.sock');
const socketGroup = process.getuid?.() === 0 ? 'daemon' : String(process.getgid?.());

/** One call over a fresh client, closed afterwards; rejects with the gRPC error. */
async function call<M extends 'HealthCheck' | 'Infer' | 'ListModels' | 'UnloadModel' | 'LoadModel'>(o: ConnectOptions & { address?: string }, method: M, req: object): Promise<unknown> {
  const c = connectRuntime(o.address ?? addr, o);
  try {
    return await unary(c, method, req as never, 30_000);
  } finally {
    c.close();
  }
}
const failure = (p: Promise<unknown>) => p.then(() => undefined, (e: grpc.ServiceError) => e);
/** The daemon's backoff, shortened (the defaults are unit-tested): free 3, then 40 ms doubling to 320 ms. */
const BACKOFF_TEST = { free: 3, baseMs: 40, capMs: 320, forgetMs: 10 * 60_000 };
const probe = { prompt: 'Respond with OK if you are working.', max_tokens: 8, grammar: 'root ::= "OK"' };

async function metrics(key = readFileSync(pki.httpKey, 'utf8').trim(), url = base): Promise<Map<string, number>> {
  const r = await fetch(`${url}/metrics`, { headers: { authorization: `Bearer ${key}` } });
  expect(r.status).toBe(200);
  const text = await r.text();
  outputs.push(text);
  const out = new Map<string, number>();
  for (const m of text.matchAll(/^aios_auth_failures_total\{listener="(\w+)",reason="(\w+)"\} (\d+)$/gm)) out.set(`${m[1]}/${m[2]}`, Number(m[3]));
  return out;
}

function pemBodies(file: string): string[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l && !l.startsWith('-----'));
}

function runtimeConfig(llamaServer: string, extra: object = {}): RuntimeConfig {
  return RuntimeConfigSchema.parse({
    runtime: {
      llama_server: llamaServer,
      socket,
      socket_group: socketGroup,
      listen: '127.0.0.1:0',
      http_listen: '127.0.0.1:0',
      // As the image's config.toml: certificates by path, the private key and the keys as credentials.
      tls_cert: pki.serverCert,
      tls_key: 'server.key',
      tls_client_ca: pki.caCert,
      http_keys: 'http-keys',
      state_dir: join(dir, 'state'),
      health_interval: '1s',
      load_timeout: '60s',
      request_timeout: '60s',
      ...extra,
    },
    models: { model_dir: dir, operational: { name: 'tiny.gguf', parallel: 2, ctx_size: 512 }, tactical: { name: 'tactical.gguf', parallel: 1, ctx_size: 512 } },
  });
}

describe('aios-runtime access control (mutual TLS, API keys)', () => {
  beforeAll(async () => {
    const fx = await runtimeFixture(dir);
    copyFileSync(join(dir, 'tiny.gguf'), join(dir, 'tactical.gguf'));
    pki = await createPki(join(dir, 'img.pki'), { hostname: 'aios-test', sans: ['aios-test.lan'] });
    const creds = join(dir, 'creds');
    mkdirSync(creds);
    copyFileSync(pki.serverKey, join(creds, 'server.key'));
    copyFileSync(pki.httpKeys, join(creds, 'http-keys'));
    process.env.CREDENTIALS_DIRECTORY = creds;

    const inferCert = await issueClientCert(pki.dir, join(dir, 'infer'), { cn: 'ci', scope: 'infer' });
    tlsDirs.infer = writeClientDir(join(dir, 'infer-tls'), { ca: pki.caCert, ...inferCert });
    const expired = await issueClientCert(pki.dir, join(dir, 'expired'), { cn: 'old', scope: 'admin', notAfterPast: true });
    tlsDirs.expired = writeClientDir(join(dir, 'expired-tls'), { ca: pki.caCert, ...expired });
    const noScope = await issueClientCert(pki.dir, join(dir, 'ops'), { cn: 'ops', scope: 'ops' });
    tlsDirs.noScope = writeClientDir(join(dir, 'ops-tls'), { ca: pki.caCert, ...noScope });
    // Another image's builder certificate (admin, but another CA); it trusts our server, so only its own certificate is wrong.
    const other = await createPki(join(dir, 'other.pki'), { hostname: 'aios-test' });
    tlsDirs.otherCa = writeClientDir(join(dir, 'other-tls'), { ca: pki.caCert, cert: other.clientCert, key: other.clientKey });
    for (const f of [pki.caKey, pki.serverKey, pki.clientKey, inferCert.key, expired.key, noScope.key, other.caKey, other.clientKey, other.serverKey]) privateKeys.push(...pemBodies(f));
    apiKeys.push(readFileSync(pki.httpKey, 'utf8').trim(), readFileSync(other.httpKey, 'utf8').trim());

    config = runtimeConfig(fx.llamaServer);
    daemon = await startDaemon(config, { log: (s) => logs.push(s), backoff: BACKOFF_TEST });
    addr = `127.0.0.1:${daemon.listening.tcpPort}`;
    base = `http://127.0.0.1:${daemon.http!.port}`;
  }, 20 * 60_000);

  afterAll(async () => {
    await daemon?.stop();
    delete process.env.CREDENTIALS_DIRECTORY;
  });

  it('starts with mutual TLS on its TCP port and API keys on HTTP (the start-up log says so)', () => {
    expect(daemon.listening.tls).toBe(true);
    expect(logs).toContainEqual(expect.stringMatching(/^gRPC on 127\.0\.0\.1:\d+ \(mutual TLS\) and unix:/));
    expect(logs).toContainEqual(expect.stringMatching(/^HTTP API \(OpenAI-compatible, \/metrics\) on 127\.0\.0\.1:\d+, API keys required \(1 valid\)/));
  });

  it('a plain-text gRPC client gets nothing from the TLS port (and is told to pass --tls-dir)', async () => {
    const e = await failure(call({}, 'HealthCheck', {}));
    expect(e?.code).toBe(Code.UNAVAILABLE);
    expect(explainError(e, addr)).toMatch(/did not answer plain-text gRPC: it probably requires mutual TLS .* pass --tls-dir out\/<name>\.pki or set AIOS_TLS_DIR/);
  });

  it('a client certificate from another CA is refused in the handshake', async () => {
    const e = await failure(call({ tlsDir: tlsDirs.otherCa }, 'HealthCheck', {}));
    expect(e?.code).toBe(Code.UNAVAILABLE);
    expect(explainError(e, addr, { tlsDir: tlsDirs.otherCa })).toMatch(/certificate not accepted \/ wrong CA\?/);
  });

  it('an expired client certificate is refused', async () => {
    const e = await failure(call({ tlsDir: tlsDirs.expired }, 'HealthCheck', {}));
    expect(e?.code).toBe(Code.UNAVAILABLE);
  });

  it('an infer certificate can infer and list, but UnloadModel / LoadModel get PERMISSION_DENIED naming the admin scope', async () => {
    const t = { tlsDir: tlsDirs.infer };
    expect(await call(t, 'Infer', probe)).toMatchObject({ text: 'OK', model_used: 'tiny' });
    expect(await call(t, 'HealthCheck', {})).toMatchObject({ ready: true });
    expect(((await call(t, 'ListModels', {})) as { models: unknown[] }).models).toHaveLength(1);
    const e = await failure(call(t, 'UnloadModel', { model_name: 'tiny' }));
    expect(e?.code).toBe(Code.PERMISSION_DENIED);
    expect(e?.details).toBe('UnloadModel needs the admin scope; this client certificate (CN=ci, OU=infer) has the infer scope');
    expect((await failure(call(t, 'LoadModel', { model_name: 'tactical' })))?.code).toBe(Code.PERMISSION_DENIED);
    expect(daemon.service.models().map((m) => m.name)).toEqual(['tiny']); // nothing was loaded
  });

  it('a certificate whose OU is no scope gets PERMISSION_DENIED for everything', async () => {
    const e = await failure(call({ tlsDir: tlsDirs.noScope }, 'Infer', probe));
    expect(e?.code).toBe(Code.PERMISSION_DENIED);
    expect(e?.details).toMatch(/the client certificate \(CN=ops, OU=ops\) has no scope: its OU must be "admin" or "infer"/);
  });

  it("the builder's admin certificate can infer, load and unload; --tls-server-name is what the certificate is checked against", async () => {
    const t = { tlsDir: pki.dir };
    expect(await call(t, 'Infer', probe)).toMatchObject({ text: 'OK' });
    expect(await call(t, 'LoadModel', { model_name: 'tactical' })).toMatchObject({ name: 'tactical', state: 'ready' });
    expect(await call(t, 'UnloadModel', { model_name: 'tactical' })).toMatchObject({ ok: true });
    expect(await call({ ...t, serverName: 'aios-test.lan' }, 'HealthCheck', {})).toMatchObject({ ready: true });
    const e = await failure(call({ ...t, serverName: 'elsewhere.example' }, 'HealthCheck', {}));
    expect(e?.code).toBe(Code.UNAVAILABLE);
    expect(explainError(e, addr, { ...t, serverName: 'elsewhere.example' })).toMatch(/not valid for the name "elsewhere\.example"; pass --tls-server-name/);
  });

  it('the unix socket is admin without TLS, mode 0660, group runtime.socket_group', async () => {
    expect(await call({ address: `unix:${socket}`, tlsDir: pki.dir }, 'LoadModel', { model_name: 'tactical' })).toMatchObject({ state: 'ready' });
    expect(await call({ address: `unix:${socket}` }, 'UnloadModel', { model_name: 'tactical' })).toMatchObject({ ok: true });
    const st = statSync(socket);
    expect(st.mode & 0o777).toBe(0o660);
    expect(st.gid).toBe(groupId(socketGroup));
  });

  it('the Python gRPC client reaches it with TLS credentials (and not without)', { timeout: 60_000 }, async () => {
    const refl = join(REPO, 'node_modules/@grpc/reflection/build/proto');
    const py = join(REPO, 'test/fixtures/independent_client.py');
    const ok = await execa('/usr/bin/python3', [py, addr, PROTO_DIR, refl, 'infer'], { env: { AIOS_TLS_DIR: pki.dir, AIOS_TLS_SERVER_NAME: 'aios-test' } });
    outputs.push(ok.stdout, ok.stderr);
    expect(JSON.parse(ok.stdout)).toMatchObject({ text: 'OK', model_used: 'tiny' });
    const inferOnly = await execa('/usr/bin/python3', [py, addr, PROTO_DIR, refl, 'infer'], { env: { AIOS_TLS_DIR: tlsDirs.infer } });
    expect(JSON.parse(inferOnly.stdout)).toMatchObject({ text: 'OK' });
    const plain = await execa('/usr/bin/python3', [py, addr, PROTO_DIR, refl, 'infer'], { reject: false, env: { AIOS_TLS_DIR: '' } });
    outputs.push(plain.stdout, plain.stderr);
    expect(plain.exitCode).not.toBe(0);
    expect(plain.stderr).toMatch(/StatusCode\.UNAVAILABLE/);
  });

  it('the openai client works with a valid key; without one, or with a wrong one, it raises AuthenticationError (401)', async () => {
    const key = readFileSync(pki.httpKey, 'utf8').trim();
    const ai = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
    const r = await ai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
    expect(r.usage!.completion_tokens).toBe(3);
    const models = [];
    for await (const m of ai.models.list()) models.push(m.id);
    expect(models).toContain('tiny');

    const none = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0, defaultHeaders: { Authorization: null } });
    const e1 = await none.models.list().then(() => undefined, (e: unknown) => e);
    expect(e1).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((e1 as InstanceType<typeof OpenAI.APIError>).status).toBe(401);
    expect((e1 as InstanceType<typeof OpenAI.APIError>).message).toMatch(/missing API key/);
    const wrong = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'aios_0123456789ab_' + 'A'.repeat(43), maxRetries: 0 });
    const e2 = await wrong.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }] }).then(() => undefined, (e: unknown) => e);
    expect(e2).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((e2 as InstanceType<typeof OpenAI.APIError>).code).toBe('invalid_api_key');
    // /health stays open (probes); /metrics follows the API's rule (metrics_auth = "api").
    expect((await fetch(`${base}/health`)).status).toBe(200);
    const m = await fetch(`${base}/metrics`);
    expect(m.status).toBe(401);
    expect(m.headers.get('www-authenticate')).toMatch(/^Bearer/);
  });

  it('`aios runtime keys create` makes a key that works at once; `keys revoke` refuses it from the next request on; `keys list` shows both sources', { timeout: 60_000 }, async () => {
    const created = await cli(['runtime', 'keys', 'create', '--scope', 'infer', '--name', 'laptop', '-a', `unix:${socket}`]);
    outputs.push(created.stderr);
    expect(created.exitCode).toBe(0);
    const key = created.stdout.trim();
    expect(key).toMatch(/^aios_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$/);
    apiKeys.push(key);
    expect(created.stderr).toMatch(/^key [0-9a-f]{12} \(scope infer, name laptop\): shown this once/);
    const ai = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
    expect((await ai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 })).usage!.completion_tokens).toBe(2);

    // Over TCP with the builder's certificate, from AIOS_TLS_DIR.
    const list = await cli(['runtime', 'keys', 'list', '--json', '-a', addr], { env: { AIOS_TLS_DIR: pki.dir } });
    outputs.push(list.stdout, list.stderr);
    expect(list.exitCode).toBe(0);
    const keys = JSON.parse(list.stdout) as { id: string; scope: string; source: string; name: string; revoked: string }[];
    const id = key.split('_')[1]!;
    expect(keys.map((k) => [k.id, k.scope, k.source, k.name, k.revoked])).toEqual([
      [pki.httpKeyId, 'admin', 'build', 'builder', ''],
      [id, 'infer', 'machine', 'laptop', ''],
    ]);
    expect(list.stdout).not.toContain(key);

    // An infer certificate may not manage keys.
    const denied = await cli(['runtime', 'keys', 'list', '-a', addr, '--tls-dir', tlsDirs.infer]);
    outputs.push(denied.stdout, denied.stderr);
    expect(denied.exitCode).toBe(1);
    expect(denied.stderr).toMatch(/keys list: permission denied: ListKeys needs the admin scope/);

    const revoked = await cli(['runtime', 'keys', 'revoke', id, '-a', `unix:${socket}`]);
    outputs.push(revoked.stdout, revoked.stderr);
    expect(revoked.stdout.trim()).toBe(`revoked ${id}`);
    const e = await ai.models.list().then(() => undefined, (err: unknown) => err);
    expect(e).toBeInstanceOf(OpenAI.AuthenticationError);
    expect((e as Error).message).toMatch(new RegExp(`API key ${id} was revoked`));
    const unknown = await cli(['runtime', 'keys', 'revoke', 'ffffffffffff', '-a', `unix:${socket}`]);
    expect(unknown.exitCode).toBe(1);
    expect(unknown.stderr).toMatch(/no key with id "ffffffffffff"/);
  });

  it('the CLI: aios ps and aios top over mutual TLS; clear errors without TLS, with a TLS dir missing a file, with a refused certificate', { timeout: 180_000 }, async () => {
    const ps = await cli(['ps', '-a', addr, '--tls-dir', pki.dir]);
    outputs.push(ps.stdout, ps.stderr);
    expect(ps.exitCode).toBe(0);
    expect(ps.stdout).toMatch(/^NAME\s+STATE/);
    expect(ps.stderr).toBe(''); // no DEP0123 warning for an IP address as TLS server name
    // aios top: the builder's certificate from AIOS_TLS_DIR, and an infer one (enough to watch: Spend, admin, is left out).
    for (const env of [{ AIOS_TLS_DIR: pki.dir }, { AIOS_TLS_DIR: tlsDirs.infer }]) {
      const top = await cli(['top', '--once', '--json', '-a', addr], { env });
      outputs.push(top.stdout, top.stderr);
      expect(top.exitCode, top.stderr).toBe(0);
      const j = JSON.parse(top.stdout) as { connected: boolean; models: { name: string; state: string }[] };
      expect(j.connected).toBe(true);
      expect(j.models).toContainEqual(expect.objectContaining({ name: 'tiny', state: 'ready' }));
    }
    const topPlain = await cli(['top', '--once', '-a', addr], { env: { AIOS_TLS_DIR: '' } });
    outputs.push(topPlain.stdout, topPlain.stderr);
    expect(topPlain.exitCode).toBe(1);
    const plain = await cli(['runtime', 'status', '-a', addr]);
    outputs.push(plain.stderr);
    expect(plain.exitCode).toBe(1);
    expect(plain.stderr).toMatch(/pass --tls-dir out\/<name>\.pki or set AIOS_TLS_DIR/);
    const partial = writeClientDir(join(dir, 'partial-tls'), { ca: pki.caCert, cert: pki.clientCert, key: pki.clientKey });
    const { rmSync } = await import('node:fs');
    rmSync(join(partial, 'client.key'));
    const missing = await cli(['ps', '-a', addr, '--tls-dir', partial]);
    expect(missing.stderr).toMatch(/TLS dir .*partial-tls has no client\.key/);
    const refused = await cli(['runtime', 'status', '-a', addr, '--tls-dir', tlsDirs.expired]);
    outputs.push(refused.stderr);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toMatch(/certificate not accepted \/ wrong CA\?/);
    expect(refused.stderr).not.toMatch(/at .*\.js:\d+/); // no stack
  });

  it('aios_auth_failures_total counts each refusal by listener and reason; failures are logged with the peer and reason', async () => {
    const c = await metrics();
    for (const k of ['grpc/tls_handshake', 'grpc/cert_untrusted', 'grpc/cert_expired', 'grpc/forbidden', 'grpc/no_scope', 'http/missing_key', 'http/invalid_key', 'http/revoked_key']) {
      expect([k, c.get(k) ?? 0]).toEqual([k, expect.any(Number)]);
      expect(c.get(k) ?? 0, k).toBeGreaterThan(0);
    }
    expect(c.get('grpc/forbidden')).toBeGreaterThanOrEqual(3); // UnloadModel, LoadModel, ListKeys
    expect(logs).toContainEqual(expect.stringMatching(/^grpc: authentication failed from 127\.0\.0\.1: cert_expired \(CERT_HAS_EXPIRED\)/));
    expect(logs).toContainEqual(expect.stringMatching(/^grpc: authentication failed from 127\.0\.0\.1: cert_untrusted/));
    expect(logs).toContainEqual(expect.stringMatching(/^http: authentication failed from 127\.0\.0\.1: missing_key \(GET \/v1\/models\)/));
    expect(logs).toContainEqual(expect.stringMatching(/^grpc: authentication failed from 127\.0\.0\.1: tls_handshake \(ECONNRESET\)/)); // the wrong --tls-server-name: the client hung up
    expect(logs.filter((l) => / from unknown/.test(l))).toEqual([]);
    // A flood does not flood the log: after ten failures from an address, only every power of two.
    expect(logs.filter((l) => /authentication failed from 127\.0\.0\.1/.test(l)).length).toBeLessThan(c.get('http/missing_key')! + c.get('http/invalid_key')! + c.get('http/revoked_key')! + c.get('grpc/tls_handshake')! + c.get('grpc/cert_untrusted')! + c.get('grpc/cert_expired')!);
    expect(logs).toContainEqual(expect.stringMatching(/^grpc: refused from 127\.0\.0\.1: forbidden: UnloadModel needs the admin scope/));
  });

  it('repeated failures from one address are answered later and later (another address is not slowed)', { timeout: 60_000 }, async () => {
    // From 127.0.0.2 (all of 127/8 is loopback): a peer with no failures yet.
    const get = (key: string) =>
      new Promise<{ status: number; ms: number }>((resolve, reject) => {
        const t0 = performance.now();
        const req = httpRequest({ host: '127.0.0.1', port: daemon.http!.port, path: '/v1/models', localAddress: '127.0.0.2', headers: { authorization: `Bearer ${key}` }, agent: false }, (res) => {
          res.resume();
          res.on('end', () => resolve({ status: res.statusCode ?? 0, ms: performance.now() - t0 }));
        });
        req.on('error', reject);
        req.end();
      });
    const times: number[] = [];
    for (let i = 0; i < 7; i++) {
      const r = await get('nope');
      expect(r.status).toBe(401);
      times.push(r.ms);
    }
    // Each delayed answer took at least its delay (a lower bound only: a busy machine makes it later, never sooner).
    const expected = [0, 0, 0, 40, 80, 160, 320];
    times.forEach((t, i) => expect(t, `failure ${i + 1}`).toBeGreaterThanOrEqual(expected[i]! - 5));
    // What the daemon decided, from its log: 127.0.0.1's many failures do not slow 127.0.0.2 (its first three
    // are answered at once), then 40 ms doubling.
    const from2 = () => logs.filter((l) => l.startsWith('http: authentication failed from 127.0.0.2: '));
    expect(from2()).toEqual([
      'http: authentication failed from 127.0.0.2: invalid_key (GET /v1/models)',
      ...[2, 3].map((n) => `http: authentication failed from 127.0.0.2: invalid_key (GET /v1/models); failure ${n} from this address`),
      ...[40, 80, 160, 320].map((ms, i) => `http: authentication failed from 127.0.0.2: invalid_key (GET /v1/models); failure ${i + 4} from this address, answered after ${ms} ms`),
    ]);
    // A valid key from the same address is answered without a delay (a success is never held back: nothing logged).
    const ok = await get(apiKeys[0]!);
    expect(ok.status).toBe(200);
    expect(from2()).toHaveLength(7);
  });

  it('after a restart (HTTP over TLS, gRPC on an address not in the certificate): made keys and revocations persist; plain HTTP to the TLS port is refused; --tls-server-name reaches the unnamed address', { timeout: 120_000 }, async () => {
    const created = await cli(['runtime', 'keys', 'create', '--json', '-a', `unix:${socket}`]);
    const k = JSON.parse(created.stdout) as { id: string; key: string };
    apiKeys.push(k.key);
    expect((await cli(['runtime', 'keys', 'revoke', pki.httpKeyId, '-a', `unix:${socket}`])).stdout).toMatch(/^revoked /);
    await daemon.stop();
    // gRPC now on 127.0.0.3, an address the server certificate does not name (its SANs: aios-test, aios-test.lan, localhost, 127.0.0.1, ::1).
    daemon = await startDaemon(runtimeConfig(config.runtime.llama_server, { http_tls: 'on', listen: '127.0.0.3:0' }), { log: (s) => logs.push(s), backoff: BACKOFF_TEST });
    const at3 = `127.0.0.3:${daemon.listening.tcpPort}`;
    const wrongName = await failure(call({ address: at3, tlsDir: pki.dir }, 'HealthCheck', {}));
    expect(explainError(wrongName, at3, { tlsDir: pki.dir })).toMatch(/certificate is not valid for the name "127\.0\.0\.3"; pass --tls-server-name/);
    expect(await call({ address: at3, tlsDir: pki.dir, serverName: 'aios-test' }, 'HealthCheck', {})).toMatchObject({ ready: true });
    const port = daemon.http!.port;
    const get = (path: string, key?: string) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port, path, ca: readFileSync(pki.caCert), servername: 'aios-test', headers: key ? { authorization: `Bearer ${key}` } : {} }, (res) => {
          let body = '';
          res.on('data', (d) => (body += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        });
        req.on('error', reject);
        req.end();
      });
    expect((await get('/v1/models', k.key)).status).toBe(200);
    const builder = await get('/v1/models', apiKeys[0]);
    expect(builder.status).toBe(401);
    expect(JSON.parse(builder.body)).toMatchObject({ error: { code: 'invalid_api_key', message: `API key ${pki.httpKeyId} was revoked` } });
    expect((await get('/v1/models')).status).toBe(401);
    await expect(fetch(`http://127.0.0.1:${port}/v1/models`, { headers: { authorization: `Bearer ${k.key}` } })).rejects.toThrow();
    const m = await get('/metrics', k.key);
    outputs.push(m.body);
    expect(m.body).toMatch(/^aios_auth_failures_total\{listener="http",reason="tls_handshake"\} 1$/m);
    expect(logs).toContainEqual(expect.stringMatching(/HTTP API \(OpenAI-compatible, \/metrics\) on 127\.0\.0\.1:\d+ \(TLS\), API keys required/));
  });

  it('no private key and no API key appears in the daemon log, /metrics, or what the tools printed', () => {
    expect(privateKeys.length).toBeGreaterThan(20);
    expect(apiKeys.length).toBeGreaterThanOrEqual(4);
    const text = [...logs, ...outputs].join('\n');
    expect(logs.length).toBeGreaterThan(10);
    for (const line of privateKeys) expect(text.includes(line), 'a private key line').toBe(false);
    for (const k of apiKeys) {
      expect(text.includes(k), 'an API key').toBe(false);
      expect(text.includes(k.split('_').slice(2).join('_')), "an API key's secret").toBe(false);
    }
  });
});
