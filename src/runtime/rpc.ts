/**
 * A model split across llama.cpp RPC workers (issue 20; docs/fleets.md). aios adds no protocol of
 * its own: each worker runs llama.cpp's `ggml-rpc-server`, the head's llama-server gets
 * `--rpc host:port,…` and llama.cpp splits the layers (and their KV cache) across the workers in
 * proportion to the free memory each reports. This module is what the head's runtime needs around
 * that:
 *
 * - the workers' memory, asked with llama.cpp's own client (`llama-server --rpc … --list-devices`
 *   prints each RPC device's total and free memory and exits), and the admission check: the share
 *   llama.cpp will put on each worker must fit what that worker has (capped by the config's
 *   `memory`), else the load is refused with the numbers;
 * - reachability: a TCP connect to a worker's port (refused or timed out = gone);
 * - a worker lost under a loaded model: its connection from the head in CLOSE_WAIT (the worker's end
 *   closed), read from /proc/net/tcp{,6}, without touching the worker.
 *
 * One constraint of the pinned llama.cpp shapes all of it: ggml-rpc-server serves one connection at
 * a time (accept, serve until it closes, accept the next; listen backlog 1). While a head's
 * llama-server holds a worker, nothing else gets an answer from it (a probe's connect still
 * completes in the backlog), so the memory is asked before the load, never during, and one worker
 * serves one split model of one head at a time.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { isIP } from 'node:net';
import { Code, RuntimeError } from './errors.js';

const MiB = 1024 * 1024;

/** "10.0.0.2:50052" or "[fd00::2]:50052" → host and port; undefined when it is not an IP literal and a port. */
export function parseWorkerAddress(a: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(a);
  if (!m) return undefined;
  const host = m[1] ?? m[2]!;
  const port = Number(m[3]);
  if (!isIP(host) || port < 1 || port > 65535) return undefined;
  return { host, port };
}

/** Undefined when a TCP connection to the worker's port opens within `timeoutMs`; else why not ("connection refused", "no answer within 1000 ms"). */
export function probeWorker(address: string, timeoutMs = 1000): Promise<string | undefined> {
  const a = parseWorkerAddress(address);
  if (!a) return Promise.resolve(`"${address}" is not an IP address and port`);
  return new Promise((resolve) => {
    const s = connect({ host: a.host, port: a.port });
    const done = (why: string | undefined) => {
      clearTimeout(t);
      s.destroy();
      resolve(why);
    };
    const t = setTimeout(() => done(`no answer within ${timeoutMs} ms`), timeoutMs);
    s.once('connect', () => done(undefined));
    s.once('error', (e: NodeJS.ErrnoException) => done(e.code === 'ECONNREFUSED' ? 'connection refused' : e.code === 'EHOSTUNREACH' ? 'host unreachable' : e.code === 'ENETUNREACH' ? 'network unreachable' : (e.code ?? e.message)));
  });
}

/** One device a worker exposes, as llama.cpp reports it (MiB precision). */
export interface WorkerDevice {
  /** The worker's address (host:port as given to --rpc). */
  address: string;
  /** llama.cpp's device name: "RPC0". */
  device: string;
  description: string;
  totalBytes: number;
  freeBytes: number;
}

/**
 * `llama-server --list-devices` output → the RPC devices (the pinned llama.cpp names each "RPC<n>"
 * and describes it by its worker's endpoint; a worker with two GPUs is two devices):
 * "  RPC0: 127.0.0.1:50052 (24105 MiB, 24105 MiB free)".
 */
export function parseListDevices(out: string): WorkerDevice[] {
  const devs: WorkerDevice[] = [];
  for (const line of out.split('\n')) {
    const m = /^\s*(RPC\d+):\s*(\S+)\s*\((\d+) MiB, (\d+) MiB free\)\s*$/.exec(line);
    if (m) devs.push({ device: m[1]!, address: m[2]!, description: m[2]!, totalBytes: Number(m[3]) * MiB, freeBytes: Number(m[4]) * MiB });
  }
  return devs;
}

/**
 * Asks the workers for their devices' memory with llama.cpp's own RPC client: the head's
 * llama-server with `--rpc <workers> --list-devices` (it connects, asks, prints and exits). A worker
 * that is serving another head does not answer (one connection at a time): that is a timeout here.
 */
export function queryWorkers(llamaServer: string, addresses: string[], timeoutMs = 10_000): Promise<WorkerDevice[]> {
  return new Promise((resolve, reject) => {
    const p = spawn(llamaServer, ['--rpc', addresses.join(','), '--list-devices'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
    const t = setTimeout(() => {
      p.kill('SIGKILL');
      reject(new Error(`no answer within ${timeoutMs} ms (ggml-rpc-server serves one connection at a time: is another head, or a stale connection, holding a worker?)`));
    }, timeoutMs);
    p.once('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
    p.once('exit', (code, signal) => {
      clearTimeout(t);
      const devs = parseListDevices(out);
      if (code === 0) resolve(devs);
      else reject(new Error(`llama-server --list-devices ${signal ?? `exit ${code}`}: ${err.trim().split('\n').slice(-2).join(' | ') || 'no output'}`));
    });
  });
}

/** A worker as admission sees it. */
export interface WorkerRoom {
  address: string;
  /** Free memory it reports (all its devices). */
  reportedFreeBytes: number;
  /** What the head may use there: min(reported free, the config's memory cap). */
  availableBytes: number;
  /** The config's cap (0 = none). */
  capBytes: number;
}

export interface SplitPlan {
  fits: boolean;
  /** Bytes llama.cpp will put on each worker (in proportion to the free memory each reports), what the head may use there and what the worker reported free. */
  shares: { address: string; bytes: number; availableBytes: number; reportedFreeBytes: number }[];
}

/** llama.cpp's default split (by reported free memory) of `needBytes` over the workers, and whether each share fits. */
export function planSplit(needBytes: number, workers: WorkerRoom[]): SplitPlan {
  const total = workers.reduce((s, w) => s + w.reportedFreeBytes, 0);
  const shares = workers.map((w) => ({ address: w.address, bytes: total > 0 ? Math.ceil((needBytes * w.reportedFreeBytes) / total) : needBytes, availableBytes: w.availableBytes, reportedFreeBytes: w.reportedFreeBytes }));
  return { fits: total > 0 && shares.every((s) => s.bytes <= s.availableBytes), shares };
}

/** Local and remote address:port of every TCP connection in a state, from /proc/net/tcp and tcp6 (this network namespace). */
function tcpTable(state: string, read: (f: string) => string = (f) => readFileSync(f, 'utf8')): { local: string; remote: string }[] {
  const out: { local: string; remote: string }[] = [];
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = read(f);
    } catch {
      continue;
    }
    for (const line of text.split('\n').slice(1)) {
      const c = line.trim().split(/\s+/);
      if (c.length < 4 || c[3] !== state) continue;
      out.push({ local: hexAddress(c[1]!), remote: hexAddress(c[2]!) });
    }
  }
  return out;
}

/** /proc/net/tcp's "0100007F:C350" (little-endian words) → "127.0.0.1:50000"; v4-mapped v6 → the v4 form. */
export function hexAddress(h: string): string {
  const [a, p] = h.split(':') as [string, string];
  const port = parseInt(p, 16);
  if (a.length === 8) return `${bytesLE(a).join('.')}:${port}`;
  const words = a.match(/.{8}/g)!.map((w) => bytesLE(w));
  const bytes = words.flat();
  if (bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 255 && bytes[11] === 255) return `${bytes.slice(12).join('.')}:${port}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((bytes[i]! << 8) | bytes[i + 1]!).toString(16));
  return `[${groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::')}]:${port}`;
}
const bytesLE = (w: string) => [6, 4, 2, 0].map((i) => parseInt(w.slice(i, i + 2), 16));

/** Normalised "host:port" for comparing with /proc's form (IPv6 compressed the same way). */
function normal(address: string): string {
  const a = parseWorkerAddress(address);
  if (!a) return address;
  if (isIP(a.host) === 4) return `${a.host}:${a.port}`;
  // Expand, then compress like hexAddress does.
  const [head, tail] = a.host.split('::') as [string, string | undefined];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const full = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  const groups = full.map((g) => parseInt(g || '0', 16).toString(16));
  return `[${groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::')}]:${a.port}`;
}

/**
 * The workers whose end of a connection from this host closed while this side still holds it
 * (CLOSE_WAIT): the worker process died or restarted under a loaded split model. llama-server only
 * notices on its next use of the connection (and then aborts), so the health loop looks for it.
 */
export function closedWorkers(addresses: string[], read?: (f: string) => string): string[] {
  const closed = new Set(tcpTable('08', read).map((c) => c.remote));
  return addresses.filter((a) => closed.has(normal(a)));
}

/** "24000 MiB"-style figure for messages. */
export const mibOf = (b: number) => `${Math.round(b / MiB)} MiB`;

/** A configured worker ([[runtime.rpc_workers]]). */
export interface RpcWorkerSetting {
  address: string;
  /** Most the head may use there (0 = what the worker reports free). */
  capBytes: number;
}

export interface RpcWorkersOptions {
  llamaServer: string;
  workers: RpcWorkerSetting[];
  log?: (s: string) => void;
  probeTimeoutMs?: number;
  queryTimeoutMs?: number;
  /** Replaceable for unit tests. */
  probe?: (address: string, timeoutMs: number) => Promise<string | undefined>;
  query?: (llamaServer: string, addresses: string[], timeoutMs: number) => Promise<WorkerDevice[]>;
  closed?: (addresses: string[]) => string[];
}

/** The head's view of its RPC workers: reachability, memory at admission, workers lost under a loaded model. */
export class RpcWorkers {
  /** The last memory answer of each worker (for logs and status). */
  readonly last = new Map<string, { devices: WorkerDevice[]; at: number }>();
  /** Workers the health loop saw go away under a loaded model, with why (until a probe reaches them again). */
  private lost = new Map<string, string>();

  constructor(private o: RpcWorkersOptions) {}

  get addresses(): string[] {
    return this.o.workers.map((w) => w.address);
  }

  /** Why the first of `addresses` that cannot be reached cannot ("rpc worker 10.0.0.2:50052 is unreachable: connection refused"), or undefined. */
  async unreachable(addresses: string[]): Promise<string | undefined> {
    const probe = this.o.probe ?? probeWorker;
    const why = await Promise.all(addresses.map((a) => probe(a, this.o.probeTimeoutMs ?? 1000)));
    const down = addresses.map((a, i) => (why[i] ? `rpc worker ${a} is unreachable: ${why[i]}` : '')).filter(Boolean);
    for (const [i, a] of addresses.entries()) if (!why[i]) this.lost.delete(a);
    return down.length ? down.join('; ') : undefined;
  }

  /**
   * Whether `needBytes` (the model's share that leaves the head: its offloaded layers, their KV
   * cache and compute buffers) fits across `addresses` as llama.cpp will split it: throws
   * UNAVAILABLE naming a worker that cannot be reached or does not answer, RESOURCE_EXHAUSTED with
   * each worker's share and room when a share does not fit.
   */
  async admit(model: string, addresses: string[], needBytes: number): Promise<SplitPlan> {
    const down = await this.unreachable(addresses);
    if (down) throw new RuntimeError(Code.UNAVAILABLE, `cannot load ${model}: ${down}`);
    let devices: WorkerDevice[];
    try {
      devices = await (this.o.query ?? queryWorkers)(this.o.llamaServer, addresses, this.o.queryTimeoutMs ?? 10_000);
    } catch (e) {
      throw new RuntimeError(Code.UNAVAILABLE, `cannot load ${model}: asking rpc workers ${addresses.join(', ')} for their memory failed: ${(e as Error).message}`);
    }
    const rooms: WorkerRoom[] = [];
    for (const a of addresses) {
      const devs = devices.filter((d) => d.address === a);
      if (!devs.length) throw new RuntimeError(Code.UNAVAILABLE, `cannot load ${model}: rpc worker ${a} reported no device`);
      this.last.set(a, { devices: devs, at: Date.now() });
      const free = devs.reduce((s, d) => s + d.freeBytes, 0);
      const cap = this.o.workers.find((w) => w.address === a)?.capBytes ?? 0;
      rooms.push({ address: a, reportedFreeBytes: free, capBytes: cap, availableBytes: cap ? Math.min(cap, free) : free });
    }
    const plan = planSplit(needBytes, rooms);
    const detail = plan.shares
      .map((s, i) => `${s.address} ${mibOf(s.bytes)} of ${mibOf(s.availableBytes)} (reports ${mibOf(rooms[i]!.reportedFreeBytes)} free${rooms[i]!.capBytes ? `, memory = ${mibOf(rooms[i]!.capBytes)}` : ''})`)
      .join(', ');
    if (!plan.fits) {
      throw new RuntimeError(
        Code.RESOURCE_EXHAUSTED,
        `not enough memory on the rpc workers to load ${model}: needs ${mibOf(needBytes)} there (estimated), which llama.cpp splits by the free memory each reports: ${detail}`,
      );
    }
    this.o.log?.(`${model}: split across rpc workers: ${detail}`);
    return plan;
  }

  /** Workers of `addresses` whose connection from the head closed (checked by the health loop); remembered as lost. */
  lostUnder(addresses: string[]): string[] {
    const gone = (this.o.closed ?? closedWorkers)(addresses);
    for (const a of gone) this.lost.set(a, 'it closed its connection (its ggml-rpc-server ended or restarted)');
    return gone;
  }

  /** Why a split model's head process ended, as far as its workers tell: a worker unreachable now, or one seen lost. */
  async exitCause(addresses: string[]): Promise<string | undefined> {
    const lost = addresses.filter((a) => this.lost.has(a)).map((a) => `rpc worker ${a} went away (${this.lost.get(a)})`);
    const down = await this.unreachable(addresses);
    if (down) return down;
    return lost.length ? lost.join('; ') : undefined;
  }
}
