/**
 * Statistics for `aios bench`: summaries of repeated measurements and Welch's two-sample comparison.
 * Pure functions; the Student t distribution is computed here (regularized incomplete beta function,
 * Lentz's continued fraction, Lanczos log-gamma) rather than taken from a library, and tested against
 * table values in test/unit/bench-stats.test.ts.
 */

export function mean(xs: readonly number[]): number {
  if (!xs.length) throw new Error('mean of no samples');
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** Sample standard deviation (n − 1 in the denominator). */
/** The middle sample (the mean of the two middle ones for an even count). */
export function median(xs: readonly number[]): number {
  if (!xs.length) throw new Error('median of no samples');
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function sd(xs: readonly number[]): number {
  if (xs.length < 2) throw new Error(`standard deviation needs at least 2 samples, got ${xs.length}`);
  const m = mean(xs);
  return Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / (xs.length - 1));
}

const LANCZOS = [0.99999999999980993, 676.5203681218851, -1259.1392167224028, 771.32342877765313, -176.61502916214059, 12.507343278686905, -0.13857109526572012, 9.9843695780195716e-6, 1.5056327351493116e-7];

/** ln Γ(x) for x > 0 (Lanczos, g = 7; relative error ~1e-15). */
export function lnGamma(x: number): number {
  if (x < 0.5) return Math.log(Math.PI / Math.sin(Math.PI * x)) - lnGamma(1 - x);
  const z = x - 1;
  let a = LANCZOS[0]!;
  const t = z + 7.5;
  for (let i = 1; i < 9; i++) a += LANCZOS[i]! / (z + i);
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(a);
}

/** Continued fraction for the incomplete beta function (modified Lentz). */
function betaCf(a: number, b: number, x: number): number {
  const tiny = 1e-300;
  let c = 1;
  let d = 1 - ((a + b) * x) / (a + 1);
  if (Math.abs(d) < tiny) d = tiny;
  d = 1 / d;
  let h = d;
  for (let m = 1; m <= 10_000; m++) {
    const m2 = 2 * m;
    let aa = (m * (b - m) * x) / ((a + m2 - 1) * (a + m2));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    h *= d * c;
    aa = (-(a + m) * (a + b + m) * x) / ((a + m2) * (a + m2 + 1));
    d = 1 + aa * d;
    if (Math.abs(d) < tiny) d = tiny;
    c = 1 + aa / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const del = d * c;
    h *= del;
    if (Math.abs(del - 1) < 1e-15) return h;
  }
  return h;
}

/** Regularized incomplete beta function I_x(a, b). */
export function incompleteBeta(x: number, a: number, b: number): number {
  if (x <= 0) return 0;
  if (x >= 1) return 1;
  const lnFront = lnGamma(a + b) - lnGamma(a) - lnGamma(b) + a * Math.log(x) + b * Math.log(1 - x);
  const front = Math.exp(lnFront);
  // The continued fraction converges fast for x < (a + 1) / (a + b + 2); use the symmetry otherwise.
  if (x < (a + 1) / (a + b + 2)) return (front * betaCf(a, b, x)) / a;
  return 1 - (front * betaCf(b, a, 1 - x)) / b;
}

/** Cumulative distribution function of Student's t with `df` degrees of freedom (df may be fractional, as Welch's is). */
export function tCdf(t: number, df: number): number {
  if (!(df > 0)) throw new Error(`t distribution needs df > 0, got ${df}`);
  if (t === 0) return 0.5;
  if (!Number.isFinite(t)) return t > 0 ? 1 : 0;
  const tail = 0.5 * incompleteBeta(df / (df + t * t), df / 2, 0.5);
  return t > 0 ? 1 - tail : tail;
}

/** The p-quantile of Student's t with `df` degrees of freedom: tCdf(tQuantile(p, df), df) = p. */
export function tQuantile(p: number, df: number): number {
  if (!(p > 0 && p < 1)) throw new Error(`quantile needs 0 < p < 1, got ${p}`);
  if (!(df > 0)) throw new Error(`t distribution needs df > 0, got ${df}`);
  if (p === 0.5) return 0;
  if (p < 0.5) return -tQuantile(1 - p, df);
  let lo = 0;
  let hi = 1;
  while (tCdf(hi, df) < p) {
    lo = hi;
    hi *= 2;
    if (hi > 1e300) return Infinity;
  }
  // Bisection: monotone, no derivative needed, 200 halvings reach double precision.
  for (let i = 0; i < 200 && hi - lo > 1e-13 * Math.max(1, hi); i++) {
    const mid = (lo + hi) / 2;
    if (tCdf(mid, df) < p) lo = mid;
    else hi = mid;
  }
  return (lo + hi) / 2;
}

export interface Summary {
  n: number;
  mean: number;
  /** Sample standard deviation. */
  sd: number;
  /** Coefficient of variation: sd / mean. */
  cv: number;
  /** Two-sided confidence interval of the mean (t distribution, n − 1 df). */
  ci: [number, number];
  level: number;
  min: number;
  max: number;
}

/** Mean, standard deviation, coefficient of variation and the t confidence interval of the mean. */
export function summarize(xs: readonly number[], level = 0.95): Summary {
  if (xs.length < 2) throw new Error(`a summary needs at least 2 samples, got ${xs.length}`);
  const m = mean(xs);
  const s = sd(xs);
  const half = tQuantile(1 - (1 - level) / 2, xs.length - 1) * (s / Math.sqrt(xs.length));
  return { n: xs.length, mean: m, sd: s, cv: m !== 0 ? s / m : NaN, ci: [m - half, m + half], level, min: Math.min(...xs), max: Math.max(...xs) };
}

export interface Welch {
  /** mean(b) − mean(a). */
  diff: number;
  /** Standard error of the difference. */
  se: number;
  /** Welch–Satterthwaite degrees of freedom. */
  df: number;
  t: number;
  /** Two-sided p-value. */
  p: number;
  /** Confidence interval of mean(b) − mean(a). */
  ci: [number, number];
  level: number;
}

/** Welch's unequal-variances t comparison of b against a (difference = mean(b) − mean(a)). */
export function welch(a: readonly number[], b: readonly number[], level = 0.95): Welch {
  if (a.length < 2 || b.length < 2) throw new Error(`Welch's t needs at least 2 samples on each side, got ${a.length} and ${b.length}`);
  const va = sd(a) ** 2 / a.length;
  const vb = sd(b) ** 2 / b.length;
  const diff = mean(b) - mean(a);
  const se = Math.sqrt(va + vb);
  if (se === 0) {
    // Both samples constant: the difference is exact.
    return { diff, se: 0, df: a.length + b.length - 2, t: diff === 0 ? 0 : Math.sign(diff) * Infinity, p: diff === 0 ? 1 : 0, ci: [diff, diff], level };
  }
  const df = (va + vb) ** 2 / (va ** 2 / (a.length - 1) + vb ** 2 / (b.length - 1));
  const t = diff / se;
  const half = tQuantile(1 - (1 - level) / 2, df) * se;
  const p = incompleteBeta(df / (df + t * t), df / 2, 0.5);
  return { diff, se, df, t, p, ci: [diff - half, diff + half], level };
}
