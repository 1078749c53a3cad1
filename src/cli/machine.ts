/**
 * The `aios` command the image ships (`/usr/bin/aios`, bundled by src/build/cli-bundle.ts like the
 * runtime): only the verbs that make sense on a running aios machine — `ps`, `top`, `runtime …`
 * (status, load, unload, infer, pull, keys; the daemon is its own bundle) and `bench` (the image's own entry point,
 * /usr/libexec/aios/bench). Build-host verbs (build, flash, qemu, kernel, models, doctor for a build
 * host) are not in it. It imports nothing from the build side.
 */
import { Command } from 'commander';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { UserError } from '../util/errors.js';
import { registerRuntime } from './runtime.js';
import { registerTop } from './top.js';

export const IMAGE_BENCH = '/usr/libexec/aios/bench';

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
