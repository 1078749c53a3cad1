/**
 * End to end: `aios build iso` reuses the stages a disk build cached (rootfs, llama.cpp, models,
 * overlay) and adds squashfs + iso; the ISO is read back (GPT with the El Torito image as ESP,
 * systemd-boot with the live entry, zstd squashfs with the live fstab) and booted in QEMU as a
 * CD-ROM and as a USB stick with the same boot check as the disk image: multi-user, no failed units, llama.cpp and
 * the model intact, aios-runtime answering over gRPC, root on the squashfs + tmpfs overlay.
 */
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { build, type BuildResult } from '../../src/build/index.js';
import { qemuTest } from '../../src/qemu/index.js';
import { sha256File } from '../../src/util/hash.js';
import { tmp } from '../helpers.js';

const out = tmp('aios-e2e-iso-');
let disk: BuildResult;
let iso: BuildResult;

describe('aios build iso + qemu-test (default recipe)', () => {
  it('builds out/aios-default.iso from the stages the disk build cached', { timeout: 20 * 60_000 }, async () => {
    disk = await build({ recipe: 'default', outDir: out, renderer: 'silent' });
    iso = await build({ recipe: 'default', outDir: out, renderer: 'silent', formats: ['iso'] });
    expect(iso.image).toBe(join(out, 'aios-default.iso'));
    expect(iso.outputs).toEqual([{ format: 'iso', file: join(out, 'aios-default.iso'), manifest: join(out, 'aios-default.iso.manifest.json') }]);
    expect(iso.stages.map((s) => s.name)).toEqual(['rootfs', 'llama', 'models', 'overlay', 'squashfs', 'iso']);
    // One rootfs for both outputs: everything up to the overlay is the disk build's, from the cache.
    for (const name of ['rootfs', 'llama', 'models', 'overlay']) {
      const a = disk.stages.find((s) => s.name === name)!;
      const b = iso.stages.find((s) => s.name === name)!;
      expect([name, b.cached, b.key]).toEqual([name, true, a.key]);
    }
    const m = JSON.parse(readFileSync(iso.manifest, 'utf8'));
    expect(m.format).toBe('iso');
    expect(m.image).toEqual({ file: 'aios-default.iso', bytes: readFileSync(iso.image).length, sha256: await sha256File(iso.image) });
    expect(m.kernel.cmdline).toMatch(/^boot=live console=tty0 console=ttyS0,115200 systemd\.firstboot=no /);
    expect(m.kernel.cmdline).not.toMatch(/root=/);
    expect(m.iso).toMatchObject({ label: 'AIOS_DEFAULT', squashfs: { path: 'live/filesystem.squashfs' }, efiImage: 'boot/efiboot.img' });
    // The disk manifest next to it is the disk's own, untouched.
    expect(JSON.parse(readFileSync(disk.manifest, 'utf8')).format).toBe('disk');
    expect(readdirSync(out).sort()).toEqual(['aios-default.iso', 'aios-default.iso.manifest.json', 'aios-default.manifest.json', 'aios-default.pki', 'aios-default.raw']);
    const sq = iso.stages.find((s) => s.name === 'squashfs')!;
    console.log(`squashfs ${sq.seconds.toFixed(1)} s, iso ${iso.stages.find((s) => s.name === 'iso')!.seconds.toFixed(1)} s, ISO ${(m.image.bytes / 2 ** 20).toFixed(0)} MiB (squashfs ${(m.iso.squashfs.bytes / 2 ** 20).toFixed(0)} MiB)`);
  });

  it('is a hybrid ISO: GPT with the El Torito EFI image as ESP, systemd-boot with the live entry, zstd squashfs with the live fstab', { timeout: 5 * 60_000 }, async () => {
    const { stdout } = await execa('sfdisk', ['-J', iso.image]);
    const parts = JSON.parse(stdout).partitiontable.partitions as { type: string; start: number; size: number }[];
    const esp = parts.find((p) => p.type === 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B')!;
    expect(esp).toBeTruthy();
    const blkid = await execa('blkid', ['-o', 'export', iso.image]);
    expect(blkid.stdout).toMatch(/^TYPE=iso9660$/m);
    expect(blkid.stdout).toMatch(/^LABEL=AIOS_DEFAULT$/m);
    // The ESP partition is the El Torito image: read it in place with mtools.
    const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
    const img = `${iso.image}@@${esp.start * 512}`;
    const ls = await execa('mdir', ['-/', '-b', '-i', img, '::/'], { env });
    expect(ls.stdout).toMatch(/::\/EFI\/BOOT\/BOOTX64\.EFI/);
    expect(ls.stdout).toMatch(/::\/aios\/6\.12\.[^/]+\/initrd/);
    const entry = await execa('mtype', ['-i', img, '::/loader/entries/aios.conf'], { env });
    expect(entry.stdout).toMatch(/^options boot=live console=tty0 /m);
    // The squashfs inside the ISO: extract it with xorriso (no mounting).
    const dir = tmp('aios-e2e-iso-x-');
    const sfs = join(dir, 'filesystem.squashfs');
    await execa('xorriso', ['-osirrox', 'on', '-indev', iso.image, '-extract', '/live/filesystem.squashfs', sfs]);
    const m = JSON.parse(readFileSync(iso.manifest, 'utf8'));
    expect(await sha256File(sfs)).toBe(m.iso.squashfs.sha256);
    expect((await execa('unsquashfs', ['-s', sfs])).stdout).toMatch(/Compression zstd/);
    const fstab = (await execa('unsquashfs', ['-cat', sfs, 'etc/fstab'])).stdout;
    expect(fstab).toMatch(/^# aios live system/);
    expect(fstab.split('\n').filter((l) => l && !l.startsWith('#'))).toEqual([]);
    expect((await execa('unsquashfs', ['-cat', sfs, 'etc/hostname'])).stdout).toBe('aios');
    const list = (await execa('unsquashfs', ['-l', sfs, 'usr/bin/llama-server', 'var/lib/aios/models/aios-tiny.gguf', 'usr/bin/live-boot'])).stdout;
    expect(list).toContain('squashfs-root/usr/bin/llama-server');
    expect(list).toContain('squashfs-root/var/lib/aios/models/aios-tiny.gguf');
    expect(list).toContain('squashfs-root/usr/bin/live-boot');
  });

  it('boots as a CD-ROM to multi-user with the same boot check as the disk (aios qemu-test)', { timeout: 20 * 60_000 }, async () => {
    const res = await qemuTest(iso.image, { timeout: 900, serialLog: join(out, 'iso-cd.serial.log') });
    expect(res.media).toBe('cdrom');
    expect(res.reason).toBeUndefined();
    expect(res.ok).toBe(true);
    expect(res.guest.failedUnits).toEqual([]);
    // systemd-boot puts initrd=\aios\<version>\initrd first; the entry's options follow.
    expect(res.guest.cmdline).toMatch(/^initrd=\\aios\\6\.12\.[^ ]+\\initrd boot=live .*aios\.check=1/);
    expect(res.guest.cmdline).not.toMatch(/root=/);
    // Root: live-boot's overlay of the read-only squashfs and a tmpfs.
    expect(res.guest.root).toMatch(/^overlay /);
    expect(res.guest.kernel).toMatch(/^6\.12\./);
    expect(res.guest.thp).toContain('[madvise]');
    expect(res.guest.swap).toMatch(/\/dev\/zram0/);
    expect(res.guest.llamaVersion).toMatch(/version: \d+/);
    const m = JSON.parse(readFileSync(iso.manifest, 'utf8'));
    expect(res.guest.models).toEqual([{ file: 'aios-tiny.gguf', magic: 'GGUF', version: 3, bytes: m.models[0].bytes, sha256: m.models[0].sha256 }]);
    expect(res.guest.runtimeState).toBe('active');
    expect(res.runtime).toMatchObject({ ok: true, text: 'OK', modelUsed: 'aios-tiny' });
    console.log(`ISO as CD: multi-user ${res.guest.multiUser}s after kernel start (${res.guest.timing}); runtime ready ${res.runtime!.readySeconds} s; ${res.hostSeconds.toFixed(1)} s QEMU start to done`);
    expect(existsSync(iso.image)).toBe(true);
  });

  it('boots written to a USB stick (the GPT side of the hybrid ISO), with the same check', { timeout: 20 * 60_000 }, async () => {
    const before = await sha256File(iso.image);
    const res = await qemuTest(iso.image, { media: 'usb', timeout: 900, serialLog: join(out, 'iso-usb.serial.log') });
    expect(res.media).toBe('usb');
    expect(res.reason).toBeUndefined();
    expect(res.ok).toBe(true);
    expect(res.guest.failedUnits).toEqual([]);
    expect(res.guest.root).toMatch(/^overlay /);
    expect(res.runtime).toMatchObject({ ok: true, text: 'OK', modelUsed: 'aios-tiny' });
    // The stick is a snapshot: the ISO file is unchanged after a live boot that wrote to its overlay.
    expect(await sha256File(iso.image)).toBe(before);
    console.log(`ISO as USB stick: multi-user ${res.guest.multiUser}s after kernel start; ${res.hostSeconds.toFixed(1)} s QEMU start to done`);
  });
});
