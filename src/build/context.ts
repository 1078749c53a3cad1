/** Values derived from the recipe that templates and stages share (one place, computed once). */
import { apiCredentials, isLoopback } from '../config/load.js';
import { stringify as stringifyToml } from 'smol-toml';
import { randomUUID } from 'node:crypto';
import type { Recipe, ResolvedRecipe } from '../config/schema.js';
import { derivedUuid } from '../util/hash.js';
import { workerFiles } from '../fleet/worker.js';
import { wgNetdev, wgNetwork } from '../fleet/wireguard.js';
import { sysupdateSourceUrl } from '../config/update.js';

export interface Identity {
  seed: string;
  diskUuid: string;
  espPartUuid: string;
  rootPartUuid: string;
  rootFsUuid: string;
  /** FAT volume id: 8 hex digits. */
  espVolumeId: string;
}

/**
 * Partition and filesystem identities, derived from image.seed (default: the image name), so that
 * a rebuild gives the same UUIDs (stage caching and reproducible images); "random" gives new ones.
 */
export function identity(r: ResolvedRecipe): Identity {
  const seed = r.image.seed === 'random' ? randomUUID() : (r.image.seed ?? `aios:${r.name}`);
  return {
    seed,
    diskUuid: derivedUuid(seed, 'disk'),
    espPartUuid: derivedUuid(seed, 'esp-partition'),
    rootPartUuid: derivedUuid(seed, 'root-partition'),
    rootFsUuid: derivedUuid(seed, 'root-filesystem'),
    espVolumeId: derivedUuid(seed, 'esp-volume').replace(/-/g, '').slice(0, 8),
  };
}

/** The boot-time tuning arguments the recipe asks for. Warnings go to the caller. */
export function tuningArgs(r: ResolvedRecipe): { args: string[]; warnings: string[] } {
  const args: string[] = [];
  const warnings: string[] = [];
  const t = r.tuning;
  if (t.transparent_hugepage !== 'kernel-default') args.push(`transparent_hugepage=${t.transparent_hugepage}`);
  if (t.preempt !== 'kernel-default') args.push(`preempt=${t.preempt}`);
  if (!t.watchdog) args.push('nowatchdog', 'nmi_watchdog=0');
  if (!t.mitigations) {
    args.push('mitigations=off');
    warnings.push('tuning.mitigations = false: the image boots with mitigations=off (CPU vulnerability mitigations disabled). Only for machines on trusted networks running trusted code.');
  }
  return { args, warnings };
}

/**
 * Adds kernel-wish boot arguments to the recipe's own; an argument the recipe already sets (same
 * name before "=") keeps the recipe's value.
 */
export function mergeArgs(own: string[], extra: string[]): { args: string[]; conflicts: string[] } {
  const key = (a: string) => a.split('=')[0]!;
  const have = new Map(own.map((a) => [key(a), a]));
  const conflicts: string[] = [];
  const add: string[] = [];
  for (const e of extra) {
    const cur = have.get(key(e));
    if (cur === undefined) {
      have.set(key(e), e);
      add.push(e);
    } else if (cur !== e) conflicts.push(`kernel wish ${e} conflicts with the recipe's ${cur}; keeping ${cur}`);
  }
  return { args: [...own, ...add], conflicts };
}

/** SOURCE_DATE_EPOCH (seconds) when set: timestamps aios writes are clamped to it. */
export function sourceDateEpoch(): number | undefined {
  const v = process.env.SOURCE_DATE_EPOCH;
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v)) throw new Error(`SOURCE_DATE_EPOCH must be a number of seconds since 1970, not "${v}"`);
  return Number(v);
}

/** The full kernel command line of the image's boot entry (wishArgs: boot-time kernel wishes). */
export function kernelCmdline(r: ResolvedRecipe, id: Pick<Identity, 'rootPartUuid'>, wishArgs: string[] = []): string {
  return [`root=PARTUUID=${id.rootPartUuid}`, `rootfstype=${r.filesystem.root}`, 'rw', ...cmdlineTail(r, wishArgs)].join(' ');
}

/** The ISO's kernel command line: the distro's live arguments instead of the root partition, the rest as on disk. */
export function liveKernelCmdline(r: ResolvedRecipe, liveArgs: string[], wishArgs: string[] = []): string {
  return [...liveArgs, ...cmdlineTail(r, wishArgs)].join(' ');
}

/** ISO 9660 volume id for the recipe (also what archiso finds the medium by): A-Z 0-9 _, at most 32. */
export function isoLabel(r: Pick<ResolvedRecipe, 'name'>): string {
  return r.name.toUpperCase().replace(/[^A-Z0-9_]/g, '_').slice(0, 32);
}

function cmdlineTail(r: ResolvedRecipe, wishArgs: string[]): string[] {
  return [
    ...r.boot.console.map((c) => `console=${c}`),
    // No interactive first-boot prompts on an unattended machine (locale, timezone are preset).
    'systemd.firstboot=no',
    ...mergeArgs(tuningArgs(r).args, wishArgs).args,
    ...r.boot.cmdline,
  ];
}

export function mountOptions(r: Recipe): string[] {
  return r.filesystem.mount_options ?? (r.filesystem.root === 'ext4' ? ['noatime', 'commit=60'] : ['noatime']);
}

/**
 * Modules for the ISO's live boot, in every initramfs (one rootfs serves the disk and the ISO):
 * the CD (sr_mod, isofs), the squashfs and the overlay over it, loop for live-boot's losetup.
 */
export const LIVE_MODULES = ['sr_mod', 'isofs', 'squashfs', 'overlay', 'loop'];

export function initramfsModules(r: ResolvedRecipe): string[] {
  return [...new Set([...r.boot.initramfs_modules, r.filesystem.root, ...LIVE_MODULES])];
}

/** A layer's adapters as aios-runtime's config lists them ("" = none). */
function adaptersToml(r: ResolvedRecipe, level: 'operational' | 'tactical'): string {
  const m = r.models.find((x) => x.level === level);
  if (!m?.adapters.length) return '';
  return stringifyToml({ models: { [level]: { adapters: m.adapters.map((a) => ({ name: a.name, file: `${m.name}.lora-${a.name}.gguf`, description: a.description, scale: a.scale })) } } });
}

/** Everything the templates can refer to. */
export function templateContext(r: ResolvedRecipe, id: Identity, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ...r,
    distro: r.base.distro,
    sysctl: r.tuning.sysctl,
    initramfsModules: initramfsModules(r),
    rootPartUuid: id.rootPartUuid,
    espPartUuid: id.espPartUuid,
    cmdline: kernelCmdline(r, id, (extra.wishArgs as string[] | undefined) ?? []),
    mountOptions: mountOptions(r),
    operationalModel: r.models.find((m) => m.level === 'operational'),
    tacticalModel: r.models.find((m) => m.level === 'tactical'),
    // Each layer's LoRA adapters as [[models.<level>.adapters]] tables (files installed by the models stage).
    operationalAdaptersToml: adaptersToml(r, 'operational'),
    tacticalAdaptersToml: adaptersToml(r, 'tactical'),
    // Bearer keys on the HTTP API only when it is reachable from other machines (loopback stays open to local processes).
    httpAuth: r.runtime.enabled && r.runtime.tls && !isLoopback(r.runtime.http_listen),
    // The strategic layer: [api] tables as TOML, and the credentials the unit imports for their keys.
    apiToml: Object.keys(r.api).length ? stringifyToml({ api: r.api }) : '',
    apiCredentials: apiCredentials(r),
    // [fleet] role = "worker": ggml-rpc-server's address and arguments, its firewall (nftables text), IPAddressAllow=.
    fleetWorker: r.fleet ? workerFiles(r.fleet) : undefined,
    fleetFirewall: (r.fleet && workerFiles(r.fleet)?.nft) ?? '',
    // fleet.tunnel = "wireguard": networkd's netdev (no private key: a credential) and network for aioswg0.
    wgNetdev: r.fleet.tunnel === 'wireguard' && r.fleet.wireguard ? wgNetdev(r.fleet.wireguard) : '',
    wgNetwork: r.fleet.tunnel === 'wireguard' && r.fleet.wireguard ? wgNetwork(r.fleet.wireguard) : '',
    // A head: its workers as [[runtime.rpc_workers]] tables (memory only when it is set).
    rpcWorkersToml: r.runtime.rpc_workers.length ? stringifyToml({ runtime: { rpc_workers: r.runtime.rpc_workers.map((w) => ({ address: w.address, ...(w.memory ? { memory: w.memory } : {}) })) } }) : '',
    // gpu.driver (docs/gpu.md): aios-gpu.service, and the runtime unit's access to /dev/nvidia*.
    nvidiaDriver: r.gpu.driver !== 'none',
    // llama.gpu = "cuda": the models' gpu_layers = -1 in config.toml (all layers on the GPU where there is one).
    cudaLlama: r.llama.enabled && r.llama.gpu === 'cuda',
    // image.layout = "appliance": the sysupdate transfers' source; Verify=yes only when the build signs (contextWithWishes).
    updateSourceUrl: sysupdateSourceUrl(r.update.source),
    updateVerify: false,
    ...extra,
  };
}
