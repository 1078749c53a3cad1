/**
 * rootfs: bootstraps the distribution's root filesystem (Debian: mmdebstrap; Arch: pacstrap) with
 * the recipe's packages, the stock kernel and one initramfs generation. Needs no earlier stage.
 * Output: root/ (the tree) and packages.json (name → version). Key: distro, suite, mirror, package
 * list and the early files (templates/bootstrap: initramfs config, apt/pacman settings).
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { templateContext } from '../context.js';
import { renderTree, writeRendered } from '../render.js';
import { run } from '../../util/exec.js';
import { paths } from '../../util/paths.js';
import { defineStage, filesDigest, missingTools } from './common.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 1;

export const rootfsStage = defineStage({
  name: 'rootfs',
  title: 'Bootstrap the root filesystem',
  needs: [],
  async check(ctx) {
    const tools: Record<string, string> = {};
    for (const t of ctx.distro.hostTools(ctx.recipe)) tools[t] = ctx.distro.hostToolPackages[t] ?? t;
    return missingTools(tools);
  },
  async inputs(ctx) {
    const r = ctx.recipe;
    const early = await renderTree(join(paths.templates, 'bootstrap'), templateContext(r, ctx.id));
    return {
      v: VERSION,
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
});
