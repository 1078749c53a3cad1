import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { join } from 'node:path';
import { planLayout, sfdiskScript } from '../../src/build/image.js';
import { GPT_TYPES } from '../../src/util/gpt.js';
import { UserError } from '../../src/util/errors.js';
import { tmp } from '../helpers.js';

const MiB = 1024 * 1024;
const ids = {
  diskUuid: '11111111-2222-4333-8444-555555555555',
  espPartUuid: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
  rootPartUuid: '12345678-9abc-4def-8123-456789abcdef',
};

describe('GPT layout', () => {
  it('sizes the root from its contents plus headroom when image.size is auto', () => {
    const l = planLayout({ imageSize: 'auto', espSize: '256M', rootContentBytes: 300 * MiB, headroom: '512M' });
    expect(l.esp).toEqual({ start: MiB, size: 256 * MiB });
    expect(l.root.start).toBe(257 * MiB);
    expect(l.root.size % MiB).toBe(0);
    expect(l.root.size).toBeGreaterThanOrEqual(300 * 1.1 * MiB + 512 * MiB);
    expect(l.diskBytes).toBe(l.root.start + l.root.size + MiB);
  });

  it('fills a fixed image.size and refuses one that is too small, with the numbers', () => {
    const l = planLayout({ imageSize: '4G', espSize: '512M', rootContentBytes: 300 * MiB, headroom: '512M' });
    expect(l.diskBytes).toBe(4096 * MiB);
    expect(l.root.size).toBe(4096 * MiB - 2 * MiB - 512 * MiB);
    try {
      planLayout({ imageSize: '300M', espSize: '256M', rootContentBytes: 300 * MiB, headroom: '512M' });
      expect.unreachable();
    } catch (e) {
      expect(e).toBeInstanceOf(UserError);
      expect((e as UserError).message).toMatch(/image.size = 300M is too small: the root filesystem needs at least .* MiB/);
    }
  });

  it('writes a GPT that sfdisk reads back with the right types, UUIDs and offsets', async () => {
    const l = planLayout({ imageSize: 'auto', espSize: '64M', rootContentBytes: 10 * MiB, headroom: '16M' });
    const disk = join(tmp(), 'disk.raw');
    await execa('truncate', ['-s', String(l.diskBytes), disk]);
    await execa('sfdisk', ['--quiet', '--no-reread', '--no-tell-kernel', disk], { input: sfdiskScript(l, ids) });
    const { stdout } = await execa('sfdisk', ['-J', disk]);
    const pt = JSON.parse(stdout).partitiontable;
    expect(pt.label).toBe('gpt');
    expect(pt.id).toBe(ids.diskUuid.toUpperCase());
    expect(pt.sectorsize ?? 512).toBe(512);
    const [esp, root] = pt.partitions;
    expect(esp).toMatchObject({ start: 2048, size: (64 * MiB) / 512, type: GPT_TYPES.esp, uuid: ids.espPartUuid.toUpperCase(), name: 'esp' });
    expect(root).toMatchObject({ start: 2048 + (64 * MiB) / 512, size: l.root.size / 512, type: GPT_TYPES.rootX86_64, uuid: ids.rootPartUuid.toUpperCase(), name: 'root-x86-64' });
    // The backup GPT fits in the last MiB.
    expect(pt.lastlba).toBeGreaterThanOrEqual(root.start + root.size - 1);
  });
});
