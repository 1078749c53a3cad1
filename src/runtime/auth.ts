/**
 * Who may do what, decided without I/O (the front ends in server.ts and http.ts ask these), and the
 * guard that counts, logs and slows down refused attempts.
 *
 * gRPC: a call over TLS has the scope of its client certificate's OU (`admin` or `infer`; any other
 * OU, or several, is no scope at all); a call without TLS (the unix socket, whose file mode and group
 * decide who connects; loopback TCP; a listener the config marks `insecure_listen`) is admin.
 * `infer` may call Infer, StreamInfer, ListModels, HealthCheck, the standard health service and
 * reflection; everything else (LoadModel, UnloadModel, PinModel, PullModel, the key methods, methods added
 * later) needs `admin`.
 *
 * HTTP: with `runtime.http_keys` set, every endpoint but /health needs `Authorization: Bearer <key>`;
 * the API (/v1/…) takes `infer` or `admin` keys, /metrics follows `runtime.metrics_auth`.
 */
import type { Log } from './log.js';
import type { RuntimeEvents } from './events.js';
import type { KeyCheck, KeyScope } from './keys.js';

export type GrpcScope = 'admin' | 'infer';

// Sessions: a client that knows a session's id may save or restore it; listing and deleting all of them is admin.
const INFER_METHODS = new Set(['Infer', 'StreamInfer', 'ListModels', 'HealthCheck', 'SaveSession', 'RestoreSession'].map((m) => `/aios.runtime.AIRuntime/${m}`));

/** The scope a gRPC method needs, from its path (`/package.Service/Method`). */
export function grpcScopeNeeded(path: string): GrpcScope {
  if (INFER_METHODS.has(path) || path.startsWith('/grpc.health.v1.Health/') || path.startsWith('/grpc.reflection.')) return 'infer';
  return 'admin';
}

/** The parts of grpc-js's AuthContext that decide (its `sslPeerCertificate.subject`). */
export interface PeerAuth {
  transportSecurityType?: string;
  /** Node's PeerCertificate: `subject` maps CN, OU, O… to a string (or an array when repeated). */
  sslPeerCertificate?: { subject?: object };
}

type Subject = Record<string, string | string[] | undefined>;

/** A certificate's scope from its subject's OU: exactly one OU, `admin` or `infer`. */
export function scopeFromSubject(subject: object | undefined): GrpcScope | undefined {
  const ou = (subject as Subject | undefined)?.OU;
  if (typeof ou !== 'string') return undefined;
  return ou === 'admin' || ou === 'infer' ? ou : undefined;
}

const describeCert = (subject: object | undefined) => {
  const v = (k: string) => [(subject as Subject | undefined)?.[k]].flat().filter(Boolean).join('+');
  return `CN=${v('CN') || '?'}${v('OU') ? `, OU=${v('OU')}` : ''}`;
};

export type GrpcDecision = { ok: true; scope: GrpcScope } | { ok: false; reason: 'no_scope' | 'forbidden' | 'no_certificate'; message: string };

/**
 * May this call go on? (PERMISSION_DENIED with `message` when not.) `o.tls`: the call came in on the
 * mutual-TLS listener, so it must carry a verified certificate (fail closed if it somehow does not).
 */
export function authorizeGrpc(path: string, auth: PeerAuth | null | undefined, o: { tls?: boolean } = {}): GrpcDecision {
  const need = grpcScopeNeeded(path);
  const method = path.split('/').pop() || path;
  if (auth?.transportSecurityType !== 'ssl') {
    if (o.tls) return { ok: false, reason: 'no_certificate', message: `${method}: no verified client certificate on this connection` };
    return { ok: true, scope: 'admin' };
  }
  const subject = auth.sslPeerCertificate?.subject;
  const have = scopeFromSubject(subject);
  if (!have) return { ok: false, reason: 'no_scope', message: `${method}: the client certificate (${describeCert(subject)}) has no scope: its OU must be "admin" or "infer"` };
  if (have === 'admin' || need === 'infer') return { ok: true, scope: have };
  return { ok: false, reason: 'forbidden', message: `${method} needs the admin scope; this client certificate (${describeCert(subject)}) has the infer scope` };
}

/** Why a client certificate was not accepted, from Node's `authorizationError` (a label value). */
export function certReason(authorizationError: string | Error | null | undefined): string {
  const code = typeof authorizationError === 'string' ? authorizationError : ((authorizationError as { code?: string } | null)?.code ?? '');
  switch (code) {
    case 'CERT_HAS_EXPIRED':
      return 'cert_expired';
    case 'CERT_NOT_YET_VALID':
      return 'cert_not_yet_valid';
    case 'UNABLE_TO_VERIFY_LEAF_SIGNATURE':
    case 'UNABLE_TO_GET_ISSUER_CERT':
    case 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY':
    case 'SELF_SIGNED_CERT_IN_CHAIN':
    case 'DEPTH_ZERO_SELF_SIGNED_CERT':
    case 'CERT_SIGNATURE_FAILURE':
    case 'CERT_UNTRUSTED':
    case 'CERT_REJECTED':
      return 'cert_untrusted';
    case '':
      return 'no_certificate';
    default:
      return 'cert_invalid';
  }
}

/** What an HTTP path needs. */
export type HttpNeed = { open: true } | { open: false; scopes: KeyScope[] };
export type MetricsAuth = 'api' | 'open' | 'metrics';

export function httpNeed(path: string, o: { keys: boolean; metricsAuth: MetricsAuth }): HttpNeed {
  if (path === '/health') return { open: true };
  if (path === '/metrics') {
    if (o.metricsAuth === 'open' || !o.keys) return { open: true };
    return { open: false, scopes: o.metricsAuth === 'metrics' ? ['metrics', 'admin'] : ['infer', 'admin', 'metrics'] };
  }
  return o.keys ? { open: false, scopes: ['infer', 'admin'] } : { open: true };
}

export type HttpDecision =
  | { ok: true; scope?: KeyScope; id?: string }
  | { ok: false; status: 401 | 403; reason: 'missing_key' | 'invalid_key' | 'revoked_key' | 'forbidden'; message: string; code: string; type: string };

/** Decides an HTTP request from its Authorization header; `check` verifies a presented key. */
export function authorizeHttp(path: string, authorization: string | undefined, need: HttpNeed, check: (key: string) => KeyCheck): HttpDecision {
  if (need.open) return { ok: true };
  const unauth = (reason: 'missing_key' | 'invalid_key' | 'revoked_key', message: string): HttpDecision => ({ ok: false, status: 401, reason, message, code: 'invalid_api_key', type: 'invalid_request_error' });
  const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization ?? '');
  if (!authorization) return unauth('missing_key', 'missing API key: send the header "Authorization: Bearer <key>" (keys: aios runtime keys create)');
  if (!m) return unauth('invalid_key', 'malformed Authorization header: expected "Bearer <key>"');
  const r = check(m[1]!);
  if (!r.ok) return r.reason === 'revoked_key' ? unauth('revoked_key', `API key ${r.id} was revoked`) : unauth('invalid_key', 'invalid API key');
  if (!need.scopes.includes(r.scope)) {
    return { ok: false, status: 403, reason: 'forbidden', message: `${path} needs a key with the ${need.scopes.join(' or ')} scope; key ${r.id} has ${r.scope}`, code: 'insufficient_scope', type: 'permission_error' };
  }
  return { ok: true, scope: r.scope, id: r.id };
}

/** Exponential delay before answering a peer's failed attempts (authentication only, not scope). */
export interface BackoffOptions {
  /** Failures answered at once. */
  free: number;
  /** The first delay; it doubles with each further failure. */
  baseMs: number;
  capMs: number;
  /** A peer's count starts over after this long without a failure. */
  forgetMs: number;
}
export const BACKOFF: BackoffOptions = { free: 3, baseMs: 200, capMs: 10_000, forgetMs: 10 * 60_000 };

export interface PeerFailures {
  failures: number;
  last: number;
}

/** The delay before answering a peer's `failures`-th failure in a row. */
export function backoffDelay(failures: number, o: BackoffOptions = BACKOFF): number {
  if (failures <= o.free) return 0;
  return Math.min(o.capMs, o.baseMs * 2 ** Math.min(30, failures - o.free - 1));
}

/** A peer's record after one more failure at `now` (an old record is forgotten). */
export function afterFailure(prev: PeerFailures | undefined, now: number, o: BackoffOptions = BACKOFF): PeerFailures {
  const kept = prev && now - prev.last < o.forgetMs ? prev.failures : 0;
  return { failures: kept + 1, last: now };
}

/** Whether a failure is worth a log line: the first ten from a peer, then every power of two (a flood does not flood the journal). */
export const logWorthy = (failures: number) => failures <= 10 || (failures & (failures - 1)) === 0;

/** IPv4-mapped IPv6 addresses as plain IPv4 (one peer, one record). */
export const peerIp = (addr: string | undefined) => (addr ?? 'unknown').replace(/^::ffff:(\d+\.\d+\.\d+\.\d+)$/, '$1');

/** Authentication failures (as opposed to scope refusals) that count towards a peer's delay. */
const AUTHENTICATION = new Set(['missing_key', 'invalid_key', 'revoked_key', 'cert_expired', 'cert_not_yet_valid', 'cert_untrusted', 'cert_invalid', 'no_certificate', 'tls_handshake']);

const MAX_PEERS = 10_000;
const MAX_WAITING = 256;

/**
 * Counts (the `authFailure` event: `aios_auth_failures_total`), logs (peer and reason, never what
 * was presented) and slows down refused attempts, per peer IP.
 */
export class AuthGuard {
  private peers = new Map<string, PeerFailures>();
  private waiting = 0;
  constructor(
    private o: { log: Log; events: RuntimeEvents; backoff?: BackoffOptions; now?: () => number },
  ) {}

  /**
   * Records a refusal; returns how long to wait before answering it (0 for scope refusals).
   * `answered: false`: nothing waits (the connection is already gone), so the log does not say it does.
   */
  failure(listener: 'grpc' | 'http', peer: string, reason: string, detail = '', o: { answered?: boolean } = {}): number {
    this.o.events.emit('authFailure', { listener, reason });
    const ip = peerIp(peer);
    if (!AUTHENTICATION.has(reason)) {
      this.o.log(`${listener}: refused from ${ip}: ${reason}${detail ? `: ${detail}` : ''}`, 'warn');
      return 0;
    }
    const now = (this.o.now ?? Date.now)();
    const rec = afterFailure(this.peers.get(ip), now, this.o.backoff);
    this.peers.delete(ip);
    this.peers.set(ip, rec);
    if (this.peers.size > MAX_PEERS) this.peers.delete(this.peers.keys().next().value!);
    const delay = backoffDelay(rec.failures, this.o.backoff);
    if (logWorthy(rec.failures)) {
      this.o.log(`${listener}: authentication failed from ${ip}: ${reason}${detail ? ` (${detail})` : ''}${rec.failures > 1 ? `; failure ${rec.failures} from this address` : ''}${delay && o.answered !== false ? `, answered after ${delay} ms` : ''}`, 'warn');
    }
    return delay;
  }

  /** Waits before answering a refusal (at once when many answers are already waiting). */
  async delay(ms: number): Promise<void> {
    if (ms <= 0 || this.waiting >= MAX_WAITING) return;
    this.waiting++;
    await new Promise((r) => setTimeout(r, ms).unref());
    this.waiting--;
  }
}
