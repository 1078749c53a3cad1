/**
 * Stage cache: each stage's output lives in <cache>/stages/<stage>/<key>/, written under a
 * temporary name and renamed when complete, so an interrupted stage never looks finished.
 * Each stage keeps its `keep` most recently used outputs; when the cache's file system runs short,
 * `makeRoom()` removes the least recently used outputs of any stage (never one the build in
 * progress uses) until a stage's worth of space is free.
 */
import { mkdir, readdir, rename, stat, writeFile, readFile, utimes, statfs } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { registerTemp, safeRemove } from '../util/cleanup.js';
import { pidAlive, withDirLock } from '../util/lock.js';

export interface StageRecord {
  stage: string;
  key: string;
  inputs: unknown;
  created: string;
  seconds: number;
  /** Bytes the output takes on disk (du), for eviction and `aios doctor`. */
  bytes?: number;
}

/** Free space a build wants in the cache dir and in the output dir (preflight, `aios doctor`). */
export const SPACE_NEEDED = { cache: 3 * 1024 ** 3, output: 2 * 1024 ** 3 } as const;

/** One published stage output, as eviction sees it. */
export interface CachedOutput {
  stage: string;
  dir: string;
  /** Last use (the dir's mtime, touched by get()). */
  used: number;
  bytes: number;
}

/** Bytes free for an unprivileged writer in the file system holding `dir`. */
export async function freeBytes(dir: string): Promise<number> {
  const fs = await statfs(dir);
  return fs.bavail * fs.bsize;
}

/** Bytes a tree takes on disk, hard links counted once (du -s). */
export async function diskUsage(dir: string): Promise<number> {
  const r = await execa('du', ['-s', '-B1', '--one-file-system', dir], { reject: false });
  return Number.parseInt(r.stdout.split('\t')[0] ?? '', 10) || 0;
}

/**
 * How many outputs each stage keeps: $AIOS_CACHE_KEEP (a whole number ≥ 1; CI sets more, so that the
 * recipes its tests build in turn do not push each other's roots out), else 2.
 */
export function cacheKeep(env: NodeJS.ProcessEnv = process.env): number {
  const n = Number(env.AIOS_CACHE_KEEP);
  return Number.isInteger(n) && n >= 1 ? n : 2;
}

export class StageCache {
  constructor(
    readonly dir: string,
    /** How many outputs to keep per stage (older ones are pruned). */
    readonly keep = 2,
    /** Free space of the cache's file system (injectable for tests). */
    readonly free: (dir: string) => Promise<number> = freeBytes,
  ) {}

  path(stage: string, key: string): string {
    return join(this.dir, 'stages', stage, key.slice(0, 16));
  }

  async get(stage: string, key: string): Promise<string | undefined> {
    const p = this.path(stage, key);
    if (!existsSync(join(p, 'stage.json'))) return undefined;
    const rec = JSON.parse(await readFile(join(p, 'stage.json'), 'utf8')) as StageRecord;
    if (rec.key !== key) return undefined;
    const now = new Date();
    await utimes(p, now, now); // mark as recently used
    return p;
  }

  /**
   * The output under this key, made by `produce` when there is none, holding a lock on the key
   * (`<cache>/locks/<stage>-<key>.lock`): two builds that need the same output (two `aios` runs, a
   * test run and a prefetch) make it once: the second waits, then reuses it. `reuse: false`
   * (--no-cache, --rebuild) makes it anew either way.
   */
  async getOrPut(stage: string, key: string, inputs: unknown, produce: (dir: string) => Promise<void>, o: { reuse?: boolean; progress?: (s: string) => void; pollMs?: number } = {}): Promise<{ dir: string; cached: boolean }> {
    const reuse = o.reuse ?? true;
    const have = reuse ? await this.get(stage, key) : undefined;
    if (have) return { dir: have, cached: true };
    return withDirLock(
      join(this.dir, 'locks', `${stage}-${key.slice(0, 16)}`),
      o.progress ?? (() => {}),
      async () => {
        const now = reuse ? await this.get(stage, key) : undefined;
        if (now) return { dir: now, cached: true };
        return { dir: await this.put(stage, key, inputs, produce), cached: false };
      },
      { what: `the ${stage} stage's output ${key.slice(0, 16)}`, pollMs: o.pollMs },
    );
  }

  /** Runs `produce` into a fresh temp dir and publishes it under the key when it succeeds. */
  async put(stage: string, key: string, inputs: unknown, produce: (dir: string) => Promise<void>): Promise<string> {
    const final = this.path(stage, key);
    const tmp = `${final}.tmp-${process.pid}`;
    await mkdir(join(this.dir, 'stages', stage), { recursive: true });
    await this.prune(stage); // also removes temp dirs of builds that were killed
    await safeRemove(tmp);
    await mkdir(tmp, { recursive: true });
    const unregister = registerTemp(tmp);
    const t0 = Date.now();
    try {
      await produce(tmp);
      const rec: StageRecord = { stage, key, inputs, created: new Date().toISOString(), seconds: (Date.now() - t0) / 1000, bytes: await diskUsage(tmp) };
      await writeFile(join(tmp, 'stage.json'), JSON.stringify(rec, null, 2));
      await safeRemove(final);
      await rename(tmp, final);
    } catch (e) {
      await safeRemove(tmp);
      throw e;
    } finally {
      unregister();
    }
    await this.prune(stage, final);
    return final;
  }

  /** Keeps the `keep` most recently used outputs of a stage; removes stale temp dirs. */
  async prune(stage: string, current?: string): Promise<void> {
    const dir = join(this.dir, 'stages', stage);
    const entries = await readdir(dir).catch(() => []);
    const done: { p: string; t: number }[] = [];
    for (const e of entries) {
      const p = join(dir, e);
      const m = /\.tmp-(\d+)$/.exec(e);
      if (m) {
        if (Number(m[1]) === process.pid || !pidAlive(Number(m[1]))) await safeRemove(p);
        continue;
      }
      done.push({ p, t: (await stat(p)).mtimeMs });
    }
    done.sort((a, b) => b.t - a.t);
    for (const { p } of done.slice(this.keep)) if (p !== current) await safeRemove(p);
  }

  /** Every published output of every stage, least recently used first. */
  async outputs(): Promise<CachedOutput[]> {
    const out: CachedOutput[] = [];
    const root = join(this.dir, 'stages');
    for (const stage of await readdir(root).catch(() => [] as string[])) {
      for (const e of await readdir(join(root, stage)).catch(() => [] as string[])) {
        const dir = join(root, stage, e);
        if (/\.tmp-\d+$/.test(e) || !existsSync(join(dir, 'stage.json'))) continue;
        const rec = JSON.parse(await readFile(join(dir, 'stage.json'), 'utf8').catch(() => '{}')) as Partial<StageRecord>;
        out.push({ stage, dir, used: (await stat(dir)).mtimeMs, bytes: rec.bytes ?? (await diskUsage(dir)) });
      }
    }
    return out.sort((a, b) => a.used - b.used);
  }

  /**
   * Makes `need` bytes free in the cache's file system by removing the least recently used stage
   * outputs, never one in `inUse` (the outputs the running build has read). Stops as soon as
   * enough is free; returns what it removed (possibly nothing, and possibly not enough).
   */
  async makeRoom(need: number, inUse: ReadonlySet<string> = new Set()): Promise<{ removed: CachedOutput[]; free: number }> {
    await mkdir(this.dir, { recursive: true });
    let free = await this.free(this.dir);
    const removed: CachedOutput[] = [];
    if (free >= need) return { removed, free };
    for (const o of await this.outputs()) {
      if (inUse.has(o.dir)) continue;
      await safeRemove(o.dir);
      removed.push(o);
      free = await this.free(this.dir);
      if (free >= need) break;
    }
    return { removed, free };
  }

  /** What makeRoom() could free at most: the outputs not in `inUse`. */
  async reclaimable(inUse: ReadonlySet<string> = new Set()): Promise<number> {
    return (await this.outputs()).filter((o) => !inUse.has(o.dir)).reduce((n, o) => n + o.bytes, 0);
  }
}

