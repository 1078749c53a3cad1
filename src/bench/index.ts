/**
 * `bench()`: llama.cpp's llama-bench (prompt processing and generation, N timed repetitions after a
 * discarded warm-up) plus a STREAM-style memory-bandwidth probe, with the machine facts that decide
 * the figures, summarized with mean, standard deviation, CV and a 95 % t interval, and the
 * generation rate set against the bandwidth roofline.
 */
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, readdir, readFile, stat } from 'node:fs/promises';
import { freemem, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { readGguf, describe, tensorBytes, type GgufFile } from '../models/gguf.js';
import { QUANTS, SHAPES, synthModel, type Quant } from '../models/synth.js';
import { UserError } from '../util/errors.js';
import { defaultCacheDir } from '../util/paths.js';
import { machineFacts, type MachineFacts } from './facts.js';
import { runLlamaBench, type LlamaBenchRun } from './llamabench.js';
import { summarize, type Summary } from './stats.js';
import { runTriad, triadBinary, triadElements, type TriadResult } from './triad.js';

export const BENCH_SCHEMA = 'aios-bench/1';

export interface BenchOptions {
  /** A GGUF model file. */
  model?: string;
  /** "<shape>:<quant>" of a synthesized model (aios models synth), cached as <cache>/bench/<shape>-<quant>.gguf. */
  synth?: string;
  /** Timed repetitions per test (default 10). */
  reps?: number;
  /** Threads for llama-bench and the bandwidth probe (default: physical cores). */
  threads?: number;
  /** Prompt tokens (default 512; 0 skips the prompt test). */
  pp?: number;
  /** Generated tokens (default 128; 0 skips the generation test). */
  tg?: number;
  /** Directory with llama-bench (and llama-quantize for --synth); default: the llama stage of `recipe`. */
  binDir?: string;
  recipe?: string;
  cacheDir?: string;
  /** A prebuilt triad binary (from src/bench/triad.c), for a machine without a C compiler, such as an image. */
  triadBin?: string;
  progress?: (s: string) => void;
}

export interface Figure extends Summary {
  name: string;
  unit: string;
  samples: number[];
}

export interface BenchResult {
  schema: typeof BENCH_SCHEMA;
  when: string;
  seconds: number;
  facts: MachineFacts & {
    llama: { binDir: string; version?: string; isa?: string; march?: string; buildCommit?: string; backends?: string };
    threads: number;
    /** nvidia-smi's GPUs (name, driver, memory), one each; [] where it found none or is missing; absent where not read (the host's `aios bench`, older entry points). */
    gpus?: string[];
  };
  model: {
    file: string;
    synthesized?: string;
    architecture: string;
    name?: string;
    fileType?: string;
    parameters: number;
    fileBytes: number;
    /** GGUF tensor data size. */
    weightsBytes: number;
    /** Bytes a generated token reads: all weights except the token-embedding table, of which one row is read (unless the output layer is tied to it). */
    bytesPerToken: number;
    bytesPerTokenNote: string;
  };
  /** gpuLayers: layers llama-bench offloaded to a GPU backend (absent or 0: the CPU ran the model). */
  settings: { reps: number; threads: number; pp: number; tg: number; gpuLayers?: number; warmup: string };
  figures: { pp?: Figure; tg?: Figure; bandwidth: Figure & { best: number; arrayBytes: number; sizing: string } };
  roofline?: { bytesPerToken: number; tgMean: number; bandwidthBest: number; fraction: number; fractionCi: [number, number]; note: string };
  llamaBench: { argv: string[]; cpuInfo?: string; modelType?: string; modelSize?: number; ownMeans: Record<string, { avg: number; stddev: number }> };
  loadAverage: { before: number[]; after: number[] };
  warnings: string[];
  /**
   * Set when the figures come from an image's own bench entry point (/usr/libexec/aios/bench) rather
   * than from this host: booted in QEMU by `aios bench --image` (via "qemu"), or its output saved on
   * a machine running the image and read with `aios bench --from-log` (via "log").
   */
  image?: ImageRun;
}

export interface ImageRun {
  via: 'qemu' | 'log';
  /** The entry point that ran, as it named itself. */
  entry: string;
  /** The image file and its manifest's name and sha256 (via qemu). */
  file?: string;
  name?: string;
  sha256?: string;
  /** How QEMU ran it (via qemu): the accelerator decides whether the figures mean anything. */
  accel?: 'kvm' | 'tcg';
  cpu?: string;
  cpus?: number;
  memoryMiB?: number;
  /** The kernel command line aios added for the run (aios.bench=1 …). */
  cmdlineExtra?: string;
  /** Seconds from QEMU start to the guest's power-off, and why it was booted more than once. */
  hostSeconds?: number;
  retried?: string;
  serialLog?: string;
  /**
   * Where the result lines were read (via qemu): the virtio-serial data port (`port`, its file in
   * portLog), or the serial console (`console`: an image from before the port, or a guest that
   * could not open it).
   */
  channel?: 'port' | 'console';
  portLog?: string;
  /** The saved output (via log). */
  log?: string;
  /** aios-runtime's state while the benchmark ran ("inactive" when masked for the run). */
  runtime?: string;
}

/**
 * pp and tg figures from llama-bench's samples, the bandwidth figure from the triad, and the
 * roofline when the bytes read per token are known: the same for a host run and an image's run.
 * Problems found on the way (sample counts, llama-bench's own mean) are added to `warnings`.
 */
export function assembleFigures(o: { lb: Pick<LlamaBenchRun, 'tests'>; triad: TriadResult; reps: number; pp: number; tg: number; bytesPerToken?: number; warnings: string[] }): { figures: BenchResult['figures']; roofline?: BenchResult['roofline'] } {
  const { lb, triad, reps, warnings } = o;
  const figure = (kind: 'pp' | 'tg'): Figure | undefined => {
    const t = lb.tests.find((x) => x.kind === kind);
    if (!t) return undefined;
    if (t.samples.length !== reps) warnings.push(`llama-bench reported ${t.samples.length} samples for ${t.name}, expected ${reps}`);
    const s = summarize(t.samples);
    if (Math.abs(s.mean - t.avgTs) > 1e-3 * Math.max(1, t.avgTs)) warnings.push(`${t.name}: llama-bench's own mean ${t.avgTs} differs from the samples' mean ${s.mean}`);
    return { name: t.name, unit: 't/s', samples: t.samples, ...s };
  };
  const ppFig = o.pp ? figure('pp') : undefined;
  const tgFig = o.tg ? figure('tg') : undefined;
  const bw = { name: 'triad', unit: 'GB/s', samples: triad.samples, ...summarize(triad.samples), best: triad.best, arrayBytes: triad.arrayBytes, sizing: triad.sizing };
  let roofline: BenchResult['roofline'];
  if (tgFig && o.bytesPerToken) {
    const bpt = o.bytesPerToken;
    const f = (tps: number) => (tps * bpt) / (triad.best * 1e9);
    roofline = {
      bytesPerToken: bpt,
      tgMean: tgFig.mean,
      bandwidthBest: triad.best,
      fraction: f(tgFig.mean),
      fractionCi: [f(tgFig.ci[0]), f(tgFig.ci[1])],
      note: 'tg tokens/s × bytes read per token ÷ best triad bandwidth; near 1 = generation is bound by memory bandwidth (it can exceed 1 a little: weights partly stay in cache, and triad does not count write-allocate traffic)',
    };
  }
  return { figures: { pp: ppFig, tg: tgFig, bandwidth: bw }, roofline };
}

/** "tinyllama-1.1b:Q4_K_M" → shape and quant; a clear error otherwise. */
export function parseSynth(s: string): { shape: string; quant: Quant } {
  const [shape, quant, extra] = s.split(':');
  const shapes = Object.keys(SHAPES).join(', ');
  if (!shape || !quant || extra !== undefined) throw new UserError(`--synth "${s}" is not <shape>:<quant>`, 2, `e.g. --synth tinyllama-1.1b:Q4_K_M (shapes: ${shapes}; quants: ${QUANTS.join(', ')})`);
  if (!SHAPES[shape]) throw new UserError(`--synth: unknown shape "${shape}"`, 2, `known shapes: ${shapes}`);
  const q = QUANTS.find((x) => x.toLowerCase() === quant.toLowerCase());
  if (!q) throw new UserError(`--synth: unknown quantization "${quant}"`, 2, `known: ${QUANTS.join(', ')}`);
  return { shape, quant: q };
}

const positiveInt = (name: string, v: unknown, min: number, hint: string) => {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new UserError(`${name} must be an integer ≥ ${min}, got ${String(v)}`, 2, hint);
  return v;
};

/** Bytes read per generated token: every tensor except token_embd (one row of it is read), unless output is tied to it. */
export function bytesPerToken(g: GgufFile): { weightsBytes: number; bytesPerToken: number; note: string } {
  const weightsBytes = Math.max(0, g.fileSize - g.dataOffset);
  const sizes = g.tensors.map((t) => ({ name: t.name, bytes: tensorBytes(t) }));
  if (sizes.some((s) => s.bytes === undefined)) return { weightsBytes, bytesPerToken: weightsBytes, note: 'GGUF tensor data size (a tensor type of unknown size: the whole data section counted)' };
  const total = sizes.reduce((a, s) => a + s.bytes!, 0);
  const embd = sizes.find((s) => s.name === 'token_embd.weight');
  const tied = !g.tensors.some((t) => t.name === 'output.weight');
  if (!embd || tied) return { weightsBytes, bytesPerToken: total, note: `all tensor data${embd ? ' (output layer tied to the token embeddings, so they are read in full)' : ''}` };
  return { weightsBytes, bytesPerToken: total - embd.bytes!, note: `tensor data minus the token-embedding table (${(embd.bytes! / 2 ** 20).toFixed(1)} MiB, of which one row is read per token); KV-cache reads at this context are negligible` };
}

/**
 * Another process building the llama stage right now (a `<key>.tmp-<pid>` of a live pid): wait for it
 * rather than compiling llama.cpp a second time in parallel; its finished output is then reused.
 */
export async function waitForOtherLlamaBuild(cacheDir: string, progress?: (s: string) => void, pollMs = 5000): Promise<void> {
  const dir = join(cacheDir, 'stages', 'llama');
  // A live pid that is a node process (aios, or a test runner calling buildLlamaStage); a reused pid of something else is not waited for.
  const alive = (pid: number) => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('node');
    } catch {
      return false;
    }
  };
  for (;;) {
    const busy = (await readdir(dir).catch(() => [] as string[]))
      .map((e) => Number(/\.tmp-(\d+)$/.exec(e)?.[1]))
      .filter((pid) => pid && pid !== process.pid && alive(pid));
    if (!busy.length) return;
    progress?.(`waiting for the llama.cpp build in progress (pid ${busy.join(', ')}) to finish, to reuse it`);
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

async function llamaTools(o: BenchOptions, cacheDir: string): Promise<{ binDir: string; shareDir?: string; info: Record<string, unknown> }> {
  if (o.binDir) {
    const binDir = resolve(o.binDir);
    if (!existsSync(join(binDir, 'llama-bench'))) throw new UserError(`no llama-bench in ${binDir}`, 2, 'point --bin-dir at a directory with llama.cpp\'s binaries, or leave it out to use the llama stage of the recipe');
    const infoFile = join(dirname(binDir), 'llama.json');
    const info = existsSync(infoFile) ? (JSON.parse(await readFile(infoFile, 'utf8')) as Record<string, unknown>) : {};
    const share = join(dirname(binDir), 'share');
    return { binDir, shareDir: existsSync(share) ? share : undefined, info };
  }
  await waitForOtherLlamaBuild(cacheDir, o.progress);
  o.progress?.('llama.cpp: the llama stage (cached after the first build)');
  const { buildLlamaStage } = await import('../build/index.js');
  const l = await buildLlamaStage({ recipe: o.recipe ?? 'default', renderer: 'silent', cacheDir });
  return { binDir: l.binDir, shareDir: l.shareDir, info: l.info as Record<string, unknown> };
}

async function resolveModel(o: BenchOptions, cacheDir: string, tools: { binDir: string; shareDir?: string }): Promise<{ file: string; synthesized?: string }> {
  if (o.model) {
    const file = resolve(o.model);
    if (!existsSync(file)) throw new UserError(`--model ${o.model}: no such file`, 2, 'give a GGUF file, or --synth <shape>:<quant> for a synthesized one');
    return { file };
  }
  const spec = o.synth ?? 'tinyllama-1.1b:Q4_K_M';
  const { shape, quant } = parseSynth(spec);
  // The same file `npm run bench` (src/bench/runtime.ts) synthesizes: one copy of each shape.
  const dir = join(cacheDir, 'bench');
  const file = join(dir, `${shape}-${quant}.gguf`);
  if (!existsSync(file)) {
    if (!tools.shareDir) throw new UserError(`--synth needs llama.cpp's gguf-py and vocabulary (share/ beside ${tools.binDir})`, 2, 'leave out --bin-dir to use the llama stage, or pass --model');
    await mkdir(dir, { recursive: true });
    o.progress?.(`synthesizing ${shape} ${quant} (once; cached in ${dir})`);
    await synthModel({
      shape,
      quant,
      seed: 0,
      out: file,
      tools: { ggufPy: join(tools.shareDir, 'gguf-py'), vocab: join(tools.shareDir, 'ggml-vocab-llama-spm.gguf'), quantize: join(tools.binDir, 'llama-quantize') },
      progress: o.progress,
    });
  }
  return { file, synthesized: `${shape}:${quant}` };
}

/** Validates options before anything runs (exit 2 on bad input). */
export function checkOptions(o: BenchOptions): { reps: number; pp: number; tg: number; threads?: number } {
  if (o.model && o.synth) throw new UserError('--model and --synth are alternatives: give one', 2, 'a file: --model f.gguf; a synthesized model: --synth tinyllama-1.1b:Q4_K_M');
  if (o.synth) parseSynth(o.synth);
  const reps = positiveInt('--reps', o.reps ?? 10, 2, 'a spread needs at least 2 repetitions; 10 or more for a useful confidence interval');
  const pp = positiveInt('--pp', o.pp ?? 512, 0, 'prompt tokens, e.g. --pp 512 (0 skips the prompt test)');
  const tg = positiveInt('--tg', o.tg ?? 128, 0, 'generated tokens, e.g. --tg 128 (0 skips the generation test)');
  if (pp === 0 && tg === 0) throw new UserError('--pp 0 and --tg 0 leave nothing to measure', 2);
  const threads = o.threads === undefined ? undefined : positiveInt('--threads', o.threads, 1, 'e.g. --threads 2 (default: the physical cores)');
  return { reps, pp, tg, threads };
}

export async function bench(o: BenchOptions = {}): Promise<BenchResult> {
  const t0 = Date.now();
  const { reps, pp, tg, threads: wantThreads } = checkOptions(o);
  const cacheDir = o.cacheDir ?? defaultCacheDir();
  const warnings: string[] = [];

  if (o.model && !existsSync(o.model)) throw new UserError(`--model ${o.model}: no such file`, 2, 'give a GGUF file, or --synth <shape>:<quant> for a synthesized one');
  if (o.model) {
    try {
      await readGguf(o.model);
    } catch (e) {
      throw new UserError(`--model: ${(e as Error).message}`, 2, 'give a GGUF file, or --synth <shape>:<quant> for a synthesized one');
    }
  }
  if (o.triadBin && !existsSync(o.triadBin)) throw new UserError(`--triad-bin ${o.triadBin}: no such file`, 2, 'leave it out to compile src/bench/triad.c with the host compiler');
  const tools = await llamaTools(o, cacheDir);
  const model = await resolveModel(o, cacheDir, tools);
  const gguf: GgufFile = await readGguf(model.file);
  const info = describe(gguf, model.file);
  const bpt = bytesPerToken(gguf);

  o.progress?.('reading machine facts');
  const facts = await machineFacts();
  const threads = wantThreads ?? facts.cpu.physicalCores;
  if (threads > facts.cpu.logical) warnings.push(`--threads ${threads} is more than the ${facts.cpu.logical} logical CPUs: threads compete for cores`);
  if (reps < 10) warnings.push(`${reps} repetitions: the confidence intervals are wide; use --reps 10 or more for figures to report`);
  if (facts.virtualization.emulated) warnings.push(facts.virtualization.summary);
  const loadBefore = facts.loadAverage;
  if (loadBefore[0]! > 0.5 * facts.cpu.logical) warnings.push(`load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')} on ${facts.cpu.logical} CPUs before the run: other work competes with the benchmark`);

  o.progress?.('memory bandwidth (triad)');
  const triadBin = o.triadBin ? resolve(o.triadBin) : await triadBinary(cacheDir);
  const { elements, sizing } = triadElements(facts.llcBytes, freemem());
  const triad = await runTriad({ bin: triadBin, elements, reps, threads, sizing });

  o.progress?.(`llama-bench: ${[pp && `pp${pp}`, tg && `tg${tg}`].filter(Boolean).join(', ')}, ${reps} repetitions, ${threads} threads`);
  const lb = await runLlamaBench({ bin: join(tools.binDir, 'llama-bench'), model: model.file, reps, threads, pp, tg });
  const { figures, roofline } = assembleFigures({ lb, triad, reps, pp, tg, bytesPerToken: bpt.bytesPerToken, warnings });
  const fileBytes = (await stat(model.file)).size;
  const isa = tools.info.isa as { description?: string; march?: string } | undefined;
  return {
    schema: BENCH_SCHEMA,
    when: new Date(t0).toISOString(),
    seconds: (Date.now() - t0) / 1000,
    facts: {
      ...facts,
      llama: { binDir: tools.binDir, version: typeof tools.info.version === 'string' ? tools.info.version : undefined, isa: isa?.description, march: isa?.march, buildCommit: lb.buildCommit, backends: lb.backends },
      threads,
    },
    model: { file: model.file, synthesized: model.synthesized, architecture: info.architecture, name: info.name, fileType: info.fileType, parameters: info.parameters, fileBytes, weightsBytes: bpt.weightsBytes, bytesPerToken: bpt.bytesPerToken, bytesPerTokenNote: bpt.note },
    settings: { reps, threads, pp, tg, warmup: "llama-bench's own warm-up run before each test, and one untimed triad repetition, discarded" },
    figures,
    roofline,
    llamaBench: { argv: lb.argv, cpuInfo: lb.cpuInfo, modelType: lb.modelType, modelSize: lb.modelSize, ownMeans: Object.fromEntries(lb.tests.map((t) => [t.name, { avg: t.avgTs, stddev: t.stddevTs }])) },
    loadAverage: { before: loadBefore, after: loadavg() },
    warnings,
  };
}

export { formatReport } from './report.js';
export { compareResults, formatCompare, loadResult, loadSide, poolResults } from './compare.js';
