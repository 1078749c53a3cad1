/**
 * The appliance layout's recipe keys ([image] layout, version, readonly_fs, slot_size) and the
 * checks of how they combine with the rest of the recipe (docs/appliance.md). Kept apart from
 * schema.ts so that the layout's rules live in one place; schema.ts spreads the keys into
 * ImageSchema and load.ts calls applianceProblems() with its other cross-checks.
 */
import { z } from 'zod';
import { SIZE_RE, alignUp, formatSize, parseSize } from '../util/size.js';
import { updateProblems, type UpdateConfig } from './update.js';

const MiB = 1024 * 1024;

/** The smallest root slot the load-time check assumes with slot_size = "auto" (a trixie root with systemd and the kernel modules alone is larger). */
export const MIN_AUTO_SLOT = 256 * MiB;
/** The smallest /var the disk must leave free for systemd-repart's first boot (it grows to fill the disk). */
export const MIN_VAR = 64 * MiB;

export const applianceImageKeys = {
  layout: z
    .enum(['plain', 'appliance'])
    .default('plain')
    .describe('plain: ESP + one writable root (ext4/XFS). appliance: ESP + two read-only root slots (A, B; erofs or squashfs) each with a dm-verity hash partition, the root hash on the boot entry\'s command line, and a writable /var that systemd-repart creates on first boot to fill the disk (docs/appliance.md). Disk images only'),
  version: z
    .string()
    .regex(/^[0-9][A-Za-z0-9.]{0,15}$/, { message: 'must start with a digit and use letters, digits and dots (at most 16): it goes into partition labels and file names' })
    .optional()
    .describe('The appliance image\'s version (partition labels aios_<version>, boot entry aios_<version>.conf). Unset: SOURCE_DATE_EPOCH when set, else 1'),
  readonly_fs: z
    .enum(['erofs', 'squashfs'])
    .default('erofs')
    .describe('Appliance layout: the read-only root filesystem of a slot (erofs: mkfs.erofs, uncompressed; squashfs: mksquashfs, zstd)'),
  slot_size: z
    .union([z.literal('auto'), z.string().regex(SIZE_RE, { message: 'image.slot_size must be a size such as 2G' })])
    .default('auto')
    .describe('Appliance layout: the size of each root slot (A and B; each has a verity partition of about 1/127 of it beside). "auto": the read-only root of this build plus a quarter, so that a somewhat larger update still fits'),
};

/** Bytes of the dm-verity hash partition for a data slot (sha256, 4 KiB blocks: 128 hashes a block, all levels, the superblock; 1 MiB aligned). */
export function veritySlotBytes(slotBytes: number): number {
  let blocks = Math.ceil(slotBytes / 4096);
  let hash = 1; // superblock
  while (blocks > 1) {
    blocks = Math.ceil(blocks / 128);
    hash += blocks;
  }
  return alignUp(hash * 4096, MiB);
}

/** The smallest disk for an appliance: GPT (1 MiB each end), ESP, two slots with their verity partitions, MIN_VAR. */
export function minApplianceDisk(espBytes: number, slotBytes: number): number {
  return MiB + alignUp(espBytes, MiB) + 2 * (alignUp(slotBytes, MiB) + veritySlotBytes(slotBytes)) + MIN_VAR + MiB;
}

interface ImageKeys {
  layout: 'plain' | 'appliance';
  size: string;
  esp_size: string;
  slot_size: string;
  formats: string[];
}

/** Problems of the appliance layout with the rest of the recipe, as load.ts reports them (exit 2, naming the keys). */
export function applianceProblems(r: { image: ImageKeys; filesystem: { root: string }; base: { distro: string }; kernel: { build: boolean }; update: UpdateConfig }): { path: string; message: string }[] {
  // [update] (src/config/update.ts): update.source, and that it belongs to this layout.
  const out: { path: string; message: string }[] = updateProblems(r);
  const im = r.image;
  if (im.layout !== 'appliance') return out;
  if (r.filesystem.root !== 'ext4') {
    out.push({ path: 'filesystem.root', message: `image.layout = "appliance" keeps the root read-only (image.readonly_fs) and makes the writable /var with systemd-repart on the machine as ext4; filesystem.root = "${r.filesystem.root}" is not supported with it: use "ext4" or image.layout = "plain"` });
  }
  if (r.base.distro !== 'debian') {
    out.push({ path: 'base.distro', message: `image.layout = "appliance" needs an initrd with systemd-veritysetup (Debian's dracut); base.distro = "${r.base.distro}" is not supported with it yet` });
  }
  if (r.kernel.build) {
    out.push({ path: 'kernel.build', message: 'image.layout = "appliance" with a custom kernel is not supported yet (its initrd is made with initramfs-tools; the appliance needs dracut\'s): use the stock kernel (kernel.build = false)' });
  }
  if (im.formats.includes('iso')) {
    out.push({ path: 'image.formats', message: 'image.layout = "appliance" builds a disk image only: the live ISO boots another initrd (live-boot), which the appliance root does not have. Remove "iso" or use image.layout = "plain"' });
  }
  if (im.size !== 'auto') {
    const disk = parseSize(im.size);
    const esp = parseSize(im.esp_size);
    const slot = im.slot_size === 'auto' ? MIN_AUTO_SLOT : parseSize(im.slot_size);
    const need = minApplianceDisk(esp, slot);
    if (disk < need) {
      out.push({
        path: 'image.size',
        message: `image.size = ${im.size} is too small for image.layout = "appliance": two root slots of ${im.slot_size === 'auto' ? `at least ${formatSize(slot)} (image.slot_size = "auto")` : `${formatSize(slot)} (image.slot_size)`} with their verity partitions, the ESP (image.esp_size = ${im.esp_size}) and ${formatSize(MIN_VAR)} for /var need ${formatSize(need)}. Raise image.size, lower image.slot_size, or set image.size = "auto"`,
      });
    }
  }
  return out;
}
