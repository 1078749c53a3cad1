/** Kconfig fragments (the wishes) and .config files (what a kernel has). */
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { paths } from '../util/paths.js';
import { UserError } from '../util/errors.js';

export interface Wish {
  /** Symbol without the CONFIG_ prefix. */
  symbol: string;
  /** y, m, n, a number or a string (quotes kept off). */
  value: string;
  reason: string;
  fragment: string;
  line: number;
}

const ASSIGN = /^CONFIG_([A-Za-z0-9_]+)=(.*)$/;
const UNSET = /^# CONFIG_([A-Za-z0-9_]+) is not set\s*$/;

const unquote = (v: string) => (v.startsWith('"') && v.endsWith('"') ? v.slice(1, -1) : v);

/** Parses a fragment: each wish's reason is the comment block right above it. */
export function parseFragment(text: string, name: string): Wish[] {
  const wishes: Wish[] = [];
  let comment: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    const a = ASSIGN.exec(line);
    const u = UNSET.exec(line);
    if (a || u) {
      wishes.push({ symbol: (a ?? u)![1]!, value: a ? unquote(a[2]!.trim()) : 'n', reason: comment.join(' '), fragment: name, line: i + 1 });
      return; // consecutive wishes share the comment above them
    }
    if (line.startsWith('#')) {
      if (comment.length && wishes.length && wishes[wishes.length - 1]!.line === i) comment = [];
      comment.push(line.replace(/^#\s?/, ''));
    } else if (line === '') comment = [];
    else throw new UserError(`${name}:${i + 1}: not a Kconfig line: "${line}" (expected CONFIG_X=value or "# CONFIG_X is not set")`, 2);
  });
  return wishes;
}

/** Finds fragments by name (kernel-configs/<name>.config) or path. */
export function fragmentPath(ref: string): string {
  for (const p of [ref, join(paths.kernelConfigs, ref), join(paths.kernelConfigs, `${ref}.config`)]) if (existsSync(p) && p.endsWith('.config')) return p;
  throw new UserError(`no kernel config fragment "${ref}" (looked in ${paths.kernelConfigs})`, 2);
}

export async function loadFragments(refs: string[]): Promise<Wish[]> {
  const out: Wish[] = [];
  for (const r of refs) {
    const p = fragmentPath(r);
    out.push(...parseFragment(await readFile(p, 'utf8'), basename(p)));
  }
  return out;
}

/** A .config: symbol → value ("n" for "is not set"); symbols not mentioned are absent. */
export function parseConfig(text: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const a = ASSIGN.exec(line);
    if (a) m.set(a[1]!, unquote(a[2]!.trim()));
    else {
      const u = UNSET.exec(line);
      if (u) m.set(u[1]!, 'n');
    }
  }
  return m;
}

export async function readConfig(file: string): Promise<Map<string, string>> {
  const m = parseConfig(await readConfigText(file));
  if (m.size === 0) throw new UserError(`${file} does not look like a kernel .config (no CONFIG_ lines)`, 2);
  return m;
}

/** The text of a .config, plain or compressed (.xz, .gz: /proc/config.gz, Debian's linux-config). */
export async function readConfigText(file: string): Promise<string> {
  if (!existsSync(file)) throw new UserError(`no such kernel config: ${file}`, 2);
  let text: string;
  if (file.endsWith('.xz')) {
    const { run } = await import('../util/exec.js');
    text = (await run(['xz', '-dc', file])).stdout;
  } else if (file.endsWith('.gz')) {
    const { gunzipSync } = await import('node:zlib');
    text = gunzipSync(await readFile(file)).toString('utf8');
  } else text = await readFile(file, 'utf8');
  return text;
}
