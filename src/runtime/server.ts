/**
 * gRPC front end: aios.runtime.AIRuntime (proto/runtime.proto), grpc.health.v1.Health and server
 * reflection, on a unix socket and/or loopback TCP. Imports nothing from the build side.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { chmodSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Code, RuntimeError } from './errors.js';
import type { RuntimeService } from './service.js';
import type { ModelInfo } from './manager.js';
import { PRIORITIES, parsePriority, type PriorityName } from './events.js';

/** proto/ beside the bundle (in the image: /usr/lib/aios-runtime/proto), else the repository's. */
export const PROTO_DIR = existsSync(fileURLToPath(new URL('./proto/runtime.proto', import.meta.url)))
  ? fileURLToPath(new URL('./proto/', import.meta.url))
  : fileURLToPath(new URL('../../proto/', import.meta.url));

export function loadProtos(dir = PROTO_DIR): protoLoader.PackageDefinition {
  return protoLoader.loadSync(['runtime.proto', 'health.proto'], { includeDirs: [dir], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
}

const toStatus = (m: ModelInfo, byPriority: Record<string, number> = {}) => ({
  name: m.name,
  level: m.level,
  state: m.state,
  pid: m.pid,
  port: m.port,
  memory_bytes: m.memoryBytes,
  last_used_unix_ms: m.lastUsed,
  uptime_ms: m.uptimeMs,
  path: m.path,
  restarts: m.restarts,
  error: m.error,
  estimate_bytes: m.estimateBytes,
  actual_bytes: m.actualBytes,
  estimate_error_pct: m.estimateErrorPct,
  pinned: m.pinned,
  idle_until_unix_ms: m.idleUntil,
  inflight: m.inflight,
  queued: m.queued,
  queued_by_priority: byPriority,
  reported_bytes: m.reportedBytes,
  parallel: m.parallel,
});

/** ListModels: every loaded model with its queue depth per priority. */
function modelList(svc: RuntimeService) {
  const q = svc.queueSnapshot();
  return svc.manager.list().map((m) => toStatus(m, Object.fromEntries(q.filter((x) => x.model === m.name && x.depth > 0).map((x) => [x.priority, x.depth]))));
}

function grpcError(e: unknown): Partial<grpc.StatusObject> {
  if (e instanceof RuntimeError) return { code: e.code as number, details: e.message };
  return { code: Code.INTERNAL, details: `internal error: ${(e as Error)?.message ?? String(e)}` };
}

type Req = {
  model?: string;
  prompt?: string;
  system_prompt?: string;
  max_tokens?: number;
  temperature?: number;
  intelligence_level?: string;
  grammar?: string;
  timeout_ms?: number;
  priority?: string;
};
function priorityOf(p: string | undefined): PriorityName {
  try {
    return parsePriority(p);
  } catch {
    throw new RuntimeError(Code.INVALID_ARGUMENT, `priority: must be one of ${Object.keys(PRIORITIES).join(', ')} (got "${p}")`);
  }
}
const inferInput = (r: Req) => ({
  model: r.model ?? '',
  prompt: r.prompt ?? '',
  systemPrompt: r.system_prompt ?? '',
  maxTokens: r.max_tokens ?? 0,
  temperature: r.temperature ?? 0,
  intelligenceLevel: r.intelligence_level ?? '',
  grammar: r.grammar ?? '',
  timeoutMs: r.timeout_ms ?? 0,
  priority: priorityOf(r.priority),
});

export interface Listening {
  server: grpc.Server;
  tcpPort?: number;
  socket?: string;
  /** Stop accepting, let in-flight calls finish (up to graceMs), then stop the models. */
  shutdown(graceMs?: number): Promise<void>;
}

export async function serve(svc: RuntimeService, o: { listen?: string; socket?: string }): Promise<Listening> {
  const def = loadProtos();
  const proto = grpc.loadPackageDefinition(def) as unknown as {
    aios: { runtime: { AIRuntime: { service: grpc.ServiceDefinition } } };
    grpc: { health: { v1: { Health: { service: grpc.ServiceDefinition } } } };
  };
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  const unary =
    <T, R>(fn: (req: T, call: grpc.ServerUnaryCall<T, R>) => Promise<R>) =>
    (call: grpc.ServerUnaryCall<T, R>, cb: grpc.sendUnaryData<R>) => {
      fn(call.request, call).then(
        (r) => cb(null, r),
        (e) => cb(grpcError(e)),
      );
    };

  server.addService(proto.aios.runtime.AIRuntime.service, {
    LoadModel: unary(async (r: { model_name: string; model_path: string; context_length: number; gpu_layers: number; threads: number }) =>
      toStatus(await svc.load(r.model_name, r.model_path, { ctx: r.context_length, gpuLayers: r.gpu_layers, threads: r.threads })),
    ),
    UnloadModel: unary(async (r: { model_name: string }) => {
      if (!r.model_name) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model_name: must not be empty');
      await svc.manager.unload(r.model_name);
      return { ok: true, message: `unloaded ${r.model_name}` };
    }),
    ListModels: unary(async () => ({ models: modelList(svc) })),
    HealthCheck: unary(async () => ({
      ready: svc.ready,
      status: svc.ready ? 'SERVING' : 'NOT_SERVING',
      models_ready: svc.manager.list().filter((m) => m.state === 'ready').length,
      uptime_ms: Date.now() - svc.startedAt,
      version: '0.1.0',
      memory_budget_bytes: svc.manager.memory().budgetBytes,
      memory_used_bytes: svc.manager.memory().usedBytes,
      queued: svc.scheduler.totalQueued,
    })),
    PullModel: (call: grpc.ServerWritableStream<{ model: string }, unknown>) => {
      (async () => {
        const id = call.request.model;
        if (!id) throw new RuntimeError(Code.INVALID_ARGUMENT, 'model: must not be empty');
        const e = svc.catalog().find((x) => x.id === id || x.file === id);
        if (!e) throw new RuntimeError(Code.NOT_FOUND, `"${id}" is not in the catalog (${svc.catalog().map((x) => x.id).join(', ')})`);
        await svc.install(e, (p) => call.write({ model: e.id, bytes: p.bytes, total: p.total, done: false }));
        const { join } = await import('node:path');
        const { statSync } = await import('node:fs');
        const path = join(svc.config.models.model_dir, e.file);
        const size = statSync(path).size;
        call.write({ model: e.id, bytes: size, total: size, done: true, path });
        call.end();
      })().catch((err) => call.emit('error', grpcError(err)));
    },
    Infer: (call: grpc.ServerUnaryCall<Req, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const ctrl = new AbortController();
      call.on('cancelled', () => ctrl.abort());
      Promise.resolve()
        .then(() => svc.infer(inferInput(call.request), ctrl.signal))
        .then(
        (o) => cb(null, { text: o.text, tokens_used: o.tokensUsed, latency_ms: o.latencyMs, model_used: o.modelUsed, prompt_tokens: o.promptTokens, completion_tokens: o.completionTokens }),
        (e) => cb(grpcError(e)),
      );
    },
    StreamInfer: (call: grpc.ServerWritableStream<Req, unknown>) => {
      const ctrl = new AbortController();
      call.on('cancelled', () => ctrl.abort());
      const progress = (p: { phase: string; bytes: number; total: number }) => call.write({ text: '', done: false, progress_phase: p.phase, progress_bytes: p.bytes, progress_total: p.total });
      Promise.resolve()
        .then(() => svc.infer(inferInput(call.request), ctrl.signal, (t) => call.write({ text: t, done: false }), progress))
        .then(
          (o) => {
            call.write({ text: '', done: true, model_used: o.modelUsed, tokens_used: o.tokensUsed });
            call.end();
          },
          (e) => call.emit('error', grpcError(e)),
        );
    },
  });

  const healthStatus = () => (svc.ready ? 'SERVING' : 'NOT_SERVING');
  server.addService(proto.grpc.health.v1.Health.service, {
    Check: (call: grpc.ServerUnaryCall<{ service: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      const s = call.request.service;
      if (s && s !== 'aios.runtime.AIRuntime') return cb({ code: Code.NOT_FOUND, details: `unknown service ${s}` });
      cb(null, { status: healthStatus() });
    },
    Watch: (call: grpc.ServerWritableStream<{ service: string }, unknown>) => {
      call.write({ status: healthStatus() });
      const t = setInterval(() => call.write({ status: healthStatus() }), 5000);
      call.on('cancelled', () => clearInterval(t));
    },
  });
  new ReflectionService(def).addToServer(server);

  const bind = (addr: string) =>
    new Promise<number>((resolve, reject) => server.bindAsync(addr, grpc.ServerCredentials.createInsecure(), (e, port) => (e ? reject(e) : resolve(port))));
  const out: Listening = {
    server,
    shutdown: async (graceMs = 10_000) => {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      });
      await svc.stop();
      if (out.socket && existsSync(out.socket)) rmSync(out.socket, { force: true });
    },
  };
  if (o.listen) {
    const host = o.listen.replace(/:\d+$/, '');
    if (!['127.0.0.1', 'localhost', '[::1]', '::1'].includes(host) && process.env.AIOS_RUNTIME_ALLOW_REMOTE !== '1') {
      // Anything but loopback must be configured explicitly; the config is explicit, so allow it but say so.
      process.stderr.write(`aios-runtime: listening on ${o.listen}, which is not loopback\n`);
    }
    out.tcpPort = await bind(o.listen);
  }
  if (o.socket) {
    mkdirSync(dirname(o.socket), { recursive: true });
    rmSync(o.socket, { force: true });
    await bind(`unix:${o.socket}`);
    chmodSync(o.socket, 0o660);
    out.socket = o.socket;
  }
  return out;
}
