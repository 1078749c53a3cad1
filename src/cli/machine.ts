/**
 * The `aios` command the image ships (`/usr/bin/aios`, bundled by src/build/cli-bundle.ts like the
 * runtime): only the verbs that make sense on a running aios machine — `ps`, `top`, `doctor` (this
 * machine's checks, src/doctor/machine.ts), `runtime …`
 * (status, load, unload, infer, pull, keys; the daemon is its own bundle), `update` (appliance images:
 * src/update/) and `bench` (the image's own entry point,
 * /usr/libexec/aios/bench). Build-host verbs (build, flash, qemu, kernel, models) are not in it. It imports nothing from the build side.
 */
import { Command } from 'commander';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { hostname } from 'node:os';
import { exitCodeOf, runChecks } from '../doctor/run.js';
import { formatReport, wantColour } from '../doctor/format.js';
import { machineChecks, machineProbe, type MachineProbe } from '../doctor/machine.js';
import { UserError } from '../util/errors.js';
import { registerRuntime } from './runtime.js';
import { registerTop } from './top.js';
import { registerUpdate } from './update.js';

export const IMAGE_BENCH = '/usr/libexec/aios/bench';

/** `aios doctor` on the machine: the report, printed for people, as JSON or as JSON lines; exit 0 without problems. */
export async function machineDoctor(probe: MachineProbe, o: { json?: boolean; jsonLines?: boolean }, write = (s: string) => void process.stdout.write(s)): Promise<number> {
  const report = await runChecks(machineChecks(probe), 'machine', hostname(), 'this machine can serve models', 'this machine cannot serve models');
  if (o.jsonLines) {
    // One finding per line, then the verdict: what the boot check prints on the console for qemu-test.
    for (const f of report.findings) write(`${JSON.stringify({ finding: f })}\n`);
    write(`${JSON.stringify({ verdict: report.verdict, target: report.target, subject: report.subject })}\n`);
  } else if (o.json) write(`${JSON.stringify({ target: report.target, subject: report.subject, verdict: report.verdict, findings: report.findings }, null, 2)}\n`);
  else write(formatReport(report, { colour: wantColour(process.stdout) }));
  return exitCodeOf(report);
}

export function machineProgram(bench = IMAGE_BENCH): Command {
  const p = new Command('aios')
    .description('aios on a running aios machine: the model service (aios-runtime) and its control panel')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)');
  registerRuntime(p);
  // The daemon has its own bundle and unit in the image (aios-runtime.mjs): no `runtime serve` here,
  // so that this bundle leaves the daemon (and the cloud clients it loads) out.
  const rt = p.commands.find((c) => c.name() === 'runtime');
  const serve = rt?.commands.findIndex((c) => c.name() === 'serve') ?? -1;
  if (rt && serve >= 0) (rt.commands as Command[]).splice(serve, 1);
  registerTop(p);
  registerUpdate(p);
  p.command('doctor')
    .description('check this machine: aios-runtime up and answering, kernel wishes live, governor, THP, zram, clock, space, failed units, memory budget, model crashes (exit 0: no problem)')
    .option('-a, --address <addr>', 'runtime address', 'unix:/run/aios/runtime.sock')
    .option('--json', 'print the findings and the verdict as JSON')
    .option('--json-lines', 'one JSON object per finding, then one with the verdict')
    .action(async (o: { address: string; json?: boolean; jsonLines?: boolean }) => {
      process.exitCode = await machineDoctor(machineProbe(o.address), o);
    });
  p.command('bench')
    .description(`benchmark this machine: llama-bench and a memory-bandwidth triad (${bench}; its options: --model, --reps, --threads, --pp, --tg)`)
    .allowUnknownOption()
    .helpOption(false)
    .argument('[args...]')
    .action(async (args: string[]) => {
      if (!existsSync(bench)) throw new UserError(`${bench} is not in this image (built with llama.enabled = false?)`, 1);
      process.exitCode = await new Promise<number>((resolve, reject) => {
        const c = spawn(bench, args, { stdio: 'inherit' });
        c.on('error', reject);
        c.on('exit', (code, signal) => resolve(code ?? (signal ? 128 + 15 : 1)));
      });
    });
  return p;
}

export async function machineMain(argv: string[], bench = IMAGE_BENCH): Promise<number> {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => process.exit(e.code === 'EPIPE' ? 0 : 1));
  try {
    await machineProgram(bench).parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof UserError) {
      process.stderr.write(`aios: ${e.message}\n${e.hint ? `hint: ${e.hint}\n` : ''}`);
      return e.exitCode;
    }
    process.stderr.write(`aios: ${(e as Error)?.stack ?? String(e)}\n`);
    return 1;
  }
}
