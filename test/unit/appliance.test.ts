/**
 * image.layout = "appliance" (docs/appliance.md): the recipe checks (exit 2 naming the keys), the
 * layout plan, the DPS partition UUIDs from the root hash, the boot entry's command line, and the
 * read-only root + dm-verity hash tree made with the real tools (mkfs.erofs / mksquashfs,
 * veritysetup, sfdisk) on a small tree: verified intact, refused after one flipped byte.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { openSync, closeSync, readSync, writeSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { loadRecipe } from '../../src/config/load.js';
import { RecipeError, UserError } from '../../src/util/errors.js';
import { MIN_VAR, minApplianceDisk, veritySlotBytes } from '../../src/config/appliance.js';
import { applianceCmdline, applianceSfdiskScript, formatVerity, planApplianceLayout, readonlyFsArgv, verityPartUuids } from '../../src/build/appliance.js';
import { kernelCmdline } from '../../src/build/context.js';
import { GPT_TYPES } from '../../src/util/gpt.js';
import { cli, tmp } from '../helpers.js';

const MiB = 1024 * 1024;

async function problems(p: Promise<unknown>): Promise<RecipeError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(RecipeError);
  return e as RecipeError;
}

describe('appliance recipe checks', () => {
  it('keeps the plain layout as the default, and accepts the appliance layout with its defaults', async () => {
    const plain = await loadRecipe('default');
    expect(plain.image.layout).toBe('plain');
    const r = await loadRecipe('default', { sets: ['image.layout=appliance'] });
    expect(r.image).toMatchObject({ layout: 'appliance', readonly_fs: 'erofs', slot_size: 'auto' });
  });

  it('refuses an xfs root, the ISO and a custom kernel with the appliance layout, naming the keys', async () => {
    const xfs = await problems(loadRecipe('default', { sets: ['image.layout=appliance', 'filesystem.root=xfs'] }));
    expect(xfs.exitCode).toBe(2);
    expect(xfs.problems.map((p) => p.path)).toEqual(['filesystem.root']);
    expect(xfs.problems[0]!.message).toMatch(/image\.layout = "appliance"/);
    // The same xfs root is fine in the plain layout.
    await expect(loadRecipe('default', { sets: ['filesystem.root=xfs'] })).resolves.toBeTruthy();
    const iso = await problems(loadRecipe('default', { sets: ['image.layout=appliance', 'image.formats=["disk","iso"]'] }));
    expect(iso.problems.map((p) => p.path)).toEqual(['image.formats']);
    const kernel = await problems(loadRecipe('default', { sets: ['image.layout=appliance', 'kernel.build=true'] }));
    expect(kernel.problems.map((p) => p.path)).toContain('kernel.build');
  });

  it('refuses an image.size too small for two slots, naming image.size and the slot size', async () => {
    const e = await problems(loadRecipe('default', { sets: ['image.layout=appliance', 'image.size=1G', 'image.slot_size=1G'] }));
    expect(e.exitCode).toBe(2);
    expect(e.problems.map((p) => p.path)).toEqual(['image.size']);
    expect(e.problems[0]!.message).toMatch(/image\.slot_size/);
    expect(e.problems[0]!.message).toMatch(/image\.esp_size = 256M/);
    // Large enough: two 1 GiB slots, their verity partitions, the ESP and /var fit in 3 GiB.
    expect(minApplianceDisk(256 * MiB, 1024 * MiB)).toBeLessThan(3 * 1024 * MiB);
    await expect(loadRecipe('default', { sets: ['image.layout=appliance', 'image.size=3G', 'image.slot_size=1G'] })).resolves.toBeTruthy();
    // slot_size = "auto" assumes at least 256 MiB a slot at load time.
    const auto = await problems(loadRecipe('default', { sets: ['image.layout=appliance', 'image.size=600M'] }));
    expect(auto.problems[0]!.message).toMatch(/image\.slot_size = "auto"/);
  });

  it('exits 2 from the CLI with the keys in the message', async () => {
    const r = await cli(['summary', '--set', 'image.layout=appliance', '--set', 'filesystem.root=xfs']);
    expect(r.exitCode).toBe(2);
    expect(r.stderr).toMatch(/filesystem\.root/);
    expect(r.stderr).toMatch(/image\.layout = "appliance"/);
  });
});

describe('appliance layout plan', () => {
  it('places ESP, slot A, verity A, slot B, verity B in order, 1 MiB aligned, with /var space after them', () => {
    const l = planApplianceLayout({ imageSize: 'auto', espSize: '256M', slotSize: 'auto', readonlyBytes: 800 * MiB, varBytes: '512M' });
    expect(l.esp).toEqual({ start: MiB, size: 256 * MiB });
    expect(l.rootA.size).toBe(1000 * MiB); // 800 MiB + a quarter
    expect(l.rootB.size).toBe(l.rootA.size);
    expect(l.verityA.size).toBe(veritySlotBytes(l.rootA.size));
    expect(l.verityA.start).toBe(l.rootA.start + l.rootA.size);
    expect(l.rootB.start).toBe(l.verityA.start + l.verityA.size);
    expect(l.verityB.start).toBe(l.rootB.start + l.rootB.size);
    expect(l.free).toEqual({ start: l.verityB.start + l.verityB.size, size: 512 * MiB });
    expect(l.diskBytes).toBe(l.free.start + l.free.size + MiB);
    for (const e of [l.esp, l.rootA, l.verityA, l.rootB, l.verityB, l.free]) expect(e.start % MiB).toBe(0);
  });

  it('refuses a fixed size without room for /var, and a slot smaller than the root, naming the keys (exit 2)', () => {
    const small = (() => {
      try {
        planApplianceLayout({ imageSize: '2G', espSize: '256M', slotSize: 'auto', readonlyBytes: 800 * MiB, varBytes: '512M' });
      } catch (e) {
        return e as UserError;
      }
    })();
    expect(small).toBeInstanceOf(UserError);
    expect(small!.exitCode).toBe(2);
    expect(small!.message).toMatch(/image\.size = 2G is too small/);
    expect(small!.message).toMatch(/image\.slot_size/);
    expect(() => planApplianceLayout({ imageSize: 'auto', espSize: '256M', slotSize: '500M', readonlyBytes: 800 * MiB, varBytes: '512M' })).toThrow(/image\.slot_size = 500M is too small/);
    const fits = planApplianceLayout({ imageSize: '4G', espSize: '256M', slotSize: '1G', readonlyBytes: 800 * MiB, varBytes: '512M' });
    expect(fits.diskBytes).toBe(4096 * MiB);
    expect(fits.free.size).toBeGreaterThanOrEqual(MIN_VAR);
  });

  it('derives the slot partitions\' UUIDs from the root hash and writes the verity command line', () => {
    const h = '273639c6df55993cff8b100eb498f8979ab0051020fe2a8b7ee8fa8f95e1c79f';
    expect(verityPartUuids(h)).toEqual({ data: '273639c6-df55-993c-ff8b-100eb498f897', hash: '9ab00510-20fe-2a8b-7ee8-fa8f95e1c79f' });
    const plain = 'root=PARTUUID=x rootfstype=ext4 rw console=ttyS0,115200 systemd.firstboot=no';
    expect(applianceCmdline(plain, { rootHash: h, fs: 'erofs' })).toBe(
      `root=/dev/mapper/root rootfstype=erofs ro roothash=${h} systemd.verity_root_data=PARTUUID=273639c6-df55-993c-ff8b-100eb498f897 systemd.verity_root_hash=PARTUUID=9ab00510-20fe-2a8b-7ee8-fa8f95e1c79f console=ttyS0,115200 systemd.firstboot=no`,
    );
    expect(() => applianceCmdline('quiet', { rootHash: h, fs: 'erofs' })).toThrow(/unexpected kernel command line/);
  });

  it('keeps the plain command line\'s shape that applianceCmdline relies on', async () => {
    const r = await loadRecipe('default', { sets: ['image.layout=appliance'] });
    const h = 'a'.repeat(64);
    const line = applianceCmdline(kernelCmdline(r, { rootPartUuid: '00000000-0000-4000-8000-000000000000' }), { rootHash: h, fs: r.image.readonly_fs });
    expect(line).toMatch(/^root=\/dev\/mapper\/root rootfstype=erofs ro roothash=a{64} /);
    expect(line).not.toMatch(/\brw\b/);
  });
});

describe('read-only root and dm-verity with the real tools', () => {
  const dir = tmp('aios-appliance-');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  for (const fs of ['erofs', 'squashfs'] as const) {
    it(`${fs}: the hash tree verifies the image, a flipped data byte fails it, the GPT has the DPS types and labels`, async () => {
      const tree = join(dir, `${fs}-tree`);
      mkdirSync(join(tree, 'etc'), { recursive: true });
      writeFileSync(join(tree, 'etc/os-release'), 'ID=aios\n');
      // Incompressible, so that the bytes are stored as they are and can be found in the image.
      const marker = Buffer.from(`AIOS-TAMPER-MARKER-${fs}`);
      const body = Buffer.concat([marker, randomBytes(64 * 1024)]);
      writeFileSync(join(tree, 'data.bin'), body);
      const img = join(dir, `${fs}.img`);
      const argv = readonlyFsArgv(fs, { root: tree, img, uuid: '0b6f1f55-1a8b-4b8e-9b8d-0c0e0a0b0c0d', epoch: 1700000000 });
      await execa(argv[0]!, argv.slice(1));
      expect(statSync(img).size % 4096).toBe(0);
      const verity = join(dir, `${fs}.verity`);
      writeFileSync(verity, Buffer.alloc(veritySlotBytes(statSync(img).size)));
      const log = join(dir, 'commands.log');
      const rootHash = await formatVerity({ log }, { dataImg: img, hashImg: verity, seed: 'aios:test' });
      expect(rootHash).toMatch(/^[0-9a-f]{64}$/);
      // Same tree, same seed: same root hash (reproducible).
      const again = join(dir, `${fs}.verity2`);
      writeFileSync(again, Buffer.alloc(veritySlotBytes(statSync(img).size)));
      expect(await formatVerity({ log }, { dataImg: img, hashImg: again, seed: 'aios:test' })).toBe(rootHash);
      const ok = await execa('veritysetup', ['verify', img, verity, rootHash], { reject: false });
      expect(ok.exitCode, ok.stderr).toBe(0);

      // The sfdisk script, applied to an image file, gives the DPS types, the UUIDs from the root hash and the labels.
      const l = planApplianceLayout({ imageSize: 'auto', espSize: '8M', slotSize: '4M', readonlyBytes: statSync(img).size, varBytes: '64M' });
      const disk = join(dir, `${fs}.raw`);
      await execa('truncate', ['-s', String(l.diskBytes), disk]);
      const script = applianceSfdiskScript(l, { diskUuid: '11111111-1111-4111-8111-111111111111', espPartUuid: '22222222-2222-4222-8222-222222222222', version: '7', rootHash, emptyUuids: { root: '33333333-3333-4333-8333-333333333333', verity: '44444444-4444-4444-8444-444444444444' } });
      await execa('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', disk], { input: script });
      const parts = JSON.parse((await execa('sfdisk', ['-J', disk])).stdout).partitiontable.partitions as { type: string; uuid: string; name: string; start: number }[];
      const v = verityPartUuids(rootHash);
      expect(parts.map((p) => [p.type, p.uuid.toLowerCase(), p.name])).toEqual([
        [GPT_TYPES.esp, '22222222-2222-4222-8222-222222222222', 'esp'],
        [GPT_TYPES.rootX86_64, v.data, 'aios_7'],
        [GPT_TYPES.rootX86_64Verity, v.hash, 'aios_7_verity'],
        [GPT_TYPES.rootX86_64, '33333333-3333-4333-8333-333333333333', '_empty'],
        [GPT_TYPES.rootX86_64Verity, '44444444-4444-4444-8444-444444444444', '_empty'],
      ]);
      expect(parts[1]!.start * 512).toBe(l.rootA.start);

      // One flipped byte in the file's data: the hash tree no longer matches.
      const buf = Buffer.alloc(statSync(img).size);
      const fd = openSync(img, 'r+');
      readSync(fd, buf, 0, buf.length, 0);
      const at = buf.indexOf(marker);
      expect(at).toBeGreaterThan(0);
      writeSync(fd, Buffer.from([buf[at]! ^ 0xff]), 0, 1, at);
      closeSync(fd);
      const bad = await execa('veritysetup', ['verify', img, verity, rootHash], { reject: false });
      expect(bad.exitCode).not.toBe(0);
      expect(bad.stderr + bad.stdout).toMatch(/corrupt|Verification failed/i);
    });
  }
});
