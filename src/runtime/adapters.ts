/**
 * LoRA adapters per request ("genome layers"). A configured layer lists its adapters
 * ([[models.<layer>.adapters]] name, file, description, scale); its llama-server child is started
 * with every usable one loaded and unapplied (`--lora … --lora-init-without-apply`), and each
 * request says which to apply through llama-server's per-request `lora: [{id, scale}]` field (ids
 * are the order of the --lora arguments; an adapter left out has scale 0). Nothing restarts.
 *
 * A request names adapters ({name, scale}) or gives a task: the task's embedding (the
 * [models.embedding] child) is compared with each adapter's description embedding (cached per
 * description text) and the best `max_adapters` with cosine similarity ≥ `min_similarity` are
 * applied. Before a child is started, each adapter file is checked the way llama.cpp's loader
 * checks it (src/llama-adapter.cpp) against the base model: one that does not fit is left out with
 * the reason, and a request that names it is refused with that reason.
 */
import { join } from 'node:path';
import { statSync } from 'node:fs';
import { Code, RuntimeError } from './errors.js';
import type { LaunchProfile } from './child.js';
import { readGguf, type GgufFile } from '../models/gguf.js';
import { adapterProblem } from '../models/lora.js';

/** One configured adapter ([[models.<layer>.adapters]]). */
export interface AdapterConfig {
  name: string;
  file: string;
  description: string;
  scale: number;
}

/** What a request asks for: an adapter by name, at its configured scale unless it gives one. */
export interface AdapterRef {
  name: string;
  scale?: number;
}

/** An adapter applied to a request: its scale, and its similarity to the task when it was selected by task. */
export interface AppliedAdapter {
  name: string;
  scale: number;
  score?: number;
}

/** An adapter as a child is launched with it (the index in the list is llama-server's id). */
export interface LaunchAdapter {
  name: string;
  path: string;
}

export { adapterProblem };

/** Cosine similarity of two vectors of one length (0 when either is all zeros). */
export function cosine(a: readonly number[], b: readonly number[]): number {
  if (a.length !== b.length) throw new Error(`cosine: vectors of length ${a.length} and ${b.length}`);
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i]! * b[i]!;
    na += a[i]! * a[i]!;
    nb += b[i]! * b[i]!;
  }
  return na && nb ? dot / Math.sqrt(na * nb) : 0;
}

/**
 * The selection rule: adapters whose description embedding has cosine similarity ≥ minSimilarity
 * with the task's, best first (ties by name), at most `max`. Pure.
 */
export function rankAdapters(task: readonly number[], described: { name: string; vector: readonly number[] }[], minSimilarity: number, max: number): { name: string; score: number }[] {
  return described
    .map((d) => ({ name: d.name, score: cosine(task, d.vector) }))
    .filter((d) => d.score >= minSimilarity)
    .sort((x, y) => y.score - x.score || (x.name < y.name ? -1 : x.name > y.name ? 1 : 0))
    .slice(0, Math.max(0, max));
}

/** The scheduler's group key of an adapter set ("" = none): the names and scales, in name order. */
export function adapterSetKey(applied: readonly AppliedAdapter[]): string {
  return [...applied]
    .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
    .map((a) => `${a.name}@${a.scale}`)
    .join(',');
}

/**
 * llama-server's per-request `lora` field for an applied set on a child launched with `launched`:
 * every loaded adapter with its scale, 0 for those not applied. Never an empty list: llama-server
 * treats an empty or absent `lora` as "the launch scales", which are 1 for every adapter even with
 * --lora-init-without-apply, and then also keeps the slot's prompt cache computed under another set.
 */
export function loraField(launched: readonly LaunchAdapter[], applied: readonly AppliedAdapter[]): { id: number; scale: number }[] {
  for (const a of applied) if (!launched.some((l) => l.name === a.name)) throw new Error(`adapter ${a.name} is not loaded`);
  return launched.map((l, id) => ({ id, scale: applied.find((a) => a.name === l.name)?.scale ?? 0 }));
}

/** A model's adapter as the lists show it (ListModels, /v1/models). */
export interface AdapterView extends AdapterConfig {
  /** Loaded (unapplied) into its running llama-server. */
  loaded: boolean;
  /** Why it was left out when the model was loaded ("" = it was not). */
  refused: string;
}

/** What the runtime needs of the rest of the service to select adapters by task. */
export interface AdapterHost {
  /** The layer's configured adapters ([] for models without any). */
  configured(model: string): AdapterConfig[] | undefined;
  /** Embeddings of texts from the [models.embedding] child (undefined = no embedding model configured). */
  embed?: (texts: string[]) => Promise<number[][]>;
  minSimilarity: number;
  maxAdapters: number;
  log?: (s: string, level?: 'debug' | 'info' | 'warn' | 'error') => void;
}

export class Adapters {
  /** Why an adapter file was left out of its child (by model, then adapter name). */
  private refused = new Map<string, Map<string, string>>();
  /** Description text → its embedding. */
  private cache = new Map<string, number[]>();
  /** Checks already made: "<adapter path>\0<base path>\0<mtimes>" → problem ("" = fits). */
  private checked = new Map<string, string>();

  constructor(private host: AdapterHost) {}

  /** Embedding cache size (for tests and the log). */
  get cachedDescriptions(): number {
    return this.cache.size;
  }

  /**
   * The profile a child is started with: its adapters that llama.cpp would load, each one that does
   * not fit left out, logged with the reason and remembered for requests that name it.
   */
  async vet(p: LaunchProfile): Promise<LaunchProfile> {
    if (!p.adapters?.length) return p;
    const refused = new Map<string, string>();
    const ok: LaunchAdapter[] = [];
    let base: GgufFile | undefined;
    for (const a of p.adapters) {
      let problem: string;
      try {
        const key = `${a.path}\0${p.path}\0${statSync(a.path).mtimeMs}\0${statSync(p.path).mtimeMs}`;
        const known = this.checked.get(key);
        if (known !== undefined) problem = known;
        else {
          base ??= await readGguf(p.path);
          problem = adapterProblem(await readGguf(a.path), base) ?? '';
          this.checked.set(key, problem);
        }
      } catch (e) {
        problem = (e as Error).message.split('\n')[0]!;
      }
      if (/,/.test(a.path)) problem = 'its path contains a comma (llama-server splits --lora at commas)';
      if (problem) {
        refused.set(a.name, `${a.path}: ${problem}`);
        this.host.log?.(`${p.name}: adapter ${a.name} refused (${a.path}): ${problem}; the model is started without it`, 'warn');
      } else ok.push(a);
    }
    this.refused.set(p.name, refused);
    return { ...p, adapters: ok };
  }

  /**
   * The adapters a request applies: the ones it names (each must be configured for its model: an
   * unknown name is INVALID_ARGUMENT naming it), or with a task and no names, the selection by
   * similarity. Runs before the request waits for a slot.
   */
  async choose(model: string, refs: readonly AdapterRef[] | undefined, task: string | undefined): Promise<AppliedAdapter[]> {
    const conf = this.host.configured(model) ?? [];
    if (refs?.length) {
      const seen = new Set<string>();
      return refs.map((r, i) => {
        if (typeof r?.name !== 'string' || !r.name) throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters[${i}].name: must be a non-empty string`);
        const c = conf.find((x) => x.name === r.name);
        if (!c) throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters: unknown adapter "${r.name}" for model ${model} (${conf.length ? `configured: ${conf.map((x) => x.name).join(', ')}` : 'it has no adapters configured'})`);
        if (seen.has(r.name)) throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters: "${r.name}" is named twice`);
        seen.add(r.name);
        if (r.scale !== undefined && r.scale !== null && (typeof r.scale !== 'number' || !Number.isFinite(r.scale) || r.scale < -4 || r.scale > 4)) {
          throw new RuntimeError(Code.INVALID_ARGUMENT, `adapters[${i}].scale: must be a number from -4 to 4 (got ${JSON.stringify(r.scale)})`);
        }
        return { name: c.name, scale: r.scale ?? c.scale };
      });
    }
    if (!task) return [];
    if (!conf.length) return [];
    if (!this.host.embed) throw new RuntimeError(Code.FAILED_PRECONDITION, 'task: selecting adapters by task needs an embedding model ([models.embedding] in config.toml)');
    const need = [...new Set(conf.map((c) => c.description).filter((d) => d && !this.cache.has(d)))];
    const vectors = await this.host.embed([task, ...need]);
    need.forEach((d, i) => this.cache.set(d, vectors[i + 1]!));
    const refused = this.refused.get(model);
    const described = conf.filter((c) => c.description && !refused?.has(c.name)).map((c) => ({ name: c.name, vector: this.cache.get(c.description)! }));
    const best = rankAdapters(vectors[0]!, described, this.host.minSimilarity, this.host.maxAdapters);
    return best.map((b) => ({ name: b.name, scale: conf.find((c) => c.name === b.name)!.scale, score: b.score }));
  }

  /** The `lora` field for a request on a child launched with `p`; a refused adapter → FAILED_PRECONDITION with the reason. */
  lora(p: LaunchProfile | undefined, applied: readonly AppliedAdapter[]): { id: number; scale: number }[] | undefined {
    if (!p?.adapters?.length) {
      if (applied.length) throw new RuntimeError(Code.FAILED_PRECONDITION, `adapters: ${p?.name ?? 'the model'} was started without adapters (${this.reason(p?.name ?? '', applied[0]!.name) ?? 'restart it with `aios runtime reload` after adding them'})`);
      return undefined;
    }
    for (const a of applied) {
      if (!p.adapters.some((l) => l.name === a.name)) {
        throw new RuntimeError(Code.FAILED_PRECONDITION, `adapters: "${a.name}" was refused when ${p.name} was loaded: ${this.reason(p.name, a.name) ?? 'it was added after the model was started; run `aios runtime reload`'}`);
      }
    }
    return loraField(p.adapters, applied);
  }

  /** The model's configured adapters, each marked loaded (in `launched`: the running child's list) or refused with the reason. */
  describe(model: string, launched: readonly LaunchAdapter[] | undefined): AdapterView[] {
    return (this.host.configured(model) ?? []).map((c) => ({ ...c, loaded: !!launched?.some((l) => l.name === c.name), refused: this.reason(model, c.name) ?? '' }));
  }

  private reason(model: string, name: string): string | undefined {
    return this.refused.get(model)?.get(name);
  }
}

/** The launch list of a layer's configured adapters (files in model_dir). */
export function launchAdapters(modelDir: string, conf: readonly AdapterConfig[] | undefined): LaunchAdapter[] | undefined {
  return conf?.length ? conf.map((a) => ({ name: a.name, path: join(modelDir, a.file) })) : undefined;
}
