/**
 * The strategic layer: a gateway to cloud models ([api.<name>] tables, in order of preference) with
 * a monthly budget per provider that concurrent requests cannot overrun, a request (and token) rate
 * limit per provider whose waiters queue by priority, fallback to the next provider on a failure,
 * and every call in the spend ledger (ledger.ts). Calls go through the providers' official clients
 * (@anthropic-ai/sdk, openai) with their base URL set and their own retries off (the gateway decides
 * what happens after a failure). Keys are read once at start from systemd credentials or 0600
 * files and never appear in a log line, an error or a metric.
 *
 * The budget guarantee: before a call is sent, its worst case (prompt tokens bounded from above ×
 * the dearest input rate + max_tokens × the dearest output rate) is reserved synchronously — the
 * check and the reservation happen in one turn of the event loop, and the reserve record is on disk
 * before the request leaves — so the month's settled spend plus the open reservations never exceed
 * the budget, however many requests arrive at once. When the answer (or a stream's final usage)
 * arrives the reservation is settled to the real cost.
 */
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { randomUUID } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { Code, RuntimeError } from './errors.js';
import { cloudProviders, ms, type CloudProviderConfig, type RuntimeConfig } from './config.js';
import { resolveCredential } from './tls.js';
import { PRIORITIES, type PriorityName, type RuntimeEvents } from './events.js';
import { Ledger, monthOf, totals, type Outcome, type ProviderMonth } from './ledger.js';
import { costOf, promptTokenBound, tablePrices, worstCase, ZERO_TOKENS, type Prices, type Tokens } from './prices.js';
import type { Log } from './log.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export interface CloudRequest {
  messages: ChatMessage[];
  /** undefined = the provider's max_tokens. */
  maxTokens?: number;
  temperature?: number;
  priority: PriorityName;
  /** Absolute, Date.now() based (the gateway's injectable clock is for months and buckets only). */
  deadline: number;
  /** A provider's table name or model name to use only that one; "" / "strategic" = in order. */
  only?: string;
  /** Called once, when the first text of a streamed answer arrives: who is answering. */
  onStart?: (provider: string, model: string) => void;
}

export interface CloudAnswer {
  text: string;
  /** The [api.<name>] table that answered. */
  provider: string;
  model: string;
  tokens: Tokens;
  /** Tokens as clients know them (OpenAI's usage): prompt includes cached input, completion includes reasoning. */
  promptTokens: number;
  completionTokens: number;
  costUsd: number;
  latencyMs: number;
  finishReason: string;
  id: string;
}

/** Why no provider answered: each provider's reason. `code` is RESOURCE_EXHAUSTED when only budgets and rate limits stood in the way. */
export class CloudUnavailable extends RuntimeError {
  constructor(
    code: typeof Code.RESOURCE_EXHAUSTED | typeof Code.UNAVAILABLE,
    message: string,
    readonly retryAfterS?: number,
  ) {
    super(code, message);
  }
}

export interface ProviderView {
  name: string;
  provider: 'anthropic' | 'openai';
  model: string;
  fallbackOnly: boolean;
  budgetUsd: number;
  month: string;
  spentUsd: number;
  reservedUsd: number;
  remainingUsd: number;
  requests: number;
  failures: number;
  tokens: Tokens;
  rateLimitRpm: number;
  /** Why it is not usable now ("" = usable). */
  unavailable: string;
}

const usd = (n: number) => `$${n.toFixed(n !== 0 && Math.abs(n) < 0.01 ? 4 : 2)}`;
const EPS = 1e-9;

/** A token bucket (per minute) for requests and tokens, whose waiters are served by priority. */
export class RateGate {
  private req: number;
  private tok: number;
  private at: number;
  private waiters: { seq: number; prio: number; need: number; resolve: () => void; reject: (e: Error) => void; cleanup: () => void }[] = [];
  private seq = 0;
  private timer?: NodeJS.Timeout;
  constructor(
    readonly rpm: number,
    readonly tpm: number,
    private now: () => number,
  ) {
    this.req = rpm;
    this.tok = tpm;
    this.at = now();
  }
  private refill(): void {
    const t = this.now();
    const dt = Math.max(0, t - this.at);
    this.at = t;
    if (this.rpm) this.req = Math.min(this.rpm, this.req + (dt * this.rpm) / 60_000);
    if (this.tpm) this.tok = Math.min(this.tpm, this.tok + (dt * this.tpm) / 60_000);
  }
  private fits(need: number): boolean {
    return (!this.rpm || this.req >= 1) && (!this.tpm || this.tok >= Math.min(need, this.tpm));
  }
  private take(need: number): void {
    if (this.rpm) this.req -= 1;
    if (this.tpm) this.tok -= Math.min(need, this.tpm);
  }
  /** Takes capacity now if there is some and nobody waits before us. */
  tryTake(need: number): boolean {
    if (!this.rpm && !this.tpm) return true;
    this.refill();
    if (this.waiters.length || !this.fits(need)) return false;
    this.take(need);
    return true;
  }
  /** Gives back what tryTake took (the request was not sent). */
  giveBack(need: number): void {
    if (this.rpm) this.req = Math.min(this.rpm, this.req + 1);
    if (this.tpm) this.tok = Math.min(this.tpm, this.tok + Math.min(need, this.tpm));
    this.pump();
  }
  /** Seconds until a request could pass (for Retry-After). */
  retryAfterS(need = 1): number {
    this.refill();
    const r = this.rpm && this.req < 1 ? ((1 - this.req) * 60) / this.rpm : 0;
    const t = this.tpm && this.tok < Math.min(need, this.tpm) ? ((Math.min(need, this.tpm) - this.tok) * 60) / this.tpm : 0;
    return Math.max(1, Math.ceil(Math.max(r, t)));
  }
  /** Waits (by priority, FIFO within one) until capacity is free, then takes it; rejects at the deadline or on cancel. */
  wait(priority: PriorityName, need: number, deadline: number, cancel?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const w = { seq: ++this.seq, prio: PRIORITIES[priority], need, resolve, reject, cleanup: () => {} };
      const drop = (e: Error) => {
        const i = this.waiters.indexOf(w);
        if (i < 0) return;
        this.waiters.splice(i, 1);
        w.cleanup();
        reject(e);
        this.pump();
      };
      const t = setTimeout(() => drop(new RuntimeError(Code.RESOURCE_EXHAUSTED, 'deadline')), Math.max(0, Math.min(deadline - Date.now(), 2 ** 31 - 1)));
      const onAbort = () => drop(new RuntimeError(Code.CANCELLED, 'the client went away while the request waited for the rate limit'));
      cancel?.addEventListener('abort', onAbort, { once: true });
      w.cleanup = () => {
        clearTimeout(t);
        cancel?.removeEventListener('abort', onAbort);
      };
      this.waiters.push(w);
      this.waiters.sort((a, b) => b.prio - a.prio || a.seq - b.seq);
      this.pump();
    });
  }
  get waiting(): number {
    return this.waiters.length;
  }
  /** Grants waiting requests what the bucket holds now (also run by its own timer). */
  pump(): void {
    this.refill();
    while (this.waiters.length && this.fits(this.waiters[0]!.need)) {
      const w = this.waiters.shift()!;
      this.take(w.need);
      w.cleanup();
      w.resolve();
    }
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.waiters.length) {
      this.timer = setTimeout(() => this.pump(), this.retryAfterS(this.waiters[0]!.need) * 1000 - 900);
      this.timer.unref?.();
    }
  }
}

interface Provider {
  name: string;
  cfg: CloudProviderConfig;
  prices: Prices;
  /** Why its key cannot be read (missing credential, empty, readable by others); "" = it has one. */
  keyError: string;
  gate: RateGate;
  /** A 429's Retry-After: skipped until then. */
  blockedUntil: number;
  anthropic?: Anthropic;
  openai?: OpenAI;
}

/** The ledger directory: api.ledger_dir, else $STATE_DIRECTORY/ledger (systemd StateDirectory=), else /var/lib/aios/ledger. */
export function ledgerDir(c: RuntimeConfig, env: NodeJS.ProcessEnv = process.env): string {
  if (c.api.ledger_dir) return c.api.ledger_dir;
  const state = env.STATE_DIRECTORY?.split(':')[0];
  return state ? join(state, 'ledger') : '/var/lib/aios/ledger';
}

/** Reads an API key (a credential name or an absolute path with mode 0600); errors name the config key, never the content. */
export function readKey(name: string, cfg: CloudProviderConfig, env: NodeJS.ProcessEnv = process.env): string {
  const where = `api.${name}.key_file`;
  const value = cfg.key_file || name;
  let file: string;
  try {
    file = resolveCredential(value, `${name}.key_file`, env);
  } catch (e) {
    throw new Error((e as Error).message.replace(/runtime\.([^ :]*\.key_file)/, 'api.$1') + ' (put the key into /etc/credstore/<name>, which the unit imports as a credential: see docs/strategic.md)');
  }
  if (isAbsolute(value) && (statSync(file).mode & 0o077) !== 0) throw new Error(`${where}: ${file} is readable by others (mode ${(statSync(file).mode & 0o777).toString(8)}); chmod 600 it`);
  const key = readFileSync(file, 'utf8').trim();
  if (!key) throw new Error(`${where}: ${file} is empty`);
  return key;
}

export interface GatewayOptions {
  log?: Log;
  events?: RuntimeEvents;
  now?: () => number;
  env?: NodeJS.ProcessEnv;
}

export class CloudGateway {
  readonly providers: Provider[] = [];
  readonly ledger: Ledger;
  private now: () => number;
  private log: Log;
  /** The month whose totals `spent` holds, and per provider: settled cost + open reservations. */
  private month = '';
  private spent = new Map<string, ProviderMonth>();
  private keys: string[] = [];
  /** Calls out per provider in this month (reserved, not settled). */
  private open = new Map<string, number>();

  /** Reads the keys and the ledger; throws (naming the config key) on anything that would make a provider unusable. */
  constructor(
    private config: RuntimeConfig,
    private o: GatewayOptions = {},
  ) {
    this.now = o.now ?? Date.now;
    this.log = o.log ?? (() => {});
    const env = o.env ?? process.env;
    for (const [name, cfg] of cloudProviders(config)) {
      const table = tablePrices(cfg.model);
      const given = { input: cfg.price_input_per_mtok, output: cfg.price_output_per_mtok };
      if (!table && (given.input === undefined || given.output === undefined)) {
        throw new Error(`api.${name}: no price known for model "${cfg.model}": set price_input_per_mtok and price_output_per_mtok (spend that cannot be priced cannot be budgeted)`);
      }
      const base = table ?? { input: given.input!, output: given.output!, cacheRead: given.input!, cacheWrite: given.input!, reasoning: given.output! };
      const prices: Prices = {
        input: cfg.price_input_per_mtok ?? base.input,
        output: cfg.price_output_per_mtok ?? base.output,
        cacheRead: cfg.price_cache_read_per_mtok ?? base.cacheRead,
        cacheWrite: cfg.price_cache_write_per_mtok ?? base.cacheWrite,
        reasoning: cfg.price_reasoning_per_mtok ?? base.reasoning,
      };
      const p: Provider = { name, cfg, prices, keyError: '', gate: new RateGate(cfg.rate_limit_rpm, cfg.rate_limit_tpm, this.now), blockedUntil: 0 };
      this.providers.push(p);
      // A key that cannot be read makes this provider unusable (its requests say why), not the runtime:
      // the local levels keep serving. It is read again on the next strategic request.
      if (!this.connect(p)) this.log(`${p.keyError}; strategic requests skip api.${name} until it can be read`, 'error');
    }
    this.ledger = new Ledger(ledgerDir(config, env), this.log);
    if (this.providers.length) {
      const lost = this.ledger.settleOrphans(monthOf(this.now()), this.now);
      if (lost) this.log(`ledger: ${lost} call(s) were out when the runtime last stopped; each is counted at its full reservation`, 'warn');
      this.rollover();
      const list = this.view().map((v) => `${v.name} (${v.provider} ${v.model}${v.fallbackOnly ? ', fallback only' : ''}: ${usd(v.spentUsd)} of ${usd(v.budgetUsd)} spent in ${v.month}${v.rateLimitRpm ? `, ${v.rateLimitRpm}/min` : ''})`);
      this.log(`strategic layer: ${list.join(', ')}; ledger ${this.ledger.dir}`);
    }
  }

  /** Reads the provider's key and makes its client; false (with keyError set) when the key cannot be read. */
  private connect(p: Provider): boolean {
    if (p.anthropic || p.openai) return true;
    let key: string;
    try {
      key = readKey(p.name, p.cfg, this.o.env ?? process.env);
    } catch (e) {
      p.keyError = (e as Error).message;
      return false;
    }
    p.keyError = '';
    this.keys.push(key);
    const common = { apiKey: key, maxRetries: 0, timeout: ms(p.cfg.timeout), ...(p.cfg.base_url ? { baseURL: p.cfg.base_url } : {}) };
    if (p.cfg.provider === 'anthropic') p.anthropic = new Anthropic(common);
    else p.openai = new OpenAI(common);
    return true;
  }

  get enabled(): boolean {
    return this.providers.length > 0;
  }

  /** Removes any key from a text (errors from the clients may quote a request). */
  scrub(s: string): string {
    let out = s;
    for (const k of this.keys) if (k.length >= 8) out = out.split(k).join('[key]');
    return out;
  }

  /** "strategic", a provider's table name or its model name. */
  handles(model: string): boolean {
    return model === 'strategic' || this.providers.some((p) => p.name === model || p.cfg.model === model);
  }

  /**
   * The month's totals, loaded from the ledger when the month changed (a new month starts at what its
   * file holds: nothing). Calls still out from last month settle into last month's file.
   */
  private rollover(): string {
    const m = monthOf(this.now());
    if (m !== this.month) {
      this.month = m;
      this.spent = totals(this.ledger.read(m));
      this.open.clear();
    }
    return this.month;
  }

  private monthOf(p: string): ProviderMonth {
    let x = this.spent.get(p);
    if (!x) this.spent.set(p, (x = { provider: p, spentUsd: 0, reservedUsd: 0, requests: 0, failures: 0, tokens: { ...ZERO_TOKENS } }));
    return x;
  }

  /** Per provider this month (or another month, from the ledger). */
  view(month?: string): ProviderView[] {
    const cur = this.rollover();
    const m = month ?? cur;
    const t = m === cur ? this.spent : totals(this.ledger.read(m));
    const now = this.now();
    return this.providers.map((p) => {
      const x = t.get(p.name) ?? { spentUsd: 0, reservedUsd: 0, requests: 0, failures: 0, tokens: { ...ZERO_TOKENS } };
      const remaining = Math.max(0, p.cfg.monthly_budget_usd - x.spentUsd);
      const unavailable = p.keyError ? 'no key (see the log)' : p.blockedUntil > now ? `rate limited by the provider for ${Math.ceil((p.blockedUntil - now) / 1000)} s` : remaining <= EPS ? 'monthly budget spent' : '';
      return { name: p.name, provider: p.cfg.provider, model: p.cfg.model, fallbackOnly: p.cfg.fallback_only, budgetUsd: p.cfg.monthly_budget_usd, month: m, spentUsd: x.spentUsd, reservedUsd: x.reservedUsd, remainingUsd: remaining, requests: x.requests, failures: x.failures, tokens: { ...x.tokens }, rateLimitRpm: p.cfg.rate_limit_rpm, unavailable: m === cur ? unavailable : '' };
    });
  }

  /** Months the ledger has. */
  months(): string[] {
    return this.ledger.months();
  }

  /** The providers in the order a request tries them. */
  private order(only?: string): Provider[] {
    if (only && only !== 'strategic') return this.providers.filter((p) => p.name === only || p.cfg.model === only);
    return [...this.providers.filter((p) => !p.cfg.fallback_only), ...this.providers.filter((p) => p.cfg.fallback_only)];
  }

  /**
   * One strategic request: the first provider in order that is under its budget and rate limit and
   * answers; the next on a failure. `onText` receives streamed text (the call is then streamed).
   */
  async complete(req: CloudRequest, cancel?: AbortSignal, onText?: (t: string) => void): Promise<CloudAnswer> {
    if (!this.enabled) throw new RuntimeError(Code.FAILED_PRECONDITION, 'intelligence_level "strategic" goes to the cloud gateway, which has no provider on this runtime (no [api.<name>] table in the config; see docs/strategic.md); no local model is used in its place');
    const order = this.order(req.only);
    const bound = promptTokenBound(req.messages);
    const reasons = new Map<string, string>();
    let onlyLimits = true;
    let retryAfter = 0;
    const need = (p: Provider) => bound + (req.maxTokens ?? p.cfg.max_tokens);
    const tried = new Set<Provider>();
    const attempt = async (p: Provider): Promise<CloudAnswer | undefined> => {
      if (Date.now() >= req.deadline) {
        p.gate.giveBack(need(p));
        reasons.set(p.name, 'the request\'s deadline passed before it was sent');
        onlyLimits = false;
        return undefined;
      }
      const maxTokens = req.maxTokens ?? p.cfg.max_tokens;
      const r = this.reserve(p, bound, maxTokens, req.priority);
      if (typeof r === 'string') {
        p.gate.giveBack(need(p));
        reasons.set(p.name, r);
        return undefined;
      }
      tried.add(p);
      try {
        return await this.call(p, r, req, maxTokens, cancel, onText);
      } catch (e) {
        if (cancel?.aborted) throw new RuntimeError(Code.CANCELLED, 'the client cancelled the request');
        if (e instanceof Streamed) throw e.error; // text already went to the client: no other provider can continue it
        const f = e as ProviderFailure;
        reasons.set(p.name, f.message);
        if (!f.limit) onlyLimits = false;
        if (f.retryAfterS) retryAfter = Math.max(retryAfter, f.retryAfterS);
        return undefined;
      }
    };
    for (;;) {
      const waitFor: Provider[] = [];
      for (const p of order) {
        if (tried.has(p)) continue;
        if (!this.connect(p)) {
          reasons.set(p.name, `no key: ${p.keyError}`);
          onlyLimits = false;
          continue;
        }
        if (req.maxTokens !== undefined && req.maxTokens > p.cfg.max_tokens) {
          reasons.set(p.name, `max_tokens ${req.maxTokens} is more than api.${p.name}.max_tokens (${p.cfg.max_tokens})`);
          onlyLimits = false;
          continue;
        }
        const left = p.blockedUntil - this.now();
        if (left > 0) {
          reasons.set(p.name, `the provider answered 429: rate limited for another ${Math.ceil(left / 1000)} s`);
          retryAfter = Math.max(retryAfter, Math.ceil(left / 1000));
          continue;
        }
        if (!p.gate.tryTake(need(p))) {
          reasons.set(p.name, `rate limit reached (rate_limit_rpm = ${p.cfg.rate_limit_rpm}${p.cfg.rate_limit_tpm ? `, rate_limit_tpm = ${p.cfg.rate_limit_tpm}` : ''})`);
          retryAfter = Math.max(retryAfter, p.gate.retryAfterS(need(p)));
          waitFor.push(p);
          continue;
        }
        const a = await attempt(p);
        if (a) return a;
      }
      // Rate-limited providers: wait in the first one's queue (by priority) until the deadline.
      const p = waitFor.find((x) => this.fits(x, bound, req.maxTokens ?? x.cfg.max_tokens));
      if (!p || Date.now() >= req.deadline) break;
      try {
        await p.gate.wait(req.priority, need(p), req.deadline, cancel);
      } catch (e) {
        if ((e as RuntimeError).code === Code.CANCELLED) throw e;
        reasons.set(p.name, `rate limit reached (rate_limit_rpm = ${p.cfg.rate_limit_rpm}) until the request's deadline`);
        retryAfter = Math.max(retryAfter, p.gate.retryAfterS(need(p)));
        break;
      }
      const a = await attempt(p);
      if (a) return a;
    }
    const why = order.map((p) => `${p.name}: ${reasons.get(p.name) ?? 'not tried'}`).join('; ');
    throw new CloudUnavailable(onlyLimits ? Code.RESOURCE_EXHAUSTED : Code.UNAVAILABLE, this.scrub(`no cloud provider could answer the strategic request (${why})`), retryAfter || undefined);
  }

  private fits(p: Provider, bound: number, maxTokens: number): boolean {
    this.rollover();
    return this.monthOf(p.name).spentUsd + worstCase(bound, maxTokens, p.prices) <= p.cfg.monthly_budget_usd + EPS;
  }

  /** Reserves the worst case (synchronously: check and hold in one step) and writes it down; a string says why not. */
  private reserve(p: Provider, bound: number, maxTokens: number, priority: string): { id: string; month: string; usd: number; at: number } | string {
    const month = this.rollover();
    const x = this.monthOf(p.name);
    const usd0 = worstCase(bound, maxTokens, p.prices);
    const remaining = p.cfg.monthly_budget_usd - x.spentUsd;
    if (usd0 > remaining + EPS) return `monthly budget: ${usd(Math.max(0, remaining))} of ${usd(p.cfg.monthly_budget_usd)} left in ${month}, this request may cost up to ${usd(usd0)}`;
    const id = randomUUID();
    x.spentUsd += usd0;
    x.reservedUsd += usd0;
    this.open.set(p.name, (this.open.get(p.name) ?? 0) + 1);
    try {
      this.ledger.append(month, { kind: 'reserve', t: new Date(this.now()).toISOString(), id, provider: p.name, model: p.cfg.model, priority, reserved_usd: usd0 });
    } catch (e) {
      x.spentUsd -= usd0;
      x.reservedUsd -= usd0;
      return `the spend ledger cannot be written (${(e as Error).message}); nothing is sent without it`;
    }
    return { id, month, usd: usd0, at: this.now() };
  }

  private settle(p: Provider, r: { id: string; month: string; usd: number; at: number }, priority: string, tokens: Tokens, outcome: Outcome, error?: string, costOverride?: number): number {
    const cost = costOverride ?? costOf(tokens, p.prices);
    if (cost > r.usd + EPS) this.log(`api.${p.name}: call ${r.id} cost ${usd(cost)}, more than its reservation ${usd(r.usd)} (the provider exceeded max_tokens?)`, 'warn');
    const latency = this.now() - r.at;
    this.ledger.append(r.month, { kind: 'settle', t: new Date(this.now()).toISOString(), id: r.id, provider: p.name, model: p.cfg.model, priority, tokens, cost_usd: cost, outcome, latency_ms: latency, ...(error ? { error: this.scrub(error).slice(0, 300) } : {}) });
    if (r.month === this.month) {
      const x = this.monthOf(p.name);
      x.spentUsd += cost - r.usd;
      x.reservedUsd -= r.usd;
      const open = (this.open.get(p.name) ?? 1) - 1;
      this.open.set(p.name, open);
      if (open === 0) {
        // No call out: drop the rounding left by adding and removing reservations.
        x.spentUsd -= x.reservedUsd;
        x.reservedUsd = 0;
      }
      x.requests++;
      if (outcome !== 'ok') x.failures++;
      for (const k of Object.keys(tokens) as (keyof Tokens)[]) x.tokens[k] += tokens[k];
    }
    this.o.events?.emit('cloud', { provider: p.name, model: p.cfg.model, status: outcome, tokens, costUsd: cost, latencyMs: latency });
    return cost;
  }

  private async call(p: Provider, r: { id: string; month: string; usd: number; at: number }, req: CloudRequest, maxTokens: number, cancel: AbortSignal | undefined, onText?: (t: string) => void): Promise<CloudAnswer> {
    const left = Math.max(1, req.deadline - Date.now());
    const ctrl = new AbortController();
    const signal = AbortSignal.any([ctrl.signal, ...(cancel ? [cancel] : [])]);
    const t0 = this.now();
    let seen: Tokens = { ...ZERO_TOKENS };
    let textBytes = 0;
    let streamed = false;
    let text = '';
    let finish = '';
    const onPiece = (s: string) => {
      if (!streamed) req.onStart?.(p.name, p.cfg.model);
      streamed = true;
      textBytes += Buffer.byteLength(s, 'utf8');
      text += s;
      onText?.(s);
    };
    const opts = { signal, timeout: Math.min(ms(p.cfg.timeout), left) };
    /** A stream reached its end event (the clients' iterators end quietly when aborted). */
    let complete = !onText;
    try {
      if (p.anthropic) {
        const system = req.messages.filter((m) => m.role === 'system').map((m) => m.content).join('\n\n');
        const body = {
          model: p.cfg.model,
          max_tokens: maxTokens,
          messages: req.messages.filter((m) => m.role !== 'system').map((m) => ({ role: m.role as 'user' | 'assistant', content: m.content })),
          ...(system ? { system } : {}),
          ...(req.temperature !== undefined ? { temperature: req.temperature } : {}),
        };
        const fromUsage = (u: { input_tokens?: number | null; output_tokens?: number | null; cache_read_input_tokens?: number | null; cache_creation_input_tokens?: number | null }) => {
          seen = {
            input: u.input_tokens ?? seen.input,
            output: u.output_tokens ?? seen.output,
            cacheRead: u.cache_read_input_tokens ?? seen.cacheRead,
            cacheWrite: u.cache_creation_input_tokens ?? seen.cacheWrite,
            reasoning: 0,
          };
        };
        if (!onText) {
          const msg = await p.anthropic.messages.create(body, opts);
          text = msg.content.map((b) => (b.type === 'text' ? b.text : '')).join('');
          fromUsage(msg.usage);
          finish = msg.stop_reason ?? '';
        } else {
          const stream = await p.anthropic.messages.create({ ...body, stream: true }, opts);
          for await (const ev of stream) {
            if (ev.type === 'message_start') fromUsage(ev.message.usage);
            else if (ev.type === 'content_block_delta' && ev.delta.type === 'text_delta') onPiece(ev.delta.text);
            else if (ev.type === 'message_delta') {
              fromUsage(ev.usage);
              finish = ev.delta.stop_reason ?? finish;
            } else if (ev.type === 'message_stop') complete = true;
          }
        }
      } else {
        const reasoningModel = /^(o\d|gpt-5)/.test(p.cfg.model);
        const body = {
          model: p.cfg.model,
          messages: req.messages,
          ...(reasoningModel ? { max_completion_tokens: maxTokens } : { max_tokens: maxTokens }),
          ...(req.temperature !== undefined ? { temperature: req.temperature } : {}),
        };
        type U = { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number } | null; completion_tokens_details?: { reasoning_tokens?: number } | null } | null | undefined;
        const fromUsage = (u: U) => {
          if (!u) return;
          const cached = u.prompt_tokens_details?.cached_tokens ?? 0;
          const reasoning = u.completion_tokens_details?.reasoning_tokens ?? 0;
          seen = { input: u.prompt_tokens - cached, cacheRead: cached, cacheWrite: 0, output: u.completion_tokens - reasoning, reasoning };
        };
        if (!onText) {
          const c = await p.openai!.chat.completions.create(body, opts);
          text = c.choices[0]?.message.content ?? '';
          finish = c.choices[0]?.finish_reason ?? '';
          fromUsage(c.usage);
        } else {
          const stream = await p.openai!.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }, opts);
          for await (const ch of stream) {
            const piece = ch.choices[0]?.delta?.content;
            if (piece) onPiece(piece);
            if (ch.choices[0]?.finish_reason) finish = ch.choices[0].finish_reason;
            if (ch.usage) {
              fromUsage(ch.usage);
              complete = true;
            }
          }
        }
      }
      if (signal.aborted) throw new Error('the call was cancelled');
      if (!complete) throw new Error('the stream ended before its last event (connection lost?)');
    } catch (e) {
      const cancelled = !!cancel?.aborted;
      // Charge what was used: the prompt (as reported, else its bound) and the text that came, when the call got that far.
      if (streamed || seen.input || seen.cacheRead || seen.cacheWrite) {
        const prompt = seen.input + seen.cacheRead + seen.cacheWrite ? seen : { ...seen, input: r.usd > 0 ? promptTokenBound(req.messages) : 0 };
        seen = { ...prompt, output: Math.min(maxTokens, Math.max(seen.output, textBytes)) };
      }
      const msg = this.scrub(describe(e));
      // Refused by the provider (an HTTP status): nothing was generated beyond what it reported. Timed
      // out, connection lost or cancelled before any answer: the provider may have run (and billed)
      // the whole call, so it counts at its reservation — the total never counts less than was billed.
      const status0 = (e as { status?: number }).status;
      const unknown = !status0 && !streamed && !(seen.input || seen.cacheRead || seen.cacheWrite);
      this.settle(p, r, req.priority, seen, cancelled ? 'cancelled' : 'error', msg, unknown ? r.usd : undefined);
      if (cancelled) throw new RuntimeError(Code.CANCELLED, 'the client cancelled the request');
      const status = (e as { status?: number }).status;
      const f = new ProviderFailure(`${msg}`);
      if (status === 429) {
        const ra = retryAfterOf(e);
        p.blockedUntil = this.now() + ra * 1000;
        f.retryAfterS = ra;
        f.limit = true;
      }
      if (streamed) throw new Streamed(new RuntimeError(Code.UNAVAILABLE, `api.${p.name} failed during the streamed answer: ${msg}`));
      throw f;
    }
    const cost = this.settle(p, r, req.priority, seen, 'ok');
    return {
      text,
      provider: p.name,
      model: p.cfg.model,
      tokens: seen,
      promptTokens: seen.input + seen.cacheRead + seen.cacheWrite,
      completionTokens: seen.output + seen.reasoning,
      costUsd: cost,
      latencyMs: this.now() - t0,
      finishReason: finish || 'stop',
      id: r.id,
    };
  }

  close(): void {
    this.ledger.close();
  }
}

class ProviderFailure extends Error {
  retryAfterS?: number;
  /** A limit (429), not a fault. */
  limit = false;
}

/** A failure after text reached the client. */
class Streamed extends Error {
  constructor(readonly error: RuntimeError) {
    super(error.message);
  }
}

function retryAfterOf(e: unknown): number {
  const h = (e as { headers?: Headers }).headers;
  const v = h?.get?.('retry-after');
  const n = Number(v);
  if (v && Number.isFinite(n)) return Math.max(1, Math.ceil(n));
  const d = v ? Date.parse(v) : NaN;
  return Number.isFinite(d) ? Math.max(1, Math.ceil((d - Date.now()) / 1000)) : 60;
}

/** A failure as a short reason: the status and the provider's message, or the connection error. */
function describe(e: unknown): string {
  const x = e as { status?: number; name?: string; message?: string; error?: { error?: { message?: string } } };
  if (x?.name === 'APIConnectionTimeoutError' || /timed out/i.test(x?.message ?? '')) return 'timed out';
  if (x?.status) return `answered ${x.status}${x.error?.error?.message ? `: ${x.error.error.message}` : x.message ? `: ${x.message.replace(/^\d+\s*/, '')}` : ''}`.slice(0, 300);
  if (e instanceof Anthropic.APIConnectionError || e instanceof OpenAI.APIConnectionError) {
    const code = errorCode(e);
    return `connection failed${code ? ` (${code})` : ''}`;
  }
  return (x?.message ?? String(e)).slice(0, 300);
}

/** The system error's code under a client's connection error (APIConnectionError → fetch's TypeError → ECONNREFUSED, …). */
function errorCode(e: unknown): string {
  for (let c = e as { code?: unknown; cause?: unknown } | undefined, i = 0; c && i < 5; c = c.cause as typeof c, i++) {
    if (typeof c.code === 'string' && /^[A-Z][A-Z0-9_]+$/.test(c.code)) return c.code;
  }
  return '';
}
