/** `aios qemu-test` (automated UEFI boot check) and `aios qemu` (interactive serial console). */
import { Option, type Command } from 'commander';
import ora from 'ora';
import { qemuTest, qemuInteractive, type BootCheck, type Media } from '../qemu/index.js';
import { formatSize } from '../util/size.js';
import { out } from './common.js';
import { liveSummary } from '../kernel/live.js';
import { UserError } from '../util/errors.js';

export function registerQemu(p: Command): void {
  p.command('qemu-test')
    .description('boot an image in QEMU (UEFI) and check it reaches multi-user with no failed units')
    .argument('<image>', 'disk image (.raw) or live ISO (.iso)')
    .addOption(new Option('--as <media>', 'attach it as a virtio disk, a CD-ROM or a USB stick (default: cdrom for an ISO, else disk)').choices(['disk', 'cdrom', 'usb']))
    .option('--timeout <seconds>', 'give up after this long', (v) => Number(v), 300)
    .option('--memory <MiB>', 'guest memory', '2048')
    .option('--cpus <n>', 'guest CPUs', (v) => Number(v), 2)
    .addOption(new Option('--accel <accel>', 'force an accelerator (default: KVM if a probe guest runs, else TCG)').choices(['kvm', 'tcg']))
    .option('--cpu <model>', 'QEMU CPU model (default: host with KVM, max with TCG)')
    .option('--serial-log <file>', 'where to keep the serial log (default: <image>.serial.log)')
    .option('--tls-dir <dir>', 'client certificates for the runtime\'s mutual TLS (default: $AIOS_TLS_DIR, else the image\'s pki dir, out/<name>.pki)')
    .option('--oom-check', "also load a second model with a cgroup memory limit far below its needs: the kernel must kill it in its cgroup, the runtime report it out of memory, and the operational model answer meanwhile (docs/sandbox.md)")
    .option('--credential <name=file>', 'a systemd credential for the guest, read from a file on this host and passed through QEMU\'s fw_cfg (repeatable), e.g. network.wireguard.aios=worker.key (docs/fleets.md)', (v: string, acc: string[]) => [...acc, v], [] as string[])
    .option('--json', 'print the result as JSON')
    .action(async (image: string, o: { as?: Media; timeout: number; memory: string; cpus: number; accel?: 'kvm' | 'tcg'; cpu?: string; serialLog?: string; tlsDir?: string; oomCheck?: boolean; credential: string[]; json?: boolean }) => {
      const credentials = o.credential.map((c) => {
        const eq = c.indexOf('=');
        if (eq <= 0 || eq === c.length - 1) throw new UserError(`--credential ${c}: expected NAME=FILE`, 2, 'e.g. --credential network.wireguard.aios=worker.key');
        return { name: c.slice(0, eq), file: c.slice(eq + 1) };
      });
      const spinner = o.json || !process.stderr.isTTY ? undefined : ora({ text: `booting ${image}`, stream: process.stderr }).start();
      const t0 = Date.now();
      const tick = spinner ? setInterval(() => (spinner.text = `booting ${image} (${((Date.now() - t0) / 1000).toFixed(0)} s)`), 1000) : undefined;
      const res = await qemuTest(image, {
        media: o.as,
        timeout: o.timeout,
        memory: o.memory,
        cpus: o.cpus,
        accel: o.accel,
        cpu: o.cpu,
        serialLog: o.serialLog,
        tlsDir: o.tlsDir,
        credentials,
        oomCheck: o.oomCheck,
        onProgress: (l) => {
          if (spinner) spinner.text = l;
          else if (!o.json) process.stderr.write(`${l}\n`);
        },
      }).finally(() => clearInterval(tick));
      if (o.json) out(JSON.stringify(res, null, 2));
      else {
        if (res.ok) spinner?.succeed(`boot check passed (${res.accel})`);
        else spinner?.fail(`boot check failed: ${res.reason}`);
        const g = res.guest;
        out(`${res.ok ? 'PASS' : 'FAIL'}: ${res.image} (${res.media}, ${res.accel})${res.reason ? `: ${res.reason}` : ''}`);
        if (res.retried) out(`retried:     ${res.retried}`);
        if (g.kernel) out(`kernel:      ${g.kernel}`);
        if (g.timing) out(`guest:       ${g.timing}`);
        if (g.multiUser !== undefined) out(`multi-user:  ${g.multiUser.toFixed(1)} s after kernel start`);
        out(`host:        ${res.hostSeconds.toFixed(1)} s from QEMU start to power-off`);
        if (g.state) out(`state:       ${g.state}; failed units: ${g.failedUnits.length ? g.failedUnits.join(', ') : 'none'}`);
        if (g.thp) out(`THP:         ${g.thp}`);
        if (g.cpuFlags) out(`guest CPU:   ${g.cpuFlags.join(' ')}`);
        if (g.llamaVersion) out(`llama.cpp:   ${g.llamaVersion}`);
        for (const mm of g.models) out(`model:       ${mm.file} (${mm.magic} v${mm.version}, ${formatSize(mm.bytes)}, sha256 ${mm.sha256.slice(0, 16)}…)`);
        if (g.swap !== undefined) out(`swap:        ${g.swap || 'none'}`);
        if (res.runtime) {
          const r = res.runtime;
          out(`aios-runtime: ${r.ok ? 'answered' : 'FAILED'} "${r.prompt}" -> "${r.text ?? ''}"${r.latencyMs !== undefined ? ` in ${r.latencyMs} ms` : ''} via ${r.address}${r.readySeconds !== undefined ? `; ready ${r.readySeconds} s after kernel start` : ''}${r.error ? ` (${r.error})` : ''}`);
          for (const line of runtimeStartupLines(g)) out(`  ${line}`);
        }
        if (res.access) {
          out(`access (mutual TLS, ${res.tlsDir}):`);
          for (const a of res.access) out(`  ${a.ok ? 'ok  ' : 'FAIL'} ${a.name.padEnd(12)} ${a.detail}`);
        }
        if (res.oom) out(`model sandbox: ${res.oom.ok ? 'ok  ' : 'FAIL'} ${res.oom.detail}`);
        if (g.rpcWorker) {
          const w = g.rpcWorker;
          out(`rpc worker:  aios-rpc-worker.service ${w.state ?? '?'} on ${w.listen ?? '?'}, ${w.listening ? 'listening' : 'NOT listening'}${w.firewall ? `; aios-rpc-firewall.service ${w.firewall}` : ''}`);
          for (const r of w.rules) out(`  firewall:  ${r}`);
          if (w.fromSelf) out(`  from the guest's own address (not a head): ${w.fromSelf}`);
          if (res.worker) out(`  ${res.worker.ok ? 'ok  ' : 'FAIL'} ${res.worker.detail}`);
        }
        if (g.gpu) {
          const gp = g.gpu;
          const unit = gp.condition === 'no' ? 'skipped (no NVIDIA GPU: models run on the CPU)' : (gp.unit ?? '?');
          out(`gpu:         nvidia module ${gp.module ?? 'MISSING for this kernel'}, ${gp.loaded ? 'loaded' : 'not loaded'}; aios-gpu.service ${unit}${gp.devices.length ? `; ${gp.devices.join('; ')}` : ''}${gp.cuda ? `; CUDA ${gp.cuda}` : ''}`);
        }
        for (const w of res.warnings) out(`warning:     ${w}`);
        if (res.kernelWishes.length) {
          out('kernel wishes, live in the guest:');
          for (const w of res.kernelWishes) out(`  ${w.live.padEnd(7)} CONFIG_${w.symbol}=${w.value}  ${w.evidence}`);
          out(`  ${liveSummary(res.kernelWishes)}`);
        }
        if (g.doctor) for (const line of doctorLines(g.doctor)) out(line);
        out(`serial log:  ${res.serialLog}`);
      }
      if (!res.ok) process.exitCode = 1;
    });

  p.command('qemu')
    .description('boot an image in QEMU with its serial console on this terminal (Ctrl-A X quits; changes are discarded)')
    .argument('<image>', 'disk image (.raw)')
    .option('--memory <MiB>', 'guest memory', '2048')
    .option('--cpus <n>', 'guest CPUs', (v) => Number(v), 2)
    .option('--persist', 'write guest changes to the image instead of discarding them')
    .action(async (image: string, o: { memory: string; cpus: number; persist?: boolean }) => {
      process.exitCode = await qemuInteractive(image, { memory: o.memory, cpus: o.cpus, snapshot: !o.persist });
    });
}

/** The image's own `aios doctor`, as the boot check reported it: the verdict, then what is not ok. */
export function doctorLines(d: NonNullable<BootCheck['guest']['doctor']>): string[] {
  const lines = [`aios doctor (in the guest): ${d.verdict ? `${d.verdict.ok ? 'ok' : 'PROBLEM'}: ${d.verdict.text}` : 'no verdict (the doctor did not finish)'}`];
  for (const f of d.findings) if (f.status !== 'ok') lines.push(`  ${f.status.padEnd(8)} ${f.title}: ${f.detail}`);
  if (d.unparsed) lines.push(`  (${d.unparsed} line(s) of its output did not parse)`);
  return lines;
}

/** Where the runtime's start-up went in the guest: systemd's moments, the daemon's own report, what it waited for. */
export function runtimeStartupLines(g: { runtimeActivatingUsec?: number; runtimeExecUsec?: number; runtimeReadyUsec?: number; runtimeStartup?: string; runtimeChain?: string[]; runtimeLog?: string[]; sandbox?: string[]; runtimeExposure?: number }): string[] {
  const s = (us?: number) => (us === undefined ? '?' : `${(us / 1e6).toFixed(1)} s`);
  const out: string[] = [];
  if (g.runtimeActivatingUsec || g.runtimeExecUsec) out.push(`unit started ${s(g.runtimeActivatingUsec)}, process ${s(g.runtimeExecUsec)}, ready ${s(g.runtimeReadyUsec)} after kernel start`);
  if (g.runtimeStartup) out.push(`daemon (ms since its process started): ${g.runtimeStartup}`);
  if (g.runtimeLog?.length) out.push('journal:', ...g.runtimeLog.map((l) => `  ${l}`));
  if (g.runtimeChain?.length) out.push('waited for:', ...g.runtimeChain.map((l) => `  ${l}`));
  if (g.sandbox?.length) out.push('model sandbox:', ...g.sandbox.map((l) => `  ${l}`));
  if (g.runtimeExposure !== undefined) out.push(`systemd-analyze security aios-runtime.service: exposure ${g.runtimeExposure}`);
  return out;
}
