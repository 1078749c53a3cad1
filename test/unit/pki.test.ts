/**
 * src/pki: the per-image CA, server and client certificates (real openssl), and the builder's HTTP
 * API key; checked with Node's X509Certificate and `openssl verify`.
 */
import { describe, expect, it } from 'vitest';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { createPki, issueClientCert, serverSans, PKI_FILES } from '../../src/pki/index.js';
import { KeyStore, hashKey, parseKeysFile } from '../../src/runtime/keys.js';
import { tmp } from '../helpers.js';

const cert = (f: string) => new X509Certificate(readFileSync(f));
const mode = (f: string) => statSync(f).mode & 0o777;
const verify = (ca: string, c: string) => execa('openssl', ['verify', '-CAfile', ca, '-purpose', 'any', c], { reject: false });

describe('createPki', () => {
  it('SANs: hostname, localhost, 127.0.0.1, ::1 and the extra names; IPs told from DNS names', () => {
    expect(serverSans('aios', ['10.0.0.7', 'Box.lan', '[fe80::1]', 'aios'])).toEqual(['DNS:aios', 'DNS:localhost', 'IP:127.0.0.1', 'IP:::1', 'IP:10.0.0.7', 'DNS:box.lan', 'IP:fe80::1']);
    expect(() => serverSans('aios', ['bad name'])).toThrow(/"bad name" is neither a DNS name nor an IP address/);
  });

  it('writes the CA, the server and the builder client certificate (OU=admin), keys 0600 in a 0700 dir, and the builder HTTP key', async () => {
    const dir = join(tmp('aios-pki-'), 'img.pki');
    const p = await createPki(dir, { hostname: 'aios', sans: ['10.1.2.3', 'aios.lan'] });
    expect(mode(dir)).toBe(0o700);
    for (const k of [p.caKey, p.serverKey, p.clientKey, p.httpKey, p.httpKeys]) expect(mode(k)).toBe(0o600);
    expect(p.made.sort()).toEqual(Object.values(PKI_FILES).sort());

    const ca = cert(p.caCert);
    expect(ca.ca).toBe(true);
    expect(ca.subject).toMatch(/CN=aios CA aios/);
    const server = cert(p.serverCert);
    expect(server.subjectAltName).toBe('DNS:aios, DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1, IP Address:10.1.2.3, DNS:aios.lan');
    expect(server.checkIssued(ca)).toBe(true);
    expect(server.verify(ca.publicKey)).toBe(true);
    expect(server.checkHost('aios.lan')).toBe('aios.lan');
    expect(server.checkIP('10.1.2.3')).toBe('10.1.2.3');
    expect(server.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']); // serverAuth
    const client = cert(p.clientCert);
    expect(client.subject.split('\n')).toEqual(expect.arrayContaining(['CN=builder', 'OU=admin']));
    expect(client.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']); // clientAuth
    expect(client.verify(ca.publicKey)).toBe(true);
    expect(new Date(client.validTo).getTime()).toBeGreaterThan(Date.now() + 3000 * 86400_000);
    expect(createPrivateKey(readFileSync(p.clientKey)).asymmetricKeyDetails).toMatchObject({ namedCurve: 'prime256v1' });
    expect((await verify(p.caCert, p.clientCert)).exitCode).toBe(0);

    // The HTTP key: plaintext in http-key, only its hash in http-keys.
    const key = readFileSync(p.httpKey, 'utf8').trim();
    expect(key).toMatch(/^aios_[0-9a-f]{12}_/);
    const keysText = readFileSync(p.httpKeys, 'utf8');
    expect(keysText).not.toContain(key);
    expect(parseKeysFile(keysText, p.httpKeys)).toEqual([expect.objectContaining({ id: p.httpKeyId, scope: 'admin', sha256: hashKey(key), name: 'builder' })]);
    expect(new KeyStore({ buildFile: p.httpKeys }).check(key)).toEqual({ ok: true, id: p.httpKeyId, scope: 'admin' });
  });

  it('reuses what is there; re-issues only the server certificate when its names change; rotate renews all', async () => {
    const dir = join(tmp('aios-pki-'), 'img.pki');
    const first = await createPki(dir, { hostname: 'aios' });
    const snap = () => Object.fromEntries(Object.values(PKI_FILES).map((f) => [f, readFileSync(join(dir, f), 'utf8')]));
    const a = snap();
    const again = await createPki(dir, { hostname: 'aios' });
    expect(again.made).toEqual([]);
    expect(snap()).toEqual(a);
    expect(again.httpKeyId).toBe(first.httpKeyId);

    const renamed = await createPki(dir, { hostname: 'aios', sans: ['192.168.1.50'] });
    expect(renamed.made).toEqual(['server.crt']);
    const b = snap();
    expect(b['server.crt']).not.toBe(a['server.crt']);
    expect(b['server.key']).toBe(a['server.key']);
    for (const f of ['ca.crt', 'ca.key', 'client.crt', 'client.key', 'http-key', 'http-keys']) expect(b[f]).toBe(a[f]);
    expect(cert(join(dir, 'server.crt')).checkIP('192.168.1.50')).toBe('192.168.1.50');

    // A lost hashed file is rebuilt from the key that is there (the key itself is kept).
    writeFileSync(join(dir, 'http-keys'), '');
    expect((await createPki(dir, { hostname: 'aios', sans: ['192.168.1.50'] })).made).toEqual(['http-keys']);
    expect(readFileSync(join(dir, 'http-key'), 'utf8')).toBe(a['http-key']);

    const rotated = await createPki(dir, { hostname: 'aios', rotate: true });
    const c = snap();
    for (const f of Object.values(PKI_FILES)) expect(c[f]).not.toBe(a[f]);
    expect(rotated.httpKeyId).not.toBe(first.httpKeyId);
    // Certificates of the old CA are not accepted by the new one.
    writeFileSync(join(dir, 'old-client.crt'), a['client.crt']!);
    expect((await verify(join(dir, 'ca.crt'), join(dir, 'old-client.crt'))).exitCode).not.toBe(0);
  });
});

describe('issueClientCert', () => {
  it('an infer certificate, an expired one, and the refusal of a missing CA', async () => {
    const dir = join(tmp('aios-pki-'), 'img.pki');
    await createPki(dir, { hostname: 'aios' });
    const infer = await issueClientCert(dir, join(dir, 'ci'), { cn: 'ci-runner', scope: 'infer', days: 30 });
    const c = cert(infer.cert);
    expect(c.subject.split('\n')).toEqual(expect.arrayContaining(['CN=ci-runner', 'OU=infer']));
    expect(mode(infer.key)).toBe(0o600);
    expect(new Date(c.validTo).getTime()).toBeLessThan(Date.now() + 31 * 86400_000);
    expect((await verify(join(dir, 'ca.crt'), infer.cert)).exitCode).toBe(0);

    const old = await issueClientCert(dir, join(dir, 'old'), { cn: 'old', scope: 'admin', notAfterPast: true });
    expect(new Date(cert(old.cert).validTo).getTime()).toBeLessThan(Date.now());
    const v = await verify(join(dir, 'ca.crt'), old.cert);
    expect(v.exitCode).not.toBe(0);
    expect(v.stdout + v.stderr).toMatch(/certificate has expired/);

    await expect(issueClientCert(tmp('aios-empty-'), join(dir, 'x'), { cn: 'x', scope: 'infer' })).rejects.toThrow(/no ca\.crt/);
    await expect(issueClientCert(dir, join(dir, 'x'), { cn: 'bad/cn', scope: 'infer' })).rejects.toThrow(/client name "bad\/cn"/);
  });
});
