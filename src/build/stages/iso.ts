/**
 * iso: the hybrid live ISO (image.formats includes "iso"): an El Torito EFI image (FAT: systemd-boot,
 * the kernel, its live initramfs and a boot entry with the live command line) and the squashfs
 * root, written by xorriso. Boots as a CD, a USB stick or a virtio disk. Needs: overlay (kernel and
 * initramfs), squashfs. Output: live.iso and iso.json (label, cmdline, paths). Key: squashfs key,
 * label, initrd path, rendered ESP files and SOURCE_DATE_EPOCH.
 */
import { chmod, mkdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { isoLabel, liveKernelCmdline, sourceDateEpoch } from '../context.js';
import { fatImage, rootContentBytes, stageEsp, touchAll } from '../image.js';
import { EFI_IMAGE, fatSize, linkOrCopy, xorrisoArgv } from '../live.js';
import { renderTree } from '../render.js';
import { run } from '../../util/exec.js';
import { paths } from '../../util/paths.js';
import { contextWithWishes, defineStage, filesDigest, kernelWishes, missingTools } from './common.js';
import type { BuildContext, StageOutput } from './index.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 1;

/** The ISO's kernel, its live initramfs and the boot entry (templates/esp with the live command line). */
async function liveEsp(ctx: BuildContext, overlay: StageOutput) {
  const root = join(overlay.dir, 'root');
  const kernel = await ctx.distro.kernelFiles(root);
  const initrd = ctx.distro.live.initrd(kernel);
  if (!existsSync(join(root, initrd))) throw new Error(`the live initramfs /${initrd} is missing in the root (the ${ctx.recipe.base.distro} rootfs should have made it)`);
  const label = isoLabel(ctx.recipe);
  const wishes = (await kernelWishes(ctx)).bootArgs;
  const cmdline = liveKernelCmdline(ctx.recipe, ctx.distro.live.cmdline(label), wishes);
  const files = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel, cmdline }));
  return { root, kernel, initrd, label, cmdline, files };
}

export const isoStage = defineStage({
  name: 'iso',
  title: 'Assemble the live ISO (xorriso)',
  output: 'iso',
  needs: ['overlay', 'squashfs'],
  async check() {
    return missingTools({ xorriso: 'xorriso', 'mkfs.vfat': 'dosfstools', mcopy: 'mtools' });
  },
  async inputs(ctx, io) {
    const e = await liveEsp(ctx, io.need('overlay'));
    return { v: VERSION, squashfs: io.need('squashfs').key, label: e.label, initrd: e.initrd, esp: filesDigest(e.files), sde: sourceDateEpoch() ?? null };
  },
  async run(ctx, dir, io) {
    const e = await liveEsp(ctx, io.need('overlay'));
    const work = join(dir, 'work');
    const isoRoot = join(work, 'iso-root');
    ctx.progress('staging the EFI boot image');
    const esp = join(work, 'esp');
    await stageEsp(ctx, { root: e.root, kernel: e.kernel, initrd: e.initrd, espFiles: e.files, dir: esp });
    await mkdir(join(isoRoot, 'boot'), { recursive: true });
    const img = join(isoRoot, EFI_IMAGE);
    await fatImage(ctx, { dir: esp, img, bytes: fatSize(await rootContentBytes(esp)), label: 'AIOS_EFI', volumeId: ctx.id.espVolumeId });
    const sfs = join(isoRoot, ctx.distro.live.squashfs);
    await mkdir(dirname(sfs), { recursive: true });
    await linkOrCopy(join(io.need('squashfs').dir, 'root.squashfs'), sfs);
    const sde = sourceDateEpoch();
    if (sde !== undefined) await touchAll(isoRoot, sde);
    ctx.progress('xorriso');
    const out = join(dir, 'live.iso');
    await run(xorrisoArgv({ out, label: e.label, isoRoot }), { log: ctx.log });
    await chmod(out, 0o644);
    await writeFile(join(dir, 'iso.json'), JSON.stringify({ label: e.label, cmdline: e.cmdline, squashfs: ctx.distro.live.squashfs, efiImage: EFI_IMAGE, initrd: e.initrd }, null, 2));
    await rm(work, { recursive: true, force: true });
  },
});
