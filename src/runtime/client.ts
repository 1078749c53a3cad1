/** A small gRPC client for aios-runtime (the CLI's `aios runtime` verbs and qemu-test's probe). */
import * as grpc from '@grpc/grpc-js';
import { loadProtos } from './server.js';

export type RuntimeClient = grpc.Client & Record<string, unknown>;

/** address: "host:port" or "unix:/run/aios/runtime.sock". */
export function connect(address: string): RuntimeClient {
  const pkg = grpc.loadPackageDefinition(loadProtos()) as unknown as { aios: { runtime: { AIRuntime: new (a: string, c: grpc.ChannelCredentials) => RuntimeClient } } };
  return new pkg.aios.runtime.AIRuntime(address, grpc.credentials.createInsecure());
}

export function unary<T>(c: RuntimeClient, method: string, req: object, deadlineMs = 60_000): Promise<T> {
  return new Promise((resolve, reject) =>
    (c[method] as (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void).call(
      c,
      req,
      new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs },
      (e, r) => (e ? reject(e) : resolve(r)),
    ),
  );
}

export function streamInfer(c: RuntimeClient, req: object, onText: (t: string) => void): Promise<{ model_used: string; tokens_used: number }> {
  return new Promise((resolve, reject) => {
    const s = (c.StreamInfer as (r: object) => grpc.ClientReadableStream<{ text: string; done: boolean; model_used: string; tokens_used: number }>).call(c, req);
    let last = { model_used: '', tokens_used: 0 };
    s.on('data', (d) => {
      if (d.text) onText(d.text);
      if (d.done) last = d;
    });
    s.on('error', reject);
    s.on('end', () => resolve(last));
  });
}

/** Waits until the runtime answers HealthCheck with ready, or the deadline passes. */
export async function waitReady(c: RuntimeClient, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const h = await unary<{ ready: boolean }>(c, 'HealthCheck', {}, 3000).catch(() => undefined);
    if (h?.ready) return true;
    await new Promise((r) => setTimeout(r, 1000));
  }
  return false;
}

export interface PullProgress {
  model: string;
  bytes: number;
  total: number;
  done: boolean;
  path: string;
}

/** PullModel: installs a catalog model into the runtime's model dir; resolves with the last (done) message. */
export function pullModel(c: RuntimeClient, model: string, onProgress: (p: PullProgress) => void): Promise<PullProgress> {
  return new Promise((resolve, reject) => {
    const s = (c.PullModel as (r: object) => grpc.ClientReadableStream<PullProgress>).call(c, { model });
    let last: PullProgress | undefined;
    s.on('data', (d: PullProgress) => {
      last = d;
      onProgress(d);
    });
    s.on('error', reject);
    s.on('end', () => (last?.done ? resolve(last) : reject(new Error(`PullModel ${model} ended without completing`))));
  });
}
