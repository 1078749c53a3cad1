import { describe, expect, it } from 'vitest';
import { parseFragment, parseConfig, loadFragments } from '../../src/kernel/config.js';
import { classifyAgainstConfig } from '../../src/kernel/check.js';
import { evalExpr } from '../../src/kernel/kconfig.js';
import { UserError } from '../../src/util/errors.js';

describe('kernel fragments', () => {
  it('parse values, "is not set" and the reason comment above each wish', () => {
    const w = parseFragment('# Why A.\n# More.\nCONFIG_A=y\n\n# Why B.\n# CONFIG_B is not set\nCONFIG_C="str"\nCONFIG_D=300\n', 'f.config');
    expect(w.map((x) => [x.symbol, x.value, x.reason, x.line])).toEqual([
      ['A', 'y', 'Why A. More.', 3],
      ['B', 'n', 'Why B.', 6],
      ['C', 'str', 'Why B.', 7],
      ['D', '300', 'Why B.', 8],
    ]);
  });

  it('refuse lines that are not Kconfig, with file and line', () => {
    expect(() => parseFragment('CONFIG_A=y\nPREEMPT=y\n', 'x.config')).toThrow(UserError);
    expect(() => parseFragment('CONFIG_A=y\nPREEMPT=y\n', 'x.config')).toThrow(/x\.config:2: not a Kconfig line/);
  });

  it('every shipped fragment parses and every wish has a reason', async () => {
    const wishes = await loadFragments(['seed-002-ai-core', 'inference', 'single-socket', 'unsafe-mitigations-off']);
    expect(wishes.length).toBeGreaterThan(12);
    for (const w of wishes) expect(w.reason, `${w.fragment}:${w.line}`).not.toBe('');
  });
});

describe('Kconfig expressions', () => {
  const cfg = parseConfig('CONFIG_SMP=y\nCONFIG_MOD=m\n# CONFIG_OFF is not set\nCONFIG_HZ=250\n');
  it('evaluate tristate logic, comparisons and unknown symbols', () => {
    expect(evalExpr('SMP', cfg)).toBe(2);
    expect(evalExpr('SMP && MOD', cfg)).toBe(1);
    expect(evalExpr('OFF || MOD', cfg)).toBe(1);
    expect(evalExpr('!OFF && (SMP || OFF)', cfg)).toBe(2);
    expect(evalExpr('NOT_DEFINED', cfg)).toBe(0);
    expect(evalExpr('HZ = 250', cfg)).toBe(2);
    expect(evalExpr('HZ != 250', cfg)).toBe(0);
    expect(evalExpr('HZ >= 300', cfg)).toBe(0);
  });
});

describe('wishes against a plain .config', () => {
  const wishes = parseFragment(
    '# r\nCONFIG_SCHED_EEVDF=y\nCONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_HZ_300=y\nCONFIG_TRANSPARENT_HUGEPAGE_MADVISE=y\n# CONFIG_SPECULATION_MITIGATIONS is not set\n# CONFIG_NUMA is not set\nCONFIG_CPU_FREQ_DEFAULT_GOV_PERFORMANCE=y\n',
    'w.config',
  );
  it('classifies already / at-boot / needs-rebuild / nonexistent', () => {
    const stock = parseConfig(
      'CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\nCONFIG_HZ_250=y\n# CONFIG_HZ_300 is not set\nCONFIG_TRANSPARENT_HUGEPAGE=y\nCONFIG_TRANSPARENT_HUGEPAGE_ALWAYS=y\n# CONFIG_TRANSPARENT_HUGEPAGE_MADVISE is not set\nCONFIG_CPU_MITIGATIONS=y\nCONFIG_NUMA=y\nCONFIG_CPU_FREQ_GOV_PERFORMANCE=y\n',
    );
    const r = Object.fromEntries(classifyAgainstConfig(wishes, stock).map((x) => [x.symbol, x]));
    expect(r.SCHED_EEVDF!.status).toBe('nonexistent');
    expect(r.SCHED_EEVDF!.detail).toMatch(/EEVDF replaced CFS in Linux 6.6/);
    expect(r.PREEMPT_VOLUNTARY!.status).toBe('already');
    expect(r.HZ_300!.status).toBe('needs-rebuild');
    expect(r.TRANSPARENT_HUGEPAGE_MADVISE).toMatchObject({ status: 'at-boot', bootArgs: ['transparent_hugepage=madvise'] });
    expect(r.SPECULATION_MITIGATIONS).toMatchObject({ status: 'at-boot', bootArgs: ['mitigations=off'], hint: 'use CONFIG_CPU_MITIGATIONS' });
    expect(r.NUMA).toMatchObject({ status: 'at-boot', bootArgs: ['numa=off'] });
    expect(r.CPU_FREQ_DEFAULT_GOV_PERFORMANCE).toMatchObject({ status: 'at-boot', bootArgs: ['cpufreq.default_governor=performance'] });
  });

  it('needs a rebuild when the boot switch itself is compiled out (preempt= without PREEMPT_DYNAMIC)', () => {
    const noDyn = parseConfig('CONFIG_PREEMPT_NONE=y\n# CONFIG_PREEMPT_VOLUNTARY is not set\n');
    const r = classifyAgainstConfig(wishes, noDyn).find((x) => x.symbol === 'PREEMPT_VOLUNTARY')!;
    expect(r.status).toBe('needs-rebuild');
    expect(r.detail).toMatch(/preempt=voluntary would need CONFIG_PREEMPT_DYNAMIC=y/);
  });
});

describe('boot-time wishes in the image', () => {
  it('join the recipe\'s own arguments; the recipe wins a conflict', async () => {
    const { mergeArgs } = await import('../../src/build/context.js');
    expect(mergeArgs(['preempt=voluntary', 'nowatchdog'], ['preempt=voluntary', 'numa=off'])).toEqual({ args: ['preempt=voluntary', 'nowatchdog', 'numa=off'], conflicts: [] });
    const c = mergeArgs(['preempt=full'], ['preempt=voluntary']);
    expect(c.args).toEqual(['preempt=full']);
    expect(c.conflicts[0]).toMatch(/preempt=voluntary conflicts with the recipe's preempt=full/);
  });

  it('are reported live or not from what the guest prints', async () => {
    const { liveWishes } = await import('../../src/kernel/live.js');
    const wishes = parseFragment(
      '# r\nCONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_TRANSPARENT_HUGEPAGE_MADVISE=y\n# CONFIG_NUMA is not set\nCONFIG_HZ_300=y\nCONFIG_CPU_FREQ_DEFAULT_GOV_PERFORMANCE=y\nCONFIG_NO_HZ_FULL=y\nCONFIG_SCHED_EEVDF=y\n',
      'w.config',
    );
    const live = Object.fromEntries(
      liveWishes(wishes, {
        preempt: 'none (voluntary) full lazy',
        thp: 'always [madvise] never',
        governor: 'none',
        numaNodes: 1,
        cmdline: 'root=x numa=off',
        kernel: '6.12.107+deb13-amd64',
        nohzFull: '(null)',
        config: { HZ_300: 'n', HZ_250: 'y', NUMA: 'y', NO_HZ_FULL: 'y' },
      }).map((l) => [l.symbol, l.live]),
    );
    expect(live).toEqual({ PREEMPT_VOLUNTARY: 'yes', TRANSPARENT_HUGEPAGE_MADVISE: 'yes', NUMA: 'yes', HZ_300: 'no', CPU_FREQ_DEFAULT_GOV_PERFORMANCE: 'unknown', NO_HZ_FULL: 'yes', SCHED_EEVDF: 'yes' });
  });

  it('a custom kernel with every wish in its running config: all live, HZ=300 named', async () => {
    const { liveWishes, liveSummary } = await import('../../src/kernel/live.js');
    const wishes = parseFragment(
      '# r\nCONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_HZ_300=y\nCONFIG_NO_HZ_FULL=y\nCONFIG_CPU_FREQ_GOV_PERFORMANCE=y\nCONFIG_CPU_FREQ_DEFAULT_GOV_PERFORMANCE=y\nCONFIG_TRANSPARENT_HUGEPAGE=y\nCONFIG_TRANSPARENT_HUGEPAGE_MADVISE=y\n# CONFIG_NUMA is not set\n',
      'w.config',
    );
    const facts = {
      preempt: 'none (voluntary) full lazy',
      thp: 'always [madvise] never',
      governor: 'none',
      numaNodes: 1,
      cmdline: 'root=x',
      kernel: '6.12.117-aios',
      nohzFull: '(null)',
      config: { PREEMPT_VOLUNTARY: 'y', HZ_300: 'y', HZ: '300', NO_HZ_FULL: 'y', CPU_FREQ_GOV_PERFORMANCE: 'y', CPU_FREQ_DEFAULT_GOV_PERFORMANCE: 'y', TRANSPARENT_HUGEPAGE: 'y', TRANSPARENT_HUGEPAGE_MADVISE: 'y', NUMA: 'n' },
    };
    const live = liveWishes(wishes, facts);
    expect(live.filter((l) => l.live !== 'yes')).toEqual([]);
    expect(liveSummary(live)).toBe('every wish live (8 of 8), HZ=300 included');
    // Without the scheduler's debugfs file: the mode from the cmdline (PREEMPT_DYNAMIC) or the config.
    const noDebugfs = liveWishes(wishes, { ...facts, preempt: undefined, cmdline: 'root=x preempt=voluntary', config: { ...facts.config, PREEMPT_DYNAMIC: 'y' } });
    expect(noDebugfs.find((l) => l.symbol === 'PREEMPT_VOLUNTARY')).toMatchObject({ live: 'yes', evidence: expect.stringMatching(/preempt=voluntary/) });
    const full = liveWishes(wishes, { ...facts, preempt: undefined, cmdline: 'root=x preempt=full', config: { ...facts.config, PREEMPT_DYNAMIC: 'y' } });
    expect(full.find((l) => l.symbol === 'PREEMPT_VOLUNTARY')!.live).toBe('no');
    const stock = liveWishes(wishes, { ...facts, kernel: '6.12.57+deb13-amd64', config: { ...facts.config, HZ_300: 'n', HZ_250: 'y', HZ: '250', CPU_FREQ_DEFAULT_GOV_PERFORMANCE: 'n' } });
    expect(liveSummary(stock)).toBe('6 of 8 wishes live; not live: CONFIG_HZ_300=y, CONFIG_CPU_FREQ_DEFAULT_GOV_PERFORMANCE=y');
  });
});
