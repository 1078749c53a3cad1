/**
 * End to end, issue 18's first slice (docs/appliance.md): the default recipe with image.layout =
 * "appliance" (the llama and models stages are the default image's, from the cache; rootfs and
 * overlay are this layout's own: dracut instead of initramfs-tools). The disk's partition table,
 * slot A checked against its hash partition offline with the root hash from the boot entry. Then the
 * tamper test: one byte of a file's data
 * flipped inside slot A of a copy of the image → reading the file in the guest fails with an I/O
 * error and dm-verity reports the corrupted block, the rest of the machine comes up. The images are
 * removed afterwards. The untampered boot (/ read-only from the dm-verity device, /var made by
 * systemd-repart, the runtime answering) is the first boot of appliance-update.test.ts, which goes on
 * to update, bless and roll back.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { closeSync, openSync, readFileSync, readdirSync, readSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { build } from '../../src/build/index.js';
import { qemuTest } from '../../src/qemu/index.js';
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

  it('tamper: one flipped byte of a file\'s data in slot A → reading it fails with EIO, dm-verity names the block', { timeout: 15 * 60_000 }, async () => {
    expect(image).not.toBe('');
    const bad = join(dir, 'tampered.raw');
    await execa('cp', ['--sparse=always', image, bad]);
    // Its manifest beside it (qemu-test reads the runtime's address from it); the image's own client credentials.
    await execa('cp', [image.replace(/\.raw$/, '.manifest.json'), join(dir, 'tampered.manifest.json')]);
    const slot = JSON.parse((await execa('sfdisk', ['-J', bad])).stdout).partitiontable.partitions[1] as { start: number; size: number };
    // /usr/share/common-licenses/GPL-3 (base-files; nothing reads it at boot). Its bytes from 8 KiB
    // on sit in a whole data block (uncompressed erofs keeps full blocks apart; only a file's tail is
    // inline with its inode), found by content: the same text as the build host's copy.
    const FILE = '/usr/share/common-licenses/GPL-3';
    const needle = readFileSync(FILE).subarray(8192, 8192 + 256);
    const fd = openSync(bad, 'r+');
    const hits: number[] = [];
    try {
      const CHUNK = 64 * MiB;
      const buf = Buffer.alloc(CHUNK + needle.length);
      for (let off = 0; off < slot.size * 512; off += CHUNK) {
        const n = readSync(fd, buf, 0, buf.length, slot.start * 512 + off);
        for (let i = buf.subarray(0, n).indexOf(needle); i >= 0 && i < CHUNK; i = buf.subarray(0, n).indexOf(needle, i + 1)) hits.push(slot.start * 512 + off + i);
      }
      // The same text may be in the root more than once (another package's copy of the licence):
      // every copy gets the flipped byte, so the file read below meets one whichever it is.
      expect(hits.length).toBeGreaterThanOrEqual(1);
      for (const h of hits) {
        const b = Buffer.alloc(1);
        readSync(fd, b, 0, 1, h + 100);
        writeSync(fd, Buffer.from([b[0]! ^ 0x01]), 0, 1, h + 100);
      }
    } finally {
      closeSync(fd);
    }
    const serialLog = join(dir, 'tamper.serial.log');
    const boot = await qemuTest(bad, { timeout: 600, serialLog, checkCmdline: `aios.check.read=${FILE}`, tlsDir: join(dir, 'aios-appliance.pki') });
    const log = readFileSync(serialLog, 'utf8');
    rmSync(bad);
    const read = /AIOS-CHECK read=(\S+) rc=(\d+) err=(.*)/.exec(log);
    expect(read, log.slice(-3000)).not.toBeNull();
    expect(read![1]).toBe(FILE);
    expect(read![2]).not.toBe('0');
    expect(read![3]).toMatch(/Input\/output error/);
    // dm-verity's own message, on the console and (AIOS-CHECK-KLOG) from the journal.
    expect(log).toMatch(/device-mapper: verity: .*data block \d+ is corrupted/);
    // The rest of the root is intact: the machine still came up and the runtime answered.
    expect(boot.runtime).toMatchObject({ ok: true, text: 'OK' });
  });
});
