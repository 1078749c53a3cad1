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
  constructor(
    private binary: string,
    private log: (s: string) => void = () => {},
  ) {}

  freePort(): Promise<number> {
    return freePort();
  }

  launch(profile: LaunchProfile, port: number): ProcessHandle {
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
