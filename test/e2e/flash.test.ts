/**
 * `aios flash` against real loop devices, real sfdisk tables, real ext4 mounts. Every loop device
 * and mount a test makes is tracked and removed in afterEach, also when the test fails; nothing
 * else is touched. A 64 MiB GPT image (ESP of random bytes + ext4 root with a marker file) is made
 * here with sfdisk and mkfs.ext4, so the tests do not depend on the big image build.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, statSync, writeFileSync, copyFileSync, openSync, readSync, writeSync, closeSync, rmSync, truncateSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { compareImage, describeMismatch, flash, inspectImage, inspectTarget } from '../../src/flash/index.js';
import { REPO, tmp } from '../helpers.js';

const MiB = 1024 * 1024;
const dir = tmp('aios-flash-');
const img = join(dir, 'disk.raw');
const ESP = { start: 1 * MiB, size: 10 * MiB };
const ROOT = { start: 11 * MiB, size: 52 * MiB };
const IMG_SIZE = 64 * MiB;

/** Loop devices and mounts made by this file, undone in reverse order after every test. */
const loops: string[] = [];
const mounted: string[] = [];

async function attach(file: string, opts: { offset?: number; sizelimit?: number; partscan?: boolean } = {}): Promise<string> {
  const args = ['--find', '--show'];
  if (opts.offset !== undefined) args.push('--offset', String(opts.offset));
  if (opts.sizelimit !== undefined) args.push('--sizelimit', String(opts.sizelimit));
  if (opts.partscan) args.push('--partscan');
  const { stdout } = await execa('losetup', [...args, file]);
  const dev = stdout.trim();
  loops.push(dev);
  return dev;
}

async function mountRo(dev: string): Promise<string> {
  const mp = tmp('aios-flash-mnt-');
  await execa('mount', ['-o', 'ro', dev, mp]);
  mounted.push(mp);
  return mp;
}

async function undo(): Promise<void> {
  while (mounted.length) {
    const mp = mounted.pop()!;
    await execa('umount', [mp], { reject: false });
    rmSync(mp, { recursive: true, force: true });
  }
  while (loops.length) await execa('losetup', ['-d', loops.pop()!], { reject: false });
}

async function sha256(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const c of createReadStream(path)) h.update(c as Buffer);
  return h.digest('hex');
}

/** A sparse file of `size` bytes in the test dir. */
function blank(name: string, size: number): string {
  const p = join(dir, name);
  rmSync(p, { force: true });
  writeFileSync(p, '');
  truncateSync(p, size);
  return p;
}

function readAt(path: string, offset: number, length: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const b = Buffer.alloc(length);
    readSync(fd, b, 0, length, offset);
    return b;
  } finally {
    closeSync(fd);
  }
}

/** Runs the compiled CLI as a user would, optionally typing `input` on stdin. */
function aios(args: string[], input = '') {
  return execa('node', [join(REPO, 'bin/aios.js'), ...args], { reject: false, cwd: REPO, input });
}

async function sfdiskJson(path: string) {
  const { stdout } = await execa('sfdisk', ['--json', path]);
  return JSON.parse(stdout).partitiontable as { lastlba: number; partitions: { node: string; start: number; size: number; type: string }[] };
}

beforeAll(async () => {
  // The CLI runs from dist/: compile if it is older than the sources this file tests.
  const srcs = ['src/cli/index.ts', 'src/cli/flash.ts', 'src/util/exec.ts', ...(await readdir(join(REPO, 'src/flash'))).map((f) => `src/flash/${f}`)];
  const built = join(REPO, 'dist/flash/index.js');
  const newest = Math.max(...srcs.map((s) => statSync(join(REPO, s)).mtimeMs));
  if (!existsSync(built) || statSync(built).mtimeMs < newest) await execa('npx', ['tsc', '-p', 'tsconfig.json'], { cwd: REPO, reject: false });

  // The test image: GPT, ESP filled with random bytes, ext4 root with a marker file.
  blank('disk.raw', IMG_SIZE);
  await execa('sfdisk', ['--quiet', img], {
    input: `label: gpt\nstart=2048, size=${ESP.size / 512}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\nstart=${ROOT.start / 512}, size=${ROOT.size / 512}, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name=root\n`,
  });
  const fd = openSync(img, 'r+');
  const rnd = Buffer.alloc(ESP.size);
  for (let i = 0; i < rnd.length; i += 4) rnd.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, i);
  writeSync(fd, rnd, 0, rnd.length, ESP.start);
  closeSync(fd);
  const content = join(dir, 'rootdir');
  mkdirSync(join(content, 'etc'), { recursive: true });
  writeFileSync(join(content, 'etc/aios-marker'), 'flashed by the aios flash test\n');
  await execa('mkfs.ext4', ['-q', '-F', '-E', `offset=${ROOT.start}`, '-d', content, img, `${ROOT.size / 1024}k`]);
  await execa('zstd', ['-q', '-f', '-k', img]);
  await execa('xz', ['-q', '-f', '-k', '-1', '-T2', img]);
}, 120_000);

afterEach(undo);
afterAll(async () => {
  await undo();
  rmSync(dir, { recursive: true, force: true });
});

describe('aios flash: writing and verifying', () => {
  it('flashes a raw image to a larger loop device, verifies, moves the backup GPT to the end', async () => {
    const dev = await attach(blank('t128.img', 128 * MiB));
    const r = await aios(['flash', img, dev, '--yes', '--json']);
    expect(r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
    const res = JSON.parse(r.stdout);
    expect(res.verify.ok).toBe(true);
    expect(res.verify.bytes).toBe(IMG_SIZE);
    expect(res.verify.targetSha256).toBe(await sha256(img));
    expect(res.write.written).toBe(IMG_SIZE); // a disk is not known to read back zeros: every block written
    expect(res.gpt).toEqual({ found: true, backupRelocated: true });
    expect(res.root.grown).toBe(false);
    expect(res.root.note).toMatch(/64\.0 MiB unallocated.*--grow-root/);

    // Read the result back independently: sfdisk finds a valid GPT whose backup header is in the
    // last sector of the 128 MiB device, and both partitions hold the image's bytes.
    const v = await execa('sfdisk', ['--verify', dev]);
    expect(v.stdout).toMatch(/No errors detected/);
    const t = await sfdiskJson(dev);
    expect(t.lastlba).toBeGreaterThan((128 * MiB) / 512 - 40);
    expect(readAt(dev, 128 * MiB - 512, 8).toString('latin1')).toBe('EFI PART');
    // The image's old backup table (its last 33 sectors) is zeroed, not left mid-disk.
    expect(readAt(dev, IMG_SIZE - 33 * 512, 33 * 512).equals(Buffer.alloc(33 * 512))).toBe(true);
    expect(t.partitions.map((p) => [p.start, p.size])).toEqual([
      [ESP.start / 512, ESP.size / 512],
      [ROOT.start / 512, ROOT.size / 512],
    ]);
    expect(readAt(dev, ESP.start, ESP.size + ROOT.size).equals(readAt(img, ESP.start, ESP.size + ROOT.size))).toBe(true);
  });

  it('flashes a hybrid ISO (as `aios build iso` makes it) to a USB-stick-sized loop device', async () => {
    // A small ISO with the same xorriso options as the iso stage: El Torito EFI image = GPT ESP.
    const d = join(dir, 'iso');
    mkdirSync(join(d, 'root/boot'), { recursive: true });
    writeFileSync(join(d, 'root/hello'), 'live\n');
    const efi = join(d, 'root/boot/efiboot.img');
    writeFileSync(efi, '');
    truncateSync(efi, 4 * MiB);
    await execa('mkfs.vfat', ['-n', 'AIOS_EFI', efi]);
    const iso = join(d, 'live.iso');
    await execa('xorriso', ['-as', 'mkisofs', '-o', iso, '-V', 'AIOS_T', '-r', '-J', '-e', 'boot/efiboot.img', '-no-emul-boot', '-efi-boot-part', '--efi-boot-image', join(d, 'root')]);
    const dev = await attach(blank('t-usb.img', 96 * MiB));
    const r = await aios(['flash', iso, dev, '--yes', '--json']);
    expect(r.exitCode, r.stderr).toBe(0);
    const res = JSON.parse(r.stdout);
    expect(res.verify.ok).toBe(true);
    expect(res.gpt).toEqual({ found: true, backupRelocated: true });
    expect(res.root.note).toMatch(/no x86-64 root partition in the image \(a live ISO/);
    // Still an ISO 9660 file system with its label, and a valid GPT (backup at the end) with the ESP.
    const b = await execa('blkid', ['-p', '-o', 'export', dev]);
    expect(b.stdout).toMatch(/^TYPE=iso9660$/m);
    expect(b.stdout).toMatch(/^LABEL=AIOS_T$/m);
    expect((await execa('sfdisk', ['--verify', dev])).stdout).toMatch(/No errors detected/);
    expect((await sfdiskJson(dev)).partitions.some((p) => p.type === 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B')).toBe(true);
  });

  it('--grow-root grows the root partition and its ext4 filesystem to the end of the disk', async () => {
    const dev = await attach(blank('t256.img', 256 * MiB));
    const res = await flash({ image: img, target: dev, yes: true, growRoot: true });
    expect(res.verify.ok).toBe(true);
    expect(res.root.grown).toBe(true);
    expect(res.root.filesystem).toBe('ext4');
    expect(res.root.filesystemGrown).toBe(true);
    const t = await sfdiskJson(dev);
    const root = t.partitions[1]!;
    expect(root.start).toBe(ROOT.start / 512);
    expect(root.start + root.size - 1).toBe(t.lastlba);
    expect((await execa('sfdisk', ['--verify', dev])).stdout).toMatch(/No errors detected/);
    // The filesystem: clean, as big as the partition (4 KiB blocks), marker still there.
    const part = await attach(dev, { offset: root.start * 512, sizelimit: root.size * 512 });
    await execa('e2fsck', ['-f', '-n', part]);
    const dump = (await execa('dumpe2fs', ['-h', part])).stdout;
    const blocks = Number(/Block count:\s+(\d+)/.exec(dump)![1]);
    const bsize = Number(/Block size:\s+(\d+)/.exec(dump)![1]);
    expect(blocks * bsize).toBeGreaterThan(root.size * 512 - 4096);
    expect(blocks * bsize).toBeGreaterThan(200 * MiB);
    const mp = await mountRo(part);
    expect(readFileSync(join(mp, 'etc/aios-marker'), 'utf8')).toMatch(/aios flash test/);
  });

  it('asks for the device name: a wrong answer writes nothing (exit 1), the right one writes', async () => {
    const file = blank('t-confirm.img', 96 * MiB);
    const dev = await attach(file);
    const before = await sha256(dev);
    const no = await aios(['flash', img, dev], '/dev/sda\n');
    expect(no.exitCode).toBe(1);
    expect(no.stderr).toMatch(/loop device on .*t-confirm\.img, 96\.0 MiB/); // model and size shown
    expect(no.stderr).toMatch(/no partition table found/); // current partitions shown
    expect(no.stderr).toContain(`Type ${dev} to confirm`);
    expect(no.stderr).toMatch(/not confirmed .*nothing was written/);
    expect(await sha256(dev)).toBe(before);
    const yes = await aios(['flash', img, dev], `${dev}\n`);
    expect(yes.exitCode).toBe(0);
    expect(yes.stdout).toMatch(/verified\s+64\.0 MiB/);
    expect(yes.stderr).toMatch(/verifying\s+64\.0 MiB \/ 64\.0 MiB\s+100%\s+[\d.]+ [KMG]iB\/s/);
    expect(await sha256(dev)).not.toBe(before);
    // Now the current partitions are shown before asking.
    const again = await aios(['flash', img, dev], 'no\n');
    expect(again.stderr).toMatch(/p1\s+10\.0 MiB\s+EFI System\s+"esp"\n\s+\S+p2\s+52\.0 MiB\s+Linux root \(x86-64\)\s+"root"/);
  });

  it('decompresses .raw.zst and .raw.xz on the fly and verifies against the decompressed bytes', async () => {
    const want = await sha256(img);
    for (const ext of ['zst', 'xz']) {
      const dev = await attach(blank(`t-${ext}.img`, 80 * MiB));
      const r = await aios(['flash', `${img}.${ext}`, dev, '--yes', '--json']);
      expect(r.exitCode, r.stderr).toBe(0);
      const res = JSON.parse(r.stdout);
      expect(res.image.format).toBe(ext === 'zst' ? 'zstd' : 'xz');
      expect(res.image.bytes).toBe(IMG_SIZE);
      expect(res.verify.imageSha256).toBe(want);
      expect(res.verify.targetSha256).toBe(want);
      expect(readAt(dev, 80 * MiB - 512, 8).toString('latin1')).toBe('EFI PART');
    }
  });

  it('refuses a truncated .raw.zst before writing anything', async () => {
    const bad = join(dir, 'broken.raw.zst');
    const whole = readFileSync(`${img}.zst`);
    writeFileSync(bad, whole.subarray(0, Math.floor(whole.length / 2)));
    const dev = await attach(blank('t-bad.img', 80 * MiB));
    const before = await sha256(dev);
    const r = await aios(['flash', bad, dev, '--yes']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/broken\.raw\.zst is corrupt or truncated .*nothing was written/);
    expect(await sha256(dev)).toBe(before);
  });

  it('--to-file: creates a sparse file (zero blocks skipped), or writes into a bigger one and moves the backup GPT', async () => {
    const fresh = join(dir, 'out-new.raw');
    rmSync(fresh, { force: true });
    const a = await flash({ image: img, target: fresh, toFile: true, yes: true });
    expect(a.verify.ok).toBe(true);
    expect(a.write.skippedZeroBytes).toBeGreaterThan(0);
    expect(a.write.written + a.write.skippedZeroBytes).toBe(IMG_SIZE);
    expect(statSync(fresh).size).toBe(IMG_SIZE);
    expect(await sha256(fresh)).toBe(await sha256(img));
    expect(statSync(fresh).blocks * 512).toBeLessThan(IMG_SIZE); // sparse

    const big = blank('out-big.raw', 100 * MiB);
    const b = await flash({ image: `${img}.zst`, target: big, toFile: true, yes: true });
    expect(b.write.skippedZeroBytes).toBe(0); // an existing file is not known to be zero
    expect(b.gpt.backupRelocated).toBe(true);
    expect((await execa('sfdisk', ['--verify', big])).stdout).toMatch(/No errors detected/);
    expect(readAt(big, 100 * MiB - 512, 8).toString('latin1')).toBe('EFI PART');

    // Without --to-file a regular file is refused; the image itself is refused as a target.
    const r = await aios(['flash', img, big, '--yes']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/is a regular file, not a block device/);
    expect(r.stderr).toMatch(/hint: .*--to-file/);
    const self = await aios(['flash', img, img, '--yes', '--to-file']);
    expect(self.exitCode).toBe(2);
    expect(self.stderr).toMatch(/is the image file itself/);
  });
});

describe('aios flash: refusals (exit 2, the target unchanged)', () => {
  async function refused(target: string, hashOf: string, pattern: RegExp, extra: string[] = []) {
    const before = await sha256(hashOf);
    const r = await aios(['flash', img, target, '--yes', ...extra]);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/refusing to write .*nothing was written/);
    expect(r.stderr).toMatch(pattern);
    expect(r.exitCode).toBe(2);
    expect(await sha256(hashOf)).toBe(before);
    return r.stderr;
  }

  it('a mounted loop device', async () => {
    const file = blank('t-mounted.img', 96 * MiB);
    await execa('mkfs.ext4', ['-q', '-F', file]);
    const dev = await attach(file);
    const mp = await mountRo(dev);
    const err = await refused(dev, file, new RegExp(`${dev} is mounted at ${mp} \\(ext4\\)`));
    expect(err).toContain(`hint: unmount it first: umount ${mp}`);
  });

  it('a loop device whose byte range is in use by another, mounted loop device (an in-use partition)', async () => {
    const file = blank('t-range.img', 96 * MiB);
    const fd = openSync(file, 'r+');
    writeSync(fd, readFileSync(img), 0, IMG_SIZE, 0);
    closeSync(fd);
    const dev = await attach(file);
    const part = await attach(dev, { offset: ROOT.start, sizelimit: ROOT.size });
    const mp = await mountRo(part);
    await refused(dev, file, new RegExp(`${part} \\(loop device on ${dev} \\(bytes ${ROOT.start}–${ROOT.start + ROOT.size}\\)\\) is mounted at ${mp}`));
    // Unmounted but still attached: refused too (it would see its bytes change under it).
    await execa('umount', [mounted.pop()!]);
    await refused(dev, file, new RegExp(`${part} is a loop device on ${dev} .*losetup -d ${part}`, 's'));
  });

  it('a device smaller than the image', async () => {
    const file = blank('t-small.img', 32 * MiB);
    const dev = await attach(file);
    await refused(dev, file, /is 32\.0 MiB \(33554432 bytes\), smaller than the image \(64\.0 MiB, 67108864 bytes\)/);
  });

  it('a partition (a real one, added to a loop device with partx)', async () => {
    const file = blank('t-part.img', 96 * MiB);
    copyFileSync(img, file);
    await execa('truncate', ['-s', String(96 * MiB), file]);
    const dev = await attach(file, { partscan: true });
    await execa('partx', ['--add', dev]);
    const p2 = `${dev}p2`;
    for (let i = 0; i < 50 && !existsSync(p2); i++) await new Promise((r) => setTimeout(r, 100));
    expect(statSync(p2).isBlockDevice()).toBe(true);
    const err = await refused(p2, file, new RegExp(`${p2} is partition 2 of ${dev}, not a whole disk`));
    expect(err).toContain(`hint: flash the whole disk: aios flash <image> ${dev}`);
  });

  it('a nonexistent path', async () => {
    const r = await aios(['flash', img, '/dev/aios-no-such-disk', '--yes']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/\/dev\/aios-no-such-disk does not exist/);
    expect(r.stderr).toMatch(/hint: list the disks with `lsblk/);
    expect(existsSync('/dev/aios-no-such-disk')).toBe(false);
  });

  it('a nonexistent image, and an image named .zst that is not zstd', async () => {
    const dev = await attach(blank('t-img.img', 80 * MiB));
    const a = await aios(['flash', join(dir, 'nope.raw'), dev, '--yes']);
    expect(a.exitCode).toBe(2);
    expect(a.stderr).toMatch(/image .*nope\.raw does not exist/);
    const fake = join(dir, 'fake.raw.zst');
    copyFileSync(img, fake);
    const b = await aios(['flash', fake, dev, '--yes']);
    expect(b.exitCode).toBe(2);
    expect(b.stderr).toMatch(/named like a zstd file but its content is not compressed/);
  });

  it('the disk that holds / (inspected only: the checks never open it for writing)', async () => {
    const info = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').find((l) => l.split(' ')[4] === '/')!;
    const majmin = info.split(' ')[2]!;
    const sys = `/sys/dev/block/${majmin}`;
    expect(existsSync(sys), `/ is on block device ${majmin}`).toBe(true);
    // The whole disk (the parent when / is on a partition), by its node in /dev.
    let disk = (await execa('realpath', [sys])).stdout;
    if (existsSync(join(disk, 'partition'))) disk = join(disk, '..');
    const name = /DEVNAME=(.*)/.exec(readFileSync(join(disk, 'uevent'), 'utf8'))![1]!;
    const t = await inspectTarget(`/dev/${name}`);
    expect(t.problems.join('\n')).toMatch(/holds the root filesystem \/: this is the running system's disk/);
  });
});

describe('compareImage: the read-back check', () => {
  it('reports the offset of a flipped byte, for raw and compressed images', async () => {
    const copy = join(dir, 'copy.raw');
    copyFileSync(img, copy);
    const at = 40 * MiB + 12345;
    const fd = openSync(copy, 'r+');
    const b = Buffer.alloc(1);
    readSync(fd, b, 0, 1, at);
    const orig = b[0]!;
    b[0] = orig ^ 0x5a;
    writeSync(fd, b, 0, 1, at);
    closeSync(fd);
    for (const source of [img, `${img}.zst`, `${img}.xz`]) {
      const v = await compareImage(await inspectImage(source), copy);
      expect(v.ok).toBe(false);
      expect(v.mismatch).toEqual({ offset: at, expected: orig, actual: orig ^ 0x5a });
      expect(describeMismatch(copy, v)).toContain(`byte ${at} (0x${at.toString(16)}, sector ${Math.floor(at / 512)})`);
    }
    // A short target: the mismatch is where it ends.
    const short = join(dir, 'short.raw');
    copyFileSync(img, short);
    await execa('truncate', ['-s', String(IMG_SIZE - 4096), short]);
    const s = await compareImage(await inspectImage(img), short);
    expect(s.mismatch?.offset).toBe(IMG_SIZE - 4096);
    expect(describeMismatch(short, s)).toMatch(/reads nothing \(the target ended\)/);
    // Identical: ok, both hashes equal the image's.
    const same = await compareImage(await inspectImage(img), img);
    expect(same).toMatchObject({ ok: true, bytes: IMG_SIZE, imageSha256: await sha256(img), targetSha256: await sha256(img) });
  });
});
