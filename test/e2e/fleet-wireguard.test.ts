/**
 * fleet.tunnel = "wireguard" (issue 20), for real: a worker in a network namespace of its own (a veth
 * pair stands in for the wire) and a head aios-runtime on this side, joined by a WireGuard tunnel
 * (userspace wireguard-go and wg from Debian: the kernel module is not needed). Both ends are
 * configured from recipes through aios's own code: the worker's from images/rpc-worker.toml with the
 * tunnel (its firewall admits the head only through aioswg0), the head's from the default recipe with
 * runtime.rpc_workers at the worker's tunnel address; their keys are made by `wg genkey` and stay in
 * files of this test (never in a recipe). Only the namespace this test creates and the tunnel's
 * addresses (10.232.0.0/24) are addressed.
 *
 * - a model split across the worker through the tunnel answers, with its layers placed there, and the
 *   tunnel carried it;
 * - the head's own tunnel address, sent around the tunnel (the veth), is refused by the worker's
 *   firewall (its reject rule counts it), and the same connection through the tunnel is taken.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChildProcess } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runtimeFixture } from './runtime-fixture.js';
import { loadRecipe } from '../../src/config/load.js';
import { workerFiles } from '../../src/fleet/worker.js';
import { WG_INTERFACE, wgSetconf } from '../../src/fleet/wireguard.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon } from '../../src/runtime/daemon.js';
import { NetnsLab, tryConnect, waitForPort, type NsHost } from '../netns.js';
import { tmp } from '../helpers.js';
import { hasLink, hostTunnel, sh, until, wgKey } from '../wireguard.js';

const PORT = 50052;
const HEAD = '10.232.0.1';
const WORKER = '10.232.0.2';
const dir = tmp('aios-fleet-wg-');
const lab = new NetnsLab();
const headIf = `${lab.tag}w`;
let w: NsHost;
let llamaServer = '';
let headWg: ChildProcess | undefined;
let reject = () => '';

beforeAll(async () => {
  NetnsLab.sweep();
  llamaServer = (await runtimeFixture(dir)).llamaServer;
  w = lab.add(1);
  const [hk, wk] = [wgKey(dir, 'head'), wgKey(dir, 'worker')];

  // The worker, as its recipe makes it: the tunnel, the firewall on aioswg0, ggml-rpc-server on the tunnel address.
  const wr = await loadRecipe('rpc-worker', {
    sets: ['fleet.tunnel=wireguard', `fleet.listen="${WORKER}:${PORT}"`, `fleet.heads=["${HEAD}"]`, `fleet.wireguard={ address = "${WORKER}/24", peers = [{ public_key = "${hk.pub}", allowed_ips = ["${HEAD}/32"] }] }`],
  });
  const files = workerFiles(wr.fleet)!;
  expect(files.nft).toContain(`iifname "${WG_INTERFACE}" tcp dport ${PORT} ip saddr { ${HEAD} } accept`);
  lab.spawnIn(w, ['wireguard-go', '-f', WG_INTERFACE]);
  await until(() => hasLink(WG_INTERFACE, w.ns), `${WG_INTERFACE} in the worker's namespace`);
  writeFileSync(join(dir, 'worker.conf'), wgSetconf(wr.fleet.wireguard!));
  lab.execIn(w, ['wg', 'setconf', WG_INTERFACE, join(dir, 'worker.conf')]);
  lab.execIn(w, ['wg', 'set', WG_INTERFACE, 'private-key', wk.file]);
  lab.execIn(w, ['ip', 'addr', 'add', `${WORKER}/24`, 'dev', WG_INTERFACE]);
  lab.execIn(w, ['ip', 'link', 'set', WG_INTERFACE, 'up']);
  lab.execIn(w, ['nft', '-f', '-'], files.nft);
  // Its tensor cache (-c, the recipe's default) in this test's directory, as the unit's CacheDirectory= would be.
  lab.spawnIn(w, ['env', `LLAMA_CACHE=${join(dir, 'rpc-cache')}`, join(llamaServer, '..', 'ggml-rpc-server'), ...files.args.split(' ')]);
  reject = () => lab.execIn(w, ['nft', 'list', 'table', 'inet', 'aios_rpc_worker']);

  // The head, as its recipe says: the tunnel to the worker's veth address, the worker at its tunnel address.
  const hr = await loadRecipe('default', {
    sets: [
      'fleet.tunnel=wireguard',
      `fleet.wireguard={ address = "${HEAD}/24", peers = [{ public_key = "${wk.pub}", allowed_ips = ["${WORKER}/32"], endpoint = "${w.addr}:51820" }] }`,
      `runtime.rpc_workers=[{ address = "${WORKER}:${PORT}" }]`,
      'models=[{ name = "tiny", level = "operational", source = "synth", rpc = true }]',
    ],
  });
  headWg = await hostTunnel({ name: headIf, dir, setconf: wgSetconf({ ...hr.fleet.wireguard!, listen_port: 51821 }), keyFile: hk.file, address: `${HEAD}/24` });
  // Never send anything anywhere else: the worker's tunnel address must route into the tunnel just made.
  expect(sh('ip', ['route', 'get', WORKER])).toContain(`dev ${headIf}`);
  await waitForPort(WORKER, PORT, 30_000);
}, 20 * 60_000);

afterAll(async () => {
  try {
    sh('ip', ['route', 'del', `${WORKER}/32`]);
  } catch {
    /* not there */
  }
  headWg?.kill('SIGTERM');
  await lab.cleanup();
  // wireguard-go's control socket outlives a killed process (it is in /var/run/wireguard, shared by
  // every namespace): remove the worker's when no wireguard-go of that name is left.
  try {
    sh('pgrep', ['-f', `wireguard-go -f ${WG_INTERFACE}`]);
  } catch {
    rmSync(`/var/run/wireguard/${WG_INTERFACE}.sock`, { force: true });
  }
});

describe('a model split across an RPC worker through a WireGuard tunnel', () => {
  it('answers, with its layers on the worker, carried by the tunnel', { timeout: 180_000 }, async () => {
    const config = RuntimeConfigSchema.parse({
      runtime: { llama_server: llamaServer, socket: '', listen: '127.0.0.1:0', load_timeout: '120s', request_timeout: '120s', rpc_workers: [{ address: `${WORKER}:${PORT}` }] },
      models: { model_dir: dir, operational: { name: 'tiny.gguf', parallel: 1, ctx_size: 512, rpc: true } },
    });
    const before = Number(/\d+/.exec(sh('wg', ['show', headIf, 'transfer']).split('\t')[2] ?? '0')?.[0] ?? 0);
    const d = await startDaemon(config, { log: () => {} });
    try {
      const r = await d.service.infer({ model: 'tiny', prompt: 'Tell me about the sea.', systemPrompt: '', params: { max_tokens: 8, temperature: 0 }, intelligenceLevel: '', grammar: '', timeoutMs: 120_000 });
      expect(r.text.length).toBeGreaterThan(0);
      const m = d.service.models().find((x) => x.name === 'tiny')!;
      expect(m.rpcWorkers.map((x) => x.address)).toEqual([`${WORKER}:${PORT}`]);
      expect(m.rpcWorkers[0]!.bytes).toBeGreaterThan(1024 * 1024);
      // The head sent the layers through the tunnel (what was placed there is the layers plus the KV
      // cache and compute buffers, which the worker allocates itself).
      const sent = Number(sh('wg', ['show', headIf, 'transfer']).split('\t')[2]);
      expect(sent - before).toBeGreaterThan(0.5 * m.rpcWorkers[0]!.bytes);
      console.log(`through the tunnel: ${((sent - before) / 2 ** 20).toFixed(1)} MiB sent by the head; ${(m.rpcWorkers[0]!.bytes / 2 ** 20).toFixed(1)} MiB placed on the worker; answer "${r.text}"`);
    } finally {
      await d.stop();
    }
  });

  it("the head's tunnel address sent around the tunnel is refused by the worker's firewall; through the tunnel it is taken", { timeout: 60_000 }, async () => {
    const count = () => Number(/reject with tcp reset/.test(reject()) ? (/counter packets (\d+)[^\n]*reject with tcp reset/.exec(reject())?.[1] ?? 'NaN') : 'NaN');
    const before = count();
    // A route around the tunnel, straight into the worker's veth, with the head's tunnel address as the source.
    sh('ip', ['route', 'add', `${WORKER}/32`, 'via', w.addr]);
    try {
      expect(sh('ip', ['route', 'get', WORKER, 'from', HEAD])).toContain(`via ${w.addr}`);
      expect(await tryConnect(WORKER, PORT, { localAddress: HEAD, timeoutMs: 3000 })).not.toBe('connected');
      expect(count()).toBeGreaterThan(before);
    } finally {
      sh('ip', ['route', 'del', `${WORKER}/32`]);
    }
    expect(await tryConnect(WORKER, PORT, { localAddress: HEAD, timeoutMs: 5000 })).toBe('connected');
  });
});
