/**
 * The spend ledger: one append-only file per calendar month (UTC), `<dir>/YYYY-MM.jsonl`, one JSON
 * record per line. Every cloud call writes two records: `reserve` (its worst-case cost, before it is
 * sent) and `settle` (its real cost, tokens by kind, outcome, latency, when it ends). Each line is
 * written with one write(2) on an O_APPEND descriptor and fdatasync'ed before the call goes on, and
 * carries a checksum of itself; so a crash or power cut mid-write leaves at most one torn last line,
 * which reading skips with a warning (and the next append starts on a fresh line), and never touches
 * earlier records. A `reserve` without its `settle` (the daemon died while the call was out) counts
 * at its full reservation: the month's total never under-counts what may have been spent. On open,
 * such orphans are settled explicitly (outcome "lost"), so the file says what was assumed.
 */
import { closeSync, existsSync, fdatasyncSync, mkdirSync, openSync, readFileSync, readSync, fstatSync, writeSync, readdirSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { Tokens } from './prices.js';
import type { Log } from './log.js';

export type Outcome = 'ok' | 'error' | 'cancelled' | 'lost';

export interface ReserveRecord {
  kind: 'reserve';
  t: string;
  id: string;
  provider: string;
  model: string;
  priority: string;
  reserved_usd: number;
}

export interface SettleRecord {
  kind: 'settle';
  t: string;
  id: string;
  provider: string;
  model: string;
  priority: string;
  tokens: Tokens;
  cost_usd: number;
  outcome: Outcome;
  latency_ms: number;
  /** Why a call failed (never a key). */
  error?: string;
}

export type LedgerRecord = ReserveRecord | SettleRecord;

/** "YYYY-MM" of a time, UTC. */
export const monthOf = (ms: number): string => new Date(ms).toISOString().slice(0, 7);

const sum8 = (s: string) => createHash('sha256').update(s).digest('hex').slice(0, 8);

/** One line: the record's JSON with a checksum of that JSON as its last field. */
export function encode(r: LedgerRecord): string {
  const json = JSON.stringify(r);
  return `${json.slice(0, -1)},"sum":"${sum8(json)}"}\n`;
}

/** A line back to its record, or undefined when it is torn, corrupt or not a record. */
export function decode(line: string): LedgerRecord | undefined {
  const m = /^(.*),"sum":"([0-9a-f]{8})"\}$/.exec(line);
  if (!m) return undefined;
  const json = `${m[1]}}`;
  if (sum8(json) !== m[2]) return undefined;
  try {
    const r = JSON.parse(json) as LedgerRecord;
    return r.kind === 'reserve' || r.kind === 'settle' ? r : undefined;
  } catch {
    return undefined;
  }
}

export interface ProviderMonth {
  provider: string;
  /** Settled cost plus the reservations of calls not settled (in flight, or lost in a crash). */
  spentUsd: number;
  /** The part of spentUsd that is reservations of calls not (yet) settled. */
  reservedUsd: number;
  requests: number;
  failures: number;
  tokens: Tokens;
}

const zero = (): Tokens => ({ input: 0, output: 0, cacheRead: 0, cacheWrite: 0, reasoning: 0 });

/** Per-provider totals of a month's records. */
export function totals(records: LedgerRecord[]): Map<string, ProviderMonth> {
  const out = new Map<string, ProviderMonth>();
  const get = (p: string) => {
    let x = out.get(p);
    if (!x) out.set(p, (x = { provider: p, spentUsd: 0, reservedUsd: 0, requests: 0, failures: 0, tokens: zero() }));
    return x;
  };
  const open = new Map<string, ReserveRecord>();
  for (const r of records) {
    if (r.kind === 'reserve') open.set(r.id, r);
    else {
      open.delete(r.id);
      const x = get(r.provider);
      x.spentUsd += r.cost_usd;
      x.requests++;
      if (r.outcome !== 'ok') x.failures++;
      for (const k of Object.keys(x.tokens) as (keyof Tokens)[]) x.tokens[k] += r.tokens[k] ?? 0;
    }
  }
  for (const r of open.values()) {
    const x = get(r.provider);
    x.spentUsd += r.reserved_usd;
    x.reservedUsd += r.reserved_usd;
  }
  return out;
}

export class Ledger {
  private fds = new Map<string, number>();

  constructor(
    readonly dir: string,
    private log: Log = () => {},
  ) {}

  file(month: string): string {
    return join(this.dir, `${month}.jsonl`);
  }

  /** Months that have a ledger file, oldest first. */
  months(): string[] {
    if (!existsSync(this.dir)) return [];
    return readdirSync(this.dir)
      .filter((f) => /^\d{4}-\d{2}\.jsonl$/.test(f))
      .map((f) => f.slice(0, 7))
      .sort();
  }

  /** A month's records; torn or corrupt lines are skipped with a warning naming the line. */
  read(month: string): LedgerRecord[] {
    const file = this.file(month);
    if (!existsSync(file)) return [];
    const lines = readFileSync(file, 'utf8').split('\n');
    const out: LedgerRecord[] = [];
    lines.forEach((line, i) => {
      if (!line) return;
      const r = decode(line);
      if (r) out.push(r);
      else this.log(`ledger ${file}: line ${i + 1} is not a complete record (a write cut short by a crash?); skipped`, 'warn');
    });
    return out;
  }

  private fd(month: string): number {
    let fd = this.fds.get(month);
    if (fd !== undefined) return fd;
    mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    fd = openSync(this.file(month), 'a', 0o600);
    // A torn last line (crash mid-write) must not swallow the next record: end it first.
    const size = fstatSync(fd).size;
    if (size > 0) {
      const last = Buffer.alloc(1);
      const r = openSync(this.file(month), 'r');
      try {
        readSync(r, last, 0, 1, size - 1);
      } finally {
        closeSync(r);
      }
      if (last[0] !== 0x0a) writeSync(fd, '\n');
    }
    this.fds.set(month, fd);
    return fd;
  }

  /** Appends one record to its month's file, durably (returns after fdatasync). */
  append(month: string, r: LedgerRecord): void {
    const fd = this.fd(month);
    writeSync(fd, encode(r));
    fdatasyncSync(fd);
  }

  /**
   * Settles the reservations a previous run left open (it died while they were out) at their full
   * amount, outcome "lost": returns how many.
   */
  settleOrphans(month: string, now: () => number): number {
    const open = new Map<string, ReserveRecord>();
    for (const r of this.read(month)) {
      if (r.kind === 'reserve') open.set(r.id, r);
      else open.delete(r.id);
    }
    for (const r of open.values()) {
      this.append(month, { kind: 'settle', t: new Date(now()).toISOString(), id: r.id, provider: r.provider, model: r.model, priority: r.priority, tokens: zero(), cost_usd: r.reserved_usd, outcome: 'lost', latency_ms: 0, error: 'the runtime stopped while the call was out: its reservation is counted in full' });
    }
    return open.size;
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
