/**
 * Once before the whole run (vitest globalSetup): removes temp dirs that earlier runs' test files
 * left in the system temp dir (a run killed before its afterAll hooks): only names tmp() makes
 * (`aios-…-XXXXXX`) and only those untouched for three hours, so a run in progress elsewhere keeps
 * its own. Also starts the whole run's background work (test/prefetch.ts) and, at the end, says how it went.
 */
import { readdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { safeRemove } from '../src/util/cleanup.js';
import { startPrefetch, wholeRun } from './prefetch.js';

export const STALE_MS = 3 * 3600_000;

export async function removeStale(dir = tmpdir(), now = Date.now()): Promise<string[]> {
  const removed: string[] = [];
  for (const e of await readdir(dir).catch(() => [] as string[])) {
    if (!/^aios-[a-z0-9-]+-[A-Za-z0-9]{6}$/.test(e)) continue;
    const p = join(dir, e);
    const st = await stat(p).catch(() => undefined);
    if (!st?.isDirectory() || now - st.mtimeMs < STALE_MS) continue;
    await safeRemove(p);
    removed.push(p);
  }
  return removed;
}

export default async function setup(): Promise<() => Promise<void>> {
  const removed = await removeStale();
  if (removed.length) process.stderr.write(`test setup: removed ${removed.length} stale temp dir(s) of earlier runs from ${tmpdir()}\n`);
  // The whole suite: the custom kernel compiles in the background meanwhile (test/prefetch.ts).
  const prefetch = wholeRun() ? startPrefetch() : undefined;
  return async () => {
    if (prefetch) process.stderr.write(`${await prefetch.stop()}\n`);
  };
}
