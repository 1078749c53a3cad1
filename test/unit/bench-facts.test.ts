import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { bracketed, configValue, machineFacts, mitigationSummary, parseCpuinfo, preemptionMode, virtualization } from '../../src/bench/facts.js';
import { triadElements } from '../../src/bench/triad.js';
import { bytesPerToken, checkOptions, parseSynth, waitForOtherLlamaBuild } from '../../src/bench/index.js';
import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { readGguf } from '../../src/models/gguf.js';
import { UserError } from '../../src/util/errors.js';
import { gguf } from '../gguf-writer.js';
import { tmp } from '../helpers.js';
import { writeFileSync } from 'node:fs';

const CPUINFO = `processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9454P 48-Core Processor
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx2 hypervisor

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9454P 48-Core Processor
physical id\t: 0
core id\t\t: 0
flags\t\t: fpu sse2 avx2 hypervisor

processor\t: 2
physical id\t: 0
core id\t\t: 1
`;

describe('machine facts: parsers', () => {
  it('cpuinfo: model, logical CPUs, physical cores (hyperthreads share a core id)', () => {
    const c = parseCpuinfo(CPUINFO);
    expect(c).toMatchObject({ model: 'AMD EPYC 9454P 48-Core Processor', vendor: 'AuthenticAMD', logical: 3, physicalCores: 2, sockets: 1 });
    expect(c.flags).toContain('hypervisor');
  });

  it('bracketed sysfs choices and kernel config values', () => {
    expect(bracketed('always [madvise] never')).toBe('madvise');
    expect(bracketed('performance')).toBe('performance');
    expect(bracketed(undefined)).toBe('unknown');
    const cfg = 'CONFIG_HZ_300=y\nCONFIG_HZ=300\n# CONFIG_PREEMPT is not set\nCONFIG_LOCALVERSION="-aios"\n';
    expect(configValue(cfg, 'HZ')).toBe('300');
    expect(configValue(cfg, 'LOCALVERSION')).toBe('-aios');
    expect(configValue(cfg, 'PREEMPT')).toBeUndefined();
  });

  it('preemption: debugfs first, then preempt=, then the config default, then uname -v', () => {
    const config = 'CONFIG_PREEMPT_DYNAMIC=y\nCONFIG_PREEMPT_NONE=y\n';
    expect(preemptionMode({ debugfs: 'none (voluntary) full lazy', cmdline: 'preempt=full', config, unameV: '' })).toEqual({ mode: 'voluntary', source: '/sys/kernel/debug/sched/preempt' });
    expect(preemptionMode({ cmdline: 'quiet preempt=voluntary', config, unameV: '' }).mode).toBe('voluntary');
    const d = preemptionMode({ cmdline: 'quiet', config, unameV: '#1 SMP PREEMPT_DYNAMIC' });
    expect(d.mode).toBe('none');
    expect(d.source).toMatch(/PREEMPT_DYNAMIC/);
    expect(preemptionMode({ cmdline: '', config: 'CONFIG_PREEMPT_VOLUNTARY=y\n', unameV: '' }).mode).toBe('voluntary');
    expect(preemptionMode({ cmdline: '', unameV: '#1 SMP PREEMPT_RT' }).mode).toBe('rt');
    expect(preemptionMode({ cmdline: '', unameV: '#1 SMP PREEMPT Debian' }).mode).toBe('full');
  });

  it('mitigations summary counts and names the vulnerable ones', () => {
    const s = mitigationSummary({ spectre_v1: 'Mitigation: usercopy/swapgs barriers', meltdown: 'Not affected', mds: 'Vulnerable; SMT Host state unknown' }, 'quiet mitigations=off');
    expect(s).toBe('1 mitigated, 1 vulnerable (mds), 1 not affected; mitigations=off on the command line');
    expect(mitigationSummary({}, '')).toMatch(/unknown/);
  });

  it('virtualization: TCG is called emulated and meaningless; KVM and containers are not emulated', () => {
    const tcg = virtualization({ flags: ['hypervisor'], vm: 'qemu', cpuModel: 'QEMU TCG CPU version 2.5+' });
    expect(tcg.emulated).toBe(true);
    expect(tcg.summary).toMatch(/EMULATED.*meaningless for performance/);
    const kvm = virtualization({ flags: ['hypervisor'], vm: 'kvm', container: 'docker', cpuModel: 'AMD EPYC' });
    expect(kvm.emulated).toBe(false);
    expect(kvm.summary).toMatch(/virtual machine \(kvm\), in a docker container/);
    expect(virtualization({ flags: [], vm: 'none', cpuModel: 'Intel Xeon' }).summary).toMatch(/bare metal/);
  });

  it('reads this machine: every fact present, nothing empty', async () => {
    const f = await machineFacts();
    expect(f.cpu.logical).toBeGreaterThan(0);
    expect(f.cpu.model).not.toBe('');
    expect(f.kernel.release).toMatch(/^\d+\.\d+/);
    expect(f.kernel.cmdline.length).toBeGreaterThan(0);
    expect(f.configHz).toMatch(/^(\d+|unknown)$/);
    expect(f.preemption.mode.length).toBeGreaterThan(0);
    expect(['always', 'madvise', 'never', 'unknown']).toContain(f.thp.enabled);
    expect(f.governor.length).toBeGreaterThan(0);
    expect(f.numaNodes).toBeGreaterThanOrEqual(1);
    expect(f.virtualization.summary.length).toBeGreaterThan(0);
    expect(f.loadAverage).toHaveLength(3);
  });
});

describe('bench inputs', () => {
  it('--synth parses <shape>:<quant>, case-insensitive quant, with clear errors', () => {
    expect(parseSynth('tinyllama-1.1b:q4_k_m')).toEqual({ shape: 'tinyllama-1.1b', quant: 'Q4_K_M' });
    expect(() => parseSynth('tiny')).toThrow(/not <shape>:<quant>/);
    expect(() => parseSynth('huge:f32')).toThrow(/unknown shape "huge"/);
    expect(() => parseSynth('tiny:Q3')).toThrow(/unknown quantization "Q3"/);
    try {
      parseSynth('tiny:Q3');
    } catch (e) {
      expect((e as UserError).exitCode).toBe(2);
      expect((e as UserError).hint).toMatch(/Q4_K_M/);
    }
  });

  it('options: defaults, and exit-2 errors for nonsense', () => {
    expect(checkOptions({})).toEqual({ reps: 10, pp: 512, tg: 128, threads: undefined });
    expect(() => checkOptions({ reps: 1 })).toThrow(/--reps must be an integer ≥ 2/);
    expect(() => checkOptions({ threads: 0 })).toThrow(/--threads/);
    expect(() => checkOptions({ pp: 0, tg: 0 })).toThrow(/nothing to measure/);
    expect(() => checkOptions({ model: 'a', synth: 'tiny:f32' })).toThrow(/alternatives/);
  });

  it('triad array size: 4 × LLC, within [64 MiB, min(1 GiB, available / 8)]', () => {
    const MiB = 2 ** 20;
    expect(triadElements(32 * MiB, 64 * 1024 * MiB).elements * 8).toBe(128 * MiB);
    expect(triadElements(32 * MiB, 64 * 1024 * MiB).sizing).toMatch(/meets STREAM's 4 × LLC rule/);
    expect(triadElements(8 * MiB, 64 * 1024 * MiB).elements * 8).toBe(64 * MiB);
    const big = triadElements(508 * MiB, 22 * 1024 * MiB);
    expect(big.elements * 8).toBe(1024 * MiB);
    expect(big.sizing).toMatch(/2\.0 × LLC, below STREAM's 4 × rule/);
    expect(triadElements(undefined, 2 * 1024 * MiB).elements * 8).toBe(256 * MiB);
    expect(triadElements(undefined, 2 * 1024 * MiB).sizing).toMatch(/unknown/);
  });

  it('bytes per token: all tensors minus the token embeddings, unless the output layer is tied to them', async () => {
    const d = tmp();
    const meta = { 'general.architecture': { t: 'str' as const, v: 'llama' } };
    const untied = join(d, 'untied.gguf');
    writeFileSync(untied, gguf(meta, [{ name: 'token_embd.weight', dims: [16, 100] }, { name: 'blk.0.attn_q.weight', dims: [16, 16] }, { name: 'output.weight', dims: [16, 100] }]));
    const u = bytesPerToken(await readGguf(untied));
    expect(u.bytesPerToken).toBe((16 * 16 + 16 * 100) * 4);
    expect(u.weightsBytes).toBe((16 * 100 * 2 + 16 * 16) * 4);
    expect(u.note).toMatch(/minus the token-embedding table/);
    const tied = join(d, 'tied.gguf');
    writeFileSync(tied, gguf(meta, [{ name: 'token_embd.weight', dims: [16, 100] }, { name: 'blk.0.attn_q.weight', dims: [16, 16] }]));
    const t = bytesPerToken(await readGguf(tied));
    expect(t.bytesPerToken).toBe((16 * 100 + 16 * 16) * 4);
    expect(t.note).toMatch(/tied/);
  });

  it('waits for a llama stage another node process is building, not for a dead or foreign one', async () => {
    const cache = tmp();
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 1500)']);
    mkdirSync(join(cache, 'stages/llama', `abc.tmp-${child.pid}`), { recursive: true });
    mkdirSync(join(cache, 'stages/llama', 'dead.tmp-999999999'), { recursive: true });
    mkdirSync(join(cache, 'stages/llama', `foreign.tmp-1`), { recursive: true }); // pid 1 is not node
    const seen: string[] = [];
    const t0 = Date.now();
    await waitForOtherLlamaBuild(cache, (s) => seen.push(s), 100);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1000);
    expect(seen[0]).toMatch(new RegExp(`waiting for the llama.cpp build in progress \\(pid ${child.pid}\\)`));
    const t1 = Date.now();
    await waitForOtherLlamaBuild(cache, undefined, 100);
    expect(Date.now() - t1).toBeLessThan(500);
  });
});
