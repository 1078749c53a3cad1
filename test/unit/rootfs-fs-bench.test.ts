/**
 * The pure parts of `npm run bench:rootfs-fs` (src/bench/rootfs-fs.ts): the ELF facts the boot set
 * follows, path resolution inside a tree, the boot set of a fake tree, verdicts, the section's text
 * from fixed numbers and where it goes in docs/benchmarks.md. The measuring itself needs root and
 * real mounts and is not run here.
 */
import { describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { mkdirSync, readFileSync, realpathSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { bootSet, elfOfFile, END, figureRow, formatSection, HEADING, parseElf, resolveInRoot, shebang, spliceSection, START, verdictOf, type ElfInfo, type Op, type RootFsResult } from '../../src/bench/rootfs-fs.js';
import { median } from '../../src/bench/stats.js';
import { REPO, tmp } from '../helpers.js';

/** A minimal ELF64 little-endian file: PT_LOAD over the whole file, PT_INTERP, PT_DYNAMIC with NEEDED, RUNPATH, STRTAB. */
function fakeElf(o: { interp: string; needed: string[]; runpath?: string }): Buffer {
  const VADDR = 0x400000;
  const interp = Buffer.from(`${o.interp}\0`, 'latin1');
  const strs = ['', ...o.needed, ...(o.runpath ? [o.runpath] : [])];
  const offs: number[] = [];
  let at = 0;
  for (const s of strs) {
    offs.push(at);
    at += Buffer.byteLength(s) + 1;
  }
  const strtab = Buffer.from(strs.map((s) => `${s}\0`).join(''), 'latin1');
  const interpOff = 64 + 3 * 56;
  const strOff = interpOff + interp.length;
  const dynOff = Math.ceil((strOff + strtab.length) / 8) * 8;
  const dyn: [number, number][] = [...o.needed.map((_, i) => [1, offs[i + 1]!] as [number, number]), ...(o.runpath ? [[29, offs.at(-1)!] as [number, number]] : []), [5, VADDR + strOff], [0, 0]];
  const total = dynOff + dyn.length * 16;
  const b = Buffer.alloc(total);
  b.writeUInt32BE(0x7f454c46, 0);
  b[4] = 2; // ELFCLASS64
  b[5] = 1; // little-endian
  b[6] = 1;
  b.writeUInt16LE(3, 16); // ET_DYN
  b.writeUInt16LE(62, 18); // x86-64
  b.writeBigUInt64LE(64n, 0x20); // e_phoff
  b.writeUInt16LE(64, 0x34);
  b.writeUInt16LE(56, 0x36);
  b.writeUInt16LE(3, 0x38);
  const ph = (i: number, type: number, offset: number, size: number) => {
    const p = 64 + i * 56;
    b.writeUInt32LE(type, p);
    b.writeBigUInt64LE(BigInt(offset), p + 8);
    b.writeBigUInt64LE(BigInt(VADDR + offset), p + 16);
    b.writeBigUInt64LE(BigInt(size), p + 32);
    b.writeBigUInt64LE(BigInt(size), p + 40);
  };
  ph(0, 1, 0, total);
  ph(1, 3, interpOff, interp.length);
  ph(2, 2, dynOff, dyn.length * 16);
  interp.copy(b, interpOff);
  strtab.copy(b, strOff);
  dyn.forEach(([tag, val], i) => {
    b.writeBigInt64LE(BigInt(tag), dynOff + i * 16);
    b.writeBigUInt64LE(BigInt(val), dynOff + i * 16 + 8);
  });
  return b;
}

const reader = (b: Buffer) => (offset: number, length: number) => b.subarray(offset, offset + length);

describe('parseElf', () => {
  it('reads the interpreter, DT_NEEDED in order and DT_RUNPATH through the PT_LOAD mapping', () => {
    const b = fakeElf({ interp: '/lib64/ld-linux-x86-64.so.2', needed: ['libsystemd-shared-257.so', 'libc.so.6'], runpath: '/usr/lib/x86_64-linux-gnu/systemd:$ORIGIN/../lib' });
    expect(parseElf(reader(b))).toEqual({ interp: '/lib64/ld-linux-x86-64.so.2', needed: ['libsystemd-shared-257.so', 'libc.so.6'], runpath: ['/usr/lib/x86_64-linux-gnu/systemd', '$ORIGIN/../lib'] });
  });

  it('is undefined for a script, a 32-bit ELF and a truncated file', () => {
    expect(parseElf(reader(Buffer.from('#!/bin/sh\necho hi\n'.padEnd(80, ' '))))).toBeUndefined();
    const b = fakeElf({ interp: '/x', needed: ['a'] });
    b[4] = 1;
    expect(parseElf(reader(b))).toBeUndefined();
    expect(parseElf(reader(fakeElf({ interp: '/x', needed: ['a'] }).subarray(0, 40)))).toBeUndefined();
  });

  it('agrees with readelf on a real binary of this host', async () => {
    const sh = realpathSync('/bin/sh');
    const info = elfOfFile(sh);
    expect(info?.needed).toContain('libc.so.6');
    expect(info?.interp).toMatch(/ld-linux|ld-musl/);
    const r = await execa('readelf', ['-d', sh], { reject: false });
    if (r.exitCode === 0) expect(info!.needed).toEqual([...r.stdout.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]));
  });
});

describe('resolveInRoot', () => {
  const root = tmp('aios-rootfs-fs-resolve-');
  mkdirSync(join(root, 'usr/lib/x86_64-linux-gnu'), { recursive: true });
  writeFileSync(join(root, 'usr/lib/x86_64-linux-gnu/libz.so.1.3'), 'z');
  symlinkSync('libz.so.1.3', join(root, 'usr/lib/x86_64-linux-gnu/libz.so.1'));
  symlinkSync('usr/lib', join(root, 'lib'));
  mkdirSync(join(root, 'etc'));
  symlinkSync('/usr/lib/x86_64-linux-gnu/libz.so.1', join(root, 'etc/abs'));
  symlinkSync('/etc/passwd', join(root, 'etc/host-file'));
  symlinkSync('loop-b', join(root, 'etc/loop-a'));
  symlinkSync('loop-a', join(root, 'etc/loop-b'));

  it('follows relative and absolute links inside the tree, never out of it', () => {
    expect(resolveInRoot(root, '/lib/x86_64-linux-gnu/libz.so.1')).toBe('usr/lib/x86_64-linux-gnu/libz.so.1.3');
    expect(resolveInRoot(root, 'etc/abs')).toBe('usr/lib/x86_64-linux-gnu/libz.so.1.3');
    // /etc/passwd exists on the host, not in the tree.
    expect(resolveInRoot(root, '/etc/host-file')).toBeUndefined();
    expect(resolveInRoot(root, '/../../../usr/lib/x86_64-linux-gnu/libz.so.1.3')).toBe('usr/lib/x86_64-linux-gnu/libz.so.1.3');
    expect(resolveInRoot(root, '/etc/loop-a')).toBeUndefined();
    expect(resolveInRoot(root, '/nowhere')).toBeUndefined();
  });
});

describe('shebang', () => {
  it('takes the interpreter, through env', () => {
    expect(shebang('#!/usr/bin/perl\n# x')).toBe('/usr/bin/perl');
    expect(shebang('#! /bin/sh -e\n')).toBe('/bin/sh');
    expect(shebang('#!/usr/bin/env python3\n')).toBe('python3');
    expect(shebang('\x7fELF')).toBeUndefined();
  });
});

describe('bootSet of a fake tree', () => {
  const root = tmp('aios-rootfs-fs-boot-');
  const file = (p: string, text = 'x') => {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    writeFileSync(join(root, p), text);
  };
  const link = (p: string, target: string) => {
    mkdirSync(dirname(join(root, p)), { recursive: true });
    symlinkSync(target, join(root, p));
  };
  link('lib', 'usr/lib');
  link('lib64', 'usr/lib64');
  file('usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2');
  link('usr/lib64/ld-linux-x86-64.so.2', '../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2');
  file('etc/ld.so.conf.d/x86_64-linux-gnu.conf', '# multiarch\n/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n');
  file('usr/lib/x86_64-linux-gnu/libc.so.6');
  file('usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-257.so');
  file('usr/lib/x86_64-linux-gnu/systemd/libsystemd-core-257.so');
  file('usr/lib/systemd/systemd');
  file('usr/lib/systemd/systemd-journald');
  file('usr/lib/systemd/system/aios-runtime.service', '[Service]\nType=notify\nExecStart=/usr/libexec/aios/notify-exec /usr/bin/node /usr/lib/aios-runtime/aios-runtime.mjs --config /etc/aios/config.toml\nExecReload=/usr/bin/aios runtime reload\n');
  file('usr/libexec/aios/notify-exec', '#!/usr/bin/perl\nuse Socket;\n');
  file('usr/bin/perl');
  file('usr/bin/node');
  link('usr/bin/aios', 'node');
  file('usr/lib/x86_64-linux-gnu/libnode.so.115');
  file('usr/lib/aios-runtime/aios-runtime.mjs');
  file('usr/lib/aios-runtime/aios-runtime-chunk-B.mjs');
  file('usr/lib/aios-runtime/aios-runtime-chunk-A.mjs');
  file('usr/lib/aios-runtime/aios-cli.mjs');
  file('usr/lib/aios-runtime/proto/runtime.proto');
  file('etc/aios/config.toml', '[runtime]\nllama_server = "/opt/llama/bin/llama-server"\n');
  file('opt/llama/bin/llama-server');
  file('opt/llama/lib/libllama.so');
  const LD = '/lib64/ld-linux-x86-64.so.2';
  const elfs: Record<string, ElfInfo> = {
    'usr/lib/systemd/systemd': { interp: LD, needed: ['libsystemd-core-257.so', 'libsystemd-shared-257.so', 'libc.so.6'], runpath: ['/usr/lib/x86_64-linux-gnu/systemd'] },
    // No RUNPATH of its own: its libsystemd-shared is the one systemd's RUNPATH found (ld.so matches loaded sonames).
    'usr/lib/x86_64-linux-gnu/systemd/libsystemd-core-257.so': { needed: ['libsystemd-shared-257.so', 'libc.so.6'], runpath: [] },
    'usr/lib/systemd/systemd-journald': { interp: LD, needed: ['libsystemd-shared-257.so', 'libc.so.6'], runpath: ['/usr/lib/x86_64-linux-gnu/systemd'] },
    'usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-257.so': { needed: ['libc.so.6'], runpath: [] },
    'usr/lib/x86_64-linux-gnu/libc.so.6': { needed: ['ld-linux-x86-64.so.2'], runpath: [] },
    'usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2': { needed: [], runpath: [] },
    'usr/bin/perl': { interp: LD, needed: ['libperl.so.5.40', 'libc.so.6'], runpath: [] },
    'usr/bin/node': { interp: LD, needed: ['libnode.so.115', 'libc.so.6'], runpath: [] },
    'usr/lib/x86_64-linux-gnu/libnode.so.115': { needed: ['libc.so.6'], runpath: [] },
    'opt/llama/bin/llama-server': { interp: LD, needed: ['libllama.so', 'libc.so.6'], runpath: ['$ORIGIN/../lib'] },
    'opt/llama/lib/libllama.so': { needed: ['libc.so.6'], runpath: [] },
  };
  const elf = (f: string) => elfs[f.slice(root.length + 1)];

  it('systemd, the unit ExecStart names, the bundle, llama-server: each with interpreter and library closure, in boot order, inside the tree', () => {
    const b = bootSet(root, { elf });
    expect(b.files).toEqual([
      'usr/lib/systemd/systemd',
      'usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2',
      'usr/lib/x86_64-linux-gnu/systemd/libsystemd-core-257.so',
      'usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-257.so',
      'usr/lib/x86_64-linux-gnu/libc.so.6',
      'usr/lib/systemd/systemd-journald',
      'usr/libexec/aios/notify-exec',
      'usr/bin/perl',
      'usr/bin/node',
      'usr/lib/x86_64-linux-gnu/libnode.so.115',
      'usr/lib/aios-runtime/aios-runtime.mjs',
      'etc/aios/config.toml',
      'usr/lib/aios-runtime/aios-runtime-chunk-A.mjs',
      'usr/lib/aios-runtime/aios-runtime-chunk-B.mjs',
      'usr/lib/aios-runtime/proto/runtime.proto',
      'opt/llama/bin/llama-server',
      'opt/llama/lib/libllama.so',
    ]);
    // Not in this tree (the host may well have them: never looked up there).
    expect(b.missing).toEqual(['/usr/lib/systemd/systemd-executor', '/usr/lib/systemd/systemd-udevd', 'libperl.so.5.40']);
  });

  it('without the runtime unit: the project\'s ExecStart, and the unit said missing', () => {
    const bare = tmp('aios-rootfs-fs-bare-');
    mkdirSync(join(bare, 'usr/bin'), { recursive: true });
    writeFileSync(join(bare, 'usr/bin/node'), 'x');
    const b = bootSet(bare, { elf: () => undefined });
    expect(b.files).toEqual(['usr/bin/node']);
    expect(b.missing).toContain('/usr/lib/systemd/system/aios-runtime.service');
    expect(b.missing).toContain('/usr/bin/llama-server');
  });
});

describe('statistics', () => {
  it('median of odd and even counts', () => {
    expect(median([3, 1, 2])).toBe(2);
    expect(median([4, 1, 3, 2])).toBe(2.5);
  });

  it('verdicts for times (lower is better) and rates (higher is better)', () => {
    expect(verdictOf([1, 3], true)).toBe('erofs faster');
    expect(verdictOf([-3, -1], true)).toBe('squashfs faster');
    expect(verdictOf([1, 3], false)).toBe('squashfs faster');
    expect(verdictOf([-1, 3], true)).toBe('no difference detectable at 95 %');
    const slow = figureRow('boot set', 'ms', true, [10, 11, 10, 11, 10], [20, 21, 20, 21, 20]);
    expect(slow.verdict).toBe('erofs faster');
    expect(slow.welch.diff).toBeCloseTo(10, 10);
    expect(slow.erofs.median).toBe(10);
    expect(figureRow('rate', 'MiB/s', false, [100, 102, 101], [200, 201, 199]).verdict).toBe('squashfs faster');
    expect(figureRow('walk', 'ms', true, [10, 12, 11, 9], [11, 10, 12, 9]).verdict).toBe('no difference detectable at 95 %');
  });
});

const op = (ms: number, deviceMiB: number, cpuMs: number, bytes?: number): Op => ({ ms, deviceBytes: deviceMiB * 1024 * 1024, cpuMs, ...(bytes !== undefined ? { bytes } : {}) });

function fixed(where: RootFsResult['facts']['where'] = 'vm'): RootFsResult {
  const MiB = 1024 * 1024;
  return {
    schema: 'aios-bench-rootfs-fs/1',
    when: '2026-12-03T14:05:00.000Z',
    note: 'Quiet machine.',
    reps: 3,
    root: { path: '/cache/overlay/root', what: 'the tree given with --root', entries: 30000, files: 20000, bytes: 400 * MiB },
    images: {
      erofs: { argv: ['mkfs.erofs', '--quiet', '-Uu', '--preserve-mtime', 'root.erofs', '<tree>'], tool: 'erofs-utils 1.5-1', mkfsSeconds: 1.7, bytes: 400 * MiB },
      squashfs: { argv: ['mksquashfs', '<tree>', 'root.squashfs', '-noappend', '-comp', 'zstd', '-no-progress', '-quiet'], tool: 'squashfs-tools 1:4.5.1-1', mkfsSeconds: 21, bytes: 220 * MiB },
    },
    bootSet: { files: ['usr/lib/systemd/systemd', 'usr/bin/node'], bytes: 100 * MiB, missing: ['/usr/lib/systemd/systemd-udevd'] },
    models: { files: [], bytes: 0 },
    samples: {
      erofs: {
        mountMs: [5, 6, 5, 6, 5, 6, 5, 6, 5],
        ops: { walk: [op(300, 10, 200), op(310, 10, 205), op(305, 10, 202)], full: [op(2000, 400, 600, 400 * MiB), op(2100, 400, 610, 400 * MiB), op(2050, 400, 605, 400 * MiB)], boot: [op(200, 100, 60), op(210, 100, 61), op(205, 100, 62)], models: [] },
      },
      squashfs: {
        mountMs: [5, 6, 6, 5, 5, 6, 6, 5, 6],
        ops: { walk: [op(400, 5, 300), op(410, 5, 305), op(405, 5, 302)], full: [op(4000, 220, 3000, 400 * MiB), op(4100, 220, 3050, 400 * MiB), op(4050, 220, 3020, 400 * MiB)], boot: [op(300, 55, 250), op(310, 55, 255), op(305, 55, 252)], models: [] },
      },
    },
    facts: {
      cpu: 'AMD EPYC',
      logical: 2,
      physicalCores: 2,
      kernel: '6.18.44',
      loadStart: 0.5,
      loadMeasure: 0.7,
      where,
      virtualization: 'virtual machine (kvm)',
      disk: { dir: '/tmp', source: '/dev/vda', fstype: 'ext4', rotational: false },
      sha256MiBs: 1000,
      spawnMs: 1.5,
    },
    warnings: [],
  };
}

describe('formatSection', () => {
  it('the tables from fixed numbers: sizes, figures with verdicts, device bytes, CPU and the verity estimate', () => {
    const s = formatSection(fixed());
    expect(s.startsWith(`${START}\nMeasured 2026-12-03 14:05 UTC on AMD EPYC (2 CPUs, 2 cores; kernel 6.18.44; load average 0.50 at the start`)).toBe(true);
    expect(s.endsWith(END)).toBe(true);
    expect(s).toContain('**No dm-verity** (no device-mapper on this host). Quiet machine.');
    expect(s).toContain('| mkfs wall time (once) | 1.700 s | 21.00 s |');
    expect(s).toContain('| image size | 400.0 MiB (419,430,400 bytes) | 220.0 MiB (230,686,720 bytes); 55 % of erofs |');
    // Mount: n = 9 per side, no difference; boot set: erofs 205 ± 5 vs squashfs 305 ± 5.
    expect(s).toMatch(/\| mount -o loop,ro \(ms, n = 9\) \| .* \| \*\*no difference detectable at 95 %\*\* \|/);
    expect(s).toContain('| boot set: 2 files, 100.0 MiB (ms, n = 3) | 205.0 ± 5.000 (205.0) | 305.0 ± 5.000 (305.0) | +100.0 (+48.78 %;');
    expect(s).toMatch(/\| full read rate \(MiB\/s, n = 3\) \| .* \| \*\*erofs faster\*\* \|/);
    expect(s).toMatch(/\| metadata walk: lstat of 30,000 entries \(ms, n = 3\) .* \*\*erofs faster\*\* \|/);
    // 400 MiB at 1000 MiB/s = 400 ms of SHA-256 for erofs, 220 MiB = 220 ms for squashfs.
    expect(s).toContain('| full read | 400.0 / 220.0 | 605.0 / 3023 | 400.0 / 220.0 |');
    expect(s).toContain('| boot set | 100.0 / 55.00 | 61.00 / 252.3 | 100.0 / 55.00 |');
    expect(s).not.toContain('| models |');
    expect(s).toContain("the host's own page cache beneath it");
    expect(s).toContain('Not in the tree: `/usr/lib/systemd/systemd-udevd`.');
    expect(formatSection(fixed('emulated'))).toContain('EMULATED CPU');
    expect(formatSection(fixed('bare metal'))).toContain('Bare metal');
  });

  it('a models row and warnings when there are some', () => {
    const r = fixed();
    r.models = { files: ['var/lib/aios/models/aios-tiny.gguf'], bytes: 34 * 1024 * 1024 };
    r.samples.erofs.ops.models = [op(100, 34, 10), op(101, 34, 10)];
    r.samples.squashfs.ops.models = [op(150, 34, 12), op(151, 34, 12)];
    r.warnings = ['squashfs: the full read saw 1 entries'];
    const s = formatSection(r);
    expect(s).toMatch(/\| models: 1 file\(s\), 34\.00 MiB \(ms, n = 2\) .* \*\*erofs faster\*\* \|/);
    expect(s).toContain('| models | 34.00 / 34.00 |');
    expect(s).toContain('Warning: squashfs: the full read saw 1 entries');
  });
});

describe('spliceSection', () => {
  const section = `${START}\nnew figures\n${END}`;
  it('replaces what is between the markers, and only that', () => {
    const doc = `# B\n\n${HEADING}\n\nintro\n\n${START}\nold\n${END}\n\n## Next\n`;
    const out = spliceSection(doc, section);
    expect(out).toBe(`# B\n\n${HEADING}\n\nintro\n\n${section}\n\n## Next\n`);
    expect(spliceSection(out, section)).toBe(out);
  });

  it('without markers: a new section right after "Boot to ready", else at the end', () => {
    const doc = '# B\n\n## Boot to ready\n\ntext\n<!-- boot-to-ready:end -->\n\n## Model sandbox\n';
    expect(spliceSection(doc, section)).toBe(`# B\n\n## Boot to ready\n\ntext\n<!-- boot-to-ready:end -->\n\n${HEADING}\n\n${section}\n\n## Model sandbox\n`);
    expect(spliceSection('# B\n', section)).toBe(`# B\n\n${HEADING}\n\n${section}\n`);
  });

  it('docs/benchmarks.md has the section once, after "Boot to ready", with its markers', () => {
    const doc = readFileSync(join(REPO, 'docs/benchmarks.md'), 'utf8');
    expect(doc.split(HEADING).length).toBe(2);
    expect(doc.indexOf('<!-- boot-to-ready:end -->')).toBeLessThan(doc.indexOf(HEADING));
    expect(doc.indexOf(HEADING)).toBeLessThan(doc.indexOf(START));
    const out = spliceSection(doc, section);
    expect(out.split(HEADING).length).toBe(2);
    expect(out).toContain(section);
  });
});
