/**
 * The running machine's `aios doctor` (the image's `aios` command): is aios-runtime up and
 * answering, are the recipe's kernel wishes live (the same rule as `aios qemu-test`), governor, THP,
 * zram, time, space for models/sessions/ledger, failed units, the memory budget against what is
 * loaded, and each model child's last crash in this boot's journal. Every reading goes through a
 * `MachineProbe`, so that the failure paths are tested by faking it; `machineProbe()` is the real
 * one (sysfs, systemctl, journalctl, statfs, the runtime's unix socket). Nothing here imports from
 * the build side: it is bundled into the image.
 */
import { execFile } from 'node:child_process';
import { readdir, readFile, statfs } from 'node:fs/promises';
import { dirname } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { liveWishes, type KernelFacts } from '../kernel/live.js';
import type { Wish } from '../kernel/config.js';
import type { Check, Finding } from './types.js';
import { formatSize as size } from '../util/size.js';

/** Where the overlay stage writes the recipe's kernel wishes (symbol, value, fragment) for this check. */
export const WISHES_FILE = '/usr/lib/aios/kernel-wishes.json';
/** The runtime's state: models, saved sessions, the spend ledger. */
export const STATE_DIR = '/var/lib/aios';

export interface RuntimeView {
  ready: boolean;
  version: string;
  budgetBytes: number;
  usedBytes: number;
  models: { name: string; state: string; actualBytes: number; estimateBytes: number; error: string; restarts: number }[];
}

export interface MachineProbe {
  /** A file's text, or undefined when it cannot be read. */
  read(path: string): Promise<string | undefined>;
  /** A gzip file's text (/proc/config.gz), or undefined. */
  readGz(path: string): Promise<string | undefined>;
  /** Names in a directory ([] when it cannot be read). */
  list(dir: string): Promise<string[]>;
  /** A command's exit code and stdout (code 127 when it cannot run). */
  run(argv: string[]): Promise<{ code: number; stdout: string }>;
  /** Free and total bytes of the filesystem holding a path. */
  space(path: string): Promise<{ free: number; total: number } | undefined>;
  /** The runtime's own view (HealthCheck + ListModels), or why it could not be asked. */
  runtime(): Promise<RuntimeView | { error: string }>;
}

const MiB = 2 ** 20;
const GiB = 2 ** 30;
const ok = (detail: string, facts?: Record<string, unknown>): Finding => ({ status: 'ok', detail, ...(facts ? { facts } : {}) });
const warn = (detail: string, fix?: string, facts?: Record<string, unknown>): Finding => ({ status: 'warning', detail, ...(fix ? { fix } : {}), ...(facts ? { facts } : {}) });
const problem = (detail: string, fix?: string, facts?: Record<string, unknown>): Finding => ({ status: 'problem', detail, ...(fix ? { fix } : {}), ...(facts ? { facts } : {}) });

/** A kernel config's symbols: `CONFIG_X=v` → X: v, `# CONFIG_X is not set` → X: n. */
export function parseKernelConfig(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const set = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (set) out[set[1]!] = set[2]!.replace(/^"|"$/g, '');
    const unset = /^# CONFIG_([A-Za-z0-9_]+) is not set$/.exec(line);
    if (unset) out[unset[1]!] = 'n';
  }
  return out;
}

/** What the running kernel does, read as the boot check reads it, for liveWishes(). */
export async function kernelFacts(p: MachineProbe): Promise<KernelFacts & { configSource?: string }> {
  const t = async (f: string) => (await p.read(f))?.trim();
  const kernel = await t('/proc/sys/kernel/osrelease');
  let config = await p.readGz('/proc/config.gz');
  let configSource = config ? '/proc/config.gz' : undefined;
  if (!config && kernel) {
    config = await p.read(`/boot/config-${kernel}`);
    if (config) configSource = `/boot/config-${kernel}`;
  }
  const nodes = (await p.list('/sys/devices/system/node')).filter((n) => /^node\d+$/.test(n)).length;
  return {
    preempt: (await t('/sys/kernel/debug/sched/preempt')) || undefined,
    governor: (await t('/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor')) ?? 'none',
    numaNodes: nodes,
    spectreV2: (await t('/sys/devices/system/cpu/vulnerabilities/spectre_v2')) || undefined,
    thp: await t('/sys/kernel/mm/transparent_hugepage/enabled'),
    nohzFull: await t('/sys/devices/system/cpu/nohz_full'),
    cmdline: await t('/proc/cmdline'),
    kernel,
    config: config ? parseKernelConfig(config) : {},
    configSource,
  };
}

/** The checks of a running aios machine, in the order they are printed. */
export function machineChecks(p: MachineProbe): Check[] {
  let view: Promise<RuntimeView | { error: string }> | undefined;
  const runtime = () => (view ??= p.runtime());
  return [
    {
      id: 'runtime.service',
      title: 'aios-runtime service',
      async run() {
        const r = await p.run(['systemctl', 'is-active', 'aios-runtime.service']);
        const state = r.stdout.trim() || 'unknown';
        if (r.code === 127) return warn('systemctl is not available here (not a systemd machine?)');
        if (state === 'active') return ok('active');
        if (state === 'activating') return warn('still starting (the operational model has not answered its probe yet)', 'wait, then run aios doctor again; journalctl -u aios-runtime -b shows its progress');
        return problem(`${state}`, 'journalctl -u aios-runtime -b -n 50 says why; then systemctl restart aios-runtime');
      },
    },
    {
      id: 'runtime.answers',
      title: 'aios-runtime answers',
      async run() {
        const v = await runtime();
        if ('error' in v) return problem(`no answer on its socket: ${v.error}`, 'systemctl status aios-runtime; the socket is /run/aios/runtime.sock (group aios)');
        const ready = v.models.filter((m) => m.state === 'ready').map((m) => m.name);
        const facts = { version: v.version, ready: v.ready, models: v.models.map((m) => ({ name: m.name, state: m.state })) };
        if (!v.ready) return warn(`answers (version ${v.version}) but is not ready: the operational model has not answered its probe${ready.length ? `; ready: ${ready.join(', ')}` : ''}`, 'aios ps shows each model\'s state', facts);
        return ok(`ready, version ${v.version}; models ready: ${ready.join(', ') || 'none'}`, facts);
      },
    },
    {
      id: 'models.failed',
      title: 'model children',
      async run() {
        const v = await runtime();
        if ('error' in v) return warn('not known: the runtime does not answer');
        const failed = v.models.filter((m) => m.state === 'failed');
        if (failed.length) return problem(`failed: ${failed.map((m) => `${m.name} (${m.error || 'no reason given'})`).join('; ')}`, `aios runtime load ${failed[0]!.name} tries again; journalctl -u aios-runtime -b shows its output`);
        return ok(`${v.models.length} known, none failed`);
      },
    },
    {
      id: 'models.crashes',
      title: 'last crash per model',
      async run() {
        const r = await p.run(['journalctl', '-u', 'aios-runtime.service', '-b', '-o', 'short-iso', '--no-pager', '-g', 'llama-server died']);
        if (r.code === 127) return warn('journalctl is not available here');
        const last = new Map<string, string>();
        for (const line of r.stdout.split('\n')) {
          const m = /^(\S+) \S+ [^:]+: (\S+): llama-server died \((.*?)\)/.exec(line);
          if (m) last.set(m[2]!, `${m[3]} at ${m[1]}`);
        }
        if (!last.size) return ok('no model child crashed in this boot');
        return warn(`crashed in this boot: ${[...last].map(([n, w]) => `${n} (last: ${w})`).join('; ')}`, 'journalctl -u aios-runtime -b -g "llama-server died" shows each crash with its last output line', { crashes: Object.fromEntries(last) });
      },
    },
    {
      id: 'memory.budget',
      title: 'memory budget',
      async run() {
        const v = await runtime();
        if ('error' in v) return warn('not known: the runtime does not answer');
        const loaded = v.models.filter((m) => m.actualBytes > 0 || m.estimateBytes > 0);
        const facts = { budgetBytes: v.budgetBytes, usedBytes: v.usedBytes, models: loaded.map((m) => ({ name: m.name, bytes: m.actualBytes || m.estimateBytes })) };
        const list = loaded.map((m) => `${m.name} ${size(m.actualBytes || m.estimateBytes)}`).join(', ') || 'nothing loaded';
        if (v.budgetBytes > 0 && v.usedBytes > v.budgetBytes) return warn(`${size(v.usedBytes)} used of a ${size(v.budgetBytes)} budget (${list}): over budget`, 'aios runtime unload <model>, or raise memory_budget in /etc/aios/config.toml', facts);
        return ok(`${size(v.usedBytes)} of ${size(v.budgetBytes)} (${list})`, facts);
      },
    },
    {
      id: 'kernel.wishes',
      title: 'kernel wishes',
      async run() {
        const text = await p.read(WISHES_FILE);
        if (text === undefined) return ok(`none recorded (${WISHES_FILE} is absent: the recipe has no kernel.fragments, or the image predates this check)`);
        const wishes = JSON.parse(text) as Wish[];
        if (!wishes.length) return ok('the recipe has none');
        const f = await kernelFacts(p);
        const live = liveWishes(wishes, f);
        const off = live.filter((w) => w.live === 'no');
        const unknown = live.filter((w) => w.live === 'unknown');
        const facts = { kernel: f.kernel, configSource: f.configSource, wishes: live };
        const name = (w: { symbol: string; value: string }) => `CONFIG_${w.symbol}=${w.value}`;
        if (off.length) return warn(`not live: ${off.map((w) => `${name(w)} (${w.evidence})`).join('; ')}${unknown.length ? `; unknown: ${unknown.map(name).join(', ')}` : ''}`, 'aios kernel check on the build host says which need a rebuild (kernel.build = true) and which a boot argument', facts);
        return ok(`${live.length - unknown.length} of ${live.length} live in ${f.kernel ?? 'the running kernel'}${unknown.length ? `; not readable here: ${unknown.map(name).join(', ')}` : ''}`, facts);
      },
    },
    {
      id: 'cpu.governor',
      title: 'CPU frequency governor',
      async run() {
        const cpus = (await p.list('/sys/devices/system/cpu')).filter((c) => /^cpu\d+$/.test(c));
        const govs = new Map<string, number>();
        for (const c of cpus) {
          const g = (await p.read(`/sys/devices/system/cpu/${c}/cpufreq/scaling_governor`))?.trim();
          if (g) govs.set(g, (govs.get(g) ?? 0) + 1);
        }
        if (!govs.size) return ok('no cpufreq here (a VM, or frequency left to the firmware)');
        const text = [...govs].map(([g, n]) => `${g} on ${n} CPU${n > 1 ? 's' : ''}`).join(', ');
        if (govs.size === 1 && govs.has('performance')) return ok(text);
        return warn(`${text}: not performance everywhere (generation speed follows the clock)`, 'echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor (the kernel wish CONFIG_CPU_FREQ_DEFAULT_GOV_PERFORMANCE=y makes it the default)');
      },
    },
    {
      id: 'memory.thp',
      title: 'transparent huge pages',
      async run() {
        const t = (await p.read('/sys/kernel/mm/transparent_hugepage/enabled'))?.trim();
        const mode = /\[(\w+)\]/.exec(t ?? '')?.[1];
        if (!mode) return warn('not readable (a kernel without THP?)');
        if (mode === 'never') return warn('never: llama.cpp\'s weights and KV cache get no huge pages', 'echo madvise > /sys/kernel/mm/transparent_hugepage/enabled');
        return ok(mode);
      },
    },
    {
      id: 'memory.zram',
      title: 'zram swap',
      async run() {
        const swaps = (await p.read('/proc/swaps')) ?? '';
        const z = swaps.split('\n').slice(1).filter((l) => l.startsWith('/dev/zram'));
        if (!z.length) return warn('no zram swap active', 'systemctl restart systemd-zram-setup@zram0 (the image configures it in /etc/systemd/zram-generator.conf)');
        const sizes = z.map((l) => { const [dev, , kib] = l.split(/\s+/); return `${dev} ${size(Number(kib) * 1024)}`; });
        return ok(sizes.join(', '));
      },
    },
    {
      id: 'time.sync',
      title: 'clock synchronised',
      async run() {
        const r = await p.run(['timedatectl', 'show', '-p', 'NTPSynchronized', '--value']);
        if (r.code === 127) return warn('timedatectl is not available here');
        if (r.stdout.trim() === 'yes') return ok('yes (NTP)');
        return warn('not synchronised: TLS certificate dates, the spend ledger\'s months and logs depend on the clock', 'systemctl status systemd-timesyncd; give it a reachable NTP server in /etc/systemd/timesyncd.conf');
      },
    },
    {
      id: 'space.state',
      title: `space in ${STATE_DIR}`,
      async run() {
        const s = await p.space(STATE_DIR);
        if (!s) return warn(`${STATE_DIR} cannot be read`);
        const facts = { freeBytes: s.free, totalBytes: s.total };
        const text = `${size(s.free)} free of ${size(s.total)} (models, sessions, the spend ledger)`;
        if (s.free < 100 * MiB) return problem(text, `free space under ${STATE_DIR} (aios runtime sessions rm, remove unused models in ${STATE_DIR}/models), or grow the root partition (aios flash --grow-root)`, facts);
        if (s.free < GiB || s.free < s.total * 0.05) return warn(`${text}: little room for a model download or saved sessions`, `remove unused models from ${STATE_DIR}/models`, facts);
        return ok(text, facts);
      },
    },
    {
      id: 'gpu.driver',
      title: 'NVIDIA GPU',
      async run() {
        // A GPU image (gpu.driver, docs/gpu.md) has aios-gpu.service's script; others have no driver.
        if ((await p.read('/usr/libexec/aios/gpu-init')) === undefined) return ok('not a GPU image (no NVIDIA driver in it)');
        const pci = '/sys/bus/pci/devices';
        let gpus = 0;
        for (const d of await p.list(pci)) {
          if ((await p.read(`${pci}/${d}/vendor`))?.trim() === '0x10de' && (await p.read(`${pci}/${d}/class`))?.trim().startsWith('0x03')) gpus++;
        }
        if (!gpus) return ok('no NVIDIA GPU on this machine: models run on the CPU', { gpus: 0 });
        if (!(await p.list('/sys/module/nvidia')).length) {
          return problem(`${gpus} NVIDIA GPU(s), but the nvidia module is not loaded: models run on the CPU`, 'journalctl -b -u aios-gpu.service and journalctl -k -b | grep -i nvidia say why; then systemctl restart aios-gpu.service aios-runtime.service', { gpus });
        }
        const q = await p.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader']);
        const list = q.code === 0 ? q.stdout.split('\n').map((l) => l.trim()).filter(Boolean) : [];
        if (!list.length) return problem(`${gpus} NVIDIA GPU(s) and the module loaded, but nvidia-smi lists none`, 'nvidia-smi says why; journalctl -k -b | grep -i nvidia', { gpus });
        const cuda = /CUDA Version:\s*([\d.]+)/.exec((await p.run(['nvidia-smi'])).stdout)?.[1];
        return ok(`${list.join('; ')}${cuda ? `; CUDA ${cuda}` : ''}`, { gpus: list.length, ...(cuda ? { cuda } : {}) });
      },
    },
    {
      id: 'units.failed',
      title: 'failed units',
      async run() {
        const r = await p.run(['systemctl', 'list-units', '--failed', '--plain', '--no-legend', '--no-pager']);
        if (r.code === 127) return warn('systemctl is not available here');
        const failed = r.stdout.split('\n').map((l) => l.trim().split(/\s+/)[0]).filter((u): u is string => !!u);
        if (!failed.length) return ok('none');
        return warn(failed.join(', '), `journalctl -u ${failed[0]} -b says why`, { units: failed });
      },
    },
  ];
}

const sh = (argv: string[]) =>
  new Promise<{ code: number; stdout: string }>((resolve) => {
    execFile(argv[0]!, argv.slice(1), { timeout: 10_000, maxBuffer: 4 * MiB }, (err, stdout) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      resolve({ code: e ? (e.code === 'ENOENT' ? 127 : typeof e.code === 'number' ? e.code : 1) : 0, stdout: String(stdout ?? '') });
    });
  });

/** The real probe of this machine; `address` is the runtime's (default: its unix socket). */
export function machineProbe(address = 'unix:/run/aios/runtime.sock'): MachineProbe {
  return {
    read: (path) => readFile(path, 'utf8').catch(() => undefined),
    readGz: async (path) => {
      const b = await readFile(path).catch(() => undefined);
      try {
        return b ? gunzipSync(b).toString('utf8') : undefined;
      } catch {
        return undefined;
      }
    },
    list: (dir) => readdir(dir).catch(() => []),
    run: sh,
    space: async (path) => {
      // The filesystem that holds it, or would (the nearest existing directory above it).
      for (let d = path; ; d = dirname(d)) {
        const s = await statfs(d).catch(() => undefined);
        if (s) return { free: s.bavail * s.bsize, total: s.blocks * s.bsize };
        if (d === dirname(d)) return undefined;
      }
    },
    runtime: async () => {
      const api = await import('../runtime/client.js');
      const c = api.connectRuntime(address);
      try {
        const [h, l] = await Promise.all([api.unary(c, 'HealthCheck', {}, 5000), api.unary(c, 'ListModels', {}, 5000)]);
        return {
          ready: h.ready,
          version: h.version,
          budgetBytes: Number(h.memory_budget_bytes),
          usedBytes: Number(h.memory_used_bytes),
          models: l.models.map((m) => ({ name: m.name, state: m.state, actualBytes: Number(m.actual_bytes), estimateBytes: Number(m.estimate_bytes), error: m.error, restarts: m.restarts })),
        };
      } catch (e) {
        return { error: api.explainError(e, address, {}) };
      } finally {
        c.close();
      }
    },
  };
}
