/**
 * HTTP API keys: their format, how they are stored (hashed), checked, made and revoked.
 *
 * A key is `aios_<id>_<secret>`: `id` is 12 hex digits (public: it names the key in lists, logs and
 * revocations), `secret` 43 base64url characters (256 random bits). Only the sha256 of the whole
 * key is ever stored: a key has far more entropy than a password, so a fast hash cannot be
 * brute-forced, and the comparison is constant-time (timingSafeEqual).
 *
 * Two sources, merged at start:
 * - the build's **keys file** (`runtime.http_keys`: a systemd credential or a path), read-only, one
 *   key per line: `<id> <scope> <sha256 hex> <created ISO-8601> [name]` (`#` comments, blank lines);
 * - the machine's **state file** `<runtime.state_dir>/http-keys.json` (written by the runtime, 0600,
 *   atomically): keys made with `aios runtime keys create` and revocations (of either source's keys).
 *
 * Imports nothing from the build side; `src/pki/` (the build) uses createApiKey and formatKeysFile.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** What a key may do on the HTTP API: `infer` (completions, models), `admin` (everything), `metrics` (only /metrics). */
export const KEY_SCOPES = ['infer', 'admin', 'metrics'] as const;
export type KeyScope = (typeof KEY_SCOPES)[number];

const KEY_RE = /^aios_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/;
const ID_RE = /^[0-9a-f]{12}$/;
const HASH_RE = /^[0-9a-f]{64}$/;
const NAME_RE = /^[A-Za-z0-9._@:-]{1,64}$/;

export interface KeyRecord {
  id: string;
  scope: KeyScope;
  /** sha256 of the whole key, hex. */
  sha256: string;
  /** ISO-8601. */
  created: string;
  name: string;
}

export const hashKey = (key: string): string => createHash('sha256').update(key, 'utf8').digest('hex');

/** A new key (printed once, never stored) and its record (stored). */
export function createApiKey(o: { scope?: KeyScope; name?: string; now?: Date } = {}): { id: string; key: string; hash: string; record: KeyRecord } {
  const scope = o.scope ?? 'infer';
  if (!KEY_SCOPES.includes(scope)) throw new Error(`scope must be one of ${KEY_SCOPES.join(', ')} (got "${scope}")`);
  const name = o.name ?? '';
  if (name && !NAME_RE.test(name)) throw new Error(`key name: letters, digits and . _ @ : - only, at most 64 (got "${name}")`);
  const id = randomBytes(6).toString('hex');
  const key = `aios_${id}_${randomBytes(32).toString('base64url')}`;
  const hash = hashKey(key);
  return { id, key, hash, record: { id, scope, sha256: hash, created: (o.now ?? new Date()).toISOString().replace(/\.\d{3}Z$/, 'Z'), name } };
}

/** The id inside a presented key, or undefined when it is not shaped like one of ours. */
export const keyId = (key: string): string | undefined => KEY_RE.exec(key)?.[1];

/** The keys file (`runtime.http_keys`) as text. */
export function formatKeysFile(records: KeyRecord[]): string {
  return (
    '# aios-runtime HTTP API keys (hashed): id scope sha256(key) created [name]\n' +
    records.map((r) => [r.id, r.scope, r.sha256, r.created, r.name].filter(Boolean).join(' ')).join('\n') +
    (records.length ? '\n' : '')
  );
}

/** Parses a keys file; errors name the file and line, never the line's content. */
export function parseKeysFile(text: string, file: string): KeyRecord[] {
  const out: KeyRecord[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const f = line.split(/\s+/);
    const [id, scope, sha256, created, name = ''] = f as [string, string, string, string, string?];
    const bad = (what: string) => new Error(`${file}: line ${i + 1}: ${what} (expected: id scope sha256 created [name])`);
    if (f.length < 4 || f.length > 5) throw bad(`${f.length} fields`);
    if (!ID_RE.test(id)) throw bad('the id is not 12 hex digits');
    if (!(KEY_SCOPES as readonly string[]).includes(scope)) throw bad(`scope must be one of ${KEY_SCOPES.join(', ')}`);
    if (!HASH_RE.test(sha256)) throw bad('the hash is not 64 hex digits');
    if (Number.isNaN(Date.parse(created))) throw bad('created is not an ISO-8601 time');
    if (name && !NAME_RE.test(name)) throw bad('bad name');
    if (out.some((r) => r.id === id)) throw bad('duplicate id');
    out.push({ id, scope: scope as KeyScope, sha256, created, name });
  });
  return out;
}

/** Writes a keys file (0600). */
export function writeKeysFile(file: string, records: KeyRecord[]): void {
  writeFileSync(file, formatKeysFile(records), { mode: 0o600 });
}

export type KeyCheck = { ok: true; id: string; scope: KeyScope } | { ok: false; reason: 'invalid_key' | 'revoked_key'; id?: string };

/** A key as `aios runtime keys list` shows it (no hash). */
export interface KeyInfo {
  id: string;
  scope: KeyScope;
  name: string;
  created: string;
  /** `build`: the image's keys file; `machine`: made with `aios runtime keys create`. */
  source: 'build' | 'machine';
  revoked: string;
}

interface StateFile {
  keys: KeyRecord[];
  revoked: { id: string; at: string }[];
}

/**
 * The keys the HTTP API accepts: the build's file plus the state file. Changes (create, revoke)
 * are written to the state file before they take effect, so they survive a restart.
 */
export class KeyStore {
  private build: KeyRecord[];
  private state: StateFile = { keys: [], revoked: [] };
  readonly stateFile?: string;

  constructor(o: { buildFile?: string; stateDir?: string }) {
    this.build = o.buildFile ? parseKeysFile(readFileSync(o.buildFile, 'utf8'), o.buildFile) : [];
    if (o.stateDir) {
      this.stateFile = join(o.stateDir, 'http-keys.json');
      if (existsSync(this.stateFile)) this.state = parseState(readFileSync(this.stateFile, 'utf8'), this.stateFile);
    }
  }

  private find(id: string): { r: KeyRecord; source: 'build' | 'machine' } | undefined {
    const b = this.build.find((r) => r.id === id);
    if (b) return { r: b, source: 'build' };
    const m = this.state.keys.find((r) => r.id === id);
    return m ? { r: m, source: 'machine' } : undefined;
  }

  private revokedAt = (id: string) => this.state.revoked.find((r) => r.id === id)?.at ?? '';

  /** Checks a presented key: constant-time hash comparison, then revocation. */
  check(key: string): KeyCheck {
    const id = keyId(key);
    const found = id ? this.find(id) : undefined;
    // Hash anyway, so an unknown id takes as long as a known one.
    const presented = Buffer.from(hashKey(key), 'hex');
    const stored = Buffer.from(found?.r.sha256 ?? '0'.repeat(64), 'hex');
    const match = timingSafeEqual(presented, stored) && !!found;
    if (!match || !found) return { ok: false, reason: 'invalid_key' };
    if (this.revokedAt(found.r.id)) return { ok: false, reason: 'revoked_key', id: found.r.id };
    return { ok: true, id: found.r.id, scope: found.r.scope };
  }

  list(): KeyInfo[] {
    const info = (r: KeyRecord, source: 'build' | 'machine'): KeyInfo => ({ id: r.id, scope: r.scope, name: r.name, created: r.created, source, revoked: this.revokedAt(r.id) });
    return [...this.build.map((r) => info(r, 'build')), ...this.state.keys.map((r) => info(r, 'machine'))];
  }

  private requireState(what: string): string {
    if (!this.stateFile) throw new Error(`cannot ${what}: no state directory to keep it in (set runtime.state_dir, or run under systemd with StateDirectory=)`);
    return this.stateFile;
  }

  private save(next: StateFile): void {
    const file = this.requireState('save keys');
    mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
    const tmp = `${file}.tmp-${process.pid}`;
    writeFileSync(tmp, JSON.stringify(next, null, 2) + '\n', { mode: 0o600 });
    renameSync(tmp, file);
    this.state = next;
  }

  /** Makes a key, stores its hash, and returns it (the only time the key itself exists). */
  create(o: { scope: KeyScope; name?: string }): { key: string; info: KeyInfo } {
    this.requireState('create a key');
    let made = createApiKey(o);
    while (this.find(made.id)) made = createApiKey(o);
    this.save({ ...this.state, keys: [...this.state.keys, made.record] });
    return { key: made.key, info: this.list().find((k) => k.id === made.id)! };
  }

  /** Revokes a key of either source; false when it already was. Throws for an unknown id. */
  revoke(id: string, now = new Date()): boolean {
    if (!this.find(id)) throw new UnknownKeyError(id);
    if (this.revokedAt(id)) return false;
    this.requireState('revoke a key');
    this.save({ ...this.state, revoked: [...this.state.revoked, { id, at: now.toISOString().replace(/\.\d{3}Z$/, 'Z') }] });
    return true;
  }
}

export class UnknownKeyError extends Error {
  constructor(readonly id: string) {
    super(`no key with id "${id}" (see aios runtime keys list)`);
  }
}

function parseState(text: string, file: string): StateFile {
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch {
    throw new Error(`${file}: not JSON`);
  }
  const s = j as Partial<StateFile>;
  if (!s || !Array.isArray(s.keys) || !Array.isArray(s.revoked)) throw new Error(`${file}: expected {"keys": [...], "revoked": [...]}`);
  // The same checks as the keys file, through its parser.
  const keys = parseKeysFile(formatKeysFile(s.keys as KeyRecord[]), file);
  const revoked = s.revoked.filter((r): r is { id: string; at: string } => !!r && ID_RE.test(String(r.id)) && typeof r.at === 'string');
  return { keys, revoked };
}
