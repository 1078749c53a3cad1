/** `build(recipe)`: validate everything, then run the stages (cached), then publish atomically to out/. */
import { Listr } from 'listr2';
import { mkdir, rename, writeFile, readFile, statfs, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadRecipe } from '../config/load.js';
import type { ResolvedRecipe } from '../config/schema.js';
import { distroFor } from '../distros/index.js';
import { StageCache } from './cache.js';
import { identity, kernelCmdline, tuningArgs } from './context.js';
import { STAGES, kernelWishes, type BuildContext, type Stage } from './stages.js';
import { isaFor } from './llama.js';
import { hashOf, sha256File } from '../util/hash.js';
import { defaultCacheDir } from '../util/paths.js';
import { registerTemp, safeRemove } from '../util/cleanup.js';
import { run } from '../util/exec.js';
import { UserError } from '../util/errors.js';
import { formatSize } from '../util/size.js';

export interface BuildOptions {
  /** Recipe name/path, or an already resolved recipe. Default: "default". */
  recipe?: string | ResolvedRecipe;
  sets?: string[];
  outDir?: string;
  cacheDir?: string;
  /** Ignore cached stage outputs (they are rebuilt and replace the cache entries). */
  noCache?: boolean;
  /** listr2 renderer: "default" (interactive), "simple" (log lines), "silent". Default: by TTY. */
  renderer?: 'default' | 'simple' | 'silent';
}

export interface StageReport {
  name: string;
  key: string;
  cached: boolean;
  seconds: number;
}

export interface BuildResult {
  recipe: ResolvedRecipe;
  image: string;
  manifest: string;
  log: string;
  stages: StageReport[];
  warnings: string[];
  seconds: number;
}

/** Every check that can fail before anything is built. Returns the problems found. */
export async function preflight(ctx: BuildContext, outDir: string, stages: Stage[] = STAGES): Promise<string[]> {
  const problems: string[] = [];
  for (const s of stages) problems.push(...(await s.check(ctx)).map((p) => `${s.name}: ${p}`));
  if (!ctx.asRoot && ctx.recipe.base.distro === 'debian') {
    const unshare = await run(['unshare', '--user', '--map-root-user', 'true'], { reject: false });
    if (unshare.exitCode !== 0) problems.push('not running as root and user namespaces are unavailable: run as root (sudo) so mmdebstrap can use --mode=root');
  }
  for (const [what, dir, need] of [
    ['cache', ctx.cacheDir, 3 * 1024 ** 3],
    ['output', outDir, 2 * 1024 ** 3],
  ] as const) {
    await mkdir(dir, { recursive: true });
    const fs = await statfs(dir);
    const free = fs.bavail * fs.bsize;
    if (free < need) problems.push(`${what} dir ${dir}: only ${formatSize(free)} free, a build needs about ${formatSize(need)}`);
  }
  return problems;
}

/** Loads the recipe and sets up the context every stage gets. */
async function prepare(opts: BuildOptions): Promise<{ ctx: BuildContext; outDir: string; renderer: NonNullable<BuildOptions['renderer']> }> {
  const recipe = typeof opts.recipe === 'object' ? opts.recipe : await loadRecipe(opts.recipe ?? 'default', { sets: opts.sets });
  const cacheDir = resolve(opts.cacheDir ?? defaultCacheDir());
  const outDir = resolve(opts.outDir ?? 'out');
  await mkdir(join(cacheDir, 'logs'), { recursive: true });
  const log = join(cacheDir, 'logs', `${recipe.name}-${new Date().toISOString().replace(/[:.]/g, '-')}.log`);
  await writeFile(log, `aios build ${recipe.name} (${recipe.sources.join(' <- ')})\n`);
  const ctx: BuildContext = {
    recipe,
    distro: distroFor(recipe.base.distro),
    id: identity(recipe),
    cache: new StageCache(cacheDir),
    cacheDir,
    log,
    asRoot: process.getuid?.() === 0,
    outputs: {},
    warnings: [...tuningArgs(recipe).warnings],
    progress: () => {},
  };
  const renderer = opts.renderer ?? (process.stdout.isTTY ? 'default' : 'simple');
  return { ctx, outDir, renderer };
}

/** Validates the host for the given stages, then runs them in order (each reused from the cache when its key matches). */
async function runStages(ctx: BuildContext, stages: Stage[], opts: BuildOptions, renderer: NonNullable<BuildOptions['renderer']>, outDir: string): Promise<StageReport[]> {
  if (ctx.recipe.llama.enabled && stages.some((s) => s.name === 'llama') && renderer !== 'silent') {
    process.stderr.write(`llama.cpp binaries will need: ${(await isaFor(ctx.recipe.llama.cpu)).description}\n`);
  }
  const problems = await preflight(ctx, outDir, stages);
  if (problems.length) {
    throw new UserError(`cannot build ${ctx.recipe.name} on this host:\n` + problems.map((p) => `  - ${p}`).join('\n'), 3);
  }
  const reports: StageReport[] = [];
  const tasks = new Listr<BuildContext>(
    stages.map((stage) => ({
      title: stage.title,
      task: async (c, task) => {
        const s0 = Date.now();
        c.progress = (line) => {
          task.output = line;
        };
        const inputs = await stage.inputs(c);
        const key = hashOf(stage.name, inputs);
        let dir = opts.noCache ? undefined : await c.cache.get(stage.name, key);
        const cached = !!dir;
        if (!dir) dir = await c.cache.put(stage.name, key, inputs, (d) => stage.run(c, d));
        const seconds = (Date.now() - s0) / 1000;
        c.outputs[stage.name] = { dir, key, cached, seconds };
        reports.push({ name: stage.name, key: key.slice(0, 16), cached, seconds });
        task.title = `${stage.title} [${stage.name}] ${cached ? 'cached' : 'done'} in ${seconds.toFixed(1)} s`;
      },
    })),
    { renderer, fallbackRenderer: 'simple', exitOnError: true, registerSignalListeners: false, rendererOptions: { collapseSubtasks: false } } as never,
  );
  await tasks.run(ctx);
  return reports;
}

export interface LlamaBuildResult {
  recipe: ResolvedRecipe;
  binDir: string;
  /** gguf-py and the tokenizer vocabulary from the same tree. */
  shareDir: string;
  info: { source: unknown; isa: unknown; version: string; cmake: string[] };
  stage: StageReport;
}

/** `aios build llama`: only the llama.cpp stage (cached like in an image build). */
export async function buildLlamaStage(opts: BuildOptions = {}): Promise<LlamaBuildResult> {
  const { ctx, outDir, renderer } = await prepare(opts);
  if (!ctx.recipe.llama.enabled) throw new UserError(`recipe ${ctx.recipe.name} has llama.enabled = false`, 2);
  const [stage] = await runStages(ctx, STAGES.filter((s) => s.name === 'llama'), opts, renderer, outDir);
  const dir = ctx.outputs.llama!.dir;
  return { recipe: ctx.recipe, binDir: join(dir, 'bin'), shareDir: join(dir, 'share'), info: JSON.parse(await readFile(join(dir, 'llama.json'), 'utf8')), stage: stage! };
}

export async function build(opts: BuildOptions = {}): Promise<BuildResult> {
  const t0 = Date.now();
  const { ctx, outDir, renderer } = await prepare(opts);
  const recipe = ctx.recipe;
  const log = ctx.log;
  const reports = await runStages(ctx, STAGES, opts, renderer, outDir);

  // Publish: copy under a temporary name in out/, then rename — never a partial image at the path.
  const image = join(outDir, `${recipe.name}.raw`);
  const manifestPath = join(outDir, `${recipe.name}.manifest.json`);
  const tmp = join(outDir, `.${recipe.name}.raw.tmp-${process.pid}`);
  const unregister = registerTemp(tmp);
  try {
    await run(['cp', '--sparse=always', '--reflink=auto', join(ctx.outputs.image!.dir, 'disk.raw'), tmp], { log });
    const manifest = await buildManifest(ctx, tmp, reports);
    await writeFile(`${tmp}.manifest`, JSON.stringify(manifest, null, 2) + '\n');
    await rename(`${tmp}.manifest`, manifestPath);
    await rename(tmp, image);
  } finally {
    unregister();
    await safeRemove(tmp);
    await safeRemove(`${tmp}.manifest`);
  }
  return { recipe, image, manifest: manifestPath, log, stages: reports, warnings: ctx.warnings, seconds: (Date.now() - t0) / 1000 };
}

async function buildManifest(ctx: BuildContext, disk: string, stages: StageReport[]) {
  const r = ctx.recipe;
  const root = join(ctx.outputs.overlay!.dir, 'root');
  const kernel = await ctx.distro.kernelFiles(root);
  const packages = JSON.parse(await readFile(join(ctx.outputs.overlay!.dir, 'packages.json'), 'utf8')) as Record<string, string>;
  const layout = JSON.parse(await readFile(join(ctx.outputs.image!.dir, 'layout.json'), 'utf8'));
  const st = await stat(disk);
  return {
    name: r.name,
    recipe: r.sources,
    recipeHash: hashOf(r),
    created: process.env.SOURCE_DATE_EPOCH ? new Date(Number(process.env.SOURCE_DATE_EPOCH) * 1000).toISOString() : new Date().toISOString(),
    distro: { name: r.base.distro, suite: r.base.suite, mirror: r.base.mirror },
    kernel: { version: kernel.version, cmdline: kernelCmdline(r, ctx.id, (await kernelWishes(ctx)).bootArgs), fragments: r.kernel.fragments, wishes: (await kernelWishes(ctx)).results },
    identity: ctx.id,
    image: { file: `${r.name}.raw`, bytes: st.size, sha256: await sha256File(disk) },
    partitions: layout.sfdisk?.partitiontable?.partitions ?? [],
    stages,
    llama: existsSync(join(ctx.outputs.overlay!.dir, 'llama.json')) ? JSON.parse(await readFile(join(ctx.outputs.overlay!.dir, 'llama.json'), 'utf8')) : null,
    runtime: r.runtime.enabled ? { enabled: true, listen: r.runtime.listen, probe: { prompt: 'Respond with OK if you are working.', grammar: 'root ::= "OK"', expect: 'OK' } } : null,
    models: existsSync(join(ctx.outputs.overlay!.dir, 'models.json')) ? JSON.parse(await readFile(join(ctx.outputs.overlay!.dir, 'models.json'), 'utf8')) : [],
    packages,
  };
}

