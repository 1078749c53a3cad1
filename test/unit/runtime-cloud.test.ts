/**
 * The strategic layer (src/runtime/cloud.ts) through the daemon's front ends (real gRPC client, the
 * official `openai` client on HTTP) over fake llama-server children, against mock Anthropic and
 * OpenAI servers on 127.0.0.1 (test/mock-cloud.ts; the real APIs cannot be reached from here):
 * both providers streamed and not, fallback, the budget under 50 concurrent requests, month
 * rollover, rate limits by priority, bad configs, and no key anywhere in what the runtime says.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import OpenAI from 'openai';
import { RuntimeConfigSchema, type RuntimeConfig } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { connect, unary, type RuntimeClient } from '../../src/runtime/client.js';
import { Code } from '../../src/runtime/errors.js';
import { RateGate } from '../../src/runtime/cloud.js';
import { costOf, promptTokenBound, tablePrices, worstCase } from '../../src/runtime/prices.js';
import { spendTable } from '../../src/cli/runtime.js';
import { FakeLauncher } from '../fake-child.js';
import { writeTestGguf } from '../gguf-writer.js';
import { cli, tmp } from '../helpers.js';
import { MockCloud } from '../mock-cloud.js';

const dir = tmp('aios-cloud-');
writeTestGguf(join(dir, 'op.gguf'));
const KEY_A = `sk-ant-api03-TESTKEY${randomBytes(12).toString('hex')}`;
const KEY_O = `sk-proj-TESTKEY${randomBytes(12).toString('hex')}`;
const creds = join(dir, 'credentials');
mkdirSync(creds);
writeFileSync(join(creds, 'claude'), KEY_A + '\n', { mode: 0o600 });
writeFileSync(join(creds, 'openai'), KEY_O, { mode: 0o600 });
const env = { CREDENTIALS_DIRECTORY: creds };
const SONNET = 'claude-sonnet-4-5-20250929';

const anthropic = new MockCloud('anthropic', KEY_A);
const openaiMock = new MockCloud('openai', KEY_O);
beforeAll(async () => {
  await anthropic.start();
  await openaiMock.start();
});
afterAll(async () => {
  await anthropic.stop();
  await openaiMock.stop();
});

let ledgers = 0;
function config(api: Record<string, unknown> = {}, o: { claude?: object; openai?: object; runtime?: object; only?: 'claude' | 'openai' } = {}): RuntimeConfig {
  const claude = { provider: 'anthropic', model: SONNET, base_url: anthropic.url, monthly_budget_usd: 100, max_tokens: 64, timeout: '2s', ...o.claude };
  const openai = { provider: 'openai', model: 'gpt-4o', base_url: openaiMock.url, monthly_budget_usd: 50, fallback_only: true, max_tokens: 64, timeout: '2s', ...o.openai };
  return RuntimeConfigSchema.parse({
    runtime: { llama_server: '/nonexistent', socket: '', listen: '127.0.0.1:0', http_listen: '127.0.0.1:0', health_interval: '1s', request_timeout: '10s', ...o.runtime },
    models: { model_dir: dir, operational: { name: 'op.gguf', ctx_size: 256, max_tokens: 16 } },
    api: { ledger_dir: join(dir, `ledger-${++ledgers}`), ...(o.only !== 'openai' ? { claude } : {}), ...(o.only !== 'claude' ? { openai } : {}), ...api },
  });
}

interface Running {
  d: Daemon;
  grpc: RuntimeClient;
  http: string;
  openai: OpenAI;
  log: string[];
  launcher: FakeLauncher;
}
let running: Running[] = [];
let clock: number | undefined;
async function daemon(c: RuntimeConfig): Promise<Running> {
  const log: string[] = [];
  const launcher = new FakeLauncher();
  const d = await startDaemon(c, { log: (s) => log.push(s), service: { launcher, supervisor: { child: { backoffMs: () => 1, pollMs: 5 } }, cloud: { env, now: () => clock ?? Date.now() } } });
  const http = `http://127.0.0.1:${d.http!.port}`;
  const r = { d, grpc: connect(`127.0.0.1:${d.listening.tcpPort}`), http, openai: new OpenAI({ baseURL: `${http}/v1`, apiKey: 'unused', maxRetries: 0 }), log, launcher };
  running.push(r);
  return r;
}
afterEach(async () => {
  for (const r of running) {
    r.grpc?.close();
    await r.d.stop();
  }
  running = [];
  clock = undefined;
  anthropic.reset();
  openaiMock.reset();
});

const grpcFailure = (p: Promise<unknown>) => p.then(() => undefined, (e: grpc.ServiceError) => e);
function stream(c: RuntimeClient, req: object, o: { cancelAfter?: number } = {}): Promise<{ text: string; last?: Record<string, unknown>; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const s = c.StreamInfer(req);
    let text = '';
    let pieces = 0;
    let last: Record<string, unknown> | undefined;
    s.on('data', (d: Record<string, unknown>) => {
      if (d.text) {
        text += d.text as string;
        if (o.cancelAfter && ++pieces === o.cancelAfter) s.cancel();
      }
      if (d.done) last = d;
    });
    s.on('error', (error: grpc.ServiceError) => resolve({ text, last, error }));
    s.on('end', () => resolve({ text, last }));
  });
}
const ledgerLines = (c: RuntimeConfig) =>
  readdirSync(c.api.ledger_dir)
    .flatMap((f) => readFileSync(join(c.api.ledger_dir, f), 'utf8').split('\n'))
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record<string, any>);

describe('strategic requests: each provider, streamed and not, gRPC and HTTP', () => {
  it('gRPC Infer and StreamInfer go to the first provider (Anthropic Messages API), marked with provider and model; the system prompt is Anthropic\'s system', async () => {
    const c = config();
    const s = await daemon(c);
    const r = await unary(s.grpc, 'Infer', { prompt: 'plan the week', system_prompt: 'be brief', intelligence_level: 'strategic', max_tokens: 20 });
    expect(r).toMatchObject({ text: 'tok tok tok tok tok', model_used: SONNET, provider: 'claude', completion_tokens: 5 });
    expect(r.cost_usd).toBeGreaterThan(0);
    expect(anthropic.calls[0]!.body).toMatchObject({ model: SONNET, max_tokens: 20, system: 'be brief', messages: [{ role: 'user', content: 'plan the week' }] });
    expect(anthropic.calls[0]!.headers['x-api-key'] ?? anthropic.calls[0]!.headers.authorization?.replace(/^Bearer /, '')).toBe(KEY_A);
    const st = await stream(s.grpc, { prompt: 'plan the week', intelligence_level: 'strategic' });
    expect(st.error).toBeUndefined();
    expect(st.text).toBe('tok tok tok tok tok');
    expect(st.last).toMatchObject({ done: true, provider: 'claude', model_used: SONNET });
    expect(anthropic.calls[1]!.body).toMatchObject({ stream: true, max_tokens: 64 });
    expect(openaiMock.calls).toHaveLength(0);
    // Settled at the real cost: the mock's usage at the table's prices.
    const settles = ledgerLines(c).filter((l) => l.kind === 'settle');
    expect(settles).toHaveLength(2);
    const p = tablePrices(SONNET)!;
    settles.forEach((l, i) => expect(l.cost_usd).toBeCloseTo(costOf(anthropic.calls[i]!.usage!, p), 12));
  });

  it('HTTP with the official openai client: model "strategic", not streamed and streamed with include_usage; x-aios-provider / x-aios-model say who answered', async () => {
    const s = await daemon(config());
    const { data, response } = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hello there' }], max_tokens: 10 }).withResponse();
    expect(data.model).toBe(SONNET);
    expect(data.choices[0]!.message.content).toBe('tok tok tok tok tok');
    expect(data.choices[0]!.finish_reason).toBe('stop');
    expect(data.usage).toMatchObject({ completion_tokens: 5, prompt_tokens: anthropic.calls[0]!.usage!.input });
    expect(response.headers.get('x-aios-provider')).toBe('claude');
    expect(response.headers.get('x-aios-model')).toBe(SONNET);
    const st = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: 'hello there' }], stream: true, stream_options: { include_usage: true } }).withResponse();
    expect(st.response.headers.get('x-aios-provider')).toBe('claude');
    let text = '';
    let usage: OpenAI.CompletionUsage | undefined | null;
    let finish = '';
    for await (const ch of st.data) {
      text += ch.choices[0]?.delta?.content ?? '';
      if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
      if (ch.usage) usage = ch.usage;
      expect(ch.model).toBe(SONNET);
    }
    expect(text).toBe('tok tok tok tok tok');
    expect(finish).toBe('stop');
    expect(usage).toMatchObject({ completion_tokens: 5 });
  });

  it('HTTP: a client that disconnects mid-stream cancels the upstream call; it is charged what was used', async () => {
    const c = config({}, { only: 'claude' });
    const s = await daemon(c);
    anthropic.reset({ tokenDelayMs: 20, outputTokens: 64 });
    const ctrl = new AbortController();
    const st = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: 'x' }], stream: true }, { signal: ctrl.signal });
    let n = 0;
    await (async () => {
      for await (const ch of st) if (ch.choices[0]?.delta?.content && ++n === 3) ctrl.abort();
    })().catch(() => {});
    await new Promise((r) => setTimeout(r, 300));
    expect(anthropic.calls[0]!.aborted).toBe(true);
    const settle = ledgerLines(c).find((l) => l.kind === 'settle')!;
    expect(settle.outcome).toBe('cancelled');
    expect(settle.tokens.output).toBeLessThan(64);
    expect(settle.cost_usd).toBeLessThan(worstCase(promptTokenBound([{ content: 'x' }]), 64, tablePrices(SONNET)!));
  });

  it('OpenAI provider by its model name: cached and reasoning tokens priced at their own rates, streamed and not', async () => {
    const c = config({}, { only: 'openai', openai: { fallback_only: false, model: 'o4-mini' } });
    const s = await daemon(c);
    openaiMock.reset({ cacheRead: 2, reasoning: 7, outputTokens: 3 });
    const r = await unary(s.grpc, 'Infer', { prompt: 'one two three four', model: 'o4-mini' });
    expect(r).toMatchObject({ provider: 'openai', model_used: 'o4-mini', completion_tokens: 10 });
    expect(openaiMock.calls[0]!.body).toMatchObject({ model: 'o4-mini', max_completion_tokens: 64 });
    expect(openaiMock.calls[0]!.headers.authorization).toBe(`Bearer ${KEY_O}`);
    const st = await s.openai.chat.completions.create({ model: 'o4-mini', messages: [{ role: 'user', content: 'one two three four' }], stream: true, stream_options: { include_usage: true } });
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const ch of st) if (ch.usage) usage = ch.usage;
    expect(usage).toMatchObject({ completion_tokens: 10, prompt_tokens_details: { cached_tokens: 2 }, completion_tokens_details: { reasoning_tokens: 7 } });
    expect(openaiMock.calls[1]!.body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
    const p = tablePrices('o4-mini')!;
    for (const l of ledgerLines(c).filter((x) => x.kind === 'settle')) {
      expect(l.tokens).toEqual({ input: 5, cacheRead: 2, cacheWrite: 0, output: 3, reasoning: 7 });
      expect(l.cost_usd).toBeCloseTo((5 * p.input + 2 * p.cacheRead + 3 * p.output + 7 * p.reasoning) / 1e6, 12);
    }
  });

  it('Anthropic cache read and cache write tokens are priced at their own rates, also when streamed', async () => {
    const c = config({}, { only: 'claude' });
    const s = await daemon(c);
    anthropic.reset({ cacheRead: 3, cacheWrite: 2 });
    await unary(s.grpc, 'Infer', { prompt: 'a b c d e f g', intelligence_level: 'strategic' });
    await stream(s.grpc, { prompt: 'a b c d e f g', intelligence_level: 'strategic' });
    const p = tablePrices(SONNET)!;
    for (const l of ledgerLines(c).filter((x) => x.kind === 'settle')) {
      expect(l.tokens).toEqual({ input: 5, cacheRead: 3, cacheWrite: 2, output: 5, reasoning: 0 });
      expect(l.cost_usd).toBeCloseTo((5 * p.input + 3 * p.cacheRead + 2 * p.cacheWrite + 5 * p.output) / 1e6, 12);
    }
  });
});

describe('fallback', () => {
  it('primary answers 500 → served by the fallback (fallback_only), marked on gRPC and HTTP', async () => {
    const s = await daemon(config());
    anthropic.reset({ status: 500 });
    const r = await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    expect(r).toMatchObject({ provider: 'openai', model_used: 'gpt-4o' });
    const { response } = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: 'x' }] }).withResponse();
    expect(response.headers.get('x-aios-provider')).toBe('openai');
    const st = await stream(s.grpc, { prompt: 'x', intelligence_level: 'strategic' });
    expect(st.last).toMatchObject({ provider: 'openai' });
    expect(anthropic.calls).toHaveLength(3);
  });

  it('primary times out → served by the fallback', async () => {
    const c = config({}, { claude: { timeout: '300ms' } });
    const s = await daemon(c);
    anthropic.reset({ delayMs: 1500 }); // answers, late: had the 300 ms timeout not cut it, claude would have served
    const r = await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    expect(r).toMatchObject({ provider: 'openai', model_used: 'gpt-4o' });
    expect(anthropic.calls).toHaveLength(1);
    // The timed-out call counts at its full reservation (the provider may have run it).
    const settles = ledgerLines(c).filter((l) => l.kind === 'settle' && l.provider === 'claude');
    expect(settles).toMatchObject([{ outcome: 'error', error: 'timed out' }]);
    const reserved = ledgerLines(c).find((l) => l.kind === 'reserve' && l.provider === 'claude')!.reserved_usd;
    expect(settles[0]!.cost_usd).toBeCloseTo(reserved, 12);
  });

  it('primary unreachable (connection refused) → served by the fallback; both unreachable: UNAVAILABLE naming the connection error of each', async () => {
    const closed = await new Promise<number>((resolve) => {
      const srv = createNetServer().listen(0, '127.0.0.1', () => {
        const port = (srv.address() as AddressInfo).port;
        srv.close(() => resolve(port));
      });
    });
    const s = await daemon(config({}, { claude: { base_url: `http://127.0.0.1:${closed}` } }));
    const r = await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    expect(r).toMatchObject({ provider: 'openai', model_used: 'gpt-4o' });
    const st = await stream(s.grpc, { prompt: 'x', intelligence_level: 'strategic' });
    expect(st.last).toMatchObject({ provider: 'openai' });
    expect(openaiMock.calls).toHaveLength(2);
    const both = await daemon(config({}, { claude: { base_url: `http://127.0.0.1:${closed}` }, openai: { base_url: `http://127.0.0.1:${closed}/v1` } }));
    const e = await grpcFailure(unary(both.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' }));
    expect(e?.code).toBe(Code.UNAVAILABLE);
    expect(e?.details).toMatch(/claude: connection failed \(ECONNREFUSED\); openai: connection failed \(ECONNREFUSED\)/);
  });

  it('primary at its rate limit → the fallback at once, the primary not called (no wait while another provider can answer)', async () => {
    const s = await daemon(config({}, { claude: { rate_limit_rpm: 1 } }));
    expect((await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' })).provider).toBe('claude');
    // claude's bucket refills in a minute, the request's deadline is 10 s: had it waited for claude, it would fail.
    const r = await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    expect(r).toMatchObject({ provider: 'openai', model_used: 'gpt-4o' });
    const { response } = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: 'x' }] }).withResponse();
    expect(response.headers.get('x-aios-provider')).toBe('openai');
    expect(anthropic.calls).toHaveLength(1);
    expect(openaiMock.calls).toHaveLength(2);
  });

  it('primary answers 429 with Retry-After → the fallback now, and the primary is skipped until then', async () => {
    const s = await daemon(config());
    anthropic.reset({ status: 429, retryAfter: 30 });
    expect((await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' })).provider).toBe('openai');
    expect((await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' })).provider).toBe('openai');
    expect(anthropic.calls).toHaveLength(1);
  });

  it('primary over its budget → served by the fallback without calling the primary', async () => {
    const s = await daemon(config({}, { claude: { monthly_budget_usd: 0.0001 } }));
    const r = await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    expect(r).toMatchObject({ provider: 'openai', model_used: 'gpt-4o' });
    expect(anthropic.calls).toHaveLength(0);
  });

  it('every provider failing: UNAVAILABLE with each reason; never a silent local answer', async () => {
    const s = await daemon(config());
    anthropic.reset({ status: 500 });
    openaiMock.reset({ status: 503 });
    const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' }));
    expect(e?.code).toBe(Code.UNAVAILABLE);
    expect(e?.details).toMatch(/claude: answered 500.*openai: answered 503/);
    expect(s.launcher.bodies).toHaveLength(1); // only the start-up probe reached the local model
    const h = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: 'x' }] }).then(() => undefined, (x: InstanceType<typeof OpenAI.APIError>) => x);
    expect(h?.status).toBe(503);
  });

  it('api.local_fallback = "operational": answered locally, marked provider "local" (gRPC) / x-aios-provider: local (HTTP)', async () => {
    const s = await daemon(config({ local_fallback: 'operational' }));
    anthropic.reset({ status: 500 });
    openaiMock.reset({ status: 500 });
    const r = await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    expect(r.provider).toBe('local');
    expect(r.model_used).toBe('op');
    const { response } = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: 'x' }] }).withResponse();
    expect(response.headers.get('x-aios-provider')).toBe('local');
    expect(s.log.some((l) => /served by the local operational model/.test(l))).toBe(true);
  });
});

describe('budget: N concurrent requests never spend more than the budget', () => {
  const p = tablePrices(SONNET)!;
  const prompt = 'hello';
  const bound = promptTokenBound([{ content: prompt }]);
  const worst = worstCase(bound, 64, p);
  const budget = Math.round(worst * 10 * 1e6) / 1e6 + 1e-7; // exactly 10 worst cases (to the micro-dollar)

  it('50 concurrent Infer: 10 answered, 40 RESOURCE_EXHAUSTED naming the provider and what is left; spent ≤ budget', async () => {
    const c = config({}, { only: 'claude', claude: { monthly_budget_usd: budget } });
    const s = await daemon(c);
    anthropic.reset({ delayMs: 100, outputTokens: 64 }); // answers use max_tokens: the reservation is nearly all spent
    const rs = await Promise.all(Array.from({ length: 50 }, () => unary(s.grpc, 'Infer', { prompt, intelligence_level: 'strategic' }).then((r) => r, (e: grpc.ServiceError) => e)));
    const ok = rs.filter((r) => !(r instanceof Error));
    const refused = rs.filter((r): r is grpc.ServiceError => r instanceof Error);
    expect(ok).toHaveLength(10);
    expect(refused).toHaveLength(40);
    for (const e of refused) {
      expect(e.code).toBe(Code.RESOURCE_EXHAUSTED);
      expect(e.details).toMatch(/claude: monthly budget: \$[\d.]+ of \$[\d.]+ left in \d{4}-\d{2}, this request may cost up to \$[\d.]+/);
    }
    expect(anthropic.calls).toHaveLength(10);
    const spend = await unary(s.grpc, 'Spend', {});
    const spent = spend.providers[0]!.spent_usd;
    expect(spent).toBeLessThanOrEqual(budget);
    const billed = anthropic.calls.reduce((n, x) => n + costOf(x.usage!, p), 0);
    expect(spent).toBeCloseTo(billed, 12);
    expect(Math.round(spent * 100)).toBeLessThanOrEqual(Math.round(budget * 100));
    expect(spend.providers[0]).toMatchObject({ requests: 10, reserved_usd: 0 });
  });

  it('the same streamed, with half of the clients going away after the first piece: cancelled upstream, charged only what was used, spent ≤ budget', async () => {
    const c = config({}, { only: 'claude', claude: { monthly_budget_usd: budget } });
    const s = await daemon(c);
    anthropic.reset({ tokenDelayMs: 20, outputTokens: 64 });
    const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => stream(s.grpc, { prompt, intelligence_level: 'strategic' }, { cancelAfter: i % 2 ? 1 : undefined })));
    const finished = rs.filter((r) => !r.error);
    const cancelled = rs.filter((r) => r.error?.code === grpc.status.CANCELLED);
    const refused = rs.filter((r) => r.error?.code === Code.RESOURCE_EXHAUSTED);
    expect(finished.length + cancelled.length).toBeGreaterThanOrEqual(10);
    expect(finished.length + cancelled.length + refused.length).toBe(50);
    await new Promise((r) => setTimeout(r, 300)); // the cancelled calls settle
    expect(anthropic.calls.filter((x) => x.aborted).length).toBeGreaterThan(0);
    const settles = ledgerLines(c).filter((l) => l.kind === 'settle');
    expect(settles.filter((l) => l.outcome === 'cancelled').length).toBe(anthropic.calls.filter((x) => x.aborted).length);
    for (const l of settles.filter((x) => x.outcome === 'cancelled')) expect(l.cost_usd).toBeLessThan(worst);
    const spent = (await unary(s.grpc, 'Spend', {})).providers[0]!.spent_usd;
    expect(spent).toBeLessThanOrEqual(budget);
    expect(spent).toBeCloseTo(settles.reduce((n, l) => n + l.cost_usd, 0), 12);
  });

  it('HTTP: over budget is 429 with the reason, and the openai client raises RateLimitError', async () => {
    const s = await daemon(config({}, { only: 'claude', claude: { monthly_budget_usd: worst * 0.5 } }));
    const e = await s.openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: prompt }] }).then(() => undefined, (x: unknown) => x);
    expect(e).toBeInstanceOf(OpenAI.RateLimitError);
    expect((e as Error).message).toMatch(/claude: monthly budget/);
    expect(anthropic.calls).toHaveLength(0);
  });
});

describe('month rollover and `aios runtime spend`', () => {
  it('a new month (UTC) starts at zero; the old month stays in the ledger, in Spend { month } and in `aios runtime spend --month`', async () => {
    clock = Date.parse('2026-01-31T23:59:30Z');
    const c = config({}, { only: 'claude' });
    const s = await daemon(c);
    await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    const jan = await unary(s.grpc, 'Spend', {});
    expect(jan.month).toBe('2026-01');
    expect(jan.providers[0]!.spent_usd).toBeGreaterThan(0);
    clock = Date.parse('2026-02-01T00:00:10Z');
    const feb = await unary(s.grpc, 'Spend', {});
    expect(feb).toMatchObject({ month: '2026-02', months: ['2026-01'] });
    expect(feb.providers[0]).toMatchObject({ spent_usd: 0, requests: 0, remaining_usd: 100 });
    await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    const old = await unary(s.grpc, 'Spend', { month: '2026-01' });
    expect(old.providers[0]!.spent_usd).toBeCloseTo(jan.providers[0]!.spent_usd, 12);
    expect((await unary(s.grpc, 'Spend', {})).months).toEqual(['2026-01', '2026-02']);
    expect(spendTable(old)).toMatch(/month 2026-01 \(UTC\)[\s\S]*claude\s+claude-sonnet-4-5-20250929\s+\$0\.00\s+\$100\.00\s+\$100\.00\s+1\s+0/);
    expect((await grpcFailure(unary(s.grpc, 'Spend', { month: '2026-13' })))?.code).toBe(Code.INVALID_ARGUMENT);
    // The command itself: `aios runtime spend --month 2026-01 --json` against this runtime.
    const cmd = await cli(['runtime', 'spend', '--month', '2026-01', '--json', '-a', `127.0.0.1:${s.d.listening.tcpPort}`]);
    expect(cmd.exitCode, cmd.stderr).toBe(0);
    const printed = JSON.parse(cmd.stdout) as { month: string; providers: { name: string; spent_usd: number; requests: number }[] };
    expect(printed.month).toBe('2026-01');
    expect(printed.providers[0]).toMatchObject({ name: 'claude', requests: 1 });
    expect(printed.providers[0]!.spent_usd).toBeCloseTo(jan.providers[0]!.spent_usd, 12);
  });

  it('month totals are rebuilt from the ledger on start', async () => {
    const c = config({}, { only: 'claude' });
    let s = await daemon(c);
    await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    const before = (await unary(s.grpc, 'Spend', {})).providers[0]!;
    s.grpc.close();
    await s.d.stop();
    running = [];
    s = await daemon(c);
    const after = (await unary(s.grpc, 'Spend', {})).providers[0]!;
    expect({ ...after, spent_usd: 0, remaining_usd: 0 }).toEqual({ ...before, spent_usd: 0, remaining_usd: 0 });
    expect(after.spent_usd).toBeCloseTo(before.spent_usd, 12);
    expect(after.requests).toBe(2);
  });
});

describe('rate limit', () => {
  it('over rate_limit_rpm a request waits until its deadline, then RESOURCE_EXHAUSTED (gRPC) / 429 with Retry-After (HTTP)', async () => {
    const s = await daemon(config({}, { only: 'claude', claude: { rate_limit_rpm: 2 }, runtime: { request_timeout: '1s' } }));
    await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' });
    const t0 = Date.now();
    const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic', timeout_ms: 400 }));
    expect(e?.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(e?.details).toMatch(/claude: rate limit reached \(rate_limit_rpm = 2\)/);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
    const res = await fetch(`${s.http}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'strategic', messages: [{ role: 'user', content: 'x' }] }) });
    expect(res.status).toBe(429);
    expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(1);
    expect(anthropic.calls).toHaveLength(2);
  }, 20_000);

  it('waiters get freed capacity by priority (system > realtime > default > batch), FIFO within one', async () => {
    let now = 0;
    const g = new RateGate(60, 0, () => now);
    for (let i = 0; i < 60; i++) expect(g.tryTake(1)).toBe(true);
    expect(g.tryTake(1)).toBe(false);
    const order: string[] = [];
    const far = Date.now() + 60_000;
    const ws = (['batch', 'default', 'system', 'realtime', 'default'] as const).map((p, i) => g.wait(p, 1, far).then(() => order.push(`${p}${i}`)));
    for (let i = 0; i < 5; i++) {
      now += 1000; // one request's worth at 60/min
      g.pump();
      await new Promise((r) => setImmediate(r));
    }
    await Promise.all(ws);
    expect(order).toEqual(['system2', 'realtime3', 'default1', 'default4', 'batch0']);
  });

  it('tokens per minute: a request takes its worst case (prompt bound + max_tokens) from the bucket', () => {
    let now = 0;
    const g = new RateGate(0, 1000, () => now);
    expect(g.tryTake(600)).toBe(true);
    expect(g.tryTake(600)).toBe(false);
    expect(g.retryAfterS(600)).toBe(12); // 200 more tokens at 1000/min
    now += 12_000;
    expect(g.tryTake(600)).toBe(true);
    g.giveBack(600); // not sent: given back
    expect(g.tryTake(600)).toBe(true);
  });
});

describe('configuration', () => {
  const parse = (claude: object, api: object = {}) => RuntimeConfigSchema.safeParse({ api: { claude: { provider: 'anthropic', model: SONNET, monthly_budget_usd: 1, ...claude }, ...api } });
  const messages = (r: ReturnType<typeof parse>) => (r.success ? '' : r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; '));

  it('a literal key, an unknown provider, a negative budget: refused naming the key, saying how to give a key', () => {
    expect(messages(parse({ key_file: KEY_A }))).toMatch(/^api\.claude\.key_file: looks like a key itself: key_file names a systemd credential/);
    expect(messages(parse({ api_key: 'whatever' }))).toMatch(/api\.claude\.api_key: a key never goes into the config: put it in a file and name it with key_file/);
    expect(messages(parse({ provider: 'mistral' }))).toMatch(/^api\.claude\.provider: /);
    expect(messages(parse({ monthly_budget_usd: -1 }))).toMatch(/^api\.claude\.monthly_budget_usd: /);
    expect(messages(parse({}, { local_fallback: 'strategic' }))).toMatch(/^api\.local_fallback: /);
    expect(parse({ key_file: 'claude' }).success).toBe(true);
    expect(parse({ key_file: '/etc/aios/credentials/claude' }).success).toBe(true);
    for (const r of [parse({ key_file: KEY_A }), parse({ api_key: KEY_A })]) expect(messages(r)).not.toContain(KEY_A);
  });

  it('`aios runtime serve` with a literal key in its config.toml refuses to start, naming the key and how to give one, without echoing it', async () => {
    const file = join(dir, 'literal-key.toml');
    writeFileSync(file, `[runtime]\nllama_server = "/nonexistent"\nsocket = ""\nlisten = "127.0.0.1:0"\nhttp_listen = ""\n[models]\nmodel_dir = "${dir}"\n[api.claude]\nprovider = "anthropic"\nmodel = "${SONNET}"\nmonthly_budget_usd = 1\nkey_file = "${KEY_A}"\n`);
    const r = await cli(['runtime', 'serve', '--config', file]);
    expect(r.exitCode).not.toBe(0);
    expect(r.stderr).toMatch(/api\.claude\.key_file: looks like a key itself: key_file names a systemd credential \(ImportCredential= from \/etc\/credstore\) or an absolute path with mode 0600 that holds the key/);
    expect(r.stdout + r.stderr).not.toContain(KEY_A);
  });

  it('an unpriced model refuses the start, naming the key', async () => {
    const m = await startDaemon(config({}, { only: 'claude', claude: { model: 'claude-next' } }), { log: () => {}, service: { launcher: new FakeLauncher(), cloud: { env } } }).then(
      (d) => (running.push({ d } as Running), ''),
      (x: Error) => x.message,
    );
    expect(m).toMatch(/api\.claude: no price known for model "claude-next": set price_input_per_mtok and price_output_per_mtok/);
  });

  it('a missing credential, no $CREDENTIALS_DIRECTORY, a key file readable by others: an error naming api.<name>.key_file in the log and in strategic errors; local levels still serve', async () => {
    const loose = join(dir, 'loose-key');
    writeFileSync(loose, KEY_A);
    chmodSync(loose, 0o644);
    const cases: [object, NodeJS.ProcessEnv, RegExp][] = [
      [{ key_file: 'nothere' }, env, /api\.claude\.key_file: no credential "nothere" in \$CREDENTIALS_DIRECTORY .*LoadCredential=nothere/],
      [{}, {}, /api\.claude\.key_file = "claude" names a systemd credential, but \$CREDENTIALS_DIRECTORY is not set/],
      [{ key_file: loose }, env, /api\.claude\.key_file: .* is readable by others \(mode 644\); chmod 600 it/],
    ];
    for (const [claude, e, re] of cases) {
      const log: string[] = [];
      const d = await startDaemon(config({}, { only: 'claude', claude }), { log: (x) => log.push(x), service: { launcher: new FakeLauncher(), cloud: { env: e } } });
      const c = connect(`127.0.0.1:${d.listening.tcpPort}`);
      running.push({ d, grpc: c } as Running);
      expect(log.find((l) => re.test(l))).toMatch(/strategic requests skip api\.claude until it can be read/);
      const err = await grpcFailure(unary(c, 'Infer', { prompt: 'x', intelligence_level: 'strategic' }));
      expect(err?.code).toBe(Code.UNAVAILABLE);
      expect(err?.details).toMatch(re);
      expect((await unary(c, 'Infer', { prompt: 'x', intelligence_level: 'operational' })).model_used).toBe('op');
      expect((await unary(c, 'Spend', {})).providers[0]!.unavailable).toBe('no key (see the log)');
      expect(log.join('\n') + err!.details).not.toContain(KEY_A);
    }
    expect(anthropic.calls).toHaveLength(0);
  });

  it('a provider misconfigured at runtime (its key refused) fails only strategic requests; local levels still serve', async () => {
    const wrong = join(creds, 'wrong');
    writeFileSync(wrong, 'sk-ant-wrong-key-000000000000000', { mode: 0o600 });
    const s = await daemon(config({}, { only: 'claude', claude: { key_file: 'wrong' } }));
    const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' }));
    expect(e?.code).toBe(Code.UNAVAILABLE);
    expect(e?.details).toMatch(/claude: answered 401/);
    expect(e?.details).not.toContain('sk-ant-wrong');
    expect((await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'operational' })).model_used).toBe('op');
  });

  it('no strategic provider configured: FAILED_PRECONDITION, no local model in its place', async () => {
    const c = RuntimeConfigSchema.parse({ ...config(), api: {} });
    const s = await daemon(c);
    const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' }));
    expect(e?.code).toBe(Code.FAILED_PRECONDITION);
    expect(e?.details).toMatch(/cloud gateway.*no local model is used/);
  });
});

describe('saved sessions are refused on the strategic layer', () => {
  it('gRPC (level, provider model; Infer and StreamInfer): FAILED_PRECONDITION saying why; HTTP (model "strategic", a provider model, X-Session): 400 saying why; no provider is called', async () => {
    const s = await daemon(config());
    for (const req of [{ intelligence_level: 'strategic' }, { model: SONNET }, { model: 'claude' }]) {
      const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'remember this', session_id: 'chat', ...req }));
      expect([req, e?.code]).toEqual([req, Code.FAILED_PRECONDITION]);
      expect(e?.details).toMatch(/^session_id: saved sessions are not available on the strategic layer: a session is a local model's KV state .* a cloud provider has none to save or restore; use a local model/);
    }
    const st = await stream(s.grpc, { prompt: 'remember this', session_id: 'chat', intelligence_level: 'strategic' });
    expect(st.error?.code).toBe(Code.FAILED_PRECONDITION);
    // A malformed id is still the client's mistake first.
    expect((await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'x', session_id: '../x', intelligence_level: 'strategic' })))?.code).toBe(Code.INVALID_ARGUMENT);
    const post = (body: object, headers: Record<string, string> = {}) =>
      fetch(`${s.http}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ messages: [{ role: 'user', content: 'remember this' }], ...body }) });
    for (const [body, headers] of [[{ model: 'strategic', session: 'chat' }, {}], [{ model: SONNET, stream: true }, { 'x-session': 'chat' }]] as const) {
      const r = await post(body, headers);
      const j = (await r.json()) as { error: { message: string; type: string } };
      expect([body, r.status]).toEqual([body, 400]);
      expect(j.error).toMatchObject({ type: 'invalid_request_error', message: expect.stringMatching(/^session: saved sessions are not available on the strategic layer: .*a cloud provider has none to save or restore/) });
    }
    expect(anthropic.calls).toHaveLength(0);
    expect(openaiMock.calls).toHaveLength(0);
  });
});

describe('keys never leave the runtime', () => {
  it('no key in any log line, /metrics, error, ListModels, Spend or the ledger; the cloud metrics are there', async () => {
    const c = config({}, {});
    const s = await daemon(c);
    const seen: string[] = [];
    seen.push(JSON.stringify(await unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' })));
    seen.push(JSON.stringify(await stream(s.grpc, { prompt: 'x', intelligence_level: 'strategic' })));
    anthropic.reset({ status: 500 });
    openaiMock.reset({ status: 401 });
    const e = await grpcFailure(unary(s.grpc, 'Infer', { prompt: 'x', intelligence_level: 'strategic' }));
    seen.push(e!.details);
    const h = await fetch(`${s.http}/v1/chat/completions`, { method: 'POST', body: JSON.stringify({ model: 'strategic', messages: [{ role: 'user', content: 'x' }] }) });
    seen.push(await h.text());
    const metrics = await (await fetch(`${s.http}/metrics`)).text();
    seen.push(metrics);
    seen.push(JSON.stringify(await unary(s.grpc, 'ListModels', {})));
    seen.push(JSON.stringify(await unary(s.grpc, 'Spend', {})));
    seen.push(JSON.stringify((await (await fetch(`${s.http}/v1/models`)).json()) as object));
    seen.push(readdirSync(c.api.ledger_dir).map((f) => readFileSync(join(c.api.ledger_dir, f), 'utf8')).join(''));
    await s.d.stop();
    running = [];
    seen.push(...s.log);
    const all = seen.join('\n');
    expect(all).not.toContain(KEY_A);
    expect(all).not.toContain(KEY_O);
    expect(all).not.toContain('TESTKEY');
    expect(metrics).toMatch(/aios_cloud_requests_total\{provider="claude",model="claude-sonnet-4-5-20250929",status="ok"\} 2/);
    expect(metrics).toMatch(/aios_cloud_tokens_total\{provider="claude",kind="output"\} 10/);
    expect(metrics).toMatch(/aios_cloud_spend_usd\{provider="claude"\} 0\.0\d+/);
    expect(metrics).toMatch(/aios_cloud_budget_usd\{provider="openai"\} 50/);
    expect(metrics).toMatch(/aios_cloud_latency_seconds_count\{provider="claude"\} 2/);
    expect(metrics).toMatch(/aios_cloud_requests_total\{provider="openai",model="gpt-4o",status="error"\} 2/);
  });
});
