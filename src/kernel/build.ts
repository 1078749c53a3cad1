/**
 * Building a custom kernel from Debian's linux-source (kernel.build = true): the base config
 * (kernel.base), the recipe's wishes merged with the kernel's own merge_config.sh + olddefconfig,
 * the wishes checked on the result, then an out-of-tree build with the host toolchain and ccache,
 * installed (bzImage + modules) into a directory tree that the overlay stage copies into the root.
 *
 * Why not `make bindeb-pkg`: it needs dpkg-dev and a second pass that packages headers and
 * linux-libc-dev (minutes more on 2 cores, for files the image does not use), and the .debs would
 * still have to be installed inside the root. `modules_install` + the bzImage copied to /boot gives
 * the same files; the overlay stage purges the stock linux-image packages, runs depmod and
 * update-initramfs inside the root, so the package database stays truthful.
 */
import { existsSync, readFileSync } from 'node:fs';
import { copyFile, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import type { ResolvedRecipe } from '../config/schema.js';
import { run, which } from '../util/exec.js';
import { paths } from '../util/paths.js';
import { classifyAgainstTree, MET, mergeConfig, type CheckResult } from './check.js';
import { fragmentPath, loadFragments, parseFragment, readConfigText, type Wish } from './config.js';
import { hashOf, sha256File } from '../util/hash.js';
import { readKconfig } from './kconfig.js';

export type KernelRecipe = ResolvedRecipe['kernel'];

/**
 * CPU-minutes of a cold compile (no ccache hits) of each base on the 2-core development machine,
 * used to print an estimate for this host's core count. compact: ~3,000 objects × the measured
 * ~2 CPU-s per object (see docs/kernel.md, "Custom kernel"); tiny: measured 35 CPU-minutes cold
 * (2026-12-02: 24.3 min user + 10.4 min sys, ~1,600 compile steps, the config merge included);
 * the others are rough (a Debian config compiles ~15 times as many objects, with debug info).
 */
export const CORE_MINUTES = { tiny: 35, compact: 100, debian: 1200, local: 120, file: 240 } as const;
/** Disk the out-of-tree build needs (objects, without debug info for tiny and compact; tiny's build dir measured 230 MB, ccache beside it). */
export const DISK_BYTES = { tiny: 1 * 1024 ** 3, compact: 4 * 1024 ** 3, debian: 30 * 1024 ** 3, local: 8 * 1024 ** 3, file: 15 * 1024 ** 3 } as const;

export type BaseKind = 'tiny' | 'compact' | 'debian' | 'local' | 'file';
export const baseKind = (base: string): BaseKind => (base === 'tiny' || base === 'compact' || base === 'debian' || base === 'local' ? base : 'file');

/**
 * The bases made from the kernel's own targets: the make target, the fragments merged onto it
 * (the kernel's kvm_guest.config, then aios's kernel-configs/<kind>.config) and the environment
 * of the make run (tinyconfig on x86 is 32-bit unless ARCH says x86_64).
 */
export const TREE_BASES = {
  tiny: { target: 'tinyconfig', env: { ARCH: 'x86_64' } as Record<string, string>, fragment: 'tiny.config' },
  compact: { target: 'x86_64_defconfig', env: {} as Record<string, string>, fragment: 'compact.config' },
} as const;
const treeBase = (kind: BaseKind) => (kind === 'tiny' || kind === 'compact' ? TREE_BASES[kind] : undefined);

/** What the build is going to do, for the line printed before anything runs. */
export function kernelPlan(k: KernelRecipe, cores = cpus().length): string {
  const kind = baseKind(k.base);
  const minutes = Math.round(CORE_MINUTES[kind] / Math.max(1, cores));
  const time = minutes >= 90 ? `~${Math.round(minutes / 60)} hours` : `~${minutes} min`;
  const what = {
    tiny: 'tinyconfig + kvm_guest.config + kernel-configs/tiny.config: QEMU/KVM guests and CI only, no drivers for real machines',
    compact: 'x86_64_defconfig + kvm_guest.config + kernel-configs/compact.config',
    debian: "Debian's own config (every driver: this takes HOURS on a small machine)",
    local: 'make localmodconfig from the modules loaded on this host (the image is for this machine)',
    file: k.base,
  }[kind];
  return `custom kernel: Debian linux-source-${k.series}${k.version ? ` ${k.version}` : ''}, base ${kind === 'file' ? 'file' : kind} (${what}), fragments ${k.fragments.join(', ') || 'none'}; a cold compile takes ${time} on ${cores} core(s) (ccache makes a rebuild much faster), needs ~${Math.round(DISK_BYTES[kind] / 1024 ** 3)} GB in the cache dir`;
}

/** Whether the base config builds BTF (then pahole from dwarves is needed). */
export function baseWantsBtf(k: KernelRecipe): boolean {
  const kind = baseKind(k.base);
  if (treeBase(kind)) return false;
  if (kind === 'file') {
    try {
      return /^CONFIG_DEBUG_INFO_BTF=y/m.test(readFileSync(k.base, 'utf8'));
    } catch {
      return false;
    }
  }
  return true; // Debian's config (and localmodconfig from it) has DEBUG_INFO_BTF=y
}

/** Host problems that make the kernel build impossible: each names the Debian package to install. */
export async function kernelHostProblems(r: ResolvedRecipe): Promise<string[]> {
  const k = r.kernel;
  if (r.base.distro !== 'debian') {
    return [`kernel.build = true needs base.distro = "debian": the custom kernel is built from Debian's linux-source package, and no Arch kernel source or mirror is reachable from here (use the stock kernel: kernel.build = false)`];
  }
  const out: string[] = [];
  const tools: Record<string, string> = {
    make: 'make',
    gcc: 'gcc',
    ld: 'binutils',
    bc: 'bc',
    flex: 'flex',
    bison: 'bison',
    perl: 'perl',
    ccache: 'ccache',
    xz: 'xz-utils',
    'dpkg-deb': 'dpkg',
    'apt-get': 'apt',
    cpio: 'cpio',
    unshare: 'util-linux',
  };
  if (baseWantsBtf(k)) tools.pahole = 'dwarves (the base config has CONFIG_DEBUG_INFO_BTF=y)';
  for (const [cmd, pkg] of Object.entries(tools)) if (!(await which(cmd))) out.push(`${cmd} not found (install the Debian package ${pkg})`);
  for (const [hdr, pkg] of [
    ['/usr/include/gelf.h', 'libelf-dev'],
    ['/usr/include/openssl/opensslv.h', 'libssl-dev'],
  ] as const) {
    if (!existsSync(hdr) && !existsSync(hdr.replace('/usr/include/', '/usr/include/x86_64-linux-gnu/'))) out.push(`${hdr} not found (install the Debian package ${pkg})`);
  }
  if (baseKind(k.base) === 'file' && !existsSync(k.base)) out.push(`kernel.base: no such .config ${k.base}`);
  if (baseKind(k.base) === 'local' && !existsSync('/proc/modules')) out.push('kernel.base = "local" needs /proc/modules (the build host\'s loaded modules)');
  return out;
}

/** Settings every custom kernel gets, merged after the base and before the recipe's wishes. */
export function ownFragment(kind: BaseKind): string {
  const lines = [
    '# The release name: <version>-aios, so that it never collides with a Debian kernel.',
    'CONFIG_LOCALVERSION="-aios"',
    '# CONFIG_LOCALVERSION_AUTO is not set',
  ];
  if (!treeBase(kind)) {
    lines.push(
      "# Debian's config names its own signing certificates, which are not in linux-source: trust none.",
      'CONFIG_SYSTEM_TRUSTED_KEYS=""',
      'CONFIG_SYSTEM_REVOCATION_KEYS=""',
    );
  }
  return lines.join('\n') + '\n';
}

export interface MergedKernelConfig {
  /** The final .config text (after olddefconfig). */
  config: string;
  /** The wishes (tiny.config's or compact.config's, and the recipe's) checked against it. */
  check: CheckResult;
  /** The wishes that did not land. */
  missing: CheckResult['results'];
}

/**
 * The final .config in `obj` (O= dir): base per kernel.base, the base fragments, aios's own
 * settings, then the recipe's wishes; then every wish checked against the result.
 */
export async function mergeKernelConfig(k: KernelRecipe, o: { source: string; debianConfig: string; obj: string; log?: string }): Promise<MergedKernelConfig> {
  const kind = baseKind(k.base);
  await mkdir(o.obj, { recursive: true });
  const fragments: string[] = [];
  let base: { target: string; env?: Record<string, string> } | { config: string };
  const baseWishes: Wish[] = [];
  const tree = treeBase(kind);
  if (tree) {
    base = { target: tree.target, env: tree.env };
    fragments.push(join(o.source, 'kernel/configs/kvm_guest.config'));
    const own = join(paths.kernelConfigs, tree.fragment);
    fragments.push(own);
    baseWishes.push(...parseFragment(await readFile(own, 'utf8'), tree.fragment));
  } else if (kind === 'debian') {
    base = { config: o.debianConfig };
  } else if (kind === 'local') {
    // localmodconfig trims Debian's config to the modules loaded on this host.
    await writeFile(join(o.obj, '.config'), await readConfigText(o.debianConfig));
    await writeFile(join(o.obj, 'lsmod.txt'), (await run(['sh', '-c', 'cat /proc/modules | awk \'{print $1, $2, $3}\''])).stdout);
    await run(['sh', '-c', `yes '' | make -s -C "$1" O="$2" LSMOD="$2/lsmod.txt" localmodconfig`, 'sh', o.source, o.obj], { log: o.log });
    await copyFile(join(o.obj, '.config'), join(o.obj, 'local.config'));
    base = { config: join(o.obj, 'local.config') };
  } else {
    base = { config: k.base };
  }
  const own = join(o.obj, 'aios-own.config');
  await writeFile(own, ownFragment(kind));
  fragments.push(own);
  const wishes = await loadFragments(k.fragments);
  const final = await mergeConfig({ source: o.source, out: o.obj, base, fragments, wishes, log: o.log });
  // A recipe wish about a symbol the base fragment also sets wins (it is merged later): check that one.
  const overridden = new Set(wishes.map((w) => w.symbol));
  const all = [...baseWishes.filter((w) => !overridden.has(w.symbol)), ...wishes];
  const results = classifyAgainstTree(all, final, await readKconfig(o.source));
  const check: CheckResult = { mode: 'source', base: k.base, results, bootArgs: [], unmet: results.filter((r) => !MET.includes(r.status)).length };
  return { config: await readFile(join(o.obj, '.config'), 'utf8'), check, missing: results.filter((r) => !MET.includes(r.status)) };
}

/** Bump when mergeKernelConfig's result for the same inputs changes. */
const MERGE_VERSION = 1;

/**
 * Everything the merged config follows from: the source version, the base (its text, or for
 * local the host's loaded modules), tiny's or compact's fragments, aios's own settings and the recipe's
 * fragment texts. Used to reuse a merge instead of running make again (tens of seconds).
 */
export async function mergeInputsHash(k: KernelRecipe, o: { version: string; source: string; debianConfig: string }): Promise<string> {
  const kind = baseKind(k.base);
  const text = (f: string) => readFile(f, 'utf8');
  const tree = treeBase(kind);
  const base = tree
    ? [...(kind === 'compact' ? [] : [tree.target, tree.env]), await text(join(paths.kernelConfigs, tree.fragment)), await text(join(o.source, 'kernel/configs/kvm_guest.config'))]
      : kind === 'debian'
        ? [await sha256File(o.debianConfig)]
        : kind === 'local'
          ? [await sha256File(o.debianConfig), (await text('/proc/modules')).split('\n').map((l) => l.split(' ')[0]).sort().join(' ')]
          : [await readConfigText(k.base)];
  const frags = [];
  for (const f of k.fragments) frags.push(await text(fragmentPath(f)));
  return hashOf(MERGE_VERSION, o.version, kind, base, ownFragment(kind), frags);
}

/** Environment of the compile: ccache in the aios cache dir, reproducible build identity. */
export function kernelEnv(cacheDir: string, sde?: number): Record<string, string> {
  return {
    ...(process.env as Record<string, string>),
    CCACHE_DIR: join(cacheDir, 'ccache'),
    // Paths under the cache dir are hashed relative to the build dir: hits survive a new build dir.
    CCACHE_BASEDIR: cacheDir,
    CCACHE_NOHASHDIR: '1',
    KBUILD_BUILD_USER: 'aios',
    KBUILD_BUILD_HOST: 'aios',
    KBUILD_BUILD_TIMESTAMP: new Date((sde ?? 1767225600) * 1000).toUTCString(),
  };
}

/**
 * argv run in its own process group, which is killed as a whole when aios stops it: killing make
 * alone leaves its sub-makes compiling in the kept build directory after aios has exited.
 */
export function inProcessGroup(argv: string[]): string[] {
  return ['setsid', 'sh', '-c', 'trap \'trap - TERM; kill -TERM -$$ 2>/dev/null\' TERM INT HUP; "$@" & wait $!', 'sh', ...argv];
}

/** The make command line of the compile (shared by the build and the docs). */
export function makeArgv(source: string, obj: string, jobs = cpus().length): string[] {
  return ['make', '-C', source, `O=${obj}`, 'CC=ccache gcc', `-j${jobs}`];
}

/**
 * Compiles bzImage and the modules in `obj`, then installs them under `dest` (boot/, usr/lib/modules/).
 * Returns the kernel release (e.g. 6.12.57-aios).
 */
export async function compileKernel(o: { source: string; obj: string; dest: string; env: Record<string, string>; log?: string; progress?: (s: string) => void }): Promise<string> {
  await mkdir(o.env.CCACHE_DIR!, { recursive: true });
  let n = 0;
  await run(inProcessGroup([...makeArgv(o.source, o.obj), 'bzImage', 'modules']), {
    env: o.env,
    log: o.log,
    onLine: (l) => {
      const m = /^\s+(CC|LD|AR|AS)\s+(?:\[M\]\s+)?(\S+)/.exec(l);
      if (m) o.progress?.(`compiling (${++n} objects): ${m[2]!.replace(/^.*\/(?=[^/]+\/[^/]+$)/, '')}`);
    },
  });
  const release = (await run(['make', '-s', '-C', o.source, `O=${o.obj}`, 'kernelrelease'], { env: o.env })).stdout.trim();
  o.progress?.(`installing ${release}`);
  const boot = join(o.dest, 'boot');
  await mkdir(boot, { recursive: true });
  await copyFile(join(o.obj, 'arch/x86/boot/bzImage'), join(boot, `vmlinuz-${release}`));
  await copyFile(join(o.obj, '.config'), join(boot, `config-${release}`));
  await copyFile(join(o.obj, 'System.map'), join(boot, `System.map-${release}`));
  // Into usr/lib/modules (Debian is merged-/usr: /lib is a symlink there). depmod runs inside the root.
  await run(inProcessGroup(['make', '-s', '-C', o.source, `O=${o.obj}`, `INSTALL_MOD_PATH=${join(o.dest, 'usr')}`, 'INSTALL_MOD_STRIP=1', 'DEPMOD=/bin/true', 'modules_install']), { env: o.env, log: o.log });
  // No build/source links into this host's cache dir inside the image.
  for (const l of ['build', 'source']) await rm(join(o.dest, 'usr/lib/modules', release, l), { force: true });
  return release;
}

/** gcc and binutils versions: part of the kernel stage's key. */
export async function compilerId(): Promise<{ gcc: string; ld: string }> {
  const first = async (argv: string[]) => (await run(argv, { reject: false })).stdout.split('\n')[0] ?? '';
  return { gcc: await first(['gcc', '--version']), ld: await first(['ld', '--version']) };
}

