/**
 * The supervisor: the set of model children (one `ModelChild` state machine each), loading under
 * the memory budget (the decision is `decideAdmission()` in policy.ts; this module only gathers
 * the inputs and carries it out), the health loop (each child's `checkHealth()`, idle unloads by
 * `idleExpired()`), memory accounting, and one `load`/`unload` event per change. It never waits
 * for a slot: the scheduler (scheduler.ts) hands out slots, the service (service.ts) ties them
 * together.
 */
import { existsSync } from 'node:fs';
import { Code, RuntimeError } from './errors.js';
import type { RuntimeEvents, UnloadReason } from './events.js';
import { ModelChild, type ChildOptions, type ChildState, type Launcher, type LaunchProfile, type Lease } from './child.js';
import { decideAdmission, evictable, idleExpired, idleUntil, type Resident } from './policy.js';
import { estimateFootprint, mib, rssOf, type Budget, type Footprint } from './memory.js';
import { isGgufFile } from '../models/gguf.js';
import { childMemoryLimit } from './cgroup.js';
import { treeRss } from './isolation.js';
import type { RpcWorkers, SplitPlan } from './rpc.js';

export interface ModelInfo {
  name: string;
  level: string;
  state: ChildState;
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
  /** Who pinned it: "config" (the operational model, always_loaded), "request" (PinModel), "" = not pinned. */
  pinnedBy: PinnedBy;
  /** When it will be unloaded for idleness (ms epoch), 0 = not idling or never. */
  idleUntil: number;
  /** Requests holding one of its slots. */
  inflight: number;
  /** Requests waiting in its priority queue. */
  queued: number;
  /** llama-server slots. */
  parallel: number;
  /** Its unix socket when sandboxed without a network ("" = it listens on `port`). */
  socket: string;
  /** Its cgroup (issue 16): memory.current and memory.peak (page cache of the weights it faulted in included), memory.max; 0 without one. */
  cgroupMemoryBytes: number;
  cgroupPeakBytes: number;
  memoryLimitBytes: number;
  /** Times the kernel's OOM killer ended it inside its cgroup (since the daemon started). */
  oomKills: number;
  /** A model split across RPC workers: each worker's part, in --rpc order ([] otherwise). */
  rpcWorkers: RpcShareInfo[];
}

/** The part of a split model one RPC worker holds (issue 20). */
export interface RpcShareInfo {
  address: string;
  /** What llama-server reported placing there (its "RPCn[address] model/KV/compute buffer size" lines); 0 until loaded. */
  bytes: number;
  /** The share admission estimated before the load (0 when it was not asked: no estimate). */
  plannedBytes: number;
  /** What this head may use there (reported free, capped by the config's memory). */
  availableBytes: number;
  /** The free memory the worker reported at admission. */
  freeBytes: number;
}

/** llama-server's buffers on each RPC worker, by address: "RPC0[10.0.0.2:50052] model" → 10.0.0.2:50052. */
export function bytesByWorker(byName: Record<string, number>): Map<string, number> {
  const out = new Map<string, number>();
  for (const [k, v] of Object.entries(byName)) {
    const m = /^RPC\d+\[(.+)\] /.exec(k);
    if (m) out.set(m[1]!, (out.get(m[1]!) ?? 0) + v);
  }
  return out;
}

export interface SupervisorOptions {
  launcher: Launcher;
  loadTimeoutMs: number;
  healthIntervalMs: number;
  maxRestarts: number;
  log?: (line: string) => void;
  /** Per-process overhead in a model's estimate (memory.ts processOverhead: more for a CUDA build). */
  processOverhead?: number;
  /** Memory budget; loads that do not fit evict idle models or are refused. Unlimited when absent. */
  budget?: Budget;
  events?: RuntimeEvents;
  /** Requests waiting for a model (its priority queue): a model with waiters is never evicted or idled. */
  queued?: (name: string) => number;
  /** A model became ready (after a load or a restart): its slots can be handed out. */
  onReady?: (name: string) => void;
  /** A model ended in "failed": its waiters cannot be served. */
  onFailed?: (name: string, error: string) => void;
  /** memory.max of a child's cgroup = its estimated footprint × (1 + this) (runtime.child_memory_margin). */
  childMemoryMargin?: number;
  /** The RPC workers of this head ([[runtime.rpc_workers]]): a split model's admission, restarts and health (rpc.ts). */
  rpc?: RpcWorkers;
  /** Passed to every child (tests shorten backoff and polling). */
  child?: Partial<ChildOptions>;
  now?: () => number;
}

export type PinnedBy = 'config' | 'request' | '';

interface Entry {
  child: ModelChild;
  /** For a split model: the head's part only (vramBytes 0); the rest is `remoteBytes`. */
  estimate?: Footprint;
  /** A split model: what its workers hold (estimated), never the head's budget. */
  remoteBytes?: number;
  /** A split model: admission's plan (each worker's share, room, reported free memory). */
  split?: SplitPlan;
}

export class Supervisor {
  private entries = new Map<string, Entry>();
  private loads = new Map<string, Promise<ModelInfo>>();
  /** Admission runs one load at a time, so two loads never count the same free memory. */
  private admission: Promise<unknown> = Promise.resolve();
  private timer?: NodeJS.Timeout;
  private now: () => number;
  /** Models pinned by PinModel (the config's pins are in their launch profiles); dropped when unloaded by request. */
  private pins = new Set<string>();

  constructor(private o: SupervisorOptions) {
    this.now = o.now ?? Date.now;
  }

  private log(s: string): void {
    this.o.log?.(s);
  }

  private newChild(p: LaunchProfile): ModelChild {
    const rpc = this.o.rpc;
    return new ModelChild(p, {
      launcher: this.o.launcher,
      loadTimeoutMs: this.o.loadTimeoutMs,
      maxRestarts: this.o.maxRestarts,
      log: this.o.log,
      now: this.o.now,
      ...(rpc
        ? {
            blockedBy: (q: LaunchProfile) => rpc.unreachable(q.rpc ?? []),
            exitCause: (q: LaunchProfile) => rpc.exitCause(q.rpc ?? []),
            lostWorkers: (q: LaunchProfile) => rpc.lostUnder(q.rpc ?? []),
          }
        : {}),
      ...this.o.child,
      onOom: (c, message) => this.o.events?.emit('oom', { model: c.name, message }),
      onTransition: (c, _from, to) => {
        if (to === 'ready') this.o.onReady?.(c.name);
        if (to === 'failed') this.o.onFailed?.(c.name, c.error);
      },
    });
  }

  /** Loads a model, or waits for the load under way (concurrent loads of one model share it). */
  async load(p: LaunchProfile): Promise<ModelInfo> {
    const pending = this.loads.get(p.name);
    if (pending) return pending;
    const e = this.entries.get(p.name);
    if (e && ['ready', 'starting', 'restarting'].includes(e.child.state)) {
      await e.child.ensureReady();
      return this.info(e);
    }
    const job = this.fresh(p).finally(() => this.loads.delete(p.name));
    this.loads.set(p.name, job);
    return job;
  }

  /** A new child for `p`: checked, admitted under the budget, started. */
  private async fresh(p: LaunchProfile): Promise<ModelInfo> {
    const old = this.entries.get(p.name);
    if (old) await old.child.stop(`model ${p.name} is being reloaded`); // stopping or failed: out of the way first
    if (!existsSync(p.path)) throw new RuntimeError(Code.NOT_FOUND, `model file ${p.path} does not exist`);
    if (!(await isGgufFile(p.path))) throw new RuntimeError(Code.FAILED_PRECONDITION, `${p.path} is not a GGUF file`);
    let estimate: Footprint | undefined;
    try {
      estimate = await estimateFootprint(p.path, p, { overhead: this.o.processOverhead });
    } catch (err) {
      // An unreadable header: llama-server will say why when it refuses the file.
      this.log(`${p.name}: no footprint estimate (${(err as Error).message}); llama-server decides`);
    }
    // Split across RPC workers: the offloaded part (weights, KV cache, compute) is on the workers.
    let remoteBytes: number | undefined;
    if (p.rpc?.length && estimate) {
      // llama.cpp keeps the token embeddings on the head (the input layer is never offloaded).
      const embd = Math.min(estimate.parts.tokenEmbd ?? 0, estimate.vramBytes);
      remoteBytes = estimate.vramBytes - embd;
      estimate = { ...estimate, ramBytes: estimate.ramBytes + embd, vramBytes: 0 };
    }
    const t0 = this.now();
    // Its cgroup's memory.max: the footprint the budget admits, plus the margin (isolation.ts applies it).
    if (p.memoryMaxBytes) p = { ...p, memoryLimitBytes: p.memoryMaxBytes };
    else if (estimate?.ramBytes) p = { ...p, memoryLimitBytes: childMemoryLimit(estimate.ramBytes, this.o.childMemoryMargin ?? 0.1) };
    const entry: Entry = { child: this.newChild(p), estimate, remoteBytes };
    const failed = (err: unknown) => {
      this.o.events?.emit('load', { model: p.name, ms: this.now() - t0, ok: false, estimateBytes: estimate?.ramBytes ?? 0, actualBytes: 0 });
      throw err;
    };
    const admitted = this.admission.then(() => this.admit(entry));
    this.admission = admitted.catch(() => {});
    await admitted.catch(failed);
    await entry.child.ensureReady().catch(failed);
    const info = this.info(entry);
    this.log(`${p.name}: estimated ${mib(info.estimateBytes)}, uses ${mib(info.actualBytes)} (${info.estimateErrorPct >= 0 ? '+' : ''}${info.estimateErrorPct.toFixed(1)} %); llama-server reported ${mib(info.reportedBytes)} of buffers`);
    this.o.events?.emit('load', { model: p.name, ms: this.now() - t0, ok: true, estimateBytes: info.estimateBytes, actualBytes: info.actualBytes });
    return info;
  }

  /** Memory a child counts against the budget: what it uses (measured, or now if more), else its estimate. */
  private charge(e: Entry): { ram: number; vram: number } {
    const c = e.child;
    if (c.state === 'failed' || c.state === 'stopped') return { ram: 0, vram: 0 };
    const live = c.pid && c.state === 'ready' ? this.liveBytes(c) : 0;
    const ram = c.actualBytes ? Math.max(c.actualBytes, live) : (e.estimate?.ramBytes ?? 0);
    const vram = c.buffers.deviceBytes || (e.estimate?.vramBytes ?? 0);
    return { ram, vram };
  }

  private resident(e: Entry): Resident {
    const ch = this.charge(e);
    const c = e.child;
    return { name: c.name, ramBytes: ch.ram, vramBytes: ch.vram, lastUsed: c.lastUsed, pinned: this.pinnedBy(c) !== '', busy: c.busy + (this.o.queued?.(c.name) ?? 0), ready: c.state === 'ready' };
  }

  /** Memory in use and free under the budget. */
  memory(): { budgetBytes: number; usedBytes: number; freeBytes: number; vramBudgetBytes: number; vramUsedBytes: number; source: string } {
    let used = 0;
    let vused = 0;
    for (const e of this.entries.values()) {
      const ch = this.charge(e);
      used += ch.ram;
      vused += ch.vram;
    }
    const b = this.o.budget;
    return { budgetBytes: b?.ramBytes ?? 0, usedBytes: used, freeBytes: b ? b.ramBytes - used : Infinity, vramBudgetBytes: b?.vramBytes ?? 0, vramUsedBytes: vused, source: b?.source ?? 'unlimited' };
  }

  /**
   * Carries out the policy for `e`: evicts what it names (one at a time, deciding again after each,
   * since a model may have become busy meanwhile) or refuses with the numbers. On success `e` is
   * registered, so its estimate counts from now on.
   */
  private async admit(e: Entry): Promise<void> {
    if (e.child.profile.rpc?.length) await this.admitSplit(e);
    const candidate = { name: e.child.name, ramBytes: e.estimate?.ramBytes ?? 0, vramBytes: e.estimate?.vramBytes ?? 0 };
    for (;;) {
      const residents = [...this.entries.values()].map((x) => this.resident(x));
      const d = decideAdmission(this.o.budget, residents, candidate);
      if (d.action === 'load') break;
      if (d.action === 'evict') {
        const victim = d.victims[0]!;
        const v = residents.find((r) => r.name === victim)!;
        this.log(`evicting ${victim} (idle since ${new Date(v.lastUsed).toISOString()}, ${mib(v.ramBytes)}) to load ${candidate.name} (${mib(candidate.ramBytes)})`);
        await this.unload(victim, 'evict').catch(() => {});
        continue;
      }
      const inUse = residents
        .filter((r) => r.name !== candidate.name && this.entries.get(r.name)?.child.state !== 'failed')
        .map((r) => `${r.name} ${mib(r.ramBytes)}${r.pinned ? ' pinned' : !r.ready ? ` ${this.entries.get(r.name)?.child.state}` : !evictable(r) ? ' busy' : ''}`);
      const vram = d.vramNeedBytes ? `; GPU: needs ${mib(d.vramNeedBytes)}, ${mib(d.vramFreeBytes)} free of ${mib(d.vramBudgetBytes)}` : '';
      throw new RuntimeError(
        Code.RESOURCE_EXHAUSTED,
        `not enough memory to load ${candidate.name}: needs ${mib(d.needBytes)} (estimated), ${mib(d.freeBytes)} free of the ${mib(d.budgetBytes)} budget${vram}; in use: ${inUse.join(', ') || 'nothing'}${d.tooBig ? ' (it does not fit even with nothing else loaded)' : '; nothing idle left to evict'}`,
      );
    }
    this.entries.set(e.child.name, e);
  }

  /**
   * A split model: its workers must be free of other split models (ggml-rpc-server serves one head
   * connection at a time: an idle holder is evicted, a pinned or busy one makes this a refusal), and
   * its share must fit on each worker as llama.cpp will split it (rpc.ts; refused with the numbers).
   */
  private async admitSplit(e: Entry): Promise<void> {
    const p = e.child.profile;
    const workers = p.rpc ?? [];
    if (!this.o.rpc) throw new RuntimeError(Code.FAILED_PRECONDITION, `${p.name} is to be split across rpc workers, but this runtime has none ([[runtime.rpc_workers]])`);
    for (;;) {
      const holder = [...this.entries.values()].find(
        (x) => x.child.name !== p.name && ['starting', 'ready', 'restarting'].includes(x.child.state) && (x.child.profile.rpc ?? []).some((a) => workers.includes(a)),
      );
      if (!holder) break;
      const r = this.resident(holder);
      const shared = (holder.child.profile.rpc ?? []).filter((a) => workers.includes(a)).join(', ');
      if (!evictable(r)) {
        throw new RuntimeError(
          Code.RESOURCE_EXHAUSTED,
          `cannot load ${p.name}: rpc worker ${shared} serves ${holder.child.name} (ggml-rpc-server serves one head connection at a time), which is ${r.pinned ? 'pinned' : !r.ready ? holder.child.state : 'busy'}`,
        );
      }
      this.log(`evicting ${holder.child.name} to free rpc worker ${shared} for ${p.name}`);
      await this.unload(holder.child.name, 'evict').catch(() => {});
    }
    e.split = await this.o.rpc.admit(p.name, workers, e.remoteBytes ?? 0);
  }

  /** A lease on a loaded model's child for one request (waits through a restart). */
  async lease(name: string): Promise<Lease> {
    const e = this.entries.get(name);
    if (!e) throw new RuntimeError(Code.NOT_FOUND, `model ${name} is not loaded`);
    await e.child.ensureReady();
    return e.child.lease();
  }

  /** Why a model failed (crashed max_restarts times, or could not start), if it is failed. */
  failure(name: string): string | undefined {
    const c = this.entries.get(name)?.child;
    return c?.state === 'failed' ? c.error : undefined;
  }

  /** Loaded, loading or restarting (not failed). */
  has(name: string): boolean {
    const e = this.entries.get(name);
    return !!e && e.child.state !== 'failed';
  }

  async unload(name: string, reason: UnloadReason = 'request'): Promise<void> {
    const e = this.entries.get(name);
    if (!e) throw new RuntimeError(Code.NOT_FOUND, `model ${name} is not loaded`);
    await e.child.stop(`model ${name} was unloaded (${reason}) during the request`);
    if (this.entries.get(name) === e) this.entries.delete(name);
    if (reason === 'request') this.pins.delete(name); // a reload (restart) keeps it
    this.o.events?.emit('unload', { model: name, reason });
  }

  private pinnedBy(c: ModelChild): PinnedBy {
    return c.profile.pinned ? 'config' : this.pins.has(c.name) ? 'request' : '';
  }

  /**
   * PinModel: a pinned model is never evicted nor unloaded for idleness (policy.ts). Only a loaded
   * model (starting, ready or restarting) can be pinned; the config's pins (the operational model,
   * always_loaded layers) cannot be taken off. Pinning twice, or unpinning what is not pinned, is a no-op.
   */
  pin(name: string, on: boolean): ModelInfo {
    const e = this.entries.get(name);
    if (!e || e.child.state === 'failed' || e.child.state === 'stopped' || e.child.state === 'stopping') {
      const why = !e ? 'is not loaded' : `is ${e.child.state}`;
      throw new RuntimeError(Code.FAILED_PRECONDITION, `model ${name} ${why}: ${on ? 'load it first (a pin keeps a loaded model in memory; it does not load one)' : 'nothing to unpin'}`);
    }
    const c = e.child;
    if (!on && c.profile.pinned) {
      const why = c.profile.level === 'operational' ? 'the operational model is always pinned' : `[models.${c.profile.level}] has always_loaded = true; set it to false and restart the runtime to unpin it`;
      throw new RuntimeError(Code.FAILED_PRECONDITION, `model ${name} is pinned by the config: ${why}`);
    }
    if (on && !c.profile.pinned) this.pins.add(name);
    if (!on) this.pins.delete(name);
    this.log(`${name}: ${on ? 'pinned' : 'unpinned'} (PinModel)`);
    return this.info(e);
  }

  /** Slots a model can serve at once now: its `parallel` while ready or restarting (requests wait for it), else 0. */
  capacity(name: string): number {
    const c = this.entries.get(name)?.child;
    return c && (c.state === 'ready' || c.state === 'restarting') ? c.profile.parallel : 0;
  }

  /** The launch profile of a loaded (or loading) model. */
  profileOf(name: string): LaunchProfile | undefined {
    return this.entries.get(name)?.child.profile;
  }

  /** What a child uses now: its cgroup's memory.current when it has one, else the resident set of its process tree. */
  private liveBytes(c: ModelChild): number {
    return this.o.launcher.cgroupStats?.(c.name)?.currentBytes || (c.pid ? treeRss(c.pid) : 0);
  }

  private info(e: Entry): ModelInfo {
    const c = e.child;
    const cg = this.o.launcher.cgroupStats?.(c.name);
    const estimateBytes = e.estimate?.ramBytes ?? 0;
    const queued = this.o.queued?.(c.name) ?? 0;
    return {
      name: c.name,
      level: c.profile.level,
      state: c.state,
      pid: c.pid,
      port: c.port,
      memoryBytes: c.pid ? treeRss(c.pid) : 0,
      lastUsed: c.lastUsed,
      uptimeMs: c.state === 'ready' ? this.now() - c.startedAt : 0,
      path: c.profile.path,
      restarts: c.restarts,
      error: c.error || c.lastOom,
      estimateBytes,
      actualBytes: c.actualBytes,
      estimateErrorPct: c.actualBytes && estimateBytes ? ((estimateBytes - c.actualBytes) / c.actualBytes) * 100 : 0,
      vramEstimateBytes: e.estimate?.vramBytes ?? 0,
      vramActualBytes: c.buffers.deviceBytes,
      reportedBytes: c.buffers.hostBytes,
      pinned: this.pinnedBy(c) !== '',
      pinnedBy: this.pinnedBy(c),
      idleUntil: idleUntil(this.idleView(e)),
      inflight: c.busy,
      queued,
      parallel: c.profile.parallel,
      socket: c.socket,
      cgroupMemoryBytes: cg?.currentBytes ?? 0,
      cgroupPeakBytes: cg?.peakBytes ?? 0,
      memoryLimitBytes: cg?.limitBytes ?? 0,
      oomKills: c.oomKills,
      rpcWorkers: this.rpcShares(e),
    };
  }

  /** Each worker's part of a split model: planned at admission, placed as llama-server reported it. */
  private rpcShares(e: Entry): RpcShareInfo[] {
    const placed = bytesByWorker(e.child.buffers.byName);
    return (e.child.profile.rpc ?? []).map((address) => {
      const s = e.split?.shares.find((x) => x.address === address);
      return { address, bytes: placed.get(address) ?? 0, plannedBytes: s?.bytes ?? 0, availableBytes: s?.availableBytes ?? 0, freeBytes: s?.reportedFreeBytes ?? 0 };
    });
  }

  private idleView(e: Entry) {
    const c = e.child;
    return { name: c.name, ready: c.state === 'ready', pinned: this.pinnedBy(c) !== '', busy: c.busy + (this.o.queued?.(c.name) ?? 0), lastUsed: c.lastUsed, idleMs: c.profile.idleUnloadMs ?? 0 };
  }

  list(): ModelInfo[] {
    return [...this.entries.values()].map((e) => this.info(e));
  }

  /** One round of the health loop: every ready child's /health, then idle unloads. */
  async tick(): Promise<void> {
    await Promise.all([...this.entries.values()].map((e) => e.child.checkHealth()));
    for (const name of idleExpired([...this.entries.values()].map((e) => this.idleView(e)), this.now())) {
      const e = this.entries.get(name);
      if (e) this.log(`${name}: idle for ${Math.round((this.now() - e.child.lastUsed) / 1000)} s; unloading`);
      await this.unload(name, 'idle').catch(() => {});
    }
  }

  /** Health checks and idle unloads every healthIntervalMs (the ticks never overlap). */
  startHealthLoop(): void {
    if (this.timer) return;
    const loop = () => {
      this.timer = setTimeout(() => void this.tick().finally(() => this.timer && loop()), this.o.healthIntervalMs);
      this.timer.unref();
    };
    loop();
  }

  async stopAll(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    await Promise.all(
      [...this.entries.values()].map(async (e) => {
        const was = e.child.state;
        await e.child.stop('aios-runtime is shutting down');
        if (was !== 'failed') this.o.events?.emit('unload', { model: e.child.name, reason: 'shutdown' });
      }),
    );
    this.entries.clear();
    this.pins.clear();
    this.o.launcher.release?.();
  }
}
