/**
 * llama: builds llama.cpp (llama-server, llama-bench, llama-quantize) from the recipe's source for
 * the recipe's ISA, with the host toolchain and ccache (<cache>/ccache). Needs no earlier stage.
 * Output: bin/ (the binaries), share/ (gguf-py and a tokenizer vocabulary, for synthesized models)
 * and llama.json (source, ISA, cmake arguments, version). Key: source identity, cmake arguments,
 * targets, ISA and toolchain. With llama.enabled = false it produces nothing.
 */
import { cp, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildLlama, cmakeArgs, llamaBinaries, fetchSource, isaFor, llamaHostProblems, sourceIdentity, toolchainId } from '../llama.js';
import { run } from '../../util/exec.js';
import { defineStage } from './common.js';
import { versionLine } from './models.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 4;

export const llamaStage = defineStage({
  name: 'llama',
  title: 'Build llama.cpp',
  needs: [],
  async check(ctx) {
    return ctx.recipe.llama.enabled ? llamaHostProblems(ctx.recipe.llama) : [];
  },
  async inputs(ctx) {
    const l = ctx.recipe.llama;
    if (!l.enabled) return { v: VERSION, enabled: false };
    return {
      v: VERSION,
      source: await sourceIdentity(l),
      cmake: cmakeArgs(l, 'SRC', 'BUILD'),
      targets: llamaBinaries(l),
      isa: await isaFor(l.cpu),
      toolchain: await toolchainId(l),
    };
  },
  async run(ctx, dir) {
    const l = ctx.recipe.llama;
    if (!l.enabled) return;
    const isa = await isaFor(l.cpu);
    const work = join(dir, 'work');
    const fetched = join(dir, 'src');
    const info = await fetchSource(l, fetched, work, ctx.log, ctx.progress);
    const src = l.source.type === 'dir' ? l.source.path : fetched;
    await buildLlama(l, { src, build: join(dir, 'build'), binDir: join(dir, 'bin'), ccacheDir: join(ctx.cacheDir, 'ccache'), log: ctx.log, progress: ctx.progress });
    const version = await run([join(dir, 'bin', 'llama-server'), '--version'], { reject: false });
    await writeFile(join(dir, 'llama.json'), JSON.stringify({ source: info, isa, cmake: cmakeArgs(l, src, 'build'), version: versionLine(version.all) }, null, 2));
    // What `aios models synth` needs from the tree: gguf-py and a tokenizer vocabulary.
    await mkdir(join(dir, 'share'), { recursive: true });
    await cp(join(src, 'gguf-py'), join(dir, 'share/gguf-py'), { recursive: true });
    await cp(join(src, 'models/ggml-vocab-llama-spm.gguf'), join(dir, 'share/ggml-vocab-llama-spm.gguf'));
    for (const d of [work, join(dir, 'build'), fetched]) await rm(d, { recursive: true, force: true });
  },
});
