/**
 * The tools tree (issue 17; the idea mkosi calls ToolsTree=): a build root of the image's own
 * distro and suite, made with mmdebstrap from base.mirror, holding the compilers a stage needs, in
 * which that stage compiles, so what it builds links against the image's own libraries (glibc,
 * libstdc++, libgomp) whatever the build host is. `llama.toolchain = "tools-tree"` uses it for the
 * llama stage (docs/gpu.md).
 *
 * The tree is cached like a stage output: <cache>/stages/tools-tree/<key>/root, keyed by its inputs
 * (suite, mirror, components, package list, TOOLS_TREE_VERSION), published atomically by
 * StageCache.put(), kept two per recipe like any stage, and evicted least recently used first by
 * StageCache.makeRoom() like any stage output. Its .debs come from and go back to the package cache
 * the rootfs stage uses (<cache>/packages/debian-<suite>).
 *
 * A command runs in it with bubblewrap: the tree read-only as /, fresh /dev, /proc and /tmp, no
 * network (the source is fetched on the host before), and only the directories the command needs
 * bound in under /aios (source read-only; build dir and ccache writable). The fixed paths inside
 * also make ccache hits independent of where the stage's temp dir is.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ResolvedRecipe } from '../config/schema.js';
import { run, which } from '../util/exec.js';
import { hashOf } from '../util/hash.js';
import { formatSize } from '../util/size.js';
import { SPACE_NEEDED, StageCache, type StageRecord } from './cache.js';

/** Bump when the tree's making changes what it holds, to invalidate old trees. */
export const TOOLS_TREE_VERSION = 1;

/** Its name under <cache>/stages (a StageCache "stage", so eviction and `aios doctor` count it). */
export const TOOLS_TREE_STAGE = 'tools-tree';

/**
 * What llama.cpp's build needs (the host build's tools, src/build/llama.ts: cmake, ninja, g++/gcc,
 * git; plus ccache for -DGGML_CCACHE=ON and pkg-config, which CMake's find modules use).
 */
export const LLAMA_TOOLS_PACKAGES = ['build-essential', 'cmake', 'ninja-build', 'ccache', 'git', 'pkg-config'] as const;

/**
 * Disk space a new tools tree takes: the tree, plus the .debs it adds to the package cache
 * (measured for trixie with LLAMA_TOOLS_PACKAGES: see docs/gpu.md), with a margin.
 */
export const TOOLS_TREE_BYTES = 1024 ** 3;

/** Mount points inside the tree (made when the tree is bootstrapped). */
export const INSIDE = { src: '/aios/src', build: '/aios/build', ccache: '/aios/ccache' } as const;

export interface ToolsTreeSpec {
  distro: 'debian';
  suite: string;
  mirror: string;
  components: string[];
  packages: string[];
}

/**
 * llama.gpu = "cuda": the suite's CUDA toolkit (trixie: nvidia-cuda-toolkit 12.4, non-free; its nvcc
 * brings the older g++ it supports as host compiler, g++-13 in trixie), so the CUDA code is compiled
 * against the same CUDA libraries the image gets (libcudart12, libcublas12).
 */
export const CUDA_TOOLS_PACKAGES = ['nvidia-cuda-toolkit'] as const;

/** Components a CUDA tree needs: the toolkit is in non-free, some of its dependencies in contrib. */
export const CUDA_COMPONENTS = ['main', 'contrib', 'non-free'] as const;

/**
 * Disk space a new CUDA tools tree takes (trixie, measured: docs/gpu.md): about 2 GB of .debs in its
 * package cache and the unpacked toolkit, with a margin.
 */
export const CUDA_TOOLS_TREE_BYTES = 10 * 1024 ** 3;

/** The tree a recipe's llama stage builds in (pure). */
export function llamaToolsTreeSpec(r: Pick<ResolvedRecipe, 'base'> & { llama: Pick<ResolvedRecipe['llama'], 'gpu'> }): ToolsTreeSpec {
  const cuda = r.llama.gpu === 'cuda';
  return {
    distro: 'debian',
    suite: r.base.suite,
    mirror: r.base.mirror,
    components: cuda ? [...CUDA_COMPONENTS] : ['main'],
    packages: [...LLAMA_TOOLS_PACKAGES, ...(cuda ? CUDA_TOOLS_PACKAGES : [])],
  };
}

/** How much room making the tree takes (pure). */
export const toolsTreeBytes = (s: ToolsTreeSpec): number => (s.packages.some((p) => (CUDA_TOOLS_PACKAGES as readonly string[]).includes(p)) ? CUDA_TOOLS_TREE_BYTES : TOOLS_TREE_BYTES);

/** What identifies a tree: its cache key is the hash of these (pure). */
export function toolsTreeInputs(s: ToolsTreeSpec): Record<string, unknown> {
  return { v: TOOLS_TREE_VERSION, distro: s.distro, suite: s.suite, mirror: s.mirror, arch: 'amd64', components: [...s.components].sort(), packages: [...new Set(s.packages)].sort() };
}

export const toolsTreeKey = (s: ToolsTreeSpec): string => hashOf(TOOLS_TREE_STAGE, toolsTreeInputs(s));

/**
 * Where the tree's .debs are cached: for a main-only tree, the package cache the rootfs stage uses
 * for this suite; a tree with more components (CUDA: 2 GB of toolkit) has one of its own, so the
 * rootfs stage, which copies its whole package cache into every bootstrap, does not carry those.
 */
export const packageCacheDir = (cacheDir: string, s: Pick<ToolsTreeSpec, 'distro' | 'suite'> & { components?: string[] }) =>
  join(cacheDir, 'packages', `${s.distro}-${s.suite}${s.components && s.components.join(',') !== 'main' ? `-tools-${[...s.components].sort().join('+')}` : ''}`);

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The mmdebstrap command that makes the tree at `root` (pure: unit-tested). */
export function toolsTreeBootstrapArgv(s: ToolsTreeSpec, o: { root: string; pkgCache: string; asRoot: boolean }): string[] {
  return [
    'mmdebstrap',
    `--mode=${o.asRoot ? 'root' : 'unshare'}`,
    '--variant=minbase',
    '--arch=amd64',
    `--components=${s.components.join(',')}`,
    `--include=${[...new Set(s.packages)].join(',')}`,
    '--dpkgopt=force-unsafe-io',
    // Documentation is of no use to a compiler.
    ...['/usr/share/man/*', '/usr/share/info/*', '/usr/share/doc/*', '/usr/share/locale/*', '/usr/share/lintian/*'].map((p) => `--dpkgopt=path-exclude=${p}`),
    '--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata',
    // The rootfs stage's package cache: .debs in, new ones back out, none left in the tree.
    '--skip=download/empty',
    '--skip=essential/unlink',
    `--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
    `--setup-hook=sync-in ${q(o.pkgCache)} /var/cache/apt/archives/`,
    `--customize-hook=sync-out /var/cache/apt/archives ${q(o.pkgCache)}`,
    `--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/archives/partial/*.deb`,
    // Mount points for bubblewrap (the tree is bound read-only, so they must exist beforehand).
    `--customize-hook=mkdir -p "$1"${INSIDE.src} "$1"${INSIDE.build} "$1"${INSIDE.ccache}`,
    s.suite,
    o.root,
    s.mirror,
  ];
}

export interface Bind {
  host: string;
  inside: string;
  /** Read-only (default: writable). */
  ro?: boolean;
}

/**
 * The bubblewrap command line that runs `argv` inside the tree at `tree` (pure: unit-tested): the
 * tree read-only as /, the binds, a clean environment (PATH, HOME=/tmp, LC_ALL=C.UTF-8, then `env`),
 * no network, own PID/IPC/UTS namespaces, killed with its parent.
 */
export function toolsTreeRunArgv(tree: string, argv: string[], o: { binds?: Bind[]; env?: Record<string, string>; cwd?: string } = {}): string[] {
  const env: Record<string, string> = { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', HOME: '/tmp', LC_ALL: 'C.UTF-8', ...o.env };
  return [
    'bwrap',
    '--ro-bind', tree, '/',
    '--dev', '/dev',
    '--proc', '/proc',
    '--tmpfs', '/tmp',
    ...(o.binds ?? []).flatMap((b) => [b.ro ? '--ro-bind' : '--bind', b.host, b.inside]),
    '--unshare-ipc', '--unshare-pid', '--unshare-uts', '--unshare-net',
    '--die-with-parent',
    '--clearenv',
    ...Object.entries(env).flatMap(([k, v]) => ['--setenv', k, v]),
    '--chdir', o.cwd ?? '/',
    '--',
    ...argv,
  ];
}

/** Host tools the tools tree needs: Debian package per command. */
export const TOOLS_TREE_HOST_TOOLS: Record<string, string> = { mmdebstrap: 'mmdebstrap', bwrap: 'bubblewrap' };

/** The published tree for `s`, if the cache has it (does not mark it used). */
async function cachedTree(cache: StageCache, key: string): Promise<string | undefined> {
  const dir = cache.path(TOOLS_TREE_STAGE, key);
  if (!existsSync(join(dir, 'stage.json'))) return undefined;
  const rec = JSON.parse(await readFile(join(dir, 'stage.json'), 'utf8').catch(() => '{}')) as Partial<StageRecord>;
  return rec.key === key ? dir : undefined;
}

/**
 * What stops this host from making and entering the tree: the host tools, a non-Debian base, and,
 * when the tree is not cached yet, the space for it (on top of a build's own SPACE_NEEDED.cache,
 * counting old stage outputs that can be removed).
 */
export async function toolsTreeProblems(r: Parameters<typeof llamaToolsTreeSpec>[0], o: { cache: StageCache }): Promise<string[]> {
  const out: string[] = [];
  if (r.base.distro !== 'debian') return [`llama.toolchain = "tools-tree" needs base.distro = "debian" (the tree is made with mmdebstrap; base.distro is "${r.base.distro}"): use llama.toolchain = "host"`];
  for (const [cmd, pkg] of Object.entries(TOOLS_TREE_HOST_TOOLS)) if (!(await which(cmd))) out.push(`${cmd} not found (install the Debian package ${pkg}): llama.toolchain = "tools-tree" needs it`);
  const s = llamaToolsTreeSpec(r);
  if (!(await cachedTree(o.cache, toolsTreeKey(s)))) {
    await mkdir(o.cache.dir, { recursive: true });
    const free = await o.cache.free(o.cache.dir);
    const need = toolsTreeBytes(s) + SPACE_NEEDED.cache;
    const old = free >= need ? 0 : await o.cache.reclaimable();
    if (free + old < need) {
      out.push(
        `cache dir ${o.cache.dir}: only ${formatSize(free)} free${old ? ` (and ${formatSize(old)} in old stage outputs that can be removed)` : ''}; ` +
          `the tools tree for ${s.suite}${s.packages.includes('nvidia-cuda-toolkit') ? ' with the CUDA toolkit' : ''} needs about ${formatSize(toolsTreeBytes(s))} on top of a build's ${formatSize(SPACE_NEEDED.cache)}`,
      );
    }
  }
  return out;
}

export interface ToolsTree {
  /** The tree's root directory. */
  root: string;
  key: string;
  cached: boolean;
  seconds: number;
}

/**
 * The tree for `s`: from the cache, or made now (mmdebstrap into a temp dir, published when
 * complete). Before making one, old stage outputs not in `inUse` are evicted if the space is short.
 */
export async function ensureToolsTree(
  s: ToolsTreeSpec,
  o: { cache: StageCache; cacheDir: string; asRoot: boolean; log?: string; progress?: (line: string) => void; inUse?: ReadonlySet<string> },
): Promise<ToolsTree> {
  const t0 = Date.now();
  const key = toolsTreeKey(s);
  const have = await o.cache.get(TOOLS_TREE_STAGE, key);
  if (have) return { root: join(have, 'root'), key, cached: true, seconds: (Date.now() - t0) / 1000 };
  await o.cache.makeRoom(toolsTreeBytes(s) + SPACE_NEEDED.cache, o.inUse);
  const pkgCache = packageCacheDir(o.cacheDir, s);
  await mkdir(pkgCache, { recursive: true });
  const dir = await o.cache.put(TOOLS_TREE_STAGE, key, toolsTreeInputs(s), async (d) => {
    const argv = toolsTreeBootstrapArgv(s, { root: join(d, 'root'), pkgCache, asRoot: o.asRoot });
    o.progress?.(`tools tree: mmdebstrap ${s.suite} (${s.packages.join(', ')})`);
    await run(argv, {
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } as Record<string, string>,
      log: o.log,
      onLine: (l) => {
        const line = l.replace(/\x1b\[[0-9;]*m/g, '').trim();
        if (line) o.progress?.(`tools tree: ${line.slice(0, 100)}`);
      },
    });
  });
  return { root: join(dir, 'root'), key, cached: false, seconds: (Date.now() - t0) / 1000 };
}

/** The compilers' versions inside a tree (first lines of --version), for the build record. */
export async function toolsTreeVersions(root: string): Promise<Record<string, string>> {
  const first = async (argv: string[]) => (await run(toolsTreeRunArgv(root, argv), { reject: false })).stdout.split('\n')[0] ?? '';
  const v: Record<string, string> = { gcc: await first(['gcc', '--version']), cmake: await first(['cmake', '--version']), glibc: await first(['ldd', '--version']) };
  if (existsSync(join(root, 'usr/bin/nvcc'))) v.nvcc = (await run(toolsTreeRunArgv(root, ['nvcc', '--version']), { reject: false })).stdout.trim().split('\n').pop() ?? '';
  return v;
}
