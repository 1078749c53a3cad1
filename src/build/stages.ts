/**
 * The build as a flat list of named stages. Each stage: check (host tools, before anything runs),
 * key (hash of its inputs: an unchanged stage is reused from the cache), run (into a fresh dir).
 */
import { chmod, copyFile, cp, mkdir, readFile, writeFile, symlink, rm, stat } from 'node:fs/promises';
import { existsSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import type { ResolvedRecipe } from '../config/schema.js';
import type { Distro } from '../distros/types.js';
import type { StageCache } from './cache.js';
import { type Identity, isoLabel, liveKernelCmdline, mergeArgs, sourceDateEpoch, templateContext, tuningArgs } from './context.js';
import { kernelCheck, MET, type CheckResult } from '../kernel/check.js';
import { loadFragments } from '../kernel/config.js';
import { renderTree, writeRendered, type RenderedFile } from './render.js';
import { run, which } from '../util/exec.js';
import { hashTree, sha256File } from '../util/hash.js';
import { formatSize } from '../util/size.js';
import { catalogEntry } from '../models/catalog.js';
import { fetchModel } from '../models/fetch.js';
import { inspectModel, type ModelInfo } from '../models/gguf.js';
import { synthModel } from '../models/synth.js';
import { paths, PKG_ROOT } from '../util/paths.js';
import { bundleRuntime } from './runtime-bundle.js';
import { RuntimeConfigSchema } from '../runtime/config.js';
import { assembleDisk, fatImage, rootContentBytes, stageEsp, touchAll, xfsToolsMissing } from './image.js';
import { EFI_IMAGE, fatSize, linkOrCopy, squashfsArgv, writeLiveFiles, xorrisoArgv } from './live.js';
import { buildLlama, cmakeArgs, fetchSource, isaFor, llamaHostProblems, sourceIdentity, toolchainId } from './llama.js';

export interface BuildContext {
  recipe: ResolvedRecipe;
  distro: Distro;
  id: Identity;
  cache: StageCache;
  cacheDir: string;
  /** Build log (every command and its output). */
  log: string;
  asRoot: boolean;
  /** Outputs of stages that ran or were reused, by stage name. */
  outputs: Record<string, { dir: string; key: string; cached: boolean; seconds: number }>;
  warnings: string[];
  /** Kernel wishes checked against the image's own kernel config (after the rootfs stage). */
  kernelWishes?: CheckResult;
  /** Progress line for the current stage. */
  progress: (line: string) => void;
}

export interface Stage {
  name: string;
  title: string;
  /** Problems that make this stage impossible on this host (missing tools, …). */
  check(ctx: BuildContext): Promise<string[]>;
  /** The stage's inputs; their hash is the cache key. */
  inputs(ctx: BuildContext): Promise<unknown>;
  run(ctx: BuildContext, dir: string): Promise<void>;
  /** Set for the stages of one output only (`image.formats`); unset: every build needs it. */
  output?: 'disk' | 'iso';
}

/** Bump when a stage's code changes what it produces, to invalidate old cache entries. */
const STAGE_VERSION = { rootfs: 1, llama: 3, models: 1, overlay: 2, image: 2, squashfs: 1, iso: 1 } as const;

async function missingTools(tools: Record<string, string>): Promise<string[]> {
  const out: string[] = [];
  for (const [cmd, pkg] of Object.entries(tools)) if (!(await which(cmd))) out.push(`${cmd} not found (install the Debian package ${pkg})`);
  return out;
}

const filesDigest = (files: RenderedFile[]) => files.map((f) => ({ p: f.path, m: f.mode, c: f.content }));

export const rootfsStage: Stage = {
  name: 'rootfs',
  title: 'Bootstrap the root filesystem',
  async check(ctx) {
    const tools: Record<string, string> = {};
    for (const t of ctx.distro.hostTools(ctx.recipe)) tools[t] = ctx.distro.hostToolPackages[t] ?? t;
    return missingTools(tools);
  },
  async inputs(ctx) {
    const r = ctx.recipe;
    const early = await renderTree(join(paths.templates, 'bootstrap'), templateContext(r, ctx.id));
    return {
      v: STAGE_VERSION.rootfs,
      distro: r.base.distro,
      suite: r.base.suite,
      mirror: r.base.mirror,
      packages: ctx.distro.packages(r),
      early: filesDigest(early),
    };
  },
  async run(ctx, dir) {
    const r = ctx.recipe;
    const early = join(dir, 'early');
    await writeRendered(await renderTree(join(paths.templates, 'bootstrap'), templateContext(r, ctx.id)), early);
    const pkgCache = join(ctx.cacheDir, 'packages', `${r.base.distro}-${r.base.suite}`);
    await mkdir(pkgCache, { recursive: true });
    const root = join(dir, 'root');
    const work = join(dir, 'work');
    await mkdir(work, { recursive: true });
    if (r.base.distro === 'arch') await mkdir(root, { recursive: true });
    const plan = ctx.distro.bootstrap(r, { root, pkgCache, earlyFiles: early, work, asRoot: ctx.asRoot });
    for (const [p, content] of Object.entries(plan.files)) {
      await mkdir(dirname(p), { recursive: true });
      await writeFile(p, content);
    }
    for (const step of plan.steps) {
      ctx.progress(step.title);
      await run(step.argv, {
        env: { ...process.env, ...step.env } as Record<string, string>,
        log: ctx.log,
        onLine: (l) => {
          const s = l.replace(/\x1b\[[0-9;]*m/g, '').trim();
          if (s) ctx.progress(`${step.title}: ${s.slice(0, 100)}`);
        },
      });
    }
    await ctx.distro.kernelFiles(root); // fails clearly if the kernel or initrd is missing
    const list = ctx.distro.packageListCommand(root);
    const { stdout } = await run(list.argv, { log: ctx.log });
    await writeFile(join(dir, 'packages.json'), JSON.stringify(ctx.distro.parsePackageList(stdout), null, 1));
    await rm(work, { recursive: true, force: true });
  },
};

export const llamaStage: Stage = {
  name: 'llama',
  title: 'Build llama.cpp',
  async check(ctx) {
    return ctx.recipe.llama.enabled ? llamaHostProblems(ctx.recipe.llama) : [];
  },
  async inputs(ctx) {
    const l = ctx.recipe.llama;
    if (!l.enabled) return { v: STAGE_VERSION.llama, enabled: false };
    return {
      v: STAGE_VERSION.llama,
      source: await sourceIdentity(l),
      cmake: cmakeArgs(l, 'SRC', 'BUILD'),
      targets: l.targets,
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
};

export const modelsStage: Stage = {
  name: 'models',
  title: 'Fetch, synthesize and check models',
  async check(ctx) {
    const synth = ctx.recipe.models.some((m) => m.source === 'synth');
    const problems: string[] = [];
    if (synth) {
      const py = await run(['/usr/bin/python3', '-c', 'import numpy'], { reject: false });
      if (py.exitCode !== 0) problems.push('synthesized models need /usr/bin/python3 with numpy (install the Debian package python3-numpy)');
    }
    for (const m of ctx.recipe.models) if (m.source === 'file' && !existsSync(m.path)) problems.push(`models: ${m.name}: no such file ${m.path}`);
    return problems;
  },
  async inputs(ctx) {
    const specs = [];
    for (const m of ctx.recipe.models) {
      if (m.source === 'file') {
        const st = statSync(m.path);
        specs.push({ ...m, size: st.size, mtime: st.mtimeMs });
      } else if (m.source === 'catalog') specs.push({ ...m, sha256: catalogEntry(m.id)!.sha256 });
      else specs.push(m);
    }
    const synth = ctx.recipe.models.some((m) => m.source === 'synth');
    return { v: STAGE_VERSION.models, specs, llama: synth ? ctx.outputs.llama?.key : null };
  },
  async run(ctx, dir) {
    await mkdir(join(dir, 'models'), { recursive: true });
    const downloads = join(ctx.cacheDir, 'downloads');
    await mkdir(downloads, { recursive: true });
    const out: InstalledModel[] = [];
    for (const m of ctx.recipe.models) {
      const dest = join(dir, 'models', `${m.name}.gguf`);
      ctx.progress(`${m.name}: ${m.source}`);
      if (m.source === 'synth') {
        const llama = ctx.outputs.llama!.dir;
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
      out.push({ name: m.name, level: m.level, source: m.source, file: `${m.name}.gguf`, sha256: await sha256File(dest), bytes: statSync(dest).size, info: { ...info, file: `${m.name}.gguf` } });
    }
    await writeFile(join(dir, 'models.json'), JSON.stringify(out, null, 2));
  },
};

export interface InstalledModel {
  name: string;
  level: 'operational' | 'tactical';
  source: string;
  file: string;
  sha256: string;
  bytes: number;
  info: ModelInfo;
}

/** "version: 0.5.0-dev (build 1, commit de3ff81) built with …" out of llama-server's log noise. */
export function versionLine(out: string): string {
  return /version: .*/.exec(out)?.[0]?.trim() ?? out.trim().split('\n').pop() ?? '';
}

/**
 * The recipe's kernel wishes against the kernel in the rootfs (its /boot/config-*): which are
 * already on, which the boot entry realises (their arguments join the cmdline), which need a rebuild.
 */
export async function kernelWishes(ctx: BuildContext): Promise<CheckResult> {
  if (ctx.kernelWishes) return ctx.kernelWishes;
  const r = ctx.recipe;
  if (!r.kernel.fragments.length) return (ctx.kernelWishes = { mode: 'config', results: [], bootArgs: [], unmet: 0 });
  const root = join(ctx.outputs.rootfs!.dir, 'root');
  const k = await ctx.distro.kernelFiles(root);
  const config = join(root, 'boot', `config-${k.version}`);
  if (!existsSync(config)) throw new Error(`kernel.fragments are set but the image's kernel has no /boot/config-${k.version} to check them against`);
  const res = await kernelCheck(await loadFragments(r.kernel.fragments), { config });
  const rebuild = res.results.filter((w) => !MET.includes(w.status));
  if (rebuild.length) {
    ctx.warnings.push(
      `kernel wishes the stock kernel ${k.version} cannot honour (they need a custom kernel, kernel.build): ` +
        rebuild.map((w) => `CONFIG_${w.symbol}=${w.value} (${w.status})`).join(', '),
    );
  }
  ctx.warnings.push(...mergeArgs(tuningArgs(r).args, res.bootArgs).conflicts);
  return (ctx.kernelWishes = res);
}

/** Template context with the boot-time kernel wishes folded into the command line. */
async function contextWithWishes(ctx: BuildContext, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  return templateContext(ctx.recipe, ctx.id, { ...extra, wishArgs: (await kernelWishes(ctx)).bootArgs });
}

/** Units enabled in every image (systemctl enable inside the root). */
function unitsToEnable(r: ResolvedRecipe): string[] {
  const u = ['aios-check.service'];
  if (r.runtime.enabled) u.push('aios-runtime.service');
  if (r.system.network === 'dhcp') u.push('systemd-networkd.service');
  return u;
}

export const overlayStage: Stage = {
  name: 'overlay',
  title: 'Apply templates and rootfs/ overlay',
  async check() {
    return missingTools({ cp: 'coreutils', chroot: 'coreutils' });
  },
  async inputs(ctx) {
    const r = ctx.recipe;
    const files = await renderTree(join(paths.templates, 'root'), await contextWithWishes(ctx));
    return {
      v: STAGE_VERSION.overlay,
      rootfs: ctx.outputs.rootfs!.key,
      llama: ctx.outputs.llama?.key ?? null,
      models: ctx.outputs.models?.key ?? null,
      runtime: r.runtime.enabled ? (await hashTree(join(PKG_ROOT, 'src/runtime'))) + (await hashTree(join(PKG_ROOT, 'proto'))) + (await hashTree(join(PKG_ROOT, 'src/models'))) + (await hashTree(join(PKG_ROOT, 'models'))) : null, // the bundle includes the GGUF reader, fetch and the catalog
      files: filesDigest(files),
      overlay: await hashTree(paths.rootfsOverlay),
      masked: r.system.masked_units,
      enable: unitsToEnable(r),
      password: r.system.root_password_hash ?? null,
      timezone: r.system.timezone,
      sde: sourceDateEpoch() ?? null,
    };
  },
  async run(ctx, dir) {
    const r = ctx.recipe;
    const root = join(dir, 'root');
    ctx.progress('copying the root filesystem');
    // A copy: the cached rootfs stage output is never changed by later stages.
    await run(['cp', '-a', '--reflink=auto', join(ctx.outputs.rootfs!.dir, 'root'), root], { log: ctx.log });
    await cp(join(ctx.outputs.rootfs!.dir, 'packages.json'), join(dir, 'packages.json'));
    ctx.progress('rendering templates');
    const files = await renderTree(join(paths.templates, 'root'), await contextWithWishes(ctx));
    await writeRendered(files, root);
    const cfg = files.find((f) => f.path === 'etc/aios/config.toml');
    if (cfg) {
      const parsed = RuntimeConfigSchema.safeParse(parseToml(cfg.content));
      if (!parsed.success) throw new Error(`templates/root/etc/aios/config.toml.hbs renders a file aios-runtime would reject: ${parsed.error.message}`);
    }
    ctx.progress('copying rootfs/');
    await run(['cp', '-a', '--no-preserve=ownership', `${paths.rootfsOverlay}/.`, `${root}/`], { log: ctx.log });
    for (const d of ['boot/efi', 'var/lib/aios/models', 'etc/aios']) await mkdir(join(root, d), { recursive: true });
    // Time zone.
    const zone = join('usr/share/zoneinfo', r.system.timezone);
    if (existsSync(join(root, zone))) {
      await rm(join(root, 'etc/localtime'), { force: true });
      await symlink(`/${zone}`, join(root, 'etc/localtime'));
    } else if (r.system.timezone !== 'UTC') {
      ctx.warnings.push(`timezone ${r.system.timezone}: no /${zone} in the image (add tzdata to base.packages); using UTC`);
    }
    if (r.runtime.enabled) {
      ctx.progress('bundling aios-runtime');
      await bundleRuntime(join(root, 'usr/lib/aios-runtime'));
    }
    ctx.progress('enabling and masking units');
    for (const u of unitsToEnable(r)) await run(['chroot', root, 'systemctl', 'enable', u], { log: ctx.log });
    // networkd's Also= pulls in wait-online, which would hold boot for 2 minutes without a link.
    if (r.system.network === 'dhcp') await run(['chroot', root, 'systemctl', 'disable', 'systemd-networkd-wait-online.service'], { log: ctx.log, reject: false });
    for (const u of r.system.masked_units) {
      const p = join(root, 'etc/systemd/system', u);
      await rm(p, { force: true });
      await symlink('/dev/null', p);
    }
    if (r.system.root_password_hash) await run(['chroot', root, 'usermod', '-p', r.system.root_password_hash, 'root'], { log: ctx.log });
    if (r.llama.enabled) await installLlama(ctx, root, dir);
    await installModels(ctx, root, dir);
    const sde = sourceDateEpoch();
    if (sde !== undefined) {
      // Reproducible builds: nothing in the root is newer than SOURCE_DATE_EPOCH (files the rootfs
      // packages brought keep their older mtimes).
      ctx.progress('clamping mtimes to SOURCE_DATE_EPOCH');
      await run(['find', root, '-newermt', `@${sde}`, '-exec', 'touch', '-h', '-d', `@${sde}`, '{}', '+'], { log: ctx.log });
    }
  },
};

export const imageStage: Stage = {
  name: 'image',
  title: 'Assemble the GPT disk image',
  output: 'disk',
  async check(ctx) {
    const xfs = ctx.recipe.filesystem.root === 'xfs' ? await xfsToolsMissing() : [];
    return xfs.concat(await missingTools({
      sfdisk: 'fdisk',
      'mkfs.vfat': 'dosfstools',
      mcopy: 'mtools',
      mmd: 'mtools',
      'mkfs.ext4': 'e2fsprogs',
      truncate: 'coreutils',
      dd: 'coreutils',
    }));
  },
  async inputs(ctx) {
    const r = ctx.recipe;
    const kernel = await ctx.distro.kernelFiles(join(ctx.outputs.overlay!.dir, 'root'));
    const esp = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel }));
    return {
      v: STAGE_VERSION.image,
      overlay: ctx.outputs.overlay!.key,
      id: ctx.id,
      image: r.image,
      fs: r.filesystem.root,
      esp: filesDigest(esp),
      sde: sourceDateEpoch() ?? null,
    };
  },
  async run(ctx, dir) {
    const r = ctx.recipe;
    const root = join(ctx.outputs.overlay!.dir, 'root');
    const kernel = await ctx.distro.kernelFiles(root);
    const espFiles = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel }));
    await assembleDisk(ctx, { root, kernel, espFiles, out: join(dir, 'disk.raw'), layoutOut: join(dir, 'layout.json') });
  },
};

/** Copies the llama.cpp binaries to /usr/bin and proves they run inside the target root. */
async function installLlama(ctx: BuildContext, root: string, dir: string): Promise<void> {
  const llamaDir = ctx.outputs.llama!.dir;
  ctx.progress('installing llama.cpp binaries');
  for (const t of ctx.recipe.llama.targets) await run(['install', '-m', '0755', join(llamaDir, 'bin', t), join(root, 'usr/bin', t)], { log: ctx.log });
  const check = await run(['chroot', root, '/usr/bin/llama-server', '--version'], { log: ctx.log, reject: false });
  if (check.exitCode !== 0) {
    throw new Error(`llama-server does not run inside the target root (exit ${check.exitCode}): ${check.all.slice(-400)}. The build host's toolchain must not be newer than the image's (glibc, libstdc++).`);
  }
  const info = JSON.parse(await readFile(join(llamaDir, 'llama.json'), 'utf8'));
  await writeFile(join(dir, 'llama.json'), JSON.stringify({ ...info, versionInTarget: versionLine(check.all) }, null, 2));
}

/** Models go to /var/lib/aios/models (hard links to the models stage's files where possible). */
async function installModels(ctx: BuildContext, root: string, dir: string): Promise<void> {
  const src = ctx.outputs.models!.dir;
  const models = JSON.parse(await readFile(join(src, 'models.json'), 'utf8')) as InstalledModel[];
  for (const m of models) {
    ctx.progress(`installing model ${m.name}`);
    const dest = join(root, 'var/lib/aios/models', m.file);
    await run(['cp', '--reflink=auto', join(src, 'models', m.file), dest], { log: ctx.log });
  }
  await writeFile(join(dir, 'models.json'), JSON.stringify(models, null, 2));
}

/** The ISO's kernel, its live initramfs and the boot entry (templates/esp with the live command line). */
async function liveEsp(ctx: BuildContext) {
  const root = join(ctx.outputs.overlay!.dir, 'root');
  const kernel = await ctx.distro.kernelFiles(root);
  const initrd = ctx.distro.live.initrd(kernel);
  if (!existsSync(join(root, initrd))) throw new Error(`the live initramfs /${initrd} is missing in the root (the ${ctx.recipe.base.distro} rootfs should have made it)`);
  const label = isoLabel(ctx.recipe);
  const wishes = (await kernelWishes(ctx)).bootArgs;
  const cmdline = liveKernelCmdline(ctx.recipe, ctx.distro.live.cmdline(label), wishes);
  const files = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel, cmdline }));
  return { root, kernel, initrd, label, cmdline, files };
}

export const squashfsStage: Stage = {
  name: 'squashfs',
  title: 'Compress the live root (squashfs)',
  output: 'iso',
  async check() {
    return missingTools({ mksquashfs: 'squashfs-tools', unsquashfs: 'squashfs-tools' });
  },
  async inputs(ctx) {
    const live = await renderTree(join(paths.templates, 'live'), templateContext(ctx.recipe, ctx.id));
    return { v: STAGE_VERSION.squashfs, overlay: ctx.outputs.overlay!.key, live: filesDigest(live), sde: sourceDateEpoch() ?? null };
  },
  async run(ctx, dir) {
    const root = join(ctx.outputs.overlay!.dir, 'root');
    const live = await renderTree(join(paths.templates, 'live'), templateContext(ctx.recipe, ctx.id));
    const sde = sourceDateEpoch();
    const time = sde ?? Math.floor(Date.now() / 1000);
    const pseudo = await writeLiveFiles(live, join(dir, 'live-files'), time);
    const out = join(dir, 'root.squashfs');
    ctx.progress(`mksquashfs (zstd) of ${formatSize(await rootContentBytes(root))}`);
    // Without SOURCE_DATE_EPOCH in its environment: mksquashfs would set every file's time to it;
    // the overlay stage clamped them instead, which keeps the packages' own mtimes.
    const env = { ...process.env } as Record<string, string>;
    delete env.SOURCE_DATE_EPOCH;
    await run(squashfsArgv({ root, out, pseudoFile: pseudo, replaced: live.map((f) => f.path), mkfsTime: sde }), { log: ctx.log, env, extendEnv: false });
    await writeFile(join(dir, 'squashfs.json'), JSON.stringify({ bytes: (await stat(out)).size, sha256: await sha256File(out), live: live.map((f) => f.path) }, null, 2));
  },
};

export const isoStage: Stage = {
  name: 'iso',
  title: 'Assemble the live ISO (xorriso)',
  output: 'iso',
  async check() {
    return missingTools({ xorriso: 'xorriso', 'mkfs.vfat': 'dosfstools', mcopy: 'mtools' });
  },
  async inputs(ctx) {
    const e = await liveEsp(ctx);
    return { v: STAGE_VERSION.iso, squashfs: ctx.outputs.squashfs!.key, label: e.label, initrd: e.initrd, esp: filesDigest(e.files), sde: sourceDateEpoch() ?? null };
  },
  async run(ctx, dir) {
    const e = await liveEsp(ctx);
    const work = join(dir, 'work');
    const isoRoot = join(work, 'iso-root');
    ctx.progress('staging the EFI boot image');
    const esp = join(work, 'esp');
    await stageEsp(ctx, { root: e.root, kernel: e.kernel, initrd: e.initrd, espFiles: e.files, dir: esp });
    await mkdir(join(isoRoot, 'boot'), { recursive: true });
    const img = join(isoRoot, EFI_IMAGE);
    await fatImage(ctx, { dir: esp, img, bytes: fatSize(await rootContentBytes(esp)), label: 'AIOS_EFI', volumeId: ctx.id.espVolumeId });
    const sfs = join(isoRoot, ctx.distro.live.squashfs);
    await mkdir(dirname(sfs), { recursive: true });
    await linkOrCopy(join(ctx.outputs.squashfs!.dir, 'root.squashfs'), sfs);
    const sde = sourceDateEpoch();
    if (sde !== undefined) await touchAll(isoRoot, sde);
    ctx.progress('xorriso');
    const out = join(dir, 'live.iso');
    await run(xorrisoArgv({ out, label: e.label, isoRoot }), { log: ctx.log });
    await chmod(out, 0o644);
    await writeFile(join(dir, 'iso.json'), JSON.stringify({ label: e.label, cmdline: e.cmdline, squashfs: ctx.distro.live.squashfs, efiImage: EFI_IMAGE, initrd: e.initrd }, null, 2));
    await rm(work, { recursive: true, force: true });
  },
};

/** Every stage, in order. A build runs the ones its outputs need (`stagesFor`). */
export const STAGES: Stage[] = [rootfsStage, llamaStage, modelsStage, overlayStage, imageStage, squashfsStage, isoStage];

/** The stages that build these outputs: the shared ones, then each output's own. */
export function stagesFor(formats: readonly ('disk' | 'iso')[]): Stage[] {
  return STAGES.filter((s) => !s.output || formats.includes(s.output));
}

