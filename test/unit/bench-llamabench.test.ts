/** Parsing llama-bench's output: fixtures written by the llama stage's own llama-bench (-o json and -o jsonl). */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseLlamaBench } from '../../src/bench/llamabench.js';
import { mean } from '../../src/bench/stats.js';
import { REPO } from '../helpers.js';

const fixture = (f: string) => readFileSync(join(REPO, 'test/fixtures', f), 'utf8');

describe('llama-bench output', () => {
  it('-o json: one pp and one tg test with per-repetition samples', () => {
    const r = parseLlamaBench(fixture('llama-bench.json'));
    expect(r.tests.map((t) => [t.name, t.kind, t.nPrompt, t.nGen, t.threads])).toEqual([
      ['pp64', 'pp', 64, 0, 2],
      ['tg16', 'tg', 0, 16, 2],
    ]);
    expect(r.tests[0]!.samples).toEqual([219.245, 238.952, 371.585]);
    expect(r.tests[1]!.samples).toEqual([13.8938, 462.778, 103.889]);
    // llama-bench's avg_ts is the mean of its samples: the samples are what we think they are
    for (const t of r.tests) expect(mean(t.samples)).toBeCloseTo(t.avgTs, 2);
    expect(r).toMatchObject({ buildCommit: 'de3ff81', cpuInfo: 'AMD EPYC', backends: 'CPU', modelSize: 34474496, modelParams: 8618624 });
  });

  it('-o jsonl: the same fields, one object per line', () => {
    const r = parseLlamaBench(fixture('llama-bench.jsonl'));
    expect(r.tests.map((t) => t.name)).toEqual(['pp64', 'tg16']);
    expect(r.tests[1]!.samples).toEqual([4.24093, 10.5886, 4.10455]);
  });

  it('a combined pp+tg test is named as llama-bench names it', () => {
    const row = { n_prompt: 512, n_gen: 128, n_threads: 4, avg_ts: 2, stddev_ts: 0, samples_ts: [1, 3] };
    expect(parseLlamaBench(JSON.stringify([row])).tests[0]).toMatchObject({ name: 'pp512+tg128', kind: 'pp' });
  });

  it('refuses output that is not llama-bench JSON', () => {
    expect(() => parseLlamaBench('| model | size |')).toThrow(/not JSON/);
    expect(() => parseLlamaBench('[]')).toThrow(/no test results/);
    expect(() => parseLlamaBench('[{"n_prompt": 512, "n_gen": 0, "avg_ts": 1}]')).toThrow(/no samples_ts/);
  });
});
