/** Renders a templates/ subtree with handlebars into a target directory. */
import Handlebars from 'handlebars';
import { mkdir, readdir, readFile, writeFile, stat, chmod, lstat, unlink } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';

const hb = Handlebars.create();
hb.registerHelper('eq', (a: unknown, b: unknown) => a === b);
hb.registerHelper('join', (a: unknown, sep: unknown) => (Array.isArray(a) ? a.join(typeof sep === 'string' ? sep : ' ') : ''));

export interface RenderedFile {
  /** Path relative to the target root. */
  path: string;
  content: string;
  mode: number;
}

async function walk(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...(await walk(p)));
    else if (e.name.endsWith('.hbs')) out.push(p);
  }
  return out.sort();
}

/**
 * Renders every `*.hbs` under `dir`; the output path is the template's path without `.hbs`.
 * A template that renders to nothing but whitespace is skipped (how optional files are expressed).
 */
export async function renderTree(dir: string, context: object): Promise<RenderedFile[]> {
  const files: RenderedFile[] = [];
  for (const t of await walk(dir)) {
    const src = await readFile(t, 'utf8');
    let content: string;
    try {
      content = hb.compile(src, { noEscape: true, strict: true })(context);
    } catch (e) {
      throw new Error(`template ${relative(dir, t)}: ${(e as Error).message}`);
    }
    if (content.trim() === '') continue;
    content = content.replace(/^\n+/, '').replace(/\n{3,}/g, '\n\n');
    if (!content.endsWith('\n')) content += '\n';
    const mode = (await stat(t)).mode & 0o777;
    files.push({ path: relative(dir, t).slice(0, -'.hbs'.length), content, mode: mode & 0o111 ? 0o755 : 0o644 });
  }
  return files;
}

export async function writeRendered(files: RenderedFile[], root: string): Promise<void> {
  for (const f of files) {
    const p = join(root, f.path);
    await mkdir(dirname(p), { recursive: true });
    // A template replaces what is at its path; it never writes through a symlink (an alternatives link).
    if ((await lstat(p).catch(() => undefined))?.isSymbolicLink()) await unlink(p);
    await writeFile(p, f.content);
    await chmod(p, f.mode);
  }
}
