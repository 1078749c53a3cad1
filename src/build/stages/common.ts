/** Helpers shared by the stages: declaring one, host tool checks, the kernel wishes, template context. */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { ResolvedRecipe } from '../../config/schema.js';
import { kernelCheck, MET, type CheckResult } from '../../kernel/check.js';
import { fragmentPath, loadFragments } from '../../kernel/config.js';
import { mergeArgs, templateContext, tuningArgs } from '../context.js';
import type { RenderedFile } from '../render.js';
import { which } from '../../util/exec.js';
import type { BuildContext, Stage, StageIO, StageName, StageOutput } from './index.js';

export interface StageDef<N extends StageName, U extends StageName> {
  name: StageName;
  title: string;
  needs: readonly N[];
  uses?: readonly U[];
  check(ctx: BuildContext): Promise<string[]>;
  inputs(ctx: BuildContext, io: StageIO<N, U>): Promise<unknown>;
  run(ctx: BuildContext, dir: string, io: StageIO<N, U>): Promise<void>;
  output?: 'disk' | 'iso';
  enabled?(r: ResolvedRecipe): boolean;
}

/** The accessor a stage gets: only the stages it declared, and a clear error when one did not run. */
export function stageIO<N extends StageName, U extends StageName>(ctx: BuildContext, self: StageName, needs: readonly N[], uses: readonly U[]): StageIO<N, U> {
  return {
    need(name: N): StageOutput {
      if (!needs.includes(name)) throw new Error(`stage ${self} reads ${name}, which it does not declare in needs`);
      const o = ctx.outputs[name];
      if (!o) throw new Error(`stage ${self} needs the output of stage ${name}, which has not run in this build`);
      return o;
    },
    use(name: U): StageOutput | undefined {
      if (!uses.includes(name)) throw new Error(`stage ${self} reads ${name}, which it does not declare in uses`);
      return ctx.outputs[name];
    },
  };
}

/** A stage with declared inputs: `inputs` and `run` get an accessor for exactly those stages' outputs. */
export function defineStage<const N extends StageName, const U extends StageName = never>(def: StageDef<N, U>): Stage {
  const uses = def.uses ?? ([] as readonly U[]);
  const io = (ctx: BuildContext) => stageIO(ctx, def.name, def.needs, uses);
  return {
    name: def.name,
    title: def.title,
    needs: def.needs,
    uses,
    check: (ctx) => def.check(ctx),
    inputs: (ctx) => def.inputs(ctx, io(ctx)),
    run: (ctx, dir) => def.run(ctx, dir, io(ctx)),
    ...(def.output ? { output: def.output } : {}),
    ...(def.enabled ? { enabled: def.enabled } : {}),
  };
}

export async function missingTools(tools: Record<string, string>): Promise<string[]> {
  const out: string[] = [];
  for (const [cmd, pkg] of Object.entries(tools)) if (!(await which(cmd))) out.push(`${cmd} not found (install the Debian package ${pkg})`);
  return out;
}

export const filesDigest = (files: RenderedFile[]) => files.map((f) => ({ p: f.path, m: f.mode, c: f.content }));

/**
 * The recipe's kernel wishes against the image's kernel. Stock kernel (the rootfs's
 * /boot/config-*): which are already on, which the boot entry realises (their arguments join the
 * cmdline), which need a rebuild. Custom kernel (the kernel stage ran): the check the kernel stage
 * made on the config it compiled (every wish applied, or the build failed unless kernel.strict is off).
 */
export async function kernelWishes(ctx: BuildContext): Promise<CheckResult> {
  if (ctx.kernelWishes) return ctx.kernelWishes;
  const r = ctx.recipe;
  const custom = ctx.outputs.kernel;
  if (custom) {
    const info = JSON.parse(await readFile(join(custom.dir, 'kernel.json'), 'utf8')) as { check: CheckResult };
    const own = new Set(r.kernel.fragments.map((f) => basename(fragmentPath(f))));
    // The recipe's wishes only (compact.config's own lines were checked by the kernel stage too).
    const results = info.check.results.filter((w) => own.has(w.fragment));
    return (ctx.kernelWishes = { ...info.check, results, bootArgs: [], unmet: results.filter((w) => !MET.includes(w.status)).length });
  }
  if (!r.kernel.fragments.length) return (ctx.kernelWishes = { mode: 'config', results: [], bootArgs: [], unmet: 0 });
  const root = join(ctx.outputs.rootfs!.dir, 'root');
  const k = await ctx.distro.kernelFiles(root);
  const config = join(root, 'boot', `config-${k.version}`);
  if (!existsSync(config)) throw new Error(`kernel.fragments are set but the image's kernel has no /boot/config-${k.version} to check them against`);
  const res = await kernelCheck(await loadFragments(r.kernel.fragments), { config });
  const rebuild = res.results.filter((w) => !MET.includes(w.status));
  if (rebuild.length) {
    ctx.warnings.push(
      `kernel wishes the stock kernel ${k.version} cannot honour (they need a custom kernel, kernel.build): ` +
        rebuild.map((w) => `CONFIG_${w.symbol}=${w.value} (${w.status})`).join(', '),
    );
  }
  ctx.warnings.push(...mergeArgs(tuningArgs(r).args, res.bootArgs).conflicts);
  return (ctx.kernelWishes = res);
}

/** Template context with the boot-time kernel wishes folded into the command line. */
export async function contextWithWishes(ctx: BuildContext, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  // updateVerify: the appliance's sysupdate transfers say Verify=yes when this build signs its update artifacts (src/build/update.ts).
  return templateContext(ctx.recipe, ctx.id, { updateVerify: !!ctx.updateSigner, ...extra, wishArgs: (await kernelWishes(ctx)).bootArgs });
}
