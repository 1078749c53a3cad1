/**
 * images/rpc-worker.toml booted with fleet.tunnel = "wireguard" (issue 20), on an XFS root
 * (filesystem.root = "xfs", populated from a prototype file: one boot checks both). The guest's
 * systemd-networkd makes aioswg0 from the image's netdev, with the private key handed over as a
 * systemd credential through QEMU's fw_cfg (`qemu-test --credential`: never in the recipe or the
 * image); its peer, the head, is this host at QEMU's 10.0.2.2 (a userspace WireGuard interface here,
 * on a UDP port the guest reaches through user networking). Then a head aios-runtime on this host
 * splits a model across the guest's ggml-rpc-server through the tunnel. The tunnel's addresses are
 * 10.233.0.0/24; the route to the worker is checked to go into the tunnel before anything is sent.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { build } from '../../src/build/index.js';
import { qemuTest } from '../../src/qemu/index.js';
import { WG_KEY_CREDENTIAL, wgSetconf } from '../../src/fleet/wireguard.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon } from '../../src/runtime/daemon.js';
import { runtimeFixture } from './runtime-fixture.js';
import { waitForPort } from '../netns.js';
import { tmp } from '../helpers.js';
import { hostTunnel, sh, until, wgKey } from '../wireguard.js';

const HEAD = '10.233.0.1';
const WORKER = '10.233.0.2';
const PORT = 50052;
const dir = tmp('aios-e2e-wgboot-');
const headIf = `aioswb${process.pid % 100000}`;
let headWg: ChildProcess | undefined;

/** A UDP port nobody uses on this host (the head's WireGuard port). */
const freeUdpPort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, '0.0.0.0', () => {
      const p = s.address().port;
      s.close(() => resolve(p));
    });
  });
afterAll(() => {
  headWg?.kill('SIGTERM');
});

describe('an RPC worker image with a WireGuard tunnel, booted (XFS root)', () => {
  it('builds, boots with its key as a credential, and a head here splits a model across it through the tunnel', { timeout: 30 * 60_000 }, async () => {
    const [hk, wk] = [wgKey(dir, 'head'), wgKey(dir, 'worker')];
    const udp = await freeUdpPort();
    const res = await build({
      recipe: 'rpc-worker',
      outDir: dir,
      renderer: 'silent',
      sets: [
        'filesystem.root=xfs',
        'image.name=aios-wg-worker',
        'fleet.tunnel=wireguard',
        `fleet.listen="${WORKER}:${PORT}"`,
        `fleet.heads=["${HEAD}"]`,
        // The head is this host, which the guest reaches as 10.0.2.2; the guest starts the handshake (keepalive).
        `fleet.wireguard={ address = "${WORKER}/24", peers = [{ public_key = "${hk.pub}", allowed_ips = ["${HEAD}/32"], endpoint = "10.0.2.2:${udp}", keepalive = 2 }] }`,
      ],
    });
    // The private key is in no file of the image's build output.
    const found = spawnSync('grep', ['-rlF', '--exclude=*.key', readFileSync(wk.file, 'utf8').trim(), dir + '/'], { encoding: 'utf8' });
    expect(found.status).toBe(1); // grep: no match
    expect(found.stdout).toBe('');

    // This side: the head's tunnel (no endpoint: the guest's first handshake tells where it is).
    mkdirSync(join(dir, 'models'));
    const fx = await runtimeFixture(join(dir, 'models'));
    headWg = await hostTunnel({ name: headIf, dir, setconf: wgSetconf({ address: `${HEAD}/24`, listen_port: udp, peers: [{ public_key: wk.pub, allowed_ips: [`${WORKER}/32`] }] }), keyFile: hk.file, address: `${HEAD}/24` });
    expect(sh('ip', ['route', 'get', WORKER])).toContain(`dev ${headIf}`);

    const boot = await qemuTest(res.image, {
      timeout: 900,
      serialLog: join(dir, 'boot.serial.log'),
      credentials: [{ name: WG_KEY_CREDENTIAL, file: wk.file }],
      during: async () => {
        const handshake = await until(() => Number(sh('wg', ['show', headIf, 'latest-handshakes']).split('\t')[1] ?? 0) || undefined, 'the guest\'s WireGuard handshake', 120_000, 500);
        await waitForPort(WORKER, PORT, 60_000);
        const config = RuntimeConfigSchema.parse({
          runtime: { llama_server: fx.llamaServer, socket: '', listen: '127.0.0.1:0', load_timeout: '300s', request_timeout: '300s', rpc_query_timeout: '60s', rpc_workers: [{ address: `${WORKER}:${PORT}` }] },
          models: { model_dir: join(dir, 'models'), operational: { name: 'tiny.gguf', parallel: 1, ctx_size: 512, rpc: true } },
        });
        const d = await startDaemon(config, { log: () => {} });
        try {
          const r = await d.service.infer({ model: 'tiny', prompt: 'Tell me about the sea.', systemPrompt: '', params: { max_tokens: 8, temperature: 0 }, intelligenceLevel: '', grammar: '', timeoutMs: 300_000 });
          const m = d.service.models().find((x) => x.name === 'tiny')!;
          return { handshake, text: r.text, placed: m.rpcWorkers[0]?.bytes ?? 0, sent: Number(sh('wg', ['show', headIf, 'transfer']).split('\t')[2]) };
        } finally {
          await d.stop();
        }
      },
    });
    expect(boot.reason).toBeUndefined();
    expect(boot.guest.root).toMatch(/^xfs rw,noatime/);
    // The worker listens on its tunnel address only; its firewall admits the head through aioswg0 only.
    expect(boot.guest.rpcWorker).toMatchObject({ state: 'active', listen: `${WORKER}:${PORT}`, listening: true, firewall: 'active', fromSelf: 'refused' });
    expect(boot.guest.rpcWorker!.rules.join('\n')).toContain(`iifname "aioswg0" tcp dport ${PORT} ip saddr ${HEAD} accept`);
    // QEMU's forwarding (10.0.2.2, not a head, and not through the tunnel) is refused.
    expect(boot.worker).toMatchObject({ ok: true, detail: expect.stringMatching(/not in fleet\.heads.*refused/) });
    expect(boot.during).toMatchObject({ ok: true });
    const v = boot.during!.value as { handshake: number; text: string; placed: number; sent: number };
    expect(v.text.length).toBeGreaterThan(0);
    expect(v.placed).toBeGreaterThan(1024 * 1024);
    expect(v.sent).toBeGreaterThan(0.5 * v.placed);
    console.log(`WireGuard worker booted (${boot.accel}): handshake at ${new Date(v.handshake * 1000).toISOString()}, ${(v.sent / 2 ** 20).toFixed(1)} MiB through the tunnel, ${(v.placed / 2 ** 20).toFixed(1)} MiB placed in the guest, answer "${v.text}"; ${boot.hostSeconds.toFixed(0)} s QEMU start to power-off`);
  });
});
