/**
 * The model manager: one llama-server child per loaded model, on a loopback port, started with the
 * model's fixed launch profile. Health loop against /health only; crashed or hung children are
 * restarted with backoff and end in "failed" after repeated crashes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { createServer } from 'node:net';
import { cpus } from 'node:os';
import { Code, RuntimeError } from './errors.js';

export interface LaunchProfile {
  name: string;
  path: string;
  level: 'operational' | 'tactical' | '';
  ctxSize: number;
  threads: number;
  gpuLayers: number;
  parallel: number;
  mmap: boolean;
}

export type ModelState = 'loading' | 'ready' | 'unloading' | 'failed' | 'restarting';

export interface ModelInfo {
  name: string;
  level: string;
  state: ModelState;
  pid: number;
  port: number;
  memoryBytes: number;
  lastUsed: number;
  uptimeMs: number;
  path: string;
  restarts: number;
  error: string;
}

interface Child {
  profile: LaunchProfile;
  proc?: ChildProcess;
  port: number;
  state: ModelState;
  startedAt: number;
  lastUsed: number;
  restarts: number;
  crashTimes: number[];
  error: string;
  /** Settles when the current (re)start is ready or has failed. */
  ready: Promise<void>;
  /** Requests in flight on this child, to fail them if it dies. */
  inflight: Set<AbortController>;
  /** Requests waiting for one of the child's `parallel` slots (FIFO). */
  waiters: (() => void)[];
  /** Consecutive failed /health polls. */
  healthFailures: number;
  stopping: boolean;
}

export interface ManagerOptions {
  llamaServer: string;
  loadTimeoutMs: number;
  healthIntervalMs: number;
  maxRestarts: number;
  log?: (line: string) => void;
}

/** Physical cores (seed 002: threads = physical cores, not hyperthreads). */
export function physicalCores(): number {
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const cores = new Set<string>();
    let phys = '0';
    for (const line of info.split('\n')) {
      const [k, v] = line.split(':').map((x) => x.trim());
      if (k === 'physical id') phys = v ?? '0';
      if (k === 'core id') cores.add(`${phys}:${v}`);
    }
    return cores.size || cpus().length;
  } catch {
    return cpus().length;
  }
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export async function isGguf(path: string): Promise<boolean> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(4);
    await fh.read(b, 0, 4, 0);
    return b.toString('latin1') === 'GGUF';
  } finally {
    await fh.close();
  }
}

function rss(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

export class ModelManager {
  private children = new Map<string, Child>();
  private timer?: NodeJS.Timeout;
  private loads = new Map<string, Promise<ModelInfo>>();

  constructor(private o: ManagerOptions) {}

  private log(s: string): void {
    this.o.log?.(s);
  }

  launchArgs(p: LaunchProfile, port: number): string[] {
    const args = [
      '-m', p.path,
      '--host', '127.0.0.1',
      '--port', String(port),
      '-c', String(p.ctxSize * p.parallel), // llama-server splits the context across slots
      '-t', String(p.threads || physicalCores()),
      '-ngl', String(p.gpuLayers < 0 ? 999 : p.gpuLayers),
      '--parallel', String(p.parallel),
      '--metrics',
      '--no-webui',
    ];
    if (!p.mmap) args.push('--no-mmap');
    return args;
  }

  /** Loads a model (concurrent loads of the same model share one). */
  async load(p: LaunchProfile): Promise<ModelInfo> {
    const existing = this.children.get(p.name);
    if (existing && (existing.state === 'ready' || existing.state === 'loading' || existing.state === 'restarting')) {
      await existing.ready;
      return this.info(existing);
    }
    const pending = this.loads.get(p.name);
    if (pending) return pending;
    const job = this.doLoad(p).finally(() => this.loads.delete(p.name));
    this.loads.set(p.name, job);
    return job;
  }

  private async doLoad(p: LaunchProfile): Promise<ModelInfo> {
    if (!existsSync(p.path)) throw new RuntimeError(Code.NOT_FOUND, `model file ${p.path} does not exist`);
    if (!(await isGguf(p.path))) throw new RuntimeError(Code.FAILED_PRECONDITION, `${p.path} is not a GGUF file`);
    const c: Child = { profile: p, port: 0, state: 'loading', startedAt: Date.now(), lastUsed: Date.now(), restarts: 0, crashTimes: [], error: '', ready: Promise.resolve(), inflight: new Set(), waiters: [], healthFailures: 0, stopping: false };
    this.children.set(p.name, c);
    c.ready = this.start(c);
    try {
      await c.ready;
    } catch (e) {
      c.state = 'failed';
      c.error = (e as Error).message;
      throw e instanceof RuntimeError ? e : new RuntimeError(Code.FAILED_PRECONDITION, `model ${p.name} could not be loaded: ${(e as Error).message}`);
    }
    return this.info(c);
  }

  private async start(c: Child): Promise<void> {
    c.port = await freePort();
    const args = this.launchArgs(c.profile, c.port);
    this.log(`starting ${c.profile.name}: ${this.o.llamaServer} ${args.join(' ')}`);
    const proc = spawn(this.o.llamaServer, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    c.proc = proc;
    c.startedAt = Date.now();
    let tail = '';
    proc.stderr?.on('data', (d: Buffer) => {
      tail = (tail + d.toString()).slice(-2000);
    });
    const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
    proc.once('exit', (code, sig) => this.onExit(c, proc, code, sig, tail));
    proc.once('error', (e) => {
      c.error = e.message;
    });
    const deadline = Date.now() + this.o.loadTimeoutMs;
    for (;;) {
      if (proc.exitCode !== null || proc.signalCode !== null) {
        throw new RuntimeError(Code.FAILED_PRECONDITION, `llama-server exited while loading ${c.profile.name}: ${tail.trim().split('\n').slice(-3).join(' | ') || c.error}`);
      }
      if (await this.healthy(c.port)) break;
      if (Date.now() > deadline) {
        proc.kill('SIGKILL');
        await exited;
        throw new RuntimeError(Code.DEADLINE_EXCEEDED, `${c.profile.name} did not become ready within ${this.o.loadTimeoutMs / 1000} s`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    c.state = 'ready';
    c.error = '';
    this.log(`${c.profile.name} ready on port ${c.port} (pid ${proc.pid})`);
  }

  private async healthy(port: number): Promise<boolean> {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(2000) });
      return r.status === 200;
    } catch {
      return false;
    }
  }

  private onExit(c: Child, proc: ChildProcess, code: number | null, sig: NodeJS.Signals | null, tail: string): void {
    if (c.proc !== proc) return;
    c.proc = undefined;
    if (c.stopping) return;
    if (c.state === 'loading') return; // start() reports it
    // A crash: fail what was in flight on it, restart with backoff, give up after max_restarts.
    for (const a of c.inflight) a.abort(new RuntimeError(Code.UNAVAILABLE, `llama-server for ${c.profile.name} died (${sig ?? `exit ${code}`}) during the request; it is being restarted`));
    c.inflight.clear();
    // Queued requests are served after the restart (they wait on c.ready in acquire()).
    for (const w of c.waiters.splice(0)) w();
    const now = Date.now();
    c.crashTimes = [...c.crashTimes.filter((t) => now - t < 300_000), now];
    this.log(`${c.profile.name}: llama-server died (${sig ?? `exit ${code}`}): ${tail.trim().split('\n').slice(-1)[0] ?? ''}`);
    if (c.crashTimes.length > this.o.maxRestarts) {
      c.state = 'failed';
      c.error = `crashed ${c.crashTimes.length} times in 5 minutes; last: ${sig ?? `exit ${code}`}`;
      c.ready = Promise.reject(new RuntimeError(Code.FAILED_PRECONDITION, `${c.profile.name} failed: ${c.error}`));
      c.ready.catch(() => {});
      return;
    }
    c.state = 'restarting';
    c.restarts++;
    const delay = Math.min(30_000, 500 * 2 ** (c.crashTimes.length - 1));
    c.ready = new Promise<void>((resolve, reject) => {
      setTimeout(() => {
        if (c.stopping) return reject(new RuntimeError(Code.UNAVAILABLE, `${c.profile.name} is being unloaded`));
        this.start(c).then(resolve, (e: Error) => {
          c.state = 'failed';
          c.error = e.message;
          reject(e);
        });
      }, delay);
    });
    c.ready.catch(() => {});
  }

  /**
   * A slot on a ready child for one request (waits through a restart). At most `parallel` requests
   * go to a child at once, the rest wait here in order: llama-server's HTTP threads stay free for
   * /health, and a dropped client that is still waiting never reaches llama-server.
   */
  async acquire(name: string, cancel?: AbortSignal): Promise<{ port: number; release: () => void; signal: AbortSignal; profile: LaunchProfile }> {
    const c = this.children.get(name);
    if (!c) throw new RuntimeError(Code.NOT_FOUND, `model ${name} is not loaded`);
    if (c.state === 'failed') throw new RuntimeError(Code.FAILED_PRECONDITION, `model ${name} failed: ${c.error}`);
    if (c.state === 'unloading') throw new RuntimeError(Code.UNAVAILABLE, `model ${name} is being unloaded`);
    await c.ready;
    while (c.inflight.size >= c.profile.parallel) {
      await new Promise<void>((resolve, reject) => {
        const wake = () => {
          cancel?.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = () => {
          c.waiters = c.waiters.filter((w) => w !== wake);
          reject(new RuntimeError(Code.CANCELLED, 'the client went away while the request was queued'));
        };
        if (cancel?.aborted) return onAbort();
        cancel?.addEventListener('abort', onAbort, { once: true });
        c.waiters.push(wake);
      });
      await c.ready; // the child may have restarted while we waited
    }
    const ctrl = new AbortController();
    c.inflight.add(ctrl);
    c.lastUsed = Date.now();
    return {
      port: c.port,
      signal: ctrl.signal,
      profile: c.profile,
      release: () => {
        if (!c.inflight.delete(ctrl)) return;
        c.lastUsed = Date.now();
        c.waiters.shift()?.();
      },
    };
  }

  has(name: string): boolean {
    const c = this.children.get(name);
    return !!c && c.state !== 'failed';
  }

  async unload(name: string): Promise<void> {
    const c = this.children.get(name);
    if (!c) throw new RuntimeError(Code.NOT_FOUND, `model ${name} is not loaded`);
    c.stopping = true;
    c.state = 'unloading';
    await this.stopProc(c);
    this.children.delete(name);
  }

  private async stopProc(c: Child): Promise<void> {
    const proc = c.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((r) => proc.once('exit', () => r()));
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  }

  info(c: Child): ModelInfo {
    const pid = c.proc?.pid ?? 0;
    return {
      name: c.profile.name,
      level: c.profile.level,
      state: c.state,
      pid,
      port: c.port,
      memoryBytes: pid ? rss(pid) : 0,
      lastUsed: c.lastUsed,
      uptimeMs: c.state === 'ready' ? Date.now() - c.startedAt : 0,
      path: c.profile.path,
      restarts: c.restarts,
      error: c.error,
    };
  }

  list(): ModelInfo[] {
    return [...this.children.values()].map((c) => this.info(c));
  }

  /** Health loop: /health only (other endpoints keep llama-server busy); a hung child is killed and restarted. */
  startHealthLoop(idle?: { names: () => string[]; idleMs: number }): void {
    this.timer = setInterval(async () => {
      for (const c of this.children.values()) {
        if (c.state !== 'ready' || !c.proc) continue;
        if (await this.healthy(c.port)) {
          c.healthFailures = 0;
          continue;
        }
        // Three misses in a row (30 s at the default interval) before a child counts as hung.
        if (++c.healthFailures >= 3 && c.state === 'ready' && c.proc) {
          this.log(`${c.profile.name}: /health failed ${c.healthFailures} times; restarting`);
          c.healthFailures = 0;
          c.proc.kill('SIGKILL'); // onExit restarts it
        }
      }
      if (idle) {
        for (const name of idle.names()) {
          const c = this.children.get(name);
          if (c && c.state === 'ready' && c.inflight.size === 0 && Date.now() - c.lastUsed > idle.idleMs) {
            this.log(`${name}: idle for ${Math.round((Date.now() - c.lastUsed) / 1000)} s; unloading`);
            await this.unload(name).catch(() => {});
          }
        }
      }
    }, this.o.healthIntervalMs);
    this.timer.unref();
  }

  async stopAll(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.all(
      [...this.children.values()].map(async (c) => {
        c.stopping = true;
        c.state = 'unloading';
        for (const a of c.inflight) a.abort(new RuntimeError(Code.UNAVAILABLE, 'aios-runtime is shutting down'));
        await this.stopProc(c);
      }),
    );
    this.children.clear();
  }
}
