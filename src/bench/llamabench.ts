/** Runs llama.cpp's `llama-bench` and reads its JSON output (one object per test, with per-repetition samples). */
import { run } from '../util/exec.js';

export interface LlamaBenchTest {
  /** "pp512", "tg128": llama-bench's own test names. */
  name: string;
  kind: 'pp' | 'tg';
  nPrompt: number;
  nGen: number;
  threads: number;
  /** Tokens per second of each timed repetition (llama-bench's warm-up run is not among them). */
  samples: number[];
  /** llama-bench's own mean and standard deviation, for cross-checking ours. */
  avgTs: number;
  stddevTs: number;
}

export interface LlamaBenchRun {
  tests: LlamaBenchTest[];
  buildCommit?: string;
  buildNumber?: number;
  cpuInfo?: string;
  backends?: string;
  /** llama-bench's n_gpu_layers (its default is all of them; without a GPU backend nothing is offloaded). */
  nGpuLayers?: number;
  modelType?: string;
  /** Bytes of the model's tensors, as llama.cpp counts them. */
  modelSize?: number;
  modelParams?: number;
  argv: string[];
}

/** Parses `llama-bench -o json` (a JSON array) or `-o jsonl` (one object per line). */
export function parseLlamaBench(text: string): Omit<LlamaBenchRun, 'argv'> {
  const trimmed = text.trim();
  let rows: Record<string, unknown>[];
  try {
    rows = trimmed.startsWith('[') ? (JSON.parse(trimmed) as Record<string, unknown>[]) : trimmed.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
  } catch (e) {
    throw new Error(`llama-bench output is not JSON: ${(e as Error).message}; output starts: ${trimmed.slice(0, 200)}`);
  }
  if (!rows.length) throw new Error('llama-bench printed no test results');
  const tests = rows.map((r): LlamaBenchTest => {
    const nPrompt = Number(r.n_prompt ?? 0);
    const nGen = Number(r.n_gen ?? 0);
    const samples = r.samples_ts;
    if (!Array.isArray(samples) || !samples.every((x) => typeof x === 'number')) throw new Error('llama-bench output has no samples_ts array (a llama.cpp older than mid-2024?)');
    const kind = nGen > 0 && nPrompt === 0 ? 'tg' : 'pp';
    return {
      name: kind === 'tg' ? `tg${nGen}` : nGen ? `pp${nPrompt}+tg${nGen}` : `pp${nPrompt}`,
      kind,
      nPrompt,
      nGen,
      threads: Number(r.n_threads),
      samples: samples as number[],
      avgTs: Number(r.avg_ts),
      stddevTs: Number(r.stddev_ts),
    };
  });
  const r0 = rows[0]!;
  const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
  const num = (v: unknown) => (typeof v === 'number' ? v : undefined);
  return {
    tests,
    buildCommit: str(r0.build_commit),
    buildNumber: num(r0.build_number),
    cpuInfo: str(r0.cpu_info),
    backends: str(r0.backends),
    nGpuLayers: num(r0.n_gpu_layers),
    modelType: str(r0.model_type),
    modelSize: num(r0.model_size),
    modelParams: num(r0.model_n_params),
  };
}

/** llama-bench with one prompt-processing and one generation test, `reps` timed repetitions each after its own warm-up run. */
export async function runLlamaBench(o: { bin: string; model: string; reps: number; threads: number; pp: number; tg: number; log?: string }): Promise<LlamaBenchRun> {
  const argv = [o.bin, '-m', o.model, '-p', String(o.pp), '-n', String(o.tg), '-r', String(o.reps), '-t', String(o.threads), '-o', 'json'];
  const res = await run(argv, { log: o.log, reject: false });
  if (res.exitCode !== 0) {
    const tail = res.all.trim().split('\n').slice(-15).join('\n');
    throw new Error(`llama-bench failed (exit ${res.exitCode}): ${argv.join(' ')}\n${tail}`);
  }
  return { ...parseLlamaBench(res.stdout), argv };
}

/** Layers llama-bench offloaded to a GPU backend (CUDA, Vulkan, Metal, SYCL, HIP); 0 for a CPU-only build or -ngl 0. */
export const offloadedLayers = (r: Pick<LlamaBenchRun, 'backends' | 'nGpuLayers'>): number => (/CUDA|Vulkan|Metal|SYCL|HIP|ROCm/i.test(r.backends ?? '') ? Math.max(0, r.nGpuLayers ?? 0) : 0);
