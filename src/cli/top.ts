/**
 * `aios top`: the full-screen control panel of a running aios-runtime (src/top/; loaded only when
 * the command runs). `--once [--json]` prints one snapshot for scripts.
 */
import { Option, type Command } from 'commander';
import { UserError } from '../util/errors.js';
import { out } from './common.js';
import { tlsOf } from './runtime.js';

/** The runtime runs on this host: a unix socket or a loopback address (then /proc describes its machine). */
export const isLocalAddress = (a: string): boolean => a.startsWith('unix:') || /^(localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\]|::1)(:\d+)?$/i.test(a);

interface TopCliOptions {
  address: string;
  tlsDir?: string;
  tlsServerName?: string;
  interval: number;
  once?: boolean;
  json?: boolean;
}

export function registerTop(p: Command): void {
  p.command('top')
    .description('live control panel of a running aios-runtime: models (state, slots, queues, tokens/s, time to first token, memory), the machine; keys load/unload/restart')
    .option('-a, --address <addr>', 'runtime address: host:port or unix:/path', 'unix:/run/aios/runtime.sock')
    .addOption(new Option('--tls-dir <dir>', 'mutual TLS for a host:port address: a dir with ca.crt, client.crt, client.key (aios build writes out/<name>.pki/)').env('AIOS_TLS_DIR'))
    .option('--tls-server-name <name>', "the name the runtime's certificate carries, when --address is not one of them (e.g. an IP not in its SANs)")
    .option('-n, --interval <seconds>', 'refresh interval', (v) => {
      const n = Number(v);
      if (!Number.isFinite(n) || n < 0.2 || n > 3600) throw new UserError(`-n: an interval in seconds from 0.2 to 3600 (got "${v}")`, 2);
      return n;
    }, 1)
    .option('--once', 'print one snapshot (the screen as text) and exit')
    .option('--json', 'with --once: the snapshot as JSON')
    .action(async (o: TopCliOptions) => {
      const { runTop, topOnce } = await import('../top/app.js');
      const opts = { address: o.address, tls: tlsOf(o), intervalMs: Math.round(o.interval * 1000), local: isLocalAddress(o.address), color: process.stdout.isTTY && !process.env.NO_COLOR };
      if (o.once || o.json) {
        const r = await topOnce(opts, !!o.json, process.stdout.columns || 80, process.stdout.rows || 24);
        out(r.text);
        if (!r.connected) process.exitCode = 1;
        return;
      }
      if (!process.stdin.isTTY || !process.stdout.isTTY) throw new UserError('aios top needs a terminal; for scripts use --once [--json]', 2);
      await runTop(opts);
    });
}
