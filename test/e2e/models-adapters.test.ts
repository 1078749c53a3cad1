/**
 * The recipe's LoRA adapters ([[models]] adapters) through the real models stage: synthesized with
 * llama.cpp's gguf-py from the default recipe's llama stage (built on first use, cached), copied from
 * a file or downloaded for a catalog model from its entry, checked against the model (a misfit fails
 * the stage with the reason), recorded in models.json; the key of a recipe without adapters does not change.
 */
import { describe, expect, it } from 'vitest';
import { copyFileSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createHash } from 'node:crypto';
import { stringify } from 'smol-toml';
import { dirname, join } from 'node:path';
import { buildLlamaStage } from '../../src/build/index.js';
import { modelsStage, type BuildContext, type InstalledModel } from '../../src/build/stages/index.js';
import { loadRecipe } from '../../src/config/load.js';
import { synthLora } from '../../src/models/synth-lora.js';
import { readGguf } from '../../src/models/gguf.js';
import { recipes, tmp } from '../helpers.js';

describe('models stage: LoRA adapters from the recipe', () => {
  it("synthesizes and copies adapters beside the model, checked; refuses one for another architecture with the reason; downloads a catalog entry's adapter", async () => {
    const llama = await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
    const dir = tmp('aios-models-adapters-');
    const r = await loadRecipe('default');
    const keyWithout = JSON.stringify(await modelsStage.inputs({ recipe: r, outputs: { llama: { dir: dirname(llama.binDir), key: 'k', cached: true, seconds: 0 } } } as unknown as BuildContext));
    expect(keyWithout).not.toMatch(/adapters/);
    const wrong = join(dir, 'wrong.gguf');
    const ctx = (out: string) => {
      mkdirSync(out, { recursive: true });
      writeFileSync(join(out, 'build.log'), '');
      return { recipe: r, cacheDir: join(dir, 'cache'), log: join(out, 'build.log'), progress: () => {}, warnings: [], outputs: { llama: { dir: dirname(llama.binDir), key: 'k', cached: true, seconds: 0 } } } as unknown as BuildContext;
    };
    r.models = [{ name: 'tiny', level: 'operational', source: 'synth', shape: 'tiny', quant: 'f32', seed: 0, adapters: [
      { name: 'sql', source: 'synth', description: 'writes SQL', scale: 1, rank: 4, seed: 2, zero_b: false },
      { name: 'noop', source: 'synth', description: '', scale: 1, rank: 8, seed: 3, zero_b: true },
    ] }] as typeof r.models;
    const out = join(dir, 'stage1');
    await modelsStage.run(ctx(out), out);
    const list = JSON.parse(readFileSync(join(out, 'models.json'), 'utf8')) as InstalledModel[];
    expect(list[0]!.adapters!.map((a) => a.file)).toEqual(['tiny.lora-sql.gguf', 'tiny.lora-noop.gguf']);
    const g = await readGguf(join(out, 'models', 'tiny.lora-sql.gguf'));
    expect(g.metadata).toMatchObject({ 'general.type': 'adapter', 'adapter.type': 'lora', 'general.architecture': 'llama' });
    expect(g.tensors.find((t) => t.name === 'blk.0.attn_q.weight.lora_a')!.dims).toEqual([128, 4]);
    expect(g.tensors.find((t) => t.name === 'blk.0.ffn_down.weight.lora_b')!.dims).toEqual([4, 128]);
    expect(g.tensors.find((t) => t.name === 'blk.0.ffn_up.weight.lora_b')!.dims).toEqual([4, 384]);
    const key = JSON.stringify(await modelsStage.inputs(ctx(out)));
    expect(key).toMatch(/"adapters"/);

    // A file adapter made for another architecture: the stage fails, naming the adapter and the reason.
    await synthLora({ base: join(out, 'models', 'tiny.gguf'), out: wrong, rank: 8, arch: 'qwen2', ggufPy: join(dirname(llama.binDir), 'share/gguf-py') });
    r.models[0]!.adapters = [{ name: 'other', source: 'file', path: wrong, description: '', scale: 1 }];
    const out2 = join(dir, 'stage2');
    await expect(modelsStage.run(ctx(out2), out2)).rejects.toThrow(`models: tiny: adapter other (${wrong}) does not fit the model: it is for architecture "qwen2", the base model is "llama"`);
    expect(existsSync(join(out2, 'models.json'))).toBe(false);

    // A catalog model whose entry names an adapter ($AIOS_CATALOG: a catalog served from here): the
    // model and the adapter are downloaded (sha256-checked, into the download cache), the adapter
    // installed beside the model and checked against it like any other.
    const www = join(dir, 'www');
    mkdirSync(www);
    copyFileSync(join(out, 'models', 'tiny.gguf'), join(www, 'base.gguf'));
    copyFileSync(join(out, 'models', 'tiny.lora-sql.gguf'), join(www, 'sql.gguf'));
    const server = createServer((req, res) => {
      const f = join(www, (req.url ?? '').replace(/[^A-Za-z0-9._-]/g, ''));
      if (!existsSync(f)) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': statSync(f).size }).end(readFileSync(f));
    });
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    const url = (f: string) => `http://127.0.0.1:${(server.address() as { port: number }).port}/${f}`;
    const sha = (f: string) => createHash('sha256').update(readFileSync(join(www, f))).digest('hex');
    writeFileSync(
      join(dir, 'catalog.toml'),
      stringify({ model: [{ id: 'cat-tiny', level: 'operational', file: 'cat-tiny.gguf', url: url('base.gguf'), size: statSync(join(www, 'base.gguf')).size, sha256: sha('base.gguf'), license: 'mit', quantization: 'F32', context_length: 512, verified: true, adapters: [{ name: 'sql', url: url('sql.gguf'), size: 0, sha256: sha('sql.gguf'), description: 'writes SQL', license: 'mit' }] }] }),
    );
    process.env.AIOS_CATALOG = join(dir, 'catalog.toml');
    try {
      const f = recipes({ c: 'extends = "default"\n[[models]]\nname = "cat"\nlevel = "operational"\nsource = "catalog"\nid = "cat-tiny"\n' });
      const rc = await loadRecipe(f.c!);
      const out3 = join(dir, 'stage3');
      mkdirSync(out3, { recursive: true });
      writeFileSync(join(out3, 'build.log'), '');
      await modelsStage.run({ ...ctx(out3), recipe: rc } as BuildContext, out3);
      const l3 = JSON.parse(readFileSync(join(out3, 'models.json'), 'utf8')) as InstalledModel[];
      expect(l3[0]).toMatchObject({ name: 'cat', source: 'catalog', file: 'cat.gguf', sha256: sha('base.gguf') });
      expect(l3[0]!.adapters).toEqual([{ name: 'sql', file: 'cat.lora-sql.gguf', sha256: sha('sql.gguf'), bytes: statSync(join(www, 'sql.gguf')).size }]);
      expect(existsSync(join(dir, 'cache', 'downloads', `${sha('sql.gguf')}.gguf`))).toBe(true);
      expect(JSON.stringify(await modelsStage.inputs({ ...ctx(out3), recipe: rc } as BuildContext))).toContain(sha('sql.gguf'));
    } finally {
      delete process.env.AIOS_CATALOG;
      server.close();
    }
  }, 20 * 60_000);
});
