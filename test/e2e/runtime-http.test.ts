/**
 * aios-runtime's OpenAI-compatible HTTP API and /metrics, end to end: the real daemon with real
 * llama-server children (llama.cpp from the default recipe's cached stage) and a synthesized tiny
 * model, driven by the official `openai` npm client, unchanged, and by plain fetch; /metrics is read
 * with the reference Prometheus client's text-format parser (Debian's python3-prometheus-client).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { getChild } from '../../src/runtime/upstream.js';
import OpenAI from 'openai';
import { execa } from 'execa';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runtimeFixture } from './runtime-fixture.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import type { RuntimeEventMap } from '../../src/runtime/events.js';
import { REPO, tmp } from '../helpers.js';

let daemon: Daemon;
let base = '';
let openai: OpenAI;
let llamaServer = '';
const dir = tmp('aios-runtime-http-');

type Sample = { name: string; labels: Record<string, string>; value: number };
type Family = { name: string; help: string; type: string; samples: Sample[] };
/** GET /metrics, parsed by prometheus_client's parser (counter families are named without _total). */
async function scrape(): Promise<{ families: Family[]; byName: Map<string, Family>; samples: (name: string, labels?: Record<string, string>) => Sample[] }> {
  const r = await fetch(`${base}/metrics`);
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const parsed = await execa('/usr/bin/python3', [join(REPO, 'test/fixtures/prom_parse.py')], { input: await r.text() });
  const families = JSON.parse(parsed.stdout) as Family[];
  const all = families.flatMap((f) => f.samples);
  const samples = (name: string, labels: Record<string, string> = {}) => all.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return { families, byName: new Map(families.map((f) => [f.name, f])), samples };
}
/** Where the model's llama-server listens: its unix socket when sandboxed, else its port. */
const port = (name: string): number | string => {
  const m = daemon.service.models().find((x) => x.name === name);
  return m?.socket || m?.port || 0;
};
async function busy(p: number | string): Promise<boolean> {
  const slots = JSON.parse((await getChild(p, '/slots', 5000)).body) as { is_processing: boolean }[];
  return slots.some((x) => x.is_processing);
}
function collect<K extends keyof RuntimeEventMap>(name: K): RuntimeEventMap[K][0][] {
  const out: RuntimeEventMap[K][0][] = [];
  daemon.service.events.on(name, ((e: RuntimeEventMap[K][0]) => out.push(e)) as never);
  return out;
}

describe('aios-runtime HTTP API', () => {
  beforeAll(async () => {
    const fx = await runtimeFixture(dir);
    copyFileSync(join(dir, 'tiny.gguf'), join(dir, 'tactical.gguf'));
    // A catalog with one installed model (served by its id) and one that is not (hidden: no auto_install).
    copyFileSync(join(dir, 'tiny.gguf'), join(dir, 'catalog-tiny.gguf'));
    const entry = (id: string) => `[[model]]\nid = "${id}"\nlevel = "tactical"\nfile = "${id}.gguf"\nurl = "http://127.0.0.1:9/${id}.gguf"\nsize = 0\nsha256 = ""\nlicense = "mit"\nquantization = "F32"\ncontext_length = 512\nverified = false\n`;
    writeFileSync(join(dir, 'catalog.toml'), entry('catalog-tiny') + entry('catalog-absent'));
    const config = RuntimeConfigSchema.parse({
      runtime: { llama_server: fx.llamaServer, socket: '', listen: '', http_listen: '127.0.0.1:0', health_interval: '500ms', load_timeout: '60s', request_timeout: '60s', catalog: join(dir, 'catalog.toml') },
      models: {
        model_dir: dir,
        operational: { name: 'tiny.gguf', parallel: 4, ctx_size: 512, max_tokens: 16 },
        tactical: { name: 'tactical.gguf', parallel: 1, ctx_size: 512, unload_after_idle: '3s' },
      },
    });
    llamaServer = fx.llamaServer;
    daemon = await startDaemon(config, { log: () => {} });
    base = `http://127.0.0.1:${daemon.http!.port}`;
    openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'not-needed', maxRetries: 0 });
  }, 20 * 60_000);

  afterAll(async () => {
    await daemon?.stop();
  });

  it('lists the configured models without loading any', async () => {
    const models = [];
    for await (const m of openai.models.list()) models.push(m);
    expect(models.map((m) => m.id).sort()).toEqual(['catalog-tiny', 'tactical', 'tiny']);
    expect(models.find((m) => m.id === 'catalog-tiny')).toMatchObject({ level: '', state: 'unloaded' });
    expect(models.find((m) => m.id === 'tiny')).toMatchObject({ object: 'model', owned_by: 'aios', level: 'operational', state: 'ready' });
    expect(models.find((m) => m.id === 'tactical')).toMatchObject({ level: 'tactical', state: 'unloaded' });
    expect((await openai.models.retrieve('tiny')).id).toBe('tiny');
    expect(daemon.service.models().map((m) => m.name)).toEqual(['tiny']);
  });

  it('the openai client completes a chat (llama-server parameters pass through; model by level)', async () => {
    const gens = collect('generation');
    const r = await openai.chat.completions.create({
      model: 'operational',
      messages: [{ role: 'user', content: 'Respond with OK if you are working.' }],
      max_tokens: 8,
      // llama-server's own field, passed through unchanged
      ...({ grammar: 'root ::= "OK"' } as object),
    });
    expect(r.object).toBe('chat.completion');
    expect(r.model).toBe('tiny');
    expect(r.choices[0]!.message).toMatchObject({ role: 'assistant', content: 'OK' });
    expect(r.usage!.completion_tokens).toBeGreaterThan(0);
    expect(gens).toHaveLength(1);
    expect(gens[0]).toMatchObject({ model: 'tiny', completionTokens: r.usage!.completion_tokens });
  });

  it('the openai client streams a chat; the runtime reports time to first token and tokens', async () => {
    const gens = collect('generation');
    const stream = await openai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Count to ten.' }], max_tokens: 20, temperature: 0.5, stream: true });
    const chunks = [];
    for await (const c of stream) chunks.push(c);
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    expect(chunks.length).toBeGreaterThan(5);
    expect(chunks.every((c) => c.object === 'chat.completion.chunk' && c.model === 'tiny')).toBe(true);
    expect(chunks.at(-1)!.choices[0]!.finish_reason).toBe('length');
    expect(text.length).toBeGreaterThan(0);
    expect(gens).toHaveLength(1);
    expect(gens[0]!.completionTokens).toBe(20);
    expect(gens[0]!.ttftMs).toBeGreaterThan(0);
    expect(gens[0]!.genMs).toBeGreaterThanOrEqual(gens[0]!.ttftMs);
  });

  it('serves an installed catalog model by its id', { timeout: 60_000 }, async () => {
    const r = await openai.chat.completions.create({ model: 'catalog-tiny', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
    expect(r.model).toBe('catalog-tiny');
    expect(r.usage!.completion_tokens).toBe(3);
    expect((await openai.models.retrieve('catalog-tiny')) as unknown).toMatchObject({ state: 'ready' });
    await daemon.service.unload('catalog-tiny');
    expect(daemon.service.models().map((m) => m.name)).toEqual(['tiny']);
  });

  it('legacy completions, streaming and not; the layer\'s max_tokens applies when the client sets none', async () => {
    const r = await openai.completions.create({ model: 'tiny', prompt: 'Once upon a time', temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.usage!.completion_tokens).toBe(16); // [models.operational] max_tokens = 16
    const s = await openai.completions.create({ model: '', prompt: 'Once upon a time', max_tokens: 6, stream: true });
    const parts = [];
    for await (const c of s) parts.push(c.choices[0]?.text ?? '');
    expect(parts.filter((p) => p.length > 0).length).toBeGreaterThanOrEqual(3); // 6 tokens; split UTF-8 may merge a few
  });

  it('maps errors to HTTP statuses with OpenAI-style bodies the client understands', async () => {
    const err = (p: Promise<unknown>) => p.then(() => undefined, (e: unknown) => e as InstanceType<typeof OpenAI.APIError>);
    const notFound = await err(openai.chat.completions.create({ model: 'nope', messages: [{ role: 'user', content: 'x' }] }));
    expect(notFound).toBeInstanceOf(OpenAI.NotFoundError);
    expect(notFound!.code).toBe('model_not_found');
    expect(notFound!.message).toMatch(/unknown model "nope"/);
    const strategic = await err(openai.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: 'x' }] }));
    expect(strategic).toBeInstanceOf(OpenAI.BadRequestError);
    expect(strategic!.code).toBe('failed_precondition');
    expect(strategic!.message).toMatch(/cloud gateway/);
    // llama-server's own validation error comes back as it was
    const bad = await err(openai.chat.completions.create({ model: 'tiny', messages: 'x' as never }));
    expect(bad).toBeInstanceOf(OpenAI.BadRequestError);
    expect(bad!.message).toMatch(/messages/);

    const post = (path: string, body: string, headers: Record<string, string> = {}) => fetch(`${base}${path}`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });
    const notJson = await post('/v1/chat/completions', '{nope');
    expect(notJson.status).toBe(400);
    expect(await notJson.json()).toMatchObject({ error: { type: 'invalid_request_error', code: 'invalid_argument', message: expect.stringMatching(/not JSON/) } });
    const prio = await post('/v1/chat/completions', JSON.stringify({ messages: [{ role: 'user', content: 'x' }] }), { 'x-priority': 'urgent' });
    expect(prio.status).toBe(400);
    expect(((await prio.json()) as { error: { message: string } }).error.message).toMatch(/priority: priority must be one of system, realtime, default, batch/);
    expect((await fetch(`${base}/v1/chat/completions`)).status).toBe(405);
    expect((await fetch(`${base}/v1/nothing`)).status).toBe(404);
    expect((await fetch(`${base}/health`)).status).toBe(200);
  });

  it('takes the priority from the body or the X-Priority header', async () => {
    const reqs = collect('request');
    await openai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'a' }], max_tokens: 2 }, { headers: { 'X-Priority': 'batch' } });
    await openai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'b' }], max_tokens: 2, ...({ priority: 'realtime' } as object) });
    await openai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'c' }], max_tokens: 2 });
    expect(reqs.map((r) => [r.priority, r.status])).toEqual([
      ['batch', 'ok'],
      ['realtime', 'ok'],
      ['default', 'ok'],
    ]);
  });

  it('a client that disconnects mid-stream stops the generation in llama-server', { timeout: 60_000 }, async () => {
    const reqs = collect('request');
    const ctrl = new AbortController();
    const stream = await openai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'Write a very long story.' }], max_tokens: 512, temperature: 1, stream: true }, { signal: ctrl.signal });
    const it = stream[Symbol.asyncIterator]();
    for (let i = 0; i < 3; i++) await it.next();
    expect(await busy(port('tiny'))).toBe(true);
    ctrl.abort();
    const t0 = Date.now();
    while ((await busy(port('tiny'))) && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 100));
    expect(await busy(port('tiny'))).toBe(false);
    while (!reqs.length && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 50));
    expect(reqs.map((r) => r.status)).toEqual(['cancelled']);
  });

  it('serves 20 concurrent streams through the queue (parallel = 4) with none lost', { timeout: 120_000 }, async () => {
    const all = await Promise.all(
      Array.from({ length: 20 }, async (_, i) => {
        const s = await openai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: `Stream ${i}` }], max_tokens: 8, stream: true });
        let n = 0;
        let finish: string | null | undefined;
        for await (const c of s) {
          if (c.choices[0]?.delta?.content) n++;
          finish = c.choices[0]?.finish_reason ?? finish;
        }
        return { n, finish };
      }),
    );
    expect(all.every((x) => x.finish === 'length' && x.n > 0)).toBe(true);
  });

  it('/metrics parses as Prometheus text format and has the runtime\'s and the children\'s families', async () => {
    const { families, byName, samples } = await scrape();
    expect(new Set(families.map((f) => f.name)).size).toBe(families.length); // each family once, contiguous
    const types: Record<string, string> = {
      aios_runtime_ready: 'gauge',
      aios_queue_depth: 'gauge',
      aios_requests: 'counter',
      aios_request_queue_seconds: 'histogram',
      aios_model_state: 'gauge',
      aios_model_actual_bytes: 'gauge',
      aios_model_estimated_bytes: 'gauge',
      aios_model_loads: 'counter',
      aios_model_load_seconds: 'histogram',
      aios_model_unloads: 'counter',
      aios_model_evictions: 'counter',
      aios_time_to_first_token_seconds: 'histogram',
      aios_generation_seconds: 'histogram',
      aios_tokens_per_second: 'histogram',
      aios_completion_tokens: 'counter',
      aios_child_metrics_up: 'gauge',
      'llamacpp:prompt_tokens': 'counter',
      'llamacpp:tokens_predicted': 'counter',
      'llamacpp:requests_processing': 'gauge',
    };
    for (const [name, type] of Object.entries(types)) expect(byName.get(name)?.type, name).toBe(type);
    const one = (name: string, labels: Record<string, string>) => {
      const s = samples(name, labels);
      expect(s, `${name} ${JSON.stringify(labels)}`).toHaveLength(1);
      return s[0]!.value;
    };
    expect(one('aios_runtime_ready', {})).toBe(1);
    expect(one('aios_requests_total', { model: 'tiny', priority: 'batch', status: 'ok' })).toBe(1);
    expect(one('aios_requests_total', { model: 'tiny', priority: 'default', status: 'cancelled' })).toBeGreaterThanOrEqual(1);
    expect(one('aios_requests_total', { model: 'nope', status: 'error' })).toBe(1);
    expect(one('aios_queue_depth', { model: 'tiny', priority: 'realtime' })).toBe(0);
    expect(samples('aios_queue_depth', { model: 'tactical' })).toHaveLength(4); // every priority, even with the model not loaded
    // Histograms: cumulative buckets, +Inf = count.
    const ttftCount = one('aios_time_to_first_token_seconds_count', { model: 'tiny' });
    expect(ttftCount).toBeGreaterThan(20);
    const buckets = samples('aios_time_to_first_token_seconds_bucket', { model: 'tiny' });
    expect(buckets.at(-1)).toMatchObject({ labels: { le: '+Inf' }, value: ttftCount });
    expect(buckets.every((b, i) => i === 0 || b.value >= buckets[i - 1]!.value)).toBe(true);
    expect(one('aios_time_to_first_token_seconds_sum', { model: 'tiny' })).toBeGreaterThan(0);
    expect(one('aios_tokens_per_second_count', { model: 'tiny' })).toBeGreaterThan(0);
    expect(one('aios_completion_tokens_total', { model: 'tiny' })).toBeGreaterThan(100);
    expect(one('aios_model_actual_bytes', { model: 'tiny' })).toBeGreaterThan(10_000_000);
    expect(one('aios_model_estimated_bytes', { model: 'tiny' })).toBeGreaterThan(10_000_000);
    expect(one('aios_model_vram_actual_bytes', { model: 'tiny' })).toBe(0); // CPU only
    expect(one('aios_model_loads_total', { model: 'catalog-tiny', result: 'ok' })).toBe(1);
    expect(one('aios_model_load_seconds_count', { model: 'catalog-tiny' })).toBe(1);
    expect(one('aios_model_unloads_total', { model: 'catalog-tiny', reason: 'request' })).toBe(1);
    expect(one('aios_model_state', { model: 'tiny', state: 'ready' })).toBe(1);
    expect(one('aios_child_metrics_up', { model: 'tiny' })).toBe(1);
    // The child's own counters, re-exported with the model label.
    expect(one('llamacpp:tokens_predicted_total', { model: 'tiny' })).toBeGreaterThan(100);
    expect(byName.get('llamacpp:tokens_predicted')!.help).toMatch(/generation tokens/);
  });

  it('scraping neither loads models nor keeps them from going idle', { timeout: 60_000 }, async () => {
    const r = await openai.chat.completions.create({ model: 'tactical', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 });
    expect(r.model).toBe('tactical');
    const { samples } = await scrape();
    expect(samples('llamacpp:prompt_tokens_total').map((m) => m.labels.model).sort()).toEqual(['tactical', 'tiny']);
    // Scrape every 100 ms while the tactical model's 3 s idle timer runs: the timer is not pushed
    // back, and the model unloads on time.
    const tactical = () => daemon.service.models().find((m) => m.name === 'tactical');
    const idleUntil = tactical()!.idleUntil;
    expect(idleUntil).toBeGreaterThan(Date.now());
    let scrapes = 0;
    while (tactical() && Date.now() - idleUntil < 10_000) {
      await scrape();
      scrapes++;
      const t = tactical();
      if (t?.state === 'ready') expect(t.idleUntil).toBe(idleUntil);
      await new Promise((res) => setTimeout(res, 100));
    }
    expect(scrapes).toBeGreaterThan(5);
    expect(tactical()).toBeUndefined();
    expect(Date.now() - idleUntil).toBeLessThan(3_000); // the health loop (500 ms) unloaded it when due
    // and scraping after the unload does not bring it back
    for (let i = 0; i < 5; i++) await scrape();
    expect(daemon.service.models().map((m) => m.name)).toEqual(['tiny']);
    const after = await scrape();
    expect(after.samples('llamacpp:prompt_tokens_total').map((m) => m.labels.model)).toEqual(['tiny']);
    expect(after.samples('aios_requests_total', { model: 'tactical', status: 'ok' }).map((m) => m.value)).toEqual([1]);
  });

  it('a streamed request that has to load its model first gets SSE progress comments, which the openai client skips', { timeout: 60_000 }, async () => {
    expect(daemon.service.models().map((m) => m.name)).toEqual(['tiny']);
    const r = await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tactical', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, stream: true }) });
    expect(r.status).toBe(200);
    const raw = await r.text();
    const progress = [...raw.matchAll(/^: aios-progress (.*)$/gm)].map((m) => JSON.parse(m[1]!) as { model: string; phase: string; bytes: number; total: number });
    expect(progress.length).toBeGreaterThanOrEqual(1);
    expect(progress[0]).toMatchObject({ model: 'tactical', phase: 'load' });
    expect(raw.indexOf(': aios-progress')).toBeLessThan(raw.indexOf('data: {'));
    expect(raw.trimEnd().endsWith('data: [DONE]')).toBe(true);
    // the same through the SDK (model loaded again after an unload would do the same; here it is warm)
    const s = await openai.chat.completions.create({ model: 'tactical', messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, stream: true });
    let n = 0;
    let finish: string | null | undefined;
    for await (const c of s) {
      if (c.choices[0]?.delta?.content) n++;
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe('length');
    expect(n).toBeGreaterThan(0);
  });

  it('stops cleanly: in-flight streams finish, then the port is closed', { timeout: 60_000 }, async () => {
    const s = await openai.chat.completions.create({ model: 'tiny', messages: [{ role: 'user', content: 'x' }], max_tokens: 12, stream: true });
    const done = (async () => {
      let finish: string | null | undefined;
      for await (const c of s) finish = c.choices[0]?.finish_reason ?? finish;
      return finish;
    })();
    await daemon.stop();
    expect(await done).toBe('length');
    const refused = await fetch(`${base}/health`).then(() => 'answered', (e: Error & { cause?: { code?: string } }) => e.cause?.code);
    expect(refused).toBe('ECONNREFUSED');
  });
});

describe('aios-runtime HTTP API under a full queue', () => {
  let d2: Daemon;
  afterAll(async () => {
    await d2?.stop();
  });

  it('answers 429 with Retry-After when the model\'s queue is full (the openai client gets RateLimitError)', { timeout: 60_000 }, async () => {
    const config = RuntimeConfigSchema.parse({
      runtime: { llama_server: llamaServer, socket: '', listen: '', http_listen: '127.0.0.1:0', health_interval: '1s', max_queue_per_model: 1, max_queue_total: 8 },
      models: { model_dir: dir, operational: { name: 'tiny.gguf', parallel: 1, ctx_size: 512 } },
    });
    d2 = await startDaemon(config, { log: () => {} });
    const url = `http://127.0.0.1:${d2.http!.port}`;
    const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'x', maxRetries: 0 });
    const long = { model: 'tiny', messages: [{ role: 'user' as const, content: 'Write a long story.' }], max_tokens: 200, temperature: 1, stream: true as const, ...({ ignore_eos: true } as object) };
    const reqs: RuntimeEventMap['request'][0][] = [];
    d2.service.events.on('request', (r) => reqs.push(r));
    const a = await client.chat.completions.create(long); // holds the one slot
    const ai = a[Symbol.asyncIterator]();
    await ai.next();
    const b = client.chat.completions.create(long); // waits in the queue (its one place)
    while (!d2.service.queueSnapshot().some((q) => q.depth > 0)) await new Promise((r) => setTimeout(r, 10));
    const c = await client.chat.completions.create(long).then(() => undefined, (e: unknown) => e as InstanceType<typeof OpenAI.APIError>);
    expect(c).toBeInstanceOf(OpenAI.RateLimitError);
    expect(c!.status).toBe(429);
    expect(c!.code).toBe('resource_exhausted');
    expect(c!.headers?.get('retry-after')).toBe('1');
    // the other two are served
    while (!(await ai.next()).done);
    let n = 0;
    let finish: string | null | undefined;
    for await (const x of await b) {
      if (x.choices[0]?.delta?.content) n++;
      finish = x.choices[0]?.finish_reason ?? finish;
    }
    expect(finish).toBe('length'); // all 200 tokens (a few may merge into one chunk: split UTF-8)
    expect(n).toBeGreaterThan(150);
    expect(reqs.map((r) => r.status).sort()).toEqual(['ok', 'ok', 'rejected']);
  });
});
