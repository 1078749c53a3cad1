/**
 * Installing catalog models into model_dir: resumable, sha256- and GGUF-checked downloads
 * (models/fetch.ts); concurrent installs of one model share one download and all see its progress.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import type { RuntimeEvents } from './events.js';
import type { Log } from './log.js';
import { mib } from './memory.js';
import type { CatalogEntry } from '../models/catalog.js';
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
          emit(r.bytes, r.bytes, true);
          this.log(`installed ${e.id} (${mib(r.bytes)}${r.resumedFrom ? `, resumed from ${mib(r.resumedFrom)}` : ''})`);
        } catch (err) {
          this.events.emit('download', { model: e.id, bytes: entry.bytes, total: entry.total, done: true });
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

  /** Downloads in progress: model, bytes so far, total. */
  installing(): { model: string; bytes: number; total: number }[] {
    return [...this.downloads.entries()].map(([model, d]) => ({ model, bytes: d.bytes, total: d.total }));
  }
}
