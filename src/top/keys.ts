/**
 * Keys of `aios top`, pure: a key and the view in, the next view and at most one action out. The
 * actions (load, unload, restart, pin) are carried out by app.ts through the runtime's API; their result
 * comes back as the status line.
 */
import { selectedModel, visibleModels, type TopModel, type View } from './model.js';

export type Key = string;

export type Action = { kind: 'quit' } | { kind: 'load'; model: string } | { kind: 'unload'; model: string } | { kind: 'restart'; model: string; failed: boolean } | { kind: 'pin'; model: string; pinned: boolean };

export const KEY = { up: 'up', down: 'down', enter: 'enter', esc: 'esc', backspace: 'backspace', ctrlC: 'ctrl-c', pageUp: 'pgup', pageDown: 'pgdn', home: 'home', end: 'end' } as const;

/** Splits raw terminal input into keys: escape sequences (arrows…), control keys, characters. */
export function parseKeys(data: string): Key[] {
  const keys: Key[] = [];
  const seq: Record<string, Key> = { '[A': KEY.up, '[B': KEY.down, OA: KEY.up, OB: KEY.down, '[5~': KEY.pageUp, '[6~': KEY.pageDown, '[H': KEY.home, '[F': KEY.end, '[1~': KEY.home, '[4~': KEY.end };
  for (let i = 0; i < data.length; i++) {
    const c = data[i]!;
    if (c === '\x1b') {
      const m = /^(\[[0-9;]*[A-Za-z~]|O[A-Za-z])/.exec(data.slice(i + 1));
      if (m) {
        if (seq[m[1]!]) keys.push(seq[m[1]!]!);
        i += m[1]!.length;
      } else keys.push(KEY.esc);
    } else if (c === '\r' || c === '\n') keys.push(KEY.enter);
    else if (c === '\x7f' || c === '\b') keys.push(KEY.backspace);
    else if (c === '\x03') keys.push(KEY.ctrlC);
    else if (c >= ' ') keys.push(c);
  }
  return keys;
}

export const HELP = [
  'aios top: a live view of aios-runtime, and its controls',
  '',
  '  up/down, j/k   choose a model',
  '  l              load a model (asks for the name; the chosen one is filled in)',
  '  u              unload the chosen model (asks y/n; requests on it fail)',
  '  r              restart the chosen model: load a failed one again, or unload + load (asks y/n)',
  '  p              pin/unpin the chosen model (pinned: never evicted nor unloaded for idleness;',
  '                 the operational model and always_loaded layers are pinned by the config)',
  '  /              filter by name, level or state (Enter keeps it, Esc clears it)',
  '  ?              this help (any key closes it)',
  '  q, Ctrl-C      quit',
  '',
  'QUEUE is requests waiting per priority: system/realtime/default/batch.',
  'TOK/S: tokens generated per second over the last 10 s; TTFT: median time to first token',
  'over the last minute (both from the runtime; a generation counts when it ends).',
  'RAM: estimate before the load / measured after it. IDLE: when it unloads for idleness.',
  'Wide: ADAPTERS (LoRA, "!" = not loaded), SESSIONS (saved ones, their KV bytes).',
  'cpu: * marks the cores the model children may run on (their cpusets).',
];

const move = (models: TopModel[], view: View, by: number): View => {
  const v = visibleModels(models, view.filter);
  if (!v.length) return view;
  const cur = Math.max(0, v.findIndex((m) => m.name === selectedModel(models, view)?.name));
  const next = Math.min(v.length - 1, Math.max(0, cur + by));
  return { ...view, selected: v[next]!.name };
};

/** The next view after `key`, and the action it asks for (if any). */
export function onKey(view: View, key: Key, models: TopModel[]): { view: View; action?: Action } {
  const mode = view.mode;
  if (key === KEY.ctrlC) return { view, action: { kind: 'quit' } };
  if (view.help) return { view: { ...view, help: false } };
  if (mode.kind === 'prompt') {
    if (key === KEY.esc) return { view: { ...view, mode: { kind: 'normal' }, ...(mode.purpose === 'filter' ? { filter: '' } : {}), status: mode.purpose === 'load' ? { text: 'load cancelled', kind: 'info' } : view.status } };
    if (key === KEY.enter) {
      const text = mode.text.trim();
      if (mode.purpose === 'filter') return { view: { ...view, mode: { kind: 'normal' }, filter: text } };
      if (!text) return { view: { ...view, mode: { kind: 'normal' }, status: { text: 'load: no model name given', kind: 'error' } } };
      return { view: { ...view, mode: { kind: 'normal' }, selected: text, status: { text: `loading ${text}…`, kind: 'info' } }, action: { kind: 'load', model: text } };
    }
    const text = key === KEY.backspace ? mode.text.slice(0, -1) : key.length === 1 ? mode.text + key : mode.text;
    return { view: { ...view, mode: { ...mode, text }, ...(mode.purpose === 'filter' ? { filter: text } : {}) } };
  }
  if (mode.kind === 'confirm') {
    const back: View = { ...view, mode: { kind: 'normal' } };
    if (key !== 'y' && key !== 'Y') return { view: { ...back, status: { text: `${mode.action} ${mode.model}: cancelled`, kind: 'info' } } };
    if (mode.action === 'unload') return { view: { ...back, status: { text: `unloading ${mode.model}…`, kind: 'info' } }, action: { kind: 'unload', model: mode.model } };
    return { view: { ...back, status: { text: `restarting ${mode.model}…`, kind: 'info' } }, action: { kind: 'restart', model: mode.model, failed: false } };
  }
  const sel = selectedModel(models, view);
  switch (key) {
    case 'q':
      return { view, action: { kind: 'quit' } };
    case '?':
      return { view: { ...view, help: true } };
    case KEY.up:
    case 'k':
      return { view: move(models, view, -1) };
    case KEY.down:
    case 'j':
      return { view: move(models, view, 1) };
    case KEY.pageUp:
    case KEY.home:
      return { view: move(models, view, -1e6) };
    case KEY.pageDown:
    case KEY.end:
      return { view: move(models, view, 1e6) };
    case '/':
      return { view: { ...view, mode: { kind: 'prompt', purpose: 'filter', text: view.filter } } };
    case KEY.esc:
      return { view: { ...view, filter: '' } };
    case 'l':
      return { view: { ...view, mode: { kind: 'prompt', purpose: 'load', text: sel?.name ?? '' } } };
    case 'u':
      if (!sel || sel.gone) return { view: { ...view, status: { text: sel ? `${sel.name} is not loaded` : 'no model to unload', kind: 'error' } } };
      return { view: { ...view, selected: sel.name, mode: { kind: 'confirm', action: 'unload', model: sel.name } } };
    case 'r':
      if (!sel) return { view: { ...view, status: { text: 'no model to restart', kind: 'error' } } };
      if (sel.state === 'failed' || sel.gone) return { view: { ...view, selected: sel.name, status: { text: `loading ${sel.name}…`, kind: 'info' } }, action: { kind: 'restart', model: sel.name, failed: true } };
      return { view: { ...view, selected: sel.name, mode: { kind: 'confirm', action: 'restart', model: sel.name } } };
    case 'p':
      if (!sel || sel.gone) return { view: { ...view, status: { text: sel ? `pin ${sel.name}: it is not loaded (load it with l first)` : 'no model to pin', kind: 'error' } } };
      return { view: { ...view, selected: sel.name, status: { text: `${sel.pinned ? 'unpinning' : 'pinning'} ${sel.name}…`, kind: 'info' } }, action: { kind: 'pin', model: sel.name, pinned: !sel.pinned } };
    default:
      return { view };
  }
}
