/**
 * Saved sessions: a conversation the runtime keeps by id (`session_id` on gRPC, `session` / the
 * `X-Session` header on HTTP), with the model's KV state for it saved after every answer through
 * llama-server's slot save, so that the next turn — after an idle unload, an eviction, a crash, a
 * daemon restart or a reboot — restores the state into its slot and only the new turn is evaluated.
 *
 * On disk, in the sessions directory (runtime.sessions_dir; llama-server's --slot-save-path):
 *   <model-sha256>/<session>        the KV state (llama-server's slot file), mode 0600
 *   <model-sha256>/<session>.json   the record: messages, model, sampling fields, the key, the KV
 *                                   file's size and sha256, the last turn's cache outcome
 *   slots/model-<name>/             each model's llama-server --slot-save-path (slotDirOf), the only
 *                                   directory its sandbox may write: _save-* / _restore-* are its
 *                                   names for a file being saved or restored (it takes only plain
 *                                   names there); a saved file is moved to <model-sha256>/<session>,
 *                                   a state to restore is hard-linked in for the restore only
 *   .model-hashes.json              sha256 of model files by (path, size, mtime, inode)
 *
 * Guarantees: a state is restored only under the key it was saved with (model file sha256, adapter
 * set, per-slot context size) and only when the file's size and sha256 match its record; anything
 * else discards the state (logged, and reported with the answer) and the whole conversation is
 * evaluated again. After a restore, the answer's own figures (timings.cache_n) must show that the
 * restored tokens were used; if not, the turn is reported as a miss with a warning (llama-server
 * has then evaluated the full prompt itself, so the answer is still right). A failed save (disk
 * full, llama-server error) is a logged warning; the request still succeeds. A save is on the disk
 * (fsync of the state, the record and their directory) before the answer returns, so it survives a
 * power cut as well as a reboot: ext4 in the image commits only every 60 s (commit=60) otherwise.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, statSync } from 'node:fs';
import { chmod, link, mkdir, open, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import { postChild, readAll } from './upstream.js';
import type { Log } from './log.js';
import { slotDirOf } from './defaults.js';
import { syncDir, syncFile } from '../util/fsync.js';

/** What a session id may be: no dots, no slashes, so never a path. */
export const SESSION_ID = /^[A-Za-z0-9_-]{1,64}$/;

export function checkSessionId(id: unknown, field = 'session_id'): string {
  if (typeof id !== 'string' || !SESSION_ID.test(id)) {
    throw new RuntimeError(Code.INVALID_ARGUMENT, `${field}: must be 1-64 characters of A-Z a-z 0-9 _ - (got ${JSON.stringify(typeof id === 'string' ? id.slice(0, 80) : id)})`);
  }
  return id;
}

/**
 * Why a session is refused on the strategic layer: a saved session is a local model's KV state,
 * and a cloud provider keeps none that the runtime could save or restore (nor would a provider
 * chosen by budget and fallback be the same model from one turn to the next).
 */
export const strategicSessionRefusal = (field: string): string =>
  `${field}: saved sessions are not available on the strategic layer: a session is a local model's KV state saved on this machine, and a cloud provider has none to save or restore; use a local model (operational, tactical or one by name) for the session, or send the whole conversation without a session`;

export interface ChatMsg {
  role: string;
  content: string;
}

/** What a saved KV state is valid for. */
export interface SessionKey {
  modelSha256: string;
  /** The adapter set, as an opaque string (the adapters' names, files and scales); "" = none. */
  adapters: string;
  /** The slot's context size in tokens. */
  ctxSize: number;
}

export type CacheOutcome = 'new' | 'hit' | 'miss' | 'discarded' | 'none';

export interface SessionRecord {
  version: 1;
  id: string;
  model: string;
  modelPath: string;
  key: SessionKey;
  messages: ChatMsg[];
  /** The sampling fields of the last turn (wire names). */
  params: Record<string, unknown>;
  /** The saved KV state, or null when none is saved (a failed save, or sessions_max_bytes = 0). */
  kv: { bytes: number; sha256: string; tokens: number } | null;
  /** Prompt tokens of the last turn: a restore must let the next turn reuse (nearly) all of them. */
  promptTokens: number;
  turns: number;
  created: string;
  updated: string;
  lastCache: CacheOutcome;
}

/** A turn in progress: what begin() found and did. */
export interface Turn {
  id: string;
  key: SessionKey;
  model: string;
  modelPath: string;
  /** The conversation so far (the new turn's messages go after it). */
  history: ChatMsg[];
  /** Tokens restored into the slot (0 = nothing restored). */
  restoredTokens: number;
  restoreMs: number;
  /** Prompt tokens of the previous turn (the least the restored cache must cover). */
  expectCached: number;
  status: CacheOutcome;
  /** Why a saved state was discarded, or other news for the client ("" = none). */
  note: string;
  created: string;
  turns: number;
}

export interface TurnResult {
  status: CacheOutcome;
  cachedTokens: number;
  note: string;
  saved: boolean;
}

export interface SessionInfo {
  id: string;
  model: string;
  modelSha256: string;
  adapters: string;
  ctxSize: number;
  turns: number;
  messages: number;
  kvBytes: number;
  kvTokens: number;
  created: string;
  updated: string;
  lastCache: CacheOutcome;
}

/** A model's saved sessions, for the model lists (ListModels, /v1/models, aios ps). */
export interface SessionCounts {
  /** Conversations kept. */
  count: number;
  /** Those with a saved KV state. */
  states: number;
  /** The bytes of those states. */
  bytes: number;
}

export interface SessionsOptions {
  dir: string;
  maxBytes: number;
  log?: Log;
  /** Why the directory cannot be used (sessions are then refused with this reason). */
  problem?: string;
}

/** A completion's timings and usage as llama-server reports them. */
export interface ReportedUse {
  cacheN?: number;
  promptN?: number;
  promptTokens?: number;
}

/** Reads llama-server's cache figures from a chat completion answer (or its last stream event). */
export function reportedUse(j: unknown): ReportedUse {
  const o = (j ?? {}) as { timings?: { cache_n?: number; prompt_n?: number }; usage?: { prompt_tokens?: number; prompt_tokens_details?: { cached_tokens?: number } } };
  const cacheN = o.timings?.cache_n ?? o.usage?.prompt_tokens_details?.cached_tokens;
  const promptN = o.timings?.prompt_n;
  // The prompt's size: usage's, else the timings' two parts (a stream without include_usage).
  return { cacheN, promptN, promptTokens: o.usage?.prompt_tokens ?? (cacheN !== undefined && promptN !== undefined ? cacheN + promptN : undefined) };
}

/**
 * Was a restored state used? The previous turn's prompt is a prefix of this one, so llama-server
 * must report at least 90 % of it as cached (the rest: the previous answer re-tokenized).
 */
export function cacheHit(expectCached: number, use: ReportedUse): boolean {
  if (expectCached <= 0) return false;
  const cached = use.cacheN ?? (use.promptTokens !== undefined && use.promptN !== undefined ? use.promptTokens - use.promptN : 0);
  return cached >= Math.floor(expectCached * 0.9);
}

export const sameKey = (a: SessionKey, b: SessionKey) => a.modelSha256 === b.modelSha256 && a.adapters === b.adapters && a.ctxSize === b.ctxSize;

function describeKeyChange(a: SessionKey, b: SessionKey): string {
  const d: string[] = [];
  if (a.modelSha256 !== b.modelSha256) d.push(`model file sha256 ${a.modelSha256.slice(0, 12)}… → ${b.modelSha256.slice(0, 12)}…`);
  if (a.adapters !== b.adapters) d.push(`adapters "${a.adapters}" → "${b.adapters}"`);
  if (a.ctxSize !== b.ctxSize) d.push(`context ${a.ctxSize} → ${b.ctxSize} tokens`);
  return d.join(', ');
}

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/** What the model lists count of one session: its record's model directory and model, its saved state's bytes (0 = none). */
interface Counted {
  sha: string;
  model: string;
  kvBytes: number;
}

/** A saved state file as the size cap weighs it. */
interface StateFile {
  sha: string;
  id: string;
  bytes: number;
}

let counter = 0;
const tempName = (what: string) => `_${what}-${process.pid}-${++counter}-${randomBytes(4).toString('hex')}`;

export class SessionStore {
  readonly dir: string;
  maxBytes: number;
  readonly problem?: string;
  private log: Log;
  private hashes = new Map<string, Promise<string>>();
  /** One turn at a time per session (a second waits), so two turns never fork a conversation. */
  private locks = new Map<string, Promise<unknown>>();
  /**
   * The sessions the model lists count (summary()): read from the records once, by the first
   * summary(), then kept up to date by this store's own saves, deletions and state removals (the
   * size cap, a discarded state). `pending` holds the changes made while that first read runs,
   * applied over what it found.
   */
  private counted?: Map<string, Counted>;
  private totals = new Map<string, SessionCounts>();
  private loading?: Promise<void>;
  private pending: [string, (cur: Counted | undefined) => Counted | undefined][] = [];
  /**
   * The saved state files the size cap weighs (enforceCap), least recently saved first, keyed
   * "<sha>/<id>", and their total bytes: read from the directory once, by the first enforceCap
   * (a synchronous scan, so no change can slip in between), then kept up to date by this store's
   * own saves and removals, so a save does not stat every state file again. A state file that
   * something else adds or removes is not seen until the daemon starts again.
   */
  private states?: Map<string, StateFile>;
  private stateBytes = 0;
  private statted = 0;

  constructor(o: SessionsOptions) {
    this.dir = o.dir;
    this.maxBytes = o.maxBytes;
    this.problem = o.problem;
    this.log = o.log ?? (() => {});
  }

  get enabled(): boolean {
    return !this.problem;
  }

  /** Throws FAILED_PRECONDITION saying why, when sessions are off. */
  need(): void {
    if (this.problem) throw new RuntimeError(Code.FAILED_PRECONDITION, `sessions are not available: the sessions directory ${this.dir} cannot be used (${this.problem}); set runtime.sessions_dir to a writable directory`);
  }

  /** Runs `fn` while holding the session's lock. */
  async exclusive<T>(id: string, fn: () => Promise<T>): Promise<T> {
    const before = this.locks.get(id) ?? Promise.resolve();
    const run = before.catch(() => {}).then(fn);
    const tail = run.catch(() => {});
    this.locks.set(id, tail);
    try {
      return await run;
    } finally {
      if (this.locks.get(id) === tail) this.locks.delete(id);
    }
  }

  /** sha256 of a model file, remembered by (path, size, mtime, inode) in memory and on disk. */
  modelSha256(path: string): Promise<string> {
    const st = statSync(path);
    const id = `${path}\0${st.size}\0${st.mtimeMs}\0${st.ino}`;
    let p = this.hashes.get(id);
    if (!p) {
      p = (async () => {
        const file = join(this.dir, '.model-hashes.json');
        const known = JSON.parse(await readFile(file, 'utf8').catch(() => '{}')) as Record<string, string>;
        if (known[id] && /^[0-9a-f]{64}$/.test(known[id]!)) return known[id]!;
        const t0 = Date.now();
        const h = await sha256File(path);
        this.log(`sessions: sha256 of ${path} in ${Date.now() - t0} ms`, 'debug');
        known[id] = h;
        await this.writeAtomic(file, JSON.stringify(known)).catch((e) => this.log(`sessions: cannot remember model hashes in ${file}: ${(e as Error).message}`, 'warn'));
        return h;
      })();
      p.catch(() => this.hashes.delete(id));
      this.hashes.set(id, p);
    }
    return p;
  }

  private kvPath(sha: string, id: string): string {
    return join(this.dir, sha, id);
  }

  /** Written to a temporary name, flushed to the disk, renamed over `file`, the directory flushed: whole or not at all, even across a power cut. */
  private async writeAtomic(file: string, text: string): Promise<void> {
    const tmp = `${file}.tmp-${process.pid}-${++counter}`;
    try {
      const fh = await open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(text);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
      await syncDir(dirname(file));
    } catch (e) {
      await rm(tmp, { force: true });
      throw e;
    }
  }

  /** The model-hash directories. */
  private modelDirs(): string[] {
    if (!existsSync(this.dir)) return [];
    return readdirSync(this.dir, { withFileTypes: true })
      .filter((d) => d.isDirectory() && /^[0-9a-f]{64}$/.test(d.name))
      .map((d) => d.name);
  }

  /** A session's record (the newest, should two model directories have one). */
  async find(id: string): Promise<SessionRecord | undefined> {
    let best: SessionRecord | undefined;
    for (const sha of this.modelDirs()) {
      const file = join(this.dir, sha, `${id}.json`);
      if (!existsSync(file)) continue;
      try {
        const r = JSON.parse(await readFile(file, 'utf8')) as SessionRecord;
        if (r.version !== 1 || r.id !== id || !Array.isArray(r.messages)) throw new Error('not a session record');
        if (!best || r.updated > best.updated) best = r;
      } catch (e) {
        this.log(`sessions: ${file} is unreadable (${(e as Error).message}); removing it`, 'warn');
        await rm(file, { force: true });
        this.count(id, (cur) => (cur?.sha === sha ? undefined : cur));
      }
    }
    return best;
  }

  async list(): Promise<SessionInfo[]> {
    const out: SessionInfo[] = [];
    for (const sha of this.modelDirs()) {
      for (const f of readdirSync(join(this.dir, sha))) {
        if (!f.endsWith('.json') || !SESSION_ID.test(f.slice(0, -5))) continue;
        const r = await this.find(f.slice(0, -5));
        if (r && r.key.modelSha256 === sha) out.push(this.info(r));
      }
    }
    return out.sort((a, b) => (a.updated < b.updated ? 1 : -1));
  }

  /**
   * Saved sessions per model name, for the model lists, which are polled (aios top asks twice a
   * second): the records are read once (the first call; again only if that read failed), then the
   * counts follow this store's own changes, so a poll reads nothing from the disk. Sessions that
   * something other than this store adds or removes in the directory are not seen until the
   * daemon starts again.
   */
  async summary(): Promise<Map<string, SessionCounts>> {
    if (!this.counted) {
      this.loading ??= this.list().then(
        (list) => {
          this.counted = new Map();
          for (const i of list) this.apply(i.id, { sha: i.modelSha256, model: i.model, kvBytes: i.kvBytes });
          for (const [id, fn] of this.pending.splice(0)) this.apply(id, fn(this.counted.get(id)));
        },
        (e: unknown) => {
          this.loading = undefined;
          this.pending = [];
          throw e;
        },
      );
      await this.loading;
    }
    return new Map([...this.totals].map(([model, c]) => [model, { ...c }]));
  }

  /** A change to one session's counted entry: applied now, after the first read when it is running, or left to that read when it has not started. */
  private count(id: string, fn: (cur: Counted | undefined) => Counted | undefined): void {
    if (this.counted) this.apply(id, fn(this.counted.get(id)));
    else if (this.loading) this.pending.push([id, fn]);
  }

  private apply(id: string, next: Counted | undefined): void {
    const counted = this.counted!;
    const add = (e: Counted, k: 1 | -1) => {
      const t = this.totals.get(e.model) ?? { count: 0, states: 0, bytes: 0 };
      t.count += k;
      if (e.kvBytes > 0) {
        t.states += k;
        t.bytes += k * e.kvBytes;
      }
      if (t.count > 0) this.totals.set(e.model, t);
      else this.totals.delete(e.model);
    };
    const cur = counted.get(id);
    if (cur) add(cur, -1);
    if (next) {
      counted.set(id, next);
      add(next, 1);
    } else counted.delete(id);
  }

  info(r: SessionRecord): SessionInfo {
    return {
      id: r.id,
      model: r.model,
      modelSha256: r.key.modelSha256,
      adapters: r.key.adapters,
      ctxSize: r.key.ctxSize,
      turns: r.turns,
      messages: r.messages.length,
      kvBytes: r.kv?.bytes ?? 0,
      kvTokens: r.kv?.tokens ?? 0,
      created: r.created,
      updated: r.updated,
      lastCache: r.lastCache,
    };
  }

  /** Removes a session (record and state); false when there was none. */
  async delete(id: string): Promise<boolean> {
    checkSessionId(id);
    let found = false;
    for (const sha of this.modelDirs()) {
      for (const f of [join(this.dir, sha, `${id}.json`), this.kvPath(sha, id)]) {
        if (existsSync(f)) {
          found = true;
          await rm(f, { force: true });
        }
      }
      this.forgetState(sha, id);
    }
    this.count(id, () => undefined);
    return found;
  }

  /** The saved state's file, when it is there and matches its record (size, sha256); else why not. */
  async checkState(r: SessionRecord): Promise<{ ok: true; path: string } | { ok: false; why: string }> {
    if (!r.kv) return { ok: false, why: 'no saved state' };
    const path = this.kvPath(r.key.modelSha256, r.id);
    const st = await stat(path).catch(() => undefined);
    if (!st) return { ok: false, why: `the state file ${path} is missing` };
    if (st.size !== r.kv.bytes) return { ok: false, why: `the state file is ${st.size} bytes, ${r.kv.bytes} were saved (truncated or replaced)` };
    const sum = await sha256File(path);
    if (sum !== r.kv.sha256) return { ok: false, why: `the state file's sha256 ${sum.slice(0, 12)}… differs from the saved ${r.kv.sha256.slice(0, 12)}… (corrupt)` };
    return { ok: true, path };
  }

  /** Restores a checked state file into `slot` of the child on `port`; the tokens restored. */
  async restore(path: string, model: string, port: number | string | string, slot: number, signal: AbortSignal): Promise<{ tokens: number; ms: number }> {
    const name = tempName('restore');
    const dir = slotDirOf(this.dir, model);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, name);
    await link(path, tmp); // llama-server reads only plain names in its own --slot-save-path
    try {
      const res = await postChild(port, `/slots/${slot}?action=restore`, Buffer.from(JSON.stringify({ filename: name })), signal);
      const text = (await readAll(res)).toString('utf8');
      if (res.statusCode !== 200) throw new Error(`llama-server refused the restore (${res.statusCode}): ${text.slice(0, 300)}`);
      const j = JSON.parse(text) as { n_restored?: number; timings?: { restore_ms?: number } };
      return { tokens: j.n_restored ?? 0, ms: j.timings?.restore_ms ?? 0 };
    } finally {
      await unlink(tmp).catch(() => {});
    }
  }

  /**
   * Before a session's turn, with its slot held: the conversation so far, and its KV state
   * restored into the slot when the saved state is valid for this model, adapter set and context.
   */
  async begin(o: { id: string; model: string; modelPath: string; adapters: string; ctxSize: number; port: number | string | string; slot: number; signal: AbortSignal; systemPrompt?: string }): Promise<Turn> {
    this.need();
    const key: SessionKey = { modelSha256: await this.modelSha256(o.modelPath), adapters: o.adapters, ctxSize: o.ctxSize };
    const now = new Date().toISOString();
    const r = await this.find(o.id);
    const turn: Turn = { id: o.id, key, model: o.model, modelPath: o.modelPath, history: r?.messages ?? [], restoredTokens: 0, restoreMs: 0, expectCached: 0, status: 'new', note: '', created: r?.created ?? now, turns: r?.turns ?? 0 };
    if (o.systemPrompt !== undefined && o.systemPrompt !== '' && turn.history.length) {
      const had = turn.history[0]?.role === 'system' ? turn.history[0].content : '';
      if (had !== o.systemPrompt) {
        throw new RuntimeError(Code.INVALID_ARGUMENT, `session ${o.id}: its system prompt was set by its first turn and cannot change; send none (or the same), or delete the session (aios runtime sessions rm ${o.id})`);
      }
    }
    if (!r) return turn;
    // A turn that restores nothing starts from an empty slot: the whole conversation is evaluated.
    const empty = () => this.erase(o.port, o.slot, o.signal);
    const discard = async (why: string) => {
      turn.status = 'discarded';
      turn.note = `the saved state of session ${o.id} was discarded: ${why}; the whole conversation (${r.messages.length} messages) is evaluated again`;
      this.log(`sessions: ${turn.note}`, 'warn');
      await this.dropState(r.key.modelSha256, r.id);
    };
    if (!r.kv) {
      turn.status = 'none';
      turn.note = `session ${o.id} has no saved state (its last save failed or states are not kept); the conversation is evaluated again`;
      this.log(`sessions: ${turn.note}`, 'warn');
      await empty();
      return turn;
    }
    if (!sameKey(r.key, key)) {
      await discard(`it was saved for ${r.model} with a different key (${describeKeyChange(r.key, key)})`);
      await empty();
      return turn;
    }
    const checked = await this.checkState(r);
    if (!checked.ok) {
      await discard(checked.why);
      await empty();
      return turn;
    }
    try {
      const t0 = performance.now();
      const got = await this.restore(checked.path, o.model, o.port, o.slot, o.signal);
      turn.restoredTokens = got.tokens;
      turn.restoreMs = got.ms || performance.now() - t0;
      turn.expectCached = r.promptTokens > 0 ? Math.min(r.promptTokens, got.tokens) : Math.floor(got.tokens / 2);
      this.log(`sessions: ${o.id}: restored ${got.tokens} tokens into ${o.model} slot ${o.slot} in ${turn.restoreMs.toFixed(1)} ms`, 'debug');
    } catch (e) {
      if (o.signal.aborted) throw e;
      await discard((e as Error).message);
      await empty();
    }
    return turn;
  }

  /** Empties a slot (llama-server clears it after a refused restore too; this makes it certain). */
  private async erase(port: number | string, slot: number, signal: AbortSignal): Promise<void> {
    const res = await postChild(port, `/slots/${slot}?action=erase`, Buffer.from('{}'), signal);
    const text = (await readAll(res)).toString('utf8');
    if (res.statusCode !== 200) this.log(`sessions: llama-server could not erase slot ${slot} (${res.statusCode}): ${text.slice(0, 200)}`, 'warn');
  }

  /**
   * After a session's answer, with its slot still held: checks that a restored state was used,
   * appends the turn to the conversation, saves the slot's KV state and the record, and keeps the
   * directory under sessions_max_bytes. Never throws for a failed save: it is logged.
   */
  async finish(turn: Turn, o: { added: ChatMsg[]; answer: string; params: Record<string, unknown>; use: ReportedUse; port: number | string | string; slot: number; signal: AbortSignal }): Promise<TurnResult> {
    let status = turn.status;
    let note = turn.note;
    const cachedTokens = o.use.cacheN ?? 0;
    if (turn.restoredTokens > 0) {
      if (cacheHit(turn.expectCached, o.use)) status = 'hit';
      else {
        status = 'miss';
        note = `session ${turn.id}: ${turn.restoredTokens} tokens were restored but llama-server reused only ${cachedTokens} of the prompt (expected at least ${Math.floor(turn.expectCached * 0.9)}): it evaluated the full prompt`;
        this.log(`sessions: ${note}`, 'warn');
      }
    }
    const now = new Date().toISOString();
    const rec: SessionRecord = {
      version: 1,
      id: turn.id,
      model: turn.model,
      modelPath: turn.modelPath,
      key: turn.key,
      messages: [...turn.history, ...o.added, { role: 'assistant', content: o.answer }],
      params: o.params,
      kv: null,
      promptTokens: o.use.promptTokens ?? 0,
      turns: turn.turns + 1,
      created: turn.created,
      updated: now,
      lastCache: status,
    };
    const sub = join(this.dir, turn.key.modelSha256);
    let saved = false;
    try {
      await mkdir(sub, { recursive: true, mode: 0o700 });
      if (this.maxBytes > 0) rec.kv = await this.saveSlot(turn, o.port, o.slot, o.signal);
      saved = true;
    } catch (e) {
      this.log(`sessions: ${turn.id}: the KV state was not saved (${(e as Error).message}); the request succeeds, the next turn evaluates the conversation again`, 'warn');
      await rm(this.kvPath(turn.key.modelSha256, turn.id), { force: true }).then(() => this.forgetState(turn.key.modelSha256, turn.id), () => {});
    }
    try {
      await this.writeAtomic(join(sub, `${turn.id}.json`), JSON.stringify(rec));
      this.count(turn.id, () => ({ sha: turn.key.modelSha256, model: rec.model, kvBytes: rec.kv?.bytes ?? 0 }));
      // The same id under another model's directory is an older state of this conversation.
      for (const sha of this.modelDirs()) {
        if (sha === turn.key.modelSha256) continue;
        await rm(join(this.dir, sha, `${turn.id}.json`), { force: true });
        await rm(this.kvPath(sha, turn.id), { force: true });
        this.forgetState(sha, turn.id);
      }
    } catch (e) {
      saved = false;
      this.log(`sessions: ${turn.id}: the conversation was not saved (${(e as Error).message}); the request succeeds`, 'warn');
    }
    if (saved) await this.enforceCap(turn.id).catch((e) => this.log(`sessions: size cap: ${(e as Error).message}`, 'warn'));
    return { status, cachedTokens, note, saved };
  }

  /**
   * SaveSession for a conversation whose state is not saved (an earlier save failed, or it was
   * discarded): the caller has evaluated the conversation's prompt in `slot`; this saves it.
   */
  async saveEvaluated(r: SessionRecord, key: SessionKey, o: { promptTokens: number; port: number | string | string; slot: number; signal: AbortSignal }): Promise<SessionRecord> {
    this.need();
    const sub = join(this.dir, key.modelSha256);
    await mkdir(sub, { recursive: true, mode: 0o700 });
    const turn = { id: r.id, key, model: r.model } as Turn;
    const rec: SessionRecord = { ...r, key, kv: await this.saveSlot(turn, o.port, o.slot, o.signal), promptTokens: o.promptTokens, updated: new Date().toISOString() };
    await this.writeAtomic(join(sub, `${r.id}.json`), JSON.stringify(rec));
    this.count(r.id, () => ({ sha: key.modelSha256, model: rec.model, kvBytes: rec.kv?.bytes ?? 0 }));
    await this.enforceCap(r.id);
    return rec;
  }

  /** POST /slots/<slot>?action=save into a temporary name in the model's slot directory, then the file goes to <sha>/<id>, 0600. */
  private async saveSlot(turn: Turn, port: number | string | string, slot: number, signal: AbortSignal): Promise<SessionRecord['kv']> {
    const name = tempName('save');
    const dir = slotDirOf(this.dir, turn.model);
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = join(dir, name);
    try {
      const res = await postChild(port, `/slots/${slot}?action=save`, Buffer.from(JSON.stringify({ filename: name })), signal);
      const text = (await readAll(res)).toString('utf8');
      if (res.statusCode !== 200) throw new Error(`llama-server could not save slot ${slot} (${res.statusCode}): ${text.slice(0, 300)}`);
      const j = JSON.parse(text) as { n_saved?: number; n_written?: number };
      await chmod(tmp, 0o600);
      const st = await stat(tmp);
      if (j.n_written !== undefined && st.size !== j.n_written) throw new Error(`the saved file has ${st.size} bytes, llama-server wrote ${j.n_written} (disk full?)`);
      const sha256 = await sha256File(tmp);
      await syncFile(tmp); // on the disk before its record names it (llama-server does not flush it)
      await rename(tmp, this.kvPath(turn.key.modelSha256, turn.id));
      this.noteState(turn.key.modelSha256, turn.id, st.size);
      return { bytes: st.size, sha256, tokens: j.n_saved ?? 0 };
    } finally {
      await rm(tmp, { force: true }).catch(() => {});
    }
  }

  /**
   * Removes saved states, least recently updated first, until the total fits sessions_max_bytes;
   * `keep` (the session just saved) goes last, only if it alone is over the cap. Weighs the states
   * this store knows (`states`): the directory is read once, so a save under the cap costs the same
   * however many states there are, and one over it looks only at those it removes.
   */
  async enforceCap(keep?: string): Promise<string[]> {
    const states = this.stateIndex();
    let total = this.stateBytes;
    const victims: StateFile[] = [];
    const kept: StateFile[] = [];
    for (const f of states.values()) {
      if (total <= this.maxBytes) break;
      if (f.id === keep) {
        kept.push(f);
        continue;
      }
      victims.push(f);
      total -= f.bytes;
    }
    for (const f of kept) {
      if (total <= this.maxBytes) break;
      victims.push(f);
      total -= f.bytes;
    }
    const removed: string[] = [];
    for (const f of victims) {
      if (states.get(`${f.sha}/${f.id}`) !== f) continue; // saved again or removed meanwhile
      await this.dropState(f.sha, f.id);
      removed.push(f.id);
      this.log(`sessions: removed the saved state of ${f.id} (${f.bytes} bytes, ${f.id === keep ? 'alone larger than the cap' : 'least recently used'}) to stay under runtime.sessions_max_bytes (${this.maxBytes} bytes); its conversation is kept`, f.id === keep ? 'warn' : 'info');
    }
    return removed;
  }

  /** How many state files the size cap has stat'ed (the first enforceCap's scan of the directory; never again). */
  get stateFilesStatted(): number {
    return this.statted;
  }

  /** The state files, least recently saved first: read from the directory the first time (by mtime), then as this store changes them. */
  private stateIndex(): Map<string, StateFile> {
    if (this.states) return this.states;
    const found: (StateFile & { mtime: number })[] = [];
    for (const sha of this.modelDirs()) {
      for (const f of readdirSync(join(this.dir, sha))) {
        if (!SESSION_ID.test(f)) continue;
        this.statted++;
        const st = statSync(join(this.dir, sha, f), { throwIfNoEntry: false });
        if (st) found.push({ sha, id: f, bytes: st.size, mtime: st.mtimeMs });
      }
    }
    this.states = new Map();
    this.stateBytes = 0;
    for (const f of found.sort((a, b) => a.mtime - b.mtime)) this.noteState(f.sha, f.id, f.bytes);
    return this.states;
  }

  /** A state file written (or replaced) now: the most recently saved. Nothing to do before the first scan, which will find it. */
  private noteState(sha: string, id: string, bytes: number): void {
    if (!this.states) return;
    this.forgetState(sha, id);
    this.states.set(`${sha}/${id}`, { sha, id, bytes });
    this.stateBytes += bytes;
  }

  /** A state file removed. */
  private forgetState(sha: string, id: string): void {
    const f = this.states?.get(`${sha}/${id}`);
    if (!f) return;
    this.states!.delete(`${sha}/${id}`);
    this.stateBytes -= f.bytes;
  }

  /** Deletes a state file and marks its record as having none (the conversation stays). */
  private async dropState(sha: string, id: string): Promise<void> {
    await rm(this.kvPath(sha, id), { force: true });
    this.forgetState(sha, id);
    const file = join(this.dir, sha, `${id}.json`);
    try {
      const r = JSON.parse(await readFile(file, 'utf8')) as SessionRecord;
      r.kv = null;
      await this.writeAtomic(file, JSON.stringify(r));
      // counted only when this directory holds the session's record (not an older copy under another model)
      this.count(id, (cur) => (cur?.sha === sha ? { ...cur, kvBytes: 0 } : cur));
    } catch {
      // no record: nothing to mark
    }
  }
}
