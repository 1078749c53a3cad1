/**
 * Reproducibility: two builds of the default recipe (disk + ISO) with the same SOURCE_DATE_EPOCH,
 * the stages aios writes (overlay, image, squashfs, iso) forced to run again each time, into two
 * out dirs, with one pki dir (runtime.pki). rootfs, llama.cpp and models come from the cache (the same
 * inputs); what aios itself produces from them must be the same bytes, and the manifests the same JSON.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { build, type BuildResult } from '../../src/build/index.js';
import { sha256File } from '../../src/util/hash.js';
import { tmp } from '../helpers.js';

const EPOCH = '1764028800'; // 2025-11-25T00:00:00Z
const REBUILD = ['overlay', 'image', 'squashfs', 'iso'];
const saved = process.env.SOURCE_DATE_EPOCH;
const runs: BuildResult[] = [];

describe('reproducible builds (SOURCE_DATE_EPOCH)', () => {
  beforeAll(() => {
    process.env.SOURCE_DATE_EPOCH = EPOCH;
  });
  afterAll(() => {
    if (saved === undefined) delete process.env.SOURCE_DATE_EPOCH;
    else process.env.SOURCE_DATE_EPOCH = saved;
  });

  it('builds disk + ISO twice, re-running overlay, image, squashfs and iso', { timeout: 30 * 60_000 }, async () => {
    // One set of credentials for both builds (an image carries its server key: the same inputs are the same key).
    const pki = join(tmp('aios-repro-pki-'), 'pki');
    for (const n of [1, 2]) {
      const res = await build({ recipe: 'default', sets: [`runtime.pki="${pki}"`], outDir: tmp(`aios-repro-${n}-`), renderer: 'silent', formats: ['disk', 'iso'], rebuild: REBUILD });
      const ran = res.stages.filter((s) => !s.cached).map((s) => s.name);
      // The first build also makes whatever earlier stage the cache no longer has (it keeps two
      // outputs per stage, and other tests' recipes may have pushed this one's rootfs out); the
      // second re-runs exactly the forced stages on top of the same cached ones.
      if (n === 1) expect(ran.filter((s) => !REBUILD.includes(s)).every((s) => ['rootfs', 'llama', 'models'].includes(s)) && REBUILD.every((s) => ran.includes(s))).toBe(true);
      else expect(ran).toEqual(REBUILD);
      runs.push(res);
      if (n === 1) await new Promise((r) => setTimeout(r, 1100)); // a different wall-clock second for every file written
    }
  });

  it('gives byte-identical disk images and ISOs, and identical manifests', async () => {
    const [a, b] = runs as [BuildResult, BuildResult];
    for (const format of ['disk', 'iso'] as const) {
      const fa = a.outputs.find((o) => o.format === format)!;
      const fb = b.outputs.find((o) => o.format === format)!;
      expect([format, await sha256File(fa.file)]).toEqual([format, await sha256File(fb.file)]);
      const ma = JSON.parse(readFileSync(fa.manifest, 'utf8'));
      const mb = JSON.parse(readFileSync(fb.manifest, 'utf8'));
      expect(ma).toEqual(mb);
      expect(ma.created).toBe('2025-11-25T00:00:00.000Z');
    }
  });

  it('derives the identities from the recipe and the dates from SOURCE_DATE_EPOCH', async () => {
    const [a] = runs as [BuildResult];
    const disk = a.outputs.find((o) => o.format === 'disk')!.file;
    const iso = a.outputs.find((o) => o.format === 'iso')!.file;
    const m = JSON.parse(readFileSync(a.outputs[0]!.manifest, 'utf8'));
    // GPT disk and partition GUIDs, ext4 UUID and hash seed, FAT volume id: from image.seed.
    const gpt = JSON.parse((await execa('sfdisk', ['-J', disk])).stdout).partitiontable;
    expect(gpt.id.toLowerCase()).toBe(m.identity.diskUuid);
    expect(gpt.partitions.map((p: { uuid: string }) => p.uuid.toLowerCase())).toEqual([m.identity.espPartUuid, m.identity.rootPartUuid]);
    const root = gpt.partitions[1];
    const rootImg = join(tmp('aios-repro-x-'), 'root.img');
    await execa('dd', [`if=${disk}`, `of=${rootImg}`, 'bs=512', `skip=${root.start}`, `count=${root.size}`, 'conv=sparse', 'status=none']);
    const sb = (await execa('dumpe2fs', ['-h', rootImg])).stdout;
    expect(sb).toMatch(new RegExp(`^Filesystem UUID:\\s+${m.identity.rootFsUuid}$`, 'm'));
    expect(sb).toMatch(new RegExp(`^Directory Hash Seed:\\s+${m.identity.rootFsUuid}$`, 'm'));
    expect(sb).toMatch(/^Filesystem created:\s+Tue Nov 25 00:00:00 2025$/m);
    // Every inode's times are at or before SOURCE_DATE_EPOCH (ctime and atime exactly).
    const stat = (await execa('debugfs', ['-R', 'stat /etc/hostname', rootImg])).stdout;
    for (const t of ['ctime', 'atime', 'mtime', 'crtime']) expect(stat).toMatch(new RegExp(`^\\s*${t}: 0x6924f180:00000000`, 'm'));
    const esp = `${disk}@@${gpt.partitions[0].start * 512}`;
    const vol = await execa('minfo', ['-i', esp, '::'], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
    expect(vol.stdout).toMatch(new RegExp(`serial number: ${m.identity.espVolumeId.toUpperCase()}`, 'i'));
    // ISO: the volume "UUID" (its creation date) is SOURCE_DATE_EPOCH.
    expect((await execa('blkid', ['-o', 'value', '-s', 'UUID', iso])).stdout).toBe('2025-11-25-00-00-00-00');
  });
});
