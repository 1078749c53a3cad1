/**
 * The recipe's LoRA adapters ([[models]] adapters) through the real models stage: synthesized with
 * llama.cpp's gguf-py from the default recipe's llama stage (built on first use, cached), copied from
 * a file, checked against the model (a misfit fails the stage with the reason), recorded in
 * models.json; the key of a recipe without adapters does not change.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { buildLlamaStage } from '../../src/build/index.js';
import { modelsStage, type BuildContext, type InstalledModel } from '../../src/build/stages/index.js';
import { loadRecipe } from '../../src/config/load.js';
import { synthLora } from '../../src/models/synth-lora.js';
import { readGguf } from '../../src/models/gguf.js';
import { tmp } from '../helpers.js';

describe('models stage: LoRA adapters from the recipe', () => {
  it('synthesizes and copies adapters beside the model, checked; refuses one for another architecture with the reason', async () => {
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
  }, 20 * 60_000);
});
