/**
 * The whole test run's background work (started by test/global-setup.ts, only when vitest runs
 * every file: no file or name filter; AIOS_TEST_PREFETCH=0 turns it off): the custom kernel that
 * test/e2e/custom-kernel.test.ts boots is compiled by `aios build kernel` with the same settings, at
 * nice 19 and idle I/O priority, on the CPU time the other files leave unused (dpkg in mmdebstrap,
 * TCG guests waiting, unit tests on one core). On a new machine its cold compile (≈ 18 min on 2
 * cores) would otherwise come on top of everything else. The test (run last, vitest.config.ts) then
 * finds the kernel stage cached, or waits for the prefetch through the stage cache's lock on the key
 * (src/build/cache.ts getOrPut); when the kernel is cached already, the prefetch ends within a
 * second. Its output: <tmp>/aios-prefetch-kernel.log; one line at the end of the run says how it went.
 *
 * Being detached (its own session, so that stop() can end its whole process group), it is also in
 * an autogroup of its own where the kernel has CONFIG_SCHED_AUTOGROUP on: the scheduler then shares
 * the CPU between autogroups first and applies a process's nice only inside its group, so `nice 19`
 * alone left the compile half of the two cores (a cold run's first llama.cpp compile took twice as
 * long beside it). The group's own nice is therefore set to 19 too (/proc/<pid>/autogroup).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, openSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseCLI } from 'vitest/node';
import { KERNEL_RECIPE, KERNEL_SETS } from './e2e/custom-kernel.sets.js';

const REPO = join(import.meta.dirname, '..');

export interface Prefetch {
  log: string;
  /** Stops it if it still runs; says how it went (one line). */
  stop(): Promise<string>;
}

/** The command line: niced, idle I/O class, the kernel test's recipe and kernel settings, JSON out. */
export function prefetchArgv(): string[] {
  const aios = ['node', join(REPO, 'bin/aios.js'), 'build', 'kernel', '-r', KERNEL_RECIPE, ...KERNEL_SETS.flatMap((s) => ['--set', s]), '--json'];
  return ['nice', '-n', '19', ...(existsSync('/usr/bin/ionice') ? ['ionice', '-c', '3'] : []), ...aios];
}

/** Whether this vitest run is the whole suite: no file filter, no test name pattern (read from vitest's own command line with its parser). */
export function wholeRun(argv = process.argv, env = process.env): boolean {
  if (env.AIOS_TEST_PREFETCH === '0') return false;
  try {
    const { filter, options } = parseCLI(['vitest', ...argv.slice(2)], { allowUnknownOptions: true });
    return !filter.length && !options.testNamePattern;
  } catch {
    return false;
  }
}

/** Gives the autogroup of `pid` (its session, where the kernel groups by session) the nice `nice`; false where there is no such file or it cannot be written. */
export function niceAutogroup(pid: number, nice = 19): boolean {
  try {
    writeFileSync(`/proc/${pid}/autogroup`, String(nice));
    return true;
  } catch {
    return false;
  }
}

export function startPrefetch(log = join(tmpdir(), 'aios-prefetch-kernel.log')): Prefetch | undefined {
  if (!existsSync(join(REPO, 'dist/cli/index.js'))) return undefined; // `npm test` builds dist first; a bare `vitest run` may not have
  const argv = prefetchArgv();
  const fd = openSync(log, 'w');
  const t0 = Date.now();
  // stdout: the JSON result; stderr (progress, errors): the log.
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', fd], detached: true });
  // spawn() returns once the child has called setsid() and exec'd: its new autogroup exists, and what it starts inherits it.
  if (child.pid) niceAutogroup(child.pid);
  let json = '';
  child.stdout!.on('data', (b: Buffer) => (json += b.toString()));
  let exit: number | undefined;
  let endedAt = 0;
  const ended = new Promise<void>((r) => {
    child.on('close', (code, signal) => ((exit = code ?? (signal ? 128 : 1)), (endedAt = Date.now()), r()));
    child.on('error', () => ((exit = 127), (endedAt = Date.now()), r()));
  });
  return {
    log,
    async stop() {
      if (exit === undefined) {
        try {
          process.kill(-child.pid!, 'SIGTERM');
        } catch {}
        await Promise.race([ended, new Promise((r) => setTimeout(r, 10_000))]);
        return `test prefetch: the custom kernel was still compiling after ${((Date.now() - t0) / 1000).toFixed(0)} s and was stopped (log: ${log})`;
      }
      if (exit !== 0) return `test prefetch: \`aios build kernel\` failed (exit ${exit}); custom-kernel.test.ts built the kernel itself. Log: ${log}`;
      let r: { stage: { cached: boolean; seconds: number }; info: { release: string } };
      try {
        r = JSON.parse(json) as typeof r;
      } catch {
        return `test prefetch: \`aios build kernel\` printed no result. Log: ${log}`;
      }
      const at = ((endedAt - t0) / 1000).toFixed(0);
      return `test prefetch: custom kernel ${r.info.release} ${r.stage.cached ? 'was cached' : `compiled in the background in ${r.stage.seconds.toFixed(0)} s (done ${at} s into the run)`}`;
    },
  };
}
