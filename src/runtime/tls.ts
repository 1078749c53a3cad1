/**
 * TLS for the runtime's TCP listeners: reading the configured certificate, key and client CA
 * (systemd credentials or paths), and the gRPC listener with mutual TLS.
 *
 * gRPC over TLS is a `tls.Server` of our own whose authenticated connections are handed to grpc-js
 * (`Server.createConnectionInjector`): the client certificate is checked here, after the handshake,
 * so every refusal is counted with its reason (expired, untrusted, none, handshake), logged with the
 * peer and answered after the peer's backoff delay. grpc-js then sees a TLS socket whose peer
 * certificate gives each call's scope (auth.ts). Imports nothing from the build side.
 */
import { existsSync, readFileSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import * as tls from 'node:tls';
import type { AddressInfo, Socket } from 'node:net';
import type { RuntimeConfig } from './config.js';
import { certReason, peerIp, type AuthGuard } from './auth.js';

export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  /** CA for client certificates (mutual TLS). */
  ca?: Buffer;
}

/**
 * The file a config value names: an absolute path, or a systemd credential name (no "/") read from
 * $CREDENTIALS_DIRECTORY. Errors name the config key, never a file's content.
 */
export function resolveCredential(value: string, key: string, env: NodeJS.ProcessEnv = process.env): string {
  if (isAbsolute(value)) {
    if (!existsSync(value)) throw new Error(`runtime.${key}: ${value} does not exist`);
    return value;
  }
  if (value.includes('/')) throw new Error(`runtime.${key} = "${value}": give an absolute path or a systemd credential name (no "/")`);
  const dir = env.CREDENTIALS_DIRECTORY;
  if (!dir) throw new Error(`runtime.${key} = "${value}" names a systemd credential, but $CREDENTIALS_DIRECTORY is not set (not started by systemd with LoadCredential=${value}:…?); give an absolute path instead`);
  const file = join(dir, value);
  if (!existsSync(file)) throw new Error(`runtime.${key}: no credential "${value}" in $CREDENTIALS_DIRECTORY (${dir}); the unit needs LoadCredential=${value}:<file>`);
  return file;
}

/** The gRPC (mutual) and HTTP TLS material the config asks for, read and checked once at start. */
export function loadTls(rt: RuntimeConfig['runtime'], env: NodeJS.ProcessEnv = process.env): { grpc?: TlsMaterial; http?: TlsMaterial } {
  if (!rt.tls_cert && !rt.tls_key) return {};
  const read = (k: 'tls_cert' | 'tls_key' | 'tls_client_ca') => readFileSync(resolveCredential(rt[k], k, env));
  const base = { cert: read('tls_cert'), key: read('tls_key') };
  const ca = rt.tls_client_ca ? read('tls_client_ca') : undefined;
  try {
    tls.createSecureContext({ ...base, ca });
  } catch (e) {
    // OpenSSL's message (e.g. "key values mismatch"), which never quotes the files.
    throw new Error(`runtime.tls_cert / tls_key / tls_client_ca: not a usable certificate, key and CA: ${(e as Error).message}`);
  }
  return { grpc: ca ? { ...base, ca } : undefined, http: base };
}

/** Makes each connection remember its peer address (read at once), so that a failed handshake can still name it. */
export function watchPeers(server: tls.Server): void {
  server.on('connection', (raw: Socket) => void raw.remoteAddress);
}

/**
 * The peer of a TLS socket, also after a failed handshake destroyed it: then only the TCP socket
 * under it (`_parent`, remembered by watchPeers) still knows.
 */
export function tlsPeer(s: tls.TLSSocket | undefined): string {
  return peerIp(s?.remoteAddress ?? (s as { _parent?: Socket } | undefined)?._parent?.remoteAddress);
}

export interface TlsListener {
  server: tls.Server;
  port: number;
  close(): Promise<void>;
}

/**
 * Listens on host:port with mutual TLS; each connection whose client certificate the CA signed and
 * that negotiated HTTP/2 goes to `accept`, the rest are counted by `guard` and closed after its delay.
 */
export async function listenMutualTls(o: { host: string; port: number; material: TlsMaterial; guard?: AuthGuard; accept: (s: tls.TLSSocket) => void }): Promise<TlsListener> {
  const server = tls.createServer({
    cert: o.material.cert,
    key: o.material.key,
    ca: o.material.ca,
    requestCert: true,
    // Checked below, to count and log why; a refused connection never reaches gRPC.
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    minVersion: 'TLSv1.2',
    handshakeTimeout: 10_000,
  });
  const refused = new Set<tls.TLSSocket>();
  const refuse = (s: tls.TLSSocket, reason: string, detail: string) => {
    const wait = o.guard?.failure('grpc', tlsPeer(s), reason, detail) ?? 0;
    refused.add(s);
    void (o.guard?.delay(wait) ?? Promise.resolve()).then(() => {
      refused.delete(s);
      s.destroy();
    });
  };
  server.on('secureConnection', (s) => {
    s.on('error', () => {});
    if (!s.authorized) return refuse(s, certReason(s.authorizationError), String(s.authorizationError ?? 'no client certificate'));
    if (s.alpnProtocol !== 'h2') return refuse(s, 'tls_handshake', 'the client did not offer HTTP/2 (ALPN h2)');
    o.accept(s);
  });
  watchPeers(server);
  server.on('tlsClientError', (e: NodeJS.ErrnoException, s) => {
    // A plain-text client, a wrong protocol, a handshake that timed out: OpenSSL's reason only.
    o.guard?.failure('grpc', tlsPeer(s), 'tls_handshake', (e.code ?? e.message).slice(0, 120), { answered: false });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host || undefined, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    server,
    port: (server.address() as AddressInfo).port,
    close: () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of refused) s.destroy();
      return closed;
    },
  };
}
