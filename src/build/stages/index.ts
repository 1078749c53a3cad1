import type { Pki } from '../../pki/index.js';
import type { UpdateSigner } from '../update.js';
/**
 * The build as a flat list of named stages, one file each in this directory (each file's header is
 * its documentation). Each stage: check (host tools, before anything runs), key (hash of its
 * inputs: an unchanged stage is reused from the cache), run (into a fresh dir, renamed when
 * complete). A stage declares the earlier stages whose outputs it reads (`needs`, and `uses` for
 * outputs it reads only when that stage is part of the build) and gets them through a typed
 * accessor, never by reaching into the context.
 */
import type { ResolvedRecipe } from '../../config/schema.js';
import type { Distro } from '../../distros/types.js';
import type { StageCache } from '../cache.js';
import type { Identity } from '../context.js';
import type { CheckResult } from '../../kernel/check.js';
import { rootfsStage } from './rootfs.js';
import { llamaStage } from './llama.js';
import { modelsStage } from './models.js';
import { kernelStage } from './kernel.js';
import { overlayStage } from './overlay.js';
import { imageStage } from './image.js';
import { squashfsStage } from './squashfs.js';
import { isoStage } from './iso.js';

export type StageName = 'rootfs' | 'llama' | 'models' | 'kernel' | 'overlay' | 'image' | 'squashfs' | 'iso';

/** A finished stage: its output dir (in the cache) and cache key. */
export interface StageOutput {
  dir: string;
  key: string;
  cached: boolean;
  seconds: number;
}

export interface BuildContext {
  recipe: ResolvedRecipe;
  distro: Distro;
  id: Identity;
  cache: StageCache;
  cacheDir: string;
  /** Build log (every command and its output). */
  log: string;
  asRoot: boolean;
  /** Outputs of stages that ran or were reused, by stage name. Stages read them through `StageIO`. */
  outputs: Record<string, StageOutput>;
  warnings: string[];
  /** Kernel wishes checked against the image's own kernel config (after the rootfs stage). */
  kernelWishes?: CheckResult;
  /** Progress line for the current stage. */
  progress: (line: string) => void;
  /** The image's certificates and keys (runtime.tls): made or reused in runtime.pki before the stages run. */
  pki?: Pki;
  /** image.layout = "appliance" with a signing key (env or --signing-key): signs out/update/SHA256SUMS; its public key goes into the image. */
  updateSigner?: UpdateSigner;
}

/** What a stage may read of earlier stages: exactly the ones it declared. */
export interface StageIO<N extends StageName = StageName, U extends StageName = never> {
  /** The output of a stage in `needs` (it always runs before this one). */
  need(name: N): StageOutput;
  /** The output of a stage in `uses`, or undefined when that stage is not part of this build. */
  use(name: U): StageOutput | undefined;
}

export interface Stage {
  name: StageName;
  title: string;
  /** Earlier stages whose outputs this one reads (and whose keys are part of its key). */
  needs: readonly StageName[];
  /** Earlier stages whose outputs this one reads when they are part of the build. */
  uses: readonly StageName[];
  /** Problems that make this stage impossible on this host (missing tools, …). */
  check(ctx: BuildContext): Promise<string[]>;
  /** The stage's inputs; their hash is the cache key. */
  inputs(ctx: BuildContext): Promise<unknown>;
  run(ctx: BuildContext, dir: string): Promise<void>;
  /** Set for the stages of one output only (`image.formats`); unset: every build needs it. */
  output?: 'disk' | 'iso';
  /** Whether a recipe needs this stage at all; unset: always. */
  enabled?(r: ResolvedRecipe): boolean;
}

/** Every stage, in order. A build runs the ones its outputs need (`stagesFor`). */
export const STAGES: Stage[] = [rootfsStage, llamaStage, modelsStage, kernelStage, overlayStage, imageStage, squashfsStage, isoStage];

/**
 * The stages that build these outputs: the shared ones, then each output's own. Stages only some
 * recipes need (the kernel stage: kernel.build = true) are included when the recipe asks for them.
 */
export function stagesFor(formats: readonly ('disk' | 'iso')[], recipe?: ResolvedRecipe): Stage[] {
  return STAGES.filter((s) => (!s.output || formats.includes(s.output)) && (!s.enabled || (recipe !== undefined && s.enabled(recipe))));
}

export { kernelWishes } from './common.js';
export { rootfsStage, llamaStage, modelsStage, kernelStage, overlayStage, imageStage, squashfsStage, isoStage };
export { versionLine, type InstalledModel } from './models.js';
export type { KernelBuildInfo } from './kernel.js';
