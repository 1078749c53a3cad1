/**
 * GPU images (issue 17, docs/gpu.md), the parts that need no GPU and no download: the [gpu] keys and
 * their checks, the CUDA tools tree's spec and package cache, the image's non-free components and
 * driver packages, the units and bring-up script rendered for it (the script run for real against
 * a PCI tree made here), and the model sandbox's access to the device nodes.
 */
import { describe, expect, it } from 'vitest';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { loadRecipe } from '../../src/config/load.js';
import { cudaArchitectures, DEFAULT_CUDA_ARCHS } from '../../src/config/gpu.js';
import { llamaToolsTreeSpec, packageCacheDir, toolsTreeBootstrapArgv, toolsTreeKey } from '../../src/build/tools-tree.js';
import { debian, NVIDIA_DKMS_HOOK } from '../../src/distros/debian.js';
import { identity, templateContext } from '../../src/build/context.js';
import { renderTree } from '../../src/build/render.js';
import { paths } from '../../src/util/paths.js';
import { bwrapArgs, gpuDevices, landlockArgs } from '../../src/runtime/sandbox.js';
import { tmp } from '../helpers.js';
import { parse as parseToml } from 'smol-toml';
import { RuntimeConfigSchema } from '../../src/runtime/config.js';
import { Router } from '../../src/runtime/router.js';
import { parseCheckLog } from '../../src/qemu/index.js';
import { machineChecks, type MachineProbe } from '../../src/doctor/machine.js';

const problems = (p: Promise<unknown>) => p.then(() => [], (e: { exitCode?: number; problems?: { path: string; message: string }[] }) => (expect(e.exitCode).toBe(2), e.problems ?? []));

describe('[gpu] and llama.gpu = "cuda"', () => {
  it('images/cuda.toml: the open driver, Turing to Hopper, CUDA in the tools tree', async () => {
    const r = await loadRecipe('cuda');
    expect(r.gpu).toEqual({ driver: 'open', cuda_arch: DEFAULT_CUDA_ARCHS, flash_attention: true });
    expect(r.llama).toMatchObject({ gpu: 'cuda', toolchain: 'tools-tree' });
    expect((await loadRecipe('default')).gpu.driver).toBe('none');
  });

  it('refuses what cannot work, exit 2 naming the key and the fix', async () => {
    expect(await problems(loadRecipe('cuda', { sets: ['gpu.driver=none'] }))).toEqual([{ path: 'gpu.driver', message: expect.stringMatching(/needs the NVIDIA driver.*set gpu\.driver = "open"/) }]);
    expect(await problems(loadRecipe('cuda', { sets: ['llama.toolchain=host'] }))).toEqual([{ path: 'llama.toolchain', message: expect.stringMatching(/set llama\.toolchain = "tools-tree"/) }]);
    expect(await problems(loadRecipe('cuda', { sets: ['gpu.cuda_arch=[61,75]'] }))).toEqual([{ path: 'gpu.cuda_arch', message: expect.stringMatching(/^61: the open kernel modules drive Turing \(75\) and newer/) }]);
    expect(await problems(loadRecipe('cuda', { sets: ['gpu.cuda_arch=[61,75]', 'gpu.driver=proprietary'] }))).toEqual([]);
    expect((await problems(loadRecipe('cuda', { sets: ['gpu.cuda_arch=[77]'] })))[0]).toMatchObject({ path: 'gpu.cuda_arch.0', message: expect.stringMatching(/must be one of 50, .* 90/) });
    expect((await problems(loadRecipe('cuda', { sets: ['gpu.cuda_arch=[]'] })))[0]!.path).toBe('gpu.cuda_arch');
    expect((await problems(loadRecipe('cuda', { sets: ['gpu.driver=nvidia'] })))[0]!.path).toBe('gpu.driver');
    expect(await problems(loadRecipe('cuda', { sets: ['kernel.build=true'] }))).toEqual([{ path: 'gpu.driver', message: expect.stringMatching(/kernel\.build replaces that kernel/) }]);
    expect(await problems(loadRecipe('default', { sets: ['gpu.driver=open', 'base.distro=arch', 'base.suite=rolling'] }))).toContainEqual({ path: 'gpu.driver', message: expect.stringMatching(/Debian's non-free packages/) });
  });

  it('CMake architectures: machine code for each, PTX for the newest only, sorted and deduplicated', () => {
    expect(cudaArchitectures([90, 75, 80, 86, 89, 75])).toBe('75-real;80-real;86-real;89-real;90');
    expect(cudaArchitectures([89])).toBe('89');
  });
});

describe('the CUDA tools tree', () => {
  it('adds the toolkit and the components it needs; its own key; its .debs kept apart from the rootfs stage\'s', async () => {
    const cpu = llamaToolsTreeSpec(await loadRecipe('default', { sets: ['llama.toolchain=tools-tree'] }));
    const cuda = llamaToolsTreeSpec(await loadRecipe('cuda'));
    expect(cuda.components).toEqual(['main', 'contrib', 'non-free']);
    expect(cuda.packages).toEqual([...cpu.packages, 'nvidia-cuda-toolkit']);
    expect(toolsTreeKey(cuda)).not.toBe(toolsTreeKey(cpu));
    expect(packageCacheDir('/c', cpu)).toBe('/c/packages/debian-trixie');
    expect(packageCacheDir('/c', cuda)).toBe('/c/packages/debian-trixie-tools-contrib+main+non-free');
    const argv = toolsTreeBootstrapArgv(cuda, { root: '/r', pkgCache: packageCacheDir('/c', cuda), asRoot: true });
    expect(argv).toContain('--components=main,contrib,non-free');
    expect(argv.find((a) => a.startsWith('--include='))).toMatch(/,nvidia-cuda-toolkit$/);
  });
});

describe('the image with the NVIDIA driver', () => {
  it('non-free components and the driver, built by DKMS against the image kernel\'s headers; CUDA libraries with a CUDA llama.cpp', async () => {
    const r = await loadRecipe('cuda');
    const pk = debian.packages(r);
    for (const p of ['nvidia-open-kernel-dkms', 'linux-image-amd64', 'firmware-nvidia-gsp', 'libcuda1', 'nvidia-smi', 'nvidia-persistenced', 'libcudart12', 'libcublas12']) expect(pk).toContain(p);
    expect(debian.components!(r)).toEqual(['main', 'contrib', 'non-free', 'non-free-firmware']);
    const plan = debian.bootstrap(r, { root: '/r', pkgCache: '/p', earlyFiles: '/e', work: '/w', asRoot: true });
    expect(plan.steps[0]!.argv).toContain('--components=main,contrib,non-free,non-free-firmware');
    // The headers come after the driver, from the hook that has DKMS build the module (scripts/nvidia-dkms.sh).
    expect(pk).not.toContain('linux-headers-amd64');
    expect(plan.steps[0]!.argv).toContain(`--customize-hook=sh '${NVIDIA_DKMS_HOOK}' "$1"`);
    expect(plan.steps[0]!.argv.indexOf(`--customize-hook=sh '${NVIDIA_DKMS_HOOK}' "$1"`)).toBeLessThan(plan.steps[0]!.argv.findIndex((a) => a.includes('update-initramfs')));
    const prop = debian.packages(await loadRecipe('cuda', { sets: ['gpu.driver=proprietary'] }));
    expect(prop).toContain('nvidia-kernel-dkms');
    expect(prop).not.toContain('nvidia-open-kernel-dkms');
    // The driver without a CUDA llama.cpp (another program uses the GPU): no CUDA runtime libraries.
    expect(debian.packages(await loadRecipe('default', { sets: ['gpu.driver=open'] }))).not.toContain('libcudart12');
    const plain = await loadRecipe('default');
    expect(debian.packages(plain).filter((p) => /nvidia|cuda|headers/.test(p))).toEqual([]);
    const plainArgv = debian.bootstrap(plain, { root: '/r', pkgCache: '/p', earlyFiles: '/e', work: '/w', asRoot: true }).steps[0]!.argv;
    expect(plainArgv).toContain('--components=main');
    expect(plainArgv.join(' ')).not.toMatch(/nvidia/);
  });

  it('lists the packages from outside the free archive by their section', () => {
    const out = ['libc6\t2.41-12\tlibs', 'nvidia-smi\t550.163.01-2\tnon-free/utils', 'firmware-nvidia-gsp\t550.163.01-1\tnon-free-firmware/kernel', 'nvidia-open-kernel-dkms\t550.163.01-1\tcontrib/kernel', 'bash\t5.2\tshells', ''].join('\n');
    expect(debian.parseNonfree!(out)).toEqual({ 'nvidia-smi': '550.163.01-2', 'firmware-nvidia-gsp': '550.163.01-1', 'nvidia-open-kernel-dkms': '550.163.01-1' });
    expect(debian.nonfreeCommand!('/r').argv).toEqual(['dpkg-query', '--root=/r', '-W', '-f=${Package}\\t${Version}\\t${Section}\\n']);
  });

  it('renders aios-gpu.service and its script, and opens the runtime unit to the NVIDIA devices only with a driver', async () => {
    const render = async (name: string, sets: string[] = []) => {
      const r = await loadRecipe(name, { sets });
      return Object.fromEntries((await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).map((f) => [f.path, f]));
    };
    const gpu = await render('cuda');
    const unit = gpu['usr/lib/systemd/system/aios-gpu.service']!.content;
    expect(unit).toMatch(/^ExecCondition=\/usr\/libexec\/aios\/gpu-init --check$/m);
    expect(unit).toMatch(/^Before=aios-runtime\.service/m);
    expect(gpu['usr/libexec/aios/gpu-init']!.mode).toBe(0o755);
    const rt = gpu['usr/lib/systemd/system/aios-runtime.service']!.content;
    expect(rt).toMatch(/^PrivateDevices=no\nDevicePolicy=closed\nDeviceAllow=char-nvidia-frontend rw\nDeviceAllow=char-nvidia rw\nDeviceAllow=char-nvidiactl rw\nDeviceAllow=char-nvidia-uvm rw$/m);
    expect(rt).toMatch(/^After=aios-gpu\.service$/m);
    expect(gpu['etc/systemd/system/nvidia-persistenced.service.d/50-aios.conf']!.content).toMatch(/^After=aios-gpu\.service\nConditionPathExists=\/dev\/nvidiactl$/m);
    expect(gpu['etc/modules-load.d/nvidia.conf']!.content).not.toMatch(/^[^#\n]/m);
    const plain = await render('default');
    expect(plain['etc/systemd/system/nvidia-persistenced.service.d/50-aios.conf']).toBeUndefined();
    expect(plain['etc/modules-load.d/nvidia.conf']).toBeUndefined();
    expect(plain['usr/lib/systemd/system/aios-gpu.service']).toBeUndefined();
    expect(plain['usr/libexec/aios/gpu-init']).toBeUndefined();
    expect(plain['usr/lib/systemd/system/aios-runtime.service']!.content).toMatch(/^PrivateDevices=yes$/m);
    expect(plain['usr/lib/systemd/system/aios-runtime.service']!.content).not.toMatch(/nvidia|aios-gpu/);
  });

  it('gpu-init --check: skips (exit 1, a clear line) without an NVIDIA display controller, passes with one', async () => {
    const r = await loadRecipe('cuda');
    const files = await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)));
    const dir = tmp('aios-gpu-init-');
    const script = join(dir, 'gpu-init');
    writeFileSync(script, files.find((f) => f.path === 'usr/libexec/aios/gpu-init')!.content, { mode: 0o755 });
    await execa('shellcheck', ['-s', 'sh', script]);
    // A PCI tree of our own, bound over /sys/bus/pci/devices for the script alone (bubblewrap).
    const pci = (devices: [string, string][]) => {
      const d = tmp('aios-pci-');
      devices.forEach(([vendor, cls], i) => {
        mkdirSync(join(d, `0000:00:0${i}.0`));
        writeFileSync(join(d, `0000:00:0${i}.0/vendor`), `${vendor}\n`);
        writeFileSync(join(d, `0000:00:0${i}.0/class`), `${cls}\n`);
      });
      return d;
    };
    const check = (d: string) => execa('bwrap', ['--dev-bind', '/', '/', '--bind', d, '/sys/bus/pci/devices', script, '--check'], { reject: false });
    // QEMU's: its VGA (0x1234), an Intel host bridge; and an NVIDIA audio function (class 0x0403) alone is no GPU.
    const none = await check(pci([['0x1234', '0x030000'], ['0x8086', '0x060000'], ['0x10de', '0x040300']]));
    expect(none.exitCode).toBe(1);
    expect(none.stdout).toBe('aios-gpu: no NVIDIA GPU on this machine: models run on the CPU');
    // An H100/H200 is a 3D controller (0x0302); a GeForce a VGA controller (0x0300).
    expect((await check(pci([['0x8086', '0x060000'], ['0x10de', '0x030200']]))).exitCode).toBe(0);
    expect((await check(pci([['0x10de', '0x030000']]))).exitCode).toBe(0);
  });
});

describe('the model sandbox and the GPU', () => {
  it('finds the driver\'s device nodes, nothing else', () => {
    expect(gpuDevices('/dev', () => ['null', 'nvidia0', 'nvidia1', 'nvidiactl', 'nvidia-uvm', 'nvidia-uvm-tools', 'nvidia-modeset', 'nvidia-caps', 'nvme0n1'])).toEqual(
      ['nvidia-modeset', 'nvidia-uvm', 'nvidia-uvm-tools', 'nvidia0', 'nvidia1', 'nvidiactl'].map((n) => `/dev/${n}`),
    );
    expect(gpuDevices('/dev', () => ['null', 'zero'])).toEqual([]);
    expect(gpuDevices(tmp('aios-nodev-') + '/missing')).toEqual([]);
  });

  it('a child with devices: read-write and ioctl on them (Landlock), bound into its /dev (bubblewrap); without: neither', () => {
    const spec = { model: '/m/x.gguf', dir: '/d' };
    const devices = ['/dev/nvidiactl', '/dev/nvidia0'];
    const isDir = (p: string) => (p === '/usr' || p === '/proc/driver/nvidia' ? true : p.startsWith('/dev/') ? false : undefined);
    const ll = landlockArgs({ kind: 'landlock', unshare: 'unshare', setpriv: 'setpriv' }, { ...spec, devices }, isDir);
    expect(ll).toContain('path-beneath:read-file,write-file,ioctl-dev:/dev/nvidiactl');
    expect(ll).toContain('path-beneath:read-file,write-file,ioctl-dev:/dev/nvidia0');
    expect(ll).toContain('path-beneath:read-file,read-dir:/proc/driver/nvidia');
    const none = landlockArgs({ kind: 'landlock', unshare: 'unshare', setpriv: 'setpriv' }, spec, isDir);
    expect(none.join(' ')).not.toMatch(/nvidia|ioctl-dev:\/dev/);
    const bw = bwrapArgs({ kind: 'bwrap', bwrap: 'bwrap', freshProc: true }, { ...spec, devices });
    expect(bw.join(' ')).toContain('--dev /dev --proc /proc --dev-bind-try /dev/nvidiactl /dev/nvidiactl --dev-bind-try /dev/nvidia0 /dev/nvidia0 --ro-bind-try /proc/driver/nvidia /proc/driver/nvidia');
    expect(bwrapArgs({ kind: 'bwrap', bwrap: 'bwrap', freshProc: true }, spec).join(' ')).not.toMatch(/nvidia/);
  });
});

describe('the runtime in a GPU image', () => {
  it('config.toml: every layer on the GPU (gpu_layers = -1) with a CUDA llama.cpp, none without', async () => {
    const cfg = async (name: string) => {
      const r = await loadRecipe(name);
      const f = (await renderTree(join(paths.templates, 'root'), templateContext(r, identity(r)))).find((x) => x.path === 'etc/aios/config.toml')!;
      return RuntimeConfigSchema.parse(parseToml(f.content));
    };
    expect((await cfg('cuda')).models.operational!.gpu_layers).toBe(-1);
    expect((await cfg('default')).models.operational!.gpu_layers).toBe(0);
  });

  it('no GPU on the machine: local layers stay on the CPU; a split model still goes to its workers', () => {
    const config = RuntimeConfigSchema.parse({
      runtime: { rpc_workers: [{ address: '10.0.0.2:50052' }] },
      models: { operational: { name: 'a.gguf', gpu_layers: -1 }, tactical: { name: 'b.gguf', rpc: true } },
    });
    const on = new Router(config, () => [], () => undefined, () => true);
    const off = new Router(config, () => [], () => undefined, () => false);
    expect(on.profile('operational')!.gpuLayers).toBe(-1);
    expect(off.profile('operational')!.gpuLayers).toBe(0);
    expect(off.profile('tactical')!.gpuLayers).toBe(-1);
  });
});

describe('the boot check of a GPU image', () => {
  it('reads the unit, the module for the running kernel, the GPUs and the CUDA version', () => {
    const at = (lines: string[]) => parseCheckLog(['AIOS-CHECK-BEGIN', ...lines.map((l) => `[  40.1] boot-check[500]: ${l}`), 'AIOS-CHECK-END'].join('\r\n')).guest.gpu;
    // QEMU: no GPU, the unit skipped by its condition, the module there but not loaded.
    expect(at(['AIOS-CHECK gpu_unit=inactive no', 'AIOS-CHECK gpu_module=550.163.01', 'AIOS-CHECK gpu_loaded=no', 'AIOS-CHECK gpu_devices=', 'AIOS-CHECK gpu_cuda='])).toEqual({ unit: 'inactive', condition: 'no', module: '550.163.01', loaded: false, devices: [] });
    // A machine with two GPUs.
    expect(at(['AIOS-CHECK gpu_unit=active yes', 'AIOS-CHECK gpu_module=550.163.01', 'AIOS-CHECK gpu_loaded=yes', 'AIOS-CHECK gpu_devices=GPU 0: NVIDIA H200 (UUID: GPU-1);GPU 1: NVIDIA H200 (UUID: GPU-2);', 'AIOS-CHECK gpu_cuda=12.4'])).toMatchObject({ loaded: true, devices: ['GPU 0: NVIDIA H200 (UUID: GPU-1)', 'GPU 1: NVIDIA H200 (UUID: GPU-2)'], cuda: '12.4' });
    // DKMS built nothing for this kernel: no version (qemu-test fails the boot with that reason).
    expect(at(['AIOS-CHECK gpu_unit=inactive no', 'AIOS-CHECK gpu_module='])!.module).toBeUndefined();
    expect(at(['AIOS-CHECK state=running'])).toBeUndefined();
  });
});

describe('aios doctor on a GPU image', () => {
  const gpuCheck = (files: Record<string, string>, lists: Record<string, string[]>, runs: Record<string, string> = {}) => {
    const p: MachineProbe = {
      read: async (f) => files[f],
      readGz: async () => undefined,
      list: async (d) => lists[d] ?? [],
      run: async (argv) => (argv.join(' ') in runs ? { code: 0, stdout: runs[argv.join(' ')]! } : { code: 127, stdout: '' }),
      space: async () => undefined,
      runtime: async () => ({ error: 'none' }),
    };
    return machineChecks(p).find((c) => c.id === 'gpu.driver')!.run();
  };
  const pci = { '/sys/bus/pci/devices': ['0000:00:01.0', '0000:17:00.0'] };
  const gpuFiles = { '/usr/libexec/aios/gpu-init': '#!/bin/sh', '/sys/bus/pci/devices/0000:00:01.0/vendor': '0x8086\n', '/sys/bus/pci/devices/0000:00:01.0/class': '0x060000\n', '/sys/bus/pci/devices/0000:17:00.0/vendor': '0x10de\n', '/sys/bus/pci/devices/0000:17:00.0/class': '0x030200\n' };

  it('not a GPU image; a GPU image without a GPU (CPU); the module not loaded (a problem with the fix); the GPUs and CUDA version', async () => {
    expect(await gpuCheck({}, {})).toMatchObject({ status: 'ok', detail: 'not a GPU image (no NVIDIA driver in it)' });
    expect(await gpuCheck({ '/usr/libexec/aios/gpu-init': '#!/bin/sh' }, pci)).toMatchObject({ status: 'ok', detail: 'no NVIDIA GPU on this machine: models run on the CPU' });
    expect(await gpuCheck(gpuFiles, pci)).toMatchObject({ status: 'problem', detail: expect.stringMatching(/^1 NVIDIA GPU\(s\), but the nvidia module is not loaded/), fix: expect.stringMatching(/aios-gpu\.service/) });
    const smi = { 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader': 'NVIDIA H200, 143771 MiB, 550.163.01\n', 'nvidia-smi': '| NVIDIA-SMI 550.163.01   Driver Version: 550.163.01   CUDA Version: 12.4 |\n' };
    expect(await gpuCheck(gpuFiles, { ...pci, '/sys/module/nvidia': ['version'] }, smi)).toMatchObject({ status: 'ok', detail: 'NVIDIA H200, 143771 MiB, 550.163.01; CUDA 12.4', facts: { gpus: 1, cuda: '12.4' } });
  });
});

describe('aios ps on a GPU machine', () => {
  it('VRAM EST and VRAM columns only where a model is offloaded', async () => {
    const { psTable } = await import('../../src/cli/runtime.js');
    const m = { level: 'operational', state: 'ready', pid: 1, port: 0, memory_bytes: 0, last_used_unix_ms: 0, uptime_ms: 1, path: '/m', restarts: 0, error: '', estimate_bytes: 1 << 20, actual_bytes: 0, estimate_error_pct: 0, pinned: true, idle_until_unix_ms: 0, inflight: 0, queued: 0, queued_by_priority: {}, parallel: 1, adapters: [], sessions: 0, session_states: 0, session_bytes: 0, vram_estimate_bytes: 0, vram_bytes: 0 };
    const health = { memory_budget_bytes: 0, memory_used_bytes: 0, queued: 0 } as never;
    const out = psTable([{ ...m, name: 'big', vram_estimate_bytes: 700 << 20, vram_bytes: 650 << 20 }, { ...m, name: 'cpu' }] as never, health).split('\n');
    expect(out[0]).toMatch(/\s+IDLE UNTIL\s+VRAM EST\s+VRAM$/);
    expect(out.find((l) => l.startsWith('big '))).toMatch(/pinned\s+700\.0 MiB\s+650\.0 MiB$/);
    expect(out.find((l) => l.startsWith('cpu '))).toMatch(/pinned\s+-\s+-$/);
    expect(psTable([{ ...m, name: 'cpu' }] as never, health)).not.toMatch(/VRAM/);
  });
});

describe('templates over the root', () => {
  it('replace a symlink at their path instead of writing through it', async () => {
    const { writeRendered } = await import('../../src/build/render.js');
    const { symlinkSync, readFileSync: rf, lstatSync } = await import('node:fs');
    const root = tmp('aios-render-');
    mkdirSync(join(root, 'etc/modules-load.d'), { recursive: true });
    writeFileSync(join(root, 'target.conf'), 'nvidia-drm\n');
    symlinkSync('/target.conf', join(root, 'etc/modules-load.d/nvidia.conf'));
    symlinkSync(join(root, 'target.conf'), join(root, 'etc/modules-load.d/abs.conf'));
    await writeRendered([{ path: 'etc/modules-load.d/abs.conf', content: '# none\n', mode: 0o644 }], root);
    expect(lstatSync(join(root, 'etc/modules-load.d/abs.conf')).isSymbolicLink()).toBe(false);
    expect(rf(join(root, 'etc/modules-load.d/abs.conf'), 'utf8')).toBe('# none\n');
    expect(rf(join(root, 'target.conf'), 'utf8')).toBe('nvidia-drm\n');
  });
});

describe('the memory estimate of a CUDA llama-server', () => {
  it('adds the CUDA libraries\' overhead where the binary links libcudart, nothing otherwise', async () => {
    const { processOverhead, PROCESS_OVERHEAD, CUDA_PROCESS_OVERHEAD } = await import('../../src/runtime/memory.js');
    const cuda = '\tlibcudart.so.12 => /lib/x86_64-linux-gnu/libcudart.so.12 (0x1)\n\tlibcublas.so.12 => /lib/x86_64-linux-gnu/libcublas.so.12 (0x2)\n';
    expect(processOverhead('/usr/bin/llama-server', () => cuda)).toBe(PROCESS_OVERHEAD + CUDA_PROCESS_OVERHEAD);
    expect(processOverhead('/usr/bin/llama-server', () => '\tlibgomp.so.1 => /lib/x86_64-linux-gnu/libgomp.so.1 (0x1)\n')).toBe(PROCESS_OVERHEAD);
    expect(processOverhead('/nonexistent/llama-server')).toBe(PROCESS_OVERHEAD);
  });
});
