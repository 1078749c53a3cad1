/**
 * Added latency of the strategic layer's gateway: the same mock Anthropic server (test/mock-cloud.ts,
 * on 127.0.0.1) called three ways in one run — **direct** (the official @anthropic-ai/sdk client),
 * **http** (the official openai client → aios-runtime's /v1/chat/completions → the gateway → the
 * same SDK) and **grpc** (Infer, intelligence_level "strategic") — one request per path per
 * repetition, the order rotating every repetition, so drift hits the paths alike. Run with
 * `node scripts/bench-cloud.mjs [reps]`; it replaces the cloud-bench section of docs/benchmarks.md.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { closeSync, fdatasyncSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { RuntimeConfigSchema } from '../src/runtime/config.js';
import { startDaemon } from '../src/runtime/daemon.js';
import { connect, unary } from '../src/runtime/client.js';
import { FakeLauncher } from './fake-child.js';
import { writeTestGguf } from './gguf-writer.js';
import { MockCloud } from './mock-cloud.js';

const reps = Number(process.argv[2] ?? 200);
const KEY = 'sk-ant-bench-0000000000000000000000000000';
const dir = mkdtempSync(join(tmpdir(), 'aios-cloud-bench-'));
// The ledger on the disk the image would use (not tmpfs): its fdatasync is part of the gateway's cost.
const ledgerDir = mkdtempSync(join('/var/tmp', 'aios-cloud-bench-ledger-'));
writeTestGguf(join(dir, 'op.gguf'));
mkdirSync(join(dir, 'creds'));
writeFileSync(join(dir, 'creds', 'claude'), KEY, { mode: 0o600 });

const mock = await new MockCloud('anthropic', KEY).start();
mock.reset({ outputTokens: 16 });
const config = RuntimeConfigSchema.parse({
  runtime: { llama_server: '/nonexistent', socket: '', listen: '127.0.0.1:0', http_listen: '127.0.0.1:0' },
  system: { log_level: 'warn' },
  models: { model_dir: dir, operational: { name: 'op.gguf', ctx_size: 256 } },
  api: { ledger_dir: ledgerDir, claude: { provider: 'anthropic', model: 'claude-sonnet-4-5-20250929', base_url: mock.url, monthly_budget_usd: 1000, max_tokens: 64 } },
});
const d = await startDaemon(config, { log: () => {}, service: { launcher: new FakeLauncher(), cloud: { env: { CREDENTIALS_DIRECTORY: join(dir, 'creds') } } } });
const grpc = connect(`127.0.0.1:${d.listening.tcpPort}`);
const direct = new Anthropic({ apiKey: KEY, baseURL: mock.url, maxRetries: 0 });
const http = new OpenAI({ baseURL: `http://127.0.0.1:${d.http!.port}/v1`, apiKey: 'unused', maxRetries: 0 });
const prompt = 'Plan the migration of the database in three steps.';

const paths = {
  direct: () => direct.messages.create({ model: 'claude-sonnet-4-5-20250929', max_tokens: 64, messages: [{ role: 'user', content: prompt }] }),
  http: () => http.chat.completions.create({ model: 'strategic', messages: [{ role: 'user', content: prompt }] }),
  grpc: () => unary(grpc, 'Infer', { prompt, intelligence_level: 'strategic' }),
};
type Path = keyof typeof paths;
const names = Object.keys(paths) as Path[];
const ms: Record<Path, number[]> = { direct: [], http: [], grpc: [] };
for (const p of names) for (let i = 0; i < 10; i++) await paths[p](); // warm-up: connections, JIT
const load0 = loadavg();
const t0 = Date.now();
for (let r = 0; r < reps; r++) {
  for (let k = 0; k < names.length; k++) {
    const p = names[(r + k) % names.length]!;
    const s = performance.now();
    await paths[p]();
    ms[p].push(performance.now() - s);
  }
}
const seconds = (Date.now() - t0) / 1000;
const load1 = loadavg();
grpc.close();
await d.stop();
await mock.stop();

// What one durable ledger line costs on this disk (a call writes two: reserve and settle).
const sync: number[] = [];
const probe = openSync(join(ledgerDir, 'fsync-probe'), 'a');
for (let i = 0; i < 100; i++) {
  const s = performance.now();
  writeSync(probe, `${'x'.repeat(300)}\n`);
  fdatasyncSync(probe);
  sync.push(performance.now() - s);
}
closeSync(probe);
rmSync(ledgerDir, { recursive: true, force: true });
rmSync(dir, { recursive: true, force: true });

const q = (xs: number[], f: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil(f * s.length) - 1))]!;
};
const f = (n: number) => n.toFixed(2);
const diff = (p: Path) => ms[p].map((x, i) => x - ms.direct[i]!);
const rows = names.map((p) => `| ${p} | ${f(q(ms[p], 0.5))} | ${f(q(ms[p], 0.99))} | ${p === 'direct' ? '–' : f(q(diff(p), 0.5))} | ${p === 'direct' ? '–' : f(q(diff(p), 0.99))} |`);
const when = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const section = `<!-- cloud-bench:start -->
## Strategic layer: added latency of the cloud gateway vs calling the provider directly

Produced by \`npm run build && node scripts/bench-cloud.mjs ${reps}\` (\`test/bench-cloud.ts\`), which replaces this section.
One mock Anthropic server on 127.0.0.1 (\`test/mock-cloud.ts\`: the Messages API, not streamed, 16
output tokens, no artificial delay, so the figures are the gateway's own cost) is called three ways in
one run: **direct** (the official \`@anthropic-ai/sdk\` client), **http** (the official \`openai\`
client → aios-runtime's \`/v1/chat/completions\` with \`model: "strategic"\` → the gateway → the same
SDK) and **grpc** (\`Infer\`, \`intelligence_level = "strategic"\`). One request per path per
repetition, in an order that rotates every repetition. The daemon runs in the benchmark's process
(\`startDaemon\`), with the spend ledger on /var/tmp (a disk, not tmpfs): each call's two
fdatasync'ed ledger records are part of what is measured.

- when: ${when}, ${reps} repetitions per path after 10 warm-ups each, ${seconds.toFixed(0)} s in all
- machine: ${cpus()[0]?.model.trim() ?? '?'}, ${cpus().length} logical CPUs; load average ${load0.map((x) => x.toFixed(2)).join(' ')} before, ${load1.map((x) => x.toFixed(2)).join(' ')} after

- one ledger line written and fdatasync'ed on that disk, measured in the same run: p50 ${f(q(sync, 0.5))} ms, p99 ${f(q(sync, 0.99))} ms; a call writes two (reserve before, settle after): the added latency is of that order
- the machine is shared (2 cores; the load averages above include other work), so the p99 figures are mostly scheduling noise

| path | latency p50, ms | p99, ms | added vs direct (paired per repetition) p50, ms | p99, ms |
| --- | --- | --- | --- | --- |
${rows.join('\n')}
<!-- cloud-bench:end -->`;
const docs = join(import.meta.dirname ?? '.', '..', 'docs', 'benchmarks.md');
const file = process.env.AIOS_BENCH_DOCS ?? docs;
const text = readFileSync(file, 'utf8');
const re = /<!-- cloud-bench:start -->[\s\S]*?<!-- cloud-bench:end -->/;
writeFileSync(file, re.test(text) ? text.replace(re, section) : text.replace(/\n## `aios bench`/, `\n${section}\n\n## \`aios bench\``));
console.log(section);
