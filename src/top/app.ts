/**
 * The terminal loop of `aios top`, kept thin: poll the runtime (HealthCheck + ListModels) and this
 * host's /proc every interval, merge into a snapshot, render (screen.ts), write only changed lines
 * (terminal.ts); keys go through keys.ts, and the actions it returns go to the runtime's API with
 * their answer in the status line. A failed poll shows "disconnected, retrying" and the next one
 * connects afresh, so the panel recovers when the runtime comes back. Nothing here throws to the
 * user: every error becomes the status line.
 */
import type { ConnectOptions, RuntimeClient } from '../runtime/client.js';
import { parseKeys, onKey, type Action } from './keys.js';
import { machineView, sampleMachine, type MachineSample } from './machine.js';
import { initialView, mergeModels, snapshotJson, type Snapshot, type View } from './model.js';
import { render, toAnsi, plain } from './screen.js';
import { ENTER, Frame, LEAVE } from './terminal.js';

type ClientApi = typeof import('../runtime/client.js');

export interface TopOptions {
  address: string;
  tls: ConnectOptions;
  intervalMs: number;
  /** Read this host's /proc (the runtime runs here). */
  local: boolean;
  color: boolean;
}

const POLL_DEADLINE_MS = 3000;
const ACTION_DEADLINE_MS = 180_000;

/** Polls the runtime; keeps the connection between polls, drops it after a failure. */
class Poller {
  private client?: RuntimeClient;
  private machinePrev?: MachineSample;
  snap: Snapshot;

  constructor(
    private api: ClientApi,
    private o: TopOptions,
  ) {
    this.snap = { at: Date.now(), address: o.address, connected: false, models: [], intervalMs: o.intervalMs };
  }

  get connection(): RuntimeClient | undefined {
    return this.client;
  }

  connect(): RuntimeClient {
    this.client ??= this.api.connectRuntime(this.o.address, this.o.tls);
    return this.client;
  }

  drop(): void {
    this.client?.close();
    this.client = undefined;
  }

  explain(e: unknown): string {
    return this.api.explainError(e, this.o.address, this.o.tls).replace(/\s+/g, ' ');
  }

  async poll(): Promise<Snapshot> {
    let machine;
    if (this.o.local) {
      const cur = sampleMachine();
      machine = machineView(this.machinePrev, cur);
      this.machinePrev = cur;
    }
    try {
      const c = this.connect();
      const [health, list, spend] = await Promise.all([
        this.api.unary(c, 'HealthCheck', {}, POLL_DEADLINE_MS),
        this.api.unary(c, 'ListModels', {}, POLL_DEADLINE_MS),
        // cloud spend: a runtime without the Spend call, or a certificate without its scope, just has no line
        this.api.unary(c, 'Spend', { month: '' }, POLL_DEADLINE_MS).catch(() => undefined),
      ]);
      const cloud = spend?.providers.map((p) => ({ name: p.name, spentUsd: p.spent_usd, budgetUsd: p.budget_usd, unavailable: p.unavailable }));
      this.snap = { at: Date.now(), address: this.o.address, connected: true, health, models: mergeModels(this.snap.models, list.models), machine, spend: cloud, intervalMs: this.o.intervalMs };
    } catch (e) {
      this.drop();
      this.snap = { ...this.snap, at: Date.now(), connected: false, error: this.explain(e), machine: machine ?? this.snap.machine };
    }
    return this.snap;
  }
}

/** `aios top --once [--json]`: one snapshot (machine figures from two samples 0.5 s apart), as JSON or the screen's text. */
export async function topOnce(o: TopOptions, json: boolean, width: number, height: number): Promise<{ text: string; connected: boolean }> {
  const api = await import('../runtime/client.js');
  const p = new Poller(api, o);
  if (o.local) {
    await p.poll();
    await new Promise((r) => setTimeout(r, 500));
  }
  const s = await p.poll();
  p.drop();
  if (json) return { text: JSON.stringify(snapshotJson(s), null, 2), connected: s.connected };
  const lines = render(s, initialView(), width, height).map((l) => plain(l).trimEnd());
  while (lines.length && !lines.at(-1)) lines.pop();
  return { text: lines.join('\n'), connected: s.connected };
}

/** The full-screen panel until q / Ctrl-C / SIGTERM. */
export async function runTop(o: TopOptions): Promise<void> {
  const api = await import('../runtime/client.js');
  const poller = new Poller(api, o);
  const frame = new Frame();
  const stdout = process.stdout;
  const stdin = process.stdin;
  let view: View = initialView();
  let ended = false;
  let timer: NodeJS.Timeout | undefined;
  let polling = false;
  let finish: () => void = () => {};
  const done = new Promise<void>((r) => (finish = r));

  const draw = () => {
    if (ended) return;
    const width = stdout.columns || 80;
    const height = stdout.rows || 24;
    const lines = render(poller.snap, view, width, height).map((l) => toAnsi(l, width, o.color));
    stdout.write(frame.diff(lines, width, height));
  };

  const tick = async () => {
    if (ended || polling) return;
    polling = true;
    clearTimeout(timer);
    try {
      await poller.poll();
    } finally {
      polling = false;
    }
    draw();
    if (!ended) timer = setTimeout(() => void tick(), o.intervalMs);
  };

  const act = async (a: Exclude<Action, { kind: 'quit' }>) => {
    const say = (text: string, kind: 'ok' | 'error') => {
      view = { ...view, status: { text, kind } };
      draw();
    };
    try {
      const c = poller.connect();
      if (a.kind === 'load' || (a.kind === 'restart' && a.failed)) {
        const r = await api.unary(c, 'LoadModel', { model_name: a.model, model_path: '' }, ACTION_DEADLINE_MS);
        say(`${a.kind === 'load' ? 'loaded' : 'restarted'} ${r.name}: ${r.state} (pid ${r.pid})`, 'ok');
      } else if (a.kind === 'pin') {
        const r = await api.unary(c, 'PinModel', { model_name: a.model, pinned: a.pinned }, ACTION_DEADLINE_MS);
        say(`${r.name}: ${r.pinned ? 'pinned' : 'unpinned'} (runtime confirmed)`, r.pinned === a.pinned ? 'ok' : 'error');
      } else if (a.kind === 'unload') {
        const r = await api.unary(c, 'UnloadModel', { model_name: a.model }, ACTION_DEADLINE_MS);
        say(`${r.message || `unloaded ${a.model}`} (runtime confirmed)`, 'ok');
      } else {
        await api.unary(c, 'UnloadModel', { model_name: a.model }, ACTION_DEADLINE_MS);
        const r = await api.unary(c, 'LoadModel', { model_name: a.model, model_path: '' }, ACTION_DEADLINE_MS);
        say(`restarted ${r.name}: ${r.state} (pid ${r.pid})`, 'ok');
      }
    } catch (e) {
      // the runtime's own words, without grpc-js's "9 FAILED_PRECONDITION: " (the status line is short)
      const why = poller.explain(e).replace(/^\d+ [A-Z_]+: /, '');
      say(why.startsWith(`model ${a.model} `) ? `${a.kind}: ${why}` : `${a.kind} ${a.model}: ${why}`, 'error');
    }
    void tick();
  };

  const end = () => {
    if (ended) return;
    ended = true;
    clearTimeout(timer);
    stdin.off('data', onData);
    if (stdin.isTTY) stdin.setRawMode(false);
    stdin.pause();
    stdout.write(LEAVE);
    poller.drop();
    finish();
  };

  const onData = (d: Buffer) => {
    for (const key of parseKeys(d.toString('utf8'))) {
      const r = onKey(view, key, poller.snap.models);
      view = r.view;
      if (r.action?.kind === 'quit') return end();
      if (r.action) void act(r.action);
    }
    draw();
  };

  stdout.write(ENTER);
  if (stdin.isTTY) stdin.setRawMode(true);
  stdin.on('data', onData);
  stdin.resume();
  const onResize = () => {
    frame.reset();
    draw();
  };
  stdout.on('resize', onResize);
  const onSignal = () => end();
  process.once('SIGTERM', onSignal);
  process.once('SIGHUP', onSignal);
  process.once('SIGINT', onSignal);
  const onCrash = (e: unknown) => {
    // never leave the terminal in raw mode on the alternate screen
    end();
    process.stderr.write(`aios top: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exitCode = 1;
  };
  process.once('uncaughtException', onCrash);
  draw();
  void tick();
  await done;
  stdout.off('resize', onResize);
  process.off('SIGTERM', onSignal);
  process.off('SIGHUP', onSignal);
  process.off('SIGINT', onSignal);
  process.off('uncaughtException', onCrash);
}
