/** A directory of GGUF models on the build host: `aios models list|pull|verify|rm`. */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { catalog, catalogAdapterFile, catalogEntry, type CatalogEntry } from './catalog.js';
import { fetchModel, type FetchResult, type Progress } from './fetch.js';
import { inspectModel } from './gguf.js';
import { sha256File } from '../util/hash.js';
import { UserError } from '../util/errors.js';

export interface ListedModel {
  id: string;
  level: string;
  file: string;
  size: number;
  quantization: string;
  license: string;
  context_length: number;
  verified: boolean;
  downloadable: boolean;
  present: boolean;
  /** Its LoRA adapters' names (the catalog's [[model.adapters]]). */
  adapters: string[];
}

export async function listModels(dir: string): Promise<ListedModel[]> {
  return catalog().map((e) => ({
    id: e.id,
    level: e.level,
    file: e.file,
    size: e.size,
    quantization: e.quantization,
    license: e.license,
    context_length: e.context_length,
    verified: e.verified,
    downloadable: !!e.sha256,
    present: existsSync(join(dir, e.file)),
    adapters: e.adapters.map((a) => a.name),
  }));
}

/** Resolves a catalog id, or a URL with its sha256, to what to download. */
export function resolvePull(ref: string, sha256?: string): { url: string; sha256: string; file: string; size?: number; entry?: CatalogEntry } {
  const e = catalogEntry(ref);
  if (e) {
    if (!e.sha256) throw new UserError(`catalog entry ${e.id} has no sha256 yet; pull it by URL with --sha256 <checksum you trust>`, 2);
    return { url: e.url, sha256: e.sha256, file: e.file, size: e.size || undefined, entry: e };
  }
  if (/^https?:\/\//.test(ref)) {
    if (!sha256) throw new UserError(`pulling a URL needs --sha256 <64 hex digits>; a model is never installed unchecked`, 2);
    const file = basename(new URL(ref).pathname);
    if (!file.endsWith('.gguf')) throw new UserError(`${ref} does not name a .gguf file`, 2);
    return { url: ref, sha256: sha256.toLowerCase(), file };
  }
  throw new UserError(`"${ref}" is neither a catalog id (${catalog().map((c) => c.id).join(', ')}) nor an http(s) URL`, 2);
}

export async function pullModel(
  ref: string,
  o: { dir: string; sha256?: string; onProgress?: (p: Progress) => void; onRetry?: (n: number, e: Error, ms: number) => void; stallSeconds?: number; backoffMs?: number; retries?: number },
): Promise<FetchResult & { adapters?: FetchResult[] }> {
  const r = resolvePull(ref, o.sha256);
  await mkdir(o.dir, { recursive: true });
  const fetched = await fetchModel({ url: r.url, sha256: r.sha256, size: r.size, dest: join(o.dir, r.file), onProgress: o.onProgress, onRetry: o.onRetry, stallSeconds: o.stallSeconds, backoffMs: o.backoffMs, retries: o.retries });
  // A catalog model's LoRA adapters come with it, beside it (the names aios-runtime looks for).
  const adapters: FetchResult[] = [];
  for (const a of r.entry?.adapters ?? []) {
    adapters.push(await fetchModel({ url: a.url, sha256: a.sha256, size: a.size || undefined, dest: join(o.dir, catalogAdapterFile(r.entry!, a.name)), onRetry: o.onRetry, stallSeconds: o.stallSeconds, backoffMs: o.backoffMs, retries: o.retries }));
  }
  return { ...fetched, ...(adapters.length ? { adapters } : {}) };
}

export interface VerifyResult {
  file: string;
  ok: boolean;
  problem?: string;
  sha256: string;
  catalogId?: string;
}

/** Checks every .gguf in dir: a valid GGUF header, and the catalog's sha256 where the file is a catalog model. */
export async function verifyModels(dir: string): Promise<VerifyResult[]> {
  const files = existsSync(dir) ? (await readdir(dir)).filter((f) => f.endsWith('.gguf')).sort() : [];
  const out: VerifyResult[] = [];
  for (const f of files) {
    const p = join(dir, f);
    const sha = await sha256File(p);
    const entry = catalog().find((e) => e.file === f);
    let problem: string | undefined;
    try {
      await inspectModel(p);
    } catch (e) {
      problem = (e as Error).message;
    }
    if (!problem && entry?.sha256 && entry.sha256 !== sha) problem = `sha256 ${sha} differs from the catalog's ${entry.sha256}`;
    out.push({ file: f, ok: !problem, problem, sha256: sha, catalogId: entry?.id });
  }
  return out;
}

export async function removeModel(dir: string, ref: string): Promise<string> {
  const e = catalogEntry(ref);
  const file = e ? e.file : basename(ref);
  const p = join(dir, file);
  if (!existsSync(p) && !existsSync(`${p}.partial`)) throw new UserError(`no model ${file} in ${dir}`, 1);
  await rm(p, { force: true });
  await rm(`${p}.partial`, { force: true });
  return p;
}
