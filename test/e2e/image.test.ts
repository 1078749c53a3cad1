/**
 * End to end: build the default recipe with real mmdebstrap, read the image back, boot it in QEMU
 * (OVMF, TCG here) and require multi-user with no failed units. Uses the normal cache dir, so a
 * machine that has built the image before only re-runs what changed.
 */
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import { build, type BuildResult } from '../../src/build/index.js';
import { qemuTest } from '../../src/qemu/index.js';
import { defaultCacheDir } from '../../src/util/paths.js';
import { cli, tmp } from '../helpers.js';

const MiB = 1024 * 1024;
const out = tmp('aios-e2e-out-');
let first: BuildResult;
let rootImg = '';

/**
 * A saved session across a power cut and a reboot (docs/runtime.md, "Saved sessions"): the first boot (the
 * boot check below) runs on a copy of the image that keeps its writes and, while the guest holds,
 * starts a session with a long first turn; QEMU is then ended (the power is cut). The next test boots
 * the same disk again and sends the session's next turn.
 */
const persist = join(out, 'persist', 'aios-default.raw');
const PKI = join(out, 'aios-default.pki');
const LONG_TURN = Array.from({ length: 8 }, (_, i) => `Note ${i + 1}: the lighthouse keeper writes down the wind, the tide, the ships that passed and the colour of the sky before the lamp is lit.`).join('\n');
interface SessionTurn {
  cache: string;
  restored: number;
  cached: number;
  promptTokens: number;
  restoreMs: number;
  saved: boolean;
  note: string;
  /** The whole request (a 4-token answer) as the client saw it. */
  latencyMs: number;
}
async function sessionTurn(address: string, tlsDir: string | undefined, prompt: string): Promise<SessionTurn> {
  const { connect, unary } = await import('../../src/runtime/client.js');
  const c = connect(address, { tlsDir });
  try {
    const t0 = Date.now();
    const r = await unary(c, 'Infer', { prompt, session_id: 'reboot', intelligence_level: 'operational', max_tokens: 4, temperature: 0 }, 300_000);
    const latencyMs = Date.now() - t0;
    const o = r.session!;
    return { cache: o.cache, restored: o.restored_tokens, cached: o.cached_tokens, promptTokens: r.prompt_tokens, restoreMs: o.restore_ms, saved: o.saved, note: o.note, latencyMs };
  } finally {
    c.close();
  }
}
let firstBootSession: { ok: boolean; value?: unknown; error?: string } | undefined;

describe('aios build image + qemu-test (default recipe)', () => {
  it('builds out/aios-default.raw with a manifest', { timeout: 20 * 60_000 }, async () => {
    first = await build({ recipe: 'default', outDir: out, renderer: 'silent' });
    expect(first.image).toBe(join(out, 'aios-default.raw'));
    expect(existsSync(first.image)).toBe(true);
    expect(first.stages.map((s) => s.name)).toEqual(['rootfs', 'llama', 'models', 'overlay', 'image']);
    const m = JSON.parse(readFileSync(first.manifest, 'utf8'));
    expect(m.image.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(m.kernel.version).toMatch(/^6\.12\./);
    expect(m.packages['systemd-boot-efi']).toBeTruthy();
    expect(m.packages['linux-image-amd64']).toBeTruthy();
    expect(m.packages['systemd-zram-generator']).toBeTruthy();
    expect(m.llama.isa.cpu).toBe('x86-64-v3');
    const wish = (s: string) => m.kernel.wishes.find((w: { symbol: string }) => w.symbol === s).status;
    expect([wish('PREEMPT_VOLUNTARY'), wish('TRANSPARENT_HUGEPAGE_MADVISE'), wish('NUMA'), wish('HZ_300')]).toEqual(['already', 'at-boot', 'at-boot', 'needs-rebuild']);
    expect(m.llama.isa.flags).toEqual(expect.arrayContaining(['avx2', 'fma', 'f16c']));
    expect(m.llama.version).toMatch(/version: \d+/);
    expect(m.llama.source.origin).toBe('npm:node-llama-cpp@3.22.1');
    expect(m.models).toHaveLength(1);
    expect(m.models[0]).toMatchObject({ name: 'aios-tiny', level: 'operational', file: 'aios-tiny.gguf', info: { architecture: 'llama', vocabSize: 32000, fileType: 'F32' } });
    // Nothing temporary left next to the image; the image's credentials beside it (0700).
    expect(readdirSync(out).sort()).toEqual(['aios-default.manifest.json', 'aios-default.pki', 'aios-default.raw']);
    expect(statSync(join(out, 'aios-default.pki')).mode & 0o777).toBe(0o700);
    expect(first.pki).toBe(join(out, 'aios-default.pki'));
    // The manifest has the certificates' fingerprints, never a key.
    const fp = (f: string) => new X509Certificate(readFileSync(join(out, 'aios-default.pki', f))).fingerprint256.replace(/:/g, '').toLowerCase();
    expect(m.runtime).toMatchObject({ listen: '0.0.0.0:50051', http_listen: '127.0.0.1:8080', tls: { ca: fp('ca.crt'), server: fp('server.crt'), sans: ['DNS:aios', 'DNS:localhost', 'IP:127.0.0.1', 'IP:::1'] } });
    expect(m.runtime.insecure_listen).toBeUndefined();
  });

  it('has a GPT with an ESP holding systemd-boot, kernel, initrd and the entry', async () => {
    const { stdout } = await execa('sfdisk', ['-J', first.image]);
    const parts = JSON.parse(stdout).partitiontable.partitions;
    expect(parts.map((p: { type: string }) => p.type)).toEqual(['C12A7328-F81F-11D2-BA4B-00A0C93EC93B', '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709']);
    const env = { ...process.env, MTOOLS_SKIP_CHECK: '1' };
    const esp = `${first.image}@@${parts[0].start * 512}`;
    const ls = await execa('mdir', ['-/', '-b', '-i', esp, '::/'], { env });
    expect(ls.stdout).toMatch(/::\/EFI\/BOOT\/BOOTX64\.EFI/);
    expect(ls.stdout).toMatch(/::\/loader\/entries\/aios\.conf/);
    expect(ls.stdout).toMatch(/::\/aios\/6\.12\.[^/]+\/linux/);
    const entry = await execa('mtype', ['-i', esp, '::/loader/entries/aios.conf'], { env });
    expect(entry.stdout).toMatch(new RegExp(`options root=PARTUUID=${parts[1].uuid.toLowerCase()} `));
    // The kernel and initrd the entry names are both on the ESP, and the initrd is not empty.
    const version = /^version\s+(\S+)$/m.exec(entry.stdout)![1]!;
    const v = version.replace(/[.+]/g, '\\$&');
    expect(entry.stdout).toMatch(new RegExp(`^linux\\s+/aios/${v}/linux$`, 'm'));
    expect(entry.stdout).toMatch(new RegExp(`^initrd\\s+/aios/${v}/initrd$`, 'm'));
    expect(ls.stdout).toContain(`::/aios/${version}/linux`);
    expect(ls.stdout).toContain(`::/aios/${version}/initrd`);
    const initrd = await execa('mtype', ['-i', esp, `::/aios/${version}/initrd`], { env, encoding: 'buffer' });
    expect(initrd.stdout.length).toBeGreaterThan(1024 * 1024);
  });

  it('has an ext4 root with the rendered files and masked units', async () => {
    const { stdout } = await execa('sfdisk', ['-J', first.image]);
    const root = JSON.parse(stdout).partitiontable.partitions[1];
    rootImg = join(tmp(), 'root.img');
    const img = rootImg;
    await execa('dd', [`if=${first.image}`, `of=${img}`, 'bs=1M', `skip=${(root.start * 512) / MiB}`, `count=${(root.size * 512) / MiB}`, 'conv=sparse', 'status=none']);
    const cat = async (p: string) => (await execa('debugfs', ['-R', `cat ${p}`, img])).stdout;
    expect(await cat('/etc/hostname')).toBe('aios');
    expect(await cat('/etc/fstab')).toMatch(/noatime/);
    expect(await cat('/etc/systemd/zram-generator.conf')).toMatch(/compression-algorithm = zstd/);
    const mask = await execa('debugfs', ['-R', 'stat /etc/systemd/system/cups.service', img]);
    expect(mask.stdout).toMatch(/Fast link dest: "\/dev\/null"/);
    const fs = await execa('dumpe2fs', ['-h', img]);
    expect(fs.stdout).toMatch(/Filesystem volume name:\s+root/);
    const cfg = await cat('/etc/aios/config.toml');
    expect(cfg).toMatch(/\[models.operational\]\nname = "aios-tiny.gguf"/);
    const bin = await execa('debugfs', ['-R', 'stat /usr/bin/llama-server', img]);
    expect(bin.stdout).toMatch(/Mode:\s+0755/);
    // Access control: TLS settings in the config, the server's key and the hashed API keys as root's
    // 0600 credentials, the certificates readable, the socket's group; no CA or client key in the image.
    expect(cfg).toMatch(/^tls_key = "server.key"$/m);
    expect(cfg).toMatch(/^tls_client_ca = "\/etc\/aios\/tls\/ca.crt"$/m);
    expect(cfg).toMatch(/^socket_group = "aios"$/m);
    const mode = async (p: string) => /Mode:\s+(\d+)/.exec((await execa('debugfs', ['-R', `stat ${p}`, img])).stdout)?.[1];
    const owner = async (p: string) => /User:\s+(\d+)\s+Group:\s+(\d+)/.exec((await execa('debugfs', ['-R', `stat ${p}`, img])).stdout)?.slice(1, 3);
    expect(await mode('/etc/aios/credentials')).toBe('0700');
    expect(await mode('/etc/aios/credentials/server.key')).toBe('0600');
    expect(await owner('/etc/aios/credentials/server.key')).toEqual(['0', '0']);
    expect(await mode('/etc/aios/credentials/http-keys')).toBe('0600');
    expect(await cat('/etc/aios/tls/server.crt')).toBe(readFileSync(join(out, 'aios-default.pki/server.crt'), 'utf8').trim());
    expect(await cat('/etc/aios/credentials/server.key')).toBe(readFileSync(join(out, 'aios-default.pki/server.key'), 'utf8').trim());
    expect(await cat('/etc/group')).toMatch(/^aios:x:\d+:$/m);
    const unit = await cat('/usr/lib/systemd/system/aios-runtime.service');
    expect(unit).toMatch(/^LoadCredential=server.key:\/etc\/aios\/credentials\/server.key$/m);
    expect(unit).toMatch(/^Group=aios$/m);
    // The CA's key, the builder's client key and plaintext API key are nowhere in the root filesystem's bytes.
    for (const f of ['ca.key', 'client.key', 'http-key']) {
      const text = readFileSync(join(out, 'aios-default.pki', f), 'utf8');
      const needle = text.includes('-----') ? text.split('\n')[1]! : text.trim();
      const g = await execa('grep', ['-c', '-a', '-F', needle, img], { reject: false });
      expect([f, g.exitCode]).toEqual([f, 1]);
    }
  });

  it('boots to multi-user with no failed units (aios qemu-test)', { timeout: 13 * 60_000 }, async () => {
    // A copy that keeps the guest's writes (with its manifest beside it), for the saved session's reboot test below.
    mkdirSync(join(out, 'persist'));
    await execa('cp', ['--sparse=always', first.image, persist]);
    copyFileSync(first.manifest, join(out, 'persist', 'aios-default.manifest.json'));
    const res = await qemuTest(persist, { timeout: 540, serialLog: join(out, 'boot.serial.log'), tlsDir: PKI, snapshot: false, during: (a, tls) => sessionTurn(a, tls, LONG_TURN), oomCheck: true });
    firstBootSession = res.during;
    expect(res.reason).toBeUndefined();
    expect(res.ok).toBe(true);
    expect(res.guest.failedUnits).toEqual([]);
    expect(res.guest.kernel).toMatch(/^6\.12\./);
    expect(res.guest.cmdline).toContain('transparent_hugepage=madvise');
    // Kernel wishes the stock kernel honours at boot are on the command line and live in the guest.
    expect(res.guest.cmdline).toContain('cpufreq.default_governor=performance');
    expect(res.guest.cmdline).toContain('numa=off');
    const live = Object.fromEntries(res.kernelWishes.map((w) => [`${w.symbol}=${w.value}`, w.live]));
    expect(live).toMatchObject({ 'PREEMPT_VOLUNTARY=y': 'yes', 'TRANSPARENT_HUGEPAGE_MADVISE=y': 'yes', 'NUMA=n': 'yes', 'HZ_300=y': 'no' });
    expect(res.guest.thp).toContain('[madvise]');
    expect(res.guest.swap).toMatch(/\/dev\/zram0/);
    expect(res.guest.root).toMatch(/^ext4 .*noatime/);
    // llama.cpp runs inside the guest (built for x86-64-v3, which QEMU's -cpu max provides)...
    expect(res.guest.llamaVersion).toMatch(/version: \d+/);
    expect(res.guest.cpuFlags).toEqual(expect.arrayContaining(['avx2', 'fma', 'f16c']));
    // ...and the model arrived intact: GGUF header and the build's sha256.
    const m = JSON.parse(readFileSync(first.manifest, 'utf8'));
    expect(res.guest.models).toEqual([{ file: 'aios-tiny.gguf', magic: 'GGUF', version: 3, bytes: m.models[0].bytes, sha256: m.models[0].sha256 }]);
    // aios-runtime came up in the guest and answered the probe over gRPC through port forwarding.
    expect(res.guest.runtimeState).toBe('active');
    // The unit's sandboxing as the image's own systemd scores it (the unit test scores it with this host's).
    expect(res.guest.runtimeExposure).toBeGreaterThan(0);
    expect(res.guest.runtimeExposure).toBeLessThanOrEqual(2.0);
    expect(res.runtime).toMatchObject({ ok: true, text: 'OK', modelUsed: 'aios-tiny' });
    // `systemctl reload aios-runtime` works in the unit's sandbox (ExecReload: `aios runtime reload`): nothing changed, nothing restarted.
    expect(res.guest.runtimeReload).toBe('0 aios-tiny: not restarted (adapter files unchanged);');
    // The model sandbox in the image (docs/sandbox.md): the daemon manages its delegated cgroup,
    // and the model runs in a cgroup of its own with memory.max from its budget (the early-started
    // child gets it when the daemon takes it over), no swap, and the layer's CPU weight.
    const sandbox = res.guest.sandbox ?? [];
    expect(sandbox.join('\n')).toMatch(/model isolation: per-model cgroups under \/sys\/fs\/cgroup\/system\.slice\/aios-runtime\.service \(memory, cpu, cpuset, pids\);/);
    expect(sandbox.find((l) => l.startsWith('cgroup model-aios-tiny '))).toMatch(/memory\.max=\d+ memory\.swap\.max=0 cpu\.weight=100 memory\.current=\d+ procs=[1-9]/);
    // ...and in its sandbox inside the unit (unshare + setpriv): the daemon's self-test held, and
    // llama-server has no_new_privs, a seccomp filter of its own on top of the unit's, no
    // capabilities, its own user, network (only a loopback) and PID namespaces.
    expect(sandbox.join('\n')).toMatch(/sandbox: unshare \+ setpriv \(user, network and PID namespaces, Landlock, no_new_privs, seccomp\), self-test \d+ ms: own directory writable; a write beside it and a read of \/etc\/passwd refused/);
    const child = sandbox.find((l) => l.startsWith('child model-aios-tiny '));
    expect(child).toMatch(/ nnp=1 seccomp=2 filters=\d+ daemon_filters=\d+ caps=0000000000000000 userns=own netns=own pidns=own mntns=shared ifaces=lo$/);
    const [, filters, daemonFilters] = / filters=(\d+) daemon_filters=(\d+)/.exec(child!)!;
    expect(Number(filters)).toBe(Number(daemonFilters) + 1);
    // A second model given a memory limit far below its needs: killed by the kernel in its own cgroup,
    // reported out of memory, while the operational model and the daemon answered throughout.
    expect(res.oom, JSON.stringify(res.oom)).toMatchObject({ ok: true, model: { name: 'oom-check', state: 'failed', memory_limit_bytes: 8 * MiB }, failures: [], healthFailures: [] });
    expect(res.oom!.model!.oom_kills).toBeGreaterThanOrEqual(1);
    expect(res.oom!.loadError).toContain('out of memory: limit 8 MiB');
    expect(res.oom!.model!.error).toContain('out of memory: limit 8 MiB');
    console.log(`oom check: ${res.oom!.detail}`);
    expect(res.runtime!.readySeconds).toBeGreaterThan(0);
    // ...over mutual TLS, with the scopes enforced and the wrong clients refused.
    expect(res.tlsDir).toBe(join(out, 'aios-default.pki'));
    expect(res.access?.map((a) => [a.name, a.ok])).toEqual([
      ['infer-scope', true],
      ['admin-scope', true],
      ['plain-text', true],
      ['foreign-ca', true],
    ]);
    expect(res.access![0]!.detail).toMatch(/UnloadModel: PERMISSION_DENIED/);
    expect(res.warnings).toEqual([]);
    // The image's own `aios doctor` ran in the guest: the runtime up and answering, the wish the stock kernel cannot honour named.
    const doc = Object.fromEntries(res.guest.doctor!.findings.map((f) => [f.id, f]));
    expect(res.guest.doctor!.unparsed).toBe(0);
    for (const id of ['runtime.service', 'runtime.answers', 'models.failed', 'memory.thp', 'memory.zram', 'units.failed']) expect(doc[id]?.status, `${id}: ${doc[id]?.detail}`).toBe('ok');
    expect(doc['kernel.wishes']).toMatchObject({ status: 'warning', detail: expect.stringMatching(/not live: CONFIG_HZ_300=y/) });
    expect(res.guest.doctor!.verdict).toMatchObject({ ok: true, problems: 0 });
    // No private key or API key in the serial log (which holds the runtime's journal lines) or the build log.
    const secrets = ['ca.key', 'server.key', 'client.key', 'http-key'].map((f) => readFileSync(join(out, 'aios-default.pki', f), 'utf8'));
    const pemBody = (k: string) => k.split('\n').filter((l) => l && !l.startsWith('-----'));
    const logs = readFileSync(res.serialLog, 'utf8') + readFileSync(first.log, 'utf8') + JSON.stringify(res);
    for (const k of secrets) for (const line of pemBody(k)) expect(logs.includes(line)).toBe(false);
    console.log(`runtime ready ${res.runtime!.readySeconds} s after kernel start; probe answered in ${res.runtime!.latencyMs} ms`);
    console.log(`boot: ${res.accel}, multi-user ${res.guest.multiUser}s after kernel start, ${res.hostSeconds.toFixed(1)} s QEMU start to power-off`);
  });

  it('a saved session survives a power cut and a reboot: its next turn restores the KV state and llama-server reuses it instead of evaluating the conversation again', { timeout: 12 * 60_000 }, async () => {
    expect(firstBootSession?.error).toBeUndefined();
    const before = firstBootSession!.value as SessionTurn;
    expect(before).toMatchObject({ cache: 'new', saved: true, restored: 0 });
    expect(before.promptTokens).toBeGreaterThan(200);
    // The same disk booted again (the first boot's power was cut right after its answer): the next turn.
    const res = await qemuTest(persist, { timeout: 540, serialLog: join(out, 'reboot.serial.log'), tlsDir: PKI, during: (a, tls) => sessionTurn(a, tls, 'Go on.') });
    expect(res.reason).toBeUndefined();
    expect(res.during?.error).toBeUndefined();
    const after = res.during!.value as SessionTurn;
    // Restored, and used: llama-server's own count of the prompt tokens it took from its cache covers the
    // whole first turn; only the new turn (and the previous answer) were evaluated.
    expect(after.cache, after.note).toBe('hit');
    expect(after.restored).toBeGreaterThanOrEqual(before.promptTokens);
    expect(after.cached).toBeGreaterThanOrEqual(Math.floor(before.promptTokens * 0.9));
    expect(after.promptTokens).toBeGreaterThan(before.promptTokens);
    // (the new turn is the previous answer and "Go on." in the chat template: tens of tokens, not the conversation)
    expect(after.promptTokens - after.cached).toBeLessThan(before.promptTokens / 4);
    expect(after.saved).toBe(true);
    console.log(
      `session across a reboot (TCG): first turn ${before.promptTokens} prompt tokens evaluated in ${before.latencyMs} ms; ` +
        `after the reboot ${after.cached} of ${after.promptTokens} prompt tokens restored (${after.restored} tokens, restore ${after.restoreMs.toFixed(0)} ms) and ${after.promptTokens - after.cached} evaluated, in ${after.latencyMs} ms`,
    );
  });

  it('reuses every stage when nothing changed, and only re-runs overlay + image after a template change', { timeout: 10 * 60_000 }, async () => {
    const again = await build({ recipe: 'default', outDir: out, renderer: 'silent' });
    expect(again.stages.map((s) => s.cached)).toEqual([true, true, true, true, true]);
    const changed = await build({ recipe: 'default', outDir: out, renderer: 'silent', sets: ['system.hostname=changed'] });
    expect(changed.stages.map((s) => [s.name, s.cached])).toEqual([
      ['rootfs', true],
      ['llama', true],
      ['models', true],
      ['overlay', false],
      ['image', false],
    ]);
  });

  it('builds an image open on purpose (runtime.tls = false, insecure_listen = true): warned, no credentials, the runtime told', { timeout: 10 * 60_000 }, async () => {
    const dir = tmp('aios-e2e-insecure-');
    const open = await build({ recipe: 'default', outDir: dir, renderer: 'silent', sets: ['runtime.tls=false', 'runtime.insecure_listen=true'] });
    expect(open.warnings.join('\n')).toMatch(/runtime\.insecure_listen: 0\.0\.0\.0:50051 \(runtime\.listen\) will accept anyone on the network without authentication/);
    expect(open.pki).toBeUndefined();
    expect(readdirSync(dir).sort()).toEqual(['aios-default.manifest.json', 'aios-default.raw']);
    const m = JSON.parse(readFileSync(open.manifest, 'utf8'));
    expect(m.runtime).toMatchObject({ listen: '0.0.0.0:50051', insecure_listen: true });
    expect(m.runtime.tls).toBeUndefined();
    const { stdout } = await execa('sfdisk', ['-J', open.image]);
    const root = JSON.parse(stdout).partitiontable.partitions[1];
    const img = join(dir, 'root.img');
    await execa('dd', [`if=${open.image}`, `of=${img}`, 'bs=1M', `skip=${(root.start * 512) / MiB}`, `count=${(root.size * 512) / MiB}`, 'conv=sparse', 'status=none']);
    const cfg = (await execa('debugfs', ['-R', 'cat /etc/aios/config.toml', img])).stdout;
    expect(cfg).toMatch(/^insecure_listen = true$/m);
    expect(cfg).not.toMatch(/tls_key/);
    expect((await execa('debugfs', ['-R', 'stat /etc/aios/credentials', img])).stderr).toMatch(/File not found/);
    expect((await execa('debugfs', ['-R', 'cat /usr/lib/systemd/system/aios-runtime.service', img])).stdout).not.toMatch(/LoadCredential/);
  });

  // An XFS root (filesystem.root = "xfs") is built and booted in test/e2e/fleet-wireguard-boot.test.ts
  // (the WireGuard worker image has one: one boot checks both).

  it('an interrupted build leaves no image and no temp dirs, and the rerun resumes from the cache', { timeout: 10 * 60_000 }, async () => {
    const dir = tmp('aios-e2e-int-');
    const child = execa('node', ['bin/aios.js', 'build', 'image', '--out', dir, '--set', 'system.hostname=interrupted'], { reject: false, all: true });
    await new Promise<void>((resolve) => {
      child.all!.on('data', (d: Buffer) => {
        if (/Assemble the GPT disk image|making the ext4/.test(d.toString())) resolve();
      });
      void child.then(() => resolve());
    });
    child.kill('SIGINT');
    const r = await child;
    expect(r.exitCode).toBe(130);
    // Only the image's credentials, made before the stages run (kept: the rerun reuses them).
    expect(readdirSync(dir)).toEqual(['aios-default.pki']);
    const stageDir = join(defaultCacheDir(), 'stages', 'image');
    expect(readdirSync(stageDir).filter((d) => d.endsWith(`.tmp-${child.pid}`))).toEqual([]);
    const rerun = await cli(['build', 'image', '--out', dir, '--set', 'system.hostname=interrupted', '--json']);
    expect(rerun.exitCode).toBe(0);
    const res = JSON.parse(rerun.stdout);
    expect(res.stages.find((s: { name: string }) => s.name === 'rootfs').cached).toBe(true);
    expect(readdirSync(dir).sort()).toEqual(['aios-default.manifest.json', 'aios-default.pki', 'aios-default.raw']);
  });
});
