import { describe, expect, it } from 'vitest';
import { compareResults, compareFigures, formatCompare, poolResults, verdictOf } from '../../src/bench/compare.js';
import { BENCH_SCHEMA, type BenchResult } from '../../src/bench/index.js';
import { summarize } from '../../src/bench/stats.js';

/** A fixed, irregular noise pattern (mean 0): the same "measurement noise" in every synthetic run. */
const NOISE = [1.3, -0.7, 2.1, -1.9, 0.4, -0.2, 1.1, -1.6, 0.8, -1.3, 0.6, -0.6];
const noisy = (level: number, scale = 1, rotate = 0) => NOISE.map((_, i) => level + scale * NOISE[(i + rotate) % NOISE.length]!);

function result(o: { pp: number[]; tg: number[]; bw: number[]; threads?: number; cmdline?: string; emulated?: boolean }): BenchResult {
  const fig = (name: string, unit: string, samples: number[]) => ({ name, unit, samples, ...summarize(samples) });
  return {
    schema: BENCH_SCHEMA,
    when: '2026-12-02T00:00:00.000Z',
    seconds: 1,
    facts: {
      cpu: { model: 'Test CPU', vendor: 'x', logical: 2, physicalCores: 2, sockets: 1, flags: [] },
      memoryBytes: 1,
      kernel: { release: '6.12.0', version: '#1 SMP PREEMPT_DYNAMIC', cmdline: o.cmdline ?? 'quiet' },
      configHz: '250',
      configSource: '/proc/config.gz',
      preemption: { mode: 'voluntary', source: 'x' },
      thp: { enabled: 'madvise', defrag: 'madvise' },
      governor: 'performance',
      mitigations: { summary: 'm', vulnerabilities: {} },
      numaNodes: 1,
      zram: { devices: [], summary: 'none' },
      virtualization: { hypervisorFlag: false, emulated: !!o.emulated, summary: o.emulated ? 'EMULATED' : 'bare metal' },
      loadAverage: [0, 0, 0],
      llama: { binDir: '/x', version: 'v1', isa: 'x86-64-v3' },
      threads: o.threads ?? 2,
    },
    model: { file: '/m.gguf', architecture: 'llama', parameters: 1, fileBytes: 1, weightsBytes: 1, bytesPerToken: 1, bytesPerTokenNote: '' },
    settings: { reps: o.tg.length, threads: o.threads ?? 2, pp: 512, tg: 128, warmup: '' },
    figures: { pp: fig('pp512', 't/s', o.pp), tg: fig('tg128', 't/s', o.tg), bandwidth: { ...fig('triad', 'GB/s', o.bw), best: Math.max(...o.bw), arrayBytes: 1, sizing: '' } },
    llamaBench: { argv: [], ownMeans: {} },
    loadAverage: { before: [0, 0, 0], after: [0, 0, 0] },
    warnings: [],
  };
}

describe('bench compare', () => {
  it('pools several runs of one side (interleaved rounds): samples concatenated, facts of the first, a differing fact warned', () => {
    const r1 = { ...result({ pp: [100, 102], tg: [50, 51], bw: [30, 31] }), when: '2026-12-02T00:00:00.000Z' };
    const r2 = { ...result({ pp: [98, 97], tg: [49, 48], bw: [29, 28] }), when: '2026-12-02T00:05:00.000Z' };
    const { result: pooled, warnings } = poolResults([r1, r2], ['a1.json', 'a2.json']);
    expect(pooled.figures.pp!.samples).toEqual([100, 102, 98, 97]);
    expect(pooled.figures.tg!.samples).toEqual([50, 51, 49, 48]);
    expect(pooled.figures.bandwidth.samples).toEqual([30, 31, 29, 28]);
    expect(pooled.when).toBe('2026-12-02T00:00:00.000Z – 2026-12-02T00:05:00.000Z, 2 runs');
    expect(warnings).toEqual([]);
    const other = result({ pp: [1, 2], tg: [1, 2], bw: [1, 2], threads: 4 });
    expect(poolResults([r1, other], ['a1.json', 'x.json']).warnings).toEqual([expect.stringMatching(/^x\.json: threads differs from a1\.json \(2 vs 4\): pooled anyway$/)]);
    // A pooled side compares like a single run, with n the pooled count.
    const c = compareResults(pooled, result({ pp: noisy(110), tg: noisy(46), bw: noisy(30) }));
    expect(c.figures.find((f) => f.figure === 'pp')!.a.n).toBe(4);
  });

  it('verdicts follow the sign of the interval', () => {
    expect(verdictOf([0.1, 2])).toBe('better');
    expect(verdictOf([-2, -0.1])).toBe('worse');
    expect(verdictOf([-1, 1])).toBe('no difference detectable at 95 %');
  });

  it('finds a known difference, with the true difference inside its interval', () => {
    const a = result({ pp: noisy(100), tg: noisy(50), bw: noisy(30) });
    // b: pp +10 % (clearly above the noise), tg −4 t/s, bandwidth the same distribution (noise rotated)
    const b = result({ pp: noisy(110), tg: noisy(46), bw: noisy(30, 1, 5) });
    const c = compareResults(a, b, ['a.json', 'b.json']);
    const by = Object.fromEntries(c.figures.map((f) => [f.figure, f]));
    expect(by.pp!.verdict).toBe('better');
    expect(by.pp!.welch.diff).toBeCloseTo(10, 10);
    expect(by.pp!.welch.ci[0]).toBeLessThan(10);
    expect(by.pp!.welch.ci[1]).toBeGreaterThan(10);
    expect(by.pp!.relative).toBeCloseTo(0.1, 10);
    expect(by.pp!.sdRatio).toBeCloseTo(1, 10);
    // equal sizes and variances: Welch's df is 2n − 2
    expect(by.pp!.welch.df).toBeCloseTo(2 * NOISE.length - 2, 8);
    expect(by.tg!.verdict).toBe('worse');
    expect(by.tg!.welch.diff).toBeCloseTo(-4, 10);
    expect(by.bandwidth!.verdict).toBe('no difference detectable at 95 %');
    expect(by.bandwidth!.welch.diff).toBeCloseTo(0, 10);
    expect(c.differences).toEqual([]);
  });

  it('a difference smaller than the noise is not called, and a noisier run shows in the sd ratio', () => {
    const a = result({ pp: noisy(100), tg: noisy(50), bw: noisy(30) });
    const b = result({ pp: noisy(100.3), tg: noisy(50, 3), bw: noisy(30) });
    const c = compareResults(a, b);
    const pp = c.figures.find((f) => f.figure === 'pp')!;
    expect(pp.verdict).toBe('no difference detectable at 95 %');
    const tg = c.figures.find((f) => f.figure === 'tg')!;
    expect(tg.sdRatio).toBeCloseTo(3, 10);
    expect(tg.verdict).toBe('no difference detectable at 95 %');
    // unequal variances: df falls below 2n − 2
    expect(tg.welch.df).toBeLessThan(2 * NOISE.length - 2);
  });

  it('lists the facts that differ and warns about emulated runs; Markdown has one row per figure', () => {
    const a = result({ pp: noisy(100), tg: noisy(50), bw: noisy(30), cmdline: 'quiet' });
    const b = result({ pp: noisy(120), tg: noisy(55), bw: noisy(31), cmdline: 'quiet preempt=voluntary', threads: 1, emulated: true });
    const c = compareResults(a, b, ['stock.json', 'tuned.json']);
    expect(c.differences.map((d) => d[0])).toEqual(expect.arrayContaining(['cmdline', 'threads', 'where']));
    expect(c.warnings.join('\n')).toMatch(/tuned\.json ran on an EMULATED CPU/);
    const md = formatCompare(c);
    expect(md.split('\n').filter((l) => /^\| (pp512|tg128|triad) /.test(l))).toHaveLength(3);
    expect(md).toMatch(/\*\*better\*\*/);
    expect(md).toMatch(/\| cmdline \| quiet \| quiet preempt=voluntary \|/);
  });

  it('compareFigures works on raw samples', () => {
    const f = compareFigures('tg', { name: 'tg128', unit: 't/s', samples: [1, 2, 3, 4, 5] }, { name: 'tg128', unit: 't/s', samples: [2, 4, 6, 8, 10] });
    expect(f.welch.df).toBeCloseTo(5.882353, 5);
    expect(f.sdRatio).toBeCloseTo(2, 10);
    expect(f.verdict).toBe('no difference detectable at 95 %');
  });
});
