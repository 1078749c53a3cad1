import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, lstat, readlink } from 'node:fs/promises';
import { join, relative } from 'node:path';

export function sha256(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Stable JSON (sorted keys) so that cache keys do not depend on property order. */
export function stableJson(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(stableJson).join(',')}]`;
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o)
      .sort()
      .filter((k) => o[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${stableJson(o[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

export function hashOf(...parts: unknown[]): string {
  return sha256(parts.map(stableJson).join('\n'));
}

export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Hash of a directory tree: relative paths, modes, contents and link targets (not mtimes). */
export async function hashTree(dir: string): Promise<string> {
  const h = createHash('sha256');
  async function walk(d: string): Promise<void> {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const p = join(d, e.name);
      const st = await lstat(p);
      const rel = relative(dir, p);
      h.update(`${rel}\0${st.mode}\0`);
      if (st.isSymbolicLink()) h.update(await readlink(p));
      else if (st.isDirectory()) await walk(p);
      else h.update(await readFile(p));
      h.update('\0');
    }
  }
  await walk(dir);
  return h.digest('hex');
}

/** A UUID derived from a seed and a purpose (RFC 4122 layout, version 4 bits set). */
export function derivedUuid(seed: string, purpose: string): string {
  const b = Buffer.from(createHash('sha256').update(`${seed}\0${purpose}`).digest().subarray(0, 16));
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const x = b.toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`;
}
