/**
 * OpenAI-compatible HTTP front end: /v1/models, /v1/chat/completions, /v1/completions (streaming or
 * not), /metrics (Prometheus text format) and /health. With API keys (runtime.http_keys) every
 * endpoint but /health needs `Authorization: Bearer <key>` (auth.ts decides; a refusal is OpenAI's
 * 401/403 error body, so SDKs raise AuthenticationError / PermissionDeniedError), and over TLS when
 * not loopback (runtime.http_tls). Every completion goes through
 * RuntimeService.withSlot() (the same router and queue as gRPC); the client's body is passed to the
 * child's same endpoint and its answer relayed as it arrives. Imports nothing from the build side.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import { parsePriority, type PriorityName } from './events.js';
import type { RuntimeService, Slot } from './service.js';
import { Metrics } from './metrics.js';
import { LEVELS } from './router.js';
import { postChild, readAll } from './upstream.js';
import { randomUUID } from 'node:crypto';
import { ms } from './defaults.js';
import type { ChatMessage } from './cloud.js';
import { PARAM_RULES } from './params.js';
import { authorizeHttp, httpNeed, peerIp, type AuthGuard, type MetricsAuth } from './auth.js';
import type { KeyStore } from './keys.js';
import { tlsPeer, watchPeers, type TlsMaterial } from './tls.js';
import type { Log } from './log.js';
import { checkSessionId, reportedUse, strategicSessionRefusal, type ChatMsg, type ReportedUse } from './sessions.js';
const MAX_BODY = 32 * 1024 * 1024;
const CODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Code).map(([k, v]) => [v, k.toLowerCase()]));

/** RuntimeError code → HTTP status. */
export function httpStatus(code: number): number {
  switch (code) {
    case Code.INVALID_ARGUMENT:
    case Code.FAILED_PRECONDITION: // 400, not 409: OpenAI SDKs retry 409, and retrying cannot help here
      return 400;
    case Code.NOT_FOUND:
      return 404;
    case Code.RESOURCE_EXHAUSTED:
      return 429;
    case Code.CANCELLED:
      return 499;
    case Code.UNIMPLEMENTED:
      return 501;
    case Code.UNAVAILABLE:
      return 503;
    case Code.DEADLINE_EXCEEDED:
      return 504;
    default:
      return 500;
  }
}

/** OpenAI-style error body. */
export function errorBody(e: RuntimeError): { error: { message: string; type: string; code: string } } {
  const status = httpStatus(e.code);
  const type = status === 429 ? 'rate_limit_error' : status < 500 ? 'invalid_request_error' : 'server_error';
  const code = e.code === Code.NOT_FOUND ? 'model_not_found' : (CODE_NAMES[e.code] ?? 'internal');
  return { error: { message: e.message, type, code } };
}

function sendJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res: ServerResponse, e: RuntimeError): void {
  const retry = (e as { retryAfterS?: number }).retryAfterS;
  sendJson(res, httpStatus(e.code), errorBody(e), e.code === Code.RESOURCE_EXHAUSTED || retry ? { 'retry-after': String(retry ?? 1) } : {});
}

/** A model in /v1/models: OpenAI's fields, then aios's (level, state; adapters and saved sessions where it has any). */
export interface ListedModel {
  id: string;
  object: 'model';
  created: number;
  owned_by: string;
  level: string;
  state: string;
  adapters?: { name: string; description: string; scale: number; loaded: boolean; refused?: string }[];
  sessions?: number;
  session_states?: number;
  session_bytes?: number;
  /** A model split across RPC workers (issue 20): each worker's part, as in ListModels. */
  rpc_workers?: { address: string; bytes: number; planned_bytes: number; available_bytes: number; free_bytes: number }[];
}

/** An OpenAI chat body's messages as the cloud gateway takes them (text only). */
export function chatMessages(v: unknown): ChatMessage[] {
  if (!Array.isArray(v) || !v.length) throw new RuntimeError(Code.INVALID_ARGUMENT, 'messages: must be a non-empty array');
  return v.map((m: { role?: unknown; content?: unknown }, i) => {
    const role = m?.role === 'developer' ? 'system' : m?.role;
    if (role !== 'system' && role !== 'user' && role !== 'assistant') throw new RuntimeError(Code.INVALID_ARGUMENT, `messages[${i}].role: the strategic layer takes system, developer, user and assistant messages (got ${JSON.stringify(m?.role)})`);
    let content: string;
    if (typeof m.content === 'string') content = m.content;
    else if (Array.isArray(m.content) && m.content.every((p: { type?: unknown; text?: unknown }) => p?.type === 'text' && typeof p.text === 'string')) content = m.content.map((p: { text: string }) => p.text).join('');
    else throw new RuntimeError(Code.INVALID_ARGUMENT, `messages[${i}].content: must be a string or text parts`);
    return { role, content };
  });
}

const FINISH: Record<string, string> = { end_turn: 'stop', stop_sequence: 'stop', max_tokens: 'length', tool_use: 'tool_calls', refusal: 'content_filter' };

async function readJson(req: IncomingMessage): Promise<Record<string, unknown>> {
  const parts: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > MAX_BODY) throw new RuntimeError(Code.INVALID_ARGUMENT, `request body larger than ${MAX_BODY} bytes`);
    parts.push(c);
  }
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(parts).toString('utf8'));
  } catch (e) {
    throw new RuntimeError(Code.INVALID_ARGUMENT, `request body is not JSON: ${(e as Error).message}`);
  }
  if (!body || typeof body !== 'object' || Array.isArray(body)) throw new RuntimeError(Code.INVALID_ARGUMENT, 'request body must be a JSON object');
  return body as Record<string, unknown>;
}

/**
 * The body's `adapters` ([{name, scale?}]) and `task` (a string): checked, and taken out of the body
 * (llama-server gets its own `lora` field instead; a client's `lora` is refused: ids are the runtime's).
 */
export function adapterFields(body: Record<string, unknown>): { adapters?: { name: string; scale?: number }[]; task?: string } {
  if ('lora' in body) throw new RuntimeError(Code.INVALID_ARGUMENT, 'lora: not accepted; name adapters with "adapters": [{"name": …, "scale": …}] (the runtime maps them to llama-server\'s ids)');
  const a = body.adapters;
  const t = body.task;
  delete body.adapters;
  delete body.task;
  if (t !== undefined && t !== null && typeof t !== 'string') throw new RuntimeError(Code.INVALID_ARGUMENT, 'task: must be a string');
  if (a === undefined || a === null) return { task: (t as string | null) ?? undefined };
  if (!Array.isArray(a)) throw new RuntimeError(Code.INVALID_ARGUMENT, 'adapters: must be a list of {"name": string, "scale": number}');
  const adapters = a.map((x, i) => {
    if (typeof x === 'string') return { name: x };
    if (!x || typeof x !== 'object' || Array.isArray(x)) throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters[${i}]: must be {"name": string, "scale": number} or a name`);
    const o = x as Record<string, unknown>;
    const extra = Object.keys(o).filter((k) => k !== 'name' && k !== 'scale');
    if (extra.length) throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters[${i}]: unknown field ${extra.map((k) => `"${k}"`).join(', ')} (name, scale)`);
    if (typeof o.name !== 'string') throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters[${i}].name: must be a string`);
    if (o.scale !== undefined && o.scale !== null && typeof o.scale !== 'number') throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters[${i}].scale: must be a number`);
    return { name: o.name, scale: (o.scale as number | null) ?? undefined };
  });
  return { adapters, task: (t as string | null) ?? undefined };
}

/** Marks an error whose answer (llama-server's own status and body) was already sent. */
class Relayed extends RuntimeError {}

/** What the relay learns from a stream without parsing it: first content, content events, the final usage. */
interface Tap {
  firstAt: number;
  events: number;
  /** The last bytes of the answer: its final events carry usage / timings. */
  tail: Buffer;
}

const CONTENT_MARKS = [Buffer.from('"content":"'), Buffer.from('"text":"')];
const QUOTE = 0x22;

/** Counts content-bearing events in a chunk (a non-empty "content" or "text" string) without decoding it. */
function contentEvents(chunk: Buffer): number {
  let n = 0;
  for (const mark of CONTENT_MARKS) {
    for (let i = chunk.indexOf(mark); i >= 0; i = chunk.indexOf(mark, i + mark.length)) {
      if (chunk[i + mark.length] !== QUOTE) n++;
    }
  }
  return n;
}

/** Completion tokens from the usage or timings in the last events of an answer (-1 when absent). */
function usageTokens(tail: string): number {
  for (const part of tail.split(/\n(?:data: ?)?/).reverse()) {
    const t = part.trim().replace(/^data: ?/, '');
    if (!t.startsWith('{') || (!t.includes('"usage"') && !t.includes('"timings"'))) continue;
    try {
      const j = JSON.parse(t) as { usage?: { completion_tokens?: number }; timings?: { predicted_n?: number } };
      const n = j.usage?.completion_tokens ?? j.timings?.predicted_n;
      if (typeof n === 'number') return n;
    } catch {
      /* an event cut at the start of the tail */
    }
  }
  return -1;
}

export interface HttpListening {
  /** An https.Server (typed as http.Server) with TLS. */
  server: Server;
  port: number;
  /** Stop accepting, let requests in flight finish (up to graceMs), then close every connection. */
  close(graceMs?: number): Promise<void>;
}

export interface HttpAuth {
  /** The accepted keys; undefined = no keys (every endpoint open: loopback only). */
  keys?: KeyStore;
  metricsAuth?: MetricsAuth;
  guard?: AuthGuard;
}

export class HttpFront {
  readonly metrics: Metrics;
  constructor(
    private svc: RuntimeService,
    private auth: HttpAuth = {},
  ) {
    this.metrics = new Metrics(svc);
  }

  /** Answers 401/403 (after the peer's backoff delay) and returns false when the request may not go on. */
  private async authorized(req: IncomingMessage, res: ServerResponse, path: string): Promise<boolean> {
    const { keys } = this.auth;
    const need = httpNeed(path, { keys: !!keys, metricsAuth: this.auth.metricsAuth ?? 'api' });
    const header = req.headers.authorization;
    const d = authorizeHttp(path, header, need, (k) => keys!.check(k));
    if (d.ok) return true;
    const wait = this.auth.guard?.failure('http', peerIp(req.socket.remoteAddress), d.reason, `${req.method} ${path}`) ?? 0;
    await this.auth.guard?.delay(wait);
    if (!res.destroyed) sendJson(res, d.status, { error: { message: d.message, type: d.type, code: d.code, param: null } }, d.status === 401 ? { 'www-authenticate': 'Bearer realm="aios-runtime"' } : {});
    return false;
  }

  handle = (req: IncomingMessage, res: ServerResponse): void => {
    this.route(req, res).catch((e) => {
      const err = e instanceof RuntimeError ? e : new RuntimeError(Code.INTERNAL, `internal error: ${(e as Error)?.message ?? String(e)}`);
      if (!res.headersSent && !res.destroyed) sendError(res, err);
      else res.destroy();
    });
  };

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0]!.replace(/\/+$/, '') || '/';
    const method = req.method ?? 'GET';
    if (!(await this.authorized(req, res, path))) return;
    const only = (m: string) => {
      if (method === m || (m === 'GET' && method === 'HEAD')) return true;
      sendJson(res, 405, errorBody(new RuntimeError(Code.INVALID_ARGUMENT, `${path} takes ${m}, not ${method}`)), { allow: m });
      return false;
    };
    if (path === '/v1/chat/completions' || path === '/v1/completions') {
      if (!only('POST')) return;
      return this.completion(req, res, path);
    }
    if (path === '/v1/models' || path.startsWith('/v1/models/')) {
      if (!only('GET')) return;
      const models = await this.models();
      if (path === '/v1/models') return sendJson(res, 200, { object: 'list', data: models });
      const id = decodeURIComponent(path.slice('/v1/models/'.length));
      const m = models.find((x) => x.id === id);
      if (!m) throw new RuntimeError(Code.NOT_FOUND, `unknown model "${id}"`);
      return sendJson(res, 200, m);
    }
    if (path === '/metrics') {
      if (!only('GET')) return;
      const text = await this.metrics.render();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    if (path === '/health') {
      if (!only('GET')) return;
      return sendJson(res, this.svc.ready ? 200 : 503, { status: this.svc.ready ? 'ok' : 'starting' });
    }
    throw new RuntimeError(Code.NOT_FOUND, `no such endpoint: ${method} ${path} (try /v1/models, /v1/chat/completions, /v1/completions, /metrics)`);
  }

  /**
   * Configured models (loaded or not), models loaded by request, and catalog models that are
   * installed or would be installed on first use (runtime.auto_install); nothing is loaded to list them.
   * A local model with LoRA adapters lists them (name, description, scale; loaded / refused once it
   * is loaded), and one with saved sessions their number and the bytes of their KV states.
   */
  async models(): Promise<ListedModel[]> {
    const out = new Map<string, ListedModel>();
    const created = Math.floor(this.svc.startedAt / 1000);
    for (const { level, profile } of this.svc.router.configured()) out.set(profile.name, { id: profile.name, object: 'model', created, owned_by: 'aios', level, state: 'unloaded' });
    for (const m of this.svc.models()) {
      out.set(m.name, {
        id: m.name,
        object: 'model',
        created,
        owned_by: 'aios',
        level: m.level || out.get(m.name)?.level || '',
        state: m.state,
        ...(m.rpcWorkers.length ? { rpc_workers: m.rpcWorkers.map((w) => ({ address: w.address, bytes: w.bytes, planned_bytes: w.plannedBytes, available_bytes: w.availableBytes, free_bytes: w.freeBytes })) } : {}),
      });
    }
    // The strategic layer's cloud models (nothing about their keys).
    for (const p of this.svc.cloud.enabled ? this.svc.cloud.view() : []) {
      if (!out.has(p.model)) out.set(p.model, { id: p.model, object: 'model', created, owned_by: p.name, level: 'strategic', state: p.unavailable ? `unavailable: ${p.unavailable}` : 'cloud' });
    }
    for (const e of this.svc.catalog()) {
      if (out.has(e.id) || [...out.values()].some((m) => m.id === e.file.replace(/\.gguf$/, ''))) continue;
      const installed = existsSync(join(this.svc.config.models.model_dir, e.file));
      if (installed || this.svc.config.runtime.auto_install) out.set(e.id, { id: e.id, object: 'model', created, owned_by: 'aios', level: '', state: installed ? 'unloaded' : 'not installed' });
    }
    const sessions = await this.svc.sessionCounts();
    for (const m of out.values()) {
      if (m.level === 'strategic') continue;
      const adapters = this.svc.adapterViews(m.id);
      if (adapters.length) m.adapters = adapters.map((a) => ({ name: a.name, description: a.description, scale: a.scale, loaded: a.loaded, ...(a.refused ? { refused: a.refused } : {}) }));
      const s = sessions.get(m.id);
      if (s) Object.assign(m, { sessions: s.count, session_states: s.states, session_bytes: s.bytes });
    }
    return [...out.values()];
  }

  private async completion(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    const body = await readJson(req);
    const stream = body.stream === true;
    if (body.model !== undefined && body.model !== null && typeof body.model !== 'string') throw new RuntimeError(Code.INVALID_ARGUMENT, 'model: must be a string');
    const model = (body.model as string | undefined) ?? '';
    let priority: PriorityName;
    try {
      const header = req.headers['x-priority'];
      const p = body.priority ?? (Array.isArray(header) ? header[0] : header);
      if (p !== undefined && typeof p !== 'string') throw new Error('priority must be a string');
      priority = parsePriority(p || undefined);
    } catch (e) {
      throw new RuntimeError(Code.INVALID_ARGUMENT, `priority: ${(e as Error).message}`);
    }
    delete body.priority;
    const { adapters, task } = adapterFields(body);
    // A saved session (sessions.ts): the body's "session", else the X-Session header.
    const sessionHeader = req.headers['x-session'];
    const sessionRaw = body.session ?? (Array.isArray(sessionHeader) ? sessionHeader[0] : sessionHeader);
    delete body.session;
    const sessionId = sessionRaw === undefined || sessionRaw === null || sessionRaw === '' ? '' : checkSessionId(sessionRaw, 'session');
    if (sessionId && path !== '/v1/chat/completions') throw new RuntimeError(Code.INVALID_ARGUMENT, `session: saved sessions are kept for /v1/chat/completions only (got ${path})`);
    // The generation fields the runtime checks (the same rules as gRPC's), by their names in the body.
    const params: Record<string, unknown> = {};
    for (const k of Object.keys(PARAM_RULES)) if (k in body) params[k] = body[k];

    // The client going away (before or during the answer) cancels the request.
    const cancel = new AbortController();
    res.on('close', () => {
      if (!res.writableFinished) cancel.abort();
    });
    const progress = (p: { model: string; phase: 'download' | 'load'; bytes: number; total: number }) => {
      if (!stream || res.destroyed) return;
      if (!res.headersSent) res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      // An SSE comment: shown to clients that read the raw stream, ignored by SDKs' event parsers.
      res.write(`: aios-progress ${JSON.stringify(p)}\n\n`);
    };
    const isLevel = (LEVELS as readonly string[]).includes(model);
    try {
      if (this.svc.cloud.handles(model)) {
        if (path !== '/v1/chat/completions') throw new RuntimeError(Code.INVALID_ARGUMENT, `the strategic layer (model "${model}") is served on /v1/chat/completions`);
        if (sessionId) throw new RuntimeError(Code.FAILED_PRECONDITION, strategicSessionRefusal('session'));
        return await this.cloudChat(body, stream, priority, model, params, res, cancel.signal, path);
      }
      const go = () =>
        this.svc.withSlot(
          { model: isLevel ? '' : model, level: isLevel ? model : '', priority, deadline: 0, params, onProgress: progress, adapters, task },
          cancel.signal,
          (slot) => (sessionId ? this.sessionTurn(slot, sessionId, body, params, stream, res) : this.relay(slot, path, body, stream, res)),
        );
      // One turn at a time per session: a second waits (holding no slot) until the first is saved.
      await (sessionId ? this.svc.sessions.exclusive(sessionId, go) : go());
    } catch (e) {
      if (e instanceof Relayed || res.destroyed) return;
      const err = e instanceof RuntimeError ? e : new RuntimeError(Code.INTERNAL, `internal error: ${(e as Error)?.message ?? String(e)}`);
      if (!res.headersSent) return sendError(res, err);
      // Mid-stream: an error event that OpenAI SDKs raise, then the end of the stream.
      res.end(`data: ${JSON.stringify(errorBody(err))}\n\n`);
    }
  }

  /**
   * A strategic chat completion through the cloud gateway (service.strategic), answered in OpenAI's
   * format (streamed: chat.completion.chunk events, the usage last with stream_options.include_usage);
   * `x-aios-provider` / `x-aios-model` say who answered. A stream's headers go out with its first
   * text, so a provider that fails before it is replaced by the next one unseen.
   */
  private async cloudChat(body: Record<string, unknown>, stream: boolean, priority: PriorityName, model: string, params: Record<string, unknown>, res: ServerResponse, cancel: AbortSignal, path: string): Promise<void> {
    const messages = chatMessages(body.messages);
    const p = { ...params, max_tokens: body.max_completion_tokens ?? params.max_tokens };
    const includeUsage = (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
    const id = `chatcmpl-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    let served = { provider: '', model: '' };
    let opened = false;
    const head = (provider: string, m: string) => {
      served = { provider, model: m };
      if (!res.headersSent) res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-aios-provider': provider, 'x-aios-model': m });
    };
    const chunk = (delta: object, finish: string | null) => `data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: served.model, choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
    const open = () => {
      if (!opened) res.write(chunk({ role: 'assistant', content: '' }, null));
      opened = true;
    };
    const onText = stream
      ? (t: string) => {
          if (res.destroyed) return;
          open();
          res.write(chunk({ content: t }, null));
        }
      : undefined;
    const lf = this.svc.config.api.local_fallback;
    const local = async () => {
      await this.svc.withSlot({ model: '', level: lf, priority, deadline: 0, params }, cancel, (slot) => this.relay(slot, path, body, stream, res, { 'x-aios-provider': 'local', 'x-aios-fallback': 'strategic' }));
      return { text: '', tokensUsed: 0, promptTokens: 0, completionTokens: 0, latencyMs: 0, modelUsed: '', provider: 'local' };
    };
    const out = await this.svc.strategic({ messages, params: p, priority, deadline: Date.now() + ms(this.svc.config.runtime.request_timeout), only: model, onStart: stream ? head : undefined }, cancel, onText, local);
    if (out.provider === 'local' || !out.answer) return;
    const a = out.answer;
    const usage = {
      prompt_tokens: a.promptTokens,
      completion_tokens: a.completionTokens,
      total_tokens: a.promptTokens + a.completionTokens,
      prompt_tokens_details: { cached_tokens: a.tokens.cacheRead },
      completion_tokens_details: { reasoning_tokens: a.tokens.reasoning },
    };
    const finish = FINISH[a.finishReason] ?? a.finishReason;
    const headers = { 'x-aios-provider': a.provider, 'x-aios-model': a.model, 'x-aios-cost-usd': a.costUsd.toFixed(6) };
    if (!stream) {
      return sendJson(res, 200, { id, object: 'chat.completion', created, model: a.model, choices: [{ index: 0, message: { role: 'assistant', content: a.text }, finish_reason: finish }], usage }, headers);
    }
    head(a.provider, a.model);
    open();
    res.write(chunk({}, finish));
    if (includeUsage) res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model: a.model, choices: [], usage })}\n\n`);
    res.end('data: [DONE]\n\n');
  }

  /**
   * A session's turn (sessions.ts): the body's messages are the new turn; the conversation so far
   * goes before them and its KV state is restored into the slot first. The answer is relayed as
   * usual (x-aios-session-state says what was restored: restored | new | discarded | none), then
   * checked (was the restored cache used?) and the turn saved while the slot is still held.
   */
  private async sessionTurn(slot: Slot, id: string, body: Record<string, unknown>, params: Record<string, unknown>, stream: boolean, res: ServerResponse): Promise<void> {
    const msgs = body.messages;
    if (!Array.isArray(msgs) || !msgs.length) throw new RuntimeError(Code.INVALID_ARGUMENT, 'messages: with a session, must be a non-empty list: the new turn (the runtime keeps the conversation)');
    const added: ChatMsg[] = msgs.map((m, i) => {
      const o = (m ?? {}) as { role?: unknown; content?: unknown };
      if (typeof o.role !== 'string' || typeof o.content !== 'string') throw new RuntimeError(Code.INVALID_ARGUMENT, `messages[${i}]: with a session, each message must be {"role": string, "content": string}`);
      return { role: o.role, content: o.content };
    });
    const system = added.find((m) => m.role === 'system')?.content;
    const turn = await this.svc.sessions.begin({ ...this.svc.sessionTarget(slot), id, port: slot.port, slot: slot.slot, signal: slot.signal, systemPrompt: system });
    const fresh = turn.history.length ? added.filter((m) => m.role !== 'system') : added;
    const collected: { text: string; use: ReportedUse } = { text: '', use: {} };
    const state = turn.restoredTokens > 0 ? 'restored' : turn.status;
    await this.relay(slot, '/v1/chat/completions', { ...body, messages: [...turn.history, ...fresh] }, stream, res, { 'x-aios-session': id, 'x-aios-session-state': state, 'x-aios-session-restored-tokens': String(turn.restoredTokens) }, collected);
    await this.svc.sessions.finish(turn, { added: fresh, answer: collected.text, params, use: collected.use, port: slot.port, slot: slot.slot, signal: slot.signal });
  }

  /**
   * One completion on a child's slot: the body (with the model's defaults where the client set
   * none) goes to the same endpoint, and the answer's bytes come back unchanged as they arrive —
   * llama-server already names the model as clients know it (--alias) — so relaying costs no
   * parsing per token; only the final usage is read, from the last bytes.
   */
  private async relay(slot: Slot, path: string, body: Record<string, unknown>, stream: boolean, res: ServerResponse, extra: Record<string, string> = {}, collect?: { text: string; use: ReportedUse }): Promise<void> {
    const payload: Record<string, unknown> = { ...body };
    delete payload.model; // one model per child: llama-server answers with its alias, the name clients use
    if (payload.max_tokens == null && payload.max_completion_tokens == null && payload.n_predict == null) payload.max_tokens = slot.maxTokens;
    if (payload.temperature == null) payload.temperature = slot.temperature;
    if (slot.lora) payload.lora = slot.lora; // the adapters this request applies (adapters.ts)
    // Every request names its slot (the runtime's lease), so a session's restored state is never given to another.
    payload.id_slot = slot.slot;
    const g0 = performance.now();
    const up = await postChild(slot.port, path, Buffer.from(JSON.stringify(payload)), slot.signal);
    const headers: Record<string, string> = { 'x-aios-model': slot.model, 'x-aios-queued-ms': String(slot.queuedMs), ...(slot.lora ? { 'x-aios-adapters': JSON.stringify(slot.adapters) } : {}), ...extra };

    if (up.statusCode !== 200) {
      const text = await readAll(up);
      if (!res.headersSent) {
        res.writeHead(up.statusCode ?? 502, { 'content-type': up.headers['content-type'] ?? 'application/json', ...headers });
        res.end(text);
      } else {
        res.end(`data: ${text.toString('utf8').trim()}\n\n`);
      }
      const code = up.statusCode === 400 ? Code.INVALID_ARGUMENT : up.statusCode === 404 ? Code.NOT_FOUND : up.statusCode === 503 ? Code.UNAVAILABLE : Code.INTERNAL;
      throw new Relayed(code, `llama-server answered ${up.statusCode}: ${text.toString('utf8').slice(0, 300)}`);
    }

    if (!stream) {
      const buf = await readAll(up);
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': buf.length, ...headers });
      res.end(buf);
      if (collect) {
        const j = JSON.parse(buf.toString('utf8')) as { choices?: { message?: { content?: string } }[] };
        collect.text = j.choices?.[0]?.message?.content ?? '';
        collect.use = reportedUse(j);
      }
      const genMs = performance.now() - g0;
      const n = usageTokens(buf.toString('utf8'));
      if (n > 0) this.svc.events.emit('generation', { model: slot.model, ttftMs: genMs, completionTokens: n, genMs });
      return;
    }

    if (!res.headersSent) res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...headers });
    else res.write(`: aios-model ${slot.model}\n\n`);
    const tap: Tap = { firstAt: 0, events: 0, tail: Buffer.alloc(0) };
    const all: Buffer[] = []; // a session's answer, read once it is relayed
    for await (const chunk of up as AsyncIterable<Buffer>) {
      if (res.destroyed) throw new Error('the client went away');
      if (collect) all.push(chunk);
      const ok = res.write(chunk);
      const n = contentEvents(chunk);
      if (n && !tap.firstAt) tap.firstAt = performance.now();
      tap.events += n;
      if (n) this.svc.events.emit('generating', { model: slot.model, tokens: n }); // counted as produced: live tokens/s
      tap.tail = chunk.length >= 4096 ? chunk : Buffer.concat([tap.tail.subarray(Math.max(0, tap.tail.length + chunk.length - 4096)), chunk]);
      if (!ok) await drained(res);
    }
    res.end();
    if (collect) {
      for (const line of Buffer.concat(all).toString('utf8').split('\n')) {
        const data = line.startsWith('data:') ? line.slice(5).trim() : '';
        if (!data || data === '[DONE]') continue;
        const j = JSON.parse(data) as { choices?: { delta?: { content?: string } }[]; timings?: unknown };
        collect.text += j.choices?.[0]?.delta?.content ?? '';
        if (j.timings) collect.use = reportedUse(j);
      }
    }
    const genMs = performance.now() - g0;
    const usage = usageTokens(tap.tail.toString('utf8'));
    const n = usage >= 0 ? usage : tap.events;
    if (n > 0) this.svc.events.emit('generation', { model: slot.model, ttftMs: (tap.firstAt || performance.now()) - g0, completionTokens: n, genMs, streamedTokens: tap.events });
  }
}

/** Waits for the client to take more (backpressure); rejects if it went away. */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', gone);
      resolve();
    };
    const gone = () => {
      res.off('drain', done);
      reject(new Error('the client went away'));
    };
    res.once('drain', done);
    res.once('close', gone);
  });
}

/**
 * Serves the HTTP front end on host:port ("127.0.0.1:8080", "[::1]:0"); over TLS with `tls`, with
 * API keys with `keys` (the daemon refuses an exposed address without them: config.ts's exposureProblems).
 */
export async function serveHttp(svc: RuntimeService, listen: string, _log: Log = () => {}, o: HttpAuth & { tls?: TlsMaterial } = {}): Promise<HttpListening> {
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new RuntimeError(Code.INVALID_ARGUMENT, `runtime.http_listen: expected host:port (got "${listen}")`);
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  const front = new HttpFront(svc, o);
  let server: Server;
  if (o.tls) {
    const https = createHttpsServer({ keepAliveTimeout: 65_000, cert: o.tls.cert, key: o.tls.key, minVersion: 'TLSv1.2', handshakeTimeout: 10_000 }, front.handle);
    // A plain-text client, a failed or timed-out handshake: OpenSSL's reason only.
    watchPeers(https);
    https.on('tlsClientError', (e: NodeJS.ErrnoException, s) => {
      o.guard?.failure('http', tlsPeer(s), 'tls_handshake', (e.code ?? e.message).slice(0, 120), { answered: false });
    });
    // An https.Server has every http.Server method used here (listen, close, closeIdleConnections…).
    server = https as unknown as Server;
  } else server = createServer({ keepAliveTimeout: 65_000 }, front.handle);
  // Connections on which no request has begun yet (not one byte of one; over TLS, after the
  // handshake): a client's spare connection, opened ahead of its next request. Node counts such a
  // connection active, not idle (its headers timeout runs), so closeIdleConnections() leaves it
  // open and server.close() would wait for the grace period; close() ends these itself.
  const fresh = new Set<Socket>();
  server.on(o.tls ? 'secureConnection' : 'connection', (s: Socket) => {
    fresh.add(s);
    s.once('close', () => fresh.delete(s));
  });
  const closeIdle = () => {
    server.closeIdleConnections();
    for (const s of fresh) {
      fresh.delete(s);
      // a byte read: a request has begun (Node tracks it from here, and closes it once idle)
      if (s.bytesRead === 0) s.destroy();
    }
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(m[2]), host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  return {
    server,
    port,
    close: async (graceMs = 10_000) => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Idle connections (kept alive, or with no request yet) close now, the others as soon as their
      // answer is done; what is still open after the grace period is cut.
      const idle = setInterval(closeIdle, 50);
      const t = setTimeout(() => server.closeAllConnections(), graceMs);
      closeIdle();
      await closed;
      clearInterval(idle);
      clearTimeout(t);
    },
  };
}
