/** Admission, eviction and idle unloading (src/runtime/policy.ts): pure functions, tables of cases. */
import { describe, expect, it } from 'vitest';
import { decideAdmission, idleExpired, idleUntil, type Resident } from '../../src/runtime/policy.js';

const M = 1024 * 1024;
const r = (name: string, mib: number, lastUsed: number, o: Partial<Resident> = {}): Resident => ({ name, ramBytes: mib * M, vramBytes: 0, lastUsed, pinned: false, busy: 0, ready: true, ...o });
const budget = (ram: number, vram = 0) => ({ ramBytes: ram * M, vramBytes: vram * M });

describe('decideAdmission', () => {
  const cases: { name: string; budget?: ReturnType<typeof budget>; residents: Resident[]; need: number; vneed?: number; want: ReturnType<typeof decideAdmission> | { action: 'refuse'; tooBig: boolean; short: string[] } }[] = [
    { name: 'no budget: always load', budget: undefined, residents: [r('a', 900, 1)], need: 900, want: { action: 'load' } },
    { name: 'fits: load', budget: budget(1000), residents: [r('a', 400, 1)], need: 600, want: { action: 'load' } },
    { name: 'LRU first, only as many as needed', budget: budget(1000), residents: [r('new', 300, 30), r('old', 300, 10), r('mid', 300, 20)], need: 300, want: { action: 'evict', victims: ['old'] } },
    { name: 'LRU order for two', budget: budget(1000), residents: [r('new', 300, 30), r('old', 300, 10), r('mid', 300, 20)], need: 600, want: { action: 'evict', victims: ['old', 'mid'] } },
    { name: 'pinned never chosen', budget: budget(1000), residents: [r('pin', 300, 1, { pinned: true }), r('b', 300, 5), r('c', 300, 9)], need: 400, want: { action: 'evict', victims: ['b'] } },
    { name: 'busy never chosen (in flight or queued)', budget: budget(1000), residents: [r('busy', 300, 1, { busy: 2 }), r('b', 300, 5), r('c', 300, 9)], need: 600, want: { action: 'evict', victims: ['b', 'c'] } },
    { name: 'starting models are not idle', budget: budget(1000), residents: [r('loading', 500, 1, { ready: false }), r('b', 400, 5)], need: 600, want: { action: 'refuse', tooBig: false, short: ['ram'] } },
    { name: 'refuse without evicting when evicting everything idle would not be enough', budget: budget(1000), residents: [r('pin', 500, 1, { pinned: true }), r('b', 300, 5)], need: 600, want: { action: 'refuse', tooBig: false, short: ['ram'] } },
    { name: 'too big for the whole budget', budget: budget(1000), residents: [], need: 1200, want: { action: 'refuse', tooBig: true, short: ['ram'] } },
    { name: 'the model itself (a reload) does not count against itself', budget: budget(1000), residents: [r('self', 800, 1)], need: 800, want: { action: 'load' } },
    { name: 'VRAM budgeted separately: RAM fits, GPU does not → evict the GPU user', budget: budget(1000, 1000), residents: [r('gpu', 100, 1, { vramBytes: 800 * M }), r('cpu', 100, 0)], need: 100, vneed: 400, want: { action: 'evict', victims: ['gpu'] } },
    { name: 'a CPU-only model is never refused for the GPU', budget: budget(1000, 100), residents: [r('gpu', 100, 1, { vramBytes: 100 * M, busy: 1 })], need: 100, vneed: 0, want: { action: 'load' } },
    { name: 'GPU short and nothing evictable: refuse naming the GPU', budget: budget(1000, 1000), residents: [r('gpu', 100, 1, { vramBytes: 800 * M, pinned: true })], need: 100, vneed: 400, want: { action: 'refuse', tooBig: false, short: ['vram'] } },
    { name: 'VRAM not budgeted (0): only RAM decides', budget: budget(1000, 0), residents: [r('gpu', 100, 1, { vramBytes: 5000 * M })], need: 100, vneed: 4000, want: { action: 'load' } },
  ];
  for (const c of cases) {
    it(c.name, () => {
      const d = decideAdmission(c.budget, c.residents, { name: c.name === 'the model itself (a reload) does not count against itself' ? 'self' : 'candidate', ramBytes: c.need * M, vramBytes: (c.vneed ?? 0) * M });
      expect(d).toMatchObject(c.want);
    });
  }

  it('a refusal carries the numbers', () => {
    const d = decideAdmission(budget(1000), [r('pin', 700, 1, { pinned: true })], { name: 'x', ramBytes: 500 * M, vramBytes: 0 });
    expect(d).toEqual({ action: 'refuse', tooBig: false, short: ['ram'], needBytes: 500 * M, freeBytes: 300 * M, budgetBytes: 1000 * M, vramNeedBytes: 0, vramFreeBytes: 0, vramBudgetBytes: 0 });
  });
});

describe('idle unloading', () => {
  const m = (name: string, o: Partial<Parameters<typeof idleUntil>[0]> = {}) => ({ name, ready: true, pinned: false, busy: 0, lastUsed: 1000, idleMs: 500, ...o });
  it('unloads what has been idle past its timeout, never pinned, busy, starting or timeout-less models', () => {
    const models = [m('expired'), m('fresh', { lastUsed: 1400 }), m('pinned', { pinned: true }), m('busy', { busy: 1 }), m('starting', { ready: false }), m('never', { idleMs: 0 })];
    expect(idleExpired(models, 1600)).toEqual(['expired']);
    expect(idleExpired(models, 1500)).toEqual([]); // exactly at the deadline: not yet
    expect(idleExpired(models, 2000)).toEqual(['expired', 'fresh']);
  });
  it('idleUntil is the moment, or 0 when it will not be unloaded', () => {
    expect(idleUntil(m('a'))).toBe(1500);
    expect(idleUntil(m('a', { busy: 2 }))).toBe(0);
    expect(idleUntil(m('a', { pinned: true }))).toBe(0);
  });
});
