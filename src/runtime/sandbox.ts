/**
 * The sandbox every model child runs in (issue 16; docs/sandbox.md), built from Debian's tools
 * where systemd cannot do it per child. Two ways to the same restrictions, tried in this order:
 *
 * "landlock" — util-linux (Essential in Debian; ≥ 2.40 for setpriv's Landlock and seccomp options):
 *   setpriv --pdeathsig KILL -- unshare --user --net --pid --fork --kill-child --
 *     setpriv --no-new-privs --landlock-access fs --landlock-rule … --seccomp-filter <file> -- llama-server …
 *   No mount calls and no mount namespace, so it works inside aios-runtime.service as the unit is
 *   (DynamicUser=, RestrictSUIDSGID=, no @mount): the file system is restricted with Landlock (the
 *   kernel's unprivileged access control) instead of being hidden.
 * "bwrap" — bubblewrap: the same namespaces and a file system of its own (a read-only view of /usr,
 *   the model and its own directory; nothing else exists inside). It needs mount calls, a mount
 *   namespace, rtnetlink and openat2(), which aios-runtime.service does not allow (bubblewrap 0.12
 *   opens mount sources with openat2(), which RestrictSUIDSGID='s filter answers with ENOSYS): used
 *   where the first does not work, e.g. `aios runtime serve` by hand on Debian 12 (util-linux 2.38).
 *
 * Either way a child has:
 * - no network: a network namespace of its own (with bwrap its loopback is up, otherwise down), and
 *   a seccomp filter that allows only AF_UNIX sockets and no connect() at all; the daemon talks to
 *   llama-server over the unix socket in the child's directory (llama-server binds one when `--host`
 *   ends in `.sock`). A model split over RPC workers (shareNet) keeps the host's network and may
 *   connect;
 * - read access to /usr, the loader cache, the model and its adapters, the CPU topology in /sys and
 *   /dev/null, /dev/zero, /dev/urandom, /dev/random (and, for a model with gpu_layers ≠ 0 on a
 *   machine with the NVIDIA driver, read-write and ioctl access to /dev/nvidia*) — and nothing else (no /etc, /home, /run, /var,
 *   /tmp, /proc: with bwrap they do not exist, with Landlock they cannot be opened);
 * - write access to its own directory (the socket; also HOME and TMPDIR) and its own slot directory
 *   for saved sessions only;
 * - a PID namespace of its own (it can name and signal no other process), no capabilities,
 *   no_new_privs, killed when the daemon dies;
 * - its own seccomp filter (seccomp.ts), below the unit's SystemCallFilter= where there is one.
 *
 * `probeSandbox()` runs the sandbox once at start with a small shell self-test (its own directory
 * writable; a write beside it and a read of /etc/passwd refused): whatever does not work here is one
 * warning, and children run without it.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';

export interface SandboxSpec {
  /** The model file (read-only inside). */
  model: string;
  /** The child's own directory (read-write inside; the unix socket lives there). */
  dir: string;
  /** Further read-only paths (adapters, a binary outside /usr…). */
  readOnly?: string[];
  /** Further read-write paths (the child's slot directory for saved sessions). */
  readWrite?: string[];
  /** Keep the host's network (a model split across RPC workers connects to them); everything else stays as it is. */
  shareNet?: boolean;
  /** Further environment variables inside. */
  env?: Record<string, string>;
  /**
   * GPU device nodes the child may open, read, write and ioctl (/dev/nvidia*: a model with
   * gpu_layers ≠ 0 on a machine with the NVIDIA driver; gpuDevices()), with the driver's read-only
   * /proc/driver/nvidia. None: the child sees only the four devices above.
   */
  devices?: string[];
}

/** The NVIDIA driver's device nodes present on this machine (/dev/nvidiactl, /dev/nvidia0…, /dev/nvidia-uvm…), none without it. */
export function gpuDevices(dev = '/dev', list: (d: string) => string[] = (d) => readdirSync(d)): string[] {
  let names: string[];
  try {
    names = list(dev);
  } catch {
    return [];
  }
  return names.filter((n) => /^nvidia(ctl|\d+|-uvm|-uvm-tools|-modeset)$/.test(n)).sort().map((n) => join(dev, n));
}

/** What the CUDA driver library reads besides the device nodes (read-only). */
const GPU_READ_ONLY = ['/proc/driver/nvidia'];

export type SandboxMode =
  | { kind: 'landlock'; unshare: string; setpriv: string; seccomp?: SeccompFiles }
  | {
      kind: 'bwrap';
      bwrap: string;
      /** A /proc of its own PID namespace (else the daemon's /proc bound read-only: it lists the daemon's processes, but the child still cannot signal them, as they have no PID in its namespace). */
      freshProc: boolean;
      seccomp?: SeccompFiles;
    };

/** The children's seccomp programs (seccomp.ts), written once at start: without and with network. */
export interface SeccompFiles {
  noNet: string;
  net: string;
}

/** How a sandboxed child is started: the command line before llama-server's, its environment, and files its tool reads from fd 3 on. */
export interface SandboxLaunch {
  argv: string[];
  env: Record<string, string>;
  /** Opened read-only and passed as fd 3, 4, … (bwrap --seccomp reads its program from an fd). */
  fds: string[];
  /**
   * The signal that stops it: unshare --fork blocks SIGTERM in the process the daemon started (and
   * forwards nothing), so the landlock sandbox is stopped with SIGKILL; bwrap dies of SIGTERM. Either
   * way llama-server itself then gets SIGKILL (--kill-child, --die-with-parent): it keeps nothing that
   * needs a graceful stop (session states are saved by explicit requests).
   */
  stopSignal: 'SIGTERM' | 'SIGKILL';
}

const READ_ONLY_SYSTEM = ['/etc/ld.so.cache', '/sys/devices/system/cpu', '/sys/devices/system/node'];
const DEVICES_RW = ['/dev/null'];
const DEVICES_RO = ['/dev/zero', '/dev/urandom', '/dev/random'];
/** The Landlock rights that apply to a file (the others only to directories). */
const FILE_RIGHTS = new Set(['execute', 'write-file', 'read-file', 'truncate', 'ioctl-dev']);
/** true: a directory, false: anything else, undefined: not there. */
const dirOrFile = (p: string): boolean | undefined => statSync(p, { throwIfNoEntry: false })?.isDirectory();
/** Landlock rights for a directory the child may write (its own, its slot directory). */
const RW_DIR = 'read-file,read-dir,write-file,truncate,make-reg,make-dir,make-sock,remove-file,remove-dir';

function environment(s: SandboxSpec): Record<string, string> {
  return { PATH: '/usr/bin', HOME: s.dir, TMPDIR: s.dir, ...(s.env ?? {}) };
}

/** The landlock sandbox's command line (before llama-server's), its environment. */
export function landlockArgs(mode: Extract<SandboxMode, { kind: 'landlock' }>, s: SandboxSpec, isDir: (p: string) => boolean | undefined = dirOrFile): string[] {
  const exists = (p: string) => isDir(p) !== undefined;
  // Landlock refuses (EINVAL) a rule that gives a file a directory's right (read-dir, make-*, remove-*).
  const rule = (rights: string, path: string) => ['--landlock-rule', `path-beneath:${isDir(path) === false ? rights.split(',').filter((r) => FILE_RIGHTS.has(r)).join(',') : rights}:${path}`];
  const a = [
    // Dies with the daemon (PR_SET_PDEATHSIG survives the exec of unshare).
    mode.setpriv, '--pdeathsig', 'KILL', '--',
    mode.unshare, '--user', '--map-current-user', ...(s.shareNet ? [] : ['--net']), '--pid', '--fork', '--kill-child', '--',
    mode.setpriv, '--no-new-privs', '--landlock-access', 'fs',
    ...rule('read-file,read-dir,execute', '/usr'),
  ];
  for (const p of READ_ONLY_SYSTEM) if (exists(p)) a.push(...rule('read-file,read-dir', p));
  for (const p of DEVICES_RW) if (exists(p)) a.push(...rule('read-file,write-file', p));
  for (const p of DEVICES_RO) if (exists(p)) a.push(...rule('read-file', p));
  // GPU device nodes: opened read-write and driven by ioctl (Landlock's ioctl-dev right).
  for (const p of s.devices ?? []) if (exists(p)) a.push(...rule('read-file,write-file,ioctl-dev', p));
  if (s.devices?.length) for (const p of GPU_READ_ONLY) if (exists(p)) a.push(...rule('read-file,read-dir', p));
  a.push(...rule('read-file', s.model));
  // A binary outside /usr (a llama.cpp build in the aios cache, a test's stand-in script) must be executable too.
  for (const p of s.readOnly ?? []) a.push(...rule('read-file,execute', p));
  a.push(...rule(RW_DIR, s.dir));
  for (const p of s.readWrite ?? []) a.push(...rule(RW_DIR, p));
  if (mode.seccomp) a.push('--seccomp-filter', s.shareNet ? mode.seccomp.net : mode.seccomp.noNet);
  a.push('--');
  return a;
}

/** bwrap's argv (without the program to run) for one child; `--seccomp 3` when the mode has a filter (its file is then fd 3). */
export function bwrapArgs(mode: Extract<SandboxMode, { kind: 'bwrap' }>, s: SandboxSpec): string[] {
  const a = [
    '--die-with-parent',
    '--new-session',
    '--unshare-user',
    ...(s.shareNet ? [] : ['--unshare-net']),
    '--unshare-pid',
    '--cap-drop', 'ALL',
    '--clearenv',
    ...Object.entries(environment(s)).flatMap(([k, v]) => ['--setenv', k, v]),
    '--ro-bind', '/usr', '/usr',
    // merged /usr: the loader and libraries are found under the usual names
    '--symlink', 'usr/lib', '/lib',
    '--symlink', 'usr/lib64', '/lib64',
    '--symlink', 'usr/bin', '/bin',
    '--symlink', 'usr/sbin', '/sbin',
    ...READ_ONLY_SYSTEM.flatMap((p) => ['--ro-bind-try', p, p]),
    '--dev', '/dev',
  ];
  if (mode.freshProc) a.push('--proc', '/proc');
  else a.push('--ro-bind', '/proc', '/proc');
  // GPU device nodes into the child's own /dev (and, with a fresh /proc, the driver's /proc entries).
  for (const p of s.devices ?? []) a.push('--dev-bind-try', p, p);
  if (s.devices?.length && mode.freshProc) for (const p of GPU_READ_ONLY) a.push('--ro-bind-try', p, p);
  a.push('--bind', s.dir, s.dir);
  for (const p of s.readWrite ?? []) a.push('--bind', p, p);
  for (const p of [s.model, ...(s.readOnly ?? [])]) a.push('--ro-bind', p, p);
  if (mode.seccomp) a.push('--seccomp', '3');
  // Everything not bound read-write above is read-only: the root bwrap built (and the mount points it
  // made for the binds) is remounted read-only, so a write anywhere else fails with EROFS.
  a.push('--remount-ro', '/', '--chdir', s.dir, '--');
  return a;
}

/** How to start a child in `mode`: the argv before llama-server's, its environment, its fds, its stop signal. */
export function sandboxLaunch(mode: SandboxMode, s: SandboxSpec): SandboxLaunch {
  if (mode.kind === 'landlock') return { argv: landlockArgs(mode, s), env: environment(s), fds: [], stopSignal: 'SIGKILL' };
  return { argv: [mode.bwrap, ...bwrapArgs(mode, s)], env: environment(s), fds: mode.seccomp ? [s.shareNet ? mode.seccomp.net : mode.seccomp.noNet] : [], stopSignal: 'SIGTERM' };
}

export interface ProbeResult {
  mode?: SandboxMode;
  /** One line per restriction that could not be had here. */
  warnings: string[];
  /** Milliseconds of one sandboxed self-test, for the start-up report. */
  startMs?: number;
  /** What the self-test showed (for the start-up log). */
  verified?: string;
}

/**
 * The self-test run in the sandbox at start (sh, so that it costs little under emulation): its own
 * directory writable, the directory above it and /etc not. Exit 0 when all three hold; else the
 * first that failed (10 own dir, 11 a write beside it, 12 a read of /etc/passwd).
 */
export const SELF_TEST = (dir: string) =>
  // Subshells: a failed redirection of a special built-in (:) would end dash itself.
  `( : > '${dir}/.probe' ) || exit 10; rm -f '${dir}/.probe'; if ( : > '${dirname(dir)}/.sandbox-escape' ) 2>/dev/null; then rm -f '${dirname(dir)}/.sandbox-escape'; exit 11; fi; if ( cat /etc/passwd > /dev/null ) 2>/dev/null; then exit 12; fi; exit 0`;

const SELF_TEST_FAILURES: Record<number, string> = {
  10: 'its own directory is not writable',
  11: 'it could write outside its directory',
  12: 'it could read /etc/passwd',
};

const TOOL_DIRS = ['/usr/bin', '/bin'];
const find = (name: string, given?: string) => given ?? TOOL_DIRS.map((d) => join(d, name)).find((p) => existsSync(p));

export interface ProbeTools {
  bwrap?: string;
  unshare?: string;
  setpriv?: string;
}

/** Runs the self-test in `mode` with the probe's own directory `dir`; why not, or undefined when it holds. */
function tryMode(mode: SandboxMode, dir: string, model: string): { ms: number; why?: string } {
  const l = sandboxLaunch(mode, { model, dir });
  const fds = l.fds.map((f) => openSync(f, 'r'));
  try {
    const t0 = performance.now();
    const r = spawnSync(l.argv[0]!, [...l.argv.slice(1), '/bin/sh', '-c', SELF_TEST(dir)], { encoding: 'utf8', timeout: 20_000, env: l.env, stdio: ['ignore', 'pipe', 'pipe', ...fds] });
    const ms = performance.now() - t0;
    if (r.status === 0) return { ms };
    const failed = r.status !== null ? SELF_TEST_FAILURES[r.status] : undefined;
    return { ms, why: failed ? `the self-test failed: ${failed}` : (r.stderr || r.error?.message || `exit ${r.status ?? r.signal}`).trim().split('\n').slice(-2).join(' ') };
  } finally {
    for (const fd of fds) closeSync(fd);
  }
}

/**
 * Tries the sandbox here: util-linux's unshare + setpriv (Landlock, seccomp), then bubblewrap; the
 * first whose self-test holds is used. `seccomp`: the children's filter files (undefined: this
 * architecture has none, one warning).
 */
export function probeSandbox(setting: 'auto' | 'off', dir: string, o: { tools?: ProbeTools; seccomp?: SeccompFiles; model?: string } = {}): ProbeResult {
  if (setting === 'off') return { warnings: ['model sandbox off (runtime.sandbox = "off"): children share the daemon\'s network and file system view'] };
  const model = o.model ?? process.execPath;
  const why: string[] = [];
  const filterWarning = o.seccomp ? [] : [`no seccomp filter of the children's own: none is defined for ${process.arch} (seccomp.ts)`];
  const unshare = find('unshare', o.tools?.unshare);
  const setpriv = find('setpriv', o.tools?.setpriv);
  if (unshare && setpriv) {
    const mode: SandboxMode = { kind: 'landlock', unshare, setpriv, ...(o.seccomp ? { seccomp: o.seccomp } : {}) };
    const r = tryMode(mode, dir, model);
    if (!r.why) return { mode, warnings: filterWarning, startMs: r.ms, verified: 'own directory writable; a write beside it and a read of /etc/passwd refused' };
    why.push(`unshare + setpriv: ${r.why}${/unrecognized option|landlock-access/.test(r.why) ? ' (util-linux ≥ 2.40 needed)' : ''}`);
  } else why.push('unshare + setpriv: not installed (util-linux)');
  const bwrap = find('bwrap', o.tools?.bwrap);
  if (bwrap) {
    for (const freshProc of [true, false]) {
      const mode: SandboxMode = { kind: 'bwrap', bwrap, freshProc, ...(o.seccomp ? { seccomp: o.seccomp } : {}) };
      const r = tryMode(mode, dir, model);
      if (!r.why) {
        const warnings = freshProc ? [] : [`model sandbox without a /proc of its own (bwrap could not mount one here): children see the daemon's /proc read-only (they still cannot signal processes outside their PID namespace)`];
        return { mode, warnings: [...warnings, ...filterWarning], startMs: r.ms, verified: 'own directory writable; a write beside it and a read of /etc/passwd refused' };
      }
      if (!freshProc) why.push(`bwrap: ${r.why}`);
    }
  } else why.push('bwrap: not installed (bubblewrap)');
  return { warnings: [`no model sandbox (${why.join('; ')}): children can open network connections and read and write wherever the daemon can`] };
}

/** The unix socket llama-server listens on inside its directory. */
export const childSocket = (dir: string) => `${dir}/llama.sock`;
