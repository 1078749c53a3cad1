/**
 * End to end, issue 18's updates in a running guest (docs/appliance.md): an appliance image updated
 * by its own `aios update apply` (systemd-sysupdate with the image's transfers), rebooted into the
 * new slot, blessed once aios-runtime is ready, and rolled back by systemd-boot's boot counting when a
 * version's runtime never becomes ready.
 *
 * Three builds of one recipe into one output directory, signed with a throw-away key, so that
 * out/update/ holds versions 1, 2 and 3 and one signed SHA256SUMS for all:
 *   v1, v2: the default recipe with image.layout = "appliance" (v1's update.source: the update disk
 *       below; v2's: the same directory over HTTP, a server of the test's on the host's loopback);
 *   v3: the same with a broken operational model kept in the root (store = "image": an update brings
 *       it, linked into /var/lib/aios/models by systemd-tmpfiles at boot): v1's synthesized model with
 *       an architecture this llama.cpp does not know ("llamb"), a valid GGUF that the build accepts and
 *       llama-server refuses to load. v3's runtime never becomes ready: the kind of broken release that
 *       boot counting is for.
 * The artifacts reach the guest as a second, read-only virtual disk (an ext4 image of out/update/),
 * mounted where update.source points (systemd.mount-extra= on the test's kernel command line). Boots
 * (one QEMU run each, on the same disk file, no snapshot; QEMU runs with -no-reboot, so a reboot in
 * the guest ends the run and the test starts the next):
 *   1. v1: verity root, /var made by repart, runtime answers; a session saved by the runtime and a
 *      model installed by it at run time (runtime.install_models; PullModel of a catalog entry the recipe added with
 *      runtime.catalog, downloaded from an HTTP server of the test's on the host's loopback, which the
 *      guest reaches as 10.0.2.2 through QEMU's user network): state on /var; `aios update apply 2` →
 *      slot B written, entry aios_2+3-0.conf.
 *   2. v2 on trial → aios-ready → blessed (aios_2.conf); v1 still installed; the session still there,
 *      and the pulled model answers without being downloaded again; `aios update check` and
 *      `aios update apply 3` over HTTP (signed SHA256SUMS checked) → v3 replaces v1 (InstancesMax=2;
 *      the booted v2 is protected).
 *   3–5. v3: the runtime fails, aios-ready reboots; systemd-boot counts aios_3+3-0 → +2-1 → +1-2 → +0-3.
 *   6. v2 again, by itself; `aios update status` says v3 was tried 3 times and left. Before it, one
 *      byte of a file's data is flipped in v2's slot on the disk: reading that file in the guest
 *      fails with an I/O error and dm-verity names the block; the rest of the machine comes up.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import { closeSync, copyFileSync, createReadStream, existsSync, mkdirSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { build } from '../../src/build/index.js';
import { qemuTest, type BootCheck } from '../../src/qemu/index.js';
import type { UpdateStatus } from '../../src/update/status.js';
import { synthModel } from '../../src/models/synth.js';
import { freePort } from '../../src/util/net.js';
import { defaultCacheDir } from '../../src/util/paths.js';
import { runtimeFixture } from './runtime-fixture.js';
import { REPO, tmp } from '../helpers.js';

const dir = tmp('aios-e2e-appliance-update-');
const out = join(dir, 'out');
const disk = join(dir, 'machine.raw');
const updateDisk = join(dir, 'update.ext4');
const pki = join(out, 'aios-appliance.pki');
const gnupg = join(dir, 'gnupg');
const keyFile = join(dir, 'signing-key.asc');
const rootHash: Record<string, string> = {};
const catalogFile = join(dir, 'mirror-catalog.toml');
const MOUNT = 'systemd.mount-extra=/dev/vdb:/var/lib/aios/update:ext4:ro';

function statusOf(b: BootCheck): UpdateStatus {
  const log = readFileSync(b.serialLog, 'utf8').replace(/\r/g, '');
  const line = /AIOS-CHECK update_status=(\{.*\})\s*$/m.exec(log)?.[1];
  expect(line, log.slice(-3000)).toBeTruthy();
  return JSON.parse(line!) as UpdateStatus;
}
const applied = (b: BootCheck) => /AIOS-CHECK update_apply=(\S+) rc=(\d+)/.exec(readFileSync(b.serialLog, 'utf8'));
const boot = (n: string, extra = '', during?: (a: string, t: string | undefined) => Promise<unknown>) =>
  qemuTest(disk, { snapshot: false, extraDisks: [updateDisk], timeout: 900, serialLog: join(dir, `boot-${n}.serial.log`), tlsDir: pki, checkCmdline: `${MOUNT}${extra ? ` ${extra}` : ''}`, ...(during ? { during } : {}) });

/** The file boot 6 finds tampered with (flipFileBytes) in v2's root. */
const TAMPERED = '/usr/share/common-licenses/GPL-3';

/**
 * Flips one bit (100 bytes in) of every copy of `needle` inside a partition of `file` (the same text
 * may be in the root more than once: every copy changes, so a read meets one whichever it is);
 * returns how many.
 */
function flipFileBytes(file: string, part: { start: number; size: number }, needle: Buffer): number {
  const fd = openSync(file, 'r+');
  const hits: number[] = [];
  try {
    const CHUNK = 64 * 1024 * 1024;
    const buf = Buffer.alloc(CHUNK + needle.length);
    for (let off = 0; off < part.size * 512; off += CHUNK) {
      const n = readSync(fd, buf, 0, buf.length, part.start * 512 + off);
      for (let i = buf.subarray(0, n).indexOf(needle); i >= 0 && i < CHUNK; i = buf.subarray(0, n).indexOf(needle, i + 1)) hits.push(part.start * 512 + off + i);
    }
    for (const h of hits) {
      const b = Buffer.alloc(1);
      readSync(fd, b, 0, 1, h + 100);
      writeSync(fd, Buffer.from([b[0]! ^ 0x01]), 0, 1, h + 100);
    }
  } finally {
    closeSync(fd);
  }
  return hits.length;
}

/** The catalog entry the recipe adds (runtime.catalog), served by the test's HTTP server (`served`). */
const PULLED = 'aios-pulled';
const served: string[] = [];
let server: Server | undefined;
/** The server's port; v2's update.source is its /update/ (out/update/ over HTTP, as 10.0.2.2 in the guest). */
let port = 0;
const updateUrl = () => `http://10.0.2.2:${port}/update`;

/**
 * State the runtime keeps on /var: a saved session (one turn with session_id = `create`, saved under
 * /var/lib/aios-runtime) and, with `pull`, a model installed at run time (PullModel); then the ids of
 * the sessions it lists, and with `answer` what the pulled model says (Infer by its catalog id: a
 * model that is not installed is refused, runtime.auto_install being off).
 */
async function state(address: string, tlsDir: string | undefined, o: { create?: string; pull?: boolean; answer?: boolean } = {}): Promise<{ sessions: string[]; pulled?: number; answered?: string }> {
  const { connect, unary, pullModel } = await import('../../src/runtime/client.js');
  const c = connect(address, { tlsDir });
  try {
    if (o.create) await unary(c, 'Infer', { prompt: 'Hello.', session_id: o.create, intelligence_level: 'operational', max_tokens: 4, temperature: 0 }, 300_000);
    const pulled = o.pull ? Number((await pullModel(c, PULLED, () => {})).bytes) : undefined;
    const answered = o.answer ? (await unary(c, 'Infer', { prompt: 'Hello.', model: PULLED, max_tokens: 2, temperature: 0 }, 300_000)).model_used : undefined;
    const sessions = (await unary(c, 'ListSessions', {})).sessions.map((x) => x.id).sort();
    return { sessions, ...(pulled !== undefined ? { pulled } : {}), ...(answered !== undefined ? { answered } : {}) };
  } finally {
    c.close();
  }
}

describe('appliance updates in a running guest (aios update, systemd-sysupdate, boot counting)', () => {
  beforeAll(async () => {
    // The model the guest pulls at run time: a synthesized tiny model (real vocabulary, random
    // weights), served over HTTP on the host's loopback; the recipe's catalog names it with the
    // address the guest sees (10.0.2.2 = the host in QEMU's user network) and its checksum.
    const { tools } = await runtimeFixture(dir);
    await synthModel({ shape: 'tiny', quant: 'f32', seed: 7, out: join(dir, `${PULLED}.gguf`), tools });
    const model = readFileSync(join(dir, `${PULLED}.gguf`));
    server = createServer((req, res) => {
      served.push(`${req.method} ${req.url}`);
      // out/update/ (v2's update.source): the artifacts and the signed SHA256SUMS, as a web server has them.
      const name = /^\/update\/([A-Za-z0-9._+-]+)$/.exec(req.url ?? '')?.[1];
      const file = name && join(out, 'update', name);
      if (file && existsSync(file)) {
        res.writeHead(200, { 'content-length': statSync(file).size, 'content-type': 'application/octet-stream' });
        return void (req.method === 'HEAD' ? res.end() : createReadStream(file).pipe(res));
      }
      if (req.url !== `/${PULLED}.gguf`) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': model.length, 'content-type': 'application/octet-stream' }).end(req.method === 'HEAD' ? undefined : model);
    });
    port = await freePort();
    await new Promise<void>((ok) => server!.listen(port, '127.0.0.1', ok));
    writeFileSync(
      catalogFile,
      `# aios e2e: a model on a "mirror" of the test's (the host, as the guest sees it)\n[[model]]\nid = "${PULLED}"\nlevel = "tactical"\nfile = "${PULLED}.gguf"\nurl = "http://10.0.2.2:${port}/${PULLED}.gguf"\nsize = ${model.length}\nsha256 = "${createHash('sha256').update(model).digest('hex')}"\nlicense = "apache-2.0"\nquantization = "F32"\ncontext_length = 2048\nverified = true\n`,
    );
    mkdirSync(gnupg, { mode: 0o700 });
    const gpg = (args: string[]) => execa('gpg', ['--homedir', gnupg, '--batch', '--quiet', '--pinentry-mode', 'loopback', '--passphrase', '', ...args]);
    await gpg(['--quick-gen-key', 'aios e2e <e2e@aios.invalid>', 'ed25519', 'sign', 'never']);
    writeFileSync(keyFile, (await gpg(['--armor', '--export-secret-keys'])).stdout, { mode: 0o600 });
    await execa('gpgconf', ['--homedir', gnupg, '--kill', 'gpg-agent'], { reject: false });
  });
  afterAll(async () => {
    await new Promise((ok) => (server ? server.close(ok) : ok(undefined)));
    await execa('rm', ['-rf', dir]);
  });

  it('builds versions 1, 2 and 3 into one out/update/ with one signed SHA256SUMS; the update disk', { timeout: 40 * 60_000 }, async () => {
    const v3 = join(dir, 'v3.toml');
    const broken = join(dir, 'broken.gguf');
    for (const [v, recipe] of [['1', 'default'], ['2', 'default'], ['3', v3]] as const) {
      const res = await build({ recipe, outDir: out, renderer: 'silent', signingKey: keyFile, sets: ['image.layout=appliance', 'image.name=aios-appliance', `image.version="${v}"`, `runtime.catalog="${catalogFile}"`, 'runtime.install_models=true', ...(v === '2' ? [`update.source="${updateUrl()}"`] : [])] });
      if (v === '1') {
        // v3's operational model: v1's (the models stage's output in the cache) with general.architecture
        // "llama" changed to "llamb", an architecture this llama.cpp does not know (as a model made for a
        // newer llama.cpp would be): a valid GGUF the build accepts, which llama-server refuses to load.
        const key = res.stages.find((x) => x.name === 'models')!.key;
        const gguf = readFileSync(join(defaultCacheDir(), 'stages', 'models', key, 'models', 'aios-tiny.gguf'));
        const arch = Buffer.concat([Buffer.from('general.architecture'), Buffer.from([8, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0]), Buffer.from('llama')]);
        const at = gguf.indexOf(arch);
        expect(at).toBeGreaterThan(0);
        gguf.write('llamb', at + arch.length - 5, 'latin1');
        writeFileSync(broken, gguf);
        const recipeText = readFileSync(join(REPO, 'images/default.toml'), 'utf8').replace(
          /^\[\[models\]\]\n[\s\S]*?quant = "f32"\n/m,
          `[[models]]\nname = "aios-tiny-v3"\nlevel = "operational"\nsource = "file"\npath = "${broken}"\nstore = "image"\n`,
        );
        expect(recipeText).toContain('store = "image"');
        writeFileSync(v3, recipeText);
      }
      if (v === '3') {
        expect(JSON.parse(readFileSync(res.manifest, 'utf8')).models.map((m: { name: string; store?: string }) => [m.name, m.store])).toEqual([['aios-tiny-v3', 'image']]);
        // In the root the update brings (the overlay stage's tree in the cache): the file, its link in
        // /var (for a first boot) and the tmpfiles line that makes the link on any /var.
        const root = join(defaultCacheDir(), 'stages', 'overlay', res.stages.find((x) => x.name === 'overlay')!.key, 'root');
        expect(readFileSync(join(root, 'usr/lib/aios/models/aios-tiny-v3.gguf')).equals(readFileSync(broken))).toBe(true);
        expect(readlinkSync(join(root, 'var/lib/aios/models/aios-tiny-v3.gguf'))).toBe('/usr/lib/aios/models/aios-tiny-v3.gguf');
        expect(readFileSync(join(root, 'usr/lib/tmpfiles.d/aios-models.conf'), 'utf8')).toMatch(/^L \/var\/lib\/aios\/models\/aios-tiny-v3\.gguf - - - - \/usr\/lib\/aios\/models\/aios-tiny-v3\.gguf$/m);
      }
      rootHash[v] = /roothash=([0-9a-f]{64})/.exec(readFileSync(join(out, 'update', `aios_${v}.conf`), 'utf8'))?.[1] ?? '';
      expect(rootHash[v]).toMatch(/^[0-9a-f]{64}$/);
      // The machine is version 1's disk (the image file of each build replaces the last).
      if (v === '1') {
        await execa('cp', ['--sparse=always', res.image, disk]);
        copyFileSync(res.manifest, disk.replace(/\.raw$/, '.manifest.json'));
      }
    }
    expect(new Set(Object.values(rootHash)).size).toBe(3);
    const files = readdirSync(join(out, 'update'));
    for (const v of ['1', '2', '3']) expect(files.filter((f) => f.startsWith(`aios_${v}`))).toHaveLength(5);
    const sums = await execa('sha256sum', ['-c', '--strict', 'SHA256SUMS'], { cwd: join(out, 'update'), reject: false });
    expect(sums.exitCode, sums.stdout + sums.stderr).toBe(0);
    expect(files).toContain('SHA256SUMS.gpg');
    await execa('truncate', ['-s', '2G', updateDisk]);
    await execa('mkfs.ext4', ['-q', '-F', '-L', 'aios-update', '-d', join(out, 'update'), updateDisk]);
  });

  it('boot 1 (v1): verity root, /var from repart, the runtime answers; aios update apply 2 writes slot B and a counted entry', { timeout: 20 * 60_000 }, async () => {
    const b = await boot('1-v1', 'aios.check.update=2', (a, t) => state(a, t, { create: 'made-on-v1', pull: true }));
    const log = readFileSync(b.serialLog, 'utf8');
    expect(b.reason, log.slice(-3000)).toBeUndefined();
    expect(b.guest.cmdline).toContain(`roothash=${rootHash['1']}`);
    expect(b.guest.root).toMatch(/^erofs ro\b/);
    expect(/AIOS-CHECK verity=(.*)/.exec(log)?.[1]).toMatch(/status=verified;/);
    expect(/AIOS-CHECK var=(.*)/.exec(log)?.[1]).toMatch(/^\/dev\/vda6 ext4 rw\b.* label=aios-var /);
    expect(b.runtime).toMatchObject({ ok: true, text: 'OK' });
    // The runtime downloaded the model from the host (once) into /var/lib/aios/models.
    expect(b.during).toEqual({ ok: true, value: { sessions: ['made-on-v1'], pulled: readFileSync(join(dir, `${PULLED}.gguf`)).length } });
    expect(served).toEqual([`GET /${PULLED}.gguf`]);
    // aios update check: the newest at the source is 3 (signed).
    expect(/AIOS-CHECK update_check=(.*)/.exec(log)?.[1]?.trim()).toBe('rc=0 {"available":"3","detail":"version 3 at file:///var/lib/aios/update, signature verified"}');
    // systemd-sysupdate checked the signed SHA256SUMS and wrote version 2, the entry last.
    expect(log).toMatch(/Signature verification succeeded/);
    expect(applied(b)?.slice(1)).toEqual(['2', '0']);
    const s = statusOf(b);
    expect(s.booted).toMatchObject({ version: '1', blessed: true });
    expect(s.verify).toBe(true);
    expect(s.versions.map((v) => [v.version, v.slot, v.entry?.file])).toEqual([
      ['2', true, 'aios_2+3-0.conf'],
      ['1', true, 'aios_1.conf'],
    ]);
    expect(s.emptySlots).toBe(0);
  });

  it('boot 2 (v2): booted from slot B on trial and blessed once the runtime was ready; v1 kept; the session saved on v1 is there; aios update apply 3', { timeout: 20 * 60_000 }, async () => {
    const b = await boot('2-v2', 'aios.check.update=3', (a, t) => state(a, t, { answer: true }));
    const log = readFileSync(b.serialLog, 'utf8');
    expect(b.reason, log.slice(-3000)).toBeUndefined();
    expect(b.guest.cmdline).toContain(`roothash=${rootHash['2']}`);
    expect(b.runtime).toMatchObject({ ok: true, text: 'OK' });
    // The session saved on v1, and the model pulled on v1 answering on v2 (not downloaded again).
    expect(b.during).toEqual({ ok: true, value: { sessions: ['made-on-v1'], answered: PULLED } });
    expect(served.filter((x) => x.includes(PULLED))).toHaveLength(1);
    // v2 looks for updates over HTTP (its update.source): the signed SHA256SUMS and v3's artifacts came from the server.
    expect(/AIOS-CHECK update_check=(.*)/.exec(log)?.[1]?.trim()).toBe(`rc=0 {"available":"3","detail":"version 3 at ${updateUrl()}, signature verified"}`);
    expect(served).toEqual(expect.arrayContaining(['GET /update/SHA256SUMS', 'GET /update/SHA256SUMS.gpg', 'GET /update/aios_3.conf', expect.stringMatching(/^GET \/update\/aios_3_[0-9a-f-]+\.root\.erofs$/)]));
    // aios-ready said so, and systemd-bless-boot renamed aios_2+2-1.conf to aios_2.conf (below).
    expect(log).toMatch(/AIOS-CHECK-READY aios-runtime is ready: this boot may be marked good/);
    expect(applied(b)?.slice(1)).toEqual(['3', '0']);
    const s = statusOf(b);
    expect(s.booted).toMatchObject({ version: '2', blessed: true });
    // v3 took v1's slot (two versions kept; the booted one is never touched).
    expect(s.versions.map((v) => [v.version, v.slot, v.entry?.file])).toEqual([
      ['3', true, 'aios_3+3-0.conf'],
      ['2', true, 'aios_2.conf'],
    ]);
  });

  it('boots 3–5 (v3): its runtime never becomes ready, aios-ready reboots, each try counted; boot 6 is v2 again by itself, and a byte flipped in its root is caught by dm-verity', { timeout: 45 * 60_000 }, async () => {
    for (const n of [1, 2, 3]) {
      const b = await boot(`3-v3-try${n}`);
      const log = readFileSync(b.serialLog, 'utf8');
      expect(log, `try ${n}`).toContain(`roothash=${rootHash['3']}`);
      expect(log).toMatch(/aios-runtime is not ready \(\w+(-\w+)?\): this boot is not marked good/);
      expect(log).toMatch(/this boot is on trial \(boot counting\): rebooting/);
      // Why, in the runtime's words (aios-ready quotes its journal): the model the update brought in its root failed to load.
      expect(log).toMatch(/ready\[\d+\]: aios-runtime: .*aios-tiny-v3/);
      // QEMU runs with -no-reboot: the guest's reboot ended the run before the boot check reported.
      expect(b.ok).toBe(false);
      expect(b.reason).toMatch(/QEMU exited/);
    }
    // Tamper (dm-verity), on the way: one byte of a file's data flipped in v2's slot before v2 boots
    // again. /usr/share/common-licenses/GPL-3 (base-files; nothing reads it at boot): its bytes from
    // 8 KiB on sit in a whole data block (uncompressed erofs keeps full blocks apart; only a file's
    // tail is inline with its inode), found by content: the same text as the build host's copy.
    const parts = JSON.parse((await execa('sfdisk', ['-J', disk])).stdout).partitiontable.partitions as { start: number; size: number; name?: string }[];
    const slot = parts.find((p) => p.name === 'aios_2');
    expect(slot, JSON.stringify(parts)).toBeTruthy();
    const flipped = flipFileBytes(disk, slot!, readFileSync(TAMPERED).subarray(8192, 8192 + 256));
    expect(flipped).toBeGreaterThanOrEqual(1);
    const b = await boot('6-back-to-v2', `aios.check.read=${TAMPERED}`, (a, t) => state(a, t));
    const log = readFileSync(b.serialLog, 'utf8');
    expect(b.reason, log.slice(-3000)).toBeUndefined();
    expect(b.guest.cmdline).toContain(`roothash=${rootHash['2']}`);
    expect(b.runtime).toMatchObject({ ok: true, text: 'OK' });
    expect(b.during).toEqual({ ok: true, value: { sessions: ['made-on-v1'] } });
    const s = statusOf(b);
    expect(s.booted).toMatchObject({ version: '2', blessed: true });
    expect(s.versions.map((v) => [v.version, v.entry?.file, v.entry?.state])).toEqual([
      ['3', 'aios_3+0-3.conf', 'bad'],
      ['2', 'aios_2.conf', 'good'],
    ]);
    expect(s.events).toContain('version 3 was tried 3 time(s) and never became ready (its boot was not marked good): systemd-boot went back to 2');
    // The tampered file: reading it fails with EIO, dm-verity names the block (on the console and,
    // AIOS-CHECK-KLOG, from the journal); the rest of the root is intact (the runtime answered above).
    const read = /AIOS-CHECK read=(\S+) rc=(\d+) err=(.*)/.exec(log);
    expect(read, log.slice(-3000)).not.toBeNull();
    expect(read![1]).toBe(TAMPERED);
    expect(read![2]).not.toBe('0');
    expect(read![3]).toMatch(/Input\/output error/);
    expect(log).toMatch(/device-mapper: verity: .*data block \d+ is corrupted/);
  });
});
