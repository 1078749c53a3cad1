/**
 * llama.cpp: pinned source (npm bundle / git / dir / tarball), CMake flags from the recipe, a build
 * with ccache on the build host, and the instruction set the binaries need.
 *
 * The binaries are built with the host toolchain (llama.toolchain = "host") or inside a tools tree
 * of the image's own suite (llama.toolchain = "tools-tree", src/build/tools-tree.ts), and must run
 * in the target root: the overlay stage runs `llama-server --version` inside it (chroot) and fails
 * the build if they do not. A host whose glibc is not newer than the target's (Debian 12 host →
 * trixie image) is a matching host toolchain; the tools tree matches whatever the host is.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readFile, writeFile, copyFile } from 'node:fs/promises';
import { cpus } from 'node:os';
import { join } from 'node:path';
import * as tar from 'tar';
import type { Recipe, ResolvedRecipe } from '../config/schema.js';
import { run, which } from '../util/exec.js';
import { UserError } from '../util/errors.js';
import { hashTree, sha256File } from '../util/hash.js';
import type { StageCache } from './cache.js';
import { cudaArchitectures, GPU_DEFAULTS, type GpuRecipe } from '../config/gpu.js';
import { INSIDE, TOOLS_TREE_HOST_TOOLS, toolsTreeProblems, toolsTreeRunArgv, type Bind } from './tools-tree.js';

export type LlamaRecipe = Recipe['llama'];

/** ISA feature flags (as /proc/cpuinfo names them) per x86-64 level. */
const LEVEL_FLAGS: Record<string, string[]> = {
  'x86-64': [],
  'x86-64-v2': ['ssse3', 'sse4_1', 'sse4_2', 'popcnt'],
  'x86-64-v3': ['ssse3', 'sse4_1', 'sse4_2', 'popcnt', 'avx', 'avx2', 'fma', 'f16c', 'bmi2', 'movbe'],
  'x86-64-v4': ['ssse3', 'sse4_1', 'sse4_2', 'popcnt', 'avx', 'avx2', 'fma', 'f16c', 'bmi2', 'movbe', 'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'],
};
/** Flags ggml's CPU backend can use and -march=native may enable. */
const GGML_FLAGS = ['sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'bmi2', 'avx_vnni', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx512vbmi', 'avx512_bf16', 'amx_tile', 'amx_int8', 'amx_bf16'];

export interface Isa {
  /** What the recipe asked for. */
  cpu: LlamaRecipe['cpu'];
  /** gcc -march value the build uses. */
  march: string;
  /** CPU flags the binaries may use: a machine (or QEMU CPU model) without one of these gets SIGILL. */
  flags: string[];
  description: string;
}

/** The instruction set a build needs. For `native`, read off this host. */
export async function isaFor(cpu: LlamaRecipe['cpu']): Promise<Isa> {
  if (cpu !== 'native') {
    const flags = LEVEL_FLAGS[cpu]!;
    return { cpu, march: cpu, flags, description: `${cpu}${flags.length ? ` (${flags.filter((f) => GGML_FLAGS.includes(f)).join(', ')})` : ''}` };
  }
  let march = 'native';
  const g = await run(['gcc', '-march=native', '-Q', '--help=target'], { reject: false });
  const m = /^\s+-march=\s+(\S+)/m.exec(g.stdout);
  if (m) march = m[1]!;
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const have = new Set((/^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '').split(/\s+/));
  const flags = GGML_FLAGS.filter((f) => have.has(f));
  return { cpu, march, flags, description: `native = this build host's ${march} (${flags.join(', ')}); other CPUs without these get SIGILL` };
}

/**
 * The CMake configure arguments for a recipe (pure: unit-tested). With llama.gpu = "cuda": ggml's
 * CUDA backend for gpu.cuda_arch (CMAKE_CUDA_ARCHITECTURES), FlashAttention kernels per
 * gpu.flash_attention, no NCCL (not in Debian; one GPU per llama-server here), the shared CUDA
 * runtime and cuBLAS (libcudart12 and libcublas12 go into the image).
 */
export function cmakeArgs(l: LlamaRecipe, src: string, build: string, gpu: GpuRecipe = GPU_DEFAULTS): string[] {
  const args = [
    '-S', src,
    '-B', build,
    '-G', 'Ninja',
    '-DCMAKE_BUILD_TYPE=Release',
    '-DBUILD_SHARED_LIBS=OFF',
    '-DLLAMA_BUILD_TESTS=OFF',
    '-DLLAMA_BUILD_EXAMPLES=OFF',
    // Offline and dependency-light: no web UI download at build time, no OpenSSL.
    '-DLLAMA_USE_PREBUILT_UI=OFF',
    '-DLLAMA_OPENSSL=OFF',
    '-DGGML_CCACHE=ON',
  ];
  // The RPC backend: llama-server --rpc (a model split across workers) and ggml-rpc-server (the worker).
  if (l.rpc) args.push('-DGGML_RPC=ON');
  if (l.cpu === 'native') args.push('-DGGML_NATIVE=ON');
  else {
    const v = l.cpu;
    const on = (b: boolean) => (b ? 'ON' : 'OFF');
    const ge = (lvl: string) => ['x86-64', 'x86-64-v2', 'x86-64-v3', 'x86-64-v4'].indexOf(v) >= ['x86-64', 'x86-64-v2', 'x86-64-v3', 'x86-64-v4'].indexOf(lvl);
    args.push(
      '-DGGML_NATIVE=OFF',
      `-DGGML_SSE42=${on(ge('x86-64-v2'))}`,
      `-DGGML_AVX=${on(ge('x86-64-v3'))}`,
      `-DGGML_AVX2=${on(ge('x86-64-v3'))}`,
      `-DGGML_BMI2=${on(ge('x86-64-v3'))}`,
      `-DGGML_FMA=${on(ge('x86-64-v3'))}`,
      `-DGGML_F16C=${on(ge('x86-64-v3'))}`,
      `-DGGML_AVX512=${on(ge('x86-64-v4'))}`,
    );
  }
  if (l.gpu === 'cuda') {
    args.push(
      '-DGGML_CUDA=ON',
      `-DCMAKE_CUDA_ARCHITECTURES=${cudaArchitectures(gpu.cuda_arch)}`,
      `-DGGML_CUDA_FA=${gpu.flash_attention ? 'ON' : 'OFF'}`,
      '-DGGML_CUDA_NCCL=OFF',
    );
  }
  args.push(...l.cmake_args);
  return args;
}

/**
 * What stops this host from building llama.cpp for the recipe. Host toolchain: cmake, ninja, gcc,
 * g++, git (npm for the npm source; CUDA is never built on the host). Tools tree: no host compilers, but mmdebstrap
 * and bubblewrap, git (and npm) for fetching the source, and, with `where` (the recipe's base and
 * the stage cache), a Debian base and the space for the tree when it is not cached yet.
 */
export async function llamaHostProblems(l: LlamaRecipe, where?: { base: ResolvedRecipe['base']; cache: StageCache }): Promise<string[]> {
  const out: string[] = [];
  const tree = l.toolchain === 'tools-tree';
  const tools: Record<string, string> = tree ? { git: 'git' } : { cmake: 'cmake', ninja: 'ninja-build', 'g++': 'g++', gcc: 'gcc', git: 'git' };
  if (l.source.type === 'npm') tools.npm = 'npm';
  for (const [cmd, pkg] of Object.entries(tools)) if (!(await which(cmd))) out.push(`${cmd} not found (install the Debian package ${pkg})`);
  if (tree) {
    if (where) out.push(...(await toolsTreeProblems({ base: where.base, llama: l }, { cache: where.cache })));
    else for (const [cmd, pkg] of Object.entries(TOOLS_TREE_HOST_TOOLS)) if (!(await which(cmd))) out.push(`${cmd} not found (install the Debian package ${pkg}): llama.toolchain = "tools-tree" needs it`);
  } else if (l.gpu === 'cuda') {
    // The recipe check refuses this too (gpuProblems); kept for callers that build without loading one.
    out.push('llama.gpu = "cuda" is compiled in the tools tree (whose CUDA toolkit matches the image\'s CUDA libraries), not with a host nvcc: set llama.toolchain = "tools-tree"');
  }
  if (l.source.type === 'dir' && !existsSync(join(l.source.path, 'CMakeLists.txt'))) out.push(`llama.source.path ${l.source.path} is not a llama.cpp tree (no CMakeLists.txt)`);
  return out;
}

/** What identifies the source for caching, without fetching it (npm/git/tarball: the pin itself). */
export async function sourceIdentity(l: LlamaRecipe): Promise<unknown> {
  const s = l.source;
  if (s.type === 'dir') {
    const git = await run(['git', '-C', s.path, 'rev-parse', 'HEAD'], { reject: false });
    const dirty = git.exitCode === 0 ? (await run(['git', '-C', s.path, 'status', '--porcelain', '--untracked-files=no'], { reject: false })).stdout : '';
    return { ...s, rev: git.exitCode === 0 && !dirty.trim() ? git.stdout.trim() : await hashTree(join(s.path, 'ggml')) + (await hashTree(join(s.path, 'src'))) };
  }
  return s;
}

export interface SourceInfo {
  commit?: string;
  describe?: string;
  integrity?: string;
  origin: string;
}

/** Fetches the pinned source into `dest` (a new directory). */
export async function fetchSource(l: LlamaRecipe, dest: string, work: string, log?: string, progress?: (s: string) => void): Promise<SourceInfo> {
  const s = l.source;
  await mkdir(work, { recursive: true });
  if (s.type === 'npm') {
    const spec = `${s.package}@${s.version}`;
    progress?.(`npm pack ${spec}`);
    const { stdout: expected } = await run(['npm', 'view', spec, 'dist.integrity'], { log });
    const { stdout } = await run(['npm', 'pack', spec, '--json', '--pack-destination', work], { log, cwd: work });
    const packed = (JSON.parse(stdout) as { filename: string; integrity: string }[])[0]!;
    const tgz = join(work, packed.filename);
    // npm checks the tarball against the registry's integrity; check it again ourselves.
    const actual = `sha512-${createHash('sha512').update(await readFile(tgz)).digest('base64')}`;
    if (actual !== expected.trim() || packed.integrity !== expected.trim()) {
      throw new UserError(`${spec}: integrity mismatch: registry says ${expected.trim()}, tarball is ${actual}`);
    }
    progress?.('extracting llama/gitRelease.bundle');
    await tar.x({ file: tgz, cwd: work, filter: (p) => p === 'package/llama/gitRelease.bundle' || p === 'package/llama/llama.cpp.info.json' });
    const bundle = join(work, 'package/llama/gitRelease.bundle');
    if (!existsSync(bundle)) throw new UserError(`${spec} does not ship llama/gitRelease.bundle; pick another version or another llama.source`);
    await run(['git', 'clone', '-q', bundle, dest], { log });
    const info = JSON.parse(await readFile(join(work, 'package/llama/llama.cpp.info.json'), 'utf8').catch(() => '{}')) as { tag?: string };
    const commit = (await run(['git', '-C', dest, 'rev-parse', 'HEAD'])).stdout.trim();
    return { commit, describe: info.tag, integrity: actual, origin: `npm:${spec}` };
  }
  if (s.type === 'git') {
    progress?.(`git clone ${s.url} (${s.ref})`);
    await run(['git', 'clone', '-q', s.url, dest], { log });
    await run(['git', '-C', dest, '-c', 'advice.detachedHead=false', 'checkout', '-q', s.ref], { log });
    const commit = (await run(['git', '-C', dest, 'rev-parse', 'HEAD'])).stdout.trim();
    return { commit, origin: `git:${s.url}#${s.ref}` };
  }
  if (s.type === 'tarball') {
    progress?.(`downloading ${s.url}`);
    const file = join(work, 'src.tar.gz');
    const res = await fetch(s.url);
    if (!res.ok || !res.body) throw new UserError(`llama.source.url ${s.url}: HTTP ${res.status}`);
    await writeFile(file, Buffer.from(await res.arrayBuffer()));
    const sum = await sha256File(file);
    if (sum !== s.sha256) throw new UserError(`llama.source.url ${s.url}: sha256 is ${sum}, the recipe pins ${s.sha256}`);
    await mkdir(dest, { recursive: true });
    await tar.x({ file, cwd: dest, strip: 1 });
    return { origin: `tarball:${s.url}` };
  }
  // dir: build from the user's tree in place (out of tree), nothing to copy.
  return { origin: `dir:${s.path}` };
}

/**
 * The toolchain identity that goes into the build's cache key. Host: the host's gcc and cmake.
 * Tools tree: the tree's own key (suite, mirror, package list, version), so the
 * key never depends on the host's compilers.
 */
export async function toolchainId(l: LlamaRecipe, tree?: { key: string; suite: string }): Promise<Record<string, string>> {
  if (l.toolchain === 'tools-tree') {
    if (!tree) throw new Error('toolchainId: llama.toolchain = "tools-tree" needs the tools tree\'s key');
    return { toolchain: 'tools-tree', suite: tree.suite, tree: tree.key };
  }
  const first = async (argv: string[]) => (await run(argv, { reject: false })).stdout.split('\n')[0] ?? '';
  return { gcc: await first(['gcc', '--version']), cmake: await first(['cmake', '--version']) };
}

/** Where the build's commands run: the paths they see, and how a command line is wrapped. */
export interface LlamaExec {
  src: string;
  build: string;
  ccache: string;
  /** The command line and environment that run `argv` with `env` added. */
  wrap(argv: string[], env?: Record<string, string>): { argv: string[]; env: Record<string, string> };
}

/**
 * On the host (no `tree`): the directories as they are, commands as they are. In the tools tree at
 * `tree`: the source read-only at /aios/src, the build dir and ccache writable at /aios/build and
 * /aios/ccache, every command run through bubblewrap (pure: unit-tested).
 */
export function llamaExec(dirs: { src: string; build: string; ccacheDir: string }, tree?: string): LlamaExec {
  if (!tree) {
    return { src: dirs.src, build: dirs.build, ccache: dirs.ccacheDir, wrap: (argv, env = {}) => ({ argv, env: { ...(process.env as Record<string, string>), ...env } }) };
  }
  const binds: Bind[] = [
    { host: dirs.src, inside: INSIDE.src, ro: true },
    { host: dirs.build, inside: INSIDE.build },
    { host: dirs.ccacheDir, inside: INSIDE.ccache },
  ];
  return {
    src: INSIDE.src,
    build: INSIDE.build,
    ccache: INSIDE.ccache,
    wrap: (argv, env = {}) => ({ argv: toolsTreeRunArgv(tree, argv, { binds, env }), env: process.env as Record<string, string> }),
  };
}

/** The RPC worker binary as the pinned llama.cpp names it (tools/rpc: target ggml-rpc-server). */
export const RPC_SERVER = 'ggml-rpc-server';

/** Every binary the build produces: the recipe's targets, and the RPC worker when llama.rpc is on. */
export const llamaBinaries = (l: LlamaRecipe): string[] => [...l.targets, ...(l.rpc ? [RPC_SERVER] : [])];

/**
 * Configure, build and collect the binaries (stripped) into `binDir`; on the host, or inside the
 * tools tree at `tree`. Returns what `llama-server --version` printed where it was built.
 */
export async function buildLlama(
  l: LlamaRecipe,
  o: { src: string; build: string; binDir: string; ccacheDir: string; tree?: string; gpu?: GpuRecipe; log?: string; progress?: (s: string) => void },
): Promise<{ version: string }> {
  await mkdir(o.ccacheDir, { recursive: true });
  await mkdir(o.build, { recursive: true });
  const x = llamaExec({ src: o.src, build: o.build, ccacheDir: o.ccacheDir }, o.tree);
  const ccacheEnv = { CCACHE_DIR: x.ccache, CCACHE_BASEDIR: x.src, CCACHE_NOHASHDIR: '1' };
  const exec = (argv: string[], opts: { onLine?: (line: string) => void; reject?: boolean } = {}) => {
    const w = x.wrap(argv, ccacheEnv);
    return run(w.argv, { env: w.env, extendEnv: false, log: o.log, ...opts });
  };
  o.progress?.(`cmake configure${o.tree ? ' (tools tree)' : ''}`);
  await exec(['cmake', ...cmakeArgs(l, x.src, x.build, o.gpu)]);
  const jobs = String(Math.max(1, cpus().length));
  let done = 0;
  await exec(['cmake', '--build', x.build, '--target', ...llamaBinaries(l), '-j', jobs], {
    onLine: (line) => {
      const m = /^\[(\d+)\/(\d+)\]/.exec(line);
      if (m) {
        done = Number(m[1]);
        o.progress?.(`compiling ${done}/${m[2]}`);
      }
    },
  });
  await mkdir(o.binDir, { recursive: true });
  if (o.tree) await mkdir(join(o.build, 'stripped'), { recursive: true });
  for (const t of llamaBinaries(l)) {
    const bin = join(o.build, 'bin', t);
    if (!existsSync(bin)) throw new Error(`llama.cpp build finished but ${bin} is missing`);
    if (o.tree) {
      // The tree's own binutils strip what its compiler made; the result is copied out.
      await exec(['strip', '--strip-unneeded', '-o', `${x.build}/stripped/${t}`, `${x.build}/bin/${t}`]);
      await copyFile(join(o.build, 'stripped', t), join(o.binDir, t));
      await chmod(join(o.binDir, t), 0o755);
    } else {
      await copyFile(bin, join(o.binDir, t));
      await run(['strip', '--strip-unneeded', join(o.binDir, t)], { log: o.log });
    }
  }
  const version = await exec([`${x.build}/bin/llama-server`, '--version'], { reject: false });
  return { version: version.all };
}
