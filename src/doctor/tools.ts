/**
 * Every host command a build, a boot test, a flash or a kernel build runs, grouped by what needs it,
 * with the Debian package (as the stages' own checks name it: src/build/stages/*.ts check(),
 * src/build/llama.ts, src/kernel/build.ts, src/flash/) and Arch's. test/unit/doctor.test.ts runs the
 * stages' checks on an empty PATH and fails when they name a tool or package this table lacks.
 */
import type { ResolvedRecipe } from '../config/schema.js';
import { distroFor } from '../distros/index.js';
import { baseWantsBtf } from '../kernel/build.js';
import type { Purpose } from './types.js';
import { TOOLS_TREE_HOST_TOOLS } from '../build/tools-tree.js';

export interface Tool {
  /** A command on PATH, or an absolute path of a file that must exist (a header). */
  cmd: string;
  debian: string;
  arch?: string;
}

export interface ToolGroup {
  id: string;
  title: string;
  /** What cannot run without these tools. */
  purpose: Purpose;
  tools(r: ResolvedRecipe): Tool[];
  /** Whether a build of this recipe runs these tools (a missing one is then a problem, else a warning). */
  forBuild(r: ResolvedRecipe): boolean;
}

/** Arch packages of the Debian packages below (where Arch has them under another name). */
const ARCH: Record<string, string> = {
  mmdebstrap: 'mmdebstrap',
  'arch-install-scripts': 'arch-install-scripts',
  cmake: 'cmake',
  'ninja-build': 'ninja',
  'g++': 'gcc',
  gcc: 'gcc',
  git: 'git',
  npm: 'npm',
  coreutils: 'coreutils',
  openssl: 'openssl',
  fdisk: 'util-linux',
  'util-linux': 'util-linux',
  dosfstools: 'dosfstools',
  mtools: 'mtools',
  e2fsprogs: 'e2fsprogs',
  xfsprogs: 'xfsprogs',
  'squashfs-tools': 'squashfs-tools',
  'erofs-utils': 'erofs-utils',
  'cryptsetup-bin': 'cryptsetup',
  xorriso: 'libisoburn',
  make: 'make',
  binutils: 'binutils',
  bc: 'bc',
  flex: 'flex',
  bison: 'bison',
  perl: 'perl',
  ccache: 'ccache',
  'xz-utils': 'xz',
  dpkg: 'dpkg',
  apt: 'apt',
  cpio: 'cpio',
  dwarves: 'pahole',
  'libelf-dev': 'libelf',
  'libssl-dev': 'openssl',
  zstd: 'zstd',
  'qemu-system-x86': 'qemu-system-x86',
  ovmf: 'edk2-ovmf',
  'python3-numpy': 'python-numpy',
};

const t = (cmd: string, debian: string): Tool => ({ cmd, debian, ...(ARCH[debian] ? { arch: ARCH[debian] } : {}) });

export const TOOL_GROUPS: ToolGroup[] = [
  {
    id: 'tools.rootfs',
    title: 'rootfs tools',
    purpose: 'build',
    forBuild: () => true,
    tools(r) {
      const d = distroFor(r.base.distro);
      // The distro module names its bootstrap tools and their Debian packages; pacman on Debian is
      // pacman-package-manager (+ archlinux-keyring), on Arch pacman.
      return d.hostTools(r).map((cmd) => {
        const debian = (d.hostToolPackages[cmd] ?? cmd).split(' ')[0]!;
        return { ...t(cmd, debian), ...(cmd === 'pacman' ? { arch: 'pacman' } : {}) };
      });
    },
  },
  {
    id: 'tools.llama',
    title: 'llama.cpp build tools',
    purpose: 'build',
    forBuild: (r) => r.llama.enabled,
    tools(r) {
      const l = r.llama;
      const fetch = [t('git', 'git'), ...(l.source.type === 'npm' ? [t('npm', 'npm')] : [])];
      // llama.toolchain = "tools-tree": the compilers are in the tree (src/build/tools-tree.ts), the host
      // needs only what makes and enters it, as llamaHostProblems() says.
      if (l.toolchain === 'tools-tree') return [...fetch, ...Object.entries(TOOLS_TREE_HOST_TOOLS).map(([cmd, pkg]) => t(cmd, pkg))];
      // (llama.gpu = "cuda" is always built in the tools tree: the recipe check refuses it here.)
      return [t('cmake', 'cmake'), t('ninja', 'ninja-build'), t('g++', 'g++'), t('gcc', 'gcc'), ...fetch];
    },
  },
  {
    id: 'tools.overlay',
    title: 'overlay tools',
    purpose: 'build',
    forBuild: () => true,
    tools: (r) => [
      t('cp', 'coreutils'),
      t('chroot', 'coreutils'),
      ...(r.runtime.enabled && r.runtime.tls ? [t('openssl', 'openssl')] : []),
      // The image's bench entry point: triad.c compiled (static) on the host.
      ...(r.llama.enabled ? [t('cc', 'gcc')] : []),
    ],
  },
  {
    id: 'tools.image',
    title: 'disk image tools',
    purpose: 'build',
    forBuild: (r) => r.image.formats.includes('disk'),
    tools: (r) => [
      t('sfdisk', 'fdisk'),
      t('mkfs.vfat', 'dosfstools'),
      t('mcopy', 'mtools'),
      t('mmd', 'mtools'),
      t('mkfs.ext4', 'e2fsprogs'),
      t('debugfs', 'e2fsprogs'),
      t('truncate', 'coreutils'),
      t('dd', 'coreutils'),
      ...(r.filesystem.root === 'xfs' ? [t('mkfs.xfs', 'xfsprogs')] : []),
      // image.layout = "appliance" (docs/appliance.md): the read-only root and its dm-verity hash tree.
      ...(r.image.layout === 'appliance' ? [r.image.readonly_fs === 'erofs' ? t('mkfs.erofs', 'erofs-utils') : t('mksquashfs', 'squashfs-tools'), t('veritysetup', 'cryptsetup-bin')] : []),
    ],
  },
  {
    id: 'tools.iso',
    title: 'live ISO tools',
    purpose: 'build',
    forBuild: (r) => r.image.formats.includes('iso'),
    tools: () => [t('mksquashfs', 'squashfs-tools'), t('unsquashfs', 'squashfs-tools'), t('xorriso', 'xorriso'), t('mkfs.vfat', 'dosfstools'), t('mcopy', 'mtools')],
  },
  {
    id: 'tools.kernel',
    title: 'kernel build tools',
    purpose: 'kernel-build',
    forBuild: (r) => r.kernel.build,
    tools: (r) => [
      t('make', 'make'),
      t('gcc', 'gcc'),
      t('ld', 'binutils'),
      t('bc', 'bc'),
      t('flex', 'flex'),
      t('bison', 'bison'),
      t('perl', 'perl'),
      t('ccache', 'ccache'),
      t('xz', 'xz-utils'),
      t('dpkg-deb', 'dpkg'),
      t('apt-get', 'apt'),
      t('cpio', 'cpio'),
      t('unshare', 'util-linux'),
      ...(baseWantsBtf(r.kernel) ? [t('pahole', 'dwarves')] : []),
      t('/usr/include/gelf.h', 'libelf-dev'),
      t('/usr/include/openssl/opensslv.h', 'libssl-dev'),
    ],
  },
  {
    id: 'tools.flash',
    title: 'flash tools',
    purpose: 'flash',
    forBuild: () => false,
    tools: () => [
      t('sfdisk', 'fdisk'),
      t('blockdev', 'util-linux'),
      t('dd', 'coreutils'),
      t('zstd', 'zstd'),
      t('xz', 'xz-utils'),
      t('losetup', 'util-linux'),
      t('blkid', 'util-linux'),
      t('e2fsck', 'e2fsprogs'),
      t('resize2fs', 'e2fsprogs'),
    ],
  },
];

/** Arch's package for a Debian package, where known. */
export const archPackage = (debian: string): string | undefined => ARCH[debian];
