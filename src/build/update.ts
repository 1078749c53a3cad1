/**
 * The appliance layout's update artifacts (docs/appliance.md, issue 18): what `aios build image`
 * writes to <out>/update/ beside the disk image, for the image's systemd-sysupdate
 * (templates/root/usr/lib/sysupdate.d/) to install into the other slot:
 *
 *   aios_<v>_<uuid>.root.<erofs|squashfs>  slot A's read-only root (the file system image itself)
 *   aios_<v>_<uuid>.verity                 its dm-verity hash tree (superblock + hash levels)
 *   aios_<v>.linux, aios_<v>.initrd        the kernel and initrd the entry names (ESP /aios/)
 *   aios_<v>.conf                          the boot entry (roothash= of this version's root)
 *   SHA256SUMS                             every artifact in the directory (all versions)
 *   SHA256SUMS.gpg                         detached signature, when a signing key is configured
 *
 * Other versions' files already in the directory are kept (the directory is what an update server
 * serves; SHA256SUMS lists them all); a rebuilt version replaces its own files.
 *
 * The signing key comes from the environment (AIOS_GPG_PRIVATE_KEY, an armored secret key, with
 * AIOS_GPG_PASSPHRASE if it has one: the same variables scripts/release.sh signs releases with)
 * or from a file given on the command line (--signing-key); never from the recipe. It is imported
 * into a throw-away GNUPGHOME, never written to the build log, the cache or the manifest; only
 * its fingerprint and public key leave it (the public key goes into the image as
 * /etc/systemd/import-pubring.gpg).
 */
import { chmod, copyFile, mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run, CommandError } from '../util/exec.js';
import { sha256File } from '../util/hash.js';
import { registerTemp, safeRemove } from '../util/cleanup.js';
import { UserError } from '../util/errors.js';
import { ARTIFACT_RE, artifactNames, artifactVersion } from '../config/update.js';

export const SIGNING_KEY_ENV = 'AIOS_GPG_PRIVATE_KEY';
export const SIGNING_PASSPHRASE_ENV = 'AIOS_GPG_PASSPHRASE';
export const SUMS = 'SHA256SUMS';
export const SIGNATURE = 'SHA256SUMS.gpg';

/** Bytes of a dm-verity hash tree as veritysetup format writes it (sha256, 4 KiB blocks: the superblock, then every level). */
export function verityTreeBytes(dataBytes: number): number {
  let blocks = Math.ceil(dataBytes / 4096);
  let hash = 1; // superblock
  // One data block needs no hash level (the root hash is that block's hash), as in dm-verity.
  while (blocks > 1) {
    blocks = Math.ceil(blocks / 128);
    hash += blocks;
  }
  return hash * 4096;
}

export interface UpdateSigner {
  /** The key's fingerprint (public). */
  fingerprint: string;
  /** The public key as binary OpenPGP packets: a keyring file for gpg --keyring (systemd-pull's /etc/systemd/import-pubring.gpg). */
  publicKey: Buffer;
  /** Detached binary signature of file into sigFile. */
  sign(file: string, sigFile: string): Promise<void>;
  /** Stops gpg's agent and removes the throw-away GNUPGHOME (with the secret key). */
  close(): Promise<void>;
}

/** gpg's stderr without anything from stdin (gpg does not echo keys; this only keeps messages short). */
function gpgFailure(what: string, e: unknown): UserError {
  const out = e instanceof CommandError ? e.output.split('\n').filter((l) => /^gpg: /.test(l)).slice(-4).join('; ') : String(e);
  return new UserError(`update signing key: ${what} failed${out ? ` (${out})` : ''}`, 2);
}

/**
 * The signing key for update artifacts, when one is configured: keyFile (a path given on the
 * command line) else $AIOS_GPG_PRIVATE_KEY; undefined when neither is set. The key is imported into
 * a new GNUPGHOME under the temp dir (0700), removed by close() or on SIGINT/SIGTERM.
 */
export async function openSigner(o: { keyFile?: string; env?: NodeJS.ProcessEnv } = {}): Promise<UpdateSigner | undefined> {
  const env = o.env ?? process.env;
  const fromEnv = env[SIGNING_KEY_ENV];
  if (!o.keyFile && !fromEnv) return undefined;
  if (o.keyFile && !existsSync(o.keyFile)) throw new UserError(`--signing-key ${o.keyFile}: no such file`, 2);
  const home = await mkdtemp(join(tmpdir(), 'aios-gpg-'));
  const unregister = registerTemp(home);
  await chmod(home, 0o700);
  const gpg = (args: string[], input?: string) => run(['gpg', '--homedir', home, '--batch', '--quiet', '--no-tty', ...args], { input, env: { GNUPGHOME: home } });
  const close = async () => {
    await run(['gpgconf', '--homedir', home, '--kill', 'all'], { reject: false, env: { GNUPGHOME: home } });
    await safeRemove(home);
    unregister();
  };
  try {
    try {
      // A file is named on gpg's command line (it may be binary); the variable's text goes through stdin. Neither is logged.
      await (o.keyFile ? gpg(['--import', o.keyFile]) : gpg(['--import'], fromEnv!.endsWith('\n') ? fromEnv : `${fromEnv}\n`));
    } catch (e) {
      throw gpgFailure(`importing ${o.keyFile ? o.keyFile : `$${SIGNING_KEY_ENV}`}`, e);
    }
    const { stdout } = await gpg(['--with-colons', '--list-secret-keys']);
    const fingerprint = /^fpr:(?:[^:]*:){8}([0-9A-F]{40,64}):/m.exec(stdout)?.[1];
    if (!fingerprint) throw new UserError(`update signing key: ${o.keyFile ?? `$${SIGNING_KEY_ENV}`} holds no secret key`, 2);
    const pubFile = join(home, 'public.gpg');
    await gpg(['--yes', '--output', pubFile, '--export', fingerprint]);
    const publicKey = await readFile(pubFile);
    const passphrase = env[SIGNING_PASSPHRASE_ENV] ?? '';
    return {
      fingerprint,
      publicKey,
      async sign(file, sigFile) {
        try {
          // The passphrase through stdin (--passphrase-fd 0), never on the command line.
          await gpg(['--yes', '--pinentry-mode', 'loopback', '--passphrase-fd', '0', '--local-user', fingerprint, '--detach-sign', '--output', sigFile, file], passphrase);
        } catch (e) {
          throw gpgFailure(`signing ${file}${passphrase ? '' : ` (if the key has a passphrase, set $${SIGNING_PASSPHRASE_ENV})`}`, e);
        }
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * Checks sig over file with only the keys in pubring, the way systemd-pull checks SHA256SUMS.gpg
 * (gpg --no-default-keyring --keyring=<import-pubring.gpg> --trust-model=always --verify). Returns
 * gpg's exit code and messages.
 */
export async function verifySignature(a: { file: string; sig: string; pubring: string }): Promise<{ ok: boolean; output: string }> {
  const home = await mkdtemp(join(tmpdir(), 'aios-gpgv-'));
  const unregister = registerTemp(home);
  try {
    await chmod(home, 0o700);
    const r = await run(
      ['gpg', '--no-options', '--no-default-keyring', '--no-auto-key-locate', '--no-auto-check-trustdb', '--batch', '--trust-model=always', `--homedir=${home}`, `--keyring=${a.pubring}`, '--verify', a.sig, a.file],
      { reject: false, env: { GNUPGHOME: home } },
    );
    return { ok: r.exitCode === 0, output: r.all };
  } finally {
    await run(['gpgconf', '--homedir', home, '--kill', 'all'], { reject: false });
    await safeRemove(home);
    unregister();
  }
}

/** SHA256SUMS text (sha256sum's format: "<hex>  <name>") for these files of dir, sorted by name. */
export async function sha256sums(dir: string, names: string[]): Promise<string> {
  const lines: string[] = [];
  for (const n of [...names].sort()) lines.push(`${await sha256File(join(dir, n))}  ${n}`);
  return lines.map((l) => `${l}\n`).join('');
}

/** This version's files, before they go into out/update/. */
export interface VersionArtifacts {
  version: string;
  rootHash: string;
  fs: 'erofs' | 'squashfs';
  /** The disk image and where slot A and its verity partition start in it (bytes). */
  disk: string;
  rootStart: number;
  verityStart: number;
  /** The read-only root's size (the file system image, a multiple of 4 KiB). */
  readonlyBytes: number;
  kernel: string;
  initrd: string;
  /** The boot entry's text (the same as on the disk's ESP). */
  entry: string;
}

export interface UpdateResult {
  dir: string;
  version: string;
  /** This version's artifact file names. */
  files: string[];
  /** Every version SHA256SUMS lists. */
  versions: string[];
  sums: string;
  /** SHA256SUMS.gpg and the key's fingerprint, when signed. */
  signature?: string;
  fingerprint?: string;
}

/**
 * Writes a version's artifacts into dir (each under a temporary name, then renamed), removes other
 * files of the same version, writes SHA256SUMS over every artifact there, and signs it with signer
 * (checked with the public key alone afterwards) or removes a SHA256SUMS.gpg that would no longer match.
 */
export async function publishUpdate(ctx: { log?: string }, a: VersionArtifacts, dir: string, signer?: UpdateSigner): Promise<UpdateResult> {
  await mkdir(dir, { recursive: true });
  const names = artifactNames({ version: a.version, rootHash: a.rootHash, fs: a.fs });
  const mine = Object.values(names);
  const tmp = (n: string) => join(dir, `.${n}.tmp-${process.pid}`);
  const unregister = mine.map((n) => registerTemp(tmp(n)));
  try {
    const dd = (skip: number, count: number, out: string) =>
      run(['dd', `if=${a.disk}`, `of=${out}`, 'bs=1M', 'iflag=skip_bytes,count_bytes', `skip=${skip}`, `count=${count}`, 'conv=sparse', 'status=none'], { log: ctx.log });
    await dd(a.rootStart, a.readonlyBytes, tmp(names.root));
    await dd(a.verityStart, verityTreeBytes(a.readonlyBytes), tmp(names.verity));
    await copyFile(a.kernel, tmp(names.kernel));
    await copyFile(a.initrd, tmp(names.initrd));
    await writeFile(tmp(names.entry), a.entry);
    for (const n of mine) await chmod(tmp(n), 0o644);
    // A rebuilt version (another root hash: other UUIDs in the names) must not leave two candidates.
    for (const f of await readdir(dir)) if (artifactVersion(f) === a.version && !mine.includes(f)) await rm(join(dir, f), { force: true });
    for (const n of mine) await rename(tmp(n), join(dir, n));
  } finally {
    for (const n of mine) await rm(tmp(n), { force: true });
    unregister.forEach((u) => u());
  }
  const all = (await readdir(dir)).filter((f) => ARTIFACT_RE.test(f)).sort();
  const sums = join(dir, SUMS);
  await writeFile(`${sums}.tmp-${process.pid}`, await sha256sums(dir, all));
  await rename(`${sums}.tmp-${process.pid}`, sums);
  const sig = join(dir, SIGNATURE);
  await rm(sig, { force: true });
  const result: UpdateResult = { dir, version: a.version, files: mine, versions: [...new Set(all.map((f) => artifactVersion(f)!))].sort(), sums };
  if (!signer) return result;
  await signer.sign(sums, `${sig}.tmp-${process.pid}`);
  const pubring = join(dir, `.pubring.tmp-${process.pid}`);
  try {
    await writeFile(pubring, signer.publicKey);
    const v = await verifySignature({ file: sums, sig: `${sig}.tmp-${process.pid}`, pubring });
    if (!v.ok) throw new Error(`the new ${SIGNATURE} does not verify with the signing key's public key: ${v.output.trim().split('\n').slice(-3).join('; ')}`);
    await rename(`${sig}.tmp-${process.pid}`, sig);
  } finally {
    await rm(pubring, { force: true });
    await rm(`${sig}.tmp-${process.pid}`, { force: true });
  }
  return { ...result, signature: sig, fingerprint: signer.fingerprint };
}
