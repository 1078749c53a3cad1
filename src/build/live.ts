/**
 * The live ISO, without mounting anything: mksquashfs (zstd) of the overlay stage's root, with the
 * live-only files (templates/live/) added as pseudo files; a FAT El Torito EFI image (mkfs.vfat +
 * mcopy) holding systemd-boot, kernel, initramfs and the live boot entry; xorriso -as mkisofs for a
 * hybrid ISO whose GPT marks that EFI image as the ESP, so the same file boots as a CD and as a
 * USB stick / disk.
 */
import { link, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { RenderedFile } from './render.js';

/** The El Torito EFI image's path inside the ISO tree. */
export const EFI_IMAGE = 'boot/efiboot.img';

/** mksquashfs command: zstd, reproducible (the default), live files as pseudo files replacing the root's. */
export function squashfsArgv(a: { root: string; out: string; pseudoFile: string; replaced: string[]; mkfsTime?: number }): string[] {
  return [
    'mksquashfs',
    a.root,
    a.out,
    '-noappend',
    '-comp',
    'zstd',
    '-no-progress',
    '-quiet',
    ...(a.mkfsTime !== undefined ? ['-mkfs-time', String(a.mkfsTime)] : []),
    '-pf',
    a.pseudoFile,
    // Everything after -e is an exclude list: it must come last. A pseudo file only replaces a
    // file of the source tree that is excluded.
    ...(a.replaced.length ? ['-e', ...a.replaced] : []),
  ];
}

/** mksquashfs pseudo-file definitions ("path F time mode uid gid command") for the rendered live files. */
export function pseudoDefinitions(files: RenderedFile[], dir: string, time: number): string {
  return files.map((f) => `${f.path} F ${time} ${f.mode.toString(8)} 0 0 cat ${join(dir, f.path)}\n`).join('');
}

/**
 * xorriso command for the hybrid ISO. `-e … -no-emul-boot` makes the FAT image the El Torito EFI
 * boot image (CD boot); `-efi-boot-part --efi-boot-image` also lists that same image as the ESP in
 * a GPT (disk/USB boot). With SOURCE_DATE_EPOCH set, xorriso derives the volume dates, the volume
 * UUID and the GPT GUIDs from it (reproducible).
 */
export function xorrisoArgv(a: { out: string; label: string; isoRoot: string }): string[] {
  return [
    'xorriso',
    '-as',
    'mkisofs',
    '-o',
    a.out,
    '-V',
    a.label,
    '-r',
    '-J',
    '-joliet-long',
    // Level 3: files over 4 GiB (a squashfs with large models) are stored in several extents.
    '-iso-level',
    '3',
    '-e',
    EFI_IMAGE,
    '-no-emul-boot',
    '-efi-boot-part',
    '--efi-boot-image',
    a.isoRoot,
  ];
}

/** FAT image size for the files in an ESP staging dir: contents + 10 % + 4 MiB, whole MiB, at least 16 MiB. */
export function fatSize(contentBytes: number): number {
  const MiB = 1024 * 1024;
  return Math.max(16 * MiB, Math.ceil((contentBytes * 1.1 + 4 * MiB) / MiB) * MiB);
}

/** Hard link (the cache is one filesystem), else copy. */
export async function linkOrCopy(src: string, dest: string): Promise<void> {
  try {
    await link(src, dest);
  } catch {
    await copyFile(src, dest);
  }
}

/** Writes the pseudo-file list next to the rendered live files and returns its path. */
export async function writeLiveFiles(files: RenderedFile[], dir: string, time: number): Promise<string> {
  for (const f of files) {
    const p = join(dir, f.path);
    await mkdir(join(p, '..'), { recursive: true });
    await writeFile(p, f.content, { mode: f.mode });
  }
  const pf = join(dir, '..', 'pseudo-files');
  await writeFile(pf, pseudoDefinitions(files, dir, time));
  return pf;
}
