/**
 * Recent generations per model, for the live figures `ListModels` reports (`aios top`): tokens per
 * second now and the median time to first token over the last minute. It listens to the service's
 * events: `generating` (a streaming front end — gRPC StreamInfer, HTTP with stream — reports its
 * tokens as they are produced, so a long generation shows while it runs) and `generation` (every
 * front end, when a generation ends: its TTFT, and the tokens not already counted live, spread over
 * its duration — all of them for a non-streaming one). It keeps the last minute; reading it changes
 * nothing and loads nothing.
 */
import type { RuntimeEvents } from './events.js';

/** How far back the tokens/s figure looks (ms). */
export const RATE_WINDOW_MS = 10_000;
/** How far back the time-to-first-token median looks (ms). */
export const TTFT_WINDOW_MS = 60_000;

export interface Generation {
  /** When it ended (ms epoch); for live tokens, when they were produced. */
  end: number;
  ttftMs: number;
  tokens: number;
  genMs: number;
  /** Streamed tokens counted as they were produced (genMs 0, at `end`); not a generation: no TTFT. */
  live?: boolean;
}

/** Live tokens of one model within this many ms are kept as one record (bounds the list: ≤ 10 per second). */
export const LIVE_BUCKET_MS = 100;

/**
 * Generated tokens per second over [now − window, now]: each record's tokens are spread evenly over
 * its duration (a finished generation's) or sit at its moment (live tokens: genMs 0), and the part
 * inside the window is summed.
 */
export function tokensPerSecond(gens: Generation[], now: number, windowMs = RATE_WINDOW_MS): number {
  const from = now - windowMs;
  let tokens = 0;
  for (const g of gens) {
    const start = g.end - Math.max(1, g.genMs);
    const overlap = Math.min(g.end, now) - Math.max(start, from);
    if (overlap > 0) tokens += (g.tokens * overlap) / Math.max(1, g.genMs);
  }
  return tokens / (windowMs / 1000);
}

/** The median time to first token of the generations that ended in the last `windowMs`; 0 = none. */
export function ttftMedian(gens: Generation[], now: number, windowMs = TTFT_WINDOW_MS): number {
  const v = gens.filter((g) => !g.live && g.end > now - windowMs && g.end <= now).map((g) => g.ttftMs).sort((a, b) => a - b);
  if (!v.length) return 0;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid]! : (v[mid - 1]! + v[mid]!) / 2;
}

export class RecentGenerations {
  private byModel = new Map<string, Generation[]>();

  constructor(events?: RuntimeEvents, private now: () => number = Date.now) {
    events?.on('generating', (g) => this.add(g.model, { end: this.now(), ttftMs: 0, tokens: g.tokens, genMs: 0, live: true }));
    // At its end, only what was not counted live (a non-streaming generation: all; a stream: what the usage says beyond the events).
    events?.on('generation', (g) => this.add(g.model, { end: this.now(), ttftMs: g.ttftMs, tokens: Math.max(0, g.completionTokens - (g.streamedTokens ?? 0)), genMs: g.genMs }));
  }

  add(model: string, g: Generation): void {
    const keep = this.now() - Math.max(RATE_WINDOW_MS, TTFT_WINDOW_MS);
    let list = this.byModel.get(model) ?? [];
    if (list.length && list[0]!.end <= keep) list = list.filter((x) => x.end > keep);
    const last = list.at(-1);
    if (g.live && last?.live && g.end - last.end < LIVE_BUCKET_MS && g.end >= last.end) last.tokens += g.tokens;
    else list.push(g);
    this.byModel.set(model, list);
  }

  /** The two ModelStatus fields for `model`. */
  of(model: string): { tokens_per_second: number; ttft_p50_ms: number } {
    const gens = this.byModel.get(model) ?? [];
    const now = this.now();
    return { tokens_per_second: tokensPerSecond(gens, now), ttft_p50_ms: ttftMedian(gens, now) };
  }
}
