/**
 * A real kernel tree and stock config to check wishes against: Debian's linux-source-<ver> and
 * linux-config-<ver> packages, downloaded with a private apt state (the host's sources are not
 * touched) and extracted once into the cache.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../util/exec.js';
import { registerTemp, safeRemove } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';

export interface DebianKernel {
  version: string;
  /** Extracted kernel source tree. */
  source: string;
  /** Debian's stock amd64 config (xz). */
  config: string;
}

export interface DebianKernelOptions {
  cacheDir: string;
  suite?: string;
  series?: string;
  mirror?: string;
  /** Pinned linux-source version (e.g. 6.12.117-1): a cached tree of another version is fetched again, and an archive without it is an error. */
  version?: string;
  log?: string;
  progress?: (s: string) => void;
}

export async function debianKernel(o: DebianKernelOptions): Promise<DebianKernel> {
  const suite = o.suite ?? 'trixie';
  const series = o.series ?? '6.12';
  const base = join(o.cacheDir, 'kernel', `debian-${suite}-${series}`);
  const cached = async (): Promise<DebianKernel | undefined> => {
    if (!existsSync(join(base, 'done'))) return undefined;
    const version = (await readdir(join(base, 'debs'))).find((f) => f.startsWith(`linux-source-${series}_`))!.split('_')[1]!.replace(/%3a/g, ':');
    return { version, source: join(base, `linux-source-${series}`), config: join(base, 'x/usr/src', `linux-config-${series}`, 'config.amd64_none_amd64.xz') };
  };
  const have = await cached();
  if (have && (!o.version || have.version === o.version)) return have;
  const tmp = `${base}.tmp-${process.pid}`;
  await safeRemove(tmp);
  const unregister = registerTemp(tmp);
  try {
    await mkdir(join(tmp, 'lists/partial'), { recursive: true });
    await mkdir(join(tmp, 'cache/archives/partial'), { recursive: true });
    await mkdir(join(tmp, 'debs'), { recursive: true });
    await writeFile(join(tmp, 'sources.list'), `deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] ${o.mirror ?? 'http://deb.debian.org/debian'} ${suite} main\n`);
    const apt = ['-o', `Dir::Etc::SourceList=${join(tmp, 'sources.list')}`, '-o', 'Dir::Etc::SourceParts=/dev/null', '-o', `Dir::State::Lists=${join(tmp, 'lists')}`, '-o', `Dir::Cache=${join(tmp, 'cache')}`, '-o', 'APT::Sandbox::User=root'];
    o.progress?.(`apt-get update (${suite})`);
    await run(['apt-get', ...apt, 'update'], { log: o.log });
    o.progress?.(`downloading linux-source-${series} and linux-config-${series} (~150 MB)`);
    await run(['apt-get', ...apt, 'download', `linux-source-${series}`, `linux-config-${series}`], { cwd: join(tmp, 'debs'), log: o.log });
    const debs = await readdir(join(tmp, 'debs'));
    const src = debs.find((f) => f.startsWith(`linux-source-${series}_`));
    const cfg = debs.find((f) => f.startsWith(`linux-config-${series}_`));
    if (!src || !cfg) throw new UserError(`could not download linux-source-${series}/linux-config-${series} from ${suite}`, 1);
    o.progress?.('extracting');
    for (const d of [src, cfg]) await run(['dpkg-deb', '-x', join(tmp, 'debs', d), join(tmp, 'x')], { log: o.log });
    await run(['tar', '-xaf', join(tmp, 'x/usr/src', `linux-source-${series}.tar.xz`), '-C', tmp], { log: o.log });
    await safeRemove(join(tmp, 'x/usr/src', `linux-source-${series}.tar.xz`));
    await safeRemove(join(tmp, 'lists'));
    await safeRemove(join(tmp, 'cache'));
    await writeFile(join(tmp, 'done'), new Date().toISOString());
    await safeRemove(base);
    await mkdir(join(o.cacheDir, 'kernel'), { recursive: true });
    await rename(tmp, base);
  } finally {
    unregister();
    await safeRemove(tmp);
  }
  const got = (await cached())!;
  if (o.version && got.version !== o.version) {
    throw new UserError(`kernel.version pins linux-source-${series} ${o.version}, but ${suite} now has ${got.version} (Debian replaces point releases): set kernel.version = "${got.version}" in the recipe, or remove the pin`, 2);
  }
  return got;
}
