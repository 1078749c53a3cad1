import type { Recipe, ResolvedRecipe } from '../config/schema.js';

export interface Command {
  argv: string[];
  env?: Record<string, string>;
  /** What this step does, for progress output. */
  title: string;
}

export interface BootstrapContext {
  /** Target root directory (does not exist yet for debian; exists and is empty for arch). */
  root: string;
  /** Persistent package cache for this distro (reused across builds). */
  pkgCache: string;
  /** Directory whose contents are copied into the root before the initramfs is generated. */
  earlyFiles: string;
  /** Scratch directory for generated config (pacman.conf, …). */
  work: string;
  /** Whether we run as root (mmdebstrap --mode=root) or not (--mode=unshare). */
  asRoot: boolean;
}

export interface BootstrapPlan {
  steps: Command[];
  /** Files to write before running the steps (path → content), e.g. a generated pacman.conf. */
  files: Record<string, string>;
}

export interface KernelFiles {
  version: string;
  /** Paths inside the root. */
  kernel: string;
  initrd: string;
}

/** What the build needs to know about a base distribution. Everything distro-specific lives behind this. */
export interface Distro {
  name: 'debian' | 'arch';
  defaultSuite: string;
  defaultMirror: string;
  /** Host commands the bootstrap needs (checked before anything is built). */
  hostTools(r: ResolvedRecipe): string[];
  /** Debian packages that provide those tools, for error messages. */
  hostToolPackages: Record<string, string>;
  /** All packages installed into the root (base + kernel + boot loader + initramfs tool + recipe extras). */
  packages(r: ResolvedRecipe): string[];
  /** The exact commands that create the root. */
  bootstrap(r: ResolvedRecipe, ctx: BootstrapContext): BootstrapPlan;
  /** Where early files go for the initramfs tool (relative to root) — rendered from templates/bootstrap. */
  initramfsTool: 'initramfs-tools' | 'mkinitcpio';
  /** The systemd-boot EFI binary inside the root. */
  systemdBootEfi: string;
  /** Locate kernel and initrd in a finished root. */
  kernelFiles(root: string): Promise<KernelFiles>;
  /** Extra recipe checks only this distro knows about. */
  validate?(r: Recipe): { path: string; message: string }[];
  /**
   * Live (ISO) boot: the squashfs's path on the ISO, the initramfs that finds it (inside the root),
   * and the kernel arguments that make it do so (label: the ISO volume id).
   */
  live: {
    squashfs: string;
    initrd(k: KernelFiles): string;
    cmdline(label: string): string[];
  };
  /** Archive components the root comes from (Debian: main, and non-free for gpu.driver); absent: one set only. */
  components?(r: ResolvedRecipe): string[];
  /** The command that lists installed packages with their archive section, for the manifest's nonfree. */
  nonfreeCommand?(root: string): Command;
  /** Parse that command's output into name → version of the packages outside the free archive. */
  parseNonfree?(stdout: string): Record<string, string>;
  /** The command that lists installed packages with versions (run against the root). */
  packageListCommand(root: string): Command;
  /** Parse that command's output into name → version. */
  parsePackageList(stdout: string): Record<string, string>;
}
