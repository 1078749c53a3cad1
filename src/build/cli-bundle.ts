/**
 * The image's `aios` command (esbuild, like the runtime's bundle): src/cli/machine-main.ts into
 * `aios-cli.mjs` beside aios-runtime's bundle (it reads the same proto/ dir), chunks for what only
 * some verbs load (the panel), and `/usr/bin/aios` to run it.
 */
import { build } from 'esbuild';
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PKG_ROOT } from '../util/paths.js';
import { imageBundleOptions } from './runtime-bundle.js';

/** Source trees the bundle is made from (the overlay stage's cache key hashes them). */
export const CLI_SOURCES = ['src/cli', 'src/top', 'src/util', 'src/doctor', 'src/kernel', 'src/update'];

/** Bundles the CLI into `outDir` (which must hold proto/, as bundleRuntime() leaves it); returns the entry file. */
export async function bundleCli(outDir: string): Promise<string> {
  await mkdir(outDir, { recursive: true });
  await build({
    ...imageBundleOptions('aios-cli', outDir),
    entryPoints: { 'aios-cli': join(PKG_ROOT, 'src/cli/machine-main.ts') },
    // `runtime serve` is not in the image's command (the daemon is aios-runtime.mjs): its import stays unresolved
    external: ['../runtime/entry.js'],
  });
  return join(outDir, 'aios-cli.mjs');
}

/** `/usr/bin/aios` in `root`, running the bundle installed at `/usr/lib/aios-runtime/aios-cli.mjs`. */
export async function installCliLauncher(root: string): Promise<string> {
  const bin = join(root, 'usr/bin/aios');
  await mkdir(join(root, 'usr/bin'), { recursive: true });
  await writeFile(bin, '#!/bin/sh\n# aios on a running machine: ps, top, runtime …, bench (src/cli/machine.ts, bundled)\nexec node /usr/lib/aios-runtime/aios-cli.mjs "$@"\n');
  await chmod(bin, 0o755);
  return bin;
}
