/**
 * Stage cache: each stage's output lives in <cache>/stages/<stage>/<key>/, written under a
 * temporary name and renamed when complete, so an interrupted stage never looks finished.
 */
import { mkdir, readdir, rename, stat, writeFile, readFile, utimes } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { registerTemp, safeRemove } from '../util/cleanup.js';

export interface StageRecord {
  stage: string;
  key: string;
  inputs: unknown;
  created: string;
  seconds: number;
}

export class StageCache {
  constructor(
    readonly dir: string,
    /** How many outputs to keep per stage (older ones are pruned). */
    readonly keep = 2,
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
      const rec: StageRecord = { stage, key, inputs, created: new Date().toISOString(), seconds: (Date.now() - t0) / 1000 };
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
        if (!pidAlive(Number(m[1]))) await safeRemove(p);
        continue;
      }
      done.push({ p, t: (await stat(p)).mtimeMs });
    }
    done.sort((a, b) => b.t - a.t);
    for (const { p } of done.slice(this.keep)) if (p !== current) await safeRemove(p);
  }
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return pid !== process.pid;
  } catch {
    return false;
  }
}
