/** The model child's state machine (src/runtime/child.ts) with a fake llama-server: no processes. */
import { describe, expect, it } from 'vitest';
import { IllegalTransition, ModelChild, TRANSITIONS, type ChildOptions, type ChildState } from '../../src/runtime/child.js';
import { Code, RuntimeError } from '../../src/runtime/errors.js';
import { FakeLauncher } from '../fake-child.js';

const profile = { name: 'm', path: '/nowhere/m.gguf', level: '' as const, ctxSize: 512, threads: 1, gpuLayers: 0, parallel: 2, mmap: true };

function child(o: Partial<ChildOptions> = {}) {
  const launcher = new FakeLauncher();
  const seen: [ChildState, ChildState][] = [];
  const c = new ModelChild(profile, { launcher, loadTimeoutMs: 2000, maxRestarts: 2, backoffMs: () => 1, pollMs: 5, stopGraceMs: 100, onTransition: (_c, from, to) => seen.push([from, to]), ...o });
  return { c, launcher, seen };
}
const until = async (f: () => boolean, ms = 3000) => {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 2));
  }
};
const rejection = (p: Promise<unknown>) => p.then(() => undefined, (e: RuntimeError) => e);

describe('model child state machine', () => {
  it('the transition table is closed: every target is a state, and only listed transitions happen', () => {
    const states = Object.keys(TRANSITIONS);
    for (const targets of Object.values(TRANSITIONS)) for (const t of targets) expect(states).toContain(t);
    const { c } = child();
    expect(() => (c as unknown as { transition(s: ChildState): void }).transition('ready')).toThrow(IllegalTransition);
    expect(() => (c as unknown as { transition(s: ChildState): void }).transition('restarting')).toThrow(/illegal state transition stopped → restarting/);
    expect(c.state).toBe('stopped');
  });

  it('ensureReady starts a stopped child once, however many callers ask', async () => {
    const { c, launcher, seen } = child();
    launcher.b.loadingPolls = 3; // answers 503 a few times first, as llama-server does while loading
    await Promise.all([c.ensureReady(), c.ensureReady(), c.ensureReady()]);
    expect(c.state).toBe('ready');
    expect(launcher.procs).toHaveLength(1);
    expect(c.actualBytes).toBe(100 * 1024 * 1024);
    expect(seen).toEqual([['stopped', 'starting'], ['starting', 'ready']]);
    await c.stop('test');
    expect(c.state).toBe('stopped');
  });

  it('a crash while ready fails the requests in flight and restarts after the backoff', async () => {
    const { c, launcher, seen } = child();
    await c.ensureReady();
    const lease = c.lease();
    launcher.last.exit(null, 'SIGSEGV');
    await until(() => lease.signal.aborted);
    expect((lease.signal.reason as RuntimeError).code).toBe(Code.UNAVAILABLE);
    expect((lease.signal.reason as Error).message).toMatch(/died \(SIGSEGV\) during the request; it is being restarted/);
    await c.ensureReady(); // waits through the restart
    expect(c.state).toBe('ready');
    expect(c.restarts).toBe(1);
    expect(launcher.procs).toHaveLength(2);
    expect(seen.map(([, to]) => to)).toEqual(['starting', 'ready', 'restarting', 'starting', 'ready']);
    await c.stop('test');
  });

  it('max_restarts reached: failed, with the reason, and ensureReady refuses', async () => {
    const { c, launcher } = child({ maxRestarts: 2 });
    await c.ensureReady();
    for (let i = 0; i < 2; i++) {
      launcher.last.exit(1);
      await until(() => c.restarts === i + 1);
      await c.ensureReady();
    }
    launcher.last.exit(1); // the third crash in the window
    await until(() => c.state === 'failed');
    expect(c.error).toMatch(/crashed 3 times in 5 minutes; last: exit 1/);
    const e = await rejection(c.ensureReady());
    expect(e?.code).toBe(Code.FAILED_PRECONDITION);
    expect(e?.message).toMatch(/model m failed: crashed 3 times/);
    expect(launcher.procs).toHaveLength(3);
    // an explicit retry starts it again with a fresh count
    await c.retry();
    expect(c.state).toBe('ready');
    await c.stop('test');
  });

  it('crashes outside the window do not add up', async () => {
    let now = 1_000_000;
    const { c, launcher } = child({ maxRestarts: 1, crashWindowMs: 60_000, now: () => now });
    await c.ensureReady();
    for (let i = 0; i < 3; i++) {
      now += 120_000;
      launcher.last.exit(1);
      await until(() => c.restarts === i + 1);
      await c.ensureReady();
    }
    expect(c.state).toBe('ready');
    expect(c.restarts).toBe(3);
    await c.stop('test');
  });

  it('a hung child (health misses) is killed and restarted', async () => {
    const { c, launcher } = child({ healthMisses: 3 });
    await c.ensureReady();
    launcher.b.healthy = false;
    await c.checkHealth();
    await c.checkHealth();
    expect(c.state).toBe('ready');
    await c.checkHealth(); // the third miss
    await until(() => c.state !== 'ready');
    launcher.b.healthy = true;
    await c.ensureReady();
    expect(c.restarts).toBe(1);
    await c.stop('test');
  });

  it('a child that exits while loading fails with its output', async () => {
    const { c, launcher } = child();
    launcher.b.exitOnStart = true;
    const e = await rejection(c.ensureReady());
    expect(c.state).toBe('failed');
    expect(e?.code).toBe(Code.FAILED_PRECONDITION);
    expect(e?.message).toMatch(/llama-server exited while loading m: fake llama-server: last line/);
  });

  it('a child that never becomes healthy is killed at the load timeout', async () => {
    const { c, launcher } = child({ loadTimeoutMs: 100 });
    launcher.b.healthy = false;
    const e = await rejection(c.ensureReady());
    expect(e?.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(e?.message).toMatch(/did not become ready within 0.1 s/);
    expect(launcher.last.alive).toBe(false);
    expect(c.state).toBe('failed');
  });

  it('stopped while starting: the start is abandoned and waiters hear why', async () => {
    const { c, launcher } = child();
    launcher.b.loadingPolls = 1_000_000;
    const waiting = rejection(c.ensureReady());
    await until(() => launcher.procs.length === 1);
    await c.stop('unloaded');
    expect(c.state).toBe('stopped');
    expect((await waiting)?.code).toBe(Code.UNAVAILABLE);
    expect(launcher.last.alive).toBe(false);
  });

  it('stopped while waiting to restart: no restart happens', async () => {
    const { c, launcher } = child({ backoffMs: () => 200 });
    await c.ensureReady();
    launcher.last.exit(1);
    await until(() => c.state === 'restarting');
    await c.stop('unloaded');
    await new Promise((r) => setTimeout(r, 300));
    expect(c.state).toBe('stopped');
    expect(launcher.procs).toHaveLength(1);
  });

  it('a lease is only given by a ready child, and release moves the idle clock', async () => {
    let now = 5;
    const { c } = child({ now: () => now });
    expect(() => c.lease()).toThrow(/is stopped/);
    await c.ensureReady();
    const l = c.lease();
    expect(c.busy).toBe(1);
    now = 99;
    l.release();
    l.release(); // twice is harmless
    expect(c.busy).toBe(0);
    expect(c.lastUsed).toBe(99);
    await c.stop('test');
  });
});
