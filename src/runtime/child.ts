/**
 * One model's llama-server child as an explicit state machine. The states and the transitions
 * allowed between them are written down once (TRANSITIONS); `transition()` is the only code that
 * changes the state, and it throws on a transition that is not in the table (a bug, caught by the
 * tests). Callers never inspect the state to decide what to do: they call `ensureReady()`, which
 * starts a stopped child, waits for a starting or restarting one, and fails for a failed one.
 *
 *   stopped ──start──▶ starting ──healthy──▶ ready ──crash or hang──▶ restarting ──backoff──▶ starting
 *                         │                    │    (max_restarts crashes in the window) ▶ failed
 *                         └──exit, timeout─────┴────────────────────────────────────────▶ failed
 *   starting, ready, restarting ──stop()──▶ stopping ──exited──▶ stopped;   failed ──stop()──▶ stopped
 *   failed ──start (an explicit new load)──▶ starting
 *
 * The process itself sits behind `Launcher`, so the machine is tested with a fake child and fake
 * timers (test/unit/runtime-child.test.ts); src/runtime/launch.ts is the real llama-server.
 */
import { Code, RuntimeError } from './errors.js';
import type { ReportedBuffers } from './memory.js';

export type ChildState = 'stopped' | 'starting' | 'ready' | 'restarting' | 'stopping' | 'failed';

/** Every allowed transition. Anything else is a bug. */
export const TRANSITIONS: Readonly<Record<ChildState, readonly ChildState[]>> = {
  stopped: ['starting'],
  starting: ['ready', 'failed', 'stopping'],
  ready: ['restarting', 'failed', 'stopping'],
  restarting: ['starting', 'stopping'],
  stopping: ['stopped'],
  failed: ['starting', 'stopped'],
};

export class IllegalTransition extends Error {
  constructor(model: string, from: ChildState, to: ChildState) {
    super(`${model}: illegal state transition ${from} → ${to}`);
    this.name = 'IllegalTransition';
  }
}

/** How a model is started (fixed for the life of the child). */
export interface LaunchProfile {
  name: string;
  path: string;
  /** The configured layer that owns it, or "" for models loaded by name (catalog, LoadModel). */
  level: 'operational' | 'tactical' | '';
  ctxSize: number;
  threads: number;
  gpuLayers: number;
  parallel: number;
  mmap: boolean;
  /** Never evicted and never unloaded for idleness. */
  pinned?: boolean;
  /** Unload after this long without requests (0 = never). */
  idleUnloadMs?: number;
  /** memory.max of its cgroup: the budgeted footprint + runtime.child_memory_margin (supervisor; 0/absent = no limit). */
  memoryLimitBytes?: number;
  /** memory.max asked for by LoadModel (memory_limit_bytes), instead of the footprint + margin. */
  memoryMaxBytes?: number;
  /** LoRA adapters loaded unapplied (`--lora`; the index is llama-server's adapter id; adapters.ts). */
  adapters?: { name: string; path: string }[];
  /** An embedding child ([models.embedding]: `--embeddings --pooling <pooling>`). */
  embeddings?: { pooling: string };
  /** Split across these llama.cpp RPC workers (`--rpc host:port,…`; rpc.ts): host:port each. */
  rpc?: string[];
}

/** A running process as the machine sees it. */
export interface ProcessHandle {
  readonly pid: number;
  /** Settles once, when the process has exited; `oom` when its cgroup's OOM killer ended it ("out of memory: limit N MiB"). */
  readonly exited: Promise<{ code: number | null; signal: string | null; oom?: string }>;
  kill(signal: 'SIGTERM' | 'SIGKILL'): void;
  /** The last lines it wrote to stderr (for error messages). */
  tail(): string;
  /** Buffer sizes it reported while loading. */
  readonly buffers: ReportedBuffers;
}

/** Starts processes and asks them whether they are healthy: the real one runs llama-server. */
export interface Launcher {
  /** Starts the process for `profile` on a loopback port it chooses, or on a unix socket (sandboxed: `socket`). */
  start(profile: LaunchProfile): Promise<{ port: number; proc: ProcessHandle; socket?: string }>;
  /** /health of a child: its port, or its unix socket's path. */
  healthy(target: number | string): Promise<boolean>;
  /** Bytes the process uses once ready (0 if unknown); `name`: the model, whose cgroup is measured when it has one. */
  measure(h: ProcessHandle, name?: string): number;
  /** Cleans up after the last child (the model cgroups). */
  release?(): void;
  /** The model's cgroup figures, when it runs in one of its own (cgroup.ts). */
  cgroupStats?(name: string): { currentBytes: number; peakBytes: number; limitBytes: number; oomKills: number } | undefined;
}

export interface ChildOptions {
  launcher: Launcher;
  loadTimeoutMs: number;
  /** Crashes within `crashWindowMs` tolerated before the child is failed. */
  maxRestarts: number;
  crashWindowMs?: number;
  /** Delay before the n-th restart (n = crashes in the window, from 1). */
  backoffMs?: (n: number) => number;
  /** Consecutive failed health checks before a ready child counts as hung and is killed. */
  healthMisses?: number;
  /** Milliseconds between /health polls while starting. */
  pollMs?: number;
  /** Grace period between SIGTERM and SIGKILL when stopping. */
  stopGraceMs?: number;
  now?: () => number;
  log?: (s: string) => void;
  /** Told when the kernel's OOM killer ended the child in its cgroup ("out of memory: limit N MiB"). */
  onOom?: (child: ModelChild, message: string) => void;
  /** Told about every transition, after it happened. */
  onTransition?: (child: ModelChild, from: ChildState, to: ChildState) => void;
  /**
   * A split model (profile.rpc): why it cannot start now (a worker unreachable), checked before each
   * restart. While it says so the child stays "restarting" without counting crashes, requests fail
   * at once with UNAVAILABLE and that reason, and it is asked again every `blockedPollMs`.
   */
  blockedBy?: (profile: LaunchProfile) => Promise<string | undefined>;
  blockedPollMs?: number;
  /** A split model: what its workers tell about why its llama-server ended (a worker gone), for the error message. */
  exitCause?: (profile: LaunchProfile) => Promise<string | undefined>;
  /** A split model, ready: the workers it lost meanwhile (their connection closed); the child is then restarted. */
  lostWorkers?: (profile: LaunchProfile) => string[];
}

const defaultBackoff = (n: number) => Math.min(30_000, 500 * 2 ** (n - 1));

/** A promise with its settle functions; settled at most once. */
class Gate {
  readonly promise: Promise<void>;
  resolve!: () => void;
  reject!: (e: Error) => void;
  constructor() {
    this.promise = new Promise<void>((res, rej) => {
      this.resolve = res;
      this.reject = rej;
    });
    this.promise.catch(() => {});
  }
}

export interface Lease {
  port: number;
  /** The child's unix socket when it is sandboxed without a network ("" = talk to `port`). */
  socket: string;
  /** The llama-server slot this request uses (`id_slot`): the lowest not held by another lease. */
  slot: number;
  /** Aborted when the child dies or is stopped during the request. */
  signal: AbortSignal;
  release(): void;
}

export class ModelChild {
  private _state: ChildState = 'stopped';
  port = 0;
  /** Its unix socket when sandboxed ("" = loopback `port`). */
  socket = '';
  pid = 0;
  /** Times its cgroup's OOM killer ended it, and the last such message (shown as its error while it has no other). */
  oomKills = 0;
  lastOom = '';
  restarts = 0;
  error = '';
  startedAt = 0;
  lastUsed: number;
  /** Bytes measured once ready (0 before). */
  actualBytes = 0;
  buffers: ReportedBuffers = { byName: {}, hostBytes: 0, deviceBytes: 0 };
  private proc?: ProcessHandle;
  private crashTimes: number[] = [];
  private misses = 0;
  /** Settles when the current start ends (ready: resolved; failed or stopped: rejected). */
  private gate = new Gate();
  private gateSettled = false;
  /** Why the child failed, as callers of ensureReady() get it. */
  private failure?: RuntimeError;
  private restartTimer?: NodeJS.Timeout;
  private stopping?: Promise<void>;
  /** Why a split model waits to restart (a worker unreachable); "" = it does not wait. */
  blocked = '';
  private inflight = new Set<AbortController>();
  /** Slots held by leases (llama-server slot ids, 0 … parallel − 1). */
  private slotsHeld = new Set<number>();
  private now: () => number;

  constructor(
    readonly profile: LaunchProfile,
    private o: ChildOptions,
  ) {
    this.now = o.now ?? Date.now;
    this.lastUsed = this.now();
  }

  get state(): ChildState {
    return this._state;
  }

  get name(): string {
    return this.profile.name;
  }

  /** Requests holding a lease now. */
  get busy(): number {
    return this.inflight.size;
  }

  /** The only place the state changes. */
  private transition(to: ChildState): void {
    const from = this._state;
    if (!TRANSITIONS[from].includes(to)) throw new IllegalTransition(this.name, from, to);
    this._state = to;
    // Callers of ensureReady() wait on the gate from the start (or crash) until ready, failed or stopped;
    // a restart after a crash keeps the gate its waiters already hold.
    if (to === 'restarting' || (to === 'starting' && from !== 'restarting')) this.openGate();
    if (to === 'ready') this.settle();
    if (to === 'failed') this.settle(this.failure ?? new RuntimeError(Code.FAILED_PRECONDITION, `model ${this.name} failed: ${this.error}`));
    if (to === 'stopping' || to === 'stopped') this.settle(new RuntimeError(Code.UNAVAILABLE, `model ${this.name} is being unloaded`));
    if (to !== 'failed') this.failure = undefined;
    this.o.onTransition?.(this, from, to);
  }

  private openGate(): void {
    if (this.gateSettled) {
      this.gate = new Gate();
      this.gateSettled = false;
    }
  }

  private settle(e?: Error): void {
    if (this.gateSettled) this.gate = new Gate();
    if (e) this.gate.reject(e);
    else this.gate.resolve();
    this.gateSettled = true;
  }

  private log(s: string): void {
    this.o.log?.(s);
  }

  /**
   * Resolves when the child is ready: starts it when stopped, waits while it starts or restarts.
   * Rejects with FAILED_PRECONDITION when it failed (the reason in the message) and UNAVAILABLE
   * when it is being stopped.
   */
  ensureReady(): Promise<void> {
    if (this._state === 'stopped') this.begin();
    return this.gate.promise;
  }

  /** A new attempt after a failure (a fresh crash count). */
  retry(): Promise<void> {
    if (this._state === 'failed') {
      this.crashTimes = [];
      this.begin();
    }
    return this.ensureReady();
  }

  private begin(): void {
    this.transition('starting');
    void this.run();
  }

  /** One start: a port, the process, /health until it answers (or the process exits, or time runs out). */
  private async run(): Promise<void> {
    try {
      const { port, proc, socket } = await this.o.launcher.start(this.profile);
      this.port = port;
      this.socket = socket ?? '';
      this.proc = proc;
      if (this._state !== 'starting') {
        proc.kill('SIGKILL'); // stopped while the port was being chosen
        return;
      }
      this.pid = proc.pid;
      this.startedAt = this.now();
      this.misses = 0;
      let exited = false;
      let oom: string | undefined;
      let cause: string | undefined;
      const handle = (e: { code: number | null; signal: string | null; oom?: string }, why?: string) => {
        exited = true;
        oom = e.oom;
        cause = why;
        if (oom) {
          this.oomKills++;
          this.lastOom = oom;
          this.o.onOom?.(this, oom);
        }
        this.onExit(proc, e.code, e.signal, e.oom, why);
      };
      void proc.exited.then((e) => {
        // A split model: ask its workers why (a worker gone) before reporting the exit.
        if (this.o.exitCause && this.profile.rpc?.length) void this.o.exitCause(this.profile).catch(() => undefined).then((why) => handle(e, why));
        else handle(e);
      });
      const deadline = this.now() + this.o.loadTimeoutMs;
      for (;;) {
        if (this._state !== 'starting') return; // stopped meanwhile; stop() ends the process
        if (exited) throw new RuntimeError(cause ? Code.UNAVAILABLE : Code.FAILED_PRECONDITION, `llama-server exited while loading ${this.name}: ${oom ? `${oom}; ` : ''}${cause ? `${cause}; ` : ''}${lastLines(proc.tail(), 3) || 'no output'}`);
        if (await this.o.launcher.healthy(this.socket || this.port)) break;
        if (this.now() > deadline) {
          proc.kill('SIGKILL');
          await proc.exited;
          throw new RuntimeError(Code.DEADLINE_EXCEEDED, `${this.name} did not become ready within ${this.o.loadTimeoutMs / 1000} s`);
        }
        await new Promise((r) => setTimeout(r, this.o.pollMs ?? 100));
      }
      if (this._state !== 'starting') return;
      this.error = '';
      this.buffers = proc.buffers;
      this.actualBytes = this.o.launcher.measure(proc, this.name);
      this.transition('ready');
      this.log(`${this.name} ready on port ${this.port} (pid ${proc.pid})`);
    } catch (e) {
      if (this._state !== 'starting') return;
      this.error = (e as Error).message;
      this.failure = e instanceof RuntimeError ? e : new RuntimeError(Code.FAILED_PRECONDITION, `model ${this.name} could not be loaded: ${this.error}`);
      this.transition('failed');
    }
  }

  private onExit(proc: ProcessHandle, code: number | null, signal: string | null, oom?: string, cause?: string): void {
    if (proc !== this.proc) return;
    this.proc = undefined;
    this.pid = 0;
    if (this._state !== 'ready') return; // starting: run() reports it; stopping: stop() waits for it
    const how = (oom ?? signal ?? `exit ${code}`) + (cause ? `: ${cause}` : '');
    for (const a of this.inflight) a.abort(new RuntimeError(Code.UNAVAILABLE, `llama-server for ${this.name} died (${how}) during the request; it is being restarted${cause ? ' once its workers are back' : ''}`));
    this.inflight.clear();
    const now = this.now();
    const window = this.o.crashWindowMs ?? 300_000;
    this.crashTimes = [...this.crashTimes.filter((t) => now - t < window), now];
    this.log(`${this.name}: llama-server died (${how}): ${lastLines(proc.tail(), 1)}`);
    if (this.crashTimes.length > this.o.maxRestarts) {
      this.error = `crashed ${this.crashTimes.length} times in ${Math.round(window / 60_000)} minutes; last: ${how}`;
      this.transition('failed');
      return;
    }
    this.restarts++;
    this.transition('restarting');
    const delay = (this.o.backoffMs ?? defaultBackoff)(this.crashTimes.length);
    this.restartTimer = setTimeout(() => {
      this.restartTimer = undefined;
      if (this._state === 'restarting') void this.resume();
    }, delay);
  }

  /**
   * The end of a restart's backoff: start again, unless a split model's worker is still gone. Then
   * it waits (still restarting; no crash counted), failing requests at once with the reason, and
   * asks again every blockedPollMs; the first time the workers are all there, it starts.
   */
  private async resume(): Promise<void> {
    if (!this.o.blockedBy || !this.profile.rpc?.length) return this.begin();
    const why = await this.o.blockedBy(this.profile).catch((e: Error) => e.message);
    if (this._state !== 'restarting' || this.restartTimer) return; // stopped meanwhile
    if (why) {
      if (this.blocked !== why) this.log(`${this.name}: waiting to restart: ${why}`);
      this.blocked = why;
      this.error = why;
      // Waiters fail now (UNAVAILABLE: try again later) instead of waiting for a worker that may not come back.
      this.settle(new RuntimeError(Code.UNAVAILABLE, `model ${this.name} is split across rpc workers and ${why}; it is reloaded when the worker is back`));
      this.restartTimer = setTimeout(() => {
        this.restartTimer = undefined;
        if (this._state === 'restarting') void this.resume();
      }, this.o.blockedPollMs ?? 1000);
      return;
    }
    if (this.blocked) this.log(`${this.name}: its rpc workers are back; restarting`);
    this.blocked = '';
    this.openGate();
    this.begin();
  }

  /**
   * A health check of a ready child: after `healthMisses` misses in a row it counts as hung and is
   * killed, which the exit handler treats as a crash (restart with backoff, or failed).
   */
  async checkHealth(): Promise<void> {
    if (this._state !== 'ready' || !this.proc) return;
    const proc = this.proc;
    // A split model whose worker went away: llama-server would only notice (and abort) on its next request.
    const lost = this.profile.rpc?.length ? (this.o.lostWorkers?.(this.profile) ?? []) : [];
    if (lost.length) {
      this.log(`${this.name}: rpc worker${lost.length > 1 ? 's' : ''} ${lost.join(', ')} closed the connection; restarting`);
      proc.kill('SIGKILL');
      return;
    }
    if (await this.o.launcher.healthy(this.socket || this.port)) {
      this.misses = 0;
      return;
    }
    const limit = this.o.healthMisses ?? 3;
    if (++this.misses >= limit && this._state === 'ready' && this.proc === proc) {
      this.log(`${this.name}: /health failed ${this.misses} times; restarting`);
      this.misses = 0;
      proc.kill('SIGKILL');
    }
  }

  /** A lease on the ready child for one request; call after ensureReady(). */
  lease(): Lease {
    if (this._state !== 'ready') throw new RuntimeError(Code.UNAVAILABLE, `model ${this.name} is ${this._state}`);
    const ctrl = new AbortController();
    this.inflight.add(ctrl);
    // Every request names its slot, so a session's restored state is never handed to another request.
    let slot = 0;
    while (this.slotsHeld.has(slot)) slot++;
    this.slotsHeld.add(slot);
    let held = true;
    return {
      port: this.port,
      socket: this.socket,
      slot,
      signal: ctrl.signal,
      release: () => {
        if (held) this.slotsHeld.delete(slot);
        held = false;
        if (!this.inflight.delete(ctrl)) return;
        // "Least recently used" means idle the longest: the clock moves when a request ends.
        this.lastUsed = this.now();
      },
    };
  }

  /** Stops the child (requests in flight fail with `why`); resolves once the process is gone. */
  stop(why: string): Promise<void> {
    if (this.stopping) return this.stopping;
    if (this._state === 'stopped') return Promise.resolve();
    if (this._state === 'failed') {
      this.transition('stopped');
      return Promise.resolve();
    }
    if (this.restartTimer) clearTimeout(this.restartTimer);
    this.restartTimer = undefined;
    this.transition('stopping');
    for (const a of this.inflight) a.abort(new RuntimeError(Code.UNAVAILABLE, why));
    this.inflight.clear();
    const proc = this.proc;
    this.stopping = (async () => {
      if (proc) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => proc.kill('SIGKILL'), this.o.stopGraceMs ?? 5000);
        await proc.exited;
        clearTimeout(t);
      }
      this.proc = undefined;
      this.pid = 0;
      this.transition('stopped');
      this.stopping = undefined;
    })();
    return this.stopping;
  }
}

const lastLines = (s: string, n: number) => s.trim().split('\n').slice(-n).join(' | ');
