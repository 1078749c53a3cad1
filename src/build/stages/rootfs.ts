/**
 * rootfs: bootstraps the distribution's root filesystem (Debian: mmdebstrap; Arch: pacstrap) with
 * the recipe's packages, the stock kernel and one initramfs generation. Needs no earlier stage.
 * Output: root/ (the tree), packages.json (name → version) and, for Debian, nonfree.json (the
 * packages from contrib, non-free and non-free-firmware: gpu.driver). Key: distro, suite, mirror,
 * package list, components beyond main, and the early files (templates/bootstrap: initramfs config, apt/pacman settings).
 */
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { templateContext } from '../context.js';
import { renderTree, writeRendered } from '../render.js';
import { run } from '../../util/exec.js';
import { paths } from '../../util/paths.js';
import { defineStage, filesDigest, missingTools } from './common.js';
import type { ResolvedRecipe } from '../../config/schema.js';
import { NVIDIA_DKMS_HOOK, NVIDIA_MODULE_SOURCE, nvidiaModuleFile } from '../../distros/debian.js';
import { sha256File as hashFile } from '../../util/hash.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 1;

/** The archive components, where the distro has more than one set and the recipe asks for more than main. */
function components(ctx: { distro: { components?(r: ResolvedRecipe): string[] }; recipe: ResolvedRecipe }): string[] | undefined {
  const c = ctx.distro.components?.(ctx.recipe);
  return c && c.join(',') !== 'main' ? c : undefined;
}

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
      // Only where more than main (gpu.driver), so the keys of existing roots stay as they were.
      ...(components(ctx) ? { components: components(ctx) } : {}),
      ...(r.gpu.driver !== 'none' ? { nvidiaDkmsHook: (await hashFile(NVIDIA_DKMS_HOOK)).slice(0, 16) } : {}),
    };
  },
  async run(ctx, dir) {
    const r = ctx.recipe;
    const early = join(dir, 'early');
    await writeRendered(await renderTree(join(paths.templates, 'bootstrap'), templateContext(r, ctx.id)), early);
    // A root with non-free components keeps its .debs apart: every bootstrap copies its whole package cache in.
    const comps = components(ctx);
    const pkgCache = join(ctx.cacheDir, 'packages', `${r.base.distro}-${r.base.suite}${comps ? `-${comps.join('+')}` : ''}`);
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
    const kernel = await ctx.distro.kernelFiles(root); // fails clearly if the kernel or initrd is missing
    if (r.gpu.driver !== 'none') {
      // gpu.driver (docs/gpu.md): DKMS must have built the module for the image's own kernel.
      const m = await run(['chroot', root, 'modinfo', '-k', kernel.version, '-F', 'version', nvidiaModuleFile(r.gpu.driver)], { log: ctx.log, reject: false });
      if (m.exitCode !== 0 || !m.stdout.trim()) {
        throw new Error(`gpu.driver = "${r.gpu.driver}": DKMS built no nvidia module for the image's kernel ${kernel.version} (modinfo: ${m.all.trim().slice(0, 200)}); the DKMS build log is in the root under /var/lib/dkms, the bootstrap's output in ${ctx.log ?? 'the build log'}`);
      }
      // scripts/nvidia-dkms.sh removed the DKMS package after the build and wrote down what it was.
      const [pkg, version, section] = (await readFile(join(root, NVIDIA_MODULE_SOURCE), 'utf8').catch(() => '')).trim().split('\t');
      const source = pkg && version ? { package: pkg, version, section: section ?? '' } : undefined;
      await writeFile(join(dir, 'nvidia.json'), JSON.stringify({ kernel: kernel.version, module: m.stdout.trim(), ...(source ? { source } : {}) }, null, 1));
      ctx.progress(`nvidia ${m.stdout.trim()} built for ${kernel.version}`);
    }
    const list = ctx.distro.packageListCommand(root);
    const { stdout } = await run(list.argv, { log: ctx.log });
    await writeFile(join(dir, 'packages.json'), JSON.stringify(ctx.distro.parsePackageList(stdout), null, 1));
    if (ctx.distro.nonfreeCommand && ctx.distro.parseNonfree) {
      const nf = ctx.distro.nonfreeCommand(root);
      await writeFile(join(dir, 'nonfree.json'), JSON.stringify(ctx.distro.parseNonfree((await run(nf.argv, { log: ctx.log })).stdout), null, 1));
    }
    await rm(work, { recursive: true, force: true });
  },
});
