/**
 * aios top's pure parts: the runtime's recent-generation figures, /proc parsing, merging and
 * filtering models, keys, and the screen (plain text at 80×24 and wider, NO_COLOR, the diff writer).
 */
import { describe, expect, it } from 'vitest';
import { RecentGenerations, tokensPerSecond, ttftMedian } from '../../src/runtime/recent.js';
import { RuntimeEvents } from '../../src/runtime/events.js';
import { cpuBusy, machineView, parseCpuList, parseLoadavg, parseMeminfo, parseMmStat, parseProcStat } from '../../src/top/machine.js';
import { cpusOf } from '../../src/runtime/server.js';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { initialView, mergeModels, selectedModel, snapshotJson, visibleModels, type Snapshot, type TopModel, type View } from '../../src/top/model.js';
import { HELP, KEY, onKey, parseKeys } from '../../src/top/keys.js';
import { adapterList, LORA_WIDTH, plain, render, sessionCell, short, toAnsi } from '../../src/top/screen.js';
import { Frame } from '../../src/top/terminal.js';
import { isLocalAddress } from '../../src/cli/top.js';
import type { ModelStatus } from '../../src/runtime/client.js';

const NOW = Date.parse('2026-12-02T07:30:00Z');
const MiB = 1024 * 1024;

function model(o: Partial<ModelStatus> = {}): ModelStatus {
  return {
    name: 'tiny', level: 'operational', state: 'ready', pid: 4242, port: 40001, memory_bytes: 56 * MiB, last_used_unix_ms: NOW, uptime_ms: 65_000, path: '/m/tiny.gguf', restarts: 0, error: '',
    estimate_bytes: 54 * MiB, actual_bytes: 54.3 * MiB, estimate_error_pct: -0.4, pinned: true, idle_until_unix_ms: 0, inflight: 1, queued: 2, queued_by_priority: { default: 1, batch: 1 },
    reported_bytes: 40 * MiB, parallel: 4, tokens_per_second: 42.5, ttft_p50_ms: 123, ...o,
  };
}

function snap(models: ModelStatus[], o: Partial<Snapshot> = {}): Snapshot {
  return {
    at: NOW, address: 'unix:/run/aios/runtime.sock', connected: true, intervalMs: 1000, models: mergeModels([], models),
    health: { ready: true, status: 'SERVING', models_ready: models.length, uptime_ms: 3_723_000, version: '0.1.0', memory_budget_bytes: 7 * 1024 * MiB, memory_used_bytes: 600 * MiB, queued: 2 },
    machine: { cpuBusy: [0.45, 0.2], load: [0.52, 0.41, 0.3], memTotalBytes: 8 * 1024 * MiB, memAvailableBytes: 6 * 1024 * MiB, zram: [{ device: 'zram0', origBytes: 12 * MiB, usedBytes: 3 * MiB, diskBytes: 8 * 1024 * MiB }] },
    ...o,
  };
}
const screen = (s: Snapshot, v: View = initialView(), w = 80, h = 24) => render(s, v, w, h).map(plain);

describe('runtime: recent generations (ListModels tokens_per_second, ttft_p50_ms)', () => {
  it('spreads a generation over its duration for tokens/s and takes the median TTFT of the last minute', () => {
    // 100 tokens over 10 s, ended now: all inside the 10 s window → 10 tok/s
    expect(tokensPerSecond([{ end: NOW, ttftMs: 50, tokens: 100, genMs: 10_000 }], NOW)).toBeCloseTo(10);
    // ended 5 s ago after 10 s: half of it is inside → 50 tokens / 10 s
    expect(tokensPerSecond([{ end: NOW - 5000, ttftMs: 50, tokens: 100, genMs: 10_000 }], NOW)).toBeCloseTo(5);
    expect(tokensPerSecond([{ end: NOW - 20_000, ttftMs: 50, tokens: 100, genMs: 1000 }], NOW)).toBe(0);
    const g = (end: number, ttftMs: number) => ({ end, ttftMs, tokens: 1, genMs: 1 });
    expect(ttftMedian([g(NOW - 1000, 300), g(NOW - 2000, 100), g(NOW - 3000, 200)], NOW)).toBe(200);
    expect(ttftMedian([g(NOW - 1000, 300), g(NOW - 2000, 100)], NOW)).toBe(200);
    expect(ttftMedian([g(NOW - 61_000, 300)], NOW)).toBe(0);
  });

  it('listens to the service events and forgets what is older than a minute', () => {
    let now = NOW;
    const ev = new RuntimeEvents();
    const r = new RecentGenerations(ev, () => now);
    expect(r.of('tiny')).toEqual({ tokens_per_second: 0, ttft_p50_ms: 0 });
    ev.emit('generation', { model: 'tiny', ttftMs: 120, completionTokens: 50, genMs: 1000 });
    expect(r.of('tiny').tokens_per_second).toBeCloseTo(5);
    expect(r.of('tiny').ttft_p50_ms).toBe(120);
    expect(r.of('other').ttft_p50_ms).toBe(0);
    now += 70_000;
    expect(r.of('tiny')).toEqual({ tokens_per_second: 0, ttft_p50_ms: 0 });
  });

  it('a streaming generation counts while it runs (tokens as produced); its end adds only what was not streamed', () => {
    let now = NOW;
    const ev = new RuntimeEvents();
    const r = new RecentGenerations(ev, () => now);
    // 20 tokens/s streamed for 30 s: the 10 s window fills up, then holds at 20 (nothing has ended yet)
    const stream = (ms: number, model = 'tiny') => {
      for (const end = now + ms; now < end; ) {
        now += 50;
        ev.emit('generating', { model, tokens: 1 });
      }
    };
    stream(5000);
    expect(r.of('tiny').tokens_per_second).toBeCloseTo(10, 0); // 100 tokens in the last 10 s
    expect(r.of('tiny').ttft_p50_ms).toBe(0); // live tokens are no generation: no TTFT yet
    stream(25_000);
    expect(r.of('tiny').tokens_per_second).toBeCloseTo(20, 0);
    // it ends having streamed 600 of 600 tokens: no double count, and its TTFT now shows
    ev.emit('generation', { model: 'tiny', ttftMs: 80, completionTokens: 600, genMs: 30_000, streamedTokens: 600 });
    expect(r.of('tiny').tokens_per_second).toBeCloseTo(20, 0);
    expect(r.of('tiny').ttft_p50_ms).toBe(80);
    // the usage says 30 more than the events (tokens without text): those are spread over its 30 s
    ev.emit('generation', { model: 'tiny', ttftMs: 80, completionTokens: 630, genMs: 30_000, streamedTokens: 600 });
    expect(r.of('tiny').tokens_per_second).toBeCloseTo(21, 0);
    // 5 s after the stream stopped, half the window is empty
    now += 5000;
    expect(r.of('tiny').tokens_per_second).toBeCloseTo(10.5, 0);
    // a stream cut off (no end event) still counted what it produced; 10 s later nothing is left
    stream(2000, 'cut');
    expect(r.of('cut').tokens_per_second).toBeCloseTo(4, 1);
    now += 10_001;
    expect(r.of('cut').tokens_per_second).toBe(0);
  });

  it('live tokens are kept in 100 ms records (a bounded list), counted exactly inside the window', () => {
    let now = NOW;
    const r = new RecentGenerations(undefined, () => now);
    for (let i = 0; i < 1000; i++) {
      now = NOW + i; // 1000 tokens in 1 s
      r.add('tiny', { end: now, ttftMs: 0, tokens: 1, genMs: 0, live: true });
    }
    expect((r as unknown as { byModel: Map<string, unknown[]> }).byModel.get('tiny')!.length).toBe(10);
    expect(r.of('tiny').tokens_per_second).toBeCloseTo(100); // 1000 tokens / 10 s
    // a record counts whole while its moment is in the window, not at all after
    expect(tokensPerSecond([{ end: NOW - 9999, ttftMs: 0, tokens: 50, genMs: 0, live: true }], NOW)).toBeCloseTo(5);
    expect(tokensPerSecond([{ end: NOW - 10_000, ttftMs: 0, tokens: 50, genMs: 0, live: true }], NOW)).toBe(0);
    expect(ttftMedian([{ end: NOW - 1, ttftMs: 0, tokens: 50, genMs: 0, live: true }], NOW)).toBe(0);
  });
});

describe('aios top: machine figures', () => {
  it('parses /proc/stat per core and gives busy fractions between samples', () => {
    const a = parseProcStat('cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0 0 0\nintr 1\n');
    const b = parseProcStat('cpu  0\ncpu0 55 0 5 40 0 0 0 0 0 0\ncpu1 5 0 5 130 0 0 0 0 0 0\n');
    expect(a).toEqual([{ busy: 10, total: 50 }, { busy: 10, total: 50 }]);
    expect(cpuBusy(a, b)).toEqual([1, 0]);
    expect(cpuBusy(undefined, b)).toEqual([null, null]);
    expect(parseLoadavg('0.52 0.41 0.30 1/123 4567\n')).toEqual([0.52, 0.41, 0.3]);
    expect(parseMeminfo('MemTotal:        8000 kB\nMemFree: 1 kB\nMemAvailable:    6000 kB\n')).toEqual({ totalBytes: 8000 * 1024, availableBytes: 6000 * 1024 });
    expect(parseMmStat('12582912  3145728  3407872        0  3407872        0        0        0        0\n')).toEqual({ origBytes: 12582912, usedBytes: 3407872 });
    expect(machineView(undefined, { cpus: a, load: [1, 2, 3], memTotalBytes: 1, memAvailableBytes: 1, zram: [] }).cpuBusy).toEqual([null, null]);
  });

  it('marks the cores the model children may run on (ModelStatus.cpus), in bars and in the compact row', () => {
    expect(parseCpuList('0-3,6')).toEqual([0, 1, 2, 3, 6]);
    expect(parseCpuList('1')).toEqual([1]);
    expect(parseCpuList('')).toEqual([]);
    expect(parseCpuList('3-1')).toEqual([]);
    expect(parseCpuList('x')).toEqual([]);
    // core 1 only (a cpuset), and a gone model's cores do not count
    const gone = mergeModels([model({ name: 'old', cpus: '0' })], [model({ cpus: '1' })]);
    let text = screen(snap([], { models: gone })).join('\n');
    expect(text).toMatch(/^cpu {3}0\[##\.\.\.\] 45% {2}1\[#\.\.\.\.\] 20%\* {2}\*: model cores$/m);
    expect(snapshotJson(snap([model({ cpus: '1' })])) as { machine: { modelCpus: number[] } }).toMatchObject({ machine: { modelCpus: [1] } });
    // no cpus reported (an older runtime, nothing running): nothing marked, no legend
    text = screen(snap([model()])).join('\n');
    expect(text).toMatch(/^cpu {3}0\[##\.\.\.\] 45% {2}1\[#\.\.\.\.\] 20% *$/m);
    expect(text).not.toContain('model cores');
    // 40 cores: one character per core, the marks on the line below, under their cores
    const many = snap([model({ cpus: '0-3,39' })], { machine: { ...snap([]).machine!, cpuBusy: Array.from({ length: 40 }, () => 0.5) } });
    const lines = screen(many);
    const i = lines.findIndex((l) => l.startsWith('cpu 40 cores ['));
    expect(lines[i]).toMatch(/^cpu 40 cores \[[=+-]{40}\]/);
    expect(lines[i + 1]!.trimEnd()).toBe(`${' '.repeat('cpu 40 cores ['.length)}****${' '.repeat(35)}* *: model cores`);
  });

  it('the runtime reports the CPUs a process may run on (Cpus_allowed_list): a child pinned with taskset', async () => {
    const child = spawn('taskset', ['-c', '0', 'sleep', '30'], { stdio: 'ignore' });
    try {
      const end = Date.now() + 5000;
      while (readFileSync(`/proc/${child.pid}/comm`, 'utf8').trim() !== 'sleep') {
        expect(Date.now()).toBeLessThan(end);
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(cpusOf(child.pid!)).toBe('0');
    } finally {
      child.kill();
    }
    expect(cpusOf(0)).toBe('');
    expect(cpusOf(2 ** 30)).toBe(''); // no such process
  });

  it('treats the unix socket and loopback as this host, anything else as remote', () => {
    expect(isLocalAddress('unix:/run/aios/runtime.sock')).toBe(true);
    expect(isLocalAddress('127.0.0.1:50051')).toBe(true);
    expect(isLocalAddress('localhost:50051')).toBe(true);
    expect(isLocalAddress('10.0.0.7:50051')).toBe(false);
  });
});

describe('aios top: models and keys', () => {
  it('keeps a model that was unloaded as a "gone" row (so l can load it back), sorted last', () => {
    const first = mergeModels([], [model(), model({ name: 'mistral', level: 'tactical', pinned: false })]);
    expect(first.map((m) => m.name)).toEqual(['tiny', 'mistral']);
    const after = mergeModels(first, [model({ name: 'mistral', level: 'tactical', pinned: false })]);
    expect(after.map((m) => [m.name, m.state, m.gone])).toEqual([['mistral', 'ready', false], ['tiny', 'unloaded', true]]);
    expect(mergeModels(after, [model()]).find((m) => m.name === 'tiny')).toMatchObject({ state: 'ready', gone: false });
    expect(visibleModels(after, 'unl').map((m) => m.name)).toEqual(['tiny']);
  });

  it('parses raw input into keys', () => {
    expect(parseKeys('\x1b[A\x1b[Bq\r\x7f\x1b\x03/')).toEqual([KEY.up, KEY.down, 'q', KEY.enter, KEY.backspace, KEY.esc, KEY.ctrlC, '/']);
  });

  it('u asks y/n and then unloads; n cancels; l prompts with the chosen name; r on a failed model loads it; p toggles the pin', () => {
    const ms = mergeModels([], [model(), model({ name: 'mistral', level: 'tactical', state: 'failed', error: 'exited with code 1', pinned: false })]);
    let v = initialView();
    let r = onKey(v, 'u', ms);
    expect(r.view.mode).toEqual({ kind: 'confirm', action: 'unload', model: 'tiny' });
    expect(r.action).toBeUndefined();
    expect(onKey(r.view, 'n', ms)).toMatchObject({ view: { mode: { kind: 'normal' }, status: { text: 'unload tiny: cancelled' } } });
    r = onKey(r.view, 'y', ms);
    expect(r.action).toEqual({ kind: 'unload', model: 'tiny' });
    expect(r.view.status).toEqual({ text: 'unloading tiny…', kind: 'info' });
    v = onKey(initialView(), KEY.down, ms).view;
    expect(selectedModel(ms, v)?.name).toBe('mistral');
    expect(onKey(v, 'r', ms).action).toEqual({ kind: 'restart', model: 'mistral', failed: true });
    r = onKey(initialView(), 'l', ms);
    expect(r.view.mode).toEqual({ kind: 'prompt', purpose: 'load', text: 'tiny' });
    r = onKey(onKey(r.view, KEY.backspace, ms).view, 'y', ms);
    expect(r.view.mode).toMatchObject({ text: 'tiny' });
    expect(onKey(r.view, KEY.enter, ms).action).toEqual({ kind: 'load', model: 'tiny' });
    expect(onKey(r.view, KEY.esc, ms).action).toBeUndefined();
    // p toggles the chosen model's pin through the runtime (no confirmation: nothing is lost)
    expect(onKey(initialView(), 'p', ms)).toMatchObject({ action: { kind: 'pin', model: 'tiny', pinned: false }, view: { status: { text: 'unpinning tiny…', kind: 'info' } } });
    expect(onKey(v, 'p', ms).action).toEqual({ kind: 'pin', model: 'mistral', pinned: true });
    const gone = mergeModels(ms, [model()]);
    const goneView = onKey(onKey(initialView(), KEY.down, gone).view, 'p', gone);
    expect(goneView.action).toBeUndefined();
    expect(goneView.view.status).toEqual({ text: 'pin mistral: it is not loaded (load it with l first)', kind: 'error' });
    expect(onKey(initialView(), 'q', ms).action).toEqual({ kind: 'quit' });
    // filter: typed live, Enter keeps it, Esc clears it
    let f = onKey(initialView(), '/', ms).view;
    for (const k of 'mis') f = onKey(f, k, ms).view;
    expect(visibleModels(ms, f.filter).map((m) => m.name)).toEqual(['mistral']);
    expect(onKey(f, KEY.enter, ms).view).toMatchObject({ filter: 'mis', mode: { kind: 'normal' } });
    expect(onKey(f, KEY.esc, ms).view.filter).toBe('');
    // help: any key closes it
    const h = onKey(initialView(), '?', ms).view;
    expect(h.help).toBe(true);
    expect(onKey(h, 'u', ms)).toEqual({ view: { ...h, help: false } });
  });
});

describe('aios top: the screen', () => {
  it('fits 80×24 with every figure of a model and the machine', () => {
    const lines = screen(snap([model(), model({ name: 'mistral-7b-instruct-v0.2', level: 'tactical', state: 'starting', pinned: false, inflight: 0, queued: 0, queued_by_priority: {}, tokens_per_second: 0, ttft_p50_ms: 0, actual_bytes: 0, idle_until_unix_ms: NOW + 45_000 })]));
    expect(lines).toHaveLength(24);
    for (const l of lines) expect(l.length).toBeLessThanOrEqual(80);
    const text = lines.join('\n');
    expect(lines[0]).toMatch(/^aios top unix:\/run\/aios\/runtime\.sock {2}SERVING {2}up 1h02m {2}2 ready {2}2 waiting/);
    expect(lines[1]).toMatch(/^ {2}MODEL +LEVEL STATE +SLOTS +QUEUE +TOK\/S +TTFT RAM est\/meas +IDLE$/);
    expect(lines[2]).toMatch(/^> tiny +oper +ready +1\/4 +0\/0\/1\/1 +42\.5 +123ms +54M\/54M +pinned$/);
    expect(lines[3]).toMatch(/^ {2}mistral-7b-~ +tact +starting +0\/4 +0\/0\/0\/0 +0\.0 +- +54M\/- +in 45s$/);
    expect(text).toMatch(/mem {2}\[#+\.+\] 600M used \/ 7\.0G budget \/ 8\.0G total, 6\.0G available/);
    expect(text).toMatch(/cpu {3}0\[##\.\.\.\] 45% {2}1\[#\.\.\.\.\] 20%/);
    expect(text).toMatch(/load 0\.52 0\.41 0\.30 {3}zram0 12M in 3\.0M of 8\.0G/);
    expect(lines[23]).toMatch(/^l load {2}u unload {2}r restart {2}p pin {2}\/ filter {2}\? help {2}q quit/);
  });

  it('uses a wider terminal for more columns, and a short one scrolls to the chosen model', () => {
    const wide = screen(snap([model()]), initialView(), 160, 30);
    expect(wide[1]).toMatch(/MODEL +LEVEL +STATE +PIN SLOTS QUEUE s\/r\/d\/b +TOK\/S +TTFT RAM est\/meas +ERR +RSS +PID RST +UP +IDLE/);
    expect(wide[2]).toMatch(/^> tiny +operational ready +yes +1\/4 +0\/0\/1\/1 +42\.5 +123ms +54M\/54M +-0\.4% +56M +4242 +0 +1m05s +pinned$/);
    const many = Array.from({ length: 30 }, (_, i) => model({ name: `m${String(i).padStart(2, '0')}`, level: '' }));
    let v = initialView();
    for (let i = 0; i < 25; i++) v = onKey(v, KEY.down, mergeModels([], many)).view;
    const lines = screen(snap(many), v);
    expect(lines).toHaveLength(24);
    expect(lines.find((l) => l.startsWith('> '))).toMatch(/^> m25 /);
    expect(lines.some((l) => /… \d+ more/.test(l))).toBe(true);
  });

  it('says "disconnected, retrying" with the reason, and shows errors and prompts at the bottom', () => {
    const s = snap([model()], { connected: false, error: 'No connection established' });
    const lines = screen(s, { ...initialView(), status: { text: 'unload tiny: model tiny is not loaded', kind: 'error' } });
    expect(lines[0]).toContain('disconnected, retrying (No connection established)');
    expect(screen(snap([], { connected: false, health: undefined }))[0]).toMatch(/^aios top unix:\S+ {2}connecting…/);
    expect(lines[22]).toBe('unload tiny: model tiny is not loaded');
    expect(screen(s, { ...initialView(), mode: { kind: 'confirm', action: 'unload', model: 'tiny' } })[23]).toBe('unload tiny? requests on it fail (y/n)');
    expect(screen(s, { ...initialView(), mode: { kind: 'prompt', purpose: 'load', text: 'tin' } })[23]).toMatch(/^load model: tin_ +Enter ok, Esc cancel$/);
    const failed = screen(snap([model({ state: 'failed', error: 'llama-server exited with code 1' })]));
    expect(failed[22]).toBe('tiny: llama-server exited with code 1');
  });

  it('leaves the machine out for a remote runtime, saying so', () => {
    const text = screen(snap([model()], { machine: undefined, address: '10.0.0.7:50051' })).join('\n');
    expect(text).toMatch(/mem {2}\[#+\.+\] 600M used \/ 7\.0G budget$/m);
    expect(text).toContain('not shown for a remote runtime');
  });

  it('colours with SGR only when asked (NO_COLOR), every line exactly the width; redraws only changed lines', () => {
    const line = render(snap([model()]), initialView(), 80, 24)[2]!;
    expect(toAnsi(line, 80, false)).toHaveLength(80);
    expect(toAnsi(line, 80, false)).not.toContain('\x1b');
    expect(toAnsi(line, 80, true)).toContain('\x1b[7m');
    expect(toAnsi([{ t: 'x'.repeat(100) }], 80, false)).toHaveLength(80);
    const f = new Frame();
    const a = f.diff(['aaa', 'bbb'], 3, 2);
    expect(a).toContain('\x1b[2J');
    const b = f.diff(['aaa', 'bcb'], 3, 2);
    expect(b).not.toContain('\x1b[2J');
    expect(b).not.toContain('aaa');
    expect(b).toContain('\x1b[2;1Hbcb');
    expect(f.diff(['aaa', 'bcb'], 4, 2)).toContain('\x1b[2J');
    expect(short(54.3 * MiB)).toBe('54M');
    expect(short(1.25 * 1024 * MiB)).toBe('1.3G');
  });

  it("adds ps's adapter and session columns on a wide terminal when a model has some; hidden when narrow; a refusal's reason below", () => {
    const lora = model({
      adapters: [
        { name: 'sql', file: 'tiny.lora-sql.gguf', description: '', scale: 1, loaded: true, refused: '' },
        { name: 'pirate', file: 'tiny.lora-pirate.gguf', description: '', scale: 1, loaded: false, refused: 'n_embd 64 differs from the model (128)' },
      ],
      sessions: 12,
      session_states: 11,
      session_bytes: 54.3 * MiB,
    });
    const plainModel = model({ name: 'other', level: 'tactical', pinned: false, adapters: [], sessions: 0, session_states: 0, session_bytes: 0 });
    const wide = screen(snap([lora, plainModel]), initialView(), 160, 30);
    expect(wide[1]).toMatch(/ +UP ADAPTERS +SESSIONS +IDLE$/);
    expect(wide[2]).toMatch(/^> tiny +operational .* 1m05s sql,pirate! +12 54M +pinned$/);
    expect(wide[3]).toMatch(/^ {2}other +tactical .* 1m05s - +- +-$/);
    for (const l of wide) expect(l.length).toBeLessThanOrEqual(160);
    // the refused adapter's reason is in the status line while its model is chosen
    expect(wide[28]).toBe('tiny: adapter pirate refused: n_embd 64 differs from the model (128)');
    // a long list is cut to the column
    const many = screen(snap([model({ adapters: ['alpha', 'beta', 'gamma', 'delta'].map((name) => ({ name, file: '', description: '', scale: 1, loaded: true, refused: '' })) })]), initialView(), 160, 30);
    expect(many[2]).toMatch(/ alpha,beta,g~ +- +pinned$/);
    // without adapters or sessions anywhere, or on a narrower terminal, the columns are not there
    expect(screen(snap([plainModel]), initialView(), 160, 30)[1]).not.toContain('ADAPTERS');
    for (const w of [80, 130, LORA_WIDTH - 1]) {
      const lines = screen(snap([lora]), initialView(), w, 24);
      expect(lines[1]).not.toMatch(/ADAPTERS|SESSIONS/);
      expect(lines[2]).not.toContain('sql');
      // the model name keeps its room when the columns would not fit
      expect(lines[2]).toMatch(/^> tiny /);
    }
    expect(screen(snap([lora]), initialView(), LORA_WIDTH, 24)[1]).toMatch(/MODEL {10,}LEVEL .* ADAPTERS +SESSIONS +IDLE$/);
    expect(adapterList(lora)).toBe('sql,pirate!');
    expect(sessionCell(lora)).toBe('12 54M');
    expect(sessionCell(plainModel)).toBe('-');
    const j = snapshotJson(snap([lora])) as { models: object[] };
    expect(j.models[0]).toMatchObject({ adapters: [{ name: 'sql', loaded: true }, { name: 'pirate', loaded: false, refused: 'n_embd 64 differs from the model (128)' }], sessions: 12, sessionStates: 11, sessionBytes: 54.3 * MiB });
  });

  it('the help fits 80×24 whole (it takes the machine lines\' room)', () => {
    const lines = screen(snap([model()]), { ...initialView(), help: true });
    expect(lines).toHaveLength(24);
    for (const h of HELP) expect(lines).toContain(h);
    expect(lines.join('\n')).not.toMatch(/^mem  \[/m);
  });

  it('--once --json: one snapshot with the figures named', () => {
    const j = snapshotJson(snap([model()])) as { models: object[]; machine: { cpuBusyPct: number[] } };
    expect(j.models[0]).toMatchObject({ name: 'tiny', state: 'ready', pinned: true, slots: { busy: 1, total: 4 }, queuedByPriority: { default: 1, batch: 1 }, tokensPerSecond: 42.5, ttftP50Ms: 123 });
    expect(j.machine.cpuBusyPct).toEqual([45, 20]);
  });
});

describe('aios top: the header', () => {
  it('shortens a long address from the left so that the figures and the time still fit', () => {
    const s = snap([model()], { address: 'unix:/tmp/aios-top-capture/some/long/dir/runtime.sock' });
    const h = screen(s)[0]!;
    expect(h.length).toBeLessThanOrEqual(80);
    expect(h).toMatch(/^aios top …\S*runtime\.sock {2}SERVING {2}up 1h02m {2}1 ready {2}2 waiting$/);
    expect(screen(snap([model()]), initialView(), 100)[0]).toMatch(/^aios top unix:\/run\/aios\/runtime\.sock {2}SERVING .* 2 waiting +\d\d:\d\d:\d\d$/);
  });
});

describe('aios top: cloud spend', () => {
  it('adds a VRAM line only when the runtime budgets GPU memory', () => {
    expect(screen(snap([model()])).some((l) => l.startsWith('vram'))).toBe(false);
    const base = snap([model()]);
    const lines = screen({ ...base, health: { ...base.health!, vram_budget_bytes: 80 * 1024 * MiB, vram_used_bytes: 60 * 1024 * MiB } });
    expect(lines).toHaveLength(24);
    const v = lines.find((l) => l.startsWith('vram'))!;
    expect(v).toMatch(/^vram \[#+\.+\] 60G used \/ 80G budget$/);
    expect(v.split('#').length - 1).toBeGreaterThan(v.split('.').length - 1); // 75 %: more filled than empty
  });

  it('adds a line per month spend vs budget only when cloud providers are configured', () => {
    expect(screen(snap([model()])).some((l) => l.startsWith('cloud'))).toBe(false);
    const lines = screen(snap([model()], { spend: [{ name: 'anthropic', spentUsd: 12.345, budgetUsd: 50, unavailable: '' }, { name: 'openai', spentUsd: 10, budgetUsd: 10, unavailable: 'monthly budget spent' }] }));
    expect(lines).toHaveLength(24);
    expect(lines.find((l) => l.startsWith('cloud'))).toBe('cloud  anthropic $12.35 of $50.00  openai $10.00 of $10.00 (monthly budget spent)');
    expect((snapshotJson(snap([model()], { spend: [{ name: 'anthropic', spentUsd: 1, budgetUsd: 5, unavailable: '' }] })) as { spend: object[] }).spend).toEqual([{ name: 'anthropic', spentUsd: 1, budgetUsd: 5, unavailable: '' }]);
  });
});
