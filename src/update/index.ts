/**
 * `aios update status|check|apply` on an appliance machine (image.layout = "appliance";
 * docs/appliance.md). A thin layer over systemd's own updater: `check` and `apply` run
 * systemd-sysupdate with the image's transfers (/usr/lib/sysupdate.d), `status` reads what
 * systemd-boot's boot counting and systemd-bless-boot left in the ESP and the GPT (status.ts).
 * Machine side: imports nothing from the build.
 */
import { execa } from 'execa';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { UserError } from '../util/errors.js';
import { GPT_TYPES } from '../util/gpt.js';
import { summarize, type UpdateFacts, type UpdateStatus } from './status.js';

export const SYSUPDATE = '/usr/lib/systemd/systemd-sysupdate';
export const TRANSFERS = '/usr/lib/sysupdate.d';
const LOADER_GUID = '4a67b082-0a4c-41cf-b6c7-440b29bb8c4f';

export interface MachinePaths {
  root: string;
  efivars: string;
  sysupdate: string;
}
export const MACHINE: MachinePaths = { root: '/', efivars: '/sys/firmware/efi/efivars', sysupdate: SYSUPDATE };

/** Refuses on a machine that is not an appliance image, naming what is missing. */
export function requireAppliance(p: MachinePaths = MACHINE): void {
  const transfers = join(p.root, TRANSFERS);
  if (!existsSync(p.sysupdate) || !existsSync(transfers)) {
    throw new UserError(
      `this machine cannot be updated in place: ${!existsSync(p.sysupdate) ? `${p.sysupdate} is missing` : `${transfers} is missing`} (aios update works on images built with image.layout = "appliance"; a plain image is rebuilt and flashed instead)`,
      2,
    );
  }
}

/** An EFI variable of systemd-boot as text (4 bytes of attributes, then NUL-terminated UTF-16LE). */
export function readLoaderVar(efivars: string, name: string): string | undefined {
  try {
    const b = readFileSync(join(efivars, `${name}-${LOADER_GUID}`));
    return b.subarray(4).toString('utf16le').replace(/\0+$/, '');
  } catch {
    return undefined;
  }
}

/** IMAGE_VERSION from the root's os-release. */
export function osReleaseVersion(root: string): string | undefined {
  for (const f of ['etc/os-release', 'usr/lib/os-release']) {
    try {
      const m = /^IMAGE_VERSION=["']?([^"'\n]*)["']?$/m.exec(readFileSync(join(root, f), 'utf8'));
      if (m) return m[1];
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** The ESP's mount point: where loader/entries is (the image mounts it on /boot/efi). */
export function findEsp(root: string): string | undefined {
  return ['boot/efi', 'efi', 'boot'].map((d) => join(root, d)).find((d) => existsSync(join(d, 'loader/entries')));
}

/** The transfers' source and whether they verify signatures (from the root transfer, 10-aios-root). */
export function transferSource(root: string): { source?: string; verify?: boolean } {
  try {
    const t = readFileSync(join(root, TRANSFERS, '10-aios-root.transfer'), 'utf8');
    const source = /^\[Source\][\s\S]*?^Path=(.*)$/m.exec(t)?.[1]?.trim();
    const v = /^Verify=(\S+)/m.exec(t)?.[1];
    return { ...(source ? { source } : {}), ...(v ? { verify: v === 'yes' } : {}) };
  } catch {
    return {};
  }
}

/** Labels of every root partition (any disk: the slots are on the one the machine booted). */
async function rootSlotLabels(): Promise<string[]> {
  const r = await execa('lsblk', ['-J', '-o', 'PATH,PARTTYPE,PARTLABEL'], { reject: false });
  if (r.exitCode !== 0) return [];
  const devs = (JSON.parse(r.stdout) as { blockdevices: { path: string; parttype?: string | null; partlabel?: string | null; children?: unknown[] }[] }).blockdevices;
  const out: string[] = [];
  const walk = (list: typeof devs) => {
    for (const d of list) {
      if (d.parttype?.toLowerCase() === GPT_TYPES.rootX86_64.toLowerCase() && d.partlabel) out.push(d.partlabel);
      if (d.children) walk(d.children as typeof devs);
    }
  };
  walk(devs);
  return out;
}

export async function readFacts(p: MachinePaths = MACHINE, slots: () => Promise<string[]> = rootSlotLabels): Promise<UpdateFacts> {
  const esp = findEsp(p.root);
  let entries: string[] = [];
  if (esp) entries = readdirSync(join(esp, 'loader/entries')).filter((f) => f.endsWith('.conf'));
  const selected = readLoaderVar(p.efivars, 'LoaderEntrySelected');
  const count = readLoaderVar(p.efivars, 'LoaderBootCountPath');
  const v = osReleaseVersion(p.root);
  return {
    ...(v !== undefined ? { bootedVersion: v } : {}),
    entries,
    slots: await slots(),
    ...(selected ? { selectedEntry: selected } : {}),
    ...(count ? { bootCountPath: count } : {}),
    ...transferSource(p.root),
  };
}

export async function updateStatus(p: MachinePaths = MACHINE): Promise<UpdateStatus> {
  requireAppliance(p);
  return summarize(await readFacts(p));
}

/**
 * systemd-sysupdate check-new: exit 0 and the version on stdout when the source has a newer one
 * than installed, exit 1 and nothing when it has none (systemd 257). Anything else is an error
 * (no source, bad signature), said with sysupdate's own words.
 */
export async function updateCheck(p: MachinePaths = MACHINE): Promise<{ available?: string; detail: string }> {
  requireAppliance(p);
  const r = await execa(p.sysupdate, ['check-new'], { reject: false, all: true, env: { SYSTEMD_LOG_LEVEL: 'info', SYSTEMD_COLORS: '0' } });
  const version = r.stdout.trim().split('\n').pop()?.trim();
  const said = String(r.stderr ?? '').trim();
  const source = transferSource(p.root).source ?? 'the source';
  if (r.exitCode === 0 && version) return { available: version, detail: `version ${version} at ${source}${/Signature verification succeeded/.test(said) ? ', signature verified' : ''}` };
  if (r.exitCode === 1 && !/Failed|failed|error|Error|did not check out/.test(said)) return { detail: `nothing newer than installed at ${source}` };
  throw new UserError(`systemd-sysupdate check-new failed (exit ${r.exitCode}): ${said.split('\n').slice(-4).join(' / ') || 'no output'}`, 1);
}

/**
 * systemd-sysupdate update [version]: the new root, verity, kernel, initrd and (last) boot entry
 * written to the free slot and the ESP, checked against the signed SHA256SUMS. Its output goes to
 * this terminal. With `reboot` sysupdate reboots when it installed something newer.
 */
export async function updateApply(o: { version?: string; reboot?: boolean }, p: MachinePaths = MACHINE): Promise<number> {
  requireAppliance(p);
  if (o.version !== undefined && !/^[A-Za-z0-9._~^-]+$/.test(o.version)) throw new UserError(`bad version "${o.version}": letters, digits and . _ ~ ^ - only`, 2);
  if (process.getuid?.() !== 0) throw new UserError('aios update apply writes the disk\'s free slot and the ESP: run it as root', 2);
  const args = ['update', ...(o.version ? [o.version] : []), ...(o.reboot ? ['--reboot'] : [])];
  const r = await execa(p.sysupdate, args, { reject: false, stdio: 'inherit', env: { SYSTEMD_COLORS: '0' } });
  return r.exitCode ?? 1;
}
