/**
 * `fleet.tunnel = "wireguard"` (issue 20; docs/fleets.md): the RPC traffic between heads and workers
 * goes through a WireGuard tunnel, which the RPC protocol itself cannot give (it has no
 * authentication and no encryption). The image gets a systemd-networkd WireGuard netdev
 * (`50-aios-wg.netdev`, interface `aioswg0`) and its address (`50-aios-wg.network`); its private key
 * is never in the recipe, the image or the manifest: networkd reads it from the systemd credential
 * `network.wireguard.aios` (`PrivateKey=@network.wireguard.aios`; networkd imports
 * `network.wireguard.*` credentials by itself), which the machine's owner puts into /etc/credstore
 * (or /etc/credstore.encrypted, with `systemd-creds encrypt`), or a VM gets from its host (QEMU's
 * fw_cfg: `aios qemu-test --credential`). A worker then listens on its tunnel address and its firewall admits the
 * heads only through `aioswg0`.
 *
 * The same settings also give the `wg setconf` text for a peer that is not an aios image (and the
 * tests' namespaces): `aios fleet wireguard`.
 */
import { inCidr, parseCidr4 } from '../util/net.js';

/** The netdev file's name (without .netdev): also names the private key's credential. */
export const WG_NETDEV = '50-aios-wg';
/** The tunnel's interface in an image. */
export const WG_INTERFACE = 'aioswg0';
/**
 * The systemd credential networkd reads the private key from (`PrivateKey=@<name>`, systemd.netdev(5);
 * networkd imports `network.wireguard.*` credentials by itself). Short on purpose: QEMU's fw_cfg
 * names (opt/io.systemd.credentials/<name>) may have at most 55 characters.
 */
export const WG_KEY_CREDENTIAL = 'network.wireguard.aios';

export interface WireguardPeer {
  public_key: string;
  allowed_ips: string[];
  endpoint?: string;
  keepalive?: number;
}

export interface WireguardRecipe {
  /** This node's tunnel address with its prefix, e.g. 10.77.0.2/24. */
  address: string;
  listen_port: number;
  peers: WireguardPeer[];
}

/** A WireGuard key as `wg genkey` / `wg pubkey` print it: 32 bytes in base64 (44 characters, one "="). */
export function isWgKey(k: string): boolean {
  return /^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$/.test(k);
}

/** Problems with fleet.tunnel and fleet.wireguard, with the keys they are about. */
export function wireguardProblems(f: { role: string; tunnel: 'none' | 'wireguard'; wireguard?: WireguardRecipe; listen: string; heads: string[]; interface?: string }, o: { kernelBuild?: boolean; kernelBase?: string } = {}): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  const w = f.wireguard;
  if (f.tunnel !== 'wireguard') {
    if (w) out.push({ path: 'fleet.wireguard', message: 'the tunnel settings are used only with fleet.tunnel = "wireguard": set it (or remove fleet.wireguard)' });
    return out;
  }
  if (!w) {
    out.push({ path: 'fleet.wireguard', message: 'fleet.tunnel = "wireguard" needs this machine\'s tunnel: fleet.wireguard = { address = "10.77.0.2/24", peers = [{ public_key = "<the peer\'s wg pubkey>", allowed_ips = ["10.77.0.1/32"], endpoint = "192.168.1.10:51820" }] } (the private key is a credential on the machine, never in the recipe)' });
    return out;
  }
  const me = parseCidr4(w.address);
  if (!me || !w.address.includes('/')) out.push({ path: 'fleet.wireguard.address', message: `"${w.address}" must be this machine's IPv4 tunnel address with its prefix length, such as 10.77.0.2/24` });
  if (!w.peers.length) out.push({ path: 'fleet.wireguard.peers', message: 'no peers: a worker lists its heads, a head its workers ({ public_key, allowed_ips, endpoint })' });
  const keys = new Set<string>();
  w.peers.forEach((p, i) => {
    const at = `fleet.wireguard.peers.${i}`;
    if (!isWgKey(p.public_key)) out.push({ path: `${at}.public_key`, message: 'must be a WireGuard public key as `wg pubkey` prints it (44 characters of base64); a private key never goes into the recipe' });
    else if (keys.has(p.public_key)) out.push({ path: `${at}.public_key`, message: 'this peer is listed twice' });
    keys.add(p.public_key);
    if (!p.allowed_ips.length) out.push({ path: `${at}.allowed_ips`, message: 'the peer\'s tunnel addresses, such as ["10.77.0.1/32"]: nothing else is accepted from it' });
    p.allowed_ips.forEach((a, j) => {
      if (!parseCidr4(a)) out.push({ path: `${at}.allowed_ips.${j}`, message: `"${a}" is not an IPv4 address or prefix` });
      else if (/\/0$/.test(a)) out.push({ path: `${at}.allowed_ips.${j}`, message: `"${a}" would route everything through this peer: give its tunnel address` });
    });
    if (p.endpoint !== undefined && !/^[A-Za-z0-9.-]+:\d{1,5}$/.test(p.endpoint)) out.push({ path: `${at}.endpoint`, message: `"${p.endpoint}" must be host:port, such as 192.168.1.10:51820` });
  });
  if (f.role === 'worker' && me) {
    const host = f.listen.split(':')[0]!;
    if (host !== me.addr) out.push({ path: 'fleet.listen', message: `with fleet.tunnel = "wireguard" the worker listens on its tunnel address only: fleet.listen = "${me.addr}:${f.listen.split(':')[1]}" (not "${f.listen}")` });
    if (f.interface !== undefined && f.interface !== WG_INTERFACE) out.push({ path: 'fleet.interface', message: `with fleet.tunnel = "wireguard" the heads are accepted through the tunnel only (${WG_INTERFACE}): remove fleet.interface` });
    f.heads.forEach((h, i) => {
      if (!w.peers.some((p) => p.allowed_ips.some((a) => inCidr(h, a)))) out.push({ path: `fleet.heads.${i}`, message: `"${h}" is not inside any peer's allowed_ips: its packets could not come through the tunnel (give the head's tunnel address)` });
    });
  }
  if (o.kernelBuild && o.kernelBase === 'tiny') out.push({ path: 'fleet.tunnel', message: 'kernel.base = "tiny" has no WireGuard (CONFIG_WIREGUARD): use kernel.base = "compact" with a fragment that sets CONFIG_WIREGUARD=y, or the stock kernel' });
  return out;
}

/** The image's networkd netdev: the interface, its port and peers; no private key (networkd reads the credential). */
export function wgNetdev(w: WireguardRecipe): string {
  const lines = [
    '# aios: the fleet\'s WireGuard tunnel (recipe fleet.tunnel = "wireguard"; docs/fleets.md).',
    `# The private key is not here: systemd-networkd reads it from the credential ${WG_KEY_CREDENTIAL}`,
    `# (/etc/credstore/${WG_KEY_CREDENTIAL}, or /etc/credstore.encrypted/ made with systemd-creds encrypt).`,
    '[NetDev]',
    `Name=${WG_INTERFACE}`,
    'Kind=wireguard',
    'Description=aios fleet tunnel',
    '',
    '[WireGuard]',
    `PrivateKey=@${WG_KEY_CREDENTIAL}`,
    `ListenPort=${w.listen_port}`,
  ];
  for (const p of w.peers) {
    lines.push('', '[WireGuardPeer]', `PublicKey=${p.public_key}`, `AllowedIPs=${p.allowed_ips.join(',')}`);
    if (p.endpoint) lines.push(`Endpoint=${p.endpoint}`);
    if (p.keepalive) lines.push(`PersistentKeepalive=${p.keepalive}`);
  }
  return lines.join('\n') + '\n';
}

/** The image's networkd network for the tunnel: its address, and a route through it to peers' addresses outside the tunnel's own prefix. */
export function wgNetwork(w: WireguardRecipe): string {
  const lines = ['# aios: the fleet tunnel\'s address (fleet.wireguard.address).', '[Match]', `Name=${WG_INTERFACE}`, '', '[Network]', `Address=${w.address}`];
  for (const a of w.peers.flatMap((p) => p.allowed_ips).filter((x) => !inCidr(x, w.address))) lines.push('', '[Route]', `Destination=${a}`);
  return lines.join('\n') + '\n';
}

/**
 * The same tunnel as `wg setconf` input, for a peer that is not an aios image (and the tests'
 * namespaces). No private key: give it with `wg set <interface> private-key <file>` afterwards.
 */
export function wgSetconf(w: WireguardRecipe): string {
  const lines = ['[Interface]', `ListenPort = ${w.listen_port}`];
  for (const p of w.peers) {
    lines.push('', '[Peer]', `PublicKey = ${p.public_key}`, `AllowedIPs = ${p.allowed_ips.join(', ')}`);
    if (p.endpoint) lines.push(`Endpoint = ${p.endpoint}`);
    if (p.keepalive) lines.push(`PersistentKeepalive = ${p.keepalive}`);
  }
  return lines.join('\n') + '\n';
}
