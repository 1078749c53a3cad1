/**
 * `aios top` end to end: the compiled CLI in a real terminal (tmux: send-keys, capture-pane) against
 * a real aios-runtime daemon (its own process, so that it can be stopped and started again) with a
 * synthesized tiny model and a real llama-server. Assertions are on the captured text.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runtimeFixture } from './runtime-fixture.js';
import { streamInfer, unary, type RuntimeClient } from '../../src/runtime/client.js';
import { RuntimeProcess } from './runtime-process.js';
import { REPO, cli, tmp } from '../helpers.js';
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { bundleRuntime } from '../../src/build/runtime-bundle.js';
import { bundleCli, installCliLauncher } from '../../src/build/cli-bundle.js';
import { parseCpuList } from '../../src/top/machine.js';

const dir = tmp('aios-top-');
const sock = join(dir, 'runtime.sock');
const address = `unix:${sock}`;
const config = join(dir, 'config.toml');
const TMUX = ['-L', `aios-top-test-${process.pid}`, '-f', '/dev/null'];
const rt = new RuntimeProcess(config, address);
let client: RuntimeClient;

const tmux = (...args: string[]) => execFileSync('tmux', [...TMUX, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const capture = (session = 'top', escapes = false) => tmux('capture-pane', '-p', ...(escapes ? ['-e'] : []), '-t', session);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Captures until `pred` holds (returns that capture) or fails with the last one. */
async function screenUntil(pred: (s: string) => boolean, what: string, timeoutMs = 20_000, session = 'top'): Promise<string> {
  const end = Date.now() + timeoutMs;
  let s = '';
  while (Date.now() < end) {
    s = capture(session);
    if (pred(s)) return s;
    await sleep(200);
  }
  throw new Error(`screen never showed ${what}; last capture:\n${s}`);
}
const row = (s: string, name: string) => s.split('\n').find((l) => new RegExp(`^[> ] ${name} `).test(l)) ?? '';

async function startDaemon(): Promise<void> {
  client = await rt.start();
}
const stopDaemon = () => rt.stop();

describe('aios top in a terminal', () => {
  beforeAll(async () => {
    const fx = await runtimeFixture(dir);
    writeFileSync(
      config,
      [
        '[runtime]',
        `llama_server = "${fx.llamaServer}"`,
        `socket = "${sock}"`,
        'listen = ""',
        'health_interval = "1s"',
        'load_timeout = "60s"',
        '[models]',
        `model_dir = "${dir}"`,
        '[models.operational]',
        'name = "tiny.gguf"',
        'parallel = 1',
        // 2048 (the synthesized model's training context): room for the long generation below
        'ctx_size = 2048',
        '',
      ].join('\n'),
    );
    await startDaemon();
    // the panel at 100×30 first, colours on (tmux is a colour terminal)
    tmux('new-session', '-d', '-s', 'top', '-x', '100', '-y', '30', '-e', 'NO_COLOR=', `node ${join(REPO, 'bin/aios.js')} top -a ${address} -n 0.5`);
  }, 20 * 60_000);

  afterAll(async () => {
    try {
      tmux('kill-server');
    } catch {
      /* already gone */
    }
    await rt.close();
  });

  it('shows the model, its state and the machine', async () => {
    // (the first frame has no CPU figures yet: they need two samples)
    const s = await screenUntil((x) => /ready/.test(row(x, 'tiny')) && /^cpu {3}0\[[#.]{5}\] *\d+%/m.test(x), 'tiny ready and the CPU figures');
    expect(s.split('\n')[0]).toMatch(new RegExp(`^aios top ${address.replace(/[/.]/g, '\\$&')} +SERVING +up \\S+ +1 ready +0 waiting`));
    expect(row(s, 'tiny')).toMatch(/^> tiny +oper +ready +0\/1 +0\/0\/0\/0 .* pinned$/);
    expect(s).toMatch(/^mem {2}\[[#.]+\] \S+ used \/ \S+ budget \/ \S+ total, \S+ available$/m);
    expect(s).toMatch(/^cpu {3}0\[[#.]{5}\] *\d+%/m);
    // the cores tiny's llama-server may run on (its Cpus_allowed_list, as ListModels reports it) are marked, the others not
    const cpus = (await unary(client, 'ListModels', {})).models[0]!.cpus;
    expect(cpus).toMatch(/^\d+(-\d+)?(,\d+(-\d+)?)*$/);
    const marked = new Set(parseCpuList(cpus));
    const cpuRows = s.split('\n').filter((l) => /^(cpu|    ) +\d+\[/.test(l)).join(' ');
    for (const m of cpuRows.matchAll(/(\d+)\[[#.]{5}\] *\d+%(\*?)/g)) expect([m[1], m[2]]).toEqual([m[1], marked.has(Number(m[1])) ? '*' : '']);
    expect(s).toMatch(/\*: model cores$/m);
    expect(s).toMatch(/^load \d+\.\d\d \d+\.\d\d \d+\.\d\d/m);
    expect(s).toMatch(/^l load {2}u unload {2}r restart {2}p pin {2}\/ filter {2}\? help {2}q quit/m);
    // colours: the state is green, the chosen row inverse
    expect(capture('top', true)).toMatch(/\x1b\[(\d+;)*32m/);
  });

  it('u unloads the model (asks first; the runtime confirms), l loads it back', async () => {
    tmux('send-keys', '-t', 'top', 'u');
    await screenUntil((x) => x.includes('unload tiny? requests on it fail (y/n)'), 'the unload question');
    tmux('send-keys', '-t', 'top', 'y');
    let s = await screenUntil((x) => x.includes('unloaded tiny (runtime confirmed)') && /unloaded/.test(row(x, 'tiny')), 'tiny unloaded', 30_000);
    expect(row(s, 'tiny')).toMatch(/^> tiny +oper +unloaded /);
    expect((await unary(client, 'ListModels', {})).models).toEqual([]);

    tmux('send-keys', '-t', 'top', 'l');
    await screenUntil((x) => /^load model: tiny_/m.test(x), 'the load prompt with the chosen name');
    tmux('send-keys', '-t', 'top', 'Enter');
    s = await screenUntil((x) => /loaded tiny: ready \(pid \d+\)/.test(x) && /ready/.test(row(x, 'tiny')), 'tiny loaded again', 60_000);
    expect((await unary(client, 'ListModels', {})).models.map((m) => [m.name, m.state])).toEqual([['tiny', 'ready']]);
  });

  it('a request running while the panel is open shows in slots, tokens/s and TTFT', async () => {
    // one long streamed generation from a quiet start: tokens/s rises while it runs (slot 1/1), not only when it ends.
    // 1800 tokens of the tiny model take ~0.9 s here (400 took ~0.17 s, shorter than the panel's 0.5 s refresh: a flake)
    const tps = (x: string, slots: string) => Number(new RegExp(` ${slots}/1 +\\S+ +(\\d+(?:\\.\\d)?) `).exec(row(x, 'tiny'))?.[1] ?? NaN);
    await screenUntil((x) => tps(x, '0') === 0, 'tokens/s at 0.0 before the generation', 30_000);
    let ended = false;
    const one = streamInfer(client, { prompt: 'Write a very long story about the sea.', max_tokens: 1800, temperature: 1 }, () => {}).finally(() => (ended = true));
    const running = await screenUntil((x) => tps(x, '1') > 0, 'tokens/s above 0 while the generation runs (1/1)', 30_000);
    expect(row(running, 'tiny')).toMatch(/ 1\/1 /);
    await one;
    expect(ended).toBe(true);
    let stop = false;
    const load = (async () => {
      while (!stop) await streamInfer(client, { prompt: 'Tell me a long story about a lighthouse.', max_tokens: 400, temperature: 1 }, () => {}).catch(() => sleep(100));
    })();
    try {
      const busy = await screenUntil((x) => /^> tiny +oper +ready +1\/1 /m.test(x), 'the slot busy (1/1)', 30_000);
      expect(row(busy, 'tiny')).toMatch(/ 1\/1 /);
      const rate = await screenUntil((x) => /^> tiny +oper +ready +[01]\/1 +\S+ +(\d+(\.\d)?) +(\d+ms|\d+(\.\d)?s) /m.test(x) && Number(/ [01]\/1 +\S+ +(\d+(?:\.\d)?) /.exec(row(x, 'tiny'))?.[1]) > 0, 'tokens/s above 0 and a TTFT', 60_000);
      expect(row(rate, 'tiny')).toMatch(/ \d+(\.\d)? +\d+(ms|\.\ds|s) /); // (one decimal below 100 tokens/s, none from 100)
    } finally {
      stop = true;
      await load;
    }
  });

  it('stays readable when the terminal is resized to 80×24', async () => {
    tmux('resize-window', '-t', 'top', '-x', '80', '-y', '24');
    const s = await screenUntil((x) => x.split('\n').length >= 24 && /^ {2}MODEL +LEVEL STATE +SLOTS +QUEUE +TOK\/S +TTFT RAM est\/meas +IDLE$/m.test(x) && / 0\/1 /.test(row(x, 'tiny')), 'the 80-column table, the request over');
    const lines = s.split('\n');
    for (const l of lines) expect(l.length).toBeLessThanOrEqual(80);
    expect(lines[0]).toMatch(/^aios top \S+ +SERVING/); // (a long socket path is shortened from the left)
    expect(row(s, 'tiny')).toMatch(/^> tiny +oper +ready +0\/1 .* pinned$/);
    expect(s).toMatch(/^mem {2}\[/m);
    expect(lines[23]).toMatch(/^l load {2}u unload {2}r restart {2}p pin {2}\/ filter {2}\? help {2}q quit/);
    // help and back
    tmux('send-keys', '-t', 'top', '?');
    await screenUntil((x) => x.includes('aios top: a live view of aios-runtime, and its controls'), 'the help');
    tmux('send-keys', '-t', 'top', 'x');
    await screenUntil((x) => /^ {2}MODEL /m.test(x), 'the table again');
  });

  it('p pins and unpins the chosen model through the runtime (the mark toggles); the config\'s pin cannot be taken off', { timeout: 120_000 }, async () => {
    // tiny is the operational model: pinned by the config, so the runtime refuses and says why
    tmux('send-keys', '-t', 'top', 'p');
    let s = await screenUntil((x) => x.includes('the operational model is always pinned'), "the runtime's refusal in the status line");
    expect(row(s, 'tiny')).toMatch(/ready .* pinned$/);
    // a second model loaded by request is not pinned: p pins it, p again unpins it, each confirmed by the runtime
    copyFileSync(join(dir, 'tiny.gguf'), join(dir, 'tiny2.gguf'));
    await unary(client, 'LoadModel', { model_name: 'tiny2', model_path: join(dir, 'tiny2.gguf'), context_length: 512 }, 120_000);
    s = await screenUntil((x) => /ready/.test(row(x, 'tiny2')), 'tiny2 listed');
    expect(row(s, 'tiny2')).toMatch(/ready .* -$/);
    tmux('send-keys', '-t', 'top', 'j');
    await screenUntil((x) => /^> tiny2 /m.test(x), 'tiny2 chosen');
    tmux('send-keys', '-t', 'top', 'p');
    s = await screenUntil((x) => x.includes('tiny2: pinned (runtime confirmed)') && / pinned$/.test(row(x, 'tiny2')), 'tiny2 pinned');
    expect((await unary(client, 'ListModels', {})).models.find((m) => m.name === 'tiny2')).toMatchObject({ pinned: true, pinned_by: 'request' });
    tmux('send-keys', '-t', 'top', 'p');
    s = await screenUntil((x) => x.includes('tiny2: unpinned (runtime confirmed)') && / -$/.test(row(x, 'tiny2')), 'tiny2 unpinned');
    expect((await unary(client, 'ListModels', {})).models.find((m) => m.name === 'tiny2')).toMatchObject({ pinned: false, pinned_by: '' });
    expect(row(s, 'tiny')).toMatch(/ pinned$/);
    // back to one model, tiny chosen, for the tests that follow
    await unary(client, 'UnloadModel', { model_name: 'tiny2' }, 60_000);
    tmux('send-keys', '-t', 'top', 'k');
    await screenUntil((x) => /^> tiny +oper +ready /m.test(x) && /unloaded/.test(row(x, 'tiny2')), 'tiny chosen again, tiny2 unloaded');
  });

  it('says "disconnected, retrying" when the runtime goes away, and recovers when it returns', { timeout: 120_000 }, async () => {
    await stopDaemon();
    let s = await screenUntil((x) => x.split('\n')[0]!.includes('disconnected, retrying'), '"disconnected, retrying"');
    expect(s.split('\n')[0]).toMatch(/^aios top \S+ +disconnected, retrying/);
    await startDaemon();
    s = await screenUntil((x) => /SERVING/.test(x.split('\n')[0]!) && /ready/.test(row(x, 'tiny')), 'the runtime back', 30_000);
    expect(row(s, 'tiny')).toMatch(/^> tiny +oper +ready /);
  });

  it('q quits and gives the terminal back; NO_COLOR gives no colours', async () => {
    tmux('send-keys', '-t', 'top', 'q');
    const end = Date.now() + 10_000;
    while (Date.now() < end) {
      try {
        tmux('has-session', '-t', 'top');
      } catch {
        break;
      }
      await sleep(200);
    }
    expect(() => tmux('has-session', '-t', 'top')).toThrow();
    tmux('new-session', '-d', '-s', 'plain', '-x', '80', '-y', '24', '-e', 'NO_COLOR=1', `node ${join(REPO, 'bin/aios.js')} top -a ${address}`);
    await screenUntil((x) => /ready/.test(row(x, 'tiny')), 'tiny ready without colours', 20_000, 'plain');
    expect(capture('plain', true)).not.toMatch(/\x1b\[(\d+;)*3\dm/);
    tmux('send-keys', '-t', 'plain', 'q');
  });

  it('--once --json prints one snapshot; --once without a runtime exits 1 saying why', async () => {
    const r = await cli(['top', '--once', '--json', '-a', address]);
    expect(r.exitCode, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as { connected: boolean; models: { name: string; state: string; slots: { total: number } }[]; machine: { cpuBusyPct: number[] } };
    expect(j.connected).toBe(true);
    expect(j.models[0]).toMatchObject({ name: 'tiny', state: 'ready', slots: { total: 1 } });
    expect(j.machine.cpuBusyPct.length).toBeGreaterThan(0);
    const gone = await cli(['top', '--once', '-a', `unix:${join(dir, 'nothing.sock')}`]);
    expect(gone.exitCode).toBe(1);
    expect(gone.stdout).toMatch(/disconnected, retrying/);
    expect(existsSync(sock)).toBe(true);
  });

  it("the image's aios command, bundled, runs on its own (no node_modules): --help, ps, top --once --json", async () => {
    const b = tmp('aios-cli-bundle-'); // outside the repository: nothing to resolve from node_modules
    await bundleRuntime(b); // proto/ beside the bundle, as in the image's /usr/lib/aios-runtime
    const entry = await bundleCli(b);
    const run = (args: string[]) => execa('node', [entry, ...args], { reject: false, cwd: b });
    const help = await run(['--help']);
    expect(help.exitCode, help.stderr).toBe(0);
    for (const verb of ['runtime', 'ps', 'top', 'doctor', 'bench']) expect(help.stdout).toMatch(new RegExp(`^  ${verb} `, 'm'));
    expect(help.stdout).not.toMatch(/^  (build|flash|qemu|kernel|models) /m);
    const ps = await run(['ps', '-a', address]);
    expect(ps.exitCode, ps.stderr).toBe(0);
    expect(ps.stdout).toMatch(/^tiny +ready /m);
    const top = await run(['top', '--once', '--json', '-a', address]);
    expect(top.exitCode, top.stderr).toBe(0);
    expect((JSON.parse(top.stdout) as { models: { name: string }[] }).models.map((m) => m.name)).toEqual(['tiny']);
    // The machine's doctor, bundled, asks this real runtime (the service unit is not on this host: a problem it names).
    const doc = await run(['doctor', '--json', '-a', address]);
    const report = JSON.parse(doc.stdout) as { target: string; findings: { id: string; status: string; detail: string }[] };
    expect(report.target).toBe('machine');
    expect(report.findings.find((f) => f.id === 'runtime.answers')).toMatchObject({ status: 'ok', detail: expect.stringMatching(/models ready: tiny$/) });
    expect(report.findings.find((f) => f.id === 'memory.budget')!.detail).toMatch(/\(tiny \d+(\.\d)? MiB\)$/);
    expect(doc.exitCode).toBe(report.findings.some((f) => f.status === 'problem') ? 1 : 0);
    const bin = await installCliLauncher(b);
    expect(readFileSync(bin, 'utf8')).toContain('exec node /usr/lib/aios-runtime/aios-cli.mjs "$@"');
  });
});
