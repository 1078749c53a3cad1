/**
 * Access checks of a booted image's gRPC listener, as `aios qemu-test` runs them through QEMU's port
 * forwarding (the image as it ships: mutual TLS with its own CA). Positive checks first (the
 * runtime slows down a peer after failed authentications, and every call here comes from one peer):
 *   infer-scope   a client certificate with OU=infer from the image's CA: Infer works, UnloadModel
 *                 (of a model that does not exist: nothing is unloaded even if the check fails) is
 *                 refused with PERMISSION_DENIED
 *   admin-scope   the builder's certificate (OU=admin): UnloadModel passes the scope check (an
 *                 unknown model: NOT_FOUND, not PERMISSION_DENIED)
 *   plain-text    a client without TLS is refused
 *   foreign-ca    a client certificate from another CA is refused
 * The extra certificates are made in a temporary directory and removed with it.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createPki, issueClientCert, writeClientDir } from '../pki/index.js';
import { safeRemove } from '../util/cleanup.js';

export interface AccessCheck {
  name: 'infer-scope' | 'admin-scope' | 'plain-text' | 'foreign-ca';
  ok: boolean;
  /** What happened (status codes and messages; never key material). */
  detail: string;
}

const DEADLINE = 30_000;

export async function accessChecks(address: string, pkiDir: string): Promise<AccessCheck[]> {
  const { connectRuntime, unary } = await import('../runtime/client.js');
  const grpc = await import('@grpc/grpc-js');
  const code = (e: unknown) => {
    const c = (e as { code?: number }).code;
    return c === undefined ? String((e as Error).message ?? e) : (grpc.status[c] ?? String(c));
  };
  const tmp = await mkdtemp(join(tmpdir(), 'aios-access-'));
  const out: AccessCheck[] = [];
  try {
    const withClient = async <T>(tlsDir: string | undefined, f: (c: ReturnType<typeof connectRuntime>) => Promise<T>): Promise<T> => {
      const c = connectRuntime(address, { tlsDir });
      try {
        return await f(c);
      } finally {
        c.close();
      }
    };

    // infer scope: may infer, may not unload.
    const infer = await issueClientCert(pkiDir, join(tmp, 'infer'), { cn: 'qemu-test-infer', scope: 'infer', days: 1 });
    const inferDir = writeClientDir(join(tmp, 'infer-dir'), { ca: join(pkiDir, 'ca.crt'), cert: infer.cert, key: infer.key });
    out.push(
      await withClient(inferDir, async (c) => {
        try {
          const r = await unary(c, 'Infer', { prompt: 'Respond with OK if you are working.', intelligence_level: 'operational', max_tokens: 2, temperature: 0, grammar: 'root ::= "OK"' }, DEADLINE);
          try {
            await unary(c, 'UnloadModel', { model_name: 'no-such-model-qemu-test' }, DEADLINE);
            return { name: 'infer-scope' as const, ok: false, detail: `Infer answered "${r.text}", and UnloadModel was allowed too (expected PERMISSION_DENIED)` };
          } catch (e) {
            return { name: 'infer-scope' as const, ok: code(e) === 'PERMISSION_DENIED', detail: `Infer answered "${r.text}"; UnloadModel: ${code(e)}` };
          }
        } catch (e) {
          return { name: 'infer-scope' as const, ok: false, detail: `Infer failed: ${code(e)} ${(e as Error).message}` };
        }
      }),
    );

    // admin scope: the builder's certificate passes the scope check of an admin call.
    out.push(
      await withClient(pkiDir, async (c) => {
        try {
          await unary(c, 'UnloadModel', { model_name: 'no-such-model-qemu-test' }, DEADLINE);
          return { name: 'admin-scope' as const, ok: true, detail: 'UnloadModel of an unknown model: OK' };
        } catch (e) {
          const s = code(e);
          return { name: 'admin-scope' as const, ok: s !== 'PERMISSION_DENIED' && s !== 'UNAVAILABLE', detail: `UnloadModel of an unknown model: ${s}` };
        }
      }),
    );

    // A client the listener must refuse: a HealthCheck that is answered fails the check.
    const refused = (name: 'plain-text' | 'foreign-ca', tlsDir: string | undefined, what: string) =>
      withClient(tlsDir, async (c): Promise<AccessCheck> => {
        try {
          await unary(c, 'HealthCheck', {}, DEADLINE);
          return { name, ok: false, detail: `${what} was answered` };
        } catch (e) {
          return { name, ok: true, detail: `refused: ${code(e)}` };
        }
      });
    out.push(await refused('plain-text', undefined, 'a plain-text HealthCheck'));
    const foreign = await createPki(join(tmp, 'foreign'), { hostname: 'elsewhere', days: 1 });
    const foreignDir = writeClientDir(join(tmp, 'foreign-dir'), { ca: join(pkiDir, 'ca.crt'), cert: foreign.clientCert, key: foreign.clientKey });
    out.push(await refused('foreign-ca', foreignDir, 'a HealthCheck with a certificate from another CA'));
  } finally {
    await safeRemove(tmp);
  }
  return out;
}
