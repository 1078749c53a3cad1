/** What `aios summary` shows besides the recipe itself: the values a build derives from it, without building. */
import type { ResolvedRecipe } from '../config/schema.js';
import { distroFor } from '../distros/index.js';
import { identity, kernelCmdline, tuningArgs } from './context.js';
import { cmakeArgs, isaFor, type Isa } from './llama.js';

export interface RecipeSummary {
  /** Packages the rootfs stage installs. */
  packages: string[];
  /** The disk image's kernel command line (without at-boot kernel wishes, which need the built kernel). */
  kernel_cmdline: string;
  /** Risky tuning choices the build warns about (e.g. mitigations=off). */
  warnings: string[];
  /** Where `aios build image` publishes the disk image. */
  output: string;
  /** The instruction set and CMake arguments of the llama.cpp build, or null when llama.enabled is false. */
  llama: { isa: Isa; cmake: string[] } | null;
}

/** The values a build of this recipe would derive (`aios summary` prints them under `derived`). */
export async function summarize(r: ResolvedRecipe): Promise<RecipeSummary> {
  return {
    packages: distroFor(r.base.distro).packages(r),
    kernel_cmdline: kernelCmdline(r, identity(r)),
    warnings: tuningArgs(r).warnings,
    output: `out/${r.name}.raw`,
    llama: r.llama.enabled ? { isa: await isaFor(r.llama.cpu), cmake: cmakeArgs(r.llama, '<src>', '<build>', r.gpu) } : null,
  };
}
