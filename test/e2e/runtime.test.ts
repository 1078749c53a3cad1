/**
 * aios-runtime end to end: the real daemon with real llama-server children (llama.cpp from the
 * default recipe's cached stage) and a synthesized tiny model, driven over real gRPC.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { runtimeFixture } from './runtime-fixture.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { PROTO_DIR } from '../../src/runtime/server.js';
import { getChild } from '../../src/runtime/upstream.js';
import { REPO, tmp } from '../helpers.js';

type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;
let daemon: Daemon;
let client: Client;
let health: Client;
let addr = '';
const dir = tmp('aios-runtime-');

function call<T>(method: string, req: object, c: Client = client): Promise<T> {
  return new Promise((resolve, reject) => (c[method] as (r: object, cb: (e: grpc.ServiceError | null, r: T) => void) => void).call(c, req, (e, r) => (e ? reject(e) : resolve(r))));
}
function stream(req: object): Promise<{ chunks: { text: string; done: boolean; model_used: string }[]; error?: grpc.ServiceError; first: Promise<void> }> {
  return new Promise((resolve) => {
    const chunks: { text: string; done: boolean; model_used: string }[] = [];
    let gotFirst: () => void = () => {};
    const first = new Promise<void>((r) => (gotFirst = r));
    const s = (client.StreamInfer as (r: object) => grpc.ClientReadableStream<{ text: string; done: boolean; model_used: string }>).call(client, req);
    s.on('data', (d) => {
      chunks.push(d);
      gotFirst();
    });
    s.on('error', (error: grpc.ServiceError) => resolve({ chunks, error, first }));
    s.on('end', () => resolve({ chunks, first }));
  });
}
const pidAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

describe('aios-runtime', () => {
  beforeAll(async () => {
    const fx = await runtimeFixture(dir);
    copyFileSync(join(dir, 'tiny.gguf'), join(dir, 'tactical.gguf'));
    const config = RuntimeConfigSchema.parse({
      runtime: { llama_server: fx.llamaServer, socket: join(dir, 'runtime.sock'), listen: '127.0.0.1:0', health_interval: '1s', load_timeout: '60s', request_timeout: '60s', max_restarts: 5 },
      models: {
        model_dir: dir,
        operational: { name: 'tiny.gguf', parallel: 4, ctx_size: 512 },
        tactical: { name: 'tactical.gguf', parallel: 1, ctx_size: 512, unload_after_idle: '2s' },
      },
    });
    daemon = await startDaemon(config, { log: () => {} });
    addr = `127.0.0.1:${daemon.listening.tcpPort}`;
    const def = protoLoader.loadSync(['runtime.proto', 'health.proto'], { includeDirs: [PROTO_DIR], keepCase: true, longs: Number, defaults: true, enums: String });
    const pkg = grpc.loadPackageDefinition(def) as unknown as Record<string, Record<string, Record<string, new (a: string, c: grpc.ChannelCredentials) => Client>>> & {
      grpc: { health: { v1: { Health: new (a: string, c: grpc.ChannelCredentials) => Client } } };
    };
    client = new pkg.aios!.runtime!.AIRuntime!(addr, grpc.credentials.createInsecure());
    health = new pkg.grpc.health.v1.Health(addr, grpc.credentials.createInsecure());
  }, 20 * 60_000);

  afterAll(async () => {
    await daemon?.stop();
  });

  it('is ready only after the operational model answered its probe; standard health says SERVING', async () => {
    expect(await call('HealthCheck', {})).toMatchObject({ ready: true, status: 'SERVING', models_ready: 1 });
    expect(await call('Check', { service: '' }, health)).toEqual({ status: 'SERVING' });
    const list = await call<{ models: { name: string; state: string; pid: number; port: number; memory_bytes: number; level: string }[] }>('ListModels', {});
    expect(list.models).toHaveLength(1);
    expect(list.models[0]).toMatchObject({ name: 'tiny', level: 'operational', state: 'ready' });
    expect(list.models[0]!.pid).toBeGreaterThan(0);
    expect(list.models[0]!.memory_bytes).toBeGreaterThan(10_000_000);
  });

  it('Infer answers with the model used and token counts (grammar-constrained probe)', async () => {
    const r = await call<{ text: string; tokens_used: number; model_used: string; latency_ms: number }>('Infer', { prompt: 'Respond with OK if you are working.', intelligence_level: 'operational', max_tokens: 8, grammar: 'root ::= "OK"' });
    expect(r.text).toBe('OK');
    expect(r.model_used).toBe('tiny');
    expect(r.tokens_used).toBeGreaterThan(0);
    expect(r.latency_ms).toBeGreaterThanOrEqual(0);
  });

  it('StreamInfer streams chunks and ends with done', async () => {
    const s = await stream({ prompt: 'Count to ten.', max_tokens: 20, temperature: 0.5 });
    expect(s.error).toBeUndefined();
    expect(s.chunks.length).toBeGreaterThan(2);
    expect(s.chunks.at(-1)).toMatchObject({ done: true, model_used: 'tiny' });
    expect(s.chunks.slice(0, -1).every((c) => !c.done && c.text.length > 0)).toBe(true);
  });

  it('rejects bad requests with precise codes and survives them', async () => {
    const code = async (req: object) => (await call('Infer', req).then(() => undefined, (e: grpc.ServiceError) => e)) as grpc.ServiceError;
    expect((await code({ prompt: '' })).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await code({ prompt: 'x', intelligence_level: 'genius' })).details).toMatch(/^intelligence_level: must be one of operational, tactical, strategic \(got "genius"\)/);
    expect((await code({ prompt: 'x', temperature: 7 })).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect((await code({ prompt: 'x', model: 'nope' })).code).toBe(grpc.status.NOT_FOUND);
    const strategic = await code({ prompt: 'x', intelligence_level: 'strategic' });
    expect(strategic.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(strategic.details).toMatch(/cloud gateway.*no local model is used/);
    expect((await call<{ code?: number }>('UnloadModel', { model_name: 'nope' }).catch((e: grpc.ServiceError) => e)).code).toBe(grpc.status.NOT_FOUND);
    expect((await call<{ ready: boolean }>('HealthCheck', {})).ready).toBe(true);
  });

  it('loads the tactical model on demand and unloads it when idle', { timeout: 60_000 }, async () => {
    const r = await call<{ model_used: string }>('Infer', { prompt: 'hi', intelligence_level: 'tactical', max_tokens: 4 });
    expect(r.model_used).toBe('tactical');
    let names = (await call<{ models: { name: string }[] }>('ListModels', {})).models.map((m) => m.name).sort();
    expect(names).toEqual(['tactical', 'tiny']);
    const t0 = Date.now();
    while (names.includes('tactical') && Date.now() - t0 < 20_000) {
      await new Promise((res) => setTimeout(res, 500));
      names = (await call<{ models: { name: string }[] }>('ListModels', {})).models.map((m) => m.name);
    }
    expect(names).toEqual(['tiny']); // the operational model stays
  });

  it('kill -9 of a child mid-stream: the client gets UNAVAILABLE, the daemon restarts it and serves the next request', { timeout: 60_000 }, async () => {
    const before = (await call<{ models: { name: string; pid: number; restarts: number }[] }>('ListModels', {})).models.find((m) => m.name === 'tiny')!;
    const p = stream({ prompt: 'Write a long story.', max_tokens: 512, temperature: 1 });
    const s0 = Date.now();
    // wait for the first chunk, then kill the child
    while (Date.now() - s0 < 10_000) {
      const list = await call<{ models: { name: string; pid: number }[] }>('ListModels', {});
      if (list.models.length) break;
    }
    await new Promise((r) => setTimeout(r, 300));
    process.kill(before.pid, 'SIGKILL');
    const s = await p;
    expect(s.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(s.error?.details).toMatch(/died .* being restarted/);
    const r = await call<{ text: string }>('Infer', { prompt: 'Respond with OK if you are working.', max_tokens: 8, grammar: 'root ::= "OK"' });
    expect(r.text).toBe('OK');
    const after = (await call<{ models: { name: string; pid: number; restarts: number; state: string }[] }>('ListModels', {})).models.find((m) => m.name === 'tiny')!;
    expect(after).toMatchObject({ state: 'ready', restarts: before.restarts + 1 });
    expect(after.pid).not.toBe(before.pid);
  });

  it('LoadModel of a broken GGUF fails with FAILED_PRECONDITION naming llama-server\'s reason; ListModels shows it failed', { timeout: 60_000 }, async () => {
    const { writeFileSync } = await import('node:fs');
    writeFileSync(join(dir, 'broken.gguf'), Buffer.concat([Buffer.from('GGUF'), Buffer.alloc(4096, 0xff)]));
    const e = await call('LoadModel', { model_name: 'broken', model_path: join(dir, 'broken.gguf') }).then(() => undefined, (x: grpc.ServiceError) => x);
    expect(e?.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(e?.details).toMatch(/llama-server exited while loading broken/);
    const broken = (await call<{ models: { name: string; state: string; error: string }[] }>('ListModels', {})).models.find((m) => m.name === 'broken');
    expect(broken).toMatchObject({ state: 'failed' });
    const outside = await call('LoadModel', { model_name: 'x', model_path: '/etc/passwd' }).then(() => undefined, (x: grpc.ServiceError) => x);
    expect(outside?.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(outside?.details).toMatch(/model_path: must be inside/);
  });

  it('a client that goes away cancels the generation in llama-server', { timeout: 60_000 }, async () => {
    // The child itself: its unix socket when sandboxed (the default where bwrap works), else its port.
    const m = (await call<{ models: { name: string; port: number; socket: string }[] }>('ListModels', {})).models.find((x) => x.name === 'tiny')!;
    const busy = async () => {
      const slots = JSON.parse((await getChild(m.socket || m.port, '/slots', 5000)).body) as { is_processing: boolean }[];
      return slots.some((x) => x.is_processing);
    };
    const s = (client.StreamInfer as (r: object) => grpc.ClientReadableStream<{ text: string }>).call(client, { prompt: 'Write a very long story.', max_tokens: 512, temperature: 1 });
    s.on('error', () => {});
    await new Promise<void>((r) => s.once('data', () => r()));
    expect(await busy()).toBe(true);
    s.cancel();
    const t0 = Date.now();
    while ((await busy()) && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 100));
    expect(await busy()).toBe(false);
  });

  it('serves 50 concurrent streams with none lost', { timeout: 120_000 }, async () => {
    const all = await Promise.all(Array.from({ length: 50 }, (_, i) => stream({ prompt: `Stream ${i}`, max_tokens: 16 })));
    expect(all.filter((s) => s.error).map((s) => s.error!.details)).toEqual([]);
    expect(all.every((s) => s.chunks.at(-1)?.done === true)).toBe(true);
  });

  it('an independent client (Python grpcio) calls Infer and lists the services by reflection', { timeout: 60_000 }, async () => {
    const refl = join(REPO, 'node_modules/@grpc/reflection/build/proto');
    const py = join(REPO, 'test/fixtures/independent_client.py');
    const list = await execa('/usr/bin/python3', [py, addr, PROTO_DIR, refl, 'list']);
    expect(JSON.parse(list.stdout)).toEqual(expect.arrayContaining(['aios.runtime.AIRuntime', 'grpc.health.v1.Health']));
    const infer = await execa('/usr/bin/python3', [py, addr, PROTO_DIR, refl, 'infer']);
    expect(JSON.parse(infer.stdout)).toMatchObject({ text: 'OK', model_used: 'tiny' });
  });

  it('listens on the unix socket too (mode 0660)', async () => {
    const sock = join(dir, 'runtime.sock');
    expect(existsSync(sock)).toBe(true);
    const { statSync } = await import('node:fs');
    expect(statSync(sock).mode & 0o777).toBe(0o660);
  });

  it('the one-file bundle the image ships runs the same daemon (SIGTERM: exit 0, no orphans)', { timeout: 120_000 }, async () => {
    const { bundleRuntime } = await import('../../src/build/runtime-bundle.js');
    const { connect, unary, waitReady } = await import('../../src/runtime/client.js');
    const { freePort } = await import('../../src/util/net.js');
    const bdir = join(dir, 'bundle');
    const bundle = await bundleRuntime(bdir);
    expect(existsSync(join(bdir, 'catalog.toml'))).toBe(true); // the model catalog ships beside the bundle
    const { writeFileSync } = await import('node:fs');
    const { stringify } = await import('smol-toml');
    const port = await freePort();
    const cfg = join(dir, 'bundle.toml');
    writeFileSync(cfg, stringify({ runtime: { ...daemon.service.config.runtime, socket: '', listen: `127.0.0.1:${port}` }, models: { model_dir: dir, operational: { name: 'tiny.gguf', ctx_size: 512 } } }));
    // Run from a copy outside the repository, as in the image: nothing may be read from node_modules.
    const proc = execa('node', [bundle, '--config', cfg], { cwd: '/', reject: false, env: { ...process.env, NODE_PATH: '' } });
    const c = connect(`127.0.0.1:${port}`);
    try {
      expect(await waitReady(c, 60_000)).toBe(true);
      const r = await unary<{ text: string }>(c, 'Infer', { prompt: 'Respond with OK if you are working.', max_tokens: 8, grammar: 'root ::= "OK"' });
      expect(r.text).toBe('OK');
      const pids = (await unary<{ models: { pid: number }[] }>(c, 'ListModels', {})).models.map((m) => m.pid);
      proc.kill('SIGTERM');
      expect((await proc).exitCode).toBe(0);
      expect(pids.filter(pidAlive)).toEqual([]);
    } finally {
      c.close();
      proc.kill('SIGKILL');
    }
  });

  it('shuts down cleanly: no orphaned llama-server children', { timeout: 30_000 }, async () => {
    const pids = (await call<{ models: { pid: number }[] }>('ListModels', {})).models.map((m) => m.pid).filter((p) => p > 0);
    expect(pids.length).toBeGreaterThan(0);
    expect(pids.every(pidAlive)).toBe(true);
    await daemon.stop();
    expect(pids.filter(pidAlive)).toEqual([]);
  });
});
