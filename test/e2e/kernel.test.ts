/**
 * Wishes against a real kernel: Debian trixie's linux-source-6.12 and linux-config-6.12 (downloaded
 * once, ~150 MB, and cached extracted in the aios cache dir).
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { debianKernel, type DebianKernel } from '../../src/kernel/debian.js';
import { kernelCheck } from '../../src/kernel/check.js';
import { loadFragments } from '../../src/kernel/config.js';
import { defaultCacheDir } from '../../src/util/paths.js';
import { cli } from '../helpers.js';

let k: DebianKernel;

describe('aios kernel check against Debian trixie 6.12', () => {
  beforeAll(async () => {
    k = await debianKernel({ cacheDir: defaultCacheDir() });
  }, 10 * 60_000);

  it('flags the seed table\'s nonexistent symbols and its ignored CONFIG_HZ, against the source tree', { timeout: 5 * 60_000 }, async () => {
    const res = await kernelCheck(await loadFragments(['seed-002-ai-core']), { source: k.source, config: k.config });
    const by = Object.fromEntries(res.results.map((r) => [r.symbol, r]));
    expect(by.SCHED_EEVDF).toMatchObject({ status: 'nonexistent' });
    expect(by.SPECULATION_MITIGATIONS).toMatchObject({ status: 'nonexistent', hint: 'use CONFIG_CPU_MITIGATIONS' });
    expect(by.HZ).toMatchObject({ status: 'not-applied', actual: '250' });
    expect(by.HZ!.detail).toMatch(/no prompt/);
    for (const s of ['PREEMPT_VOLUNTARY', 'NO_HZ_FULL', 'CPU_FREQ_GOV_PERFORMANCE', 'TRANSPARENT_HUGEPAGE', 'NUMA']) expect(by[s]!.status, s).toBe('applied');
    expect(res.unmet).toBe(3);
  });

  it('the corrected fragments all apply on a rebuild', { timeout: 5 * 60_000 }, async () => {
    const res = await kernelCheck(await loadFragments(['inference', 'single-socket', 'unsafe-mitigations-off']), { source: k.source, config: k.config });
    expect(res.results.filter((r) => r.status !== 'applied')).toEqual([]);
  });

  it('names an unmet dependency, a lost choice and a forced select', { timeout: 5 * 60_000 }, async () => {
    const { parseFragment } = await import('../../src/kernel/config.js');
    const wishes = parseFragment('# t\n# CONFIG_SMP is not set\nCONFIG_NO_HZ_FULL=y\nCONFIG_HZ_300=y\nCONFIG_HZ_1000=y\n# CONFIG_IRQ_WORK is not set\n', 't.config');
    const by = Object.fromEntries((await kernelCheck(wishes, { source: k.source, config: k.config })).results.map((r) => [r.symbol, r]));
    expect(by.NO_HZ_FULL).toMatchObject({ status: 'unmet-dependency' });
    expect(by.NO_HZ_FULL!.detail).toMatch(/depends on SMP \(off: SMP\)/);
    expect(by.HZ_300).toMatchObject({ status: 'overridden-by-choice' });
    expect(by.HZ_300!.detail).toMatch(/CONFIG_HZ_1000=y/);
    expect(by.IRQ_WORK).toMatchObject({ status: 'not-applied' });
    expect(by.IRQ_WORK!.detail).toMatch(/forced on by select from CONFIG_/);
  });

  it('against the stock config: already on, at boot, or a rebuild (CLI, --json, --strict)', { timeout: 60_000 }, async () => {
    const r = await cli(['kernel', 'check', 'seed-002-ai-core', 'inference', 'single-socket', '--config', k.config, '--json', '--strict']);
    expect(r.exitCode).toBe(1); // HZ needs a rebuild, SCHED_EEVDF does not exist
    const res = JSON.parse(r.stdout);
    const status = (sym: string, frag: string) => res.results.find((x: { symbol: string; fragment: string }) => x.symbol === sym && x.fragment === frag)?.status;
    expect(status('PREEMPT_VOLUNTARY', 'inference.config')).toBe('already');
    expect(status('TRANSPARENT_HUGEPAGE_MADVISE', 'inference.config')).toBe('at-boot');
    expect(status('CPU_FREQ_DEFAULT_GOV_PERFORMANCE', 'inference.config')).toBe('at-boot');
    expect(status('NUMA', 'single-socket.config')).toBe('at-boot');
    expect(status('HZ_300', 'inference.config')).toBe('needs-rebuild');
    expect(status('SCHED_EEVDF', 'seed-002-ai-core.config')).toBe('nonexistent');
    expect(res.bootArgs).toEqual(expect.arrayContaining(['transparent_hugepage=madvise', 'cpufreq.default_governor=performance', 'numa=off']));
    const table = await cli(['kernel', 'check', 'inference', '--config', k.config]);
    expect(table.exitCode).toBe(0);
    expect(table.stdout).toMatch(/CONFIG_HZ_300=y\s+needs-rebuild\s+n/);
  });
});
