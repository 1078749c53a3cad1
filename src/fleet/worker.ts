/**
 * The recipe's worker role (issue 20; docs/fleets.md): `[fleet] role = "worker"` makes an image that
 * runs llama.cpp's ggml-rpc-server as aios-rpc-worker.service on `fleet.listen`, behind a firewall
 * generated from `fleet.heads` (src/fleet/firewall.ts) that aios-rpc-firewall.service loads at boot.
 * This module checks those keys (the recipe loader's cross-checks) and derives what the templates
 * need, so the checks and the rendered files cannot disagree.
 */
import { isIP } from 'node:net';
import { firewallProblems, workerNftRules } from './firewall.js';
import { WG_INTERFACE } from './wireguard.js';

/** The [fleet] table as the recipe schema gives it. */
export interface FleetRecipe {
  role: 'standalone' | 'worker';
  listen: string;
  heads: string[];
  interface?: string;
  cache: boolean;
  tunnel?: 'none' | 'wireguard';
}

/** What the templates render for a worker (templates/root: aios-rpc-worker.service, aios-rpc-firewall.service, etc/aios/rpc-worker.nft). */
export interface WorkerFiles {
  host: string;
  port: number;
  /** ggml-rpc-server's arguments after the binary. */
  args: string;
  /** The nftables ruleset ("" = no firewall: a worker on loopback with no heads). */
  nft: string;
  /** IPAddressAllow= of the unit (space-separated). */
  ipAllow: string;
}

const isLoopback4 = (h: string) => /^127\./.test(h);

/** "10.0.0.2:50052" → host and port, or undefined when it is not an IPv4 literal and a TCP port. */
export function parseListen(listen: string): { host: string; port: number } | undefined {
  const m = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(listen);
  if (!m || isIP(m[1]!) !== 4) return undefined;
  const port = Number(m[2]);
  return port >= 1 && port <= 65535 ? { host: m[1]!, port } : undefined;
}

/**
 * Problems with the [fleet] keys, each with the key it is about (the loader prefixes nothing: paths
 * are full, e.g. "fleet.heads"). `runtimeListens`: the runtime's listeners on the same machine
 * (when it runs there), which the worker's port must not take.
 */
export function fleetProblems(f: FleetRecipe, o: { llamaEnabled: boolean; llamaRpc: boolean; runtimeListens?: string[] }): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  if (f.role !== 'worker') {
    if (f.heads.length) out.push({ path: 'fleet.heads', message: 'only a worker has heads: set fleet.role = "worker" (or remove fleet.heads)' });
    if (f.interface !== undefined) out.push({ path: 'fleet.interface', message: 'only a worker has an interface to accept its heads on: set fleet.role = "worker" (or remove fleet.interface)' });
    return out;
  }
  if (!o.llamaEnabled || !o.llamaRpc) out.push({ path: 'fleet.role', message: 'a worker runs llama.cpp\'s ggml-rpc-server: it needs llama.enabled = true and llama.rpc = true' });
  const l = parseListen(f.listen);
  if (!l) out.push({ path: 'fleet.listen', message: `"${f.listen}" is not an IPv4 address and a port such as 10.0.0.2:50052 (an IP literal, never a name; the pinned ggml-rpc-server binds IPv4 only)` });
  f.heads.forEach((h, i) => {
    const addr = h.split('/')[0] ?? '';
    if (isIP(addr) === 6) out.push({ path: `fleet.heads.${i}`, message: `"${h}" is an IPv6 address: the pinned ggml-rpc-server listens on IPv4 only, so a head reaches it by an IPv4 address` });
    else if (firewallProblems({ port: 1, heads: [h] }).length) out.push({ path: `fleet.heads.${i}`, message: `"${h}" is not an IPv4 address or prefix such as 10.0.0.1 or 10.0.1.0/24 (addresses only: the firewall cannot trust names)` });
    else if (/\/0$/.test(h)) out.push({ path: `fleet.heads.${i}`, message: `"${h}" admits every address: name the heads (ggml-rpc-server has no authentication)` });
  });
  if (l && !isLoopback4(l.host) && !f.heads.length) {
    out.push({
      path: 'fleet.heads',
      message: `fleet.listen = "${f.listen}" is reachable from the network and ggml-rpc-server has no authentication: name the heads that may connect (fleet.heads = ["10.0.0.1"]; the image's firewall admits only them), or listen on 127.0.0.1`,
    });
  }
  if (l) {
    for (const r of o.runtimeListens ?? []) {
      const m = /^(.*):(\d+)$/.exec(r);
      if (!m || Number(m[2]) !== l.port) continue;
      const rh = m[1]!.replace(/^\[(.*)\]$/, '$1');
      if (rh === l.host || rh === '0.0.0.0' || rh === '::' || l.host === '0.0.0.0' || (rh === 'localhost' && isLoopback4(l.host))) {
        out.push({ path: 'fleet.listen', message: `port ${l.port} is already the runtime's (${r}): give the worker another port` });
      }
    }
  }
  return out;
}

/** The worker's rendered settings, or undefined when the recipe's machine is not a worker. Assumes fleetProblems found nothing. */
export function workerFiles(f: FleetRecipe): WorkerFiles | undefined {
  if (f.role !== 'worker') return undefined;
  const l = parseListen(f.listen);
  if (!l) throw new Error(`fleet.listen "${f.listen}" is not an IPv4 address and port`);
  // Through the WireGuard tunnel (fleet.tunnel): the heads are admitted on its interface only.
  const iface = f.tunnel === 'wireguard' ? WG_INTERFACE : f.interface;
  const nft = f.heads.length ? workerNftRules({ port: l.port, heads: f.heads, iface }) : '';
  const allow = [...(isLoopback4(l.host) ? ['localhost'] : []), ...f.heads];
  return { host: l.host, port: l.port, args: ['-H', l.host, '-p', String(l.port), ...(f.cache ? ['-c'] : [])].join(' '), nft, ipAllow: [...new Set(allow)].join(' ') };
}
