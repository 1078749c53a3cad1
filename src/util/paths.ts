import { homedir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository (package) root: templates/, images/, rootfs/, kernel-configs/ live here. */
export const PKG_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export const paths = {
  templates: join(PKG_ROOT, 'templates'),
  images: join(PKG_ROOT, 'images'),
  rootfsOverlay: join(PKG_ROOT, 'rootfs'),
  kernelConfigs: join(PKG_ROOT, 'kernel-configs'),
};

/** Cache dir for stage outputs and downloaded packages: $AIOS_CACHE_DIR, else XDG cache. */
export function defaultCacheDir(): string {
  if (process.env.AIOS_CACHE_DIR) return process.env.AIOS_CACHE_DIR;
  const xdg = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(xdg, 'aios');
}
