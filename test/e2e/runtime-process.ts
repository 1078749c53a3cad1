/**
 * The runtime daemon as its own process, for end-to-end tests that stop and start it again the way
 * systemd does (`systemctl restart`: SIGTERM, wait for the exit, a new process): `aios runtime serve
 * -c <config>`, its output collected, and a gRPC client that is ready when start() returns.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { connectRuntime, waitReady, type RuntimeClient } from '../../src/runtime/client.js';
import { REPO } from '../helpers.js';

export class RuntimeProcess {
  private child?: ChildProcess;
  private output = '';
  /** The client of the process started last (closed and replaced by the next start()). */
  client!: RuntimeClient;

  constructor(
    readonly config: string,
    readonly address: string,
  ) {}

  /** What the process started last wrote (stdout and stderr). */
  get log(): string {
    return this.output;
  }

  /** Starts the daemon and waits until its HealthCheck is SERVING (throws with its output if not). */
  async start(timeoutMs = 60_000): Promise<RuntimeClient> {
    this.output = '';
    const child = spawn('node', [join(REPO, 'bin/aios.js'), 'runtime', 'serve', '-c', this.config], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    child.stdout!.on('data', (d: Buffer) => (this.output += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.output += d.toString()));
    this.client?.close();
    this.client = connectRuntime(this.address);
    if (!(await waitReady(this.client, timeoutMs))) throw new Error(`the runtime did not become ready:\n${this.output}`);
    return this.client;
  }

  /** SIGTERM, and wait for the process to exit (nothing to do when it is not running). */
  async stop(): Promise<void> {
    const d = this.child;
    if (!d || d.exitCode !== null || d.signalCode !== null) return;
    const gone = new Promise((r) => d.once('exit', r));
    d.kill('SIGTERM');
    await gone;
  }

  /** stop(), and close the client. */
  async close(): Promise<void> {
    await this.stop();
    this.client?.close();
  }
}
