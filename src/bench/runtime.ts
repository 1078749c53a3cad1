/**
 * `npm run bench`: tokens/s and first-token latency through aios-runtime (OpenAI HTTP API and gRPC
 * StreamInfer) against the same llama-server child called directly, and against a bare Node relay
 * in front of it (bare-relay.ts: the floor under any relay in Node), same model, same run. The
 * paths are interleaved (the order rotates every repetition) so drift and load changes hit them
 * alike; each request streams a fixed number of tokens (ignore_eos). The daemon runs as its own
 * process, as in the image, so its CPU time per relayed token can be read from /proc. Writes its
 * section of docs/benchmarks.md (between the runtime-bench markers; the rest of the file stays).
 *
 *   npm run bench -- [--reps 10] [--tokens 96] [--model file.gguf] [--note "…"] [--out docs/benchmarks.md]
 *                    [--daemon dist/runtime/main.js]   (another build's daemon, e.g. for a before/after)
 *
 * The default model is a TinyLlama-1.1B-shaped Q4_K_M with random weights, synthesized once into
 * ~/.cache/aios/bench/ (speed does not depend on the weights' values).
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { stringify } from 'smol-toml';
import { buildLlamaStage } from '../build/index.js';
import { synthModel } from '../models/synth.js';
import { connect, unary, waitReady, type RuntimeClient } from '../runtime/client.js';
import { postChild, readAll } from '../runtime/upstream.js';
import { physicalCores } from '../util/cpu.js';
import { freePort } from '../util/net.js';
import { defaultCacheDir, PKG_ROOT } from '../util/paths.js';
import { readChatStream } from './common.js';
import { median } from './stats.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
};
const REPS = Number(arg('reps', '10'));
const TOKENS = Number(arg('tokens', '96'));
const OUT = arg('out', join(PKG_ROOT, 'docs/benchmarks.md'));
const NOTE = arg('note', '');
const DAEMON = arg('daemon', join(PKG_ROOT, 'dist/runtime/main.js'));
const START = '<!-- runtime-bench:start -->';
const END = '<!-- runtime-bench:end -->';

/** CPU time of every thread of a process so far, in milliseconds (/proc/PID/task/*\/schedstat: ns on the CPU). */
function cpuMs(pid: number): number {
  let ns = 0;
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      ns += Number(readFileSync(`/proc/${pid}/task/${t}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      /* the thread ended */
    }
  }
  return ns / 1e6;
}
const PROMPT = 'Write a long story about a robot who learns to paint.';

interface Run {
  ttftMs: number;
  tokens: number;
  /** Decode rate seen by the client: tokens after the first / time after the first. */
  tps: number;
  /** llama-server's own decode rate for the request (timings.predicted_per_second), when it reports it. */
  serverTps?: number;
}

/** One streamed chat completion over the OpenAI API (the runtime's or llama-server's own). */
async function openaiStream(base: string): Promise<Run> {
  const body = JSON.stringify({ model: 'operational', messages: [{ role: 'user', content: PROMPT }], max_tokens: TOKENS, temperature: 0, ignore_eos: true, stream: true });
  const t0 = performance.now();
  // unix:<path>: a sandboxed child's socket (it has no network), through the runtime's own client code.
  const res = base.startsWith('unix:')
    ? await postChild(base.slice(5), '/v1/chat/completions', Buffer.from(body), AbortSignal.timeout(600_000)).then((m) => ({ ok: m.statusCode === 200, status: m.statusCode, body: m, text: async () => (await readAll(m)).toString() }))
    : await fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).catch((e: Error & { cause?: Error }) => {
        throw new Error(`${base}: ${e.message}${e.cause ? ` (${e.cause.message})` : ''}`);
      });
  if (!res.ok) throw new Error(`${base}: ${res.status} ${await res.text()}`);
  const s = await readChatStream(res.body as unknown as AsyncIterable<Uint8Array>);
  return { ttftMs: s.first - t0, tokens: s.tokens, tps: s.tps, serverTps: s.serverTps };
}

/** The same over gRPC StreamInfer (no ignore_eos there: the random model may stop early; the rate is per token). */
function grpcStream(c: RuntimeClient): Promise<Run> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let first = 0;
    let last = 0;
    let n = 0;
    const s = c.StreamInfer({ prompt: PROMPT, max_tokens: TOKENS, temperature: 0 });
    s.on('data', (d) => {
      if (!d.text) return;
      const now = performance.now();
      if (!first) first = now;
      last = now;
      n++;
    });
    s.on('error', reject);
    s.on('end', () => resolve({ ttftMs: first - t0, tokens: n, tps: n > 1 ? ((n - 1) * 1000) / (last - first) : 0 }));
  });
}

const quantile = (xs: number[], q: number) => {
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return s[lo]! + (s[Math.min(lo + 1, s.length - 1)]! - s[lo]!) * (pos - lo);
};
const f = (x: number, d = 1) => x.toFixed(d);
const spread = (xs: number[], d = 1) => `${f(median(xs), d)} (IQR ${f(quantile(xs, 0.25), d)}–${f(quantile(xs, 0.75), d)}, range ${f(Math.min(...xs), d)}–${f(Math.max(...xs), d)})`;

async function main(): Promise<void> {
  const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
  const llama = await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
  const model = arg('model', join(defaultCacheDir(), 'bench', 'tinyllama-1.1b-Q4_K_M.gguf'));
  if (!existsSync(model)) {
    log(`synthesizing ${model} (TinyLlama-1.1B shape, Q4_K_M; about a minute)`);
    mkdirSync(dirname(model), { recursive: true });
    await synthModel({
      shape: 'tinyllama-1.1b',
      quant: 'Q4_K_M',
      out: model,
      tools: { ggufPy: join(llama.shareDir, 'gguf-py'), vocab: join(llama.shareDir, 'ggml-vocab-llama-spm.gguf'), quantize: join(llama.binDir, 'llama-quantize') },
    });
  }
  const [grpcPort, httpPort] = [await freePort(), await freePort()];
  const cfgDir = mkdtempSync(join(tmpdir(), 'aios-bench-'));
  const cfg = join(cfgDir, 'config.toml');
  writeFileSync(
    cfg,
    stringify({
      runtime: { llama_server: join(llama.binDir, 'llama-server'), socket: '', listen: `127.0.0.1:${grpcPort}`, http_listen: `127.0.0.1:${httpPort}`, health_interval: '10s', load_timeout: '300s', request_timeout: '600s' },
      models: { model_dir: dirname(model), operational: { name: model.split('/').pop()!, parallel: 1, ctx_size: 2048 } },
    }),
  );
  const load0 = loadavg();
  const proc = spawn(process.execPath, [DAEMON, '--config', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
  let daemonLog = '';
  proc.stderr.on('data', (d: Buffer) => (daemonLog = (daemonLog + d.toString()).slice(-4000)));
  const client = connect(`127.0.0.1:${grpcPort}`);
  if (!(await waitReady(client, 300_000))) {
    proc.kill();
    throw new Error(`the daemon (${DAEMON}) did not become ready: ${daemonLog}`);
  }
  const child = (await unary(client, 'ListModels', {})).models[0]!;
  // The floor: a bare Node relay (bare-relay.ts) in front of the same child, its own process.
  const barePort = await freePort();
  const bare = spawn(process.execPath, [join(dirname(new URL(import.meta.url).pathname), 'bare-relay.js'), String(barePort), child.socket || String(child.port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    bare.stdout!.once('data', () => resolve());
    bare.once('exit', (c) => reject(new Error(`bare-relay exited (${c})`)));
  }).catch((e: Error) => {
    client.close();
    proc.kill('SIGTERM'); // no daemon left behind when the relay cannot start
    throw e;
  });
  const paths: { name: string; run: () => Promise<Run> }[] = [
    { name: 'direct', run: () => openaiStream(child.socket ? `unix:${child.socket}` : `http://127.0.0.1:${child.port}`) },
    { name: 'http', run: () => openaiStream(`http://127.0.0.1:${httpPort}`) },
    { name: 'grpc', run: () => grpcStream(client) },
    { name: 'bare', run: () => openaiStream(`http://127.0.0.1:${barePort}`) },
  ];
  const results: Record<string, Run[]> = Object.fromEntries(paths.map((p) => [p.name, []]));
  /** The relaying process's CPU time while each path's requests ran (the daemon's; the bare relay's for 'bare'), and the tokens they relayed. */
  const cpu: Record<string, { ms: number; tokens: number }> = Object.fromEntries(paths.map((p) => [p.name, { ms: 0, tokens: 0 }]));
  const relayPid = (name: string) => (name === 'bare' ? bare.pid! : proc.pid!);
  const t0 = Date.now();
  const retries: string[] = [];
  try {
    log(`daemon ${DAEMON} (pid ${proc.pid}); model ${model}; llama-server pid ${child.pid} on ${child.socket ? `unix:${child.socket} (sandboxed)` : `port ${child.port}`}; ${REPS} repetitions of ${TOKENS} tokens per path`);
    for (const p of paths) await p.run(); // warm-up (prompt cache, connections), not counted
    for (let r = 0; r < REPS; r++) {
      for (let k = 0; k < paths.length; k++) {
        const p = paths[(r + k) % paths.length]!;
        const c0 = cpuMs(relayPid(p.name));
        // A connection error before any answer (a keep-alive socket the server closed while idle)
        // is retried once and counted in the report, never hidden.
        const x = await p.run().catch((e: Error) => {
          log(`rep ${r + 1}: ${p.name}: ${e.message}; retrying once`);
          retries.push(`${p.name}: ${e.message}`);
          return p.run();
        });
        cpu[p.name]!.ms += cpuMs(relayPid(p.name)) - c0;
        cpu[p.name]!.tokens += x.tokens;
        results[p.name]!.push(x);
      }
      log(`rep ${r + 1}/${REPS}: ` + paths.map((p) => `${p.name} ${f(results[p.name]!.at(-1)!.tps)} tok/s, ttft ${f(results[p.name]!.at(-1)!.ttftMs)} ms`).join('; '));
    }
  } finally {
    client.close();
    bare.kill('SIGTERM');
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
  }
  const perK = (name: string) => (cpu[name]!.tokens ? (cpu[name]!.ms * 1000) / cpu[name]!.tokens : 0);
  const load1 = loadavg();
  const secs = (Date.now() - t0) / 1000;

  // Paired comparisons: each repetition's runtime request against the direct one of the same repetition.
  const paired = (name: string) => {
    const a = results[name]!;
    const d = results.direct!;
    return { ratio: a.map((x, i) => x.tps / d[i]!.tps), addedTtft: a.map((x, i) => x.ttftMs - d[i]!.ttftMs) };
  };
  const http = paired('http');
  const grpcP = paired('grpc');
  const bareP = paired('bare');
  const bareRatio = median(results.bare!.map((x) => x.tps)) / median(results.direct!.map((x) => x.tps));
  const bareTtft = median(results.bare!.map((x) => x.ttftMs)) - median(results.direct!.map((x) => x.ttftMs));
  const tpsRatio = median(results.http!.map((x) => x.tps)) / median(results.direct!.map((x) => x.tps));
  const addedTtft = median(results.http!.map((x) => x.ttftMs)) - median(results.direct!.map((x) => x.ttftMs));
  const grpcRatio = median(results.grpc!.map((x) => x.tps)) / median(results.direct!.map((x) => x.tps));
  const grpcTtft = median(results.grpc!.map((x) => x.ttftMs)) - median(results.direct!.map((x) => x.ttftMs));
  const pass = tpsRatio >= 0.98 && addedTtft <= 5 && grpcRatio >= 0.98 && grpcTtft <= 5;

  const cpuName = cpus()[0]?.model ?? 'unknown CPU';
  const info = llama.info as { source?: { describe?: string }; isa?: { description?: string } };
  let version = '';
  try {
    version = execFileSync(join(llama.binDir, 'llama-server'), ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  } catch (e) {
    version = String((e as { stderr?: string }).stderr ?? '');
  }
  version = version.split('\n').find((l) => /version/.test(l))?.trim() ?? info.source?.describe ?? '';
  const row = (name: string, label: string) => {
    const xs = results[name]!;
    const server = xs.map((x) => x.serverTps).filter((x): x is number => x !== undefined);
    return `| ${label} | ${spread(xs.map((x) => x.tps))} | ${spread(xs.map((x) => x.ttftMs))} | ${f(median(xs.map((x) => x.tokens)), 0)} | ${server.length ? f(median(server)) : '–'} |`;
  };
  const md = `${START}
## aios-runtime overhead: OpenAI HTTP API and gRPC vs llama-server called directly

Produced by \`npm run bench\` (\`src/bench/runtime.ts\`), which replaces this section. The same
llama-server child (the one aios-runtime started for the model) is called four ways in one run: **direct** (its own OpenAI endpoint), **http** (aios-runtime's \`/v1/chat/completions\`:
router, queue, slot, relay of the stream), **grpc** (\`StreamInfer\`) and, as the floor under any
relay written in Node.js, **bare** (\`src/bench/bare-relay.ts\`, its own process: the request passed
on and every chunk of the answer written back as it arrives, nothing else). Each repetition runs one
request per path, in an order that rotates every repetition, so drift and the other load on the
machine hit the paths alike. Every request streams ${TOKENS} tokens (\`ignore_eos\`, temperature 0;
gRPC has no \`ignore_eos\`, see its token count) after the same prompt (${PROMPT.length} characters,
kept in llama-server's prompt cache after the warm-up, so the first-token latency is mostly one
decode step plus the transport). Rates and latencies are measured by the client: tokens/s =
(tokens − 1) / (time of the last token − time of the first), first-token latency = request sent →
first token received.

- daemon: \`${DAEMON.replace(PKG_ROOT + '/', '')}\` as its own process (as in the image); its CPU time per 1,000 relayed tokens is read from /proc (every thread's schedstat) around each request
- when: ${new Date().toISOString().replace(/\.\d+Z$/, 'Z')}, ${REPS} repetitions per path after one warm-up each, ${f(secs, 0)} s in all
- machine: ${cpuName}, ${cpus().length} logical CPUs, ${physicalCores()} physical cores (llama-server threads); load average ${load0.map((x) => f(x, 2)).join(' ')} before, ${load1.map((x) => f(x, 2)).join(' ')} after
- llama.cpp: ${version || 'unknown'} (CPU build, ${info.isa?.description ?? ''})
- model: \`${model.split('/').pop()}\`, TinyLlama-1.1B shape, Q4_K_M, random weights (\`aios models synth --shape tinyllama-1.1b --quant Q4_K_M\`); ctx 2048, 1 slot
- connection errors retried: ${retries.length ? retries.join('; ') : 'none'}
${NOTE ? `- note: ${NOTE}\n` : ''}
| path | tokens/s: median (IQR, range) | first token, ms: median (IQR, range) | tokens per request | llama-server's own tokens/s (median) |
| --- | --- | --- | --- | --- |
${row('direct', 'direct (llama-server)')}
${row('http', 'aios-runtime HTTP')}
${row('grpc', 'aios-runtime gRPC')}
${row('bare', 'bare Node relay (floor)')}

Runtime against direct:

| path | tokens/s ratio (of medians) | paired ratio per repetition: median (range) | added first-token latency (of medians) | paired difference per repetition, ms: median (range) | daemon CPU per 1,000 tokens |
| --- | --- | --- | --- | --- | --- |
| HTTP | ${f(tpsRatio, 3)} | ${f(median(http.ratio), 3)} (${f(Math.min(...http.ratio), 3)}–${f(Math.max(...http.ratio), 3)}) | ${f(addedTtft, 1)} ms | ${f(median(http.addedTtft))} (${f(Math.min(...http.addedTtft))} – ${f(Math.max(...http.addedTtft))}) | ${f(perK('http'), 0)} ms |
| gRPC | ${f(grpcRatio, 3)} | ${f(median(grpcP.ratio), 3)} (${f(Math.min(...grpcP.ratio), 3)}–${f(Math.max(...grpcP.ratio), 3)}) | ${f(grpcTtft, 1)} ms | ${f(median(grpcP.addedTtft))} (${f(Math.min(...grpcP.addedTtft))} – ${f(Math.max(...grpcP.addedTtft))}) | ${f(perK('grpc'), 0)} ms |
| bare Node relay (floor) | ${f(bareRatio, 3)} | ${f(median(bareP.ratio), 3)} (${f(Math.min(...bareP.ratio), 3)}–${f(Math.max(...bareP.ratio), 3)}) | ${f(bareTtft, 1)} ms | ${f(median(bareP.addedTtft))} (${f(Math.min(...bareP.addedTtft))} – ${f(Math.max(...bareP.addedTtft))}) | ${f(perK('bare'), 0)} ms (its own process) |

(The daemon's CPU while a direct request ran, its idle cost: ${f(perK('direct'), 0)} ms per 1,000 tokens.)

Goal: HTTP and gRPC each ≥ 0.98 of direct tokens/s and ≤ 5 ms added first-token latency: **${pass ? 'met' : 'not met'}** in this run
(HTTP ${f(tpsRatio, 3)}, ${f(addedTtft, 1)} ms; gRPC ${f(grpcRatio, 3)}, ${f(grpcTtft, 1)} ms). The bare relay, which does nothing
but pass bytes, ${bareRatio >= 0.98 && bareTtft <= 5 ? 'meets it' : 'misses it too'} (${f(bareRatio, 3)}, ${f(bareTtft, 1)} ms) at ${f(perK('bare'), 0)} ms of CPU per 1,000 tokens; the daemon
spends ${perK('bare') ? f(perK('http') / perK('bare'), 2) : '–'}× that on HTTP and ${perK('bare') ? f(perK('grpc') / perK('bare'), 2) : '–'}× on gRPC.
${END}
`;
  mkdirSync(dirname(OUT), { recursive: true });
  const old = existsSync(OUT) ? readFileSync(OUT, 'utf8') : '# Benchmarks\n';
  const a = old.indexOf(START);
  const b = old.indexOf(END);
  writeFileSync(OUT, a >= 0 && b > a ? old.slice(0, a) + md.trimEnd() + old.slice(b + END.length) : `${old.trimEnd()}\n\n${md}`);
  process.stdout.write(md);
  log(`wrote ${OUT}`);
}

main().then(
  () => process.exit(0),
  (e: Error) => {
    process.stderr.write(`bench: ${e.stack ?? e.message}\n`);
    process.exit(1);
  },
);
