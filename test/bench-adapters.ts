/**
 * What switching the LoRA adapter set between two requests adds to the first-token latency, on the
 * synthesized tiny model with a real llama-server child (one slot), and what selection by task costs
 * (embedding the task with the [models.embedding] child + ranking; descriptions cached).
 * `node scripts/bench-adapters.mjs [reps]`; it replaces the adapter-bench section of docs/benchmarks.md.
 *
 * Interleaved: each repetition sends one request with the same adapter set as the request before it
 * ("same") and one with the other set ("switch"), in an order that alternates every repetition; every
 * prompt is new (a counter in it), so neither kind reuses a previous answer's prompt beyond the chat
 * template. Time to first token = gRPC StreamInfer call → first text chunk.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { runtimeFixture } from './e2e/runtime-fixture.js';
import { synthLora } from '../src/models/synth-lora.js';
import { RuntimeConfigSchema } from '../src/runtime/config.js';
import { startDaemon } from '../src/runtime/daemon.js';
import { connectRuntime, type RuntimeClient } from '../src/runtime/client.js';

const reps = Number(process.argv[2] ?? process.env.AIOS_BENCH_REPS ?? 200);
const dir = mkdtempSync(join(tmpdir(), 'aios-bench-adapters-'));
const q = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
};
const f = (x: number) => x.toFixed(1);

function ttft(c: RuntimeClient, prompt: string, adapter: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = 0;
    const call = c.StreamInfer({ prompt, max_tokens: 4, temperature: 0, adapters: [{ name: adapter }] } as never);
    call.on('data', (ch: { text: string }) => {
      if (ch.text && !first) first = performance.now() - t0;
    });
    call.on('error', reject);
    call.on('end', () => resolve(first || performance.now() - t0));
  });
}

try {
  const fx = await runtimeFixture(dir);
  const base = join(dir, 'tiny.gguf');
  await synthLora({ base, out: join(dir, 'a.gguf'), rank: 8, seed: 1, ggufPy: fx.tools.ggufPy });
  await synthLora({ base, out: join(dir, 'b.gguf'), rank: 8, seed: 2, ggufPy: fx.tools.ggufPy });
  copyFileSync(base, join(dir, 'embed.gguf'));
  const descriptions = Array.from({ length: 8 }, (_, i) => `adapter number ${i} for tasks of kind ${i}`);
  const config = RuntimeConfigSchema.parse({
    runtime: { llama_server: fx.llamaServer, socket: '', listen: '127.0.0.1:0', health_interval: '10s' },
    models: {
      model_dir: dir,
      operational: {
        name: 'tiny.gguf', parallel: 1, ctx_size: 512,
        adapters: [{ name: 'a', file: 'a.gguf', description: descriptions[0] }, { name: 'b', file: 'b.gguf', description: descriptions[1] }, ...descriptions.slice(2).map((d, i) => ({ name: `x${i}`, file: 'a.gguf', description: d }))],
      },
      embedding: { name: 'embed.gguf', min_similarity: 0.7, max_adapters: 3 },
    },
  });
  const daemon = await startDaemon(config, { log: () => {} });
  const c = connectRuntime(`127.0.0.1:${daemon.listening.tcpPort}`);
  const load0 = loadavg();
  const t0 = Date.now();
  let n = 0;
  let last = 'a';
  const other = (s: string) => (s === 'a' ? 'b' : 'a');
  for (let i = 0; i < 10; i++) last = other(last), await ttft(c, `warm-up ${n++}`, last);
  const same: number[] = [];
  const sw: number[] = [];
  for (let r = 0; r < reps; r++) {
    for (const kind of r % 2 ? ['switch', 'same'] : ['same', 'switch']) {
      const set = kind === 'same' ? last : other(last);
      const ms = await ttft(c, `Request ${n++}: tell me about lighthouses.`, set);
      (kind === 'same' ? same : sw).push(ms);
      last = set;
    }
  }
  const paired = sw.map((x, i) => x - same[i]!);
  // Selection by task: the embedding child (task only; descriptions cached after the first) + ranking.
  await daemon.service.adapters.choose('tiny', undefined, 'warm-up task');
  const sel: number[] = [];
  for (let r = 0; r < Math.min(reps, 100); r++) {
    const s0 = performance.now();
    await daemon.service.adapters.choose('tiny', undefined, `task number ${r}: write a query`);
    sel.push(performance.now() - s0);
  }
  const seconds = (Date.now() - t0) / 1000;
  const load1 = loadavg();
  c.close();
  await daemon.stop();
  const when = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  const section = `<!-- adapter-bench:start -->
## LoRA adapters: added first-token latency of switching the adapter set, and selection by task

Produced by \`npm run build && node scripts/bench-adapters.mjs ${reps}\` (\`test/bench-adapters.ts\`), which replaces this section.
The synthesized tiny model (128 × 2 layers, f32) in a real llama-server child with one slot, started
with eight rank-8 LoRA adapters (all attention and feed-forward weights; two files, **a** and **b**,
and six more copies of a that only give the selection eight descriptions) loaded unapplied; requests
through gRPC StreamInfer, 4 tokens, greedy. Each repetition sends one request with the same adapter
set as the one before (**same**) and one with the other set (**switch**), alternating which goes
first; every prompt is new. Switching costs llama-server its slot's cached prompt (the chat template
prefix) and the adapter graph change. **Selection**: \`adapters.choose()\` with a new task each time
(the task embedded by the \`[models.embedding]\` child, a copy of the tiny model; 8 descriptions,
embedded once and cached; cosine ranking). The figures of one run on a shared, busy 2-core machine:
the p50s say what a switch costs; the p99s are other processes' scheduling, not the runtime.

- when: ${when}, ${reps} repetitions after 10 warm-ups, ${seconds.toFixed(0)} s in all
- machine: ${cpus()[0]?.model.trim() ?? '?'}, ${cpus().length} logical CPUs, shared with other work (load average ${load0.map((x) => x.toFixed(2)).join(' ')} before, ${load1.map((x) => x.toFixed(2)).join(' ')} after): the p99 figures are mostly scheduling noise

| | p50, ms | p99, ms |
| --- | --- | --- |
| first token, same set | ${f(q(same, 0.5))} | ${f(q(same, 0.99))} |
| first token, switched set | ${f(q(sw, 0.5))} | ${f(q(sw, 0.99))} |
| added by the switch (paired per repetition) | ${f(q(paired, 0.5))} | ${f(q(paired, 0.99))} |
| selection by task (embedding + ranking) | ${f(q(sel, 0.5))} | ${f(q(sel, 0.99))} |
<!-- adapter-bench:end -->`;
  const file = process.env.AIOS_BENCH_DOCS ?? join(import.meta.dirname ?? '.', '..', 'docs', 'benchmarks.md');
  const text = readFileSync(file, 'utf8');
  const re = /<!-- adapter-bench:start -->[\s\S]*?<!-- adapter-bench:end -->/;
  writeFileSync(file, re.test(text) ? text.replace(re, section) : text.replace(/\n## `aios bench`/, `\n${section}\n\n## \`aios bench\``));
  console.log(section);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
