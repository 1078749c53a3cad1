/** Helpers every command group uses: output, repeatable options, the recipe options. */
import type { Command } from 'commander';

/** Appends a repeated option's value (commander's reducer for `--set a --set b`). */
export const collect = (v: string, prev: string[]) => [...prev, v];

/** Writes one line (or block) to stdout, adding the final newline if missing. */
export const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : s + '\n');

/** --recipe and --set, for every command that reads a recipe. */
export function recipeOptions(cmd: Command): Command {
  return cmd
    .option('-r, --recipe <name|file>', 'recipe name in images/ or a path to a .toml file', 'default')
    .option('-s, --set <key=value>', 'override one recipe key (repeatable), e.g. --set image.size=4G', collect, [] as string[]);
}
