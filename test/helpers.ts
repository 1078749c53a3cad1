import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';

export const REPO = join(import.meta.dirname, '..');

/** The temp dirs this test file made: test/setup.ts removes them after the file's own afterAll hooks. */
export const made: string[] = [];

export function tmp(prefix = 'aios-test-'): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  made.push(d);
  return d;
}

/** Writes recipe files into a temp dir and returns their paths. */
export function recipes(files: Record<string, string>): Record<string, string> {
  const d = tmp('aios-recipes-');
  const out: Record<string, string> = {};
  for (const [name, text] of Object.entries(files)) {
    out[name] = join(d, `${name}.toml`);
    writeFileSync(out[name]!, text);
  }
  return out;
}

/** Runs the real CLI (compiled) as a user would. */
export function cli(args: string[], opts: { env?: Record<string, string> } = {}) {
  return execa('node', [join(REPO, 'bin/aios.js'), ...args], { reject: false, env: opts.env, cwd: REPO });
}
