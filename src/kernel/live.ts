/** Which kernel wishes are live in a running system, from facts the image's boot check prints. */
import type { Wish } from './config.js';

export interface KernelFacts {
  /** /sys/kernel/debug/sched/preempt, e.g. "none (voluntary) full". */
  preempt?: string;
  governor?: string;
  numaNodes?: number;
  spectreV2?: string;
  /** /sys/kernel/mm/transparent_hugepage/enabled, e.g. "always [madvise] never". */
  thp?: string;
  nohzFull?: string;
  cmdline?: string;
  kernel?: string;
  /** Relevant lines of the running kernel's config: symbol → value. */
  config: Record<string, string>;
}

export interface LiveWish {
  symbol: string;
  value: string;
  fragment: string;
  live: 'yes' | 'no' | 'unknown';
  evidence: string;
}

export function liveWishes(wishes: Wish[], f: KernelFacts): LiveWish[] {
  const activePreempt = /\((\w+)\)/.exec(f.preempt ?? '')?.[1];
  const cfg = (s: string): string | undefined => f.config[s];
  const kver = /^(\d+)\.(\d+)/.exec(f.kernel ?? '');
  return wishes.map((w) => {
    const on = w.value !== 'n';
    const res = (live: LiveWish['live'], evidence: string): LiveWish => ({ symbol: w.symbol, value: w.value, fragment: w.fragment, live, evidence });
    switch (w.symbol) {
      case 'PREEMPT_VOLUNTARY':
      case 'PREEMPT':
      case 'PREEMPT_NONE': {
        const want = { PREEMPT_VOLUNTARY: 'voluntary', PREEMPT: 'full', PREEMPT_NONE: 'none' }[w.symbol];
        if (!activePreempt) {
          // Without the scheduler's debugfs file (CONFIG_SCHED_DEBUG off) the mode still follows: a
          // preempt= argument if the kernel is PREEMPT_DYNAMIC, else the config's choice.
          const arg = /(?:^|\s)preempt=(none|voluntary|full)(?:\s|$)/.exec(f.cmdline ?? '')?.[1];
          const fromConfig = cfg('PREEMPT_NONE') === 'y' ? 'none' : cfg('PREEMPT_VOLUNTARY') === 'y' ? 'voluntary' : cfg('PREEMPT') === 'y' ? 'full' : undefined;
          const mode = (cfg('PREEMPT_DYNAMIC') === 'y' && arg) || fromConfig;
          if (!mode) return res('unknown', 'no /sys/kernel/debug/sched/preempt (debugfs not mounted or no PREEMPT_DYNAMIC)');
          return res((mode === want) === on ? 'yes' : 'no', `no sched debugfs; mode ${mode} from ${cfg('PREEMPT_DYNAMIC') === 'y' && arg ? `the cmdline (preempt=${arg}, CONFIG_PREEMPT_DYNAMIC=y)` : 'the running config'}`);
        }
        return res((activePreempt === want) === on ? 'yes' : 'no', `sched/preempt: ${f.preempt}`);
      }
      case 'TRANSPARENT_HUGEPAGE_MADVISE':
      case 'TRANSPARENT_HUGEPAGE_ALWAYS':
      case 'TRANSPARENT_HUGEPAGE': {
        const mode = /\[(\w+)\]/.exec(f.thp ?? '')?.[1];
        if (!mode) return res(on && w.symbol === 'TRANSPARENT_HUGEPAGE' ? 'no' : 'unknown', 'no /sys/kernel/mm/transparent_hugepage/enabled');
        const want = w.symbol === 'TRANSPARENT_HUGEPAGE_MADVISE' ? 'madvise' : w.symbol === 'TRANSPARENT_HUGEPAGE_ALWAYS' ? 'always' : undefined;
        const live = want ? (mode === want) === on : on ? true : mode === 'never';
        return res(live ? 'yes' : 'no', `THP: ${f.thp}`);
      }
      case 'CPU_FREQ_DEFAULT_GOV_PERFORMANCE':
        if (!f.governor || f.governor === 'none') {
          // No cpufreq driver to show it (usual in a VM); the running kernel's config still says what any driver would start with.
          const v = cfg(w.symbol);
          const arg = /(^|\s)cpufreq\.default_governor=performance(\s|$)/.test(f.cmdline ?? '');
          if (v === w.value) return res('yes', `no cpufreq driver (usual in a VM); the running kernel has CONFIG_${w.symbol}=${v}`);
          if (v !== undefined && !arg) return res('no', `no cpufreq driver (usual in a VM); the running kernel has CONFIG_${w.symbol}=${v} and the cmdline no cpufreq.default_governor=performance`);
          return res('unknown', 'no cpufreq driver (usual in a VM)');
        }
        return res(f.governor === 'performance' ? 'yes' : 'no', `scaling_governor: ${f.governor}`);
      case 'NUMA':
        if (on) return res(cfg('NUMA') === 'y' ? 'yes' : 'no', `CONFIG_NUMA=${cfg('NUMA') ?? '?'}`);
        return res(cfg('NUMA') !== 'y' || /(^|\s)numa=off(\s|$)/.test(f.cmdline ?? '') ? 'yes' : 'no', `CONFIG_NUMA=${cfg('NUMA') ?? '?'}, cmdline ${/numa=off/.test(f.cmdline ?? '') ? 'has' : 'lacks'} numa=off, ${f.numaNodes ?? '?'} node(s)`);
      case 'CPU_MITIGATIONS':
      case 'SPECULATION_MITIGATIONS':
        if (!f.spectreV2) return res('unknown', 'no vulnerabilities/spectre_v2');
        return res(/^Vulnerable/.test(f.spectreV2) === !on ? 'yes' : 'no', `spectre_v2: ${f.spectreV2}`);
      case 'NO_HZ_FULL':
        if (cfg('NO_HZ_FULL') !== 'y') return res(on ? 'no' : 'yes', `CONFIG_NO_HZ_FULL=${cfg('NO_HZ_FULL') ?? 'n'}`);
        // The wish is the Kconfig option: the running kernel has it. Which CPUs run tickless is a boot
        // argument for the target machine (nohz_full=<cpus>), reported as evidence.
        return res(on ? 'yes' : 'no', f.nohzFull && f.nohzFull !== '(null)' ? `nohz_full CPUs: ${f.nohzFull}` : 'compiled in; no CPU is nohz_full yet (add nohz_full=<cpus> for the inference cores)');
      case 'SCHED_EEVDF':
        return res(kver && (Number(kver[1]) > 6 || (Number(kver[1]) === 6 && Number(kver[2]) >= 6)) ? 'yes' : 'no', `kernel ${f.kernel ?? '?'}: EEVDF is the scheduler from 6.6 on (no config symbol)`);
      default: {
        const v = cfg(w.symbol);
        if (v === undefined) return res('unknown', `CONFIG_${w.symbol} not reported by the guest`);
        return res(v === w.value ? 'yes' : 'no', `CONFIG_${w.symbol}=${v}`);
      }
    }
  });
}

/**
 * One line for the qemu-test report: "every wish live (7 of 7), HZ=300 included" when the running
 * kernel honours them all, else which ones are not (and which could not be told).
 */
export function liveSummary(ws: LiveWish[]): string {
  if (!ws.length) return 'no kernel wishes in the recipe';
  const hz = ws.find((w) => /^HZ_\d+$/.test(w.symbol) && w.value === 'y') ?? ws.find((w) => w.symbol === 'HZ');
  const hzText = hz ? `HZ=${hz.symbol === 'HZ' ? hz.value : hz.symbol.slice(3)}` : '';
  const not = ws.filter((w) => w.live !== 'yes');
  if (!not.length) return `every wish live (${ws.length} of ${ws.length})${hz ? `, ${hzText} included` : ''}`;
  const no = not.filter((w) => w.live === 'no').map((w) => `CONFIG_${w.symbol}=${w.value}`);
  const unknown = not.filter((w) => w.live === 'unknown').map((w) => `CONFIG_${w.symbol}=${w.value}`);
  return `${ws.length - not.length} of ${ws.length} wishes live` + (no.length ? `; not live: ${no.join(', ')}` : '') + (unknown.length ? `; cannot tell: ${unknown.join(', ')}` : '');
}
