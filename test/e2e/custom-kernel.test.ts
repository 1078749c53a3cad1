/**
 * End to end: images/custom-kernel.toml (kernel.build = true) with kernel.base = "tiny" (the
 * kernel's tinyconfig + kvm_guest.config + kernel-configs/tiny.config: only what a booted image
 * needs in a QEMU/KVM guest, a fraction of compact's compile, so that a cold CI run on 2 cores stays
 * inside its time). The kernel stage compiles Debian's linux-source-6.12 with every wish of the
 * default recipe's fragments, the image boots that kernel instead of the stock one, the guest's
 * running config (/proc/config.gz) carries every wish (HZ=300 included), aios-runtime still answers
 * and runs its model in the Landlock sandbox. The image is also an RPC worker (fleet.role = "worker",
 * the head being QEMU's host address 10.0.2.2): the kernel's nftables load the worker's firewall, the
 * guest's own address is refused, and a head aios-runtime on this host splits a model across the
 * guest's ggml-rpc-server through the port forwarding (the worker image booted, with the kernel that
 * has the fewest features it needs). The first run on a new machine compiles the kernel
 * (see docs/kernel.md, "Custom kernel" for the time); the stage cache and ccache (both in the aios
 * cache dir) make later runs quick.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { build, type BuildResult } from '../../src/build/index.js';
import { qemuTest } from '../../src/qemu/index.js';
import { liveSummary } from '../../src/kernel/live.js';
import { tmp } from '../helpers.js';
import { runtimeFixture } from './runtime-fixture.js';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { startDaemon } from '../../src/runtime/daemon.js';
import { FRAGMENTS, KERNEL_RECIPE, KERNEL_SETS } from './custom-kernel.sets.js';

const out = tmp('aios-e2e-kernel-');
// An RPC worker for the head QEMU's user networking shows the guest: the host, 10.0.2.2.
const WORKER = ['fleet.role=worker', 'fleet.listen="10.0.2.15:50052"', 'fleet.heads=["10.0.2.2"]'];
const SETS = [...KERNEL_SETS, 'image.name=aios-custom-kernel-vm', ...WORKER];

/** A head aios-runtime on this host with the guest's worker: the tiny model split across it answers; what llama-server placed there. */
async function headWith(worker: string): Promise<{ text: string; placed: number; address: string }> {
  const dir = tmp('aios-e2e-head-');
  const fx = await runtimeFixture(dir);
  const config = RuntimeConfigSchema.parse({
    runtime: { llama_server: fx.llamaServer, socket: '', listen: '127.0.0.1:0', load_timeout: '300s', request_timeout: '300s', rpc_query_timeout: '60s', rpc_workers: [{ address: worker }] },
    models: { model_dir: dir, operational: { name: 'tiny.gguf', parallel: 1, ctx_size: 512, rpc: true } },
  });
  const d = await startDaemon(config, { log: () => {} });
  try {
    const r = await d.service.infer({ model: 'tiny', prompt: 'Tell me about the sea.', systemPrompt: '', params: { max_tokens: 8, temperature: 0 }, intelligenceLevel: '', grammar: '', timeoutMs: 300_000 });
    const m = d.service.models().find((x) => x.name === 'tiny')!;
    return { text: r.text, placed: m.rpcWorkers[0]?.bytes ?? 0, address: m.rpcWorkers[0]?.address ?? '' };
  } finally {
    await d.stop();
  }
}
let first: BuildResult;

describe('custom kernel (kernel.build = true)', () => {
  it('compiles the kernel with every wish and installs it in place of the stock kernel', { timeout: 150 * 60_000 }, async () => {
    first = await build({ recipe: KERNEL_RECIPE, sets: SETS, outDir: out, renderer: 'silent' });
    expect(first.stages.map((s) => s.name)).toEqual(['rootfs', 'llama', 'models', 'kernel', 'overlay', 'image']);
    const k = first.stages.find((s) => s.name === 'kernel')!;
    console.log(`kernel stage: ${k.cached ? 'cached' : 'built'} in ${k.seconds.toFixed(0)} s; build ${first.seconds.toFixed(0)} s`);
    const m = JSON.parse(readFileSync(first.manifest, 'utf8'));
    expect(m.kernel.version).toMatch(/^6\.12\.\d+-aios$/);
    expect(m.kernel.build).toMatchObject({ source: { package: 'linux-source-6.12', version: '6.12.117-1', suite: 'trixie' }, base: 'tiny', release: m.kernel.version, strict: true });
    expect(m.kernel.build.configSha256).toMatch(/^[0-9a-f]{64}$/);
    // The stock kernel is gone (purged, not just hidden), the custom one is not a package.
    expect(Object.keys(m.packages).filter((p) => p.startsWith('linux-image-'))).toEqual([]);
    // Every wish of the recipe's fragments landed in the compiled config, HZ_300 included.
    expect(m.kernel.fragments).toEqual(FRAGMENTS);
    // inference's seven wishes and single-socket's NUMA line (tiny.config's own lines are checked by the stage).
    expect(m.kernel.wishes.length).toBe(8);
    expect(m.kernel.wishes.filter((w: { status: string }) => w.status !== 'applied')).toEqual([]);
    expect(m.kernel.wishes.map((w: { symbol: string }) => w.symbol)).toContain('HZ_300');
    // No at-boot arguments are needed for them any more.
    expect(m.kernel.cmdline).not.toContain('cpufreq.default_governor=performance');
  });

  it('boots it: the running kernel carries every wish (HZ=300 included) and aios-runtime answers', { timeout: 15 * 60_000 }, async () => {
    const res = await qemuTest(first.image, { timeout: 600, serialLog: join(out, 'boot.serial.log'), during: (_a, _tls, more) => headWith(more.worker!) });
    expect(res.reason).toBeUndefined();
    expect(res.ok).toBe(true);
    expect(res.guest.failedUnits).toEqual([]);
    expect(res.guest.kernel).toMatch(/^6\.12\.\d+-aios$/);
    expect(res.kernelWishes.filter((w) => w.live !== 'yes')).toEqual([]);
    const summary = liveSummary(res.kernelWishes);
    expect(summary).toMatch(/^every wish live \(\d+ of \d+\), HZ=300 included$/);
    // The wishes checked live are the recipe's (single-socket's "is not set" line included): all of them.
    expect(res.kernelWishes.map((w) => w.symbol)).toEqual(expect.arrayContaining(['HZ_300', 'PREEMPT_VOLUNTARY', 'NO_HZ_FULL', 'NUMA', 'TRANSPARENT_HUGEPAGE_MADVISE']));
    expect(res.kernelWishes.find((w) => w.symbol === 'HZ_300')!.evidence).toBe('CONFIG_HZ_300=y');
    expect(res.runtime).toMatchObject({ ok: true, text: 'OK', modelUsed: 'aios-tiny' });
    // The model runs in its sandbox on this kernel too: tiny.config has Landlock (first in CONFIG_LSM),
    // user, network and PID namespaces, seccomp filters and the cgroup v2 controllers.
    const sandbox = (res.guest.sandbox ?? []).join('\n');
    expect(sandbox).toMatch(/model isolation: per-model cgroups under \/sys\/fs\/cgroup\/system\.slice\/aios-runtime\.service \(memory, cpu, cpuset, pids\);/);
    expect(sandbox).toMatch(/sandbox: unshare \+ setpriv \(user, network and PID namespaces, Landlock, no_new_privs, seccomp\), self-test \d+ ms: own directory writable; a write beside it and a read of \/etc\/passwd refused/);
    expect(sandbox).toMatch(/child model-aios-tiny nnp=1 seccomp=2 filters=\d+ daemon_filters=\d+ caps=0000000000000000 userns=own netns=own pidns=own mntns=shared ifaces=lo$/m);
    // The RPC worker: listening, its firewall loaded by this kernel's nftables (admitting the head
    // 10.0.2.2, a reset for everyone else), the guest's own address refused, the host's connection served…
    expect(res.guest.rpcWorker).toMatchObject({ state: 'active', listen: '10.0.2.15:50052', listening: true, firewall: 'active', fromSelf: 'refused' });
    expect(res.guest.rpcWorker!.rules.join('\n')).toMatch(/tcp dport 50052 ip saddr 10\.0\.2\.2 accept/);
    expect(res.guest.rpcWorker!.rules.join('\n')).toMatch(/tcp dport 50052 .*reject with tcp reset/);
    expect(res.worker).toMatchObject({ ok: true, detail: expect.stringMatching(/ggml-rpc-server took the connection/) });
    // …and a head on this host split a model across it: it answered, with layers placed in the guest.
    expect(res.during).toMatchObject({ ok: true });
    const head = res.during!.value as Awaited<ReturnType<typeof headWith>>;
    expect(head.text.length).toBeGreaterThan(0);
    expect(head.placed).toBeGreaterThan(1024 * 1024);
    console.log(`rpc worker in the guest: ${res.worker!.detail}; the head placed ${(head.placed / 2 ** 20).toFixed(1)} MiB there and got "${head.text}"`);
    console.log(`custom kernel: ${summary}; multi-user ${res.guest.multiUser}s after kernel start, runtime ready ${res.runtime!.readySeconds} s, ${res.hostSeconds.toFixed(1)} s QEMU start to power-off (${res.accel})`);
  });

  it('a changed fragment re-runs only kernel, overlay and image (make and ccache reuse the rest)', { timeout: 60 * 60_000 }, async () => {
    // A wish that differs on every run (so that a warm cache never has it) and touches few objects.
    const host = `aios-t${Date.now()}`;
    const extra = join(tmp('aios-e2e-frag-'), 'hostname.config');
    writeFileSync(extra, `# A test-only wish: the kernel's default host name.\nCONFIG_DEFAULT_HOSTNAME="${host}"\n`);
    const again = await build({ recipe: KERNEL_RECIPE, outDir: out, renderer: 'silent', sets: ['kernel.base=tiny', `kernel.fragments=${JSON.stringify([...FRAGMENTS, extra])}`, 'image.name=aios-custom-kernel-vm', ...WORKER] });
    expect(again.stages.map((s) => [s.name, s.cached])).toEqual([
      ['rootfs', true],
      ['llama', true],
      ['models', true],
      ['kernel', false],
      ['overlay', false],
      ['image', false],
    ]);
    console.log(`kernel rebuild after a fragment change: ${again.stages.find((s) => s.name === 'kernel')!.seconds.toFixed(0)} s`);
    const m = JSON.parse(readFileSync(again.manifest, 'utf8'));
    expect(m.kernel.wishes.find((w: { symbol: string }) => w.symbol === 'DEFAULT_HOSTNAME')).toMatchObject({ status: 'applied', value: host });
  });
});
