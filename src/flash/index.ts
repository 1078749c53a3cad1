/**
 * `aios flash`: write a disk image to a whole disk, safely. Order of work: look at the image
 * (decompressing a compressed one once, to prove it intact), look at the target and collect every
 * reason not to write it, confirm, open it exclusively, write in large aligned blocks with
 * progress, fsync, drop the cached pages and read every byte back against the image, then move
 * the backup GPT header to the end of a larger disk and optionally grow the root partition.
 */
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { imageBlocks, inspectImage, type ImageInfo } from './image.js';
import { describeTarget, inspectTarget, type PartitionInfo, type TargetInfo } from './target.js';
import { run, which } from '../util/exec.js';
import { UserError } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import { GPT_TYPES } from '../util/gpt.js';

export { inspectImage, imageBlocks, type ImageInfo } from './image.js';
export { inspectTarget, describeTarget, type TargetInfo } from './target.js';

const MiB = 1024 * 1024;
/** Write/read unit: 4 MiB, a multiple of every sector and erase-block size in use. */
export const BLOCK = 4 * MiB;
/** fdatasync this often, so progress shows what reached the device and dirty memory stays bounded. */
const SYNC_EVERY = 256 * MiB;

export interface Progress {
  phase: 'write' | 'verify';
  done: number;
  total: number;
  bytesPerSecond: number;
  etaSeconds: number;
}

export interface FlashOptions {
  image: string;
  target: string;
  /** The target is a regular file (created at the image's size if missing). For tests. */
  toFile?: boolean;
  /** Skip the typed confirmation; every other check still applies. */
  yes?: boolean;
  /** Asked (after every check passed, before anything is opened for writing) unless `yes`. */
  confirm?: (image: ImageInfo, target: TargetInfo) => Promise<boolean>;
  onProgress?: (p: Progress) => void;
  /** Notes as they happen (e.g. "moved the backup GPT header"). */
  onNote?: (s: string) => void;
  /** Grow the x86-64 root partition (and an ext4 filesystem on it) to the end of the disk. */
  growRoot?: boolean;
  blockSize?: number;
}

export interface VerifyResult {
  ok: boolean;
  bytes: number;
  /** sha256 of the bytes read back from the target (= the image's, when ok); '' after a mismatch. */
  imageSha256: string;
  targetSha256: string;
  seconds: number;
  mismatch?: { offset: number; expected: number; actual: number };
}

export interface FlashResult {
  image: { path: string; format: string; bytes: number };
  target: { path: string; kind: 'block' | 'file'; bytes: number; model: string };
  write: { bytes: number; written: number; skippedZeroBytes: number; seconds: number; bytesPerSecond: number };
  verify: VerifyResult & { bytesPerSecond: number };
  gpt: { found: boolean; backupRelocated: boolean };
  root: { grown: boolean; partition?: string; from?: number; to?: number; filesystem?: string; filesystemGrown?: boolean; note: string };
  notes: string[];
}

function rate(done: number, seconds: number): number {
  return seconds > 0 ? done / seconds : 0;
}

function progressTicker(phase: Progress['phase'], total: number, cb?: (p: Progress) => void) {
  const t0 = performance.now();
  let last = 0;
  return (done: number, force = false) => {
    if (!cb) return;
    const now = performance.now();
    if (!force && now - last < 250) return;
    last = now;
    const bps = rate(done, (now - t0) / 1000);
    cb({ phase, done, total, bytesPerSecond: bps, etaSeconds: bps > 0 ? (total - done) / bps : 0 });
  };
}

/** Drops the target's cached pages so that reading back reads the device, not memory. */
async function dropCache(path: string, kind: 'block' | 'file'): Promise<void> {
  if (kind === 'block') await run(['blockdev', '--flushbufs', path]);
  else await run(['dd', `if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/**
 * Reads `image.size` bytes of `targetPath` and compares them with the image, block by block.
 * Returns the first differing byte's offset on a mismatch (and stops there).
 */
export async function compareImage(
  image: ImageInfo,
  targetPath: string,
  opts: { blockSize?: number; onProgress?: (p: Progress) => void } = {},
): Promise<VerifyResult> {
  const bs = opts.blockSize ?? BLOCK;
  const t0 = performance.now();
  const tick = progressTicker('verify', image.size, opts.onProgress);
  // Bytes are compared exactly; one hash of what was read back is kept for the report (equal to
  // the image's sha256 when every byte matched, so the image is not hashed a second time).
  const hTarget = createHash('sha256');
  const fh = await open(targetPath, 'r');
  let pos = 0;
  try {
    const buf = Buffer.allocUnsafe(bs);
    for await (const want of imageBlocks(image, bs)) {
      let got = 0;
      while (got < want.length) {
        const { bytesRead } = await fh.read(buf, got, want.length - got, pos + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      const have = buf.subarray(0, got);
      if (got < want.length || !have.equals(want)) {
        let i = 0;
        while (i < got && have[i] === want[i]) i++;
        return {
          ok: false,
          bytes: image.size,
          imageSha256: '',
          targetSha256: '',
          seconds: (performance.now() - t0) / 1000,
          mismatch: { offset: pos + i, expected: want[i]!, actual: i < got ? have[i]! : -1 },
        };
      }
      hTarget.update(have);
      pos += want.length;
      tick(pos);
    }
  } finally {
    await fh.close();
  }
  tick(pos, true);
  const h = hTarget.digest('hex');
  return { ok: true, bytes: pos, imageSha256: h, targetSha256: h, seconds: (performance.now() - t0) / 1000 };
}

export function describeMismatch(target: string, v: VerifyResult): string {
  const m = v.mismatch;
  if (!m) return `verify failed: ${target} does not read back as the image`;
  const hex = (n: number) => `0x${n.toString(16).padStart(2, '0')}`;
  const actual = m.actual < 0 ? 'nothing (the target ended)' : hex(m.actual);
  return `verify failed: byte ${m.offset} (0x${m.offset.toString(16)}, sector ${Math.floor(m.offset / 512)}) of ${target} reads ${actual}, the image has ${hex(m.expected)}`;
}

async function writeAll(fh: FileHandle, buf: Buffer, pos: number): Promise<void> {
  let off = 0;
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off, pos + off);
    if (bytesWritten === 0) throw new Error(`write returned 0 at byte ${pos + off}`);
    off += bytesWritten;
  }
}

async function openTarget(t: TargetInfo, image: ImageInfo): Promise<{ fh: FileHandle; zeroed: boolean }> {
  try {
    if (t.kind === 'block') {
      // O_EXCL on a block device: the kernel refuses it (EBUSY) while anything has it claimed
      // (a mounted filesystem, dm, md, swap), even something the checks above missed.
      return { fh: await open(t.path, constants.O_WRONLY | constants.O_EXCL), zeroed: false };
    }
    if (!t.exists) {
      const fh = await open(t.path, 'wx');
      await fh.truncate(image.size); // sparse: reads back zeros
      return { fh, zeroed: true };
    }
    return { fh: await open(t.path, 'r+'), zeroed: false };
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    if (err.code === 'EBUSY') throw new UserError(`refusing to write ${t.path}: the kernel says it is busy (mounted, or claimed by dm/md/swap); nothing was written`, 2, 'see `lsblk` and `findmnt` for what uses it');
    if (err.code === 'EACCES' || err.code === 'EPERM') throw new UserError(`cannot open ${t.path} for writing: ${err.code}; nothing was written`, 3, 'run as root (sudo aios flash …)');
    if (err.code === 'EROFS') throw new UserError(`${t.path} is read-only; nothing was written`, 2);
    throw e;
  }
}

/**
 * After the backup GPT moved to the end of the disk, the image's old backup (header in the image's
 * last sector, entries before it) is still there, mid-disk. Zero it when no partition covers it,
 * so that no tool ever mistakes it for the disk's backup table.
 */
async function wipeOldBackup(path: string, imageSize: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    const hdr = Buffer.alloc(512);
    await fh.read(hdr, 0, 512, imageSize - 512);
    if (hdr.toString('latin1', 0, 8) !== 'EFI PART') return;
    const entriesLba = Number(hdr.readBigUInt64LE(72));
    const from = Math.min(entriesLba * 512, imageSize - 512);
    if (from < imageSize - 1024 * 1024) return; // not where a standard backup table lives
    const { parts } = await partitions(path);
    if (parts.some((p) => p.start < imageSize && p.start + p.size > from)) return;
    await fh.write(Buffer.alloc(imageSize - from), 0, imageSize - from, from);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Partition number from sfdisk's node name (/dev/sdb2 → 2, disk.raw2 → 2). */
function partNumber(p: PartitionInfo): number {
  return Number(/(\d+)$/.exec(p.node)?.[1] ?? NaN);
}

async function partitions(path: string): Promise<{ parts: PartitionInfo[]; lastLba: number; sectorSize: number }> {
  const { stdout } = await run(['sfdisk', '--json', path]);
  const t = JSON.parse(stdout) as { partitiontable: { lastlba?: number; sectorsize?: number; partitions?: { node: string; start: number; size: number; type: string; name?: string }[] } };
  const ss = t.partitiontable.sectorsize ?? 512;
  const parts = (t.partitiontable.partitions ?? []).map((p) => ({ node: p.node, start: p.start * ss, size: p.size * ss, type: p.type, name: p.name }));
  return { parts, lastLba: t.partitiontable.lastlba ?? 0, sectorSize: ss };
}

/** Grows the last partition if it is the x86-64 root, and an ext2/3/4 filesystem on it (offline). */
async function growRoot(path: string, note: (s: string) => void): Promise<FlashResult['root']> {
  const { parts } = await partitions(path);
  const sorted = [...parts].sort((a, b) => a.start - b.start);
  const last = sorted[sorted.length - 1];
  if (!last || last.type.toUpperCase() !== GPT_TYPES.rootX86_64) {
    return { grown: false, note: 'not grown: the last partition is not an x86-64 root partition (type 4F68BCE3-…)' };
  }
  const n = partNumber(last);
  await run(['sfdisk', '--no-reread', '--no-tell-kernel', '--quiet', '-N', String(n), path], { input: ', +\n' });
  const after = (await partitions(path)).parts.find((p) => partNumber(p) === n)!;
  const res: FlashResult['root'] = { grown: after.size > last.size, partition: last.node, from: last.size, to: after.size, note: '' };
  if (!res.grown) {
    res.note = `root partition ${last.node} already fills the disk (${formatSize(last.size)})`;
    return res;
  }
  const probe = await run(['blkid', '-p', '-O', String(after.start), '-S', String(last.size), '-o', 'value', '-s', 'TYPE', path], { reject: false });
  const fs = probe.stdout.trim();
  res.filesystem = fs || undefined;
  if (!/^ext[234]$/.test(fs)) {
    res.filesystemGrown = false;
    res.note =
      `grew root partition ${last.node} from ${formatSize(last.size)} to ${formatSize(after.size)}; ` +
      (fs === 'xfs'
        ? `XFS grows only while mounted: run \`xfs_growfs /\` on the booted system`
        : `the ${fs || 'unrecognized'} filesystem on it was left at its size`);
    note(res.note);
    return res;
  }
  // ext4 grows offline: a loop device over exactly the partition's bytes, e2fsck -f, resize2fs.
  const { stdout: loop } = await run(['losetup', '--find', '--show', '--offset', String(after.start), '--sizelimit', String(after.size), path]);
  const dev = loop.trim();
  try {
    const fsck = await run(['e2fsck', '-f', '-p', dev], { reject: false });
    if (fsck.exitCode > 1) throw new UserError(`e2fsck found errors it could not fix on the root filesystem (exit ${fsck.exitCode}); the partition was grown, the filesystem was not:\n${fsck.all.trim()}`, 1);
    await run(['resize2fs', dev]);
  } finally {
    await run(['losetup', '-d', dev], { reject: false });
  }
  res.filesystemGrown = true;
  res.note = `grew root partition ${last.node} and its ${fs} filesystem from ${formatSize(last.size)} to ${formatSize(after.size)}`;
  note(res.note);
  return res;
}

/** Writes, verifies and fixes up. Throws UserError (nothing written) for every refusal. */
export async function flash(opts: FlashOptions): Promise<FlashResult> {
  const bs = opts.blockSize ?? BLOCK;
  const notes: string[] = [];
  const note = (s: string) => {
    notes.push(s);
    opts.onNote?.(s);
  };
  const image = await inspectImage(opts.image);
  const target = await inspectTarget(opts.target, { toFile: opts.toFile, image });
  if (target.exists && target.size < image.size && !target.problems.some((p) => /does not exist|not a block|not a regular|no medium/.test(p))) {
    target.problems.push(`${opts.target} is ${formatSize(target.size)} (${target.size} bytes), smaller than the image (${formatSize(image.size)}, ${image.size} bytes)`);
    target.hint ??= 'use a bigger disk, or a smaller image (image.size in the recipe)';
  }
  if (target.problems.length) {
    throw new UserError(`refusing to write ${opts.target}; nothing was written:\n${target.problems.map((p) => `  - ${p}`).join('\n')}`, 2, target.hint);
  }
  for (const tool of ['sfdisk', 'blockdev', 'dd']) {
    if (!(await which(tool))) throw new UserError(`${tool} is needed by aios flash but is not installed; nothing was written`, 3, 'apt-get install fdisk util-linux coreutils (or run scripts/setup.sh)');
  }
  if (!opts.yes) {
    if (!opts.confirm) throw new UserError(`not confirmed; nothing was written`, 2, 'pass --yes to write without typing the device name');
    if (!(await opts.confirm(image, target))) throw new UserError(`not confirmed (the name typed did not match ${opts.target}); nothing was written`, 1);
  }

  const { fh, zeroed } = await openTarget(target, image);
  const targetSize = target.exists ? target.size : image.size;
  const zero = Buffer.alloc(bs);
  const tick = progressTicker('write', image.size, opts.onProgress);
  let pos = 0;
  let written = 0;
  let skipped = 0;
  let gpt = false;
  const tw = performance.now();
  try {
    let sinceSync = 0;
    for await (const block of imageBlocks(image, bs)) {
      if (pos === 0) gpt = block.length >= 520 && block.toString('latin1', 512, 520) === 'EFI PART';
      if (zeroed && block.equals(zero.subarray(0, block.length))) {
        skipped += block.length;
      } else {
        await writeAll(fh, block, pos);
        written += block.length;
        sinceSync += block.length;
        if (sinceSync >= SYNC_EVERY) {
          await fh.datasync();
          sinceSync = 0;
        }
      }
      pos += block.length;
      tick(pos);
    }
    await fh.sync();
  } finally {
    await fh.close();
  }
  tick(pos, true);
  const writeSeconds = (performance.now() - tw) / 1000;
  if (skipped) note(`skipped ${formatSize(skipped)} of all-zero blocks (a new sparse file reads back zeros)`);
  else if (target.kind === 'block') note('wrote every block, zeros included (a disk is not known to read back zeros)');

  await dropCache(target.path, target.kind);
  const v = await compareImage(image, target.path, { blockSize: bs, onProgress: opts.onProgress });
  if (!v.ok) throw new UserError(describeMismatch(target.path, v), 1, 'the disk may be failing or counterfeit (smaller than it claims); try another one');

  let relocated = false;
  let root: FlashResult['root'] = { grown: false, note: '' };
  if (gpt && targetSize > image.size) {
    await run(['sfdisk', '--relocate', 'gpt-bak-std', target.path]);
    relocated = true;
    await wipeOldBackup(target.path, image.size);
    note(`moved the backup GPT header to the end of ${target.path} (${formatSize(targetSize)})`);
  }
  if (gpt && opts.growRoot) {
    root = await growRoot(target.path, note);
  } else if (gpt && targetSize > image.size) {
    const hasRoot = (await partitions(target.path)).parts.some((p) => p.type.toUpperCase() === GPT_TYPES.rootX86_64);
    root.note = hasRoot
      ? `root partition left at its size: ${formatSize(targetSize - image.size)} unallocated at the end (pass --grow-root to use it; the image does not grow itself at boot)`
      : `no x86-64 root partition in the image (a live ISO keeps its root in the squashfs): ${formatSize(targetSize - image.size)} left unallocated at the end`;
    note(root.note);
  } else if (!gpt) {
    root.note = 'no GPT in the image: partitions left as written';
    note(root.note);
  } else {
    root.note = 'the image fills the target: nothing to grow';
  }
  if (target.kind === 'block') {
    const fh2 = await open(target.path, 'r+');
    await fh2.sync().finally(() => fh2.close());
    // Tell the kernel about the new table; fails harmlessly on devices without partition scanning.
    await run(['blockdev', '--rereadpt', target.path], { reject: false });
  }
  return {
    image: { path: image.path, format: image.format, bytes: image.size },
    target: { path: target.path, kind: target.kind, bytes: targetSize, model: target.model },
    write: { bytes: pos, written, skippedZeroBytes: skipped, seconds: writeSeconds, bytesPerSecond: rate(pos, writeSeconds) },
    verify: { ...v, bytesPerSecond: rate(v.bytes, v.seconds) },
    gpt: { found: gpt, backupRelocated: relocated },
    root,
    notes,
  };
}

/** Does a typed confirmation name the target? The path as given, its resolved path, or the kernel name. */
export function confirmationMatches(answer: string, t: TargetInfo): boolean {
  const a = answer.trim();
  if (!a) return false;
  return a === t.path || a === t.resolved || (t.kind === 'block' && a === t.resolved.replace(/^\/dev\//, ''));
}
