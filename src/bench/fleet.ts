/**
 * `npm run bench:fleet`: a model split across llama.cpp RPC workers (issue 20; docs/fleets.md) vs
 * the same model on one node, on this one machine. Each worker is a ggml-rpc-server in a network
 * namespace of its own (a veth pair stands in for the wire: src/fleet/netns.ts; nothing else is
 * addressed), and each setup has its own head aios-runtime (in this process) whose tactical model
 * is the benchmark model: on the head alone ("one node"), or rpc = true across 2 (or 3, …) workers.
 * Every repetition visits the setups in a rotated order and, for each: unloads the model, times a
 * LoadModel (for a split model: the workers' memory question, the weights sent over the veths,
 * llama-server's start), sends a short warm-up request, then streams a fixed number of tokens
 * (ignore_eos) through the HTTP API and takes llama-server's own decode rate
 * (timings.predicted_per_second) and the client's. Writes its section of docs/benchmarks.md
 * (between the fleet-bench markers). On one machine the workers share its cores and memory
 * bandwidth and the "wire" is a veth: this measures the RPC backend's overhead, not scaling.
 * Needs root (ip netns) and the llama stage (built on first use).
 *
 *   npm run bench:fleet -- [--reps 5] [--tokens 64] [--workers 2,3] [--model file.gguf] [--note "…"] [--out docs/benchmarks.md]
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { dirname, join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { buildLlamaStage } from '../build/index.js';
import { synthModel } from '../models/synth.js';
import { RuntimeConfigSchema } from '../runtime/config.js';
import { startDaemon, type Daemon } from '../runtime/daemon.js';
import { connect, unary, type RuntimeClient } from '../runtime/client.js';
import { NetnsLab, waitForPort, type NsHost } from '../fleet/netns.js';
import { physicalCores } from '../util/cpu.js';
import { defaultCacheDir, PKG_ROOT } from '../util/paths.js';
import { readChatStream, runBench, writeBenchSection } from './common.js';
import { median } from './stats.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
};
const REPS = Number(arg('reps', '5'));
const TOKENS = Number(arg('tokens', '64'));
const WORKERS = arg('workers', '2,3').split(',').map(Number).filter((n) => n >= 1);
const OUT = arg('out', join(PKG_ROOT, 'docs/benchmarks.md'));
const NOTE = arg('note', '');
const PORT = 50052;
const START = '<!-- fleet-bench:start -->';
const END = '<!-- fleet-bench:end -->';
const PROMPT = 'Write a long story about a robot who learns to paint.';
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
const f = (x: number, d = 0) => x.toFixed(d);
const MiB = 1024 * 1024;

interface Gen {
  tokens: number;
  /** Decode rate the client saw: tokens after the first / time after the first. */
  tps: number;
  /** llama-server's own (timings.predicted_per_second). */
  serverTps: number;
}

/** One streamed chat completion of TOKENS tokens through the runtime's HTTP API. */
async function generate(httpPort: number, model: string, tokens = TOKENS): Promise<Gen> {
  const r = await fetch(`http://127.0.0.1:${httpPort}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: PROMPT }], max_tokens: tokens, temperature: 0, ignore_eos: true, stream: true }),
  });
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  const s = await readChatStream(r.body as unknown as AsyncIterable<Uint8Array>);
  return { tokens: s.tokens, tps: s.tps, serverTps: s.serverTps ?? 0 };
}

interface Setup {
  name: string;
  workers: NsHost[];
  daemon?: Daemon;
  client?: RuntimeClient;
  loads: number[];
  gens: Gen[];
  /** Bytes llama-server placed on each worker (ListModels rpc_workers), from the last load. */
  placed: { address: string; bytes: number }[];
}

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('needs root: the workers run in network namespaces (ip netns)');
  const llama = await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
  const rpcServer = join(llama.binDir, 'ggml-rpc-server');
  if (!existsSync(rpcServer)) throw new Error(`${rpcServer} is missing: the llama stage was built without llama.rpc`);
  const tools = { ggufPy: join(llama.shareDir, 'gguf-py'), vocab: join(llama.shareDir, 'ggml-vocab-llama-spm.gguf'), quantize: join(llama.binDir, 'llama-quantize') };
  const model = arg('model', join(defaultCacheDir(), 'bench', 'tinyllama-1.1b-Q4_K_M.gguf'));
  if (!existsSync(model)) {
    log(`synthesizing ${model} (TinyLlama-1.1B shape, Q4_K_M; about a minute)`);
    mkdirSync(dirname(model), { recursive: true });
    await synthModel({ shape: 'tinyllama-1.1b', quant: 'Q4_K_M', out: model, tools });
  }
  // Each head's operational model (the runtime needs one): tiny, beside the benchmark model.
  const op = join(dirname(model), 'fleet-bench-operational-tiny.gguf');
  if (!existsSync(op)) await synthModel({ shape: 'tiny', quant: 'f32', out: op, tools });
  const threads = physicalCores();
  const lab = new NetnsLab();
  NetnsLab.sweep();
  const workers: ChildProcess[] = [];
  const setups: Setup[] = [{ name: 'one node', workers: [], loads: [], gens: [], placed: [] }];
  let next = 1;
  for (const n of WORKERS) {
    const hosts = Array.from({ length: n }, () => lab.add(next++));
    setups.push({ name: `split across ${n} workers`, workers: hosts, loads: [], gens: [], placed: [] });
  }
  const load0 = loadavg();
  const t0 = Date.now();
  const modelName = model.split('/').pop()!.replace(/\.gguf$/, '');
  // The daemons (their llama-servers), the workers and the namespaces go on every way out: the end,
  // an error, or Ctrl-C / SIGTERM (the workers are not children a parent's death would end).
  let cleaned: Promise<void> | undefined;
  const cleanup = () =>
    (cleaned ??= (async () => {
      for (const s of setups) {
        s.client?.close();
        await s.daemon?.stop().catch(() => {});
      }
      await lab.cleanup();
    })());
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => void cleanup().finally(() => process.exit(130)));
  try {
    // Workers with as many threads as the head's llama-server (runtime threads = 0: physical cores).
    for (const s of setups) {
      for (const h of s.workers) {
        const p = lab.spawnIn(h, [rpcServer, '-H', h.addr, '-p', String(PORT), '-t', String(threads)]);
        p.stderr?.resume();
        p.stdout?.resume();
        workers.push(p);
        await waitForPort(h.addr, PORT, 15_000);
      }
    }
    for (const s of setups) {
      const config = RuntimeConfigSchema.parse({
        runtime: {
          llama_server: join(llama.binDir, 'llama-server'),
          socket: '',
          listen: '127.0.0.1:0',
          http_listen: '127.0.0.1:0',
          health_interval: '2s',
          load_timeout: '600s',
          request_timeout: '600s',
          ...(s.workers.length ? { rpc_workers: s.workers.map((h) => ({ address: `${h.addr}:${PORT}` })) } : {}),
        },
        models: {
          model_dir: dirname(model),
          operational: { name: op.split('/').pop()!, parallel: 1, ctx_size: 512 },
          tactical: { name: `${modelName}.gguf`, parallel: 1, ctx_size: 1024, ...(s.workers.length ? { rpc: true } : {}) },
        },
      });
      s.daemon = await startDaemon(config, { log: () => {} });
      s.client = connect(`127.0.0.1:${s.daemon.listening.tcpPort}`);
    }
    for (let r = 0; r < REPS; r++) {
      const order = setups.map((_, i) => setups[(i + r) % setups.length]!);
      for (const s of order) {
        const c = s.client!;
        await unary(c, 'UnloadModel', { model_name: modelName }).catch(() => undefined);
        const l0 = performance.now();
        const st = await unary(c, 'LoadModel', { model_name: modelName }, 600_000);
        s.loads.push(performance.now() - l0);
        if (s.workers.length && st.rpc_workers.length !== s.workers.length) throw new Error(`${s.name}: the model was not split (rpc_workers ${JSON.stringify(st.rpc_workers)})`);
        const listed = (await unary(c, 'ListModels', {})).models.find((m) => m.name === modelName);
        s.placed = (listed?.rpc_workers ?? []).map((w) => ({ address: w.address, bytes: Number(w.bytes) }));
        await generate(s.daemon!.http!.port, modelName, 4); // warm-up
        const g = await generate(s.daemon!.http!.port, modelName);
        s.gens.push(g);
        log(`rep ${r + 1}/${REPS} ${s.name}: load ${f(s.loads.at(-1)!)} ms, ${g.tokens} tokens, ${f(g.serverTps, 2)} tok/s (llama-server), ${f(g.tps, 2)} tok/s (client)`);
      }
    }
  } finally {
    await cleanup();
  }
  const load1 = loadavg();
  const base = setups[0]!;
  const row = (s: Setup) => {
    const st = s.gens.map((g) => g.serverTps);
    const ct = s.gens.map((g) => g.tps);
    const vs = s === base ? '1.00' : f(median(st) / median(base.gens.map((g) => g.serverTps)), 2);
    return `| ${s.name} | ${f(median(st), 2)} (${f(Math.min(...st), 2)}–${f(Math.max(...st), 2)}) | ${vs} | ${f(median(ct), 2)} (${f(Math.min(...ct), 2)}–${f(Math.max(...ct), 2)}) | ${f(median(s.loads))} (${f(Math.min(...s.loads))}–${f(Math.max(...s.loads))}) |`;
  };
  // What the run can say: a split setup whose range overlaps one node's shows no difference at all.
  const range = (s: Setup) => [Math.min(...s.gens.map((g) => g.serverTps)), Math.max(...s.gens.map((g) => g.serverTps))] as const;
  const [b0, b1] = range(base);
  const verdicts = setups.slice(1).map((s) => {
    const [lo, hi] = range(s);
    return lo <= b1 && hi >= b0 ? `${s.name}: its range overlaps one node's, so this run shows no difference either way` : `${s.name}: ${f(median(s.gens.map((g) => g.serverTps)) / median(base.gens.map((g) => g.serverTps)), 2)}× one node's decode rate, outside one node's range`;
  });
  const busy = Math.max(load0[0]!, load1[0]!) > cpus().length;
  const sizeMiB = f(Number(readFileSync(model).length) / MiB);
  const placed = setups
    .filter((s) => s.workers.length)
    .map((s) => `${s.name}: ${s.placed.map((p) => `${p.address} ${f(p.bytes / MiB)} MiB`).join(', ')}`)
    .join('; ');
  const section = `${START}
## Fleets: a model split across RPC workers vs the same model on one node

Produced by \`npm run bench:fleet\` (\`src/bench/fleet.ts\`, run as root under \`flock /tmp/aios-heavy.lock\`), which replaces this
section. **On one machine this measures the overhead of llama.cpp's RPC backend, not scaling**: the
workers are ggml-rpc-server processes in network namespaces of this machine (a veth pair each stands
in for the wire), so they share its cores and memory bandwidth with the head, and the "network" has
no real latency or bandwidth limit. A split model computes its layers one worker after the other
for every token, and adds the activations' round trips; on separate machines the same split gives
more memory (a model too large for one), not more speed for one request. Each setup is its own head
aios-runtime whose tactical model is the benchmark model, on the head alone or \`rpc = true\` across
its workers; every repetition visits the setups in a rotated order and, for each, unloads the model,
times a LoadModel (a split load includes the workers' memory question and the weights sent to them,
no tensor cache), sends a 4-token warm-up, then streams ${TOKENS} tokens (ignore_eos, temperature 0)
through the HTTP API.

- when: ${new Date(t0).toISOString().replace(/\.\d+Z$/, 'Z')}, ${REPS} repetitions, ${f((Date.now() - t0) / 1000)} s in all
- machine: ${cpus()[0]?.model.trim() ?? '?'}, ${cpus().length} logical CPUs, **a shared machine** (other engineers' jobs may run); load average ${load0.map((x) => x.toFixed(2)).join(' ')} before, ${load1.map((x) => x.toFixed(2)).join(' ')} after
- model: \`${model.split('/').pop()}\` (${sizeMiB} MiB), TinyLlama-1.1B shape, Q4_K_M, random weights; ctx 1024, 1 slot; the head's llama-server and every worker with ${threads} thread(s)
- placed on the workers (ListModels rpc_workers, as llama-server reported): ${placed || '-'}
${NOTE ? `- note: ${NOTE}\n` : ''}
| setup | decode tok/s, llama-server: median (range) | vs one node | decode tok/s, client: median (range) | LoadModel, ms: median (range) |
| --- | --- | --- | --- | --- |
${setups.map(row).join('\n')}

Per repetition (llama-server tok/s): ${setups.map((s) => `${s.name} ${s.gens.map((g) => f(g.serverTps, 1)).join(', ')}`).join('; ')}.

What this run shows: ${verdicts.join('; ')}.${busy ? ` The load average was above the machine's ${cpus().length} logical CPUs: llama.cpp's threads wait for each other when the scheduler takes one away, so these figures are mostly the machine's contention, not the RPC backend's cost; rerun on a quiet machine for the overhead.` : ''}
${END}`;
  writeBenchSection(OUT, START, END, section);
}

runBench(main);
