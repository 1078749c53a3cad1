/**
 * `npm run bench:sandbox`: what the model sandbox (issue 16) costs. The same llama-server, same
 * model and arguments, started plain (loopback TCP) and through the runtime's own isolation path
 * (isolation.ts: the sandbox the runtime uses on this host, unix socket), interleaved (the order alternates every repetition):
 * start → /health 200, and the decode rate of one generation of a fixed number of tokens
 * (ignore_eos; llama-server's own `timings.predicted_per_second`). Writes its section of
 * docs/benchmarks.md (between the sandbox-bench markers).
 *
 *   npm run bench:sandbox -- [--reps 10] [--tokens 128] [--model file.gguf] [--note "…"] [--out docs/benchmarks.md]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildLlamaStage } from '../build/index.js';
import { synthModel } from '../models/synth.js';
import { Isolation, spawnWrapped } from '../runtime/isolation.js';
import { getChildStatus, postChild, readAll, type ChildAddress } from '../runtime/upstream.js';
import { physicalCores } from '../util/cpu.js';
import { freePort } from '../util/net.js';
import { defaultCacheDir, PKG_ROOT } from '../util/paths.js';
import { mean, sd } from './stats.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
};
const REPS = Number(arg('reps', '10'));
const TOKENS = Number(arg('tokens', '128'));
const OUT = arg('out', join(PKG_ROOT, 'docs/benchmarks.md'));
const NOTE = arg('note', '');
const START = '<!-- sandbox-bench:start -->';
const END = '<!-- sandbox-bench:end -->';

interface Run {
  startMs: number;
  tps: number;
}

async function once(binary: string, model: string, iso: Isolation | undefined): Promise<Run> {
  const port = await freePort();
  const args = ['-m', model, '--alias', 'bench', '--host', '127.0.0.1', '--port', String(port), '-c', '2048', '-t', String(physicalCores()), '--parallel', '1', '--no-webui', '--cache-ram', '0'];
  const profile = { name: 'bench', path: model, level: '' as const, ctxSize: 2048, threads: 0, gpuLayers: 0, parallel: 1, mmap: true };
  const w = iso ? iso.wrap(profile, binary, args) : { argv: [binary, ...args], socket: undefined };
  if (iso && !w.socket) throw new Error(`the sandbox did not apply: ${iso.warnings.join('; ')}`);
  const to: ChildAddress = w.socket ?? port;
  const t0 = performance.now();
  const proc: ChildProcess = spawnWrapped(w, ['ignore', 'ignore', 'pipe']);
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
  try {
    while ((await getChildStatus(to, '/health', 1000)) !== 200) {
      if (proc.exitCode !== null) throw new Error(`llama-server exited: ${err}`);
      if (performance.now() - t0 > 120_000) throw new Error('llama-server did not become ready in 120 s');
      await new Promise((r) => setTimeout(r, 5));
    }
    const startMs = performance.now() - t0;
    const body = JSON.stringify({ messages: [{ role: 'user', content: 'Write a long story.' }], max_tokens: TOKENS, temperature: 0, ignore_eos: true });
    const res = await postChild(to, '/v1/chat/completions', Buffer.from(body), AbortSignal.timeout(600_000));
    const j = JSON.parse((await readAll(res)).toString()) as { timings?: { predicted_per_second?: number } };
    const tps = j.timings?.predicted_per_second;
    if (!tps) throw new Error(`no timings in llama-server's answer: ${JSON.stringify(j).slice(0, 300)}`);
    return { startMs, tps };
  } finally {
    proc.kill('SIGKILL');
    await new Promise((r) => (proc.exitCode !== null || proc.signalCode !== null ? r(undefined) : proc.once('exit', r)));
  }
}

async function main(): Promise<void> {
  const llama = await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
  const binary = join(llama.binDir, 'llama-server');
  let model = arg('model', '');
  if (!model) {
    model = join(defaultCacheDir(), 'bench', 'tiny-f32.gguf');
    if (!existsSync(model)) {
      const tools = { ggufPy: join(llama.shareDir, 'gguf-py'), vocab: join(llama.shareDir, 'ggml-vocab-llama-spm.gguf'), quantize: join(llama.binDir, 'llama-quantize') };
      await synthModel({ shape: 'tiny', quant: 'f32', out: model, tools });
    }
  }
  const iso = new Isolation({ sandbox: 'auto', cgroup: 'off', childDir: mkdtempSync(join(tmpdir(), 'aios-bench-sandbox-')), swapMax: 0, layers: new Map() });
  if (!iso.sandbox) throw new Error(`no sandbox on this host: ${iso.warnings.join('; ')}`);
  const load0 = loadavg()[0]!;
  const runs: Record<'plain' | 'sandbox', Run[]> = { plain: [], sandbox: [] };
  for (let i = 0; i < REPS; i++) {
    for (const mode of i % 2 ? (['sandbox', 'plain'] as const) : (['plain', 'sandbox'] as const)) {
      const r = await once(binary, model, mode === 'sandbox' ? iso : undefined);
      runs[mode].push(r);
      process.stderr.write(`${i + 1}/${REPS} ${mode}: start ${r.startMs.toFixed(1)} ms, ${r.tps.toFixed(1)} tokens/s\n`);
    }
  }
  const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  const row = (name: string, f: (r: Run) => number, unit: string, digits: number) => {
    const p = runs.plain.map(f);
    const s = runs.sandbox.map(f);
    const diff = mean(s) - mean(p);
    return `| ${name} | ${mean(p).toFixed(digits)} ± ${sd(p).toFixed(digits)} (median ${med(p).toFixed(digits)}) | ${mean(s).toFixed(digits)} ± ${sd(s).toFixed(digits)} (median ${med(s).toFixed(digits)}) | ${diff >= 0 ? '+' : ''}${diff.toFixed(digits)} ${unit} (${((diff / mean(p)) * 100).toFixed(1)} %) |`;
  };
  const section = [
    START,
    `Measured ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC on ${cpus()[0]?.model ?? 'this machine'} (${cpus().length} CPUs, load average ${load0.toFixed(1)} at the start), model \`${model.split('/').pop()}\`, ${REPS} interleaved repetitions, ${TOKENS} tokens each, \`-t ${physicalCores()}\`. "sandbox" = the runtime's own path (${iso.describe().replace(/^model isolation: no per-model cgroups; /, '')}, unix socket); no cgroup in either.${NOTE ? ` ${NOTE}` : ''}`,
    '',
    '| figure | plain (mean ± sd) | sandboxed (mean ± sd) | sandbox − plain |',
    '| --- | --- | --- | --- |',
    row('start → /health 200 (ms)', (r) => r.startMs, 'ms', 1),
    row('decode (tokens/s, llama-server timings)', (r) => r.tps, 'tokens/s', 1),
    END,
  ].join('\n');
  process.stdout.write(section + '\n');
  const doc = existsSync(OUT) ? readFileSync(OUT, 'utf8') : '';
  const a = doc.indexOf(START);
  const b = doc.indexOf(END);
  writeFileSync(OUT, a >= 0 && b > a ? doc.slice(0, a) + section + doc.slice(b + END.length) : `${doc.trimEnd()}\n\n## Model sandbox overhead (\`npm run bench:sandbox\`)\n\n${section}\n`);
}

main().catch((e: Error) => {
  process.stderr.write(`bench:sandbox: ${e.message}\n`);
  process.exit(1);
});
