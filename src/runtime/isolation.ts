/**
 * How a model child is isolated (issue 16): its own cgroup (cgroup.ts) and its sandbox
 * (sandbox.ts, with its seccomp filter from seccomp.ts), set up once per daemon as far as the host
 * allows, with one warning per thing that is not possible here (kept in `warnings`; the daemon logs
 * them). `wrap()` turns llama-server's command line into the one that runs it isolated:
 *
 *   /bin/sh -c '<enter the cgroup>; exec "$@"' … <sandbox tool(s)> -- llama-server <args, --host <dir>/llama.sock>
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LaunchProfile } from './child.js';
import { ModelCgroups, cgroupName, oomMessage, parseCpuList, physicalCoreSets, spreadCpus, type CgroupLimits } from './cgroup.js';
import { childSocket, gpuDevices, probeSandbox, sandboxLaunch, type SandboxMode, type SeccompFiles } from './sandbox.js';
import { childSeccompFilter } from './seccomp.js';
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

/**
 * Environment a child needs beyond the daemon's: a split model's llama-server aborts (GGML_ABORT)
 * when a worker goes away, which is routine there; without GGML_NO_BACKTRACE ggml would first attach
 * gdb (where installed) for a backtrace, delaying the exit the requests in flight wait for by seconds.
 */
export function childEnv(p: LaunchProfile): Record<string, string> {
  return p.rpc?.length ? { GGML_NO_BACKTRACE: '1' } : {};
}

/** Resident set of a process and its descendants (a sandboxed llama-server is a child of its sandbox's tool). */
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

/** How wrap() says to start a child. */
export interface WrappedLaunch {
  argv: string[];
  socket?: string;
  cgroup?: { oomBefore: number };
  /** The whole environment of the child (sandboxed: PATH, HOME, TMPDIR; else undefined = the daemon's). */
  env?: Record<string, string>;
  /** Files its sandbox tool reads from fd 3 on (opened read-only by the launcher). */
  fds?: string[];
  /** How to stop it (SIGTERM unless the sandbox says otherwise). */
  stopSignal?: 'SIGTERM' | 'SIGKILL';
}

/**
 * Spawns what wrap() returned: its environment (plus `extraEnv`), its files as fd 3, 4, … after
 * `stdio`'s three.
 */
export function spawnWrapped(w: WrappedLaunch, stdio: ('ignore' | 'pipe' | 'inherit')[], extraEnv: Record<string, string> = {}): ChildProcess {
  const fds = (w.fds ?? []).map((f) => openSync(f, 'r'));
  try {
    const env = w.env ? { ...w.env, ...extraEnv } : Object.keys(extraEnv).length ? { ...process.env, ...extraEnv } : undefined;
    return spawn(w.argv[0]!, w.argv.slice(1), { stdio: [...stdio, ...fds], ...(env ? { env } : {}) });
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}

/** Writes the children's seccomp programs (with and without network) into `dir`; undefined when this architecture has none. */
function writeSeccompFiles(dir: string): SeccompFiles | undefined {
  const noNet = childSeccompFilter(process.arch, { network: false });
  const net = childSeccompFilter(process.arch, { network: true });
  if (!noNet || !net) return undefined;
  const files = { noNet: join(dir, 'seccomp-nonet.bpf'), net: join(dir, 'seccomp-net.bpf') };
  // Written aside and renamed: a child starting meanwhile (the early start's) reads a whole program.
  for (const [file, prog] of [[files.noNet, noNet], [files.net, net]] as const) {
    const tmp = `${file}.tmp-${process.pid}`;
    writeFileSync(tmp, prog, { mode: 0o600 });
    chmodSync(tmp, 0o600);
    renameSync(tmp, file);
  }
  return files;
}

export class Isolation {
  readonly warnings: string[] = [];
  readonly cgroups?: ModelCgroups;
  readonly sandbox?: SandboxMode;
  /** One sandboxed self-test at start (ms), for the log. */
  readonly sandboxStartMs?: number;
  /** What the self-test showed. */
  readonly sandboxVerified?: string;

  constructor(readonly settings: IsolationSettings) {
    const warn = (s: string) => this.warnings.push(s);
    this.cgroups = ModelCgroups.open(settings.cgroup, warn);
    let seccomp: SeccompFiles | undefined;
    try {
      mkdirSync(settings.childDir, { recursive: true, mode: 0o700 });
      if (settings.sandbox !== 'off') seccomp = writeSeccompFiles(settings.childDir);
    } catch (e) {
      warn(`children's directories: ${settings.childDir}: ${(e as Error).message}`);
    }
    const probeDir = join(settings.childDir, 'probe');
    try {
      if (settings.sandbox !== 'off') mkdirSync(probeDir, { recursive: true, mode: 0o700 });
    } catch {
      // the probe reports it
    }
    const probe = probeSandbox(settings.sandbox, probeDir, { seccomp });
    rmSync(probeDir, { recursive: true, force: true });
    this.sandbox = probe.mode;
    this.sandboxStartMs = probe.startMs;
    this.sandboxVerified = probe.verified;
    this.warnings.push(...probe.warnings);
  }

  /** A one-line summary for the start-up log. */
  describe(): string {
    const cg = this.cgroups ? `per-model cgroups under ${this.cgroups.root} (${[...this.cgroups.controllers].join(', ')})` : 'no per-model cgroups';
    const s = this.sandbox;
    const what = !s
      ? 'no sandbox'
      : s.kind === 'landlock'
        ? `sandbox: unshare + setpriv (user, network and PID namespaces, Landlock, no_new_privs${s.seccomp ? ', seccomp' : ''})`
        : `sandbox: bwrap (user, network, PID and mount namespaces${s.freshProc ? '' : ', the daemon\'s /proc'}, no_new_privs${s.seccomp ? ', seccomp' : ''})`;
    const check = s ? `, self-test ${this.sandboxStartMs?.toFixed(0)} ms: ${this.sandboxVerified}` : '';
    return `model isolation: ${cg}; ${what}${check}`;
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
  wrap(p: LaunchProfile, binary: string, args: string[]): WrappedLaunch {
    let out: WrappedLaunch = { argv: [binary, ...args] };
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
        for (const d of rw) mkdirSync(d, { recursive: true, mode: 0o700 });
        const socket = childSocket(dir);
        rmSync(socket, { force: true });
        const inner = [...args];
        const h = inner.indexOf('--host');
        if (h >= 0) inner[h + 1] = socket;
        else inner.push('--host', socket);
        // A split model's llama-server must reach its RPC workers: it keeps the host's network (docs/fleets.md).
        // A model offloaded to a GPU (gpu_layers ≠ 0) opens the NVIDIA device nodes, where there are any.
        const devices = p.gpuLayers !== 0 ? gpuDevices() : [];
        const l = sandboxLaunch(this.sandbox, { model: p.path, dir, readOnly: ro, readWrite: rw, shareNet: !!p.rpc?.length, env: childEnv(p), devices });
        out = { argv: [...l.argv, binary, ...inner], socket, env: l.env, fds: l.fds, stopSignal: l.stopSignal };
      } catch (e) {
        this.warnings.push(`${p.name}: not sandboxed (${(e as Error).message})`);
      }
    }
    if (!this.cgroups) return out;
    const before = this.cgroups.stats(p.name)?.oomKills ?? 0;
    const files = this.cgroups.prepare(p.name, this.limitsOf(p));
    if (!files.length) return out;
    return { ...out, argv: ['/bin/sh', '-c', ENTER, 'aios-enter-cgroup', ...files, '--', ...out.argv], cgroup: { oomBefore: this.cgroups.stats(p.name)?.oomKills ?? before } };
  }
}
