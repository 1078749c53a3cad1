/**
 * `aios bench --image <raw>`: boots the image in QEMU with `aios.bench=1` on the kernel command line,
 * so that its aios-bench.service runs the image's own entry point (/usr/libexec/aios/bench) once the
 * boot has settled, with aios-runtime masked for the run; reads the AIOS-BENCH lines from the serial
 * console and makes the same BenchResult as a host run. `benchFromLog()` does the same with the
 * entry point's output saved on a machine that runs the image.
 *
 * Under TCG (no usable KVM) the figures are those of an emulated CPU: they show that the benchmark
 * runs in the image, nothing about its performance, and the result says so everywhere. With KVM it
 * is a measurement of the image's kernel and user space in a virtual machine on this host.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { basename, resolve } from 'node:path';
import type { ManifestModel } from '../build/manifest.js';
import { isIso, kvmWorks, manifestFor, type ImageManifest } from '../qemu/index.js';
import { watchedBoot } from '../qemu/boot.js';
import { run, which } from '../util/exec.js';
import { UserError } from '../util/errors.js';
import { defaultCacheDir } from '../util/paths.js';
import { GPT_TYPES } from '../util/gpt.js';
import { BENCH_PORT, ENTRY_POINT, findModelOnHost, guestDone, guestProblem, guestProgress, guestResult, parseGuestBench } from './guest.js';
import type { BenchResult } from './index.js';

export interface ImageBenchOptions {
  /** A model of the image: its name in the recipe or its file under /var/lib/aios/models (default: the operational model, else the first). */
  model?: string;
  /** A copy of that GGUF on this host, for the bytes read per token (default: found in the build cache by sha256). */
  gguf?: string;
  reps?: number;
  threads?: number;
  pp?: number;
  tg?: number;
  /** Seconds for the whole boot and benchmark (default 1800). */
  timeout?: number;
  accel?: 'kvm' | 'tcg';
  cpu?: string;
  /** vCPUs (default: 2 under TCG, this host's logical CPUs with KVM). */
  cpus?: number;
  /** Guest memory in MiB (default: 2048 under TCG; with KVM half this host's memory, 2048 to 16384). */
  memory?: number;
  serialLog?: string;
  cacheDir?: string;
  progress?: (s: string) => void;
}

/** A whole-number option, or a usage error naming it (exit 2). */
export const int = (name: string, v: number | undefined, dflt: number, min: number, hint: string): number => {
  const x = v ?? dflt;
  if (!Number.isInteger(x) || x < min) throw new UserError(`${name} must be an integer ≥ ${min}, got ${String(v)}`, 2, hint);
  return x;
};

/** The guest's vCPUs and memory (MiB): as given, else 2 and 2048 under TCG, this host's logical CPUs and half its memory (2048 to 16384) with KVM. */
export function guestSize(accel: 'kvm' | 'tcg', o: { cpus?: number; memory?: number }): { vcpus: number; memory: number } {
  return {
    vcpus: int('--cpus', o.cpus, accel === 'kvm' ? cpus().length : 2, 1, 'e.g. --cpus 4'),
    memory: int('--memory', o.memory, accel === 'kvm' ? Math.min(16384, Math.max(2048, Math.floor(totalmem() / 2 ** 21))) : 2048, 512, 'MiB, e.g. --memory 4096'),
  };
}

/** The model to benchmark among the manifest's: by name or file, else the operational one, else the first. */
export function pickModel(models: ManifestModel[], want?: string): ManifestModel {
  if (!models.length) throw new UserError('the image has no model (/var/lib/aios/models is empty)', 2, 'add a [[models]] entry to the recipe and rebuild the image');
  if (want) {
    const m = models.find((x) => x.name === want || x.file === want || x.file === `${want}.gguf`);
    if (!m) throw new UserError(`the image has no model "${want}"`, 2, `its models: ${models.map((x) => `${x.name} (${x.file})`).join(', ')}`);
    return m;
  }
  return models.find((x) => x.level === 'operational') ?? models[0]!;
}

/** The kernel command line that makes the image benchmark itself and power off. */
export function benchCmdline(o: { reps: number; pp: number; tg: number; threads?: number; model?: string }): string {
  if (o.model !== undefined && !/^[A-Za-z0-9._+-]+$/.test(o.model)) throw new UserError(`model file name "${o.model}" cannot go on the kernel command line`, 2, 'only letters, digits and . _ + - in its name');
  return [
    'aios.bench=1',
    `aios.bench.reps=${o.reps}`,
    `aios.bench.pp=${o.pp}`,
    `aios.bench.tg=${o.tg}`,
    ...(o.threads ? [`aios.bench.threads=${o.threads}`] : []),
    ...(o.model ? [`aios.bench.model=${o.model}`] : []),
    // Nothing else of the image's own work runs beside the benchmark (its llama-server would hold
    // memory and answer health checks); the result records it as inactive.
    'systemd.mask=aios-runtime.service',
  ].join(' ');
}

/**
 * Which of these paths exist in a disk image's ext4 root (debugfs reads the partition in place);
 * undefined when that cannot be read (an ISO, an XFS root, no debugfs), and the boot will tell.
 */
export async function rootHas(image: string, paths: string[]): Promise<Record<string, boolean> | undefined> {
  if ((await isIso(image)) || !(await which('debugfs')) || !(await which('sfdisk'))) return undefined;
  const pt = await run(['sfdisk', '-J', image], { reject: false });
  if (pt.exitCode !== 0) return undefined;
  const parts = (JSON.parse(pt.stdout) as { partitiontable?: { partitions?: { start: number; type: string }[]; sectorsize?: number } }).partitiontable;
  const root = parts?.partitions?.find((p) => p.type.toUpperCase() === GPT_TYPES.rootX86_64.toUpperCase());
  if (!root) return undefined;
  const dev = `${image}?offset=${root.start * (parts?.sectorsize ?? 512)}`;
  const probe = await run(['debugfs', '-R', 'stat /', dev], { reject: false });
  if (probe.exitCode !== 0 || !/Inode: 2\b/.test(probe.all)) return undefined; // not ext4
  const out: Record<string, boolean> = {};
  for (const p of paths) out[p] = /Inode: \d+/.test((await run(['debugfs', '-R', `stat ${p}`, dev], { reject: false })).all);
  return out;
}

export async function benchImage(imageArg: string, o: ImageBenchOptions = {}): Promise<BenchResult> {
  const image = resolve(imageArg);
  if (!existsSync(image)) throw new UserError(`no such image: ${imageArg}`, 2, 'build one with `aios build image` (out/<name>.raw), or give the path of a .raw or .iso');
  const reps = int('--reps', o.reps, 10, 2, 'a spread needs at least 2 repetitions; 10 or more for a useful confidence interval');
  const pp = int('--pp', o.pp, 512, 0, 'prompt tokens, e.g. --pp 512 (0 skips the prompt test)');
  const tg = int('--tg', o.tg, 128, 0, 'generated tokens, e.g. --tg 128 (0 skips the generation test)');
  if (pp === 0 && tg === 0) throw new UserError('--pp 0 and --tg 0 leave nothing to measure', 2);
  const threads = o.threads === undefined ? undefined : int('--threads', o.threads, 1, 1, 'e.g. --threads 2 (default: the guest\'s physical cores)');
  const timeout = int('--timeout', o.timeout, 1800, 10, 'seconds for the boot and the benchmark together, e.g. --timeout 1800');
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  const say = (s: string) => o.progress?.(s);

  const manifest: ImageManifest | undefined = await manifestFor(image);
  let model: ManifestModel | undefined;
  if (manifest) {
    if (manifest.llama === null) throw new UserError(`${imageArg} was built without llama.cpp (llama.enabled = false): it has no llama-bench to run`, 2, 'build an image with llama.enabled = true (the default)');
    const targets = (manifest.llama as { targets?: string[] } | undefined)?.targets;
    if (targets && !targets.includes('llama-bench')) throw new UserError(`${imageArg} has no llama-bench: its llama.targets are ${targets.join(', ')}`, 2, 'add "llama-bench" to llama.targets (the default has it) and rebuild');
    if (manifest.models) model = pickModel(manifest.models, o.model);
  } else say(`no manifest beside ${imageArg}: its model, CPU features and build are not known before it boots`);
  const modelInGuest = model?.file ?? o.model;

  // What the boot needs, checked in the image's root before booting where it can be read (ext4).
  const has = await rootHas(image, ['/usr/bin/llama-bench', ENTRY_POINT, '/usr/libexec/aios/triad', ...(modelInGuest ? [`/var/lib/aios/models/${modelInGuest}`] : [])]);
  if (has) {
    if (!has['/usr/bin/llama-bench']) throw new UserError(`${imageArg} has no /usr/bin/llama-bench`, 2, 'add "llama-bench" to llama.targets (the default has it) and rebuild the image');
    if (!has[ENTRY_POINT] || !has['/usr/libexec/aios/triad']) throw new UserError(`${imageArg} has no bench entry point (${ENTRY_POINT}): it was built by an aios from before it existed`, 2, 'rebuild the image (aios build image): only the overlay and image stages run again');
    if (modelInGuest && !has[`/var/lib/aios/models/${modelInGuest}`]) throw new UserError(`${imageArg} has no /var/lib/aios/models/${modelInGuest}`, 2, 'the manifest and the image disagree: rebuild the image');
  }

  const accel = o.accel ?? ((await kvmWorks()) ? 'kvm' : 'tcg');
  const { vcpus, memory } = guestSize(accel, o);
  if (model && model.bytes / 2 ** 20 + 768 > memory) throw new UserError(`--memory ${memory} MiB is too little for the ${Math.round(model.bytes / 2 ** 20)} MiB model ${model.file} and the system`, 2, `give at least --memory ${Math.ceil(model.bytes / 2 ** 20 + 1024)}`);
  if (accel === 'tcg') say('NO KVM: the image runs under QEMU\'s TCG emulation; its figures will be meaningless for performance (a functional check of the benchmark only)');
  const cmdlineExtra = benchCmdline({ reps, pp, tg, threads, model: modelInGuest });
  const serialLog = resolve(o.serialLog ?? `${image}.bench.serial.log`);
  // The entry point writes its lines to a virtio-serial port as well (an image with the port code):
  // the console shares them with kernel messages and the getty, which can break a line.
  const portLog = serialLog.endsWith('.serial.log') ? `${serialLog.slice(0, -'.serial.log'.length)}.port.log` : `${serialLog}.port`;
  const when = new Date().toISOString();
  say(`booting ${basename(image)} with ${accel.toUpperCase()}, ${vcpus} vCPUs, ${memory} MiB (timeout ${timeout} s); serial log ${serialLog}`);

  let seen = 0;
  const t0 = Date.now();
  let loginSince: number | undefined;
  const isa = manifest?.llama?.isa;
  const boot = await watchedBoot(image, {
    accel,
    cpu: o.cpu,
    cpus: vcpus,
    memory: String(memory),
    cmdlineExtra,
    serialLog,
    dataPort: { name: BENCH_PORT, file: portLog },
    timeout,
    requiredFlags: isa?.flags,
    isaText: isa?.description,
    done: (log, data) => guestDone(log) || guestDone(data),
    onProgress: say,
    onLog: (log) => {
      const p = guestProgress(log);
      const at = `${Math.round((Date.now() - t0) / 1000)} s`;
      for (const line of p.slice(seen)) say(`guest (${at}): ${line}`);
      seen = p.length;
    },
    // A guest at its login prompt that never starts the entry point: an image without aios-bench.service.
    stall: (log, s) => {
      if (log.includes('AIOS-BENCH-BEGIN')) return undefined;
      if (/\S+ login: |root@\S+:\S*# /.test(log)) loginSince ??= s;
      const limit = accel === 'tcg' ? 240 : 60;
      return loginSince !== undefined && s - loginSince > limit ? `the guest reached its login prompt ${limit} s ago and aios-bench.service never started: the image has no bench entry point (rebuild it with this aios)` : undefined;
    },
  });
  const fromPort = parseGuestBench(boot.data);
  const channel = fromPort.begin && (fromPort.end || fromPort.error) ? 'port' : 'console';
  const g = channel === 'port' ? fromPort : parseGuestBench(boot.log);
  if (!boot.done) {
    const why = boot.panic
      ? `the guest kernel panicked: ${boot.panic}${boot.retried ? ` (${boot.retried})` : ''}`
      : boot.stalled ?? (boot.timedOut ? `timed out after ${timeout} s${g.begin ? ` while the benchmark ran (last: ${g.progress.at(-1) ?? 'no progress line'})` : ' before the benchmark started'}` : `QEMU exited (code ${boot.exitCode}) before the benchmark finished${boot.qemuOutput ? `: ${boot.qemuOutput.slice(-400)}` : ''}`);
    throw new UserError(`aios bench --image: ${why} (see ${serialLog})`, 1, boot.timedOut ? 'give it more time with --timeout, or fewer --reps / smaller --pp and --tg' : undefined);
  }
  const problem = guestProblem(g);
  if (problem) throw new UserError(`${problem} (see ${serialLog})`, 1);

  let hostModel = o.gguf ? resolve(o.gguf) : undefined;
  if (hostModel && !existsSync(hostModel)) throw new UserError(`--gguf ${o.gguf}: no such file`, 2);
  if (!hostModel && model) hostModel = await findModelOnHost(cacheDir, model);
  const info = model?.info as { architecture?: string; name?: string; fileType?: string; parameters?: number } | undefined;
  return guestResult(g, {
    when,
    hostModel,
    modelInfo: info ? { architecture: info.architecture, name: info.name ?? model?.name, fileType: info.fileType, parameters: info.parameters } : undefined,
    image: {
      via: 'qemu',
      entry: ENTRY_POINT,
      file: image,
      name: manifest?.name,
      sha256: manifest?.image?.sha256,
      accel: boot.accel,
      cpu: boot.cpu,
      cpus: vcpus,
      memoryMiB: memory,
      cmdlineExtra,
      hostSeconds: Math.round(boot.hostSeconds * 10) / 10,
      ...(boot.retried ? { retried: boot.retried } : {}),
      serialLog,
      channel,
      ...(channel === 'port' ? { portLog } : {}),
    },
  });
}

/** The result of the entry point's output saved on a machine running the image (`/usr/libexec/aios/bench > run.log`). */
export async function benchFromLog(file: string, o: { gguf?: string } = {}): Promise<BenchResult> {
  const text = await readFile(file, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new UserError(`--from-log ${file}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`, 2, `save the output of ${ENTRY_POINT} on the machine (e.g. ssh root@host ${ENTRY_POINT} > run.log)`);
  });
  const g = parseGuestBench(text);
  if (!g.begin && !g.error) throw new UserError(`${file} has no AIOS-BENCH lines`, 2, `give the saved stdout of ${ENTRY_POINT}`);
  const hostModel = o.gguf ? resolve(o.gguf) : undefined;
  if (hostModel && !existsSync(hostModel)) throw new UserError(`--gguf ${o.gguf}: no such file`, 2);
  return guestResult(g, { hostModel, image: { via: 'log', entry: g.begin?.entry ?? ENTRY_POINT, log: resolve(file) } });
}
