/**
 * The machine facts that decide benchmark figures: CPU, kernel and its configuration, scheduler and
 * memory settings, virtualization. Every fact says where it was read; what cannot be read is
 * "unknown", never guessed. The parsers are pure and exported for tests.
 */
import { readFile, readdir } from 'node:fs/promises';
import { cpus, loadavg, release, totalmem, version as osVersion } from 'node:os';
import { gunzipSync } from 'node:zlib';
import { run, which } from '../util/exec.js';

export interface Virtualization {
  /** cpuinfo has the `hypervisor` flag: running in a VM (KVM, Xen, Hyper-V, QEMU TCG…). */
  hypervisorFlag: boolean;
  /** systemd-detect-virt --vm ("kvm", "qemu" = TCG, "microsoft"…), when installed and not "none". */
  vm?: string;
  /** systemd-detect-virt --container ("docker", "lxc"…), when installed and not "none". */
  container?: string;
  /** Emulated CPU (QEMU TCG): figures say nothing about performance. */
  emulated: boolean;
  summary: string;
}

export interface MachineFacts {
  cpu: { model: string; vendor: string; logical: number; physicalCores: number; sockets: number; flags: string[] };
  /** Last-level cache in bytes, as the C library reports it (getconf), or undefined. */
  llcBytes?: number;
  memoryBytes: number;
  kernel: { release: string; version: string; cmdline: string };
  /** CONFIG_HZ from /proc/config.gz or /boot/config-<release>, or "unknown". */
  configHz: string;
  configSource: string;
  preemption: { mode: string; source: string };
  thp: { enabled: string; defrag: string };
  governor: string;
  mitigations: { summary: string; vulnerabilities: Record<string, string> };
  numaNodes: number;
  zram: { devices: { name: string; disksize: number; algorithm: string; swap: boolean }[]; summary: string };
  virtualization: Virtualization;
  loadAverage: number[];
}

const readText = (f: string) => readFile(f, 'utf8').then((s) => s.trim()).catch(() => undefined);

/** The value in brackets of a sysfs choice file ("always [madvise] never" → "madvise"). */
export function bracketed(s: string | undefined): string {
  if (!s) return 'unknown';
  return /\[([^\]]+)\]/.exec(s)?.[1] ?? s.trim();
}

/** Fields of /proc/cpuinfo that matter here. */
export function parseCpuinfo(text: string): { model: string; vendor: string; logical: number; physicalCores: number; sockets: number; flags: string[] } {
  let model = 'unknown';
  let vendor = 'unknown';
  let logical = 0;
  let phys = '0';
  const cores = new Set<string>();
  const sockets = new Set<string>();
  let flags: string[] = [];
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const k = line.slice(0, i).trim();
    const v = line.slice(i + 1).trim();
    if (k === 'processor') logical++;
    else if (k === 'model name' && model === 'unknown') model = v;
    else if (k === 'vendor_id' && vendor === 'unknown') vendor = v;
    else if (k === 'physical id') {
      phys = v;
      sockets.add(v);
    } else if (k === 'core id') cores.add(`${phys}:${v}`);
    else if (k === 'flags' && !flags.length) flags = v.split(/\s+/);
  }
  return { model, vendor, logical, physicalCores: cores.size || logical, sockets: sockets.size || 1, flags };
}

/** A kernel config option's value from config text ("CONFIG_HZ=300" → "300"). */
export function configValue(config: string, symbol: string): string | undefined {
  const m = new RegExp(`^CONFIG_${symbol}=(.*)$`, 'm').exec(config);
  return m?.[1]?.replace(/^"|"$/g, '');
}

/**
 * The preemption mode, from the best source available: debugfs (the live mode of a PREEMPT_DYNAMIC
 * kernel), the `preempt=` boot argument, the kernel config's compiled-in default, or uname -v.
 */
export function preemptionMode(o: { debugfs?: string; cmdline: string; config?: string; unameV: string }): { mode: string; source: string } {
  if (o.debugfs) return { mode: bracketed(o.debugfs.replace(/\(([^)]+)\)/, '[$1]')), source: '/sys/kernel/debug/sched/preempt' };
  const arg = /(?:^|\s)preempt=(\S+)/.exec(o.cmdline)?.[1];
  if (arg) return { mode: arg, source: 'kernel command line (preempt=)' };
  if (o.config) {
    const dynamic = configValue(o.config, 'PREEMPT_DYNAMIC') === 'y';
    const mode = configValue(o.config, 'PREEMPT_RT') === 'y' ? 'rt'
      : configValue(o.config, 'PREEMPT_LAZY') === 'y' ? 'lazy'
      : configValue(o.config, 'PREEMPT') === 'y' ? 'full'
      : configValue(o.config, 'PREEMPT_VOLUNTARY') === 'y' ? 'voluntary'
      : configValue(o.config, 'PREEMPT_NONE') === 'y' ? 'none' : undefined;
    if (mode) return { mode, source: dynamic ? 'kernel config default (PREEMPT_DYNAMIC kernel, no preempt= on the command line)' : 'kernel config' };
  }
  const v = o.unameV;
  const mode = /PREEMPT_RT/.test(v) ? 'rt' : /PREEMPT_DYNAMIC/.test(v) ? 'dynamic (mode not readable)' : /PREEMPT_LAZY/.test(v) ? 'lazy' : /\bPREEMPT\b/.test(v) ? 'full' : 'none or voluntary (not readable)';
  return { mode, source: 'uname -v' };
}

/** Summarizes /sys/devices/system/cpu/vulnerabilities: how many are mitigated, vulnerable, not affected. */
export function mitigationSummary(v: Record<string, string>, cmdline: string): string {
  const vals = Object.values(v);
  if (!vals.length) return 'unknown (no /sys/devices/system/cpu/vulnerabilities)';
  const count = (re: RegExp) => vals.filter((x) => re.test(x)).length;
  const arg = /(?:^|\s)mitigations=(\S+)/.exec(cmdline)?.[1];
  const vulnerable = Object.entries(v).filter(([, x]) => /^Vulnerable/.test(x)).map(([k]) => k);
  return `${count(/^Mitigation/)} mitigated, ${vulnerable.length} vulnerable${vulnerable.length ? ` (${vulnerable.join(', ')})` : ''}, ${count(/^Not affected/)} not affected${arg ? `; mitigations=${arg} on the command line` : ''}`;
}

/** Emulated (QEMU TCG) or not, from systemd-detect-virt --vm / --container and the CPU model name. */
export function virtualization(o: { flags: string[]; vm?: string; container?: string; cpuModel: string }): Virtualization {
  const hypervisorFlag = o.flags.includes('hypervisor');
  const vm = o.vm && o.vm !== 'none' ? o.vm : undefined;
  const container = o.container && o.container !== 'none' ? o.container : undefined;
  // systemd-detect-virt says "qemu" for QEMU without KVM (TCG) and "kvm" with it; TCG's own CPU models say so in their name.
  const emulated = vm === 'qemu' || /QEMU TCG|QEMU Virtual CPU/i.test(o.cpuModel);
  const where = container ? `, in a ${container} container` : '';
  const summary = emulated
    ? `EMULATED CPU (QEMU TCG${vm ? `, systemd-detect-virt: ${vm}` : ''})${where}: these figures are meaningless for performance; they only show that the benchmark runs`
    : vm || hypervisorFlag
      ? `virtual machine (${vm ?? 'hypervisor flag in cpuinfo'})${where}: real cores, possibly shared with other guests; expect more spread than on bare metal`
      : `bare metal (no hypervisor flag)${where}`;
  return { hypervisorFlag, vm, container, emulated, summary };
}

async function kernelConfig(rel: string): Promise<{ text?: string; source: string }> {
  const gz = await readFile('/proc/config.gz').catch(() => undefined);
  if (gz) {
    try {
      return { text: gunzipSync(gz).toString('utf8'), source: '/proc/config.gz' };
    } catch {
      /* fall through */
    }
  }
  const boot = await readText(`/boot/config-${rel}`);
  if (boot) return { text: boot, source: `/boot/config-${rel}` };
  return { source: 'none readable' };
}

/** The cpufreq governors of the CPUs that have one, summarized ("performance", or each with its count). */
export function governorSummary(perCpu: string[]): string {
  const seen = new Map<string, number>();
  for (const g of perCpu.filter(Boolean)) seen.set(g, (seen.get(g) ?? 0) + 1);
  if (!seen.size) return 'none (no cpufreq driver: a VM, or frequency set by firmware)';
  return [...seen].map(([g, n]) => (seen.size > 1 ? `${g} (${n} CPUs)` : g)).join(', ');
}

/** zram devices (name, disksize in bytes, the comp_algorithm file) and /proc/swaps → the facts' zram entry. */
export function zramFacts(devs: { name: string; disksize: number; algorithm?: string }[], swaps: string): MachineFacts['zram'] {
  const devices = devs.map((d) => ({ name: d.name, disksize: d.disksize, algorithm: bracketed(d.algorithm), swap: new RegExp(`^/dev/${d.name}\\s`, 'm').test(swaps) }));
  const used = devices.filter((d) => d.disksize > 0);
  const summary = !devices.length
    ? 'none'
    : used.length
      ? used.map((d) => `${d.name} ${(d.disksize / 2 ** 30).toFixed(1)} GiB ${d.algorithm}${d.swap ? ' (swap)' : ''}`).join(', ')
      : `${devices.map((d) => d.name).join(', ')} present but not set up (disksize 0)`;
  return { devices, summary };
}

/**
 * What the facts are made of, as read from the machine: the same readings on the build host
 * (`readRawFacts()`) and in an image (its bench entry point prints them; src/bench/guest.ts), so both
 * give their facts through one function, `factsFromRaw()`.
 */
export interface RawFacts {
  /** /proc/cpuinfo (the fields parseCpuinfo reads are enough). */
  cpuinfo: string;
  release: string;
  /** uname -v */
  version: string;
  cmdline: string;
  /** Kernel config text (a subset with CONFIG_HZ and the PREEMPT symbols is enough), if readable. */
  config?: string;
  configSource: string;
  /** /sys/kernel/debug/sched/preempt, if readable. */
  preemptDebugfs?: string;
  thpEnabled?: string;
  thpDefrag?: string;
  /** scaling_governor of each CPU that has one. */
  governors: string[];
  vulnerabilities: Record<string, string>;
  numaNodes: number;
  zram: { name: string; disksize: number; algorithm?: string }[];
  swaps: string;
  /** systemd-detect-virt --vm / --container output, when it ran. */
  vm?: string;
  container?: string;
  llcBytes?: number;
  memoryBytes: number;
  loadAverage: number[];
}

export function factsFromRaw(r: RawFacts): MachineFacts {
  const cpu = parseCpuinfo(r.cpuinfo);
  return {
    cpu,
    llcBytes: r.llcBytes,
    memoryBytes: r.memoryBytes,
    kernel: { release: r.release, version: r.version, cmdline: r.cmdline },
    configHz: (r.config && configValue(r.config, 'HZ')) ?? 'unknown',
    configSource: r.configSource,
    preemption: preemptionMode({ debugfs: r.preemptDebugfs, cmdline: r.cmdline, config: r.config, unameV: r.version }),
    thp: { enabled: bracketed(r.thpEnabled), defrag: bracketed(r.thpDefrag) },
    governor: governorSummary(r.governors),
    mitigations: { summary: mitigationSummary(r.vulnerabilities, r.cmdline), vulnerabilities: r.vulnerabilities },
    numaNodes: r.numaNodes || 1,
    zram: zramFacts(r.zram, r.swaps),
    virtualization: virtualization({ flags: cpu.flags, vm: r.vm, container: r.container, cpuModel: cpu.model }),
    loadAverage: r.loadAverage,
  };
}

/** Reads this machine's raw facts (the build host's; the image's entry point reads the same in shell). */
export async function readRawFacts(): Promise<RawFacts> {
  let cpuinfo = (await readText('/proc/cpuinfo')) ?? '';
  if (!/^processor\s*:/m.test(cpuinfo)) cpuinfo += cpus().map((_, i) => `\nprocessor\t: ${i}`).join('');
  const rel = release();
  const cmdline = (await readText('/proc/cmdline')) ?? 'unknown';
  const cfg = await kernelConfig(rel);
  const vulnDir = '/sys/devices/system/cpu/vulnerabilities';
  const vulnerabilities: Record<string, string> = {};
  for (const f of (await readdir(vulnDir).catch(() => [] as string[])).sort()) vulnerabilities[f] = (await readText(`${vulnDir}/${f}`)) ?? 'unknown';
  const numaNodes = (await readdir('/sys/devices/system/node').catch(() => [] as string[])).filter((n) => /^node\d+$/.test(n)).length;
  const detect = async (what: string) => ((await which('systemd-detect-virt')) ? (await run(['systemd-detect-virt', what], { reject: false })).stdout.trim() || undefined : undefined);
  const llc = await run(['getconf', 'LEVEL3_CACHE_SIZE'], { reject: false }).catch(() => undefined);
  const governors: string[] = [];
  for (const d of (await readdir('/sys/devices/system/cpu').catch(() => [] as string[])).filter((x) => /^cpu\d+$/.test(x))) {
    const g = await readText(`/sys/devices/system/cpu/${d}/cpufreq/scaling_governor`);
    if (g) governors.push(g);
  }
  const zram = [];
  for (const name of (await readdir('/sys/block').catch(() => [] as string[])).filter((n) => n.startsWith('zram'))) {
    zram.push({ name, disksize: Number((await readText(`/sys/block/${name}/disksize`)) ?? 0), algorithm: await readText(`/sys/block/${name}/comp_algorithm`) });
  }
  return {
    cpuinfo,
    release: rel,
    version: osVersion(),
    cmdline,
    config: cfg.text,
    configSource: cfg.source,
    preemptDebugfs: await readText('/sys/kernel/debug/sched/preempt'),
    thpEnabled: await readText('/sys/kernel/mm/transparent_hugepage/enabled'),
    thpDefrag: await readText('/sys/kernel/mm/transparent_hugepage/defrag'),
    governors,
    vulnerabilities,
    numaNodes,
    zram,
    swaps: (await readText('/proc/swaps')) ?? '',
    vm: await detect('--vm'),
    container: await detect('--container'),
    llcBytes: Number(llc?.stdout.trim()) || undefined,
    memoryBytes: totalmem(),
    loadAverage: loadavg(),
  };
}

export async function machineFacts(): Promise<MachineFacts> {
  return factsFromRaw(await readRawFacts());
}
