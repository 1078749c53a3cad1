/**
 * The live ISO's commands and files: the exact xorriso and mksquashfs argv, the pseudo-file list,
 * the live kernel command lines, and the Arch live config (no Arch mirror here, so the files
 * mkinitcpio would read are checked instead of a real Arch ISO build).
 */
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadRecipe } from '../../src/config/load.js';
import { identity, initramfsModules, isoLabel, liveKernelCmdline, templateContext } from '../../src/build/context.js';
import { EFI_IMAGE, fatSize, pseudoDefinitions, squashfsArgv, xorrisoArgv } from '../../src/build/live.js';
import { stagesFor } from '../../src/build/stages/index.js';
import { renderTree } from '../../src/build/render.js';
import { debian } from '../../src/distros/debian.js';
import { arch } from '../../src/distros/arch.js';
import { paths } from '../../src/util/paths.js';
import { isIso, mediaArgs } from '../../src/qemu/index.js';
import { tmp } from '../helpers.js';

const kernel = { version: '6.12.0-test-amd64', kernel: 'boot/vmlinuz', initrd: 'boot/initrd.img' };

describe('live ISO commands', () => {
  it('xorriso: El Torito EFI image that is also the GPT ESP (CD and disk boot)', () => {
    expect(xorrisoArgv({ out: '/o/live.iso', label: 'AIOS_DEFAULT', isoRoot: '/w/iso-root' })).toEqual([
      'xorriso', '-as', 'mkisofs', '-o', '/o/live.iso', '-V', 'AIOS_DEFAULT', '-r', '-J', '-joliet-long', '-iso-level', '3',
      '-e', 'boot/efiboot.img', '-no-emul-boot', '-efi-boot-part', '--efi-boot-image', '/w/iso-root',
    ]);
    expect(EFI_IMAGE).toBe('boot/efiboot.img');
  });

  it('mksquashfs: zstd, the live files as pseudo files, and the exclude list last', () => {
    expect(squashfsArgv({ root: '/r', out: '/o/root.squashfs', pseudoFile: '/o/pseudo', replaced: ['etc/fstab'], mkfsTime: 1700000000 })).toEqual([
      'mksquashfs', '/r', '/o/root.squashfs', '-noappend', '-comp', 'zstd', '-no-progress', '-quiet', '-mkfs-time', '1700000000', '-pf', '/o/pseudo', '-e', 'etc/fstab',
    ]);
    expect(pseudoDefinitions([{ path: 'etc/fstab', content: '#\n', mode: 0o644 }], '/o/live-files', 1700000000)).toBe('etc/fstab F 1700000000 644 0 0 cat /o/live-files/etc/fstab\n');
  });

  it('really replaces a file of the tree with mksquashfs -pf … -e (unsquashfs reads it back)', async () => {
    const d = tmp('aios-sfs-');
    mkdirSync(join(d, 'root/etc'), { recursive: true });
    writeFileSync(join(d, 'root/etc/fstab'), 'PARTUUID=x / ext4 noatime,commit=60 0 1\n');
    writeFileSync(join(d, 'root/etc/hostname'), 'aios\n');
    mkdirSync(join(d, 'live/etc'), { recursive: true });
    writeFileSync(join(d, 'live/etc/fstab'), '# live\n');
    writeFileSync(join(d, 'pseudo'), pseudoDefinitions([{ path: 'etc/fstab', content: '# live\n', mode: 0o644 }], join(d, 'live'), 1700000000));
    const argv = squashfsArgv({ root: join(d, 'root'), out: join(d, 'o.sfs'), pseudoFile: join(d, 'pseudo'), replaced: ['etc/fstab'], mkfsTime: 1700000000 });
    await execa(argv[0]!, argv.slice(1));
    expect((await execa('unsquashfs', ['-cat', join(d, 'o.sfs'), 'etc/fstab'])).stdout).toBe('# live');
    expect((await execa('unsquashfs', ['-cat', join(d, 'o.sfs'), 'etc/hostname'])).stdout).toBe('aios');
  });

  it('sizes the EFI boot image from its contents', () => {
    const MiB = 1024 * 1024;
    expect(fatSize(1 * MiB)).toBe(16 * MiB);
    expect(fatSize(30 * MiB)).toBe(37 * MiB);
  });

  it('stage lists: disk, iso, both', () => {
    expect(stagesFor(['disk']).map((s) => s.name)).toEqual(['rootfs', 'llama', 'models', 'overlay', 'image']);
    expect(stagesFor(['iso']).map((s) => s.name)).toEqual(['rootfs', 'llama', 'models', 'overlay', 'squashfs', 'iso']);
    expect(stagesFor(['disk', 'iso']).map((s) => s.name)).toEqual(['rootfs', 'llama', 'models', 'overlay', 'image', 'squashfs', 'iso']);
  });

  it('qemu attaches an ISO as a CD-ROM, a USB stick or a virtio disk', () => {
    expect(mediaArgs('/o/x.iso', 'cdrom', true)).toEqual(['-drive', 'if=none,id=cd0,media=cdrom,format=raw,readonly=on,file=/o/x.iso', '-device', 'ide-cd,drive=cd0,bus=ide.0']);
    expect(mediaArgs('/o/x.iso', 'usb', true)).toEqual(['-device', 'qemu-xhci,id=xhci', '-drive', 'if=none,id=usb0,format=raw,file=/o/x.iso,snapshot=on', '-device', 'usb-storage,bus=xhci.0,drive=usb0,removable=on']);
    expect(mediaArgs('/o/x.iso', 'disk', true)).toEqual(['-drive', 'if=virtio,format=raw,file=/o/x.iso,snapshot=on']);
  });

  it('recognises an ISO 9660 file by its volume descriptor', async () => {
    const d = tmp('aios-iso-');
    mkdirSync(join(d, 'root'));
    writeFileSync(join(d, 'root/a'), 'a');
    await execa('xorriso', ['-as', 'mkisofs', '-o', join(d, 'x.iso'), '-V', 'T', join(d, 'root')]);
    expect(await isIso(join(d, 'x.iso'))).toBe(true);
    writeFileSync(join(d, 'x.raw'), Buffer.alloc(40000));
    expect(await isIso(join(d, 'x.raw'))).toBe(false);
  });
});

describe('live boot configuration', () => {
  it('Debian: live-boot in the one rootfs, boot=live instead of the root partition, live modules in the initramfs', async () => {
    const r = await loadRecipe('default');
    expect(debian.packages(r)).toContain('live-boot');
    expect(debian.live.squashfs).toBe('live/filesystem.squashfs');
    expect(debian.live.initrd(kernel)).toBe('boot/initrd.img');
    expect(isoLabel(r)).toBe('AIOS_DEFAULT');
    const cmdline = liveKernelCmdline(r, debian.live.cmdline(isoLabel(r)));
    expect(cmdline).toBe('boot=live console=tty0 console=ttyS0,115200 systemd.firstboot=no transparent_hugepage=madvise preempt=voluntary nowatchdog nmi_watchdog=0');
    expect(initramfsModules(r)).toEqual(expect.arrayContaining(['sr_mod', 'isofs', 'squashfs', 'overlay', 'loop', 'ext4', 'virtio_blk', 'usb_storage']));
    const live = await renderTree(join(paths.templates, 'live'), templateContext(r, identity(r)));
    expect(live.map((f) => f.path)).toEqual(['etc/fstab']);
    expect(live[0]!.content).not.toMatch(/^[^#]/m); // comments only: live-boot adds the overlay and /tmp lines
    const boot = Object.fromEntries((await renderTree(join(paths.templates, 'bootstrap'), templateContext(r, identity(r)))).map((f) => [f.path, f]));
    expect(boot['etc/initramfs-tools/hooks/aios-trim']!.mode).toBe(0o755);
    expect(boot['etc/live/boot.conf']!.content).toMatch(/^DISABLE_NTFS=true$/m);
  });

  it('Arch: archiso layout and label, a second initramfs with the archiso hooks', async () => {
    const r = await loadRecipe('default', { sets: ['base.distro=arch', 'base.suite="rolling"', 'image.name=aios-arch'] });
    expect(arch.packages(r)).toContain('mkinitcpio-archiso');
    expect(arch.live.squashfs).toBe('arch/x86_64/airootfs.sfs');
    expect(arch.live.initrd(kernel)).toBe('boot/initramfs-linux-archiso.img');
    expect(liveKernelCmdline(r, arch.live.cmdline(isoLabel(r))).split(' ').slice(0, 3)).toEqual(['archisobasedir=arch', 'archisolabel=AIOS_ARCH', 'console=tty0']);
    const boot = Object.fromEntries((await renderTree(join(paths.templates, 'bootstrap'), templateContext(r, identity(r)))).map((f) => [f.path, f.content]));
    expect(boot['etc/mkinitcpio.d/linux.preset']).toMatch(/^PRESETS=\('default' 'archiso'\)$/m);
    expect(boot['etc/mkinitcpio.d/linux.preset']).toMatch(/^archiso_config="\/etc\/mkinitcpio-archiso.conf"$/m);
    expect(boot['etc/mkinitcpio.d/linux.preset']).toMatch(/^archiso_image="\/boot\/initramfs-linux-archiso.img"$/m);
    // The archiso hook needs the busybox init (base + udev); the disk's initramfs keeps the systemd hook.
    expect(boot['etc/mkinitcpio-archiso.conf']).toMatch(/^HOOKS=\(base udev modconf archiso block filesystems keyboard\)$/m);
    expect(boot['etc/mkinitcpio-archiso.conf']).toMatch(/^MODULES=\(.*\bsquashfs overlay loop\)$/m);
    expect(boot['etc/mkinitcpio.conf.d/aios.conf']).toMatch(/^HOOKS=\(base systemd /m);
    // Nothing Debian-only is written on Arch.
    expect(Object.keys(boot).filter((p) => p.startsWith('etc/live') || p.startsWith('etc/initramfs-tools'))).toEqual([]);
  });
});
