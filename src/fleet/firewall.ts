/**
 * The firewall of an RPC worker (issue 20; docs/fleets.md): ggml-rpc-server has no authentication
 * and no encryption (llama.cpp's tools/rpc/README.md: "Never run the RPC server on an open network"),
 * so a worker admits connections to its port only from its configured heads. Generated from the
 * config as an nftables ruleset of its own table, so it neither replaces nor depends on other rules:
 * loading it again replaces only this table. Everything but the worker's port is left as it is.
 */
import { isIP } from 'node:net';

export interface WorkerFirewall {
  /** The worker's TCP port (ggml-rpc-server -p). */
  port: number;
  /** Addresses (or CIDR prefixes) of the heads that may connect. */
  heads: string[];
  /** With a WireGuard tunnel: the tunnel's interface; the port is then open only on it. */
  iface?: string;
  /** nftables table name. */
  table?: string;
}

const family = (a: string): 4 | 6 | 0 => {
  const [addr, bits] = a.split('/');
  const f = isIP(addr ?? '');
  if (f === 0) return 0;
  if (bits !== undefined && (!/^\d+$/.test(bits) || Number(bits) > (f === 4 ? 32 : 128))) return 0;
  return f as 4 | 6;
};

/** Problems with a firewall's settings (empty = none). */
export function firewallProblems(f: WorkerFirewall): string[] {
  const out: string[] = [];
  if (!Number.isInteger(f.port) || f.port < 1 || f.port > 65535) out.push(`port ${f.port} is not a TCP port`);
  if (!f.heads.length) out.push('no heads: a worker must name the addresses of the heads that may connect (nobody else may)');
  for (const h of f.heads) if (!family(h)) out.push(`head "${h}" is not an IP address or prefix (addresses only: the firewall cannot trust names)`);
  if (f.iface !== undefined && !/^[A-Za-z0-9_.-]{1,15}$/.test(f.iface)) out.push(`interface "${f.iface}" is not an interface name`);
  return out;
}

/**
 * The ruleset (`nft -f` input): in its own inet table, a connection to the worker's port is
 * accepted from a head (and, with `iface`, only through that interface) and refused with a TCP
 * reset from anyone else, so a misconfigured head learns at once instead of timing out.
 */
export function workerNftRules(f: WorkerFirewall): string {
  const problems = firewallProblems(f);
  if (problems.length) throw new Error(`worker firewall: ${problems.join('; ')}`);
  const table = f.table ?? 'aios_rpc_worker';
  const v4 = f.heads.filter((h) => family(h) === 4);
  const v6 = f.heads.filter((h) => family(h) === 6);
  const on = f.iface ? `iifname "${f.iface}" ` : '';
  const lines = [
    '#!/usr/sbin/nft -f',
    `# aios RPC worker: only the configured heads may connect to ggml-rpc-server on port ${f.port}.`,
    '# Generated from the config (aios fleet firewall); loading it again replaces this table only.',
    `table inet ${table}`,
    `delete table inet ${table}`,
    `table inet ${table} {`,
    '  chain input {',
    '    type filter hook input priority filter - 1; policy accept;',
    ...(v4.length ? [`    ${on}tcp dport ${f.port} ip saddr { ${v4.join(', ')} } accept`] : []),
    ...(v6.length ? [`    ${on}tcp dport ${f.port} ip6 saddr { ${v6.join(', ')} } accept`] : []),
    `    tcp dport ${f.port} counter reject with tcp reset`,
    '  }',
    '}',
    '',
  ];
  return lines.join('\n');
}
