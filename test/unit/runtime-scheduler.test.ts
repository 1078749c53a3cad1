/** The runtime's priority queue (src/runtime/scheduler.ts): order, aging, caps, dropping. */
import { describe, expect, it } from 'vitest';
import { Scheduler, type Ticket } from '../../src/runtime/scheduler.js';
import { Code, RuntimeError } from '../../src/runtime/errors.js';
import type { PriorityName } from '../../src/runtime/events.js';

function make(o: { cap?: number; perModel?: number; total?: number; agingMs?: number; now?: () => number } = {}) {
  const caps = new Map<string, number>();
  const s = new Scheduler({ maxQueuePerModel: o.perModel ?? 100, maxQueueTotal: o.total ?? 1000, agingMs: o.agingMs ?? 0, capacity: (m) => caps.get(m) ?? 0, now: o.now });
  const open = (m: string, n: number) => {
    caps.set(m, n);
    s.pump(m);
  };
  return { s, open };
}
const tick = () => new Promise((r) => setTimeout(r, 0));

describe('runtime scheduler', () => {
  it('dispatches highest priority first, FIFO within a level', async () => {
    const { s, open } = make();
    const order: string[] = [];
    const tickets: Ticket[] = [];
    const add = (p: PriorityName, tag: string) =>
      s.enter('m', p).granted.then((t) => {
        order.push(tag);
        tickets.push(t);
      });
    const all = [add('batch', 'b1'), add('default', 'd1'), add('batch', 'b2'), add('realtime', 'r1'), add('system', 's1'), add('default', 'd2'), add('batch', 'b3')];
    expect(s.order('m').map((x) => x.priority)).toEqual(['system', 'realtime', 'default', 'default', 'batch', 'batch', 'batch']);
    open('m', 1);
    // one slot: each release hands it to the next best
    for (let i = 0; i < 7; i++) {
      await tick();
      expect(order).toHaveLength(i + 1);
      expect(s.runningOf('m')).toBe(1);
      tickets[i]!.release();
      tickets[i]!.release(); // a second release is a no-op
    }
    await Promise.all(all);
    expect(order).toEqual(['s1', 'r1', 'd1', 'd2', 'b1', 'b2', 'b3']);
    expect(s.runningOf('m')).toBe(0);
  });

  it('grants as many as there are free slots, and no more', async () => {
    const { s, open } = make();
    const granted: Ticket[] = [];
    for (let i = 0; i < 5; i++) void s.enter('m', 'default').granted.then((t) => granted.push(t));
    open('m', 2);
    await tick();
    expect(granted).toHaveLength(2);
    expect(s.queued('m')).toBe(3);
    granted[0]!.release();
    await tick();
    expect(granted).toHaveLength(3);
    expect(s.queued('m')).toBe(2);
  });

  it('ages waiting requests so batch work is not starved: +10 points per aging period, older first on a tie', () => {
    let now = 0;
    const { s } = make({ agingMs: 10_000, now: () => now });
    s.enter('m', 'batch'); // 50
    now = 35_000; // batch has aged to 80
    s.enter('m', 'realtime'); // 90
    expect(s.order('m').map((x) => [x.priority, x.effective])).toEqual([['realtime', 90], ['batch', 80]]);
    now = 40_000; // batch 90 = realtime 90: the older one goes first
    expect(s.order('m').map((x) => x.priority)).toEqual(['batch', 'realtime']);
    now = 100_000; // batch 150, realtime 90 + 60 = 150: still the older first
    expect(s.order('m').map((x) => [x.priority, x.effective])).toEqual([['batch', 150], ['realtime', 150]]);
  });

  it('refuses at once with RESOURCE_EXHAUSTED when a model queue or the global queue is full', () => {
    const { s } = make({ perModel: 2, total: 3 });
    s.enter('a', 'batch');
    s.enter('a', 'batch');
    let e: unknown;
    try {
      s.enter('a', 'system');
    } catch (x) {
      e = x;
    }
    expect(e).toBeInstanceOf(RuntimeError);
    expect((e as RuntimeError).code).toBe(Code.RESOURCE_EXHAUSTED);
    expect((e as Error).message).toMatch(/queue for a is full \(2 waiting, max_queue_per_model = 2\)/);
    s.enter('b', 'default');
    expect(() => s.enter('c', 'default')).toThrow(/runtime's queue is full \(3 waiting, max_queue_total = 3\)/);
    expect(s.totalQueued).toBe(3);
  });

  it('drops a cancelled waiter and an expired one: they are never granted, and the queue shrinks', async () => {
    const { s, open } = make();
    const ctrl = new AbortController();
    const cancelled = s.enter('m', 'realtime', { cancel: ctrl.signal });
    const expired = s.enter('m', 'system', { deadline: Date.now() + 20 });
    const normal = s.enter('m', 'batch');
    const drops: string[] = [];
    s.onDrop = (_m, p, reason) => drops.push(`${p}:${reason}`);
    expect(s.queued('m')).toBe(3);
    ctrl.abort();
    await expect(cancelled.granted).rejects.toMatchObject({ code: Code.CANCELLED });
    await expect(expired.granted).rejects.toMatchObject({ code: Code.DEADLINE_EXCEEDED });
    expect(s.queued('m')).toBe(1);
    open('m', 4);
    const t = await normal.granted;
    expect(t.priority).toBe('batch');
    expect(s.runningOf('m')).toBe(1);
    expect(drops.sort()).toEqual(['realtime:cancelled', 'system:expired']);
  });

  it('an expired waiter found at dispatch time is skipped, not run', async () => {
    let now = 0;
    const { s, open } = make({ now: () => now });
    const late = s.enter('m', 'system', { deadline: 10_000 }); // its timer (10 s of real time) has not fired yet
    const ok = s.enter('m', 'batch');
    now = 20_000;
    open('m', 1);
    await expect(late.granted).rejects.toMatchObject({ code: Code.DEADLINE_EXCEEDED });
    expect((await ok.granted).priority).toBe('batch');
  });

  it('abort() removes a waiter (a failed load); failAll() empties a model queue', async () => {
    const { s } = make();
    const w = s.enter('m', 'default');
    w.abort(new RuntimeError(Code.UNAVAILABLE, 'load failed'));
    await expect(w.granted).rejects.toThrow('load failed');
    const a = s.enter('m', 'batch');
    const b = s.enter('m', 'default');
    s.failAll('m', new RuntimeError(Code.UNAVAILABLE, 'unloaded'));
    await expect(a.granted).rejects.toThrow('unloaded');
    await expect(b.granted).rejects.toThrow('unloaded');
    expect(s.queued('m')).toBe(0);
  });

  it('snapshot lists every priority of every model, zeros included', () => {
    const { s } = make();
    s.enter('x', 'batch');
    s.enter('x', 'batch');
    s.enter('x', 'realtime');
    expect(s.snapshot(['y'])).toEqual([
      { model: 'x', priority: 'system', depth: 0 },
      { model: 'x', priority: 'realtime', depth: 1 },
      { model: 'x', priority: 'default', depth: 0 },
      { model: 'x', priority: 'batch', depth: 2 },
      { model: 'y', priority: 'system', depth: 0 },
      { model: 'y', priority: 'realtime', depth: 0 },
      { model: 'y', priority: 'default', depth: 0 },
      { model: 'y', priority: 'batch', depth: 0 },
    ]);
  });
});
