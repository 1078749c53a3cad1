import { describe, expect, it } from 'vitest';
import { prefetchArgv, wholeRun } from '../prefetch.js';
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
});
