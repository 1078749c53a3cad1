/**
 * The runtime service: config → model manager + router + inference. Transport-free (the gRPC
 * server in server.ts maps it onto the proto), so tests and other front ends share it.
 */
import { existsSync, mkdirSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Code, RuntimeError } from './errors.js';
import { ModelManager, type LaunchProfile, type ModelInfo } from './manager.js';
import { ms, type RuntimeConfig } from './config.js';
import { RuntimeEvents, type PriorityName, type RequestStatus } from './events.js';
import { Scheduler, type Ticket } from './scheduler.js';
import { estimateFootprint, gpuMemory, mib, ramBudget, type Budget } from './memory.js';
import { catalog, type CatalogEntry } from '../models/catalog.js';
import { fetchModel } from '../models/fetch.js';
import { parseSize } from '../util/size.js';

/** The catalog beside the bundle (in the image: /usr/lib/aios-runtime/catalog.toml), else the repository's. */
export const DEFAULT_CATALOG = existsSync(fileURLToPath(new URL('./catalog.toml', import.meta.url)))
  ? fileURLToPath(new URL('./catalog.toml', import.meta.url))
  : fileURLToPath(new URL('../../models/catalog.toml', import.meta.url));

export type ProgressPhase = 'download' | 'load';
export interface LoadProgress {
  model: string;
  phase: ProgressPhase;
  bytes: number;
  total: number;
}

export interface InferInput {
  model: string;
  prompt: string;
  systemPrompt: string;
  maxTokens: number;
  temperature: number;
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
}

export interface InferOutput {
  text: string;
  tokensUsed: number;
  promptTokens: number;
  completionTokens: number;
  latencyMs: number;
  modelUsed: string;
}

const LEVELS = ['operational', 'tactical', 'strategic'];

/**
 * POST to a child. A pooled keep-alive connection that the server closes at the moment it is
 * reused fails before the request reaches llama-server; such a failure (no response, not aborted)
 * is retried on a fresh connection, twice at most.
 */
async function postWithRetry(url: string, body: string, signal: AbortSignal): Promise<Response> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body, signal });
    } catch (e) {
      if (signal.aborted || attempt >= 2) throw e;
      const code = (e as { cause?: { code?: string } }).cause?.code;
      if (code && !['ECONNRESET', 'UND_ERR_SOCKET', 'EPIPE', 'UND_ERR_CLOSED'].includes(code)) throw e;
    }
  }
}

/** What a request resolved to before anything is loaded: a model name and how to get it into memory. */
interface Target {
  name: string;
  /** Launch profile when the model may still need a load (a configured layer or a catalog model). */
  profile?: LaunchProfile;
  /** The catalog entry that can install the file when it is missing. */
  entry?: CatalogEntry;
}

export class RuntimeService {
  readonly manager: ModelManager;
  readonly events = new RuntimeEvents();
  readonly startedAt = Date.now();
  readonly scheduler: Scheduler;
  readonly budget: Budget;
  ready = false;
  /** Downloads in progress (auto-install or PullModel), shared by every request for the model. */
  private downloads = new Map<string, { done: Promise<void>; listeners: Set<(p: LoadProgress) => void>; bytes: number; total: number }>();

  constructor(
    readonly config: RuntimeConfig,
    private log: (s: string) => void = () => {},
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
      capacity: (m) => this.manager.capacity(m),
    });
    this.manager = new ModelManager({
      llamaServer: r.llama_server,
      loadTimeoutMs: ms(r.load_timeout),
      healthIntervalMs: ms(r.health_interval),
      maxRestarts: r.max_restarts,
      log,
      budget: this.budget,
      events: this.events,
      queued: (m) => this.scheduler.queued(m),
      onReady: (m) => this.scheduler.pump(m),
      onFailed: (m, err) => this.scheduler.failAll(m, new RuntimeError(Code.FAILED_PRECONDITION, `model ${m} failed: ${err}`)),
    });
    this.events.on('unload', ({ model, reason }) => {
      if (reason === 'request' || reason === 'shutdown') this.scheduler.failAll(model, new RuntimeError(Code.UNAVAILABLE, `model ${model} was unloaded while the request was queued`));
    });
    log(`memory budget ${mib(this.budget.ramBytes)} (${this.budget.source})${this.budget.vramBytes ? `, GPU ${mib(this.budget.vramBytes)}` : ''}`);
  }

  /** Launch profile of a configured layer. */
  profile(level: 'operational' | 'tactical'): LaunchProfile | undefined {
    const l = this.config.models[level];
    if (!l) return undefined;
    return {
      name: l.name.replace(/\.gguf$/, ''),
      path: join(this.config.models.model_dir, l.name),
      level,
      ctxSize: l.ctx_size,
      threads: l.threads,
      gpuLayers: l.gpu_layers,
      parallel: l.parallel,
      mmap: l.mmap,
      // The operational model is what the system runs on: never evicted, never unloaded for idleness.
      pinned: level === 'operational',
      idleUnloadMs: level === 'operational' ? 0 : ms(l.unload_after_idle),
    };
  }

  /** The model catalog (runtime.catalog, else the one shipped beside the runtime). */
  catalog(): CatalogEntry[] {
    const file = this.config.runtime.catalog || DEFAULT_CATALOG;
    try {
      return catalog(file);
    } catch (e) {
      this.log(`catalog ${file}: ${(e as Error).message.split('\n')[0]}`);
      return [];
    }
  }

  /** Launch profile of a catalog model (served by name, like one loaded with LoadModel). */
  private catalogProfile(e: CatalogEntry): LaunchProfile {
    const layer = this.config.models[e.level];
    return {
      name: e.id,
      path: join(this.config.models.model_dir, e.file),
      level: '',
      ctxSize: Math.min(e.context_length, layer?.ctx_size ?? 2048),
      threads: layer?.threads ?? 0,
      gpuLayers: layer?.gpu_layers ?? 0,
      parallel: layer?.parallel ?? 2,
      mmap: layer?.mmap ?? true,
      idleUnloadMs: ms(this.config.runtime.unload_after_idle),
    };
  }

  /** Start: load the operational model and require it to answer its probe. */
  async start(): Promise<void> {
    const op = this.profile('operational');
    if (!op) throw new RuntimeError(Code.FAILED_PRECONDITION, 'no [models.operational] in the config: the runtime needs an operational model');
    await this.ensureLoaded({ name: op.name, profile: op, entry: this.catalog().find((e) => e.file === this.config.models.operational!.name) });
    const probe = this.config.models.operational!.probe;
    const t0 = Date.now();
    const out = await this.infer({ model: '', prompt: probe.prompt, systemPrompt: '', maxTokens: 8, temperature: 0, intelligenceLevel: 'operational', grammar: probe.grammar ?? '', timeoutMs: 60_000, priority: 'system' });
    if (!new RegExp(probe.expect).test(out.text)) {
      throw new RuntimeError(Code.FAILED_PRECONDITION, `the operational model's probe answer "${out.text}" does not match /${probe.expect}/`);
    }
    this.log(`probe answered "${out.text.trim()}" in ${Date.now() - t0} ms; ready`);
    this.manager.startHealthLoop();
    this.ready = true;
  }

  /**
   * Router, without loading anything: a model name (loaded, configured, or in the catalog), a level,
   * or "auto"/"" (operational). Strategic is not local.
   */
  resolve(model: string, level: string): Target {
    if (level && !LEVELS.includes(level)) throw new RuntimeError(Code.INVALID_ARGUMENT, `intelligence_level must be one of ${LEVELS.join(', ')} (got "${level}")`);
    if (model && model !== 'auto') {
      for (const lvl of ['operational', 'tactical'] as const) {
        const p = this.profile(lvl);
        if (p && (p.name === model || `${p.name}.gguf` === model || lvl === model)) return { name: p.name, profile: p, entry: this.catalog().find((e) => e.file === this.config.models[lvl]!.name) };
      }
      if (this.manager.has(model)) return { name: model };
      const e = this.catalog().find((x) => x.id === model || x.file === model);
      if (e) return { name: e.id, profile: this.catalogProfile(e), entry: e };
      throw new RuntimeError(Code.NOT_FOUND, `unknown model "${model}" (configured: ${(['operational', 'tactical'] as const).map((l) => this.profile(l)?.name).filter(Boolean).join(', ')}; or a catalog id)`);
    }
    const lvl = level || 'operational';
    if (lvl === 'strategic') {
      throw new RuntimeError(Code.FAILED_PRECONDITION, 'intelligence_level "strategic" goes to the cloud gateway, which this runtime does not have yet; no local model is used in its place');
    }
    const p = this.profile(lvl as 'operational' | 'tactical');
    if (!p) throw new RuntimeError(Code.FAILED_PRECONDITION, `no ${lvl} model is configured ([models.${lvl}] in config.toml)`);
    return { name: p.name, profile: p, entry: this.catalog().find((e) => e.file === this.config.models[lvl as 'operational' | 'tactical']!.name) };
  }

  /** Router as before: resolves and makes sure the model is loaded; returns its name. */
  async route(model: string, level: string): Promise<string> {
    const t = this.resolve(model, level);
    await this.ensureLoaded(t);
    return t.name;
  }

  /**
   * Gets a model into memory: downloads it first when its file is missing and it is in the catalog
   * (runtime.auto_install), then loads it under the memory budget (the manager shares concurrent loads).
   */
  async ensureLoaded(t: Target, onProgress?: (p: LoadProgress) => void): Promise<void> {
    if (!t.profile) {
      if (this.manager.capacity(t.name) > 0) return;
      const p = this.manager.profileOf(t.name);
      if (!p) throw new RuntimeError(Code.NOT_FOUND, `model ${t.name} is not loaded`);
      await this.manager.load(p);
      return;
    }
    const p = t.profile;
    if (this.manager.capacity(t.name) > 0) return;
    if (!existsSync(p.path)) {
      if (!t.entry) throw new RuntimeError(Code.NOT_FOUND, `model file ${p.path} does not exist (and no catalog entry has that file)`);
      if (!this.config.runtime.auto_install) {
        throw new RuntimeError(Code.FAILED_PRECONDITION, `model ${t.name} is not installed (${p.path}); install it with \`aios runtime pull ${t.entry.id}\`, or set runtime.auto_install = true`);
      }
      await this.install(t.entry, onProgress);
    }
    if (onProgress) {
      const est = await estimateFootprint(p.path, p).catch(() => undefined);
      onProgress({ model: t.name, phase: 'load', bytes: 0, total: est?.ramBytes ?? 0 });
    }
    const loaded = await this.manager.load(p);
    onProgress?.({ model: t.name, phase: 'load', bytes: loaded.actualBytes, total: loaded.estimateBytes });
  }

  /**
   * Downloads a catalog model into model_dir (resumable, sha256- and GGUF-checked by fetchModel);
   * concurrent calls for the same model share one download and all see its progress.
   */
  async install(e: CatalogEntry, onProgress?: (p: LoadProgress) => void): Promise<void> {
    if (!e.sha256) throw new RuntimeError(Code.FAILED_PRECONDITION, `catalog entry ${e.id} has no sha256; it cannot be installed unchecked`);
    let d = this.downloads.get(e.id);
    if (!d) {
      const entry = { done: Promise.resolve(), listeners: new Set<(p: LoadProgress) => void>(), bytes: 0, total: e.size };
      d = entry;
      this.downloads.set(e.id, entry);
      const emit = (bytes: number, total: number, done: boolean) => {
        entry.bytes = bytes;
        entry.total = total;
        this.events.emit('download', { model: e.id, bytes, total, done });
        for (const l of entry.listeners) l({ model: e.id, phase: 'download', bytes, total });
      };
      entry.done = (async () => {
        const dir = this.config.models.model_dir;
        mkdirSync(dir, { recursive: true });
        this.log(`installing ${e.id} from ${e.url}`);
        emit(0, e.size, false);
        try {
          const r = await fetchModel({ url: e.url, dest: join(dir, e.file), sha256: e.sha256, size: e.size || undefined, retries: 2, backoffMs: 500, onProgress: (pr) => emit(pr.bytes, pr.total ?? e.size, false) });
          emit(r.bytes, r.bytes, true);
          this.log(`installed ${e.id} (${mib(r.bytes)}${r.resumedFrom ? `, resumed from ${mib(r.resumedFrom)}` : ''})`);
        } catch (err) {
          this.events.emit('download', { model: e.id, bytes: entry.bytes, total: entry.total, done: true });
          const msg = (err as Error).message;
          // A file that arrived but is wrong (checksum, not GGUF) will not get better by retrying; a network failure may.
          throw new RuntimeError(/checksum mismatch|not a valid GGUF|is required/.test(msg) ? Code.FAILED_PRECONDITION : Code.UNAVAILABLE, `auto-install of ${e.id} failed: ${msg}`);
        }
      })().finally(() => this.downloads.delete(e.id));
    }
    if (onProgress) {
      d.listeners.add(onProgress);
      if (d.bytes) onProgress({ model: e.id, phase: 'download', bytes: d.bytes, total: d.total });
    }
    try {
      await d.done;
    } finally {
      if (onProgress) d.listeners.delete(onProgress);
    }
  }

  /** Downloads in progress: model, bytes so far, total. */
  installing(): { model: string; bytes: number; total: number }[] {
    return [...this.downloads.entries()].map(([model, d]) => ({ model, bytes: d.bytes, total: d.total }));
  }

  /** Waiting requests per model per priority, every priority of every loaded or queued model (0 included). */
  queueSnapshot(): { model: string; priority: PriorityName; depth: number }[] {
    return this.scheduler.snapshot(this.manager.list().map((m) => m.name));
  }

  private validate(i: InferInput): void {
    if (!i.prompt) throw new RuntimeError(Code.INVALID_ARGUMENT, 'prompt: must not be empty');
    if (i.maxTokens < 0 || i.maxTokens > 32768) throw new RuntimeError(Code.INVALID_ARGUMENT, 'max_tokens: must be between 0 (default) and 32768');
    if (!(i.temperature >= 0 && i.temperature <= 2)) throw new RuntimeError(Code.INVALID_ARGUMENT, 'temperature: must be between 0 and 2');
    if (i.timeoutMs < 0) throw new RuntimeError(Code.INVALID_ARGUMENT, 'timeout_ms: must not be negative');
  }

  private body(i: InferInput, stream: boolean): string {
    const messages = [...(i.systemPrompt ? [{ role: 'system', content: i.systemPrompt }] : []), { role: 'user', content: i.prompt }];
    return JSON.stringify({
      messages,
      max_tokens: i.maxTokens || 256,
      temperature: i.temperature,
      stream,
      ...(stream ? { stream_options: { include_usage: true } } : {}),
      ...(i.grammar ? { grammar: i.grammar } : {}),
    });
  }

  /**
   * The one way a request reaches a child, for every front end (gRPC Infer/StreamInfer, HTTP):
   * route the model, wait for a slot, run `fn` with it, release it, and report the request once.
   * `cancel` is the client going away.
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
      const target = this.resolve(req.model, req.level);
      model = target.name;
      // Join the model's priority queue first (full → RESOURCE_EXHAUSTED now), then get the model
      // into memory (download, budget, load) while waiting; a dropped waiter is never dispatched.
      const waiting = this.scheduler.enter(model, req.priority, { deadline, cancel });
      try {
        ticket = await Promise.race([this.ensureLoaded(target, req.onProgress).then(() => waiting.granted), waiting.granted]);
      } catch (e) {
        waiting.abort(e as Error);
        throw e;
      }
      const lease = await this.manager.acquire(model, cancel);
      queuedMs = Date.now() - t0;
      const left = deadline - Date.now();
      const signal = AbortSignal.any([lease.signal, AbortSignal.timeout(Math.max(1, left)), ...(cancel ? [cancel] : [])]);
      try {
        const r = await fn({ model, port: lease.port, signal, queuedMs });
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

  /** Runs one request on a child; `onText` receives streamed pieces. Cancelled by `cancel`. */
  async infer(i: InferInput, cancel?: AbortSignal, onText?: (t: string) => void, onProgress?: SlotRequest['onProgress']): Promise<InferOutput> {
    this.validate(i);
    const t0 = Date.now();
    const deadline = t0 + (i.timeoutMs || ms(this.config.runtime.request_timeout));
    return this.withSlot({ model: i.model, level: i.intelligenceLevel, priority: i.priority ?? 'default', deadline, onProgress }, cancel, async (slot) => {
      const name = slot.model;
      const g0 = Date.now();
      let ttft = 0;
      const res = await postWithRetry(`http://127.0.0.1:${slot.port}/v1/chat/completions`, this.body(i, !!onText), slot.signal);
      if (!res.ok) {
        const text = await res.text();
        throw new RuntimeError(res.status === 400 ? Code.INVALID_ARGUMENT : Code.INTERNAL, `llama-server answered ${res.status}: ${text.slice(0, 300)}`);
      }
      let text = '';
      let usage = { prompt_tokens: 0, completion_tokens: 0 };
      if (!onText) {
        const j = (await res.json()) as { choices: { message: { content: string } }[]; usage?: typeof usage };
        text = j.choices[0]?.message.content ?? '';
        usage = j.usage ?? usage;
        ttft = Date.now() - g0;
      } else {
        let buf = '';
        for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
          buf += Buffer.from(chunk).toString('utf8');
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) {
            const line = buf.slice(0, nl).trim();
            buf = buf.slice(nl + 1);
            if (!line.startsWith('data:')) continue;
            const data = line.slice(5).trim();
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
      }
      if (usage.completion_tokens > 0) this.events.emit('generation', { model: name, ttftMs: ttft, completionTokens: usage.completion_tokens, genMs: Date.now() - g0 });
      return {
        text,
        promptTokens: usage.prompt_tokens,
        completionTokens: usage.completion_tokens,
        tokensUsed: usage.prompt_tokens + usage.completion_tokens,
        latencyMs: Date.now() - t0,
        modelUsed: name,
      };
    });
  }

  async load(name: string, path: string, o: { ctx?: number; gpuLayers?: number; threads?: number }): Promise<ModelInfo> {
    if (!name) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model_name: must not be empty');
    for (const lvl of ['operational', 'tactical'] as const) {
      const p = this.profile(lvl);
      if (p && p.name === name) return this.manager.load(p); // configured: its fixed launch profile
    }
    if (!path) throw new RuntimeError(Code.INVALID_ARGUMENT, `model_path: required for "${name}", which is not in the config`);
    if (!path.startsWith(this.config.models.model_dir + '/')) throw new RuntimeError(Code.INVALID_ARGUMENT, `model_path: must be inside ${this.config.models.model_dir}`);
    return this.manager.load({ name, path, level: '', ctxSize: o.ctx || 2048, threads: o.threads || 0, gpuLayers: o.gpuLayers ?? 0, parallel: 2, mmap: true });
  }

  async stop(): Promise<void> {
    this.ready = false;
    await this.manager.stopAll();
  }
}
