/**
 * The spend ledger (src/runtime/ledger.ts): records with checksums, a torn or corrupt last line
 * skipped with a warning and nothing earlier lost, orphaned reservations counted in full; and the
 * crash test: a real `aios runtime serve` (fake llama-server, mock Anthropic on 127.0.0.1) killed
 * with SIGKILL in the middle of a burst of strategic requests, then restarted: the month's total
 * rebuilt from the ledger is what was spent and never less than what the provider billed.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { appendFileSync, chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { Ledger, decode, encode, monthOf, totals, type SettleRecord } from '../../src/runtime/ledger.js';
import { connect, unary, waitReady } from '../../src/runtime/client.js';
import { costOf, tablePrices } from '../../src/runtime/prices.js';
import { freePort } from '../../src/util/net.js';
import { writeTestGguf } from '../gguf-writer.js';
import { REPO, cli, tmp } from '../helpers.js';
import { MockCloud } from '../mock-cloud.js';

const settle = (id: string, cost: number, outcome: SettleRecord['outcome'] = 'ok'): SettleRecord => ({ kind: 'settle', t: '2026-03-01T00:00:00.000Z', id, provider: 'claude', model: 'm', priority: 'default', tokens: { input: 1, output: 2, cacheRead: 0, cacheWrite: 0, reasoning: 0 }, cost_usd: cost, outcome, latency_ms: 5 });

describe('ledger records', () => {
  it('a record round-trips; a changed byte or a cut line does not decode', () => {
    const line = encode(settle('a', 0.5)).trimEnd();
    expect(decode(line)).toEqual(settle('a', 0.5));
    expect(decode(line.replace('0.5', '0.6'))).toBeUndefined();
    for (let n = 1; n < line.length; n++) expect(decode(line.slice(0, n))).toBeUndefined();
  });

  it('a corrupt last line is skipped with a warning; nothing earlier is lost; the next record starts on its own line', () => {
    const dir = tmp('aios-ledger-');
    const warnings: string[] = [];
    const l = new Ledger(dir, (s) => warnings.push(s));
    l.append('2026-03', { kind: 'reserve', t: '', id: 'a', provider: 'claude', model: 'm', priority: 'default', reserved_usd: 1 });
    l.append('2026-03', settle('a', 0.25));
    l.close();
    appendFileSync(join(dir, '2026-03.jsonl'), encode(settle('b', 9)).slice(0, 40)); // a write cut short
    const l2 = new Ledger(dir, (s) => warnings.push(s));
    expect(l2.read('2026-03')).toHaveLength(2);
    expect(warnings).toEqual([`ledger ${join(dir, '2026-03.jsonl')}: line 3 is not a complete record (a write cut short by a crash?); skipped`]);
    l2.append('2026-03', { kind: 'reserve', t: '', id: 'c', provider: 'claude', model: 'm', priority: 'default', reserved_usd: 0.5 });
    const recs = l2.read('2026-03');
    expect(recs.map((r) => r.id)).toEqual(['a', 'a', 'c']);
    // An open reservation counts in full until settled; settleOrphans writes that down.
    expect(totals(recs).get('claude')).toMatchObject({ spentUsd: 0.75, reservedUsd: 0.5, requests: 1 });
    expect(l2.settleOrphans('2026-03', () => 0)).toBe(1);
    expect(totals(l2.read('2026-03')).get('claude')).toMatchObject({ spentUsd: 0.75, reservedUsd: 0, requests: 2, failures: 1 });
    expect(readFileSync(join(dir, '2026-03.jsonl'), 'utf8').split('\n').filter(Boolean)).toHaveLength(5);
    l2.close();
  });

  it('months are UTC calendar months', () => {
    expect(monthOf(Date.parse('2026-01-31T23:59:59Z'))).toBe('2026-01');
    expect(monthOf(Date.parse('2026-02-01T00:00:00Z'))).toBe('2026-02');
  });
});

describe('crash: the daemon killed mid-burst', () => {
  const dir = tmp('aios-crash-');
  const KEY = `sk-ant-api03-TESTKEY${randomBytes(12).toString('hex')}`;
  const mock = new MockCloud('anthropic', KEY);
  const procs: ChildProcess[] = [];
  afterAll(async () => {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    await mock.stop();
  });

  it('month totals rebuilt from the ledger after SIGKILL equal what was spent (never less than the provider billed); a torn last write is skipped', async () => {
    await mock.start();
    // Each call stays out at the provider for 100 ms, so the kill below finds some out.
    mock.reset({ tokenDelayMs: 10, outputTokens: 20, delayMs: 100 });
    writeTestGguf(join(dir, 'op.gguf'));
    mkdirSync(join(dir, 'creds'));
    writeFileSync(join(dir, 'creds', 'claude'), KEY, { mode: 0o600 });
    // A stand-in for llama-server: /health, an "OK" completion, /metrics; it leaves when its parent dies.
    const fake = join(dir, 'fake-llama-server');
    writeFileSync(
      fake,
      `#!${process.execPath}
const http = require('node:http');
const port = Number(process.argv[process.argv.indexOf('--port') + 1]);
const ppid = process.ppid;
setInterval(() => { if (process.ppid !== ppid) process.exit(0); }, 100);
http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    if (req.url === '/health') return res.end('{"status":"ok"}');
    if (req.url === '/metrics') return res.end('');
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ choices: [{ message: { content: 'OK' } }], usage: { prompt_tokens: 1, completion_tokens: 1 } }));
  });
}).listen(port, '127.0.0.1');
`,
    );
    chmodSync(fake, 0o755);
    const ledgerDir = join(dir, 'ledger');
    const cfg = join(dir, 'config.toml');
    const write = (port: number) =>
      writeFileSync(
        cfg,
        // sandbox = "off": the stand-in speaks TCP and lives in this test's temp dir, which a sandbox would not show it.
        `[runtime]\nllama_server = "${fake}"\nsocket = ""\nsandbox = "off"\nlisten = "127.0.0.1:${port}"\n\n[models]\nmodel_dir = "${dir}"\n[models.operational]\nname = "op.gguf"\nctx_size = 256\n\n` +
          `[api]\nledger_dir = "${ledgerDir}"\n[api.claude]\nprovider = "anthropic"\nmodel = "claude-sonnet-4-5-20250929"\nbase_url = "${mock.url}"\nmonthly_budget_usd = 5.0\nmax_tokens = 32\n`,
      );
    const start = async () => {
      const port = await freePort();
      write(port);
      let err = '';
      const p = spawn(process.execPath, [join(REPO, 'bin/aios.js'), 'runtime', 'serve', '--config', cfg], { env: { ...process.env, CREDENTIALS_DIRECTORY: join(dir, 'creds') }, stdio: ['ignore', 'ignore', 'pipe'] });
      p.stderr!.on('data', (d: Buffer) => (err += d.toString()));
      procs.push(p);
      const c = connect(`127.0.0.1:${port}`);
      if (!(await waitReady(c, 30_000))) throw new Error(`the daemon did not become ready: ${err}`);
      return { p, c, port, log: () => err };
    };

    const a = await start();
    // A steady burst: 12 requests at a time, each replaced when it ends, until the ledger has grown.
    let answered = 0;
    let stop = false;
    const file = join(ledgerDir, `${monthOf(Date.now())}.jsonl`);
    const lines = () => {
      try {
        return readFileSync(file, 'utf8').split('\n').filter(Boolean).length;
      } catch {
        return 0;
      }
    };
    const failures: string[] = [];
    const worker = async () => {
      while (!stop) {
        try {
          await unary(a.c, 'Infer', { prompt: 'plan the release', intelligence_level: 'strategic' }, 30_000);
          answered++;
        } catch (e) {
          // After the kill every call fails: that ends the worker. Before it (a slow, busy machine:
          // a deadline), the burst goes on.
          if (stop) return;
          failures.push((e as Error).message);
          await new Promise((r) => setTimeout(r, 50));
        }
      }
    };
    const workers = Array.from({ length: 12 }, worker);
    const until = Date.now() + 45_000;
    // Killed with calls out at the provider (a slow, busy machine can have every worker between calls
    // for a moment): those are the ones the ledger must count as lost.
    const out = () => mock.calls.filter((x) => !x.completed).length;
    while (lines() < 60 || out() < 2) {
      if (Date.now() > until) throw new Error(`the ledger did not reach 60 lines with calls out in 45 s (${lines()} lines, ${answered} answered, failures: ${failures.slice(0, 3).join('; ')}); daemon log: ${a.log().slice(-500)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    a.p.kill('SIGKILL');
    stop = true;
    await Promise.all(workers);
    // It may have exited while the workers wound down: 'exit' then fired already.
    if (a.p.exitCode === null && a.p.signalCode === null) await new Promise((r) => a.p.once('exit', r));
    a.c.close();
    await new Promise((r) => setTimeout(r, 300)); // the mock finishes or drops the calls that were out

    // A power cut in the middle of the next write: half a record, no newline.
    const before = readFileSync(file, 'utf8');
    appendFileSync(file, encode(settle('torn', 123)).slice(0, 57));

    const b = await start();
    const spend = (await unary(b.c, 'Spend', {})).providers[0]!;
    const recs = before
      .split('\n')
      .filter(Boolean)
      .map((l) => decode(l));
    expect(recs.every(Boolean)).toBe(true); // every record written before the kill is intact
    const after = readFileSync(file, 'utf8').split('\n').filter(Boolean);
    const records = after.map((l) => decode(l)).filter((r) => r !== undefined);
    expect(after.length - records.length).toBe(1); // only the torn line is skipped
    const sumSettled = records.filter((r): r is SettleRecord => r.kind === 'settle').reduce((n, r) => n + r.cost_usd, 0);
    const lost = records.filter((r): r is SettleRecord => r.kind === 'settle' && r.outcome === 'lost');
    const ok = records.filter((r): r is SettleRecord => r.kind === 'settle' && r.outcome === 'ok');
    // The rebuilt total is the ledger's: settled calls + the calls that were out, at their reservation.
    expect(spend.spent_usd).toBeCloseTo(sumSettled, 12);
    expect(spend.reserved_usd).toBe(0);
    // Never less than what the provider billed; every answer a client got was on disk before it was sent.
    const billed = mock.calls.filter((x) => x.completed).reduce((n, x) => n + costOf(x.usage!, tablePrices('claude-sonnet-4-5-20250929')!), 0);
    expect(spend.spent_usd).toBeGreaterThanOrEqual(billed - 1e-12);
    expect(ok.length).toBeGreaterThanOrEqual(answered);
    expect(ok.reduce((n, r) => n + r.cost_usd, 0)).toBeLessThanOrEqual(billed + 1e-12);
    expect(spend.spent_usd).toBeLessThanOrEqual(5);
    expect(b.log()).toMatch(/line \d+ is not a complete record \(a write cut short by a crash\?\); skipped/);
    expect(lost.length).toBeGreaterThan(0); // the kill came with calls out (see above)
    expect(b.log()).toMatch(new RegExp(`ledger: ${lost.length} call\\(s\\) were out when the runtime last stopped`));
    expect(a.log() + b.log()).not.toContain(KEY);
    // `aios runtime spend` and `aios ps` say the same (and nothing of the key).
    const json = await cli(['runtime', 'spend', '-a', `127.0.0.1:${b.port}`, '--json']);
    expect(json.exitCode).toBe(0);
    const r = JSON.parse(json.stdout) as { month: string; providers: { name: string; spent_usd: number; requests: number }[] };
    expect(r.month).toBe(monthOf(Date.now()));
    expect(r.providers[0]).toMatchObject({ name: 'claude', requests: spend.requests });
    expect(r.providers[0]!.spent_usd).toBeCloseTo(spend.spent_usd, 12);
    const table = await cli(['runtime', 'spend', '-a', `127.0.0.1:${b.port}`]);
    expect(table.stdout).toMatch(new RegExp(`^month ${monthOf(Date.now())} \\(UTC\\), ledger ${ledgerDir}\\nPROVIDER +MODEL +SPENT +BUDGET +REMAINING +REQUESTS +FAILED +IN +OUT +CACHE R/W +REASONING +NOTE\\nclaude +claude-sonnet-4-5-20250929 +\\$\\d+\\.\\d\\d +\\$5\\.00 +\\$\\d+\\.\\d\\d +${spend.requests} `));
    const ps = await cli(['ps', '-a', `127.0.0.1:${b.port}`]);
    expect(ps.stdout).toMatch(/strategic layer, \d{4}-\d{2}:\nPROVIDER +MODEL +SPENT\/BUDGET +REQUESTS +STATE\nclaude \(anthropic\) +claude-sonnet-4-5-20250929 +\$\d+\.\d\d\/\$5\.00 /);
    expect(json.stdout + table.stdout + ps.stdout + ps.stderr).not.toContain(KEY);
    b.p.kill('SIGTERM');
    await new Promise((r) => b.p.once('exit', r));
    b.c.close();
  }, 150_000);
});
