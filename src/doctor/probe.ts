/**
 * Everything the host checks look at, behind one object. The real probe runs the real commands and
 * reads the real files; a test changes what it sees (a PATH without a tool, a small filesystem for
 * the cache dir, a mirror URL nothing answers on) by overriding one field.
 */
import { accessSync, constants, existsSync, readFileSync, statSync } from 'node:fs';
import { readdir, readFile, statfs } from 'node:fs/promises';
import { delimiter, dirname, join, resolve } from 'node:path';
import { execa } from 'execa';
import { isaFor, type Isa } from '../build/llama.js';
import { kvmWorks } from '../qemu/index.js';

export interface RunResult {
  code: number;
  /** stdout and stderr together. */
  out: string;
}

export interface HttpResult {
  /** The HTTP status, when anything answered. */
  status?: number;
  /** Why nothing answered (ECONNREFUSED, timeout after 5 s, …). */
  error?: string;
  ms: number;
}

export interface HostProbe {
  /** The PATH tools are looked up on (default: $PATH). */
  path: string;
  /** The command's full path on `path`, or undefined. */
  which(cmd: string): Promise<string | undefined>;
  exists(path: string): boolean;
  /** Runs a command (PATH = `path`), never throws; a missing command gives code 127. */
  run(argv: string[], timeoutMs?: number): Promise<RunResult>;
  /** Free and total bytes of the filesystem holding `dir` (or its nearest existing parent: nothing is created). */
  space(dir: string): Promise<{ dir: string; free: number; total: number }>;
  uid(): number;
  /** The KVM device (default /dev/kvm). */
  kvmDevice: string;
  /** Does KVM boot OVMF here (qemu/index.ts kvmWorks(): a few seconds of firmware boot)? */
  kvmBoots(): Promise<boolean>;
  /** A HEAD (or GET) with a short timeout; never throws. */
  http(url: string, o?: { method?: 'HEAD' | 'GET'; timeoutMs?: number }): Promise<HttpResult>;
  /** /proc/cpuinfo flags of this host. */
  cpuFlags(): Promise<string[]>;
  /** What llama.cpu = "native" produces here (build/llama.ts isaFor). */
  nativeIsa(): Promise<Isa>;
  /** Installed version of a Debian package, if dpkg knows it. */
  debVersion(pkg: string): Promise<string | undefined>;
  /** ID and ID_LIKE of /etc/os-release (debian, ubuntu, arch, …). */
  osIds(): string[];
  /** The npm registry npm would use. */
  npmRegistry(): Promise<string>;
  /** The interpreter the models stage runs for synthesized models. */
  python: string;
  /** Subdirectories of a directory (empty when it does not exist). */
  list(dir: string): Promise<string[]>;
  readText(file: string): Promise<string | undefined>;
}

function isExecutable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return statSync(p).isFile();
  } catch {
    return false;
  }
}

/** The real probe, with any field replaced. `which` and `run` follow the (possibly replaced) `path`. */
export function hostProbe(over: Partial<HostProbe> = {}): HostProbe {
  const p: HostProbe = {
    path: process.env.PATH ?? '/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin',
    async which(cmd) {
      if (cmd.includes('/')) return isExecutable(cmd) ? cmd : undefined;
      for (const d of p.path.split(delimiter)) if (d && isExecutable(join(d, cmd))) return join(d, cmd);
      return undefined;
    },
    exists: (f) => existsSync(f),
    async run(argv, timeoutMs = 10_000) {
      const cmd = await p.which(argv[0]!);
      if (!cmd) return { code: 127, out: `${argv[0]}: command not found` };
      const r = await execa(cmd, argv.slice(1), { reject: false, all: true, timeout: timeoutMs, stdin: 'ignore', env: { PATH: p.path, LC_ALL: 'C' } });
      return { code: typeof r.exitCode === 'number' ? r.exitCode : -1, out: String(r.all ?? '') };
    },
    async space(dir) {
      let d = resolve(dir);
      while (!existsSync(d) && dirname(d) !== d) d = dirname(d);
      const s = await statfs(d);
      return { dir: d, free: s.bavail * s.bsize, total: s.blocks * s.bsize };
    },
    uid: () => process.getuid?.() ?? -1,
    kvmDevice: '/dev/kvm',
    kvmBoots: () => kvmWorks(),
    async http(url, o = {}) {
      const t0 = Date.now();
      const timeoutMs = o.timeoutMs ?? 5000;
      try {
        const r = await fetch(url, { method: o.method ?? 'HEAD', signal: AbortSignal.timeout(timeoutMs), redirect: 'follow' });
        await r.body?.cancel();
        return { status: r.status, ms: Date.now() - t0 };
      } catch (e) {
        const err = e as Error & { cause?: { code?: string; message?: string } };
        const why = err.name === 'TimeoutError' ? `no answer in ${timeoutMs / 1000} s` : (err.cause?.code ?? err.cause?.message ?? err.message);
        return { error: why, ms: Date.now() - t0 };
      }
    },
    async cpuFlags() {
      const info = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
      return (/^flags\s*:\s*(.*)$/m.exec(info)?.[1] ?? '').split(/\s+/).filter(Boolean);
    },
    nativeIsa: () => isaFor('native'),
    async debVersion(pkg) {
      const r = await p.run(['dpkg-query', '-W', '-f=${Status}\t${Version}', pkg], 5000);
      const m = /install ok installed\t(\S+)/.exec(r.out);
      return r.code === 0 && m ? m[1] : undefined;
    },
    osIds() {
      try {
        const t = readFileSync('/etc/os-release', 'utf8');
        const v = (k: string) => (new RegExp(`^${k}=("?)([^"\\n]*)\\1`, 'm').exec(t)?.[2] ?? '').split(/\s+/).filter(Boolean);
        return [...v('ID'), ...v('ID_LIKE')];
      } catch {
        return [];
      }
    },
    async npmRegistry() {
      const env = process.env.npm_config_registry || process.env.NPM_CONFIG_REGISTRY;
      if (env) return env;
      const r = await p.run(['npm', 'config', 'get', 'registry'], 5000);
      const url = r.out.trim().split('\n').pop() ?? '';
      return r.code === 0 && /^https?:\/\//.test(url) ? url : 'https://registry.npmjs.org/';
    },
    python: '/usr/bin/python3',
    list: (dir) => readdir(dir).catch(() => []),
    readText: (f) => readFile(f, 'utf8').catch(() => undefined),
    ...over,
  };
  return p;
}
