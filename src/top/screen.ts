/**
 * The screen of `aios top` as a pure function: snapshot + view + terminal size → lines of styled
 * segments; `toAnsi` turns a line into exactly `width` columns of text (with SGR colours unless
 * NO_COLOR). Nothing here touches the terminal.
 */
import { HELP } from './keys.js';
import { modelCpus, selectedModel, visibleModels, type Snapshot, type TopModel, type View } from './model.js';

export type Style = 'bold' | 'dim' | 'green' | 'yellow' | 'red' | 'cyan' | 'inverse' | 'head';
export interface Seg {
  t: string;
  s?: Style;
}
export type Line = Seg[];

const SGR: Record<Style, string> = { bold: '1', dim: '2', green: '32', yellow: '33', red: '1;31', cyan: '36', inverse: '7', head: '1;7' };

/** One line as exactly `width` columns: cut or padded with spaces; SGR colours when `color`. */
export function toAnsi(line: Line, width: number, color: boolean): string {
  let left = width;
  let out = '';
  let lastStyle: Style | undefined;
  for (const seg of line) {
    if (left <= 0) break;
    const t = [...seg.t].slice(0, left).join('');
    left -= [...t].length;
    if (color && seg.s) out += `\x1b[${SGR[seg.s]}m${t}\x1b[0m`;
    else out += t;
    lastStyle = seg.s;
  }
  const pad = ' '.repeat(Math.max(0, left));
  // an inverse (selected or header) line keeps its background to the edge
  return color && (lastStyle === 'inverse' || lastStyle === 'head') && pad ? `${out}\x1b[${SGR[lastStyle]}m${pad}\x1b[0m` : out + pad;
}

/** The plain text of a line (tests, `--once`). */
export const plain = (line: Line): string => line.map((s) => s.t).join('');

/** Sizes in few columns: 900K, 54M, 1.2G. */
export function short(bytes: number): string {
  if (!bytes) return '-';
  const u = ['B', 'K', 'M', 'G', 'T'];
  let v = bytes;
  let i = 0;
  while (v >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)}${u[i]}`;
}

export function duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(s / 3600);
  return h < 48 ? `${h}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : `${Math.floor(h / 24)}d${h % 24}h`;
}

const ms = (v: number): string => (!v ? '-' : v < 1000 ? `${Math.round(v)}ms` : `${(v / 1000).toFixed(v < 10_000 ? 1 : 0)}s`);

function idle(m: TopModel, now: number): string {
  if (m.gone) return '-';
  if (m.pinned) return 'pinned';
  const t = Number(m.idle_until_unix_ms);
  if (!t) return '-';
  const s = Math.max(0, Math.round((t - now) / 1000));
  return s < 120 ? `in ${s}s` : `in ${Math.round(s / 60)}m`;
}

const stateStyle = (m: TopModel): Style | undefined =>
  m.gone ? 'dim' : m.state === 'ready' ? 'green' : m.state === 'failed' ? 'red' : m.state === 'stopped' ? 'dim' : 'yellow';

const PRIOS = ['system', 'realtime', 'default', 'batch'];

interface Col {
  title: string;
  width: number;
  right?: boolean;
  cell: (m: TopModel, now: number) => Seg;
}

/** A model's LoRA adapters as `aios ps` shows them: names, one not loaded marked "!" (refused, or added after the start). */
export const adapterList = (m: TopModel): string => (m.adapters ?? []).map((a) => `${a.name}${a.loaded ? '' : '!'}`).join(',') || '-';

/** A model's saved sessions: how many, and the bytes their KV states take ("-" for none). */
export const sessionCell = (m: TopModel): string => (m.sessions ? `${m.sessions} ${short(Number(m.session_bytes))}` : '-');

/** The width from which the adapter and session columns are shown (where any model has some). */
export const LORA_WIDTH = 154;

/**
 * The table's columns for a width: the narrow set fits 80 columns; wider terminals get more; from
 * LORA_WIDTH, the adapter and session columns too, when any model has adapters or saved sessions
 * (as `aios ps` adds them).
 */
function columns(width: number, models: TopModel[]): Col[] {
  const wide = width >= 130;
  const lora = width >= LORA_WIDTH && models.some((m) => m.adapters?.length || m.sessions);
  const cols: Col[] = [
    { title: 'LEVEL', width: wide ? 11 : 5, cell: (m) => ({ t: wide ? m.level || '-' : ({ operational: 'oper', tactical: 'tact', strategic: 'strt' } as Record<string, string>)[m.level] ?? '-' }) },
    { title: 'STATE', width: 10, cell: (m) => ({ t: m.state, s: stateStyle(m) }) },
    ...(wide ? [{ title: 'PIN', width: 3, cell: (m: TopModel) => ({ t: m.pinned ? 'yes' : '-' }) }] : []),
    { title: 'SLOTS', width: 5, right: true, cell: (m) => ({ t: m.gone ? '-' : `${m.inflight}/${m.parallel}`, s: m.inflight > 0 ? 'cyan' : undefined }) },
    {
      title: wide ? 'QUEUE s/r/d/b' : 'QUEUE',
      width: wide ? 13 : 7,
      right: true,
      cell: (m) => ({ t: m.gone ? '-' : PRIOS.map((p) => m.queued_by_priority?.[p] ?? 0).join('/'), s: m.queued > 0 ? 'yellow' : undefined }),
    },
    { title: 'TOK/S', width: 6, right: true, cell: (m) => ({ t: m.gone ? '-' : m.tokens_per_second.toFixed(m.tokens_per_second < 100 ? 1 : 0), s: m.tokens_per_second > 0 ? 'cyan' : undefined }) },
    { title: 'TTFT', width: 6, right: true, cell: (m) => ({ t: ms(m.ttft_p50_ms) }) },
    { title: wide ? 'RAM est/meas' : 'RAM est/meas', width: 12, right: true, cell: (m) => ({ t: `${short(Number(m.estimate_bytes))}/${short(Number(m.actual_bytes))}` }) },
    ...(wide
      ? [
          { title: 'ERR', width: 6, right: true, cell: (m: TopModel) => ({ t: m.actual_bytes ? `${m.estimate_error_pct >= 0 ? '+' : ''}${m.estimate_error_pct.toFixed(1)}%` : '-' }) },
          { title: 'RSS', width: 5, right: true, cell: (m: TopModel) => ({ t: short(Number(m.memory_bytes)) }) },
          { title: 'PID', width: 7, right: true, cell: (m: TopModel) => ({ t: m.pid ? String(m.pid) : '-' }) },
          { title: 'RST', width: 3, right: true, cell: (m: TopModel) => ({ t: String(m.restarts), s: m.restarts > 0 ? ('yellow' as Style) : undefined }) },
          { title: 'UP', width: 6, right: true, cell: (m: TopModel) => ({ t: m.uptime_ms ? duration(Number(m.uptime_ms)) : '-' }) },
        ]
      : []),
    ...(lora
      ? [
          { title: 'ADAPTERS', width: 13, cell: (m: TopModel) => ({ t: adapterList(m), s: m.adapters?.some((a) => !a.loaded) ? ('yellow' as Style) : undefined }) },
          { title: 'SESSIONS', width: 9, right: true, cell: (m: TopModel) => ({ t: sessionCell(m) }) },
        ]
      : []),
    { title: 'IDLE', width: 7, right: true, cell: (m, now) => ({ t: idle(m, now) }) },
  ];
  return cols;
}

const fit = (t: string, w: number, right = false) => {
  const c = [...t];
  const cut = c.length > w ? c.slice(0, Math.max(0, w - 1)).join('') + (w > 0 ? '~' : '') : t;
  return right ? cut.padStart(w) : cut.padEnd(w);
};

/** The model table: header + one line per model (selected one marked with '>' and inverse). */
export function modelTable(models: TopModel[], view: View, width: number, rows: number, now: number): Line[] {
  const cols = columns(width, models);
  const fixed = cols.reduce((a, c) => a + c.width + 1, 0);
  const nameW = Math.max(8, width - 2 - fixed);
  const head: Line = [{ t: '  ' + fit('MODEL', nameW) + cols.map((c) => ' ' + fit(c.title, c.width, c.right)).join(''), s: 'head' }];
  const v = visibleModels(models, view.filter);
  if (!v.length) return [head, [{ t: models.length ? `  no model matches "${view.filter}"` : '  no model loaded (l loads one)', s: 'dim' }]];
  const sel = selectedModel(models, view);
  const avail = Math.max(1, rows - 1);
  const idx = Math.max(0, v.findIndex((m) => m === sel));
  const more = v.length > avail;
  const room = more ? avail - 1 : avail;
  const start = Math.min(Math.max(0, idx - room + 1), Math.max(0, v.length - room));
  const lines: Line[] = [head];
  for (const m of v.slice(start, start + room)) {
    const picked = m === sel;
    const segs: Line = [{ t: picked ? '> ' : '  ' }, { t: fit(m.name, nameW), s: m.gone ? 'dim' : 'bold' }];
    for (const c of cols) {
      const cell = c.cell(m, now);
      segs.push({ t: ' ' }, { t: fit(cell.t, c.width, c.right), s: cell.s });
    }
    lines.push(picked ? [{ t: plain(segs), s: 'inverse' }] : segs);
  }
  if (more) lines.push([{ t: `  … ${v.length - room} more (up/down, / filter)`, s: 'dim' }]);
  return lines;
}

/** `[#####.....]`, n cells, fraction f (0–1). */
export function bar(f: number, n: number): string {
  const k = Math.round(Math.min(1, Math.max(0, f)) * n);
  return '#'.repeat(k) + '.'.repeat(n - k);
}
const level = (f: number): Style => (f >= 0.9 ? 'red' : f >= 0.7 ? 'yellow' : 'green');

/** The machine lines: memory budget bar, CPU per core, load and zram. */
export function machineLines(s: Snapshot, width: number): Line[] {
  const h = s.health;
  const lines: Line[] = [];
  const used = Number(h?.memory_used_bytes ?? 0);
  const budget = Number(h?.memory_budget_bytes ?? 0);
  const total = s.machine?.memTotalBytes ?? 0;
  const text = ` ${short(used)} used / ${budget ? short(budget) : 'no'} budget${total ? ` / ${short(total)} total` : ''}${s.machine ? `, ${short(s.machine.memAvailableBytes)} available` : ''}`;
  const n = Math.max(10, Math.min(50, width - 7 - text.length));
  const f = budget ? used / budget : 0;
  lines.push([{ t: 'mem  [' }, { t: bar(f, n), s: level(f) }, { t: ']' + text }]);
  // GPU memory, where the runtime budgets it (a GPU configured or found).
  const vbudget = Number(h?.vram_budget_bytes ?? 0);
  if (vbudget > 0) {
    const vused = Number(h?.vram_used_bytes ?? 0);
    const vtext = ` ${short(vused)} used / ${short(vbudget)} budget`;
    const vf = vused / vbudget;
    lines.push([{ t: 'vram [' }, { t: bar(vf, Math.max(10, Math.min(50, width - 7 - vtext.length))), s: level(vf) }, { t: ']' + vtext }]);
  }
  if (s.spend?.length) {
    const line: Line = [{ t: 'cloud' }];
    for (const p of s.spend) {
      const frac = p.budgetUsd ? p.spentUsd / p.budgetUsd : 0;
      line.push({ t: `  ${p.name} ` }, { t: `$${p.spentUsd.toFixed(2)}`, s: level(frac) }, { t: ` of $${p.budgetUsd.toFixed(2)}` });
      if (p.unavailable) line.push({ t: ` (${p.unavailable})`, s: 'yellow' });
    }
    lines.push(line);
  }
  const m = s.machine;
  if (!m) {
    lines.push([{ t: 'cpu, load, zram: not shown for a remote runtime (this host\'s /proc would be the wrong machine)', s: 'dim' }]);
    return lines;
  }
  // CPU: a bar per core when they fit on a line or two, else one level character per core; the
  // cores the model children may run on (their cpusets, from ListModels) are marked
  const cells = m.cpuBusy.map((c, i) => ({ i, c }));
  const marked = modelCpus(s.models);
  const legend = marked.size ? '  *: model cores' : '';
  const cell = 12; // "00[#####]99%"
  const perLine = Math.max(1, Math.floor((width - 5) / (cell + 1)));
  if (cells.length <= perLine * 2) {
    for (let k = 0; k < cells.length; k += perLine) {
      const line: Line = [{ t: k ? '     ' : 'cpu  ' }];
      for (const { i, c } of cells.slice(k, k + perLine)) {
        const mark = marked.has(i) ? '*' : ' ';
        line.push({ t: `${String(i).padStart(2)}[` }, { t: bar(c ?? 0, 5), s: level(c ?? 0) }, { t: `]${c == null ? '  -' : String(Math.round(c * 100)).padStart(3)}%` }, { t: mark, s: marked.has(i) ? 'cyan' : undefined });
      }
      if (k + perLine >= cells.length && legend && plain(line).length + legend.length <= width) line.push({ t: legend, s: 'dim' });
      lines.push(line);
    }
  } else {
    const chars = ' .:-=+*#%@';
    const head = `cpu ${cells.length} cores [`;
    const line: Line = [{ t: head }];
    for (const { c } of cells) line.push({ t: chars[Math.min(9, Math.round((c ?? 0) * 9))]!, s: level(c ?? 0) });
    line.push({ t: ']' });
    lines.push(line);
    if (marked.size) lines.push([{ t: ' '.repeat(head.length) + cells.map(({ i }) => (marked.has(i) ? '*' : ' ')).join('') }, { t: legend.slice(1), s: 'dim' }]);
  }
  const zram = m.zram.length
    ? m.zram.map((z) => `${z.device} ${short(z.origBytes)} in ${short(z.usedBytes)} of ${short(z.diskBytes)}`).join(', ')
    : 'zram off';
  lines.push([{ t: `load ${m.load.map((x) => x.toFixed(2)).join(' ')}   ${zram}` }]);
  return lines;
}

function header(s: Snapshot, width: number): Line {
  const time = new Date(s.at).toTimeString().slice(0, 8);
  const h = s.health;
  const left: Line = [{ t: 'aios top ', s: 'bold' }, { t: s.address + '  ' }];
  if (!s.connected) left.push(s.error ? { t: `disconnected, retrying (${s.error})`, s: 'red' } : { t: 'connecting…', s: 'yellow' });
  else if (h) {
    left.push({ t: h.status, s: h.ready ? 'green' : 'yellow' }, { t: `  up ${duration(Number(h.uptime_ms))}  ${h.models_ready} ready  ${h.queued} waiting` });
  }
  // the time goes first when the line is too long, then a long address gives way (its end is kept:
  // the socket's or host's name), never the figures; disconnected, the reason is what gets cut
  const over = plain(left).length - width;
  if (over > 0 && s.connected && s.address.length > 12) left[1] = { t: '…' + s.address.slice(Math.min(s.address.length - 11, over + 1)) + '  ' };
  const used = plain(left).length;
  if (used + time.length + 1 <= width) left.push({ t: ' '.repeat(width - used - time.length) + time });
  return left;
}

function footer(view: View, s: Snapshot, width: number): Line[] {
  const sel = selectedModel(s.models, view);
  // the chosen model's error, else why one of its adapters was refused (as `aios ps` lists them)
  const refused = sel?.adapters?.find((a) => a.refused);
  const st =
    view.status ??
    (sel?.error ? { text: `${sel.name}: ${sel.error}`, kind: 'error' as const } : refused ? { text: `${sel!.name}: adapter ${refused.name} refused: ${refused.refused}`, kind: 'error' as const } : undefined);
  const status: Line = st ? [{ t: st.text, s: st.kind === 'error' ? 'red' : st.kind === 'ok' ? 'green' : undefined }] : [{ t: '' }];
  const mode = view.mode;
  let keys: Line;
  if (mode.kind === 'prompt') keys = [{ t: mode.purpose === 'load' ? 'load model: ' : 'filter: ', s: 'bold' }, { t: mode.text + '_' }, { t: '   Enter ok, Esc cancel', s: 'dim' }];
  else if (mode.kind === 'confirm') keys = [{ t: `${mode.action} ${mode.model}? `, s: 'bold' }, { t: mode.action === 'unload' ? 'requests on it fail ' : 'requests on it fail; it loads again ' }, { t: '(y/n)', s: 'bold' }];
  else {
    const all = 'l load  u unload  r restart  p pin  / filter  ? help  q quit';
    keys = [{ t: width >= all.length + 20 ? `${all}   every ${s.intervalMs / 1000}s${view.filter ? `  filter "${view.filter}"` : ''}` : all, s: 'dim' }];
    if (view.filter && width < all.length + 20) status.push({ t: `  [filter "${view.filter}"]`, s: 'dim' });
  }
  return [status, keys];
}

/** The whole screen: exactly `height` lines (fewer only if the terminal is smaller than the fixed parts). */
export function render(s: Snapshot, view: View, width: number, height: number): Line[] {
  const top = [header(s, width)];
  // the help takes the machine lines' room too (it fits 80×24 whole)
  const bottom = [...(view.help ? [] : machineLines(s, width)), ...footer(view, s, width)];
  const rows = Math.max(2, height - top.length - bottom.length - 1);
  let middle: Line[];
  if (view.help) middle = HELP.slice(0, rows).map((t) => [{ t }]);
  else middle = modelTable(s.models, view, width, rows, s.at);
  while (middle.length < rows) middle.push([{ t: '' }]);
  return [...top, ...middle, [{ t: '' }], ...bottom].slice(0, Math.max(height, 1));
}
