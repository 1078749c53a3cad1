/**
 * The request scheduler: one bounded priority queue per model in front of the model's llama-server
 * slots. Highest priority first, FIFO within a level, with aging (every `agingMs` a waiting request
 * gains 10 points, so batch work is never starved forever). Full → RESOURCE_EXHAUSTED at once;
 * a waiter whose client went away or whose deadline passed is dropped, never dispatched.
 * Transport-free and model-agnostic: capacity comes from a callback (the model's free slots).
 */
import { Code, RuntimeError } from './errors.js';
import { PRIORITIES, type PriorityName } from './events.js';

export interface SchedulerOptions {
  /** Waiting requests per model (not counting those running). */
  maxQueuePerModel: number;
  /** Waiting requests over all models. */
  maxQueueTotal: number;
  /** Every agingMs of waiting raises a request's effective priority by AGING_STEP points (0 = no aging). */
  agingMs: number;
  /** Slots a model can run at once now (0 while it is not ready). */
  capacity: (model: string) => number;
  now?: () => number;
}

export const AGING_STEP = 10;

/**
 * Which waiter a free slot of a model goes to (pure). The highest effective priority, oldest first —
 * except that among the waiters of that same effective priority, the oldest one whose adapter set
 * (`group`) is the set the model ran last goes first, so that llama-server does not switch LoRA sets
 * (and drop its slot's cache) between every two requests. The rule that bounds it: the waiter first
 * in line may be passed over this way only during one aging period (`agingMs`) from the first time it
 * was passed over (`passedAt`); after that it is served next. So grouping delays no request by more
 * than one aging period plus one request's run (with aging off, grouping is off).
 * Returns the waiter to serve and, when it is not the first in line, the one passed over.
 */
export function pickWaiter<W extends { seq: number; group: string; passedAt?: number }>(q: readonly W[], effective: (w: W) => number, now: number, lastGroup: string | undefined, agingMs: number): { w: W; passedOver?: W } {
  let best = q[0]!;
  let bestP = effective(best);
  for (let i = 1; i < q.length; i++) {
    const w = q[i]!;
    const p = effective(w);
    if (p > bestP || (p === bestP && w.seq < best.seq)) {
      best = w;
      bestP = p;
    }
  }
  if (lastGroup === undefined || best.group === lastGroup || !agingMs || now - (best.passedAt ?? now) >= agingMs) return { w: best };
  let same: W | undefined;
  for (const w of q) if (w.group === lastGroup && effective(w) === bestP && (!same || w.seq < same.seq)) same = w;
  return same ? { w: same, passedOver: best } : { w: best };
}

/** A granted slot: release it exactly once when the request is done. */
export interface Ticket {
  model: string;
  priority: PriorityName;
  /** Milliseconds between entering the queue and the grant. */
  waitedMs: number;
  release(): void;
}

/** A request in the queue: `granted` settles with a ticket, or rejects when it is dropped. */
export interface Waiting {
  readonly model: string;
  readonly priority: PriorityName;
  readonly granted: Promise<Ticket>;
  /** Leave the queue (or release the ticket if already granted) with this error. */
  abort(e: Error): void;
}

interface Waiter {
  seq: number;
  /** The adapter set (adapters.ts adapterSetKey; "" = none): waiters of the set last run are preferred (pickWaiter). */
  group: string;
  /** When it was first passed over for a waiter of the last-run adapter set (pickWaiter). */
  passedAt?: number;
  model: string;
  priority: PriorityName;
  base: number;
  enqueuedAt: number;
  deadline: number;
  resolve: (t: Ticket) => void;
  reject: (e: Error) => void;
  detach: () => void;
  state: 'queued' | 'granted' | 'dropped';
  ticket?: Ticket;
}

export class Scheduler {
  private queues = new Map<string, Waiter[]>();
  private running = new Map<string, number>();
  /** The adapter set each model was given last (pickWaiter). */
  private lastGroup = new Map<string, string>();
  private total = 0;
  private seq = 0;
  private now: () => number;
  /** Called for each waiter dropped before dispatch (cancelled, expired, aborted). */
  onDrop?: (model: string, priority: PriorityName, reason: 'cancelled' | 'expired' | 'aborted') => void;

  constructor(private o: SchedulerOptions) {
    this.now = o.now ?? Date.now;
  }

  /** Effective priority of a waiter now (base + aging). */
  effective(w: { base: number; enqueuedAt: number }, now = this.now()): number {
    if (!this.o.agingMs) return w.base;
    return w.base + AGING_STEP * Math.floor((now - w.enqueuedAt) / this.o.agingMs);
  }

  /**
   * Joins model's queue. Throws RESOURCE_EXHAUSTED synchronously when the model's queue or the
   * global queue is full. `deadline` is absolute (now() based; 0 = none); `cancel` is the client.
   */
  enter(model: string, priority: PriorityName, o: { deadline?: number; cancel?: AbortSignal; group?: string } = {}): Waiting {
    const q = this.queues.get(model) ?? [];
    if (q.length >= this.o.maxQueuePerModel) {
      throw new RuntimeError(Code.RESOURCE_EXHAUSTED, `the queue for ${model} is full (${q.length} waiting, max_queue_per_model = ${this.o.maxQueuePerModel}); retry later`);
    }
    if (this.total >= this.o.maxQueueTotal) {
      throw new RuntimeError(Code.RESOURCE_EXHAUSTED, `the runtime's queue is full (${this.total} waiting, max_queue_total = ${this.o.maxQueueTotal}); retry later`);
    }
    if (o.cancel?.aborted) throw new RuntimeError(Code.CANCELLED, 'the client went away before the request was queued');
    let resolve!: (t: Ticket) => void;
    let reject!: (e: Error) => void;
    const granted = new Promise<Ticket>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    granted.catch(() => {}); // the caller may be awaiting something else when it is dropped
    const w: Waiter = { seq: ++this.seq, group: o.group ?? '', model, priority, base: PRIORITIES[priority], enqueuedAt: this.now(), deadline: o.deadline ?? 0, resolve, reject, detach: () => {}, state: 'queued' };
    const onAbort = () => this.drop(w, new RuntimeError(Code.CANCELLED, 'the client went away while the request was queued'), 'cancelled');
    o.cancel?.addEventListener('abort', onAbort, { once: true });
    let timer: NodeJS.Timeout | undefined;
    if (w.deadline) {
      timer = setTimeout(() => this.drop(w, new RuntimeError(Code.DEADLINE_EXCEEDED, `the deadline passed after ${this.now() - w.enqueuedAt} ms in the queue for ${model}; not run`), 'expired'), Math.max(0, w.deadline - this.now()));
      timer.unref?.();
    }
    w.detach = () => {
      o.cancel?.removeEventListener('abort', onAbort);
      if (timer) clearTimeout(timer);
    };
    q.push(w);
    this.queues.set(model, q);
    this.total++;
    queueMicrotask(() => this.pump(model));
    return {
      model,
      priority,
      granted,
      abort: (e: Error) => {
        if (w.state === 'queued') this.drop(w, e, 'aborted');
        else if (w.state === 'granted') w.ticket?.release();
      },
    };
  }

  private remove(w: Waiter): void {
    const q = this.queues.get(w.model);
    const i = q ? q.indexOf(w) : -1;
    if (i >= 0) {
      q!.splice(i, 1);
      this.total--;
    }
  }

  private drop(w: Waiter, e: Error, reason: 'cancelled' | 'expired' | 'aborted'): void {
    if (w.state !== 'queued') return;
    w.state = 'dropped';
    w.detach();
    this.remove(w);
    this.onDrop?.(w.model, w.priority, reason);
    w.reject(e);
  }

  /** Grants free slots of `model` to its best waiters. Call when capacity may have grown. */
  pump(model: string): void {
    const q = this.queues.get(model);
    if (!q) return;
    for (;;) {
      if (!q.length) break;
      const running = this.running.get(model) ?? 0;
      if (running >= this.o.capacity(model)) break;
      const now = this.now();
      const pick = pickWaiter(q, (w) => this.effective(w, now), now, this.lastGroup.get(model), this.o.agingMs);
      const best = pick.w;
      if (pick.passedOver) pick.passedOver.passedAt ??= now;
      if (best.deadline && best.deadline <= now) {
        this.drop(best, new RuntimeError(Code.DEADLINE_EXCEEDED, `the deadline passed after ${now - best.enqueuedAt} ms in the queue for ${model}; not run`), 'expired');
        continue;
      }
      best.state = 'granted';
      this.lastGroup.set(model, best.group);
      best.detach();
      this.remove(best);
      this.running.set(model, running + 1);
      let released = false;
      const ticket: Ticket = {
        model,
        priority: best.priority,
        waitedMs: now - best.enqueuedAt,
        release: () => {
          if (released) return;
          released = true;
          this.running.set(model, Math.max(0, (this.running.get(model) ?? 1) - 1));
          this.pump(model);
        },
      };
      best.ticket = ticket;
      best.resolve(ticket);
    }
    if (!q.length && !(this.running.get(model) ?? 0)) this.queues.delete(model);
  }

  /** Drops every waiter of a model (it was unloaded or failed). */
  failAll(model: string, e: Error): void {
    for (const w of [...(this.queues.get(model) ?? [])]) this.drop(w, e, 'aborted');
  }

  /** Waiting requests of a model (all priorities). */
  queued(model: string): number {
    return this.queues.get(model)?.length ?? 0;
  }

  /** Requests of a model holding a slot. */
  runningOf(model: string): number {
    return this.running.get(model) ?? 0;
  }

  get totalQueued(): number {
    return this.total;
  }

  /** Waiting requests per model per priority; every priority of every model that has a queue or holds slots appears (0 included). */
  snapshot(models: Iterable<string> = []): { model: string; priority: PriorityName; depth: number }[] {
    const names = new Set<string>([...models, ...this.queues.keys()]);
    const out: { model: string; priority: PriorityName; depth: number }[] = [];
    for (const model of [...names].sort()) {
      const q = this.queues.get(model) ?? [];
      for (const priority of Object.keys(PRIORITIES) as PriorityName[]) out.push({ model, priority, depth: q.filter((w) => w.priority === priority).length });
    }
    return out;
  }

  /** Order in which the waiters of a model would be dispatched now (for tests and `aios ps`). */
  order(model: string): { priority: PriorityName; effective: number; waitedMs: number }[] {
    const now = this.now();
    return [...(this.queues.get(model) ?? [])]
      .sort((a, b) => this.effective(b, now) - this.effective(a, now) || a.seq - b.seq)
      .map((w) => ({ priority: w.priority, effective: this.effective(w, now), waitedMs: now - w.enqueuedAt }));
  }
}
