/**
 * The runtime service and both front ends (real gRPC client, real HTTP) over fake llama-server
 * children (test/fake-child.ts): request validation and defaults, per-request timeouts,
 * max_restarts, always_loaded, load_on_demand, PinModel (idle unloading, eviction), live tokens/s of
 * streams (gRPC, HTTP), log_level, LoadModel.port, one model per file; a stop with idle HTTP(S)
 * connections open that does not wait for the grace period.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { Agent as HttpAgent, get as httpGet, request as httpRequest } from 'node:http';
import { Agent as HttpsAgent, get as httpsGet, request as httpsRequest } from 'node:https';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { createPki } from '../../src/pki/index.js';
import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { RuntimeConfigSchema, type RuntimeConfig } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { connect, streamInfer, unary, type RuntimeClient } from '../../src/runtime/client.js';
import { Code } from '../../src/runtime/errors.js';
import { FakeLauncher } from '../fake-child.js';
import { writeTestGguf } from '../gguf-writer.js';
import { cli, tmp } from '../helpers.js';

const dir = tmp('aios-service-');
writeTestGguf(join(dir, 'op.gguf'));
for (const f of ['tac', 'x', 'y', 'z']) copyFileSync(join(dir, 'op.gguf'), join(dir, `${f}.gguf`));

function config(o: { runtime?: object; system?: object; operational?: object; tactical?: object } = {}): RuntimeConfig {
  return RuntimeConfigSchema.parse({
    runtime: { llama_server: '/nonexistent', socket: '', listen: '127.0.0.1:0', http_listen: '127.0.0.1:0', health_interval: '1s', request_timeout: '10s', max_restarts: 1, ...o.runtime },
    system: o.system ?? {},
    models: { model_dir: dir, operational: { name: 'op.gguf', ctx_size: 256, max_tokens: 32, temperature: 0.3, ...o.operational }, ...(o.tactical ? { tactical: { name: 'tac.gguf', ctx_size: 512, ...o.tactical } } : {}) },
  });
}

let running: Daemon[] = [];
async function daemon(c: RuntimeConfig, log: string[] = []) {
  const launcher = new FakeLauncher();
  const d = await startDaemon(c, { log: (s) => log.push(s), service: { launcher, supervisor: { child: { backoffMs: () => 1, pollMs: 5 } } } });
  running.push(d);
  return { d, launcher, grpc: connect(`127.0.0.1:${d.listening.tcpPort}`), http: `http://127.0.0.1:${d.http!.port}` };
}
const grpcFailure = (p: Promise<unknown>) => p.then(() => undefined, (e: grpc.ServiceError) => e);

describe('request validation: the same table on gRPC and HTTP', () => {
  let s: Awaited<ReturnType<typeof daemon>>;
  beforeAll(async () => {
    s = await daemon(config());
    running = [];
  });
  afterAll(async () => {
    await s.d.stop();
  });
  // field, value, what the error names. ctx_size 256 is the model's ceiling (no max_tokens_limit set).
  const bad: [string, number, RegExp][] = [
    ['max_tokens', -1, /^max_tokens: must be an integer of at least 1 \(got -1\)/],
    ['max_tokens', 257, /^max_tokens: 257 is more than this model allows \(256, the context size of \[models.operational\]\)/],
    ['temperature', -0.5, /^temperature: must be a number from 0 to 2 \(got -0.5\)/],
    ['temperature', 2.5, /^temperature: must be a number from 0 to 2/],
  ];
  for (const [field, value, re] of bad) {
    it(`${field} = ${value}: gRPC INVALID_ARGUMENT and HTTP 400, naming the field; nothing reaches a child`, async () => {
      const before = s.launcher.bodies.length;
      const g = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'hi', [field]: value }));
      expect(g?.code).toBe(Code.INVALID_ARGUMENT);
      expect(g?.details).toMatch(re);
      const r = await fetch(`${s.http}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], [field]: value }) });
      expect(r.status).toBe(400);
      const j = (await r.json()) as { error: { message: string; code: string } };
      expect(j.error.message).toMatch(re);
      expect(j.error.code).toBe('invalid_argument');
      expect(s.launcher.bodies.length).toBe(before);
    });
  }
  it('HTTP-only fields are checked the same way (top_p, n, strings for numbers)', async () => {
    for (const [body, re] of [
      [{ top_p: 1.5 }, /^top_p: must be a number from 0 to 1/],
      [{ n: 2 }, /^n: must be an integer from 1 to 1/],
      [{ max_tokens: '10' }, /^max_tokens: must be an integer of at least 1 \(got "10"\)/],
      [{ n_predict: -1 }, /^n_predict: must be an integer of at least 1/],
      [{ max_tokens: 2.5 }, /^max_tokens: must be an integer/], // gRPC's int32 cannot carry this
    ] as const) {
      const r = await fetch(`${s.http}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], ...body }) });
      expect(r.status).toBe(400);
      expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(re);
    }
  });
  it('no max_tokens or temperature: the layer\'s values, on both front ends', async () => {
    s.launcher.bodies.length = 0;
    await unary(s.grpc, 'Infer', { prompt: 'hi' });
    const r = await fetch(`${s.http}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }] }) });
    expect(r.status).toBe(200);
    expect(s.launcher.bodies.map((b) => [b.max_tokens, b.temperature])).toEqual([
      [32, 0.3],
      [32, 0.3],
    ]);
    // given values pass; a gRPC temperature of 0 is a real 0 (proto3 optional), not "unset"
    s.launcher.bodies.length = 0;
    await unary(s.grpc, 'Infer', { prompt: 'hi', max_tokens: 5, temperature: 0 });
    expect(s.launcher.bodies[0]).toMatchObject({ max_tokens: 5, temperature: 0 });
  });
});

describe('runtime service with fake children', () => {
  afterEach(async () => {
    for (const d of running.splice(0)) await d.stop();
  });
  it('a per-request timeout_ms ends a slow answer with DEADLINE_EXCEEDED, and the slot is free again', async () => {
    const s = await daemon(config());
    s.launcher.b.answerDelayMs = 2000;
    const t0 = Date.now();
    const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'slow', timeout_ms: 200 }));
    expect(e?.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(e?.details).toMatch(/no answer within 200 ms/);
    expect(Date.now() - t0).toBeLessThan(1500);
    s.launcher.b.answerDelayMs = 0;
    expect((await unary(s.grpc, 'Infer', { prompt: 'fast' })).text).toBe('OK');
    expect(s.d.service.models()[0]).toMatchObject({ inflight: 0, state: 'ready' });
  });

  it('HealthCheck reports the GPU memory budget (vram_budget) and its use; none without a GPU budget', async () => {
    const a = await daemon(config({ runtime: { vram_budget: '8G' } }));
    expect(await unary(a.grpc, 'HealthCheck', {})).toMatchObject({ vram_budget_bytes: 8 * 2 ** 30, vram_used_bytes: 0 });
    await a.d.stop();
    const b = await daemon(config());
    // "auto" with no NVIDIA GPU on this host (nvidia-smi absent): not budgeted.
    expect(await unary(b.grpc, 'HealthCheck', {})).toMatchObject({ vram_budget_bytes: 0, vram_used_bytes: 0 });
  });

  it('max_restarts reached: the model is failed, requests get FAILED_PRECONDITION with the reason', async () => {
    const s = await daemon(config({ runtime: { max_restarts: 1 } }));
    s.launcher.last.exit(1);
    while (s.d.service.models()[0]!.restarts < 1 || s.d.service.models()[0]!.state !== 'ready') await new Promise((r) => setTimeout(r, 5));
    s.launcher.last.exit(1);
    while (s.d.service.models()[0]!.state !== 'failed') await new Promise((r) => setTimeout(r, 5));
    const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'hi' }));
    expect(e?.code).toBe(Code.FAILED_PRECONDITION);
    expect(e?.details).toMatch(/op failed: crashed 2 times in 5 minutes/);
    const list = await unary(s.grpc, 'ListModels', {});
    expect(list.models[0]).toMatchObject({ name: 'op', state: 'failed', restarts: 1 });
  });

  it('always_loaded = true: a tactical model is loaded at start and pinned; load_on_demand = false refuses to load on a request', async () => {
    const a = await daemon(config({ tactical: { always_loaded: true } }));
    expect(a.d.service.models().map((m) => [m.name, m.state, m.pinned, m.idleUntil]).sort()).toEqual([
      ['op', 'ready', true, 0],
      ['tac', 'ready', true, 0],
    ]);
    await a.d.stop();
    const b = await daemon(config({ tactical: { load_on_demand: false } }));
    expect(b.d.service.models().map((m) => m.name)).toEqual(['op']);
    const e = await grpcFailure(unary(b.grpc, 'Infer', { prompt: 'hi', intelligence_level: 'tactical' }));
    expect(e?.code).toBe(Code.FAILED_PRECONDITION);
    expect(e?.details).toMatch(/tac \(\[models.tactical\]\) is not loaded and load_on_demand = false: load it first with `aios runtime load tac`/);
    // an explicit load works, and then requests are served
    await unary(b.grpc, 'LoadModel', { model_name: 'tac' });
    expect((await unary(b.grpc, 'Infer', { prompt: 'hi', intelligence_level: 'tactical' })).model_used).toBe('tac');
  });

  it('PinModel: a pinned model is not unloaded for idleness; unpinned it is; the config\'s pins and models not loaded are refused with the reason', async () => {
    const s = await daemon(config({ runtime: { health_interval: '100ms' }, tactical: { unload_after_idle: '1s' } }));
    const op = await grpcFailure(unary(s.grpc, 'PinModel', { model_name: 'op', pinned: false }));
    expect(op?.code).toBe(Code.FAILED_PRECONDITION);
    expect(op?.details).toBe('model op is pinned by the config: the operational model is always pinned');
    const absent = await grpcFailure(unary(s.grpc, 'PinModel', { model_name: 'tac', pinned: true }));
    expect(absent?.code).toBe(Code.FAILED_PRECONDITION);
    expect(absent?.details).toMatch(/^model tac is not loaded: load it first \(a pin keeps a loaded model in memory; it does not load one\)/);
    expect((await grpcFailure(unary(s.grpc, 'PinModel', { model_name: '', pinned: true })))?.code).toBe(Code.INVALID_ARGUMENT);
    // pinning op again is a no-op that says who pinned it
    expect(await unary(s.grpc, 'PinModel', { model_name: 'op', pinned: true })).toMatchObject({ name: 'op', pinned: true, pinned_by: 'config' });

    await unary(s.grpc, 'LoadModel', { model_name: 'tac' });
    const pinned = await unary(s.grpc, 'PinModel', { model_name: 'tac', pinned: true });
    expect(pinned).toMatchObject({ name: 'tac', state: 'ready', pinned: true, pinned_by: 'request', idle_until_unix_ms: 0 });
    await new Promise((r) => setTimeout(r, 2200)); // more than twice its idle timeout, many health ticks
    const listed = (await unary(s.grpc, 'ListModels', {})).models.find((m) => m.name === 'tac');
    expect(listed).toMatchObject({ state: 'ready', pinned: true, pinned_by: 'request' });

    const t0 = Date.now();
    const unpinned = await unary(s.grpc, 'PinModel', { model_name: 'tac', pinned: false });
    expect(unpinned).toMatchObject({ pinned: false, pinned_by: '' });
    // idle time counts from its last use, pinned or not: 2.2 s idle > 1 s, so it goes at the next health tick
    expect(Number(unpinned.idle_until_unix_ms)).toBeGreaterThan(0);
    expect(Number(unpinned.idle_until_unix_ms)).toBeLessThan(t0);
    while (s.d.service.models().some((m) => m.name === 'tac')) {
      expect(Date.now() - t0).toBeLessThan(5000);
      await new Promise((r) => setTimeout(r, 20));
    }

    // a pin ends when the model is unloaded by request: loaded again, it is not pinned
    await unary(s.grpc, 'LoadModel', { model_name: 'tac' });
    await unary(s.grpc, 'PinModel', { model_name: 'tac', pinned: true });
    await unary(s.grpc, 'UnloadModel', { model_name: 'tac' });
    expect(await unary(s.grpc, 'LoadModel', { model_name: 'tac' })).toMatchObject({ pinned: false, pinned_by: '' });

    const a = await daemon(config({ tactical: { always_loaded: true } }));
    const al = await grpcFailure(unary(a.grpc, 'PinModel', { model_name: 'tac', pinned: false }));
    expect(al?.code).toBe(Code.FAILED_PRECONDITION);
    expect(al?.details).toBe('model tac is pinned by the config: [models.tactical] has always_loaded = true; set it to false and restart the runtime to unpin it');

    // the CLI: `aios runtime pin|unpin`; a refusal exits 1 with the runtime's reason
    const addr = `127.0.0.1:${a.d.listening.tcpPort}`;
    await unary(a.grpc, 'LoadModel', { model_name: 'x', model_path: join(dir, 'x.gguf') });
    const run = async (args: string[]) => {
      const r = await cli(['runtime', ...args, '-a', addr]);
      return `${r.exitCode} ${r.stdout.trim()}${r.stderr.trim()}`;
    };
    expect(await run(['pin', 'x'])).toBe('0 x: pinned (by request)');
    expect(await run(['pin', 'tac'])).toBe('0 tac: pinned (by config)');
    expect(await run(['unpin', 'x'])).toBe('0 x: not pinned');
    expect(await run(['unpin', 'tac'])).toMatch(/^1 aios: unpin tac: .*model tac is pinned by the config: \[models\.tactical\] has always_loaded = true/);
  });

  it('PinModel: under memory pressure a pinned model is not evicted; the least recently used unpinned one is', async () => {
    // every child counts 100 MiB (the fake's measure and cgroup): op, tac, x = 300 MiB; a fourth
    // (estimated ~20 MiB) does not fit in 310 MiB, so one idle unpinned model must go.
    class Measured extends FakeLauncher {
      cgroupStats() {
        return { currentBytes: 100 * 1024 * 1024, peakBytes: 0, limitBytes: 0, oomKills: 0 };
      }
    }
    const launcher = new Measured();
    const d = await startDaemon(config({ runtime: { memory_budget: '310M' }, tactical: {} }), { log: () => {}, service: { launcher, supervisor: { child: { backoffMs: () => 1, pollMs: 5 } } } });
    running.push(d);
    const g = connect(`127.0.0.1:${d.listening.tcpPort}`);
    const names = async () => (await unary(g, 'ListModels', {})).models.map((m) => m.name).sort();
    await unary(g, 'LoadModel', { model_name: 'tac' });
    await new Promise((r) => setTimeout(r, 5));
    await unary(g, 'LoadModel', { model_name: 'x', model_path: join(dir, 'x.gguf') });
    expect(await names()).toEqual(['op', 'tac', 'x']);
    // tac is the least recently used: pinned, it stays and x goes
    await unary(g, 'PinModel', { model_name: 'tac', pinned: true });
    await unary(g, 'LoadModel', { model_name: 'y', model_path: join(dir, 'y.gguf') });
    expect(await names()).toEqual(['op', 'tac', 'y']);
    // unpinned, it is the one evicted next
    await unary(g, 'PinModel', { model_name: 'tac', pinned: false });
    await unary(g, 'LoadModel', { model_name: 'z', model_path: join(dir, 'z.gguf') });
    expect(await names()).toEqual(['op', 'y', 'z']);
  });

  for (const front of ['gRPC StreamInfer', 'HTTP stream'] as const) {
    it(`tokens/s shows while a ${front} generation runs (tokens counted as produced), and its end does not count them twice`, async () => {
      const s = await daemon(config());
      s.launcher.b.streamPieces = 40;
      s.launcher.b.pieceDelayMs = 50; // 40 tokens over ~2 s
      const base = (await unary(s.grpc, 'ListModels', {})).models[0]!.tokens_per_second; // the start-up probe's token
      const done =
        front === 'gRPC StreamInfer'
          ? streamInfer(s.grpc, { prompt: 'long' }, () => {})
          : fetch(`${s.http}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ messages: [{ role: 'user', content: 'long' }], stream: true }) }).then((r) => r.text());
      await new Promise((r) => setTimeout(r, 1000));
      const during = (await unary(s.grpc, 'ListModels', {})).models[0]!;
      expect(during.inflight).toBe(1); // still generating
      expect(during.tokens_per_second - base).toBeGreaterThan(0.5); // ~20 tokens in the 10 s window
      expect(during.tokens_per_second - base).toBeLessThan(4);
      await done;
      const after = (await unary(s.grpc, 'ListModels', {})).models[0]!;
      expect(after.inflight).toBe(0);
      expect(after.tokens_per_second - base).toBeCloseTo(4, 1); // 40 tokens / 10 s, not 80
    });
  }

  it('log_level filters what the daemon logs', async () => {
    const info: string[] = [];
    await daemon(config(), info);
    expect(info.some((l) => /^ready \d+ ms after the daemon started/.test(l))).toBe(true);
    expect(info.some((l) => l.startsWith('front ends up after'))).toBe(false); // debug
    const debug: string[] = [];
    await daemon(config({ system: { log_level: 'debug' } }), debug);
    expect(debug.some((l) => l.startsWith('front ends up after'))).toBe(true);
    const warn: string[] = [];
    await daemon(config({ system: { log_level: 'warn' }, runtime: { listen: '0.0.0.0:0', insecure_listen: true } }), warn);
    expect(warn).toEqual([expect.stringMatching(/^gRPC on 0\.0\.0\.0:0 without TLS \(runtime\.insecure_listen = true\): anyone who can reach it has admin access/)]);
  });

  it('refuses to start on a TCP address beyond loopback without TLS, naming the keys to set; nothing is started', async () => {
    const launcher = new FakeLauncher();
    const e = await startDaemon(config({ runtime: { listen: '0.0.0.0:0' } }), { log: () => {}, service: { launcher } }).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(e?.message).toMatch(/^runtime\.listen = "0\.0\.0\.0:0" is not loopback and has no TLS: set runtime\.tls_cert, runtime\.tls_key and runtime\.tls_client_ca \(mutual TLS\), or runtime\.insecure_listen = true/);
    expect(launcher.procs).toEqual([]);
  });

  it('LoadModel.port is refused (the runtime picks ports), not ignored', async () => {
    const s = await daemon(config());
    const e = await grpcFailure(unary(s.grpc, 'LoadModel', { model_name: 'x', model_path: join(dir, 'tac.gguf'), port: 9999 }));
    expect(e?.code).toBe(Code.INVALID_ARGUMENT);
    expect(e?.details).toMatch(/^port: the runtime chooses each llama-server's loopback port itself; send 0 \(got 9999\)/);
    expect((await unary(s.grpc, 'LoadModel', { model_name: 'x', model_path: join(dir, 'tac.gguf') })).state).toBe('ready');
  });

  it('LoadModel.memory_limit_bytes is the model\'s memory.max instead of its footprint + margin; below 1 MiB it is refused', async () => {
    const s = await daemon(config());
    const e = await grpcFailure(unary(s.grpc, 'LoadModel', { model_name: 'y', model_path: join(dir, 'y.gguf'), memory_limit_bytes: 4096 }));
    expect(e?.code).toBe(Code.INVALID_ARGUMENT);
    expect(e?.details).toMatch(/^memory_limit_bytes: 0 \(the budgeted footprint \+ runtime.child_memory_margin\) or at least 1 MiB \(got 4096\)/);
    expect((await unary(s.grpc, 'LoadModel', { model_name: 'y', model_path: join(dir, 'y.gguf'), memory_limit_bytes: 64 * 1024 * 1024 })).state).toBe('ready');
    expect(s.launcher.profiles.find((p) => p.name === 'y')).toMatchObject({ memoryMaxBytes: 64 * 1024 * 1024, memoryLimitBytes: 64 * 1024 * 1024 });
    // Without it: the footprint estimate + 10 %.
    await unary(s.grpc, 'LoadModel', { model_name: 'z', model_path: join(dir, 'z.gguf') });
    const z = s.launcher.profiles.find((p) => p.name === 'z')!;
    expect(z.memoryMaxBytes).toBeUndefined();
    expect(z.memoryLimitBytes).toBeGreaterThan(0);
    expect(z.memoryLimitBytes).not.toBe(64 * 1024 * 1024);
  });

  it('two layers naming one file are a configuration error that says why', () => {
    const r = RuntimeConfigSchema.safeParse({ models: { operational: { name: 'tiny.gguf' }, tactical: { name: 'tiny.gguf', ctx_size: 1024 } } });
    expect(r.success).toBe(false);
    expect(r.error!.issues[0]!.path).toEqual(['models', 'tactical', 'name']);
    expect(r.error!.issues[0]!.message).toMatch(/"tiny.gguf" is also \[models.operational\]'s file: a model is named by its file/);
  });
});

describe('stopping with connections open', () => {
  afterEach(async () => {
    for (const d of running.splice(0)) await d.stop();
  });
  for (const tls of [false, true]) {
    it(`${tls ? 'HTTPS' : 'HTTP'}: idle connections (a client's spare one with no request yet, a kept-alive one) are closed at once, so stop() never waits for the grace period; a stream in flight still finishes`, async () => {
      // over TLS, the image's way (http_tls with the per-image certificates; gRPC then has mutual TLS)
      const pki = tls ? await createPki(join(dir, 'stop.pki'), { hostname: 'localhost' }) : undefined;
      const s = await daemon(config({ runtime: pki ? { tls_cert: pki.serverCert, tls_key: pki.serverKey, tls_client_ca: pki.caCert, http_tls: 'on' } : {} }));
      const base = s.http.replace(/^http:/, tls ? 'https:' : 'http:');
      const server = s.d.http!.server;
      const forceHttp = vi.spyOn(server, 'closeAllConnections');
      const forceGrpc = vi.spyOn(s.d.listening.server, 'forceShutdown');
      if (!tls) await unary(s.grpc, 'HealthCheck', {}); // the gRPC client connected, idle at the stop
      const agent = tls ? new HttpsAgent({ keepAlive: true, ca: readFileSync(pki!.caCert) }) : new HttpAgent({ keepAlive: true });
      const get = tls ? httpsGet : httpGet;
      const ask = tls ? httpsRequest : httpRequest;
      // a kept-alive connection whose answer is done
      const kept = await new Promise<Socket>((resolve, reject) => {
        const req = get(`${base}/health`, { agent }, (r) => {
          r.resume();
          r.on('end', () => resolve(req.socket!));
        }).on('error', reject);
      });
      // a connection opened ahead of a request that never came (as HTTP clients do for the next one)
      const port = Number(base.split(':').pop());
      const spare: Socket = tls ? tlsConnect({ port, host: '127.0.0.1', servername: 'localhost', ca: readFileSync(pki!.caCert) }) : netConnect(port, '127.0.0.1');
      spare.on('error', () => {});
      await new Promise((r) => spare.once(tls ? 'secureConnect' : 'connect', r));
      const closed = new Set<string>();
      for (const [name, sock] of [['kept', kept], ['spare', spare]] as const) sock.once('close', () => closed.add(name));
      while ((await new Promise<number>((r) => server.getConnections((_e, n) => r(n)))) < 2) await new Promise((r) => setTimeout(r, 5));
      // a stream in flight: 6 pieces, 100 ms apart
      s.launcher.b.streamPieces = 6;
      s.launcher.b.pieceDelayMs = 100;
      let text = '';
      let first!: () => void;
      const started = new Promise<void>((r) => (first = r));
      const streamed = new Promise<void>((resolve, reject) => {
        const req = ask(`${base}/v1/chat/completions`, { method: 'POST', agent: tls ? new HttpsAgent({ ca: readFileSync(pki!.caCert) }) : undefined }, (r) => {
          r.setEncoding('utf8');
          r.on('data', (c: string) => {
            text += c;
            first();
          });
          r.on('end', resolve);
          r.on('error', reject);
        });
        req.on('error', reject);
        req.end(JSON.stringify({ messages: [{ role: 'user', content: 'long' }], stream: true }));
      });
      await started;
      running = running.filter((d) => d !== s.d);
      await s.d.stop();
      await streamed;
      s.grpc.close();
      agent.destroy();
      expect(text.match(/"content":"OK"/g)).toHaveLength(6);
      expect(text).toMatch(/data: \[DONE\]\n\n$/);
      // the server ended both idle connections itself, and nobody was cut off by the grace timers
      expect([...closed].sort()).toEqual(['kept', 'spare']);
      expect(forceHttp).not.toHaveBeenCalled();
      expect(forceGrpc).not.toHaveBeenCalled();
    });
  }
});

// The client is closed with its daemon; keep the type import used.
export type _ = RuntimeClient;
