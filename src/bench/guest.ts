/**
 * The image's own bench entry point (rootfs/usr/libexec/aios/bench) prints its results as
 * `AIOS-BENCH <kind> <json>` lines: on the serial console when `aios bench --image` boots it, on
 * stdout when a person runs it on a machine. This module reads those lines back (`parseGuestBench`,
 * pure) and turns them into the same BenchResult a host run gives (`guestResult`): the same facts
 * function, the same statistics, the same report and `bench compare`.
 */
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, readGguf } from '../models/gguf.js';
import { UserError } from '../util/errors.js';
import { factsFromRaw, type RawFacts } from './facts.js';
import { assembleFigures, bytesPerToken, BENCH_SCHEMA, type BenchResult, type ImageRun } from './index.js';
import { offloadedLayers, parseLlamaBench } from './llamabench.js';
import { triadElements, type TriadResult } from './triad.js';

/** The schema the entry point announces in its AIOS-BENCH-BEGIN line. */
export const GUEST_SCHEMA = 'aios-bench-guest/1';
export const ENTRY_POINT = '/usr/libexec/aios/bench';
/**
 * The virtio-serial port (/dev/virtio-ports/<name> in the guest) to which the entry point also
 * writes its lines when `aios bench --image` boots it: a channel that nothing else writes to.
 */
export const BENCH_PORT = 'org.aios.bench';

/** The raw readings of the `facts` line (all strings as read, numbers where the script checked them). */
export interface GuestFacts {
  release: string;
  version: string;
  cmdline: string;
  cpuinfo: string;
  config: string;
  config_source: string;
  preempt_debugfs: string;
  thp_enabled: string;
  thp_defrag: string;
  governors: string;
  vulnerabilities: string;
  numa_nodes: number | null;
  zram: string;
  swaps: string;
  vm: string;
  container: string;
  llc_bytes: number | null;
  mem_total_kb: number | null;
  mem_available_kb: number | null;
  loadavg: string;
  runtime: string;
  /** nvidia-smi --query-gpu=name,driver_version,memory.total, one line per GPU; absent from older entry points. */
  gpus?: string;
}

export interface GuestBenchLog {
  begin?: { schema: string; entry?: string; date?: string };
  settings?: { reps: number; threads: number; pp: number; tg: number; ngl?: number | null; physical_cores?: number | null };
  model?: { file: string; bytes: number | null };
  /** /usr/lib/aios/llama.json of the image (version, ISA level), when it has one. */
  llama?: { version?: string; isa?: { cpu?: string; march?: string; description?: string; flags?: string[] }; source?: { describe?: string; commit?: string }; targets?: string[] };
  facts?: GuestFacts;
  triad?: { llc_bytes: number | null; available_bytes: number; result: { elements: number; bytes_per_rep: number; threads: number; ok: boolean; seconds: number[]; gbps: number[] } };
  /** llama-bench's JSON lines, one per test. */
  llamaBench: string[];
  after?: { loadavg: string };
  end?: { ok: boolean; seconds: number };
  error?: string;
  progress: string[];
  /** AIOS-BENCH lines whose JSON did not parse (e.g. a kernel message written into the middle of one). */
  garbled: string[];
}

/**
 * Terminal control sequences removed (CSI with any parameters and intermediates, e.g. the getty's
 * `ESC[!p` and `ESC[?7h`; OSC strings; two-byte escapes), and carriage returns.
 */
const clean = (log: string) =>
  log
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '')
    .replace(/\x1b\][^\x07\x1b]*(\x07|\x1b\\)/g, '')
    .replace(/\x1b[()][0-9A-Za-z]|\x1b[=>78cDEHM]/g, '')
    .replace(/\r/g, '');

/** Progress lines of the entry point so far (`AIOS-BENCH-PROGRESS …`), for the host to pass on while it runs. */
export function guestProgress(log: string): string[] {
  return [...clean(log).matchAll(/AIOS-BENCH-PROGRESS (.*)$/gm)].map((m) => m[1]!.trim());
}

/** True once the entry point has finished: its END or ERROR line is in the log. */
export function guestDone(log: string): boolean {
  return /AIOS-BENCH-(END|ERROR) \{/.test(log);
}

/**
 * Reads the entry point's lines from a serial log or a saved stdout (the last run in it, from its
 * AIOS-BENCH-BEGIN on). Whatever precedes a marker on its line (journald's "[ 70.1] bench[475]: ")
 * is ignored.
 */
export function parseGuestBench(log: string): GuestBenchLog {
  const text = clean(log);
  const out: GuestBenchLog = { llamaBench: [], progress: [], garbled: [] };
  const begin = text.lastIndexOf('AIOS-BENCH-BEGIN ');
  // An error before BEGIN (bad options) still counts: the entry point refused to start.
  const block = begin < 0 ? text : text.slice(begin);
  const json = (raw: string, line: string): unknown => {
    try {
      return JSON.parse(raw);
    } catch {
      out.garbled.push(line.trim().slice(0, 300));
      return undefined;
    }
  };
  for (const line of block.split('\n')) {
    const m = /AIOS-BENCH(-BEGIN|-END|-ERROR|-PROGRESS)? (.*)$/.exec(line);
    if (!m) continue;
    const [, marker, rest] = m as unknown as [string, string | undefined, string];
    if (marker === '-PROGRESS') out.progress.push(rest.trim());
    else if (marker === '-BEGIN') out.begin = json(rest, line) as GuestBenchLog['begin'];
    else if (marker === '-END') out.end = json(rest, line) as GuestBenchLog['end'];
    else if (marker === '-ERROR') out.error = (json(rest, line) as { error?: string } | undefined)?.error ?? rest.trim();
    else {
      const k = /^([a-z-]+) (.*)$/.exec(rest);
      if (!k) continue;
      const [, kind, raw] = k as unknown as [string, string, string];
      if (kind === 'llama-bench') {
        if (json(raw, line) !== undefined) out.llamaBench.push(raw.trim());
        continue;
      }
      const v = json(raw, line);
      if (v === undefined) continue;
      if (kind === 'settings') out.settings = v as GuestBenchLog['settings'];
      else if (kind === 'model') out.model = v as GuestBenchLog['model'];
      else if (kind === 'llama') out.llama = v as GuestBenchLog['llama'];
      else if (kind === 'facts') out.facts = v as GuestFacts;
      else if (kind === 'triad') out.triad = v as GuestBenchLog['triad'];
      else if (kind === 'after') out.after = v as GuestBenchLog['after'];
    }
  }
  return out;
}

const loadavg = (s: string | undefined): number[] => (s ?? '').trim().split(/\s+/).slice(0, 3).map(Number).filter((x) => Number.isFinite(x));
const lines = (s: string) => s.split('\n').map((l) => l.trim()).filter(Boolean);

/** The facts line's readings as the RawFacts that src/bench/facts.ts turns into the report's facts. */
export function rawFromGuest(f: GuestFacts): RawFacts {
  const vulnerabilities: Record<string, string> = {};
  for (const l of lines(f.vulnerabilities)) {
    const i = l.indexOf(':');
    if (i > 0) vulnerabilities[l.slice(0, i)] = l.slice(i + 1).trim();
  }
  const zram = lines(f.zram).map((l) => {
    const [name, disksize, ...alg] = l.split(/\s+/);
    return { name: name!, disksize: Number(disksize) || 0, algorithm: alg.join(' ') || undefined };
  });
  const opt = (s: string) => (s.trim() ? s.trim() : undefined);
  return {
    cpuinfo: f.cpuinfo,
    release: f.release,
    version: f.version,
    cmdline: f.cmdline || 'unknown',
    config: opt(f.config),
    configSource: f.config_source,
    preemptDebugfs: opt(f.preempt_debugfs),
    thpEnabled: opt(f.thp_enabled),
    thpDefrag: opt(f.thp_defrag),
    governors: lines(f.governors),
    vulnerabilities,
    numaNodes: f.numa_nodes ?? 0,
    zram,
    swaps: f.swaps,
    vm: opt(f.vm),
    container: opt(f.container),
    llcBytes: f.llc_bytes || undefined,
    memoryBytes: (f.mem_total_kb ?? 0) * 1024,
    loadAverage: loadavg(f.loadavg),
  };
}

/** What the log lacks for a result, or undefined when it is complete. */
export function guestProblem(g: GuestBenchLog): string | undefined {
  if (g.error) return `the image's bench entry point failed: ${g.error}`;
  if (!g.begin) {
    const broken = g.garbled.find((l) => l.includes('AIOS-BENCH-BEGIN'));
    if (broken) return `the AIOS-BENCH-BEGIN line did not parse (something else wrote into it on the console): ${broken}`;
    return `no AIOS-BENCH-BEGIN line: ${ENTRY_POINT} did not run (an image built before it existed?)`;
  }
  if (g.begin.schema !== GUEST_SCHEMA) return `the entry point speaks ${g.begin.schema}, this aios reads ${GUEST_SCHEMA}`;
  const missing = (['settings', 'model', 'facts', 'triad'] as const).filter((k) => !g[k]);
  if (!g.llamaBench.length) missing.push('llama-bench' as never);
  if (!g.end) missing.push('AIOS-BENCH-END' as never);
  if (missing.length) return `the entry point's output is incomplete (no ${missing.join(', ')} line${missing.length > 1 ? 's' : ''})${g.garbled.length ? `; ${g.garbled.length} line(s) did not parse: ${g.garbled[0]}` : ''}`;
  if (!g.triad!.result.ok) return 'the bandwidth probe in the image failed its result check';
  return undefined;
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/**
 * A copy of an image's model on this host, for the bytes read per token (the roofline): the
 * download cache (<cache>/downloads/<sha256>.gguf), then the models stage outputs (same name, size
 * and sha256).
 */
export async function findModelOnHost(cacheDir: string, m: { file: string; sha256?: string; bytes?: number }): Promise<string | undefined> {
  const candidates: string[] = [];
  if (m.sha256) candidates.push(join(cacheDir, 'downloads', `${m.sha256}.gguf`));
  const stages = join(cacheDir, 'stages', 'models');
  for (const k of await readdir(stages).catch(() => [] as string[])) if (!k.includes('.tmp-')) candidates.push(join(stages, k, 'models', m.file));
  for (const c of candidates) {
    if (!existsSync(c)) continue;
    const { size } = await stat(c);
    if (m.bytes !== undefined && size !== m.bytes) continue;
    if (!m.sha256 || (await sha256File(c)) === m.sha256) return c;
  }
  return undefined;
}

export interface GuestResultOptions {
  /** How the image ran (QEMU or a saved log). */
  image: ImageRun;
  /** A GGUF on this host identical to the benchmarked model: gives the bytes read per token. */
  hostModel?: string;
  /** The manifest's entry for the model (name, file type, parameters), when known. */
  modelInfo?: { name?: string; architecture?: string; fileType?: string; parameters?: number };
  /** The run's start (the host's clock); default: the guest's BEGIN date, else now. */
  when?: string;
}

/** The BenchResult for an image's run: the same structure, statistics and warnings as `bench()` on the host. */
export async function guestResult(g: GuestBenchLog, o: GuestResultOptions): Promise<BenchResult> {
  const problem = guestProblem(g);
  if (problem) throw new UserError(problem, 1);
  const s = g.settings!;
  const warnings: string[] = [];
  const facts = factsFromRaw(rawFromGuest(g.facts!));
  if (o.image.accel === 'tcg' && !facts.virtualization.emulated) {
    // aios booted it without KVM: emulated, whatever the guest could detect.
    facts.virtualization = { ...facts.virtualization, emulated: true, summary: `EMULATED CPU (QEMU TCG: aios bench --image booted it without KVM${facts.virtualization.vm ? `; systemd-detect-virt: ${facts.virtualization.vm}` : ''}): these figures are meaningless for performance; they only show that the benchmark runs` };
  }
  const lbRun = parseLlamaBench(g.llamaBench.join('\n'));
  const t = g.triad!;
  const sizing = triadElements(t.llc_bytes ?? undefined, t.available_bytes);
  if (sizing.elements !== t.result.elements) warnings.push(`the image's triad used ${t.result.elements} elements per array, aios's rule gives ${sizing.elements}: the entry point and this aios differ`);
  const triad: TriadResult = {
    elements: t.result.elements,
    arrayBytes: t.result.elements * 8,
    bytesPerRep: t.result.bytes_per_rep,
    threads: t.result.threads,
    samples: t.result.gbps,
    best: Math.max(...t.result.gbps),
    sizing: sizing.elements === t.result.elements ? sizing.sizing : `3 arrays of ${Math.round((t.result.elements * 8) / 2 ** 20)} MiB each`,
  };

  // The model: its GGUF on this host when there is one (bytes per token, roofline), else what
  // llama-bench and the manifest say.
  let model: BenchResult['model'];
  let bpt: number | undefined;
  const guestBytes = g.model!.bytes ?? undefined;
  if (o.hostModel) {
    const gguf = await readGguf(o.hostModel);
    if (guestBytes !== undefined && gguf.fileSize !== guestBytes) throw new UserError(`${o.hostModel} has ${gguf.fileSize} bytes, the benchmarked model ${g.model!.file} ${guestBytes}: not the same file`, 2, 'give the GGUF the image has (or leave --gguf out: then no roofline)');
    const info = describe(gguf, o.hostModel);
    const b = bytesPerToken(gguf);
    bpt = b.bytesPerToken;
    model = { file: g.model!.file, architecture: info.architecture, name: info.name, fileType: info.fileType, parameters: info.parameters, fileBytes: gguf.fileSize, weightsBytes: b.weightsBytes, bytesPerToken: b.bytesPerToken, bytesPerTokenNote: `${b.note} (read from ${o.hostModel}, the same file)` };
  } else {
    const size = lbRun.modelSize ?? 0;
    model = {
      file: g.model!.file,
      architecture: o.modelInfo?.architecture ?? lbRun.modelType?.split(' ')[0] ?? 'unknown',
      name: o.modelInfo?.name,
      fileType: o.modelInfo?.fileType,
      parameters: o.modelInfo?.parameters ?? lbRun.modelParams ?? 0,
      fileBytes: guestBytes ?? 0,
      weightsBytes: size,
      bytesPerToken: size,
      bytesPerTokenNote: "all tensor data (llama-bench's model size): no copy of the GGUF on this host to subtract the token-embedding table, so no roofline (give one with --gguf)",
    };
    if (s.tg) warnings.push('no roofline: the model\'s GGUF is not on this host (give a copy with --gguf)');
  }

  if (s.reps < 10) warnings.push(`${s.reps} repetitions: the confidence intervals are wide; use --reps 10 or more for figures to report`);
  if (s.threads > facts.cpu.logical) warnings.push(`--threads ${s.threads} is more than the ${facts.cpu.logical} logical CPUs: threads compete for cores`);
  if (facts.virtualization.emulated) warnings.push(facts.virtualization.summary);
  const before = facts.loadAverage;
  if (before.length && before[0]! > 0.5 * facts.cpu.logical) warnings.push(`load average ${before.map((x) => x.toFixed(2)).join(' ')} on ${facts.cpu.logical} CPUs before the run: other work competes with the benchmark`);
  const runtime = g.facts!.runtime.trim();
  if (runtime === 'active') warnings.push('aios-runtime was running during the benchmark (its llama-server holds memory and answers health checks): stop it first (systemctl stop aios-runtime) for figures to report');

  // Offloaded to a GPU: the triad measured the CPU's memory, not the GPU's, so a roofline would compare the wrong things.
  const gpuLayers = offloadedLayers(lbRun);
  if (gpuLayers > 0 && bpt) warnings.push(`${gpuLayers} layers offloaded to the GPU (${lbRun.backends}): the triad measures the CPU's memory bandwidth, so no roofline`);
  const { figures, roofline } = assembleFigures({ lb: lbRun, triad, reps: s.reps, pp: s.pp, tg: s.tg, bytesPerToken: gpuLayers > 0 ? undefined : bpt, warnings });
  const gpus = g.facts!.gpus === undefined ? undefined : lines(g.facts!.gpus);
  const ll = g.llama;
  return {
    schema: BENCH_SCHEMA,
    when: o.when ?? g.begin!.date ?? new Date().toISOString(),
    seconds: g.end!.seconds,
    facts: {
      ...facts,
      llama: { binDir: '/usr/bin (in the image)', version: ll?.version, isa: ll?.isa?.description, march: ll?.isa?.march, buildCommit: lbRun.buildCommit, backends: lbRun.backends },
      threads: s.threads,
      ...(gpus ? { gpus } : {}),
    },
    model,
    settings: { reps: s.reps, threads: s.threads, pp: s.pp, tg: s.tg, ...(gpuLayers > 0 ? { gpuLayers } : {}), warmup: "llama-bench's own warm-up run before each test, and one untimed triad repetition, discarded" },
    figures,
    roofline,
    llamaBench: {
      argv: ['/usr/bin/llama-bench', '-m', g.model!.file, '-p', String(s.pp), '-n', String(s.tg), '-r', String(s.reps), '-t', String(s.threads), ...(typeof s.ngl === 'number' ? ['-ngl', String(s.ngl)] : []), '-o', 'jsonl'],
      cpuInfo: lbRun.cpuInfo,
      modelType: lbRun.modelType,
      modelSize: lbRun.modelSize,
      ownMeans: Object.fromEntries(lbRun.tests.map((x) => [x.name, { avg: x.avgTs, stddev: x.stddevTs }])),
    },
    loadAverage: { before, after: loadavg(g.after?.loadavg) },
    warnings,
    image: { ...o.image, entry: g.begin!.entry ?? o.image.entry, runtime: runtime || undefined },
  };
}
