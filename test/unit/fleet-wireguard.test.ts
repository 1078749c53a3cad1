/**
 * fleet.tunnel = "wireguard" in the recipe (src/fleet/wireguard.ts): the checks (exit 2, naming the
 * keys), what the templates render (systemd-networkd's netdev and network for aioswg0, no private key
 * anywhere: networkd reads the credential), and the worker's firewall on the tunnel's interface. The
 * tunnel itself carries a split model in test/e2e/fleet-wireguard.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { loadRecipe } from '../../src/config/load.js';
import { identity, templateContext } from '../../src/build/context.js';
import { renderTree } from '../../src/build/render.js';
import { paths } from '../../src/util/paths.js';
import { workerFiles } from '../../src/fleet/worker.js';
import { WG_KEY_CREDENTIAL, isWgKey, wgSetconf } from '../../src/fleet/wireguard.js';
import { inCidr, parseCidr4 } from '../../src/util/net.js';

const HEAD_PUB = 'K7EwWgeaOKPd9LNqWxuLOUWYKCXJx3PXIjBMsBWTtUk=';
const WORKER_PUB = 'iYcLGUlksGuPO7fvtT3uMsbaCbdoFD8HRX4xHRimDlw=';
const WORKER = ['fleet.role=worker', 'fleet.tunnel=wireguard', 'fleet.listen="10.77.0.2:50052"', 'fleet.heads=["10.77.0.1"]', `fleet.wireguard={ address = "10.77.0.2/24", peers = [{ public_key = "${HEAD_PUB}", allowed_ips = ["10.77.0.1/32"] }] }`];

const problems = (recipe: string, sets: string[]) =>
  loadRecipe(recipe, { sets }).then(
    () => [] as { path: string; message: string }[],
    (e: { exitCode: number; problems: { path: string; message: string }[] }) => {
      expect(e.exitCode).toBe(2);
      return e.problems;
    },
  );
const paths_ = (p: { path: string }[]) => p.map((x) => x.path);
async function rendered(recipe: string, sets: string[]): Promise<Record<string, string>> {
  const r = await loadRecipe(recipe, { sets });
  return Object.fromEntries((await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).map((f) => [f.path, f.content]));
}

describe('fleet.tunnel = "wireguard"', () => {
  it('knows keys, addresses and prefixes', () => {
    expect(isWgKey(HEAD_PUB)).toBe(true);
    expect(isWgKey(HEAD_PUB.slice(1))).toBe(false);
    expect(isWgKey('not a key')).toBe(false);
    expect(parseCidr4('10.77.0.2/24')).toEqual({ addr: '10.77.0.2', bits: 24 });
    expect(parseCidr4('10.77.0.2')).toEqual({ addr: '10.77.0.2', bits: 32 });
    expect(parseCidr4('10.77.0.2/33')).toBeUndefined();
    expect(parseCidr4('fd00::1/64')).toBeUndefined();
    expect(inCidr('10.77.0.1', '10.77.0.1/32')).toBe(true);
    expect(inCidr('10.77.0.9', '10.77.0.0/24')).toBe(true);
    expect(inCidr('10.78.0.1', '10.77.0.0/24')).toBe(false);
    expect(inCidr('10.0.0.0/8', '10.77.0.0/24')).toBe(false);
  });

  it("renders networkd's netdev and network for aioswg0, without a private key, and the worker's firewall on the tunnel", async () => {
    const f = await rendered('rpc-worker', WORKER);
    const netdev = f['etc/systemd/network/50-aios-wg.netdev']!;
    expect(netdev).toMatch(/^\[NetDev\]\nName=aioswg0\nKind=wireguard$/m);
    expect(netdev).toMatch(/^ListenPort=51820$/m);
    expect(netdev).toMatch(new RegExp(`^\\[WireGuardPeer\\]\\nPublicKey=${HEAD_PUB.replace(/[+/]/g, '\\$&')}\\nAllowedIPs=10\\.77\\.0\\.1/32$`, 'm'));
    // The key is a credential's name, never key material.
    expect(netdev).toMatch(/^PrivateKey=@network\.wireguard\.aios$/m);
    expect(WG_KEY_CREDENTIAL).toBe('network.wireguard.aios');
    expect(`opt/io.systemd.credentials/${WG_KEY_CREDENTIAL}`.length).toBeLessThanOrEqual(55); // QEMU's fw_cfg name limit
    expect(netdev.match(/[A-Za-z0-9+/]{43}=/g)).toEqual([HEAD_PUB]);
    expect(f['etc/systemd/network/50-aios-wg.network']).toMatch(/^\[Match\]\nName=aioswg0\n\n\[Network\]\nAddress=10\.77\.0\.2\/24$/m);
    expect(f['etc/aios/rpc-worker.nft']).toContain('iifname "aioswg0" tcp dport 50052 ip saddr { 10.77.0.1 } accept');
    expect(workerFiles((await loadRecipe('rpc-worker', { sets: WORKER })).fleet)).toMatchObject({ host: '10.77.0.2', ipAllow: '10.77.0.1' });
    // A head: the tunnel, and its workers at their tunnel addresses; a peer outside the tunnel's prefix gets a route.
    const head = await rendered('default', ['fleet.tunnel=wireguard', `fleet.wireguard={ address = "10.77.0.1/24", peers = [{ public_key = "${WORKER_PUB}", allowed_ips = ["10.77.0.2/32", "10.78.0.0/24"], endpoint = "192.168.7.2:51820", keepalive = 25 }] }`, 'runtime.rpc_workers=[{ address = "10.77.0.2:50052" }]', 'models=[{ name = "aios-tiny", level = "operational", source = "synth", rpc = true }]']);
    expect(head['etc/systemd/network/50-aios-wg.netdev']).toMatch(/^Endpoint=192\.168\.7\.2:51820\nPersistentKeepalive=25$/m);
    expect(head['etc/systemd/network/50-aios-wg.network']).toMatch(/\[Route\]\nDestination=10\.78\.0\.0\/24\n$/);
    expect(head['etc/aios/config.toml']).toContain('address = "10.77.0.2:50052"');
    // Nothing of it without the tunnel.
    const plain = await rendered('default', []);
    expect(Object.keys(plain).filter((p) => p.includes('aios-wg'))).toEqual([]);
  });

  it('gives the same tunnel as `wg setconf` input for a peer that is not an aios image, without a private key', async () => {
    const r = await loadRecipe('rpc-worker', { sets: WORKER });
    expect(wgSetconf(r.fleet.wireguard!)).toBe(`[Interface]\nListenPort = 51820\n\n[Peer]\nPublicKey = ${HEAD_PUB}\nAllowedIPs = 10.77.0.1/32\n`);
  });

  it('refuses what cannot work (exit 2, naming the keys)', async () => {
    const without = (k: string) => WORKER.filter((s) => !s.startsWith(k));
    const wg = (x: string) => [...without('fleet.wireguard'), `fleet.wireguard=${x}`];
    expect(paths_(await problems('rpc-worker', without('fleet.wireguard')))).toEqual(['fleet.wireguard']);
    expect(paths_(await problems('rpc-worker', without('fleet.tunnel')))).toContain('fleet.wireguard');
    expect(paths_(await problems('rpc-worker', wg(`{ address = "10.77.0.2", peers = [{ public_key = "${HEAD_PUB}", allowed_ips = ["10.77.0.1/32"] }] }`)))).toContain('fleet.wireguard.address');
    expect(paths_(await problems('rpc-worker', wg('{ address = "10.77.0.2/24", peers = [{ public_key = "secret", allowed_ips = ["10.77.0.1/32"] }] }')))).toContain('fleet.wireguard.peers.0.public_key');
    expect(paths_(await problems('rpc-worker', wg(`{ address = "10.77.0.2/24", peers = [{ public_key = "${HEAD_PUB}", allowed_ips = ["0.0.0.0/0"] }] }`)))).toContain('fleet.wireguard.peers.0.allowed_ips.0');
    expect(paths_(await problems('rpc-worker', wg(`{ address = "10.77.0.2/24", peers = [{ public_key = "${HEAD_PUB}", allowed_ips = ["10.77.0.1/32"] }, { public_key = "${HEAD_PUB}", allowed_ips = ["10.77.0.3/32"] }] }`)))).toContain('fleet.wireguard.peers.1.public_key');
    // The worker listens on its tunnel address, admits its heads through the tunnel, and its heads are tunnel peers.
    expect(await problems('rpc-worker', [...without('fleet.listen'), 'fleet.listen="192.168.7.2:50052"'])).toEqual([expect.objectContaining({ path: 'fleet.listen', message: expect.stringMatching(/fleet\.listen = "10\.77\.0\.2:50052"/) })]);
    expect(paths_(await problems('rpc-worker', [...WORKER, 'fleet.interface=eth1']))).toEqual(['fleet.interface']);
    expect(await problems('rpc-worker', [...without('fleet.heads'), 'fleet.heads=["192.168.7.1"]'])).toEqual([expect.objectContaining({ path: 'fleet.heads.0', message: expect.stringMatching(/not inside any peer's allowed_ips/) })]);
    // The CI's tiny kernel has no WireGuard.
    expect(paths_(await problems('rpc-worker', [...WORKER, 'kernel.build=true', 'kernel.base=tiny']))).toContain('fleet.tunnel');
    // A head's workers must be tunnel peers.
    expect(await problems('default', ['fleet.tunnel=wireguard', `fleet.wireguard={ address = "10.77.0.1/24", peers = [{ public_key = "${WORKER_PUB}", allowed_ips = ["10.77.0.2/32"] }] }`, 'runtime.rpc_workers=[{ address = "192.168.7.2:50052" }]', 'models=[{ name = "aios-tiny", level = "operational", source = "synth", rpc = true }]'])).toEqual([
      expect.objectContaining({ path: 'runtime.rpc_workers.0.address', message: expect.stringMatching(/not inside any fleet\.wireguard peer's allowed_ips/) }),
    ]);
  });
});
