/**
 * The one recipe schema. Every key, its type, default and description lives here; the resolved
 * recipe (`aios summary`), CLI `--set` overrides and docs/recipe.md are all derived from it.
 */
import { z } from 'zod';
import { SIZE_RE } from '../util/size.js';
import { QUANTS, SHAPES } from '../models/synth.js';
import { RpcWorker } from '../runtime/config.js';
import { applianceImageKeys } from './appliance.js';
import { UpdateSchema } from './update.js';
import { llamaToolchainKeys } from './toolchain.js';
import { GpuSchema } from './gpu.js';

const size = (what: string) =>
  z.string().regex(SIZE_RE, { message: `${what} must be a size such as 512M or 4G` });

const unitName = z
  .string()
  .regex(/^[A-Za-z0-9@_.:\\-]+\.(service|socket|timer|target|path|mount|automount|device|swap|slice)$/, {
    message: 'must be a systemd unit name such as cups.service',
  });

const pkgName = z.string().regex(/^[a-z0-9][a-z0-9+.\-]*$/, { message: 'must be a package name (lowercase, digits, + . -)' });

export const BaseSchema = z
  .strictObject({
    distro: z.enum(['debian', 'arch']).default('debian').describe('Base distribution: debian (mmdebstrap) or arch (pacstrap)'),
    suite: z
      .string()
      .optional()
      .describe('Release to bootstrap (debian: trixie, sid, …; arch: ignored, rolling). Default: trixie for debian'),
    mirror: z.string().url().optional().describe('Package mirror URL. Default: the distro module\'s (deb.debian.org / geo.mirror.pkgbuild.com)'),
    packages: z.array(pkgName).default([]).describe('Extra packages to install into the image'),
  })
  .describe('Base system');

export const SystemSchema = z
  .strictObject({
    hostname: z
      .string()
      .regex(/^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/, { message: 'must be a valid hostname (a-z, 0-9, -; at most 63 chars)' })
      .default('aios')
      .describe('Hostname written to /etc/hostname'),
    timezone: z.string().default('UTC').describe('Timezone (/etc/localtime)'),
    locale: z.string().default('C.UTF-8').describe('LANG in /etc/locale.conf'),
    root_password_hash: z
      .string()
      .optional()
      .describe('crypt(3) hash for root (e.g. from `openssl passwd -6`). Unset: root password locked'),
    autologin: z
      .boolean()
      .default(true)
      .describe('Log root in automatically on the serial console (handy for development images; turn off for real machines)'),
    masked_units: z
      .array(unitName)
      .default([
        'bluetooth.service',
        'cups.service',
        'avahi-daemon.service',
        'ModemManager.service',
        'apt-daily.timer',
        'apt-daily-upgrade.timer',
        'e2scrub_all.timer',
        'fstrim.timer',
      ])
      .describe('Units masked in the image (symlinked to /dev/null): services and timers an inference appliance does not need, which would otherwise wake up and take CPU and I/O from inference'),
    network: z.enum(['dhcp', 'none']).default('dhcp').describe('systemd-networkd DHCP on every wired interface, or no network config'),
  })
  .describe('System identity and services');

export const BootSchema = z
  .strictObject({
    timeout: z.number().int().min(0).max(600).default(0).describe('systemd-boot menu timeout in seconds (0: boot at once)'),
    console: z
      .array(z.string().regex(/^(tty\d*|ttyS\d+(,\d+)?)$/, { message: 'must be a console such as tty0 or ttyS0,115200' }))
      .default(['tty0', 'ttyS0,115200'])
      .describe('Kernel consoles; the last one becomes /dev/console'),
    cmdline: z.array(z.string()).default([]).describe('Extra kernel command-line arguments'),
    initramfs_modules: z
      .array(z.string().regex(/^[a-z0-9_\-]+$/))
      .default(['virtio_pci', 'virtio_blk', 'virtio_scsi', 'nvme', 'ahci', 'sd_mod', 'xhci_pci', 'usb_storage', 'uas'])
      .describe('Kernel modules put into the initramfs (MODULES=list keeps it ~10 MB); the root filesystem module is added automatically'),
  })
  .describe('Boot loader and kernel command line');

export const TuningSchema = z
  .strictObject({
    transparent_hugepage: z
      .enum(['madvise', 'always', 'never', 'kernel-default'])
      .default('madvise')
      .describe('THP mode (transparent_hugepage=): madvise lets llama.cpp ask for huge pages without defrag stalls'),
    preempt: z
      .enum(['voluntary', 'none', 'full', 'kernel-default'])
      .default('voluntary')
      .describe('Preemption model at boot (preempt=, needs CONFIG_PREEMPT_DYNAMIC: Debian 6.12 has it)'),
    watchdog: z.boolean().default(false).describe('Keep the soft/NMI watchdogs (false adds nowatchdog nmi_watchdog=0)'),
    mitigations: z
      .boolean()
      .default(true)
      .describe('Keep CPU vulnerability mitigations. false adds mitigations=off: faster, UNSAFE on untrusted networks or code'),
    sysctl: z
      .record(z.string().regex(/^[a-z0-9_.\-/]+$/, { message: 'must be a sysctl name such as vm.swappiness' }), z.union([z.string(), z.number()]))
      .default({
        'vm.swappiness': 180,
        'vm.watermark_boost_factor': 0,
        'vm.watermark_scale_factor': 125,
        'vm.page-cluster': 0,
        'kernel.nmi_watchdog': 0,
      })
      .describe('sysctl settings written to /etc/sysctl.d/90-aios.conf (defaults: tuned for zram swap)'),
  })
  .describe('Boot-time inference tuning');

export const ZramSchema = z
  .strictObject({
    enabled: z.boolean().default(true).describe('Compressed swap in RAM via zram-generator'),
    algorithm: z.enum(['zstd', 'lz4', 'lzo-rle']).default('zstd').describe('Compression algorithm'),
    size: z
      .string()
      .regex(/^(ram|ram\s*[*/]\s*\d+(\.\d+)?|min\(.*\)|\d+)$/, { message: 'must be a zram-generator size expression such as "ram", "ram / 2" or a number of MiB' })
      .default('ram')
      .describe('zram-size expression (zram-generator syntax); "ram" = a device as large as RAM (zram takes memory only for the compressed pages swapped to it)'),
  })
  .describe('Compressed swap');

export const JournaldSchema = z
  .strictObject({
    storage: z.enum(['volatile', 'persistent', 'auto', 'none']).default('volatile').describe('journald Storage='),
    max_use: size('journald.max_use').default('50M').describe('SystemMaxUse= and RuntimeMaxUse='),
  })
  .describe('Logging');

export const FilesystemSchema = z
  .strictObject({
    root: z.enum(['ext4', 'xfs']).default('ext4').describe('Root filesystem (xfs is built with the target\'s own xfs_protofile + mkfs.xfs -p)'),
    mount_options: z
      .array(z.string().regex(/^[a-z0-9_=,.\-]+$/))
      .optional()
      .describe('Root mount options in /etc/fstab. Default: noatime,commit=60 for ext4; noatime for xfs'),
  })
  .describe('Root filesystem');

export const ImageSchema = z
  .strictObject({
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/, { message: 'must be a file name stem (letters, digits, . _ -)' })
      .optional()
      .describe('Output name: out/<name>.raw. Default: the recipe file name'),
    size: z
      .union([z.literal('auto'), size('image.size')])
      .default('auto')
      .describe('Total disk size; "auto" = contents + root_headroom'),
    esp_size: size('image.esp_size').default('256M').describe('EFI system partition size'),
    root_headroom: size('image.root_headroom').default('512M').describe('Free space added to the root filesystem when size is auto'),
    formats: z
      .array(z.enum(['disk', 'iso']))
      .min(1)
      .default(['disk'])
      .describe('Outputs of `aios build image`: disk (GPT raw image, out/<name>.raw), iso (UEFI live ISO, out/<name>.iso: squashfs root under a tmpfs overlay). `aios build iso` builds the ISO alone'),
    seed: z
      .string()
      .optional()
      .describe('Seed for disk, partition and filesystem UUIDs. Unset: the image name (same UUIDs every build); "random": new ones every build (disables the overlay cache)'),
    // The appliance layout (docs/appliance.md): layout, version, readonly_fs, slot_size.
    ...applianceImageKeys,
  })
  .describe('Disk image layout');

const LlamaSource = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('npm'),
    package: z.string().default('node-llama-cpp').describe('npm package that ships llama/gitRelease.bundle'),
    version: z.string().regex(/^\d+\.\d+\.\d+$/, { message: 'must be an exact version such as 3.22.1' }).default('3.22.1'),
  }),
  z.strictObject({ type: z.literal('git'), url: z.string().min(1), ref: z.string().min(1).describe('tag, branch or commit') }),
  z.strictObject({ type: z.literal('dir'), path: z.string().min(1).describe('a local llama.cpp checkout') }),
  z.strictObject({
    type: z.literal('tarball'),
    url: z.string().url(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, { message: 'must be 64 lowercase hex digits' }),
  }),
]);

export const LLAMA_CPU_LEVELS = ['native', 'x86-64-v4', 'x86-64-v3', 'x86-64-v2', 'x86-64'] as const;

export const LlamaSchema = z
  .strictObject({
    enabled: z.boolean().default(true).describe('Compile llama.cpp and install its binaries into /usr/bin of the image'),
    source: LlamaSource.prefault({ type: 'npm' }).describe(
      'Pinned source: {type="npm", package, version} (offline default: the tree node-llama-cpp ships), {type="git", url, ref}, {type="dir", path}, {type="tarball", url, sha256}',
    ),
    cpu: z
      .enum(LLAMA_CPU_LEVELS)
      .default('native')
      .describe('Instruction set the binaries target: native (-march=native of the build host: they may SIGILL elsewhere) or an x86-64 level (x86-64-v3 = AVX2/FMA/F16C)'),
    gpu: z
      .enum(['none', 'cuda'])
      .default('none')
      .describe('GPU backend: cuda compiles ggml\'s CUDA backend (-DGGML_CUDA=ON, for gpu.cuda_arch) with the CUDA toolkit of a tools tree (llama.toolchain = "tools-tree", Debian\'s nvidia-cuda-toolkit), puts the CUDA runtime libraries into the image and needs gpu.driver; the CPU backend stays, for machines without a GPU (docs/gpu.md)'),
    targets: z
      .array(z.string().regex(/^llama-[a-z0-9-]+$/))
      .default(['llama-server', 'llama-bench', 'llama-quantize'])
      .describe('CMake targets built and installed to /usr/bin'),
    cmake_args: z.array(z.string().regex(/^-D[A-Za-z0-9_]+=.*$/, { message: 'must look like -DNAME=VALUE' })).default([]).describe('Extra -D options for CMake'),
    rpc: z
      .boolean()
      .default(true)
      .describe('llama.cpp\'s RPC backend (-DGGML_RPC=ON): llama-server takes --rpc host:port,… and ggml-rpc-server (the worker of a split model) is built and installed to /usr/bin (docs/fleets.md)'),
    ...llamaToolchainKeys,
  })
  .describe('llama.cpp build');

const modelName = z
  .string()
  .regex(/^[a-z0-9][a-z0-9._-]*$/, { message: 'must be lowercase letters, digits, . _ - (it becomes <name>.gguf)' });
const adapterCommon = {
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, { message: 'must be 1-64 of A-Z a-z 0-9 _ . -' }).describe('what requests call it'),
  description: z.string().default('').describe('what it is for (selection by task compares it with the task)'),
  scale: z.number().min(-4).max(4).default(1).describe('scale when a request gives none'),
};
/** A LoRA adapter of a model ([[models.adapters]]): installed as <model>.lora-<name>.gguf and listed in the runtime's config. */
const AdapterSpecSchema = z.discriminatedUnion('source', [
  z.strictObject({
    ...adapterCommon,
    source: z.literal('synth'),
    rank: z.number().int().min(1).max(256).default(8),
    seed: z.number().int().min(0).default(1),
    zero_b: z.boolean().default(false).describe('lora_b all zero: applying it changes nothing'),
  }),
  z.strictObject({ ...adapterCommon, source: z.literal('file'), path: z.string().min(1).describe('a LoRA GGUF on the build host') }),
  z.strictObject({
    ...adapterCommon,
    source: z.literal('url'),
    url: z.string().url(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, { message: 'must be 64 lowercase hex digits' }),
    size: z.number().int().positive().optional(),
  }),
]);
const modelCommon = {
  name: modelName.describe('Installed as /var/lib/aios/models/<name>.gguf'),
  adapters: z
    .array(AdapterSpecSchema)
    .default([])
    .superRefine((a, ctx) => {
      const seen = new Set<string>();
      a.forEach((x, i) => {
        if (seen.has(x.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `adapter "${x.name}" is listed twice` });
        seen.add(x.name);
      });
    })
    .describe('LoRA adapters, each {name, description = "", scale = 1.0, source = "synth" (rank = 8, seed = 1, zero_b = false: random weights for tests), "file" (path: a LoRA GGUF on the build host) or "url" (url, sha256, size: downloaded and checked like a model)}; a model with source = "catalog" also gets its catalog entry\'s adapters ([[model.adapters]] in models/catalog.toml; one listed here under the same name replaces it); installed as <name>.lora-<adapter>.gguf, checked against the model at build (a misfit fails it, with the reason), listed as [[models.<layer>.adapters]] in /etc/aios/config.toml and loaded unapplied by aios-runtime'),
  rpc: z
    .boolean()
    .default(false)
    .describe('Split this model across runtime.rpc_workers with llama.cpp\'s RPC backend: its layers and their KV cache go to the workers in proportion to the free memory each reports (rpc = true on its layer in /etc/aios/config.toml; docs/fleets.md). Needs runtime.rpc_workers and llama.rpc'),
  level: z.enum(['operational', 'tactical']).default('tactical').describe('Intelligence layer this model serves: operational (loaded at start; the runtime is ready once it answers its probe) or tactical (loaded when a request asks for it)'),
  store: z
    .enum(['var', 'image'])
    .default('var')
    .describe('Where the file lives: "var" = /var/lib/aios/models (writable; with image.layout = "appliance" seeded on the first boot and kept across updates, which never replace it) or "image" = /usr/lib/aios/models in the root (read-only; on an appliance verified by dm-verity and replaced by each update), linked from /var/lib/aios/models by systemd-tmpfiles at every boot, so the runtime finds both in one place'),
};
export const ModelSpecSchema = z.discriminatedUnion('source', [
  z.strictObject({
    ...modelCommon,
    source: z.literal('synth'),
    shape: z.enum(Object.keys(SHAPES) as [string, ...string[]]).default('tiny'),
    quant: z.enum(QUANTS).default('f32'),
    seed: z.number().int().min(0).default(0),
  }),
  z.strictObject({ ...modelCommon, source: z.literal('catalog'), id: z.string().describe('an id from models/catalog.toml') }),
  z.strictObject({
    ...modelCommon,
    source: z.literal('url'),
    url: z.string().url(),
    sha256: z.string().regex(/^[0-9a-f]{64}$/, { message: 'must be 64 lowercase hex digits' }),
    size: z.number().int().positive().optional(),
  }),
  z.strictObject({ ...modelCommon, source: z.literal('file'), path: z.string().min(1) }),
]);
export type ModelSpec = z.output<typeof ModelSpecSchema>;

export const RuntimeSchema = z
  .strictObject({
    enabled: z.boolean().default(false).describe('Install aios-runtime (bundled, on the distro\'s Node.js) as aios-runtime.service; needs llama.enabled and an operational model (the default recipe turns it on)'),
    listen: z
      .string()
      .regex(/^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\]|localhost):\d{1,5}$/, { message: 'must be host:port such as 127.0.0.1:50051' })
      .default('127.0.0.1:50051')
      .describe('gRPC TCP address in the image. Loopback by default; anything beyond loopback needs runtime.tls (the default) or runtime.insecure_listen'),
    http_listen: z
      .string()
      .regex(/^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\]|localhost):\d{1,5}$/, { message: 'must be host:port such as 127.0.0.1:8080' })
      .default('127.0.0.1:8080')
      .describe('OpenAI-compatible HTTP API and /metrics in the image. Beyond loopback it serves HTTPS with the image\'s certificate and requires `Authorization: Bearer <key>` (docs/access.md)'),
    tls: z
      .boolean()
      .default(true)
      .describe('Mutual TLS on TCP listeners beyond loopback: the build makes (or reuses) a per-image CA, server and builder certificates in runtime.pki and puts the server\'s key into the image as a systemd credential. false: no certificates in the image (then a listener beyond loopback needs runtime.insecure_listen)'),
    pki: z
      .string()
      .default('')
      .describe('Directory of the image\'s certificates and keys (ca.crt, ca.key, server.crt, server.key, client.crt, client.key, http-key): missing ones are made. "" = <output dir>/<image name>.pki. Point several recipes at one directory for a fleet sharing a CA'),
    tls_sans: z
      .array(z.string().regex(/^[A-Za-z0-9.:*-]+$/, { message: 'must be a DNS name or an IP address' }))
      .default([])
      .describe('Extra names and addresses in the server certificate (always: system.hostname, localhost, 127.0.0.1, ::1), e.g. the machine\'s DNS name or LAN address'),
    insecure_listen: z
      .boolean()
      .default(false)
      .describe('Allow a listener beyond loopback without TLS/authentication (anyone on the network can run inference and load or unload models): warned about at build, in the journal and by qemu-test'),
    memory_high: z
      .string()
      .regex(/^(\d+[KMGT]?|\d+%|infinity)$/, { message: 'must be a systemd MemoryHigh= value such as 28G or 90%' })
      .default('90%')
      .describe('MemoryHigh= of aios-runtime.service: above it the kernel throttles and reclaims the runtime before the rest of the system runs short (e.g. 28G on a 32 GB machine leaves 4 GB to the OS)'),
    install_models: z
      .boolean()
      .default(false)
      .describe('Let aios-runtime install catalog models at run time (`aios runtime pull <id>`, PullModel; and auto-install, if its config turns that on): /var/lib/aios/models becomes writable to the service (group aios, mode 2775, ReadWritePaths=). false: the model dir is read-only to the service, so a compromised runtime cannot replace a model, and models come only from the build (or root, by hand)'),
    rpc_workers: z
      .array(RpcWorker)
      .default([])
      .describe('This machine as a head of models split across machines: the ggml-rpc-server workers (images/rpc-worker.toml) its models with rpc = true use, each {address = "10.0.0.2:50052" (an IPv4 address and port: the worker\'s firewall admits heads by address), memory = "" (most this head may place there; "" = what the worker reports free)}; written to /etc/aios/config.toml as [[runtime.rpc_workers]] (docs/fleets.md)'),
    catalog: z
      .string()
      .default('')
      .describe('A model catalog of your own on the build host (a TOML file of [[model]] tables as in models/catalog.toml: id, level, file, url, size, sha256, …), appended to the shipped catalog in the image, so that `aios runtime pull <id>` and runtime.auto_install can install those models (e.g. from a mirror on your network). Checked at build: an entry the catalog schema refuses or an id the shipped catalog already has fails it. "" = the shipped catalog only'),
  })
  .describe('aios-runtime service');

/** Fleets (issue 20; docs/fleets.md): what this machine is in a model split across machines. */
export const FleetSchema = z
  .strictObject({
    role: z
      .enum(['standalone', 'worker'])
      .default('standalone')
      .describe('standalone: an aios node on its own, or a head of split models (its workers are runtime.rpc_workers). worker: an RPC worker of split models: the image runs aios-rpc-worker.service (llama.cpp\'s ggml-rpc-server from the llama stage, needs llama.rpc) on fleet.listen, and loads a firewall generated from fleet.heads at boot (aios-rpc-firewall.service)'),
    listen: z
      .string()
      .regex(/^\d{1,3}(\.\d{1,3}){3}:\d{1,5}$/, { message: 'must be an IPv4 address and port such as 10.0.0.2:50052 (an IP literal, never a name; the pinned ggml-rpc-server binds IPv4 only)' })
      .default('127.0.0.1:50052')
      .describe('A worker\'s ggml-rpc-server address (-H, -p): the address of one of its interfaces, or 0.0.0.0. Beyond loopback it needs fleet.heads'),
    heads: z
      .array(z.string())
      .default([])
      .describe('IPv4 addresses or prefixes (10.0.0.1, 10.0.1.0/24) of the heads that may connect to a worker: its firewall (nftables, generated) accepts the port from them and answers everyone else with a TCP reset, and the unit\'s IPAddressAllow= admits only them. Required when fleet.listen is beyond loopback'),
    interface: z
      .string()
      .regex(/^[A-Za-z0-9_.-]{1,15}$/, { message: 'must be a network interface name such as eth0 or wg0' })
      .optional()
      .describe('Accept the heads only through this interface (e.g. a dedicated link). Unset: any interface'),
    tunnel: z
      .enum(['none', 'wireguard'])
      .default('none')
      .describe('wireguard: the RPC traffic goes through a WireGuard tunnel (fleet.wireguard; systemd-networkd\'s interface aioswg0): a worker then listens on its tunnel address and admits its heads only through the tunnel. The private key is never in the recipe: networkd reads it from the credential network.wireguard.aios (PrivateKey=@network.wireguard.aios; /etc/credstore on the machine; docs/fleets.md)'),
    wireguard: z
      .strictObject({
        address: z.string().describe('this machine\'s tunnel address with its prefix length, e.g. 10.77.0.2/24'),
        listen_port: z.number().int().min(1).max(65535).default(51820).describe('UDP port of the tunnel'),
        peers: z
          .array(
            z.strictObject({
              public_key: z.string().describe('the peer\'s public key (`wg pubkey`)'),
              allowed_ips: z.array(z.string()).default([]).describe('the peer\'s tunnel addresses, e.g. ["10.77.0.1/32"]'),
              endpoint: z.string().optional().describe('where to reach it, host:port (a worker may leave it out: its heads connect first)'),
              keepalive: z.number().int().min(0).max(65535).optional().describe('PersistentKeepalive= seconds (through NAT)'),
            }),
          )
          .default([]),
      })
      .optional()
      .describe('The WireGuard tunnel of fleet.tunnel = "wireguard": { address = "10.77.0.2/24", listen_port = 51820, peers = [{ public_key, allowed_ips, endpoint, keepalive }] } (a worker lists its heads, a head its workers)'),
    cache: z
      .boolean()
      .default(true)
      .describe('ggml-rpc-server -c: a local cache of the tensors heads send (large tensors are then sent as a hash after the first load), under /var/cache/aios-rpc-worker (CacheDirectory=, $LLAMA_CACHE); it grows with every model loaded, nothing prunes it'),
  })
  .describe('Fleets: this machine\'s part in a model split across machines (docs/fleets.md)');

export const KernelSchema = z
  .strictObject({
    fragments: z
      .array(z.string().regex(/^[A-Za-z0-9._/-]+$/))
      .default([])
      .describe('Kernel wishes: kernel-configs/<name>.config fragments (or paths). Without kernel.build they are checked against the stock kernel and the at-boot ones join the cmdline; with it they are compiled in'),
    build: z
      .boolean()
      .default(false)
      .describe('Build a custom kernel (Debian linux-source, stage `kernel`) with every wish compiled in, instead of the distribution\'s stock kernel. Debian only'),
    base: z
      .string()
      .regex(/^(tiny|compact|debian|local|[A-Za-z0-9._/-]+\.config)$/, { message: 'must be tiny, compact, debian, local or a path to a .config' })
      .default('compact')
      .describe('Base config of the custom kernel: tiny (tinyconfig + kvm_guest.config + kernel-configs/tiny.config: QEMU/KVM guests and CI only, no drivers for real machines; the quickest compile), compact (x86_64_defconfig + kvm_guest.config + kernel-configs/compact.config: real machines and VMs; tens of minutes on 2 cores, see docs/kernel.md), debian (Debian\'s own config: every driver, many hours on 2 cores), local (make localmodconfig from the modules loaded on the build host), or a path to a .config'),
    strict: z
      .boolean()
      .default(true)
      .describe('With kernel.build: a wish that does not land in the final config fails the build (false: a warning)'),
    series: z.string().regex(/^\d+\.\d+$/).default('6.12').describe('Kernel series of the custom kernel: Debian\'s linux-source-<series> from base.suite'),
    version: z
      .string()
      .regex(/^[0-9][A-Za-z0-9.+~-]*$/)
      .optional()
      .describe('Pinned Debian version of linux-source-<series> (e.g. 6.12.117-1): the build fails if the archive has another. Unset: whatever the archive has (recorded in the manifest)'),
  })
  .describe('Kernel wishes and the custom kernel');

export const RecipeSchema = z.strictObject({
  extends: z.string().optional().describe('Recipe this one builds on (name in images/ or a path); its keys are the defaults here'),
  description: z.string().default('').describe('Free text shown by `aios summary`'),
  base: BaseSchema.prefault({}),
  system: SystemSchema.prefault({}),
  boot: BootSchema.prefault({}),
  tuning: TuningSchema.prefault({}),
  zram: ZramSchema.prefault({}),
  journald: JournaldSchema.prefault({}),
  filesystem: FilesystemSchema.prefault({}),
  image: ImageSchema.prefault({}),
  llama: LlamaSchema.prefault({}),
  gpu: GpuSchema.prefault({}),
  models: z
    .array(ModelSpecSchema)
    .default([])
    .describe('[[models]] tables: GGUF models installed into /var/lib/aios/models. source = synth | catalog | url | file'),
  runtime: RuntimeSchema.prefault({}),
  kernel: KernelSchema.prefault({}),
  fleet: FleetSchema.prefault({}),
  update: UpdateSchema.prefault({}),
  api: z
    .record(z.string(), z.unknown())
    .default({})
    .describe('The strategic layer: [api] and one [api.<name>] table per cloud provider, copied into /etc/aios/config.toml and checked with aios-runtime\'s own schema (docs/runtime.md#strategic-layer). Never a key: key_file names a systemd credential, which the image imports from /etc/credstore/<name> (docs/strategic.md)'),
});

export type RecipeInput = z.input<typeof RecipeSchema>;
export type Recipe = z.output<typeof RecipeSchema>;

/** The recipe after loading: validated, with the file it came from and derived values. */
export interface ResolvedRecipe extends Recipe {
  /** Where it came from (the chain of files, child first). */
  sources: string[];
  name: string;
  base: Recipe['base'] & { suite: string; mirror: string };
}
