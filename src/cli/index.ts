/** The CLI: creates the program, registers each command group (one module per group), maps errors to exit codes. No build logic lives here. */
import { Command } from 'commander';
import { UserError } from '../util/errors.js';
import { CommandError } from '../util/exec.js';
import { cleanupAll } from '../util/cleanup.js';
import { registerDocs, registerSummary } from './summary.js';
import { registerBuild } from './build.js';
import { registerModels } from './models.js';
import { registerKernel } from './kernel.js';
import { registerRuntime } from './runtime.js';
import { registerTop } from './top.js';
import { registerQemu } from './qemu.js';
import { registerFlash } from './flash.js';
import { registerBench } from './bench.js';
import { registerDoctor } from './doctor.js';
import { registerFleet } from './fleet.js';

export function program(): Command {
  const p = new Command('aios')
    .description('Turn one TOML recipe into a bootable, inference-tuned Linux image')
    .version('0.1.0')
    .showHelpAfterError('(run with --help for usage)');
  // Registration order is the order `aios --help` lists the commands in.
  registerSummary(p);
  registerBuild(p);
  registerModels(p);
  registerKernel(p);
  registerRuntime(p);
  registerTop(p);
  registerQemu(p);
  registerFlash(p);
  registerDoctor(p);
  registerBench(p);
  registerFleet(p);
  registerDocs(p);
  return p;
}

/**
 * A reader that stops early (`aios runtime infer … | head`) closes stdout; the next write fails with
 * EPIPE. Like other Unix tools, end quietly with exit 0 (after removing temporary files) instead
 * of dying on an unhandled 'error' event with a stack trace.
 */
function endQuietlyOnClosedStdout(): void {
  let ending = false;
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (ending) return;
    ending = true;
    if (e.code !== 'EPIPE') process.stderr.write(`aios: stdout: ${e.message}\n`);
    void cleanupAll().finally(() => process.exit(e.code === 'EPIPE' ? 0 : 1));
  });
}

export async function main(argv: string[]): Promise<number> {
  endQuietlyOnClosedStdout();
  try {
    await program().parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (e) {
    await cleanupAll();
    if (e instanceof UserError) {
      process.stderr.write(`aios: ${e.message}\n${e.hint ? `hint: ${e.hint}\n` : ''}`);
      return e.exitCode;
    }
    if (e instanceof CommandError) {
      process.stderr.write(`aios: ${e.message}\n`);
      return 1;
    }
    process.stderr.write(`aios: ${(e as Error)?.stack ?? String(e)}\n`);
    return 1;
  }
}
