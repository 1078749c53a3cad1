import { describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, utimesSync } from 'node:fs';
import { join } from 'node:path';
import { removeStale, STALE_MS } from '../global-setup.js';
import { made, tmp } from '../helpers.js';

describe('test temp dirs', () => {
  it('tmp() records each dir it makes, for test/setup.ts to remove after the file', () => {
    const d = tmp('aios-tempdirs-');
    expect(made).toContain(d);
    expect(existsSync(d)).toBe(true);
  });

  it('removes only stale dirs named like tmp() makes them', async () => {
    const parent = tmp('aios-stale-parent-');
    const now = Date.now();
    const old = (now - STALE_MS - 60_000) / 1000;
    const mk = (name: string, mtime?: number) => {
      const p = join(parent, name);
      mkdirSync(p);
      if (mtime) utimesSync(p, mtime, mtime);
      return p;
    };
    const stale = mk('aios-runtime-http-AbC123', old);
    const fresh = mk('aios-runtime-http-XyZ789');
    const foreign = mk('mydata-AbC123', old);
    const notTmp = mk('aios-cache', old);
    expect(await removeStale(parent, now)).toEqual([stale]);
    expect([existsSync(stale), existsSync(fresh), existsSync(foreign), existsSync(notTmp)]).toEqual([false, true, true, true]);
  });
});
