/**
 * The sandbox every model child runs in (issue 16), built with bubblewrap (Debian's `bubblewrap`,
 * the tool Flatpak uses) where systemd cannot do it per child:
 *
 * - no network: a private network namespace (only its own loopback, which nothing outside
 *   reaches); the daemon talks to llama-server over a unix socket in the child's directory
 *   (llama-server binds a unix socket when `--host` ends in `.sock`);
 * - a file system of its own, read-only but for its own directory (the socket; also its TMPDIR)
 *   and the sessions directory (slot saves): /usr, the model file and adapters, a minimal /dev
 *   (its /dev/shm is a private tmpfs), /proc, the CPU topology in /sys; nothing else (no /etc but
 *   the loader cache, no /home, no /var, no /run, no /tmp);
 * - its own PID namespace (it sees and can signal no other process, though it runs as the daemon's
 *   user), no_new_privs (bwrap sets it), every capability dropped, its own session (no TIOCSTI),
 *   killed with its parent;
 * - seccomp: the unit's SystemCallFilter= (inherited by every child); outside systemd none.
 *
 * `probeSandbox()` runs the sandbox once at start with /bin/true: whatever does not work here
 * (no bwrap, no user namespaces) is one warning, and children run without it.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname } from 'node:path';

export interface SandboxSpec {
  /** The model file (read-only inside). */
  model: string;
  /** The child's own directory (read-write inside; the unix socket lives there). */
  dir: string;
  /** Further read-only paths (adapters…). */
  readOnly?: string[];
  /** Further read-write paths (the sessions directory llama-server saves slots in). */
  readWrite?: string[];
  /** Keep the host's network (a model split across RPC workers connects to them); everything else stays as it is. */
  shareNet?: boolean;
  /** Further environment variables inside. */
  env?: Record<string, string>;
}

export interface SandboxMode {
  bwrap: string;
  /** A /proc of its own PID namespace (else the daemon's /proc bound read-only: it lists the daemon's processes, but the child still cannot signal them, as they have no PID in its namespace). */
  freshProc: boolean;
}

/** bwrap's argv (without the program to run) for one child. */
export function bwrapArgs(mode: SandboxMode, s: SandboxSpec): string[] {
  const a = [
    '--die-with-parent',
    '--new-session',
    '--unshare-user',
    ...(s.shareNet ? [] : ['--unshare-net']),
    '--unshare-pid',
    '--cap-drop', 'ALL',
    '--clearenv',
    '--setenv', 'PATH', '/usr/bin',
    '--setenv', 'HOME', s.dir,
    '--setenv', 'TMPDIR', s.dir,
    ...Object.entries(s.env ?? {}).flatMap(([k, v]) => ['--setenv', k, v]),
    '--ro-bind', '/usr', '/usr',
    // merged /usr: the loader and libraries are found under the usual names
    '--symlink', 'usr/lib', '/lib',
    '--symlink', 'usr/lib64', '/lib64',
    '--symlink', 'usr/bin', '/bin',
    '--symlink', 'usr/sbin', '/sbin',
    '--ro-bind-try', '/etc/ld.so.cache', '/etc/ld.so.cache',
    '--dev', '/dev',
    '--ro-bind-try', '/sys/devices/system/cpu', '/sys/devices/system/cpu',
    '--ro-bind-try', '/sys/devices/system/node', '/sys/devices/system/node',
  ];
  if (mode.freshProc) a.push('--proc', '/proc');
  else a.push('--ro-bind', '/proc', '/proc');
  a.push('--bind', s.dir, s.dir);
  for (const p of s.readWrite ?? []) a.push('--bind', p, p);
  for (const p of [s.model, ...(s.readOnly ?? [])]) a.push('--ro-bind', p, p);
  // Everything not bound read-write above is read-only: the root bwrap built (and the mount points it
  // made for the binds) is remounted read-only, so a write anywhere else fails with EROFS.
  a.push('--remount-ro', '/', '--chdir', s.dir, '--');
  return a;
}

export interface ProbeResult {
  mode?: SandboxMode;
  /** One line per restriction that could not be had here. */
  warnings: string[];
  /** Milliseconds of one sandboxed /bin/true, for the start-up report. */
  startMs?: number;
}

const BWRAP_PATHS = ['/usr/bin/bwrap', '/bin/bwrap'];

/** Tries the sandbox here (bwrap present, user namespaces allowed, /proc mountable). */
export function probeSandbox(setting: 'auto' | 'off', dir: string, bwrapPath?: string): ProbeResult {
  if (setting === 'off') return { warnings: ['model sandbox off (runtime.sandbox = "off"): children share the daemon\'s network and file system view'] };
  const bwrap = bwrapPath ?? BWRAP_PATHS.find((p) => existsSync(p));
  if (!bwrap) return { warnings: ['no model sandbox: bubblewrap (bwrap) is not installed (apt-get install bubblewrap): children can open network connections and write wherever the daemon can'] };
  const self = process.execPath;
  let last = '';
  for (const freshProc of [true, false]) {
    const mode = { bwrap, freshProc };
    const times: number[] = [];
    let ok = true;
    for (let i = 0; i < 1 && ok; i++) {
      const t0 = performance.now();
      const r = spawnSync(bwrap, [...bwrapArgs(mode, { model: self, dir }), '/bin/true'], { encoding: 'utf8', timeout: 10_000 });
      times.push(performance.now() - t0);
      if (r.status !== 0) {
        ok = false;
        last = (r.stderr || r.error?.message || `exit ${r.status}`).trim();
      }
    }
    if (ok) {
      times.sort((x, y) => x - y);
      const warnings = freshProc ? [] : [`model sandbox without a /proc of its own (bwrap could not mount one here: ${last}): children see the daemon's /proc read-only (they still cannot signal processes outside their PID namespace)`];
      return { mode, warnings, startMs: times[0] };
    }
  }
  return { warnings: [`no model sandbox: bubblewrap does not work here (${last}; it needs unprivileged user namespaces): children can open network connections and write wherever the daemon can`] };
}

/** The unix socket llama-server listens on inside its directory. */
export const childSocket = (dir: string) => `${dir}/llama.sock`;

/** Parent of every child directory (for messages). */
export const childDirParent = (dir: string) => dirname(dir);
