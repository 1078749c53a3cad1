/**
 * `aios bench payoff`: the order of the runs (rotated rounds), the pairs compared, the labels, the
 * refusals (fewer than two images, a missing or repeated one, images with different models, no KVM),
 * and the whole flow with the boot replaced by a recorded one: each run is the real serial log of a
 * TCG boot of the image's entry point (test/fixtures/bench-guest-tcg.serial.log) turned into a
 * result by the same code as `bench --image`, so that the files, the reuse of kept runs, the pooling
 * and payoff.md are checked. A real boot of the entry point is in test/e2e/bench.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { guestResult, parseGuestBench } from '../../src/bench/guest.js';
import type { ImageBenchOptions } from '../../src/bench/image.js';
import { imageLabels, payoff, payoffPairs, payoffSchedule } from '../../src/bench/payoff.js';
import { loadRecipe } from '../../src/config/load.js';
import { kernelCmdline } from '../../src/build/context.js';
import { UserError } from '../../src/util/errors.js';
import { REPO, tmp } from '../helpers.js';

const LOG = readFileSync(join(REPO, 'test/fixtures/bench-guest-tcg.serial.log'), 'utf8');

/** A dummy image file with a manifest naming its model (what payoff reads before booting). */
function image(dir: string, name: string, modelSha = 'a'.repeat(64)): string {
  const f = join(dir, `${name}.raw`);
  writeFileSync(f, 'not a disk');
  writeFileSync(join(dir, `${name}.manifest.json`), JSON.stringify({ name, image: { file: f, bytes: 10, sha256: name.padEnd(64, '0') }, models: [{ name: 'aios-tiny', level: 'operational', file: 'aios-tiny.gguf', bytes: 35199584, sha256: modelSha }] }));
  return f;
}

/** One run: the recorded guest log as `bench --image` would return it for this image and these settings. */
function recorded(calls: string[]) {
  return async (file: string, o: ImageBenchOptions) => {
    calls.push(file);
    const sha = JSON.parse(readFileSync(file.replace(/\.raw$/, '.manifest.json'), 'utf8')).image.sha256 as string;
    const r = await guestResult(parseGuestBench(LOG), { image: { via: 'qemu', entry: '/usr/libexec/aios/bench', file, sha256: sha, accel: o.accel!, cpu: 'max', cpus: o.cpus!, memoryMiB: o.memory!, cmdlineExtra: 'aios.bench=1', hostSeconds: 1 } });
    // The recorded run had --reps 2 --pp 32 --tg 8; payoff asks for the same below.
    return r;
  };
}

const expectUserError = async (p: Promise<unknown>, re: RegExp) => {
  const e = await p.then(() => undefined, (x: unknown) => x);
  expect(e).toBeInstanceOf(UserError);
  expect((e as UserError).exitCode).toBe(2);
  expect((e as Error).message).toMatch(re);
};

describe('aios bench payoff', () => {
  it('rotates the order each round: every image once per round, and in every position once over n rounds', () => {
    expect(payoffSchedule(3, 3).map((s) => `${s.round}:${s.image}`)).toEqual(['1:0', '1:1', '1:2', '2:1', '2:2', '2:0', '3:2', '3:0', '3:1']);
    const s = payoffSchedule(3, 6);
    for (let r = 1; r <= 6; r++) expect(s.filter((x) => x.round === r).map((x) => x.image).sort()).toEqual([0, 1, 2]);
    for (let img = 0; img < 3; img++) expect(s.filter((x, k) => x.image === img && k % 3 === 0)).toHaveLength(2);
    expect(payoffSchedule(2, 1)).toEqual([{ round: 1, image: 0 }, { round: 1, image: 1 }]);
  });

  it('compares every image with the baseline, then each with the one before it', () => {
    expect(payoffPairs(2)).toEqual([[0, 1]]);
    expect(payoffPairs(3)).toEqual([[0, 1], [0, 2], [1, 2]]);
    expect(payoffPairs(4)).toEqual([[0, 1], [0, 2], [0, 3], [1, 2], [2, 3]]);
  });

  it('labels images by file name, numbering names that collide', () => {
    expect(imageLabels(['/o/aios-stock.raw', 'out/aios-default.raw', 'x/aios default.iso'])).toEqual(['aios-stock', 'aios-default', 'aios_default']);
    expect(imageLabels(['a/x.raw', 'b/x.raw', 'c/y.raw'])).toEqual(['x-1', 'x-2', 'y']);
  });

  it('refuses fewer than two images, a missing or repeated one, and images that hold different models (exit 2)', async () => {
    const d = tmp();
    const a = image(d, 'aios-stock');
    const b = image(d, 'aios-default');
    const c = image(d, 'aios-other', 'b'.repeat(64));
    const kvm = async () => true;
    await expectUserError(payoff([a], { kvm }), /at least two images, got 1/);
    await expectUserError(payoff([a, join(d, 'nope.raw')], { kvm }), /no such image: .*nope\.raw/);
    await expectUserError(payoff([a, b, a], { kvm }), /given twice/);
    await expectUserError(payoff([a, c], { kvm }), /different models: aios-stock\.raw: aios-tiny .*aaaaaaaaaaaa.*aios-other\.raw: aios-tiny .*bbbbbbbbbbbb/);
    await expectUserError(payoff([a, b], { kvm, rounds: 0 }), /--rounds must be an integer ≥ 1/);
    await expectUserError(payoff([a, b], { kvm, reps: 1 }), /--reps must be an integer ≥ 2/);
  });

  it('refuses to run without KVM: emulated figures say nothing about the tuning (unless --accel tcg is asked for)', async () => {
    const d = tmp();
    const calls: string[] = [];
    await expectUserError(payoff([image(d, 'aios-stock'), image(d, 'aios-default')], { kvm: async () => false, runImage: recorded(calls) }), /no usable KVM on this host/);
    expect(calls).toEqual([]);
  });

  it('runs the rounds, keeps each run, pools each image\'s runs and compares them; a rerun reuses the kept runs', async () => {
    const d = tmp();
    const imgs = [image(d, 'aios-stock'), image(d, 'aios-default'), image(d, 'aios-custom-kernel')];
    const out = join(d, 'payoff');
    const calls: string[] = [];
    const o = { accel: 'tcg' as const, rounds: 2, reps: 2, pp: 32, tg: 8, outDir: out, runImage: recorded(calls) };
    const res = await payoff(imgs, o);
    expect(calls).toEqual([imgs[0], imgs[1], imgs[2], imgs[1], imgs[2], imgs[0]]);
    expect(res.images.map((i) => i.label)).toEqual(['aios-stock', 'aios-default', 'aios-custom-kernel']);
    expect(res.images[0]!.runs.map((f) => f.slice(out.length + 1))).toEqual(['aios-stock.r1.json', 'aios-stock.r2.json']);
    for (const i of res.images) for (const f of i.runs) expect(JSON.parse(readFileSync(f, 'utf8')).image.sha256).toBe(i.label.padEnd(64, '0'));
    expect(res.comparisons.map((c) => `${c.a.file} → ${c.b.file}`)).toEqual(['aios-stock → aios-default', 'aios-stock → aios-custom-kernel', 'aios-default → aios-custom-kernel']);
    // Pooled: two runs of 2 repetitions on each side.
    const tg = res.comparisons[0]!.figures.find((f) => f.figure === 'tg')!;
    expect([tg.a.n, tg.b.n]).toEqual([4, 4]);
    // The same recorded run on both sides: no difference can be detected.
    expect(res.comparisons.flatMap((c) => c.figures.map((f) => f.verdict))).toEqual(Array(9).fill('no difference detectable at 95 %'));
    const md = readFileSync(join(out, 'payoff.md'), 'utf8');
    expect(md).toBe(res.markdown);
    expect(md).toMatch(/^# The payoff: aios-stock vs aios-default vs aios-custom-kernel\n/);
    expect(md).toMatch(/EMULATED CPU \(QEMU TCG\): these figures are meaningless for performance/);
    expect(md.match(/^## aios bench compare: b = `aios-default` .* against a = `aios-stock`/m)).not.toBeNull();
    // Interrupted and run again: nothing is booted again for runs of the same image and settings.
    const again = await payoff(imgs, o);
    expect(calls).toHaveLength(6);
    expect(again.markdown).toBe(res.markdown);
    // A rebuilt image (another sha256) or other settings are run again.
    const m = join(d, 'aios-default.manifest.json');
    writeFileSync(m, readFileSync(m, 'utf8').replace('aios-default000', 'aios-default111'));
    await payoff(imgs, o);
    expect(calls.slice(6)).toEqual([imgs[1], imgs[1]]);
    expect(existsSync(join(out, 'aios-default.r2.json'))).toBe(true);
  });
});

describe('images/stock.toml: the baseline of the payoff', () => {
  it('is the default image without its tuning, and llama.cpp for the x86-64 baseline', async () => {
    const [stock, tuned] = [await loadRecipe('stock'), await loadRecipe('default')];
    expect(stock.name).toBe('aios-stock');
    expect(stock.models).toEqual(tuned.models);
    expect(stock.base).toEqual(tuned.base);
    expect(stock.kernel.build).toBe(false);
    expect(stock.kernel.fragments).toEqual([]);
    expect(stock.zram.enabled).toBe(false);
    expect(stock.tuning.sysctl).toEqual({});
    expect(stock.llama.cpu).toBe('x86-64');
    const id = { rootPartUuid: '00000000-0000-0000-0000-000000000000' } as Parameters<typeof kernelCmdline>[1];
    const tail = (r: typeof stock) => kernelCmdline(r, id).split(' ').slice(3).filter((a) => !a.startsWith('console=') && a !== 'systemd.firstboot=no');
    // Nothing of the tuning on the stock command line; the default image has it.
    expect(tail(stock)).toEqual([]);
    expect(tail(tuned)).toEqual(expect.arrayContaining(['transparent_hugepage=madvise', 'preempt=voluntary', 'nowatchdog']));
  });
});
