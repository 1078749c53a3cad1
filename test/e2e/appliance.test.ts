/**
 * End to end, issue 18's first slice (docs/appliance.md): the default recipe with image.layout =
 * "appliance" (the llama and models stages are the default image's, from the cache; rootfs and
 * overlay are this layout's own: dracut instead of initramfs-tools). The disk's partition table,
 * slot A checked against its hash partition offline with the root hash from the boot entry. The
 * images are removed afterwards. The boots are appliance-update.test.ts's: its first (/ read-only
 * from the dm-verity device, /var made by systemd-repart, the runtime answering), then update,
 * blessing, rollback, and the tamper check (a byte flipped in a slot: EIO and dm-verity's message)
 * in its last.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { build } from '../../src/build/index.js';
import { GPT_TYPES } from '../../src/util/gpt.js';
import { verityPartUuids } from '../../src/build/appliance.js';
import { tmp } from '../helpers.js';

const MiB = 1024 * 1024;
const dir = tmp('aios-e2e-appliance-');
let image = '';
let rootHash = '';

/** One partition of the image into its own file (sparse). */
async function extract(disk: string, p: { start: number; size: number }, file: string): Promise<string> {
  await execa('dd', [`if=${disk}`, `of=${file}`, 'bs=1M', `skip=${(p.start * 512) / MiB}`, `count=${(p.size * 512) / MiB}`, 'conv=sparse', 'status=none']);
  return file;
}

describe('appliance image (image.layout = "appliance")', () => {
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('builds ESP + slot A and its verity partition + an empty slot B, DPS types, versioned labels, the root hash on the entry', { timeout: 40 * 60_000 }, async () => {
    const res = await build({ recipe: 'default', outDir: dir, renderer: 'silent', sets: ['image.layout=appliance', 'image.name=aios-appliance', 'image.version="1"'] });
    image = res.image;
    expect(res.stages.map((s) => s.name)).toEqual(['rootfs', 'llama', 'models', 'overlay', 'image']);
    const m = JSON.parse(readFileSync(res.manifest, 'utf8'));
    expect(m.packages.dracut).toBeTruthy();
    expect(m.packages['systemd-cryptsetup']).toBeTruthy();
    expect(m.packages['initramfs-tools']).toBeUndefined();

    const parts = JSON.parse((await execa('sfdisk', ['-J', image])).stdout).partitiontable.partitions as { start: number; size: number; type: string; uuid: string; name: string }[];
    expect(parts.map((p) => [p.type, p.name])).toEqual([
      [GPT_TYPES.esp, 'esp'],
      [GPT_TYPES.rootX86_64, 'aios_1'],
      [GPT_TYPES.rootX86_64Verity, 'aios_1_verity'],
      [GPT_TYPES.rootX86_64, '_empty'],
      [GPT_TYPES.rootX86_64Verity, '_empty'],
    ]);
    // Free space after the slots for the first /var.
    const disk = Number((await execa('stat', ['-c', '%s', image])).stdout);
    const end = (parts[4]!.start + parts[4]!.size) * 512;
    expect(disk - end).toBeGreaterThanOrEqual(64 * MiB);

    // The boot entry (read from the FAT without mounting) carries the root hash, whose halves are slot A's UUIDs.
    const esp = await extract(image, parts[0]!, join(dir, 'esp.img'));
    // aios_1+3.conf: systemd-boot's boot counting (3 tries until systemd-bless-boot marks it good).
    const entry = (await execa('mtype', ['-i', esp, '::/loader/entries/aios_1+3.conf'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout;
    // Kernel and initrd named with the image version, where the update transfers put the next ones.
    expect(entry).toMatch(/^linux +\/aios\/aios_1\.linux$/m);
    expect(entry).toMatch(/^initrd +\/aios\/aios_1\.initrd$/m);
    expect((await execa('mdir', ['-b', '-i', esp, '::/aios/'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout).toMatch(/aios_1\.linux/);
    expect((await execa('mtype', ['-i', esp, '::/loader/loader.conf'], { env: { MTOOLS_SKIP_CHECK: '1' } })).stdout).toMatch(/^default aios_\*$/m);
    rootHash = /roothash=([0-9a-f]{64})/.exec(entry)?.[1] ?? '';
    expect(rootHash, entry).toMatch(/^[0-9a-f]{64}$/);
    expect(entry).toMatch(/options root=\/dev\/mapper\/root rootfstype=erofs ro /);
    const v = verityPartUuids(rootHash);
    expect([parts[1]!.uuid.toLowerCase(), parts[2]!.uuid.toLowerCase()]).toEqual([v.data, v.hash]);
    expect(entry).toContain(`systemd.verity_root_data=PARTUUID=${v.data}`);
    expect(entry).toContain(`systemd.verity_root_hash=PARTUUID=${v.hash}`);

    // Slot A verifies against its hash partition (veritysetup reads the data size from the hash superblock).
    const a = await extract(image, parts[1]!, join(dir, 'root-a.img'));
    const av = await extract(image, parts[2]!, join(dir, 'root-a.verity'));
    const verify = await execa('veritysetup', ['verify', a, av, rootHash], { reject: false });
    expect(verify.exitCode, verify.stderr).toBe(0);
    rmSync(a);
    rmSync(av);
    rmSync(esp);

    // The update artifacts beside the image (src/build/update.ts): this version's five files and SHA256SUMS.
    expect(res.update?.dir).toBe(join(dir, 'update'));
    expect(res.update?.files).toHaveLength(5);
    const sums = await execa('sha256sum', ['-c', '--strict', 'SHA256SUMS'], { cwd: join(dir, 'update'), reject: false });
    expect(sums.exitCode, sums.stdout + sums.stderr).toBe(0);
    const upd = readdirSync(join(dir, 'update'));
    expect(upd).toContain(`aios_1_${v.data}.root.erofs`);
    expect(upd).toContain(`aios_1_${v.hash}.verity`);
    expect(readFileSync(join(dir, 'update', 'aios_1.conf'), 'utf8')).toBe(entry.endsWith('\n') ? entry : `${entry}\n`);
  });
});
