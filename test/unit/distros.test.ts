import { describe, expect, it } from 'vitest';
import { loadRecipe } from '../../src/config/load.js';
import { debian } from '../../src/distros/debian.js';
import { arch, pacmanConf } from '../../src/distros/arch.js';
import { RecipeError } from '../../src/util/errors.js';

const ctx = { root: '/c/root', pkgCache: '/c/pkgs', earlyFiles: '/c/early', work: '/c/work', asRoot: true };

describe('debian module', () => {
  it('runs exactly this mmdebstrap command', async () => {
    const r = await loadRecipe('default', { sets: ['base.packages=["htop"]'] });
    const plan = debian.bootstrap(r, ctx);
    expect(plan.files).toEqual({});
    expect(plan.steps).toHaveLength(1);
    const { argv, env } = plan.steps[0]!;
    expect(env).toEqual({ INITRD: 'No', DEBIAN_FRONTEND: 'noninteractive' });
    expect(argv).toEqual([
      'mmdebstrap',
      '--mode=root',
      '--variant=minbase',
      '--arch=amd64',
      '--components=main',
      '--include=systemd,systemd-sysv,udev,dbus,kmod,e2fsprogs,linux-image-amd64,systemd-boot-efi,initramfs-tools,zstd,iproute2,live-boot,systemd-zram-generator,libgomp1,libstdc++6,nodejs,htop',
      '--dpkgopt=force-unsafe-io',
      '--dpkgopt=path-exclude=/usr/share/man/*',
      '--dpkgopt=path-exclude=/usr/share/info/*',
      '--dpkgopt=path-exclude=/usr/share/locale/*',
      '--dpkgopt=path-include=/usr/share/locale/locale.alias',
      '--dpkgopt=path-exclude=/usr/share/doc/*',
      '--dpkgopt=path-include=/usr/share/doc/*/copyright',
      '--dpkgopt=path-exclude=/usr/share/lintian/*',
      '--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata',
      '--skip=download/empty',
      '--skip=essential/unlink',
      '--setup-hook=mkdir -p "$1"/var/cache/apt/archives/',
      "--setup-hook=sync-in '/c/pkgs' /var/cache/apt/archives/",
      "--customize-hook=sync-out /var/cache/apt/archives '/c/pkgs'",
      '--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/archives/partial/*.deb',
      `--customize-hook=cp -a '/c/early'/. "$1"/`,
      '--customize-hook=chroot "$1" update-initramfs -c -k all',
      'trixie',
      '/c/root',
      'http://deb.debian.org/debian',
    ]);
  });

  it('uses unshare mode when not root, and adds xfsprogs for an xfs root, no zram generator without zram', async () => {
    const r = await loadRecipe('default', { sets: ['filesystem.root=xfs', 'zram.enabled=false'] });
    const argv = debian.bootstrap(r, { ...ctx, asRoot: false }).steps[0]!.argv;
    expect(argv[1]).toBe('--mode=unshare');
    const inc = argv.find((a) => a.startsWith('--include='))!;
    expect(inc).toContain('xfsprogs');
    expect(inc).not.toContain('zram');
  });

  it('parses dpkg-query output', () => {
    expect(debian.parsePackageList('systemd\t257.8-1\nudev\t257.8-1\n')).toEqual({ systemd: '257.8-1', udev: '257.8-1' });
    expect(debian.packageListCommand('/r').argv).toEqual(['dpkg-query', '--root=/r', '-W', '-f=${Package}\\t${Version}\\n']);
  });
});

describe('arch module', () => {
  it('runs pacstrap with a generated pacman.conf, as archiso does', async () => {
    const r = await loadRecipe('default', { sets: ['base.distro=arch', 'base.suite=rolling', 'base.packages=["htop"]'] });
    expect(r.base.mirror).toBe('https://geo.mirror.pkgbuild.com');
    const plan = arch.bootstrap(r, ctx);
    expect(plan.steps.map((s) => s.argv)).toEqual([
      ['cp', '-a', '/c/early/.', '/c/root/'],
      ['pacstrap', '-C', '/c/work/pacman.conf', '-c', '-G', '-M', '/c/root', 'base', 'linux', 'mkinitcpio', 'mkinitcpio-archiso', 'systemd', 'iproute2', 'zstd', 'e2fsprogs', 'zram-generator', 'nodejs', 'htop'],
    ]);
    expect(plan.files['/c/work/pacman.conf']).toBe(pacmanConf('https://geo.mirror.pkgbuild.com', '/c/pkgs'));
    const conf = plan.files['/c/work/pacman.conf']!;
    expect(conf).toContain('CacheDir = /c/pkgs/');
    expect(conf).toContain('[core]\nServer = https://geo.mirror.pkgbuild.com/$repo/os/$arch');
    expect(conf).toContain('[extra]\nServer = https://geo.mirror.pkgbuild.com/$repo/os/$arch');
    expect(conf).toMatch(/^NoExtract = .*usr\/share\/man\/\*/m);
    expect(arch.hostTools(r)).toEqual(['pacstrap', 'arch-chroot', 'pacman']);
  });

  it('rejects a suite for the rolling distro', async () => {
    await expect(loadRecipe('default', { sets: ['base.distro=arch'] })).rejects.toBeInstanceOf(RecipeError);
  });

  it('parses pacman -Q output', () => {
    expect(arch.parsePackageList('linux 6.12.1.arch1-1\nsystemd 257.1-1\n')).toEqual({ linux: '6.12.1.arch1-1', systemd: '257.1-1' });
  });
});
