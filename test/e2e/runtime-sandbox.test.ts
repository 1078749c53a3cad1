/**
 * The model sandbox (issue 16) with real cgroups and real bubblewrap on this host, as root: the
 * daemon (startDaemon, the real launcher) manages a cgroup subtree the test made for it
 * (runtime.cgroup; a cgroup v2 directory, or on a hybrid host like the development machine a cgroup
 * v1 memory cgroup under the test's own), and two stand-in children (test/fixtures/stand-in-llama-
 * server.mjs, a llama-server look-alike that misbehaves on purpose) run through the same cgroup and
 * sandbox path as llama-server:
 *
 * - one allocates past its memory.max → the kernel kills it inside its cgroup, the runtime reports
 *   "out of memory: limit N MiB" (ListModels, the request's error, aios_model_oom_kills_total) and
 *   restarts it, while the other model answers every request sent meanwhile;
 * - one tries an outbound TCP connection, a write outside its directory, a set-user-ID bit and a
 *   user namespace → all fail (the namespaces and file system of the sandbox; its seccomp filter);
 *   the same stand-in with the sandbox off does all four (the control that shows the test can fail).
 *
 * On a Debian 12 host (util-linux 2.38, no Landlock options in setpriv) the sandbox is bubblewrap;
 * the image's (unshare + setpriv with Landlock) is tested in the booted image (test/e2e/image.test.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { PROTO_DIR } from '../../src/runtime/server.js';
import { childMemoryLimit, oomMessage, parseMemoryValue } from '../../src/runtime/cgroup.js';
import { probeSandbox, sandboxLaunch } from '../../src/runtime/sandbox.js';
import { writeTestGguf } from '../gguf-writer.js';
import { REPO, tmp } from '../helpers.js';

const STAND_IN = join(REPO, 'test/fixtures/stand-in-llama-server.mjs');
const MiB = 1024 * 1024;
type Client = grpc.Client & Record<string, (...a: unknown[]) => unknown>;

function call<T>(c: Client, method: string, req: object): Promise<T> {
  return new Promise((resolve, reject) => (c[method] as (r: object, cb: (e: grpc.ServiceError | null, r: T) => void) => void).call(c, req, (e, r) => (e ? reject(e) : resolve(r))));
}

function client(socket: string): Client {
  const def = protoLoader.loadSync(['runtime.proto'], { includeDirs: [PROTO_DIR], keepCase: true, longs: Number, defaults: true, enums: String });
  const pkg = grpc.loadPackageDefinition(def) as unknown as Record<string, Record<string, Record<string, new (a: string, c: grpc.ChannelCredentials) => Client>>>;
  return new pkg.aios!.runtime!.AIRuntime!(`unix:${socket}`, grpc.credentials.createInsecure());
}

/** A cgroup of the test's own for the daemon to manage: v2 under the root, else v1 memory under ours. */
function testCgroup(): { dir: string; v2: boolean } {
  if (process.getuid?.() !== 0) throw new Error('this test needs root (it makes cgroups); CI runs as root');
  const name = `aios-test-sandbox-${process.pid}`;
  if (existsSync('/sys/fs/cgroup/cgroup.controllers')) {
    const dir = join('/sys/fs/cgroup', name);
    mkdirSync(dir);
    return { dir, v2: true };
  }
  const own = /^\d+:memory:(.*)$/m.exec(readFileSync('/proc/self/cgroup', 'utf8'))?.[1];
  if (own === undefined) throw new Error('no cgroup v2 hierarchy and no cgroup v1 memory controller on this host: per-model memory limits cannot be tested');
  const dir = join('/sys/fs/cgroup/memory', own, name);
  mkdirSync(dir);
  return { dir, v2: false };
}

/** Removes a cgroup and the ones under it, waiting (up to 5 s) for exiting processes to leave them. */
async function removeCgroup(dir: string): Promise<void> {
  for (const name of readdirSync(dir)) {
    const sub = join(dir, name);
    if (statSync(sub).isDirectory()) await removeCgroup(sub);
  }
  for (let i = 0; ; i++) {
    try {
      rmdirSync(dir);
      return;
    } catch (e) {
      if (i >= 50) throw new Error(`could not remove the test's cgroup ${dir}: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

interface ModelStatus {
  name: string;
  state: string;
  error: string;
  restarts: number;
  estimate_bytes: number;
  cgroup_memory_bytes: number;
  cgroup_peak_bytes: number;
  memory_limit_bytes: number;
  oom_kills: number;
}

describe('model sandbox: cgroups (real, this host)', () => {
  const dir = tmp('aios-sandbox-');
  let cg: { dir: string; v2: boolean };
  let daemon: Daemon;
  let c: Client;
  const logs: string[] = [];

  beforeAll(async () => {
    cg = testCgroup();
    // 16 layers × 1024: an estimate of ~122 MiB, so memory.max ≈ 134 MiB leaves the stand-in (Node.js, ~50 MiB) room to start.
    writeTestGguf(join(dir, 'steady.gguf'), { layers: 16, embd: 1024 });
    writeTestGguf(join(dir, 'hog.gguf'), { layers: 16, embd: 1024 });
    const config = RuntimeConfigSchema.parse({
      runtime: { llama_server: STAND_IN, socket: join(dir, 'runtime.sock'), listen: '', http_listen: '127.0.0.1:0', health_interval: '1s', load_timeout: '30s', request_timeout: '30s', max_restarts: 3, cgroup: cg.dir, child_dir: join(dir, 'children'), memory_budget: '4G' },
      system: { log_level: 'debug' },
      models: {
        model_dir: dir,
        operational: { name: 'steady.gguf', parallel: 2, ctx_size: 512 },
        tactical: { name: 'hog.gguf', parallel: 1, ctx_size: 512, always_loaded: true },
      },
    });
    daemon = await startDaemon(config, { log: (s) => logs.push(s) });
    c = client(join(dir, 'runtime.sock'));
  }, 120_000);

  afterAll(async () => {
    c?.close();
    await daemon?.stop();
    if (cg) await removeCgroup(cg.dir);
  });

  const models = async () => (await call<{ models: ModelStatus[] }>(c, 'ListModels', {})).models;
  const ask = (model: string, prompt: string) => call<{ text: string }>(c, 'Infer', { model, prompt, timeout_ms: 30_000 });

  it('starts each model in its own cgroup with memory.max = the budgeted footprint + 10 %, and reports memory.current/peak', async () => {
    expect(logs.join('\n')).toMatch(/model isolation: per-model cgroups under /);
    const ms = await models();
    expect(ms.map((m) => m.name).sort()).toEqual(['hog', 'steady']);
    for (const m of ms) {
      expect(m.state).toBe('ready');
      expect(m.estimate_bytes).toBeGreaterThan(100 * MiB);
      expect(m.memory_limit_bytes).toBe(childMemoryLimit(m.estimate_bytes, 0.1));
      const limitFile = join(cg.dir, `model-${m.name}`, cg.v2 ? 'memory.max' : 'memory.limit_in_bytes');
      expect(parseMemoryValue(readFileSync(limitFile, 'utf8'))).toBe(m.memory_limit_bytes);
      // The stand-in (Node.js) is charged to its own cgroup (its heap; shared pages stay with whoever faulted them in first), under the limit.
      expect(m.cgroup_memory_bytes).toBeGreaterThan(1 * MiB);
      expect(m.cgroup_memory_bytes).toBeLessThan(m.memory_limit_bytes);
      expect(m.cgroup_peak_bytes).toBeGreaterThanOrEqual(m.cgroup_memory_bytes);
      // The child's process is in that cgroup, not the test's.
      const procs = readFileSync(join(cg.dir, `model-${m.name}`, 'cgroup.procs'), 'utf8').trim().split('\n').filter(Boolean);
      expect(procs.length).toBeGreaterThan(0);
    }
  });

  it('a child that allocates past its memory.max is killed by the kernel and reported as out of memory; the other model answers throughout', async () => {
    const before = await models();
    const hog = before.find((m) => m.name === 'hog')!;
    const message = oomMessage(hog.memory_limit_bytes);
    expect(message).toMatch(/^out of memory: limit \d+ MiB$/);
    // The other model keeps answering while the hog grows and dies.
    let stop = false;
    const steadyAnswers: string[] = [];
    const steady = (async () => {
      while (!stop) steadyAnswers.push((await ask('steady', 'hello')).text);
    })();
    const killed = await ask('hog', 'allocate').then(
      () => undefined,
      (e: grpc.ServiceError) => e,
    );
    expect(killed, 'the hog request should fail').toBeDefined();
    expect(killed!.details).toContain(message);
    // Restarted per policy (max_restarts = 3), with the reason kept in ListModels.
    let after: ModelStatus | undefined;
    for (let i = 0; i < 100; i++) {
      after = (await models()).find((m) => m.name === 'hog');
      if (after?.state === 'ready' && after.restarts === 1) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    stop = true;
    await steady;
    expect(after).toMatchObject({ state: 'ready', restarts: 1, oom_kills: 1, error: message });
    expect(steadyAnswers.length).toBeGreaterThan(0);
    expect(steadyAnswers.every((t) => t === 'OK')).toBe(true);
    expect((await models()).find((m) => m.name === 'steady')).toMatchObject({ state: 'ready', restarts: 0, oom_kills: 0 });
    expect(logs.join('\n')).toContain(`hog: llama-server died (${message})`);
    // The metric.
    const port = daemon.http!.port;
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/^aios_model_oom_kills_total\{model="hog"\} 1$/m);
    expect(metrics).toMatch(/^aios_model_memory_limit_bytes\{model="hog"\} \d+$/m);
    // The restarted hog answers again.
    expect((await ask('hog', 'hello')).text).toBe('OK');
  }, 120_000);
});

describe('model sandbox: bubblewrap (real, this host)', () => {
  const dir = tmp('aios-sandbox-net-');
  let target: Server;
  let port = 0;
  const connections: string[] = [];

  beforeAll(async () => {
    target = createServer((s) => {
      connections.push(String(s.remotePort));
      s.destroy();
    });
    await new Promise<void>((r) => target.listen(0, '127.0.0.1', r));
    port = (target.address() as { port: number }).port;
    writeTestGguf(join(dir, 'm.gguf'));
  });

  afterAll(() => target?.close());

  async function escapeThrough(sandbox: 'auto' | 'off', outside: string): Promise<{ tcp: string; write: string; suid: string; userns: string; status: string; logs: string[] }> {
    const sub = join(dir, sandbox);
    mkdirSync(sub, { recursive: true });
    const logs: string[] = [];
    const config = RuntimeConfigSchema.parse({
      runtime: { llama_server: STAND_IN, socket: join(sub, 'runtime.sock'), listen: '', health_interval: '1s', load_timeout: '30s', request_timeout: '30s', sandbox, cgroup: 'off', child_dir: join(sub, 'children') },
      system: { log_level: 'debug' },
      models: { model_dir: dir, operational: { name: 'm.gguf', ctx_size: 512 } },
    });
    const d = await startDaemon(config, { log: (s) => logs.push(s) });
    const cl = client(join(sub, 'runtime.sock'));
    try {
      const r = await call<{ text: string }>(cl, 'Infer', { model: 'm', prompt: `escape ${port} ${outside}`, timeout_ms: 30_000 });
      return { ...(JSON.parse(r.text) as { tcp: string; write: string; suid: string; userns: string; status: string }), logs };
    } finally {
      cl.close();
      await d.stop();
    }
  }

  it('a sandboxed child can neither connect out over TCP, nor write outside its directory, nor set a set-user-ID bit, nor make a namespace; the daemon reaches it over a unix socket', async () => {
    const outside = join(dir, 'written-by-the-sandboxed-child');
    const r = await escapeThrough('auto', outside);
    expect(r.logs.join('\n')).toMatch(/model isolation: .*sandbox: (bwrap|unshare \+ setpriv) .*seccomp.*self-test \d+ ms: own directory writable; a write beside it and a read of \/etc\/passwd refused/);
    expect(r.logs.join('\n')).toMatch(/--unshare-net|--net/);
    expect(r.tcp).not.toBe('connected');
    // The seccomp filter refuses the AF_INET socket before the empty network namespace could refuse the connection.
    expect(r.tcp).toMatch(/^(EAFNOSUPPORT|EPERM)$/);
    expect(r.suid).toBe('EPERM');
    expect(r.userns).toMatch(/^exit 1: unshare: unshare failed: Operation not permitted$/);
    // no_new_privs and a seccomp filter (where its /proc is readable: bwrap's own; Landlock keeps /proc closed).
    if (!/EACCES/.test(r.status)) expect(r.status).toMatch(/NoNewPrivs: 1 Seccomp: 2 Seccomp_filters: [1-9]/);
    expect(r.write).not.toBe('written');
    expect(r.write).toMatch(/^(EROFS|ENOENT|EACCES|EPERM)$/);
    expect(existsSync(outside)).toBe(false);
    expect(connections).toEqual([]);
    // Its own directory holds the unix socket it was reached on.
    expect(readdirSync(join(dir, 'auto', 'children', 'model-m'))).toContain('llama.sock');
  }, 60_000);

  it('control: the same stand-in without the sandbox does all four (so the test above can fail)', async () => {
    const outside = join(dir, 'written-by-the-unsandboxed-child');
    const r = await escapeThrough('off', outside);
    expect(r).toMatchObject({ tcp: 'connected', write: 'written', suid: 'set', userns: 'made' });
    expect(existsSync(outside)).toBe(true);
    await new Promise((res) => setTimeout(res, 100));
    expect(connections.length).toBe(1);
  }, 60_000);

  it('start-up cost of the sandbox: the sandbox + /bin/true against /bin/true alone (median of 15, logged)', () => {
    const child = join(dir, 'bench-child');
    mkdirSync(child, { recursive: true });
    writeFileSync(join(child, 'x'), '');
    const mode = probeSandbox('auto', child).mode!;
    expect(mode).toBeDefined();
    const time = (argv: string[]) => {
      const t: number[] = [];
      for (let i = 0; i < 15; i++) {
        const t0 = performance.now();
        const r = spawnSync(argv[0]!, argv.slice(1));
        t.push(performance.now() - t0);
        expect(r.status, String(r.stderr)).toBe(0);
      }
      return t.sort((a, b) => a - b)[7]!;
    };
    const plain = time(['/bin/true']);
    const sandboxed = time([...sandboxLaunch(mode, { model: join(child, 'x'), dir: child }).argv, '/bin/true']);
    console.log(`sandbox start-up: /bin/true ${plain.toFixed(1)} ms, in the sandbox (${mode.kind}) ${sandboxed.toFixed(1)} ms: +${(sandboxed - plain).toFixed(1)} ms (median of 15)`);
    expect(sandboxed).toBeGreaterThan(plain);
    expect(sandboxed - plain).toBeLessThan(1000);
  });
});
