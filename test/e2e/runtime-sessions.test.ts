/**
 * Saved sessions end to end (src/runtime/sessions.ts): the real daemon as its own process
 * (`aios runtime serve`, restarted with SIGTERM like systemctl restart), real llama-server children
 * (slot save/restore), the synthesized tiny model, real gRPC and HTTP clients. Greedy answers of a
 * session's turn are compared with the same conversation sent whole, without a session.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import { runtimeFixture, type RuntimeFixture } from './runtime-fixture.js';
import { unary, type RuntimeClient, type InferResponse } from '../../src/runtime/client.js';
import { RuntimeProcess } from './runtime-process.js';
import { freePort } from '../../src/util/net.js';
import { estimateFootprint } from '../../src/runtime/memory.js';
import { cli, tmp } from '../helpers.js';

const dir = tmp('aios-sessions-');
const sock = join(dir, 'runtime.sock');
const address = `unix:${sock}`;
const config = join(dir, 'config.toml');
const sessions = join(dir, 'sessions');
let fx: RuntimeFixture;
const rt = new RuntimeProcess(config, address);
let client: RuntimeClient;
let httpPort = 0;
let sha = '';

const LONG = Array.from({ length: 12 }, (_, i) => `Paragraph ${i + 1}: the quick brown fox jumps over the lazy dog while the river runs past the old mill and the farmers bring in the harvest before the autumn rain.`).join('\n');

interface Settings {
  ctx?: number;
  maxBytes?: string;
  dir?: string;
  budget?: number;
  tacticalIdle?: string;
}

async function start(s: Settings = {}): Promise<void> {
  writeFileSync(
    config,
    [
      '[runtime]',
      `llama_server = "${fx.llamaServer}"`,
      `socket = "${sock}"`,
      'listen = ""',
      `http_listen = "127.0.0.1:${httpPort}"`,
      'health_interval = "1s"',
      'load_timeout = "60s"',
      `sessions_dir = "${s.dir ?? sessions}"`,
      `sessions_max_bytes = "${s.maxBytes ?? '64M'}"`,
      ...(s.budget ? [`memory_budget = "${s.budget}"`] : []),
      '[models]',
      `model_dir = "${dir}"`,
      '[models.operational]',
      'name = "tiny.gguf"',
      'parallel = 2',
      `ctx_size = ${s.ctx ?? 1024}`,
      '[models.tactical]',
      'name = "tactical.gguf"',
      'parallel = 1',
      'ctx_size = 1024',
      `unload_after_idle = "${s.tacticalIdle ?? '2s'}"`,
      '',
    ].join('\n'),
  );
  client = await rt.start();
}

/** SIGTERM and wait, as `systemctl restart` does before starting it again. */
const stop = () => rt.stop();

type Reply = InferResponse & { session: { id: string; cache: string; restored_tokens: number; cached_tokens: number; saved: boolean; note: string; restore_ms: number } };
const infer = (req: Record<string, unknown>) => unary(client, 'Infer', { intelligence_level: 'operational', max_tokens: 12, temperature: 0, ...req }, 60_000) as Promise<Reply>;

async function http(body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; text: string }> {
  const r = await fetch(`http://127.0.0.1:${httpPort}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
  return { status: r.status, headers: r.headers, text: await r.text() };
}

/**
 * The same conversation sent whole, without a session, evaluated from an empty slot
 * (cache_prompt: false): its prompt size, and the greedy answer a session turn that restored
 * nothing must give (such a turn starts from an empty slot too, so both evaluate the same tokens in
 * the same batches; a restored turn's cache was partly computed token by token, and with random
 * weights greedy ties may then break differently, so only its prompt is compared).
 */
async function whole(model: string, messages: { role: string; content: string }[]): Promise<{ text: string; promptTokens: number }> {
  const r = await http({ model, messages, max_tokens: 12, temperature: 0, cache_prompt: false });
  expect(r.status, r.text).toBe(200);
  const j = JSON.parse(r.text) as { choices: { message: { content: string } }[]; usage: { prompt_tokens: number } };
  return { text: j.choices[0]!.message.content, promptTokens: j.usage.prompt_tokens };
}

const grpcCode = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (e) {
    return { code: (e as grpc.ServiceError).code, details: (e as grpc.ServiceError).details };
  }
  throw new Error('expected the call to fail');
};

describe('saved sessions', () => {
  // The conversation of session "chat" as the test expects the runtime to keep it.
  const chat: { role: string; content: string }[] = [];
  let firstPrompt = 0;

  beforeAll(async () => {
    fx = await runtimeFixture(dir);
    copyFileSync(join(dir, 'tiny.gguf'), join(dir, 'tactical.gguf'));
    sha = createHash('sha256').update(readFileSync(join(dir, 'tiny.gguf'))).digest('hex');
    httpPort = await freePort();
    await start();
  }, 20 * 60_000);

  afterAll(async () => {
    await rt.close();
    try {
      execFileSync('umount', [join(dir, 'full')], { stdio: 'ignore' });
    } catch {
      // not mounted
    }
  });

  it('a first turn saves the conversation and the KV state (mode 0600, under the model file sha256)', async () => {
    const r = await infer({ prompt: LONG, session_id: 'chat' });
    expect(r.session).toMatchObject({ id: 'chat', cache: 'new', restored_tokens: 0, saved: true, note: '' });
    expect(r.prompt_tokens).toBeGreaterThan(250);
    firstPrompt = r.prompt_tokens;
    chat.push({ role: 'user', content: LONG }, { role: 'assistant', content: r.text });
    const state = join(sessions, sha, 'chat');
    expect(statSync(state).mode & 0o777).toBe(0o600);
    expect(statSync(`${state}.json`).mode & 0o777).toBe(0o600);
    expect(statSync(state).size).toBeGreaterThan(100_000);
    const rec = JSON.parse(readFileSync(`${state}.json`, 'utf8')) as { messages: unknown[]; key: { modelSha256: string; ctxSize: number } };
    expect(rec.messages).toEqual(chat);
    expect(rec.key).toMatchObject({ modelSha256: sha, ctxSize: 1024 });
    // llama-server's temporary names do not stay behind
    expect(readdirSync(sessions).filter((f) => f.startsWith('_'))).toEqual([]);
  });

  it('the next turn restores the state and llama-server reuses it: the whole conversation is the prompt, only the new turn is evaluated', async () => {
    const r = await infer({ prompt: 'And what happened next?', session_id: 'chat' });
    chat.push({ role: 'user', content: 'And what happened next?' });
    const want = await whole('tiny', chat);
    chat.push({ role: 'assistant', content: r.text });
    expect(r.session.cache, r.session.note).toBe('hit');
    expect(r.session.restored_tokens).toBeGreaterThanOrEqual(firstPrompt);
    // The prompt is the whole conversation, of which llama-server evaluated only what came after the first turn's prompt.
    expect(r.prompt_tokens).toBeGreaterThan(firstPrompt + 5);
    expect(r.session.cached_tokens).toBeGreaterThanOrEqual(firstPrompt);
    expect(r.prompt_tokens).toBe(want.promptTokens); // the whole conversation was the prompt
  });

  it('refuses a session id that is not [A-Za-z0-9_-]{1,64} (gRPC INVALID_ARGUMENT, HTTP 400), on every path', async () => {
    for (const id of ['../etc/passwd', 'a.b', 'x'.repeat(65)]) {
      const e = await grpcCode(infer({ prompt: 'hi', session_id: id }));
      expect(e.code).toBe(3);
      expect(e.details).toMatch(/^session_id: must be 1-64 characters of A-Z a-z 0-9 _ -/);
    }
    expect((await grpcCode(unary(client, 'DeleteSession', { session_id: '../chat' }))).code).toBe(3);
    expect((await grpcCode(unary(client, 'RestoreSession', { session_id: '' }))).code).toBe(3);
    const body = await http({ messages: [{ role: 'user', content: 'hi' }], session: 'a/b' });
    expect(body.status).toBe(400);
    expect(JSON.parse(body.text).error.message).toMatch(/^session: must be 1-64 characters/);
    expect((await http({ messages: [{ role: 'user', content: 'hi' }] }, { 'x-session': 'x y' })).status).toBe(400);
    expect(existsSync(join(dir, 'etc'))).toBe(false);
  });

  it('HTTP: the X-Session header and the body field continue one conversation, streamed or not', async () => {
    const a = await http({ messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: LONG }], max_tokens: 12, temperature: 0 }, { 'x-session': 'web' });
    expect(a.status, a.text).toBe(200);
    expect(a.headers.get('x-aios-session-state')).toBe('new');
    const first = JSON.parse(a.text) as { choices: { message: { content: string } }[]; usage: { prompt_tokens: number } };
    // Streamed, with the body field this time; the client sends only the new turn.
    const b = await http({ session: 'web', stream: true, messages: [{ role: 'user', content: 'Go on.' }], max_tokens: 12, temperature: 0 });
    expect(b.status, b.text).toBe(200);
    expect(b.headers.get('x-aios-session-state')).toBe('restored');
    const events = b.text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)) as { choices: { delta?: { content?: string } }[]; timings?: { cache_n: number; prompt_n: number } });
    const timings = events.find((e) => e.timings)!.timings!;
    expect(timings.cache_n).toBeGreaterThanOrEqual(first.usage.prompt_tokens); // llama-server's own figures: the restored prefix was used
    const text = events.map((e) => e.choices[0]?.delta?.content ?? '').join('');
    expect(timings.cache_n + timings.prompt_n).toBe((await whole('tiny', [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: LONG }, { role: 'assistant', content: first.choices[0]!.message.content }, { role: 'user', content: 'Go on.' }])).promptTokens);
    expect(text.length).toBeGreaterThan(0);
    // A different system prompt later is refused, not silently mixed in.
    const c = await http({ session: 'web', messages: [{ role: 'system', content: 'You are verbose.' }, { role: 'user', content: 'Hi' }] });
    expect(c.status).toBe(400);
    expect(c.text).toMatch(/system prompt was set by its first turn/);
    const list = await unary(client, 'ListSessions', {});
    expect(list.sessions.find((s) => s.id === 'web')).toMatchObject({ turns: 2, messages: 5, last_cache: 'hit', model: 'tiny' });
  });

  it('a model unloaded for idleness gets the state back when it is loaded again', async () => {
    const a = await infer({ intelligence_level: 'tactical', prompt: LONG, session_id: 'tac' });
    expect(a.session.cache).toBe('new');
    const end = Date.now() + 30_000;
    while ((await unary(client, 'ListModels', {})).models.some((m) => m.name === 'tactical')) {
      if (Date.now() > end) throw new Error(`tactical was not unloaded for idleness:\n${rt.log}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    const b = await infer({ intelligence_level: 'tactical', prompt: 'Continue.', session_id: 'tac' });
    expect(b.session.cache, b.session.note).toBe('hit');
    expect(b.session.cached_tokens).toBeGreaterThanOrEqual(a.prompt_tokens);
  });

  it('RestoreSession, SaveSession, ListSessions, DeleteSession and `aios runtime sessions ls|rm`', async () => {
    const r = await unary(client, 'RestoreSession', { session_id: 'chat' });
    expect(r.outcome).toMatchObject({ id: 'chat', cache: 'hit', saved: true });
    expect(r.outcome!.restored_tokens).toBeGreaterThan(firstPrompt);
    expect(r.info).toMatchObject({ id: 'chat', model: 'tiny', model_sha256: sha, turns: 2, messages: 4, ctx_size: 1024 });
    // SaveSession with the state present: nothing to do. Without it: the conversation is evaluated and saved.
    expect((await unary(client, 'SaveSession', { session_id: 'chat' })).outcome).toMatchObject({ saved: true, note: 'already saved after its last answer' });
    const state = join(sessions, sha, 'chat');
    const size = statSync(state).size;
    execFileSync('rm', [state]);
    const s = await unary(client, 'SaveSession', { session_id: 'chat' });
    expect(s.outcome).toMatchObject({ cache: 'new', saved: true });
    expect(statSync(state).size).toBeGreaterThanOrEqual(size * 0.9);
    const ls = await cli(['runtime', 'sessions', 'ls', '--json', '-a', address]);
    expect(ls.exitCode, ls.stderr).toBe(0);
    const listed = JSON.parse(ls.stdout) as { sessions: { id: string }[]; dir: string };
    expect(listed.sessions.map((x) => x.id).sort()).toEqual(['chat', 'tac', 'web']);
    expect(listed.dir).toBe(sessions);
    // The model lists count each model's sessions and the bytes of their saved states (ListModels:
    // loaded models; /v1/models: every configured one, tactical included while it is unloaded).
    const kv = (model: string) => (listed.sessions as unknown as { model: string; kv_bytes: number }[]).filter((x) => x.model === model).reduce((a, x) => a + Number(x.kv_bytes), 0);
    const tiny = (await unary(client, 'ListModels', {})).models.find((m) => m.name === 'tiny')!;
    expect([tiny.sessions, tiny.session_states, Number(tiny.session_bytes)]).toEqual([2, 2, kv('tiny')]);
    expect(kv('tiny')).toBeGreaterThan(0);
    const v1 = (await (await fetch(`http://127.0.0.1:${httpPort}/v1/models`)).json()) as { data: { id: string; sessions?: number; session_states?: number; session_bytes?: number }[] };
    expect(v1.data.find((m) => m.id === 'tiny')).toMatchObject({ sessions: 2, session_states: 2, session_bytes: kv('tiny') });
    expect(v1.data.find((m) => m.id === 'tactical')).toMatchObject({ sessions: 1, session_states: 1, session_bytes: kv('tactical') });
    const ps = await cli(['ps', '-a', address]);
    expect(ps.stdout.split('\n')[0]).toMatch(/\bADAPTERS\s+SESSIONS$/);
    expect(ps.stdout.split('\n').find((l) => l.startsWith('tiny '))).toMatch(/\s-\s+2 \(\d+(\.\d)? [KM]iB\)$/);
    const table = await cli(['runtime', 'sessions', '-a', address]);
    expect(table.stdout).toMatch(/^ID\s+MODEL\s+TURNS/);
    expect(table.stdout).toMatch(/3 session\(s\), .* MiB of 64\.0 MiB \(runtime.sessions_max_bytes\)/);
    const rm = await cli(['runtime', 'sessions', 'rm', 'web', '-a', address]);
    expect(rm.exitCode, rm.stderr).toBe(0);
    expect(rm.stdout).toBe('deleted session web');
    const again = await cli(['runtime', 'sessions', 'rm', 'web', '-a', address]);
    expect(again.exitCode).toBe(1);
    expect(again.stderr).toMatch(/sessions rm: web: no saved session web/);
    expect((await grpcCode(unary(client, 'RestoreSession', { session_id: 'nope' }))).code).toBe(5);
    // `aios runtime infer --session`: the outcome on stderr.
    const one = await cli(['runtime', 'infer', '--session', 'cli1', '-n', '4', '-t', '0', '-a', address, LONG]);
    expect(one.exitCode, one.stderr).toBe(0);
    expect(one.stderr).toMatch(/\[tiny, \d+ tokens, session cli1: new\]/);
    const two = await cli(['runtime', 'infer', '--session', 'cli1', '-n', '4', '-t', '0', '-a', address, 'More.']);
    expect(two.stderr).toMatch(/\[tiny, \d+ tokens, session cli1: hit \(\d+ tokens restored, \d+ reused\)\]/);
    expect((await cli(['runtime', 'sessions', 'rm', 'cli1', '-a', address])).exitCode).toBe(0);
  });

  it('survives a daemon restart (SIGTERM, a new process): the next turn restores and reuses the state', async () => {
    await stop();
    await start();
    const r = await infer({ prompt: 'Tell me more.', session_id: 'chat' });
    chat.push({ role: 'user', content: 'Tell me more.' });
    const want = await whole('tiny', chat);
    chat.push({ role: 'assistant', content: r.text });
    expect(r.session.cache, r.session.note).toBe('hit');
    expect(r.session.cached_tokens).toBeGreaterThan(firstPrompt);
    expect(r.prompt_tokens).toBe(want.promptTokens);
  });

  it('a corrupt or truncated state is discarded with a warning; the full prompt gives the right answer', async () => {
    const state = join(sessions, sha, 'chat');
    const buf = readFileSync(state);
    buf.fill(0x55, buf.length >> 1, (buf.length >> 1) + 4096);
    writeFileSync(state, buf);
    const r = await infer({ prompt: 'Why?', session_id: 'chat' });
    expect(r.session.cache).toBe('discarded');
    expect(r.session.note).toMatch(/the saved state of session chat was discarded: the state file's sha256 .* \(corrupt\); the whole conversation \(6 messages\) is evaluated again/);
    expect(rt.log).toMatch(/sessions: the saved state of session chat was discarded/);
    chat.push({ role: 'user', content: 'Why?' });
    const want = await whole('tiny', chat);
    chat.push({ role: 'assistant', content: r.text });
    expect(r.text).toBe(want.text);
    expect(r.prompt_tokens).toBe(want.promptTokens);
    expect(r.session.cached_tokens).toBe(0); // evaluated from an empty slot
    expect(r.session.saved).toBe(true); // and the new state is good again
    truncateSync(state, statSync(state).size >> 1);
    const t = await infer({ prompt: 'Really?', session_id: 'chat' });
    expect(t.session.cache).toBe('discarded');
    expect(t.session.note).toMatch(/truncated or replaced/);
    chat.push({ role: 'user', content: 'Really?' });
    const want2 = await whole('tiny', chat);
    chat.push({ role: 'assistant', content: t.text });
    expect(t.text).toBe(want2.text);
    expect(t.prompt_tokens).toBe(want2.promptTokens);
  });

  it('a different context size discards the state and says so; sessions_max_bytes removes the least recently used states', async () => {
    const kv = statSync(join(sessions, sha, 'chat')).size;
    await stop();
    // Room for "chat" and about one first turn more.
    await start({ ctx: 2048, maxBytes: String(Math.round(kv * 1.3)) });
    const r = await infer({ prompt: 'Summarise.', session_id: 'chat' });
    expect(r.session.cache).toBe('discarded');
    expect(r.session.note).toMatch(/it was saved for tiny with a different key \(context 1024 → 2048 tokens\)/);
    chat.push({ role: 'user', content: 'Summarise.' });
    const want = await whole('tiny', chat);
    chat.push({ role: 'assistant', content: r.text });
    expect(r.text).toBe(want.text);
    expect(r.prompt_tokens).toBe(want.promptTokens);
    // The cap: "chat" (just saved) fits alone; two more sessions push the older states out, LRU first.
    await infer({ prompt: LONG, session_id: 'lru1' });
    await infer({ prompt: LONG, session_id: 'lru2' });
    const list = await unary(client, 'ListSessions', {});
    const by = Object.fromEntries(list.sessions.map((s) => [s.id, Number(s.kv_bytes)]));
    expect(by.lru2).toBeGreaterThan(0);
    expect(by.chat).toBe(0); // its state went; its conversation stays
    expect(list.sessions.find((s) => s.id === 'chat')!.messages).toBe(chat.length);
    expect(Number(list.total_bytes)).toBeLessThanOrEqual(Math.round(kv * 1.3));
    expect(rt.log).toMatch(/removed the saved state of chat \(\d+ bytes, least recently used\)/);
  });

  it('disk full: the save fails with a logged warning and the request still succeeds', async () => {
    await stop();
    const full = join(dir, 'full');
    mkdirSync(full, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k,mode=0700', 'tmpfs', full]);
    await start({ dir: full });
    const r = await infer({ prompt: LONG, session_id: 'nospace' });
    expect(r.text.length).toBeGreaterThan(0);
    expect(r.session).toMatchObject({ cache: 'new', saved: false });
    expect(rt.log).toMatch(/sessions: nospace: the KV state was not saved \(.*\); the request succeeds/);
    // The conversation was kept (small); the next turn says there is no state and evaluates it whole.
    const n = await infer({ prompt: 'More.', session_id: 'nospace' });
    expect(n.session.cache).toBe('none');
    expect(readdirSync(full).filter((f) => f.startsWith('_'))).toEqual([]);
    await stop();
    execFileSync('umount', [full]);
  });

  it('a model evicted under memory pressure gets the state back when a request loads it again', async () => {
    // Room for the pinned operational model, tactical and half of a third model: loading the third evicts tactical.
    copyFileSync(join(dir, 'tiny.gguf'), join(dir, 'third.gguf'));
    const est = async (ctxSize: number, parallel: number) => (await estimateFootprint(join(dir, 'tiny.gguf'), { ctxSize, parallel, gpuLayers: 0 })).ramBytes;
    await start({ budget: Math.round((await est(1024, 2)) + (await est(1024, 1)) + 0.5 * (await est(2048, 2))), tacticalIdle: '10m' });
    const a = await infer({ intelligence_level: 'tactical', prompt: LONG, session_id: 'ev' });
    expect(a.session.cache).toBe('new');
    await unary(client, 'LoadModel', { model_name: 'third', model_path: join(dir, 'third.gguf') });
    const loaded = (await unary(client, 'ListModels', {})).models.map((m) => m.name).sort();
    expect(loaded, rt.log).toEqual(['third', 'tiny']);
    expect(rt.log).toMatch(/evicting tactical \(idle since/);
    const b = await infer({ intelligence_level: 'tactical', prompt: 'Continue.', session_id: 'ev' });
    expect(b.session.cache, b.session.note).toBe('hit');
    expect(b.session.cached_tokens).toBeGreaterThanOrEqual(a.prompt_tokens);
    expect((await unary(client, 'ListModels', {})).models.map((m) => m.name).sort()).toEqual(['tactical', 'tiny']); // and third made room
    await stop();
  });
});
