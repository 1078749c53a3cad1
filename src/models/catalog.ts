/** The model catalog (models/catalog.toml): real public models with their URLs and checksums. */
import { readFileSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { parse } from 'smol-toml';
import { z } from 'zod';
import { PKG_ROOT } from '../util/paths.js';

/**
 * A LoRA adapter a catalog entry names ([[model.adapters]]): downloaded and checked like the model
 * (sha256, GGUF), installed beside it, loaded unapplied with it by aios-runtime (docs/runtime.md, "LoRA adapters").
 */
export const CatalogAdapterSchema = z.strictObject({
  name: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, { message: 'must be 1-64 of A-Z a-z 0-9 _ . -' }).describe('what requests call it'),
  url: z.string().url(),
  size: z.number().int().min(0).describe('bytes; 0 = unknown'),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, { message: 'must be 64 lowercase hex digits: an adapter is never installed unchecked' }),
  description: z.string().default('').describe('what it is for (selection by task compares it with the task)'),
  scale: z.number().min(-4).max(4).default(1).describe('scale when a request gives none'),
  license: z.string(),
});
export type CatalogAdapter = z.output<typeof CatalogAdapterSchema>;

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
  adapters: z
    .array(CatalogAdapterSchema)
    .default([])
    .superRefine((a, ctx) => {
      const seen = new Set<string>();
      a.forEach((x, i) => {
        if (seen.has(x.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `adapter "${x.name}" is listed twice` });
        seen.add(x.name);
      });
    })
    .describe('its LoRA adapters: a recipe model with source = "catalog" gets them (a recipe adapter of the same name replaces one), and aios-runtime serves them with the model when it is served by its catalog id'),
});
export type CatalogEntry = z.output<typeof CatalogEntrySchema>;

/** The catalog shipped with aios. */
export const CATALOG_FILE = join(PKG_ROOT, 'models/catalog.toml');

/** The catalog the build host's commands read: $AIOS_CATALOG (another catalog file: a private one, tests), else the shipped one. */
export const catalogFile = (): string => process.env.AIOS_CATALOG || CATALOG_FILE;

/** The file a catalog adapter is installed as by aios-runtime (beside its model, whose file name comes first). */
export const catalogAdapterFile = (e: Pick<CatalogEntry, 'file'>, adapter: string): string => `${e.file.replace(/\.gguf$/, '')}.lora-${adapter}.gguf`;

const cache = new Map<string, { mtimeMs: number; size: number; entries: CatalogEntry[] }>();

/** The entries of a catalog file, parsed once and again only when the file changes (the runtime asks on every request). */
export function catalog(file = catalogFile()): CatalogEntry[] {
  const st = statSync(file);
  const hit = cache.get(file);
  if (hit && hit.mtimeMs === st.mtimeMs && hit.size === st.size) return hit.entries;
  const data = z.strictObject({ model: z.array(CatalogEntrySchema) }).parse(parse(readFileSync(file, 'utf8')));
  cache.set(file, { mtimeMs: st.mtimeMs, size: st.size, entries: data.model });
  return data.model;
}

/**
 * The shipped catalog with a recipe's own entries appended (runtime.catalog: a TOML file of
 * [[model]] tables in this format, e.g. models on a LAN mirror): the text of both, so that comments
 * stay, checked as one catalog. Problems (not TOML, an entry the schema refuses, an id the shipped
 * catalog already has) are returned as sentences, nothing is thrown.
 */
export function mergedCatalog(extraFile: string, shipped = CATALOG_FILE): { text: string; ids: string[]; problems: string[] } {
  const base = readFileSync(shipped, 'utf8');
  let extra: string;
  try {
    extra = readFileSync(extraFile, 'utf8');
  } catch (e) {
    return { text: base, ids: [], problems: [`runtime.catalog: cannot read ${extraFile}: ${(e as Error).message}`] };
  }
  let data: unknown;
  try {
    data = parse(extra);
  } catch (e) {
    return { text: base, ids: [], problems: [`runtime.catalog: ${extraFile} is not valid TOML: ${(e as Error).message.split('\n')[0]}`] };
  }
  const r = z.strictObject({ model: z.array(CatalogEntrySchema).min(1) }).safeParse(data);
  if (!r.success) {
    const why = r.error.issues.map((i) => `${i.path.length ? i.path.join('.') : '(top level)'}: ${i.message}`).join('; ');
    return { text: base, ids: [], problems: [`runtime.catalog: ${extraFile} is not a model catalog ([[model]] tables as in models/catalog.toml): ${why}`] };
  }
  const problems: string[] = [];
  const shippedIds = new Set(catalog(shipped).map((m) => m.id));
  const seen = new Set<string>();
  for (const m of r.data.model) {
    if (shippedIds.has(m.id)) problems.push(`runtime.catalog: ${extraFile}: id ${m.id} is already in the shipped catalog (choose another id)`);
    if (seen.has(m.id)) problems.push(`runtime.catalog: ${extraFile}: id ${m.id} is listed twice`);
    seen.add(m.id);
  }
  return { text: `${base.replace(/\n*$/, '\n')}\n# From the recipe's runtime.catalog (${basename(extraFile)}):\n\n${extra.replace(/\n*$/, '\n')}`, ids: [...seen], problems };
}

export function catalogEntry(id: string, file = catalogFile()): CatalogEntry | undefined {
  return catalog(file).find((m) => m.id === id);
}
