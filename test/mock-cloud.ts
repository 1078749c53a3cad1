/**
 * Mock cloud providers for the strategic layer's tests, on 127.0.0.1: Anthropic's Messages API
 * (POST /v1/messages, with its SSE event sequence message_start → content_block_start → ping →
 * content_block_delta… → content_block_stop → message_delta (usage) → message_stop, and its usage
 * fields input_tokens / output_tokens / cache_creation_input_tokens / cache_read_input_tokens) and
 * OpenAI's chat completions (POST /v1/chat/completions, SSE chunks ending in a usage chunk with
 * stream_options.include_usage, then [DONE]; prompt_tokens_details.cached_tokens and
 * completion_tokens_details.reasoning_tokens). The real APIs cannot be reached from the test
 * machines (and would spend money): these speak the same wire format to the official clients the
 * runtime uses. Both check the key the way the providers do (Anthropic: x-api-key or Authorization:
 * Bearer, and anthropic-version; OpenAI: Authorization: Bearer).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomUUID } from 'node:crypto';

export interface MockBehaviour {
  /** Answer this HTTP status with the provider's error body instead of a completion (0 = answer). */
  status: number;
  /** Retry-After (seconds) sent with a 429. */
  retryAfter: number;
  /** Milliseconds before the answer starts (a timeout test sets more than the provider's timeout). */
  delayMs: number;
  /** Milliseconds between streamed tokens. */
  tokenDelayMs: number;
  /** Tokens generated (capped by max_tokens). */
  outputTokens: number;
  /** Of the prompt: tokens read from / written to the prompt cache. */
  cacheRead: number;
  cacheWrite: number;
  /** OpenAI: reasoning tokens (billed within completion_tokens). */
  reasoning: number;
}

export interface MockCall {
  api: 'anthropic' | 'openai';
  body: Record<string, unknown>;
  headers: IncomingMessage['headers'];
  status: number;
  /** The whole answer was sent. */
  completed: boolean;
  /** The client closed the connection before the end. */
  aborted: boolean;
  usage?: { input: number; output: number; cacheRead: number; cacheWrite: number; reasoning: number };
}

/** The mock's tokenizer: one token per whitespace-separated word of every message, plus 3 per message (always ≤ UTF-8 bytes + framing). */
export function mockPromptTokens(messages: { content: unknown }[], system?: unknown): number {
  const text = (c: unknown): string => (typeof c === 'string' ? c : Array.isArray(c) ? c.map((p: { text?: string }) => p.text ?? '').join(' ') : '');
  const words = (s: string) => s.split(/\s+/).filter(Boolean).length;
  return messages.reduce((n, m) => n + words(text(m.content)) + 3, system ? words(text(system)) + 3 : 0);
}

export class MockCloud {
  server!: Server;
  port = 0;
  readonly calls: MockCall[] = [];
  b: MockBehaviour = { status: 0, retryAfter: 2, delayMs: 0, tokenDelayMs: 0, outputTokens: 5, cacheRead: 0, cacheWrite: 0, reasoning: 0 };

  constructor(
    readonly api: 'anthropic' | 'openai',
    readonly key: string,
  ) {}

  get url(): string {
    return this.api === 'anthropic' ? `http://127.0.0.1:${this.port}` : `http://127.0.0.1:${this.port}/v1`;
  }

  async start(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res).catch(() => res.destroy()));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as AddressInfo).port;
    return this;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  reset(b: Partial<MockBehaviour> = {}): void {
    this.calls.length = 0;
    this.b = { status: 0, retryAfter: 2, delayMs: 0, tokenDelayMs: 0, outputTokens: 5, cacheRead: 0, cacheWrite: 0, reasoning: 0, ...b };
  }

  private error(res: ServerResponse, status: number, type: string, message: string, headers: Record<string, string> = {}): void {
    const body =
      this.api === 'anthropic'
        ? { type: 'error', error: { type, message }, request_id: `req_${randomUUID().slice(0, 8)}` }
        : { error: { message, type, param: null, code: type === 'authentication_error' ? 'invalid_api_key' : null } };
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify(body));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req as AsyncIterable<Buffer>) chunks.push(c);
    const path = req.url?.split('?')[0];
    const want = this.api === 'anthropic' ? '/v1/messages' : '/v1/chat/completions';
    if (req.method !== 'POST' || path !== want) return this.error(res, 404, 'not_found_error', `no route ${req.method} ${path}`);
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
    const call: MockCall = { api: this.api, body, headers: req.headers, status: 200, completed: false, aborted: false };
    this.calls.push(call);
    res.on('close', () => {
      if (!call.completed) call.aborted = true;
    });
    // Anthropic takes the key as x-api-key or (as @anthropic-ai/sdk 1.x sends it) Authorization: Bearer, with an anthropic-version header.
    const bearer = req.headers.authorization === `Bearer ${this.key}`;
    const keyOk = this.api === 'anthropic' ? (req.headers['x-api-key'] === this.key || bearer) && !!req.headers['anthropic-version'] : bearer;
    if (!keyOk) {
      call.status = 401;
      return this.error(res, 401, 'authentication_error', this.api === 'anthropic' ? 'invalid x-api-key' : 'Incorrect API key provided');
    }
    if (this.b.delayMs) await new Promise((r) => setTimeout(r, this.b.delayMs));
    if (res.destroyed) return;
    if (this.b.status) {
      call.status = this.b.status;
      if (this.b.status === 429) return this.error(res, 429, this.api === 'anthropic' ? 'rate_limit_error' : 'rate_limit_exceeded', 'Number of requests has exceeded your rate limit', { 'retry-after': String(this.b.retryAfter) });
      if (this.b.status === 529) return this.error(res, 529, 'overloaded_error', 'Overloaded');
      return this.error(res, this.b.status, this.b.status >= 500 ? (this.api === 'anthropic' ? 'api_error' : 'server_error') : 'invalid_request_error', 'Internal server error');
    }
    const maxTokens = Number(body.max_tokens ?? body.max_completion_tokens ?? 4096);
    const messages = body.messages as { role: string; content: unknown }[];
    const prompt = mockPromptTokens(messages, body.system);
    const reasoning = this.api === 'openai' ? Math.min(this.b.reasoning, maxTokens) : 0;
    const out = Math.max(0, Math.min(this.b.outputTokens, maxTokens - reasoning));
    const cacheRead = Math.min(this.b.cacheRead, prompt);
    const cacheWrite = Math.min(this.b.cacheWrite, prompt - cacheRead);
    const pieces = Array.from({ length: out }, (_, i) => (i === 0 ? 'tok' : ' tok'));
    const finish = out + reasoning >= maxTokens ? 'max' : 'stop';
    const model = String(body.model);
    const sleep = () => (this.b.tokenDelayMs ? new Promise((r) => setTimeout(r, this.b.tokenDelayMs)) : Promise.resolve());
    const done = () => {
      if (!res.destroyed) {
        call.completed = true;
        call.usage = usage;
      }
    };
    // The provider's usage as it bills it: Anthropic's input_tokens exclude cached input; OpenAI's prompt_tokens include it.
    const usage = this.api === 'anthropic' ? { input: prompt - cacheRead - cacheWrite, output: out, cacheRead, cacheWrite, reasoning: 0 } : { input: prompt - cacheRead, output: out, cacheRead, cacheWrite: 0, reasoning };

    if (this.api === 'anthropic') {
      const id = `msg_${randomUUID().replace(/-/g, '').slice(0, 24)}`;
      const stop = finish === 'max' ? 'max_tokens' : 'end_turn';
      const u = { input_tokens: usage.input, cache_creation_input_tokens: cacheWrite, cache_read_input_tokens: cacheRead, output_tokens: out, service_tier: 'standard' };
      if (!body.stream) {
        res.writeHead(200, { 'content-type': 'application/json', 'request-id': `req_${id}` });
        res.end(JSON.stringify({ id, type: 'message', role: 'assistant', model, content: [{ type: 'text', text: pieces.join('') }], stop_reason: stop, stop_sequence: null, usage: u }));
        return done();
      }
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'request-id': `req_${id}` });
      const ev = (type: string, data: object) => !res.destroyed && res.write(`event: ${type}\ndata: ${JSON.stringify({ type, ...data })}\n\n`);
      ev('message_start', { message: { id, type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { ...u, output_tokens: 1 } } });
      ev('content_block_start', { index: 0, content_block: { type: 'text', text: '' } });
      ev('ping', {});
      for (const p of pieces) {
        await sleep();
        if (res.destroyed) return;
        ev('content_block_delta', { index: 0, delta: { type: 'text_delta', text: p } });
      }
      ev('content_block_stop', { index: 0 });
      ev('message_delta', { delta: { stop_reason: stop, stop_sequence: null }, usage: { output_tokens: out } });
      ev('message_stop', {});
      res.end();
      return done();
    }

    const id = `chatcmpl-${randomUUID().replace(/-/g, '').slice(0, 24)}`;
    const created = Math.floor(Date.now() / 1000);
    const stop = finish === 'max' ? 'length' : 'stop';
    const u = {
      prompt_tokens: prompt,
      completion_tokens: out + reasoning,
      total_tokens: prompt + out + reasoning,
      prompt_tokens_details: { cached_tokens: cacheRead, audio_tokens: 0 },
      completion_tokens_details: { reasoning_tokens: reasoning, audio_tokens: 0, accepted_prediction_tokens: 0, rejected_prediction_tokens: 0 },
    };
    if (!body.stream) {
      res.writeHead(200, { 'content-type': 'application/json', 'x-request-id': id });
      res.end(JSON.stringify({ id, object: 'chat.completion', created, model, choices: [{ index: 0, message: { role: 'assistant', content: pieces.join(''), refusal: null, annotations: [] }, logprobs: null, finish_reason: stop }], usage: u, service_tier: 'default', system_fingerprint: 'fp_mock' }));
      return done();
    }
    const withUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-request-id': id });
    const chunk = (choices: object[], extra: object = {}) =>
      !res.destroyed && res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created, model, service_tier: 'default', system_fingerprint: 'fp_mock', choices, ...(withUsage ? { usage: null } : {}), ...extra })}\n\n`);
    chunk([{ index: 0, delta: { role: 'assistant', content: '', refusal: null }, logprobs: null, finish_reason: null }]);
    for (const p of pieces) {
      await sleep();
      if (res.destroyed) return;
      chunk([{ index: 0, delta: { content: p }, logprobs: null, finish_reason: null }]);
    }
    chunk([{ index: 0, delta: {}, logprobs: null, finish_reason: stop }]);
    if (withUsage) chunk([], { usage: u });
    res.end('data: [DONE]\n\n');
    return done();
  }
}
