/**
 * Appliance updates (docs/appliance.md, issue 18's slices 2-4): the update artifacts' names, the
 * dm-verity tree's size (against veritysetup), out/update/ as publishUpdate() writes it (this
 * version's files cut from a disk image, SHA256SUMS checked with sha256sum -c, other versions
 * kept, a rebuilt version replacing its own files) and its detached signature with real gpg and a
 * throw-away key made here in a temp GNUPGHOME (verifies with the public key alone, a changed
 * SHA256SUMS or another key fails, the secret key never in a message or the log); the [update]
 * recipe checks; the sysupdate transfers, aios-ready.service and the boot-complete.target drop-in
 * as the templates render them (keys from systemd 257's sysupdate.d(5), patterns that match the
 * artifacts' names, the order, Verify= with and without a key).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { loadRecipe } from '../../src/config/load.js';
import { RecipeError, UserError } from '../../src/util/errors.js';
import { build } from '../../src/build/index.js';
import { ARTIFACT_RE, artifactNames, artifactVersion, espKernelPaths, sysupdateSourceUrl } from '../../src/config/update.js';
import { openSigner, publishUpdate, SIGNING_KEY_ENV, SIGNING_PASSPHRASE_ENV, verifySignature, verityTreeBytes, type UpdateSigner } from '../../src/build/update.js';
import { verityPartUuids } from '../../src/build/appliance.js';
import { identity, templateContext } from '../../src/build/context.js';
import { renderTree } from '../../src/build/render.js';
import { paths } from '../../src/util/paths.js';
import { cli, tmp } from '../helpers.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const HASH = 'f3c1c0e0d5a94b0c8f0e6a1d2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e';

describe('update artifact names', () => {
  it('carry the version, and the partition UUIDs the root hash gives (the DPS verity rule)', () => {
    const n = artifactNames({ version: '7', rootHash: HASH, fs: 'erofs' });
    const u = verityPartUuids(HASH);
    expect(n).toEqual({ root: `aios_7_${u.data}.root.erofs`, verity: `aios_7_${u.hash}.verity`, kernel: 'aios_7.linux', initrd: 'aios_7.initrd', entry: 'aios_7.conf' });
    expect(artifactNames({ version: '1.2', rootHash: HASH, fs: 'squashfs' }).root).toBe(`aios_1.2_${u.data}.root.squashfs`);
    for (const f of Object.values(n)) {
      expect(f).toMatch(ARTIFACT_RE);
      expect(artifactVersion(f)).toBe('7');
    }
    expect(artifactVersion(`aios_1.2.3_${u.hash}.verity`)).toBe('1.2.3');
    expect(artifactVersion('aios_1.2.initrd')).toBe('1.2');
    for (const other of ['SHA256SUMS', 'SHA256SUMS.gpg', 'aios_7.conf.tmp', '.aios_7.linux.tmp-1', 'aios_x.linux', `aios_7_${u.data}.root.ext4`]) expect(artifactVersion(other), other).toBeUndefined();
    expect(espKernelPaths('7')).toEqual({ kernel: 'aios/aios_7.linux', initrd: 'aios/aios_7.initrd' });
  });

  it('turns a directory source into a file:// URL (sysupdate reads SHA256SUMS only from url-file sources) and escapes specifiers', () => {
    expect(sysupdateSourceUrl('/var/lib/aios/update')).toBe('file:///var/lib/aios/update');
    expect(sysupdateSourceUrl('/run/media/update/')).toBe('file:///run/media/update');
    expect(sysupdateSourceUrl('https://updates.example.com/aios/')).toBe('https://updates.example.com/aios');
    expect(sysupdateSourceUrl('https://updates.example.com/a%20b')).toBe('https://updates.example.com/a%%20b');
  });
});

describe('the dm-verity tree size', () => {
  const dir = tmp('aios-verity-size-');
  for (const blocks of [1, 127, 128, 129, 5000, 16385]) {
    it(`${blocks} data block(s): veritysetup verify passes with the tree cut to verityTreeBytes(), and it is what veritysetup writes`, async () => {
      const data = join(dir, `d${blocks}`);
      const hash = join(dir, `h${blocks}`);
      writeFileSync(data, randomBytes(blocks * 4096));
      const f = await execa('veritysetup', ['format', '--data-block-size=4096', '--hash-block-size=4096', '--hash=sha256', `--root-hash-file=${hash}.roothash`, data, hash]);
      expect(f.exitCode).toBe(0);
      const root = readFileSync(`${hash}.roothash`, 'utf8').trim();
      const written = Number((await execa('stat', ['-c', '%s', hash])).stdout);
      expect(written).toBe(verityTreeBytes(blocks * 4096));
      // The artifact is cut from the (larger) verity partition: padding it, then cutting it to size, still verifies.
      await execa('truncate', ['-s', String(4 * MiB), hash]);
      await execa('truncate', ['-s', String(verityTreeBytes(blocks * 4096)), hash]);
      const v = await execa('veritysetup', ['verify', data, hash, root], { reject: false });
      expect(v.exitCode, v.stderr).toBe(0);
    });
  }
});

/** A throw-away signing key in its own GNUPGHOME: its armored secret key, its public keyring file. */
async function makeKey(home: string, name: string): Promise<{ secret: string; pubring: string }> {
  const gpg = (args: string[]) => execa('gpg', ['--homedir', home, '--batch', '--quiet', '--pinentry-mode', 'loopback', '--passphrase', '', ...args], { env: { GNUPGHOME: home } });
  await execa('chmod', ['700', home]);
  await gpg(['--quick-gen-key', `${name} <${name}@aios.invalid>`, 'ed25519', 'sign', 'never']);
  const secret = (await gpg(['--armor', '--export-secret-keys'])).stdout;
  const pubring = join(home, 'pubring.export.gpg');
  await gpg(['--output', pubring, '--export']);
  return { secret, pubring };
}

describe('out/update/: artifacts, SHA256SUMS, signature', () => {
  const work = tmp('aios-update-');
  const out = join(work, 'out', 'update');
  const log = join(work, 'build.log');
  let key: { secret: string; pubring: string };
  let other: { secret: string; pubring: string };
  let signer: UpdateSigner | undefined;
  const disk = join(work, 'disk.raw');
  const files = { kernel: join(work, 'vmlinuz'), initrd: join(work, 'initrd.img') };
  // A fake disk: slot A at 1 MiB (the root: 40 KiB + 4 KiB blocks), its "verity partition" at 2 MiB.
  const rootBytes = 11 * 4096;
  const rootData = randomBytes(rootBytes);
  const verityData = randomBytes(2 * 4096);

  beforeAll(async () => {
    for (const d of ['k1', 'k2']) await execa('mkdir', ['-p', join(work, d)]);
    key = await makeKey(join(work, 'k1'), 'aios-update-test');
    other = await makeKey(join(work, 'k2'), 'someone-else');
    const buf = Buffer.alloc(4 * MiB);
    rootData.copy(buf, 1 * MiB);
    verityData.copy(buf, 2 * MiB);
    writeFileSync(disk, buf);
    writeFileSync(files.kernel, 'MZ kernel');
    writeFileSync(files.initrd, randomBytes(3000));
    writeFileSync(log, '');
  }, 120_000);
  afterAll(async () => {
    await signer?.close();
    for (const d of ['k1', 'k2']) await execa('gpgconf', ['--homedir', join(work, d), '--kill', 'all'], { reject: false });
  });

  const version = (v: string, rootHash = HASH) => ({ version: v, rootHash, fs: 'erofs' as const, disk, rootStart: 1 * MiB, verityStart: 2 * MiB, readonlyBytes: rootBytes, ...files, entry: `title aios\nversion ${v}\nlinux /aios/aios_${v}.linux\n` });

  it('no key configured: no signer, an unsigned directory whose SHA256SUMS sha256sum -c accepts', async () => {
    expect(await openSigner({ env: {} })).toBeUndefined();
    const r = await publishUpdate({ log }, version('1'), out);
    const n = artifactNames({ version: '1', rootHash: HASH, fs: 'erofs' });
    expect(readdirSync(out).sort()).toEqual(['SHA256SUMS', ...Object.values(n)].sort());
    expect(r).toMatchObject({ version: '1', versions: ['1'] });
    expect(r.signature).toBeUndefined();
    // The root artifact is slot A's file system image exactly; the verity one is the tree's size, from the verity partition's start.
    expect(readFileSync(join(out, n.root)).equals(rootData)).toBe(true);
    expect(readFileSync(join(out, n.verity)).length).toBe(verityTreeBytes(rootBytes));
    expect(readFileSync(join(out, n.verity)).subarray(0, verityData.length).equals(verityData)).toBe(true);
    expect(readFileSync(join(out, n.entry), 'utf8')).toContain('linux /aios/aios_1.linux');
    const c = await execa('sha256sum', ['-c', '--strict', 'SHA256SUMS'], { cwd: out, reject: false });
    expect(c.exitCode, c.stdout + c.stderr).toBe(0);
    expect(readFileSync(join(out, 'SHA256SUMS'), 'utf8').trim().split('\n')).toHaveLength(5);
  });

  it('signs SHA256SUMS with the key from $AIOS_GPG_PRIVATE_KEY; the signature verifies with the public key alone, as systemd-pull checks it', async () => {
    signer = await openSigner({ env: { [SIGNING_KEY_ENV]: key.secret } });
    expect(signer?.fingerprint).toMatch(/^[0-9A-F]{40}$/);
    // The public key is binary OpenPGP (a keyring file), the same as gpg --export gives.
    expect(signer!.publicKey.equals(readFileSync(key.pubring))).toBe(true);
    const r = await publishUpdate({ log }, version('2'), out, signer);
    expect(r.versions).toEqual(['1', '2']);
    expect(r.fingerprint).toBe(signer!.fingerprint);
    expect(existsSync(join(out, 'SHA256SUMS.gpg'))).toBe(true);
    // Version 1's files are still there and listed: the directory is what an update server serves.
    const sums = readFileSync(join(out, 'SHA256SUMS'), 'utf8');
    expect(sums.trim().split('\n')).toHaveLength(10);
    expect(sums).toMatch(/  aios_1\.linux$/m);
    const ok = await verifySignature({ file: join(out, 'SHA256SUMS'), sig: join(out, 'SHA256SUMS.gpg'), pubring: key.pubring });
    expect(ok.ok, ok.output).toBe(true);
    // Another key does not verify it.
    const wrong = await verifySignature({ file: join(out, 'SHA256SUMS'), sig: join(out, 'SHA256SUMS.gpg'), pubring: other.pubring });
    expect(wrong.ok).toBe(false);
    // A changed SHA256SUMS does not verify.
    const changed = join(work, 'SHA256SUMS.changed');
    writeFileSync(changed, sums.replace(/^[0-9a-f]/, (c) => (c === '0' ? '1' : '0')));
    expect((await verifySignature({ file: changed, sig: join(out, 'SHA256SUMS.gpg'), pubring: key.pubring })).ok).toBe(false);
    // The secret key is in no log line (the build log got the dd commands, nothing of gpg).
    const body = key.secret.split('\n').find((l) => l.length > 40)!;
    expect(readFileSync(log, 'utf8')).not.toContain(body);
    expect(readFileSync(log, 'utf8')).toMatch(/dd if=/);
  });

  it('a rebuilt version replaces its own files (another root hash: other UUIDs), an unsigned run removes the stale signature', async () => {
    const hash2 = HASH.replace(/^f3/, 'a7');
    await publishUpdate({ log }, version('2', hash2), out);
    const names = readdirSync(out).filter((f) => artifactVersion(f) === '2');
    expect(names.sort()).toEqual(Object.values(artifactNames({ version: '2', rootHash: hash2, fs: 'erofs' })).sort());
    expect(existsSync(join(out, 'SHA256SUMS.gpg'))).toBe(false);
    const c = await execa('sha256sum', ['-c', '--strict', 'SHA256SUMS'], { cwd: out, reject: false });
    expect(c.exitCode, c.stdout + c.stderr).toBe(0);
    expect(readdirSync(out).filter((f) => f.includes('.tmp-'))).toEqual([]);
  });

  it('reads the key from a file (--signing-key), and a passphrase-protected key through $AIOS_GPG_PASSPHRASE', async () => {
    const home = join(work, 'k3');
    await execa('mkdir', ['-p', home]);
    await execa('chmod', ['700', home]);
    const gpg = (args: string[], input?: string) => execa('gpg', ['--homedir', home, '--batch', '--quiet', '--pinentry-mode', 'loopback', ...args], { env: { GNUPGHOME: home }, input });
    await gpg(['--passphrase', 'correct horse', '--quick-gen-key', 'locked <locked@aios.invalid>', 'ed25519', 'sign', 'never']);
    const keyFile = join(work, 'locked.key');
    await gpg(['--passphrase', 'correct horse', '--output', keyFile, '--export-secret-keys']);
    await gpg(['--output', join(home, 'pub.gpg'), '--export']);
    await execa('gpgconf', ['--homedir', home, '--kill', 'all'], { reject: false });
    const locked = await openSigner({ keyFile, env: { [SIGNING_PASSPHRASE_ENV]: 'correct horse' } });
    try {
      await publishUpdate({ log }, version('3'), out, locked);
      expect((await verifySignature({ file: join(out, 'SHA256SUMS'), sig: join(out, 'SHA256SUMS.gpg'), pubring: join(home, 'pub.gpg') })).ok).toBe(true);
    } finally {
      await locked?.close();
    }
    // Without the passphrase the signing step fails, naming the variable and not the passphrase or key.
    const noPass = await openSigner({ keyFile, env: {} });
    try {
      const e = await publishUpdate({ log }, version('4'), out, noPass).then(
        () => undefined,
        (err: Error) => err,
      );
      expect(e?.message).toMatch(/AIOS_GPG_PASSPHRASE/);
      expect(e?.message).not.toContain('correct horse');
    } finally {
      await noPass?.close();
    }
  });

  it('refuses a key that is not one, without printing it; leaves no GNUPGHOME behind', async () => {
    const before = readdirSync('/tmp').filter((d) => d.startsWith('aios-gpg-')).length;
    const junk = '-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nnot-a-key-but-secret-looking-text-0123456789\n-----END PGP PRIVATE KEY BLOCK-----\n';
    const e = await openSigner({ env: { [SIGNING_KEY_ENV]: junk } }).then(
      () => undefined,
      (err: Error) => err,
    );
    expect(e?.message).toMatch(/update signing key: importing \$AIOS_GPG_PRIVATE_KEY failed/);
    expect(e?.message).not.toContain('secret-looking');
    expect(readdirSync('/tmp').filter((d) => d.startsWith('aios-gpg-')).length).toBe(before);
    await expect(openSigner({ keyFile: join(work, 'missing.key') })).rejects.toThrow(/no such file/);
  });
});

describe('build() and the signing key', () => {
  it('refuses a signing key for a build without appliance update artifacts, and a missing key file, before any stage runs (exit 2)', async () => {
    const dir = tmp('aios-build-signing-');
    const opts = { cacheDir: join(dir, 'cache'), outDir: join(dir, 'out'), renderer: 'silent' as const };
    const plain = await build({ ...opts, recipe: 'default', signingKey: join(dir, 'k.asc') }).then(
      () => undefined,
      (e: UserError) => e,
    );
    expect(plain).toBeInstanceOf(UserError);
    expect(plain!.exitCode).toBe(2);
    expect(plain!.message).toMatch(/--signing-key signs the update artifacts of image.layout = "appliance"/);
    const missing = await build({ ...opts, recipe: 'default', sets: ['image.layout=appliance'], signingKey: join(dir, 'k.asc') }).then(
      () => undefined,
      (e: UserError) => e,
    );
    expect(missing!.exitCode).toBe(2);
    expect(missing!.message).toMatch(/k\.asc: no such file/);
    // Nothing was built: no stage output, no image.
    expect(existsSync(join(dir, 'cache', 'stages'))).toBe(false);
    expect(existsSync(join(dir, 'out'))).toBe(false);
    // The same from the CLI's --signing-key.
    const c = await cli(['build', 'image', '--set', 'image.layout=appliance', '--signing-key', join(dir, 'k.asc'), '--cache-dir', join(dir, 'cache'), '--out', join(dir, 'out')]);
    expect(c.exitCode).toBe(2);
    expect(c.stderr).toMatch(/--signing-key .*k\.asc: no such file/);
  });
});

describe('[update] recipe checks', () => {
  async function problems(sets: string[]): Promise<{ path: string; message: string }[]> {
    const e = await loadRecipe('default', { sets }).then(
      () => undefined,
      (err: unknown) => err,
    );
    if (!e) return [];
    expect(e).toBeInstanceOf(RecipeError);
    return (e as RecipeError).problems;
  }

  it('defaults to a directory on /var; accepts directories and http(s) URLs; refuses the rest, naming update.source (exit 2)', async () => {
    const r = await loadRecipe('default', { sets: ['image.layout=appliance'] });
    expect(r.update.source).toBe('/var/lib/aios/update');
    expect(await problems(['image.layout=appliance', 'update.source="/run/aios-update"'])).toEqual([]);
    expect(await problems(['image.layout=appliance', 'update.source="https://updates.example.com/aios"'])).toEqual([]);
    for (const bad of ['"relative/dir"', '"/var/../etc"', '"/dir with space"', '"ftp://x/y"', '"https://user:pw@example.com/u"']) {
      const p = await problems(['image.layout=appliance', `update.source=${bad}`]);
      expect(p.map((x) => x.path), bad).toEqual(['update.source']);
    }
    // On the plain layout it has no meaning: refused when set.
    expect((await problems(['update.source="/srv/u"'])).map((x) => x.path)).toEqual(['update.source']);
    expect(await problems([])).toEqual([]);
  });
});

/** The keys systemd 257's sysupdate.d(5) documents, per section. */
const SYSUPDATE_KEYS: Record<string, string[]> = {
  Transfer: ['MinVersion', 'ProtectVersion', 'Verify', 'ChangeLog', 'AppStream', 'Features', 'RequisiteFeatures'],
  Source: ['Type', 'Path', 'MatchPattern'],
  Target: ['Type', 'Path', 'PathRelativeTo', 'MatchPattern', 'MatchPartitionType', 'PartitionUUID', 'PartitionFlags', 'PartitionNoAuto', 'PartitionGrowFileSystem', 'ReadOnly', 'Mode', 'TriesDone', 'TriesLeft', 'InstancesMax', 'RemoveTemporary', 'CurrentSymlink'],
};

/** An INI file as systemd reads it: comments, sections, "\" continuation lines. */
function parseIni(text: string): Record<string, Record<string, string>> {
  const out: Record<string, Record<string, string>> = {};
  let section = '';
  const lines = text.replace(/\\\n\s*/g, ' ').split('\n');
  for (const l of lines) {
    if (/^\s*([#;]|$)/.test(l)) continue;
    const s = /^\[(\w+)\]$/.exec(l.trim());
    if (s) {
      section = s[1]!;
      out[section] ??= {};
      continue;
    }
    const kv = /^(\w+)=(.*)$/.exec(l.trim());
    if (!kv || !section) throw new Error(`not a key=value line: ${l}`);
    out[section]![kv[1]!] = kv[2]!;
  }
  return out;
}

/** sysupdate's match patterns as a regular expression (the wildcards the transfers use). */
function patternRe(p: string): RegExp {
  const w: Record<string, string> = { v: '(?<v>[A-Za-z0-9.~^_+-]+?)', u: '[0-9a-f-]{36}', l: '\\d+', d: '\\d+' };
  return new RegExp(`^${p.replace(/[.+^$()[\]{}|\\]/g, '\\$&').replace(/@([vuld])/g, (_, c: string) => w[c]!)}$`);
}

describe('sysupdate transfers, aios-ready.service, the boot-complete.target drop-in (rendered)', () => {
  const kernel = { version: '6.12.0-test-amd64', kernel: 'boot/vmlinuz', initrd: 'boot/initrd.img' };
  async function render(sets: string[], extra: Record<string, unknown> = {}) {
    const r = await loadRecipe('default', { sets });
    return renderTree(join(paths.templates, 'root'), templateContext(r, identity(r), { kernel, ...extra }));
  }

  it('renders nothing of this for the plain layout', async () => {
    const files = await render([]);
    expect(files.filter((f) => /sysupdate|aios-ready|boot-complete|libexec\/aios\/ready/.test(f.path))).toEqual([]);
  });

  it('renders root, verity, kernel, initrd and the entry, in that order, with documented keys and patterns that match the artifacts', async () => {
    const files = await render(['image.layout=appliance']);
    const transfers = files.filter((f) => f.path.startsWith('usr/lib/sysupdate.d/')).sort((a, b) => a.path.localeCompare(b.path));
    expect(transfers.map((f) => f.path.replace('usr/lib/sysupdate.d/', ''))).toEqual(['10-aios-root.transfer', '20-aios-verity.transfer', '30-aios-kernel.transfer', '40-aios-initrd.transfer', '90-aios-entry.transfer']);
    const names = artifactNames({ version: '12', rootHash: HASH, fs: 'erofs' });
    const parsed = Object.fromEntries(transfers.map((f) => [f.path.replace(/.*\/\d+-aios-|\.transfer$/g, ''), parseIni(f.content)]));
    for (const [name, t] of Object.entries(parsed)) {
      expect(Object.keys(t).sort(), name).toEqual(['Source', 'Target', 'Transfer']);
      for (const [section, keys] of Object.entries(t)) for (const k of Object.keys(keys)) expect(SYSUPDATE_KEYS[section], `${name}: [${section}] ${k}=`).toContain(k);
      expect(t.Transfer!.ProtectVersion).toBe('%A');
      expect(t.Transfer!.Verify).toBe('no');
      expect(t.Source).toMatchObject({ Type: 'url-file', Path: 'file:///var/lib/aios/update' });
      expect(Number(t.Target!.InstancesMax)).toBe(2);
    }
    // Each source pattern takes exactly its own artifact of the version's five (and gives the version).
    const want: Record<string, string> = { root: names.root, verity: names.verity, kernel: names.kernel, initrd: names.initrd, entry: names.entry };
    for (const [name, t] of Object.entries(parsed)) {
      const re = patternRe(t.Source!.MatchPattern!);
      expect(Object.values(names).filter((n) => re.test(n)), name).toEqual([want[name]]);
      expect(re.exec(want[name]!)?.groups?.v).toBe('12');
    }
    // Partitions: the DPS types, the labels the disk's slot A has (aios_<v>, aios_<v>_verity).
    expect(parsed.root!.Target).toMatchObject({ Type: 'partition', Path: 'auto', MatchPattern: 'aios_@v', MatchPartitionType: 'root', ReadOnly: 'yes' });
    expect(parsed.verity!.Target).toMatchObject({ Type: 'partition', Path: 'auto', MatchPattern: 'aios_@v_verity', MatchPartitionType: 'root-verity' });
    expect(patternRe('aios_@v').test('aios_12_verity')).toBe(true); // the types keep them apart, not the labels
    // ESP files: where the entry names them; the entry with boot counting, matching the disk's own entry name too.
    expect(parsed.kernel!.Target).toMatchObject({ Type: 'regular-file', Path: '/aios', PathRelativeTo: 'esp', MatchPattern: 'aios_@v.linux' });
    expect(`aios/${'aios_12.linux'}`).toBe(espKernelPaths('12').kernel);
    expect(parsed.initrd!.Target).toMatchObject({ Type: 'regular-file', Path: '/aios', PathRelativeTo: 'esp', MatchPattern: 'aios_@v.initrd' });
    const entry = parsed.entry!.Target!;
    expect(entry).toMatchObject({ Type: 'regular-file', Path: '/loader/entries', PathRelativeTo: 'esp', TriesLeft: '3', TriesDone: '0' });
    const patterns = entry.MatchPattern!.split(/\s+/);
    expect(patterns[0]).toBe('aios_@v+@l-@d.conf');
    for (const n of ['aios_12+3-0.conf', 'aios_12+2-1.conf', 'aios_12+3.conf', 'aios_12.conf']) expect(patterns.some((p) => patternRe(p).exec(n)?.groups?.v === '12'), n).toBe(true);
    // The note on an unsigned image.
    expect(transfers[0]!.content).toMatch(/NOTE: this image was built without a signing key/);
  });

  it('Verify=yes everywhere when the build has a signing key; an http(s) source as given', async () => {
    const files = await render(['image.layout=appliance', 'update.source="https://updates.example.com/aios/"'], { updateVerify: true });
    const transfers = files.filter((f) => f.path.startsWith('usr/lib/sysupdate.d/'));
    expect(transfers).toHaveLength(5);
    for (const f of transfers) {
      const t = parseIni(f.content);
      expect(t.Transfer!.Verify, f.path).toBe('yes');
      expect(t.Source!.Path).toBe('https://updates.example.com/aios');
    }
    expect(transfers.find((f) => f.path.endsWith('10-aios-root.transfer'))!.content).not.toMatch(/NOTE/);
  });

  it('aios-ready.service (after the runtime; boot-complete.target requires it) and its check script; none without the runtime', async () => {
    const files = await render(['image.layout=appliance']);
    const unit = parseIni(files.find((f) => f.path === 'usr/lib/systemd/system/aios-ready.service')!.content);
    expect(unit.Unit).toMatchObject({ Wants: 'aios-runtime.service', After: 'aios-runtime.service', Before: 'boot-complete.target' });
    expect(unit.Service).toMatchObject({ Type: 'oneshot', RemainAfterExit: 'yes', ExecStart: '/usr/libexec/aios/ready' });
    const dropin = parseIni(files.find((f) => f.path === 'usr/lib/systemd/system/boot-complete.target.d/50-aios-ready.conf')!.content);
    expect(dropin.Unit).toEqual({ Requires: 'aios-ready.service', After: 'aios-ready.service' });
    const script = files.find((f) => f.path === 'usr/libexec/aios/ready')!;
    expect(script.mode).toBe(0o755);
    expect(script.content.startsWith('#!/bin/sh\n')).toBe(true);
    expect((await execa('sh', ['-n'], { input: script.content, reject: false })).exitCode).toBe(0);
    const none = await render(['image.layout=appliance', 'runtime.enabled=false']);
    expect(none.filter((f) => /aios-ready|boot-complete|libexec\/aios\/ready/.test(f.path))).toEqual([]);
  });

  it('the check script: exit 0 only when aios-runtime is active; masked: not ready, no reboot; not on trial: no reboot', async () => {
    // systemctl is the one thing stood in for (this host's systemd is not the image's, and must not
    // be rebooted); this host booted no boot-counted entry, so the trial branch is not taken here.
    const files = await render(['image.layout=appliance']);
    const dir = tmp('aios-ready-');
    writeFileSync(join(dir, 'ready'), files.find((f) => f.path === 'usr/libexec/aios/ready')!.content);
    writeFileSync(join(dir, 'systemctl'), '#!/bin/sh\necho "$*" >> "$CALLS"\ncase "$1" in is-active) echo "$STATE";; is-enabled) echo "$ENABLED";; esac\n[ "$1" != is-active ] || [ "$STATE" = active ]\n');
    // The runtime's journal: its error lines are quoted when it is not ready.
    writeFileSync(join(dir, 'journalctl'), '#!/bin/sh\nprintf "%s\\n" "listening on unix:/run/aios/runtime.sock" "model aios-tiny: llama-server failed to load /var/lib/aios/models/aios-tiny.gguf" "startup failed" "aios-runtime.service: Failed with result exit-code."\n');
    await execa('chmod', ['+x', join(dir, 'systemctl'), join(dir, 'journalctl')]);
    expect(existsSync('/sys/firmware/efi/efivars/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f')).toBe(false);
    const runs = async (STATE: string, ENABLED: string) => {
      const CALLS = join(dir, `calls-${STATE}-${ENABLED}`);
      const r = await execa('sh', [join(dir, 'ready')], { reject: false, env: { PATH: `${dir}:${process.env.PATH}`, STATE, ENABLED, CALLS } });
      return { code: r.exitCode, out: r.stdout, calls: readFileSync(CALLS, 'utf8') };
    };
    const ok = await runs('active', 'enabled');
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/aios-runtime is ready/);
    for (const state of ['failed', 'activating', 'inactive']) {
      const bad = await runs(state, 'enabled');
      expect(bad.code, state).toBe(1);
      expect(bad.out).toMatch(new RegExp(`not ready \\(${state}\\)`));
      expect(bad.out).toContain('aios-runtime: model aios-tiny: llama-server failed to load /var/lib/aios/models/aios-tiny.gguf\naios-runtime: startup failed');
      expect(bad.out).not.toContain('listening on');
      expect(bad.out).not.toContain('Failed with result'); // systemd's own lines about the unit are not the runtime's words
      expect(bad.calls).not.toMatch(/reboot/);
    }
    const masked = await runs('inactive', 'masked-runtime');
    expect(masked.code).toBe(1);
    expect(masked.out).toMatch(/masked on this boot: not rebooting/);
    expect(masked.calls).not.toMatch(/reboot/);
  });
});
