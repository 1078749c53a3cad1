/**
 * The manifest `build()` publishes next to every output (out/<name>.manifest.json beside
 * out/<name>.raw, out/<name>.iso.manifest.json beside out/<name>.iso): its type, where it lives and
 * how to read it. The writer is `build()` (src/build/index.ts); qemu-test reads it to pick the CPU
 * model, check the models and probe the runtime.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { WishResult } from '../kernel/check.js';
import type { Identity } from './context.js';
import type { Isa } from './llama.js';
import type { KernelBuildInfo } from './stages/kernel.js';

export interface ManifestModel {
  name: string;
  level?: string;
  source?: string;
  /** File name under /var/lib/aios/models. */
  file: string;
  sha256: string;
  bytes: number;
  info?: unknown;
}

export interface Manifest {
  name: string;
  /** Recipe files, most derived first. */
  recipe: string[];
  recipeHash: string;
  created: string;
  distro: { name: string; suite: string; mirror: string };
  format: 'disk' | 'iso';
  kernel: {
    version: string;
    cmdline: string;
    fragments: string[];
    wishes: WishResult[];
    /** With kernel.build = true: where the custom kernel came from (source package and version, base config, release, compiler). */
    build?: Omit<KernelBuildInfo, 'check'>;
  };
  identity: Identity;
  image: { file: string; bytes: number; sha256: string };
  /** sfdisk --json partitions (empty for the ISO). */
  partitions: unknown[];
  iso?: { label: string; squashfs: { path: string; bytes: number; sha256: string }; efiImage: unknown; initrd: unknown };
  /** Stage names and cache keys only (timings are in the build result), so equal inputs give an equal manifest. */
  stages: { name: string; key: string }[];
  /** llama.json of the llama stage (plus the version seen inside the root), or null without llama.cpp. */
  llama: ({ isa: Isa; cmake?: string[]; version?: string; versionInTarget?: string } & Record<string, unknown>) | null;
  /** What qemu-test needs to probe aios-runtime in the guest, or null when the runtime is off. */
  runtime: {
    enabled: boolean;
    listen: string;
    http_listen?: string;
    /** Listeners beyond loopback left without authentication on purpose (runtime.insecure_listen). */
    insecure_listen?: boolean;
    /** The image's certificates (public parts only; keys never appear here): SHA-256 fingerprints and the server's names. */
    tls?: { ca: string; server: string; sans: string[]; pki?: string };
    probe?: { prompt: string; grammar?: string; expect: string };
  } | null;
  models: ManifestModel[];
  /** [fleet] role = "worker" (docs/fleets.md): where its ggml-rpc-server listens and who may connect; absent otherwise. */
  fleet?: { role: 'worker'; listen: string; heads: string[]; interface?: string };
  /** Installed packages and their versions. */
  packages: Record<string, string>;
  /** Of those, the ones from Debian's contrib, non-free and non-free-firmware (gpu.driver: the NVIDIA driver and CUDA libraries, and the DKMS package the module was compiled from; licensing); absent when none. */
  nonfree?: Record<string, string>;
  /** gpu.driver (docs/gpu.md): the NVIDIA driver, the module version DKMS built for `kernel`, the DKMS package it was built from (removed from the image after the build), and a CUDA llama.cpp's architectures. */
  gpu?: { driver: string; module: string; kernel: string; source?: string; cudaArch?: number[]; flashAttention?: boolean };
}

/** The manifest next to an output: out/<name>.manifest.json for the disk, out/<name>.iso.manifest.json for the ISO. */
export function manifestPath(output: string): string {
  return output.replace(/\.raw$/, '') + '.manifest.json';
}

/**
 * Reads a manifest. Fields are optional on this side: a manifest written by an older aios may
 * lack some, and readers must cope (a missing manifest is `undefined`).
 */
export async function readManifest(path: string): Promise<Partial<Manifest> | undefined> {
  return existsSync(path) ? (JSON.parse(await readFile(path, 'utf8')) as Partial<Manifest>) : undefined;
}
