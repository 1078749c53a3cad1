/**
 * Interrupt safety: temporary paths are registered while they exist; on SIGINT/SIGTERM (or a
 * thrown error) they are removed, after unmounting anything a bootstrap left mounted inside them.
 */
import { readFile, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { execa } from 'execa';

const pending = new Set<string>();
let installed = false;

function unescapeMountinfo(s: string): string {
  return s.replace(/\\(\d{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

/** Unmount everything mounted at or below dir (deepest first), then remove it. */
export async function safeRemove(dir: string): Promise<void> {
  if (!existsSync(dir)) return;
  try {
    const info = await readFile('/proc/self/mountinfo', 'utf8');
    const mounts = info
      .split('\n')
      .map((l) => l.split(' ')[4])
      .filter((m): m is string => !!m)
      .map(unescapeMountinfo)
      .filter((m) => m === dir || m.startsWith(dir + '/'))
      .sort((a, b) => b.length - a.length);
    for (const m of mounts) await execa('umount', ['-l', m], { reject: false });
  } catch {
    /* no /proc: nothing can be mounted either */
  }
  // --one-file-system: never descend into something still mounted.
  await execa('rm', ['-rf', '--one-file-system', dir], { reject: false });
  if (existsSync(dir)) await rm(dir, { recursive: true, force: true });
}

export function registerTemp(path: string): () => void {
  install();
  pending.add(path);
  return () => pending.delete(path);
}

export async function cleanupAll(): Promise<void> {
  const paths = [...pending];
  pending.clear();
  for (const p of paths) await safeRemove(p);
}

function install(): void {
  if (installed) return;
  installed = true;
  for (const [sig, code] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
    ['SIGHUP', 129],
  ] as const) {
    process.on(sig, () => {
      process.stderr.write(`\naios: ${sig}: removing temporary files…\n`);
      void cleanupAll().finally(() => process.exit(code));
    });
  }
}
