/**
 * LoRA adapters per request, end to end: the real daemon with a real llama-server child started with
 * every configured adapter loaded unapplied, adapters synthesized by `synthLora` (what
 * `aios models synth-lora` runs) for the synthesized tiny model, requests through the real gRPC
 * client (client.ts) and HTTP (fetch), compared with fresh llama-server processes started with the
 * adapter applied from the start. Greedy decoding (temperature 0) throughout.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, createReadStream, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { createHash } from 'node:crypto';
import { stringify } from 'smol-toml';
import { join } from 'node:path';
import { runtimeFixture, type RuntimeFixture } from './runtime-fixture.js';
import { synthLora } from '../../src/models/synth-lora.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon, type Daemon } from '../../src/runtime/daemon.js';
import { connectRuntime, unary, type RuntimeClient } from '../../src/runtime/client.js';
import { freePort } from '../../src/util/net.js';
import { postChild, readAll } from '../../src/runtime/upstream.js';
import { cli, tmp } from '../helpers.js';

const dir = tmp('aios-runtime-adapters-');
let fx: RuntimeFixture;
let daemon: Daemon;
let client: RuntimeClient;
let http = '';
let files: Server;
let zeroText = '';
// eslint-disable-next-line @typescript-eslint/no-explicit-any
let raw: any;
const PROMPT = 'Tell me a story about a lighthouse keeper.';
const MAX = 24;
const DESCRIPTIONS = { a: 'writes SQL queries for a sales database', b: 'summarises legal contracts in plain words', zero: 'does nothing at all' };

type Applied = { name: string; scale: number; score?: number };
async function infer(o: { adapters?: { name: string; scale?: number }[]; task?: string; prompt?: string } = {}): Promise<{ text: string; adapters_applied: Applied[] }> {
  const r = await unary(client, 'Infer', { prompt: o.prompt ?? PROMPT, max_tokens: MAX, temperature: 0, adapters: o.adapters ?? [], task: o.task ?? '' } as never);
  return r as unknown as { text: string; adapters_applied: Applied[] };
}

/** A fresh llama-server on the tiny model with `lora` applied at scale 1 from the start (no adapter: none), its greedy answer to PROMPT. */
async function fresh(lora?: string): Promise<string> {
  const port = await freePort();
  const args = ['-m', join(dir, 'tiny.gguf'), '--host', '127.0.0.1', '--port', String(port), '-c', '512', '-t', '2', '--parallel', '1', '--no-webui', ...(lora ? ['--lora', join(dir, lora)] : [])];
  const p: ChildProcess = spawn(fx.llamaServer, args, { stdio: 'ignore' });
  try {
    for (let i = 0; ; i++) {
      const ok = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.status === 200, () => false);
      if (ok) break;
      if (i > 600) throw new Error('fresh llama-server did not become ready');
      await new Promise((r) => setTimeout(r, 100));
    }
    const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: PROMPT }], max_tokens: MAX, temperature: 0, seed: 1 }),
    });
    const j = (await r.json()) as { choices: { message: { content: string } }[] };
    return j.choices[0]!.message.content;
  } finally {
    p.kill('SIGKILL');
  }
}

describe('aios-runtime LoRA adapters', () => {
  beforeAll(async () => {
    fx = await runtimeFixture(dir);
    const base = join(dir, 'tiny.gguf');
    await synthLora({ base, out: join(dir, 'zero.gguf'), rank: 8, zeroB: true, seed: 3, ggufPy: fx.tools.ggufPy });
    await synthLora({ base, out: join(dir, 'a.gguf'), rank: 8, seed: 1, ggufPy: fx.tools.ggufPy });
    await synthLora({ base, out: join(dir, 'b.gguf'), rank: 8, seed: 2, ggufPy: fx.tools.ggufPy });
    await synthLora({ base, out: join(dir, 'wrong.gguf'), rank: 8, seed: 4, arch: 'qwen2', ggufPy: fx.tools.ggufPy });
    copyFileSync(base, join(dir, 'embed.gguf'));
    // A catalog whose entry names an adapter, both served from here (runtime.auto_install fetches them).
    mkdirSync(join(dir, 'www'));
    copyFileSync(base, join(dir, 'www', 'cat-tiny.gguf'));
    copyFileSync(join(dir, 'a.gguf'), join(dir, 'www', 'cat-a.gguf'));
    files = createServer((req, res) => {
      const f = join(dir, 'www', (req.url ?? '').replace(/[^A-Za-z0-9._-]/g, ''));
      if (!existsSync(f)) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': statSync(f).size });
      createReadStream(f).pipe(res);
    });
    await new Promise<void>((r) => files.listen(0, '127.0.0.1', r));
    const url = (f: string) => `http://127.0.0.1:${(files.address() as { port: number }).port}/${f}`;
    const sha = (f: string) => createHash('sha256').update(readFileSync(join(dir, 'www', f))).digest('hex');
    writeFileSync(
      join(dir, 'catalog.toml'),
      stringify({
        model: [
          {
            id: 'cat-tiny', level: 'tactical', file: 'cat-tiny.gguf', url: url('cat-tiny.gguf'), size: statSync(base).size, sha256: sha('cat-tiny.gguf'), license: 'mit', quantization: 'F32', context_length: 512, verified: true,
            adapters: [{ name: 'a', url: url('cat-a.gguf'), size: statSync(join(dir, 'a.gguf')).size, sha256: sha('cat-a.gguf'), description: DESCRIPTIONS.a, scale: 0.5, license: 'mit' }],
          },
          // Its adapter's checksum is wrong: it is never installed; the model is.
          {
            id: 'cat-bad', level: 'tactical', file: 'cat-bad.gguf', url: url('cat-tiny.gguf'), size: statSync(base).size, sha256: sha('cat-tiny.gguf'), license: 'mit', quantization: 'F32', context_length: 512, verified: true,
            adapters: [{ name: 'x', url: url('cat-a.gguf'), size: 0, sha256: 'f'.repeat(64), license: 'mit' }],
          },
        ],
      }),
    );
    raw = {
      system: { log_level: 'debug' },
      runtime: { llama_server: fx.llamaServer, socket: '', listen: '127.0.0.1:0', http_listen: '127.0.0.1:0', health_interval: '1s', load_timeout: '60s', request_timeout: '60s', catalog: join(dir, 'catalog.toml'), auto_install: true },
      models: {
        model_dir: dir,
        operational: {
          name: 'tiny.gguf',
          parallel: 1,
          threads: 2,
          ctx_size: 512,
          adapters: [
            { name: 'zero', file: 'zero.gguf', description: DESCRIPTIONS.zero },
            { name: 'a', file: 'a.gguf', description: DESCRIPTIONS.a },
            { name: 'b', file: 'b.gguf', description: DESCRIPTIONS.b },
            { name: 'wrong', file: 'wrong.gguf', description: 'an adapter for another architecture' },
          ],
        },
        // A random model embeds deterministically: a task with an adapter's exact description matches it (cosine 1).
        embedding: { name: 'embed.gguf', threads: 2, min_similarity: 0.999, max_adapters: 1 },
      },
    };
    writeFileSync(join(dir, 'config.toml'), stringify(raw));
    const { appendFileSync } = await import('node:fs');
    daemon = await startDaemon(RuntimeConfigSchema.parse(raw), { log: (l) => appendFileSync(join(dir, 'daemon.log'), `${new Date().toISOString()} ${l}\n`), service: { configFile: join(dir, 'config.toml') } });
    client = connectRuntime(`127.0.0.1:${daemon.listening.tcpPort}`);
    http = `http://127.0.0.1:${daemon.http!.port}`;
  }, 20 * 60_000);

  afterAll(async () => {
    client?.close();
    await daemon?.stop();
    files?.close();
  });

  it('a zero lora_b adapter leaves greedy output byte-identical; a non-zero one changes it; the answer reports what was applied', async () => {
    const none = await infer();
    expect(none.text.length).toBeGreaterThan(0);
    expect(none.adapters_applied).toEqual([]);
    const zero = await infer({ adapters: [{ name: 'zero' }] });
    expect(zero.text).toBe(none.text);
    zeroText = zero.text;
    expect(zero.adapters_applied).toEqual([{ name: 'zero', scale: 1 }]);
    const a = await infer({ adapters: [{ name: 'a' }] });
    expect(a.text).not.toBe(none.text);
    expect(a.adapters_applied).toEqual([{ name: 'a', scale: 1 }]);
  }, 120_000);

  it('A, then B, then none on consecutive requests (one slot) equal three fresh llama-server processes configured that way', async () => {
    const seq = [await infer({ adapters: [{ name: 'a' }] }), await infer({ adapters: [{ name: 'b' }] }), await infer()].map((r) => r.text);
    const want = [await fresh('a.gguf'), await fresh('b.gguf'), await fresh()];
    expect(seq).toEqual(want);
    expect(new Set(want).size).toBe(3);
  }, 180_000);

  it('an unknown adapter is INVALID_ARGUMENT naming it (gRPC) and 400 (HTTP); an adapter for another architecture was refused at load with the reason', async () => {
    const e = await infer({ adapters: [{ name: 'nope' }] }).catch((x: { code: number; details: string }) => x);
    expect((e as { code: number }).code).toBe(3);
    expect((e as { details: string }).details).toBe('adapters: unknown adapter "nope" for model tiny (configured: zero, a, b, wrong)');
    const r = await fetch(`${http}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], adapters: [{ name: 'nope' }] }) });
    expect(r.status).toBe(400);
    expect(((await r.json()) as { error: { message: string } }).error.message).toMatch(/unknown adapter "nope"/);
    const w = await infer({ adapters: [{ name: 'wrong' }] }).catch((x: { code: number; details: string }) => x);
    expect((w as { code: number }).code).toBe(9); // FAILED_PRECONDITION
    expect((w as { details: string }).details).toMatch(/"wrong" was refused when tiny was loaded: .*wrong\.gguf: it is for architecture "qwen2", the base model is "llama"/);
  }, 60_000);

  it('ListModels, /v1/models and `aios ps` list the model\'s adapters: the loaded ones, and the refused one with its reason', async () => {
    const tiny = (await unary(client, 'ListModels', {})).models.find((m) => m.name === 'tiny')!;
    expect(tiny.adapters.map((a) => [a.name, a.file, a.loaded, a.scale])).toEqual([
      ['zero', 'zero.gguf', true, 1],
      ['a', 'a.gguf', true, 1],
      ['b', 'b.gguf', true, 1],
      ['wrong', 'wrong.gguf', false, 1],
    ]);
    expect(tiny.adapters[1]).toMatchObject({ description: DESCRIPTIONS.a, refused: '' });
    expect(tiny.adapters[3]!.refused).toMatch(/wrong\.gguf: it is for architecture "qwen2", the base model is "llama"/);
    const listed = (await (await fetch(`${http}/v1/models`)).json()) as { data: { id: string; adapters?: { name: string; loaded: boolean; refused?: string; description: string }[] }[] };
    const h = listed.data.find((m) => m.id === 'tiny')!;
    expect(h.adapters!.map((a) => [a.name, a.loaded, !!a.refused])).toEqual([
      ['zero', true, false],
      ['a', true, false],
      ['b', true, false],
      ['wrong', false, true],
    ]);
    expect(h.adapters![2]!.description).toBe(DESCRIPTIONS.b);
    const ps = await cli(['ps', '-a', `127.0.0.1:${daemon.listening.tcpPort}`]);
    expect(ps.exitCode, ps.stderr).toBe(0);
    const lines = ps.stdout.split('\n');
    expect(lines[0]).toMatch(/\bADAPTERS\s+SESSIONS$/);
    expect(lines.find((l) => l.startsWith('tiny '))).toMatch(/\szero,a,b,wrong!\s+-$/);
    expect(ps.stdout).toMatch(/^tiny: adapter wrong refused: .*wrong\.gguf: it is for architecture "qwen2"/m);
  }, 60_000);

  it("a catalog model served by its id comes with its entry's adapter: fetched beside it (auto_install), loaded unapplied, applied by name at the entry's scale, listed", async () => {
    const r = (await unary(client, 'Infer', { model: 'cat-tiny', prompt: PROMPT, max_tokens: MAX, temperature: 0, adapters: [{ name: 'a' }] } as never)) as unknown as { text: string; model_used: string; adapters_applied: Applied[] };
    expect(r.model_used).toBe('cat-tiny');
    expect(r.adapters_applied).toEqual([{ name: 'a', scale: 0.5 }]);
    expect(readFileSync(join(dir, 'cat-tiny.lora-a.gguf')).equals(readFileSync(join(dir, 'a.gguf')))).toBe(true);
    // the same weights and adapter as tiny's "a" at 0.5: the same greedy answer
    expect(r.text).toBe((await infer({ adapters: [{ name: 'a', scale: 0.5 }] })).text);
    expect(r.text).not.toBe((await unary(client, 'Infer', { model: 'cat-tiny', prompt: PROMPT, max_tokens: MAX, temperature: 0 } as never)).text);
    const listed = (await unary(client, 'ListModels', {})).models.find((m) => m.name === 'cat-tiny')!;
    expect(listed.adapters.map((a) => [a.name, a.file, a.loaded, a.scale, a.description])).toEqual([['a', 'cat-tiny.lora-a.gguf', true, 0.5, DESCRIPTIONS.a]]);
    await expect(unary(client, 'Infer', { model: 'cat-tiny', prompt: 'hi', adapters: [{ name: 'b' }] } as never)).rejects.toMatchObject({ code: 3, details: 'adapters: unknown adapter "b" for model cat-tiny (configured: a)' });
    await unary(client, 'UnloadModel', { model_name: 'cat-tiny' });
  }, 120_000);

  it("a catalog adapter that cannot be had (wrong checksum): the model is served without it, a request naming it is told why, PullModel fails naming it", async () => {
    const plain = (await unary(client, 'Infer', { model: 'cat-bad', prompt: PROMPT, max_tokens: MAX, temperature: 0 } as never)) as unknown as { text: string; model_used: string };
    expect(plain.model_used).toBe('cat-bad');
    expect(existsSync(join(dir, 'cat-bad.gguf'))).toBe(true);
    expect(existsSync(join(dir, 'cat-bad.lora-x.gguf'))).toBe(false);
    await expect(unary(client, 'Infer', { model: 'cat-bad', prompt: 'hi', adapters: [{ name: 'x' }] } as never)).rejects.toMatchObject({ code: 9, details: expect.stringMatching(/^adapters: cat-bad was started without adapters \(.*cat-bad\.lora-x\.gguf: ENOENT/) });
    expect((await unary(client, 'ListModels', {})).models.find((m) => m.name === 'cat-bad')!.adapters).toMatchObject([{ name: 'x', loaded: false, refused: expect.stringMatching(/ENOENT/) }]);
    const pulled = await new Promise<{ code: number; details: string } | undefined>((resolve) => {
      const call = client.PullModel({ model: 'cat-bad' });
      call.on('data', () => {});
      call.on('error', (e: { code: number; details: string }) => resolve(e));
      call.on('end', () => resolve(undefined));
    });
    expect(pulled).toMatchObject({ code: 9, details: expect.stringMatching(/^auto-install of adapter x of cat-bad failed: .*checksum mismatch/) });
    await unary(client, 'UnloadModel', { model_name: 'cat-bad' });
  }, 120_000);

  it('StreamInfer: the same text as Infer with the adapter, and the last chunk reports it', async () => {
    const chunks: { text: string; done: boolean; adapters_applied: Applied[] }[] = [];
    await new Promise<void>((resolve, reject) => {
      const call = client.StreamInfer({ prompt: PROMPT, max_tokens: MAX, temperature: 0, adapters: [{ name: 'b', scale: 0.5 }] } as never);
      call.on('data', (c: (typeof chunks)[number]) => chunks.push(c));
      call.on('error', reject);
      call.on('end', () => resolve());
    });
    expect(chunks.at(-1)!.done).toBe(true);
    expect(chunks.at(-1)!.adapters_applied).toEqual([{ name: 'b', scale: 0.5 }]);
    const half = await infer({ adapters: [{ name: 'b', scale: 0.5 }] });
    expect(chunks.map((c) => c.text).join('')).toBe(half.text);
    expect(half.text).not.toBe((await infer({ adapters: [{ name: 'b' }] })).text);
  }, 60_000);

  it('HTTP: body "adapters" applied (same bytes as gRPC), reported in x-aios-adapters', async () => {
    const body = (adapters?: unknown) => JSON.stringify({ messages: [{ role: 'user', content: PROMPT }], max_tokens: MAX, temperature: 0, ...(adapters ? { adapters } : {}) });
    const r = await fetch(`${http}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: body([{ name: 'b', scale: 1 }]) });
    expect(r.status).toBe(200);
    expect(JSON.parse(r.headers.get('x-aios-adapters')!)).toEqual([{ name: 'b', scale: 1 }]);
    const j = (await r.json()) as { choices: { message: { content: string } }[] };
    expect(j.choices[0]!.message.content).toBe((await infer({ adapters: [{ name: 'b' }] })).text);
  }, 60_000);

  it('selection by task through the embedding child: the adapter whose description matches, with its score; same output as naming it', async () => {
    const sel = await infer({ task: DESCRIPTIONS.b });
    expect(sel.adapters_applied.map((x) => x.name)).toEqual(['b']);
    expect(sel.adapters_applied[0]!.score).toBeGreaterThan(0.999);
    expect(sel.text).toBe((await infer({ adapters: [{ name: 'b' }] })).text);
    // the embedding model was loaded by the runtime, under its budget, like any model
    expect(daemon.service.models().map((m) => m.name)).toContain('embed');
  }, 120_000);

  it('reload: a changed adapter list restarts the child after the request running on it finishes; an unchanged one does not', async () => {
    const op = () => daemon.service.models().find((m) => m.name === 'tiny')!;
    const pid0 = op().pid;
    // unchanged: nothing restarts
    const same = await unary(client, 'Reload', {});
    expect(same.models).toEqual([{ model: 'tiny', restarted: false, note: 'adapter files unchanged' }]);
    expect(op().pid).toBe(pid0);
    // A request holding the child's slot while the list changes: the reload waits for it (the old child
    // keeps serving it), then restarts the child.
    raw.models.operational.adapters = [raw.models.operational.adapters[1], raw.models.operational.adapters[2], { name: 'a2', file: 'a.gguf', description: 'the same as a' }];
    writeFileSync(join(dir, 'config.toml'), stringify(raw));
    let reloaded = false;
    const held = await daemon.service.withSlot({ model: 'tiny', level: '', priority: 'default', deadline: 0, adapters: [{ name: 'zero' }] }, undefined, async (slot) => {
      const reload = unary(client, 'Reload', {}, 120_000).then((x) => ((reloaded = true), x));
      await new Promise((r) => setTimeout(r, 1500));
      const during = { reloaded, pid: op().pid };
      // the held slot still works: a completion on it (the child's port, or its socket when sandboxed)
      const res = await postChild(slot.port, '/v1/chat/completions', Buffer.from(JSON.stringify({ messages: [{ role: 'user', content: PROMPT }], max_tokens: MAX, temperature: 0, lora: slot.lora })), slot.signal);
      const j = JSON.parse((await readAll(res)).toString('utf8')) as { choices: { message: { content: string } }[] };
      return { reload: { p: reload }, during, status: res.statusCode, text: j.choices[0]!.message.content };
    });
    expect(held.during).toEqual({ reloaded: false, pid: pid0 });
    expect(held.status).toBe(200);
    expect(held.text).toBe(zeroText);
    const changed = await held.reload.p;
    expect(changed.models).toEqual([{ model: 'tiny', restarted: true, note: 'restarted with adapters a, b, a2' }]);
    expect(op().pid).not.toBe(pid0);
    expect(op().state).toBe('ready');
    // the new list is what requests see: a2 (the same file as a) answers as a did; zero is gone
    expect((await infer({ adapters: [{ name: 'a2' }] })).text).toBe((await infer({ adapters: [{ name: 'a' }] })).text);
    await expect(infer({ adapters: [{ name: 'zero' }] })).rejects.toMatchObject({ code: 3, details: 'adapters: unknown adapter "zero" for model tiny (configured: a, b, a2)' });
  }, 240_000);
});
