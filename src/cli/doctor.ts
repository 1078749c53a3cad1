/** `aios doctor`: what this build host lacks for a build, a boot test, a flash or a kernel build, and how to fix it. */
import { relative, resolve } from 'node:path';
import type { Command } from 'commander';
import { loadRecipe } from '../config/load.js';
import { exitCodeOf, formatReport, hostChecks, runChecks } from '../doctor/index.js';
import { wantColour } from '../doctor/format.js';
import { defaultCacheDir } from '../util/paths.js';
import { out, recipeOptions } from './common.js';

export function registerDoctor(p: Command): void {
  recipeOptions(
    p
      .command('doctor')
      .description('check this host for a build of the recipe, a boot test, flashing and a kernel build: each finding ok / warning / problem with its fix (exit 0: a build can run)')
      .option('-o, --out <dir>', 'output directory a build would use', 'out')
      .option('--cache-dir <dir>', 'stage and package cache (default: $AIOS_CACHE_DIR or ~/.cache/aios)')
      .option('--json', 'print the findings and the verdict as JSON'),
  ).action(async (o: { recipe: string; set: string[]; out: string; cacheDir?: string; json?: boolean }) => {
    const recipe = await loadRecipe(o.recipe, { sets: o.set });
    const checks = hostChecks({ recipe, cacheDir: resolve(o.cacheDir ?? defaultCacheDir()), outDir: resolve(o.out) });
    const file = recipe.sources[0]!;
    const shown = relative(process.cwd(), file).startsWith('..') ? file : relative(process.cwd(), file);
    const report = await runChecks(checks, 'host', `recipe ${recipe.name} (${shown})`);
    if (o.json) out(JSON.stringify({ target: report.target, subject: report.subject, verdict: report.verdict, findings: report.findings }, null, 2));
    else process.stdout.write(formatReport(report, { colour: wantColour(process.stdout) }));
    process.exitCode = exitCodeOf(report);
  });
}
