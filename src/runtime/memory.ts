/**
 * Memory for the budget: a model's footprint estimated from its GGUF metadata before it is loaded,
 * what a llama-server child reports and really uses after, and the budget itself (config, else the
 * machine's memory or the service's cgroup limit, minus a reserve). Imports nothing from the build side.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { totalmem } from 'node:os';
import { readGguf, tensorBytes } from '../models/gguf.js';

const MiB = 1024 * 1024;

/** What a model needs, in bytes, split the way llama-server reports it. */
export interface Footprint {
  /** Host memory the child will use (resident set after load and warm-up). */
  ramBytes: number;
  /** GPU memory (0 without offload). */
  vramBytes: number;
  parts: {
    /** Tensor data (mapped, or read into memory with mmap off). */
    weights: number;
    /** Second copy of the tensors ggml's CPU backend repacks into an interleaved layout (AVX2: Q4_0, Q4_K, IQ4_NL, Q2_K). */
    repack: number;
    /** KV cache: context × slots × f16 K and V for every layer. */
    kv: number;
    /** Compute buffer (graph scratch for a 512-token micro-batch). */
    compute: number;
    /** Logits output buffer: vocabulary × slots × f32. */
    output: number;
    /** llama-server's own code, libraries, heap and tokenizer. */
    overhead: number;
    /** The token embeddings (part of `weights`): llama.cpp keeps them on the host even when every layer is offloaded. */
    tokenEmbd?: number;
  };
}

export interface EstimateProfile {
  ctxSize: number;
  parallel: number;
  gpuLayers: number;
}

/**
 * Fixed cost of a llama-server process, measured with this project's build (x86-64-v3, static
 * ggml): about 11 MiB of binary and libraries resident plus about 6 MiB of heap and vocabulary.
 */
export const PROCESS_OVERHEAD = 17 * MiB;

/**
 * A llama-server linked with CUDA (a GPU image, docs/gpu.md) maps libcudart, libcublas and
 * libcublasLt (half a gigabyte of libraries) and its own CUDA kernels: in QEMU without a GPU the
 * tiny model's child was OOM-killed in its cgroup at 66 MiB (the CPU build's estimate); with 192 MiB
 * more it ran, its cgroup at 266 of 277 MiB (the libraries' page cache included). Added to its estimate.
 */
export const CUDA_PROCESS_OVERHEAD = 320 * MiB;

/** The per-process overhead of the llama-server at `binary`: more when it links the CUDA runtime (ldd). */
export function processOverhead(binary: string, ldd: (bin: string) => string | undefined = lddOf): number {
  return /\blibcudart\.so/.test(ldd(binary) ?? '') ? PROCESS_OVERHEAD + CUDA_PROCESS_OVERHEAD : PROCESS_OVERHEAD;
}

function lddOf(bin: string): string | undefined {
  try {
    return execFileSync('ldd', [bin], { encoding: 'utf8', timeout: 10_000 });
  } catch {
    return undefined;
  }
}

let avx2: boolean | undefined;
/** Whether ggml's CPU backend repacks quantized weights here (it does on AVX2 machines). */
export function cpuRepacks(): boolean {
  if (avx2 === undefined) {
    try {
      avx2 = /\bavx2\b/.test(readFileSync('/proc/cpuinfo', 'utf8'));
    } catch {
      avx2 = false;
    }
  }
  return avx2;
}

/** ggml types the CPU backend repacks on AVX2 (Q4_0 = 2, Q4_K = 12, Q2_K = 10, IQ4_NL = 20), when rows come in eights. */
const REPACKED_TYPES = new Set([2, 10, 12, 20]);

const num = (v: unknown): number | undefined => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : undefined);

/**
 * The footprint of `path` served with `p` (llama-server -c ctx×parallel --parallel parallel, n_ubatch
 * 512, f16 KV cache, --cache-ram 0). The compute-buffer term is fitted to what this llama.cpp build
 * reports (12.1 floats per embedding dimension plus 130 per micro-batch token, plus 512 bytes
 * per context token for the attention mask); everything else is exact arithmetic on the metadata.
 */
export async function estimateFootprint(path: string, p: EstimateProfile, o: { repack?: boolean; overhead?: number } = {}): Promise<Footprint> {
  const g = await readGguf(path);
  const m = g.metadata;
  const arch = String(m['general.architecture'] ?? 'llama');
  const k = (s: string) => num(m[`${arch}.${s}`]);
  const layers = k('block_count') ?? 0;
  const embd = k('embedding_length') ?? 0;
  const heads = k('attention.head_count') ?? 1;
  const kvHeads = k('attention.head_count_kv') ?? heads;
  const keyLen = k('attention.key_length') ?? (embd && heads ? embd / heads : 0);
  const valLen = k('attention.value_length') ?? keyLen;
  const tokens = m['tokenizer.ggml.tokens'];
  const vocab = k('vocab_size') ?? (Array.isArray(tokens) ? tokens.length : 32000);
  const ctxTotal = p.ctxSize * p.parallel;

  const weights = Math.max(0, g.fileSize - g.dataOffset);
  const repack = (o.repack ?? cpuRepacks())
    ? g.tensors.filter((t) => REPACKED_TYPES.has(t.type) && !t.name.startsWith('token_embd') && t.dims.length >= 2 && (t.dims[1] ?? 0) % 8 === 0).reduce((s, t) => s + (tensorBytes(t) ?? 0), 0)
    : 0;
  const kv = layers * kvHeads * (keyLen + valLen) * 2 * ctxTotal;
  const ubatch = 512;
  const compute = Math.round(ubatch * 4 * (12.1 * embd + 130)) + 512 * ctxTotal;
  const output = vocab * 4 * p.parallel;
  const overhead = o.overhead ?? PROCESS_OVERHEAD;

  // Offload: llama.cpp puts the last n layers (and the output layer when all are offloaded) on the GPU.
  const ngl = p.gpuLayers < 0 ? layers + 1 : Math.min(p.gpuLayers, layers + 1);
  const f = layers ? ngl / (layers + 1) : 0;
  const vramBytes = f > 0 ? Math.round(f * weights + Math.min(1, ngl / Math.max(1, layers)) * kv + compute) : 0;
  const ramBytes = f > 0 ? Math.round((1 - f) * weights + (1 - Math.min(1, ngl / Math.max(1, layers))) * kv + compute / 4 + output + overhead) : weights + repack + kv + compute + output + overhead;
  const tokenEmbd = g.tensors.filter((t) => t.name === 'token_embd.weight').reduce((s, t) => s + (tensorBytes(t) ?? 0), 0);
  return { ramBytes, vramBytes, parts: { weights, repack: f > 0 ? 0 : repack, kv, compute, output, overhead, tokenEmbd } };
}

/** Buffer sizes llama-server reports while loading (needs -lv 4), by device ("CPU", "CUDA0", …). */
export interface ReportedBuffers {
  /** "CPU_Mapped model" → bytes, "CPU KV" → bytes, … */
  byName: Record<string, number>;
  /** Sum of host buffers (CPU*, including mapped weights). */
  hostBytes: number;
  /** Sum of GPU buffers (CUDA*, ROCm*, Vulkan*, Metal…). */
  deviceBytes: number;
  /** Sum of buffers on RPC workers ("RPC0[10.0.0.2:50052] model", …): memory of other machines, never the head's budget. */
  remoteBytes?: number;
}

const BUFFER_RE = /(RPC\d+\[[^\]\s]+\]|\b[A-Za-z0-9_]+)\s+(model|KV|compute|output|RS|LoRA)\s+buffer size\s*=\s*([\d.]+)\s*MiB/;

/** Adds one stderr line's buffer report (if any) to `acc`. */
export function addBufferLine(acc: ReportedBuffers, line: string): void {
  const mm = BUFFER_RE.exec(line);
  if (!mm) return;
  const dev = mm[1]!;
  const bytes = Math.round(Number(mm[3]) * MiB);
  const key = `${dev} ${mm[2]}`;
  acc.byName[key] = (acc.byName[key] ?? 0) + bytes;
  if (/^CPU/i.test(dev)) acc.hostBytes += bytes;
  else if (/^RPC\d+\[/.test(dev)) acc.remoteBytes = (acc.remoteBytes ?? 0) + bytes;
  else acc.deviceBytes += bytes;
}

export const emptyBuffers = (): ReportedBuffers => ({ byName: {}, hostBytes: 0, deviceBytes: 0 });

/** Resident set of a process (bytes), 0 when it is gone. */
export function rssOf(pid: number): number {
  try {
    const mm = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return mm ? Number(mm[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** The tightest memory limit of this process's cgroup (v2: memory.high / memory.max), if any. */
export function cgroupLimit(): number | undefined {
  try {
    const line = readFileSync('/proc/self/cgroup', 'utf8').split('\n').find((l) => l.startsWith('0::'));
    if (!line) return undefined;
    const dir = `/sys/fs/cgroup${line.slice(3).trim()}`;
    let best: number | undefined;
    for (const f of ['memory.high', 'memory.max']) {
      try {
        const v = readFileSync(`${dir}/${f}`, 'utf8').trim();
        if (/^\d+$/.test(v)) best = Math.min(best ?? Infinity, Number(v));
      } catch {
        /* not there */
      }
    }
    return best;
  } catch {
    return undefined;
  }
}

/** Bytes of GPU memory of the first NVIDIA GPU, via nvidia-smi; undefined without one. */
export function gpuMemory(query: () => string | undefined): number | undefined {
  const out = query();
  const mm = out ? /^(\d+)/.exec(out.trim()) : null;
  return mm ? Number(mm[1]) * MiB : undefined;
}

export interface Budget {
  ramBytes: number;
  /** 0 = VRAM not budgeted (no GPU configured or found). */
  vramBytes: number;
  /** How ramBytes was chosen, for logs and `aios ps`. */
  source: string;
}

/** "auto" or a size ("6G") → the RAM budget; "auto" = min(total memory, cgroup limit) − reserve. */
export function ramBudget(setting: string, reserveBytes: number, parse: (s: string) => number, o: { total?: number; cgroup?: number } = {}): Budget {
  if (setting !== 'auto') return { ramBytes: parse(setting), vramBytes: 0, source: `memory_budget = ${setting}` };
  const total = o.total ?? totalmem();
  const cg = o.cgroup ?? cgroupLimit();
  const base = cg !== undefined && cg < total ? cg : total;
  return { ramBytes: Math.max(0, base - reserveBytes), vramBytes: 0, source: `${cg !== undefined && cg < total ? 'cgroup limit' : 'total memory'} ${Math.round(base / MiB)} MiB − reserve ${Math.round(reserveBytes / MiB)} MiB` };
}

export const mib = (b: number): string => `${(b / MiB).toFixed(b < 10 * MiB ? 1 : 0)} MiB`;
