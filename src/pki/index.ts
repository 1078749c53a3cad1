/**
 * Per-image credentials for aios-runtime (used by the build and the tests; the runtime never imports
 * this): a CA, the runtime's server certificate, client certificates whose OU is their gRPC scope
 * (`admin` or `infer`), and HTTP API keys (stored hashed; src/runtime/keys.ts has the format).
 *
 * Keys are EC P-256, made by Node (PKCS#8, written 0600 from the start, never on a command line);
 * certificates are made by the openssl CLI (`req`, `ca`), run without a shell. The directory is 0700.
 *
 * Files `createPki()` writes in `dir` (what `--tls-dir` / AIOS_TLS_DIR and `connectRuntime()` read):
 *   ca.crt ca.key             the CA (its key stays here: it signs new client certificates)
 *   server.crt server.key     the runtime's (SANs: hostname, localhost, 127.0.0.1, ::1 and `sans`)
 *   client.crt client.key     the builder's client certificate: CN=builder, OU=admin
 *   http-key                  the builder's HTTP API key (admin), plaintext, 0600
 *   http-keys                 the hashed keys file the image gets as a credential (runtime.http_keys)
 * Existing files are reused (a rebuild does not rotate anything); the server certificate is
 * re-issued when the names it must carry changed. `rotate: true` makes everything anew.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { isIP } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from '../util/exec.js';
import { createApiKey, formatKeysFile, hashKey, keyId, parseKeysFile, writeKeysFile, type KeyRecord, type KeyScope } from '../runtime/keys.js';

export { createApiKey, formatKeysFile, parseKeysFile, writeKeysFile, hashKey, type KeyRecord, type KeyScope };

export const PKI_FILES = {
  caCert: 'ca.crt',
  caKey: 'ca.key',
  serverCert: 'server.crt',
  serverKey: 'server.key',
  clientCert: 'client.crt',
  clientKey: 'client.key',
  httpKey: 'http-key',
  httpKeys: 'http-keys',
} as const;

export type Pki = { dir: string; made: string[]; httpKeyId: string } & { [K in keyof typeof PKI_FILES]: string };

export interface PkiOptions {
  /** The machine's hostname: the server certificate's CN and first SAN. */
  hostname: string;
  /** More names or IP addresses the server certificate is valid for. */
  sans?: string[];
  /** Validity of new certificates in days (default 3650: an image may run for years; rotate by rebuilding). */
  days?: number;
  /** Make every file anew (new CA: clients need the new ca.crt and client certificate). */
  rotate?: boolean;
}

const DNS_RE = /^(?=.{1,253}$)[A-Za-z0-9*]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$/;

/** The subjectAltName entries of a server certificate for these names, in a fixed order. */
export function serverSans(hostname: string, sans: string[] = []): string[] {
  const out: string[] = [];
  for (const n of [hostname, 'localhost', '127.0.0.1', '::1', ...sans]) {
    const v = n.trim().replace(/^\[(.*)\]$/, '$1');
    if (!v) continue;
    const entry = isIP(v) ? `IP:${v}` : DNS_RE.test(v) ? `DNS:${v.toLowerCase()}` : undefined;
    if (!entry) throw new Error(`"${n}" is neither a DNS name nor an IP address (server certificate names)`);
    if (!out.includes(entry)) out.push(entry);
  }
  return out;
}

function writeKey(file: string): void {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1', privateKeyEncoding: { type: 'pkcs8', format: 'pem' }, publicKeyEncoding: { type: 'spki', format: 'pem' } });
  rmSync(file, { force: true });
  writeFileSync(file, privateKey, { mode: 0o600, flag: 'wx' });
}

const subj = (parts: Record<string, string>) =>
  Object.entries(parts)
    .map(([k, v]) => `/${k}=${v.replace(/([/=\\])/g, '\\$1')}`)
    .join('');

/** openssl's config for the extensions and `openssl ca`, in a temporary directory. */
function opensslConfig(tmp: string, sanEntries: string[]): string {
  const alt = sanEntries.map((e, i) => `${e.startsWith('IP:') ? 'IP' : 'DNS'}.${i + 1} = ${e.slice(e.indexOf(':') + 1)}`).join('\n');
  const cnf = join(tmp, 'openssl.cnf');
  writeFileSync(
    cnf,
    `[req]
distinguished_name = dn
[dn]
[ca]
default_ca = ca_default
[ca_default]
database = ${join(tmp, 'index.txt')}
new_certs_dir = ${tmp}
rand_serial = yes
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
email_in_dn = no
[policy_any]
organizationName = optional
organizationalUnitName = optional
commonName = supplied
[ca_ext]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyAgreement
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = @alt
[client_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyAgreement
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[alt]
${alt || 'DNS.1 = localhost'}
`,
  );
  writeFileSync(join(tmp, 'index.txt'), '');
  return cnf;
}

const stamp = (d: Date) => d.toISOString().replace(/[-:T]/g, '').replace(/\.\d{3}Z$/, 'Z');

/** Signs a new key's certificate with the CA in pkiDir (openssl ca). */
async function issue(o: { pkiDir: string; key: string; cert: string; subject: Record<string, string>; ext: 'server_ext' | 'client_ext'; sans?: string[]; days: number; notAfterPast?: boolean }): Promise<void> {
  const tmp = await mkdtemp(join(tmpdir(), 'aios-pki-'));
  try {
    const cnf = opensslConfig(tmp, o.sans ?? []);
    const csr = join(tmp, 'req.csr');
    await run(['openssl', 'req', '-config', cnf, '-new', '-key', o.key, '-subj', subj(o.subject), '-out', csr]);
    // An expired certificate (for tests): valid for a day, two days ago.
    // Otherwise valid from an hour ago: a machine whose clock is a little behind (a VM just booted,
    // no NTP yet) would refuse a certificate issued "now" as not yet valid.
    const dates = o.notAfterPast
      ? ['-startdate', stamp(new Date(Date.now() - 2 * 86400_000)), '-enddate', stamp(new Date(Date.now() - 86400_000))]
      : ['-startdate', stamp(new Date(Date.now() - 3600_000)), '-enddate', stamp(new Date(Date.now() + o.days * 86400_000))];
    await run(['openssl', 'ca', '-batch', '-notext', '-config', cnf, '-cert', join(o.pkiDir, PKI_FILES.caCert), '-keyfile', join(o.pkiDir, PKI_FILES.caKey), '-in', csr, '-out', o.cert, '-extensions', o.ext, ...dates]);
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** The subjectAltName entries of a certificate, normalized as serverSans() writes them. */
export async function certSans(file: string): Promise<string[]> {
  const r = await run(['openssl', 'x509', '-in', file, '-noout', '-ext', 'subjectAltName'], { reject: false });
  if (r.exitCode !== 0) return [];
  const line = r.stdout.split('\n').slice(1).join(',');
  return line
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => s.replace(/^IP Address:/, 'IP:').replace(/^DNS:(.*)$/, (_, d: string) => `DNS:${d.toLowerCase()}`))
    .map((s) => (s.startsWith('IP:') ? `IP:${normalizeIp(s.slice(3))}` : s));
}

/** openssl prints ::1 as 0:0:0:0:0:0:0:1. */
function normalizeIp(ip: string): string {
  if (!ip.includes(':')) return ip;
  const parts = ip.split(':').map((p) => p.replace(/^0+(?=.)/, '').toLowerCase());
  // Longest run of zeros → "::"
  let best = [-1, 0];
  for (let i = 0; i < parts.length; ) {
    let j = i;
    while (j < parts.length && parts[j] === '0') j++;
    if (j - i > best[1]!) best = [i, j - i];
    i = j > i ? j : i + 1;
  }
  if (best[1]! < 2) return parts.join(':');
  return `${parts.slice(0, best[0]).join(':')}::${parts.slice(best[0]! + best[1]!).join(':')}`;
}

/** Creates (or completes, or with `rotate` renews) the credentials in `dir`; see the file's header. */
export async function createPki(dir: string, o: PkiOptions): Promise<Pki> {
  if (!DNS_RE.test(o.hostname)) throw new Error(`hostname "${o.hostname}" is not a valid DNS name`);
  const days = o.days ?? 3650;
  if (!Number.isInteger(days) || days < 1) throw new Error(`days must be a whole number ≥ 1 (got ${days})`);
  const sans = serverSans(o.hostname, o.sans);
  const f = Object.fromEntries(Object.entries(PKI_FILES).map(([k, v]) => [k, join(dir, v)])) as { [K in keyof typeof PKI_FILES]: string };
  if (o.rotate) for (const file of Object.values(f)) rmSync(file, { force: true });
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chmodSync(dir, 0o700);
  const made: string[] = [];

  const caNew = !existsSync(f.caCert) || !existsSync(f.caKey);
  if (caNew) {
    writeKey(f.caKey);
    const tmp = await mkdtemp(join(tmpdir(), 'aios-pki-'));
    try {
      const cnf = opensslConfig(tmp, []);
      const serial = `0x${randomBytes(16).toString('hex')}`;
      await run(['openssl', 'req', '-config', cnf, '-new', '-x509', '-key', f.caKey, '-sha256', '-days', String(days), '-set_serial', serial, '-subj', subj({ O: 'aios', CN: `aios CA ${o.hostname}` }), '-extensions', 'ca_ext', '-out', f.caCert]);
    } finally {
      await rm(tmp, { recursive: true, force: true });
    }
    made.push(PKI_FILES.caKey, PKI_FILES.caCert);
  }
  // A new CA invalidates every certificate it did not sign.
  const serverNeeded = caNew || !existsSync(f.serverCert) || !existsSync(f.serverKey) || (await certSans(f.serverCert)).join(',') !== sans.join(',');
  if (serverNeeded) {
    if (caNew || !existsSync(f.serverKey)) {
      writeKey(f.serverKey);
      made.push(PKI_FILES.serverKey);
    }
    await issue({ pkiDir: dir, key: f.serverKey, cert: f.serverCert, subject: { O: 'aios', CN: o.hostname }, ext: 'server_ext', sans, days });
    made.push(PKI_FILES.serverCert);
  }
  if (caNew || !existsSync(f.clientCert) || !existsSync(f.clientKey)) {
    writeKey(f.clientKey);
    await issue({ pkiDir: dir, key: f.clientKey, cert: f.clientCert, subject: { O: 'aios', OU: 'admin', CN: 'builder' }, ext: 'client_ext', days });
    made.push(PKI_FILES.clientKey, PKI_FILES.clientCert);
  }

  // The builder's HTTP API key, and the hashed keys file holding it (other keys in that file are kept).
  let key = existsSync(f.httpKey) ? readFileSync(f.httpKey, 'utf8').trim() : '';
  let records = existsSync(f.httpKeys) ? parseKeysFile(readFileSync(f.httpKeys, 'utf8'), f.httpKeys) : [];
  let id = keyId(key);
  if (!id || !records.some((r) => r.id === id && r.sha256 === hashKey(key))) {
    const others = records.filter((r) => r.id !== id && r.name !== 'builder');
    if (id) {
      // The key is there but its entry is not: add the entry.
      records = [...others, { id, scope: 'admin', sha256: hashKey(key), created: new Date().toISOString().replace(/\.\d{3}Z$/, 'Z'), name: 'builder' }];
    } else {
      const k = createApiKey({ scope: 'admin', name: 'builder' });
      ({ key, id } = k);
      records = [...others, k.record];
      rmSync(f.httpKey, { force: true });
      writeFileSync(f.httpKey, key + '\n', { mode: 0o600, flag: 'wx' });
      made.push(PKI_FILES.httpKey);
    }
    writeKeysFile(f.httpKeys, records);
    made.push(PKI_FILES.httpKeys);
  }
  for (const k of [f.caKey, f.serverKey, f.clientKey, f.httpKey, f.httpKeys]) chmodSync(k, 0o600);
  return { dir, made, httpKeyId: id, ...f };
}

/**
 * Another client certificate signed by the CA in pkiDir: `<outPrefix>.crt` and `<outPrefix>.key`
 * (0600), CN = `cn`, OU = the scope. `notAfterPast` makes one that expired yesterday (for tests).
 */
export async function issueClientCert(pkiDir: string, outPrefix: string, o: { cn: string; scope: 'admin' | 'infer' | string; days?: number; notAfterPast?: boolean }): Promise<{ cert: string; key: string }> {
  if (!NAME_RE.test(o.cn)) throw new Error(`client name "${o.cn}": letters, digits, space and . _ @ - only`);
  if (!NAME_RE.test(o.scope)) throw new Error(`scope "${o.scope}": letters, digits, space and . _ @ - only`);
  for (const f of [PKI_FILES.caCert, PKI_FILES.caKey]) if (!existsSync(join(pkiDir, f))) throw new Error(`${pkiDir}: no ${f} (make the directory with createPki / aios build first)`);
  const key = `${outPrefix}.key`;
  const cert = `${outPrefix}.crt`;
  writeKey(key);
  await issue({ pkiDir, key, cert, subject: { O: 'aios', OU: o.scope, CN: o.cn }, ext: 'client_ext', days: o.days ?? 3650, notAfterPast: o.notAfterPast });
  return { cert, key };
}

/** A tls dir for a client (ca.crt, client.crt, client.key as `--tls-dir` reads them) from a pki dir and another client's files. */
export function writeClientDir(dir: string, o: { ca: string; cert: string; key: string; httpKey?: string }): string {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, PKI_FILES.caCert), readFileSync(o.ca));
  writeFileSync(join(dir, PKI_FILES.clientCert), readFileSync(o.cert));
  rmSync(join(dir, PKI_FILES.clientKey), { force: true });
  writeFileSync(join(dir, PKI_FILES.clientKey), readFileSync(o.key), { mode: 0o600 });
  if (o.httpKey !== undefined) {
    rmSync(join(dir, PKI_FILES.httpKey), { force: true });
    writeFileSync(join(dir, PKI_FILES.httpKey), o.httpKey + '\n', { mode: 0o600 });
  }
  return dir;
}
