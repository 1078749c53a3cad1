/**
 * `npm run bench:rootfs-fs`: the appliance's read-only root (image.layout = "appliance",
 * image.readonly_fs; docs/appliance.md) as erofs or as squashfs: which mounts, walks and reads
 * faster on this machine, and what explains it. Writes its section of docs/benchmarks.md (between
 * the rootfs-fs-bench markers; the section is made after "Boot to ready" when it is missing).
 *
 *   npm run bench:rootfs-fs -- [--root <dir>] [--recipe default] [--reps 10] [--tmp <dir>] [--note "…"] [--out docs/benchmarks.md] [--json]
 *
 * Needs root (loop mounts, /proc/sys/vm/drop_caches), mkfs.erofs (erofs-utils), mksquashfs
 * (squashfs-tools), mount/umount/losetup, and a kernel that mounts erofs and squashfs.
 *
 * The tree: `--root <dir>`, else the one the appliance build makes slot A from: the recipe
 * (`--recipe`, default "default") built with image.layout = "appliance" through the stage cache (a
 * warm cache reuses every stage; a cold one builds them, minutes), and the overlay stage's root/
 * taken from the cache. That build publishes into ~/.cache/aios/bench/rootfs-fs-build (its disk and
 * update artifacts are removed again, its credentials kept so that the next run's overlay key, and
 * cache entry, stay the same). The cache keeps two outputs per stage: another build running at the
 * same time may evict the tree while it is read.
 *
 * Both images are made once from the tree with the image stage's own argv (`readonlyFsArgv()` of
 * src/build/appliance.ts: uncompressed erofs, zstd squashfs; SOURCE_DATE_EPOCH as the build takes
 * it; a random filesystem UUID), the wall time and size recorded. Then `--reps` repetitions, the
 * order of erofs and squashfs alternating each time; every figure on a fresh loop mount (`mount -t
 * <fs> -o loop,ro`, whose loop device is detached again with the unmount) after `sync` and `echo 3 >
 * /proc/sys/vm/drop_caches`:
 *  - mount: the mount command's wall time (every mount of the run is a sample, 3–4 per repetition;
 *    the start of a process is in it, the facts line gives that baseline);
 *  - metadata walk: every entry under the mount lstat'ed (names sorted, depth first, synchronous);
 *  - full read: the same walk reading every regular file's bytes (1 MiB reads into one buffer: no
 *    tar, which short-circuits a /dev/null archive);
 *  - boot set: the files a boot reads before the runtime is ready, in that order (`bootSet()`):
 *    systemd, systemd-executor, journald, udevd, then the files aios-runtime.service's ExecStart
 *    names (notify-exec, node, the bundle's entry and --config), the rest of the runtime bundle
 *    (not the CLI's files), llama-server as the config names it; each program followed by its ELF
 *    interpreter and the closure of its DT_NEEDED libraries (resolved inside the tree: RUNPATH,
 *    etc/ld.so.conf.d, the usual directories) or, for a script, its #! interpreter (a script's own
 *    modules are not followed);
 *  - models: every *.gguf regular file in the tree, when there are any.
 * For each read, besides the wall time: the bytes the filesystem read from the block device (the
 * loop device's sectors-read counter, /sys/block/loopN/stat: what dm-verity would hash), and the CPU
 * time (user + sys) of this process (squashfs decompresses in the reading task; the loop device's
 * own reads of the image file happen in a kernel worker and are not in it).
 *
 * Statistics: mean ± sd and median per filesystem, the difference squashfs − erofs with its 95 %
 * interval from Welch's t (src/bench/stats.ts), and a verdict per figure ("erofs faster",
 * "squashfs faster", "no difference detectable at 95 %"). Sanity: each full read must see as many
 * entries and bytes as the tree has (a warning in the section otherwise).
 *
 * No dm-verity: this host has no device-mapper, so the images are mounted without it. Verity adds
 * a SHA-256 of every 4 KiB block read from the partition (and the hash tree's blocks, ≈ 1 % more):
 * proportional to the device bytes above, so less for the compressed squashfs; the section
 * estimates it from those bytes and this CPU's SHA-256 rate (Node's, one stream). On a virtual
 * machine the host's page cache sits beneath the virtual disk and is not dropped with the guest's:
 * "cold" reads may be served from the host's memory, which the section says.
 *
 * Temp files (images, mount point) live in a directory under --tmp (default: the OS temp dir),
 * which must not be a tmpfs; whatever happens, mounts are undone and the directory removed.
 * `--json` prints the raw results (every sample) as JSON on stdout instead of the section.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomUUID } from 'node:crypto';
import { closeSync, existsSync, lstatSync, mkdirSync, mkdtempSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, statfsSync, statSync, writeFileSync, type Stats } from 'node:fs';
import { loadavg, release, tmpdir } from 'node:os';
import { basename, join, posix, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from '../build/index.js';
import { readonlyFsArgv } from '../build/appliance.js';
import { StageCache } from '../build/cache.js';
import { sourceDateEpoch } from '../build/context.js';
import { physicalCores } from '../util/cpu.js';
import { registerTemp, safeRemove } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { run, which } from '../util/exec.js';
import { defaultCacheDir, PKG_ROOT } from '../util/paths.js';
import { machineFacts } from './facts.js';
import { fmt } from './report.js';
import { mean, median, sd, welch, type Welch } from './stats.js';

export type Fs = 'erofs' | 'squashfs';
export const FSES: readonly Fs[] = ['erofs', 'squashfs'];
export type Kind = 'walk' | 'full' | 'boot' | 'models';

export const START = '<!-- rootfs-fs-bench:start -->';
export const END = '<!-- rootfs-fs-bench:end -->';
export const HEADING = '## Appliance root: erofs vs squashfs (`npm run bench:rootfs-fs`)';
const MiB = 1024 * 1024;

/** One timed operation on a fresh cold mount. */
export interface Op {
  ms: number;
  /** Bytes the filesystem read from the (loop) block device during the operation. */
  deviceBytes: number;
  /** CPU time of the reading process (user + sys), ms. */
  cpuMs: number;
  /** Entries seen (walk, full read) and bytes read (reads). */
  entries?: number;
  bytes?: number;
}

export interface FsSamples {
  mountMs: number[];
  ops: Record<Kind, Op[]>;
}

export interface RootFsResult {
  schema: 'aios-bench-rootfs-fs/1';
  when: string;
  note: string;
  reps: number;
  root: { path: string; what: string; entries: number; files: number; bytes: number };
  images: Record<Fs, { argv: string[]; tool: string; mkfsSeconds: number; bytes: number }>;
  bootSet: { files: string[]; bytes: number; missing: string[] };
  models: { files: string[]; bytes: number };
  samples: Record<Fs, FsSamples>;
  facts: {
    cpu: string;
    logical: number;
    physicalCores: number;
    kernel: string;
    loadStart: number;
    loadMeasure: number;
    where: 'vm' | 'emulated' | 'bare metal';
    virtualization: string;
    disk: { dir: string; source: string; fstype: string; rotational?: boolean };
    sha256MiBs: number;
    spawnMs: number;
  };
  warnings: string[];
}

// ---------------------------------------------------------------------------------------------
// The boot set: which files, resolved inside the tree (pure apart from reading the tree).

export interface ElfInfo {
  /** PT_INTERP: the dynamic loader's path. */
  interp?: string;
  /** DT_NEEDED, in order. */
  needed: string[];
  /** DT_RUNPATH, else DT_RPATH, split on ':'. */
  runpath: string[];
}

/**
 * The dynamic-linking facts of a 64-bit little-endian ELF file (x86-64, aarch64…), read through
 * `read(offset, length)`; undefined for anything else (a script, a 32-bit or big-endian ELF, a
 * static binary has no PT_DYNAMIC and gives empty lists).
 */
export function parseElf(read: (offset: number, length: number) => Buffer): ElfInfo | undefined {
  const h = read(0, 64);
  if (h.length < 64 || h.readUInt32BE(0) !== 0x7f454c46 || h[4] !== 2 || h[5] !== 1) return undefined;
  const phoff = Number(h.readBigUInt64LE(0x20));
  const phentsize = h.readUInt16LE(0x36);
  const phnum = h.readUInt16LE(0x38);
  if (phentsize < 56 || phnum > 4096) return undefined;
  const ph = read(phoff, phentsize * phnum);
  if (ph.length < phentsize * phnum) return undefined;
  const loads: { vaddr: number; offset: number; filesz: number }[] = [];
  let dyn: { offset: number; filesz: number } | undefined;
  let interp: string | undefined;
  for (let i = 0; i < phnum; i++) {
    const o = i * phentsize;
    const type = ph.readUInt32LE(o);
    const offset = Number(ph.readBigUInt64LE(o + 8));
    const vaddr = Number(ph.readBigUInt64LE(o + 16));
    const filesz = Number(ph.readBigUInt64LE(o + 32));
    if (type === 1) loads.push({ vaddr, offset, filesz });
    else if (type === 2) dyn = { offset, filesz };
    else if (type === 3) interp = read(offset, filesz).toString('latin1').replace(/\0.*$/s, '');
  }
  if (!dyn) return { ...(interp ? { interp } : {}), needed: [], runpath: [] };
  const d = read(dyn.offset, dyn.filesz);
  const needed: number[] = [];
  let strtab: number | undefined;
  let runpath: number | undefined;
  let rpath: number | undefined;
  for (let o = 0; o + 16 <= d.length; o += 16) {
    const tag = Number(d.readBigInt64LE(o));
    const val = Number(d.readBigUInt64LE(o + 8));
    if (tag === 0) break;
    if (tag === 1) needed.push(val);
    else if (tag === 5) strtab = val;
    else if (tag === 15) rpath = val;
    else if (tag === 29) runpath = val;
  }
  // DT_STRTAB is an address: map it to the file through the PT_LOAD segment that holds it.
  const seg = strtab === undefined ? undefined : loads.find((l) => strtab! >= l.vaddr && strtab! < l.vaddr + l.filesz);
  if (!seg || strtab === undefined) return { ...(interp ? { interp } : {}), needed: [], runpath: [] };
  const base = strtab - seg.vaddr + seg.offset;
  const str = (off: number) => {
    let s = '';
    for (let at = base + off; ; at += 256) {
      const b = read(at, 256);
      const z = b.indexOf(0);
      s += b.subarray(0, z < 0 ? b.length : z).toString('latin1');
      if (z >= 0 || b.length < 256) return s;
    }
  };
  const rp = runpath ?? rpath;
  return { ...(interp ? { interp } : {}), needed: needed.map(str), runpath: rp === undefined ? [] : str(rp).split(':').filter(Boolean) };
}

/** parseElf of a file (only the headers and strings are read). */
export function elfOfFile(file: string): ElfInfo | undefined {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return undefined;
  }
  try {
    return parseElf((offset, length) => {
      const b = Buffer.alloc(length);
      const n = readSync(fd, b, 0, length, offset);
      return b.subarray(0, n);
    });
  } catch {
    return undefined;
  } finally {
    closeSync(fd);
  }
}

/**
 * A path inside the tree `root` with every symlink followed inside it (an absolute target is taken
 * from the tree's root, never the host's; ".." stops at it): the real path relative to root, or
 * undefined when something on the way is missing or the links loop.
 */
export function resolveInRoot(root: string, path: string): string | undefined {
  const parts = path.split('/').filter((p) => p && p !== '.');
  let cur: string[] = [];
  let hops = 0;
  while (parts.length) {
    const p = parts.shift()!;
    if (p === '..') {
      cur.pop();
      continue;
    }
    let st: Stats;
    try {
      st = lstatSync(join(root, ...cur, p));
    } catch {
      return undefined;
    }
    if (st.isSymbolicLink()) {
      if (++hops > 40) return undefined;
      const target = readlinkSync(join(root, ...cur, p));
      if (target.startsWith('/')) cur = [];
      parts.unshift(...target.split('/').filter((x) => x && x !== '.'));
      continue;
    }
    cur.push(p);
  }
  return cur.join('/');
}

const isFile = (root: string, rel: string | undefined): rel is string => {
  if (rel === undefined) return false;
  try {
    return lstatSync(join(root, rel)).isFile();
  } catch {
    return false;
  }
};

/** Where the dynamic loader looks (relative to the tree): etc/ld.so.conf.d/*.conf, then the usual directories. */
export function libraryDirs(root: string): string[] {
  const dirs: string[] = [];
  const confd = resolveInRoot(root, 'etc/ld.so.conf.d');
  if (confd) {
    let names: string[] = [];
    try {
      names = readdirSync(join(root, confd)).filter((n) => n.endsWith('.conf')).sort();
    } catch {
      /* not a directory */
    }
    for (const n of names) {
      const rel = resolveInRoot(root, `${confd}/${n}`);
      if (!isFile(root, rel)) continue;
      for (const line of readFileSync(join(root, rel), 'utf8').split('\n')) if (line.trim().startsWith('/')) dirs.push(line.trim());
    }
  }
  dirs.push('/lib', '/usr/lib', '/lib64', '/usr/lib64');
  return [...new Set(dirs)];
}

/** The interpreter a script names on its #! line (`/usr/bin/env prog` → prog looked up in the usual bin directories). */
export function shebang(head: string): string | undefined {
  const m = /^#!\s*(\S+)(?:[ \t]+(\S+))?/.exec(head);
  if (!m) return undefined;
  if (m[1]!.endsWith('/env') && m[2] && !m[2].startsWith('-')) return m[2];
  return m[1];
}

/** The programs a boot starts first, before anything of the runtime (tried in order; missing ones are listed). */
export const SYSTEM_PROGRAMS = ['/usr/lib/systemd/systemd', '/usr/lib/systemd/systemd-executor', '/usr/lib/systemd/systemd-journald', '/usr/lib/systemd/systemd-udevd'];
export const RUNTIME_UNIT = '/usr/lib/systemd/system/aios-runtime.service';
/** Used when the tree has no runtime unit: what its ExecStart names in this project. */
const RUNTIME_FALLBACK = ['/usr/libexec/aios/notify-exec', '/usr/bin/node', '/usr/lib/aios-runtime/aios-runtime.mjs', '/etc/aios/config.toml'];

/**
 * The boot set: the files a boot of the tree reads before the runtime is ready, in that order, as
 * real paths relative to root (deduplicated). `elf` reads a file's ELF facts (injectable for tests).
 * See the header for what is in it.
 */
export function bootSet(root: string, o: { elf?: (file: string) => ElfInfo | undefined } = {}): { files: string[]; missing: string[] } {
  const elf = o.elf ?? elfOfFile;
  const libDirs = libraryDirs(root);
  const files: string[] = [];
  const seen = new Set<string>();
  const missing: string[] = [];
  const miss = (p: string) => {
    if (!missing.includes(p)) missing.push(p);
  };
  const findLib = (name: string, runpath: string[], origin: string): string | undefined => {
    if (name.includes('/')) {
      const rel = resolveInRoot(root, name);
      return isFile(root, rel) ? rel : undefined;
    }
    for (const d of [...runpath.map((r) => r.replace(/\$(ORIGIN|\{ORIGIN\})/g, `/${origin}`)), ...libDirs]) {
      const rel = resolveInRoot(root, `${d}/${name}`);
      if (isFile(root, rel)) return rel;
    }
    return undefined;
  };
  // As ld.so loads them: breadth first, and a name already loaded (by its file name, the soname in
  // practice) is not looked up again, so a library finds what an earlier object's RUNPATH found.
  const loaded = new Set<string>();
  const addLibs = (first: ElfInfo, origin: string) => {
    const queue: [ElfInfo, string][] = [[first, origin]];
    for (let item; (item = queue.shift()); ) {
      const [info, from] = item;
      for (const name of info.needed) {
        if (loaded.has(posix.basename(name))) continue;
        const rel = findLib(name, info.runpath, from);
        if (!rel) {
          miss(name);
          continue;
        }
        loaded.add(posix.basename(name));
        if (seen.has(rel)) continue;
        seen.add(rel);
        files.push(rel);
        const li = elf(join(root, rel));
        if (li) queue.push([li, posix.dirname(rel)]);
      }
    }
  };
  const add = (path: string, depth = 0): string | undefined => {
    const rel = resolveInRoot(root, path);
    if (!isFile(root, rel)) {
      miss(path);
      return undefined;
    }
    if (seen.has(rel)) return rel;
    seen.add(rel);
    files.push(rel);
    const info = elf(join(root, rel));
    if (info) {
      if (info.interp) add(info.interp, depth + 1);
      addLibs(info, posix.dirname(rel));
    } else if (depth < 4) {
      let head = '';
      try {
        const fd = openSync(join(root, rel), 'r');
        const b = Buffer.alloc(256);
        head = b.subarray(0, readSync(fd, b, 0, 256, 0)).toString('latin1');
        closeSync(fd);
      } catch {
        /* unreadable: no interpreter */
      }
      const interp = shebang(head);
      if (interp) add(interp.includes('/') ? interp : (['/usr/bin', '/bin', '/usr/sbin', '/sbin'].map((d) => `${d}/${interp}`).find((p) => isFile(root, resolveInRoot(root, p))) ?? `/usr/bin/${interp}`), depth + 1);
    }
    return rel;
  };

  for (const p of SYSTEM_PROGRAMS) add(p);
  // The runtime as its unit starts it: the absolute paths on ExecStart= (notify-exec, node, the entry, --config).
  const unit = resolveInRoot(root, RUNTIME_UNIT);
  let named = RUNTIME_FALLBACK;
  if (isFile(root, unit)) {
    const exec = /^ExecStart=[-@:+!]*(.*)$/m.exec(readFileSync(join(root, unit), 'utf8'))?.[1];
    if (exec) named = exec.split(/\s+/).filter((w) => w.startsWith('/'));
  } else miss(RUNTIME_UNIT);
  let config: string | undefined;
  let entry: string | undefined;
  for (const p of named) {
    const rel = add(p);
    if (rel?.endsWith('.toml')) config ??= rel;
    if (rel && /\.[cm]?js$/.test(rel)) entry ??= rel;
  }
  // The rest of the runtime's bundle (the entry imports its chunks; the CLI's files are not read at boot).
  if (entry) {
    const dir = posix.dirname(entry);
    const rest: string[] = [];
    const walkBundle = (d: string) => {
      for (const n of readdirSync(join(root, d)).sort()) {
        const rel = `${d}/${n}`;
        const st = lstatSync(join(root, rel));
        if (st.isDirectory()) walkBundle(rel);
        else if (st.isFile() && !n.startsWith('aios-cli')) rest.push(rel);
      }
    };
    walkBundle(dir);
    for (const rel of rest) add(rel);
  }
  // llama-server, where the runtime's config says it is.
  const llama = config ? /^\s*llama_server\s*=\s*"([^"]+)"/m.exec(readFileSync(join(root, config), 'utf8'))?.[1] : undefined;
  add(llama ?? '/usr/bin/llama-server');
  return { files, missing };
}

// ---------------------------------------------------------------------------------------------
// Statistics and the report (pure).

export type Verdict = 'erofs faster' | 'squashfs faster' | 'no difference detectable at 95 %';

/** From the 95 % interval of squashfs − erofs: for a time (lower is better) or a rate (higher is better). */
export function verdictOf(ci: [number, number], lowerIsBetter: boolean): Verdict {
  if (ci[0] > 0) return lowerIsBetter ? 'erofs faster' : 'squashfs faster';
  if (ci[1] < 0) return lowerIsBetter ? 'squashfs faster' : 'erofs faster';
  return 'no difference detectable at 95 %';
}

export interface FigureRow {
  name: string;
  unit: string;
  lowerIsBetter: boolean;
  erofs: { n: number; mean: number; sd: number; median: number };
  squashfs: { n: number; mean: number; sd: number; median: number };
  /** squashfs − erofs. */
  welch: Welch;
  verdict: Verdict;
}

export function figureRow(name: string, unit: string, lowerIsBetter: boolean, erofs: number[], squashfs: number[]): FigureRow {
  const s = (xs: number[]) => ({ n: xs.length, mean: mean(xs), sd: sd(xs), median: median(xs) });
  const w = welch(erofs, squashfs);
  return { name, unit, lowerIsBetter, erofs: s(erofs), squashfs: s(squashfs), welch: w, verdict: verdictOf(w.ci, lowerIsBetter) };
}

const mib = (b: number) => b / MiB;

/** The figures of a result, in the order of the table. */
export function figureRows(r: RootFsResult): FigureRow[] {
  const ops = (fs: Fs, k: Kind) => r.samples[fs].ops[k];
  const rows = [
    figureRow('mount -o loop,ro', 'ms', true, r.samples.erofs.mountMs, r.samples.squashfs.mountMs),
    figureRow(`metadata walk: lstat of ${r.root.entries.toLocaleString('en')} entries`, 'ms', true, ops('erofs', 'walk').map((o) => o.ms), ops('squashfs', 'walk').map((o) => o.ms)),
    figureRow(`full read: ${r.root.files.toLocaleString('en')} files, ${fmt(mib(r.root.bytes))} MiB`, 's', true, ops('erofs', 'full').map((o) => o.ms / 1000), ops('squashfs', 'full').map((o) => o.ms / 1000)),
    figureRow('full read rate', 'MiB/s', false, ops('erofs', 'full').map((o) => mib(o.bytes ?? 0) / (o.ms / 1000)), ops('squashfs', 'full').map((o) => mib(o.bytes ?? 0) / (o.ms / 1000))),
    figureRow(`boot set: ${r.bootSet.files.length} files, ${fmt(mib(r.bootSet.bytes))} MiB`, 'ms', true, ops('erofs', 'boot').map((o) => o.ms), ops('squashfs', 'boot').map((o) => o.ms)),
  ];
  if (r.models.files.length) rows.push(figureRow(`models: ${r.models.files.length} file(s), ${fmt(mib(r.models.bytes))} MiB`, 'ms', true, ops('erofs', 'models').map((o) => o.ms), ops('squashfs', 'models').map((o) => o.ms)));
  return rows;
}

const signed = (x: number) => `${x >= 0 ? '+' : ''}${fmt(x)}`;
const bytes = (n: number) => `${fmt(mib(n))} MiB (${n.toLocaleString('en')} bytes)`;

/** What the facts say about "cold" reads here. */
export function cacheSentence(where: RootFsResult['facts']['where']): string {
  if (where === 'emulated') return '**EMULATED CPU (QEMU TCG): these figures are meaningless for performance**; they only show that the bench runs.';
  if (where === 'vm')
    return 'These are real cores (a virtual machine, not an emulator), but the disk is the VM\'s virtual disk with the host\'s own page cache beneath it: dropping the guest\'s page cache does not drop the host\'s, so a "cold" read may have been served from the host\'s memory. That flatters the filesystem that reads more bytes from the device (erofs) against what a real disk would show.';
  return 'Bare metal: with the page cache dropped every read comes from the disk (its own cache aside).';
}

/** The section of docs/benchmarks.md between the markers (markers included). */
export function formatSection(r: RootFsResult, rows: FigureRow[] = figureRows(r)): string {
  const f = r.facts;
  const e = r.images.erofs;
  const s = r.images.squashfs;
  const kinds: [Kind, string][] = [
    ['walk', 'metadata walk'],
    ['full', 'full read'],
    ['boot', 'boot set'],
    ...(r.models.files.length ? ([['models', 'models']] as [Kind, string][]) : []),
  ];
  const avg = (fs: Fs, k: Kind, pick: (o: Op) => number) => mean(r.samples[fs].ops[k].map(pick));
  const verityMs = (b: number) => (mib(b) / f.sha256MiBs) * 1000;
  const shortList = r.bootSet.files.map((p) => `\`${p}\``).join(', ');
  const lines = [
    START,
    `Measured ${r.when.slice(0, 16).replace('T', ' ')} UTC on ${f.cpu} (${f.logical} CPUs, ${f.physicalCores} cores; kernel ${f.kernel}; load average ${f.loadStart.toFixed(2)} at the start, ${f.loadMeasure.toFixed(2)} when the measurements began; ${f.virtualization}). Images in \`${f.disk.dir}\` on ${f.disk.source} (${f.disk.fstype}${f.disk.rotational === undefined ? '' : f.disk.rotational ? ', rotational as lsblk reports it' : ', non-rotational as lsblk reports it'}). Tree: ${r.root.what} (\`${r.root.path}\`): ${r.root.entries.toLocaleString('en')} entries, ${r.root.files.toLocaleString('en')} regular files, ${fmt(mib(r.root.bytes))} MiB. ${r.reps} repetitions, the order of erofs and squashfs alternating each time; every figure on a fresh loop mount (\`mount -o loop,ro\`) after \`sync; echo 3 > /proc/sys/vm/drop_caches\`. **No dm-verity** (no device-mapper on this host).${r.note ? ` ${r.note}` : ''}`,
    '',
    '| | erofs | squashfs |',
    '| --- | --- | --- |',
    `| made with | \`${e.argv.join(' ')}\` (${e.tool}) | \`${s.argv.join(' ')}\` (${s.tool}) |`,
    `| mkfs wall time (once) | ${fmt(e.mkfsSeconds)} s | ${fmt(s.mkfsSeconds)} s |`,
    `| image size | ${bytes(e.bytes)} | ${bytes(s.bytes)}; ${((s.bytes / e.bytes) * 100).toFixed(0)} % of erofs |`,
    '',
    '| figure | erofs: mean ± sd (median) | squashfs: mean ± sd (median) | squashfs − erofs (95 % CI, Welch) | verdict |',
    '| --- | --- | --- | --- | --- |',
    ...rows.map(
      (x) =>
        `| ${x.name} (${x.unit}, n = ${x.erofs.n}) | ${fmt(x.erofs.mean)} ± ${fmt(x.erofs.sd)} (${fmt(x.erofs.median)}) | ${fmt(x.squashfs.mean)} ± ${fmt(x.squashfs.sd)} (${fmt(x.squashfs.median)}) | ${signed(x.welch.diff)} (${signed((x.welch.diff / x.erofs.mean) * 100)} %; ${fmt(x.welch.ci[0])} – ${fmt(x.welch.ci[1])}) | **${x.verdict}** |`,
    ),
    '',
    `Where the time goes (means): the bytes the filesystem read from the block device, the CPU time (user + sys) of the reading process (squashfs decompresses in it), and what dm-verity would add on the machine: a SHA-256 of each 4 KiB block read from the partition, estimated here from those bytes at ${fmt(f.sha256MiBs)} MiB/s (Node's SHA-256 on this CPU, one stream; plus the hash tree's own blocks, ≈ 1 % more).`,
    '',
    '| figure | read from the device, erofs / squashfs (MiB) | CPU of the reader, erofs / squashfs (ms) | verity SHA-256, est., erofs / squashfs (ms) |',
    '| --- | --- | --- | --- |',
    ...kinds.map(([k, name]) => {
      const [de, ds] = [avg('erofs', k, (o) => o.deviceBytes), avg('squashfs', k, (o) => o.deviceBytes)];
      return `| ${name} | ${fmt(mib(de))} / ${fmt(mib(ds))} | ${fmt(avg('erofs', k, (o) => o.cpuMs))} / ${fmt(avg('squashfs', k, (o) => o.cpuMs))} | ${fmt(verityMs(de))} / ${fmt(verityMs(ds))} |`;
    }),
    '',
    `Mount times include starting the \`mount\` process (${fmt(f.spawnMs)} ms for \`true\` from this process). ${cacheSentence(f.where)}`,
    '',
    `Boot set (${r.bootSet.files.length} files, ${fmt(mib(r.bootSet.bytes))} MiB, read in this order): ${shortList || 'none'}.${r.bootSet.missing.length ? ` Not in the tree: ${r.bootSet.missing.map((p) => `\`${p}\``).join(', ')}.` : ''}`,
    ...r.warnings.map((w) => `\nWarning: ${w}`),
    END,
  ];
  return lines.join('\n');
}

/** The document with the section replaced; without markers, a new section after "Boot to ready" (else at the end). */
export function spliceSection(doc: string, section: string, intro = ''): string {
  const a = doc.indexOf(START);
  const b = doc.indexOf(END);
  if (a >= 0 && b > a) return doc.slice(0, a) + section + doc.slice(b + END.length);
  const block = `${HEADING}\n\n${intro ? `${intro}\n\n` : ''}${section}\n`;
  const after = '<!-- boot-to-ready:end -->';
  const i = doc.indexOf(after);
  if (i >= 0) {
    const at = i + after.length;
    return `${doc.slice(0, at)}\n\n${block}${doc.slice(at).replace(/^\n*/, '\n')}`;
  }
  return `${doc.trimEnd()}${doc.trim() ? '\n\n' : ''}${block}`;
}

// ---------------------------------------------------------------------------------------------
// Measuring (root, real mounts).

/** Depth first, names sorted (the same order on both filesystems). */
function walk(dir: string, visit: (path: string, st: Stats) => void): void {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    const st = lstatSync(p);
    visit(p, st);
    if (st.isDirectory()) walk(p, visit);
  }
}

function readWhole(file: string, buf: Buffer): number {
  const fd = openSync(file, 'r');
  let total = 0;
  try {
    for (let n; (n = readSync(fd, buf, 0, buf.length, null)) > 0; ) total += n;
  } finally {
    closeSync(fd);
  }
  return total;
}

function sh(argv: string[]): { ok: boolean; out: string } {
  const r = spawnSync(argv[0]!, argv.slice(1), { encoding: 'utf8' });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? r.error.message : ''}`.trim() };
}

function dropCaches(): void {
  sh(['sync']);
  writeFileSync('/proc/sys/vm/drop_caches', '3');
}

/** The source device of the mount at `mnt` (/proc/self/mountinfo). */
function mountSource(mnt: string): string | undefined {
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [pre, post] = line.split(' - ');
    const point = pre?.split(' ')[4]?.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
    if (point === mnt) return post?.split(' ')[1];
  }
  return undefined;
}

/** Bytes read from a block device so far (its stat file: sectors read × 512). */
function deviceReadBytes(dev: string): number {
  const f = join('/sys/block', basename(dev), 'stat');
  if (!existsSync(f)) return NaN;
  return Number(readFileSync(f, 'utf8').trim().split(/\s+/)[2]) * 512;
}

class Mounted {
  private constructor(
    readonly mnt: string,
    readonly img: string,
    readonly dev: string,
    readonly ms: number,
  ) {}

  static open(fs: Fs, img: string, mnt: string): Mounted {
    dropCaches();
    const t0 = performance.now();
    const r = sh(['mount', '-t', fs, '-o', 'loop,ro', img, mnt]);
    const ms = performance.now() - t0;
    if (!r.ok) throw new Error(`mount -t ${fs} -o loop,ro ${img} ${mnt}: ${r.out}`);
    const dev = mountSource(mnt);
    if (!dev?.startsWith('/dev/loop')) {
      unmount(mnt, img);
      throw new Error(`${mnt} is mounted from ${dev ?? 'nothing'}, not a loop device`);
    }
    return new Mounted(mnt, img, dev, ms);
  }

  /** Times `f` on this mount: wall, device bytes read, CPU of this process. */
  measure(f: () => { entries?: number; bytes?: number }): Op {
    const d0 = deviceReadBytes(this.dev);
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    const res = f();
    const ms = performance.now() - t0;
    const c = process.cpuUsage(c0);
    return { ms, deviceBytes: deviceReadBytes(this.dev) - d0, cpuMs: (c.user + c.system) / 1000, ...res };
  }

  close(): void {
    unmount(this.mnt, this.img);
  }
}

/** umount (lazily if it must), then make sure no loop device is left on the image (`mount -o loop` sets autoclear, so normally none is). */
function unmount(mnt: string, img: string): void {
  if (mountSource(mnt) !== undefined && !sh(['umount', mnt]).ok) sh(['umount', '-l', mnt]);
  const left = sh(['losetup', '-n', '-O', 'NAME', '-j', img]);
  for (const dev of left.out.split('\n').map((l) => l.trim()).filter((l) => l.startsWith('/dev/loop'))) sh(['losetup', '-d', dev]);
}

/** SHA-256 throughput of this CPU in MiB/s (best of three 32 MiB runs, Node's crypto). */
function sha256Rate(): number {
  const buf = Buffer.alloc(32 * MiB, 0x5a);
  let best = Infinity;
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    createHash('sha256').update(buf).digest();
    best = Math.min(best, performance.now() - t0);
  }
  return 32 / (best / 1000);
}

function spawnBaseline(): number {
  const xs: number[] = [];
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now();
    sh(['true']);
    xs.push(performance.now() - t0);
  }
  return median(xs);
}

/** The tree the appliance image stage makes slot A from: the recipe built with image.layout = "appliance", the overlay stage's root/. */
async function applianceRoot(recipe: string): Promise<{ path: string; what: string }> {
  const outDir = join(defaultCacheDir(), 'bench', 'rootfs-fs-build');
  process.stderr.write(`building recipe "${recipe}" with image.layout = "appliance" (cached stages are reused) for its root tree…\n`);
  const res = await build({ recipe, sets: ['image.layout=appliance'], formats: ['disk'], outDir, renderer: 'silent' });
  const overlay = res.stages.find((s) => s.name === 'overlay');
  if (!overlay) throw new Error('the appliance build ran no overlay stage');
  process.stderr.write(`  stages: ${res.stages.map((s) => `${s.name} ${s.cached ? 'cached' : `built in ${s.seconds.toFixed(0)} s`}`).join(', ')}\n`);
  // Only the tree is wanted: the published disk and the update artifacts go (the credentials stay, so the overlay's key does too).
  for (const o of res.outputs) {
    await safeRemove(o.file);
    await safeRemove(o.manifest);
  }
  await safeRemove(join(outDir, 'update'));
  const path = join(new StageCache(defaultCacheDir()).path('overlay', overlay.key), 'root');
  if (!existsSync(path)) throw new Error(`the overlay stage's tree is not at ${path}`);
  return { path, what: `the root tree of recipe "${recipe}" built with image.layout = "appliance" (the overlay stage's output, from which the image stage makes slot A)` };
}

/** Refuses, with what to install, when this host cannot run the bench. */
async function checkHost(): Promise<Record<Fs, string>> {
  if (process.getuid?.() !== 0) throw new UserError('this bench needs root (loop mounts, /proc/sys/vm/drop_caches)', 2, 'run it as root: sudo npm run bench:rootfs-fs');
  const tools: [string, string][] = [
    ['mkfs.erofs', 'erofs-utils'],
    ['mksquashfs', 'squashfs-tools'],
    ['mount', 'mount'],
    ['umount', 'mount'],
    ['losetup', 'mount'],
  ];
  const missing: string[] = [];
  for (const [t, pkg] of tools) if (!(await which(t))) missing.push(`${t} (Debian package ${pkg})`);
  if (missing.length) throw new UserError(`missing ${missing.join(', ')}`, 3, `apt-get install ${[...new Set(tools.filter(([t]) => missing.some((m) => m.startsWith(`${t} `))).map(([, p]) => p))].join(' ')}`);
  const known = () => readFileSync('/proc/filesystems', 'utf8').split('\n').map((l) => l.trim().split(/\s+/).at(-1));
  for (const fs of FSES) {
    if (!known().includes(fs)) sh(['modprobe', fs]);
    if (!known().includes(fs)) throw new UserError(`this kernel cannot mount ${fs} (not in /proc/filesystems, modprobe ${fs} failed): CONFIG_${fs.toUpperCase()}_FS`, 3);
  }
  const version = async (pkg: string) => {
    const r = await run(['dpkg-query', '-W', '-f', '${Version}', pkg], { reject: false }).catch(() => undefined);
    return r?.exitCode === 0 && r.stdout.trim() ? `${pkg} ${r.stdout.trim()}` : pkg;
  };
  return { erofs: await version('erofs-utils'), squashfs: await version('squashfs-tools') };
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  const arg = (name: string, def: string) => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : def;
  };
  const reps = Number(arg('reps', '10'));
  if (!Number.isInteger(reps) || reps < 2) throw new UserError(`--reps ${arg('reps', '')}: give a whole number of at least 2`, 2);
  const out = resolve(arg('out', join(PKG_ROOT, 'docs/benchmarks.md')));
  const note = arg('note', '');
  const json = argv.includes('--json');
  const tmpBase = resolve(arg('tmp', tmpdir()));
  const loadStart = loadavg()[0]!;

  const tool = await checkHost();
  mkdirSync(tmpBase, { recursive: true });
  const disk = (() => {
    const r = sh(['findmnt', '-n', '-o', 'SOURCE,FSTYPE', '-T', tmpBase]);
    const [source = 'unknown', fstype = 'unknown'] = r.ok ? r.out.split(/\s+/) : [];
    const rota = source.startsWith('/dev/') ? sh(['lsblk', '-ndo', 'ROTA', source]) : undefined;
    return { dir: tmpBase, source, fstype, ...(rota?.ok && /^[01]$/.test(rota.out) ? { rotational: rota.out === '1' } : {}) };
  })();
  if (['tmpfs', 'ramfs', 'zram'].includes(disk.fstype) || disk.source.startsWith('/dev/zram')) {
    throw new UserError(`${tmpBase} is on ${disk.fstype} (${disk.source}): the images would be read from memory, never cold`, 2, 'pass --tmp <a directory on a disk>');
  }

  const rootArg = arg('root', '');
  const root = rootArg ? { path: resolve(rootArg), what: 'the tree given with --root' } : await applianceRoot(arg('recipe', 'default'));
  if (!existsSync(root.path) || !statSync(root.path).isDirectory()) throw new UserError(`--root ${root.path}: not a directory`, 2);

  // The tree as the mounted images must show it, and the model files in it.
  let entries = 0;
  let files = 0;
  let treeBytes = 0;
  const models: string[] = [];
  walk(root.path, (p, st) => {
    entries++;
    if (!st.isFile()) return;
    files++;
    treeBytes += st.size;
    if (p.endsWith('.gguf')) models.push(p.slice(root.path.length + 1));
  });
  const boot = bootSet(root.path);
  const sizeOf = (rels: string[]) => rels.reduce((n, rel) => n + statSync(join(root.path, rel)).size, 0);
  process.stderr.write(`tree ${root.path}: ${entries} entries, ${files} files, ${fmt(mib(treeBytes))} MiB; boot set ${boot.files.length} files (${fmt(mib(sizeOf(boot.files)))} MiB)${boot.missing.length ? `, not in the tree: ${boot.missing.join(', ')}` : ''}\n`);

  const free = statfsSync(tmpBase);
  if (free.bavail * free.bsize < treeBytes * 2.2) throw new UserError(`${tmpBase}: ${fmt(mib(free.bavail * free.bsize))} MiB free, the two images need about ${fmt(mib(treeBytes * 2))} MiB`, 2, 'pass --tmp <a directory with more room>');
  const work = mkdtempSync(join(tmpBase, 'aios-bench-rootfs-fs-'));
  const unregister = registerTemp(work);
  const mnt = join(work, 'mnt');
  mkdirSync(mnt);
  let current: Mounted | undefined;
  // The measuring is synchronous (spawnSync, sync reads): a signal is only seen when the loop
  // yields, which it does between mounts, never with one open; it stops there.
  let stopped: string | undefined;
  const onSignal = (sig: NodeJS.Signals) => (stopped = sig);
  process.on('SIGINT', onSignal).on('SIGTERM', onSignal);
  try {
    const images = {} as RootFsResult['images'];
    for (const fs of FSES) {
      const img = join(work, `root.${fs}`);
      const a = readonlyFsArgv(fs, { root: root.path, img, uuid: randomUUID(), epoch: sourceDateEpoch() });
      process.stderr.write(`making the ${fs} image: ${a.join(' ')}\n`);
      const t0 = performance.now();
      await run(a);
      images[fs] = { argv: a.map((w) => (w === root.path ? '<tree>' : w === img ? `root.${fs}` : w.replace(/^-U[0-9a-f-]{36}$/, '-U<uuid>'))), tool: tool[fs], mkfsSeconds: (performance.now() - t0) / 1000, bytes: statSync(img).size };
      process.stderr.write(`  ${fmt(images[fs].mkfsSeconds)} s, ${fmt(mib(images[fs].bytes))} MiB\n`);
    }

    const facts0 = await machineFacts();
    const v = facts0.virtualization;
    const sha = sha256Rate();
    const spawnMs = spawnBaseline();
    const loadMeasure = loadavg()[0]!;
    const kinds: Kind[] = ['walk', 'full', 'boot', ...(models.length ? (['models'] as Kind[]) : [])];
    const samples: RootFsResult['samples'] = {
      erofs: { mountMs: [], ops: { walk: [], full: [], boot: [], models: [] } },
      squashfs: { mountMs: [], ops: { walk: [], full: [], boot: [], models: [] } },
    };
    const warnings: string[] = [];
    const buf = Buffer.allocUnsafe(MiB);
    const ops: Record<Kind, (m: string) => { entries?: number; bytes?: number }> = {
      walk: (m) => {
        let n = 0;
        walk(m, () => n++);
        return { entries: n };
      },
      full: (m) => {
        let n = 0;
        let b = 0;
        walk(m, (p, st) => {
          n++;
          if (st.isFile()) b += readWhole(p, buf);
        });
        return { entries: n, bytes: b };
      },
      boot: (m) => ({ bytes: boot.files.reduce((b, rel) => b + readWhole(join(m, rel), buf), 0) }),
      models: (m) => ({ bytes: models.reduce((b, rel) => b + readWhole(join(m, rel), buf), 0) }),
    };
    for (let i = 0; i < reps; i++) {
      const order: readonly Fs[] = i % 2 ? ['squashfs', 'erofs'] : ['erofs', 'squashfs'];
      for (const k of kinds) {
        for (const fs of order) {
          await new Promise((r) => setImmediate(r));
          if (stopped) throw new UserError(`${stopped}: stopped, nothing written`, 130);
          const m = (current = Mounted.open(fs, join(work, `root.${fs}`), mnt));
          let op: Op;
          try {
            op = m.measure(() => ops[k](mnt));
          } finally {
            m.close();
            current = undefined;
          }
          samples[fs].mountMs.push(m.ms);
          samples[fs].ops[k].push(op);
          if (k === 'walk' && op.entries !== entries) warnings.push(`${fs}: the metadata walk saw ${op.entries} entries, the tree has ${entries}`);
          if (k === 'full' && (op.entries !== entries || op.bytes !== treeBytes)) warnings.push(`${fs}: the full read saw ${op.entries} entries and ${op.bytes} bytes, the tree has ${entries} and ${treeBytes}`);
        }
      }
      const last = (fs: Fs) => kinds.map((k) => `${k} ${fmt(samples[fs].ops[k].at(-1)!.ms)} ms`).join(', ');
      process.stderr.write(`${i + 1}/${reps} erofs: ${last('erofs')}; squashfs: ${last('squashfs')}\n`);
    }

    const result: RootFsResult = {
      schema: 'aios-bench-rootfs-fs/1',
      when: new Date().toISOString(),
      note,
      reps,
      root: { path: root.path, what: root.what, entries, files, bytes: treeBytes },
      images,
      bootSet: { files: boot.files, bytes: sizeOf(boot.files), missing: boot.missing },
      models: { files: models, bytes: sizeOf(models) },
      samples,
      facts: {
        cpu: facts0.cpu.model,
        logical: facts0.cpu.logical,
        physicalCores: facts0.cpu.physicalCores || physicalCores(),
        kernel: release(),
        loadStart,
        loadMeasure,
        where: v.emulated ? 'emulated' : v.vm || v.hypervisorFlag ? 'vm' : 'bare metal',
        virtualization: v.summary,
        disk,
        sha256MiBs: sha,
        spawnMs,
      },
      warnings: [...new Set(warnings)],
    };
    const section = formatSection(result);
    process.stdout.write(json ? `${JSON.stringify(result, null, 2)}\n` : `${section}\n`);
    const doc = existsSync(out) ? readFileSync(out, 'utf8') : '';
    writeFileSync(out, spliceSection(doc, section));
    process.stderr.write(`wrote its section of ${out}\n`);
  } finally {
    process.off('SIGINT', onSignal).off('SIGTERM', onSignal);
    if (current) current.close();
    unmount(mnt, join(work, 'root.erofs'));
    unmount(mnt, join(work, 'root.squashfs'));
    await safeRemove(work);
    unregister();
  }
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === fileURLToPath(import.meta.url);
if (isMain) {
  main().catch((e: Error) => {
    process.stderr.write(`bench:rootfs-fs: ${e.message}${e instanceof UserError && e.hint ? `\n  ${e.hint}` : ''}\n`);
    process.exit(e instanceof UserError ? e.exitCode : 1);
  });
}
