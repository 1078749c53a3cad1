/** `aios bench` and `aios bench compare` as a user runs them: bad input is refused with exit 2 before anything runs. */
import { describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, tmp } from '../helpers.js';
import { BENCH_SCHEMA } from '../../src/bench/index.js';
import { summarize } from '../../src/bench/stats.js';

describe('aios bench: bad input', () => {
  const cases: [string[], RegExp][] = [
    [['--reps', 'ten'], /--reps must be a whole number, got "ten"/],
    [['--reps', '1'], /--reps must be an integer ≥ 2, got 1/],
    [['--threads', '0'], /--threads must be an integer ≥ 1/],
    [['--synth', 'tiny'], /--synth "tiny" is not <shape>:<quant>/],
    [['--synth', 'gigantic:f32'], /unknown shape "gigantic"[\s\S]*hint: known shapes: tiny/],
    [['--synth', 'tiny:Q3_X'], /unknown quantization "Q3_X"[\s\S]*hint: known: f32/],
    [['--model', 'x.gguf', '--synth', 'tiny:f32'], /--model and --synth are alternatives/],
    [['--model', '/nonexistent/model.gguf'], /--model \/nonexistent\/model\.gguf: no such file/],
    [['--model', 'package.json'], /not a valid GGUF model: bad magic/],
    [['--pp', '0', '--tg', '0'], /nothing to measure/],
    [['--synth', 'tiny:f32', '--triad-bin', '/nonexistent/triad'], /--triad-bin \/nonexistent\/triad: no such file/],
    [['--frobnicate'], /unknown option '--frobnicate'/],
    [['stray'], /too many arguments for 'bench'/],
  ];
  it.each(cases)('aios bench %j → exit 2', async (args, message) => {
    const r = await cli(['bench', ...args]);
    expect(r.stderr).toMatch(message);
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toBe('');
  });

  it('--help describes the options and what is reported', async () => {
    const r = await cli(['bench', '--help']);
    expect(r.exitCode).toBe(0);
    for (const o of ['--model', '--synth', '--reps', '--threads', '--json', '--out', '--triad-bin', 'compare']) expect(r.stdout).toContain(o);
    expect(r.stdout).toMatch(/roofline/);
    expect(r.stdout).toMatch(/TCG\) are meaningless for performance/);
  });
});

describe('aios bench compare', () => {
  const fig = (name: string, unit: string, samples: number[]) => ({ name, unit, samples, ...summarize(samples) });
  const noise = [0.9, -1.1, 0.4, -0.3, 1.2, -0.8, 0.2, -0.5, 0.7, -0.7];
  function write(file: string, tg: number) {
    const tgs = noise.map((x) => tg + x);
    const bw = noise.map((x) => 30 + x);
    const facts = {
      cpu: { model: 'Test CPU', vendor: 'x', logical: 2, physicalCores: 2, sockets: 1, flags: [] },
      memoryBytes: 1,
      kernel: { release: '6.12', version: '#1', cmdline: 'quiet' },
      configHz: '250',
      configSource: 'x',
      preemption: { mode: 'none', source: 'x' },
      thp: { enabled: 'madvise', defrag: 'madvise' },
      governor: 'none',
      mitigations: { summary: 'x', vulnerabilities: {} },
      numaNodes: 1,
      zram: { devices: [], summary: 'none' },
      virtualization: { hypervisorFlag: false, emulated: false, summary: 'bare metal' },
      loadAverage: [0, 0, 0],
      llama: { binDir: '/x' },
      threads: 2,
    };
    const res = {
      schema: BENCH_SCHEMA,
      when: 'now',
      seconds: 1,
      facts,
      model: { file: 'm', architecture: 'llama', parameters: 1, fileBytes: 1, weightsBytes: 1, bytesPerToken: 1, bytesPerTokenNote: '' },
      settings: { reps: 10, threads: 2, pp: 0, tg: 128, warmup: '' },
      figures: { tg: fig('tg128', 't/s', tgs), bandwidth: { ...fig('triad', 'GB/s', bw), best: 31, arrayBytes: 1, sizing: '' } },
      llamaBench: { argv: [], ownMeans: {} },
      loadAverage: { before: [0, 0, 0], after: [0, 0, 0] },
      warnings: [],
    };
    writeFileSync(file, JSON.stringify(res));
  }

  it('prints a Markdown table with verdicts, or JSON', async () => {
    const d = tmp();
    write(join(d, 'a.json'), 50);
    write(join(d, 'b.json'), 55);
    const md = await cli(['bench', 'compare', join(d, 'a.json'), join(d, 'b.json')]);
    expect(md.exitCode).toBe(0);
    expect(md.stdout).toMatch(/^\| tg128 \(t\/s\) \| 50\.00 ± .* \| \*\*better\*\* \|$/m);
    expect(md.stdout).toMatch(/^\| triad \(GB\/s\) \| .* \| \*\*no difference detectable at 95 %\*\* \|$/m);
    expect(md.stdout).toMatch(/Welch's t/);
    const js = await cli(['bench', 'compare', '--json', join(d, 'b.json'), join(d, 'a.json')]);
    expect(js.exitCode).toBe(0);
    const c = JSON.parse(js.stdout);
    expect(c.figures.map((f: { figure: string; verdict: string }) => [f.figure, f.verdict])).toEqual([
      ['tg', 'worse'],
      ['bandwidth', 'no difference detectable at 95 %'],
    ]);
    expect(c.figures[0].welch.diff).toBeCloseTo(-5, 10);
  });

  it('refuses missing, non-JSON and foreign files with exit 2', async () => {
    const d = tmp();
    write(join(d, 'a.json'), 50);
    writeFileSync(join(d, 'text.json'), 'hello');
    writeFileSync(join(d, 'other.json'), '{"x": 1}');
    for (const [f, msg] of [
      ['missing.json', /missing\.json: no such file/],
      ['text.json', /text\.json is not JSON/],
      ['other.json', /other\.json is not an aios bench result/],
    ] as const) {
      const r = await cli(['bench', 'compare', join(d, 'a.json'), join(d, f)]);
      expect(r.stderr).toMatch(msg);
      expect(r.stderr).toMatch(/hint: give two files written by `aios bench --out <file>`/);
      expect(r.exitCode).toBe(2);
    }
    const one = await cli(['bench', 'compare', join(d, 'a.json')]);
    expect(one.stderr).toMatch(/missing required argument 'b\.json'/);
    expect(one.exitCode).toBe(2);
  });
});
