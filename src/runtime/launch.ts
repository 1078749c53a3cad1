/**
 * The real `Launcher`: llama-server on a loopback port with the model's fixed launch profile, its
 * stderr read for the buffer sizes it reports while loading, /health for readiness, and the memory
 * a ready child uses.
 */
import { spawn } from 'node:child_process';
import type { Launcher, LaunchProfile, ProcessHandle } from './child.js';
import { addBufferLine, emptyBuffers, PROCESS_OVERHEAD, rssOf } from './memory.js';
import { freePort } from '../util/net.js';
import { physicalCores } from '../util/cpu.js';

/** llama-server's command line for a profile. */
export function launchArgs(p: LaunchProfile, port: number): string[] {
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
  return args;
}

export class LlamaServerLauncher implements Launcher {
  /** A child started before the daemon was loaded (prelaunch()), waiting to be taken by the first start() it matches. */
  private early?: { args: string[]; port: number; proc: ProcessHandle };

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
    this.early = { args: launchArgs(profile, port), port, proc: this.launch(profile, port) };
  }

  /** Ends a prelaunched child that no start() took (the validated profile differed). */
  discardEarly(): void {
    this.early?.proc.kill('SIGKILL');
    this.early = undefined;
  }

  async start(profile: LaunchProfile): Promise<{ port: number; proc: ProcessHandle }> {
    const e = this.early;
    if (e && launchArgs(profile, e.port).join('\0') === e.args.join('\0')) {
      this.early = undefined;
      this.log(`${profile.name}: taking over llama-server pid ${e.proc.pid}, started early on port ${e.port}`);
      return { port: e.port, proc: e.proc };
    }
    const port = await freePort();
    return { port, proc: this.launch(profile, port) };
  }

  private launch(profile: LaunchProfile, port: number): ProcessHandle {
    const args = launchArgs(profile, port);
    this.log(`starting ${profile.name}: ${this.binary} ${args.join(' ')}`);
    const proc = spawn(this.binary, args, { stdio: ['ignore', 'ignore', 'pipe'] });
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
    const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
      proc.once('exit', (code, signal) => resolve({ code, signal }));
      // A binary that cannot be started at all ("error" without "exit").
      proc.once('error', (e) => {
        tail += `\n${e.message}`;
        if (proc.exitCode === null && proc.pid === undefined) resolve({ code: null, signal: null });
      });
    });
    return {
      pid: proc.pid ?? 0,
      exited,
      buffers,
      tail: () => tail,
      kill: (sig) => {
        if (proc.exitCode === null && proc.signalCode === null) proc.kill(sig);
      },
    };
  }

  async healthy(port: number): Promise<boolean> {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/health`, { signal: AbortSignal.timeout(2000) });
      return r.status === 200;
    } catch {
      return false;
    }
  }

  /**
   * What a ready child uses: its resident set now, or, when more, the buffers llama-server allocated
   * (warm-up touches only part of the compute buffer; a full micro-batch touches all of it) plus the
   * process's own code and heap.
   */
  measure(h: ProcessHandle): number {
    return Math.max(rssOf(h.pid), h.buffers.hostBytes ? h.buffers.hostBytes + PROCESS_OVERHEAD : 0);
  }
}
