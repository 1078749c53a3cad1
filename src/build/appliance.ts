/**
 * The appliance layout's disk (image.layout = "appliance", docs/appliance.md): ESP, root slot A (a
 * read-only erofs or squashfs of the overlay's tree) with its dm-verity hash partition, an empty
 * slot B with an empty verity partition, and free space that systemd-repart turns into /var on the
 * machine's first boot. Written without mounts, as the plain layout is (src/build/image.ts): the
 * read-only filesystem from the tree (mkfs.erofs / mksquashfs), the hash tree from that image file
 * (veritysetup format, offline), sfdisk, dd.
 *
 * Partition UUIDs of slot A follow the Discoverable Partitions Specification's rule for verity: the
 * data partition's UUID is the first 128 bits of the root hash, the hash partition's the last 128,
 * so that systemd (gpt-auto, sysupdate) can pair them by the root hash alone.
 */
import { chmod, mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createHash } from 'node:crypto';
import type { BuildContext } from './stages/index.js';
import { sourceDateEpoch } from './context.js';
import type { KernelFiles } from '../distros/types.js';
import type { RenderedFile } from './render.js';
import { run } from '../util/exec.js';
import { alignUp, formatSize, parseSize } from '../util/size.js';
import { UserError } from '../util/errors.js';
import { derivedUuid } from '../util/hash.js';
import { GPT_TYPES } from '../util/gpt.js';
import { MIN_VAR, veritySlotBytes } from '../config/appliance.js';
import { espKernelPaths } from '../config/update.js';
import { fatImage, stageEsp } from './image.js';

const MiB = 1024 * 1024;
const SECTOR = 512;

interface Extent {
  start: number;
  size: number;
}

export interface ApplianceLayout {
  diskBytes: number;
  esp: Extent;
  rootA: Extent;
  verityA: Extent;
  rootB: Extent;
  verityB: Extent;
  /** Unpartitioned space after the slots: systemd-repart's /var on first boot (grows to fill a larger disk). */
  free: Extent;
}

/**
 * Partition offsets and sizes (bytes, 1 MiB aligned). slotSize "auto": the read-only root plus a
 * quarter; imageSize "auto": the slots plus varBytes of free space for the first /var.
 */
export function planApplianceLayout(o: { imageSize: 'auto' | string; espSize: string; slotSize: 'auto' | string; readonlyBytes: number; varBytes: string }): ApplianceLayout {
  const esp = alignUp(parseSize(o.espSize), MiB);
  const slot = o.slotSize === 'auto' ? alignUp(Math.ceil(o.readonlyBytes * 1.25), MiB) : alignUp(parseSize(o.slotSize), MiB);
  if (slot < o.readonlyBytes) {
    throw new UserError(`image.slot_size = ${o.slotSize} is too small: this build's read-only root (image.readonly_fs) is ${formatSize(o.readonlyBytes)}. Raise image.slot_size or set it to "auto"`, 2);
  }
  const verity = veritySlotBytes(slot);
  const slots = 2 * (slot + verity);
  let total: number;
  if (o.imageSize === 'auto') {
    total = MiB + esp + slots + Math.max(alignUp(parseSize(o.varBytes), MiB), MIN_VAR) + MiB;
  } else {
    total = alignUp(parseSize(o.imageSize), MiB);
    if (total - 2 * MiB - esp - slots < MIN_VAR) {
      throw new UserError(
        `image.size = ${o.imageSize} is too small for image.layout = "appliance": the ESP (image.esp_size = ${o.espSize}), two root slots of ${formatSize(slot)} ` +
          `(image.slot_size = ${o.slotSize}; the read-only root is ${formatSize(o.readonlyBytes)}) with their verity partitions (${formatSize(verity)} each) and ${formatSize(MIN_VAR)} for /var ` +
          `need ${formatSize(2 * MiB + esp + slots + MIN_VAR)}. Raise image.size, lower image.slot_size, or set image.size = "auto"`,
        2,
      );
    }
  }
  let at = MiB;
  const next = (size: number): Extent => {
    const e = { start: at, size };
    at += size;
    return e;
  };
  const l = { esp: next(esp), rootA: next(slot), verityA: next(verity), rootB: next(slot), verityB: next(verity) };
  return { diskBytes: total, ...l, free: { start: at, size: total - MiB - at } };
}

/** The UUID systemd pairs with a root hash: the first 128 bits for the data partition, the last 128 for the hash partition (DPS). */
export function verityPartUuids(rootHash: string): { data: string; hash: string } {
  if (!/^[0-9a-f]{64}$/.test(rootHash)) throw new Error(`not a sha256 root hash: "${rootHash}"`);
  const u = (x: string) => `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
  return { data: u(rootHash.slice(0, 32)), hash: u(rootHash.slice(32)) };
}

/**
 * The disk's boot entry: loader/entries/aios_<version>+3.conf, systemd-boot's boot counting (3
 * tries; systemd-bless-boot drops the counter once boot-complete.target is reached, which needs
 * aios-ready.service). The entries systemd-sysupdate installs get the same (90-aios-entry.transfer).
 */
export const BOOT_TRIES = 3;
export function diskEntryPath(version: string): string {
  return `loader/entries/aios_${version}+${BOOT_TRIES}.conf`;
}

/** GPT partition labels: the slot's version in the label (sysupdate's aios_@v), "_empty" for an unused slot. */
export function slotLabels(version: string): { root: string; verity: string } {
  return { root: `aios_${version}`, verity: `aios_${version}_verity` };
}

export function applianceSfdiskScript(l: ApplianceLayout, a: { diskUuid: string; espPartUuid: string; version: string; rootHash: string; emptyUuids: { root: string; verity: string } }): string {
  const s = (b: number) => b / SECTOR;
  const v = verityPartUuids(a.rootHash);
  const lab = slotLabels(a.version);
  const part = (e: Extent, type: string, uuid: string, name: string) => `start=${s(e.start)}, size=${s(e.size)}, type=${type}, uuid=${uuid}, name="${name}"`;
  return [
    'label: gpt',
    `label-id: ${a.diskUuid}`,
    'unit: sectors',
    'first-lba: 2048',
    part(l.esp, GPT_TYPES.esp, a.espPartUuid, 'esp'),
    part(l.rootA, GPT_TYPES.rootX86_64, v.data, lab.root),
    part(l.verityA, GPT_TYPES.rootX86_64Verity, v.hash, lab.verity),
    part(l.rootB, GPT_TYPES.rootX86_64, a.emptyUuids.root, '_empty'),
    part(l.verityB, GPT_TYPES.rootX86_64Verity, a.emptyUuids.verity, '_empty'),
    '',
  ].join('\n');
}

/**
 * The boot entry's command line for a slot: the initrd's systemd-veritysetup-generator opens
 * /dev/mapper/root from roothash= and the two partitions (by PARTUUID, which the root hash
 * determines), and the root is mounted read-only from it. `plain` is the plain layout's command line
 * (src/build/context.ts: root=, rootfstype=, rw, then the shared tail), whose tail is kept.
 */
export function applianceCmdline(plain: string, a: { rootHash: string; fs: 'erofs' | 'squashfs' }): string {
  const words = plain.split(' ');
  if (!words[0]?.startsWith('root=') || !words[1]?.startsWith('rootfstype=') || words[2] !== 'rw') throw new Error(`unexpected kernel command line (root=, rootfstype=, rw first): ${plain}`);
  const v = verityPartUuids(a.rootHash);
  return [
    'root=/dev/mapper/root',
    `rootfstype=${a.fs}`,
    'ro',
    `roothash=${a.rootHash}`,
    `systemd.verity_root_data=PARTUUID=${v.data}`,
    `systemd.verity_root_hash=PARTUUID=${v.hash}`,
    ...words.slice(3),
  ].join(' ');
}

/** The argv that makes the read-only root image from a tree (uncompressed erofs, or zstd squashfs; timestamps fixed with SOURCE_DATE_EPOCH). */
export function readonlyFsArgv(fs: 'erofs' | 'squashfs', a: { root: string; img: string; uuid: string; epoch?: number }): string[] {
  if (fs === 'erofs') {
    // --preserve-mtime: every inode keeps its own mtime (else compact inodes take the build time),
    // so /etc/.updated still matches /usr and ConditionNeedsUpdate= finds nothing to do on a root
    // that cannot be written.
    return ['mkfs.erofs', '--quiet', `-U${a.uuid}`, '--preserve-mtime', ...(a.epoch !== undefined ? [`-T${a.epoch}`] : []), a.img, a.root];
  }
  return ['mksquashfs', a.root, a.img, '-noappend', '-comp', 'zstd', '-no-progress', '-quiet', ...(a.epoch !== undefined ? ['-mkfs-time', String(a.epoch), '-all-time', String(a.epoch)] : [])];
}

/**
 * veritysetup format of an image file (offline, no device mapper): the hash tree into hashImg, the
 * root hash returned. Salt and superblock UUID derive from the image's seed, so the same tree gives
 * the same root hash.
 */
export async function formatVerity(ctx: Pick<BuildContext, 'log'>, a: { dataImg: string; hashImg: string; seed: string }): Promise<string> {
  const salt = createHash('sha256').update(`${a.seed}\0verity-salt`).digest('hex');
  const hashFile = `${a.hashImg}.roothash`;
  await run(
    ['veritysetup', 'format', '--data-block-size=4096', '--hash-block-size=4096', '--hash=sha256', `--salt=${salt}`, `--uuid=${derivedUuid(a.seed, 'verity-superblock')}`, `--root-hash-file=${hashFile}`, a.dataImg, a.hashImg],
    { log: ctx.log },
  );
  const rootHash = (await readFile(hashFile, 'utf8')).trim();
  await rm(hashFile, { force: true });
  if (!/^[0-9a-f]{64}$/.test(rootHash)) throw new Error(`veritysetup format wrote no sha256 root hash: "${rootHash}"`);
  return rootHash;
}

export interface ApplianceResult {
  layout: ApplianceLayout;
  rootHash: string;
  version: string;
  readonlyBytes: number;
}

/** The version in labels and entry names: image.version, else SOURCE_DATE_EPOCH, else 1. */
export function applianceVersion(r: { image: { version?: string } }): string {
  return r.image.version ?? (sourceDateEpoch() !== undefined ? String(sourceDateEpoch()) : '1');
}

/**
 * The whole disk. espFiles(rootHash) renders the ESP's files once the root hash is known (the boot
 * entry's command line carries it).
 */
export async function assembleApplianceDisk(
  ctx: BuildContext,
  a: { root: string; kernel: KernelFiles; espFiles: (rootHash: string, version: string) => Promise<RenderedFile[]>; out: string; layoutOut: string },
): Promise<ApplianceResult> {
  const r = ctx.recipe;
  const fs = r.image.readonly_fs;
  const version = applianceVersion(r);
  const work = join(a.out, '..', 'work');
  await mkdir(work, { recursive: true });

  ctx.progress(`making the read-only ${fs} root`);
  const rootImg = join(work, 'root.img');
  await run(readonlyFsArgv(fs, { root: a.root, img: rootImg, uuid: ctx.id.rootFsUuid, epoch: sourceDateEpoch() }), { log: ctx.log });
  const readonlyBytes = (await stat(rootImg)).size;
  if (readonlyBytes % 4096) throw new Error(`${fs} image is ${readonlyBytes} bytes, not a multiple of 4096: dm-verity's data blocks would not cover it`);

  const layout = planApplianceLayout({ imageSize: r.image.size, espSize: r.image.esp_size, slotSize: r.image.slot_size, readonlyBytes, varBytes: r.image.root_headroom });

  ctx.progress('computing the dm-verity hash tree');
  const verityImg = join(work, 'verity.img');
  await run(['truncate', '-s', String(layout.verityA.size), verityImg]);
  const rootHash = await formatVerity(ctx, { dataImg: rootImg, hashImg: verityImg, seed: ctx.id.seed });

  ctx.progress('staging the ESP');
  const esp = join(work, 'esp');
  const espFiles = await a.espFiles(rootHash, version);
  // The version's boot entry (also an update artifact: src/build/update.ts reads it from layout.json).
  const entry = espFiles.find((f) => f.path.startsWith('loader/entries/'));
  if (!entry) throw new Error('the ESP templates rendered no boot entry');
  // Kernel and initrd named with the image version, where the update transfers put the next ones.
  await stageEsp(ctx, { root: a.root, kernel: a.kernel, initrd: a.kernel.initrd, espFiles, dir: esp, paths: espKernelPaths(version) });
  const espImg = join(work, 'esp.img');
  await fatImage(ctx, { dir: esp, img: espImg, bytes: layout.esp.size, label: 'ESP', volumeId: ctx.id.espVolumeId, fat32: true });

  ctx.progress(`writing the GPT disk (${formatSize(layout.diskBytes)}: slots of ${formatSize(layout.rootA.size)}, ${formatSize(layout.free.size)} for /var)`);
  await run(['truncate', '-s', String(layout.diskBytes), a.out]);
  const script = applianceSfdiskScript(layout, {
    diskUuid: ctx.id.diskUuid,
    espPartUuid: ctx.id.espPartUuid,
    version,
    rootHash,
    emptyUuids: { root: derivedUuid(ctx.id.seed, 'root-b-partition'), verity: derivedUuid(ctx.id.seed, 'verity-b-partition') },
  });
  await run(['sfdisk', '--quiet', '--no-reread', '--no-tell-kernel', a.out], { input: script, log: ctx.log });
  for (const [img, part] of [
    [espImg, layout.esp],
    [rootImg, layout.rootA],
    [verityImg, layout.verityA],
  ] as const) {
    await run(['dd', `if=${img}`, `of=${a.out}`, 'bs=1M', `seek=${part.start / MiB}`, 'conv=notrunc,sparse', 'status=none'], { log: ctx.log });
  }
  const { stdout: json } = await run(['sfdisk', '-J', a.out]);
  await writeFile(a.layoutOut, JSON.stringify({ layout, appliance: { version, rootHash, readonlyFs: fs, readonlyBytes, entryPath: entry.path, entry: entry.content }, sfdisk: JSON.parse(json) }, null, 2));
  await chmod(a.out, 0o644);
  await rm(work, { recursive: true, force: true });
  return { layout, rootHash, version, readonlyBytes };
}
