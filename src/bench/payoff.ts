/**
 * `aios bench payoff <baseline.raw> <image.raw>…`: the payoff figure, does the tuned image beat the
 * stock one on this machine? Each image is booted in turn with `aios bench --image` (its own
 * llama-bench and bandwidth probe, same model, same vCPUs and memory for all), for several rounds
 * whose order rotates (A B C, B C A, C A B, …) so that neither the position in a round nor the
 * machine's drift favours one image. Every run is kept as <dir>/<label>.r<N>.json (a rerun after an
 * interruption reuses the runs of the same image file and settings that are there); then each image's
 * runs are pooled and compared with the baseline's (and each tuned image with the one before it) by
 * `bench compare`'s Welch's t, written to <dir>/payoff.md.
 *
 * It needs KVM: under TCG the figures are those of an emulated CPU and say nothing about the tuning,
 * so it refuses unless `--accel tcg` asks for a functional run on purpose. On machines flashed with
 * the images, the same comparison is made from the images' own entry point (docs/benchmarks.md).
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { kvmWorks, manifestFor } from '../qemu/index.js';
import { UserError } from '../util/errors.js';
import { compareResults, formatCompare, poolResults, type Comparison } from './compare.js';
import { benchImage, guestSize, int, pickModel, type ImageBenchOptions } from './image.js';
import type { BenchResult } from './index.js';

export interface PayoffOptions extends Pick<ImageBenchOptions, 'model' | 'reps' | 'threads' | 'pp' | 'tg' | 'timeout' | 'cpus' | 'memory' | 'accel' | 'cpu' | 'cacheDir' | 'progress'> {
  /** Rounds of one run per image (default 3). */
  rounds?: number;
  /** Where the runs and payoff.md go (default "payoff"). */
  outDir?: string;
  /** Whether KVM works here (default: the same probe as `bench --image`). */
  kvm?: () => Promise<boolean>;
  /** One image's run (default: benchImage). */
  runImage?: (image: string, o: ImageBenchOptions) => Promise<BenchResult>;
}

export interface PayoffResult {
  dir: string;
  accel: 'kvm' | 'tcg';
  images: { label: string; file: string; runs: string[] }[];
  comparisons: Comparison[];
  markdown: string;
}

/** Short, distinct labels for the images: the file name without .raw/.iso (aios-stock.raw → aios-stock), numbered when two collide. */
export function imageLabels(files: string[]): string[] {
  const base = files.map((f) => basename(f).replace(/\.(raw|iso|img)$/, '').replace(/[^A-Za-z0-9._-]/g, '_'));
  return base.map((b, i) => (base.filter((x) => x === b).length > 1 ? `${b}-${base.slice(0, i + 1).filter((x) => x === b).length}` : b));
}

/** The order of the runs: each round once through every image, the start rotated by one each round (A B C, B C A, C A B, A B C, …). */
export function payoffSchedule(n: number, rounds: number): { round: number; image: number }[] {
  const out: { round: number; image: number }[] = [];
  for (let r = 0; r < rounds; r++) for (let k = 0; k < n; k++) out.push({ round: r + 1, image: (r + k) % n });
  return out;
}

/** The comparisons: every image against the baseline (the first), then each against the one before it (stock → tuned → tuned + custom kernel). */
export function payoffPairs(n: number): [number, number][] {
  const pairs: [number, number][] = [];
  for (let i = 1; i < n; i++) pairs.push([0, i]);
  for (let i = 2; i < n; i++) pairs.push([i - 1, i]);
  return pairs;
}

/** A kept run is reused when it is of the same image file (sha256) and the same settings. */
async function reusable(file: string, sha: string | undefined, s: { reps: number; pp: number; tg: number; cpus: number; memory: number; accel: string }): Promise<BenchResult | undefined> {
  if (!existsSync(file)) return undefined;
  try {
    const r = JSON.parse(await readFile(file, 'utf8')) as BenchResult;
    const im = r.image;
    if (!im || !sha || im.sha256 !== sha || im.cpus !== s.cpus || im.memoryMiB !== s.memory || im.accel !== s.accel) return undefined;
    if (r.settings.reps !== s.reps || r.settings.pp !== s.pp || r.settings.tg !== s.tg) return undefined;
    return r;
  } catch {
    return undefined;
  }
}

export async function payoff(imageArgs: string[], o: PayoffOptions = {}): Promise<PayoffResult> {
  if (imageArgs.length < 2) throw new UserError(`aios bench payoff needs at least two images, got ${imageArgs.length}`, 2, 'the baseline first, then the tuned ones: aios bench payoff out/aios-stock.raw out/aios-default.raw out/aios-custom-kernel.raw');
  const files = imageArgs.map((f) => resolve(f));
  for (const [i, f] of files.entries()) if (!existsSync(f)) throw new UserError(`no such image: ${imageArgs[i]}`, 2, 'build it first, e.g. aios build image -r stock (docs/benchmarks.md, "The payoff")');
  const dup = files.find((f, i) => files.indexOf(f) !== i);
  if (dup) throw new UserError(`${dup} is given twice`, 2, 'give each image once; the rounds repeat them');
  const rounds = int('--rounds', o.rounds, 3, 1, 'e.g. --rounds 3 (each round boots every image once)');
  const reps = int('--reps', o.reps, 10, 2, 'e.g. --reps 10');
  const pp = int('--pp', o.pp, 512, 0, 'e.g. --pp 512');
  const tg = int('--tg', o.tg, 128, 0, 'e.g. --tg 128');
  const say = (s: string) => o.progress?.(s);

  // The same model in every image, or the comparison would measure the models.
  const manifests = await Promise.all(files.map((f) => manifestFor(f)));
  const models = manifests.map((m, i) => {
    if (!m) throw new UserError(`${imageArgs[i]} has no manifest beside it (${basename(files[i]!)}.manifest.json)`, 2, 'payoff compares images built by aios: their manifests say which model each one benchmarks');
    return pickModel(m.models ?? [], o.model);
  });
  const differ = models.find((m) => m.sha256 !== models[0]!.sha256);
  if (differ) {
    throw new UserError(
      `the images would benchmark different models: ${models.map((m, i) => `${basename(files[i]!)}: ${m.name} (${m.file}, sha256 ${m.sha256.slice(0, 12)}…)`).join('; ')}`,
      2,
      'build every image with the same model, e.g. --set \'models=[{name="tinyllama",level="operational",source="synth",shape="tinyllama-1.1b",quant="Q4_K_M"}]\' (docs/benchmarks.md, "The payoff")',
    );
  }

  const accel = o.accel ?? ((await (o.kvm ?? kvmWorks)()) ? 'kvm' : 'tcg');
  if (accel === 'tcg' && o.accel !== 'tcg') {
    throw new UserError(
      'no usable KVM on this host: the images would run on an emulated CPU (QEMU TCG), whose figures say nothing about the tuning',
      2,
      'run it on a host where KVM works (aios doctor says), or flash the images to the machine and compare their own bench runs (docs/benchmarks.md, "The payoff"); --accel tcg runs it anyway as a functional check',
    );
  }
  // One guest size for every image (benchImage's defaults, fixed here so that no image gets another).
  const { vcpus, memory } = guestSize(accel, o);

  const dir = resolve(o.outDir ?? 'payoff');
  await mkdir(dir, { recursive: true });
  const labels = imageLabels(files);
  const runs: string[][] = files.map(() => []);
  const schedule = payoffSchedule(files.length, rounds);
  const runImage = o.runImage ?? benchImage;
  for (const [k, { round, image: i }] of schedule.entries()) {
    const out = join(dir, `${labels[i]}.r${round}.json`);
    const settings = { reps, pp, tg, cpus: vcpus, memory, accel };
    if (await reusable(out, manifests[i]!.image?.sha256, settings)) {
      say(`run ${k + 1}/${schedule.length}: ${labels[i]} round ${round}: kept from before (${out})`);
    } else {
      say(`run ${k + 1}/${schedule.length}: ${labels[i]} round ${round}`);
      const res = await runImage(files[i]!, { model: models[i]!.name, reps, threads: o.threads, pp, tg, timeout: o.timeout, cpus: vcpus, memory, accel, cpu: o.cpu, cacheDir: o.cacheDir, serialLog: join(dir, `${labels[i]}.r${round}.serial.log`), progress: (s) => say(`  ${labels[i]}: ${s}`) });
      await writeFile(`${out}.tmp-${process.pid}`, JSON.stringify(res, null, 2) + '\n');
      await rename(`${out}.tmp-${process.pid}`, out);
    }
    runs[i]!.push(out);
  }

  const pooled: ReturnType<typeof poolResults>[] = [];
  for (const r of runs) {
    const results: BenchResult[] = [];
    for (const f of r) results.push(JSON.parse(await readFile(f, 'utf8')) as BenchResult);
    pooled.push(poolResults(results, r));
  }
  const comparisons = payoffPairs(files.length).map(([a, b]) => {
    const c = compareResults(pooled[a]!.result, pooled[b]!.result, [labels[a]!, labels[b]!]);
    c.warnings.unshift(...pooled[a]!.warnings, ...pooled[b]!.warnings);
    return c;
  });
  const head = [
    `# The payoff: ${labels.join(' vs ')}`,
    '',
    `${rounds} round${rounds > 1 ? 's' : ''} of one \`aios bench --image\` run per image (order rotated each round), ${reps} repetitions each (pp${pp}, tg${tg}), model ${models[0]!.name} (${models[0]!.file}), ${accel.toUpperCase()} guests of ${vcpus} vCPUs and ${memory} MiB.`,
    ...(accel === 'tcg' ? ['', '**EMULATED CPU (QEMU TCG): these figures are meaningless for performance; this run only shows that the comparison works.**'] : []),
    '',
    `Runs: ${labels.map((l, i) => `${l}: ${runs[i]!.map((f) => basename(f)).join(', ')}`).join('; ')}.`,
  ];
  const markdown = [...head, ...comparisons.flatMap((c) => ['', formatCompare(c).trimEnd()])].join('\n') + '\n';
  await writeFile(join(dir, 'payoff.md'), markdown);
  return { dir, accel, images: files.map((f, i) => ({ label: labels[i]!, file: f, runs: runs[i]! })), comparisons, markdown };
}
