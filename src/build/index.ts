/** `build(recipe)`: validate everything, then run the stages (cached), then publish atomically to out/. */
import { Listr } from 'listr2';
import { appendFile, mkdir, rename, writeFile, readFile, statfs, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { isLoopback, loadRecipe } from '../config/load.js';
import { X509Certificate } from 'node:crypto';
import { certSans, createPki, type Pki } from '../pki/index.js';
import type { ResolvedRecipe } from '../config/schema.js';
import { distroFor } from '../distros/index.js';
import { cacheKeep, SPACE_NEEDED, StageCache } from './cache.js';
import { identity, kernelCmdline, sourceDateEpoch, tuningArgs } from './context.js';
import { STAGES, kernelWishes, stagesFor, type BuildContext, type Stage } from './stages/index.js';
import { isaFor } from './llama.js';
import { baseKind, DISK_BYTES, kernelPlan } from '../kernel/build.js';
import { kernelBuildManifest, type KernelBuildInfo } from './stages/kernel.js';
import { hashOf, sha256File } from '../util/hash.js';
import { defaultCacheDir } from '../util/paths.js';
import { registerTemp, safeRemove } from '../util/cleanup.js';
import { run } from '../util/exec.js';
import { UserError } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import { manifestPath, type Manifest } from './manifest.js';
import { openSigner, publishUpdate, SIGNING_KEY_ENV, type UpdateResult } from './update.js';

export { manifestPath, readManifest, type Manifest } from './manifest.js';

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
  /** Outputs to build (default: the recipe's image.formats). `aios build iso` passes ["iso"]. */
  formats?: ('disk' | 'iso')[];
  /** Re-run these stages even when their output is cached (the new output replaces the cached one). */
  rebuild?: string[];
  /** Make the image's CA, certificates and API key anew (runtime.tls): clients need the new files. */
  rotateCredentials?: boolean;
  /**
   * image.layout = "appliance": a file with the secret OpenPGP key that signs out/update/SHA256SUMS
   * (else $AIOS_GPG_PRIVATE_KEY; neither: unsigned). Never from the recipe (docs/appliance.md).
   */
  signingKey?: string;
}

export interface StageReport {
  name: string;
  key: string;
  cached: boolean;
  seconds: number;
}

export interface BuildResult {
  recipe: ResolvedRecipe;
  /** The first output built: the disk image, or the ISO when only the ISO was built. */
  image: string;
  /** Its manifest (every output has one: out/<name>.manifest.json, out/<name>.iso.manifest.json). */
  manifest: string;
  /** Each output built, with its manifest. */
  outputs: { format: 'disk' | 'iso'; file: string; manifest: string }[];
  log: string;
  stages: StageReport[];
  warnings: string[];
  seconds: number;
  /** The image's pki dir (runtime.tls): the builder's client certificate and API key are there. */
  pki?: string;
  /** image.layout = "appliance": the update artifacts written to <out>/update/ (src/build/update.ts). */
  update?: UpdateResult;
}

/** Every check that can fail before anything is built. Returns the problems found. */
export async function preflight(ctx: BuildContext, outDir: string, stages: Stage[] = STAGES): Promise<string[]> {
  const problems: string[] = [];
  for (const s of stages) problems.push(...(await s.check(ctx)).map((p) => `${s.name}: ${p}`));
  if (!ctx.asRoot && ctx.recipe.base.distro === 'debian') {
    const unshare = await run(['unshare', '--user', '--map-root-user', 'true'], { reject: false });
    if (unshare.exitCode !== 0) problems.push('not running as root and user namespaces are unavailable: run as root (sudo) so mmdebstrap can use --mode=root');
  }
  // The output dir only for stages that write there (not for `aios build llama|kernel`).
  const dirs = [['cache', ctx.cacheDir, SPACE_NEEDED.cache] as const, ...(stages.some((s) => s.output) ? [['output', outDir, SPACE_NEEDED.output] as const] : [])];
  for (const [what, dir, need] of dirs) {
    await mkdir(dir, { recursive: true });
    const fs = await statfs(dir);
    const free = fs.bavail * fs.bsize;
    if (free >= need) continue;
    // Old stage outputs are removed (least recently used first) when a stage needs the room.
    const old = what === 'cache' ? await ctx.cache.reclaimable() : 0;
    if (free + old >= need) continue;
    problems.push(`${what} dir ${dir}: only ${formatSize(free)} free${old ? ` (and ${formatSize(old)} in old stage outputs that can be removed)` : ''}, a build needs about ${formatSize(need)}`);
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
    cache: new StageCache(cacheDir, cacheKeep()),
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
  const unknown = (opts.rebuild ?? []).filter((n) => !STAGES.some((s) => s.name === n));
  if (unknown.length) throw new UserError(`--rebuild: no stage named ${unknown.join(', ')} (stages: ${STAGES.map((s) => s.name).join(', ')})`, 2);
  if (ctx.recipe.llama.enabled && stages.some((s) => s.name === 'llama') && renderer !== 'silent') {
    process.stderr.write(`llama.cpp binaries will need: ${(await isaFor(ctx.recipe.llama.cpu)).description}\n`);
  }
  if (ctx.recipe.kernel.build && stages.some((s) => s.name === 'kernel') && renderer !== 'silent') process.stderr.write(`${kernelPlan(ctx.recipe.kernel)}\n`);
  const problems = await preflight(ctx, outDir, stages);
  if (problems.length) {
    throw new UserError(`cannot build ${ctx.recipe.name} on this host:\n` + problems.map((p) => `  - ${p}`).join('\n'), 3);
  }
  if (stages.some((s) => s.name === 'overlay')) await imagePki(ctx, outDir, opts.rotateCredentials);
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
        const reuse = !(opts.noCache || opts.rebuild?.includes(stage.name));
        const { dir, cached } = await c.cache.getOrPut(
          stage.name,
          key,
          inputs,
          async (d) => {
            await makeRoom(c, stage);
            await stage.run(c, d);
          },
          { reuse, progress: (l) => c.progress(l) },
        );
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

/**
 * Before a stage runs: when the cache's file system has less free than a stage may need, the least
 * recently used outputs of earlier builds go (never one this build has read), and the progress
 * line and the build log say which.
 */
async function makeRoom(ctx: BuildContext, stage: Stage): Promise<void> {
  const need = stage.name === 'kernel' ? DISK_BYTES[baseKind(ctx.recipe.kernel.base)] : SPACE_NEEDED.cache;
  const inUse = new Set(Object.values(ctx.outputs).map((o) => o.dir));
  const { removed, free } = await ctx.cache.makeRoom(need, inUse);
  if (!removed.length) return;
  const bytes = removed.reduce((n, o) => n + o.bytes, 0);
  const line = `cache: removed ${removed.length} old stage output(s) (${formatSize(bytes)}: ${removed.map((o) => `${o.stage}/${basename(o.dir)}`).join(', ')}) to make room for stage ${stage.name}; ${formatSize(free)} free now`;
  ctx.progress(line);
  await appendFile(ctx.log, `${line}\n`);
}

/** Where an image's certificates and keys live: runtime.pki, or <out>/<name>.pki. */
export function pkiDirFor(r: ResolvedRecipe, outDir: string): string {
  return r.runtime.pki ? resolve(r.runtime.pki) : join(outDir, `${r.name}.pki`);
}

/**
 * The image's credentials (runtime.tls): made on the first build, reused after (a rebuild rotates
 * nothing; `aios build image --rotate-credentials` makes all of them anew). Also the warning for a
 * listener left open on purpose (runtime.insecure_listen).
 */
async function imagePki(ctx: BuildContext, outDir: string, rotate = false): Promise<void> {
  const r = ctx.recipe;
  if (!r.runtime.enabled) return;
  if (r.runtime.insecure_listen) {
    const open = (['listen', 'http_listen'] as const).filter((k) => !isLoopback(r.runtime[k]));
    if (open.length && !r.runtime.tls) ctx.warnings.push(`runtime.insecure_listen: ${open.map((k) => `${r.runtime[k]} (runtime.${k})`).join(' and ')} will accept anyone on the network without authentication`);
  }
  if (!r.runtime.tls) return;
  const dir = pkiDirFor(r, outDir);
  const pki = await createPki(dir, { hostname: r.system.hostname, sans: r.runtime.tls_sans, rotate });
  if (pki.made.length) await appendFile(ctx.log, `credentials in ${dir}: made ${pki.made.join(', ')}\n`);
  ctx.pki = pki;
}

/** The certificates' fingerprints and the server's names, for the manifest (the pki path only when the recipe names one). */
async function tlsManifest(pki: Pki, recipePki: string): Promise<NonNullable<NonNullable<Manifest['runtime']>['tls']>> {
  const fp = async (f: string) => new X509Certificate(await readFile(f)).fingerprint256.replace(/:/g, '').toLowerCase();
  return { ca: await fp(pki.caCert), server: await fp(pki.serverCert), sans: await certSans(pki.serverCert), ...(recipePki ? { pki: recipePki } : {}) };
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

/** What `aios build kernel` made: the custom kernel's stage output. */
export interface KernelStageResult {
  recipe: ResolvedRecipe;
  /** root/boot/vmlinuz-<release> and root/usr/lib/modules/<release>/, as the overlay stage installs them. */
  dir: string;
  info: Omit<KernelBuildInfo, 'check'>;
  stage: StageReport;
}

/** `aios build kernel`: only the custom kernel stage (cached like in an image build, so a later `build image` reuses it). */
export async function buildKernelStage(opts: BuildOptions = {}): Promise<KernelStageResult> {
  const { ctx, outDir, renderer } = await prepare(opts);
  if (!ctx.recipe.kernel.build) throw new UserError(`recipe ${opts.recipe ?? 'default'} has kernel.build = false: no custom kernel to build (images/custom-kernel.toml has one; or --set kernel.build=true)`, 2);
  const [stage] = await runStages(ctx, STAGES.filter((s) => s.name === 'kernel'), opts, renderer, outDir);
  const dir = ctx.outputs.kernel!.dir;
  return { recipe: ctx.recipe, dir, info: await kernelBuildManifest(dir), stage: stage! };
}

export async function build(opts: BuildOptions = {}): Promise<BuildResult> {
  const t0 = Date.now();
  const { ctx, outDir, renderer } = await prepare(opts);
  const recipe = ctx.recipe;
  const log = ctx.log;
  const formats = opts.formats ?? recipe.image.formats;
  // The appliance's update artifacts are signed when a key is configured: opened before the stages
  // (its public key goes into the image), closed (the throw-away keyring removed) whatever happens.
  const appliance = recipe.image.layout === 'appliance' && formats.includes('disk');
  if (appliance) ctx.updateSigner = await openSigner({ keyFile: opts.signingKey });
  else if (opts.signingKey) throw new UserError('--signing-key signs the update artifacts of image.layout = "appliance" (disk) builds; this build has none', 2);
  try {
    if (appliance) updateWarnings(ctx);
    const reports = await runStages(ctx, stagesFor(formats, recipe), opts, renderer, outDir);

    const outputs: BuildResult['outputs'] = [];
    for (const format of (['disk', 'iso'] as const).filter((f) => formats.includes(f))) {
      const [stage, file, ext] = format === 'disk' ? ['image', 'disk.raw', 'raw'] : ['iso', 'live.iso', 'iso'];
      outputs.push(await publish(ctx, reports, { format, src: join(ctx.outputs[stage]!.dir, file), dest: join(outDir, `${recipe.name}.${ext}`) }));
    }
    const update = appliance ? await applianceUpdate(ctx, outputs[0]!.file, join(outDir, 'update')) : undefined;
    return { recipe, image: outputs[0]!.file, manifest: outputs[0]!.manifest, outputs, log, stages: reports, warnings: ctx.warnings, seconds: (Date.now() - t0) / 1000, ...(ctx.pki ? { pki: ctx.pki.dir } : {}), ...(update ? { update } : {}) };
  } finally {
    await ctx.updateSigner?.close();
  }
}

/** What an unsigned appliance image accepts, said once per build. */
function updateWarnings(ctx: BuildContext): void {
  if (ctx.updateSigner) return;
  const src = ctx.recipe.update.source;
  ctx.warnings.push(
    `update artifacts unsigned (no $${SIGNING_KEY_ENV} and no --signing-key): the image's sysupdate transfers say Verify=no, so it installs any update whose files match SHA256SUMS from ${src.startsWith('/') ? `the directory ${src}` : src}; whoever can write there can supply both`,
  );
}

/**
 * image.layout = "appliance": this version's update artifacts into <out>/update/ (beside the disk
 * image), cut from the published disk (slot A and its hash tree, offsets from the image stage's
 * layout.json), the kernel and initrd from the overlay's root, the entry as written to the ESP.
 */
async function applianceUpdate(ctx: BuildContext, disk: string, dir: string): Promise<UpdateResult> {
  const layout = JSON.parse(await readFile(join(ctx.outputs.image!.dir, 'layout.json'), 'utf8')) as {
    layout: { rootA: { start: number }; verityA: { start: number } };
    appliance: { version: string; rootHash: string; readonlyFs: 'erofs' | 'squashfs'; readonlyBytes: number; entry: string };
  };
  const root = join(ctx.outputs.overlay!.dir, 'root');
  const kernel = await ctx.distro.kernelFiles(root);
  const a = layout.appliance;
  if (!a?.entry) throw new Error(`${join(ctx.outputs.image!.dir, 'layout.json')} has no boot entry: an image stage output from before the update artifacts; rebuild it (--rebuild image)`);
  ctx.progress('writing the update artifacts');
  return publishUpdate(
    { log: ctx.log },
    {
      version: a.version,
      rootHash: a.rootHash,
      fs: a.readonlyFs,
      disk,
      rootStart: layout.layout.rootA.start,
      verityStart: layout.layout.verityA.start,
      readonlyBytes: a.readonlyBytes,
      kernel: join(root, kernel.kernel),
      initrd: join(root, kernel.initrd),
      entry: a.entry,
    },
    dir,
    ctx.updateSigner,
  );
}

/** Copies an output under a temporary name in out/, writes its manifest, then renames both: never a partial file at the path. */
async function publish(ctx: BuildContext, reports: StageReport[], a: { format: 'disk' | 'iso'; src: string; dest: string }) {
  const dir = dirname(a.dest);
  const tmp = join(dir, `.${basename(a.dest)}.tmp-${process.pid}`);
  const manifestFile = manifestPath(a.dest);
  const unregister = registerTemp(tmp);
  try {
    await run(['cp', '--sparse=always', '--reflink=auto', a.src, tmp], { log: ctx.log });
    const manifest = await buildManifest(ctx, tmp, reports, a.format, basename(a.dest));
    await writeFile(`${tmp}.manifest`, JSON.stringify(manifest, null, 2) + '\n');
    await rename(`${tmp}.manifest`, manifestFile);
    await rename(tmp, a.dest);
  } finally {
    unregister();
    await safeRemove(tmp);
    await safeRemove(`${tmp}.manifest`);
  }
  return { format: a.format, file: a.dest, manifest: manifestFile };
}

type NvidiaBuilt = { kernel?: string; module?: string; source?: { package: string; version: string; section: string } };
const nvidiaBuilt = async (ctx: BuildContext): Promise<NvidiaBuilt> => JSON.parse(await readFile(join(ctx.outputs.rootfs!.dir, 'nvidia.json'), 'utf8').catch(() => '{}')) as NvidiaBuilt;

/** gpu.driver (docs/gpu.md): the driver, the module DKMS built and for which kernel, the CUDA architectures of a CUDA llama.cpp. */
async function gpuManifest(ctx: BuildContext): Promise<NonNullable<Manifest['gpu']>> {
  const r = ctx.recipe;
  const built = await nvidiaBuilt(ctx);
  return { driver: r.gpu.driver, module: built.module ?? '', kernel: built.kernel ?? '', ...(built.source ? { source: `${built.source.package} ${built.source.version}` } : {}), ...(r.llama.enabled && r.llama.gpu === 'cuda' ? { cudaArch: r.gpu.cuda_arch, flashAttention: r.gpu.flash_attention } : {}) };
}

async function buildManifest(ctx: BuildContext, file: string, stages: StageReport[], format: 'disk' | 'iso', name: string): Promise<Manifest> {
  const r = ctx.recipe;
  const root = join(ctx.outputs.overlay!.dir, 'root');
  const kernel = await ctx.distro.kernelFiles(root);
  const packages = JSON.parse(await readFile(join(ctx.outputs.overlay!.dir, 'packages.json'), 'utf8')) as Record<string, string>;
  // The rootfs stage's list of packages from outside Debian's free archive, less any the overlay removed.
  const nf = JSON.parse(await readFile(join(ctx.outputs.rootfs!.dir, 'nonfree.json'), 'utf8').catch(() => '{}')) as Record<string, string>;
  const nonfree = Object.fromEntries(Object.entries(nf).filter(([n]) => n in packages));
  // gpu.driver: the DKMS package is gone from the image, the module compiled from it is not.
  const src = (await nvidiaBuilt(ctx)).source;
  if (src && /^(non-free|non-free-firmware|contrib)\//.test(src.section)) nonfree[src.package] = src.version;
  const layout = format === 'disk' ? JSON.parse(await readFile(join(ctx.outputs.image!.dir, 'layout.json'), 'utf8')) : undefined;
  const iso = format === 'iso' ? JSON.parse(await readFile(join(ctx.outputs.iso!.dir, 'iso.json'), 'utf8')) : undefined;
  const squashfs = format === 'iso' ? JSON.parse(await readFile(join(ctx.outputs.squashfs!.dir, 'squashfs.json'), 'utf8')) : undefined;
  const st = await stat(file);
  const bootArgs = (await kernelWishes(ctx)).bootArgs;
  return {
    name: r.name,
    recipe: r.sources,
    recipeHash: hashOf(r),
    created: new Date((sourceDateEpoch() ?? Date.now() / 1000) * 1000).toISOString(),
    distro: { name: r.base.distro, suite: r.base.suite, mirror: r.base.mirror },
    format,
    kernel: { version: kernel.version, cmdline: iso ? iso.cmdline : kernelCmdline(r, ctx.id, bootArgs), fragments: r.kernel.fragments, wishes: (await kernelWishes(ctx)).results, ...(ctx.outputs.kernel ? { build: await kernelBuildManifest(ctx.outputs.kernel.dir) } : {}) },
    identity: ctx.id,
    image: { file: name, bytes: st.size, sha256: await sha256File(file) },
    partitions: layout?.sfdisk?.partitiontable?.partitions ?? [],
    ...(iso ? { iso: { label: iso.label, squashfs: { path: iso.squashfs, bytes: squashfs.bytes, sha256: squashfs.sha256 }, efiImage: iso.efiImage, initrd: iso.initrd } } : {}),
    // Stage keys only: timings and cache hits are in the build result, so that two builds of the
    // same inputs give the same manifest.
    stages: stages.filter((s) => [undefined, format].includes(STAGES.find((x) => x.name === s.name)?.output)).map((s) => ({ name: s.name, key: s.key })),
    llama: existsSync(join(ctx.outputs.overlay!.dir, 'llama.json')) ? JSON.parse(await readFile(join(ctx.outputs.overlay!.dir, 'llama.json'), 'utf8')) : null,
    runtime: r.runtime.enabled
      ? {
          enabled: true,
          listen: r.runtime.listen,
          http_listen: r.runtime.http_listen,
          ...(r.runtime.insecure_listen ? { insecure_listen: true } : {}),
          ...(ctx.pki ? { tls: await tlsManifest(ctx.pki, r.runtime.pki) } : {}),
          probe: { prompt: 'Respond with OK if you are working.', grammar: 'root ::= "OK"', expect: 'OK' },
        }
      : null,
    models: existsSync(join(ctx.outputs.overlay!.dir, 'models.json')) ? JSON.parse(await readFile(join(ctx.outputs.overlay!.dir, 'models.json'), 'utf8')) : [],
    ...(r.fleet.role === 'worker' ? { fleet: { role: 'worker' as const, listen: r.fleet.listen, heads: r.fleet.heads, ...(r.fleet.interface ? { interface: r.fleet.interface } : {}) } } : {}),
    packages,
    ...(Object.keys(nonfree).length ? { nonfree } : {}),
    ...(r.gpu.driver !== 'none' ? { gpu: await gpuManifest(ctx) } : {}),
  };
}

