/**
 * The build as a flat list of named stages. Each stage: check (host tools, before anything runs),
 * key (hash of its inputs: an unchanged stage is reused from the cache), run (into a fresh dir).
 */
import { cp, mkdir, writeFile, symlink, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import type { ResolvedRecipe } from '../config/schema.js';
import type { Distro } from '../distros/types.js';
import type { StageCache } from './cache.js';
import { type Identity, templateContext } from './context.js';
import { renderTree, writeRendered, type RenderedFile } from './render.js';
import { run, which } from '../util/exec.js';
import { hashOf, hashTree } from '../util/hash.js';
import { paths } from '../util/paths.js';
import { RuntimeConfigSchema } from '../runtime/config.js';
import { assembleDisk, xfsToolsMissing } from './image.js';

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
}

/** Bump when a stage's code changes what it produces, to invalidate old cache entries. */
const STAGE_VERSION = { rootfs: 1, overlay: 1, image: 1 } as const;

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

/** Units enabled in every image (systemctl enable inside the root). */
function unitsToEnable(r: ResolvedRecipe): string[] {
  const u = ['aios-check.service'];
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
    const files = await renderTree(join(paths.templates, 'root'), templateContext(r, ctx.id));
    return {
      v: STAGE_VERSION.overlay,
      rootfs: ctx.outputs.rootfs!.key,
      files: filesDigest(files),
      overlay: await hashTree(paths.rootfsOverlay),
      masked: r.system.masked_units,
      enable: unitsToEnable(r),
      password: r.system.root_password_hash ?? null,
      timezone: r.system.timezone,
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
    const files = await renderTree(join(paths.templates, 'root'), templateContext(r, ctx.id));
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
  },
};

export const imageStage: Stage = {
  name: 'image',
  title: 'Assemble the GPT disk image',
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
    const esp = await renderTree(join(paths.templates, 'esp'), templateContext(r, ctx.id, { kernel }));
    return {
      v: STAGE_VERSION.image,
      overlay: ctx.outputs.overlay!.key,
      id: ctx.id,
      image: r.image,
      fs: r.filesystem.root,
      esp: filesDigest(esp),
      sde: process.env.SOURCE_DATE_EPOCH ?? null,
    };
  },
  async run(ctx, dir) {
    const r = ctx.recipe;
    const root = join(ctx.outputs.overlay!.dir, 'root');
    const kernel = await ctx.distro.kernelFiles(root);
    const espFiles = await renderTree(join(paths.templates, 'esp'), templateContext(r, ctx.id, { kernel }));
    await assembleDisk(ctx, { root, kernel, espFiles, out: join(dir, 'disk.raw'), layoutOut: join(dir, 'layout.json') });
  },
};

export const STAGES: Stage[] = [rootfsStage, overlayStage, imageStage];

