/**
 * A watched boot: the image booted in QEMU as `qemuTest()` boots it (OVMF, `qemuArgs()`, a snapshot
 * so the image is never changed, the CPU model its binaries need, extra kernel command line through
 * SMBIOS, the TCG kernel-panic retry), its serial log read as it grows until the guest says it is
 * done. `aios bench --image` uses it; the boot check keeps its own loop (it also talks to the
 * runtime while the guest holds).
 */
import { copyFile, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { registerTemp, safeRemove } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { cpuFor, findOvmf, isIso, kernelPanic, kvmWorks, qemuArgs, TCG_PANIC_BOOTS, type Media, type QemuOptions } from './index.js';

export interface WatchedBootOptions extends Omit<QemuOptions, 'serial' | 'cmdlineExtra' | 'snapshot'> {
  /** Kernel command line added for this boot (SMBIOS type 11, read by systemd-boot). */
  cmdlineExtra: string;
  /** The serial log (written from the start of each boot). */
  serialLog: string;
  /**
   * A virtio-serial data port for the guest's machine-readable output (see QemuOptions.dataPort);
   * its file is emptied at the start of each boot and read like the serial log.
   */
  dataPort?: { name: string; file: string };
  /** Seconds before QEMU is ended. */
  timeout: number;
  /** CPU flags the image's binaries need (from its manifest), for the CPU model. */
  requiredFlags?: string[];
  isaText?: string;
  /** True once the serial log (or the data port's output) shows that the guest has finished what it was booted for. */
  done: (log: string, data: string) => boolean;
  /** Called with the serial log after each read (about once a second). */
  onLog?: (log: string) => void;
  /**
   * A reason to give up before the timeout (the guest will never get done), or undefined; called
   * with the log and the seconds since QEMU started.
   */
  stall?: (log: string, seconds: number) => string | undefined;
  onProgress?: (line: string) => void;
  /** Seconds to wait for the guest to power off by itself once done (default 60); QEMU is ended after that. */
  powerOffGrace?: number;
  /** Panics of the boots before this one (internal to the retry). */
  afterPanic?: string[];
}

export interface WatchedBoot {
  log: string;
  /** What the guest wrote to the data port ('' without one, or when the guest never opened it). */
  data: string;
  accel: 'kvm' | 'tcg';
  cpu: string;
  media: Media;
  /** The guest got done (`done(log)` held). */
  done: boolean;
  timedOut: boolean;
  /** Why the wait was given up early (from `stall`). */
  stalled?: string;
  /** The kernel's panic line, when the last boot panicked. */
  panic?: string;
  /** Why the image was booted more than once. */
  retried?: string;
  exitCode?: number;
  /** QEMU's own output (stderr), for errors. */
  qemuOutput: string;
  /** Seconds from QEMU start to its exit (the last boot). */
  hostSeconds: number;
}

export async function watchedBoot(image: string, o: WatchedBootOptions): Promise<WatchedBoot> {
  if (!existsSync(image)) throw new UserError(`no such image: ${image}`, 2);
  const tmp = await mkdtemp(join(tmpdir(), 'aios-qemu-'));
  const unregister = registerTemp(tmp);
  const serialLog = resolve(o.serialLog);
  try {
    const vars = join(tmp, 'OVMF_VARS.fd');
    await copyFile(findOvmf().vars, vars);
    await writeFile(serialLog, '');
    const dataFile = o.dataPort ? resolve(o.dataPort.file) : undefined;
    if (dataFile) await writeFile(dataFile, '');
    const readData = async () => (dataFile ? await readFile(dataFile, 'utf8').catch(() => '') : '');
    const accel = o.accel ?? ((await kvmWorks()) ? 'kvm' : 'tcg');
    const cpu = o.cpu ?? (await cpuFor(o.requiredFlags ?? [], accel, o.isaText));
    const media = o.media ?? ((await isIso(image)) ? 'cdrom' : 'disk');
    const { argv } = await qemuArgs(image, { ...o, accel, cpu, media, serial: serialLog, cmdlineExtra: o.cmdlineExtra, snapshot: true }, vars);
    const t0 = Date.now();
    const child = execa(argv[0]!, argv.slice(1), { reject: false, timeout: o.timeout * 1000, all: true, stdin: 'ignore' });
    let exited = false;
    void child.then(() => (exited = true));
    let log = '';
    let data = '';
    let done = false;
    let panic: string | undefined;
    let stalled: string | undefined;
    while (!exited) {
      log = await readFile(serialLog, 'utf8');
      data = await readData();
      o.onLog?.(log);
      if (o.done(log, data)) {
        done = true;
        break;
      }
      panic = kernelPanic(log);
      stalled = panic ? undefined : o.stall?.(log, (Date.now() - t0) / 1000);
      if (panic || stalled) {
        child.kill('SIGKILL'); // a panicked or stuck guest never powers off by itself
        break;
      }
      await new Promise((r) => setTimeout(r, 1000));
    }
    if (done && !exited) {
      // The guest powers off by itself (SuccessAction=poweroff); end QEMU if it does not.
      let timer: NodeJS.Timeout | undefined;
      const grace = new Promise((r) => (timer = setTimeout(r, (o.powerOffGrace ?? 60) * 1000)));
      await Promise.race([child, grace]);
      clearTimeout(timer); // a pending timer would keep the process alive after the result is out
      if (!exited) child.kill('SIGTERM');
    }
    const res = await child;
    log = await readFile(serialLog, 'utf8');
    data = await readData();
    if (!done && o.done(log, data)) done = true;
    const hostSeconds = (Date.now() - t0) / 1000;
    const panics = [...(o.afterPanic ?? []), ...(panic ? [panic] : [])];
    if (panic && accel === 'tcg' && panics.length < TCG_PANIC_BOOTS) {
      o.onProgress?.(`the guest kernel panicked under TCG (${panic}); booting again (${panics.length} of ${TCG_PANIC_BOOTS})`);
      const again = await watchedBoot(image, { ...o, accel, cpu, media, afterPanic: panics });
      return { ...again, retried: again.retried ?? `${panics.length} boot(s) before this one panicked under TCG (${panic}); the serial log is the last boot's` };
    }
    return {
      log,
      data,
      accel,
      cpu,
      media,
      done,
      timedOut: res.timedOut === true && !done,
      stalled,
      panic,
      exitCode: res.exitCode,
      qemuOutput: String(res.all ?? '').trim(),
      hostSeconds,
      ...(panics.length > 1 ? { retried: `all ${panics.length} boots panicked under TCG` } : {}),
    };
  } finally {
    unregister();
    await safeRemove(tmp);
  }
}
