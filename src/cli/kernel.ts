/** `aios kernel check|fetch-debian`: the recipe's kernel wishes against a real kernel source tree or .config. */
import type { Command } from 'commander';
import ora from 'ora';
import { loadRecipe } from '../config/load.js';
import { kernelCheck } from '../kernel/check.js';
import { loadFragments } from '../kernel/config.js';
import { debianKernel } from '../kernel/debian.js';
import { defaultCacheDir } from '../util/paths.js';
import { UserError } from '../util/errors.js';
import { out, recipeOptions } from './common.js';

export function registerKernel(p: Command): void {
  const k = p.command('kernel').description('kernel wishes (kernel-configs/*.config) against a real kernel');
  recipeOptions(
    k
      .command('check')
      .description('report, for every wish, whether the kernel honours it: against a source tree (merge_config.sh + olddefconfig) or a plain .config')
      .argument('[fragments...]', 'fragment names or paths (default: the recipe\'s kernel.fragments)')
      .option('--source <dir>', 'kernel source tree (e.g. the extracted Debian linux-source-6.12)')
      .option('--config <file>', 'a .config (plain, .gz or .xz): the stock kernel to check, or with --source the base to merge onto')
      .option('--strict', 'exit 1 if any wish is not met')
      .option('--json', 'print JSON'),
  ).action(async (frags: string[], o: { recipe: string; set: string[]; source?: string; config?: string; strict?: boolean; json?: boolean }) => {
    const names = frags.length ? frags : (await loadRecipe(o.recipe, { sets: o.set })).kernel.fragments;
    if (!names.length) throw new UserError('no fragments: name some (see kernel-configs/) or set kernel.fragments in the recipe', 2);
    const spinner = !o.json && o.source && process.stderr.isTTY ? ora({ text: 'merge_config.sh + make olddefconfig', stream: process.stderr }).start() : undefined;
    const res = await kernelCheck(await loadFragments(names), { source: o.source, config: o.config }).finally(() => spinner?.stop());
    if (o.json) out(JSON.stringify(res, null, 2));
    else {
      const rows = res.results.map((r) => [`CONFIG_${r.symbol}=${r.value}`, r.status, r.actual ?? '-', r.detail + (r.hint ? ` (${r.hint})` : ''), r.fragment]);
      const w = [0, 1, 2].map((i) => Math.max(...rows.map((row) => row[i]!.length), ['wish', 'status', 'kernel'][i]!.length));
      out(`${'wish'.padEnd(w[0]!)}  ${'status'.padEnd(w[1]!)}  ${'kernel'.padEnd(w[2]!)}  why`);
      for (const r of rows) out(`${r[0]!.padEnd(w[0]!)}  ${r[1]!.padEnd(w[1]!)}  ${r[2]!.padEnd(w[2]!)}  ${r[3]}  [${r[4]}]`);
      if (res.bootArgs.length) out(`\nat boot: ${res.bootArgs.join(' ')}`);
      out(`${res.results.length - res.unmet} of ${res.results.length} wishes met${res.mode === 'config' ? ' (counting at-boot ones)' : ''}`);
    }
    if (o.strict && res.unmet > 0) process.exitCode = 1;
  });

  k.command('fetch-debian')
    .description("download and extract Debian's linux-source and linux-config packages into the cache (a real tree to check against)")
    .option('--suite <suite>', 'Debian suite', 'trixie')
    .option('--series <x.y>', 'kernel series', '6.12')
    .option('--json', 'print JSON')
    .action(async (o: { suite: string; series: string; json?: boolean }) => {
      const spinner = !o.json && process.stderr.isTTY ? ora({ text: 'fetching', stream: process.stderr }).start() : undefined;
      const res = await debianKernel({ cacheDir: defaultCacheDir(), suite: o.suite, series: o.series, progress: (s) => spinner && (spinner.text = s) }).finally(() => spinner?.stop());
      if (o.json) out(JSON.stringify(res, null, 2));
      else out(`version: ${res.version}\nsource:  ${res.source}\nconfig:  ${res.config}\nnext:    aios kernel check --source ${res.source} --config ${res.config}`);
    });
}
