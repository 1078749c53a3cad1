/**
 * aios doctor on a build host: every check's failure path, by changing what its probe sees (a PATH
 * without the tool, a small tmpfs for the cache, a mirror on 127.0.0.1 that answers or does not), and
 * the verdict, exit code and --json shape through the real CLI.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { join } from 'node:path';
import { execa } from 'execa';
import { loadRecipe } from '../../src/config/load.js';
import { distroFor } from '../../src/distros/index.js';
import { STAGES, type BuildContext } from '../../src/build/stages/index.js';
import { StageCache } from '../../src/build/cache.js';
import { sourceIdentity } from '../../src/build/llama.js';
import { kvmWorks } from '../../src/qemu/index.js';
import { hostChecks, runChecks, verdictOf, formatReport, type Check, type HostCheckOptions, type Result } from '../../src/doctor/index.js';
import { wantColour } from '../../src/doctor/format.js';
import { TOOL_GROUPS } from '../../src/doctor/tools.js';
import { freePort } from '../../src/util/net.js';
import { cli, tmp } from '../helpers.js';

const isRoot = process.getuid?.() === 0;

/** A PATH with nothing on it but node. */
function nodeOnlyPath(): string {
  const d = tmp('aios-doctor-path-');
  symlinkSync(process.execPath, join(d, 'node'));
  return d;
}

async function find(o: Partial<HostCheckOptions> & { sets?: string[] }, id: string): Promise<Result> {
  const recipe = o.recipe ?? (await loadRecipe('default', { sets: o.sets ?? [] }));
  const dir = tmp('aios-doctor-');
  const checks = hostChecks({ recipe, cacheDir: o.cacheDir ?? join(dir, 'cache'), outDir: o.outDir ?? join(dir, 'out'), probe: o.probe, netTimeoutMs: o.netTimeoutMs });
  const c = checks.find((x) => x.id === id);
  if (!c) throw new Error(`no check ${id} (have ${checks.map((x) => x.id).join(', ')})`);
  return { id: c.id, title: c.title, ...(await c.run()) };
}

/** A stage record in a fake cache dir, as StageCache.put writes it. */
function cacheRecord(cacheDir: string, stage: string, inputs: unknown, files: Record<string, string> = {}, extra: Record<string, unknown> = {}): void {
  const d = join(cacheDir, 'stages', stage, '0123456789abcdef');
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'stage.json'), JSON.stringify({ stage, key: '0123456789abcdef', inputs, created: new Date().toISOString(), seconds: 1, ...extra }));
  for (const [f, text] of Object.entries(files)) writeFileSync(join(d, f), text);
}

// A small HTTP server on 127.0.0.1: the Debian mirror's Release file, npm's ping, and a path that never answers.
let server: Server;
let base = '';
const requests: string[] = [];
beforeAll(async () => {
  server = createServer((req, res) => {
    requests.push(`${req.method} ${req.url}`);
    if (req.url === '/slow') return; // never answers
    const ok = ['/debian/dists/trixie/Release', '/arch/core/os/x86_64/core.db', '/npm/-/ping'].includes(req.url ?? '');
    res.writeHead(ok ? 200 : 404, { 'content-type': 'text/plain' }).end(ok ? 'Origin: Debian\n' : 'not found\n');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const a = server.address();
  base = `http://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
});

describe('tools', () => {
  it('a PATH without the tools: the build stages are problems with the Debian package to install, the rest warnings naming what cannot run', async () => {
    const probe = { path: nodeOnlyPath() };
    const rootfs = await find({ probe }, 'tools.rootfs');
    expect(rootfs).toMatchObject({ status: 'problem', blocks: ['build'] });
    expect(rootfs.detail).toContain('missing mmdebstrap (mmdebstrap)');
    expect(rootfs.fix).toMatch(/^(sudo )?apt-get install -y mmdebstrap$/);

    const image = await find({ probe }, 'tools.image');
    expect(image.status).toBe('problem');
    expect(image.fix).toMatch(/apt-get install -y fdisk dosfstools mtools e2fsprogs coreutils$/);

    const flash = await find({ probe }, 'tools.flash');
    expect(flash).toMatchObject({ status: 'warning', blocks: ['flash'] });
    expect(flash.detail).toContain('aios flash cannot run');

    const kernel = await find({ probe }, 'tools.kernel');
    expect(kernel).toMatchObject({ status: 'warning', blocks: ['kernel-build'] });
    // kernel.build = true: the same tools are a problem for the build.
    expect(await find({ probe, sets: ['kernel.build=true'] }, 'tools.kernel')).toMatchObject({ status: 'problem', blocks: ['build', 'kernel-build'] });

    // The ISO tools matter only when the recipe builds an ISO.
    expect((await find({ probe }, 'tools.iso')).status).toBe('warning');
    expect((await find({ probe, sets: ['image.formats=["disk","iso"]'] }, 'tools.iso')).status).toBe('problem');

    const qemu = await find({ probe }, 'qemu');
    expect(qemu).toMatchObject({ status: 'warning', blocks: ['boot-test'] });
    expect(qemu.fix).toMatch(/apt-get install -y qemu-system-x86$/);
  });

  it('the same tools are found on the real PATH (this host is set up by scripts/setup.sh)', async () => {
    for (const id of ['tools.rootfs', 'tools.image', 'tools.overlay', 'tools.llama', 'qemu']) expect((await find({}, id)).status, id).toBe('ok');
    const rootfs = await find({}, 'tools.rootfs');
    expect(rootfs.detail).toMatch(/^mmdebstrap \d+\.\d+/);
    expect((await find({}, 'qemu')).detail).toMatch(/^qemu-system-x86_64 \d+\.\d+/);
  });

  it('llama.toolchain = "tools-tree": the host needs no compilers for llama.cpp, but mmdebstrap and bubblewrap', async () => {
    const probe = { path: nodeOnlyPath() };
    const host = await find({ probe }, 'tools.llama');
    expect(host.fix).toMatch(/\bg\+\+/);
    const tree = await find({ probe, sets: ['llama.toolchain=tools-tree'] }, 'tools.llama');
    expect(tree).toMatchObject({ status: 'problem', blocks: ['build'] });
    expect(tree.fix).toMatch(/\bmmdebstrap\b/);
    expect(tree.fix).toMatch(/\bbubblewrap\b/);
    expect(tree.fix).not.toMatch(/\b(g\+\+|cmake|ninja-build)\b/);
    expect((await find({ sets: ['llama.toolchain=tools-tree'] }, 'tools.llama')).status).toBe('ok');
  });

  it('on an Arch host the fix is pacman with Arch\'s package names', async () => {
    const iso = await find({ probe: { path: nodeOnlyPath(), osIds: () => ['arch'] } }, 'tools.iso');
    expect(iso.fix).toMatch(/pacman -S --needed squashfs-tools libisoburn dosfstools mtools$/);
  });

  it('python3 without numpy: a problem when the recipe synthesizes a model, else a warning', async () => {
    const probe = { python: '/nonexistent/python3' };
    const synth = await find({ probe }, 'tools.models');
    expect(synth).toMatchObject({ status: 'problem', blocks: ['build'] });
    expect(synth.fix).toMatch(/apt-get install -y python3-numpy$/);
    expect((await find({ probe, sets: ['models=[]', 'runtime.enabled=false'] }, 'tools.models')).status).toBe('warning');
    expect((await find({}, 'tools.models')).status).toBe('ok');
  });

  it('covers every tool and package the stages\' own checks name (run on an empty PATH)', async () => {
    const recipe = await loadRecipe('default', { sets: ['image.formats=["disk","iso"]', 'kernel.build=true', 'filesystem.root=xfs'] });
    const cacheDir = tmp('aios-doctor-cache-');
    const ctx = { recipe, distro: distroFor('debian'), cacheDir, cache: new StageCache(cacheDir), asRoot: true, outputs: {}, warnings: [], progress: () => {} } as unknown as BuildContext;
    const saved = process.env.PATH;
    process.env.PATH = tmp('aios-doctor-empty-');
    let messages: string[] = [];
    try {
      for (const s of STAGES) messages.push(...(await s.check(ctx)));
    } finally {
      process.env.PATH = saved;
    }
    messages = messages.filter((m) => /not found/.test(m));
    const named = messages.map((m) => /^(\S+) not found \(install the Debian package (\S+)/.exec(m)).map((m) => ({ cmd: m![1]!, debian: m![2]!.replace(/\)$/, '') }));
    expect(named.length).toBeGreaterThan(25);
    const table = TOOL_GROUPS.flatMap((g) => g.tools(recipe));
    for (const n of named) expect(table, `${n.cmd} (${n.debian})`).toContainEqual(expect.objectContaining(n));
  });
});

describe('versions', () => {
  it('no OVMF firmware: qemu-test cannot boot', async () => {
    const f = await find({ probe: { exists: (p) => !/OVMF|edk2/.test(p) && existsSync(p) } }, 'ovmf');
    expect(f).toMatchObject({ status: 'warning', blocks: ['boot-test'] });
    expect(f.fix).toMatch(/apt-get install -y ovmf$/);
    expect((await find({}, 'ovmf')).detail).toMatch(/OVMF_CODE.*\(ovmf \S+\)/);
  });

  it('systemd-boot: read from a cached rootfs of the suite; older than 254 cannot take qemu-test\'s command line', async () => {
    const cacheDir = tmp('aios-doctor-cache-');
    expect((await find({ cacheDir }, 'systemd-boot')).detail).toContain("comes from debian trixie's archive");
    cacheRecord(cacheDir, 'rootfs', { distro: 'debian', suite: 'trixie' }, { 'packages.json': JSON.stringify({ 'systemd-boot-efi': '252.39-1~deb12u1' }) });
    const old = await find({ cacheDir }, 'systemd-boot');
    expect(old).toMatchObject({ status: 'warning', blocks: ['boot-test'] });
    expect(old.detail).toContain('252.39-1~deb12u1');
    const other = tmp('aios-doctor-cache-');
    cacheRecord(other, 'rootfs', { distro: 'debian', suite: 'trixie' }, { 'packages.json': JSON.stringify({ 'systemd-boot-efi': '257.13-1~deb13u1' }) });
    expect(await find({ cacheDir: other }, 'systemd-boot')).toMatchObject({ status: 'ok', facts: { version: '257.13-1~deb13u1' } });
  });
});

describe('privileges', () => {
  it('not root and no working user namespaces (no unshare on PATH): a build cannot run', async () => {
    const f = await find({ probe: { uid: () => 1000, path: nodeOnlyPath() } }, 'privileges');
    expect(f).toMatchObject({ status: 'problem', blocks: ['build', 'flash'] });
    expect(f.fix).toContain('sysctl -w kernel.unprivileged_userns_clone=1');
  });

  it.skipIf(!isRoot)('not root but user namespaces work: mmdebstrap --mode=unshare, flash needs root', async () => {
    expect(await find({ probe: { uid: () => 1000 } }, 'privileges')).toMatchObject({ status: 'warning', blocks: ['flash'] });
    expect((await find({}, 'privileges')).detail).toContain('--mode=root');
  });
});

describe.skipIf(!isRoot)('free space (a real tmpfs)', () => {
  let mnt: string;
  beforeAll(async () => {
    mnt = tmp('aios-doctor-tmpfs-');
    await execa('mount', ['-t', 'tmpfs', '-o', 'size=2500m', 'tmpfs', mnt]);
  });
  afterAll(async () => {
    await execa('umount', [mnt], { reject: false });
    rmSync(mnt, { recursive: true, force: true });
  });

  it('the preflight thresholds: cache 3 GiB, output 2 GiB, the kernel build its own; nothing is created', async () => {
    const cacheDir = join(mnt, 'cache', 'aios');
    const cache = await find({ cacheDir, outDir: mnt }, 'space.cache');
    expect(cache).toMatchObject({ status: 'problem', blocks: ['build'], facts: { measured: mnt } });
    expect(cache.detail).toMatch(/only 2\.4 GiB free in .*not made yet.*a build needs about 3\.0 GiB/);
    expect(existsSync(cacheDir)).toBe(false);
    expect((await find({ cacheDir, outDir: mnt }, 'space.output')).status).toBe('ok');
    // Old stage outputs (their recorded bytes) count: a build removes them when it runs short.
    cacheRecord(cacheDir, 'rootfs', { distro: 'debian', suite: 'trixie' }, {}, { bytes: 1024 ** 3 });
    const withOld = await find({ cacheDir, outDir: mnt }, 'space.cache');
    expect(withOld).toMatchObject({ status: 'ok', facts: { reclaimable: 1024 ** 3 } });
    expect(withOld.detail).toMatch(/2\.4 GiB free in .*and 1\.0 GiB in old stage outputs that a build removes/);
    rmSync(cacheDir, { recursive: true, force: true });

    await execa('mount', ['-o', 'remount,size=3500m', mnt]);
    expect((await find({ cacheDir }, 'space.cache')).status).toBe('ok');
    const kernel = await find({ cacheDir, sets: ['kernel.build=true'] }, 'space.cache');
    expect(kernel.status).toBe('problem');
    expect(kernel.detail).toContain('the kernel build (kernel.base = compact) needs about 4.0 GiB');
    // A kept kernel object dir holds most of a rebuild (the kernel stage's own rule).
    mkdirSync(join(cacheDir, 'kernel', 'obj'), { recursive: true });
    expect((await find({ cacheDir, sets: ['kernel.build=true'] }, 'space.cache')).status).toBe('ok');

    await execa('mount', ['-o', 'remount,size=1m', mnt]);
    const out = await find({ outDir: join(mnt, 'out') }, 'space.output');
    expect(out.status).toBe('problem');
    expect(out.detail).toMatch(/needs about 2\.0 GiB/);
  });
});

describe('loop devices and KVM', () => {
  it('no losetup: flash --grow-root cannot run; a real one finds a free device', async () => {
    const f = await find({ probe: { path: nodeOnlyPath() } }, 'loop');
    expect(f).toMatchObject({ status: 'warning', blocks: ['flash'] });
    expect(f.fix).toMatch(/apt-get install -y util-linux$/);
    if (isRoot) expect((await find({}, 'loop')).detail).toMatch(/^next free: \/dev\/loop\d+$/);
  });

  it('no KVM device, a device whose OVMF boot fails, one that cannot be tried: TCG, ~1–2 min boots', async () => {
    const absent = await find({ probe: { kvmDevice: '/nonexistent/kvm' } }, 'kvm');
    expect(absent.status).toBe('warning');
    expect(absent.detail).toBe('no /nonexistent/kvm: TCG will be used, boots take ~1–2 min');
    const dev = join(tmp('aios-doctor-kvm-'), 'kvm');
    writeFileSync(dev, '');
    const fails = await find({ probe: { kvmDevice: dev, kvmBoots: async () => false } }, 'kvm');
    expect(fails.detail).toContain('OVMF does not boot under KVM (the known "KVM internal error"): TCG will be used');
    expect((await find({ probe: { kvmDevice: dev, path: nodeOnlyPath() } }, 'kvm')).detail).toContain('cannot be tried without QEMU and OVMF');
    expect((await find({ probe: { kvmDevice: dev, kvmBoots: async () => true } }, 'kvm')).status).toBe('ok');
  });

  it('the real device and qemu/index.ts kvmWorks() agree', async () => {
    const f = await find({}, 'kvm');
    if (!existsSync('/dev/kvm')) expect(f.detail).toMatch(/^no \/dev\/kvm/);
    else expect(f.status).toBe((await kvmWorks()) ? 'ok' : 'warning');
  });
});

describe('network', () => {
  it('the recipe\'s Debian mirror: answers (HEAD of dists/<suite>/Release), has no such suite, nothing listens, no answer in time', async () => {
    const ok = await find({ sets: [`base.mirror=${base}/debian`] }, 'mirror');
    expect(ok.status).toBe('ok');
    expect(requests).toContain('HEAD /debian/dists/trixie/Release');

    const missing = await find({ sets: [`base.mirror=${base}/debian`, 'base.suite=nosuch'] }, 'mirror');
    expect(missing).toMatchObject({ status: 'problem', blocks: ['build'] });
    expect(missing.detail).toContain('HTTP 404');
    expect(missing.fix).toContain('base.suite (nosuch)');

    const port = await freePort();
    const refused = await find({ sets: [`base.mirror=http://127.0.0.1:${port}/debian`] }, 'mirror');
    expect(refused).toMatchObject({ status: 'problem', blocks: ['build'] });
    expect(refused.detail).toContain('ECONNREFUSED');

    // A cached rootfs of the suite: only a changed package list needs the mirror.
    const cacheDir = tmp('aios-doctor-cache-');
    cacheRecord(cacheDir, 'rootfs', { distro: 'debian', suite: 'trixie', mirror: `http://127.0.0.1:${port}/debian` });
    expect((await find({ cacheDir, sets: [`base.mirror=http://127.0.0.1:${port}/debian`] }, 'mirror')).status).toBe('warning');

    // /slow#: the rest of the URL (/dists/x/Release) becomes a fragment, so the request is GET /slow, which never answers.
    const slow = await find({ netTimeoutMs: 300, sets: [`base.mirror=${base}/slow#`, 'base.suite=x'] }, 'mirror');
    expect(slow.status).toBe('problem');
    expect(slow.detail).toContain('no answer in 0.3 s');

    expect((await find({ sets: ['base.distro=arch', 'base.suite=rolling', `base.mirror=${base}/arch`] }, 'mirror')).status).toBe('ok');
    expect(requests).toContain('HEAD /arch/core/os/x86_64/core.db');
  });

  it('a server that accepts but never answers: a timeout, not a hang', async () => {
    const t0 = Date.now();
    // `${base}/slow#` + '/-/ping': the ping path becomes a fragment, the request goes to /slow.
    const f = await find({ netTimeoutMs: 300, probe: { npmRegistry: async () => `${base}/slow#` } }, 'npm');
    expect(Date.now() - t0).toBeLessThan(3000);
    expect(f.status).toBe('problem');
    expect(f.detail).toContain('no answer in 0.3 s');
  });

  it('the npm registry (GET /-/ping): answers; unreachable is a problem while llama.cpp comes from npm, else a warning', async () => {
    expect((await find({ probe: { npmRegistry: async () => `${base}/npm/` } }, 'npm')).status).toBe('ok');
    expect(requests).toContain('GET /npm/-/ping');
    const port = await freePort();
    const probe = { npmRegistry: async () => `http://127.0.0.1:${port}/` };
    const f = await find({ probe }, 'npm');
    expect(f).toMatchObject({ status: 'problem', blocks: ['build'] });
    expect(f.detail).toContain('ECONNREFUSED');
    expect(f.detail).toContain('node-llama-cpp@');
    expect(await find({ probe, sets: ['llama.enabled=false', 'models=[]', 'runtime.enabled=false'] }, 'npm')).toMatchObject({ status: 'warning', blocks: [] });
    const cacheDir = tmp('aios-doctor-cache-');
    const recipe = await loadRecipe('default');
    cacheRecord(cacheDir, 'llama', { v: 3, source: await sourceIdentity(recipe.llama) });
    expect((await find({ probe, cacheDir }, 'npm')).status).toBe('warning');
  });
});

describe('CPU ISA level', () => {
  const V4 = ['ssse3', 'sse4_1', 'sse4_2', 'popcnt', 'avx', 'avx2', 'fma', 'f16c', 'bmi2', 'movbe', 'avx512f', 'avx512bw', 'avx512cd', 'avx512dq', 'avx512vl'];
  const avx512 = { cpu: 'native' as const, march: 'sapphirerapids', flags: ['sse4_2', 'avx', 'avx2', 'fma', 'f16c', 'bmi2', 'avx512f', 'avx512bw'], description: '' };

  it('llama.cpu = native with AVX-512 and no KVM: qemu-test will refuse (TCG has no AVX-512)', async () => {
    const f = await find({ sets: ['llama.cpu=native'], probe: { nativeIsa: async () => avx512, kvmDevice: '/nonexistent/kvm' } }, 'cpu');
    expect(f).toMatchObject({ status: 'warning', blocks: ['boot-test'] });
    expect(f.detail).toContain('needs AVX-512, which TCG cannot emulate');
    expect(f.fix).toContain('--set llama.cpu=x86-64-v3');
    // With KVM that boots, the host CPU runs it.
    const dev = join(tmp('aios-doctor-kvm-'), 'kvm');
    writeFileSync(dev, '');
    expect((await find({ sets: ['llama.cpu=native'], probe: { nativeIsa: async () => avx512, kvmDevice: dev, kvmBoots: async () => true } }, 'cpu')).status).toBe('ok');
    // The default x86-64-v3: fine under TCG, and what native would give is still said.
    const v3 = await find({ probe: { nativeIsa: async () => avx512, cpuFlags: async () => V4 } }, 'cpu');
    expect(v3.detail).toContain('native → -march=sapphirerapids');
    expect(v3.detail).toContain('TCG cannot run it (no AVX-512)');
  });

  it('a recipe level above this host\'s: the overlay stage runs llama-server here and may SIGILL', async () => {
    const v2 = ['ssse3', 'sse4_1', 'sse4_2', 'popcnt'];
    const f = await find({ sets: ['llama.cpu=x86-64-v3'], probe: { cpuFlags: async () => v2, nativeIsa: async () => ({ cpu: 'native', march: 'nehalem', flags: ['sse4_2'], description: '' }) } }, 'cpu');
    expect(f.status).toBe('warning');
    expect(f.detail).toContain('which this host (x86-64-v2) lacks');
    expect(f.fix).toContain('--set llama.cpu=x86-64-v2');
  });

  it('reads this host\'s level off /proc/cpuinfo', async () => {
    const f = await find({}, 'cpu');
    expect(['x86-64', 'x86-64-v2', 'x86-64-v3', 'x86-64-v4']).toContain((f.facts as { level: string }).level);
  });
});

describe('access to the image', () => {
  it('the default: mutual TLS beyond loopback; a listener open on purpose (insecure_listen) is a warning with the fix', async () => {
    const ok = await find({}, 'access');
    expect(ok.status).toBe('ok');
    expect(ok.detail).toMatch(/^0\.0\.0\.0:50051 beyond loopback with mutual TLS; credentials in .*\/aios-default\.pki$/);
    const open = await find({ sets: ['runtime.tls=false', 'runtime.insecure_listen=true'] }, 'access');
    expect(open).toMatchObject({ status: 'warning', blocks: [] });
    expect(open.detail).toBe('runtime.insecure_listen: 0.0.0.0:50051 (runtime.listen) will accept anyone on the network without authentication');
    expect(open.fix).toMatch(/mutual TLS with per-image certificates is the default/);
    expect((await find({ sets: ['runtime.listen="127.0.0.1:50051"'] }, 'access')).detail).toBe('listeners on loopback only');
  });
});

describe('verdict and output', () => {
  const check = (id: string, status: 'ok' | 'warning' | 'problem', blocks: Result['blocks'] = []): Check => ({ id, title: id, run: async () => ({ status, detail: `${id} detail`, fix: `fix ${id}`, blocks }) });

  it('a build can run unless a finding is a problem; a check that throws is a warning, not a crash', async () => {
    const r = await runChecks([check('a', 'ok'), check('b', 'warning', ['flash']), { id: 'c', title: 'c', run: async () => Promise.reject(new Error('boom')) }], 'host', 'recipe x');
    expect(r.verdict).toEqual({ ok: true, text: 'a build can run (2 warnings; cannot run: flash)', problems: 0, warnings: 2, cannot: ['flash'] });
    expect(r.findings[2]).toMatchObject({ id: 'c', status: 'warning', detail: 'could not check: boom' });
    const bad = verdictOf([...r.findings, { id: 'd', title: 'd', status: 'problem', detail: '', blocks: ['build'] }]);
    expect(bad).toMatchObject({ ok: false, problems: 1, text: 'a build cannot run: 1 problem, 2 warnings' });
  });

  it('human output: aligned columns, the fix under a finding that is not ok, colour only when asked', async () => {
    const r = await runChecks([check('short', 'ok'), check('a much longer title', 'problem', ['build'])], 'host', 'recipe x');
    const plain = formatReport(r);
    const lines = plain.trimEnd().split('\n');
    expect(lines[1]!.indexOf('short detail')).toBe(lines[2]!.indexOf('a much longer title detail'));
    expect(lines[3]!.trim()).toBe('fix: fix a much longer title');
    expect(lines[3]!.indexOf('fix:')).toBe(lines[2]!.indexOf('a much longer title detail'));
    expect(plain).not.toContain('fix short');
    expect(lines.at(-1)).toBe('verdict: a build cannot run: 1 problem');
    expect(plain).not.toContain('\x1b[');
    expect(formatReport(r, { colour: true })).toContain('\x1b[31mproblem\x1b[0m');
    expect(wantColour({ isTTY: true }, {})).toBe(true);
    expect(wantColour({ isTTY: true }, { NO_COLOR: '1' })).toBe(false);
    expect(wantColour({ isTTY: true }, { NO_COLOR: '' })).toBe(true);
    expect(wantColour({ isTTY: false }, {})).toBe(false);
  });
});

describe('aios doctor (CLI)', () => {
  const local = () => ({ env: { npm_config_registry: `${base}/npm/` } });
  const dirs = () => {
    const d = tmp('aios-doctor-cli-');
    return ['--cache-dir', join(d, 'cache'), '-o', join(d, 'out')];
  };

  it('--json: the findings and the verdict; exit 0 when a build can run', async () => {
    const r = await cli(['doctor', '--json', ...dirs(), '--set', `base.mirror=${base}/debian`], local());
    expect(r.stderr).toBe('');
    const j = JSON.parse(r.stdout) as { target: string; subject: string; verdict: { ok: boolean; text: string; problems: number; warnings: number; cannot: string[] }; findings: Result[] };
    expect(j.target).toBe('host');
    expect(j.subject).toContain('aios-default');
    expect(Object.keys(j.verdict).sort()).toEqual(['cannot', 'ok', 'problems', 'text', 'warnings']);
    const ids = j.findings.map((f) => f.id);
    for (const id of ['tools.rootfs', 'tools.flash', 'qemu', 'ovmf', 'systemd-boot', 'privileges', 'space.cache', 'space.output', 'loop', 'kvm', 'mirror', 'npm', 'cpu']) expect(ids).toContain(id);
    for (const f of j.findings) {
      expect(['ok', 'warning', 'problem']).toContain(f.status);
      expect(f.detail).not.toContain('\n');
      if (f.status !== 'ok') expect(f.fix, f.id).toBeTruthy();
    }
    const problems = j.findings.filter((f) => f.status === 'problem');
    expect(problems, JSON.stringify(problems)).toEqual([]);
    expect(j.verdict.ok).toBe(true);
    expect(r.exitCode).toBe(0);
  });

  it('exit 1 with the problems when a build cannot run (no tools on PATH, the mirror unreachable)', async () => {
    const port = await freePort();
    const r = await cli(['doctor', '--json', ...dirs(), '--set', `base.mirror=http://127.0.0.1:${port}/debian`], { env: { ...local().env, PATH: nodeOnlyPath() } });
    expect(r.exitCode).toBe(1);
    const j = JSON.parse(r.stdout) as { verdict: { ok: boolean; cannot: string[] }; findings: Result[] };
    expect(j.verdict.ok).toBe(false);
    expect(j.verdict.cannot).toEqual(['build', 'boot-test', 'flash', 'kernel-build']);
    const problems = j.findings.filter((f) => f.status === 'problem').map((f) => f.id);
    expect(problems).toEqual(expect.arrayContaining(['tools.rootfs', 'tools.llama', 'tools.image', 'mirror']));
  });

  it('human output: no colour when piped; colour on a terminal unless NO_COLOR', async () => {
    const args = ['doctor', ...dirs(), '--set', `base.mirror=${base}/debian`];
    const piped = await cli(args, local());
    expect(piped.exitCode).toBe(0);
    expect(piped.stdout).toMatch(/^aios doctor: build host, recipe aios-default/);
    expect(piped.stdout).toMatch(/\nverdict: a build can run/);
    expect(piped.stdout).not.toContain('\x1b[');
    // A real terminal: script(1) gives the command a pty.
    const cmd = ['node', 'bin/aios.js', ...args].map((a) => `'${a}'`).join(' ');
    const tty = await execa('script', ['-qec', cmd, '/dev/null'], { reject: false, env: local().env });
    expect(tty.stdout).toContain('\x1b[32mok');
    const noColour = await execa('script', ['-qec', cmd, '/dev/null'], { reject: false, env: { ...local().env, NO_COLOR: '1' } });
    expect(noColour.stdout).toContain('verdict:');
    expect(noColour.stdout).not.toContain('\x1b[');
  });

  it('an invalid recipe: exit 2, nothing checked', async () => {
    const r = await cli(['doctor', '--set', 'image.formats=["floppy"]']);
    expect(r.exitCode).toBe(2);
    expect(r.stdout).toBe('');
  });
});
