/**
 * How a model child is isolated (issue 16): its own cgroup (cgroup.ts) and its sandbox
 * (sandbox.ts), set up once per daemon as far as the host allows, with one warning per thing that
 * is not possible here (kept in `warnings`; the daemon logs them). `wrap()` turns llama-server's
 * command line into the one that runs it isolated:
 *
 *   /bin/sh -c '<enter the cgroup>; exec "$@"' … bwrap <sandbox> -- llama-server <args, --host <dir>/llama.sock>
 */
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LaunchProfile } from './child.js';
import { ModelCgroups, cgroupName, oomMessage, parseCpuList, physicalCoreSets, spreadCpus, type CgroupLimits } from './cgroup.js';
import { bwrapArgs, childSocket, probeSandbox, type SandboxMode } from './sandbox.js';
import { rssOf } from './memory.js';

export interface LayerIsolation {
  /** "" = every CPU; "auto" is resolved by isolationSettings(). */
  cpus: string;
  cpuWeight: number;
}

export interface IsolationSettings {
  sandbox: 'auto' | 'off';
  /** "auto" | "off" | a cgroup directory. */
  cgroup: string;
  /** Parent of each child's own directory. */
  childDir: string;
  /** memory.swap.max of every model. */
  swapMax: number;
  /** CPU settings of the configured layers, by model name. */
  layers: Map<string, LayerIsolation>;
}

type Table = Record<string, unknown>;
const table = (v: unknown): Table => (v && typeof v === 'object' && !Array.isArray(v) ? (v as Table) : {});
const SIZE: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };
const bytes = (v: unknown, dflt: number) => {
  const m = typeof v === 'string' ? /^(\d+(?:\.\d+)?)([KMGT]?)$/.exec(v) : undefined;
  return m ? Math.round(Number(m[1]) * SIZE[m[2]!]!) : typeof v === 'number' ? v : dflt;
};

/** Where children's directories go: runtime.child_dir, else $RUNTIME_DIRECTORY/models (systemd), else a private dir under /tmp. */
export function childDirOf(configured: string, env: NodeJS.ProcessEnv = process.env): string {
  if (configured) return configured;
  const rt = env.RUNTIME_DIRECTORY?.split(':')[0];
  return rt ? join(rt, 'models') : join(tmpdir(), `aios-runtime-${process.getuid?.() ?? 0}`, 'models');
}

/**
 * The isolation settings from the config's [runtime] and [models] tables: the validated config, or
 * the raw TOML for the early start (entry.ts), with the schema's defaults.
 */
export function isolationSettings(runtime: unknown, models: unknown, warn: (s: string) => void = () => {}, cores: () => number[][] = physicalCoreSets): IsolationSettings {
  const rt = table(runtime);
  const m = table(models);
  const layers = new Map<string, LayerIsolation>();
  const auto: { name: string; threads: number }[] = [];
  for (const level of ['operational', 'tactical']) {
    const l = table(m[level]);
    if (typeof l.name !== 'string') continue;
    const name = l.name.replace(/\.gguf$/, '');
    const cpus = typeof l.cpus === 'string' ? l.cpus : 'auto';
    layers.set(name, { cpus: cpus === 'auto' ? '' : cpus, cpuWeight: typeof l.cpu_weight === 'number' ? l.cpu_weight : 100 });
    if (cpus === 'auto') auto.push({ name, threads: typeof l.threads === 'number' ? l.threads : 0 });
  }
  if (auto.length) {
    // "auto" layers share out the cores no fixed list names.
    const fixed = new Set([...layers.values()].flatMap((l) => (l.cpus ? parseCpuList(l.cpus) : [])));
    const spread = spreadCpus(cores().filter((core) => !core.some((cpu) => fixed.has(cpu))), auto);
    if (spread.why && auto.length > 1) warn(spread.why);
    for (const [name, cpus] of spread.cpus) layers.get(name)!.cpus = cpus;
  }
  return {
    sandbox: rt.sandbox === 'off' ? 'off' : 'auto',
    cgroup: typeof rt.cgroup === 'string' ? rt.cgroup : 'auto',
    childDir: childDirOf(typeof rt.child_dir === 'string' ? rt.child_dir : ''),
    swapMax: bytes(rt.child_swap_max, 0),
    layers,
  };
}

/** Seccomp mode of this process (/proc/self/status: 0 none, 2 filter), -1 unknown. */
export function seccompMode(status?: string): number {
  try {
    const m = /^Seccomp:\s+(\d+)/m.exec(status ?? readFileSync('/proc/self/status', 'utf8'));
    return m ? Number(m[1]) : -1;
  } catch {
    return -1;
  }
}

/**
 * Environment a child needs beyond the daemon's: a split model's llama-server aborts (GGML_ABORT)
 * when a worker goes away, which is routine there; without GGML_NO_BACKTRACE ggml would first attach
 * gdb (where installed) for a backtrace, delaying the exit the requests in flight wait for by seconds.
 */
export function childEnv(p: LaunchProfile): Record<string, string> {
  return p.rpc?.length ? { GGML_NO_BACKTRACE: '1' } : {};
}

/** Resident set of a process and its descendants (a sandboxed llama-server is bwrap's child). */
export function treeRss(pid: number): number {
  let sum = rssOf(pid);
  try {
    for (const c of readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean)) sum += treeRss(Number(c));
  } catch {
    // gone, or no children file
  }
  return sum;
}

/** The shell that puts itself into the cgroup(s) named before "--", then execs the rest. */
const ENTER = 'for f; do [ "$f" = -- ] && break; echo $$ > "$f" || { echo "aios-runtime: cannot enter cgroup $f" >&2; exit 125; }; shift; done; shift; exec "$@"';

export class Isolation {
  readonly warnings: string[] = [];
  readonly cgroups?: ModelCgroups;
  readonly sandbox?: SandboxMode;
  /** One sandboxed /bin/true at start (ms), for the log. */
  readonly sandboxStartMs?: number;

  constructor(readonly settings: IsolationSettings) {
    const warn = (s: string) => this.warnings.push(s);
    this.cgroups = ModelCgroups.open(settings.cgroup, warn);
    try {
      mkdirSync(settings.childDir, { recursive: true, mode: 0o700 });
    } catch (e) {
      warn(`children's directories: ${settings.childDir}: ${(e as Error).message}`);
    }
    const probe = probeSandbox(settings.sandbox, settings.childDir);
    this.sandbox = probe.mode;
    this.sandboxStartMs = probe.startMs;
    this.warnings.push(...probe.warnings);
    // The children's seccomp filter is the unit's (SystemCallFilter=, inherited); started by hand there is none.
    if (seccompMode() !== 2) warn('no seccomp filter for the children: the daemon is not running under one (aios-runtime.service\'s SystemCallFilter= is what filters them); started by hand, they may make any system call the sandbox does not prevent');
  }

  /** A one-line summary for the start-up log. */
  describe(): string {
    const cg = this.cgroups ? `per-model cgroups under ${this.cgroups.root} (${[...this.cgroups.controllers].join(', ')})` : 'no per-model cgroups';
    const sb = this.sandbox ? `sandbox: bwrap${this.sandbox.freshProc ? '' : ' with the daemon\'s /proc'} (${this.sandboxStartMs?.toFixed(0)} ms for /bin/true)` : 'no sandbox';
    return `model isolation: ${cg}; ${sb}`;
  }

  limitsOf(p: LaunchProfile): CgroupLimits {
    const layer = this.settings.layers.get(p.name);
    return { memoryMax: p.memoryLimitBytes ?? 0, swapMax: this.settings.swapMax, cpuWeight: layer?.cpuWeight ?? 100, cpus: layer?.cpus ?? '' };
  }

  updateLimits(p: LaunchProfile): void {
    this.cgroups?.update(p.name, this.limitsOf(p));
  }

  /** "out of memory: limit N MiB" when the model's cgroup counted an OOM kill since `before`. */
  oomSince(name: string, before: number): string | undefined {
    const s = this.cgroups?.stats(name);
    return s && s.oomKills > before ? oomMessage(s.limitBytes) : undefined;
  }

  /** The isolated command line for llama-server `binary` with `args`. */
  wrap(p: LaunchProfile, binary: string, args: string[]): { argv: string[]; socket?: string; cgroup?: { oomBefore: number } } {
    let argv = [binary, ...args];
    let socket: string | undefined;
    if (this.sandbox) {
      const dir = join(this.settings.childDir, cgroupName(p.name));
      // The binary itself when it is not under /usr (a llama.cpp build in the aios cache, by hand).
      const ro: string[] = binary.startsWith('/usr/') ? [] : [binary];
      const rw: string[] = [];
      for (let i = 0; i < args.length - 1; i++) {
        if (args[i] === '--lora' || args[i] === '--mmproj') ro.push(args[i + 1]!);
        if (args[i] === '--slot-save-path') rw.push(args[i + 1]!);
      }
      try {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        socket = childSocket(dir);
        rmSync(socket, { force: true });
        const inner = [...args];
        const h = inner.indexOf('--host');
        if (h >= 0) inner[h + 1] = socket;
        else inner.push('--host', socket);
        // A split model's llama-server must reach its RPC workers: it keeps the host's network (README "Fleets").
        argv = [this.sandbox.bwrap, ...bwrapArgs(this.sandbox, { model: p.path, dir, readOnly: ro, readWrite: rw, shareNet: !!p.rpc?.length, env: childEnv(p) }), binary, ...inner];
      } catch (e) {
        this.warnings.push(`${p.name}: not sandboxed (${(e as Error).message})`);
        socket = undefined;
      }
    }
    if (!this.cgroups) return { argv, socket };
    const before = this.cgroups.stats(p.name)?.oomKills ?? 0;
    const files = this.cgroups.prepare(p.name, this.limitsOf(p));
    if (!files.length) return { argv, socket };
    return { argv: ['/bin/sh', '-c', ENTER, 'aios-enter-cgroup', ...files, '--', ...argv], socket, cgroup: { oomBefore: this.cgroups.stats(p.name)?.oomKills ?? before } };
  }
}
