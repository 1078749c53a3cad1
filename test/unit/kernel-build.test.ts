/** The custom kernel stage without compiling: recipe keys, the plan, the host checks, the stage list. */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadRecipe } from '../../src/config/load.js';
import { baseKind, baseWantsBtf, CORE_MINUTES, DISK_BYTES, kernelHostProblems, kernelPlan, ownFragment, TREE_BASES } from '../../src/kernel/build.js';
import { withDirLock } from '../../src/util/lock.js';
import { existsSync, writeFileSync } from 'node:fs';
import { tmp } from '../helpers.js';
import { parseFragment } from '../../src/kernel/config.js';
import { stagesFor } from '../../src/build/stages/index.js';
import { paths } from '../../src/util/paths.js';
import { buildKernelStage } from '../../src/build/index.js';
import { UserError } from '../../src/util/errors.js';

describe('kernel.build recipe keys', () => {
  it('defaults: no custom kernel; with build = true the compact base, strict, series 6.12', async () => {
    const r = await loadRecipe('default');
    expect(r.kernel).toMatchObject({ build: false, base: 'compact', strict: true, series: '6.12' });
    const c = await loadRecipe('custom-kernel');
    expect(c.kernel).toMatchObject({ build: true, base: 'compact', strict: true, version: '6.12.117-1', fragments: ['inference', 'single-socket'] });
    expect(c.image.name).toBe('aios-custom-kernel');
  });

  it('refuses an unknown base and accepts a .config path', async () => {
    await expect(loadRecipe('default', { sets: ['kernel.base=huge'] })).rejects.toThrow(/tiny, compact, debian, local or a path/);
    expect((await loadRecipe('custom-kernel', { sets: ['kernel.base=tiny'] })).kernel.base).toBe('tiny');
    // tiny has no CD-ROM, ISO 9660 or squashfs drivers: a live ISO with it is refused before building.
    await expect(loadRecipe('custom-kernel', { sets: ['kernel.base=tiny', 'image.formats=["disk","iso"]'] })).rejects.toThrow(/image\.formats[\s\S]*kernel\.base = "tiny" has no CD-ROM/);
    expect(baseKind('tiny')).toBe('tiny');
    expect(baseKind('compact')).toBe('compact');
    expect((await loadRecipe('default', { sets: ['kernel.base=/tmp/my.config'] })).kernel.base).toBe('/tmp/my.config');
    expect(baseKind('/tmp/my.config')).toBe('file');
  });

  it('`aios build kernel` refuses a recipe without kernel.build before anything runs (exit 2, saying how)', async () => {
    const cacheDir = tmp();
    const err = await buildKernelStage({ recipe: 'default', cacheDir, renderer: 'silent' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UserError);
    expect((err as UserError).exitCode).toBe(2);
    expect((err as Error).message).toMatch(/recipe default has kernel\.build = false.*images\/custom-kernel\.toml.*--set kernel\.build=true/);
    expect(existsSync(join(cacheDir, 'stages'))).toBe(false);
  });

  it('adds the kernel stage between models and overlay only when the recipe builds a kernel', async () => {
    const names = (r?: Awaited<ReturnType<typeof loadRecipe>>) => stagesFor(['disk'], r).map((s) => s.name);
    expect(names()).toEqual(['rootfs', 'llama', 'models', 'overlay', 'image']);
    expect(names(await loadRecipe('default'))).toEqual(['rootfs', 'llama', 'models', 'overlay', 'image']);
    expect(names(await loadRecipe('custom-kernel'))).toEqual(['rootfs', 'llama', 'models', 'kernel', 'overlay', 'image']);
    const kernel = stagesFor(['disk'], await loadRecipe('custom-kernel')).find((s) => s.name === 'kernel')!;
    expect(kernel.needs).toEqual([]);
    expect(stagesFor(['disk']).find((s) => s.name === 'overlay')!.uses).toEqual(['kernel']);
  });

  it('prints a plan with the time for this core count; debian says hours', async () => {
    const c = (await loadRecipe('custom-kernel')).kernel;
    expect(kernelPlan(c, 2)).toMatch(/base compact .* takes ~\d+ min on 2 core\(s\)/);
    expect(kernelPlan({ ...c, base: 'debian' }, 2)).toMatch(/HOURS.* takes ~\d+ hours on 2 core/);
    // tiny: said to be for VMs and CI only, and estimated well below compact in time and disk.
    expect(kernelPlan({ ...c, base: 'tiny' }, 2)).toMatch(/base tiny \(tinyconfig \+ kvm_guest\.config \+ kernel-configs\/tiny\.config: QEMU\/KVM guests and CI only, no drivers for real machines\).* takes ~\d+ min on 2 core\(s\)/);
    expect(CORE_MINUTES.tiny).toBeLessThan(CORE_MINUTES.compact / 2);
    expect(DISK_BYTES.tiny).toBeLessThan(DISK_BYTES.compact);
  });

  it('refuses Arch with a reason, and names missing host packages', async () => {
    await expect(loadRecipe('default', { sets: ['base.distro=arch', 'base.suite=rolling', 'kernel.build=true'] })).rejects.toThrow(/kernel.build: a custom kernel is built from Debian's linux-source/);
    const deb = await loadRecipe('custom-kernel');
    const p = await kernelHostProblems({ ...deb, base: { ...deb.base, distro: 'arch' } });
    expect(p).toHaveLength(1);
    expect(p[0]).toMatch(/needs base.distro = "debian"/);
    const problems = await kernelHostProblems({ ...deb, kernel: { ...deb.kernel, base: '/nonexistent/x.config' } });
    expect(problems).toContain('kernel.base: no such .config /nonexistent/x.config');
    for (const q of problems) expect(q).toMatch(/install the Debian package|kernel.base/);
    expect(baseWantsBtf(deb.kernel)).toBe(false);
    expect(baseWantsBtf({ ...deb.kernel, base: 'debian' })).toBe(true);
    expect(baseWantsBtf({ ...deb.kernel, base: 'tiny' })).toBe(false);
  });

  it('compact.config: one reason comment for every group of lines, IKCONFIG_PROC for the boot check', () => {
    const text = readFileSync(join(paths.kernelConfigs, 'compact.config'), 'utf8');
    const wishes = parseFragment(text, 'compact.config');
    expect(wishes.length).toBeGreaterThan(40);
    for (const w of wishes) expect(w.reason, `CONFIG_${w.symbol}`).not.toBe('');
    expect(wishes.map((w) => `${w.symbol}=${w.value}`)).toEqual(expect.arrayContaining(['IKCONFIG_PROC=y', 'BLK_DEV_NVME=y', 'SATA_AHCI=y', 'VIRTIO_BLK=y', 'USB_STORAGE=y', 'XFS_FS=y', 'SQUASHFS=y', 'OVERLAY_FS=y', 'ZRAM=y', 'EFI_STUB=y', 'MLX5_CORE=m', 'R8169=m', 'IGB=m']));
    expect(ownFragment('compact')).toMatch(/CONFIG_LOCALVERSION="-aios"/);
    expect(ownFragment('debian')).toMatch(/CONFIG_SYSTEM_TRUSTED_KEYS=""/);
    // The model sandbox's Landlock, first in the LSM order.
    expect(wishes.find((w) => w.symbol === 'SECURITY_LANDLOCK')?.value).toBe('y');
    expect(wishes.find((w) => w.symbol === 'LSM')?.value).toMatch(/^landlock,/);
  });

  it('tiny.config: tinyconfig + kvm_guest.config + what a booted image needs, all built in, one reason comment per group', () => {
    expect(TREE_BASES.tiny).toEqual({ target: 'tinyconfig', env: { ARCH: 'x86_64' }, fragment: 'tiny.config' });
    expect(TREE_BASES.compact).toMatchObject({ target: 'x86_64_defconfig', fragment: 'compact.config' });
    const text = readFileSync(join(paths.kernelConfigs, 'tiny.config'), 'utf8');
    const wishes = parseFragment(text, 'tiny.config');
    expect(wishes.length).toBeGreaterThan(60);
    for (const w of wishes) expect(w.reason, `CONFIG_${w.symbol}`).not.toBe('');
    const set = wishes.map((w) => `${w.symbol}=${w.value}`);
    // 64-bit SMP, UEFI, qemu-test's devices (virtio disk, net, serial data port, rng; the 8250 console), the image's
    // filesystems (ext4 root, FAT ESP), zram, systemd's needs, the model sandbox (namespaces, seccomp, Landlock),
    // the fleet worker's nftables, /proc/config.gz for the boot check.
    expect(set).toEqual(expect.arrayContaining([
      '64BIT=y', 'SMP=y', 'EFI_STUB=y', 'EFIVAR_FS=y', 'EFI_PARTITION=y', 'ACPI=y',
      'VIRTIO_BLK=y', 'SCSI_VIRTIO=y', 'VIRTIO_NET=y', 'VIRTIO_CONSOLE=y', 'HW_RANDOM_VIRTIO=y', 'SERIAL_8250_CONSOLE=y',
      'EXT4_FS=y', 'VFAT_FS=y', 'NLS_ISO8859_1=y', 'ZRAM=y', 'ZRAM_DEF_COMP_ZSTD=y', 'SWAP=y', 'HUGETLBFS=y', 'RD_ZSTD=y', 'BINFMT_SCRIPT=y',
      'DEVTMPFS=y', 'TMPFS=y', 'FHANDLE=y', 'EPOLL=y', 'SIGNALFD=y', 'TIMERFD=y', 'EVENTFD=y', 'INOTIFY_USER=y', 'AUTOFS_FS=y',
      'MEMCG=y', 'CGROUP_SCHED=y', 'CPUSETS=y', 'CGROUP_PIDS=y', 'BLK_CGROUP=y',
      'USER_NS=y', 'NET_NS=y', 'PID_NS=y', 'UTS_NS=y', 'IPC_NS=y', 'SECCOMP_FILTER=y', 'BPF_SYSCALL=y', 'CGROUP_BPF=y',
      'SECURITY_LANDLOCK=y', 'LSM=landlock', 'UNIX=y', 'IPV6=y', 'PACKET=y', 'NF_TABLES_INET=y', 'NFT_REJECT=y',
      'IKCONFIG_PROC=y', 'CPU_FREQ=y',
    ]));
    // No modules: every line is built in or off.
    expect(wishes.filter((w) => w.value === 'm')).toEqual([]);
    // Nothing for real hardware.
    for (const s of ['BLK_DEV_NVME', 'SATA_AHCI', 'USB_SUPPORT', 'E1000E', 'DRM']) expect(wishes.find((w) => w.symbol === s && w.value !== 'n'), s).toBeUndefined();
    expect(ownFragment('tiny')).toBe(ownFragment('compact'));
  });

  it('serialises builds that share the kept build directory, and takes over a dead build\'s lock', async () => {
    const dir = join(tmp(), 'obj');
    const order: string[] = [];
    const job = (n: string) => withDirLock(dir, () => {}, async () => {
      order.push(`${n} start`);
      await new Promise((r) => setTimeout(r, 50));
      order.push(`${n} end`);
    });
    await Promise.all([job('a'), job('b')]);
    expect(order.join(',')).toMatch(/^(a start,a end,b start,b end|b start,b end,a start,a end)$/);
    expect(existsSync(`${dir}.lock`)).toBe(false);
    writeFileSync(`${dir}.lock`, '999999999'); // no such process
    expect(await withDirLock(dir, () => {}, async () => 42)).toBe(42);
  }, 20_000);
});
