import { readdir } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { KernelFiles } from './types.js';

/** Finds the single installed kernel version under /usr/lib/modules. */
export async function kernelVersion(root: string): Promise<string> {
  const versions = (await readdir(join(root, 'usr/lib/modules')).catch(() => [])).filter((v) =>
    existsSync(join(root, 'usr/lib/modules', v, 'modules.dep')) || existsSync(join(root, 'usr/lib/modules', v, 'modules.order')),
  );
  if (versions.length === 0) throw new Error(`no kernel installed in ${root} (no /usr/lib/modules/<version>)`);
  versions.sort();
  return versions[versions.length - 1]!;
}

export function requireFiles(root: string, k: KernelFiles): KernelFiles {
  for (const p of [k.kernel, k.initrd]) {
    if (!existsSync(join(root, p))) throw new Error(`expected ${p} in the root for kernel ${k.version}, but it is missing`);
  }
  return k;
}
