/**
 * image: the GPT disk image (image.formats includes "disk"). An ESP (FAT, systemd-boot, the kernel
 * and initrd the overlay's root has, the boot entry from templates/esp) and the root partition
 * (ext4 or XFS, written from the tree without mounting). Needs: overlay. Output: disk.raw and
 * layout.json (sfdisk's view). Key: overlay key, identity (UUIDs), image settings, root filesystem,
 * rendered ESP files and SOURCE_DATE_EPOCH.
 *
 * image.layout = "appliance" (src/build/appliance.ts, docs/appliance.md): instead of the writable
 * root, slot A (read-only erofs/squashfs of the tree) with its dm-verity hash partition, an empty
 * slot B, and free space for the /var systemd-repart makes on first boot; the boot entry is
 * loader/entries/aios_<version>+3.conf (boot counting) with the root hash on its command line, naming
 * the kernel and initrd aios/aios_<version>.linux|.initrd; layout.json records the entry, from which
 * build() writes the update artifacts (src/build/update.ts).
 */
import { join } from 'node:path';
import { sourceDateEpoch } from '../context.js';
import { assembleDisk, xfsToolsMissing } from '../image.js';
import { applianceCmdline, applianceVersion, assembleApplianceDisk, diskEntryPath } from '../appliance.js';
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
    const appliance =
      ctx.recipe.image.layout === 'appliance'
        ? await missingTools({ veritysetup: 'cryptsetup-bin', ...(ctx.recipe.image.readonly_fs === 'erofs' ? { 'mkfs.erofs': 'erofs-utils' } : { mksquashfs: 'squashfs-tools' }) })
        : [];
    return xfs.concat(appliance, await missingTools({
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
    // applianceVersion: the appliance's entry names its kernel and initrd with it (and sorts by it).
    const esp = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel, applianceVersion: applianceVersion(r) }));
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
    if (ctx.recipe.image.layout === 'appliance') {
      const espFiles = async (rootHash: string, version: string) => {
        const base = await contextWithWishes(ctx, { kernel, applianceVersion: version });
        const cmdline = applianceCmdline(base.cmdline as string, { rootHash, fs: ctx.recipe.image.readonly_fs });
        // The slot's entry carries its version and boot counter (the next update's entry sits beside
        // it; loader.conf's default is aios_*): aios_<version>+3.conf.
        return (await renderTree(join(paths.templates, 'esp'), { ...base, cmdline })).map((f) => (f.path === 'loader/entries/aios.conf' ? { ...f, path: diskEntryPath(version) } : f));
      };
      await assembleApplianceDisk(ctx, { root, kernel, espFiles, out: join(dir, 'disk.raw'), layoutOut: join(dir, 'layout.json') });
      return;
    }
    const espFiles = await renderTree(join(paths.templates, 'esp'), await contextWithWishes(ctx, { kernel }));
    await assembleDisk(ctx, { root, kernel, espFiles, out: join(dir, 'disk.raw'), layoutOut: join(dir, 'layout.json') });
  },
});
