/**
 * Every relative link in README.md and docs/*.md points at a file that exists, and every
 * `#anchor` (in the same file or another Markdown file) at a heading there, with GitHub's rule for
 * heading anchors. Links inside code blocks and inline code are not links; http(s) and mailto
 * links are not checked (no network in the tests).
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';

const REPO = resolve(import.meta.dirname, '..', '..');

/** Markdown files whose links are checked: the README and every file in docs/. */
function markdownFiles(): string[] {
  const docs = readdirSync(join(REPO, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => join(REPO, 'docs', f));
  return [join(REPO, 'README.md'), ...docs];
}

/** The text outside fenced code blocks, line by line (fenced lines become empty). */
function proseLines(text: string): string[] {
  let fence: string | null = null;
  return text.split('\n').map((line) => {
    const m = /^\s*(`{3,}|~{3,})/.exec(line);
    if (m) {
      if (fence === null) fence = m[1][0];
      else if (m[1][0] === fence) fence = null;
      return '';
    }
    return fence === null ? line : '';
  });
}

/** GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens. */
function slug(heading: string): string {
  return heading
    .trim()
    .replace(/<[^>]+>/g, '')
    .replace(/\[([^\]]*)\]\([^)]*\)/g, '$1')
    .toLowerCase()
    .replace(/[^\p{L}\p{N}\s_-]/gu, '')
    .replace(/\s/g, '-');
}

/** The anchors of a Markdown file's headings (a repeated heading gets -1, -2, … as on GitHub). */
function anchors(file: string): Set<string> {
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of proseLines(readFileSync(file, 'utf8'))) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n === 0 ? base : `${base}-${n}`);
  }
  return out;
}

/** Every Markdown link target in the prose of a file, with its line number. */
function links(file: string): { line: number; target: string }[] {
  const out: { line: number; target: string }[] = [];
  proseLines(readFileSync(file, 'utf8')).forEach((raw, i) => {
    const line = raw.replace(/`[^`]*`/g, '');
    for (const m of line.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) out.push({ line: i + 1, target: m[1] });
  });
  return out;
}

/** What is wrong with one link target in `file`, or null. */
function problem(file: string, target: string): string | null {
  if (/^(https?:|mailto:)/.test(target)) return null;
  const [path, anchor] = target.split('#', 2) as [string, string | undefined];
  const dest = path === '' ? file : resolve(dirname(file), decodeURI(path));
  if (!existsSync(dest)) return `no such file ${relative(REPO, dest)}`;
  if (anchor === undefined) return null;
  if (statSync(dest).isDirectory() || !dest.endsWith('.md')) return `anchor #${anchor} on a file that is not Markdown`;
  if (!anchors(dest).has(decodeURIComponent(anchor))) return `no heading for #${anchor} in ${relative(REPO, dest)}`;
  return null;
}

describe('links in README.md and docs/*.md', () => {
  it('GitHub heading anchors', () => {
    expect(slug('Writing an image to a disk: `aios flash`')).toBe('writing-an-image-to-a-disk-aios-flash');
    expect(slug('Measured on the development machine (2 cores, TCG only)')).toBe('measured-on-the-development-machine-2-cores-tcg-only');
    expect(slug('Model sandbox overhead (`npm run bench:sandbox`)')).toBe('model-sandbox-overhead-npm-run-benchsandbox');
    expect(slug('Strategic layer (cloud gateway)')).toBe('strategic-layer-cloud-gateway');
  });

  it('finds the links to check', () => {
    const readme = links(join(REPO, 'README.md')).map((l) => l.target);
    expect(readme).toContain('docs/runtime.md');
    expect(readme.length).toBeGreaterThan(10);
  });

  for (const file of markdownFiles()) {
    it(`${relative(REPO, file)}: every relative link and anchor resolves`, () => {
      const bad = links(file)
        .map((l) => ({ ...l, why: problem(file, l.target) }))
        .filter((l) => l.why !== null)
        .map((l) => `${relative(REPO, file)}:${l.line}: (${l.target}) ${l.why}`);
      expect(bad).toEqual([]);
    });
  }
});
