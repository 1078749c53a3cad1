/** The model catalog (models/catalog.toml): real public models with their URLs and checksums. */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'smol-toml';
import { z } from 'zod';
import { PKG_ROOT } from '../util/paths.js';

export const CatalogEntrySchema = z.strictObject({
  id: z.string().regex(/^[a-z0-9][a-z0-9._-]*$/),
  level: z.enum(['operational', 'tactical']),
  file: z.string().regex(/\.gguf$/),
  url: z.string().url(),
  size: z.number().int().min(0).describe('bytes; 0 = unknown'),
  sha256: z.union([z.literal(''), z.string().regex(/^[0-9a-f]{64}$/)]).describe('"" = unknown: the entry cannot be downloaded until it is filled in'),
  license: z.string(),
  quantization: z.string(),
  context_length: z.number().int().positive(),
  verified: z.boolean(),
});
export type CatalogEntry = z.output<typeof CatalogEntrySchema>;

export const CATALOG_FILE = join(PKG_ROOT, 'models/catalog.toml');

const cache = new Map<string, { mtimeMs: number; size: number; entries: CatalogEntry[] }>();

/** The entries of a catalog file, parsed once and again only when the file changes (the runtime asks on every request). */
export function catalog(file = CATALOG_FILE): CatalogEntry[] {
  const st = statSync(file);
  const hit = cache.get(file);
  if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.entries;
  const data = z.strictObject({ model: z.array(CatalogEntrySchema) }).parse(parse(readFileSync(file, 'utf8')));
  cache.set(file, { mtimeMs: st.mtimeMs, size: st.size, entries: data.model });
  return data.model;
}

export function catalogEntry(id: string): CatalogEntry | undefined {
  return catalog().find((m) => m.id === id);
}
