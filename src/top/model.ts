/**
 * What `aios top` knows at one moment (a snapshot of the runtime and the machine) and what the user
 * is doing (the view: selection, filter, prompt, status line). Pure data and pure functions: the
 * terminal loop (app.ts) only fetches, calls these and draws.
 */
import type { HealthStatus, ModelStatus } from '../runtime/client.js';
import { parseCpuList, type Machine } from './machine.js';

/** A model row: as the runtime lists it, or one seen earlier in this session that it no longer lists (unloaded). */
export type TopModel = ModelStatus & { gone: boolean };

export interface Snapshot {
  /** When it was taken (ms epoch). */
  at: number;
  address: string;
  connected: boolean;
  /** Why the last poll failed (while disconnected). */
  error?: string;
  health?: HealthStatus;
  models: TopModel[];
  /** This host's figures; absent for a remote runtime. */
  machine?: Machine;
  /** The strategic layer's spend this month per cloud provider (Spend); absent or empty = none configured. */
  spend?: CloudSpend[];
  intervalMs: number;
}

export interface CloudSpend {
  name: string;
  spentUsd: number;
  budgetUsd: number;
  /** Why it cannot be used now; "" = usable. */
  unavailable: string;
}

export type Mode =
  | { kind: 'normal' }
  | { kind: 'prompt'; purpose: 'load' | 'filter'; text: string }
  | { kind: 'confirm'; action: 'unload' | 'restart'; model: string };

export interface Status {
  text: string;
  kind: 'info' | 'ok' | 'error';
}

export interface View {
  selected?: string;
  filter: string;
  mode: Mode;
  help: boolean;
  status?: Status;
}

export const initialView = (): View => ({ filter: '', mode: { kind: 'normal' }, help: false });

const LEVEL_ORDER: Record<string, number> = { operational: 0, tactical: 1, strategic: 2 };

/** Operational first, then tactical, then models loaded by request; by name within; unloaded ones last. */
export function sortModels(models: TopModel[]): TopModel[] {
  return [...models].sort((a, b) => Number(a.gone) - Number(b.gone) || (LEVEL_ORDER[a.level] ?? 9) - (LEVEL_ORDER[b.level] ?? 9) || a.name.localeCompare(b.name));
}

/**
 * The rows after a poll: what the runtime lists now, plus the models listed earlier in this session
 * that it no longer lists (unloaded or evicted), kept as `gone` rows so that `l` can load them back.
 */
export function mergeModels(previous: TopModel[], listed: ModelStatus[]): TopModel[] {
  const now = new Map(listed.map((m) => [m.name, { ...m, gone: false }]));
  for (const p of previous) {
    if (!now.has(p.name)) now.set(p.name, { ...p, gone: true, state: 'unloaded', pid: 0, port: 0, memory_bytes: 0, actual_bytes: 0, inflight: 0, queued: 0, queued_by_priority: {}, tokens_per_second: 0, ttft_p50_ms: 0, idle_until_unix_ms: 0, cpus: '' });
  }
  return sortModels([...now.values()]);
}

/** The CPUs the loaded models' children may run on (their ModelStatus.cpus). */
export function modelCpus(models: TopModel[]): Set<number> {
  return new Set(models.filter((m) => !m.gone).flatMap((m) => parseCpuList(m.cpus ?? '')));
}

/** The rows the filter lets through (a case-insensitive part of the name, level or state). */
export function visibleModels(models: TopModel[], filter: string): TopModel[] {
  const f = filter.trim().toLowerCase();
  if (!f) return models;
  return models.filter((m) => m.name.toLowerCase().includes(f) || m.level.toLowerCase().includes(f) || m.state.toLowerCase().includes(f));
}

/** The selected model: the one chosen if it is still visible, else the first visible. */
export function selectedModel(models: TopModel[], view: View): TopModel | undefined {
  const v = visibleModels(models, view.filter);
  return v.find((m) => m.name === view.selected) ?? v[0];
}

/** `--once --json`: one snapshot for scripts (sizes in bytes, times in ms). */
export function snapshotJson(s: Snapshot): object {
  return {
    at: new Date(s.at).toISOString(),
    address: s.address,
    connected: s.connected,
    ...(s.error ? { error: s.error } : {}),
    health: s.health ?? null,
    models: s.models
      .filter((m) => !m.gone)
      .map((m) => ({
        name: m.name,
        level: m.level,
        state: m.state,
        pinned: m.pinned,
        pinnedBy: m.pinned_by ?? '',
        cpus: m.cpus ?? '',
        slots: { busy: m.inflight, total: m.parallel },
        queued: m.queued,
        queuedByPriority: m.queued_by_priority ?? {},
        tokensPerSecond: Number(m.tokens_per_second.toFixed(2)),
        ttftP50Ms: Math.round(m.ttft_p50_ms),
        estimateBytes: m.estimate_bytes,
        actualBytes: m.actual_bytes,
        rssBytes: m.memory_bytes,
        estimateErrorPct: Number(m.estimate_error_pct.toFixed(1)),
        idleUntilUnixMs: m.idle_until_unix_ms,
        pid: m.pid,
        restarts: m.restarts,
        adapters: (m.adapters ?? []).map((a) => ({ name: a.name, loaded: a.loaded, ...(a.refused ? { refused: a.refused } : {}) })),
        sessions: m.sessions ?? 0,
        sessionStates: m.session_states ?? 0,
        sessionBytes: Number(m.session_bytes ?? 0),
        ...(m.error ? { error: m.error } : {}),
      })),
    spend: s.spend ?? [],
    machine: s.machine
      ? {
          cpuBusyPct: s.machine.cpuBusy.map((c) => (c == null ? null : Math.round(c * 1000) / 10)),
          modelCpus: [...modelCpus(s.models)].sort((a, b) => a - b),
          load: s.machine.load,
          memTotalBytes: s.machine.memTotalBytes,
          memAvailableBytes: s.machine.memAvailableBytes,
          zram: s.machine.zram,
        }
      : null,
  };
}
