/**
 * OpenAI-compatible HTTP front end: /v1/models, /v1/chat/completions, /v1/completions (streaming or
 * not), /metrics (Prometheus text format) and /health. Every completion goes through
 * RuntimeService.withSlot() (the same router and queue as gRPC); the client's body is passed to the
 * child's same endpoint and its answer relayed as it arrives. Imports nothing from the build side.
 */
import { createServer, request as httpRequest, Agent, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import { parsePriority, type PriorityName } from './events.js';
import type { RuntimeService, Slot } from './service.js';
import { Metrics } from './metrics.js';

const LEVELS = ['operational', 'tactical', 'strategic'];
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
  sendJson(res, httpStatus(e.code), errorBody(e), e.code === Code.RESOURCE_EXHAUSTED ? { 'retry-after': '1' } : {});
}

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

/** Marks an error whose answer (llama-server's own status and body) was already sent. */
class Relayed extends RuntimeError {}

/** Keep-alive connections to the children (loopback). */
const agent = new Agent({ keepAlive: true, maxSockets: 1024 });

/**
 * POST to a child. A pooled keep-alive connection that llama-server closes just as it is reused
 * fails before the request reaches it: that (a reused socket, no response, not aborted) is retried
 * on a fresh connection, twice at most.
 */
async function postChild(port: number, path: string, payload: Buffer, signal: AbortSignal): Promise<IncomingMessage> {
  for (let attempt = 0; ; attempt++) {
    let reused = false;
    try {
      return await new Promise<IncomingMessage>((resolve, reject) => {
        const r = httpRequest(
          { host: '127.0.0.1', port, path, method: 'POST', agent, signal, headers: { 'content-type': 'application/json', 'content-length': payload.length } },
          resolve,
        );
        r.on('socket', (s) => {
          reused = r.reusedSocket;
          s.setNoDelay(true);
        });
        r.on('error', reject);
        r.end(payload);
      });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code ?? '';
      if (signal.aborted || attempt >= 2 || !reused || !['ECONNRESET', 'EPIPE'].includes(code)) throw e;
    }
  }
}

interface Tap {
  firstAt: number;
  tokens: number;
  usageTokens: number;
}

/** Reads one SSE data payload for the metrics: first content, token count, llama-server's usage/timings. */
function tapEvent(data: string, t: Tap): void {
  if (data === '[DONE]') return;
  let j: { choices?: { delta?: { content?: string | null }; text?: string }[]; usage?: { completion_tokens?: number }; timings?: { predicted_n?: number } };
  try {
    j = JSON.parse(data);
  } catch {
    return;
  }
  const c = j.choices?.[0];
  if (c && (c.delta?.content || c.text)) {
    t.tokens++;
    if (!t.firstAt) t.firstAt = performance.now();
  }
  const n = j.usage?.completion_tokens ?? j.timings?.predicted_n;
  if (typeof n === 'number') t.usageTokens = n;
}

export interface HttpListening {
  server: Server;
  port: number;
  /** Stop accepting, let requests in flight finish (up to graceMs), then close every connection. */
  close(graceMs?: number): Promise<void>;
}

export class HttpFront {
  readonly metrics: Metrics;
  constructor(private svc: RuntimeService) {
    this.metrics = new Metrics(svc);
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
      const models = this.models();
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
   */
  models(): { id: string; object: 'model'; created: number; owned_by: string; level: string; state: string }[] {
    const out = new Map<string, { id: string; object: 'model'; created: number; owned_by: string; level: string; state: string }>();
    const created = Math.floor(this.svc.startedAt / 1000);
    for (const lvl of ['operational', 'tactical'] as const) {
      const p = this.svc.profile(lvl);
      if (p) out.set(p.name, { id: p.name, object: 'model', created, owned_by: 'aios', level: lvl, state: 'unloaded' });
    }
    for (const m of this.svc.manager.list()) out.set(m.name, { id: m.name, object: 'model', created, owned_by: 'aios', level: m.level || out.get(m.name)?.level || '', state: m.state });
    for (const e of this.svc.catalog()) {
      if (out.has(e.id) || [...out.values()].some((m) => m.id === e.file.replace(/\.gguf$/, ''))) continue;
      const installed = existsSync(join(this.svc.config.models.model_dir, e.file));
      if (installed || this.svc.config.runtime.auto_install) out.set(e.id, { id: e.id, object: 'model', created, owned_by: 'aios', level: '', state: installed ? 'unloaded' : 'not installed' });
    }
    return [...out.values()];
  }

  /** Defaults of the configured layer the request was routed to (max_tokens, temperature). */
  private layerDefaults(model: string): { max_tokens?: number; temperature?: number } {
    for (const lvl of ['operational', 'tactical'] as const) {
      const p = this.svc.profile(lvl);
      const l = this.svc.config.models[lvl];
      if (p && l && p.name === model) return { max_tokens: l.max_tokens, temperature: l.temperature };
    }
    return {};
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
    delete body.model;

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
    const isLevel = LEVELS.includes(model);
    try {
      await this.svc.withSlot(
        { model: isLevel ? '' : model, level: isLevel ? model : '', priority, deadline: 0, onProgress: progress },
        cancel.signal,
        (slot) => this.relay(slot, path, body, stream, res),
      );
    } catch (e) {
      if (e instanceof Relayed || res.destroyed) return;
      const err = e instanceof RuntimeError ? e : new RuntimeError(Code.INTERNAL, `internal error: ${(e as Error)?.message ?? String(e)}`);
      if (!res.headersSent) return sendError(res, err);
      // Mid-stream: an error event that OpenAI SDKs raise, then the end of the stream.
      res.end(`data: ${JSON.stringify(errorBody(err))}\n\n`);
    }
  }

  /** One completion on a child's slot: the body goes to the same endpoint, the answer comes back as it arrives. */
  private async relay(slot: Slot, path: string, body: Record<string, unknown>, stream: boolean, res: ServerResponse): Promise<void> {
    const d = this.layerDefaults(slot.model);
    const payload: Record<string, unknown> = { ...body };
    if (d.max_tokens && payload.max_tokens == null && payload.max_completion_tokens == null && payload.n_predict == null) payload.max_tokens = d.max_tokens;
    if (d.temperature !== undefined && payload.temperature == null) payload.temperature = d.temperature;
    const g0 = performance.now();
    const up = await postChild(slot.port, path, Buffer.from(JSON.stringify(payload)), slot.signal);
    // llama-server names the model by its file path; clients get the name they can send back.
    const modelPath = this.svc.manager.list().find((m) => m.name === slot.model)?.path;
    const pathJson = modelPath ? `"model":${JSON.stringify(modelPath)}` : '';
    const nameJson = `"model":${JSON.stringify(slot.model)}`;
    const rename = (s: string) => (pathJson ? s.replaceAll(pathJson, nameJson) : s);
    const headers = { 'x-aios-model': slot.model, 'x-aios-queued-ms': String(slot.queuedMs) };

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

    const tap: Tap = { firstAt: 0, tokens: 0, usageTokens: -1 };
    if (!stream) {
      const buf = await readAll(up);
      const text = rename(buf.toString('utf8'));
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), ...headers });
      res.end(text);
      tapEvent(text, tap);
      const genMs = performance.now() - g0;
      const n = tap.usageTokens >= 0 ? tap.usageTokens : 0;
      if (n > 0) this.svc.events.emit('generation', { model: slot.model, ttftMs: genMs, completionTokens: n, genMs });
      return;
    }

    if (!res.headersSent) res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', ...headers });
    else res.write(`: aios-model ${slot.model}\n\n`);
    let pending = '';
    for await (const chunk of up as AsyncIterable<Buffer>) {
      pending += chunk.toString('utf8');
      // Whole events only (llama-server writes one event at a time, so this holds nothing back).
      const end = pending.lastIndexOf('\n\n');
      if (end < 0) continue;
      const events = pending.slice(0, end + 2);
      pending = pending.slice(end + 2);
      if (res.destroyed) throw new Error('the client went away');
      if (!res.write(rename(events))) await drained(res);
      for (const ev of events.split('\n\n')) {
        for (const line of ev.split('\n')) if (line.startsWith('data:')) tapEvent(line.slice(5).trim(), tap);
      }
    }
    if (pending) res.write(rename(pending));
    res.end();
    const genMs = performance.now() - g0;
    const n = tap.usageTokens >= 0 ? tap.usageTokens : tap.tokens;
    if (n > 0) this.svc.events.emit('generation', { model: slot.model, ttftMs: (tap.firstAt || performance.now()) - g0, completionTokens: n, genMs });
  }
}

async function readAll(s: IncomingMessage): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s as AsyncIterable<Buffer>) parts.push(c);
  return Buffer.concat(parts);
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

/** Serves the HTTP front end on host:port ("127.0.0.1:8080", "[::1]:0"). */
export async function serveHttp(svc: RuntimeService, listen: string): Promise<HttpListening> {
  const m = /^(.*):(\d+)$/.exec(listen);
  if (!m) throw new RuntimeError(Code.INVALID_ARGUMENT, `runtime.http_listen: expected host:port (got "${listen}")`);
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1');
  if (!['127.0.0.1', 'localhost', '::1'].includes(host)) process.stderr.write(`aios-runtime: HTTP API on ${listen}, which is not loopback\n`);
  const front = new HttpFront(svc);
  const server = createServer({ keepAliveTimeout: 65_000 }, front.handle);
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
      // Keep-alive connections close as soon as their answer is done; the rest after the grace period.
      const idle = setInterval(() => server.closeIdleConnections(), 50);
      const t = setTimeout(() => server.closeAllConnections(), graceMs);
      server.closeIdleConnections();
      await closed;
      clearInterval(idle);
      clearTimeout(t);
    },
  };
}
