/**
 * `aios bench` on this host with the built llama.cpp and the tiny synthesized model. The numbers are
 * not asserted beyond being positive and consistent (this machine is shared and may be emulated).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { bench, compareResults, formatReport, type BenchResult, type Figure } from '../../src/bench/index.js';
import { buildLlamaStage } from '../../src/build/index.js';
import { cli, tmp } from '../helpers.js';

const consistent = (f: Figure | undefined, reps: number) => {
  expect(f).toBeDefined();
  expect(f!.samples).toHaveLength(reps);
  for (const x of f!.samples) expect(x).toBeGreaterThan(0);
  expect(f!.mean).toBeGreaterThan(0);
  expect(f!.sd).toBeGreaterThanOrEqual(0);
  expect(f!.cv).toBeCloseTo(f!.sd / f!.mean, 12);
  expect(f!.ci[0]).toBeLessThanOrEqual(f!.mean);
  expect(f!.ci[1]).toBeGreaterThanOrEqual(f!.mean);
  expect(f!.min).toBeLessThanOrEqual(f!.mean);
  expect(f!.max).toBeGreaterThanOrEqual(f!.mean);
};

describe('aios bench on the build host (tiny model)', () => {
  let r: BenchResult;
  beforeAll(async () => {
    await buildLlamaStage({ recipe: 'default', renderer: 'silent' });
    r = await bench({ synth: 'tiny:f32', reps: 3, pp: 128, tg: 32 });
  }, 900_000);

  it('measures pp, tg and bandwidth with consistent statistics', () => {
    consistent(r.figures.pp, 3);
    consistent(r.figures.tg, 3);
    consistent(r.figures.bandwidth, 3);
    expect(r.figures.pp!.name).toBe('pp128');
    expect(r.figures.tg!.name).toBe('tg32');
    expect(r.figures.bandwidth.best).toBe(Math.max(...r.figures.bandwidth.samples));
    // llama-bench's own mean agrees with ours (no warning about it)
    expect(r.warnings.join('\n')).not.toMatch(/differs from the samples' mean/);
    expect(r.llamaBench.argv).toEqual(expect.arrayContaining(['-r', '3', '-o', 'json']));
  });

  it('computes the roofline fraction from tg, bytes per token and the best bandwidth', () => {
    const rf = r.roofline!;
    expect(rf.bytesPerToken).toBe(r.model.bytesPerToken);
    expect(rf.bytesPerToken).toBeGreaterThan(0);
    expect(rf.bytesPerToken).toBeLessThanOrEqual(r.model.weightsBytes);
    expect(rf.fraction).toBeCloseTo((r.figures.tg!.mean * rf.bytesPerToken) / (r.figures.bandwidth.best * 1e9), 12);
    expect(rf.fractionCi[0]).toBeLessThanOrEqual(rf.fraction);
    expect(rf.fractionCi[1]).toBeGreaterThanOrEqual(rf.fraction);
  });

  it('records the machine facts and the build', () => {
    const f = r.facts;
    expect(f.cpu.model.length).toBeGreaterThan(0);
    expect(f.threads).toBe(r.settings.threads);
    expect(f.llama.isa).toMatch(/x86-64|native/);
    expect(f.kernel.release).toMatch(/^\d+\.\d+/);
    expect(f.kernel.cmdline.length).toBeGreaterThan(0);
    expect(f.configHz).toMatch(/^(\d+|unknown)$/);
    for (const k of ['preemption', 'thp', 'governor', 'mitigations', 'numaNodes', 'zram', 'virtualization'] as const) expect(f[k]).toBeDefined();
    expect(r.model).toMatchObject({ synthesized: 'tiny:f32', architecture: 'llama', fileType: 'F32' });
    expect(r.warnings.join('\n')).toMatch(/3 repetitions: the confidence intervals are wide/);
    const text = formatReport(r);
    expect(text).toMatch(/\| pp128 \(t\/s\) \| 3 \|/);
    expect(text).toMatch(/Roofline: tg/);
    expect(text).toMatch(/CONFIG_HZ/);
    if (f.virtualization.emulated) expect(text).toMatch(/meaningless for performance/);
  });

  it('a run compared with itself shows no difference', () => {
    const c = compareResults(r, r);
    expect(c.figures.map((x) => x.verdict)).toEqual(['no difference detectable at 95 %', 'no difference detectable at 95 %', 'no difference detectable at 95 %']);
    expect(c.differences).toEqual([]);
  });

  it('the CLI writes a result file that `bench compare` reads', async () => {
    const d = tmp();
    const res = await cli(['bench', '--synth', 'tiny:f32', '--reps', '2', '--pp', '0', '--tg', '16', '--threads', '1', '--out', join(d, 'one.json')]);
    expect(res.stderr).not.toMatch(/aios: /);
    expect(res.exitCode).toBe(0);
    expect(res.stdout).toMatch(/\| tg16 \(t\/s\) \| 2 \|/);
    const one = JSON.parse(readFileSync(join(d, 'one.json'), 'utf8')) as BenchResult;
    expect(one.figures.pp).toBeUndefined();
    expect(one.settings.threads).toBe(1);
    const c = await cli(['bench', 'compare', join(d, 'one.json'), join(d, 'one.json')]);
    expect(c.exitCode).toBe(0);
    expect(c.stdout).toMatch(/\| tg16 \(t\/s\) .*no difference detectable at 95 %/);
  }, 300_000);
});

/**
 * `aios bench --image`: one boot of the default image (the same cached build image.test.ts makes),
 * its own entry point run with few repetitions and small tests on the tiny model. Under TCG (no KVM
 * here) the figures only show that it works, and the result must say so.
 */
describe('aios bench --image (the default image, booted once)', () => {
  const d = tmp();
  let img: BenchResult;
  let report = '';
  let image = '';
  beforeAll(async () => {
    const { build } = await import('../../src/build/index.js');
    image = (await build({ recipe: 'default', outDir: join(d, 'out'), renderer: 'silent' })).image;
    const res = await cli(['bench', '--image', image, '--reps', '2', '--pp', '32', '--tg', '8', '--timeout', '900', '--out', join(d, 'image.json')]);
    if (res.exitCode !== 0) throw new Error(`aios bench --image failed (exit ${res.exitCode}):\n${res.stderr}\n${res.stdout}`);
    report = res.stdout;
    img = JSON.parse(readFileSync(join(d, 'image.json'), 'utf8')) as BenchResult;
    // Progress lines from the guest while it ran.
    expect(res.stderr).toMatch(/booting aios-default\.raw with (KVM|TCG)/);
    expect(res.stderr).toMatch(/guest \(\d+ s\): llama-bench: pp32, tg8, 2 repetitions/);
  }, 30 * 60_000);
  afterAll(() => rmSync(d, { recursive: true, force: true })); // the image copy (1.3 GB)

  it('measures pp, tg and bandwidth inside the image with consistent statistics', () => {
    consistent(img.figures.pp, 2);
    consistent(img.figures.tg, 2);
    consistent(img.figures.bandwidth, 2);
    expect([img.figures.pp!.name, img.figures.tg!.name]).toEqual(['pp32', 'tg8']);
    expect(img.figures.bandwidth.best).toBe(Math.max(...img.figures.bandwidth.samples));
    expect(img.warnings.join('\n')).not.toMatch(/differs from the samples' mean|aios's rule gives/);
    // The model's GGUF is in the build cache: bytes per token and the roofline.
    expect(img.model).toMatchObject({ file: '/var/lib/aios/models/aios-tiny.gguf', architecture: 'llama', fileType: 'F32' });
    expect(img.roofline!.fraction).toBeCloseTo((img.figures.tg!.mean * img.model.bytesPerToken) / (img.figures.bandwidth.best * 1e9), 12);
  });

  it("records the image's facts, and how it ran", () => {
    const f = img.facts;
    expect(f.kernel.release).toMatch(/^6\.12\./);
    expect(f.kernel.cmdline).toMatch(/aios\.bench=1/);
    expect(f.kernel.cmdline).toMatch(/preempt=voluntary/); // the default recipe's at-boot wish
    expect(f.configHz).toMatch(/^\d+$/);
    expect(f.preemption.mode).toBe('voluntary');
    expect(f.thp.enabled).toBe('madvise');
    expect(f.zram.summary).toMatch(/zram0 .*\(swap\)/);
    expect(f.mitigations.summary).toMatch(/mitigated/);
    expect(f.numaNodes).toBe(1);
    expect(f.governor).toBeTruthy();
    expect(f.llama.isa).toMatch(/^x86-64-v3/);
    expect(f.virtualization.hypervisorFlag).toBe(true);
    expect(img.image).toMatchObject({ via: 'qemu', name: 'aios-default', entry: '/usr/libexec/aios/bench', runtime: 'inactive', cpus: 2 });
    // The result lines came through the virtio-serial data port, which nothing else writes to.
    expect(img.image).toMatchObject({ channel: 'port', portLog: expect.stringMatching(/\.bench\.port\.log$/) });
    expect(readFileSync(img.image!.portLog!, 'utf8')).toMatch(/^AIOS-BENCH-BEGIN \{[^\n]*\n(AIOS-BENCH [^\n]*\n)+AIOS-BENCH-END \{/);
    if (img.image!.accel === 'tcg') {
      expect(f.virtualization.emulated).toBe(true);
      expect(report.split('\n')[0]).toMatch(/EMULATED CPU \(QEMU TCG\): these figures are meaningless for performance/);
      expect(report).toMatch(/with TCG: EMULATED/);
    } else {
      expect(f.virtualization).toMatchObject({ emulated: false, vm: 'kvm' });
      expect(report).toMatch(/with KVM: a real measurement/);
    }
  });

  it('its JSON goes into bench compare against a host run', async () => {
    const host = await cli(['bench', '--synth', 'tiny:f32', '--reps', '2', '--pp', '32', '--tg', '8', '--out', join(d, 'host.json')]);
    expect(host.exitCode).toBe(0);
    const c = await cli(['bench', 'compare', join(d, 'host.json'), join(d, 'image.json')]);
    expect(c.exitCode).toBe(0);
    expect(c.stdout).toMatch(/\| pp32 \(t\/s\) \|/);
    expect(c.stdout).toMatch(/\| ran on \| the build host \(aios bench\) \| image aios-default in QEMU/);
    if (img.image!.accel === 'tcg') expect(c.stdout).toMatch(/image\.json ran on an EMULATED CPU/);
  }, 300_000);
});
