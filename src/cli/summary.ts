/** `aios summary`, `aios recipes` and `aios docs`: what a recipe resolves to, which recipes exist, the recipe reference. */
import type { Command } from 'commander';
import { readdir } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { stringify as tomlStringify } from 'smol-toml';
import { loadRecipe } from '../config/load.js';
import { recipeReference } from '../config/docs.js';
import { summarize } from '../build/summary.js';
import { paths } from '../util/paths.js';
import { out, recipeOptions } from './common.js';

/** `aios summary` and `aios recipes`. */
export function registerSummary(p: Command): void {
  recipeOptions(
    p
      .command('summary')
      .description('print the fully resolved recipe (defaults, extends and --set applied)')
      .option('--json', 'print JSON instead of TOML'),
  ).action(async (o: { recipe: string; set: string[]; json?: boolean }) => {
    const r = await loadRecipe(o.recipe, { sets: o.set });
    const derived = await summarize(r);
    if (o.json) out(JSON.stringify({ ...r, derived }, null, 2));
    else {
      const { sources, ...rest } = r;
      out(`# recipe ${r.name}: ${sources.join(' <- ')}\n` + tomlStringify(JSON.parse(JSON.stringify({ ...rest, derived }))));
    }
  });

  p.command('recipes')
    .description('list the recipes in images/')
    .option('--json', 'print JSON')
    .action(async (o: { json?: boolean }) => {
      const names = (await readdir(paths.images)).filter((f) => f.endsWith('.toml')).map((f) => basename(f, '.toml'));
      const rows = [];
      for (const n of names) {
        const r = await loadRecipe(join(paths.images, `${n}.toml`)).catch((e: Error) => ({ description: `INVALID: ${e.message.split('\n')[0]}` }));
        rows.push({ name: n, description: r.description });
      }
      if (o.json) out(JSON.stringify(rows, null, 2));
      else for (const r of rows) out(`${r.name.padEnd(20)} ${r.description}`);
    });
}

/** `aios docs recipe`: the recipe reference (docs/recipe.md), generated from the schema. */
export function registerDocs(p: Command): void {
  const d = p.command('docs').description('generate documentation');
  d.command('recipe')
    .description('print the recipe reference (Markdown), generated from the schema')
    .action(() => {
      out(recipeReference());
    });
}
