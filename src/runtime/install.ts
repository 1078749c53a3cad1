/**
 * Installing catalog models into model_dir: resumable, sha256- and GGUF-checked downloads
 * (models/fetch.ts); concurrent installs of one model share one download and all see its progress.
 * A catalog entry's LoRA adapters ([[model.adapters]]) come with it, beside it (catalogAdapterFile).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import type { RuntimeEvents } from './events.js';
import type { Log } from './log.js';
import { mib } from './memory.js';
import { catalogAdapterFile, type CatalogEntry } from '../models/catalog.js';
import { fetchModel } from '../models/fetch.js';

export type ProgressPhase = 'download' | 'load';
export interface LoadProgress {
  model: string;
  phase: ProgressPhase;
  bytes: number;
  total: number;
}

interface Download {
  done: Promise<void>;
  listeners: Set<(p: LoadProgress) => void>;
  bytes: number;
  total: number;
}

export class Installer {
  private downloads = new Map<string, Download>();
  private adapterDownloads = new Map<string, Promise<void>>();

  constructor(
    private modelDir: string,
    private events: RuntimeEvents,
    private log: Log,
  ) {}

  /** Downloads `e` into model_dir (or joins the download under way); resolves with its path. */
  async install(e: CatalogEntry, onProgress?: (p: LoadProgress) => void): Promise<string> {
    if (!e.sha256) throw new RuntimeError(Code.FAILED_PRECONDITION, `catalog entry ${e.id} has no sha256; it cannot be installed unchecked`);
    const dest = join(this.modelDir, e.file);
    let d = this.downloads.get(e.id);
    if (!d) {
      const entry: Download = { done: Promise.resolve(), listeners: new Set(), bytes: 0, total: e.size };
      d = entry;
      this.downloads.set(e.id, entry);
      const emit = (bytes: number, total: number, done: boolean) => {
        entry.bytes = bytes;
        entry.total = total;
        this.events.emit('download', { model: e.id, bytes, total, done });
        for (const l of entry.listeners) l({ model: e.id, phase: 'download', bytes, total });
      };
      entry.done = (async () => {
        mkdirSync(this.modelDir, { recursive: true });
        this.log(`installing ${e.id} from ${e.url}`);
        emit(0, e.size, false);
        try {
          const r = await fetchModel({ url: e.url, dest, sha256: e.sha256, size: e.size || undefined, retries: 2, backoffMs: 500, onProgress: (pr) => emit(pr.bytes, pr.total ?? e.size, false) });
          this.log(`installed ${e.id} (${mib(r.bytes)}${r.resumedFrom ? `, resumed from ${mib(r.resumedFrom)}` : ''})`);
          // Its adapters: one that cannot be had is left out at load with the reason (adapters.ts), not the model.
          await this.installAdapters(e).catch((err: Error) => this.log(`${err.message}; ${e.id} is served without it`, 'warn'));
          emit(r.bytes, r.bytes, true);
        } catch (err) {
          this.events.emit('download', { model: e.id, bytes: entry.bytes, total: entry.total, done: true });
          if (err instanceof RuntimeError) throw err;
          const msg = (err as Error).message;
          // A file that arrived but is wrong (checksum, not GGUF) will not get better by retrying; a network failure may.
          throw new RuntimeError(/checksum mismatch|not a valid GGUF|is required/.test(msg) ? Code.FAILED_PRECONDITION : Code.UNAVAILABLE, `auto-install of ${e.id} failed: ${msg}`);
        }
      })().finally(() => this.downloads.delete(e.id));
    }
    if (onProgress) {
      d.listeners.add(onProgress);
      if (d.bytes) onProgress({ model: e.id, phase: 'download', bytes: d.bytes, total: d.total });
    }
    try {
      await d.done;
    } finally {
      if (onProgress) d.listeners.delete(onProgress);
    }
    return dest;
  }

  /**
   * Downloads the entry's LoRA adapters that are not in model_dir yet (checked like models: sha256,
   * GGUF); concurrent calls share each download. Resolves with the names installed now.
   */
  async installAdapters(e: CatalogEntry): Promise<string[]> {
    const now: string[] = [];
    for (const a of e.adapters) {
      const dest = join(this.modelDir, catalogAdapterFile(e, a.name));
      if (existsSync(dest)) continue;
      let d = this.adapterDownloads.get(dest);
      if (!d) {
        this.log(`installing adapter ${a.name} of ${e.id} from ${a.url}`);
        d = fetchModel({ url: a.url, dest, sha256: a.sha256, size: a.size || undefined, retries: 2, backoffMs: 500 })
          .then((r) => this.log(`installed adapter ${a.name} of ${e.id} (${mib(r.bytes)})`))
          .catch((err: Error) => {
            const msg = err.message;
            throw new RuntimeError(/checksum mismatch|not a valid GGUF|is required/.test(msg) ? Code.FAILED_PRECONDITION : Code.UNAVAILABLE, `auto-install of adapter ${a.name} of ${e.id} failed: ${msg}`);
          })
          .finally(() => this.adapterDownloads.delete(dest));
        this.adapterDownloads.set(dest, d);
      }
      await d;
      now.push(a.name);
    }
    return now;
  }

  /** Adapters the entry names that are missing from model_dir. */
  missingAdapters(e: CatalogEntry): string[] {
    return e.adapters.filter((a) => !existsSync(join(this.modelDir, catalogAdapterFile(e, a.name)))).map((a) => a.name);
  }

  /** Downloads in progress: model, bytes so far, total. */
  installing(): { model: string; bytes: number; total: number }[] {
    return [...this.downloads.entries()].map(([model, d]) => ({ model, bytes: d.bytes, total: d.total }));
  }
}
