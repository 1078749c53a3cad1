import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server, type IncomingMessage, type ServerResponse } from 'node:http';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fetchModel } from '../../src/models/fetch.js';
import { inspectModel, readGguf } from '../../src/models/gguf.js';
import { catalog, CATALOG_FILE, mergedCatalog } from '../../src/models/catalog.js';
import { listModels, pullModel, resolvePull, verifyModels } from '../../src/models/store.js';
import { parse as parseToml } from 'smol-toml';
import { UserError } from '../../src/util/errors.js';
import { tmp, cli, recipes } from '../helpers.js';
import { writeTestGguf } from '../gguf-writer.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('GGUF reader', () => {
  it('reads header, metadata and tensors, and derives memory figures', async () => {
    const f = join(tmp(), 'm.gguf');
    writeTestGguf(f, { layers: 3, embd: 64 });
    const g = await readGguf(f);
    expect(g.version).toBe(3);
    expect(g.tensors).toHaveLength(4);
    const i = await inspectModel(f);
    expect(i).toMatchObject({ architecture: 'llama', name: 'test', fileType: 'F32', contextLength: 2048, layers: 3, embedding: 64, heads: 4, kvHeads: 2, vocabSize: 5 });
    expect(i.parameters).toBe(64 * 100 + 3 * 64 * 64);
    expect(i.weightsBytes).toBe(i.parameters * 4);
    // 3 layers × 2 kv heads × (16 + 16) × 2 bytes
    expect(i.kvBytesPerToken).toBe(3 * 2 * 32 * 2);
  });

  it('refuses files that are not GGUF, and truncated ones', async () => {
    const d = tmp();
    writeFileSync(join(d, 'x.gguf'), 'this is not a model at all, just text');
    await expect(readGguf(join(d, 'x.gguf'))).rejects.toThrow(/not a valid GGUF model: bad magic/);
    const good = writeTestGguf(join(d, 'g.gguf'));
    writeFileSync(join(d, 't.gguf'), good.subarray(0, good.length - 100));
    await expect(readGguf(join(d, 't.gguf'))).rejects.toThrow(/beyond the end of the file|truncated/);
    writeFileSync(join(d, 'h.gguf'), good.subarray(0, 60));
    await expect(readGguf(join(d, 'h.gguf'))).rejects.toThrow(/truncated/);
  });

  it('`aios models inspect` prints it, and fails clearly on a non-GGUF file', async () => {
    const d = tmp();
    writeTestGguf(join(d, 'g.gguf'));
    const ok = await cli(['models', 'inspect', join(d, 'g.gguf'), '--json']);
    expect(ok.exitCode).toBe(0);
    expect(JSON.parse(ok.stdout).architecture).toBe('llama');
    writeFileSync(join(d, 'bad.gguf'), 'nope');
    const bad = await cli(['models', 'inspect', join(d, 'bad.gguf')]);
    expect(bad.exitCode).toBe(1);
    expect(bad.stderr).toMatch(/is not a valid GGUF model/);
  });
});

describe('catalog', () => {
  it('lists the three seed models with real URLs and their licences', () => {
    const ids = catalog().map((c) => c.id);
    expect(ids).toEqual(['tinyllama-1.1b-chat-q4_k_m', 'phi-3-mini-4k-instruct-q4', 'mistral-7b-instruct-v0.2-q4_k_m']);
    for (const c of catalog()) expect(c.url).toMatch(/^https:\/\/huggingface\.co\/.*\.gguf$/);
  });

  it('every catalog entry has a size and sha256, and images/tinyllama.toml uses them', async () => {
    for (const c of catalog()) {
      expect(c.sha256, c.id).toMatch(/^[0-9a-f]{64}$/);
      expect(c.size, c.id).toBeGreaterThan(600_000_000);
    }
    const { loadRecipe } = await import('../../src/config/load.js');
    const r = await loadRecipe('tinyllama');
    expect(r.models.map((m) => [m.level, m.source === 'catalog' ? m.id : m.source])).toEqual([
      ['operational', 'tinyllama-1.1b-chat-q4_k_m'],
      ['tactical', 'mistral-7b-instruct-v0.2-q4_k_m'],
    ]);
    expect(resolvePull('tinyllama-1.1b-chat-q4_k_m')).toMatchObject({ file: 'tinyllama-1.1b-chat-v1.0.Q4_K_M.gguf', size: 668788096 });
  });

  it("a recipe's runtime.catalog: appended to the shipped one as text, checked as one catalog; what it refuses, in words", () => {
    const d = tmp();
    const entry = (id: string, extra = '') => `[[model]]\nid = "${id}"\nlevel = "tactical"\nfile = "${id}.gguf"\nurl = "http://10.0.2.2:8000/${id}.gguf"\nsize = 100\nsha256 = "${'a'.repeat(64)}"\nlicense = "apache-2.0"\nquantization = "F32"\ncontext_length = 256\nverified = true\n${extra}`;
    const good = join(d, 'mine.toml');
    writeFileSync(good, `# my mirror\n${entry('lan-tiny')}`);
    const m = mergedCatalog(good);
    expect(m.problems).toEqual([]);
    expect(m.ids).toEqual(['lan-tiny']);
    expect(m.text.startsWith(readFileSync(CATALOG_FILE, 'utf8').trimEnd())).toBe(true);
    expect(m.text).toContain('# my mirror');
    const merged = join(d, 'merged.toml');
    writeFileSync(merged, m.text);
    expect(catalog(merged).map((c) => c.id)).toEqual([...catalog().map((c) => c.id), 'lan-tiny']);
    // Refusals: an id the shipped catalog has, one listed twice, a bad entry, not TOML, no file.
    const dup = join(d, 'dup.toml');
    writeFileSync(dup, `${entry('tinyllama-1.1b-chat-q4_k_m')}\n${entry('x')}\n${entry('x')}`);
    expect(mergedCatalog(dup).problems).toEqual([
      `runtime.catalog: ${dup}: id tinyllama-1.1b-chat-q4_k_m is already in the shipped catalog (choose another id)`,
      `runtime.catalog: ${dup}: id x is listed twice`,
    ]);
    const bad = join(d, 'bad.toml');
    writeFileSync(bad, entry('y').replace(/sha256 = ".*"/, 'sha256 = "nothex"'));
    expect(mergedCatalog(bad).problems[0]).toMatch(/is not a model catalog .*model\.0\.sha256/);
    writeFileSync(bad, 'model = [');
    expect(mergedCatalog(bad).problems[0]).toMatch(/is not valid TOML/);
    expect(mergedCatalog(join(d, 'none.toml')).problems[0]).toMatch(/^runtime\.catalog: cannot read .*none\.toml/);
  });

  it('never pulls a URL without a checksum', () => {
    expect(() => resolvePull('https://example.org/m.gguf')).toThrow(/needs --sha256/);
    expect(() => resolvePull('no-such-model')).toThrow(UserError);
  });
});

describe('model download (loopback HTTP server)', () => {
  let server: Server;
  let base = '';
  const model = writeTestGguf(join(tmp(), 'src.gguf'), { extraBytes: 3 * 1024 * 1024 });
  const notModel = Buffer.alloc(200_000, 7);
  const seen: { path: string; range?: string }[] = [];
  let cutNext = 0;
  let stallNext = 0;

  beforeAll(async () => {
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      seen.push({ path: req.url!, range: req.headers.range });
      const body = req.url === '/model.gguf' ? model : req.url === '/notmodel.gguf' ? notModel : undefined;
      if (!body) {
        res.writeHead(404).end();
        return;
      }
      let start = 0;
      const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? '');
      if (m) start = Number(m[1]);
      const chunk = body.subarray(start);
      res.writeHead(m ? 206 : 200, { 'content-length': String(chunk.length), ...(m ? { 'content-range': `bytes ${start}-${body.length - 1}/${body.length}` } : {}) });
      if (stallNext > 0) {
        stallNext--;
        res.write(chunk.subarray(0, 1000)); // then nothing: the client's stall timer must fire
        return;
      }
      if (cutNext > 0) {
        cutNext--;
        res.write(chunk.subarray(0, Math.floor(chunk.length / 2)), () => res.destroy());
        return;
      }
      res.end(chunk);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const a = server.address();
    base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  });
  afterAll(() => server.close());

  it("a catalog entry's LoRA adapters: checked, given to a catalog recipe model (its own of the same name wins), listed in the runtime config, pulled beside the model", async () => {
    const dir = tmp();
    const cat = join(dir, 'catalog.toml');
    const entry = (adapters: string) =>
      `[[model]]\nid = "cat-tiny"\nlevel = "tactical"\nfile = "cat-tiny.gguf"\nurl = "${base}/model.gguf"\nsize = ${model.length}\nsha256 = "${sha(model)}"\nlicense = "mit"\nquantization = "F32"\ncontext_length = 512\nverified = true\n${adapters}`;
    const adapter = (name: string, extra = '') => `[[model.adapters]]\nname = "${name}"\nurl = "${base}/model.gguf"\nsize = ${model.length}\nsha256 = "${sha(model)}"\nlicense = "mit"\n${extra}`;
    writeFileSync(cat, entry(adapter('sql', 'description = "writes SQL"\nscale = 0.5\n') + adapter('poet')));
    const common = { url: `${base}/model.gguf`, size: model.length, sha256: sha(model), license: 'mit' };
    expect(catalog(cat)[0]!.adapters).toEqual([
      { name: 'sql', ...common, description: 'writes SQL', scale: 0.5 },
      { name: 'poet', ...common, description: '', scale: 1 },
    ]);
    // Refused: an adapter without a sha256 (never installed unchecked), a name twice.
    writeFileSync(join(dir, 'bad1.toml'), entry(`[[model.adapters]]\nname = "x"\nurl = "${base}/x.gguf"\nsize = 0\nlicense = "mit"\n`));
    expect(() => catalog(join(dir, 'bad1.toml'))).toThrow(/sha256/);
    writeFileSync(join(dir, 'bad2.toml'), entry(adapter('sql') + adapter('sql')));
    expect(() => catalog(join(dir, 'bad2.toml'))).toThrow(/adapter \\"sql\\" is listed twice/);
    process.env.AIOS_CATALOG = cat;
    try {
      const { loadRecipe } = await import('../../src/config/load.js');
      const { identity, templateContext } = await import('../../src/build/context.js');
      const f = recipes({ r: 'extends = "default"\n[[models]]\nname = "op"\nlevel = "operational"\nsource = "synth"\n[[models]]\nname = "cat"\nlevel = "tactical"\nsource = "catalog"\nid = "cat-tiny"\n[[models.adapters]]\nname = "poet"\nsource = "synth"\ndescription = "mine"\n' });
      const r = await loadRecipe(f.r!);
      const m = r.models.find((x) => x.name === 'cat')!;
      expect(m.adapters.map((a) => [a.name, a.source, a.description, a.scale])).toEqual([
        ['sql', 'url', 'writes SQL', 0.5],
        ['poet', 'synth', 'mine', 1],
      ]);
      expect(m.adapters[0]).toMatchObject({ url: `${base}/model.gguf`, sha256: sha(model), size: model.length });
      // The image's runtime config lists both beside the model (files installed by the models stage).
      const ctx = templateContext(r, identity(r));
      expect(parseToml(ctx.tacticalAdaptersToml as string)).toEqual({
        models: { tactical: { adapters: [{ name: 'sql', file: 'cat.lora-sql.gguf', description: 'writes SQL', scale: 0.5 }, { name: 'poet', file: 'cat.lora-poet.gguf', description: 'mine', scale: 1 }] } },
      });
      // `aios models pull` brings them beside the model, under the names aios-runtime looks for; `models list` names them.
      const out = tmp();
      const res = await pullModel('cat-tiny', { dir: out });
      expect(res.adapters!.map((a) => a.path)).toEqual([join(out, 'cat-tiny.lora-sql.gguf'), join(out, 'cat-tiny.lora-poet.gguf')]);
      expect(sha(readFileSync(join(out, 'cat-tiny.lora-sql.gguf')))).toBe(sha(model));
      expect((await listModels(out))[0]).toMatchObject({ id: 'cat-tiny', present: true, adapters: ['sql', 'poet'] });
    } finally {
      delete process.env.AIOS_CATALOG;
    }
  });

  it('resumes with a Range request after the connection is cut mid-file', async () => {
    const dir = tmp();
    seen.length = 0;
    cutNext = 1;
    const retries: number[] = [];
    const r = await fetchModel({ url: `${base}/model.gguf`, dest: join(dir, 'm.gguf'), sha256: sha(model), backoffMs: 10, onRetry: (n) => retries.push(n) });
    expect(r.attempts).toBe(2);
    expect(retries).toEqual([1]);
    expect(seen.map((s) => s.range)).toEqual([undefined, expect.stringMatching(/^bytes=\d+-$/)]);
    const resumedAt = Number(/bytes=(\d+)-/.exec(seen[1]!.range!)![1]);
    expect(resumedAt).toBeGreaterThan(0);
    expect(readFileSync(join(dir, 'm.gguf')).equals(model)).toBe(true);
    expect(readdirSync(dir)).toEqual(['m.gguf']);
  });

  it('resumes a partial file left by an earlier run', async () => {
    const dir = tmp();
    writeFileSync(join(dir, 'm.gguf.partial'), model.subarray(0, 1_000_000));
    seen.length = 0;
    const r = await fetchModel({ url: `${base}/model.gguf`, dest: join(dir, 'm.gguf'), sha256: sha(model) });
    expect(r.resumedFrom).toBe(1_000_000);
    expect(seen[0]!.range).toBe('bytes=1000000-');
    expect(readFileSync(join(dir, 'm.gguf')).equals(model)).toBe(true);
  });

  it('gives up on a stalled connection and retries', async () => {
    const dir = tmp();
    stallNext = 1;
    const r = await fetchModel({ url: `${base}/model.gguf`, dest: join(dir, 'm.gguf'), sha256: sha(model), stallSeconds: 1, backoffMs: 10 });
    expect(r.attempts).toBe(2);
    expect(readFileSync(join(dir, 'm.gguf')).equals(model)).toBe(true);
  });

  it('rejects a wrong checksum and leaves nothing in the model dir', async () => {
    const dir = tmp();
    await expect(fetchModel({ url: `${base}/model.gguf`, dest: join(dir, 'm.gguf'), sha256: 'a'.repeat(64) })).rejects.toThrow(/checksum mismatch.*expected a{64}, got [0-9a-f]{64}\. The download was removed/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('rejects a file that is not GGUF even with a matching checksum, and leaves nothing', async () => {
    const dir = tmp();
    await expect(fetchModel({ url: `${base}/notmodel.gguf`, dest: join(dir, 'n.gguf'), sha256: sha(notModel) })).rejects.toThrow(/not a valid GGUF model: bad magic.*removed/);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('does not retry a 404', async () => {
    const dir = tmp();
    seen.length = 0;
    await expect(fetchModel({ url: `${base}/missing.gguf`, dest: join(dir, 'x.gguf'), sha256: 'b'.repeat(64), backoffMs: 10 })).rejects.toThrow(/failed after 1 attempt\(s\): HTTP 404/);
    expect(seen).toHaveLength(1);
  });

  it('`aios models pull <url> --sha256` lands a verified file; verify checks it', async () => {
    const dir = tmp();
    const r = await cli(['models', 'pull', `${base}/model.gguf`, '--sha256', sha(model), '--dir', dir, '--json']);
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ alreadyPresent: false, bytes: model.length });
    expect(existsSync(join(dir, 'model.gguf'))).toBe(true);
    const v = await verifyModels(dir);
    expect(v).toEqual([{ file: 'model.gguf', ok: true, problem: undefined, sha256: sha(model), catalogId: undefined }]);
    const again = await cli(['models', 'pull', `${base}/model.gguf`, '--sha256', sha(model), '--dir', dir]);
    expect(again.stdout).toMatch(/already present/);
    const rm = await cli(['models', 'rm', 'model.gguf', '--dir', dir]);
    expect(rm.exitCode).toBe(0);
    expect(readdirSync(dir)).toEqual([]);
  });
});
