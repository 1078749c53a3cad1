/** `aios bench` (llama-bench + memory bandwidth + machine facts) and `aios bench compare a.json b.json`. */
import { Option, type Command, type CommanderError } from 'commander';
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import ora from 'ora';
import { bench, compareResults, formatCompare, formatReport, loadSide, type BenchResult } from '../bench/index.js';
import { benchFromLog, benchImage } from '../bench/image.js';
import { payoff } from '../bench/payoff.js';
import { UserError } from '../util/errors.js';

const out = (s: string) => process.stdout.write(s.endsWith('\n') ? s : s + '\n');

/** An integer option value, or a usage error naming the option (exit 2). */
const int = (name: string) => (v: string) => {
  if (!/^\d+$/.test(v.trim())) throw new UserError(`${name} must be a whole number, got "${v}"`, 2, `e.g. ${name} 10`);
  return Number(v);
};

/** Commander's own usage errors (unknown option, missing argument) exit 2 like every other bad input; help and version exit 0. */
const usageErrorsExit2 = (e: CommanderError): never => {
  process.exit(e.exitCode === 0 ? 0 : 2);
};

interface BenchCliOptions {
  model?: string;
  synth?: string;
  reps: number;
  threads?: number;
  pp: number;
  tg: number;
  binDir?: string;
  triadBin?: string;
  recipe: string;
  cacheDir?: string;
  json?: boolean;
  out?: string;
  image?: string;
  fromLog?: string;
  gguf?: string;
  timeout?: number;
  cpus?: number;
  memory?: number;
  accel?: 'kvm' | 'tcg';
  cpu?: string;
  serialLog?: string;
}

/** Options that only mean something for one way of running; given with another they are refused (exit 2). */
function checkModes(o: BenchCliOptions, cmd: Command): void {
  const given = (k: string) => cmd.getOptionValueSource(k) === 'cli';
  const flag = (k: string) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
  if (o.image && o.fromLog) throw new UserError('--image and --from-log are alternatives: give one', 2, 'boot an image: --image out/x.raw; read a saved run of the image\'s entry point: --from-log run.log');
  const refuse = (mode: string, keys: string[], hint: string) => {
    const bad = keys.filter(given);
    if (bad.length) throw new UserError(`${bad.map(flag).join(', ')} ${bad.length > 1 ? 'do' : 'does'} not go with ${mode}`, 2, hint);
  };
  if (o.image) refuse('--image', ['synth', 'binDir', 'triadBin', 'recipe'], 'the image runs its own llama-bench and bandwidth probe on one of its own models (--model <name or file in the image>)');
  else if (o.fromLog) refuse('--from-log', ['model', 'synth', 'reps', 'threads', 'pp', 'tg', 'binDir', 'triadBin', 'recipe', 'timeout', 'cpus', 'memory', 'accel', 'cpu', 'serialLog'], 'the settings are those of the saved run; only --gguf (a copy of its model, for the roofline), --json and --out apply');
  else refuse('a run on this host', ['gguf', 'timeout', 'cpus', 'memory', 'accel', 'cpu', 'serialLog'], 'these are for --image (and --gguf for --from-log)');
}

export function registerBench(p: Command): void {
  const b = p
    .command('bench')
    .description('benchmark llama.cpp on this machine: llama-bench (pp/tg, N repetitions) + memory bandwidth (triad), with the machine facts that decide the figures')
    .option('--model <gguf>', 'GGUF model file to benchmark (with --image: one of the image\'s models, its name or file under /var/lib/aios/models)')
    .option('--synth <shape>:<quant>', 'a synthesized model (random weights, real shape), made once and cached, e.g. tiny:f32, tinyllama-1.1b:Q4_K_M (the default when --model is not given)')
    .option('--reps <n>', 'timed repetitions per test, after a discarded warm-up (≥ 2; use ≥ 10 for figures to report)', int('--reps'), 10)
    .option('--threads <n>', 'threads for llama-bench and the bandwidth probe (default: physical cores)', int('--threads'))
    .option('--pp <n>', 'prompt tokens of the prompt-processing test (0: skip it)', int('--pp'), 512)
    .option('--tg <n>', 'generated tokens of the generation test (0: skip it)', int('--tg'), 128)
    .option('--bin-dir <dir>', "directory with llama-bench (default: the recipe's llama stage, built or reused from the cache)")
    .option('--triad-bin <file>', 'a prebuilt bandwidth probe (src/bench/triad.c), for a machine without a C compiler')
    .option('-r, --recipe <name|file>', 'recipe whose llama.cpp build to use', 'default')
    .option('--cache-dir <dir>', 'cache (default: $AIOS_CACHE_DIR or ~/.cache/aios)')
    .option('--json', 'print the result as JSON (the format `bench compare` reads)')
    .option('--out <file>', 'also write the result as JSON to this file (for `aios bench compare`)')
    .option('--image <raw>', "boot this image in QEMU and run its own entry point (/usr/libexec/aios/bench) on one of its models (--model: its name or file; default the operational model); figures under TCG are meaningless for performance")
    .option('--from-log <file>', 'read the saved output of /usr/libexec/aios/bench from a machine running an image')
    .option('--gguf <file>', 'with --image or --from-log: a copy of the benchmarked GGUF on this host, for the bytes per token and the roofline (--image finds it in the build cache when it can)')
    .option('--timeout <seconds>', 'with --image: give up after this long (boot and benchmark; default 1800)', int('--timeout'))
    .option('--cpus <n>', "with --image: guest vCPUs (default: 2 under TCG, this host's logical CPUs with KVM)", int('--cpus'))
    .option('--memory <MiB>', "with --image: guest memory (default: 2048 under TCG; with KVM half of this host's, 2048 to 16384)", int('--memory'))
    .addOption(new Option('--accel <accel>', 'with --image: force an accelerator (default: KVM if a probe guest runs, else TCG)').choices(['kvm', 'tcg']))
    .option('--cpu <model>', 'with --image: QEMU CPU model (default: host with KVM, max with TCG)')
    .option('--serial-log <file>', 'with --image: where to keep the serial log (default: <image>.bench.serial.log)')
    .addHelpText(
      'after',
      `
Reports for pp and tg (tokens/s) and for the bandwidth (GB/s, 3 arrays x 8 bytes per element as
STREAM counts): mean, standard deviation, coefficient of variation and the 95 % confidence interval
of the mean (t distribution), the best bandwidth, and the roofline fraction: tg tokens/s x bytes read
per token / best bandwidth. Records CPU, ISA level of the binaries, threads, kernel and cmdline,
CONFIG_HZ, preemption, THP, governor, mitigations, NUMA nodes, zram and virtualization.
Figures from an emulated CPU (QEMU TCG) are meaningless for performance; the report says so.

Examples:
  aios bench --synth tinyllama-1.1b:Q4_K_M --out tuned.json
  aios bench --model ~/models/llama-3.2-1b-q4_k_m.gguf --reps 20 --threads 4
  aios bench --image out/aios-default.raw --out image.json     # KVM: a measurement; TCG: functional only
  aios bench --from-log run.log --gguf model.gguf --out machine.json
                          # run.log: stdout of /usr/libexec/aios/bench on a machine running the image
  aios bench compare stock.json tuned.json`,
    )
    .exitOverride(usageErrorsExit2)
    .action(async (o: BenchCliOptions, cmd: Command) => {
      if (cmd.args.length) throw new UserError(`unexpected argument "${cmd.args[0]}"`, 2, 'aios bench takes options only; to compare two results: aios bench compare a.json b.json');
      checkModes(o, cmd);
      const spinner = !o.json && process.stderr.isTTY ? ora({ text: 'preparing', stream: process.stderr }).start() : undefined;
      const progress = (s: string) => {
        // The loud line (no KVM) stays on screen; the rest replace each other under a spinner.
        if (spinner && s.startsWith('NO KVM')) {
          spinner.warn(s);
          spinner.start('booting');
        } else if (spinner) spinner.text = s;
        else if (!o.json || o.image) process.stderr.write(`${s}\n`);
      };
      let res: BenchResult;
      if (o.image) {
        res = await benchImage(o.image, { model: o.model, gguf: o.gguf, reps: o.reps, threads: o.threads, pp: o.pp, tg: o.tg, timeout: o.timeout, cpus: o.cpus, memory: o.memory, accel: o.accel, cpu: o.cpu, serialLog: o.serialLog, cacheDir: o.cacheDir, progress }).finally(() => spinner?.stop());
      } else if (o.fromLog) {
        res = await benchFromLog(o.fromLog, { gguf: o.gguf }).finally(() => spinner?.stop());
      } else {
        res = await bench({
          model: o.model,
          synth: o.synth,
          reps: o.reps,
          threads: o.threads,
          pp: o.pp,
          tg: o.tg,
          binDir: o.binDir,
          triadBin: o.triadBin,
          recipe: o.recipe,
          cacheDir: o.cacheDir,
          progress,
        }).finally(() => spinner?.stop());
      }
      const json = JSON.stringify(res, null, 2) + '\n';
      if (o.out) {
        const f = resolve(o.out);
        await mkdir(dirname(f), { recursive: true });
        await writeFile(`${f}.tmp-${process.pid}`, json);
        await rename(`${f}.tmp-${process.pid}`, f);
      }
      if (o.json) process.stdout.write(json);
      else {
        out(formatReport(res));
        if (o.out) out(`result: ${o.out} (compare two with: aios bench compare a.json b.json)`);
      }
    });

  b.command('payoff')
    .description('the payoff figure: boot a baseline image and tuned ones in turn (aios bench --image, rounds in rotated order), then compare each against the baseline; needs KVM')
    .argument('<images...>', 'the baseline image first (e.g. out/aios-stock.raw), then the tuned ones (out/aios-default.raw out/aios-custom-kernel.raw)')
    .option('--rounds <n>', 'rounds of one run per image; the order rotates each round (A B C, B C A, …)', int('--rounds'), 3)
    .option('--reps <n>', 'timed repetitions per test in each run', int('--reps'), 10)
    .option('--model <name>', "the model to benchmark, by its name in the recipes (default: each image's operational model; it must be the same file in every image)")
    .option('--threads <n>', "threads for llama-bench and the bandwidth probe (default: the guest's physical cores)", int('--threads'))
    .option('--pp <n>', 'prompt tokens of the prompt-processing test (0: skip it)', int('--pp'), 512)
    .option('--tg <n>', 'generated tokens of the generation test (0: skip it)', int('--tg'), 128)
    .option('--cpus <n>', "guest vCPUs, the same for every image (default: this host's logical CPUs)", int('--cpus'))
    .option('--memory <MiB>', "guest memory, the same for every image (default: half of this host's, 2048 to 16384)", int('--memory'))
    .addOption(new Option('--accel <accel>', 'kvm (the default when it works); tcg runs on an emulated CPU: a functional check only, its figures are meaningless').choices(['kvm', 'tcg']))
    .option('--cpu <model>', 'QEMU CPU model (default: host with KVM)')
    .option('--timeout <seconds>', 'per run: boot and benchmark (default 1800)', int('--timeout'))
    .option('--out-dir <dir>', 'where each run (<image>.r<N>.json, its serial log) and payoff.md go; runs of the same image and settings found there are reused', 'payoff')
    .option('--cache-dir <dir>', 'cache, for the models\' copies on this host (default: $AIOS_CACHE_DIR or ~/.cache/aios)')
    .option('--json', 'print the comparisons as JSON instead of Markdown')
    .exitOverride(usageErrorsExit2)
    .addHelpText(
      'after',
      `
Build the images with the same model first (docs/benchmarks.md, "The payoff"), e.g.:
  M='models=[{name="tinyllama",level="operational",source="synth",shape="tinyllama-1.1b",quant="Q4_K_M"}]'
  aios build image -r stock --set "$M"; aios build image -r default --set "$M"; aios build image -r custom-kernel --set "$M"
  aios bench payoff out/aios-stock.raw out/aios-default.raw out/aios-custom-kernel.raw --rounds 3
Without KVM it refuses: compare the images' own runs on the machine instead (/usr/libexec/aios/bench,
aios bench --from-log, aios bench compare with comma-pooled runs).`,
    )
    .action(async (images: string[], _o: unknown, cmd: Command) => {
      // `bench` has options of the same names, and commander gives them to it wherever they stand: a
      // value given on the command line wins, from either command, over either's default.
      const parent = cmd.parent!;
      const o = Object.fromEntries(
        cmd.options.map((x) => x.attributeName()).map((k) => [k, cmd.getOptionValueSource(k) !== 'cli' && parent.getOptionValueSource(k) === 'cli' ? parent.getOptionValue(k) : cmd.getOptionValue(k)]),
      ) as { rounds: number; reps: number; model?: string; threads?: number; pp: number; tg: number; cpus?: number; memory?: number; accel?: 'kvm' | 'tcg'; cpu?: string; timeout?: number; outDir: string; cacheDir?: string; json?: boolean };
      const res = await payoff(images, { ...o, progress: (s) => process.stderr.write(`${s}\n`) });
      if (o.json) out(JSON.stringify({ dir: res.dir, accel: res.accel, images: res.images, comparisons: res.comparisons }, null, 2));
      else {
        out(res.markdown);
        out(`runs and payoff.md: ${res.dir}`);
      }
    });

  b.command('compare')
    .description("compare two `aios bench` results: difference of means with a 95 % CI (Welch's t), ratio of standard deviations, a verdict per figure")
    .argument('<a.json>', 'the baseline result (aios bench --out); several separated by commas are pooled (runs taken in turns with b\'s: a1,b1,a2,b2…, so that drift falls on both alike)')
    .argument('<b.json>', 'the result judged against it (several: commas, as for a)')
    .option('--markdown', 'print a Markdown table (the default)')
    .option('--json', 'print JSON for scripts')
    .exitOverride(usageErrorsExit2)
    .addHelpText('after', '\nVerdicts are for b against a: better / worse when the 95 % interval of mean(b) − mean(a) excludes 0\n(higher tokens/s and GB/s are better), else "no difference detectable at 95 %".')
    .action(async (fa: string, fb: string, _o: unknown, cmd: Command) => {
      // `bench` has its own --json: without positional options commander gives it to the parent, so read both.
      const o = cmd.optsWithGlobals<{ markdown?: boolean; json?: boolean }>();
      if (o.markdown && o.json) throw new UserError('--markdown and --json are alternatives: give one', 2);
      const [a, b] = [await loadSide(fa), await loadSide(fb)];
      const c = compareResults(a.result, b.result, [fa, fb]);
      c.warnings.unshift(...a.warnings, ...b.warnings);
      if (o.json) out(JSON.stringify(c, null, 2));
      else out(formatCompare(c));
    });
}
