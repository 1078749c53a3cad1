/**
 * The target side of `aios flash`: what the device is, and every reason not to write to it.
 *
 * Everything that stacks on the target is collected first (its partitions, their sysfs holders
 * such as dm/LVM/MD, loop devices whose backing file is the target or one of those, recursively),
 * and then each of them is checked against the mount table, the swap list, the root filesystem
 * and the filesystem that holds the image. All reasons are reported together; nothing is written
 * unless the list is empty.
 */
import { readFile, readdir, realpath, stat } from 'node:fs/promises';
import { existsSync, type Stats } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { run } from '../util/exec.js';
import { formatSize } from '../util/size.js';
import { GPT_TYPES } from '../util/gpt.js';
import type { ImageInfo } from './image.js';

export interface PartitionInfo {
  node: string;
  start: number;
  size: number;
  type: string;
  name?: string;
}

export interface TargetInfo {
  /** As given. */
  path: string;
  /** Symlinks resolved (/dev/disk/by-id/… → /dev/sdb). */
  resolved: string;
  kind: 'block' | 'file';
  /** Bytes. For a --to-file target that does not exist yet: 0 (created at the image's size). */
  size: number;
  exists: boolean;
  model: string;
  /** Partitions in the on-disk table (sfdisk), whether or not the kernel knows them. */
  partitions: PartitionInfo[];
  /** major:minor of a block device. */
  devno?: string;
  /** Reasons not to write, each a full sentence. Empty = safe. */
  problems: string[];
  /** Advice for the first problem. */
  hint?: string;
  /** The target reads back zeros where nothing was written (a file aios just created). */
  zeroed: boolean;
}

const devno = (rdev: number) => `${Math.floor(rdev / 256) & 0xfff | (Math.floor(rdev / 2 ** 32) & ~0xfff)}:${(rdev & 0xff) | (Math.floor(rdev / 4096) & ~0xff)}`;

async function readText(p: string): Promise<string | undefined> {
  try {
    return (await readFile(p, 'utf8')).trim();
  } catch {
    return undefined;
  }
}

/** /sys/class/block/<name> for a major:minor. */
async function sysfsOf(majmin: string): Promise<string | undefined> {
  const p = `/sys/dev/block/${majmin}`;
  return existsSync(p) ? realpath(p) : undefined;
}

async function nodeName(sys: string): Promise<string> {
  const uevent = (await readText(join(sys, 'uevent'))) ?? '';
  const m = /^DEVNAME=(.*)$/m.exec(uevent);
  return `/dev/${m ? m[1] : basename(sys)}`;
}

interface Mount {
  majmin: string;
  mountPoint: string;
  fstype: string;
  source: string;
}

const unescape = (s: string) => s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));

async function mounts(): Promise<Mount[]> {
  const text = (await readText('/proc/self/mountinfo')) ?? '';
  const out: Mount[] = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const f = left.split(' ');
    const r = right.split(' ');
    out.push({ majmin: f[2] ?? '', mountPoint: unescape(f[4] ?? ''), fstype: r[0] ?? '', source: unescape(r[1] ?? '') });
  }
  return out;
}

/** A device that stacks on the target, with how it got there. */
interface Dependent {
  majmin: string;
  node: string;
  via: string;
}

/** The loop devices now attached, with what backs them. */
async function loopDevices(): Promise<{ node: string; majmin: string; backing: string; backingStat?: Stats; offset: number; sizelimit: number }[]> {
  const out = [];
  let names: string[] = [];
  try {
    names = (await readdir('/sys/block')).filter((n) => n.startsWith('loop'));
  } catch {
    return [];
  }
  for (const n of names) {
    const backing = await readText(`/sys/block/${n}/loop/backing_file`);
    if (!backing) continue;
    const majmin = (await readText(`/sys/block/${n}/dev`)) ?? '';
    const clean = backing.replace(/ \(deleted\)$/, '');
    const backingStat = await stat(clean).catch(() => undefined);
    out.push({
      node: `/dev/${n}`,
      majmin,
      backing,
      backingStat,
      offset: Number((await readText(`/sys/block/${n}/loop/offset`)) ?? 0),
      sizelimit: Number((await readText(`/sys/block/${n}/loop/sizelimit`)) ?? 0),
    });
  }
  return out;
}

/** The whole-disk sysfs dir of a partition's sysfs dir, or undefined for a whole disk. */
async function parentDisk(sys: string): Promise<string | undefined> {
  return existsSync(join(sys, 'partition')) ? dirname(sys) : undefined;
}

/** The partition table on the target (sfdisk reads it from the bytes, so it works on files too). */
async function partitionTable(path: string): Promise<PartitionInfo[]> {
  const r = await run(['sfdisk', '--json', path], { reject: false }).catch(() => undefined);
  if (!r || r.exitCode !== 0 || !r.stdout.trim()) return [];
  try {
    const t = JSON.parse(r.stdout) as { partitiontable: { sectorsize?: number; partitions?: { node: string; start: number; size: number; type: string; name?: string }[] } };
    const ss = t.partitiontable.sectorsize ?? 512;
    return (t.partitiontable.partitions ?? []).map((p) => ({ node: p.node, start: p.start * ss, size: p.size * ss, type: p.type, name: p.name }));
  } catch {
    return [];
  }
}

export interface InspectOptions {
  toFile?: boolean;
  image?: ImageInfo;
}

/**
 * Looks at a target and lists every reason it must not be written. Reads only; opens nothing
 * for writing.
 */
export async function inspectTarget(path: string, opts: InspectOptions = {}): Promise<TargetInfo> {
  const info: TargetInfo = { path, resolved: path, kind: opts.toFile ? 'file' : 'block', size: 0, exists: false, model: '', partitions: [], problems: [], zeroed: false };
  const refuse = (problem: string, hint?: string) => {
    info.problems.push(problem);
    if (hint && !info.hint) info.hint = hint;
  };
  const st = await stat(path).catch((e: NodeJS.ErrnoException) => e);
  if (st instanceof Error) {
    if (st.code === 'ENOENT' && opts.toFile) {
      if (!existsSync(dirname(path))) refuse(`${path}: its directory ${dirname(path)} does not exist`);
      info.model = 'new file';
      return info;
    }
    if (st.code === 'ENOENT') {
      refuse(`${path} does not exist`, 'list the disks with `lsblk -d -o NAME,SIZE,MODEL,TRAN` and pass the whole disk, e.g. /dev/sdb');
    } else {
      refuse(`cannot look at ${path}: ${st.message}`);
    }
    return info;
  }
  info.exists = true;
  info.resolved = await realpath(path).catch(() => path);
  const image = opts.image;

  if (opts.toFile) {
    if (st.isBlockDevice()) {
      refuse(`${path} is a block device; --to-file writes regular files only`, 'drop --to-file to write a disk');
      return info;
    }
    if (!st.isFile()) {
      refuse(`${path} is not a regular file`);
      return info;
    }
    info.size = st.size;
    info.model = 'regular file';
    info.partitions = await partitionTable(path);
    if (image && st.dev === image.dev && st.ino === image.ino) refuse(`${path} is the image file itself`, 'write to another file');
    // A loop device over this file would see the new bytes under its feet.
    for (const l of await loopDevices()) {
      if (l.backingStat && l.backingStat.isFile() && l.backingStat.dev === st.dev && l.backingStat.ino === st.ino) {
        refuse(`${path} is attached as loop device ${l.node}`, `detach it first: losetup -d ${l.node}`);
      }
    }
    return info;
  }

  if (st.isFile()) {
    refuse(`${path} is a regular file, not a block device`, 'pass a whole disk such as /dev/sdb, or add --to-file to write a file (for testing)');
    return info;
  }
  if (!st.isBlockDevice()) {
    refuse(`${path} is not a block device`, 'pass a whole disk such as /dev/sdb (see `lsblk -d`)');
    return info;
  }
  const majmin = devno(st.rdev);
  info.devno = majmin;
  const sys = await sysfsOf(majmin);
  if (!sys) {
    refuse(`${path} (device ${majmin}) is not known to the kernel (no /sys/dev/block/${majmin})`);
    return info;
  }
  const disk = await parentDisk(sys);
  if (disk) {
    const n = await readText(join(sys, 'partition'));
    const whole = await nodeName(disk);
    refuse(`${path} is partition ${n} of ${whole}, not a whole disk`, `flash the whole disk: aios flash <image> ${whole}`);
  } else if (/^(?:(?:sd|vd|hd|xvd)[a-z]+\d+|(?:nvme\d+n\d+|mmcblk\d+|loop\d+|nbd\d+|md\d+)p\d+)$/.test(basename(info.resolved))) {
    // A node named like a partition that the kernel calls a whole disk: someone made it by hand.
    refuse(`${path} is named like a partition (${basename(info.resolved)}) although the kernel says ${await nodeName(sys)} is a whole disk`, 'pass the disk by its kernel name (see `lsblk -d`)');
  }
  info.size = Number((await readText(join(sys, 'size'))) ?? 0) * 512;
  const vendor = (await readText(join(sys, 'device/vendor'))) ?? '';
  const model = (await readText(join(sys, 'device/model'))) ?? '';
  const loopBacking = await readText(join(sys, 'loop/backing_file'));
  info.model = [vendor, model].filter(Boolean).join(' ') || (loopBacking ? `loop device on ${loopBacking}` : basename(sys));
  info.partitions = await partitionTable(path);
  if ((await readText(join(sys, 'ro'))) === '1') refuse(`${path} is read-only`, 'check the write-protect switch of the card or stick');
  if (info.size === 0) refuse(`${path} has no medium (size 0)`, 'insert the card or stick, or attach the loop device to a file');

  // Everything stacked on the target.
  const deps: Dependent[] = [{ majmin, node: path, via: 'the disk itself' }];
  const seen = new Set([majmin]);
  const add = (d: Dependent) => {
    if (seen.has(d.majmin)) return;
    seen.add(d.majmin);
    deps.push(d);
  };
  const loops = await loopDevices();
  for (let i = 0; i < deps.length; i++) {
    const d = deps[i]!;
    const dsys = await sysfsOf(d.majmin);
    if (!dsys) continue;
    if (i === 0) {
      for (const e of await readdir(dsys)) {
        const p = join(dsys, e);
        if (existsSync(join(p, 'partition'))) {
          const mm = await readText(join(p, 'dev'));
          if (mm) add({ majmin: mm, node: await nodeName(p), via: `partition ${await readText(join(p, 'partition'))}` });
        }
      }
    }
    for (const h of await readdir(join(dsys, 'holders')).catch(() => [] as string[])) {
      const hsys = await realpath(join(dsys, 'holders', h));
      const mm = await readText(join(hsys, 'dev'));
      const dmName = await readText(join(hsys, 'dm/name'));
      const what = dmName ? `device-mapper device ${dmName} (LVM, crypt or similar)` : h.startsWith('md') ? `RAID device ${h}` : h;
      if (mm) add({ majmin: mm, node: await nodeName(hsys), via: `held by ${what}` });
      refuse(`${d.node} is in use: held by ${what} (/sys/class/block/${h})`, `stop it first (e.g. vgchange -an, cryptsetup close, mdadm --stop)`);
    }
    for (const l of loops) {
      if (l.backingStat?.isBlockDevice() && devno(l.backingStat.rdev) === d.majmin) {
        const range = l.offset || l.sizelimit ? ` (bytes ${l.offset}–${l.sizelimit ? l.offset + l.sizelimit : 'end'})` : '';
        add({ majmin: l.majmin, node: l.node, via: `loop device on ${d.node}${range}` });
      }
    }
  }
  const depOf = new Map(deps.map((d) => [d.majmin, d]));
  const describe = (d: Dependent) => (d.majmin === majmin ? path : `${d.node} (${d.via})`);

  const mtab = await mounts();
  for (const m of mtab) {
    let d = depOf.get(m.majmin);
    if (!d && m.source.startsWith('/')) {
      const s = await stat(m.source).catch(() => undefined);
      if (s?.isBlockDevice()) d = depOf.get(devno(s.rdev));
    }
    if (!d) continue;
    if (m.mountPoint === '/') refuse(`${describe(d)} holds the root filesystem /: this is the running system's disk`, 'pick another disk (see `lsblk -d`)');
    else refuse(`${describe(d)} is mounted at ${m.mountPoint} (${m.fstype})`, `unmount it first: umount ${m.mountPoint}`);
  }
  const swaps = ((await readText('/proc/swaps')) ?? '').split('\n').slice(1);
  for (const line of swaps) {
    const file = unescape(line.split(/\s+/)[0] ?? '');
    if (!file) continue;
    const s = await stat(file).catch(() => undefined);
    if (!s) continue;
    const d = s.isBlockDevice() ? depOf.get(devno(s.rdev)) : depOf.get(devno(s.dev));
    if (d) refuse(`${describe(d)} is in use as swap (${file})`, `swapoff ${file}`);
  }
  if (image) {
    const d = depOf.get(devno(image.dev));
    if (d) refuse(`the image ${image.path} is on ${describe(d)}: writing would overwrite the image while reading it`, 'copy the image to another disk first');
  }
  for (const d of deps.slice(1)) {
    if (d.via.startsWith('loop device') && !info.problems.some((p) => p.startsWith(`${d.node} `))) {
      refuse(`${d.node} is a loop device on ${path}${d.via.replace(/^loop device on \S+/, '')}: writing would change what it shows`, `detach it first: losetup -d ${d.node}`);
    }
  }
  return info;
}

/** Names for the partition types one meets on install media and Linux disks (sfdisk --json gives GUIDs). */
const TYPE_NAMES: Record<string, string> = {
  [GPT_TYPES.esp]: 'EFI System',
  [GPT_TYPES.rootX86_64]: 'Linux root (x86-64)',
  'B921B045-1DF0-41C3-AF44-4C6F280D3FAE': 'Linux root (ARM-64)',
  '0FC63DAF-8483-4772-8E79-3D69D8477DE4': 'Linux filesystem',
  '0657FD6D-A4AB-43C4-84E5-0933C84B4F4F': 'Linux swap',
  'E6D6D379-F507-44C2-A23C-238F2A3DF928': 'Linux LVM',
  'BC13C2FF-59E6-4262-A352-B275FD6F7172': 'Linux extended boot',
  '933AC7E1-2EB4-4F13-B844-0E14E2AEF915': 'Linux home',
  'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7': 'Microsoft basic data',
  'E3C9E316-0B5C-4DB8-817D-F92DF00215AE': 'Microsoft reserved',
  '21686148-6449-6E6F-744E-656564454649': 'BIOS boot',
  '48465300-0000-11AA-AA11-00306543ECAC': 'Apple HFS/HFS+',
  '7C3457EF-0000-11AA-AA11-00306543ECAC': 'Apple APFS',
  c: 'W95 FAT32 (LBA)',
  b: 'W95 FAT32',
  ef: 'EFI (FAT)',
  '83': 'Linux',
  '82': 'Linux swap',
  '7': 'HPFS/NTFS/exFAT',
};
export const typeName = (t: string) => TYPE_NAMES[t.toUpperCase()] ?? TYPE_NAMES[t.toLowerCase()] ?? t;

/** One line per fact, for the confirmation prompt and `--json`. */
export function describeTarget(t: TargetInfo): string {
  const lines = [`${t.path}${t.resolved !== t.path ? ` (${t.resolved})` : ''}: ${t.model}, ${formatSize(t.size)} (${t.size} bytes)`];
  if (!t.partitions.length) lines.push('  no partition table found');
  for (const p of t.partitions) lines.push(`  ${p.node}  ${formatSize(p.size).padStart(10)}  ${typeName(p.type)}${p.name ? `  "${p.name}"` : ''}`);
  return lines.join('\n');
}

export { devno as devnoOf };
