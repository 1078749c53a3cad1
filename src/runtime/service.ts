/**
 * The runtime service: config → model manager + router + inference. Transport-free (the gRPC
 * server in server.ts maps it onto the proto), so tests and other front ends share it.
 */
import { join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import { ModelManager, type LaunchProfile, type ModelInfo } from './manager.js';
import { ms, type RuntimeConfig } from './config.js';
import { RuntimeEvents, type PriorityName, type RequestStatus } from './events.js';

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
  onProgress?: (p: { model: string; phase: 'download' | 'load'; bytes: number; total: number }) => void;
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

export class RuntimeService {
  readonly manager: ModelManager;
  readonly events = new RuntimeEvents();
  readonly startedAt = Date.now();
  ready = false;

  constructor(
    readonly config: RuntimeConfig,
    private log: (s: string) => void = () => {},
  ) {
    this.manager = new ModelManager({
      llamaServer: config.runtime.llama_server,
      loadTimeoutMs: ms(config.runtime.load_timeout),
      healthIntervalMs: ms(config.runtime.health_interval),
      maxRestarts: config.runtime.max_restarts,
      log,
    });
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
    };
  }

  /** Start: load the operational model and require it to answer its probe. */
  async start(): Promise<void> {
    const op = this.profile('operational');
    if (!op) throw new RuntimeError(Code.FAILED_PRECONDITION, 'no [models.operational] in the config: the runtime needs an operational model');
    await this.manager.load(op);
    const probe = this.config.models.operational!.probe;
    const t0 = Date.now();
    const out = await this.infer({ model: '', prompt: probe.prompt, systemPrompt: '', maxTokens: 8, temperature: 0, intelligenceLevel: 'operational', grammar: probe.grammar ?? '', timeoutMs: 60_000 });
    if (!new RegExp(probe.expect).test(out.text)) {
      throw new RuntimeError(Code.FAILED_PRECONDITION, `the operational model's probe answer "${out.text}" does not match /${probe.expect}/`);
    }
    this.log(`probe answered "${out.text.trim()}" in ${Date.now() - t0} ms; ready`);
    const tactical = this.profile('tactical');
    this.manager.startHealthLoop(tactical ? { names: () => [tactical.name], idleMs: ms(this.config.models.tactical!.unload_after_idle) } : undefined);
    this.ready = true;
  }

  /** Router: a model name, a level, or "auto"/"" (operational). Strategic is not local. */
  async route(model: string, level: string): Promise<string> {
    if (level && !LEVELS.includes(level)) throw new RuntimeError(Code.INVALID_ARGUMENT, `intelligence_level must be one of ${LEVELS.join(', ')} (got "${level}")`);
    if (model && model !== 'auto') {
      if (this.manager.has(model)) return model;
      for (const lvl of ['operational', 'tactical'] as const) {
        const p = this.profile(lvl);
        if (p && (p.name === model || `${p.name}.gguf` === model || lvl === model)) {
          await this.manager.load(p);
          return p.name;
        }
      }
      throw new RuntimeError(Code.NOT_FOUND, `unknown model "${model}" (configured: ${(['operational', 'tactical'] as const).map((l) => this.profile(l)?.name).filter(Boolean).join(', ')})`);
    }
    const lvl = level || 'operational';
    if (lvl === 'strategic') {
      throw new RuntimeError(Code.FAILED_PRECONDITION, 'intelligence_level "strategic" goes to the cloud gateway, which this runtime does not have yet; no local model is used in its place');
    }
    const p = this.profile(lvl as 'operational' | 'tactical');
    if (!p) throw new RuntimeError(Code.FAILED_PRECONDITION, `no ${lvl} model is configured ([models.${lvl}] in config.toml)`);
    await this.manager.load(p);
    return p.name;
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
    try {
      model = await this.route(req.model, req.level);
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
      code = e instanceof RuntimeError ? e.code : Code.INTERNAL;
      status = code === Code.CANCELLED ? 'cancelled' : code === Code.RESOURCE_EXHAUSTED ? 'rejected' : code === Code.DEADLINE_EXCEEDED ? 'expired' : 'error';
      throw e;
    } finally {
      this.events.emit('request', { model, priority: req.priority, status, code, queuedMs });
    }
  }

  /** Runs one request on a child; `onText` receives streamed pieces. Cancelled by `cancel`. */
  async infer(i: InferInput, cancel?: AbortSignal, onText?: (t: string) => void): Promise<InferOutput> {
    this.validate(i);
    const t0 = Date.now();
    const deadline = t0 + (i.timeoutMs || ms(this.config.runtime.request_timeout));
    return this.withSlot({ model: i.model, level: i.intelligenceLevel, priority: i.priority ?? 'default', deadline }, cancel, async (slot) => {
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
