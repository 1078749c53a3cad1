/**
 * Stand-in machines in network namespaces this process creates (`ip netns` + a veth pair each), for
 * the fleet tests (test/e2e/fleet-rpc.test.ts) and `npm run bench:fleet`: nothing else is ever
 * addressed. Host i is 10.231.<i>.2 inside its namespace; this side of its veth is 10.231.<i>.1.
 * Every name carries this process's id, so a run never touches another's, and `cleanup()` deletes
 * them all; `sweep()` removes the leftovers of an earlier run that was killed. Call cleanup from
 * afterAll (or a finally), which runs even when a test or its setup failed. Needs root (ip netns).
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';

const PREFIX = 'aiosf';

export interface NsHost {
  ns: string;
  /** Its address inside the namespace. */
  addr: string;
  /** This side's address on its veth (the head's address as the host sees it). */
  peer: string;
}

const ip = (...args: string[]) => execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

export class NetnsLab {
  readonly tag = `${PREFIX}${process.pid % 100000}`;
  readonly hosts: NsHost[] = [];
  private procs = new Set<ChildProcess>();

  /** Namespaces and veths of earlier runs of this test whose process is gone. */
  static sweep(): void {
    for (const line of ip('netns', 'list').split('\n')) {
      const m = new RegExp(`^(${PREFIX}(\\d+)n\\d+)\\b`).exec(line);
      if (!m) continue;
      const pid = Number(m[2]);
      let alive = false;
      if (pid !== process.pid % 100000) {
        try {
          process.kill(pid, 0);
          alive = true;
        } catch {
          /* gone: its namespaces are leftovers */
        }
      }
      if (!alive) ip('netns', 'del', m[1]!);
    }
  }

  /** Host i (1-based): its namespace, the veth pair, addresses, loopback up; checks the route goes into it. */
  add(i: number): NsHost {
    const ns = `${this.tag}n${i}`;
    const hostIf = `${this.tag}h${i}`;
    const nsIf = `${this.tag}p${i}`;
    const h: NsHost = { ns, addr: `10.231.${i}.2`, peer: `10.231.${i}.1` };
    this.hosts.push(h);
    ip('netns', 'add', ns);
    ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
    ip('link', 'set', nsIf, 'netns', ns);
    ip('addr', 'add', `${h.peer}/24`, 'dev', hostIf);
    ip('link', 'set', hostIf, 'up');
    ip('-n', ns, 'addr', 'add', `${h.addr}/24`, 'dev', nsIf);
    ip('-n', ns, 'link', 'set', nsIf, 'up');
    ip('-n', ns, 'link', 'set', 'lo', 'up');
    // Never send anything anywhere else: the address must route into the veth just made.
    const route = ip('route', 'get', h.addr);
    if (!route.includes(`dev ${hostIf}`)) throw new Error(`${h.addr} does not route into ${hostIf}: ${route}`);
    return h;
  }

  /** A further address on this side of host i's veth (a machine that is not a configured head). */
  addPeerAddress(i: number, addr: string): void {
    ip('addr', 'add', `${addr}/24`, 'dev', `${this.tag}h${i}`);
  }

  /** Runs a command inside a host's namespace (its process is ended by cleanup()). */
  spawnIn(h: NsHost, argv: string[]): ChildProcess {
    const p = spawn('ip', ['netns', 'exec', h.ns, ...argv], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.procs.add(p);
    p.once('exit', () => this.procs.delete(p));
    return p;
  }

  /** A command's output inside a host's namespace (nft, ss…). */
  execIn(h: NsHost, argv: string[], input?: string): string {
    return execFileSync('ip', ['netns', 'exec', h.ns, ...argv], { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });
  }

  /** Kills what it started and deletes its namespaces (the veths go with them). */
  async cleanup(): Promise<void> {
    for (const p of this.procs) p.kill('SIGKILL');
    await Promise.all([...this.procs].map((p) => new Promise((r) => (p.exitCode !== null || p.signalCode !== null ? r(null) : p.once('exit', r)))));
    for (const h of this.hosts) {
      try {
        ip('netns', 'del', h.ns);
      } catch {
        /* already gone */
      }
    }
    this.hosts.length = 0;
  }
}

/** Resolves once host:port accepts a TCP connection (or rejects after `ms`). */
export async function waitForPort(host: string, port: number, ms = 10_000, o: { localAddress?: string } = {}): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = connect({ host, port, ...o });
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() - t0 > ms) throw new Error(`${host}:${port} did not accept a connection within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** How a TCP connection attempt ends: "connected", or the error code (ECONNREFUSED, ETIMEDOUT…). */
export function tryConnect(host: string, port: number, o: { localAddress?: string; timeoutMs?: number } = {}): Promise<string> {
  return new Promise((resolve) => {
    const s = connect({ host, port, ...(o.localAddress ? { localAddress: o.localAddress } : {}) });
    const t = setTimeout(() => {
      s.destroy();
      resolve('ETIMEDOUT');
    }, o.timeoutMs ?? 3000);
    s.once('connect', () => {
      clearTimeout(t);
      s.destroy();
      resolve('connected');
    });
    s.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(t);
      resolve(e.code ?? e.message);
    });
  });
}
