/** Debian base: mmdebstrap, one initramfs generation, package cache reuse. */
import { join } from 'node:path';
import type { Distro } from './types.js';
import { PKG_ROOT } from '../util/paths.js';
import { kernelVersion, requireFiles } from './common.js';

const EXCLUDES = [
  'path-exclude=/usr/share/man/*',
  'path-exclude=/usr/share/info/*',
  'path-exclude=/usr/share/locale/*',
  'path-include=/usr/share/locale/locale.alias',
  'path-exclude=/usr/share/doc/*',
  'path-include=/usr/share/doc/*/copyright',
  'path-exclude=/usr/share/lintian/*',
];

/**
 * The archive components the root is bootstrapped from: main, and with the NVIDIA driver (gpu.driver,
 * docs/gpu.md) also contrib, non-free and non-free-firmware, which hold the driver, its firmware and
 * the CUDA libraries; every other package is still from main (the manifest's nonfree lists the rest).
 */
export function debianComponents(r: { gpu: { driver: string } }): string[] {
  return r.gpu.driver === 'none' ? ['main'] : ['main', 'contrib', 'non-free', 'non-free-firmware'];
}

/**
 * gpu.driver: the kernel module (open or proprietary) built by DKMS in the image root against the
 * image's own kernel headers (linux-headers-amd64 matches linux-image-amd64), the GSP firmware the
 * open modules load, libcuda1 (the driver's user-space half), nvidia-smi and nvidia-persistenced.
 * llama.gpu = "cuda": the CUDA runtime and cuBLAS that llama.cpp links (the tools tree's toolkit is
 * the same CUDA release).
 */
export function nvidiaPackages(r: { gpu: { driver: string }; llama: { enabled: boolean; gpu: string } }): string[] {
  if (r.gpu.driver === 'none') return [];
  // (linux-headers-amd64 comes after them, from scripts/nvidia-dkms.sh: see there and NVIDIA_DKMS_HOOK.)
  return [
    r.gpu.driver === 'open' ? 'nvidia-open-kernel-dkms' : 'nvidia-kernel-dkms',
    'firmware-nvidia-gsp',
    'libcuda1',
    'nvidia-smi',
    'nvidia-persistenced',
    ...(r.llama.enabled && r.llama.gpu === 'cuda' ? ['libcudart12', 'libcublas12'] : []),
  ];
}

/**
 * The file name Debian's DKMS package gives the nvidia module (its dkms.conf's DEST_MODULE_NAME;
 * modprobe's `install nvidia` rule in the package's modprobe.d maps the upstream name onto it, and
 * the loaded module is still called nvidia).
 */
export const nvidiaModuleFile = (driver: string): string => (driver === 'open' ? 'nvidia-current-open' : 'nvidia-current');

/**
 * gpu.driver: the customize hook that installs the kernel headers, has DKMS build the module for
 * the image's kernel (adapting the one call trixie's 550 driver gets wrong for trixie's current kernel),
 * then removes the build side (DKMS, the driver source, the headers, the compiler) and keeps the modules.
 */
export const NVIDIA_DKMS_HOOK = join(PKG_ROOT, 'scripts', 'nvidia-dkms.sh');

/** Where that hook records the DKMS package it built the module from (package, version, section; tab-separated) before removing it. */
export const NVIDIA_MODULE_SOURCE = 'usr/share/doc/aios/nvidia-module';

/** image.layout = "appliance": the initrd is dracut's (systemd in the initrd), not initramfs-tools'. */
const appliance = (r: { image: { layout: string } }) => r.image.layout === 'appliance';

export const debian: Distro = {
  name: 'debian',
  defaultSuite: 'trixie',
  defaultMirror: 'http://deb.debian.org/debian',
  hostTools: () => ['mmdebstrap'],
  hostToolPackages: { mmdebstrap: 'mmdebstrap' },
  initramfsTool: 'initramfs-tools',
  systemdBootEfi: 'usr/lib/systemd/boot/efi/systemd-bootx64.efi',

  packages(r) {
    const p = [
      'systemd',
      'systemd-sysv',
      'udev',
      'dbus',
      'kmod',
      'e2fsprogs',
      'linux-image-amd64',
      'systemd-boot-efi',
      ...(appliance(r)
        ? [
            // image.layout = "appliance" (docs/appliance.md): an initrd that runs systemd, whose
            // systemd-veritysetup-generator opens the verified root from roothash= (dracut's
            // systemd-veritysetup module; initramfs-tools runs no systemd in the initrd), veritysetup
            // for looking at it on the machine, systemd-repart for the first boot's /var.
            'dracut',
            'systemd-cryptsetup',
            'cryptsetup-bin',
            'systemd-repart',
            // Updates and boot assessment (docs/appliance.md): systemd-sysupdate with systemd-pull
            // (systemd-container in Debian), gpg for its check of SHA256SUMS.gpg, and
            // systemd-bless-boot with its generator (systemd-boot; its hooks need a mounted ESP,
            // so they do nothing in the build's chroot).
            'systemd-container',
            'gpg',
            'systemd-boot',
          ]
        : [
            'initramfs-tools',
            // The ISO's live boot (boot=live): initramfs scripts that mount /live/filesystem.squashfs
            // read-only under a tmpfs overlay. Inert without boot=live, so one rootfs serves both outputs.
            'live-boot',
          ]),
      'zstd',
      'iproute2',
      // nft: Debian's firewall tool, in every standard Debian install (Priority: important; its
      // nftables.service stays disabled). The RPC worker's firewall loads with it
      // (aios-rpc-firewall.service), so a worker and the default image share one root.
      'nftables',
    ];
    if (r.zram.enabled) p.push('systemd-zram-generator');
    if (r.filesystem.root === 'xfs') p.push('xfsprogs');
    if (r.llama.enabled) p.push('libgomp1', 'libstdc++6'); // llama.cpp's OpenMP and C++ runtime
    p.push(...nvidiaPackages(r));
    if (r.runtime.enabled) p.push('nodejs'); // aios-runtime (trixie: Node.js 20); the model sandbox uses util-linux's unshare and setpriv, and perl-base runs notify-exec (both essential)
    return [...new Set([...p, ...r.base.packages])];
  },

  bootstrap(r, ctx) {
    const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const argv = [
      'mmdebstrap',
      `--mode=${ctx.asRoot ? 'root' : 'unshare'}`,
      '--variant=minbase',
      '--arch=amd64',
      `--components=${debianComponents(r).join(',')}`,
      `--include=${debian.packages(r).join(',')}`,
      '--dpkgopt=force-unsafe-io',
      ...EXCLUDES.map((e) => `--dpkgopt=${e}`),
      '--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata',
      // Reuse downloaded .debs across builds.
      '--skip=download/empty',
      '--skip=essential/unlink',
      `--setup-hook=mkdir -p "$1"/var/cache/apt/archives/`,
      `--setup-hook=sync-in ${q(ctx.pkgCache)} /var/cache/apt/archives/`,
      // gpu.driver: the headers, then DKMS's build of the NVIDIA module for the image's kernel (before
      // the package cache is synced out, so the headers' .debs are kept too).
      ...(r.gpu.driver !== 'none' ? [`--customize-hook=sh ${q(NVIDIA_DKMS_HOOK)} "$1"`] : []),
      `--customize-hook=sync-out /var/cache/apt/archives ${q(ctx.pkgCache)}`,
      `--customize-hook=rm -f "$1"/var/cache/apt/archives/*.deb "$1"/var/cache/apt/archives/partial/*.deb`,
      // initramfs config first, then the one and only initramfs generation.
      `--customize-hook=cp -a ${q(ctx.earlyFiles)}/. "$1"/`,
      appliance(r)
        ? `--customize-hook=chroot "$1" sh -c 'for d in /usr/lib/modules/*; do v=\${d##*/}; dracut --force --kver "$v" "/boot/initrd.img-$v" || exit 1; done'`
        : `--customize-hook=chroot "$1" update-initramfs -c -k all`,
      r.base.suite,
      ctx.root,
      r.base.mirror,
    ];
    // INITRD=No makes the kernel's postinst skip initramfs generation during package install.
    return { steps: [{ title: 'mmdebstrap', argv, env: { INITRD: 'No', DEBIAN_FRONTEND: 'noninteractive' } }], files: {} };
  },

  async kernelFiles(root) {
    const version = await kernelVersion(root);
    return requireFiles(root, { version, kernel: `boot/vmlinuz-${version}`, initrd: `boot/initrd.img-${version}` });
  },

  live: {
    squashfs: 'live/filesystem.squashfs',
    initrd: (k) => k.initrd,
    // live-boot scans block devices (CD, USB, virtio) for /live/filesystem.squashfs.
    cmdline: () => ['boot=live'],
  },

  components: debianComponents,
  nonfreeCommand: (root) => ({ title: 'list non-free packages', argv: ['dpkg-query', `--root=${root}`, '-W', '-f=${Package}\\t${Version}\\t${Section}\\n'] }),
  parseNonfree(stdout) {
    const out: Record<string, string> = {};
    for (const line of stdout.split('\n')) {
      const [n, v, section] = line.split('\t');
      if (n && v && /^(non-free|non-free-firmware|contrib)\//.test(section ?? '')) out[n] = v;
    }
    return out;
  },
  packageListCommand: (root) => ({ title: 'list packages', argv: ['dpkg-query', `--root=${root}`, '-W', '-f=${Package}\\t${Version}\\n'] }),
  parsePackageList(stdout) {
    const out: Record<string, string> = {};
    for (const line of stdout.split('\n')) {
      const [n, v] = line.split('\t');
      if (n && v) out[n] = v;
    }
    return out;
  },
};
