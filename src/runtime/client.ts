/**
 * The gRPC client of aios-runtime (the CLI's `aios runtime` verbs and `aios ps`, qemu-test's probe,
 * the benchmarks), typed by the types generated from proto/runtime.proto; mutual TLS from a TLS dir
 * (connectRuntime). This, config.ts and keys.ts are what code outside src/runtime/ may import.
 */
import * as grpc from '@grpc/grpc-js';
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { checkServerIdentity } from 'node:tls';
import { loadProtos, type Protos } from './server.js';
import type { AIRuntimeClient } from './generated/aios/runtime/AIRuntime.js';
import type { InferRequest } from './generated/aios/runtime/InferRequest.js';
import type { PullProgress__Output } from './generated/aios/runtime/PullProgress.js';
import type { LoadModelRequest } from './generated/aios/runtime/LoadModelRequest.js';
import type { UnloadModelRequest } from './generated/aios/runtime/UnloadModelRequest.js';
import type { PinModelRequest } from './generated/aios/runtime/PinModelRequest.js';
import type { Empty } from './generated/aios/runtime/Empty.js';
import type { ReloadReply__Output } from './generated/aios/runtime/ReloadReply.js';
import type { ModelStatus__Output } from './generated/aios/runtime/ModelStatus.js';
import type { Status__Output } from './generated/aios/runtime/Status.js';
import type { ModelList__Output } from './generated/aios/runtime/ModelList.js';
import type { InferResponse__Output } from './generated/aios/runtime/InferResponse.js';
import type { HealthStatus__Output } from './generated/aios/runtime/HealthStatus.js';
import type { CreateKeyRequest } from './generated/aios/runtime/CreateKeyRequest.js';
import type { CreatedKey__Output } from './generated/aios/runtime/CreatedKey.js';
import type { KeyList__Output } from './generated/aios/runtime/KeyList.js';
import type { RevokeKeyRequest } from './generated/aios/runtime/RevokeKeyRequest.js';
import type { SpendRequest } from './generated/aios/runtime/SpendRequest.js';
import type { SpendReport__Output } from './generated/aios/runtime/SpendReport.js';
import type { SessionRequest } from './generated/aios/runtime/SessionRequest.js';
import type { SessionReply__Output } from './generated/aios/runtime/SessionReply.js';
import type { SessionList__Output } from './generated/aios/runtime/SessionList.js';
import type { SessionOutcome__Output } from './generated/aios/runtime/SessionOutcome.js';

export type RuntimeClient = AIRuntimeClient;
export type { InferRequest } from './generated/aios/runtime/InferRequest.js';
export type { InferResponse__Output as InferResponse } from './generated/aios/runtime/InferResponse.js';
export type { ModelStatus__Output as ModelStatus } from './generated/aios/runtime/ModelStatus.js';
export type { HealthStatus__Output as HealthStatus } from './generated/aios/runtime/HealthStatus.js';
export type PullProgress = PullProgress__Output;
export type { ApiKey__Output as ApiKey } from './generated/aios/runtime/ApiKey.js';
export type { SpendReport__Output as SpendReport } from './generated/aios/runtime/SpendReport.js';
export type { SessionList__Output as SessionList } from './generated/aios/runtime/SessionList.js';
export type { SessionInfo__Output as SessionInfo } from './generated/aios/runtime/SessionInfo.js';

/** The files a TLS dir holds (`aios build` writes them into out/<name>.pki/; `--tls-dir`, AIOS_TLS_DIR). */
export const TLS_DIR_FILES = { ca: 'ca.crt', cert: 'client.crt', key: 'client.key', httpKey: 'http-key' } as const;

export interface ConnectOptions {
  /** A directory with ca.crt, client.crt, client.key: mutual TLS for a TCP address (a unix socket needs none). */
  tlsDir?: string;
  /** The name the server's certificate must carry, when the address is not one of its names (e.g. an IP not in its SANs). */
  serverName?: string;
}

/** ca.crt, client.crt and client.key of a TLS dir; an error names a missing file. */
export function readTlsDir(dir: string): { ca: Buffer; cert: Buffer; key: Buffer } {
  const read = (f: string) => {
    const file = join(dir, f);
    if (!existsSync(file)) throw new Error(`TLS dir ${dir} has no ${f} (it needs ${TLS_DIR_FILES.ca}, ${TLS_DIR_FILES.cert} and ${TLS_DIR_FILES.key}, as aios build writes them into out/<name>.pki/)`);
    return readFileSync(file);
  };
  return { ca: read(TLS_DIR_FILES.ca), cert: read(TLS_DIR_FILES.cert), key: read(TLS_DIR_FILES.key) };
}

/** The HTTP API key in a TLS dir (`http-key`), for clients of the HTTP API. */
export function httpKeyFrom(dir: string): string {
  const file = join(dir, TLS_DIR_FILES.httpKey);
  if (!existsSync(file)) throw new Error(`TLS dir ${dir} has no ${TLS_DIR_FILES.httpKey} (the HTTP API key aios build writes beside the certificates)`);
  return readFileSync(file, 'utf8').trim();
}

/**
 * A client of the runtime at `address` ("host:port" or "unix:/run/aios/runtime.sock"): with
 * `tlsDir`, mutual TLS over TCP (the image's listener); a unix socket is always plain.
 */
export function connectRuntime(address: string, o: ConnectOptions = {}): RuntimeClient {
  const pkg = grpc.loadPackageDefinition(loadProtos()) as unknown as Protos;
  if (!o.tlsDir || address.startsWith('unix:')) return new pkg.aios.runtime.AIRuntime(address, grpc.credentials.createInsecure());
  const { ca, cert, key } = readTlsDir(o.tlsDir);
  if (o.serverName) {
    const options: grpc.ClientOptions = { 'grpc.ssl_target_name_override': o.serverName, 'grpc.default_authority': o.serverName };
    return new pkg.aios.runtime.AIRuntime(address, grpc.credentials.createSsl(ca, key, cert), options);
  }
  const host = address.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
  if (isIP(host)) {
    // An IP address is checked against the certificate's IP SANs as usual, but not sent as the TLS
    // server name (SNI may not be an IP; Node warns, DEP0123, on every such connection).
    const options: grpc.ClientOptions = { 'grpc.ssl_target_name_override': 'aios-runtime' };
    return new pkg.aios.runtime.AIRuntime(address, grpc.credentials.createSsl(ca, key, cert, { checkServerIdentity: (_name, c) => checkServerIdentity(host, c) }), options);
  }
  return new pkg.aios.runtime.AIRuntime(address, grpc.credentials.createSsl(ca, key, cert));
}

/** connectRuntime() under its first name. */
export const connect = connectRuntime;

const TLS_TROUBLE = /certificate|altnames|self[- ]signed|verify|SSL|TLS|secure|handshake|alert/i;

/**
 * An error of a call as a user should read it: a failed TLS handshake says so (certificate not
 * accepted / wrong CA?) instead of grpc-js's connection details, and a plain-text client that
 * reaches a TLS listener is told to pass --tls-dir.
 */
export function explainError(e: unknown, address: string, o: ConnectOptions = {}): string {
  const err = e as Partial<grpc.ServiceError> & Error;
  const details = err?.details ?? err?.message ?? String(e);
  if (err?.code === grpc.status.UNAVAILABLE && !address.startsWith('unix:')) {
    if (o.tlsDir && TLS_TROUBLE.test(details)) {
      const why = /altnames|does not match/i.test(details)
        ? `the server's certificate is not valid for the name "${o.serverName ?? address.replace(/:\d+$/, '')}"; pass --tls-server-name <one of its names> (e.g. its hostname)`
        : /self[- ]signed|unable to (get|verify)|verify/i.test(details)
          ? `the server's certificate is not signed by ${join(o.tlsDir, TLS_DIR_FILES.ca)}: wrong CA? (is ${o.tlsDir} the pki dir of the image at ${address}?)`
          : `certificate not accepted / wrong CA? The runtime refused ${join(o.tlsDir, TLS_DIR_FILES.cert)} (expired, or signed by another image's CA?)`;
      return `TLS handshake with ${address} failed: ${why}`;
    }
    const dropped = /Failed to connect|Connection (dropped|closed)|disconnected|ECONNRESET|EPIPE|socket hang up|Protocol error|Received HTTP|RST_STREAM/i.test(details);
    if (o.tlsDir && dropped) {
      return `${address} closed the TLS connection: certificate not accepted / wrong CA? (is ${o.tlsDir} the pki dir of the image at ${address}, and is its client certificate still valid?)`;
    }
    if (!o.tlsDir && dropped) {
      return `${address} did not answer plain-text gRPC: it probably requires mutual TLS (the image's listener does); pass --tls-dir out/<name>.pki or set AIOS_TLS_DIR (${details})`;
    }
  }
  if (err?.code === grpc.status.DEADLINE_EXCEEDED && o.tlsDir && !address.startsWith('unix:') && /remote_addr=\s*(,|$)|LB pick|Waiting for LB pick/i.test(details)) {
    return `no answer from ${address} within the deadline, before the call started: after repeated authentication failures from one address the runtime answers slowly (certificate not accepted / wrong CA?); ${details}`;
  }
  if (err?.code === grpc.status.PERMISSION_DENIED) return `permission denied: ${details}`;
  return err?.message ?? String(e);
}

/** The unary methods, by name, with their request and response types (generated from the proto). */
interface Unary {
  LoadModel: { req: LoadModelRequest; res: ModelStatus__Output };
  UnloadModel: { req: UnloadModelRequest; res: Status__Output };
  ListModels: { req: Empty; res: ModelList__Output };
  Infer: { req: InferRequest; res: InferResponse__Output };
  HealthCheck: { req: Empty; res: HealthStatus__Output };
  CreateKey: { req: CreateKeyRequest; res: CreatedKey__Output };
  ListKeys: { req: Empty; res: KeyList__Output };
  RevokeKey: { req: RevokeKeyRequest; res: Status__Output };
  Spend: { req: SpendRequest; res: SpendReport__Output };
  SaveSession: { req: SessionRequest; res: SessionReply__Output };
  RestoreSession: { req: SessionRequest; res: SessionReply__Output };
  ListSessions: { req: Empty; res: SessionList__Output };
  DeleteSession: { req: SessionRequest; res: Status__Output };
  Reload: { req: Empty; res: ReloadReply__Output };
  PinModel: { req: PinModelRequest; res: ModelStatus__Output };
}

/** One unary call with a deadline. */
export function unary<M extends keyof Unary>(c: RuntimeClient, method: M, req: Unary[M]['req'], deadlineMs = 60_000): Promise<Unary[M]['res']> {
  return new Promise((resolve, reject) => {
    const fn = c[method] as unknown as (r: unknown, m: grpc.Metadata, o: grpc.CallOptions, cb: grpc.requestCallback<unknown>) => grpc.ClientUnaryCall;
    fn.call(c, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (e, r) => (e ? reject(e) : resolve(r as Unary[M]['res'])));
  });
}

/** StreamInfer: `onText` gets each piece; resolves with the last chunk's model and token count. */
export function streamInfer(c: RuntimeClient, req: InferRequest, onText: (t: string) => void): Promise<{ model_used: string; tokens_used: number; session?: SessionOutcome__Output | null }> {
  return new Promise((resolve, reject) => {
    const s = c.StreamInfer(req);
    let last: { model_used: string; tokens_used: number; session?: SessionOutcome__Output | null } = { model_used: '', tokens_used: 0 };
    s.on('data', (d) => {
      if (d.text) onText(d.text);
      if (d.done) last = { model_used: d.model_used, tokens_used: d.tokens_used, session: d.session };
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
