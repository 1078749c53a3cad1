/**
 * GPT disk assembly without mounts or loop devices: sfdisk on the image file, mkfs.vfat + mtools
 * for the ESP, mkfs.ext4 -d (or mkfs.xfs -p) for the root, dd conv=notrunc,sparse into place.
 */
import { copyFile, mkdir, rm, writeFile, chmod } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import type { BuildContext } from './stages/index.js';
import { sourceDateEpoch } from './context.js';
import type { KernelFiles } from '../distros/types.js';
import { writeRendered, type RenderedFile } from './render.js';
import { run, which } from '../util/exec.js';
import { alignUp, formatSize, parseSize } from '../util/size.js';
import { UserError } from '../util/errors.js';
import { xfsProtofile } from './xfs.js';
import { GPT_TYPES } from '../util/gpt.js';

const MiB = 1024 * 1024;
const SECTOR = 512;

export interface Layout {
  diskBytes: number;
  esp: { start: number; size: number };
  root: { start: number; size: number };
}

/** Works out partition offsets and sizes (bytes, 1 MiB aligned). */
export function planLayout(opts: { imageSize: 'auto' | string; espSize: string; rootContentBytes: number; headroom: string }): Layout {
  const esp = alignUp(parseSize(opts.espSize), MiB);
  const needRoot = alignUp(Math.ceil(opts.rootContentBytes * 1.1) + 64 * MiB, MiB);
  let root: number;
  if (opts.imageSize === 'auto') {
    root = alignUp(needRoot + parseSize(opts.headroom), MiB);
  } else {
    const total = alignUp(parseSize(opts.imageSize), MiB);
    root = total - 2 * MiB - esp;
    if (root < needRoot) {
      throw new UserError(
        `image.size = ${opts.imageSize} is too small: the root filesystem needs at least ${formatSize(needRoot)} and the ESP ${formatSize(esp)}, ` +
          `so the disk needs ${formatSize(needRoot + esp + 2 * MiB)}. Raise image.size or set it to "auto".`,
        2,
      );
    }
  }
  return { diskBytes: MiB + esp + root + MiB, esp: { start: MiB, size: esp }, root: { start: MiB + esp, size: root } };
}

/** The sfdisk script for the layout. */
export function sfdiskScript(l: Layout, ids: { diskUuid: string; espPartUuid: string; rootPartUuid: string }): string {
  const s = (b: number) => b / SECTOR;
  return [
    'label: gpt',
    `label-id: ${ids.diskUuid}`,
    'unit: sectors',
    'first-lba: 2048',
    `start=${s(l.esp.start)}, size=${s(l.esp.size)}, type=${GPT_TYPES.esp}, uuid=${ids.espPartUuid}, name="esp"`,
    `start=${s(l.root.start)}, size=${s(l.root.size)}, type=${GPT_TYPES.rootX86_64}, uuid=${ids.rootPartUuid}, name="root-x86-64"`,
    '',
  ].join('\n');
}

export async function rootContentBytes(root: string): Promise<number> {
  const { stdout } = await run(['du', '-s', '-B1', '-x', root]);
  return Number(stdout.split(/\s/)[0]);
}

export async function assembleDisk(
  ctx: BuildContext,
  a: { root: string; kernel: KernelFiles; espFiles: RenderedFile[]; out: string; layoutOut: string },
): Promise<void> {
  const r = ctx.recipe;
  const work = join(a.out, '..', 'work');
  await mkdir(work, { recursive: true });
  const env = {
    ...process.env,
    MTOOLS_SKIP_CHECK: '1',
    ...(sourceDateEpoch() !== undefined ? { E2FSPROGS_FAKE_TIME: String(sourceDateEpoch()) } : {}),
  } as Record<string, string>;

  // 1. ESP contents: systemd-boot (as the removable-media default loader too), kernel, initrd, entries.
  ctx.progress('staging the ESP');
  const esp = join(work, 'esp');
  await stageEsp(ctx, { root: a.root, kernel: a.kernel, initrd: a.kernel.initrd, espFiles: a.espFiles, dir: esp });

  const layout = planLayout({
    imageSize: r.image.size,
    espSize: r.image.esp_size,
    rootContentBytes: await rootContentBytes(a.root),
    headroom: r.image.root_headroom,
  });

  // 2. ESP filesystem.
  ctx.progress(`formatting the ESP (${formatSize(layout.esp.size)})`);
  const espImg = join(work, 'esp.img');
  await fatImage(ctx, { dir: esp, img: espImg, bytes: layout.esp.size, label: 'ESP', volumeId: ctx.id.espVolumeId, fat32: true });

  // 3. Root filesystem, populated from the tree without mounting.
  ctx.progress(`making the ${r.filesystem.root} root filesystem (${formatSize(layout.root.size)})`);
  const rootImg = join(work, 'root.img');
  await run(['truncate', '-s', String(layout.root.size), rootImg]);
  if (r.filesystem.root === 'ext4') {
    await run(
      ['mkfs.ext4', '-q', '-F', '-L', 'root', '-U', ctx.id.rootFsUuid, '-E', `hash_seed=${ctx.id.rootFsUuid},root_owner=0:0`, '-d', a.root, rootImg],
      { log: ctx.log, env },
    );
    const sde = sourceDateEpoch();
    if (sde !== undefined) await fixExt4Times(ctx, a.root, rootImg, sde, env);
  } else {
    const proto = join(work, 'root.proto');
    const { proto: text, stickyDropped } = await xfsProtofile(a.root);
    await writeFile(proto, text);
    if (stickyDropped.some((p) => !['/tmp', '/var/tmp', '/run/lock'].includes(p))) {
      ctx.warnings.push(`xfs root: the sticky bit cannot be stored by mkfs.xfs -p on: ${stickyDropped.join(', ')}`);
    }
    await run(['mkfs.xfs', '-q', '-f', '-L', 'root', '-m', `uuid=${ctx.id.rootFsUuid}`, '-p', proto, rootImg], { log: ctx.log, env });
  }

  // 4. The disk: GPT, then both filesystems copied into place (sparse).
  ctx.progress(`writing the GPT disk (${formatSize(layout.diskBytes)})`);
  const disk = a.out;
  await run(['truncate', '-s', String(layout.diskBytes), disk]);
  await run(['sfdisk', '--quiet', '--no-reread', '--no-tell-kernel', disk], { input: sfdiskScript(layout, ctx.id), log: ctx.log });
  for (const [img, part] of [
    [espImg, layout.esp],
    [rootImg, layout.root],
  ] as const) {
    await run(['dd', `if=${img}`, `of=${disk}`, 'bs=1M', `seek=${part.start / MiB}`, 'conv=notrunc,sparse', 'status=none'], { log: ctx.log });
  }
  const { stdout: json } = await run(['sfdisk', '-J', disk]);
  await writeFile(a.layoutOut, JSON.stringify({ layout, sfdisk: JSON.parse(json) }, null, 2));
  await chmod(disk, 0o644);
  await rm(work, { recursive: true, force: true });
}

/** The files of an ESP in a staging dir: systemd-boot (also as the removable-media loader), kernel, initrd, rendered entries. */
export async function stageEsp(
  ctx: BuildContext,
  a: { root: string; kernel: KernelFiles; initrd: string; espFiles: RenderedFile[]; dir: string; paths?: { kernel: string; initrd: string } },
): Promise<void> {
  const sdboot = join(a.root, ctx.distro.systemdBootEfi);
  // Where the entry looks for them: aios/<kernel version>/, or (appliance layout) aios/aios_<image version>.linux|.initrd.
  const to = a.paths ?? { kernel: `aios/${a.kernel.version}/linux`, initrd: `aios/${a.kernel.version}/initrd` };
  for (const d of ['EFI/BOOT', 'EFI/systemd', dirname(to.kernel), dirname(to.initrd)]) await mkdir(join(a.dir, d), { recursive: true });
  await copyFile(sdboot, join(a.dir, 'EFI/BOOT/BOOTX64.EFI'));
  await copyFile(sdboot, join(a.dir, 'EFI/systemd/systemd-bootx64.efi'));
  await copyFile(join(a.root, a.kernel.kernel), join(a.dir, to.kernel));
  await copyFile(join(a.root, a.initrd), join(a.dir, to.initrd));
  await writeRendered(a.espFiles, a.dir);
  const sde = sourceDateEpoch();
  if (sde !== undefined) await touchAll(a.dir, sde);
}

/** Sets the mtime of everything under dir (links themselves, not their targets) to epoch. */
export async function touchAll(dir: string, epoch: number): Promise<void> {
  await run(['find', dir, '-exec', 'touch', '-h', '-d', `@${epoch}`, '{}', '+']);
}

/**
 * A FAT image holding a staging dir, without mounting: mkfs.vfat + mcopy. --invariant (fixed
 * creation data) must come before -i, or it replaces the volume id with 1234-ABCD.
 */
export async function fatImage(
  ctx: BuildContext,
  a: { dir: string; img: string; bytes: number; label: string; volumeId: string; fat32?: boolean },
): Promise<void> {
  const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' } as Record<string, string>;
  await run(['truncate', '-s', String(a.bytes), a.img]);
  await run(['mkfs.vfat', ...(a.fat32 ? ['-F', '32'] : []), '-n', a.label, '--invariant', '-i', a.volumeId, a.img], { log: ctx.log, env });
  const { stdout: top } = await run(['ls', '-A', a.dir]);
  await run(['mcopy', '-s', '-p', '-m', '-Q', '-i', a.img, ...top.split('\n').filter(Boolean).map((n) => join(a.dir, n)), '::/'], { log: ctx.log, env });
}

/**
 * mkfs.ext4 -d copies each file's ctime and atime from the source tree (1.47.0; only crtime and the
 * superblock follow E2FSPROGS_FAKE_TIME), and the kernel sets a source file's ctime when aios writes
 * it. For a reproducible image every inode's ctime and atime are set to SOURCE_DATE_EPOCH with
 * debugfs afterwards (mtimes were clamped by the overlay stage).
 */
export async function fixExt4Times(ctx: BuildContext, root: string, img: string, epoch: number, env: Record<string, string>): Promise<void> {
  ctx.progress('setting inode ctime/atime to SOURCE_DATE_EPOCH');
  const { stdout } = await run(['find', root, '-printf', '%P\\0']);
  const paths = ['', ...stdout.split('\0').filter(Boolean)];
  const bad = paths.filter((p) => /["\n\\]/.test(p));
  if (bad.length) throw new Error(`cannot set timestamps of ${bad.length} file(s) with a quote, backslash or newline in the name: ${bad.slice(0, 3).join(', ')}`);
  const script = paths.map((p) => `sif "/${p}" ctime @${epoch}\nsif "/${p}" atime @${epoch}\n`).join('');
  const file = `${img}.debugfs`;
  await writeFile(file, script);
  const r = await execa('debugfs', ['-w', '-f', file, img], { env, reject: false, stdout: 'ignore' });
  await rm(file, { force: true });
  // debugfs reports per-command errors on stderr but exits 0; its version banner goes there too.
  const errors = String(r.stderr ?? '').split('\n').filter((l) => l.trim() && !/^debugfs \d/.test(l));
  if (r.exitCode !== 0 || errors.length) throw new Error(`debugfs could not set timestamps: ${errors.slice(0, 5).join('; ') || String(r.stderr).slice(-300)}`);
}

export async function xfsToolsMissing(): Promise<string[]> {
  return (await which('mkfs.xfs')) ? [] : ['mkfs.xfs not found (install the Debian package xfsprogs)'];
}
