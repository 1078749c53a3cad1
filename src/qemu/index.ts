/**
 * Booting images in QEMU with OVMF (UEFI): `qemuTest` (automated boot check) and `qemuArgs` for an
 * interactive console. KVM is used only when a probe guest actually runs; otherwise TCG.
 */
import { copyFile, mkdtemp, writeFile, stat, readFile, open } from 'node:fs/promises';
import { existsSync, openSync, closeSync, constants } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { execa } from 'execa';
import { safeRemove, registerTemp } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { liveWishes, type KernelFacts, type LiveWish } from '../kernel/live.js';
import type { Result as DoctorResult, Verdict as DoctorVerdict } from '../doctor/types.js';
import { freePort } from '../util/net.js';
import { accessChecks, type AccessCheck } from './access.js';
import { oomCheck, type OomCheck } from './oom-check.js';
import { headsAdmit, workerCheck } from './worker-check.js';
import { manifestPath, readManifest, type Manifest } from '../build/manifest.js';

export const OVMF_CANDIDATES = [
  { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' },
  { code: '/usr/share/OVMF/OVMF_CODE.fd', vars: '/usr/share/OVMF/OVMF_VARS.fd' },
  { code: '/usr/share/edk2/x64/OVMF_CODE.4m.fd', vars: '/usr/share/edk2/x64/OVMF_VARS.4m.fd' },
];

export function findOvmf(): { code: string; vars: string } {
  const f = OVMF_CANDIDATES.find((c) => existsSync(c.code) && existsSync(c.vars));
  if (!f) throw new UserError('no OVMF firmware found (looked in /usr/share/OVMF): install the Debian package ovmf', 3);
  return f;
}

let kvmProbe: Promise<boolean> | undefined;

/**
 * Does KVM really run a UEFI guest here? Opening /dev/kvm is not enough: on some hosts SeaBIOS runs
 * under KVM but OVMF stops at once with "KVM internal error … emulation failure". So the probe boots
 * the same OVMF firmware for a few seconds and requires its serial output and no KVM error.
 */
export function kvmWorks(): Promise<boolean> {
  kvmProbe ??= (async () => {
    try {
      closeSync(openSync('/dev/kvm', constants.O_RDWR));
    } catch {
      return false;
    }
    const ovmf = findOvmf();
    const tmp = await mkdtemp(join(tmpdir(), 'aios-kvm-probe-'));
    try {
      const vars = join(tmp, 'vars.fd');
      await copyFile(ovmf.vars, vars);
      const serial = join(tmp, 'serial.log');
      const r = await execa(
        'qemu-system-x86_64',
        ['-nodefaults', '-machine', 'q35,accel=kvm', '-cpu', 'host', '-m', '256', '-display', 'none', '-monitor', 'none', '-no-reboot',
          '-serial', `file:${serial}`,
          '-drive', `if=pflash,format=raw,unit=0,file=${ovmf.code},readonly=on`,
          '-drive', `if=pflash,format=raw,unit=1,file=${vars}`],
        { reject: false, timeout: 5000, all: true },
      );
      const errors = /KVM internal error|emulation failure|failed to initialize kvm|Could not access KVM/i.test(String(r.all ?? ''));
      const { size } = await stat(serial).catch(() => ({ size: 0 }));
      return r.timedOut === true && !errors && size > 0;
    } finally {
      await safeRemove(tmp);
    }
  })();
  return kvmProbe;
}

export interface QemuOptions {
  memory?: string;
  cpus?: number;
  /** Force an accelerator instead of probing. */
  accel?: 'kvm' | 'tcg';
  /** QEMU -cpu model (default: host with KVM, max with TCG). */
  cpu?: string;
  /** Extra kernel command line for systemd-boot (SMBIOS type 11). */
  cmdlineExtra?: string;
  /** Writes go to a temporary overlay: the image file is never modified. */
  snapshot?: boolean;
  /** Serial console: a file path, or "stdio" for interactive use. */
  serial: string | 'stdio';
  /**
   * A data channel beside the console: a virtio-serial port named `name` (in the guest
   * /dev/virtio-ports/<name>) whose output QEMU writes to `file`. Nothing else writes there: no
   * kernel messages, no getty, no journald prefixes.
   */
  dataPort?: { name: string; file: string };
  /** Host TCP port forwarded to a guest port (user networking). */
  forwards?: { host: number; guest: number }[];
  /**
   * How the image is attached: disk (virtio-blk), cdrom (SATA CD-ROM on q35's AHCI), usb (USB
   * mass storage on an xHCI controller). Default: cdrom for an ISO 9660 file, else disk.
   */
  media?: Media;
  /**
   * More disks after the image, attached read-only as virtio disks in this order (in the guest
   * /dev/vdb, /dev/vdc …): e.g. an ext4 image holding update artifacts (the appliance update test).
   */
  extraDisks?: string[];
  /**
   * systemd credentials for the guest, each read by QEMU from a file on this host and handed over
   * through fw_cfg (opt/io.systemd.credentials/<name>, which the guest's systemd imports as a system
   * credential at boot): secrets the image must not carry, e.g. network.wireguard.aios.
   * The value is never on QEMU's command line, only the file's path.
   */
  credentials?: { name: string; file: string }[];
}

export type Media = 'disk' | 'cdrom' | 'usb';

/** ISO 9660: "CD001" at byte 32769 (the primary volume descriptor in sector 16). */
export async function isIso(image: string): Promise<boolean> {
  const fh = await open(image, 'r').catch(() => undefined);
  if (!fh) return false;
  try {
    const buf = Buffer.alloc(5);
    await fh.read(buf, 0, 5, 32769);
    return buf.toString('latin1') === 'CD001';
  } finally {
    await fh.close();
  }
}

/** QEMU arguments that attach the image as a disk, a CD-ROM or a USB stick. */
export function mediaArgs(image: string, media: Media, snapshot: boolean): string[] {
  const file = resolve(image);
  if (media === 'cdrom') return ['-drive', `if=none,id=cd0,media=cdrom,format=raw,readonly=on,file=${file}`, '-device', 'ide-cd,drive=cd0,bus=ide.0'];
  const snap = snapshot ? ',snapshot=on' : '';
  if (media === 'usb') {
    return ['-device', 'qemu-xhci,id=xhci', '-drive', `if=none,id=usb0,format=raw,file=${file}${snap}`, '-device', 'usb-storage,bus=xhci.0,drive=usb0,removable=on'];
  }
  return ['-drive', `if=virtio,format=raw,file=${file}${snap}`];
}

export async function qemuArgs(image: string, o: QemuOptions, varsFile: string): Promise<{ argv: string[]; accel: 'kvm' | 'tcg' }> {
  const ovmf = findOvmf();
  const accel = o.accel ?? ((await kvmWorks()) ? 'kvm' : 'tcg');
  const cpu = o.cpu ?? (accel === 'kvm' ? 'host' : 'max');
  const fwd = (o.forwards ?? []).map((f) => `,hostfwd=tcp:127.0.0.1:${f.host}-:${f.guest}`).join('');
  const argv = [
    'qemu-system-x86_64',
    '-nodefaults',
    '-machine', `q35,accel=${accel}`,
    '-cpu', cpu,
    '-m', o.memory ?? '2048',
    '-smp', String(o.cpus ?? 2),
    '-display', 'none',
    '-no-reboot',
    '-monitor', 'none',
    '-serial', o.serial === 'stdio' ? 'mon:stdio' : `file:${o.serial}`,
    '-drive', `if=pflash,format=raw,unit=0,file=${ovmf.code},readonly=on`,
    '-drive', `if=pflash,format=raw,unit=1,file=${varsFile}`,
    ...mediaArgs(image, o.media ?? ((await isIso(image)) ? 'cdrom' : 'disk'), o.snapshot !== false),
    ...(o.extraDisks ?? []).flatMap((d) => {
      if (d.includes(',')) throw new Error(`bad extra disk path (a comma): ${d}`);
      return ['-drive', `if=virtio,format=raw,readonly=on,file=${resolve(d)}`];
    }),
    '-netdev', `user,id=n0${fwd}`,
    '-device', 'virtio-net-pci,netdev=n0',
    '-device', 'virtio-rng-pci',
  ];
  if (o.dataPort) {
    if (!/^[A-Za-z0-9._-]+$/.test(o.dataPort.name) || o.dataPort.file.includes(',')) throw new Error(`bad data port ${o.dataPort.name} → ${o.dataPort.file}`);
    argv.push('-device', 'virtio-serial-pci,id=vser0', '-chardev', `file,id=aiosdata,path=${resolve(o.dataPort.file)}`, '-device', `virtserialport,bus=vser0.0,chardev=aiosdata,name=${o.dataPort.name}`);
  }
  for (const c of o.credentials ?? []) {
    if (!/^[A-Za-z0-9._@-]+$/.test(c.name) || c.file.includes(',')) throw new UserError(`bad credential ${c.name}=${c.file}: a name of A-Z a-z 0-9 . _ @ - and a file path without commas`, 2);
    if (!existsSync(c.file)) throw new UserError(`credential ${c.name}: no such file ${c.file}`, 2);
    argv.push('-fw_cfg', `name=opt/io.systemd.credentials/${c.name},file=${resolve(c.file)}`);
  }
  if (o.cmdlineExtra) argv.push('-smbios', `type=11,value=io.systemd.boot.kernel-cmdline-extra=${o.cmdlineExtra}`);
  return { argv, accel };
}

export interface BootCheck {
  ok: boolean;
  image: string;
  /**
   * Why the image was booted more than once: earlier boots' kernels panicked under TCG before the
   * check reported (see TCG_PANIC_BOOTS).
   */
  retried?: string;
  /** How the image was attached (disk, cdrom, usb). */
  media: Media;
  /** The gRPC probe of aios-runtime in the guest (images with the runtime). */
  runtime?: { ok: boolean; address: string; prompt: string; expect: string; text?: string; latencyMs?: number; modelUsed?: string; error?: string; readySeconds?: number };
  /** Access checks of the runtime's TLS listener (images with runtime.tls): see src/qemu/access.ts. */
  access?: AccessCheck[];
  /** The client credentials used (the image's pki dir). */
  tlsDir?: string;
  /** The model sandbox's memory limit (QemuTestOptions.oomCheck): see src/qemu/oom-check.ts. */
  oom?: OomCheck;
  /** Things that work but should not be so (an open listener: runtime.insecure_listen). */
  warnings: string[];
  /** What QemuTestOptions.during did: its value, or why it failed. */
  during?: { ok: boolean; value?: unknown; error?: string };
  /** The recipe's kernel wishes (from the manifest) and whether each is live in the guest. */
  kernelWishes: LiveWish[];
  accel: 'kvm' | 'tcg';
  /** Why it failed, when it did. */
  reason?: string;
  /** Seconds from QEMU start to the check report (multi-user reached and settled). */
  hostSeconds: number;
  /** From the guest: `systemd-analyze time` line, parsed where possible. */
  guest: {
    kernel?: string;
    cmdline?: string;
    state?: string;
    cpuFlags?: string[];
    runtimeState?: string;
    /** `systemd-analyze security aios-runtime.service` in the guest: its overall exposure. */
    runtimeExposure?: number;
    /** Monotonic time (µs since kernel start) when aios-runtime.service became ready. */
    runtimeReadyUsec?: number;
    /** …when systemd started the unit (left "inactive") and when its process was exec'd. */
    runtimeActivatingUsec?: number;
    runtimeExecUsec?: number;
    /** The daemon's own start-up report (ms since its process started: modules, config, model, probe, front ends, ready). */
    runtimeStartup?: string;
    /** `systemctl reload aios-runtime.service` (ExecReload: `aios runtime reload`): its exit status, then what the reload said per model. */
    runtimeReload?: string;
    /** `systemd-analyze critical-chain aios-runtime.service`: what the unit waited for. */
    runtimeChain: string[];
    /** The runtime's journal lines that mark its start-up, with monotonic times. */
    runtimeLog: string[];
    /** The model sandbox in the guest: the runtime's isolation line and warnings, one `cgroup model-<name> memory.max=… procs=…` per model. */
    sandbox?: string[];
    /** What the running kernel does, for the kernel-wish report. */
    kernelFacts: KernelFacts;
    /** GGUF files found in /var/lib/aios/models, with their header and checksum. */
    models: { file: string; magic: string; version: number; bytes: number; sha256: string }[];
    /** `llama-server --version` run inside the guest. */
    llamaVersion?: string;
    /** All other boot jobs had finished when the check ran. */
    settled?: boolean;
    /** The image's own `aios doctor` (run by the boot check): its findings and verdict; lines that did not parse are counted. */
    doctor?: { findings: DoctorResult[]; verdict?: DoctorVerdict; unparsed: number };
    failedUnits: string[];
    timing?: string;
    firmware?: number;
    loader?: number;
    kernelSeconds?: number;
    initrd?: number;
    userspace?: number;
    userspaceStart?: number;
    /** Seconds from kernel start to multi-user.target. */
    multiUser?: number;
    thp?: string;
    swap?: string;
    root?: string;
    /** An RPC worker image (fleet.role = "worker"): its unit and firewall states, whether it listened, the firewall's rules for its port, and whether a connection from the guest's own address (not a head) was refused. */
    rpcWorker?: { state?: string; listen?: string; listening?: boolean; firewall?: string; rules: string[]; fromSelf?: string };
    /** A GPU image (gpu.driver): aios-gpu.service's state and condition, the nvidia module's version for the running kernel, whether it is loaded, the GPUs (nvidia-smi -L), the CUDA version. */
    gpu?: { unit?: string; condition?: string; module?: string; loaded?: boolean; devices: string[]; cuda?: string };
  };
  /** An RPC worker image: whether a connection from the host (QEMU's 10.0.2.2, which the test image names as its head) reached ggml-rpc-server through the port forwarding. */
  worker?: { ok: boolean; address: string; detail: string };
  serialLog: string;
}

const round = (n: number) => Math.round(n * 100) / 100;

/** Parses the AIOS-CHECK lines that the image's boot-check script prints on the console. */
export function parseCheckLog(log: string): { complete: boolean; guest: BootCheck['guest'] } {
  const clean = log.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/\r/g, '');
  const begin = clean.lastIndexOf('AIOS-CHECK-BEGIN');
  const guest: BootCheck['guest'] = { failedUnits: [], models: [], kernelFacts: { config: {} }, runtimeChain: [], runtimeLog: [] };
  if (begin < 0) return { complete: false, guest };
  const block = clean.slice(begin);
  const complete = block.includes('AIOS-CHECK-END');
  for (const line of block.split('\n')) {
    const chain = /AIOS-CHECK-CHAIN (.*)$/.exec(line);
    if (chain) guest.runtimeChain.push(chain[1]!.trimEnd());
    const rtlog = /AIOS-CHECK-RTLOG (.*)$/.exec(line);
    if (rtlog) guest.runtimeLog.push(rtlog[1]!.trimEnd());
    const sandbox = /AIOS-CHECK-SANDBOX (.*)$/.exec(line);
    if (sandbox) (guest.sandbox ??= []).push(sandbox[1]!.trimEnd());
    const rule = /AIOS-CHECK-RPC-RULE (.*)$/.exec(line);
    if (rule) (guest.rpcWorker ??= { rules: [] }).rules.push(rule[1]!.trimEnd());
    const doc = /AIOS-CHECK-DOCTOR (.*)$/.exec(line);
    if (doc) {
      const d = (guest.doctor ??= { findings: [], unparsed: 0 });
      try {
        const v = JSON.parse(doc[1]!) as { finding?: DoctorResult; verdict?: DoctorVerdict };
        if (v.finding) d.findings.push(v.finding);
        else if (v.verdict) d.verdict = v.verdict;
        else d.unparsed++;
      } catch {
        d.unparsed++;
      }
      continue;
    }
    const m = /AIOS-CHECK (\w+)=(.*)$/.exec(line);
    if (!m) continue;
    const [, k, v] = m as unknown as [string, string, string];
    const val = v.trim();
    if (k === 'kernel') guest.kernel = val;
    else if (k === 'cmdline') guest.cmdline = val;
    else if (k === 'state') guest.state = val;
    else if (k === 'failed') guest.failedUnits = val.split(/\s+/).filter(Boolean);
    else if (k === 'thp') guest.thp = val;
    else if (k === 'swap') guest.swap = val;
    else if (k === 'root') guest.root = val;
    else if (k === 'multi_user_usec' && Number(val) > 0) guest.multiUser = Number(val) / 1e6;
    else if (k === 'settled') guest.settled = val === 'yes';
    else if (k === 'runtime_state') guest.runtimeState = val;
    else if (k === 'runtime_exposure' && val) guest.runtimeExposure = Number(val);
    else if (k === 'runtime_ready_usec' && Number(val) > 0) guest.runtimeReadyUsec = Number(val);
    else if (k === 'runtime_activating_usec' && Number(val) > 0) guest.runtimeActivatingUsec = Number(val);
    else if (k === 'runtime_exec_usec' && Number(val) > 0) guest.runtimeExecUsec = Number(val);
    else if (k === 'runtime_startup' && val) guest.runtimeStartup = val;
    else if (k === 'runtime_reload') guest.runtimeReload = val;
    else if (k.startsWith('rpc_')) {
      const w = (guest.rpcWorker ??= { rules: [] });
      if (k === 'rpc_worker_state') w.state = val;
      else if (k === 'rpc_worker_listen') w.listen = val;
      else if (k === 'rpc_worker_listening') w.listening = val === 'yes';
      else if (k === 'rpc_firewall_state') w.firewall = val;
      else if (k === 'rpc_worker_from_self') w.fromSelf = val;
    }
    else if (k.startsWith('gpu_')) {
      const g = (guest.gpu ??= { devices: [] });
      if (k === 'gpu_unit') [g.unit, g.condition] = val.split(/\s+/);
      else if (k === 'gpu_module') g.module = val || undefined;
      else if (k === 'gpu_loaded') g.loaded = val === 'yes';
      else if (k === 'gpu_devices') g.devices = val.split(';').map((d) => d.trim()).filter(Boolean);
      else if (k === 'gpu_cuda') g.cuda = val || undefined;
    }
    else if (k === 'cpuflags') guest.cpuFlags = val.split(/\s+/).filter(Boolean);
    else if (k === 'llama_version') guest.llamaVersion = /version: .*/.exec(val)?.[0]?.trim() ?? val;
    else if (k.startsWith('k_')) {
      const kf = guest.kernelFacts;
      if (k === 'k_preempt') kf.preempt = val || undefined;
      else if (k === 'k_governor') kf.governor = val;
      else if (k === 'k_numa_nodes') kf.numaNodes = Number(val);
      else if (k === 'k_spectre_v2') kf.spectreV2 = val || undefined;
      else if (k === 'k_nohz_full') kf.nohzFull = val;
      else if (k === 'k_config') for (const mm of val.matchAll(/CONFIG_([A-Z0-9_]+)=(\S+)/g)) kf.config[mm[1]!] = mm[2]!.replace(/^"|"$/g, '');
    } else if (k === 'model') {
      const mm = /^(\S+) magic=(\S*) version=(\d*) bytes=(\d+) sha256=([0-9a-f]*)/.exec(val);
      if (mm) guest.models.push({ file: mm[1]!, magic: mm[2]!, version: Number(mm[3]), bytes: Number(mm[4]), sha256: mm[5]! });
    }
    else if (k === 'timing') {
      const t: Record<string, number> = {};
      for (const m of val.matchAll(/(\w+)TimestampMonotonic=(\d+)/g)) t[m[1]!] = Number(m[2]) / 1e6;
      if (t.Firmware && t.Loader !== undefined) guest.firmware = round(t.Firmware - t.Loader);
      if (t.Loader !== undefined) guest.loader = round(t.Loader);
      const userspace = t.Userspace;
      if (t.InitRD) guest.kernelSeconds = round(t.InitRD);
      if (t.InitRD && userspace) guest.initrd = round(userspace - t.InitRD);
      else if (userspace) guest.kernelSeconds = round(userspace);
      guest.userspaceStart = userspace;
    }
  }
  guest.kernelFacts.thp = guest.thp;
  guest.kernelFacts.cmdline = guest.cmdline;
  guest.kernelFacts.kernel = guest.kernel;
  if (guest.multiUser !== undefined && guest.userspaceStart !== undefined) guest.userspace = round(guest.multiUser - guest.userspaceStart);
  if (guest.multiUser !== undefined) {
    const parts = [
      guest.firmware !== undefined ? `${guest.firmware} s (firmware)` : '',
      guest.loader !== undefined ? `${guest.loader} s (loader)` : '',
      guest.kernelSeconds !== undefined ? `${guest.kernelSeconds} s (kernel${guest.initrd === undefined ? ' + initrd' : ''})` : '',
      guest.initrd !== undefined ? `${guest.initrd} s (initrd)` : '',
      guest.userspace !== undefined ? `${guest.userspace} s (userspace to multi-user)` : '',
    ].filter(Boolean);
    guest.timing = parts.join(' + ');
  }
  return { complete, guest };
}

/** CPU features QEMU's TCG cannot emulate (QEMU 7.2–9.x): an image needing one cannot boot its binaries under TCG. */
const TCG_MISSING = /^(avx512|amx|avx_vnni)/;

/** The manifest `aios build` wrote next to an image, as far as it is there (older manifests lack fields). */
export type ImageManifest = Partial<Manifest>;

export async function manifestFor(image: string): Promise<ImageManifest | undefined> {
  return readManifest(manifestPath(resolve(image)));
}

/**
 * Picks a QEMU CPU model that has every feature the image's binaries need, or refuses.
 * TCG: `max` (has AVX2/FMA/F16C since QEMU 7.2, no AVX-512). KVM: `host`, if the host has them.
 */
export async function cpuFor(required: string[], accel: 'kvm' | 'tcg', isaText = required.join(', ')): Promise<string> {
  if (accel === 'tcg') {
    const missing = required.filter((f) => TCG_MISSING.test(f));
    if (missing.length) {
      throw new UserError(
        `this image's llama.cpp binaries need ${missing.join(', ')} (${isaText}), which QEMU cannot emulate without KVM; ` +
          'they would crash with SIGILL. Rebuild with --set llama.cpu=x86-64-v3, or run qemu-test on a KVM host whose CPU has these features.',
        3,
      );
    }
    return 'max';
  }
  const cpuinfo = await readFile('/proc/cpuinfo', 'utf8').catch(() => '');
  const have = new Set((/^flags\s*:\s*(.*)$/m.exec(cpuinfo)?.[1] ?? '').split(/\s+/));
  const missing = required.filter((f) => !have.has(f));
  if (missing.length) throw new UserError(`this image's binaries need ${missing.join(', ')}, which this host's CPU lacks (KVM passes the host CPU through)`, 3);
  return 'host';
}

export interface QemuTestOptions extends Omit<QemuOptions, 'serial' | 'cmdlineExtra'> {
  /** CPU flags the image needs (default: from the image's manifest, llama.isa.flags). */
  requiredFlags?: string[];
  /** Give up after this many seconds (default 300: TCG boots take 35–65 s here). */
  timeout?: number;
  /** Keep the serial log here (default: next to the image, <image>.serial.log). */
  serialLog?: string;
  onProgress?: (line: string) => void;
  /** Client certificates for the runtime's TLS listener (default: tlsDirFor()). */
  tlsDir?: string;
  /** Boots so far whose kernel panicked under TCG (their panic lines); internal to the retries. */
  afterPanic?: string[];
  /**
   * More to do with the runtime in the guest once its probe answered (QEMU still running): called
   * with its address and client credentials; what it resolves with (or why it failed) is the
   * result's `during`. With snapshot = false what it makes the guest write stays in the image. An
   * RPC worker image's ggml-rpc-server is forwarded too (`more.worker`, host:port on this host; the
   * guest sees 10.0.2.2 connect); a worker image without the runtime gets address "".
   */
  during?: (address: string, tlsDir: string | undefined, more: { worker?: string }) => Promise<unknown>;
  /**
   * After the probe: load a second model with a cgroup memory.max far below its needs and require an
   * out-of-memory kill reported as such while the operational model keeps answering (oom-check.ts).
   */
  oomCheck?: boolean;
  /** More kernel command line for the boot check (after aios.check=1), e.g. aios.check.read=<path> (rootfs/usr/libexec/aios/boot-check). */
  checkCmdline?: string;
}

/**
 * Boots tried under TCG while the kernel panics early: QEMU's multi-threaded TCG occasionally breaks
 * the kernel's int3-based live code patching in an early initcall (an "Oops: int3" then a panic, a
 * few seconds into the boot; seen in about one boot in five on a busy 2-core host, with the stock
 * and the custom kernel alike). A panic on every try is reported as the failure it is.
 */
export const TCG_PANIC_BOOTS = 3;

/** The line a Linux kernel prints when it panics. */
export function kernelPanic(log: string): string | undefined {
  const m = /Kernel panic - not syncing: [^\r\n]*/.exec(log);
  return m?.[0];
}

/** Every model the manifest lists must be in the guest, with a GGUF header and the same sha256. */
export function modelProblems(manifest: ImageManifest | undefined, guest: BootCheck['guest']): string[] {
  const out: string[] = [];
  for (const m of manifest?.models ?? []) {
    const g = guest.models.find((x) => x.file === m.file);
    if (!g) out.push(`model ${m.file} missing in the guest`);
    else if (g.magic !== 'GGUF' || g.version < 2) out.push(`model ${m.file}: bad GGUF header in the guest (magic "${g.magic}", version ${g.version})`);
    else if (g.sha256 !== m.sha256) out.push(`model ${m.file}: sha256 in the guest ${g.sha256} differs from the build's ${m.sha256}`);
  }
  return out;
}

/** One unary Infer over gRPC (the call a plain gRPC client makes), with the model's probe: grammar-constrained, so the answer is checkable. */
export async function runtimeProbe(address: string, p: { prompt: string; grammar?: string; expect: string } = { prompt: 'Respond with OK if you are working.', grammar: 'root ::= "OK"', expect: 'OK' }, tlsDir?: string): Promise<NonNullable<BootCheck['runtime']>> {
  const { connect, unary, waitReady, explainError } = await import('../runtime/client.js');
  const c = connect(address, { tlsDir });
  const base = { address, prompt: p.prompt, expect: p.expect };
  try {
    if (!(await waitReady(c, 60_000))) return { ...base, ok: false, error: `no ready HealthCheck from ${address} within 60 s` };
    const t0 = Date.now();
    const r = await unary(c, 'Infer', { prompt: p.prompt, intelligence_level: 'operational', max_tokens: 8, temperature: 0, grammar: p.grammar ?? '' }, 120_000);
    return { ...base, ok: new RegExp(p.expect).test(r.text), text: r.text, latencyMs: Date.now() - t0, modelUsed: r.model_used };
  } catch (e) {
    return { ...base, ok: false, error: explainError(e, address, { tlsDir }) };
  } finally {
    c.close();
  }
}

/**
 * The client credentials for an image's runtime: `--tls-dir` / AIOS_TLS_DIR, else the pki dir its
 * manifest names, else <image's dir>/<name>.pki (where aios build puts them). Undefined when the
 * image has no TLS.
 */
export function tlsDirFor(image: string, manifest: ImageManifest | undefined, given?: string): string | undefined {
  if (given) return resolve(given);
  if (process.env.AIOS_TLS_DIR) return resolve(process.env.AIOS_TLS_DIR);
  const tls = manifest?.runtime?.tls;
  if (!tls) return undefined;
  return tls.pki ? resolve(tls.pki) : join(dirname(resolve(image)), `${manifest?.name ?? basename(image).replace(/\.(raw|iso)$/, '')}.pki`);
}

/** What qemu-test warns about an image's access (printed, and in BootCheck.warnings): listeners left open on purpose. */
export function accessWarnings(manifest: ImageManifest | undefined): string[] {
  const rt = manifest?.runtime?.enabled ? manifest.runtime : undefined;
  if (!rt?.insecure_listen) return [];
  return [`runtime.insecure_listen: the image's listeners beyond loopback accept anyone without authentication (${[rt.listen, rt.http_listen].filter(Boolean).join(', ')})`];
}

/** Boots the image with the check unit enabled (aios.check=1) and reports what it found. */
export async function qemuTest(image: string, o: QemuTestOptions = {}): Promise<BootCheck> {
  if (!existsSync(image)) throw new UserError(`no such image: ${image}`, 2);
  const tmp = await mkdtemp(join(tmpdir(), 'aios-qemu-'));
  const unregister = registerTemp(tmp);
  const serialLog = resolve(o.serialLog ?? `${image}.serial.log`);
  try {
    const ovmf = findOvmf();
    const vars = join(tmp, 'OVMF_VARS.fd');
    await copyFile(ovmf.vars, vars);
    await writeFile(serialLog, '');
    const accel = o.accel ?? ((await kvmWorks()) ? 'kvm' : 'tcg');
    const manifest = await manifestFor(image);
    const isa = manifest?.llama?.isa;
    const cpu = o.cpu ?? (await cpuFor(o.requiredFlags ?? isa?.flags ?? [], accel, isa?.description));
    const timeout = (o.timeout ?? 300) * 1000;
    const rt = manifest?.runtime?.enabled ? manifest.runtime : undefined;
    const tlsDir = rt ? tlsDirFor(image, manifest, o.tlsDir) : undefined;
    if (tlsDir && !existsSync(join(tlsDir, 'client.crt'))) throw new UserError(`${image} serves mutual TLS, and ${tlsDir} has no client.crt: pass the image's pki dir with --tls-dir (or AIOS_TLS_DIR)`, 2);
    const hostPort = rt ? await freePort() : 0;
    const guestPort = rt ? Number(rt.listen.split(':').pop()) : 0;
    // An RPC worker beyond loopback: its port forwarded too, so that the host can connect as 10.0.2.2.
    const wk = manifest?.fleet?.role === 'worker' && !/^127\./.test(manifest.fleet.listen) ? manifest.fleet : undefined;
    const workerHostPort = wk ? await freePort() : 0;
    const forwards = [...(rt ? [{ host: hostPort, guest: guestPort }] : []), ...(wk ? [{ host: workerHostPort, guest: Number(wk.listen.split(':').pop()) }] : [])];
    const hold = !!(rt || wk);
    const media = o.media ?? ((await isIso(image)) ? 'cdrom' : 'disk');
    const { argv } = await qemuArgs(
      image,
      { ...o, media, accel, cpu, serial: serialLog, cmdlineExtra: `aios.check=1${hold ? ' aios.hold=1' : ''}${o.checkCmdline ? ` ${o.checkCmdline}` : ''}`, snapshot: o.snapshot !== false, forwards },
      vars,
    );
    const t0 = Date.now();
    o.onProgress?.(`booting as ${media} with ${accel.toUpperCase()} (timeout ${timeout / 1000} s), serial log ${serialLog}`);
    const child = execa(argv[0]!, argv.slice(1), { reject: false, timeout, all: true, stdin: 'ignore' });
    // Wait for the boot check's report (or QEMU's exit), reading the serial log as it grows.
    let exited = false;
    void child.then(() => (exited = true));
    let log = '';
    let panic: string | undefined;
    while (!exited) {
      log = await readFile(serialLog, 'utf8');
      if (log.includes('AIOS-CHECK-END')) break;
      panic = kernelPanic(log);
      if (panic) {
        child.kill('SIGKILL'); // a panicked guest never powers off by itself: no reason to wait for the timeout
        break;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    const panics = [...(o.afterPanic ?? []), ...(panic ? [panic] : [])];
    if (panic && accel === 'tcg' && panics.length < TCG_PANIC_BOOTS) {
      await child;
      o.onProgress?.(`the guest kernel panicked under TCG (${panic}); booting again (${panics.length} of ${TCG_PANIC_BOOTS})`);
      const again = await qemuTest(image, { ...o, afterPanic: panics });
      return { ...again, retried: again.retried ?? `${panics.length} boot(s) before this one panicked under TCG (${panic}); the serial log is the last boot's` };
    }
    let probe: BootCheck['runtime'] = undefined;
    let access: AccessCheck[] | undefined;
    let during: BootCheck['during'];
    let oom: OomCheck | undefined;
    let worker: BootCheck['worker'];
    if (wk && !exited && !panic) {
      o.onProgress?.(`checking the RPC worker: a connection from the host (10.0.2.2) to ${wk.listen}`);
      worker = await workerCheck(`127.0.0.1:${workerHostPort}`, wk, { holdMs: accel === 'tcg' ? 3000 : 1000 });
    }
    const more = wk ? { worker: `127.0.0.1:${workerHostPort}` } : {};
    const runDuring = (address: string) =>
      o.during!(address, tlsDir, more).then(
        (value) => ({ ok: true, value }),
        (e: Error) => ({ ok: false, error: e?.message ?? String(e) }),
      );
    if (!rt && wk && !exited && !panic) {
      if (worker?.ok && o.during) {
        o.onProgress?.('talking to the worker in the guest (during)');
        during = await runDuring('');
      }
      child.kill('SIGTERM');
    }
    if (rt && !exited && !panic) {
      // The runtime's own check: a prompt over gRPC, through QEMU's user-net port forwarding.
      probe = await runtimeProbe(`127.0.0.1:${hostPort}`, rt.probe, tlsDir);
      if (probe.ok && tlsDir) {
        o.onProgress?.('checking access control: infer and admin scopes, plain text and another CA refused');
        access = await accessChecks(`127.0.0.1:${hostPort}`, tlsDir);
      }
      if (probe.ok && o.during) {
        o.onProgress?.('talking to the runtime in the guest (during)');
        during = await runDuring(`127.0.0.1:${hostPort}`);
      }
      const op = manifest?.models?.find((m) => m.level === 'operational') ?? manifest?.models?.[0];
      if (probe.ok && o.oomCheck && op) {
        o.onProgress?.('checking the model sandbox: a second model with memory.max far below its needs, the operational model answering meanwhile');
        oom = await oomCheck(`127.0.0.1:${hostPort}`, tlsDir, `/var/lib/aios/models/${op.file}`);
      }
      // The power is cut: what the guest has not flushed to its disk is lost (with snapshot = false).
      child.kill('SIGTERM');
    }
    const res = await child;
    const hostSeconds = (Date.now() - t0) / 1000;
    log = await readFile(serialLog, 'utf8');
    const { complete, guest } = parseCheckLog(log);
    if (probe && guest.runtimeReadyUsec) probe.readySeconds = Math.round(guest.runtimeReadyUsec / 1e4) / 100;
    let reason: string | undefined;
    if (panic) reason = `the guest kernel panicked: ${panic}${panics.length > 1 ? ` (in all ${panics.length} boots)` : ''} (see ${serialLog})`;
    else if (res.timedOut) reason = `timed out after ${timeout / 1000} s${complete ? '' : ' before the boot check reported'} (see ${serialLog})`;
    else if (!complete) reason = `QEMU exited (code ${res.exitCode}) without a boot check report: ${String(res.all ?? '').trim().slice(-500) || `see ${serialLog}`}`;
    else if (guest.failedUnits.length) reason = `failed units: ${guest.failedUnits.join(', ')}`;
    else if (modelProblems(manifest, guest).length) reason = modelProblems(manifest, guest).join('; ');
    else if (!guest.settled) reason = `boot jobs were still running when the check gave up (state ${guest.state ?? 'unknown'})`;
    else if (guest.state === 'degraded' || guest.state === 'maintenance' || guest.state === 'stopping') reason = `system state ${guest.state}`;
    else if (rt && guest.runtimeState !== 'active') reason = `aios-runtime.service is ${guest.runtimeState ?? 'missing'}`;
    else if (probe && !probe.ok) reason = `aios-runtime probe failed: ${probe.error ?? `answer "${probe.text}" does not match /${probe.expect}/`}`;
    else if (access?.some((a) => !a.ok)) reason = `access control: ${access.filter((a) => !a.ok).map((a) => `${a.name}: ${a.detail}`).join('; ')}`;
    else if (oom && !oom.ok) reason = `model sandbox: ${oom.detail}`;
    else if (wk && guest.rpcWorker?.listening !== true) reason = `the RPC worker (aios-rpc-worker.service ${guest.rpcWorker?.state ?? 'unknown'}) did not listen on ${wk.listen} within 60 s`;
    else if (wk && !headsAdmit(wk.heads, wk.listen.split(':')[0]!) && guest.rpcWorker?.fromSelf === 'connected') reason = `the RPC worker's firewall let the guest's own address (not a head) connect to ${wk.listen}`;
    else if (worker && !worker.ok) reason = `RPC worker: ${worker.detail}`;
    else if (guest.gpu && !guest.gpu.module) reason = 'GPU image: no nvidia kernel module for the running kernel (DKMS did not build one for it: see the rootfs stage\'s log)';
    const kernelWishes = complete && manifest?.kernel?.wishes ? liveWishes(manifest.kernel.wishes, guest.kernelFacts) : [];
    const warnings = accessWarnings(manifest);
    return { ok: !reason, image, media, accel, reason, hostSeconds, guest, serialLog, kernelWishes, runtime: probe, ...(access ? { access } : {}), ...(oom ? { oom } : {}), ...(worker ? { worker } : {}), ...(tlsDir ? { tlsDir } : {}), ...(during ? { during } : {}), warnings };
  } finally {
    unregister();
    await safeRemove(tmp);
  }
}

/** Interactive: serial console on this terminal (Ctrl-A X quits). */
export async function qemuInteractive(image: string, o: Omit<QemuOptions, 'serial'> = {}): Promise<number> {
  if (!existsSync(image)) throw new UserError(`no such image: ${image}`, 2);
  const tmp = await mkdtemp(join(tmpdir(), 'aios-qemu-'));
  try {
    const vars = join(tmp, 'OVMF_VARS.fd');
    await copyFile(findOvmf().vars, vars);
    const { argv } = await qemuArgs(image, { ...o, serial: 'stdio' }, vars);
    const r = await execa(argv[0]!, argv.slice(1), { stdio: 'inherit', reject: false });
    return r.exitCode ?? 1;
  } finally {
    await safeRemove(tmp);
  }
}
