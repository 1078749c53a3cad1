/**
 * The real `Launcher`: llama-server on a loopback port with the model's fixed launch profile, its
 * stderr read for the buffer sizes it reports while loading, /health for readiness, and the memory
 * a ready child uses.
 */
import { mkdirSync } from 'node:fs';
import type { Launcher, LaunchProfile, ProcessHandle } from './child.js';
import { addBufferLine, emptyBuffers, PROCESS_OVERHEAD, rssOf } from './memory.js';
import { freePort } from '../util/net.js';
import { physicalCores } from '../util/cpu.js';
import { childEnv, Isolation, spawnWrapped, type IsolationSettings } from './isolation.js';
import { slotDirOf } from './defaults.js';
import { getChildStatus, type ChildAddress } from './upstream.js';

/** llama-server's command line for a profile. */
export function launchArgs(p: LaunchProfile, port: number, slotSavePath = ''): string[] {
  const args = [
    '-m', p.path,
    // The name clients use: llama-server reports it as "model" in every answer, so the relay can
    // pass the bytes through unchanged.
    '--alias', p.name,
    '--host', '127.0.0.1',
    '--port', String(port),
    '-c', String(p.ctxSize * p.parallel), // llama-server splits the context across slots
    '-t', String(p.threads || physicalCores()),
    '-ngl', String(p.gpuLayers < 0 ? 999 : p.gpuLayers),
    '--parallel', String(p.parallel),
    '--metrics',
    '--no-webui',
    // The runtime budgets memory: no host-side prompt cache outside the budget (llama-server's default is 8 GiB).
    '--cache-ram', '0',
    // Verbosity 4 makes llama.cpp report its buffer sizes (model, KV, compute, output) while loading.
    '-lv', '4',
  ];
  if (!p.mmap) args.push('--no-mmap');
  // Saved sessions (sessions.ts): POST /slots/<id>?action=save|restore reads and writes files here.
  // Its own slot directory below the sessions directory (the only one its sandbox may write to).
  if (slotSavePath && !p.embeddings) args.push('--slot-save-path', slotDirOf(slotSavePath, p.name));
  // Every adapter loaded at scale 0; each request applies its own set (adapters.ts).
  for (const a of p.adapters ?? []) args.push('--lora', a.path);
  if (p.adapters?.length) args.push('--lora-init-without-apply');
  if (p.embeddings) args.push('--embeddings', '--pooling', p.embeddings.pooling);
  // Split across llama.cpp RPC workers (rpc.ts): -ngl puts the layers on them, in proportion to their free memory.
  if (p.rpc?.length) args.push('--rpc', p.rpc.join(','));
  return args;
}

export class LlamaServerLauncher implements Launcher {
  /** A child started before the daemon was loaded (prelaunch()), waiting to be taken by the first start() it matches. */
  private early?: { args: string[]; port: number; proc: ProcessHandle; socket?: string };

  /** The sessions directory; each child's --slot-save-path is its own directory below it (slotDirOf; "" = sessions off). */
  slotSavePath = '';
  /** Per-model cgroups and the sandbox (isolation.ts); none until isolate() is called. */
  isolation?: Isolation;

  /** Turns on per-model cgroups and the sandbox as far as this host allows (once; later calls update the layers' CPU settings). */
  isolate(s: IsolationSettings): Isolation {
    if (this.isolation) this.isolation.settings.layers = s.layers;
    else this.isolation = new Isolation(s);
    return this.isolation;
  }

  constructor(
    readonly binary: string,
    public log: (s: string) => void = () => {},
  ) {}

  /**
   * Starts a profile's llama-server now, before the rest of the daemon is loaded, so that the model
   * loads while Node.js compiles the front ends (most of a start-up under emulation). start() hands
   * it over when its profile yields the same command line; discardEarly() ends it otherwise.
   */
  async prelaunch(profile: LaunchProfile): Promise<void> {
    const port = await freePort();
    const { proc, socket } = this.launch(profile, port);
    this.early = { args: launchArgs(profile, port, this.slotSavePath), port, proc, socket };
  }

  /** Ends a prelaunched child that no start() took (the validated profile differed). */
  discardEarly(): void {
    this.early?.proc.kill('SIGKILL');
    this.early = undefined;
  }

  async start(profile: LaunchProfile): Promise<{ port: number; proc: ProcessHandle; socket?: string }> {
    const e = this.early;
    if (e && launchArgs(profile, e.port, this.slotSavePath).join('\0') === e.args.join('\0')) {
      this.early = undefined;
      this.log(`${profile.name}: taking over llama-server pid ${e.proc.pid}, started early on ${e.socket ?? `port ${e.port}`}`);
      // Started before its footprint was estimated: its cgroup gets the budgeted limit now.
      this.isolation?.updateLimits(profile);
      return { port: e.port, proc: e.proc, socket: e.socket };
    }
    const port = await freePort();
    return { port, ...this.launch(profile, port) };
  }

  private launch(profile: LaunchProfile, port: number): { proc: ProcessHandle; socket?: string } {
    const plain = launchArgs(profile, port, this.slotSavePath);
    // Its own cgroup (entered before exec) and sandbox, as far as this host allows (isolation.ts).
    const w = this.isolation?.wrap(profile, this.binary, plain) ?? { argv: [this.binary, ...plain] };
    const { socket, cgroup } = w;
    const slots = plain.indexOf('--slot-save-path');
    if (slots >= 0) mkdirSync(plain[slots + 1]!, { recursive: true, mode: 0o700 });
    this.log(`starting ${profile.name}: ${w.argv.join(' ')}`);
    const proc = spawnWrapped(w, ['ignore', 'ignore', 'pipe'], childEnv(profile));
    const buffers = emptyBuffers();
    let tail = '';
    let partial = '';
    let parsing = true;
    proc.stderr?.on('data', (d: Buffer) => {
      const s = d.toString();
      tail = (tail + s).slice(-2000);
      if (!parsing) return;
      partial += s;
      let nl: number;
      while ((nl = partial.indexOf('\n')) >= 0) {
        const line = partial.slice(0, nl);
        partial = partial.slice(nl + 1);
        if (line.includes('buffer size')) addBufferLine(buffers, line);
        if (line.includes('listening on')) parsing = false;
      }
    });
    const exited = new Promise<{ code: number | null; signal: string | null; oom?: string }>((resolve) => {
      proc.once('exit', (code, signal) => {
        // An OOM kill in its cgroup: the kernel's memory.events says so (not the exit status, which bwrap turns into 137).
        const oom = cgroup ? this.isolation?.oomSince(profile.name, cgroup.oomBefore) : undefined;
        if (oom) this.log(`${profile.name}: killed by the kernel in its cgroup: ${oom}`);
        resolve({ code, signal, oom });
      });
      // A binary that cannot be started at all ("error" without "exit").
      proc.once('error', (e) => {
        tail += `\n${e.message}`;
        if (proc.exitCode === null && proc.pid === undefined) resolve({ code: null, signal: null });
      });
    });
    return {
      socket,
      proc: {
        pid: proc.pid ?? 0,
        exited,
        buffers,
        tail: () => tail,
        kill: (sig) => {
          // A sandbox that cannot pass SIGTERM on is stopped with SIGKILL (sandbox.ts, stopSignal).
          if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig === 'SIGTERM' && w.stopSignal === 'SIGKILL' ? 'SIGKILL' : sig);
        },
      },
    };
  }

  async healthy(target: ChildAddress): Promise<boolean> {
    return (await getChildStatus(target, '/health', 2000)) === 200;
  }

  /** After the last child stopped: the empty model cgroups go. */
  release(): void {
    this.isolation?.cgroups?.removeAll();
  }

  /** Its cgroup's figures (memory.current/peak, limit, OOM kills), when it has one. */
  cgroupStats(name: string) {
    return this.isolation?.cgroups?.stats(name);
  }

  /**
   * What a ready child uses: its resident set now, or, when more, the buffers llama-server allocated
   * (warm-up touches only part of the compute buffer; a full micro-batch touches all of it) plus the
   * process's own code and heap.
   */
  measure(h: ProcessHandle, name?: string): number {
    // With a cgroup, memory.current (anonymous memory and the weights' page cache it faulted in) replaces the RSS.
    const cg = name ? this.cgroupStats(name)?.currentBytes : undefined;
    return Math.max(cg || rssOf(h.pid), h.buffers.hostBytes ? h.buffers.hostBytes + PROCESS_OVERHEAD : 0);
  }
}
