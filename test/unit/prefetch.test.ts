import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { niceAutogroup, prefetchArgv, wholeRun } from '../prefetch.js';
import { KERNEL_SETS } from '../e2e/custom-kernel.sets.js';

describe('the test run\'s background kernel compile (test/prefetch.ts)', () => {
  it('runs only for the whole suite, and not with AIOS_TEST_PREFETCH=0', () => {
    const v = (...a: string[]) => ['/usr/bin/node', '/repo/node_modules/.bin/vitest', ...a];
    // npm test's own command line.
    expect(wholeRun(v('run', '--reporter=default', '--reporter=json', '--outputFile.json=node_modules/.vitest-report.json'), {})).toBe(true);
    expect(wholeRun(v('run', '--reporter', 'default'), {})).toBe(true);
    expect(wholeRun(v('run', 'test/unit/cache.test.ts'), {})).toBe(false);
    expect(wholeRun(v('run', '-t', 'boots'), {})).toBe(false);
    expect(wholeRun(v('run'), { AIOS_TEST_PREFETCH: '0' })).toBe(false);
  });

  it('asks `aios build kernel` for the kernel test\'s recipe and kernel settings, niced, with JSON out', () => {
    const a = prefetchArgv();
    expect(a.slice(0, 3)).toEqual(['nice', '-n', '19']);
    const i = a.indexOf('build');
    expect(a.slice(i, i + 4)).toEqual(['build', 'kernel', '-r', 'custom-kernel']);
    expect(a.filter((_, j) => a[j - 1] === '--set')).toEqual(KERNEL_SETS);
    expect(a.at(-1)).toBe('--json');
  });

  it('puts the detached compile\'s autogroup at nice 19, so that the scheduler does not give it half the CPU', () => {
    const child = spawn('sleep', ['30'], { stdio: 'ignore', detached: true });
    try {
      const file = `/proc/${child.pid}/autogroup`;
      const ok = niceAutogroup(child.pid!);
      if (existsSync(file)) {
        expect(ok).toBe(true);
        expect(readFileSync(file, 'utf8')).toMatch(/^\/autogroup-\d+ nice 19$/m);
        // A new session: not the test process's own group.
        expect(readFileSync(file, 'utf8').split(' ')[0]).not.toBe(readFileSync('/proc/self/autogroup', 'utf8').split(' ')[0]);
      } else expect(ok).toBe(false);
    } finally {
      child.kill();
    }
  });
});
