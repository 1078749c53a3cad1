/**
 * A model split across llama.cpp RPC workers (issue 20), end to end and for real: three
 * ggml-rpc-server workers, each in a network namespace of its own (a veth pair stands in for the
 * wire), and a head aios-runtime on this side. Only the namespaces this test creates are addressed
 * (10.231.<i>.2 inside, 10.231.<i>.1 this side; the route is checked before anything is sent), and
 * afterAll deletes them even when a test failed.
 *
 * - the split model answers, its layers are on all three workers (their memory grows, and ListModels
 *   says what llama-server placed on each), and its greedy output is the same as the same weights on
 *   the head alone;
 * - a worker killed mid-stream → the request fails UNAVAILABLE naming that worker, requests fail
 *   fast (UNAVAILABLE, the worker named) while it is gone, and the model is served again once it is
 *   back; a worker that goes away while the model is idle is noticed by the health loop;
 * - a load whose share does not fit a worker's memory is refused with the numbers;
 * - the firewall generated from the config, applied in a worker's namespace: a connection from an
 *   address that is not a configured head is refused, the head's still works.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { appendFileSync, copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { runtimeFixture } from './runtime-fixture.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { connect, type RuntimeClient } from '../../src/runtime/client.js';
import { workerNftRules } from '../../src/fleet/firewall.js';
import { NetnsLab, tryConnect, waitForPort, type NsHost } from '../netns.js';
import { tmp } from '../helpers.js';

const PORT = 50052;
const dir = tmp('aios-fleet-rpc-');
const lab = new NetnsLab();
let binDir = '';
let llamaServer = '';
let w1: NsHost;
let w2: NsHost;
let w3: NsHost;
const workers = new Map<NsHost, ChildProcess>();

type Chunk = { text: string; done: boolean };
function call<T>(c: RuntimeClient, method: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => (c[method] as (r: object, cb: (e: grpc.ServiceError | null, r: T) => void) => void).call(c, req, (e, r) => (e ? reject(e) : resolve(r))));
}
const failure = (p: Promise<unknown>) => p.then(() => undefined, (e: grpc.ServiceError) => e);
function stream(c: RuntimeClient, req: object) {
  const chunks: Chunk[] = [];
  const s = (c.StreamInfer as (r: object) => grpc.ClientReadableStream<Chunk>).call(c, req);
  let first: () => void = () => {};
  const firstText = new Promise<void>((r) => (first = r));
  const done = new Promise<{ chunks: Chunk[]; error?: grpc.ServiceError }>((resolve) => {
    s.on('data', (d: Chunk) => {
      chunks.push(d);
      if (d.text) first();
    });
    s.on('error', (error: grpc.ServiceError) => resolve({ chunks, error }));
    s.on('end', () => resolve({ chunks }));
  });
  return { s, done, firstText, chunks };
}
async function until<T>(f: () => Promise<T | undefined> | T | undefined, what: string, ms = 30_000): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
/** The head daemon's log, to a file when AIOS_TEST_LOG names one (else dropped). */
const daemonLog = (s: string) => {
  if (process.env.AIOS_TEST_LOG) appendFileSync(process.env.AIOS_TEST_LOG, s + '\n');
};
const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0) / 1024;
/** The ggml-rpc-server process inside the namespace (ip netns exec execs it: same pid). */
const workerPid = (h: NsHost) => workers.get(h)!.pid!;

async function startWorker(h: NsHost): Promise<void> {
  const p = lab.spawnIn(h, [join(binDir, 'ggml-rpc-server'), '-H', h.addr, '-p', String(PORT)]);
  workers.set(h, p);
  await waitForPort(h.addr, PORT, 15_000);
}
async function killWorker(h: NsHost): Promise<void> {
  const p = workers.get(h)!;
  p.kill('SIGKILL');
  if (p.exitCode === null && p.signalCode === null) await new Promise((r) => p.once('exit', r));
}

function config(extra: { rpc_workers?: object[]; runtime?: object } = {}) {
  return RuntimeConfigSchema.parse({
    runtime: {
      llama_server: llamaServer,
      socket: '',
      listen: '127.0.0.1:0',
      health_interval: '500ms',
      load_timeout: '60s',
      request_timeout: '60s',
      rpc_workers: extra.rpc_workers ?? [{ address: `${w1.addr}:${PORT}` }, { address: `${w2.addr}:${PORT}` }, { address: `${w3.addr}:${PORT}` }],
      ...extra.runtime,
    },
    models: {
      model_dir: dir,
      // The same weights twice: on the head alone, and split across the workers.
      operational: { name: 'small-local.gguf', parallel: 1, ctx_size: 1024 },
      tactical: { name: 'small.gguf', parallel: 1, ctx_size: 1024, rpc: true },
    },
  });
}

beforeAll(async () => {
  NetnsLab.sweep();
  const fx = await runtimeFixture(dir, { 'small.gguf': 'small:f32' });
  copyFileSync(join(dir, 'small.gguf'), join(dir, 'small-local.gguf'));
  binDir = fx.binDir;
  llamaServer = fx.llamaServer;
  w1 = lab.add(1);
  w2 = lab.add(2);
  w3 = lab.add(3);
  await Promise.all([startWorker(w1), startWorker(w2), startWorker(w3)]);
}, 20 * 60_000);

afterAll(async () => {
  await lab.cleanup();
});

describe('a model split across three rpc workers in network namespaces', () => {
  let d: Daemon;
  let c: RuntimeClient;
  beforeAll(async () => {
    d = await startDaemon(config(), { log: daemonLog, service: { supervisor: { child: { backoffMs: () => 200, blockedPollMs: 300 } } } });
    c = connect(`127.0.0.1:${d.listening.tcpPort}`);
  }, 120_000);
  afterAll(async () => {
    c?.close();
    await d?.stop();
  });

  it('answers, with its layers on all three workers, and greedy output identical to the same model on one node', { timeout: 120_000 }, async () => {
    const before = [rssMiB(workerPid(w1)), rssMiB(workerPid(w2)), rssMiB(workerPid(w3))];
    const req = { prompt: 'Tell me about the sea.', max_tokens: 24, temperature: 0 };
    const split = await call<{ text: string; model_used: string }>(c, 'Infer', { ...req, model: 'small' });
    expect(split.model_used).toBe('small');
    expect(split.text.length).toBeGreaterThan(0);
    const m = d.service.models().find((x) => x.name === 'small')!;
    expect(m.state).toBe('ready');
    // The split is visible on the workers: each holds part of the weights (small: ~110 MiB of layers and output).
    const after = [rssMiB(workerPid(w1)), rssMiB(workerPid(w2)), rssMiB(workerPid(w3))];
    for (const i of [0, 1, 2]) expect(after[i]! - before[i]!).toBeGreaterThan(10);
    // …and in the model list: each worker's address and what llama-server placed there, which the
    // worker's own memory shows (its resident set grew by at least half of it).
    expect(m.rpcWorkers.map((w) => w.address)).toEqual([w1, w2, w3].map((h) => `${h.addr}:${PORT}`));
    m.rpcWorkers.forEach((w, i) => {
      expect(w.bytes).toBeGreaterThan(10 * 1024 * 1024);
      expect(w.plannedBytes).toBeGreaterThan(0);
      expect(after[i]! - before[i]!).toBeGreaterThan((0.5 * w.bytes) / (1024 * 1024));
    });
    // …and not on the head: its llama-server holds the token embeddings and little else.
    expect(m.actualBytes).toBeLessThan(130 * 1024 * 1024);
    const local = await call<{ text: string; model_used: string }>(c, 'Infer', { ...req, model: 'small-local' });
    expect(local.model_used).toBe('small-local');
    expect(split.text).toBe(local.text);
  });

  it('a worker killed mid-stream → UNAVAILABLE naming it; requests fail fast while it is gone; served again once it is back', { timeout: 120_000 }, async () => {
    const victim = `${w2.addr}:${PORT}`;
    const s = stream(c, { prompt: 'Write a very long story.', max_tokens: 1000, temperature: 1, model: 'small' });
    await Promise.race([s.firstText, s.done.then((r) => Promise.reject(new Error(`the stream ended before any text: ${r.error?.details ?? 'no error'}`)))]);
    await killWorker(w2);
    const r = await s.done;
    expect(r.error?.code).toBe(grpc.status.UNAVAILABLE);
    expect(r.error?.details).toContain(`rpc worker ${victim}`);
    // While it is gone: at once, UNAVAILABLE, the worker named.
    const t0 = Date.now();
    const e = await failure(call(c, 'Infer', { prompt: 'hello', max_tokens: 4, model: 'small' }));
    expect(e?.code).toBe(grpc.status.UNAVAILABLE);
    expect(e?.details).toMatch(new RegExp(`rpc worker ${victim.replace(/\./g, '\\.')} is unreachable: connection refused`));
    expect(Date.now() - t0).toBeLessThan(30_000); // not held until request_timeout (60 s)
    // The head model is not affected.
    await call(c, 'Infer', { prompt: 'hello', max_tokens: 4, model: 'small-local' });
    // Back: the model reloads by itself and answers.
    await startWorker(w2);
    const ok = await until(async () => (await call<{ text: string }>(c, 'Infer', { prompt: 'hello', max_tokens: 4, model: 'small' }).catch(() => undefined)), 'the split model to answer again');
    expect(ok.text.length).toBeGreaterThan(0);
    const m = d.service.models().find((x) => x.name === 'small')!;
    expect(m.state).toBe('ready');
    expect(m.restarts).toBeGreaterThanOrEqual(1);
  });

  it('a worker that goes away while the model is idle is noticed by the health loop (its connection closed)', { timeout: 120_000 }, async () => {
    const victim = `${w1.addr}:${PORT}`;
    const restarts = d.service.models().find((x) => x.name === 'small')!.restarts;
    await killWorker(w1);
    // No request needed: the health loop sees the head's connection to it in CLOSE_WAIT and restarts the model, which then waits.
    await until(() => d.service.models().find((x) => x.name === 'small' && x.state === 'restarting' && x.error.includes(victim)), 'the model to wait for its worker');
    const e = await failure(call(c, 'Infer', { prompt: 'hello', max_tokens: 4, model: 'small' }));
    expect(e?.code).toBe(grpc.status.UNAVAILABLE);
    expect(e?.details).toContain(`rpc worker ${victim}`);
    await startWorker(w1);
    await until(async () => (await call<{ text: string }>(c, 'Infer', { prompt: 'hello', max_tokens: 4, model: 'small' }).catch(() => undefined)), 'the split model to answer again');
    expect(d.service.models().find((x) => x.name === 'small')!.restarts).toBe(restarts + 1);
  });

  it('the worker firewall from the config: a non-head address is refused, the head still gets through', { timeout: 60_000 }, async () => {
    // The split model is loaded: its head holds both workers. Unload it so w1 is free for probes.
    await call(c, 'UnloadModel', { model_name: 'small' });
    lab.addPeerAddress(1, '10.231.1.3'); // another machine on the worker's network, not a head
    const rules = workerNftRules({ port: PORT, heads: [w1.peer] });
    lab.execIn(w1, ['nft', '-f', '-'], rules);
    expect(lab.execIn(w1, ['nft', 'list', 'table', 'inet', 'aios_rpc_worker'])).toContain(`tcp dport ${PORT} ip saddr ${w1.peer} accept`);
    expect(await tryConnect(w1.addr, PORT, { localAddress: '10.231.1.3' })).toBe('ECONNREFUSED');
    expect(await tryConnect(w1.addr, PORT, { localAddress: w1.peer })).toBe('connected');
    // The split model still loads and answers through the firewall.
    const r = await call<{ text: string }>(c, 'Infer', { prompt: 'hello', max_tokens: 4, model: 'small' });
    expect(r.text.length).toBeGreaterThan(0);
    // The rule counted the refused connection.
    expect(lab.execIn(w1, ['nft', 'list', 'table', 'inet', 'aios_rpc_worker'])).toMatch(/counter packets [1-9]/);
  });
});

describe('admission across the workers', () => {
  it('a share that does not fit a worker\'s memory is refused with the numbers', { timeout: 120_000 }, async () => {
    const d = await startDaemon(config({ rpc_workers: [{ address: `${w1.addr}:${PORT}`, memory: '40M' }, { address: `${w2.addr}:${PORT}` }] }), { log: () => {} });
    const c = connect(`127.0.0.1:${d.listening.tcpPort}`);
    try {
      const e = await failure(call(c, 'Infer', { prompt: 'hello', max_tokens: 4, model: 'small' }));
      expect(e?.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
      expect(e?.details).toMatch(new RegExp(`not enough memory on the rpc workers to load small: needs \\d+ MiB there \\(estimated\\).*${w1.addr.replace(/\./g, '\\.')}:${PORT} \\d+ MiB of 40 MiB \\(reports \\d+ MiB free, memory = 40 MiB\\)`));
    } finally {
      c.close();
      await d.stop();
    }
  });
});
