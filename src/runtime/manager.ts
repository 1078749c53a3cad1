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
import type { RuntimeEvents, UnloadReason } from './events.js';
import { addBufferLine, emptyBuffers, estimateFootprint, mib, PROCESS_OVERHEAD, rssOf, type Budget, type Footprint, type ReportedBuffers } from './memory.js';

export interface LaunchProfile {
  name: string;
  path: string;
  level: 'operational' | 'tactical' | '';
  ctxSize: number;
  threads: number;
  gpuLayers: number;
  parallel: number;
  mmap: boolean;
  /** Never evicted and never unloaded for idleness (the operational model). */
  pinned?: boolean;
  /** Unload after this long without requests (0 = never). */
  idleUnloadMs?: number;
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
  /** Footprint estimated from the GGUF metadata before the load (RAM, bytes). */
  estimateBytes: number;
  /** Measured once the child was ready: max(resident set, llama-server's reported host buffers + process overhead); 0 before. The budget counts this (or the live RSS if higher), else the estimate. */
  actualBytes: number;
  /** (estimate − actual) / actual × 100, once measured. */
  estimateErrorPct: number;
  /** GPU memory: estimated, and reported by llama-server (0 without offload). */
  vramEstimateBytes: number;
  vramActualBytes: number;
  /** Sum of the buffers llama-server reported (model, KV, compute, output), host side. */
  reportedBytes: number;
  pinned: boolean;
  /** When it will be unloaded for idleness (ms epoch), 0 = not idling or never. */
  idleUntil: number;
  /** Requests holding one of its slots. */
  inflight: number;
  /** Requests waiting in its priority queue. */
  queued: number;
  /** llama-server slots. */
  parallel: number;
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
  estimate?: Footprint;
  actualBytes: number;
  buffers: ReportedBuffers;
}

export interface ManagerOptions {
  llamaServer: string;
  loadTimeoutMs: number;
  healthIntervalMs: number;
  maxRestarts: number;
  log?: (line: string) => void;
  /** Memory budget; loads that do not fit evict idle models or are refused. Unlimited when absent. */
  budget?: Budget;
  /** load/unload events go here. */
  events?: RuntimeEvents;
  /** Requests waiting for a model (its priority queue), so a model with waiters is never evicted or idled. */
  queued?: (name: string) => number;
  /** Called when a model becomes ready (after a load or a restart): its slots can be handed out. */
  onReady?: (name: string) => void;
  /** Called when a loaded model ends in "failed" (crashed too often): its waiters cannot be served. */
  onFailed?: (name: string, error: string) => void;
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

const rss = rssOf;

export class ModelManager {
  private children = new Map<string, Child>();
  private timer?: NodeJS.Timeout;
  private loads = new Map<string, Promise<ModelInfo>>();
  /** Admission (estimate, evict, reserve) runs one load at a time, so two loads never count the same free memory. */
  private admission: Promise<unknown> = Promise.resolve();

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
      // The runtime budgets memory: no host-side prompt cache outside the budget (llama-server's default is 8 GiB).
      '--cache-ram', '0',
      // Verbosity 4 makes llama.cpp report its buffer sizes (model, KV, compute, output) while loading.
      '-lv', '4',
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
    let estimate: Footprint | undefined;
    try {
      estimate = await estimateFootprint(p.path, p);
    } catch (e) {
      // An unreadable header: llama-server will say why when it refuses the file; budget it at its size.
      this.log(`${p.name}: no footprint estimate (${(e as Error).message}); llama-server decides`);
    }
    const t0 = Date.now();
    const c: Child = { profile: p, port: 0, state: 'loading', startedAt: Date.now(), lastUsed: Date.now(), restarts: 0, crashTimes: [], error: '', ready: Promise.resolve(), inflight: new Set(), waiters: [], healthFailures: 0, stopping: false, estimate, actualBytes: 0, buffers: emptyBuffers() };
    // Admission: one at a time, so the memory a load reserves is seen by the next one.
    const admitted = this.admission.then(() => this.admit(c));
    this.admission = admitted.catch(() => {});
    try {
      await admitted;
    } catch (e) {
      this.o.events?.emit('load', { model: p.name, ms: Date.now() - t0, ok: false, estimateBytes: estimate?.ramBytes ?? 0, actualBytes: 0 });
      throw e;
    }
    c.ready = this.start(c);
    try {
      await c.ready;
    } catch (e) {
      c.state = 'failed';
      c.error = (e as Error).message;
      this.o.events?.emit('load', { model: p.name, ms: Date.now() - t0, ok: false, estimateBytes: estimate?.ramBytes ?? 0, actualBytes: 0 });
      throw e instanceof RuntimeError ? e : new RuntimeError(Code.FAILED_PRECONDITION, `model ${p.name} could not be loaded: ${(e as Error).message}`);
    }
    const info = this.info(c);
    this.log(`${p.name}: estimated ${mib(info.estimateBytes)}, uses ${mib(info.actualBytes)} (${info.estimateErrorPct >= 0 ? '+' : ''}${info.estimateErrorPct.toFixed(1)} %); llama-server reported ${mib(info.reportedBytes)} of buffers`);
    this.o.events?.emit('load', { model: p.name, ms: Date.now() - t0, ok: true, estimateBytes: info.estimateBytes, actualBytes: info.actualBytes });
    return info;
  }

  /** Memory a child counts against the budget: what it uses (measured, or now if more), else its estimate. */
  private charge(c: Child): { ram: number; vram: number } {
    if (c.state === 'failed') return { ram: 0, vram: 0 };
    const now = c.proc?.pid && c.state === 'ready' ? rss(c.proc.pid) : 0;
    const ram = c.actualBytes ? Math.max(c.actualBytes, now) : (c.estimate?.ramBytes ?? 0);
    const vram = c.buffers.deviceBytes || (c.estimate?.vramBytes ?? 0);
    return { ram, vram };
  }

  /** Memory in use and free under the budget. */
  memory(): { budgetBytes: number; usedBytes: number; freeBytes: number; vramBudgetBytes: number; vramUsedBytes: number; source: string } {
    let used = 0;
    let vused = 0;
    for (const c of this.children.values()) {
      const ch = this.charge(c);
      used += ch.ram;
      vused += ch.vram;
    }
    const b = this.o.budget;
    return { budgetBytes: b?.ramBytes ?? 0, usedBytes: used, freeBytes: b ? b.ramBytes - used : Infinity, vramBudgetBytes: b?.vramBytes ?? 0, vramUsedBytes: vused, source: b?.source ?? 'unlimited' };
  }

  /**
   * Makes room for `c` under the budget: evicts idle models (ready, not pinned, nothing in flight or
   * queued) least recently used first, only when that makes it fit; else refuses with the numbers.
   * On success `c` is registered (state loading), so its estimate counts from now on.
   */
  private async admit(c: Child): Promise<void> {
    const b = this.o.budget;
    const need = c.estimate?.ramBytes ?? 0;
    const vneed = c.estimate?.vramBytes ?? 0;
    if (b) {
      const fits = () => {
        const m = this.memory();
        return m.freeBytes >= need && (!b.vramBytes || !vneed || b.vramBytes - m.vramUsedBytes >= vneed);
      };
      if (!fits()) {
        const idle = [...this.children.values()]
          .filter((x) => x.state === 'ready' && !x.profile.pinned && x.inflight.size === 0 && !(this.o.queued?.(x.profile.name) ?? 0) && x.profile.name !== c.profile.name)
          .sort((a, z) => a.lastUsed - z.lastUsed);
        // Evict only if evicting every idle model would make room: never unload something for nothing.
        const m = this.memory();
        const reclaimable = idle.reduce((s, x) => s + this.charge(x).ram, 0);
        const vreclaimable = idle.reduce((s, x) => s + this.charge(x).vram, 0);
        const vok = !b.vramBytes || !vneed || b.vramBytes - m.vramUsedBytes + vreclaimable >= vneed;
        if (m.freeBytes + reclaimable >= need && vok) {
          for (const x of idle) {
            if (fits()) break;
            this.log(`evicting ${x.profile.name} (idle since ${new Date(x.lastUsed).toISOString()}, ${mib(this.charge(x).ram)}) to load ${c.profile.name} (${mib(need)})`);
            await this.unload(x.profile.name, 'evict').catch(() => {});
          }
        }
        if (!fits()) {
          const m2 = this.memory();
          const busy = [...this.children.values()].filter((x) => x.state !== 'failed').map((x) => `${x.profile.name} ${mib(this.charge(x).ram)}${x.profile.pinned ? ' pinned' : x.state !== 'ready' ? ` ${x.state}` : x.inflight.size || this.o.queued?.(x.profile.name) ? ' busy' : ''}`);
          const vram = b.vramBytes && vneed ? `; GPU: needs ${mib(vneed)}, ${mib(Math.max(0, b.vramBytes - m2.vramUsedBytes))} free of ${mib(b.vramBytes)}` : '';
          throw new RuntimeError(
            Code.RESOURCE_EXHAUSTED,
            `not enough memory to load ${c.profile.name}: needs ${mib(need)} (estimated), ${mib(Math.max(0, m2.freeBytes))} free of the ${mib(b.ramBytes)} budget${vram}; in use: ${busy.join(', ') || 'nothing'}${need > b.ramBytes ? ' (it does not fit even with nothing else loaded)' : '; nothing idle left to evict'}`,
          );
        }
      }
    }
    this.children.set(c.profile.name, c);
  }

  private async start(c: Child): Promise<void> {
    c.port = await freePort();
    const args = this.launchArgs(c.profile, c.port);
    this.log(`starting ${c.profile.name}: ${this.o.llamaServer} ${args.join(' ')}`);
    const proc = spawn(this.o.llamaServer, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    c.proc = proc;
    c.startedAt = Date.now();
    let tail = '';
    let partial = '';
    let parsing = true;
    c.buffers = emptyBuffers();
    proc.stderr?.on('data', (d: Buffer) => {
      const s = d.toString();
      tail = (tail + s).slice(-2000);
      if (!parsing) return;
      partial += s;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        if (line.includes('buffer size')) addBufferLine(c.buffers, line);
        if (line.includes('listening on')) parsing = false;
      }
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
    // What the child uses: its resident set now, or, when more, the buffers llama-server allocated
    // (warm-up touches only part of the compute buffer; a full micro-batch touches all of it) plus
    // the process's own code and heap.
    c.actualBytes = Math.max(rss(proc.pid ?? 0), c.buffers.hostBytes ? c.buffers.hostBytes + PROCESS_OVERHEAD : 0);
    this.log(`${c.profile.name} ready on port ${c.port} (pid ${proc.pid})`);
    this.o.onReady?.(c.profile.name);
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
      this.o.onFailed?.(c.profile.name, c.error);
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
          this.o.onFailed?.(c.profile.name, c.error);
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
    // lastUsed moves when a request ends (and at load): "least recently used" is "idle the longest";
    // a model serving a long request is never idle (inflight), whatever its lastUsed.
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

  async unload(name: string, reason: UnloadReason = 'request'): Promise<void> {
    const c = this.children.get(name);
    if (!c) throw new RuntimeError(Code.NOT_FOUND, `model ${name} is not loaded`);
    c.stopping = true;
    c.state = 'unloading';
    for (const a of c.inflight) a.abort(new RuntimeError(Code.UNAVAILABLE, `model ${name} was unloaded (${reason}) during the request`));
    await this.stopProc(c);
    if (this.children.get(name) === c) this.children.delete(name);
    this.o.events?.emit('unload', { model: name, reason });
  }

  /** Slots a model can serve at once now: its `parallel` while ready (or restarting: requests wait for it), else 0. */
  capacity(name: string): number {
    const c = this.children.get(name);
    return c && (c.state === 'ready' || c.state === 'restarting') ? c.profile.parallel : 0;
  }

  /** The launch profile of a loaded (or loading) model. */
  profileOf(name: string): LaunchProfile | undefined {
    return this.children.get(name)?.profile;
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
    const estimateBytes = c.estimate?.ramBytes ?? 0;
    const queued = this.o.queued?.(c.profile.name) ?? 0;
    const idleMs = c.profile.idleUnloadMs ?? 0;
    return {
      estimateBytes,
      actualBytes: c.actualBytes,
      estimateErrorPct: c.actualBytes && estimateBytes ? ((estimateBytes - c.actualBytes) / c.actualBytes) * 100 : 0,
      vramEstimateBytes: c.estimate?.vramBytes ?? 0,
      vramActualBytes: c.buffers.deviceBytes,
      reportedBytes: c.buffers.hostBytes,
      pinned: !!c.profile.pinned,
      idleUntil: !c.profile.pinned && idleMs > 0 && c.state === 'ready' && c.inflight.size === 0 && queued === 0 ? c.lastUsed + idleMs : 0,
      inflight: c.inflight.size,
      queued,
      parallel: c.profile.parallel,
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

  /**
   * Health loop: /health only (other endpoints keep llama-server busy); a hung child is killed and
   * restarted. Models with an idle timeout (profile.idleUnloadMs, never pinned ones) that have had
   * nothing in flight or queued for that long are unloaded.
   */
  startHealthLoop(): void {
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
      for (const c of [...this.children.values()]) {
        const idleMs = c.profile.idleUnloadMs ?? 0;
        const name = c.profile.name;
        if (!c.profile.pinned && idleMs > 0 && c.state === 'ready' && c.inflight.size === 0 && !(this.o.queued?.(name) ?? 0) && Date.now() - c.lastUsed > idleMs) {
          this.log(`${name}: idle for ${Math.round((Date.now() - c.lastUsed) / 1000)} s; unloading`);
          await this.unload(name, 'idle').catch(() => {});
        }
      }
    }, this.o.healthIntervalMs);
    this.timer.unref();
  }

  async stopAll(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.all(
      [...this.children.values()].map(async (c) => {
        const was = c.state;
        c.stopping = true;
        c.state = 'unloading';
        for (const a of c.inflight) a.abort(new RuntimeError(Code.UNAVAILABLE, 'aios-runtime is shutting down'));
        await this.stopProc(c);
        if (was !== 'failed') this.o.events?.emit('unload', { model: c.profile.name, reason: 'shutdown' });
      }),
    );
    this.children.clear();
  }
}
