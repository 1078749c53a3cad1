/**
 * The gRPC client of aios-runtime (the CLI's `aios runtime` verbs and `aios ps`, qemu-test's probe,
 * the benchmarks), typed by the types generated from proto/runtime.proto. This and config.ts are
 * what code outside src/runtime/ may import.
 */
import * as grpc from '@grpc/grpc-js';
import { loadProtos, type Protos } from './server.js';
import type { AIRuntimeClient } from './generated/aios/runtime/AIRuntime.js';
import type { InferRequest } from './generated/aios/runtime/InferRequest.js';
import type { PullProgress__Output } from './generated/aios/runtime/PullProgress.js';
import type { LoadModelRequest } from './generated/aios/runtime/LoadModelRequest.js';
import type { UnloadModelRequest } from './generated/aios/runtime/UnloadModelRequest.js';
import type { Empty } from './generated/aios/runtime/Empty.js';
import type { ModelStatus__Output } from './generated/aios/runtime/ModelStatus.js';
import type { Status__Output } from './generated/aios/runtime/Status.js';
import type { ModelList__Output } from './generated/aios/runtime/ModelList.js';
import type { InferResponse__Output } from './generated/aios/runtime/InferResponse.js';
import type { HealthStatus__Output } from './generated/aios/runtime/HealthStatus.js';

export type RuntimeClient = AIRuntimeClient;
export type { InferRequest } from './generated/aios/runtime/InferRequest.js';
export type { InferResponse__Output as InferResponse } from './generated/aios/runtime/InferResponse.js';
export type { ModelStatus__Output as ModelStatus } from './generated/aios/runtime/ModelStatus.js';
export type { HealthStatus__Output as HealthStatus } from './generated/aios/runtime/HealthStatus.js';
export type PullProgress = PullProgress__Output;

/** address: "host:port" or "unix:/run/aios/runtime.sock". */
export function connect(address: string): RuntimeClient {
  const pkg = grpc.loadPackageDefinition(loadProtos()) as unknown as Protos;
  return new pkg.aios.runtime.AIRuntime(address, grpc.credentials.createInsecure());
}

/** The unary methods, by name, with their request and response types (generated from the proto). */
interface Unary {
  LoadModel: { req: LoadModelRequest; res: ModelStatus__Output };
  UnloadModel: { req: UnloadModelRequest; res: Status__Output };
  ListModels: { req: Empty; res: ModelList__Output };
  Infer: { req: InferRequest; res: InferResponse__Output };
  HealthCheck: { req: Empty; res: HealthStatus__Output };
}

/** One unary call with a deadline. */
export function unary<M extends keyof Unary>(c: RuntimeClient, method: M, req: Unary[M]['req'], deadlineMs = 60_000): Promise<Unary[M]['res']> {
  return new Promise((resolve, reject) => {
    const fn = c[method] as unknown as (r: unknown, m: grpc.Metadata, o: grpc.CallOptions, cb: grpc.requestCallback<unknown>) => grpc.ClientUnaryCall;
    fn.call(c, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (e, r) => (e ? reject(e) : resolve(r as Unary[M]['res'])));
  });
}

/** StreamInfer: `onText` gets each piece; resolves with the last chunk's model and token count. */
export function streamInfer(c: RuntimeClient, req: InferRequest, onText: (t: string) => void): Promise<{ model_used: string; tokens_used: number }> {
  return new Promise((resolve, reject) => {
    const s = c.StreamInfer(req);
    let last = { model_used: '', tokens_used: 0 };
    s.on('data', (d) => {
      if (d.text) onText(d.text);
      if (d.done) last = { model_used: d.model_used, tokens_used: d.tokens_used };
    });
    s.on('error', reject);
    s.on('end', () => resolve(last));
  });
}

/** Waits until the runtime answers HealthCheck with ready, or the deadline passes. */
export async function waitReady(c: RuntimeClient, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const h = await unary(c, 'HealthCheck', {}, 3000).catch(() => undefined);
    if (h?.ready) return true;
    await new Promise((r) => setTimeout(r, 1000));
  }
  return false;
}

/** PullModel: installs a catalog model into the runtime's model dir; resolves with the last (done) message. */
export function pullModel(c: RuntimeClient, model: string, onProgress: (p: PullProgress) => void): Promise<PullProgress> {
  return new Promise((resolve, reject) => {
    const s = c.PullModel({ model });
    let last: PullProgress | undefined;
    s.on('data', (d) => {
      last = d;
      onProgress(d);
    });
    s.on('error', reject);
    s.on('end', () => (last?.done ? resolve(last) : reject(new Error(`PullModel ${model} ended without completing`))));
  });
}
