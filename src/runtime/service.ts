/**
 * The runtime service: the one seam every front end (gRPC in server.ts, HTTP in http.ts, /metrics,
 * `aios ps` through gRPC) goes through. It ties together the router (router.ts: what a request
 * means), the scheduler (scheduler.ts: where a request waits), the supervisor (supervisor.ts: the
 * children, the budget, restarts) and the installer (install.ts). Transport-free.
 */
import { RpcWorkers } from './rpc.js';
import { existsSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Code, RuntimeError } from './errors.js';
import type { Launcher, LaunchProfile } from './child.js';
import { LlamaServerLauncher } from './launch.js';
import { Supervisor, type ModelInfo, type SupervisorOptions } from './supervisor.js';
import { readRuntimeConfig, type RuntimeConfig } from './config.js';
import { ms } from './defaults.js';
import { RuntimeEvents, type PriorityName, type RequestStatus } from './events.js';
import { Scheduler, type Ticket } from './scheduler.js';
import { estimateFootprint, gpuMemory, mib, PROCESS_OVERHEAD, processOverhead, ramBudget, type Budget } from './memory.js';
import { Router, type LocalLevel, type Target } from './router.js';
import { Installer, type LoadProgress } from './install.js';
import { resolveParams } from './params.js';
import { postChild, readAll, sseData } from './upstream.js';
import type { Log } from './log.js';
import { catalog, type CatalogEntry } from '../models/catalog.js';
import { parseSize } from '../util/size.js';
import { CloudGateway, CloudUnavailable, type ChatMessage, type CloudAnswer, type GatewayOptions } from './cloud.js';
import { Adapters, adapterSetKey, type AdapterRef, type AdapterView, type AppliedAdapter } from './adapters.js';
import { SessionStore, checkSessionId, reportedUse, strategicSessionRefusal, type CacheOutcome, type SessionCounts, type ChatMsg, type ReportedUse, type SessionInfo, type Turn } from './sessions.js';
import { prepareSessionsDir, sessionsDirOf } from './defaults.js';

export type { LoadProgress, ProgressPhase } from './install.js';
export type { ModelInfo } from './supervisor.js';

/** The catalog beside the bundle (in the image: /usr/lib/aios-runtime/catalog.toml), else the repository's. */
export const DEFAULT_CATALOG = existsSync(fileURLToPath(new URL('./catalog.toml', import.meta.url)))
  ? fileURLToPath(new URL('./catalog.toml', import.meta.url))
  : fileURLToPath(new URL('../../models/catalog.toml', import.meta.url));

export interface InferInput {
  model: string;
  prompt: string;
  systemPrompt: string;
  /** Generation fields by their wire names (max_tokens, temperature); absent = the model's defaults. */
  params: Record<string, unknown>;
  intelligenceLevel: string;
  grammar: string;
  timeoutMs: number;
  priority?: PriorityName;
  /** LoRA adapters to apply by name (adapters.ts); none and a task = selection by similarity. */
  adapters?: AdapterRef[];
  task?: string;
  /** A saved session (sessions.ts): the conversation so far goes before this turn; "" / absent = none. */
  sessionId?: string;
}

/** What a front end asks for: a model (name, level or "auto"), a priority, and a deadline. */
export interface SlotRequest {
  model: string;
  level: string;
  priority: PriorityName;
  /** Absolute deadline (Date.now() based); 0 = the server's request_timeout from now. */
  deadline: number;
  /** Generation fields the client sent (wire names), checked against the model before it waits. */
  params?: Record<string, unknown>;
  /** Progress while the model is being downloaded (auto-install) or loaded, for front ends that can show it. */
  onProgress?: (p: LoadProgress) => void;
  /** LoRA adapters by name, or a task to select them by (adapters.ts). */
  adapters?: AdapterRef[];
  task?: string;
}

/** One of a child's parallel slots, held for the duration of withSlot()'s callback. */
export interface Slot {
  /** Resolved model name. */
  model: string;
  /** llama-server's loopback port, or its unix socket's path when it is sandboxed (postChild takes either). */
  port: number | string;
  /** Aborts when the client goes away, the deadline passes, or the child dies. */
  signal: AbortSignal;
  /** Milliseconds spent waiting for the slot (queue + load). */
  queuedMs: number;
  /** The tokens to generate and the temperature: the client's, else the model's defaults. */
  maxTokens: number;
  temperature: number;
  /** The adapters this request applies ([] = none) and llama-server's `lora` field for them (undefined: the model has no adapters). */
  adapters: AppliedAdapter[];
  lora?: { id: number; scale: number }[];
  /** llama-server's slot id for this request (`id_slot`): every request names its slot. */
  slot: number;
}

/** How a session's turn went (sessions.ts): the cache outcome, the tokens reused, news for the client. */
export interface SessionOutcome {
  id: string;
  cache: CacheOutcome;
  restoredTokens: number;
  cachedTokens: number;
  restoreMs: number;
  saved: boolean;
  note: string;
}

export interface InferOutput {
  text: string;
  tokensUsed: number;
  promptTokens: number;
  completionTokens: number;
  latencyMs: number;
  modelUsed: string;
  /** Strategic requests: the [api.<name>] table that answered, or "local" (api.local_fallback). */
  provider?: string;
  /** Strategic requests: the settled cost in USD. */
  costUsd?: number;
  /** LoRA adapters applied (with their similarity when selected by task). */
  adapters?: AppliedAdapter[];
  /** Session requests: what happened to the saved state. */
  session?: SessionOutcome;
}

/** A model as the front ends list it: its state and memory, its queue per priority, its LoRA adapters. */
export interface ModelView extends ModelInfo {
  queuedByPriority: Partial<Record<PriorityName, number>>;
  adapters: AdapterView[];
}

export interface Health {
  ready: boolean;
  modelsReady: number;
  uptimeMs: number;
  budgetBytes: number;
  usedBytes: number;
  /** GPU memory budget (0 = none) and what the loaded models hold there. */
  vramBudgetBytes: number;
  vramUsedBytes: number;
  queued: number;
}

export interface ServiceOptions {
  /** How children are started (default: llama-server). Tests pass a fake. */
  launcher?: Launcher;
  /** Passed to the supervisor (tests shorten the children's backoff and polling). */
  supervisor?: Partial<SupervisorOptions>;
  /** The cloud gateway's clock and environment (tests inject a month; credentials). */
  cloud?: Pick<GatewayOptions, 'now' | 'env'>;
  /** The config file the runtime was started from (Reload / SIGHUP read it again). */
  configFile?: string;
}

/** nvidia-smi's answer, undefined where it is missing or finds no GPU. */
function nvidiaSmiMemory(): string | undefined {
  try {
    return execFileSync('nvidia-smi', ['--query-gpu=memory.total', '--format=csv,noheader,nounits'], { encoding: 'utf8', timeout: 5000 });
  } catch {
    return undefined;
  }
}

/** The dotted keys whose values differ between two configs (tables compared key by key, anything else as a whole). */
export function changedKeys(a: unknown, b: unknown, prefix = ''): string[] {
  const table = (x: unknown): x is Record<string, unknown> => !!x && typeof x === 'object' && !Array.isArray(x);
  if (table(a) && table(b)) {
    return [...new Set([...Object.keys(a), ...Object.keys(b)])].sort().flatMap((k) => changedKeys(a[k], b[k], prefix ? `${prefix}.${k}` : k));
  }
  return JSON.stringify(a) === JSON.stringify(b) ? [] : [prefix];
}

export class RuntimeService {
  readonly events = new RuntimeEvents();
  readonly startedAt = Date.now();
  readonly budget: Budget;
  readonly router: Router;
  /** false when gpu_layers ≠ 0 is configured, vram_budget is "auto" and nvidia-smi finds no GPU. */
  private gpuPresent = true;
  /** Per-process overhead of llama-server in the estimates (more for a CUDA build). */
  private readonly processOverhead: number;
  ready = false;
  /** When start() loaded and probed the operational model (ms since the process started). */
  readonly startup = { loadFrom: 0, loadedAt: 0, probedAt: 0 };
  private readonly supervisor: Supervisor;
  private readonly scheduler: Scheduler;
  private readonly installer: Installer;
  /** The strategic layer (cloud.ts); no [api.<name>] table = disabled. */
  readonly cloud: CloudGateway;
  /** LoRA adapters: checks at load, selection, the per-request field (adapters.ts). */
  readonly adapters: Adapters;
  /** Models being drained for a restart (reload): no new request is given a slot. */
  private readonly draining = new Set<string>();
  private readonly configFile?: string;
  /** Saved sessions: conversations and their KV state (sessions.ts). */
  readonly sessions: SessionStore;

  constructor(
    readonly config: RuntimeConfig,
    private log: Log = () => {},
    o: ServiceOptions = {},
  ) {
    const r = config.runtime;
    this.budget = ramBudget(r.memory_budget, parseSize(r.memory_reserve), parseSize);
    const gpuConfigured = [config.models.operational, config.models.tactical].some((l) => l && l.gpu_layers !== 0);
    if (r.vram_budget !== 'auto') this.budget.vramBytes = parseSize(r.vram_budget);
    else if (gpuConfigured) {
      const total = gpuMemory(nvidiaSmiMemory);
      if (total) this.budget.vramBytes = Math.floor(total * 0.95);
      else {
        // A GPU image on a machine without a GPU (docs/gpu.md): serve on the CPU, and say so once.
        this.gpuPresent = false;
        log('no NVIDIA GPU found (nvidia-smi): models configured with gpu_layers ≠ 0 run on the CPU, their memory counted in RAM', 'warn');
      }
    }
    this.scheduler = new Scheduler({
      maxQueuePerModel: r.max_queue_per_model,
      maxQueueTotal: r.max_queue_total,
      agingMs: ms(r.queue_aging),
      capacity: (m) => (this.draining.has(m) ? 0 : this.supervisor.capacity(m)),
    });
    const sessionsDir = sessionsDirOf(r.sessions_dir);
    const launcher = o.launcher ?? new LlamaServerLauncher(r.llama_server, (s) => log(s, 'debug'));
    // Made (0700) before any llama-server starts with it as --slot-save-path; not for other launchers (tests).
    const sessionsProblem = launcher instanceof LlamaServerLauncher ? prepareSessionsDir(sessionsDir) : undefined;
    if (sessionsProblem) log(`sessions are off: ${sessionsDir} cannot be used (${sessionsProblem})`, 'warn');
    this.sessions = new SessionStore({ dir: sessionsDir, maxBytes: parseSize(r.sessions_max_bytes), log, problem: sessionsProblem });
    // llama-server's slot files (save/restore) live in the sessions directory.
    if (launcher instanceof LlamaServerLauncher && !sessionsProblem) launcher.slotSavePath = sessionsDir;
    // A head's RPC workers (issue 20): split models' admission, restarts and health.
    const rpc = r.rpc_workers.length
      ? new RpcWorkers({
          llamaServer: r.llama_server,
          workers: r.rpc_workers.map((w) => ({ address: w.address, capBytes: w.memory ? parseSize(w.memory) : 0 })),
          queryTimeoutMs: ms(r.rpc_query_timeout),
          log,
        })
      : undefined;
    // A CUDA build of llama-server maps half a gigabyte of CUDA libraries: its estimate says so (docs/gpu.md).
    this.processOverhead = launcher instanceof LlamaServerLauncher ? processOverhead(r.llama_server) : PROCESS_OVERHEAD;
    this.supervisor = new Supervisor({
      processOverhead: this.processOverhead,
      launcher,
      rpc,
      loadTimeoutMs: ms(r.load_timeout),
      healthIntervalMs: ms(r.health_interval),
      maxRestarts: r.max_restarts,
      log,
      budget: this.budget,
      childMemoryMargin: r.child_memory_margin,
      events: this.events,
      queued: (m) => this.scheduler.queued(m),
      onReady: (m) => this.scheduler.pump(m),
      onFailed: (m, err) => this.scheduler.failAll(m, new RuntimeError(Code.FAILED_PRECONDITION, `model ${m} failed: ${err}`)),
      ...o.supervisor,
    });
    this.router = new Router(config, () => this.catalog(), (name) => (this.supervisor.has(name) ? this.supervisor.profileOf(name) : undefined), () => this.gpuPresent);
    this.installer = new Installer(config.models.model_dir, this.events, log);
    this.cloud = new CloudGateway(config, { log, events: this.events, ...o.cloud });
    this.configFile = o.configFile;
    const emb = config.models.embedding;
    this.adapters = new Adapters({
      configured: (m) => this.router.adapters(m),
      embed: emb ? (texts) => this.embed(texts) : undefined,
      minSimilarity: emb?.min_similarity ?? 0.7,
      maxAdapters: emb?.max_adapters ?? 3,
      log,
    });
    this.events.on('unload', ({ model, reason }) => {
      if (reason === 'request' || reason === 'shutdown') this.scheduler.failAll(model, new RuntimeError(Code.UNAVAILABLE, `model ${model} was unloaded while the request was queued`));
    });
    log(`memory budget ${mib(this.budget.ramBytes)} (${this.budget.source})${this.budget.vramBytes ? `, GPU ${mib(this.budget.vramBytes)}` : ''}`);
  }

  /** Launch profile of a configured layer. */
  profile(level: LocalLevel): LaunchProfile | undefined {
    return this.router.profile(level);
  }

  /** The model catalog (runtime.catalog, else the one shipped beside the runtime). */
  catalog(): CatalogEntry[] {
    const file = this.config.runtime.catalog || DEFAULT_CATALOG;
    try {
      return catalog(file);
    } catch (e) {
      this.log(`catalog ${file}: ${(e as Error).message.split('\n')[0]}`, 'warn');
      return [];
    }
  }

  /**
   * Start: load the operational model (and every layer with always_loaded = true, pinned) and
   * require the operational model to answer its probe.
   */
  async start(): Promise<void> {
    const op = this.router.configured().find((c) => c.level === 'operational');
    if (!op) throw new RuntimeError(Code.FAILED_PRECONDITION, 'no [models.operational] in the config: the runtime needs an operational model');
    const always = this.router.configured().filter((c) => c.level !== 'operational' && this.config.models[c.level]!.always_loaded);
    this.startup.loadFrom = performance.now();
    const loads = [op, ...always].map((c) => this.ensureLoaded(this.router.resolve('', c.level)));
    loads.forEach((l) => l.catch(() => {}));
    await loads[0];
    this.startup.loadedAt = performance.now();
    const probe = this.config.models.operational!.probe;
    const t0 = Date.now();
    const out = await this.infer({ model: '', prompt: probe.prompt, systemPrompt: '', params: { max_tokens: 8, temperature: 0 }, intelligenceLevel: 'operational', grammar: probe.grammar ?? '', timeoutMs: 60_000, priority: 'system' });
    if (!new RegExp(probe.expect).test(out.text)) {
      throw new RuntimeError(Code.FAILED_PRECONDITION, `the operational model's probe answer "${out.text}" does not match /${probe.expect}/`);
    }
    this.startup.probedAt = performance.now();
    this.log(`probe answered "${out.text.trim()}" in ${Date.now() - t0} ms`);
    await Promise.all(loads.slice(1));
    this.supervisor.startHealthLoop();
    this.ready = true;
  }

  /** Router, without loading anything (router.ts). */
  resolve(model: string, level: string): Target {
    return this.router.resolve(model, level);
  }

  /**
   * Gets a model into memory: downloads it first when its file is missing and it is in the catalog
   * (runtime.auto_install), then loads it under the memory budget (concurrent loads share one).
   * A request never loads a configured layer with load_on_demand = false, nor reloads a failed model.
   */
  private async ensureLoaded(t: Target, onProgress?: (p: LoadProgress) => void, byRequest = false): Promise<void> {
    if (this.supervisor.capacity(t.name) > 0) return;
    const p = t.profile ?? this.supervisor.profileOf(t.name);
    if (!p) throw new RuntimeError(Code.NOT_FOUND, `model ${t.name} is not loaded`);
    const failed = this.supervisor.failure(t.name);
    if (byRequest && failed !== undefined) {
      // A model that failed stays failed until someone loads it again: requests do not retry a crash loop.
      throw new RuntimeError(Code.FAILED_PRECONDITION, `model ${t.name} failed: ${failed}; load it again with \`aios runtime load ${t.name}\``);
    }
    if (byRequest && t.layer && !this.config.models[t.layer]!.load_on_demand && !this.supervisor.has(t.name)) {
      throw new RuntimeError(Code.FAILED_PRECONDITION, `model ${t.name} ([models.${t.layer}]) is not loaded and load_on_demand = false: load it first with \`aios runtime load ${t.name}\``);
    }
    if (t.profile && !existsSync(p.path)) {
      if (!t.entry) throw new RuntimeError(Code.NOT_FOUND, `model file ${p.path} does not exist (and no catalog entry has that file)`);
      if (!this.config.runtime.auto_install) {
        throw new RuntimeError(Code.FAILED_PRECONDITION, `model ${t.name} is not installed (${p.path}); install it with \`aios runtime pull ${t.entry.id}\`, or set runtime.auto_install = true`);
      }
      await this.installer.install(t.entry, onProgress);
    } else if (t.entry && !t.layer && this.config.runtime.auto_install && this.installer.missingAdapters(t.entry).length) {
      // A catalog model that is there without (some of) its entry's adapters: fetch those first. One
      // that cannot be had is left out at load with the reason (adapters.ts), not the model.
      await this.installer.installAdapters(t.entry).catch((e) => this.log(`${t.name}: ${(e as Error).message}; the model is loaded without it`, 'warn'));
    }
    if (onProgress) {
      const est = await estimateFootprint(p.path, p, { overhead: this.processOverhead }).catch(() => undefined);
      onProgress({ model: t.name, phase: 'load', bytes: 0, total: est?.ramBytes ?? 0 });
    }
    const loaded = await this.supervisor.load(await this.adapters.vet(p));
    onProgress?.({ model: t.name, phase: 'load', bytes: loaded.actualBytes, total: loaded.estimateBytes });
  }

  /** PullModel: installs a catalog model (by id or file name) into model_dir. */
  async pull(id: string, onProgress?: (p: LoadProgress) => void): Promise<{ model: string; path: string; bytes: number }> {
    if (!id) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model: must not be empty');
    const e = this.catalog().find((x) => x.id === id || x.file === id);
    if (!e) throw new RuntimeError(Code.NOT_FOUND, `"${id}" is not in the catalog (${this.catalog().map((x) => x.id).join(', ')})`);
    const path = await this.installer.install(e, onProgress);
    // Its adapters again, if one failed: the answer says why (the model itself is installed).
    await this.installer.installAdapters(e);
    return { model: e.id, path, bytes: statSync(path).size };
  }

  /** Downloads in progress: model, bytes so far, total. */
  installing(): { model: string; bytes: number; total: number }[] {
    return this.installer.installing();
  }

  /** Waiting requests per model per priority, every priority of every loaded or queued model (0 included). */
  queueSnapshot(): { model: string; priority: PriorityName; depth: number }[] {
    return this.scheduler.snapshot(this.supervisor.list().map((m) => m.name));
  }

  /** Every model in memory (or failed), with its queue per priority and its adapters. */
  models(): ModelView[] {
    const q = this.queueSnapshot();
    return this.supervisor.list().map((m) => ({
      ...m,
      queuedByPriority: Object.fromEntries(q.filter((x) => x.model === m.name && x.depth > 0).map((x) => [x.priority, x.depth])),
      adapters: this.adapterViews(m.name),
    }));
  }

  /** A model's configured adapters (its layer's, or its catalog entry's), each marked loaded or refused with the reason. */
  adapterViews(model: string): AdapterView[] {
    return this.adapters.describe(model, this.supervisor.has(model) ? this.supervisor.profileOf(model)?.adapters : undefined);
  }

  /** Saved sessions per model name (count, saved states, bytes), for the model lists; {} when sessions are off. */
  async sessionCounts(): Promise<Map<string, SessionCounts>> {
    if (!this.sessions.enabled) return new Map();
    return this.sessions.summary().catch((e) => {
      this.log(`sessions: cannot list ${this.sessions.dir}: ${(e as Error).message}`, 'warn');
      return new Map();
    });
  }

  health(): Health {
    const mem = this.supervisor.memory();
    return {
      ready: this.ready,
      modelsReady: this.supervisor.list().filter((m) => m.state === 'ready').length,
      uptimeMs: Date.now() - this.startedAt,
      budgetBytes: mem.budgetBytes,
      usedBytes: mem.usedBytes,
      vramBudgetBytes: mem.vramBudgetBytes,
      vramUsedBytes: mem.vramUsedBytes,
      queued: this.scheduler.totalQueued,
    };
  }

  memory(): ReturnType<Supervisor['memory']> {
    return this.supervisor.memory();
  }

  /**
   * The one way a request reaches a child, for every front end (gRPC Infer/StreamInfer, HTTP):
   * route the model, check the request's generation fields against it, wait for a slot in its
   * priority queue (loading it meanwhile), run `fn` with the slot, release it, and report the
   * request once. `cancel` is the client going away.
   */
  async withSlot<T>(req: SlotRequest, cancel: AbortSignal | undefined, fn: (slot: Slot) => Promise<T>): Promise<T> {
    const t0 = Date.now();
    const deadline = req.deadline || t0 + ms(this.config.runtime.request_timeout);
    let model = req.model || req.level || 'operational';
    let status: RequestStatus = 'error';
    let code = 0;
    let queuedMs = 0;
    let ticket: Ticket | undefined;
    try {
      const target = this.router.resolve(req.model, req.level);
      model = target.name;
      const params = resolveParams(req.params ?? {}, this.router.defaults(target));
      // The adapters by name (checked now), or selected by task (the embedding child), before waiting.
      const applied = await this.adapters.choose(model, req.adapters, req.task);
      // Join the model's priority queue first (full → RESOURCE_EXHAUSTED now), then get the model
      // into memory (download, budget, load) while waiting; a dropped waiter is never dispatched.
      const waiting = this.scheduler.enter(model, req.priority, { deadline, cancel, group: adapterSetKey(applied) });
      try {
        ticket = await Promise.race([this.ensureLoaded(target, req.onProgress, true).then(() => waiting.granted), waiting.granted]);
      } catch (e) {
        waiting.abort(e as Error);
        throw e;
      }
      const lease = await this.supervisor.lease(model);
      let lora: Slot['lora'];
      try {
        lora = this.adapters.lora(this.supervisor.profileOf(model), applied);
      } catch (e) {
        lease.release();
        throw e;
      }
      queuedMs = Date.now() - t0;
      const left = deadline - Date.now();
      const signal = AbortSignal.any([lease.signal, AbortSignal.timeout(Math.max(1, left)), ...(cancel ? [cancel] : [])]);
      try {
        const r = await fn({ model, port: lease.socket || lease.port, signal, queuedMs, ...params, adapters: applied, lora, slot: lease.slot });
        status = 'ok';
        return r;
      } catch (e) {
        if (e instanceof RuntimeError) throw e;
        const reason = signal.reason;
        if (reason instanceof RuntimeError) throw reason;
        if (cancel?.aborted) throw new RuntimeError(Code.CANCELLED, 'the client cancelled the request');
        if (reason && (reason as Error).name === 'TimeoutError') throw new RuntimeError(Code.DEADLINE_EXCEEDED, `no answer within ${deadline - t0} ms`);
        // The connection broke: if the child died, its exit is reported in a moment, with the better message.
        await new Promise((r) => setTimeout(r, 250));
        if (lease.signal.reason instanceof RuntimeError) throw lease.signal.reason;
        const cause = (e as { cause?: { code?: string; message?: string } }).cause;
        throw new RuntimeError(Code.UNAVAILABLE, `llama-server for ${model} failed during the request: ${(e as Error).message}${cause ? ` (${cause.code ?? cause.message})` : ''}`);
      } finally {
        lease.release();
      }
    } catch (e) {
      if (!ticket) queuedMs = Date.now() - t0; // dropped, refused or failed before it got a slot: the time it waited
      code = e instanceof RuntimeError ? e.code : Code.INTERNAL;
      status = code === Code.CANCELLED ? 'cancelled' : code === Code.RESOURCE_EXHAUSTED ? 'rejected' : code === Code.DEADLINE_EXCEEDED ? 'expired' : 'error';
      throw e;
    } finally {
      ticket?.release();
      this.events.emit('request', { model, priority: req.priority, status, code, queuedMs });
    }
  }

  /** One chat request on a child (gRPC Infer/StreamInfer, the probe); `onText` receives streamed pieces. */
  async infer(i: InferInput, cancel?: AbortSignal, onText?: (t: string) => void, onProgress?: SlotRequest['onProgress']): Promise<InferOutput> {
    if (!i.prompt) throw new RuntimeError(Code.INVALID_ARGUMENT, 'prompt: must not be empty');
    if (!Number.isInteger(i.timeoutMs) || i.timeoutMs < 0) throw new RuntimeError(Code.INVALID_ARGUMENT, `timeout_ms: must be 0 (the server's request_timeout) or a positive number of milliseconds (got ${i.timeoutMs})`);
    const t0 = Date.now();
    const deadline = t0 + (i.timeoutMs || ms(this.config.runtime.request_timeout));
    if (i.sessionId) checkSessionId(i.sessionId);
    if (i.intelligenceLevel === 'strategic' || (i.model && this.cloud.handles(i.model))) {
      if (i.sessionId) throw new RuntimeError(Code.FAILED_PRECONDITION, strategicSessionRefusal('session_id'));
      const messages: ChatMessage[] = [...(i.systemPrompt ? [{ role: 'system' as const, content: i.systemPrompt }] : []), { role: 'user', content: i.prompt }];
      return this.strategic({ messages, params: i.params, priority: i.priority ?? 'default', deadline, only: this.cloud.handles(i.model) ? i.model : '' }, cancel, onText, () => this.infer({ ...i, model: '', intelligenceLevel: this.config.api.local_fallback }, cancel, onText, onProgress));
    }
    const run = () => this.withSlot({ model: i.model, level: i.intelligenceLevel, priority: i.priority ?? 'default', deadline, params: i.params, onProgress, adapters: i.adapters, task: i.task }, cancel, async (slot) => {
      let ttft = 0;
      // This turn's messages; with a session, the conversation so far goes first and its KV state
      // is restored into the slot, so llama-server evaluates only this turn (sessions.ts).
      const added: ChatMsg[] = [{ role: 'user', content: i.prompt }];
      let turn: Turn | undefined;
      if (i.sessionId) {
        turn = await this.sessions.begin({ ...this.sessionTarget(slot), id: i.sessionId, port: slot.port, slot: slot.slot, signal: slot.signal, systemPrompt: i.systemPrompt });
        if (!turn.history.length && i.systemPrompt) added.unshift({ role: 'system', content: i.systemPrompt });
      } else if (i.systemPrompt) added.unshift({ role: 'system', content: i.systemPrompt });
      const messages = [...(turn?.history ?? []), ...added];
      let use: ReportedUse = {};
      const g0 = Date.now();
      const stream = !!onText;
      const body = JSON.stringify({
        messages,
        id_slot: slot.slot,
        cache_prompt: true,
        max_tokens: slot.maxTokens,
        temperature: slot.temperature,
        stream,
        ...(stream ? { stream_options: { include_usage: true } } : {}),
        ...(i.grammar ? { grammar: i.grammar } : {}),
        ...(slot.lora ? { lora: slot.lora } : {}),
      });
      const res = await postChild(slot.port, '/v1/chat/completions', Buffer.from(body), slot.signal);
      if (res.statusCode !== 200) {
        const text = (await readAll(res)).toString('utf8');
        throw new RuntimeError(res.statusCode === 400 ? Code.INVALID_ARGUMENT : Code.INTERNAL, `llama-server answered ${res.statusCode}: ${text.slice(0, 300)}`);
      }
      let text = '';
      let streamed = 0;
      let usage = { prompt_tokens: 0, completion_tokens: 0 };
      if (!onText) {
        const j = JSON.parse((await readAll(res)).toString('utf8')) as { choices: { message: { content: string } }[]; usage?: typeof usage };
        text = j.choices[0]?.message.content ?? '';
        usage = j.usage ?? usage;
        use = reportedUse(j);
        ttft = Date.now() - g0;
      } else {
        for await (const data of sseData(res)) {
          if (data === '[DONE]') continue;
          const j = JSON.parse(data) as { choices?: { delta?: { content?: string } }[]; usage?: typeof usage };
          const piece = j.choices?.[0]?.delta?.content;
          if (piece) {
            if (!ttft) ttft = Date.now() - g0;
            text += piece;
            onText(piece);
            streamed++; // llama-server streams a token per event: counted now, for live tokens/s
            this.events.emit('generating', { model: slot.model, tokens: 1 });
          }
          if (j.usage) usage = j.usage;
          if ((j as { timings?: unknown }).timings || j.usage) use = { ...use, ...Object.fromEntries(Object.entries(reportedUse(j)).filter(([, v]) => v !== undefined)) };
        }
      }
      if (usage.completion_tokens > 0) this.events.emit('generation', { model: slot.model, ttftMs: ttft, completionTokens: usage.completion_tokens, genMs: Date.now() - g0, streamedTokens: streamed });
      let session: SessionOutcome | undefined;
      if (turn) {
        const r = await this.sessions.finish(turn, { added, answer: text, params: i.params, use, port: slot.port, slot: slot.slot, signal: slot.signal });
        session = { id: turn.id, cache: r.status, restoredTokens: turn.restoredTokens, cachedTokens: r.cachedTokens, restoreMs: turn.restoreMs, saved: r.saved, note: r.note };
      }
      return {
        text,
        promptTokens: usage.prompt_tokens,
        completionTokens: usage.completion_tokens,
        tokensUsed: usage.prompt_tokens + usage.completion_tokens,
        latencyMs: Date.now() - t0,
        modelUsed: slot.model,
        adapters: slot.adapters,
        session,
      };
    });
    // One turn at a time per session: a second waits (without holding a slot) for the first to be saved.
    return i.sessionId ? this.sessions.exclusive(i.sessionId, run) : run();
  }

  /** What a session's saved state is keyed on for the model in `slot` (sessions.ts). */
  sessionTarget(slot: Slot): { model: string; modelPath: string; adapters: string; ctxSize: number } {
    const p = this.supervisor.profileOf(slot.model);
    if (!p) throw new RuntimeError(Code.UNAVAILABLE, `model ${slot.model} is not loaded`);
    return { model: slot.model, modelPath: p.path, adapters: adapterSetKey(slot.adapters), ctxSize: p.ctxSize };
  }

  /** ListSessions. */
  async listSessions(): Promise<SessionInfo[]> {
    return this.sessions.list();
  }

  /** DeleteSession: NOT_FOUND when there is none. */
  async deleteSession(id: string): Promise<void> {
    checkSessionId(id);
    if (!(await this.sessions.delete(id))) throw new RuntimeError(Code.NOT_FOUND, `no saved session ${id}`);
  }

  /** A saved session's record, or NOT_FOUND. */
  private async sessionRecord(id: string) {
    checkSessionId(id);
    this.sessions.need();
    const r = await this.sessions.find(id);
    if (!r) throw new RuntimeError(Code.NOT_FOUND, `no saved session ${id}`);
    return r;
  }

  /**
   * RestoreSession: loads the session's model (if needed) and restores its saved state into a free
   * slot now, checking it as a turn would (key, size, sha256, llama-server's acceptance); a state
   * that fails a check is discarded and the answer says why.
   */
  async restoreSession(id: string, cancel?: AbortSignal): Promise<{ info: SessionInfo; outcome: SessionOutcome }> {
    const r = await this.sessionRecord(id);
    return this.sessions.exclusive(id, () =>
      this.withSlot({ model: r.model, level: '', priority: 'default', deadline: 0 }, cancel, async (slot) => {
        const turn = await this.sessions.begin({ ...this.sessionTarget(slot), id, port: slot.port, slot: slot.slot, signal: slot.signal });
        const cache: CacheOutcome = turn.restoredTokens > 0 ? 'hit' : turn.status;
        const now = (await this.sessions.find(id)) ?? r;
        return { info: this.sessions.info(now), outcome: { id, cache, restoredTokens: turn.restoredTokens, cachedTokens: 0, restoreMs: turn.restoreMs, saved: !!now.kv, note: turn.note } };
      }),
    );
  }

  /**
   * SaveSession: states are saved after every answer; this saves one that is not there (an earlier
   * save failed, it was discarded or removed by the size cap) by evaluating the conversation again.
   */
  async saveSession(id: string, cancel?: AbortSignal): Promise<{ info: SessionInfo; outcome: SessionOutcome }> {
    const r = await this.sessionRecord(id);
    return this.sessions.exclusive(id, () =>
      this.withSlot({ model: r.model, level: '', priority: 'default', deadline: 0 }, cancel, async (slot) => {
        const target = this.sessionTarget(slot);
        const key = { modelSha256: await this.sessions.modelSha256(target.modelPath), adapters: target.adapters, ctxSize: target.ctxSize };
        const checked = r.kv && r.key.modelSha256 === key.modelSha256 && r.key.ctxSize === key.ctxSize ? await this.sessions.checkState(r) : undefined;
        if (checked?.ok) return { info: this.sessions.info(r), outcome: { id, cache: 'none' as CacheOutcome, restoredTokens: 0, cachedTokens: 0, restoreMs: 0, saved: true, note: 'already saved after its last answer' } };
        // Evaluate the conversation (one token generated: llama-server needs a completion) and save that.
        const body = { messages: r.messages, id_slot: slot.slot, cache_prompt: true, max_tokens: 1, temperature: 0, ...(slot.lora ? { lora: slot.lora } : {}) };
        const res = await postChild(slot.port, '/v1/chat/completions', Buffer.from(JSON.stringify(body)), slot.signal);
        const text = (await readAll(res)).toString('utf8');
        if (res.statusCode !== 200) throw new RuntimeError(Code.INTERNAL, `llama-server answered ${res.statusCode}: ${text.slice(0, 300)}`);
        const use = reportedUse(JSON.parse(text));
        const rec = await this.sessions.saveEvaluated(r, key, { promptTokens: use.promptTokens ?? 0, port: slot.port, slot: slot.slot, signal: slot.signal });
        return { info: this.sessions.info(rec), outcome: { id, cache: 'new' as CacheOutcome, restoredTokens: 0, cachedTokens: 0, restoreMs: 0, saved: true, note: `saved again: ${use.promptTokens ?? 0} prompt tokens evaluated` } };
      }),
    );
  }

  /**
   * Embeddings of texts from the [models.embedding] child (loaded on demand under the same budget
   * and queue as any model): adapter selection by task.
   */
  async embed(texts: string[]): Promise<number[][]> {
    const p = this.router.embeddingProfile();
    if (!p) throw new RuntimeError(Code.FAILED_PRECONDITION, 'no [models.embedding] in the config');
    return this.withSlot({ model: p.name, level: '', priority: 'realtime', deadline: 0 }, undefined, async (slot) => {
      const res = await postChild(slot.port, '/v1/embeddings', Buffer.from(JSON.stringify({ input: texts })), slot.signal);
      const text = (await readAll(res)).toString('utf8');
      if (res.statusCode !== 200) throw new RuntimeError(Code.INTERNAL, `the embedding model ${p.name} answered ${res.statusCode}: ${text.slice(0, 300)}`);
      const j = JSON.parse(text) as { data: { index: number; embedding: number[] }[] };
      const out: number[][] = [];
      for (const d of j.data) out[d.index] = d.embedding;
      if (out.length !== texts.length || out.some((v) => !Array.isArray(v))) throw new RuntimeError(Code.INTERNAL, `the embedding model ${p.name} returned ${j.data.length} embeddings for ${texts.length} texts`);
      return out;
    });
  }

  /**
   * A strategic request (the cloud gateway, cloud.ts): the first provider in order under its budget
   * and rate limit; with every provider unavailable and api.local_fallback set, `local()` answers
   * (marked provider "local"), else RESOURCE_EXHAUSTED / UNAVAILABLE with each provider's reason.
   */
  async strategic(
    r: { messages: ChatMessage[]; params: Record<string, unknown>; priority: PriorityName; deadline: number; only?: string; onStart?: (provider: string, model: string) => void },
    cancel: AbortSignal | undefined,
    onText: ((t: string) => void) | undefined,
    local: () => Promise<InferOutput>,
  ): Promise<InferOutput & { answer?: CloudAnswer }> {
    const mt = r.params.max_tokens;
    if (mt !== undefined && mt !== null && (!Number.isInteger(mt) || (mt as number) < 1)) throw new RuntimeError(Code.INVALID_ARGUMENT, `max_tokens: must be an integer of at least 1 (got ${JSON.stringify(mt)})`);
    const temp = r.params.temperature;
    if (temp !== undefined && temp !== null && (typeof temp !== 'number' || temp < 0 || temp > 2)) throw new RuntimeError(Code.INVALID_ARGUMENT, `temperature: must be a number from 0 to 2 (got ${JSON.stringify(temp)})`);
    try {
      const a = await this.cloud.complete(
        { messages: r.messages, maxTokens: (mt as number | undefined) ?? undefined, temperature: (temp as number | undefined) ?? undefined, priority: r.priority, deadline: r.deadline, only: r.only === 'strategic' ? '' : r.only, onStart: r.onStart },
        cancel,
        onText,
      );
      return { text: a.text, promptTokens: a.promptTokens, completionTokens: a.completionTokens, tokensUsed: a.promptTokens + a.completionTokens, latencyMs: a.latencyMs, modelUsed: a.model, provider: a.provider, costUsd: a.costUsd, answer: a };
    } catch (e) {
      if (!(e instanceof CloudUnavailable) || !this.config.api.local_fallback) throw e;
      this.log(`strategic request served by the local ${this.config.api.local_fallback} model (api.local_fallback): ${e.message}`, 'warn');
      return { ...(await local()), provider: 'local' };
    }
  }

  /**
   * LoadModel: a configured model by name (its fixed launch profile), or any GGUF file in model_dir
   * under a new name. The child's port is always chosen by the runtime.
   */
  async load(name: string, path: string, o: { ctx?: number; gpuLayers?: number; threads?: number; port?: number; memoryLimitBytes?: number }): Promise<ModelInfo> {
    if (!name) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model_name: must not be empty');
    if (o.port) throw new RuntimeError(Code.INVALID_ARGUMENT, `port: the runtime chooses each llama-server's loopback port itself; send 0 (got ${o.port})`);
    const mem = o.memoryLimitBytes ?? 0;
    if (mem < 0 || (mem > 0 && mem < 1024 * 1024)) throw new RuntimeError(Code.INVALID_ARGUMENT, `memory_limit_bytes: 0 (the budgeted footprint + runtime.child_memory_margin) or at least 1 MiB (got ${mem})`);
    const cap = mem ? { memoryMaxBytes: mem } : {};
    for (const { profile } of this.router.configured()) {
      if (profile.name === name) return this.supervisor.load({ ...(await this.adapters.vet(profile)), ...cap }); // configured: its fixed launch profile
    }
    if (!path) throw new RuntimeError(Code.INVALID_ARGUMENT, `model_path: required for "${name}", which is not in the config`);
    if (!path.startsWith(this.config.models.model_dir + '/')) throw new RuntimeError(Code.INVALID_ARGUMENT, `model_path: must be inside ${this.config.models.model_dir}`);
    // Loaded on purpose: it stays until it is unloaded (or evicted under memory pressure).
    return this.supervisor.load({ name, path, level: '', ctxSize: o.ctx || 2048, threads: o.threads || 0, gpuLayers: o.gpuLayers ?? 0, parallel: 2, mmap: true, ...cap });
  }

  /**
   * Reload (`aios runtime reload`, SIGHUP): takes the new config's adapter lists
   * ([[models.<layer>.adapters]]) for the configured layers. A loaded child whose list of adapter
   * files changed is restarted with the new list, after the requests running on it have finished
   * (new ones wait in its queue meanwhile and are served by the new child); a change of description
   * or scale only applies to the next request. Other settings need a restart of the runtime (named
   * in the answer).
   */
  /** Reload from the config file the runtime was started from (Reload RPC, SIGHUP). */
  async reloadFile(): Promise<{ model: string; restarted: boolean; note: string }[]> {
    if (!this.configFile) throw new RuntimeError(Code.FAILED_PRECONDITION, 'this runtime was not started from a config file: nothing to reload');
    let next: RuntimeConfig;
    try {
      next = await readRuntimeConfig(this.configFile);
    } catch (e) {
      throw new RuntimeError(Code.INVALID_ARGUMENT, `reload: ${(e as Error).message}; nothing changed`);
    }
    const r = await this.reload(next);
    for (const x of r) this.log(`reload: ${x.model}: ${x.note}`);
    return r;
  }

  async reload(next: RuntimeConfig): Promise<{ model: string; restarted: boolean; note: string }[]> {
    const out: { model: string; restarted: boolean; note: string }[] = [];
    for (const level of ['operational', 'tactical'] as const) {
      const cur = this.config.models[level];
      const nxt = next.models[level];
      if (!cur || !nxt) continue;
      const name = cur.name.replace(/\.gguf$/, '');
      if (nxt.name !== cur.name) {
        out.push({ model: name, restarted: false, note: `[models.${level}] names another file (${nxt.name}): restart the runtime for that` });
        continue;
      }
      const files = (a: typeof cur.adapters) => JSON.stringify(a.map((x) => [x.name, x.file]));
      const changed = files(cur.adapters) !== files(nxt.adapters);
      cur.adapters = nxt.adapters;
      if (!changed) {
        out.push({ model: name, restarted: false, note: 'adapter files unchanged' });
        continue;
      }
      if (!this.supervisor.has(name) || this.supervisor.failure(name) !== undefined) {
        out.push({ model: name, restarted: false, note: `adapters now ${nxt.adapters.map((a) => a.name).join(', ') || 'none'}; not loaded, applies at its next load` });
        continue;
      }
      this.draining.add(name);
      try {
        const t0 = Date.now();
        while (this.scheduler.runningOf(name) > 0) await new Promise((r) => setTimeout(r, 20));
        this.log(`reload: ${name} drained in ${Date.now() - t0} ms; restarting it with adapters ${nxt.adapters.map((a) => a.name).join(', ') || '(none)'}`);
        await this.supervisor.unload(name, 'reload');
        await this.ensureLoaded(this.router.resolve('', level));
      } finally {
        this.draining.delete(name);
        this.scheduler.pump(name);
      }
      out.push({ model: name, restarted: true, note: `restarted with adapters ${nxt.adapters.map((a) => a.name).join(', ') || 'none'}` });
    }
    if (JSON.stringify(next.models.embedding ?? null) !== JSON.stringify(this.config.models.embedding ?? null)) out.push({ model: 'embedding', restarted: false, note: '[models.embedding] changed: restart the runtime for that' });
    // Everything else is read at start only: say what changed instead of ignoring it quietly.
    const skip = new Set(['models.operational.adapters', 'models.tactical.adapters', 'models.operational.name', 'models.tactical.name', 'models.embedding']);
    const other = changedKeys(this.config, next).filter((k) => !skip.has(k));
    if (other.length) out.push({ model: 'config', restarted: false, note: `changed, read only at start (restart the runtime for them): ${other.join(', ')}` });
    return out;
  }

  /** UnloadModel: requests in flight on it fail (UNAVAILABLE), its queue is dropped. */
  async unload(name: string): Promise<void> {
    if (!name) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model_name: must not be empty');
    await this.supervisor.unload(name, 'request');
  }

  /**
   * PinModel: pin (never evicted, never unloaded for idleness) or unpin a loaded model. Refused
   * (FAILED_PRECONDITION) for a model that is not loaded — pinning does not load — and for unpinning
   * a model the config pins (operational, always_loaded). The pin lasts until the model is unloaded
   * by request or the runtime restarts; a reload's restart keeps it.
   */
  pin(name: string, on: boolean): ModelView {
    if (!name) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model_name: must not be empty');
    this.supervisor.pin(name, on);
    const m = this.models().find((x) => x.name === name);
    if (!m) throw new RuntimeError(Code.INTERNAL, `${name} was ${on ? 'pinned' : 'unpinned'} but is not listed`);
    return m;
  }

  async stop(): Promise<void> {
    this.ready = false;
    await this.supervisor.stopAll();
    this.cloud.close();
  }
}
