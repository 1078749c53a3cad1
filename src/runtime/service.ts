/**
 * The runtime service: the one seam every front end (gRPC in server.ts, HTTP in http.ts, /metrics,
 * `aios ps` through gRPC) goes through. It ties together the router (router.ts: what a request
 * means), the scheduler (scheduler.ts: where a request waits), the supervisor (supervisor.ts: the
 * children, the budget, restarts) and the installer (install.ts). Transport-free.
 */
import { existsSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Code, RuntimeError } from './errors.js';
import type { Launcher, LaunchProfile } from './child.js';
import { LlamaServerLauncher } from './launch.js';
import { Supervisor, type ModelInfo, type SupervisorOptions } from './supervisor.js';
import type { RuntimeConfig } from './config.js';
import { ms } from './defaults.js';
import { RuntimeEvents, type PriorityName, type RequestStatus } from './events.js';
import { Scheduler, type Ticket } from './scheduler.js';
import { estimateFootprint, gpuMemory, mib, ramBudget, type Budget } from './memory.js';
import { Router, type LocalLevel, type Target } from './router.js';
import { Installer, type LoadProgress } from './install.js';
import { resolveParams } from './params.js';
import { postChild, readAll, sseData } from './upstream.js';
import type { Log } from './log.js';
import { catalog, type CatalogEntry } from '../models/catalog.js';
import { parseSize } from '../util/size.js';
import { CloudGateway, CloudUnavailable, type ChatMessage, type CloudAnswer, type GatewayOptions } from './cloud.js';

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
}

/** One of a child's parallel slots, held for the duration of withSlot()'s callback. */
export interface Slot {
  /** Resolved model name. */
  model: string;
  /** llama-server's loopback port. */
  port: number;
  /** Aborts when the client goes away, the deadline passes, or the child dies. */
  signal: AbortSignal;
  /** Milliseconds spent waiting for the slot (queue + load). */
  queuedMs: number;
  /** The tokens to generate and the temperature: the client's, else the model's defaults. */
  maxTokens: number;
  temperature: number;
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
}

/** A model as the front ends list it: its state and memory, and its queue per priority. */
export interface ModelView extends ModelInfo {
  queuedByPriority: Partial<Record<PriorityName, number>>;
}

export interface Health {
  ready: boolean;
  modelsReady: number;
  uptimeMs: number;
  budgetBytes: number;
  usedBytes: number;
  queued: number;
}

export interface ServiceOptions {
  /** How children are started (default: llama-server). Tests pass a fake. */
  launcher?: Launcher;
  /** Passed to the supervisor (tests shorten the children's backoff and polling). */
  supervisor?: Partial<SupervisorOptions>;
  /** The cloud gateway's clock and environment (tests inject a month; credentials). */
  cloud?: Pick<GatewayOptions, 'now' | 'env'>;
}

export class RuntimeService {
  readonly events = new RuntimeEvents();
  readonly startedAt = Date.now();
  readonly budget: Budget;
  readonly router: Router;
  ready = false;
  /** When start() loaded and probed the operational model (ms since the process started). */
  readonly startup = { loadFrom: 0, loadedAt: 0, probedAt: 0 };
  private readonly supervisor: Supervisor;
  private readonly scheduler: Scheduler;
  private readonly installer: Installer;
  /** The strategic layer (cloud.ts); no [api.<name>] table = disabled. */
  readonly cloud: CloudGateway;

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
      const total = gpuMemory(() => {
        try {
          return execFileSync('nvidia-smi', ['--query-gpu=memory.total', '--format=csv,noheader,nounits'], { encoding: 'utf8', timeout: 5000 });
        } catch {
          return undefined;
        }
      });
      if (total) this.budget.vramBytes = Math.floor(total * 0.95);
    }
    this.scheduler = new Scheduler({
      maxQueuePerModel: r.max_queue_per_model,
      maxQueueTotal: r.max_queue_total,
      agingMs: ms(r.queue_aging),
      capacity: (m) => this.supervisor.capacity(m),
    });
    this.supervisor = new Supervisor({
      launcher: o.launcher ?? new LlamaServerLauncher(r.llama_server, (s) => log(s, 'debug')),
      loadTimeoutMs: ms(r.load_timeout),
      healthIntervalMs: ms(r.health_interval),
      maxRestarts: r.max_restarts,
      log,
      budget: this.budget,
      events: this.events,
      queued: (m) => this.scheduler.queued(m),
      onReady: (m) => this.scheduler.pump(m),
      onFailed: (m, err) => this.scheduler.failAll(m, new RuntimeError(Code.FAILED_PRECONDITION, `model ${m} failed: ${err}`)),
      ...o.supervisor,
    });
    this.router = new Router(config, () => this.catalog(), (name) => (this.supervisor.has(name) ? this.supervisor.profileOf(name) : undefined));
    this.installer = new Installer(config.models.model_dir, this.events, log);
    this.cloud = new CloudGateway(config, { log, events: this.events, ...o.cloud });
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
    }
    if (onProgress) {
      const est = await estimateFootprint(p.path, p).catch(() => undefined);
      onProgress({ model: t.name, phase: 'load', bytes: 0, total: est?.ramBytes ?? 0 });
    }
    const loaded = await this.supervisor.load(p);
    onProgress?.({ model: t.name, phase: 'load', bytes: loaded.actualBytes, total: loaded.estimateBytes });
  }

  /** PullModel: installs a catalog model (by id or file name) into model_dir. */
  async pull(id: string, onProgress?: (p: LoadProgress) => void): Promise<{ model: string; path: string; bytes: number }> {
    if (!id) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model: must not be empty');
    const e = this.catalog().find((x) => x.id === id || x.file === id);
    if (!e) throw new RuntimeError(Code.NOT_FOUND, `"${id}" is not in the catalog (${this.catalog().map((x) => x.id).join(', ')})`);
    const path = await this.installer.install(e, onProgress);
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

  /** Every model in memory (or failed), with its queue per priority. */
  models(): ModelView[] {
    const q = this.queueSnapshot();
    return this.supervisor.list().map((m) => ({ ...m, queuedByPriority: Object.fromEntries(q.filter((x) => x.model === m.name && x.depth > 0).map((x) => [x.priority, x.depth])) }));
  }

  health(): Health {
    const mem = this.supervisor.memory();
    return {
      ready: this.ready,
      modelsReady: this.supervisor.list().filter((m) => m.state === 'ready').length,
      uptimeMs: Date.now() - this.startedAt,
      budgetBytes: mem.budgetBytes,
      usedBytes: mem.usedBytes,
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
      // Join the model's priority queue first (full → RESOURCE_EXHAUSTED now), then get the model
      // into memory (download, budget, load) while waiting; a dropped waiter is never dispatched.
      const waiting = this.scheduler.enter(model, req.priority, { deadline, cancel });
      try {
        ticket = await Promise.race([this.ensureLoaded(target, req.onProgress, true).then(() => waiting.granted), waiting.granted]);
      } catch (e) {
        waiting.abort(e as Error);
        throw e;
      }
      const lease = await this.supervisor.lease(model);
      queuedMs = Date.now() - t0;
      const left = deadline - Date.now();
      const signal = AbortSignal.any([lease.signal, AbortSignal.timeout(Math.max(1, left)), ...(cancel ? [cancel] : [])]);
      try {
        const r = await fn({ model, port: lease.port, signal, queuedMs, ...params });
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
    if (i.intelligenceLevel === 'strategic' || (i.model && this.cloud.handles(i.model))) {
      const messages: ChatMessage[] = [...(i.systemPrompt ? [{ role: 'system' as const, content: i.systemPrompt }] : []), { role: 'user', content: i.prompt }];
      return this.strategic({ messages, params: i.params, priority: i.priority ?? 'default', deadline, only: this.cloud.handles(i.model) ? i.model : '' }, cancel, onText, () => this.infer({ ...i, model: '', intelligenceLevel: this.config.api.local_fallback }, cancel, onText, onProgress));
    }
    return this.withSlot({ model: i.model, level: i.intelligenceLevel, priority: i.priority ?? 'default', deadline, params: i.params, onProgress }, cancel, async (slot) => {
      const g0 = Date.now();
      let ttft = 0;
      const messages = [...(i.systemPrompt ? [{ role: 'system', content: i.systemPrompt }] : []), { role: 'user', content: i.prompt }];
      const stream = !!onText;
      const body = JSON.stringify({
        messages,
        max_tokens: slot.maxTokens,
        temperature: slot.temperature,
        stream,
        ...(stream ? { stream_options: { include_usage: true } } : {}),
        ...(i.grammar ? { grammar: i.grammar } : {}),
      });
      const res = await postChild(slot.port, '/v1/chat/completions', Buffer.from(body), slot.signal);
      if (res.statusCode !== 200) {
        const text = (await readAll(res)).toString('utf8');
        throw new RuntimeError(res.statusCode === 400 ? Code.INVALID_ARGUMENT : Code.INTERNAL, `llama-server answered ${res.statusCode}: ${text.slice(0, 300)}`);
      }
      let text = '';
      let usage = { prompt_tokens: 0, completion_tokens: 0 };
      if (!onText) {
        const j = JSON.parse((await readAll(res)).toString('utf8')) as { choices: { message: { content: string } }[]; usage?: typeof usage };
        text = j.choices[0]?.message.content ?? '';
        usage = j.usage ?? usage;
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
          }
          if (j.usage) usage = j.usage;
        }
      }
      if (usage.completion_tokens > 0) this.events.emit('generation', { model: slot.model, ttftMs: ttft, completionTokens: usage.completion_tokens, genMs: Date.now() - g0 });
      return {
        text,
        promptTokens: usage.prompt_tokens,
        completionTokens: usage.completion_tokens,
        tokensUsed: usage.prompt_tokens + usage.completion_tokens,
        latencyMs: Date.now() - t0,
        modelUsed: slot.model,
      };
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
  async load(name: string, path: string, o: { ctx?: number; gpuLayers?: number; threads?: number; port?: number }): Promise<ModelInfo> {
    if (!name) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model_name: must not be empty');
    if (o.port) throw new RuntimeError(Code.INVALID_ARGUMENT, `port: the runtime chooses each llama-server's loopback port itself; send 0 (got ${o.port})`);
    for (const { profile } of this.router.configured()) {
      if (profile.name === name) return this.supervisor.load(profile); // configured: its fixed launch profile
    }
    if (!path) throw new RuntimeError(Code.INVALID_ARGUMENT, `model_path: required for "${name}", which is not in the config`);
    if (!path.startsWith(this.config.models.model_dir + '/')) throw new RuntimeError(Code.INVALID_ARGUMENT, `model_path: must be inside ${this.config.models.model_dir}`);
    // Loaded on purpose: it stays until it is unloaded (or evicted under memory pressure).
    return this.supervisor.load({ name, path, level: '', ctxSize: o.ctx || 2048, threads: o.threads || 0, gpuLayers: o.gpuLayers ?? 0, parallel: 2, mmap: true });
  }

  /** UnloadModel: requests in flight on it fail (UNAVAILABLE), its queue is dropped. */
  async unload(name: string): Promise<void> {
    if (!name) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model_name: must not be empty');
    await this.supervisor.unload(name, 'request');
  }

  async stop(): Promise<void> {
    this.ready = false;
    await this.supervisor.stopAll();
    this.cloud.close();
  }
}
