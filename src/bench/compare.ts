/**
 * `aios bench compare a.json b.json`: for each figure both runs have (pp, tg, bandwidth), the
 * difference of means b − a with a 95 % confidence interval from Welch's t (unequal variances,
 * Welch–Satterthwaite df), the ratio of standard deviations, and a verdict. Higher is better for
 * every figure (tokens/s, GB/s). Also lists the facts that differ between the two runs, since they
 * are what the difference is to be attributed to.
 */
import { readFile } from 'node:fs/promises';
import { UserError } from '../util/errors.js';
import { BENCH_SCHEMA, type BenchResult, type Figure } from './index.js';
import { fmt } from './report.js';
import { mean, sd, welch, type Welch } from './stats.js';

export type Verdict = 'better' | 'worse' | 'no difference detectable at 95 %';

export interface FigureComparison {
  figure: 'pp' | 'tg' | 'bandwidth';
  name: string;
  unit: string;
  a: { n: number; mean: number; sd: number };
  b: { n: number; mean: number; sd: number };
  welch: Welch;
  /** (mean b − mean a) / mean a, and its interval. */
  relative: number;
  relativeCi: [number, number];
  /** sd(b) / sd(a): above 1 = b is noisier. */
  sdRatio: number;
  verdict: Verdict;
}

export interface Comparison {
  a: { file: string; when: string };
  b: { file: string; when: string };
  method: string;
  figures: FigureComparison[];
  /** Facts that differ between the runs: [what, a, b]. */
  differences: [string, string, string][];
  warnings: string[];
}

/** Reads a result written by `aios bench --json` / `--out`, with a clear error for anything else (exit 2). */
export async function loadResult(file: string): Promise<BenchResult> {
  const text = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new UserError(`${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`, 2, 'give two files written by `aios bench --out <file>` (or --json)');
  });
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    throw new UserError(`${file} is not JSON (${(e as Error).message})`, 2, 'give two files written by `aios bench --out <file>` (or --json)');
  }
  const r = j as Partial<BenchResult>;
  if (r?.schema !== BENCH_SCHEMA || !r.figures?.bandwidth) throw new UserError(`${file} is not an aios bench result (no "schema": "${BENCH_SCHEMA}")`, 2, 'give two files written by `aios bench --out <file>` (or --json)');
  return r as BenchResult;
}

/**
 * Several results of one side pooled into one (`a1.json,a2.json,…`): runs taken in turns with the
 * other side's (A B A B …) so that the machine's drift falls on both sides alike. The samples of each
 * figure are concatenated; the facts are the first run's, and a fact that differs between the runs of
 * one side is a warning (they are meant to be the same set-up).
 */
export function poolResults(runs: BenchResult[], files: string[]): { result: BenchResult; warnings: string[] } {
  const [first, ...rest] = runs;
  if (!first) throw new UserError('no result to pool', 2);
  const warnings: string[] = [];
  const facts = new Map(factList(first));
  rest.forEach((r, i) => {
    for (const [k, v] of factList(r)) {
      // The load average and the time change from run to run by nature; these facts should not.
      if (facts.get(k) !== v) warnings.push(`${files[i + 1]}: ${k} differs from ${files[0]} (${facts.get(k)} vs ${v}): pooled anyway`);
    }
  });
  const figures = { ...first.figures } as BenchResult['figures'];
  for (const k of ['pp', 'tg', 'bandwidth'] as const) {
    const all = runs.map((r) => r.figures[k]);
    if (all.some((f) => !f)) {
      if (all.some((f) => f)) warnings.push(`${k}: missing in some of ${files.join(', ')}: not pooled`);
      delete (figures as Record<string, unknown>)[k];
      continue;
    }
    (figures as Record<string, unknown>)[k] = { ...all[0]!, samples: all.flatMap((f) => f!.samples) };
  }
  const when = runs.map((r) => r.when).sort();
  return { result: { ...first, figures, when: when.length > 1 ? `${when[0]} – ${when.at(-1)}, ${runs.length} runs` : when[0]! }, warnings };
}

/** One side of `compare`: a file, or several separated by commas (pooled, see poolResults). */
export async function loadSide(arg: string): Promise<{ result: BenchResult; warnings: string[] }> {
  const files = arg.split(',').filter(Boolean);
  const runs = [];
  for (const f of files) runs.push(await loadResult(f));
  return poolResults(runs, files);
}

export function verdictOf(ci: [number, number]): Verdict {
  if (ci[0] > 0) return 'better';
  if (ci[1] < 0) return 'worse';
  return 'no difference detectable at 95 %';
}

export function compareFigures(figure: FigureComparison['figure'], a: Pick<Figure, 'name' | 'unit' | 'samples'>, b: Pick<Figure, 'name' | 'unit' | 'samples'>): FigureComparison {
  const w = welch(a.samples, b.samples);
  const [ma, mb, sa, sb] = [mean(a.samples), mean(b.samples), sd(a.samples), sd(b.samples)];
  return {
    figure,
    name: a.name === b.name ? a.name : `${a.name} vs ${b.name}`,
    unit: a.unit,
    a: { n: a.samples.length, mean: ma, sd: sa },
    b: { n: b.samples.length, mean: mb, sd: sb },
    welch: w,
    relative: w.diff / ma,
    relativeCi: [w.ci[0] / ma, w.ci[1] / ma],
    sdRatio: sa === 0 ? (sb === 0 ? 1 : Infinity) : sb / sa,
    verdict: verdictOf(w.ci),
  };
}

const factList = (r: BenchResult): [string, string][] => [
  ['ran on', r.image ? (r.image.via === 'qemu' ? `image ${r.image.name ?? r.image.file} in QEMU (${r.image.accel === 'kvm' ? 'KVM' : 'TCG, emulated'})` : `a machine running the image (${r.image.entry})`) : 'the build host (aios bench)'],
  ['CPU', `${r.facts.cpu.model}, ${r.facts.cpu.logical} CPUs`],
  ['where', r.facts.virtualization.summary],
  ['threads', String(r.settings.threads)],
  ['GPU layers', String(r.settings.gpuLayers ?? 0)],
  ['GPU', r.facts.gpus ? r.facts.gpus.join('; ') || 'none (no nvidia-smi, or it found none)' : 'not recorded'],
  ['llama.cpp', `${r.facts.llama.version ?? '?'} ${r.facts.llama.buildCommit ?? ''}`.trim()],
  ['ISA of the binaries', r.facts.llama.isa ?? 'unknown'],
  ['model', `${r.model.synthesized ?? r.model.file} (${r.model.fileType ?? '?'}, ${r.model.bytesPerToken} bytes per token)`],
  ['tests', `pp${r.settings.pp} tg${r.settings.tg}`],
  ['kernel', r.facts.kernel.release],
  ['cmdline', r.facts.kernel.cmdline],
  ['CONFIG_HZ', r.facts.configHz],
  ['preemption', r.facts.preemption.mode],
  ['THP', r.facts.thp.enabled],
  ['governor', r.facts.governor],
  ['mitigations', r.facts.mitigations.summary],
  ['NUMA nodes', String(r.facts.numaNodes)],
  ['zram', r.facts.zram.summary],
];

export function compareResults(a: BenchResult, b: BenchResult, files: [string, string] = ['a', 'b']): Comparison {
  const figures: FigureComparison[] = [];
  const warnings: string[] = [];
  for (const k of ['pp', 'tg', 'bandwidth'] as const) {
    const fa = a.figures[k];
    const fb = b.figures[k];
    if (!fa || !fb) {
      if (fa || fb) warnings.push(`${k}: only in ${fa ? files[0] : files[1]}, not compared`);
      continue;
    }
    if (fa.name !== fb.name) warnings.push(`${k}: different tests (${fa.name} vs ${fb.name}): compared anyway, but the difference is partly the test's`);
    if (fa.samples.length < 2 || fb.samples.length < 2) {
      warnings.push(`${k}: fewer than 2 samples on a side, not compared`);
      continue;
    }
    figures.push(compareFigures(k, fa, fb));
  }
  const fa = new Map(factList(a));
  const differences: [string, string, string][] = factList(b)
    .filter(([k, v]) => fa.get(k) !== v)
    .map(([k, v]) => [k, fa.get(k) ?? '', v]);
  for (const r of [a, b]) if (r.facts.virtualization.emulated) warnings.push(`${r === a ? files[0] : files[1]} ran on an EMULATED CPU (QEMU TCG): its figures are meaningless for performance`);
  return {
    a: { file: files[0], when: a.when },
    b: { file: files[1], when: b.when },
    method: "Welch's t (unequal variances, Welch–Satterthwaite df), two-sided 95 % interval of mean(b) − mean(a); higher is better",
    figures,
    differences,
    warnings,
  };
}

const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`;

export function formatCompare(c: Comparison): string {
  const lines = [
    `## aios bench compare: b = \`${c.b.file}\` (${c.b.when}) against a = \`${c.a.file}\` (${c.a.when})`,
    '',
    '| figure | a: mean ± sd (n) | b: mean ± sd (n) | b − a | 95 % CI of b − a | relative (95 % CI) | sd b / sd a | verdict for b |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const f of c.figures) {
    lines.push(
      `| ${f.name} (${f.unit}) | ${fmt(f.a.mean)} ± ${fmt(f.a.sd)} (${f.a.n}) | ${fmt(f.b.mean)} ± ${fmt(f.b.sd)} (${f.b.n}) | ${fmt(f.welch.diff)} | ${fmt(f.welch.ci[0])} – ${fmt(f.welch.ci[1])} | ${pct(f.relative)} (${pct(f.relativeCi[0])} – ${pct(f.relativeCi[1])}) | ${f.sdRatio.toFixed(2)} | **${f.verdict}** |`,
    );
  }
  lines.push('', `Method: ${c.method}; Welch df ${c.figures.map((f) => `${f.name} ${f.welch.df.toFixed(1)}`).join(', ')}.`);
  if (c.differences.length) {
    lines.push('', 'What differs between the runs:', '', '| fact | a | b |', '| --- | --- | --- |');
    for (const [k, x, y] of c.differences) lines.push(`| ${k} | ${x.replace(/\|/g, '\\|')} | ${y.replace(/\|/g, '\\|')} |`);
  } else lines.push('', 'No recorded fact differs between the runs (same machine, build, model, settings and kernel configuration).');
  for (const w of c.warnings) lines.push('', `Warning: ${w}`);
  return lines.join('\n') + '\n';
}
