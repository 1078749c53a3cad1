/** Loading recipes: file lookup, `extends`, `--set` overrides, validation with file + key path. */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import { z } from 'zod';
import { RecipeError } from '../util/errors.js';
import { paths } from '../util/paths.js';
import { RecipeSchema, type ModelSpec, type ResolvedRecipe } from './schema.js';
import { RuntimeConfigSchema, cloudProviders, hostOf, isLoopbackHost } from '../runtime/config.js';
import { distroFor } from '../distros/index.js';
import { CATALOG_FILE, catalog, catalogEntry, catalogFile } from '../models/catalog.js';
import { fragmentPath } from '../kernel/config.js';
import { applianceProblems } from './appliance.js';
import { fleetProblems } from '../fleet/worker.js';
import { wireguardProblems } from '../fleet/wireguard.js';
import { inCidr } from '../util/net.js';
import { gpuProblems } from './gpu.js';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => !!v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Date);

/** Finds a recipe by name (images/<name>.toml) or path. */
export function findRecipe(ref: string, relativeTo = process.cwd()): string {
  const candidates = [
    isAbsolute(ref) ? ref : resolve(relativeTo, ref),
    join(paths.images, ref),
    join(paths.images, `${ref}.toml`),
  ];
  if (!ref.includes('/') && !ref.endsWith('.toml')) candidates.reverse();
  for (const c of candidates) if (existsSync(c) && c.endsWith('.toml')) return c;
  throw new RecipeError(ref, [
    { path: '', message: `no such recipe: looked for ${candidates.join(', ')}. Recipes are TOML files; list them with \`aios recipes\`` },
  ]);
}

/** Deep merge: objects merge key by key, everything else (arrays included) is replaced. */
export function deepMerge(base: Obj, over: Obj): Obj {
  const out: Obj = { ...base };
  for (const [k, v] of Object.entries(over)) out[k] = isObj(v) && isObj(out[k]) ? deepMerge(out[k] as Obj, v) : v;
  return out;
}

async function readToml(file: string): Promise<Obj> {
  const text = await readFile(file, 'utf8');
  try {
    return parseToml(text) as Obj;
  } catch (e) {
    const msg = e instanceof TomlError ? `TOML syntax error at line ${e.line}, column ${e.column}: ${e.message.split('\n')[0]}` : String(e);
    throw new RecipeError(file, [{ path: '', message: msg }]);
  }
}

/** Reads a recipe and its `extends` chain into one raw (unvalidated) object. */
async function readChain(file: string, seen: string[] = []): Promise<{ raw: Obj; sources: string[] }> {
  if (seen.includes(file)) {
    throw new RecipeError(file, [{ path: 'extends', message: `extends cycle: ${[...seen, file].map((f) => basename(f)).join(' -> ')}` }]);
  }
  const raw = await readToml(file);
  const parentRef = raw.extends;
  if (parentRef === undefined) return { raw, sources: [file] };
  if (typeof parentRef !== 'string') throw new RecipeError(file, [{ path: 'extends', message: 'must be a string (a recipe name or path)' }]);
  let parentFile: string;
  try {
    parentFile = findRecipe(parentRef, dirname(file));
  } catch {
    throw new RecipeError(file, [{ path: 'extends', message: `recipe "${parentRef}" not found (in ${paths.images} or relative to ${dirname(file)})` }]);
  }
  const parent = await readChain(parentFile, [...seen, file]);
  const { extends: _drop, ...own } = raw;
  return { raw: deepMerge(parent.raw, own), sources: [file, ...parent.sources] };
}

/** Parses one `--set a.b.c=value` override; the value is read as TOML when it can be, else as a string. */
export function parseSet(expr: string): { path: string[]; value: unknown } {
  const eq = expr.indexOf('=');
  if (eq <= 0) throw new RecipeError('--set', [{ path: expr, message: 'expected KEY=VALUE, e.g. --set image.size=4G' }]);
  const key = expr.slice(0, eq).trim();
  const text = expr.slice(eq + 1).trim();
  if (!/^[A-Za-z0-9_]+(\.[A-Za-z0-9_.\-]+)*$/.test(key)) throw new RecipeError('--set', [{ path: key, message: 'not a key path such as image.size' }]);
  let value: unknown = text;
  try {
    value = (parseToml(`v = ${text}`) as Obj).v;
  } catch {
    /* a bare word: keep it as a string */
  }
  // tuning.sysctl keys contain dots: the first two segments name the table, the rest is the key.
  const parts = key.split('.');
  const path = parts[0] === 'tuning' && parts[1] === 'sysctl' && parts.length > 3 ? ['tuning', 'sysctl', parts.slice(2).join('.')] : parts;
  return { path, value };
}

function setPath(obj: Obj, path: string[], value: unknown): void {
  let o = obj;
  for (const p of path.slice(0, -1)) {
    if (!isObj(o[p])) o[p] = {};
    o = o[p] as Obj;
  }
  o[path[path.length - 1]!] = value;
}

function describeAllowed(schema: z.ZodTypeAny, path: PropertyKey[]): string | undefined {
  let s: any = schema;
  for (const p of path) {
    while (s?.def?.innerType) s = s.def.innerType;
    s = s?.def?.shape?.[p as string] ?? s?.def?.element ?? s?.def?.valueType;
  }
  while (s?.def?.innerType) s = s.def.innerType;
  const shape = s?.def?.shape;
  return shape ? Object.keys(shape).join(', ') : undefined;
}

/** Turns zod issues into "key.path: what is allowed" lines. */
export function zodProblems(err: z.ZodError, schema: z.ZodTypeAny = RecipeSchema): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  for (const issue of err.issues) {
    const path = issue.path.map(String).join('.');
    if (issue.code === 'unrecognized_keys') {
      const allowed = describeAllowed(schema, issue.path);
      for (const k of issue.keys) {
        out.push({ path: path ? `${path}.${k}` : k, message: `unknown key${allowed ? ` (allowed here: ${allowed})` : ''}` });
      }
    } else {
      out.push({ path, message: issue.message });
    }
  }
  return out;
}

/**
 * The systemd credentials the recipe's cloud providers read their keys from (key_file, or the
 * table's name when it is ""), for ImportCredential= in the unit; absolute paths are not credentials.
 */
export function apiCredentials(r: { api: Record<string, unknown> }): string[] {
  const parsed = RuntimeConfigSchema.safeParse({ api: r.api });
  if (!parsed.success) return [];
  return [...new Set(cloudProviders(parsed.data).map(([name, p]) => p.key_file || name).filter((k) => !k.startsWith('/')))];
}

/** 127.0.0.0/8, ::1 or localhost: a listener only this machine can reach (the runtime's own rule). */
export function isLoopback(hostPort: string): boolean {
  return isLoopbackHost(hostOf(hostPort));
}

/** Checks that involve more than one key. */
function crossChecks(r: z.output<typeof RecipeSchema>): { path: string; message: string }[] {
  const out: { path: string; message: string }[] = [];
  const ext4Only = ['commit=', 'data=', 'barrier', 'journal_', 'errors='];
  if (r.filesystem.root === 'xfs') {
    for (const o of r.filesystem.mount_options ?? []) {
      if (ext4Only.some((e) => o.startsWith(e))) out.push({ path: 'filesystem.mount_options', message: `"${o}" is an ext4 option; XFS would refuse to mount with it` });
    }
  }
  // image.layout = "appliance" (docs/appliance.md): the root filesystem, formats and the disk size for two slots.
  out.push(...applianceProblems(r));
  const seen = new Map<string, number>();
  r.models.forEach((m, i) => {
    if (seen.has(m.name)) out.push({ path: `models.${i}.name`, message: `"${m.name}" is already used by models.${seen.get(m.name)}` });
    seen.set(m.name, i);
    if (m.source === 'catalog') {
      const e = catalogEntry(m.id);
      if (!e) out.push({ path: `models.${i}.id`, message: `"${m.id}" is not in ${catalogFile() === CATALOG_FILE ? 'models/catalog.toml' : `${catalogFile()} ($AIOS_CATALOG)`} (known: ${catalog().map((c) => c.id).join(', ')})` });
      else if (!e.sha256) out.push({ path: `models.${i}.id`, message: `catalog entry "${m.id}" has no sha256 yet, so it cannot be downloaded safely; use source = "url" with a sha256` });
    }
    if (m.source === 'synth' && !r.llama.enabled) out.push({ path: `models.${i}.source`, message: 'synthesized models need llama.cpp (its gguf-py and llama-quantize): set llama.enabled = true' });
  });
  if (r.runtime.enabled) {
    if (!r.llama.enabled) out.push({ path: 'runtime.enabled', message: 'aios-runtime runs llama-server: it needs llama.enabled = true (or set runtime.enabled = false)' });
    if (!r.models.some((m) => m.level === 'operational')) out.push({ path: 'runtime.enabled', message: 'aios-runtime needs an operational model: add a [[models]] entry with level = "operational" (or set runtime.enabled = false)' });
  }
  if (r.runtime.enabled && !r.runtime.tls && !r.runtime.insecure_listen) {
    for (const key of ['listen', 'http_listen'] as const) {
      if (!isLoopback(r.runtime[key])) {
        out.push({ path: `runtime.${key}`, message: `"${r.runtime[key]}" is reachable from the network, and runtime.tls = false leaves it without authentication: set runtime.tls = true (mutual TLS, the default), a loopback address such as 127.0.0.1:${r.runtime[key].split(':').pop()}, or runtime.insecure_listen = true to accept that anyone on the network can use it` });
      }
    }
  }
  if (Object.keys(r.api).length) {
    if (!r.runtime.enabled) out.push({ path: 'api', message: 'the strategic layer is part of aios-runtime: set runtime.enabled = true (or remove [api])' });
    const parsed = RuntimeConfigSchema.safeParse({ api: r.api });
    if (!parsed.success) for (const p of zodProblems(parsed.error, RuntimeConfigSchema)) out.push(p);
  }
  if (r.kernel.build && r.base.distro !== 'debian') {
    out.push({ path: 'kernel.build', message: `a custom kernel is built from Debian's linux-source package; base.distro = "${r.base.distro}" has no kernel source or mirror reachable from here: use its stock kernel (kernel.build = false)` });
  }
  if (r.kernel.build && r.kernel.base === 'tiny' && r.image.formats.includes('iso')) {
    out.push({ path: 'image.formats', message: 'kernel.base = "tiny" has no CD-ROM, ISO 9660 or squashfs drivers, so the live ISO could not find its root: build the disk image only (image.formats = ["disk"]) or use kernel.base = "compact"' });
  }
  r.kernel.fragments.forEach((f, i) => {
    try {
      fragmentPath(f);
    } catch (e) {
      out.push({ path: `kernel.fragments.${i}`, message: (e as Error).message });
    }
  });
  // GPU images (docs/gpu.md): llama.gpu, the tools tree and the driver.
  out.push(...gpuProblems(r));
  // Fleets (docs/fleets.md): a worker's address, its heads, and what it needs of the image.
  out.push(...wireguardProblems(r.fleet, { kernelBuild: r.kernel.build, kernelBase: r.kernel.base }));
  out.push(...fleetProblems(r.fleet, { llamaEnabled: r.llama.enabled, llamaRpc: r.llama.rpc, runtimeListens: r.runtime.enabled ? [r.runtime.listen, r.runtime.http_listen] : [] }));
  // A head (docs/fleets.md): split models need workers and llama.cpp's RPC backend; workers listed once.
  r.models.forEach((m, i) => {
    if (!m.rpc) return;
    if (!r.runtime.rpc_workers.length) out.push({ path: `models.${i}.rpc`, message: `model "${m.name}" is split across RPC workers, but the recipe lists none: add them as runtime.rpc_workers = [{ address = "10.0.0.2:50052" }] (or set rpc = false)` });
    if (!r.llama.rpc) out.push({ path: `models.${i}.rpc`, message: `model "${m.name}" is split across RPC workers: it needs llama.cpp's RPC backend (llama.rpc = true, the default)` });
  });
  if (r.runtime.rpc_workers.length) {
    if (!r.runtime.enabled) out.push({ path: 'runtime.rpc_workers', message: 'the workers are aios-runtime\'s: set runtime.enabled = true (or remove runtime.rpc_workers)' });
    if (!r.models.some((m) => m.rpc)) out.push({ path: 'runtime.rpc_workers', message: 'no model is split across these workers: set rpc = true on the [[models]] entry to split (or remove runtime.rpc_workers)' });
    // The runtime's own checks of its [[runtime.rpc_workers]] (a worker listed twice…), as for [api].
    const parsed = RuntimeConfigSchema.safeParse({ runtime: { rpc_workers: r.runtime.rpc_workers } });
    if (!parsed.success) for (const p of zodProblems(parsed.error, RuntimeConfigSchema)) out.push(p);
    const wg = r.fleet.tunnel === 'wireguard' ? r.fleet.wireguard : undefined;
    if (wg) {
      r.runtime.rpc_workers.forEach((w, i) => {
        const host = w.address.split(':')[0]!;
        if (!wg.peers.some((p) => p.allowed_ips.some((a) => inCidr(host, a)))) out.push({ path: `runtime.rpc_workers.${i}.address`, message: `${host} is not inside any fleet.wireguard peer's allowed_ips: with fleet.tunnel = "wireguard" give the worker's tunnel address` });
      });
    }
    if (r.fleet.role === 'worker') out.push({ path: 'runtime.rpc_workers', message: 'a worker does not have workers of its own: a head lists its workers, a worker lists its heads (fleet.heads)' });
  }
  for (const level of ['operational', 'tactical'] as const) {
    const n = r.models.filter((m) => m.level === level);
    if (n.length > 1) out.push({ path: 'models', message: `${n.length} models have level = "${level}"; at most one per level (${n.map((m) => m.name).join(', ')})` });
  }
  return out;
}

export interface LoadOptions {
  /** `--set key=value` overrides, applied after the recipe chain. */
  sets?: string[];
}

/**
 * A model with source = "catalog" gets its catalog entry's LoRA adapters ([[model.adapters]]) as
 * source = "url" adapters, before its own; one of its own under the same name replaces the entry's.
 */
export function withCatalogAdapters(r: { models: ModelSpec[] }): void {
  for (const m of r.models) {
    if (m.source !== 'catalog') continue;
    const e = catalogEntry(m.id);
    if (!e?.adapters.length) continue;
    const own = new Set(m.adapters.map((a) => a.name));
    const fromCatalog = e.adapters.filter((a) => !own.has(a.name)).map((a) => ({ name: a.name, description: a.description, scale: a.scale, source: 'url' as const, url: a.url, sha256: a.sha256, ...(a.size ? { size: a.size } : {}) }));
    m.adapters = [...fromCatalog, ...m.adapters];
  }
}

/** Loads, merges, overrides and validates a recipe. Throws RecipeError (exit 2) on any problem. */
export async function loadRecipe(ref = 'default', opts: LoadOptions = {}): Promise<ResolvedRecipe> {
  const file = findRecipe(ref);
  const { raw, sources } = await readChain(file);
  delete raw.extends;
  for (const s of opts.sets ?? []) {
    const { path, value } = parseSet(s);
    setPath(raw, path, value);
  }
  const parsed = RecipeSchema.safeParse(raw);
  if (!parsed.success) throw new RecipeError(opts.sets?.length ? `${file} (with --set ${opts.sets.join(' ')})` : file, zodProblems(parsed.error));
  const r = parsed.data;
  const distro = distroFor(r.base.distro);
  const problems = [...(distro.validate?.(r) ?? []), ...crossChecks(r)];
  if (problems.length) throw new RecipeError(file, problems);
  withCatalogAdapters(r);
  const name = r.image.name ?? basename(file, '.toml');
  return {
    ...r,
    sources,
    name,
    base: { ...r.base, suite: r.base.suite ?? distro.defaultSuite, mirror: r.base.mirror ?? distro.defaultMirror },
  };
}
