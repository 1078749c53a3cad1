/**
 * `aios kernel check`: for every wish, does the kernel honour it?
 * - against a source tree: merge the fragments onto a base config with the kernel's own
 *   merge_config.sh + `make olddefconfig`, then explain every difference;
 * - against a plain .config (a stock kernel): already on / reachable at boot / needs a rebuild.
 */
import { copyFile, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../util/exec.js';
import { safeRemove } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { parseConfig, readConfig, readConfigText, type Wish } from './config.js';
import { readKconfig, unmetDeps, type KconfigDb } from './kconfig.js';

export type Status =
  | 'applied' // source tree: the final .config has it
  | 'already' // plain .config: the kernel already has it
  | 'at-boot' // plain .config: reachable with a kernel command-line argument
  | 'needs-rebuild'
  | 'nonexistent' // no such symbol in this kernel
  | 'unmet-dependency'
  | 'overridden-by-choice'
  | 'not-applied'; // dropped for another reason (no prompt, forced by a select, …)

export interface WishResult extends Wish {
  status: Status;
  /** What the kernel has (undefined: not in the .config at all). */
  actual?: string;
  detail: string;
  /** Kernel command-line arguments that realise it at boot (status at-boot). */
  bootArgs?: string[];
  hint?: string;
}

/** Symbols that moved or vanished, with what to do instead. */
export const RENAMES: Record<string, { to?: string; note: string }> = {
  SCHED_EEVDF: { note: 'no such option: EEVDF replaced CFS in Linux 6.6 and is always on, so every 6.6+ kernel already schedules with it' },
  SPECULATION_MITIGATIONS: { to: 'CPU_MITIGATIONS', note: 'renamed to CONFIG_CPU_MITIGATIONS in Linux 6.9' },
  CPU_FREQ_DEFAULT_GOV_ONDEMAND: { note: 'still exists, but schedutil is the usual default since 5.x' },
};

/** Wishes a stock kernel can honour without a rebuild: symbol=value → boot arguments (if the kernel allows). */
const BOOT: { symbol: string; value: string; args: string[]; requires: [string, string][]; note?: string }[] = [
  { symbol: 'PREEMPT_VOLUNTARY', value: 'y', args: ['preempt=voluntary'], requires: [['PREEMPT_DYNAMIC', 'y']] },
  { symbol: 'PREEMPT', value: 'y', args: ['preempt=full'], requires: [['PREEMPT_DYNAMIC', 'y']] },
  { symbol: 'PREEMPT_NONE', value: 'y', args: ['preempt=none'], requires: [['PREEMPT_DYNAMIC', 'y']] },
  { symbol: 'TRANSPARENT_HUGEPAGE_MADVISE', value: 'y', args: ['transparent_hugepage=madvise'], requires: [['TRANSPARENT_HUGEPAGE', 'y']] },
  { symbol: 'TRANSPARENT_HUGEPAGE_ALWAYS', value: 'y', args: ['transparent_hugepage=always'], requires: [['TRANSPARENT_HUGEPAGE', 'y']] },
  { symbol: 'TRANSPARENT_HUGEPAGE', value: 'n', args: ['transparent_hugepage=never'], requires: [] },
  { symbol: 'CPU_FREQ_DEFAULT_GOV_PERFORMANCE', value: 'y', args: ['cpufreq.default_governor=performance'], requires: [['CPU_FREQ_GOV_PERFORMANCE', 'y']] },
  { symbol: 'CPU_MITIGATIONS', value: 'n', args: ['mitigations=off'], requires: [] },
  { symbol: 'SPECULATION_MITIGATIONS', value: 'n', args: ['mitigations=off'], requires: [] },
  { symbol: 'NUMA', value: 'n', args: ['numa=off'], requires: [['NUMA', 'y']] },
];

/** Wishes that are "on" in the config but only do something with a boot argument. */
const NEEDS_ARG: Record<string, string> = {
  NO_HZ_FULL: 'compiled in, but only active for the CPUs given with nohz_full=<cpus> (keep one housekeeping CPU), which depends on the target machine',
};

/** Against a plain .config: already / at-boot / needs-rebuild / nonexistent. */
export function classifyAgainstConfig(wishes: Wish[], cfg: Map<string, string>): WishResult[] {
  return wishes.map((w) => {
    const actual = cfg.get(w.symbol);
    const rename = RENAMES[w.symbol];
    if (actual === w.value || (actual === undefined && w.value === 'n' && !rename)) {
      return { ...w, status: 'already', actual, detail: NEEDS_ARG[w.symbol] ?? 'the kernel already has it' };
    }
    const boot = BOOT.find((b) => b.symbol === w.symbol && b.value === w.value);
    const bootOk = boot && boot.requires.every(([s, v]) => cfg.get(s) === v);
    if (actual === undefined && rename) {
      const renamedOk = rename.to && boot && bootOk;
      return {
        ...w,
        status: renamedOk ? 'at-boot' : 'nonexistent',
        actual,
        detail: rename.note + (renamedOk ? `; its wish is reachable at boot with ${boot!.args.join(' ')}` : ''),
        hint: rename.to ? `use CONFIG_${rename.to}` : undefined,
        bootArgs: renamedOk ? boot!.args : undefined,
      };
    }
    if (boot && bootOk) return { ...w, status: 'at-boot', actual, bootArgs: boot.args, detail: `kernel has ${actual ?? 'it unset'}; ${boot.args.join(' ')} on the command line gives the same behaviour` };
    if (boot && !bootOk) {
      const missing = boot.requires.filter(([s, v]) => cfg.get(s) !== v).map(([s, v]) => `CONFIG_${s}=${v}`);
      return { ...w, status: 'needs-rebuild', actual, detail: `${boot.args.join(' ')} would need ${missing.join(', ')}, which this kernel lacks` };
    }
    if (actual === undefined) return { ...w, status: 'needs-rebuild', actual, detail: 'not in this .config (the symbol may not exist, or its dependencies are off): check against a source tree' };
    return { ...w, status: 'needs-rebuild', actual, detail: `kernel has ${w.symbol}=${actual}; no boot-time equivalent` };
  });
}

/** Explains each wish against the final .config that olddefconfig produced. */
export function classifyAgainstTree(wishes: Wish[], final: Map<string, string>, db: KconfigDb): WishResult[] {
  return wishes.map((w) => {
    const actual = final.get(w.symbol);
    const def = db.symbols.get(w.symbol);
    if (!def) {
      const rename = RENAMES[w.symbol];
      return { ...w, status: 'nonexistent', actual, detail: rename?.note ?? `no "config ${w.symbol}" in this kernel's Kconfig files`, hint: rename?.to ? `use CONFIG_${rename.to}` : undefined };
    }
    if ((actual ?? 'n') === w.value) return { ...w, status: 'applied', actual, detail: NEEDS_ARG[w.symbol] ?? 'in the final .config' };
    const unmet = unmetDeps(def, final);
    if (unmet.length) {
      return { ...w, status: 'unmet-dependency', actual, detail: `depends on ${unmet.map((u) => u.expr + (u.off.length ? ` (off: ${u.off.join(', ')})` : '')).join('; ')}` };
    }
    if (def.choice !== undefined && w.value === 'y') {
      const winner = db.choices.get(def.choice)!.find((s) => s !== w.symbol && final.get(s) === 'y');
      if (winner) return { ...w, status: 'overridden-by-choice', actual, detail: `another member of its choice is set: CONFIG_${winner}=y (two fragments ask for different members?)` };
    }
    if (w.value === 'n') {
      const by = (db.selectedBy.get(w.symbol) ?? []).filter((s) => (final.get(s) ?? 'n') !== 'n');
      if (by.length) return { ...w, status: 'not-applied', actual, detail: `forced on by select from ${by.slice(0, 5).map((s) => `CONFIG_${s}`).join(', ')}${by.length > 5 ? ', …' : ''}` };
    }
    if (!def.prompt) {
      return { ...w, status: 'not-applied', actual, detail: `CONFIG_${w.symbol} has no prompt: its value follows from other options (e.g. a choice such as CONFIG_HZ_300 for CONFIG_HZ), so setting it directly is ignored` };
    }
    return { ...w, status: 'not-applied', actual, detail: `olddefconfig set it to ${actual ?? 'unset'}` };
  });
}

export interface CheckOptions {
  /** A kernel source tree (its Kconfig files and scripts/kconfig). */
  source?: string;
  /** A .config (plain, .gz or .xz): the stock kernel's; with --source, the base to merge onto. */
  config?: string;
  log?: string;
}

export interface CheckResult {
  mode: 'source' | 'config';
  base?: string;
  results: WishResult[];
  /** Boot arguments that realise every at-boot wish. */
  bootArgs: string[];
  unmet: number;
}

export const MET: Status[] = ['applied', 'already', 'at-boot'];

/** A fragment with exactly these wishes (what merge_config.sh reads). */
export function wishesFragment(wishes: Wish[]): string {
  return wishes.map((w) => (w.value === 'n' ? `# CONFIG_${w.symbol} is not set` : `CONFIG_${w.symbol}=${/^[ymn]$|^-?\d+$|^0x/.test(w.value) ? w.value : JSON.stringify(w.value)}`)).join('\n') + '\n';
}

export interface MergeOptions {
  /** Kernel source tree. */
  source: string;
  /** Build (O=) directory: the merged config is written to <out>/.config. */
  out: string;
  /** The base: a make target of the tree (x86_64_defconfig, defconfig, localmodconfig) or a .config (plain, .gz, .xz). */
  base: { target: string; env?: Record<string, string> } | { config: string };
  /** Fragment files merged in this order after the base (later ones win). */
  fragments: string[];
  /** The wishes, merged last as one fragment (their comments are not copied into the .config). */
  wishes: Wish[];
  log?: string;
}

/**
 * The kernel's own way to combine configs: the base, then scripts/kconfig/merge_config.sh -m with
 * the fragments, then `make olddefconfig` (which resolves dependencies, choices and defaults).
 * Returns the final .config.
 */
export async function mergeConfig(o: MergeOptions): Promise<Map<string, string>> {
  await mkdir(o.out, { recursive: true });
  const base = join(o.out, 'base.config');
  if ('config' in o.base) await writeFile(base, await readConfigText(o.base.config));
  else {
    await run(['make', '-s', '-C', o.source, `O=${o.out}`, o.base.target], { log: o.log, env: { ...process.env, ...o.base.env } as Record<string, string> });
    await copyFile(join(o.out, '.config'), base);
  }
  const frag = join(o.out, 'wishes.config');
  await writeFile(frag, wishesFragment(o.wishes));
  await run(['sh', join(o.source, 'scripts/kconfig/merge_config.sh'), '-m', '-O', o.out, base, ...o.fragments, frag], { cwd: o.source, log: o.log });
  await run(['make', '-s', '-C', o.source, `O=${o.out}`, 'olddefconfig'], { log: o.log });
  return parseConfig(await readFile(join(o.out, '.config'), 'utf8'));
}

export async function kernelCheck(wishes: Wish[], o: CheckOptions): Promise<CheckResult> {
  if (!o.source && !o.config) throw new UserError('aios kernel check needs --source <kernel tree> or --config <.config>', 2);
  if (o.source && !existsSync(join(o.source, 'scripts/kconfig/merge_config.sh'))) {
    throw new UserError(`${o.source} is not a kernel source tree (no scripts/kconfig/merge_config.sh)`, 2);
  }
  let results: WishResult[];
  if (o.source) {
    const out = await mkdtemp(join(tmpdir(), 'aios-kconfig-'));
    try {
      // The base: the given config (the distro's), else the tree's defconfig.
      const final = await mergeConfig({ source: o.source, out, base: o.config ? { config: o.config } : { target: 'defconfig' }, fragments: [], wishes, log: o.log });
      results = classifyAgainstTree(wishes, final, await readKconfig(o.source));
    } finally {
      await safeRemove(out);
    }
  } else {
    results = classifyAgainstConfig(wishes, await readConfig(o.config!));
  }
  const bootArgs = [...new Set(results.flatMap((r) => (r.status === 'at-boot' ? (r.bootArgs ?? []) : [])))];
  return { mode: o.source ? 'source' : 'config', base: o.config, results, bootArgs, unmet: results.filter((r) => !MET.includes(r.status)).length };
}
