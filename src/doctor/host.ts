/**
 * The build host's checks: tools per purpose (tools.ts), versions that matter (mmdebstrap, QEMU,
 * OVMF, the image's systemd-boot), privileges, free space, loop devices, KVM, the recipe's mirror and
 * the npm registry, the CPU's ISA level. Each check is one object; what it sees comes from the probe.
 */
import { join } from 'node:path';
import type { ResolvedRecipe } from '../config/schema.js';
import { isLoopback } from '../config/load.js';
import { isaFor, sourceIdentity, type Isa } from '../build/llama.js';
import { baseKind, DISK_BYTES } from '../kernel/build.js';
import { SPACE_NEEDED } from '../build/cache.js';
import { cpuFor, OVMF_CANDIDATES } from '../qemu/index.js';
import { formatSize } from '../util/size.js';
import { hostProbe, type HostProbe } from './probe.js';
import { archPackage, TOOL_GROUPS, type Tool, type ToolGroup } from './tools.js';
import type { Check, Finding, Purpose } from './types.js';

export interface HostCheckOptions {
  recipe: ResolvedRecipe;
  cacheDir: string;
  outDir: string;
  /** What the checks see (default: this host). */
  probe?: Partial<HostProbe>;
  /** Timeout of each network check (default 5 s). */
  netTimeoutMs?: number;
}

/** QEMU's TCG `max` CPU has AVX2/FMA/F16C from this version on (src/qemu/index.ts cpuFor). */
const QEMU_TCG_AVX2 = [7, 2];
/** systemd-boot reads io.systemd.boot.kernel-cmdline-extra from SMBIOS type 11 (qemu-test's aios.check=1) from this version on. */
const SYSTEMD_BOOT_SMBIOS = 254;

const once = <T>(f: () => Promise<T>): (() => Promise<T>) => {
  let p: Promise<T> | undefined;
  return () => (p ??= f());
};

/** CPU flags in a few words: avx512f avx512bw … → AVX-512. */
function families(flags: string[]): string {
  const names: [RegExp, string][] = [[/^avx512/, 'AVX-512'], [/^amx/, 'AMX'], [/^avx_vnni$/, 'AVX-VNNI'], [/^avx2$/, 'AVX2'], [/^avx$/, 'AVX'], [/^fma$/, 'FMA'], [/^f16c$/, 'F16C'], [/^bmi2$/, 'BMI2'], [/^sse4_2$/, 'SSE4.2']];
  const out: string[] = [];
  for (const f of flags) {
    const n = names.find(([re]) => re.test(f))?.[1] ?? f;
    if (!out.includes(n)) out.push(n);
  }
  return out.join(', ') || 'baseline x86-64';
}

const versionOf = (text: string): number[] | undefined => /(\d+)\.(\d+)(?:\.(\d+))?/.exec(text)?.slice(1).filter(Boolean).map(Number);
const atLeast = (v: number[], min: number[]) => {
  for (let i = 0; i < min.length; i++) if ((v[i] ?? 0) !== min[i]) return (v[i] ?? 0) > min[i]!;
  return true;
};

export function hostChecks(o: HostCheckOptions): Check[] {
  const r = o.recipe;
  const probe = hostProbe(o.probe);
  const netMs = o.netTimeoutMs ?? 5000;
  const root = probe.uid() === 0;
  const sudo = root ? '' : 'sudo ';

  /** The install command for these Debian packages, in this host's package manager. */
  const install = (debs: string[]): string => {
    const pkgs = [...new Set(debs)];
    const arch = pkgs.map((d) => archPackage(d));
    if (probe.osIds().includes('arch') && arch.every(Boolean)) return `${sudo}pacman -S --needed ${[...new Set(arch)].join(' ')}`;
    return `${sudo}apt-get install -y ${pkgs.join(' ')}`;
  };

  /** Is a tool there: a command on PATH, or a header (also under the multiarch include dir). */
  const find = async (tool: Tool): Promise<string | undefined> => {
    if (!tool.cmd.startsWith('/')) return probe.which(tool.cmd);
    const alt = tool.cmd.replace('/usr/include/', '/usr/include/x86_64-linux-gnu/');
    return [tool.cmd, alt].find((f) => probe.exists(f));
  };

  const kvm = once(async (): Promise<'absent' | 'boots' | 'fails' | 'unprobed'> => {
    if (!probe.exists(probe.kvmDevice)) return 'absent';
    if (!(await probe.which('qemu-system-x86_64')) || !ovmf()) return 'unprobed';
    return (await probe.kvmBoots().catch(() => false)) ? 'boots' : 'fails';
  });
  const ovmf = () => OVMF_CANDIDATES.find((c) => probe.exists(c.code) && probe.exists(c.vars));
  const nativeIsa = once(() => probe.nativeIsa());
  const recipeIsa = once(async (): Promise<Isa> => (r.llama.cpu === 'native' ? nativeIsa() : isaFor(r.llama.cpu)));
  /** The flags of these that QEMU's TCG cannot emulate (asked of qemu/index.ts cpuFor, one at a time). */
  const tcgLacks = async (flags: string[]) => {
    const out: string[] = [];
    for (const f of flags) if (await cpuFor([f], 'tcg').then(() => false, () => true)) out.push(f);
    return out;
  };
  /** Bytes the stage outputs in the cache take by their records (a build removes old ones when it runs short). */
  const reclaimable = async (): Promise<number> => {
    let n = 0;
    for (const stage of await probe.list(join(o.cacheDir, 'stages'))) {
      for (const k of await probe.list(join(o.cacheDir, 'stages', stage))) {
        try {
          n += (JSON.parse((await probe.readText(join(o.cacheDir, 'stages', stage, k, 'stage.json'))) ?? '{}') as { bytes?: number }).bytes ?? 0;
        } catch {
          /* a damaged record: not counted */
        }
      }
    }
    return n;
  };
  /** Stage outputs in the cache whose recorded inputs pass `match`. */
  const cached = async (stage: string, match: (inputs: Record<string, unknown>) => boolean): Promise<boolean> => {
    for (const k of await probe.list(join(o.cacheDir, 'stages', stage))) {
      const text = await probe.readText(join(o.cacheDir, 'stages', stage, k, 'stage.json'));
      try {
        if (text && match((JSON.parse(text) as { inputs: Record<string, unknown> }).inputs)) return true;
      } catch {
        /* a damaged record: not a match */
      }
    }
    return false;
  };

  const toolCheck = (g: ToolGroup): Check => ({
    id: g.id,
    title: g.title,
    async run(): Promise<Finding> {
      const tools = g.tools(r);
      const found = await Promise.all(tools.map(async (tool) => ({ ...tool, path: await find(tool) })));
      const missing = found.filter((f) => !f.path);
      const needed = g.forBuild(r);
      const facts: Record<string, unknown> = { tools: found.map((f) => ({ cmd: f.cmd, path: f.path ?? null, debian: f.debian, ...(f.arch ? { arch: f.arch } : {}) })), neededForBuild: needed };
      let extra: Finding | undefined;
      if (g.id === 'tools.rootfs' && r.base.distro === 'debian' && !missing.length) extra = await mmdebstrapFinding(facts);
      if (!missing.length) {
        const names = found.map((f) => (f.cmd.startsWith('/') ? f.cmd.split('/').pop() : f.cmd)).join(' ');
        return extra ?? { status: 'ok', detail: needed || g.purpose !== 'build' ? names : `${names} (not used by this recipe)`, facts };
      }
      const what = missing.map((m) => `${m.cmd} (${m.debian})`).join(', ');
      const purpose: Purpose = needed ? 'build' : g.purpose;
      const why: Record<Purpose, string> = {
        build: needed ? `a build of ${r.name} cannot run` : `needed only when ${g.id === 'tools.iso' ? 'image.formats has "iso"' : g.id === 'tools.image' ? 'image.formats has "disk"' : 'the recipe asks for it'}`,
        'boot-test': 'aios qemu-test cannot run',
        flash: 'aios flash cannot run',
        'kernel-build': 'kernel.build = true and aios kernel check cannot run',
      };
      return {
        status: needed ? 'problem' : 'warning',
        detail: `missing ${what}: ${why[purpose]}`,
        fix: install(missing.map((m) => m.debian)),
        blocks: needed ? ['build', ...(g.purpose === 'build' ? [] : [g.purpose])] : g.purpose === 'build' ? [] : [g.purpose],
        facts,
      };
    },
  });

  /** mmdebstrap is there: its version, and the two things of it aios relies on (--skip, the eatmydata hook). */
  async function mmdebstrapFinding(facts: Record<string, unknown>): Promise<Finding> {
    const v = await probe.run(['mmdebstrap', '--version'], 10_000);
    const version = /mmdebstrap\s+(\S+)/.exec(v.out)?.[1] ?? v.out.trim().split('\n')[0] ?? '?';
    const help = await probe.run(['mmdebstrap', '--help'], 10_000);
    const lacks = [
      ...(/--skip/.test(help.out) ? [] : ['--skip']),
      ...(probe.exists('/usr/share/mmdebstrap/hooks/eatmydata') ? [] : ['the eatmydata hook (/usr/share/mmdebstrap/hooks/eatmydata)']),
    ];
    Object.assign(facts, { mmdebstrap: version });
    if (lacks.length) {
      return { status: 'problem', detail: `mmdebstrap ${version} lacks ${lacks.join(' and ')}, which aios uses`, fix: `${install(['mmdebstrap'])} (a newer one: Debian 12's 1.3 works)`, blocks: ['build'], facts };
    }
    return { status: 'ok', detail: `mmdebstrap ${version}`, facts };
  }

  const checks: Check[] = [
    ...TOOL_GROUPS.map(toolCheck),
    {
      id: 'tools.models',
      title: 'python3 + numpy',
      async run() {
        const synth = r.models.some((m) => m.source === 'synth');
        const py = await probe.run([probe.python, '-c', 'import numpy; print(numpy.__version__)'], 15_000);
        const facts = { python: probe.python, numpy: py.code === 0 ? py.out.trim() : null, neededForBuild: synth };
        if (py.code === 0) return { status: 'ok', detail: `${probe.python}, numpy ${py.out.trim()}${synth ? '' : ' (not used by this recipe)'}`, facts };
        return {
          status: synth ? 'problem' : 'warning',
          detail: `${probe.python} cannot import numpy: ${synth ? 'the synthesized models of this recipe cannot be made' : 'synthesized models (aios models synth) cannot be made'}`,
          fix: install(['python3-numpy']),
          blocks: synth ? ['build'] : [],
          facts,
        };
      },
    },
    {
      id: 'qemu',
      title: 'QEMU',
      async run() {
        if (!(await probe.which('qemu-system-x86_64'))) {
          return { status: 'warning', detail: 'qemu-system-x86_64 missing: aios qemu-test and aios qemu cannot run', fix: install(['qemu-system-x86']), blocks: ['boot-test'] };
        }
        const out = (await probe.run(['qemu-system-x86_64', '--version'], 10_000)).out;
        const v = versionOf(/version\s+(\S+)/.exec(out)?.[1] ?? '');
        const text = v?.join('.') ?? '?';
        const needsAvx2 = (await recipeIsa()).flags.includes('avx2');
        if (v && needsAvx2 && !atLeast(v, QEMU_TCG_AVX2) && (await kvm()) !== 'boots') {
          return {
            status: 'warning',
            detail: `QEMU ${text}: TCG's max CPU has AVX2/FMA/F16C only from ${QEMU_TCG_AVX2.join('.')} on; this recipe's llama.cpp (${r.llama.cpu}) needs them, so qemu-test would crash it`,
            fix: `${install(['qemu-system-x86'])} (Debian 12 or newer has 7.2), or aios build image --set llama.cpu=x86-64-v2`,
            blocks: ['boot-test'],
            facts: { version: text },
          };
        }
        return { status: 'ok', detail: `qemu-system-x86_64 ${text}`, facts: { version: text } };
      },
    },
    {
      id: 'ovmf',
      title: 'OVMF (UEFI firmware)',
      async run() {
        const f = ovmf();
        if (!f) {
          return { status: 'warning', detail: `no OVMF firmware (looked for ${OVMF_CANDIDATES.map((c) => c.code).join(', ')}): aios qemu-test cannot boot`, fix: install(['ovmf']), blocks: ['boot-test'] };
        }
        const version = f.code.startsWith('/usr/share/edk2/') ? undefined : await probe.debVersion('ovmf');
        return { status: 'ok', detail: `${f.code}${version ? ` (ovmf ${version})` : ''}`, facts: { ...f, version: version ?? null } };
      },
    },
    {
      id: 'systemd-boot',
      title: 'systemd-boot (in the image)',
      async run() {
        // The boot loader comes from the image's own archive (systemd-boot-efi in the rootfs), not the host.
        const suite = `${r.base.distro} ${r.base.suite}`;
        let version: string | undefined;
        for (const k of await probe.list(join(o.cacheDir, 'stages', 'rootfs'))) {
          const dir = join(o.cacheDir, 'stages', 'rootfs', k);
          const rec = await probe.readText(join(dir, 'stage.json'));
          const pk = await probe.readText(join(dir, 'packages.json'));
          try {
            const inputs = (JSON.parse(rec ?? '{}') as { inputs?: { distro?: string; suite?: string } }).inputs;
            if (inputs?.distro !== r.base.distro || inputs?.suite !== r.base.suite || !pk) continue;
            const pkgs = JSON.parse(pk) as Record<string, string>;
            version = pkgs['systemd-boot-efi'] ?? pkgs.systemd;
            if (version) break;
          } catch {
            /* not a readable record */
          }
        }
        if (!version) return { status: 'ok', detail: `comes from ${suite}'s archive at build time (no cached rootfs to read its version from); the host needs none`, facts: { version: null } };
        const major = Number(/^(?:\d+:)?(\d+)/.exec(version)?.[1] ?? 0);
        if (major && major < SYSTEMD_BOOT_SMBIOS) {
          return {
            status: 'warning',
            detail: `${version} in the cached ${suite} rootfs: older than ${SYSTEMD_BOOT_SMBIOS}, it ignores the kernel command line qemu-test passes (SMBIOS type 11), so the boot check never runs`,
            fix: 'aios build image --set base.suite=trixie (or a newer suite in the recipe)',
            blocks: ['boot-test'],
            facts: { version },
          };
        }
        return { status: 'ok', detail: `${version} in the cached ${suite} rootfs (from the image's archive; the host needs none)`, facts: { version } };
      },
    },
    {
      id: 'privileges',
      title: 'root / user namespaces',
      async run() {
        if (root) return { status: 'ok', detail: 'running as root: mmdebstrap --mode=root', facts: { uid: 0 } };
        const flashNote = 'aios flash and loop devices need root';
        if (r.base.distro !== 'debian') return { status: 'warning', detail: `not root: pacstrap needs root; ${flashNote}`, fix: 'run aios as root (sudo)', blocks: ['build', 'flash'] };
        const u = await probe.run(['unshare', '--user', '--map-root-user', 'true'], 10_000);
        if (u.code === 0) return { status: 'warning', detail: `not root; user namespaces work (mmdebstrap --mode=unshare); ${flashNote}`, fix: 'run aios flash as root (sudo)', blocks: ['flash'], facts: { uid: probe.uid(), userns: true } };
        return {
          status: 'problem',
          detail: `not root and user namespaces do not work (${u.out.trim().split('\n').pop() || `unshare exit ${u.code}`})`,
          fix: 'run as root (sudo), or enable them: sysctl -w kernel.unprivileged_userns_clone=1 kernel.apparmor_restrict_unprivileged_userns=0',
          blocks: ['build', 'flash'],
          facts: { uid: probe.uid(), userns: false },
        };
      },
    },
    spaceCheck('space.cache', 'free space: cache', o.cacheDir, () => {
      // The kernel stage's own threshold (stages/kernel.ts check), unless a kept object dir holds most of a rebuild.
      const k = r.kernel.build && !probe.exists(join(o.cacheDir, 'kernel', 'obj')) ? DISK_BYTES[baseKind(r.kernel.base)] : 0;
      return k > SPACE_NEEDED.cache ? { need: k, why: `the kernel build (kernel.base = ${r.kernel.base})` } : { need: SPACE_NEEDED.cache, why: 'a build' };
    }, 'set AIOS_CACHE_DIR to a bigger disk (or free space there; a build removes the least recently used stage outputs when it runs short)', reclaimable),
    spaceCheck('space.output', 'free space: output', o.outDir, () => ({ need: SPACE_NEEDED.output, why: 'a build' }), 'use -o <dir> on a bigger disk, or free space there'),
    {
      id: 'loop',
      title: 'loop devices',
      async run() {
        const l = await probe.run(['losetup', '-f'], 10_000);
        const dev = l.out.trim().split('\n').pop() ?? '';
        if (l.code === 0 && dev.startsWith('/dev/')) return { status: 'ok', detail: `next free: ${dev}`, facts: { next: dev } };
        return {
          status: 'warning',
          detail: `no free loop device (${l.code === 127 ? 'losetup missing' : dev || `losetup exit ${l.code}`}): aios flash --grow-root and the flash tests need one (a build does not)`,
          fix: l.code === 127 ? install(['util-linux']) : `${sudo}modprobe loop`,
          blocks: ['flash'],
        };
      },
    },
    {
      id: 'kvm',
      title: 'KVM',
      async run() {
        const tcg = 'TCG will be used, boots take ~1–2 min';
        switch (await kvm()) {
          case 'boots':
            return { status: 'ok', detail: `${probe.kvmDevice} boots OVMF: qemu-test uses KVM`, facts: { device: true, boots: true } };
          case 'absent':
            return { status: 'warning', detail: `no ${probe.kvmDevice}: ${tcg}`, fix: `${sudo}modprobe kvm_intel (or kvm_amd); enable VT-x/AMD-V in the firmware, or nested virtualization in a VM`, facts: { device: false } };
          case 'unprobed':
            return { status: 'warning', detail: `${probe.kvmDevice} exists but cannot be tried without QEMU and OVMF (see those): ${tcg}`, fix: install(['qemu-system-x86', 'ovmf']), facts: { device: true, boots: null } };
          default:
            return {
              status: 'warning',
              detail: `${probe.kvmDevice} exists but OVMF does not boot under KVM (the known "KVM internal error"): ${tcg}`,
              fix: 'nothing to do for a build (qemu-test falls back to TCG); on a VM, a newer hypervisor with nested virtualization may help',
              facts: { device: true, boots: false },
            };
        }
      },
    },
    {
      id: 'mirror',
      title: `${r.base.distro === 'debian' ? 'Debian' : 'Arch'} mirror`,
      async run() {
        const m = r.base.mirror.replace(/\/+$/, '');
        const url = r.base.distro === 'debian' ? `${m}/dists/${r.base.suite}/Release` : `${m}/core/os/x86_64/core.db`;
        const h = await probe.http(url, { method: 'HEAD', timeoutMs: netMs });
        const facts = { url, status: h.status ?? null, error: h.error ?? null, ms: h.ms };
        if (h.status && h.status < 400) return { status: 'ok', detail: `${url} answered ${h.status} in ${h.ms} ms`, facts };
        const have = await cached('rootfs', (i) => i.distro === r.base.distro && i.suite === r.base.suite);
        const proxy = process.env.http_proxy || process.env.HTTP_PROXY ? ' (this check does not use $http_proxy)' : '';
        return {
          status: have ? 'warning' : 'problem',
          detail: `${url}: ${h.status ? `HTTP ${h.status}` : h.error}${proxy}${have ? `; a cached ${r.base.suite} rootfs exists, so only a build whose package list changed needs the mirror` : ''}`,
          fix: h.status === 404 ? `check base.suite (${r.base.suite}) and base.mirror (${r.base.mirror})` : `check the network, or use another mirror: --set base.mirror=${r.base.distro === 'debian' ? 'http://deb.debian.org/debian' : 'https://geo.mirror.pkgbuild.com'}`,
          blocks: ['build'],
          facts,
        };
      },
    },
    {
      id: 'npm',
      title: 'npm registry',
      async run() {
        const l = r.llama;
        const needed = l.enabled && l.source.type === 'npm';
        const registry = await probe.npmRegistry();
        const url = `${registry.replace(/\/+$/, '')}/-/ping`;
        const h = await probe.http(url, { method: 'GET', timeoutMs: netMs });
        const facts = { url, status: h.status ?? null, error: h.error ?? null, ms: h.ms, neededForBuild: needed };
        if (h.status && h.status < 400) return { status: 'ok', detail: `${url} answered ${h.status} in ${h.ms} ms${needed ? '' : ' (not used by this recipe)'}`, facts };
        const pin = needed ? JSON.stringify(await sourceIdentity(l)) : '';
        const have = needed && (await cached('llama', (i) => JSON.stringify(i.source) === pin));
        return {
          status: needed && !have ? 'problem' : 'warning',
          detail: `${url}: ${h.status ? `HTTP ${h.status}` : h.error}${needed ? `; llama.source = npm ${l.source.type === 'npm' ? `${l.source.package}@${l.source.version}` : ''} is fetched from it${have ? ' (a cached build of it exists)' : ''}` : ' (not used by this recipe)'}`,
          fix: 'check the network, or npm config set registry <url> (a reachable mirror)',
          blocks: needed ? ['build'] : [],
          facts,
        };
      },
    },
    {
      id: 'cpu',
      title: 'CPU ISA level',
      async run() {
        const have = new Set(await probe.cpuFlags());
        let level = 'x86-64';
        for (const lvl of ['x86-64-v2', 'x86-64-v3', 'x86-64-v4'] as const) if ((await isaFor(lvl)).flags.every((f) => have.has(f))) level = lvl;
        const native = await nativeIsa();
        const nativeTcg = await tcgLacks(native.flags);
        const isa = await recipeIsa();
        const lacking = isa.flags.filter((f) => !have.has(f));
        const recipeTcg = await tcgLacks(isa.flags);
        const kvmBoots = (await kvm()) === 'boots';
        const facts = { level, native: { march: native.march, flags: native.flags, tcgLacks: nativeTcg }, recipe: { cpu: r.llama.cpu, flags: isa.flags, tcgLacks: recipeTcg } };
        const nativeText = `llama.cpu = native → -march=${native.march} (${families(native.flags)}): ${nativeTcg.length ? `TCG cannot run it (no ${families(nativeTcg)})` : 'TCG can run it'}`;
        const head = `host ${level}; ${nativeText}`;
        if (!r.llama.enabled) return { status: 'ok', detail: `${head} (llama.cpp not built by this recipe)`, facts };
        if (lacking.length) {
          return {
            status: 'warning',
            detail: `llama.cpu = ${r.llama.cpu} needs ${families(lacking)}, which this host (${level}) lacks: the overlay stage runs llama-server --version in the image root here and may crash (SIGILL)`,
            fix: `aios build image --set llama.cpu=${level} (or set it in the recipe)`,
            blocks: [],
            facts,
          };
        }
        if (recipeTcg.length && !kvmBoots) {
          return {
            status: 'warning',
            detail: `llama.cpu = ${r.llama.cpu} (-march=${isa.march}) needs ${families(recipeTcg)}, which TCG cannot emulate and KVM does not run here: qemu-test will refuse the image`,
            fix: 'aios build image --set llama.cpu=x86-64-v3 (TCG runs it; or set it in the recipe)',
            blocks: ['boot-test'],
            facts,
          };
        }
        return { status: 'ok', detail: `${head}; this recipe's ${r.llama.cpu}: ${recipeTcg.length ? 'runs under KVM' : 'TCG can run it'}`, facts };
      },
    },
    {
      id: 'access',
      title: 'access to the image',
      async run() {
        const rt = r.runtime;
        if (!rt.enabled) return { status: 'ok', detail: 'no aios-runtime in this recipe: nothing listens', facts: { runtime: false } };
        const open = (['listen', 'http_listen'] as const).filter((k) => !isLoopback(rt[k]));
        const facts = { listen: rt.listen, http_listen: rt.http_listen, tls: rt.tls, insecure_listen: rt.insecure_listen, beyondLoopback: open };
        if (open.length && !rt.tls) {
          return {
            status: 'warning',
            detail: `runtime.insecure_listen: ${open.map((k) => `${rt[k]} (runtime.${k})`).join(' and ')} will accept anyone on the network without authentication`,
            fix: 'remove runtime.tls = false and runtime.insecure_listen from the recipe (mutual TLS with per-image certificates is the default), or listen on 127.0.0.1',
            blocks: [],
            facts,
          };
        }
        const detail = open.length ? `${open.map((k) => rt[k]).join(', ')} beyond loopback with mutual TLS${open.includes('http_listen') ? ' / API keys' : ''}; credentials in ${rt.pki || `${o.outDir}/${r.name}.pki`}` : 'listeners on loopback only';
        return { status: 'ok', detail, facts };
      },
    },
  ];
  return checks;

  function spaceCheck(id: string, title: string, dir: string, needFor: () => { need: number; why: string }, fix: string, reclaimable?: () => Promise<number>): Check {
    return {
      id,
      title,
      async run() {
        const s = await probe.space(dir);
        const { need, why } = needFor();
        const facts = { dir, measured: s.dir, free: s.free, total: s.total, need };
        const where = s.dir === dir ? dir : `${dir} (not made yet; on the filesystem of ${s.dir})`;
        if (s.free >= need) return { status: 'ok', detail: `${formatSize(s.free)} free in ${where}`, facts };
        const old = s.free < need && reclaimable ? await reclaimable() : 0;
        if (s.free + old >= need) {
          return { status: 'ok', detail: `${formatSize(s.free)} free in ${where}, and ${formatSize(old)} in old stage outputs that a build removes (least recently used first) when it needs the room`, facts: { ...facts, reclaimable: old } };
        }
        return { status: 'problem', detail: `only ${formatSize(s.free)} free in ${where}${old ? ` (and ${formatSize(old)} in old stage outputs)` : ''}; ${why} needs about ${formatSize(need)}`, fix, blocks: ['build'], facts };
      },
    };
  }
}
