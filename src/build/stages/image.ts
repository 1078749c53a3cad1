/**
 * image: the GPT disk image (image.formats includes "disk"). An ESP (FAT, systemd-boot, the kernel
 * and initrd the overlay's root has, the boot entry from templates/esp) and the root partition
 * (ext4 or XFS, written from the tree without mounting). Needs: overlay. Output: disk.raw and
 * layout.json (sfdisk's view). Key: overlay key, identity (UUIDs), image settings, root filesystem,
 * rendered ESP files and SOURCE_DATE_EPOCH.
 */
import { join } from 'node:path';
import { sourceDateEpoch } from '../context.js';
import { assembleDisk, xfsToolsMissing } from '../image.js';
import { renderTree } from '../render.js';
import { paths } from '../../util/paths.js';
import { contextWithWishes, defineStage, filesDigest, missingTools } from './common.js';

/** Bump when this stage's code changes what it produces, to invalidate old cache entries. */
const VERSION = 2;

export const imageStage = defineStage({
  name: 'image',
  title: 'Assemble the GPT disk image',
  output: 'disk',
  needs: ['overlay'],
  async check(ctx) {
    const xfs = ctx.recipe.filesystem.root === 'xfs' ? await xfsToolsMissing() : [];
    return xfs.concat(await missingTools({
      sfdisk: 'fdisk',
      'mkfs.vfat': 'dosfstools',
      mcopy: 'mtools',
      mmd: 'mtools',
      'mkfs.ext4': 'e2fsprogs',
      truncate: 'coreutils',
      dd: 'coreutils',
    }));
  },
  async inputs(ctx, io) {
    const r = ctx.recipe;
    const overlay = io.need('overlay');
    const kernel = await ctx.distro.kernelFiles(join(overlay.dir, 'root'));
    const esp = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel }));
    return {
      v: VERSION,
      overlay: overlay.key,
      id: ctx.id,
      image: r.image,
      fs: r.filesystem.root,
      esp: filesDigest(esp),
      sde: sourceDateEpoch() ?? null,
    };
  },
  async run(ctx, dir, io) {
    const root = join(io.need('overlay').dir, 'root');
    const kernel = await ctx.distro.kernelFiles(root);
    const espFiles = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel }));
    await assembleDisk(ctx, { root, kernel, espFiles, out: join(dir, 'disk.raw'), layoutOut: join(dir, 'layout.json') });
  },
});
