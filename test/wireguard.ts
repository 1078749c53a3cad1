/**
 * What the WireGuard tests share (test/e2e/fleet-wireguard*.test.ts): keys made by `wg genkey` in
 * files of the test (0600, never in a recipe), and a userspace WireGuard interface (wireguard-go,
 * Debian's) on this side configured from aios's own `wg setconf` text.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A command's trimmed output (throws on a non-zero exit). */
export const sh = (cmd: string, args: string[], input?: string): string => execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] }).trim();

/** A private key in <dir>/<name>.key and its public key. */
export function wgKey(dir: string, name: string): { file: string; pub: string } {
  const priv = sh('wg', ['genkey']);
  const file = join(dir, `${name}.key`);
  writeFileSync(file, priv + '\n', { mode: 0o600 });
  return { file, pub: sh('wg', ['pubkey'], priv + '\n') };
}

/** Resolves with f()'s first truthy value, polling every `every` ms; rejects after `ms`. */
export async function until<T>(f: () => T | undefined | false, what: string, ms = 15_000, every = 100): Promise<T> {
  const t0 = Date.now();
  for (;;) {
    const v = f();
    if (v) return v;
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, every));
  }
}

/** Whether a network interface exists (in namespace `ns`, else this one). */
export function hasLink(name: string, ns?: string): boolean {
  try {
    sh('ip', [...(ns ? ['-n', ns] : []), 'link', 'show', name]);
    return true;
  } catch {
    return false;
  }
}

/**
 * A WireGuard interface on this side: wireguard-go in the foreground (its process: kill it to remove
 * the interface), `setconf` (wgSetconf's text, written to <dir>/<name>.conf), the private key file,
 * the address, up.
 */
export async function hostTunnel(o: { name: string; dir: string; setconf: string; keyFile: string; address: string }): Promise<ChildProcess> {
  const p = spawn('wireguard-go', ['-f', o.name], { stdio: 'ignore' });
  await until(() => hasLink(o.name), `${o.name} on this side`);
  const conf = join(o.dir, `${o.name}.conf`);
  writeFileSync(conf, o.setconf);
  sh('wg', ['setconf', o.name, conf]);
  sh('wg', ['set', o.name, 'private-key', o.keyFile]);
  sh('ip', ['addr', 'add', o.address, 'dev', o.name]);
  sh('ip', ['link', 'set', o.name, 'up']);
  return p;
}
