/**
 * The runtime's shared vocabulary: request priorities and the events the service emits.
 * Front ends (gRPC in server.ts, HTTP in http.ts) and observers (metrics) use only these; nothing
 * here imports from the build side.
 */
import { EventEmitter } from 'node:events';

/** Request priorities: higher is served first (the gap between levels is what aging closes, 10 points per period). */
export const PRIORITIES = { system: 100, realtime: 90, default: 70, batch: 50 } as const;
export type PriorityName = keyof typeof PRIORITIES;

export function parsePriority(p: string | undefined): PriorityName {
  if (!p) return 'default';
  if (p in PRIORITIES) return p as PriorityName;
  throw new Error(`priority must be one of ${Object.keys(PRIORITIES).join(', ')} (got "${p}")`);
}

/** Why a model left memory. */
export type UnloadReason = 'idle' | 'evict' | 'request' | 'shutdown' | 'reload';

/** How a request ended, from the queue's point of view. */
export type RequestStatus = 'ok' | 'rejected' | 'cancelled' | 'expired' | 'error';

export interface RuntimeEventMap {
  /** A model load finished (ok or not); bytes are the estimate before and the measurement after. */
  load: [{ model: string; ms: number; ok: boolean; estimateBytes: number; actualBytes: number }];
  unload: [{ model: string; reason: UnloadReason }];
  /** The kernel's OOM killer ended a model's child inside its cgroup (issue 16): "out of memory: limit N MiB". */
  oom: [{ model: string; message: string }];
  /** Every request that entered withSlot(), once, when it ends. */
  request: [{ model: string; priority: PriorityName; status: RequestStatus; code: number; queuedMs: number }];
  /** A generation that produced output: time to first token and decode rate, from the front end that streamed it. */
  generation: [{ model: string; ttftMs: number; completionTokens: number; genMs: number; streamedTokens?: number }];
  /** Tokens of a streaming generation as they are produced (`generation`'s streamedTokens adds them up at its end): live tokens/s. */
  generating: [{ model: string; tokens: number }];
  /** Auto-install progress of a catalog model. */
  download: [{ model: string; bytes: number; total: number; done: boolean }];
  /** A refused authentication or authorization (auth.ts's AuthGuard): which listener, and why (never the credentials). */
  /** A cloud call of the strategic layer ended (cloud.ts): tokens by kind and its settled cost. */
  cloud: [{ provider: string; model: string; status: 'ok' | 'error' | 'cancelled' | 'lost'; tokens: { input: number; output: number; cacheRead: number; cacheWrite: number; reasoning: number }; costUsd: number; latencyMs: number }];
  authFailure: [{ listener: 'grpc' | 'http'; reason: string }];
}

export class RuntimeEvents extends EventEmitter<RuntimeEventMap> {}
