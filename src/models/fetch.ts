/**
 * Model downloads: resumable (HTTP Range) into `<dest>.partial`, retries with backoff, a stall
 * timeout, a free-space check, sha256 and GGUF checks before the file is moved into place.
 */
import { createWriteStream, existsSync } from 'node:fs';
import { rename, rm, stat, statfs, truncate } from 'node:fs/promises';
import { dirname } from 'node:path';
import { sha256File } from '../util/hash.js';
import { UserError } from '../util/errors.js';
import { formatSize } from '../util/size.js';
import { readGguf } from './gguf.js';
import { syncDir, syncFile } from '../util/fsync.js';

export interface Progress {
  bytes: number;
  total?: number;
  /** Bytes per second over the current attempt. */
  speed: number;
  /** Seconds left, when the total is known. */
  eta?: number;
}

export interface FetchOptions {
  url: string;
  dest: string;
  sha256: string;
  /** Expected size in bytes (for the free-space check before the first byte). */
  size?: number;
  retries?: number;
  /** Abort an attempt that receives nothing for this long. */
  stallSeconds?: number;
  backoffMs?: number;
  onProgress?: (p: Progress) => void;
  onRetry?: (attempt: number, error: Error, waitMs: number) => void;
}

export interface FetchResult {
  path: string;
  bytes: number;
  attempts: number;
  /** Bytes that were already on disk from an earlier, interrupted attempt. */
  resumedFrom: number;
  alreadyPresent: boolean;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    url: string,
  ) {
    super(`HTTP ${status} from ${url}`);
  }
}

const sizeOf = async (p: string) => (existsSync(p) ? (await stat(p)).size : 0);

async function attempt(o: FetchOptions, partial: string): Promise<void> {
  const have = await sizeOf(partial);
  const ctrl = new AbortController();
  const stallMs = (o.stallSeconds ?? 30) * 1000;
  let timer = setTimeout(() => ctrl.abort(new Error(`stalled: nothing received for ${stallMs / 1000} s`)), stallMs);
  try {
    const res = await fetch(o.url, { headers: have > 0 ? { Range: `bytes=${have}-` } : {}, signal: ctrl.signal, redirect: 'follow' });
    if (res.status === 416 && have > 0) return; // we already have every byte
    if (res.status !== 200 && res.status !== 206) throw new HttpError(res.status, o.url);
    let offset = have;
    if (res.status === 200 && have > 0) {
      await truncate(partial, 0); // the server ignored the Range header: start over
      offset = 0;
    }
    const len = Number(res.headers.get('content-length') ?? NaN);
    const total = Number.isFinite(len) ? offset + len : o.size;
    const out = createWriteStream(partial, { flags: offset > 0 ? 'a' : 'w' });
    const t0 = Date.now();
    let bytes = offset;
    let lastReport = 0;
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        clearTimeout(timer);
        timer = setTimeout(() => ctrl.abort(new Error(`stalled: nothing received for ${stallMs / 1000} s`)), stallMs);
        if (!out.write(chunk)) await new Promise<void>((r) => out.once('drain', () => r()));
        bytes += chunk.length;
        const now = Date.now();
        if (o.onProgress && (now - lastReport > 250 || bytes === total)) {
          lastReport = now;
          const speed = (bytes - offset) / Math.max(0.001, (now - t0) / 1000);
          o.onProgress({ bytes, total, speed, eta: total && speed > 0 ? (total - bytes) / speed : undefined });
        }
      }
    } finally {
      await new Promise<void>((r) => out.end(r));
    }
    if (total !== undefined && bytes < total) throw new Error(`connection closed at ${bytes} of ${total} bytes`);
  } finally {
    clearTimeout(timer);
  }
}

export async function fetchModel(o: FetchOptions): Promise<FetchResult> {
  if (!/^[0-9a-f]{64}$/.test(o.sha256)) throw new UserError(`a sha256 (64 hex digits) is required to download ${o.url}`, 2);
  if (existsSync(o.dest) && (await sha256File(o.dest)) === o.sha256) {
    return { path: o.dest, bytes: (await stat(o.dest)).size, attempts: 0, resumedFrom: 0, alreadyPresent: true };
  }
  const partial = `${o.dest}.partial`;
  const resumedFrom = await sizeOf(partial);
  if (o.size) {
    const fs = await statfs(dirname(o.dest));
    const free = fs.bavail * fs.bsize;
    if (free < o.size - resumedFrom) {
      throw new UserError(`not enough space in ${dirname(o.dest)} for ${o.url}: needs ${formatSize(o.size - resumedFrom)}, ${formatSize(free)} free`, 3);
    }
  }
  const retries = o.retries ?? 5;
  let attempts = 0;
  for (;;) {
    attempts++;
    try {
      await attempt(o, partial);
      break;
    } catch (e) {
      const err = e as Error;
      const final = err instanceof HttpError && err.status >= 400 && err.status < 500 && err.status !== 408 && err.status !== 429;
      if (final || attempts > retries) throw new UserError(`download of ${o.url} failed after ${attempts} attempt(s): ${err.message}. Rerun to resume from ${formatSize(await sizeOf(partial))}.`, 1);
      const wait = (o.backoffMs ?? 1000) * 2 ** (attempts - 1);
      o.onRetry?.(attempts, err, wait);
      await new Promise((r) => setTimeout(r, wait));
    }
  }
  const sum = await sha256File(partial);
  if (sum !== o.sha256) {
    await rm(partial, { force: true });
    throw new UserError(`checksum mismatch for ${o.url}: expected ${o.sha256}, got ${sum}. The download was removed.`, 1);
  }
  try {
    await readGguf(partial);
  } catch (e) {
    await rm(partial, { force: true });
    throw new UserError(`${o.url}: ${(e as Error).message.replace(partial, 'the download')}. The download was removed.`, 1);
  }
  // Durable before it is reported: the data, then the name (a machine that loses power right after
  // a pull, e.g. aios-runtime's PullModel on an ext4 /var with commit=60, keeps the model).
  await syncFile(partial);
  await rename(partial, o.dest);
  await syncDir(dirname(o.dest));
  return { path: o.dest, bytes: await sizeOf(o.dest), attempts, resumedFrom, alreadyPresent: false };
}
