/**
 * models: fetches (catalog, URL: checksum-verified, cached in <cache>/downloads), copies (file) or
 * synthesizes (synth: llama.cpp's gguf-py and llama-quantize from the llama stage) the recipe's
 * models, and checks that each is a GGUF file. Needs: llama (its share/ and llama-quantize; only
 * read for synthesized models, and its key is part of this key only then). Output: models/*.gguf and
 * models.json (name, level, sha256, size, GGUF facts). A model's LoRA adapters ([[models.adapters]]:
 * synthesized, copied or downloaded; a catalog model's entry adds its own, see withCatalogAdapters in
 * src/config/load.ts) go beside it as <model>.lora-<adapter>.gguf, each checked against the model
 * the way llama.cpp's loader checks it (a misfit fails the build with the reason).
 */
import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { run } from '../../util/exec.js';
import { sha256File } from '../../util/hash.js';
import { formatSize } from '../../util/size.js';
import { catalogEntry } from '../../models/catalog.js';
import { fetchModel } from '../../models/fetch.js';
import { inspectModel, readGguf, type ModelInfo } from '../../models/gguf.js';
import { adapterProblem } from '../../models/lora.js';
import { synthLora } from '../../models/synth-lora.js';
import { UserError } from '../../util/errors.js';
import { synthModel } from '../../models/synth.js';
import { defineStage } from './common.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 1;

export interface InstalledModel {
  name: string;
  level: 'operational' | 'tactical';
  source: string;
  file: string;
  sha256: string;
  bytes: number;
  info: ModelInfo;
  /** Its LoRA adapters ([[models.adapters]]), installed beside it. */
  adapters?: { name: string; file: string; sha256: string; bytes: number }[];
}

/** The file a model's adapter is installed as. */
export const adapterFile = (model: string, adapter: string): string => `${model}.lora-${adapter}.gguf`;

/** "version: 0.5.0-dev (build 1, commit de3ff81) built with …" out of llama-server's log noise. */
export function versionLine(out: string): string {
  return /version: .*/.exec(out)?.[0]?.trim() ?? out.trim().split('\n').pop() ?? '';
}

export const modelsStage = defineStage({
  name: 'models',
  title: 'Fetch, synthesize and check models',
  needs: ['llama'],
  async check(ctx) {
    const synth = ctx.recipe.models.some((m) => m.source === 'synth' || m.adapters.some((a) => a.source === 'synth'));
    const problems: string[] = [];
    if (synth) {
      const py = await run(['/usr/bin/python3', '-c', 'import numpy'], { reject: false });
      if (py.exitCode !== 0) problems.push('synthesized models need /usr/bin/python3 with numpy (install the Debian package python3-numpy)');
    }
    for (const m of ctx.recipe.models) if (m.source === 'file' && !existsSync(m.path)) problems.push(`models: ${m.name}: no such file ${m.path}`);
    for (const m of ctx.recipe.models) for (const a of m.adapters) if (a.source === 'file' && !existsSync(a.path)) problems.push(`models: ${m.name}: adapter ${a.name}: no such file ${a.path}`);
    return problems;
  },
  async inputs(ctx, io) {
    const specs = [];
    for (const model of ctx.recipe.models) {
      // Adapters only in the key of recipes that have some (the key of every other recipe stays as it was).
      // Where the overlay puts the file (store) is not this stage's business: not in its key.
      const { adapters, store: _store, ...m } = model;
      if (adapters.length) {
        (m as Record<string, unknown>).adapters = adapters.map((a) => (a.source === 'file' ? { ...a, size: statSync(a.path).size, mtime: statSync(a.path).mtimeMs } : a));
      }
      if (m.source === 'file') {
        const st = statSync(m.path);
        specs.push({ ...m, size: st.size, mtime: st.mtimeMs });
      } else if (m.source === 'catalog') specs.push({ ...m, sha256: catalogEntry(m.id)!.sha256 });
      else specs.push(m);
    }
    const synth = ctx.recipe.models.some((m) => m.source === 'synth' || m.adapters.some((a) => a.source === 'synth'));
    return { v: VERSION, specs, llama: synth ? io.need('llama').key : null };
  },
  async run(ctx, dir, io) {
    await mkdir(join(dir, 'models'), { recursive: true });
    const downloads = join(ctx.cacheDir, 'downloads');
    await mkdir(downloads, { recursive: true });
    const out: InstalledModel[] = [];
    for (const m of ctx.recipe.models) {
      const dest = join(dir, 'models', `${m.name}.gguf`);
      ctx.progress(`${m.name}: ${m.source}`);
      if (m.source === 'synth') {
        const llama = io.need('llama').dir;
        await synthModel({
          shape: m.shape,
          quant: m.quant,
          seed: m.seed,
          out: dest,
          name: m.name,
          tools: { ggufPy: join(llama, 'share/gguf-py'), vocab: join(llama, 'share/ggml-vocab-llama-spm.gguf'), quantize: join(llama, 'bin/llama-quantize') },
          log: ctx.log,
          progress: (s) => ctx.progress(`${m.name}: ${s}`),
        });
      } else if (m.source === 'file') {
        await copyFile(m.path, dest);
      } else {
        const e = m.source === 'catalog' ? catalogEntry(m.id)! : undefined;
        const url = e ? e.url : (m as { url: string }).url;
        const sha = e ? e.sha256 : (m as { sha256: string }).sha256;
        const cachedFile = join(downloads, `${sha}.gguf`);
        await fetchModel({
          url,
          sha256: sha,
          dest: cachedFile,
          size: e?.size || (m as { size?: number }).size,
          onProgress: (p) => ctx.progress(`${m.name}: ${formatSize(p.bytes)}${p.total ? ` of ${formatSize(p.total)}` : ''} at ${formatSize(p.speed)}/s`),
        });
        await copyFile(cachedFile, dest);
      }
      await chmod(dest, 0o644);
      const info = await inspectModel(dest); // refuses files that are not GGUF
      const adapters: InstalledModel['adapters'] = [];
      for (const a of m.adapters) {
        const file = adapterFile(m.name, a.name);
        const to = join(dir, 'models', file);
        ctx.progress(`${m.name}: adapter ${a.name}: ${a.source}`);
        if (a.source === 'synth') await synthLora({ base: dest, out: to, rank: a.rank, seed: a.seed, zeroB: a.zero_b, ggufPy: join(io.need('llama').dir, 'share/gguf-py'), log: ctx.log });
        else if (a.source === 'file') await copyFile(a.path, to);
        else {
          // Downloaded and checked like a model (sha256, GGUF), into the same cache.
          const cachedFile = join(downloads, `${a.sha256}.gguf`);
          await fetchModel({ url: a.url, sha256: a.sha256, dest: cachedFile, size: a.size, onProgress: (p) => ctx.progress(`${m.name}: adapter ${a.name}: ${formatSize(p.bytes)}${p.total ? ` of ${formatSize(p.total)}` : ''}`) });
          await copyFile(cachedFile, to);
        }
        await chmod(to, 0o644);
        // What llama.cpp's loader would refuse is refused here, with the reason, instead of at the image's first start.
        const problem = adapterProblem(await readGguf(to), await readGguf(dest));
        if (problem) throw new UserError(`models: ${m.name}: adapter ${a.name}${a.source === 'file' ? ` (${a.path})` : a.source === 'url' ? ` (${a.url})` : ''} does not fit the model: ${problem}`, 2);
        adapters.push({ name: a.name, file, sha256: await sha256File(to), bytes: statSync(to).size });
      }
      out.push({ name: m.name, level: m.level, source: m.source, file: `${m.name}.gguf`, sha256: await sha256File(dest), bytes: statSync(dest).size, info: { ...info, file: `${m.name}.gguf` }, ...(adapters.length ? { adapters } : {}) });
    }
    await writeFile(join(dir, 'models.json'), JSON.stringify(out, null, 2));
  },
});
