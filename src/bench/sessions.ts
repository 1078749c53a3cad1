/**
 * `npm run bench:sessions`: a long conversation's next turn after a daemon restart, resumed from its
 * saved session (KV state restored, only the new turn evaluated) vs recomputed (the whole
 * conversation sent without a session: llama-server evaluates every token). Each repetition
 * restarts the daemon (SIGTERM, a new process, as `systemctl restart` does) before each of the two
 * requests, in an order that alternates, so both start from a freshly loaded model with an empty
 * slot. Both go through the HTTP API, streamed; first-token latency = request sent → first content
 * received. Each resumed request uses its own copy of the same saved session, so every repetition
 * resumes the same conversation. Writes its section of docs/benchmarks.md (between the
 * sessions-bench markers).
 *
 *   npm run bench:sessions -- [--reps 5] [--model file.gguf] [--note "…"] [--out docs/benchmarks.md]
 */
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { stringify } from 'smol-toml';
import { buildLlamaStage } from '../build/index.js';
import { synthModel } from '../models/synth.js';
import { connect, waitReady } from '../runtime/client.js';
import { freePort } from '../util/net.js';
import { defaultCacheDir, PKG_ROOT } from '../util/paths.js';
import { runBench, writeBenchSection } from './common.js';
import { median } from './stats.js';

const arg = (name: string, def: string) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && process.argv[i + 1] !== undefined ? process.argv[i + 1]! : def;
};
const REPS = Number(arg('reps', '5'));
const OUT = arg('out', join(PKG_ROOT, 'docs/benchmarks.md'));
const NOTE = arg('note', '');
const DAEMON = join(PKG_ROOT, 'dist/runtime/main.js');
const START = '<!-- sessions-bench:start -->';
const END = '<!-- sessions-bench:end -->';
const log = (s: string) => process.stderr.write(`bench: ${s}\n`);
const f = (x: number, d = 0) => x.toFixed(d);

/** ~1,350 tokens of text (the llama SPM vocabulary: about 1.3 tokens per word here). */
const LONG = Array.from({ length: 40 }, (_, i) => `Note ${i + 1}: the committee reviewed the harbour survey, the grain prices, the state of the northern road and the letters from the mill owners, and agreed to meet again after the spring market.`).join('\n');
const TURNS = ['What did the committee decide about the road?', 'And the mill owners?'];
const NEXT = 'Summarise the whole discussion in one sentence.';

interface Ttft {
  ms: number;
  cacheN: number;
  promptN: number;
  state: string;
}

async function firstToken(port: number, body: Record<string, unknown>, headers: Record<string, string> = {}): Promise<Ttft> {
  const t0 = performance.now();
  const r = await fetch(`http://127.0.0.1:${port}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ ...body, stream: true, max_tokens: 8, temperature: 0 }) });
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
  let first = 0;
  let text = '';
  const dec = new TextDecoder();
  for await (const c of r.body as unknown as AsyncIterable<Uint8Array>) {
    text += dec.decode(c, { stream: true });
    if (!first && /"content":"[^"]/.test(text)) first = performance.now() - t0;
  }
  const t = text.split('\n').filter((l) => l.includes('"timings"')).map((l) => JSON.parse(l.slice(6)) as { timings: { cache_n: number; prompt_n: number } }).pop();
  return { ms: first || performance.now() - t0, cacheN: t?.timings.cache_n ?? -1, promptN: t?.timings.prompt_n ?? -1, state: r.headers.get('x-aios-session-state') ?? '' };
}

async function main(): Promise<void> {
  const llama = await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
  const model = arg('model', join(defaultCacheDir(), 'bench', 'tinyllama-1.1b-Q4_K_M.gguf'));
  if (!existsSync(model)) {
    log(`synthesizing ${model} (TinyLlama-1.1B shape, Q4_K_M; about a minute)`);
    mkdirSync(dirname(model), { recursive: true });
    await synthModel({ shape: 'tinyllama-1.1b', quant: 'Q4_K_M', out: model, tools: { ggufPy: join(llama.shareDir, 'gguf-py'), vocab: join(llama.shareDir, 'ggml-vocab-llama-spm.gguf'), quantize: join(llama.binDir, 'llama-quantize') } });
  }
  const dir = mkdtempSync(join(tmpdir(), 'aios-bench-sessions-'));
  const sessions = join(dir, 'sessions');
  const httpPort = await freePort();
  const sock = join(dir, 'runtime.sock');
  const cfg = join(dir, 'config.toml');
  writeFileSync(
    cfg,
    stringify({
      runtime: { llama_server: join(llama.binDir, 'llama-server'), socket: sock, listen: '', http_listen: `127.0.0.1:${httpPort}`, health_interval: '10s', load_timeout: '300s', request_timeout: '600s', sessions_dir: sessions },
      models: { model_dir: dirname(model), operational: { name: model.split('/').pop()!, parallel: 1, ctx_size: 2048 } },
    }),
  );
  let proc: ChildProcess | undefined;
  let daemonLog = '';
  const start = async () => {
    proc = spawn(process.execPath, [DAEMON, '--config', cfg], { stdio: ['ignore', 'ignore', 'pipe'] });
    proc.stderr!.on('data', (d: Buffer) => (daemonLog = (daemonLog + d.toString()).slice(-8000)));
    const c = connect(`unix:${sock}`);
    const ok = await waitReady(c, 300_000);
    c.close();
    if (!ok) throw new Error(`the daemon did not become ready: ${daemonLog}`);
  };
  const stop = async () => {
    const p = proc;
    if (!p || p.exitCode !== null) return;
    const gone = new Promise((r) => p.once('exit', r));
    p.kill('SIGTERM');
    await gone;
  };
  const load0 = loadavg();
  const t0 = Date.now();
  const resumed: Ttft[] = [];
  const recomputed: Ttft[] = [];
  let sha = '';
  let conversation: { role: string; content: string }[] = [];
  let tokens = 0;
  try {
    await start();
    // The conversation: a long first turn and two short ones, saved as session "base".
    const first = await firstToken(httpPort, { session: 'base', messages: [{ role: 'user', content: LONG }] });
    log(`first turn: ${first.promptN} prompt tokens evaluated in ${f(first.ms)} ms (to the first token)`);
    for (const t of TURNS) await firstToken(httpPort, { session: 'base', messages: [{ role: 'user', content: t }] });
    sha = readdirSync(sessions).find((d) => /^[0-9a-f]{64}$/.test(d))!;
    const rec = JSON.parse(readFileSync(join(sessions, sha, 'base.json'), 'utf8')) as { messages: { role: string; content: string }[]; kv: { tokens: number } };
    conversation = rec.messages;
    tokens = rec.kv.tokens;
    log(`conversation: ${conversation.length} messages, ${tokens} tokens in the saved state`);
    for (let r = 0; r < REPS; r++) {
      // A copy of the saved session for this repetition, so every resumed request continues the same conversation.
      const id = `rep${r}`;
      copyFileSync(join(sessions, sha, 'base'), join(sessions, sha, id));
      writeFileSync(join(sessions, sha, `${id}.json`), JSON.stringify({ ...rec, id }), { mode: 0o600 });
      const order = r % 2 ? ['recomputed', 'resumed'] : ['resumed', 'recomputed'];
      for (const what of order) {
        await stop();
        await start();
        if (what === 'resumed') resumed.push(await firstToken(httpPort, { messages: [{ role: 'user', content: NEXT }] }, { 'x-session': id }));
        else recomputed.push(await firstToken(httpPort, { messages: [...conversation, { role: 'user', content: NEXT }] }));
      }
      log(`rep ${r + 1}/${REPS}: resumed ${f(resumed.at(-1)!.ms)} ms (${resumed.at(-1)!.state}, cache_n ${resumed.at(-1)!.cacheN}, prompt_n ${resumed.at(-1)!.promptN}); recomputed ${f(recomputed.at(-1)!.ms)} ms (cache_n ${recomputed.at(-1)!.cacheN}, prompt_n ${recomputed.at(-1)!.promptN})`);
    }
  } finally {
    await stop();
  }
  const load1 = loadavg();
  const rs = resumed.map((x) => x.ms);
  const cs = recomputed.map((x) => x.ms);
  const ratios = rs.map((x, i) => cs[i]! / x);
  const ratio = median(cs) / median(rs);
  const hits = resumed.filter((x) => x.state === 'restored' && x.cacheN >= tokens * 0.9 - 64).length;
  const section = `${START}
## Saved sessions: the next turn of a long conversation after a daemon restart, resumed vs recomputed

Produced by \`npm run bench:sessions\` (\`src/bench/sessions.ts\`), which replaces this section. A
conversation (a ${tokens}-token saved state: one long first turn and two short ones) is kept as a
session; each repetition restarts the daemon (SIGTERM, a new process, as \`systemctl restart\`
does) before each of two requests for the same next turn, in alternating order: **resumed** (the
session: its KV state restored into the slot, the client sends only the new turn) and
**recomputed** (the whole conversation sent without a session: llama-server evaluates every
token). Both stream through the HTTP API; first-token latency = request sent → first content
received. Each resumed request uses its own copy of the same saved session.

- when: ${new Date(t0).toISOString().replace(/\.\d+Z$/, 'Z')}, ${REPS} repetitions, ${f((Date.now() - t0) / 1000)} s in all
- machine: ${cpus()[0]?.model.trim() ?? '?'}, ${cpus().length} logical CPUs, **a shared 2-core machine** (other engineers' jobs may run); load average ${load0.map((x) => x.toFixed(2)).join(' ')} before, ${load1.map((x) => x.toFixed(2)).join(' ')} after
- model: \`${model.split('/').pop()}\`, TinyLlama-1.1B shape, Q4_K_M, random weights; ctx 2048, 1 slot; state file ${f(Number(readFileSync(join(sessions, sha, 'base')).length) / 1048576, 1)} MiB
- llama-server's own figures per request (timings): resumed cache_n ${resumed.map((x) => x.cacheN).join(', ')} / prompt_n ${resumed.map((x) => x.promptN).join(', ')}; recomputed cache_n ${recomputed.map((x) => x.cacheN).join(', ')} / prompt_n ${recomputed.map((x) => x.promptN).join(', ')}; restores used (state "restored", cache_n ≥ 90 % of the state): ${hits} of ${REPS}
${NOTE ? `- note: ${NOTE}\n` : ''}
| next turn after a restart | first token, ms: median (range) | per repetition, ms |
| --- | --- | --- |
| resumed (session) | ${f(median(rs))} (${f(Math.min(...rs))}–${f(Math.max(...rs))}) | ${rs.map((x) => f(x)).join(', ')} |
| recomputed (whole prompt) | ${f(median(cs))} (${f(Math.min(...cs))}–${f(Math.max(...cs))}) | ${cs.map((x) => f(x)).join(', ')} |

Resumed is **${f(ratio, 1)}×** faster to the first token (ratio of medians; per repetition ${ratios.map((x) => f(x, 1)).join(', ')}×). Goal ≥ 10×: **${ratio >= 10 ? 'met' : 'not met'}** in this run.
${END}`;
  writeBenchSection(OUT, START, END, section);
}

runBench(main);
