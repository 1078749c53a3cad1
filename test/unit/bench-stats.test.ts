import { describe, expect, it } from 'vitest';
import { incompleteBeta, lnGamma, mean, sd, summarize, tCdf, tQuantile, welch } from '../../src/bench/stats.js';

describe('t distribution', () => {
  // Two-sided 95 % (p = 0.975), 90 % (0.95) and 99 % (0.995) critical values from a printed t table.
  const table: [number, number, number][] = [
    [0.975, 1, 12.7062],
    [0.975, 2, 4.3027],
    [0.975, 3, 3.1824],
    [0.975, 4, 2.7764],
    [0.975, 5, 2.5706],
    [0.975, 7, 2.3646],
    [0.975, 9, 2.2622],
    [0.975, 10, 2.2281],
    [0.975, 19, 2.093],
    [0.975, 20, 2.086],
    [0.975, 30, 2.0423],
    [0.975, 60, 2.0003],
    [0.975, 120, 1.9799],
    [0.95, 1, 6.3138],
    [0.95, 10, 1.8125],
    [0.95, 30, 1.6973],
    [0.995, 5, 4.0321],
    [0.995, 10, 3.1693],
    [0.9995, 1, 636.6192],
    [0.9995, 10, 4.5869],
  ];
  it.each(table)('quantile p=%s df=%s is %s', (p, df, expected) => {
    expect(tQuantile(p, df)).toBeCloseTo(expected, 3);
    expect(tQuantile(1 - p, df)).toBeCloseTo(-expected, 3);
  });

  it('approaches the normal 1.959964 for large df', () => {
    expect(tQuantile(0.975, 1e7)).toBeCloseTo(1.959964, 5);
  });

  it('CDF closed forms: df 1 is Cauchy, df 2 is t/(2√(2+t²)) + ½', () => {
    for (const t of [-5, -1, -0.3, 0, 0.7, 2, 10]) {
      expect(tCdf(t, 1)).toBeCloseTo(0.5 + Math.atan(t) / Math.PI, 12);
      expect(tCdf(t, 2)).toBeCloseTo(0.5 + t / (2 * Math.sqrt(2 + t * t)), 12);
    }
  });

  it('fractional df (Welch) lies between its integer neighbours and round-trips', () => {
    const q = tQuantile(0.975, 5.88235);
    expect(q).toBeLessThan(tQuantile(0.975, 5));
    expect(q).toBeGreaterThan(tQuantile(0.975, 6));
    expect(tCdf(q, 5.88235)).toBeCloseTo(0.975, 12);
  });

  it('incomplete beta and log-gamma against closed forms', () => {
    expect(lnGamma(5)).toBeCloseTo(Math.log(24), 12);
    expect(lnGamma(0.5)).toBeCloseTo(0.5 * Math.log(Math.PI), 12);
    // I_x(1, 1) = x; I_x(2, 1) = x²; I_x(1, 3) = 1 − (1 − x)³
    expect(incompleteBeta(0.3, 1, 1)).toBeCloseTo(0.3, 12);
    expect(incompleteBeta(0.3, 2, 1)).toBeCloseTo(0.09, 12);
    expect(incompleteBeta(0.8, 1, 3)).toBeCloseTo(1 - 0.2 ** 3, 12);
  });

  it('rejects meaningless arguments', () => {
    expect(() => tQuantile(1, 5)).toThrow(/0 < p < 1/);
    expect(() => tQuantile(0.5, 0)).toThrow(/df > 0/);
  });
});

describe('summaries', () => {
  it('mean, sd, CV and the 95 % t interval of a hand-computed sample', () => {
    // [2,4,4,4,5,5,7,9]: mean 5, Σ(x−5)² = 32, sd = √(32/7) = 2.138090, t(0.975, 7) = 2.364624,
    // half-width = 2.364624 × 2.138090 / √8 = 1.787485
    const s = summarize([2, 4, 4, 4, 5, 5, 7, 9]);
    expect(s.n).toBe(8);
    expect(s.mean).toBe(5);
    expect(s.sd).toBeCloseTo(2.13809, 5);
    expect(s.cv).toBeCloseTo(0.427618, 5);
    expect(s.ci[0]).toBeCloseTo(3.212515, 4);
    expect(s.ci[1]).toBeCloseTo(6.787485, 4);
    expect([s.min, s.max]).toEqual([2, 9]);
  });

  it('needs two samples for a spread', () => {
    expect(mean([3])).toBe(3);
    expect(() => sd([3])).toThrow(/at least 2/);
    expect(() => summarize([3])).toThrow(/at least 2/);
  });
});

describe("Welch's t", () => {
  it('difference, standard error, Welch–Satterthwaite df and interval of a hand-computed pair', () => {
    // a: mean 3, var 2.5; b: mean 6, var 10; se² = 2.5/5 + 10/5 = 2.5;
    // df = 2.5² / (0.5²/4 + 2²/4) = 6.25 / 1.0625 = 5.882353
    const w = welch([1, 2, 3, 4, 5], [2, 4, 6, 8, 10]);
    expect(w.diff).toBe(3);
    expect(w.se).toBeCloseTo(Math.sqrt(2.5), 12);
    expect(w.df).toBeCloseTo(5.882353, 5);
    expect(w.t).toBeCloseTo(3 / Math.sqrt(2.5), 12);
    const half = tQuantile(0.975, 5.882353) * Math.sqrt(2.5);
    expect(w.ci[0]).toBeCloseTo(3 - half, 5);
    expect(w.ci[1]).toBeCloseTo(3 + half, 5);
    // t(0.975, 5.88) ≈ 2.45–2.57, so the interval is about 3 ± 3.9 and contains 0
    expect(w.ci[0]).toBeLessThan(0);
    expect(w.p).toBeGreaterThan(0.05);
    expect(w.p).toBeCloseTo(2 * (1 - tCdf(w.t, w.df)), 10);
  });

  it('equal variances and sizes give df = 2n − 2', () => {
    const w = welch([1, 2, 3], [11, 12, 13]);
    expect(w.df).toBeCloseTo(4, 10);
    expect(w.diff).toBe(10);
    expect(w.p).toBeLessThan(0.001);
  });

  it('constant samples give an exact difference', () => {
    const w = welch([2, 2, 2], [3, 3, 3]);
    expect(w.ci).toEqual([1, 1]);
    expect(w.p).toBe(0);
  });
});
