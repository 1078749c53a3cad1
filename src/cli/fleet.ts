/**
 * `aios fleet`: what several aios nodes need around them (issue 20; docs/fleets.md), printed for
 * the operator to install: the balancer in front of many nodes (`lb-config`, nginx) and an RPC
 * worker's firewall (`firewall`, nftables).
 */
import type { Command } from 'commander';
import { nginxConfig } from '../fleet/lb.js';
import { workerNftRules } from '../fleet/firewall.js';
import { UserError } from '../util/errors.js';
import { out } from './common.js';

const collect = (v: string, acc: string[]) => [...acc, v];

export function registerFleet(p: Command): void {
  const f = p.command('fleet').description('several aios nodes: the balancer in front of them, an RPC worker\'s firewall');
  f.command('lb-config')
    .description('print an nginx configuration (Debian nginx-light) that puts the nodes\' OpenAI-compatible HTTP APIs behind one endpoint: a node that refuses, fails or answers 429/502/503/504 is skipped for --fail-timeout and the request goes to the next node')
    .requiredOption('--node <host:port>', 'a node\'s runtime.http_listen (repeatable)', collect, [])
    .option('--listen <host:port>', 'where the balancer listens', '127.0.0.1:8000')
    .option('--state-dir <dir>', 'nginx\'s pid file, logs and temp files', '/var/lib/aios-lb')
    .option('--ca <file>', 'the nodes serve HTTPS (their HTTP API beyond loopback does): verify them against this CA (the fleet\'s runtime.pki ca.crt)')
    .option('--fail-timeout <duration>', 'how long a failed or busy node is skipped', '10s')
    .option('--tries <n>', 'most nodes one request is tried on (default: min(3, nodes))')
    .option('--user <name>', 'the user nginx\'s workers run as', 'www-data')
    .action((o: { node: string[]; listen: string; stateDir: string; ca?: string; failTimeout: string; tries?: string; user: string }) => {
      try {
        out(nginxConfig({ nodes: o.node, listen: o.listen, stateDir: o.stateDir, caFile: o.ca, failTimeout: o.failTimeout, tries: o.tries === undefined ? undefined : Number(o.tries), user: o.user }).trimEnd());
      } catch (e) {
        throw new UserError((e as Error).message, 2);
      }
    });
  f.command('firewall')
    .description('print the nftables ruleset of an RPC worker: only the heads may connect to its ggml-rpc-server port, everyone else gets a TCP reset (load it with nft -f)')
    .requiredOption('--head <address>', 'a head\'s IP address or prefix (repeatable)', collect, [])
    .option('--port <n>', 'the worker\'s port (ggml-rpc-server -p)', '50052')
    .option('--iface <name>', 'accept only through this interface (the WireGuard tunnel\'s)')
    .action((o: { head: string[]; port: string; iface?: string }) => {
      try {
        out(workerNftRules({ heads: o.head, port: Number(o.port), iface: o.iface }).trimEnd());
      } catch (e) {
        throw new UserError((e as Error).message, 2);
      }
    });
}
