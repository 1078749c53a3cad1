/**
 * llama: builds llama.cpp (llama-server, llama-bench, llama-quantize) from the recipe's source for
 * the recipe's ISA, with ccache, either with the host toolchain (llama.toolchain = "host", ccache in
 * <cache>/ccache) or inside the tools tree of the image's suite (llama.toolchain = "tools-tree":
 * src/build/tools-tree.ts, made or taken from the cache first; ccache in <cache>/ccache-tools/<suite>).
 * Needs no earlier stage. Output: bin/ (the binaries), share/ (gguf-py and a tokenizer vocabulary,
 * for synthesized models) and llama.json (source, ISA, cmake arguments, version, toolchain). Key:
 * source identity, cmake arguments, targets, ISA and toolchain (host: gcc and cmake versions; tools
 * tree: the tree's key). With llama.enabled = false it produces nothing.
 */
import { cp, mkdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { buildLlama, cmakeArgs, llamaBinaries, fetchSource, isaFor, llamaHostProblems, sourceIdentity, toolchainId } from '../llama.js';
import { ensureToolsTree, llamaToolsTreeSpec, toolsTreeKey, toolsTreeVersions } from '../tools-tree.js';
import { defineStage } from './common.js';
import { versionLine } from './models.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 4;

export const llamaStage = defineStage({
  name: 'llama',
  title: 'Build llama.cpp',
  needs: [],
  async check(ctx) {
    return ctx.recipe.llama.enabled ? llamaHostProblems(ctx.recipe.llama, { base: ctx.recipe.base, cache: ctx.cache }) : [];
  },
  async inputs(ctx) {
    const l = ctx.recipe.llama;
    if (!l.enabled) return { v: VERSION, enabled: false };
    return {
      v: VERSION,
      source: await sourceIdentity(l),
      cmake: cmakeArgs(l, 'SRC', 'BUILD', ctx.recipe.gpu),
      targets: llamaBinaries(l),
      isa: await isaFor(l.cpu),
      toolchain: await toolchainId(l, { key: toolsTreeKey(llamaToolsTreeSpec(ctx.recipe)), suite: ctx.recipe.base.suite }),
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
    let toolchain: Record<string, unknown> = { toolchain: 'host' };
    let tree: string | undefined;
    if (l.toolchain === 'tools-tree') {
      const inUse = new Set(Object.values(ctx.outputs).map((o) => o.dir));
      const t = await ensureToolsTree(llamaToolsTreeSpec(ctx.recipe), { cache: ctx.cache, cacheDir: ctx.cacheDir, asRoot: ctx.asRoot, log: ctx.log, progress: ctx.progress, inUse });
      tree = t.root;
      toolchain = { toolchain: 'tools-tree', suite: ctx.recipe.base.suite, key: t.key.slice(0, 16), ...(await toolsTreeVersions(t.root)) };
      if (!t.cached) ctx.progress(`tools tree made in ${t.seconds.toFixed(0)} s`);
    }
    const ccacheDir = tree ? join(ctx.cacheDir, 'ccache-tools', ctx.recipe.base.suite) : join(ctx.cacheDir, 'ccache');
    const built = await buildLlama(l, { src, build: join(dir, 'build'), binDir: join(dir, 'bin'), ccacheDir, tree, gpu: ctx.recipe.gpu, log: ctx.log, progress: ctx.progress });
    await writeFile(join(dir, 'llama.json'), JSON.stringify({ source: info, isa, cmake: cmakeArgs(l, src, 'build', ctx.recipe.gpu), version: versionLine(built.version), toolchain }, null, 2));
    // What `aios models synth` needs from the tree: gguf-py and a tokenizer vocabulary.
    await mkdir(join(dir, 'share'), { recursive: true });
    await cp(join(src, 'gguf-py'), join(dir, 'share/gguf-py'), { recursive: true });
    await cp(join(src, 'models/ggml-vocab-llama-spm.gguf'), join(dir, 'share/ggml-vocab-llama-spm.gguf'));
    for (const d of [work, join(dir, 'build'), fetched]) await rm(d, { recursive: true, force: true });
  },
});
