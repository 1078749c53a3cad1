/**
 * kernel: the custom kernel (only with kernel.build = true; Debian only). Debian's
 * linux-source-<kernel.series> from base.suite (kernel.version pins it), a base config per
 * kernel.base (tiny: tinyconfig + kvm_guest.config + kernel-configs/tiny.config, VMs and CI only;
 * compact: x86_64_defconfig + kvm_guest.config + kernel-configs/compact.config; debian:
 * Debian's own; local: localmodconfig from this host's loaded modules; or a .config), the recipe's
 * fragments merged with the kernel's merge_config.sh + olddefconfig, then every wish checked on the
 * result: one that did not land fails the build (a warning with kernel.strict = false). Compiled out
 * of tree with the host gcc through ccache (<cache>/ccache), in <cache>/kernel/obj/<version>[-<base>]
 * (kept between builds, so make itself only recompiles what a config change touches).
 * Needs no earlier stage. Output: root/boot/{vmlinuz,config,System.map}-<release> and
 * root/usr/lib/modules/<release>/ (the overlay stage installs them in place of the stock kernel),
 * kernel.json (source, base, release, compiler, the wish check). Key: source version, the merged
 * .config, compiler and binutils versions.
 */
import { mkdir, mkdtemp, readFile, rename, statfs, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { sourceDateEpoch } from '../context.js';
import { hashOf, sha256 } from '../../util/hash.js';
import { UserError } from '../../util/errors.js';
import { safeRemove } from '../../util/cleanup.js';
import { formatSize } from '../../util/size.js';
import { debianKernel, type DebianKernel } from '../../kernel/debian.js';
import { baseKind, compileKernel, compilerId, DISK_BYTES, kernelEnv, kernelHostProblems, mergeInputsHash, mergeKernelConfig, type MergedKernelConfig } from '../../kernel/build.js';
import { withDirLock } from '../../util/lock.js';
import type { CheckResult } from '../../kernel/check.js';
import { defineStage } from './common.js';
import type { BuildContext } from './index.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 1;

/** What kernel.json holds (and the manifest records under kernel.build). */
export interface KernelBuildInfo {
  source: { package: string; version: string; suite: string };
  base: string;
  release: string;
  configSha256: string;
  compiler: { gcc: string; ld: string };
  strict: boolean;
  check: CheckResult;
}

const prepared = new WeakMap<BuildContext, { src: DebianKernel; obj: string; merged: MergedKernelConfig }>();

/**
 * Fetches the source (cached) and merges the config once per build, in a private directory (the
 * key needs the merged config; the kept build directory may be in use by another build).
 */
async function prepare(ctx: BuildContext) {
  const have = prepared.get(ctx);
  if (have) return have;
  const r = ctx.recipe;
  const k = r.kernel;
  const src = await debianKernel({ cacheDir: ctx.cacheDir, suite: r.base.suite, series: k.series, mirror: r.base.mirror, version: k.version, log: ctx.log, progress: ctx.progress });
  // One kept build directory per base (compact keeps the plain version): switching between bases
  // (CI's tiny, a real machine's compact) does not recompile everything each time.
  const kind = baseKind(k.base);
  const obj = join(ctx.cacheDir, 'kernel', 'obj', kind === 'compact' ? src.version : `${src.version}-${kind}`);
  // The merge of the same inputs is reused (make would take tens of seconds on every build).
  const memo = join(ctx.cacheDir, 'kernel', 'merged', `${(await mergeInputsHash(k, { version: src.version, source: src.source, debianConfig: src.config })).slice(0, 32)}.json`);
  let merged: MergedKernelConfig;
  if (existsSync(memo)) merged = JSON.parse(await readFile(memo, 'utf8')) as MergedKernelConfig;
  else {
    ctx.progress(`merging the config (base ${k.base}, fragments ${k.fragments.join(', ') || 'none'})`);
    const scratch = await mkdtemp(join(tmpdir(), 'aios-kernel-config-'));
    try {
      merged = await mergeKernelConfig(k, { source: src.source, debianConfig: src.config, obj: scratch, log: ctx.log });
    } finally {
      await safeRemove(scratch);
    }
    await mkdir(dirname(memo), { recursive: true });
    await writeFile(`${memo}.tmp-${process.pid}`, JSON.stringify(merged));
    await rename(`${memo}.tmp-${process.pid}`, memo);
  }
  if (merged.missing.length) {
    const list = merged.missing.map((w) => `CONFIG_${w.symbol}=${w.value} (${w.fragment}: ${w.status}: ${w.detail})`);
    if (k.strict) throw new UserError(`kernel: wishes that do not land in the built kernel's config (kernel.strict = true):\n` + list.map((l) => `  - ${l}`).join('\n'), 1);
    ctx.warnings.push(`kernel: wishes that do not land in the custom kernel (kernel.strict = false): ${list.join('; ')}`);
  }
  const p = { src, obj, merged };
  prepared.set(ctx, p);
  return p;
}

export const kernelStage = defineStage({
  name: 'kernel',
  title: 'Build the custom kernel',
  needs: [],
  enabled: (r) => r.kernel.build,
  async check(ctx) {
    if (!ctx.recipe.kernel.build) return [];
    const problems = await kernelHostProblems(ctx.recipe);
    const need = DISK_BYTES[baseKind(ctx.recipe.kernel.base)];
    await mkdir(ctx.cacheDir, { recursive: true });
    const fs = await statfs(ctx.cacheDir);
    const obj = join(ctx.cacheDir, 'kernel', 'obj');
    // A kept build dir already holds most of what a rebuild needs.
    // Old stage outputs are removed when the stage needs the room (build/index.ts makeRoom).
    const free = fs.bavail * fs.bsize;
    if (free < need && !existsSync(obj) && free + (await ctx.cache.reclaimable()) < need) problems.push(`the kernel build needs about ${formatSize(need)} in ${ctx.cacheDir}; only ${formatSize(free)} is free`);
    return problems;
  },
  async inputs(ctx) {
    const { src, merged } = await prepare(ctx);
    return {
      v: VERSION,
      source: { series: ctx.recipe.kernel.series, version: src.version, suite: ctx.recipe.base.suite },
      // The merged .config is the whole configuration (the base, the fragments, the compiler's
      // version text): any change to a fragment that lands changes it.
      config: hashOf(merged.config),
      compiler: await compilerId(),
      strict: ctx.recipe.kernel.strict,
      sde: sourceDateEpoch() ?? null,
    };
  },
  async run(ctx, dir) {
    const k = ctx.recipe.kernel;
    const { src, obj, merged } = await prepare(ctx);
    const env = kernelEnv(ctx.cacheDir, sourceDateEpoch());
    const root = join(dir, 'root');
    await mkdir(root, { recursive: true });
    const release = await withDirLock(obj, ctx.progress, async () => {
      // The same merge again, now in the kept build directory (make then recompiles only what changed).
      const again = await mergeKernelConfig(k, { source: src.source, debianConfig: src.config, obj, log: ctx.log });
      if (again.config !== merged.config) throw new Error(`kernel: the config merged in ${obj} differs from the one the cache key was computed from`);
      return compileKernel({ source: src.source, obj, dest: root, env, log: ctx.log, progress: ctx.progress });
    });
    const info: KernelBuildInfo = {
      source: { package: `linux-source-${k.series}`, version: src.version, suite: ctx.recipe.base.suite },
      base: k.base,
      release,
      configSha256: sha256(merged.config),
      compiler: await compilerId(),
      strict: k.strict,
      check: merged.check,
    };
    await writeFile(join(dir, 'kernel.json'), JSON.stringify(info, null, 2));
  },
});

/** The manifest's kernel.build: where the custom kernel came from (kernel.json without the wish check, which the manifest has as kernel.wishes). */
export async function kernelBuildManifest(dir: string): Promise<Omit<KernelBuildInfo, 'check'>> {
  const { check: _check, ...rest } = JSON.parse(await readFile(join(dir, 'kernel.json'), 'utf8')) as KernelBuildInfo;
  return rest;
}
