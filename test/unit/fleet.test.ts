/**
 * Fleets (issue 20) without a network: parsing what llama.cpp prints about its RPC devices, the
 * split admission's arithmetic and messages, a worker's connection in CLOSE_WAIT read from a
 * /proc/net/tcp table, the config's checks, the launch line and the sandbox of a split model, and
 * the worker firewall's nftables text. test/e2e/fleet-rpc.test.ts runs all of it for real.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tmp } from '../helpers.js';
import { closedWorkers, hexAddress, parseListDevices, parseWorkerAddress, planSplit, RpcWorkers } from '../../src/runtime/rpc.js';
import { firewallProblems, workerNftRules } from '../../src/fleet/firewall.js';
import { lbProblems, nginxConfig } from '../../src/fleet/lb.js';
import { readRuntimeConfig, RuntimeConfigSchema } from '../../src/runtime/config.js';
import { launchArgs } from '../../src/runtime/launch.js';
import { bwrapArgs } from '../../src/runtime/sandbox.js';
import { childEnv } from '../../src/runtime/isolation.js';
import { addBufferLine, emptyBuffers } from '../../src/runtime/memory.js';
import { Code, RuntimeError } from '../../src/runtime/errors.js';

const MiB = 1024 * 1024;

describe('rpc workers: what llama.cpp reports', () => {
  it('parses `llama-server --rpc … --list-devices` of the pinned llama.cpp', () => {
    const out = 'Available devices:\n  RPC0: 127.0.0.1:50152 (24105 MiB, 24105 MiB free)\n  RPC1: [fd00::2]:50052 (8000 MiB, 7000 MiB free)\n';
    expect(parseListDevices(out)).toEqual([
      { device: 'RPC0', address: '127.0.0.1:50152', description: '127.0.0.1:50152', totalBytes: 24105 * MiB, freeBytes: 24105 * MiB },
      { device: 'RPC1', address: '[fd00::2]:50052', description: '[fd00::2]:50052', totalBytes: 8000 * MiB, freeBytes: 7000 * MiB },
    ]);
    expect(parseListDevices('Available devices:\n  (none)\n')).toEqual([]);
  });

  it('counts the buffers llama-server puts on RPC workers as remote, never as the head\'s GPU', () => {
    const b = emptyBuffers();
    for (const l of [
      'load_tensors:   CPU_Mapped model buffer size =    62.50 MiB',
      'load_tensors: RPC0[127.0.0.1:50152] model buffer size =    33.76 MiB',
      'llama_kv_cache: RPC0[127.0.0.1:50153] KV buffer size =     2.00 MiB',
      'sched_reserve:      CUDA0 compute buffer size =    10.00 MiB',
    ]) addBufferLine(b, l);
    expect(b.hostBytes).toBe(Math.round(62.5 * MiB));
    expect(b.deviceBytes).toBe(10 * MiB);
    expect(b.remoteBytes).toBe(Math.round(33.76 * MiB) + 2 * MiB);
    expect(Object.keys(b.byName)).toContain('RPC0[127.0.0.1:50152] model');
  });

  it('accepts IP literals and a port only', () => {
    expect(parseWorkerAddress('10.0.0.2:50052')).toEqual({ host: '10.0.0.2', port: 50052 });
    expect(parseWorkerAddress('[fd00::2]:50052')).toEqual({ host: 'fd00::2', port: 50052 });
    for (const bad of ['worker1:50052', '10.0.0.2', '10.0.0.300:1', '10.0.0.2:70000']) expect(parseWorkerAddress(bad)).toBeUndefined();
  });
});

describe('rpc workers: the split admission', () => {
  const room = (address: string, freeMiB: number, capMiB = 0) => ({ address, reportedFreeBytes: freeMiB * MiB, capBytes: capMiB * MiB, availableBytes: (capMiB ? Math.min(capMiB, freeMiB) : freeMiB) * MiB });

  it('splits like llama.cpp (by reported free memory) and checks every share against what the head may use there', () => {
    const even = planSplit(200 * MiB, [room('a:1', 1000), room('b:1', 1000)]);
    expect(even.fits).toBe(true);
    expect(even.shares.map((s) => s.bytes)).toEqual([100 * MiB, 100 * MiB]);
    const uneven = planSplit(300 * MiB, [room('a:1', 2000), room('b:1', 1000)]);
    expect(uneven.shares.map((s) => s.bytes)).toEqual([200 * MiB, 100 * MiB]);
    // The cap is not llama.cpp's split: a worker capped below its share refuses, though the total would fit.
    const capped = planSplit(300 * MiB, [room('a:1', 1000, 100), room('b:1', 1000)]);
    expect(capped.fits).toBe(false);
    expect(capped.shares[0]).toEqual({ address: 'a:1', bytes: 150 * MiB, availableBytes: 100 * MiB, reportedFreeBytes: 1000 * MiB });
    expect(planSplit(1, []).fits).toBe(false);
  });

  const workers = (o: Partial<ConstructorParameters<typeof RpcWorkers>[0]> = {}) =>
    new RpcWorkers({
      llamaServer: '/x/llama-server',
      workers: [{ address: '10.0.0.2:50052', capBytes: 100 * MiB }, { address: '10.0.0.3:50052', capBytes: 0 }],
      probe: async () => undefined,
      query: async (_b, addrs) => addrs.map((a, i) => ({ device: `RPC${i}`, address: a, description: a, totalBytes: 1000 * MiB, freeBytes: 1000 * MiB })),
      ...o,
    });

  it('refuses with each worker\'s share and room (RESOURCE_EXHAUSTED)', async () => {
    const w = workers();
    const e = (await w.admit('big', w.addresses, 300 * MiB).catch((x) => x)) as RuntimeError;
    expect(e).toBeInstanceOf(RuntimeError);
    expect(e.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(e.message).toBe(
      'not enough memory on the rpc workers to load big: needs 300 MiB there (estimated), which llama.cpp splits by the free memory each reports: 10.0.0.2:50052 150 MiB of 100 MiB (reports 1000 MiB free, memory = 100 MiB), 10.0.0.3:50052 150 MiB of 1000 MiB (reports 1000 MiB free)',
    );
    await expect(w.admit('small', w.addresses, 100 * MiB)).resolves.toMatchObject({ fits: true });
  });

  it('a worker that cannot be reached or does not answer: UNAVAILABLE naming it', async () => {
    const down = workers({ probe: async (a) => (a.startsWith('10.0.0.3') ? 'connection refused' : undefined) });
    await expect(down.admit('m', down.addresses, MiB)).rejects.toMatchObject({ code: Code.UNAVAILABLE, message: 'cannot load m: rpc worker 10.0.0.3:50052 is unreachable: connection refused' });
    const busy = workers({ query: async () => Promise.reject(new Error('no answer within 10 ms')) });
    await expect(busy.admit('m', busy.addresses, MiB)).rejects.toMatchObject({ code: Code.UNAVAILABLE, message: expect.stringContaining('asking rpc workers 10.0.0.2:50052, 10.0.0.3:50052 for their memory failed: no answer') });
    const silent = workers({ query: async () => [] });
    await expect(silent.admit('m', silent.addresses, MiB)).rejects.toMatchObject({ message: 'cannot load m: rpc worker 10.0.0.2:50052 reported no device' });
  });

  it('a worker lost under a loaded model is named in the exit cause, even once it answers again', async () => {
    let refused = true;
    const w = workers({ closed: (a) => a.filter((x) => x.startsWith('10.0.0.2')), probe: async () => (refused ? 'connection refused' : undefined) });
    expect(w.lostUnder(w.addresses)).toEqual(['10.0.0.2:50052']);
    expect(await w.exitCause(w.addresses)).toBe('rpc worker 10.0.0.2:50052 is unreachable: connection refused; rpc worker 10.0.0.3:50052 is unreachable: connection refused');
    w.lostUnder(w.addresses);
    refused = false;
    expect(await w.exitCause(w.addresses)).toBe('rpc worker 10.0.0.2:50052 went away (it closed its connection (its ggml-rpc-server ended or restarted))');
    expect(await w.exitCause(w.addresses)).toBeUndefined(); // reached again: forgotten
  });
});

describe('rpc workers: a connection in CLOSE_WAIT', () => {
  it('reads /proc/net/tcp addresses (v4, v6, v4-mapped)', () => {
    expect(hexAddress('0201E70A:C3C4')).toBe('10.231.1.2:50116');
    expect(hexAddress('0000000000000000FFFF00000201E70A:C3C4')).toBe('10.231.1.2:50116');
    expect(hexAddress('000000FD000000000000000002000000:C3C4')).toBe('[fd00::2]:50116');
  });

  it('names the workers whose end closed while the head still holds the connection', () => {
    const tcp = [
      '  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode',
      '   0: 0101E70A:A5B2 0201E70A:C3C4 08 00000000:00000001 00:00000000 00000000     0        0 1 1 0000000000000000 20 4 30 10 -1',
      '   1: 0102E70A:A5B3 0202E70A:C3C4 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 20 4 30 10 -1',
    ].join('\n');
    const tcp6 = ['  sl  local_address remote_address st', '   0: 00000000000000000000000001000000:A000 000000FD000000000000000002000000:C3C4 08 0'].join('\n');
    const read = (f: string) => (f.endsWith('tcp6') ? tcp6 : tcp);
    expect(closedWorkers(['10.231.1.2:50116', '10.231.2.2:50116', '[fd00::2]:50116'], read)).toEqual(['10.231.1.2:50116', '[fd00::2]:50116']);
  });
});

describe('rpc workers: config, launch and sandbox', () => {
  const base = { models: { model_dir: '/m', operational: { name: 'a.gguf' }, tactical: { name: 'b.gguf', rpc: true } } };

  it('a split model needs [[runtime.rpc_workers]]; addresses are IPv4 literals, listed once', () => {
    const none = RuntimeConfigSchema.safeParse(base);
    expect(none.success).toBe(false);
    expect(none.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual([
      'models.tactical.rpc: a model split with rpc = true needs its workers: list them as [[runtime.rpc_workers]] address = "10.0.0.2:50052"',
    ]);
    const issues = (address: string) => RuntimeConfigSchema.safeParse({ ...base, runtime: { rpc_workers: [{ address }] } }).error?.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    expect(issues('worker1:50052')).toEqual([
      'runtime.rpc_workers.0.address: "worker1:50052" must be an IPv4 address and port such as 10.0.0.2:50052 (no host names: the worker\'s firewall admits its heads by address)',
    ]);
    for (const bad of ['10.0.0.256:50052', '10.0.0.2', '10.0.0.2:']) expect(issues(bad)?.[0]).toMatch(/must be an IPv4 address and port/);
    expect(issues('10.0.0.2:0')).toEqual(['runtime.rpc_workers.0.address: "10.0.0.2:0": the port must be 1-65535']);
    expect(issues('10.0.0.2:70000')).toEqual(['runtime.rpc_workers.0.address: "10.0.0.2:70000": the port must be 1-65535']);
    const twice = RuntimeConfigSchema.safeParse({ ...base, runtime: { rpc_workers: [{ address: '10.0.0.2:1' }, { address: '10.0.0.2:1' }] } });
    expect(twice.error!.issues[0]!.message).toBe('worker 10.0.0.2:1 is listed twice');
    const ok = RuntimeConfigSchema.parse({ ...base, runtime: { rpc_workers: [{ address: '10.0.0.2:50052', memory: '20G' }, { address: '10.0.0.3:50052' }] } });
    expect(ok.runtime.rpc_workers).toEqual([{ address: '10.0.0.2:50052', memory: '20G' }, { address: '10.0.0.3:50052', memory: '' }]);
  });

  it('an IPv6 worker is refused at load, saying why and what to give instead (the pinned llama.cpp splits at the first \':\', ggml-rpc-server binds IPv4)', () => {
    for (const address of ['[fd00::2]:50052', '[::1]:50052', '[::ffff:10.0.0.2]:50052', 'fd00::2:50052', '[fd00::2]']) {
      const r = RuntimeConfigSchema.safeParse({ ...base, runtime: { rpc_workers: [{ address: '10.0.0.3:50052' }, { address }] } });
      expect(r.success, address).toBe(false);
      expect(r.error!.issues.map((i) => `${i.path.join('.')}: ${i.message}`)).toEqual([
        `runtime.rpc_workers.1.address: "${address}" is an IPv6 address: the pinned llama.cpp splits an RPC endpoint at its first ':' and ggml-rpc-server listens on IPv4 only, so no IPv6 worker can be reached; give the worker's IPv4 address and port, such as 10.0.0.2:50052`,
      ]);
    }
  });

  it('readRuntimeConfig refuses a config.toml with an IPv6 worker, naming the file and the key', async () => {
    const file = join(tmp(), 'config.toml');
    const toml = (address: string) => `[models]\nmodel_dir = "/m"\n[models.operational]\nname = "a.gguf"\n[models.tactical]\nname = "b.gguf"\nrpc = true\n[[runtime.rpc_workers]]\naddress = "${address}"\n`;
    writeFileSync(file, toml('[fd00::2]:50052'));
    await expect(readRuntimeConfig(file)).rejects.toThrow(`${file}: runtime.rpc_workers.0.address: "[fd00::2]:50052" is an IPv6 address: `);
    writeFileSync(file, toml('10.0.0.2:50052'));
    expect((await readRuntimeConfig(file)).runtime.rpc_workers).toEqual([{ address: '10.0.0.2:50052', memory: '' }]);
  });

  it('launches with --rpc and every layer on the workers; its sandbox keeps the network, and no gdb backtrace on abort', () => {
    const p = { name: 'b', path: '/m/b.gguf', level: 'tactical' as const, ctxSize: 1024, threads: 2, gpuLayers: -1, parallel: 1, mmap: true, rpc: ['10.0.0.2:50052', '10.0.0.3:50052'] };
    const a = launchArgs(p, 8080);
    expect(a.slice(a.indexOf('--rpc'), a.indexOf('--rpc') + 2)).toEqual(['--rpc', '10.0.0.2:50052,10.0.0.3:50052']);
    expect(a[a.indexOf('-ngl') + 1]).toBe('999');
    expect(launchArgs({ ...p, rpc: undefined }, 8080)).not.toContain('--rpc');
    const mode = { bwrap: '/usr/bin/bwrap', freshProc: true };
    expect(bwrapArgs(mode, { model: '/m/b.gguf', dir: '/run/x', shareNet: true, env: childEnv(p) })).not.toContain('--unshare-net');
    expect(bwrapArgs(mode, { model: '/m/b.gguf', dir: '/run/x', shareNet: true, env: childEnv(p) }).join(' ')).toContain('--setenv GGML_NO_BACKTRACE 1');
    expect(bwrapArgs(mode, { model: '/m/a.gguf', dir: '/run/x' })).toContain('--unshare-net');
    expect(childEnv({ ...p, rpc: undefined })).toEqual({});
  });
});

describe('the worker firewall (nftables)', () => {
  it('admits the heads to the worker port, resets everyone else, and leaves other ports alone', () => {
    const r = workerNftRules({ port: 50052, heads: ['10.0.0.1', '10.0.1.0/24', 'fd00::1'] });
    expect(r).toContain('table inet aios_rpc_worker {');
    expect(r).toContain('delete table inet aios_rpc_worker');
    expect(r).toContain('tcp dport 50052 ip saddr { 10.0.0.1, 10.0.1.0/24 } accept');
    expect(r).toContain('tcp dport 50052 ip6 saddr { fd00::1 } accept');
    expect(r).toContain('tcp dport 50052 counter reject with tcp reset');
    expect(r).toContain('policy accept;');
    expect(workerNftRules({ port: 50052, heads: ['10.0.0.1'], iface: 'wg0' })).toContain('iifname "wg0" tcp dport 50052 ip saddr { 10.0.0.1 } accept');
  });

  it('refuses settings that would open the worker or trust a name', () => {
    expect(firewallProblems({ port: 50052, heads: [] })).toEqual(['no heads: a worker must name the addresses of the heads that may connect (nobody else may)']);
    expect(firewallProblems({ port: 0, heads: ['head.lan', '10.0.0.1/33'] })).toEqual([
      'port 0 is not a TCP port',
      'head "head.lan" is not an IP address or prefix (addresses only: the firewall cannot trust names)',
      'head "10.0.0.1/33" is not an IP address or prefix (addresses only: the firewall cannot trust names)',
    ]);
    expect(() => workerNftRules({ port: 50052, heads: [] })).toThrow(/no heads/);
  });
});

describe('the balancer in front of many nodes (nginx)', () => {
  const o = { listen: '127.0.0.1:8000', nodes: ['10.0.0.1:8080', '10.0.0.2:8080', '10.0.0.3:8080'], stateDir: '/var/lib/aios-lb' };

  it('every node in one upstream; 429 and failures go to the next node; streams unbuffered', () => {
    const c = nginxConfig(o);
    for (const n of o.nodes) expect(c).toContain(`    server ${n} max_fails=1 fail_timeout=10s;`);
    expect(c).toContain('proxy_next_upstream error timeout http_429 http_502 http_503 http_504 non_idempotent;');
    expect(c).toContain('proxy_next_upstream_tries 3;');
    expect(c).toContain('proxy_buffering off;');
    expect(c).toContain('listen 127.0.0.1:8000;');
    expect(c).toContain('pid /var/lib/aios-lb/nginx.pid;');
    expect(c).toContain('proxy_pass http://aios_nodes;');
    expect(c).not.toContain('beyond loopback');
  });

  it('HTTPS to the nodes, verified against the fleet CA; a warning when it listens beyond loopback', () => {
    const c = nginxConfig({ ...o, listen: '0.0.0.0:8000', caFile: '/etc/aios/ca.crt', tries: 2 });
    expect(c).toContain('proxy_pass https://aios_nodes;');
    expect(c).toContain('proxy_ssl_verify on;');
    expect(c).toContain('proxy_ssl_trusted_certificate /etc/aios/ca.crt;');
    expect(c).toContain('proxy_next_upstream_tries 2;');
    expect(c).toMatch(/# It listens beyond loopback/);
  });

  it('refuses what nginx would not take', () => {
    expect(lbProblems({ ...o, nodes: [] })).toEqual(['no nodes: name at least one node (host:port of its runtime.http_listen)']);
    expect(lbProblems({ ...o, nodes: ['a', 'b:1', 'b:1'], failTimeout: 'soon', tries: 0, stateDir: 'rel' })).toEqual([
      'node "a" is not host:port',
      'a node is listed twice',
      'fail timeout "soon" is not a duration such as 10s',
      'tries 0 must be a whole number ≥ 1',
      'state directory "rel" must be an absolute path',
    ]);
    expect(() => nginxConfig({ ...o, nodes: [] })).toThrow(/no nodes/);
  });
});
