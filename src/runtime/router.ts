/**
 * The router: what a request's model name or intelligence level means, before anything is loaded.
 * A configured layer ([models.operational], [models.tactical]) by its name, file or level; a model
 * loaded by name (LoadModel); a catalog model; or "auto"/"" = the operational model. It also knows
 * each model's generation defaults and ceiling (params.ts). No I/O beyond reading the catalog.
 */
import { join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import type { RuntimeConfig } from './config.js';
import { ms } from './defaults.js';
import type { LaunchProfile } from './child.js';
import type { GenerationDefaults } from './params.js';
import { catalogAdapterFile, type CatalogEntry } from '../models/catalog.js';
import { launchAdapters, type AdapterConfig } from './adapters.js';

/** Intelligence levels a request may name; only the first two are served locally. */
export const LEVELS = ['operational', 'tactical', 'strategic'] as const;
export const LOCAL_LEVELS = ['operational', 'tactical'] as const;
export type LocalLevel = (typeof LOCAL_LEVELS)[number];

/** A model's name as clients use it: its file name without ".gguf". */
export const modelName = (file: string): string => file.replace(/\.gguf$/, '');

/** What a request resolved to before anything is loaded. */
export interface Target {
  name: string;
  /** Launch profile when the model may still need a load (a configured layer or a catalog model). */
  profile?: LaunchProfile;
  /** The catalog entry that can install the file when it is missing. */
  entry?: CatalogEntry;
  /** The configured layer it is, if any. */
  layer?: LocalLevel;
}

/** A catalog entry's LoRA adapters as a layer's config lists them (files installed beside the model: catalogAdapterFile). */
export const catalogAdapters = (e: CatalogEntry): AdapterConfig[] => e.adapters.map((a) => ({ name: a.name, file: catalogAdapterFile(e, a.name), description: a.description, scale: a.scale }));

export class Router {
  constructor(
    private config: RuntimeConfig,
    private catalog: () => CatalogEntry[],
    /** The launch profile of a model loaded by name (LoadModel), if it is loaded. */
    private loaded: (name: string) => LaunchProfile | undefined,
    /**
     * Whether gpu_layers ≠ 0 can be honoured here. false (a GPU image on a machine without an NVIDIA
     * GPU: RuntimeService found none): every local layer stays on the CPU (gpu_layers 0), so the
     * memory budget counts it in RAM; a split model's layers still go to its RPC workers.
     */
    private gpuPresent: () => boolean = () => true,
  ) {}

  /** gpu_layers as launched: the configured value, or 0 where there is no GPU for it. */
  private gpuLayers(configured: number, rpc: boolean): number {
    // Split across RPC workers: every layer goes to them unless gpu_layers says how many.
    if (rpc) return configured === 0 ? -1 : configured;
    return this.gpuPresent() ? configured : 0;
  }

  /** Launch profile of a configured layer. */
  profile(level: LocalLevel): LaunchProfile | undefined {
    const l = this.config.models[level];
    if (!l) return undefined;
    // The operational model is what the system runs on, and always_loaded pins a tactical one:
    // neither is evicted or unloaded for idleness.
    const pinned = level === 'operational' || l.always_loaded;
    return {
      name: modelName(l.name),
      path: join(this.config.models.model_dir, l.name),
      level,
      ctxSize: l.ctx_size,
      threads: l.threads,
      gpuLayers: this.gpuLayers(l.gpu_layers, l.rpc),
      parallel: l.parallel,
      mmap: l.mmap,
      pinned,
      ...(l.rpc ? { rpc: this.config.runtime.rpc_workers.map((w) => w.address) } : {}),
      idleUnloadMs: pinned ? 0 : ms(l.unload_after_idle),
      ...(l.adapters.length ? { adapters: launchAdapters(this.config.models.model_dir, l.adapters) } : {}),
    };
  }

  /** Launch profile of [models.embedding] (adapter selection by task), if configured. */
  embeddingProfile(): LaunchProfile | undefined {
    const e = this.config.models.embedding;
    if (!e) return undefined;
    return {
      name: modelName(e.name),
      path: join(this.config.models.model_dir, e.name),
      level: '',
      ctxSize: e.ctx_size,
      threads: e.threads,
      gpuLayers: 0,
      parallel: e.parallel,
      mmap: e.mmap,
      idleUnloadMs: ms(e.unload_after_idle),
      embeddings: { pooling: e.pooling },
    };
  }

  /** The configured layers, operational first. */
  configured(): { level: LocalLevel; profile: LaunchProfile }[] {
    return LOCAL_LEVELS.flatMap((level) => {
      const profile = this.profile(level);
      return profile ? [{ level, profile }] : [];
    });
  }

  private layerTarget(level: LocalLevel, p: LaunchProfile): Target {
    return { name: p.name, profile: p, layer: level, entry: this.catalog().find((e) => e.file === this.config.models[level]!.name) };
  }

  /** Launch profile of a catalog model (served by name, like one loaded with LoadModel). */
  catalogProfile(e: CatalogEntry): LaunchProfile {
    const layer = this.config.models[e.level];
    return {
      name: e.id,
      path: join(this.config.models.model_dir, e.file),
      level: '',
      ctxSize: Math.min(e.context_length, layer?.ctx_size ?? 2048),
      threads: layer?.threads ?? 0,
      gpuLayers: this.gpuLayers(layer?.gpu_layers ?? 0, false),
      parallel: layer?.parallel ?? 2,
      mmap: layer?.mmap ?? true,
      idleUnloadMs: ms(this.config.runtime.unload_after_idle),
      ...(e.adapters.length ? { adapters: launchAdapters(this.config.models.model_dir, catalogAdapters(e)) } : {}),
    };
  }

  /**
   * The adapters a model is served with: a configured layer's ([[models.<layer>.adapters]]), a
   * catalog model's (its entry's, when it is served by its catalog id); undefined for others.
   */
  adapters(model: string): AdapterConfig[] | undefined {
    const c = this.configured().find((x) => x.profile.name === model);
    if (c) return this.config.models[c.level]!.adapters;
    const e = this.catalog().find((x) => x.id === model);
    if (!e?.adapters.length) return undefined;
    // A file loaded by name (LoadModel) under a catalog id is not that catalog model.
    const loaded = this.loaded(model);
    if (loaded && loaded.path !== join(this.config.models.model_dir, e.file)) return undefined;
    return catalogAdapters(e);
  }

  /** A model name (configured, loaded, or in the catalog), a level, or "auto"/"" (operational). Strategic is not local. */
  resolve(model: string, level: string): Target {
    if (level && !(LEVELS as readonly string[]).includes(level)) throw new RuntimeError(Code.INVALID_ARGUMENT, `intelligence_level: must be one of ${LEVELS.join(', ')} (got "${level}")`);
    if (model && model !== 'auto') {
      for (const { level: lvl, profile: p } of this.configured()) {
        if (p.name === model || `${p.name}.gguf` === model || lvl === model) return this.layerTarget(lvl, p);
      }
      const emb = this.embeddingProfile();
      if (emb && (emb.name === model || `${emb.name}.gguf` === model)) return { name: emb.name, profile: emb };
      if (this.loaded(model)) return { name: model };
      const e = this.catalog().find((x) => x.id === model || x.file === model);
      if (e) return { name: e.id, profile: this.catalogProfile(e), entry: e };
      throw new RuntimeError(Code.NOT_FOUND, `unknown model "${model}" (configured: ${this.configured().map((c) => c.profile.name).join(', ')}; or a catalog id)`);
    }
    const lvl = level || 'operational';
    if (lvl === 'strategic') {
      throw new RuntimeError(Code.FAILED_PRECONDITION, 'intelligence_level "strategic" goes to the cloud gateway, which this runtime does not have yet; no local model is used in its place');
    }
    const p = this.profile(lvl as LocalLevel);
    if (!p) throw new RuntimeError(Code.FAILED_PRECONDITION, `no ${lvl} model is configured ([models.${lvl}] in config.toml)`);
    return this.layerTarget(lvl as LocalLevel, p);
  }

  /**
   * Generation defaults and ceiling of a model: its layer's max_tokens, temperature and
   * max_tokens_limit (default: the layer's context size per slot); a catalog model uses the layer of
   * its level; a model loaded by name the schema's defaults and its own context size.
   */
  defaults(t: Target): GenerationDefaults {
    const level = t.layer ?? t.entry?.level;
    const l = level ? this.config.models[level] : undefined;
    const ctx = t.profile?.ctxSize ?? this.loaded(t.name)?.ctxSize ?? 2048;
    if (l && t.layer) {
      return {
        maxTokens: l.max_tokens,
        temperature: l.temperature,
        maxTokensLimit: l.max_tokens_limit ?? l.ctx_size,
        limitSource: l.max_tokens_limit ? `max_tokens_limit of [models.${t.layer}]` : `the context size of [models.${t.layer}]`,
      };
    }
    return { maxTokens: l?.max_tokens ?? 512, temperature: l?.temperature ?? 0.2, maxTokensLimit: ctx, limitSource: `the context size of ${t.name}` };
  }
}
