/**
 * Saved sessions (src/runtime/sessions.ts) without llama-server: id checks, the cache-hit rule,
 * llama-server's reported figures, and the store's files (records, checks of the state file, the
 * size cap, model hashes). The turns themselves (slot save/restore on a real llama-server) are in
 * test/e2e/runtime-sessions.test.ts.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, readdirSync, rmSync, statSync, utimesSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cacheHit, checkSessionId, reportedUse, SessionStore, type SessionRecord } from '../../src/runtime/sessions.js';
import { RuntimeError } from '../../src/runtime/errors.js';
import { prepareSessionsDir, sessionsDirOf, slotDirOf } from '../../src/runtime/defaults.js';
import { launchArgs } from '../../src/runtime/launch.js';

const dirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'aios-sessions-'));
  dirs.push(d);
  return d;
};
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const SHA = 'a'.repeat(64);
const OTHER = 'b'.repeat(64);

/** A session on disk as the store writes it: a state file of `bytes` bytes and its record. */
function put(dir: string, id: string, bytes: number, o: { sha?: string; mtime?: number; corrupt?: boolean } = {}): SessionRecord {
  const sha = o.sha ?? SHA;
  mkdirSync(join(dir, sha), { recursive: true });
  const data = Buffer.alloc(bytes, 7);
  writeFileSync(join(dir, sha, id), o.corrupt ? Buffer.alloc(bytes, 8) : data);
  const rec: SessionRecord = {
    version: 1,
    id,
    model: 'tiny',
    modelPath: '/m/tiny.gguf',
    key: { modelSha256: sha, adapters: '', ctxSize: 2048 },
    messages: [{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'hello' }],
    params: {},
    kv: { bytes, sha256: createHash('sha256').update(data).digest('hex'), tokens: 10 },
    promptTokens: 8,
    turns: 1,
    created: '2026-12-01T00:00:00.000Z',
    updated: new Date(o.mtime ?? Date.now()).toISOString(),
    lastCache: 'new',
  };
  writeFileSync(join(dir, sha, `${id}.json`), JSON.stringify(rec));
  if (o.mtime) utimesSync(join(dir, sha, id), o.mtime / 1000, o.mtime / 1000);
  return rec;
}

describe('session ids', () => {
  it('takes [A-Za-z0-9_-]{1,64} and nothing else (no path tricks)', () => {
    for (const ok of ['a', 'chat-42', 'A_b-C', 'x'.repeat(64)]) expect(checkSessionId(ok)).toBe(ok);
    for (const bad of ['', '../etc', 'a/b', '.', '..', 'a.b', 'x'.repeat(65), 'ä', 'a b', 'a\0b', 42, null]) {
      expect(() => checkSessionId(bad)).toThrow(RuntimeError);
    }
    try {
      checkSessionId('../x', 'session');
    } catch (e) {
      expect((e as RuntimeError).code).toBe(3); // INVALID_ARGUMENT
      expect((e as Error).message).toMatch(/^session: must be 1-64 characters of A-Z a-z 0-9 _ - \(got "\.\.\/x"\)/);
    }
  });
});

describe('the cache-hit rule', () => {
  it('reads timings.cache_n / prompt_n, else usage', () => {
    expect(reportedUse({ timings: { cache_n: 1500, prompt_n: 12 }, usage: { prompt_tokens: 1512 } })).toEqual({ cacheN: 1500, promptN: 12, promptTokens: 1512 });
    expect(reportedUse({ usage: { prompt_tokens: 30, prompt_tokens_details: { cached_tokens: 20 } } })).toEqual({ cacheN: 20, promptN: undefined, promptTokens: 30 });
    // A stream without include_usage: the prompt's size from the timings' two parts.
    expect(reportedUse({ timings: { cache_n: 100, prompt_n: 5 } })).toEqual({ cacheN: 100, promptN: 5, promptTokens: 105 });
    expect(reportedUse(undefined)).toEqual({ cacheN: undefined, promptN: undefined, promptTokens: undefined });
  });
  it('is a hit only when at least 90 % of the previous prompt was reused', () => {
    expect(cacheHit(1000, { cacheN: 1000 })).toBe(true);
    expect(cacheHit(1000, { cacheN: 900 })).toBe(true);
    expect(cacheHit(1000, { cacheN: 899 })).toBe(false);
    expect(cacheHit(1000, { cacheN: 0, promptN: 1012, promptTokens: 1012 })).toBe(false); // restored, then re-processed: the trap
    expect(cacheHit(1000, { promptN: 12, promptTokens: 1012 })).toBe(true); // no cache_n: prompt − processed
    expect(cacheHit(0, { cacheN: 5 })).toBe(false); // nothing restored: never a hit
  });
});

describe('the sessions directory', () => {
  it('is runtime.sessions_dir, else $STATE_DIRECTORY/sessions, else /var/lib/aios/sessions', () => {
    expect(sessionsDirOf('/x/s', { STATE_DIRECTORY: '/var/lib/aios-runtime' })).toBe('/x/s');
    expect(sessionsDirOf('', { STATE_DIRECTORY: '/var/lib/aios-runtime:/other' })).toBe('/var/lib/aios-runtime/sessions');
    expect(sessionsDirOf('', {})).toBe('/var/lib/aios/sessions');
  });
  it('is made with mode 0700; an unusable one says why', () => {
    const d = join(tmp(), 'a', 'sessions');
    expect(prepareSessionsDir(d)).toBeUndefined();
    expect(statSync(d).mode & 0o777).toBe(0o700);
    const file = join(tmp(), 'f');
    writeFileSync(file, '');
    expect(prepareSessionsDir(join(file, 'sessions'))).toMatch(/ENOTDIR/);
  });
  it("gives each model's llama-server its own slot directory below it as --slot-save-path (never for an embedding child)", () => {
    const p = { name: 'tiny', path: '/m/tiny.gguf', level: 'operational' as const, ctxSize: 2048, threads: 2, gpuLayers: 0, parallel: 2, mmap: true };
    const a = launchArgs(p, 1234, '/s');
    expect(a.slice(a.indexOf('--slot-save-path'), a.indexOf('--slot-save-path') + 2)).toEqual(['--slot-save-path', '/s/slots/model-tiny']);
    expect(launchArgs(p, 1234)).not.toContain('--slot-save-path');
    expect(launchArgs({ ...p, embeddings: { pooling: 'mean' } }, 1234, '/s')).not.toContain('--slot-save-path');
  });
});

describe('SessionStore on disk', () => {
  it('lists records newest first and deletes a session with its state', async () => {
    const dir = tmp();
    put(dir, 'old', 100, { mtime: Date.now() - 60_000 });
    put(dir, 'new', 200);
    const s = new SessionStore({ dir, maxBytes: 1 << 30 });
    const l = await s.list();
    expect(l.map((x) => [x.id, x.kvBytes, x.turns, x.model])).toEqual([
      ['new', 200, 1, 'tiny'],
      ['old', 100, 1, 'tiny'],
    ]);
    expect(await s.delete('old')).toBe(true);
    expect(existsSync(join(dir, SHA, 'old'))).toBe(false);
    expect(existsSync(join(dir, SHA, 'old.json'))).toBe(false);
    expect(await s.delete('old')).toBe(false);
    await expect(s.delete('../new')).rejects.toThrow(/session_id: must be/);
  });

  it('summary(): sessions per model (count, saved states, their bytes), read from the records once, then kept up to date by the store\'s own changes', async () => {
    const dir = tmp();
    put(dir, 'one', 100);
    put(dir, 'two', 50);
    const other = put(dir, 'three', 30, { sha: OTHER });
    other.model = 'tactical';
    other.kv = null; // a conversation whose state was not saved
    writeFileSync(join(dir, OTHER, 'three.json'), JSON.stringify(other));
    const store = new SessionStore({ dir, maxBytes: 1 << 20 });
    const reads = vi.spyOn(store, 'list');
    expect(Object.fromEntries(await store.summary())).toEqual({ tiny: { count: 2, states: 2, bytes: 150 }, tactical: { count: 1, states: 0, bytes: 0 } });
    // Polled again: nothing is read from the disk (a session added behind its back is not seen).
    put(dir, 'four', 10);
    expect((await store.summary()).get('tiny')).toEqual({ count: 2, states: 2, bytes: 150 });
    // What it hands out is a copy.
    (await store.summary()).get('tiny')!.count = 99;
    // Its own changes: at once, without reading the directory again.
    await store.delete('one');
    expect((await store.summary()).get('tiny')).toEqual({ count: 1, states: 1, bytes: 50 });
    await store.delete('three');
    expect((await store.summary()).has('tactical')).toBe(false);
    expect(reads).toHaveBeenCalledTimes(1);
    expect(Object.fromEntries(await new SessionStore({ dir: join(dir, 'none'), maxBytes: 0 }).summary())).toEqual({});
  });

  it('summary() follows saved turns, SaveSession, states removed by the size cap and a discarded record, as the records on disk say', async () => {
    const dir = tmp();
    // llama-server's slot save: the slot's KV state (`bytes` long) under the name asked, in the model's slot directory
    let bytes = 40;
    const llama = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const { filename } = JSON.parse(body) as { filename: string };
        writeFileSync(join(slotDirOf(dir, 'tiny'), filename), Buffer.alloc(bytes, 1));
        res.end(JSON.stringify({ n_saved: 10, n_written: bytes }));
      });
    });
    await new Promise<void>((r) => llama.listen(0, '127.0.0.1', r));
    const port = (llama.address() as AddressInfo).port;
    try {
      const store = new SessionStore({ dir, maxBytes: 100 });
      const reads = vi.spyOn(store, 'list');
      expect(Object.fromEntries(await store.summary())).toEqual({});
      const key = { modelSha256: SHA, adapters: '', ctxSize: 2048 };
      const turn = (id: string, turns = 0) => ({ id, key, model: 'tiny', modelPath: '/m/tiny.gguf', history: [], restoredTokens: 0, restoreMs: 0, expectCached: 0, status: 'new' as const, note: '', created: '2026-12-01T00:00:00.000Z', turns });
      const answer = { added: [{ role: 'user', content: 'hi' }], answer: 'hello', params: {}, use: { promptTokens: 8 }, port, slot: 0, signal: new AbortController().signal };
      const onDisk = async () => {
        const m: Record<string, { count: number; states: number; bytes: number }> = {};
        for (const i of await new SessionStore({ dir, maxBytes: 0 }).list()) {
          const x = (m[i.model] ??= { count: 0, states: 0, bytes: 0 });
          x.count++;
          if (i.kvBytes > 0) (x.states++, (x.bytes += i.kvBytes));
        }
        return m;
      };
      expect((await store.finish(turn('a'), answer)).saved).toBe(true);
      expect(Object.fromEntries(await store.summary())).toEqual({ tiny: { count: 1, states: 1, bytes: 40 } });
      // the next turn of the same session: still one, its new state's size
      bytes = 50;
      await store.finish(turn('a', 1), answer);
      expect(Object.fromEntries(await store.summary())).toEqual({ tiny: { count: 1, states: 1, bytes: 50 } });
      // a second session: 50 + 60 is over the 100-byte cap, so the older state goes (its conversation stays)
      bytes = 60;
      await store.finish(turn('b'), answer);
      expect(Object.fromEntries(await store.summary())).toEqual({ tiny: { count: 2, states: 1, bytes: 60 } });
      expect(Object.fromEntries(await store.summary())).toEqual(await onDisk());
      // SaveSession for the one without a state: saved again; the cap then drops b's
      bytes = 45;
      const a = JSON.parse(readFileSync(join(dir, SHA, 'a.json'), 'utf8')) as SessionRecord;
      await store.saveEvaluated(a, key, { promptTokens: 8, port, slot: 0, signal: new AbortController().signal });
      expect(Object.fromEntries(await store.summary())).toEqual({ tiny: { count: 2, states: 1, bytes: 45 } });
      expect(Object.fromEntries(await store.summary())).toEqual(await onDisk());
      // a record found unreadable is removed, and no longer counted
      writeFileSync(join(dir, SHA, 'b.json'), '{not json');
      expect(await store.find('b')).toBeUndefined();
      expect(Object.fromEntries(await store.summary())).toEqual({ tiny: { count: 1, states: 1, bytes: 45 } });
      expect(Object.fromEntries(await store.summary())).toEqual(await onDisk());
      expect(reads).toHaveBeenCalledTimes(1);
    } finally {
      await new Promise((r) => llama.close(r));
    }
  });

  it('summary(): a change made while the first read of the records runs is applied over what that read found', async () => {
    const dir = tmp();
    put(dir, 'one', 100);
    put(dir, 'two', 50);
    const store = new SessionStore({ dir, maxBytes: 1 << 20 });
    // the first read has seen both records, and is held before it hands them over
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let seen!: () => void;
    const read = new Promise<void>((r) => (seen = r));
    const list = store.list.bind(store);
    vi.spyOn(store, 'list').mockImplementationOnce(async () => {
      const l = await list();
      seen();
      await held;
      return l;
    });
    const first = store.summary();
    await read;
    expect(await store.delete('two')).toBe(true);
    const second = store.summary(); // waits for the same read
    release();
    expect(Object.fromEntries(await first)).toEqual({ tiny: { count: 1, states: 1, bytes: 100 } });
    expect(Object.fromEntries(await second)).toEqual({ tiny: { count: 1, states: 1, bytes: 100 } });
  });

  it('summary(): a first read that fails is tried again on the next call', async () => {
    const dir = tmp();
    put(dir, 'one', 100);
    const store = new SessionStore({ dir, maxBytes: 1 << 20 });
    vi.spyOn(store, 'list').mockRejectedValueOnce(new Error('EIO'));
    await expect(store.summary()).rejects.toThrow('EIO');
    expect((await store.summary()).get('tiny')).toEqual({ count: 1, states: 1, bytes: 100 });
  });

  it('accepts a state file only when its size and sha256 match the record', async () => {
    const dir = tmp();
    const s = new SessionStore({ dir, maxBytes: 1 << 30 });
    const good = put(dir, 'good', 64);
    expect(await s.checkState(good)).toEqual({ ok: true, path: join(dir, SHA, 'good') });
    const bad = put(dir, 'bad', 64, { corrupt: true });
    expect(await s.checkState(bad)).toMatchObject({ ok: false, why: expect.stringMatching(/sha256 .* differs .* \(corrupt\)/) });
    const cut = put(dir, 'cut', 64);
    writeFileSync(join(dir, SHA, 'cut'), Buffer.alloc(10, 7));
    expect(await s.checkState(cut)).toMatchObject({ ok: false, why: 'the state file is 10 bytes, 64 were saved (truncated or replaced)' });
    rmSync(join(dir, SHA, 'cut'));
    expect(await s.checkState(cut)).toMatchObject({ ok: false, why: expect.stringMatching(/is missing$/) });
  });

  it('removes the least recently used states past sessions_max_bytes, keeping their conversations', async () => {
    const dir = tmp();
    const t = Date.now();
    put(dir, 's1', 400, { mtime: t - 30_000 });
    put(dir, 's2', 400, { mtime: t - 20_000, sha: OTHER });
    put(dir, 's3', 400, { mtime: t - 10_000 });
    const lines: string[] = [];
    const s = new SessionStore({ dir, maxBytes: 500, log: (l) => lines.push(l) });
    expect(await s.enforceCap('s1')).toEqual(['s2', 's3']); // s1 was just saved: it goes last, even though it is the oldest
    expect(existsSync(join(dir, SHA, 's1'))).toBe(true);
    const r3 = JSON.parse(readFileSync(join(dir, SHA, 's3.json'), 'utf8')) as SessionRecord;
    expect(r3.kv).toBeNull();
    expect(r3.messages).toHaveLength(2);
    expect(lines.join('\n')).toMatch(/removed the saved state of s2 \(400 bytes, least recently used\)/);
    // Alone over the cap: even the one just saved goes.
    s.maxBytes = 100;
    expect(await s.enforceCap('s1')).toEqual(['s1']);
    expect((await s.list()).every((x) => x.kvBytes === 0)).toBe(true);
  });

  it('the size cap reads the directory once: later saves follow the states it knows, not a stat of every file', async () => {
    const dir = tmp();
    const t = Date.now();
    for (let i = 0; i < 5; i++) put(dir, `old${i}`, 40, { mtime: t - 60_000 + i * 1000 });
    // llama-server's slot save, as in the summary() test above: 40 bytes under the name asked
    const llama = createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const { filename } = JSON.parse(body) as { filename: string };
        writeFileSync(join(slotDirOf(dir, 'tiny'), filename), Buffer.alloc(40, 1));
        res.end(JSON.stringify({ n_saved: 10, n_written: 40 }));
      });
    });
    await new Promise<void>((r) => llama.listen(0, '127.0.0.1', r));
    const port = (llama.address() as AddressInfo).port;
    try {
      const store = new SessionStore({ dir, maxBytes: 120 });
      const key = { modelSha256: SHA, adapters: '', ctxSize: 2048 };
      const save = (id: string) =>
        store.finish(
          { id, key, model: 'tiny', modelPath: '/m/tiny.gguf', history: [], restoredTokens: 0, restoreMs: 0, expectCached: 0, status: 'new', note: '', created: '2026-12-01T00:00:00.000Z', turns: 0 },
          { added: [{ role: 'user', content: 'hi' }], answer: 'hello', params: {}, use: { promptTokens: 8 }, port, slot: 0, signal: new AbortController().signal },
        );
      const states = () => readdirSync(join(dir, SHA)).filter((f) => !f.includes('.')).sort();
      for (let i = 0; i < 20; i++) expect((await save(`s${i}`)).saved).toBe(true);
      // The first save's cap read the directory (the 5 states there were and its own); the 19 saves
      // after it stat'ed nothing more (a scan on every save would have stat'ed 6 + 4 + 4 + … by now).
      expect(store.stateFilesStatted).toBe(6);
      expect(states()).toEqual(['s17', 's18', 's19']);
      expect((await store.list()).filter((x) => x.kvBytes > 0).map((x) => x.id).sort()).toEqual(['s17', 's18', 's19']);
      // A session deleted and one saved again: the cap follows both without reading the directory.
      expect(await store.delete('s19')).toBe(true);
      await save('s20');
      expect(states()).toEqual(['s17', 's18', 's20']);
      await save('s17'); // its next turn: the most recently saved now, so s18 is the oldest
      await save('s21');
      expect(states()).toEqual(['s17', 's20', 's21']);
      expect(store.stateFilesStatted).toBe(6);
    } finally {
      await new Promise((r) => llama.close(r));
    }
  });

  it('hashes a model file once per (path, size, mtime, inode), remembered across stores', async () => {
    const dir = tmp();
    const model = join(tmp(), 'm.gguf');
    writeFileSync(model, 'GGUF model bytes');
    const want = createHash('sha256').update('GGUF model bytes').digest('hex');
    expect(await new SessionStore({ dir, maxBytes: 0 }).modelSha256(model)).toBe(want);
    const remembered = JSON.parse(readFileSync(join(dir, '.model-hashes.json'), 'utf8')) as Record<string, string>;
    expect(Object.values(remembered)).toEqual([want]);
    // A changed file (new size and mtime) is hashed again.
    writeFileSync(model, 'other bytes!');
    utimesSync(model, 1, 1);
    expect(await new SessionStore({ dir, maxBytes: 0 }).modelSha256(model)).toBe(createHash('sha256').update('other bytes!').digest('hex'));
  });

  it('refuses to work when its directory cannot be used, saying why', async () => {
    const s = new SessionStore({ dir: '/nonexistent/sessions', maxBytes: 0, problem: 'EACCES: permission denied' });
    expect(s.enabled).toBe(false);
    expect(() => s.need()).toThrow(/sessions are not available: the sessions directory \/nonexistent\/sessions cannot be used \(EACCES: permission denied\); set runtime.sessions_dir/);
  });

  it('an unreadable record is removed with a warning, not served', async () => {
    const dir = tmp();
    mkdirSync(join(dir, SHA));
    writeFileSync(join(dir, SHA, 'x.json'), '{not json');
    const lines: string[] = [];
    const s = new SessionStore({ dir, maxBytes: 0, log: (l) => lines.push(l) });
    expect(await s.find('x')).toBeUndefined();
    expect(existsSync(join(dir, SHA, 'x.json'))).toBe(false);
    expect(lines[0]).toMatch(/x\.json is unreadable .* removing it/);
  });
});
