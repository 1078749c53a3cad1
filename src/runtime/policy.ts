/**
 * Admission, eviction and idle unloading as pure functions: given the budget and what is loaded,
 * decide. No I/O, no logging, no clock of their own; the supervisor gathers the inputs (measured
 * memory, last use, queue depths) and carries the decision out. Tested with tables of cases in
 * test/unit/runtime-policy.test.ts.
 */

/** A model in memory, as the policy sees it. */
export interface Resident {
  name: string;
  /** Bytes it counts against the budget: measured when known, else estimated. */
  ramBytes: number;
  vramBytes: number;
  /** When its last request ended (ms epoch). */
  lastUsed: number;
  pinned: boolean;
  /** Requests in flight on it or waiting in its queue. */
  busy: number;
  /** Only ready models can be evicted (one that is starting or restarting is not idle). */
  ready: boolean;
}

export interface Candidate {
  name: string;
  ramBytes: number;
  vramBytes: number;
}

export interface PolicyBudget {
  ramBytes: number;
  /** 0 = GPU memory is not budgeted. */
  vramBytes: number;
}

export type Admission =
  | { action: 'load' }
  | { action: 'evict'; victims: string[] }
  | {
      action: 'refuse';
      /** The candidate cannot fit even with nothing else loaded. */
      tooBig: boolean;
      /** Which budget it does not fit: RAM, GPU memory or both. */
      short: ('ram' | 'vram')[];
      needBytes: number;
      freeBytes: number;
      budgetBytes: number;
      vramNeedBytes: number;
      vramFreeBytes: number;
      vramBudgetBytes: number;
    };

/** Whether a resident may be evicted to make room. */
export const evictable = (r: Resident): boolean => r.ready && !r.pinned && r.busy === 0;

/**
 * Load now, evict these (least recently used first) and then load, or refuse. Evicts only when
 * evicting every evictable model would make the candidate fit — never unloads something for
 * nothing — and then only as many as it takes, skipping models that free nothing of what is short. RAM and GPU memory are budgeted separately; a model
 * that needs no GPU memory is never refused for the GPU. No budget = always load.
 */
export function decideAdmission(budget: PolicyBudget | undefined, residents: readonly Resident[], c: Candidate): Admission {
  if (!budget) return { action: 'load' };
  const others = residents.filter((r) => r.name !== c.name);
  const used = others.reduce((s, r) => s + r.ramBytes, 0);
  const vused = others.reduce((s, r) => s + r.vramBytes, 0);
  const vramBudgeted = budget.vramBytes > 0 && c.vramBytes > 0;
  const fits = (ram: number, vram: number) => budget.ramBytes - ram >= c.ramBytes && (!vramBudgeted || budget.vramBytes - vram >= c.vramBytes);
  if (fits(used, vused)) return { action: 'load' };

  const idle = others.filter(evictable).sort((a, b) => a.lastUsed - b.lastUsed || a.name.localeCompare(b.name));
  const reclaim = idle.reduce((s, r) => s + r.ramBytes, 0);
  const vreclaim = idle.reduce((s, r) => s + r.vramBytes, 0);
  if (fits(used - reclaim, vused - vreclaim)) {
    const victims: string[] = [];
    let ram = used;
    let vram = vused;
    for (const r of idle) {
      if (fits(ram, vram)) break;
      // Only a model that frees what is short: evicting a CPU-only model never helps the GPU.
      const ramShort = budget.ramBytes - ram < c.ramBytes;
      const vramShort = vramBudgeted && budget.vramBytes - vram < c.vramBytes;
      if (!((ramShort && r.ramBytes > 0) || (vramShort && r.vramBytes > 0))) continue;
      victims.push(r.name);
      ram -= r.ramBytes;
      vram -= r.vramBytes;
    }
    return { action: 'evict', victims };
  }
  const short: ('ram' | 'vram')[] = [];
  if (budget.ramBytes - (used - reclaim) < c.ramBytes) short.push('ram');
  if (vramBudgeted && budget.vramBytes - (vused - vreclaim) < c.vramBytes) short.push('vram');
  return {
    action: 'refuse',
    tooBig: c.ramBytes > budget.ramBytes || (vramBudgeted && c.vramBytes > budget.vramBytes),
    short,
    needBytes: c.ramBytes,
    freeBytes: Math.max(0, budget.ramBytes - used),
    budgetBytes: budget.ramBytes,
    vramNeedBytes: vramBudgeted ? c.vramBytes : 0,
    vramFreeBytes: vramBudgeted ? Math.max(0, budget.vramBytes - vused) : 0,
    vramBudgetBytes: vramBudgeted ? budget.vramBytes : 0,
  };
}

/** A model as the idle rule sees it. */
export interface IdleCandidate {
  name: string;
  ready: boolean;
  pinned: boolean;
  busy: number;
  lastUsed: number;
  /** Idle timeout (0 = never). */
  idleMs: number;
}

/** When `m` will be unloaded for idleness if nothing happens (0 = it will not). */
export function idleUntil(m: IdleCandidate): number {
  return !m.pinned && m.idleMs > 0 && m.ready && m.busy === 0 ? m.lastUsed + m.idleMs : 0;
}

/** The models whose idle time ran out at `now`. */
export function idleExpired(models: readonly IdleCandidate[], now: number): string[] {
  return models.filter((m) => {
    const t = idleUntil(m);
    return t > 0 && now > t;
  }).map((m) => m.name);
}
