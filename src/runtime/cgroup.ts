/**
 * One cgroup per model child (issue 16). Under systemd (`Delegate=yes` on aios-runtime.service) the
 * service's cgroup is the daemon's to manage: the daemon moves itself into a `supervisor` leaf
 * (cgroup v2 allows controllers for children only in a cgroup without processes of its own), turns
 * on the memory, cpu, cpuset and pids controllers for the subtree, and starts every child in
 * `model-<name>` with
 *
 *   memory.max       = the model's budgeted footprint × (1 + runtime.child_memory_margin)
 *   memory.swap.max  = runtime.child_swap_max (default 0: a model is never pushed into zram)
 *   memory.oom.group = 1 (an OOM kill takes the whole sandbox: its tool's process and llama-server together)
 *   cpu.weight       = the layer's cpu_weight;  cpuset.cpus = the layer's cpus ("auto": spread)
 *
 * The child enters its cgroup before it execs (a shell writes its own pid to cgroup.procs, then
 * execs the sandbox tool / llama-server), so not one page it allocates is charged elsewhere. An OOM kill is
 * read from memory.events (`oom_kill`) when the child exits.
 *
 * The same code runs outside systemd on a cgroup given by `runtime.cgroup` (tests, by hand), also
 * a cgroup v1 memory hierarchy (a hybrid host such as the development machine: memory limits and
 * OOM counts only). Whatever is missing is said once, as a warning, and the child runs without it.
 *
 * The pure parts (limits, cpu lists, "auto" spreading, event parsing) are exported for the tests.
 */
import { accessSync, constants, existsSync, mkdirSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const CGROUP_ROOT = '/sys/fs/cgroup';

/** What a model's cgroup is given. */
export interface CgroupLimits {
  /** memory.max in bytes; 0 = no limit. */
  memoryMax: number;
  /** memory.swap.max in bytes (v1: memsw = memory + swap). */
  swapMax: number;
  /** cpu.weight, 1…10000 (v2 only). */
  cpuWeight: number;
  /** cpuset.cpus, "" = every CPU (v2 only). */
  cpus: string;
}

/** What the runtime reads back per model. */
export interface CgroupStats {
  /** memory.current: anonymous memory and the page cache charged to it (mmapped weights it faulted in). */
  currentBytes: number;
  /** memory.peak (v1: max_usage_in_bytes) since the cgroup was made. */
  peakBytes: number;
  limitBytes: number;
  /** OOM kills inside this model's cgroup since the daemon made it. */
  oomKills: number;
}

const MiB = 1024 * 1024;

/** memory.max for a footprint: + margin, rounded up to a whole MiB; 0 footprint = no limit. */
export function childMemoryLimit(footprintBytes: number, margin: number): number {
  if (!(footprintBytes > 0)) return 0;
  // (the small epsilon keeps 100 MiB × 1.1 at 110 MiB, not 111, despite floating point)
  return Math.ceil((footprintBytes * (1 + Math.max(0, margin))) / MiB - 1e-9) * MiB;
}

/** "out of memory: limit N MiB" — how an OOM-killed child is reported everywhere. */
export function oomMessage(limitBytes: number): string {
  return limitBytes > 0 ? `out of memory: limit ${Math.round(limitBytes / MiB)} MiB` : 'out of memory';
}

/** "0-3,6,8-9" → [0,1,2,3,6,8,9]; throws on anything else. */
export function parseCpuList(s: string): number[] {
  const out = new Set<number>();
  for (const part of s.split(',').map((p) => p.trim()).filter(Boolean)) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(part);
    if (!m) throw new Error(`"${s}" is not a CPU list such as 0-3 or 0,2,4`);
    const a = Number(m[1]);
    const b = m[2] === undefined ? a : Number(m[2]);
    if (b < a) throw new Error(`"${part}" in "${s}": the range goes backwards`);
    for (let i = a; i <= b; i++) out.add(i);
  }
  return [...out].sort((x, y) => x - y);
}

/** [0,1,2,3,6] → "0-3,6". */
export function formatCpuList(cpus: number[]): string {
  const s = [...new Set(cpus)].sort((a, b) => a - b);
  const out: string[] = [];
  for (let i = 0; i < s.length; ) {
    let j = i;
    while (j + 1 < s.length && s[j + 1] === s[j]! + 1) j++;
    out.push(i === j ? `${s[i]}` : `${s[i]}-${s[j]}`);
    i = j + 1;
  }
  return out.join(',');
}

/**
 * cpus = "auto" for the models that ask for it: each gets its own physical cores (all their
 * hyperthreads), `threads` of them (0 = an equal share), in order, without overlap — when the
 * machine has enough cores for all of them. When it has not, none is pinned (every model may use
 * every CPU, the scheduler and cpu.weight share them) and `why` says so.
 * `cores`: the machine's physical cores, each as the logical CPUs it runs.
 */
export function spreadCpus(cores: number[][], models: { name: string; threads: number }[]): { cpus: Map<string, string>; why?: string } {
  const cpus = new Map<string, string>();
  if (models.length === 0) return { cpus };
  const fixed = models.reduce((n, m) => n + (m.threads > 0 ? m.threads : 0), 0);
  const shareless = models.filter((m) => m.threads <= 0).length;
  const share = shareless ? Math.floor((cores.length - fixed) / shareless) : 0;
  const want = models.map((m) => (m.threads > 0 ? m.threads : share));
  const total = want.reduce((a, b) => a + b, 0);
  if (want.some((w) => w < 1) || total > cores.length) {
    return { cpus, why: `${models.length} model(s) with cpus = "auto" want ${models.map((m, i) => `${m.name}: ${m.threads > 0 ? m.threads : 'a share'}${want[i]! < 1 ? ' (< 1 core)' : ''}`).join(', ')} of ${cores.length} physical core(s): not pinned, they share every CPU` };
  }
  let next = 0;
  models.forEach((m, i) => {
    const mine = cores.slice(next, next + want[i]!).flat();
    next += want[i]!;
    cpus.set(m.name, formatCpuList(mine));
  });
  return { cpus };
}

/** This machine's physical cores from sysfs (each: its logical CPUs), in order of their first CPU. */
export function physicalCoreSets(sys = '/sys/devices/system/cpu'): number[][] {
  const byCore = new Map<string, number[]>();
  let online: number[];
  try {
    online = parseCpuList(readFileSync(join(sys, 'online'), 'utf8').trim());
  } catch {
    return [];
  }
  for (const cpu of online) {
    let key = `cpu${cpu}`;
    try {
      const pkg = readFileSync(join(sys, `cpu${cpu}/topology/physical_package_id`), 'utf8').trim();
      const core = readFileSync(join(sys, `cpu${cpu}/topology/core_id`), 'utf8').trim();
      key = `${pkg}:${core}`;
    } catch {
      // no topology: each CPU its own core
    }
    byCore.set(key, [...(byCore.get(key) ?? []), cpu]);
  }
  return [...byCore.values()].sort((a, b) => a[0]! - b[0]!);
}

/** "key value" lines (memory.events, memory.stat, v1 memory.oom_control) → numbers by key. */
export function parseKeyValues(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const line of text.split('\n')) {
    const m = /^(\S+)\s+(\d+)$/.exec(line.trim());
    if (m) out[m[1]!] = Number(m[2]);
  }
  return out;
}

/** The OOM kill count in memory.events (v2) or memory.oom_control (v1, kernel ≥ 4.13). */
export const oomKillsIn = (text: string): number => parseKeyValues(text).oom_kill ?? 0;

/** memory.max / memory.current style value: "max" = no limit (0 here). */
export function parseMemoryValue(text: string): number {
  const t = text.trim();
  if (t === 'max' || t === '') return 0;
  const n = Number(t);
  // v1 writes "no limit" as a huge page-aligned number
  return Number.isFinite(n) && n < 2 ** 62 ? n : 0;
}

/** The cgroup v2 path of a process from /proc/<pid>/cgroup ("0::/system.slice/x.service"). */
export function v2PathOf(procCgroup: string): string | undefined {
  const m = /^0::(\/.*)$/m.exec(procCgroup);
  return m?.[1];
}

/** PIDs in a cgroup (v2) that are neither this process nor its descendants. */
export function foreignProcesses(dir: string, self = process.pid): number[] {
  const parentOf = (pid: number): number => {
    try {
      // /proc/<pid>/stat: "pid (comm) state ppid …" — comm may hold spaces and parentheses
      const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
      return Number(s.slice(s.lastIndexOf(')') + 2).split(' ')[1]);
    } catch {
      return 0;
    }
  };
  const ours = (pid: number): boolean => {
    for (let p = pid, n = 0; p > 1 && n < 64; p = parentOf(p), n++) if (p === self) return true;
    return false;
  };
  const pids: number[] = [];
  for (const f of ['cgroup.procs', 'supervisor/cgroup.procs']) {
    try {
      pids.push(...readFileSync(join(dir, f), 'utf8').split('\n').filter(Boolean).map(Number));
    } catch {
      // no supervisor leaf yet
    }
  }
  return pids.filter((p) => !ours(p));
}

/** A model name as a cgroup directory name (no slashes, no dots at the start). */
export const cgroupName = (model: string) => `model-${model.replace(/[^A-Za-z0-9_.-]/g, '_').replace(/^\.+/, '_')}`;

type Version = 'v2' | 'v1-memory';

interface Group {
  dir: string;
  limits: CgroupLimits;
  /** oom_kill count when the daemon made (or took over) the cgroup. */
  oomBase: number;
}

/**
 * The model cgroups under one delegated cgroup. `open()` decides what is possible and says what is
 * not (warnings); every later call degrades quietly to "no cgroup" when it cannot be done.
 */
export class ModelCgroups {
  private groups = new Map<string, Group>();
  readonly controllers = new Set<string>();

  private constructor(
    readonly root: string,
    readonly version: Version,
    private warn: (s: string) => void,
  ) {}

  /**
   * setting: "off", "auto" (cgroup v2: the daemon's own cgroup, when it was delegated to it), or the
   * path of a cgroup directory to manage (v2, or a v1 memory hierarchy). Returns undefined, with one
   * warning, when per-model cgroups are not possible here.
   */
  static open(setting: string, warn: (s: string) => void): ModelCgroups | undefined {
    if (setting === 'off') return undefined;
    let root = setting;
    if (setting === 'auto') {
      if (!existsSync(join(CGROUP_ROOT, 'cgroup.controllers'))) {
        warn(`no per-model cgroups: ${CGROUP_ROOT} is not a cgroup v2 hierarchy (a cgroup v1 or hybrid host; set runtime.cgroup to a writable cgroup directory to use one): models run without memory.max, cpu.weight or cpuset, and an out-of-memory kill is not told apart from a crash`);
        return undefined;
      }
      const own = v2PathOf(readFileSync('/proc/self/cgroup', 'utf8'));
      if (!own) {
        warn('no per-model cgroups: /proc/self/cgroup has no cgroup v2 entry');
        return undefined;
      }
      root = join(CGROUP_ROOT, own);
      // Already moved into our leaf (a re-open in the same process): manage its parent.
      if (own.endsWith('/supervisor')) root = join(CGROUP_ROOT, own.slice(0, -'/supervisor'.length));
      // Delegated to us means ours alone (aios-runtime.service): a cgroup shared with processes that
      // are not ours (a login session, a container's init) is left alone.
      const strangers = foreignProcesses(root);
      if (strangers.length) {
        warn(`no per-model cgroups: this process's cgroup ${root} also holds ${strangers.length} process(es) that are not the daemon's (e.g. PID ${strangers[0]}), so it was not delegated to it (under systemd: Delegate=yes; by hand: runtime.cgroup = a cgroup of its own)`);
        return undefined;
      }
    }
    const version: Version | undefined = existsSync(join(root, 'cgroup.controllers')) ? 'v2' : existsSync(join(root, 'memory.limit_in_bytes')) ? 'v1-memory' : undefined;
    if (!version) {
      warn(`no per-model cgroups: ${root} is not a cgroup directory (v2, or a v1 memory hierarchy)`);
      return undefined;
    }
    try {
      accessSync(root, constants.W_OK);
      accessSync(join(root, 'cgroup.procs'), constants.W_OK);
    } catch {
      warn(`no per-model cgroups: ${root} is not writable by this process (under systemd it needs Delegate=yes; by hand, run as root or give runtime.cgroup a delegated cgroup)`);
      return undefined;
    }
    const cg = new ModelCgroups(root, version, warn);
    return cg.setUp() ? cg : undefined;
  }

  private setUp(): boolean {
    if (this.version === 'v1-memory') {
      this.controllers.add('memory');
      this.warn(`per-model cgroups on a cgroup v1 memory hierarchy (${this.root}): memory limits and OOM counts only, no cpu.weight or cpuset`);
      return true;
    }
    // cgroup v2: no processes in a cgroup that hands controllers to its children. Move every
    // process of ours (the daemon, and any child started before this) into the supervisor leaf.
    try {
      const leaf = join(this.root, 'supervisor');
      mkdirSync(leaf, { recursive: true });
      const procs = readFileSync(join(this.root, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
      for (const pid of procs) {
        try {
          writeFileSync(join(leaf, 'cgroup.procs'), pid);
        } catch {
          // a process that exited meanwhile
        }
      }
      const available = readFileSync(join(this.root, 'cgroup.controllers'), 'utf8').trim().split(/\s+/).filter(Boolean);
      const wanted = ['memory', 'cpu', 'cpuset', 'pids'].filter((c) => available.includes(c));
      const missing = ['memory', 'cpu', 'cpuset'].filter((c) => !available.includes(c));
      for (const c of wanted) {
        try {
          writeFileSync(join(this.root, 'cgroup.subtree_control'), `+${c}`);
          this.controllers.add(c);
        } catch (e) {
          missing.push(`${c} (${(e as Error).message})`);
        }
      }
      if (missing.length) this.warn(`per-model cgroups under ${this.root} without the ${missing.join(', ')} controller(s) (not delegated to this cgroup): those limits are not applied`);
      return true;
    } catch (e) {
      this.warn(`no per-model cgroups: could not set up ${this.root}: ${(e as Error).message}`);
      return false;
    }
  }

  /** Makes (or reuses) the model's cgroup and writes its limits; the files a child writes its pid to, to enter it. */
  prepare(model: string, limits: CgroupLimits): string[] {
    const dir = join(this.root, cgroupName(model));
    try {
      mkdirSync(dir, { recursive: true });
      const old = this.groups.get(model);
      const g: Group = { dir, limits, oomBase: old?.oomBase ?? this.readOom(dir) };
      this.groups.set(model, g);
      this.apply(g);
      return [join(dir, 'cgroup.procs')];
    } catch (e) {
      this.warn(`${model}: no cgroup of its own (${(e as Error).message}); it runs in the daemon's`);
      return [];
    }
  }

  /** Writes new limits for a model whose cgroup exists (a child started before its budget was known). */
  update(model: string, limits: Partial<CgroupLimits>): void {
    const g = this.groups.get(model);
    if (!g) return;
    g.limits = { ...g.limits, ...limits };
    try {
      this.apply(g);
    } catch (e) {
      this.warn(`${model}: could not update its cgroup limits: ${(e as Error).message}`);
    }
  }

  private apply(g: Group): void {
    const w = (f: string, v: string) => writeFileSync(join(g.dir, f), v);
    const { memoryMax, swapMax, cpuWeight, cpus } = g.limits;
    if (this.version === 'v1-memory') {
      // memsw (memory + swap) must stay ≥ the memory limit: lower it last when tightening, raise it first when loosening.
      const memsw = existsSync(join(g.dir, 'memory.memsw.limit_in_bytes'));
      const mem = memoryMax > 0 ? String(memoryMax) : '-1';
      const sw = memoryMax > 0 ? String(memoryMax + swapMax) : '-1';
      if (memsw) {
        try {
          w('memory.memsw.limit_in_bytes', '-1');
        } catch {
          /* already unlimited */
        }
      }
      w('memory.limit_in_bytes', mem);
      if (memsw) w('memory.memsw.limit_in_bytes', sw);
      return;
    }
    if (this.controllers.has('memory')) {
      w('memory.max', memoryMax > 0 ? String(memoryMax) : 'max');
      if (existsSync(join(g.dir, 'memory.swap.max'))) w('memory.swap.max', String(swapMax));
      if (existsSync(join(g.dir, 'memory.oom.group'))) w('memory.oom.group', '1');
    }
    if (this.controllers.has('cpu')) w('cpu.weight', String(cpuWeight));
    if (this.controllers.has('cpuset')) {
      if (cpus) w('cpuset.cpus', cpus);
      else w('cpuset.cpus', '');
    }
  }

  private readOom(dir: string): number {
    try {
      return oomKillsIn(readFileSync(join(dir, this.version === 'v2' ? 'memory.events' : 'memory.oom_control'), 'utf8'));
    } catch {
      return 0;
    }
  }

  /** The model's figures now; undefined without a cgroup. */
  stats(model: string): CgroupStats | undefined {
    const g = this.groups.get(model);
    if (!g) return undefined;
    const r = (f: string) => {
      try {
        return parseMemoryValue(readFileSync(join(g.dir, f), 'utf8'));
      } catch {
        return 0;
      }
    };
    const v2 = this.version === 'v2';
    return {
      currentBytes: r(v2 ? 'memory.current' : 'memory.usage_in_bytes'),
      peakBytes: r(v2 ? 'memory.peak' : 'memory.max_usage_in_bytes'),
      limitBytes: r(v2 ? 'memory.max' : 'memory.limit_in_bytes'),
      oomKills: this.readOom(g.dir) - g.oomBase,
    };
  }

  /** Removes the empty model cgroups (at shutdown). */
  removeAll(): void {
    for (const g of this.groups.values()) {
      try {
        // nested cgroups a sandbox may have made (bwrap does not; be thorough)
        for (const d of readdirSync(g.dir, { withFileTypes: true })) if (d.isDirectory()) rmdirSync(join(g.dir, d.name));
        rmdirSync(g.dir);
      } catch {
        // still has processes, or gone
      }
    }
    this.groups.clear();
  }
}
