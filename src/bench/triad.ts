/**
 * Memory bandwidth: the STREAM-style triad in triad.c, compiled with the host's C compiler on first
 * use into <cache>/bench/triad-<hash>/ (hash of the source, the compiler's version and the flags), so
 * a changed source or compiler gives a fresh binary and nothing is rebuilt otherwise.
 *
 * Why not the llama stage: the probe must run on any host that runs `aios bench` (also with
 * `--bin-dir` pointing at a llama.cpp built elsewhere), it is a 60-line file that compiles in well
 * under a second, and it needs no relation to llama.cpp's build flags. For an image the overlay stage
 * installs the same file compiled static (`triadStaticBinary()`): the image has no compiler.
 */
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run, which } from '../util/exec.js';
import { UserError } from '../util/errors.js';
import { PKG_ROOT } from '../util/paths.js';

export const TRIAD_SOURCE = join(PKG_ROOT, 'src/bench/triad.c');
const CFLAGS = ['-O2', '-fopenmp'];

/** Compiles triad.c if this source + compiler + flags have not been compiled before; returns the binary. */
export async function triadBinary(cacheDir: string, cc = process.env.CC || 'cc'): Promise<string> {
  return compileTriad(cacheDir, cc, CFLAGS, 'triad');
}

/**
 * The flags of the image's probe: static (the image has neither a C compiler nor libgomp, and its
 * glibc may be older than the build host's) and stripped (no build paths in the image: the same
 * source and compiler give the same bytes). Same optimization as on the host (-O2, no -march), so a
 * host run and an image run measure with the same code.
 */
export const STATIC_CFLAGS = [...CFLAGS, '-static', '-s'];

/** triad.c compiled as a static, stripped binary for an image (the overlay stage installs it as /usr/libexec/aios/triad). */
export async function triadStaticBinary(cacheDir: string, cc = process.env.CC || 'cc'): Promise<string> {
  return compileTriad(cacheDir, cc, STATIC_CFLAGS, 'triad-static');
}

/** What decides the static binary's bytes (source, compiler version, flags): a build stage's cache key input. */
export async function triadStaticDigest(cc = process.env.CC || 'cc'): Promise<string> {
  const src = await readFile(TRIAD_SOURCE);
  const ccVersion = (await which(cc)) ? ((await run([cc, '--version'], { reject: false })).stdout.split('\n')[0] ?? '') : 'none';
  return createHash('sha256').update(src).update('\0').update(ccVersion).update('\0').update(STATIC_CFLAGS.join(' ')).digest('hex').slice(0, 16);
}

async function compileTriad(cacheDir: string, cc: string, flags: string[], tag: string): Promise<string> {
  if (!(await which(cc))) throw new UserError(`no C compiler "${cc}" for the memory-bandwidth probe`, 3, 'install one (Debian: apt-get install gcc) or set CC');
  const src = await readFile(TRIAD_SOURCE);
  const ccVersion = (await run([cc, '--version'], { reject: false })).stdout.split('\n')[0] ?? '';
  const key = createHash('sha256').update(src).update('\0').update(ccVersion).update('\0').update(flags.join(' ')).digest('hex').slice(0, 16);
  const dir = join(cacheDir, 'bench', `${tag}-${key}`);
  const bin = join(dir, 'triad');
  if (existsSync(bin)) return bin;
  await mkdir(dir, { recursive: true });
  const tmp = `${bin}.tmp-${process.pid}`;
  try {
    const r = await run([cc, ...flags, TRIAD_SOURCE, '-o', tmp, '-lm'], { reject: false });
    if (r.exitCode !== 0) {
      const hint = flags.includes('-static')
        ? 'a static build needs the static C and OpenMP libraries (Debian: libc6-dev and libgcc-<version>-dev, which gcc pulls in)'
        : 'the compiler needs OpenMP support (gcc has it; Debian: apt-get install gcc)';
      throw new UserError(`compiling the bandwidth probe failed: ${cc} ${flags.join(' ')} ${TRIAD_SOURCE}\n${r.all.trim().slice(-800)}`, 3, hint);
    }
    await rename(tmp, bin);
  } finally {
    await rm(tmp, { force: true });
  }
  return bin;
}

export interface TriadResult {
  elements: number;
  /** Bytes of each of the three arrays. */
  arrayBytes: number;
  /** Bytes counted per repetition: 3 arrays × 8 bytes per element (STREAM's convention). */
  bytesPerRep: number;
  threads: number;
  /** GB/s (10^9 bytes) of each timed repetition; an untimed warm-up ran first. */
  samples: number[];
  /** Best repetition, as STREAM reports. */
  best: number;
  /** How the array size was chosen, and whether it met STREAM's rule (each array ≥ 4 × last-level cache). */
  sizing: string;
}

/**
 * Elements per array: STREAM's rule is ≥ 4 × the last-level cache per array; at least 64 MiB, at most
 * 1 GiB or an eighth of the available memory, whichever is smaller (the probe must not push the
 * machine into swap).
 */
export function triadElements(llcBytes: number | undefined, availableBytes: number): { elements: number; sizing: string } {
  const MiB = 2 ** 20;
  const want = Math.max(64 * MiB, llcBytes ? 4 * llcBytes : 256 * MiB);
  const cap = Math.min(1024 * MiB, Math.floor(availableBytes / 8));
  const bytes = Math.max(16 * MiB, Math.min(want, cap));
  const elements = Math.floor(bytes / 8);
  const mib = (b: number) => `${Math.round(b / MiB)} MiB`;
  const sizing = llcBytes
    ? `3 arrays of ${mib(elements * 8)} each; last-level cache ${mib(llcBytes)}: ${(elements * 8) / llcBytes >= 4 ? "meets STREAM's 4 × LLC rule" : `${((elements * 8) / llcBytes).toFixed(1)} × LLC, below STREAM's 4 × rule (capped by memory)`}`
    : `3 arrays of ${mib(elements * 8)} each; last-level cache size unknown`;
  return { elements, sizing };
}

export async function runTriad(o: { bin: string; elements: number; reps: number; threads: number; sizing?: string }): Promise<TriadResult> {
  const res = await run([o.bin, String(o.elements), String(o.reps)], { env: { OMP_NUM_THREADS: String(o.threads), OMP_PROC_BIND: 'spread', OMP_PLACES: 'cores' }, reject: false });
  if (res.exitCode !== 0) throw new Error(`bandwidth probe failed (exit ${res.exitCode}): ${res.all.trim().slice(-400)}`);
  const j = JSON.parse(res.stdout) as { elements: number; bytes_per_rep: number; threads: number; ok: boolean; gbps: number[] };
  if (!j.ok) throw new Error('bandwidth probe: result check failed');
  return { elements: j.elements, arrayBytes: j.elements * 8, bytesPerRep: j.bytes_per_rep, threads: j.threads, samples: j.gbps, best: Math.max(...j.gbps), sizing: o.sizing ?? '' };
}
