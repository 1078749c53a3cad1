/**
 * Cross-process locks on a path: `<path>.lock` holds the owner's pid; a lock of a dead process is
 * taken over. Used where two builds (two `aios` processes, or a test run and a prefetch) may reach
 * the same work: the kept kernel build directory, a stage output being made under one cache key.
 */
import { mkdir, open, readFile, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { registerTemp } from './cleanup.js';

/** Locks this process holds (another build in the same process waits too). */
const held = new Set<string>();

/** Whether a process with this pid exists (this process included). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs `fn` holding `<path>.lock`: a second caller (another process, or this one) waits, polling
 * every `pollMs`, and says so through `progress` (`what` names the work in that line).
 */
export async function withDirLock<T>(path: string, progress: (s: string) => void, fn: () => Promise<T>, o: { what?: string; pollMs?: number } = {}): Promise<T> {
  const lock = `${path}.lock`;
  await mkdir(dirname(lock), { recursive: true });
  let said = false;
  for (;;) {
    try {
      const h = await open(lock, 'wx');
      await h.writeFile(String(process.pid));
      await h.close();
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number((await readFile(lock, 'utf8').catch(() => '')).trim());
      if (!pid || (pid === process.pid ? !held.has(lock) : !pidAlive(pid))) {
        await rm(lock, { force: true });
        continue;
      }
      if (!said) progress(`waiting for another build (pid ${pid}) that ${o.what ? `is making ${o.what}` : `uses ${path}`}`);
      said = true;
      await new Promise((r) => setTimeout(r, o.pollMs ?? 5000));
    }
  }
  held.add(lock);
  const unregister = registerTemp(lock);
  try {
    return await fn();
  } finally {
    held.delete(lock);
    unregister();
    await rm(lock, { force: true });
  }
}
