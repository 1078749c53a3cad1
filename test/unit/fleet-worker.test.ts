/**
 * The recipe's worker role (issue 20; docs/fleets.md): `[fleet] role = "worker"` renders
 * aios-rpc-worker.service (ggml-rpc-server on fleet.listen, its tensor cache under /var/cache,
 * hardened like aios-runtime.service), the firewall generated from fleet.heads and the unit that
 * loads it at boot; the loader refuses a worker open to the network without heads, and addresses
 * that are not IP literals. Nothing is built or booted: the rendered files are checked with
 * systemd-analyze (verify, security) and nft -c.
 */
import { describe, expect, it } from 'vitest';
import { chmodSync, cpSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { loadRecipe } from '../../src/config/load.js';
import { identity, templateContext } from '../../src/build/context.js';
import { renderTree } from '../../src/build/render.js';
import { paths } from '../../src/util/paths.js';
import { workerNftRules } from '../../src/fleet/firewall.js';
import { debian } from '../../src/distros/debian.js';
import { arch } from '../../src/distros/arch.js';
import { tmp } from '../helpers.js';
import { workerFiles } from '../../src/fleet/worker.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { parse as parseToml } from 'smol-toml';

const workerFilesOf = (r: { fleet: Parameters<typeof workerFiles>[0] }) => workerFiles(r.fleet);

const WORKER = ['fleet.role=worker', 'fleet.listen="10.0.0.2:50052"', 'fleet.heads=["10.0.0.1", "10.0.1.0/24"]'];

async function rendered(sets: string[]): Promise<Record<string, string>> {
  const r = await loadRecipe('default', { sets });
  return Object.fromEntries((await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).map((f) => [f.path, f.content]));
}
const problems = (sets: string[]) =>
  loadRecipe('default', { sets }).then(
    () => [],
    (e: { exitCode: number; problems: { path: string; message: string }[] }) => {
      expect(e.exitCode).toBe(2);
      return e.problems;
    },
  );

const UNIT = 'usr/lib/systemd/system/aios-rpc-worker.service';
const FW_UNIT = 'usr/lib/systemd/system/aios-rpc-firewall.service';
const NFT = 'etc/aios/rpc-worker.nft';

describe('[fleet] role = "worker": the rendered files', () => {
  it('runs ggml-rpc-server on the configured address only, with its cache under /var/cache, behind the generated firewall', async () => {
    const f = await rendered(WORKER);
    const unit = f[UNIT]!;
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/ggml-rpc-server -H 10\.0\.0\.2 -p 50052 -c$/m);
    expect(unit).toMatch(/^CacheDirectory=aios-rpc-worker$/m);
    expect(unit).toMatch(/^Environment=LLAMA_CACHE=%C\/aios-rpc-worker$/m);
    expect(unit).toMatch(/^Requires=aios-rpc-firewall\.service$/m);
    expect(unit).toMatch(/^After=aios-rpc-firewall\.service$/m);
    expect(unit).toMatch(/^IPAddressDeny=any$/m);
    expect(unit).toMatch(/^IPAddressAllow=10\.0\.0\.1 10\.0\.1\.0\/24$/m);
    expect(unit).toMatch(/^DynamicUser=yes$/m);
    expect(unit).toMatch(/^ProtectSystem=strict$/m);
    expect(unit).toMatch(/^RestrictAddressFamilies=AF_INET$/m);
    // The ruleset is the one `aios fleet firewall` prints for the same heads and port, loaded at boot.
    expect(f[NFT]).toBe(workerNftRules({ port: 50052, heads: ['10.0.0.1', '10.0.1.0/24'] }));
    expect(f[FW_UNIT]).toMatch(/^ExecStart=\/usr\/sbin\/nft -f \/etc\/aios\/rpc-worker\.nft$/m);
    expect(f[FW_UNIT]).toMatch(/^Before=network-pre\.target shutdown\.target$/m);
    expect(f[FW_UNIT]).toMatch(/^WantedBy=sysinit\.target$/m);
    // The image gets nft for it (both distros).
    const r = await loadRecipe('default', { sets: WORKER });
    expect(debian.packages(r)).toContain('nftables');
    expect(arch.packages({ ...r, base: { ...r.base, distro: 'arch' } })).toContain('nftables');
  });

  it('accepts only through fleet.interface when set; no cache without fleet.cache', async () => {
    const f = await rendered([...WORKER, 'fleet.interface=eth1', 'fleet.cache=false']);
    expect(f[NFT]).toContain('iifname "eth1" tcp dport 50052 ip saddr { 10.0.0.1, 10.0.1.0/24 } accept');
    expect(f[UNIT]).toMatch(/^ExecStart=\/usr\/bin\/ggml-rpc-server -H 10\.0\.0\.2 -p 50052$/m);
    expect(f[UNIT]).not.toMatch(/CacheDirectory|LLAMA_CACHE/);
  });

  it('a worker on loopback needs no heads: no firewall, only localhost may connect', async () => {
    const f = await rendered(['fleet.role=worker']);
    expect(f[UNIT]).toMatch(/^ExecStart=\/usr\/bin\/ggml-rpc-server -H 127\.0\.0\.1 -p 50052 -c$/m);
    expect(f[UNIT]).toMatch(/^IPAddressAllow=localhost$/m);
    expect(f[UNIT]).not.toMatch(/aios-rpc-firewall/);
    expect(f[NFT]).toBeUndefined();
    expect(f[FW_UNIT]).toBeUndefined();
    // Debian images have nft anyway (Priority: important); the firewall unit is only a worker's with heads.
  });

  it('images/rpc-worker.toml: a worker without the runtime or models, for the heads it names', async () => {
    const r = await loadRecipe('rpc-worker');
    expect(r.fleet).toMatchObject({ role: 'worker', listen: '10.0.0.2:50052', heads: ['10.0.0.1'] });
    expect(r.runtime.enabled).toBe(false);
    expect(r.models).toEqual([]);
    const files = Object.fromEntries((await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).map((f) => [f.path, f.content]));
    expect(files[UNIT]).toMatch(/^ExecStart=\/usr\/bin\/ggml-rpc-server -H 10\.0\.0\.2 -p 50052 -c$/m);
    expect(files[NFT]).toContain('tcp dport 50052 ip saddr { 10.0.0.1 } accept');
    expect(files['usr/lib/systemd/system/aios-runtime.service']).toBeUndefined();
    // The addresses are the recipe's to change, on the command line too.
    const other = await loadRecipe('rpc-worker', { sets: ['fleet.listen="192.168.7.2:50052"', 'fleet.heads=["192.168.7.1"]'] });
    expect(workerFilesOf(other)).toMatchObject({ host: '192.168.7.2', ipAllow: '192.168.7.1' });
  });

  it('renders nothing of it for a standalone recipe (the default)', async () => {
    const f = await rendered([]);
    for (const p of [UNIT, FW_UNIT, NFT]) expect(f[p]).toBeUndefined();
    expect(debian.packages(await loadRecipe('default'))).toContain('nftables'); // Debian's standard firewall tool, in every image
    const r = await loadRecipe('default');
    expect(arch.packages({ ...r, base: { ...r.base, distro: 'arch' } })).not.toContain('nftables');
  });

  it('the ruleset passes `nft -c -f` (checked, not loaded)', async (t) => {
    const which = await execa('sh', ['-c', 'command -v nft'], { reject: false });
    if (which.exitCode !== 0) return t.skip();
    const f = await rendered([...WORKER, 'fleet.interface=eth1']);
    const d = tmp();
    writeFileSync(join(d, 'rpc-worker.nft'), f[NFT]!);
    // In a network namespace of its own when it can make one, so not even the check touches this host's tables.
    const ns = (await execa('unshare', ['-n', 'true'], { reject: false })).exitCode === 0;
    const r = await execa(ns ? 'unshare' : 'nft', ns ? ['-n', 'nft', '-c', '-f', join(d, 'rpc-worker.nft')] : ['-c', '-f', join(d, 'rpc-worker.nft')], { reject: false });
    if (r.exitCode !== 0 && /Operation not permitted/.test(r.stderr)) return t.skip();
    expect(r.exitCode, r.stderr).toBe(0);
  });

  it('both units pass systemd-analyze verify; the worker scores an exposure of 2.0 or less with systemd-analyze security', async () => {
    const f = await rendered(WORKER);
    // verify looks for the units' executables and the targets they name: a root with this host's
    // systemd units, stand-ins for ggml-rpc-server and nft, and the two units.
    const root = tmp();
    const units = join(root, 'usr/lib/systemd/system');
    mkdirSync(units, { recursive: true });
    if (existsSync('/usr/lib/systemd/system')) cpSync('/usr/lib/systemd/system', units, { recursive: true });
    for (const exe of ['usr/bin/ggml-rpc-server', 'usr/sbin/nft']) {
      mkdirSync(dirname(join(root, exe)), { recursive: true });
      writeFileSync(join(root, exe), '#!/bin/sh\n');
      chmodSync(join(root, exe), 0o755);
    }
    for (const p of [UNIT, FW_UNIT, NFT]) {
      mkdirSync(dirname(join(root, p)), { recursive: true });
      writeFileSync(join(root, p), f[p]!);
    }
    const v = await execa('systemd-analyze', ['verify', `--root=${root}`, 'aios-rpc-worker.service', 'aios-rpc-firewall.service'], { reject: false, all: true });
    expect(v.exitCode, v.all).toBe(0);
    // No unknown keys, bad values or missing units (verify only warns about those).
    expect(v.all.split('\n').filter((l) => /aios-rpc/.test(l)), v.all).toEqual([]);
    const s = await execa('systemd-analyze', ['security', '--offline=true', join(units, 'aios-rpc-worker.service')], { reject: false });
    const m = /Overall exposure level for aios-rpc-worker\.service: (\d+\.\d+)/.exec(s.stdout);
    expect(m, s.stdout + s.stderr).not.toBeNull();
    expect(Number(m![1])).toBeLessThanOrEqual(2.0);
    console.log(`aios-rpc-worker.service: exposure ${m![1]} (systemd-analyze security --offline, this host's systemd)`);
  });
});

describe('[fleet]: what the loader refuses (exit 2, naming the keys)', () => {
  it('a worker listening beyond loopback without heads', async () => {
    expect(await problems(['fleet.role=worker', 'fleet.listen="10.0.0.2:50052"'])).toEqual([
      { path: 'fleet.heads', message: expect.stringMatching(/^fleet\.listen = "10\.0\.0\.2:50052" is reachable from the network and ggml-rpc-server has no authentication: name the heads that may connect \(fleet\.heads = \["10\.0\.0\.1"\]/) },
    ]);
    expect(await problems(['fleet.role=worker', 'fleet.listen="0.0.0.0:50052"'])).toEqual([{ path: 'fleet.heads', message: expect.stringContaining('fleet.heads') }]);
  });

  it('addresses that are not IP literals, IPv6 heads, a head prefix that admits everyone', async () => {
    expect(await problems(['fleet.role=worker', 'fleet.listen="worker.lan:50052"', 'fleet.heads=["10.0.0.1"]'])).toEqual([{ path: 'fleet.listen', message: expect.stringMatching(/IPv4 address and port .*never a name/) }]);
    expect(await problems(['fleet.role=worker', 'fleet.listen="10.0.0.300:50052"', 'fleet.heads=["10.0.0.1"]'])).toEqual([{ path: 'fleet.listen', message: expect.stringMatching(/is not an IPv4 address and a port/) }]);
    expect(await problems(['fleet.role=worker', 'fleet.listen="10.0.0.2:70000"', 'fleet.heads=["10.0.0.1"]'])).toEqual([{ path: 'fleet.listen', message: expect.stringMatching(/is not an IPv4 address and a port/) }]);
    expect(await problems(['fleet.role=worker', 'fleet.listen="10.0.0.2:50052"', 'fleet.heads=["head.lan", "fd00::1", "0.0.0.0/0", "10.0.0.1/33"]'])).toEqual([
      { path: 'fleet.heads.0', message: expect.stringMatching(/not an IPv4 address or prefix .*cannot trust names/) },
      { path: 'fleet.heads.1', message: expect.stringMatching(/IPv6 address: the pinned ggml-rpc-server listens on IPv4 only/) },
      { path: 'fleet.heads.2', message: expect.stringMatching(/admits every address/) },
      { path: 'fleet.heads.3', message: expect.stringMatching(/not an IPv4 address or prefix/) },
    ]);
  });

  it('a worker without llama.cpp\'s RPC backend, heads on a machine that is no worker, the runtime\'s port taken', async () => {
    expect(await problems([...WORKER, 'llama.rpc=false'])).toEqual([{ path: 'fleet.role', message: expect.stringMatching(/needs llama\.enabled = true and llama\.rpc = true/) }]);
    expect(await problems(['fleet.heads=["10.0.0.1"]', 'fleet.interface=eth1'])).toEqual([
      { path: 'fleet.heads', message: expect.stringMatching(/only a worker has heads: set fleet\.role = "worker"/) },
      { path: 'fleet.interface', message: expect.stringMatching(/only a worker/) },
    ]);
    // The default recipe's runtime listens on 0.0.0.0:50051.
    expect(await problems(['fleet.role=worker', 'fleet.listen="10.0.0.2:50051"', 'fleet.heads=["10.0.0.1"]'])).toEqual([{ path: 'fleet.listen', message: 'port 50051 is already the runtime\'s (0.0.0.0:50051): give the worker another port' }]);
    expect(await problems(['fleet.role=worker', 'fleet.listen="10.0.0.2:50051"', 'fleet.heads=["10.0.0.1"]', 'runtime.enabled=false'])).toEqual([]);
  });

  it('the error names the file and the keys (what `aios build` prints)', async () => {
    const e = await loadRecipe('default', { sets: ['fleet.role=worker', 'fleet.listen="10.0.0.2:50052"'] }).catch((x) => x as Error);
    expect(e.message).toContain('fleet.heads');
    expect(e.message).toContain('fleet.listen');
  });
});

describe('a head in the recipe: runtime.rpc_workers and rpc = true on a model', () => {
  const HEAD = ['runtime.rpc_workers=[{ address = "10.0.0.2:50052" }, { address = "10.0.0.3:50052", memory = "6G" }]', 'models=[{ name = "aios-tiny", level = "operational", source = "synth", rpc = true }]'];

  it("writes the workers and the split layer into /etc/aios/config.toml, which aios-runtime's schema accepts", async () => {
    const files = await rendered(HEAD);
    const text = files['etc/aios/config.toml']!;
    const cfg = RuntimeConfigSchema.parse(parseToml(text));
    expect(cfg.runtime.rpc_workers).toEqual([{ address: '10.0.0.2:50052', memory: '' }, { address: '10.0.0.3:50052', memory: '6G' }]);
    expect(cfg.models.operational).toMatchObject({ name: 'aios-tiny.gguf', rpc: true });
    // The default recipe (no head) has neither.
    const plain = (await rendered([]))['etc/aios/config.toml']!;
    expect(plain).not.toMatch(/rpc/);
    expect(RuntimeConfigSchema.parse(parseToml(plain)).models.operational?.rpc).toBe(false);
  });

  it('refuses a split model without workers, workers without a split model, a worker with workers, IPv6 and repeated workers, and no RPC backend', async () => {
    const model = HEAD[1]!;
    expect(await problems([model])).toEqual([expect.objectContaining({ path: 'models.0.rpc', message: expect.stringMatching(/lists none: add them as runtime\.rpc_workers/) })]);
    expect(await problems([HEAD[0]!])).toEqual([expect.objectContaining({ path: 'runtime.rpc_workers', message: expect.stringMatching(/no model is split/) })]);
    expect(await problems([...HEAD, 'llama.rpc=false'])).toEqual([expect.objectContaining({ path: 'models.0.rpc', message: expect.stringMatching(/llama\.rpc = true/) })]);
    expect((await problems(['runtime.rpc_workers=[{ address = "[fd00::2]:50052" }]', model])).map((p) => p.path)).toEqual(['runtime.rpc_workers.0.address']);
    expect((await problems(['runtime.rpc_workers=[{ address = "worker1:50052" }]', model]))[0]!.message).toMatch(/IPv4 address and port/);
    expect(await problems(['runtime.rpc_workers=[{ address = "10.0.0.2:50052" }, { address = "10.0.0.2:50052" }]', model])).toEqual([expect.objectContaining({ path: 'runtime.rpc_workers.1.address', message: 'worker 10.0.0.2:50052 is listed twice' })]);
    expect((await problems([...HEAD, ...WORKER])).map((p) => p.path)).toContain('runtime.rpc_workers');
  });
});
