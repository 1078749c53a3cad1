/**
 * gRPC front end: aios.runtime.AIRuntime (proto/runtime.proto), grpc.health.v1.Health and server
 * reflection, on a unix socket and/or loopback TCP. Message types are generated from the protos
 * (src/runtime/generated/, by `npm run build`), so a renamed field fails the build. Everything
 * goes through RuntimeService. Imports nothing from the build side.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { chmodSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Code, RuntimeError } from './errors.js';
import type { ModelView, RuntimeService } from './service.js';
import { PRIORITIES, parsePriority, type PriorityName } from './events.js';
import type { ProtoGrpcType as RuntimeProto } from './generated/runtime.js';
import type { ProtoGrpcType as HealthProto } from './generated/health.js';
import type { AIRuntimeHandlers } from './generated/aios/runtime/AIRuntime.js';
import type { HealthHandlers } from './generated/grpc/health/v1/Health.js';
import type { ModelStatus } from './generated/aios/runtime/ModelStatus.js';
import type { InferRequest__Output } from './generated/aios/runtime/InferRequest.js';
import type { InferInput } from './service.js';

/** proto/ beside the bundle (in the image: /usr/lib/aios-runtime/proto), else the repository's. */
export const PROTO_DIR = existsSync(fileURLToPath(new URL('./proto/runtime.proto', import.meta.url)))
  ? fileURLToPath(new URL('./proto/', import.meta.url))
  : fileURLToPath(new URL('../../proto/', import.meta.url));

/** How both ends load the protos (the options the generated types were made for). */
export const PROTO_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

export function loadProtos(dir = PROTO_DIR): protoLoader.PackageDefinition {
  return protoLoader.loadSync(['runtime.proto', 'health.proto'], { includeDirs: [dir], ...PROTO_OPTIONS });
}

export type Protos = RuntimeProto & HealthProto;

const toStatus = (m: ModelView): ModelStatus => ({
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
  queued_by_priority: m.queuedByPriority,
  reported_bytes: m.reportedBytes,
  parallel: m.parallel,
});

function grpcError(e: unknown): Partial<grpc.StatusObject> {
  if (e instanceof RuntimeError) return { code: e.code as number, details: e.message };
  return { code: Code.INTERNAL, details: `internal error: ${(e as Error)?.message ?? String(e)}` };
}

function priorityOf(p: string | undefined): PriorityName {
  try {
    return parsePriority(p);
  } catch {
    throw new RuntimeError(Code.INVALID_ARGUMENT, `priority: must be one of ${Object.keys(PRIORITIES).join(', ')} (got "${p}")`);
  }
}

/**
 * An InferRequest as the service takes it: max_tokens 0 and an absent temperature (proto3 optional:
 * the loader leaves it undefined) mean "the model's default".
 */
const inferInput = (r: InferRequest__Output): InferInput => ({
  model: r.model,
  prompt: r.prompt,
  systemPrompt: r.system_prompt,
  params: { max_tokens: r.max_tokens === 0 ? undefined : r.max_tokens, temperature: r.temperature },
  intelligenceLevel: r.intelligence_level,
  grammar: r.grammar,
  timeoutMs: r.timeout_ms,
  priority: priorityOf(r.priority),
});

export interface Listening {
  server: grpc.Server;
  tcpPort?: number;
  socket?: string;
  /** Stop accepting, let in-flight calls finish (up to graceMs), then stop the models. */
  shutdown(graceMs?: number): Promise<void>;
}

/** A unary handler from an async function (errors become gRPC statuses). */
const unary =
  <Req, Res>(fn: (req: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
  (call, cb) => {
    fn(call.request, call).then(
      (r) => cb(null, r),
      (e) => cb(grpcError(e)),
    );
  };

export function handlers(svc: RuntimeService): AIRuntimeHandlers {
  return {
    LoadModel: unary(async (r) => {
      await svc.load(r.model_name, r.model_path, { ctx: r.context_length, gpuLayers: r.gpu_layers, threads: r.threads, port: r.port });
      const m = svc.models().find((x) => x.name === r.model_name);
      if (!m) throw new RuntimeError(Code.INTERNAL, `${r.model_name} was loaded but is not listed`);
      return toStatus(m);
    }),
    UnloadModel: unary(async (r) => {
      await svc.unload(r.model_name);
      return { ok: true, message: `unloaded ${r.model_name}` };
    }),
    ListModels: unary(async () => ({ models: svc.models().map(toStatus) })),
    HealthCheck: unary(async () => {
      const h = svc.health();
      return {
        ready: h.ready,
        status: h.ready ? 'SERVING' : 'NOT_SERVING',
        models_ready: h.modelsReady,
        uptime_ms: h.uptimeMs,
        version: '0.1.0',
        memory_budget_bytes: h.budgetBytes,
        memory_used_bytes: h.usedBytes,
        queued: h.queued,
      };
    }),
    PullModel: (call) => {
      svc
        .pull(call.request.model, (p) => call.write({ model: p.model, bytes: p.bytes, total: p.total, done: false }))
        .then((r) => {
          call.write({ model: r.model, bytes: r.bytes, total: r.bytes, done: true, path: r.path });
          call.end();
        })
        .catch((err) => call.emit('error', grpcError(err)));
    },
    Infer: (call, cb) => {
      const ctrl = new AbortController();
      call.on('cancelled', () => ctrl.abort());
      Promise.resolve()
        .then(() => svc.infer(inferInput(call.request), ctrl.signal))
        .then(
          (o) => cb(null, { text: o.text, tokens_used: o.tokensUsed, latency_ms: o.latencyMs, model_used: o.modelUsed, prompt_tokens: o.promptTokens, completion_tokens: o.completionTokens }),
          (e) => cb(grpcError(e)),
        );
    },
    StreamInfer: (call) => {
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
  };
}

function healthHandlers(svc: RuntimeService): HealthHandlers {
  const status = () => (svc.ready ? 'SERVING' : 'NOT_SERVING');
  return {
    Check: (call, cb) => {
      const s = call.request.service;
      if (s && s !== 'aios.runtime.AIRuntime') return cb({ code: Code.NOT_FOUND, details: `unknown service ${s}` });
      cb(null, { status: status() });
    },
    Watch: (call) => {
      call.write({ status: status() });
      const t = setInterval(() => call.write({ status: status() }), 5000);
      call.on('cancelled', () => clearInterval(t));
    },
  };
}

const LOOPBACK = ['127.0.0.1', 'localhost', '[::1]', '::1'];

export async function serve(svc: RuntimeService, o: { listen?: string; socket?: string; log?: (s: string, level?: 'warn') => void }): Promise<Listening> {
  const def = loadProtos();
  const proto = grpc.loadPackageDefinition(def) as unknown as Protos;
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024 });
  server.addService(proto.aios.runtime.AIRuntime.service, handlers(svc));
  server.addService(proto.grpc.health.v1.Health.service, healthHandlers(svc));
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
    // Anything but loopback must be configured explicitly; the config is explicit, so allow it but say so.
    if (!LOOPBACK.includes(host)) o.log?.(`gRPC on ${o.listen}, which is not loopback`, 'warn');
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
