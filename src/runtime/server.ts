/**
 * gRPC front end: aios.runtime.AIRuntime (proto/runtime.proto), grpc.health.v1.Health and server
 * reflection, on a unix socket (admin; mode 0660, group runtime.socket_group) and/or TCP (mutual TLS
 * when configured: tls.ts; each call's scope checked by an interceptor: auth.ts). Message types are
 * generated from the protos (src/runtime/generated/, by `npm run build`), so a renamed field fails
 * the build. Everything goes through RuntimeService. Imports nothing from the build side.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, rmSync, statSync } from 'node:fs';
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
import type { InferInput, SessionOutcome } from './service.js';
import type { SessionCounts, SessionInfo } from './sessions.js';
import { authorizeGrpc, type AuthGuard } from './auth.js';
import { KEY_SCOPES, UnknownKeyError, type KeyInfo, type KeyScope, type KeyStore } from './keys.js';
import type { ApiKey } from './generated/aios/runtime/ApiKey.js';
import { listenMutualTls, type TlsListener, type TlsMaterial } from './tls.js';
import { hostOf } from './config.js';
import type { Log } from './log.js';
import { RecentGenerations } from './recent.js';

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

/** The CPUs a process may run on (Cpus_allowed_list in /proc/<pid>/status: its cpuset and affinity), "" when it cannot be read. */
export function cpusOf(pid: number): string {
  if (!pid) return '';
  try {
    return /^Cpus_allowed_list:\s*(\S+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? '';
  } catch {
    return '';
  }
}

const toStatus = (m: ModelView, sessions?: SessionCounts): ModelStatus => ({
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
  pinned_by: m.pinnedBy,
  cpus: cpusOf(m.pid),
  idle_until_unix_ms: m.idleUntil,
  inflight: m.inflight,
  queued: m.queued,
  queued_by_priority: m.queuedByPriority,
  reported_bytes: m.reportedBytes,
  vram_estimate_bytes: m.vramEstimateBytes,
  vram_bytes: m.vramActualBytes,
  parallel: m.parallel,
  cgroup_memory_bytes: m.cgroupMemoryBytes,
  cgroup_peak_bytes: m.cgroupPeakBytes,
  memory_limit_bytes: m.memoryLimitBytes,
  oom_kills: m.oomKills,
  socket: m.socket,
  adapters: m.adapters.map((a) => ({ name: a.name, file: a.file, description: a.description, scale: a.scale, loaded: a.loaded, refused: a.refused })),
  sessions: sessions?.count ?? 0,
  session_states: sessions?.states ?? 0,
  session_bytes: sessions?.bytes ?? 0,
  rpc_workers: m.rpcWorkers.map((w) => ({ address: w.address, bytes: w.bytes, planned_bytes: w.plannedBytes, available_bytes: w.availableBytes, free_bytes: w.freeBytes })),
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
  adapters: (r.adapters ?? []).map((a) => ({ name: a.name, scale: a.scale ?? undefined })),
  task: r.task ?? '',
  sessionId: r.session_id ?? '',
});

/** A session turn's outcome as the API reports it (sessions.ts). */
const sessionOut = (x: SessionOutcome | undefined) =>
  x ? { id: x.id, cache: x.cache, restored_tokens: x.restoredTokens, cached_tokens: x.cachedTokens, restore_ms: x.restoreMs, saved: x.saved, note: x.note } : undefined;

const sessionInfoOut = (i: SessionInfo) => ({
  id: i.id,
  model: i.model,
  model_sha256: i.modelSha256,
  adapters: i.adapters,
  ctx_size: i.ctxSize,
  turns: i.turns,
  messages: i.messages,
  kv_bytes: i.kvBytes,
  kv_tokens: i.kvTokens,
  created: i.created,
  updated: i.updated,
  last_cache: i.lastCache,
});

/** SaveSession's and RestoreSession's answer. */
const sessionReply = (r: { info: SessionInfo; outcome: SessionOutcome }) => ({ info: sessionInfoOut(r.info), outcome: sessionOut(r.outcome) });

/** The adapters an answer reports (InferResponse / the last InferChunk). */
const appliedOut = (a: { name: string; scale: number; score?: number }[] | undefined) => (a ?? []).map((x) => ({ name: x.name, scale: x.scale, ...(x.score !== undefined ? { score: x.score } : {}) }));

export interface Listening {
  server: grpc.Server;
  tcpPort?: number;
  /** The TCP listener uses mutual TLS. */
  tls?: boolean;
  socket?: string;
  /** Stop accepting, let in-flight calls finish (up to graceMs), then stop the models. */
  shutdown(graceMs?: number): Promise<void>;
}

/**
 * A unary handler from an async function (errors become gRPC statuses). `signal` aborts when the
 * client cancels the call: work that waits for a slot or a child stops with it.
 */
const unary =
  <Req, Res>(fn: (req: Req, signal: AbortSignal) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
  (call, cb) => {
    const ctrl = new AbortController();
    call.on('cancelled', () => ctrl.abort());
    Promise.resolve()
      .then(() => fn(call.request, ctrl.signal))
      .then(
        (r) => cb(null, r),
        (e) => cb(grpcError(e)),
      );
  };

const toApiKey = (k: KeyInfo): ApiKey => ({ id: k.id, scope: k.scope, name: k.name, created: k.created, source: k.source, revoked: k.revoked });

/** The key store, or FAILED_PRECONDITION saying how to turn keys on. */
function keyStore(keys: KeyStore | undefined): KeyStore {
  if (!keys) throw new RuntimeError(Code.FAILED_PRECONDITION, 'HTTP API keys are off on this runtime (runtime.http_keys is ""); set it to a keys file (it may be empty) to use keys');
  return keys;
}

export function handlers(svc: RuntimeService, o: { keys?: KeyStore; log?: Log } = {}): AIRuntimeHandlers {
  const recent = new RecentGenerations(svc.events); // tokens/s now, time-to-first-token p50 (ListModels)
  return {
    CreateKey: unary(async (r) => {
      const scope = (r.scope || 'infer') as KeyScope;
      if (!KEY_SCOPES.includes(scope)) throw new RuntimeError(Code.INVALID_ARGUMENT, `scope: must be one of ${KEY_SCOPES.join(', ')} (got "${r.scope}")`);
      let made: ReturnType<KeyStore['create']>;
      try {
        made = keyStore(o.keys).create({ scope, name: r.name });
      } catch (e) {
        if (e instanceof RuntimeError) throw e;
        throw new RuntimeError(/name/.test((e as Error).message) ? Code.INVALID_ARGUMENT : Code.FAILED_PRECONDITION, (e as Error).message);
      }
      o.log?.(`HTTP API key ${made.info.id} created (scope ${scope}${made.info.name ? `, name ${made.info.name}` : ''})`);
      return { info: toApiKey(made.info), key: made.key };
    }),
    ListKeys: unary(async () => ({ keys: keyStore(o.keys).list().map(toApiKey) })),
    SaveSession: unary(async (r, signal) => sessionReply(await svc.saveSession(r.session_id, signal))),
    RestoreSession: unary(async (r, signal) => sessionReply(await svc.restoreSession(r.session_id, signal))),
    ListSessions: unary(async () => {
      const list = await svc.listSessions();
      return { sessions: list.map(sessionInfoOut), dir: svc.sessions.dir, total_bytes: list.reduce((a, x) => a + x.kvBytes, 0), max_bytes: svc.sessions.maxBytes };
    }),
    DeleteSession: unary(async (r) => {
      await svc.deleteSession(r.session_id);
      o.log?.(`session ${r.session_id} deleted`);
      return { ok: true, message: `deleted session ${r.session_id}` };
    }),
    Spend: unary(async (r) => {
      if (r.month && !/^\d{4}-(0[1-9]|1[0-2])$/.test(r.month)) throw new RuntimeError(Code.INVALID_ARGUMENT, `month: must be YYYY-MM (got "${r.month}")`);
      const view = svc.cloud.view(r.month || undefined);
      return {
        month: view[0]?.month || r.month || new Date().toISOString().slice(0, 7),
        months: svc.cloud.enabled ? svc.cloud.months() : [],
        ledger_dir: svc.cloud.enabled ? svc.cloud.ledger.dir : '',
        providers: view.map((p) => ({
          name: p.name,
          provider: p.provider,
          model: p.model,
          budget_usd: p.budgetUsd,
          spent_usd: p.spentUsd,
          reserved_usd: p.reservedUsd,
          remaining_usd: p.remainingUsd,
          requests: p.requests,
          failures: p.failures,
          input_tokens: p.tokens.input,
          output_tokens: p.tokens.output,
          cache_read_tokens: p.tokens.cacheRead,
          cache_write_tokens: p.tokens.cacheWrite,
          reasoning_tokens: p.tokens.reasoning,
          fallback_only: p.fallbackOnly,
          rate_limit_rpm: p.rateLimitRpm,
          unavailable: p.unavailable,
        })),
      };
    }),
    RevokeKey: unary(async (r) => {
      const store = keyStore(o.keys);
      let done: boolean;
      try {
        done = store.revoke(r.id);
      } catch (e) {
        if (e instanceof UnknownKeyError) throw new RuntimeError(Code.NOT_FOUND, e.message);
        throw new RuntimeError(Code.FAILED_PRECONDITION, (e as Error).message);
      }
      if (done) o.log?.(`HTTP API key ${r.id} revoked`);
      return { ok: true, message: done ? `revoked ${r.id}` : `${r.id} was already revoked` };
    }),
    LoadModel: unary(async (r) => {
      await svc.load(r.model_name, r.model_path, { ctx: r.context_length, gpuLayers: r.gpu_layers, threads: r.threads, port: r.port, memoryLimitBytes: Number(r.memory_limit_bytes ?? 0) });
      const m = svc.models().find((x) => x.name === r.model_name);
      if (!m) throw new RuntimeError(Code.INTERNAL, `${r.model_name} was loaded but is not listed`);
      return toStatus(m, (await svc.sessionCounts()).get(m.name));
    }),
    Reload: unary(async () => ({ models: await svc.reloadFile() })),
    PinModel: unary(async (r) => {
      const m = svc.pin(r.model_name, r.pinned);
      return { ...toStatus(m, (await svc.sessionCounts()).get(m.name)), ...recent.of(m.name) };
    }),
    UnloadModel: unary(async (r) => {
      await svc.unload(r.model_name);
      return { ok: true, message: `unloaded ${r.model_name}` };
    }),
    ListModels: unary(async () => {
      const sessions = await svc.sessionCounts();
      return { models: svc.models().map((m) => ({ ...toStatus(m, sessions.get(m.name)), ...recent.of(m.name) })) };
    }),
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
        vram_budget_bytes: h.vramBudgetBytes,
        vram_used_bytes: h.vramUsedBytes,
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
    Infer: unary(async (r, signal) => {
      const o = await svc.infer(inferInput(r), signal);
      return { text: o.text, tokens_used: o.tokensUsed, latency_ms: o.latencyMs, model_used: o.modelUsed, prompt_tokens: o.promptTokens, completion_tokens: o.completionTokens, provider: o.provider ?? '', cost_usd: o.costUsd ?? 0, adapters_applied: appliedOut(o.adapters), session: sessionOut(o.session) };
    }),
    StreamInfer: (call) => {
      const ctrl = new AbortController();
      call.on('cancelled', () => ctrl.abort());
      const progress = (p: { phase: string; bytes: number; total: number }) => call.write({ text: '', done: false, progress_phase: p.phase, progress_bytes: p.bytes, progress_total: p.total });
      Promise.resolve()
        .then(() => svc.infer(inferInput(call.request), ctrl.signal, (t) => call.write({ text: t, done: false }), progress))
        .then(
          (o) => {
            call.write({ text: '', done: true, model_used: o.modelUsed, tokens_used: o.tokensUsed, provider: o.provider ?? '', cost_usd: o.costUsd ?? 0, adapters_applied: appliedOut(o.adapters), session: sessionOut(o.session) });
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

/**
 * Checks every call's scope before its handler runs (PERMISSION_DENIED naming the scope needed).
 * Calls without TLS (the unix socket, loopback TCP) are admin: see auth.ts.
 */
export function scopeInterceptor(guard?: AuthGuard, secure: { port?: number } = {}): grpc.ServerInterceptor {
  return (method, call) => {
    const listener = new grpc.ServerListenerBuilder()
      .withOnReceiveMetadata((md, next) => {
        const tls = secure.port !== undefined && call.getConnectionInfo().localPort === secure.port;
        const d = authorizeGrpc(method.path, call.getAuthContext(), { tls });
        if (d.ok) return next(md);
        guard?.failure('grpc', call.getPeer().replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1'), d.reason, d.message);
        call.sendStatus({ code: grpc.status.PERMISSION_DENIED, details: d.message, metadata: new grpc.Metadata() });
      })
      .build();
    return new grpc.ServerInterceptingCall(call, new grpc.ResponderBuilder().withStart((next) => next(listener)).build());
  };
}

/** A group's id from /etc/group (or a number as is). */
export function groupId(name: string, groupFile = '/etc/group'): number | undefined {
  if (/^\d+$/.test(name)) return Number(name);
  for (const line of readFileSync(groupFile, 'utf8').split('\n')) {
    const [n, , gid] = line.split(':');
    if (n === name && gid && /^\d+$/.test(gid)) return Number(gid);
  }
  return undefined;
}

export interface ServeOptions {
  /** TCP host:port ("" = none). With `tls`, mutual TLS; without, plain (loopback, or insecure_listen). */
  listen?: string;
  socket?: string;
  /** Group for the unix socket (mode 0660). */
  socketGroup?: string;
  /** Certificate, key and client CA for the TCP listener. */
  tls?: TlsMaterial;
  guard?: AuthGuard;
  keys?: KeyStore;
  log?: Log;
}

export async function serve(svc: RuntimeService, o: ServeOptions): Promise<Listening> {
  const def = loadProtos();
  const proto = grpc.loadPackageDefinition(def) as unknown as Protos;
  const secure: { port?: number } = {};
  const server = new grpc.Server({ 'grpc.max_receive_message_length': 16 * 1024 * 1024, interceptors: [scopeInterceptor(o.guard, secure)] });
  server.addService(proto.aios.runtime.AIRuntime.service, handlers(svc, { keys: o.keys, log: o.log }));
  server.addService(proto.grpc.health.v1.Health.service, healthHandlers(svc));
  new ReflectionService(def).addToServer(server);

  const bind = (addr: string) =>
    new Promise<number>((resolve, reject) => server.bindAsync(addr, grpc.ServerCredentials.createInsecure(), (e, port) => (e ? reject(e) : resolve(port))));
  let tlsListener: TlsListener | undefined;
  const out: Listening = {
    server,
    shutdown: async (graceMs = 10_000) => {
      const closed = tlsListener?.close();
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
      await closed;
      await svc.stop();
      if (out.socket && existsSync(out.socket)) rmSync(out.socket, { force: true });
    },
  };
  if (o.listen) {
    const host = hostOf(o.listen);
    if (o.tls) {
      // Our TLS server checks the client certificate; grpc-js serves the connections it accepts.
      const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
      const port = Number(/:(\d+)$/.exec(o.listen)?.[1] ?? NaN);
      if (!Number.isInteger(port)) throw new RuntimeError(Code.INVALID_ARGUMENT, `runtime.listen: expected host:port (got "${o.listen}")`);
      tlsListener = await listenMutualTls({ host, port, material: o.tls, guard: o.guard, accept: (s) => injector.injectConnection(s) });
      out.tcpPort = secure.port = tlsListener.port;
      out.tls = true;
    } else {
      // Plain: loopback, or what runtime.insecure_listen allowed (the daemon refused or warned: config.ts's exposureProblems).
      out.tcpPort = await bind(o.listen);
    }
  }
  if (o.socket) {
    mkdirSync(dirname(o.socket), { recursive: true });
    rmSync(o.socket, { force: true });
    await bind(`unix:${o.socket}`);
    chmodSync(o.socket, 0o660);
    if (o.socketGroup) {
      try {
        const gid = groupId(o.socketGroup);
        if (gid === undefined) throw new Error(`no group "${o.socketGroup}" in /etc/group`);
        // Under systemd with Group= it is the daemon's own group already, and the unit's seccomp
        // filter (~@privileged) refuses chown with EPERM: change only what needs changing.
        if (statSync(o.socket).gid !== gid) chownSync(o.socket, -1, gid);
      } catch (e) {
        o.log?.(`runtime.socket_group = "${o.socketGroup}": cannot give ${o.socket} to that group (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); only the daemon's own group can use the socket (under systemd: Group=${o.socketGroup} or SupplementaryGroups=${o.socketGroup})`, 'warn');
      }
    }
    out.socket = o.socket;
  }
  return out;
}
