/**
 * Just enough of Kconfig to explain why a wish did not survive `make olddefconfig`: which symbols
 * exist, their `depends on` (including enclosing if/menu/choice conditions), prompts, choices and
 * reverse selects. Only the generic and x86 parts of arch/ are read.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';

export interface SymbolDef {
  name: string;
  deps: string[];
  /** Has a prompt: a user (or a fragment) can set it. Without one its value only follows from defaults. */
  prompt: boolean;
  choice?: number;
  files: string[];
}

export interface KconfigDb {
  symbols: Map<string, SymbolDef>;
  /** Choice id → member symbols. */
  choices: Map<number, string[]>;
  /** Symbol → symbols that `select` it. */
  selectedBy: Map<string, string[]>;
}

async function kconfigFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(d: string): Promise<void> {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const rel = relative(root, p);
      if (e.isDirectory()) {
        if (rel === 'Documentation' || rel === 'tools' || rel === 'scripts' || rel.startsWith('.')) continue;
        if (rel.startsWith('arch/') && rel.split('/').length === 2 && rel !== 'arch/x86') continue;
        await walk(p);
      } else if (e.name.startsWith('Kconfig')) out.push(p);
    }
  }
  await walk(root);
  return out.sort();
}

export async function readKconfig(root: string): Promise<KconfigDb> {
  const db: KconfigDb = { symbols: new Map(), choices: new Map(), selectedBy: new Map() };
  let choiceId = 0;
  for (const file of await kconfigFiles(root)) {
    const lines = (await readFile(file, 'utf8')).replace(/\\\n/g, ' ').split('\n');
    // Stack of enclosing blocks: each holds its conditions (if EXPR, menu/choice depends on).
    const blocks: { kind: 'if' | 'menu' | 'choice'; conds: string[]; choice?: number }[] = [];
    let cur: SymbolDef | undefined;
    let inHelp = false;
    let helpIndent = -1;
    for (const raw of lines) {
      if (inHelp) {
        const indent = raw.length - raw.trimStart().length;
        if (raw.trim() === '') continue;
        if (helpIndent < 0) helpIndent = indent;
        if (indent >= helpIndent && indent > 0) continue;
        inHelp = false;
        helpIndent = -1;
      }
      const line = raw.replace(/#.*$/, '').trim();
      if (!line) continue;
      const [kw, ...restParts] = line.split(/\s+/);
      const rest = restParts.join(' ');
      if (kw === 'config' || kw === 'menuconfig') {
        const name = rest.trim();
        const inChoice = [...blocks].reverse().find((b) => b.kind === 'choice');
        const enclosing = blocks.flatMap((b) => b.conds);
        const existing = db.symbols.get(name);
        cur = { name, deps: [...enclosing], prompt: false, choice: inChoice?.choice, files: [relative(root, file)] };
        if (existing) {
          // Defined in several places: any definition may apply (OR of their conditions).
          existing.files.push(relative(root, file));
          existing.deps = existing.deps.length && cur.deps.length ? [`(${existing.deps.join(' && ')}) || (${cur.deps.join(' && ')})`] : [];
          cur = existing;
          (cur as SymbolDef & { merging?: boolean }).merging = true;
        } else db.symbols.set(name, cur);
        if (inChoice?.choice !== undefined) db.choices.get(inChoice.choice)!.push(name);
        continue;
      }
      if (kw === 'choice') {
        choiceId++;
        db.choices.set(choiceId, []);
        blocks.push({ kind: 'choice', conds: [], choice: choiceId });
        cur = undefined;
        continue;
      }
      if (kw === 'endchoice' || kw === 'endmenu' || kw === 'endif') {
        blocks.pop();
        cur = undefined;
        continue;
      }
      if (kw === 'if') {
        blocks.push({ kind: 'if', conds: [rest] });
        cur = undefined;
        continue;
      }
      if (kw === 'menu') {
        blocks.push({ kind: 'menu', conds: [] });
        cur = undefined;
        continue;
      }
      if (kw === 'comment' || kw === 'source' || kw === 'mainmenu') {
        cur = undefined;
        continue;
      }
      if (kw === 'help' || kw === '---help---') {
        inHelp = true;
        continue;
      }
      if (line.startsWith('depends on')) {
        const expr = line.slice('depends on'.length).trim();
        if (cur && !(cur as SymbolDef & { merging?: boolean }).merging) cur.deps.push(expr);
        else if (!cur && blocks.length) blocks[blocks.length - 1]!.conds.push(expr);
        continue;
      }
      if (cur && /^(bool|tristate|string|int|hex|prompt)\s+"/.test(line)) cur.prompt = true;
      if (cur && kw === 'select') {
        const target = rest.split(/\s+/)[0]!;
        const list = db.selectedBy.get(target) ?? [];
        list.push(cur.name);
        db.selectedBy.set(target, list);
      }
    }
  }
  for (const s of db.symbols.values()) delete (s as SymbolDef & { merging?: boolean }).merging;
  return db;
}

type Tri = 0 | 1 | 2;

/** Evaluates a Kconfig expression against a .config (n = 0, m = 1, y = 2). */
export function evalExpr(expr: string, cfg: Map<string, string>): Tri {
  const toks = expr.match(/"[^"]*"|&&|\|\||!=|<=|>=|[()!=<>]|[A-Za-z0-9_]+/g) ?? [];
  let i = 0;
  const val = (t: string): string => (t.startsWith('"') ? t.slice(1, -1) : t === 'y' || t === 'm' || t === 'n' ? t : /^[0-9]+$/.test(t) ? t : (cfg.get(t) ?? 'n'));
  const tri = (v: string): Tri => (v === 'y' ? 2 : v === 'm' ? 1 : 0);
  function primary(): Tri {
    const t = toks[i++];
    if (t === '!') return (2 - primary()) as Tri;
    if (t === '(') {
      const v = or();
      i++; // )
      return v;
    }
    const op = toks[i];
    if (op === '=' || op === '!=' || op === '<' || op === '>' || op === '<=' || op === '>=') {
      i++;
      const a = val(t!);
      const b = val(toks[i++]!);
      const na = Number(a);
      const nb = Number(b);
      const numeric = !Number.isNaN(na) && !Number.isNaN(nb);
      const r = op === '=' ? a === b : op === '!=' ? a !== b : numeric ? (op === '<' ? na < nb : op === '>' ? na > nb : op === '<=' ? na <= nb : na >= nb) : false;
      return r ? 2 : 0;
    }
    return tri(val(t!));
  }
  function and(): Tri {
    let v = primary();
    while (toks[i] === '&&') {
      i++;
      v = Math.min(v, primary()) as Tri;
    }
    return v;
  }
  function or(): Tri {
    let v = and();
    while (toks[i] === '||') {
      i++;
      v = Math.max(v, and()) as Tri;
    }
    return v;
  }
  return or();
}

/** The dependencies of a symbol that are not met, each with the symbols in it that are off. */
export function unmetDeps(def: SymbolDef, cfg: Map<string, string>): { expr: string; off: string[] }[] {
  return def.deps
    .filter((d) => evalExpr(d, cfg) === 0)
    .map((d) => ({ expr: d, off: [...new Set((d.match(/[A-Z][A-Z0-9_]+/g) ?? []).filter((s) => (cfg.get(s) ?? 'n') === 'n'))] }));
}
