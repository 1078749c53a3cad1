import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, readdirSync, readFileSync, utimesSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { StageCache } from '../../src/build/cache.js';
import { hashOf, derivedUuid } from '../../src/util/hash.js';
import { loadRecipe } from '../../src/config/load.js';
import { identity } from '../../src/build/context.js';
import { rootfsStage, overlayStage, type BuildContext } from '../../src/build/stages/index.js';
import { distroFor } from '../../src/distros/index.js';
import { tmp } from '../helpers.js';

describe('cache keys', () => {
  it('do not depend on key order, and change with any value', () => {
    expect(hashOf({ a: 1, b: [1, 2] })).toBe(hashOf({ b: [1, 2], a: 1 }));
    expect(hashOf({ a: 1, b: [1, 2] })).not.toBe(hashOf({ a: 1, b: [2, 1] }));
    expect(hashOf('x', { a: 1 })).not.toBe(hashOf('y', { a: 1 }));
  });

  it('derives stable, valid UUIDs from the image seed', () => {
    const u = derivedUuid('seed', 'root');
    expect(u).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(derivedUuid('seed', 'root')).toBe(u);
    expect(derivedUuid('seed', 'esp')).not.toBe(u);
  });

  async function stageKeys(sets: string[]) {
    // No kernel fragments: those are checked against the real rootfs, which this unit test does not build.
    const recipe = await loadRecipe('default', { sets: ['kernel.fragments=[]', ...sets] });
    const ctx = { recipe, distro: distroFor('debian'), id: identity(recipe), outputs: { rootfs: { key: 'R', dir: '/x', cached: true, seconds: 0 }, llama: { key: 'L', dir: '/l', cached: true, seconds: 0 }, models: { key: 'M', dir: '/m', cached: true, seconds: 0 } } } as unknown as BuildContext;
    return { rootfs: hashOf('rootfs', await rootfsStage.inputs(ctx)), overlay: hashOf('overlay', await overlayStage.inputs(ctx)) };
  }

  it('a template-only change (hostname) keeps the rootfs key and changes the overlay key', async () => {
    const a = await stageKeys([]);
    const b = await stageKeys(['system.hostname=other']);
    expect(b.rootfs).toBe(a.rootfs);
    expect(b.overlay).not.toBe(a.overlay);
  });

  it('a package change or an initramfs change invalidates the rootfs stage', async () => {
    const a = await stageKeys([]);
    expect((await stageKeys(['base.packages=["htop"]'])).rootfs).not.toBe(a.rootfs);
    expect((await stageKeys(['boot.initramfs_modules=["virtio_blk"]'])).rootfs).not.toBe(a.rootfs);
    expect((await stageKeys([])).rootfs).toBe(a.rootfs);
  });
});

describe('StageCache', () => {
  it('publishes a finished stage and reuses it by key', async () => {
    const cache = new StageCache(tmp());
    expect(await cache.get('s', 'k1')).toBeUndefined();
    let runs = 0;
    const dir = await cache.put('s', 'k1', { in: 1 }, async (d) => {
      runs++;
      writeFileSync(join(d, 'out.txt'), 'hello');
    });
    expect(readFileSync(join(dir, 'out.txt'), 'utf8')).toBe('hello');
    expect(await cache.get('s', 'k1')).toBe(dir);
    expect(JSON.parse(readFileSync(join(dir, 'stage.json'), 'utf8'))).toMatchObject({ stage: 's', key: 'k1', inputs: { in: 1 } });
    expect(runs).toBe(1);
  });

  it('leaves nothing behind when a stage fails half-way', async () => {
    const root = tmp();
    const cache = new StageCache(root);
    await expect(
      cache.put('s', 'k2', {}, async (d) => {
        writeFileSync(join(d, 'partial'), 'x');
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(await cache.get('s', 'k2')).toBeUndefined();
    expect(readdirSync(join(root, 'stages', 's'))).toEqual([]);
  });

  it('keeps only the most recent outputs per stage', async () => {
    const cache = new StageCache(tmp(), 2);
    const dirs = [];
    for (const k of ['a', 'b', 'c']) {
      dirs.push(await cache.put('s', k, {}, async () => {}));
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(existsSync(dirs[0]!)).toBe(false);
    expect(existsSync(dirs[1]!)).toBe(true);
    expect(existsSync(dirs[2]!)).toBe(true);
  });

  it('makes room by removing the least recently used outputs of any stage, never one in use, and stops when enough is free', async () => {
    const GiB = 1024 ** 3;
    let dirs: string[] = [];
    // A simulated 4 GiB disk on which every published output takes 1 GiB.
    const cache = new StageCache(tmp(), 2, async () => (4 - dirs.filter((d) => existsSync(d)).length) * GiB);
    const o1 = await cache.put('a', 'k1', {}, async (d) => writeFileSync(join(d, 'f'), 'x'.repeat(10_000)));
    const o2 = await cache.put('b', 'k2', {}, async (d) => writeFileSync(join(d, 'f'), 'y'));
    const o3 = await cache.put('a', 'k3', {}, async (d) => writeFileSync(join(d, 'f'), 'z'));
    dirs = [o1, o2, o3];
    const t = Date.now() / 1000;
    utimesSync(o1, t - 300, t - 300); // oldest, but in use by the running build
    utimesSync(o2, t - 200, t - 200);
    utimesSync(o3, t - 100, t - 100);
    expect(JSON.parse(readFileSync(join(o1, 'stage.json'), 'utf8')).bytes).toBeGreaterThanOrEqual(10_000);
    expect(await cache.reclaimable(new Set([o1]))).toBe((await cache.outputs()).filter((o) => o.dir !== o1).reduce((n, o) => n + o.bytes, 0));

    const nothing = await cache.makeRoom(1 * GiB, new Set([o1]));
    expect(nothing.removed).toEqual([]);
    const r = await cache.makeRoom(2 * GiB, new Set([o1]));
    expect(r.removed.map((o) => o.dir)).toEqual([o2]);
    expect(r.free).toBe(2 * GiB);
    expect([existsSync(o1), existsSync(o2), existsSync(o3)]).toEqual([true, false, true]);
    // More than can be had: everything not in use goes, and the result says it is still short.
    const short = await cache.makeRoom(4 * GiB, new Set([o1]));
    expect(short.removed.map((o) => o.dir)).toEqual([o3]);
    expect(short.free).toBe(3 * GiB);
    expect(existsSync(o1)).toBe(true);
  });
});

describe('cacheKeep', () => {
  it('AIOS_CACHE_KEEP when it is a whole number of at least 1, else 2', async () => {
    const { cacheKeep } = await import('../../src/build/cache.js');
    expect(cacheKeep({})).toBe(2);
    expect(cacheKeep({ AIOS_CACHE_KEEP: '6' })).toBe(6);
    for (const bad of ['0', '-1', '2.5', 'many', '']) expect(cacheKeep({ AIOS_CACHE_KEEP: bad }), bad).toBe(2);
  });
});

describe('StageCache.getOrPut: one output per key, whoever asks', () => {
  it('makes an output once when two builds in this process need it at the same time', async () => {
    const cache = new StageCache(tmp());
    let made = 0;
    const produce = async (d: string) => {
      made++;
      await new Promise((r) => setTimeout(r, 100));
      writeFileSync(join(d, 'x'), 'x');
    };
    const [a, b] = await Promise.all([cache.getOrPut('llama', 'k'.repeat(64), {}, produce, { pollMs: 20 }), cache.getOrPut('llama', 'k'.repeat(64), {}, produce, { pollMs: 20 })]);
    expect(made).toBe(1);
    expect([a.cached, b.cached].sort()).toEqual([false, true]);
    expect(a.dir).toBe(b.dir);
    expect(readdirSync(join(cache.dir, 'locks'))).toEqual([]);
    // --no-cache / --rebuild: made anew although it exists.
    expect((await cache.getOrPut('llama', 'k'.repeat(64), {}, produce, { reuse: false })).cached).toBe(false);
    expect(made).toBe(2);
  });

  it("waits for another process that holds the key's lock, then reuses what it published", async () => {
    const cache = new StageCache(tmp());
    const key = 'a'.repeat(64);
    const other = spawn('sleep', ['30'], { stdio: 'ignore' });
    try {
      mkdirSync(join(cache.dir, 'locks'), { recursive: true });
      writeFileSync(join(cache.dir, 'locks', `kernel-${key.slice(0, 16)}.lock`), String(other.pid));
      const lines: string[] = [];
      let made = 0;
      const waiting = cache.getOrPut('kernel', key, {}, async () => void made++, { pollMs: 20, progress: (l) => lines.push(l) });
      await new Promise((r) => setTimeout(r, 200));
      // The other build publishes its output and ends.
      await cache.put('kernel', key, {}, async (d) => writeFileSync(join(d, 'vmlinuz'), 'k'));
      other.kill();
      const r = await waiting;
      expect(made).toBe(0);
      expect(r.cached).toBe(true);
      expect(readFileSync(join(r.dir, 'vmlinuz'), 'utf8')).toBe('k');
      expect(lines).toEqual([`waiting for another build (pid ${other.pid}) that is making the kernel stage's output ${key.slice(0, 16)}`]);
    } finally {
      other.kill();
    }
  });
});
