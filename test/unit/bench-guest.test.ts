/**
 * The image's bench entry point and the host's reading of it: parsing the AIOS-BENCH lines (a real
 * serial log of a TCG boot, with journald's prefixes, a shell prompt's escape sequences and a kernel
 * message among them), turning them into the host's BenchResult, the errors, and the entry point's
 * own argument checks and JSON (run with dash, as in the image).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execa } from 'execa';
import { guestDone, guestProblem, guestProgress, guestResult, parseGuestBench, rawFromGuest, findModelOnHost, GUEST_SCHEMA, type GuestBenchLog } from '../../src/bench/guest.js';
import { benchCmdline, pickModel } from '../../src/bench/image.js';
import { compareResults, formatCompare, formatReport } from '../../src/bench/index.js';
import { summarize } from '../../src/bench/stats.js';
import { UserError } from '../../src/util/errors.js';
import { gguf } from '../gguf-writer.js';
import { cli, REPO, tmp } from '../helpers.js';

const LOG = readFileSync(join(REPO, 'test/fixtures/bench-guest-tcg.serial.log'), 'utf8');
const ENTRY = join(REPO, 'rootfs/usr/libexec/aios/bench');
const qemuRun = { via: 'qemu' as const, entry: '/usr/libexec/aios/bench', file: '/tmp/x.raw', name: 'aios-default', accel: 'tcg' as const, cpu: 'max', cpus: 2, memoryMiB: 2048, cmdlineExtra: 'aios.bench=1', hostSeconds: 170 };

describe('the entry point\'s lines, parsed', () => {
  it('reads every result line of a real TCG serial log, despite prefixes, escape sequences and kernel messages', () => {
    const g = parseGuestBench(LOG);
    expect(g.garbled).toEqual([]);
    expect(g.error).toBeUndefined();
    expect(g.begin).toMatchObject({ schema: GUEST_SCHEMA, entry: '/usr/libexec/aios/bench' });
    expect(g.begin!.date).toMatch(/^\d{4}-\d\d-\d\dT/);
    expect(g.settings).toEqual({ reps: 2, threads: 2, pp: 32, tg: 8, physical_cores: 2 });
    expect(g.model).toEqual({ file: '/var/lib/aios/models/aios-tiny.gguf', bytes: 35199584 });
    expect(g.llama?.isa?.description).toMatch(/^x86-64-v3/);
    expect(g.llama?.targets).toContain('llama-bench');
    expect(g.facts?.vm).toBe('qemu');
    expect(g.facts?.cmdline).toMatch(/aios\.bench=1 .*systemd\.mask=aios-runtime\.service/);
    expect(g.facts?.cmdline).toContain('initrd=\\aios\\'); // backslashes survive the JSON
    expect(g.triad?.result.ok).toBe(true);
    expect(g.triad?.result.gbps).toHaveLength(2);
    expect(g.llamaBench).toHaveLength(2);
    expect(g.end?.ok).toBe(true);
    expect(guestProblem(g)).toBeUndefined();
    expect(guestDone(LOG)).toBe(true);
    expect(guestProgress(LOG)).toEqual(expect.arrayContaining(['waiting for the boot to settle', 'reading machine facts', 'benchmark 2/2: generation run 2/2']));
  });

  it('makes the host\'s facts from the guest\'s raw readings', () => {
    const raw = rawFromGuest(parseGuestBench(LOG).facts!);
    expect(raw.release).toMatch(/^6\.12\./);
    expect(raw.configSource).toMatch(/^\/boot\/config-|^\/proc\/config\.gz$/);
    expect(raw.config).toMatch(/^CONFIG_HZ=250$/m);
    expect(Object.keys(raw.vulnerabilities).length).toBeGreaterThan(10);
    expect(raw.vulnerabilities.meltdown).toBeDefined();
    expect(raw.zram).toEqual([{ name: 'zram0', disksize: expect.any(Number), algorithm: expect.stringMatching(/\[zstd\]/) }]);
    expect(raw.swaps).toMatch(/\/dev\/zram0/);
    expect(raw.loadAverage).toHaveLength(3);
    expect(raw.memoryBytes).toBeGreaterThan(1e9);
  });

  it('gives the same result structure as a host run, flagged as emulated under TCG', async () => {
    const g = parseGuestBench(LOG);
    const r = await guestResult(g, { image: qemuRun, when: '2026-12-02T00:00:00.000Z' });
    expect(r.schema).toBe('aios-bench/1');
    expect(r.facts.virtualization.emulated).toBe(true);
    expect(r.facts.virtualization.summary).toMatch(/meaningless for performance/);
    expect(r.facts.configHz).toBe('250');
    expect(r.facts.preemption).toEqual({ mode: 'voluntary', source: '/sys/kernel/debug/sched/preempt' });
    expect(r.facts.thp.enabled).toBe('madvise');
    expect(r.facts.zram.summary).toMatch(/zram0 .* zstd \(swap\)/);
    expect(r.facts.cpu).toMatchObject({ logical: 2, physicalCores: 2 });
    expect(r.facts.llama).toMatchObject({ binDir: '/usr/bin (in the image)', isa: expect.stringMatching(/^x86-64-v3/), buildCommit: 'de3ff81' });
    expect(r.settings).toMatchObject({ reps: 2, threads: 2, pp: 32, tg: 8 });
    const samples = JSON.parse(g.llamaBench[1]!).samples_ts as number[];
    expect(r.figures.tg!.samples).toEqual(samples);
    expect(r.figures.tg!.mean).toBeCloseTo(summarize(samples).mean, 12);
    expect(r.figures.pp!.name).toBe('pp32');
    expect(r.figures.bandwidth.best).toBe(Math.max(...g.triad!.result.gbps));
    expect(r.figures.bandwidth.sizing).toMatch(/meets STREAM's 4 × LLC rule/); // the shell's sizing agrees with triadElements()
    expect(r.warnings.join('\n')).not.toMatch(/aios's rule gives/);
    // No copy of the model on the host: no roofline, and it says why.
    expect(r.roofline).toBeUndefined();
    expect(r.warnings.join('\n')).toMatch(/no roofline/);
    expect(r.image).toMatchObject({ via: 'qemu', accel: 'tcg', runtime: 'inactive' });
    const text = formatReport(r);
    expect(text.split('\n')[0]).toMatch(/^> \*\*EMULATED CPU \(QEMU TCG\): these figures are meaningless for performance/);
    expect(text).toMatch(/booted by aios bench --image in QEMU with TCG: EMULATED/);
  });

  it('a run offloaded to a GPU: its layers and GPUs in the result, the report and compare; no roofline against the CPU\'s bandwidth', async () => {
    const d = tmp();
    const f = join(d, 'm.gguf');
    writeFileSync(f, gguf({ 'general.architecture': { t: 'str', v: 'llama' } }, [{ name: 'token_embd.weight', dims: [16, 100] }, { name: 'blk.0.attn_q.weight', dims: [16, 16] }]));
    const cpu = parseGuestBench(LOG);
    cpu.model = { ...cpu.model!, bytes: readFileSync(f).length };
    cpu.facts = { ...cpu.facts!, gpus: 'NVIDIA H200, 580.159.04, 143771 MiB' };
    const gpu: GuestBenchLog = { ...cpu, settings: { ...cpu.settings!, ngl: 99 }, llamaBench: cpu.llamaBench.map((l) => JSON.stringify({ ...JSON.parse(l), backends: 'CUDA', n_gpu_layers: 99 })) };
    const kvm = { ...qemuRun, accel: 'kvm' as const };
    const a = await guestResult(cpu, { image: kvm, hostModel: f });
    const b = await guestResult(gpu, { image: kvm, hostModel: f });
    // The CPU run (the fixture's llama-bench: CPU backend) keeps its roofline and has no GPU layers.
    expect(a.settings.gpuLayers).toBeUndefined();
    expect(a.roofline).toBeDefined();
    expect(b.settings.gpuLayers).toBe(99);
    expect(b.facts.gpus).toEqual(['NVIDIA H200, 580.159.04, 143771 MiB']);
    expect(b.llamaBench.argv).toEqual(expect.arrayContaining(['-ngl', '99']));
    expect(b.roofline).toBeUndefined();
    expect(b.warnings.join('\n')).toMatch(/99 layers offloaded to the GPU \(CUDA\): the triad measures the CPU's memory bandwidth, so no roofline/);
    expect(formatReport(b)).toMatch(/threads, 99 layers on the GPU;/);
    expect(formatReport(b)).toMatch(/- GPU: NVIDIA H200, 580\.159\.04, 143771 MiB/);
    expect(formatCompare(compareResults(a, b), ['cpu.json', 'gpu.json'])).toMatch(/GPU layers \| 0 \| 99/);
    // An older entry point read no GPUs: "not recorded", not "none".
    const old = await guestResult({ ...cpu, facts: { ...cpu.facts!, gpus: undefined } }, { image: kvm });
    expect(old.facts.gpus).toBeUndefined();
  });

  it('TCG is flagged even when the guest could not tell (aios knows it booted it without KVM)', async () => {
    const g = parseGuestBench(LOG);
    g.facts = { ...g.facts!, vm: '', cpuinfo: g.facts!.cpuinfo.replace(/QEMU TCG CPU[^\n]*/g, 'Some CPU') };
    const r = await guestResult(g, { image: qemuRun });
    expect(r.facts.virtualization.emulated).toBe(true);
    const kvm = await guestResult(g, { image: { ...qemuRun, accel: 'kvm' } });
    expect(kvm.facts.virtualization.emulated).toBe(false);
    expect(formatReport(kvm)).toMatch(/with KVM: a real measurement/);
  });

  it('computes the roofline from a copy of the GGUF of the same size, and refuses another file', async () => {
    const d = tmp();
    const f = join(d, 'm.gguf');
    writeFileSync(f, gguf({ 'general.architecture': { t: 'str', v: 'llama' } }, [{ name: 'token_embd.weight', dims: [16, 100] }, { name: 'blk.0.attn_q.weight', dims: [16, 16] }, { name: 'output.weight', dims: [16, 100] }]));
    const g = parseGuestBench(LOG);
    const size = readFileSync(f).length;
    await expect(guestResult(g, { image: qemuRun, hostModel: f })).rejects.toThrow(/not the same file/);
    g.model = { ...g.model!, bytes: size };
    const r = await guestResult(g, { image: qemuRun, hostModel: f });
    expect(r.model.bytesPerToken).toBe((16 * 16 + 16 * 100) * 4);
    expect(r.roofline!.fraction).toBeCloseTo((r.figures.tg!.mean * r.model.bytesPerToken) / (r.figures.bandwidth.best * 1e9), 12);
    // The model found in a build cache by name, size and sha256.
    const cache = tmp();
    const stageModels = join(cache, 'stages/models/k1/models');
    await import('node:fs/promises').then((fs) => fs.mkdir(stageModels, { recursive: true }));
    writeFileSync(join(stageModels, 'm.gguf'), readFileSync(f));
    const sha = (await import('node:crypto')).createHash('sha256').update(readFileSync(f)).digest('hex');
    expect(await findModelOnHost(cache, { file: 'm.gguf', sha256: sha, bytes: size })).toBe(join(stageModels, 'm.gguf'));
    expect(await findModelOnHost(cache, { file: 'm.gguf', sha256: '0'.repeat(64), bytes: size })).toBeUndefined();
  });

  it('an image run goes into bench compare; the differing facts say where each ran', async () => {
    const g = parseGuestBench(LOG);
    const a = await guestResult(g, { image: qemuRun });
    const b = await guestResult(g, { image: { via: 'log', entry: '/usr/libexec/aios/bench', log: '/tmp/run.log' } });
    const c = compareResults(a, b, ['image.json', 'machine.json']);
    expect(c.figures.map((f) => f.verdict)).toEqual(['no difference detectable at 95 %', 'no difference detectable at 95 %', 'no difference detectable at 95 %']);
    expect(c.differences).toEqual([['ran on', 'image aios-default in QEMU (TCG, emulated)', 'a machine running the image (/usr/libexec/aios/bench)']]);
    expect(formatCompare(c)).toMatch(/EMULATED CPU/);
  });

  it('says what is wrong with an incomplete, failed or garbled run', () => {
    expect(guestProblem(parseGuestBench('nothing here\n'))).toMatch(/did not run/);
    const cut = LOG.slice(0, LOG.indexOf('AIOS-BENCH llama-bench'));
    expect(guestDone(cut)).toBe(false);
    expect(guestProblem(parseGuestBench(cut))).toMatch(/incomplete \(no llama-bench, AIOS-BENCH-END lines\)/);
    const failed = parseGuestBench('[ 80.1] bench[4]: AIOS-BENCH-BEGIN {"schema":"aios-bench-guest/1"}\n[ 80.2] bench[4]: AIOS-BENCH-ERROR {"error":"no /usr/bin/llama-bench in this image"}\n');
    expect(guestDone('AIOS-BENCH-ERROR {"error":"x"}')).toBe(true);
    expect(guestProblem(failed)).toBe("the image's bench entry point failed: no /usr/bin/llama-bench in this image");
    // A kernel message written into the middle of a result line: reported, not misread.
    const garbled = LOG.replace(/(AIOS-BENCH triad \{"llc_bytes":)/, '$1[  99.1] clocksource: Long readout interval\n');
    const gg = parseGuestBench(garbled);
    expect(gg.triad).toBeUndefined();
    expect(guestProblem(gg)).toMatch(/no triad line\).*1 line\(s\) did not parse/);
    // The getty's terminal queries (ESC[!p ESC[?7h ESC[6n) inside the BEGIN line are removed, not misread.
    const queried = LOG.replace('AIOS-BENCH-BEGIN {"schema"', 'AIOS-BENCH-BEGIN {\x1b[!p\x1b]104\x07\x1b[?7h\x1b[6n\x1b[32766;32766H"schema"');
    expect(guestProblem(parseGuestBench(queried))).toBeUndefined();
    // A broken BEGIN line is named as such, not as a missing entry point.
    const brokenBegin = parseGuestBench(LOG.replace('AIOS-BENCH-BEGIN {"schema"', 'AIOS-BENCH-BEGIN {[  60.2] random: crng init done\n"schema"'));
    expect(guestProblem(brokenBegin)).toMatch(/the AIOS-BENCH-BEGIN line did not parse \(something else wrote into it on the console\): .*AIOS-BENCH-BEGIN \{\[  60\.2\] random/);
    const other: GuestBenchLog = { ...parseGuestBench(LOG), begin: { schema: 'aios-bench-guest/9' } };
    expect(guestProblem(other)).toMatch(/speaks aios-bench-guest\/9/);
    return expect(guestResult(failed, { image: qemuRun })).rejects.toBeInstanceOf(UserError);
  });
});

describe('aios bench --image: model and command line', () => {
  const models = [
    { name: 'big', level: 'tactical', file: 'big.gguf', sha256: 'a', bytes: 10 },
    { name: 'op', level: 'operational', file: 'op-q4.gguf', sha256: 'b', bytes: 5 },
  ];
  it('picks the operational model by default, or the one named (by name or file)', () => {
    expect(pickModel(models).file).toBe('op-q4.gguf');
    expect(pickModel(models, 'big').file).toBe('big.gguf');
    expect(pickModel(models, 'op-q4.gguf').name).toBe('op');
    expect(pickModel(models, 'op-q4').name).toBe('op');
    expect(() => pickModel(models, 'nope')).toThrow(/no model "nope"/);
    expect(() => pickModel([])).toThrow(/has no model/);
  });

  it('puts the options on the kernel command line and masks the runtime', () => {
    expect(benchCmdline({ reps: 3, pp: 64, tg: 16, model: 'op-q4.gguf' })).toBe('aios.bench=1 aios.bench.reps=3 aios.bench.pp=64 aios.bench.tg=16 aios.bench.model=op-q4.gguf systemd.mask=aios-runtime.service');
    expect(benchCmdline({ reps: 3, pp: 0, tg: 16, threads: 4 })).toContain('aios.bench.threads=4');
    expect(() => benchCmdline({ reps: 3, pp: 1, tg: 1, model: 'a b,c.gguf' })).toThrow(/cannot go on the kernel command line/);
  });
});

describe('the entry point (rootfs/usr/libexec/aios/bench) under dash', () => {
  const sh = (args: string[], env: Record<string, string> = {}) => execa('dash', [ENTRY, ...args], { reject: false, env: { AIOS_LLAMA_BENCH: '/nonexistent/llama-bench', ...env } });
  const errorOf = (stdout: string) => JSON.parse(/AIOS-BENCH-ERROR (.*)$/m.exec(stdout)![1]!).error as string;

  it('refuses bad options with an AIOS-BENCH-ERROR line (exit 1)', async () => {
    for (const [args, msg] of [
      [['--reps', '1'], /--reps must be a whole number of at least 2/],
      [['--reps', 'x'], /--reps must be/],
      [['--threads', '0'], /--threads must be/],
      [['--pp', '0', '--tg', '0'], /leave nothing to measure/],
      [['--model'], /--model needs a value/],
      [['--bogus'], /unknown argument: --bogus/],
    ] as const) {
      const r = await sh([...args]);
      expect(r.exitCode).toBe(1);
      expect(errorOf(r.stdout)).toMatch(msg);
    }
  });

  it('says when the image has no llama-bench, and escapes what it quotes as JSON', async () => {
    const r = await sh(['--model', 'we"ird\\name']);
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toMatch(/^AIOS-BENCH-BEGIN \{/m);
    expect(errorOf(r.stdout)).toMatch(/no \/nonexistent\/llama-bench in this image/);
    const bin = tmp();
    writeFileSync(join(bin, 'llama-bench'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    writeFileSync(join(bin, 'triad'), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
    const m = await sh(['--model', 'we"ird\\name'], { AIOS_LLAMA_BENCH: join(bin, 'llama-bench'), AIOS_TRIAD: join(bin, 'triad') });
    expect(errorOf(m.stdout)).toBe('no model "we"ird\\name" (looked for /var/lib/aios/models/we"ird\\name and /var/lib/aios/models/we"ird\\name.gguf)');
  });

  it('writes its result lines to the data port as well, where they parse complete and alone', async () => {
    const g = parseGuestBench(LOG);
    const bin = tmp();
    // Stand-ins that print what the image's llama-bench and triad printed in the fixture's boot.
    writeFileSync(join(bin, 'lb.jsonl'), `${g.llamaBench.join('\n')}\n`);
    writeFileSync(join(bin, 'llama-bench'), `#!/bin/sh\n[ "$1" = --help ] && exit 0\ncat ${join(bin, 'lb.jsonl')}\n`, { mode: 0o755 });
    writeFileSync(join(bin, 'triad.json'), JSON.stringify(g.triad!.result));
    writeFileSync(join(bin, 'triad'), `#!/bin/sh\ncat ${join(bin, 'triad.json')}\n`, { mode: 0o755 });
    writeFileSync(join(bin, 'm.gguf'), 'GGUF and not much else');
    const port = join(bin, 'port');
    writeFileSync(port, '');
    const r = await sh(['--model', join(bin, 'm.gguf'), '--reps', '2', '--pp', '32', '--tg', '8'], { AIOS_LLAMA_BENCH: join(bin, 'llama-bench'), AIOS_TRIAD: join(bin, 'triad'), AIOS_BENCH_PORT: port });
    expect(r.exitCode, r.stderr).toBe(0);
    const out = readFileSync(port, 'utf8');
    // Exactly stdout's lines (nothing else writes there), complete for the host.
    expect(out).toBe(r.stdout.endsWith('\n') ? r.stdout : `${r.stdout}\n`);
    const p = parseGuestBench(out);
    expect(p.garbled).toEqual([]);
    expect(guestProblem(p)).toBeUndefined();
    expect(p.llamaBench).toEqual(g.llamaBench);
    // No port given, none opened: stdout alone, as before.
    writeFileSync(port, '');
    const plain = await sh(['--model', join(bin, 'm.gguf'), '--reps', '2'], { AIOS_LLAMA_BENCH: join(bin, 'llama-bench'), AIOS_TRIAD: join(bin, 'triad') });
    expect(plain.exitCode).toBe(0);
    expect(readFileSync(port, 'utf8')).toBe('');
  });

  it('passes --ngl on to llama-bench, records it and the GPUs nvidia-smi lists, and refuses a bad value', async () => {
    const g = parseGuestBench(LOG);
    const bin = tmp();
    writeFileSync(join(bin, 'lb.jsonl'), `${g.llamaBench.join('\n')}\n`);
    // The stand-in llama-bench writes down its arguments; the stand-in nvidia-smi answers as on a GPU machine.
    writeFileSync(join(bin, 'llama-bench'), `#!/bin/sh\n[ "$1" = --help ] && exit 0\necho "$@" > ${join(bin, 'args')}\ncat ${join(bin, 'lb.jsonl')}\n`, { mode: 0o755 });
    writeFileSync(join(bin, 'triad.json'), JSON.stringify(g.triad!.result));
    writeFileSync(join(bin, 'triad'), `#!/bin/sh\ncat ${join(bin, 'triad.json')}\n`, { mode: 0o755 });
    writeFileSync(join(bin, 'nvidia-smi'), '#!/bin/sh\necho "NVIDIA H200, 580.159.04, 143771 MiB"\n', { mode: 0o755 });
    writeFileSync(join(bin, 'm.gguf'), 'GGUF and not much else');
    const env = { AIOS_LLAMA_BENCH: join(bin, 'llama-bench'), AIOS_TRIAD: join(bin, 'triad'), PATH: `${bin}:${process.env.PATH}` };
    const r = await sh(['--model', join(bin, 'm.gguf'), '--reps', '2', '--ngl', '0'], env);
    expect(r.exitCode, r.stderr).toBe(0);
    expect(readFileSync(join(bin, 'args'), 'utf8')).toMatch(/ -ngl 0 -o jsonl/);
    const p = parseGuestBench(r.stdout);
    expect(p.settings?.ngl).toBe(0);
    expect(p.facts?.gpus).toBe('NVIDIA H200, 580.159.04, 143771 MiB');
    // Without --ngl: llama-bench's own default, recorded as null.
    const d = await sh(['--model', join(bin, 'm.gguf'), '--reps', '2'], env);
    expect(readFileSync(join(bin, 'args'), 'utf8')).not.toMatch(/-ngl/);
    expect(parseGuestBench(d.stdout).settings?.ngl).toBeNull();
    const bad = await sh(['--ngl', 'all']);
    expect(bad.exitCode).toBe(1);
    expect(errorOf(bad.stdout)).toMatch(/--ngl must be a whole number/);
  });

  it('is clean under shellcheck', async () => {
    const r = await execa('shellcheck', [ENTRY], { reject: false });
    expect(r.stdout + r.stderr).toBe('');
    expect(r.exitCode).toBe(0);
  });
});

describe('aios bench --image / --from-log on the command line', () => {
  it('reads a saved run with --from-log into the report and the JSON compare reads', async () => {
    const d = tmp();
    const res = await cli(['bench', '--from-log', join(REPO, 'test/fixtures/bench-guest-tcg.serial.log'), '--out', join(d, 'img.json')]);
    expect(res.stderr).not.toMatch(/aios: /);
    expect(res.exitCode).toBe(0);
    expect(res.stdout).toMatch(/^> \*\*EMULATED CPU/);
    expect(res.stdout).toMatch(/\| tg8 \(t\/s\) \| 2 \|/);
    const c = await cli(['bench', 'compare', join(d, 'img.json'), join(d, 'img.json')]);
    expect(c.exitCode).toBe(0);
    expect(c.stdout).toMatch(/no difference detectable at 95 %/);
  });

  it('refuses what does not fit the mode, and a missing image (exit 2)', async () => {
    for (const [args, msg] of [
      [['--image', '/nonexistent.raw'], /no such image: \/nonexistent\.raw/],
      [['--image', 'x.raw', '--synth', 'tiny:f32'], /--synth does not go with --image/],
      [['--image', 'x.raw', '--from-log', 'y.log'], /alternatives/],
      [['--from-log', 'y.log', '--reps', '3'], /--reps does not go with --from-log/],
      [['--from-log', '/nonexistent.log'], /no such file/],
      [['--timeout', '60'], /--timeout does not go with a run on this host/],
    ] as const) {
      const r = await cli(['bench', ...args]);
      expect(r.stderr).toMatch(msg);
      expect(r.exitCode).toBe(2);
    }
  });
});
